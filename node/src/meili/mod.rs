//! Full-text search forwarded to Meilisearch (`[meilisearch]`, docs/meilisearch.md).
//!
//! The embedded index stays the source of truth for FHIR search; Meilisearch adds `_content`
//! and `_text` (typo-tolerant, ranked by relevance). Nothing is added to the write path: the
//! system history rows every apply batch writes are an ordered outbox on every node, and the
//! only new replicated state is the indexer's cursor (`crate::machine::meili_cursor`, moved through Raft).
//! - [`config`]: the `[meilisearch]` section.
//! - [`document`]: the document of one resource (narrative, strings, codes), bounded.
//! - [`indexer`]: the supervisor and the indexer actor that runs on the leader only: history
//!   after the cursor → current versions → Meilisearch (waiting for each task) → cursor move.
//! - [`query`]: `_content` / `_text` through Meilisearch, as doc numbers with scores.
//! - [`status`]: what `/_cluster/status` shows (cursor, lag, last error) and the lag check.
//! - `crate::http::meili`: `POST /_cluster/meilisearch/reindex` on the operator API (`kiln reindex`).
//!
//! One [`Meili`] per node holds the client (the key read from `api_key_file` at start) and the
//! indexer's last state; every node answers text queries with its own client.

pub mod config;
pub mod document;
pub mod indexer;
pub mod query;
pub mod status;

use std::collections::HashSet;
use std::time::Duration;

use meilisearch_sdk::client::Client;
use meilisearch_sdk::errors::{Error as SdkError, ErrorCode};
use meilisearch_sdk::settings::{PaginationSetting, Settings};
use parking_lot::Mutex;

pub use config::MeiliConfig;

use crate::consensus::ConsensusError;
use crate::store::StoreError;

/// Why a Meilisearch operation or a text query failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MeiliError {
    #[error("'{0}' needs Meilisearch, which this server is not configured with ([meilisearch] url); it is not supported here")]
    NotConfigured(String),
    #[error("full-text search is unavailable: Meilisearch at {url} cannot be reached ({reason}); other searches are unaffected, retry later")]
    Unavailable { url: String, reason: String },
    #[error("full-text search is unavailable: Meilisearch refused Kiln's API key ({0}); the operator must put the master key or an admin key in meilisearch.api_key_file")]
    BadKey(String),
    #[error("full-text search is unavailable: the Meilisearch index is behind (the oldest write not yet indexed is {lag_ms} ms old, more than meilisearch.max_lag_ms = {max_lag_ms}); retry shortly")]
    Behind { lag_ms: u64, max_lag_ms: u64 },
    #[error("Meilisearch task failed: {0}")]
    Task(String),
    #[error("{param}={value} matches more than {max} resources, the most one text query may take (meilisearch.max_hits): use more specific words")]
    TooMany { param: String, value: String, max: usize },
    #[error("a text search pages through its first {max} matches only (meilisearch.max_hits): use more specific words or other criteria")]
    TooDeep { max: usize },
    #[error("invalid value for search parameter '{param}': {reason}")]
    BadValue { param: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
}

/// A node's Meilisearch side: configuration, client and the indexer's last state.
pub struct Meili {
    pub cfg: MeiliConfig,
    pub url: String,
    client: Client,
    /// What the indexer last did on this node (shown in `/_cluster/status`).
    pub state: Mutex<status::IndexerState>,
    /// Indexes whose settings this process has set (once each).
    configured: Mutex<HashSet<String>>,
}

impl Meili {
    /// The client of `[meilisearch]` (`None` when `url` is unset). Reads the key file: an
    /// unreadable file is a start error. Does not contact Meilisearch (it may start later).
    pub fn from_config(cfg: &MeiliConfig) -> Result<Option<Meili>, String> {
        let Some(url) = cfg.url.clone() else { return Ok(None) };
        let key = cfg.read_key()?;
        let client = Client::new(url.trim_end_matches('/'), key).map_err(|e| format!("meilisearch client: {e}"))?;
        Ok(Some(Meili { cfg: cfg.clone(), url, client, state: Mutex::new(status::IndexerState::default()), configured: Mutex::new(HashSet::new()) }))
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.timeout_ms)
    }

    /// `fut` within the request timeout, its SDK error classified.
    pub async fn call<T>(&self, fut: impl std::future::Future<Output = Result<T, SdkError>>) -> Result<T, MeiliError> {
        match tokio::time::timeout(self.timeout(), fut).await {
            Ok(r) => r.map_err(|e| self.classify(e)),
            Err(_) => Err(MeiliError::Unavailable { url: self.url.clone(), reason: format!("no answer within {} ms", self.cfg.timeout_ms) }),
        }
    }

    /// An SDK error as a [`MeiliError`] (never carries the key: the SDK's messages do not).
    pub fn classify(&self, e: SdkError) -> MeiliError {
        match e {
            SdkError::Meilisearch(m) if matches!(m.error_code, ErrorCode::InvalidApiKey | ErrorCode::MissingAuthorizationHeader) => MeiliError::BadKey(m.error_message),
            SdkError::MeilisearchCommunication(c) if c.status_code == 401 || c.status_code == 403 => {
                MeiliError::BadKey(format!("HTTP {}", c.status_code))
            }
            SdkError::InvalidRequest => MeiliError::BadKey("the key cannot be sent in an HTTP header".into()),
            SdkError::HttpError(h) => MeiliError::Unavailable { url: self.url.clone(), reason: h.to_string() },
            SdkError::MeilisearchCommunication(c) => MeiliError::Unavailable { url: self.url.clone(), reason: format!("HTTP {}", c.status_code) },
            SdkError::Timeout => MeiliError::Unavailable { url: self.url.clone(), reason: "a task did not finish in time".into() },
            other => MeiliError::Task(other.to_string()),
        }
    }

    /// Creates the index of `uid` if needed and sets its settings (idempotent; once per process
    /// per index unless it failed).
    pub async fn ensure_index(&self, uid: &str) -> Result<(), MeiliError> {
        if self.configured.lock().contains(uid) {
            return Ok(());
        }
        let task = self.call(self.client.create_index(uid, Some("key"))).await?;
        // "index already exists" is a failed task that is fine.
        let done = self.call(self.client.wait_for_task(task, Some(Duration::from_millis(20)), Some(self.timeout()))).await?;
        if let meilisearch_sdk::tasks::Task::Failed { content } = done {
            if content.error.error_code != ErrorCode::IndexAlreadyExists {
                return Err(MeiliError::Task(content.error.error_message));
            }
        }
        let index = self.client.index(uid);
        let settings = index_settings(self.cfg.max_hits);
        let task = self.call(index.set_settings(&settings)).await?;
        self.wait(task).await?;
        self.configured.lock().insert(uid.to_string());
        Ok(())
    }

    /// Waits for a task to end; `Err` unless it succeeded.
    pub async fn wait(&self, task: meilisearch_sdk::task_info::TaskInfo) -> Result<(), MeiliError> {
        let done = self.call(self.client.wait_for_task(task, Some(Duration::from_millis(10)), Some(self.timeout()))).await?;
        match done {
            meilisearch_sdk::tasks::Task::Succeeded { .. } => Ok(()),
            meilisearch_sdk::tasks::Task::Failed { content } => Err(MeiliError::Task(content.error.error_message)),
            _ => Err(MeiliError::Unavailable { url: self.url.clone(), reason: "a task did not finish in time".into() }),
        }
    }

    /// Forgets which indexes were set up (after Meilisearch lost its data, or a reindex).
    pub fn forget_indexes(&self) {
        self.configured.lock().clear();
    }
}

/// The settings of every Kiln index: what is searched (attribute order is rank order), filtered
/// and sorted; typo tolerance stays Meilisearch's default.
pub fn index_settings(max_hits: usize) -> Settings {
    Settings::new()
        .with_searchable_attributes(["narrative", "displays", "strings", "codes"])
        .with_filterable_attributes(["resourceType", "lastUpdated"])
        .with_sortable_attributes(["lastUpdated"])
        .with_displayed_attributes(["key", "resourceType", "id", "versionId", "lastUpdated"])
        .with_pagination(PaginationSetting { max_total_hits: max_hits + 1 })
}
