//! Turning a batch / transaction Bundle into a plan, before anything is proposed: each entry's
//! `request` (method, url, ifMatch, ifNoneMatch, ifNoneExist, ifModifiedSince) is checked, its
//! resource validated and given its id (the same pipeline as a single write:
//! [`crate::actors::resource::prepare`]), a PATCH applied to the current version, and GET / HEAD
//! URLs parsed. Each write entry passes the caller's rights check ([`crate::http::guard`]) here.
//! Errors are per entry: a transaction fails on the first, a batch answers each in its entry.

use base64::Engine;
use serde_json::Value;

use super::{patch, AppState, RequestError};
use crate::actors::resource::{prepare, ActorSettings};
use crate::actors::WriteIntent;
use super::negotiate::Ctx;
use crate::http::guard;
use crate::http::error::ApiError;
use crate::fhir::FhirError;
use crate::machine::command::{Action, BundleOp, Condition};

/// batch or transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Batch,
    Transaction,
}

/// An entry's `request.method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Delete,
    Post,
    Put,
    Patch,
    Get,
    Head,
}

impl Method {
    /// The method of a `request.method` value.
    pub fn parse(s: &str) -> Option<Method> {
        Some(match s {
            "DELETE" => Method::Delete,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            _ => return None,
        })
    }

    /// Transaction processing order (http.html#trules): DELETE, POST, PUT / PATCH, GET / HEAD.
    pub fn order(self) -> u8 {
        match self {
            Method::Delete => 0,
            Method::Post => 1,
            Method::Put | Method::Patch => 2,
            Method::Get | Method::Head => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Delete => "DELETE",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Get => "GET",
            Method::Head => "HEAD",
        }
    }
}

/// A read entry, run after the writes.
#[derive(Debug)]
pub struct Read {
    pub route: super::dispatch::Route,
    pub query: String,
    pub head: bool,
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<String>,
}

/// What an entry does.
#[derive(Debug)]
pub enum Step {
    Write(BundleOp),
    Read(Read),
}

/// One planned entry (in the client's order).
#[derive(Debug)]
pub struct EntryPlan {
    pub index: usize,
    pub method: Option<Method>,
    pub url: String,
    pub step: Result<Step, ApiError>,
    /// A PATCH without `ifMatch`: a version conflict at apply means "plan again".
    pub retry_on_conflict: bool,
}

impl EntryPlan {
    /// "Bundle.entry[3] (PUT Patient/1)".
    pub fn label(&self) -> String {
        let m = self.method.map(Method::as_str).unwrap_or("?");
        format!("Bundle.entry[{}] ({m} {})", self.index, self.url)
    }
}

/// The planned bundle.
pub struct Plan {
    pub kind: Kind,
    pub entries: Vec<EntryPlan>,
}

fn bad(name: &str, reason: impl Into<String>) -> ApiError {
    RequestError::BadParameter { name: name.into(), reason: reason.into() }.into()
}

/// Plans a Bundle body. Errors about the bundle itself (not one entry) are returned as `Err`.
pub fn plan(st: &AppState, ctx: &Ctx, body: Value) -> Result<Plan, ApiError> {
    let (principal, base) = (&*ctx.principal, ctx.base.as_str());
    let Value::Object(mut bundle) = body else { return Err(FhirError::NotAnObject.into()) };
    match bundle.get("resourceType").and_then(Value::as_str) {
        Some("Bundle") => {}
        Some(other) => return Err(bad("resourceType", format!("POST / takes a Bundle, not a {other}"))),
        None => return Err(FhirError::MissingResourceType.into()),
    }
    let kind = match bundle.get("type").and_then(Value::as_str) {
        Some("batch") => Kind::Batch,
        Some("transaction") => Kind::Transaction,
        Some(other) => return Err(bad("Bundle.type", format!("'{other}' cannot be processed; POST / takes a batch or a transaction"))),
        None => return Err(bad("Bundle.type", "missing; POST / takes a batch or a transaction")),
    };
    principal.allows_bundle(&st.auth.rules, if kind == Kind::Batch { "batch" } else { "transaction" })?;
    let entries = match bundle.remove("entry") {
        None => Vec::new(),
        Some(Value::Array(a)) => a,
        Some(_) => return Err(bad("Bundle.entry", "must be an array")),
    };
    if entries.len() > st.cfg.limits.max_bundle_entries {
        return Err(RequestError::TooManyEntries { count: entries.len(), limit: st.cfg.limits.max_bundle_entries }.into());
    }
    // bdl-7: fullUrls are unique (a reference to one must name one entry).
    let mut seen: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let Some(url) = e.get("fullUrl").and_then(Value::as_str) {
            if let Some(first) = seen.insert(url, i) {
                return Err(bad("Bundle.entry.fullUrl", format!("Bundle.entry[{first}] and Bundle.entry[{i}] have the same fullUrl '{url}'")));
            }
        }
    }
    let settings = st.write_settings.clone();
    let entries = entries
        .into_iter()
        .enumerate()
        .map(|(index, e)| {
            let request = e.get("request");
            let method = request.and_then(|r| r.get("method")).and_then(Value::as_str).and_then(Method::parse);
            let url = request.and_then(|r| r.get("url")).and_then(Value::as_str).unwrap_or("").to_string();
            let retry_on_conflict = method == Some(Method::Patch) && header(&e, "ifMatch").is_none();
            let step = plan_entry(st, ctx, &settings, base, index, method, &url, e);
            EntryPlan { index, method, url, step, retry_on_conflict }
        })
        .collect();
    Ok(Plan { kind, entries })
}

/// Whether the bundle has a PATCH entry without `ifMatch` (one that may have to be planned again).
pub fn has_unconditioned_patch(body: &Value) -> bool {
    body.get("entry").and_then(Value::as_array).is_some_and(|entries| {
        entries.iter().any(|e| header(e, "method") == Some("PATCH") && header(e, "ifMatch").is_none())
    })
}

/// Every entry passes here before it is planned: the method and URL must be present. (The
/// caller's rights are checked per entry where the entry is planned: writes in `plan_entry`,
/// reads where they run, by the same guards as outside a bundle.)
pub fn check_entry(index: usize, method: Option<Method>, url: &str) -> Result<Method, ApiError> {
    let method = method.ok_or_else(|| bad(&format!("Bundle.entry[{index}].request.method"), "missing or not one of GET, HEAD, POST, PUT, PATCH, DELETE"))?;
    if url.is_empty() {
        return Err(bad(&format!("Bundle.entry[{index}].request.url"), "missing"));
    }
    Ok(method)
}

/// The path and query of an entry URL, relative to this server. An absolute URL on another base
/// (seen in the spec's examples) is read from its first resource-type segment on, as other
/// servers do: `http://example.org/fhir/Questionnaire/1` → `Questionnaire/1`.
fn split_url<'a>(st: &AppState, base: &str, url: &'a str) -> Result<(&'a str, &'a str), ApiError> {
    let rel = match url.strip_prefix(base) {
        Some(rest) => rest,
        None if url.contains("://") => {
            let (path, _) = url.split_once('?').unwrap_or((url, ""));
            let after_scheme = path.find("://").map(|i| i + 3).unwrap_or(0);
            let mut offset = None;
            let mut at = after_scheme;
            for seg in path[after_scheme..].split('/') {
                if st.defs.resource_type(seg).is_ok() {
                    offset = Some(at);
                    break;
                }
                at += seg.len() + 1;
            }
            let offset = offset.ok_or_else(|| bad("request.url", format!("'{url}' names no resource type")))?;
            &url[offset..]
        }
        None => url,
    };
    let rel = rel.trim_start_matches('/');
    Ok(rel.split_once('?').unwrap_or((rel, "")))
}

fn header<'a>(e: &'a Value, name: &str) -> Option<&'a str> {
    e.get("request").and_then(|r| r.get(name)).and_then(Value::as_str)
}

fn condition(query: &str, multiple: bool) -> Result<Condition, ApiError> {
    Ok(super::crud::condition(query, "request.url", multiple)?)
}

#[allow(clippy::too_many_arguments)]
fn plan_entry(st: &AppState, ctx: &Ctx, settings: &ActorSettings, base: &str, index: usize, method: Option<Method>, url: &str, mut e: Value) -> Result<Step, ApiError> {
    let method = check_entry(index, method, url)?;
    let (path, query) = split_url(st, base, url)?;
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let if_match = header(&e, "ifMatch").map(|v| super::negotiate::parse_etag("ifMatch", v)).transpose()?;
    let full_url = e.get("fullUrl").and_then(Value::as_str).map(String::from);
    let mut resource = e.as_object_mut().and_then(|o| o.remove("resource"));
    let write = |mut op: WriteIntent, rtype: &'static str, mut condition: Option<Condition>, if_none_match: bool| -> Result<Step, ApiError> {
        if let Some(cond) = condition.as_mut() {
            guard::confine(&ctx.principal, st, rtype, op.action, cond)?;
        }
        // The same rights check as a write outside a bundle (crud::send_write), on the state the
        // bundle is planned against; a patient/ write is pinned to the version it saw.
        crate::binary::vet_json_write(st.cfg.fhir_version, &ctx.store, rtype, op.id.as_deref(), op.body.as_mut())?;
        let check = guard::WriteCheck { rtype, action: op.action, id: op.id.as_deref(), body: op.body.as_ref(), condition: condition.as_ref(), full_url: full_url.as_deref() };
        let seen = guard::check_write(&ctx.principal, st, &ctx.store, &check)?;
        guard::pin(&mut op.if_match, condition.is_some(), seen, rtype, op.id.as_deref())?;
        let op = prepare(&st.defs, settings, rtype, op)?;
        Ok(Step::Write(BundleOp { index: index as u32, op, condition, if_none_match, full_url: full_url.clone() }))
    };
    // Each entry uses its resource once: moved out, not copied.
    let mut resource_of = |rtype: &str| -> Result<Value, ApiError> {
        let r = resource.take().ok_or_else(|| bad("resource", format!("a {} entry needs a resource", method.as_str())))?;
        match r.get("resourceType").and_then(Value::as_str) {
            Some(t) if t == rtype => Ok(r),
            Some(t) => Err(FhirError::TypeMismatch { expected: rtype.to_string(), found: t.to_string() }.into()),
            None => Err(FhirError::MissingResourceType.into()),
        }
    };
    if let Some(op) = segments.iter().find(|s| s.starts_with('$')) {
        return Err(RequestError::NotImplemented(format!("operation {op} (in a bundle entry)")).into());
    }
    match (method, segments.as_slice()) {
        (Method::Get | Method::Head, _) => Ok(Step::Read(Read {
            route: super::dispatch::Route::parse(path)?.checked(st)?,
            query: query.to_string(),
            head: method == Method::Head,
            if_none_match: header(&e, "ifNoneMatch").map(String::from),
            if_modified_since: header(&e, "ifModifiedSince").map(String::from),
        })),
        (Method::Post, [t]) => {
            let rtype = st.defs.resource_type(t)?;
            let cond = header(&e, "ifNoneExist").map(|q| condition(super::crud::if_none_exist_query(q), false)).transpose()?;
            let intent = WriteIntent { action: Action::Create, id: None, body: Some(resource_of(rtype)?), if_match: None, condition: None };
            write(intent, rtype, cond, false)
        }
        (Method::Put, [t, id]) => {
            let (rtype, id) = super::crud::type_and_id(st, t, id)?;
            let if_none_match = match header(&e, "ifNoneMatch").map(str::trim) {
                None => false,
                Some("*") => true,
                Some(v) => return Err(bad("ifNoneMatch", format!("'{v}': a PUT entry takes only ifNoneMatch: *"))),
            };
            let intent = WriteIntent { action: Action::Update, id: Some(id.to_string()), body: Some(resource_of(rtype)?), if_match, condition: None };
            write(intent, rtype, None, if_none_match)
        }
        (Method::Put, [t]) if !query.is_empty() => {
            let rtype = st.defs.resource_type(t)?;
            let mut cond = condition(query, false)?;
            let mut body = resource_of(rtype)?;
            let id = super::crud::conditional_update_id(&mut body, &mut cond)?;
            let intent = WriteIntent { action: Action::Update, id: Some(id), body: Some(body), if_match, condition: None };
            write(intent, rtype, Some(cond), false)
        }
        (Method::Delete, [t, id]) => {
            let (rtype, id) = super::crud::type_and_id(st, t, id)?;
            write(WriteIntent { action: Action::Delete, id: Some(id.to_string()), body: None, if_match, condition: None }, rtype, None, false)
        }
        (Method::Delete, [t]) if !query.is_empty() => {
            let rtype = st.defs.resource_type(t)?;
            if if_match.is_some() {
                return Err(bad("ifMatch", "a conditional DELETE takes no ifMatch (it may delete several versions of several resources)"));
            }
            let cond = condition(query, st.cfg.allow_multiple_conditional_delete)?;
            write(WriteIntent { action: Action::Delete, id: Some(String::new()), body: None, if_match: None, condition: None }, rtype, Some(cond), false)
        }
        (Method::Patch, [t, rest @ ..]) if rest.len() == 1 || (rest.is_empty() && !query.is_empty()) => {
            let rtype = st.defs.resource_type(t)?;
            // The caller's rights before the search runs or the patch is applied (a patient/
            // caller's search confined to the compartment first).
            let mut cond = if rest.is_empty() { Some(condition(query, false)?) } else { None };
            if let Some(c) = cond.as_mut() {
                guard::confine(&ctx.principal, st, rtype, Action::Patch, c)?;
            }
            let pre_id = rest.first().copied();
            guard::check_write(&ctx.principal, st, &ctx.store, &guard::WriteCheck { rtype, action: Action::Patch, id: pre_id, body: None, condition: cond.as_ref(), full_url: None })?;
            // Conditional: the match found here is re-checked at apply (see http/patch.rs).
            let id = match (rest, &cond) {
                ([id], _) => super::crud::type_and_id(st, rtype, id)?.1.to_string(),
                (_, Some(c)) => patch::match_one(st, &ctx.store, rtype, c)?,
                (_, None) => return Err(bad("request.url", "a PATCH entry needs an id or a condition")),
            };
            let ops = patch_document(resource.take(), st.cfg.limits.max_patch_ops)?;
            let (body, version) = patch::patched(st, &ctx.store, rtype, &id, &ops, if_match)?;
            let intent = WriteIntent { action: Action::Patch, id: Some(id), body: Some(body), if_match: Some(version), condition: None };
            write(intent, rtype, cond, false)
        }
        (m, _) => Err(bad("request.url", format!("{} {url} is not an interaction a bundle entry can carry", m.as_str()))),
    }
}

/// The patch of a PATCH entry: a Binary whose content type is `application/json-patch+json`
/// (R4 `data`, STU3 `content`) holding a JSON Patch, or a `Parameters` resource (FHIRPath Patch).
fn patch_document(resource: Option<Value>, max_ops: usize) -> Result<patch::PatchDoc, ApiError> {
    let r = resource.ok_or_else(|| bad("resource", "a PATCH entry needs a Binary resource holding a JSON Patch, or a Parameters resource (FHIRPath Patch)"))?;
    match r.get("resourceType").and_then(Value::as_str) {
        Some("Binary") => {}
        Some("Parameters") => return Ok(patch::PatchDoc::FhirPath(super::fhirpath_patch::FhirPatch::parse(&r, max_ops)?)),
        _ => return Err(bad("resource", "a PATCH entry needs a Binary resource holding a JSON Patch, or a Parameters resource (FHIRPath Patch)")),
    }
    let ct = r.get("contentType").and_then(Value::as_str).unwrap_or("");
    if !ct.starts_with(super::negotiate::JSON_PATCH) {
        return Err(RequestError::UnsupportedMediaType(format!("PATCH entry Binary.contentType '{ct}': send {}", super::negotiate::JSON_PATCH)).into());
    }
    let data = r.get("data").or_else(|| r.get("content")).and_then(Value::as_str).ok_or_else(|| bad("Binary.data", "missing"))?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(data.trim()).map_err(|e| RequestError::InvalidPatch(format!("Binary.data is not base64: {e}")))?;
    let doc = serde_json::from_slice(&bytes).map_err(|e| RequestError::InvalidPatch(format!("Binary.data is not JSON: {e}")))?;
    Ok(patch::PatchDoc::Json(patch::parse_patch(doc, max_ops)?))
}
