//! `raft::Storage` on a sled tree (`raft`). Entries are keyed `e` + index (big-endian) with the value
//! `term (8 bytes) + protobuf Entry`, so `term()` needs no decode. Hard state, conf state and the
//! compaction point live under `s:` keys. Writes come only from the Raft thread; the caller flushes
//! (fsyncs) once per Ready. A snapshot is the state machine's `state` tree at its applied index:
//! asked for one, this storage starts a capture and answers with a descriptor; the tree itself is
//! streamed by a sender thread (`store::snapshot`, `consensus::snapshot_send`).

use std::sync::Arc;

use parking_lot::RwLock;
use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use crate::store::snapshot::Capture;

const HARD_STATE: &[u8] = b"s:hard_state";
const CONF_STATE: &[u8] = b"s:conf_state";
const COMPACTED: &[u8] = b"s:compacted";

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'e';
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

fn store_err(e: impl std::fmt::Display) -> raft::Error {
    raft::Error::Store(StorageError::Other(e.to_string().into()))
}

#[derive(Debug, Clone, Copy, Default)]
struct Bounds {
    /// Index and term of the last compacted entry (0, 0 when nothing was compacted).
    compacted_index: u64,
    compacted_term: u64,
    last_index: u64,
}

/// Raft log storage on sled.
pub struct SledStorage {
    tree: sled::Tree,
    bounds: RwLock<Bounds>,
    /// The state machine's tree and the capture that streams it, for snapshots.
    snap: Option<(sled::Tree, Arc<Capture>)>,
}

impl SledStorage {
    /// Opens the log; a fresh one is initialised with `voters` as its configuration.
    pub fn open(tree: sled::Tree, voters: &[u64]) -> Result<SledStorage, raft::Error> {
        Self::open_with_state(tree, None, voters)
    }

    /// Opens the log of a node whose state machine lives in `state` (snapshots are streamed from it).
    pub fn open_with_state(tree: sled::Tree, snap: Option<(sled::Tree, Arc<Capture>)>, voters: &[u64]) -> Result<SledStorage, raft::Error> {
        let mut bounds = Bounds::default();
        if let Some(b) = tree.get(COMPACTED).map_err(store_err)? {
            let mut m = SnapshotMetadata::default();
            m.merge_from_bytes(&b).map_err(store_err)?;
            bounds.compacted_index = m.index;
            bounds.compacted_term = m.term;
        }
        bounds.last_index = match tree.scan_prefix(b"e").keys().next_back() {
            Some(k) => u64::from_be_bytes(k.map_err(store_err)?[1..].try_into().map_err(store_err)?),
            None => bounds.compacted_index,
        };
        let s = SledStorage { tree, bounds: RwLock::new(bounds), snap };
        if s.tree.get(CONF_STATE).map_err(store_err)?.is_none() {
            let mut cs = ConfState::default();
            cs.voters = voters.to_vec();
            s.set_conf_state(&cs)?;
        }
        Ok(s)
    }

    fn get_proto<M: protobuf::Message + Default>(&self, key: &[u8]) -> Result<M, raft::Error> {
        let mut m = M::default();
        if let Some(b) = self.tree.get(key).map_err(store_err)? {
            m.merge_from_bytes(&b).map_err(store_err)?;
        }
        Ok(m)
    }

    fn put_proto<M: protobuf::Message>(&self, key: &[u8], m: &M) -> Result<(), raft::Error> {
        self.tree.insert(key, m.write_to_bytes().map_err(store_err)?).map_err(store_err)?;
        Ok(())
    }

    pub fn hard_state(&self) -> Result<HardState, raft::Error> {
        self.get_proto(HARD_STATE)
    }

    pub fn set_hard_state(&self, hs: &HardState) -> Result<(), raft::Error> {
        self.put_proto(HARD_STATE, hs)
    }

    /// Records a new commit index in the hard state.
    pub fn set_commit(&self, commit: u64) -> Result<(), raft::Error> {
        let mut hs = self.hard_state()?;
        if hs.commit < commit {
            hs.commit = commit;
            self.set_hard_state(&hs)?;
        }
        Ok(())
    }

    pub fn conf_state(&self) -> Result<ConfState, raft::Error> {
        self.get_proto(CONF_STATE)
    }

    pub fn set_conf_state(&self, cs: &ConfState) -> Result<(), raft::Error> {
        self.put_proto(CONF_STATE, cs)
    }

    /// Appends entries, dropping any conflicting suffix first.
    pub fn append(&self, entries: &[Entry]) -> Result<(), raft::Error> {
        let Some(first) = entries.first() else { return Ok(()) };
        let mut bounds = self.bounds.write();
        let mut batch = sled::Batch::default();
        for stale in first.index..=bounds.last_index {
            batch.remove(&entry_key(stale));
        }
        for e in entries {
            let mut v = Vec::with_capacity(8 + e.compute_size() as usize);
            v.extend_from_slice(&e.term.to_be_bytes());
            v.extend_from_slice(&e.write_to_bytes().map_err(store_err)?);
            batch.insert(&entry_key(e.index), v);
        }
        self.tree.apply_batch(batch).map_err(store_err)?;
        bounds.last_index = entries.last().map(|e| e.index).unwrap_or(bounds.last_index);
        Ok(())
    }

    /// Drops the whole log and records that everything up to `index` (of `term`) is in the state
    /// machine: after installing a snapshot, or when the state machine is found ahead of the log.
    pub fn reset_to(&self, index: u64, term: u64, conf: Option<&ConfState>) -> Result<(), raft::Error> {
        let mut bounds = self.bounds.write();
        let mut batch = sled::Batch::default();
        for key in self.tree.scan_prefix(b"e").keys() {
            batch.remove(key.map_err(store_err)?);
        }
        let mut m = SnapshotMetadata::default();
        m.index = index;
        m.term = term;
        batch.insert(COMPACTED, m.write_to_bytes().map_err(store_err)?);
        if let Some(cs) = conf {
            batch.insert(CONF_STATE, cs.write_to_bytes().map_err(store_err)?);
        }
        let mut hs = self.hard_state()?;
        // Everything after `index` is dropped, so the commit index cannot stay above it.
        hs.commit = index;
        hs.term = hs.term.max(term);
        batch.insert(HARD_STATE, hs.write_to_bytes().map_err(store_err)?);
        self.tree.apply_batch(batch).map_err(store_err)?;
        *bounds = Bounds { compacted_index: index, compacted_term: term, last_index: index };
        Ok(())
    }

    /// Discards entries up to and including `index` (which must be applied).
    pub fn compact(&self, index: u64) -> Result<(), raft::Error> {
        let term = raft::Storage::term(self, index)?;
        let mut bounds = self.bounds.write();
        if index <= bounds.compacted_index {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for i in bounds.compacted_index + 1..=index {
            batch.remove(&entry_key(i));
        }
        let mut m = SnapshotMetadata::default();
        m.index = index;
        m.term = term;
        batch.insert(COMPACTED, m.write_to_bytes().map_err(store_err)?);
        self.tree.apply_batch(batch).map_err(store_err)?;
        bounds.compacted_index = index;
        bounds.compacted_term = term;
        Ok(())
    }
}

impl raft::Storage for SledStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state()?, self.conf_state()?))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let bounds = *self.bounds.read();
        if low <= bounds.compacted_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > bounds.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let mut out = Vec::with_capacity((high - low) as usize);
        for item in self.tree.range(entry_key(low)..entry_key(high)) {
            let (_, v) = item.map_err(store_err)?;
            let mut e = Entry::default();
            e.merge_from_bytes(&v[8..]).map_err(store_err)?;
            out.push(e);
        }
        if out.len() as u64 != high - low {
            return Err(store_err(format!("log entries {low}..{high} are missing")));
        }
        raft::util::limit_size(&mut out, max_size.into());
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let bounds = *self.bounds.read();
        if idx == bounds.compacted_index {
            return Ok(bounds.compacted_term);
        }
        if idx < bounds.compacted_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > bounds.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        match self.tree.get(entry_key(idx)).map_err(store_err)? {
            Some(v) if v.len() >= 8 => Ok(u64::from_be_bytes(v[..8].try_into().map_err(store_err)?)),
            _ => Err(store_err(format!("log entry {idx} is missing"))),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.bounds.read().compacted_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.bounds.read().last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let unavailable = || raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
        let Some((state, capture)) = &self.snap else { return Err(unavailable()) };
        // Called on the Raft thread between entries: the tree is exactly at the applied index.
        let sm = crate::machine::StateMachine::open(state.clone()).map_err(store_err)?;
        if sm.applied_index() < request_index {
            return Err(unavailable());
        }
        let conf = match sm.conf_state().map_err(store_err)? {
            Some(bytes) => ConfState::parse_from_bytes(&bytes).map_err(store_err)?,
            None => self.conf_state()?,
        };
        let id = uuid::Uuid::new_v4().as_u64_pair().0;
        if !capture.start(id, sm.applied_index()).map_err(store_err)? {
            // Another transfer is running: Raft asks again later.
            return Err(unavailable());
        }
        let mut snap = Snapshot::default();
        snap.data = crate::store::snapshot::descriptor(id).into();
        let meta = snap.mut_metadata();
        meta.index = sm.applied_index();
        meta.term = sm.applied_term();
        meta.set_conf_state(conf);
        tracing::info!(index = meta.index, peer = to, stream = id, "streaming a snapshot to a lagging peer");
        Ok(snap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        let mut e = Entry::default();
        e.index = index;
        e.term = term;
        e.data = vec![index as u8].into();
        e
    }

    #[test]
    fn append_truncate_compact_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let s = SledStorage::open(db.open_tree("raft").unwrap(), &[1]).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1, 0));
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1]);
        s.append(&[entry(1, 1), entry(2, 1), entry(3, 1)]).unwrap();
        s.append(&[entry(3, 2), entry(4, 2)]).unwrap();
        assert_eq!(s.term(3).unwrap(), 2);
        assert_eq!(s.entries(1, 5, None, GetEntriesContext::empty(false)).unwrap().len(), 4);
        assert_eq!(s.entries(1, 5, Some(0), GetEntriesContext::empty(false)).unwrap().len(), 1);
        s.compact(2).unwrap();
        assert_eq!(s.first_index().unwrap(), 3);
        assert_eq!(s.term(2).unwrap(), 1);
        assert!(matches!(s.entries(2, 4, None, GetEntriesContext::empty(false)), Err(raft::Error::Store(StorageError::Compacted))));
        let mut hs = HardState::default();
        hs.term = 2;
        hs.commit = 4;
        s.set_hard_state(&hs).unwrap();
        drop(s);
        let s = SledStorage::open(db.open_tree("raft").unwrap(), &[9]).unwrap();
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (3, 4));
        let st = s.initial_state().unwrap();
        assert_eq!((st.hard_state.commit, st.conf_state.voters.clone()), (4, vec![1]));
    }
}
