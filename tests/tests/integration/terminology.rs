//! Terminology over HTTP: the token modifiers `:in`, `:not-in`, `:below`, `:above` on shipped and
//! stored definitions; `ValueSet/$expand`, `$validate-code`, `CodeSystem/$lookup`, `$subsumes`;
//! code systems Kiln does not hold (SNOMED CT); bounds; read rights; the CapabilityStatement; a
//! stored ValueSet deciding conditional creates alike on the three nodes of a cluster; STU3.

use kiln::fhir::FhirVersion;
use kiln_tests::{client, json, put, TestCluster, TestNode};
use reqwest::blocking::Client;
use serde_json::{json, Value};

const FHIR: &str = "application/fhir+json";
const ACT: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const OBS_STATUS: &str = "http://hl7.org/fhir/ValueSet/observation-status";

fn ids(b: &Value) -> Vec<String> {
    let mut v: Vec<String> = b["entry"].as_array().map(Vec::as_slice).unwrap_or_default().iter().filter(|e| e["search"]["mode"] == "match").map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect();
    v.sort();
    v
}

fn get(c: &Client, url: &str) -> (u16, Value) {
    let r = c.get(url).send().unwrap();
    (r.status().as_u16(), json(r))
}

fn search(c: &Client, url: &str) -> Vec<String> {
    let (status, b) = get(c, url);
    assert_eq!(status, 200, "{url}: {b}");
    ids(&b)
}

/// The diagnostics of an OperationOutcome answer with `status`.
fn refused(c: &Client, url: &str, status: u16) -> String {
    let (got, b) = get(c, url);
    assert_eq!((got, b["resourceType"].as_str()), (status, Some("OperationOutcome")), "{url}: {b}");
    b["issue"][0]["diagnostics"].as_str().unwrap().to_string()
}

fn param<'a>(p: &'a Value, name: &str) -> &'a Value {
    p["parameter"].as_array().and_then(|a| a.iter().find(|x| x["name"] == name)).unwrap_or_else(|| panic!("no {name} in {p}"))
}

fn encounter(id: &str, class: &str) -> Value {
    json!({"resourceType": "Encounter", "id": id, "status": "finished", "class": {"system": ACT, "code": class}})
}

fn obs(id: &str, status: &str, system: &str, code: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": status, "code": {"coding": [{"system": system, "code": code}]}})
}

/// A code system of four colors (warm: red, orange; cold: blue) and a value set of the warm ones.
fn colors() -> (Value, Value) {
    let cs = json!({"resourceType": "CodeSystem", "id": "colors", "url": "urn:example:colors", "status": "active", "content": "complete", "concept": [
        {"code": "warm", "display": "Warm", "concept": [{"code": "red", "display": "Red"}, {"code": "orange", "display": "Orange"}]},
        {"code": "cold", "display": "Cold", "concept": [{"code": "blue", "display": "Blue"}]}]});
    let vs = json!({"resourceType": "ValueSet", "id": "warm", "url": "urn:example:warm", "status": "active",
        "compose": {"include": [{"system": "urn:example:colors", "filter": [{"property": "concept", "op": "is-a", "value": "warm"}]}]}});
    (cs, vs)
}

#[test]
fn modifiers_on_shipped_and_stored_terminology() {
    let node = TestNode::start();
    let c = client();
    for e in [encounter("amb", "AMB"), encounter("emer", "EMER"), encounter("acct", "ACCTRECEIVABLE")] {
        assert_eq!(put(&c, &node.url(&format!("/Encounter/{}", e["id"].as_str().unwrap())), &e).unwrap().0, 201);
    }
    let (cs, vs) = colors();
    put(&c, &node.url("/CodeSystem/colors"), &cs).unwrap();
    put(&c, &node.url("/ValueSet/warm"), &vs).unwrap();
    let mut r = obs("r", "final", "urn:example:colors", "red");
    r["encounter"] = json!({"reference": "Encounter/amb"});
    for o in [r, obs("b", "preliminary", "urn:example:colors", "blue"), obs("x", "cancelled", "urn:other", "red")] {
        put(&c, &node.url(&format!("/Observation/{}", o["id"].as_str().unwrap())), &o).unwrap();
    }
    // :in / :not-in with a shipped value set (is-a filter on v3 ActCode).
    let enc_vs = "http://terminology.hl7.org/ValueSet/v3-ActEncounterCode";
    assert_eq!(search(&c, &node.url(&format!("/Encounter?class:in={enc_vs}"))), ["amb", "emer"]);
    assert_eq!(search(&c, &node.url(&format!("/Encounter?class:not-in={enc_vs}"))), ["acct"]);
    // A code element (no system in the resource) is in the value set of its binding.
    assert_eq!(search(&c, &node.url(&format!("/Observation?status:in={OBS_STATUS}"))), ["b", "r", "x"]);
    // :below / :above in the shipped hierarchy.
    assert_eq!(search(&c, &node.url(&format!("/Encounter?class:below={ACT}|_ActEncounterCode"))), ["amb", "emer"]);
    assert_eq!(search(&c, &node.url(&format!("/Encounter?class:above={ACT}|AMB"))), ["amb"]);
    // A stored code system and value set; the system of the coding counts.
    assert_eq!(search(&c, &node.url("/Observation?code:in=urn:example:warm")), ["r"]);
    assert_eq!(search(&c, &node.url("/Observation?code:not-in=urn:example:warm")), ["b", "x"]);
    assert_eq!(search(&c, &node.url("/Observation?code:below=urn:example:colors|cold")), ["b"]);
    assert_eq!(search(&c, &node.url("/Observation?code:in=urn:example:warm&status=final,preliminary")), ["r"]);
    // Through a chain and _has.
    assert_eq!(search(&c, &node.url(&format!("/Observation?encounter.class:in={enc_vs}"))), ["r"]);
    assert_eq!(search(&c, &node.url("/Encounter?_has:Observation:encounter:code:in=urn:example:warm")), ["amb"]);
    // Refusals: named, never an empty answer.
    assert!(refused(&c, &node.url("/Encounter?class:below=AMB"), 400).contains("system|code"));
    let sct = refused(&c, &node.url("/Condition?code:in=http://hl7.org/fhir/ValueSet/clinical-findings"), 422);
    assert!(sct.contains("http://snomed.info/sct"), "{sct}");
    assert!(refused(&c, &node.url("/Condition?code:below=http://loinc.org|1234-5"), 422).contains("http://loinc.org"));
    assert!(refused(&c, &node.url("/Observation?code:in=urn:example:nothing"), 400).contains("urn:example:nothing"));
    assert!(refused(&c, &node.url("/Patient?family:in=urn:example:warm"), 400).contains(":in"));
}

#[test]
fn operations_expand_lookup_validate_subsumes() {
    let node = TestNode::start_with(FhirVersion::R4, |cfg| cfg.limits.max_expansion = 500);
    let c = client();
    let (cs, vs) = colors();
    put(&c, &node.url("/CodeSystem/colors"), &cs).unwrap();
    put(&c, &node.url("/ValueSet/warm"), &vs).unwrap();
    // $expand: shipped by url, with filter and paging.
    let (s, all) = get(&c, &node.url(&format!("/ValueSet/$expand?url={OBS_STATUS}")));
    assert_eq!(s, 200, "{all}");
    assert_eq!(all["resourceType"], "ValueSet");
    let total = all["expansion"]["total"].as_u64().unwrap();
    assert!(total >= 8, "{all}");
    let (_, page) = get(&c, &node.url(&format!("/ValueSet/$expand?url={OBS_STATUS}&offset=1&count=2")));
    assert_eq!(page["expansion"]["total"].as_u64(), Some(total));
    assert_eq!(page["expansion"]["contains"].as_array().unwrap().len(), 2);
    assert_eq!(page["expansion"]["contains"][0], all["expansion"]["contains"][1]);
    let (_, filtered) = get(&c, &node.url(&format!("/ValueSet/$expand?url={OBS_STATUS}&filter=PRELIM")));
    assert_eq!(filtered["expansion"]["total"], 1);
    assert_eq!(filtered["expansion"]["contains"][0]["code"], "preliminary");
    // Instance level on a stored value set; POST with a Parameters body (an inline ValueSet).
    let (_, warm) = get(&c, &node.url("/ValueSet/warm/$expand"));
    let codes: Vec<&str> = warm["expansion"]["contains"].as_array().unwrap().iter().map(|e| e["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["warm", "red", "orange"]);
    assert_eq!(warm["expansion"]["contains"][1]["display"], "Red");
    let inline = json!({"resourceType": "Parameters", "parameter": [
        {"name": "valueSet", "resource": {"resourceType": "ValueSet", "status": "active", "compose": {"include": [{"system": ACT, "filter": [{"property": "concept", "op": "is-a", "value": "_ActEncounterCode"}]}]}}},
        {"name": "filter", "valueString": "ambulatory"}]});
    let r = c.post(node.url("/ValueSet/$expand")).header("content-type", FHIR).body(inline.to_string()).send().unwrap();
    assert_eq!(r.status(), 200);
    let b = json(r);
    assert_eq!(b["expansion"]["contains"][0]["code"], "AMB", "{b}");
    // Bounds: past limits.max_expansion (500 here) is a 422 naming the setting.
    let big = refused(&c, &node.url("/ValueSet/$expand?url=http://terminology.hl7.org/ValueSet/v3-ActCode"), 422);
    assert!(big.contains("limits.max_expansion"), "{big}");
    // A system Kiln does not hold.
    assert!(refused(&c, &node.url("/ValueSet/$expand?url=http://hl7.org/fhir/ValueSet/clinical-findings"), 422).contains("http://snomed.info/sct"));
    assert!(refused(&c, &node.url("/CodeSystem/$lookup?system=http://snomed.info/sct&code=404684003"), 422).contains("SNOMED"));
    // Bad input.
    refused(&c, &node.url("/ValueSet/$expand"), 400);
    refused(&c, &node.url(&format!("/ValueSet/$expand?url={OBS_STATUS}&count=-1")), 400);
    refused(&c, &node.url(&format!("/ValueSet/$expand?url={OBS_STATUS}&shoe=42")), 400);
    refused(&c, &node.url("/ValueSet/nope/$expand"), 404);
    assert_eq!(c.delete(node.url("/ValueSet/$expand")).send().unwrap().status(), 405);

    // $lookup: display, parents, designations.
    let (s, l) = get(&c, &node.url(&format!("/CodeSystem/$lookup?system={ACT}&code=AMB")));
    assert_eq!(s, 200, "{l}");
    assert_eq!(param(&l, "display")["valueString"], "ambulatory");
    assert!(l["parameter"].as_array().unwrap().iter().any(|p| p["part"][0]["valueCode"] == "parent" && p["part"][1]["valueCode"] == "_ActEncounterCode"), "{l}");
    let (_, red) = get(&c, &node.url("/CodeSystem/$lookup?system=urn:example:colors&code=red"));
    assert_eq!(param(&red, "display")["valueString"], "Red");
    refused(&c, &node.url(&format!("/CodeSystem/$lookup?system={ACT}&code=NOPE")), 404);
    refused(&c, &node.url("/CodeSystem/$lookup?code=AMB"), 400);

    // $validate-code: in, not in, wrong display; by url and by instance; POST coding.
    let v = |q: &str| get(&c, &node.url(&format!("/ValueSet/$validate-code?{q}"))).1;
    let yes = v(&format!("url={OBS_STATUS}&system=http://hl7.org/fhir/observation-status&code=final"));
    assert_eq!((param(&yes, "result")["valueBoolean"].as_bool(), param(&yes, "display")["valueString"].as_str()), (Some(true), Some("Final")));
    let no = v("url=urn:example:warm&system=urn:example:colors&code=blue");
    assert_eq!(param(&no, "result")["valueBoolean"], false);
    assert!(param(&no, "message")["valueString"].as_str().unwrap().contains("blue"));
    let display = v("url=urn:example:warm&system=urn:example:colors&code=red&display=Crimson");
    assert_eq!(param(&display, "result")["valueBoolean"], false);
    let (_, inst) = get(&c, &node.url("/ValueSet/warm/$validate-code?system=urn:example:colors&code=orange"));
    assert_eq!(param(&inst, "result")["valueBoolean"], true);
    let body = json!({"resourceType": "Parameters", "parameter": [{"name": "url", "valueUri": "urn:example:warm"}, {"name": "coding", "valueCoding": {"system": "urn:example:colors", "code": "red"}}]});
    let r = c.post(node.url("/ValueSet/$validate-code")).header("content-type", FHIR).body(body.to_string()).send().unwrap();
    assert_eq!(param(&json(r), "result")["valueBoolean"], true);

    // $subsumes: shipped and stored, type and instance level.
    let sub = |q: &str| param(&get(&c, &node.url(q)).1, "outcome")["valueCode"].as_str().unwrap().to_string();
    assert_eq!(sub(&format!("/CodeSystem/$subsumes?system={ACT}&codeA=_ActEncounterCode&codeB=AMB")), "subsumes");
    assert_eq!(sub(&format!("/CodeSystem/$subsumes?system={ACT}&codeA=AMB&codeB=_ActEncounterCode")), "subsumed-by");
    assert_eq!(sub(&format!("/CodeSystem/$subsumes?system={ACT}&codeA=AMB&codeB=AMB")), "equivalent");
    assert_eq!(sub("/CodeSystem/colors/$subsumes?codeA=red&codeB=blue"), "not-subsumed");
    assert_eq!(sub("/CodeSystem/$subsumes?system=urn:example:colors&codeA=warm&codeB=orange"), "subsumes");

    // The CapabilityStatement lists the operations and the modifiers.
    let (_, cap) = get(&c, &node.url("/metadata"));
    let ops = |t: &str| -> Vec<String> {
        let r = cap["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == t).unwrap();
        r["operation"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap().to_string()).collect()
    };
    // After the operations every type has ($validate, the $meta family).
    assert_eq!(ops("ValueSet")[4..], ["expand", "validate-code"]);
    assert_eq!(ops("CodeSystem")[4..], ["lookup", "subsumes"]);
    assert!(cap["rest"][0]["documentation"].as_str().unwrap().contains(":in, :not-in, :below, :above (token"));
}

#[test]
fn operations_need_read_rights_on_the_terminology_types() {
    let dir = tempfile::tempdir().unwrap();
    let node = super::auth::secured_node(dir.path());
    let c = client();
    let call = |scope: &str, path: &str| {
        let t = super::auth::token(json!({"scope": scope}));
        c.get(node.url(path)).bearer_auth(t).send().unwrap().status().as_u16()
    };
    let expand = format!("/ValueSet/$expand?url={OBS_STATUS}");
    let lookup = format!("/CodeSystem/$lookup?system={ACT}&code=AMB");
    assert_eq!(call("user/Observation.read", &expand), 403);
    assert_eq!(call("user/ValueSet.read", &expand), 403, "an expansion reads CodeSystems too");
    assert_eq!(call("user/ValueSet.read user/CodeSystem.read", &expand), 200);
    assert_eq!(call("user/ValueSet.read", &lookup), 403);
    assert_eq!(call("user/CodeSystem.read", &lookup), 200);
    assert_eq!(c.get(node.url(&expand)).send().unwrap().status(), 401);
    // A search with :in reads ValueSets and CodeSystems: the caller must be allowed to search them.
    assert_eq!(call("user/Observation.read", &format!("/Observation?status:in={OBS_STATUS}")), 403);
    assert_eq!(call("user/Observation.read user/ValueSet.read user/CodeSystem.read", &format!("/Observation?status:in={OBS_STATUS}")), 200);
}

#[test]
fn stored_terminology_decides_alike_on_every_node() {
    let cluster = TestCluster::start(3);
    let c = client();
    let leader = cluster.leader();
    let (cs, vs) = colors();
    assert_eq!(put(&c, &cluster.url(leader, "/CodeSystem/colors"), &cs).unwrap().0, 201);
    assert_eq!(put(&c, &cluster.url(leader, "/ValueSet/warm"), &vs).unwrap().0, 201);
    put(&c, &cluster.url(leader, "/Observation/r"), &obs("r", "final", "urn:example:colors", "red")).unwrap();
    put(&c, &cluster.url(leader, "/Observation/b"), &obs("b", "final", "urn:example:colors", "blue")).unwrap();
    // A conditional create whose condition is :in the stored value set: one match, nothing created.
    let create = |id_hint: &str| {
        let body = obs(id_hint, "final", "urn:example:colors", "orange");
        let r = c.post(cluster.url(leader, "/Observation")).header("content-type", FHIR).header("if-none-exist", "code:in=urn:example:warm").body(body.to_string()).send().unwrap();
        r.status().as_u16()
    };
    assert_eq!(create("o1"), 200, "Observation/r is warm");
    // The value set changes (replicated): now only cold colors; the same condition creates.
    let mut cold = vs.clone();
    cold["compose"]["include"][0]["filter"][0]["value"] = json!("cold");
    assert_eq!(put(&c, &cluster.url(leader, "/ValueSet/warm"), &cold).unwrap().0, 200);
    assert_eq!(create("o2"), 200, "Observation/b is cold");
    let mut none = vs.clone();
    none["compose"]["include"] = json!([{"system": "urn:example:colors", "concept": [{"code": "green"}]}]);
    put(&c, &cluster.url(leader, "/ValueSet/warm"), &none).unwrap();
    assert_eq!(create("o3"), 201, "no Observation is green");
    // A condition whose value set needs a system no node holds: refused, nothing written.
    let r = c.post(cluster.url(leader, "/Observation")).header("content-type", FHIR).header("if-none-exist", "code:in=http://hl7.org/fhir/ValueSet/clinical-findings").body(obs("z", "final", "urn:x", "z").to_string()).send().unwrap();
    assert_eq!(r.status(), 400);
    assert!(json(r)["issue"][0]["diagnostics"].as_str().unwrap().contains("http://snomed.info/sct"));
    cluster.converged(&cluster.ids(), 30);
    for id in cluster.ids() {
        let all = search(&c, &cluster.url(id, "/Observation"));
        assert_eq!(all.len(), 3, "node {id}: {all:?}");
        assert_eq!(search(&c, &cluster.url(id, "/Observation?code:in=urn:example:warm")), Vec::<String>::new(), "node {id}");
        assert_eq!(search(&c, &cluster.url(id, "/Observation?code:below=urn:example:colors|warm")).len(), 2, "node {id}: red and the created orange");
        let (_, e) = get(&c, &cluster.url(id, "/ValueSet/warm/$expand"));
        assert_eq!(e["expansion"]["contains"][0]["code"], "green", "node {id}");
    }
}

#[test]
fn stu3_node_serves_terminology_too() {
    let node = TestNode::start_with(FhirVersion::Stu3, |_| {});
    let c = client();
    put(&c, &node.url("/Observation/a"), &obs("a", "final", "urn:x", "1")).unwrap();
    put(&c, &node.url("/Observation/b"), &obs("b", "entered-in-error", "urn:x", "2")).unwrap();
    assert_eq!(search(&c, &node.url(&format!("/Observation?status:in={OBS_STATUS}"))), ["a", "b"]);
    let (s, e) = get(&c, &node.url(&format!("/ValueSet/$expand?url={OBS_STATUS}&filter=error")));
    assert_eq!(s, 200, "{e}");
    assert_eq!(e["expansion"]["contains"][0]["code"], "entered-in-error");
    assert!(e["expansion"]["identifier"].is_string() && e["expansion"]["timestamp"].is_string(), "STU3 requires both");
    let act = "http://hl7.org/fhir/v3/ActCode";
    let (_, l) = get(&c, &node.url(&format!("/CodeSystem/$lookup?system={act}&code=AMB")));
    assert_eq!(param(&l, "display")["valueString"], "ambulatory", "{l}");
    let (_, cap) = get(&c, &node.url("/metadata"));
    let vs = cap["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "ValueSet").unwrap();
    let expand = vs["operation"].as_array().unwrap().iter().find(|o| o["name"] == "expand").unwrap();
    assert_eq!(expand["definition"]["reference"], "http://hl7.org/fhir/OperationDefinition/ValueSet-expand");
}
