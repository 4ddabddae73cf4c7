//! Operator endpoints outside the FHIR API: `/_cluster/status` (consensus state; field names are
//! documented in docs/operations.md and kept stable) and `/_health`.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::AppState;

pub async fn cluster_status(st: web::Data<AppState>) -> HttpResponse {
    let s = st.raft.status();
    let peers: Vec<_> = s
        .voters
        .iter()
        .filter(|v| **v != s.id)
        .map(|v| json!({"id": v}))
        .collect();
    HttpResponse::Ok().json(json!({
        "id": s.id,
        "role": s.role,
        "term": s.term,
        "leader_id": s.leader_id,
        "commit_index": s.commit_index,
        "applied_index": s.applied_index,
        "first_index": s.first_index,
        "last_index": s.last_index,
        "voters": s.voters,
        "peers": peers,
        "fhir_version": st.defs.version.as_str()
    }))
}

pub async fn health(st: web::Data<AppState>) -> HttpResponse {
    let s = st.raft.status();
    let ok = s.role == "leader" || s.role == "follower";
    let body = json!({"status": if ok { "ok" } else { "unavailable" }, "role": s.role});
    if ok { HttpResponse::Ok().json(body) } else { HttpResponse::ServiceUnavailable().json(body) }
}
