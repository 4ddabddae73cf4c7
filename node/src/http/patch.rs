//! PATCH with JSON Patch (RFC 6902) or FHIRPath Patch (a `Parameters` body, sent as
//! `application/fhir+json`; [`super::fhirpath_patch`]), on an instance (`PATCH /{type}/{id}`) or conditionally
//! (`PATCH /{type}?search`: exactly one match is patched, 0 → 404, 2+ → 412). The proposer reads
//! the current version, applies the patch and proposes the result as an update conditioned on
//! that version, so a concurrent write is never lost: on a conflict the patch is re-applied to the
//! new version (unless the client sent `If-Match`, which then answers 412). A conditional patch
//! finds its match on this node and patches it, then proposes the result as a conditional write:
//! at apply the search runs again and the patch is written only if it still selects exactly that
//! resource at the version read (else the whole is retried, as for a conflict).

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use super::crud::{send_write, write_response, InstanceWrite};
use super::fhirpath_patch::FhirPatch;
use super::negotiate::{self, Ctx};
use super::{AppState, RequestError};
use crate::actors::{WriteError, WriteIntent};
use crate::http::error::ApiError;
use crate::search::query;
use crate::machine::command::Action;
use crate::store::StoreError;

/// Attempts when concurrent writes keep moving the version.
pub const MAX_ATTEMPTS: usize = 16;

/// Waits a random time growing with `attempt` (up to ~64 ms), so that writers racing for one
/// resource do not keep colliding.
pub async fn backoff(attempt: usize) {
    let ceiling = 1u128 << attempt.min(6);
    let ms = uuid::Uuid::new_v4().as_u128() % ceiling;
    tokio::time::sleep(std::time::Duration::from_millis(ms as u64)).await;
}

pub async fn patch(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let InstanceWrite { ctx, rtype, id, if_match, exists } = InstanceWrite::new(&req, &st, &path)?;
    let ops = read_patch(&req, payload, &st).await?;
    if exists {
        // `If-Match: *`: any version, but the resource must exist (412, not 404, otherwise).
        super::crud::existing_version(&ctx.store, rtype, &id)?;
    }
    patch_and_respond(&ctx, &st, rtype, &id, &ops, if_match).await
}

/// `PATCH /{type}?search`.
pub async fn conditional(req: HttpRequest, path: web::Path<String>, payload: web::Payload, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    let rtype = st.defs.resource_type(&path)?;
    let if_match = negotiate::if_match(&req)?;
    let ops = read_patch(&req, payload, &st).await?;
    let mut cond = super::crud::condition(req.query_string(), "search", false)?;
    // The caller's rights before the search runs and the patch is applied (a refused patch must
    // not tell, by its outcome, what the resource holds); a patient/ caller's search is confined
    // to the compartment first.
    crate::http::guard::confine(&ctx.principal, &st, rtype, Action::Patch, &mut cond)?;
    crate::http::guard::check_write(&ctx.principal, &st, &ctx.store, &crate::http::guard::WriteCheck { rtype, action: Action::Patch, id: None, body: None, condition: Some(&cond), full_url: None })?;
    for attempt in 1..=MAX_ATTEMPTS {
        let id = match_one(&st, &ctx.store, rtype, &cond)?;
        let (body, version) = patched_off_worker(&st, &ctx.store, rtype, &id, &ops, if_match).await?;
        let intent = WriteIntent { action: Action::Patch, id: Some(id), body: Some(body), if_match: Some(version), condition: Some(cond.clone()) };
        match send_write(&ctx, &st, rtype, intent).await {
            Ok((id, applied)) => return write_response(&ctx, &st, rtype, &id, &applied),
            Err(ApiError::Write(WriteError::Store(StoreError::VersionConflict { .. }))) if if_match.is_none() && attempt < MAX_ATTEMPTS => backoff(attempt).await,
            Err(e) => return Err(e),
        }
    }
    Err(RequestError::PreconditionFailed(format!("{rtype}?{} kept changing; the patch was not applied", req.query_string())).into())
}

/// A patch document of either kind.
#[derive(Debug, Clone)]
pub enum PatchDoc {
    Json(json_patch::Patch),
    FhirPath(FhirPatch),
}

async fn read_patch(req: &HttpRequest, payload: web::Payload, st: &AppState) -> Result<PatchDoc, ApiError> {
    let fhirpath = negotiate::patch_kind(req)? == negotiate::PatchKind::FhirPath;
    let doc = negotiate::read_json(payload, &st.cfg.limits).await?;
    if fhirpath {
        Ok(PatchDoc::FhirPath(FhirPatch::parse(&doc, st.cfg.limits.max_patch_ops)?))
    } else {
        Ok(PatchDoc::Json(parse_patch(doc, st.cfg.limits.max_patch_ops)?))
    }
}

/// A JSON Patch document, refused when it has more than `max_ops` operations.
pub fn parse_patch(doc: Value, max_ops: usize) -> Result<json_patch::Patch, RequestError> {
    if let Some(ops) = doc.as_array() {
        if ops.len() > max_ops {
            return Err(RequestError::PatchTooCostly(format!("it has {} operations; the limit is {max_ops} (config limits.max_patch_ops)", ops.len())));
        }
    }
    serde_json::from_value(doc).map_err(|e| RequestError::InvalidPatch(e.to_string()))
}

/// Approximate serialized size of a JSON value in bytes (what a patch result is bounded by).
/// Iterative (an explicit stack): a patched document may be nested deeper than a thread's stack.
fn json_size(v: &Value) -> usize {
    let mut size = 0usize;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        size = size.saturating_add(match v {
            Value::Null | Value::Bool(_) => 5,
            Value::Number(n) => n.to_string().len(),
            Value::String(s) => s.len() + 2,
            Value::Array(a) => {
                stack.extend(a.iter());
                2 + a.len()
            }
            Value::Object(o) => {
                stack.extend(o.values());
                2 + o.keys().map(|k| k.len() + 4).sum::<usize>()
            }
        });
    }
    size
}

/// Nesting depth of a JSON value (a scalar is 0, `[1]` is 1), iteratively.
fn json_depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            Value::Object(o) => stack.extend(o.values().map(|x| (x, d + 1))),
            _ => {}
        }
        deepest = deepest.max(if matches!(v, Value::Array(_) | Value::Object(_)) { d + 1 } else { d });
    }
    deepest
}

/// Segments of a JSON pointer (`/a/b` → 2).
fn segments(pointer: &str) -> usize {
    pointer.matches('/').count()
}

/// Applies patch operations one at a time, refusing (before it is done) any operation that could
/// take the result past `max_bytes`: `copy` can double the document with each operation, so the
/// size is tracked as an upper bound (removals are not subtracted). Measuring a copy's source
/// costs at most its size, which the bound then absorbs, so the work is O(max_bytes).
///
/// The nesting depth is bounded the same way (`max_depth`, config `limits.max_depth`): a value
/// put at a path is as deep as the path plus itself, and a copied or moved subtree is at most as
/// deep as the document below its source; so `copy`s of a subtree into its own leaves, which can
/// double the depth per operation at a small size, are refused before the document is built.
pub struct Bounded {
    size: usize,
    depth: usize,
    max_bytes: usize,
    max_depth: usize,
}

impl Bounded {
    /// Starts from `body` as it is.
    pub fn new(body: &Value, max_bytes: usize, max_depth: usize) -> Bounded {
        Bounded { size: json_size(body), depth: json_depth(body), max_bytes, max_depth }
    }

    /// Applies one operation within the bounds.
    pub fn apply(&mut self, body: &mut Value, op: &json_patch::PatchOperation) -> Result<(), RequestError> {
        use json_patch::PatchOperation as Op;
        let added = match op {
            Op::Add(a) => json_size(&a.value),
            Op::Replace(r) => json_size(&r.value),
            Op::Copy(c) => body.pointer(c.from.as_str()).map(json_size).unwrap_or(0),
            Op::Remove(_) | Op::Move(_) | Op::Test(_) => 0,
        };
        self.size = self.size.saturating_add(added);
        if self.size > self.max_bytes {
            return Err(RequestError::PatchTooCostly(format!("its result would exceed {} bytes (config limits.max_body_bytes)", self.max_bytes)));
        }
        let placed = match op {
            Op::Add(a) => segments(a.path.as_str()) + json_depth(&a.value),
            Op::Replace(r) => segments(r.path.as_str()) + json_depth(&r.value),
            Op::Copy(c) => segments(c.path.as_str()) + self.depth.saturating_sub(segments(c.from.as_str())),
            Op::Move(m) => segments(m.path.as_str()) + self.depth.saturating_sub(segments(m.from.as_str())),
            Op::Remove(_) | Op::Test(_) => 0,
        };
        self.depth = self.depth.max(placed);
        if self.depth > self.max_depth {
            return Err(RequestError::PatchTooCostly(format!("its result would nest deeper than {} levels (config limits.max_depth)", self.max_depth)));
        }
        json_patch::patch_unsafe(body, std::slice::from_ref(op)).map_err(|e| RequestError::PatchFailed(e.to_string()))
    }
}

/// Applies a JSON Patch within the bounds of [`Bounded`].
pub fn apply_bounded(body: &mut Value, ops: &json_patch::Patch, max_bytes: usize, max_depth: usize) -> Result<(), RequestError> {
    let mut bounded = Bounded::new(body, max_bytes, max_depth);
    ops.iter().try_for_each(|op| bounded.apply(body, op))
}

/// Applies a patch of either kind to `body` within the configured bounds.
pub fn apply_doc(st: &AppState, body: &mut Value, doc: &PatchDoc) -> Result<(), RequestError> {
    let (max_bytes, max_depth) = (st.cfg.limits.max_body_bytes, st.cfg.limits.max_depth);
    match doc {
        PatchDoc::Json(ops) => apply_bounded(body, ops, max_bytes, max_depth),
        PatchDoc::FhirPath(p) => {
            let mut bounded = Bounded::new(body, max_bytes, max_depth);
            p.apply(body, crate::fhir::shape::shapes(st.defs.version), |b, op| bounded.apply(b, op))
        }
    }
}

/// The id of the only `rtype` matching a conditional URL's query (0 → 404, 2+ → 412).
pub fn match_one(st: &AppState, store: &crate::store::Store, rtype: &'static str, cond: &crate::machine::command::Condition) -> Result<String, ApiError> {
    // The same search, budget and refusals as apply uses for the condition.
    let ids = query::condition_ids(&st.search, store.tree(), rtype, &cond.query)?;
    match ids.len() {
        1 => Ok(ids.into_iter().next().expect("one id")),
        0 => Err(StoreError::NotFound { rtype: rtype.into(), id: format!("?{} (no match)", serde_urlencoded::to_string(&cond.query).unwrap_or_default()) }.into()),
        count => Err(StoreError::MultipleMatches { rtype: rtype.into(), count }.into()),
    }
}

/// The current version of `rtype/id` with `ops` applied: (new body, the version it was read at).
pub fn patched(st: &AppState, store: &crate::store::Store, rtype: &str, id: &str, ops: &PatchDoc, client_if_match: Option<u64>) -> Result<(Value, u64), ApiError> {
    let (cur, record) = store.read(rtype, id)?;
    if let Some(expected) = client_if_match {
        if expected != cur.version {
            return Err(StoreError::VersionConflict { rtype: rtype.into(), id: id.into(), expected, current: Some(cur.version) }.into());
        }
    }
    let mut body: Value = serde_json::from_slice(record.body()).map_err(|e| StoreError::Corrupt(format!("stored body: {e}")))?;
    let before = (body.get("resourceType").cloned(), body.get("id").cloned());
    apply_doc(st, &mut body, ops)?;
    if (body.get("resourceType").cloned(), body.get("id").cloned()) != before {
        return Err(RequestError::PatchChangesIdentity.into());
    }
    Ok((body, cur.version))
}

/// [`patched`] on the blocking pool: a patch's evaluation is bounded but may take a while on a
/// large resource, and must not hold an HTTP worker meanwhile.
async fn patched_off_worker(st: &web::Data<AppState>, store: &crate::store::Store, rtype: &'static str, id: &str, ops: &PatchDoc, if_match: Option<u64>) -> Result<(Value, u64), ApiError> {
    let (st, store, id, ops) = (st.clone(), store.clone(), id.to_string(), ops.clone());
    web::block(move || patched(&st, &store, rtype, &id, &ops, if_match)).await.map_err(|e| StoreError::Storage(e.to_string()))?
}

async fn patch_and_respond(ctx: &Ctx, st: &web::Data<AppState>, rtype: &'static str, id: &str, ops: &PatchDoc, client_if_match: Option<u64>) -> Result<HttpResponse, ApiError> {
    // The caller's rights on the resource as it is, before the patch is applied to it.
    crate::http::guard::check_write(&ctx.principal, st, &ctx.store, &crate::http::guard::WriteCheck { rtype, action: Action::Patch, id: Some(id), body: None, condition: None, full_url: None })?;
    for attempt in 1..=MAX_ATTEMPTS {
        let (body, version) = patched_off_worker(st, &ctx.store, rtype, id, ops, client_if_match).await?;
        let intent = WriteIntent { action: Action::Patch, id: Some(id.to_string()), body: Some(body), if_match: Some(version), condition: None };
        match send_write(ctx, st, rtype, intent).await {
            Ok((id, applied)) => return write_response(ctx, st, rtype, &id, &applied),
            Err(ApiError::Write(WriteError::Store(StoreError::VersionConflict { .. }))) if client_if_match.is_none() && attempt < MAX_ATTEMPTS => backoff(attempt).await,
            Err(e) => return Err(e),
        }
    }
    Err(RequestError::PreconditionFailed(format!("{rtype}/{id} kept changing; the patch was not applied")).into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn copy_doubling_is_refused_before_it_grows() {
        // 40 copies of the whole document would be 2^40 times its size.
        let ops: Vec<Value> = (0..40).map(|i| json!({"op": "copy", "from": "", "path": format!("/x{i}")})).collect();
        let ops = parse_patch(Value::Array(ops), 1000).unwrap();
        let mut body = json!({"resourceType": "Patient", "id": "a", "name": [{"family": "x".repeat(1000)}]});
        let err = apply_bounded(&mut body, &ops, 1 << 20, 64).unwrap_err();
        assert!(matches!(err, RequestError::PatchTooCostly(_)), "{err}");
        assert!(json_size(&body) <= 1 << 20, "refused before the document passed the bound");
    }

    #[test]
    fn depth_doubling_is_refused_before_it_nests() {
        // Each copy puts the whole chain under its own deepest object: depth doubles per op
        // while the size stays small.
        let mut body = json!({"resourceType": "Basic", "id": "a", "a": {}});
        let mut chain = 1;
        let ops: Vec<Value> = (0..20)
            .map(|_| {
                let op = json!({"op": "copy", "from": "/a", "path": "/a".repeat(chain + 1)});
                chain *= 2;
                op
            })
            .collect();
        let ops = parse_patch(Value::Array(ops), 1000).unwrap();
        let err = apply_bounded(&mut body, &ops, 1 << 30, 64).unwrap_err();
        assert!(err.to_string().contains("limits.max_depth"), "{err}");
        assert!(json_depth(&body) <= 64);
        let ok = parse_patch(json!([{"op": "add", "path": "/extension/0/extension/0/valueString", "value": "x"}]), 10).unwrap();
        let mut fine = json!({"resourceType": "Patient", "extension": [{"url": "u", "extension": [{"url": "v"}]}]});
        apply_bounded(&mut fine, &ok, 1000, 64).unwrap();
        assert_eq!(json_depth(&fine), 5, "root, extension, its item, its extension, that item");
    }

    #[test]
    fn op_count_limit_and_ordinary_patches() {
        let many = Value::Array((0..11).map(|_| json!({"op": "test", "path": "/id", "value": "a"})).collect());
        assert!(matches!(parse_patch(many.clone(), 10), Err(RequestError::PatchTooCostly(_))));
        let ops = parse_patch(many, 11).unwrap();
        let mut body = json!({"resourceType": "Patient", "id": "a"});
        apply_bounded(&mut body, &ops, 1000, 64).unwrap();
        let ops = parse_patch(json!([{"op": "add", "path": "/active", "value": true}, {"op": "copy", "from": "/active", "path": "/b"}]), 10).unwrap();
        apply_bounded(&mut body, &ops, 1000, 64).unwrap();
        assert_eq!(body, json!({"resourceType": "Patient", "id": "a", "active": true, "b": true}));
        let bad = parse_patch(json!([{"op": "remove", "path": "/nope"}]), 10).unwrap();
        assert!(matches!(apply_bounded(&mut body, &bad, 1000, 64), Err(RequestError::PatchFailed(_))));
    }
}
