//! [`Writes`]: a sled batch for the `state` tree that remembers which keys it touches, so that a
//! snapshot being streamed can keep the values those keys had at its index
//! ([`super::snapshot::Capture`]). Every write to the state tree goes through one.

use sled::IVec;

/// A batch of inserts and removals, with its keys.
#[derive(Default)]
pub struct Writes {
    batch: sled::Batch,
    keys: Vec<IVec>,
}

impl Writes {
    pub fn insert<K: Into<IVec>, V: Into<IVec>>(&mut self, key: K, value: V) {
        let key = key.into();
        self.keys.push(key.clone());
        self.batch.insert(key, value);
    }

    pub fn remove<K: Into<IVec>>(&mut self, key: K) {
        let key = key.into();
        self.keys.push(key.clone());
        self.batch.remove(key);
    }

    /// Every key written (a key written twice appears twice).
    pub fn keys(&self) -> &[IVec] {
        &self.keys
    }

    pub fn into_batch(self) -> sled::Batch {
        self.batch
    }
}
