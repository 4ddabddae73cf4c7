//! The one test harness: real Kiln nodes on free 127.0.0.1 ports with temporary data folders,
//! either in this process ([`TestNode`], through `kiln::start_node`) or as `kiln serve` child
//! processes ([`ChildNode`], for kill -9 crash tests), plus a small FHIR HTTP client.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kiln::fhir::FhirVersion;
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

    /// Stops the node cleanly and starts it again on the same data (and port).
    pub fn restart(&mut self) {
        if let Some(h) = self.handle.take() {
            h.stop();
        }
        let mut cfg = self.cfg.clone();
        cfg.listen = self.base.trim_start_matches("http://").to_string();
        let handle = start_node(cfg).expect("node restarts");
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
        let mut child = Command::new(kiln_bin())
            .args(["serve", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", listen])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("kiln serve starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("kiln prints its address");
        let base = line.trim().strip_prefix("Kiln listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}")).to_string();
        ChildNode { child, data_dir: data_dir.to_path_buf(), base }
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn listen_addr(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        self.kill9();
    }
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
