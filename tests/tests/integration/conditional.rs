//! Conditional create (`If-None-Exist`), update (`PUT /{type}?search`) and delete
//! (`DELETE /{type}?search`), decided at apply so concurrent requests cannot both create.

use kiln::fhir::FhirVersion;
use kiln_tests::{client, etag_version, json, TestNode};
use serde_json::{json, Value};

const FHIR: &str = "application/fhir+json";

fn patient(ident: &str, family: &str) -> Value {
    json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": ident}], "name": [{"family": family}]})
}

fn total(node: &TestNode, qs: &str) -> u64 {
    json(client().get(node.url(&format!("/Patient?{qs}&_summary=count"))).send().unwrap())["total"].as_u64().unwrap()
}

#[test]
fn conditional_create_is_atomic_under_concurrency() {
    let node = TestNode::start();
    let c = client();
    let post = |ident: &str| {
        c.post(node.url("/Patient")).header("content-type", FHIR).header("if-none-exist", format!("identifier=urn:mrn|{ident}")).body(patient(ident, "A").to_string()).send().unwrap()
    };
    let first = post("m1");
    assert_eq!(first.status(), 201);
    let loc = first.headers()["location"].to_str().unwrap().to_string();
    let again = post("m1");
    assert_eq!(again.status(), 200, "an existing match is returned, nothing created");
    assert_eq!(again.headers()["location"].to_str().unwrap(), loc);
    assert_eq!(total(&node, "identifier=urn:mrn|m1"), 1);
    // Eight clients race to create the same identifier: exactly one resource results.
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| assert!(matches!(post("race").status().as_u16(), 200 | 201)));
        }
    });
    assert_eq!(total(&node, "identifier=urn:mrn|race"), 1);
    // Two matches → 412; a bad condition → 400.
    c.put(node.url("/Patient/d1")).header("content-type", FHIR).body(json!({"resourceType": "Patient", "id": "d1", "name": [{"family": "Dup"}]}).to_string()).send().unwrap();
    c.put(node.url("/Patient/d2")).header("content-type", FHIR).body(json!({"resourceType": "Patient", "id": "d2", "name": [{"family": "Dup"}]}).to_string()).send().unwrap();
    let r = c.post(node.url("/Patient")).header("content-type", FHIR).header("if-none-exist", "family=dup").body(patient("x", "Dup").to_string()).send().unwrap();
    assert_eq!(r.status(), 412);
    assert!(json(r)["issue"][0]["diagnostics"].as_str().unwrap().contains("matched 2"));
    let r = c.post(node.url("/Patient")).header("content-type", FHIR).header("if-none-exist", "hair=brown").body(patient("x", "B").to_string()).send().unwrap();
    assert_eq!(r.status(), 400);
}

#[test]
fn conditional_update_and_delete() {
    let node = TestNode::start();
    let c = client();
    let put = |qs: &str, body: &Value| c.put(node.url(&format!("/Patient?{qs}"))).header("content-type", FHIR).body(body.to_string()).send().unwrap();
    // No match: created (server id).
    let r = put("identifier=urn:mrn|u1", &patient("u1", "One"));
    assert_eq!(r.status(), 201);
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    // One match: that resource is updated, whatever id the body lacks.
    let r = put("identifier=urn:mrn|u1", &patient("u1", "Two"));
    assert_eq!(r.status(), 200);
    assert_eq!(etag_version(&r), Some(2));
    let id = loc.split('/').rev().nth(2).unwrap();
    assert_eq!(json(c.get(node.url(&format!("/Patient/{id}"))).send().unwrap())["name"][0]["family"], "Two");
    // A body id other than the match's → 400; no parameters → 400.
    let mut wrong = patient("u1", "Three");
    wrong["id"] = json!("someone-else");
    assert_eq!(put("identifier=urn:mrn|u1", &wrong).status(), 400);
    assert_eq!(c.put(node.url("/Patient")).header("content-type", FHIR).body(patient("z", "Z").to_string()).send().unwrap().status(), 400);
    // Two matches → 412.
    put("identifier=urn:mrn|u2", &patient("u2", "Same"));
    put("identifier=urn:mrn|u3", &patient("u3", "Same"));
    assert_eq!(put("family=same", &patient("u4", "Same")).status(), 412);
    // Delete: one match → deleted; several → 412 by default; none → 204.
    assert_eq!(c.delete(node.url("/Patient?identifier=urn:mrn|u1")).send().unwrap().status(), 204);
    assert_eq!(c.get(node.url(&format!("/Patient/{id}"))).send().unwrap().status(), 410);
    assert_eq!(c.delete(node.url("/Patient?family=same")).send().unwrap().status(), 412);
    assert_eq!(c.delete(node.url("/Patient?identifier=urn:mrn|nobody")).send().unwrap().status(), 204);
    assert_eq!(total(&node, "family=same"), 2);

    let multi = TestNode::start_with(FhirVersion::R4, |cfg| cfg.allow_multiple_conditional_delete = true);
    for i in 0..3 {
        c.post(multi.url("/Patient")).header("content-type", FHIR).body(patient(&format!("m{i}"), "Many").to_string()).send().unwrap();
    }
    assert_eq!(c.delete(multi.url("/Patient?family=many")).send().unwrap().status(), 204);
    assert_eq!(total(&multi, "family=many"), 0);
    let cs = json(c.get(multi.url("/metadata")).send().unwrap());
    let p = cs["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "Patient").unwrap().clone();
    assert_eq!((p["conditionalCreate"].as_bool(), p["conditionalUpdate"].as_bool(), p["conditionalDelete"].as_str()), (Some(true), Some(true), Some("multiple")));
}
