//! `_format`, `Accept`, `Content-Type`, `_pretty`, `_summary`, `_elements`.

use kiln_tests::{client, json, TestNode};
use reqwest::StatusCode;
use serde_json::json;

#[test]
fn formats_and_subsetting() {
    let node = TestNode::start();
    let c = client();
    let p = json!({"resourceType": "Patient", "id": "f1", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"},
                   "name": [{"family": "Ng"}], "gender": "male", "photo": [{"title": "me"}]});
    c.put(node.url("/Patient/f1")).header("content-type", "application/json").body(p.to_string()).send().unwrap();

    let resp = c.get(node.url("/Patient/f1")).send().unwrap();
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/fhir+json"));
    let resp = c.get(node.url("/Patient/f1")).header("accept", "application/json").send().unwrap();
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let resp = c.get(node.url("/Patient/f1")).header("accept", "application/fhir+xml").send().unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_ACCEPTABLE);
    assert_eq!(json(resp)["resourceType"], "OperationOutcome");
    let resp = c.get(node.url("/Patient/f1?_format=xml")).send().unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_ACCEPTABLE);
    let resp = c.get(node.url("/Patient/f1?_format=json")).header("accept", "application/fhir+xml").send().unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "_format overrides Accept");
    let resp = c.post(node.url("/Patient")).header("content-type", "application/fhir+xml").body("<Patient/>").send().unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(json(resp)["issue"][0]["diagnostics"].as_str().unwrap().contains("application/fhir+json"));

    let pretty = c.get(node.url("/Patient/f1?_pretty=true")).send().unwrap().text().unwrap();
    assert!(pretty.contains("\n  \"id\": \"f1\""), "{pretty}");
    let compact = c.get(node.url("/Patient/f1")).send().unwrap().text().unwrap();
    assert!(!compact.contains('\n'));

    let s = json(c.get(node.url("/Patient/f1?_summary=true")).send().unwrap());
    assert!(s.get("name").is_some() && s.get("gender").is_some());
    assert!(s.get("photo").is_none() && s.get("text").is_none());
    assert_eq!(s["meta"]["tag"][0]["code"], "SUBSETTED");
    let t = json(c.get(node.url("/Patient/f1?_summary=text")).send().unwrap());
    assert!(t.get("text").is_some() && t.get("name").is_none());
    let d = json(c.get(node.url("/Patient/f1?_summary=data")).send().unwrap());
    assert!(d.get("text").is_none() && d.get("photo").is_some());
    let e = json(c.get(node.url("/Patient/f1?_elements=gender")).send().unwrap());
    assert!(e.get("gender").is_some() && e.get("name").is_none());
    assert_eq!(e["meta"]["tag"][0]["code"], "SUBSETTED");
    let full = json(c.get(node.url("/Patient/f1?_summary=false")).send().unwrap());
    assert!(full["meta"].get("tag").is_none() && full.get("photo").is_some());
    for bad in ["_summary=maybe", "_summary=count", "_pretty=yes"] {
        let resp = c.get(node.url(&format!("/Patient/f1?{bad}"))).send().unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{bad}");
    }
}
