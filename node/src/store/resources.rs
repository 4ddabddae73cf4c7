//! Reads of the replicated state: current version, vread, and history pages at instance, type and
//! system level. Reads go straight to sled on any thread; they never pass through an actor.

use std::ops::Bound;

use sled::IVec;

use super::action::Action;
use super::keys::{self, HistoryKey};
use super::space::Space;
use super::StoreError;

/// The current pointer of a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Current {
    pub version: u64,
    pub deleted: bool,
    pub ts: u64,
}

impl Current {
    pub fn encode(&self) -> [u8; 17] {
        let mut b = [0u8; 17];
        b[..8].copy_from_slice(&self.version.to_be_bytes());
        b[8] = u8::from(self.deleted);
        b[9..].copy_from_slice(&self.ts.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Current, StoreError> {
        if b.len() != 17 {
            return Err(StoreError::Corrupt(format!("current pointer of {} bytes", b.len())));
        }
        Ok(Current {
            version: u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
            deleted: b[8] != 0,
            ts: u64::from_be_bytes(b[9..].try_into().expect("8 bytes")),
        })
    }
}

/// One stored version: how it was written, when, and its body (empty for a delete).
#[derive(Debug, Clone)]
pub struct VersionRecord {
    pub action: Action,
    pub ts: u64,
    raw: IVec,
}

impl VersionRecord {
    pub fn encode(action: Action, ts: u64, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(9 + body.len());
        v.push(action.code());
        v.extend_from_slice(&ts.to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    pub fn decode(raw: IVec) -> Result<VersionRecord, StoreError> {
        let action = raw.first().copied().and_then(Action::from_code);
        match (action, raw.get(1..9)) {
            (Some(action), Some(ts)) => {
                let ts = u64::from_be_bytes(ts.try_into().expect("8 bytes"));
                Ok(VersionRecord { action, ts, raw })
            }
            _ => Err(StoreError::Corrupt("version record header".into())),
        }
    }

    pub fn is_delete(&self) -> bool {
        self.action == Action::Delete
    }

    /// The resource JSON exactly as stored (meta stamped).
    pub fn body(&self) -> &[u8] {
        &self.raw[9..]
    }
}

/// Which history a page is taken from.
#[derive(Debug, Clone)]
pub enum HistoryScope {
    Instance { rtype: String, id: String },
    Type { rtype: String },
    System,
}

/// Paging direction relative to a cursor (a raw index key).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageDir {
    /// Entries older than the cursor (the "next" page; history is newest first).
    Older,
    /// Entries newer than the cursor (the "previous" page).
    Newer,
}

/// A history request.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    /// `_since`: only versions written at or after this instant (µs).
    pub since: Option<u64>,
    /// `_at`: only versions current at some point in `[low, high)` (µs).
    pub at: Option<(u64, u64)>,
    pub count: usize,
    pub cursor: Option<(Vec<u8>, PageDir)>,
    /// Most history rows one page may read (`_since` / `_at` skip rows); past it: too costly.
    pub max_scan: usize,
}

/// One history entry.
#[derive(Debug, Clone)]
pub struct HistoryEntry {
    pub rtype: String,
    pub id: String,
    pub version: u64,
    pub record: VersionRecord,
}

/// A page of history, newest first, with cursors for the neighbouring pages.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub entries: Vec<HistoryEntry>,
    /// Cursor for the next (older) page, if there is one.
    pub older: Option<Vec<u8>>,
    /// Cursor for the previous (newer) page, if there is one.
    pub newer: Option<Vec<u8>>,
}

/// Read access to one tenant's part of the state tree ([`Space`]).
#[derive(Clone)]
pub struct Store {
    tree: Space,
}

impl Store {
    /// The default tenant's store.
    pub fn new(tree: sled::Tree) -> Store {
        Store { tree: Space::root(tree) }
    }

    /// The same state, tenant `name`'s part (`None`: the default tenant).
    pub fn tenant(&self, name: Option<&str>) -> Store {
        Store { tree: self.tree.with_tenant(name) }
    }

    /// This tenant's space (for the search executor, which reads index rows).
    pub fn tree(&self) -> &Space {
        &self.tree
    }

    /// Digest of the whole replicated state at one applied index: (applied index, sha256, pairs).
    /// Retries while writes move the applied index during hashing.
    /// (applied index, sha256 of the whole state, pairs, data sha256: [`super::snapshot::digests`]).
    pub fn digest(&self) -> Result<(u64, String, u64, String), StoreError> {
        let whole = self.tree.tree();
        let applied = || -> Result<Vec<u8>, StoreError> { Ok(whole.get(keys::META_APPLIED)?.map(|v| v.to_vec()).unwrap_or_default()) };
        loop {
            let before = applied()?;
            let (sha, count, data) = super::snapshot::digests(whole)?;
            if applied()? == before {
                let index = before.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0);
                return Ok((index, sha, count, data));
            }
        }
    }

    pub fn current(&self, rtype: &str, id: &str) -> Result<Option<Current>, StoreError> {
        self.tree.get(keys::current(rtype, id))?.map(|b| Current::decode(&b)).transpose()
    }

    /// The current version of a live resource: NotFound / Gone otherwise.
    pub fn read(&self, rtype: &str, id: &str) -> Result<(Current, VersionRecord), StoreError> {
        let not_found = || StoreError::NotFound { rtype: rtype.into(), id: id.into() };
        let cur = self.current(rtype, id)?.ok_or_else(not_found)?;
        if cur.deleted {
            return Err(StoreError::Gone { rtype: rtype.into(), id: id.into(), version: cur.version });
        }
        Ok((cur, self.version_record(rtype, id, cur.version)?))
    }

    /// A specific version; Gone if that version is a deletion.
    pub fn vread(&self, rtype: &str, id: &str, version: u64) -> Result<VersionRecord, StoreError> {
        let rec = self.version_record(rtype, id, version)?;
        if rec.is_delete() {
            return Err(StoreError::Gone { rtype: rtype.into(), id: id.into(), version });
        }
        Ok(rec)
    }

    fn version_record(&self, rtype: &str, id: &str, version: u64) -> Result<VersionRecord, StoreError> {
        let raw = self
            .tree
            .get(keys::version(rtype, id, version))?
            .ok_or_else(|| StoreError::VersionNotFound { rtype: rtype.into(), id: id.into(), version })?;
        VersionRecord::decode(raw)
    }

    /// One page of history, newest first.
    pub fn history(&self, scope: &HistoryScope, q: &HistoryQuery) -> Result<HistoryPage, StoreError> {
        self.history_visible(scope, q, &|_| Ok(true))
    }

    /// One page of the history entries `visible` keeps: the others are skipped in the scan (they
    /// count toward `max_scan`), so they neither fill the page nor become its cursors.
    pub fn history_visible(&self, scope: &HistoryScope, q: &HistoryQuery, visible: &dyn Fn(&HistoryEntry) -> Result<bool, StoreError>) -> Result<HistoryPage, StoreError> {
        if let HistoryScope::Instance { rtype, id } = scope {
            if self.current(rtype, id)?.is_none() {
                return Err(StoreError::NotFound { rtype: rtype.clone(), id: id.clone() });
            }
        }
        let (prefix, ts_in_key) = match scope {
            HistoryScope::Instance { rtype, id } => (keys::versions_of(rtype, id), false),
            HistoryScope::Type { rtype } => (keys::type_history_prefix(rtype), true),
            HistoryScope::System => (vec![keys::SYS_HISTORY], true),
        };
        // `_since` bounds the scan itself where keys start with the time.
        let mut low = prefix.clone();
        if ts_in_key {
            if let Some(since) = q.since {
                low.extend_from_slice(&since.to_be_bytes());
            }
        }
        // `_at` likewise bounds it from above: no version written at or after its end matters.
        let high = match (ts_in_key, q.at) {
            (true, Some((_, hi))) => {
                let mut h = prefix.clone();
                h.extend_from_slice(&hi.to_be_bytes());
                h
            }
            _ => keys::prefix_end(&prefix),
        };
        if let Some((c, _)) = &q.cursor {
            if !c.starts_with(&prefix) {
                return Err(StoreError::InvalidCursor);
            }
        }
        let (lo, hi) = match &q.cursor {
            None => (Bound::Included(low.clone()), Bound::Excluded(high.clone())),
            Some((c, PageDir::Older)) => (Bound::Included(low.clone()), Bound::Excluded(c.clone())),
            Some((c, PageDir::Newer)) => (Bound::Excluded(c.clone()), Bound::Excluded(high.clone())),
        };
        let newest_first = !matches!(q.cursor, Some((_, PageDir::Newer)));
        let range = self.tree.range::<Vec<u8>, _>((lo, hi));
        #[allow(clippy::type_complexity)]
        let iter: Box<dyn Iterator<Item = sled::Result<(IVec, IVec)>>> =
            if newest_first { Box::new(range.rev()) } else { Box::new(range) };

        let mut picked: Vec<(Vec<u8>, HistoryEntry)> = Vec::new();
        let mut more = false;
        for (scanned, item) in iter.enumerate() {
            if scanned == q.max_scan {
                return Err(StoreError::TooCostly(format!(
                    "this page would read more than {} history rows (limits.max_history_scan) to find {} entries; narrow it with _since, _at closer to now, or a type or instance history",
                    q.max_scan, q.count
                )));
            }
            // Rows the caller may not see count too: a scoped caller pays for the scan.
            crate::budget::charge(1).map_err(|e| StoreError::TooCostly(e.to_string()))?;
            let (k, v) = item?;
            let entry = self.entry_for(scope, &k, v)?;
            if !self.matches(&entry, q)? || !visible(&entry)? {
                continue;
            }
            if picked.len() == q.count {
                more = true;
                break;
            }
            picked.push((k.to_vec(), entry));
        }
        if !newest_first {
            picked.reverse();
        }
        let first_key = picked.first().map(|(k, _)| k.clone());
        let last_key = picked.last().map(|(k, _)| k.clone());
        let (older, newer) = match (&q.cursor, newest_first) {
            (None, _) => (if more { last_key } else { None }, None),
            (Some(_), true) => (if more { last_key } else { None }, first_key.or_else(|| q.cursor.as_ref().map(|c| c.0.clone()))),
            (Some(_), false) => (last_key.or_else(|| q.cursor.as_ref().map(|c| c.0.clone())), if more { first_key } else { None }),
        };
        Ok(HistoryPage { entries: picked.into_iter().map(|(_, e)| e).collect(), older, newer })
    }

    fn entry_for(&self, scope: &HistoryScope, k: &[u8], v: IVec) -> Result<HistoryEntry, StoreError> {
        let bad = || StoreError::Corrupt("history key".into());
        match scope {
            HistoryScope::Instance { .. } => {
                let (rtype, id, version) = keys::decode_version(k).ok_or_else(bad)?;
                Ok(HistoryEntry { rtype, id, version, record: VersionRecord::decode(v)? })
            }
            HistoryScope::Type { .. } | HistoryScope::System => {
                let HistoryKey { rtype, id, version, .. } = if matches!(scope, HistoryScope::System) {
                    keys::decode_sys_history(k)
                } else {
                    keys::decode_type_history(k)
                }
                .ok_or_else(bad)?;
                let record = self.version_record(&rtype, &id, version)?;
                Ok(HistoryEntry { rtype, id, version, record })
            }
        }
    }

    fn matches(&self, e: &HistoryEntry, q: &HistoryQuery) -> Result<bool, StoreError> {
        if q.since.is_some_and(|s| e.record.ts < s) {
            return Ok(false);
        }
        if let Some((lo, hi)) = q.at {
            if e.record.ts >= hi {
                return Ok(false);
            }
            // Current until the next version was written.
            match self.tree.get(keys::version(&e.rtype, &e.id, e.version + 1))? {
                Some(next) => {
                    if VersionRecord::decode(next)?.ts <= lo {
                        return Ok(false);
                    }
                }
                None => {}
            }
        }
        Ok(true)
    }
}
