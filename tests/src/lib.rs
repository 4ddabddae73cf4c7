//! The one test harness: real Kiln nodes on free 127.0.0.1 ports with temporary data folders,
//! either in this process ([`TestNode`], through `kiln::start_node`) or as `kiln serve` child
//! processes ([`ChildNode`], for kill -9 crash tests); [`TestCluster`] runs N child processes as
//! one Raft cluster (leader(), kill9(i), restart(i), isolate(i) / heal(i), add_node()); plus a
//! small FHIR HTTP client; [`S3Server`] runs a real S3-compatible server (`s3s-fs`) for the
//! object-storage tests, [`meili::Meili`] a real Meilisearch server, [`hooks::Receiver`] a real
//! HTTP endpoint for rest-hook Subscriptions.

pub mod bulk;
pub mod hooks;
pub mod meili;
pub mod s3;

pub use s3::S3Server;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kiln::fhir::FhirVersion;
use kiln::config::{ClusterConfig, PeerConfig};
use kiln::{start_node, Config, NodeHandle};
use serde_json::Value;

/// A node running in this process.
pub struct TestNode {
    handle: Option<NodeHandle>,
    pub cfg: Config,
    pub dir: tempfile::TempDir,
    pub base: String,
}

fn test_config(dir: &Path, version: FhirVersion) -> Config {
    Config {
        data_dir: dir.join("data"),
        listen: "127.0.0.1:0".into(),
        fhir_version: version,
        http_workers: 2,
        ..Config::default()
    }
}

impl TestNode {
    /// An R4 node.
    pub fn start() -> TestNode {
        Self::start_with(FhirVersion::R4, |_| {})
    }

    /// A node of `version`, with `tweak` applied to its config.
    pub fn start_with(version: FhirVersion, tweak: impl FnOnce(&mut Config)) -> TestNode {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cfg = test_config(dir.path(), version);
        tweak(&mut cfg);
        let handle = start_node(cfg.clone()).expect("node starts");
        let base = handle.base_url();
        TestNode { handle: Some(handle), cfg, dir, base }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The operator API's base URL (`admin_listen` must be set).
    pub fn admin_base(&self) -> String {
        let addr = self.handle.as_ref().and_then(|h| h.admin_addr).expect("a running node with admin_listen");
        format!("http://{addr}")
    }

    /// Stops the node cleanly and starts it again on the same data (and port).
    pub fn restart(&mut self) {
        if let Some(h) = self.handle.take() {
            h.stop();
        }
        let mut cfg = self.cfg.clone();
        cfg.listen = host_port(&self.base).to_string();
        // The stopped node's HTTP workers may still be letting go of the database for a moment.
        let mut started = std::time::Instant::now();
        let handle = loop {
            match start_node(cfg.clone()) {
                Ok(h) => break h,
                Err(kiln::StartError::DataDir { .. }) if started.elapsed() < Duration::from_secs(10) => std::thread::sleep(Duration::from_millis(50)),
                // Another test took the port meanwhile: wait for it, then take a new one.
                Err(kiln::StartError::Listen { .. }) if started.elapsed() < Duration::from_secs(10) => std::thread::sleep(Duration::from_millis(50)),
                Err(kiln::StartError::Listen { .. }) if cfg.listen != "127.0.0.1:0" => {
                    cfg.listen = "127.0.0.1:0".into();
                    started = std::time::Instant::now();
                }
                Err(e) => panic!("node restarts: {e}"),
            }
        };
        self.base = handle.base_url();
        self.handle = Some(handle);
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.stop();
        }
    }
}

/// The `kiln` binary next to this test binary (`cargo build --bin kiln` builds it), or `KILN_BIN`.
pub fn kiln_bin() -> PathBuf {
    if let Ok(p) = std::env::var("KILN_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("kiln");
    assert!(bin.exists(), "{} is missing: run `cargo build --bin kiln` first (the README's test command does)", bin.display());
    bin
}

/// A `kiln serve` child process.
pub struct ChildNode {
    child: Child,
    pub data_dir: PathBuf,
    pub base: String,
}

impl ChildNode {
    /// Starts `kiln serve` on `data_dir` at `listen` (use `127.0.0.1:0` the first time).
    pub fn start(data_dir: &Path, listen: &str) -> ChildNode {
        Self::start_with_args(data_dir, listen, Vec::<&std::ffi::OsStr>::new())
    }

    /// [`ChildNode::start`] with more `kiln serve` flags (e.g. `--tls-cert FILE`).
    pub fn start_with_args<S: AsRef<std::ffi::OsStr>>(data_dir: &Path, listen: &str, extra: impl IntoIterator<Item = S>) -> ChildNode {
        let mut cmd = Command::new(kiln_bin());
        cmd.args(["serve", "--data-dir"]).arg(data_dir).args(["--listen", listen]).args(extra);
        Self::spawn(cmd, data_dir)
    }

    /// Starts `kiln serve --config FILE`.
    pub fn start_config(config: &Path, data_dir: &Path) -> ChildNode {
        Self::start_config_env(config, data_dir, [])
    }

    /// [`ChildNode::start_config`] with environment variables set (e.g. `HOSTNAME`).
    pub fn start_config_env<'a>(config: &Path, data_dir: &Path, env: impl IntoIterator<Item = (&'a str, &'a str)>) -> ChildNode {
        Self::try_start_config_env(config, data_dir, env).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`ChildNode::start_config_env`], an error when the node exits before it listens (e.g. a
    /// port of its config taken meanwhile): the caller picks other ports and tries again.
    pub fn try_start_config_env<'a>(config: &Path, data_dir: &Path, env: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<ChildNode, String> {
        let mut cmd = Command::new(kiln_bin());
        cmd.args(["serve", "--config"]).arg(config).envs(env);
        Self::try_spawn(cmd, data_dir)
    }

    fn spawn(cmd: Command, data_dir: &Path) -> ChildNode {
        Self::try_spawn(cmd, data_dir).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the child and reads its "Kiln listening on" line; an error when it exits first
    /// (e.g. a port taken meanwhile by another test: ports are allocated by binding port 0).
    fn try_spawn(mut cmd: Command, data_dir: &Path) -> Result<ChildNode, String> {
        let mut child = cmd
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("kiln serve starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("kiln prints its address");
        match line.trim().strip_prefix("Kiln listening on ") {
            Some(base) => Ok(ChildNode { child, data_dir: data_dir.to_path_buf(), base: base.to_string() }),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("kiln serve did not start (first line {line:?}): see its stderr above"))
            }
        }
    }

    /// SIGTERM, then waits for the node to exit (its state flushed; SIGKILL after 30 s).
    pub fn stop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        self.kill9();
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The process id of `kiln serve`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn listen_addr(&self) -> String {
        host_port(&self.base).to_string()
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// `IP:PORT` of a base URL (`http://` or `https://` with `api_tls`).
pub fn host_port(base: &str) -> &str {
    base.trim_start_matches("https://").trim_start_matches("http://")
}

/// Free 127.0.0.1 ports, allocated by binding port 0 (all held at once, then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0")).collect();
    held.iter().map(|l| l.local_addr().expect("local addr").port()).collect()
}

/// A cluster of `kiln serve` child processes on free ports, with fast Raft timers and the fault
/// filter enabled. Node ids are 1..=n; `node(i)` etc. take ids.
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    /// Config of node id i at index i - 1.
    pub configs: Vec<Config>,
    nodes: Vec<Option<ChildNode>>,
}

impl TestCluster {
    pub fn start(n: usize) -> TestCluster {
        Self::start_with(n, |_| {})
    }

    /// `tweak` is applied to every node's config before it is written.
    pub fn start_with(n: usize, tweak: impl Fn(&mut Config)) -> TestCluster {
        Self::start_prepared(n, tweak, |_| {})
    }

    /// [`Self::start_with`], with `prepare` run on the cluster's folder (node i's data dir is
    /// `node<i>` in it) before the nodes start: e.g. `kiln restore` into it.
    pub fn start_prepared(n: usize, tweak: impl Fn(&mut Config), prepare: impl FnOnce(&Path)) -> TestCluster {
        let mut dir = tempfile::tempdir().expect("temp dir");
        prepare(dir.path());
        // Ports come from binding port 0 and releasing it: another test may take one before the
        // node binds it. Then the whole cluster starts again on new ports (same folders).
        for attempt in 1.. {
        let ports = free_ports(3 * n);
        let peers: Vec<PeerConfig> = (0..n)
            .map(|i| PeerConfig {
                id: i as u64 + 1,
                raft_addr: format!("127.0.0.1:{}", ports[n + i]),
                http_url: format!("http://127.0.0.1:{}", ports[i]),
                admin_url: format!("http://127.0.0.1:{}", ports[2 * n + i]),
            })
            .collect();
        let configs: Vec<Config> = (0..n)
            .map(|i| {
                let mut cfg = Config {
                    node_id: i as u64 + 1,
                    data_dir: dir.path().join(format!("node{}", i + 1)),
                    listen: format!("127.0.0.1:{}", ports[i]),
                    admin_listen: Some(format!("127.0.0.1:{}", ports[2 * n + i])),
                    http_workers: 2,
                    write_timeout_ms: 5000,
                    ..Config::default()
                };
                cfg.raft.tick_ms = 50;
                cfg.cluster = ClusterConfig {
                    raft_listen: Some(peers[i].raft_addr.clone()),
                    peers: peers.clone(),
                    fault_injection: true,
                    ..ClusterConfig::default()
                };
                tweak(&mut cfg);
                cfg
            })
            .collect();
        let mut c = TestCluster { dir, configs, nodes: Vec::new() };
        let mut failed = None;
        for id in 1..=n as u64 {
            match c.try_spawn(id) {
                Ok(node) => c.nodes.push(Some(node)),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        match failed {
            None => return c,
            Some(e) if attempt < 3 => {
                eprintln!("{e}; starting the cluster again on other ports");
                let TestCluster { dir: d, nodes, .. } = c;
                drop(nodes);
                dir = d;
            }
            Some(e) => panic!("{e}"),
        }
        }
        unreachable!("the loop returns or panics")
    }

    fn try_spawn(&self, id: u64) -> Result<ChildNode, String> {
        let cfg = &self.configs[(id - 1) as usize];
        let path = self.dir.path().join(format!("node{id}.toml"));
        std::fs::write(&path, toml::to_string(cfg).expect("config serializes")).expect("write config");
        let mut cmd = Command::new(kiln_bin());
        cmd.args(["serve", "--config"]).arg(&path);
        ChildNode::try_spawn(cmd, &cfg.data_dir)
    }

    pub fn ids(&self) -> Vec<u64> {
        (1..=self.configs.len() as u64).collect()
    }

    /// Ids of the nodes currently running.
    pub fn running(&self) -> Vec<u64> {
        self.ids().into_iter().filter(|id| self.nodes[(*id - 1) as usize].is_some()).collect()
    }

    pub fn base(&self, id: u64) -> String {
        format!("http://{}", self.configs[(id - 1) as usize].listen)
    }

    pub fn url(&self, id: u64, path: &str) -> String {
        format!("{}{path}", self.base(id))
    }

    /// A URL on node `id`'s operator API (membership, digest, faults).
    pub fn admin_url(&self, id: u64, path: &str) -> String {
        let cfg = &self.configs[(id - 1) as usize];
        format!("http://{}{path}", cfg.admin_listen.as_deref().expect("test nodes have an operator API"))
    }

    /// `/_cluster/status` of a node, `None` when it does not answer.
    pub fn status(&self, id: u64) -> Option<Value> {
        // The operator API serves it without FHIR credentials (clusters with [auth] on too).
        let resp = client().get(self.admin_url(id, "/_cluster/status")).timeout(Duration::from_secs(2)).send().ok()?;
        resp.json().ok()
    }

    /// Waits (up to 30 s) until every node in `among` reports the same leader, itself among them.
    pub fn leader_among(&self, among: &[u64]) -> u64 {
        let start = std::time::Instant::now();
        loop {
            let leaders: Vec<u64> = among.iter().filter_map(|id| self.status(*id)).map(|s| s["leader_id"].as_u64().unwrap_or(0)).collect();
            if leaders.len() == among.len() && leaders[0] != 0 && leaders.iter().all(|l| *l == leaders[0]) && among.contains(&leaders[0]) {
                return leaders[0];
            }
            assert!(start.elapsed() < Duration::from_secs(30), "no agreed leader among {among:?}: {leaders:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The leader all running nodes agree on.
    pub fn leader(&self) -> u64 {
        self.leader_among(&self.running())
    }

    /// SIGKILL one node.
    pub fn kill9(&mut self, id: u64) {
        if let Some(mut n) = self.nodes[(id - 1) as usize].take() {
            n.kill9();
        }
    }

    /// Starts a killed node again on its data and ports (the other members know them). A
    /// port another process took meanwhile is waited for, up to 30 s.
    pub fn restart(&mut self, id: u64) {
        assert!(self.nodes[(id - 1) as usize].is_none(), "node {id} is running");
        let started = std::time::Instant::now();
        let node = loop {
            match self.try_spawn(id) {
                Ok(n) => break n,
                // Only a port taken meanwhile is waited for: any other failure to restart is
                // what a test must see.
                Err(e) if started.elapsed() < Duration::from_secs(30) && self.a_port_is_taken(id) => {
                    eprintln!("node {id} did not restart ({e}): a port of it is taken; trying again");
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => panic!("node {id} did not restart: {e}"),
            }
        };
        self.nodes[(id - 1) as usize] = Some(node);
    }

    /// Whether another process holds one of node `id`'s ports (it is not running).
    fn a_port_is_taken(&self, id: u64) -> bool {
        let cfg = &self.configs[(id - 1) as usize];
        let addrs = [Some(cfg.listen.clone()), cfg.cluster.raft_listen.clone(), cfg.admin_listen.clone()];
        addrs.into_iter().flatten().any(|a| std::net::TcpListener::bind(&a).is_err())
    }

    /// Cuts node `id` off from every other node (its transport drops all peer traffic).
    pub fn isolate(&self, id: u64) {
        let others: Vec<u64> = self.ids().into_iter().filter(|i| *i != id).collect();
        self.set_faults(id, &others);
    }

    pub fn heal(&self, id: u64) {
        self.set_faults(id, &[]);
    }

    fn set_faults(&self, id: u64, isolate: &[u64]) {
        let resp = client().post(self.admin_url(id, "/_cluster/faults")).json(&serde_json::json!({ "isolate": isolate })).send().expect("faults request");
        assert_eq!(resp.status(), 200, "fault filter on node {id}");
    }

    /// Starts a new node with `cluster.join = true` (it waits to be added); returns its id.
    pub fn start_joining_node(&mut self) -> u64 {
        let id = self.configs.len() as u64 + 1;
        let peers = self.configs[0].cluster.peers.clone();
        // Its ports are new to everyone: if one was taken meanwhile, try others.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_joining_node(id) {
                Ok(node) => {
                    self.nodes.push(Some(node));
                    return id;
                }
                Err(e) if attempt < 5 && self.a_port_is_taken(id) => {
                    eprintln!("joining node {id} did not start ({e}); new ports");
                    self.configs.pop();
                    for c in &mut self.configs {
                        c.cluster.peers = peers.clone();
                    }
                }
                Err(e) => panic!("joining node {id} did not start: {e}"),
            }
        }
    }

    fn try_joining_node(&mut self, id: u64) -> Result<ChildNode, String> {
        let ports = free_ports(3);
        let me = PeerConfig {
            id,
            raft_addr: format!("127.0.0.1:{}", ports[1]),
            http_url: format!("http://127.0.0.1:{}", ports[0]),
            admin_url: format!("http://127.0.0.1:{}", ports[2]),
        };
        let mut cfg = self.configs[0].clone();
        cfg.node_id = id;
        cfg.data_dir = self.dir.path().join(format!("node{id}"));
        cfg.listen = format!("127.0.0.1:{}", ports[0]);
        cfg.admin_listen = Some(format!("127.0.0.1:{}", ports[2]));
        cfg.cluster.raft_listen = Some(me.raft_addr.clone());
        cfg.cluster.peers.push(me);
        cfg.cluster.join = true;
        for c in &mut self.configs {
            c.cluster.peers = cfg.cluster.peers.clone();
        }
        self.configs.push(cfg);
        self.try_spawn(id)
    }

    /// Waits (up to `secs`) until the running nodes in `ids` have the same applied index and the
    /// same state digest; returns the digest.
    pub fn converged(&self, ids: &[u64], secs: u64) -> String {
        let start = std::time::Instant::now();
        loop {
            let digests: Vec<Value> = ids
                .iter()
                .filter_map(|id| client().get(self.admin_url(*id, "/_cluster/digest")).send().ok().and_then(|r| r.json().ok()))
                .collect();
            if digests.len() == ids.len() && digests.iter().all(|d| d == &digests[0]) {
                return digests[0]["sha256"].as_str().unwrap_or_default().to_string();
            }
            assert!(start.elapsed() < Duration::from_secs(secs), "nodes {ids:?} did not converge: {digests:?}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Writes `body` with PUT at `url`; returns the status and the version from the ETag.
pub fn put(c: &reqwest::blocking::Client, url: &str, body: &Value) -> reqwest::Result<(u16, Option<u64>)> {
    let r = c.put(url).header("content-type", "application/fhir+json").body(body.to_string()).send()?;
    Ok((r.status().as_u16(), etag_version(&r)))
}

/// The version in a response's `ETag` (`W/"n"`).
pub fn etag_version(r: &reqwest::blocking::Response) -> Option<u64> {
    r.headers().get("etag")?.to_str().ok()?.trim_start_matches("W/\"").trim_end_matches('"').parse().ok()
}

/// A blocking HTTP client with FHIR defaults.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().expect("http client")
}

/// Parses a response body as JSON (panics with the body text when it is not).
pub fn json(resp: reqwest::blocking::Response) -> Value {
    let text = resp.text().expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// Removes what the server owns (`meta.versionId`, `meta.lastUpdated`; an empty `meta`).
pub fn without_server_meta(mut v: Value) -> Value {
    if let Some(obj) = v.as_object_mut() {
        let empty = obj.get_mut("meta").and_then(Value::as_object_mut).map(|m| {
            m.shift_remove("versionId");
            m.shift_remove("lastUpdated");
            m.is_empty()
        });
        if empty == Some(true) {
            obj.shift_remove("meta");
        }
    }
    v
}

/// Where the npm packages fetched by `schemas/fetch-packages.sh` live.
pub fn fhir_packages() -> PathBuf {
    let dir = std::env::var("KILN_FHIR_PACKAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/fhir-packages"));
    assert!(
        dir.join("r4-examples/.complete").exists(),
        "FHIR example packages missing in {}: run schemas/fetch-packages.sh (.ci/run does)",
        dir.display()
    );
    dir
}
