//! Times schema validation of every file in a folder of FHIR JSON examples (profiling aid).
//! Usage: cargo run --release -p kiln --example validate_examples -- DIR [3.0.1]
use std::time::Instant;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let version = if args.get(2).map(String::as_str) == Some("3.0.1") { kiln::fhir::FhirVersion::Stu3 } else { kiln::fhir::FhirVersion::R4 };
    let t = Instant::now();
    let defs = kiln::fhir::Definitions::load(version);
    eprintln!("load {:?}", t.elapsed());
    let mut times = Vec::new();
    for e in std::fs::read_dir(&args[1]).unwrap() {
        let p = e.unwrap().path();
        let Ok(bytes) = std::fs::read(&p) else { continue };
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes).to_vec();
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else { continue };
        let Some(rt) = v["resourceType"].as_str() else { continue };
        let t0 = Instant::now();
        let _ = defs.validate(rt, &v, 64);
        let first = t0.elapsed();
        let t = Instant::now();
        let ok = defs.validate(rt, &v, 64).is_ok();
        let _ = first;
        if !ok { if let Err(e) = defs.validate(rt, &v, 64) { eprintln!("INVALID {} {}", p.file_name().unwrap().to_string_lossy(), e); } }
        times.push((t.elapsed(), p.file_name().unwrap().to_string_lossy().to_string(), ok));
    }
    times.sort();
    let total: std::time::Duration = times.iter().map(|t| t.0).sum();
    eprintln!("{} files, total {:?}, median {:?}, invalid {}", times.len(), total, times[times.len() / 2].0, times.iter().filter(|t| !t.2).count());
    for t in times.iter().rev().take(8) { eprintln!("{:?} {} {}", t.0, t.1, t.2); }
}
