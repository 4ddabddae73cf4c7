//! Conditions of replicated writes (conditional create, update, delete and their bundle entries):
//! resolved against the index as of the entry being applied, within the condition row budget,
//! identically on every node.

use super::state_machine::{Resolved, StateMachine};
use std::collections::HashMap;
use std::sync::Arc;
use serde_json::Value;
use super::command::{Action, Applied, Condition, WriteOp};
use crate::store::keys;
use crate::store::resources::VersionRecord;
use crate::store::StoreError;

impl StateMachine {
    /// Decides a conditional write from a search on the applied state (before this entry's writes).
    pub(super) fn resolve(&self, op: &WriteOp, cond: &Condition) -> Result<Resolved, StoreError> {
        self.resolve_excluding(op, cond, &|_| false)
    }

    /// [`Self::resolve`], ignoring matches for which `exclude(id)` holds (deleted earlier in the
    /// same transaction).
    pub(super) fn resolve_excluding(&self, op: &WriteOp, cond: &Condition, exclude: &dyn Fn(&str) -> bool) -> Result<Resolved, StoreError> {
        let Some(reg) = &self.search else {
            return Ok(Resolved::Outcome(Err(StoreError::BadCondition("this node keeps no search index".into()))));
        };
        let found: Vec<String> = match crate::search::query::condition_ids(reg, &self.space, &op.rtype, &cond.query) {
            // By id: a multiple delete stages its writes (and their timestamps) in this order.
            Ok(mut ids) => {
                ids.retain(|id| !exclude(id));
                ids
            }
            Err(crate::search::query::SearchError::Store(e)) => return Err(e),
            Err(e) => return Ok(Resolved::Outcome(Err(StoreError::BadCondition(e.to_string())))),
        };
        let many = || StoreError::MultipleMatches { rtype: op.rtype.clone(), count: found.len() };
        Ok(match (op.action, found.as_slice()) {
            (Action::Create, []) | (Action::Update, []) => Resolved::Ops(vec![WriteOp { allow_create: true, ..op.clone() }]),
            (Action::Create, [id]) => {
                // Already there: nothing is written; the existing resource is the answer.
                let cur = self.current(&keys::current(&op.rtype, id), &HashMap::new())?;
                let rec = self.space.get(keys::version(&op.rtype, id, cur.map(|c| c.version).unwrap_or(0)))?;
                let rec = rec.map(VersionRecord::decode).transpose()?;
                Resolved::Outcome(Ok(Applied {
                    version: cur.map(|c| c.version),
                    ts_micros: cur.map(|c| c.ts).unwrap_or(0),
                    created: false,
                    noop: true,
                    body: rec.map(|r| Arc::new(r.body().to_vec())),
                    id: Some(id.clone()),
                }))
            }
            (Action::Update, [id]) if cond.client_id && *id != op.id => Resolved::Outcome(Err(StoreError::BadCondition(format!(
                "the resource's id '{}' is not the id of the resource the condition matched ('{id}')",
                op.id
            )))),
            (Action::Update, [id]) => {
                let body = match &op.body {
                    Some(text) => {
                        // Checked before proposing; a body that still is not JSON fails this write
                        // alone (identically on every node), it never stops apply.
                        let mut v: Value = match serde_json::from_str(text) {
                            Ok(v) => v,
                            Err(e) => return Ok(Resolved::Outcome(Err(StoreError::BadCondition(format!("the resource is not valid JSON: {e}"))))),
                        };
                        if let Some(o) = v.as_object_mut() {
                            o.insert("id".into(), Value::String(id.clone()));
                        }
                        Some(v.to_string())
                    }
                    None => None,
                };
                Resolved::Ops(vec![WriteOp { id: id.clone(), body, ..op.clone() }])
            }
            (Action::Delete, []) => Resolved::Outcome(Ok(Applied { version: None, ts_micros: 0, created: false, noop: true, body: None, id: None })),
            (Action::Delete, [_]) => Resolved::Ops(found.iter().map(|id| WriteOp { id: id.clone(), ..op.clone() }).collect()),
            (Action::Delete, _) if cond.multiple => Resolved::Ops(found.iter().map(|id| WriteOp { id: id.clone(), ..op.clone() }).collect()),
            // Conditional patch: the proposer patched the match it found at the version it read
            // (`if_match`); it is written only if the condition still selects exactly that resource.
            (Action::Patch, [id]) if *id == op.id => Resolved::Ops(vec![op.clone()]),
            (Action::Patch, [id]) => Resolved::Outcome(Err(StoreError::VersionConflict {
                rtype: op.rtype.clone(),
                id: id.clone(),
                expected: op.if_match.unwrap_or_default(),
                current: None,
            })),
            (Action::Patch, []) => Resolved::Outcome(Err(StoreError::NotFound { rtype: op.rtype.clone(), id: format!("{} (no match for the condition)", op.id) })),
            _ => Resolved::Outcome(Err(many())),
        })
    }
}
