//! Mutual TLS for the node-to-node transport (rustls, ring provider). Every node presents its
//! certificate and trusts only peers whose certificate chains to the cluster CA; client
//! certificates are required. Peers are checked against the host in their `raft_addr`
//! (an IP SAN for IP addresses).

use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned};

use crate::config::TlsConfig;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Pem { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Client and server configurations built once from the PEM files.
pub struct TlsSetup {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

fn pem_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem { path: path.display().to_string(), reason: e.to_string() }
}

fn cfg_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

impl TlsSetup {
    pub fn load(cfg: &TlsConfig) -> Result<TlsSetup, TlsError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
            .map_err(|e| pem_err(&cfg.cert, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| pem_err(&cfg.cert, e))?;
        if certs.is_empty() {
            return Err(pem_err(&cfg.cert, "no certificate in the file"));
        }
        let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| pem_err(&cfg.key, e))?;
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(&cfg.ca).map_err(|e| pem_err(&cfg.ca, e))? {
            roots.add(ca.map_err(|e| pem_err(&cfg.ca, e))?).map_err(|e| pem_err(&cfg.ca, e))?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone()).build().map_err(cfg_err)?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(cfg_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs.clone(), key.clone_key())
            .map_err(cfg_err)?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(cfg_err)?
            .with_root_certificates(roots)
            .with_client_auth_cert(certs, key)
            .map_err(cfg_err)?;
        Ok(TlsSetup { client: Arc::new(client), server: Arc::new(server) })
    }

    /// Client side of a connection to `addr` (`host:port`); the handshake completes here.
    pub fn connect(&self, tcp: TcpStream, addr: &str) -> std::io::Result<StreamOwned<ClientConnection, TcpStream>> {
        let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr).trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(host.to_string()).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let conn = ClientConnection::new(self.client.clone(), name).map_err(std::io::Error::other)?;
        handshake(StreamOwned::new(conn, tcp))
    }

    /// Server side of an accepted connection; the handshake completes here.
    pub fn accept(&self, tcp: TcpStream) -> std::io::Result<StreamOwned<ServerConnection, TcpStream>> {
        let conn = ServerConnection::new(self.server.clone()).map_err(std::io::Error::other)?;
        handshake(StreamOwned::new(conn, tcp))
    }
}

/// Completes a handshake within 10 s (a peer that accepts and then says nothing must not block
/// the connection's thread forever).
fn handshake<C, S>(mut s: StreamOwned<C, TcpStream>) -> std::io::Result<StreamOwned<C, TcpStream>>
where
    C: std::ops::DerefMut + std::ops::Deref<Target = rustls::ConnectionCommon<S>>,
    S: rustls::SideData,
{
    s.sock.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    s.sock.set_read_timeout(None)?;
    Ok(s)
}
