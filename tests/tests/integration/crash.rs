//! Crash safety: `kill -9` a `kiln serve` process during concurrent writes, restart it on the same
//! data, and check that every acknowledged write is readable at the version it was acknowledged with.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kiln_tests::{client, json, ChildNode};
use serde_json::json;

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = ChildNode::start(&dir.path().join("data"), "127.0.0.1:0");
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let writers: Vec<_> = (0..6)
        .map(|t| {
            let base = node.base.clone();
            let stop = stop.clone();
            let count = count.clone();
            std::thread::spawn(move || {
                let c = client();
                let mut acked = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // Half the writes update one shared resource per writer, half create new ones.
                    let id = if i % 2 == 0 { format!("w{t}") } else { format!("w{t}-{i}") };
                    let body = json!({"resourceType": "Patient", "id": id, "name": [{"text": format!("{t}/{i}")}]});
                    let resp = c
                        .put(format!("{base}/Patient/{id}"))
                        .header("content-type", "application/fhir+json")
                        .body(body.to_string())
                        .send();
                    match resp {
                        Ok(r) if r.status().is_success() => {
                            let etag = r.headers()["etag"].to_str().unwrap().to_string();
                            let v: u64 = etag.trim_start_matches("W/\"").trim_end_matches('"').parse().unwrap();
                            acked.push((id, v, format!("{t}/{i}")));
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => break, // the server died mid-request: not acknowledged
                    }
                    i += 1;
                }
                acked
            })
        })
        .collect();
    // Kill mid-stream once the load is well under way (bounded wait on a slow machine).
    let started = std::time::Instant::now();
    while count.load(Ordering::Relaxed) < 300 && started.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    node.kill9();
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<(String, u64, String)> = writers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    assert!(acked.len() > 50, "the load ran ({} acknowledged writes)", acked.len());

    let node = ChildNode::start(&node.data_dir.clone(), "127.0.0.1:0");
    let c = client();
    for (id, version, text) in &acked {
        let resp = c.get(format!("{}/Patient/{id}/_history/{version}", node.base)).send().unwrap();
        assert_eq!(resp.status(), 200, "acknowledged Patient/{id} version {version} is lost");
        let body = json(resp);
        assert_eq!(body["name"][0]["text"], text.as_str(), "Patient/{id} version {version} has other content");
    }
    eprintln!("crash test: {} acknowledged writes all present after kill -9", acked.len());
}
