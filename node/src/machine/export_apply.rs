//! Applying [`ExportOp`]s: the export jobs are replicated state like the resources, decided here
//! identically on every node. A kick-off fixes the instant the export is consistent with (the
//! clock of this entry: every write applied before it is in, every later write comes after it),
//! resolves a Group's members and evaluates `_typeFilter` searches on the index as it is at that
//! entry, so the selection never depends on when or where the parts are written.

use serde_json::Value;

use crate::store::keys;
use crate::store::resources::Store;
use super::state_machine::{u64_pair, StateMachine};
use crate::store::writes::Writes;
use crate::store::StoreError;
use crate::machine::export_job::{ExportOp, ExportSpec, Job, Level, Status, MAX_JOBS};
use crate::machine::export_state as state;

impl StateMachine {
    /// Applies one export op in one batch with the applied index.
    pub(super) fn apply_export(&mut self, index: u64, term: u64, op: ExportOp) -> Result<(), StoreError> {
        let mut w = Writes::default();
        let existing = state::load(&self.tree, op.job())?;
        match (op, existing) {
            // Over the limits the kick-off carries: refused (no job; the proposer answers 429).
            (ExportOp::Start { spec, .. }, None) if !self.room_for(&spec)? => {}
            (ExportOp::Start { job, ts_micros, spec }, None) => {
                let as_of = self.advance_clock(ts_micros, &mut w);
                let record = self.start_job(job, as_of, spec, &mut w)?;
                w.insert_meta(state::job_key(&record.id), serde_json::to_vec(&record).expect("jobs serialize"));
            }
            (ExportOp::Checkpoint { part, cursor, .. }, Some(mut j)) if j.is_active() => {
                let fits = match &part {
                    Some(p) => p.follows(&j.spec.types, j.parts.len(), &j.cursor, &cursor),
                    None => cursor > j.cursor,
                };
                // A checkpoint from a leader that has since been replaced (the new one resumed
                // from an earlier cursor) does not fit: ignored, identically everywhere.
                if fits {
                    j.parts.extend(part);
                    j.cursor = cursor;
                    put(&mut w, &j);
                }
            }
            (ExportOp::Complete { ts_micros, .. }, Some(mut j)) if j.is_active() && j.at_end() => {
                j.status = Status::Complete;
                j.finished = Some(ts_micros);
                put(&mut w, &j);
            }
            (ExportOp::Fail { ts_micros, error, .. }, Some(mut j)) if j.is_active() => {
                j.status = Status::Failed(error);
                j.finished = Some(ts_micros);
                put(&mut w, &j);
            }
            (ExportOp::Cancel { ts_micros, .. }, Some(mut j)) if j.status != Status::Cancelled => {
                j.status = Status::Cancelled;
                j.finished = Some(ts_micros);
                put(&mut w, &j);
            }
            (ExportOp::Remove { job }, Some(_)) => {
                w.remove_meta(state::job_key(&job));
                for k in self.tree.scan_prefix(state::filters_of(&job)).keys() {
                    w.remove_meta(k?);
                }
            }
            // Anything else (a repeated kick-off, an op on a finished or unknown job) changes nothing.
            _ => {}
        }
        w.insert_meta(keys::META_APPLIED, &u64_pair(index, term));
        self.write(w)
    }

    /// Whether a kick-off fits: fewer active jobs in its tenant than it allows, fewer jobs of
    /// its owner, and fewer than [`MAX_JOBS`] in all.
    fn room_for(&self, spec: &ExportSpec) -> Result<bool, StoreError> {
        let jobs = state::list(&self.tree)?;
        let active = jobs.iter().filter(|j| j.is_active() && j.spec.tenant == spec.tenant).count();
        let owned = jobs.iter().filter(|j| j.spec.owner == spec.owner && j.spec.tenant == spec.tenant).count();
        Ok(jobs.len() < MAX_JOBS && active < spec.max_active as usize && owned < spec.max_per_owner as usize)
    }

    /// The job a kick-off creates: its members and filters decided on the state as of now.
    fn start_job(&self, id: String, as_of: u64, spec: ExportSpec, w: &mut Writes) -> Result<Job, StoreError> {
        let mut job = Job { id, spec, as_of, members: None, status: Status::Active, parts: Vec::new(), cursor: Default::default(), finished: None };
        let store = Store::new(self.tree.clone()).tenant(job.spec.tenant.as_deref());
        if let Level::Group(gid) = &job.spec.level {
            match store.read("Group", gid) {
                Ok((_, rec)) => match serde_json::from_slice::<Value>(rec.body()) {
                    Ok(group) => job.members = Some(group_members(&group, as_of)),
                    Err(e) => return Err(StoreError::Corrupt(format!("stored Group/{gid}: {e}"))),
                },
                Err(StoreError::NotFound { .. } | StoreError::Gone { .. }) => {
                    job.status = Status::Failed(format!("Group/{gid} does not exist"));
                    job.finished = Some(as_of);
                }
                Err(e) => return Err(e),
            }
        }
        if job.is_active() {
            match self.evaluate_filters(&job, &store, w) {
                Ok(()) => {}
                Err(FilterError::Storage(e)) => return Err(e),
                Err(FilterError::Job(e)) => {
                    job.status = Status::Failed(e);
                    job.finished = Some(as_of);
                }
            }
        }
        Ok(job)
    }

    /// Runs each `_typeFilter` search within the condition budget (search::cost) and records
    /// the union of the matches per type.
    fn evaluate_filters(&self, job: &Job, store: &Store, w: &mut Writes) -> Result<(), FilterError> {
        let Some(reg) = &self.search else {
            return if job.spec.type_filters.is_empty() { Ok(()) } else { Err(FilterError::Job("this node keeps no search index for _typeFilter".into())) };
        };
        let mut per_type: std::collections::BTreeMap<&str, roaring::RoaringBitmap> = Default::default();
        for (rtype, params) in &job.spec.type_filters {
            let found = match crate::search::query::condition_docs(reg, store.tree(), rtype, params) {
                Ok(found) => found,
                // A storage failure is this node's, not the job's: stop applying.
                Err(crate::search::query::SearchError::Store(e)) => return Err(FilterError::Storage(e)),
                Err(e) => return Err(FilterError::Job(format!("_typeFilter {rtype}?{}: {e}", serde_urlencoded::to_string(params).unwrap_or_default()))),
            };
            *per_type.entry(rtype.as_str()).or_default() |= found;
        }
        for (rtype, docs) in per_type {
            let mut bytes = Vec::with_capacity(docs.serialized_size());
            docs.serialize_into(&mut bytes).expect("writing to a Vec");
            w.insert_meta(state::filter_key(&job.id, rtype), bytes);
        }
        Ok(())
    }
}

/// Why `_typeFilter` could not be decided: the job's fault (recorded in it) or this node's.
enum FilterError {
    Job(String),
    Storage(StoreError),
}

fn put(w: &mut Writes, job: &Job) {
    w.insert_meta(state::job_key(&job.id), serde_json::to_vec(job).expect("jobs serialize"));
}

/// The Group's patient members as of `as_of` (µs): not `inactive`, and whose `period` has not
/// ended (as FHIR Works on AWS exports them). Sorted, without repeats.
pub fn group_members(group: &Value, as_of: u64) -> Vec<String> {
    let mut out: Vec<String> = group
        .get("member")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|m| m.get("inactive").and_then(Value::as_bool) != Some(true))
        .filter(|m| match m.pointer("/period/end").and_then(Value::as_str).and_then(crate::fhir::meta::parse_fhir_range) {
            // Ended when the end (at its precision) lies before the export's instant.
            Some((_, high)) => high > as_of as i64,
            None => true,
        })
        .filter_map(|m| m.pointer("/entity/reference").and_then(Value::as_str))
        .filter_map(|r| {
            let mut parts = r.trim_end_matches('/').rsplit('/');
            let id = parts.next()?;
            (parts.next()? == "Patient" && crate::fhir::valid_id(id)).then(|| id.to_string())
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn group_members_leave_out_inactive_and_ended_memberships() {
        let g = json!({"resourceType": "Group", "member": [
            {"entity": {"reference": "Patient/a"}},
            {"entity": {"reference": "Patient/b"}, "inactive": true},
            {"entity": {"reference": "Patient/c"}, "period": {"end": "2000-01-01"}},
            {"entity": {"reference": "Patient/d"}, "period": {"end": "2999-01-01"}},
            {"entity": {"reference": "https://x.org/fhir/Patient/e"}},
            {"entity": {"reference": "Practitioner/f"}},
            {"entity": {"reference": "Patient/a"}},
        ]});
        let now = crate::fhir::meta::now_micros();
        assert_eq!(group_members(&g, now), vec!["a", "d", "e"]);
    }
}
