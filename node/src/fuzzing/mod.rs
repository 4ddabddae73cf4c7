//! Entry points shared by the fuzz targets in `node/fuzz/` (cargo-fuzz, nightly) and the corpus
//! replay test that CI runs on stable: each takes arbitrary bytes and must never panic, hang or
//! allocate without bound.
//!
//! | target | input | what it drives |
//! |---|---|---|
//! | [`resource`] | a JSON resource | schema validation, `meta` strip / stamp, `_summary`, index rows |
//! | [`query`] | flag byte + a query string | search parsing, `_sort`, running it with a row budget, `_page` / `_count` paging, conditions |
//! | [`patch`] | a JSON Patch document | the op-count limit, bounded application to a fixed Patient |
//! | [`bundle`] | a Bundle, or a bincode command | entry checks, URL and reference handling, planning into a Bundle command, the leader's check of a forwarded command, and applying what passes |
//! | [`frame`] | peer-transport bytes | frame decoding, raft-rs protobuf messages, snapshot descriptors and chunks, forwarded commands |
//! | [`decimal`] | text | exact decimals, date search values, FHIR and HTTP dates |
//!
//! The fixtures (definitions, search registry, a small indexed state, a state machine for
//! bundles) are built once per process. Commands are applied to a state holding the same few
//! resources before each input (rebuilt after any input that wrote), so a failing input fails
//! again on its own. Besides "no panic", the harnesses assert properties the code documents
//! (index rows sorted and linear in the body's size, a patch result within its bound, decimal
//! keys ordered like the numbers, a checked command applying without a storage error).
//!
//! Fuzzing (nightly, from `node/`): `cargo install cargo-fuzz --locked`, then
//! `cargo +nightly fuzz run -O -a -s none <target> -- -max_total_time=300 -rss_limit_mb=2048 -timeout=10`;
//! new inputs land in `fuzz/corpus/<target>`. The committed corpus was minimized to what covers
//! the same edges with the fuzz binary itself: `fuzz/target/x86_64-unknown-linux-gnu/release/<target>
//! -set_cover_merge=1 -use_counters=0 NEW_DIR fuzz/corpus/<target>` (about 2,000 files in all;
//! plain `cargo fuzz cmin` keeps several times more). The replay test below runs on stable:
//! `cargo nextest run -p kiln fuzzing`.

mod fixtures;

use std::sync::OnceLock;

use fixtures::*;

use serde_json::Value;

use crate::actors::resource::prepare;
use crate::actors::WriteIntent;
use crate::consensus::transport::{read_frame, Frame};
use crate::fhir::{meta, references, Subset, SummaryMode};
use crate::http::bundle_plan::{self, Method};
use crate::http::{crud, dispatch, negotiate, patch as json_patch_http};
use crate::search::date_query::DateTest;
use crate::search::decimal::Decimal;
use crate::search::query::{self, Executor};
use crate::search::{cost, index, page, sort};
use crate::machine::command::{Action, BundleOp, Command, CommandV1};

/// Nesting depth limit used by the harnesses (the server's default `limits.max_depth`).
const MAX_DEPTH: usize = 64;
/// Rows one search may read in [`query`] (the harness's budget, below a condition's).
const QUERY_ROWS: u64 = 20_000;
/// Frame size limit of [`frame`].
const MAX_FRAME: usize = 1 << 20;
/// Result bound of [`patch`].
const PATCH_MAX_BYTES: usize = 1 << 20;
/// Plain Observations in the searched state besides the seed resources.
const FILLER_OBSERVATIONS: usize = 1_100;
/// Most bundle entries [`bundle`] plans (each may validate a resource).
const MAX_BUNDLE_ENTRIES: usize = 64;

/// A JSON value from fuzz bytes (serde_json limits nesting to 128 levels).
fn json(data: &[u8]) -> Option<Value> {
    serde_json::from_slice(data).ok()
}

/// A resource body: JSON → `Definitions::validate` and `search::index::rows` for its (known)
/// `resourceType`; then what storing and reading it does (meta strip and stamp, `_summary`).
pub fn resource(data: &[u8]) {
    let Some(mut value) = json(data) else { return };
    let f = fixtures();
    let Some(rtype) = value.get("resourceType").and_then(Value::as_str).and_then(|t| f.defs.resource_type(t).ok()) else { return };
    let valid = f.defs.validate(rtype, &value, MAX_DEPTH).is_ok();
    let rows = index::rows(&f.reg, rtype, &value);
    assert!(rows.windows(2).all(|w| w[0] < w[1]), "index rows are sorted and distinct");
    // Rows are written on every replica: their size must stay linear in the body's. The official
    // examples make at most 2.3 bytes of rows per body byte; a crafted body can make ~150 (short
    // codes that several parameters and composites index).
    let row_bytes: usize = rows.iter().map(Vec::len).sum();
    assert!(row_bytes <= 256 * data.len() + (64 << 10), "{} body bytes made {} rows of {row_bytes} bytes", data.len(), rows.len());
    let list = index::encode_list(&rows);
    assert_eq!(index::decode_list(&list).as_ref(), Some(&rows), "the reverse list decodes back");
    if valid {
        meta::strip_server_meta(&mut value);
        meta::stamp(&mut value, 1, 1_700_000_000_000_000);
        let summary = [SummaryMode::True, SummaryMode::Text, SummaryMode::Data, SummaryMode::Count][data.len() % 4];
        f.defs.subset(&mut value, &Subset { summary: Some(summary), elements: None });
    }
}

/// A search: the first byte picks the type (bit 0: Observation / Patient), lenient handling
/// (bit 1) and whether the search also runs as a condition (bit 2); the rest is the query string.
/// Parses it, parses `_sort`, runs it within a row budget on a small indexed state, pages the
/// result with `_count` / `_page`.
pub fn query(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let rtype: &'static str = if flags & 1 == 0 { "Observation" } else { "Patient" };
    let lenient = flags & 2 != 0;
    let qs = String::from_utf8_lossy(rest);
    let Ok(params) = serde_urlencoded::from_str::<Vec<(String, String)>>(&qs) else { return };
    let f = fixtures();
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let spec = sort::parse(&f.reg, rtype, param("_sort"));
    let Ok(q) = query::parse(&f.reg, rtype, &params, lenient) else { return };
    let _ = (q.uses_now(), q.uses_near());
    let state = search_state();
    let space = crate::store::space::Space::root(state.tree.clone());
    let ex = Executor { tree: &space, rtype };
    let found = cost::limited(QUERY_ROWS, || ex.run(&q));
    if let (Ok(ids), Ok(spec)) = (found, spec) {
        let count = param("_count").and_then(|c| c.parse::<usize>().ok()).unwrap_or(10).min(50);
        let _ = page::page(&space, vec![(rtype, ids)], &[spec], param("_page"), count, 1_000);
    }
    if flags & 4 != 0 {
        let _ = query::condition_ids(&f.reg, &space, rtype, &params);
    }
}

/// The Patient every [`patch`] input is applied to.
fn patch_target() -> &'static Value {
    static P: OnceLock<Value> = OnceLock::new();
    P.get_or_init(|| seed_resources().into_iter().find(|r| r["id"] == "p1").expect("p1"))
}

/// A JSON Patch document: `parse_patch` (at most 1,000 operations), then `apply_bounded` to a
/// fixed Patient with a 1 MiB result bound.
pub fn patch(data: &[u8]) {
    let Some(doc) = json(data) else { return };
    let Ok(ops) = json_patch_http::parse_patch(doc, 1000) else { return };
    let mut body = patch_target().clone();
    if json_patch_http::apply_bounded(&mut body, &ops, PATCH_MAX_BYTES, 64).is_ok() {
        // The bound counts strings unescaped; escaping at most sextuples a string (`\u0000`).
        let size = serde_json::to_vec(&body).map(|v| v.len()).unwrap_or(0);
        assert!(size <= 6 * PATCH_MAX_BYTES, "a patch result of {size} bytes passed the {PATCH_MAX_BYTES}-byte bound");
    }
}

/// `bundle_apply`'s view of a reference: a `urn:uuid:` / `urn:oid:` placeholder or a fullUrl of
/// the bundle is replaced; a conditional reference with no `=` is refused.
fn rewrite_reference(full_urls: &[String], r: &str) -> Result<Option<String>, String> {
    if full_urls.iter().any(|u| u == r) || r.starts_with("urn:uuid:") || r.starts_with("urn:oid:") {
        return Ok(Some(format!("Patient/{}", r.len())));
    }
    match r.split_once('?') {
        Some((_, q)) if !q.contains('=') => Err(format!("conditional reference {r} has no criteria")),
        _ => Ok(None),
    }
}

/// One entry of a Bundle body planned as `bundle_plan` does (without the server: a PATCH entry's
/// patch is applied to its own resource rather than to a stored version).
fn plan_entry(index: usize, e: &mut Value, full_urls: &[String]) -> Option<BundleOp> {
    let f = fixtures();
    let header = |e: &Value, name: &str| e.get("request").and_then(|r| r.get(name)).and_then(Value::as_str).map(String::from);
    let m = header(e, "method").as_deref().and_then(Method::parse);
    let url = header(e, "url").unwrap_or_default();
    let m = bundle_plan::check_entry(index, m, &url).ok()?;
    let _ = m.order();
    let (path, query) = url.split_once('?').unwrap_or((&url, ""));
    let path = path.trim_start_matches('/');
    let if_match = header(e, "ifMatch").and_then(|v| negotiate::parse_etag("ifMatch", &v).ok());
    if let Some(v) = header(e, "ifModifiedSince") {
        let _ = meta::parse_http_date(&v);
    }
    let full_url = e.get("fullUrl").and_then(Value::as_str).map(String::from);
    let mut resource = e.as_object_mut().and_then(|o| o.remove("resource"));
    if let Some(r) = &resource {
        let mut copy = r.clone();
        let _ = references::rewrite(&mut copy, &mut |s: &str, _| rewrite_reference(full_urls, s));
    }
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let condition = |q: &str, multiple: bool| crud::condition(q, "request.url", multiple).ok();
    let (rtype, action, id, cond, if_none_match) = match (m, segments.as_slice()) {
        (Method::Get | Method::Head, _) => {
            let _ = dispatch::Route::parse(path);
            return None;
        }
        (Method::Post, [t]) => {
            let cond = match header(e, "ifNoneExist") {
                Some(q) => Some(condition(crud::if_none_exist_query(&q), false)?),
                None => None,
            };
            (*t, Action::Create, None, cond, false)
        }
        (Method::Put, [t, id]) => (*t, Action::Update, Some(id.to_string()), None, header(e, "ifNoneMatch").as_deref().map(str::trim) == Some("*")),
        (Method::Put, [t]) if !query.is_empty() => {
            let mut cond = condition(query, false)?;
            let id = crud::conditional_update_id(resource.as_mut()?, &mut cond).ok()?;
            (*t, Action::Update, Some(id), Some(cond), false)
        }
        (Method::Delete, [t, id]) => (*t, Action::Delete, Some(id.to_string()), None, false),
        (Method::Delete, [t]) if !query.is_empty() => (*t, Action::Delete, Some(String::new()), Some(condition(query, true)?), false),
        (Method::Patch, [t, id]) => {
            // The JSON Patch rides in a Binary; apply it to the entry's own `patchTarget`.
            let doc = resource.as_ref().and_then(|r| r.get("patch")).cloned()?;
            let ops = json_patch_http::parse_patch(doc, 1000).ok()?;
            let mut body = e.get("patchTarget").cloned()?;
            json_patch_http::apply_bounded(&mut body, &ops, PATCH_MAX_BYTES, 64).ok()?;
            resource = Some(body);
            (*t, Action::Patch, Some(id.to_string()), None, false)
        }
        _ => return None,
    };
    let rtype = f.defs.resource_type(rtype).ok()?;
    // `crud::type_and_id` (it needs the server state): ids in the URL follow FHIR's id rule.
    if cond.is_none() && id.as_deref().is_some_and(|id| !crate::fhir::valid_id(id)) {
        return None;
    }
    let body = match action {
        Action::Delete => None,
        _ => Some(resource?),
    };
    let intent = WriteIntent { action, id, body, if_match, condition: None };
    let op = prepare(&f.defs, &f.settings, rtype, intent).ok()?;
    Some(BundleOp { index: index as u32, op, condition: cond, if_none_match, full_url })
}

/// What the leader does with a forwarded write: decode, check, restamp and re-encode it.
fn forwarded(data: &[u8]) -> Option<Command> {
    let cmd = Command::decode(data).ok()?;
    cmd.check(&fixtures().defs, MAX_DEPTH).ok()?;
    let cmd = cmd.with_ts(1_700_000_000_000_000);
    // What the leader proposes is what every replica decodes: it must still pass.
    let proposed = Command::decode(&cmd.encode()).expect("an encoded command decodes");
    assert!(proposed.check(&fixtures().defs, MAX_DEPTH).is_ok(), "a checked command fails its check once re-encoded");
    Some(proposed)
}

/// Two inputs in one: the bytes as a forwarded command (bincode: decode, the leader's check, and
/// when it passes, applied to a small state), and the bytes as a Bundle (JSON): entries planned
/// into a transaction or batch command, which is checked and applied the same way.
pub fn bundle(data: &[u8]) {
    if let Some(cmd) = forwarded(data) {
        apply_on_seed_state(&cmd);
    }
    let Some(mut body) = json(data) else { return };
    let _ = bundle_plan::has_unconditioned_patch(&body);
    let Some(obj) = body.as_object_mut() else { return };
    let atomic = obj.get("type").and_then(Value::as_str) != Some("batch");
    let Some(Value::Array(mut entries)) = obj.remove("entry") else { return };
    entries.truncate(MAX_BUNDLE_ENTRIES);
    let full_urls: Vec<String> = entries.iter().filter_map(|e| e.get("fullUrl").and_then(Value::as_str)).map(String::from).collect();
    let ops: Vec<BundleOp> = entries.iter_mut().enumerate().filter_map(|(i, e)| plan_entry(i, e, &full_urls)).collect();
    if ops.is_empty() {
        return;
    }
    let cmd = Command::V1(CommandV1::Bundle { ts_micros: 2_000_000, atomic, entries: ops });
    if cmd.check(&fixtures().defs, MAX_DEPTH).is_ok() {
        apply_on_seed_state(&cmd);
    }
}

/// Bytes from a peer: length-prefixed frames read until one fails, each Raft / Snapshot payload
/// parsed as a raft-rs `Message` (protobuf 2; a snapshot's stream descriptor too), each snapshot
/// chunk split into its pairs, each forwarded command decoded and checked; and the whole input
/// as a `Message`.
pub fn frame(data: &[u8]) {
    use protobuf::Message as _;
    let mut r = data;
    for _ in 0..64 {
        let Ok(frame) = read_frame(&mut r, MAX_FRAME) else { break };
        let _ = frame.kind();
        match frame {
            Frame::Raft(b) => {
                let _ = raft::prelude::Message::parse_from_bytes(&b);
            }
            Frame::Snapshot(b) => {
                // The stream a snapshot message names (node.rs, before stepping it).
                if let Ok(m) = raft::prelude::Message::parse_from_bytes(&b) {
                    let _ = crate::store::snapshot::parse_descriptor(m.get_snapshot().get_data());
                }
            }
            Frame::SnapshotChunk { data, .. } => {
                if let Ok(pairs) = crate::store::snapshot::pairs(&data) {
                    assert_eq!(crate::store::snapshot::chunk_of(pairs), data, "a chunk re-encodes to its bytes");
                }
            }
            Frame::Forward { data, .. } => {
                let _ = forwarded(&data);
            }
            _ => {}
        }
    }
    if let Ok(m) = raft::prelude::Message::parse_from_bytes(data) {
        let _ = m.write_to_bytes();
    }
}

/// Text as a decimal (exact and saturating: range, key, display, round trips) and as date
/// search values and dates; two numbers separated by a space are also compared.
pub fn decimal(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let exact = Decimal::parse(s);
    let saturated = Decimal::parse_saturating(s);
    if let Some(d) = exact {
        assert_eq!(saturated.map(|x| (x.mantissa, x.scale)), Some((d.mantissa, d.scale)), "exact values saturate to themselves: {s:?}");
        // Display writes every digit, so it may exceed what parse accepts (`1e38`); what parses
        // back is the same value at the same scale.
        let text = d.to_string();
        if let Some(back) = Decimal::parse(&text) {
            assert!((back.mantissa, back.scale) == (d.mantissa, d.scale), "{s:?} → {text:?} → {back:?}");
        }
        if let Some((lo, hi)) = d.implicit_range() {
            assert!(lo < d && d < hi, "{s:?}: implicit range {lo}..{hi}");
        }
    }
    for d in [exact, saturated].into_iter().flatten() {
        let key = d.key();
        let _ = (d.to_f64(), d.to_string(), d.implicit_range());
        let from_key = Decimal::from_key(&key).expect("16 bytes");
        assert_eq!(from_key.key(), key, "{s:?}: a key decodes to the same key");
        assert!(from_key <= d, "{s:?}: keys round toward negative infinity ({from_key} > {d})");
    }
    if let Some((a, b)) = s.split_once(' ') {
        if let (Some(x), Some(y)) = (Decimal::parse_saturating(a), Decimal::parse_saturating(b)) {
            assert_eq!(x.cmp(&y), y.cmp(&x).reverse(), "{a:?} vs {b:?}");
            if x < y {
                assert!(x.key() <= y.key(), "{a:?} < {b:?} but their keys are in the other order");
            }
        }
    }
    let _ = DateTest::parse("date", s).map(|t| t.matches(0, 1));
    let _ = meta::parse_fhir_range(s);
    let _ = meta::parse_fhir_datetime(s);
    let _ = meta::parse_http_date(s);
}

#[cfg(test)]
mod tests {
    //! Replays every committed corpus file of each target through its harness, then runs a
    //! fixed number of mutated corpus inputs (fixed seed): a quick stand-in for fuzzing that runs
    //! on stable, in CI, and tries the same inputs however loaded the machine is.

    use std::path::PathBuf;
    use std::time::Instant;

    /// Mutated inputs per target.
    const MUTATIONS: usize = 3_000;

    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            if n == 0 { 0 } else { (self.next() % n as u64) as usize }
        }
    }

    /// Bytes that matter to the targets' grammars.
    const TOKENS: &[&[u8]] = &[
        b"{", b"}", b"[", b"]", b"\"", b",", b":", b"null", b"-", b"0", b"9", b"e", b"E", b".", b"1e999", b"-0.0",
        b"\"resourceType\":", b"\"reference\":\"", b"urn:uuid:", b"&", b"=", b"%", b"$", b"|", b"\\", b"_has:", b".",
        b":missing", b"ge", b"ap", b"T", b"Z", b"+", b"\xff", b"\0",
    ];

    fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
        for _ in 0..1 + rng.below(4) {
            let len = input.len();
            match rng.below(7) {
                0 if len > 0 => {
                    let i = rng.below(len);
                    input[i] ^= 1 << rng.below(8);
                }
                1 if len > 0 => {
                    let i = rng.below(len);
                    input[i] = rng.next() as u8;
                }
                2 => {
                    let i = rng.below(len + 1);
                    let t = TOKENS[rng.below(TOKENS.len())];
                    input.splice(i..i, t.iter().copied());
                }
                3 if len > 0 => {
                    let i = rng.below(len);
                    let n = 1 + rng.below((len - i).min(16));
                    input.drain(i..i + n);
                }
                4 if len > 0 => {
                    // Repeat a slice (nesting, long runs).
                    let i = rng.below(len);
                    let n = 1 + rng.below((len - i).min(64));
                    let copy: Vec<u8> = input[i..i + n].to_vec();
                    let at = rng.below(len + 1);
                    input.splice(at..at, copy);
                }
                5 => {
                    // Splice: a prefix of this input, a suffix of another.
                    let other = &corpus[rng.below(corpus.len())];
                    let cut = rng.below(len + 1);
                    let from = rng.below(other.len() + 1);
                    input.truncate(cut);
                    input.extend_from_slice(&other[from..]);
                }
                _ => {
                    let i = rng.below(len + 1);
                    let b = rng.next() as u8;
                    input.insert(i, b);
                }
            }
        }
        input.truncate(64 * 1024);
    }

    fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        files.into_iter().map(|p| { let b = std::fs::read(&p).expect("corpus file"); (p, b) }).collect()
    }

    fn shown(input: &[u8]) -> String {
        let s: String = input.iter().take(4096).flat_map(|b| std::ascii::escape_default(*b)).map(char::from).collect();
        if input.len() > 4096 { format!("{s}… ({} bytes)", input.len()) } else { s }
    }

    fn replay(target: &str, seed: u64, harness: fn(&[u8])) {
        let files = corpus(target);
        assert!(!files.is_empty(), "fuzz/corpus/{target} is empty");
        for (path, bytes) in &files {
            if std::panic::catch_unwind(|| harness(bytes)).is_err() {
                panic!("{target}: corpus file {} fails", path.display());
            }
        }
        let inputs: Vec<Vec<u8>> = files.into_iter().map(|(_, b)| b).collect();
        let mut rng = Rng(seed);
        let start = Instant::now();
        let mut n = 0;
        while n < MUTATIONS {
            let mut input = inputs[rng.below(inputs.len())].clone();
            mutate(&mut rng, &mut input, &inputs);
            if std::panic::catch_unwind(|| harness(&input)).is_err() {
                panic!("{target}: mutation {n} (seed {seed:#x}) fails on input b\"{}\"", shown(&input));
            }
            n += 1;
        }
        eprintln!("{target}: {} corpus inputs, {n} mutations in {:?}", inputs.len(), start.elapsed());
    }

    #[test]
    fn fuzz_resource_corpus() {
        replay("resource", 0x7265_736f_7572_6365, super::resource);
    }

    #[test]
    fn fuzz_query_corpus() {
        replay("query", 0x0071_7565_7279, super::query);
    }

    #[test]
    fn fuzz_patch_corpus() {
        replay("patch", 0x0070_6174_6368, super::patch);
    }

    #[test]
    fn fuzz_bundle_corpus() {
        replay("bundle", 0x6275_6e64_6c65, super::bundle);
    }

    #[test]
    fn fuzz_frame_corpus() {
        replay("frame", 0x0066_7261_6d65, super::frame);
    }

    #[test]
    fn fuzz_decimal_corpus() {
        replay("decimal", 0x0064_6563_696d_616c, super::decimal);
    }
}
