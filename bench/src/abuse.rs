//! The `abuse` scenario: normal clients (each its own user, reading Patients by id and searching a
//! patient's Observations) are measured twice for the same time, first alone ("quiet") and then
//! beside hostile authenticated clients ("attack") that send what one malicious or broken app
//! sends: batches of history reads, batches of thousands of searches, long OR lists, stacked
//! `_has` chains, and costly searches abandoned after 300 ms. What the hostile clients got back
//! is counted by kind and status, so the report shows both sides: how much the normal clients
//! kept, and that the hostile requests were refused rather than served.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::load::{self, RunSpec};
use crate::report::Row;
use crate::scenarios::{self, Target};
use crate::BenchError;

/// What to run.
#[derive(Debug, Clone)]
pub struct AbuseOptions {
    pub base: String,
    /// Patients loaded (`pat-0` …), as for `run --load`.
    pub patients: usize,
    pub seed: u64,
    pub normal_clients: usize,
    pub hostile_clients: usize,
    /// Measured time of each phase.
    pub duration: Duration,
    /// Time before measuring (in the attack phase the hostile clients start at its beginning).
    pub warmup: Duration,
    /// Tokens of the normal users; client `c` uses `normal_tokens[c % len]`. Empty: no token.
    pub normal_tokens: Vec<String>,
    /// Tokens of the hostile users; hostile client `h` uses `hostile_tokens[h % len]`.
    pub hostile_tokens: Vec<String>,
    pub server_pid: Option<u32>,
}

/// The hostile kinds, in the order hostile clients take them (client `h` sends kind `h % 5`).
pub const HOSTILE: [&str; 5] = ["history-batch", "search-batch", "or-list", "has-chain", "abandoned"];

/// What the run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AbuseReport {
    pub normal_clients: usize,
    pub hostile_clients: usize,
    pub quiet: Row,
    pub attack: Row,
    /// Hostile kind → answer (status code, or `dropped` / `error: …`) → count.
    pub hostile: BTreeMap<String, BTreeMap<String, u64>>,
}

impl AbuseReport {
    /// Normal throughput under attack as a share of the quiet figure.
    pub fn throughput_kept(&self) -> f64 {
        self.attack.rps / self.quiet.rps.max(1e-9)
    }

    /// Normal p99 under attack over the quiet p99.
    pub fn p99_ratio(&self) -> f64 {
        self.attack.p99_ms / self.quiet.p99_ms.max(1e-9)
    }

    pub fn markdown(&self) -> String {
        let mut s = format!(
            "| phase | normal req/s | p50 ms | p99 ms | max ms | errors |\n|---|---|---|---|---|---|\n| quiet ({} normal) | {:.0} | {:.2} | {:.2} | {:.1} | {} |\n| attack (+{} hostile) | {:.0} | {:.2} | {:.2} | {:.1} | {} |\n\n",
            self.normal_clients, self.quiet.rps, self.quiet.p50_ms, self.quiet.p99_ms, self.quiet.max_ms, self.quiet.errors,
            self.hostile_clients, self.attack.rps, self.attack.p50_ms, self.attack.p99_ms, self.attack.max_ms, self.attack.errors,
        );
        s += &format!("Throughput kept: {:.0}% (goal ≥ 70%); p99 ratio: {:.2}× (goal ≤ 3×).\n\n", self.throughput_kept() * 100.0, self.p99_ratio());
        s += "| hostile kind | answers |\n|---|---|\n";
        for (kind, answers) in &self.hostile {
            let list: Vec<String> = answers.iter().map(|(a, n)| format!("{a}: {n}")).collect();
            s += &format!("| {kind} | {} |\n", list.join(", "));
        }
        if let Some(e) = self.attack.first_error.as_ref().or(self.quiet.first_error.as_ref()) {
            s += &format!("\nFirst normal-client error: {e}\n");
        }
        s
    }

    pub fn write(&self, dir: &std::path::Path) -> Result<(), BenchError> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("abuse.json"), serde_json::to_vec_pretty(self)?)?;
        std::fs::write(dir.join("abuse.md"), self.markdown())?;
        Ok(())
    }
}

/// One normal request: a Patient by id, or that patient's Observations (20 a page), in turn.
async fn normal_step(targets: Arc<Vec<Arc<Target>>>, client: usize, i: u64) -> Result<(), String> {
    let t = targets[client % targets.len()].clone();
    let name = if i % 2 == 0 { "read" } else { "search-reference" };
    scenarios::step(t, name, client, i).await
}

/// A batch Bundle of `n` GETs of `url`.
fn batch_of(n: usize, url: &str) -> Value {
    let entries: Vec<Value> = (0..n).map(|_| json!({"request": {"method": "GET", "url": url}})).collect();
    json!({"resourceType": "Bundle", "type": "batch", "entry": entries})
}

/// The request a hostile client of `kind` sends at iteration `i`: (method, path, body).
pub fn hostile_request(kind: &str, i: u64) -> (reqwest::Method, String, Option<Value>) {
    let values = |n: u64| (0..n).map(|v| format!("{}", 40 + (v + i) % 400)).collect::<Vec<_>>().join(",");
    match kind {
        "history-batch" => (reqwest::Method::POST, String::new(), Some(batch_of(100, "_history?_count=1000"))),
        "search-batch" => (reqwest::Method::POST, String::new(), Some(batch_of(3000, "Observation?_count=1000"))),
        "or-list" => (reqwest::Method::GET, format!("/Observation?value-quantity={}", values(1000)), None),
        "has-chain" => {
            let has: Vec<String> = (0..10).map(|k| format!("_has:Observation:subject:value-quantity=gt{}", 40 + (i + k) % 60)).collect();
            (reqwest::Method::GET, format!("/Patient?{}", has.join("&")), None)
        }
        _ => (reqwest::Method::GET, format!("/Observation?value-quantity={}&_count=1000", values(500)), None),
    }
}

/// Loops hostile client `h` until `stop`, counting its answers.
async fn hostile_loop(base: String, token: Option<String>, h: usize, stop: Arc<AtomicBool>) -> (String, BTreeMap<String, u64>) {
    let kind = HOSTILE[h % HOSTILE.len()];
    let abandon = kind == "abandoned";
    let mut answers = BTreeMap::new();
    let client = match reqwest::Client::builder()
        .default_headers(scenarios::default_headers(token.as_deref()).unwrap_or_default())
        .timeout(if abandon { Duration::from_millis(300) } else { Duration::from_secs(120) })
        .build()
    {
        Ok(c) => c,
        Err(e) => return (kind.to_string(), BTreeMap::from([(format!("error: {e}"), 1)])),
    };
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (method, path, body) = hostile_request(kind, i);
        let mut req = client.request(method, format!("{base}{path}")).header("accept", "application/fhir+json");
        if let Some(b) = body {
            req = req.header("content-type", "application/fhir+json").body(b.to_string());
        }
        let answer = match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let _ = resp.bytes().await;
                status.to_string()
            }
            Err(e) if e.is_timeout() => "dropped".to_string(),
            Err(e) => format!("error: {}", e.to_string().chars().take(60).collect::<String>()),
        };
        *answers.entry(answer).or_insert(0) += 1;
        // A refused client retries at once: the worst case, not a polite Retry-After.
        i += 1;
    }
    (kind.to_string(), answers)
}

fn targets(o: &AbuseOptions) -> Result<Vec<Arc<Target>>, BenchError> {
    let tokens: Vec<Option<&str>> = match o.normal_tokens.is_empty() {
        true => vec![None],
        false => o.normal_tokens.iter().map(|t| Some(t.as_str())).collect(),
    };
    tokens.into_iter().map(|t| Target::new(&o.base, o.patients, o.seed, t).map(Arc::new)).collect()
}

/// Runs the quiet phase, then the attack phase.
pub async fn run(o: &AbuseOptions) -> Result<AbuseReport, BenchError> {
    if o.normal_clients == 0 {
        return Err(BenchError::Invalid("--normal-clients must be at least 1".into()));
    }
    let targets = Arc::new(targets(o)?);
    let spec = RunSpec { clients: o.normal_clients, duration: o.duration, warmup: o.warmup, max_requests: None, rate: None, server_pid: o.server_pid };
    let phase = |label: &str| eprintln!("abuse: {label} phase, {:.0} s measured after {:.0} s warm-up", o.duration.as_secs_f64(), o.warmup.as_secs_f64());
    phase("quiet");
    let t = targets.clone();
    let quiet = load::run(&spec, move |c, i| normal_step(t.clone(), c, i)).await;
    let quiet = Row::from_measured("abuse-quiet", o.normal_clients, "closed".into(), &quiet);
    eprintln!("abuse: quiet {:.0} req/s, p99 {:.2} ms", quiet.rps, quiet.p99_ms);

    phase("attack");
    let stop = Arc::new(AtomicBool::new(false));
    let base = targets[0].base.clone();
    let hostiles: Vec<_> = (0..o.hostile_clients)
        .map(|h| {
            let token = (!o.hostile_tokens.is_empty()).then(|| o.hostile_tokens[h % o.hostile_tokens.len()].clone());
            tokio::spawn(hostile_loop(base.clone(), token, h, stop.clone()))
        })
        .collect();
    let t = targets.clone();
    let attack = load::run(&spec, move |c, i| normal_step(t.clone(), c, i)).await;
    stop.store(true, Ordering::Relaxed);
    let attack = Row::from_measured("abuse-attack", o.normal_clients, "closed".into(), &attack);
    eprintln!("abuse: attack {:.0} req/s, p99 {:.2} ms; waiting for the hostile clients' last answers", attack.rps, attack.p99_ms);
    let mut hostile: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for h in hostiles {
        if let Ok((kind, answers)) = h.await {
            let into = hostile.entry(kind).or_default();
            for (a, n) in answers {
                *into.entry(a).or_insert(0) += n;
            }
        }
    }
    Ok(AbuseReport { normal_clients: o.normal_clients, hostile_clients: o.hostile_clients, quiet, attack, hostile })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_requests_have_the_shapes_the_issue_names() {
        let (m, path, body) = hostile_request("history-batch", 0);
        assert_eq!((m, path.as_str()), (reqwest::Method::POST, ""));
        assert_eq!(body.unwrap()["entry"].as_array().unwrap().len(), 100);
        assert_eq!(hostile_request("search-batch", 0).2.unwrap()["entry"].as_array().unwrap().len(), 3000);
        let (_, or, _) = hostile_request("or-list", 3);
        assert_eq!(or.split_once('=').unwrap().1.split(',').count(), 1000);
        assert_eq!(hostile_request("has-chain", 1).1.matches("_has:").count(), 10);
        assert!(hostile_request("abandoned", 0).1.contains("_count=1000"));
    }
}
