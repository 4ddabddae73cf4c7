//! The one operator HTTP client of the `kiln` commands (`import`, `backup`, `reindex`) and of the
//! local cluster launcher: blocking reqwest (rustls), an optional
//! bearer token (`--token-file`), an optional extra CA for `https://` nodes with a private CA
//! (`--ca-file`), and the error text of a FHIR OperationOutcome.

use std::path::Path;
use std::time::Duration;

use super::DataIoError;

/// Connection options shared by the commands.
#[derive(Debug, Clone, Default)]
pub struct Conn {
    pub token: Option<String>,
    pub ca_pem: Option<Vec<u8>>,
}

impl Conn {
    /// Reads the token and CA files (either may be absent).
    pub fn load(token_file: Option<&Path>, ca_file: Option<&Path>) -> Result<Conn, DataIoError> {
        let token = token_file
            .map(|p| std::fs::read_to_string(p).map(|t| t.trim().to_string()).map_err(DataIoError::io(p)))
            .transpose()?;
        if token.as_deref() == Some("") {
            return Err(DataIoError::Usage("the token file is empty".into()));
        }
        let ca_pem = ca_file.map(|p| std::fs::read(p).map_err(DataIoError::io(p))).transpose()?;
        Ok(Conn { token, ca_pem })
    }

    /// A client whose requests time out after `timeout` (`None`: never, for long streams).
    pub fn client(&self, timeout: Option<Duration>) -> Result<reqwest::blocking::Client, DataIoError> {
        let mut b = reqwest::blocking::Client::builder().connect_timeout(Duration::from_secs(10)).timeout(timeout);
        if let Some(pem) = &self.ca_pem {
            let cert = reqwest::Certificate::from_pem(pem).map_err(|e| DataIoError::Usage(format!("--ca-file: {e}")))?;
            b = b.add_root_certificate(cert);
        }
        b.build().map_err(|e| DataIoError::Usage(format!("HTTP client: {e}")))
    }

    pub fn auth(&self, r: reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder {
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }
}

/// The diagnostics of an OperationOutcome (or the body itself, shortened).
pub fn outcome_text(body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    if let Some(issues) = parsed.as_ref().and_then(|v| v.get("issue")).and_then(|i| i.as_array()) {
        let texts: Vec<String> = issues
            .iter()
            .filter_map(|i| i.get("diagnostics").or_else(|| i.pointer("/details/text")).and_then(|d| d.as_str()).map(String::from))
            .collect();
        if !texts.is_empty() {
            return texts.join("; ");
        }
    }
    let text = String::from_utf8_lossy(body);
    shorten(text.trim(), 300)
}

/// `s` cut to at most `max` characters.
pub fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Seconds a 429 / 503 asks to wait (`Retry-After`), within 1..=30.
pub fn retry_after(resp: &reqwest::blocking::Response) -> Duration {
    let secs = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok()).unwrap_or(1);
    Duration::from_secs(secs.clamp(1, 30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcome_diagnostics_or_a_short_body() {
        let oo = br#"{"resourceType":"OperationOutcome","issue":[{"diagnostics":"bad id"},{"details":{"text":"two"}}]}"#;
        assert_eq!(outcome_text(oo), "bad id; two");
        assert_eq!(outcome_text(b"  plain  "), "plain");
        assert_eq!(shorten("ééééé", 2), "éé…");
    }
}
