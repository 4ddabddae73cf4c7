//! `kiln import`, `kiln backup` and `kiln restore` through the CLI binary on real nodes: an NDJSON
//! set with deliberately bad lines (reported as file:line, every good line lands, a rerun is
//! idempotent, an interrupted import resumes where it stopped), and a backup taken from a
//! follower under writes restored into a NEW 3-node cluster whose data digest and resource
//! versions equal the source's at the backup's index; a damaged backup restores nothing; `kiln storage` on a stopped node.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_tests::{client, json, kiln_bin, TestCluster, TestNode};
use reqwest::blocking::Client;
use serde_json::{json, Value};

fn patient(i: usize) -> Value {
    json!({"resourceType": "Patient", "id": format!("p{i}"), "name": [{"family": format!("Fam{i}")}], "gender": if i % 2 == 0 { "female" } else { "male" }})
}

fn observation(i: usize, pid: usize) -> Value {
    json!({"resourceType": "Observation", "id": format!("o{i}"), "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}, "subject": {"reference": format!("Patient/p{pid}")}})
}

/// Writes `lines` as NDJSON; `bad` replaces line numbers (1-based) by other text.
fn write_ndjson(path: &Path, lines: &[Value], bad: &[(usize, &str)]) {
    let mut text = String::new();
    for (i, l) in lines.iter().enumerate() {
        match bad.iter().find(|(no, _)| *no == i + 1) {
            Some((_, b)) => text.push_str(b),
            None => text.push_str(&l.to_string()),
        }
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

fn count(c: &Client, url: &str) -> u64 {
    json(c.get(url).send().unwrap())["total"].as_u64().unwrap()
}

fn kiln(args: &[&str]) -> Output {
    Command::new(kiln_bin()).args(args).env("RUST_LOG", "warn").output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The versionId of every resource of `rtype` (following the search's next links).
fn versions(c: &Client, base: &str, rtype: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let mut url = Some(format!("{base}/{rtype}?_count=500"));
    while let Some(u) = url {
        let page = json(c.get(&u).send().unwrap());
        for e in page["entry"].as_array().map(Vec::as_slice).unwrap_or_default() {
            out.insert(e["resource"]["id"].as_str().unwrap().to_string(), e["resource"]["meta"]["versionId"].as_str().unwrap().parse().unwrap());
        }
        url = page["link"].as_array().and_then(|l| l.iter().find(|l| l["relation"] == "next")).and_then(|l| l["url"].as_str()).map(String::from);
    }
    out
}

#[test]
fn import_reports_bad_lines_lands_the_rest_and_resumes() {
    let node = TestNode::start();
    let c = client();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("set");
    std::fs::create_dir(&dir).unwrap();
    // 2,000 lines in two files; line 345 of Patient is not JSON, line 777 of Observation is JSON
    // the server refuses (a status outside its value set).
    let patients: Vec<Value> = (1..=800).map(patient).collect();
    let observations: Vec<Value> = (1..=1200).map(|i| observation(i, 1 + i % 800)).collect();
    write_ndjson(&dir.join("Patient.ndjson"), &patients, &[(345, r#"{"resourceType":"Patient","id":"broken","#)]);
    let refused = json!({"resourceType": "Observation", "id": "o777", "status": "banana", "code": {"text": "x"}}).to_string();
    write_ndjson(&dir.join("Observation.ndjson"), &observations, &[(777, refused.as_str())]);
    let dir_s = dir.to_str().unwrap();

    let out = kiln(&["import", "--node", &node.base, dir_s, "--batch", "100"]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "rejects make exit code 2: {said}");
    assert!(said.contains("imported 1998 resources"), "{said}");
    assert!(said.contains("Patient.ndjson:345: not a JSON object"), "{said}");
    assert!(said.contains("Observation.ndjson:777: 400"), "{said}");
    assert!(said.contains("banana"), "the server's reason is shown: {said}");
    assert_eq!(count(&c, &node.url("/Patient?_summary=count")), 799);
    assert_eq!(count(&c, &node.url("/Observation?_summary=count")), 1199);
    assert_eq!(json(c.get(node.url("/Observation/o1")).send().unwrap())["subject"]["reference"], "Patient/p2", "ids and references kept");

    // A rerun finds everything settled: nothing is sent again, the rejects are still reported.
    let out = kiln(&["import", "--node", &node.base, dir_s]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(2), "{said}");
    assert!(said.contains("imported 0 resources") && said.contains("2000 lines skipped"), "{said}");
    assert!(said.contains("Patient.ndjson:345:"), "{said}");
    assert!(versions(&c, &node.base, "Patient").values().all(|v| *v == 1), "no resource was written twice");

    // --restart sends everything again: PUT at the same ids, same counts.
    let out = kiln(&["import", "--node", &node.base, dir_s, "--restart", "--batch", "500"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert_eq!(count(&c, &node.url("/Patient?_summary=count")), 799);
    assert_eq!(count(&c, &node.url("/Observation?_summary=count")), 1199);

    // An import killed midway resumes after the last settled bundle.
    let single = tmp.path().join("more.ndjson");
    let more: Vec<Value> = (1001..=3000).map(patient).collect();
    write_ndjson(&single, &more, &[]);
    let state = tmp.path().join("more.ndjson.kiln-import");
    let mut child = Command::new(kiln_bin())
        .args(["import", "--node", &node.base, single.to_str().unwrap(), "--batch", "20", "--concurrency", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let settled = loop {
        let line = std::fs::read(&state).ok().and_then(|b| serde_json::from_slice::<Value>(&b).ok()).and_then(|s| s["files"]["more.ndjson"]["line"].as_u64());
        if line.is_some_and(|l| l >= 200) {
            break line.unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no progress recorded");
        std::thread::sleep(Duration::from_millis(5));
    };
    child.kill().unwrap();
    let _ = child.wait();
    assert!(settled < 2000, "killed before the end ({settled})");
    let out = kiln(&["import", "--node", &node.base, single.to_str().unwrap(), "--batch", "20"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    let skipped: u64 = said.split(" lines skipped").next().and_then(|s| s.rsplit("; ").next()).and_then(|n| n.trim().parse().ok()).unwrap();
    assert!(skipped >= settled, "the rerun starts at the recorded position ({skipped} < {settled}): {said}");
    assert_eq!(count(&c, &node.url("/Patient?_summary=count")), 799 + 2000);
    let twice = versions(&c, &node.base, "Patient").into_iter().filter(|(id, v)| id[1..].parse::<usize>().unwrap() > 1000 && *v > 1).count();
    assert!(twice <= 40, "only the bundles in flight at the kill are sent again ({twice} resources)");

    // A file that changed under its state is not resumed in the middle of other data.
    write_ndjson(&single, &(5001..=5010).map(patient).collect::<Vec<_>>(), &[]);
    let out = kiln(&["import", "--node", &node.base, single.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("changed since"), "{}", text(&out));
}

/// The manifest of a backup folder.
fn manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

fn digest(c: &Client, url: &str) -> Value {
    json(c.get(url).send().unwrap())
}

fn restored_cluster(backup: &Path) -> TestCluster {
    TestCluster::start_prepared(3, |_| {}, |dir| {
        let out = kiln(&["restore", "--from", backup.to_str().unwrap(), "--data-dir", dir.to_str().unwrap(), "--nodes", "3"]);
        assert!(out.status.success(), "restore: {}", text(&out));
    })
}

#[test]
fn a_backup_under_writes_restores_into_a_new_cluster_with_equal_digests() {
    let src = TestCluster::start(3);
    let c = client();
    let leader = src.leader();
    let follower = src.ids().into_iter().find(|i| *i != leader).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("seed.ndjson");
    write_ndjson(&file, &(1..=1500).map(patient).collect::<Vec<_>>(), &[]);
    let out = kiln(&["import", "--node", &src.base(leader), file.to_str().unwrap(), "--batch", "100"]);
    assert!(out.status.success(), "{}", text(&out));

    // Writes go on (new resources and updates) while the follower streams its backup.
    let stop = Arc::new(AtomicBool::new(false));
    // (id, sent, acknowledged)
    let acked: Arc<Mutex<Vec<(String, Instant, Instant)>>> = Arc::default();
    let writer = std::thread::spawn({
        let (stop, acked, base) = (stop.clone(), acked.clone(), src.base(leader));
        move || {
            let c = client();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let id = format!("w{i}");
                let body = json!({"resourceType": "Patient", "id": id, "name": [{"family": format!("W{i}")}]});
                let sent = Instant::now();
                let r = c.put(format!("{base}/Patient/{id}")).header("content-type", "application/fhir+json").body(body.to_string()).send();
                if r.is_ok_and(|r| r.status().is_success()) {
                    acked.lock().unwrap().push((id, sent, Instant::now()));
                }
                let upd = json!({"resourceType": "Patient", "id": format!("p{}", 1 + i % 1500), "name": [{"family": format!("U{i}")}]});
                let _ = c.put(format!("{base}/Patient/p{}", 1 + i % 1500)).header("content-type", "application/fhir+json").body(upd.to_string()).send();
            }
        }
    });
    // The backup starts once writes are flowing, and writes go on after it.
    let acked_at_least = |n: usize| {
        let start = Instant::now();
        while acked.lock().unwrap().len() < n {
            assert!(start.elapsed() < Duration::from_secs(60), "fewer than {n} writes acknowledged");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    acked_at_least(10);
    let b1 = tmp.path().join("b1");
    let t0 = Instant::now();
    let out = kiln(&["backup", "--node", &src.admin_url(follower, ""), "--out", b1.to_str().unwrap()]);
    let t1 = Instant::now();
    assert!(out.status.success(), "backup: {}", text(&out));
    assert!(text(&out).contains("MB/s"), "{}", text(&out));
    let after_backup = acked.lock().unwrap().len();
    acked_at_least(after_backup + 10);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let m1 = manifest(&b1);
    assert_eq!(m1["node_id"], follower);
    assert!(m1["bytes"].as_u64().unwrap() > 100_000);

    let dst = restored_cluster(&b1);
    let data = dst.converged(&dst.ids(), 30);
    assert!(!data.is_empty());
    for id in dst.ids() {
        let d = digest(&c, &dst.admin_url(id, "/_cluster/digest"));
        assert_eq!(d["data_sha256"], m1["data_sha256"], "node {id} of the restored cluster holds exactly the backup: {d}");
    }
    // Writes acknowledged before the backup started are in it; writes sent after it ended are not.
    let restored = versions(&c, &dst.base(dst.leader()), "Patient");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.iter().any(|(_, sent, _)| *sent > t1), "writes went on after the backup");
    assert!(acked.iter().any(|(_, _, done)| *done < t0), "writes were acknowledged before the backup");
    for (id, sent, done) in &acked {
        // The backup waits for a read barrier: the follower has applied every write the leader
        // acknowledged before the request.
        if *done < t0 {
            assert!(restored.contains_key(id), "{id}, acknowledged before the backup, is missing");
        }
        if *sent > t1 {
            assert!(!restored.contains_key(id), "{id}, written after the backup, is in it");
        }
    }
    // Every restored version is byte for byte the source's version of that number.
    let base = src.base(leader);
    for (id, v) in restored.iter().step_by(7) {
        let there = json(c.get(format!("{base}/Patient/{id}/_history/{v}")).send().unwrap());
        let here = json(c.get(dst.url(dst.leader(), &format!("/Patient/{id}"))).send().unwrap());
        assert_eq!(here, there, "Patient/{id} version {v}");
    }
    // The new cluster takes writes and replicates them.
    let r = c.put(dst.url(dst.leader(), "/Patient/after")).header("content-type", "application/fhir+json").body(patient(9).to_string().replace("p9", "after")).send().unwrap();
    assert_eq!(r.status(), 201);
    dst.converged(&dst.ids(), 30);
    drop(dst);

    // Quiet source: its own digest equals the backup's and the restored cluster's.
    src.converged(&src.ids(), 30);
    let b2 = tmp.path().join("b2");
    let out = kiln(&["backup", "--node", &src.admin_url(leader, ""), "--out", b2.to_str().unwrap()]);
    assert!(out.status.success(), "backup: {}", text(&out));
    let m2 = manifest(&b2);
    let now = digest(&c, &src.admin_url(leader, "/_cluster/digest"));
    assert_eq!(now["applied_index"], m2["index"]);
    assert_eq!(now["data_sha256"], m2["data_sha256"]);
    let dst2 = restored_cluster(&b2);
    dst2.converged(&dst2.ids(), 30);
    assert_eq!(digest(&c, &dst2.admin_url(1, "/_cluster/digest"))["data_sha256"], now["data_sha256"]);
    assert_eq!(
        count(&c, &dst2.url(1, "/Patient?_summary=count")),
        count(&c, &src.url(leader, "/Patient?_summary=count")),
        "same resources"
    );
    drop(dst2);

    // A damaged copy restores nothing, and says why.
    let state = b2.join("state.kbak");
    let mut bytes = std::fs::read(&state).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    std::fs::write(&state, bytes).unwrap();
    let target = tmp.path().join("never");
    let out = kiln(&["restore", "--from", b2.to_str().unwrap(), "--data-dir", target.to_str().unwrap(), "--nodes", "3"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("damaged"), "{}", text(&out));
    assert!(!target.join("node1").exists());
}

#[test]
fn storage_reports_where_a_stopped_nodes_bytes_go() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node");
    let c = client();
    {
        let mut node = kiln_tests::ChildNode::start(&data, "127.0.0.1:0");
        for i in 0..30 {
            let resp = c.put(format!("{}/Patient/p{i}", node.base)).header("content-type", "application/fhir+json").body(patient(i).to_string()).send().unwrap();
            assert!(resp.status().is_success(), "{}", resp.status());
        }
        // Stopped cleanly: after a kill -9 the last applied entries may be only in the log (the
        // node applies them again when it starts), and this counts the state tree.
        node.stop();
    }
    let out = kiln(&["storage", "--data-dir", data.to_str().unwrap()]);
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    let keys = |class: &str| -> u64 {
        let line = report.lines().find(|l| l.starts_with(class)).unwrap_or_else(|| panic!("no {class} line in\n{report}"));
        line[class.len()..].split_whitespace().next().unwrap().parse().unwrap()
    };
    assert_eq!(keys("state/versions"), 30, "{report}");
    assert_eq!(keys("state/current"), 30, "{report}");
    assert!(keys("state/index rows") > 30, "{report}");
    assert!(report.contains("on disk:") && report.contains("db "), "{report}");
    // A folder that is not a node's is refused, not created.
    let empty = dir.path().join("nothing");
    let out = kiln(&["storage", "--data-dir", empty.to_str().unwrap()]);
    assert!(!out.status.success() && text(&out).contains("not a node's data folder"), "{}", text(&out));
    assert!(!empty.exists());
}
