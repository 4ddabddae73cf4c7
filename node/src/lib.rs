//! # Kiln: a replicated FHIR server
//!
//! ## Layout
//! Layers, bottom to top; a module imports only modules of the layers below it (the table with
//! what each owns is in docs/architecture.md, "Layers"; `tests/tests/integration/layers.rs`
//! keeps it so).
//! - base: [`budget`] (a request's work budget), [`trace`] (request id and write-path span),
//!   [`pki`] (PEM, rustls, the API's TLS), [`fhir`], [`tenancy`], [`objects`] (S3), [`metrics`]
//!   (the registry of metric structs).
//! - [`store`]: the stored state (key layout, tenants' spaces, resources and history, snapshots).
//! - [`index`]: index row keys, posting blocks, the read budget.
//! - [`terminology`]: CodeSystems / ValueSets, expansion, subsumption.
//! - [`search`]: registry, FHIRPath, extraction, parsing, the executor, paging, sort.
//! - [`machine`]: the replicated state machine (commands, apply, replicated job and cursor records).
//! - [`consensus`]: its config, the raft-rs loop, log storage, transport (mTLS).
//! - [`actors`]: one actor per resource type: the write pipeline (validate, stamp, group commit).
//! - services: [`binary`], [`auth`] (authentication and authorization core), [`export`],
//!   [`meili`], [`subscription`], [`dataio`] (import, backup, the operator HTTP client).
//! - [`config`]: the node's config file, assembling each module's section.
//! - [`http`]: every handler, middleware and guard, `AppState`, the one error table.
//! - composition: [`identity`], [`launcher`] (`kiln cluster …`), `fuzzing` (tests and
//!   `node/fuzz/` only), [`start_node`] here, and `main.rs` with `cli/`.
//!
//! A write goes HTTP → `ResourceActor` → `RaftHandle::propose` → Raft log (fsync) → commit →
//! `StateMachine::apply` (one sled batch) → answer. Reads go straight from HTTP to [`store::Store`].
//! [`start_node`] is the one way to start a node (used by `kiln serve` and by the tests).

pub mod actors;
pub mod auth;
pub mod binary;
pub mod budget;
pub mod config;
pub mod consensus;
pub mod dataio;
pub mod export;
pub mod fhir;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod http;
pub mod identity;
pub mod index;
pub mod launcher;
pub mod machine;
pub mod objects;
pub mod meili;
pub mod metrics;
pub mod pki;
pub mod search;
pub mod store;
pub mod subscription;
pub mod tenancy;
pub mod terminology;
pub mod trace;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use actix_web::{web, App, HttpServer};

pub use config::Config;

use crate::actors::Mailboxes;
use crate::consensus::{ConsensusError, RaftHandle};
use crate::fhir::Definitions;
use crate::machine::StateMachine;
use crate::store::{Store, StoreError};

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("cannot open the data directory {path}: {source}")]
    DataDir { path: String, source: sled::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error("the HTTP server thread failed to start")]
    HttpThread,
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("cannot read admin_token_file {path}: {reason}")]
    AdminToken { path: String, reason: String },
    #[error(transparent)]
    ApiTls(#[from] pki::api::ApiTlsError),
    #[error(transparent)]
    Objects(#[from] objects::ObjectsError),
    #[error("cannot create the local blob folder in {path}: {source}")]
    Blobs { path: String, source: std::io::Error },
    #[error("[meilisearch]: {0}")]
    Meili(String),
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
}

/// A running node.
pub struct NodeHandle {
    /// The address the HTTP API listens on (the real port when 0 was configured).
    pub addr: SocketAddr,
    /// The operator API's address, when `admin_listen` is set.
    pub admin_addr: Option<SocketAddr>,
    /// Whether the HTTP API speaks TLS (`api_tls`).
    pub tls: bool,
    pub raft: RaftHandle,
    server: actix_web::dev::ServerHandle,
    admin_server: Option<actix_web::dev::ServerHandle>,
    http_thread: Option<JoinHandle<()>>,
    raft_thread: Option<JoinHandle<()>>,
    /// Written out once more when the node stops (its lines are batched).
    audit: Option<Arc<auth::audit::AuditLog>>,
}

impl NodeHandle {
    /// `http://127.0.0.1:PORT`, or `https://…` with `api_tls`.
    pub fn base_url(&self) -> String {
        format!("{}://{}", if self.tls { "https" } else { "http" }, self.addr)
    }

    /// Stops accepting requests, finishes those in flight, stops Raft and flushes storage.
    pub fn stop(mut self) {
        if let Some(admin) = &self.admin_server {
            futures::executor::block_on(admin.stop(true));
        }
        futures::executor::block_on(self.server.stop(true));
        self.join();
    }

    /// Runs until the HTTP server stops (Ctrl-C / SIGTERM), then shuts down cleanly.
    pub fn wait(mut self) {
        self.join();
    }

    fn join(&mut self) {
        if let Some(t) = self.http_thread.take() {
            let _ = t.join();
        }
        if let Some(log) = &self.audit {
            log.flush();
        }
        self.raft.stop();
        if let Some(t) = self.raft_thread.take() {
            let _ = t.join();
        }
    }
}

/// How the leader vets a write a follower forwards: it must decode and pass the same checks the
/// follower's actor made, and it takes the leader's clock (a follower's clock never sets
/// `lastUpdated`, so one node with a clock in the future cannot pin the cluster's timestamps).
fn forward_check(defs: Arc<Definitions>, max_depth: usize) -> consensus::transport::ForwardCheck {
    Arc::new(move |data: Vec<u8>| {
        let cmd = machine::Command::decode(&data).map_err(|e| e.to_string())?;
        cmd.check(&defs, max_depth)?;
        Ok(cmd.with_ts(fhir::meta::now_micros()).encode())
    })
}

/// Starts a node: storage, Raft, the per-type actors and the HTTP API. Returns once it listens.
pub fn start_node(cfg: Config) -> Result<NodeHandle, StartError> {
    cfg.validate()?;
    let api_tls = cfg.api_tls.as_ref().map(pki::api::server_config).transpose()?;
    let tls = api_tls.is_some();
    // Everything that can refuse the configuration, before storage and Raft start.
    let authority = Arc::new(auth::Authority::load(&cfg.auth)?);
    let audit = authority.audit.clone();
    let admin_token = match &cfg.admin_token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| StartError::AdminToken { path: path.display().to_string(), reason: e.to_string() })?;
            let token = text.trim().to_string();
            if token.len() < 16 {
                return Err(StartError::AdminToken { path: path.display().to_string(), reason: "the token must be at least 16 characters".into() });
            }
            Some(Arc::<str>::from(token))
        }
        None => None,
    };
    let s3 = cfg.s3.as_ref().map(objects::S3::open).transpose()?;
    let blobs = Arc::new(binary::Blobs::open(&cfg.binary, &cfg.data_dir, cfg.cluster.peers.len() > 1 || cfg.cluster.join, cfg.fhir_version, s3.clone()).map_err(|source| StartError::Blobs { path: cfg.data_dir.display().to_string(), source })?);
    let text_search = meili::Meili::from_config(&cfg.meilisearch).map_err(StartError::Meili)?.map(Arc::new);
    let db = store::db::open(&cfg.data_dir, &cfg.storage)
        .map_err(|source| StartError::DataDir { path: cfg.data_dir.display().to_string(), source })?;
    let state = db.open_tree("state").map_err(StoreError::from)?;
    let search = Arc::new(search::params::Registry::load(cfg.fhir_version));
    // The shipped terminology is parsed on first use; warm it off the start path so the first
    // `:in` or `$expand` does not wait for it.
    let version = cfg.fhir_version;
    std::thread::Builder::new().name("kiln-terminology".into()).spawn(move || terminology::load::shipped(version)).map_err(|e| StoreError::Storage(format!("starting the terminology loader: {e}")))?;
    // A crash in the middle of a snapshot install left part old, part new state: finish the
    // install first (before anything reads the state).
    if store::snapshot::resume_interrupted_install(&db, &state)? {
        tracing::warn!("finished a snapshot install that a crash had interrupted");
    }
    let mut sm = StateMachine::open(state.clone())?.with_search(search.clone());
    sm.ensure_index()?;
    let store = Store::new(state);
    let defs = Arc::new(Definitions::load(cfg.fhir_version));
    let node_metrics = metrics::Metrics::new(cfg.node_id, cfg.fhir_version.as_str(), db.clone())?;
    let (raft, raft_thread) = consensus::node::start(&cfg.consensus(), db, sm, forward_check(defs.clone(), cfg.limits.max_depth), node_metrics.raft.clone())?;

    let workers = if cfg.http_workers == 0 { num_cpus::get() } else { cfg.http_workers };
    let (tx, rx) = std::sync::mpsc::channel();
    let thread_cfg = cfg.clone();
    let thread_raft = raft.clone();
    let http_thread = std::thread::Builder::new()
        .name(format!("kiln-http-{}", cfg.node_id))
        .spawn(move || {
            let system = actix_web::rt::System::new();
            system.block_on(async move {
                let cfg = thread_cfg;
                let subscriptions = Arc::new(subscription::Subscriptions::new(Arc::new(subscription::Rules::with(cfg.subscriptions.clone(), search.clone(), defs.clone()))));
                // The one ActorSettings of this node: the actors and the handlers that prepare writes
                // outside them (bundle plans, $validate) check alike.
                let subscription_hook = cfg.subscriptions.enabled.then(|| subscriptions.rules.clone() as Arc<dyn actors::resource::WriteHook>);
                let settings = actors::resource::ActorSettings::new(cfg.allow_update_create, cfg.limits.max_depth, cfg.limits.max_body_bytes).with_hook(subscription_hook);
                let registry = Arc::new(Mailboxes::start(defs.clone(), thread_raft.clone(), settings.clone(), workers));
                let version = cfg.fhir_version;
                let listen = cfg.listen.clone();
                let admin_listen = cfg.admin_listen.clone();
                let work = Arc::new(http::work::WorkPool::new(&cfg.limits));
                let bundle_room = Arc::new(tokio::sync::Semaphore::new(cfg.limits.max_inflight_bundle_bytes.div_ceil(1024).min(tokio::sync::Semaphore::MAX_PERMITS)));
                let response_room = http::response_room::ResponseRoom::new(
                    cfg.limits.max_inflight_response_bytes,
                    cfg.limits.max_batch_response_bytes,
                    std::time::Duration::from_millis(cfg.limits.stall_timeout_ms),
                );
                let local_dir = cfg.export.local_dir(&cfg.data_dir);
                let exporter = Arc::new(export::runner::Exporter {
                    raft: thread_raft.clone(),
                    root: store.clone(),
                    reg: search.clone(),
                    defs: defs.clone(),
                    cfg: cfg.export.clone(),
                    local: Arc::new(export::sink::LocalSink { dir: local_dir }),
                    s3: s3.clone().map(|s3| Arc::new(export::s3_sink::S3Sink { s3 }) as Arc<dyn export::sink::ExportSink>),
                    rewrites: tokio::sync::Semaphore::new(1),
                });
                let export_supervisor = actix::Actor::start(export::runner::ExportSupervisor::new(exporter.clone()));
                if let Some(m) = &text_search {
                    let cx = meili::indexer::IndexerCtx { meili: m.clone(), raft: thread_raft.clone(), tree: store.tree().tree().clone() };
                    actix::Actor::start(meili::indexer::IndexerSupervisor::new(Arc::new(cx)));
                }
                if subscriptions.enabled() {
                    let cx = subscription::notifier::NotifierCtx { subs: subscriptions.clone(), raft: thread_raft.clone(), tree: store.tree().tree().clone() };
                    actix::Actor::start(subscription::notifier::NotifierSupervisor::new(Arc::new(cx)));
                    actix_web::rt::spawn(subscription::websocket::pinger(subscriptions.clone(), store.tree().tree().clone()));
                }
                let state = web::Data::new(http::AppState {
                    cfg,
                    defs,
                    store,
                    actors: registry.clone(),
                    write_settings: settings,
                    raft: thread_raft,
                    search: search.clone(),
                    started: fhir::meta::format_instant(fhir::meta::now_micros()),
                    bundle_room,
                    response_room,
                    work,
                    capability: Default::default(),
                    auth: authority,
                    export: exporter,
                    export_supervisor,
                    s3,
                    blobs,
                    meili: text_search,
                    metrics: node_metrics,
                    subscriptions,
                });
                if let Some(s3) = state.s3.clone() {
                    // Not a start condition (the node serves everything else without the bucket):
                    // tell the operator early whether the bucket answers.
                    actix_web::rt::spawn(async move {
                        match s3.check().await {
                            Ok(()) => tracing::info!("[s3] {} answers", s3.describe()),
                            Err(e) => tracing::warn!("[s3] check failed, requests that need the bucket will fail: {e}"),
                        }
                    });
                }
                let admin_state = state.clone();
                let connections = http::connections::per_worker(&state.cfg.limits, workers, http::connections::raise_fd_limit());
                let header_timeout = std::time::Duration::from_millis(state.cfg.limits.header_timeout_ms);
                let idle_timeout_ms = state.cfg.limits.idle_timeout_ms;
                let idle_limit = std::time::Duration::from_millis(idle_timeout_ms) + header_timeout;
                let server = HttpServer::new(move || {
                    http::error::set_thread_version(version);
                    App::new()
                        .app_data(state.clone())
                        .wrap(actix_web::middleware::from_fn(http::routes::fast))
                        .wrap(actix_web::middleware::from_fn(http::authenticate::authenticate))
                        .wrap(actix_web::middleware::from_fn(http::observe::observe))
                        .wrap(actix_web::middleware::from_fn(http::request_id::middleware))
                        .configure(http::configure)
                })
                .workers(workers)
                // Each connection watched for the client leaving (costly work stops then) and
                // for sending no whole request for too long.
                .on_connect(move |conn, ext| http::work::on_connect(conn, ext, idle_limit))
                // Descriptors stay for sled, Raft and files ([`http::connections`]).
                .max_connections(connections)
                .client_request_timeout(header_timeout)
                // A generous idle timer: a client on a busy node must not see its keep-alive
                // connection reset (actix's default is 5 s).
                .keep_alive(std::time::Duration::from_millis(idle_timeout_ms))
                .shutdown_timeout(10);
                let server = match api_tls {
                    Some(tls) => server.bind_rustls_0_23(&listen, tls),
                    None => server.bind(&listen),
                };
                let server = match server {
                    Ok(s) => s,
                    Err(source) => {
                        let _ = tx.send(Err(StartError::Listen { addr: listen, source }));
                        return;
                    }
                };
                let addr = server.addrs()[0];
                let admin = match admin_listen {
                    None => None,
                    Some(admin_listen) => {
                        let token = web::Data::new(http::admin::AdminToken(admin_token));
                        let server = HttpServer::new(move || {
                            http::error::set_thread_version(version);
                            App::new()
                                .app_data(admin_state.clone())
                                .app_data(token.clone())
                                .wrap(actix_web::middleware::from_fn(http::admin::require_token))
                                .wrap(actix_web::middleware::from_fn(http::request_id::middleware))
                                .configure(http::admin::configure_admin)
                        })
                        .workers(1)
                        .max_connections(http::connections::ADMIN_CONNECTIONS)
                        .client_request_timeout(header_timeout)
                        .bind(&admin_listen);
                        match server {
                            Ok(s) => Some(s),
                            Err(source) => {
                                let _ = tx.send(Err(StartError::Listen { addr: admin_listen, source }));
                                return;
                            }
                        }
                    }
                };
                let admin = admin.map(|s| (s.addrs()[0], s.run()));
                let running = server.run();
                let _ = tx.send(Ok((addr, running.handle(), admin.as_ref().map(|(a, r)| (*a, r.handle())))));
                let admin_task = admin.map(|(_, r)| actix_web::rt::spawn(r));
                if let Err(e) = running.await {
                    tracing::error!("HTTP server: {e}");
                }
                if let Some(t) = admin_task {
                    let _ = t.await;
                }
                registry.stop();
            });
        })
        .map_err(|_| StartError::HttpThread)?;
    let (addr, server, admin) = match rx.recv() {
        Ok(Ok(started)) => started,
        Ok(Err(e)) => {
            raft.stop();
            let _ = http_thread.join();
            let _ = raft_thread.join();
            return Err(e);
        }
        Err(_) => return Err(StartError::HttpThread),
    };
    tracing::info!(node = cfg.node_id, %addr, tls, version = %cfg.fhir_version, "Kiln node listening");
    if let Some((a, _)) = &admin {
        tracing::info!(node = cfg.node_id, addr = %a, "operator API listening");
    }
    let (admin_addr, admin_server) = admin.map(|(a, h)| (Some(a), Some(h))).unwrap_or((None, None));
    Ok(NodeHandle { addr, admin_addr, tls, raft, server, admin_server, http_thread: Some(http_thread), raft_thread: Some(raft_thread), audit })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::command::{Action, Command, CommandV1, WriteOp};

    #[test]
    fn a_forwarded_write_takes_the_leaders_clock() {
        let check = forward_check(Arc::new(Definitions::load(fhir::FhirVersion::R4)), 64);
        let ten_years = 10 * 365 * 24 * 3600 * 1_000_000u64;
        let op = WriteOp { action: Action::Update, rtype: "Patient".into(), id: "a".into(), body: Some(r#"{"resourceType":"Patient","id":"a"}"#.into()), if_match: None, allow_create: true };
        let from_the_future = Command::V1(CommandV1::Writes { ts_micros: fhir::meta::now_micros() + ten_years, ops: vec![op] });
        let out = check(from_the_future.encode()).unwrap();
        let Command::V1(CommandV1::Writes { ts_micros, .. }) = Command::decode(&out).unwrap() else { panic!("writes") };
        let now = fhir::meta::now_micros();
        assert!(ts_micros <= now && now - ts_micros < 60_000_000, "stamped with this node's clock, not the follower's");
        assert!(check(b"garbage".to_vec()).is_err());
    }
}
