//! `POST /_cluster/meilisearch/reindex` on the operator API (`kiln reindex` calls it): drops
//! every Kiln index in Meilisearch, then resets the replicated cursor through Raft, so the
//! leader's indexer sends every resource again from the history. Resumable by construction: the
//! cursor moves as the rebuild goes, and a new leader goes on from it. Progress is the
//! `meilisearch` object of `/_cluster/status` (`lag_rows` back to 0).

use actix_web::{web, HttpResponse};
use meilisearch_sdk::errors::ErrorCode;
use meilisearch_sdk::tasks::Task;
use serde_json::json;

use crate::machine::meili_cursor::CursorOp;
use crate::meili::{status, MeiliError};
use crate::http::error::ApiError;
use crate::http::AppState;
use crate::machine::command::{Command, CommandV1};

pub async fn reindex(st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let Some(m) = st.meili.clone() else { return Err(MeiliError::NotConfigured("reindex".into()).into()) };
    let tree = st.store.tree().tree().clone();
    let tenants = status::tenants(&tree).map_err(MeiliError::from)?;
    for t in &tenants {
        // Dropping the index drops stale documents and settings alike; the indexer creates it
        // again with Kiln's settings. An index that does not exist is already empty.
        let task = m.call(m.client().delete_index(m.cfg.index_uid(t.as_deref()))).await?;
        match m.call(m.client().wait_for_task(task, Some(std::time::Duration::from_millis(20)), Some(m.timeout()))).await? {
            Task::Succeeded { .. } => {}
            Task::Failed { content } if content.error.error_code == ErrorCode::IndexNotFound => {}
            Task::Failed { content } => return Err(MeiliError::Task(content.error.error_message).into()),
            _ => return Err(MeiliError::Unavailable { url: m.url.clone(), reason: "the index deletion did not finish in time".into() }.into()),
        }
    }
    m.forget_indexes();
    st.raft.propose(&Command::V1(CommandV1::SearchCursor(CursorOp::Reset))).await.map_err(MeiliError::from)?;
    Ok(HttpResponse::Ok().json(json!({ "reset": true, "meilisearch": status::status_json(Some(&m), &tree) })))
}
