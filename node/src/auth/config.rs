//! The `[auth]` section of a node's TOML: the mode, where keys, rules and API keys live, and the
//! claims to read. Documented in `cluster-config/single-node.toml` and docs/security.md.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `none`: every request is anonymous and may do everything (loopback only, or with
/// `insecure_no_auth`). `jwt`: every request needs a valid bearer token or API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    None,
    Jwt,
}

/// `[auth]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// File holding the HS256 shared secret (at least 32 bytes).
    pub hs256_secret_file: Option<PathBuf>,
    /// JWKS file (RS256 / ES256 public keys, chosen by `kid`); re-read when it changes.
    pub jwks_file: Option<PathBuf>,
    /// Required `iss` when set.
    pub issuer: Option<String>,
    /// Required `aud` when set.
    pub audience: Option<String>,
    /// Leeway on `exp` / `nbf`, in seconds.
    pub clock_skew_secs: u64,
    /// Claim holding the caller's groups (FWoA: `cognito:groups`).
    pub groups_claim: String,
    /// Claim holding the caller's tenant (FWoA: `custom:tenantId`).
    pub tenant_claim: String,
    /// Group rules (FWoA's RBAC JSON format); unset: FWoA's default practitioner /
    /// non-practitioner / auditor rules.
    pub rules_file: Option<PathBuf>,
    /// API keys: TOML `[[key]]` entries with `name`, `group` and `sha256` (hex of the key).
    pub api_keys_file: Option<PathBuf>,
    /// The authorization server's endpoints, advertised in `/.well-known/smart-configuration`
    /// and the CapabilityStatement (Kiln does not issue tokens).
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    /// Group whose members may use `/_cluster/status` on the FHIR port.
    pub admin_group: String,
    /// Allows `mode = "none"` on a non-loopback `listen` (flag `--insecure-no-auth`).
    pub insecure_no_auth: bool,
    /// One JSON audit line per request (subject, tenant, interaction, type, id, status).
    /// Unset: on when `mode = "jwt"`.
    pub audit_log: Option<bool>,
    /// File the audit lines are appended to (unset: stderr).
    pub audit_file: Option<PathBuf>,
    /// Verified tokens remembered (by hash) until they expire.
    pub cache_entries: usize,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            mode: AuthMode::None,
            hs256_secret_file: None,
            jwks_file: None,
            issuer: None,
            audience: None,
            clock_skew_secs: 60,
            groups_claim: "cognito:groups".into(),
            tenant_claim: "custom:tenantId".into(),
            rules_file: None,
            api_keys_file: None,
            authorization_endpoint: None,
            token_endpoint: None,
            admin_group: "admin".into(),
            insecure_no_auth: false,
            audit_log: None,
            audit_file: None,
            cache_entries: 10_000,
        }
    }
}

impl AuthConfig {
    /// Checks the section against the address the FHIR API listens on.
    pub fn validate(&self, listen_is_loopback: bool) -> Result<(), String> {
        match self.mode {
            AuthMode::None if !listen_is_loopback && !self.insecure_no_auth => Err(
                "listen is not a loopback address and [auth] mode = \"none\": anyone could read and write everything. \
                 Set [auth] mode = \"jwt\" (docs/security.md), or pass --insecure-no-auth (auth.insecure_no_auth = true) if a proxy in front authenticates"
                    .into(),
            ),
            AuthMode::Jwt if self.hs256_secret_file.is_none() && self.jwks_file.is_none() => {
                Err("[auth] mode = \"jwt\" needs hs256_secret_file or jwks_file".into())
            }
            _ if self.cache_entries == 0 => Err("auth.cache_entries must be positive".into()),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_mode_only_on_loopback_or_when_asked() {
        let mut c = AuthConfig::default();
        assert!(c.validate(true).is_ok());
        assert!(c.validate(false).unwrap_err().contains("--insecure-no-auth"));
        c.insecure_no_auth = true;
        assert!(c.validate(false).is_ok());
        c.mode = AuthMode::Jwt;
        assert!(c.validate(true).unwrap_err().contains("hs256_secret_file"));
        let parsed: AuthConfig = toml::from_str("mode = \"jwt\"\nhs256_secret_file = \"s\"\nclock_skew_secs = 5").unwrap();
        assert_eq!(parsed.mode, AuthMode::Jwt);
        assert_eq!(parsed.groups_claim, "cognito:groups");
        assert!(parsed.validate(false).is_ok());
    }
}
