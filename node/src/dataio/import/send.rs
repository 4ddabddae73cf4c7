//! Sends the lines of one chunk as a FHIR `batch` Bundle and sorts out what became of each.
//!
//! Why `batch` and not `transaction`: Kiln applies either kind as ONE Raft entry (same cost), but
//! in a batch every entry succeeds or fails alone, so one bad line does not sink the others and
//! the response names each failure. Entries answered 429 / 5xx are sent again (with the server's
//! `Retry-After`); a bundle refused as a whole (400 / 413 / 422) is split in halves until the
//! offending line is alone, and that line is the reject. A bundle that keeps timing out is split
//! too (smaller bundles are applied sooner on a loaded cluster). Lines with an id are `PUT Type/id`
//! (update-as-create: references between files stay valid, and sending a line again is
//! harmless); lines without one are `POST Type`.

use std::time::Duration;

use serde_json::Value;

use crate::dataio::client::{outcome_text, retry_after, Conn};
use crate::dataio::DataIoError;

/// Attempts for a request (or an entry) that keeps failing for transient reasons.
const ATTEMPTS: u32 = 8;
/// Transient failures (timeouts, 503) of a bundle of several lines before it is split in halves:
/// a smaller bundle is applied sooner on a loaded cluster.
const SPLIT_AFTER: u32 = 3;

/// One NDJSON line, checked locally.
#[derive(Debug, Clone)]
pub struct Line {
    /// 1-based line number in its file.
    pub no: u64,
    pub rtype: String,
    pub id: Option<String>,
    /// The line's JSON text.
    pub json: Vec<u8>,
}

/// What became of a line.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Ok,
    Rejected(String),
}

/// Where and how to send.
pub struct Sender {
    pub client: reqwest::blocking::Client,
    pub conn: Conn,
    /// The FHIR base URL.
    pub base: String,
}

/// The Bundle of `lines`.
pub fn bundle(lines: &[&Line]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines.iter().map(|l| l.json.len() + 96).sum::<usize>() + 64);
    out.extend_from_slice(br#"{"resourceType":"Bundle","type":"batch","entry":["#);
    for (i, l) in lines.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"resource":"#);
        out.extend_from_slice(&l.json);
        // Types and ids were checked to be [A-Za-z0-9.-]: no escaping needed.
        match &l.id {
            Some(id) => out.extend_from_slice(format!(r#","request":{{"method":"PUT","url":"{}/{id}"}}}}"#, l.rtype).as_bytes()),
            None => out.extend_from_slice(format!(r#","request":{{"method":"POST","url":"{}"}}}}"#, l.rtype).as_bytes()),
        }
    }
    out.extend_from_slice(b"]}");
    out
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis((250u64 << attempt.min(7)).min(30_000))
}

impl Sender {
    /// The outcome of every line, in order. `Err` only when the server cannot take writes at all
    /// (unreachable after retries, authentication refused): the import stops there.
    pub fn send(&self, lines: &[&Line]) -> Result<Vec<Outcome>, DataIoError> {
        let mut outcomes: Vec<Option<Outcome>> = vec![None; lines.len()];
        let mut pending: Vec<usize> = (0..lines.len()).collect();
        let mut attempt = 0;
        while !pending.is_empty() {
            let subset: Vec<&Line> = pending.iter().map(|&i| lines[i]).collect();
            let got = self.send_split(&subset, 0)?;
            let mut again = Vec::new();
            for (&i, o) in pending.iter().zip(got) {
                match o {
                    Some(o) => outcomes[i] = Some(o),
                    None => again.push(i),
                }
            }
            pending = again;
            if !pending.is_empty() {
                attempt += 1;
                if attempt >= ATTEMPTS {
                    for &i in &pending {
                        outcomes[i] = Some(Outcome::Rejected(format!("still failing after {ATTEMPTS} attempts (server busy)")));
                    }
                    break;
                }
                std::thread::sleep(backoff(attempt));
            }
        }
        Ok(outcomes.into_iter().map(|o| o.unwrap_or(Outcome::Rejected("no answer".into()))).collect())
    }

    /// One request for `lines`, split on a whole-bundle refusal. `None`: transient, send again.
    fn send_split(&self, lines: &[&Line], depth: u32) -> Result<Vec<Option<Outcome>>, DataIoError> {
        match self.post(lines)? {
            Posted::Entries(o) => Ok(o),
            Posted::Refused(reason) if lines.len() == 1 => Ok(vec![Some(Outcome::Rejected(reason))]),
            Posted::Refused(_) | Posted::Busy if depth > 40 => Err(DataIoError::Refused("the server refuses every part of a bundle".into())),
            Posted::Refused(_) | Posted::Busy => {
                let (a, b) = lines.split_at(lines.len() / 2);
                let mut out = self.send_split(a, depth + 1)?;
                out.extend(self.send_split(b, depth + 1)?);
                Ok(out)
            }
        }
    }

    fn post(&self, lines: &[&Line]) -> Result<Posted, DataIoError> {
        let body = bundle(lines);
        let url = self.base.clone();
        let mut attempt = 0;
        loop {
            let req = self
                .client
                .post(&url)
                .header("Content-Type", "application/fhir+json")
                .header("Accept", "application/fhir+json")
                .header("Prefer", "return=minimal")
                .body(body.clone());
            let (wait, why) = match self.conn.auth(req).send() {
                Err(e) => (backoff(attempt), e.to_string()),
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let wait = retry_after(&resp).max(backoff(attempt));
                    let bytes = resp.bytes().map_err(|e| DataIoError::Http { url: url.clone(), reason: e.to_string() });
                    match (status, bytes) {
                        (200, Ok(bytes)) => return parse_response(&bytes, lines.len()).map(Posted::Entries).map_err(|reason| DataIoError::Http { url, reason }),
                        (401 | 403, Ok(bytes)) => {
                            return Err(DataIoError::Http { url, reason: format!("HTTP {status}: {} (--token-file?)", outcome_text(&bytes)) })
                        }
                        (400 | 409 | 412 | 413 | 422, Ok(bytes)) => return Ok(Posted::Refused(format!("HTTP {status}: {}", outcome_text(&bytes)))),
                        (429 | 500 | 502 | 503 | 504, Ok(bytes)) => (wait, format!("HTTP {status}: {}", outcome_text(&bytes))),
                        (_, Ok(bytes)) => return Err(DataIoError::Http { url, reason: format!("HTTP {status}: {}", outcome_text(&bytes)) }),
                        (_, Err(e)) => (backoff(attempt), e.to_string()),
                    }
                }
            };
            attempt += 1;
            if attempt >= SPLIT_AFTER && lines.len() > 1 {
                return Ok(Posted::Busy);
            }
            if attempt >= ATTEMPTS {
                return Err(DataIoError::Http { url, reason: format!("gave up after {ATTEMPTS} attempts: {why}") });
            }
            std::thread::sleep(wait);
        }
    }
}

enum Posted {
    /// Per entry: the outcome, or `None` to send again.
    Entries(Vec<Option<Outcome>>),
    /// The bundle as a whole was refused (why).
    Refused(String),
    /// The bundle kept failing for transient reasons: send it in halves.
    Busy,
}

/// The outcome of each entry of a batch-response.
fn parse_response(bytes: &[u8], expected: usize) -> Result<Vec<Option<Outcome>>, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("the batch response is not JSON: {e}"))?;
    let entries = v.get("entry").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    if entries.len() != expected {
        return Err(format!("the batch response has {} entries for {expected} sent", entries.len()));
    }
    Ok(entries
        .iter()
        .map(|e| {
            let status = e.pointer("/response/status").and_then(Value::as_str).unwrap_or("");
            let code: u16 = status.split_whitespace().next().and_then(|c| c.parse().ok()).unwrap_or(0);
            match code {
                200..=299 => Some(Outcome::Ok),
                429 | 500..=599 => None,
                _ => {
                    let why = e.pointer("/response/outcome").map(|o| outcome_text(o.to_string().as_bytes())).unwrap_or_default();
                    Some(Outcome::Rejected(format!("{status}: {why}").trim_end_matches(": ").to_string()))
                }
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundles_are_json_with_put_for_ids_and_post_without() {
        let a = Line { no: 1, rtype: "Patient".into(), id: Some("p1".into()), json: br#"{"resourceType":"Patient","id":"p1"}"#.to_vec() };
        let b = Line { no: 2, rtype: "Observation".into(), id: None, json: br#"{"resourceType":"Observation"}"#.to_vec() };
        let v: Value = serde_json::from_slice(&bundle(&[&a, &b])).unwrap();
        assert_eq!(v["type"], "batch");
        assert_eq!(v["entry"][0]["request"], serde_json::json!({"method": "PUT", "url": "Patient/p1"}));
        assert_eq!(v["entry"][1]["request"], serde_json::json!({"method": "POST", "url": "Observation"}));
        assert_eq!(v["entry"][0]["resource"]["id"], "p1");
    }

    #[test]
    fn entry_statuses_sort_into_ok_retry_and_reject() {
        let resp = br#"{"entry":[{"response":{"status":"201 Created"}},{"response":{"status":"503 Service Unavailable"}},
            {"response":{"status":"400 Bad Request","outcome":{"resourceType":"OperationOutcome","issue":[{"diagnostics":"bad gender"}]}}}]}"#;
        let got = parse_response(resp, 3).unwrap();
        assert_eq!(got, vec![Some(Outcome::Ok), None, Some(Outcome::Rejected("400 Bad Request: bad gender".into()))]);
        assert!(parse_response(resp, 2).is_err(), "a response that does not match the request is an error");
        assert!(parse_response(b"<html>", 1).is_err());
    }
}
