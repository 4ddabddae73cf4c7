//! `kiln cluster ...`: the local cluster launcher (`up`: N `kiln serve` processes on one machine),
//! membership commands that talk to a running cluster's admin endpoints (`add-node`,
//! `remove-node`, `status`), and `certs` (a CA and per-node certificates for mutual TLS).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::config::{ClusterConfig, Config, PeerConfig, TlsConfig};
use crate::fhir::FhirVersion;

/// Errors of the cluster commands.
#[derive(Debug, thiserror::Error)]
pub enum LauncherError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("cannot write config: {0}")]
    Toml(#[from] toml::ser::Error),
    #[error("HTTP request to {url} failed: {reason}")]
    Http { url: String, reason: String },
    #[error("certificate generation: {0}")]
    Certs(String),
    #[error("{0}")]
    Cluster(String),
}

/// The layout of a local cluster: node i listens for HTTP on `base_port + i - 1`, for Raft on
/// `raft_base_port + i - 1` and for the operator API on `admin_base_port + i - 1` (loopback),
/// data in `data_dir/node<i>`.
#[derive(Debug, Clone)]
pub struct LocalCluster {
    pub nodes: u64,
    pub data_dir: PathBuf,
    pub base_port: u16,
    pub raft_base_port: u16,
    pub admin_base_port: u16,
    pub fhir_version: FhirVersion,
    pub tls: bool,
}

impl LocalCluster {
    /// One config per node, all listing the same peers.
    pub fn configs(&self) -> Vec<Config> {
        let peers: Vec<PeerConfig> = (1..=self.nodes)
            .map(|i| PeerConfig {
                id: i,
                raft_addr: format!("127.0.0.1:{}", self.raft_base_port as u64 + i - 1),
                http_url: format!("http://127.0.0.1:{}", self.base_port as u64 + i - 1),
                admin_url: format!("http://127.0.0.1:{}", self.admin_base_port as u64 + i - 1),
            })
            .collect();
        let certs = self.data_dir.join("certs");
        (1..=self.nodes)
            .map(|i| Config {
                node_id: i,
                data_dir: self.data_dir.join(format!("node{i}")),
                listen: format!("127.0.0.1:{}", self.base_port as u64 + i - 1),
                admin_listen: Some(format!("127.0.0.1:{}", self.admin_base_port as u64 + i - 1)),
                fhir_version: self.fhir_version,
                cluster: ClusterConfig {
                    raft_listen: Some(peers[(i - 1) as usize].raft_addr.clone()),
                    peers: peers.clone(),
                    tls: self.tls.then(|| TlsConfig {
                        cert: certs.join(format!("node{i}.pem")),
                        key: certs.join(format!("node{i}.key")),
                        ca: certs.join("ca.pem"),
                    }),
                    ..ClusterConfig::default()
                },
                ..Config::default()
            })
            .collect()
    }

    /// Writes `data_dir/node<i>.toml` (and certificates with `tls`); returns the config paths.
    pub fn write(&self) -> Result<Vec<PathBuf>, LauncherError> {
        std::fs::create_dir_all(&self.data_dir)?;
        if self.tls {
            write_certs(&self.data_dir.join("certs"), &(1..=self.nodes).collect::<Vec<_>>(), &["127.0.0.1".into(), "localhost".into()])?;
        }
        let mut paths = Vec::new();
        for cfg in self.configs() {
            let path = self.data_dir.join(format!("node{}.toml", cfg.node_id));
            let text = format!("# Written by `kiln cluster up`; node {} of {}.\n{}", cfg.node_id, self.nodes, toml::to_string(&cfg)?);
            std::fs::write(&path, text)?;
            paths.push(path);
        }
        Ok(paths)
    }
}

/// Writes `ca.pem`, `node<i>.pem`, `node<i>.key` (i in `nodes`) into `dir`. Node certificates
/// carry `hosts` as subject alternative names (IP addresses become IP SANs) plus the node's own
/// name `kiln-node-<i>` (peers check it against the id a node claims), and are valid for both
/// server and client authentication. The CA's key is kept as `ca.key` and reused when present, so
/// a node added later gets a certificate from the same CA. Private keys are written 0600.
pub fn write_certs(dir: &Path, nodes: &[u64], hosts: &[String]) -> Result<(), LauncherError> {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
    let e = |e: rcgen::Error| LauncherError::Certs(e.to_string());
    std::fs::create_dir_all(dir)?;
    let ca_key_path = dir.join("ca.key");
    let existing = ca_key_path.exists();
    let ca_key = if existing {
        KeyPair::from_pem(&std::fs::read_to_string(&ca_key_path)?).map_err(e)?
    } else {
        KeyPair::generate().map_err(e)?
    };
    // The issuer is named by its subject and verified by its key: re-creating the CA's
    // certificate from the same name and key signs certificates that chain to the ca.pem on disk.
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "Kiln cluster CA");
    let ca = ca_params.self_signed(&ca_key).map_err(e)?;
    if !existing {
        write_private(&ca_key_path, &ca_key.serialize_pem())?;
        std::fs::write(dir.join("ca.pem"), ca.pem())?;
    }
    for &i in nodes {
        let key = KeyPair::generate().map_err(e)?;
        let mut names = hosts.to_vec();
        names.push(crate::consensus::tls::node_name(i));
        let mut params = CertificateParams::new(names).map_err(e)?;
        params.distinguished_name.push(rcgen::DnType::CommonName, format!("kiln node {i}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &ca, &ca_key).map_err(e)?;
        std::fs::write(dir.join(format!("node{i}.pem")), cert.pem())?;
        write_private(&dir.join(format!("node{i}.key")), &key.serialize_pem())?;
    }
    Ok(())
}

/// Writes a secret readable by its owner only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    use std::os::unix::fs::PermissionsExt as _;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    // An existing file keeps its mode on open: set it.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(text.as_bytes())
}

struct Running {
    id: u64,
    child: Child,
    url: String,
}

fn spawn_node(exe: &Path, id: u64, config: &Path) -> Result<Running, LauncherError> {
    let mut child = Command::new(exe)
        .args(["serve", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[node{id}] {line}");
        }
    });
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().transpose()?.unwrap_or_default();
    let Some(url) = first.strip_prefix("Kiln listening on ") else {
        let _ = child.kill();
        return Err(LauncherError::Cluster(format!("node {id} did not start (first output line: {first:?}; see its log above)")));
    };
    let url = url.trim().to_string();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            println!("[node{id}] {line}");
        }
    });
    Ok(Running { id, child, url })
}

fn http() -> reqwest::blocking::Client {
    crate::dataio::client::Conn::default().client(Some(Duration::from_secs(30))).expect("HTTP client")
}

/// The operator API's token for the membership commands (`--admin-token-file`), if any.
pub type AdminAuth<'a> = Option<&'a str>;

fn get_json(url: &str, token: AdminAuth) -> Result<Value, LauncherError> {
    send_json(reqwest::Method::GET, url, None, token)
}

fn send_json(method: reqwest::Method, url: &str, body: Option<Value>, token: AdminAuth) -> Result<Value, LauncherError> {
    let err = |e: reqwest::Error| LauncherError::Http { url: url.to_string(), reason: e.to_string() };
    let mut req = http().request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().map_err(err)?;
    let status = resp.status();
    let v: Value = resp.json().map_err(err)?;
    if !status.is_success() {
        let diag = v.pointer("/issue/0/diagnostics").and_then(Value::as_str).unwrap_or("").to_string();
        return Err(LauncherError::Http { url: url.to_string(), reason: format!("{status}: {diag}") });
    }
    Ok(v)
}

/// Waits for a leader, seen from `url` (a FHIR base, or an operator API with its `token`);
/// returns the status document. A refused credential ends the wait at once.
pub fn wait_for_leader(url: &str, timeout: Duration, token: AdminAuth) -> Result<Value, LauncherError> {
    let start = Instant::now();
    loop {
        match get_json(&format!("{url}/_cluster/status"), token) {
            Ok(s) if s["leader_id"].as_u64().unwrap_or(0) != 0 && !s["leader_url"].as_str().unwrap_or("").is_empty() => return Ok(s),
            Err(LauncherError::Http { url, reason }) if reason.starts_with("401") || reason.starts_with("403") => {
                return Err(LauncherError::Http {
                    url,
                    reason: format!("{reason} (give the operator API's URL with --admin-token-file, or a FHIR URL that needs no credential)"),
                })
            }
            _ => {}
        }
        if start.elapsed() > timeout {
            return Err(LauncherError::Cluster(format!("no leader elected within {} s", timeout.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `kiln cluster up`: starts the nodes, prints their URLs and the leader, forwards Ctrl-C /
/// SIGTERM, and never restarts a node that exits (it says so).
pub fn up(cluster: &LocalCluster) -> Result<(), LauncherError> {
    let exe = std::env::current_exe()?;
    let paths = cluster.write()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst)).map_err(|e| LauncherError::Cluster(e.to_string()))?;
    let mut nodes = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        match spawn_node(&exe, i as u64 + 1, path) {
            Ok(n) => nodes.push(n),
            Err(e) => {
                terminate(&mut nodes);
                return Err(e);
            }
        }
    }
    let status = wait_for_leader(&nodes[0].url, Duration::from_secs(30), None);
    println!("Kiln cluster: {} nodes (configs and data in {})", nodes.len(), cluster.data_dir.display());
    for n in &nodes {
        println!("  node {}: {} (operator API: http://127.0.0.1:{})", n.id, n.url, cluster.admin_base_port as u64 + n.id - 1);
    }
    match &status {
        Ok(s) => println!("  leader: node {} ({})", s["leader_id"], s["leader_url"].as_str().unwrap_or("")),
        Err(e) => println!("  leader: none yet ({e})"),
    }
    println!("Ctrl-C stops all nodes.");
    let mut exited: Vec<(u64, ExitStatus)> = Vec::new();
    while !stop.load(Ordering::SeqCst) && exited.len() < nodes.len() {
        std::thread::sleep(Duration::from_millis(200));
        for n in nodes.iter_mut() {
            if exited.iter().any(|(id, _)| *id == n.id) {
                continue;
            }
            if let Ok(Some(st)) = n.child.try_wait() {
                eprintln!("kiln cluster: node {} exited ({st}); it is NOT restarted. Restart it with: kiln serve --config {}", n.id, paths[(n.id - 1) as usize].display());
                exited.push((n.id, st));
            }
        }
    }
    terminate(&mut nodes);
    if exited.len() == nodes.len() {
        return Err(LauncherError::Cluster("every node exited".into()));
    }
    Ok(())
}

/// SIGTERM to every child (graceful shutdown), SIGKILL after 15 s.
fn terminate(nodes: &mut [Running]) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    for n in nodes.iter() {
        let _ = kill(Pid::from_raw(n.child.id() as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    for n in nodes.iter_mut() {
        loop {
            match n.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() > deadline => {
                    let _ = n.child.kill();
                    let _ = n.child.wait();
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }
}

/// The leader's operator API URL, found from any node's FHIR URL or operator API.
pub fn leader_admin_url(any: &str, token: AdminAuth) -> Result<String, LauncherError> {
    let s = wait_for_leader(any.trim_end_matches('/'), Duration::from_secs(30), token)?;
    match s["leader_admin_url"].as_str().unwrap_or_default().trim_end_matches('/') {
        "" => Err(LauncherError::Cluster(format!(
            "the leader (node {}) has no admin_url in its cluster.peers entry: the membership commands need its operator API (admin_listen)",
            s["leader_id"]
        ))),
        url => Ok(url.to_string()),
    }
}

/// `kiln cluster add-node`: adds the node as a learner, waits until it has caught up with the
/// leader's log, then (unless `learner_only`) promotes it to voter.
pub fn add_node(any: &str, peer: &PeerConfig, learner_only: bool, timeout: Duration, token: AdminAuth) -> Result<Value, LauncherError> {
    let leader = leader_admin_url(any, token)?;
    let body = |role: &str| json!({"id": peer.id, "raft_addr": peer.raft_addr, "http_url": peer.http_url, "admin_url": peer.admin_url, "role": role});
    send_json(reqwest::Method::POST, &format!("{leader}/_cluster/nodes"), Some(body("learner")), token)?;
    let start = Instant::now();
    loop {
        let s = get_json(&format!("{leader}/_cluster/status"), token)?;
        let caught_up = s["peers"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["id"].as_u64() == Some(peer.id)))
            .is_some_and(|p| p["lag"].as_u64() == Some(0));
        if caught_up {
            break;
        }
        if start.elapsed() > timeout {
            return Err(LauncherError::Cluster(format!("node {} did not catch up within {} s (is it running with cluster.join = true?)", peer.id, timeout.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if learner_only {
        return get_json(&format!("{leader}/_cluster/status"), token);
    }
    send_json(reqwest::Method::POST, &format!("{leader}/_cluster/nodes"), Some(body("voter")), token)
}

/// `kiln cluster remove-node`.
pub fn remove_node(any: &str, id: u64, token: AdminAuth) -> Result<Value, LauncherError> {
    let leader = leader_admin_url(any, token)?;
    send_json(reqwest::Method::DELETE, &format!("{leader}/_cluster/nodes/{id}"), None, token)
}

/// `kiln cluster status`.
pub fn status(any: &str, token: AdminAuth) -> Result<Value, LauncherError> {
    get_json(&format!("{}/_cluster/status", any.trim_end_matches('/')), token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_configs_are_valid_and_agree_on_peers() {
        let dir = tempfile::tempdir().unwrap();
        let lc = LocalCluster { nodes: 3, data_dir: dir.path().into(), base_port: 8080, raft_base_port: 9080, admin_base_port: 8180, fhir_version: FhirVersion::R4, tls: true };
        let paths = lc.write().unwrap();
        for (i, p) in paths.iter().enumerate() {
            let cfg = Config::from_file(p).unwrap();
            cfg.validate().unwrap();
            assert_eq!(cfg.node_id, i as u64 + 1);
            assert_eq!(cfg.listen, format!("127.0.0.1:{}", 8080 + i));
            assert_eq!(cfg.cluster.peers.len(), 3);
            assert_eq!(cfg.cluster.initial_voters(cfg.node_id), vec![1, 2, 3]);
            crate::consensus::tls::TlsSetup::load(cfg.cluster.tls.as_ref().unwrap()).unwrap();
        }
    }
}
