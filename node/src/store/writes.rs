//! [`Writes`]: a sled batch for the `state` tree that remembers which keys it touches, so that a
//! snapshot being streamed can keep the values those keys had at its index
//! ([`super::snapshot::Capture`]). Every write to the state tree goes through one. A `Writes`
//! belongs to one tenant's [`super::space::Space`]: its keys get that tenant's prefix, except
//! the state machine's own metadata ([`Writes::insert_meta`]).

use sled::IVec;

/// A batch of inserts and removals, with its keys.
#[derive(Default)]
pub struct Writes {
    batch: sled::Batch,
    keys: Vec<IVec>,
    prefix: Vec<u8>,
}

impl Writes {
    /// Writes into the space whose key prefix is `prefix`.
    pub fn in_space(prefix: &[u8]) -> Writes {
        Writes { prefix: prefix.to_vec(), ..Writes::default() }
    }

    fn full(&self, key: IVec) -> IVec {
        if self.prefix.is_empty() {
            key
        } else {
            let mut k = self.prefix.clone();
            k.extend_from_slice(&key);
            IVec::from(k)
        }
    }

    pub fn insert<K: Into<IVec>, V: Into<IVec>>(&mut self, key: K, value: V) {
        let key = self.full(key.into());
        self.keys.push(key.clone());
        self.batch.insert(key, value);
    }

    pub fn remove<K: Into<IVec>>(&mut self, key: K) {
        let key = self.full(key.into());
        self.keys.push(key.clone());
        self.batch.remove(key);
    }

    /// Removes a key of the whole state (membership), never a tenant's.
    pub fn remove_meta<K: Into<IVec>>(&mut self, key: K) {
        let key = key.into();
        self.keys.push(key.clone());
        self.batch.remove(key);
    }

    /// A key of the whole state (applied index, clock, membership), never a tenant's.
    pub fn insert_meta<K: Into<IVec>, V: Into<IVec>>(&mut self, key: K, value: V) {
        let key = key.into();
        self.keys.push(key.clone());
        self.batch.insert(key, value);
    }

    /// Every key written (a key written twice appears twice).
    pub fn keys(&self) -> &[IVec] {
        &self.keys
    }

    pub fn into_batch(self) -> sled::Batch {
        self.batch
    }
}
