//! TLS on the FHIR API (`[api_tls]`) with a real TLS client (reqwest on rustls) and certificates
//! made here with rcgen: trust, a foreign CA, plain HTTP on the TLS port, client certificates
//! (required and optional), a renewed certificate picked up without a restart, and the
//! `kiln serve --tls-*` flags.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use kiln::fhir::FhirVersion;
use kiln::pki::api::ApiTlsConfig;
use kiln_tests::{host_port, ChildNode, TestNode};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use reqwest::blocking::Client;
use serde_json::json;

/// A test CA.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, as PEM.
struct Leaf {
    cert: String,
    key: String,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A certificate for `localhost` and `127.0.0.1` (an IP SAN), for `usage`.
    fn issue(&self, name: &str, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        Leaf { cert: cert.pem(), key: key.serialize_pem() }
    }

    fn server(&self) -> Leaf {
        self.issue("kiln test server", ExtendedKeyUsagePurpose::ServerAuth)
    }

    fn client(&self) -> Leaf {
        self.issue("kiln test client", ExtendedKeyUsagePurpose::ClientAuth)
    }
}

/// Writes `text` to `dir/name`.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// `[api_tls]` with `leaf` written as `dir/server.pem` / `dir/server.key`.
fn tls_config(dir: &Path, leaf: &Leaf) -> ApiTlsConfig {
    ApiTlsConfig { cert: write(dir, "server.pem", &leaf.cert), key: write(dir, "server.key", &leaf.key), ..ApiTlsConfig::default() }
}

fn tls_node(tls: ApiTlsConfig) -> TestNode {
    TestNode::start_with(FhirVersion::R4, |cfg| cfg.api_tls = Some(tls))
}

/// A client that trusts only `ca` (no built-in roots), presenting `identity` if given.
fn https_client(ca: &Ca, identity: Option<&Leaf>) -> Client {
    let mut b = Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .timeout(Duration::from_secs(30));
    if let Some(leaf) = identity {
        b = b.identity(reqwest::Identity::from_pem(format!("{}{}", leaf.cert, leaf.key).as_bytes()).unwrap());
    }
    b.build().unwrap()
}

/// The error of a request that must fail at the TLS layer: no HTTP response at all.
fn refused(c: &Client, url: &str) -> String {
    match c.get(url).send() {
        Ok(r) => panic!("expected a failed handshake, got HTTP {} from {url}", r.status()),
        Err(e) => {
            let mut chain = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                chain.push_str(&format!(": {s}"));
                source = s.source();
            }
            chain
        }
    }
}

#[test]
fn a_client_trusting_the_ca_creates_and_reads_a_patient_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Kiln API CA");
    let node = tls_node(tls_config(dir.path(), &ca.server()));
    assert!(node.base.starts_with("https://127.0.0.1:"), "base URL {}", node.base);
    let c = https_client(&ca, None);

    let resp = c
        .post(node.url("/Patient"))
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Patient", "name": [{"family": "Okafor"}]}).to_string())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2, "h2 is offered through ALPN");
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&format!("{}/Patient/", node.base)), "Location {location} is an https URL");
    let created = kiln_tests::json(resp);
    let id = created["id"].as_str().unwrap();

    let read = c.get(node.url(&format!("/Patient/{id}"))).send().unwrap();
    assert_eq!(read.status(), 200);
    assert_eq!(kiln_tests::json(read)["name"][0]["family"], "Okafor");

    // The DNS name in the certificate works as well as the IP address.
    let port = node.base.rsplit(':').next().unwrap();
    let by_name = c.get(format!("https://localhost:{port}/Patient/{id}")).send().unwrap();
    assert_eq!(by_name.status(), 200);
    // HTTP/1.1 clients are served too.
    let h1 = Client::builder()
        .http1_only()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let resp = h1.get(node.url("/metadata")).send().unwrap();
    assert_eq!((resp.status().as_u16(), resp.version()), (200, reqwest::Version::HTTP_11));
}

#[test]
fn a_client_trusting_another_ca_fails_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Kiln API CA");
    let node = tls_node(tls_config(dir.path(), &ca.server()));
    let err = refused(&https_client(&Ca::new("Someone else's CA"), None), &node.url("/metadata"));
    assert!(err.to_lowercase().contains("certificate"), "the error is the server certificate: {err}");
    // The node still serves clients that trust it.
    assert_eq!(https_client(&ca, None).get(node.url("/metadata")).send().unwrap().status(), 200);
}

#[test]
fn plain_http_to_the_tls_port_gets_no_fhir_answer() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Kiln API CA");
    let node = tls_node(tls_config(dir.path(), &ca.server()));
    let plain = format!("http://{}/metadata", host_port(&node.base));
    match kiln_tests::client().get(&plain).send() {
        Err(_) => {}
        Ok(r) => {
            let status = r.status();
            let body = r.text().unwrap_or_default();
            assert!(status != 200 && !body.contains("CapabilityStatement"), "plain HTTP got a FHIR answer: {status} {body}");
        }
    }
    assert_eq!(https_client(&ca, None).get(node.url("/metadata")).send().unwrap().status(), 200);
}

#[test]
fn required_client_certificates_are_checked_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Ca::new("Kiln API CA");
    let client_ca = Ca::new("Kiln client CA");
    let mut tls = tls_config(dir.path(), &server_ca.server());
    tls.client_ca = Some(write(dir.path(), "clients.pem", &client_ca.pem()));
    tls.require_client_cert = true;
    let node = tls_node(tls);
    let url = node.url("/metadata");

    refused(&https_client(&server_ca, None), &url);
    let ok = https_client(&server_ca, Some(&client_ca.client())).get(&url).send().unwrap();
    assert_eq!(ok.status(), 200, "a client certificate signed by client_ca is accepted");
    refused(&https_client(&server_ca, Some(&Ca::new("Rogue client CA").client())), &url);
    // A certificate of the server's own CA is no client certificate here either.
    refused(&https_client(&server_ca, Some(&server_ca.client())), &url);
    let again = https_client(&server_ca, Some(&client_ca.client())).get(&url).send().unwrap();
    assert_eq!(again.status(), 200, "the refusals closed those connections only");
}

#[test]
fn optional_client_certificates_are_verified_when_presented() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Kiln API CA");
    let mut tls = tls_config(dir.path(), &ca.server());
    tls.client_ca = Some(write(dir.path(), "clients.pem", &ca.pem()));
    let node = tls_node(tls);
    let url = node.url("/metadata");
    assert_eq!(https_client(&ca, None).get(&url).send().unwrap().status(), 200, "no certificate: allowed");
    assert_eq!(https_client(&ca, Some(&ca.client())).get(&url).send().unwrap().status(), 200);
    refused(&https_client(&ca, Some(&Ca::new("Rogue client CA").client())), &url);
    assert_eq!(https_client(&ca, None).get(&url).send().unwrap().status(), 200);
}

#[test]
fn a_renewed_certificate_is_served_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (old_ca, new_ca) = (Ca::new("Kiln API CA 2024"), Ca::new("Kiln API CA 2025"));
    let tls = tls_config(dir.path(), &old_ca.server());
    let node = tls_node(tls.clone());
    let url = node.url("/metadata");
    assert_eq!(https_client(&old_ca, None).get(&url).send().unwrap().status(), 200);
    refused(&https_client(&new_ca, None), &url);

    // Renew in place: key first, then the certificate; mtimes moved on so that no file system's
    // timestamp granularity can hide the change.
    let renew = |leaf: &Leaf| {
        for (path, text) in [(&tls.key, &leaf.key), (&tls.cert, &leaf.cert)] {
            let before = std::fs::metadata(path).unwrap().modified().unwrap();
            std::fs::write(path, text).unwrap();
            std::fs::File::options().write(true).open(path).unwrap().set_modified(before.max(SystemTime::now()) + Duration::from_secs(1)).unwrap();
        }
    };
    renew(&new_ca.server());
    served_by(&new_ca, &url, "the renewed certificate");
    refused(&https_client(&old_ca, None), &url);

    // A broken renewal keeps the certificate being served, through several reload intervals
    // (each handshake past an interval looks at the files again)...
    std::fs::write(&tls.cert, "not a certificate").unwrap();
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(3500) {
        assert_eq!(https_client(&new_ca, None).get(&url).send().unwrap().status(), 200, "invalid PEM keeps the previous certificate");
        std::thread::sleep(Duration::from_millis(250));
    }
    // ...and the files are still read after it: the next good renewal is served.
    let third = Ca::new("Kiln API CA 2026");
    renew(&third.server());
    served_by(&third, &url, "a renewal after a broken one");
    refused(&https_client(&new_ca, None), &url);
}

/// Waits (up to 30 s) until the node's certificate is one `ca` signed.
fn served_by(ca: &Ca, url: &str, what: &str) {
    let start = Instant::now();
    loop {
        if let Ok(r) = https_client(ca, None).get(url).send() {
            assert_eq!(r.status(), 200, "{what}");
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{what} was never served");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_node_with_unreadable_tls_files_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = kiln::Config {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".into(),
        api_tls: Some(ApiTlsConfig { cert: dir.path().join("missing.pem"), key: dir.path().join("missing.key"), ..ApiTlsConfig::default() }),
        ..kiln::Config::default()
    };
    let err = kiln::start_node(cfg).err().expect("no node without its certificate").to_string();
    assert!(err.contains("missing.pem"), "{err}");
}

#[test]
fn kiln_serve_flags_turn_on_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Kiln API CA");
    let client_ca = Ca::new("Kiln client CA");
    let leaf = ca.server();
    let (cert, key) = (write(dir.path(), "server.pem", &leaf.cert), write(dir.path(), "server.key", &leaf.key));
    let clients = write(dir.path(), "clients.pem", &client_ca.pem());
    let args = [
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        key.as_os_str(),
        "--tls-client-ca".as_ref(),
        clients.as_os_str(),
    ];
    let node = ChildNode::start_with_args(&dir.path().join("data"), "127.0.0.1:0", args);
    assert!(node.base.starts_with("https://127.0.0.1:"), "first stdout line names an https URL: {}", node.base);
    let url = format!("{}/metadata", node.base);
    assert_eq!(https_client(&ca, None).get(&url).send().unwrap().status(), 200, "client certificates are optional by default");
    assert_eq!(https_client(&ca, Some(&client_ca.client())).get(&url).send().unwrap().status(), 200);
    refused(&https_client(&ca, Some(&ca.client())), &url);
}

/// A request body that sends nothing until its gate opens, then a Patient.
struct Gated(std::sync::mpsc::Receiver<()>, Option<Vec<u8>>);

impl std::io::Read for Gated {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let _ = self.0.recv();
        match self.1.take() {
            Some(body) => {
                buf[..body.len()].copy_from_slice(&body);
                Ok(body.len())
            }
            None => Ok(0),
        }
    }
}

#[test]
fn one_http2_connection_holds_at_most_max_requests_per_connection() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("Kiln API CA");
    let tls = tls_config(dir.path(), &ca.server());
    let node = TestNode::start_with(FhirVersion::R4, |cfg| {
        cfg.api_tls = Some(tls);
        cfg.limits.max_requests_per_connection = 3;
    });
    // One client: its requests share one HTTP/2 connection.
    let c = https_client(&ca, None);
    assert_eq!(c.get(node.url("/metadata")).send().unwrap().version(), reqwest::Version::HTTP_2);
    // Three creates whose bodies do not come yet: three streams in progress.
    let (gates, held): (Vec<_>, Vec<_>) = (0..3)
        .map(|_| {
            let (open, gate) = std::sync::mpsc::channel();
            let (c, url) = (c.clone(), node.url("/Patient"));
            let body = json!({"resourceType": "Patient", "name": [{"family": "Held"}]}).to_string().into_bytes();
            let t = std::thread::spawn(move || {
                c.post(url).header("content-type", "application/fhir+json").body(reqwest::blocking::Body::new(Gated(gate, Some(body)))).send().unwrap().status().as_u16()
            });
            (open, t)
        })
        .unzip();
    let other = https_client(&ca, None);
    let in_flight = || -> u64 {
        let text = other.get(node.url("/metrics")).send().unwrap().text().unwrap();
        text.lines().find_map(|l| l.strip_prefix("kiln_http_requests_in_flight ")).unwrap().trim().parse().unwrap()
    };
    let start = Instant::now();
    while in_flight() < 4 {
        assert!(start.elapsed() < Duration::from_secs(20), "the three held creates did not reach the node");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A fourth on the same connection: 429, while another connection is served.
    let r = c.get(node.url("/metadata")).send().unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "1");
    assert!(r.text().unwrap().contains("limits.max_requests_per_connection"));
    assert_eq!(other.get(node.url("/metadata")).send().unwrap().status(), 200);
    // The bodies come: the creates succeed and the connection takes requests again.
    drop(gates);
    assert_eq!(held.into_iter().map(|t| t.join().unwrap()).collect::<Vec<_>>(), [201, 201, 201]);
    assert_eq!(c.get(node.url("/metadata")).send().unwrap().status(), 200);
}
