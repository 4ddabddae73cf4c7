//! The Raft loop: one thread owns the `RawNode`, modelled on raft-rs `examples/five_mem_node`. Each
//! turn it takes every waiting proposal (group commit), ticks, and handles one Ready: persist entries
//! and hard state with ONE fsync, apply committed entries through the state machine, answer the
//! proposers whose entries were applied, advance.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::RwLock;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeV2, Entry, EntryType};
use raft::{RawNode, StateRole, Storage as _};
use serde::Serialize;
use tokio::sync::oneshot;

use super::storage::SledStorage;
use super::ConsensusError;
use crate::config::Config;
use crate::store::{Command, OpOutcome, StateMachine};

/// What a proposer gets back: the per-write outcomes of its applied entry.
pub type ProposalResult = Result<Vec<OpOutcome>, ConsensusError>;

enum Msg {
    Propose { data: Vec<u8>, reply: oneshot::Sender<ProposalResult> },
    Stop,
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
}

/// A cloneable handle to the Raft thread.
#[derive(Clone)]
pub struct RaftHandle {
    tx: Sender<Msg>,
    status: Arc<RwLock<RaftStatus>>,
    write_timeout: Duration,
}

impl RaftHandle {
    /// Proposes a command; resolves once it is committed, durable and applied on this node.
    pub async fn propose(&self, cmd: &Command) -> ProposalResult {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::Propose { data: cmd.encode(), reply }).map_err(|_| ConsensusError::Stopped)?;
        match tokio::time::timeout(self.write_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ConsensusError::Stopped),
            Err(_) => Err(ConsensusError::Timeout(self.write_timeout.as_millis() as u64)),
        }
    }

    pub fn status(&self) -> RaftStatus {
        self.status.read().clone()
    }

    /// Asks the loop to stop after its current turn.
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }
}

/// Starts the Raft thread over `db` (trees `raft` and, through `sm`, `state`).
pub fn start(cfg: &Config, db: sled::Db, sm: StateMachine) -> Result<(RaftHandle, JoinHandle<()>), ConsensusError> {
    let storage = SledStorage::open(db.open_tree("raft")?, &[cfg.node_id])?;
    // The applied index is persisted with the state; the commit index is never behind it.
    let mut hs = storage.hard_state()?;
    if hs.commit < sm.applied_index() {
        hs.commit = sm.applied_index();
        storage.set_hard_state(&hs)?;
    }
    let raft_cfg = raft::Config {
        id: cfg.node_id,
        election_tick: cfg.raft.election_ticks,
        heartbeat_tick: cfg.raft.heartbeat_ticks,
        applied: sm.applied_index(),
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        pre_vote: true,
        check_quorum: true,
        ..Default::default()
    };
    raft_cfg.validate()?;
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let mut raw = RawNode::new(&raft_cfg, storage, &logger)?;
    let voters = raw.store().conf_state()?.voters;
    if voters == [cfg.node_id] {
        // A one-voter group elects itself at once instead of waiting for an election timeout.
        raw.campaign()?;
    }
    let (tx, rx) = crossbeam_channel::unbounded();
    let status = Arc::new(RwLock::new(RaftStatus { id: cfg.node_id, ..Default::default() }));
    let mut node = Node {
        raw,
        sm,
        db,
        waiters: BTreeMap::new(),
        tick: Duration::from_millis(cfg.raft.tick_ms),
        keep_entries: cfg.raft.log_keep_entries,
        status: status.clone(),
    };
    let handle = std::thread::Builder::new()
        .name(format!("raft-{}", cfg.node_id))
        .spawn(move || node.run(rx))
        .map_err(|e| ConsensusError::Raft(format!("cannot start the raft thread: {e}")))?;
    Ok((RaftHandle { tx, status, write_timeout: Duration::from_millis(cfg.write_timeout_ms) }, handle))
}

struct Node {
    raw: RawNode<SledStorage>,
    sm: StateMachine,
    db: sled::Db,
    /// Proposers waiting, by the log index their entry got, with its term. An entry applied at that
    /// index with another term means the proposal was lost in a leadership change.
    waiters: BTreeMap<u64, (u64, oneshot::Sender<ProposalResult>)>,
    tick: Duration,
    keep_entries: u64,
    status: Arc<RwLock<RaftStatus>>,
}

impl Node {
    fn run(&mut self, rx: Receiver<Msg>) {
        let mut last_tick = Instant::now();
        let mut stopping = false;
        self.publish_status();
        while !stopping {
            let wait = self.tick.saturating_sub(last_tick.elapsed());
            let first = match rx.recv_timeout(wait) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            // Group commit: everything already queued joins this turn's Ready.
            for msg in first.into_iter().chain(rx.try_iter()) {
                match msg {
                    Msg::Propose { data, reply } => self.propose(data, reply),
                    Msg::Stop => stopping = true,
                }
            }
            if last_tick.elapsed() >= self.tick {
                self.raw.tick();
                last_tick = Instant::now();
            }
            if let Err(e) = self.on_ready() {
                tracing::error!("raft loop stopping: {e}");
                break;
            }
            self.publish_status();
        }
        for (_, (_, w)) in std::mem::take(&mut self.waiters) {
            let _ = w.send(Err(ConsensusError::Stopped));
        }
        if let Err(e) = self.db.flush() {
            tracing::error!("final flush failed: {e}");
        }
        self.status.write().role = "stopped";
    }

    fn propose(&mut self, data: Vec<u8>, reply: oneshot::Sender<ProposalResult>) {
        if self.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(ConsensusError::NoLeader));
            return;
        }
        let before = self.raw.raft.raft_log.last_index();
        match self.raw.propose(Vec::new(), data) {
            Ok(()) => {
                // A leader appends at once: the entry is at the new last index, in this term.
                let index = self.raw.raft.raft_log.last_index();
                if index == before + 1 {
                    self.waiters.insert(index, (self.raw.raft.term, reply));
                } else {
                    let _ = reply.send(Err(ConsensusError::Raft("proposal was not appended".into())));
                }
            }
            Err(raft::Error::ProposalDropped) => {
                let _ = reply.send(Err(ConsensusError::NoLeader));
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    fn on_ready(&mut self) -> Result<(), ConsensusError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if !ready.messages().is_empty() {
            tracing::debug!(count = ready.messages().len(), "no transport: dropping raft messages");
            ready.take_messages();
        }
        if !ready.snapshot().is_empty() {
            return Err(ConsensusError::Raft("installing snapshots needs the cluster transport".into()));
        }
        self.apply(ready.take_committed_entries())?;
        let mut persisted = false;
        if !ready.entries().is_empty() {
            self.raw.store().append(ready.entries())?;
            persisted = true;
        }
        if let Some(hs) = ready.hs() {
            self.raw.store().set_hard_state(hs)?;
            persisted = true;
        }
        if persisted {
            // One fsync for every write in this Ready.
            self.db.flush()?;
        }
        ready.take_persisted_messages();
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.store().set_commit(commit)?;
        }
        light.take_messages();
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.maybe_compact()?;
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), ConsensusError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut replies = Vec::new();
        for entry in entries {
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {
                    self.sm.apply_empty(entry.index, entry.term).map_err(storage_failure)?;
                }
                EntryType::EntryNormal => {
                    let outcomes = self.sm.apply(entry.index, entry.term, &entry.data).map_err(storage_failure)?;
                    if let Some((term, w)) = self.waiters.remove(&entry.index) {
                        if term == entry.term {
                            replies.push((w, Ok(outcomes)));
                        } else {
                            replies.push((w, Err(ConsensusError::Dropped)));
                        }
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let cc = if entry.get_entry_type() == EntryType::EntryConfChange {
                        let mut cc = ConfChange::default();
                        cc.merge_from_bytes(&entry.data).map_err(|e| ConsensusError::Raft(e.to_string()))?;
                        raft_proto::ConfChangeI::into_v2(cc)
                    } else {
                        let mut cc = ConfChangeV2::default();
                        cc.merge_from_bytes(&entry.data).map_err(|e| ConsensusError::Raft(e.to_string()))?;
                        cc
                    };
                    let cs = self.raw.apply_conf_change(&cc)?;
                    self.raw.store().set_conf_state(&cs)?;
                    self.sm.apply_empty(entry.index, entry.term).map_err(storage_failure)?;
                }
            }
        }
        // The status shows a write as applied before its proposer hears back.
        self.publish_status();
        // Waiters at or below the applied index whose entry was replaced never get theirs.
        let applied = self.sm.applied_index();
        let stale: Vec<u64> = self.waiters.range(..=applied).map(|(i, _)| *i).collect();
        for i in stale {
            if let Some((_, w)) = self.waiters.remove(&i) {
                replies.push((w, Err(ConsensusError::Dropped)));
            }
        }
        for (w, result) in replies {
            let _ = w.send(result);
        }
        Ok(())
    }

    fn maybe_compact(&mut self) -> Result<(), ConsensusError> {
        let applied = self.sm.applied_index();
        let first = self.raw.store().first_index()?;
        if applied > first + 2 * self.keep_entries {
            self.raw.store().compact(applied - self.keep_entries)?;
        }
        Ok(())
    }

    fn publish_status(&self) {
        let r = &self.raw.raft;
        let mut s = self.status.write();
        s.role = match r.state {
            StateRole::Leader => "leader",
            StateRole::Follower => "follower",
            StateRole::Candidate | StateRole::PreCandidate => "candidate",
        };
        s.term = r.term;
        s.leader_id = r.leader_id;
        s.commit_index = r.raft_log.committed;
        s.applied_index = self.sm.applied_index();
        s.first_index = self.raw.store().first_index().unwrap_or_default();
        s.last_index = self.raw.store().last_index().unwrap_or_default();
        s.voters = r.prs().conf().voters().ids().iter().collect();
    }
}

fn storage_failure(e: crate::store::StoreError) -> ConsensusError {
    ConsensusError::Storage(e.to_string())
}
