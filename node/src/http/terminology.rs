//! The terminology operations over HTTP, GET (query parameters) or POST (a `Parameters` body):
//!
//! | route | needs read on |
//! |---|---|
//! | `[base]/ValueSet/$expand`, `[base]/ValueSet/{id}/$expand` | ValueSet, CodeSystem |
//! | `[base]/ValueSet/$validate-code`, `[base]/ValueSet/{id}/$validate-code` | ValueSet, CodeSystem |
//! | `[base]/CodeSystem/$lookup` | CodeSystem |
//! | `[base]/CodeSystem/$subsumes`, `[base]/CodeSystem/{id}/$subsumes` | CodeSystem |
//!
//! The rights are checked by a middleware on these routes ([`reads_value_sets`],
//! [`reads_code_systems`]) with the same rules as every interaction ([`guard::require`]), before
//! the handler runs. Unknown parameters are a 400 (ignored under `Prefer: handling=lenient`).
//! Expansions are bounded by `limits.max_expansion`.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use crate::terminology::expand::Expander;
use crate::terminology::load::Source;
use crate::terminology::model::ValueSet;
use crate::terminology::ops::{self, Coding, Page};
use crate::terminology::TerminologyError;
use crate::http::guard;
use crate::auth::Op;
use crate::http::error::ApiError;
use crate::http::negotiate::{self, Ctx};
use crate::http::{AppState, RequestError};

/// The operations a CapabilityStatement lists: (resource type, name, definition).
pub const OPERATIONS: &[(&str, &str, &str)] = &[
    ("ValueSet", "expand", "http://hl7.org/fhir/OperationDefinition/ValueSet-expand"),
    ("ValueSet", "validate-code", "http://hl7.org/fhir/OperationDefinition/ValueSet-validate-code"),
    ("CodeSystem", "lookup", "http://hl7.org/fhir/OperationDefinition/CodeSystem-lookup"),
    ("CodeSystem", "subsumes", "http://hl7.org/fhir/OperationDefinition/CodeSystem-subsumes"),
];

/// Registers the routes (before the API's `$operation` fallback).
pub fn configure(cfg: &mut web::ServiceConfig) {
    for path in ["/ValueSet/$expand", "/ValueSet/{id}/$expand"] {
        cfg.service(web::resource(path).wrap(from_fn(reads_value_sets)).route(web::get().to(expand)).route(web::post().to(expand)).default_service(web::to(get_or_post)));
    }
    for path in ["/ValueSet/$validate-code", "/ValueSet/{id}/$validate-code"] {
        cfg.service(web::resource(path).wrap(from_fn(reads_value_sets)).route(web::get().to(validate_code)).route(web::post().to(validate_code)).default_service(web::to(get_or_post)));
    }
    cfg.service(web::resource("/CodeSystem/$lookup").wrap(from_fn(reads_code_systems)).route(web::get().to(lookup)).route(web::post().to(lookup)).default_service(web::to(get_or_post)));
    for path in ["/CodeSystem/$subsumes", "/CodeSystem/{id}/$subsumes"] {
        cfg.service(web::resource(path).wrap(from_fn(reads_code_systems)).route(web::get().to(subsumes)).route(web::post().to(subsumes)).default_service(web::to(get_or_post)));
    }
}

async fn get_or_post(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(RequestError::MethodNotAllowed(format!("{} is not allowed on {}; allowed: GET, POST", req.method(), req.path())).into())
}

/// Value set operations read stored ValueSets and the CodeSystems they draw on.
pub async fn reads_value_sets(req: ServiceRequest, next: Next<impl MessageBody + 'static>) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    require_reads(req, next, &["ValueSet", "CodeSystem"]).await
}

pub async fn reads_code_systems(req: ServiceRequest, next: Next<impl MessageBody + 'static>) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    require_reads(req, next, &["CodeSystem"]).await
}

async fn require_reads(req: ServiceRequest, next: Next<impl MessageBody + 'static>, types: &[&str]) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    if let Some(st) = req.app_data::<web::Data<AppState>>().cloned() {
        let principal = guard::principal_of(req.request(), &st);
        for t in types {
            if let Err(e) = guard::require(&principal, &st, Op::READ, t) {
                return Ok(req.error_response(e));
            }
        }
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// One parameter's value: text, or JSON (a Coding, a CodeableConcept, a resource).
enum Arg {
    Text(String),
    Json(Value),
}

/// The parameters of one operation call, from the URL and (POST) the `Parameters` body.
struct Args(Vec<(String, Arg)>);

fn bad(name: &str, reason: impl Into<String>) -> TerminologyError {
    TerminologyError::BadParameter { name: name.into(), reason: reason.into() }
}

impl Args {
    async fn read(req: &HttpRequest, ctx: &Ctx, st: &AppState, body: web::Payload, known: &[&str]) -> Result<Args, ApiError> {
        let mut out: Vec<(String, Arg)> = ctx.params.iter().filter(|(k, _)| !matches!(k.as_str(), "_format" | "_pretty")).map(|(k, v)| (k.clone(), Arg::Text(v.clone()))).collect();
        if req.method() == actix_web::http::Method::POST {
            negotiate::require_json_body(req)?;
            let v = negotiate::read_json(body, &st.cfg.limits).await?;
            if v["resourceType"] != "Parameters" {
                return Err(bad("body", "a POST to an operation carries a Parameters resource").into());
            }
            for p in v["parameter"].as_array().into_iter().flatten() {
                let name = p["name"].as_str().ok_or_else(|| bad("parameter.name", "missing"))?.to_string();
                let arg = match (p.get("resource"), p.as_object().and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")))) {
                    (Some(r), _) => Arg::Json(r.clone()),
                    (None, Some((_, Value::String(s)))) => Arg::Text(s.clone()),
                    (None, Some((_, Value::Bool(b)))) => Arg::Text(b.to_string()),
                    (None, Some((_, Value::Number(n)))) => Arg::Text(n.to_string()),
                    (None, Some((_, v @ Value::Object(_)))) => Arg::Json(v.clone()),
                    _ => return Err(bad(&name, "needs a value[x] or a resource").into()),
                };
                out.push((name, arg));
            }
        }
        if !ctx.lenient {
            if let Some((name, _)) = out.iter().find(|(k, _)| !known.contains(&k.as_str())) {
                return Err(RequestError::UnknownParameter(format!("{name} (this operation takes {})", known.join(", "))).into());
            }
        }
        Ok(Args(out))
    }

    fn text(&self, name: &str) -> Result<Option<&str>, TerminologyError> {
        match self.0.iter().rev().find(|(k, _)| k == name) {
            None => Ok(None),
            Some((_, Arg::Text(s))) => Ok(Some(s.as_str())),
            Some((_, Arg::Json(_))) => Err(bad(name, "expected a primitive value")),
        }
    }

    fn json(&self, name: &str) -> Result<Option<&Value>, TerminologyError> {
        match self.0.iter().rev().find(|(k, _)| k == name) {
            None => Ok(None),
            Some((_, Arg::Json(v))) => Ok(Some(v)),
            Some((_, Arg::Text(_))) => Err(bad(name, "expected a Coding, CodeableConcept or resource (POST a Parameters body)")),
        }
    }

    fn number(&self, name: &str) -> Result<Option<usize>, TerminologyError> {
        self.text(name)?.map(|t| t.trim().parse::<usize>().map_err(|_| bad(name, format!("'{t}' is not a non-negative integer")))).transpose()
    }

    /// A coding from `coding_name` (a Coding) or from `code_name` + `system` / `display` / `version`.
    fn coding(&self, coding_name: &str, code_name: &str) -> Result<Option<Coding>, TerminologyError> {
        if let Some(v) = self.json(coding_name)? {
            return Coding::from_json(v).map(Some).ok_or_else(|| bad(coding_name, "a Coding with a code"));
        }
        let Some(code) = self.text(code_name)? else { return Ok(None) };
        Ok(Some(Coding {
            system: self.text("system")?.map(str::to_string),
            code: code.to_string(),
            display: self.text("display")?.map(str::to_string),
            version: self.text("version")?.map(str::to_string),
        }))
    }
}

/// Runs terminology work off the HTTP worker (it reads the store and may expand thousands of codes).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, TerminologyError> + Send + 'static) -> Result<T, ApiError> {
    web::block(f).await.map_err(|e| crate::store::StoreError::Storage(e.to_string()))?.map_err(ApiError::from)
}

fn answer(ctx: &Ctx, v: &Value) -> HttpResponse {
    ctx.respond(HttpResponse::Ok(), ctx.json_body(v))
}

/// The value set an operation works on: the instance, a `valueSet` resource, or `url`
/// (+ `valueSetVersion`); with the name errors use for it.
fn value_set(src: &Source<'_>, id: Option<&str>, args: &Args) -> Result<(ValueSet, String), TerminologyError> {
    if let Some(id) = id {
        return Ok((ValueSet::from_json(&src.by_id("ValueSet", id)?)?, format!("ValueSet/{id}")));
    }
    if let Some(v) = args.json("valueSet")? {
        return Ok((ValueSet::from_json(v)?, "the valueSet parameter".into()));
    }
    let url = args.text("url")?.ok_or_else(|| bad("url", "name the value set: url (or a valueSet resource in a POST, or call /ValueSet/{id}/$…)"))?;
    let canonical = match args.text("valueSetVersion")? {
        Some(v) => format!("{url}|{v}"),
        None => url.to_string(),
    };
    Ok(((*src.value_set(&canonical)?).clone(), canonical))
}

type Id = Option<web::Path<String>>;

pub async fn expand(req: HttpRequest, id: Id, body: web::Payload, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    let args = Args::read(&req, &ctx, &st, body, &["url", "valueSetVersion", "valueSet", "filter", "count", "offset"]).await?;
    negotiate::read_barrier(&req, &st).await?;
    let page = Page { filter: args.text("filter")?.filter(|f| !f.is_empty()).map(str::to_string), offset: args.number("offset")?.unwrap_or(0), count: args.number("count")? };
    let (tree, version, limit) = (ctx.store.tree().clone(), st.defs.version, st.cfg.limits.max_expansion);
    let id = id.map(web::Path::into_inner);
    let out = blocking(move || {
        let src = Source { version, tree: &tree };
        let (vs, what) = value_set(&src, id.as_deref(), &args)?;
        let codes = Expander { src, limit, key: "limits.max_expansion", displays: true }.expand(&vs, &what)?;
        let now = crate::fhir::meta::format_instant(crate::fhir::meta::now_micros());
        Ok(ops::expansion(&vs, codes, &page, &now))
    })
    .await?;
    Ok(answer(&ctx, &out))
}

pub async fn validate_code(req: HttpRequest, id: Id, body: web::Payload, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    let args = Args::read(&req, &ctx, &st, body, &["url", "valueSetVersion", "valueSet", "code", "system", "systemVersion", "version", "display", "coding", "codeableConcept"]).await?;
    negotiate::read_barrier(&req, &st).await?;
    let mut codings: Vec<Coding> = args.coding("coding", "code")?.into_iter().collect();
    if let Some(cc) = args.json("codeableConcept")? {
        codings.extend(cc["coding"].as_array().into_iter().flatten().filter_map(Coding::from_json));
    }
    if codings.is_empty() {
        return Err(bad("code", "give code (with system), coding or codeableConcept").into());
    }
    let (tree, version, limit) = (ctx.store.tree().clone(), st.defs.version, st.cfg.limits.max_expansion);
    let id = id.map(web::Path::into_inner);
    let out = blocking(move || {
        let src = Source { version, tree: &tree };
        let (vs, what) = value_set(&src, id.as_deref(), &args)?;
        ops::validate(&Expander { src, limit, key: "limits.max_expansion", displays: true }, &vs, &what, &codings)
    })
    .await?;
    Ok(answer(&ctx, &out))
}

pub async fn lookup(req: HttpRequest, body: web::Payload, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    let args = Args::read(&req, &ctx, &st, body, &["code", "system", "version", "coding", "date", "displayLanguage", "property"]).await?;
    negotiate::read_barrier(&req, &st).await?;
    let coding = args.coding("coding", "code")?.ok_or_else(|| bad("code", "give system and code, or coding"))?;
    let system = coding.system.clone().ok_or_else(|| bad("system", "$lookup needs the code system (system, or coding.system)"))?;
    let (tree, version) = (ctx.store.tree().clone(), st.defs.version);
    let out = blocking(move || {
        let src = Source { version, tree: &tree };
        let cs = ops::code_system(&src, &system, coding.version.as_deref())?;
        ops::lookup(&cs, &coding.code)
    })
    .await?;
    Ok(answer(&ctx, &out))
}

pub async fn subsumes(req: HttpRequest, id: Id, body: web::Payload, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    let args = Args::read(&req, &ctx, &st, body, &["codeA", "codeB", "system", "version", "codingA", "codingB"]).await?;
    negotiate::read_barrier(&req, &st).await?;
    let a = args.coding("codingA", "codeA")?.ok_or_else(|| bad("codeA", "give codeA and codeB (with system), or codingA and codingB"))?;
    let b = args.coding("codingB", "codeB")?.ok_or_else(|| bad("codeB", "give codeA and codeB (with system), or codingA and codingB"))?;
    if a.system.is_some() && b.system.is_some() && a.system != b.system {
        return Err(bad("codingB", "codingA and codingB are in different code systems").into());
    }
    let (tree, version) = (ctx.store.tree().clone(), st.defs.version);
    let id = id.map(web::Path::into_inner);
    let out = blocking(move || {
        let src = Source { version, tree: &tree };
        let cs = match id {
            Some(id) => std::sync::Arc::new(crate::terminology::model::CodeSystem::from_json(&src.by_id("CodeSystem", &id)?)?),
            None => {
                let system = a.system.clone().or(b.system.clone()).ok_or_else(|| bad("system", "$subsumes needs the code system (system, or codingA.system)"))?;
                ops::code_system(&src, &system, a.version.as_deref())?
            }
        };
        ops::subsumes(&cs, &a.code, &b.code)
    })
    .await?;
    Ok(answer(&ctx, &out))
}
