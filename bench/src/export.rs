//! The `export` measurement: one Bulk Data export from kick-off to manifest (resources/s of the
//! server's export), then every output file downloaded (MB/s of serving it), with the server's
//! RSS sampled throughout. Works against any server that implements `$export`.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::scenarios::http_client;
use crate::BenchError;

/// What one export measured.
#[derive(Debug, Clone, Serialize)]
pub struct ExportRun {
    pub kickoff_url: String,
    pub resources: u64,
    pub files: usize,
    /// Kick-off sent → manifest received.
    pub export_secs: f64,
    pub resources_per_sec: f64,
    pub download_bytes: u64,
    pub download_secs: f64,
    /// Server RSS before the kick-off and the highest seen until the downloads ended (MiB).
    pub rss_before_mib: Option<f64>,
    pub rss_peak_mib: Option<f64>,
}

fn rss_mib(pid: Option<u32>) -> Option<f64> {
    crate::load::rss_kb(pid?).map(|kb| kb as f64 / 1024.0)
}

/// Samples a local server's RSS every 50 ms: the value at start and the highest seen.
pub struct RssSampler {
    before: Option<f64>,
    peak: std::sync::Arc<std::sync::Mutex<Option<f64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RssSampler {
    pub fn start(pid: Option<u32>) -> RssSampler {
        let before = rss_mib(pid);
        let peak = std::sync::Arc::new(std::sync::Mutex::new(before));
        let p = peak.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Some(r) = rss_mib(pid) {
                    let mut m = p.lock().expect("sampler lock");
                    *m = Some(m.map_or(r, |q: f64| q.max(r)));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        RssSampler { before, peak, task }
    }

    /// (RSS at start, peak) in MiB.
    pub fn stop(self) -> (Option<f64>, Option<f64>) {
        self.task.abort();
        let peak = *self.peak.lock().expect("sampler lock");
        (self.before, peak)
    }
}

async fn fail(resp: reqwest::Response, what: &str) -> BenchError {
    BenchError::Status { what: what.to_string(), status: resp.status().as_u16(), body: resp.text().await.unwrap_or_default() }
}

/// Runs one export of `path` (e.g. `/$export?_type=Patient`) against `base`.
pub async fn run(base: &str, path: &str, token: Option<&str>, server_pid: Option<u32>, download: bool) -> Result<ExportRun, BenchError> {
    let c = http_client(token)?;
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let sampler = RssSampler::start(server_pid);
    let start = Instant::now();
    let resp = c.get(&url).header("prefer", "respond-async").send().await?;
    if resp.status().as_u16() != 202 {
        return Err(fail(resp, "kick-off").await);
    }
    let status_url = resp.headers().get("content-location").and_then(|v| v.to_str().ok()).map(String::from).ok_or_else(|| BenchError::Invalid("kick-off without Content-Location".into()))?;
    let manifest: serde_json::Value = loop {
        let resp = c.get(&status_url).send().await?;
        match resp.status().as_u16() {
            200 => break resp.json().await?,
            202 => tokio::time::sleep(Duration::from_millis(50)).await,
            _ => return Err(fail(resp, "status").await),
        }
    };
    let export_secs = start.elapsed().as_secs_f64();
    let outputs = manifest["output"].as_array().cloned().unwrap_or_default();
    let resources: u64 = outputs.iter().filter_map(|o| o["count"].as_u64()).sum();
    let (mut bytes, dl_start) = (0u64, Instant::now());
    if download {
        let needs_token = manifest["requiresAccessToken"].as_bool().unwrap_or(true);
        let plain = http_client(None)?;
        for o in &outputs {
            let u = o["url"].as_str().unwrap_or_default();
            let resp = if needs_token { c.get(u).send().await? } else { plain.get(u).send().await? };
            if !resp.status().is_success() {
                return Err(fail(resp, u).await);
            }
            let mut resp = resp;
            while let Some(chunk) = resp.chunk().await? {
                bytes += chunk.len() as u64;
            }
        }
    }
    let download_secs = dl_start.elapsed().as_secs_f64();
    let (rss_before, rss_peak) = sampler.stop();
    Ok(ExportRun {
        kickoff_url: url,
        resources,
        files: outputs.len(),
        export_secs,
        resources_per_sec: resources as f64 / export_secs.max(1e-9),
        download_bytes: bytes,
        download_secs,
        rss_before_mib: rss_before,
        rss_peak_mib: rss_peak,
    })
}
