//! Bulk Data `$export` (FHIR Bulk Data Access IG 2.0): system, Patient and Group level.
//!
//! A kick-off (`crate::http::export`) is checked on the node that receives it ([`params`], the auth guard)
//! and proposed through Raft as an [`crate::machine::export_job::ExportOp::Start`]; apply fixes the instant the export
//! is consistent with and decides Group members and `_typeFilter` matches on the state at that
//! entry ([`crate::machine::export_apply`]). The job is replicated state ([`crate::machine::export_state`]), so any node
//! answers the status URL. On the leader a [`runner::JobActor`] per job streams NDJSON parts
//! ([`scan`]: the version of each resource as of the job's instant, in id order) through an
//! [`sink::ExportSink`]: local files (default) or S3 objects, and checkpoints each durable part
//! through Raft; a new leader resumes from the last checkpoint, and since a part's content is a
//! function of the replicated state, a part is never duplicated or lost.

pub mod config;
pub mod params;
pub mod runner;
pub mod s3_sink;
pub mod scan;
pub mod sink;

pub use config::ExportConfig;

use crate::consensus::ConsensusError;
use crate::store::StoreError;

/// Why an export request or job failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("invalid $export parameter {name}: {reason}")]
    BadParameter { name: String, reason: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("no export job {0} here (it may have been cancelled or expired)")]
    NoJob(String),
    #[error("no output file {file} in export job {job}")]
    NoFile { job: String, file: String },
    #[error("too many export jobs: {active} are active here, the most that may run at once (export.max_active_jobs); retry when one has finished")]
    TooManyActive { active: usize },
    #[error("too many export jobs: this caller holds {owned}, the most one caller may hold (export.max_jobs_per_owner; finished jobs count until they expire); cancel finished jobs or retry later")]
    TooManyOwned { owned: usize },
    #[error("too many export jobs: the cluster keeps at most {max} of all callers ({total} now; finished jobs count until they expire), or a job just ended; retry later")]
    TooManyKept { total: usize, max: usize },
    #[error("the export job failed: {0}")]
    Failed(String),
    #[error("export storage: {0}")]
    Sink(String),
    #[error("export storage: {0}")]
    Objects(#[from] crate::objects::ObjectsError),
    #[error("export: {0}")]
    Internal(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
}
