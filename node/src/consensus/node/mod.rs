//! The Raft loop: one thread owns the `RawNode`, modelled on raft-rs `examples/five_mem_node`. Each
//! turn it takes every waiting message (proposals, peer frames, reads; group commit), ticks, and
//! handles one Ready: send messages, install a snapshot, apply committed entries, persist entries
//! and hard state with ONE fsync, advance.
//!
//! Every proposal carries its origin (node id + request id) in the entry context. The leader
//! proposes its own writes; a follower forwards them to the leader over the transport and, like
//! every node, recognises its own entries when it applies them, so it answers its client only once
//! its own state machine has applied the write. A proposal whose log index was taken by another
//! entry (leadership change) is answered "dropped, retry"; one not confirmed in time, "timeout".

mod boot;
mod handle;
mod peer;
mod ready;

pub use boot::{max_entry_bytes, start};
pub use handle::{BackupStart, PeerStatus, ProposalResult, RaftHandle, RaftStatus};
use handle::Msg;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use parking_lot::RwLock;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType, Snapshot};
use raft::{RawNode, StateRole, Storage as _};
use tokio::sync::oneshot;

use super::storage::SledStorage;
use super::transport::{Frame, Transport};
use super::ConsensusError;
use crate::consensus::config::PeerConfig;
use crate::metrics::raft::RaftMetrics;
use crate::machine::command::CommandV1;
use crate::store::snapshot::Staging;
use crate::machine::{Command, StateMachine};

enum Stage {
    /// Waiting for a leader (data kept to send).
    Queued { not_before: Instant },
    /// Sent to `leader` in `term`, no index yet (data kept in case the leader refuses it).
    Forwarded { term: u64, leader: u64 },
    /// In the log at this index and term.
    Proposed { index: u64 },
}

struct Waiter {
    reply: oneshot::Sender<ProposalResult>,
    deadline: Instant,
    /// The time it was given (for the error message).
    timeout: Duration,
    data: Option<Vec<u8>>,
    stage: Stage,
    /// The proposer's span (`crate::http::request_id`): `proposed` and `applied` are logged in it.
    span: tracing::Span,
}

struct ReadWaiter {
    reply: oneshot::Sender<Result<u64, ConsensusError>>,
    deadline: Instant,
    index: Option<u64>,
}

pub(super) struct Node {
    me: u64,
    raw: RawNode<SledStorage>,
    sm: StateMachine,
    db: sled::Db,
    transport: Option<Arc<Transport>>,
    next_req: u64,
    /// Proposals of this node not yet answered, by request id.
    waiters: HashMap<u64, Waiter>,
    /// Request ids to (re)submit once a leader is known.
    queued: VecDeque<u64>,
    /// Log index → request id of proposals in the log, to detect ones replaced by other entries.
    by_index: BTreeMap<u64, u64>,
    reads: HashMap<u64, ReadWaiter>,
    /// Highest applied term for which unmatched forwards were already failed.
    checked_term: u64,
    /// Index of the last snapshot installed by this process.
    snapshot_index: u64,
    /// The term in which this node, as leader, last checked the index format pin.
    pinned_term: u64,
    /// Applied index covered by the last fsync (log compaction never passes it).
    durable_applied: u64,
    /// Snapshot streams arriving from the leader.
    staging: Arc<Staging>,
    /// Bytes per snapshot chunk sent to a peer.
    chunk_bytes: usize,
    write_timeout: Duration,
    tick: Duration,
    keep_entries: u64,
    /// Applied entry bytes after which the log is compacted whatever the entry count.
    max_log_bytes: u64,
    bytes_since_compact: u64,
    status: Arc<RwLock<RaftStatus>>,
    metrics: Arc<RaftMetrics>,
}

/// Entries kept behind the applied index by a compaction triggered by size.
const MIN_KEPT_ENTRIES: u64 = 100;

/// Entry context: origin node and request id.
fn context(origin: u64, req: u64) -> Vec<u8> {
    let mut c = Vec::with_capacity(16);
    c.extend_from_slice(&origin.to_be_bytes());
    c.extend_from_slice(&req.to_be_bytes());
    c
}

fn parse_context(c: &[u8]) -> Option<(u64, u64)> {
    if c.len() != 16 {
        return None;
    }
    Some((u64::from_be_bytes(c[..8].try_into().ok()?), u64::from_be_bytes(c[8..].try_into().ok()?)))
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
                    Msg::Propose { data, timeout, reply, span } => self.enqueue(data, timeout, reply, span),
                    Msg::ConfChange { cc, reply } => self.propose_conf_change(cc, reply),
                    Msg::ReadIndex { reply } => self.start_read(reply),
                    Msg::Backup { reply } => {
                        let _ = reply.send(self.begin_backup());
                    }
                    Msg::Peer(m) => self.on_peer(m),
                    Msg::Stop => stopping = true,
                }
            }
            if last_tick.elapsed() >= self.tick {
                self.raw.tick();
                last_tick = Instant::now();
                self.expire();
                self.retry_reads();
            }
            self.submit_queued();
            let ready = self.on_ready();
            self.staging.release();
            if let Err(e) = ready {
                tracing::error!("raft loop stopping: {e}");
                break;
            }
            self.answer_reads();
            self.maybe_pin();
            self.publish_status();
            self.metrics.proposals_in_flight.set(self.waiters.len() as i64);
        }
        for (_, w) in std::mem::take(&mut self.waiters) {
            let err = match w.stage {
                Stage::Queued { .. } => ConsensusError::Stopped,
                Stage::Forwarded { .. } | Stage::Proposed { .. } => ConsensusError::StoppedOutcomeUnknown,
            };
            let _ = w.reply.send(Err(err));
        }
        for (_, r) in std::mem::take(&mut self.reads) {
            let _ = r.reply.send(Err(ConsensusError::Stopped));
        }
        if let Some(t) = &self.transport {
            t.stop();
        }
        if let Err(e) = self.db.flush() {
            tracing::error!("final flush failed: {e}");
        }
        self.status.write().role = "stopped";
    }

    /// [`RaftHandle::begin_backup`], on the Raft thread.
    fn begin_backup(&mut self) -> Result<BackupStart, ConsensusError> {
        let id = uuid::Uuid::new_v4().as_u64_pair().0;
        let (index, term) = (self.sm.applied_index(), self.sm.applied_term());
        if !self.sm.capture().start(id, index).map_err(storage_failure)? {
            return Err(ConsensusError::Busy("a snapshot transfer or another backup is streaming this node's state".into()));
        }
        tracing::info!(index, term, stream = id, "backup capture started");
        Ok(BackupStart { id, index, term })
    }

    fn new_req(&mut self) -> u64 {
        self.next_req += 1;
        self.next_req
    }

    fn enqueue(&mut self, data: Vec<u8>, timeout: Duration, reply: oneshot::Sender<ProposalResult>, span: tracing::Span) {
        let req = self.new_req();
        let now = Instant::now();
        self.metrics.proposals.inc();
        self.waiters.insert(req, Waiter { reply, deadline: now + timeout, timeout, data: Some(data), stage: Stage::Queued { not_before: now }, span });
        self.queued.push_back(req);
    }

    /// Proposes on the leader; returns (index, term) of the new entry.
    fn propose_local(&mut self, ctx: Vec<u8>, data: Vec<u8>) -> Result<(u64, u64), ConsensusError> {
        if self.raw.raft.state != StateRole::Leader {
            return Err(ConsensusError::NoLeader);
        }
        // The first proposal of a term is the pin when one is needed, whatever comes first
        // (a queued write, a forward, this loop's own check).
        self.maybe_pin();
        let before = self.raw.raft.raft_log.last_index();
        match self.raw.propose(ctx, data) {
            Ok(()) => {
                // A leader appends at once: the entry is at the new last index, in this term.
                let index = self.raw.raft.raft_log.last_index();
                if index == before + 1 {
                    Ok((index, self.raw.raft.term))
                } else {
                    Err(ConsensusError::Raft("proposal was not appended".into()))
                }
            }
            Err(raft::Error::ProposalDropped) => Err(ConsensusError::NoLeader),
            Err(e) => Err(e.into()),
        }
    }

    /// A new leader whose index format is not the one the cluster is pinned to (or none is yet)
    /// proposes a Pin with its own, once per term, ahead of the writes it will propose: every
    /// replica then applies with the same search definitions or stops (machine::state_machine).
    fn maybe_pin(&mut self) {
        let term = self.raw.raft.term;
        if self.raw.raft.state != StateRole::Leader || self.pinned_term == term {
            return;
        }
        self.pinned_term = term;
        if let Some(format) = self.sm.needs_pin() {
            tracing::info!(%format, "pinning the cluster's index format");
            let data = Command::V1(CommandV1::Pin { format }).encode();
            if let Err(e) = self.propose_local(context(self.me, 0), data) {
                tracing::warn!("could not propose the index format pin: {e}");
                self.pinned_term = 0;
            }
        }
    }

    /// Sends queued proposals to the log (leader) or to the leader (follower).
    fn submit_queued(&mut self) {
        let leader = self.raw.raft.leader_id;
        if leader == 0 || self.queued.is_empty() {
            return;
        }
        let now = Instant::now();
        let mut later = VecDeque::new();
        while let Some(req) = self.queued.pop_front() {
            let Some(w) = self.waiters.get_mut(&req) else { continue };
            match w.stage {
                Stage::Queued { not_before } if not_before > now => {
                    later.push_back(req);
                    continue;
                }
                Stage::Queued { .. } => {}
                _ => continue,
            }
            let Some(data) = w.data.clone() else { continue };
            if leader == self.me {
                match self.propose_local(context(self.me, req), data) {
                    Ok((index, term)) => {
                        let w = self.waiters.get_mut(&req).expect("present");
                        if tracing::enabled!(tracing::Level::DEBUG) {
                            w.span.in_scope(|| tracing::debug!(index, term, "proposed"));
                        }
                        w.stage = Stage::Proposed { index };
                        w.data = None;
                        self.by_index.insert(index, req);
                    }
                    Err(ConsensusError::NoLeader) => {
                        // Leadership is moving; try again once it settles.
                        later.push_back(req);
                    }
                    Err(e) => {
                        if let Some(w) = self.waiters.remove(&req) {
                            let _ = w.reply.send(Err(e));
                        }
                    }
                }
            } else if let Some(t) = &self.transport {
                let term = self.raw.raft.term;
                w.stage = Stage::Forwarded { term, leader };
                if tracing::enabled!(tracing::Level::DEBUG) {
                    w.span.in_scope(|| tracing::debug!(leader, term, "forwarded to the leader"));
                }
                t.send(leader, Frame::Forward { origin: self.me, req_id: req, term, data });
            }
        }
        self.queued = later;
    }

    /// A forward that did not make it into the log goes back to the queue, after a short pause.
    fn requeue(&mut self, req: u64) {
        if let Some(w) = self.waiters.get_mut(&req) {
            if matches!(w.stage, Stage::Forwarded { .. }) {
                w.stage = Stage::Queued { not_before: Instant::now() + Duration::from_millis(20) };
                self.queued.push_back(req);
            }
        }
    }

    fn propose_conf_change(&mut self, cc: ConfChangeV2, reply: oneshot::Sender<ProposalResult>) {
        if self.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(ConsensusError::NotLeader(self.raw.raft.leader_id)));
            return;
        }
        let req = self.new_req();
        let before = self.raw.raft.raft_log.last_index();
        match self.raw.propose_conf_change(context(self.me, req), cc) {
            Ok(()) if self.raw.raft.raft_log.last_index() == before + 1 => {
                let index = before + 1;
                let stage = Stage::Proposed { index };
                self.waiters.insert(req, Waiter { reply, deadline: Instant::now() + self.write_timeout, timeout: self.write_timeout, data: None, stage, span: tracing::Span::current() });
                self.by_index.insert(index, req);
            }
            Ok(()) => {
                let _ = reply.send(Err(ConsensusError::Raft("membership change was not appended".into())));
            }
            Err(e) => {
                // e.g. another membership change is still pending.
                let _ = reply.send(Err(ConsensusError::Membership(e.to_string())));
            }
        }
    }

    fn start_read(&mut self, reply: oneshot::Sender<Result<u64, ConsensusError>>) {
        let req = self.new_req();
        self.reads.insert(req, ReadWaiter { reply, deadline: Instant::now() + self.write_timeout, index: None });
        self.raw.read_index(req.to_be_bytes().to_vec());
    }

    /// raft-rs drops read requests while no leader is known (or the leader has not committed in
    /// its term yet): ask again every tick until the deadline.
    fn retry_reads(&mut self) {
        let pending: Vec<u64> = self.reads.iter().filter(|(_, r)| r.index.is_none()).map(|(k, _)| *k).collect();
        for req in pending {
            self.raw.read_index(req.to_be_bytes().to_vec());
        }
    }

    fn answer_reads(&mut self) {
        let applied = self.sm.applied_index();
        let done: Vec<u64> = self.reads.iter().filter(|(_, r)| r.index.is_some_and(|i| i <= applied)).map(|(k, _)| *k).collect();
        for req in done {
            if let Some(r) = self.reads.remove(&req) {
                let _ = r.reply.send(Ok(applied));
            }
        }
    }

    /// Answers everything past its deadline.
    fn expire(&mut self) {
        let now = Instant::now();
        let ms = self.write_timeout.as_millis() as u64;
        let late: Vec<u64> = self.waiters.iter().filter(|(_, w)| w.deadline <= now).map(|(k, _)| *k).collect();
        for req in late {
            if let Some(w) = self.waiters.remove(&req) {
                let waited = w.timeout.as_millis() as u64;
                let err = match w.stage {
                    Stage::Queued { .. } => ConsensusError::NoLeaderTimeout(waited),
                    _ => ConsensusError::Timeout(waited),
                };
                if let Stage::Proposed { index } = w.stage {
                    self.forget_index(index, req);
                }
                let _ = w.reply.send(Err(err));
            }
        }
        let late: Vec<u64> = self.reads.iter().filter(|(_, r)| r.deadline <= now).map(|(k, _)| *k).collect();
        for req in late {
            if let Some(r) = self.reads.remove(&req) {
                let _ = r.reply.send(Err(ConsensusError::NoLeaderTimeout(ms)));
            }
        }
    }

    /// Drops `index → req` unless a later proposal took that index over.
    fn forget_index(&mut self, index: u64, req: u64) {
        if self.by_index.get(&index) == Some(&req) {
            self.by_index.remove(&index);
        }
    }

    fn send_messages(&mut self, msgs: Vec<Message>) {
        let Some(t) = &self.transport else { return };
        for msg in msgs {
            let to = msg.to;
            let snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
            let stream = if snapshot { crate::store::snapshot::parse_descriptor(msg.get_snapshot().get_data()) } else { None };
            let encoded = msg.write_to_bytes();
            if let (Err(_), Some(id)) = (&encoded, stream) {
                self.sm.capture().finish(id);
            }
            match encoded {
                Ok(bytes) if snapshot => match stream {
                    Some(id) => super::snapshot_send::spawn(t.clone(), self.sm.capture().clone(), self.sm.tree().clone(), to, id, bytes, self.chunk_bytes, self.metrics.clone()),
                    None => t.send(to, Frame::Snapshot(bytes)),
                },
                Ok(bytes) => t.send(to, Frame::Raft(bytes)),
                Err(e) => tracing::error!("cannot encode a raft message: {e}"),
            }
        }
    }
}

pub(super) fn storage_failure(e: crate::store::StoreError) -> ConsensusError {
    ConsensusError::Storage(e.to_string())
}
