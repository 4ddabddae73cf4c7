//! What a Subscription resource asks for, checked: its criteria ([`super::criteria`]), its
//! channel (`rest-hook` with endpoint, headers and payload, or `websocket`) and its end. The
//! same reading serves the client's write (a 4xx that says what to fix) and the notifier's
//! activation (which re-checks whatever reached the log, e.g. through a peer).
//!
//! Status: a client writes `requested` or `off`. A client's `active` or `error` is taken as
//! `requested` (its `error` text dropped): only the server sets `active` (when it accepts the
//! Subscription) and `error` (after failed deliveries), each as a replicated write.

use std::net::IpAddr;

use reqwest::header::{HeaderName, HeaderValue};
use serde_json::Value;

use super::criteria::{self, Criteria};
use super::{Rules, SubscriptionError};

/// Most `channel.header` entries, and bytes of one.
pub const MAX_HEADERS: usize = 10;
pub const MAX_HEADER_BYTES: usize = 1024;
/// Longest endpoint URL.
pub const MAX_ENDPOINT_BYTES: usize = 2048;

/// What a rest-hook notification carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload {
    /// No `payload`: an empty POST to the endpoint.
    Empty,
    /// `application/fhir+json` (or `application/json`): the resource, PUT to
    /// `{endpoint}/{type}/{id}` (a deletion: DELETE there).
    Json,
}

#[derive(Debug, Clone)]
pub enum Channel {
    RestHook { endpoint: reqwest::Url, payload: Payload, headers: Vec<(HeaderName, HeaderValue)> },
    Websocket,
}

/// A Subscription as the server runs it.
#[derive(Debug, Clone)]
pub struct Spec {
    pub criteria: Criteria,
    pub channel: Channel,
    /// `end`, µs since the epoch.
    pub end: Option<u64>,
}

/// Reads and checks a Subscription resource.
pub fn read(rules: &Rules, body: &Value) -> Result<Spec, SubscriptionError> {
    let invalid = |m: &str| SubscriptionError::Invalid(m.to_string());
    let text = body.get("criteria").and_then(Value::as_str).ok_or_else(|| invalid("Subscription.criteria is required (a search such as Observation?status=final)"))?;
    let criteria = criteria::parse(&rules.reg, &rules.defs, text)?;
    let channel = body.get("channel").ok_or_else(|| invalid("Subscription.channel is required"))?;
    let kind = channel.get("type").and_then(Value::as_str).unwrap_or("");
    let channel = match kind {
        "rest-hook" => rest_hook(rules, channel)?,
        "websocket" => Channel::Websocket,
        "email" | "sms" | "message" => {
            return Err(SubscriptionError::ChannelNotSupported(format!("channel type {kind} is not supported by this server: use rest-hook or websocket")))
        }
        other => return Err(SubscriptionError::ChannelNotSupported(format!("channel type {other:?} is not supported: use rest-hook or websocket"))),
    };
    let end = match body.get("end").and_then(Value::as_str) {
        None => None,
        Some(s) => Some(parse_instant(s).ok_or_else(|| SubscriptionError::Invalid(format!("Subscription.end {s:?} is not an instant")))?),
    };
    Ok(Spec { criteria, channel, end })
}

fn rest_hook(rules: &Rules, channel: &Value) -> Result<Channel, SubscriptionError> {
    let invalid = |m: String| SubscriptionError::Invalid(m);
    let endpoint = channel.get("endpoint").and_then(Value::as_str).ok_or_else(|| invalid("a rest-hook channel needs channel.endpoint (the URL notifications are sent to)".into()))?;
    let endpoint = check_endpoint(endpoint, rules.cfg.allow_private_endpoints)?;
    let payload = match channel.get("payload").and_then(Value::as_str) {
        None => Payload::Empty,
        Some(p) => match p.split(';').next().unwrap_or("").trim() {
            "application/fhir+json" | "application/json" => Payload::Json,
            "" => Payload::Empty,
            other => return Err(SubscriptionError::ChannelNotSupported(format!("channel.payload {other:?} is not supported: use application/fhir+json, or leave it out for empty notifications"))),
        },
    };
    let mut headers = Vec::new();
    let raw: Vec<&Value> = match channel.get("header") {
        None => Vec::new(),
        Some(Value::Array(a)) => a.iter().collect(),
        // STU3 allows one header as a string.
        Some(v) => vec![v],
    };
    if raw.len() > MAX_HEADERS {
        return Err(invalid(format!("channel.header has {} entries; at most {MAX_HEADERS}", raw.len())));
    }
    for h in raw {
        let text = h.as_str().ok_or_else(|| invalid("each channel.header is a string \"Name: value\"".into()))?;
        headers.push(header(text)?);
    }
    Ok(Channel::RestHook { endpoint, payload, headers })
}

/// One `Name: value` header, refused when it could change how the request is framed or routed.
pub fn header(text: &str) -> Result<(HeaderName, HeaderValue), SubscriptionError> {
    let invalid = |m: String| Err(SubscriptionError::Invalid(m));
    if text.len() > MAX_HEADER_BYTES {
        return invalid(format!("a channel.header is longer than {MAX_HEADER_BYTES} bytes"));
    }
    let Some((name, value)) = text.split_once(':') else {
        return invalid(format!("channel.header {text:?} is not \"Name: value\""));
    };
    let Ok(name) = HeaderName::from_bytes(name.trim().as_bytes()) else {
        return invalid(format!("channel.header {text:?}: the name is not a header name"));
    };
    let forbidden = ["host", "content-length", "content-type", "transfer-encoding", "connection", "upgrade", "te", "trailer", "keep-alive", "expect"];
    if forbidden.contains(&name.as_str()) || name.as_str().starts_with("proxy-") {
        return invalid(format!("channel.header {}: the server sets this header itself", name.as_str()));
    }
    let Ok(value) = HeaderValue::from_str(value.trim()) else {
        return invalid(format!("channel.header {}: the value has characters a header cannot carry", name.as_str()));
    };
    Ok((name, value))
}

/// An endpoint URL: http or https, a host, no credentials in it, and unless
/// `allow_private` not a loopback / private / link-local address (names are checked again
/// when they are resolved, [`super::rest_hook`]).
pub fn check_endpoint(text: &str, allow_private: bool) -> Result<reqwest::Url, SubscriptionError> {
    let invalid = |m: String| Err(SubscriptionError::Invalid(m));
    if text.len() > MAX_ENDPOINT_BYTES {
        return invalid(format!("channel.endpoint is longer than {MAX_ENDPOINT_BYTES} bytes"));
    }
    let Ok(url) = reqwest::Url::parse(text) else { return invalid(format!("channel.endpoint {text:?} is not a URL")) };
    if !matches!(url.scheme(), "http" | "https") {
        return invalid(format!("channel.endpoint {text:?}: only http and https endpoints are served"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return invalid("channel.endpoint carries credentials: put them in a channel.header".into());
    }
    let private = match url.host() {
        None => return invalid(format!("channel.endpoint {text:?} has no host")),
        Some(url::Host::Ipv4(ip)) => is_private(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => is_private(IpAddr::V6(ip)),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
    };
    if private && !allow_private {
        return invalid(format!(
            "channel.endpoint {text:?} is a loopback or private address, which this server does not call (subscriptions.allow_private_endpoints is off)"
        ));
    }
    Ok(url)
}

/// Whether a rest-hook may not reach `ip` unless the operator allows private endpoints: every
/// range of IANA's IPv4 and IPv6 special-purpose address registries (loopback, private,
/// link-local, shared/CGNAT, documentation, benchmarking, reserved, multicast, broadcast, …),
/// and every IPv6 form that embeds an IPv4 address (mapped, compatible, SIIT, NAT64, 6to4,
/// Teredo), whatever address it embeds. IPv6 is judged by allow-list: only global unicast
/// (`2000::/3`) outside those ranges is public.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let global_unicast = (s[0] & 0xe000) == 0x2000;
            !global_unicast
                // 2001::/23 IETF protocol assignments (Teredo 2001::/32, benchmarking, ORCHID, …)
                || (s[0] == 0x2001 && s[1] < 0x0200)
                // 2001:db8::/32 documentation
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                // 2002::/16 6to4
                || s[0] == 0x2002
                // 3fff::/20 documentation
                || (s[0] & 0xfff0) == 0x3ff0
        }
    }
}

/// IANA's IPv4 special-purpose ranges, multicast and the reserved 240.0.0.0/4.
fn special_v4(v4: std::net::Ipv4Addr) -> bool {
    let [a, b, c, _] = v4.octets();
    a == 0 // 0.0.0.0/8 "this network"
        || a == 10
        || a == 127
        || (a == 100 && (b & 0xc0) == 64) // 100.64.0.0/10 shared (CGNAT)
        || (a == 169 && b == 254)
        || (a == 172 && (b & 0xf0) == 16)
        || (a == 192 && b == 0 && c == 0) // 192.0.0.0/24 IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // TEST-NET-1
        || (a == 192 && b == 31 && c == 196) // AS112-v4
        || (a == 192 && b == 52 && c == 193) // AMT
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 192 && b == 168)
        || (a == 192 && b == 175 && c == 48) // direct delegation AS112
        || (a == 198 && (b & 0xfe) == 18) // 198.18.0.0/15 benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224 // multicast 224.0.0.0/4, reserved 240.0.0.0/4, broadcast
}

fn parse_instant(s: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1000).ok()
}

/// The status a Subscription has.
pub fn status(body: &Value) -> &str {
    body.get("status").and_then(Value::as_str).unwrap_or("")
}

/// Subscriptions are checked on write through the resource actors' hook.
impl crate::actors::resource::WriteHook for Rules {
    fn rtype(&self) -> &'static str {
        "Subscription"
    }

    fn check(&self, body: &mut Value) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        client_write(self, body).map_err(Into::into)
    }
}

/// A client's write of a Subscription: checked (unless it is `off`), and its status made
/// `requested` unless it is `off`.
pub fn client_write(rules: &Rules, body: &mut Value) -> Result<(), SubscriptionError> {
    let Some(obj) = body.as_object_mut() else { return Ok(()) };
    match obj.get("status").and_then(Value::as_str) {
        Some("off") => return Ok(()),
        Some("requested" | "active" | "error") => {
            obj.insert("status".into(), Value::String("requested".into()));
            obj.shift_remove("error");
        }
        // Missing or unknown: schema validation says so.
        _ => return Ok(()),
    }
    read(rules, body).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules(allow_private: bool) -> Rules {
        let cfg = super::super::SubscriptionsConfig { allow_private_endpoints: allow_private, ..Default::default() };
        Rules::new(cfg, crate::fhir::FhirVersion::R4)
    }

    fn sub(channel: Value) -> Value {
        json!({"resourceType": "Subscription", "status": "active", "reason": "r", "criteria": "Patient?active=true", "channel": channel, "error": "old"})
    }

    #[test]
    fn client_writes_are_checked_and_requested() {
        let r = rules(false);
        let mut ok = sub(json!({"type": "rest-hook", "endpoint": "https://example.org/hook", "payload": "application/fhir+json", "header": ["Authorization: Bearer x"]}));
        client_write(&r, &mut ok).unwrap();
        assert_eq!(ok["status"], "requested");
        assert!(ok.get("error").is_none());
        let spec = read(&r, &ok).unwrap();
        let Channel::RestHook { payload, headers, endpoint } = spec.channel else { panic!("rest-hook") };
        assert_eq!((payload, headers.len(), endpoint.as_str()), (Payload::Json, 1, "https://example.org/hook"));
        let mut ws = sub(json!({"type": "websocket"}));
        client_write(&r, &mut ws).unwrap();
        for (channel, what) in [
            (json!({"type": "email", "endpoint": "mailto:a@b"}), "not supported"),
            (json!({"type": "rest-hook"}), "endpoint"),
            (json!({"type": "rest-hook", "endpoint": "ftp://example.org/"}), "http"),
            (json!({"type": "rest-hook", "endpoint": "http://127.0.0.1:9/"}), "private"),
            (json!({"type": "rest-hook", "endpoint": "http://localhost/"}), "private"),
            (json!({"type": "rest-hook", "endpoint": "http://[::1]/"}), "private"),
            (json!({"type": "rest-hook", "endpoint": "http://10.1.2.3/"}), "private"),
            (json!({"type": "rest-hook", "endpoint": "http://u:p@example.org/"}), "credentials"),
            (json!({"type": "rest-hook", "endpoint": "http://example.org/", "payload": "application/fhir+xml"}), "not supported"),
            (json!({"type": "rest-hook", "endpoint": "http://example.org/", "header": ["Host: evil"]}), "sets this header"),
            (json!({"type": "rest-hook", "endpoint": "http://example.org/", "header": ["X: a\r\nInjected: b"]}), "cannot carry"),
            (json!({"type": "rest-hook", "endpoint": "http://example.org/", "header": ["no colon"]}), "Name: value"),
        ] {
            let e = client_write(&r, &mut sub(channel.clone())).unwrap_err().to_string();
            assert!(e.contains(what), "{channel}: {e}");
        }
        let mut bad = sub(json!({"type": "websocket"}));
        bad["criteria"] = json!("Patient?nope=1");
        assert!(client_write(&r, &mut bad).is_err());
        // Private endpoints when the operator allows them.
        let mut local = sub(json!({"type": "rest-hook", "endpoint": "http://127.0.0.1:9/"}));
        client_write(&rules(true), &mut local).unwrap();
        // Off is stored as it is (a client turning a broken subscription off must be able to).
        let mut off = sub(json!({"type": "sms"}));
        off["status"] = json!("off");
        client_write(&r, &mut off).unwrap();
        assert_eq!(off["status"], "off");
    }

    #[test]
    fn private_addresses() {
        for ip in ["127.0.0.1", "10.0.0.1", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "::1", "fd00::1", "fe80::1", "::ffff:127.0.0.1"] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        // Special-purpose IPv4 ranges and IPv6 forms that embed an IPv4 address (issue #25).
        for ip in [
            "192.0.2.1", "198.18.0.1", "198.19.255.255", "198.51.100.7", "203.0.113.9", "240.0.0.1", "255.255.255.255", "224.0.0.1", "192.0.0.8", "192.88.99.1",
            "64:ff9b::a9fe:a9fe", "64:ff9b:1::1", "2002:a9fe:a9fe::", "::169.254.169.254", "::ffff:0:a9fe:a9fe", "fec0::1", "2001::a9fe:a9fe", "2001:db8::1",
            "100::1", "3fff::1", "ff02::1", "::",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2001:4860::1", "100.128.0.1", "1.1.1.1", "198.20.0.1", "2a00:1450::1"] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }
}
