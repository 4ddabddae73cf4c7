//! `kiln restore --from BACKUP_DIR --data-dir D --nodes N`: the data dirs `D/node1..N` of a NEW
//! cluster whose state machine is the backup, in the layout `kiln cluster up --data-dir D` uses
//! (and `kiln serve --data-dir D/node<i>` opens).
//!
//! First the state file is checked against its manifest (SHA-256 and size) and then read again
//! through [`super::format::Reader`] (lengths, order, count, data and file digests); any
//! mismatch leaves nothing behind. Each node's `state` tree gets every pair of the backup except
//! the consensus metadata (`store::snapshot::is_consensus_meta`): the membership is the new
//! cluster's (voters = the given ids, no members added at run time). Its Raft log starts where a
//! follower's starts after installing a snapshot: compacted at the backup's index and term
//! (`SledStorage::reset_to`), so the nodes elect a leader and go on from there, and a node added
//! later receives a snapshot like in any cluster.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::prelude::ConfState;
use sha2::{Digest, Sha256};

use super::backup::Manifest;
use super::format::Reader;
use super::DataIoError;
use crate::consensus::storage::SledStorage;
use crate::store::keys;
use crate::store::snapshot::is_consensus_meta;

/// Pairs per sled batch.
const BATCH: usize = 10_000;
/// Batches between flushes: sled keeps written pages in memory until they are flushed.
const FLUSH_EVERY: usize = 10;
/// Page cache of each database while restoring (the data is written once, not read), in memory
/// MiB: sled is handed a quarter of it for the compressed folders restore creates.
const CACHE_MIB: u64 = 256;

/// What `kiln restore` was asked.
pub struct RestoreJob {
    pub from: PathBuf,
    /// Node `i` gets `data_dir/node<i>`.
    pub data_dir: PathBuf,
    /// The new cluster's voters.
    pub node_ids: Vec<u64>,
}

/// The data dir of node `id`.
pub fn node_dir(data_dir: &Path, id: u64) -> PathBuf {
    data_dir.join(format!("node{id}"))
}

pub fn run(job: &RestoreJob) -> Result<Manifest, DataIoError> {
    let mut ids = job.node_ids.clone();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() || ids.len() != job.node_ids.len() || ids.contains(&0) {
        return Err(DataIoError::Usage("node ids must be distinct and non-zero".into()));
    }
    let manifest = Manifest::read(&job.from)?;
    // The backup file sits beside its manifest: a bare file name, never a path elsewhere.
    let bare = Path::new(&manifest.file).file_name().is_some_and(|n| n == std::ffi::OsStr::new(&manifest.file));
    if !bare {
        return Err(DataIoError::Refused(format!("manifest.json names the backup file {:?}: it must be a file name in {}", manifest.file, job.from.display())));
    }
    let path = job.from.join(&manifest.file);
    // 1. The file is the one the manifest describes.
    let (sha, bytes) = file_sha256(&path)?;
    if bytes != manifest.bytes || sha != manifest.sha256 {
        return Err(DataIoError::Refused(format!(
            "{}: {bytes} bytes with SHA-256 {sha}, the manifest says {} bytes with {}: the backup is damaged or incomplete; nothing was restored",
            path.display(),
            manifest.bytes,
            manifest.sha256
        )));
    }
    for &id in &ids {
        let dir = node_dir(&job.data_dir, id);
        if dir.exists() && std::fs::read_dir(&dir).map_err(DataIoError::io(&dir))?.next().is_some() {
            return Err(DataIoError::Usage(format!("{} is not empty: restore builds a new cluster into empty data dirs", dir.display())));
        }
    }
    let result = write_nodes(job, &ids, &manifest, &path);
    if result.is_err() {
        for &id in &ids {
            let _ = std::fs::remove_dir_all(node_dir(&job.data_dir, id));
        }
    }
    result.map(|()| manifest)
}

fn file_sha256(path: &Path) -> Result<(String, u64), DataIoError> {
    let mut f = File::open(path).map_err(DataIoError::io(path))?;
    let (mut h, mut n, mut buf) = (Sha256::new(), 0u64, vec![0u8; 1 << 20]);
    loop {
        let got = f.read(&mut buf).map_err(DataIoError::io(path))?;
        if got == 0 {
            return Ok((hex::encode(h.finalize()), n));
        }
        h.update(&buf[..got]);
        n += got as u64;
    }
}

fn write_nodes(job: &RestoreJob, ids: &[u64], manifest: &Manifest, path: &Path) -> Result<(), DataIoError> {
    let mut dbs = Vec::new();
    for &id in ids {
        let dir = node_dir(&job.data_dir, id);
        std::fs::create_dir_all(&dir).map_err(DataIoError::io(&dir))?;
        let db = crate::store::db::open(&dir, &crate::store::db::StorageConfig { cache_mib: CACHE_MIB, ..Default::default() })?;
        let state = db.open_tree("state")?;
        dbs.push((db, state));
    }
    let file = File::open(path).map_err(DataIoError::io(path))?;
    let (header, mut reader) = Reader::open(BufReader::with_capacity(1 << 20, file))?;
    if (header.index, header.term, header.node_id) != (manifest.index, manifest.term, manifest.node_id) || header.fhir_version != manifest.fhir_version {
        return Err(DataIoError::Refused(format!("the state file's header {header:?} does not match its manifest")));
    }
    let mut applied = None;
    let mut batches: Vec<sled::Batch> = dbs.iter().map(|_| sled::Batch::default()).collect();
    let (mut n, mut applied_batches) = (0, 0);
    while let Some((k, v)) = reader.next_pair()? {
        if k == keys::META_APPLIED {
            applied = Some(v.clone());
        }
        if is_consensus_meta(&k) {
            continue;
        }
        for b in &mut batches {
            b.insert(k.as_slice(), v.as_slice());
        }
        n += 1;
        if n == BATCH {
            for ((db, state), b) in dbs.iter().zip(batches.iter_mut()) {
                state.apply_batch(std::mem::take(b))?;
                if applied_batches % FLUSH_EVERY == FLUSH_EVERY - 1 {
                    db.flush()?;
                }
            }
            applied_batches += 1;
            n = 0;
        }
    }
    let summary = reader.summary().cloned().ok_or_else(|| DataIoError::Refused("the state file has no trailer".into()))?;
    if summary.data_sha256 != manifest.data_sha256 || summary.pairs != manifest.pairs {
        return Err(DataIoError::Refused("the state file's trailer does not match its manifest".into()));
    }
    let mut expected = manifest.index.to_be_bytes().to_vec();
    expected.extend_from_slice(&manifest.term.to_be_bytes());
    if applied.as_deref() != Some(expected.as_slice()) {
        return Err(DataIoError::Refused(format!("the state is not at the manifest's index {} / term {}", manifest.index, manifest.term)));
    }
    let cs = ConfState { voters: ids.to_vec(), ..Default::default() };
    let conf = cs.write_to_bytes().map_err(|e| DataIoError::Storage(e.to_string()))?;
    for ((db, state), mut b) in dbs.into_iter().zip(batches) {
        b.insert(keys::META_APPLIED, expected.as_slice());
        b.insert(keys::META_CONF, conf.as_slice());
        state.apply_batch(b)?;
        let log = SledStorage::open(db.open_tree("raft")?, ids)?;
        log.reset_to(manifest.index, manifest.term, Some(&cs))?;
        db.flush()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataio::format::{Encoder, Header};
    use crate::store::snapshot::chunk_of;

    /// A backup folder holding `pairs` at index 9 / term 2.
    fn backup(dir: &Path, pairs: &[(&[u8], &[u8])]) -> Manifest {
        let h = Header { index: 9, term: 2, node_id: 5, fhir_version: "4.0.1".into(), created: "2026-01-01T00:00:00Z".into() };
        let mut e = Encoder::default();
        let mut bytes = e.header(&h);
        let chunk = chunk_of(pairs.iter().copied());
        e.chunk(&chunk).unwrap();
        bytes.extend_from_slice(&chunk);
        bytes.extend_from_slice(&e.trailer());
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("state.kbak"), &bytes).unwrap();
        let summary = Reader::open(bytes.as_slice()).unwrap().1.verify_all().unwrap();
        let m = Manifest {
            format: super::super::backup::MANIFEST_FORMAT.into(),
            file: "state.kbak".into(),
            index: 9,
            term: 2,
            fhir_version: "4.0.1".into(),
            node_id: 5,
            created: h.created,
            sha256: summary.file_sha256,
            bytes: summary.bytes,
            pairs: summary.pairs,
            data_sha256: summary.data_sha256,
            kiln_version: "test".into(),
        };
        std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&m).unwrap()).unwrap();
        m
    }

    #[test]
    fn a_restored_node_holds_the_data_under_a_new_membership() {
        let tmp = tempfile::tempdir().unwrap();
        let applied = [9u64.to_be_bytes(), 2u64.to_be_bytes()].concat();
        let old_peer = keys::meta_peer(7);
        let pairs: Vec<(&[u8], &[u8])> = vec![(b"cPatient\0a", b"x"), (b"mapplied", &applied), (b"mconf", b"old"), (&old_peer, b"{}"), (b"vPatient\0a", b"y")];
        let mut sorted = pairs.clone();
        sorted.sort();
        let m = backup(&tmp.path().join("b"), &sorted);
        let job = RestoreJob { from: tmp.path().join("b"), data_dir: tmp.path().join("d"), node_ids: vec![1, 2, 3] };
        assert_eq!(run(&job).unwrap(), m);
        for id in 1..=3 {
            let db = crate::store::db::open(&node_dir(&job.data_dir, id), &Default::default()).unwrap();
            let state = db.open_tree("state").unwrap();
            let (_, _, data) = crate::store::snapshot::digests(&state).unwrap();
            assert_eq!(data, m.data_sha256, "the data digest is the backup's");
            assert!(state.get(&old_peer).unwrap().is_none(), "members of the old cluster are gone");
            let cs = ConfState::parse_from_bytes(&state.get(keys::META_CONF).unwrap().unwrap()).unwrap();
            assert_eq!(cs.voters, vec![1, 2, 3]);
            let log = SledStorage::open(db.open_tree("raft").unwrap(), &[]).unwrap();
            use raft::Storage;
            assert_eq!((log.first_index().unwrap(), log.last_index().unwrap(), log.term(9).unwrap()), (10, 9, 2));
            assert_eq!(log.hard_state().unwrap().term, 2);
        }
        // Not over existing data.
        assert!(matches!(run(&job), Err(DataIoError::Usage(_))));
    }

    #[test]
    fn a_damaged_backup_restores_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let applied = [9u64.to_be_bytes(), 2u64.to_be_bytes()].concat();
        backup(&tmp.path().join("b"), &[(b"cPatient\0a", b"x"), (b"mapplied", &applied)]);
        let state = tmp.path().join("b/state.kbak");
        let mut bytes = std::fs::read(&state).unwrap();
        let at = bytes.len() - 50;
        bytes[at] ^= 0xFF;
        std::fs::write(&state, &bytes).unwrap();
        let job = RestoreJob { from: tmp.path().join("b"), data_dir: tmp.path().join("d"), node_ids: vec![1] };
        let err = run(&job).unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");
        assert!(!node_dir(&job.data_dir, 1).exists());
    }
}
