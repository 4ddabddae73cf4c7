//! Consensus: a tikv raft-rs `RawNode` driven by one thread ([`node`]), its log, hard state and
//! conf state in sled ([`storage`]). A single node is a one-voter group on the same code path.

pub mod node;
pub mod storage;

pub use node::{RaftHandle, RaftStatus};

/// Why a proposal did not produce a result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConsensusError {
    #[error("the consensus loop has stopped (node shutting down or storage failed)")]
    Stopped,
    #[error("no leader is known; the write was not accepted, retry shortly")]
    NoLeader,
    #[error("the write was dropped by a leadership change and not applied; retry it")]
    Dropped,
    #[error("the write was not confirmed within {0} ms; it may still be applied")]
    Timeout(u64),
    #[error("raft: {0}")]
    Raft(String),
    #[error("raft log storage: {0}")]
    Storage(String),
}

impl From<raft::Error> for ConsensusError {
    fn from(e: raft::Error) -> Self {
        ConsensusError::Raft(e.to_string())
    }
}

impl From<sled::Error> for ConsensusError {
    fn from(e: sled::Error) -> Self {
        ConsensusError::Storage(e.to_string())
    }
}
