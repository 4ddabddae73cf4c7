//! The `$export` endpoints: kick-off at system, Patient and Group level (GET, or POST with a
//! `Parameters` body), the status URL `[base]/_export/{job}` (GET: 202 with `X-Progress` while
//! running, 200 with the manifest when done, 500 when failed; DELETE: cancel) and, for the local
//! sink, the output files `[base]/_export/{job}/{file}`. Every endpoint is behind the auth
//! middleware; what a caller may export is [`guard::export_types`], and only the caller who
//! started a job (or an operator) may follow it ([`guard::owns_job`]), and only while their
//! current grant still covers the job's types and Group ([`guard::grant_covers_job`]).

use actix_web::http::header;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use futures::StreamExt;
use serde_json::{json, Value};

use crate::machine::export_job::{errors_ndjson, file_name, ExportOp, ExportSpec, Job, Level, SinkKind, Status, ERRORS_FILE};
use crate::export::params::{self, KickOff};
use crate::export::scan::compartment_types;
use crate::export::ExportError;
use crate::auth::Op;
use crate::http::guard;
use crate::http::error::{operation_outcome, ApiError};
use crate::http::negotiate::{self, Ctx};
use crate::http::AppState;

pub const NDJSON: &str = "application/fhir+ndjson";

pub async fn system(req: HttpRequest, st: web::Data<AppState>, body: web::Payload) -> Result<HttpResponse, ApiError> {
    kick_off(req, st, body, Level::System).await
}

pub async fn patient(req: HttpRequest, st: web::Data<AppState>, body: web::Payload) -> Result<HttpResponse, ApiError> {
    kick_off(req, st, body, Level::Patient).await
}

pub async fn group(req: HttpRequest, st: web::Data<AppState>, path: web::Path<String>, body: web::Payload) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    if !crate::fhir::valid_id(&id) {
        return Err(crate::fhir::FhirError::InvalidId(id).into());
    }
    kick_off(req, st, body, Level::Group(id)).await
}

async fn kick_off(req: HttpRequest, st: web::Data<AppState>, body: web::Payload, level: Level) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    let mut pairs = ctx.params.clone();
    if req.method() == actix_web::http::Method::POST {
        negotiate::require_json_body(&req)?;
        let v = negotiate::read_json(body, &st.cfg.limits).await?;
        pairs.extend(params::from_parameters(&v)?);
    }
    let compartment = (level != Level::System).then(|| compartment_types(&st.search, &st.defs));
    let k: KickOff = params::parse(&pairs, &st.defs, &st.search, compartment.as_deref(), ctx.lenient)?;
    let explicit = k.types.is_some();
    let candidates = k.types.clone().or(compartment).unwrap_or_else(|| st.defs.types.iter().map(|t| t.to_string()).collect());
    let types = guard::export_types(&ctx, &st, candidates, explicit)?;
    if let Level::Group(gid) = &level {
        let grant = guard::require_ctx(&ctx, &st, Op::READ, "Group")?;
        let (_, rec) = ctx.store.read("Group", gid)?;
        guard::check_stored(&st, &grant, "Group", gid, rec.body())?;
    }
    let owner = guard::job_owner(&ctx.principal)?;
    let owner_key = owner.clone();
    for (rtype, q) in &k.type_filters {
        let parsed = crate::search::parse::parse(&st.search, rtype, q, false).map_err(|e| ExportError::BadParameter { name: "_typeFilter".into(), reason: e.to_string() })?;
        guard::export_filter_links(&ctx, &st, &parsed)?;
    }
    precheck_filters(&ctx, &st, &k).await?;
    let id = uuid::Uuid::new_v4().to_string();
    let xc = &st.cfg.export;
    let spec = ExportSpec {
        level,
        tenant: ctx.tenant.as_deref().map(String::from),
        owner,
        request: format!("{}{}", ctx.base, req.uri()),
        types,
        since: k.since,
        type_filters: k.type_filters,
        elements: k.elements,
        patients: k.patients,
        sink: xc.sink.kind(),
        ignored: k.ignored,
        part_max_lines: xc.part_max_lines,
        part_max_bytes: xc.part_max_bytes,
        max_active: xc.max_active_jobs as u32,
        max_per_owner: xc.max_jobs_per_owner as u32,
    };
    spec.check(&st.defs).map_err(|reason| ExportError::BadParameter { name: "kick-off".into(), reason })?;
    st.export.propose(ExportOp::Start { job: id.clone(), ts_micros: 0, spec }).await?;
    if st.export.job(&id)?.is_none() {
        // Apply refused it: over the job limits. Which one, as this node's replica sees it now.
        let jobs = crate::machine::export_state::list(st.store.tree().tree())?;
        let tenant = ctx.tenant.as_deref().map(String::from);
        let active = jobs.iter().filter(|j| j.is_active() && j.spec.tenant == tenant).count();
        let owned = jobs.iter().filter(|j| j.spec.owner == owner_key && j.spec.tenant == tenant).count();
        return Err(if active >= xc.max_active_jobs {
            ExportError::TooManyActive { active }
        } else if owned >= xc.max_jobs_per_owner {
            ExportError::TooManyOwned { owned }
        } else {
            // (Or an active job ended between the refusal and this look.)
            ExportError::TooManyKept { total: jobs.len(), max: crate::machine::export_job::MAX_JOBS }
        }
        .into());
    }
    st.export_supervisor.do_send(crate::export::runner::Poke);
    let note = operation_outcome("information", "informational", &format!("export job {id} started; poll the Content-Location URL for its status"));
    Ok(HttpResponse::Accepted()
        .insert_header((header::CONTENT_LOCATION, format!("{}/_export/{id}", ctx.base)))
        .content_type(ctx.content_type)
        .body(ctx.json_body(&note)))
}

/// Runs each `_typeFilter` on this node's index first, with the budget apply gives it, so a
/// filter that cannot be decided is a 400 now rather than a failed job.
async fn precheck_filters(ctx: &Ctx, st: &AppState, k: &KickOff) -> Result<(), ApiError> {
    if k.type_filters.is_empty() {
        return Ok(());
    }
    let (tree, reg, filters) = (ctx.store.tree().clone(), st.search.clone(), k.type_filters.clone());
    // All filters of the kick-off share one pool, as they do in apply.
    let found = web::block(move || {
        crate::search::cost::pool(crate::search::cost::ENTRY_ROWS, || {
            for (rtype, q) in &filters {
                crate::search::query::condition_docs(&reg, &tree, rtype, q).map_err(|e| (rtype.clone(), e))?;
            }
            Ok(())
        })
    })
    .await
    .map_err(|e| ExportError::Internal(e.to_string()))?;
    match found {
        Ok(()) => Ok(()),
        Err((_, crate::search::query::SearchError::Store(e))) => Err(e.into()),
        Err((rtype, e)) => Err(ExportError::BadParameter { name: "_typeFilter".into(), reason: format!("{rtype}: {e}") }.into()),
    }
}

/// The job `id` as this caller may see it: 404 when it does not exist, was cancelled, belongs
/// to another tenant, or to another caller.
fn visible_job(req: &HttpRequest, st: &AppState, id: &str) -> Result<Job, ApiError> {
    let none = || ApiError::from(ExportError::NoJob(id.to_string()));
    if !crate::machine::export_job::valid_job_id(id) {
        return Err(none());
    }
    let job = st.export.job(id)?.ok_or_else(none)?;
    let tenant = req.extensions().get::<crate::tenancy::InTenant>().and_then(|t| t.tenant.as_deref().map(String::from));
    let principal = guard::principal_of(req, st);
    if job.status == Status::Cancelled || job.spec.tenant != tenant || !guard::owns_job(&principal, &job.spec.owner) {
        return Err(none());
    }
    let group = match &job.spec.level {
        Level::Group(g) => Some(g.as_str()),
        _ => None,
    };
    if !guard::grant_covers_job(&principal, st, &job.spec.types, group) {
        return Err(crate::auth::AuthError::Forbidden(format!(
            "export job {id} covers data your current access does not reach ({}); ask with a token that grants it",
            job.spec.types.join(",")
        ))
        .into());
    }
    Ok(job)
}

pub async fn status(req: HttpRequest, st: web::Data<AppState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    let job = visible_job(&req, &st, &path)?;
    match &job.status {
        Status::Active => {
            let progress = format!(
                "{} resources written; type {} of {}{}",
                job.written(),
                (job.cursor.type_index + 1).min(job.spec.types.len()),
                job.spec.types.len(),
                job.spec.types.get(job.cursor.type_index).map(|t| format!(" ({t})")).unwrap_or_default()
            );
            Ok(HttpResponse::Accepted()
                .insert_header(("X-Progress", progress))
                .insert_header((header::RETRY_AFTER, st.cfg.export.retry_after_secs.to_string()))
                .finish())
        }
        Status::Complete => {
            let manifest = manifest(&ctx.base, &st, &job).await?;
            Ok(HttpResponse::Ok()
                .insert_header((header::EXPIRES, crate::fhir::meta::format_http_date(job.finished.unwrap_or(job.as_of).saturating_add(st.cfg.export.expiry_secs.saturating_mul(1_000_000)))))
                .content_type("application/json")
                .body(ctx.json_body(&manifest)))
        }
        Status::Failed(e) => Err(ExportError::Failed(e.clone()).into()),
        Status::Cancelled => Err(ExportError::NoJob(job.id).into()),
    }
}

/// The completion manifest.
async fn manifest(base: &str, st: &AppState, job: &Job) -> Result<Value, ApiError> {
    let sink = st.export.sink(job.spec.sink)?;
    let mut output = Vec::with_capacity(job.parts.len());
    for p in &job.parts {
        output.push(json!({"type": p.rtype, "url": sink.url(base, &job.id, &p.file()).await?, "count": p.count}));
    }
    let mut error = Vec::new();
    if !job.spec.ignored.is_empty() {
        error.push(json!({"type": "OperationOutcome", "url": sink.url(base, &job.id, ERRORS_FILE).await?, "count": job.spec.ignored.len()}));
    }
    Ok(json!({
        "transactionTime": crate::fhir::meta::format_instant(job.as_of),
        "request": job.spec.request,
        "requiresAccessToken": sink.requires_access_token(),
        "output": output,
        "error": error,
    }))
}

pub async fn cancel(req: HttpRequest, st: web::Data<AppState>, path: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    let job = visible_job(&req, &st, &path)?;
    st.export.propose(ExportOp::Cancel { job: job.id.clone(), ts_micros: 0 }).await?;
    st.export_supervisor.do_send(crate::export::runner::Poke);
    let note = operation_outcome("information", "informational", &format!("export job {} cancelled; its files are being deleted", job.id));
    Ok(HttpResponse::Accepted().content_type(ctx.content_type).body(ctx.json_body(&note)))
}

/// An output file of a local-sink job (or the ignored-parameters file of any job).
pub async fn file(req: HttpRequest, st: web::Data<AppState>, path: web::Path<(String, String)>) -> Result<HttpResponse, ApiError> {
    let (id, name) = path.into_inner();
    let job = visible_job(&req, &st, &id)?;
    let no_file = || ApiError::from(ExportError::NoFile { job: id.clone(), file: name.clone() });
    if job.spec.sink != SinkKind::Local {
        return Err(no_file());
    }
    let local = st.export.local.clone();
    if name == ERRORS_FILE && !job.spec.ignored.is_empty() {
        return Ok(HttpResponse::Ok().content_type(NDJSON).body(errors_ndjson(&job)));
    }
    let part = job.parts.iter().find(|p| p.file() == name).ok_or_else(no_file)?;
    let path = local.path(&job.id, &file_name(&part.rtype, part.n));
    // Only the file of the checkpointed part counts (a deposed leader may have left another
    // attempt under the name); written by another node: this replica writes the same bytes.
    let current = |m: std::io::Result<std::fs::Metadata>| m.is_ok_and(|m| m.len() == part.bytes);
    if !current(tokio::fs::metadata(&path).await) {
        // One rewrite at a time on this node; a request that waited finds the file written.
        let _turn = st.export.rewrites.acquire().await.map_err(|e| ExportError::Internal(e.to_string()))?;
        if !current(tokio::fs::metadata(&path).await) {
            let w = local.create(&job.id, &name).await?;
            st.export.rewrite(&job, part, Box::new(w)).await?;
        }
    }
    let f = tokio::fs::File::open(&path).await.map_err(|e| ExportError::Sink(format!("cannot open {}: {e}", path.display())))?;
    let len = f.metadata().await.map_err(|e| ExportError::Sink(e.to_string()))?.len();
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 256 << 10).map(|r| r.map_err(actix_web::error::ErrorInternalServerError));
    Ok(HttpResponse::Ok()
        .content_type(NDJSON)
        .no_chunking(len)
        .streaming(stream))
}
