//! The FHIR REST API over actix-web. [`INTERACTIONS`] is the one table of what is served: the router
//! registers exactly these routes and `/metadata` describes exactly these interactions. One file per
//! interaction family: [`crud`], [`patch`], [`history`], [`search`], [`transaction`] (with
//! [`bundle_plan`] and [`dispatch`]), [`metadata`], [`admin`], [`binary`], [`export`],
//! [`terminology`], [`meili`], [`dataio`], [`operations`], [`websocket`], [`scrape`]
//! (`/metrics`); [`request_id`] is the `X-Request-Id` and the request's tracing span;
//! [`bundle`] holds what bundles share. Around every handler: [`authenticate`] (the
//! middleware), [`observe`] (request metrics); inside: [`guard`] (authorization decisions),
//! [`work`] and [`heavy`] (where costly reads run), [`error`] (the one error table). TLS on this
//! API is `crate::pki::api`.

pub mod admin;
pub mod authenticate;
pub mod binary;
pub mod bundle;
pub mod bundle_plan;
pub mod connections;
pub mod crud;
pub mod dataio;
pub mod dispatch;
pub mod error;
pub mod export;
pub mod fhirpath_patch;
pub mod guard;
pub mod heavy;
pub mod history;
pub mod idle;
pub mod meili;
pub mod metadata;
pub mod negotiate;
pub mod observe;
pub mod operations;
pub mod patch;
pub mod request_id;
pub mod response_room;
pub mod routes;
pub mod scrape;
pub mod search;
pub mod search_kinds;
pub mod terminology;
pub mod transaction;
pub mod websocket;
pub mod work;

use std::sync::Arc;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::actors::Mailboxes;
use crate::config::Config;
use crate::consensus::RaftHandle;
use crate::http::error::ApiError;
use crate::fhir::Definitions;
use crate::store::Store;

/// Errors in the HTTP request itself (not in the resource it carries).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    NotAcceptable(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    InvalidJson(String),
    #[error("the request body exceeds the limit of {limit} bytes (config {key})")]
    BodyTooLarge { limit: usize, key: &'static str },
    #[error("the bundle has {count} entries; the limit is {limit} (config limits.max_bundle_entries)")]
    TooManyEntries { count: usize, limit: usize },
    #[error("invalid parameter {name}: {reason}")]
    BadParameter { name: String, reason: String },
    #[error("unknown parameter '{0}'")]
    UnknownParameter(String),
    #[error("invalid {name} header: {reason}")]
    BadHeader { name: String, reason: String },
    #[error("{0} is not implemented by this server (see GET /metadata for what is)")]
    NotImplemented(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("no FHIR endpoint at {0}")]
    NoRoute(String),
    #[error("the JSON Patch document is not valid: {0}")]
    InvalidPatch(String),
    #[error("the JSON Patch could not be applied: {0}")]
    PatchFailed(String),
    #[error("the JSON Patch is refused: {0}")]
    PatchTooCostly(String),
    #[error("a patch must not change the resource's resourceType or id")]
    PatchChangesIdentity,
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Busy(String),
    /// The caller's (or tenant's) fair share of the node is in use: 429.
    #[error("{0}")]
    TooManyRequests(String),
    /// The request's work budget is spent (rows, deadline) or its client left.
    #[error("{0}")]
    TooCostly(String),
    /// A query string longer than `limits.max_query_bytes`: 414.
    #[error("the query string exceeds {limit} bytes (config limits.max_query_bytes); send the parameters as a POST _search form within the same bound, or split the search")]
    UriTooLong { limit: usize },
    /// The client paused in sending its body longer than `limits.stall_timeout_ms`: 408.
    #[error("the request body stopped arriving for {ms} ms (config limits.stall_timeout_ms); send it without pauses")]
    BodyStalled { ms: u64 },
    /// The body came slower than `limits.min_body_rate` on the whole: 408.
    #[error("the request body arrives slower than {rate} bytes a second (config limits.min_body_rate, after the first limits.stall_timeout_ms); send it faster")]
    BodyTooSlow { rate: u64 },
    /// A batch's response would pass `limits.max_batch_response_bytes`.
    #[error("the batch response would exceed {limit} bytes (config limits.max_batch_response_bytes); this entry was not run: split the batch or ask for smaller pages")]
    ResponseTooLarge { limit: usize },
}

/// Shared state of every handler.
pub struct AppState {
    pub cfg: Config,
    pub defs: Arc<Definitions>,
    pub store: Store,
    pub actors: Arc<Mailboxes>,
    /// How writes are prepared (the actors' settings): bundle plans and `$validate` use it too.
    pub write_settings: crate::actors::resource::ActorSettings,
    pub raft: RaftHandle,
    /// The search parameters of this node's FHIR version.
    pub search: Arc<crate::search::params::Registry>,
    /// When this node started (CapabilityStatement.date).
    pub started: String,
    /// Room for bundle bodies in flight, in KiB (`limits.max_inflight_bundle_bytes`).
    pub bundle_room: Arc<tokio::sync::Semaphore>,
    /// Room for large response bodies in flight (`limits.max_inflight_response_bytes`).
    pub response_room: response_room::ResponseRoom,
    /// Where costly reads run, and each caller's share of it ([`work`]).
    pub work: Arc<work::WorkPool>,
    /// `/metadata` as built for each base URL.
    pub capability: metadata::Capabilities,
    /// Authentication and the rules (`[auth]`).
    pub auth: Arc<crate::auth::Authority>,
    /// Bulk export: jobs, sinks and the actors that run them.
    pub export: Arc<crate::export::runner::Exporter>,
    pub export_supervisor: actix::Addr<crate::export::runner::ExportSupervisor>,
    /// The `[s3]` bucket, when configured.
    pub s3: Option<crate::objects::S3>,
    /// Where Binary content lives ([`crate::binary`]).
    pub blobs: Arc<crate::binary::Blobs>,
    /// Meilisearch (`[meilisearch]`): `_content` / `_text`, the indexer's status. `None`: not configured.
    pub meili: Option<Arc<crate::meili::Meili>>,
    /// This node's Prometheus metrics (`GET /metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Subscriptions (`[subscriptions]`): the rules, the websocket hub, the notifier's state.
    pub subscriptions: Arc<crate::subscription::Subscriptions>,
}

/// The level an interaction works at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    System,
    Type,
    Instance,
}

/// One served FHIR interaction.
pub struct Interaction {
    /// The CapabilityStatement interaction code.
    pub code: &'static str,
    pub level: Level,
    pub method: &'static str,
    pub path: &'static str,
}

/// Everything the FHIR API serves, in routing order (specific paths before `{id}`).
pub const INTERACTIONS: &[Interaction] = &[
    Interaction { code: "history-system", level: Level::System, method: "GET", path: "/_history" },
    Interaction { code: "search-system", level: Level::System, method: "GET", path: "/" },
    Interaction { code: "transaction", level: Level::System, method: "POST", path: "/" },
    Interaction { code: "batch", level: Level::System, method: "POST", path: "/" },
    Interaction { code: "history-type", level: Level::Type, method: "GET", path: "/{type}/_history" },
    Interaction { code: "search-type", level: Level::Type, method: "POST", path: "/{type}/_search" },
    Interaction { code: "create", level: Level::Type, method: "POST", path: "/{type}" },
    Interaction { code: "search-type", level: Level::Type, method: "GET", path: "/{type}" },
    Interaction { code: "conditional-update", level: Level::Type, method: "PUT", path: "/{type}" },
    Interaction { code: "conditional-delete", level: Level::Type, method: "DELETE", path: "/{type}" },
    Interaction { code: "conditional-patch", level: Level::Type, method: "PATCH", path: "/{type}" },
    Interaction { code: "vread", level: Level::Instance, method: "GET", path: "/{type}/{id}/_history/{vid}" },
    Interaction { code: "history-instance", level: Level::Instance, method: "GET", path: "/{type}/{id}/_history" },
    Interaction { code: "search-compartment", level: Level::Instance, method: "GET", path: "/{type}/{id}/{member}" },
    Interaction { code: "read", level: Level::Instance, method: "GET", path: "/{type}/{id}" },
    Interaction { code: "update", level: Level::Instance, method: "PUT", path: "/{type}/{id}" },
    Interaction { code: "patch", level: Level::Instance, method: "PATCH", path: "/{type}/{id}" },
    Interaction { code: "delete", level: Level::Instance, method: "DELETE", path: "/{type}/{id}" },
];

/// Registers the API routes.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/metadata", web::get().to(metadata::capability_statement));
    cfg.route("/.well-known/smart-configuration", web::get().to(metadata::smart_configuration));
    cfg.route("/_cluster/status", web::get().to(admin::cluster_status_fhir));
    cfg.route("/_health", web::get().to(admin::health));
    // For the admin group only when auth is on (the auth middleware, as for /_cluster/status).
    cfg.route("/metrics", web::get().to(scrape::scrape));
    // Membership, digest and faults live on the operator listener only.
    cfg.route("/_cluster/{rest:.*}", web::route().to(admin::not_here));
    // Bulk export (Bulk Data Access IG): kick-off, status / cancel, local output files.
    use crate::http::export as export;
    cfg.route("/$export", web::get().to(export::system));
    cfg.route("/$export", web::post().to(export::system));
    cfg.route("/Patient/$export", web::get().to(export::patient));
    cfg.route("/Patient/$export", web::post().to(export::patient));
    cfg.route("/Group/{id}/$export", web::get().to(export::group));
    cfg.route("/Group/{id}/$export", web::post().to(export::group));
    cfg.route("/_export/{job}", web::get().to(export::status));
    cfg.route("/_export/{job}", web::delete().to(export::cancel));
    cfg.route("/_export/{job}/{file}", web::get().to(export::file));
    // Terminology operations ($expand, $validate-code, $lookup, $subsumes).
    crate::http::terminology::configure(cfg);
    // $everything, $validate, $meta, $meta-add, $meta-delete.
    crate::http::operations::configure(cfg);
    // The R4 websocket channel of Subscriptions (404 below when subscriptions are off).
    cfg.route(crate::subscription::WS_PATH, web::get().to(websocket::endpoint));
    // Other operations (`$name` at system, type or instance level) are not served: say so (501) instead
    // of reading `$name` as a type or an id.
    for path in ["/{op:\\$[^/]*}", "/{type}/{op:\\$[^/]*}", "/{type}/{id}/{op:\\$[^/]*}"] {
        cfg.route(path, web::route().to(fallback));
    }
    // The interactions: most requests are served before this table is consulted
    // ([`routes::fast`]); these routes take the paths it leaves (see [`routes`]).
    for i in INTERACTIONS.iter().filter(|i| i.code != "batch") {
        let method = Method::from_bytes(i.method.as_bytes()).expect("table methods are valid");
        if i.code == "read" {
            cfg.route(i.path, routes::handler(i, Method::HEAD));
        }
        cfg.route(i.path, routes::handler(i, method));
    }
    cfg.default_service(web::to(fallback));
}

/// What is not routed: say whether the path exists under another method, or is not served yet.
async fn fallback(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let path = req.path().trim_end_matches('/').to_string();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method().as_str();
    let not_impl = |what: &str| Err(RequestError::NotImplemented(what.to_string()).into());
    match (method, segments.as_slice()) {
        (_, segs) if segs.iter().any(|s| s.starts_with('$')) => not_impl(&format!("operation {path}")),
        _ => {
            let allowed: Vec<&str> = INTERACTIONS
                .iter()
                .filter(|i| shape_matches(i.path, &segments))
                .map(|i| i.method)
                .collect();
            if allowed.is_empty() {
                Err(RequestError::NoRoute(format!("{method} {path}")).into())
            } else {
                Err(RequestError::MethodNotAllowed(format!("{method} is not allowed on {path}; allowed: {}", allowed.join(", "))).into())
            }
        }
    }
}

/// The interaction code, type and id of a request (for the audit log): `("unknown", "", "")`
/// for what is not routed.
pub fn interaction_of<'a>(method: &str, segments: &[&'a str]) -> (&'static str, &'a str, &'a str) {
    if segments.first().is_some_and(|s| s.starts_with('_') || s.starts_with('$') || s.starts_with('.')) && segments.first() != Some(&"_history") {
        return ("other", "", "");
    }
    // `/{type}/$op`, `/{type}/{id}/$op`: an operation, not a read or a compartment search.
    if segments.last().is_some_and(|s| s.starts_with('$')) {
        let id = if segments.len() == 3 { segments[1] } else { "" };
        return ("operation", segments[0], id);
    }
    let method = if method == "HEAD" { "GET" } else { method };
    match INTERACTIONS.iter().find(|i| i.method == method && shape_matches(i.path, segments)) {
        Some(i) => (i.code, segments.first().copied().unwrap_or(""), if i.level == Level::Instance { segments.get(1).copied().unwrap_or("") } else { "" }),
        None => ("unknown", "", ""),
    }
}

fn shape_matches(pattern: &str, segments: &[&str]) -> bool {
    // Without allocating: this runs for every request (the audit log's classification).
    let mut n = 0;
    for p in pattern.split('/').filter(|s| !s.is_empty()) {
        match segments.get(n) {
            Some(s) if p.starts_with('{') || p == *s => n += 1,
            _ => return false,
        }
    }
    n == segments.len()
}
