//! The `scale` run (issue #16): load the generated data set through transaction Bundles, then
//! the mixed, read, search and create scenarios against a cluster (creates also through a
//! follower), with every node's RSS sampled each second and its data folder measured. Writes
//! `scale.json`, `scale.md` and `rss.svg` (RSS per node over the run) besides the usual
//! `report.md` / `throughput.svg` / `latency-cdf.svg` of the scenarios.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::gen::{self, Profile};
use crate::load::{self, rss_kb, RunSpec};
use crate::report::{Plot, Report, Row};
use crate::scenarios::{self, Target};
use crate::BenchError;

/// What the run is pointed at.
pub struct ScaleOptions {
    /// The leader's FHIR base (load and scenarios go here).
    pub base: String,
    /// A follower's FHIR base: `create` runs there too.
    pub follower: Option<String>,
    pub patients: usize,
    pub seed: u64,
    pub load: bool,
    pub bundle_size: usize,
    pub load_concurrency: usize,
    pub scenarios: Vec<String>,
    pub clients: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// (node name, pid) of every node whose RSS is sampled.
    pub pids: Vec<(String, u32)>,
    /// (node name, folder) of every node whose data folder is measured.
    pub data_dirs: Vec<(String, PathBuf)>,
    pub token: Option<String>,
}

/// The load phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadFigures {
    pub resources: u64,
    pub bundles: u64,
    pub seconds: f64,
    pub resources_per_s: f64,
    /// Size of the same resources as NDJSON (one compact JSON line each).
    pub ndjson_bytes: u64,
}

/// Everything a scale run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleReport {
    pub date: String,
    pub patients: usize,
    pub load: Option<LoadFigures>,
    /// Node → bytes in its data folder after the load and after the scenarios.
    pub data_after_load: Vec<(String, u64)>,
    pub data_after_run: Vec<(String, u64)>,
    /// Node → highest RSS seen (MiB).
    pub rss_max_mib: Vec<(String, f64)>,
    /// Node → (seconds since start, RSS MiB) samples.
    pub rss_samples: Series,
    /// Scenario rows (`create@follower` for creates through the follower).
    pub rows: Vec<Row>,
}

/// Node → (seconds, RSS MiB) samples.
type Series = Vec<(String, Vec<(f64, f64)>)>;

/// Samples every pid's RSS once a second until dropped.
struct Sampler {
    samples: Arc<Mutex<Series>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    fn start(pids: &[(String, u32)]) -> Sampler {
        let samples = Arc::new(Mutex::new(pids.iter().map(|(n, _)| (n.clone(), Vec::new())).collect::<Vec<_>>()));
        let (s, pids) = (samples.clone(), pids.to_vec());
        let started = Instant::now();
        let task = tokio::spawn(async move {
            loop {
                let t = started.elapsed().as_secs_f64();
                if let Ok(mut all) = s.lock() {
                    for (i, (_, pid)) in pids.iter().enumerate() {
                        if let Some(kb) = rss_kb(*pid) {
                            all[i].1.push((t, kb as f64 / 1024.0));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        Sampler { samples, task }
    }

    fn finish(self) -> Series {
        self.task.abort();
        self.samples.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Bytes under `dir` (recursively).
pub fn folder_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => folder_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// The generated data set as transaction Bundles of `size` entries (PUT at stable ids), each with
/// its resource count and NDJSON size, produced lazily (10^6 resources never sit in memory).
pub fn bundles(seed: u64, patients: usize, size: usize) -> impl Iterator<Item = (Value, usize, u64)> {
    let profile = Profile::default();
    let mut resources = gen::shared(seed, patients).into_iter().chain((0..patients).flat_map(move |i| gen::patient(seed, patients, i, profile)));
    std::iter::from_fn(move || {
        let mut entries = Vec::with_capacity(size);
        let mut ndjson = 0u64;
        for r in resources.by_ref().take(size.max(1)) {
            ndjson += serde_json::to_vec(&r).map(|b| b.len() as u64 + 1).unwrap_or(0);
            let url = format!("{}/{}", r["resourceType"].as_str().unwrap_or_default(), r["id"].as_str().unwrap_or_default());
            entries.push(json!({"resource": r, "request": {"method": "PUT", "url": url}}));
        }
        if entries.is_empty() {
            return None;
        }
        let n = entries.len();
        Some((json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}), n, ndjson))
    })
}

async fn load_bundles(t: &Target, o: &ScaleOptions) -> Result<LoadFigures, BenchError> {
    let started = Instant::now();
    let mut stream = futures::stream::iter(bundles(o.seed, o.patients, o.bundle_size))
        .map(|(bundle, n, ndjson)| {
            let t = t.clone();
            async move {
                let resp = t.client.post(&t.base).header("content-type", "application/fhir+json").json(&bundle).send().await?;
                let status = resp.status().as_u16();
                if status != 200 {
                    let body = resp.text().await.unwrap_or_default();
                    return Err(BenchError::Status { what: "a transaction Bundle".into(), status, body: body.chars().take(500).collect() });
                }
                Ok::<_, BenchError>((n, ndjson))
            }
        })
        .buffer_unordered(o.load_concurrency.max(1));
    let (mut resources, mut bundles, mut ndjson_bytes) = (0u64, 0u64, 0u64);
    while let Some(done) = stream.next().await {
        let (n, b) = done?;
        resources += n as u64;
        bundles += 1;
        ndjson_bytes += b;
        if bundles % 50 == 0 {
            eprintln!("loaded {resources} resources ({:.0}/s)", resources as f64 / started.elapsed().as_secs_f64());
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(LoadFigures { resources, bundles, seconds, resources_per_s: resources as f64 / seconds.max(1e-9), ndjson_bytes })
}

fn sizes(o: &ScaleOptions) -> Vec<(String, u64)> {
    o.data_dirs.iter().map(|(n, d)| (n.clone(), folder_bytes(d))).collect()
}

/// Runs the whole scale run.
pub async fn run(o: &ScaleOptions) -> Result<ScaleReport, BenchError> {
    let sampler = Sampler::start(&o.pids);
    let target = Target::new(&o.base, o.patients, o.seed, o.token.as_deref())?;
    let load = if o.load { Some(load_bundles(&target, o).await?) } else { None };
    let data_after_load = sizes(o);
    let mut rows = Vec::new();
    let mut runs: Vec<(String, &'static str, Arc<Target>)> = Vec::new();
    for name in &o.scenarios {
        let Some(name) = scenarios::ALL.iter().copied().find(|s| s == name) else {
            return Err(BenchError::Invalid(format!("unknown scenario '{name}'; known: {}", scenarios::ALL.join(", "))));
        };
        runs.push((name.to_string(), name, Arc::new(target.clone())));
        if let (Some(f), "create") = (&o.follower, name) {
            runs.push(("create@follower".into(), name, Arc::new(Target::new(f, o.patients, o.seed, o.token.as_deref())?)));
        }
    }
    for (label, name, t) in runs {
        let spec = RunSpec { clients: o.clients, duration: o.duration, warmup: o.warmup, max_requests: None, rate: None, server_pid: o.pids.first().map(|p| p.1) };
        let m = load::run(&spec, move |c, i| scenarios::step(t.clone(), name, c, i)).await;
        let row = Row::from_measured(&label, o.clients, "closed".into(), &m);
        eprintln!("{label:18} clients={:<4} {:>9.0} req/s  p50 {:.2} ms  p99 {:.2} ms  errors {}", o.clients, row.rps, row.p50_ms, row.p99_ms, row.errors);
        rows.push(row);
    }
    let rss_samples = sampler.finish();
    let rss_max_mib = rss_samples.iter().map(|(n, s)| (n.clone(), s.iter().map(|p| p.1).fold(0.0, f64::max))).collect();
    Ok(ScaleReport {
        date: time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
        patients: o.patients,
        load,
        data_after_load,
        data_after_run: sizes(o),
        rss_max_mib,
        rss_samples,
        rows,
    })
}

impl ScaleReport {
    /// Writes `scale.json`, `scale.md`, `rss.svg` and the scenario report into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), BenchError> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("scale.json"), serde_json::to_vec_pretty(self)?)?;
        std::fs::write(dir.join("scale.md"), self.markdown())?;
        let plot = Plot { caption: "RSS per node during the scale run", x_desc: "seconds", y_desc: "RSS MiB", markers: false };
        plot.draw(&dir.join("rss.svg"), self.rss_samples.clone())?;
        let scenarios = Report {
            date: self.date.clone(),
            base: String::new(),
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            patients: self.patients,
            seed: 0,
            loaded: None,
            load_resources_per_s: None,
            rows: self.rows.clone(),
            skipped: Vec::new(),
        };
        scenarios.write(dir)
    }

    pub fn markdown(&self) -> String {
        let mb = |b: u64| b as f64 / 1_000_000.0;
        let mut s = format!("# kiln-bench scale\n\n- date: {}\n- data: {} patients\n", self.date, self.patients);
        if let Some(l) = &self.load {
            s += &format!(
                "- load: {} resources in {} transaction Bundles, {:.1} s, **{:.0} resources/s**; as NDJSON {:.1} MB\n",
                l.resources,
                l.bundles,
                l.seconds,
                l.resources_per_s,
                mb(l.ndjson_bytes)
            );
        }
        let ndjson = self.load.as_ref().map(|l| l.ndjson_bytes as f64).unwrap_or(0.0);
        s += "\n| node | data after load MB | × NDJSON | data after run MB | RSS max MiB |\n|---|---|---|---|---|\n";
        for (i, (n, b)) in self.data_after_load.iter().enumerate() {
            let ratio = if ndjson > 0.0 { format!("{:.2}", *b as f64 / ndjson) } else { "-".into() };
            let after = self.data_after_run.get(i).map(|x| format!("{:.1}", mb(x.1))).unwrap_or_default();
            let rss = self.rss_max_mib.iter().find(|r| &r.0 == n).map(|r| format!("{:.0}", r.1)).unwrap_or_else(|| "-".into());
            s += &format!("| {n} | {:.1} | {ratio} | {after} | {rss} |\n", mb(*b));
        }
        s += "\n| scenario | clients | req/s | p50 ms | p95 ms | p99 ms | errors |\n|---|---|---|---|---|---|---|\n";
        for r in &self.rows {
            s += &format!("| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} |\n", r.scenario, r.clients, r.rps, r.p50_ms, r.p95_ms, r.p99_ms, r.errors);
        }
        s += "\nPlots: `rss.svg` (RSS per node over the run), `throughput.svg`, `latency-cdf.svg`.\n";
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_cover_the_data_set_once_with_its_ndjson_size() {
        let patients = 3;
        let (pracs, orgs) = gen::shared_counts(patients);
        let all: Vec<_> = bundles(7, patients, 40).collect();
        let total: usize = all.iter().map(|b| b.1).sum();
        assert_eq!(total, pracs + orgs + patients * 50);
        assert!(all.iter().all(|b| b.1 <= 40 && b.0["entry"].as_array().map(Vec::len) == Some(b.1)));
        let ndjson: u64 = gen::shared(7, patients)
            .into_iter()
            .chain((0..patients).flat_map(|i| gen::patient(7, patients, i, Profile::default())))
            .map(|r| serde_json::to_vec(&r).unwrap().len() as u64 + 1)
            .sum();
        assert_eq!(all.iter().map(|b| b.2).sum::<u64>(), ndjson);
        assert_eq!(all[0].0["entry"][0]["request"]["method"], "PUT");
    }

    #[test]
    fn folder_bytes_counts_nested_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("a/b")).unwrap();
        std::fs::write(dir.path().join("a/b/f"), vec![0u8; 1000]).unwrap();
        std::fs::write(dir.path().join("g"), vec![0u8; 24]).unwrap();
        assert_eq!(folder_bytes(dir.path()), 1024);
    }
}
