//! A real S3-compatible server for the tests (`s3s-fs`), started on a free port and killed on
//! drop; it can be stopped and started again on the same port to make the bucket go away.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::free_ports;

/// A real S3-compatible server for the tests: `s3s-fs` (installed by `.ci/run`) on a free
/// 127.0.0.1 port, serving a temporary folder with one bucket, SigV4 enforced. Killed on drop.
pub struct S3Server {
    child: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

impl S3Server {
    pub fn start() -> S3Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let bucket = "kiln-test".to_string();
        // In s3s-fs a bucket is a folder of the data folder.
        std::fs::create_dir_all(dir.path().join("data").join(&bucket)).expect("bucket folder");
        let (access_key, secret_key) = ("kiln-test-key".to_string(), "kiln-test-secret-0123456789".to_string());
        let started = std::time::Instant::now();
        loop {
            let port = free_ports(1)[0];
            let child = Command::new("s3s-fs")
                .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", &access_key, "--secret-key", &secret_key])
                .arg(dir.path().join("data"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn();
            let mut child = match child {
                Ok(c) => c,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    panic!("s3s-fs is not installed (the S3 tests need it): .ci/run installs it, or run `cargo install s3s-fs@0.14.1 --features binary --locked`")
                }
                Err(e) => panic!("cannot start s3s-fs: {e}"),
            };
            let mut server = None;
            while started.elapsed() < Duration::from_secs(20) {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // the port was taken meanwhile: try another one
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    server = Some(port);
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            match server {
                Some(port) => return S3Server { child, dir, port, bucket, access_key, secret_key },
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    assert!(started.elapsed() < Duration::from_secs(20), "s3s-fs did not start listening within 20 s");
                }
            }
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Kills the server: the bucket is unreachable until [`S3Server::restart`].
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port and folder (waiting, up to 30 s, for the port).
    pub fn restart(&mut self) {
        self.stop();
        let started = std::time::Instant::now();
        loop {
            let mut child = Command::new("s3s-fs")
                .args(["--host", "127.0.0.1", "--port", &self.port.to_string(), "--access-key", &self.access_key, "--secret-key", &self.secret_key])
                .arg(self.dir.path().join("data"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("s3s-fs starts again");
            while started.elapsed() < Duration::from_secs(30) {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    self.child = child;
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            assert!(started.elapsed() < Duration::from_secs(30), "s3s-fs did not listen again on port {} within 30 s", self.port);
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Where s3s-fs keeps the objects of the bucket (`key` as a relative path).
    pub fn object_path(&self, key: &str) -> PathBuf {
        self.dir.path().join("data").join(&self.bucket).join(key)
    }

    /// `[s3]` for a node: path style, plain HTTP on loopback, the secret in a file.
    pub fn s3_config(&self) -> kiln::config::S3Config {
        self.s3_config_with_secret(&self.secret_key)
    }

    /// [`S3Server::s3_config`] with another secret (for wrong-credential tests).
    pub fn s3_config_with_secret(&self, secret: &str) -> kiln::config::S3Config {
        static FILES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let file = self.dir.path().join(format!("secret-{}", FILES.fetch_add(1, std::sync::atomic::Ordering::Relaxed)));
        std::fs::write(&file, secret).expect("write secret file");
        kiln::config::S3Config {
            endpoint: Some(self.endpoint()),
            bucket: self.bucket.clone(),
            access_key_id: self.access_key.clone(),
            secret_access_key_file: Some(file),
            path_style: true,
            allow_http: true,
            ..kiln::config::S3Config::default()
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
