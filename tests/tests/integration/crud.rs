//! create / read / vread / update / delete / patch, version headers, Prefer, and every error path.

use kiln::fhir::FhirVersion;
use kiln_tests::{client, json, TestNode};
use reqwest::blocking::Client;
use reqwest::StatusCode;
use serde_json::{json, Value};

const FHIR: &str = "application/fhir+json";

fn post(c: &Client, url: &str, body: &Value) -> reqwest::blocking::Response {
    c.post(url).header("content-type", FHIR).body(body.to_string()).send().unwrap()
}

fn put(c: &Client, url: &str, body: &Value) -> reqwest::blocking::Response {
    c.put(url).header("content-type", FHIR).body(body.to_string()).send().unwrap()
}

/// Asserts an OperationOutcome error with `status` whose diagnostics contain `needle`.
fn assert_outcome(resp: reqwest::blocking::Response, status: u16, needle: &str) -> Value {
    assert_eq!(resp.status().as_u16(), status, "unexpected status");
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with(FHIR));
    let oo = json(resp);
    assert_eq!(oo["resourceType"], "OperationOutcome", "{oo}");
    let diag = oo["issue"][0]["diagnostics"].as_str().unwrap_or_default();
    assert!(diag.contains(needle), "diagnostics {diag:?} should mention {needle:?}");
    oo
}

fn header(resp: &reqwest::blocking::Response, name: &str) -> String {
    resp.headers().get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

#[test]
fn lifecycle_create_read_vread_update_delete() {
    let node = TestNode::start();
    let c = client();
    let resp = post(&c, &node.url("/Patient"), &json!({"resourceType": "Patient", "id": "ignored", "name": [{"family": "Ng"}]}));
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "etag"), "W/\"1\"");
    assert!(!header(&resp, "last-modified").is_empty());
    let location = header(&resp, "location");
    let created = json(resp);
    let id = created["id"].as_str().unwrap().to_string();
    assert_ne!(id, "ignored", "the server assigns ids on create");
    assert_eq!(location, node.url(&format!("/Patient/{id}/_history/1")));
    assert_eq!(created["meta"]["versionId"], "1");

    let read = c.get(node.url(&format!("/Patient/{id}"))).send().unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(header(&read, "etag"), "W/\"1\"");
    assert_eq!(json(read), created);

    let mut v2 = created.clone();
    v2["active"] = json!(true);
    let resp = put(&c, &node.url(&format!("/Patient/{id}")), &v2);
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "etag"), "W/\"2\"");
    assert_eq!(json(resp)["active"], true);

    let old = json(c.get(node.url(&format!("/Patient/{id}/_history/1"))).send().unwrap());
    assert_eq!(old, created);
    let resp = c.get(node.url(&format!("/Patient/{id}/_history/9"))).send().unwrap();
    assert_outcome(resp, 404, "version 9");
    let resp = c.get(node.url(&format!("/Patient/{id}/_history/x"))).send().unwrap();
    assert_outcome(resp, 400, "not a version number");

    let resp = c.delete(node.url(&format!("/Patient/{id}"))).send().unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "etag"), "W/\"3\"");
    assert_outcome(c.get(node.url(&format!("/Patient/{id}"))).send().unwrap(), 410, "deleted");
    assert_outcome(c.get(node.url(&format!("/Patient/{id}/_history/3"))).send().unwrap(), 410, "deleted");
    assert_eq!(c.get(node.url(&format!("/Patient/{id}/_history/2"))).send().unwrap().status(), StatusCode::OK);
    // Deleting again, or deleting what never existed, is not an error.
    assert_eq!(c.delete(node.url(&format!("/Patient/{id}"))).send().unwrap().status(), StatusCode::NO_CONTENT);
    assert_eq!(c.delete(node.url("/Patient/never-there")).send().unwrap().status(), StatusCode::NO_CONTENT);
    let resp = c.delete(node.url(&format!("/Patient/{id}"))).header("prefer", "return=OperationOutcome").send().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(json(resp)["issue"][0]["diagnostics"].as_str().unwrap().contains("already deleted"));

    // Update after delete brings it back as a new version.
    let resp = put(&c, &node.url(&format!("/Patient/{id}")), &v2);
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "etag"), "W/\"4\"");
    assert_eq!(c.head(node.url(&format!("/Patient/{id}"))).send().unwrap().status(), StatusCode::OK);
}

#[test]
fn update_as_create_is_configurable() {
    let node = TestNode::start();
    let c = client();
    let resp = put(&c, &node.url("/Observation/o-1"), &json!({"resourceType": "Observation", "id": "o-1", "status": "final", "code": {"text": "x"}}));
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "location"), node.url("/Observation/o-1/_history/1"));

    let strict = TestNode::start_with(FhirVersion::R4, |c| c.allow_update_create = false);
    let resp = put(&c, &strict.url("/Patient/new-one"), &json!({"resourceType": "Patient", "id": "new-one"}));
    assert_outcome(resp, 405, "update-as-create");
}

#[test]
fn if_match_if_none_match_if_modified_since() {
    let node = TestNode::start();
    let c = client();
    let p = json!({"resourceType": "Patient", "id": "m1"});
    put(&c, &node.url("/Patient/m1"), &p);
    let resp = c.put(node.url("/Patient/m1")).header("content-type", FHIR).header("if-match", "W/\"7\"").body(p.to_string()).send().unwrap();
    assert_outcome(resp, 412, "current version is 1");
    let resp = c.put(node.url("/Patient/m1")).header("content-type", FHIR).header("if-match", "W/\"1\"").body(p.to_string()).send().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = c.put(node.url("/Patient/m1")).header("content-type", FHIR).header("if-match", "banana").body(p.to_string()).send().unwrap();
    assert_outcome(resp, 400, "If-Match");
    let resp = c.delete(node.url("/Patient/m1")).header("if-match", "W/\"1\"").send().unwrap();
    assert_outcome(resp, 412, "current version is 2");

    let resp = c.get(node.url("/Patient/m1")).header("if-none-match", "W/\"2\"").send().unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    let resp = c.get(node.url("/Patient/m1")).header("if-none-match", "\"abc\", W/\"1\"").send().unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "foreign or stale ETags do not match");
    let lm = header(&resp, "last-modified");
    let resp = c.get(node.url("/Patient/m1")).header("if-modified-since", &lm).send().unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_MODIFIED);
    let resp = c.get(node.url("/Patient/m1")).header("if-modified-since", "Sat, 01 Jan 2000 00:00:00 GMT").send().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[test]
fn prefer_return() {
    let node = TestNode::start();
    let c = client();
    let p = json!({"resourceType": "Patient", "active": true});
    let resp = c.post(node.url("/Patient")).header("content-type", FHIR).header("prefer", "return=minimal").body(p.to_string()).send().unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(!header(&resp, "location").is_empty());
    assert!(resp.text().unwrap().is_empty());
    let resp = c.post(node.url("/Patient")).header("content-type", FHIR).header("prefer", "return=OperationOutcome").body(p.to_string()).send().unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(json(resp)["resourceType"], "OperationOutcome");
    // Unknown preferences are ignored (RFC 7240).
    let resp = c.post(node.url("/Patient")).header("content-type", FHIR).header("prefer", "return=all").body(p.to_string()).send().unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(json(resp)["resourceType"], "Patient");
}

#[test]
fn bad_input_is_a_4xx_operation_outcome() {
    let node = TestNode::start_with(FhirVersion::R4, |c| {
        c.limits.max_body_bytes = 2000;
        c.limits.max_depth = 6;
    });
    let c = client();
    assert_outcome(post(&c, &node.url("/Patient"), &json!({"resourceType": "Observation"})), 400, "URL is for 'Patient'");
    assert_outcome(post(&c, &node.url("/Patient"), &json!({"name": []})), 400, "no resourceType");
    assert_outcome(post(&c, &node.url("/Patient"), &json!([1])), 400, "JSON object");
    assert_outcome(post(&c, &node.url("/Foo"), &json!({"resourceType": "Foo"})), 404, "unknown resource type 'Foo'");
    assert_outcome(post(&c, &node.url("/Patient"), &json!({"resourceType": "Patient", "gender": 5})), 400, "/gender");
    assert_outcome(post(&c, &node.url("/Patient"), &json!({"resourceType": "Patient", "colour": "red"})), 400, "colour");
    assert_outcome(put(&c, &node.url("/Patient/a"), &json!({"resourceType": "Patient", "id": "b"})), 400, "does not match");
    assert_outcome(put(&c, &node.url("/Patient/a"), &json!({"resourceType": "Patient"})), 400, "must carry the resource id");
    assert_outcome(put(&c, &node.url("/Patient/a_b"), &json!({"resourceType": "Patient", "id": "a_b"})), 400, "not valid");
    let long = "x".repeat(65);
    assert_outcome(c.get(node.url(&format!("/Patient/{long}"))).send().unwrap(), 400, "1-64 characters");
    let resp = c.post(node.url("/Patient")).header("content-type", FHIR).body("{\"resourceType\": ").send().unwrap();
    assert_outcome(resp, 400, "not valid JSON");
    let resp = c.post(node.url("/Patient")).header("content-type", FHIR).body("").send().unwrap();
    assert_outcome(resp, 400, "empty");
    let big = json!({"resourceType": "Patient", "name": [{"text": "y".repeat(3000)}]});
    assert_outcome(post(&c, &node.url("/Patient"), &big), 413, "2000 bytes");
    let deep = json!({"resourceType": "Patient", "extension": [{"url": "u", "extension": [{"url": "u", "extension": [{"url": "u", "valueString": "x"}]}]}]});
    assert_outcome(post(&c, &node.url("/Patient"), &deep), 400, "limit of 6");
    assert_outcome(c.get(node.url("/Patient/nope")).send().unwrap(), 404, "does not exist");
    assert_outcome(c.get(node.url("/Patient/a/_history/1/extra")).send().unwrap(), 404, "no FHIR endpoint");
    assert_outcome(c.post(node.url("/Patient/a")).send().unwrap(), 405, "allowed: GET, PUT, PATCH, DELETE");
    assert_outcome(c.get(node.url("/Patient?colour=x")).send().unwrap(), 400, "unknown search parameter 'colour'");
    // Not implemented yet: said plainly.
    assert_outcome(c.get(node.url("/Patient?_filter=name eq x")).send().unwrap(), 400, "not supported");
    assert_outcome(post(&c, &node.url("/Patient/1/$graph"), &json!({})), 501, "operation");
    assert_outcome(post(&c, &node.url("/$export"), &json!({})), 400, "Parameters");
    assert_outcome(post(&c, &node.url("/"), &json!({"resourceType": "Bundle", "type": "document"})), 400, "batch or a transaction");
    assert_outcome(post(&c, &node.url("/"), &json!({"resourceType": "Patient"})), 400, "takes a Bundle");
    let resp = c.patch(node.url("/Patient?identifier=x")).header("content-type", "application/json-patch+json").body("[]").send().unwrap();
    assert_outcome(resp, 404, "no match");
    // The rejected writes left nothing behind.
    let hist = json(c.get(node.url("/_history")).send().unwrap());
    assert!(hist.get("entry").is_none(), "no entries (and no empty array): {hist}");
}

#[test]
fn json_patch() {
    let node = TestNode::start();
    let c = client();
    put(&c, &node.url("/Patient/p1"), &json!({"resourceType": "Patient", "id": "p1", "active": false}));
    let patch = |body: Value, ct: &str| c.patch(node.url("/Patient/p1")).header("content-type", ct).body(body.to_string()).send().unwrap();
    let ops = json!([{"op": "replace", "path": "/active", "value": true}, {"op": "add", "path": "/gender", "value": "female"}]);
    let resp = patch(ops.clone(), "application/json-patch+json");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "etag"), "W/\"2\"");
    let body = json(resp);
    assert_eq!((body["active"].clone(), body["gender"].clone()), (json!(true), json!("female")));
    let hist = json(c.get(node.url("/Patient/p1/_history")).send().unwrap());
    assert_eq!(hist["entry"][0]["request"]["method"], "PATCH");

    // FHIR JSON is FHIRPath Patch: a JSON Patch array sent so is not a Parameters resource.
    assert_outcome(patch(ops.clone(), FHIR), 400, "Parameters");
    assert_outcome(patch(ops.clone(), "text/plain"), 415, "JSON Patch");
    assert_outcome(patch(json!({"op": "nope"}), "application/json-patch+json"), 400, "JSON Patch document is not valid");
    assert_outcome(patch(json!([{"op": "test", "path": "/active", "value": false}]), "application/json-patch+json"), 422, "could not be applied");
    assert_outcome(patch(json!([{"op": "replace", "path": "/id", "value": "p2"}]), "application/json-patch+json"), 422, "must not change");
    assert_outcome(patch(json!([{"op": "replace", "path": "/gender", "value": 7}]), "application/json-patch+json"), 400, "/gender");
    let resp = c.patch(node.url("/Patient/p1")).header("content-type", "application/json-patch+json").header("if-match", "W/\"1\"").body(ops.to_string()).send().unwrap();
    assert_outcome(resp, 412, "current version is 2");
    let resp = c.patch(node.url("/Patient/zz")).header("content-type", "application/json-patch+json").body(ops.to_string()).send().unwrap();
    assert_outcome(resp, 404, "does not exist");
}

#[test]
fn capability_statement_claims_what_is_served() {
    let node = TestNode::start();
    let cs = json(client().get(node.url("/metadata")).send().unwrap());
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    assert_eq!(resources.len(), 146);
    let patient = resources.iter().find(|r| r["type"] == "Patient").unwrap();
    let codes: Vec<&str> = patient["interaction"].as_array().unwrap().iter().map(|i| i["code"].as_str().unwrap()).collect();
    for code in ["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create"] {
        assert!(codes.contains(&code), "{code} missing from {codes:?}");
    }
    assert!(codes.contains(&"search-type"));
    let params = patient["searchParam"].as_array().unwrap();
    let family = params.iter().find(|p| p["name"] == "family").expect("family is claimed");
    assert_eq!(family["definition"], "http://hl7.org/fhir/SearchParameter/individual-family");
    assert!(params.iter().any(|p| p["name"] == "_lastUpdated"));
    let includes = patient["searchInclude"].as_array().unwrap();
    assert!(includes.iter().any(|i| i == "Patient:general-practitioner"), "{includes:?}");
    assert!(patient["searchRevInclude"].as_array().unwrap().iter().any(|i| i == "Observation:subject"));
    assert_eq!(cs["rest"][0]["interaction"], json!([{"code": "history-system"}, {"code": "search-system"}, {"code": "transaction"}, {"code": "batch"}]));
}

#[test]
fn stu3_node_serves_stu3() {
    let node = TestNode::start_with(FhirVersion::Stu3, |_| {});
    let c = client();
    let cs = json(c.get(node.url("/metadata")).send().unwrap());
    assert_eq!(cs["fhirVersion"], "3.0.1");
    assert_eq!(cs["acceptUnknown"], "no");
    let resp = post(&c, &node.url("/ProcessRequest"), &json!({"resourceType": "ProcessRequest", "action": "poll"}));
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_outcome(post(&c, &node.url("/ServiceRequest"), &json!({"resourceType": "ServiceRequest"})), 404, "STU3");
    assert_outcome(post(&c, &node.url("/Patient"), &json!({"resourceType": "Patient", "colour": "x"})), 400, "unknown element 'colour'");
    put(&c, &node.url("/Patient/s"), &json!({"resourceType": "Patient", "id": "s"}));
    c.delete(node.url("/Patient/s")).send().unwrap();
    let oo = assert_outcome(c.get(node.url("/Patient/s")).send().unwrap(), 410, "deleted");
    assert_eq!(oo["issue"][0]["code"], "not-found", "STU3 has no 'deleted' issue type");
}

#[test]
fn data_survives_restart() {
    let mut node = TestNode::start();
    let c = client();
    for i in 0..20 {
        put(&c, &node.url(&format!("/Patient/r{i}")), &json!({"resourceType": "Patient", "id": format!("r{i}"), "name": [{"family": format!("Restart{i}")}]}));
    }
    put(&c, &node.url("/Patient/r0"), &json!({"resourceType": "Patient", "id": "r0", "active": true}));
    // What a client saw before: every body, r0's history, a search over the index.
    let seen = |c: &reqwest::blocking::Client, node: &TestNode| {
        let mut bodies: Vec<Value> = (0..20).map(|i| json(c.get(node.url(&format!("/Patient/r{i}"))).send().unwrap())).collect();
        bodies.push(json(c.get(node.url("/Patient/r0/_history/1")).send().unwrap()));
        let history = json(c.get(node.url("/Patient/r0/_history")).send().unwrap());
        bodies.push(json!(history["entry"].as_array().unwrap().iter().map(|e| e["resource"].clone()).collect::<Vec<_>>()));
        let found = json(c.get(node.url("/Patient?family=Restart7")).send().unwrap());
        bodies.push(json!(found["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].clone()).collect::<Vec<_>>()));
        let active = json(c.get(node.url("/Patient?active=true")).send().unwrap());
        bodies.push(json!(active["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].clone()).collect::<Vec<_>>()));
        bodies
    };
    let before = seen(&c, &node);
    assert_eq!(before[20]["name"][0]["family"], "Restart0", "version 1 of r0");
    assert_eq!(before[21].as_array().unwrap().len(), 2, "r0 has two versions");
    assert_eq!(before[22], json!(["r7"]));
    assert_eq!(before[23], json!(["r0"]));
    node.restart();
    let c = client();
    let after = seen(&c, &node);
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        assert_eq!(a, b, "answer {i} differs after the restart");
    }
    let resp = put(&c, &node.url("/Patient/r0"), &json!({"resourceType": "Patient", "id": "r0"}));
    assert_eq!(header(&resp, "etag"), "W/\"3\"", "versions continue after restart");
    let status = json(c.get(node.url("/_cluster/status")).send().unwrap());
    assert_eq!(status["role"], "leader");
    assert!(status["applied_index"].as_u64().unwrap() >= 22);
}

#[test]
fn concurrent_writes_to_one_resource_get_distinct_versions() {
    let node = TestNode::start();
    let url = node.url("/Patient/hot");
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let url = url.clone();
            std::thread::spawn(move || {
                let c = client();
                (0..10)
                    .map(|i| {
                        let body = json!({"resourceType": "Patient", "id": "hot", "name": [{"text": format!("{t}-{i}")}]});
                        let resp = put(&c, &url, &body);
                        assert!(resp.status().is_success());
                        header(&resp, "etag")
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut etags: Vec<String> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    etags.sort();
    etags.dedup();
    assert_eq!(etags.len(), 80, "every acknowledged update has its own version");
    let hist = json(client().get(format!("{url}/_history?_count=100")).send().unwrap());
    assert_eq!(hist["entry"].as_array().unwrap().len(), 80);
}

#[test]
fn linearizable_reads_on_one_node() {
    let node = TestNode::start_with(FhirVersion::R4, |c| c.cluster.read_consistency = kiln::config::ReadConsistency::Linearizable);
    let c = client();
    assert_eq!(put(&c, &node.url("/Patient/lin"), &json!({"resourceType": "Patient", "id": "lin"})).status(), StatusCode::CREATED);
    // Each read right after an acknowledged update sees that update, whatever it asks for.
    let mut version = 1;
    for round in 0..5 {
        for consistency in [None, Some("local"), Some("linearizable")] {
            version += 1;
            let name = format!("{round}-{consistency:?}");
            put(&c, &node.url("/Patient/lin"), &json!({"resourceType": "Patient", "id": "lin", "name": [{"text": name}]}));
            let mut req = c.get(node.url("/Patient/lin"));
            if let Some(v) = consistency {
                req = req.header("Kiln-Consistency", v);
            }
            let resp = req.send().unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{consistency:?}");
            let body = json(resp);
            assert_eq!(body["meta"]["versionId"], version.to_string(), "{consistency:?}: {body}");
            assert_eq!(body["name"][0]["text"], name.as_str());
        }
    }
    let resp = c.get(node.url("/Patient/lin/_history")).header("Kiln-Consistency", "eventual").send().unwrap();
    assert_outcome(resp, 400, "Kiln-Consistency");
}
