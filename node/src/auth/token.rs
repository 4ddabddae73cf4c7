//! `kiln token`: HS256 development tokens with the claims this server reads (`sub`, the groups
//! and tenant claims, `scope`, `patient`, `iat`, `exp`, and `iss` / `aud` when given).

use std::path::Path;

use serde_json::{json, Value};

use super::{AuthConfig, AuthError};

/// Signs `claims` with HS256.
pub fn sign_hs256(secret: &[u8], claims: &Value) -> Result<String, AuthError> {
    let header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_secret(secret)).map_err(|e| AuthError::Config(e.to_string()))
}

/// What `kiln token` puts in a token.
#[derive(Debug, Clone, Default)]
pub struct TokenSpec {
    pub sub: String,
    pub groups: Vec<String>,
    pub scope: Option<String>,
    pub tenant: Option<String>,
    pub patient: Option<String>,
    pub ttl_secs: u64,
    pub issuer: Option<String>,
    pub audience: Option<String>,
}

/// The claims of a token, named as `cfg` (the node's `[auth]`) reads them.
pub fn claims(spec: &TokenSpec, cfg: &AuthConfig, now: u64) -> Value {
    let mut c = json!({"sub": spec.sub, "iat": now, "exp": now + spec.ttl_secs});
    let o = c.as_object_mut().expect("an object");
    if !spec.groups.is_empty() {
        o.insert(cfg.groups_claim.clone(), json!(spec.groups));
    }
    if let Some(s) = &spec.scope {
        o.insert("scope".into(), json!(s));
    }
    if let Some(t) = &spec.tenant {
        o.insert(cfg.tenant_claim.clone(), json!(t));
    }
    if let Some(p) = &spec.patient {
        o.insert("patient".into(), json!(p));
    }
    if let Some(i) = spec.issuer.as_ref().or(cfg.issuer.as_ref()) {
        o.insert("iss".into(), json!(i));
    }
    if let Some(a) = spec.audience.as_ref().or(cfg.audience.as_ref()) {
        o.insert("aud".into(), json!(a));
    }
    c
}

/// Reads the secret file and signs a token for `spec`.
pub fn mint(secret_file: &Path, spec: &TokenSpec, cfg: &AuthConfig) -> Result<String, AuthError> {
    let bytes = std::fs::read(secret_file).map_err(|e| AuthError::Config(format!("{}: {e}", secret_file.display())))?;
    let secret = bytes.trim_ascii();
    if secret.len() < 32 {
        return Err(AuthError::Config(format!("{}: the secret must be at least 32 bytes", secret_file.display())));
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    sign_hs256(secret, &claims(spec, cfg, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_use_the_configured_names() {
        let cfg = AuthConfig { groups_claim: "groups".into(), tenant_claim: "tid".into(), audience: Some("kiln".into()), ..AuthConfig::default() };
        let spec = TokenSpec { sub: "bob".into(), groups: vec!["auditor".into()], tenant: Some("t1".into()), ttl_secs: 60, ..TokenSpec::default() };
        let c = claims(&spec, &cfg, 1000);
        assert_eq!(c["groups"], json!(["auditor"]));
        assert_eq!(c["tid"], "t1");
        assert_eq!(c["exp"], 1060);
        assert_eq!(c["aud"], "kiln");
        assert!(c.get("scope").is_none());
    }
}
