//! `[export]`: where bulk export parts go and how jobs are bounded.

use serde::{Deserialize, Serialize};

use crate::machine::export_job::SinkKind;

/// `[export]` of the node configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExportConfig {
    /// `"local"` (files under `dir`, served by the nodes) or `"s3"` (the `[s3]` bucket, presigned
    /// GET URLs in the manifest).
    pub sink: SinkName,
    /// Folder for local parts (default: `export` in the data folder).
    pub dir: Option<std::path::PathBuf>,
    /// A part file ends after this many resources…
    pub part_max_lines: u64,
    /// …or once it holds this many bytes.
    pub part_max_bytes: u64,
    /// Seconds a finished job's outputs are kept; then they are deleted and its status URL
    /// answers 404.
    pub expiry_secs: u64,
    /// Jobs that may be active at once in a tenant; a kick-off beyond answers 429.
    pub max_active_jobs: usize,
    /// Jobs (of any status, until they expire or are cancelled) one caller may hold.
    pub max_jobs_per_owner: usize,
    /// `Retry-After` (seconds) of a status answer while a job runs.
    pub retry_after_secs: u64,
    /// Share of one core a job's reader may use (0.05 to 1): after each chunk it pauses, so
    /// writes keep their latency during an export.
    pub read_share: f64,
}

/// The `sink` key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkName {
    #[default]
    Local,
    S3,
}

impl SinkName {
    pub fn kind(self) -> SinkKind {
        match self {
            SinkName::Local => SinkKind::Local,
            SinkName::S3 => SinkKind::S3,
        }
    }
}

impl Default for ExportConfig {
    fn default() -> Self {
        ExportConfig {
            sink: SinkName::Local,
            dir: None,
            part_max_lines: 100_000,
            part_max_bytes: 256 << 20,
            expiry_secs: 24 * 3600,
            max_active_jobs: 4,
            max_jobs_per_owner: 20,
            retry_after_secs: 2,
            read_share: 0.5,
        }
    }
}

impl ExportConfig {
    /// The folder of local parts for a node whose data folder is `data_dir`.
    pub fn local_dir(&self, data_dir: &std::path::Path) -> std::path::PathBuf {
        self.dir.clone().unwrap_or_else(|| data_dir.join("export"))
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.part_max_lines == 0 || self.part_max_bytes < 1024 {
            return Err("export.part_max_lines must be at least 1 and export.part_max_bytes at least 1024".into());
        }
        if !(0.05..=1.0).contains(&self.read_share) {
            return Err("export.read_share must be between 0.05 and 1".into());
        }
        if self.max_active_jobs == 0 || self.max_jobs_per_owner == 0 || self.max_active_jobs > 1000 || self.max_jobs_per_owner > 1000 {
            return Err("export.max_active_jobs and export.max_jobs_per_owner must be between 1 and 1000".into());
        }
        if self.expiry_secs == 0 || self.expiry_secs > 366 * 24 * 3600 {
            return Err("export.expiry_secs must be between 1 and one year".into());
        }
        Ok(())
    }
}
