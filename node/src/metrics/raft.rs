//! Consensus metrics. The Raft thread records apply latency and batch sizes, fsync latency,
//! proposals and proposals in flight, and snapshot installs; the snapshot sender threads record
//! their transfers. The state (term, role, indexes, per-peer match index and lag, log size) is
//! copied from `RaftHandle::status()` when scraped ([`RaftMetrics::observe_status`]), so the
//! Raft thread does no extra work for it.

use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

use super::{Families, MetricsError, LATENCY_BUCKETS};
use crate::consensus::node::RaftStatus;

/// Roles a node reports (`kiln_raft_role{role}`).
const ROLES: &[&str] = &["leader", "follower", "candidate", "learner", "stopped"];

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
    term: IntGauge,
    role: IntGaugeVec,
    leader_id: IntGauge,
    commit_index: IntGauge,
    applied_index: IntGauge,
    first_index: IntGauge,
    last_index: IntGauge,
    log_entries: IntGauge,
    voters: IntGauge,
    learners: IntGauge,
    peer_match_index: IntGaugeVec,
    peer_lag: IntGaugeVec,
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

    /// Copies the consensus state into the gauges (at scrape time). Per-peer series exist on
    /// the leader only, for the current members.
    pub fn observe_status(&self, s: &RaftStatus) {
        let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        self.term.set(g(s.term));
        for role in ROLES {
            self.role.with_label_values(&[role]).set(i64::from(*role == s.role));
        }
        self.leader_id.set(g(s.leader_id));
        self.commit_index.set(g(s.commit_index));
        self.applied_index.set(g(s.applied_index));
        self.first_index.set(g(s.first_index));
        self.last_index.set(g(s.last_index));
        self.log_entries.set(g((s.last_index + 1).saturating_sub(s.first_index)));
        self.voters.set(s.voters.len() as i64);
        self.learners.set(s.learners.len() as i64);
        self.peer_match_index.reset();
        self.peer_lag.reset();
        for p in &s.peers {
            let id = p.id.to_string();
            if let Some(m) = p.match_index {
                self.peer_match_index.with_label_values(&[&id]).set(g(m));
            }
            if let Some(l) = p.lag {
                self.peer_lag.with_label_values(&[&id]).set(g(l));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::node::PeerStatus;

    #[test]
    fn status_becomes_gauges_and_old_peers_go() {
        let registry = prometheus::Registry::new();
        let m = RaftMetrics::new(&Families { registry: &registry }).unwrap();
        let peer = |id, m| PeerStatus { id, match_index: Some(m), lag: Some(10 - m), ..PeerStatus::default() };
        let mut s = RaftStatus { id: 1, role: "leader", term: 3, leader_id: 1, commit_index: 10, applied_index: 9, first_index: 2, last_index: 10, voters: vec![1, 2, 3], peers: vec![peer(2, 10), peer(3, 7)], ..RaftStatus::default() };
        m.observe_status(&s);
        assert_eq!(m.log_entries.get(), 9);
        assert_eq!(m.role.with_label_values(&["leader"]).get(), 1);
        assert_eq!(m.role.with_label_values(&["follower"]).get(), 0);
        assert_eq!(m.peer_lag.with_label_values(&["3"]).get(), 3);
        s.role = "follower";
        s.peers = vec![PeerStatus { id: 2, ..PeerStatus::default() }];
        m.observe_status(&s);
        assert_eq!(m.role.with_label_values(&["leader"]).get(), 0);
        let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
        assert!(!text.contains("kiln_raft_peer_lag_entries{"), "a follower shows no peer lag: {text}");
    }
}
