//! [`Meili`]: a real Meilisearch server (the v1.50.0 binary in `shared/tools/meilisearch`, or
//! `KILN_MEILISEARCH`) on a free loopback port with a temporary database and a master key,
//! started from a folder without `config.toml`, killed on drop; it can be stopped and started
//! again on the same database, or moved to a fresh one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The Meilisearch launcher: `KILN_MEILISEARCH`, else the repository's sibling `shared/` folder.
pub fn meilisearch_bin() -> PathBuf {
    if let Ok(p) = std::env::var("KILN_MEILISEARCH") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/tools/meilisearch/meilisearch");
    assert!(p.exists(), "{} is missing (set KILN_MEILISEARCH to a Meilisearch binary)", p.display());
    p
}

/// A running (or stopped) Meilisearch server.
pub struct Meili {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub key: String,
    /// The database folder (under `dir`), kept across stop / start.
    pub db: PathBuf,
    /// A file holding `key`, for `meilisearch.api_key_file`.
    pub key_file: PathBuf,
}

impl Meili {
    /// Starts a server with a fresh database and a random master key.
    pub fn start() -> Meili {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = format!("kiln-test-master-key-{}", std::process::id());
        let key_file = dir.path().join("meili.key");
        std::fs::write(&key_file, &key).expect("write key file");
        let port = crate::free_ports(1)[0];
        let db = dir.path().join("db");
        let mut m = Meili { child: None, db, dir, port, key, key_file };
        m.run(true);
        m
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the server and waits until it is healthy. Its port was free when picked; if
    /// another process took it meanwhile the server exits: then a new port (`new_port`: nobody
    /// knows this one yet), or the same one again once it is free (up to 60 s).
    fn run(&mut self, new_port: bool) {
        let start = Instant::now();
        loop {
            match self.try_run() {
                Ok(()) => return,
                Err(why) => {
                    assert!(start.elapsed() < Duration::from_secs(60), "meilisearch did not start: {why}");
                    if new_port {
                        self.port = crate::free_ports(1)[0];
                    } else {
                        std::thread::sleep(Duration::from_millis(250));
                    }
                }
            }
        }
    }

    fn try_run(&mut self) -> Result<(), String> {
        let cwd = self.dir.path().join("cwd");
        std::fs::create_dir_all(&cwd).expect("cwd");
        let child = Command::new(meilisearch_bin())
            .current_dir(&cwd)
            .arg("--db-path")
            .arg(&self.db)
            .args(["--http-addr", &format!("127.0.0.1:{}", self.port), "--master-key", &self.key, "--no-analytics"])
            .env("MEILI_LOG_LEVEL", "WARN")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("meilisearch starts");
        self.child = Some(child);
        let c = reqwest::blocking::Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
        // The first start unpacks the binary (a few seconds).
        let start = Instant::now();
        loop {
            if c.get(format!("{}/health", self.url())).send().is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!("it exited ({status}) on port {}", self.port));
            }
            assert!(start.elapsed() < Duration::from_secs(120), "meilisearch did not become healthy on port {}", self.port);
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills the server (SIGKILL); the database stays.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same database and port.
    pub fn restart(&mut self) {
        self.stop();
        self.run(false);
    }

    /// Starts it again with an empty database (Meilisearch lost its data).
    pub fn restart_empty(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.db);
        self.run(false);
    }

    /// A request to Meilisearch with the master key.
    pub fn get(&self, path: &str) -> serde_json::Value {
        let c = crate::client();
        let r = c.get(format!("{}{path}", self.url())).bearer_auth(&self.key).send().expect("meilisearch answers");
        crate::json(r)
    }

    /// Number of documents in index `uid` (0 when it does not exist).
    pub fn count(&self, uid: &str) -> u64 {
        let v = self.get(&format!("/indexes/{uid}/stats"));
        v["numberOfDocuments"].as_u64().unwrap_or(0)
    }

    /// One document of `uid` (`None` when absent).
    pub fn document(&self, uid: &str, key: &str) -> Option<serde_json::Value> {
        let c = crate::client();
        let r = c.get(format!("{}/indexes/{uid}/documents/{key}", self.url())).bearer_auth(&self.key).send().expect("meilisearch answers");
        (r.status() == 200).then(|| crate::json(r))
    }

    /// Waits until Meilisearch has no enqueued or processing task.
    pub fn settle(&self) {
        let start = Instant::now();
        loop {
            let v = self.get("/tasks?statuses=enqueued,processing&limit=1");
            if v["results"].as_array().is_some_and(|r| r.is_empty()) {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "meilisearch tasks did not settle");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Meili {
    fn drop(&mut self) {
        self.stop();
    }
}
