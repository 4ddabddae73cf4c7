//! Times one step of the write path over every file in a folder of FHIR JSON examples
//! (profiling aid): `validate` (JSON-schema validation) or `index` (search index rows: every
//! parameter's FHIRPath expression and value extraction).
//! Usage: cargo run --release -p kiln --example profile_examples -- validate|index DIR [3.0.1]
use std::time::{Duration, Instant};

use kiln::fhir::{Definitions, FhirVersion};
use kiln::search::params::Registry;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some(dir)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: profile_examples validate|index DIR [3.0.1]");
        std::process::exit(2);
    };
    let version = if args.get(3).map(String::as_str) == Some("3.0.1") { FhirVersion::Stu3 } else { FhirVersion::R4 };
    let t = Instant::now();
    let defs = Definitions::load(version);
    let reg = Registry::load(version);
    eprintln!(
        "definitions and search registry loaded in {:?} (schema patched and compiled in {:?}, peak RSS {})",
        t.elapsed(),
        defs.validators.compile_time(),
        peak_rss()
    );
    // (time, file, rows or validity)
    let mut times: Vec<(Duration, String, usize)> = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let Ok(bytes) = std::fs::read(&p) else { continue };
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes).to_vec();
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else { continue };
        let Some(rt) = v["resourceType"].as_str() else { continue };
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        let t = Instant::now();
        let n = match mode.as_str() {
            "index" => kiln::search::index::rows(&reg, rt, &v).len(),
            _ => match defs.validate(rt, &v, 64) {
                Ok(()) => 1,
                Err(err) => {
                    eprintln!("INVALID {name} {err}");
                    0
                }
            },
        };
        times.push((t.elapsed(), name, n));
    }
    times.sort();
    let total: Duration = times.iter().map(|t| t.0).sum();
    let count: usize = times.iter().map(|t| t.2).sum();
    let what = if mode == "index" { "index rows" } else { "valid" };
    eprintln!(
        "{} files, total {:?}, median {:?}, p99 {:?}, {count} {what}",
        times.len(),
        total,
        times[times.len() / 2].0,
        times[times.len() * 99 / 100].0
    );
    for t in times.iter().rev().take(6) {
        eprintln!("{:?} {} ({})", t.0, t.1, t.2);
    }
    eprintln!("peak RSS of the run {}", peak_rss());
}

/// The process's peak resident set size (`VmHWM`), as Linux reports it.
fn peak_rss() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("VmHWM:")).map(|v| v.trim().to_string()).unwrap_or_else(|| "unknown".into())
}
