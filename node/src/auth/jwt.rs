//! JWT bearer tokens (`jsonwebtoken`): HS256 with a shared secret, RS256 / ES256 with the public
//! keys of a JWKS file (picked by `kid`; the file is re-read when it changes, at most once a
//! second). `exp` and `sub` are required; `exp` / `nbf` are checked with `clock_skew_secs` of leeway;
//! `iss` / `aud`, when configured, must be present and match. A tenant claim, when present, must
//! be a non-empty string. `alg: none` and every other algorithm are refused. A verified token is
//! remembered by its SHA-256 until it expires (`cache_entries` at most), so a busy client pays for
//! one signature check per token, not per request.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::{Mutex, RwLock};
use serde_json::{Map, Value};

use super::{smart, AuthConfig, AuthError, Principal, Via};

/// The keys of a JWKS file, and when it was read.
struct Jwks {
    path: PathBuf,
    /// Modification time and length of the file when read.
    modified: Option<(SystemTime, u64)>,
    checked: Instant,
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
}

fn file_stamp(path: &PathBuf) -> Option<(SystemTime, u64)> {
    std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len())))
}

type Keys = Vec<(Option<String>, Algorithm, DecodingKey)>;

fn load_jwks(path: &PathBuf) -> Result<(Option<(SystemTime, u64)>, Keys), AuthError> {
    let bad = |e: String| AuthError::Config(format!("jwks_file {}: {e}", path.display()));
    let modified = file_stamp(path);
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
            // Symmetric or unknown keys in a public key set are not used.
            _ => continue,
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| bad(e.to_string()))?;
        keys.push((jwk.common.key_id.clone(), alg, key));
    }
    Ok((modified, keys))
}

/// Verified tokens by SHA-256: the principal and its `exp`.
type TokenCache = HashMap<[u8; 32], (Arc<Principal>, u64)>;

/// Checks tokens.
pub struct Verifier {
    secret: Option<DecodingKey>,
    jwks: Option<RwLock<Jwks>>,
    issuer: Option<String>,
    audience: Option<String>,
    skew: u64,
    groups_claim: String,
    tenant_claim: String,
    admin_group: String,
    cache: Mutex<TokenCache>,
    cache_entries: usize,
    /// Bumped by every key set reload: a verification that began before one is not cached.
    generation: std::sync::atomic::AtomicU64,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    match v? {
        Value::Array(a) => Some(a.iter().filter_map(Value::as_str).map(String::from).collect()),
        Value::String(s) => Some(s.split([' ', ',']).filter(|s| !s.is_empty()).map(String::from).collect()),
        _ => None,
    }
}

/// The JSON kind of a claim's value, for error messages.
fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "an empty string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

impl Verifier {
    pub fn new(cfg: &AuthConfig) -> Result<Verifier, AuthError> {
        let secret = match &cfg.hs256_secret_file {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| AuthError::Config(format!("hs256_secret_file {}: {e}", path.display())))?;
                let secret = bytes.trim_ascii();
                if secret.len() < 32 {
                    return Err(AuthError::Config(format!("hs256_secret_file {}: the secret must be at least 32 bytes", path.display())));
                }
                Some(DecodingKey::from_secret(secret))
            }
            None => None,
        };
        let jwks = match &cfg.jwks_file {
            Some(path) => {
                let (modified, keys) = load_jwks(path)?;
                Some(RwLock::new(Jwks { path: path.clone(), modified, checked: Instant::now(), keys }))
            }
            None => None,
        };
        Ok(Verifier {
            secret,
            jwks,
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            skew: cfg.clock_skew_secs,
            groups_claim: cfg.groups_claim.clone(),
            tenant_claim: cfg.tenant_claim.clone(),
            admin_group: cfg.admin_group.clone(),
            cache: Mutex::new(HashMap::new()),
            cache_entries: cfg.cache_entries,
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Re-reads the JWKS file if it changed (checked at most once a second). A file that no
    /// longer parses keeps the keys in force (and says so in the log).
    fn refresh_jwks(&self) {
        let Some(lock) = &self.jwks else { return };
        if lock.read().checked.elapsed().as_secs() < 1 {
            return;
        }
        let mut j = lock.write();
        if j.checked.elapsed().as_secs() < 1 {
            return;
        }
        j.checked = Instant::now();
        let modified = file_stamp(&j.path);
        if modified == j.modified {
            return;
        }
        match load_jwks(&j.path) {
            Ok((modified, keys)) => {
                tracing::info!(keys = keys.len(), "reloaded jwks_file");
                j.modified = modified;
                j.keys = keys;
                // Tokens of keys that were removed must stop working now.
                self.generation.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                self.cache.lock().clear();
            }
            Err(e) => tracing::warn!("{e}; keeping the keys already loaded"),
        }
    }

    /// Verifies a token and returns its principal.
    pub fn verify(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        let digest = super::api_keys::hash(token);
        let now = now_secs();
        self.refresh_jwks();
        if let Some((p, exp)) = self.cache.lock().get(&digest) {
            if now <= exp.saturating_add(self.skew) {
                return Ok(p.clone());
            }
        }
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let (principal, exp) = self.verify_uncached(token)?;
        let principal = Arc::new(principal);
        let mut cache = self.cache.lock();
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) != generation {
            // The key set changed while this token was checked against the old one.
            return Ok(principal);
        }
        if cache.len() >= self.cache_entries {
            cache.retain(|_, (_, exp)| now <= exp.saturating_add(self.skew));
            if cache.len() >= self.cache_entries {
                cache.clear();
            }
        }
        cache.insert(digest, (principal.clone(), exp));
        Ok(principal)
    }

    fn verify_uncached(&self, token: &str) -> Result<(Principal, u64), AuthError> {
        let invalid = |m: String| AuthError::Invalid(m);
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(format!("not a JWT: {e}")))?;
        let claims = match header.alg {
            Algorithm::HS256 => {
                let key = self.secret.as_ref().ok_or_else(|| invalid("HS256 tokens are not accepted here (no hs256_secret_file)".into()))?;
                self.decode(token, key, Algorithm::HS256)?
            }
            alg @ (Algorithm::RS256 | Algorithm::ES256) => {
                let lock = self.jwks.as_ref().ok_or_else(|| invalid(format!("{alg:?} tokens are not accepted here (no jwks_file)")))?;
                let j = lock.read();
                let candidates: Vec<&DecodingKey> = j
                    .keys
                    .iter()
                    .filter(|(kid, a, _)| *a == alg && (header.kid.is_none() || kid.as_deref() == header.kid.as_deref()))
                    .map(|(_, _, k)| k)
                    .collect();
                let key = match candidates.as_slice() {
                    [k] => *k,
                    [] => return Err(invalid(format!("no {alg:?} key with kid {:?} in the key set", header.kid.unwrap_or_default()))),
                    _ => return Err(invalid("the token has no kid and the key set holds several keys".into())),
                };
                self.decode(token, key, alg)?
            }
            other => return Err(invalid(format!("algorithm {other:?} is not accepted (HS256, RS256, ES256)"))),
        };
        let exp = claims.get("exp").and_then(Value::as_u64).ok_or_else(|| invalid("the token has no exp".into()))?;
        let groups = strings(claims.get(&self.groups_claim));
        // `scope` (a string, or a list) or `scp`; present but unreadable: refused, not ignored.
        let scopes = match claims.get("scope").or_else(|| claims.get("scp")) {
            None => None,
            Some(v) => smart::Scopes::from_claim(&strings(Some(v)).ok_or_else(|| invalid("the scope claim is neither a string nor a list of strings".into()))?),
        };
        let text = |name: &str| claims.get(name).and_then(Value::as_str).map(String::from);
        let subject = text("sub").filter(|s| !s.is_empty()).ok_or_else(|| invalid("the token has no sub (a non-empty string)".into()))?;
        // A tenant claim that is there must name one tenant: a list, number, boolean, object or
        // empty string would otherwise put the caller in the default tenant.
        let tenant = match claims.get(&self.tenant_claim) {
            None => None,
            Some(Value::String(t)) if !t.is_empty() => Some(t.clone()),
            Some(other) => {
                return Err(invalid(format!("the tenant claim {} must be a non-empty string, not {}", self.tenant_claim, json_kind(other))))
            }
        };
        let principal = Principal {
            via: Via::Jwt,
            subject,
            admin: groups.as_ref().is_some_and(|g| g.contains(&self.admin_group)),
            groups,
            scopes,
            patient: text("patient"),
            tenant,
        };
        Ok((principal, exp))
    }

    fn decode(&self, token: &str, key: &DecodingKey, alg: Algorithm) -> Result<Map<String, Value>, AuthError> {
        let mut v = Validation::new(alg);
        v.leeway = self.skew;
        v.validate_nbf = true;
        // A configured issuer or audience must be in the token, not only match when present: a
        // token the same identity provider minted for another service carries neither.
        let mut required = vec!["exp", "sub"];
        if self.issuer.is_some() {
            required.push("iss");
        }
        if self.audience.is_some() {
            required.push("aud");
        }
        v.set_required_spec_claims(&required);
        match &self.issuer {
            Some(iss) => v.set_issuer(&[iss]),
            None => v.iss = None,
        }
        match &self.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        jsonwebtoken::decode::<Map<String, Value>>(token, key, &v)
            .map(|d| d.claims)
            .map_err(|e| AuthError::Invalid(format!("the token does not verify: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn verifier(dir: &std::path::Path, tweak: impl FnOnce(&mut AuthConfig)) -> Verifier {
        let secret = dir.join("secret");
        std::fs::write(&secret, SECRET).unwrap();
        let mut cfg = AuthConfig { hs256_secret_file: Some(secret), ..AuthConfig::default() };
        tweak(&mut cfg);
        Verifier::new(&cfg).unwrap()
    }

    fn mint(claims: Value) -> String {
        token::sign_hs256(SECRET.as_bytes(), &claims).unwrap()
    }

    #[test]
    fn claims_become_a_principal() {
        let dir = tempfile::tempdir().unwrap();
        let v = verifier(dir.path(), |_| {});
        let t = mint(serde_json::json!({"sub": "alice", "exp": now_secs() + 60, "cognito:groups": ["practitioner"], "scope": "patient/*.rs", "patient": "p1", "custom:tenantId": "t1"}));
        let p = v.verify(&t).unwrap();
        assert_eq!(p.subject, "alice");
        assert_eq!(p.groups.as_deref(), Some(&["practitioner".to_string()][..]));
        assert_eq!(p.patient.as_deref(), Some("p1"));
        assert_eq!(p.tenant.as_deref(), Some("t1"));
        assert!(p.scopes.as_ref().unwrap().has_patient_scopes());
        assert!(Arc::ptr_eq(&p, &v.verify(&t).unwrap()), "the second check comes from the cache");
    }

    /// An ES256 key pair: (private PKCS#8 PEM, public JWK with `kid`).
    fn ec_key(kid: &str) -> (String, Value) {
        use base64::Engine;
        let kp = rcgen::KeyPair::generate().unwrap();
        let raw = kp.public_key_raw();
        assert_eq!(raw[0], 4, "an uncompressed P-256 point");
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65]), "kid": kid, "alg": "ES256", "use": "sig"});
        (kp.serialize_pem(), jwk)
    }

    fn es256(pem: &str, kid: &str, claims: &Value) -> String {
        let mut h = jsonwebtoken::Header::new(Algorithm::ES256);
        h.kid = Some(kid.into());
        jsonwebtoken::encode(&h, claims, &jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn jwks_rotation_takes_effect_without_restart() {
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        let (k1, j1) = ec_key("k1");
        let (k2, j2) = ec_key("k2");
        std::fs::write(&jwks, serde_json::json!({"keys": [j1.clone()]}).to_string()).unwrap();
        let v = Verifier::new(&AuthConfig { jwks_file: Some(jwks.clone()), ..AuthConfig::default() }).unwrap();
        let claims = serde_json::json!({"sub": "svc", "exp": now_secs() + 600, "scope": "system/*.rs"});
        let (t1, t2) = (es256(&k1, "k1", &claims), es256(&k2, "k2", &claims));
        assert!(v.verify(&t1).is_ok());
        assert!(v.verify(&t2).is_err(), "k2 is not published yet");
        // Rotate: k2 in, k1 out. The file is re-read at most once a second.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        std::fs::write(&jwks, serde_json::json!({"keys": [j2]}).to_string()).unwrap();
        assert!(v.verify(&t2).is_ok());
        assert!(v.verify(&t1).is_err(), "a token of a withdrawn key stops working, cached or not");
        // A broken file is read (its stamp taken, the key set not replaced) and keeps the keys in
        // force, for a token never seen before too (not only a cached one).
        std::thread::sleep(std::time::Duration::from_millis(1100));
        std::fs::write(&jwks, "{not json").unwrap();
        let generation = v.generation.load(std::sync::atomic::Ordering::SeqCst);
        let fresh = es256(&k2, "k2", &serde_json::json!({"sub": "svc2", "exp": now_secs() + 600, "scope": "system/*.rs"}));
        let before = Instant::now();
        assert!(v.verify(&fresh).is_ok(), "a new token of a key in force, beside a broken file");
        let checked = v.jwks.as_ref().unwrap().read().checked;
        assert!(checked >= before, "the broken file was looked at");
        assert_eq!(v.generation.load(std::sync::atomic::Ordering::SeqCst), generation, "the key set was kept");
        // Once the file is whole again it is read again: k1 back in, k2 out.
        std::thread::sleep(std::time::Duration::from_millis(1100));
        std::fs::write(&jwks, serde_json::json!({"keys": [j1]}).to_string()).unwrap();
        assert!(v.verify(&fresh).is_err(), "the file is still re-read after a broken version");
        // An HS256 token is refused where only a key set is configured (no algorithm confusion).
        let hs = token::sign_hs256(SECRET.as_bytes(), &claims).unwrap();
        assert!(v.verify(&hs).is_err());
    }

    #[test]
    fn bad_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let v = verifier(dir.path(), |c| {
            c.issuer = Some("https://issuer".into());
            c.audience = Some("kiln".into());
            c.clock_skew_secs = 5;
        });
        let good = serde_json::json!({"sub": "a", "iss": "https://issuer", "aud": "kiln", "exp": now_secs() + 60});
        assert!(v.verify(&mint(good.clone())).is_ok());
        let mut expired = good.clone();
        expired["exp"] = (now_secs() - 30).into();
        assert!(v.verify(&mint(expired)).unwrap_err().to_string().contains("xpired"));
        let mut wrong_aud = good.clone();
        wrong_aud["aud"] = "other".into();
        assert!(v.verify(&mint(wrong_aud)).is_err());
        let mut wrong_iss = good.clone();
        wrong_iss["iss"] = "https://evil".into();
        assert!(v.verify(&mint(wrong_iss)).is_err());
        let mut future = good.clone();
        future["nbf"] = (now_secs() + 300).into();
        assert!(v.verify(&mint(future)).is_err());
        let mut no_exp = good.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert!(v.verify(&mint(no_exp)).is_err());
        // A configured issuer / audience is required, not only checked when present.
        for claim in ["iss", "aud", "sub"] {
            let mut without = good.clone();
            without.as_object_mut().unwrap().remove(claim);
            let err = v.verify(&mint(without)).unwrap_err().to_string();
            assert!(err.contains(claim), "a token without {claim} is refused: {err}");
        }
        let mut empty_sub = good.clone();
        empty_sub["sub"] = "".into();
        assert!(v.verify(&mint(empty_sub)).is_err());
        // A tenant claim that is not one non-empty string never falls back to the default tenant.
        for bad in [serde_json::json!(["t2"]), serde_json::json!(2), serde_json::json!(true), serde_json::json!({"id": "t2"}), serde_json::json!("")] {
            let mut t = good.clone();
            t["custom:tenantId"] = bad.clone();
            let err = v.verify(&mint(t)).unwrap_err().to_string();
            assert!(err.contains("custom:tenantId"), "tenant claim {bad} refused: {err}");
        }
        let forged = token::sign_hs256(b"another secret of thirty-two bytes!!", &good).unwrap();
        assert!(v.verify(&forged).is_err());
        // alg: none, with the good claims.
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let none = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&good.to_string()));
        assert!(v.verify(&none).is_err());
        assert!(v.verify("not a token").is_err());
    }
}
