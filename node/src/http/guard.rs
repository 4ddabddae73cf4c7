//! The decisions the request paths ask for before they touch data: may this caller do this
//! interaction on this type ([`require`]), is this resource within the caller's reach
//! ([`check_stored`], [`may_see`]), which resources of a type a search may return ([`members`]),
//! and may this write happen ([`check_write`]). Every read, search, history, include, write and
//! bundle entry of [`crate::http`] goes through these, so the rules are enforced in one place.
//!
//! A `patient/` scope reaches the Patient compartment of the token's `patient`: the Patient
//! itself and every resource whose compartment parameters (CompartmentDefinition Patient, e.g.
//! Observation `subject`, `performer`) reference it. Membership is read from the resource's own
//! references, with the same extraction as the search index.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use crate::auth::{AuthError, Grant, Kinship, Op, Principal, SHARED_TYPES};
use crate::http::error::ApiError;
use crate::http::negotiate::Ctx;
use crate::http::AppState;
use crate::search::index;
use crate::search::query::{self, Ids};
use crate::machine::command::{Action, Condition};
use crate::store::resources::HistoryEntry;
use crate::store::{Store, StoreError};

const PATIENT: &str = "Patient";

/// The compartment parameters linking `rtype` to a Patient (empty: not a member type).
fn links(st: &AppState, rtype: &str) -> Vec<String> {
    st.search.compartment_params(PATIENT, rtype).unwrap_or_default()
}

/// How `rtype` relates to the Patient compartment.
pub fn kinship(st: &AppState, rtype: &str) -> Kinship {
    if rtype == PATIENT || !links(st, rtype).is_empty() {
        Kinship::Member
    } else if SHARED_TYPES.contains(&rtype) {
        Kinship::Shared
    } else {
        Kinship::Other
    }
}

/// May the caller do `op` on `rtype`, and on which resources.
pub fn require(principal: &Principal, st: &AppState, op: Op, rtype: &str) -> Result<Grant, ApiError> {
    Ok(principal.grant(&st.auth.rules, op, rtype, || kinship(st, rtype))?)
}

/// [`require`] for the caller of `ctx`.
pub fn require_ctx(ctx: &Ctx, st: &AppState, op: Op, rtype: &str) -> Result<Grant, ApiError> {
    require(&ctx.principal, st, op, rtype)
}

/// Whether a write may answer with the resource it names (`return=representation`): only to a
/// caller who may read it, this resource included (a conditional create answers with a resource
/// the caller did not send).
pub fn may_return(ctx: &Ctx, st: &AppState, rtype: &str, id: &str, body: Option<&[u8]>) -> bool {
    match (require_ctx(ctx, st, Op::READ, rtype), body) {
        (Ok(grant), Some(b)) => may_see(st, &grant, rtype, id, b).unwrap_or(false),
        (Ok(_), None) => true,
        (Err(_), _) => false,
    }
}

/// Whether the resource `rtype/id` with this JSON is in `Patient/pid`'s compartment: it is that
/// Patient, or one of its compartment parameters references it.
pub fn in_compartment(st: &AppState, rtype: &str, id: &str, body: &Value, pid: &str) -> bool {
    if rtype == PATIENT && id == pid {
        return true;
    }
    let links = links(st, rtype);
    let rows = index::rows_of(&st.search, rtype, &links, body);
    links.iter().any(|code| {
        let want = index::exact_prefix(rtype, code, b'r', &[PATIENT, pid]);
        rows.iter().any(|r| r.starts_with(&want))
    })
}

/// Whether a body a `patient/` caller writes stays wholly in `Patient/pid`'s compartment: it is
/// that Patient, or its compartment parameters reference that Patient and no other.
fn writes_within(st: &AppState, rtype: &str, id: &str, body: &Value, pid: &str) -> bool {
    let links = links(st, rtype);
    let rows = index::rows_of(&st.search, rtype, &links, body);
    let mut mine = rtype == PATIENT && id == pid;
    if rtype == PATIENT && !mine {
        return false;
    }
    for code in links {
        let want = index::exact_prefix(rtype, &code, b'r', &[PATIENT, pid]);
        let any = index::exact_prefix(rtype, &code, b'r', &[PATIENT]);
        for r in rows.iter().filter(|r| r.starts_with(&any)) {
            if r.starts_with(&want) {
                mine = true;
            } else {
                return false;
            }
        }
    }
    mine
}

/// Whether a stored body (raw JSON) is within `grant`.
pub fn may_see(st: &AppState, grant: &Grant, rtype: &str, id: &str, stored: &[u8]) -> Result<bool, ApiError> {
    match grant {
        Grant::All => Ok(true),
        Grant::Patient(pid) => {
            let body: Value = serde_json::from_slice(stored).map_err(|e| StoreError::Corrupt(format!("stored body of {rtype}/{id}: {e}")))?;
            Ok(in_compartment(st, rtype, id, &body, pid))
        }
    }
}

fn outside(what: &str, grant: &Grant) -> ApiError {
    let pid = match grant {
        Grant::Patient(p) => p.as_str(),
        Grant::All => "",
    };
    AuthError::Forbidden(format!("{what} is not in the compartment of Patient/{pid} (the token's patient/ scopes reach only that)")).into()
}

/// 403 unless a stored body is within `grant`.
pub fn check_stored(st: &AppState, grant: &Grant, rtype: &str, id: &str, stored: &[u8]) -> Result<(), ApiError> {
    if may_see(st, grant, rtype, id, stored)? {
        Ok(())
    } else {
        Err(outside(&format!("{rtype}/{id}"), grant))
    }
}

/// The doc numbers of `rtype` in `Patient/pid`'s compartment (what a search may return).
pub fn members(st: &AppState, store: &Store, rtype: &str, pid: &str) -> Result<Ids, ApiError> {
    let tree = store.tree();
    let mut out = Ids::new();
    for code in links(st, rtype) {
        out |= query::referrer_docs(tree, rtype, &code, PATIENT, pid)?;
    }
    if rtype == PATIENT {
        if let Some(doc) = crate::search::posting::docnum(tree, PATIENT, pid).map_err(StoreError::from)? {
            out.insert(doc);
        }
    }
    Ok(out)
}

/// The restriction a search on `rtype` runs under: `None` for every resource, else the members.
pub fn search_scope(ctx: &Ctx, st: &AppState, op: Op, rtype: &str) -> Result<(Grant, Option<Ids>), ApiError> {
    match require_ctx(ctx, st, op, rtype)? {
        Grant::All => Ok((Grant::All, None)),
        Grant::Patient(pid) => {
            let within = members(st, &ctx.store, rtype, &pid)?;
            Ok((Grant::Patient(pid), Some(within)))
        }
    }
}

/// Chains and `_has` read other types: the caller must be allowed to search them, and under a
/// `patient/` grant they read only that compartment ([`query::with_link_scope`]). Returns the
/// per-type limits to run the search with.
pub fn link_scope(ctx: &Ctx, st: &AppState, q: &query::Query, scope: &mut HashMap<String, Ids>) -> Result<(), ApiError> {
    for t in q.linked_types() {
        if scope.contains_key(&t) {
            continue;
        }
        if let (_, Some(within)) = search_scope(ctx, st, Op::SEARCH_TYPE, &t)? {
            scope.insert(t, within);
        }
    }
    Ok(())
}

/// The types a bulk export may read for this caller: each needs a search grant on every
/// resource of the type (a `patient/` scope does not reach bulk export). `explicit`: the client
/// listed them (`_type`), so one it may not read is a 403; otherwise such types are left out
/// (and a caller who may read none gets a 403).
pub fn export_types(ctx: &Ctx, st: &AppState, candidates: Vec<String>, explicit: bool) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::with_capacity(candidates.len());
    for t in candidates {
        match require_ctx(ctx, st, Op::SEARCH_TYPE, &t) {
            Ok(Grant::All) => out.push(t),
            // A compartment-limited caller does not start a bulk export, even of the shared
            // types it may read: name `_type`s it has system/ or user/ access to.
            Ok(Grant::Patient(_)) => {
                return Err(AuthError::Forbidden(format!("bulk export of {t} needs system/ or user/ access to every {t}; patient/ scopes reach one compartment")).into())
            }
            Err(e) if explicit => return Err(e),
            _ => {}
        }
    }
    if out.is_empty() {
        return Err(AuthError::Forbidden(format!("{} may not bulk export any of the requested types", ctx.principal.subject)).into());
    }
    Ok(out)
}

/// The owner an export job records for its caller: how they authenticated and who they are
/// (an API key and a token subject of the same name are different owners). Every token has a
/// `sub` ([`crate::auth::jwt`] refuses one without).
pub fn job_owner(principal: &Principal) -> Result<String, ApiError> {
    let via = match principal.via {
        crate::auth::Via::Open => "open",
        crate::auth::Via::Jwt => "jwt",
        crate::auth::Via::ApiKey => "key",
    };
    Ok(format!("{via}:{}", principal.subject))
}

/// Whether `principal` may follow an export job started by `owner` (status, files, cancel):
/// the same caller, or an operator.
pub fn owns_job(principal: &Principal, owner: &str) -> bool {
    principal.admin || job_owner(principal).is_ok_and(|me| me == owner)
}

/// Whether `principal`'s grant today still covers an export job's data: search of every type
/// it exports over all resources (not one compartment), and read of its Group. The owner of a
/// job who comes back with a narrower token (or whose groups changed) no longer reaches it.
pub fn grant_covers_job(principal: &Principal, st: &AppState, types: &[String], group: Option<&str>) -> bool {
    if principal.admin {
        return true;
    }
    let all = |op: Op, t: &str| matches!(require(principal, st, op, t), Ok(Grant::All));
    types.iter().all(|t| all(Op::SEARCH_TYPE, t)) && group.is_none_or(|_| all(Op::READ, "Group"))
}

/// 403 unless the caller may search every resource of each type a `_typeFilter` reads
/// through chains and `_has` (the filter would reveal them otherwise).
pub fn export_filter_links(ctx: &Ctx, st: &AppState, q: &query::Query) -> Result<(), ApiError> {
    for t in q.linked_types() {
        match require_ctx(ctx, st, Op::SEARCH_TYPE, &t)? {
            Grant::All => {}
            Grant::Patient(_) => return Err(AuthError::Forbidden(format!("a _typeFilter may not read {t} through a chain or _has: your access to it is limited to a compartment")).into()),
        }
    }
    Ok(())
}

/// 403 unless the caller may do the system-level `op` on at least one type.
pub fn require_some_type(ctx: &Ctx, st: &AppState, op: Op) -> Result<(), ApiError> {
    if st.defs.types.iter().any(|t| require_ctx(ctx, st, op, t).is_ok()) {
        Ok(())
    } else {
        Err(AuthError::Forbidden(format!("{} may not use {} on any type", ctx.principal.subject, op.code)).into())
    }
}

/// What of a history the caller may see: types it may read this way and, under a `patient/`
/// grant, versions in the compartment (not deletions, which carry no body to decide by). Given
/// to the history scan, so hidden entries neither fill a page nor become its cursors.
///
/// Under a `patient/` grant a version's body is read only for resources now in the compartment
/// (a doc number test against [`members`], computed once per type): the scan of other patients'
/// versions costs a lookup each, not a parse.
pub fn history_visibility<'a>(ctx: &'a Ctx, st: &'a AppState, op: Op) -> impl Fn(&HistoryEntry) -> Result<bool, StoreError> + 'a {
    let grants: std::cell::RefCell<HashMap<String, Option<(Grant, Option<Ids>)>>> = std::cell::RefCell::new(HashMap::new());
    let as_store = |e: ApiError| StoreError::Corrupt(e.to_string());
    move |e: &HistoryEntry| {
        if ctx.principal.via == crate::auth::Via::Open {
            return Ok(true);
        }
        let mut grants = grants.borrow_mut();
        let grant = match grants.get(&e.rtype) {
            Some(g) => g,
            None => {
                let g = match require_ctx(ctx, st, op, &e.rtype) {
                    Ok(Grant::Patient(pid)) => Some((Grant::Patient(pid.clone()), Some(members(st, &ctx.store, &e.rtype, &pid).map_err(as_store)?))),
                    Ok(g) => Some((g, None)),
                    Err(_) => None,
                };
                grants.entry(e.rtype.clone()).or_insert(g)
            }
        };
        match grant {
            None => Ok(false),
            Some((Grant::All, _)) => Ok(true),
            Some((g, within)) => {
                if e.record.is_delete() {
                    return Ok(false);
                }
                let doc = crate::search::posting::docnum(ctx.store.tree(), &e.rtype, &e.id).map_err(StoreError::from)?;
                if !doc.is_some_and(|d| within.as_ref().is_some_and(|w| w.contains(d))) {
                    return Ok(false);
                }
                may_see(st, g, &e.rtype, &e.id, e.record.body()).map_err(as_store)
            }
        }
    }
}

/// The interaction a write is.
fn write_op(action: Action) -> Op {
    match action {
        Action::Create => Op::CREATE,
        Action::Update => Op::UPDATE,
        Action::Patch => Op::PATCH,
        Action::Delete => Op::DELETE,
    }
}

/// Confines a conditional write's search to a patient's compartment, inside the replicated
/// condition (`_in-compartment`), when the caller's write or search grant on the type is a
/// `patient/` one: apply then decides within the compartment on every node, whatever was
/// written between this request and apply. Call it before anything runs the condition.
pub fn confine(principal: &Principal, st: &AppState, rtype: &str, action: Action, cond: &mut Condition) -> Result<(), ApiError> {
    if let Some(pid) = patient_limited(principal, st, rtype, &[write_op(action), Op::SEARCH_TYPE]) {
        cond.query.push(("_in-compartment".into(), format!("{PATIENT}/{pid}")));
    }
    Ok(())
}

/// Whether any of `principal`'s grants on `rtype` for these interactions is a `patient/` one.
fn patient_limited(principal: &Principal, st: &AppState, rtype: &str, ops: &[Op]) -> Option<String> {
    ops.iter().find_map(|op| match require(principal, st, *op, rtype) {
        Ok(Grant::Patient(pid)) => Some(pid),
        _ => None,
    })
}

/// The conditional references (`Type?search`) in `v`: the types they search.
fn conditional_reference_types(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                match (k.as_str(), x.as_str()) {
                    ("reference", Some(r)) if r.contains('?') => out.push(r.split('?').next().unwrap_or("").rsplit('/').next().unwrap_or("").to_string()),
                    _ => conditional_reference_types(x, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| conditional_reference_types(x, out)),
        _ => {}
    }
}

/// One write to check.
pub struct WriteCheck<'a> {
    pub rtype: &'a str,
    pub action: Action,
    pub id: Option<&'a str>,
    pub body: Option<&'a Value>,
    pub condition: Option<&'a Condition>,
    /// A bundle entry's fullUrl (references to it are rewritten at apply).
    pub full_url: Option<&'a str>,
}

/// May `principal` make this write? A condition is a search: it needs search permission on the
/// type and on what its chains read; so does each conditional reference in the body (resolved at
/// apply). Under a `patient/` grant (write, or search for a condition):
/// - the new body must reference that patient and no other through its compartment parameters
///   (a Patient only itself, and none is created), and its references must be literal;
/// - the resource it replaces must be that patient's alone in the same sense (a resource that
///   merely mentions the patient next to others is not theirs to change);
/// - conditional update and delete are refused (apply could only confine them to resources that
///   mention the patient); a conditional create is confined ([`confine`]) and may not chain into
///   compartment types;
/// - a bundle entry's fullUrl must be a `urn:`.
///
/// Returns the version the check saw of an existing target, so that the caller can pin the write
/// to it (`If-Match`) and a resource moved out of the compartment meanwhile is not written.
pub fn check_write(principal: &Principal, st: &AppState, store: &Store, w: &WriteCheck) -> Result<Option<u64>, ApiError> {
    if principal.via == crate::auth::Via::Open {
        return Ok(None);
    }
    let rtype = w.rtype;
    require(principal, st, write_op(w.action), rtype)?;
    // A Subscription's criteria are matched, and with a payload its matches sent, outside its
    // author's later requests: the author must be able to search the criteria's type as a whole
    // (a patient/ grant's compartment could not be kept).
    if let Some(criteria) = (rtype == "Subscription" && st.cfg.subscriptions.enabled).then(|| w.body.and_then(|b| b.get("criteria")).and_then(Value::as_str)).flatten() {
        let ctype = criteria.split('?').next().unwrap_or_default();
        if let Grant::Patient(_) = require(principal, st, Op::SEARCH_TYPE, ctype)? {
            return Err(AuthError::Forbidden(format!("a Subscription on {ctype} notifies outside your requests: your access to {ctype} is limited to a patient's compartment")).into());
        }
    }
    let mut linked = Vec::new();
    if let Some(cond) = w.condition {
        require(principal, st, Op::SEARCH_TYPE, rtype)?;
        if let Ok(q) = query::parse(&st.search, rtype, &cond.query, false) {
            linked = q.linked_types();
            for t in &linked {
                require(principal, st, Op::SEARCH_TYPE, t)?;
            }
        }
    }
    let mut searched = Vec::new();
    if let Some(body) = w.body {
        conditional_reference_types(body, &mut searched);
        for t in &searched {
            require(principal, st, Op::SEARCH_TYPE, t)?;
        }
    }
    // What a condition's chains or a conditional reference read at apply is not confined: a
    // patient/ search grant on those types may not be used that way.
    if let Some(t) = linked.iter().chain(&searched).find(|t| patient_limited(principal, st, t, &[Op::SEARCH_TYPE]).is_some()) {
        return Err(AuthError::Forbidden(format!("a condition or conditional reference may not search {t}: your access to it is limited to a patient's compartment")).into());
    }
    let ops: &[Op] = if w.condition.is_some() { &[write_op(w.action), Op::SEARCH_TYPE] } else { &[write_op(w.action)] };
    let Some(pid) = patient_limited(principal, st, rtype, ops) else { return Ok(None) };
    let forbid = |m: String| -> ApiError { AuthError::Forbidden(m).into() };
    if rtype == PATIENT && w.action == Action::Create {
        return Err(forbid("patient/ scopes do not create Patients".into()));
    }
    if w.condition.is_some() && matches!(w.action, Action::Update | Action::Delete) {
        return Err(forbid("conditional update and delete are not available under patient/ scopes: address the resource by id".into()));
    }
    if linked.iter().any(|t| kinship(st, t) == Kinship::Member) {
        return Err(forbid("under patient/ scopes a condition may not chain into types of the Patient compartment".into()));
    }
    if w.full_url.is_some_and(|u| !u.starts_with("urn:")) {
        return Err(forbid("under patient/ scopes a bundle entry's fullUrl must be a urn:uuid or urn:oid".into()));
    }
    if let Some(body) = w.body {
        // A conditional reference is resolved at apply, after this check: it could point anywhere.
        if !searched.is_empty() {
            return Err(forbid("under patient/ scopes references must be literal (Type/id or urn:), not conditional (Type?search)".into()));
        }
        let body_id = body.get("id").and_then(Value::as_str).or(w.id).unwrap_or("");
        if !writes_within(st, rtype, body_id, body, &pid) {
            return Err(forbid(format!("the {rtype} written must reference Patient/{pid}, and no other patient, through its compartment parameters")));
        }
    }
    let mut seen = None;
    if let Some(id) = w.id.filter(|i| !i.is_empty()) {
        match store.read(rtype, id) {
            Ok((cur, rec)) => {
                let stored: Value = serde_json::from_slice(rec.body()).map_err(|e| StoreError::Corrupt(format!("stored body of {rtype}/{id}: {e}")))?;
                if !writes_within(st, rtype, id, &stored, &pid) {
                    return Err(outside(&format!("{rtype}/{id} (or not wholly)"), &Grant::Patient(pid.clone())));
                }
                seen = Some(cur.version);
            }
            Err(StoreError::NotFound { .. } | StoreError::Gone { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(seen)
}

/// Pins a write to the version [`check_write`] saw (`seen`, under a `patient/` grant): without
/// an `If-Match` the write takes it; with another one it is refused now (412), since only the
/// version checked is known to be the patient's.
pub fn pin(if_match: &mut Option<u64>, conditional: bool, seen: Option<u64>, rtype: &str, id: Option<&str>) -> Result<(), ApiError> {
    match (*if_match, seen) {
        (None, s) if !conditional => *if_match = s,
        (Some(expected), Some(s)) if expected != s => {
            return Err(StoreError::VersionConflict { rtype: rtype.into(), id: id.unwrap_or_default().into(), expected, current: Some(s) }.into())
        }
        _ => {}
    }
    Ok(())
}

/// The principal a request runs as: the one the middleware verified, or (only when auth is off)
/// the open principal. With auth on and no verified principal, one that may do nothing.
pub fn principal_of(req: &actix_web::HttpRequest, st: &AppState) -> Arc<Principal> {
    use actix_web::HttpMessage;
    if let Some(p) = req.extensions().get::<Arc<Principal>>() {
        return p.clone();
    }
    if st.auth.enabled() {
        Arc::new(Principal { via: crate::auth::Via::Jwt, subject: "unauthenticated".into(), groups: None, scopes: None, patient: None, tenant: None, admin: false })
    } else {
        st.auth.open()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_pinned_to_the_version_checked() {
        let mut m = None;
        pin(&mut m, false, Some(3), "Observation", Some("a")).unwrap();
        assert_eq!(m, Some(3), "no If-Match: the version checked");
        let mut m = None;
        pin(&mut m, true, Some(3), "Observation", None).unwrap();
        assert_eq!(m, None, "a condition is decided at apply");
        let mut m = Some(3);
        pin(&mut m, false, Some(3), "Observation", Some("a")).unwrap();
        let mut m = Some(4);
        assert!(pin(&mut m, false, Some(3), "Observation", Some("a")).is_err(), "a later version was not checked");
        let mut m = Some(4);
        pin(&mut m, false, None, "Observation", Some("a")).unwrap();
        assert_eq!(m, Some(4), "nothing checked (no patient/ grant): the client's If-Match stands");
    }
}
