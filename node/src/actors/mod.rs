//! The write pipeline: one [`resource::ResourceActor`] per resource type validates, stamps ids, and
//! coalesces concurrent writes of its type into one Raft proposal. [`registry::Mailboxes`] finds the
//! actor of a type; [`msg`] holds every message; [`leader`] runs the leader-only loops.

pub mod leader;
pub mod msg;
pub mod registry;
pub mod resource;

pub use msg::{Write, WriteIntent};
pub use registry::Mailboxes;

use crate::consensus::ConsensusError;
use crate::fhir::FhirError;
use crate::store::StoreError;

/// Why a write failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Fhir(#[from] FhirError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
    #[error("a {0} body is required")]
    MissingBody(&'static str),
    #[error("the write pipeline of {0} is not running")]
    Mailbox(String),
    /// A feature's [`resource::WriteHook`] refused the write.
    #[error(transparent)]
    Hook(Box<dyn std::error::Error + Send + Sync>),
}
