//! The state machine as one byte string, for Raft snapshots: a lagging or new node receives the
//! whole `state` tree (resources, history, index rows, metadata with the applied index and conf
//! state) and installs it in ONE sled batch, so a crash mid-install leaves the old state intact.
//!
//! Format: `KSNAP1`, then per key/value pair `u32 key length, key, u32 value length, value`
//! (big-endian), in key order.

use super::StoreError;

const MAGIC: &[u8] = b"KSNAP1";

/// Serializes every pair of `tree`. Only the Raft thread writes the tree, and it is the caller,
/// so the result is the state at one applied index.
pub fn dump(tree: &sled::Tree) -> Result<Vec<u8>, StoreError> {
    let mut out = Vec::with_capacity(MAGIC.len() + 64 * tree.len());
    out.extend_from_slice(MAGIC);
    for item in tree.iter() {
        let (k, v) = item?;
        for part in [&k[..], &v[..]] {
            let len = u32::try_from(part.len()).map_err(|_| StoreError::Corrupt("value over 4 GiB in state".into()))?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(part);
        }
    }
    Ok(out)
}

/// Takes one length-prefixed part off the front of `rest`.
fn take<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let part = rest.get(4..4 + len)?;
    *rest = &rest[4 + len..];
    Some(part)
}

/// Decodes a dump into its pairs.
pub fn pairs(data: &[u8]) -> Result<Vec<(&[u8], &[u8])>, StoreError> {
    let bad = || StoreError::Corrupt("snapshot data is truncated or not a Kiln snapshot".into());
    let mut rest = data.strip_prefix(MAGIC).ok_or_else(bad)?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let k = take(&mut rest).ok_or_else(bad)?;
        let v = take(&mut rest).ok_or_else(bad)?;
        out.push((k, v));
    }
    Ok(out)
}

/// Replaces the whole content of `tree` by `data` in one atomic batch.
pub fn install(tree: &sled::Tree, data: &[u8]) -> Result<(), StoreError> {
    let incoming = pairs(data)?;
    let mut batch = sled::Batch::default();
    for key in tree.iter().keys() {
        batch.remove(key?);
    }
    for (k, v) in incoming {
        batch.insert(k, v);
    }
    tree.apply_batch(batch)?;
    Ok(())
}

/// SHA-256 over every key and value of `tree` (with their lengths), plus the pair count. Two
/// nodes at the same applied index must give the same digest; the caller checks the applied
/// index did not move while hashing.
pub fn digest(tree: &sled::Tree) -> Result<(String, u64), StoreError> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut count = 0u64;
    for item in tree.iter() {
        let (k, v) = item?;
        h.update((k.len() as u64).to_be_bytes());
        h.update(&k);
        h.update((v.len() as u64).to_be_bytes());
        h.update(&v);
        count += 1;
    }
    Ok((hex::encode(h.finalize()), count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dump_and_install_replace_everything() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let a = db.open_tree("a").unwrap();
        let b = db.open_tree("b").unwrap();
        a.insert(b"k1", b"v1".as_slice()).unwrap();
        a.insert(b"k2", vec![7u8; 1000]).unwrap();
        b.insert(b"old", b"gone".as_slice()).unwrap();
        install(&b, &dump(&a).unwrap()).unwrap();
        let got: Vec<_> = b.iter().map(|r| r.unwrap()).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(&got[0].0[..], b"k1");
        assert_eq!(got[1].1.len(), 1000);
        assert!(install(&b, b"KSNAP1\0\0\0\x09abc").is_err(), "a truncated dump is refused");
        assert_eq!(b.len(), 2, "and changes nothing");
    }
}
