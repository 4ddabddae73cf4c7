//! Authentication and authorization over HTTP: token checks (missing, expired, forged, wrong
//! audience, `alg: none`), the FWoA group-rule matrix, API keys, the SMART scope matrix with the
//! patient compartment through reads, searches, `_include`, `_revinclude`, chains, `_has`,
//! history, compartments, bundles and (conditional) writes, the operator status page, and the
//! open endpoints.

use std::path::Path;

use kiln::auth::{AuthConfig, AuthMode};
use kiln::fhir::FhirVersion;
use kiln_tests::{client, json, TestNode};
use reqwest::blocking::Client;
use serde_json::{json, Value};

const SECRET: &str = "test-secret-0123456789-0123456789-abcdef";
const ISSUER: &str = "https://issuer.example";
const AUDIENCE: &str = "kiln-test";

/// A node with `[auth] mode = "jwt"` (HS256, issuer and audience checked) and an API key file.
pub fn secured_node(keys: &Path) -> TestNode {
    std::fs::write(keys.join("secret"), SECRET).unwrap();
    let key_hash = hex::encode(kiln::auth::api_keys::hash("auditor-key-123"));
    std::fs::write(keys.join("keys.toml"), format!("[[key]]\nname = \"feed\"\ngroup = \"auditor\"\nsha256 = \"{key_hash}\"\n")).unwrap();
    TestNode::start_with(FhirVersion::R4, |cfg| {
        cfg.auth = AuthConfig {
            mode: AuthMode::Jwt,
            hs256_secret_file: Some(keys.join("secret")),
            api_keys_file: Some(keys.join("keys.toml")),
            issuer: Some(ISSUER.into()),
            audience: Some(AUDIENCE.into()),
            ..AuthConfig::default()
        }
    })
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A token with the standard claims plus `extra`.
pub fn token(extra: Value) -> String {
    let mut claims = json!({"sub": "tester", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600});
    for (k, v) in extra.as_object().unwrap() {
        claims[k] = v.clone();
    }
    kiln::auth::token::sign_hs256(SECRET.as_bytes(), &claims).unwrap()
}

fn groups(g: &[&str]) -> String {
    token(json!({"cognito:groups": g}))
}

fn scoped(scope: &str, patient: Option<&str>) -> String {
    match patient {
        Some(p) => token(json!({"scope": scope, "patient": p})),
        None => token(json!({"scope": scope})),
    }
}

/// Sends a request with a bearer token; returns the status and the JSON body (Null if none).
fn call(c: &Client, method: &str, url: &str, tok: Option<&str>, body: Option<&Value>) -> (u16, Value) {
    let mut r = c.request(method.parse().unwrap(), url);
    if let Some(t) = tok {
        r = r.bearer_auth(t);
    }
    if let Some(b) = body {
        let ct = if method == "PATCH" { "application/json-patch+json" } else { "application/fhir+json" };
        r = r.header("content-type", ct).body(b.to_string());
    }
    let resp = r.send().unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The `Type/id`s of a bundle's entries with search mode `mode` (any mode when `None`).
fn ids(bundle: &Value, mode: Option<&str>) -> Vec<String> {
    let mut v: Vec<String> = bundle["entry"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|e| mode.is_none_or(|m| e["search"]["mode"] == m))
        .filter_map(|e| e["resource"]["id"].as_str().map(|id| format!("{}/{id}", e["resource"]["resourceType"].as_str().unwrap_or("?"))))
        .collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn tokens_are_verified_and_open_endpoints_stay_open() {
    let keys = tempfile::tempdir().unwrap();
    let node = secured_node(keys.path());
    let c = client();
    let url = node.url("/Patient");
    let resp = c.get(&url).send().unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers()["www-authenticate"].to_str().unwrap().starts_with("Bearer"));
    assert_eq!(json(resp)["issue"][0]["code"], "login");
    let good = json!({"sub": "a", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600, "cognito:groups": ["practitioner"]});
    let sign = |claims: &Value, secret: &str| kiln::auth::token::sign_hs256(secret.as_bytes(), claims).unwrap();
    assert_eq!(call(&c, "GET", &url, Some(&sign(&good, SECRET)), None).0, 200);
    let mut bad = Vec::new();
    let mut expired = good.clone();
    expired["exp"] = json!(now() - 3600);
    bad.push(("expired", sign(&expired, SECRET)));
    let mut aud = good.clone();
    aud["aud"] = json!("someone-else");
    bad.push(("wrong audience", sign(&aud, SECRET)));
    let mut iss = good.clone();
    iss["iss"] = json!("https://evil.example");
    bad.push(("wrong issuer", sign(&iss, SECRET)));
    bad.push(("forged", sign(&good, "another-secret-0123456789-0123456789-xyz")));
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    bad.push(("alg none", format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&good.to_string()))));
    bad.push(("garbage", "abc.def.ghi".to_string()));
    for (what, t) in bad {
        let resp = c.get(&url).bearer_auth(&t).send().unwrap();
        assert_eq!(resp.status(), 401, "{what}");
        assert!(resp.headers()["www-authenticate"].to_str().unwrap().contains("invalid_token"), "{what}");
    }
    assert_eq!(c.get(&url).header("authorization", "Basic abc").send().unwrap().status(), 401);
    // Valid but allowed nothing: neither groups nor scopes.
    assert_eq!(call(&c, "GET", &url, Some(&token(json!({}))), None).0, 403);
    // Open: the CapabilityStatement (with the security in force), SMART configuration, health.
    let (s, cs) = call(&c, "GET", &node.url("/metadata"), None, None);
    assert_eq!(s, 200);
    assert_eq!(cs["rest"][0]["security"]["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    let (s, smart) = call(&c, "GET", &node.url("/.well-known/smart-configuration"), None, None);
    assert_eq!(s, 200);
    assert!(smart["capabilities"].as_array().unwrap().iter().any(|c| c == "permission-v2"));
    assert_eq!(smart["issuer"], ISSUER);
    // The operator status page needs the admin group.
    assert_eq!(call(&c, "GET", &node.url("/_cluster/status"), None, None).0, 401);
    assert_eq!(call(&c, "GET", &node.url("/_cluster/status"), Some(&groups(&["practitioner"])), None).0, 403);
    assert_eq!(call(&c, "GET", &node.url("/_cluster/status"), Some(&groups(&["admin"])), None).0, 200);
    assert_eq!(call(&c, "GET", &node.url("/%5Fcluster/status"), Some(&groups(&["practitioner"])), None).0, 403, "however the path is spelled");
    // A PATCH without rights is refused before anything is read or applied.
    let probe = json!([{"op": "test", "path": "/id", "value": "nope"}]);
    assert_eq!(call(&c, "PATCH", &node.url("/Observation/none"), Some(&groups(&["auditor"])), Some(&probe)).0, 403);
}

/// FWoA's default rules, written out independently of the server's table.
fn expected(group: &str, interaction: &str, rtype: &str) -> bool {
    let read_only = ["read", "vread", "search-type"].contains(&interaction);
    match group {
        "practitioner" => true,
        "non-practitioner" => read_only && rtype == "Claim",
        "auditor" => read_only && rtype == "Patient",
        _ => false,
    }
}

fn sample(rtype: &str, id: &str) -> Value {
    match rtype {
        "Patient" => json!({"resourceType": "Patient", "id": id, "active": true}),
        "Claim" => json!({"resourceType": "Claim", "id": id, "status": "active", "use": "claim", "created": "2024-01-01",
            "type": {"coding": [{"code": "oral"}]}, "patient": {"reference": "Patient/x"}, "provider": {"reference": "Organization/o"},
            "priority": {"coding": [{"code": "normal"}]}, "insurance": [{"sequence": 1, "focal": true, "coverage": {"reference": "Coverage/c"}}]}),
        _ => json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "t"}}),
    }
}

#[test]
fn group_rules_matrix() {
    let keys = tempfile::tempdir().unwrap();
    let node = secured_node(keys.path());
    let c = client();
    let admin = groups(&["practitioner"]);
    let types = ["Patient", "Claim", "Observation"];
    let all_groups = ["practitioner", "non-practitioner", "auditor"];
    for g in all_groups {
        for t in types {
            let (s, _) = call(&c, "PUT", &node.url(&format!("/{t}/{g}-x")), Some(&admin), Some(&sample(t, &format!("{g}-x"))));
            assert!(s == 201 || s == 200, "seeding {t}: {s}");
        }
    }
    let mut checked = 0;
    for g in all_groups {
        let tok = groups(&[g]);
        for t in types {
            let id = format!("{g}-x");
            let inst = node.url(&format!("/{t}/{id}"));
            let patch = json!([{"op": "replace", "path": "/id", "value": id}]);
            let cases: Vec<(&str, &str, String, Option<Value>)> = vec![
                ("read", "GET", inst.clone(), None),
                ("vread", "GET", format!("{inst}/_history/1"), None),
                ("search-type", "GET", node.url(&format!("/{t}?_id={id}")), None),
                ("history-instance", "GET", format!("{inst}/_history"), None),
                ("history-type", "GET", node.url(&format!("/{t}/_history")), None),
                ("create", "POST", node.url(&format!("/{t}")), Some(sample(t, "new"))),
                ("update", "PUT", inst.clone(), Some(sample(t, &id))),
                ("patch", "PATCH", inst.clone(), Some(patch)),
                ("delete", "DELETE", inst.clone(), None),
            ];
            for (interaction, method, url, body) in cases {
                let (s, out) = call(&c, method, &url, Some(&tok), body.as_ref());
                let allowed = expected(g, interaction, t);
                if allowed {
                    assert!((200..300).contains(&s), "{g} {interaction} {t}: {s} {out}");
                } else {
                    assert_eq!(s, 403, "{g} {interaction} {t}: {out}");
                    assert_eq!(out["issue"][0]["code"], "forbidden");
                }
                checked += 1;
            }
        }
        // System level: FWoA gives these to practitioners only.
        let bundle = |kind: &str| json!({"resourceType": "Bundle", "type": kind, "entry": [{"request": {"method": "GET", "url": "Patient?_count=1"}}]});
        for (interaction, method, url, body) in [
            ("search-system", "GET", node.url("/?_type=Patient"), None),
            ("history-system", "GET", node.url("/_history"), None),
            ("transaction", "POST", node.url("/"), Some(bundle("transaction"))),
            ("batch", "POST", node.url("/"), Some(bundle("batch"))),
        ] {
            let (s, _) = call(&c, method, &url, Some(&tok), body.as_ref());
            assert_eq!(s == 200, g == "practitioner", "{g} {interaction}: {s}");
            checked += 1;
        }
    }
    assert_eq!(checked, 3 * 3 * 9 + 3 * 4);
    // An API key acts as its group (auditor); an unknown key is a 401.
    let with_key = |url: &str, key: &str| c.get(url).header("x-api-key", key).send().unwrap().status().as_u16();
    assert_eq!(with_key(&node.url("/Patient/auditor-x"), "auditor-key-123"), 200);
    assert_eq!(with_key(&node.url("/Observation/auditor-x"), "auditor-key-123"), 403);
    assert_eq!(with_key(&node.url("/Patient/auditor-x"), "wrong-key"), 401);
    let r = c.post(node.url("/Patient")).header("x-api-key", "auditor-key-123").header("content-type", "application/fhir+json").body(sample("Patient", "k").to_string()).send().unwrap();
    assert_eq!(r.status(), 403);
}

/// p1 and p2 with their data; o3 belongs to p1 (subject) and names p2 as performer.
fn seed_patients(c: &Client, node: &TestNode) {
    let admin = groups(&["practitioner"]);
    let obs = |id: &str, subject: &str, code: &str, performer: Option<&str>| {
        let mut o = json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": code}]}, "subject": {"reference": subject}});
        if let Some(p) = performer {
            o["performer"] = json!([{"reference": p}]);
        }
        o
    };
    for r in [
        json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "One"}]}),
        json!({"resourceType": "Patient", "id": "p2", "name": [{"family": "Two"}]}),
        obs("o1", "Patient/p1", "c1", None),
        obs("o2", "Patient/p2", "c1", None),
        obs("o3", "Patient/p1", "c2", Some("Patient/p2")),
        json!({"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"code": "AMB"}, "subject": {"reference": "Patient/p1"}}),
        json!({"resourceType": "Medication", "id": "m1"}),
        json!({"resourceType": "MedicationRequest", "id": "mr2", "status": "active", "intent": "order", "medicationReference": {"reference": "Medication/m1"}, "subject": {"reference": "Patient/p2"}}),
        json!({"resourceType": "Bundle", "id": "b1", "type": "collection", "entry": [{"resource": {"resourceType": "Patient", "id": "p2"}}]}),
    ] {
        let url = node.url(&format!("/{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap()));
        let (s, out) = call(c, "PUT", &url, Some(&admin), Some(&r));
        assert!(s == 201 || s == 200, "{out}");
    }
}

#[test]
fn smart_patient_scopes_reach_only_the_compartment() {
    let keys = tempfile::tempdir().unwrap();
    let node = secured_node(keys.path());
    let c = client();
    seed_patients(&c, &node);
    let read = scoped("launch/patient openid patient/*.rs", Some("p1"));
    let get = |path: &str, tok: &str| call(&c, "GET", &node.url(path), Some(tok), None);
    // Reads.
    for (path, status) in [
        ("/Patient/p1", 200),
        ("/Patient/p2", 403),
        ("/Observation/o1", 200),
        ("/Observation/o2", 403),
        ("/Observation/o3", 200),
        ("/Observation/o2/_history/1", 403),
        ("/Encounter/e1", 200),
        ("/Medication/m1", 200),
        ("/MedicationRequest/mr2", 403),
        ("/Bundle/b1", 403),
    ] {
        assert_eq!(get(path, &read).0, status, "{path}");
    }
    // Searches: matches, totals, counts.
    let (_, b) = get("/Observation", &read);
    assert_eq!(ids(&b, Some("match")), ["Observation/o1", "Observation/o3"]);
    assert_eq!(b["total"], 2);
    assert_eq!(get("/Observation?_summary=count", &read).1["total"], 2);
    assert_eq!(get("/Observation?code=c1", &read).1["total"], 1);
    // _include never brings in another patient.
    let (_, b) = get("/Observation?_include=Observation:performer&_include=Observation:subject", &read);
    assert_eq!(ids(&b, Some("include")), ["Patient/p1"]);
    // _revinclude, _has, chains.
    let (_, b) = get("/Patient?_revinclude=Observation:subject", &read);
    assert_eq!(ids(&b, None), ["Observation/o1", "Observation/o3", "Patient/p1"]);
    let (_, b) = get("/Patient?_has:Observation:subject:code=c1", &read);
    assert_eq!(ids(&b, Some("match")), ["Patient/p1"]);
    assert_eq!(get("/Observation?subject:Patient.name=Two", &read).1["total"], 0);
    // A chain or _has into another patient's data reads only this patient's compartment.
    let admin_tok = groups(&["practitioner"]);
    assert_eq!(get("/Medication?_has:MedicationRequest:medication:subject=Patient/p2", &admin_tok).1["total"], 1);
    assert_eq!(get("/Medication?_has:MedicationRequest:medication:subject=Patient/p2", &read).1["total"], 0);
    assert_eq!(get("/Bundle", &read).0, 403, "a Bundle may hold anyone's data");
    assert_eq!(get("/Observation?subject.name=One", &read).1["total"], 2);
    // Compartment and system searches.
    let (_, b) = get("/Patient/p2/Observation", &read);
    assert_eq!(ids(&b, Some("match")), ["Observation/o3"], "only what is in p1's compartment too");
    let (_, b) = get("/?_type=Observation,Patient", &read);
    assert_eq!(ids(&b, Some("match")), ["Observation/o1", "Observation/o3", "Patient/p1"]);
    // History at every level.
    let (_, b) = get("/Observation/_history", &read);
    assert_eq!(ids(&b, None), ["Observation/o1", "Observation/o3"]);
    let (_, b) = get("/_history", &read);
    assert_eq!(ids(&b, None), ["Encounter/e1", "Medication/m1", "Observation/o1", "Observation/o3", "Patient/p1"]);
    let (_, b) = get("/?_type=Medication,MedicationRequest,Bundle", &read);
    assert_eq!(b["resourceType"], "OperationOutcome", "an explicit forbidden type is refused: {b}");
    assert_eq!(ids(&get("/Observation/o2/_history", &read).1, None), Vec::<String>::new());
    // Read-only scopes cannot write.
    let new_obs = |subject: &str| json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": subject}});
    assert_eq!(call(&c, "POST", &node.url("/Observation"), Some(&read), Some(&new_obs("Patient/p1"))).0, 403);

    // Writes with patient/Observation.cruds.
    let write = scoped("patient/Observation.cruds patient/Patient.rs", Some("p1"));
    let send = |m: &str, path: &str, body: Option<&Value>| call(&c, m, &node.url(path), Some(&write), body);
    let (s, mine) = send("POST", "/Observation", Some(&new_obs("Patient/p1")));
    assert_eq!(s, 201);
    assert_eq!(send("POST", "/Observation", Some(&new_obs("Patient/p2"))).0, 403);
    let mut both = new_obs("Patient/p1");
    both["performer"] = json!([{"reference": "Patient/p2"}]);
    assert_eq!(send("POST", "/Observation", Some(&both)).0, 403, "a write may not reach into p2's record");
    assert_eq!(send("POST", "/Patient", Some(&json!({"resourceType": "Patient", "id": "p1"}))).0, 403, "no new Patients");
    let mut conditional_ref = new_obs("Patient/p1");
    conditional_ref["performer"] = json!([{"reference": "Patient?name=Two"}]);
    let tx_ref = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": conditional_ref, "request": {"method": "POST", "url": "Observation"}}]});
    assert_eq!(send("POST", "/", Some(&tx_ref)).0, 403, "a conditional reference could resolve into p2's record");
    let mut o2 = new_obs("Patient/p1");
    o2["id"] = json!("o2");
    assert_eq!(send("PUT", "/Observation/o2", Some(&o2)).0, 403, "o2 belongs to p2");
    let mut o1 = new_obs("Patient/p2");
    o1["id"] = json!("o1");
    assert_eq!(send("PUT", "/Observation/o1", Some(&o1)).0, 403, "moving o1 to p2");
    assert_eq!(send("PATCH", "/Observation/o1", Some(&json!([{"op": "replace", "path": "/subject/reference", "value": "Patient/p2"}]))).0, 403);
    assert_eq!(send("DELETE", "/Observation/o2", None).0, 403);
    // Conditional update and delete are refused under patient/ scopes; a conditional create
    // decides within the compartment (the condition carries it to apply): p2's o2 is invisible.
    assert_eq!(send("DELETE", "/Observation?_id=o2", None).0, 403);
    assert_eq!(send("PUT", "/Observation?_id=o2", Some(&new_obs("Patient/p1"))).0, 403);
    let r = c.post(node.url("/Observation")).bearer_auth(&write).header("content-type", "application/fhir+json")
        .header("if-none-exist", "_id=o2").body(new_obs("Patient/p1").to_string()).send().unwrap();
    assert_eq!(r.status(), 201, "no match in the compartment: a new resource");
    let admin = groups(&["practitioner"]);
    let (_, o2_now) = call(&c, "GET", &node.url("/Observation/o2"), Some(&admin), None);
    assert_eq!((o2_now["meta"]["versionId"].as_str(), o2_now["subject"]["reference"].as_str()), (Some("1"), Some("Patient/p2")), "o2 untouched");
    let issued = json!([{"op": "add", "path": "/issued", "value": "2024-01-01T00:00:00Z"}]);
    assert_eq!(send("PATCH", &format!("/Observation/{}", mine["id"].as_str().unwrap()), Some(&issued)).0, 200);
    assert_eq!(send("PATCH", "/Observation/o3", Some(&issued)).0, 403, "o3 names p2 as performer");
    // A refused PATCH tells nothing about the resource (no 422 for a failed test op).
    let probe = json!([{"op": "test", "path": "/status", "value": "no-such-status"}]);
    assert_eq!(send("PATCH", "/Observation/o2", Some(&probe)).0, 403);
    assert_eq!(send("PATCH", "/Observation?_id=o2", Some(&probe)).0, 404, "the condition sees only p1's compartment");
    // p2's app may not change o3: it only mentions p2 (performer) next to p1 (subject).
    let p2_writer = scoped("patient/Observation.cruds", Some("p2"));
    assert_eq!(call(&c, "DELETE", &node.url("/Observation/o3"), Some(&p2_writer), None).0, 403);
    // Bundles: a transaction touching o2 writes nothing; a batch answers per entry.
    let mut o1_ok = new_obs("Patient/p1");
    o1_ok["id"] = json!("o1");
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": o1_ok, "request": {"method": "PUT", "url": "Observation/o1"}},
        {"request": {"method": "DELETE", "url": "Observation/o2"}}]});
    let (s, out) = send("POST", "/", Some(&tx));
    assert_eq!(s, 403, "{out}");
    let (_, o1_now) = call(&c, "GET", &node.url("/Observation/o1"), Some(&admin), None);
    assert_eq!(o1_now["meta"]["versionId"], "1", "nothing of the transaction was applied");
    assert_eq!(call(&c, "GET", &node.url("/Observation/o2"), Some(&admin), None).0, 200);
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Observation/o1"}},
        {"request": {"method": "GET", "url": "Observation/o2"}},
        {"request": {"method": "GET", "url": "Observation?_id=o2"}},
        {"request": {"method": "GET", "url": "Observation/o1/_history"}}]});
    let (s, out) = send("POST", "/", Some(&batch));
    assert_eq!(s, 200, "{out}");
    let statuses: Vec<&str> = out["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses[..3], ["200 OK", "403 Forbidden", "200 OK"]);
    assert_eq!(out["entry"][2]["resource"]["total"], 0);
    // A batch's WRITE entries are decided one by one: p1's goes in, p2's, o2's and an entry
    // with a fullUrl that is not a urn: are refused in their own responses.
    let writes = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"fullUrl": "urn:uuid:5f0c0e1e-0000-4000-8000-000000000001", "resource": new_obs("Patient/p1"), "request": {"method": "POST", "url": "Observation"}},
        {"resource": new_obs("Patient/p2"), "request": {"method": "POST", "url": "Observation"}},
        {"resource": o2.clone(), "request": {"method": "PUT", "url": "Observation/o2"}},
        {"fullUrl": "http://elsewhere.example/fhir/Observation/x1", "resource": new_obs("Patient/p1"), "request": {"method": "POST", "url": "Observation"}}]});
    let (s, out) = send("POST", "/", Some(&writes));
    assert_eq!(s, 200, "{out}");
    let entry = |i: usize| &out["entry"][i]["response"];
    assert_eq!(entry(0)["status"].as_str().unwrap().split(' ').next(), Some("201"), "{out}");
    for i in 1..4 {
        assert_eq!(entry(i)["status"], "403 Forbidden", "entry {i}: {out}");
    }
    assert!(entry(3)["outcome"].to_string().contains("urn:"), "{out}");
    let created = entry(0)["location"].as_str().unwrap().split("/_history").next().unwrap().to_string();
    assert_eq!(call(&c, "GET", &node.url(&format!("/{created}")), Some(&admin), None).1["subject"]["reference"], "Patient/p1");
    assert_eq!(call(&c, "GET", &node.url("/Observation/o2"), Some(&admin), None).1["meta"]["versionId"], "1", "o2 untouched by the batch");
    // _include:iterate follows o3's performer to p2 for a practitioner, never for p1's app.
    let iterate = "/Patient?_id=p1&_revinclude=Observation:subject&_include:iterate=Observation:performer";
    assert!(ids(&get(iterate, &admin).1, Some("include")).contains(&"Patient/p2".to_string()), "the iteration reaches p2");
    let (_, b) = get(iterate, &read);
    let included = ids(&b, Some("include"));
    assert!(included.contains(&"Observation/o3".to_string()) && !included.contains(&"Patient/p2".to_string()), "{included:?}");

    // user/, system/ and v1 scopes.
    let user_obs = scoped("user/Observation.rs", None);
    assert_eq!(get("/Observation/o2", &user_obs).0, 200);
    assert_eq!(get("/Patient/p1", &user_obs).0, 403);
    let system = scoped("system/*.read", None);
    assert_eq!(get("/Patient/p2", &system).0, 200);
    assert_eq!(call(&c, "POST", &node.url("/Observation"), Some(&system), Some(&new_obs("Patient/p1"))).0, 403);
    let v1 = scoped("patient/Observation.read", Some("p1"));
    assert_eq!(get("/Observation/o1", &v1).0, 200);
    assert_eq!(get("/Observation/o2", &v1).0, 403);
    // A patient/ scope without a patient claim reaches nothing of the compartment.
    assert_eq!(get("/Observation/o1", &scoped("patient/*.rs", None)).0, 403);
    // Mixed scopes: a user/ create right with a patient/ read right cannot read p2's data
    // through a conditional create.
    let mixed = scoped("user/Observation.c patient/Observation.rs", Some("p1"));
    let r = c.post(node.url("/Observation")).bearer_auth(&mixed).header("content-type", "application/fhir+json")
        .header("if-none-exist", "_id=o2").header("prefer", "return=representation").body(new_obs("Patient/p1").to_string()).send().unwrap();
    assert_eq!(r.status(), 201, "confined by the patient/ search grant: o2 is not matched");
    // A condition's chain, or a conditional reference, into a type the caller reaches only
    // within a compartment: refused (apply would search all of it).
    let chained = scoped("user/Observation.crus patient/Patient.rs", Some("p1"));
    let r = c.post(node.url("/Observation")).bearer_auth(&chained).header("content-type", "application/fhir+json")
        .header("if-none-exist", "subject:Patient.name=Two").body(new_obs("Patient/p1").to_string()).send().unwrap();
    assert_eq!(r.status(), 403);
    let by_ref = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": new_obs("Patient?name=Two"), "request": {"method": "POST", "url": "Observation"}}]});
    assert_eq!(call(&c, "POST", &node.url("/"), Some(&chained), Some(&by_ref)).0, 403);
    // History pages hold only visible entries, and their links point only at visible ones.
    let mut seen = Vec::new();
    let mut url = node.url("/Observation/_history?_count=1");
    for _ in 0..50 {
        let (_, page) = call(&c, "GET", &url, Some(&read), None);
        let entries = page["entry"].as_array().cloned().unwrap_or_default();
        assert!(entries.len() <= 1);
        seen.extend(entries.iter().map(|e| e["resource"]["subject"]["reference"].as_str().unwrap_or("").to_string()));
        match page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next") {
            Some(next) => {
                assert_eq!(entries.len(), 1, "no empty page before the end");
                url = next["url"].as_str().unwrap().to_string();
            }
            None => break,
        }
    }
    assert!(!seen.is_empty() && seen.iter().all(|s| s == "Patient/p1"), "{seen:?}");
    // Shared types: patient/ scopes read them but never write them.
    assert_eq!(call(&c, "DELETE", &node.url("/Medication/m1"), Some(&scoped("patient/*.cruds", Some("p1"))), None).0, 403);
    // A condition is a search: create-only rights cannot use one to read.
    let create_only = scoped("user/Observation.c", None);
    let r = c.post(node.url("/Observation")).bearer_auth(&create_only).header("content-type", "application/fhir+json")
        .header("if-none-exist", "_id=o2").header("prefer", "return=representation").body(new_obs("Patient/p1").to_string()).send().unwrap();
    assert_eq!(r.status(), 403);
    let create_read = scoped("user/Observation.cs", None);
    let r = c.post(node.url("/Observation")).bearer_auth(&create_read).header("content-type", "application/fhir+json")
        .header("if-none-exist", "_id=o2").header("prefer", "return=representation").body(new_obs("Patient/p1").to_string()).send().unwrap();
    assert_eq!(r.status(), 200, "matched o2");
    assert!(r.text().unwrap().is_empty(), "no body for a caller who may not read Observations");
    // Groups and scopes together: both must allow.
    let both = token(json!({"cognito:groups": ["auditor"], "scope": "user/*.cruds"}));
    assert_eq!(get("/Patient/p2", &both).0, 200);
    assert_eq!(get("/Observation/o1", &both).0, 403, "the auditor group reads Patients only");
    // OpenID-only scopes: SMART does not apply, the groups decide. A list-valued scope counts.
    let oidc = token(json!({"cognito:groups": ["practitioner"], "scope": "openid profile aws.cognito.signin.user.admin"}));
    assert_eq!(get("/Observation/o2", &oidc).0, 200);
    let listed = token(json!({"cognito:groups": ["practitioner"], "scope": ["patient/*.rs"], "patient": "p1"}));
    assert_eq!(get("/Observation/o2", &listed).0, 403);
    assert_eq!(get("/Observation/o1", &listed).0, 200);
}

#[test]
fn a_public_address_needs_auth_or_an_explicit_opt_out() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(kiln_tests::kiln_bin())
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--insecure-no-auth"), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A real FHIR client library (Python fhirpy) with a bearer token (`.ci/run` installs it).
#[test]
fn fhirpy_with_a_bearer_token() {
    let keys = tempfile::tempdir().unwrap();
    let node = secured_node(keys.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/fhirpy_bearer.py");
    let out = std::process::Command::new("python3").arg(&script).arg(&node.base).arg(groups(&["practitioner"])).output().expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.starts_with("ok "), "fhirpy: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
}

/// `kiln token` mints a token a node accepts, and the node writes one audit line per request.
#[test]
fn kiln_token_and_the_audit_line() {
    use std::io::{BufRead, BufReader, Read};
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), SECRET).unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n[auth]\nmode = \"jwt\"\nhs256_secret_file = \"{}\"\n",
            dir.path().join("data").display(),
            dir.path().join("secret").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(kiln_tests::kiln_bin())
        .args(["token", "--sub", "dev-user", "--groups", "practitioner", "--ttl", "600", "--secret-file"])
        .arg(dir.path().join("secret"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let tok = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut child = std::process::Command::new(kiln_tests::kiln_bin())
        .args(["serve", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut first).unwrap();
    let base = first.trim().strip_prefix("Kiln listening on ").unwrap().to_string();
    let c = client();
    assert_eq!(c.get(format!("{base}/Patient?_count=1")).bearer_auth(&tok).send().unwrap().status(), 200);
    assert_eq!(c.get(format!("{base}/Patient/x")).send().unwrap().status(), 401);
    // Lines are written within 100 ms.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let _ = child.kill();
    let _ = child.wait();
    let mut log = String::new();
    child.stderr.take().unwrap().read_to_string(&mut log).unwrap();
    let lines: Vec<Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(lines.iter().any(|l| l["subject"] == "dev-user" && l["interaction"] == "search-type" && l["type"] == "Patient" && l["status"] == 200 && l["outcome"] == "allowed"), "{log}");
    assert!(lines.iter().any(|l| l["interaction"] == "read" && l["id"] == "x" && l["status"] == 401 && l["outcome"] == "denied"), "{log}");
}

/// An ES256 key pair: (private PKCS#8 PEM, public JWK with `kid`).
fn ec_key(kid: &str) -> (String, Value) {
    use base64::Engine as _;
    let kp = rcgen::KeyPair::generate().unwrap();
    let raw = kp.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = json!({"kty": "EC", "crv": "P-256", "x": b64(&raw[1..33]), "y": b64(&raw[33..65]), "kid": kid, "alg": "ES256", "use": "sig"});
    (kp.serialize_pem(), jwk)
}

fn es256(pem: &str, kid: &str, claims: &Value) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some(kid.into());
    jsonwebtoken::encode(&h, claims, &jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap()).unwrap()
}

#[test]
fn a_rotated_jwks_file_takes_effect_on_http_requests_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    let (k1, j1) = ec_key("k1");
    let (k2, j2) = ec_key("k2");
    std::fs::write(&jwks, json!({"keys": [j1]}).to_string()).unwrap();
    let node = TestNode::start_with(FhirVersion::R4, |cfg| {
        cfg.auth = AuthConfig { mode: AuthMode::Jwt, jwks_file: Some(jwks.clone()), issuer: Some(ISSUER.into()), audience: Some(AUDIENCE.into()), ..AuthConfig::default() }
    });
    let c = client();
    let claims = json!({"sub": "svc", "iss": ISSUER, "aud": AUDIENCE, "exp": now() + 600, "cognito:groups": ["practitioner"]});
    let (t1, t2) = (es256(&k1, "k1", &claims), es256(&k2, "k2", &claims));
    let status = |t: &str| c.get(node.url("/Patient?_count=1")).bearer_auth(t).send().unwrap().status().as_u16();
    assert_eq!(status(&t1), 200);
    let r = c.get(node.url("/Patient?_count=1")).bearer_auth(&t2).send().unwrap();
    assert_eq!(r.status(), 401, "k2 is not published yet");
    assert!(r.headers()["www-authenticate"].to_str().unwrap().contains("invalid_token"));
    // Rotate: k2 in, k1 out. The node re-reads the file (at most once a second) on its own.
    // (Another length too: a file system with coarse timestamps still shows the change.)
    std::fs::write(&jwks, json!({"keys": [j2]}).to_string() + "\n\n").unwrap();
    let start = std::time::Instant::now();
    while status(&t2) != 200 {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "the rotated key is not taken within 10 s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(status(&t1), 401, "a token of the withdrawn key, used and cached before, stops working");
}
