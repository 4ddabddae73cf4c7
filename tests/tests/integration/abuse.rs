//! Hostile input: every trigger of the hardening issue, answered quickly with a 4xx
//! OperationOutcome (or accepted where the spec allows it) while a concurrent reader keeps being
//! served, and the node still serves afterwards; entries larger than a frame on a 3-node
//! cluster; forged peer frames on the Raft port; the operator API off the FHIR port.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::fhir::FhirVersion;
use kiln_tests::{client, put, TestCluster, TestNode};
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{json, Value};

const FHIR: &str = "application/fhir+json";

/// Sends `req`, asserts the status and (for errors) an OperationOutcome, and that the answer
/// came quickly: the point is that nothing stalls, so the bound is generous for a busy machine.
fn expect(what: &str, req: RequestBuilder, status: u16) -> Value {
    let start = Instant::now();
    let resp: Response = req.send().unwrap_or_else(|e| panic!("{what}: {e}"));
    let took = start.elapsed();
    let got = resp.status().as_u16();
    let body = resp.text().unwrap_or_default();
    assert_eq!(got, status, "{what}: {body}");
    assert!(took < Duration::from_secs(10), "{what} took {took:?}");
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if status >= 400 {
        assert_eq!(v["resourceType"], "OperationOutcome", "{what}: {body}");
    }
    v
}

/// A reader hammering one resource until stopped; counts failures and the slowest answer.
struct Reader {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicUsize>,
    done: std::thread::JoinHandle<(usize, Duration)>,
}

impl Reader {
    fn start(url: String) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicUsize::new(0));
        let (s, f) = (stop.clone(), failures.clone());
        let done = std::thread::spawn(move || {
            let c = client();
            let (mut reads, mut slowest) = (0, Duration::ZERO);
            while !s.load(Ordering::SeqCst) {
                let t = Instant::now();
                match c.get(&url).send() {
                    Ok(r) if r.status() == 200 => reads += 1,
                    _ => {
                        f.fetch_add(1, Ordering::SeqCst);
                    }
                }
                slowest = slowest.max(t.elapsed());
                std::thread::sleep(Duration::from_millis(5));
            }
            (reads, slowest)
        });
        Reader { stop, failures, done }
    }

    fn finish(self) -> (usize, usize, Duration) {
        self.stop.store(true, Ordering::SeqCst);
        let (reads, slowest) = self.done.join().unwrap();
        (reads, self.failures.load(Ordering::SeqCst), slowest)
    }
}

fn post(c: &Client, url: &str, body: String) -> RequestBuilder {
    c.post(url).header("content-type", FHIR).body(body)
}

#[test]
fn hostile_requests_are_refused_quickly_and_the_node_keeps_serving() {
    let node = TestNode::start_with(FhirVersion::R4, |c| {
        c.limits.max_patch_ops = 100;
    });
    let c = client();
    let (s, _) = put(&c, &node.url("/Patient/reader"), &json!({"resourceType": "Patient", "id": "reader"})).unwrap();
    assert_eq!(s, 201);
    let reader = Reader::start(node.url("/Patient/reader"));

    // 1. Decimal bomb: the value is stored as sent (FHIR decimals have no range; the official
    //    example Observation-decimal holds 1e245), indexed saturated, and costs nothing.
    let bomb = |v: &str| format!(r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"valueQuantity":{{"value":{v}}}}}"#);
    for v in ["0e2147483647", "1e2147483647", "0e-2147483648", "-1e999999999999999999999", "1e-9223372036854775808", "-1e-9223372036854775807"] {
        expect(&format!("create with value {v}"), post(&c, &node.url("/Observation"), bomb(v)), 201);
    }
    let many: Vec<String> = (0..200).map(|_| "0e2147483647".to_string()).collect();
    let values: Vec<String> = many.iter().map(|v| format!(r#"{{"valueQuantity":{{"value":{v}}},"code":{{"text":"c"}}}}"#)).collect();
    let components = format!(r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"component":[{}]}}"#, values.join(","));
    expect("200 huge-exponent components", post(&c, &node.url("/Observation"), components), 201);
    expect("search with a huge exponent", c.get(node.url("/Observation?value-quantity=0e2147483647")), 400);
    expect("search past 10^38", c.get(node.url("/Observation?value-quantity=1e38")), 400);
    let found = expect("search zero", c.get(node.url("/Observation?value-quantity=0&_summary=count")), 200);
    assert!(found["total"].as_u64().unwrap() >= 2, "0e… values are found as zero: {found}");

    // 2. JSON Patch memory bomb.
    let copies: Vec<Value> = (0..40).map(|i| json!({"op": "copy", "from": "", "path": format!("/x{i}")})).collect();
    let patch = |body: &Vec<Value>| c.patch(node.url("/Patient/reader")).header("content-type", "application/json-patch+json").body(Value::from(body.clone()).to_string());
    let oo = expect("copy-doubling patch", patch(&copies), 422);
    assert_eq!(oo["issue"][0]["code"], "too-costly");
    let lots: Vec<Value> = (0..101).map(|_| json!({"op": "test", "path": "/id", "value": "reader"})).collect();
    expect("101 patch operations", patch(&lots), 422);
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                     "data": base64_of(&Value::from(copies.clone()).to_string())},
        "request": {"method": "PATCH", "url": "Patient/reader"}}]});
    expect("copy-doubling patch in a transaction", post(&c, &node.url("/"), bundle.to_string()), 422);

    // 3. Deep JSON, huge bodies, invalid UTF-8, malformed JSON.
    let deep = format!(r#"{{"resourceType":"Patient","extension":{}1{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
    expect("JSON nested 100,000 deep", post(&c, &node.url("/Patient"), deep), 400);
    let huge = format!(r#"{{"resourceType":"Patient","name":[{{"family":"{}"}}]}}"#, "x".repeat(17 * 1024 * 1024));
    expect("a 17 MiB body", post(&c, &node.url("/Patient"), huge), 413);
    let invalid = c.post(node.url("/Patient")).header("content-type", FHIR).body(vec![b'{', 0xff, 0xfe, b'}']);
    expect("invalid UTF-8", invalid, 400);
    expect("truncated JSON", post(&c, &node.url("/Patient"), r#"{"resourceType":"Patient","#.into()), 400);

    // 4. Searches: huge _count, thousands of OR values, long chains, history at the epoch.
    expect("_count=10^12", c.get(node.url("/Patient?_count=1000000000000")), 200);
    let ors: Vec<String> = (0..2_000).map(|i| format!("id{i}")).collect();
    let v = expect("2,000 OR values", c.get(node.url(&format!("/Patient?_id={}", ors.join(",")))), 400);
    assert!(v["issue"][0]["diagnostics"].as_str().unwrap().contains("limits.max_or_values"), "{v}");
    let chain = vec!["general-practitioner:Patient"; 65].join(".");
    expect("65-link chain", c.get(node.url(&format!("/Patient?{chain}.name=x"))), 400);
    expect("_history at the epoch", c.get(node.url("/_history?_at=1970-01-01")), 200);
    expect("system search sorted without _type", c.get(node.url("/?_sort=_lastUpdated")), 200);

    // 5. Conditions that cannot decide a replicated write the same way everywhere.
    let loc = r#"{"resourceType":"Location","name":"x"}"#.to_string();
    let oo = expect("conditional create on near", post(&c, &node.url("/Location"), loc.clone()).header("if-none-exist", "near=1|2|3|km"), 400);
    assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().contains("near"), "{oo}");
    expect("conditional delete on ap", c.delete(node.url("/Patient?birthdate=ap2020")), 400);

    // 6. Headers.
    let req = c.put(node.url("/Patient/reader")).header("content-type", FHIR).header("if-match", "W/\"abc").body(r#"{"resourceType":"Patient","id":"reader"}"#);
    expect("malformed If-Match", req, 400);

    // 7. Lenient handling: the self link lists only the parameters the search used.
    let b = expect("lenient search", c.get(node.url("/Patient?nonsense=1&_id=reader")).header("prefer", "handling=lenient"), 200);
    let own = b["link"].as_array().unwrap().iter().find(|l| l["relation"] == "self").unwrap()["url"].as_str().unwrap().to_string();
    assert!(own.contains("_id=reader") && !own.contains("nonsense"), "{own}");

    // 8. The operator API is not on the FHIR port.
    expect("membership on the FHIR port", c.post(node.url("/_cluster/nodes")).body(r#"{"id":9,"raft_addr":"127.0.0.1:1"}"#), 404);
    expect("digest on the FHIR port", c.get(node.url("/_cluster/digest")), 404);
    expect("status stays readable", c.get(node.url("/_cluster/status")), 200);

    let (reads, failures, slowest) = reader.finish();
    assert_eq!(failures, 0, "the concurrent reader was refused {failures} times");
    assert!(reads > 0);
    // No hostile request stalls the reader: each read within 8 s (a debug build on 2 busy cores;
    // a stalled worker would hold it for the 10 s and more the hostile requests are allowed).
    assert!(slowest < Duration::from_secs(8), "the concurrent reader waited {slowest:?} for one read ({reads} reads)");
    expect("the node still serves", c.get(node.url("/Patient/reader")), 200);
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn the_operator_api_has_its_own_listener_and_token() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "s3cret-token-of-32-characters!!!\n").unwrap();
    let node = TestNode::start_with(FhirVersion::R4, |c| {
        c.admin_listen = Some("127.0.0.1:0".into());
        c.admin_token_file = Some(token_file.clone());
    });
    let c = client();
    let admin_base = node.admin_base();
    let admin = |p: &str| format!("{admin_base}{p}");
    let oo = expect("digest without the token", c.get(admin("/_cluster/digest")), 401);
    assert_eq!(oo["issue"][0]["code"], "login");
    expect("digest with a wrong token", c.get(admin("/_cluster/digest")).bearer_auth("s3cret-token-of-32-characters!!?"), 401);
    let d = expect("digest with the token", c.get(admin("/_cluster/digest")).bearer_auth("s3cret-token-of-32-characters!!!"), 200);
    assert!(d["sha256"].is_string());
    expect("an unknown operator path", c.get(admin("/Patient")).bearer_auth("s3cret-token-of-32-characters!!!"), 404);
    expect("digest on the FHIR port", c.get(node.url("/_cluster/digest")), 404);
}

#[test]
fn writes_larger_than_a_frame_never_wedge_the_cluster() {
    // Frames of 2 MiB; bodies up to 1 MiB. Six concurrent 700 KB creates used to be batched
    // into one ~4 MB entry that followers refused forever, timing out every later write.
    let cluster = TestCluster::start_with(3, |c| {
        c.cluster.max_frame_bytes = 2 * 1024 * 1024;
        c.limits.max_body_bytes = 1024 * 1024;
        c.limits.max_bundle_bytes = 1024 * 1024;
        // Six 700 KB writes on a loaded 2-core machine can take longer than the harness's 5 s;
        // a wedged cluster still times out at 30 s.
        c.write_timeout_ms = 30_000;
    });
    let leader = cluster.leader();
    let url = cluster.url(leader, "/Patient");
    let big = json!({"resourceType": "Patient", "name": [{"family": "x".repeat(700 * 1024)}]}).to_string();
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let (url, big) = (url.clone(), big.clone());
            std::thread::spawn(move || client().post(url).header("content-type", FHIR).body(big).send().map(|r| r.status().as_u16()).unwrap_or(0))
        })
        .collect();
    let statuses: Vec<u16> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    let (s, _) = put(&client(), &cluster.url(leader, "/Patient/after"), &json!({"resourceType": "Patient", "id": "after"})).unwrap();
    assert_eq!(s, 201);
    cluster.converged(&cluster.ids(), 60);
}

/// `len u32 BE` + bincode of the transport's `Frame` (enum tag u32 LE, fixed-width integers).
fn frame(tag: u32, fields: &[u64], data: Option<&[u8]>) -> Vec<u8> {
    let mut body = tag.to_le_bytes().to_vec();
    for f in fields {
        body.extend_from_slice(&f.to_le_bytes());
    }
    if let Some(d) = data {
        body.extend_from_slice(&(d.len() as u64).to_le_bytes());
        body.extend_from_slice(d);
    }
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend(body);
    out
}

/// Whether a read saw the peer close the connection (not the read timeout passing).
fn closed(read: std::io::Result<usize>) -> bool {
    match read {
        Ok(n) => n == 0,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

#[test]
fn forged_forwards_on_the_raft_port_change_nothing() {
    let cluster = TestCluster::start(3);
    let leader = cluster.leader();
    let status = cluster.status(leader).unwrap();
    let term = status["term"].as_u64().unwrap();
    let follower = cluster.ids().into_iter().find(|i| *i != leader).unwrap();
    let raft_addr = cluster.configs[(leader - 1) as usize].cluster.raft_listen.clone().unwrap();
    // Claim to be a follower and forward an undecodable command.
    let mut s = std::net::TcpStream::connect(&raft_addr).unwrap();
    s.write_all(&frame(0, &[follower], None)).unwrap();
    s.write_all(&frame(3, &[follower, 1, term], Some(b"\x07\x00\x00\x00not a command"))).unwrap();
    s.flush().unwrap();
    // A forward on behalf of another node closes the connection.
    let other = cluster.ids().into_iter().find(|i| *i != leader && *i != follower).unwrap();
    let mut s2 = std::net::TcpStream::connect(&raft_addr).unwrap();
    s2.write_all(&frame(0, &[follower], None)).unwrap();
    s2.write_all(&frame(3, &[other, 2, term], Some(b"x"))).unwrap();
    s2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut byte = [0u8; 1];
    assert!(closed(std::io::Read::read(&mut s2, &mut byte)), "the leader closed the connection");
    // A raft MsgPropose (type 2) with no entries from a peer: dropped (raft-rs would panic on it),
    // as is a message claiming another sender. protobuf: field 1 msg_type, 2 to, 3 from, 4 term.
    let propose = [0x08, 0x02, 0x10, leader as u8, 0x18, follower as u8, 0x20, term as u8];
    s.write_all(&frame(1, &[], Some(&propose))).unwrap();
    let vote_as_other = [0x08, 0x06, 0x10, leader as u8, 0x18, other as u8, 0x20, term as u8];
    s.write_all(&frame(1, &[], Some(&vote_as_other))).unwrap();
    // Then a forward on behalf of another node, which closes the connection: frames are read in
    // order, so once it is closed the leader has handled the forged ones before it.
    s.write_all(&frame(3, &[other, 3, term], Some(b"x"))).unwrap();
    s.flush().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(closed(std::io::Read::read(&mut s, &mut byte)), "the leader read up to the closing frame");
    // Before the fix the leader proposed those bytes and every node stopped applying for good.
    let c = client();
    let (st, _) = put(&c, &cluster.url(leader, "/Patient/after-forgery"), &json!({"resourceType": "Patient", "id": "after-forgery"})).unwrap();
    assert_eq!(st, 201, "the cluster still takes writes");
    let (st, _) = put(&c, &cluster.url(follower, "/Patient/via-follower"), &json!({"resourceType": "Patient", "id": "via-follower"})).unwrap();
    assert_eq!(st, 201, "forwarding still works");
    // Every kind of write a follower forwards passes the leader's checks.
    let f = |p: &str| cluster.url(follower, p);
    let body = |v: Value| v.to_string();
    let created = post(&c, &f("/Patient"), body(json!({"resourceType": "Patient", "identifier": [{"system": "s", "value": "v1"}]})))
        .header("if-none-exist", "identifier=s|v1")
        .send()
        .unwrap();
    assert_eq!(created.status(), 201, "conditional create via a follower");
    let updated = c.put(f("/Patient?identifier=s|v1")).header("content-type", FHIR).body(body(json!({"resourceType": "Patient", "identifier": [{"system": "s", "value": "v1"}], "active": true}))).send().unwrap();
    assert_eq!(updated.status(), 200, "conditional update via a follower");
    let patched = c.patch(f("/Patient/via-follower")).header("content-type", "application/json-patch+json").body(r#"[{"op":"add","path":"/active","value":false}]"#).send().unwrap();
    assert_eq!(patched.status(), 200, "patch via a follower");
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "DELETE", "url": "Patient?identifier=s|v1"}},
        {"fullUrl": "urn:uuid:0c3d0e2a-0000-4000-8000-000000000001", "resource": {"resourceType": "Patient", "active": true}, "request": {"method": "POST", "url": "Patient"}}]});
    let resp = post(&c, &f("/"), body(tx)).send().unwrap();
    assert_eq!(resp.status(), 200, "transaction with a conditional delete via a follower: {}", resp.text().unwrap_or_default());
    let deleted = c.delete(f("/Patient?_id=via-follower")).send().unwrap();
    assert_eq!(deleted.status(), 204, "conditional delete via a follower");
    cluster.converged(&cluster.ids(), 30);
    for id in cluster.ids() {
        assert_eq!(cluster.status(id).unwrap()["role"].as_str().map(|r| r != "stopped"), Some(true));
    }
    // A frame announcing 1 GiB that never comes allocates nothing and ends only that connection.
    let mut s = std::net::TcpStream::connect(&raft_addr).unwrap();
    s.write_all(&frame(0, &[follower], None)).unwrap();
    s.write_all(&(1u32 << 30).to_be_bytes()).unwrap();
    drop(s);
    let (st, _) = put(&c, &cluster.url(leader, "/Patient/after-oversize"), &json!({"resourceType": "Patient", "id": "after-oversize"})).unwrap();
    assert_eq!(st, 201);
}

/// A request body fed from a channel: the test decides when each piece is sent.
struct Trickle {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl std::io::Read for Trickle {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(b) => (self.buf, self.pos) = (b, 0),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[test]
fn bundle_bodies_in_flight_are_bounded() {
    let node = TestNode::start_with(FhirVersion::R4, |c| {
        c.limits.max_bundle_bytes = 1 << 20;
        c.limits.max_inflight_bundle_bytes = 1 << 20;
        // (How long a bundle waits for room: B's probes must not outwait A's arrival.)
        c.write_timeout_ms = 5000;
    });
    let url = node.url("/");
    // A: a chunked body (no length: it may be as large as a bundle may be) kept open.
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let a_url = url.clone();
    let a = std::thread::spawn(move || {
        let body = reqwest::blocking::Body::new(Trickle { rx, buf: Vec::new(), pos: 0 });
        client().post(a_url).header("content-type", FHIR).body(body).send().map(|r| r.status().as_u16()).unwrap_or(0)
    });
    tx.send(br#"{"resourceType":"Bundle","#.to_vec()).unwrap();
    let small = json!({"resourceType": "Bundle", "type": "batch", "entry": []}).to_string();
    let c = client();
    // Once A's request has taken the room (it does on its head, before its body), B waits and
    // is refused; until then B passes.
    let start = Instant::now();
    let oo = loop {
        let r = post(&c, &url, small.clone()).send().unwrap();
        if r.status() == 503 {
            break serde_json::from_str::<Value>(&r.text().unwrap()).unwrap();
        }
        assert_eq!(r.status(), 200);
        assert!(start.elapsed() < Duration::from_secs(30), "the room was never taken by the open bundle");
    };
    assert_eq!(oo["issue"][0]["code"], "throttled");
    tx.send(br#""type":"batch","entry":[]}"#.to_vec()).unwrap();
    drop(tx);
    assert_eq!(a.join().unwrap(), 200);
    expect("the same bundle once the room is free", post(&c, &url, small), 200);
}
