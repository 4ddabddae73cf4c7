//! Binary over HTTP (FHIR R4 http.html#binary): raw content in and out, the content kept outside
//! the Raft log when large ([`crate::binary`]), and presigned S3 URLs for direct transfers.
//!
//! - `GET /Binary/{id}` (and vread) answers the raw content with the Binary's `contentType`
//!   unless the request names a FHIR format ([`negotiate::binary_wants_raw`]);
//!   `X-Security-Context` carries `securityContext.reference`.
//! - `POST /Binary`, `PUT /Binary/{id}` with a body that is not FHIR JSON store that body as the
//!   content (`Content-Type` → `contentType`, `X-Security-Context` → `securityContext`).
//! - `X-Kiln-Presigned: put` on a JSON create / update answers with `presignedPutUrl`;
//!   `X-Kiln-Presigned: get` on a read answers the resource with `presignedGetUrl`.
//!
//! Rights: the same [`guard`] calls as every other read and write.

use actix_web::body::SizedStream;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine;
use futures::TryStreamExt;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::crud::{self, send_write_vetted, type_and_id};
use super::negotiate::{self, Ctx};
use super::{AppState, RequestError};
use crate::actors::WriteIntent;
use crate::http::guard;
use crate::auth::Op;
use crate::binary::{data_field, BinaryError, Blobs, ContentRef, Place};
use crate::http::error::ApiError;
use crate::objects::ObjectWriter;
use crate::machine::command::{Action, Condition};

const BINARY: &str = "Binary";
/// Request header asking for a presigned URL: `put` (create / update) or `get` (read).
pub const PRESIGNED: &str = "x-kiln-presigned";
/// Request and response header carrying `Binary.securityContext` as `Type/id`.
pub const SECURITY_CONTEXT: &str = "x-security-context";

/// The presigned URL a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presign {
    Put,
    Get,
}

/// `X-Kiln-Presigned` of a request.
pub fn presign_requested(req: &HttpRequest) -> Result<Option<Presign>, RequestError> {
    match negotiate::header(req, PRESIGNED)?.map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(None),
        Some(v) if v == "put" => Ok(Some(Presign::Put)),
        Some(v) if v == "get" => Ok(Some(Presign::Get)),
        Some(v) => Err(RequestError::BadHeader { name: "X-Kiln-Presigned".into(), reason: format!("'{v}' is not put or get") }),
    }
}

/// Read or vread of a Binary: raw content or the resource, per `Accept`.
pub async fn read(req: &HttpRequest, st: &AppState, id: &str, vid: Option<&str>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::for_binary(req, st)?;
    negotiate::read_barrier(req, st).await?;
    let presign = presign_requested(req)?;
    if presign == Some(Presign::Put) {
        return Err(BinaryError::NotPresignable("X-Kiln-Presigned: put applies to a create or update; a read takes X-Kiln-Presigned: get".into()).into());
    }
    let raw = presign.is_none() && negotiate::binary_wants_raw(req)?;
    ctx.reject_count_summary()?;
    let (rtype, id) = type_and_id(st, BINARY, id)?;
    let (version, ts, record) = match vid {
        None => {
            let grant = guard::require_ctx(&ctx, st, Op::READ, rtype)?;
            let (cur, record) = ctx.store.read(rtype, id)?;
            guard::check_stored(st, &grant, rtype, id, record.body())?;
            (cur.version, cur.ts, record)
        }
        Some(vid) => {
            let version: u64 = vid.parse().map_err(|_| RequestError::BadParameter { name: "version id".into(), reason: format!("'{vid}' is not a version number") })?;
            let grant = guard::require_ctx(&ctx, st, Op::VREAD, rtype)?;
            let record = ctx.store.vread(rtype, id, version)?;
            guard::check_stored(st, &grant, rtype, id, record.body())?;
            (version, record.ts, record)
        }
    };
    if vid.is_none() && negotiate::not_modified(&ctx, version, ts)? {
        let mut nm = HttpResponse::NotModified();
        negotiate::version_headers(&mut nm, version, ts);
        return Ok(nm.finish());
    }
    let mut resource: Value = serde_json::from_slice(record.body()).map_err(|e| crate::store::StoreError::Corrupt(format!("stored body of Binary/{id}: {e}")))?;
    let fv = st.cfg.fhir_version;
    let content = ContentRef::from_resource(&resource, fv);
    let mut b = HttpResponse::Ok();
    negotiate::version_headers(&mut b, version, ts);
    if raw {
        return raw_response(req, st, b, &resource, content).await;
    }
    let mut url = None;
    if presign == Some(Presign::Get) {
        let s3 = st.blobs.require_s3("X-Kiln-Presigned: get")?;
        match &content {
            Some(r) if r.place == Place::S3 => url = Some(s3.presign_get(&s3.key(&r.key), s3.default_expiry()).await?),
            _ => {
                return Err(BinaryError::NotPresignable(format!(
                    "Binary/{id} keeps its content {} : read it raw (Accept: its contentType) instead of asking for a presigned URL",
                    if content.is_some() { "in this node's local blob store" } else { "inline (data)" }
                ))
                .into())
            }
        }
    } else if let Some(r) = &content {
        inline_data(st, r, &mut resource).await?;
    }
    st.defs.subset(&mut resource, &ctx.subset);
    if let (Some(url), Some(obj)) = (url, resource.as_object_mut()) {
        obj.insert("presignedGetUrl".into(), Value::String(url));
    }
    Ok(ctx.respond(b, ctx.json_body(&resource)))
}

/// Puts content kept in object storage back into `data` when it is small enough
/// (`binary.json_data_max_bytes`); not yet uploaded content is left out.
async fn inline_data(st: &AppState, r: &ContentRef, resource: &mut Value) -> Result<(), ApiError> {
    let size = match r.size {
        Some(s) => s,
        None => match st.blobs.size_of(r).await? {
            Some(s) => s,
            None => return Ok(()),
        },
    };
    if size > st.cfg.binary.json_data_max_bytes {
        return Ok(());
    }
    let (actual, mut stream) = st.blobs.open_content(r).await?;
    let limit = st.cfg.binary.json_data_max_bytes;
    // The object may differ from the recorded size (a presigned upload replaced it): never
    // collect more than the limit.
    if actual > limit {
        return Ok(());
    }
    let mut data = Vec::with_capacity(actual as usize);
    while let Some(chunk) = stream.try_next().await? {
        if (data.len() + chunk.len()) as u64 > limit {
            return Ok(());
        }
        data.extend_from_slice(&chunk);
    }
    if !data.is_empty() {
        resource[data_field(st.cfg.fhir_version)] = Value::String(base64::engine::general_purpose::STANDARD.encode(&data));
    }
    Ok(())
}

/// The raw content of a Binary version.
async fn raw_response(req: &HttpRequest, st: &AppState, mut b: actix_web::HttpResponseBuilder, resource: &Value, content: Option<ContentRef>) -> Result<HttpResponse, ApiError> {
    let ct = resource.get("contentType").and_then(Value::as_str).and_then(|c| HeaderValue::from_str(c).ok()).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    b.insert_header((header::CONTENT_TYPE, ct));
    if let Some(sc) = resource.get("securityContext").and_then(|s| s.get("reference")).and_then(Value::as_str).and_then(|s| HeaderValue::from_str(s).ok()) {
        b.insert_header((SECURITY_CONTEXT, sc));
    }
    // Stored content is the uploader's: a browser must not run it as part of this origin.
    b.insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    b.insert_header((header::CONTENT_SECURITY_POLICY, "sandbox"));
    let Some(r) = content else {
        let data = resource.get(data_field(st.cfg.fhir_version)).and_then(Value::as_str).unwrap_or("");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .map_err(|e| crate::store::StoreError::Corrupt(format!("stored Binary data is not base64: {e}")))?;
        return Ok(b.body(bytes));
    };
    if st.cfg.binary.redirect_reads && r.place == Place::S3 {
        let s3 = st.blobs.require_s3("binary.redirect_reads")?;
        let url = s3.presign_get(&s3.key(&r.key), s3.default_expiry()).await?;
        let mut redirect = HttpResponse::TemporaryRedirect();
        redirect.insert_header((header::LOCATION, url)).insert_header((header::CACHE_CONTROL, "no-store"));
        return Ok(redirect.finish());
    }
    if req.method() == Method::HEAD {
        if let Some(size) = r.size {
            return Ok(b.body(SizedStream::new(size, futures::stream::empty::<Result<bytes::Bytes, crate::objects::ObjectsError>>())));
        }
    }
    let (size, stream) = st.blobs.open_content(&r).await?;
    Ok(b.body(SizedStream::new(size, stream)))
}

/// `POST /Binary` (`id` `None`) or `PUT /Binary/{id}` with raw content.
pub async fn write_raw(req: &HttpRequest, payload: web::Payload, st: &AppState, id: Option<&str>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::for_binary(req, st)?;
    let (action, op) = if id.is_some() { (Action::Update, Op::UPDATE) } else { (Action::Create, Op::CREATE) };
    let id = id.map(|i| type_and_id(st, BINARY, i).map(|(_, id)| id.to_string())).transpose()?;
    let if_match = negotiate::if_match(req)?;
    // Rights first: nothing is stored for a caller who may not write Binaries.
    guard::require_ctx(&ctx, st, op, BINARY)?;
    if presign_requested(req)?.is_some() {
        return Err(BinaryError::NotPresignable("X-Kiln-Presigned: put takes a JSON Binary without data and answers with a URL to upload to; this request carries the content itself".into()).into());
    }
    // If-None-Exist works as on any create: a match answers with it and nothing is written.
    let condition = match (id.is_none(), negotiate::header(req, "if-none-exist")?) {
        (true, Some(text)) => Some(crud::condition(crud::if_none_exist_query(text), "If-None-Exist", false)?),
        _ => None,
    };
    let content_type = negotiate::header(req, "content-type")?.map(str::trim).filter(|c| !c.is_empty()).unwrap_or("application/octet-stream").to_string();
    let security_context = security_context(req)?;
    let upload = receive(st, &ctx, payload).await?;
    let mut body = json!({"resourceType": BINARY, "contentType": content_type});
    if let Some(id) = &id {
        body["id"] = Value::String(id.clone());
    }
    if let Some(sc) = security_context {
        body["securityContext"] = json!({"reference": sc});
    }
    match &upload {
        Upload::Inline(bytes) if !bytes.is_empty() => body[data_field(st.cfg.fhir_version)] = Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
        Upload::Inline(_) => {}
        Upload::Stored(r) => r.set_on(&mut body, st.cfg.fhir_version),
    }
    let conditional = condition.is_some();
    let intent = WriteIntent { action, id, body: Some(body), if_match, condition };
    let written = send_write_vetted(&ctx, st, BINARY, intent).await;
    if let Upload::Stored(r) = &upload {
        // No version points at the object when the write was refused, or when a conditional
        // create matched an existing Binary instead. A 5xx may hide a write that still applies
        // (a timeout after proposing): then the object stays, at worst unused.
        let points_here = |a: &crate::machine::command::Applied| {
            let stored = a.body.as_deref().and_then(|b| serde_json::from_slice::<Value>(b).ok());
            stored.and_then(|v| ContentRef::from_resource(&v, st.cfg.fhir_version)).is_some_and(|c| c.key == r.key)
        };
        let kept = match &written {
            Err(e) => crate::http::error::classify(e).0 >= 500,
            Ok((_, a)) => !conditional || points_here(a),
        };
        if !kept {
            st.blobs.discard(r.place, &r.key).await;
        }
    }
    let (id, applied) = written?;
    crud::write_response(&ctx, st, BINARY, &id, &applied)
}

fn security_context(req: &HttpRequest) -> Result<Option<String>, RequestError> {
    let Some(v) = negotiate::header(req, SECURITY_CONTEXT)?.map(str::trim) else { return Ok(None) };
    let ok = v.split_once('/').is_some_and(|(t, id)| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphabetic()) && crate::fhir::valid_id(id));
    if !ok {
        return Err(RequestError::BadHeader { name: "X-Security-Context".into(), reason: format!("'{v}' is not a reference like Patient/123") });
    }
    Ok(Some(v.to_string()))
}

enum Upload {
    Inline(Vec<u8>),
    Stored(ContentRef),
}

/// Streams the body: kept in memory up to `inline_max_bytes`, past it (or always with
/// `store = "s3"`) written through to object storage; never more than `max_bytes`.
async fn receive(st: &AppState, ctx: &Ctx, mut payload: web::Payload) -> Result<Upload, ApiError> {
    let blobs: &Blobs = &st.blobs;
    let limit = st.cfg.binary.max_bytes;
    let mut hasher = Sha256::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut total: u64 = 0;
    let mut writer: Option<(ObjectWriter, Place, String)> = match blobs.place_for(0)? {
        Some(place) => {
            let rel = Blobs::new_key(ctx.tenant.as_deref());
            Some((blobs.writer(place, &rel)?, place, rel))
        }
        None => None,
    };
    let result: Result<(), ApiError> = async {
        let mut upload = negotiate::Upload::new(&mut payload, &st.cfg.limits);
        while let Some(chunk) = upload.next().await {
            let chunk = chunk.map_err(|e| match e {
                RequestError::InvalidJson(why) => ApiError::from(BinaryError::Body(why)),
                stalled => stalled.into(),
            })?;
            total += chunk.len() as u64;
            if total > limit {
                return Err(BinaryError::TooLarge { limit }.into());
            }
            hasher.update(&chunk);
            match writer.as_mut() {
                Some((w, _, _)) => w.write(&chunk).await?,
                None => {
                    buf.extend_from_slice(&chunk);
                    if let Some(place) = blobs.place_for(buf.len())? {
                        let rel = Blobs::new_key(ctx.tenant.as_deref());
                        let mut w = blobs.writer(place, &rel)?;
                        w.write(&std::mem::take(&mut buf)).await?;
                        writer = Some((w, place, rel));
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    match (result, writer) {
        (Err(e), Some((w, _, _))) => {
            w.abort().await;
            Err(e)
        }
        (Err(e), None) => Err(e),
        (Ok(()), None) => Ok(Upload::Inline(buf)),
        (Ok(()), Some((w, place, key))) => {
            w.finish().await?;
            Ok(Upload::Stored(ContentRef { place, key, size: Some(total), sha256: Some(hex::encode(hasher.finalize())) }))
        }
    }
}

/// A JSON create / update with `X-Kiln-Presigned: put`: the Binary (without `data`) is written
/// pointing at a fresh S3 key, and the answer carries `presignedPutUrl` to upload the content to.
pub async fn presigned_write(ctx: &Ctx, st: &AppState, action: Action, id: Option<String>, mut body: Value, if_match: Option<u64>, condition: Option<Condition>) -> Result<HttpResponse, ApiError> {
    let s3 = st.blobs.require_s3("X-Kiln-Presigned: put")?.clone();
    let fv = st.cfg.fhir_version;
    if body.get(data_field(fv)).is_some() {
        return Err(BinaryError::NotPresignable(format!("with X-Kiln-Presigned: put send the Binary without {}: the content goes to presignedPutUrl", data_field(fv))).into());
    }
    guard::require_ctx(ctx, st, if action == Action::Create { Op::CREATE } else { Op::UPDATE }, BINARY)?;
    let r = ContentRef { place: Place::S3, key: Blobs::new_key(ctx.tenant.as_deref()), size: None, sha256: None };
    r.set_on(&mut body, fv);
    let intent = WriteIntent { action, id, body: Some(body), if_match, condition };
    let (id, applied) = send_write_vetted(ctx, st, BINARY, intent).await?;
    let url = s3.presign_put(&s3.key(&r.key), s3.default_expiry()).await?;
    let version = applied.version.unwrap_or_default();
    let mut b = HttpResponse::build(if applied.created { StatusCode::CREATED } else { StatusCode::OK });
    negotiate::version_headers(&mut b, version, applied.ts_micros);
    b.insert_header((header::LOCATION, format!("{}/{BINARY}/{id}/_history/{version}", ctx.base)));
    // The URL is the point of the request: the resource comes back whatever `Prefer` says, to a
    // caller who may read it (a conditional create may name an existing one).
    if !guard::may_return(ctx, st, BINARY, &id, applied.body.as_deref().map(Vec::as_slice)) {
        return Ok(b.finish());
    }
    let stored = applied.body.as_deref().map(Vec::as_slice).unwrap_or_default();
    let mut resource: Value = serde_json::from_slice(stored).map_err(|e| crate::store::StoreError::Corrupt(format!("stored body: {e}")))?;
    // A conditional create that matched returns the existing Binary: no URL for its content.
    if ContentRef::from_resource(&resource, fv).is_some_and(|c| c.key == r.key) {
        resource["presignedPutUrl"] = Value::String(url);
    }
    Ok(ctx.respond_written(b, ctx.json_body(&resource)))
}
