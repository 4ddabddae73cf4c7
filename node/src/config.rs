//! Typed node configuration: the TOML file (`--config`), defaults, command-line overrides and
//! `validate()`. Everything a node needs to start is in [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use crate::consensus::config::{ClusterConfig, ConsensusSettings, PeerConfig, RaftConfig, ReadConsistency, TlsConfig};
use crate::fhir::FhirVersion;
pub use crate::objects::S3Config;

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
    /// Take the node id from the host name's ordinal instead (`kiln-0` → 1, `kiln-2` → 3; flag
    /// `--node-id-from-hostname`), so one config serves every pod of a StatefulSet
    /// ([`crate::identity`]).
    pub node_id_from_hostname: bool,
    /// Folder holding the sled database (created if missing).
    pub data_dir: PathBuf,
    /// HTTP listen address, e.g. `127.0.0.1:8080`; port 0 picks a free port.
    pub listen: String,
    /// `[api_tls]`: TLS on the FHIR API (`listen`), with certificates reloaded when they change
    /// and optional client certificates; plain HTTP when absent. See [`crate::pki::api`].
    pub api_tls: Option<crate::pki::api::ApiTlsConfig>,
    /// Plain HTTP on a non-loopback `listen` (without `[api_tls]`), for a proxy in front that
    /// terminates TLS (flag `--allow-plain-http`). Refused at start otherwise.
    pub allow_plain_http: bool,
    /// FHIR version served: `4.0.1` (R4, default) or `3.0.1` (STU3).
    pub fhir_version: FhirVersion,
    /// Absolute base URL used in `Location`, `fullUrl` and links. When unset, it is built from
    /// the request's Host header, except with `[auth]` on: then only a Host listed in
    /// `allowed_hosts` is used, and otherwise the address the connection reached (a client
    /// never chooses the links other clients follow).
    pub base_url: Option<String>,
    /// Host header values (`name` or `name:port`) links may be built from when `base_url` is
    /// unset and `[auth]` is on.
    pub allowed_hosts: Vec<String>,
    /// HTTP worker threads (0 = one per CPU).
    pub http_workers: usize,
    /// Allow `PUT` to create a resource with a client-chosen id (update-as-create).
    pub allow_update_create: bool,
    /// How long a write waits for commit + apply before answering 503.
    pub write_timeout_ms: u64,
    /// A conditional DELETE matching several resources deletes them all (else 412).
    pub allow_multiple_conditional_delete: bool,
    /// Address of the operator API (`/_cluster/nodes`, `/_cluster/digest`, `/_cluster/faults`,
    /// plus `/_cluster/status` and `/_health`), separate from the FHIR API. Unset: no operator
    /// API (membership cannot be changed at run time). A non-loopback address needs
    /// `admin_token_file`.
    pub admin_listen: Option<String>,
    /// File holding the operator API's bearer token (`Authorization: Bearer <token>`). When set,
    /// every operator request must carry it.
    pub admin_token_file: Option<PathBuf>,
    pub limits: Limits,
    pub raft: RaftConfig,
    pub cluster: ClusterConfig,
    /// Authentication and authorization of the FHIR API (docs/security.md).
    pub auth: crate::auth::AuthConfig,
    /// Multi-tenancy (`/tenant/{id}/…`, the token's tenant claim).
    pub tenancy: crate::tenancy::TenancyConfig,
    /// Bulk `$export`: the sink and the bounds of jobs (docs/export.md).
    pub export: crate::export::ExportConfig,
    /// `[s3]`: an S3-compatible bucket for large Binary content and export files (docs/operations.md).
    pub s3: Option<S3Config>,
    /// `[binary]`: raw Binary content, what stays inline, where the rest goes (docs/api.md, "Binary").
    pub binary: crate::binary::BinaryConfig,
    /// Full-text search through Meilisearch (`_content`, `_text`; docs/meilisearch.md). Unset
    /// `url`: no Meilisearch.
    pub meilisearch: crate::meili::MeiliConfig,
    /// `[log]`: the format of the log lines on stderr (levels: `RUST_LOG`).
    pub log: LogConfig,
    /// R4 Subscriptions (rest-hook, websocket) and the bounds of their delivery (docs/api.md,
    /// "Subscriptions"). Off by default.
    pub subscriptions: crate::subscription::SubscriptionsConfig,
    /// `[storage]`: sled's page cache and compression (node/src/store/db.rs).
    pub storage: crate::store::db::StorageConfig,
}

/// `[log]`. The flag `--log-format` (or `KILN_LOG_FORMAT`) overrides `format`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
}

/// How log lines are written: `text` (default, one human-readable line per event with its
/// spans) or `json` (one JSON object per line: `timestamp`, `level`, `fields`, `target`, the
/// current `span` and the `spans` list, which carry the `request_id`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
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
    /// Most entries in one batch / transaction bundle.
    pub max_bundle_entries: usize,
    /// Largest batch / transaction bundle body in bytes.
    pub max_bundle_bytes: usize,
    /// Bundle body bytes all batch / transaction requests of this node may hold at once; a
    /// bundle waits for room (up to `write_timeout_ms`, then 503). A parsed bundle takes several
    /// times its body in memory, so this bounds the node's memory under many large bundles.
    pub max_inflight_bundle_bytes: usize,
    /// Most operations in one JSON Patch document (the patched result is bounded by
    /// `max_body_bytes`).
    pub max_patch_ops: usize,
    /// Most resources a search page adds through `_include` / `_revinclude` (also `:iterate`);
    /// past it the page lists the first ones and an OperationOutcome entry says it was cut.
    pub max_include_resources: usize,
    /// Most matches a search may order by a key per match (a search over several types, or a
    /// `_sort` the sort-row walk does not serve); past it the search answers 400 too-costly.
    pub max_sort_matches: u64,
    /// Most history rows read to answer one `_history` page (`_at` and `_since` filters skip rows);
    /// past it the request answers 400 too-costly.
    pub max_history_scan: usize,
    /// Most codes a terminology operation (`ValueSet/$expand`, `$validate-code`) may expand a
    /// value set to; past it the request answers 422 too-costly. (The search modifiers `:in` /
    /// `:below` have a fixed bound, `terminology::SEARCH_MAX_CODES`: conditions decide writes.)
    pub max_expansion: usize,
    /// Rows (index rows and blocks, history rows, resources read) one request may read in all:
    /// every entry of a batch and every value of a search together. Past it: 400 too-costly.
    pub max_request_rows: u64,
    /// How long one request's reads may run; past it they stop (400 too-costly). Work also stops
    /// when the client closes its connection.
    pub request_timeout_ms: u64,
    /// Response bytes a batch or transaction may build for its GET entries together; an entry
    /// that would pass it answers 413 too-costly in its own `response`.
    pub max_batch_response_bytes: usize,
    /// Bytes of response bodies this node may hold at once until their clients have read them
    /// (bodies of 64 KiB and more, and every batch's GET entries); past it such a response
    /// answers 503 with Retry-After (a batch entry: in its own `response`).
    pub max_inflight_response_bytes: usize,
    /// Costly reads (searches, history, batch GET entries, `$everything`, `$meta`) run at once
    /// on this node, off the HTTP workers; 0: twice the CPUs, at least 4.
    pub scan_workers: usize,
    /// Costly requests that may wait for one of `scan_workers`; past it: 503 with Retry-After.
    pub scan_queue: usize,
    /// Rows past which a request is heavy: its further costly reads, and its caller's for the
    /// next 10 s, run in the heavy lane (`scan_workers` more threads at `heavy_nice`).
    pub heavy_rows: u64,
    /// CPU priority (Linux nice value, 0-19) of the heavy lane's threads.
    pub heavy_nice: i32,
    /// Costly requests one authenticated caller may have running or waiting at once; past it:
    /// 429 with Retry-After.
    pub max_concurrent_per_principal: usize,
    /// The same for all callers of one tenant (when `[tenancy]` is on).
    pub max_concurrent_per_tenant: usize,
    /// Longest query string (and `POST _search` form body) in bytes.
    pub max_query_bytes: usize,
    /// Most parameters in one query string (or `_search` form).
    pub max_parameters: usize,
    /// Most comma-separated values in one parameter (an OR list).
    pub max_or_values: usize,
    /// Connections the FHIR listener keeps open at once (all workers together); past it new
    /// connections wait in the accept queue. 0: a quarter of the process's open-file limit
    /// (a connection takes two descriptors; half of them stay for the rest of the node).
    pub max_connections: usize,
    /// How long a new connection may take to send its whole request head; past it: 408 and
    /// the connection is closed.
    pub header_timeout_ms: u64,
    /// Longest pause a client may make in sending a request body (past it: 408) or in taking a
    /// large response (past it the connection is closed, and the response's room comes back).
    pub stall_timeout_ms: u64,
    /// How long a connection is kept open between requests (HTTP keep-alive). A connection with
    /// no request in progress for this plus `header_timeout_ms` (one sending the head of its
    /// next request too slowly) is closed.
    pub idle_timeout_ms: u64,
    /// Slowest a request body may arrive on the whole, in bytes a second, once its first
    /// `stall_timeout_ms` have passed (past it: 408).
    pub min_body_rate: u64,
    /// Requests in progress at once on one connection (HTTP/2 streams: HTTP/1.1 has one); past
    /// it: 429 with `Retry-After`.
    pub max_requests_per_connection: usize,
}

impl Limits {
    /// `scan_workers` with 0 resolved.
    pub fn scan_workers(&self) -> usize {
        match self.scan_workers {
            0 => (2 * std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)).max(4),
            n => n,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: 1,
            node_id_from_hostname: false,
            data_dir: PathBuf::from("data/node1"),
            listen: "127.0.0.1:8080".into(),
            api_tls: None,
            allow_plain_http: false,
            fhir_version: FhirVersion::R4,
            base_url: None,
            allowed_hosts: Vec::new(),
            http_workers: 0,
            allow_update_create: true,
            write_timeout_ms: 10_000,
            allow_multiple_conditional_delete: false,
            admin_listen: None,
            admin_token_file: None,
            limits: Limits::default(),
            raft: RaftConfig::default(),
            cluster: ClusterConfig::default(),
            auth: crate::auth::AuthConfig::default(),
            tenancy: crate::tenancy::TenancyConfig::default(),
            export: crate::export::ExportConfig::default(),
            s3: None,
            binary: crate::binary::BinaryConfig::default(),
            meilisearch: crate::meili::MeiliConfig::default(),
            log: LogConfig::default(),
            subscriptions: crate::subscription::SubscriptionsConfig::default(),
            storage: crate::store::db::StorageConfig::default(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 16 * 1024 * 1024,
            max_depth: 64,
            default_page_size: 50,
            max_page_size: 1000,
            max_bundle_entries: 20_000,
            max_bundle_bytes: 256 * 1024 * 1024,
            max_inflight_bundle_bytes: 256 * 1024 * 1024,
            max_patch_ops: 1000,
            max_include_resources: 1000,
            max_sort_matches: 100_000,
            max_history_scan: 100_000,
            max_expansion: 10_000,
            max_request_rows: 4_000_000,
            request_timeout_ms: 30_000,
            max_batch_response_bytes: 64 * 1024 * 1024,
            max_inflight_response_bytes: 512 * 1024 * 1024,
            scan_workers: 0,
            scan_queue: 256,
            heavy_rows: 50_000,
            heavy_nice: 19,
            max_concurrent_per_principal: 2,
            max_concurrent_per_tenant: 16,
            max_query_bytes: 32 * 1024,
            max_parameters: 100,
            max_or_values: 1000,
            max_connections: 0,
            header_timeout_ms: 10_000,
            stall_timeout_ms: 30_000,
            idle_timeout_ms: 75_000,
            max_requests_per_connection: 100,
            min_body_rate: 500,
        }
    }
}

impl Config {
    /// What consensus needs of this config.
    pub fn consensus(&self) -> ConsensusSettings<'_> {
        ConsensusSettings { node_id: self.node_id, cluster: &self.cluster, raft: &self.raft, write_timeout_ms: self.write_timeout_ms }
    }

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
        if let Some(tls) = &self.api_tls {
            tls.validate().map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        self.export.validate().map_err(ConfigError::Invalid)?;
        if self.export.sink == crate::export::config::SinkName::S3 && self.s3.is_none() {
            return bad("export.sink = \"s3\" needs an [s3] section (the bucket the export files go to)".into());
        }
        self.meilisearch.validate().map_err(ConfigError::Invalid)?;
        self.subscriptions.validate().map_err(ConfigError::Invalid)?;
        self.storage.check().map_err(ConfigError::Invalid)?;
        if self.limits.max_body_bytes == 0 || self.limits.max_depth == 0 || self.limits.max_bundle_entries == 0 || self.limits.max_bundle_bytes == 0 {
            return bad("limits.max_body_bytes, max_depth, max_bundle_entries and max_bundle_bytes must be positive".into());
        }
        let l = &self.limits;
        for (key, v) in [
            ("max_request_rows", l.max_request_rows),
            ("request_timeout_ms", l.request_timeout_ms),
            ("max_batch_response_bytes", l.max_batch_response_bytes as u64),
            ("max_concurrent_per_principal", l.max_concurrent_per_principal as u64),
            ("max_concurrent_per_tenant", l.max_concurrent_per_tenant as u64),
            ("max_query_bytes", l.max_query_bytes as u64),
            ("max_parameters", l.max_parameters as u64),
            ("max_or_values", l.max_or_values as u64),
            ("heavy_rows", l.heavy_rows),
            ("header_timeout_ms", l.header_timeout_ms),
            ("stall_timeout_ms", l.stall_timeout_ms),
            ("idle_timeout_ms", l.idle_timeout_ms),
            ("max_requests_per_connection", l.max_requests_per_connection as u64),
            ("min_body_rate", l.min_body_rate),
        ] {
            if v == 0 {
                return bad(format!("limits.{key} must be positive"));
            }
        }
        if !(0..=19).contains(&l.heavy_nice) {
            return bad(format!("limits.heavy_nice must be a nice value from 0 to 19, not {}", l.heavy_nice));
        }
        if self.limits.max_expansion == 0 {
            return bad("limits.max_expansion must be positive".into());
        }
        if self.limits.default_page_size == 0 || self.limits.max_page_size < self.limits.default_page_size {
            return bad("limits: need 0 < default_page_size <= max_page_size".into());
        }
        if self.raft.tick_ms == 0 || self.raft.heartbeat_ticks == 0 || self.raft.election_ticks <= self.raft.heartbeat_ticks {
            return bad("raft: need tick_ms > 0 and election_ticks > heartbeat_ticks > 0".into());
        }
        if self.limits.max_patch_ops == 0 || self.limits.max_include_resources == 0 || self.limits.max_history_scan == 0 || self.limits.max_sort_matches == 0 {
            return bad("limits.max_patch_ops, max_include_resources, max_sort_matches and max_history_scan must be positive".into());
        }
        if self.limits.max_inflight_response_bytes < self.limits.max_batch_response_bytes {
            return bad("limits.max_inflight_response_bytes must be at least limits.max_batch_response_bytes".into());
        }
        if self.limits.max_inflight_bundle_bytes < self.limits.max_bundle_bytes {
            return bad("limits.max_inflight_bundle_bytes must be at least limits.max_bundle_bytes".into());
        }
        // Every write is one Raft entry and every entry travels in one frame: a body or bundle
        // must fit, with room for the entry's encoding.
        let frame = self.cluster.max_frame_bytes;
        for (key, v) in [("max_body_bytes", self.limits.max_body_bytes), ("max_bundle_bytes", self.limits.max_bundle_bytes)] {
            if v > frame / 2 {
                return bad(format!("limits.{key} = {v} must be at most half of cluster.max_frame_bytes = {frame} (a write travels between nodes as one frame)"));
            }
        }
        if let Some(admin) = &self.admin_listen {
            match admin.parse::<SocketAddr>() {
                Ok(a) if !a.ip().is_loopback() && self.admin_token_file.is_none() => {
                    return bad(format!("admin_listen = {admin:?} is not a loopback address: set admin_token_file so that the operator API needs a token"))
                }
                // (Port 0 on both: each listener gets a port of its own.)
                Ok(a) if a.port() != 0 && a.to_string() == self.listen => return bad("admin_listen must differ from listen".into()),
                Ok(_) => {}
                Err(_) => return bad(format!("admin_listen = {admin:?} is not an IP:port address")),
            }
        }
        self.cluster.validate(self.node_id).map_err(ConfigError::Invalid)?;
        let loopback = self.listen.parse::<SocketAddr>().is_ok_and(|a| a.ip().is_loopback());
        self.auth.validate(loopback).map_err(ConfigError::Invalid)?;
        if !loopback && self.api_tls.is_none() && !self.allow_plain_http {
            return bad(format!(
                "listen = {:?} is not a loopback address and [api_tls] is not set: tokens and health data would cross the network in clear. \
                 Set [api_tls] cert/key (--tls-cert/--tls-key), or allow_plain_http = true (--allow-plain-http) if a proxy in front terminates TLS",
                self.listen
            ));
        }
        if let Some(t) = self.tenancy.tenants.iter().find(|t| !crate::tenancy::valid_tenant(t)) {
            return bad(format!("tenancy.tenants: '{t}' is not a tenant id (1 to 64 of A-Z a-z 0-9 - _)"));
        }
        if let Some(s3) = &self.s3 {
            s3.validate().map_err(ConfigError::Invalid)?;
        }
        self.binary.validate(self.s3.is_some(), self.cluster.max_frame_bytes).map_err(ConfigError::Invalid)?;
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
    fn log_format_is_text_unless_json() {
        assert_eq!(Config::default().log.format, LogFormat::Text);
        let c: Config = toml::from_str("[log]\nformat = \"json\"\n").unwrap();
        assert_eq!(c.log.format, LogFormat::Json);
        assert!(toml::from_str::<Config>("[log]\nformat = \"xml\"\n").is_err());
    }

    #[test]
    fn rejects_unknown_keys_and_bad_values() {
        assert!(toml::from_str::<Config>("lisen = \"x\"").is_err());
        let c = Config { listen: "nowhere".into(), ..Config::default() };
        assert!(matches!(c.validate(), Err(ConfigError::Invalid(_))));
    }

    #[test]
    fn shipped_config_files_are_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluster-config");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let c = Config::from_file(&path).unwrap_or_else(|e| panic!("{e}"));
                c.validate().unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                seen += 1;
            }
        }
        assert_eq!(seen, 4, "single-node.toml and node1..3.toml");
    }

    #[test]
    fn limits_must_fit_the_frame_and_exposed_ports_need_protection() {
        let mut c = Config::default();
        c.limits.max_bundle_bytes = c.cluster.max_frame_bytes;
        assert!(c.validate().unwrap_err().to_string().contains("max_bundle_bytes"));
        let text = "node_id = 1\n[cluster]\nraft_listen = \"0.0.0.0:9001\"\npeers = [{ id = 1, raft_addr = \"10.0.0.1:9001\" }]\n";
        let mut c: Config = toml::from_str(text).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("tls"), "plain TCP on a public Raft port is refused");
        c.cluster.allow_insecure_transport = true;
        c.validate().unwrap();
        let mut c = Config { admin_listen: Some("0.0.0.0:9100".into()), ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("admin_token_file"));
        c.admin_token_file = Some("token".into());
        c.validate().unwrap();
        let c = Config { admin_listen: Some("127.0.0.1:9100".into()), ..Config::default() };
        c.validate().unwrap();
        // A public FHIR port needs auth and TLS, or explicit opt-outs for a proxy in front.
        let mut c = Config { listen: "0.0.0.0:8443".into(), ..Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("--insecure-no-auth"));
        c.auth.insecure_no_auth = true;
        assert!(c.validate().unwrap_err().to_string().contains("--allow-plain-http"));
        c.allow_plain_http = true;
        c.validate().unwrap();
    }

    #[test]
    fn s3_and_binary_sections() {
        let text = "[s3]\nendpoint = \"http://127.0.0.1:9000\"\nbucket = \"kiln\"\naccess_key_id = \"k\"\npath_style = true\n[binary]\ninline_max_bytes = 1024\n";
        let c: Config = toml::from_str(text).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("allow_http"), "plain http to S3 needs the opt-in");
        let mut c = c;
        c.s3.as_mut().unwrap().allow_http = true;
        c.validate().unwrap();
        assert_eq!(c.binary.inline_max_bytes, 1024);
        assert_eq!(c.binary.store, crate::binary::StoreChoice::Auto);
        let no_s3: Config = toml::from_str("[binary]\nstore = \"s3\"\n").unwrap();
        assert!(no_s3.validate().unwrap_err().to_string().contains("[s3]"));
        let redirect: Config = toml::from_str("[binary]\nredirect_reads = true\n").unwrap();
        assert!(redirect.validate().unwrap_err().to_string().contains("[s3]"));
        let huge: Config = toml::from_str("[binary]\nmax_bytes = 3000000000\n").unwrap();
        assert!(huge.validate().unwrap_err().to_string().contains("max_bytes"));
        assert!(toml::from_str::<Config>("[binary]\nstore = \"disk\"\n").is_err());
    }

    #[test]
    fn cluster_section() {
        let text = "node_id = 2\n[cluster]\nraft_listen = \"127.0.0.1:9002\"\npeers = [\n{ id = 1, raft_addr = \"127.0.0.1:9001\" },\n{ id = 2, raft_addr = \"127.0.0.1:9002\" }]\n";
        let c: Config = toml::from_str(text).unwrap();
        c.validate().unwrap();
        assert_eq!(c.cluster.initial_voters(2), vec![1, 2]);
        let mut other = c.clone();
        other.node_id = 3;
        assert!(other.validate().is_err(), "a node must be among its peers");
        let mut joining = c.clone();
        joining.cluster.join = true;
        assert!(joining.cluster.initial_voters(2).is_empty());
        assert_eq!(Config::default().cluster.initial_voters(1), vec![1]);
        let mut later = c.clone();
        later.cluster.initial_voters = vec![1];
        assert!(later.validate().unwrap_err().to_string().contains("initial_voters"), "node 2 outside initial_voters must join");
        later.cluster.join = true;
        later.validate().unwrap();
        later.cluster.initial_voters = vec![1, 9];
        assert!(later.validate().unwrap_err().to_string().contains("not in cluster.peers"));
        later.node_id = 1;
        later.cluster.join = false;
        later.cluster.initial_voters = vec![1];
        assert_eq!(later.cluster.initial_voters(1), vec![1]);
    }
}
