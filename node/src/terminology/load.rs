//! Where definitions come from. Shipped: `schemas/{r4,stu3}/terminology.json` (made by
//! `schemas/extract-terminology.py`), compiled into the binary and parsed once per FHIR version on
//! first use ([`shipped`]). Stored: CodeSystem / ValueSet resources in the node's state, found
//! through the `url` search index ([`Source`]); they are replicated, so every node resolves a url
//! alike at a given applied index.
//!
//! Precedence: a stored resource with the url wins over the shipped one (users can correct or
//! extend the official definitions). Several stored resources with one url: a `|version` picks
//! among them; otherwise that is an error (never an arbitrary choice).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use serde_json::Value;
use sha2::Digest;

use super::model::{CodeSystem, ValueSet};
use super::TerminologyError;
use crate::fhir::FhirVersion;
use crate::index::cost;
use crate::index::rows::{exact_prefix, live_row};
use crate::index::posting;
use crate::store::space::Space;
use crate::store::{keys, Current, VersionRecord};

fn source(version: FhirVersion) -> &'static str {
    match version {
        FhirVersion::R4 => include_str!("../../../schemas/r4/terminology.json"),
        FhirVersion::Stu3 => include_str!("../../../schemas/stu3/terminology.json"),
    }
}

/// Identifies the shipped definitions of `version` (part of the search registry's fingerprint,
/// which the cluster pins: replicas with other definitions would decide conditions differently).
pub fn fingerprint(version: FhirVersion) -> String {
    hex::encode(&sha2::Sha256::digest(source(version).as_bytes())[..8])
}

/// The definitions compiled into the binary for one FHIR version.
#[derive(Default)]
pub struct Shipped {
    pub code_systems: HashMap<String, Arc<CodeSystem>>,
    pub value_sets: HashMap<String, Arc<ValueSet>>,
}

impl Shipped {
    /// Parses the file one line (one resource) at a time, so only one resource's JSON tree is
    /// in memory beside what is kept.
    fn parse(text: &str) -> Result<Shipped, TerminologyError> {
        let mut out = Shipped::default();
        for line in text.lines().map(|l| l.trim_end_matches(',')).filter(|l| l.starts_with("{\"resourceType\"")) {
            let r: Value = serde_json::from_str(line).map_err(|e| TerminologyError::Invalid(e.to_string()))?;
            match r["resourceType"].as_str() {
                Some("CodeSystem") => {
                    let cs = CodeSystem::from_json(&r)?;
                    out.code_systems.insert(cs.url.clone(), Arc::new(cs));
                }
                Some("ValueSet") => {
                    let vs = ValueSet::from_json(&r)?;
                    let url = vs.url.clone().ok_or_else(|| TerminologyError::Invalid("a shipped ValueSet without url".into()))?;
                    out.value_sets.insert(url, Arc::new(vs));
                }
                _ => {}
            }
        }
        Ok(out)
    }
}

static R4: OnceLock<Shipped> = OnceLock::new();
static STU3: OnceLock<Shipped> = OnceLock::new();

/// The shipped definitions of `version`, parsed on first use.
pub fn shipped(version: FhirVersion) -> &'static Shipped {
    let cell = match version {
        FhirVersion::R4 => &R4,
        FhirVersion::Stu3 => &STU3,
    };
    cell.get_or_init(|| {
        let (started, rss_before) = (std::time::Instant::now(), rss_kb());
        let s = Shipped::parse(source(version)).expect("the committed terminology file parses");
        // Approximate: other threads allocate meanwhile (the figure is for docs/benchmarks.md).
        let rss_growth_kb = rss_kb().zip(rss_before).map(|(after, before)| after.saturating_sub(before));
        tracing::info!(?version, code_systems = s.code_systems.len(), value_sets = s.value_sets.len(), ms = started.elapsed().as_millis() as u64, ?rss_growth_kb, "shipped terminology loaded");
        s
    })
}

/// This process's resident set in KiB (Linux; `None` elsewhere).
fn rss_kb() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4)
}

/// Splits a canonical `url|version`.
pub fn split_canonical(c: &str) -> (&str, Option<&str>) {
    match c.split_once('|') {
        Some((u, v)) if !v.is_empty() => (u, Some(v)),
        Some((u, _)) => (u, None),
        None => (c, None),
    }
}

/// Definitions as one node sees them: the shipped ones of its FHIR version and the resources in
/// one tenant's part of its state.
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub version: FhirVersion,
    pub tree: &'a Space,
}

/// Stored definitions parsed before, by the SHA-256 of their type and JSON: a resource version's content
/// never changes, so a hit is exactly what parsing would give (on every node alike). Bounded by
/// [`CACHE_WEIGHT`] concepts and codes; emptied when full.
#[derive(Default)]
struct Cache {
    parsed: HashMap<[u8; 32], Parsed>,
    weight: usize,
}

#[derive(Clone)]
enum Parsed {
    CodeSystem(Arc<CodeSystem>),
    ValueSet(Arc<ValueSet>),
}

const CACHE_WEIGHT: usize = 500_000;

static CACHE: OnceLock<parking_lot::Mutex<Cache>> = OnceLock::new();

/// `json` parsed with `parse`, from the cache when it was parsed before.
fn parsed(rtype: &str, json: &[u8], parse: impl FnOnce(&Value) -> Result<Parsed, TerminologyError>) -> Result<Parsed, TerminologyError> {
    let key: [u8; 32] = sha2::Sha256::new().chain_update(rtype).chain_update([0]).chain_update(json).finalize().into();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(p) = cache.lock().parsed.get(&key) {
        return Ok(p.clone());
    }
    let v: Value = serde_json::from_slice(json).map_err(|e| crate::store::StoreError::Corrupt(format!("a stored terminology resource: {e}")))?;
    let p = parse(&v)?;
    let weight = 1 + match &p {
        Parsed::CodeSystem(cs) => cs.concepts.len(),
        Parsed::ValueSet(vs) => vs.include.iter().chain(&vs.exclude).map(|i| i.concepts.len() + 1).sum::<usize>() + vs.contains.len(),
    };
    let mut c = cache.lock();
    if c.weight + weight > CACHE_WEIGHT {
        c.parsed.clear();
        c.weight = 0;
    }
    if weight <= CACHE_WEIGHT {
        c.weight += weight;
        c.parsed.insert(key, p.clone());
    }
    Ok(p)
}

impl Source<'_> {
    /// The current JSON of a live resource.
    fn raw(&self, rtype: &str, id: &str) -> Result<Option<VersionRecord>, TerminologyError> {
        cost::charge(2)?;
        let Some(cur) = self.tree.get(keys::current(rtype, id))? else { return Ok(None) };
        let cur = Current::decode(&cur)?;
        if cur.deleted {
            return Ok(None);
        }
        let Some(raw) = self.tree.get(keys::version(rtype, id, cur.version))? else { return Ok(None) };
        Ok(Some(VersionRecord::decode(raw)?))
    }

    /// The current body of a live resource.
    fn body(&self, rtype: &str, id: &str) -> Result<Option<Value>, TerminologyError> {
        let Some(rec) = self.raw(rtype, id)? else { return Ok(None) };
        let v = serde_json::from_slice(rec.body()).map_err(|e| crate::store::StoreError::Corrupt(format!("stored {rtype}/{id}: {e}")))?;
        Ok(Some(v))
    }

    /// The stored resource of `rtype` with this url (and version, when several have the url),
    /// parsed by `parse`.
    fn stored(&self, rtype: &'static str, url: &str, version: Option<&str>, parse: fn(&Value) -> Result<Parsed, TerminologyError>) -> Result<Option<Parsed>, TerminologyError> {
        let mut docs = roaring::RoaringBitmap::new();
        posting::scan(self.tree, &exact_prefix(rtype, "url", b'u', &[url]), &mut docs)?;
        if docs.is_empty() {
            return Ok(None);
        }
        let mut live = roaring::RoaringBitmap::new();
        posting::scan(self.tree, &live_row(rtype), &mut live)?;
        docs &= live;
        let mut found = Vec::new();
        for doc in &docs {
            cost::charge(1)?;
            let Some(id) = posting::doc_id(self.tree, rtype, doc)? else { continue };
            if let Some(rec) = self.raw(rtype, &id)? {
                found.push(parsed(rtype, rec.body(), parse)?);
            }
        }
        if found.len() > 1 {
            if let Some(v) = version {
                found.retain(|p| match p {
                    Parsed::CodeSystem(cs) => cs.version.as_deref() == Some(v),
                    Parsed::ValueSet(vs) => vs.version.as_deref() == Some(v),
                });
            }
        }
        match found.len() {
            0 | 1 => Ok(found.pop()),
            count => Err(TerminologyError::Ambiguous { rtype, url: url.to_string(), count }),
        }
    }

    /// The code system with `url` (`None`: neither stored nor shipped).
    pub fn code_system(&self, url: &str, version: Option<&str>) -> Result<Option<Arc<CodeSystem>>, TerminologyError> {
        if let Some(Parsed::CodeSystem(cs)) = self.stored("CodeSystem", url, version, |v| Ok(Parsed::CodeSystem(Arc::new(CodeSystem::from_json(v)?))))? {
            // Reading a stored code system is work in proportion to its concepts (charged
            // whether or not it was parsed before: the budget must not depend on a node's cache).
            cost::charge(cs.concepts.len() as u64)?;
            return Ok(Some(cs));
        }
        Ok(shipped(self.version).code_systems.get(url).cloned())
    }

    /// [`Self::code_system`], an error naming the system when Kiln does not hold it.
    pub fn need_code_system(&self, url: &str, version: Option<&str>) -> Result<Arc<CodeSystem>, TerminologyError> {
        self.code_system(url, version)?.ok_or_else(|| TerminologyError::NotHeld { system: url.to_string(), why: "no CodeSystem resource with this url is stored or shipped".into() })
    }

    /// [`Self::need_code_system`], which must also enumerate its codes (content = complete).
    pub fn complete_code_system(&self, url: &str, version: Option<&str>) -> Result<Arc<CodeSystem>, TerminologyError> {
        let cs = self.need_code_system(url, version)?;
        if !cs.enumerates() {
            let why = if cs.concepts.is_empty() { format!("its CodeSystem (content = {}) lists no concepts", cs.content) } else { format!("its CodeSystem has content = {}, not every code", cs.content) };
            return Err(TerminologyError::NotHeld { system: url.to_string(), why });
        }
        Ok(cs)
    }

    /// The value set with canonical `url[|version]`.
    pub fn value_set(&self, canonical: &str) -> Result<Arc<ValueSet>, TerminologyError> {
        let (url, version) = split_canonical(canonical);
        if let Some(Parsed::ValueSet(vs)) = self.stored("ValueSet", url, version, |v| Ok(Parsed::ValueSet(Arc::new(ValueSet::from_json(v)?))))? {
            return Ok(vs);
        }
        shipped(self.version).value_sets.get(url).cloned().ok_or_else(|| TerminologyError::UnknownValueSet(canonical.to_string()))
    }

    /// The stored resource `rtype/id` (instance-level operations).
    pub fn by_id(&self, rtype: &str, id: &str) -> Result<Value, TerminologyError> {
        self.body(rtype, id)?.ok_or_else(|| crate::store::StoreError::NotFound { rtype: rtype.into(), id: id.into() }.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_files_load_for_both_versions() {
        for (version, css, vss) in [(FhirVersion::R4, 1061, 1316), (FhirVersion::Stu3, 941, 1154)] {
            let (started, before) = (std::time::Instant::now(), rss_kb());
            let s = Shipped::parse(source(version)).unwrap();
            eprintln!("{version:?}: {} bytes parsed in {:?}, RSS {:?} KiB -> {:?} KiB", source(version).len(), started.elapsed(), before, rss_kb());
            assert_eq!((s.code_systems.len(), s.value_sets.len()), (css, vss), "{version:?}");
        }
        let r4 = shipped(FhirVersion::R4);
        let act = &r4.code_systems["http://terminology.hl7.org/CodeSystem/v3-ActCode"];
        let amb = act.find("AMB").unwrap();
        assert!(act.ancestors(amb).iter().any(|&i| act.concepts[i].code == "_ActEncounterCode"), "v3 ActCode nests AMB under _ActEncounterCode");
        assert!(r4.value_sets.contains_key("http://hl7.org/fhir/ValueSet/observation-status"));
        assert_eq!(split_canonical("u|1"), ("u", Some("1")));
        assert_eq!(split_canonical("u|"), ("u", None));
        assert_ne!(fingerprint(FhirVersion::R4), fingerprint(FhirVersion::Stu3));
    }
}
