//! Bulk `$export` on real nodes: every level and parameter, the manifest a Bulk Data client
//! reads, consistency with the kick-off instant under concurrent writes and deletes, cancel,
//! expiry, owners and scopes, and a leader killed with -9 in the middle of an export on a
//! 3-node cluster (the manifest stays exact: no line lost, none twice).

use std::collections::BTreeSet;
use std::time::Duration;

use kiln::fhir::FhirVersion;
use kiln_tests::bulk::{self, Export};
use kiln_tests::{client, json, TestCluster, TestNode};
use reqwest::blocking::Client;
use serde_json::{json, Value};

/// Writes `resources` in transaction bundles of 500 through `base`.
fn load(c: &Client, base: &str, resources: &[Value]) {
    for chunk in resources.chunks(500) {
        let entries: Vec<Value> = chunk
            .iter()
            .map(|r| json!({"resource": r, "request": {"method": "PUT", "url": format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap())}}))
            .collect();
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        let resp = c.post(format!("{base}/")).header("content-type", "application/fhir+json").body(bundle.to_string()).send().unwrap();
        assert_eq!(resp.status(), 200, "{}", resp.text().unwrap());
    }
}

fn patient(i: usize) -> Value {
    json!({"resourceType": "Patient", "id": format!("p{i}"), "name": [{"family": format!("Fam{i}")}], "gender": if i % 2 == 0 { "female" } else { "male" }})
}

fn observation(i: usize, pid: usize, code: &str) -> Value {
    json!({"resourceType": "Observation", "id": format!("o{i}"), "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": code}]}, "subject": {"reference": format!("Patient/p{pid}")}})
}

fn count(c: &Client, url: &str) -> u64 {
    json(c.get(url).send().unwrap())["total"].as_u64().unwrap()
}

fn ids_of(e: &Export, rtype: &str) -> BTreeSet<String> {
    e.of(rtype).iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[test]
fn every_level_and_parameter_answers_as_the_bulk_data_ig_says() {
    let node = TestNode::start();
    let c = client();
    let mut data: Vec<Value> = (0..6).map(patient).collect();
    data.extend((0..12).map(|i| observation(i, i % 6, if i % 3 == 0 { "8867-4" } else { "1234-5" })));
    data.push(json!({"resourceType": "Organization", "id": "org1", "name": "Acme"}));
    data.push(json!({"resourceType": "Group", "id": "g1", "type": "person", "actual": true, "member": [
        {"entity": {"reference": "Patient/p0"}},
        {"entity": {"reference": "Patient/p1"}, "inactive": true},
        {"entity": {"reference": "Patient/p2"}, "period": {"start": "2001-01-01", "end": "2002-01-01"}},
        {"entity": {"reference": "Patient/p3"}, "period": {"start": "2001-01-01"}}
    ]}));
    load(&c, &node.base, &data);

    // System level, every type: a client's counts per type equal what search counts.
    let all = bulk::export(&c, &node.url("/$export"), None, None);
    assert_eq!(all.manifest["requiresAccessToken"], true);
    assert_eq!(all.manifest["request"], node.url("/$export"));
    assert!(all.manifest["transactionTime"].as_str().unwrap().ends_with('Z'));
    assert_eq!(all.manifest["error"], json!([]));
    for t in ["Patient", "Observation", "Organization", "Group"] {
        assert_eq!(all.of(t).len() as u64, count(&c, &node.url(&format!("/{t}?_summary=count"))), "{t}");
    }
    assert_eq!(all.refs().len(), 20);
    // Each line is the stored resource, unchanged.
    let p0 = json(c.get(node.url("/Patient/p0")).send().unwrap());
    assert_eq!(all.of("Patient").into_iter().find(|r| r["id"] == "p0").unwrap(), &p0);

    // _type, _typeFilter (ORed per type), _elements.
    let f = bulk::export(&c, &node.url("/$export?_type=Observation,Patient&_typeFilter=Observation%3Fcode%3D8867-4,Patient%3Fgender%3Dfemale&_elements=Observation.code,id"), None, None);
    assert_eq!(ids_of(&f, "Observation"), set(&["o0", "o3", "o6", "o9"]));
    assert_eq!(ids_of(&f, "Patient"), set(&["p0", "p2", "p4"]));
    assert_eq!(f.files.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(), vec!["Observation", "Patient"], "in _type order");
    let o = f.of("Observation")[0];
    assert!(o.get("code").is_some() && o.get("subject").is_none(), "{o}");
    assert_eq!(o["meta"]["tag"][0]["code"], "SUBSETTED");

    // Patient level: the Patient compartment (Organization is not in it).
    let pl = bulk::export(&c, &node.url("/Patient/$export"), None, None);
    assert_eq!(pl.of("Patient").len(), 6);
    assert_eq!(pl.of("Observation").len(), 12);
    assert!(pl.of("Organization").is_empty());
    // ... limited to `patient` (POST with a Parameters body).
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": "Patient/p1"}},
        {"name": "_type", "valueString": "Patient,Observation"},
        {"name": "_outputFormat", "valueString": "application/fhir+ndjson"}
    ]});
    let one = bulk::export(&c, &node.url("/Patient/$export"), Some(&params), None);
    assert_eq!(ids_of(&one, "Patient"), set(&["p1"]));
    assert_eq!(ids_of(&one, "Observation"), set(&["o1", "o7"]));

    // Group level: active members whose period has not ended, and their compartments.
    let g = bulk::export(&c, &node.url("/Group/g1/$export?_type=Patient,Observation"), None, None);
    assert_eq!(ids_of(&g, "Patient"), set(&["p0", "p3"]));
    assert_eq!(ids_of(&g, "Observation"), set(&["o0", "o3", "o6", "o9"]));

    // _since: only what changed after it (the previous export's transactionTime).
    let since = all.manifest["transactionTime"].as_str().unwrap().to_string();
    load(&c, &node.base, &[json!({"resourceType": "Patient", "id": "p5", "active": true})]);
    let inc = bulk::export(&c, &node.url(&format!("/$export?_type=Patient,Observation&_since={}", since.replace('+', "%2B"))), None, None);
    assert_eq!(inc.refs(), vec!["Patient/p5"]);

    // Refused parameters: 400 OperationOutcomes, nothing started.
    for bad in [
        "/$export?_outputFormat=text/csv",
        "/$export?_type=NotAType",
        "/$export?_since=yesterday",
        "/$export?_typeFilter=Observation%3Fnope%3D1",
        "/$export?patient=Patient/p1",
        "/$export?_unknown=1",
        "/Patient/$export?_type=Organization",
    ] {
        let resp = c.get(node.url(bad)).send().unwrap();
        assert_eq!(resp.status(), 400, "{bad}");
        assert_eq!(json(resp)["resourceType"], "OperationOutcome");
    }
    assert_eq!(c.get(node.url("/Group/nope/$export")).send().unwrap().status(), 404);

    // Lenient handling ignores an unknown parameter and says so in the manifest's error file.
    let resp = c.get(node.url("/$export?_type=Organization&_unknown=1")).header("prefer", "respond-async, handling=lenient").send().unwrap();
    assert_eq!(resp.status(), 202);
    let status_url = resp.headers()["content-location"].to_str().unwrap().to_string();
    let m = bulk::wait(&c, &status_url, None, 60);
    let err = c.get(m["error"][0]["url"].as_str().unwrap()).send().unwrap().text().unwrap();
    assert!(err.contains("_unknown=1") && err.contains("OperationOutcome"), "{err}");

    // The CapabilityStatement lists the export operations.
    let cs = json(c.get(node.url("/metadata")).send().unwrap());
    assert_eq!(cs["rest"][0]["operation"][0]["name"], "export");
    assert!(cs["instantiates"][0].as_str().unwrap().contains("bulkdata"));
    let group = cs["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "Group").unwrap();
    assert!(group["operation"].as_array().unwrap().iter().any(|o| o["name"] == "export"), "{group}");
}

#[test]
fn an_export_holds_exactly_the_data_of_its_kick_off_instant() {
    // Small parts: the export runs through many checkpoints while the writes go on.
    let node = TestNode::start_with(FhirVersion::R4, |cfg| cfg.export.part_max_lines = 25);
    let c = client();
    load(&c, &node.base, &(0..400).map(patient).collect::<Vec<_>>());
    // Deleted before the kick-off: never in the export.
    for i in 0..10 {
        assert!(c.delete(node.url(&format!("/Patient/p{i}"))).send().unwrap().status().is_success());
    }
    let status_url = bulk::kick_off(&c, &node.url("/$export?_type=Patient"), None, None);
    // After the kick-off: updates, deletes and creates must not leak in.
    for i in 10..110 {
        let mut p = patient(i);
        p["name"][0]["family"] = json!("Changed");
        let r = c.put(node.url(&format!("/Patient/p{i}"))).header("content-type", "application/fhir+json").body(p.to_string()).send().unwrap();
        assert_eq!(r.status(), 200);
    }
    for i in 110..160 {
        assert!(c.delete(node.url(&format!("/Patient/p{i}"))).send().unwrap().status().is_success());
    }
    load(&c, &node.base, &(400..450).map(patient).collect::<Vec<_>>());
    let manifest = bulk::wait(&c, &status_url, None, 120);
    let metrics = c.get(node.url("/metrics")).send().unwrap().text().unwrap();
    for series in ["kiln_export_jobs{status=\"complete\"} 1", "kiln_export_jobs{status=\"active\"} 0"] {
        assert!(metrics.lines().any(|l| l == series), "{series} in:\n{metrics}");
    }
    let files = bulk::download(&c, &manifest, None);
    assert!(manifest["output"].as_array().unwrap().len() >= 16, "split in parts of 25 lines");
    let lines: Vec<&Value> = files.iter().flat_map(|(_, l)| l.iter()).collect();
    let ids: BTreeSet<String> = lines.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(lines.len(), 390, "no line twice");
    assert_eq!(ids, (10..400).map(|i| format!("p{i}")).collect::<BTreeSet<_>>());
    for r in lines {
        assert_eq!(r["meta"]["versionId"], "1", "the version as of the kick-off: {r}");
        assert_ne!(r["name"][0]["family"], "Changed");
    }
}

#[test]
fn cancel_deletes_the_files_and_finished_jobs_expire() {
    let node = TestNode::start_with(FhirVersion::R4, |cfg| cfg.export.expiry_secs = 2);
    let c = client();
    load(&c, &node.base, &(0..20).map(patient).collect::<Vec<_>>());
    let export_dir = node.cfg.data_dir.join("export");
    let e = bulk::export(&c, &node.url("/$export?_type=Patient"), None, None);
    let job = e.status_url.rsplit('/').next().unwrap().to_string();
    assert!(export_dir.join(&job).join("Patient-0.ndjson").exists());
    // Expiry: the files go, then the status URL answers 404.
    let start = std::time::Instant::now();
    while c.get(&e.status_url).send().unwrap().status() != 404 {
        assert!(start.elapsed() < Duration::from_secs(30), "job did not expire");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(!export_dir.join(&job).exists());
    assert_eq!(c.get(e.manifest["output"][0]["url"].as_str().unwrap()).send().unwrap().status(), 404);

    // Cancel: 202, then 404 at once, and the files are deleted.
    let e = bulk::export(&c, &node.url("/$export?_type=Patient"), None, None);
    let job = e.status_url.rsplit('/').next().unwrap().to_string();
    assert_eq!(c.delete(&e.status_url).send().unwrap().status(), 202);
    assert_eq!(c.get(&e.status_url).send().unwrap().status(), 404);
    assert_eq!(c.delete(&e.status_url).send().unwrap().status(), 404);
    let start = std::time::Instant::now();
    while export_dir.join(&job).exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "files of a cancelled job stay");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(c.get(node.url("/_export/00000000-0000-0000-0000-000000000000")).send().unwrap().status(), 404);
    assert_eq!(c.get(node.url("/_export/..%2F..%2Fetc")).send().unwrap().status(), 404);
}

#[test]
fn a_leader_killed_mid_export_leaves_an_exact_manifest() {
    let mut cluster = TestCluster::start_with(3, |cfg| cfg.export.part_max_lines = 20);
    let c = client();
    let leader = cluster.leader();
    let total = 3000;
    load(&c, &cluster.base(leader), &(0..total).map(patient).collect::<Vec<_>>());
    let status_url = bulk::kick_off(&c, &cluster.url(leader, "/$export?_type=Patient"), None, None);
    let job = status_url.rsplit('/').next().unwrap().to_string();
    // Wait until some parts are checkpointed, then kill the leader that writes them.
    let start = std::time::Instant::now();
    loop {
        let r = c.get(&status_url).send().unwrap();
        let progress = r.headers().get("x-progress").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
        let written: u64 = progress.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
        assert_eq!(r.status(), 202, "the export finished before the leader could be killed; it must be slower than this test's polling");
        if written >= 200 {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "no progress: {progress}");
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.kill9(leader);
    let survivor = cluster.running()[0];
    let new_leader = cluster.leader();
    assert_ne!(new_leader, leader);
    let status_url = cluster.url(survivor, &format!("/_export/{job}"));
    let manifest = bulk::wait(&c, &status_url, None, 120);
    // Parts written by the dead leader are served by the survivors from their replicas.
    let files = bulk::download(&c, &manifest, None);
    let ids: Vec<String> = files.iter().flat_map(|(_, l)| l.iter()).map(|r| r["id"].as_str().unwrap().to_string()).collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(ids.len(), total, "no line twice, none missing");
    assert_eq!(unique.len(), total);
    let counted: u64 = manifest["output"].as_array().unwrap().iter().map(|o| o["count"].as_u64().unwrap()).sum();
    assert_eq!(counted, total as u64);
    // The dead node comes back and serves the same files.
    cluster.restart(leader);
    let again = cluster.url(leader, &format!("/_export/{job}"));
    let start = std::time::Instant::now();
    while c.get(&again).send().map(|r| r.status().as_u16()).unwrap_or(0) != 200 {
        assert!(start.elapsed() < Duration::from_secs(60), "restarted node does not answer the status");
        std::thread::sleep(Duration::from_millis(200));
    }
    let m2: Value = json(c.get(&again).send().unwrap());
    assert_eq!(m2["output"].as_array().unwrap().len(), manifest["output"].as_array().unwrap().len());
    let f2 = bulk::download(&c, &m2, None);
    assert_eq!(f2, files, "every node serves the same bytes");
    cluster.converged(&cluster.ids(), 30);
}

#[test]
fn only_the_caller_who_started_a_job_follows_it_and_patient_scopes_cannot_export() {
    let keys = tempfile::tempdir().unwrap();
    let node = crate::auth::secured_node(keys.path());
    let c = client();
    let admin = crate::auth::token(json!({"cognito:groups": ["practitioner"], "sub": "alice"}));
    let other = crate::auth::token(json!({"cognito:groups": ["practitioner"], "sub": "bob"}));
    let patient_scoped = crate::auth::token(json!({"scope": "patient/*.read", "patient": "p1", "sub": "carol"}));
    let r = c.put(node.url("/Patient/p1")).bearer_auth(&admin).header("content-type", "application/fhir+json").body(patient(1).to_string()).send().unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(c.get(node.url("/$export")).send().unwrap().status(), 401);
    let e = bulk::export(&c, &node.url("/$export?_type=Patient"), None, Some(&admin));
    assert_eq!(e.of("Patient").len(), 1);
    // Another caller sees neither the status nor the files.
    assert_eq!(c.get(&e.status_url).bearer_auth(&other).send().unwrap().status(), 404);
    assert_eq!(c.get(e.manifest["output"][0]["url"].as_str().unwrap()).bearer_auth(&other).send().unwrap().status(), 404);
    assert_eq!(c.get(e.manifest["output"][0]["url"].as_str().unwrap()).send().unwrap().status(), 401);
    assert_eq!(c.delete(&e.status_url).bearer_auth(&other).send().unwrap().status(), 404);
    // patient/ scopes reach one compartment, not a bulk export.
    let r = c.get(node.url("/Patient/$export?_type=Patient")).bearer_auth(&patient_scoped).send().unwrap();
    assert_eq!(r.status(), 403);
    // A filter may not read, through _has or a chain, a type the caller may not search.
    let auditor = crate::auth::token(json!({"cognito:groups": ["auditor"], "sub": "dave"}));
    assert_eq!(bulk::export(&c, &node.url("/$export?_type=Patient"), None, Some(&auditor)).of("Patient").len(), 1);
    let r = c.get(node.url("/$export?_type=Patient&_typeFilter=Patient%3F_has%3AObservation%3Asubject%3Acode%3D1234-5")).bearer_auth(&auditor).send().unwrap();
    assert_eq!(r.status(), 403);
    // A token without sub is not accepted at all (so it cannot own a job).
    let anonymous = kiln::auth::token::sign_hs256(b"test-secret-0123456789-0123456789-abcdef", &json!({"iss": "https://issuer.example", "aud": "kiln-test", "exp": 4_000_000_000u64, "cognito:groups": ["practitioner"]})).unwrap();
    assert_eq!(c.get(node.url("/$export?_type=Patient")).bearer_auth(&anonymous).send().unwrap().status(), 401);
}

#[test]
fn job_limits_answer_429() {
    let node = TestNode::start_with(FhirVersion::R4, |cfg| cfg.export.max_jobs_per_owner = 2);
    let c = client();
    load(&c, &node.base, &[patient(1)]);
    bulk::export(&c, &node.url("/$export?_type=Patient"), None, None);
    bulk::export(&c, &node.url("/$export?_type=Patient"), None, None);
    let r = c.get(node.url("/$export?_type=Patient")).send().unwrap();
    assert_eq!(r.status(), 429, "finished jobs count until they expire or are cancelled");
    assert_eq!(r.headers()["retry-after"], "30");
    let why = json(r)["issue"][0]["diagnostics"].as_str().unwrap().to_string();
    assert!(why.contains("max_jobs_per_owner") && !why.contains("max_active_jobs"), "{why}");
}

#[test]
fn exports_to_s3_with_presigned_urls_and_fails_clearly_when_s3_refuses() {
    let s3 = kiln_tests::S3Server::start();
    let cfg = s3.s3_config();
    let node = TestNode::start_with(FhirVersion::R4, |c| {
        c.s3 = Some(cfg);
        c.export.sink = kiln::export::config::SinkName::S3;
        c.export.part_max_lines = 40;
    });
    let c = client();
    let mut data: Vec<Value> = (0..100).map(patient).collect();
    data.extend((0..50).map(|i| observation(i, i % 100, "1234-5")));
    load(&c, &node.base, &data);
    let e = bulk::export(&c, &node.url("/$export?_type=Patient,Observation"), None, None);
    assert_eq!(e.manifest["requiresAccessToken"], false, "presigned URLs need no token");
    assert_eq!(e.of("Patient").len(), 100);
    assert_eq!(e.of("Observation").len(), 50);
    assert_eq!(e.manifest["output"].as_array().unwrap().len(), 5, "parts of at most 40: Patient in 3, Observation in 2");
    let job = e.status_url.rsplit('/').next().unwrap().to_string();
    let first = e.manifest["output"][0]["url"].as_str().unwrap().to_string();
    assert!(first.contains("X-Amz-Signature"), "{first}");
    assert!(s3.object_path(&format!("export/{job}/Patient-0.ndjson")).exists(), "the part is an object in the bucket");
    // A tampered URL is refused by the bucket itself.
    let tampered = first.replace("Patient-0", "Patient-1");
    assert_eq!(c.get(&tampered).send().unwrap().status(), 403);
    // Cancel deletes the objects.
    assert_eq!(c.delete(&e.status_url).send().unwrap().status(), 202);
    let start = std::time::Instant::now();
    while s3.object_path(&format!("export/{job}/Patient-0.ndjson")).exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "objects of a cancelled job stay");
        std::thread::sleep(Duration::from_millis(200));
    }

    // Wrong credentials: the job fails with the reason; the node keeps serving.
    let wrong = s3.s3_config_with_secret("not-the-secret");
    let bad = TestNode::start_with(FhirVersion::R4, |c| {
        c.s3 = Some(wrong);
        c.export.sink = kiln::export::config::SinkName::S3;
    });
    load(&c, &bad.base, &(0..5).map(patient).collect::<Vec<_>>());
    let status_url = bulk::kick_off(&c, &bad.url("/$export?_type=Patient"), None, None);
    let start = std::time::Instant::now();
    let failed = loop {
        let r = c.get(&status_url).send().unwrap();
        if r.status() != 202 {
            break r;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the job neither failed nor finished");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(failed.status(), 500);
    let oo = json(failed);
    let text = oo["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(text.contains("credentials") && text.contains(&s3.bucket), "{text}");
    assert_eq!(c.get(bad.url("/Patient/p1")).send().unwrap().status(), 200);
}

#[test]
fn an_export_whose_bucket_goes_away_resumes_from_its_checkpoint_and_keeps_its_place() {
    let mut s3 = kiln_tests::S3Server::start();
    let cfg = s3.s3_config();
    let node = TestNode::start_with(FhirVersion::R4, |c| {
        c.s3 = Some(cfg);
        c.export.sink = kiln::export::config::SinkName::S3;
        c.export.part_max_lines = 10;
        c.export.max_active_jobs = 1;
    });
    let c = client();
    let n = 1000;
    load(&c, &node.base, &(0..n).map(patient).collect::<Vec<_>>());
    let status_url = bulk::kick_off(&c, &node.url("/$export?_type=Patient"), None, None);
    let job = status_url.rsplit('/').next().unwrap().to_string();
    // The bucket goes away once the first of the 100 parts is checkpointed (X-Progress counts
    // checkpointed resources).
    let written = |c: &Client| -> Option<u64> {
        let r = c.get(&status_url).send().unwrap();
        (r.status() == 202).then(|| r.headers()["x-progress"].to_str().unwrap().split(' ').next().unwrap().parse().unwrap())
    };
    let start = std::time::Instant::now();
    while written(&c).expect("the job ended before its bucket went away") < 10 {
        assert!(start.elapsed() < Duration::from_secs(60), "no part was checkpointed");
        std::thread::sleep(Duration::from_millis(5));
    }
    s3.stop();
    let done = written(&c).expect("the job runs on after its bucket went away") as usize / 10;
    assert!(done < 100, "all parts were written before the outage");
    let bucket = s3.object_path(&format!("export/{job}"));
    let part = |i: usize| bucket.join(format!("Patient-{i}.ndjson"));
    let stamps: Vec<_> = (0..done).map(|i| std::fs::metadata(part(i)).unwrap().modified().unwrap()).collect();
    // It keeps the one active place: another kick-off is refused, naming the limit it met.
    let r = c.get(node.url("/$export?_type=Patient")).header("prefer", "respond-async").send().unwrap();
    assert_eq!(r.status(), 429);
    let why = json(r)["issue"][0]["diagnostics"].as_str().unwrap().to_string();
    assert!(why.contains("export.max_active_jobs") && !why.contains("max_jobs_per_owner"), "{why}");
    // The bucket stays away for 3 s (the job's next part fails and is retried), then comes back.
    let down = std::time::Instant::now();
    while down.elapsed() < Duration::from_secs(3) {
        assert_eq!(c.get(&status_url).send().unwrap().status(), 202, "a storage outage is not a failed job");
        std::thread::sleep(Duration::from_millis(250));
    }
    s3.restart();
    let manifest = bulk::wait(&c, &status_url, None, 180);
    // docs/export.md: the manifest comes with `Expires`, export.expiry_secs (24 h) after the end.
    let r = c.get(&status_url).send().unwrap();
    assert_eq!(r.status(), 200);
    let expires = kiln::fhir::meta::parse_http_date(r.headers()["expires"].to_str().unwrap()).expect("an HTTP date") / 1_000_000;
    let due = kiln::fhir::meta::now_micros() / 1_000_000 + 24 * 3600;
    assert!(expires <= due && expires + 300 >= due, "Expires {expires}, expected about {due}");
    // Exact: every Patient once, in parts of 10, none written twice.
    let files = bulk::download(&c, &manifest, None);
    assert_eq!(files.len(), 100, "{manifest}");
    let mut ids = BTreeSet::new();
    for (rtype, lines) in &files {
        assert_eq!(rtype, "Patient");
        assert_eq!(lines.len(), 10);
        for l in lines {
            assert!(ids.insert(l["id"].as_str().unwrap().to_string()), "{} twice", l["id"]);
        }
    }
    assert_eq!(ids.len(), n);
    let urls: BTreeSet<&str> = manifest["output"].as_array().unwrap().iter().map(|o| o["url"].as_str().unwrap()).collect();
    assert_eq!(urls.len(), 100, "each part listed once");
    // Resumed from its checkpoint: the parts checkpointed before the outage were not written again.
    for (i, stamp) in stamps.iter().enumerate() {
        assert_eq!(std::fs::metadata(part(i)).unwrap().modified().unwrap(), *stamp, "Patient-{i}, checkpointed before the outage, was written again");
    }
    // The place is free again.
    bulk::kick_off(&c, &node.url("/$export?_type=Patient"), None, None);
}

#[test]
fn group_membership_changed_after_kick_off_does_not_change_the_export() {
    // The bucket is away while the job starts and while the Group and a member change, so
    // nothing is written before the changes commit; then it comes back.
    let mut s3 = kiln_tests::S3Server::start();
    let cfg = s3.s3_config();
    let node = TestNode::start_with(FhirVersion::R4, |c| {
        c.s3 = Some(cfg);
        c.export.sink = kiln::export::config::SinkName::S3;
    });
    let c = client();
    let mut data: Vec<Value> = (0..6).map(patient).collect();
    data.extend((0..6).map(|i| observation(i, i, "1234-5")));
    data.push(json!({"resourceType": "Group", "id": "g", "type": "person", "actual": true,
        "member": [{"entity": {"reference": "Patient/p1"}}, {"entity": {"reference": "Patient/p2"}}]}));
    load(&c, &node.base, &data);
    s3.stop();
    let status_url = bulk::kick_off(&c, &node.url("/Group/g/$export?_type=Patient,Observation"), None, None);
    // After the kick-off: p2 leaves the Group and p3 joins, p1 is renamed, p2's Observation is
    // deleted.
    let g = json!({"resourceType": "Group", "id": "g", "type": "person", "actual": true,
        "member": [{"entity": {"reference": "Patient/p1"}}, {"entity": {"reference": "Patient/p3"}}]});
    assert_eq!(kiln_tests::put(&c, &node.url("/Group/g"), &g).unwrap().0, 200);
    let mut renamed = patient(1);
    renamed["name"][0]["family"] = json!("Renamed");
    assert_eq!(kiln_tests::put(&c, &node.url("/Patient/p1"), &renamed).unwrap().0, 200);
    assert_eq!(c.delete(node.url("/Observation/o2")).send().unwrap().status(), 204);
    assert_eq!(c.get(&status_url).send().unwrap().status(), 202, "the job is still waiting for its bucket: the changes came while it ran");
    s3.restart();
    let manifest = bulk::wait(&c, &status_url, None, 120);
    let e = Export { status_url, files: bulk::download(&c, &manifest, None), manifest };
    assert_eq!(ids_of(&e, "Patient"), set(&["p1", "p2"]), "the members as of the kick-off");
    assert_eq!(ids_of(&e, "Observation"), set(&["o1", "o2"]), "their compartments, o2 deleted after the kick-off included");
    let p1 = e.of("Patient").into_iter().find(|p| p["id"] == "p1").unwrap();
    assert_eq!(p1["name"][0]["family"], "Fam1", "p1 as it was at the kick-off");
}

#[test]
fn export_jobs_stay_in_their_tenant_and_with_their_owner() {
    let keys = tempfile::tempdir().unwrap();
    let secret = "export-tenant-secret-0123456789-0123456789";
    std::fs::write(keys.path().join("secret"), secret).unwrap();
    let key_hash = hex::encode(kiln::auth::api_keys::hash("feed-key-123"));
    std::fs::write(keys.path().join("keys.toml"), format!("[[key]]\nname = \"feed\"\ngroup = \"practitioner\"\nsha256 = \"{key_hash}\"\n")).unwrap();
    let node = TestNode::start_with(FhirVersion::R4, |cfg| {
        cfg.auth = kiln::auth::AuthConfig {
            mode: kiln::auth::AuthMode::Jwt,
            hs256_secret_file: Some(keys.path().join("secret")),
            api_keys_file: Some(keys.path().join("keys.toml")),
            ..kiln::auth::AuthConfig::default()
        };
        cfg.tenancy = kiln::tenancy::TenancyConfig { enabled: true, tenants: vec!["t1".into(), "t2".into()] };
    });
    let tok = |sub: &str, tenant: Option<&str>, group: &str| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let mut claims = json!({"sub": sub, "exp": now + 600, "cognito:groups": [group]});
        if let Some(t) = tenant {
            claims["custom:tenantId"] = json!(t);
        }
        kiln::auth::token::sign_hs256(secret.as_bytes(), &claims).unwrap()
    };
    let (alice1, alice2, bob1) = (tok("alice", Some("t1"), "practitioner"), tok("alice", Some("t2"), "practitioner"), tok("bob", Some("t1"), "practitioner"));
    let (ops1, ops2, alice0) = (tok("ops", Some("t1"), "admin"), tok("ops", Some("t2"), "admin"), tok("alice", None, "practitioner"));
    let c = client();
    let put = |path: &str, t: &str, body: Value| {
        let r = c.put(node.url(path)).bearer_auth(t).header("content-type", "application/fhir+json").body(body.to_string()).send().unwrap();
        assert_eq!(r.status(), 201, "{path}");
    };
    // The same ids in three tenants, different data.
    for (i, (t, fam)) in [(&alice1, "T1"), (&alice2, "T2"), (&alice0, "Default")].into_iter().enumerate() {
        for p in 0..=i {
            put(&format!("/Patient/p{p}"), t, json!({"resourceType": "Patient", "id": format!("p{p}"), "name": [{"family": fam}]}));
        }
    }
    // alice in t1 (her token's tenant) exports t1's data only.
    let e = bulk::export(&c, &node.url("/$export?_type=Patient"), None, Some(&alice1));
    assert_eq!(ids_of(&e, "Patient"), set(&["p0"]));
    assert!(e.of("Patient").iter().all(|p| p["name"][0]["family"] == "T1"));
    let job = e.status_url.rsplit('/').next().unwrap().to_string();
    let file = e.manifest["output"][0]["url"].as_str().unwrap().to_string();
    let file_name = file.rsplit('/').next().unwrap().to_string();
    // Status, file and cancel: 404 for the same user in another tenant, for another user in
    // the same tenant, and for an operator of another tenant; an operator of t1 follows it.
    let (status_path, file_path) = (format!("/_export/{job}"), format!("/_export/{job}/{file_name}"));
    let code = |method: &str, path: &str, t: &str| c.request(method.parse().unwrap(), node.url(path)).bearer_auth(t).send().unwrap().status().as_u16();
    for (who, t) in [("alice in t2", &alice2), ("bob in t1", &bob1), ("an operator of t2", &ops2), ("alice in the default tenant", &alice0)] {
        assert_eq!(code("GET", &status_path, t), 404, "status for {who}");
        assert_eq!(code("GET", &file_path, t), 404, "file for {who}");
        assert_eq!(code("DELETE", &status_path, t), 404, "cancel for {who}");
    }
    assert_eq!(code("GET", &status_path, &ops1), 200, "an operator of t1");
    assert_eq!(code("GET", &file_path, &ops1), 200);
    assert_eq!(code("GET", &status_path, &alice1), 200, "still there after the refused cancels");
    // The t2 export of the same user holds t2's data.
    let e2 = bulk::export(&c, &node.url("/$export?_type=Patient"), None, Some(&alice2));
    assert_eq!(ids_of(&e2, "Patient"), set(&["p0", "p1"]));
    assert!(e2.of("Patient").iter().all(|p| p["name"][0]["family"] == "T2"));
    // An API key owns its jobs (in the default tenant): a token whose sub is the key's name
    // does not.
    let r = c.get(node.url("/$export?_type=Patient")).header("x-api-key", "feed-key-123").header("prefer", "respond-async").send().unwrap();
    assert_eq!(r.status(), 202);
    let key_status = r.headers()["content-location"].to_str().unwrap().to_string();
    let key_job = key_status.rsplit('/').next().unwrap().to_string();
    let start = std::time::Instant::now();
    let manifest = loop {
        let r = c.get(&key_status).header("x-api-key", "feed-key-123").send().unwrap();
        match r.status().as_u16() {
            200 => break json(r),
            202 => assert!(start.elapsed() < Duration::from_secs(60), "the key's export did not finish"),
            s => panic!("status {s}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(manifest["output"][0]["count"], 3, "the default tenant's three Patients: {manifest}");
    assert_eq!(code("GET", &format!("/_export/{key_job}"), &tok("feed", None, "practitioner")), 404, "a token named like the key");
    assert_eq!(code("GET", &format!("/_export/{key_job}"), &alice0), 404);
}
