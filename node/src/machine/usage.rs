//! Where a node's disk goes: the live bytes of every tree, the `state` tree split by key class
//! (versions, history, index rows, …), against the files sled keeps on disk. Printed by
//! `kiln storage --data-dir DIR` (node stopped: sled holds a lock on its folder) so that space
//! amplification is measured, not guessed (issue #16).

use std::collections::BTreeMap;
use std::path::Path;

use crate::store::keys;
use crate::store::space::TENANT_TAG;
use crate::store::StoreError;

/// Live keys and bytes of one class of keys.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Class {
    pub keys: u64,
    pub key_bytes: u64,
    pub value_bytes: u64,
}

impl Class {
    fn add(&mut self, k: usize, v: usize) {
        self.keys += 1;
        self.key_bytes += k as u64;
        self.value_bytes += v as u64;
    }

    pub fn bytes(&self) -> u64 {
        self.key_bytes + self.value_bytes
    }
}

/// The live data of a database by tree and key class, and its files.
#[derive(Debug, Default)]
pub struct Usage {
    /// `tree/class` → live keys and bytes.
    pub classes: BTreeMap<String, Class>,
    /// File (relative to the data folder) → bytes on disk.
    pub files: BTreeMap<String, u64>,
}

impl Usage {
    pub fn live_bytes(&self) -> u64 {
        self.classes.values().map(Class::bytes).sum()
    }

    pub fn file_bytes(&self) -> u64 {
        self.files.values().sum()
    }
}

/// The name of the class of a `state` key.
pub fn class_of(key: &[u8]) -> &'static str {
    match key.first().copied() {
        Some(keys::CURRENT) => "current",
        Some(keys::VERSION) => "versions",
        Some(keys::SYS_HISTORY) => "system history",
        Some(keys::TYPE_HISTORY) => "type history",
        Some(keys::META) => "metadata",
        Some(crate::search::index::ROW) => "index rows",
        Some(crate::search::index::REVERSE) => "index row lists",
        Some(crate::search::posting::DOCNUM) => "id → doc number",
        Some(crate::search::posting::DOC_ID) => "doc number → id",
        Some(TENANT_TAG) => "other tenants",
        _ => "other",
    }
}

/// Measures the database `db` (every tree) and the files under `dir`.
pub fn measure(db: &sled::Db, dir: &Path) -> Result<Usage, StoreError> {
    let mut usage = Usage::default();
    for name in db.tree_names() {
        let tree = db.open_tree(&name)?;
        let tname = String::from_utf8_lossy(&name).into_owned();
        for kv in tree.iter() {
            let (k, v) = kv?;
            let class = if tname == "state" { class_of(&k) } else { "all" };
            usage.classes.entry(format!("{tname}/{class}")).or_default().add(k.len(), v.len());
        }
    }
    walk(dir, dir, &mut usage.files).map_err(|e| StoreError::Storage(format!("listing {}: {e}", dir.display())))?;
    Ok(usage)
}

/// Bytes of every file under `dir` (0 when it cannot be read).
pub fn folder_bytes(dir: &Path) -> u64 {
    let mut files = BTreeMap::new();
    let _ = walk(dir, dir, &mut files);
    files.values().sum()
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, u64>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let meta = entry.metadata()?;
        if meta.is_dir() {
            walk(root, &entry.path(), out)?;
        } else {
            let rel = entry.path().strip_prefix(root).map(|p| p.display().to_string()).unwrap_or_default();
            out.insert(rel, meta.len());
        }
    }
    Ok(())
}

/// A plain-text table of `u`.
pub fn render(u: &Usage) -> String {
    let mb = |b: u64| format!("{:.1}", b as f64 / 1_000_000.0);
    let mut s = format!("{:<32} {:>12} {:>12} {:>12}\n", "tree/class", "keys", "key MB", "value MB");
    for (name, c) in &u.classes {
        s += &format!("{:<32} {:>12} {:>12} {:>12}\n", name, c.keys, mb(c.key_bytes), mb(c.value_bytes));
    }
    s += &format!("live data: {} MB\n\nfiles:\n", mb(u.live_bytes()));
    for (name, len) in &u.files {
        s += &format!("  {:<40} {:>12} MB\n", name, mb(*len));
    }
    let live = u.live_bytes().max(1) as f64;
    s += &format!("on disk: {} MB ({:.2}× the live data)\n", mb(u.file_bytes()), u.file_bytes() as f64 / live);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_and_files_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let state = db.open_tree("state").unwrap();
        state.insert(keys::version("Patient", "a", 1), vec![0u8; 100]).unwrap();
        state.insert(keys::current("Patient", "a"), vec![0u8; 17]).unwrap();
        db.open_tree("raft").unwrap().insert(b"e1", vec![0u8; 50]).unwrap();
        db.flush().unwrap();
        let u = measure(&db, dir.path()).unwrap();
        assert_eq!(u.classes["state/versions"], Class { keys: 1, key_bytes: keys::version("Patient", "a", 1).len() as u64, value_bytes: 100 });
        assert_eq!(u.classes["state/current"].value_bytes, 17);
        assert_eq!(u.classes["raft/all"].keys, 1);
        assert!(u.files.contains_key("db"), "{:?}", u.files);
        assert!(render(&u).contains("state/versions"));
    }
}
