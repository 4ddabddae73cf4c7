//! rest-hook delivery: one HTTP request per notification, bounded by
//! `subscriptions.delivery_timeout_ms`, never following redirects. Unless
//! `subscriptions.allow_private_endpoints`, an endpoint may not reach a loopback, private or
//! link-local address: literal addresses are refused before sending, and host names through a
//! resolver that keeps only public addresses (so a name that resolves, or later re-resolves,
//! to an inside address is refused too).
//!
//! The request (R4 subscription.html, rest-hook): without `payload`, an empty `POST` to the
//! endpoint; with `payload`, the resource is `PUT` to `{endpoint}/{type}/{id}` (the endpoint is
//! a FHIR base), and a deletion is a `DELETE` there. `channel.header` entries are sent with
//! each request. Any 2xx is a delivery; anything else, or no answer in time, is a failure.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};

use super::spec::{is_private, Payload};
use super::SubscriptionsConfig;

/// One notification to send.
#[derive(Debug, Clone)]
pub struct Notification {
    pub endpoint: reqwest::Url,
    pub payload: Payload,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub rtype: String,
    pub id: String,
    /// The version's JSON (payload only); `None` for a deletion.
    pub body: Option<Vec<u8>>,
}

/// Resolves names, keeping public addresses only.
struct PublicOnly;

impl Resolve for PublicOnly {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let public: Vec<SocketAddr> = found.iter().copied().filter(|a| !is_private(a.ip())).collect();
            if public.is_empty() {
                let e: Box<dyn std::error::Error + Send + Sync> =
                    format!("{host} resolves to no public address (subscriptions.allow_private_endpoints is off)").into();
                return Err(e);
            }
            Ok(Box::new(public.into_iter()) as Addrs)
        })
    }
}

/// The rest-hook client of a node.
pub struct RestHook {
    client: reqwest::Client,
    allow_private: bool,
}

impl RestHook {
    pub fn new(cfg: &SubscriptionsConfig) -> Result<RestHook, String> {
        let timeout = Duration::from_millis(cfg.delivery_timeout_ms);
        let mut b = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_max_idle_per_host(8)
            .user_agent(concat!("Kiln/", env!("CARGO_PKG_VERSION"), " subscriptions"));
        if !cfg.allow_private_endpoints {
            b = b.dns_resolver(Arc::new(PublicOnly));
        }
        let client = b.build().map_err(|e| format!("rest-hook client: {e}"))?;
        Ok(RestHook { client, allow_private: cfg.allow_private_endpoints })
    }

    /// Sends one notification: `Ok` on a 2xx answer, else what went wrong (for `error`).
    pub async fn deliver(&self, n: &Notification) -> Result<(), String> {
        if !self.allow_private {
            let literal = match n.endpoint.host() {
                Some(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
                Some(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
                _ => None,
            };
            if literal.is_some_and(is_private) {
                return Err(format!("{} is a private address (subscriptions.allow_private_endpoints is off)", n.endpoint));
            }
        }
        let req = match (n.payload, &n.body) {
            (Payload::Empty, _) => self.client.post(n.endpoint.clone()).header(reqwest::header::CONTENT_LENGTH, "0"),
            (Payload::Json, Some(body)) => self.client.put(resource_url(&n.endpoint, &n.rtype, &n.id)).header(CONTENT_TYPE, "application/fhir+json").body(body.clone()),
            (Payload::Json, None) => self.client.delete(resource_url(&n.endpoint, &n.rtype, &n.id)),
        };
        let mut req = req;
        for (name, value) in &n.headers {
            req = req.header(name.clone(), value.clone());
        }
        match req.send().await {
            Ok(resp) if resp.status().is_success() => Ok(()),
            Ok(resp) => Err(format!("{} answered HTTP {}", n.endpoint, resp.status().as_u16())),
            Err(e) if e.is_timeout() => Err(format!("{} did not answer within the delivery timeout", n.endpoint)),
            Err(e) => Err(format!("{} cannot be reached: {}", n.endpoint, error_chain(&e))),
        }
    }
}

/// `{endpoint}/{type}/{id}`: the endpoint as a FHIR base.
pub fn resource_url(endpoint: &reqwest::Url, rtype: &str, id: &str) -> reqwest::Url {
    let mut u = endpoint.clone();
    let path = format!("{}/{rtype}/{id}", endpoint.path().trim_end_matches('/'));
    u.set_path(&path);
    u
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out.chars().take(500).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_is_a_fhir_base() {
        let u = reqwest::Url::parse("https://h.example/fhir/?k=v").unwrap();
        assert_eq!(resource_url(&u, "Patient", "a").as_str(), "https://h.example/fhir/Patient/a?k=v");
    }

    #[actix_web::test]
    async fn private_addresses_are_refused_before_anything_is_sent() {
        let hook = RestHook::new(&SubscriptionsConfig::default()).unwrap();
        for endpoint in ["http://127.0.0.1:9/", "http://localhost:9/"] {
            let n = Notification { endpoint: endpoint.parse().unwrap(), payload: Payload::Empty, headers: vec![], rtype: "Patient".into(), id: "a".into(), body: None };
            let e = hook.deliver(&n).await.unwrap_err();
            assert!(e.contains("private") || e.contains("no public address"), "{e}");
        }
    }
}
