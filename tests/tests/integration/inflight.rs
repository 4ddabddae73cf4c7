//! Node-wide bounds on what clients hold (issue #25): response bodies not yet read by their
//! clients (`limits.max_inflight_response_bytes`), and connections that trickle their request
//! head (`limits.max_connections`, `limits.header_timeout_ms`), against real nodes.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use kiln::fhir::FhirVersion;
use kiln_tests::{client, host_port, json, ChildNode, TestNode};
use reqwest::blocking::Client;
use serde_json::{json, Value};

const PATIENTS: usize = 24;
const NAME: usize = 900_000;

/// Sends a GET on a fresh connection until it is answered 200, and reads only the status
/// line of that answer: the node holds the rest.
fn ask_and_not_read(base: &str, path: &str) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut s = TcpStream::connect(host_port(base)).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: application/fhir+json\r\n\r\n").unwrap();
        let mut line = [0u8; 12];
        s.read_exact(&mut line).unwrap();
        if &line == b"HTTP/1.1 200" {
            return s;
        }
        // Refused while another large answer held the room: ask again.
        assert!(Instant::now() < deadline, "{path}: {}", String::from_utf8_lossy(&line));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asks for `url` until the answer is 503 (the room is taken); the 503's body.
fn until_refused(c: &Client, url: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = c.get(url).send().unwrap();
        match r.status().as_u16() {
            503 => {
                assert_eq!(r.headers().get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
                return json(r);
            }
            200 => assert!(Instant::now() < deadline, "{url} was never refused while a client held a large response unread"),
            s => panic!("{url}: {s} {}", r.text().unwrap_or_default()),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asks for `url` until it is answered 200 again (the room came back).
fn until_served(c: &Client, url: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let status = c.get(url).send().unwrap().status().as_u16();
        if status == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "{url} still answers {status} after the held response was read or dropped");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A node whose response room is `room` bytes, holding [`PATIENTS`] Patients of ~900 KB; their ids.
fn big_node(room: usize, stall_ms: u64) -> (TestNode, Vec<String>) {
    let n = TestNode::start_with(FhirVersion::R4, |cfg| {
        cfg.limits.max_inflight_response_bytes = room;
        cfg.limits.max_batch_response_bytes = room;
        cfg.limits.stall_timeout_ms = stall_ms;
    });
    let c = client();
    let mut ids = Vec::new();
    for i in 0..PATIENTS {
        // PUT with its own id: a write that timed out on a loaded box (503, may still be
        // applied) is sent again safely.
        let id = format!("big{i}");
        let mut body = big(i);
        body["id"] = json!(id);
        let put = || c.put(n.url(&format!("/Patient/{id}"))).header("content-type", "application/fhir+json").body(body.to_string()).send().unwrap().status().as_u16();
        let status = (0..5).map(|_| put()).find(|s| *s != 503).unwrap_or(503);
        assert!(status == 200 || status == 201, "PUT Patient/{id}: {status}");
        ids.push(id);
    }
    (n, ids)
}

fn big(i: usize) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": format!("Big{i}"), "text": "x".repeat(NAME)}]})
}

#[test]
fn responses_not_yet_read_are_bounded_node_wide() {
    let (n, ids) = big_node(24 << 20, 30_000);
    let c = client();
    // One page of all of them: ~21 MB, more than the kernel's socket buffers take.
    let page = format!("/Patient?_count={PATIENTS}");
    let url = n.url(&page);
    let mut held = ask_and_not_read(&n.base, &page);
    let oo = until_refused(&c, &url);
    assert_eq!(oo["issue"][0]["code"], "throttled", "{oo}");
    assert!(oo.to_string().contains("limits.max_inflight_response_bytes"), "{oo}");
    // Smaller answers still fit in what is left.
    let one = c.get(n.url(&format!("/Patient/{}", ids[0]))).send().unwrap();
    assert_eq!(one.status(), 200, "a 900 KB read beside the held page");
    assert!(one.bytes().unwrap().len() > NAME);
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": page.trim_start_matches('/')}},
        {"request": {"method": "GET", "url": format!("Patient/{}", ids[1])}},
    ]});
    let r = c.post(n.url("/")).header("content-type", "application/fhir+json").body(batch.to_string()).send().unwrap();
    assert_eq!(r.status(), 200);
    let b = json(r);
    assert_eq!(b["entry"][0]["response"]["status"].as_str().unwrap().split(' ').next(), Some("503"), "{}", b["entry"][0]["response"]);
    assert!(b["entry"][0]["response"]["outcome"].to_string().contains("limits.max_inflight_response_bytes"));
    assert_eq!(b["entry"][1]["response"]["status"].as_str().unwrap().split(' ').next(), Some("200"));
    assert_eq!(b["entry"][1]["resource"]["id"], ids[1].as_str());
    // The holder reads its page to the end: the room comes back.
    let mut got = Vec::new();
    held.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    while got.len() < PATIENTS * NAME {
        let k = held.read(&mut buf).unwrap();
        assert!(k > 0, "the held page ended early after {} bytes", got.len());
        got.extend_from_slice(&buf[..k]);
    }
    until_served(&c, &url, Duration::from_secs(10));
    // A holder that hangs up without reading gives the room back too.
    let gone = ask_and_not_read(&n.base, &page);
    until_refused(&c, &url);
    drop(gone);
    until_served(&c, &url, Duration::from_secs(10));
}

#[test]
fn writes_are_answered_and_clients_that_stall_are_hung_up_on() {
    // Room for the page and about 400 KiB more: less than one more Patient.
    let estimate = PATIENTS * (NAME + 300) + 2000;
    let (n, ids) = big_node(estimate + (400 << 10), 5000);
    let c = client();
    let page = format!("/Patient?_count={PATIENTS}");
    let url = n.url(&page);
    let size = c.get(&url).send().unwrap().bytes().unwrap().len();
    assert!(size <= estimate && estimate - size < 100_000, "the page is {size} bytes, estimated {estimate}");
    // A holder that neither reads nor hangs up.
    let mut held = ask_and_not_read(&n.base, &page);
    until_refused(&c, &url);
    // Beside it, a 900 KB read finds no room; a 900 KB create, once committed, is answered
    // with its body all the same (a client told to retry would write it twice).
    let one = c.get(n.url(&format!("/Patient/{}", ids[0]))).send().unwrap();
    assert_eq!(one.status(), 503, "no room for another 900 KB");
    let r = c.post(n.url("/Patient")).header("content-type", "application/fhir+json").body(big(99).to_string()).send().unwrap();
    assert_eq!(r.status(), 201, "a create beside a full room");
    assert!(r.bytes().unwrap().len() > NAME, "with its body");
    // After the stall the node hangs up on the holder and the room comes back, while the
    // holder still keeps its socket.
    until_served(&c, &url, Duration::from_secs(30));
    held.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = 0;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match held.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => got += k,
        }
    }
    assert!(got < PATIENTS * NAME, "the held page was cut ({got} bytes read)");
    // A body that stops arriving: 408 after the stall.
    let mut slow = TcpStream::connect(host_port(&n.base)).unwrap();
    write!(slow, "POST /Patient HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\nContent-Length: 100\r\n\r\n{{\"resourceType\"").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let start = Instant::now();
    let mut line = [0u8; 12];
    slow.read_exact(&mut line).unwrap();
    assert_eq!(&line, b"HTTP/1.1 408", "{}", String::from_utf8_lossy(&line));
    assert!(start.elapsed() >= Duration::from_millis(4900), "408 after {:?}, before the stall", start.elapsed());
}

/// Open descriptors of process `pid`.
fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn trickling_connections_cannot_take_the_descriptors() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = kiln::Config { data_dir: dir.path().join("data"), listen: "127.0.0.1:0".into(), http_workers: 2, ..kiln::Config::default() };
    cfg.limits.max_connections = 40;
    cfg.limits.header_timeout_ms = 2000;
    let path = dir.path().join("kiln.toml");
    std::fs::write(&path, toml::to_string(&cfg).unwrap()).unwrap();
    let node = ChildNode::start_config(&path, &cfg.data_dir);
    let kept = client();
    let metadata = format!("{}/metadata", node.base);
    // (Each body read to its end, so the connection goes back to the client's pool.)
    let status = |c: &Client| c.get(&metadata).send().and_then(|r| Ok((r.status().as_u16(), r.bytes()?))).map(|(s, _)| s).unwrap_or(0);
    assert_eq!(status(&kept), 200);
    let quiet = fds(node.pid());
    // 300 connections, each sending a header line every 500 ms and never ending its head.
    let mut trickle: Vec<Option<TcpStream>> = (0..300)
        .map(|_| {
            let mut s = TcpStream::connect(host_port(&node.base)).unwrap();
            s.write_all(b"GET /metadata HTTP/1.1\r\nHost: x\r\n").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
            Some(s)
        })
        .collect();
    let (mut most, mut slowest, mut closed, mut answered_408) = (0, Duration::ZERO, 0, 0);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(9) {
        for slot in trickle.iter_mut() {
            let Some(s) = slot else { continue };
            let mut buf = [0u8; 64];
            let ended = match s.read(&mut buf) {
                Ok(0) => true,
                Ok(k) => {
                    answered_408 += usize::from(buf[..k].starts_with(b"HTTP/1.1 408"));
                    true
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => s.write_all(b"X-Trickle: 1\r\n").is_err(),
                Err(_) => true,
            };
            if ended {
                closed += 1;
                *slot = None;
            }
        }
        most = most.max(fds(node.pid()));
        let t = Instant::now();
        assert_eq!(status(&kept), 200, "the kept-alive client during the trickle");
        slowest = slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(400));
    }
    // A connection takes two descriptors (its socket, and the duplicate that notices a hang-up).
    assert!(most <= quiet + 2 * 40 + 16, "the node held {most} descriptors ({quiet} before 300 trickling connections; at most 40 connections allowed)");
    assert!(slowest < Duration::from_secs(8), "the kept-alive client waited {slowest:?}");
    // Each accepted trickler is cut at the head timeout and its slot goes to the next one.
    assert!(closed >= 80 && answered_408 >= 40, "{closed} trickling connections closed by the node ({answered_408} with 408) in 9 s");
    drop(trickle);
    let fresh = Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
    assert_eq!(status(&fresh), 200, "a new client once the trickle stopped");
}

#[test]
fn a_connection_that_trickles_its_next_request_head_is_closed() {
    let n = TestNode::start_with(FhirVersion::R4, |cfg| {
        cfg.limits.idle_timeout_ms = 1000;
        cfg.limits.header_timeout_ms = 1000;
    });
    let mut s = TcpStream::connect(host_port(&n.base)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    // One whole request, its answer read to the end...
    write!(s, "GET /_health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        let k = s.read(&mut buf).unwrap();
        assert!(k > 0, "closed before the first answer");
        got.extend_from_slice(&buf[..k]);
        let text = String::from_utf8_lossy(&got).to_string();
        if let Some(head) = text.find("\r\n\r\n") {
            let len: usize = text[..head].lines().find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap())).unwrap_or(0);
            if got.len() >= head + 4 + len {
                break text;
            }
        }
    };
    assert!(end.starts_with("HTTP/1.1 200"), "{end}");
    // ...then the head of the next one, a header line every 300 ms, never finished.
    write!(s, "GET /metadata HTTP/1.1\r\nHost: x\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let start = Instant::now();
    let closed = loop {
        assert!(start.elapsed() < Duration::from_secs(30), "the connection was kept for {:?}", start.elapsed());
        match s.read(&mut buf) {
            Ok(0) => break start.elapsed(),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if s.write_all(b"X-Trickle: 1\r\n").is_err() {
                    break start.elapsed();
                }
            }
            Err(_) => break start.elapsed(),
        }
    };
    // Not before idle + header time (2 s) has passed since the answer.
    assert!(closed >= Duration::from_millis(1500), "closed after {closed:?}");
}


/// Sends a create of `len` bytes `piece` bytes every 500 ms (each pause within the stall bound);
/// returns the status line and when it came.
fn trickle_create(base: &str, len: usize, piece: usize) -> (String, Duration) {
    let mut body = json!({"resourceType": "Patient", "name": [{"family": "Trickle"}]}).to_string().into_bytes();
    body.resize(len, b' ');
    let mut s = TcpStream::connect(host_port(base)).unwrap();
    write!(s, "POST /Patient HTTP/1.1\r\nHost: x\r\nContent-Type: application/fhir+json\r\nContent-Length: {len}\r\n\r\n").unwrap();
    let start = Instant::now();
    let mut answer = s.try_clone().unwrap();
    let reader = std::thread::spawn(move || {
        answer.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut buf = vec![0u8; 4096];
        let k = answer.read(&mut buf).unwrap_or(0);
        (String::from_utf8_lossy(&buf[..k]).to_string(), start.elapsed())
    });
    for part in body.chunks(piece) {
        if s.write_all(part).is_err() || reader.is_finished() {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    reader.join().unwrap()
}

#[test]
fn a_body_trickled_within_the_pause_bound_is_cut_at_the_minimum_rate() {
    let n = TestNode::start_with(FhirVersion::R4, |cfg| {
        cfg.limits.stall_timeout_ms = 1000;
        cfg.limits.min_body_rate = 100;
    });
    // 200 bytes a second: above the rate, served.
    let (answer, _) = trickle_create(&n.base, 700, 100);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    // 20 bytes a second, never pausing 1 s: cut once the first second and 1 s per 100 bytes
    // received have passed (about 1.25 s), long before the body's end (100 s).
    let (answer, after) = trickle_create(&n.base, 2000, 10);
    assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("limits.min_body_rate"), "{answer}");
    assert!(after >= Duration::from_millis(1200) && after < Duration::from_secs(10), "408 after {after:?}");
}
