//! Request metrics of the FHIR API, recorded by the [`observe`] middleware around every request
//! (401s and 403s included) into [`crate::metrics::http::HttpMetrics`]; the same middleware
//! counts each connection's requests in progress ([`super::idle`]) and refuses one past
//! `limits.max_requests_per_connection` (HTTP/2 streams) with 429.
//!
//! Label values are bounded: the interaction is a code of the routing table
//! ([`crate::http::INTERACTIONS`]) or one of a few fixed names, the type is a resource type of
//! the node's FHIR version or `""` / `other`, the status a three-digit code.

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;
use prometheus::IntGauge;

use crate::http::AppState;

/// The `(interaction, type)` labels of a request: the routing table's interaction code (as the
/// audit log names it) and the resource type when it is one of `types`; fixed names for the
/// pages outside the table.
pub fn labels<'a>(method: &str, path: &str, resource_type: impl Fn(&str) -> Option<&'a str>) -> (&'static str, &'a str) {
    let mut segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments.first() == Some(&"tenant") && segments.len() >= 2 {
        segments.drain(..2);
    }
    let first = segments.first().copied().unwrap_or("");
    let fixed = match first {
        "metadata" if segments.len() == 1 => Some("capabilities"),
        "metrics" if segments.len() == 1 => Some("metrics"),
        "_health" => Some("health"),
        "_cluster" => Some("cluster"),
        ".well-known" => Some("smart-configuration"),
        "_export" | "$export" => Some("export"),
        _ if segments.get(1) == Some(&"$export") || segments.get(2) == Some(&"$export") => Some("export"),
        _ => None,
    };
    if let Some(name) = fixed {
        return (name, "");
    }
    let (interaction, rtype, _) = crate::http::interaction_of(method, &segments);
    let rtype = if rtype.is_empty() { "" } else { resource_type(rtype).unwrap_or("other") };
    (interaction, rtype)
}

/// One request in `kiln_http_requests_in_flight`, also when its future is dropped (the client
/// went away).
struct InFlight<'a>(&'a IntGauge);

impl<'a> InFlight<'a> {
    fn enter(g: &'a IntGauge) -> InFlight<'a> {
        g.inc();
        InFlight(g)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Middleware: counts and times every request of the FHIR API.
pub async fn observe(req: ServiceRequest, next: Next<impl MessageBody + 'static>) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(st) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let started = Instant::now();
    let m = &st.metrics.http;
    let (interaction, rtype) = labels(req.method().as_str(), req.path(), |t| st.defs.resource_type(t).ok());
    let in_flight = InFlight::enter(&m.in_flight);
    // (The connection's idle watch sees the request until its response has been sent.)
    let busy = super::idle::Busy::enter(req.conn_data::<std::sync::Arc<super::idle::Activity>>());
    // (No stall watch over HTTP/2, where a hang-up would end the connection's other streams.)
    let req_conn = req.conn_data::<std::sync::Arc<dyn crate::budget::Presence>>().cloned().filter(|_| req.version() != actix_web::http::Version::HTTP_2);
    // (More than one only over HTTP/2, whose streams actix does not bound.)
    let limit = st.cfg.limits.max_requests_per_connection;
    let served = match busy.as_ref().is_some_and(|b| b.in_progress() > limit) {
        true => {
            let e = super::RequestError::TooManyRequests(format!(
                "this connection already has {limit} requests in progress (config limits.max_requests_per_connection); wait for their answers or open another connection"
            ));
            Ok(req.error_response(super::error::ApiError::from(e)))
        }
        false => next.call(req).await.map(ServiceResponse::map_into_boxed_body),
    };
    drop(in_flight);
    let status = match &served {
        Ok(resp) => resp.status(),
        // Counted with the status it will be rendered with.
        Err(e) => e.as_response_error().status_code(),
    };
    m.requests.with_label_values(&[interaction, rtype, status.as_str()]).inc();
    m.duration.with_label_values(&[interaction, rtype]).observe(started.elapsed().as_secs_f64());
    let conn = req_conn;
    let stall = std::time::Duration::from_millis(st.cfg.limits.stall_timeout_ms);
    // (Nor for a websocket, quiet between notifications.)
    Ok(served?.map_body(|head, body| {
        let watch = conn.as_ref().filter(|_| head.status != actix_web::http::StatusCode::SWITCHING_PROTOCOLS);
        super::idle::until_sent(body, busy, watch, stall)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(t: &str) -> Option<&'static str> {
        ["Patient", "Observation"].into_iter().find(|k| *k == t)
    }

    #[test]
    fn labels_are_bounded() {
        assert_eq!(labels("GET", "/Patient/1", known), ("read", "Patient"));
        assert_eq!(labels("POST", "/Patient", known), ("create", "Patient"));
        assert_eq!(labels("GET", "/tenant/acme/Observation", known), ("search-type", "Observation"));
        assert_eq!(labels("GET", "/NoSuchType/1", known), ("read", "other"));
        assert_eq!(labels("POST", "/", known), ("transaction", ""));
        assert_eq!(labels("GET", "/metadata", known), ("capabilities", ""));
        assert_eq!(labels("GET", "/metrics", known), ("metrics", ""));
        assert_eq!(labels("GET", "/_cluster/status", known), ("cluster", ""));
        assert_eq!(labels("GET", "/Patient/$export", known), ("export", ""));
        assert_eq!(labels("GET", "/a/b/c/d/e", known), ("unknown", ""));
    }
}
