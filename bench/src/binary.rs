//! The `binary` measurement: one raw Binary of N MiB uploaded (streamed from a generator, never
//! held by the client) and read back, in MB/s, with the server's RSS sampled throughout.

use std::time::Instant;

use serde::Serialize;

use crate::scenarios::http_client;
use crate::BenchError;

/// What one upload and download measured.
#[derive(Debug, Clone, Serialize)]
pub struct BinaryRun {
    pub bytes: u64,
    pub upload_secs: f64,
    pub upload_mb_per_sec: f64,
    pub download_secs: f64,
    pub download_mb_per_sec: f64,
    pub rss_before_mib: Option<f64>,
    pub rss_peak_mib: Option<f64>,
}

/// Uploads `mib` MiB as `application/octet-stream` to `[base]/Binary`, then reads it raw.
pub async fn run(base: &str, mib: u64, token: Option<&str>, server_pid: Option<u32>) -> Result<BinaryRun, BenchError> {
    let c = http_client(token)?;
    let base = base.trim_end_matches('/');
    let sampler = crate::export::RssSampler::start(server_pid);
    let total = mib << 20;
    // A cheap, incompressible-enough pattern in 1 MiB chunks.
    let chunks = (0..mib).map(|i| {
        let mut b = vec![0u8; 1 << 20];
        let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ i;
        for w in b.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
        }
        Ok::<_, std::io::Error>(b)
    });
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let start = Instant::now();
    let resp = c.post(format!("{base}/Binary")).header("content-type", "application/octet-stream").header("content-length", total).body(body).send().await?;
    let upload_secs = start.elapsed().as_secs_f64();
    if !resp.status().is_success() {
        return Err(BenchError::Status { what: "raw Binary upload".into(), status: resp.status().as_u16(), body: resp.text().await.unwrap_or_default() });
    }
    let location = resp.headers().get("location").and_then(|v| v.to_str().ok()).map(String::from).ok_or_else(|| BenchError::Invalid("create without Location".into()))?;
    let url = location.split("/_history/").next().unwrap_or(&location).to_string();
    let start = Instant::now();
    let mut resp = c.get(&url).header("accept", "application/octet-stream").send().await?;
    if !resp.status().is_success() {
        return Err(BenchError::Status { what: "raw Binary read".into(), status: resp.status().as_u16(), body: resp.text().await.unwrap_or_default() });
    }
    let mut got = 0u64;
    while let Some(chunk) = resp.chunk().await? {
        got += chunk.len() as u64;
    }
    let download_secs = start.elapsed().as_secs_f64();
    if got != total {
        return Err(BenchError::Invalid(format!("read {got} bytes back, wrote {total}")));
    }
    let (rss_before_mib, rss_peak_mib) = sampler.stop();
    let mb = total as f64 / 1e6;
    Ok(BinaryRun { bytes: total, upload_secs, upload_mb_per_sec: mb / upload_secs, download_secs, download_mb_per_sec: mb / download_secs, rss_before_mib, rss_peak_mib })
}
