//! Full-text search through a real Meilisearch (tests/src/meili.rs) on real nodes: documents
//! follow writes, `_content` / `_text` with other criteria and paging, Meilisearch killed during
//! writes, a leader kill -9 with a backlog on 3 nodes, `kiln reindex` into an empty Meilisearch,
//! and a wrong master key.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kiln::Config;
use kiln_tests::meili::Meili;
use kiln_tests::{client, json, TestCluster, TestNode};
use serde_json::{json, Value};

fn with_meili(m: &Meili) -> impl Fn(&mut Config) + 'static {
    let (url, key_file) = (m.url(), m.key_file.clone());
    move |cfg: &mut Config| {
        cfg.meilisearch.url = Some(url.clone());
        cfg.meilisearch.api_key_file = Some(key_file.clone());
        cfg.meilisearch.max_backoff_ms = 500;
        cfg.meilisearch.timeout_ms = 5_000;
    }
}

fn node_with(m: &Meili) -> TestNode {
    let tweak = with_meili(m);
    TestNode::start_with(kiln::fhir::FhirVersion::R4, |cfg| {
        tweak(cfg);
        cfg.admin_listen = Some("127.0.0.1:0".into());
    })
}

fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(secs), "timed out after {secs} s waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn status(base: &str) -> Value {
    json(client().get(format!("{base}/_cluster/status")).send().expect("status"))
}

fn patient(id: &str, family: &str, story: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "active": true, "name": [{"family": family}],
        "text": {"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>{story}</p></div>")}})
}

fn put(base: &str, r: &Value) {
    let url = format!("{base}/{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap());
    let resp = client().put(url).header("content-type", "application/fhir+json").body(r.to_string()).send().unwrap();
    assert!(resp.status().is_success(), "{}", resp.text().unwrap_or_default());
}

/// Writes resources with a batch bundle (one Raft entry); panics unless every entry succeeded.
fn load(base: &str, resources: &[Value]) {
    for chunk in resources.chunks(500) {
        let entries: Vec<Value> = chunk
            .iter()
            .map(|r| json!({"resource": r, "request": {"method": "PUT", "url": format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap())}}))
            .collect();
        let resp = client().post(format!("{base}/")).header("content-type", "application/fhir+json").body(json!({"resourceType": "Bundle", "type": "batch", "entry": entries}).to_string()).send().unwrap();
        assert_eq!(resp.status(), 200);
        let b = json(resp);
        for e in b["entry"].as_array().unwrap() {
            assert!(e["response"]["status"].as_str().unwrap().starts_with("20"), "{e}");
        }
    }
}

/// Every id of a search, following `next` links; also checks each match has a score.
fn all_ids(base: &str, query: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut url = format!("{base}/{query}");
    loop {
        let resp = client().get(&url).send().unwrap();
        assert_eq!(resp.status(), 200, "{url}");
        let b = json(resp);
        for e in b["entry"].as_array().into_iter().flatten() {
            if e["search"]["mode"] == "match" {
                out.push(e["resource"]["id"].as_str().unwrap().to_string());
            }
        }
        match b["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next") {
            Some(l) => url = l["url"].as_str().unwrap().to_string(),
            None => return out,
        }
    }
}

/// The value of one series (`name` or `name{labels}` exactly as exposed) of the node's `/metrics`.
fn metric(base: &str, series: &str) -> f64 {
    let text = client().get(format!("{base}/metrics")).send().unwrap().text().unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

fn lag_zero(base: &str) -> bool {
    let s = status(base);
    s["meilisearch"]["lag_rows"] == 0
}

#[test]
fn meili_documents_follow_writes_updates_replace_deletes_remove() {
    let m = Meili::start();
    let node = node_with(&m);
    put(&node.base, &patient("doc-1", "Chalmers", "Peter lives by the lighthouse"));
    wait_until(30, "the document", || m.document("kiln", "Patient-doc-1").is_some());
    let d = m.document("kiln", "Patient-doc-1").unwrap();
    assert_eq!(d["versionId"], 1);
    put(&node.base, &patient("doc-1", "Chalmers", "Peter moved to the harbour"));
    wait_until(30, "version 2", || m.document("kiln", "Patient-doc-1").is_some_and(|d| d["versionId"] == 2));
    // A dotted id maps to a Meilisearch id one to one.
    put(&node.base, &patient("doc.2", "Windsor", "A quiet gardener"));
    wait_until(30, "doc.2", || m.document("kiln", "Patient-doc_2").is_some_and(|d| d["id"] == "doc.2"));
    let del = client().delete(node.url("/Patient/doc-1")).send().unwrap();
    assert!(del.status().is_success());
    wait_until(30, "the deletion", || m.document("kiln", "Patient-doc-1").is_none());
    wait_until(30, "lag 0", || lag_zero(&node.base));
    let s = status(&node.base)["meilisearch"].clone();
    assert_eq!(s["configured"], true);
    assert_eq!(s["running"], true, "{s}");
    assert!(s["last_error"].is_null(), "{s}");
    // Index settings were set by Kiln.
    let settings = m.get("/indexes/kiln/settings");
    assert!(settings["filterableAttributes"].to_string().contains("resourceType"), "{settings}");
    assert_eq!(settings["pagination"]["maxTotalHits"], 10_001);
}

#[test]
fn meili_content_and_text_and_other_criteria_and_paging() {
    let m = Meili::start();
    let node = node_with(&m);
    let mut resources = Vec::new();
    for i in 0..60 {
        let (family, story) = if i % 2 == 0 { ("Lighthouse", format!("keeper number {i} of the lighthouse")) } else { ("Ostrander", format!("bakes bread, number {i}")) };
        let mut p = patient(&format!("p{i}"), family, &story);
        if i % 3 == 0 {
            p["gender"] = json!("female");
        }
        resources.push(p);
    }
    resources.push(json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "lighthouse glucose"}}));
    load(&node.base, &resources);
    wait_until(60, "lag 0", || lag_zero(&node.base));
    // _content: every string (family names included); ANDed with gender; typo tolerant.
    let even: BTreeSet<String> = (0..60).filter(|i| i % 2 == 0).map(|i| format!("p{i}")).collect();
    let got: BTreeSet<String> = all_ids(&node.base, "Patient?_content=lighthouse&_count=7").into_iter().collect();
    assert_eq!(got, even, "paging through relevance order returns every match once");
    let female_even: BTreeSet<String> = (0..60).filter(|i| i % 6 == 0).map(|i| format!("p{i}")).collect();
    let got: BTreeSet<String> = all_ids(&node.base, "Patient?_content=lighthuose&gender=female&_count=3").into_iter().collect();
    assert_eq!(got, female_even, "a typo still matches; gender narrows");
    // _text: the narrative only ("Ostrander" is a family name, not in the narratives).
    assert!(all_ids(&node.base, "Patient?_text=ostrander").is_empty());
    assert_eq!(all_ids(&node.base, "Patient?_text=bread").len(), 30);
    assert_eq!(all_ids(&node.base, "Patient?_content=ostrander").len(), 30);
    // Types are kept apart; scores are filled; _sort by another parameter still works.
    assert_eq!(all_ids(&node.base, "Observation?_content=lighthouse"), ["o1"]);
    let b = json(client().get(node.url("/Patient?_content=lighthouse&_count=2")).send().unwrap());
    assert_eq!(b["total"], 30);
    let score = b["entry"][0]["search"]["score"].as_f64().expect("a score");
    assert!(score > 0.0 && score <= 1.0);
    let sorted = all_ids(&node.base, "Patient?_content=bread&_sort=-_id&_count=10");
    let mut expected: Vec<String> = (0..60).filter(|i| i % 2 == 1).map(|i| format!("p{i}")).collect();
    expected.sort();
    expected.reverse();
    assert_eq!(sorted, expected);
    let both = all_ids(&node.base, "Patient?_content=keeper&_text=lighthouse&_id=p2,p3,p4");
    assert_eq!(both.into_iter().collect::<BTreeSet<_>>(), ["p2", "p4"].iter().map(|s| s.to_string()).collect());
    let r = client().get(node.url("/Patient?_sort=_score")).send().unwrap();
    assert_eq!(r.status(), 400);
    // A text-only search pages inside Meilisearch; not past max_hits (400 too-costly).
    let mut edge = vec![b'o'];
    edge.extend_from_slice(&10_000u64.to_be_bytes());
    let r = client().get(node.url(&format!("/Patient?_content=lighthouse&_page=n:{}", hex::encode(edge)))).send().unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(json(r)["issue"][0]["code"], "too-costly");
    let b = json(client().get(node.url("/Patient?_content=lighthouse&_count=25")).send().unwrap());
    assert_eq!(b["total"], 30);
    assert_eq!(b["entry"].as_array().unwrap().len(), 25);
    let next = b["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap()["url"].as_str().unwrap().to_string();
    let b2 = json(client().get(&next).send().unwrap());
    assert_eq!(b2["entry"].as_array().unwrap().len(), 5);
    assert!(b2["link"].as_array().unwrap().iter().any(|l| l["relation"] == "previous"));
    // The CapabilityStatement claims them now.
    let cs = json(client().get(node.url("/metadata")).send().unwrap());
    let patient_params = cs["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "Patient").unwrap()["searchParam"].to_string();
    assert!(patient_params.contains("\"_content\"") && patient_params.contains("\"_text\""));
    assert!(!cs["rest"][0]["documentation"].as_str().unwrap().contains("_text, _content"));

    // Without Meilisearch: 400 as before, and not claimed.
    let plain = TestNode::start();
    let r = client().get(plain.url("/Patient?_content=x")).send().unwrap();
    assert_eq!(r.status(), 400);
    let cs = json(client().get(plain.url("/metadata")).send().unwrap());
    assert!(!cs.to_string().contains("\"_content\""));
    assert_eq!(status(&plain.base)["meilisearch"]["configured"], false);
}

#[test]
fn meili_killed_during_writes_then_restarted_drains_and_equals_sled() {
    let mut m = Meili::start();
    let node = node_with(&m);
    load(&node.base, &(0..100).map(|i| patient(&format!("a{i}"), "Early", "before the outage")).collect::<Vec<_>>());
    wait_until(60, "lag 0", || lag_zero(&node.base));
    m.stop();
    // Writes go on; text queries say why they cannot be answered; other searches are unaffected.
    load(&node.base, &(0..300).map(|i| patient(&format!("b{i}"), "Late", "during the outage")).collect::<Vec<_>>());
    for i in 0..20 {
        let r = client().delete(node.url(&format!("/Patient/a{i}"))).send().unwrap();
        assert!(r.status().is_success());
    }
    let r = client().get(node.url("/Patient?_content=outage")).send().unwrap();
    assert_eq!(r.status(), 503);
    let oo = json(r);
    assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().contains("Meilisearch"), "{oo}");
    let r = client().get(node.url("/Patient?family=late&_summary=count")).send().unwrap();
    assert_eq!(json(r)["total"], 300);
    wait_until(30, "the error on the status page", || !status(&node.base)["meilisearch"]["last_error"].is_null());
    assert!(status(&node.base)["meilisearch"]["lag_rows"].as_u64().unwrap() >= 320);
    assert!(metric(&node.base, "kiln_meilisearch_outbox_lag_rows") >= 320.0, "the backlog in /metrics too");
    assert!(metric(&node.base, "kiln_search_requests_total{param_type=\"text\"}") >= 1.0);
    m.restart();
    wait_until(60, "the backlog drained", || lag_zero(&node.base));
    assert_eq!(metric(&node.base, "kiln_meilisearch_outbox_lag_rows"), 0.0);
    assert_eq!(metric(&node.base, "kiln_meilisearch_outbox_lag_seconds"), 0.0);
    m.settle();
    let live = json(client().get(node.url("/Patient?_summary=count")).send().unwrap())["total"].as_u64().unwrap();
    assert_eq!(live, 380);
    assert_eq!(m.count("kiln"), live, "Meilisearch holds exactly the live resources");
    assert!(m.document("kiln", "Patient-a5").is_none());
    assert_eq!(m.document("kiln", "Patient-b17").unwrap()["versionId"], 1);
    assert_eq!(all_ids(&node.base, "Patient?_content=during&_count=100").len(), 300);
    assert!(status(&node.base)["meilisearch"]["last_error"].is_null());
}

#[test]
fn meili_leader_kill9_with_a_backlog_loses_no_update() {
    let mut m = Meili::start();
    let tweak = with_meili(&m);
    let mut c = TestCluster::start_with(3, |cfg| tweak(cfg));
    let leader = c.leader();
    let base = c.base(leader);
    load(&base, &(0..50).map(|i| patient(&format!("k{i}"), "Before", "first wave")).collect::<Vec<_>>());
    wait_until(60, "lag 0", || lag_zero(&base));
    m.stop();
    load(&base, &(0..400).map(|i| patient(&format!("w{i}"), "Backlog", "second wave")).collect::<Vec<_>>());
    // Updates of already-indexed resources too: the new version must win.
    load(&base, &(0..50).map(|i| patient(&format!("k{i}"), "Before", "updated in the second wave")).collect::<Vec<_>>());
    assert!(status(&base)["meilisearch"]["lag_rows"].as_u64().unwrap() >= 450);
    c.kill9(leader);
    m.restart();
    let new_leader = c.leader();
    assert_ne!(new_leader, leader);
    let nb = c.base(new_leader);
    wait_until(90, "the new leader drained the backlog", || lag_zero(&nb));
    let st = status(&nb)["meilisearch"].clone();
    assert_eq!(st["running"], true, "{st}");
    m.settle();
    assert_eq!(m.count("kiln"), 450);
    for i in [0, 17, 49] {
        assert_eq!(m.document("kiln", &format!("Patient-k{i}")).unwrap()["versionId"], 2);
    }
    assert_eq!(all_ids(&nb, "Patient?_text=wave&_count=200").len(), 450);
    // The old leader comes back as a follower: it does not index, and its replica's cursor agrees.
    c.restart(leader);
    wait_until(60, "the old leader caught up", || status(&c.base(leader))["meilisearch"]["lag_rows"] == 0);
    assert_eq!(status(&c.base(leader))["meilisearch"]["running"], false);
}

#[test]
fn meili_reindex_rebuilds_an_empty_meilisearch() {
    let mut m = Meili::start();
    let node = node_with(&m);
    load(&node.base, &(0..250).map(|i| patient(&format!("r{i}"), "Rebuilt", "indexed twice")).collect::<Vec<_>>());
    wait_until(60, "lag 0", || lag_zero(&node.base));
    m.restart_empty();
    assert_eq!(m.count("kiln"), 0);
    let out = std::process::Command::new(kiln_tests::kiln_bin())
        .args(["reindex", "--admin", &node.admin_base(), "--timeout-secs", "120"])
        .output()
        .expect("kiln reindex runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    m.settle();
    assert_eq!(m.count("kiln"), 250);
    let settings = m.get("/indexes/kiln/settings");
    assert!(settings["filterableAttributes"].to_string().contains("resourceType"), "settings set again: {settings}");
    assert_eq!(all_ids(&node.base, "Patient?_content=rebuilt&_count=100").len(), 250);
    assert!(status(&node.base)["meilisearch"]["epoch"].as_u64().unwrap() >= 1);
}

#[test]
fn meili_wrong_master_key_is_a_clear_error() {
    let m = Meili::start();
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, "not-the-master-key-at-all").unwrap();
    let node = TestNode::start_with(kiln::fhir::FhirVersion::R4, |cfg| {
        cfg.meilisearch.url = Some(m.url());
        cfg.meilisearch.api_key_file = Some(wrong.clone());
        cfg.meilisearch.max_backoff_ms = 500;
    });
    put(&node.base, &patient("x1", "Key", "never indexed"));
    // Asked at once (the backlog is still young, so the lag check passes): Meilisearch refuses the key.
    let r = client().get(node.url("/Patient?_content=indexed")).send().unwrap();
    assert_eq!(r.status(), 503);
    let oo = json(r);
    let why = oo["issue"][0]["diagnostics"].as_str().unwrap().to_string();
    assert!(why.contains("API key"), "{why}");
    assert!(!why.contains("not-the-master-key-at-all"));
    wait_until(30, "the key error on the status page", || status(&node.base)["meilisearch"]["last_error"].as_str().is_some_and(|e| e.contains("API key")));
    let s = status(&node.base).to_string();
    assert!(!s.contains("not-the-master-key-at-all"), "the key is never shown");
    // Other searches and writes are unaffected.
    assert_eq!(client().get(node.url("/Patient?family=key")).send().unwrap().status(), 200);
    // An unreadable key file stops the start with a clear error.
    let mut cfg = node.cfg.clone();
    cfg.data_dir = dir.path().join("other");
    cfg.meilisearch.api_key_file = Some(dir.path().join("missing.key"));
    let err = kiln::start_node(cfg).err().expect("refused").to_string();
    assert!(err.contains("api_key_file"), "{err}");
}
