//! Operator endpoints outside the FHIR API. On the FHIR port only the read-only `/_cluster/status`
//! (consensus state; field names are documented in docs/operations.md and kept stable) and
//! `/_health`. Everything that changes or reads the whole cluster is served on the separate
//! operator listener (`admin_listen`, loopback unless a token protects it; [`configure_admin`]):
//! membership changes (`POST /_cluster/nodes`, `DELETE /_cluster/nodes/{id}`, leader only),
//! `/_cluster/digest` (replica comparison, hashes the whole state), `/_cluster/backup` (a
//! consistent copy of the state, [`crate::http::dataio`]) and the test-only fault filter
//! (`/_cluster/faults`) and the Meilisearch rebuild (`POST /_cluster/meilisearch/reindex`,
//! [`crate::http::meili`]). With `admin_token_file` every operator request needs
//! `Authorization: Bearer <token>`; that check is [`require_token`], in front of every route.
//! `GET /metrics` is served on both listeners ([`crate::metrics`]).

use actix_web::{web, HttpRequest, HttpResponse};
use raft::prelude::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use serde::Deserialize;
use serde_json::json;

use super::{AppState, RequestError};
use crate::config::PeerConfig;
use crate::consensus::ConsensusError;
use crate::http::error::ApiError;

fn status_json(st: &AppState) -> serde_json::Value {
    let s = st.raft.status();
    let own = st.cfg.cluster.peers.iter().find(|p| p.id == s.id);
    let (leader_url, leader_admin_url) = if s.leader_id == s.id {
        own.map(|p| (p.http_url.clone(), p.admin_url.clone())).unwrap_or_default()
    } else {
        s.peers.iter().find(|p| p.id == s.leader_id).map(|p| (p.http_url.clone(), p.admin_url.clone())).unwrap_or_default()
    };
    json!({
        "id": s.id,
        "role": s.role,
        "term": s.term,
        "leader_id": s.leader_id,
        "leader_url": leader_url,
        "leader_admin_url": leader_admin_url,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "first_index": s.first_index,
        "last_index": s.last_index,
        "voters": s.voters,
        "learners": s.learners,
        "peers": s.peers,
        "fhir_version": st.defs.version.as_str(),
        "meilisearch": crate::meili::status::status_json(st.meili.as_deref(), st.store.tree().tree()),
        "subscriptions": st.subscriptions.status_json()
    })
}

pub async fn cluster_status(st: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(status_json(&st))
}

/// `/_cluster/status` on the FHIR port: for the admin group only (the middleware checks the
/// path too; this holds whatever path spelling reached the route).
pub async fn cluster_status_fhir(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    if !crate::http::guard::principal_of(&req, &st).admin {
        return Err(crate::auth::AuthError::Forbidden(format!("/_cluster/status needs the {} group", st.auth.cfg.admin_group)).into());
    }
    Ok(HttpResponse::Ok().json(status_json(&st)))
}

/// Body of `POST /_cluster/nodes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddNode {
    pub id: u64,
    pub raft_addr: String,
    #[serde(default)]
    pub http_url: String,
    #[serde(default)]
    pub admin_url: String,
    /// `learner` (default: receives the log, does not vote) or `voter`.
    #[serde(default)]
    pub role: Option<String>,
}

fn single_change(id: u64, ty: ConfChangeType, context: Vec<u8>) -> ConfChangeV2 {
    let mut change = ConfChangeSingle::default();
    change.node_id = id;
    change.set_change_type(ty);
    let mut cc = ConfChangeV2::default();
    cc.set_changes(vec![change].into());
    cc.context = context.into();
    cc
}

/// Adds a member (or promotes a learner): a ConfChangeV2 through the log.
pub async fn add_node(st: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let add: AddNode = serde_json::from_slice(&body).map_err(|e| RequestError::InvalidJson(format!("membership request: {e}")))?;
    let ty = match add.role.as_deref() {
        None | Some("learner") => ConfChangeType::AddLearnerNode,
        Some("voter") => ConfChangeType::AddNode,
        Some(other) => return Err(RequestError::BadParameter { name: "role".into(), reason: format!("'{other}' is not learner or voter") }.into()),
    };
    if add.id == 0 || !add.raft_addr.contains(':') {
        return Err(RequestError::BadParameter { name: "id/raft_addr".into(), reason: "need a non-zero id and a host:port raft_addr".into() }.into());
    }
    if ty == ConfChangeType::AddLearnerNode && st.raft.status().voters.contains(&add.id) {
        return Err(ConsensusError::Membership(format!("node {} is already a voter; a learner change would demote it", add.id)).into());
    }
    let peer = PeerConfig { id: add.id, raft_addr: add.raft_addr, http_url: add.http_url, admin_url: add.admin_url };
    let context = serde_json::to_vec(&peer).map_err(|e| RequestError::InvalidJson(e.to_string()))?;
    st.raft.change_membership(single_change(peer.id, ty, context)).await?;
    Ok(HttpResponse::Ok().json(status_json(&st)))
}

/// Removes a member. The leader does not remove itself (stop it, or remove it from another node
/// once a new leader is elected).
pub async fn remove_node(st: web::Data<AppState>, path: web::Path<u64>) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    if id == st.raft.status().id {
        return Err(ConsensusError::Membership(format!("node {id} is the leader answering this request and cannot remove itself")).into());
    }
    st.raft.change_membership(single_change(id, ConfChangeType::RemoveNode, Vec::new())).await?;
    Ok(HttpResponse::Ok().json(status_json(&st)))
}

/// Body of `POST /_cluster/faults`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Peers this node stops talking to (both directions); empty heals.
    pub isolate: Vec<u64>,
}

pub async fn faults(st: web::Data<AppState>, body: web::Bytes) -> Result<HttpResponse, ApiError> {
    let (true, Some(filter)) = (st.cfg.cluster.fault_injection, st.raft.faults()) else {
        return Err(RequestError::NoRoute("/_cluster/faults (enable cluster.fault_injection on a multi-node cluster)".into()).into());
    };
    let f: Faults = serde_json::from_slice(&body).map_err(|e| RequestError::InvalidJson(format!("faults request: {e}")))?;
    filter.isolate(f.isolate);
    Ok(HttpResponse::Ok().json(json!({ "isolated": filter.isolated() })))
}

/// `GET /_cluster/digest`: a digest of this node's replicated state, for comparing replicas.
pub async fn digest(st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let store = st.store.clone();
    let (applied_index, sha256, pairs, data_sha256) = web::block(move || store.digest())
        .await
        .map_err(|e| crate::store::StoreError::Storage(e.to_string()))??;
    Ok(HttpResponse::Ok().json(json!({ "applied_index": applied_index, "sha256": sha256, "pairs": pairs, "data_sha256": data_sha256 })))
}

/// The operator listener's routes (see the module doc).
pub fn configure_admin(cfg: &mut web::ServiceConfig) {
    cfg.route("/_cluster/status", web::get().to(cluster_status));
    cfg.route("/_health", web::get().to(health));
    cfg.route("/metrics", web::get().to(super::scrape::scrape));
    cfg.route("/_cluster/nodes", web::post().to(add_node));
    cfg.route("/_cluster/nodes/{id}", web::delete().to(remove_node));
    cfg.route("/_cluster/faults", web::post().to(faults));
    cfg.route("/_cluster/digest", web::get().to(digest));
    cfg.route("/_cluster/backup", web::get().to(crate::http::dataio::backup));
    cfg.route("/_cluster/meilisearch/reindex", web::post().to(crate::http::meili::reindex));
    cfg.default_service(web::to(|req: HttpRequest| async move {
        Err::<HttpResponse, ApiError>(RequestError::NoRoute(format!("{} {} (operator API)", req.method(), req.path())).into())
    }));
}

/// The operator routes on the FHIR port: a 404 that says where they are.
pub async fn not_here(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(RequestError::NoRoute(format!("{} (the operator API is served on the admin_listen address, not the FHIR port)", req.path())).into())
}

/// The operator API's bearer token, when `admin_token_file` is set.
#[derive(Clone)]
pub struct AdminToken(pub Option<std::sync::Arc<str>>);

/// Middleware of the operator listener: without a configured token every request passes (the
/// listener is then loopback-only, checked at start); with one, a request must carry it.
pub async fn require_token(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<actix_web::dev::ServiceResponse<actix_web::body::BoxBody>, actix_web::Error> {
    let expected = req.app_data::<web::Data<AdminToken>>().and_then(|t| t.0.clone());
    if let Some(expected) = expected {
        let given = req
            .headers()
            .get(actix_web::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !same_secret(given.as_bytes(), expected.as_bytes()) {
            let err = ApiError::from(RequestError::Unauthorized("the operator API needs Authorization: Bearer <the token in admin_token_file>".into()));
            return Ok(req.into_response(actix_web::ResponseError::error_response(&err)));
        }
    }
    Ok(next.call(req).await?.map_into_boxed_body())
}

/// Compares two secrets in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    // Hashing first makes the comparison independent of the lengths too.
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter().zip(y.iter()).fold(0u8, |acc, (p, q)| acc | (p ^ q)) == 0
}

pub async fn health(st: web::Data<AppState>) -> HttpResponse {
    let s = st.raft.status();
    let ok = matches!(s.role, "leader" | "follower" | "learner") && s.leader_id != 0;
    let body = json!({"status": if ok { "ok" } else { "unavailable" }, "role": s.role});
    if ok { HttpResponse::Ok().json(body) } else { HttpResponse::ServiceUnavailable().json(body) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"abc"));
    }
}
