//! The TLS client side shared by every outbound connection that may be `https`: workers and
//! key validation URLs. It trusts the system's roots (`SSL_CERT_FILE` and `SSL_CERT_DIR` are
//! honoured), with the ring provider.

use std::sync::Arc;

use hyper_rustls::{ConfigBuilderExt, HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;

/// A connector for `http` and `https` over `http`, which must leave the scheme to it
/// (`enforce_http(false)`); `what` names the connections in the warning given when no trusted
/// root certificate is found.
pub fn https_or_http(mut http: HttpConnector, what: &str) -> HttpsConnector<HttpConnector> {
    http.enforce_http(false);
    HttpsConnectorBuilder::new()
        .with_tls_config(client_config(what))
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}

fn client_config(what: &str) -> rustls::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = || {
        rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("the ring provider supports the default TLS versions")
    };
    match builder().with_native_roots() {
        Ok(roots) => roots.with_no_client_auth(),
        Err(error) => {
            tracing::warn!(%error, "no trusted root certificates found: https {what} will fail");
            builder()
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        }
    }
}
