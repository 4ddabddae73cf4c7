//! Operations and patch formats over HTTP: FHIRPath Patch (instance, conditional, in a
//! transaction), `If-Match: *`, `$validate`, the `$meta` family, `Patient/$everything` (paging
//! under writes, `_type`, `_since`, referenced resources) and their rights under SMART scopes,
//! and the CapabilityStatement entries.

use std::collections::BTreeSet;

use kiln_tests::{client, json, TestNode};
use reqwest::blocking::Client;
use serde_json::{json, Value};

const FHIR: &str = "application/fhir+json";

fn send(c: &Client, method: &str, url: &str, ct: &str, body: &Value, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut r = c.request(method.parse().unwrap(), url).header("content-type", ct).body(body.to_string());
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let resp = r.send().unwrap();
    let status = resp.status().as_u16();
    (status, serde_json::from_str(&resp.text().unwrap()).unwrap_or(Value::Null))
}

fn get(c: &Client, url: &str) -> (u16, Value) {
    let resp = c.get(url).send().unwrap();
    let status = resp.status().as_u16();
    (status, serde_json::from_str(&resp.text().unwrap()).unwrap_or(Value::Null))
}

fn op(ty: &str, path: &str, extra: Vec<Value>) -> Value {
    let mut parts = vec![json!({"name": "type", "valueCode": ty}), json!({"name": "path", "valueString": path})];
    parts.extend(extra);
    json!({"name": "operation", "part": parts})
}

fn params(ops: Vec<Value>) -> Value {
    json!({"resourceType": "Parameters", "parameter": ops})
}

#[test]
fn fhirpath_patch_instance_conditional_and_in_a_transaction() {
    let node = TestNode::start();
    let c = client();
    let p = json!({"resourceType": "Patient", "id": "fp", "identifier": [{"system": "urn:mrn", "value": "fp1"}], "name": [{"family": "Doe", "given": ["Jo"]}], "birthDate": "1970-01-01"});
    assert_eq!(send(&c, "PUT", &node.url("/Patient/fp"), FHIR, &p, &[]).0, 201);
    let patch = params(vec![
        op("add", "Patient.name[0]", vec![json!({"name": "name", "valueString": "given"}), json!({"name": "value", "valueString": "Al"})]),
        op("replace", "Patient.birthDate", vec![json!({"name": "value", "valueDate": "1980-02-02"})]),
        op("add", "Patient", vec![json!({"name": "name", "valueString": "telecom"}), json!({"name": "value", "valueContactPoint": {"system": "phone", "value": "555"}})]),
    ]);
    let (s, body) = send(&c, "PATCH", &node.url("/Patient/fp"), FHIR, &patch, &[("prefer", "return=representation")]);
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["name"][0]["given"], json!(["Jo", "Al"]));
    assert_eq!(body["birthDate"], "1980-02-02");
    assert_eq!(body["meta"]["versionId"], "2");
    // Searchable at once, like any write.
    let (_, found) = get(&c, &node.url("/Patient?telecom=555&_summary=count"));
    assert_eq!(found["total"], 1);
    // If-Match pins the version: a stale one is refused.
    let del = params(vec![op("delete", "Patient.telecom", vec![])]);
    assert_eq!(send(&c, "PATCH", &node.url("/Patient/fp"), FHIR, &del, &[("if-match", "W/\"1\"")]).0, 412);
    // Conditional FHIRPath Patch.
    let (s, _) = send(&c, "PATCH", &node.url("/Patient?identifier=urn:mrn|fp1"), FHIR, &del, &[]);
    assert_eq!(s, 200);
    let (_, now) = get(&c, &node.url("/Patient/fp"));
    assert!(now.get("telecom").is_none(), "{now}");
    // Inside a transaction, next to a JSON Patch entry (on another patient: a transaction writes
    // each resource once).
    let p2 = json!({"resourceType": "Patient", "id": "fp2", "identifier": [{"system": "urn:mrn", "value": "fp2"}], "birthDate": "1971-01-01"});
    assert_eq!(send(&c, "PUT", &node.url("/Patient/fp2"), FHIR, &p2, &[]).0, 201);
    let json_patch = base64_json(&json!([{"op": "replace", "path": "/birthDate", "value": "1990-03-03"}]));
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": params(vec![op("add", "Patient", vec![json!({"name": "name", "valueString": "gender"}), json!({"name": "value", "valueCode": "female"})])]),
         "request": {"method": "PATCH", "url": "Patient/fp"}},
        {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": json_patch},
         "request": {"method": "PATCH", "url": "Patient?identifier=urn:mrn|fp2"}}
    ]});
    let (s, out) = send(&c, "POST", &node.url("/"), FHIR, &tx, &[]);
    assert_eq!(s, 200, "{out}");
    let (_, now) = get(&c, &node.url("/Patient/fp"));
    assert_eq!(now["gender"], "female", "{now}");
    assert_eq!(get(&c, &node.url("/Patient/fp2")).1["birthDate"], "1990-03-03");
    // Refusals: a malformed patch (400), one that does not apply (422), one whose result is
    // not a valid Patient (400, nothing written).
    let (s, o) = send(&c, "PATCH", &node.url("/Patient/fp"), FHIR, &params(vec![op("explode", "Patient", vec![])]), &[]);
    assert_eq!(s, 400, "{o}");
    let (s, o) = send(&c, "PATCH", &node.url("/Patient/fp"), FHIR, &params(vec![op("replace", "Patient.name.given", vec![json!({"name": "value", "valueString": "x"})])]), &[]);
    assert_eq!(s, 422, "{o}");
    assert!(o["issue"][0]["diagnostics"].as_str().unwrap().contains("selects 2 elements"), "{o}");
    let (s, o) = send(&c, "PATCH", &node.url("/Patient/fp"), FHIR, &params(vec![op("replace", "Patient.gender", vec![json!({"name": "value", "valueQuantity": {"value": 1}})])]), &[]);
    assert_eq!(s, 400, "{o}");
    let (_, after) = get(&c, &node.url("/Patient/fp"));
    assert_eq!(after["meta"]["versionId"], now["meta"]["versionId"], "refused patches write nothing");
    assert_eq!(send(&c, "PATCH", &node.url("/Patient/fp"), "text/plain", &json!({}), &[]).0, 415);
}

fn base64_json(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(v.to_string())
}

#[test]
fn if_match_star_needs_an_existing_resource() {
    let node = TestNode::start();
    let c = client();
    let body = |id: &str| json!({"resourceType": "Patient", "id": id, "active": true});
    let star = [("if-match", "*")];
    // Update: * does not create.
    assert_eq!(send(&c, "PUT", &node.url("/Patient/none"), FHIR, &body("none"), &star).0, 412);
    assert_eq!(get(&c, &node.url("/Patient/none")).0, 404);
    assert_eq!(send(&c, "PUT", &node.url("/Patient/s1"), FHIR, &body("s1"), &[]).0, 201);
    assert_eq!(send(&c, "PUT", &node.url("/Patient/s1"), FHIR, &body("s1"), &star).0, 200, "any version matches *");
    // Patch and delete.
    let p = params(vec![op("replace", "Patient.active", vec![json!({"name": "value", "valueBoolean": false})])]);
    assert_eq!(send(&c, "PATCH", &node.url("/Patient/none"), FHIR, &p, &star).0, 412);
    assert_eq!(send(&c, "PATCH", &node.url("/Patient/s1"), FHIR, &p, &star).0, 200);
    assert_eq!(c.delete(node.url("/Patient/none")).header("if-match", "*").send().unwrap().status(), 412);
    assert!(c.delete(node.url("/Patient/s1")).header("if-match", "*").send().unwrap().status().is_success());
    assert_eq!(c.delete(node.url("/Patient/s1")).header("if-match", "*").send().unwrap().status(), 412, "a deleted resource does not match *");
    // Elsewhere * is refused with a reason.
    let (s, o) = send(&c, "PUT", &node.url("/Patient?identifier=x"), FHIR, &body("x"), &star);
    assert_eq!(s, 400, "{o}");
}

#[test]
fn validate_checks_without_writing() {
    let node = TestNode::start();
    let c = client();
    let ok = json!({"resourceType": "Patient", "name": [{"family": "Valid"}]});
    let (s, o) = send(&c, "POST", &node.url("/Patient/$validate"), FHIR, &ok, &[]);
    assert_eq!(s, 200);
    assert_eq!(o["resourceType"], "OperationOutcome");
    assert_eq!(o["issue"][0]["severity"], "information", "{o}");
    let bad = json!({"resourceType": "Patient", "gender": "sometimes", "colour": "blue"});
    let (s, o) = send(&c, "POST", &node.url("/Patient/$validate"), FHIR, &bad, &[]);
    assert_eq!(s, 200);
    assert_eq!(o["issue"][0]["severity"], "error", "{o}");
    let located: BTreeSet<&str> = o["issue"].as_array().unwrap().iter().filter_map(|i| i["expression"][0].as_str()).collect();
    assert_eq!(located, BTreeSet::from(["Patient.gender", "Patient.colour"]), "each problem located: {o}");
    let said = o["issue"].to_string();
    assert!(said.contains("sometimes") && said.contains("unknown element 'colour'"), "each problem said: {o}");
    // Parameters form: mode=update checks the id against the URL.
    let wrapped = json!({"resourceType": "Parameters", "parameter": [
        {"name": "mode", "valueCode": "update"},
        {"name": "resource", "resource": {"resourceType": "Patient", "id": "other"}}]});
    let (_, o) = send(&c, "POST", &node.url("/Patient/v1/$validate"), FHIR, &wrapped, &[]);
    assert_eq!(o["issue"][0]["severity"], "error", "{o}");
    let matching = json!({"resourceType": "Parameters", "parameter": [
        {"name": "mode", "valueCode": "update"},
        {"name": "profile", "valueUri": "http://example.org/StructureDefinition/my-patient"},
        {"name": "resource", "resource": {"resourceType": "Patient", "id": "v1"}}]});
    let (_, o) = send(&c, "POST", &node.url("/Patient/v1/$validate"), FHIR, &matching, &[]);
    let severities: Vec<&str> = o["issue"].as_array().unwrap().iter().map(|i| i["severity"].as_str().unwrap()).collect();
    assert_eq!(severities, ["warning", "information"], "an unchecked profile is said so: {o}");
    // mode=delete: the resource must exist.
    let del = json!({"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "delete"}]});
    let (_, o) = send(&c, "POST", &node.url("/Patient/missing/$validate"), FHIR, &del, &[]);
    assert_eq!(o["issue"][0]["code"], "not-found", "{o}");
    let (s, _) = send(&c, "POST", &node.url("/Patient/$validate?mode=sideways"), FHIR, &ok, &[]);
    assert_eq!(s, 400);
    let (s, _) = send(&c, "POST", &node.url("/Observation/$validate"), FHIR, &ok, &[]);
    assert_eq!(s, 200, "a wrong type is an error issue");
    let (_, all) = get(&c, &node.url("/Patient?_summary=count"));
    assert_eq!(all["total"], 0, "$validate writes nothing");
}

fn meta_of(v: &Value) -> Value {
    v["parameter"][0]["valueMeta"].clone()
}

#[test]
fn meta_operations() {
    let node = TestNode::start();
    let c = client();
    let p = json!({"resourceType": "Patient", "id": "m1", "meta": {"tag": [{"system": "urn:t", "code": "a"}]}});
    send(&c, "PUT", &node.url("/Patient/m1"), FHIR, &p, &[]);
    let o = json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
        "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}], "profile": ["http://example.org/p"]}});
    send(&c, "PUT", &node.url("/Observation/o1"), FHIR, &o, &[]);
    let (s, m) = get(&c, &node.url("/Patient/m1/$meta"));
    assert_eq!(s, 200);
    assert_eq!(meta_of(&m)["tag"], json!([{"system": "urn:t", "code": "a"}]));
    let add = json!({"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {"tag": [{"system": "urn:t", "code": "b"}, {"system": "urn:t", "code": "a"}], "profile": ["http://example.org/pp"]}}]});
    let (s, m) = send(&c, "POST", &node.url("/Patient/m1/$meta-add"), FHIR, &add, &[]);
    assert_eq!(s, 200, "{m}");
    assert_eq!(meta_of(&m)["tag"], json!([{"system": "urn:t", "code": "a"}, {"system": "urn:t", "code": "b"}]));
    assert_eq!(meta_of(&m)["versionId"], "2", "the change is a new version");
    let (_, found) = get(&c, &node.url("/Patient?_tag=urn:t|b&_summary=count"));
    assert_eq!(found["total"], 1, "and indexed");
    let (s, m) = send(&c, "POST", &node.url("/Patient/m1/$meta-add"), FHIR, &add, &[]);
    assert_eq!((s, meta_of(&m)["versionId"].as_str()), (200, Some("2")), "nothing new: no new version");
    let del = json!({"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {"tag": [{"system": "urn:t", "code": "a"}]}}]});
    let (_, m) = send(&c, "POST", &node.url("/Patient/m1/$meta-delete"), FHIR, &del, &[]);
    assert_eq!(meta_of(&m)["tag"], json!([{"system": "urn:t", "code": "b"}]));
    // The first version keeps its labels.
    let (_, v1) = get(&c, &node.url("/Patient/m1/_history/1/$meta"));
    assert_eq!(meta_of(&v1)["tag"], json!([{"system": "urn:t", "code": "a"}]));
    assert_eq!(send(&c, "POST", &node.url("/Patient/m1/_history/1/$meta-add"), FHIR, &add, &[]).0, 422);
    // Type and system level: the labels in use.
    let (_, t) = get(&c, &node.url("/Patient/$meta"));
    assert_eq!(meta_of(&t)["tag"], json!([{"system": "urn:t", "code": "b"}]), "a is no longer in use: {t}");
    let (_, sys) = get(&c, &node.url("/$meta"));
    let sm = meta_of(&sys);
    assert_eq!(sm["profile"], json!(["http://example.org/p", "http://example.org/pp"]), "{sys}");
    assert_eq!(sm["security"][0]["code"], "R");
    assert_eq!(send(&c, "POST", &node.url("/Patient/m1/$meta-add"), FHIR, &json!({"resourceType": "Parameters"}), &[]).0, 400);
    assert_eq!(send(&c, "POST", &node.url("/Patient/nobody/$meta-add"), FHIR, &add, &[]).0, 404);
}

/// Every `Type/id` of an `$everything` result, following `next` links.
fn everything_ids(c: &Client, first: &str, between_pages: impl Fn(usize)) -> (Vec<String>, Vec<String>, usize) {
    let (mut matches, mut includes) = (Vec::new(), Vec::new());
    let mut url = Some(first.to_string());
    let mut pages = 0;
    while let Some(u) = url {
        let (s, b) = get(c, &u);
        assert_eq!(s, 200, "{b}");
        for e in b["entry"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let id = format!("{}/{}", e["resource"]["resourceType"].as_str().unwrap(), e["resource"]["id"].as_str().unwrap_or(""));
            match e["search"]["mode"].as_str() {
                Some("match") => matches.push(id),
                Some("include") => includes.push(id),
                _ => {}
            }
        }
        url = b["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").and_then(|l| l["url"].as_str()).map(String::from);
        pages += 1;
        between_pages(pages);
        assert!(pages < 100);
    }
    (matches, includes, pages)
}

#[test]
fn patient_everything_pages_stably_with_references() {
    let node = TestNode::start();
    let c = client();
    let put = |path: &str, body: Value| assert!(matches!(send(&c, "PUT", &node.url(path), FHIR, &body, &[]).0, 200 | 201), "{path}");
    put("/Organization/org1", json!({"resourceType": "Organization", "id": "org1", "name": "Clinic"}));
    put("/Practitioner/dr1", json!({"resourceType": "Practitioner", "id": "dr1"}));
    put("/Medication/med1", json!({"resourceType": "Medication", "id": "med1"}));
    put("/Patient/e1", json!({"resourceType": "Patient", "id": "e1", "managingOrganization": {"reference": "Organization/org1"}}));
    put("/Patient/e2", json!({"resourceType": "Patient", "id": "e2"}));
    let mut expected: BTreeSet<String> = BTreeSet::from(["Patient/e1".to_string()]);
    for i in 0..23 {
        put(&format!("/Observation/ob{i}"), json!({"resourceType": "Observation", "id": format!("ob{i}"), "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/e1"}, "performer": [{"reference": "Practitioner/dr1"}]}));
        expected.insert(format!("Observation/ob{i}"));
    }
    put("/MedicationRequest/mr1", json!({"resourceType": "MedicationRequest", "id": "mr1", "status": "active", "intent": "order", "subject": {"reference": "Patient/e1"}, "medicationReference": {"reference": "Medication/med1"}}));
    expected.insert("MedicationRequest/mr1".into());
    put("/Encounter/en1", json!({"resourceType": "Encounter", "id": "en1", "status": "finished", "class": {"code": "AMB"}, "subject": {"reference": "Patient/e1"}}));
    expected.insert("Encounter/en1".into());
    put("/Observation/other", json!({"resourceType": "Observation", "id": "other", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/e2"}}));
    // Pages of 5; between pages, another patient's data and an unrelated resource are written.
    let (matches, includes, pages) = everything_ids(&c, &node.url("/Patient/e1/$everything?_count=5"), |n| {
        put(&format!("/Observation/later{n}"), json!({"resourceType": "Observation", "id": format!("later{n}"), "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/e2"}}));
    });
    assert!(pages >= 6, "{pages} pages");
    let got: BTreeSet<String> = matches.iter().cloned().collect();
    assert_eq!(got.len(), matches.len(), "no resource on two pages");
    assert_eq!(got, expected);
    for r in ["Organization/org1", "Practitioner/dr1", "Medication/med1"] {
        assert!(includes.contains(&r.to_string()), "{r} referenced and included: {includes:?}");
    }
    // _type narrows; _since keeps recent changes only.
    let (m, _, _) = everything_ids(&c, &node.url("/Patient/e1/$everything?_type=Encounter,Patient"), |_| {});
    assert_eq!(m.into_iter().collect::<BTreeSet<_>>(), BTreeSet::from(["Encounter/en1".to_string(), "Patient/e1".to_string()]));
    std::thread::sleep(std::time::Duration::from_millis(20));
    let since = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap();
    put("/Observation/ob3", json!({"resourceType": "Observation", "id": "ob3", "status": "amended", "code": {"text": "x"}, "subject": {"reference": "Patient/e1"}}));
    let (m, _, _) = everything_ids(&c, &node.url(&format!("/Patient/e1/$everything?_since={}", since.replace('+', "%2B"))), |_| {});
    assert_eq!(m, ["Observation/ob3"]);
    // Type level: every patient's compartment.
    let (m, _, _) = everything_ids(&c, &node.url("/Patient/$everything?_count=50"), |_| {});
    assert!(m.contains(&"Observation/other".to_string()) && m.contains(&"Patient/e2".to_string()) && m.contains(&"Observation/ob0".to_string()));
    assert!(!m.contains(&"Organization/org1".to_string()));
    // Refusals.
    assert_eq!(get(&c, &node.url("/Patient/nobody/$everything")).0, 404);
    assert_eq!(get(&c, &node.url("/Patient/e1/$everything?start=2020")).0, 400);
    assert_eq!(get(&c, &node.url("/Patient/e1/$everything?_type=Organization")).0, 400);
}

#[test]
fn capability_statement_lists_the_operations() {
    let node = TestNode::start();
    let (_, cs) = get(&client(), &node.url("/metadata"));
    let rest = &cs["rest"][0];
    let patient = rest["resource"].as_array().unwrap().iter().find(|r| r["type"] == "Patient").unwrap();
    let names: BTreeSet<&str> = patient["operation"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    for n in ["everything", "validate", "meta", "meta-add", "meta-delete", "export"] {
        assert!(names.contains(n), "{n} in {names:?}");
    }
    assert!(cs["patchFormat"].as_array().unwrap().contains(&json!("application/fhir+json")));
    let system: BTreeSet<&str> = rest["operation"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert!(system.contains("meta") && system.contains("export"));
}

#[test]
fn operations_respect_smart_scopes() {
    let keys = tempfile::tempdir().unwrap();
    let node = crate::auth::secured_node(keys.path());
    let c = client();
    let admin = crate::auth::token(json!({"cognito:groups": ["practitioner"]}));
    let call = |method: &str, path: &str, tok: &str, body: Option<Value>| -> u16 {
        let mut r = c.request(method.parse().unwrap(), node.url(path)).bearer_auth(tok);
        if let Some(b) = body {
            r = r.header("content-type", FHIR).body(b.to_string());
        }
        r.send().unwrap().status().as_u16()
    };
    for (path, body) in [
        ("/Patient/a", json!({"resourceType": "Patient", "id": "a"})),
        ("/Patient/b", json!({"resourceType": "Patient", "id": "b"})),
        ("/Observation/oa", json!({"resourceType": "Observation", "id": "oa", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/a"}})),
        ("/Observation/ob", json!({"resourceType": "Observation", "id": "ob", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/b"}})),
    ] {
        assert!(matches!(call("PUT", path, &admin, Some(body)), 200 | 201));
    }
    let pa = crate::auth::token(json!({"scope": "patient/*.read", "patient": "a"}));
    assert_eq!(call("GET", "/Patient/a/$everything", "", None), 401, "no token");
    let resp = c.get(node.url("/Patient/a/$everything")).bearer_auth(&pa).send().unwrap();
    assert_eq!(resp.status(), 200);
    let b = json(resp);
    let ids: BTreeSet<String> = b["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, BTreeSet::from(["a".to_string(), "oa".to_string()]));
    assert!(matches!(call("GET", "/Patient/b/$everything", &pa, None), 403 | 404), "another patient's record");
    assert_eq!(call("GET", "/Observation/oa/$meta", &pa, None), 200);
    assert!(matches!(call("GET", "/Observation/ob/$meta", &pa, None), 403 | 404));
    assert_eq!(call("GET", "/Observation/$meta", &pa, None), 403, "type-level labels describe every patient");
    let add = json!({"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": {"tag": [{"code": "x"}]}}]});
    assert_eq!(call("POST", "/Observation/oa/$meta-add", &pa, Some(add)), 403, "read scopes do not change labels");
    let valid = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}});
    assert_eq!(call("POST", "/Observation/$validate", &pa, Some(valid)), 200);
}
