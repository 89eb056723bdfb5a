//! Reading a client's request body whole, within bounds: its size (`--max-payload-size`), its
//! time (`--body-read-timeout-secs`) and its pace (`--body-min-bytes-per-sec`). A client that
//! uploads too slowly gets 408 and the connection closes; reading it holds no admission slot.

use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, header};
use http_body_util::BodyExt;
use tokio::time::Instant;

use crate::config::BodyLimits;
use crate::error::ApiError;

/// Time a body has before its pace is judged (a client's first packets, a slow start).
const GRACE: Duration = Duration::from_secs(1);
/// How often a body that sends nothing is looked at.
const CHECK_EVERY: Duration = Duration::from_millis(500);

/// Read `body` whole: at most `limit` bytes (413 past it), within `pace`'s time and at its
/// minimum rate (408 otherwise).
pub(crate) async fn read_body(
    headers: &HeaderMap,
    mut body: Body,
    limit: usize,
    pace: &BodyLimits,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit });
    }
    let started = Instant::now();
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut received = 0usize;
    loop {
        // `None`: nothing arrived for a while; the pace is judged all the same.
        match tokio::time::timeout(CHECK_EVERY, body.frame()).await.ok() {
            Some(None) => break,
            Some(Some(Err(e))) => {
                return Err(ApiError::bad_request(
                    format!("could not read the request body: {e}"),
                    None,
                ));
            }
            Some(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    received += data.len();
                    if received > limit {
                        return Err(ApiError::PayloadTooLarge { limit });
                    }
                    if !data.is_empty() {
                        chunks.push(data);
                    }
                }
            }
            None => {}
        }
        judge(pace, started.elapsed(), received)?;
    }
    Ok(join(chunks, received))
}

/// 408 when the body has taken longer than allowed, or arrives slower than the minimum rate.
fn judge(pace: &BodyLimits, elapsed: Duration, received: usize) -> Result<(), ApiError> {
    if elapsed >= pace.read_timeout {
        return Err(ApiError::RequestTimeout(format!(
            "the request body did not arrive within {}s (--body-read-timeout-secs)",
            pace.read_timeout.as_secs()
        )));
    }
    let judged = elapsed.saturating_sub(GRACE).as_secs_f64();
    if pace.min_bytes_per_sec > 0 && (received as f64) < pace.min_bytes_per_sec as f64 * judged {
        return Err(ApiError::RequestTimeout(format!(
            "the request body arrives slower than {} bytes/s (--body-min-bytes-per-sec)",
            pace.min_bytes_per_sec
        )));
    }
    Ok(())
}

/// The chunks as one buffer; a body that came in one chunk is not copied.
fn join(mut chunks: Vec<Bytes>, len: usize) -> Bytes {
    if chunks.len() <= 1 {
        return chunks.pop().unwrap_or_default();
    }
    let mut whole = BytesMut::with_capacity(len);
    for chunk in chunks {
        whole.extend_from_slice(&chunk);
    }
    whole.freeze()
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    fn pace(timeout_secs: u64, min: u64) -> BodyLimits {
        BodyLimits {
            read_timeout: Duration::from_secs(timeout_secs),
            min_bytes_per_sec: min,
        }
    }

    #[test]
    fn a_body_is_judged_on_its_total_time_and_its_average_rate_after_the_grace() {
        let p = pace(10, 100);
        assert!(
            judge(&p, Duration::from_millis(900), 0).is_ok(),
            "in the grace"
        );
        assert!(judge(&p, Duration::from_secs(2), 100).is_ok());
        assert!(judge(&p, Duration::from_secs(2), 99).is_err());
        assert!(
            judge(&p, Duration::from_secs(10), 1 << 30).is_err(),
            "out of time"
        );
        assert!(
            judge(&pace(10, 0), Duration::from_secs(9), 0).is_ok(),
            "rate off"
        );
    }

    #[tokio::test]
    async fn a_whole_body_is_joined_and_a_large_one_refused() {
        let body = Body::from("0123456789");
        let got = read_body(&HeaderMap::new(), body, 64, &pace(5, 1))
            .await
            .unwrap();
        assert_eq!(&got[..], b"0123456789");
        let big = Body::from(vec![0u8; 65]);
        let e = read_body(&HeaderMap::new(), big, 64, &pace(5, 1))
            .await
            .unwrap_err();
        assert_eq!(e.status().as_u16(), 413);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_is_a_408_at_the_rate_check() {
        // A client that sends the start of its body, then nothing.
        let first = futures_util::stream::once(async {
            Ok::<_, std::io::Error>(Bytes::from_static(b"{\"model\""))
        });
        let body = Body::from_stream(first.chain(futures_util::stream::pending()));
        let started = Instant::now();
        let e = read_body(&HeaderMap::new(), body, 1024, &pace(60, 100))
            .await
            .unwrap_err();
        assert_eq!(e.status().as_u16(), 408);
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
}
