//! `Patient/[id]/$everything` and `Patient/$everything` (patient.html#everything): the patient(s),
//! every resource in their compartment, and (on each page) the resources those reference
//! (Practitioner, Organization, Medication, Location, …, as `include` entries).
//!
//! It is a search: the members of each compartment type are read from the index (the
//! compartment's reference rows, as a compartment search does), then paged with the search
//! engine's keyset pages, so paging links stay stable under writes (a page never repeats or skips
//! a resource that existed when the first page was read), and every type is searched within the
//! caller's reach (a `patient/` grant sees only its own compartment). `_since` (an instant: only
//! versions updated since), `_type` (a comma list of types) and `_count` are served; `start` /
//! `end` (clinical dates) are refused as not supported. The type level covers every patient the
//! caller may read and every resource that references a Patient through a compartment parameter.
//! Referenced resources come along with the page of their first referrer, so one reached from
//! several pages appears on each of them (`include` entries, bounded by
//! `limits.max_include_resources`).

use std::collections::HashMap;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use super::params::Inputs;
use super::OperationError;
use crate::http::guard;
use crate::auth::Op;
use crate::http::error::ApiError;
use crate::http::negotiate::{self, Ctx};
use crate::http::AppState;
use crate::search::query::{self, Ids};

const PATIENT: &str = "Patient";

/// Query parameters passed on to the search unchanged.
const PASSED: [&str; 4] = ["_count", "_page", "_format", "_pretty"];

pub async fn instance(req: HttpRequest, path: web::Path<String>, body: web::Payload, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let body = negotiate::read_bytes_limited(body, MAX_PARAMETERS_BYTES, "the $everything Parameters body (64 KiB)", &st.cfg.limits).await?;
    everything(&req, &st, Some(&path), &body).await
}

pub async fn type_level(req: HttpRequest, body: web::Payload, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let body = negotiate::read_bytes_limited(body, MAX_PARAMETERS_BYTES, "the $everything Parameters body (64 KiB)", &st.cfg.limits).await?;
    everything(&req, &st, None, &body).await
}

/// A `Parameters` body of `$everything` (three small parameters) is at most this large.
const MAX_PARAMETERS_BYTES: usize = 64 * 1024;

fn bad(name: &str, reason: impl Into<String>) -> ApiError {
    OperationError::BadParameter { name: name.into(), reason: reason.into() }.into()
}

async fn everything(req: &HttpRequest, st: &web::Data<AppState>, pid: Option<&str>, body: &[u8]) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(req, st)?;
    negotiate::read_barrier(req, st).await?;
    let parameters: Option<Value> = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        negotiate::require_json_body(req)?;
        Some(serde_json::from_slice(body).map_err(|e| crate::http::RequestError::InvalidJson(e.to_string()))?)
    };
    let inputs = Inputs::new(parameters, ctx.params.clone());
    for name in inputs.names() {
        if !["_since", "_type", "_count"].contains(&name) {
            return Err(bad(name, "$everything takes _since, _type, _count (start / end are not supported)"));
        }
    }
    for (k, _) in &ctx.params {
        if !(PASSED.contains(&k.as_str()) || k == "_since" || k == "_type") {
            let why = if k == "start" || k == "end" { "clinical date ranges (start / end) are not supported" } else { "$everything takes _since, _type, _count" };
            return Err(bad(k, why));
        }
    }
    // The compartment's types (the patient first), narrowed by `_type`.
    let mut types: Vec<&'static str> = vec![st.defs.resource_type(PATIENT)?];
    types.extend(st.defs.types.iter().copied().filter(|t| *t != PATIENT && st.search.compartment_params(PATIENT, t).is_some_and(|codes| !codes.is_empty())));
    if let Some(list) = inputs.text("_type") {
        let mut wanted = Vec::new();
        for t in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let t = st.defs.resource_type(t)?;
            if !types.contains(&t) {
                return Err(bad("_type", format!("{t} is not in the Patient compartment")));
            }
            wanted.push(t);
        }
        types.retain(|t| wanted.contains(t));
    }
    if let Some(pid) = pid {
        // The patient must exist and be readable by the caller.
        let (_, pid) = crate::http::crud::type_and_id(st, PATIENT, pid)?;
        let grant = guard::require_ctx(&ctx, st, Op::READ, PATIENT)?;
        let (_, record) = ctx.store.read(PATIENT, pid)?;
        guard::check_stored(st, &grant, PATIENT, pid, record.body())?;
    }
    // The members' doc numbers come from index scans (at type level, of every reference to a
    // Patient): on the blocking pool, not an HTTP worker.
    let mut within = {
        let (st, store, pid, types) = (st.clone(), ctx.store.clone(), pid.map(String::from), types.clone());
        crate::http::work::block(&ctx, &st.clone(), move || members(&st, &store, pid.as_deref(), &types)).await?
    };
    types.retain(|t| within.get(t).is_none_or(|m| !m.is_empty()));
    if types.is_empty() {
        types.push(st.defs.resource_type(PATIENT)?);
        within.insert(types[0], Ids::new());
    }
    // What the search runs with; the links carry only what the caller sent.
    let mut link_params: Vec<(String, String)> = ctx.params.iter().filter(|(k, _)| PASSED.contains(&k.as_str()) && k != "_page").cloned().collect();
    for name in ["_since", "_type", "_count"] {
        if let Some(v) = inputs.text(name) {
            if !link_params.iter().any(|(k, _)| k == name) {
                link_params.push((name.to_string(), v));
            }
        }
    }
    let mut params: Vec<(String, String)> = link_params.iter().filter(|(k, _)| k != "_since" && k != "_type").cloned().collect();
    if let Some(page) = inputs.text("_page") {
        params.push(("_page".into(), page));
    }
    if let Some(since) = inputs.text("_since") {
        crate::fhir::meta::parse_fhir_datetime(&since).ok_or_else(|| bad("_since", format!("'{since}' is not a FHIR instant")))?;
        params.push(("_lastUpdated".into(), format!("ge{since}")));
    }
    for t in &types {
        params.push(("_include".into(), format!("{t}:*")));
    }
    let path = match pid {
        Some(pid) => format!("/{PATIENT}/{pid}/$everything"),
        None => format!("/{PATIENT}/$everything"),
    };
    crate::http::search::respond_types(&ctx, st, types, params, link_params, Some(within), path).await
}

/// The doc numbers of each type's members: of `pid`'s compartment, or (type level, `None`) of
/// every resource that references a Patient through a compartment parameter (the Patient type
/// itself then unrestricted: every patient in the caller's reach).
fn members(st: &AppState, store: &crate::store::Store, pid: Option<&str>, types: &[&'static str]) -> Result<HashMap<&'static str, Ids>, ApiError> {
    let tree = store.tree();
    let mut within = HashMap::new();
    for t in types {
        if pid.is_none() && *t == PATIENT {
            continue;
        }
        let mut members = Ids::new();
        if let (Some(pid), true) = (pid, *t == PATIENT) {
            members.extend(crate::search::posting::docnum(tree, PATIENT, pid).map_err(query::SearchError::from)?);
        }
        for code in st.search.compartment_params(PATIENT, t).unwrap_or_default() {
            members |= match pid {
                Some(pid) => query::referrer_docs(tree, t, &code, PATIENT, pid)?,
                None => query::referrers_of_type(tree, t, &code, PATIENT)?,
            };
        }
        within.insert(*t, members);
    }
    Ok(within)
}
