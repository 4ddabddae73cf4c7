//! Consensus metrics. The Raft thread records apply latency and batch sizes, fsync latency,
//! proposals and proposals in flight, and snapshot installs; the snapshot sender threads record
//! their transfers. The state (term, role, indexes, per-peer match index and lag, log size) is
//! copied from `RaftHandle::status()` when scraped (`crate::consensus::metrics`), so the
//! Raft thread does no extra work for it.

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

use super::{Families, MetricsError, LATENCY_BUCKETS};

/// Roles a node reports (`kiln_raft_role{role}`).
pub(crate) const ROLES: &[&str] = &["leader", "follower", "candidate", "learner", "stopped"];

pub struct RaftMetrics {
    // Recorded by the Raft thread.
    pub apply_seconds: Histogram,
    pub apply_batch_entries: Histogram,
    pub applied_entries: IntCounter,
    pub fsync_seconds: Histogram,
    pub proposals: IntCounter,
    pub proposals_in_flight: IntGauge,
    pub snapshot_installs: IntCounter,
    /// `outcome`: `sent` or `failed`.
    pub snapshot_sends: IntCounterVec,
    // Copied from the status when scraped.
    pub(crate) term: IntGauge,
    pub(crate) role: IntGaugeVec,
    pub(crate) leader_id: IntGauge,
    pub(crate) commit_index: IntGauge,
    pub(crate) applied_index: IntGauge,
    pub(crate) first_index: IntGauge,
    pub(crate) last_index: IntGauge,
    pub(crate) log_entries: IntGauge,
    pub(crate) voters: IntGauge,
    pub(crate) learners: IntGauge,
    pub(crate) peer_match_index: IntGaugeVec,
    pub(crate) peer_lag: IntGaugeVec,
}

impl RaftMetrics {
    pub(crate) fn new(f: &Families) -> Result<RaftMetrics, MetricsError> {
        Ok(RaftMetrics {
            apply_seconds: f.histogram("kiln_raft_apply_seconds", "Time to apply one batch of committed entries to the state machine.", LATENCY_BUCKETS)?,
            apply_batch_entries: f.histogram(
                "kiln_raft_apply_batch_entries",
                "Committed entries applied together in one batch.",
                &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0],
            )?,
            applied_entries: f.counter("kiln_raft_applied_entries_total", "Log entries applied by this node.")?,
            fsync_seconds: f.histogram("kiln_raft_fsync_seconds", "Time of the one fsync per Raft turn that makes the log and the applied state durable.", LATENCY_BUCKETS)?,
            proposals: f.counter("kiln_raft_proposals_total", "Writes this node proposed (its own or forwarded to the leader).")?,
            proposals_in_flight: f.gauge("kiln_raft_proposals_in_flight", "Proposals of this node waiting to be applied (queued, forwarded or in the log).")?,
            snapshot_installs: f.counter("kiln_raft_snapshot_installs_total", "Snapshots from the leader installed by this node.")?,
            snapshot_sends: f.counter_vec("kiln_raft_snapshot_sends_total", "Snapshot transfers to a peer started by this node as leader, by outcome.", &["outcome"])?,
            term: f.gauge("kiln_raft_term", "Current Raft term.")?,
            role: f.gauge_vec("kiln_raft_role", "1 for the role this node has now, 0 for the others.", &["role"])?,
            leader_id: f.gauge("kiln_raft_leader_id", "Id of the leader this node knows of (0: none).")?,
            commit_index: f.gauge("kiln_raft_commit_index", "Highest log index known to be committed.")?,
            applied_index: f.gauge("kiln_raft_applied_index", "Highest log index applied to the state machine.")?,
            first_index: f.gauge("kiln_raft_log_first_index", "First index kept in the log (after compaction).")?,
            last_index: f.gauge("kiln_raft_log_last_index", "Last index in the log.")?,
            log_entries: f.gauge("kiln_raft_log_entries", "Entries held in the log (last - first + 1).")?,
            voters: f.gauge("kiln_raft_voters", "Voting members of the cluster.")?,
            learners: f.gauge("kiln_raft_learners", "Learners (non-voting members) of the cluster.")?,
            peer_match_index: f.gauge_vec("kiln_raft_peer_match_index", "Highest log index known to be replicated on a peer (leader only).", &["peer"])?,
            peer_lag: f.gauge_vec("kiln_raft_peer_lag_entries", "Log entries a peer is behind the leader's last index (leader only).", &["peer"])?,
        })
    }
}

