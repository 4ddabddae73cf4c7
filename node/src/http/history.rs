//! History at instance, type and system level: `_since`, `_at`, `_count`, and `first` / `next` /
//! `previous` links whose cursors are index keys, so a page stays the same under concurrent writes
//! (new versions only ever appear before the first page). Stored bodies are embedded as raw JSON
//! unless `_summary`, `_elements` or `_pretty` asks for changes.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::bundle::{embed, link, relation, Bundle, Entry};
use super::crud::type_and_id;
use super::negotiate::Ctx;
use super::{AppState, RequestError};
use crate::http::guard;
use crate::auth::Op;
use crate::http::error::ApiError;
use crate::fhir::meta;
use crate::machine::command::Action;
use crate::store::resources::{HistoryPage, HistoryQuery, HistoryScope, PageDir};
use crate::store::StoreError;

const PARAMS: [&str; 8] = ["_count", "_since", "_at", "_page", "_format", "_pretty", "_summary", "_elements"];

pub async fn system(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    super::negotiate::read_barrier(&req, &st).await?;
    history_in(&ctx, &st, None, None).await
}

pub async fn type_level(req: HttpRequest, path: web::Path<String>, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    super::negotiate::read_barrier(&req, &st).await?;
    history_in(&ctx, &st, Some(&path), None).await
}

pub async fn instance(req: HttpRequest, path: web::Path<(String, String)>, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    super::negotiate::read_barrier(&req, &st).await?;
    history_in(&ctx, &st, Some(&path.0), Some(&path.1)).await
}

/// History of the system (no type), a type, or an instance (type and id), read on the pool of
/// costly work ([`super::work`]).
pub async fn history_in(ctx: &Ctx, st: &web::Data<AppState>, rtype: Option<&str>, id: Option<&str>) -> Result<HttpResponse, ApiError> {
    let (c, s, rtype, id) = (ctx.clone(), st.clone(), rtype.map(String::from), id.map(String::from));
    let body = super::work::block(ctx, st, move || history_bytes(&c, &s, rtype.as_deref(), id.as_deref())).await?;
    Ok(ctx.respond(HttpResponse::Ok(), body))
}

/// The history bundle's bytes.
fn history_bytes(ctx: &Ctx, st: &AppState, rtype: Option<&str>, id: Option<&str>) -> Result<Vec<u8>, ApiError> {
    let (scope, path) = match (rtype, id) {
        (Some(t), Some(id)) => {
            let (t, id) = type_and_id(st, t, id)?;
            (HistoryScope::Instance { rtype: t.into(), id: id.into() }, format!("/{t}/{id}/_history"))
        }
        (Some(t), None) => {
            let t = st.defs.resource_type(t)?;
            (HistoryScope::Type { rtype: t.into() }, format!("/{t}/_history"))
        }
        _ => (HistoryScope::System, "/_history".into()),
    };
    let q = query(ctx, st)?;
    // The caller's rights first (a forbidden type is a 403, not an empty page).
    match &scope {
        HistoryScope::Instance { rtype, .. } => drop(guard::require_ctx(ctx, st, Op::HISTORY_INSTANCE, rtype)?),
        HistoryScope::Type { rtype } => drop(guard::require_ctx(ctx, st, Op::HISTORY_TYPE, rtype)?),
        HistoryScope::System => guard::require_some_type(ctx, st, Op::HISTORY_SYSTEM)?,
    }
    let op = match scope {
        HistoryScope::Instance { .. } => Op::HISTORY_INSTANCE,
        HistoryScope::Type { .. } => Op::HISTORY_TYPE,
        HistoryScope::System => Op::HISTORY_SYSTEM,
    };
    let page = ctx.store.history_visible(&scope, &q, &guard::history_visibility(ctx, st, op))?;
    bundle(ctx, st, &path, &page)?.to_bytes(ctx)
}

fn bad(name: &str, reason: String) -> RequestError {
    RequestError::BadParameter { name: name.into(), reason }
}

fn query(ctx: &Ctx, st: &AppState) -> Result<HistoryQuery, RequestError> {
    for (k, _) in &ctx.params {
        if !PARAMS.contains(&k.as_str()) && !ctx.lenient {
            return Err(RequestError::UnknownParameter(format!("{k} (history takes _count, _since, _at)")));
        }
    }
    ctx.reject_count_summary()?;
    let count = match ctx.param("_count") {
        None => st.cfg.limits.default_page_size,
        Some(c) => c
            .parse::<usize>()
            .map_err(|_| bad("_count", format!("'{c}' is not a non-negative integer")))?
            .min(st.cfg.limits.max_page_size),
    };
    let since = ctx
        .param("_since")
        .map(|s| meta::parse_fhir_datetime(s).map(|r| r.0).ok_or_else(|| bad("_since", format!("'{s}' is not a FHIR instant"))))
        .transpose()?;
    let at = ctx
        .param("_at")
        .map(|s| meta::parse_fhir_datetime(s).ok_or_else(|| bad("_at", format!("'{s}' is not a FHIR date or dateTime"))))
        .transpose()?;
    let cursor = ctx
        .param("_page")
        .map(|p| {
            let dir = match p.get(..1) {
                Some("o") => PageDir::Older,
                Some("n") => PageDir::Newer,
                _ => return Err(bad("_page", "not a cursor from a link of this server".into())),
            };
            let key = hex::decode(&p[1..]).map_err(|_| bad("_page", "not a cursor from a link of this server".into()))?;
            Ok((key, dir))
        })
        .transpose()?;
    Ok(HistoryQuery { since, at, count, cursor, max_scan: st.cfg.limits.max_history_scan })
}

/// Whether the version before `version` is a deletion (the update re-created the resource).
fn follows_delete(store: &crate::store::Store, rtype: &str, id: &str, version: u64) -> Result<bool, ApiError> {
    match store.vread(rtype, id, version - 1) {
        Err(StoreError::Gone { .. }) => Ok(true),
        Ok(_) | Err(StoreError::VersionNotFound { .. }) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn bundle<'a>(ctx: &Ctx, st: &AppState, path: &str, page: &'a HistoryPage) -> Result<Bundle<'a>, ApiError> {
    let link = |page: Option<String>| link(ctx, path, &ctx.params, page);
    let mut links = vec![relation("self", link(ctx.param("_page").map(str::to_string))), relation("first", link(None))];
    if let Some(k) = &page.newer {
        links.push(relation("previous", link(Some(format!("n{}", hex::encode(k))))));
    }
    if let Some(k) = &page.older {
        links.push(relation("next", link(Some(format!("o{}", hex::encode(k))))));
    }
    let mut entries = Vec::with_capacity(page.entries.len());
    for e in &page.entries {
        let (rtype, id, version, rec) = (&e.rtype, &e.id, e.version, &e.record);
        let (method, url, status) = match rec.action {
            Action::Create => ("POST", rtype.clone(), "201 Created"),
            Action::Update | Action::Patch if version == 1 || follows_delete(&ctx.store, rtype, id, version)? => {
                (rec.action.method(), format!("{rtype}/{id}"), "201 Created")
            }
            Action::Update | Action::Patch => (rec.action.method(), format!("{rtype}/{id}"), "200 OK"),
            Action::Delete => ("DELETE", format!("{rtype}/{id}"), "204 No Content"),
        };
        let resource = if rec.is_delete() { None } else { Some(embed(ctx, st, rec.body(), &format!("{rtype}/{id}"))?) };
        entries.push(Entry {
            full_url: Some(format!("{}/{rtype}/{id}", ctx.base)),
            resource,
            search: None,
            request: Some(json!({"method": method, "url": url})),
            response: Some(json!({
                "status": status,
                "etag": format!("W/\"{version}\""),
                "lastModified": meta::format_instant(rec.ts)
            })),
        });
    }
    Ok(Bundle::new("history", None, links, entries))
}
