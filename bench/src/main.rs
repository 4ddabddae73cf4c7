//! `kiln-bench`: a small load generator for any FHIR server. Today it runs the CRUD baseline:
//! N creates (POST Patient) then N reads (GET by id), from C client threads with keep-alive
//! connections, and prints throughput and latency percentiles. (Scenarios for search, bundles,
//! history and export, the data generator and the report with plots come with the benchmark issue.)

use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;

#[derive(Parser)]
#[command(name = "kiln-bench", about = "Load generator for FHIR servers")]
struct Args {
    /// FHIR base URL, e.g. http://127.0.0.1:8080
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base: String,
    /// Requests per phase (creates, then reads).
    #[arg(long, default_value_t = 2000)]
    requests: usize,
    /// Concurrent clients (1 = sequential).
    #[arg(long, default_value_t = 1)]
    clients: usize,
}

struct Phase {
    name: &'static str,
    elapsed: Duration,
    latencies: Vec<Duration>,
    errors: usize,
}

impl Phase {
    fn print(&mut self) {
        self.latencies.sort();
        let pct = |p: f64| {
            let i = ((self.latencies.len() as f64 * p).ceil() as usize).clamp(1, self.latencies.len().max(1)) - 1;
            self.latencies.get(i).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
        };
        let ok = self.latencies.len();
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
            self.name,
            ok,
            ok as f64 / self.elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.95),
            pct(0.99),
            self.errors
        );
    }
}

fn run<F>(name: &'static str, args: &Args, work: F) -> (Phase, Vec<String>)
where
    F: Fn(&reqwest::blocking::Client, usize) -> Result<String, String> + Sync,
{
    let start = Instant::now();
    let per_client = args.requests.div_ceil(args.clients);
    let results: Vec<(Vec<Duration>, usize, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.clients)
            .map(|c| {
                let work = &work;
                s.spawn(move || {
                    let client = reqwest::blocking::Client::new();
                    let (mut lat, mut errors, mut ids) = (Vec::new(), 0, Vec::new());
                    for i in c * per_client..((c + 1) * per_client).min(args.requests) {
                        let t = Instant::now();
                        match work(&client, i) {
                            Ok(id) => {
                                lat.push(t.elapsed());
                                ids.push(id);
                            }
                            Err(e) => {
                                if errors == 0 {
                                    eprintln!("{name}: {e}");
                                }
                                errors += 1;
                            }
                        }
                    }
                    (lat, errors, ids)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("client thread")).collect()
    });
    let elapsed = start.elapsed();
    let mut phase = Phase { name, elapsed, latencies: Vec::new(), errors: 0 };
    let mut ids = Vec::new();
    for (lat, errors, i) in results {
        phase.latencies.extend(lat);
        phase.errors += errors;
        ids.extend(i);
    }
    (phase, ids)
}

fn main() {
    let args = Args::parse();
    let base = args.base.trim_end_matches('/').to_string();
    println!("| scenario | ok | req/s | p50 ms | p95 ms | p99 ms | errors |");
    println!("|---|---|---|---|---|---|---|");
    let (mut create, ids) = run("create Patient", &args, |c, i| {
        let body = json!({"resourceType": "Patient", "name": [{"family": format!("Bench{i}"), "given": ["Ana"]}], "gender": "female", "birthDate": "1980-01-01"});
        let resp = c
            .post(format!("{base}/Patient"))
            .header("content-type", "application/fhir+json")
            .header("prefer", "return=minimal")
            .body(body.to_string())
            .send()
            .map_err(|e| e.to_string())?;
        if resp.status().as_u16() != 201 {
            return Err(format!("status {}", resp.status()));
        }
        let loc = resp.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        Ok(loc.split("/Patient/").nth(1).and_then(|r| r.split('/').next()).unwrap_or_default().to_string())
    });
    create.print();
    if ids.is_empty() {
        return;
    }
    let (mut read, _) = run("read Patient", &args, |c, i| {
        let id = &ids[i % ids.len()];
        let resp = c.get(format!("{base}/Patient/{id}")).send().map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        resp.bytes().map_err(|e| e.to_string())?;
        Ok(String::new())
    });
    read.print();
}
