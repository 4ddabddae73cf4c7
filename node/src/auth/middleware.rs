//! The FHIR API's front door: every request is authenticated here once (401 with
//! `WWW-Authenticate` before any handler runs), its [`Principal`] is put in the request for the
//! handlers' checks ([`super::guard`]), the operator status page needs the admin group, and one
//! audit line is logged per request (target `kiln::audit`: subject, tenant, interaction, type,
//! id, status). `/metadata`, `/.well-known/smart-configuration` and `/_health` stay open.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, ResponseError};

use super::AuthError;
use crate::error::ApiError;
use crate::http::AppState;

/// Paths anyone may read.
pub fn is_open(path: &str) -> bool {
    matches!(path.trim_end_matches('/'), "/metadata" | "/.well-known/smart-configuration" | "/_health")
}

fn header<'a>(req: &'a ServiceRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Authenticates, authorizes the operator pages, and writes the audit line.
pub async fn authenticate(req: ServiceRequest, next: Next<impl MessageBody + 'static>) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(st) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let audit_on = st.auth.cfg.audit_log.unwrap_or(st.auth.enabled());
    if !st.auth.enabled() && !audit_on {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let method = req.method().to_string();
    let path = req.path().to_string();
    if is_open(&path) {
        // No principal goes in: whatever these routes reach, they reach with no rights.
        let resp = next.call(req).await?.map_into_boxed_body();
        if audit_on {
            audit("-", None, &method, &path, resp.status().as_u16());
        }
        return Ok(resp);
    }
    let found = {
        st.auth.authenticate(header(&req, "authorization"), header(&req, "x-api-key")).and_then(|p| {
            if path.starts_with("/_cluster/") && !p.admin {
                Err(AuthError::Forbidden(format!("{path} needs the {} group", st.auth.cfg.admin_group)))
            } else {
                Ok(p)
            }
        })
    };
    let principal = match found {
        Ok(p) => p,
        Err(e) => {
            let subject = if matches!(e, AuthError::Forbidden(_)) { "authenticated" } else { "-" };
            let resp = ApiError::from(e).error_response();
            if audit_on {
                audit(subject, None, &method, &path, resp.status().as_u16());
            }
            return Ok(req.into_response(resp));
        }
    };
    req.extensions_mut().insert(principal.clone());
    let resp = next.call(req).await?.map_into_boxed_body();
    if audit_on {
        audit(&principal.subject, principal.tenant.as_deref(), &method, &path, resp.status().as_u16());
    }
    Ok(resp)
}

/// One structured line per request.
fn audit(subject: &str, tenant: Option<&str>, method: &str, path: &str, status: u16) {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (interaction, rtype, id) = crate::http::classify(method, &segments);
    tracing::info!(target: "kiln::audit", subject, tenant = tenant.unwrap_or("-"), interaction, rtype, id, method, path, status, outcome = if status < 400 { "allowed" } else if status == 401 || status == 403 { "denied" } else { "failed" });
}
