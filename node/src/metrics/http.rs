//! Request metrics of the FHIR API: `kiln_http_requests_total{interaction,type,status}`,
//! `kiln_http_request_duration_seconds{interaction,type}` and `kiln_http_requests_in_flight`,
//! recorded by the `crate::http::observe` middleware around every request.

use prometheus::{HistogramVec, IntCounterVec, IntGauge};

use super::{Families, MetricsError, LATENCY_BUCKETS};

pub struct HttpMetrics {
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub in_flight: IntGauge,
}

impl HttpMetrics {
    pub(crate) fn new(f: &Families) -> Result<HttpMetrics, MetricsError> {
        Ok(HttpMetrics {
            requests: f.counter_vec(
                "kiln_http_requests_total",
                "FHIR API requests answered, by interaction, resource type and HTTP status.",
                &["interaction", "type", "status"],
            )?,
            duration: f.histogram_vec(
                "kiln_http_request_duration_seconds",
                "Time from receiving a FHIR API request to its response head, by interaction and resource type.",
                &["interaction", "type"],
                LATENCY_BUCKETS,
            )?,
            in_flight: f.gauge("kiln_http_requests_in_flight", "FHIR API requests being handled.")?,
        })
    }
}
