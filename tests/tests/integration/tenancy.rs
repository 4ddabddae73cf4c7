//! Multi-tenancy: isolation across every interaction on a 3-node cluster (same ids in two tenants
//! are two resources; reads, vread, search, chains, `_include`, conditional create, history,
//! transactions, delete; path prefix and token claim; mismatches refused), and the automatic
//! adoption of data written before tenancy was enabled as the default tenant's.

use kiln::auth::{AuthConfig, AuthMode};
use kiln::tenancy::TenancyConfig;
use kiln_tests::{client, json, TestCluster, TestNode};
use reqwest::blocking::Client;
use serde_json::{json, Value};

const SECRET: &str = "tenancy-secret-0123456789-0123456789-abc";

fn token(tenant: Option<&str>) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut claims = json!({"sub": "t", "exp": now + 600, "cognito:groups": ["practitioner"]});
    if let Some(t) = tenant {
        claims["custom:tenantId"] = json!(t);
    }
    kiln::auth::token::sign_hs256(SECRET.as_bytes(), &claims).unwrap()
}

/// A request on `url` as `tok`, reading linearizably (so any node answers with the latest).
fn call(c: &Client, method: &str, url: &str, tok: &str, body: Option<&Value>, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut r = c.request(method.parse().unwrap(), url).bearer_auth(tok).header("kiln-consistency", "linearizable");
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    if let Some(b) = body {
        r = r.header("content-type", "application/fhir+json").body(b.to_string());
    }
    let resp = r.send().unwrap();
    let status = resp.status().as_u16();
    (status, serde_json::from_str(&resp.text().unwrap()).unwrap_or(Value::Null))
}

fn patient(id: &str, family: &str) -> Value {
    json!({"resourceType": "Patient", "id": id, "name": [{"family": family}], "identifier": [{"system": "urn:x", "value": format!("id-{family}")}]})
}

#[test]
fn tenants_are_isolated_on_every_interaction_across_a_cluster() {
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let cluster = TestCluster::start_with(3, |cfg| {
        cfg.auth = AuthConfig { mode: AuthMode::Jwt, hs256_secret_file: Some(secret.clone()), ..AuthConfig::default() };
        cfg.tenancy = TenancyConfig { enabled: true, tenants: vec!["t1".into(), "t2".into()] };
    });
    cluster.leader();
    let c = client();
    let (t1, t2, dflt) = (token(Some("t1")), token(Some("t2")), token(None));
    let on = |node: u64, path: &str| cluster.url(node, path);
    // The same id in three tenants: three resources, each at version 1, written on three nodes.
    assert_eq!(call(&c, "PUT", &on(1, "/tenant/t1/Patient/same"), &t1, Some(&patient("same", "One")), &[]).0, 201);
    assert_eq!(call(&c, "PUT", &on(2, "/tenant/t2/Patient/same"), &t2, Some(&patient("same", "Two")), &[]).0, 201);
    assert_eq!(call(&c, "PUT", &on(3, "/Patient/same"), &dflt, Some(&patient("same", "Default")), &[]).0, 201);
    for node in 1..=3 {
        let (s, p) = call(&c, "GET", &on(node, "/tenant/t1/Patient/same"), &t1, None, &[]);
        assert_eq!((s, p["name"][0]["family"].as_str(), p["meta"]["versionId"].as_str()), (200, Some("One"), Some("1")), "node {node}");
        assert_eq!(call(&c, "GET", &on(node, "/tenant/t2/Patient/same"), &t2, None, &[]).1["name"][0]["family"], "Two");
        assert_eq!(call(&c, "GET", &on(node, "/Patient/same"), &dflt, None, &[]).1["name"][0]["family"], "Default");
        // Without a path prefix the token's claim decides.
        assert_eq!(call(&c, "GET", &on(node, "/Patient/same"), &t2, None, &[]).1["name"][0]["family"], "Two");
        assert_eq!(call(&c, "GET", &on(node, "/Patient/same/_history/1"), &t1, None, &[]).1["name"][0]["family"], "One");
    }
    // Another tenant's path: 403; an unlisted tenant: 404.
    assert_eq!(call(&c, "GET", &on(1, "/tenant/t2/Patient/same"), &t1, None, &[]).0, 403);
    assert_eq!(call(&c, "GET", &on(1, "/tenant/t1/Patient/same"), &dflt, None, &[]).0, 403);
    assert_eq!(call(&c, "GET", &on(1, "/tenant/t9/Patient/same"), &token(Some("t9")), None, &[]).0, 404);
    // Search, with links that keep the tenant.
    let (_, b) = call(&c, "GET", &on(2, "/tenant/t1/Patient?family=Two"), &t1, None, &[]);
    assert_eq!(b["total"], 0);
    let (_, b) = call(&c, "GET", &on(2, "/tenant/t1/Patient?family=One"), &t1, None, &[]);
    assert_eq!(b["total"], 1);
    assert!(b["link"][0]["url"].as_str().unwrap().contains("/tenant/t1/Patient?"), "{}", b["link"][0]);
    assert!(b["entry"][0]["fullUrl"].as_str().unwrap().ends_with("/tenant/t1/Patient/same"));
    // Conditional create: t2's identifier does not match in t1.
    let (s, _) = call(&c, "POST", &on(3, "/tenant/t1/Patient"), &t1, Some(&patient("x", "Two")), &[("if-none-exist", "identifier=urn:x|id-Two")]);
    assert_eq!(s, 201, "t2's match is not t1's");
    let (s, _) = call(&c, "POST", &on(3, "/tenant/t1/Patient"), &t1, Some(&patient("x", "Two")), &[("if-none-exist", "identifier=urn:x|id-Two")]);
    assert_eq!(s, 200, "now t1 has one");
    // References, chains and _include stay in the tenant.
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/same"}});
    for (tok, path) in [(&t1, "/tenant/t1/Observation"), (&t2, "/tenant/t2/Observation")] {
        assert_eq!(call(&c, "POST", &on(1, path), tok, Some(&obs), &[]).0, 201);
    }
    let (_, b) = call(&c, "GET", &on(2, "/tenant/t1/Observation?subject.family=One&_include=Observation:subject"), &t1, None, &[]);
    assert_eq!(b["total"], 1);
    let included: Vec<&str> = b["entry"].as_array().unwrap().iter().filter(|e| e["search"]["mode"] == "include").map(|e| e["resource"]["name"][0]["family"].as_str().unwrap()).collect();
    assert_eq!(included, ["One"]);
    assert_eq!(call(&c, "GET", &on(2, "/tenant/t2/Observation?subject.family=One"), &t2, None, &[]).1["total"], 0);
    assert_eq!(call(&c, "GET", &on(3, "/Observation"), &dflt, None, &[]).1["total"], 0, "the default tenant has no Observation");
    // _revinclude, PATCH, conditional update and batch stay in the tenant.
    let (_, b) = call(&c, "GET", &on(3, "/tenant/t2/Patient?_id=same&_revinclude=Observation:subject"), &t2, None, &[]);
    assert_eq!(b["entry"].as_array().unwrap().len(), 2, "t2's Patient and t2's one Observation: {b}");
    let r = c.patch(on(1, "/tenant/t2/Patient/same")).bearer_auth(&t2).header("content-type", "application/json-patch+json")
        .body(json!([{"op": "replace", "path": "/name/0/family", "value": "Two2"}]).to_string()).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(call(&c, "GET", &on(2, "/tenant/t1/Patient/same"), &t1, None, &[]).1["meta"]["versionId"], "1");
    let (s, _) = call(&c, "PUT", &on(2, "/tenant/t1/Patient?identifier=urn:x|id-Two"), &t1, Some(&json!({"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "id-Two"}], "name": [{"family": "Cond"}]})), &[]);
    assert_eq!(s, 200, "t1's own match (x) is updated");
    assert_eq!(call(&c, "GET", &on(3, "/tenant/t2/Patient/same"), &t2, None, &[]).1["name"][0]["family"], "Two2", "t2's is untouched");
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Patient/same"}},
        {"request": {"method": "GET", "url": "Patient?family=Two2"}}]});
    let (s, out) = call(&c, "POST", &on(1, "/tenant/t1"), &t1, Some(&batch), &[]);
    assert_eq!(s, 200);
    assert_eq!(out["entry"][0]["resource"]["name"][0]["family"], "One");
    assert_eq!(out["entry"][1]["resource"]["total"], 0);
    // A transaction in t2 (urn:uuid reference) creates only there.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0a1b", "resource": {"resourceType": "Patient", "name": [{"family": "Tx"}]}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "y"}, "subject": {"reference": "urn:uuid:0a1b"}}, "request": {"method": "POST", "url": "Observation"}}]});
    let (s, out) = call(&c, "POST", &on(3, "/tenant/t2"), &t2, Some(&tx), &[]);
    assert_eq!(s, 200, "{out}");
    let created = out["entry"][0]["response"]["location"].as_str().unwrap().split("/_history").next().unwrap().to_string();
    assert_eq!(call(&c, "GET", &on(1, &format!("/tenant/t2/{created}")), &t2, None, &[]).0, 200);
    assert_eq!(call(&c, "GET", &on(1, &format!("/tenant/t1/{created}")), &t1, None, &[]).0, 404);
    assert_eq!(call(&c, "GET", &on(1, "/tenant/t2/Observation?subject.family=Tx"), &t2, None, &[]).1["total"], 1);
    // History per tenant.
    let (_, h) = call(&c, "GET", &on(2, "/tenant/t1/_history"), &t1, None, &[]);
    let families: Vec<String> = h["entry"].as_array().unwrap().iter().filter_map(|e| e["resource"]["name"][0]["family"].as_str().map(String::from)).collect();
    assert!(families.iter().all(|f| f == "One" || f == "Two" || f == "Cond") && families.len() == 3, "{families:?}");
    assert_eq!(call(&c, "GET", &on(2, "/_history"), &dflt, None, &[]).1["entry"].as_array().unwrap().len(), 1);
    // Deleting t1's copy leaves the others.
    assert_eq!(call(&c, "DELETE", &on(1, "/tenant/t1/Patient/same"), &t1, None, &[]).0, 204);
    assert_eq!(call(&c, "GET", &on(2, "/tenant/t1/Patient/same"), &t1, None, &[]).0, 410);
    assert_eq!(call(&c, "GET", &on(2, "/tenant/t2/Patient/same"), &t2, None, &[]).0, 200);
    assert_eq!(call(&c, "GET", &on(2, "/Patient/same"), &dflt, None, &[]).0, 200);
    // Every node holds the same bytes.
    cluster.converged(&[1, 2, 3], 30);
}

#[test]
fn data_written_before_tenancy_becomes_the_default_tenants() {
    let mut node = TestNode::start();
    let c = client();
    let put = |url: &str, body: &Value| c.put(url).header("content-type", "application/fhir+json").body(body.to_string()).send().unwrap().status().as_u16();
    assert_eq!(put(&node.url("/Patient/old"), &patient("old", "Before")), 201);
    node.cfg.tenancy = TenancyConfig { enabled: true, tenants: Vec::new() };
    node.restart();
    assert_eq!(json(c.get(node.url("/Patient/old")).send().unwrap())["name"][0]["family"], "Before");
    assert_eq!(json(c.get(node.url("/Patient?family=Before")).send().unwrap())["total"], 1, "its index came along");
    assert_eq!(c.get(node.url("/tenant/acme/Patient/old")).send().unwrap().status(), 404);
    assert_eq!(put(&node.url("/tenant/acme/Patient/old"), &patient("old", "Acme")), 201);
    node.restart();
    assert_eq!(json(c.get(node.url("/Patient/old")).send().unwrap())["name"][0]["family"], "Before");
    assert_eq!(json(c.get(node.url("/tenant/acme/Patient/old")).send().unwrap())["name"][0]["family"], "Acme");
    assert_eq!(json(c.get(node.url("/tenant/acme/Patient?family=Before")).send().unwrap())["total"], 0);
}
