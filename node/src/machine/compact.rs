//! `kiln compact --data-dir DIR`: rewrites a STOPPED node's sled database into a fresh folder
//! (every tree, key by key, in batches) and swaps it in. sled 0.34 never shrinks its file: pages
//! rewritten by updates leave garbage that its segment cleaner only partly reclaims, so a node's
//! folder stays 1.5× its live data or more (docs/benchmarks.md, "Scale"). A fresh copy holds only
//! live pages. The new folder takes the `[storage]` settings (so this also turns an uncompressed
//! folder into a compressed one). Kiln's own files in the folder (the local Binary store under
//! `blobs/binary`, `export/`) are moved over. The old database is kept beside it as
//! `DIR.before-compact` until the operator removes it; nothing is swapped unless every tree has the
//! same number of keys in the copy.

use std::path::{Path, PathBuf};

use crate::store::db::{self, StorageConfig};
use crate::store::StoreError;

/// Keys written per sled batch while copying.
const BATCH: usize = 10_000;

/// What a compaction did.
#[derive(Debug)]
pub struct Compacted {
    pub keys: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Where the old database was left.
    pub kept: PathBuf,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Storage(format!("{}: {e}", path.display()))
}

/// sled's own files in a data folder (everything else belongs to Kiln and is moved as is).
fn is_sled_file(rel: &Path) -> bool {
    let name = rel.to_string_lossy();
    name == "conf" || name == "db" || name.starts_with("snap.") || rel.parent() == Some(Path::new("blobs")) && rel.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.parse::<u64>().is_ok())
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    dir.with_file_name(name)
}

/// Compacts the database in `dir` (the node must be stopped: sled locks the folder).
pub fn compact(dir: &Path, cfg: &StorageConfig) -> Result<Compacted, StoreError> {
    if db::written_compressed(dir).is_none() {
        return Err(StoreError::Storage(format!("{} is not a node's data folder (no sled `conf` file)", dir.display())));
    }
    let fresh = sibling(dir, ".compacting");
    let kept = sibling(dir, ".before-compact");
    if kept.exists() {
        return Err(StoreError::Storage(format!("{} exists: remove it (a previous compaction's old database) first", kept.display())));
    }
    if fresh.exists() {
        std::fs::remove_dir_all(&fresh).map_err(io(&fresh))?;
    }
    let bytes_before = super::usage::folder_bytes(dir);
    let mut keys = 0u64;
    {
        let old = db::open(dir, &StorageConfig { cache_mib: 64, ..cfg.clone() })?;
        let new = sled::Config::new()
            .path(&fresh)
            .cache_capacity(db::sled_cache_bytes(&StorageConfig { cache_mib: 64, ..cfg.clone() }, cfg.compression))
            .use_compression(cfg.compression)
            .compression_factor(cfg.compression_level)
            .open()?;
        for name in old.tree_names() {
            let (from, to) = (old.open_tree(&name)?, new.open_tree(&name)?);
            let (mut batch, mut n, mut copied) = (sled::Batch::default(), 0usize, 0u64);
            for kv in from.iter() {
                let (k, v) = kv?;
                batch.insert(k, v);
                n += 1;
                if n == BATCH {
                    to.apply_batch(std::mem::take(&mut batch))?;
                    new.flush()?;
                    copied += n as u64;
                    n = 0;
                }
            }
            to.apply_batch(batch)?;
            copied += n as u64;
            let written = to.len() as u64;
            if written != copied || written != from.len() as u64 {
                return Err(StoreError::Storage(format!("tree {}: copied {copied} keys but the copy holds {written}; nothing was swapped", String::from_utf8_lossy(&name))));
            }
            keys += copied;
        }
        new.flush()?;
    }
    // Kiln's files (not sled's) move to the new folder.
    move_kiln_files(dir, dir, &fresh)?;
    std::fs::rename(dir, &kept).map_err(io(dir))?;
    std::fs::rename(&fresh, dir).map_err(io(&fresh))?;
    Ok(Compacted { keys, bytes_before, bytes_after: super::usage::folder_bytes(dir), kept })
}

fn move_kiln_files(root: &Path, dir: &Path, to_root: &Path) -> Result<(), StoreError> {
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        let path = entry.path();
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        let is_dir = entry.file_type().map_err(io(&path))?.is_dir();
        if rel == Path::new("blobs") && is_dir {
            move_kiln_files(root, &path, to_root)?;
        } else if !is_sled_file(&rel) {
            let target = to_root.join(&rel);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            std::fs::rename(&path, &target).map_err(io(&path))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_compacted_folder_holds_the_same_data_and_kilns_files() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("node1");
        let plain = StorageConfig { compression: false, ..StorageConfig::default() };
        {
            let d = db::open(&dir, &plain).unwrap();
            let state = d.open_tree("state").unwrap();
            // Rewrites leave garbage behind in sled's file.
            for round in 0..5u8 {
                for i in 0..3_000u32 {
                    state.insert(i.to_be_bytes(), vec![round; 300]).unwrap();
                }
                d.flush().unwrap();
            }
            d.open_tree("raft").unwrap().insert(b"e1", b"entry".as_slice()).unwrap();
            d.flush().unwrap();
        }
        std::fs::create_dir_all(dir.join("blobs/binary")).unwrap();
        std::fs::write(dir.join("blobs/binary/uuid"), b"content").unwrap();
        std::fs::create_dir_all(dir.join("export")).unwrap();
        std::fs::write(dir.join("export/f.ndjson"), b"{}\n").unwrap();

        // sled's flusher can hold the folder's lock for a moment after the drop: retry.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let done = loop {
            match compact(&dir, &StorageConfig::default()) {
                Err(e) if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => break other.unwrap(),
            }
        };
        assert_eq!(done.keys, 3_001);
        assert!(done.bytes_after < done.bytes_before, "{done:?}");
        assert_eq!(db::written_compressed(&dir), Some(true), "the new folder takes the configured compression");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let d = loop {
            match db::open(&dir, &StorageConfig::default()) {
                Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(50)),
                other => break other.unwrap(),
            }
        };
        let state = d.open_tree("state").unwrap();
        assert_eq!(state.len(), 3_000);
        assert_eq!(state.get(7u32.to_be_bytes()).unwrap().unwrap().as_ref(), &[4u8; 300][..]);
        assert_eq!(d.open_tree("raft").unwrap().get(b"e1").unwrap().unwrap().as_ref(), b"entry");
        assert_eq!(std::fs::read(dir.join("blobs/binary/uuid")).unwrap(), b"content");
        assert_eq!(std::fs::read(dir.join("export/f.ndjson")).unwrap(), b"{}\n");
        assert!(done.kept.join("db").exists(), "the old database is kept");
        drop(d);
        // A second compaction refuses while the old database is still there.
        assert!(compact(&dir, &StorageConfig::default()).unwrap_err().to_string().contains("before-compact"));
    }

    #[test]
    fn a_folder_that_is_not_a_nodes_is_refused() {
        let root = tempfile::tempdir().unwrap();
        assert!(compact(&root.path().join("none"), &StorageConfig::default()).is_err());
        assert!(!root.path().join("none.compacting").exists());
    }
}
