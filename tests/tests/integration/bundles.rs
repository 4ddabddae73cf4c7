//! Batch and transaction bundles (`POST /`): the spec's request examples, urn:uuid rewriting,
//! all-or-nothing transactions, processing order, conditional entries, limits, concurrency.

use base64::Engine;
use kiln::fhir::FhirVersion;
use kiln_tests::{client, fhir_packages, json, TestNode};
use serde_json::{json, Value};

const FHIR: &str = "application/fhir+json";

fn post_bundle_to(url: &str, bundle: &Value, prefer: Option<&str>) -> (u16, Value) {
    let mut r = client().post(url).header("content-type", FHIR).body(bundle.to_string());
    if let Some(p) = prefer {
        r = r.header("prefer", p);
    }
    let resp = r.send().unwrap();
    let status = resp.status().as_u16();
    (status, json(resp))
}

fn post_bundle(node: &TestNode, bundle: &Value) -> (u16, Value) {
    post_bundle_to(&node.url("/"), bundle, None)
}

fn statuses(resp: &Value) -> Vec<String> {
    resp["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap().to_string()).collect()
}

fn total(node: &TestNode, path: &str) -> u64 {
    let sep = if path.contains('?') { '&' } else { '?' };
    json(client().get(node.url(&format!("{path}{sep}_summary=count"))).send().unwrap())["total"].as_u64().unwrap()
}

fn diagnostics(oo: &Value) -> String {
    oo["issue"][0]["diagnostics"].as_str().unwrap_or_default().to_string()
}

fn example(version: &str, name: &str) -> Value {
    let path = fhir_packages().join(version).join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn tx(entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn post_entry(full_url: &str, resource: Value) -> Value {
    let rtype = resource["resourceType"].as_str().unwrap().to_string();
    json!({"fullUrl": full_url, "resource": resource, "request": {"method": "POST", "url": rtype}})
}

#[test]
fn spec_transaction_example_fails_whole_then_succeeds_in_spec_order() {
    let node = TestNode::start();
    let mut bundle = example("r4-examples", "Bundle-bundle-transaction.json");
    // As published it calls ValueSet/$lookup (entry 7), which Kiln does not implement: the
    // transaction fails as a whole, naming the entry, and writes nothing.
    let (status, oo) = post_bundle(&node, &bundle);
    assert_eq!(status, 501, "{oo}");
    assert!(diagnostics(&oo).contains("Bundle.entry[7]") && diagnostics(&oo).contains("$lookup"), "{oo}");
    assert_eq!(total(&node, "/Patient"), 0);
    // Without the operation, entry 4 (PUT Patient/123a, ifMatch W/"2") still fails: 412, nothing written.
    bundle["entry"].as_array_mut().unwrap().remove(7);
    let (status, oo) = post_bundle(&node, &bundle);
    assert_eq!(status, 412, "{oo}");
    assert!(diagnostics(&oo).contains("Bundle.entry[4]"), "{oo}");
    assert_eq!(total(&node, "/Patient"), 0);
    // Make Patient/123a exist at version 2; Patient/234 and a match for identifier=123456 exist.
    let c = client();
    for _ in 0..2 {
        c.put(node.url("/Patient/123a")).header("content-type", FHIR).body(json!({"resourceType": "Patient", "id": "123a"}).to_string()).send().unwrap();
    }
    c.put(node.url("/Patient/234")).header("content-type", FHIR).body(json!({"resourceType": "Patient", "id": "234"}).to_string()).send().unwrap();
    c.put(node.url("/Patient/del")).header("content-type", FHIR).body(json!({"resourceType": "Patient", "id": "del", "identifier": [{"value": "123456"}]}).to_string()).send().unwrap();
    let (status, resp) = post_bundle(&node, &bundle);
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["type"], "transaction-response");
    assert_eq!(
        statuses(&resp),
        ["201 Created", "201 Created", "201 Created", "201 Created", "200 OK", "204 No Content", "204 No Content", "200 OK", "404 Not Found"],
        "{resp}"
    );
    // The search entry (GET after the writes) sees the transaction's Patients named Peter.
    // Entries 0-4 wrote five Patients named Peter (two creates, a PUT create, a conditional PUT
    // create, the update of 123a): the search finds exactly those.
    let search = &resp["entry"][7]["resource"];
    assert_eq!(search["type"], "searchset");
    assert_eq!(search["total"], 5, "{search}");
    let id_of = |loc: &Value| loc.as_str().unwrap().split('/').nth(1).unwrap().to_string();
    let mut written: Vec<String> = (0..5).map(|i| id_of(&resp["entry"][i]["response"]["location"])).collect();
    let mut found: Vec<String> = search["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect();
    written.sort();
    found.sort();
    assert_eq!(found, written, "{search}");
    assert!(written.contains(&"123".to_string()) && written.contains(&"123a".to_string()), "{written:?}");
    assert!(resp["entry"][0]["response"]["location"].as_str().unwrap().starts_with("Patient/"));
    assert_eq!(resp["entry"][4]["response"]["etag"], "W/\"3\"");
    assert!(resp["entry"][1]["response"]["lastModified"].is_string());
    assert_eq!(c.get(node.url("/Patient/234")).send().unwrap().status(), 410);
    assert_eq!(c.get(node.url("/Patient/del")).send().unwrap().status(), 410);
    // The conditional create (entry 1, ifNoneExist) does not create twice.
    let ident = "identifier=http:/example.org/fhir/ids|234234";
    assert_eq!(total(&node, &format!("/Patient?{ident}")), 1);
    bundle["entry"][4]["request"]["ifMatch"] = json!("W/\"3\"");
    let (status, resp) = post_bundle(&node, &bundle);
    assert_eq!(status, 200, "{resp}");
    assert_eq!(statuses(&resp)[1], "200 OK", "existing match, nothing created");
    assert_eq!(total(&node, &format!("/Patient?{ident}")), 1);
}

#[test]
fn spec_request_examples_r4_and_stu3() {
    for (version, dir) in [(FhirVersion::R4, "r4-examples"), (FhirVersion::Stu3, "r3-examples")] {
        let node = TestNode::start_with(version, |_| {});
        // Transactions of POSTs with urn:uuid fullUrls and PUTs to absolute URLs of another base.
        for name in ["Bundle-hla-1.json", "Bundle-xds.json", "Bundle-ussg-fht.json"] {
            let bundle = example(dir, name);
            let n = bundle["entry"].as_array().unwrap().len();
            let (status, resp) = post_bundle(&node, &bundle);
            assert_eq!(status, 200, "{dir}/{name}: {resp}");
            let st = statuses(&resp);
            assert_eq!(st.len(), n);
            assert!(st.iter().all(|s| s == "201 Created"), "{dir}/{name}: {st:?}");
            // Every urn:uuid reference was rewritten to the created resource.
            for e in resp["entry"].as_array().unwrap() {
                assert!(!e["resource"].to_string().contains("\"reference\":\"urn:uuid:"), "{dir}/{name}: {}", e["resource"]);
            }
        }
        // Batches of searches: each entry answered alone (_list is not supported: 400 in its entry).
        let (status, resp) = post_bundle(&node, &example(dir, "Bundle-bundle-request-medsallergies.json"));
        assert_eq!(status, 200, "{resp}");
        assert_eq!(resp["type"], "batch-response");
        let st = statuses(&resp);
        assert_eq!(st[0], "404 Not Found", "{resp}");
        // (The STU3 copy misspells AllergyIntolerance: 404 for that type.)
        assert!(st[1..].iter().all(|s| s == "400 Bad Request" || s == "404 Not Found"), "{st:?}");
        assert!(resp["entry"][1]["response"]["outcome"]["issue"][0]["diagnostics"].as_str().unwrap().contains("_list"), "{resp}");
    }
}

#[test]
fn urn_uuid_references_are_rewritten_everywhere() {
    let node = TestNode::start();
    let pat = json!({"resourceType": "Patient", "name": [{"family": "Urn"}],
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">see <a href=\"urn:uuid:0c7b1a8e-5a2e-4a7e-9a44-000000000002\">the observation</a></div>"}});
    let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "urn:uuid:0c7b1a8e-5a2e-4a7e-9a44-000000000001"},
        "extension": [{"url": "http://example.org/x", "valueReference": {"reference": "urn:uuid:0c7b1a8e-5a2e-4a7e-9a44-000000000001"}}]});
    let (status, resp) = post_bundle(&node, &tx(vec![post_entry("urn:uuid:0c7b1a8e-5a2e-4a7e-9a44-000000000002", obs), post_entry("urn:uuid:0c7b1a8e-5a2e-4a7e-9a44-000000000001", pat)]));
    assert_eq!(status, 200, "{resp}");
    let loc = |i: usize| resp["entry"][i]["response"]["location"].as_str().unwrap().split("/_history").next().unwrap().to_string();
    let (obs_ref, pat_ref) = (loc(0), loc(1));
    let o = json(client().get(node.url(&format!("/{obs_ref}"))).send().unwrap());
    assert_eq!(o["subject"]["reference"], pat_ref.as_str());
    assert_eq!(o["extension"][0]["valueReference"]["reference"], pat_ref.as_str());
    let p = json(client().get(node.url(&format!("/{pat_ref}"))).send().unwrap());
    assert!(p["text"]["div"].as_str().unwrap().contains(&format!("href=\"{obs_ref}\"")), "{p}");
    // The reference index points at the real id: the Observation is found by its subject.
    assert_eq!(total(&node, &format!("/Observation?subject={pat_ref}")), 1);
    // A placeholder that names no entry fails the transaction (400).
    let dangling = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "urn:uuid:0c7b1a8e-5a2e-4a7e-9a44-0000000000ff"}});
    let (status, oo) = post_bundle(&node, &tx(vec![post_entry("urn:uuid:0c7b1a8e-5a2e-4a7e-9a44-000000000003", dangling)]));
    assert_eq!(status, 400, "{oo}");
    assert!(diagnostics(&oo).contains("Bundle.entry[0]") && diagnostics(&oo).contains("0000000000ff"), "{oo}");
    // Conditional references: one match → rewritten; none → the transaction fails.
    let cond = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient?_id={}", pat_ref.trim_start_matches("Patient/"))}});
    let (status, resp) = post_bundle(&node, &tx(vec![post_entry("urn:uuid:0c7b1a8e-5a2e-4a7e-9a44-000000000004", cond)]));
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["entry"][0]["resource"]["subject"]["reference"], pat_ref.as_str());
    let none = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient?identifier=nobody"}});
    let (status, oo) = post_bundle(&node, &tx(vec![post_entry("urn:uuid:0c7b1a8e-5a2e-4a7e-9a44-000000000005", none)]));
    assert_eq!(status, 400, "{oo}");
    assert!(diagnostics(&oo).contains("no resource matches"), "{oo}");
}

fn tagged(i: usize, tag: &str) -> Value {
    json!({"resourceType": "Patient", "meta": {"tag": [{"system": "urn:test", "code": tag}]}, "name": [{"family": format!("P{i}")}]})
}

#[test]
fn a_failing_entry_at_999_of_1000_leaves_no_trace_and_limits_are_config() {
    let node = TestNode::start_with(FhirVersion::R4, |c| c.limits.max_bundle_entries = 1000);
    let mut entries: Vec<Value> = (0..1000).map(|i| post_entry(&format!("urn:uuid:00000000-0000-4000-8000-{i:012}"), tagged(i, "t999"))).collect();
    entries[999] = json!({"resource": {"resourceType": "Patient", "id": "nope"}, "request": {"method": "PUT", "url": "Patient/nope", "ifMatch": "W/\"4\""}});
    let (status, oo) = post_bundle(&node, &tx(entries.clone()));
    assert_eq!(status, 412, "{oo}");
    assert!(diagnostics(&oo).contains("Bundle.entry[999] (PUT Patient/nope)"), "{oo}");
    assert_eq!(total(&node, "/Patient?_tag=urn:test|t999"), 0);
    assert_eq!(total(&node, "/Patient"), 0);
    // A resource written twice in one transaction → 400.
    let twice = vec![
        json!({"resource": {"resourceType": "Patient", "id": "x"}, "request": {"method": "PUT", "url": "Patient/x"}}),
        json!({"request": {"method": "DELETE", "url": "Patient/x"}}),
    ];
    let (status, oo) = post_bundle(&node, &tx(twice));
    assert_eq!(status, 400, "{oo}");
    assert!(diagnostics(&oo).contains("only once"), "{oo}");
    // The same 1,000 entries without the failure: all created.
    entries[999] = post_entry("urn:uuid:00000000-0000-4000-8000-000000000999", tagged(999, "t999"));
    let (status, resp) = post_bundle(&node, &tx(entries.clone()));
    assert_eq!(status, 200);
    assert_eq!(statuses(&resp).len(), 1000);
    assert_eq!(total(&node, "/Patient?_tag=urn:test|t999"), 1000);
    // One more than max_bundle_entries → 413 naming the setting.
    entries.push(post_entry("urn:uuid:00000000-0000-4000-8000-000000001000", tagged(1000, "t999")));
    let (status, oo) = post_bundle(&node, &tx(entries));
    assert_eq!(status, 413, "{oo}");
    assert!(diagnostics(&oo).contains("limits.max_bundle_entries"), "{oo}");
}

#[test]
fn batch_entries_succeed_or_fail_alone_and_prefer_shapes_entries() {
    let node = TestNode::start();
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "id": "b1"}, "request": {"method": "PUT", "url": "Patient/b1"}},
        {"resource": {"resourceType": "Patient", "id": "b2", "gender": "bogus"}, "request": {"method": "PUT", "url": "Patient/b2"}},
        {"resource": {"resourceType": "Patient", "id": "b3"}, "request": {"method": "PUT", "url": "Patient/b3", "ifMatch": "W/\"9\""}},
        {"request": {"method": "GET", "url": "Patient/b1"}},
        {"request": {"method": "FETCH", "url": "Patient/b1"}},
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}
    ]});
    let (status, resp) = post_bundle(&node, &batch);
    assert_eq!(status, 200, "{resp}");
    assert_eq!(statuses(&resp), ["201 Created", "400 Bad Request", "412 Precondition Failed", "200 OK", "400 Bad Request", "201 Created"], "{resp}");
    assert_eq!(resp["entry"][3]["resource"]["id"], "b1", "the GET sees the batch's write");
    assert!(resp["entry"][1]["response"]["outcome"]["issue"][0]["diagnostics"].as_str().unwrap().contains("gender"), "{resp}");
    assert_eq!(client().get(node.url("/Patient/b1")).send().unwrap().status(), 200);
    assert_eq!(client().get(node.url("/Patient/b3")).send().unwrap().status(), 404);
    // Prefer: return=minimal → no resources; return=OperationOutcome → an outcome per entry.
    let one = tx(vec![json!({"resource": {"resourceType": "Patient", "id": "m1"}, "request": {"method": "PUT", "url": "Patient/m1"}})]);
    let (_, resp) = post_bundle_to(&node.url("/"), &one, Some("return=minimal"));
    assert!(resp["entry"][0].get("resource").is_none() && resp["entry"][0]["response"]["etag"] == "W/\"1\"", "{resp}");
    let (_, resp) = post_bundle_to(&node.url("/"), &one, Some("return=OperationOutcome"));
    assert_eq!(resp["entry"][0]["response"]["outcome"]["resourceType"], "OperationOutcome", "{resp}");
    assert_eq!(resp["entry"][0]["response"]["status"], "200 OK");
    // Not a batch / transaction → 400.
    let (status, _) = post_bundle(&node, &json!({"resourceType": "Bundle", "type": "collection"}));
    assert_eq!(status, 400);
    // Bundle-level checks fail a transaction before anything is written.
    let write = |id: &str| json!({"fullUrl": "urn:uuid:11111111-0000-4000-8000-000000000001", "resource": {"resourceType": "Patient", "id": id}, "request": {"method": "PUT", "url": format!("Patient/{id}")}});
    let (status, oo) = post_bundle(&node, &tx(vec![write("d1"), write("d2")]));
    assert_eq!(status, 400, "{oo}");
    assert!(diagnostics(&oo).contains("same fullUrl"), "{oo}");
    let (status, oo) = post_bundle(&node, &tx(vec![json!({"resource": {"resourceType": "Patient", "id": "d3"}, "request": {"method": "PUT", "url": "Patient/d3"}}),
        json!({"request": {"method": "GET", "url": "Nonsense/1"}})]));
    assert_eq!(status, 404, "{oo}");
    assert!(diagnostics(&oo).contains("Bundle.entry[1] (GET Nonsense/1)"), "{oo}");
    let (status, oo) = post_bundle(&node, &tx(vec![json!({"request": {"method": "DELETE", "url": "Patient?name=x", "ifMatch": "W/\"1\""}})]));
    assert_eq!(status, 400, "{oo}");
    for id in ["d1", "d2", "d3"] {
        assert_eq!(client().get(node.url(&format!("/Patient/{id}"))).send().unwrap().status(), 404);
    }
    // A read that fails after the writes is answered in its entry; the writes stay.
    let (status, resp) = post_bundle(&node, &tx(vec![json!({"resource": {"resourceType": "Patient", "id": "d4"}, "request": {"method": "PUT", "url": "Patient/d4"}}),
        json!({"request": {"method": "GET", "url": "Patient/absent"}})]));
    assert_eq!(status, 200, "{resp}");
    assert_eq!(statuses(&resp), ["201 Created", "404 Not Found"]);
}

#[test]
fn patch_entries_and_conditional_patch() {
    let node = TestNode::start();
    let c = client();
    c.put(node.url("/Patient/pp")).header("content-type", FHIR).body(json!({"resourceType": "Patient", "id": "pp", "identifier": [{"system": "s", "value": "pp"}], "active": false}).to_string()).send().unwrap();
    let patch = |ops: Value| base64::engine::general_purpose::STANDARD.encode(ops.to_string());
    let bundle = tx(vec![json!({"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": patch(json!([{"op": "replace", "path": "/active", "value": true}]))},
        "request": {"method": "PATCH", "url": "Patient/pp"}})]);
    let (status, resp) = post_bundle(&node, &bundle);
    assert_eq!(status, 200, "{resp}");
    assert_eq!(resp["entry"][0]["resource"]["active"], true);
    assert_eq!(resp["entry"][0]["response"]["etag"], "W/\"2\"");
    // Conditional PATCH over HTTP: one match → patched; no match → 404.
    let r = c
        .patch(node.url("/Patient?identifier=s|pp"))
        .header("content-type", "application/json-patch+json")
        .body(json!([{"op": "add", "path": "/gender", "value": "female"}]).to_string())
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json(r)["gender"], "female");
    let r = c.patch(node.url("/Patient?identifier=s|none")).header("content-type", "application/json-patch+json").body("[]").send().unwrap();
    assert_eq!(r.status(), 404);
}

#[test]
fn concurrent_transactions_on_one_resource_serialize() {
    let node = TestNode::start();
    let c = client();
    c.put(node.url("/Patient/counter")).header("content-type", FHIR).body(json!({"resourceType": "Patient", "id": "counter", "name": [{"family": "0"}]}).to_string()).send().unwrap();
    // Each transaction reads the counter, then writes counter+1 (ifMatch the version read) and
    // one Observation. A transaction that lost the race (412) must leave no Observation.
    let won = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..6 {
            let (won, node) = (&won, &node);
            s.spawn(move || {
                let c = client();
                for i in 0..15 {
                    let cur = json(c.get(node.url("/Patient/counter")).send().unwrap());
                    let v: u64 = cur["meta"]["versionId"].as_str().unwrap().parse().unwrap();
                    let n: u64 = cur["name"][0]["family"].as_str().unwrap().parse().unwrap();
                    let bundle = tx(vec![
                        json!({"resource": {"resourceType": "Patient", "id": "counter", "name": [{"family": (n + 1).to_string()}]},
                               "request": {"method": "PUT", "url": "Patient/counter", "ifMatch": format!("W/\"{v}\"")}}),
                        post_entry("urn:uuid:00000000-0000-4000-8000-000000000001", json!({"resourceType": "Observation", "status": "final",
                            "code": {"text": format!("t{t}-{i}")}, "valueInteger": n + 1, "subject": {"reference": "Patient/counter"}})),
                    ]);
                    let (status, _) = post_bundle(node, &bundle);
                    match status {
                        200 => {
                            won.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        412 => {}
                        other => panic!("unexpected {other}"),
                    }
                }
            });
        }
    });
    let won = won.into_inner();
    let cur = json(c.get(node.url("/Patient/counter")).send().unwrap());
    assert_eq!(cur["name"][0]["family"], won.to_string(), "every acknowledged increment, no lost update");
    assert_eq!(total(&node, "/Observation?subject=Patient/counter"), won);
    // Each value 1..=won was written by exactly one transaction.
    let all = json(c.get(node.url("/Observation?subject=Patient/counter&_count=1000")).send().unwrap());
    let mut values: Vec<u64> = all["entry"].as_array().unwrap().iter().map(|e| e["resource"]["valueInteger"].as_u64().unwrap()).collect();
    values.sort();
    assert_eq!(values, (1..=won).collect::<Vec<_>>());
    assert!(won >= 15, "some transactions must win: {won}");
}

#[test]
fn the_default_limits_take_a_10000_entry_transaction() {
    let node = TestNode::start();
    let entries: Vec<Value> = (0..10_000).map(|i| post_entry(&format!("urn:uuid:00000000-0000-4000-9000-{i:012}"), tagged(i, "t10k"))).collect();
    let started = std::time::Instant::now();
    let (status, resp) = post_bundle_to(&node.url("/"), &tx(entries), Some("return=minimal"));
    assert_eq!(status, 200, "{resp}");
    // docs/api.md: it passes with the defaults, i.e. within write_timeout_ms (10 s) + 2 ms per
    // write once planned; the whole request, planning included, within 60 s in a debug build.
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(60), "a 10,000-entry transaction took {took:?}");
    assert_eq!(statuses(&resp).len(), 10_000);
    assert_eq!(total(&node, "/Patient?_tag=urn:test|t10k"), 10_000);
}

#[test]
fn concurrent_patch_entries_without_if_match_are_retried_not_lost() {
    let node = TestNode::start();
    client().put(node.url("/Patient/pp")).header("content-type", FHIR).body(json!({"resourceType": "Patient", "id": "pp", "name": [{"text": "start"}]}).to_string()).send().unwrap();
    std::thread::scope(|s| {
        for t in 0..4 {
            let node = &node;
            s.spawn(move || {
                for i in 0..10 {
                    let ops = json!([{"op": "add", "path": "/name/-", "value": {"text": format!("t{t}-{i}")}}]);
                    let data = base64::engine::general_purpose::STANDARD.encode(ops.to_string());
                    let bundle = tx(vec![json!({"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data},
                        "request": {"method": "PATCH", "url": "Patient/pp"}})]);
                    let (status, resp) = post_bundle(node, &bundle);
                    assert_eq!(status, 200, "{resp}");
                }
            });
        }
    });
    let p = json(client().get(node.url("/Patient/pp")).send().unwrap());
    assert_eq!(p["name"].as_array().unwrap().len(), 41, "every patch applied once: {p}");
    assert_eq!(p["meta"]["versionId"], "41");
}
