//! Every official example instance (npm `hl7.fhir.r4.examples@4.0.1`, `hl7.fhir.r3.examples@3.0.2`)
//! is PUT at its id and read back equal, byte for byte in canonical JSON, apart from the server's
//! `meta.versionId` / `meta.lastUpdated`. The examples the official JSON schema rejects are listed
//! with the reason in `tests/data/*-schema-rejects.txt`; the test fails if that list is not exact.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex;

use kiln::fhir::FhirVersion;
use kiln_tests::{client, fhir_packages, without_server_meta, TestNode};
use serde_json::Value;

pub struct Example {
    pub file: String,
    pub rtype: String,
    pub id: String,
    pub body: Value,
}

pub fn load(dir: &Path) -> Vec<Example> {
    let mut by_key: BTreeMap<(String, String), Example> = BTreeMap::new();
    let mut names: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    for file in names {
        if !file.ends_with(".json") || file.starts_with('.') || file == "package.json" {
            continue;
        }
        let bytes = std::fs::read(dir.join(&file)).unwrap();
        let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
        let Ok(body) = serde_json::from_slice::<Value>(bytes) else { continue };
        let (Some(rtype), Some(id)) = (body["resourceType"].as_str(), body["id"].as_str()) else { continue };
        by_key.insert((rtype.to_string(), id.to_string()), Example { file, rtype: rtype.into(), id: id.into(), body: body.clone() });
    }
    by_key.into_values().collect()
}

fn round_trip(version: FhirVersion, folder: &str, rejects_file: &str) {
    let examples = load(&fhir_packages().join(folder));
    assert!(examples.len() > 500, "{} examples found", examples.len());
    // Bundle-resources.json (R4) is 19 MB, over the 16 MiB default body limit.
    let node = TestNode::start_with(version, |c| c.limits.max_body_bytes = 64 * 1024 * 1024);
    let failures: Mutex<BTreeMap<String, String>> = Mutex::new(BTreeMap::new());
    let passed = Mutex::new(0usize);
    let chunks: Vec<&[Example]> = examples.chunks(examples.len().div_ceil(8)).collect();
    std::thread::scope(|s| {
        for chunk in chunks {
            let (node, failures, passed) = (&node, &failures, &passed);
            s.spawn(move || {
                let c = client();
                for ex in chunk {
                    let url = node.url(&format!("/{}/{}", ex.rtype, ex.id));
                    let resp = c.put(&url).header("content-type", "application/fhir+json").body(serde_json::to_vec(&ex.body).unwrap()).send().unwrap();
                    let status = resp.status().as_u16();
                    if !(200..300).contains(&status) {
                        let text = resp.text().unwrap();
                        let diag = serde_json::from_str::<Value>(&text).ok()
                            .and_then(|oo| oo["issue"][0]["diagnostics"].as_str().map(str::to_string))
                            .unwrap_or(text);
                        failures.lock().unwrap().insert(ex.file.clone(), format!("{status} {diag}"));
                        continue;
                    }
                    // A FHIR Accept: a Binary read without one answers its raw content (http.html#binary).
                    let back: Value = c.get(&url).header("accept", "application/fhir+json").send().unwrap().json().unwrap();
                    let expected = serde_json::to_string(&without_server_meta(ex.body.clone())).unwrap();
                    let got = serde_json::to_string(&without_server_meta(back)).unwrap();
                    if expected == got {
                        *passed.lock().unwrap() += 1;
                    } else {
                        failures.lock().unwrap().insert(ex.file.clone(), format!("read back differs: {}", got.chars().take(300).collect::<String>()));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    let passed = passed.into_inner().unwrap();
    eprintln!("{folder}: {passed} of {} examples round-trip; {} rejected", examples.len(), failures.len());
    let listed_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("data").join(rejects_file);
    let listed_text = std::fs::read_to_string(&listed_path).unwrap_or_default();
    let listed: BTreeSet<&str> = listed_text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()).map(|l| l.split('\t').next().unwrap()).collect();
    let failed: BTreeSet<&str> = failures.keys().map(String::as_str).collect();
    let unexpected: Vec<String> = failed.difference(&listed).map(|f| format!("{f}\t{}", failures[*f])).collect();
    let fixed: Vec<&&str> = listed.difference(&failed).collect();
    assert!(unexpected.is_empty(), "examples failing that are not listed in {rejects_file}:\n{}", unexpected.join("\n"));
    assert!(fixed.is_empty(), "examples listed in {rejects_file} now pass; remove them: {fixed:?}");
    assert!(failures.values().all(|r| r.starts_with("400 ")), "rejections must be 400 OperationOutcomes: {failures:?}");
}

#[test]
fn r4_examples_round_trip() {
    round_trip(FhirVersion::R4, "r4-examples", "r4-schema-rejects.txt");
}

#[test]
fn stu3_examples_round_trip() {
    round_trip(FhirVersion::Stu3, "r3-examples", "stu3-schema-rejects.txt");
}
