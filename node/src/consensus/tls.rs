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

    /// A node-1 transport with TLS from `dir`, and what it delivers.
    fn listener(dir: &std::path::Path) -> (Arc<crate::consensus::transport::Transport>, crossbeam_channel::Receiver<crate::consensus::transport::Inbound>) {
        use crate::consensus::transport::{Hooks, Transport};
        let (tx, rx) = crossbeam_channel::unbounded();
        let cluster = crate::consensus::config::ClusterConfig { raft_listen: Some("127.0.0.1:0".into()), tls: Some(in_dir(dir, 1)), ..Default::default() };
        let hooks = Hooks { forward: Arc::new(Ok), snapshot: Arc::new(|_, _, _, _, _| Ok(())) };
        (Transport::start(1, &cluster, Arc::new(move |i| drop(tx.send(i))), hooks).unwrap(), rx)
    }

    fn in_dir(dir: &std::path::Path, i: u64) -> TlsConfig {
        TlsConfig { cert: dir.join(format!("node{i}.pem")), key: dir.join(format!("node{i}.key")), ca: dir.join("ca.pem") }
    }

    /// Connects to `addr` with `setup`'s certificate and sends a Hello from `from`, then a frame.
    fn speak(setup: &TlsSetup, addr: std::net::SocketAddr, from: u64, req_id: u64) -> std::io::Result<StreamOwned<ClientConnection, TcpStream>> {
        use crate::consensus::transport::{write_frame, Frame};
        use std::io::Write as _;
        let mut s = setup.connect(TcpStream::connect(addr)?, &addr.to_string())?;
        // (The handshake leaves the socket without a timeout.)
        s.sock.set_read_timeout(Some(std::time::Duration::from_secs(20)))?;
        write_frame(&mut s, &Frame::Hello { from })?;
        write_frame(&mut s, &Frame::ForwardAck { req_id, index: 1, term: 1 })?;
        s.flush()?;
        Ok(s)
    }

    /// Whether the listener hung up on `s` (it never answers a peer's frames on that connection).
    fn hung_up(s: std::io::Result<StreamOwned<ClientConnection, TcpStream>>) -> bool {
        use std::io::Read as _;
        match s {
            Err(_) => true,
            Ok(mut s) => match s.read(&mut [0u8; 16]) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            },
        }
    }

    #[test]
    fn the_raft_listener_refuses_peers_by_their_certificate() {
        use crate::consensus::transport::{Frame, Inbound};
        let dir = tempfile::tempdir().unwrap();
        crate::launcher::write_certs(dir.path(), &[1, 2], &["127.0.0.1".into()]).unwrap();
        let rogue = tempfile::tempdir().unwrap();
        crate::launcher::write_certs(rogue.path(), &[2], &["127.0.0.1".into()]).unwrap();
        let (a, rx) = listener(dir.path());
        let node2 = TlsSetup::load(&in_dir(dir.path(), 2)).unwrap();
        // Node 2's certificate with a Hello that claims node 3: the listener hangs up, and
        // delivers nothing (it checks before it reads a frame past the Hello).
        assert!(hung_up(speak(&node2, a.local_addr, 3, 1)), "a Hello claiming another node than the certificate names");
        // A certificate of another CA (same node name), from a client that trusts the cluster's
        // CA: the listener refuses it.
        let foreign = TlsConfig { cert: rogue.path().join("node2.pem"), key: rogue.path().join("node2.key"), ca: dir.path().join("ca.pem") };
        assert!(hung_up(speak(&TlsSetup::load(&foreign).unwrap(), a.local_addr, 2, 2)), "a certificate of another CA");
        assert!(rx.try_recv().is_err(), "nothing delivered from a refused peer");
        // The same certificate, honest about its node: delivered.
        let _honest = speak(&node2, a.local_addr, 2, 3).unwrap();
        match rx.recv_timeout(std::time::Duration::from_secs(20)).unwrap() {
            Inbound::Frame { from: 2, frame: Frame::ForwardAck { req_id: 3, .. } } => {}
            other => panic!("expected node 2's frame, got {other:?}"),
        }
        a.stop();
    }

    #[test]
    fn a_certificate_from_a_later_run_that_reused_the_ca_chains() {
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
