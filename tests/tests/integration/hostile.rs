//! Hostile authenticated clients (issue #25): the eight reproductions and the two notes, each
//! run against a real node with `[auth] mode = "jwt"`, `[tenancy]` and `[subscriptions]` on and
//! two HTTP workers, while a probe keeps asking for `/metadata` and an authorized read and
//! asserts their p99 stays low. Then a costly request whose client hangs up must stop using
//! the CPU.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::auth::{AuthConfig, AuthMode};
use kiln::fhir::FhirVersion;
use kiln_tests::{client, json, TestNode};
use reqwest::blocking::Client;
use serde_json::{json, Value};

const SECRET: &str = "test-secret-0123456789-0123456789-abcdef";
const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "kiln-test";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A token with the standard claims, `extra` merged in (a `null` removes a claim).
fn token(extra: Value) -> String {
    let mut claims = json!({"sub": "mallory", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600});
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    kiln::auth::token::sign_hs256(SECRET.as_bytes(), &claims).unwrap()
}

fn node(tweak: impl FnOnce(&mut kiln::config::Config)) -> (TestNode, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let secret = dir.path().join("secret");
    let n = TestNode::start_with(FhirVersion::R4, |cfg| {
        cfg.auth = AuthConfig { mode: AuthMode::Jwt, hs256_secret_file: Some(secret), issuer: Some(ISSUER.into()), audience: Some(AUDIENCE.into()), ..AuthConfig::default() };
        cfg.tenancy.enabled = true;
        cfg.subscriptions.enabled = true;
        cfg.http_workers = 2;
        tweak(cfg);
    });
    (n, dir)
}

/// Loads `patients` Patients with `per` Observations each, through transaction bundles.
fn load(c: &Client, n: &TestNode, tok: &str, patients: usize, per: usize) {
    for chunk in (0..patients).collect::<Vec<_>>().chunks(100) {
        let mut entries = Vec::new();
        for p in chunk {
            entries.push(json!({"fullUrl": format!("urn:uuid:00000000-0000-0000-0000-{p:012}"), "resource": {"resourceType": "Patient", "name": [{"family": format!("F{p}")}]}, "request": {"method": "POST", "url": "Patient"}}));
            for o in 0..per {
                entries.push(json!({"resource": {"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "1234-5"}]},
                    "subject": {"reference": format!("urn:uuid:00000000-0000-0000-0000-{p:012}")}, "valueQuantity": {"value": o * 7 + p, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"},
                    "note": [{"text": "x".repeat(200)}]}, "request": {"method": "POST", "url": "Observation"}}));
            }
        }
        let r = c.post(n.url("/")).bearer_auth(tok).header("content-type", "application/fhir+json").json(&json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).send().unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().unwrap());
    }
}

fn batch(gets: impl Iterator<Item = String>) -> Value {
    let entry: Vec<Value> = gets.map(|u| json!({"request": {"method": "GET", "url": u}})).collect();
    json!({"resourceType": "Bundle", "type": "batch", "entry": entry})
}

fn status_of(entry: &Value) -> u16 {
    entry["response"]["status"].as_str().unwrap_or("0").split(' ').next().unwrap().parse().unwrap()
}

fn diagnostics(v: &Value) -> String {
    v["issue"].as_array().into_iter().flatten().filter_map(|i| i["diagnostics"].as_str()).collect::<Vec<_>>().join(" | ")
}

/// Asks for `/metadata` and an authorized read in turn until stopped; their latencies.
struct Probe {
    stop: Arc<AtomicBool>,
    done: std::thread::JoinHandle<(Vec<Duration>, Vec<Duration>, usize)>,
}

impl Probe {
    fn start(base: String, read_url: String, tok: String) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let done = std::thread::spawn(move || {
            let c = client();
            // Once before measuring: the node builds its CapabilityStatement on first use.
            c.get(format!("{base}/metadata")).send().unwrap();
            let (mut meta, mut reads, mut failed) = (Vec::new(), Vec::new(), 0);
            while !s.load(Ordering::SeqCst) {
                let t = Instant::now();
                let ok = c.get(format!("{base}/metadata")).send().is_ok_and(|r| r.status() == 200);
                meta.push(t.elapsed());
                let t = Instant::now();
                let ok2 = c.get(&read_url).bearer_auth(&tok).send().is_ok_and(|r| r.status() == 200);
                reads.push(t.elapsed());
                failed += usize::from(!ok) + usize::from(!ok2);
                // Short pauses: a few hundred samples, so the p99 is a percentile and not the
                // single slowest request.
                std::thread::sleep(Duration::from_millis(2));
            }
            (meta, reads, failed)
        });
        Probe { stop, done }
    }

    fn finish(self) -> (Duration, Duration, usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        let (mut meta, mut reads, failed) = self.done.join().unwrap();
        eprintln!("probe samples: metadata {meta:?}\nreads {reads:?}");
        let p99 = |v: &mut Vec<Duration>| {
            v.sort();
            v[(v.len() * 99 / 100).min(v.len() - 1)]
        };
        let n = meta.len();
        (p99(&mut meta), p99(&mut reads), failed, n)
    }
}

/// CPU seconds this process (the node runs in it) has used.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    // Fields 14 and 15 (utime, stime), counted from 1 with the state as field 3.
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

#[test]
fn hostile_clients_are_bounded_and_auth_edges_are_closed() {
    let (n, _dir) = node(|cfg| {
        cfg.limits.max_request_rows = 20_000;
        cfg.limits.max_batch_response_bytes = 2 * 1024 * 1024;
        cfg.limits.max_concurrent_per_principal = 2;
    });
    let c = client();
    let practitioner = token(json!({"cognito:groups": ["practitioner"]}));
    load(&c, &n, &practitioner, 300, 10);
    let pid = json(c.get(n.url("/Patient?_count=1")).bearer_auth(&practitioner).send().unwrap())["entry"][0]["resource"]["id"].as_str().unwrap().to_string();
    let patient_app = token(json!({"scope": "patient/*.rs", "patient": pid}));
    let probe = Probe::start(n.base.clone(), n.url(&format!("/Patient/{pid}")), practitioner.clone());
    let send_batch = |tok: &str, b: &Value| {
        let t = Instant::now();
        let r = c.post(n.url("/")).bearer_auth(tok).header("content-type", "application/fhir+json").json(b).send().unwrap();
        assert_eq!(r.status(), 200);
        let v = json(r);
        (v, t.elapsed())
    };

    // 1. A patient app's batch of history pages: the entries share one budget; those past it
    // answer 400 too-costly naming the key, and the batch ends quickly.
    let (v, took) = send_batch(&patient_app, &batch((0..100).map(|_| "_history?_count=1000".to_string())));
    let entries = v["entry"].as_array().unwrap();
    let refused: Vec<&Value> = entries.iter().filter(|e| status_of(e) == 400).collect();
    assert!(refused.len() >= 80, "most of the 100 history entries are over the request's budget: {} refused", refused.len());
    assert!(diagnostics(&refused[0]["response"]["outcome"]).contains("limits.max_request_rows"), "{}", refused[0]);
    assert!(took < Duration::from_secs(20), "the batch took {took:?}");
    // The same with a practitioner's plain history entries.
    let (v, _) = send_batch(&practitioner, &batch((0..100).map(|_| "Observation/_history?_count=1000".to_string())));
    assert!(v["entry"].as_array().unwrap().iter().filter(|e| status_of(e) >= 400).count() >= 80, "past the row budget (400) or the response bound (413)");

    // 2. Batch GET responses are bounded in bytes: entries past the bound answer 413.
    let (v, _) = send_batch(&practitioner, &batch((0..300).map(|_| "Observation?_count=1000".to_string())));
    let entries = v["entry"].as_array().unwrap();
    let over: Vec<&Value> = entries.iter().filter(|e| status_of(e) == 413).collect();
    assert!(!over.is_empty(), "some entries pass limits.max_batch_response_bytes");
    assert!(diagnostics(&over[0]["response"]["outcome"]).contains("limits.max_batch_response_bytes"));
    let body_bytes = serde_json::to_vec(&v).unwrap().len();
    assert!(body_bytes < 8 * 1024 * 1024, "the response stayed near the bound: {body_bytes} bytes");

    // 3. A search's work is bounded: long OR lists, too many parameters, a large _search form,
    // and a scan past the row budget.
    let values: Vec<String> = (0..1001).map(|i| i.to_string()).collect();
    let r = c.get(n.url(&format!("/Observation?value-quantity={}", values.join(",")))).bearer_auth(&practitioner).send().unwrap();
    assert_eq!(r.status(), 400);
    assert!(diagnostics(&json(r)).contains("limits.max_or_values"));
    let many: Vec<String> = (0..101).map(|i| format!("_has:Observation:subject:value-quantity=gt{i}")).collect();
    let r = c.get(n.url(&format!("/Patient?{}", many.join("&")))).bearer_auth(&practitioner).send().unwrap();
    assert_eq!(r.status(), 400);
    assert!(diagnostics(&json(r)).contains("limits.max_parameters"));
    let form = format!("value-quantity={}", "1,".repeat(20_000));
    let r = c.post(n.url("/Observation/_search")).bearer_auth(&practitioner).header("content-type", "application/x-www-form-urlencoded").body(form).send().unwrap();
    assert_eq!(r.status(), 413);
    assert!(diagnostics(&json(r)).contains("limits.max_query_bytes"));
    let r = c.get(n.url(&format!("/Observation?code={}", "x".repeat(40_000)))).bearer_auth(&practitioner).send().unwrap();
    assert_eq!(r.status(), 414);
    assert!(diagnostics(&json(r)).contains("limits.max_query_bytes"));
    let ors: Vec<String> = (0..99).map(|i| format!("gt{i}")).collect();
    let r = c.get(n.url(&format!("/Observation?value-quantity={}", ors.join(",")))).bearer_auth(&patient_app).send().unwrap();
    assert_eq!(r.status(), 400, "99 range scans of 3,000 rows pass a 20,000-row budget, scoped caller or not");
    assert!(diagnostics(&json(r)).contains("limits.max_request_rows"));

    // 4. A configured issuer and audience are required; 5. a tenant claim that is not one
    // string is refused; the note: a token without sub is refused.
    for (what, claims) in [
        ("no iss", json!({"iss": null})),
        ("no aud", json!({"aud": null})),
        ("no sub", json!({"sub": null})),
        ("tenant list", json!({"custom:tenantId": ["t2"]})),
        ("tenant number", json!({"custom:tenantId": 2})),
        ("tenant bool", json!({"custom:tenantId": true})),
        ("tenant object", json!({"custom:tenantId": {"id": "t2"}})),
        ("tenant empty", json!({"custom:tenantId": ""})),
    ] {
        let mut claims = claims;
        claims["cognito:groups"] = json!(["practitioner"]);
        let r = c.get(n.url("/Patient")).bearer_auth(token(claims)).send().unwrap();
        assert_eq!(r.status(), 401, "{what}");
    }

    // 6. patient/ scopes start no system or Group export.
    for url in ["/$export", "/$export?_type=Patient", "/Group/g1/$export"] {
        let r = c.get(n.url(url)).bearer_auth(&patient_app).header("prefer", "respond-async").send().unwrap();
        assert_eq!(r.status(), 403, "{url}");
    }
    // 7. Export files follow the caller's current grant, not only its sub.
    let r = c.get(n.url("/$export?_type=Patient")).bearer_auth(&practitioner).header("prefer", "respond-async").send().unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().unwrap());
    let status_url = r.headers()["content-location"].to_str().unwrap().to_string();
    let narrower = token(json!({"scope": "patient/Observation.rs", "patient": pid}));
    let started = Instant::now();
    let manifest = loop {
        let r = c.get(&status_url).bearer_auth(&practitioner).send().unwrap();
        if r.status() == 200 {
            break json(r);
        }
        assert_eq!(r.status(), 202);
        assert!(started.elapsed() < Duration::from_secs(60), "export did not finish");
        std::thread::sleep(Duration::from_millis(100));
    };
    let file = manifest["output"][0]["url"].as_str().unwrap().to_string();
    assert_eq!(c.get(&status_url).bearer_auth(&narrower).send().unwrap().status(), 403);
    assert_eq!(c.get(&file).bearer_auth(&narrower).send().unwrap().status(), 403);
    assert_eq!(c.delete(&status_url).bearer_auth(&narrower).send().unwrap().status(), 403);
    assert_eq!(c.get(&file).bearer_auth(&practitioner).send().unwrap().status(), 200);

    // 8. Rest-hook endpoints in special-purpose ranges or IPv6 forms embedding IPv4.
    for host in ["[64:ff9b::a9fe:a9fe]", "[2002:a9fe:a9fe::]", "[::169.254.169.254]", "[::ffff:0:a9fe:a9fe]", "[fec0::1]", "192.0.2.1", "198.18.0.1", "240.0.0.1"] {
        let sub = json!({"resourceType": "Subscription", "status": "requested", "reason": "x", "criteria": "Observation?status=final",
            "channel": {"type": "rest-hook", "endpoint": format!("http://{host}/fhir"), "payload": "application/fhir+json"}});
        let r = c.post(n.url("/Subscription")).bearer_auth(&practitioner).json(&sub).send().unwrap();
        let code = r.status().as_u16();
        let text = r.text().unwrap();
        assert!((400..500).contains(&code) && text.contains("allow_private_endpoints"), "{host}: {code} {text}");
    }

    // The note: with auth on, a Host header does not choose the links.
    let r = c.post(n.url("/Patient")).bearer_auth(&practitioner).header("host", "evil.example").json(&json!({"resourceType": "Patient"})).send().unwrap();
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(location.starts_with(&n.base), "{location}");

    // Fair share: a batch with GET entries holds one of its caller's two places from its first
    // entry to its last, so while two such batches run, a third costly request of the same
    // caller answers 429 with Retry-After. (The three race: when a batch comes last, the batch
    // is the one refused, having done nothing.)
    // (If one batch ends before the other has begun, nothing overlapped: another round.)
    let slow = Arc::new(batch((0..2000).map(|_| "Observation/_history?_count=1".to_string())));
    let round = || {
        let held: Vec<_> = (0..2)
            .map(|_| {
                let (url, tok, slow) = (n.url("/"), practitioner.clone(), slow.clone());
                std::thread::spawn(move || {
                    let r = client().post(url).bearer_auth(tok).header("content-type", "application/fhir+json").json(&*slow).send().unwrap();
                    let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                    (r.status().as_u16(), retry_after, r.text().unwrap())
                })
            })
            .collect();
        let mut throttled = None;
        while throttled.is_none() && !held.iter().any(|h| h.is_finished()) {
            let r = c.get(n.url("/Observation/_history?_count=1")).bearer_auth(&practitioner).send().unwrap();
            if r.status() == 429 {
                // Another caller is served meanwhile.
                let other = token(json!({"sub": "trent", "cognito:groups": ["practitioner"]}));
                assert_eq!(c.get(n.url("/Observation/_history?_count=1")).bearer_auth(&other).send().unwrap().status(), 200);
                let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                throttled = Some((429, retry_after, r.text().unwrap()));
            }
        }
        let batches: Vec<_> = held.into_iter().map(|h| h.join().unwrap()).collect();
        let refused: Vec<_> = batches.iter().filter(|b| b.0 == 429).cloned().collect();
        assert!(batches.iter().all(|b| b.0 == 200 || b.0 == 429), "batch answers: {:?}", batches.iter().map(|b| b.0).collect::<Vec<_>>());
        eprintln!("fair share: the loop throttled: {}, batches refused: {}", throttled.is_some(), refused.len());
        match (throttled, refused.as_slice()) {
            (Some(t), []) => Some(t),
            (None, [one]) => Some(one.clone()),
            (None, []) => None,
            (t, r) => panic!("two batches and a history loop of one caller: loop throttled {:?}, batches refused {}", t.map(|t| t.0), r.len()),
        }
    };
    let (_, retry_after, text) = (0..3).find_map(|_| round()).expect("in three rounds the two batches never ran at the same time");
    assert_eq!(retry_after.as_deref(), Some("1"));
    assert!(diagnostics(&serde_json::from_str(&text).unwrap()).contains("limits.max_concurrent_per_principal"), "{text}");

    let (meta_p99, read_p99, failed, probes) = probe.finish();
    eprintln!("probe: {probes} rounds, /metadata p99 {meta_p99:?}, read p99 {read_p99:?}, {failed} failed");
    assert!(probes >= 50, "the probe ran {probes} times");
    assert_eq!(failed, 0, "every probe request was answered 200");
    assert!(meta_p99 <= Duration::from_millis(100), "GET /metadata p99 {meta_p99:?} during the attack");
    assert!(read_p99 <= Duration::from_millis(50), "authorized read p99 {read_p99:?} during the attack");
}

#[test]
fn work_stops_when_the_client_hangs_up() {
    let (n, _dir) = node(|cfg| cfg.limits.max_request_rows = u64::MAX / 2);
    let c = client();
    let practitioner = token(json!({"cognito:groups": ["practitioner"]}));
    load(&c, &n, &practitioner, 100, 10);
    // 3,000 entries that each read every history row (the caller sees none of them): minutes
    // of work if it went on.
    let nobody = token(json!({"scope": "patient/*.rs", "patient": "nobody"}));
    let slow = serde_json::to_vec(&batch((0..3000).map(|_| "_history?_count=10".to_string()))).unwrap();
    // CPU shares (cores) of this process, which runs the node: idle, while the batch works, and
    // after its client left. Compared with each other, not with fixed figures: on a loaded
    // machine the batch gets what the others leave it.
    let share = |ms: u64| {
        let (t, c) = (Instant::now(), cpu_seconds());
        std::thread::sleep(Duration::from_millis(ms));
        (cpu_seconds() - c) / t.elapsed().as_secs_f64()
    };
    let idle = share(500);
    let mut s = TcpStream::connect(n.base.trim_start_matches("http://")).unwrap();
    write!(s, "POST / HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {nobody}\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\n\r\n", slow.len()).unwrap();
    s.write_all(&slow).unwrap();
    // It is working: the process uses CPU.
    let busy = share(1000);
    assert!(busy > idle + 0.15, "the batch keeps the CPU busy while its client waits ({busy:.2} cores, idle {idle:.2})");
    s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    let mut buf = [0u8; 16];
    assert!(s.read(&mut buf).is_err(), "no answer yet");
    drop(s);
    // Within 100 ms of the hang-up (checked every 2,048 rows) the work stops: over the next
    // second the process is about as idle as before the request.
    std::thread::sleep(Duration::from_millis(300));
    let after = share(1000);
    assert!(after - idle < (busy - idle) * 0.4, "work went on after the client left: {after:.2} cores busy (while working {busy:.2}, idle {idle:.2})");
    // And the node still answers.
    assert_eq!(c.get(n.url("/metadata")).send().unwrap().status(), 200);
}
