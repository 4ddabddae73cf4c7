//! Times search-index row extraction (`search::index::rows`: every parameter's FHIRPath
//! expression and value extraction) for every file in a folder of FHIR JSON examples.
//! Usage: cargo run --release -p kiln --example index_examples -- DIR [3.0.1]
use std::time::{Duration, Instant};
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let version = if args.get(2).map(String::as_str) == Some("3.0.1") { kiln::fhir::FhirVersion::Stu3 } else { kiln::fhir::FhirVersion::R4 };
    let t = Instant::now();
    let reg = kiln::search::params::Registry::load(version);
    eprintln!("registry loaded and compiled in {:?}", t.elapsed());
    let mut times: Vec<(Duration, String, usize)> = Vec::new();
    for e in std::fs::read_dir(&args[1]).unwrap() {
        let p = e.unwrap().path();
        let Ok(bytes) = std::fs::read(&p) else { continue };
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes).to_vec();
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else { continue };
        let Some(rt) = v["resourceType"].as_str() else { continue };
        let t = Instant::now();
        let rows = kiln::search::index::rows(&reg, rt, "x", &v);
        times.push((t.elapsed(), p.file_name().unwrap().to_string_lossy().to_string(), rows.len()));
    }
    times.sort();
    let total: Duration = times.iter().map(|t| t.0).sum();
    let rows: usize = times.iter().map(|t| t.2).sum();
    eprintln!("{} resources, total {:?}, median {:?}, p99 {:?}, {} rows ({:.1} per resource)", times.len(), total, times[times.len() / 2].0, times[times.len() * 99 / 100].0, rows, rows as f64 / times.len() as f64);
    for t in times.iter().rev().take(6) {
        eprintln!("{:?} {} ({} rows)", t.0, t.1, t.2);
    }
}
