//! The audit log: one JSON line per FHIR request (`ts`, `subject`, `tenant`, `interaction`,
//! `type`, `id`, `method`, `path`, `status`, `outcome`), appended to `[auth] audit_file` (default:
//! stderr). Lines are gathered in memory and written by a background thread every 100 ms (or at
//! once when 1 MiB is waiting), and flushed when the node stops: a request pays for formatting one
//! line, not for a write. Measured: a write per line on the HTTP workers cost ~20% of read
//! throughput (docs/benchmarks.md, "Auth"). A node killed with SIGKILL loses at most the last
//! 100 ms of lines.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;

use super::AuthError;

/// How often waiting lines are written.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Waiting lines past this are written at once, by the request that adds them.
const MAX_WAITING: usize = 1 << 20;

/// One request, as the audit log records it.
#[derive(Serialize)]
pub struct Event<'a> {
    pub subject: &'a str,
    pub tenant: Option<&'a str>,
    pub interaction: &'a str,
    #[serde(rename = "type")]
    pub rtype: &'a str,
    pub id: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub outcome: &'a str,
}

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    #[serde(flatten)]
    event: &'a Event<'a>,
}

/// Where audit lines go.
pub struct AuditLog {
    waiting: Mutex<Vec<u8>>,
    out: Mutex<Box<dyn Write + Send>>,
}

impl AuditLog {
    /// Appends to `path` (created if missing), or writes to stderr; starts the flushing thread.
    pub fn open(path: Option<&Path>) -> Result<Arc<AuditLog>, AuthError> {
        let out: Box<dyn Write + Send> = match path {
            Some(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| AuthError::Config(format!("audit_file {}: {e}", p.display())))?,
            ),
            None => Box::new(std::io::stderr()),
        };
        let log = Arc::new(AuditLog { waiting: Mutex::new(Vec::with_capacity(64 * 1024)), out: Mutex::new(out) });
        let weak: Weak<AuditLog> = Arc::downgrade(&log);
        std::thread::Builder::new()
            .name("kiln-audit".into())
            .spawn(move || loop {
                std::thread::sleep(FLUSH_EVERY);
                match weak.upgrade() {
                    Some(log) => log.flush(),
                    None => break,
                }
            })
            .map_err(|e| AuthError::Config(format!("audit log thread: {e}")))?;
        Ok(log)
    }

    /// Records one request.
    pub fn record(&self, event: &Event) {
        let line = Line { ts: crate::fhir::meta::format_instant(crate::fhir::meta::now_micros()), event };
        let full = {
            let mut w = self.waiting.lock();
            if serde_json::to_writer(&mut *w, &line).is_ok() {
                w.push(b'\n');
            }
            w.len() >= MAX_WAITING
        };
        if full {
            self.flush();
        }
    }

    /// Writes what is waiting.
    pub fn flush(&self) {
        let batch = std::mem::take(&mut *self.waiting.lock());
        if batch.is_empty() {
            return;
        }
        let mut out = self.out.lock();
        if let Err(e) = out.write_all(&batch).and_then(|_| out.flush()) {
            tracing::error!("audit log: {e}");
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_and_reach_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = AuditLog::open(Some(&path)).unwrap();
        let e = Event { subject: "alice", tenant: Some("t1"), interaction: "read", rtype: "Patient", id: "p\"1", method: "GET", path: "/Patient/p\"1", status: 200, outcome: "allowed" };
        log.record(&e);
        log.record(&Event { status: 403, outcome: "denied", ..e });
        log.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["subject"], "alice");
        assert_eq!(lines[0]["id"], "p\"1");
        assert_eq!(lines[1]["outcome"], "denied");
        assert!(lines[0]["ts"].as_str().unwrap().ends_with('Z'));
        drop(log);
    }
}
