//! Raft snapshots of the state machine, streamed in chunks with memory bounded by the chunk size,
//! never by the size of the data.
//!
//! The Raft snapshot message carries only a descriptor (`KSNAP2` + stream id); the `state` tree
//! itself travels ahead of it on the same peer connection as numbered chunks of key/value pairs.
//!
//! - Leader ([`Capture`]): the snapshot is the state at the applied index when Raft asked for it,
//!   read from the live tree by a sender thread while the Raft thread keeps applying. Before the
//!   Raft thread writes a key the sender has not reached yet, it keeps the key's old value (or its
//!   absence) in the `snapshot_preimages` tree; the sender sends that instead. The sender thus
//!   streams exactly the state at the snapshot's index, and the pre-images cost disk, bounded by
//!   what is written during the transfer, not memory.
//! - Follower ([`Staging`]): chunks are written to the `snapshot_incoming` tree by the connection's
//!   thread as they arrive (off the Raft thread); when the snapshot message follows a complete
//!   stream, the Raft thread installs it: a marker key first, then the state tree replaced in
//!   batches, then the marker removed. A node that finds the marker at start-up crashed mid-install
//!   and starts over as an empty member (the leader sends it a snapshot again).
//!
//! Chunk format: per pair `u32 key length, key, u32 value length, value` (big-endian).

use std::ops::Bound;

use parking_lot::Mutex;
use sled::IVec;

use super::StoreError;

const MAGIC: &[u8] = b"KSNAP2";

/// Present in the `state` tree while a snapshot is being installed (value: the stream id).
pub const META_INSTALLING: &[u8] = b"minstalling";

/// Pairs per batch when the follower replaces its state.
const INSTALL_BATCH: usize = 10_000;

/// The snapshot data of a Raft message: the stream `id`.
pub fn descriptor(id: u64) -> Vec<u8> {
    let mut d = MAGIC.to_vec();
    d.extend_from_slice(&id.to_be_bytes());
    d
}

/// The stream id of a descriptor.
pub fn parse_descriptor(data: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(data.strip_prefix(MAGIC)?.try_into().ok()?))
}

fn push_part(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&(part.len() as u32).to_be_bytes());
    out.extend_from_slice(part);
}

/// Takes one length-prefixed part off the front of `rest`.
fn take<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let part = rest.get(4..4usize.checked_add(len)?)?;
    *rest = &rest[4 + len..];
    Some(part)
}

/// Decodes a chunk into its pairs.
pub fn pairs(data: &[u8]) -> Result<Vec<(&[u8], &[u8])>, StoreError> {
    let bad = || StoreError::Corrupt("snapshot chunk is truncated".into());
    let mut rest = data;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let k = take(&mut rest).ok_or_else(bad)?;
        let v = take(&mut rest).ok_or_else(bad)?;
        out.push((k, v));
    }
    Ok(out)
}

/// The leader's side of one snapshot transfer (see the module doc).
pub struct Capture {
    /// Old values of keys written since the snapshot's index (`None`: snapshots unavailable).
    pre: Option<sled::Tree>,
    active: Mutex<Option<Active>>,
}

struct Active {
    id: u64,
    /// The applied index the stream reflects.
    index: u64,
    /// The last key sent; pre-images are kept only for keys after it.
    cursor: Option<IVec>,
}

/// Pre-image markers: the key did not exist / had this value.
const ABSENT: u8 = 0;
const PRESENT: u8 = 1;

impl Default for Capture {
    fn default() -> Self {
        Capture { pre: None, active: Mutex::new(None) }
    }
}

impl Capture {
    /// A capture keeping pre-images in `pre` (a tree of its own, emptied at each start).
    pub fn new(pre: sled::Tree) -> Capture {
        Capture { pre: Some(pre), active: Mutex::new(None) }
    }

    /// Starts capturing the state as it is now under stream `id`. `false` when another transfer
    /// is running or snapshots are unavailable (Raft asks again later).
    pub fn start(&self, id: u64, index: u64) -> Result<bool, StoreError> {
        let Some(pre) = &self.pre else { return Ok(false) };
        let mut active = self.active.lock();
        if active.is_some() {
            return Ok(false);
        }
        pre.clear()?;
        *active = Some(Active { id, index, cursor: None });
        Ok(true)
    }

    /// The index of the snapshot being streamed, if any (the log is not compacted past it).
    pub fn index(&self) -> Option<u64> {
        self.active.lock().as_ref().map(|a| a.index)
    }

    /// Called by the Raft thread before it writes `keys`: keeps the current value of each key
    /// the running transfer has not sent yet (the first time only).
    pub fn before_write(&self, state: &sled::Tree, keys: &[IVec]) -> Result<(), StoreError> {
        let active = self.active.lock();
        let (Some(a), Some(pre)) = (active.as_ref(), &self.pre) else { return Ok(()) };
        for k in keys {
            if a.cursor.as_ref().is_some_and(|c| k <= c) || pre.contains_key(k)? {
                continue;
            }
            let old = match state.get(k)? {
                None => vec![ABSENT],
                Some(v) => {
                    let mut o = Vec::with_capacity(v.len() + 1);
                    o.push(PRESENT);
                    o.extend_from_slice(&v);
                    o
                }
            };
            pre.insert(k, old)?;
        }
        Ok(())
    }

    /// The next pairs of stream `id`, about `max_bytes` of them, in key order; empty when the
    /// whole state was sent. `Err` if the transfer was cancelled.
    ///
    /// One chunk is read under the capture's lock, merging the live tree with the pre-images
    /// after the cursor (a pre-image wins; an absent one hides the live key): the Raft thread
    /// records pre-images only under that lock and before it writes, so every key after the
    /// cursor is seen as it was at the snapshot's index.
    pub fn next_chunk(&self, id: u64, state: &sled::Tree, max_bytes: usize) -> Result<Vec<u8>, StoreError> {
        let pre = self.pre.as_ref().ok_or_else(|| StoreError::Storage("snapshots are unavailable".into()))?;
        let mut active = self.active.lock();
        let a = match active.as_mut() {
            Some(a) if a.id == id => a,
            _ => return Err(StoreError::Storage(format!("snapshot stream {id} was cancelled"))),
        };
        let from = match &a.cursor {
            Some(c) => Bound::Excluded(c.clone()),
            None => Bound::Unbounded,
        };
        let mut live = state.range::<IVec, _>((from.clone(), Bound::Unbounded));
        let mut kept = pre.range::<IVec, _>((from, Bound::Unbounded));
        let (mut l, mut k) = (live.next().transpose()?, kept.next().transpose()?);
        let mut out = Vec::new();
        while out.len() < max_bytes {
            let (key, value) = match (&l, &k) {
                (None, None) => break,
                (Some((lk, _)), Some((kk, _))) if kk <= lk => {
                    let same = kk == lk;
                    let (key, p) = k.take().expect("present");
                    k = kept.next().transpose()?;
                    if same {
                        l = live.next().transpose()?;
                    }
                    (key, (p.first() == Some(&PRESENT)).then(|| IVec::from(&p[1..])))
                }
                (Some(_), _) => {
                    let (key, v) = l.take().expect("present");
                    l = live.next().transpose()?;
                    (key, Some(v))
                }
                (None, Some(_)) => {
                    let (key, p) = k.take().expect("present");
                    k = kept.next().transpose()?;
                    (key, (p.first() == Some(&PRESENT)).then(|| IVec::from(&p[1..])))
                }
            };
            if let Some(v) = value {
                push_part(&mut out, &key);
                push_part(&mut out, &v);
            }
            a.cursor = Some(key);
        }
        Ok(out)
    }

    /// Cancels whatever transfer is running (the state is about to be replaced wholesale): its
    /// sender's next chunk fails and the transfer is reported failed.
    pub fn abort(&self) {
        let id = self.active.lock().as_ref().map(|a| a.id);
        if let Some(id) = id {
            self.finish(id);
        }
    }

    /// Ends stream `id` (done or failed) and drops its pre-images.
    pub fn finish(&self, id: u64) {
        let mut active = self.active.lock();
        if active.as_ref().is_some_and(|a| a.id == id) {
            *active = None;
            if let Some(pre) = &self.pre {
                if let Err(e) = pre.clear() {
                    tracing::warn!("cannot clear snapshot pre-images: {e}");
                }
            }
        }
    }
}

/// The follower's side: chunks of one incoming stream, kept on disk until installed.
pub struct Staging {
    tree: sled::Tree,
    /// The stream the Raft thread claimed for installing in its current turn, if any: no chunk
    /// may replace it meanwhile.
    lock: Mutex<Option<u64>>,
}

/// Staging keys: `0` the stream's state, `1` + key the pairs.
const STAGE_META: &[u8] = &[0];
const STAGE_DATA: u8 = 1;

impl Staging {
    pub fn new(tree: sled::Tree) -> Staging {
        Staging { tree, lock: Mutex::new(None) }
    }

    /// (id, next expected chunk, complete).
    fn meta(&self) -> Result<Option<(u64, u64, bool)>, StoreError> {
        Ok(self.tree.get(STAGE_META)?.and_then(|m| {
            let id = u64::from_be_bytes(m.get(..8)?.try_into().ok()?);
            let seq = u64::from_be_bytes(m.get(8..16)?.try_into().ok()?);
            Some((id, seq, *m.get(16)? == 1))
        }))
    }

    fn set_meta(&self, batch: &mut sled::Batch, id: u64, seq: u64, complete: bool) {
        let mut m = Vec::with_capacity(17);
        m.extend_from_slice(&id.to_be_bytes());
        m.extend_from_slice(&seq.to_be_bytes());
        m.push(u8::from(complete));
        batch.insert(STAGE_META, m);
    }

    /// Stores chunk `seq` of stream `id`. Chunk 0 starts a new stream (dropping any other); a
    /// chunk out of order is refused and the stream stays incomplete.
    pub fn accept(&self, id: u64, seq: u64, last: bool, chunk: &[u8]) -> Result<(), StoreError> {
        let claimed = self.lock.lock();
        if let Some(c) = *claimed {
            return Err(StoreError::Corrupt(format!("stream {c} is being installed; chunk {seq} of stream {id} refused")));
        }
        if seq == 0 {
            self.tree.clear()?;
        } else {
            match self.meta()? {
                Some((sid, next, false)) if sid == id && next == seq => {}
                other => return Err(StoreError::Corrupt(format!("snapshot chunk {seq} of stream {id} out of order (staged: {other:?})"))),
            }
        }
        let mut batch = sled::Batch::default();
        for (k, v) in pairs(chunk)? {
            let mut key = Vec::with_capacity(k.len() + 1);
            key.push(STAGE_DATA);
            key.extend_from_slice(k);
            batch.insert(key, v);
        }
        self.set_meta(&mut batch, id, seq + 1, last);
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Whether stream `id` arrived whole.
    pub fn complete(&self, id: u64) -> bool {
        matches!(self.meta(), Ok(Some((sid, _, true))) if sid == id)
    }

    /// Reserves stream `id` for installing if it arrived whole: until [`Self::release`], chunks
    /// are refused. `false` when it is not complete.
    pub fn claim(&self, id: u64) -> bool {
        let mut claimed = self.lock.lock();
        if !self.complete(id) {
            return false;
        }
        *claimed = Some(id);
        true
    }

    /// Ends a claim (after the Raft thread's turn, installed or not).
    pub fn release(&self) {
        *self.lock.lock() = None;
    }

    /// Replaces the whole `state` tree by stream `id` (see the module doc for crash safety).
    pub fn install(&self, id: u64, state: &sled::Tree) -> Result<(), StoreError> {
        let _claimed = self.lock.lock();
        if !matches!(self.meta()?, Some((sid, _, true)) if sid == id) {
            return Err(StoreError::Corrupt(format!("snapshot stream {id} is not complete")));
        }
        state.insert(META_INSTALLING, &id.to_be_bytes())?;
        state.flush()?;
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for key in state.iter().keys() {
            let key = key?;
            if key != META_INSTALLING {
                batch.remove(key);
                n += 1;
            }
            if n == INSTALL_BATCH {
                state.apply_batch(std::mem::take(&mut batch))?;
                n = 0;
            }
        }
        for item in self.tree.scan_prefix([STAGE_DATA]) {
            let (k, v) = item?;
            batch.insert(&k[1..], v);
            n += 1;
            if n == INSTALL_BATCH {
                state.apply_batch(std::mem::take(&mut batch))?;
                n = 0;
            }
        }
        batch.remove(META_INSTALLING);
        state.apply_batch(batch)?;
        state.flush()?;
        self.tree.clear()?;
        Ok(())
    }
}

/// Finishes a snapshot install that a crash cut short: the marker names the stream, which is
/// still whole in the staging tree (it is cleared only after the install), so the install runs
/// again from the start. Returns whether it did. The node then resumes at the snapshot's index
/// (its log is reset to that point at start-up), like after any install: a node never forgets
/// entries it acknowledged, which Raft requires.
pub fn resume_interrupted_install(db: &sled::Db, state: &sled::Tree) -> Result<bool, StoreError> {
    let Some(marker) = state.get(META_INSTALLING)? else { return Ok(false) };
    let id = u64::from_be_bytes(marker.as_ref().try_into().map_err(|_| StoreError::Corrupt("snapshot install marker".into()))?);
    let staging = Staging::new(db.open_tree(STAGING_TREE)?);
    if !staging.complete(id) {
        return Err(StoreError::Corrupt(format!(
            "a snapshot install (stream {id}) was interrupted and its stream is no longer staged: this data dir is inconsistent; \
             replace it (restore a backup, or remove the node, wipe it and add it again)"
        )));
    }
    staging.install(id, state)?;
    Ok(true)
}

/// The tree incoming snapshot streams are staged in.
pub const STAGING_TREE: &str = "snapshot_incoming";

/// A chunk holding `pairs` (for tests and tools that stage a stream by hand).
pub fn chunk_of<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in pairs {
        push_part(&mut out, k);
        push_part(&mut out, v);
    }
    out
}

/// SHA-256 over every key and value of `tree` (with their lengths), plus the pair count. Two
/// nodes at the same applied index must give the same digest; the caller checks the applied
/// index did not move while hashing.
pub fn digest(tree: &sled::Tree) -> Result<(String, u64), StoreError> {
    let (mut whole, mut count) = (PairHasher::default(), 0u64);
    for item in tree.iter() {
        let (k, v) = item?;
        whole.update(&k, &v);
        count += 1;
    }
    Ok((whole.finish(), count))
}

/// [`digest`] plus the data digest ([`is_consensus_meta`] keys left out): (sha256, pairs,
/// data sha256). The data digest of a cluster restored from a backup equals the backup's.
pub fn digests(tree: &sled::Tree) -> Result<(String, u64, String), StoreError> {
    let (mut whole, mut data, mut count) = (PairHasher::default(), PairHasher::default(), 0u64);
    for item in tree.iter() {
        let (k, v) = item?;
        whole.update(&k, &v);
        if !is_consensus_meta(&k) {
            data.update(&k, &v);
        }
        count += 1;
    }
    Ok((whole.finish(), count, data.finish()))
}

/// Keys that describe the Raft group rather than the data: the applied index and term, the
/// membership and the addresses of members added at run time. A restore writes new ones; every
/// other key (resources, history, index, jobs, cursors) is carried over byte for byte.
pub fn is_consensus_meta(key: &[u8]) -> bool {
    use super::keys;
    key == keys::META_APPLIED || key == keys::META_CONF || key.starts_with(keys::META_PEER_PREFIX)
}

/// SHA-256 over key/value pairs, each with its length (u64 big-endian) first.
#[derive(Default)]
pub struct PairHasher(sha2::Sha256);

impl PairHasher {
    pub fn update(&mut self, k: &[u8], v: &[u8]) {
        use sha2::Digest;
        self.0.update((k.len() as u64).to_be_bytes());
        self.0.update(k);
        self.0.update((v.len() as u64).to_be_bytes());
        self.0.update(v);
    }

    pub fn finish(self) -> String {
        use sha2::Digest;
        hex::encode(self.0.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iv(s: String) -> IVec {
        IVec::from(s.as_bytes())
    }

    fn dump(tree: &sled::Tree) -> Vec<(Vec<u8>, Vec<u8>)> {
        tree.iter().map(|r| r.unwrap()).map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
    }

    #[test]
    fn a_stream_is_the_state_at_its_start_while_writes_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let state = db.open_tree("state").unwrap();
        for i in 0..500u32 {
            state.insert(format!("k{i:04}"), vec![i as u8; 100]).unwrap();
        }
        let at_start = dump(&state);
        let capture = Capture::new(db.open_tree("pre").unwrap());
        assert!(capture.start(7, 42).unwrap());
        assert!(!capture.start(8, 43).unwrap(), "one transfer at a time");
        assert_eq!(capture.index(), Some(42));
        let write = |keys: Vec<IVec>, f: &dyn Fn(&sled::Tree)| {
            capture.before_write(&state, &keys).unwrap();
            f(&state);
        };
        let staging = Staging::new(db.open_tree("incoming").unwrap());
        let (mut seq, mut sent) = (0u64, 0);
        loop {
            let chunk = capture.next_chunk(7, &state, 2_000).unwrap();
            // Between chunks the Raft thread changes keys before and after the cursor, deletes
            // some and adds new ones.
            let n = 3 * seq as usize;
            write(vec![iv(format!("k{:04}", n)), iv(format!("k{:04}", 499 - n))], &|s| {
                s.insert(format!("k{:04}", n), b"changed".as_slice()).unwrap();
                s.remove(format!("k{:04}", 499 - n)).unwrap();
            });
            write(vec![iv(format!("new{seq}")), iv(format!("k{:04}a", n))], &|s| {
                s.insert(format!("new{seq}"), b"x".as_slice()).unwrap();
                s.insert(format!("k{:04}a", n), b"y".as_slice()).unwrap();
            });
            let last = chunk.is_empty();
            staging.accept(7, seq, last, &chunk).unwrap();
            sent += pairs(&chunk).unwrap().len();
            seq += 1;
            if last {
                break;
            }
        }
        capture.finish(7);
        assert_eq!(sent, 500);
        assert!(seq > 10, "many chunks");
        assert!(staging.complete(7));
        assert!(staging.claim(7));
        assert!(staging.accept(8, 0, false, &[]).is_err(), "a claimed stream is not replaced before it is installed");
        let follower = db.open_tree("follower").unwrap();
        follower.insert(b"stale", b"gone".as_slice()).unwrap();
        staging.install(7, &follower).unwrap();
        staging.release();
        assert_eq!(dump(&follower), at_start, "exactly the state at the start");
        assert!(!follower.contains_key(META_INSTALLING).unwrap());
        assert!(capture.start(9, 50).unwrap(), "finished: a new transfer may start");
        capture.abort();
        assert!(capture.next_chunk(9, &state, 100).is_err(), "an aborted transfer cannot go on");
    }

    #[test]
    fn out_of_order_or_partial_streams_are_never_installed() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let staging = Staging::new(db.open_tree("incoming").unwrap());
        let mut chunk = Vec::new();
        push_part(&mut chunk, b"a");
        push_part(&mut chunk, b"1");
        staging.accept(1, 0, false, &chunk).unwrap();
        assert!(staging.accept(1, 2, true, &chunk).is_err(), "a gap");
        assert!(staging.accept(2, 1, true, &chunk).is_err(), "another stream");
        assert!(!staging.complete(1));
        assert!(!staging.claim(1), "an incomplete stream cannot be claimed");
        let state = db.open_tree("state").unwrap();
        state.insert(b"keep", b"me".as_slice()).unwrap();
        assert!(staging.install(1, &state).is_err());
        assert_eq!(dump(&state).len(), 1, "untouched");
        assert!(staging.accept(1, 1, true, b"\x00\x00\x00\x09abc").is_err(), "a truncated chunk");
        assert!(parse_descriptor(&descriptor(42)) == Some(42) && parse_descriptor(b"KSNAP1xxxxxxxx").is_none());
    }
}
