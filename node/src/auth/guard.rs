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

use super::{AuthError, Grant, Kinship, Op, Principal, SHARED_TYPES};
use crate::error::ApiError;
use crate::http::negotiate::Ctx;
use crate::http::AppState;
use crate::search::index;
use crate::search::query::{self, Ids};
use crate::store::command::{Action, Condition};
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
    Ok(principal.grant(&st.auth.rules, op, rtype, kinship(st, rtype))?)
}

/// [`require`] for the caller of `ctx`.
pub fn require_ctx(ctx: &Ctx, st: &AppState, op: Op, rtype: &str) -> Result<Grant, ApiError> {
    require(&ctx.principal, st, op, rtype)
}

/// Whether the caller may read `rtype` at all (a write answers with the resource only then).
pub fn may_read(ctx: &Ctx, st: &AppState, rtype: &str) -> bool {
    require_ctx(ctx, st, Op::READ, rtype).is_ok()
}

/// Whether the resource `rtype/id` with this JSON is in `Patient/pid`'s compartment: it is that
/// Patient, or one of its compartment parameters references it.
pub fn in_compartment(st: &AppState, rtype: &str, id: &str, body: &Value, pid: &str) -> bool {
    if rtype == PATIENT && id == pid {
        return true;
    }
    let rows = index::rows(&st.search, rtype, body);
    links(st, rtype).iter().any(|code| {
        let want = index::exact_prefix(rtype, code, b'r', &[PATIENT, pid]);
        rows.iter().any(|r| r.starts_with(&want))
    })
}

/// Whether a body a `patient/` caller writes stays wholly in `Patient/pid`'s compartment: it is
/// that Patient, or its compartment parameters reference that Patient and no other.
fn writes_within(st: &AppState, rtype: &str, id: &str, body: &Value, pid: &str) -> bool {
    if rtype == PATIENT {
        return id == pid;
    }
    let rows = index::rows(&st.search, rtype, body);
    let mut mine = false;
    for code in links(st, rtype) {
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

/// Whether `v` holds a conditional reference (`"reference": "Type?search"`).
fn has_conditional_reference(v: &Value) -> bool {
    match v {
        Value::Object(o) => o.iter().any(|(k, x)| (k == "reference" && x.as_str().is_some_and(|r| r.contains('?'))) || has_conditional_reference(x)),
        Value::Array(a) => a.iter().any(has_conditional_reference),
        _ => false,
    }
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

/// 403 unless the caller may do the system-level `op` on at least one type.
pub fn require_some_type(ctx: &Ctx, st: &AppState, op: Op) -> Result<(), ApiError> {
    if st.defs.types.iter().any(|t| require_ctx(ctx, st, op, t).is_ok()) {
        Ok(())
    } else {
        Err(AuthError::Forbidden(format!("{} may not use {} on any type", ctx.principal.subject, op.code)).into())
    }
}

/// Drops the history entries the caller may not see: types it may not read this way, and under
/// a `patient/` grant versions outside the compartment (and deletions, which carry no body to
/// decide by).
pub fn filter_history(ctx: &Ctx, st: &AppState, op: Op, entries: &mut Vec<HistoryEntry>) -> Result<(), ApiError> {
    if ctx.principal.via == super::Via::Open {
        return Ok(());
    }
    let mut grants: HashMap<String, Option<Grant>> = HashMap::new();
    let mut keep = Vec::with_capacity(entries.len());
    for e in entries.drain(..) {
        let grant = grants.entry(e.rtype.clone()).or_insert_with(|| require_ctx(ctx, st, op, &e.rtype).ok());
        let visible = match grant {
            None => false,
            Some(Grant::All) => true,
            Some(g @ Grant::Patient(_)) => !e.record.is_delete() && may_see(st, g, &e.rtype, &e.id, e.record.body())?,
        };
        if visible {
            keep.push(e);
        }
    }
    *entries = keep;
    Ok(())
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

/// Under a `patient/` grant, confines a conditional write's search to that patient's
/// compartment, inside the replicated condition (`_in-compartment`): apply then decides within
/// the compartment on every node, whatever was written between this request and apply.
pub fn confine(principal: &Principal, st: &AppState, rtype: &str, action: Action, cond: &mut Condition) -> Result<(), ApiError> {
    if let Grant::Patient(pid) = require(principal, st, write_op(action), rtype)? {
        cond.query.push(("_in-compartment".into(), format!("{PATIENT}/{pid}")));
    }
    Ok(())
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
/// type and on what its chains read. Under a `patient/` grant: the new body must reference that
/// patient and no other through its compartment parameters (a Patient only itself, and none is
/// created), the resource it replaces and every resource a condition matches now must be in the
/// compartment, and a bundle entry's fullUrl must be a `urn:` (another would redirect references).
/// Returns the version the check saw of an existing target, so that the caller can pin the write
/// to it (`If-Match`) and a resource moved out of the compartment meanwhile is not written.
pub fn check_write(principal: &Principal, st: &AppState, store: &Store, w: &WriteCheck) -> Result<Option<u64>, ApiError> {
    let rtype = w.rtype;
    let grant = require(principal, st, write_op(w.action), rtype)?;
    if let Some(cond) = w.condition {
        require(principal, st, Op::SEARCH_TYPE, rtype)?;
        if let Ok(q) = query::parse(&st.search, rtype, &cond.query, false) {
            for t in q.linked_types() {
                require(principal, st, Op::SEARCH_TYPE, &t)?;
            }
        }
    }
    let Grant::Patient(pid) = &grant else { return Ok(None) };
    if rtype == PATIENT && w.action == Action::Create {
        return Err(AuthError::Forbidden("patient/ scopes do not create Patients".into()).into());
    }
    if w.full_url.is_some_and(|u| !u.starts_with("urn:")) {
        return Err(AuthError::Forbidden("under patient/ scopes a bundle entry's fullUrl must be a urn:uuid or urn:oid".into()).into());
    }
    if let Some(body) = w.body {
        // A conditional reference (`Patient?identifier=…`) is resolved at apply, after this check:
        // it could point anywhere.
        if has_conditional_reference(body) {
            return Err(AuthError::Forbidden("under patient/ scopes references must be literal (Type/id or urn:), not conditional (Type?search)".into()).into());
        }
        let body_id = body.get("id").and_then(Value::as_str).or(w.id).unwrap_or("");
        if !writes_within(st, rtype, body_id, body, pid) {
            return Err(AuthError::Forbidden(format!("the {rtype} written must reference Patient/{pid}, and no other patient, through its compartment parameters")).into());
        }
    }
    let mut seen = None;
    if let Some(id) = w.id.filter(|i| !i.is_empty()) {
        match store.read(rtype, id) {
            Ok((cur, rec)) => {
                check_stored(st, &grant, rtype, id, rec.body())?;
                seen = Some(cur.version);
            }
            Err(StoreError::NotFound { .. } | StoreError::Gone { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if let Some(cond) = w.condition {
        let ids = query::condition_ids(&st.search, store.tree(), rtype, &cond.query)?;
        for found in ids {
            let (_, rec) = store.read(rtype, &found)?;
            if !may_see(st, &grant, rtype, &found, rec.body())? {
                return Err(outside(&format!("a {rtype} the condition matches"), &grant));
            }
        }
    }
    Ok(seen)
}

/// The principal a request runs as: the one the middleware verified, or (only when auth is off)
/// the open principal. With auth on and no verified principal, one that may do nothing.
pub fn principal_of(req: &actix_web::HttpRequest, st: &AppState) -> Arc<Principal> {
    use actix_web::HttpMessage;
    if let Some(p) = req.extensions().get::<Arc<Principal>>() {
        return p.clone();
    }
    if st.auth.enabled() {
        Arc::new(Principal { via: super::Via::Jwt, subject: "unauthenticated".into(), groups: None, scopes: None, patient: None, tenant: None, admin: false })
    } else {
        st.auth.open()
    }
}
