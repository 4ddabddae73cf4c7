//! History at instance, type and system level with `_since`, `_at`, `_count` and paging links.

use kiln_tests::{client, json, TestNode};
use serde_json::{json, Value};

fn entries(b: &Value) -> Vec<(String, String)> {
    b["entry"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| (e["request"]["method"].as_str().unwrap().to_string(), e["response"]["etag"].as_str().unwrap().to_string()))
        .collect()
}

fn link(b: &Value, rel: &str) -> Option<String> {
    b["link"].as_array().unwrap().iter().find(|l| l["relation"] == rel).map(|l| l["url"].as_str().unwrap().to_string())
}

#[test]
fn instance_type_and_system_history() {
    let node = TestNode::start();
    let c = client();
    let put = |id: &str, extra: Value| {
        let mut body = json!({"resourceType": "Patient", "id": id});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        c.put(node.url(&format!("/Patient/{id}"))).header("content-type", "application/fhir+json").body(body.to_string()).send().unwrap()
    };
    put("h1", json!({}));
    put("h1", json!({"active": true}));
    let mid = json(c.get(node.url("/Patient/h1")).send().unwrap())["meta"]["lastUpdated"].as_str().unwrap().to_string();
    std::thread::sleep(std::time::Duration::from_millis(5));
    c.delete(node.url("/Patient/h1")).send().unwrap();
    c.post(node.url("/Observation")).header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Observation", "status": "final", "code": {"text": "t"}}).to_string()).send().unwrap();

    let inst = json(c.get(node.url("/Patient/h1/_history")).send().unwrap());
    assert_eq!(inst["type"], "history");
    assert_eq!(entries(&inst), [("DELETE".into(), "W/\"3\"".into()), ("PUT".into(), "W/\"2\"".into()), ("PUT".into(), "W/\"1\"".into())]);
    assert!(inst["entry"][0].get("resource").is_none());
    assert_eq!(inst["entry"][1]["resource"]["active"], true);
    assert_eq!(inst["entry"][2]["response"]["status"], "201 Created");

    let subset = json(c.get(node.url("/Patient/h1/_history?_summary=true&_pretty=true")).send().unwrap());
    assert_eq!(subset["entry"][1]["resource"]["meta"]["tag"][0]["code"], "SUBSETTED");
    assert!(inst["entry"][1]["resource"]["meta"].get("tag").is_none(), "raw entries are the stored bytes");

    let ty = json(c.get(node.url("/Patient/_history")).send().unwrap());
    assert_eq!(entries(&ty).len(), 3);
    let sys = json(c.get(node.url("/_history")).send().unwrap());
    assert_eq!(entries(&sys)[0], ("POST".to_string(), "W/\"1\"".to_string()));
    assert_eq!(entries(&sys).len(), 4);

    let since = json(c.get(node.url(&format!("/Patient/h1/_history?_since={}", mid.replace('+', "%2B")))).send().unwrap());
    assert_eq!(entries(&since).len(), 2, "version 2 and the delete are at or after {mid}");
    let at = json(c.get(node.url(&format!("/Patient/h1/_history?_at={mid}"))).send().unwrap());
    assert_eq!(entries(&at), [("PUT".into(), "W/\"2\"".into())]);
    assert_eq!(c.get(node.url("/Patient/h1/_history?_since=notadate")).send().unwrap().status(), 400);
    assert_eq!(c.get(node.url("/Patient/h1/_history?_sort=x")).send().unwrap().status(), 400);
    assert_eq!(c.get(node.url("/Patient/h1/_history?_sort=x")).header("prefer", "handling=lenient").send().unwrap().status(), 200);
    assert_eq!(c.get(node.url("/Patient/none/_history")).send().unwrap().status(), 404);
}

#[test]
fn paging_links_are_stable_under_concurrent_writes() {
    let node = TestNode::start();
    let c = client();
    for i in 0..7 {
        c.put(node.url("/Patient/pg")).header("content-type", "application/fhir+json")
            .body(json!({"resourceType": "Patient", "id": "pg", "birthDate": format!("200{i}")}).to_string()).send().unwrap();
    }
    let first = json(c.get(node.url("/Patient/pg/_history?_count=3")).send().unwrap());
    assert_eq!(entries(&first).iter().map(|e| e.1.clone()).collect::<Vec<_>>(), ["W/\"7\"", "W/\"6\"", "W/\"5\""]);
    assert!(link(&first, "previous").is_none());
    // A write between pages does not shift the next page.
    c.put(node.url("/Patient/pg")).header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Patient", "id": "pg"}).to_string()).send().unwrap();
    let second = json(c.get(link(&first, "next").unwrap()).send().unwrap());
    assert_eq!(entries(&second).iter().map(|e| e.1.clone()).collect::<Vec<_>>(), ["W/\"4\"", "W/\"3\"", "W/\"2\""]);
    let third = json(c.get(link(&second, "next").unwrap()).send().unwrap());
    assert_eq!(entries(&third).iter().map(|e| e.1.clone()).collect::<Vec<_>>(), ["W/\"1\""]);
    assert!(link(&third, "next").is_none());
    let back = json(c.get(link(&third, "previous").unwrap()).send().unwrap());
    assert_eq!(entries(&back), entries(&second));
    assert!(link(&first, "next").unwrap().contains("_count=3"));
    assert_eq!(c.get(node.url("/Patient/pg/_history?_page=zz")).send().unwrap().status(), 400);
    // A cursor from another history (or crafted) is refused, not followed.
    assert_eq!(c.get(node.url("/Patient/pg/_history?_page=n61")).send().unwrap().status(), 400);
    assert_eq!(c.get(node.url("/_history?_since=9999-12-31")).send().unwrap().status(), 200);
}
