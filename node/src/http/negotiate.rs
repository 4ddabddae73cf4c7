//! Content negotiation and the request context every handler starts from: response format
//! (`_format`, `Accept`), `_pretty`, `_summary` / `_elements`, `Prefer`, the body's media type and
//! size, the base URL, and building resource responses with `ETag` / `Last-Modified`.

use actix_web::http::header::{self, HeaderMap};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse, HttpResponseBuilder};
use futures::StreamExt;
use serde_json::Value;

use super::{AppState, RequestError};
use crate::config::ReadConsistency;
use crate::http::error::ApiError;
use crate::fhir::{meta, Subset, SummaryMode};

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";
const PLAIN_JSON: &str = "application/json; charset=utf-8";
/// Media types accepted for FHIR JSON bodies and responses.
const JSON_TYPES: [&str; 3] = ["application/fhir+json", "application/json", "application/json+fhir"];
pub const JSON_PATCH: &str = "application/json-patch+json";
/// Bodies larger than this are parsed on the blocking pool.
const BLOCKING_PARSE_BYTES: usize = 256 * 1024;

/// `Prefer: return=...`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    Minimal,
    Representation,
    OperationOutcome,
}

/// What a handler knows about the request before it does anything.
#[derive(Clone)]
pub struct Ctx {
    pub params: Vec<(String, String)>,
    pub content_type: &'static str,
    pub pretty: bool,
    pub subset: Subset,
    pub ret: Return,
    pub lenient: bool,
    pub base: String,
    /// `If-None-Match` / `If-Modified-Since` of a read.
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<String>,
    /// Who is asking ([`crate::http::guard`] decides what they reach).
    pub principal: std::sync::Arc<crate::auth::Principal>,
    /// The tenant the request works in (`None`: the default tenant).
    pub tenant: crate::tenancy::Tenant,
    /// The tenant's part of the state: every read of the request goes through it.
    pub store: crate::store::Store,
    /// The request's work budget, shared by every entry of a batch ([`super::work`]).
    pub budget: std::sync::Arc<crate::budget::Budget>,
    /// The node's state, for work handed to the pool ([`super::work::block`]).
    pub app: Option<actix_web::web::Data<AppState>>,
    /// A GET / HEAD entry of a batch or transaction: the batch takes its room among the
    /// responses in flight (not [`Ctx::respond`]) and holds the caller's fair share for all its
    /// entries ([`super::work::caller_share`], not [`super::work::block`]).
    pub by_batch: bool,
    /// The batch's place in its caller's fair share, which each entry's costly work holds
    /// until that work stops (also when the batch's own future is dropped first).
    pub share: Option<std::sync::Arc<super::work::Share>>,
}

fn essence(v: &str) -> String {
    v.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, RequestError> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| RequestError::BadHeader { name: name.to_string(), reason: "not visible ASCII".into() }),
    }
}

impl Ctx {
    pub fn new(req: &HttpRequest, st: &AppState) -> Result<Ctx, RequestError> {
        Self::build(req, st, true)
    }

    /// [`Ctx::new`] for a Binary instance, where an `Accept` that is not JSON asks for the raw
    /// content ([`binary_wants_raw`]): such an `Accept` leaves FHIR JSON as the format of
    /// errors and resource answers instead of being refused.
    pub fn for_binary(req: &HttpRequest, st: &AppState) -> Result<Ctx, RequestError> {
        Self::build(req, st, false)
    }

    fn build(req: &HttpRequest, st: &AppState, strict_accept: bool) -> Result<Ctx, RequestError> {
        let limits = &st.cfg.limits;
        if req.query_string().len() > limits.max_query_bytes {
            return Err(RequestError::UriTooLong { limit: limits.max_query_bytes });
        }
        let params: Vec<(String, String)> = serde_urlencoded::from_str(req.query_string())
            .map_err(|e| RequestError::BadParameter { name: "query string".into(), reason: e.to_string() })?;
        super::work::check_params(&params, limits)?;
        let param = |n: &str| params.iter().rev().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        let content_type = match param("_format") {
            Some(f) => match f.trim() {
                "json" | "application/fhir+json" | "application/json+fhir" => FHIR_JSON,
                "application/json" | "text/json" => PLAIN_JSON,
                other => {
                    return Err(RequestError::NotAcceptable(format!(
                        "_format={other} is not supported: this server speaks JSON only (_format=json)"
                    )))
                }
            },
            None if strict_accept => accept(header_str(req.headers(), "accept")?)?,
            None => accept(header_str(req.headers(), "accept")?).unwrap_or(FHIR_JSON),
        };
        let pretty = match param("_pretty") {
            None | Some("false") => false,
            Some("true") => true,
            Some(v) => return Err(RequestError::BadParameter { name: "_pretty".into(), reason: format!("'{v}' is not true or false") }),
        };
        let subset = subset(&params)?;
        let (ret, lenient) = prefer(header_str(req.headers(), "prefer")?)?;
        let mut base = base_of(req, st);
        let (tenant, store) = match req.extensions().get::<crate::tenancy::InTenant>() {
            Some(t) => {
                if t.by_path {
                    base.push_str(&format!("/tenant/{}", t.tenant.as_deref().unwrap_or_default()));
                }
                (t.tenant.clone(), st.store.tenant(t.tenant.as_deref()))
            }
            None => (None, st.store.clone()),
        };
        let if_none_match = header_str(req.headers(), "if-none-match")?.map(String::from);
        let if_modified_since = header_str(req.headers(), "if-modified-since")?.map(String::from);
        let principal = crate::http::guard::principal_of(req, st);
        let budget = super::work::budget_for(req, limits);
        let app = req.app_data::<actix_web::web::Data<AppState>>().cloned();
        Ok(Ctx { params, content_type, pretty, subset, ret, lenient, base, if_none_match, if_modified_since, principal, tenant, store, budget, app, by_batch: false, share: None })
    }

    /// The context of one GET / HEAD entry of a batch or transaction: the entry's URL parameters
    /// and preconditions, the outer request's format, `Prefer` and base.
    pub fn entry(&self, query: &str, if_none_match: Option<&str>, if_modified_since: Option<&str>) -> Result<Ctx, RequestError> {
        let params: Vec<(String, String)> = serde_urlencoded::from_str(query)
            .map_err(|e| RequestError::BadParameter { name: "request.url".into(), reason: e.to_string() })?;
        Ok(Ctx {
            subset: subset(&params)?,
            params,
            content_type: self.content_type,
            pretty: false,
            ret: self.ret,
            lenient: self.lenient,
            base: self.base.clone(),
            if_none_match: if_none_match.map(String::from),
            if_modified_since: if_modified_since.map(String::from),
            principal: self.principal.clone(),
            tenant: self.tenant.clone(),
            store: self.store.clone(),
            budget: self.budget.clone(),
            app: self.app.clone(),
            by_batch: true,
            share: self.share.clone(),
        })
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// `_summary=count` only means something for searches.
    pub fn reject_count_summary(&self) -> Result<(), RequestError> {
        if self.subset.summary == Some(SummaryMode::Count) {
            return Err(RequestError::BadParameter {
                name: "_summary".into(),
                reason: "_summary=count applies to searches only".into(),
            });
        }
        Ok(())
    }

    /// Serializes a JSON value in the negotiated format.
    pub fn json_body(&self, v: &Value) -> Vec<u8> {
        if self.pretty { serde_json::to_vec_pretty(v) } else { serde_json::to_vec(v) }.unwrap_or_default()
    }

    /// Stored resource bytes as this request wants them (subset / pretty); untouched bytes when
    /// nothing needs to change.
    pub fn resource_bytes(&self, st: &AppState, stored: &[u8]) -> Result<Vec<u8>, ApiError> {
        if self.subset.is_empty() && !self.pretty {
            return Ok(stored.to_vec());
        }
        let mut v: Value = serde_json::from_slice(stored)
            .map_err(|e| crate::store::StoreError::Corrupt(format!("stored body: {e}")))?;
        st.defs.subset(&mut v, &self.subset);
        Ok(self.json_body(&v))
    }

    /// Who asks, for the fair shares: `None` on an open server (one anonymous caller).
    pub fn caller(&self) -> Option<String> {
        let tenant = self.tenant.as_deref().unwrap_or("");
        (self.principal.via != crate::auth::Via::Open).then(|| format!("{tenant}\u{0}{:?}\u{0}{}", self.principal.via, self.principal.subject))
    }

    /// The answer of a read with `body`; a large body first takes its room among the node's
    /// responses in flight ([`super::response_room`]): 503 (429 past the caller's share) when
    /// there is none. (A batch entry is charged by its batch, not here.)
    pub fn respond(&self, b: HttpResponseBuilder, body: Vec<u8>) -> HttpResponse {
        let mut held = super::response_room::Held::default();
        if let (false, true, Some(app)) = (self.by_batch, body.len() >= super::response_room::CHARGED_FROM, &self.app) {
            if let Err(e) = app.response_room.take(&mut held, body.len(), self.caller().as_deref()) {
                return actix_web::ResponseError::error_response(&ApiError::from(e));
            }
        }
        self.respond_held(b, body, held)
    }

    /// The answer of a write that has committed: charged when there is room, never refused
    /// (a client told to retry would write twice).
    pub fn respond_written(&self, b: HttpResponseBuilder, body: Vec<u8>) -> HttpResponse {
        let mut held = super::response_room::Held::default();
        if let (true, Some(app)) = (body.len() >= super::response_room::CHARGED_FROM, &self.app) {
            let _ = app.response_room.take(&mut held, body.len(), None);
        }
        self.respond_held(b, body, held)
    }

    /// The response with `body`, which keeps the room `held` until its client has taken it; a
    /// client that stops taking it for `limits.stall_timeout_ms` is hung up on.
    pub fn respond_held(&self, mut b: HttpResponseBuilder, body: Vec<u8>, held: super::response_room::Held) -> HttpResponse {
        b.content_type(self.content_type);
        if held.is_empty() {
            return b.body(body);
        }
        let body = super::response_room::HeldBody::new(body, held);
        match (self.budget.client(), &self.app) {
            (Some(conn), Some(app)) => b.body(body.watched(&conn, app.response_room.stall)),
            _ => b.body(body),
        }
    }
}

/// The base of links and `Location`: `base_url`, else the request's Host (and forwarding
/// headers) when auth is off; with auth on, a Host from `allowed_hosts` or the address the
/// connection reached, so a caller cannot plant its own host in links others follow.
fn base_of(req: &HttpRequest, st: &AppState) -> String {
    if let Some(b) = &st.cfg.base_url {
        return b.trim_end_matches('/').to_string();
    }
    if !st.auth.enabled() {
        let info = req.connection_info();
        return format!("{}://{}", info.scheme(), info.host());
    }
    let scheme = if req.app_config().secure() { "https" } else { "http" };
    // HTTP/1.1 sends Host; HTTP/2 sends :authority (in the URI).
    let host = req.headers().get(actix_web::http::header::HOST).and_then(|h| h.to_str().ok()).or_else(|| req.uri().authority().map(|a| a.as_str()));
    match host.filter(|h| st.cfg.allowed_hosts.iter().any(|a| a.eq_ignore_ascii_case(h))) {
        Some(h) => format!("{scheme}://{h}"),
        None => {
            let local = req.conn_data::<super::work::LocalAddr>().map(|a| a.0).unwrap_or_else(|| req.app_config().local_addr());
            format!("{scheme}://{local}")
        }
    }
}

/// `_summary` and `_elements`.
fn subset(params: &[(String, String)]) -> Result<Subset, RequestError> {
    let param = |n: &str| params.iter().rev().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    let summary = match param("_summary") {
        None => None,
        Some(v) => Some(SummaryMode::parse(v).ok_or_else(|| RequestError::BadParameter {
            name: "_summary".into(),
            reason: format!("'{v}' is not one of true, text, data, count, false"),
        })?),
    };
    let elements = param("_elements").map(|v| v.split(',').map(|s| s.trim()).filter(|s| !s.is_empty()).map(|s| s.to_string()).collect());
    Ok(Subset { summary, elements })
}

/// Picks the response media type from `Accept`.
fn accept(h: Option<&str>) -> Result<&'static str, RequestError> {
    let Some(h) = h.filter(|h| !h.trim().is_empty()) else { return Ok(FHIR_JSON) };
    for item in h.split(',') {
        let mut parts = item.split(';');
        let ty = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let refused = parts.any(|p| {
            let p = p.trim().replace(' ', "");
            p == "q=0" || p == "q=0.0" || p == "q=0.00" || p == "q=0.000"
        });
        if refused {
            continue;
        }
        match ty.as_str() {
            "application/fhir+json" | "application/json+fhir" | "*/*" | "application/*" => return Ok(FHIR_JSON),
            "application/json" | "text/json" => return Ok(PLAIN_JSON),
            _ => {}
        }
    }
    Err(RequestError::NotAcceptable(format!(
        "Accept: {h} lists no format this server produces; it serves application/fhir+json and application/json"
    )))
}

/// Whether a read of a Binary asks for its raw content (FHIR R4 http.html#binary): yes unless
/// `_format` is given or `Accept` names a FHIR format explicitly (`application/fhir+json`,
/// `application/json+fhir`). `*/*`, a missing `Accept` and `application/json` get the content:
/// the spec counts only the FHIR media types as asking for the resource. An `Accept` that names
/// only FHIR XML is refused (406): XML is not served.
pub fn binary_wants_raw(req: &HttpRequest) -> Result<bool, RequestError> {
    if req.query_string().split('&').any(|p| p == "_format" || p.starts_with("_format=")) {
        return Ok(false);
    }
    let h = header_str(req.headers(), "accept")?.unwrap_or("");
    let mut fhir_xml = false;
    for item in h.split(',') {
        let mut parts = item.split(';');
        let ty = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        if parts.any(|p| matches!(p.trim().replace(' ', "").as_str(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000")) {
            continue;
        }
        match ty.as_str() {
            "application/fhir+json" | "application/json+fhir" => return Ok(false),
            "application/fhir+xml" | "application/xml+fhir" => fhir_xml = true,
            _ => {}
        }
    }
    if fhir_xml {
        return Err(RequestError::NotAcceptable(format!(
            "Accept: {h} asks for FHIR XML, which this server does not produce: ask for application/fhir+json (the resource) or the Binary's content type (its content)"
        )));
    }
    Ok(true)
}

/// A request header as text (`None` when absent).
pub fn header<'a>(req: &'a HttpRequest, name: &str) -> Result<Option<&'a str>, RequestError> {
    header_str(req.headers(), name)
}

/// Whether the request body is FHIR JSON (or has no `Content-Type`): otherwise a Binary write
/// carries raw content.
pub fn body_is_json(req: &HttpRequest) -> bool {
    match req.headers().get("content-type").and_then(|v| v.to_str().ok()) {
        None => true,
        Some(ct) => JSON_TYPES.contains(&essence(ct).as_str()),
    }
}

/// Parses `Prefer` (return and handling preferences).
fn prefer(h: Option<&str>) -> Result<(Return, bool), RequestError> {
    let mut ret = Return::Representation;
    let mut lenient = false;
    for pref in h.unwrap_or("").split([',', ';']) {
        let (k, v) = pref.split_once('=').unwrap_or((pref, ""));
        match (k.trim().to_ascii_lowercase().as_str(), v.trim().trim_matches('"')) {
            ("return", "minimal") => ret = Return::Minimal,
            ("return", "representation") => ret = Return::Representation,
            ("return", "OperationOutcome") => ret = Return::OperationOutcome,
            // Unknown preferences are ignored (RFC 7240).
            ("handling", "lenient") => lenient = true,
            ("handling", "strict") => lenient = false,
            _ => {}
        }
    }
    Ok((ret, lenient))
}

/// Checks that a request body is FHIR JSON.
pub fn require_json_body(req: &HttpRequest) -> Result<(), RequestError> {
    match header_str(req.headers(), "content-type")? {
        None => Ok(()),
        Some(ct) if JSON_TYPES.contains(&essence(ct).as_str()) => Ok(()),
        Some(ct) => Err(RequestError::UnsupportedMediaType(format!(
            "Content-Type: {ct} is not supported; send application/fhir+json (XML and RDF are not served)"
        ))),
    }
}

/// Which patch format a PATCH body is, by its Content-Type.
pub fn patch_kind(req: &HttpRequest) -> Result<PatchKind, RequestError> {
    match header_str(req.headers(), "content-type")?.map(essence) {
        Some(ct) if ct == JSON_PATCH => Ok(PatchKind::Json),
        Some(ct) if JSON_TYPES.contains(&ct.as_str()) => Ok(PatchKind::FhirPath),
        Some(ct) => Err(RequestError::UnsupportedMediaType(format!(
            "PATCH with Content-Type {ct} is not supported; send a JSON Patch as {JSON_PATCH} or a FHIRPath Patch (Parameters) as application/fhir+json (XML Patch is not implemented)"
        ))),
        None => Err(RequestError::UnsupportedMediaType(format!("PATCH needs Content-Type: {JSON_PATCH} (JSON Patch) or application/fhir+json (FHIRPath Patch)"))),
    }
}

/// The two patch formats served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// RFC 6902, `application/json-patch+json`.
    Json,
    /// A `Parameters` resource (fhirpatch.html), `application/fhir+json`.
    FhirPath,
}

/// Reads a resource body up to `limits.max_body_bytes` and parses it as JSON.
pub async fn read_json(payload: web::Payload, limits: &crate::config::Limits) -> Result<Value, RequestError> {
    read_json_limited(payload, limits.max_body_bytes, "limits.max_body_bytes", limits).await
}

/// A request body as it arrives: 408 when the client pauses longer than
/// `limits.stall_timeout_ms`, or when, past that first span, the body comes slower than
/// `limits.min_body_rate` bytes a second on the whole (each byte earns `1 / min_body_rate`
/// seconds more, as Apache's `mod_reqtimeout` MinRate): a body trickled just within the pause
/// bound holds its worker and memory for a time in proportion to its size, not for as long as
/// the client likes.
pub struct Upload<'a> {
    payload: &'a mut web::Payload,
    stall: std::time::Duration,
    rate: u64,
    started: std::time::Instant,
    received: u64,
}

impl<'a> Upload<'a> {
    pub fn new(payload: &'a mut web::Payload, limits: &crate::config::Limits) -> Upload<'a> {
        let stall = std::time::Duration::from_millis(limits.stall_timeout_ms);
        Upload { payload, stall, rate: limits.min_body_rate.max(1), started: std::time::Instant::now(), received: 0 }
    }

    /// The next piece of the body (`None` at its end).
    pub async fn next(&mut self) -> Option<Result<web::Bytes, RequestError>> {
        let earned = self.stall + std::time::Duration::from_secs_f64(self.received as f64 / self.rate as f64);
        let wait = self.stall.min(earned.saturating_sub(self.started.elapsed()));
        // (The body is polled before the timer: a piece already here is taken even at zero.)
        match tokio::time::timeout(wait, self.payload.next()).await {
            Ok(Some(Ok(piece))) => {
                self.received += piece.len() as u64;
                Some(Ok(piece))
            }
            Ok(Some(Err(e))) => Some(Err(RequestError::InvalidJson(format!("reading the body failed: {e}")))),
            Ok(None) => None,
            Err(_) if wait < self.stall => Some(Err(RequestError::BodyTooSlow { rate: self.rate })),
            Err(_) => Some(Err(RequestError::BodyStalled { ms: self.stall.as_millis() as u64 })),
        }
    }
}

/// Reads the body up to `limit` bytes (the config `key`) as an [`Upload`].
pub async fn read_bytes_limited(mut payload: web::Payload, limit: usize, key: &'static str, limits: &crate::config::Limits) -> Result<web::Bytes, RequestError> {
    let mut buf = web::BytesMut::new();
    let mut upload = Upload::new(&mut payload, limits);
    while let Some(chunk) = upload.next().await {
        let chunk = chunk?;
        if buf.len() + chunk.len() > limit {
            return Err(RequestError::BodyTooLarge { limit, key });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf.freeze())
}

/// Reads the body up to `limit` (the config `key`) and parses it as JSON (a UTF-8 BOM is skipped).
pub async fn read_json_limited(payload: web::Payload, limit: usize, key: &'static str, limits: &crate::config::Limits) -> Result<Value, RequestError> {
    let buf = read_bytes_limited(payload, limit, key, limits).await?;
    let len = buf.len();
    let parse = move || -> Result<Value, RequestError> {
        let bytes = buf.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&buf);
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(RequestError::InvalidJson("the body is empty".into()));
        }
        serde_json::from_slice(bytes).map_err(|e| RequestError::InvalidJson(format!("the body is not valid JSON: {e}")))
    };
    // A large body is parsed off the HTTP worker so its other connections are not stalled.
    if len > BLOCKING_PARSE_BYTES {
        return web::block(parse).await.map_err(|e| RequestError::InvalidJson(format!("parsing the body failed: {e}")))?;
    }
    parse()
}

/// Parses an `ETag`-style version: `W/"3"`, `"3"` or `3`.
/// Read consistency of one request: header `Kiln-Consistency: linearizable | local`, else the
/// node's `cluster.read_consistency`. Linearizable reads first pass a Raft ReadIndex barrier, so
/// they see every write acknowledged anywhere in the cluster before the read began.
pub async fn read_barrier(req: &HttpRequest, st: &AppState) -> Result<(), ApiError> {
    let mode = match header_str(req.headers(), "kiln-consistency")?.map(str::trim) {
        None => st.cfg.cluster.read_consistency,
        Some(v) if v.eq_ignore_ascii_case("linearizable") => ReadConsistency::Linearizable,
        Some(v) if v.eq_ignore_ascii_case("local") => ReadConsistency::Local,
        Some(v) => {
            return Err(RequestError::BadHeader { name: "Kiln-Consistency".into(), reason: format!("'{v}' is not 'linearizable' or 'local'") }.into())
        }
    };
    if mode == ReadConsistency::Linearizable {
        st.raft.read_barrier().await?;
    }
    Ok(())
}

pub fn parse_etag(name: &str, v: &str) -> Result<u64, RequestError> {
    let t = v.trim();
    let t = t.strip_prefix("W/").unwrap_or(t).trim_matches('"');
    t.parse().map_err(|_| RequestError::BadHeader {
        name: name.to_string(),
        reason: format!("'{v}' is not a version ETag like W/\"3\""),
    })
}

/// The `If-Match` version, if sent. `*` is served only on instance writes ([`if_match_instance`]).
pub fn if_match(req: &HttpRequest) -> Result<Option<u64>, RequestError> {
    match if_match_instance(req)? {
        (_, true) => Err(RequestError::BadHeader { name: "If-Match".into(), reason: "'*' is served on update, patch and delete of one instance; here send a version ETag like W/\"3\"".into() }),
        (v, false) => Ok(v),
    }
}

/// The `If-Match` version, and whether it was `*` (RFC 9110: any current version, so the
/// resource must exist).
pub fn if_match_instance(req: &HttpRequest) -> Result<(Option<u64>, bool), RequestError> {
    match header_str(req.headers(), "if-match")? {
        Some(v) if v.trim() == "*" => Ok((None, true)),
        Some(v) => Ok((Some(parse_etag("If-Match", v)?), false)),
        None => Ok((None, false)),
    }
}

/// Whether a read can answer 304 Not Modified (`If-None-Match`, then `If-Modified-Since`).
pub fn not_modified(ctx: &Ctx, version: u64, ts: u64) -> Result<bool, RequestError> {
    if let Some(inm) = ctx.if_none_match.as_deref() {
        if inm.trim() == "*" {
            return Ok(true);
        }
        // A tag that is not one of our version ETags simply does not match.
        if inm.split(',').any(|tag| parse_etag("If-None-Match", tag).ok() == Some(version)) {
            return Ok(true);
        }
        return Ok(false);
    }
    if let Some(ims) = ctx.if_modified_since.as_deref() {
        // An HTTP-date (header) or a FHIR instant (a bundle entry's request.ifModifiedSince).
        let since = meta::parse_http_date(ims).or_else(|| meta::parse_fhir_datetime(ims).map(|r| r.0)).ok_or_else(|| RequestError::BadHeader {
            name: "If-Modified-Since".into(),
            reason: format!("'{ims}' is not an HTTP-date or an instant"),
        })?;
        return Ok(ts / 1_000_000 * 1_000_000 <= since);
    }
    Ok(false)
}

/// Adds `ETag` and `Last-Modified` for a version.
pub fn version_headers(b: &mut HttpResponseBuilder, version: u64, ts: u64) {
    b.insert_header((header::ETAG, format!("W/\"{version}\"")));
    b.insert_header((header::LAST_MODIFIED, meta::format_http_date(ts)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_picks_json_or_refuses() {
        assert_eq!(accept(None).unwrap(), FHIR_JSON);
        assert_eq!(accept(Some("application/json")).unwrap(), PLAIN_JSON);
        assert_eq!(accept(Some("application/fhir+xml;q=0.9, */*;q=0.1")).unwrap(), FHIR_JSON);
        assert!(accept(Some("application/fhir+xml")).is_err());
        assert!(accept(Some("application/json;q=0")).is_err());
    }

    #[test]
    fn binary_reads_raw_unless_fhir_is_named() {
        use actix_web::test::TestRequest;
        let raw = |accept: Option<&str>, uri: &str| {
            let mut r = TestRequest::get().uri(uri);
            if let Some(a) = accept {
                r = r.insert_header(("accept", a));
            }
            binary_wants_raw(&r.to_http_request())
        };
        assert!(raw(None, "/Binary/a").unwrap());
        assert!(raw(Some("*/*"), "/Binary/a").unwrap());
        assert!(raw(Some("application/pdf"), "/Binary/a").unwrap());
        assert!(raw(Some("text/html,application/xhtml+xml,*/*;q=0.8"), "/Binary/a").unwrap());
        assert!(raw(Some("application/json"), "/Binary/a").unwrap());
        assert!(!raw(Some("application/fhir+json"), "/Binary/a").unwrap());
        assert!(!raw(Some("image/png, application/fhir+json;q=0.5"), "/Binary/a").unwrap());
        assert!(raw(Some("application/fhir+json;q=0"), "/Binary/a").unwrap());
        assert!(!raw(Some("*/*"), "/Binary/a?_format=json").unwrap());
        assert!(raw(Some("application/fhir+xml"), "/Binary/a").is_err());
    }

    #[test]
    fn prefer_and_etags() {
        assert_eq!(prefer(Some("return=minimal")).unwrap(), (Return::Minimal, false));
        assert_eq!(prefer(Some("handling=lenient, return=OperationOutcome")).unwrap(), (Return::OperationOutcome, true));
        assert_eq!(prefer(Some("return=everything")).unwrap(), (Return::Representation, false));
        assert_eq!(parse_etag("If-Match", "W/\"12\"").unwrap(), 12);
        assert_eq!(parse_etag("If-Match", "\"3\"").unwrap(), 3);
        assert!(parse_etag("If-Match", "W/\"x\"").is_err());
    }
}
