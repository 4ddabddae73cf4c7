//! The handle the rest of the node holds on consensus (RaftHandle): proposals with their timeouts,
//! membership changes, ReadIndex, backups, the status /_cluster/status shows, and the messages it
//! sends the Raft thread.

use std::sync::Arc;
use std::time::Duration;
use crossbeam_channel::Sender;
use parking_lot::RwLock;
use raft::prelude::ConfChangeV2;
use serde::Serialize;
use tokio::sync::oneshot;
use crate::consensus::transport::{FaultFilter, Inbound};
use crate::consensus::ConsensusError;
use crate::store::snapshot::Capture;
use crate::machine::{Command, OpOutcome};

/// What a proposer gets back: the per-write outcomes of its applied entry.
pub type ProposalResult = Result<Vec<OpOutcome>, ConsensusError>;

pub(super) enum Msg {
    /// `span`: the proposer's tracing span, entered to log this proposal's progress.
    Propose { data: Vec<u8>, timeout: Duration, reply: oneshot::Sender<ProposalResult>, span: tracing::Span },
    ConfChange { cc: ConfChangeV2, reply: oneshot::Sender<ProposalResult> },
    ReadIndex { reply: oneshot::Sender<Result<u64, ConsensusError>> },
    Backup { reply: oneshot::Sender<Result<BackupStart, ConsensusError>> },
    Peer(Inbound),
    Stop,
}

/// One member as `/_cluster/status` shows it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct PeerStatus {
    pub id: u64,
    /// Raft transport address.
    pub address: String,
    pub http_url: String,
    pub admin_url: String,
    /// "voter" or "learner".
    pub role: &'static str,
    /// Highest log index known to be replicated on the peer (known on the leader only).
    pub match_index: Option<u64>,
    /// `last_index - match_index` on the leader.
    pub lag: Option<u64>,
}

/// The node's view of consensus, for `/_cluster/status`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RaftStatus {
    pub id: u64,
    pub role: &'static str,
    pub term: u64,
    pub leader_id: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    pub first_index: u64,
    pub last_index: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub peers: Vec<PeerStatus>,
}

/// A capture of the state machine started for a backup ([`RaftHandle::begin_backup`]): stream
/// `id` of the shared [`Capture`], the state exactly at `index` (of `term`).
#[derive(Debug, Clone, Copy)]
pub struct BackupStart {
    pub id: u64,
    pub index: u64,
    pub term: u64,
}

/// A cloneable handle to the Raft thread.
#[derive(Clone)]
pub struct RaftHandle {
    pub(super) tx: Sender<Msg>,
    pub(super) status: Arc<RwLock<RaftStatus>>,
    pub(super) write_timeout: Duration,
    pub(super) faults: Option<Arc<FaultFilter>>,
    /// Largest command accepted for the log: every entry must fit in one transport frame.
    pub(super) max_entry_bytes: usize,
    /// The state machine's snapshot capture (Raft snapshots and backups share it).
    pub(super) capture: Arc<Capture>,
}

impl RaftHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<Result<T, ConsensusError>>) -> Msg) -> Result<T, ConsensusError> {
        self.ask_within(self.write_timeout, make).await
    }

    async fn ask_within<T>(&self, timeout: Duration, make: impl FnOnce(oneshot::Sender<Result<T, ConsensusError>>) -> Msg) -> Result<T, ConsensusError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).map_err(|_| ConsensusError::Stopped)?;
        // The Raft thread answers at its own deadline; this one only guards against a lost reply.
        match tokio::time::timeout(timeout + Duration::from_secs(2), rx).await {
            Ok(Ok(result)) => result,
            // The loop ended without answering: the request may have reached the log.
            Ok(Err(_)) => Err(ConsensusError::StoppedOutcomeUnknown),
            Err(_) => Err(ConsensusError::Timeout(timeout.as_millis() as u64)),
        }
    }

    /// Proposes a command; resolves once it is committed, durable and applied on THIS node.
    pub async fn propose(&self, cmd: &Command) -> ProposalResult {
        self.propose_within(cmd, Duration::ZERO).await
    }

    /// [`Self::propose`] for a large command (a bundle), allowed `extra` time beyond
    /// `write_timeout_ms` to be replicated and applied.
    pub async fn propose_within(&self, cmd: &Command, extra: Duration) -> ProposalResult {
        let timeout = self.write_timeout + extra;
        let data = cmd.encode();
        if data.len() > self.max_entry_bytes {
            return Err(ConsensusError::TooLarge { bytes: data.len(), limit: self.max_entry_bytes });
        }
        let span = tracing::Span::current();
        self.ask_within(timeout, |reply| Msg::Propose { data, timeout, reply, span }).await
    }

    /// Proposes a membership change (leader only).
    pub async fn change_membership(&self, cc: ConfChangeV2) -> Result<(), ConsensusError> {
        self.ask(|reply| Msg::ConfChange { cc, reply }).await.map(|_| ())
    }

    /// Linearizable read barrier (Raft ReadIndex): resolves once this node has applied everything
    /// the leader had committed when the read arrived.
    pub async fn read_barrier(&self) -> Result<u64, ConsensusError> {
        self.ask(|reply| Msg::ReadIndex { reply }).await
    }

    /// Starts capturing the state machine at its applied index for a backup, on the Raft thread
    /// (between entries, so the capture is exactly the state at that index). The caller streams
    /// it with [`Capture::next_chunk`] and must end it with [`Capture::finish`]. `Busy` while a
    /// snapshot transfer or another backup holds the capture.
    pub async fn begin_backup(&self) -> Result<BackupStart, ConsensusError> {
        self.ask(|reply| Msg::Backup { reply }).await
    }

    /// The capture [`Self::begin_backup`] starts.
    pub fn capture(&self) -> &Arc<Capture> {
        &self.capture
    }

    pub fn status(&self) -> RaftStatus {
        self.status.read().clone()
    }

    /// Whether this node is the leader it knows of (the leader-only actors run while it is).
    pub fn leads(&self) -> bool {
        let st = self.status.read();
        st.role == "leader" && st.leader_id == st.id
    }

    /// The transport's fault filter (multi-node only).
    pub fn faults(&self) -> Option<&Arc<FaultFilter>> {
        self.faults.as_ref()
    }

    /// Asks the loop to stop after its current turn.
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }
}
