//! PATCH with JSON Patch (RFC 6902), on an instance (`PATCH /{type}/{id}`) or conditionally
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
use super::negotiate::{self, Ctx};
use super::{AppState, RequestError};
use crate::actors::{WriteError, WriteIntent};
use crate::error::ApiError;
use crate::search::query::{self, Executor};
use crate::store::command::Action;
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
    let InstanceWrite { ctx, rtype, id, if_match } = InstanceWrite::new(&req, &st, &path)?;
    let ops = read_patch(&req, payload, &st).await?;
    patch_and_respond(&ctx, &st, rtype, &id, &ops, if_match).await
}

/// `PATCH /{type}?search`.
pub async fn conditional(req: HttpRequest, path: web::Path<String>, payload: web::Payload, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    let rtype = st.defs.resource_type(&path)?;
    let if_match = negotiate::if_match(&req)?;
    let ops = read_patch(&req, payload, &st).await?;
    let cond = super::crud::condition(req.query_string(), "search", false)?;
    for attempt in 1..=MAX_ATTEMPTS {
        let id = match_one(&st, rtype, req.query_string())?;
        let (body, version) = patched(&st, rtype, &id, &ops, if_match)?;
        let intent = WriteIntent { action: Action::Patch, id: Some(id), body: Some(body), if_match: Some(version), condition: Some(cond.clone()) };
        match send_write(&st, rtype, intent).await {
            Ok((id, applied)) => return write_response(&ctx, &st, rtype, &id, &applied),
            Err(ApiError::Write(WriteError::Store(StoreError::VersionConflict { .. }))) if if_match.is_none() && attempt < MAX_ATTEMPTS => backoff(attempt).await,
            Err(e) => return Err(e),
        }
    }
    Err(RequestError::PreconditionFailed(format!("{rtype}?{} kept changing; the patch was not applied", req.query_string())).into())
}

async fn read_patch(req: &HttpRequest, payload: web::Payload, st: &AppState) -> Result<json_patch::Patch, ApiError> {
    negotiate::require_json_patch(req)?;
    let doc = negotiate::read_json(payload, st.cfg.limits.max_body_bytes).await?;
    Ok(parse_patch(doc)?)
}

/// A JSON Patch document.
pub fn parse_patch(doc: Value) -> Result<json_patch::Patch, RequestError> {
    serde_json::from_value(doc).map_err(|e| RequestError::InvalidPatch(e.to_string()))
}

/// The id of the only `rtype` matching a conditional URL's query (0 → 404, 2+ → 412).
pub fn match_one(st: &AppState, rtype: &'static str, query_string: &str) -> Result<String, ApiError> {
    let params = super::crud::condition(query_string, "search", false)?.query;
    let q = query::parse(&st.search, rtype, &params, false)?;
    let ids = Executor { tree: st.store.tree(), rtype }.run_ids(&q)?;
    match ids.len() {
        1 => Ok(ids.into_iter().next().expect("one id")),
        0 => Err(StoreError::NotFound { rtype: rtype.into(), id: format!("?{query_string} (no match)") }.into()),
        count => Err(StoreError::MultipleMatches { rtype: rtype.into(), count }.into()),
    }
}

/// The current version of `rtype/id` with `ops` applied: (new body, the version it was read at).
pub fn patched(st: &AppState, rtype: &str, id: &str, ops: &json_patch::Patch, client_if_match: Option<u64>) -> Result<(Value, u64), ApiError> {
    let (cur, record) = st.store.read(rtype, id)?;
    if let Some(expected) = client_if_match {
        if expected != cur.version {
            return Err(StoreError::VersionConflict { rtype: rtype.into(), id: id.into(), expected, current: Some(cur.version) }.into());
        }
    }
    let mut body: Value = serde_json::from_slice(record.body()).map_err(|e| StoreError::Corrupt(format!("stored body: {e}")))?;
    let before = (body.get("resourceType").cloned(), body.get("id").cloned());
    json_patch::patch(&mut body, ops).map_err(|e| RequestError::PatchFailed(e.to_string()))?;
    if (body.get("resourceType").cloned(), body.get("id").cloned()) != before {
        return Err(RequestError::PatchChangesIdentity.into());
    }
    Ok((body, cur.version))
}

async fn patch_and_respond(ctx: &Ctx, st: &AppState, rtype: &'static str, id: &str, ops: &json_patch::Patch, client_if_match: Option<u64>) -> Result<HttpResponse, ApiError> {
    for attempt in 1..=MAX_ATTEMPTS {
        let (body, version) = patched(st, rtype, id, ops, client_if_match)?;
        let intent = WriteIntent { action: Action::Patch, id: Some(id.to_string()), body: Some(body), if_match: Some(version), condition: None };
        match send_write(st, rtype, intent).await {
            Ok((id, applied)) => return write_response(ctx, st, rtype, &id, &applied),
            Err(ApiError::Write(WriteError::Store(StoreError::VersionConflict { .. }))) if client_if_match.is_none() && attempt < MAX_ATTEMPTS => backoff(attempt).await,
            Err(e) => return Err(e),
        }
    }
    Err(RequestError::PreconditionFailed(format!("{rtype}/{id} kept changing; the patch was not applied")).into())
}
