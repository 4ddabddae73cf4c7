//! Multi-tenancy (`[tenancy]`): which tenant a request works in, and the URL form FWoA used.
//!
//! A request's tenant is its `/tenant/{id}/…` path prefix or, without one, the token's tenant
//! claim (`[auth] tenant_claim`); a request with neither works in the default tenant, where the
//! data written before tenancy was enabled lives. A path tenant that differs from the token's
//! claim, or a token without a claim on a tenant path, is a 403; a tenant not listed in
//! `tenants` (when the list is not empty) is a 404. [`resolve`] runs in the auth middleware,
//! which strips the prefix so the routes are the same for every tenant; the tenant's data is
//! its own key space of the state ([`crate::store::space`]), so ids, versions, history,
//! searches, conditional matches, references and bundles never cross tenants.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// `[tenancy]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TenancyConfig {
    pub enabled: bool,
    /// The tenants served; empty: any valid tenant id.
    pub tenants: Vec<String>,
}

/// Why a request cannot work in the tenant it names.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TenancyError {
    #[error("'{0}' is not a tenant id (1 to 64 of A-Z a-z 0-9 - _)")]
    Invalid(String),
    #[error("tenant '{0}' is not served here (config tenancy.tenants)")]
    Unknown(String),
    #[error("the token is for tenant '{token}', not '{path}'")]
    Mismatch { token: String, path: String },
    #[error("tenant '{0}' needs a token with that tenant claim (a token without one works in the default tenant)")]
    NoClaim(String),
}

/// Whether `t` can name a tenant.
pub fn valid_tenant(t: &str) -> bool {
    !t.is_empty() && t.len() <= 64 && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A request's tenant: `None` is the default tenant.
pub type Tenant = Option<Arc<str>>;

/// The tenant of a request, as the middleware put it in the request.
#[derive(Debug, Clone)]
pub struct InTenant {
    pub tenant: Tenant,
    /// Named by the `/tenant/{id}` path prefix (links then keep it).
    pub by_path: bool,
}

/// What [`resolve`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub tenant: Option<String>,
    /// The path without the `/tenant/{id}` prefix (when it had one).
    pub rest: Option<String>,
}

/// The tenant of a request at `path` whose token claims `claim` (`open`: no authentication, so
/// no claim to compare).
pub fn resolve(cfg: &TenancyConfig, path: &str, claim: Option<&str>, open: bool) -> Result<Resolved, TenancyError> {
    if !cfg.enabled {
        return Ok(Resolved { tenant: None, rest: None });
    }
    let (from_path, rest) = match path.strip_prefix("/tenant/") {
        Some(after) => {
            let (id, rest) = after.split_once('/').map(|(i, r)| (i, format!("/{r}"))).unwrap_or((after, "/".to_string()));
            (Some(id.to_string()), Some(rest))
        }
        None => (None, None),
    };
    let tenant = match (&from_path, claim) {
        (Some(p), Some(c)) if p != c => return Err(TenancyError::Mismatch { token: c.into(), path: p.clone() }),
        (Some(p), None) if !open => return Err(TenancyError::NoClaim(p.clone())),
        (Some(p), _) => Some(p.clone()),
        (None, Some(c)) => Some(c.to_string()),
        (None, None) => None,
    };
    if let Some(t) = &tenant {
        if !valid_tenant(t) {
            return Err(TenancyError::Invalid(t.clone()));
        }
        if !cfg.tenants.is_empty() && !cfg.tenants.iter().any(|x| x == t) {
            return Err(TenancyError::Unknown(t.clone()));
        }
    }
    Ok(Resolved { tenant, rest })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_claim_and_default() {
        let on = TenancyConfig { enabled: true, tenants: vec![] };
        let r = |p: &str, c: Option<&str>| resolve(&on, p, c, false);
        assert_eq!(r("/tenant/t1/Patient/1", Some("t1")).unwrap(), Resolved { tenant: Some("t1".into()), rest: Some("/Patient/1".into()) });
        assert_eq!(r("/Patient/1", Some("t1")).unwrap(), Resolved { tenant: Some("t1".into()), rest: None });
        assert_eq!(r("/Patient/1", None).unwrap(), Resolved { tenant: None, rest: None });
        assert!(matches!(r("/tenant/t2/Patient", Some("t1")), Err(TenancyError::Mismatch { .. })));
        assert!(matches!(r("/tenant/t2/Patient", None), Err(TenancyError::NoClaim(_))));
        assert!(resolve(&on, "/tenant/t2/Patient", None, true).is_ok(), "no auth: the path decides");
        assert!(matches!(r("/tenant/a%20b/Patient", Some("a%20b")), Err(TenancyError::Invalid(_))));
        let listed = TenancyConfig { enabled: true, tenants: vec!["t1".into()] };
        assert!(matches!(resolve(&listed, "/Patient", Some("t9"), false), Err(TenancyError::Unknown(_))));
        let off = TenancyConfig::default();
        assert_eq!(resolve(&off, "/tenant/t1/Patient", Some("t1"), false).unwrap().tenant, None);
        assert_eq!(r("/tenant/t1", Some("t1")).unwrap().rest.as_deref(), Some("/"));
    }
}
