//! The stored state: resource versions, current pointers and history rows in one sled tree
//! (`state`), its key layout, tenants' key spaces, write batches and snapshots. Written only by
//! the replicated state machine (`crate::machine`), read directly by the HTTP layer through
//! [`resources::Store`].

pub mod action;
pub mod db;
pub mod keys;
pub mod resources;
pub mod snapshot;
pub mod space;
pub mod writes;

pub use action::Action;
pub use resources::{Current, Store, VersionRecord};

/// Outcomes of reads and writes on the state tree.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("storage failure: {0}")]
    Storage(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("{rtype}/{id} does not exist")]
    NotFound { rtype: String, id: String },
    #[error("{rtype}/{id} version {version} does not exist")]
    VersionNotFound { rtype: String, id: String, version: u64 },
    #[error("{rtype}/{id} was deleted (version {version})")]
    Gone { rtype: String, id: String, version: u64 },
    #[error("version conflict on {rtype}/{id}: If-Match asked for version {expected} but the current version is {}", current.map(|c| c.to_string()).unwrap_or_else(|| "none (it does not exist)".into()))]
    VersionConflict { rtype: String, id: String, expected: u64, current: Option<u64> },
    #[error("{rtype}/{id} does not exist and this server does not allow update-as-create (PUT to a new id)")]
    CreateViaUpdateDisabled { rtype: String, id: String },
    #[error("the _page cursor does not belong to this history; use the links of the history bundle")]
    InvalidCursor,
    #[error("history too costly: {0}")]
    TooCostly(String),
    #[error("{rtype}/{id} already exists")]
    AlreadyExists { rtype: String, id: String },
    #[error("the condition matched {count} {rtype} resources; it must match at most one (make it more selective)")]
    MultipleMatches { rtype: String, count: usize },
    #[error("invalid condition: {0}")]
    BadCondition(String),
    #[error("{rtype}/{id} already exists (ifNoneMatch: *)")]
    NoneMatchFailed { rtype: String, id: String },
    #[error("{0}")]
    BadReference(String),
    #[error("{0}")]
    DuplicateTarget(String),
    /// A transaction entry failed, so nothing of the transaction was applied.
    #[error("{reason}")]
    EntryFailed { entry: u32, reason: Box<StoreError> },
}

impl From<sled::Error> for StoreError {
    fn from(e: sled::Error) -> Self {
        StoreError::Storage(e.to_string())
    }
}

impl From<sled::transaction::TransactionError<StoreError>> for StoreError {
    fn from(e: sled::transaction::TransactionError<StoreError>) -> Self {
        match e {
            sled::transaction::TransactionError::Abort(e) => e,
            sled::transaction::TransactionError::Storage(e) => e.into(),
        }
    }
}
