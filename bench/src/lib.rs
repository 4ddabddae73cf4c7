//! # kiln-bench
//! Measures what a FHIR server does on the machine it runs on, in numbers and pictures.
//!
//! ## Layout
//! - [`gen`]: deterministic, realistic, linked FHIR R4 data (Patients and their Encounters,
//!   Observations, Conditions, MedicationRequests; shared Practitioners and Organizations), streamed
//!   per patient so 10^6 patients never sit in memory; written as NDJSON or loaded into a server.
//! - [`load`]: the async HTTP load generator: closed loop (N clients) or open loop (fixed arrival
//!   rate, latency measured from the intended send time), HDR histograms, server RSS sampling.
//! - [`scenarios`]: what is measured; scenarios whose feature the server's CapabilityStatement does
//!   not claim are skipped with a note, and light up when it does.
//! - [`suite`]: one run: load, detect features, run each scenario at each client count.
//! - [`binary`]: one raw Binary uploaded and read back (MB/s, server RSS).
//! - [`export`]: one Bulk Data export, kick-off to manifest (resources/s) and the downloads.
//! - [`scale`]: the scale run: bundle load, scenarios on a cluster, RSS per node, data folders.
//! - [`abuse`]: normal clients alone, then beside hostile authenticated ones (issue #25).
//! - [`report`]: Markdown + JSON tables and SVG plots (throughput vs clients, latency CDF).
//!
//! Works against any FHIR base URL, so peers can be measured with the same tool.

pub mod abuse;
pub mod binary;
pub mod export;
pub mod gen;
pub mod load;
pub mod report;
pub mod scale;
pub mod scenarios;
pub mod suite;

/// Errors of the benchmark tool.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("server answered {status} to {what}: {body}")]
    Status { what: String, status: u16, body: String },
    #[error("plot: {0}")]
    Plot(String),
    #[error("{0}")]
    Invalid(String),
}
