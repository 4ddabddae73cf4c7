//! The scenarios: what one request of each looks like, and which server feature it needs. A
//! scenario whose feature the server's CapabilityStatement does not claim is skipped with a note.

use std::sync::Arc;

use futures::StreamExt;
use serde_json::{json, Value};

use crate::gen::{self, Profile};
use crate::BenchError;

/// What a scenario needs from the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    Crud,
    History,
    Search,
    SearchInclude,
    SearchChain,
    Transaction,
    /// `_content` (full-text search: the Observation entry lists it in searchParam).
    Content,
}

/// Every scenario, in report order.
pub const ALL: [&str; 20] = [
    "read", "vread", "create", "update-if-match", "history-instance", "history-type", "mixed-crud", "search-token",
    "search-string", "search-date", "search-reference", "search-chained", "search-include", "search-count", "search-sort",
    "search-content", "transaction-100", "transaction-1000", "history-system", "delete",
];

pub fn needs(name: &str) -> Needs {
    match name {
        "search-include" => Needs::SearchInclude,
        "search-chained" => Needs::SearchChain,
        "search-content" => Needs::Content,
        n if n.starts_with("search-") => Needs::Search,
        n if n.starts_with("transaction-") => Needs::Transaction,
        n if n.starts_with("history-") => Needs::History,
        _ => Needs::Crud,
    }
}

/// What the server claims, from `GET /metadata`.
#[derive(Debug, Clone, Default)]
pub struct Features {
    pub history: bool,
    pub search: bool,
    /// `_include` (the Observation entry lists `searchInclude`).
    pub include: bool,
    /// Chained parameters (no CapabilityStatement element says so: probed with one request).
    pub chain: bool,
    pub transaction: bool,
    /// `_content` is among Observation's search parameters.
    pub content: bool,
}

impl Features {
    pub async fn detect(t: &Target) -> Result<Features, BenchError> {
        let cs: Value = t.client.get(format!("{}/metadata", t.base)).header("accept", "application/fhir+json").send().await?.json().await?;
        let rest = &cs["rest"][0];
        let codes = |r: &Value| -> Vec<String> {
            r["interaction"].as_array().into_iter().flatten().filter_map(|i| i["code"].as_str().map(String::from)).collect()
        };
        let patient = rest["resource"].as_array().into_iter().flatten().find(|r| r["type"] == "Patient").cloned().unwrap_or_default();
        let type_codes = codes(&patient);
        let search = type_codes.iter().any(|c| c == "search-type");
        let observation = rest["resource"].as_array().into_iter().flatten().find(|r| r["type"] == "Observation").cloned().unwrap_or_default();
        let include = observation["searchInclude"].as_array().is_some_and(|a| !a.is_empty());
        let content = observation["searchParam"].as_array().into_iter().flatten().any(|p| p["name"] == "_content");
        let chain = search
            && t.client
                .get(format!("{}/Observation?subject:Patient.family=probe&_count=1", t.base))
                .header("accept", "application/fhir+json")
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
        Ok(Features {
            history: type_codes.iter().any(|c| c == "history-instance"),
            search,
            include,
            chain,
            transaction: codes(rest).iter().any(|c| c == "transaction"),
            content,
        })
    }

    /// `None` when the scenario can run, else why not.
    pub fn skip_reason(&self, name: &str) -> Option<String> {
        let missing = match needs(name) {
            Needs::Crud => return None,
            Needs::History if self.history => return None,
            Needs::Search if self.search => return None,
            Needs::SearchInclude if self.search && self.include => return None,
            Needs::SearchChain if self.search && self.chain => return None,
            Needs::Transaction if self.transaction => return None,
            Needs::Content if self.search && self.content => return None,
            Needs::History => "history",
            Needs::Search => "search (search-type)",
            Needs::SearchInclude => "_include (searchInclude on Observation)",
            Needs::SearchChain => "chained search (probe /Observation?subject:Patient.family=... did not answer 200)",
            Needs::Transaction => "transaction bundles",
            Needs::Content => "_content (full-text search, e.g. Kiln with [meilisearch])",
        };
        Some(format!("skipped: the server's CapabilityStatement does not claim {missing}"))
    }
}

/// The server under test.
#[derive(Clone)]
pub struct Target {
    pub base: String,
    pub client: reqwest::Client,
    /// Patients loaded (`pat-0` … `pat-{patients-1}`).
    pub patients: usize,
    pub seed: u64,
}

impl Target {
    /// `token`: sent as `Authorization: Bearer <token>` with every request.
    pub fn new(base: &str, patients: usize, seed: u64, token: Option<&str>) -> Result<Target, BenchError> {
        let client = http_client(token)?;
        Ok(Target { base: base.trim_end_matches('/').to_string(), client, patients: patients.max(1), seed })
    }
}

/// The one HTTP client of a run; with `token`, every request it sends carries
/// `Authorization: Bearer <token>` ([`default_headers`]).
pub fn http_client(token: Option<&str>) -> Result<reqwest::Client, BenchError> {
    Ok(reqwest::Client::builder().pool_max_idle_per_host(1024).default_headers(default_headers(token)?).build()?)
}

/// Headers on every request: `Authorization: Bearer <token>` when a token is given (marked
/// sensitive, so it stays out of debug output).
pub fn default_headers(token: Option<&str>) -> Result<reqwest::header::HeaderMap, BenchError> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.trim()))
            .map_err(|_| BenchError::Invalid("the token must be visible ASCII (it is sent in the Authorization header)".into()))?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    Ok(headers)
}

fn mix(client: usize, i: u64) -> u64 {
    // splitmix64: a cheap, deterministic spread over the loaded ids
    let mut z = (client as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i.wrapping_add(0x632B_E59B_D9B4_E019);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

async fn expect(resp: reqwest::Response, ok: &[u16], what: &str) -> Result<reqwest::Response, String> {
    let status = resp.status().as_u16();
    if ok.contains(&status) {
        Ok(resp)
    } else {
        let body = resp.text().await.unwrap_or_default();
        Err(format!("{what}: status {status}: {}", body.chars().take(200).collect::<String>()))
    }
}

async fn get(t: &Target, path: &str) -> Result<(), String> {
    let resp = t.client.get(format!("{}{path}", t.base)).send().await.map_err(|e| e.to_string())?;
    expect(resp, &[200], path).await?.bytes().await.map_err(|e| e.to_string())?;
    Ok(())
}

async fn send_json(t: &Target, method: reqwest::Method, path: &str, body: &Value, if_match: Option<String>, ok: &[u16]) -> Result<(), String> {
    let mut req = t.client.request(method, format!("{}{path}", t.base)).header("content-type", "application/fhir+json").header("prefer", "return=minimal");
    if let Some(m) = if_match {
        req = req.header("if-match", m);
    }
    let resp = req.body(body.to_string()).send().await.map_err(|e| e.to_string())?;
    expect(resp, ok, path).await?.bytes().await.map_err(|e| e.to_string())?;
    Ok(())
}

/// A Synthea-style patient bundle: one Patient (POST, urn:uuid fullUrl) and `entries - 1`
/// Observations (POST) whose subject is the Patient's urn:uuid, rewritten by the server.
fn bundle(entries: usize, client: usize, i: u64) -> Value {
    let patient = format!("urn:uuid:{:08x}-0000-4000-8000-{:012x}", client, i);
    let mut out = vec![json!({"fullUrl": patient, "resource": {"resourceType": "Patient", "active": true, "name": [{"family": format!("Tx{client}-{i}")}]},
        "request": {"method": "POST", "url": "Patient"}})];
    out.extend((1..entries).map(|k| {
        json!({"fullUrl": format!("urn:uuid:{:08x}-0001-4000-8000-{:012x}", client, k),
               "resource": {"resourceType": "Observation", "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                   "subject": {"reference": patient}, "effectiveDateTime": "2024-01-01T10:00:00Z",
                   "valueQuantity": {"value": 60 + (k % 40), "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}},
               "request": {"method": "POST", "url": "Observation"}})
    }));
    json!({"resourceType": "Bundle", "type": "transaction", "entry": out})
}

/// One request (or request pair) of scenario `name`, by client `client`, iteration `i`.
pub async fn step(t: Arc<Target>, name: &'static str, client: usize, i: u64) -> Result<(), String> {
    let r = mix(client, i);
    let p = (r % t.patients as u64) as usize;
    match name {
        "read" => get(&t, &format!("/Patient/pat-{p}")).await,
        "vread" => get(&t, &format!("/Patient/pat-{p}/_history/1")).await,
        "create" => {
            let body = json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": format!("Patient/pat-{p}")}, "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}});
            send_json(&t, reqwest::Method::POST, "/Observation", &body, None, &[201]).await
        }
        "update-if-match" => {
            // Clients update disjoint patients, so a 412 would be a server bug, not contention.
            let clients = 1024;
            let p = ((r as usize % (t.patients / clients).max(1)) * clients + client) % t.patients;
            let path = format!("/Patient/pat-{p}");
            let resp = t.client.get(format!("{}{path}", t.base)).send().await.map_err(|e| e.to_string())?;
            let resp = expect(resp, &[200], &path).await?;
            let etag = resp.headers().get("etag").and_then(|v| v.to_str().ok()).map(String::from);
            let mut body: Value = resp.json().await.map_err(|e| e.to_string())?;
            body["active"] = json!(i % 2 == 0);
            send_json(&t, reqwest::Method::PUT, &path, &body, etag, &[200]).await
        }
        "history-instance" => get(&t, &format!("/Patient/pat-{p}/_history")).await,
        "history-type" => get(&t, "/Observation/_history?_count=50").await,
        "history-system" => get(&t, "/_history?_count=50").await,
        "delete" => {
            let path = format!("/Observation/del-{client}-{i}");
            let body = json!({"resourceType": "Observation", "id": format!("del-{client}-{i}"), "status": "final", "code": {"text": "x"}});
            send_json(&t, reqwest::Method::PUT, &path, &body, None, &[200, 201]).await?;
            let resp = t.client.delete(format!("{}{path}", t.base)).send().await.map_err(|e| e.to_string())?;
            expect(resp, &[200, 204], &path).await.map(|_| ())
        }
        "mixed-crud" => {
            // 40% read, 25% create, 25% update, 10% delete over Patient / Observation / Encounter.
            let kind = ["Patient", "Observation", "Encounter"][(r >> 8) as usize % 3];
            let own = format!("/{kind}/mix-{client}-{}", i / 4);
            let body = |kind: &str, id: &str| match kind {
                "Patient" => json!({"resourceType": "Patient", "id": id, "name": [{"family": "Mix"}]}),
                "Observation" => json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "mix"}}),
                _ => json!({"resourceType": "Encounter", "id": id, "status": "finished", "class": {"code": "AMB"}}),
            };
            match r % 20 {
                0..=7 => get(&t, &format!("/Patient/pat-{p}")).await,
                8..=12 => send_json(&t, reqwest::Method::POST, &format!("/{kind}"), &body(kind, "x"), None, &[201]).await,
                13..=17 => {
                    let id = own.rsplit('/').next().unwrap_or_default().to_string();
                    send_json(&t, reqwest::Method::PUT, &own, &body(kind, &id), None, &[200, 201]).await
                }
                _ => {
                    let resp = t.client.delete(format!("{}{own}", t.base)).send().await.map_err(|e| e.to_string())?;
                    expect(resp, &[200, 204], &own).await.map(|_| ())
                }
            }
        }
        "search-token" => get(&t, "/Observation?code=http://loinc.org|8867-4&_count=20").await,
        "search-string" => get(&t, "/Patient?family=Gar&_count=20").await,
        "search-date" => get(&t, "/Observation?date=ge2020-01-01&date=lt2020-02-01&_count=20").await,
        "search-reference" => get(&t, &format!("/Observation?subject=Patient/pat-{p}&_count=20")).await,
        "search-chained" => get(&t, "/Observation?subject:Patient.family=Smith&_count=20").await,
        "search-include" => get(&t, &format!("/Observation?subject=Patient/pat-{p}&_include=Observation:subject&_count=20")).await,
        "search-count" => get(&t, "/Observation?code=http://loinc.org|8867-4&_summary=count").await,
        "search-sort" => get(&t, "/Observation?code=http://loinc.org|8867-4&_sort=-date&_count=20").await,
        // Full-text: about 2.7% of the Observations ("Glucose [Mass/volume] in Blood"), relevance order.
        "search-content" => get(&t, "/Observation?_content=glucose&_count=20").await,
        "transaction-100" | "transaction-1000" => {
            let n = if name == "transaction-100" { 100 } else { 1000 };
            send_json(&t, reqwest::Method::POST, "", &bundle(n, client, i), None, &[200]).await
        }
        other => Err(format!("unknown scenario {other}")),
    }
}

/// Loads the generated data set into the server with `concurrency` parallel PUTs.
pub async fn load(t: &Target, profile: Profile, concurrency: usize, progress: &indicatif::ProgressBar) -> Result<u64, BenchError> {
    let (seed, patients) = (t.seed, t.patients);
    let resources = gen::shared(seed, patients)
        .into_iter()
        .chain((0..patients).flat_map(move |i| gen::patient(seed, patients, i, profile)));
    let mut stream = futures::stream::iter(resources)
        .map(|r| {
            let t = t.clone();
            async move {
                let path = format!("/{}/{}", r["resourceType"].as_str().unwrap_or_default(), r["id"].as_str().unwrap_or_default());
                send_json(&t, reqwest::Method::PUT, &path, &r, None, &[200, 201]).await
            }
        })
        .buffer_unordered(concurrency.max(1));
    let mut count = 0;
    while let Some(result) = stream.next().await {
        result.map_err(BenchError::Invalid)?;
        count += 1;
        progress.inc(1);
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};

    #[test]
    fn a_token_becomes_a_bearer_authorization_header() {
        let h = default_headers(Some("s3cret-token")).unwrap();
        assert_eq!(h[reqwest::header::AUTHORIZATION], "Bearer s3cret-token");
        assert!(h[reqwest::header::AUTHORIZATION].is_sensitive());
        assert!(default_headers(None).unwrap().is_empty(), "no token: no header");
        assert!(default_headers(Some("line\nbreak")).is_err());
    }

    /// Reads one request's head from a raw socket and answers 200; returns the head's lines.
    fn serve_one(listener: std::net::TcpListener) -> std::thread::JoinHandle<Vec<String>> {
        std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            let mut lines = Vec::new();
            let mut reader = BufReader::new(sock.try_clone().unwrap());
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                lines.push(line.trim().to_lowercase());
            }
            sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").unwrap();
            lines
        })
    }

    #[tokio::test]
    async fn every_request_of_a_target_carries_the_token() {
        for (token, expected) in [(Some("abc.def"), Some("authorization: bearer abc.def")), (None, None)] {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let server = serve_one(listener);
            let t = Target::new(&base, 1, 1, token).unwrap();
            let resp = t.client.get(format!("{}/metadata", t.base)).send().await.unwrap();
            assert_eq!(resp.status(), 200);
            let head = server.join().unwrap();
            let auth: Vec<&String> = head.iter().filter(|l| l.starts_with("authorization:")).collect();
            assert_eq!(auth.first().map(|s| s.as_str()), expected, "{head:?}");
        }
    }
}
