//! Typed node configuration: the TOML file (`--config`), defaults, command-line overrides and
//! `validate()`. Everything a node needs to start is in [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::fhir::FhirVersion;

/// Errors in a configuration file or in flag values.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// One node's configuration. Field names are the TOML keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Raft id of this node (non-zero, unique in the cluster).
    pub node_id: u64,
    /// Folder holding the sled database (created if missing).
    pub data_dir: PathBuf,
    /// HTTP listen address, e.g. `127.0.0.1:8080`; port 0 picks a free port.
    pub listen: String,
    /// FHIR version served: `4.0.1` (R4, default) or `3.0.1` (STU3).
    pub fhir_version: FhirVersion,
    /// Absolute base URL used in `Location`, `fullUrl` and links. When unset, it is built from
    /// the request's Host header.
    pub base_url: Option<String>,
    /// HTTP worker threads (0 = one per CPU).
    pub http_workers: usize,
    /// Allow `PUT` to create a resource with a client-chosen id (update-as-create).
    pub allow_update_create: bool,
    /// How long a write waits for commit + apply before answering 503.
    pub write_timeout_ms: u64,
    pub limits: Limits,
    pub raft: RaftConfig,
}

/// Request and response size limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest accepted request body in bytes.
    pub max_body_bytes: usize,
    /// Deepest accepted JSON nesting.
    pub max_depth: usize,
    /// Page size of history bundles when `_count` is not given.
    pub default_page_size: usize,
    /// Largest `_count` accepted (larger values are clamped to it).
    pub max_page_size: usize,
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
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            data_dir: PathBuf::from("data/node1"),
            listen: "127.0.0.1:8080".into(),
            fhir_version: FhirVersion::R4,
            base_url: None,
            http_workers: 0,
            allow_update_create: true,
            write_timeout_ms: 10_000,
            limits: Limits::default(),
            raft: RaftConfig::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_body_bytes: 16 * 1024 * 1024, max_depth: 64, default_page_size: 50, max_page_size: 1000 }
    }
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig { tick_ms: 100, election_ticks: 10, heartbeat_ticks: 2, log_keep_entries: 10_000 }
    }
}

impl Config {
    /// Reads a TOML config file.
    pub fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_path_buf(), source })
    }

    /// Checks values that serde cannot: addresses parse, limits are positive.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if self.node_id == 0 {
            return bad("node_id must be non-zero".into());
        }
        if self.listen.parse::<SocketAddr>().is_err() {
            return bad(format!("listen = {:?} is not an IP:port address", self.listen));
        }
        if self.limits.max_body_bytes == 0 || self.limits.max_depth == 0 {
            return bad("limits.max_body_bytes and limits.max_depth must be positive".into());
        }
        if self.limits.default_page_size == 0 || self.limits.max_page_size < self.limits.default_page_size {
            return bad("limits: need 0 < default_page_size <= max_page_size".into());
        }
        if self.raft.tick_ms == 0 || self.raft.heartbeat_ticks == 0 || self.raft.election_ticks <= self.raft.heartbeat_ticks {
            return bad("raft: need tick_ms > 0 and election_ticks > heartbeat_ticks > 0".into());
        }
        if let Some(base) = &self.base_url {
            if !(base.starts_with("http://") || base.starts_with("https://")) {
                return bad(format!("base_url = {base:?} must start with http:// or https://"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_partial_toml_with_defaults() {
        let c: Config = toml::from_str("listen = \"127.0.0.1:9000\"\nfhir_version = \"3.0.1\"\n[limits]\nmax_depth = 10\n").unwrap();
        assert_eq!(c.listen, "127.0.0.1:9000");
        assert_eq!(c.fhir_version, FhirVersion::Stu3);
        assert_eq!(c.limits.max_depth, 10);
        assert_eq!(c.limits.max_body_bytes, 16 * 1024 * 1024);
        c.validate().unwrap();
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        assert!(toml::from_str::<Config>("lisen = \"x\"").is_err());
        let c = Config { listen: "nowhere".into(), ..Config::default() };
        assert!(matches!(c.validate(), Err(ConfigError::Invalid(_))));
    }
}
