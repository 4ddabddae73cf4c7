//! [`Space`]: one tenant's keys in the `state` tree. The default tenant's keys are the plain keys
//! of [`super::keys`] and the search index (data written before tenancy was enabled is the
//! default tenant's, with nothing to migrate); tenant `t`'s keys are the same keys behind the
//! prefix `0xFE` `t` `0x00`. Every read of resources and of the index goes through a `Space`, and
//! every write of the state machine through a [`super::writes::Writes`] of one, so two tenants
//! share nothing: not ids, versions, history, doc numbers, index rows nor conditional matches.
//! Keys come back from scans without the prefix, so the code above is the same for all tenants.
//! Snapshots and digests read the whole tree (every tenant).

use std::ops::{Bound, RangeBounds};

use sled::IVec;

/// First byte of every tenant's keys (no plain key starts with it: they start with a letter).
pub const TENANT_TAG: u8 = 0xFE;

/// The key prefix of tenant `name` (empty for the default tenant).
pub fn prefix_of(name: Option<&str>) -> Vec<u8> {
    match name {
        None => Vec::new(),
        Some(n) => {
            let mut p = Vec::with_capacity(n.len() + 2);
            p.push(TENANT_TAG);
            p.extend_from_slice(n.as_bytes());
            p.push(0);
            p
        }
    }
}

/// A tenant's view of the `state` tree.
#[derive(Clone)]
pub struct Space {
    tree: sled::Tree,
    prefix: IVec,
}

impl std::fmt::Debug for Space {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Space({})", String::from_utf8_lossy(&self.prefix))
    }
}

type Item = sled::Result<(IVec, IVec)>;

impl Space {
    /// The default tenant's space.
    pub fn root(tree: sled::Tree) -> Space {
        Space { tree, prefix: IVec::default() }
    }

    /// Tenant `name`'s space (`None`: the default tenant).
    pub fn of(tree: sled::Tree, name: Option<&str>) -> Space {
        Space { tree, prefix: IVec::from(prefix_of(name)) }
    }

    /// The same tree, another tenant.
    pub fn with_tenant(&self, name: Option<&str>) -> Space {
        Space::of(self.tree.clone(), name)
    }

    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The whole tree (snapshots, digests, metadata).
    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// The stored key of `key`.
    pub fn key(&self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + key.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(key);
        k
    }

    fn strip(&self, item: Item) -> Item {
        let n = self.prefix.len();
        item.map(|(k, v)| if n == 0 { (k, v) } else { (k.subslice(n, k.len() - n), v) })
    }

    pub fn get<K: AsRef<[u8]>>(&self, key: K) -> sled::Result<Option<IVec>> {
        if self.prefix.is_empty() {
            self.tree.get(key)
        } else {
            self.tree.get(self.key(key.as_ref()))
        }
    }

    pub fn contains_key<K: AsRef<[u8]>>(&self, key: K) -> sled::Result<bool> {
        self.get(key).map(|v| v.is_some())
    }

    /// Entries whose key starts with `prefix` (keys without the tenant prefix).
    pub fn scan_prefix<P: AsRef<[u8]>>(&self, prefix: P) -> impl DoubleEndedIterator<Item = Item> + '_ {
        self.tree.scan_prefix(self.key(prefix.as_ref())).map(move |i| self.strip(i))
    }

    /// Entries in a key range (keys without the tenant prefix). An open end stays within this
    /// tenant's keys.
    pub fn range<K: AsRef<[u8]>, R: RangeBounds<K>>(&self, range: R) -> impl DoubleEndedIterator<Item = Item> + '_ {
        let start = match range.start_bound() {
            Bound::Included(k) => Bound::Included(self.key(k.as_ref())),
            Bound::Excluded(k) => Bound::Excluded(self.key(k.as_ref())),
            Bound::Unbounded => Bound::Included(self.prefix.to_vec()),
        };
        let end = match range.end_bound() {
            Bound::Included(k) => Bound::Included(self.key(k.as_ref())),
            Bound::Excluded(k) => Bound::Excluded(self.key(k.as_ref())),
            Bound::Unbounded if self.prefix.is_empty() => Bound::Excluded(vec![TENANT_TAG]),
            Bound::Unbounded => Bound::Excluded(super::keys::prefix_end(&self.prefix)),
        };
        self.tree.range::<Vec<u8>, _>((start, end)).map(move |i| self.strip(i))
    }
}

/// Direct writes for tests (the state machine writes through [`super::writes::Writes`]).
#[cfg(test)]
impl Space {
    pub fn insert<K: AsRef<[u8]>, V: Into<IVec>>(&self, key: K, value: V) -> sled::Result<Option<IVec>> {
        self.tree.insert(self.key(key.as_ref()), value)
    }

    pub fn remove<K: AsRef<[u8]>>(&self, key: K) -> sled::Result<Option<IVec>> {
        self.tree.remove(self.key(key.as_ref()))
    }

    pub fn apply_batch(&self, batch: sled::Batch) -> sled::Result<()> {
        self.tree.apply_batch(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenants_see_only_their_keys() {
        let dir = tempfile::tempdir().unwrap();
        let tree = sled::open(dir.path()).unwrap().open_tree("state").unwrap();
        let (root, a, b) = (Space::root(tree.clone()), Space::of(tree.clone(), Some("a")), Space::of(tree.clone(), Some("b")));
        for (s, v) in [(&root, "root"), (&a, "a"), (&b, "b")] {
            tree.insert(s.key(b"cPatient\0x"), v).unwrap();
            tree.insert(s.key(b"z"), v).unwrap();
        }
        assert_eq!(a.get(b"cPatient\0x").unwrap().unwrap(), b"a");
        assert_eq!(root.get(b"cPatient\0x").unwrap().unwrap(), b"root");
        let keys = |it: Vec<Item>| it.into_iter().map(|i| i.unwrap()).map(|(k, v)| (k.to_vec(), v.to_vec())).collect::<Vec<_>>();
        assert_eq!(keys(b.scan_prefix(b"c").collect()), [(b"cPatient\0x".to_vec(), b"b".to_vec())]);
        assert_eq!(keys(root.range::<&[u8], _>(..).collect()).len(), 2, "the default tenant's open range stops before the tenants");
        assert_eq!(keys(a.range::<&[u8], _>(&b"a"[..]..).collect()).len(), 2);
        assert_eq!(keys(a.range::<&[u8], _>(..).rev().collect())[0].0, b"z");
    }
}
