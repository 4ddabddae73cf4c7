//! A real HTTP receiver for rest-hook tests: a `std::net::TcpListener` on 127.0.0.1 (port 0)
//! that records every request (method, path, headers, body, arrival time) and answers with a
//! settable status (and, for redirects, a `Location`). HTTP/1.1 with keep-alive and `Content-Length` bodies, which is what Kiln's
//! client sends.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    /// Header names lower-cased.
    pub headers: HashMap<String, String>,
    pub body: Vec<u8>,
    pub at: SystemTime,
}

pub struct Receiver {
    pub port: u16,
    addr: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    location: Arc<Mutex<Option<String>>>,
    stop: Arc<AtomicBool>,
}

impl Receiver {
    /// Starts answering `200` to everything.
    pub fn start() -> Receiver {
        Self::start_on(std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// [`Receiver::start`] on `ip` (an address of this machine), port 0.
    pub fn start_on(ip: std::net::IpAddr) -> Receiver {
        let listener = TcpListener::bind((ip, 0)).expect("bind receiver");
        let addr = listener.local_addr().expect("addr");
        let port = addr.port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let status = Arc::new(AtomicU16::new(200));
        let stop = Arc::new(AtomicBool::new(false));
        let location = Arc::new(Mutex::new(None));
        let (r, s, l, st) = (requests.clone(), status.clone(), location.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (r, s, l) = (r.clone(), s.clone(), l.clone());
                std::thread::spawn(move || serve(conn, r, s, l));
            }
        });
        Receiver { port, addr, requests, status, location, stop }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The status every later request is answered with.
    pub fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Every later request is answered `status` with `Location: url`.
    pub fn redirect(&self, status: u16, url: &str) {
        *self.location.lock().unwrap() = Some(url.to_string());
        self.answer(status);
    }

    pub fn requests(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    /// The requests whose path starts with `prefix`.
    pub fn under(&self, prefix: &str) -> Vec<Received> {
        self.requests().into_iter().filter(|r| r.path.starts_with(prefix)).collect()
    }

    /// Waits up to `secs` for `f` over the requests to hold.
    pub fn wait(&self, secs: u64, what: &str, f: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let start = std::time::Instant::now();
        loop {
            let all = self.requests();
            if f(&all) {
                return all;
            }
            assert!(start.elapsed() < Duration::from_secs(secs), "timed out after {secs} s waiting for {what}; got {} requests", all.len());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve(conn: TcpStream, requests: Arc<Mutex<Vec<Received>>>, status: Arc<AtomicU16>, location: Arc<Mutex<Option<String>>>) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(120)));
    let Ok(mut out) = conn.try_clone() else { return };
    let mut reader = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (Some(method), Some(path)) = (parts.next(), parts.next()) else { return };
        let (method, path) = (method.to_string(), path.to_string());
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let code = status.load(Ordering::SeqCst);
        requests.lock().unwrap().push(Received { method, path, headers, body, at: SystemTime::now() });
        let location = location.lock().unwrap().as_ref().map(|l| format!("location: {l}\r\n")).unwrap_or_default();
        let resp = format!("HTTP/1.1 {code} X\r\n{location}content-length: 0\r\n\r\n");
        if out.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}
