use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;

use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1 as server;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use super::*;

/// A server counting the connections it accepted; it answers `body` to each request, and
/// closes the connection after `close_after` requests on it when given.
async fn server(body: &'static str, close_after: Option<usize>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let served = Arc::new(AtomicUsize::new(0));
                let service = service_fn(move |_req: Request<Incoming>| {
                    let n = served.fetch_add(1, Ordering::SeqCst) + 1;
                    let mut response =
                        Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                    if close_after.is_some_and(|limit| n >= limit) {
                        response
                            .headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = server::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, accepted)
}

fn pool() -> Pool<HttpConnector> {
    Pool::new(HttpConnector::new())
}

fn get(addr: SocketAddr) -> Request<UpstreamBody> {
    Request::get(format!("http://{addr}/v1/models"))
        .body(UpstreamBody::default())
        .unwrap()
}

async fn read(pool: &Pool<HttpConnector>, addr: SocketAddr) -> Bytes {
    let response = pool.send(get(addr)).await.unwrap();
    response.into_body().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn answers_read_whole_give_their_connection_back() {
    let (addr, accepted) = server("hello", None).await;
    let pool = pool();
    for _ in 0..5 {
        assert_eq!(read(&pool, addr).await, "hello");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(pool.idle.count(), 1);
}

#[tokio::test]
async fn an_answer_left_unread_takes_its_connection_with_it() {
    let (addr, accepted) = server("hello", None).await;
    let pool = pool();
    let response = pool.send(get(addr)).await.unwrap();
    drop(response);
    assert_eq!(pool.idle.count(), 0);
    assert_eq!(read(&pool, addr).await, "hello");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_connection_the_worker_closed_is_replaced_without_an_error() {
    // Every connection serves one request and is closed by the worker.
    let (addr, accepted) = server("hello", Some(1)).await;
    let pool = pool();
    for _ in 0..3 {
        assert_eq!(read(&pool, addr).await, "hello");
        // Let the close reach the pooled connection, or not: both must work.
        tokio::task::yield_now().await;
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn the_host_header_names_the_worker_and_the_uri_is_origin_form() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let seen_tx = std::sync::Mutex::new(Some(seen_tx));
        let service = service_fn(move |req: Request<Incoming>| {
            let host = req.headers().get(header::HOST).cloned();
            if let Some(tx) = seen_tx.lock().unwrap().take() {
                let _ = tx.send((req.uri().clone(), host));
            }
            async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::new()))) }
        });
        let _ = server::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    let pool = pool();
    let request = Request::get(format!("http://{addr}/v1/models?x=1"))
        .body(UpstreamBody::default())
        .unwrap();
    let _ = pool.send(request).await.unwrap();
    let (uri, host) = seen_rx.await.unwrap();
    assert_eq!(uri, "/v1/models?x=1");
    assert_eq!(host.unwrap(), addr.to_string().as_str());
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let error = pool().send(get(addr)).await.unwrap_err();
    assert!(error.is_connect(), "{error:?}");
}

#[tokio::test]
async fn the_sweep_closes_connections_idle_too_long() {
    let (addr, _) = server("hello", None).await;
    let pool = pool();
    read(&pool, addr).await;
    assert_eq!(pool.idle.count(), 1);
    pool.idle.sweep(Instant::now());
    assert_eq!(pool.idle.count(), 1, "not idle long enough");
    pool.idle.sweep(Instant::now() + IDLE_TIMEOUT);
    assert_eq!(pool.idle.count(), 0);
    assert!(
        pool.idle.hosts.lock().is_empty(),
        "the authority is forgotten"
    );
}

#[tokio::test]
async fn frames_that_arrived_together_are_handed_on_without_waiting() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).await.unwrap();
            head.push(byte[0]);
        }
        // Ten events in one write, as an engine streaming faster than they are forwarded.
        let mut answer = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..10 {
            answer.extend_from_slice(b"6\r\nevent\n\r\n");
        }
        answer.extend_from_slice(b"0\r\n\r\n");
        stream.write_all(&answer).await.unwrap();
        // Held open: the connection stays usable.
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let pool = pool();
    let response = pool.send(get(addr)).await.unwrap();
    let mut body = response.into_body();
    // Every byte of the answer is in the socket by now.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut cx = Context::from_waker(Waker::noop());
    let mut frames = 0;
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(frame)) => {
                assert_eq!(frame.unwrap().into_data().unwrap(), "event\n");
                frames += 1;
            }
            Poll::Ready(None) => break,
            Poll::Pending => panic!("waited after {frames} frames, with all of them here"),
        }
    }
    assert_eq!(frames, 10);
    drop(body);
    assert_eq!(
        pool.idle.count(),
        1,
        "read to its end, the connection is back"
    );
}
