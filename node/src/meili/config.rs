//! `[meilisearch]`: where the Meilisearch server is, the file holding its key, and the bounds of
//! the indexer and of text queries. Unset `url`: no Meilisearch, Kiln runs without it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[meilisearch]` of the node configuration (flags `--meilisearch-url`, `--meilisearch-key-file`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MeiliConfig {
    /// Base URL of the Meilisearch server, e.g. `http://127.0.0.1:7700`. Unset: disabled.
    pub url: Option<String>,
    /// File holding the master key or an admin API key (read once at start, never logged).
    pub api_key_file: Option<PathBuf>,
    /// Prefix of the index names: `{prefix}` for the default tenant, `{prefix}-t-{tenant}` for
    /// the others (two clusters sharing one Meilisearch need different prefixes).
    pub index_prefix: String,
    /// History rows the indexer reads per round (one cursor move through Raft per round).
    pub batch_rows: usize,
    /// Documents per Meilisearch request (one task each).
    pub docs_per_request: usize,
    /// Most text matches one `_content` / `_text` query may take from Meilisearch (and its
    /// `pagination.maxTotalHits` minus one); a query matching more is refused as too costly.
    pub max_hits: usize,
    /// A text query answers 503 when the oldest write not yet in Meilisearch is older than this.
    pub max_lag_ms: u64,
    /// Timeout of one request to Meilisearch, and of waiting for one task.
    pub timeout_ms: u64,
    /// Longest pause between retries while Meilisearch fails (the backoff doubles up to it).
    pub max_backoff_ms: u64,
}

impl Default for MeiliConfig {
    fn default() -> Self {
        MeiliConfig {
            url: None,
            api_key_file: None,
            index_prefix: "kiln".into(),
            batch_rows: 10_000,
            docs_per_request: 10_000,
            max_hits: 10_000,
            max_lag_ms: 10_000,
            timeout_ms: 30_000,
            max_backoff_ms: 10_000,
        }
    }
}

impl MeiliConfig {
    pub fn enabled(&self) -> bool {
        self.url.is_some()
    }

    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        let Some(url) = &self.url else { return Ok(()) };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("meilisearch.url = {url:?} must start with http:// or https://"));
        }
        if self.index_prefix.is_empty() || self.index_prefix.len() > 64 || !self.index_prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err("meilisearch.index_prefix must be 1 to 64 letters, digits, '-' or '_'".into());
        }
        if self.batch_rows == 0 || self.batch_rows > 100_000 || self.docs_per_request == 0 || self.docs_per_request > 100_000 {
            return Err("meilisearch.batch_rows and docs_per_request must be between 1 and 100000".into());
        }
        if self.max_hits == 0 || self.max_hits > 1_000_000 {
            return Err("meilisearch.max_hits must be between 1 and 1000000".into());
        }
        if self.timeout_ms == 0 || self.max_backoff_ms == 0 {
            return Err("meilisearch.timeout_ms and max_backoff_ms must be positive".into());
        }
        Ok(())
    }

    /// The key in `api_key_file` (trimmed); `None` without a file (a Meilisearch without a
    /// master key, development only).
    pub fn read_key(&self) -> Result<Option<String>, String> {
        let Some(path) = &self.api_key_file else { return Ok(None) };
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read meilisearch.api_key_file {}: {e}", path.display()))?;
        let key = text.trim().to_string();
        if key.is_empty() {
            return Err(format!("meilisearch.api_key_file {} is empty", path.display()));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!("meilisearch.api_key_file {} holds characters a key cannot have", path.display()));
        }
        Ok(Some(key))
    }

    /// The index of tenant `tenant` (`None`: the default tenant).
    pub fn index_uid(&self, tenant: Option<&str>) -> String {
        match tenant {
            None => self.index_prefix.clone(),
            Some(t) => format!("{}-t-{t}", self.index_prefix),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_and_keys() {
        let mut c = MeiliConfig::default();
        assert!(!c.enabled());
        c.validate().unwrap();
        c.url = Some("127.0.0.1:7700".into());
        assert!(c.validate().is_err());
        c.url = Some("http://127.0.0.1:7700".into());
        c.validate().unwrap();
        assert_eq!(c.index_uid(None), "kiln");
        assert_eq!(c.index_uid(Some("acme")), "kiln-t-acme");
        let dir = tempfile::tempdir().unwrap();
        c.api_key_file = Some(dir.path().join("missing"));
        assert!(c.read_key().unwrap_err().contains("cannot read"));
        std::fs::write(dir.path().join("k"), "  secret-key-0123456789\n").unwrap();
        c.api_key_file = Some(dir.path().join("k"));
        assert_eq!(c.read_key().unwrap().as_deref(), Some("secret-key-0123456789"));
    }
}
