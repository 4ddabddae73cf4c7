//! The `kiln-bench` command line: `generate`, `run` (load + scenarios + report) and `report`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kiln_bench::gen::{self, Profile};
use kiln_bench::report::Report;
use kiln_bench::scenarios;
use kiln_bench::suite::{run_suite, SuiteOptions};

#[derive(Parser)]
#[command(name = "kiln-bench", about = "Data generator, load generator and report for FHIR servers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write the synthetic data set as NDJSON files (one per resource type) or transaction Bundles.
    Generate {
        #[arg(long, default_value_t = 1000)]
        patients: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
        /// `ndjson` or `bundles`.
        #[arg(long, default_value = "ndjson")]
        format: String,
        /// Entries per transaction Bundle (with --format bundles).
        #[arg(long, default_value_t = 1000)]
        bundle_size: usize,
    },
    /// Load data (optional), run scenarios against a FHIR base URL, write the report.
    Run {
        /// FHIR base URL of the server (any node of a cluster, or any FHIR server).
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        base: String,
        #[arg(long, default_value_t = 1000)]
        patients: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Load the generated data set first (PUT at stable ids).
        #[arg(long)]
        load: bool,
        #[arg(long, default_value_t = 32)]
        load_concurrency: usize,
        /// Comma-separated scenario names, or "all".
        #[arg(long, default_value = "all")]
        scenarios: String,
        /// Comma-separated client counts.
        #[arg(long, default_value = "1,4,16,64")]
        clients: String,
        #[arg(long, default_value_t = 10.0)]
        duration_secs: f64,
        #[arg(long, default_value_t = 2.0)]
        warmup_secs: f64,
        /// Stop each run after this many recorded requests.
        #[arg(long)]
        requests: Option<u64>,
        /// Open loop at this many requests/s (default: closed loop).
        #[arg(long)]
        rate: Option<f64>,
        /// Sample this server process's RSS (local servers).
        #[arg(long)]
        server_pid: Option<u32>,
        /// Send `Authorization: Bearer TOKEN` with every request.
        #[arg(long, env = "KILN_BENCH_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
    },
    /// One Bulk Data export: kick-off to manifest (resources/s), then every file downloaded.
    Export {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        base: String,
        /// The kick-off path and parameters.
        #[arg(long, default_value = "/$export")]
        path: String,
        /// Skip downloading the files.
        #[arg(long)]
        no_download: bool,
        /// Sample this server process's RSS (local servers).
        #[arg(long)]
        server_pid: Option<u32>,
        #[arg(long, env = "KILN_BENCH_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// One raw Binary of --mib MiB uploaded and read back (MB/s, server RSS).
    Binary {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        base: String,
        #[arg(long, default_value_t = 100)]
        mib: u64,
        #[arg(long)]
        server_pid: Option<u32>,
        #[arg(long, env = "KILN_BENCH_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Scale run: load the data set by transaction Bundles, then scenarios against the cluster's
    /// leader (creates also through a follower), sampling every node's RSS and measuring its data
    /// folder; writes scale.md, scale.json, rss.svg and the scenario report.
    Scale {
        /// The leader's FHIR base URL.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        base: String,
        /// A follower's FHIR base URL (creates are measured there too).
        #[arg(long)]
        follower: Option<String>,
        /// 20,000 patients are about 10^6 resources.
        #[arg(long, default_value_t = 20_000)]
        patients: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Skip the load (the data is already there).
        #[arg(long)]
        no_load: bool,
        #[arg(long, default_value_t = 1000)]
        bundle_size: usize,
        #[arg(long, default_value_t = 2)]
        load_concurrency: usize,
        #[arg(long, default_value = "mixed-crud,read,search-token,search-count,create")]
        scenarios: String,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        #[arg(long, default_value_t = 15.0)]
        duration_secs: f64,
        #[arg(long, default_value_t = 3.0)]
        warmup_secs: f64,
        /// Node pids to sample, NAME=PID comma-separated (e.g. node1=123,node2=124).
        #[arg(long, default_value = "")]
        pids: String,
        /// Node data folders to measure, NAME=DIR comma-separated.
        #[arg(long, default_value = "")]
        data_dirs: String,
        #[arg(long, env = "KILN_BENCH_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[arg(long, default_value = "bench-results/scale")]
        out: PathBuf,
    },
    /// Normal clients measured alone, then beside hostile authenticated clients (history batches,
    /// batches of searches, long OR lists, `_has` chains, abandoned searches); writes abuse.md and
    /// abuse.json. Load the data first (`run --load --patients N`).
    Abuse {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        base: String,
        /// Patients loaded (`pat-0` …).
        #[arg(long, default_value_t = 1000)]
        patients: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        #[arg(long, default_value_t = 16)]
        normal_clients: usize,
        #[arg(long, default_value_t = 8)]
        hostile_clients: usize,
        #[arg(long, default_value_t = 60.0)]
        duration_secs: f64,
        #[arg(long, default_value_t = 5.0)]
        warmup_secs: f64,
        /// File with the normal users' bearer tokens, one a line (client c uses line c mod n).
        #[arg(long)]
        normal_tokens: Option<PathBuf>,
        /// File with the hostile users' bearer tokens, one a line.
        #[arg(long)]
        hostile_tokens: Option<PathBuf>,
        #[arg(long)]
        server_pid: Option<u32>,
        #[arg(long, default_value = "bench-results/abuse")]
        out: PathBuf,
    },
    /// Re-render report.md and the plots from a results.json.
    Report {
        #[arg(long)]
        results: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
}

/// `a=1,b=2` → [(a, 1), (b, 2)].
fn pairs<T: std::str::FromStr>(s: &str, what: &str) -> Result<Vec<(String, T)>, String> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').ok_or_else(|| format!("{what}: '{p}' is not NAME=VALUE"))?;
            Ok((k.trim().to_string(), v.trim().parse().map_err(|_| format!("{what}: bad value in '{p}'"))?))
        })
        .collect()
}

fn list<T: std::str::FromStr>(s: &str, what: &str) -> Result<Vec<T>, String> {
    s.split(',').map(|x| x.trim().parse().map_err(|_| format!("bad {what} '{x}'"))).collect()
}

/// The non-empty lines of a file (none without a file).
fn lines(path: Option<&std::path::Path>) -> Result<Vec<String>, String> {
    let Some(path) = path else { return Ok(Vec::new()) };
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
}

#[tokio::main]
async fn main() -> Result<(), String> {
    match Cli::parse().command {
        Command::Generate { patients, seed, out, format, bundle_size } => {
            let n = match format.as_str() {
                "ndjson" => gen::write_ndjson(&out, seed, patients, Profile::default()),
                "bundles" => gen::write_bundles(&out, seed, patients, Profile::default(), bundle_size),
                other => return Err(format!("unknown --format {other}: use ndjson or bundles")),
            }
            .map_err(|e| e.to_string())?;
            println!("wrote {n} resources to {}", out.display());
        }
        Command::Run { base, patients, seed, load, load_concurrency, scenarios: names, clients, duration_secs, warmup_secs, requests, rate, server_pid, token, out } => {
            let scenarios = if names == "all" { scenarios::ALL.iter().map(|s| s.to_string()).collect() } else { list(&names, "scenario")? };
            let opts = SuiteOptions {
                base,
                patients,
                seed,
                load,
                load_concurrency,
                scenarios,
                clients: list(&clients, "client count")?,
                duration: Duration::from_secs_f64(duration_secs),
                warmup: Duration::from_secs_f64(warmup_secs),
                max_requests: requests,
                rate,
                server_pid,
                token,
                progress: true,
            };
            let report = run_suite(&opts).await.map_err(|e| e.to_string())?;
            report.write(&out).map_err(|e| e.to_string())?;
            println!("{}", report.markdown());
            println!("written to {}", out.display());
        }
        Command::Export { base, path, no_download, server_pid, token } => {
            let run = kiln_bench::export::run(&base, &path, token.as_deref(), server_pid, !no_download).await.map_err(|e| e.to_string())?;
            println!("{}", serde_json::to_string_pretty(&run).map_err(|e| e.to_string())?);
        }
        Command::Binary { base, mib, server_pid, token } => {
            let run = kiln_bench::binary::run(&base, mib, token.as_deref(), server_pid).await.map_err(|e| e.to_string())?;
            println!("{}", serde_json::to_string_pretty(&run).map_err(|e| e.to_string())?);
        }
        Command::Scale { base, follower, patients, seed, no_load, bundle_size, load_concurrency, scenarios: names, clients, duration_secs, warmup_secs, pids, data_dirs, token, out } => {
            let opts = kiln_bench::scale::ScaleOptions {
                base,
                follower,
                patients,
                seed,
                load: !no_load,
                bundle_size,
                load_concurrency,
                scenarios: list(&names, "scenario")?,
                clients,
                duration: Duration::from_secs_f64(duration_secs),
                warmup: Duration::from_secs_f64(warmup_secs),
                pids: pairs(&pids, "--pids")?,
                data_dirs: pairs(&data_dirs, "--data-dirs")?,
                token,
            };
            let report = kiln_bench::scale::run(&opts).await.map_err(|e| e.to_string())?;
            report.write(&out).map_err(|e| e.to_string())?;
            println!("{}", report.markdown());
            println!("written to {}", out.display());
        }
        Command::Abuse { base, patients, seed, normal_clients, hostile_clients, duration_secs, warmup_secs, normal_tokens, hostile_tokens, server_pid, out } => {
            let opts = kiln_bench::abuse::AbuseOptions {
                base,
                patients,
                seed,
                normal_clients,
                hostile_clients,
                duration: Duration::from_secs_f64(duration_secs),
                warmup: Duration::from_secs_f64(warmup_secs),
                normal_tokens: lines(normal_tokens.as_deref())?,
                hostile_tokens: lines(hostile_tokens.as_deref())?,
                server_pid,
            };
            let report = kiln_bench::abuse::run(&opts).await.map_err(|e| e.to_string())?;
            report.write(&out).map_err(|e| e.to_string())?;
            println!("{}", report.markdown());
            println!("written to {}", out.display());
        }
        Command::Report { results, out } => {
            let text = std::fs::read(&results).map_err(|e| e.to_string())?;
            let report: Report = serde_json::from_slice(&text).map_err(|e| e.to_string())?;
            report.write(&out).map_err(|e| e.to_string())?;
            println!("written to {}", out.display());
        }
    }
    Ok(())
}
