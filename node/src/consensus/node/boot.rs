//! Starting consensus on a node: opening the Raft log over sled, restoring the state machine's conf
//! state, bootstrapping a fresh cluster's voters, starting the transport and the Raft thread.

use super::handle::{Msg, RaftHandle, RaftStatus};
use super::{storage_failure, Node};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use parking_lot::RwLock;
use protobuf::Message as _;
use raft::prelude::ConfState;
use raft::{RawNode, Storage as _};
use crate::consensus::storage::SledStorage;
use crate::consensus::transport::{ForwardCheck, Hooks, Transport};
use crate::consensus::ConsensusError;
use crate::consensus::config::ConsensusSettings;
use crate::metrics::raft::RaftMetrics;
use crate::store::snapshot::{Capture, Staging};
use crate::machine::StateMachine;

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
