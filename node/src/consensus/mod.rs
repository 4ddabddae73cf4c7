//! Consensus: a tikv raft-rs `RawNode` driven by one thread ([`node`]), its log, hard state and
//! conf state in sled ([`storage`]), the node-to-node [`transport`] (optionally mutual [`tls`]).
//! A single node is a one-voter group on the same code path.

pub mod config;
pub mod metrics;
pub mod node;
pub mod snapshot_send;
pub mod storage;
pub mod tls;
pub mod transport;

pub use node::{RaftHandle, RaftStatus};

/// Why a proposal did not produce a result.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConsensusError {
    #[error("the consensus loop has stopped (node shutting down or storage failed); the write was not accepted")]
    Stopped,
    #[error("the consensus loop stopped (node shutting down or storage failed) after the write was sent to the log: it may have been applied, read before retrying")]
    StoppedOutcomeUnknown,
    #[error("no leader is known; the write was not accepted, retry shortly")]
    NoLeader,
    #[error("no leader was known for {0} ms; the write was not accepted (is a majority of the cluster up?)")]
    NoLeaderTimeout(u64),
    #[error("this node is not the leader (leader: {})", if *.0 == 0 { "unknown".to_string() } else { format!("node {}", .0) })]
    NotLeader(u64),
    #[error("membership change refused: {0}")]
    Membership(String),
    #[error("the write's log entry was replaced by a snapshot before this node saw it; it may have been applied, read before retrying")]
    OutcomeUnknown,
    #[error("cluster transport: {0}")]
    Transport(String),
    #[error("the write was dropped by a leadership change and not applied; retry it")]
    Dropped,
    #[error("the write was not confirmed within {0} ms; it may still be applied")]
    Timeout(u64),
    #[error("the write is {bytes} bytes once encoded; a log entry may hold at most {limit} (cluster.max_frame_bytes)")]
    TooLarge { bytes: usize, limit: usize },
    #[error("the leader refused the write: {0}")]
    Refused(String),
    #[error("busy: {0}; retry shortly")]
    Busy(String),
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
