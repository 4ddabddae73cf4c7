//! `POST /_cluster/meilisearch/reindex` on the operator API (`kiln reindex` calls it): empties
//! every Kiln index in Meilisearch, then resets the replicated cursor through Raft, so the
//! leader's indexer sends every resource again from the history. Resumable by construction: the
//! cursor moves as the rebuild goes, and a new leader goes on from it. Progress is the
//! `meilisearch` object of `/_cluster/status` (`lag_rows` back to 0).

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::{cursor::CursorOp, status, MeiliError};
use crate::error::ApiError;
use crate::http::AppState;
use crate::store::command::{Command, CommandV1};

pub async fn reindex(st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let Some(m) = st.meili.clone() else { return Err(MeiliError::NotConfigured("reindex".into()).into()) };
    let tree = st.store.tree().tree().clone();
    let tenants = status::tenants(&tree).map_err(MeiliError::from)?;
    for t in &tenants {
        let index = m.client().index(m.cfg.index_uid(t.as_deref()));
        match tokio::time::timeout(m.timeout(), index.delete_all_documents()).await {
            Ok(Ok(task)) => m.wait(task).await?,
            Ok(Err(meilisearch_sdk::errors::Error::Meilisearch(e))) if e.error_code == meilisearch_sdk::errors::ErrorCode::IndexNotFound => {}
            Ok(Err(e)) => return Err(m.classify(e).into()),
            Err(_) => return Err(MeiliError::Unavailable { url: m.url.clone(), reason: format!("no answer within {} ms", m.cfg.timeout_ms) }.into()),
        }
    }
    m.forget_indexes();
    st.raft.propose(&Command::V1(CommandV1::SearchCursor(CursorOp::Reset))).await.map_err(MeiliError::from)?;
    Ok(HttpResponse::Ok().json(json!({ "reset": true, "meilisearch": status::status_json(Some(&m), &tree) })))
}
