//! Header rules: the request id, hop-by-hop headers, and what each side is told.

use std::io::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::config::Secret;
use crate::fleet::Worker;
use crate::upstream::bearer_header;

/// The request id header sent to workers and echoed to clients.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// Names the worker that served a response, like nginx's `X-Upstream-Addr`.
pub static X_VLLM_ROUTER_WORKER: HeaderName = HeaderName::from_static("x-vllm-router-worker");
/// nginx's name of the upstreams tried, `host:port` each.
pub static X_UPSTREAM_ADDR: HeaderName = HeaderName::from_static("x-upstream-addr");
/// nginx's name of their statuses.
pub static X_UPSTREAM_STATUS: HeaderName = HeaderName::from_static("x-upstream-status");

/// Longest client-given request id the router adopts; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 256;

/// The first non-empty id among `names`, else a fresh one.
pub fn request_id(headers: &HeaderMap, names: &[HeaderName]) -> HeaderValue {
    names
        .iter()
        .filter_map(|n| headers.get(n))
        .find(|v| !v.is_empty() && v.len() <= MAX_REQUEST_ID_LEN)
        .cloned()
        .unwrap_or_else(generate)
}

fn generate() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Simple::LENGTH];
    let id = uuid::Uuid::new_v4().simple().encode_lower(&mut buf);
    HeaderValue::from_str(id).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Headers that describe one connection, never forwarded (RFC 9110 §7.6.1).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::PROXY_AUTHORIZATION
        || name == header::PROXY_AUTHENTICATE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Remove hop-by-hop headers, including any the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let hop: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_hop_by_hop(n))
        .cloned()
        .collect();
    for name in hop {
        headers.remove(name);
    }
}

/// Headers for `Debug`: names only, every value masked (values may be keys or cookies).
pub struct Redacted<'a>(pub &'a HeaderMap);

impl std::fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.keys().map(|name| (name.as_str(), "***")))
            .finish()
    }
}

/// Lists every client address a request passed through; the router appends its client's.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The headers a worker receives: the client's, less hop-by-hop ones, `Host` and framing
/// (the upstream client sets those), with the request id and the client's address appended
/// to `X-Forwarded-For`. With a workers' key, `Authorization` is `Bearer <worker key>` in place
/// of the client's; without one, the client's is forwarded as it came.
pub fn to_worker(
    client: &HeaderMap,
    request_id: &HeaderValue,
    peer: Option<IpAddr>,
    worker_key: Option<&Secret>,
) -> HeaderMap {
    let mut headers = client.clone();
    strip_hop_by_hop(&mut headers);
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    if let Some(key) = worker_key {
        headers.remove(header::AUTHORIZATION);
        if let Some(auth) = bearer_header(key) {
            headers.insert(header::AUTHORIZATION, auth);
        }
    }
    if let Some(ip) = peer {
        append_forwarded_for(&mut headers, ip);
    }
    headers
}

/// nginx's `X-Upstream-Addr` and `X-Upstream-Status`: every attempt's `host:port` and status,
/// in order, the last being `worker`'s `status` (`10.0.0.1:8000, 10.0.0.2:8000` and `502, 200`).
pub fn upstream_trail(
    headers: &mut HeaderMap,
    earlier: &[(Arc<Worker>, u16)],
    worker: &Worker,
    status: http::StatusCode,
) {
    if earlier.is_empty() {
        headers.insert(X_UPSTREAM_ADDR.clone(), worker.addr_value().clone());
        headers.insert(X_UPSTREAM_STATUS.clone(), status_value(status));
        return;
    }
    let mut addrs = Vec::with_capacity(32 * (earlier.len() + 1));
    let mut statuses = String::with_capacity(5 * (earlier.len() + 1));
    for (w, s) in earlier {
        addrs.extend_from_slice(w.addr_value().as_bytes());
        addrs.extend_from_slice(b", ");
        statuses.push_str(&format!("{s}, "));
    }
    addrs.extend_from_slice(worker.addr_value().as_bytes());
    statuses.push_str(status.as_str());
    if let (Ok(addrs), Ok(statuses)) = (
        HeaderValue::from_bytes(&addrs),
        HeaderValue::from_str(&statuses),
    ) {
        headers.insert(X_UPSTREAM_ADDR.clone(), addrs);
        headers.insert(X_UPSTREAM_STATUS.clone(), statuses);
    }
}

/// A status as a header value, without allocating for the usual ones.
fn status_value(status: http::StatusCode) -> HeaderValue {
    match status.as_u16() {
        200 => HeaderValue::from_static("200"),
        400 => HeaderValue::from_static("400"),
        404 => HeaderValue::from_static("404"),
        429 => HeaderValue::from_static("429"),
        500 => HeaderValue::from_static("500"),
        503 => HeaderValue::from_static("503"),
        other => HeaderValue::from(other),
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, ip: IpAddr) {
    // The address as text, without allocating: an IPv6 address is at most 45 bytes.
    let mut text = [0u8; 48];
    let mut cursor = std::io::Cursor::new(&mut text[..]);
    if write!(cursor, "{}", ip.to_canonical()).is_err() {
        return;
    }
    let written = usize::try_from(cursor.position()).unwrap_or(0);
    let client = &text[..written];
    let mut earlier = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .filter(|v| !v.is_empty())
        .peekable();
    let value = if earlier.peek().is_none() {
        HeaderValue::from_bytes(client)
    } else {
        let mut list: Vec<u8> = Vec::with_capacity(64);
        for earlier in earlier {
            list.extend_from_slice(earlier.as_bytes());
            list.extend_from_slice(b", ");
        }
        list.extend_from_slice(client);
        HeaderValue::from_bytes(&list)
    };
    if let Ok(value) = value {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<HeaderName> {
        ["x-request-id", "x-correlation-id"]
            .map(HeaderName::from_static)
            .to_vec()
    }

    #[test]
    fn request_id_is_the_first_header_found_else_generated() {
        let mut h = HeaderMap::new();
        h.insert("x-correlation-id", HeaderValue::from_static("corr"));
        assert_eq!(request_id(&h, &names()), "corr");
        h.insert("x-request-id", HeaderValue::from_static("req"));
        assert_eq!(request_id(&h, &names()), "req");
        let fresh = request_id(&HeaderMap::new(), &names());
        assert_eq!(fresh.len(), 32);
        assert_ne!(fresh, request_id(&HeaderMap::new(), &names()));
        h.insert("x-request-id", HeaderValue::from_static(""));
        assert_eq!(request_id(&h, &names()), "corr");
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_dropped() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret-hop"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("x-secret-hop", "1"),
            ("host", "router:30000"),
            ("content-length", "12"),
            ("authorization", "Bearer k"),
            ("x-custom", "kept"),
        ] {
            h.insert(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let out = to_worker(&h, &HeaderValue::from_static("id-1"), None, None);
        let mut kept: Vec<_> = out.keys().map(|k| k.as_str()).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["authorization", "x-custom", "x-request-id"]);
        assert_eq!(out["x-request-id"], "id-1");
        assert_eq!(out["authorization"], "Bearer k");
    }

    #[test]
    fn a_workers_key_replaces_the_clients_authorization() {
        let mut h = HeaderMap::new();
        h.append("authorization", HeaderValue::from_static("Bearer client"));
        h.append("authorization", HeaderValue::from_static("Bearer other"));
        let id = HeaderValue::from_static("r");
        let key = Secret::new("w0rker");
        let out = to_worker(&h, &id, None, Some(&key));
        let sent: Vec<_> = out.get_all("authorization").iter().collect();
        assert_eq!(sent, ["Bearer w0rker"]);
        assert!(sent[0].is_sensitive());
        // Without a client header, the key is still sent.
        let out = to_worker(&HeaderMap::new(), &id, None, Some(&key));
        assert_eq!(out["authorization"], "Bearer w0rker");
    }

    #[test]
    fn debug_output_names_headers_but_shows_no_value() {
        let mut h = HeaderMap::new();
        h.insert("authorization", HeaderValue::from_static("Bearer s3cr3t-k"));
        h.insert("cookie", HeaderValue::from_static("session=s3cr3t-c"));
        let shown = format!("{:?}", Redacted(&h));
        assert_eq!(shown, r#"{"authorization": "***", "cookie": "***"}"#);
        let request = crate::policy::RouteRequest::new("/v1/completions", &h);
        let shown = format!("{request:?}");
        assert!(
            shown.contains("authorization") && !shown.contains("s3cr3t"),
            "{shown}"
        );
    }

    #[test]
    fn the_client_address_is_appended_to_x_forwarded_for() {
        let peer = Some("127.0.0.1".parse().unwrap());
        let id = HeaderValue::from_static("r");
        assert_eq!(
            to_worker(&HeaderMap::new(), &id, peer, None)["x-forwarded-for"],
            "127.0.0.1"
        );
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        h.append("x-forwarded-for", HeaderValue::from_static("5.6.7.8"));
        assert_eq!(
            to_worker(&h, &id, peer, None)["x-forwarded-for"],
            "1.2.3.4, 5.6.7.8, 127.0.0.1"
        );
        let mapped = Some("::ffff:10.1.2.3".parse().unwrap());
        assert_eq!(
            to_worker(&HeaderMap::new(), &id, mapped, None)["x-forwarded-for"],
            "10.1.2.3"
        );
    }
}
