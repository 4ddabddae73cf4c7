//! Opening a node's sled database with the `[storage]` settings: the page cache bound (the
//! largest share of a node's memory) and zstd compression of sled's pages. Compression is fixed
//! when the folder is created (sled refuses to reopen a folder with the other setting), so an
//! existing folder is opened the way it was written and the setting applies to new folders.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// `[storage]`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// sled's page cache, MiB of memory (sled's own default is 1 GiB).
    pub cache_mib: u64,
    /// zstd compression of sled's pages, for folders created from now on.
    pub compression: bool,
    /// zstd level (1–22) when compressing.
    pub compression_level: i32,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig { cache_mib: 128, compression: true, compression_level: 3 }
    }
}

impl StorageConfig {
    /// The setting's own problems, before anything opens.
    pub fn check(&self) -> Result<(), String> {
        if self.cache_mib < 8 {
            return Err(format!("[storage] cache_mib must be at least 8 (got {})", self.cache_mib));
        }
        if !(1..=22).contains(&self.compression_level) {
            return Err(format!("[storage] compression_level must be 1–22 (got {})", self.compression_level));
        }
        Ok(())
    }
}

/// Whether the sled folder `dir` was created with compression (`None`: no folder yet).
pub fn written_compressed(dir: &Path) -> Option<bool> {
    // sled's `conf`: text lines followed by a binary checksum.
    let bytes = std::fs::read(dir.join("conf")).ok()?;
    String::from_utf8_lossy(&bytes)
        .lines().find_map(|l| l.strip_prefix("use_compression:")).map(|v| v.trim() == "true")
}

/// sled counts its page cache in the pages' on-disk bytes; compressed pages take about this many
/// times more once decoded in memory (measured: 100,000 resources loaded on one node, 16 MiB →
/// 456 MB peak RSS, 128 MiB → 860 MB: 404 MB more for 112 MiB of accounted cache, ×3.6).
const COMPRESSED_IN_MEMORY: u64 = 4;

/// The capacity handed to sled so that its cache takes about `cache_mib` of memory.
pub fn sled_cache_bytes(cfg: &StorageConfig, compressed: bool) -> u64 {
    let bytes = cfg.cache_mib.saturating_mul(1024 * 1024);
    if compressed {
        bytes / COMPRESSED_IN_MEMORY
    } else {
        bytes
    }
}

/// Opens (or creates) the database in `dir`.
pub fn open(dir: &Path, cfg: &StorageConfig) -> sled::Result<sled::Db> {
    let compress = written_compressed(dir).unwrap_or(cfg.compression);
    sled::Config::new()
        .path(dir)
        .cache_capacity(sled_cache_bytes(cfg, compress))
        .use_compression(compress)
        .compression_factor(cfg.compression_level)
        .open()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_reopens_with_the_compression_it_was_written_with() {
        let dir = tempfile::tempdir().unwrap();
        let plain = StorageConfig { compression: false, ..StorageConfig::default() };
        {
            let db = open(dir.path(), &plain).unwrap();
            db.insert(b"k", b"v").unwrap();
            db.flush().unwrap();
        }
        assert_eq!(written_compressed(dir.path()), Some(false));
        // The default (compression on) does not refuse the old folder. sled's flusher can hold
        // the folder's lock for a moment after the drop: retry.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let db = loop {
            match open(dir.path(), &StorageConfig::default()) {
                Ok(db) => break db,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(db.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    }

    #[test]
    fn a_new_folder_is_compressed_by_default() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path(), &StorageConfig::default()).unwrap();
        db.insert(b"k", vec![7u8; 10_000]).unwrap();
        db.flush().unwrap();
        assert_eq!(written_compressed(dir.path()), Some(true));
    }

    #[test]
    fn a_compressed_cache_is_counted_in_memory_bytes() {
        let cfg = StorageConfig { cache_mib: 128, ..StorageConfig::default() };
        assert_eq!(sled_cache_bytes(&cfg, false), 128 << 20);
        assert_eq!(sled_cache_bytes(&cfg, true), 32 << 20);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(StorageConfig { cache_mib: 1, ..StorageConfig::default() }.check().is_err());
        assert!(StorageConfig { compression_level: 0, ..StorageConfig::default() }.check().is_err());
        assert!(StorageConfig::default().check().is_ok());
    }
}
