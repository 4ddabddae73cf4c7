//! Dispatch of the interactions of [`super::INTERACTIONS`] without actix's route table.
//!
//! actix matches a path against its routes one after another, each pattern with a `{…}` segment
//! by a regular expression: a read walked through some fifty of them (the operations, the
//! terminology and export routes, then the interactions) and that matching was half of a read's
//! CPU. [`fast`] (the innermost middleware) instead looks at the path's segments once: a path of
//! a resource type this node serves (or `/`, `/_history`), without an operation (`$…`) or an
//! empty segment, is an interaction's shape ([`claim`]); its handler is called at once
//! ([`serve`]). Every other path (`/metadata`, `$operations`, `_export`, unknown types, oddly
//! encoded names) goes on to the route table, where the same interactions are registered through
//! [`handler`], so both ways end in the same handler with the same path parameters.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};

use super::{crud, history, patch, search, transaction, AppState, Interaction, INTERACTIONS};

/// Middleware: serves a request whose path [`claim`] recognizes, else hands it to the route table.
pub async fn fast(mut req: ServiceRequest, next: Next<impl MessageBody + 'static>) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(st) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let Some(i) = claim(&mut req, &st) else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let (http, payload) = req.into_parts();
    let resp = serve(i.code, i.method, &http, payload).await;
    Ok(ServiceResponse::new(http, resp))
}

/// The route table's handler of interaction `i` under `method` (for the paths [`claim`] leaves
/// to it).
pub fn handler(i: &'static Interaction, method: actix_web::http::Method) -> actix_web::Route {
    web::route().method(method).to(move |req: HttpRequest, payload: web::Payload| async move { serve(i.code, i.method, &req, payload.into_inner()).await })
}

/// The interaction whose shape the request's path has, its path parameters added to the
/// request's match info under the table's names (`type`, `id`, …) as the route table would.
/// `None` (the route table decides) for a path outside the interactions' shapes or one the
/// route table might match otherwise: see the module doc.
fn claim(req: &mut ServiceRequest, st: &AppState) -> Option<&'static Interaction> {
    let method = req.method().as_str();
    // (The path the router matches: the tenant prefix already taken off.)
    let path = req.match_info().as_str();
    let rest = path.strip_prefix('/')?;
    let mut segments = [""; 4];
    let mut n = 0;
    if !rest.is_empty() {
        for s in rest.split('/') {
            if n == segments.len() || s.is_empty() || s.starts_with('$') {
                return None;
            }
            segments[n] = s;
            n += 1;
        }
    }
    let segments = &segments[..n];
    match segments.first() {
        None => {}
        Some(&"_history") if n == 1 => {}
        Some(t) if st.defs.resource_type(t).is_ok() => {}
        Some(_) => return None,
    }
    let i = find(method, segments)?;
    let found: Vec<(&'static str, String)> = params(i.path, segments).into_iter().map(|(name, value)| (name, value.to_string())).collect();
    for (name, value) in found {
        req.match_info_mut().add_static(name, value);
    }
    Some(i)
}

/// The `{name}` segments of `pattern` with the path segments in their places.
fn params<'a>(pattern: &'static str, segments: &[&'a str]) -> Vec<(&'static str, &'a str)> {
    pattern
        .split('/')
        .filter(|p| !p.is_empty())
        .zip(segments)
        .filter_map(|(p, s)| p.strip_prefix('{').and_then(|p| p.strip_suffix('}')).map(|name| (name, *s)))
        .collect()
}

/// The first interaction (in routing order) of `method` whose shape `segments` has; `HEAD` is a
/// read's.
fn find(method: &str, segments: &[&str]) -> Option<&'static Interaction> {
    let (method, head) = match method {
        "HEAD" => ("GET", true),
        m => (m, false),
    };
    INTERACTIONS.iter().filter(|i| i.code != "batch").find(|i| i.method == method && (!head || i.code == "read") && super::shape_matches(i.path, segments))
}

/// Calls the handler of interaction `code` (`method` tells the two `search-type`s apart).
async fn serve(code: &str, method: &str, req: &HttpRequest, mut payload: Payload) -> HttpResponse {
    let out: Result<HttpResponse, actix_web::Error> = async {
        let req = req.clone();
        let st = web::Data::<AppState>::extract(&req).await?;
        let one = || web::Path::<String>::extract(&req);
        let two = || web::Path::<(String, String)>::extract(&req);
        let three = || web::Path::<(String, String, String)>::extract(&req);
        let body = web::Payload::from_request(&req, &mut payload).await?;
        Ok(match (code, method) {
            ("history-system", _) => history::system(req, st).await,
            ("search-system", _) => search::system(req, st).await,
            ("transaction", _) => transaction::process(req, body, st).await,
            ("history-type", _) => history::type_level(req.clone(), one().await?, st).await,
            ("search-type", "POST") => search::post(req.clone(), one().await?, body, st).await,
            ("search-type", _) => search::get(req.clone(), one().await?, st).await,
            ("create", _) => crud::create(req.clone(), one().await?, body, st).await,
            ("conditional-update", _) => crud::conditional_update(req.clone(), one().await?, body, st).await,
            ("conditional-delete", _) => crud::conditional_delete(req.clone(), one().await?, st).await,
            ("conditional-patch", _) => patch::conditional(req.clone(), one().await?, body, st).await,
            ("vread", _) => crud::vread(req.clone(), three().await?, st).await,
            ("history-instance", _) => history::instance(req.clone(), two().await?, st).await,
            ("search-compartment", _) => search::compartment(req.clone(), three().await?, st).await,
            ("read", _) => crud::read(req.clone(), two().await?, st).await,
            ("update", _) => crud::update(req.clone(), two().await?, body, st).await,
            ("patch", _) => patch::patch(req.clone(), two().await?, body, st).await,
            ("delete", _) => crud::delete(req.clone(), two().await?, st).await,
            (other, _) => unreachable!("interaction {other} has no handler"),
        }
        .unwrap_or_else(HttpResponse::from_error))
    }
    .await;
    out.unwrap_or_else(HttpResponse::from_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(method: &str, path: &str) -> Option<&'static str> {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        find(method, &segments).map(|i| i.code)
    }

    #[test]
    fn shapes_find_their_interaction_in_routing_order() {
        assert_eq!(code("GET", "/"), Some("search-system"));
        assert_eq!(code("POST", "/"), Some("transaction"));
        assert_eq!(code("GET", "/_history"), Some("history-system"));
        assert_eq!(code("GET", "/Patient"), Some("search-type"));
        assert_eq!(code("POST", "/Patient"), Some("create"));
        assert_eq!(code("PUT", "/Patient"), Some("conditional-update"));
        assert_eq!(code("GET", "/Patient/_history"), Some("history-type"));
        assert_eq!(code("POST", "/Patient/_search"), Some("search-type"));
        assert_eq!(code("GET", "/Patient/1"), Some("read"));
        assert_eq!(code("HEAD", "/Patient/1"), Some("read"));
        assert_eq!(code("HEAD", "/Patient"), None);
        assert_eq!(code("PUT", "/Patient/1"), Some("update"));
        assert_eq!(code("GET", "/Patient/1/_history"), Some("history-instance"));
        assert_eq!(code("GET", "/Patient/1/Observation"), Some("search-compartment"));
        assert_eq!(code("GET", "/Patient/1/_history/2"), Some("vread"));
        assert_eq!(code("POST", "/Patient/1"), None);
        assert_eq!(code("GET", "/a/b/c/d/e"), None);
    }

    #[test]
    fn parameters_take_their_places_in_the_path() {
        assert_eq!(params("/{type}/{id}/_history/{vid}", &["Observation", "o2", "_history", "1"]), [("type", "Observation"), ("id", "o2"), ("vid", "1")]);
        assert_eq!(params("/{type}/_history", &["Patient", "_history"]), [("type", "Patient")]);
        assert_eq!(params("/_history", &["_history"]), []);
        assert_eq!(params("/", &[]), []);
    }

    #[test]
    fn every_interaction_but_batch_is_found_by_its_own_shape() {
        for i in INTERACTIONS.iter().filter(|i| i.code != "batch") {
            let path = i.path.replace("{type}", "Patient").replace("{id}", "1").replace("{vid}", "2").replace("{member}", "Observation");
            assert_eq!(code(i.method, &path), Some(i.code), "{} {}", i.method, i.path);
        }
    }
}
