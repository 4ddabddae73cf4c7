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

mod peer;
mod ready;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::RwLock;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType, Snapshot};
use raft::{RawNode, StateRole, Storage as _};
use serde::Serialize;
use tokio::sync::oneshot;

use super::storage::SledStorage;
use super::transport::{FaultFilter, ForwardCheck, Frame, Hooks, Inbound, Transport};
use super::ConsensusError;
use crate::consensus::config::{ConsensusSettings, PeerConfig};
use crate::metrics::raft::RaftMetrics;
use crate::machine::command::CommandV1;
use crate::store::snapshot::{Capture, Staging};
use crate::machine::{Command, OpOutcome, StateMachine};

/// What a proposer gets back: the per-write outcomes of its applied entry.
pub type ProposalResult = Result<Vec<OpOutcome>, ConsensusError>;

enum Msg {
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
    tx: Sender<Msg>,
    status: Arc<RwLock<RaftStatus>>,
    write_timeout: Duration,
    faults: Option<Arc<FaultFilter>>,
    /// Largest command accepted for the log: every entry must fit in one transport frame.
    max_entry_bytes: usize,
    /// The state machine's snapshot capture (Raft snapshots and backups share it).
    capture: Arc<Capture>,
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

/// Starts the Raft thread (and, with peers configured, the transport) over `db`.
/// `check` vets the command of every write a follower forwards, before this node proposes it.
/// `metrics`: what the loop records as it goes (`crate::metrics::raft`).
pub fn start(cfg: &ConsensusSettings, db: sled::Db, sm: StateMachine, check: ForwardCheck, metrics: Arc<RaftMetrics>) -> Result<(RaftHandle, JoinHandle<()>), ConsensusError> {
    let state = db.open_tree("state")?;
    let voters = cfg.cluster.initial_voters(cfg.node_id);
    let capture = Arc::new(Capture::new(db.open_tree("snapshot_preimages")?));
    let staging = Arc::new(Staging::new(db.open_tree(crate::store::snapshot::STAGING_TREE)?));
    let mut sm = sm.with_capture(capture.clone());
    let storage = SledStorage::open_with_state(db.open_tree("raft")?, Some((state.clone(), capture.clone())), &voters)?;
    // The state machine is authoritative: its conf state and applied index are written in the
    // same batch as the data, the log's copies may lag after a crash.
    if let Some(bytes) = sm.conf_state().map_err(storage_failure)? {
        let cs = ConfState::parse_from_bytes(&bytes).map_err(|e| ConsensusError::Storage(e.to_string()))?;
        storage.set_conf_state(&cs)?;
    }
    let fresh = sm.applied_index() == 0 && storage.last_index()? == 0 && storage.first_index()? == 1;
    if fresh && !voters.is_empty() {
        // Bootstrap: members of the initial cluster start from the same snapshot point (index 1,
        // term 1, the initial voters) instead of an empty log. The log then starts at 2, so a
        // node added later always receives a snapshot (with the current membership) rather
        // than replaying conf changes from an empty configuration.
        let mut cs = ConfState::default();
        cs.voters = voters.clone();
        let bytes = cs.write_to_bytes().map_err(|e| ConsensusError::Storage(e.to_string()))?;
        sm.apply_conf(1, 1, &bytes, None).map_err(storage_failure)?;
        storage.reset_to(1, 1, Some(&cs))?;
        db.flush()?;
    }
    // The log must agree with the state machine at its applied index; if a crash fell between
    // installing a snapshot's state and resetting the log, reset it now.
    let applied = sm.applied_index();
    let mismatch = matches!(storage.term(applied), Ok(t) if t != sm.applied_term());
    if applied > 0 && (applied > storage.last_index()? || mismatch) {
        storage.reset_to(applied, sm.applied_term(), None)?;
    }
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
        // A message carries entries up to this size (or one larger entry), so it fits in a frame.
        max_size_per_msg: (cfg.cluster.max_frame_bytes as u64 / 4).min(1024 * 1024),
        max_inflight_msgs: 256,
        pre_vote: true,
        check_quorum: true,
        ..Default::default()
    };
    raft_cfg.validate()?;
    // What this node must have applied before it serves (see the wait below): the commit index
    // it recorded, or, as the only voter, every entry of its durable log (each is committed).
    let single_voter = {
        let cs = storage.conf_state()?;
        cs.voters == [cfg.node_id] && cs.learners.is_empty()
    };
    let catch_up_to = if single_voter { storage.last_index()? } else { hs.commit };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let mut raw = RawNode::new(&raft_cfg, storage, &logger)?;
    let conf = raw.store().conf_state()?;
    if conf.voters == [cfg.node_id] && conf.learners.is_empty() {
        // A one-voter group elects itself at once instead of waiting for an election timeout.
        raw.campaign()?;
    }
    let (tx, rx) = crossbeam_channel::unbounded();
    let status = Arc::new(RwLock::new(RaftStatus { id: cfg.node_id, applied_index: sm.applied_index(), ..Default::default() }));
    let transport = if cfg.cluster.peers.is_empty() {
        None
    } else {
        let inbox = tx.clone();
        let (sink, known) = (staging.clone(), status.clone());
        let hooks = Hooks {
            forward: check,
            // Only the leader this node knows may stream it a snapshot.
            snapshot: Arc::new(move |from, id, seq, last, data: &[u8]| {
                let leader = known.read().leader_id;
                if from != leader {
                    return Err(format!("node {from} is not the leader (node {leader})"));
                }
                sink.accept(id, seq, last, data).map_err(|e| e.to_string())
            }),
        };
        let t = Transport::start(
            cfg.node_id,
            &cfg.cluster,
            Arc::new(move |m| {
                let _ = inbox.send(Msg::Peer(m));
            }),
            hooks,
        )
        .map_err(|e| ConsensusError::Transport(e.to_string()))?;
        Some(t)
    };
    let start_applied = sm.applied_index();
    let mut node = Node {
        me: cfg.node_id,
        raw,
        sm,
        db,
        transport: transport.clone(),
        // Random, not the clock: ids of a restarted process must not meet its old entries' ids
        // still in the log (a clock set back would repeat them).
        next_req: uuid::Uuid::new_v4().as_u64_pair().0 >> 2,
        waiters: HashMap::new(),
        queued: VecDeque::new(),
        by_index: BTreeMap::new(),
        reads: HashMap::new(),
        checked_term: 0,
        snapshot_index: 0,
        pinned_term: 0,
        durable_applied: start_applied,
        staging,
        chunk_bytes: (cfg.cluster.max_frame_bytes / 4).min(4 * 1024 * 1024),
        write_timeout: Duration::from_millis(cfg.write_timeout_ms),
        tick: Duration::from_millis(cfg.raft.tick_ms),
        keep_entries: cfg.raft.log_keep_entries,
        max_log_bytes: cfg.raft.log_max_bytes,
        bytes_since_compact: 0,
        status: status.clone(),
        metrics,
    };
    node.refresh_peers();
    let handle = std::thread::Builder::new()
        .name(format!("raft-{}", cfg.node_id))
        .spawn(move || node.run(rx))
        .map_err(|e| ConsensusError::Raft(format!("cannot start the raft thread: {e}")))?;
    // A write is acknowledged once applied, but the applied state is made durable with the next
    // fsync; after a crash the entries are in the log and are applied again. Wait for that
    // before the node serves, so it never answers with less than it acknowledged (bounded: a
    // lone voter that cannot elect itself in time serves anyway, with a warning).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while status.read().applied_index < catch_up_to {
        if handle.is_finished() || std::time::Instant::now() > deadline {
            tracing::warn!(applied = status.read().applied_index, catch_up_to, "serving before the log is applied again");
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let faults = transport.map(|t| t.faults.clone());
    let max_entry_bytes = max_entry_bytes(cfg.cluster.max_frame_bytes);
    Ok((RaftHandle { tx, status, write_timeout: Duration::from_millis(cfg.write_timeout_ms), faults, max_entry_bytes, capture }, handle))
}

/// The largest entry that fits in a frame of `max_frame` bytes with its Raft message around it.
pub fn max_entry_bytes(max_frame: usize) -> usize {
    max_frame - (max_frame / 16).min(1024 * 1024)
}

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

struct Node {
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
    /// replica then applies with the same search definitions or stops (store::state_machine).
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

fn storage_failure(e: crate::store::StoreError) -> ConsensusError {
    ConsensusError::Storage(e.to_string())
}
