//! Data in and out of a cluster: `kiln import` (NDJSON files as batch bundles, resumable),
//! `kiln backup` (a consistent copy of one node's state at an applied index, from the operator
//! API's `GET /_cluster/backup`) and `kiln restore` (the data dirs of a new cluster whose state
//! machine is a backup).
//!
//! - [`format`]: the backup file (the Raft snapshot's pair encoding with a header and a
//!   verified trailer), shared by the server, the client and the restore.
//! - `crate::http::dataio`: `GET /_cluster/backup` on the operator listener.
//! - [`backup`], [`restore`], [`import`]: the commands.
//! - [`client`]: the operator HTTP client those commands, `kiln reindex` and the launcher share
//!   (bearer token, extra CA, retries).

pub mod backup;
pub mod client;
pub mod format;
pub mod import;
pub mod restore;

/// Why an import, backup or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum DataIoError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("backup file: {0}")]
    Format(#[from] format::FormatError),
    #[error("storage: {0}")]
    Storage(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Refused(String),
}

impl DataIoError {
    pub fn io(path: impl AsRef<std::path::Path>) -> impl FnOnce(std::io::Error) -> DataIoError {
        let path = path.as_ref().display().to_string();
        move |source| DataIoError::Io { path, source }
    }
}

impl From<sled::Error> for DataIoError {
    fn from(e: sled::Error) -> Self {
        DataIoError::Storage(e.to_string())
    }
}

impl From<crate::store::StoreError> for DataIoError {
    fn from(e: crate::store::StoreError) -> Self {
        DataIoError::Storage(e.to_string())
    }
}

impl From<raft::Error> for DataIoError {
    fn from(e: raft::Error) -> Self {
        DataIoError::Storage(e.to_string())
    }
}

/// Now as an RFC 3339 instant (UTC).
pub fn now_rfc3339() -> String {
    crate::fhir::meta::format_instant(crate::fhir::meta::now_micros())
}
