//! Prometheus metrics of a node (`GET /metrics`, the Prometheus text format 0.0.4).
//!
//! One [`Metrics`] per node holds its own registry (several nodes may share a process in the
//! tests) and the families, grouped by where they are recorded:
//! - [`http`]: every request by interaction, resource type and status, with latency
//!   histograms (the `observe` middleware of the FHIR API);
//! - [`raft`]: what the Raft thread records as it goes (apply latency and batch sizes, fsync
//!   latency, proposals in flight, snapshot sends and installs) plus the consensus state
//!   (term, role, commit / applied index, per-peer match index and lag, log size), read from
//!   `RaftHandle::status()` when scraped;
//! - [`search`]: search latency by the types of the parameters a query uses;
//! - [`scrape`]: what is read only when scraped (sled size on disk, export jobs, the
//!   Meilisearch outbox lag), and the handler.
//!
//! Recording is lock-free on the hot paths: counters, gauges and histograms are atomics (the
//! labelled families take a read lock of the `prometheus` crate to find their child; the Raft
//! thread only uses unlabelled ones). Where `/metrics` is served and who may read it:
//! docs/operations.md, "Metrics and tracing". The request id and the tracing spans of the write
//! path are in [`crate::http::request_id`].

pub mod http;
pub mod raft;
pub mod scrape;
pub mod search;

use std::sync::Arc;

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// Why metrics could not be set up or rendered.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metric {name} cannot be registered: {reason}")]
    Register { name: String, reason: String },
    #[error("cannot render the metrics: {0}")]
    Encode(String),
}

/// Latency buckets (seconds) shared by the request, apply and search histograms: 0.5 ms to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Registers the families of one group into a registry.
pub(crate) struct Families<'a> {
    pub(crate) registry: &'a Registry,
}

impl Families<'_> {
    fn add<C: prometheus::core::Collector + Clone + 'static>(&self, name: &str, c: C) -> Result<C, MetricsError> {
        self.registry.register(Box::new(c.clone())).map_err(|e| MetricsError::Register { name: name.into(), reason: e.to_string() })?;
        Ok(c)
    }

    fn err(name: &str, e: prometheus::Error) -> MetricsError {
        MetricsError::Register { name: name.into(), reason: e.to_string() }
    }

    pub(crate) fn counter(&self, name: &str, help: &str) -> Result<IntCounter, MetricsError> {
        self.add(name, IntCounter::new(name, help).map_err(|e| Self::err(name, e))?)
    }

    pub(crate) fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> Result<IntCounterVec, MetricsError> {
        self.add(name, IntCounterVec::new(Opts::new(name, help), labels).map_err(|e| Self::err(name, e))?)
    }

    pub(crate) fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, MetricsError> {
        self.add(name, IntGauge::new(name, help).map_err(|e| Self::err(name, e))?)
    }

    pub(crate) fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec, MetricsError> {
        self.add(name, IntGaugeVec::new(Opts::new(name, help), labels).map_err(|e| Self::err(name, e))?)
    }

    pub(crate) fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Result<Histogram, MetricsError> {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.add(name, Histogram::with_opts(opts).map_err(|e| Self::err(name, e))?)
    }

    pub(crate) fn histogram_vec(&self, name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> Result<HistogramVec, MetricsError> {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.add(name, HistogramVec::new(opts, labels).map_err(|e| Self::err(name, e))?)
    }
}

/// Every metric of one node.
pub struct Metrics {
    registry: Registry,
    pub http: http::HttpMetrics,
    pub raft: Arc<raft::RaftMetrics>,
    pub search: search::SearchMetrics,
    pub(crate) scraped: scrape::Scraped,
}

impl Metrics {
    /// The families of a node, registered in a registry of its own. `db` is measured on disk when
    /// scraped.
    pub fn new(node_id: u64, fhir_version: &str, db: sled::Db) -> Result<Arc<Metrics>, MetricsError> {
        let registry = Registry::new();
        let f = Families { registry: &registry };
        let info = f.gauge_vec("kiln_node_info", "Constant 1; the labels say which node and build this is.", &["node_id", "version", "fhir_version"])?;
        info.with_label_values(&[&node_id.to_string(), env!("CARGO_PKG_VERSION"), fhir_version]).set(1);
        let http = http::HttpMetrics::new(&f)?;
        let raft = Arc::new(raft::RaftMetrics::new(&f)?);
        let search = search::SearchMetrics::new(&f)?;
        let scraped = scrape::Scraped::new(&f, db)?;
        Ok(Arc::new(Metrics { registry, http, raft, search, scraped }))
    }

    /// The registry (every family above).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_register_once_and_render() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let m = Metrics::new(7, "4.0.1", db).unwrap();
        m.raft.apply_seconds.observe(0.002);
        m.http.requests.with_label_values(&["read", "Patient", "200"]).inc();
        let text = prometheus::TextEncoder::new().encode_to_string(&m.registry().gather()).unwrap();
        assert!(text.contains("kiln_node_info{fhir_version=\"4.0.1\",node_id=\"7\""), "{text}");
        assert!(text.contains("kiln_http_requests_total{interaction=\"read\",status=\"200\",type=\"Patient\"} 1"), "{text}");
        assert!(text.contains("kiln_raft_apply_seconds_count 1"), "{text}");
        // A second family of the same name is refused, not panicked on.
        let f = Families { registry: m.registry() };
        assert!(matches!(f.counter("kiln_raft_snapshot_installs_total", "again"), Err(MetricsError::Register { .. })));
    }
}
