//! The resume file of `kiln import` (default `FILE.kiln-import` next to a file, `DIR/.kiln-import`
//! in a folder, none for stdin unless `--state`): JSON, rewritten atomically (temporary file +
//! rename) after every bundle whose lines and all lines before it are settled.
//!
//! ```json
//! {"version": 1, "files": {"Patient.ndjson": {"offset": 123456, "line": 1000, "prefix_sha256": "…",
//!   "imported": 998, "rejected": 2, "rejects": [{"line": 17, "reason": "…"}], "done": false}}}
//! ```
//!
//! `offset` / `line`: bytes and lines of the file already settled (imported or rejected); a rerun
//! starts there. `prefix_sha256` hashes the first `min(offset, 1 MiB)` bytes: a file that changed
//! under the state is refused rather than resumed in the middle of other data (`--restart`
//! imports it from the start). `rejects` keeps the first [`MAX_KEPT`] rejected lines.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dataio::DataIoError;

/// Rejected lines kept per file (the count goes on).
pub const MAX_KEPT: usize = 1000;
/// Bytes of a file's settled start that its fingerprint covers.
const PREFIX: u64 = 1024 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reject {
    /// 1-based line number in its file.
    pub line: u64,
    pub reason: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FileState {
    pub offset: u64,
    pub line: u64,
    #[serde(default)]
    pub prefix_sha256: String,
    pub imported: u64,
    pub rejected: u64,
    #[serde(default)]
    pub rejects: Vec<Reject>,
    pub done: bool,
}

impl FileState {
    pub fn add_rejects(&mut self, rejects: Vec<Reject>) {
        self.rejected += rejects.len() as u64;
        let room = MAX_KEPT.saturating_sub(self.rejects.len());
        self.rejects.extend(rejects.into_iter().take(room));
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ImportState {
    pub version: u32,
    pub files: BTreeMap<String, FileState>,
}

impl Default for ImportState {
    fn default() -> Self {
        ImportState { version: 1, files: BTreeMap::new() }
    }
}

impl ImportState {
    /// The state at `path`, empty when there is none.
    pub fn load(path: &Path) -> Result<ImportState, DataIoError> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let s: ImportState = serde_json::from_slice(&bytes)
                    .map_err(|e| DataIoError::Usage(format!("{}: not a kiln import state ({e}); remove it or pass --restart", path.display())))?;
                if s.version != 1 {
                    return Err(DataIoError::Usage(format!("{}: state version {} is not 1", path.display(), s.version)));
                }
                Ok(s)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ImportState::default()),
            Err(e) => Err(DataIoError::Io { path: path.display().to_string(), source: e }),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), DataIoError> {
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| DataIoError::Storage(e.to_string()))?;
        let tmp = path.with_extension("kiln-import-tmp");
        std::fs::write(&tmp, bytes).map_err(DataIoError::io(&tmp))?;
        std::fs::rename(&tmp, path).map_err(DataIoError::io(path))
    }
}

/// SHA-256 of the first `min(offset, 1 MiB)` bytes of `path`.
pub fn prefix_sha256(path: &Path, offset: u64) -> Result<String, DataIoError> {
    let f = std::fs::File::open(path).map_err(DataIoError::io(path))?;
    let mut buf = Vec::new();
    f.take(offset.min(PREFIX)).read_to_end(&mut buf).map_err(DataIoError::io(path))?;
    Ok(hex::encode(Sha256::digest(&buf)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_keeps_a_bounded_list() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.kiln-import");
        assert_eq!(ImportState::load(&path).unwrap(), ImportState::default());
        let mut s = ImportState::default();
        let f = s.files.entry("a.ndjson".into()).or_default();
        f.add_rejects((0..MAX_KEPT as u64 + 5).map(|line| Reject { line, reason: "bad".into() }).collect());
        assert_eq!((f.rejected, f.rejects.len()), (MAX_KEPT as u64 + 5, MAX_KEPT));
        s.save(&path).unwrap();
        assert_eq!(ImportState::load(&path).unwrap(), s);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(ImportState::load(&path).is_err());
        std::fs::write(dir.path().join("f"), b"hello world").unwrap();
        assert_eq!(prefix_sha256(&dir.path().join("f"), 5).unwrap(), hex::encode(Sha256::digest(b"hello")));
    }
}
