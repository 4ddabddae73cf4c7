//! Consensus's own config: membership and the node-to-node transport (`[cluster]`, its peers and
//! mutual TLS), Raft timing and log retention (`[raft]`), and the read consistency a request
//! gets by default. The node's config file (`crate::config`) holds them as sections.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// What consensus needs of a node's config.
#[derive(Debug, Clone, Copy)]
pub struct ConsensusSettings<'a> {
    pub node_id: u64,
    pub cluster: &'a ClusterConfig,
    pub raft: &'a RaftConfig,
    /// A write not applied by then answers 503 (it may still apply).
    pub write_timeout_ms: u64,
}

/// Membership and the node-to-node transport. Without `peers` a node is a one-voter cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Address the Raft transport listens on (`IP:port`); required when `peers` is set.
    pub raft_listen: Option<String>,
    /// Every node of the initial cluster, this one included. Nodes added later through
    /// `kiln cluster add-node` are recorded in the replicated state and need not be listed.
    pub peers: Vec<PeerConfig>,
    /// `true` for a node that joins a running cluster: it starts with no configuration and
    /// waits to be added (as learner, then voter) by `kiln cluster add-node`.
    pub join: bool,
    /// The nodes that form the cluster on a fresh start (empty: every entry of `peers`). A node
    /// listed in `peers` but not here starts as a joiner, as with `join = true`: `peers` can then
    /// name nodes that only join later (a StatefulSet scaled out), with one config for all.
    pub initial_voters: Vec<u64>,
    /// Default read consistency: `local` (read this node's applied state) or `linearizable`
    /// (confirm with the leader through Raft ReadIndex first). Per request: header
    /// `Kiln-Consistency: linearizable | local`.
    pub read_consistency: ReadConsistency,
    /// Largest frame the transport accepts from a peer (a snapshot travels as one frame).
    pub max_frame_bytes: usize,
    /// Enables `POST /_cluster/faults` (drop traffic to/from chosen peers). For tests only.
    pub fault_injection: bool,
    /// Mutual TLS between nodes; plain TCP when absent.
    pub tls: Option<TlsConfig>,
    /// Allows plain TCP between nodes on a non-loopback `raft_listen`. Without TLS any process
    /// that reaches the Raft port can act as a member: set this only on a network where nothing
    /// else can connect.
    pub allow_insecure_transport: bool,
}

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    pub id: u64,
    /// The peer's Raft transport address, `host:port`.
    pub raft_addr: String,
    /// The peer's FHIR base URL (shown in `/_cluster/status`, used by the CLI to find the leader).
    #[serde(default)]
    pub http_url: String,
    /// The peer's operator API base URL (its `admin_listen`), used by `kiln cluster add-node` /
    /// `remove-node` to reach the leader's membership endpoints.
    #[serde(default)]
    pub admin_url: String,
}

/// PEM files for node-to-node mutual TLS. Every node presents `cert` and accepts only peers whose
/// certificate chains to `ca`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// See [`ClusterConfig::read_consistency`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadConsistency {
    #[default]
    Local,
    Linearizable,
}

/// Consensus timing and log retention.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    /// Milliseconds per Raft tick.
    pub tick_ms: u64,
    /// Election timeout in ticks.
    pub election_ticks: usize,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: usize,
    /// Applied log entries kept behind the applied index before compaction.
    pub log_keep_entries: u64,
    /// Bytes of applied entries after which the log is compacted regardless of the entry count
    /// (keeping the last 100 entries, or `log_keep_entries` if fewer).
    pub log_max_bytes: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig { tick_ms: 100, election_ticks: 10, heartbeat_ticks: 2, log_keep_entries: 10_000, log_max_bytes: 256 * 1024 * 1024 }
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            raft_listen: None,
            peers: Vec::new(),
            join: false,
            initial_voters: Vec::new(),
            read_consistency: ReadConsistency::Local,
            max_frame_bytes: 1 << 30,
            fault_injection: false,
            tls: None,
            allow_insecure_transport: false,
        }
    }
}

impl ClusterConfig {
    /// Checks what serde cannot; the message names the key.
    pub fn validate(&self, node_id: u64) -> Result<(), String> {
        let bad = |m: String| Err(m);
        if self.peers.is_empty() {
            if self.join {
                return bad("cluster.join needs cluster.peers (the running cluster's nodes and this one)".into());
            }
            return Ok(());
        }
        match &self.raft_listen {
            Some(a) if a.parse::<SocketAddr>().is_ok() => {}
            Some(a) => return bad(format!("cluster.raft_listen = {a:?} is not an IP:port address")),
            None => return bad("cluster.raft_listen is required when cluster.peers is set".into()),
        }
        let mut ids: Vec<u64> = self.peers.iter().map(|p| p.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.peers.len() || ids.contains(&0) {
            return bad("cluster.peers: ids must be unique and non-zero".into());
        }
        if !ids.contains(&node_id) {
            return bad(format!("cluster.peers must include this node (node_id = {node_id})"));
        }
        if let Some(v) = self.initial_voters.iter().find(|v| !ids.contains(v)) {
            return bad(format!("cluster.initial_voters: node {v} is not in cluster.peers"));
        }
        if !self.initial_voters.is_empty() && !self.initial_voters.contains(&node_id) && !self.join {
            return bad(format!("node {node_id} is not in cluster.initial_voters: set cluster.join = true (it then waits for kiln cluster add-node)"));
        }
        if let Some(p) = self.peers.iter().find(|p| !p.raft_addr.contains(':')) {
            return bad(format!("cluster.peers: raft_addr {:?} of node {} is not host:port", p.raft_addr, p.id));
        }
        if let (Some(Ok(addr)), None, false) = (self.raft_listen.as_ref().map(|a| a.parse::<SocketAddr>()), &self.tls, self.allow_insecure_transport) {
            if !addr.ip().is_loopback() {
                return bad(format!(
                    "cluster.raft_listen = {addr} is not a loopback address and [cluster.tls] is not set: any process that reaches \
                     the Raft port could act as a member. Configure mutual TLS (kiln cluster certs), or set \
                     cluster.allow_insecure_transport = true on a network where nothing else can connect"
                ));
            }
        }
        if self.max_frame_bytes < 1024 * 1024 {
            return bad("cluster.max_frame_bytes must be at least 1 MiB".into());
        }
        Ok(())
    }

    /// The voters a fresh node starts with.
    pub fn initial_voters(&self, node_id: u64) -> Vec<u64> {
        match (self.peers.is_empty(), self.join) {
            (true, _) => vec![node_id],
            (false, true) => Vec::new(),
            (false, false) if !self.initial_voters.is_empty() => self.initial_voters.clone(),
            (false, false) => self.peers.iter().map(|p| p.id).collect(),
        }
    }
}
