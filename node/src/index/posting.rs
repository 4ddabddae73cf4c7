//! Posting lists: the compact sorted id sets of the search index, and the doc numbers they hold.
//!
//! Every resource gets a doc number (a per-type `u32`, assigned at its first write by the state
//! machine in log order, so every node assigns the same ones; a deleted and re-created resource
//! keeps its number). An index row (`x` type `\0` code `\0` kind parts…, see [`super::rows`]) is
//! split into blocks of 4,096 doc numbers: the key is the row followed by the block number
//! (`u32` big-endian), the value the doc numbers of the block that have the value:
//!
//! | value | meaning |
//! |---|---|
//! | `0` then `u16` offsets, big-endian, ascending | up to 256 doc numbers |
//! | `1` then 512 bytes | a bitset of the block (more than 256) |
//!
//! So one LOINC code on 10^5 Observations is 25 keys of at most 513 bytes instead of 10^5 keys,
//! a count is a sum of popcounts, and AND / OR / NOT are operations on [`RoaringBitmap`]s.
//! A write changes a block by read-modify-write; changes of one sled batch are gathered in
//! [`Changes`] so a block is rewritten once per batch however many of its resources changed.
//!
//! Doc number keys (in the `state` tree): `n` type `\0` id → `u32`; `N` type `\0` `u32` → id;
//! `mdocs\0` type → the next unassigned number.

use crate::store::space::Space;
use crate::store::writes::Writes;
use crate::store::StoreError;
use std::collections::{BTreeMap, HashMap};

use roaring::RoaringBitmap;

/// Doc numbers per block.
pub const BLOCK_BITS: u32 = 12;
const BLOCK_SIZE: u32 = 1 << BLOCK_BITS;
const WORDS: usize = (BLOCK_SIZE / 64) as usize;
const ARRAY: u8 = 0;
const BITSET: u8 = 1;
/// Above this many entries a block is stored as a bitset (an array would be larger).
const ARRAY_MAX: usize = (BLOCK_SIZE / 16) as usize;

pub const DOCNUM: u8 = b'n';
pub const DOC_ID: u8 = b'N';
pub const COUNTER: &[u8] = b"mdocs\0";

/// Why a posting list cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum PostingError {
    #[error("storage failure: {0}")]
    Storage(#[from] sled::Error),
    #[error(transparent)]
    TooCostly(#[from] super::cost::Exhausted),
    #[error("corrupt posting data under key {0}")]
    Corrupt(String),
}

fn corrupt(key: &[u8]) -> PostingError {
    PostingError::Corrupt(String::from_utf8_lossy(key).into_owned())
}

/// `n` type `\0` id: the resource's doc number.
pub fn docnum_key(rtype: &str, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(rtype.len() + id.len() + 2);
    k.push(DOCNUM);
    k.extend_from_slice(rtype.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

/// `N` type `\0` doc: the id of a doc number.
pub fn doc_id_key(rtype: &str, doc: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(rtype.len() + 6);
    k.push(DOC_ID);
    k.extend_from_slice(rtype.as_bytes());
    k.push(0);
    k.extend_from_slice(&doc.to_be_bytes());
    k
}

/// `mdocs\0` type: the next doc number of the type.
pub fn counter_key(rtype: &str) -> Vec<u8> {
    let mut k = COUNTER.to_vec();
    k.extend_from_slice(rtype.as_bytes());
    k
}

fn u32_value(key: &[u8], v: &[u8]) -> Result<u32, PostingError> {
    Ok(u32::from_be_bytes(v.try_into().map_err(|_| corrupt(key))?))
}

/// The doc number of `rtype/id`, if it was ever written.
pub fn docnum(tree: &Space, rtype: &str, id: &str) -> Result<Option<u32>, PostingError> {
    super::cost::charge(1)?;
    let k = docnum_key(rtype, id);
    tree.get(&k)?.map(|v| u32_value(&k, &v)).transpose()
}

/// The id of a doc number.
pub fn doc_id(tree: &Space, rtype: &str, doc: u32) -> Result<Option<String>, PostingError> {
    super::cost::charge(1)?;
    let k = doc_id_key(rtype, doc);
    tree.get(&k)?.map(|v| String::from_utf8(v.to_vec()).map_err(|_| corrupt(&k))).transpose()
}

/// The block key of doc number `doc` in `row`.
pub fn block_key(row: &[u8], doc: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(row.len() + 4);
    k.extend_from_slice(row);
    k.extend_from_slice(&(doc >> BLOCK_BITS).to_be_bytes());
    k
}

/// The row part of a block key (without the block number).
pub fn row_of(key: &[u8]) -> &[u8] {
    &key[..key.len().saturating_sub(4)]
}

/// Adds the doc numbers of one stored block (`key` ends in its block number) to `out`.
pub fn add_block(key: &[u8], value: &[u8], out: &mut RoaringBitmap) -> Result<(), PostingError> {
    let block = key.len().checked_sub(4).map(|at| u32::from_be_bytes(key[at..].try_into().expect("4 bytes"))).ok_or_else(|| corrupt(key))?;
    let base = block << BLOCK_BITS;
    match value.split_first() {
        Some((&ARRAY, rest)) if rest.len() % 2 == 0 => {
            out.extend(rest.chunks_exact(2).map(|c| base | u32::from(u16::from_be_bytes([c[0], c[1]]))));
            Ok(())
        }
        Some((&BITSET, _)) => {
            // (Bit by bit: `from_lsb0_bytes` would store a full block as a bitmap container of
            // 4,096, which roaring then serializes as an array: a `_typeFilter` bitmap kept in
            // an export job would not read back.)
            for (w, mut word) in bits_of(key, value)?.into_iter().enumerate() {
                while word != 0 {
                    let bit = word.trailing_zeros();
                    out.insert(base | (w as u32 * 64 + bit));
                    word &= word - 1;
                }
            }
            Ok(())
        }
        _ => Err(corrupt(key)),
    }
}

/// A block's doc offsets as a bitset, decoded directly (on the write path: every write reads
/// and re-encodes the blocks it changes).
fn bits_of(key: &[u8], value: &[u8]) -> Result<[u64; WORDS], PostingError> {
    let mut bits = [0u64; WORDS];
    match value.split_first() {
        Some((&ARRAY, rest)) if rest.len() % 2 == 0 => {
            for c in rest.chunks_exact(2) {
                let off = usize::from(u16::from_be_bytes([c[0], c[1]])) & (BLOCK_SIZE as usize - 1);
                bits[off / 64] |= 1 << (off % 64);
            }
        }
        Some((&BITSET, rest)) if rest.len() == WORDS * 8 => {
            for (w, chunk) in rest.chunks_exact(8).enumerate() {
                bits[w] = u64::from_be_bytes(chunk.try_into().expect("8 bytes"));
            }
        }
        _ => return Err(corrupt(key)),
    }
    Ok(bits)
}

/// The stored form of a block (`None` when it is empty).
fn encode(bits: &[u64; WORDS]) -> Option<Vec<u8>> {
    let count: usize = bits.iter().map(|w| w.count_ones() as usize).sum();
    if count == 0 {
        return None;
    }
    if count <= ARRAY_MAX {
        let mut out = Vec::with_capacity(1 + 2 * count);
        out.push(ARRAY);
        for (w, &word) in bits.iter().enumerate() {
            let mut word = word;
            while word != 0 {
                let off = w as u16 * 64 + word.trailing_zeros() as u16;
                out.extend_from_slice(&off.to_be_bytes());
                word &= word - 1;
            }
        }
        Some(out)
    } else {
        let mut out = Vec::with_capacity(1 + WORDS * 8);
        out.push(BITSET);
        for word in bits {
            out.extend_from_slice(&word.to_be_bytes());
        }
        Some(out)
    }
}

/// Posting changes of one sled batch, and the doc numbers it assigned.
#[derive(Default)]
pub struct Changes {
    /// Block key → offset → present. Later changes of a doc win.
    blocks: BTreeMap<Vec<u8>, BTreeMap<u16, bool>>,
    docnums: HashMap<Vec<u8>, u32>,
    counters: HashMap<String, u32>,
}

impl Changes {
    pub fn add(&mut self, row: &[u8], doc: u32) {
        self.set(row, doc, true);
    }

    pub fn remove(&mut self, row: &[u8], doc: u32) {
        self.set(row, doc, false);
    }

    fn set(&mut self, row: &[u8], doc: u32, present: bool) {
        self.blocks.entry(block_key(row, doc)).or_default().insert((doc & (BLOCK_SIZE - 1)) as u16, present);
    }

    /// The doc number of `rtype/id`, assigning the type's next one (in this batch) when it has none.
    pub fn docnum(&mut self, tree: &Space, batch: &mut Writes, rtype: &str, id: &str) -> Result<u32, PostingError> {
        let key = docnum_key(rtype, id);
        if let Some(d) = self.docnums.get(&key) {
            return Ok(*d);
        }
        if let Some(v) = tree.get(&key)? {
            let d = u32_value(&key, &v)?;
            self.docnums.insert(key, d);
            return Ok(d);
        }
        let next = match self.counters.get(rtype) {
            Some(n) => *n,
            None => match tree.get(counter_key(rtype))? {
                Some(v) => u32_value(&counter_key(rtype), &v)?,
                None => 0,
            },
        };
        let after = next.checked_add(1).ok_or_else(|| PostingError::Corrupt(format!("{rtype}: more than 2^32 resources")))?;
        self.counters.insert(rtype.to_string(), after);
        batch.insert(counter_key(rtype), &after.to_be_bytes());
        batch.insert(key.as_slice(), &next.to_be_bytes());
        batch.insert(doc_id_key(rtype, next), id.as_bytes());
        self.docnums.insert(key, next);
        Ok(next)
    }

    /// Writes every changed block into `batch` (read from `tree`, changed, re-encoded; removed
    /// when empty).
    pub fn flush(self, tree: &Space, batch: &mut Writes) -> Result<(), PostingError> {
        for (key, changes) in self.blocks {
            let mut bits = match tree.get(&key)? {
                Some(v) => bits_of(&key, &v)?,
                None => [0u64; WORDS],
            };
            for (off, present) in changes {
                let (w, b) = (off as usize / 64, off % 64);
                if present {
                    bits[w] |= 1 << b;
                } else {
                    bits[w] &= !(1 << b);
                }
            }
            match encode(&bits) {
                Some(v) => batch.insert(key, v),
                None => batch.remove(key),
            }
        }
        Ok(())
    }
}

/// Every doc number under a key prefix (all blocks of all rows starting with `prefix`).
pub fn scan(tree: &Space, prefix: &[u8], out: &mut RoaringBitmap) -> Result<(), PostingError> {
    for item in tree.scan_prefix(prefix) {
        super::cost::charge(1)?;
        let (k, v) = item?;
        add_block(&k, &v, out)?;
    }
    Ok(())
}

/// The rows under `prefix` whose next 8 bytes lie in `[from, to)` (`None`: unbounded), kept when
/// their parts after `prefix` satisfy `keep`.
pub fn scan_range(tree: &Space, prefix: &[u8], from: Option<[u8; 8]>, to: Option<[u8; 8]>, keep: impl Fn(&[u8]) -> bool, out: &mut RoaringBitmap) -> Result<(), PostingError> {
    let bound = |b: [u8; 8]| {
        let mut k = prefix.to_vec();
        k.extend_from_slice(&b);
        k
    };
    let start = from.map(bound).unwrap_or_else(|| prefix.to_vec());
    let end = match to {
        Some(b) => bound(b),
        None => crate::store::keys::prefix_end(prefix),
    };
    if start >= end {
        return Ok(());
    }
    for item in tree.range(start..end) {
        super::cost::charge(1)?;
        let (k, v) = item?;
        if keep(&row_of(&k)[prefix.len()..]) {
            add_block(&k, &v, out)?;
        }
    }
    Ok(())
}

/// [`scan`], keeping only rows whose parts after `prefix` satisfy `keep`.
pub fn scan_filter(tree: &Space, prefix: &[u8], keep: impl Fn(&[u8]) -> bool, out: &mut RoaringBitmap) -> Result<(), PostingError> {
    for item in tree.scan_prefix(prefix) {
        super::cost::charge(1)?;
        let (k, v) = item?;
        if keep(&row_of(&k)[prefix.len()..]) {
            add_block(&k, &v, out)?;
        }
    }
    Ok(())
}

/// A posting read's failure as a store error (the state machine and readers of the store).
impl From<PostingError> for StoreError {
    fn from(e: PostingError) -> Self {
        match e {
            PostingError::Storage(e) => e.into(),
            PostingError::Corrupt(what) => StoreError::Corrupt(what),
            // A client request's budget ran out (or its client left).
            PostingError::TooCostly(e @ super::cost::Exhausted::Request(_)) => StoreError::TooCostly(e.to_string()),
            // Only searches run under a condition's budget (search::cost), and they map it to TooCostly first.
            PostingError::TooCostly(e) => StoreError::BadCondition(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitmap_of(key: &[u8], v: &[u8]) -> Vec<u32> {
        let mut b = RoaringBitmap::new();
        add_block(key, v, &mut b).unwrap();
        b.into_iter().collect()
    }

    #[test]
    fn dense_blocks_decode_word_by_word_to_the_same_documents() {
        // Block 5 holding every third offset, and block 6 full: bitsets, read into a bitmap
        // that already holds other documents (kept), and decoded for a write alike.
        let key = |b: u32| block_key(b"row\0", b << BLOCK_BITS);
        let mut thirds = [0u64; WORDS];
        (0..BLOCK_SIZE as usize).step_by(3).for_each(|o| thirds[o / 64] |= 1 << (o % 64));
        let full = [u64::MAX; WORDS];
        let mut out = RoaringBitmap::from_iter([7u32, 1 << 30]);
        for (b, bits) in [(5u32, &thirds), (6, &full)] {
            let stored = encode(bits).unwrap();
            assert_eq!(stored[0], BITSET);
            assert_eq!(&bits_of(&key(b), &stored).unwrap(), bits);
            add_block(&key(b), &stored, &mut out).unwrap();
        }
        let want: Vec<u32> = [7u32]
            .into_iter()
            .chain((0..BLOCK_SIZE).step_by(3).map(|o| (5 << BLOCK_BITS) + o))
            .chain((0..BLOCK_SIZE).map(|o| (6 << BLOCK_BITS) + o))
            .chain([1 << 30])
            .collect();
        assert_eq!(out.iter().collect::<Vec<_>>(), want);
        assert!(bits_of(&key(5), &[BITSET, 1, 2]).is_err(), "a short bitset is corrupt");
    }

    #[test]
    fn blocks_switch_between_array_and_bitset_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let tree = Space::root(sled::open(dir.path()).unwrap().open_tree("t").unwrap());
        let row = b"xrow\0".to_vec();
        // 300 docs in block 1 (a bitset), 3 in block 0 (an array), then remove down to 200.
        let mut ch = Changes::default();
        let docs: Vec<u32> = (0..300).map(|i| 4096 + i * 7).chain([1, 2, 4095]).collect();
        for d in &docs {
            ch.add(&row, *d);
        }
        let mut batch = Writes::default();
        ch.flush(&tree, &mut batch).unwrap();
        tree.apply_batch(batch.into_batch()).unwrap();
        let b0 = tree.get(block_key(&row, 0)).unwrap().unwrap();
        let b1 = tree.get(block_key(&row, 4096)).unwrap().unwrap();
        assert_eq!((b0[0], b0.len()), (ARRAY, 7));
        assert_eq!((b1[0], b1.len()), (BITSET, 513));
        let mut all = RoaringBitmap::new();
        scan(&tree, &row, &mut all).unwrap();
        let mut want = docs.clone();
        want.sort();
        assert_eq!(all.iter().collect::<Vec<_>>(), want);
        // Removing 100 of block 1 turns it back into an array; removing block 0's docs drops the key.
        let mut ch = Changes::default();
        for d in docs.iter().take(100).chain(&[1, 2, 4095]) {
            ch.remove(&row, *d);
        }
        ch.add(&row, 4096 + 3); // added and removed in one batch: the later change wins
        ch.remove(&row, 4096 + 3);
        let mut batch = Writes::default();
        ch.flush(&tree, &mut batch).unwrap();
        tree.apply_batch(batch.into_batch()).unwrap();
        assert!(tree.get(block_key(&row, 0)).unwrap().is_none());
        let b1 = tree.get(block_key(&row, 4096)).unwrap().unwrap();
        assert_eq!((b1[0], b1.len()), (ARRAY, 401));
        assert_eq!(bitmap_of(&block_key(&row, 4096), &b1), docs[100..300].to_vec());
        assert!(add_block(b"k\0\0\0\0", &[ARRAY, 1], &mut RoaringBitmap::new()).is_err(), "odd array length is corrupt");
    }

    #[test]
    fn doc_numbers_are_assigned_once_per_resource_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let tree = Space::root(sled::open(dir.path()).unwrap().open_tree("t").unwrap());
        let mut ch = Changes::default();
        let mut batch = Writes::default();
        assert_eq!(ch.docnum(&tree, &mut batch, "Patient", "a").unwrap(), 0);
        assert_eq!(ch.docnum(&tree, &mut batch, "Patient", "b").unwrap(), 1);
        assert_eq!(ch.docnum(&tree, &mut batch, "Patient", "a").unwrap(), 0);
        assert_eq!(ch.docnum(&tree, &mut batch, "Observation", "a").unwrap(), 0);
        tree.apply_batch(batch.into_batch()).unwrap();
        let mut ch = Changes::default();
        let mut batch = Writes::default();
        assert_eq!(ch.docnum(&tree, &mut batch, "Patient", "c").unwrap(), 2);
        assert_eq!(ch.docnum(&tree, &mut batch, "Patient", "b").unwrap(), 1);
        tree.apply_batch(batch.into_batch()).unwrap();
        assert_eq!(doc_id(&tree, "Patient", 2).unwrap().as_deref(), Some("c"));
        assert_eq!(docnum(&tree, "Observation", "a").unwrap(), Some(0));
        assert_eq!(docnum(&tree, "Observation", "zz").unwrap(), None);
    }
}
