//! The FHIR API's front door: every request is authenticated here once (401 with
//! `WWW-Authenticate` before any handler runs), its [`crate::auth::Principal`] is put in the request
//! for the handlers' checks ([`crate::http::guard`]), its tenant is resolved
//! ([`crate::tenancy::resolve`], the `/tenant/{id}` prefix stripped so the routes are the same
//! for every tenant), the operator pages (`/_cluster/status`, `/metrics`: [`is_operator_page`])
//! need the admin group, and one
//! audit line is recorded per request ([`crate::auth::audit`]). `/metadata`, `/.well-known/smart-configuration` and `/_health` stay open.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, ResponseError};

use crate::auth::AuthError;
use crate::http::error::ApiError;
use crate::http::AppState;

/// Paths anyone may read.
pub fn is_open(path: &str) -> bool {
    matches!(path.trim_end_matches('/'), "/metadata" | "/.well-known/smart-configuration" | "/_health")
}

/// Pages for the admin group only (when auth is on): the consensus status and the metrics.
pub fn is_operator_page(path: &str) -> bool {
    path.starts_with("/_cluster/") || path.trim_end_matches('/') == "/metrics"
}

fn header<'a>(req: &'a ServiceRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Authenticates, resolves the tenant (stripping a `/tenant/{id}` prefix), authorizes the
/// operator pages, and writes the audit line.
pub async fn authenticate(mut req: ServiceRequest, next: Next<impl MessageBody + 'static>) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(st) = req.app_data::<web::Data<AppState>>().cloned() else {
        return Ok(next.call(req).await?.map_into_boxed_body());
    };
    let audit_log = st.auth.audit.clone();
    let audit_on = audit_log.is_some();
    let tenancy = &st.cfg.tenancy;
    if !st.auth.enabled() && !audit_on && !tenancy.enabled {
        return Ok(next.call(req).await?.map_into_boxed_body());
    }
    let method = req.method().to_string();
    let path = req.path().to_string();
    let deny = |req: ServiceRequest, e: ApiError, subject: &str, tenant: Option<&str>| {
        let resp = e.error_response();
        if let Some(log) = &audit_log {
            audit(log, subject, tenant, &method, &path, resp.status().as_u16());
        }
        Ok(req.into_response(resp))
    };
    // Open pages need no credentials (also under a tenant prefix).
    let unprefixed = match path.strip_prefix("/tenant/").filter(|_| tenancy.enabled) {
        Some(after) => after.split_once('/').map(|(_, r)| format!("/{r}")).unwrap_or_else(|| "/".into()),
        None => path.clone(),
    };
    let principal = if is_open(&unprefixed) {
        None
    } else {
        match st.auth.authenticate(header(&req, "authorization"), header(&req, "x-api-key")) {
            Ok(p) => Some(p),
            Err(e) => return deny(req, e.into(), "-", None),
        }
    };
    let open = principal.as_ref().is_none_or(|p| p.via == crate::auth::Via::Open);
    let claim = principal.as_ref().and_then(|p| p.tenant.as_deref());
    let subject = principal.as_ref().map(|p| p.subject.clone()).unwrap_or_else(|| "-".into());
    let resolved = match crate::tenancy::resolve(tenancy, &path, claim, open) {
        Ok(r) => r,
        Err(e) => return deny(req, e.into(), &subject, claim),
    };
    if let Some(rest) = &resolved.rest {
        let pq = match req.uri().query() {
            Some(q) => format!("{rest}?{q}"),
            None => rest.clone(),
        };
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = match pq.parse() {
            Ok(p) => Some(p),
            Err(_) => return deny(req, crate::http::RequestError::NoRoute(path.clone()).into(), &subject, claim),
        };
        match actix_web::http::Uri::from_parts(parts) {
            Ok(uri) => {
                req.match_info_mut().get_mut().update(&uri);
                req.head_mut().uri = uri;
            }
            Err(_) => return deny(req, crate::http::RequestError::NoRoute(path.clone()).into(), &subject, claim),
        }
    }
    if let Some(p) = &principal {
        // Both spellings: the path as sent and as the router matches it (percent-decoded).
        if (is_operator_page(&unprefixed) || is_operator_page(req.match_info().as_str())) && !p.admin {
            let e = AuthError::Forbidden(format!("{unprefixed} needs the {} group", st.auth.cfg.admin_group));
            return deny(req, e.into(), &subject, claim);
        }
        // Whatever open pages reach, they reach with no rights: no principal goes in for them.
        req.extensions_mut().insert(p.clone());
    }
    let tenant = resolved.tenant.clone();
    req.extensions_mut().insert(crate::tenancy::InTenant { tenant: tenant.as_deref().map(Into::into), by_path: resolved.rest.is_some() });
    let resp = next.call(req).await?.map_into_boxed_body();
    if let Some(log) = &audit_log {
        audit(log, &subject, tenant.as_deref(), &method, &path, resp.status().as_u16());
    }
    Ok(resp)
}

/// One audit line per request.
fn audit(log: &crate::auth::audit::AuditLog, subject: &str, tenant: Option<&str>, method: &str, path: &str, status: u16) {
    let mut segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments.first() == Some(&"tenant") && segments.len() >= 2 {
        segments.drain(..2);
    }
    let (interaction, rtype, id) = crate::http::interaction_of(method, &segments);
    let outcome = if status < 400 {
        "allowed"
    } else if status == 401 || status == 403 {
        "denied"
    } else {
        "failed"
    };
    log.record(&crate::auth::audit::Event { subject, tenant, interaction, rtype, id, method, path, status, outcome });
}
