//! Type-level search: `GET /{type}?…` and `POST /{type}/_search` (form body merged with the URL
//! parameters). Results are sorted by `_sort` (any parameter, several keys, `-` for descending;
//! default: creation order, [`crate::search::page`]) and paged by keyset cursors (`_page` holds the sort key of the page edge), so a
//! page does not shift when resources are added or removed elsewhere in the result, and the links
//! do not expire. `_count` (0 allowed), `_total` (none / estimate / accurate), `_summary`,
//! `_elements`, `_include` / `_revinclude` (with `:iterate` and `Type:*`; entries with search.mode
//! `include`); unknown or
//! unsupported parameters are a 400, or with `Prefer: handling=lenient` ignored and reported in
//! an OperationOutcome entry.

use std::collections::BTreeSet;

use std::collections::HashMap;

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::bundle::{embed, link, relation, Bundle, Entry};
use super::negotiate::{self, Ctx};
use super::{AppState, RequestError};
use crate::http::guard;
use crate::auth::{Grant, Op};
use crate::http::error::ApiError;
use crate::fhir::SummaryMode;
use crate::search::query::{self, Executor, SearchError};
use crate::search::{page, sort};
use crate::store::{StoreError, VersionRecord};

pub async fn get(req: HttpRequest, path: web::Path<String>, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    let rtype = st.defs.resource_type(&path)?;
    negotiate::read_barrier(&req, &st).await?;
    let params = ctx.params.clone();
    respond(&ctx, &st, rtype, params, None).await
}

/// `GET /{Compartment}/{id}/{type}?…`: the search restricted to the compartment of
/// `Compartment/id` (CompartmentDefinition: the member type's linking parameters).
pub async fn compartment(req: HttpRequest, path: web::Path<(String, String, String)>, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    negotiate::read_barrier(&req, &st).await?;
    compartment_in(&ctx, &st, &path.0, &path.1, &path.2).await
}

/// A compartment search.
pub async fn compartment_in(ctx: &Ctx, st: &AppState, ctype: &str, cid: &str, member: &str) -> Result<HttpResponse, ApiError> {
    let (ctype, cid) = super::crud::type_and_id(st, ctype, cid)?;
    let rtype = st.defs.resource_type(member)?;
    let links = st
        .search
        .compartment_params(ctype, rtype)
        .ok_or_else(|| RequestError::NoRoute(format!("/{ctype}/{cid}/{rtype}: {ctype} is not a compartment")))?;
    // Posting-block scans, charged to the request's budget.
    let members = crate::budget::within(&ctx.budget, || -> Result<query::Ids, SearchError> {
        let mut members = query::Ids::new();
        for code in &links {
            members |= query::referrer_docs(ctx.store.tree(), rtype, code, ctype, cid)?;
        }
        Ok(members)
    })?;
    let params = ctx.params.clone();
    respond(ctx, st, rtype, params, Some((format!("/{ctype}/{cid}/{rtype}"), members))).await
}

/// A type-level search with the context's parameters.
pub async fn type_in(ctx: &Ctx, st: &AppState, rtype: &str) -> Result<HttpResponse, ApiError> {
    let rtype = st.defs.resource_type(rtype)?;
    respond(ctx, st, rtype, ctx.params.clone(), None).await
}

pub async fn post(req: HttpRequest, path: web::Path<String>, payload: web::Payload, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    let rtype = st.defs.resource_type(&path)?;
    // The form is a query string in a body: the same bound as a URL's.
    let limits = &st.cfg.limits;
    let body = negotiate::read_bytes_limited(payload, limits.max_query_bytes, "limits.max_query_bytes (the _search form)", limits).await?;
    let ct = req.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !body.is_empty() && !ct.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded") {
        return Err(RequestError::UnsupportedMediaType(format!(
            "POST {rtype}/_search takes application/x-www-form-urlencoded parameters, not '{ct}'"
        ))
        .into());
    }
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body)
        .map_err(|e| RequestError::BadParameter { name: "form body".into(), reason: e.to_string() })?;
    negotiate::read_barrier(&req, &st).await?;
    let mut params = ctx.params.clone();
    params.extend(form);
    super::work::check_params(&params, limits)?;
    respond(&ctx, &st, rtype, params, None).await
}

/// The offset of a text-only search's page cursor (`n:` / `p:` + hex of `o` + u64); `Some(0)`
/// without a cursor, `None` for a cursor of another kind.
fn offset_cursor(page: Option<&str>) -> Result<Option<usize>, ApiError> {
    let Some(p) = page else { return Ok(Some(0)) };
    let edge = p.split_once(':').and_then(|(_, e)| hex::decode(e).ok()).ok_or_else(|| bad("_page", "use the links of the search bundle"))?;
    match edge.as_slice() {
        [b'o', rest @ ..] if rest.len() == 8 => Ok(usize::try_from(u64::from_be_bytes(rest.try_into().expect("8 bytes"))).ok()),
        _ => Ok(None),
    }
}

fn bad(name: &str, reason: impl Into<String>) -> ApiError {
    RequestError::BadParameter { name: name.into(), reason: reason.into() }.into()
}

/// One `_include` / `_revinclude` value: `Source:param[:Target]`, `param` may be `*` (every
/// reference parameter of Source).
struct IncludeSpec {
    reverse: bool,
    iterate: bool,
    source: String,
    codes: Vec<String>,
    target: Option<String>,
}

fn include_specs(st: &AppState, types: &[&'static str], params: &[(String, String)]) -> Result<Vec<IncludeSpec>, ApiError> {
    let mut specs = Vec::new();
    for (name, value) in params {
        let (reverse, iterate) = match name.as_str() {
            "_include" => (false, false),
            "_revinclude" => (true, false),
            "_include:iterate" | "_include:recurse" => (false, true),
            "_revinclude:iterate" | "_revinclude:recurse" => (true, true),
            n if n.starts_with("_include:") || n.starts_with("_revinclude:") => return Err(bad(n, "the only modifier is :iterate")),
            _ => continue,
        };
        let parts: Vec<&str> = value.split(':').collect();
        let (source, code, target) = match parts.as_slice() {
            [s, c] => (*s, *c, None),
            [s, c, t] => (*s, *c, Some(t.to_string())),
            _ => return Err(bad(name, format!("'{value}' is not Type:parameter[:TargetType]"))),
        };
        let source = st.defs.resource_type(source)?;
        let reference_params = || st.search.for_type(source).filter(|p| p.def.kind == crate::search::params::ParamType::Reference);
        let codes: Vec<String> = if code == "*" {
            let mut v: Vec<String> = reference_params().map(|p| p.def.code.clone()).collect();
            v.sort();
            v.dedup();
            v
        } else if reference_params().any(|p| p.def.code == code) {
            vec![code.to_string()]
        } else {
            return Err(bad(name, format!("{source} has no reference search parameter '{code}'")));
        };
        if !reverse && !iterate && !types.contains(&source) {
            return Err(bad(name, format!("_include on a {} search must start with one of the searched types", types.join(","))));
        }
        specs.push(IncludeSpec { reverse, iterate, source: source.to_string(), codes, target });
    }
    Ok(specs)
}

/// The resources `_include` / `_revinclude` add to a page: they apply to the page's matches;
/// the `:iterate` ones also to what was included, until nothing new is found (every resource
/// appears once, so this ends).
/// At most `limits.max_include_resources` are added; the flag says whether more were found.
fn includes(ctx: &Ctx, st: &AppState, types: &[&'static str], params: &[(String, String)], page: &[(String, String)]) -> Result<(Vec<(String, String, VersionRecord)>, bool), ApiError> {
    let specs = include_specs(st, types, params)?;
    // What the caller may read of each type (an included resource it may not see is left out,
    // as if it did not exist).
    let mut grants: std::collections::HashMap<String, Option<Grant>> = std::collections::HashMap::new();
    // The compartment's members per source type, computed once per request.
    let mut members: std::collections::HashMap<String, query::Ids> = std::collections::HashMap::new();
    let limit = st.cfg.limits.max_include_resources;
    let tree = ctx.store.tree();
    let mut seen: BTreeSet<(String, String)> = page.iter().cloned().collect();
    let mut out = Vec::new();
    let mut frontier: Vec<(String, String)> = page.to_vec();
    let mut first = true;
    while !frontier.is_empty() && !specs.is_empty() {
        let mut next = Vec::new();
        for spec in specs.iter().filter(|s| first || s.iterate) {
            for (t, id) in &frontier {
                let mut found: Vec<(String, String)> = Vec::new();
                if spec.reverse {
                    if spec.target.as_deref().is_some_and(|want| want != t) {
                        continue;
                    }
                    for code in &spec.codes {
                        // Only as many referrers as could still be included (plus one, to know
                        // whether the list was cut) are mapped to ids.
                        let mut docs = query::referrer_docs(tree, &spec.source, code, t, id)?;
                        // Under a patient/ grant only the compartment's referrers count (so the
                        // cut below is made among what may be shown).
                        match grants.entry(spec.source.clone()).or_insert_with(|| guard::require_ctx(ctx, st, Op::READ, &spec.source).ok()) {
                            Some(Grant::Patient(pid)) => {
                                if !members.contains_key(&spec.source) {
                                    members.insert(spec.source.clone(), guard::members(st, &ctx.store, &spec.source, pid)?);
                                }
                                docs &= &members[&spec.source];
                            }
                            Some(Grant::All) => {}
                            None => continue,
                        }
                        let on_source = query::Executor { tree, rtype: &spec.source };
                        for doc in docs.iter().take(limit + 1 - out.len().min(limit)) {
                            found.push((spec.source.clone(), on_source.id(doc)?));
                        }
                    }
                } else {
                    if spec.source != *t {
                        continue;
                    }
                    for code in &spec.codes {
                        found.extend(query::references(tree, t, id, code)?.into_iter().filter(|(tt, _)| spec.target.as_deref().is_none_or(|want| want == tt)));
                    }
                }
                for (ft, fid) in found {
                    if st.defs.resource_type(&ft).is_err() || !seen.insert((ft.clone(), fid.clone())) {
                        continue;
                    }
                    let grant = grants.entry(ft.clone()).or_insert_with(|| guard::require_ctx(ctx, st, Op::READ, &ft).ok()).clone();
                    let Some(grant) = grant else { continue };
                    match ctx.store.read(&ft, &fid) {
                        Ok((_, rec)) if !guard::may_see(st, &grant, &ft, &fid, rec.body())? => {}
                        Ok(_) if out.len() == limit => return Ok((out, true)),
                        Ok((_, rec)) => {
                            next.push((ft.clone(), fid.clone()));
                            out.push((ft, fid, rec));
                        }
                        Err(StoreError::Gone { .. } | StoreError::NotFound { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        frontier = next;
        first = false;
    }
    Ok((out, false))
}

/// `GET /?_type=A,B&…`: system search over the listed types (all types without `_type`); only
/// parameters every listed type has (the common `_id`, `_lastUpdated`, `_tag`, … for all types).
pub async fn system(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    negotiate::read_barrier(&req, &st).await?;
    system_in(&ctx, &st).await
}

/// A system search with the context's parameters.
pub async fn system_in(ctx: &Ctx, st: &AppState) -> Result<HttpResponse, ApiError> {
    let mut types: Vec<&'static str> = Vec::new();
    for (_, v) in ctx.params.iter().filter(|(k, _)| k == "_type") {
        for t in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let t = st.defs.resource_type(t)?;
            if !types.contains(&t) {
                types.push(t);
            }
        }
    }
    if types.is_empty() {
        // Every type the caller may search (a type it may not is left out, not refused).
        guard::require_some_type(ctx, st, Op::SEARCH_SYSTEM)?;
        types = st.defs.types.iter().map(|t| st.defs.resource_type(t)).collect::<Result<_, _>>()?;
        types.retain(|t| guard::require_ctx(ctx, st, Op::SEARCH_SYSTEM, t).is_ok());
    }
    let params: Vec<(String, String)> = ctx.params.iter().filter(|(k, _)| k != "_type").cloned().collect();
    let link_params = ctx.params.clone();
    respond_types(ctx, st, types, params, link_params, None, "/".into()).await
}

/// Runs a type-level search; `within` restricts it to a compartment (its path and members' doc numbers).
async fn respond(
    ctx: &Ctx,
    st: &AppState,
    rtype: &'static str,
    params: Vec<(String, String)>,
    within: Option<(String, query::Ids)>,
) -> Result<HttpResponse, ApiError> {
    let (path, within) = match within {
        Some((path, members)) => (path, Some(HashMap::from([(rtype, members)]))),
        None => (format!("/{rtype}"), None),
    };
    respond_types(ctx, st, vec![rtype], params.clone(), params, within, path).await
}

/// [`search_types`], timed into `kiln_search_duration_seconds` under each parameter type the
/// search uses ([`crate::metrics::search`]).
pub async fn respond_types(
    ctx: &Ctx,
    st: &AppState,
    types: Vec<&'static str>,
    params: Vec<(String, String)>,
    link_params: Vec<(String, String)>,
    within: Option<HashMap<&'static str, query::Ids>>,
    path: String,
) -> Result<HttpResponse, ApiError> {
    let kinds = super::search_kinds::param_kinds(&st.search, &types, &params);
    let started = std::time::Instant::now();
    let out = search_types(ctx, st, types, params, link_params, within, path).await;
    st.metrics.search.observe(&kinds, started.elapsed().as_secs_f64());
    out
}

/// The search itself over one or more types: criteria, sort, keyset page, includes, bundle.
/// `link_params` are repeated in the paging links; `within` restricts each type it names to the
/// doc numbers given for it.
async fn search_types(
    ctx: &Ctx,
    st: &AppState,
    types: Vec<&'static str>,
    params: Vec<(String, String)>,
    link_params: Vec<(String, String)>,
    within: Option<HashMap<&'static str, query::Ids>>,
    path: String,
) -> Result<HttpResponse, ApiError> {
    // `_content` / `_text` go to Meilisearch when it is configured; otherwise they stay in the
    // criteria, which refuse them as not supported.
    type Params = Vec<(String, String)>;
    let (text_params, params): (Params, Params) = match &st.meili {
        Some(_) => params.into_iter().partition(|(k, _)| crate::meili::query::is_text_param(k)),
        None => (Vec::new(), params),
    };
    let param = |n: &str| params.iter().rev().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
    // Relevance order: `_sort=_score`, or no `_sort` on a text query.
    let by_score = !text_params.is_empty() && matches!(param("_sort"), None | Some("_score"));
    if param("_sort") == Some("_score") && text_params.is_empty() {
        return Err(bad("_sort", "_score orders by the relevance of _content / _text, and this search has neither"));
    }
    let sort_param = if by_score { None } else { param("_sort") };
    let sorts = types.iter().map(|t| sort::parse(&st.search, t, sort_param)).collect::<Result<Vec<_>, _>>()?;
    let count = match param("_count") {
        None => st.cfg.limits.default_page_size,
        Some(c) => c.parse::<usize>().map_err(|_| bad("_count", format!("'{c}' is not a non-negative integer")))?.min(st.cfg.limits.max_page_size),
    };
    let total_mode = match param("_total") {
        None | Some("accurate") | Some("estimate") => true,
        Some("none") => false,
        Some(other) => return Err(bad("_total", format!("'{other}' is not none, estimate or accurate"))),
    };
    let mut queries = Vec::with_capacity(types.len());
    let mut ignored: Vec<(String, String)> = Vec::new();
    let op = if path == "/" { Op::SEARCH_SYSTEM } else { Op::SEARCH_TYPE };
    // What chains and _has may read of each type they reach.
    let mut link_scope = std::collections::HashMap::new();
    let mut grants = std::collections::HashMap::new();
    for t in &types {
        let q = query::parse(&st.search, t, &params, ctx.lenient)?;
        // The caller's reach: every resource of the type, or a patient's compartment (then
        // matches, totals and pages are computed within it).
        // (Posting-block scans of the compartment's referrers: charged to the request's budget.)
        let (grant, reach) = crate::budget::within(&ctx.budget, || guard::search_scope(ctx, st, op, t))?;
        grants.insert(t.to_string(), grant);
        crate::budget::within(&ctx.budget, || guard::link_scope(ctx, st, &q, &mut link_scope))?;
        for i in &q.ignored {
            if !ignored.contains(i) {
                ignored.push(i.clone());
            }
        }
        let restrict = match (within.as_ref().and_then(|w| w.get(t).cloned()), reach) {
            (Some(w), Some(r)) => Some(w & r),
            (Some(w), None) => Some(w),
            (None, r) => r,
        };
        queries.push((*t, q, restrict));
    }
    let counting = ctx.subset.summary == Some(SummaryMode::Count);
    // One text parameter and nothing else on one type, in relevance order: paged inside
    // Meilisearch (only the page travels). Its cursors are offsets (`o` + u64), never a score
    // key (those start with a byte >= 0xC0), so each path knows its own.
    let fast = match (&st.meili, types.as_slice(), text_params.as_slice(), queries.as_slice()) {
        (Some(m), [rtype], [text], [(_, q, None)]) if by_score && !counting && q.criteria.is_empty() => {
            match offset_cursor(param("_page"))? {
                Some(offset) => {
                    let (hits, total) = crate::meili::query::page(m, ctx.store.tree().tree(), ctx.tenant.as_deref(), rtype, text, offset, count).await?;
                    let mut items = Vec::with_capacity(hits.len());
                    let mut scores = std::collections::HashMap::new();
                    for (id, score) in hits {
                        // A match this replica does not have yet (it is behind Meilisearch) is left out.
                        if let Some(d) = crate::search::posting::docnum(ctx.store.tree(), rtype, &id).map_err(SearchError::from)? {
                            items.push((*rtype, d));
                            scores.insert((*rtype, d), score);
                        }
                    }
                    let edge = |o: usize| {
                        let mut e = vec![b'o'];
                        e.extend_from_slice(&(o as u64).to_be_bytes());
                        e
                    };
                    let previous = (offset > 0 && count > 0).then(|| edge(offset.saturating_sub(count)));
                    let next = (count > 0 && offset + count < total).then(|| edge(offset + count));
                    Some((page::Page { items, total, previous, next }, scores))
                }
                None => None,
            }
        }
        _ => None,
    };
    // Text matches per type (ids with scores), from Meilisearch, before the blocking part.
    let text_hits = match (fast.is_some(), text_params.is_empty(), &st.meili) {
        (false, false, Some(m)) => crate::meili::query::matches(m, ctx.store.tree().tree(), ctx.tenant.as_deref(), &types, &text_params).await?,
        _ => None,
    };
    let tree = ctx.store.tree().clone();
    let cursor = param("_page").map(String::from);
    let max_keyed = st.cfg.limits.max_sort_matches;
    let link_scope = (!link_scope.is_empty()).then(|| std::sync::Arc::new(link_scope));
    let (counted, page, scores) = if let Some((page, scores)) = fast {
        (None, page, scores)
    } else {
        super::work::block(ctx, st, move || query::with_link_scope(link_scope, || -> Result<_, SearchError> {
        let mut found = Vec::with_capacity(queries.len());
        // Relevance of the text matches: (type, doc number) → score.
        let mut scores: std::collections::HashMap<(&'static str, u32), f64> = std::collections::HashMap::new();
        for (t, q, restrict) in &queries {
            let on_type = Executor { tree: &tree, rtype: t };
            let mut docs = on_type.run(q)?;
            if let Some(members) = restrict {
                docs &= members;
            }
            if let Some(all_hits) = &text_hits {
                // AND with the text matches (ids Meilisearch knows but this replica does not
                // have are left out).
                let mut text_docs = query::Ids::new();
                for (id, score) in all_hits.get(*t).into_iter().flatten() {
                    if let Some(d) = crate::search::posting::docnum(&tree, t, id)? {
                        text_docs.insert(d);
                        scores.insert((*t, d), *score);
                    }
                }
                docs &= text_docs;
            }
            found.push((*t, docs));
        }
        if counting {
            let total: u64 = found.iter().map(|(_, d)| d.len()).sum();
            return Ok((Some(total as usize), page::Page::default(), scores));
        }
        if by_score {
            let keyed = found
                .iter()
                .flat_map(|(t, docs)| docs.iter().map(move |d| (*t, d)))
                .map(|(t, d)| (crate::meili::query::score_key(scores.get(&(t, d)).copied().unwrap_or(0.0), d, t), (t, d)))
                .collect();
            return Ok((None, page::page_keyed(keyed, cursor.as_deref(), count)?, scores));
        }
        Ok((None, page::page(&tree, found, &sorts, cursor.as_deref(), count, max_keyed)?, scores))
        }))
        .await?
    };
    // The page's bodies, includes and bundle: on the pool too (a page of 1,000 resources with
    // their includes is megabytes to read and write).
    // A small page without includes is built here: a hop to the pool costs more than it.
    let large = page.items.len() > 50 || params.iter().any(|(k, _)| k.starts_with("_include") || k.starts_with("_revinclude"));
    let page_ctx = ctx.clone();
    let build = move |ctx: &Ctx, st: &AppState| -> Result<Vec<u8>, ApiError> {
        let param = |n: &str| params.iter().rev().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        // Links show only the parameters the search used (search.html): not those ignored under
        // handling=lenient.
        let shown: Vec<(String, String)> = link_params.into_iter().filter(|(k, _)| !ignored.iter().any(|(n, _)| n == k)).collect();
        let mut links = vec![relation("self", link(ctx, &path, &shown, param("_page").map(String::from)))];
        if let Some(total) = counted {
            return Bundle::new("searchset", Some(total), links, Vec::new()).to_bytes(ctx);
        }
        links.push(relation("first", link(ctx, &path, &shown, None)));
        if let Some(edge) = &page.previous {
            links.push(relation("previous", link(ctx, &path, &shown, Some(format!("p:{}", hex::encode(edge))))));
        }
        if let Some(edge) = &page.next {
            links.push(relation("next", link(ctx, &path, &shown, Some(format!("n:{}", hex::encode(edge))))));
        }
        let total = page.total;
        let tree = ctx.store.tree();
        let mut page_ids: Vec<(String, String, Option<f64>)> = Vec::with_capacity(page.items.len());
        for (t, doc) in &page.items {
            page_ids.push((t.to_string(), Executor { tree, rtype: t }.id(*doc)?, scores.get(&(*t, *doc)).copied()));
        }
        let mut bodies = Vec::with_capacity(page_ids.len());
        let mut match_scores = Vec::with_capacity(page_ids.len());
        for (t, id, score) in page_ids {
            ctx.budget.charge(1).map_err(super::work::too_costly)?;
            match ctx.store.read(&t, &id) {
                // Moved out of the caller's reach since the index scan: not part of the page.
                Ok((_, rec)) if !grants.get(&t).map(|g| guard::may_see(st, g, &t, &id, rec.body())).transpose()?.unwrap_or(false) => {}
                Ok((_, rec)) => {
                    bodies.push((t, id, rec));
                    match_scores.push(score);
                }
                // Deleted between the index scan and this read: not part of the page.
                Err(StoreError::Gone { .. } | StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // Includes from the search's own parameters (those an operation adds are not in its links).
        let included_by: Vec<(String, String)> = params.iter().filter(|(k, _)| !ignored.iter().any(|(n, _)| n == k)).cloned().collect();
        let (included, cut) = includes(ctx, st, &types, &included_by, &bodies.iter().map(|(t, id, _)| (t.clone(), id.clone())).collect::<Vec<_>>())?;
        let mut entries = Vec::with_capacity(bodies.len() + included.len() + 1);
        let modes = match_scores.into_iter().map(|s| ("match", s)).chain(std::iter::repeat(("include", None)));
        for ((mode, score), (t, id, rec)) in modes.zip(bodies.iter().chain(included.iter())) {
            let mut search = json!({"mode": mode});
            if let Some(s) = score {
                // Relevance of a _content / _text match (Meilisearch's ranking score, 0..1).
                search["score"] = json!(s);
            }
            entries.push(Entry {
                full_url: Some(format!("{}/{t}/{id}", ctx.base)),
                resource: Some(embed(ctx, st, rec.body(), &format!("{t}/{id}"))?),
                search: Some(search),
                request: None,
                response: None,
            });
        }
        let outcome;
        let mut warnings = Vec::new();
        if !ignored.is_empty() {
            let text = ignored.iter().map(|(n, why)| format!("{n}: {why}")).collect::<Vec<_>>().join("; ");
            warnings.push(("not-supported", format!("ignored parameters (Prefer: handling=lenient): {text}")));
        }
        if cut {
            warnings.push((
                "too-costly",
                format!("_include/_revinclude found more resources than this page may carry; the first {} are included (limits.max_include_resources)", st.cfg.limits.max_include_resources),
            ));
        }
        if !warnings.is_empty() {
            let issues: Vec<serde_json::Value> = warnings.iter().map(|(code, text)| json!({"severity": "warning", "code": code, "diagnostics": text})).collect();
            outcome = serde_json::to_vec(&json!({"resourceType": "OperationOutcome", "issue": issues})).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            entries.push(Entry {
                full_url: None,
                resource: Some(embed(ctx, st, &outcome, "OperationOutcome")?),
                search: Some(json!({"mode": "outcome"})),
                request: None,
                response: None,
            });
        }
        Bundle::new("searchset", total_mode.then_some(total), links, entries).to_bytes(ctx)
    };
    let body = match ctx.app.clone() {
        Some(app) if large => super::work::block(ctx, st, move || build(&page_ctx, &app)).await?,
        _ => crate::budget::within(&ctx.budget, || build(ctx, st))?,
    };
    Ok(ctx.respond(HttpResponse::Ok(), body))
}
