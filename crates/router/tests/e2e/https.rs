//! `https://` workers: the router reaches them over TLS, trusting the system's roots (here a
//! self-signed certificate named by `SSL_CERT_FILE`).

use std::sync::Arc;

use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{self, pki_types};

use crate::support::*;

/// A TLS front on a loopback port for the worker at `upstream`, with a certificate for
/// `localhost`; the certificate's PEM file comes back with the port.
async fn tls_front(
    upstream: std::net::SocketAddr,
    dir: &std::path::Path,
) -> (u16, std::path::PathBuf) {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let pem = dir.join("worker-cert.pem");
    std::fs::write(&pem, cert.cert.pem()).unwrap();
    let key = pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                if let Ok(mut plain) = TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    (port, pem)
}

#[tokio::test]
async fn https_workers_are_reached_over_tls() {
    let workers = fast_sims(1).await;
    let dir = std::env::temp_dir().join(format!("https-worker-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let upstream = workers[0].url()[7..].parse().unwrap();
    let (port, pem) = tls_front(upstream, &dir).await;
    let url = format!("https://localhost:{port}");
    let args = ["--worker-urls", &url, "--policy", "round_robin"].map(String::from);
    let (mut child, addr) = spawn_router(&args, &[("SSL_CERT_FILE", pem.to_str().unwrap())]).await;
    let r = post_json(
        &format!("http://{addr}/v1/chat/completions"),
        chat(MODEL, false),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.header("x-vllm-router-worker"), url);
    assert_eq!(
        workers[0].records().last().unwrap().path,
        "/v1/chat/completions"
    );
    let models = get(&format!("http://{addr}/v1/models")).await.json();
    assert_eq!(models["data"][0]["id"], json!(MODEL));
    let _ = child.kill();
    let _ = child.wait();
    std::fs::remove_dir_all(&dir).unwrap();
}
