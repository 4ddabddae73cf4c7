//! Search over HTTP: paging that holds under concurrent writes, POST _search, lenient handling,
//! _summary=count, _elements, _sort, and a search on a cluster follower right after a write.

use kiln_tests::{client, json, put, TestCluster, TestNode};
use serde_json::{json, Value};

fn ids(b: &Value) -> Vec<String> {
    b["entry"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["id"].as_str().unwrap().to_string())
        .collect()
}

fn link(b: &Value, rel: &str) -> Option<String> {
    b["link"].as_array()?.iter().find(|l| l["relation"] == rel).map(|l| l["url"].as_str().unwrap().to_string())
}

fn obs(id: &str, code: &str, value: f64) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": "Patient/p1"}, "valueQuantity": {"value": value, "unit": "mg"}})
}

#[test]
fn searchset_paging_holds_under_concurrent_writes() {
    let node = TestNode::start();
    let c = client();
    // Created first, with another code: it joins the result later, before the cursor.
    put(&c, &node.url("/Observation/early"), &obs("early", "9999-9", 0.5)).unwrap();
    for i in 0..7 {
        assert_eq!(put(&c, &node.url(&format!("/Observation/o{i}")), &obs(&format!("o{i}"), "1234-5", i as f64)).unwrap().0, 201);
    }
    put(&c, &node.url("/Observation/other"), &obs("other", "9999-9", 1.0)).unwrap();
    let first = json(c.get(node.url("/Observation?code=http://loinc.org|1234-5&_count=3")).send().unwrap());
    assert_eq!(first["type"], "searchset");
    assert_eq!(first["total"], 7);
    assert_eq!(ids(&first), ["o0", "o1", "o2"], "default order: creation order");
    // A resource entering the result before the cursor, and one deleted after it, do not shift
    // the next page.
    put(&c, &node.url("/Observation/early"), &obs("early", "1234-5", 0.5)).unwrap();
    c.delete(node.url("/Observation/o4")).send().unwrap();
    let second = json(c.get(link(&first, "next").unwrap()).send().unwrap());
    assert_eq!(ids(&second), ["o3", "o5", "o6"]);
    assert!(link(&second, "next").is_none());
    let back = json(c.get(link(&second, "previous").unwrap()).send().unwrap());
    // The page before o3: the three that precede it; from the start, `early` now comes first.
    assert_eq!(ids(&back), ["o0", "o1", "o2"]);
    // Only `early` precedes o0 now: less than a page, so "previous" gives the whole first page.
    assert_eq!(ids(&json(c.get(link(&back, "previous").unwrap()).send().unwrap())), ["early", "o0", "o1"]);
    assert_eq!(ids(&json(c.get(link(&first, "first").unwrap()).send().unwrap())), ["early", "o0", "o1"]);
    // Descending sort, count only, zero count.
    let desc = json(c.get(node.url("/Observation?code=1234-5&_sort=-_id&_count=2")).send().unwrap());
    assert_eq!(ids(&desc), ["o6", "o5"]);
    let count = json(c.get(node.url("/Observation?code=1234-5&_summary=count")).send().unwrap());
    assert_eq!((count["total"].as_u64(), count.get("entry").is_none()), (Some(7), true));
    let zero = json(c.get(node.url("/Observation?code=1234-5&_count=0")).send().unwrap());
    assert_eq!((zero["total"].as_u64(), ids(&zero).len()), (Some(7), 0));
    let none = json(c.get(node.url("/Observation?code=1234-5&_total=none&_count=1")).send().unwrap());
    assert!(none.get("total").is_none());
}

#[test]
fn post_search_lenient_handling_and_elements() {
    let node = TestNode::start();
    let c = client();
    put(&c, &node.url("/Patient/a"), &json!({"resourceType": "Patient", "id": "a", "name": [{"family": "Müller"}], "gender": "female", "birthDate": "1980-01-01"})).unwrap();
    put(&c, &node.url("/Patient/b"), &json!({"resourceType": "Patient", "id": "b", "name": [{"family": "Miller"}], "gender": "male"})).unwrap();
    let r = c
        .post(node.url("/Patient/_search?gender=female"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("family=muller")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(ids(&json(r)), ["a"]);
    let strict = c.get(node.url("/Patient?family=m&shoe-size=42")).send().unwrap();
    assert_eq!(strict.status(), 400);
    assert!(json(strict)["issue"][0]["diagnostics"].as_str().unwrap().contains("shoe-size"));
    let lenient = json(c.get(node.url("/Patient?family=m&shoe-size=42")).header("prefer", "handling=lenient").send().unwrap());
    assert_eq!(ids(&lenient), ["a", "b"]);
    let outcome = lenient["entry"].as_array().unwrap().iter().find(|e| e["search"]["mode"] == "outcome").expect("outcome entry");
    assert!(outcome["resource"]["issue"][0]["diagnostics"].as_str().unwrap().contains("shoe-size"));
    let elements = json(c.get(node.url("/Patient?_id=a&_elements=gender")).send().unwrap());
    let res = &elements["entry"][0]["resource"];
    assert_eq!(res["gender"], "female");
    assert!(res.get("name").is_none());
    assert!(res["meta"]["tag"].as_array().unwrap().iter().any(|t| t["code"] == "SUBSETTED"));
    let bad = c.get(node.url("/Patient?birthdate=gt1980-13")).send().unwrap();
    assert_eq!(bad.status(), 400);
    let form = c.post(node.url("/Patient/_search")).header("content-type", "application/fhir+json").body("{}").send().unwrap();
    assert_eq!(form.status(), 415);
}

#[test]
fn a_follower_finds_a_write_it_acknowledged() {
    let c = TestCluster::start(3);
    let leader = c.leader();
    let follower = c.running().into_iter().find(|i| *i != leader).unwrap();
    let http = client();
    for n in [follower, leader] {
        let id = format!("s{n}");
        let body = json!({"resourceType": "Patient", "id": id, "identifier": [{"system": "urn:test", "value": id}]});
        assert_eq!(put(&http, &c.url(n, &format!("/Patient/{id}")), &body).unwrap().0, 201);
        // The index is written in the same batch as the resource: no delay, on the same node.
        let found = json(http.get(c.url(n, &format!("/Patient?identifier=urn:test|{id}"))).send().unwrap());
        assert_eq!(ids(&found), [id]);
    }
    c.converged(&c.ids(), 20);
    for n in c.ids() {
        let all = json(http.get(c.url(n, "/Patient?identifier=urn:test|")).send().unwrap());
        assert_eq!(all["total"], 2, "node {n}");
    }
}

#[test]
fn include_revinclude_chain_and_has_over_http() {
    let node = TestNode::start();
    let c = client();
    put(&c, &node.url("/Practitioner/dr"), &json!({"resourceType": "Practitioner", "id": "dr", "name": [{"family": "Who"}]})).unwrap();
    put(&c, &node.url("/Patient/p1"), &json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Pond"}], "generalPractitioner": [{"reference": "Practitioner/dr"}]})).unwrap();
    put(&c, &node.url("/Patient/p2"), &json!({"resourceType": "Patient", "id": "p2", "name": [{"family": "Oswald"}]})).unwrap();
    put(&c, &node.url("/Observation/o1"), &obs("o1", "1234-5", 1.0)).unwrap();
    let b = json(c.get(node.url("/Observation?code=1234-5&_include=Observation:subject")).send().unwrap());
    let modes: Vec<(String, String)> = b["entry"].as_array().unwrap().iter().map(|e| (e["search"]["mode"].as_str().unwrap().to_string(), e["fullUrl"].as_str().unwrap().rsplit('/').next().unwrap().to_string())).collect();
    assert_eq!(modes, [("match".to_string(), "o1".to_string()), ("include".to_string(), "p1".to_string())]);
    assert_eq!(b["total"], 1, "included resources do not count");
    let b = json(c.get(node.url("/Patient?_id=p1,p2&_revinclude=Observation:subject&_include=Patient:general-practitioner")).send().unwrap());
    let urls: Vec<&str> = b["entry"].as_array().unwrap().iter().map(|e| e["fullUrl"].as_str().unwrap()).collect();
    assert_eq!(urls.len(), 4, "{urls:?}");
    assert!(urls.iter().any(|u| u.ends_with("/Observation/o1")) && urls.iter().any(|u| u.ends_with("/Practitioner/dr")));
    assert_eq!(ids(&json(c.get(node.url("/Observation?subject:Patient.general-practitioner.family=who")).send().unwrap())), ["o1"]);
    assert_eq!(ids(&json(c.get(node.url("/Patient?_has:Observation:subject:code=1234-5")).send().unwrap())), ["p1"]);
    // Compartment search: Patient/p1's Observations (subject or performer), with more criteria.
    put(&c, &node.url("/Observation/o2"), &json!({"resourceType": "Observation", "id": "o2", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/p2"}})).unwrap();
    assert_eq!(ids(&json(c.get(node.url("/Patient/p1/Observation")).send().unwrap())), ["o1"]);
    assert_eq!(ids(&json(c.get(node.url("/Patient/p2/Observation?status=final")).send().unwrap())), ["o2"]);
    assert!(ids(&json(c.get(node.url("/Patient/p2/Observation?code=1234-5")).send().unwrap())).is_empty());
    assert_eq!(c.get(node.url("/Observation/o1/Patient")).send().unwrap().status(), 404, "Observation is not a compartment");
    let cs = json(c.get(node.url("/metadata")).send().unwrap());
    assert!(cs["rest"][0]["compartment"].as_array().unwrap().iter().any(|u| u == "http://hl7.org/fhir/CompartmentDefinition/relatedPerson"));
    // System search: several types, common parameters; one type, its own parameters.
    let sys = json(c.get(node.url("/?_type=Patient,Observation&_lastUpdated=gt2000-01-01&_count=3")).send().unwrap());
    assert_eq!(sys["total"], 4, "two Patients and two Observations: {sys}");
    assert_eq!(ids(&sys).len(), 3);
    let rest = json(c.get(link(&sys, "next").unwrap()).send().unwrap());
    assert_eq!(ids(&rest), ["p2"]);
    assert_eq!(ids(&json(c.get(node.url("/?_id=p2")).send().unwrap())), ["p2"]);
    assert_eq!(ids(&json(c.get(node.url("/?_type=Patient&family=pond")).send().unwrap())), ["p1"]);
    assert_eq!(c.get(node.url("/?_type=Patient,Observation&family=pond")).send().unwrap().status(), 400);
    // Wildcard: every reference parameter of Observation (subject → p1).
    let included = |b: &Value| -> Vec<String> {
        let mut v: Vec<String> = b["entry"].as_array().unwrap().iter().filter(|e| e["search"]["mode"] == "include").map(|e| e["fullUrl"].as_str().unwrap().rsplit('/').take(2).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("/")).collect();
        v.sort();
        v
    };
    assert_eq!(included(&json(c.get(node.url("/Observation?_id=o1&_include=Observation:*")).send().unwrap())), ["Patient/p1"]);
    // :iterate follows from what was included: o1 → p1 → dr; without it, only p1.
    assert_eq!(included(&json(c.get(node.url("/Observation?_id=o1&_include=Observation:subject&_include:iterate=Patient:general-practitioner")).send().unwrap())), ["Patient/p1", "Practitioner/dr"]);
    assert_eq!(c.get(node.url("/Observation?_id=o1&_include=Observation:subject&_include=Patient:general-practitioner")).send().unwrap().status(), 400, "not iterate: Patient is not searched");
    // _revinclude:iterate: Practitioner dr ← Patient p1 ← Observation o1.
    assert_eq!(included(&json(c.get(node.url("/Practitioner?_id=dr&_revinclude=Patient:general-practitioner&_revinclude:iterate=Observation:subject")).send().unwrap())), ["Observation/o1", "Patient/p1"]);
    // Includes on a system search.
    assert_eq!(included(&json(c.get(node.url("/?_type=Observation&_id=o1&_include=Observation:subject")).send().unwrap())), ["Patient/p1"]);
    assert_eq!(c.get(node.url("/Observation?_include=Observation:nothing")).send().unwrap().status(), 400);
}

#[test]
fn sort_on_any_parameter_with_several_keys_and_paging() {
    let node = TestNode::start();
    let c = client();
    let people = [("a", "Zeta", Some("1990-05-01")), ("b", "alpha", Some("1980")), ("c", "Mu", None), ("d", "Alpha", Some("2001-01-01")), ("e", "beta", Some("1980-06"))];
    for (id, family, birth) in people {
        let mut p = json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]});
        if let Some(b) = birth {
            p["birthDate"] = json!(b);
        }
        put(&c, &node.url(&format!("/Patient/{id}")), &p).unwrap();
    }
    let get = |qs: &str| ids(&json(c.get(node.url(&format!("/Patient?{qs}"))).send().unwrap()));
    assert_eq!(get("_sort=family"), ["b", "d", "e", "c", "a"], "case-insensitive, then creation order");
    assert_eq!(get("_sort=-family"), ["a", "c", "e", "b", "d"], "ties stay in creation order");
    assert_eq!(get("_sort=birthdate"), ["b", "e", "a", "d", "c"], "no value sorts last");
    assert_eq!(get("_sort=-birthdate,family"), ["d", "a", "e", "b", "c"]);
    // Paging follows the sort order.
    let first = json(c.get(node.url("/Patient?_sort=-birthdate&_count=2")).send().unwrap());
    assert_eq!(ids(&first), ["d", "a"]);
    let second = json(c.get(link(&first, "next").unwrap()).send().unwrap());
    assert_eq!(ids(&second), ["e", "b"]);
    let third = json(c.get(link(&second, "next").unwrap()).send().unwrap());
    assert_eq!(ids(&third), ["c"]);
    assert_eq!(ids(&json(c.get(link(&third, "previous").unwrap()).send().unwrap())), ["e", "b"]);
    assert_eq!(c.get(node.url("/Patient?_sort=shoe")).send().unwrap().status(), 400);
}

#[test]
fn chains_follow_many_links_and_refuse_past_the_documented_depth() {
    let node = TestNode::start();
    let c = client();
    // p0 → p1 → … → p40 through Patient.link.other; only p40 is called "End".
    put(&c, &node.url("/Patient/p40"), &json!({"resourceType": "Patient", "id": "p40", "name": [{"family": "End"}]})).unwrap();
    for i in 0..40 {
        let p = json!({"resourceType": "Patient", "id": format!("p{i}"), "name": [{"family": format!("Step{i}")}],
            "link": [{"other": {"reference": format!("Patient/p{}", i + 1)}, "type": "seealso"}]});
        assert_eq!(put(&c, &node.url(&format!("/Patient/p{i}")), &p).unwrap().0, 201);
    }
    let get = |qs: &str| c.get(node.url(&format!("/Patient?{qs}"))).send().unwrap();
    let typed = format!("{}family=end", "link:Patient.".repeat(40));
    assert_eq!(ids(&json(get(&typed))), ["p0"], "40 links with :Patient");
    // Without :Type each step also tries RelatedPerson (the other target of Patient.link).
    let untyped = format!("{}family=end", "link.".repeat(40));
    assert_eq!(ids(&json(get(&untyped))), ["p0"], "40 links, every target type");
    assert_eq!(ids(&json(get(&format!("{}family=end", "link:Patient.".repeat(39))))), ["p1"]);
    // Reverse: _has 40 deep from p40 back to p0's link.
    let has = format!("{}_id=p0", "_has:Patient:link:".repeat(40));
    assert_eq!(ids(&json(get(&has))), ["p40"]);
    // Past 64 links: 400 too-costly, never a shortened answer.
    let r = get(&format!("{}family=end", "link:Patient.".repeat(65)));
    assert_eq!(r.status(), 400);
    let body = json(r);
    assert_eq!(body["issue"][0]["code"], "too-costly", "{body}");
}
