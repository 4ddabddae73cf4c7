//! `$meta`, `$meta-add` and `$meta-delete` (operation-resource-meta*): the profiles, tags and
//! security labels of a resource, of a version, or in use across a type or the whole system.
//!
//! - Instance and version `$meta` read the stored `meta` (read / vread rights).
//! - Type and system `$meta` list the distinct values the search index holds for `_profile`,
//!   `_tag` and `_security` (at most [`MAX_VALUES`] of each, else 422 too-costly), without
//!   reading a resource; they need search rights on each type and a grant over the whole type
//!   (a `patient/`-scoped caller gets 403: the list would describe other patients' data).
//! - `$meta-add` / `$meta-delete` change the current version's `meta` through the ordinary
//!   write path (update rights, a Raft-replicated update pinned to the version read, re-read on
//!   a concurrent write), so the change is a new version in the history. Kiln never rewrites a
//!   stored version: the version-level forms answer 422.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Map, Value};

use super::params::{return_meta, Inputs};
use super::OperationError;
use crate::actors::{WriteError, WriteIntent};
use crate::http::guard;
use crate::auth::{Grant, Op};
use crate::http::error::ApiError;
use crate::http::crud::{send_write, type_and_id};
use crate::http::negotiate::Ctx;
use crate::http::AppState;
use crate::machine::command::Action;
use crate::store::StoreError;

/// Distinct values of each list that type and system `$meta` report at most.
pub const MAX_VALUES: usize = 10_000;

fn respond(ctx: &Ctx, v: &Value) -> Result<HttpResponse, ApiError> {
    let out = serde_json::to_vec(v).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(ctx.respond(HttpResponse::Ok(), out))
}

/// The profile / tag / security part of a stored body's `meta` (empty lists left out).
fn labels(body: &[u8]) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| StoreError::Corrupt(format!("stored body: {e}")))?;
    let mut out = Map::new();
    if let Some(meta) = v.get("meta").and_then(Value::as_object) {
        for (k, x) in meta {
            out.insert(k.clone(), x.clone());
        }
    }
    Ok(Value::Object(out))
}

pub async fn instance(req: HttpRequest, path: web::Path<(String, String)>, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    crate::http::negotiate::read_barrier(&req, &st).await?;
    let (rtype, id) = type_and_id(&st, &path.0, &path.1)?;
    let grant = guard::require_ctx(&ctx, &st, Op::READ, rtype)?;
    let (_, record) = ctx.store.read(rtype, id)?;
    guard::check_stored(&st, &grant, rtype, id, record.body())?;
    respond(&ctx, &return_meta(labels(record.body())?))
}

pub async fn version(req: HttpRequest, path: web::Path<(String, String, String)>, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    crate::http::negotiate::read_barrier(&req, &st).await?;
    let (rtype, id) = type_and_id(&st, &path.0, &path.1)?;
    let version: u64 = path.2.parse().map_err(|_| OperationError::BadParameter { name: "version id".into(), reason: format!("'{}' is not a version number", path.2) })?;
    let grant = guard::require_ctx(&ctx, &st, Op::VREAD, rtype)?;
    let record = ctx.store.vread(rtype, id, version)?;
    guard::check_stored(&st, &grant, rtype, id, record.body())?;
    respond(&ctx, &return_meta(labels(record.body())?))
}

pub async fn type_level(req: HttpRequest, path: web::Path<String>, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    let rtype = st.defs.resource_type(&path)?;
    in_use(&ctx, &st, vec![rtype], Op::SEARCH_TYPE).await
}

pub async fn system(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    let types: Vec<&'static str> = st.defs.types.iter().copied().collect();
    in_use(&ctx, &st, types, Op::SEARCH_SYSTEM).await
}

/// The labels in use on `types`, read on the pool of costly work ([`crate::http::work`]).
async fn in_use(ctx: &Ctx, st: &web::Data<AppState>, types: Vec<&'static str>, op: Op) -> Result<HttpResponse, ApiError> {
    let (c, s) = (ctx.clone(), st.clone());
    let meta = crate::http::work::block(ctx, st, move || labels_in_use(&c, &s, &types, op)).await?;
    respond(ctx, &return_meta(meta))
}

/// The labels in use on `types` (each needs `op` rights over the whole type).
fn labels_in_use(ctx: &Ctx, st: &AppState, types: &[&'static str], op: Op) -> Result<Value, ApiError> {
    let mut profiles = std::collections::BTreeSet::new();
    let mut tags = std::collections::BTreeSet::new();
    let mut security = std::collections::BTreeSet::new();
    let too_many = |what: &str| ApiError::from(OperationError::TooCostly(format!("more than {MAX_VALUES} distinct {what} are in use; search with _tag / _security / _profile instead")));
    for t in types {
        match guard::require_ctx(ctx, st, op, t) {
            Ok(Grant::All) => {}
            Ok(Grant::Patient(_)) => {
                return Err(crate::auth::AuthError::Forbidden(format!("$meta over {t} lists the labels of every {t}; a patient-scoped grant reads only its compartment")).into())
            }
            // System level: types the caller may not search are left out; type level: refused.
            Err(e) if types.len() == 1 => return Err(e),
            Err(_) => continue,
        }
        let tree = ctx.store.tree();
        for (code, kind, set, what) in [("_tag", b't', &mut tags, "tags"), ("_security", b't', &mut security, "security labels"), ("_profile", b'u', &mut profiles, "profiles")] {
            let found = crate::search::query::distinct_values(tree, t, code, kind, MAX_VALUES)?.ok_or_else(|| too_many(what))?;
            set.extend(found);
            if set.len() > MAX_VALUES {
                return Err(too_many(what));
            }
        }
    }
    let coding = |parts: &Vec<String>| {
        // Token rows hold (code, system); an empty system is none.
        let mut c = Map::new();
        if let Some(system) = parts.get(1).filter(|s| !s.is_empty()) {
            c.insert("system".into(), json!(system));
        }
        c.insert("code".into(), json!(parts.first().cloned().unwrap_or_default()));
        Value::Object(c)
    };
    let mut meta = Map::new();
    if !profiles.is_empty() {
        meta.insert("profile".into(), profiles.iter().filter_map(|p| p.first().cloned()).map(Value::String).collect());
    }
    if !security.is_empty() {
        meta.insert("security".into(), security.iter().map(coding).collect());
    }
    if !tags.is_empty() {
        meta.insert("tag".into(), tags.iter().map(coding).collect());
    }
    Ok(Value::Object(meta))
}

fn same_coding(a: &Value, b: &Value) -> bool {
    a.get("system") == b.get("system") && a.get("code") == b.get("code")
}

/// Adds (or with `remove`, takes out) the profiles, tags and security labels of `change` in the
/// `meta` of `body`. Returns whether anything changed.
pub fn merge(body: &mut Value, change: &Value, remove: bool) -> Result<bool, OperationError> {
    let obj = body.as_object_mut().ok_or_else(|| OperationError::NotSupported("the stored resource is not an object".into()))?;
    let meta = obj.entry("meta").or_insert_with(|| Value::Object(Map::new()));
    let meta = meta.as_object_mut().ok_or_else(|| OperationError::NotSupported("the stored meta is not an object".into()))?;
    let mut changed = false;
    for key in ["profile", "tag", "security"] {
        let Some(given) = change.get(key) else { continue };
        let given = given.as_array().ok_or_else(|| OperationError::BadParameter { name: format!("meta.{key}"), reason: "must be a list".into() })?;
        let list = meta.entry(key).or_insert_with(|| Value::Array(Vec::new()));
        let Some(list) = list.as_array_mut() else { continue };
        for g in given {
            let matches = |x: &Value| if key == "profile" { x == g } else { same_coding(x, g) };
            if key != "profile" && g.get("code").is_none() && g.get("system").is_none() {
                return Err(OperationError::BadParameter { name: format!("meta.{key}"), reason: "each Coding needs a system or a code".into() });
            }
            if remove {
                let before = list.len();
                list.retain(|x| !matches(x));
                changed |= list.len() != before;
            } else if !list.iter().any(matches) {
                list.push(g.clone());
                changed = true;
            }
        }
        if list.is_empty() {
            meta.shift_remove(key);
        }
    }
    let empty = meta.keys().all(|k| k == "versionId" || k == "lastUpdated");
    if empty {
        obj.shift_remove("meta");
    }
    Ok(changed)
}

pub async fn add(req: HttpRequest, path: web::Path<(String, String)>, payload: web::Payload, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    change(req, path, payload, st, false).await
}

pub async fn delete(req: HttpRequest, path: web::Path<(String, String)>, payload: web::Payload, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    change(req, path, payload, st, true).await
}

/// `$meta-add` / `$meta-delete` on a version: refused (a stored version is never rewritten).
pub async fn version_change() -> Result<HttpResponse, ApiError> {
    Err(OperationError::NotSupported(
        "Kiln never rewrites a stored version: use $meta-add / $meta-delete on the resource ([type]/[id]), which records the change as a new version".into(),
    )
    .into())
}

async fn change(req: HttpRequest, path: web::Path<(String, String)>, payload: web::Payload, st: web::Data<AppState>, remove: bool) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    let (rtype, id) = type_and_id(&st, &path.0, &path.1)?;
    crate::http::negotiate::require_json_body(&req)?;
    let body = crate::http::negotiate::read_json(payload, &st.cfg.limits).await?;
    let inputs = Inputs::new(Some(body), Vec::new());
    let wanted = inputs.meta("meta")?.clone();
    // Rights first: a caller who may not update the type learns nothing about the resource.
    guard::require_ctx(&ctx, &st, Op::UPDATE, rtype)?;
    for attempt in 1..=crate::http::patch::MAX_ATTEMPTS {
        let (cur, record) = ctx.store.read(rtype, id)?;
        let mut resource: Value = serde_json::from_slice(record.body()).map_err(|e| StoreError::Corrupt(format!("stored body: {e}")))?;
        if !merge(&mut resource, &wanted, remove)? {
            // Nothing to change: no new version; the caller still needs read rights to see meta.
            let grant = guard::require_ctx(&ctx, &st, Op::READ, rtype)?;
            guard::check_stored(&st, &grant, rtype, id, record.body())?;
            return respond(&ctx, &return_meta(labels(record.body())?));
        }
        let intent = WriteIntent { action: Action::Update, id: Some(id.to_string()), body: Some(resource), if_match: Some(cur.version), condition: None };
        match send_write(&ctx, &st, rtype, intent).await {
            Ok((_, applied)) => {
                let body = applied.body.ok_or_else(|| StoreError::Corrupt("an update applied without a body".into()))?;
                // The resulting meta only to a caller who may read the resource.
                let meta = if guard::may_return(&ctx, &st, rtype, id, Some(&body)) { labels(&body)? } else { json!({}) };
                return respond(&ctx, &return_meta(meta));
            }
            Err(ApiError::Write(WriteError::Store(StoreError::VersionConflict { .. }))) if attempt < crate::http::patch::MAX_ATTEMPTS => crate::http::patch::backoff(attempt).await,
            Err(e) => return Err(e),
        }
    }
    Err(crate::http::RequestError::PreconditionFailed(format!("{rtype}/{id} kept changing; its meta was not changed")).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_once_and_removes() {
        let mut r = json!({"resourceType": "Patient", "id": "p", "meta": {"versionId": "1", "tag": [{"system": "s", "code": "a"}]}});
        let change = json!({"tag": [{"system": "s", "code": "a", "display": "A"}, {"system": "s", "code": "b"}], "profile": ["http://x/p"], "security": [{"system": "v", "code": "R"}]});
        assert!(merge(&mut r, &change, false).unwrap());
        assert_eq!(r["meta"]["tag"], json!([{"system": "s", "code": "a"}, {"system": "s", "code": "b"}]));
        assert_eq!(r["meta"]["profile"], json!(["http://x/p"]));
        assert!(!merge(&mut r, &change, false).unwrap(), "adding what is there changes nothing");
        assert!(merge(&mut r, &change, true).unwrap());
        assert_eq!(r.get("meta"), None, "an emptied meta goes (versionId is the server's): {r}");
        assert!(!merge(&mut r, &change, true).unwrap());
        assert!(merge(&mut r, &json!({"tag": [{"display": "x"}]}), false).is_err());
        assert!(merge(&mut r, &json!({"tag": {"code": "x"}}), false).is_err());
    }
}
