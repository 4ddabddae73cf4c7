//! `/metrics` and tracing over HTTP: the families move with writes and searches and pass
//! `promtool check metrics`; with auth on, `/metrics` needs the admin group on the FHIR port and
//! the operator token on the operator listener; `X-Request-Id` is echoed (given or generated, an
//! unacceptable one replaced); a JSON log at debug level ties a write's `applied` line to its
//! request id; and a real Prometheus scraping a 3-node cluster sees every node up.
//!
//! `promtool` and `prometheus` (Debian's `prometheus` package) must be on PATH: `.ci/run`
//! installs them. These tests fail without them rather than skip.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln::auth::{AuthConfig, AuthMode};
use kiln::fhir::FhirVersion;
use kiln_tests::{client, free_ports, json, kiln_bin, TestCluster, TestNode};
use reqwest::blocking::Client;
use serde_json::{json, Value};

/// A tool of Debian's `prometheus` package, which `.ci/run` installs.
fn tool(name: &str) -> Command {
    let found = Command::new(name).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    assert!(found, "`{name}` is not on PATH: install Debian's `prometheus` package (.ci/run does: apt-get install prometheus)");
    Command::new(name)
}

/// `promtool check metrics` on `text`: its complaints, empty when none.
fn promtool_check(text: &str) -> String {
    let mut child = tool("promtool").args(["check", "metrics"]).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("promtool starts");
    child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("feed promtool");
    let out = child.wait_with_output().expect("promtool runs");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && said.trim().is_empty() {
        String::new()
    } else {
        format!("promtool exit {:?}: {said}", out.status.code())
    }
}

/// The samples of an exposition: `name{labels}` (labels as written) → value.
fn samples(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The value of the first series of `name` whose labels contain every `label="value"` of `with`.
fn value(s: &HashMap<String, f64>, name: &str, with: &[&str]) -> Option<f64> {
    s.iter()
        .filter(|(k, _)| k.as_str() == name || k.starts_with(&format!("{name}{{")))
        .find(|(k, _)| with.iter().all(|w| k.contains(w)))
        .map(|(_, v)| *v)
}

fn scrape(c: &Client, url: &str) -> String {
    let resp = c.get(url).send().expect("scrape");
    assert_eq!(resp.status(), 200, "{url}");
    let ct = resp.headers()["content-type"].to_str().unwrap_or_default().to_string();
    assert!(ct.starts_with("text/plain") && ct.contains("version=0.0.4"), "Prometheus text format, got {ct}");
    resp.text().expect("body")
}

fn create(c: &Client, url: &str, family: &str) -> reqwest::blocking::Response {
    let body = json!({"resourceType": "Patient", "name": [{"family": family}], "birthDate": "1980-02-03"});
    c.post(url).header("content-type", "application/fhir+json").body(body.to_string()).send().expect("create")
}

#[test]
fn metrics_move_with_traffic_and_pass_promtool() {
    let node = TestNode::start();
    let c = client();
    for i in 0..3 {
        assert_eq!(create(&c, &node.url("/Patient"), &format!("Metric{i}")).status(), 201);
    }
    assert_eq!(c.get(node.url("/Patient?family=Metric1&birthdate=ge1980")).send().unwrap().status(), 200);
    assert_eq!(c.get(node.url("/Patient/does-not-exist")).send().unwrap().status(), 404);
    let first = scrape(&c, &node.url("/metrics"));
    assert_eq!(promtool_check(&first), "", "promtool on:\n{first}");
    let s = samples(&first);
    let created = value(&s, "kiln_http_requests_total", &[r#"interaction="create""#, r#"type="Patient""#, r#"status="201""#]);
    assert_eq!(created, Some(3.0), "{first}");
    assert_eq!(value(&s, "kiln_http_requests_total", &[r#"interaction="read""#, r#"status="404""#]), Some(1.0));
    assert_eq!(value(&s, "kiln_http_request_duration_seconds_count", &[r#"interaction="create""#, r#"type="Patient""#]), Some(3.0));
    for kind in ["string", "date"] {
        assert_eq!(value(&s, "kiln_search_requests_total", &[&format!(r#"param_type="{kind}""#)]), Some(1.0), "{kind}");
    }
    assert_eq!(value(&s, "kiln_raft_role", &[r#"role="leader""#]), Some(1.0));
    assert_eq!(value(&s, "kiln_raft_role", &[r#"role="follower""#]), Some(0.0));
    assert!(value(&s, "kiln_raft_term", &[]).unwrap_or(0.0) >= 1.0);
    assert!(value(&s, "kiln_raft_proposals_total", &[]).unwrap_or(0.0) >= 3.0);
    assert!(value(&s, "kiln_raft_apply_seconds_count", &[]).unwrap_or(0.0) >= 1.0);
    assert!(value(&s, "kiln_raft_fsync_seconds_count", &[]).unwrap_or(0.0) >= 1.0);
    assert!(value(&s, "kiln_sled_size_bytes", &[]).unwrap_or(0.0) > 0.0);
    assert_eq!(value(&s, "kiln_raft_proposals_in_flight", &[]), Some(0.0));
    assert_eq!(value(&s, "kiln_export_jobs", &[r#"status="active""#]), Some(0.0));
    let applied = value(&s, "kiln_raft_applied_index", &[]).expect("applied index");
    assert_eq!(value(&s, "kiln_raft_commit_index", &[]), Some(applied));
    for family in ["kiln_node_info", "kiln_raft_log_entries", "kiln_raft_apply_batch_entries_bucket", "kiln_raft_snapshot_installs_total", "kiln_http_requests_in_flight"] {
        assert!(value(&s, family, &[]).is_some(), "{family} missing:\n{first}");
    }

    for i in 3..5 {
        assert_eq!(create(&c, &node.url("/Patient"), &format!("Metric{i}")).status(), 201);
    }
    let second = samples(&scrape(&c, &node.url("/metrics")));
    assert_eq!(value(&second, "kiln_http_requests_total", &[r#"interaction="create""#, r#"status="201""#]), Some(5.0));
    assert!(value(&second, "kiln_raft_applied_index", &[]).unwrap_or(0.0) >= applied + 2.0);
    // The first scrape counted itself once it answered.
    assert_eq!(value(&second, "kiln_http_requests_total", &[r#"interaction="metrics""#]), Some(1.0));
}

#[test]
fn metrics_need_the_admin_credential_when_auth_is_on() {
    const SECRET: &str = "metrics-secret-0123456789-0123456789-abcdef";
    const ADMIN_TOKEN: &str = "operator-token-0123456789";
    let keys = tempfile::tempdir().unwrap();
    std::fs::write(keys.path().join("secret"), SECRET).unwrap();
    std::fs::write(keys.path().join("admin-token"), ADMIN_TOKEN).unwrap();
    let admin_key = "prometheus-scraper-key-0123";
    let key_hash = hex::encode(kiln::auth::api_keys::hash(admin_key));
    std::fs::write(keys.path().join("keys.toml"), format!("[[key]]\nname = \"prometheus\"\ngroup = \"admin\"\nsha256 = \"{key_hash}\"\n")).unwrap();
    let node = TestNode::start_with(FhirVersion::R4, |cfg| {
        cfg.auth = AuthConfig {
            mode: AuthMode::Jwt,
            hs256_secret_file: Some(keys.path().join("secret")),
            api_keys_file: Some(keys.path().join("keys.toml")),
            ..AuthConfig::default()
        };
        cfg.admin_listen = Some("127.0.0.1:0".into());
        cfg.admin_token_file = Some(keys.path().join("admin-token"));
    });
    let c = client();
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let token = |groups: &[&str]| kiln::auth::token::sign_hs256(SECRET.as_bytes(), &json!({"sub": "t", "exp": exp, "cognito:groups": groups})).unwrap();
    let get = |path: &str, bearer: Option<&str>| {
        let mut r = c.get(node.url(path));
        if let Some(t) = bearer {
            r = r.bearer_auth(t);
        }
        r.send().unwrap().status().as_u16()
    };
    assert_eq!(get("/metrics", None), 401);
    assert_eq!(get("/metrics", Some(&token(&["practitioner"]))), 403);
    assert_eq!(get("/%6Detrics", Some(&token(&["practitioner"]))), 403, "however the path is spelled");
    assert_eq!(get("/metrics/", Some(&token(&["practitioner"]))), 403);
    assert_eq!(get("/metrics", Some(&token(&["admin"]))), 200);
    // An API key of the admin group (what a Prometheus server can present).
    let with_key = c.get(node.url("/metrics")).header("x-api-key", admin_key).send().unwrap();
    assert_eq!(with_key.status(), 200);
    assert!(with_key.text().unwrap().contains("kiln_raft_term"));
    // The operator listener: its bearer token.
    let admin = format!("{}/metrics", node.admin_base());
    assert_eq!(c.get(&admin).send().unwrap().status(), 401);
    assert_eq!(c.get(&admin).bearer_auth(token(&["admin"])).send().unwrap().status(), 401, "a FHIR token is not the operator token");
    let text = c.get(&admin).bearer_auth(ADMIN_TOKEN).send().unwrap().text().unwrap();
    assert!(text.contains("kiln_http_requests_total{"), "{text}");
    assert_eq!(promtool_check(&text), "");
    // Refusals are counted too.
    let s = samples(&text);
    assert!(value(&s, "kiln_http_requests_total", &[r#"interaction="metrics""#, r#"status="401""#]).unwrap_or(0.0) >= 1.0, "{text}");
}

#[test]
fn request_ids_are_echoed_or_made() {
    let node = TestNode::start();
    let c = client();
    let id_of = |r: &reqwest::blocking::Response| r.headers().get("x-request-id").map(|v| v.to_str().unwrap().to_string());
    let given = c.get(node.url("/metadata")).header("x-request-id", "abc-123.def_4:5").send().unwrap();
    assert_eq!(id_of(&given).as_deref(), Some("abc-123.def_4:5"));
    let made = c.get(node.url("/metadata")).send().unwrap();
    let made = id_of(&made).expect("a generated id");
    assert!(uuid_like(&made), "{made}");
    let again = c.get(node.url("/metadata")).send().unwrap();
    assert_ne!(id_of(&again).as_deref(), Some(made.as_str()), "each request its own id");
    for bad in ["x".repeat(129), "two words".to_string(), "<script>".to_string(), "quote\"s".to_string()] {
        let r = c.get(node.url("/metadata")).header("x-request-id", bad.as_str()).send().unwrap();
        let got = id_of(&r).expect("an id");
        assert!(got != bad && uuid_like(&got), "{bad:?} replaced, got {got}");
    }
    // On errors and on writes too.
    let missing = c.get(node.url("/Patient/nope")).header("x-request-id", "req-404").send().unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(id_of(&missing).as_deref(), Some("req-404"));
    let created = c.post(node.url("/Patient")).header("content-type", "application/fhir+json").header("x-request-id", "req-201").body(r#"{"resourceType":"Patient"}"#).send().unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(id_of(&created).as_deref(), Some("req-201"));
    let bad_json = c.post(node.url("/Patient")).header("content-type", "application/fhir+json").header("x-request-id", "req-400").body("{").send().unwrap();
    assert_eq!(bad_json.status(), 400);
    assert_eq!(id_of(&bad_json).as_deref(), Some("req-400"));
}

fn uuid_like(s: &str) -> bool {
    s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-') && s.matches('-').count() == 4
}

/// Kills and waits for a child process when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn json_logs_tie_a_writes_apply_to_its_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr.log");
    let child = Command::new(kiln_bin())
        .args(["serve", "--log-format", "json", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("RUST_LOG", "info,kiln=debug")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("kiln serve starts");
    let mut child = Reaped(child);
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("Kiln listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}")).to_string();
    let c = client();
    let resp = c
        .post(format!("{base}/Patient"))
        .header("content-type", "application/fhir+json")
        .header("x-request-id", "trace-me-4711")
        .body(r#"{"resourceType":"Patient"}"#)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 201);
    // The log thread writes in batches: wait for the line.
    let started = Instant::now();
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"))).collect();
        let in_request = |l: &&Value| l["spans"].as_array().is_some_and(|s| s.iter().any(|s| s["request_id"] == "trace-me-4711"));
        let applied = lines.iter().filter(in_request).any(|l| l["fields"]["message"] == "applied" && l["fields"]["index"].as_u64().is_some());
        let answered = lines.iter().filter(in_request).any(|l| l["fields"]["message"] == "request answered" && l["fields"]["status"] == 201);
        if applied && answered {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "no `applied` / `request answered` line with the request id in:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A Prometheus server on 127.0.0.1 scraping `targets` every second, storing under `dir`.
fn prometheus(dir: &Path, jobs: &[(&str, Vec<String>)]) -> (Reaped, String) {
    let mut config = String::from("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n");
    for (job, targets) in jobs {
        let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        config.push_str(&format!("  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n", list.join(", ")));
    }
    let file = dir.join("prometheus.yml");
    std::fs::write(&file, &config).unwrap();
    let check = tool("promtool").args(["check", "config"]).arg(&file).output().expect("promtool runs");
    assert!(check.status.success(), "promtool check config: {}{}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    // The port is free when picked; if another process takes it before Prometheus binds it,
    // Prometheus exits: start it again on another one.
    for _ in 0..5 {
        let port = free_ports(1)[0];
        let mut child = tool("prometheus")
            .arg(format!("--config.file={}", file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("prometheus starts");
        let start = std::time::Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return (Reaped(child), format!("http://127.0.0.1:{port}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("prometheus did not start listening (see {})", dir.join("prometheus.log").display());
}

/// The result vector of an instant query (empty while Prometheus is not up yet).
fn query(c: &Client, base: &str, q: &str) -> Vec<Value> {
    c.get(format!("{base}/api/v1/query"))
        .query(&[("query", q)])
        .timeout(Duration::from_secs(2))
        .send()
        .ok()
        .and_then(|r| r.json::<Value>().ok())
        .and_then(|v| v["data"]["result"].as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn prometheus_scrapes_every_node_of_a_cluster() {
    let cluster = TestCluster::start(3);
    let leader = cluster.leader();
    let c = client();
    assert_eq!(create(&c, &cluster.url(leader, "/Patient"), "Scraped").status(), 201);
    let fhir: Vec<String> = cluster.configs.iter().map(|cfg| cfg.listen.clone()).collect();
    let admin: Vec<String> = cluster.configs.iter().filter_map(|cfg| cfg.admin_listen.clone()).collect();
    let dir = tempfile::tempdir().unwrap();
    let (_prom, base) = prometheus(dir.path(), &[("kiln", fhir), ("kiln-admin", admin)]);
    let started = Instant::now();
    let up = loop {
        let up = query(&c, &base, "up");
        let all_up = up.len() == 6 && up.iter().all(|s| s["value"][1] == "1");
        let one_leader = query(&c, &base, r#"sum(kiln_raft_role{job="kiln",role="leader"})"#).first().is_some_and(|s| s["value"][1] == "1");
        if all_up && one_leader {
            break up;
        }
        let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
        assert!(started.elapsed() < Duration::from_secs(30), "not every target up after 30 s: {up:?}\nprometheus log:\n{log}");
        std::thread::sleep(Duration::from_millis(500));
    };
    let jobs: Vec<&str> = up.iter().filter_map(|s| s["metric"]["job"].as_str()).collect();
    assert_eq!(jobs.iter().filter(|j| **j == "kiln").count(), 3, "{up:?}");
    // The queries docs/operations.md suggests answer.
    let lag = query(&c, &base, r#"max by (instance) (kiln_raft_peer_lag_entries{job="kiln"})"#);
    assert_eq!(lag.len(), 1, "the leader reports its peers' lag: {lag:?}");
    let gap = query(&c, &base, r#"max(kiln_raft_commit_index{job="kiln"}) - min(kiln_raft_applied_index{job="kiln"})"#);
    assert_eq!(gap.len(), 1, "{gap:?}");
    let created = query(&c, &base, r#"sum(kiln_http_requests_total{job="kiln",interaction="create",status="201"})"#);
    assert_eq!(created.first().map(|s| s["value"][1].clone()), Some(json!("1")), "{created:?}");
    assert_eq!(json(c.get(format!("{base}/api/v1/targets")).send().unwrap())["status"], "success");
}
