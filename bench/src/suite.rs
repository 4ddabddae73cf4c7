//! One benchmark run: optionally load the generated data, detect what the server claims, run each
//! scenario at each client count, and collect a [`Report`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::gen::Profile;
use crate::load::{self, RunSpec};
use crate::report::{Report, Row};
use crate::scenarios::{self, Features, Target};
use crate::BenchError;

/// What to run.
#[derive(Debug, Clone)]
pub struct SuiteOptions {
    pub base: String,
    pub patients: usize,
    pub seed: u64,
    /// Load the data set before measuring.
    pub load: bool,
    pub load_concurrency: usize,
    pub scenarios: Vec<String>,
    pub clients: Vec<usize>,
    pub duration: Duration,
    pub warmup: Duration,
    pub max_requests: Option<u64>,
    pub rate: Option<f64>,
    pub server_pid: Option<u32>,
    /// Bearer token sent with every request (`Authorization: Bearer <token>`).
    pub token: Option<String>,
    /// Draw progress bars (off in tests).
    pub progress: bool,
}

fn bar(len: u64, msg: String, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    pb.set_style(ProgressStyle::with_template("{msg:28} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})").expect("valid template"));
    pb.set_message(msg);
    pb
}

pub async fn run_suite(o: &SuiteOptions) -> Result<Report, BenchError> {
    let target = Arc::new(Target::new(&o.base, o.patients, o.seed, o.token.as_deref())?);
    let features = Features::detect(&target).await?;
    let mut report = Report {
        date: time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        base: target.base.clone(),
        cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        patients: o.patients,
        seed: o.seed,
        loaded: None,
        load_resources_per_s: None,
        rows: Vec::new(),
        skipped: Vec::new(),
    };
    if o.load {
        let profile = Profile::default();
        let (pracs, orgs) = crate::gen::shared_counts(o.patients);
        let total = (pracs + orgs + o.patients * 50) as u64;
        let pb = bar(total, "loading generated data".into(), o.progress);
        let started = Instant::now();
        let n = scenarios::load(&target, profile, o.load_concurrency, &pb).await?;
        pb.finish();
        report.loaded = Some(n);
        report.load_resources_per_s = Some(n as f64 / started.elapsed().as_secs_f64());
    }
    for name in &o.scenarios {
        let Some(name) = scenarios::ALL.iter().copied().find(|s| s == name) else {
            return Err(BenchError::Invalid(format!("unknown scenario '{name}'; known: {}", scenarios::ALL.join(", "))));
        };
        if let Some(why) = features.skip_reason(name) {
            report.skipped.push((name.to_string(), why));
            continue;
        }
        for &clients in &o.clients {
            let spec = RunSpec {
                clients,
                duration: o.duration,
                warmup: o.warmup,
                max_requests: o.max_requests,
                rate: o.rate,
                server_pid: o.server_pid,
            };
            let pb = bar(0, format!("{name} × {clients}"), o.progress);
            pb.enable_steady_tick(Duration::from_millis(250));
            let t = target.clone();
            let m = load::run(&spec, move |c, i| scenarios::step(t.clone(), name, c, i)).await;
            pb.finish_and_clear();
            let mode = match o.rate {
                Some(r) => format!("open {r}/s"),
                None => "closed".into(),
            };
            let row = Row::from_measured(name, clients, mode, &m);
            if o.progress {
                eprintln!("{name:18} clients={clients:<4} {:>9.0} req/s  p50 {:.2} ms  p99 {:.2} ms  errors {}", row.rps, row.p50_ms, row.p99_ms, row.errors);
            }
            report.rows.push(row);
        }
    }
    Ok(report)
}
