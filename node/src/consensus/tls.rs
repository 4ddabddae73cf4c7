//! Mutual TLS for the node-to-node transport (rustls, ring provider). Every node presents its
//! certificate and trusts only peers whose certificate chains to the cluster CA; client
//! certificates are required. Peers are checked against the host in their `raft_addr`
//! (an IP SAN for IP addresses), and against their node id: a node's certificate carries the DNS
//! name `kiln-node-<id>` ([`node_name`]), so a member cannot speak as another.

use std::net::TcpStream;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection, StreamOwned};

use super::config::TlsConfig;
use crate::pki::{load_certs, load_key, load_roots, provider, TlsError};

/// Client and server configurations built once from the PEM files.
pub struct TlsSetup {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
}

fn cfg_err(e: impl std::fmt::Display) -> TlsError {
    TlsError::Config(e.to_string())
}

impl TlsSetup {
    pub fn load(cfg: &TlsConfig) -> Result<TlsSetup, TlsError> {
        let certs = load_certs(&cfg.cert)?;
        let key = load_key(&cfg.key)?;
        let roots = Arc::new(load_roots(&cfg.ca)?);
        let provider = provider();
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

/// The DNS name a node's certificate carries for its node id.
pub fn node_name(id: u64) -> String {
    format!("kiln-node-{id}")
}

/// The end-entity certificate the peer presented on a finished handshake.
pub fn peer_certificate<S>(conn: &rustls::ConnectionCommon<S>) -> Option<CertificateDer<'static>> {
    conn.peer_certificates().and_then(|c| c.first()).map(|c| c.clone().into_owned())
}

impl TlsSetup {
    /// Whether `cert` (already verified against the CA by the handshake) names node `id`.
    pub fn check_node_id(&self, cert: Option<&CertificateDer<'static>>, id: u64) -> std::io::Result<()> {
        let refuse = |why: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why);
        let cert = cert.ok_or_else(|| refuse("the peer presented no certificate".into()))?;
        let ee = webpki::EndEntityCert::try_from(cert).map_err(|e| refuse(format!("peer certificate: {e}")))?;
        let name = ServerName::try_from(node_name(id)).map_err(|e| refuse(e.to_string()))?;
        ee.verify_is_valid_for_subject_name(&name)
            .map_err(|_| refuse(format!("the peer's certificate is not node {id}'s (it lacks the name {}); regenerate it with kiln cluster certs", node_name(id))))
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

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn certificates_name_their_node_and_keys_stay_private() {
        let dir = tempfile::tempdir().unwrap();
        crate::launcher::write_certs(dir.path(), &[1, 2], &["127.0.0.1".into()]).unwrap();
        let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
        // A node added later: the CA is reused, not replaced.
        crate::launcher::write_certs(dir.path(), &[3], &["127.0.0.1".into()]).unwrap();
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);
        for key in ["ca.key", "node1.key", "node3.key"] {
            let mode = std::fs::metadata(dir.path().join(key)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{key}");
        }
        let cfg = |i: u64| TlsConfig { cert: dir.path().join(format!("node{i}.pem")), key: dir.path().join(format!("node{i}.key")), ca: dir.path().join("ca.pem") };
        let setup = TlsSetup::load(&cfg(1)).unwrap();
        TlsSetup::load(&cfg(3)).unwrap();
        let cert = |i: u64| CertificateDer::from_pem_file(dir.path().join(format!("node{i}.pem"))).unwrap();
        setup.check_node_id(Some(&cert(2)), 2).unwrap();
        setup.check_node_id(Some(&cert(3)), 3).unwrap();
        assert!(setup.check_node_id(Some(&cert(2)), 3).is_err(), "node 2's certificate cannot speak for node 3");
        assert!(setup.check_node_id(None, 2).is_err());
    }

    #[test]
    fn a_peer_with_another_nodes_certificate_is_refused_over_tls() {
        let dir = tempfile::tempdir().unwrap();
        crate::launcher::write_certs(dir.path(), &[1, 2], &["127.0.0.1".into()]).unwrap();
        let cfg = |i: u64| TlsConfig { cert: dir.path().join(format!("node{i}.pem")), key: dir.path().join(format!("node{i}.key")), ca: dir.path().join("ca.pem") };
        // Node 3's certificate comes from a later run that reused the CA: it must chain too.
        crate::launcher::write_certs(dir.path(), &[3], &["127.0.0.1".into()]).unwrap();
        let server = Arc::new(TlsSetup::load(&cfg(1)).unwrap());
        for (i, client) in [(2, TlsSetup::load(&cfg(2)).unwrap()), (3, TlsSetup::load(&cfg(3)).unwrap())] {
            handshake_as(&server, &client, i);
        }
    }

    fn handshake_as(server: &Arc<TlsSetup>, client: &TlsSetup, id: u64) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let s = server.clone();
        let accept = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let conn = s.accept(tcp).unwrap();
            peer_certificate(&conn.conn)
        });
        let conn = client.connect(std::net::TcpStream::connect(addr).unwrap(), &addr.to_string()).unwrap();
        client.check_node_id(peer_certificate(&conn.conn).as_ref(), 1).unwrap();
        let seen = accept.join().unwrap();
        server.check_node_id(seen.as_ref(), id).unwrap();
        assert!(server.check_node_id(seen.as_ref(), id + 10).is_err(), "a Hello claiming another node is refused");
    }
}
