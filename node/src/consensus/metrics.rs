//! Copies the consensus state ([`RaftStatus`]) into the Raft gauges of
//! [`crate::metrics::raft::RaftMetrics`] when `/metrics` is scraped, so the Raft thread does no
//! extra work for them.

use crate::consensus::node::RaftStatus;
use crate::metrics::raft::{RaftMetrics, ROLES};

/// Copies the consensus state into the gauges (at scrape time). Per-peer series exist on the
/// leader only, for the current members.
pub fn observe_status(m: &RaftMetrics, s: &RaftStatus) {
    let g = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    m.term.set(g(s.term));
    for role in ROLES {
        m.role.with_label_values(&[role]).set(i64::from(*role == s.role));
    }
    m.leader_id.set(g(s.leader_id));
    m.commit_index.set(g(s.commit_index));
    m.applied_index.set(g(s.applied_index));
    m.first_index.set(g(s.first_index));
    m.last_index.set(g(s.last_index));
    m.log_entries.set(g((s.last_index + 1).saturating_sub(s.first_index)));
    m.voters.set(s.voters.len() as i64);
    m.learners.set(s.learners.len() as i64);
    m.peer_match_index.reset();
    m.peer_lag.reset();
    for p in &s.peers {
        let id = p.id.to_string();
        if let Some(matched) = p.match_index {
            m.peer_match_index.with_label_values(&[&id]).set(g(matched));
        }
        if let Some(l) = p.lag {
            m.peer_lag.with_label_values(&[&id]).set(g(l));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consensus::node::PeerStatus;
    use crate::metrics::Families;

    #[test]
    fn status_becomes_gauges_and_old_peers_go() {
        let registry = prometheus::Registry::new();
        let m = RaftMetrics::new(&Families { registry: &registry }).unwrap();
        let peer = |id, m| PeerStatus { id, match_index: Some(m), lag: Some(10 - m), ..PeerStatus::default() };
        let mut s = RaftStatus { id: 1, role: "leader", term: 3, leader_id: 1, commit_index: 10, applied_index: 9, first_index: 2, last_index: 10, voters: vec![1, 2, 3], peers: vec![peer(2, 10), peer(3, 7)], ..RaftStatus::default() };
        observe_status(&m, &s);
        assert_eq!(m.log_entries.get(), 9);
        assert_eq!(m.role.with_label_values(&["leader"]).get(), 1);
        assert_eq!(m.role.with_label_values(&["follower"]).get(), 0);
        assert_eq!(m.peer_lag.with_label_values(&["3"]).get(), 3);
        s.role = "follower";
        s.peers = vec![PeerStatus { id: 2, ..PeerStatus::default() }];
        observe_status(&m, &s);
        assert_eq!(m.role.with_label_values(&["leader"]).get(), 0);
        let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
        assert!(!text.contains("kiln_raft_peer_lag_entries{"), "a follower shows no peer lag: {text}");
    }
}
