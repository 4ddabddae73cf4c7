//! create, read (GET/HEAD), vread, update and delete of single resources, with version-aware
//! headers (`ETag`, `Last-Modified`, `Location`, `If-Match`, `If-None-Match`, `If-Modified-Since`)
//! and `Prefer: return=`.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use super::negotiate::{self, Ctx, Return};
use super::{AppState, RequestError};
use crate::actors::{Write, WriteError, WriteIntent};
use crate::http::guard;
use crate::auth::Op;
use crate::http::error::{operation_outcome, ApiError};
use crate::fhir::{valid_id, FhirError};
use crate::machine::command::{Action, Applied, Condition};
use crate::store::StoreError;

/// Resolves `{type}` and `{id}` path segments.
pub fn type_and_id<'a>(st: &AppState, rtype: &str, id: &'a str) -> Result<(&'static str, &'a str), ApiError> {
    let rtype = st.defs.resource_type(rtype)?;
    if !valid_id(id) {
        return Err(FhirError::InvalidId(id.to_string()).into());
    }
    Ok((rtype, id))
}

/// What every write to one instance starts from: the request context, the resolved type and id,
/// and the `If-Match` version (`exists`: `If-Match: *`).
pub struct InstanceWrite {
    pub ctx: Ctx,
    pub rtype: &'static str,
    pub id: String,
    pub if_match: Option<u64>,
    pub exists: bool,
}

impl InstanceWrite {
    pub fn new(req: &HttpRequest, st: &AppState, path: &(String, String)) -> Result<InstanceWrite, ApiError> {
        let ctx = Ctx::new(req, st)?;
        let (rtype, id) = type_and_id(st, &path.0, &path.1)?;
        let (if_match, exists) = negotiate::if_match_instance(req)?;
        Ok(InstanceWrite { ctx, rtype, id: id.to_string(), if_match, exists })
    }
}

/// The current version of `rtype/id` for `If-Match: *`: 412 when it does not exist (or is deleted).
pub fn existing_version(store: &crate::store::Store, rtype: &str, id: &str) -> Result<u64, ApiError> {
    match store.read(rtype, id) {
        Ok((cur, _)) => Ok(cur.version),
        Err(StoreError::NotFound { .. } | StoreError::Gone { .. }) => Err(RequestError::PreconditionFailed(format!("If-Match: * and {rtype}/{id} does not exist")).into()),
        Err(e) => Err(e.into()),
    }
}

/// [`send_write`] under `If-Match: *` when `exists`: the write is pinned to the version current
/// now, and a concurrent write (a version conflict) makes it read the version again, so `*`
/// fails only when the resource does not exist.
pub async fn send_write_existing(ctx: &Ctx, st: &AppState, rtype: &'static str, intent: WriteIntent, exists: bool) -> Result<(String, Applied), ApiError> {
    if !exists {
        return send_write(ctx, st, rtype, intent).await;
    }
    let id = intent.id.clone().unwrap_or_default();
    for attempt in 1..=super::patch::MAX_ATTEMPTS {
        let pinned = WriteIntent { if_match: Some(existing_version(&ctx.store, rtype, &id)?), ..intent.clone() };
        match send_write(ctx, st, rtype, pinned).await {
            Err(ApiError::Write(WriteError::Store(StoreError::VersionConflict { .. }))) if attempt < super::patch::MAX_ATTEMPTS => super::patch::backoff(attempt).await,
            other => return other,
        }
    }
    Err(RequestError::PreconditionFailed(format!("{rtype}/{id} kept changing; the write was not applied")).into())
}

/// Sends a write to the actor of its type and waits for it to be applied. The caller's rights
/// are checked first ([`guard::check_write`]); a write under a `patient/` grant is pinned to the
/// version the check saw.
pub async fn send_write(ctx: &Ctx, st: &AppState, rtype: &'static str, mut intent: WriteIntent) -> Result<(String, Applied), ApiError> {
    crate::binary::vet_json_write(st.cfg.fhir_version, &ctx.store, rtype, intent.id.as_deref(), intent.body.as_mut())?;
    send_write_vetted(ctx, st, rtype, intent).await
}

/// [`send_write`] for a body whose Binary content reference the server set itself
/// ([`super::binary`]); every other check is the same.
pub async fn send_write_vetted(ctx: &Ctx, st: &AppState, rtype: &'static str, mut intent: WriteIntent) -> Result<(String, Applied), ApiError> {
    if let Some(cond) = intent.condition.as_mut() {
        guard::confine(&ctx.principal, st, rtype, intent.action, cond)?;
    }
    let check = guard::WriteCheck { rtype, action: intent.action, id: intent.id.as_deref(), body: intent.body.as_ref(), condition: intent.condition.as_ref(), full_url: None };
    let seen = guard::check_write(&ctx.principal, st, &ctx.store, &check)?;
    guard::pin(&mut intent.if_match, intent.condition.is_some(), seen, rtype, intent.id.as_deref())?;
    if let Some(cond) = &intent.condition {
        precheck(st, &ctx.store, rtype, cond).await?;
    }
    let addr = st.actors.get(rtype).ok_or_else(|| WriteError::Mailbox(rtype.to_string()))?;
    match addr.send(Write(intent, ctx.tenant.clone(), crate::trace::Trace::current())).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(_) => Err(WriteError::Mailbox(rtype.to_string()).into()),
    }
}

/// Runs a conditional write's search here first, on an HTTP worker's blocking pool with the same
/// row budget apply gives it (search::cost): a condition that cannot be decided (too costly, `ap`,
/// `near`, a bad value) is answered 400 at once and never reaches the log or the Raft thread.
/// Apply still decides on the state it sees then.
async fn precheck(st: &AppState, store: &crate::store::Store, rtype: &'static str, cond: &Condition) -> Result<(), ApiError> {
    let (tree, reg, query) = (store.tree().clone(), st.search.clone(), cond.query.clone());
    let found = web::block(move || crate::search::query::condition_ids(&reg, &tree, rtype, &query))
        .await
        .map_err(|e| StoreError::Storage(e.to_string()))?;
    // (Bounded by the condition's own row budget, search::cost, as in apply.)
    match found {
        Ok(_) => Ok(()),
        Err(crate::search::query::SearchError::Store(e)) => Err(e.into()),
        Err(e) => Err(crate::store::StoreError::BadCondition(e.to_string()).into()),
    }
}

/// The answer to a create / update / patch, per `Prefer: return=` (the resource only to a caller
/// who may read it: a conditional create answers with a resource the caller did not send).
pub fn write_response(ctx: &Ctx, st: &AppState, rtype: &str, id: &str, applied: &Applied) -> Result<HttpResponse, ApiError> {
    let version = applied.version.unwrap_or_default();
    let status = if applied.created { StatusCode::CREATED } else { StatusCode::OK };
    let mut b = HttpResponse::build(status);
    negotiate::version_headers(&mut b, version, applied.ts_micros);
    b.insert_header((header::LOCATION, format!("{}/{rtype}/{id}/_history/{version}", ctx.base)));
    match ctx.ret {
        Return::Minimal => Ok(b.finish()),
        Return::Representation if !guard::may_return(ctx, st, rtype, id, applied.body.as_deref().map(Vec::as_slice)) => Ok(b.finish()),
        Return::OperationOutcome => {
            let verb = if applied.created { "Created" } else { "Updated" };
            let oo = operation_outcome("information", "informational", &format!("{verb} {rtype}/{id} version {version}"));
            Ok(ctx.respond_written(b, ctx.json_body(&oo)))
        }
        Return::Representation => {
            let stored = applied.body.as_deref().map(Vec::as_slice).unwrap_or_default();
            Ok(ctx.respond_written(b, ctx.resource_bytes(st, stored)?))
        }
    }
}

pub async fn create(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if path.as_str() == "Binary" && !negotiate::body_is_json(&req) {
        return super::binary::write_raw(&req, payload, &st, None).await;
    }
    let ctx = Ctx::new(&req, &st)?;
    let rtype = st.defs.resource_type(&path)?;
    // If-None-Exist: a query string (without '?'); 0 matches → create, 1 → 200 with it, 2+ → 412.
    let condition = match req.headers().get("if-none-exist") {
        None => None,
        Some(v) => {
            let text = v.to_str().map_err(|_| RequestError::BadHeader { name: "If-None-Exist".into(), reason: "not visible ASCII".into() })?;
            Some(condition(if_none_exist_query(text), "If-None-Exist", false)?)
        }
    };
    negotiate::require_json_body(&req)?;
    let body = negotiate::read_json(payload, &st.cfg.limits).await?;
    if rtype == "Binary" && super::binary::presign_requested(&req)? == Some(super::binary::Presign::Put) {
        return super::binary::presigned_write(&ctx, &st, Action::Create, None, body, None, condition).await;
    }
    let intent = WriteIntent { action: Action::Create, id: None, body: Some(body), if_match: None, condition };
    let (id, applied) = send_write(&ctx, &st, rtype, intent).await?;
    write_response(&ctx, &st, rtype, &id, &applied)
}

pub async fn update(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if path.0 == "Binary" && !negotiate::body_is_json(&req) {
        return super::binary::write_raw(&req, payload, &st, Some(&path.1)).await;
    }
    let InstanceWrite { ctx, rtype, id, if_match, exists } = InstanceWrite::new(&req, &st, &path)?;
    negotiate::require_json_body(&req)?;
    let body: Value = negotiate::read_json(payload, &st.cfg.limits).await?;
    if rtype == "Binary" && super::binary::presign_requested(&req)? == Some(super::binary::Presign::Put) {
        let if_match = if exists { Some(existing_version(&ctx.store, rtype, &id)?) } else { if_match };
        return super::binary::presigned_write(&ctx, &st, Action::Update, Some(id), body, if_match, None).await;
    }
    let intent = WriteIntent { action: Action::Update, id: Some(id), body: Some(body), if_match, condition: None };
    let (id, applied) = send_write_existing(&ctx, &st, rtype, intent, exists).await?;
    write_response(&ctx, &st, rtype, &id, &applied)
}

pub async fn delete(req: HttpRequest, path: web::Path<(String, String)>, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let InstanceWrite { ctx, rtype, id, if_match, exists } = InstanceWrite::new(&req, &st, &path)?;
    let intent = WriteIntent { action: Action::Delete, id: Some(id.clone()), body: None, if_match, condition: None };
    let (_, applied) = send_write_existing(&ctx, &st, rtype, intent, exists).await?;
    delete_response(&ctx, rtype, &id, &applied)
}

/// The query of an `If-None-Exist` value: `identifier=x`, `?identifier=x` or `Patient?identifier=x`.
pub fn if_none_exist_query(text: &str) -> &str {
    match text.split_once('?') {
        Some((prefix, q)) if !prefix.contains('=') && !prefix.contains('&') => q,
        _ => text,
    }
}

/// A search condition from a query string; an empty one would match everything and is refused.
pub fn condition(query: &str, what: &str, multiple: bool) -> Result<Condition, RequestError> {
    let params: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|e| RequestError::BadParameter { name: what.into(), reason: e.to_string() })?;
    if params.is_empty() {
        return Err(RequestError::BadParameter { name: what.into(), reason: "a conditional write needs search parameters".into() });
    }
    Ok(Condition { query: params, client_id: false, multiple })
}

/// The id a conditional update writes at when nothing matches: the body's (the match must then
/// have it), or a new one put into the body.
pub fn conditional_update_id(body: &mut Value, cond: &mut Condition) -> Result<String, FhirError> {
    let obj = body.as_object_mut().ok_or(FhirError::NotAnObject)?;
    Ok(match obj.get("id").and_then(Value::as_str) {
        Some(id) => {
            cond.client_id = true;
            id.to_string()
        }
        None => {
            let id = uuid::Uuid::new_v4().to_string();
            obj.insert("id".into(), Value::String(id.clone()));
            id
        }
    })
}

/// `PUT /{type}?search`: 0 matches → create (at the body's id, or a new one), 1 → update it,
/// 2+ → 412.
pub async fn conditional_update(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    let rtype = st.defs.resource_type(&path)?;
    let mut cond = condition(req.query_string(), "search", false)?;
    negotiate::require_json_body(&req)?;
    let mut body: Value = negotiate::read_json(payload, &st.cfg.limits).await?;
    let id = conditional_update_id(&mut body, &mut cond)?;
    let if_match = negotiate::if_match(&req)?;
    let intent = WriteIntent { action: Action::Update, id: Some(id), body: Some(body), if_match, condition: Some(cond) };
    let (id, applied) = send_write(&ctx, &st, rtype, intent).await?;
    write_response(&ctx, &st, rtype, &id, &applied)
}

/// `DELETE /{type}?search`: 0 matches → 204, 1 → deleted, several → all deleted when
/// `allow_multiple_conditional_delete`, else 412.
pub async fn conditional_delete(req: HttpRequest, path: web::Path<String>, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    let rtype = st.defs.resource_type(&path)?;
    let cond = condition(req.query_string(), "search", st.cfg.allow_multiple_conditional_delete)?;
    let intent = WriteIntent { action: Action::Delete, id: Some(String::new()), body: None, if_match: None, condition: Some(cond) };
    let (id, applied) = send_write(&ctx, &st, rtype, intent).await?;
    delete_response(&ctx, rtype, &id, &applied)
}

fn delete_response(ctx: &Ctx, rtype: &str, id: &str, applied: &Applied) -> Result<HttpResponse, ApiError> {
    let mut b = HttpResponse::build(if ctx.ret == Return::OperationOutcome { StatusCode::OK } else { StatusCode::NO_CONTENT });
    if let Some(v) = applied.version {
        b.insert_header((header::ETAG, format!("W/\"{v}\"")));
    }
    if ctx.ret == Return::OperationOutcome {
        let text = match (applied.noop, applied.version) {
            _ if id.is_empty() => format!("no {rtype} matched the condition; nothing deleted"),
            (false, Some(v)) => format!("Deleted {rtype}/{id} (version {v})"),
            (true, Some(_)) => format!("{rtype}/{id} was already deleted"),
            _ => format!("{rtype}/{id} does not exist; nothing to delete"),
        };
        return Ok(ctx.respond(b, ctx.json_body(&operation_outcome("information", "informational", &text))));
    }
    Ok(b.finish())
}

pub async fn read(req: HttpRequest, path: web::Path<(String, String)>, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if path.0 == "Binary" {
        return super::binary::read(&req, &st, &path.1, None).await;
    }
    let ctx = Ctx::new(&req, &st)?;
    negotiate::read_barrier(&req, &st).await?;
    read_in(&ctx, &st, &path.0, &path.1)
}

/// A read (`If-None-Match` / `If-Modified-Since` → 304).
pub fn read_in(ctx: &Ctx, st: &AppState, rtype: &str, id: &str) -> Result<HttpResponse, ApiError> {
    ctx.reject_count_summary()?;
    let (rtype, id) = type_and_id(st, rtype, id)?;
    let grant = guard::require_ctx(ctx, st, Op::READ, rtype)?;
    let (cur, record) = ctx.store.read(rtype, id)?;
    guard::check_stored(st, &grant, rtype, id, record.body())?;
    let mut b = HttpResponse::Ok();
    negotiate::version_headers(&mut b, cur.version, cur.ts);
    if negotiate::not_modified(ctx, cur.version, cur.ts)? {
        let mut nm = HttpResponse::NotModified();
        negotiate::version_headers(&mut nm, cur.version, cur.ts);
        return Ok(nm.finish());
    }
    let body = ctx.resource_bytes(st, record.body())?;
    Ok(ctx.respond(b, body))
}

pub async fn vread(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    if path.0 == "Binary" {
        return super::binary::read(&req, &st, &path.1, Some(&path.2)).await;
    }
    let ctx = Ctx::new(&req, &st)?;
    negotiate::read_barrier(&req, &st).await?;
    vread_in(&ctx, &st, &path.0, &path.1, &path.2)
}

/// A read of one version.
pub fn vread_in(ctx: &Ctx, st: &AppState, rtype: &str, id: &str, vid: &str) -> Result<HttpResponse, ApiError> {
    ctx.reject_count_summary()?;
    let (rtype, id) = type_and_id(st, rtype, id)?;
    let version: u64 = vid.parse().map_err(|_| RequestError::BadParameter {
        name: "version id".into(),
        reason: format!("'{vid}' is not a version number"),
    })?;
    let grant = guard::require_ctx(ctx, st, Op::VREAD, rtype)?;
    let record = ctx.store.vread(rtype, id, version)?;
    guard::check_stored(st, &grant, rtype, id, record.body())?;
    let mut b = HttpResponse::Ok();
    negotiate::version_headers(&mut b, version, record.ts);
    let body = ctx.resource_bytes(st, record.body())?;
    Ok(ctx.respond(b, body))
}
