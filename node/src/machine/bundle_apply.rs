//! Applying a batch or transaction bundle ([`CommandV1::Bundle`](super::command::CommandV1)) in
//! the state machine, deterministically on every node:
//! 1. conditions (`ifNoneExist`, conditional PUT / DELETE / PATCH) are searches on the state
//!    before the bundle, less the resources its DELETE entries remove; two conditional creates
//!    with the same type and query name one resource; the `ap` date prefix (it depends on the
//!    clock) is refused in conditions;
//! 2. a transaction may touch each resource once (a second write of it, or a write of what a
//!    conditional create matched, fails the transaction);
//! 3. every `reference` naming an entry's fullUrl (`urn:uuid:`, `urn:oid:`, the fullUrl of a
//!    created resource, its `Type/id` form, with or without `/_history/n`) becomes `Type/id`, and
//!    so do narrative `href` / `src` equal to a fullUrl; conditional references
//!    (`Patient?identifier=s|v`) become the one resource they match (a conditional create of the
//!    same bundle with the same query counts as a match); 0 or 2+ matches fail the entry; nested
//!    Bundles are left alone;
//! 4. the writes are staged in ONE sled batch. A transaction commits it only if every entry
//!    succeeded; otherwise nothing but the applied index is written and the outcome names the
//!    failing entry. Batch entries succeed or fail alone.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use serde_json::Value;

use super::command::{Action, Applied, BundleOp, Condition, OpOutcome, WriteOp};
use crate::store::keys;
use super::state_machine::{Resolved, StateMachine};
use crate::store::StoreError;
use crate::fhir::references::{self, Place};
use crate::search::query::{self, SearchError};

/// What one entry turned into before staging.
enum Plan {
    /// Writes to stage (several for a multiple conditional delete).
    Ops(Vec<WriteOp>),
    /// Decided without writing (conditional create that matched, conditional delete of nothing).
    Done(Applied),
    /// A conditional create with the same type and query as the entry at this position (in
    /// processing order): it names the same resource and writes nothing.
    SameAs(usize),
}

/// The conditional creates of a bundle that create: (type, sorted query, id).
type CreatedByCondition = Vec<(String, Vec<(String, String)>, String)>;

fn sorted(q: &[(String, String)]) -> Vec<(String, String)> {
    let mut q = q.to_vec();
    q.sort();
    q
}

/// `Type/id` for an absolute `http(s)://…/Type/id` fullUrl: relative references to it in other
/// entries mean the same entry (bundle.html#references).
fn relative_form(url: &str) -> Option<String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return None;
    }
    let segs: Vec<&str> = url.trim_end_matches('/').rsplitn(3, '/').collect();
    match segs.as_slice() {
        [id, t, _] if t.starts_with(|c: char| c.is_ascii_uppercase()) => Some(format!("{t}/{id}")),
        _ => None,
    }
}

/// A reference without a trailing `/_history/n`.
fn unversioned(r: &str) -> &str {
    match r.rfind("/_history/") {
        Some(i) => &r[..i],
        None => r,
    }
}

impl StateMachine {
    pub(super) fn apply_bundle(&mut self, index: u64, term: u64, ts_micros: u64, atomic: bool, mut entries: Vec<BundleOp>, tenant: Option<&str>) -> Result<Vec<OpOutcome>, StoreError> {
        let fail = |sm: &mut StateMachine, entry: u32, reason: StoreError| -> Result<Vec<OpOutcome>, StoreError> {
            sm.apply_empty(index, term)?;
            Ok(vec![Err(StoreError::EntryFailed { entry, reason: Box::new(reason) })])
        };
        // 1. Conditions, on the state before the bundle less what its DELETE entries (processed
        //    first) remove; identical conditional creates name one resource.
        let mut plans: Vec<Result<Plan, StoreError>> = Vec::with_capacity(entries.len());
        let mut gone: HashSet<(String, String)> = HashSet::new();
        let mut first_create: HashMap<(String, Vec<(String, String)>), usize> = HashMap::new();
        for (pos, e) in entries.iter_mut().enumerate() {
            let plan = match &e.condition {
                None => {
                    // The body moves into the plan (the entry keeps what the later steps read).
                    let body = e.op.body.take();
                    Ok(Plan::Ops(vec![WriteOp { body, ..e.op.clone() }]))
                }
                Some(cond) if e.op.action == Action::Create && atomic => match first_create.entry((e.op.rtype.clone(), sorted(&cond.query))) {
                    Entry::Occupied(o) => Ok(Plan::SameAs(*o.get())),
                    Entry::Vacant(v) => {
                        v.insert(pos);
                        self.resolve_plan(e, cond, &gone)?
                    }
                },
                Some(cond) => self.resolve_plan(e, cond, &gone)?,
            };
            match &plan {
                Err(err) if atomic => return fail(self, e.index, err.clone()),
                Ok(Plan::Ops(ops)) if atomic && e.op.action == Action::Delete => gone.extend(ops.iter().map(|op| (op.rtype.clone(), op.id.clone()))),
                _ => {}
            }
            plans.push(plan);
        }
        // 2. One write per resource in a transaction (a conditional create that matched counts
        //    as touching it); 3. what each fullUrl became.
        let mut touched: HashMap<(String, String), u32> = HashMap::new();
        let mut full_urls: HashMap<String, String> = HashMap::new();
        let mut created: CreatedByCondition = Vec::new();
        let mut targets: Vec<Option<String>> = Vec::with_capacity(entries.len());
        for (e, plan) in entries.iter().zip(&plans) {
            let (target, ids): (Option<String>, Vec<String>) = match plan {
                Ok(Plan::Ops(ops)) => (ops.first().map(|op| op.id.clone()), ops.iter().map(|op| op.id.clone()).collect()),
                Ok(Plan::Done(a)) => (a.id.clone(), a.id.iter().cloned().collect()),
                Ok(Plan::SameAs(pos)) => (targets[*pos].clone(), Vec::new()),
                Err(_) => (None, Vec::new()),
            };
            if atomic {
                for id in ids {
                    if let Some(first) = touched.insert((e.op.rtype.clone(), id.clone()), e.index) {
                        let why = format!(
                            "Bundle.entry[{first}] and Bundle.entry[{}] both touch {}/{id}; a transaction may write a resource only once",
                            e.index, e.op.rtype
                        );
                        return fail(self, e.index, StoreError::DuplicateTarget(why));
                    }
                }
            }
            if let Some(id) = &target {
                if let (Some(cond), Action::Create) = (&e.condition, e.op.action) {
                    created.push((e.op.rtype.clone(), sorted(&cond.query), id.clone()));
                }
                if let Some(url) = &e.full_url {
                    let to = format!("{}/{id}", e.op.rtype);
                    if e.op.action == Action::Create {
                        if let Some(rel) = relative_form(url) {
                            full_urls.insert(rel, to.clone());
                        }
                    }
                    full_urls.insert(url.clone(), to);
                }
            }
            targets.push(target);
        }
        // 3. References rewritten in the bodies.
        let mut resolved_refs: HashMap<String, String> = HashMap::new();
        for (e, plan) in entries.iter().zip(plans.iter_mut()) {
            let Ok(Plan::Ops(ops)) = plan else { continue };
            let mut failed = None;
            for op in ops.iter_mut() {
                match self.rewrite_references(op, atomic, &full_urls, &created, &gone, &mut resolved_refs) {
                    Ok(()) => {}
                    Err(StoreError::BadReference(why)) => {
                        failed = Some(StoreError::BadReference(why));
                        break;
                    }
                    Err(fatal) => return Err(fatal),
                }
            }
            if let Some(err) = failed {
                if atomic {
                    return fail(self, e.index, err);
                }
                *plan = Err(err);
            }
        }
        // 4. Stage every write in one batch.
        let mut staged = self.stage(ts_micros);
        self.register_tenant(&mut staged, tenant)?;
        let mut outcomes: Vec<OpOutcome> = Vec::with_capacity(entries.len());
        for (e, plan) in entries.iter().zip(plans) {
            let out = match plan {
                Err(err) => Err(err),
                Ok(Plan::Done(a)) => Ok(a),
                Ok(Plan::SameAs(pos)) => outcomes[pos].clone().map(|a| Applied { created: false, noop: true, ..a }),
                Ok(Plan::Ops(ops)) => self.stage_entry(&mut staged, e, &ops)?,
            };
            if atomic {
                if let Err(err) = out {
                    return fail(self, e.index, err);
                }
            }
            outcomes.push(out);
        }
        self.commit(staged, index, term)?;
        Ok(outcomes)
    }

    /// An entry's condition decided on the state, ignoring resources in `gone`.
    fn resolve_plan(&self, e: &BundleOp, cond: &Condition, gone: &HashSet<(String, String)>) -> Result<Result<Plan, StoreError>, StoreError> {
        let exclude = |id: &str| gone.contains(&(e.op.rtype.clone(), id.to_string()));
        Ok(match self.resolve_excluding(&e.op, cond, &exclude)? {
            Resolved::Ops(ops) => Ok(Plan::Ops(ops)),
            Resolved::Outcome(Ok(a)) => Ok(Plan::Done(a)),
            Resolved::Outcome(Err(err)) => Err(err),
        })
    }

    /// Stages the writes of one entry; its outcome is the first write's (with the resource id).
    fn stage_entry(&self, staged: &mut super::state_machine::Staged, e: &BundleOp, ops: &[WriteOp]) -> Result<OpOutcome, StoreError> {
        let mut first: Option<OpOutcome> = None;
        for op in ops {
            if e.if_none_match {
                let cur = self.current(&keys::current(&op.rtype, &op.id), staged.overlay())?;
                if cur.is_some_and(|c| !c.deleted) {
                    return Ok(Err(StoreError::NoneMatchFailed { rtype: op.rtype.clone(), id: op.id.clone() }));
                }
            }
            let out = self.stage_op(staged, op)?.map(|mut a| {
                a.id = Some(op.id.clone());
                a
            });
            if out.is_err() {
                return Ok(out);
            }
            first.get_or_insert(out);
        }
        Ok(first.unwrap_or(Ok(Applied { version: None, ts_micros: 0, created: false, noop: true, body: None, id: None })))
    }

    /// Rewrites the references of `op`'s body. `BadReference` is the entry's failure; other
    /// errors are storage failures. In the narrative only exact fullUrls are replaced, and
    /// nothing there fails the entry.
    fn rewrite_references(
        &self,
        op: &mut WriteOp,
        atomic: bool,
        full_urls: &HashMap<String, String>,
        created: &CreatedByCondition,
        gone: &HashSet<(String, String)>,
        cache: &mut HashMap<String, String>,
    ) -> Result<(), StoreError> {
        let Some(text) = &op.body else { return Ok(()) };
        // Only `reference` elements and narrative links are rewritten: a body without any is
        // not parsed; without fullUrls, only placeholders and conditional references can need it.
        let has_links = text.contains("\"reference\"") || text.contains("href") || text.contains("src");
        if !has_links || (full_urls.is_empty() && !text.contains("urn:") && !text.contains('?')) {
            return Ok(());
        }
        // Checked before proposing; if it still is not JSON the entry fails (never apply).
        let mut v: Value = serde_json::from_str(text).map_err(|e| StoreError::BadReference(format!("the {} entry's body is not valid JSON: {e}", op.rtype)))?;
        let changed = references::rewrite(&mut v, &mut |r: &str, place: Place| -> Result<Option<String>, StoreError> {
            if let Some(to) = full_urls.get(r).or_else(|| full_urls.get(unversioned(r))) {
                return Ok(Some(to.clone()));
            }
            if place == Place::Narrative {
                return Ok(None);
            }
            if let Some(to) = cache.get(r) {
                return Ok(Some(to.clone()));
            }
            if r.starts_with("urn:uuid:") || r.starts_with("urn:oid:") {
                if atomic {
                    return Err(StoreError::BadReference(format!("the reference '{r}' in {} names no entry's fullUrl in this transaction", op.rtype)));
                }
                return Ok(None);
            }
            let Some((rtype, qs)) = conditional_reference(r) else { return Ok(None) };
            let to = self.resolve_conditional_reference(r, rtype, qs, created, gone)?;
            cache.insert(r.to_string(), to.clone());
            Ok(Some(to))
        })?;
        if changed {
            op.body = Some(v.to_string());
        }
        Ok(())
    }

    /// `Type?query` → the `Type/id` of its only match (in the state, or created by a conditional
    /// create of this bundle with the same query).
    fn resolve_conditional_reference(&self, r: &str, rtype: &str, qs: &str, created: &CreatedByCondition, gone: &HashSet<(String, String)>) -> Result<String, StoreError> {
        let bad = |why: String| StoreError::BadReference(format!("conditional reference '{r}': {why}"));
        let Some(reg) = &self.search else { return Err(bad("this node keeps no search index".into())) };
        let params: Vec<(String, String)> = serde_urlencoded::from_str(qs).map_err(|e| bad(e.to_string()))?;
        let mut ids: Vec<String> = match query::condition_ids(reg, &self.space, rtype, &params) {
            Ok(ids) => ids.into_iter().filter(|id| !gone.contains(&(rtype.to_string(), id.clone()))).collect(),
            Err(SearchError::Store(e)) => return Err(e),
            Err(e) => return Err(bad(e.to_string())),
        };
        let key = sorted(&params);
        for (t, query, id) in created {
            if t == rtype && *query == key && !ids.contains(id) {
                ids.push(id.clone());
            }
        }
        match ids.as_slice() {
            [id] => Ok(format!("{rtype}/{id}")),
            [] => Err(bad("no resource matches".into())),
            many => Err(bad(format!("{} resources match; it must match exactly one", many.len()))),
        }
    }
}

/// `Type?query` with a plausible resource type name.
fn conditional_reference(r: &str) -> Option<(&str, &str)> {
    let (t, q) = r.split_once('?')?;
    let ok = t.chars().next().is_some_and(|c| c.is_ascii_uppercase()) && t.chars().all(|c| c.is_ascii_alphanumeric()) && !q.is_empty();
    ok.then_some((t, q))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::fhir::FhirVersion;
    use crate::search::params::Registry;
    use crate::machine::command::{Command, CommandV1, Condition};
    use crate::store::resources::Store;

    fn open() -> (tempfile::TempDir, StateMachine, Store) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("state").unwrap();
        let reg = Arc::new(Registry::load(FhirVersion::R4));
        (dir, StateMachine::open(tree.clone()).unwrap().with_search(reg), Store::new(tree))
    }

    fn entry(index: u32, action: Action, rtype: &str, id: &str, body: Option<Value>, full_url: Option<&str>) -> BundleOp {
        BundleOp {
            index,
            op: WriteOp { action, rtype: rtype.into(), id: id.into(), body: body.map(|b| b.to_string()), if_match: None, allow_create: true },
            condition: None,
            if_none_match: false,
            full_url: full_url.map(String::from),
        }
    }

    fn bundle(atomic: bool, entries: Vec<BundleOp>) -> Vec<u8> {
        Command::V1(CommandV1::Bundle { ts_micros: 10, atomic, entries }).encode()
    }

    fn body(store: &Store, rtype: &str, id: &str) -> Value {
        serde_json::from_slice(store.read(rtype, id).unwrap().1.body()).unwrap()
    }

    #[test]
    fn transaction_rewrites_placeholders_and_conditional_references() {
        let (_d, mut sm, store) = open();
        let org = serde_json::json!({"resourceType": "Organization", "id": "o1", "identifier": [{"system": "s", "value": "org"}]});
        sm.apply(1, 1, &bundle(true, vec![entry(0, Action::Update, "Organization", "o1", Some(org), None)])).unwrap();
        let pat = serde_json::json!({"resourceType": "Patient", "id": "p1", "managingOrganization": {"reference": "Organization?identifier=s|org"},
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"urn:uuid:aa\">me</a></div>"}});
        let obs = serde_json::json!({"resourceType": "Observation", "id": "b2", "status": "final", "code": {"text": "x"}, "subject": {"reference": "urn:uuid:aa"}});
        let out = sm
            .apply(2, 1, &bundle(true, vec![
                entry(1, Action::Create, "Patient", "p1", Some(pat), Some("urn:uuid:aa")),
                entry(0, Action::Create, "Observation", "b2", Some(obs), Some("urn:uuid:bb")),
            ]))
            .unwrap();
        assert!(out.iter().all(|o| o.as_ref().is_ok_and(|a| a.created)), "{out:?}");
        assert_eq!(body(&store, "Observation", "b2")["subject"]["reference"], "Patient/p1");
        let p = body(&store, "Patient", "p1");
        assert_eq!(p["managingOrganization"]["reference"], "Organization/o1");
        assert!(p["text"]["div"].as_str().unwrap().contains("href=\"Patient/p1\""));
    }

    #[test]
    fn a_failing_entry_leaves_no_trace() {
        let (_d, mut sm, store) = open();
        let p = |id: &str| Some(serde_json::json!({"resourceType": "Patient", "id": id}));
        let mut bad = entry(2, Action::Update, "Patient", "c", p("c"), None);
        bad.op.if_match = Some(7);
        let out = sm
            .apply(1, 1, &bundle(true, vec![entry(0, Action::Create, "Patient", "a", p("a"), None), entry(1, Action::Create, "Patient", "b", p("b"), None), bad]))
            .unwrap();
        assert!(matches!(&out[..], [Err(StoreError::EntryFailed { entry: 2, reason })] if matches!(**reason, StoreError::VersionConflict { .. })), "{out:?}");
        assert!(matches!(store.read("Patient", "a"), Err(StoreError::NotFound { .. })));
        assert_eq!(sm.applied_index(), 1);
        // Written twice → refused; unknown placeholder → refused.
        let out = sm.apply(2, 1, &bundle(true, vec![entry(0, Action::Update, "Patient", "a", p("a"), None), entry(1, Action::Delete, "Patient", "a", None, None)])).unwrap();
        assert!(matches!(&out[..], [Err(StoreError::EntryFailed { entry: 1, reason })] if matches!(**reason, StoreError::DuplicateTarget(_))), "{out:?}");
        let dangling = Some(serde_json::json!({"resourceType": "Patient", "id": "d", "link": [{"type": "seealso", "other": {"reference": "urn:uuid:nope"}}]}));
        let out = sm.apply(3, 1, &bundle(true, vec![entry(4, Action::Create, "Patient", "d", dangling.clone(), None)])).unwrap();
        assert!(matches!(&out[..], [Err(StoreError::EntryFailed { entry: 4, reason })] if matches!(**reason, StoreError::BadReference(_))), "{out:?}");
        // The same in a batch: each entry alone.
        let out = sm.apply(4, 1, &bundle(false, vec![entry(0, Action::Create, "Patient", "a", p("a"), None), entry(1, Action::Update, "Patient", "a", p("a"), None), entry(2, Action::Create, "Patient", "d", dangling, None)])).unwrap();
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(Result::is_ok), "{out:?}");
        assert_eq!(store.read("Patient", "a").unwrap().0.version, 2);
    }

    #[test]
    fn conditional_create_counts_for_conditional_references() {
        let (_d, mut sm, store) = open();
        let pat = serde_json::json!({"resourceType": "Patient", "id": "n1", "identifier": [{"system": "s", "value": "1"}]});
        let obs = serde_json::json!({"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient?identifier=s|1"}});
        let cond = Condition { query: vec![("identifier".into(), "s|1".into())], client_id: false, multiple: false };
        let mut create = entry(0, Action::Create, "Patient", "n1", Some(pat.clone()), None);
        create.condition = Some(cond.clone());
        let out = sm.apply(1, 1, &bundle(true, vec![create.clone(), entry(1, Action::Create, "Observation", "o", Some(obs), None)])).unwrap();
        assert!(out.iter().all(Result::is_ok), "{out:?}");
        assert_eq!(body(&store, "Observation", "o")["subject"]["reference"], "Patient/n1");
        // Again: the condition matches, nothing is created.
        create.op.id = "n2".into();
        let out = sm.apply(2, 1, &bundle(true, vec![create])).unwrap();
        let a = out[0].as_ref().unwrap();
        assert!(!a.created && a.noop && a.id.as_deref() == Some("n1"));
        assert!(matches!(store.read("Patient", "n2"), Err(StoreError::NotFound { .. })));
    }

    #[test]
    fn conditional_patch_is_rechecked_at_apply() {
        let (_d, mut sm, store) = open();
        let p = |id: &str, v: &str| serde_json::json!({"resourceType": "Patient", "id": id, "identifier": [{"system": "s", "value": v}]});
        sm.apply(1, 1, &bundle(true, vec![entry(0, Action::Update, "Patient", "a", Some(p("a", "x")), None)])).unwrap();
        let cond = Condition { query: vec![("identifier".into(), "s|x".into())], client_id: false, multiple: false };
        let patch = |id: &str, version: u64| {
            let op = WriteOp { action: Action::Patch, rtype: "Patient".into(), id: id.into(), body: Some(p(id, "x").to_string()), if_match: Some(version), allow_create: false };
            Command::V1(CommandV1::Conditional { ts_micros: 5, op, condition: cond.clone() }).encode()
        };
        // The proposer saw a at version 1: written.
        assert_eq!(sm.apply(2, 1, &patch("a", 1)).unwrap()[0].as_ref().unwrap().version, Some(2));
        // The condition now selects a, not b: refused (the proposer retries).
        assert!(matches!(sm.apply(3, 1, &patch("b", 1)).unwrap()[0], Err(StoreError::VersionConflict { .. })));
        // A second match appeared: 412 multiple matches.
        sm.apply(4, 1, &bundle(true, vec![entry(0, Action::Update, "Patient", "c", Some(p("c", "x")), None)])).unwrap();
        assert!(matches!(sm.apply(5, 1, &patch("a", 2)).unwrap()[0], Err(StoreError::MultipleMatches { count: 2, .. })));
        assert_eq!(store.read("Patient", "a").unwrap().0.version, 2);
    }

    #[test]
    fn processing_order_duplicates_and_relative_fullurls() {
        let (_d, mut sm, store) = open();
        let pat = |id: &str| serde_json::json!({"resourceType": "Patient", "id": id, "identifier": [{"system": "s", "value": "1"}]});
        let cond = Condition { query: vec![("identifier".into(), "s|1".into())], client_id: false, multiple: false };
        sm.apply(1, 1, &bundle(true, vec![entry(0, Action::Update, "Patient", "old", Some(pat("old")), None)])).unwrap();
        // DELETE (processed first) removes the match; the conditional create then creates.
        let mut del = entry(0, Action::Delete, "Patient", "", None, None);
        del.condition = Some(cond.clone());
        let mut create = entry(1, Action::Create, "Patient", "new", Some(pat("new")), Some("http://example.org/fhir/Patient/tmp"));
        create.condition = Some(cond.clone());
        // The same conditional create twice names one resource.
        let mut again = entry(2, Action::Create, "Patient", "new2", Some(pat("new2")), Some("urn:uuid:again"));
        again.condition = Some(cond.clone());
        // A relative and a versioned reference to the absolute fullUrl; a narrative link that
        // looks like a query is left alone.
        let obs = serde_json::json!({"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient/tmp"}, "focus": [{"reference": "http://example.org/fhir/Patient/tmp/_history/1"}, {"reference": "urn:uuid:again"}],
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"Observation?code=x\">more</a></div>"}});
        let out = sm.apply(2, 1, &bundle(true, vec![del, create, again, entry(3, Action::Create, "Observation", "o", Some(obs), None)])).unwrap();
        assert!(out.iter().all(Result::is_ok), "{out:?}");
        assert!(out[1].as_ref().unwrap().created);
        let second = out[2].as_ref().unwrap();
        assert!(!second.created && second.id.as_deref() == Some("new"));
        assert!(matches!(store.read("Patient", "old"), Err(StoreError::Gone { .. })));
        assert!(matches!(store.read("Patient", "new2"), Err(StoreError::NotFound { .. })));
        let o = body(&store, "Observation", "o");
        assert_eq!(o["subject"]["reference"], "Patient/new");
        assert_eq!(o["focus"][0]["reference"], "Patient/new");
        assert_eq!(o["focus"][1]["reference"], "Patient/new");
        assert!(o["text"]["div"].as_str().unwrap().contains("Observation?code=x"));
        // A conditional create that matched `new`, and a PUT of `new`: touched twice.
        let mut matched = entry(0, Action::Create, "Patient", "n3", Some(pat("n3")), None);
        matched.condition = Some(cond.clone());
        let out = sm.apply(3, 1, &bundle(true, vec![matched, entry(1, Action::Update, "Patient", "new", Some(pat("new")), None)])).unwrap();
        assert!(matches!(&out[..], [Err(StoreError::EntryFailed { entry: 1, reason })] if matches!(**reason, StoreError::DuplicateTarget(_))), "{out:?}");
        // `ap` depends on the clock: refused in a condition.
        let mut ap = entry(0, Action::Create, "Patient", "n4", Some(pat("n4")), None);
        ap.condition = Some(Condition { query: vec![("birthdate".into(), "ap2000-01-01".into())], client_id: false, multiple: false });
        let out = sm.apply(4, 1, &bundle(true, vec![ap])).unwrap();
        assert!(matches!(&out[..], [Err(StoreError::EntryFailed { reason, .. })] if matches!(**reason, StoreError::BadCondition(_))), "{out:?}");
    }
}
