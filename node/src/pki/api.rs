//! TLS on the FHIR API (`listen`): the `[api_tls]` config section ([`ApiTlsConfig`]), its checks,
//! the rustls server configuration actix-web binds with ([`server_config`]), and the certificate
//! resolver that re-reads `cert` / `key` when they change on disk ([`ReloadingCert`]), so that a
//! renewed certificate is served without a restart. Client certificates are verified against
//! `client_ca` when it is set (optional, or required with `require_client_cert`); the client CA is
//! read once at start (changing it needs a restart). PEM loading and the crypto provider (ring)
//! are shared with the node-to-node mTLS of `crate::consensus::tls` ([`super`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use serde::{Deserialize, Serialize};

use super::{load_certs, load_key, load_roots, provider, TlsError};

/// How often at most the resolver looks at the files' modification times (on a handshake).
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Why TLS on the FHIR API could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ApiTlsError {
    #[error("api_tls.{0} must be set (a PEM file)")]
    Missing(&'static str),
    #[error("api_tls.require_client_cert = true needs api_tls.client_ca (the CA that client certificates must chain to)")]
    RequireWithoutCa,
    #[error("api_tls: {0}")]
    Pem(#[from] TlsError),
    #[error("api_tls: the certificate {cert} and the key {key} do not make a usable pair: {reason}")]
    Pair { cert: String, key: String, reason: String },
    #[error("api_tls.client_ca {path}: {reason}")]
    ClientCa { path: String, reason: String },
    #[error("api_tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// `[api_tls]`: TLS on the FHIR API. Without this section the API is plain HTTP.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiTlsConfig {
    /// PEM certificate chain the server presents (end-entity first). Re-read when it changes.
    pub cert: PathBuf,
    /// PEM private key of `cert`. Re-read when it changes.
    pub key: PathBuf,
    /// PEM CA file: when set, client certificates are verified against it (read at start only).
    pub client_ca: Option<PathBuf>,
    /// Refuse, at the handshake, a client without a certificate that chains to `client_ca`.
    pub require_client_cert: bool,
}

impl ApiTlsConfig {
    /// Checks what serde cannot: both files named; `require_client_cert` has a CA to check against.
    pub fn validate(&self) -> Result<(), ApiTlsError> {
        if self.cert.as_os_str().is_empty() {
            return Err(ApiTlsError::Missing("cert"));
        }
        if self.key.as_os_str().is_empty() {
            return Err(ApiTlsError::Missing("key"));
        }
        if self.require_client_cert && self.client_ca.is_none() {
            return Err(ApiTlsError::RequireWithoutCa);
        }
        Ok(())
    }

    /// Applies `kiln serve --tls-cert / --tls-key / --tls-client-ca` to `section`: each given flag
    /// sets its key, creating the section when the config file has none.
    pub fn apply_flags(section: &mut Option<ApiTlsConfig>, cert: Option<PathBuf>, key: Option<PathBuf>, client_ca: Option<PathBuf>) {
        if cert.is_none() && key.is_none() && client_ca.is_none() {
            return;
        }
        let tls = section.get_or_insert_with(ApiTlsConfig::default);
        if let Some(c) = cert {
            tls.cert = c;
        }
        if let Some(k) = key {
            tls.key = k;
        }
        if let Some(ca) = client_ca {
            tls.client_ca = Some(ca);
        }
    }
}

/// The rustls configuration of the FHIR API: TLS 1.2 / 1.3 (ring), the reloading certificate,
/// client certificates per `client_ca` / `require_client_cert`. actix-web adds the ALPN protocols
/// (`h2`, `http/1.1`).
pub fn server_config(cfg: &ApiTlsConfig) -> Result<ServerConfig, ApiTlsError> {
    cfg.validate()?;
    let provider = provider();
    let certs = Arc::new(ReloadingCert::new(&cfg.cert, &cfg.key, provider.clone(), RELOAD_INTERVAL)?);
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let builder = match &cfg.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let ca_err = |reason: String| ApiTlsError::ClientCa { path: ca.display().to_string(), reason };
            let roots = load_roots(ca)?;
            if roots.is_empty() {
                return Err(ca_err("no certificate in the file".into()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if cfg.require_client_cert { verifier } else { verifier.allow_unauthenticated() };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| ca_err(e.to_string()))?)
        }
    };
    Ok(builder.with_cert_resolver(certs))
}

/// What a file looked like when last read: modification time and length (`None`: unreadable).
type Stamp = Option<(SystemTime, u64)>;

/// The certificate chain and its key, checked to belong together.
fn load_pair(cert: &Path, key: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, ApiTlsError> {
    let chain = load_certs(cert)?;
    let der = load_key(key)?;
    CertifiedKey::from_der(chain, der, provider).map_err(|e| ApiTlsError::Pair { cert: cert.display().to_string(), key: key.display().to_string(), reason: e.to_string() })
}

fn stamp(path: &Path) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// A server certificate read from `cert` / `key` and read again, on a handshake at most once per
/// interval, when either file's modification time (or length) changed. New files that do not load
/// or do not match leave the previous certificate in place (with a warning); they are tried again
/// when they change again.
#[derive(Debug)]
pub struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    provider: Arc<CryptoProvider>,
    interval: Duration,
    state: Mutex<Served>,
}

#[derive(Debug)]
struct Served {
    current: Arc<CertifiedKey>,
    /// The files' stamps at the last load attempt (successful or not).
    seen: (Stamp, Stamp),
    checked: Instant,
}

impl ReloadingCert {
    /// Loads the pair now (an error here stops the node from starting).
    pub fn new(cert: &Path, key: &Path, provider: Arc<CryptoProvider>, interval: Duration) -> Result<ReloadingCert, ApiTlsError> {
        // Stamps before reading: a change while reading is seen at the next check.
        let seen = (stamp(cert), stamp(key));
        let current = Arc::new(load_pair(cert, key, &provider)?);
        let state = Mutex::new(Served { current, seen, checked: Instant::now() });
        Ok(ReloadingCert { cert: cert.to_path_buf(), key: key.to_path_buf(), provider, interval, state })
    }

    /// The certificate to present, after re-reading the files if the interval has passed and
    /// they changed.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let now = Instant::now();
        let seen = {
            let mut s = self.state.lock();
            if now.duration_since(s.checked) < self.interval {
                return s.current.clone();
            }
            // This handshake does the check; the others go on with the current certificate.
            s.checked = now;
            s.seen
        };
        self.reload_if_changed(seen);
        self.state.lock().current.clone()
    }

    /// Re-reads the pair when the files' stamps differ from `seen` (file I/O outside the lock).
    fn reload_if_changed(&self, seen: (Stamp, Stamp)) {
        let now = (stamp(&self.cert), stamp(&self.key));
        if now == seen {
            return;
        }
        let loaded = load_pair(&self.cert, &self.key, &self.provider);
        let mut s = self.state.lock();
        s.seen = now;
        match loaded {
            Ok(k) => {
                s.current = Arc::new(k);
                tracing::info!(cert = %self.cert.display(), key = %self.key.display(), "api_tls: reloaded the certificate");
            }
            Err(e) => tracing::warn!(error = %e, "api_tls: the changed certificate files do not load; still serving the previous certificate"),
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError};

    /// A self-signed pair for `localhost`, written as `name.pem` / `name.key` in `dir`.
    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf, Vec<u8>) {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (cert, key) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.key")));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        (cert, key, ck.cert.der().to_vec())
    }

    /// Replaces `to`'s content with `from`'s and moves its modification time `secs` ahead (file
    /// systems with coarse timestamps would otherwise see no change between quick writes).
    fn overwrite(from: &Path, to: &Path, secs: u64) {
        std::fs::write(to, std::fs::read(from).unwrap()).unwrap();
        let f = std::fs::File::options().write(true).open(to).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(secs)).unwrap();
    }

    fn served(r: &ReloadingCert) -> Vec<u8> {
        r.current().cert[0].to_vec()
    }

    #[test]
    fn validation_needs_both_files_and_a_ca_for_required_client_certs() {
        assert!(matches!(ApiTlsConfig::default().validate(), Err(ApiTlsError::Missing("cert"))));
        let mut c = ApiTlsConfig { cert: "c.pem".into(), ..ApiTlsConfig::default() };
        assert!(matches!(c.validate(), Err(ApiTlsError::Missing("key"))));
        c.key = "k.pem".into();
        c.validate().unwrap();
        c.require_client_cert = true;
        assert!(matches!(c.validate(), Err(ApiTlsError::RequireWithoutCa)));
        c.client_ca = Some("ca.pem".into());
        c.validate().unwrap();
    }

    #[test]
    fn the_api_tls_section_parses_and_is_checked_with_the_config() {
        let text = "listen = \"127.0.0.1:8443\"\n[api_tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nclient_ca = \"ca.pem\"\n";
        let mut c: Config = toml::from_str(text).unwrap();
        let tls = c.api_tls.clone().unwrap();
        assert_eq!((tls.cert, tls.client_ca, tls.require_client_cert), ("c.pem".into(), Some("ca.pem".into()), false));
        c.validate().unwrap();
        // The harness writes configs with toml::to_string: the section must survive the trip.
        let back: Config = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.api_tls, c.api_tls);
        c.api_tls = Some(ApiTlsConfig { require_client_cert: true, client_ca: None, ..c.api_tls.unwrap() });
        let err = c.validate().unwrap_err();
        assert!(matches!(&err, ConfigError::Invalid(m) if m.contains("client_ca")), "{err}");
        assert!(toml::from_str::<Config>("[api_tls]\ncert = \"c\"\nkey = \"k\"\nca = \"x\"\n").is_err(), "unknown keys are refused");
        assert!(toml::from_str::<Config>("[api_tls]\nkey = \"k\"\n").unwrap().validate().is_err(), "cert is required");
        assert!(Config::default().api_tls.is_none(), "plain HTTP by default");
    }

    #[test]
    fn flags_set_or_override_the_section() {
        let mut none = None;
        ApiTlsConfig::apply_flags(&mut none, None, None, None);
        assert!(none.is_none(), "no flag: no TLS");
        ApiTlsConfig::apply_flags(&mut none, Some("c".into()), Some("k".into()), None);
        assert_eq!(none, Some(ApiTlsConfig { cert: "c".into(), key: "k".into(), ..ApiTlsConfig::default() }));
        let mut from_file = Some(ApiTlsConfig { cert: "file.pem".into(), key: "file.key".into(), client_ca: None, require_client_cert: false });
        ApiTlsConfig::apply_flags(&mut from_file, Some("flag.pem".into()), None, Some("ca.pem".into()));
        let t = from_file.unwrap();
        assert_eq!((t.cert, t.key, t.client_ca), ("flag.pem".into(), "file.key".into(), Some("ca.pem".into())));
    }

    #[test]
    fn server_config_loads_the_files_or_says_which_one_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, _) = write_pair(dir.path(), "a");
        let (other_cert, _, _) = write_pair(dir.path(), "b");
        let mut c = ApiTlsConfig { cert: cert.clone(), key: key.clone(), ..ApiTlsConfig::default() };
        server_config(&c).unwrap();
        c.client_ca = Some(other_cert.clone());
        server_config(&c).unwrap();
        c.require_client_cert = true;
        server_config(&c).unwrap();
        c.client_ca = Some(dir.path().join("missing.pem"));
        assert!(server_config(&c).unwrap_err().to_string().contains("missing.pem"));
        std::fs::write(dir.path().join("empty.pem"), "").unwrap();
        c.client_ca = Some(dir.path().join("empty.pem"));
        assert!(matches!(server_config(&c), Err(ApiTlsError::ClientCa { .. })));
        let c = ApiTlsConfig { cert: other_cert, key, ..ApiTlsConfig::default() };
        assert!(matches!(server_config(&c), Err(ApiTlsError::Pair { .. })), "a key that is not the certificate's is refused at start");
        let c = ApiTlsConfig { cert: dir.path().join("nope.pem"), key: dir.path().join("a.key"), ..ApiTlsConfig::default() };
        assert!(server_config(&c).unwrap_err().to_string().contains("nope.pem"));
    }

    #[test]
    fn changed_files_are_reloaded_and_bad_ones_keep_the_old_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, first) = write_pair(dir.path(), "live");
        let (next_cert, next_key, next) = write_pair(dir.path(), "next");
        let r = ReloadingCert::new(&cert, &key, provider(), Duration::ZERO).unwrap();
        assert_eq!(served(&r), first);

        std::fs::write(&cert, "-----BEGIN GARBAGE-----\nnot a certificate\n").unwrap();
        assert_eq!(served(&r), first, "invalid PEM keeps the old certificate");
        std::fs::write(&cert, "").unwrap();
        assert_eq!(served(&r), first, "an empty file too");
        std::fs::remove_file(&cert).unwrap();
        assert_eq!(served(&r), first, "a missing file too");

        overwrite(&next_cert, &cert, 10);
        assert_eq!(served(&r), first, "the new certificate with the old key is no pair: kept");
        overwrite(&next_key, &key, 20);
        assert_eq!(served(&r), next, "once both files are new, the new certificate is served");
        assert_eq!(served(&r), next);
    }

    #[test]
    fn the_files_are_looked_at_once_per_interval_at_most() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key, first) = write_pair(dir.path(), "live");
        let (next_cert, next_key, next) = write_pair(dir.path(), "next");
        let start = std::time::Instant::now();
        let r = ReloadingCert::new(&cert, &key, provider(), Duration::from_millis(300)).unwrap();
        overwrite(&next_cert, &cert, 10);
        overwrite(&next_key, &key, 10);
        assert_eq!(served(&r), first, "within the interval the files are not read");
        // Asked again and again, the new pair comes once the interval has passed, not before.
        while served(&r) != next {
            assert!(start.elapsed() < Duration::from_secs(30), "the new pair was never served");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(start.elapsed() >= Duration::from_millis(300), "served after {:?}, within the interval", start.elapsed());
    }
}
