//! PATCH with JSON Patch (RFC 6902). The proposer reads the current version, applies the patch and
//! proposes the result as an update conditioned on that version, so a concurrent write is never
//! lost: on a conflict the patch is re-applied to the new version (unless the client sent
//! `If-Match`, which then answers 412).

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use super::crud::{send_write, write_response, InstanceWrite};
use super::negotiate;
use super::{AppState, RequestError};
use crate::actors::{WriteError, WriteIntent};
use crate::error::ApiError;
use crate::store::command::Action;
use crate::store::StoreError;

/// Attempts when concurrent writes keep moving the version.
const MAX_ATTEMPTS: usize = 8;

pub async fn patch(
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    st: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let InstanceWrite { ctx, rtype, id, if_match: client_if_match } = InstanceWrite::new(&req, &st, &path)?;
    let id = id.as_str();
    negotiate::require_json_patch(&req)?;
    let doc = negotiate::read_json(payload, st.cfg.limits.max_body_bytes).await?;
    let ops: json_patch::Patch = serde_json::from_value(doc).map_err(|e| RequestError::InvalidPatch(e.to_string()))?;
    for attempt in 1..=MAX_ATTEMPTS {
        let (cur, record) = st.store.read(rtype, id)?;
        if let Some(expected) = client_if_match {
            if expected != cur.version {
                return Err(StoreError::VersionConflict {
                    rtype: rtype.into(),
                    id: id.into(),
                    expected,
                    current: Some(cur.version),
                }
                .into());
            }
        }
        let mut body: Value = serde_json::from_slice(record.body())
            .map_err(|e| StoreError::Corrupt(format!("stored body: {e}")))?;
        let before = (body.get("resourceType").cloned(), body.get("id").cloned());
        json_patch::patch(&mut body, &ops).map_err(|e| RequestError::PatchFailed(e.to_string()))?;
        if (body.get("resourceType").cloned(), body.get("id").cloned()) != before {
            return Err(RequestError::PatchChangesIdentity.into());
        }
        let intent = WriteIntent { action: Action::Patch, id: Some(id.to_string()), body: Some(body), if_match: Some(cur.version), condition: None };
        match send_write(&st, rtype, intent).await {
            Ok((id, applied)) => return write_response(&ctx, &st, rtype, &id, &applied),
            Err(ApiError::Write(WriteError::Store(StoreError::VersionConflict { .. })))
                if client_if_match.is_none() && attempt < MAX_ATTEMPTS => {}
            Err(e) => return Err(e),
        }
    }
    Err(RequestError::PreconditionFailed(format!("{rtype}/{id} kept changing; the patch was not applied")).into())
}
