//! FHIR Binary: raw content in and out, inline `data`, large content in the node's blob folder
//! or in S3 (a real `s3s-fs`), updates and vreads, presigned PUT / GET, S3 failures, and the
//! cluster rule (large content needs `[s3]`).

use std::time::Duration;

use kiln::binary::StoreChoice;
use kiln::fhir::FhirVersion;
use kiln_tests::{client, json, S3Server, TestCluster, TestNode};
use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};

const FHIR: &str = "application/fhir+json";
const EXT: &str = "http://kiln.dev/fhir/StructureDefinition/binary-content";

/// Deterministic pseudo-random bytes (incompressible enough, different per seed).
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

fn post_raw(c: &Client, url: &str, ct: &str, body: Vec<u8>) -> Response {
    c.post(url).header("content-type", ct).body(body).send().unwrap()
}

fn header(r: &Response, name: &str) -> String {
    r.headers().get(name).map(|v| v.to_str().unwrap().to_string()).unwrap_or_default()
}

/// Asserts an OperationOutcome with `status` whose diagnostics contain `needle`.
fn outcome(r: Response, status: u16, needle: &str) -> String {
    assert_eq!(r.status().as_u16(), status, "status");
    assert!(header(&r, "content-type").starts_with(FHIR));
    let oo = json(r);
    assert_eq!(oo["resourceType"], "OperationOutcome", "{oo}");
    let diag = oo["issue"][0]["diagnostics"].as_str().unwrap_or_default().to_string();
    assert!(diag.contains(needle), "diagnostics {diag:?} should mention {needle:?}");
    diag
}

/// The content extension's sub-extension `name` (its value as a JSON value).
fn ext_value(resource: &Value, name: &str) -> Value {
    let ext = resource["_data"]["extension"].as_array().and_then(|a| a.iter().find(|e| e["url"] == EXT)).unwrap_or_else(|| panic!("no content extension in {resource}"));
    let sub = ext["extension"].as_array().unwrap().iter().find(|s| s["url"] == name).cloned().unwrap_or(Value::Null);
    sub.as_object().and_then(|o| o.iter().find(|(k, _)| k.starts_with("value")).map(|(_, v)| v.clone())).unwrap_or(Value::Null)
}

fn raw_get(c: &Client, url: &str) -> (u16, String, Vec<u8>) {
    let r = c.get(url).send().unwrap();
    let status = r.status().as_u16();
    let ct = header(&r, "content-type");
    (status, ct, r.bytes().unwrap().to_vec())
}

fn fhir_get(c: &Client, url: &str) -> Value {
    let r = c.get(url).header("accept", FHIR).send().unwrap();
    assert_eq!(r.status(), 200, "{url}");
    json(r)
}

#[test]
fn binary_raw_inline_and_local_blob_round_trips() {
    let node = TestNode::start_with(FhirVersion::R4, |c| c.binary.max_bytes = 8 * 1024 * 1024);
    let c = client();
    // Small raw content stays inline.
    let r = c.post(node.url("/Binary")).header("content-type", "text/plain; charset=utf-8").header("x-security-context", "Patient/p1").body("hello, binary").send().unwrap();
    assert_eq!(r.status(), 201);
    let created = json(r);
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(created["contentType"], "text/plain; charset=utf-8");
    assert_eq!(created["securityContext"]["reference"], "Patient/p1");
    assert!(created["data"].is_string());
    // Read with a browser's Accept: the content itself.
    let r = c.get(node.url(&format!("/Binary/{id}"))).header("accept", "text/html,application/xhtml+xml,*/*;q=0.8").send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "text/plain; charset=utf-8");
    assert_eq!(header(&r, "x-security-context"), "Patient/p1");
    assert_eq!(header(&r, "etag"), "W/\"1\"");
    assert!(!header(&r, "last-modified").is_empty());
    assert_eq!(header(&r, "x-content-type-options"), "nosniff");
    assert_eq!(r.text().unwrap(), "hello, binary");
    // A FHIR Accept (or _format) gets the resource.
    assert_eq!(fhir_get(&c, &node.url(&format!("/Binary/{id}"))), created);
    let r = c.get(node.url(&format!("/Binary/{id}?_format=json"))).send().unwrap();
    assert_eq!(json(r)["id"], id.as_str());
    outcome(c.get(node.url(&format!("/Binary/{id}"))).header("accept", "application/fhir+xml").send().unwrap(), 406, "XML");
    let r = c.get(node.url(&format!("/Binary/{id}"))).header("if-none-match", "W/\"1\"").send().unwrap();
    assert_eq!(r.status(), 304);

    // JSON with inline data, read raw.
    let r = c.post(node.url("/Binary")).header("content-type", FHIR).body(json!({"resourceType": "Binary", "contentType": "application/pdf", "data": "JVBERi0xLjQ="}).to_string()).send().unwrap();
    assert_eq!(r.status(), 201);
    let pdf_id = json(r)["id"].as_str().unwrap().to_string();
    let (status, ct, body) = raw_get(&c, &node.url(&format!("/Binary/{pdf_id}")));
    assert_eq!((status, ct.as_str(), body.as_slice()), (200, "application/pdf", b"%PDF-1.4".as_slice()));

    // 5 MiB: streamed to the node's blob folder, not into the replicated resource.
    let big = bytes(5 * 1024 * 1024, 1);
    let r = post_raw(&c, &node.url("/Binary"), "image/png", big.clone());
    assert_eq!(r.status(), 201);
    let v1 = json(r);
    let big_id = v1["id"].as_str().unwrap().to_string();
    assert!(v1.get("data").is_none(), "large content is not in the resource: {v1}");
    assert_eq!(ext_value(&v1, "store"), "local");
    assert_eq!(ext_value(&v1, "size"), big.len() as u64);
    let key = ext_value(&v1, "key").as_str().unwrap().to_string();
    assert!(key.starts_with("binary/"));
    assert_eq!(std::fs::metadata(node.cfg.data_dir.join("blobs").join(&key)).unwrap().len(), big.len() as u64);
    use sha2_hex::sha256_hex;
    assert_eq!(ext_value(&v1, "sha256"), sha256_hex(&big));
    let (status, ct, body) = raw_get(&c, &node.url(&format!("/Binary/{big_id}")));
    assert_eq!((status, ct.as_str()), (200, "image/png"));
    assert!(body == big, "raw read returns the bytes written");
    // A FHIR read of content above binary.json_data_max_bytes: the resource with the extension.
    let as_fhir = fhir_get(&c, &node.url(&format!("/Binary/{big_id}")));
    assert!(as_fhir.get("data").is_none());
    assert_eq!(ext_value(&as_fhir, "key"), key.as_str());

    // Update: a new object; the old version still reads its own bytes.
    let big2 = bytes(5 * 1024 * 1024 + 17, 2);
    let r = c.put(node.url(&format!("/Binary/{big_id}"))).header("content-type", "image/png").body(big2.clone()).send().unwrap();
    assert_eq!(r.status(), 200);
    let v2 = json(r);
    assert_ne!(ext_value(&v2, "key"), key.as_str(), "an update never overwrites an object an older version points to");
    assert!(raw_get(&c, &node.url(&format!("/Binary/{big_id}"))).2 == big2);
    assert!(raw_get(&c, &node.url(&format!("/Binary/{big_id}/_history/1"))).2 == big);
    assert_eq!(fhir_get(&c, &node.url(&format!("/Binary/{big_id}/_history/1")))["meta"]["versionId"], "1");

    // A client may not point a Binary at an object: only repeat what the current version has.
    let mut forged = v1.clone();
    forged.as_object_mut().unwrap().remove("id");
    outcome(c.post(node.url("/Binary")).header("content-type", FHIR).body(forged.to_string()).send().unwrap(), 400, EXT);
    let mut resave = v2.clone();
    resave["contentType"] = json!("image/x-png");
    // A client's claim of the size (and digest) is replaced by the server's own.
    let size_of = |b: &Value| -> Value {
        let subs = b["_data"]["extension"][0]["extension"].as_array().cloned().unwrap_or_default();
        subs.into_iter().find(|e| e["url"] == "size").map(|e| e.as_object().unwrap().iter().find(|(k, _)| k.starts_with("value")).unwrap().1.clone()).unwrap_or(Value::Null)
    };
    let real_size = size_of(&v2);
    assert!(!real_size.is_null(), "{v2}");
    for e in resave["_data"]["extension"][0]["extension"].as_array_mut().unwrap() {
        if e["url"] == "size" {
            let key = e.as_object().unwrap().keys().find(|k| k.starts_with("value")).unwrap().clone();
            e[key.as_str()] = json!(0);
        }
    }
    let r = c.put(node.url(&format!("/Binary/{big_id}"))).header("content-type", FHIR).body(resave.to_string()).send().unwrap();
    assert_eq!(r.status(), 200, "re-saving the current reference is allowed");
    assert_eq!(size_of(&json(r)), real_size, "the forged size is not stored");
    let (_, ct, body) = raw_get(&c, &node.url(&format!("/Binary/{big_id}")));
    assert_eq!(ct, "image/x-png");
    assert!(body == big2);
    let mut stale = v1.clone();
    stale["contentType"] = json!("image/png");
    outcome(c.put(node.url(&format!("/Binary/{big_id}"))).header("content-type", FHIR).body(stale.to_string()).send().unwrap(), 400, EXT);

    // Limits and what needs S3.
    outcome(post_raw(&c, &node.url("/Binary"), "application/octet-stream", bytes(9 * 1024 * 1024, 3)), 413, "binary.max_bytes");
    let r = c.post(node.url("/Binary")).header("content-type", FHIR).header("x-kiln-presigned", "put").body(json!({"resourceType": "Binary", "contentType": "application/pdf"}).to_string()).send().unwrap();
    outcome(r, 501, "[s3]");
    outcome(c.get(node.url(&format!("/Binary/{big_id}"))).header("x-kiln-presigned", "get").send().unwrap(), 501, "[s3]");
    outcome(c.post(node.url("/Binary")).header("content-type", "text/plain").header("x-security-context", "not a ref").body("x").send().unwrap(), 400, "X-Security-Context");
    // Deleted: raw reads say so like other reads.
    assert_eq!(c.delete(node.url(&format!("/Binary/{id}"))).send().unwrap().status(), 204);
    outcome(c.get(node.url(&format!("/Binary/{id}"))).send().unwrap(), 410, "deleted");
}

mod sha2_hex {
    /// SHA-256 of `data` in hex, through the `sha256sum` of the machine (no hashing crate here).
    pub fn sha256_hex(data: &[u8]) -> String {
        use std::io::Write;
        let mut child = std::process::Command::new("sha256sum").stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).spawn().expect("sha256sum");
        child.stdin.take().unwrap().write_all(data).unwrap();
        let out = child.wait_with_output().unwrap();
        String::from_utf8(out.stdout).unwrap().split_whitespace().next().unwrap().to_string()
    }
}

fn s3_head(cfg: &kiln::config::S3Config, key: &str) -> Option<u64> {
    let s3 = kiln::objects::S3::open(cfg).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async { s3.head(&s3.key(key)).await.ok().map(|m| m.size) })
}

#[test]
fn binary_large_content_in_s3_with_presigned_urls() {
    let s3 = S3Server::start();
    let cfg = s3.s3_config();
    let node = TestNode::start_with(FhirVersion::R4, |c| c.s3 = Some(cfg.clone()));
    let c = client();
    // Small content stays inline (store = "auto").
    let r = post_raw(&c, &node.url("/Binary"), "text/plain", b"tiny".to_vec());
    assert!(json(r)["data"].is_string());
    // 5 MiB goes to the bucket: a multipart upload, visible in s3s-fs's folder and through S3.
    let big = bytes(5 * 1024 * 1024 + 1, 4);
    let r = post_raw(&c, &node.url("/Binary"), "application/dicom", big.clone());
    assert_eq!(r.status(), 201);
    let v1 = json(r);
    assert!(v1.get("data").is_none(), "{v1}");
    assert_eq!(ext_value(&v1, "store"), "s3");
    let key = ext_value(&v1, "key").as_str().unwrap().to_string();
    assert_eq!(s3_head(&cfg, &key), Some(big.len() as u64));
    assert!(s3.object_path(&key).exists(), "the object is in the s3s-fs data folder");
    let id = v1["id"].as_str().unwrap().to_string();
    let (status, ct, body) = raw_get(&c, &node.url(&format!("/Binary/{id}")));
    assert_eq!((status, ct.as_str()), (200, "application/dicom"));
    assert!(body == big);
    // Update and vread.
    let big2 = bytes(6 * 1024 * 1024, 5);
    let r = c.put(node.url(&format!("/Binary/{id}"))).header("content-type", "application/dicom").body(big2.clone()).send().unwrap();
    assert_eq!(r.status(), 200);
    let key2 = ext_value(&json(r), "key").as_str().unwrap().to_string();
    assert_ne!(key, key2);
    assert!(raw_get(&c, &node.url(&format!("/Binary/{id}"))).2 == big2);
    assert!(raw_get(&c, &node.url(&format!("/Binary/{id}/_history/1"))).2 == big);

    // Presigned PUT: the resource first, then the content straight to the bucket.
    let r = c.post(node.url("/Binary")).header("content-type", FHIR).header("x-kiln-presigned", "put").body(json!({"resourceType": "Binary", "contentType": "application/pdf"}).to_string()).send().unwrap();
    assert_eq!(r.status(), 201);
    let created = json(r);
    let put_url = created["presignedPutUrl"].as_str().expect("presignedPutUrl").to_string();
    let pid = created["id"].as_str().unwrap().to_string();
    let stored = fhir_get(&c, &node.url(&format!("/Binary/{pid}")));
    assert!(stored.get("presignedPutUrl").is_none(), "the URL is not part of the stored resource");
    // Before the upload: raw reads say the object does not exist; FHIR reads have no data.
    outcome(c.get(node.url(&format!("/Binary/{pid}"))).send().unwrap(), 404, "does not exist");
    assert!(fhir_get(&c, &node.url(&format!("/Binary/{pid}"))).get("data").is_none());
    let content = bytes(300 * 1024, 6);
    let r = c.put(&put_url).body(content.clone()).send().unwrap();
    assert!(r.status().is_success(), "presigned PUT: {}", r.status());
    let (status, ct, body) = raw_get(&c, &node.url(&format!("/Binary/{pid}")));
    assert_eq!((status, ct.as_str()), (200, "application/pdf"));
    assert!(body == content);
    // Below binary.json_data_max_bytes a FHIR read carries the content as data.
    let as_fhir = fhir_get(&c, &node.url(&format!("/Binary/{pid}")));
    assert!(as_fhir["data"].as_str().is_some_and(|d| d.len() > 300 * 1024));
    // Presigned GET.
    let r = c.get(node.url(&format!("/Binary/{pid}"))).header("x-kiln-presigned", "get").send().unwrap();
    assert_eq!(r.status(), 200);
    let get_url = json(r)["presignedGetUrl"].as_str().expect("presignedGetUrl").to_string();
    assert!(c.get(&get_url).send().unwrap().bytes().unwrap().to_vec() == content);
    // Same length, one hex digit changed.
    let at = get_url.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let flipped = if &get_url[at..at + 1] == "0" { "1" } else { "0" };
    let tampered = format!("{}{flipped}{}", &get_url[..at], &get_url[at + 1..]);
    assert_eq!(c.get(&tampered).send().unwrap().status(), 403, "the bucket checks the signature");
    // Inline content has no object to presign.
    let r = post_raw(&c, &node.url("/Binary"), "text/plain", b"small".to_vec());
    let small_id = json(r)["id"].as_str().unwrap().to_string();
    outcome(c.get(node.url(&format!("/Binary/{small_id}"))).header("x-kiln-presigned", "get").send().unwrap(), 400, "inline");

    // redirect_reads and store = "s3": another node on the same bucket.
    let cfg2 = cfg.clone();
    let redirecting = TestNode::start_with(FhirVersion::R4, move |c| {
        c.s3 = Some(cfg2);
        c.binary.redirect_reads = true;
        c.binary.store = StoreChoice::S3;
    });
    let r = post_raw(&c, &redirecting.url("/Binary"), "text/plain", b"always in s3".to_vec());
    let v = json(r);
    assert_eq!(ext_value(&v, "store"), "s3", "store = s3 puts even small content in the bucket");
    let no_follow = reqwest::blocking::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let r = no_follow.get(redirecting.url(&format!("/Binary/{}", v["id"].as_str().unwrap()))).send().unwrap();
    assert_eq!(r.status(), 307);
    let location = header(&r, "location");
    assert!(location.contains("X-Amz-Signature"), "{location}");
    assert_eq!(c.get(&location).send().unwrap().text().unwrap(), "always in s3");
}

#[test]
fn binary_s3_failures_are_clear_outcomes_and_the_node_keeps_serving() {
    let s3 = S3Server::start();
    let wrong = s3.s3_config_with_secret("not-the-secret");
    let node = TestNode::start_with(FhirVersion::R4, move |c| {
        c.s3 = Some(wrong);
        c.binary.store = StoreChoice::S3;
    });
    let c = client();
    let diag = outcome(post_raw(&c, &node.url("/Binary"), "text/plain", b"x".to_vec()), 502, "refused the credentials (403)");
    assert!(diag.contains(&s3.bucket) && diag.contains(&s3.endpoint()), "{diag}");
    let r = c.post(node.url("/Patient")).header("content-type", FHIR).body(json!({"resourceType": "Patient"}).to_string()).send().unwrap();
    assert_eq!(r.status(), 201, "the node keeps serving");
    // A bucket that does not answer at all (port 9, discard: nothing listens there; a port
    // picked free could be taken by another test meanwhile).
    let mut down = s3.s3_config();
    down.endpoint = Some("http://127.0.0.1:9".into());
    let node2 = TestNode::start_with(FhirVersion::R4, move |c| {
        c.s3 = Some(down);
        c.binary.store = StoreChoice::S3;
    });
    let started = std::time::Instant::now();
    outcome(post_raw(&c, &node2.url("/Binary"), "text/plain", b"x".to_vec()), 503, "unreachable");
    assert!(started.elapsed() < Duration::from_secs(40), "answered in {:?}", started.elapsed());
    assert_eq!(c.get(node2.url("/metadata")).send().unwrap().status(), 200);
}

#[test]
fn binary_cluster_without_s3_refuses_large_content() {
    let cluster = TestCluster::start(3);
    let leader = cluster.leader();
    let follower = cluster.ids().into_iter().find(|i| *i != leader).unwrap();
    let c = client();
    let diag = outcome(post_raw(&c, &cluster.url(follower, "/Binary"), "application/octet-stream", bytes(1024 * 1024, 7)), 413, "[s3]");
    assert!(diag.contains("would not survive"), "{diag}");
    // Small content is replicated inline, readable raw on every node.
    let r = post_raw(&c, &cluster.url(follower, "/Binary"), "text/plain", b"replicated".to_vec());
    assert_eq!(r.status(), 201);
    let id = json(r)["id"].as_str().unwrap().to_string();
    cluster.converged(&cluster.ids(), 30);
    for n in cluster.ids() {
        let (status, _, body) = raw_get(&c, &cluster.url(n, &format!("/Binary/{id}")));
        assert_eq!((status, body.as_slice()), (200, b"replicated".as_slice()), "node {n}");
    }
}

#[test]
fn binary_cluster_with_s3_serves_large_content_from_every_node() {
    let s3 = S3Server::start();
    let cfg = s3.s3_config();
    let cluster = TestCluster::start_with(3, |c| c.s3 = Some(cfg.clone()));
    let leader = cluster.leader();
    let follower = cluster.ids().into_iter().find(|i| *i != leader).unwrap();
    let c = client();
    let big = bytes(3 * 1024 * 1024, 10);
    let r = post_raw(&c, &cluster.url(follower, "/Binary"), "application/octet-stream", big.clone());
    assert_eq!(r.status(), 201);
    let v = json(r);
    assert!(v.get("data").is_none(), "only the reference goes through the Raft log: {v}");
    let id = v["id"].as_str().unwrap().to_string();
    cluster.converged(&cluster.ids(), 30);
    for n in cluster.ids() {
        let (status, _, body) = raw_get(&c, &cluster.url(n, &format!("/Binary/{id}")));
        assert_eq!(status, 200, "node {n}");
        assert!(body == big, "node {n} serves the bytes from the bucket");
    }
}

#[test]
fn binary_raw_paths_use_the_same_rights_checks() {
    let keys = tempfile::tempdir().unwrap();
    let node = super::auth::secured_node(keys.path());
    let c = client();
    let scoped = |s: &str| super::auth::token(json!({"scope": s}));
    let (writer, reader, other) = (scoped("system/Binary.cruds"), scoped("system/Binary.rs"), scoped("system/Patient.cruds"));
    let big = bytes(1024 * 1024, 8);
    outcome(post_raw(&c, &node.url("/Binary"), "image/png", big.clone()), 401, "");
    let r = c.post(node.url("/Binary")).bearer_auth(&other).header("content-type", "image/png").body(big.clone()).send().unwrap();
    outcome(r, 403, "Binary");
    let blobs = node.cfg.data_dir.join("blobs").join("binary");
    assert!(!blobs.exists() || std::fs::read_dir(&blobs).unwrap().next().is_none(), "nothing is stored for a caller who may not write");
    let r = c.post(node.url("/Binary")).bearer_auth(&writer).header("content-type", "image/png").body(big.clone()).send().unwrap();
    assert_eq!(r.status(), 201);
    let id = json(r)["id"].as_str().unwrap().to_string();
    let r = c.get(node.url(&format!("/Binary/{id}"))).bearer_auth(&reader).send().unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().unwrap().to_vec() == big);
    outcome(c.get(node.url(&format!("/Binary/{id}/_history/1"))).bearer_auth(&other).send().unwrap(), 403, "Binary");
    outcome(c.put(node.url(&format!("/Binary/{id}"))).bearer_auth(&reader).header("content-type", "image/png").body(b"x".to_vec()).send().unwrap(), 403, "Binary");
}

#[test]
fn binary_stu3_head_and_conditional_raw_create() {
    let node = TestNode::start_with(FhirVersion::Stu3, |_| {});
    let c = client();
    let r = c.post(node.url("/Binary")).header("content-type", "text/csv").header("if-none-exist", "_id=nothing-here").body("a,b\n1,2\n").send().unwrap();
    assert_eq!(r.status(), 201);
    let created = json(r);
    assert!(created["content"].is_string(), "STU3 keeps inline content in Binary.content: {created}");
    let id = created["id"].as_str().unwrap().to_string();
    // A conditional create that matches writes nothing and answers the existing Binary.
    let r = c.post(node.url("/Binary")).header("content-type", "text/csv").header("if-none-exist", format!("_id={id}")).body("other").send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(json(r)["id"], id.as_str());
    let r = c.head(node.url(&format!("/Binary/{id}"))).send().unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "content-type"), "text/csv");
    // Large STU3 content: the extension sits on _content.
    let big = bytes(600 * 1024, 9);
    let v = json(post_raw(&c, &node.url("/Binary"), "application/zip", big.clone()));
    assert!(v["_content"]["extension"][0]["url"] == EXT, "{v}");
    let big_id = v["id"].as_str().unwrap();
    let r = c.head(node.url(&format!("/Binary/{big_id}"))).send().unwrap();
    assert_eq!(header(&r, "content-length"), big.len().to_string());
    assert!(raw_get(&c, &node.url(&format!("/Binary/{big_id}"))).2 == big);
    // A forged reference inside a transaction bundle is refused like one in a plain write.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": {"resourceType": "Binary", "contentType": "application/zip", "_content": v["_content"].clone()}, "request": {"method": "POST", "url": "Binary"}}]});
    let r = c.post(node.url("/")).header("content-type", FHIR).body(bundle.to_string()).send().unwrap();
    outcome(r, 400, EXT);
}

/// Files under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir).map(|rd| rd.flatten().map(|e| if e.path().is_dir() { files_under(&e.path()) } else { 1 }).sum()).unwrap_or(0)
}

#[test]
fn binary_upload_cut_off_by_the_client_leaves_nothing_in_the_bucket() {
    use std::io::Write;
    let s3 = S3Server::start();
    let cfg = s3.s3_config();
    let node = TestNode::start_with(FhirVersion::R4, |c| c.s3 = Some(cfg.clone()));
    let data = s3.dir.path().join("data");
    let mut conn = std::net::TcpStream::connect(kiln_tests::host_port(&node.base)).unwrap();
    write!(conn, "POST /Binary HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n", 20 * 1024 * 1024).unwrap();
    conn.write_all(&bytes(12 * 1024 * 1024, 11)).unwrap();
    let started = std::time::Instant::now();
    while files_under(&data) == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the multipart upload never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(conn);
    let started = std::time::Instant::now();
    while files_under(&data) > 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "the parts of an abandoned upload stay in the bucket");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The objects API the Binary and export code share, straight against s3s-fs.
#[test]
fn binary_objects_api_against_s3s_fs() {
    let server = S3Server::start();
    let mut cfg = server.s3_config();
    cfg.prefix = "kiln/test".into();
    let s3 = kiln::objects::S3::open(&cfg).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let wrong = kiln::objects::S3::open(&server.s3_config_with_secret("wrong-secret")).unwrap();
    rt.block_on(async {
        s3.check().await.unwrap();
        let refused = wrong.check().await.unwrap_err();
        assert!(matches!(refused, kiln::objects::ObjectsError::Credentials { status: 403, .. }), "{refused}");
        let small = s3.key("export/job1/a.ndjson");
        assert_eq!(small.as_ref(), "kiln/test/export/job1/a.ndjson");
        let mut w = s3.writer(small.clone());
        w.write(b"{\"a\":1}\n").await.unwrap();
        assert_eq!(w.finish().await.unwrap(), 8);
        let large = s3.key("export/job1/b.ndjson");
        let data = bytes(kiln::objects::PART_BYTES * 2 + 5, 12);
        let mut w = s3.writer(large.clone());
        for chunk in data.chunks(1 << 20) {
            w.write(chunk).await.unwrap();
        }
        w.finish().await.unwrap();
        assert_eq!(s3.head(&large).await.unwrap().size, data.len() as u64);
        let url = s3.presign_get(&large, Duration::from_secs(60)).await.unwrap();
        let got = reqwest::get(&url).await.unwrap().bytes().await.unwrap();
        assert!(got.as_ref() == data.as_slice());
        let put = s3.presign_put(&s3.key("export/job1/c.ndjson"), Duration::from_secs(60)).await.unwrap();
        assert!(reqwest::Client::new().put(&put).body("c").send().await.unwrap().status().is_success());
        let other = s3.key("export/job10/keep");
        let mut w = s3.writer(other.clone());
        w.write(b"x").await.unwrap();
        w.finish().await.unwrap();
        assert_eq!(s3.delete_prefix(&s3.key("export/job1")).await.unwrap(), 3, "a, b and c; not job10");
        assert!(matches!(s3.head(&small).await, Err(kiln::objects::ObjectsError::NotFound { .. })));
        assert!(s3.head(&other).await.is_ok());
    });
    assert!(server.object_path("kiln/test/export/job10/keep").exists());
}

#[test]
fn a_download_nobody_reads_is_hung_up_on_after_the_stall() {
    use std::io::{Read as _, Write as _};
    let node = TestNode::start_with(FhirVersion::R4, |c| {
        c.binary.max_bytes = 64 * 1024 * 1024;
        c.limits.stall_timeout_ms = 2000;
    });
    let c = client();
    // 48 MiB in the blob folder: far more than the socket buffers take, so a client that reads
    // nothing leaves the node with the rest of the stream.
    let big = bytes(48 * 1024 * 1024, 7);
    let r = post_raw(&c, &node.url("/Binary"), "application/octet-stream", big.clone());
    assert_eq!(r.status(), 201);
    let id = json(r)["id"].as_str().unwrap().to_string();
    let mut s = std::net::TcpStream::connect(kiln_tests::host_port(&node.base)).unwrap();
    write!(s, "GET /Binary/{id} HTTP/1.1\r\nHost: x\r\nAccept: application/octet-stream\r\n\r\n").unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    // The client stops reading; after the stall (2 s) the node closes the connection, so what
    // the client can still read ends well short of the 48 MiB.
    std::thread::sleep(Duration::from_millis(4000));
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let (mut got, mut buf) = (0usize, vec![0u8; 1 << 20]);
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(k) => got += k,
        }
    }
    assert!(got < big.len() / 2, "the stalled download was not cut: {got} bytes read after the pause");
    // A client that reads gets all of it.
    assert!(raw_get(&c, &node.url(&format!("/Binary/{id}"))).2 == big);
}
