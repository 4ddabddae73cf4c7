//! Applying one resource write: staging it (version, current pointer, history row) over the entry's
//! overlay, its index rows replacing the old ones, and committing the staged batch with the applied
//! index.

use super::state_machine::{u64_pair, Staged, StateMachine};
use std::collections::HashMap;
use std::sync::Arc;
use serde_json::Value;
use super::command::{Action, Applied, OpOutcome, WriteOp};
use crate::store::keys;
use crate::store::writes::Writes;
use crate::store::resources::{Current, VersionRecord};
use crate::store::StoreError;
use crate::fhir::meta;
use crate::search::{index, posting};

impl StateMachine {
    /// Starts a batch of writes whose timestamps follow `ts_micros` and the last applied one.
    pub(super) fn stage(&self, ts_micros: u64) -> Staged {
        Staged {
            batch: Writes::in_space(self.space.prefix()),
            overlay: HashMap::new(),
            index_overlay: HashMap::new(),
            postings: posting::Changes::default(),
            ts: ts_micros.max(self.last_ts + 1),
            last_ts: self.last_ts,
        }
    }

    /// Adds one write to `staged`. The outer `Err` is a storage failure (fatal: the node must
    /// stop, never a per-write result that would let its state differ from the others');
    /// the inner result is the write's own outcome (a failed write stages nothing).
    pub(super) fn stage_op(&self, staged: &mut Staged, op: &WriteOp) -> Result<OpOutcome, StoreError> {
        let cur = self.current(&keys::current(&op.rtype, &op.id), &staged.overlay)?;
        let mut rows = None;
        let out = self.apply_write(op, cur, staged.ts, &mut staged.batch, &mut staged.overlay, &mut rows);
        if let Some(rows) = rows {
            self.replace_index_rows(&op.rtype, &op.id, rows, staged)?;
        }
        if matches!(&out, Ok(a) if !a.noop) {
            staged.last_ts = staged.ts;
            staged.ts += 1;
        }
        Ok(out)
    }

    /// Writes a staged batch with the applied index and the clock.
    pub(super) fn commit(&mut self, mut staged: Staged, index: u64, term: u64) -> Result<(), StoreError> {
        self.last_ts = staged.last_ts;
        staged.batch.insert_meta(keys::META_LAST_TS, &u64_pair(self.last_ts, 0));
        staged.batch.insert_meta(keys::META_APPLIED, &u64_pair(index, term));
        self.write_index(staged)
    }

    /// Writes a staged batch with its posting block changes (alone: the index rebuild).
    pub(super) fn write_index(&self, mut staged: Staged) -> Result<(), StoreError> {
        std::mem::take(&mut staged.postings).flush(&self.space, &mut staged.batch)?;
        self.write(staged.batch)
    }

    /// Writes a batch to the state tree: the one place the state changes, so that a snapshot
    /// being streamed first keeps the values it still has to send ([`Capture`]).
    pub(super) fn write(&self, w: Writes) -> Result<(), StoreError> {
        self.capture.before_write(&self.tree, w.keys())?;
        self.tree.apply_batch(w.into_batch())?;
        Ok(())
    }

    pub(super) fn current(&self, key: &[u8], overlay: &HashMap<Vec<u8>, Current>) -> Result<Option<Current>, StoreError> {
        if let Some(c) = overlay.get(key) {
            return Ok(Some(*c));
        }
        self.space.get(key)?.map(|b| Current::decode(&b)).transpose()
    }

    /// Swaps a resource's index rows for `rows` (empty after a delete): its doc number leaves
    /// the posting lists of rows it no longer has and joins the new ones.
    pub(super) fn replace_index_rows(&self, rtype: &str, id: &str, rows: Vec<Vec<u8>>, staged: &mut Staged) -> Result<(), StoreError> {
        let rkey = index::reverse_key(rtype, id);
        let old = match staged.index_overlay.get(&rkey) {
            Some(rows) => rows.clone(),
            None => match self.space.get(&rkey)? {
                Some(b) => index::decode_list(&b).ok_or_else(|| StoreError::Corrupt(format!("index list of {rtype}/{id}")))?,
                None => Vec::new(),
            },
        };
        if old.is_empty() && rows.is_empty() {
            return Ok(());
        }
        let doc = staged.postings.docnum(&self.space, &mut staged.batch, rtype, id)?;
        // Both lists are sorted: walk them together.
        let (mut i, mut j) = (0, 0);
        loop {
            match (old.get(i), rows.get(j)) {
                (None, None) => break,
                (Some(o), Some(n)) if o == n => {
                    i += 1;
                    j += 1;
                }
                (Some(o), Some(n)) if o > n => {
                    staged.postings.add(n, doc);
                    j += 1;
                }
                (Some(o), _) => {
                    staged.postings.remove(o, doc);
                    i += 1;
                }
                (None, Some(n)) => {
                    staged.postings.add(n, doc);
                    j += 1;
                }
            }
        }
        if rows.is_empty() {
            staged.batch.remove(rkey.as_slice());
        } else {
            staged.batch.insert(rkey.as_slice(), index::encode_list(&rows));
        }
        staged.index_overlay.insert(rkey, rows);
        Ok(())
    }

    pub(super) fn apply_write(
        &self,
        op: &WriteOp,
        cur: Option<Current>,
        ts: u64,
        batch: &mut Writes,
        overlay: &mut HashMap<Vec<u8>, Current>,
        rows: &mut Option<Vec<Vec<u8>>>,
    ) -> OpOutcome {
        let (rtype, id) = (op.rtype.as_str(), op.id.as_str());
        let ckey = keys::current(rtype, id);
        if let Some(expected) = op.if_match {
            if cur.map(|c| c.version) != Some(expected) {
                return Err(StoreError::VersionConflict {
                    rtype: rtype.into(),
                    id: id.into(),
                    expected,
                    current: cur.map(|c| c.version),
                });
            }
        }
        let (version, created) = match (op.action, cur) {
            (Action::Create, Some(_)) => return Err(StoreError::AlreadyExists { rtype: rtype.into(), id: id.into() }),
            (Action::Create, None) => (1, true),
            (Action::Update | Action::Patch, None) if !op.allow_create => {
                return Err(StoreError::CreateViaUpdateDisabled { rtype: rtype.into(), id: id.into() })
            }
            (Action::Update | Action::Patch, None) => (1, true),
            (Action::Update | Action::Patch, Some(c)) => (c.version + 1, c.deleted),
            (Action::Delete, None) => {
                return Ok(Applied { version: None, ts_micros: ts, created: false, noop: true, body: None, id: None })
            }
            (Action::Delete, Some(c)) if c.deleted => {
                return Ok(Applied { version: Some(c.version), ts_micros: c.ts, created: false, noop: true, body: None, id: None })
            }
            (Action::Delete, Some(c)) => (c.version + 1, false),
        };
        let body = match (&op.body, op.action) {
            (_, Action::Delete) => None,
            (Some(text), _) => {
                let mut value: Value = serde_json::from_str(text)
                    .map_err(|e| StoreError::Corrupt(format!("body of {rtype}/{id} in command: {e}")))?;
                meta::stamp(&mut value, version, ts);
                if let Some(reg) = &self.search {
                    *rows = Some(index::rows(reg, rtype, &value));
                }
                Some(serde_json::to_vec(&value).map_err(|e| StoreError::Corrupt(e.to_string()))?)
            }
            (None, _) => return Err(StoreError::Corrupt(format!("write of {rtype}/{id} without a body"))),
        };
        let deleted = op.action == Action::Delete;
        if deleted && self.search.is_some() {
            *rows = Some(Vec::new());
        }
        let now = Current { version, deleted, ts };
        batch.insert(ckey.clone(), &now.encode());
        overlay.insert(ckey, now);
        let record = VersionRecord::encode(op.action, ts, body.as_deref().unwrap_or_default());
        batch.insert(keys::version(rtype, id, version), record);
        batch.insert(keys::sys_history(ts, rtype, id, version), &[]);
        batch.insert(keys::type_history(rtype, ts, id, version), &[]);
        Ok(Applied { version: Some(version), ts_micros: ts, created, noop: false, body: body.map(Arc::new), id: None })
    }
}
