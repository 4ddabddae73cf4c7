//! The request id (`X-Request-Id`) and the request's tracing span, on both listeners.
//!
//! A client's `X-Request-Id` is kept when it is 1 to [`MAX_LEN`] characters of `A-Z a-z 0-9`
//! and `- _ . : @ /`; anything else (missing, too long, other characters) is replaced by a new
//! UUID. The id is echoed on every response (errors and refusals included) and every log line
//! of the request carries it: the request runs inside an `http_request{request_id, method,
//! path}` span, and the id is in a task-local ([`crate::trace::current`]) so that work handed to
//! other threads can take it along.
//!
//! The write path: the resource actor proposes inside a `propose{rtype, writes}` span whose
//! parent is the request's span (or, for a group commit of several writes, a span listing their
//! `request_ids`); `RaftHandle::propose` hands the current span to the Raft thread, which logs
//! `proposed` (with the log index) and `applied` (index, term, commit index) inside it at debug
//! level. So, with `RUST_LOG=kiln=debug`, the apply line of a write names its request id
//! (`--log-format json` puts the spans in each line's `spans` list).

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;

/// The header, in both directions.
pub const HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// Longest client id kept.
pub const MAX_LEN: usize = 128;

fn acceptable(v: &str) -> bool {
    (1..=MAX_LEN).contains(&v.len()) && v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:@/".contains(&b))
}

/// The client's id when acceptable, else a new UUID.
pub fn accept(given: Option<&HeaderValue>) -> Arc<str> {
    match given.and_then(|v| v.to_str().ok()).filter(|v| acceptable(v)) {
        Some(v) => v.into(),
        None => uuid::Uuid::new_v4().to_string().into(),
    }
}

/// Middleware (outermost): takes or makes the id, runs the request in its span, echoes the id.
pub async fn middleware(req: ServiceRequest, next: Next<impl MessageBody + 'static>) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let id = accept(req.headers().get(&HEADER));
    let span = tracing::info_span!("http_request", request_id = %id, method = %req.method(), path = %req.path());
    let started = Instant::now();
    // (No clone of the request may be held across `next`: routing needs it unshared.)
    let served = crate::trace::scope(id.clone(), next.call(req)).instrument(span.clone()).await;
    let header = HeaderValue::from_str(&id).ok();
    let answered = |status: u16| span.in_scope(|| tracing::debug!(status, elapsed_ms = started.elapsed().as_secs_f64() * 1000.0, "request answered"));
    match served {
        Ok(resp) => {
            let mut resp = resp.map_into_boxed_body();
            if let Some(v) = header {
                resp.headers_mut().insert(HEADER, v);
            }
            answered(resp.status().as_u16());
            Ok(resp)
        }
        // An error no layer turned into a response: render it here, with the id.
        Err(e) => {
            let mut resp = e.error_response();
            if let Some(v) = header {
                resp.headers_mut().insert(HEADER, v);
            }
            answered(resp.status().as_u16());
            Err(actix_web::error::InternalError::from_response(e, resp).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bounded_and_safe() {
        let hv = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(&*accept(Some(&hv("abc-123_x.y:z"))), "abc-123_x.y:z");
        assert_eq!(&*accept(Some(&hv(&"a".repeat(MAX_LEN)))), "a".repeat(MAX_LEN));
        for bad in ["a".repeat(MAX_LEN + 1), "two words".into(), "<script>".into(), "".into(), "new\tline".into()] {
            let got = accept(Some(&hv(&bad)));
            assert_ne!(&*got, bad.as_str());
            assert!(uuid::Uuid::parse_str(&got).is_ok(), "{bad:?} replaced by a UUID");
        }
        assert!(uuid::Uuid::parse_str(&accept(None)).is_ok());
    }
}
