//! A Bulk Data client as the IG describes one: kick-off with `Prefer: respond-async`, poll the
//! status URL honouring `Retry-After`, then download every output file.

use std::time::{Duration, Instant};

use reqwest::blocking::{Client, RequestBuilder};
use serde_json::Value;

/// A finished export: the manifest and each output file's lines, parsed.
pub struct Export {
    pub status_url: String,
    pub manifest: Value,
    /// (type, resources) per output entry, in manifest order.
    pub files: Vec<(String, Vec<Value>)>,
}

impl Export {
    /// Every exported resource of `rtype`, across its files.
    pub fn of(&self, rtype: &str) -> Vec<&Value> {
        self.files.iter().filter(|(t, _)| t == rtype).flat_map(|(_, r)| r.iter()).collect()
    }

    /// `Type/id` of every exported resource, sorted.
    pub fn refs(&self) -> Vec<String> {
        let mut v: Vec<String> = self.files.iter().flat_map(|(_, r)| r.iter()).map(|r| format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap())).collect();
        v.sort();
        v
    }
}

fn authed(r: RequestBuilder, token: Option<&str>) -> RequestBuilder {
    match token {
        Some(t) => r.bearer_auth(t),
        None => r,
    }
}

/// Sends the kick-off; returns the status URL (panics unless 202 with Content-Location).
pub fn kick_off(c: &Client, url: &str, body: Option<&Value>, token: Option<&str>) -> String {
    let r = match body {
        Some(b) => c.post(url).header("content-type", "application/fhir+json").body(b.to_string()),
        None => c.get(url),
    };
    let resp = authed(r.header("accept", "application/fhir+json").header("prefer", "respond-async"), token).send().expect("kick-off");
    let status = resp.status().as_u16();
    let loc = resp.headers().get("content-location").map(|v| v.to_str().unwrap().to_string());
    assert_eq!(status, 202, "kick-off {url}: {}", resp.text().unwrap_or_default());
    loc.expect("Content-Location")
}

/// Polls `status_url` until the manifest (200) arrives; panics on anything but 202 / 200.
pub fn wait(c: &Client, status_url: &str, token: Option<&str>, secs: u64) -> Value {
    let start = Instant::now();
    loop {
        let resp = authed(c.get(status_url), token).send().expect("status");
        match resp.status().as_u16() {
            200 => return resp.json().expect("manifest JSON"),
            202 => {
                assert!(resp.headers().contains_key("x-progress"), "202 carries X-Progress");
                let retry: u64 = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).expect("Retry-After");
                assert!(start.elapsed() < Duration::from_secs(secs), "export not done after {secs} s");
                // Polls faster than Retry-After asks, to keep tests short; a real client waits.
                std::thread::sleep(Duration::from_millis((retry * 1000).min(200)));
            }
            s => panic!("status {s}: {}", resp.text().unwrap_or_default()),
        }
    }
}

/// Downloads every `output` file of a manifest.
pub fn download(c: &Client, manifest: &Value, token: Option<&str>) -> Vec<(String, Vec<Value>)> {
    let mut files = Vec::new();
    for o in manifest["output"].as_array().expect("output") {
        let url = o["url"].as_str().unwrap();
        let needs = manifest["requiresAccessToken"].as_bool().unwrap();
        let resp = authed(c.get(url), if needs { token } else { None }).send().expect("download");
        assert_eq!(resp.status(), 200, "GET {url}");
        let text = resp.text().unwrap();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).expect("NDJSON line")).collect();
        assert_eq!(lines.len() as u64, o["count"].as_u64().unwrap(), "count of {url}");
        files.push((o["type"].as_str().unwrap().to_string(), lines));
    }
    files
}

/// Kick-off, wait, download.
pub fn export(c: &Client, url: &str, body: Option<&Value>, token: Option<&str>) -> Export {
    let status_url = kick_off(c, url, body, token);
    let manifest = wait(c, &status_url, token, 120);
    let files = download(c, &manifest, token);
    Export { status_url, manifest, files }
}
