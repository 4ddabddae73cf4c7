//! A Subscription's `criteria` (`Type?params`, a search Kiln supports) and the [`Matcher`] that
//! decides whether ONE resource version meets criteria.
//!
//! Matching reuses the search implementation whole instead of re-implementing its semantics:
//! the version's index rows for the parameters the criteria use are written into a scratch
//! index (a temporary sled tree private to the matcher, never replicated) exactly as the state
//! machine writes them, and each criteria runs there as a search; the version matches when its
//! doc number is in the answer. The rows are removed again afterwards.
//! So a subscription's criteria mean exactly what the same search means, and a version is judged
//! on its own content, not on whatever the resource became since. Criteria that read other
//! resources (chains, `_has`) are refused at validation: the scratch state holds one resource.
//! Every search runs within the condition row budget ([`crate::search::cost`]), and the scratch
//! tree (whose id → doc number table grows with the ids seen) is dropped and started anew every
//! [`RENEW_EVERY`] versions, so it stays small.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde_json::Value;

use super::SubscriptionError;
use crate::fhir::Definitions;
use crate::search::params::Registry;
use crate::search::posting;
use crate::search::index;
use crate::search::query::{self, Executor, Link, Query};
use crate::store::space::Space;
use crate::store::writes::Writes;

/// Longest criteria accepted.
pub const MAX_CRITERIA_BYTES: usize = 4096;
/// Memoized answers kept at most (then forgotten all at once).
pub const MAX_MEMO: usize = 100_000;
/// Versions the scratch tree takes before it is dropped and made anew.
pub const RENEW_EVERY: u64 = 5_000;

/// Parsed criteria: the type, the parameters as written, and the parsed search.
#[derive(Debug, Clone)]
pub struct Criteria {
    /// `Type?params` re-encoded: the same text for the same criteria (the matcher's memo key).
    pub key: Arc<str>,
    pub rtype: String,
    pub params: Vec<(String, String)>,
    pub query: Arc<Query>,
}

/// Parses `Type?name=value&...` (or a bare `Type`: every resource of the type) as a search of
/// this server, refusing what cannot be decided from one resource or is not a filter.
pub fn parse(reg: &Registry, defs: &Definitions, text: &str) -> Result<Criteria, SubscriptionError> {
    let bad = |m: String| Err(SubscriptionError::Criteria(m));
    let text = text.trim();
    if text.is_empty() {
        return bad("criteria is empty: it must be a search such as Observation?code=1234-5".into());
    }
    if text.len() > MAX_CRITERIA_BYTES {
        return bad(format!("criteria is longer than {MAX_CRITERIA_BYTES} bytes"));
    }
    let (rtype, query_text) = match text.split_once('?') {
        Some((t, q)) => (t, q),
        None => (text, ""),
    };
    let rtype = rtype.trim_start_matches('/');
    let Ok(rtype) = defs.resource_type(rtype) else {
        return bad(format!("criteria {text:?} does not start with a resource type of this server (Type?name=value)"));
    };
    let params: Vec<(String, String)> = match serde_urlencoded::from_str(query_text) {
        Ok(p) => p,
        Err(e) => return bad(format!("criteria parameters do not decode: {e}")),
    };
    if params.len() > 32 {
        return bad("criteria has more than 32 parameters".into());
    }
    if let Some((name, _)) = params.iter().find(|(n, _)| query::CONTROL.contains(&n.as_str())) {
        return bad(format!("criteria may not use the result parameter {name} (criteria filter resources; they do not shape a result)"));
    }
    let q = query::parse(reg, rtype, &params, false)?;
    if q.criteria.iter().any(|c| matches!(c.link, Some(Link::Chain(_) | Link::Has { .. } | Link::Compartment { .. }))) {
        return bad("chained parameters, _has and compartments are not supported in criteria: a notification is decided from the written resource alone".into());
    }
    let key = format!("{rtype}?{}", serde_urlencoded::to_string(&params).unwrap_or_default());
    Ok(Criteria { key: key.into(), rtype: rtype.to_string(), params, query: Arc::new(q) })
}

/// Decides whether versions meet criteria, on a scratch index (see the module documentation).
pub struct Matcher {
    reg: Arc<Registry>,
    /// (criteria key, hash of the version's rows for the criteria's parameters) → matched.
    memo: HashMap<(Arc<str>, u64), bool>,
    db: sled::Db,
    tree: sled::Tree,
    written: u64,
    renew_every: u64,
    generation: u64,
}

impl Matcher {
    /// A matcher with its own temporary sled database (removed when dropped).
    pub fn new(reg: Arc<Registry>) -> Result<Matcher, SubscriptionError> {
        let db = sled::Config::new().temporary(true).open().map_err(scratch_error)?;
        let tree = db.open_tree("scratch0").map_err(scratch_error)?;
        Ok(Matcher { reg, memo: HashMap::new(), db, tree, written: 0, renew_every: RENEW_EVERY, generation: 0 })
    }

    /// For each of `queries` (all of type `rtype`), whether the version `body` of `rtype/id`
    /// meets it. A body that is not a resource of the type meets nothing.
    ///
    /// Only the index rows of the parameters the queries use are written (the same rows the
    /// state machine writes for them, [`crate::search::index::rows_of`]), under the version's
    /// doc number, and removed again after the queries ran: the scratch index holds one
    /// resource at a time, and judging a write costs the extraction of those parameters only.
    ///
    /// Memoized: a search's answer for one resource is a function of that resource's rows of
    /// the parameters it uses (and of its id, for `_id`), so a version whose rows for those
    /// parameters were judged before by the same criteria gets the same answer without running
    /// the search. Criteria that depend on the clock (`ap`) are always run.
    pub fn matches(&mut self, rtype: &str, id: &str, body: &[u8], queries: &[(&Arc<str>, &Query)]) -> Result<Vec<bool>, SubscriptionError> {
        if queries.is_empty() {
            return Ok(Vec::new());
        }
        let Ok(value) = serde_json::from_slice::<Value>(body) else { return Ok(vec![false; queries.len()]) };
        if value.get("resourceType").and_then(Value::as_str) != Some(rtype) {
            return Ok(vec![false; queries.len()]);
        }
        if self.written >= self.renew_every {
            self.renew()?;
        }
        self.written += 1;
        let mut codes: Vec<String> = queries.iter().flat_map(|(_, q)| q.criteria.iter().map(|c| c.param.def.code.clone())).collect();
        codes.sort();
        codes.dedup();
        let mut rows = index::rows_of(&self.reg, rtype, &codes, &value);
        rows.push(index::live_row(rtype));
        // The memo key of each query: its rows (and the id when it uses _id).
        let mut out: Vec<Option<bool>> = Vec::with_capacity(queries.len());
        let mut keys: Vec<Option<(Arc<str>, u64)>> = Vec::with_capacity(queries.len());
        for (key, q) in queries {
            if q.uses_now() {
                keys.push(None);
                out.push(None);
                continue;
            }
            let mut h = std::collections::hash_map::DefaultHasher::new();
            for c in &q.criteria {
                let prefix = index::param_rows(rtype, &c.param.def.code);
                rows.iter().filter(|r| r.starts_with(&prefix)).for_each(|r| r.hash(&mut h));
                if c.param.def.code == "_id" {
                    id.hash(&mut h);
                }
            }
            let k = ((*key).clone(), h.finish());
            out.push(self.memo.get(&k).copied());
            keys.push(Some(k));
        }
        if out.iter().all(Option::is_some) {
            return Ok(out.into_iter().map(|o| o.unwrap_or(false)).collect());
        }
        let space = Space::root(self.tree.clone());
        let doc = self.set_rows(&space, rtype, id, &rows, true)?;
        let exec = Executor { tree: &space, rtype };
        let mut failed = None;
        for (i, (_, q)) in queries.iter().enumerate() {
            if out[i].is_some() {
                continue;
            }
            match crate::search::cost::limited(crate::search::cost::CONDITION_ROWS, || exec.run(q)) {
                Ok(found) => {
                    let hit = found.contains(doc);
                    out[i] = Some(hit);
                    if let Some(k) = keys[i].take() {
                        if self.memo.len() >= MAX_MEMO {
                            self.memo.clear();
                        }
                        self.memo.insert(k, hit);
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        self.set_rows(&space, rtype, id, &rows, false)?;
        let out: Vec<bool> = out.into_iter().map(|o| o.unwrap_or(false)).collect();
        match failed {
            Some(e) => Err(e.into()),
            None => Ok(out),
        }
    }

    /// Adds (or removes) `rows` for `rtype/id` in one batch; its doc number.
    fn set_rows(&self, space: &Space, rtype: &str, id: &str, rows: &[Vec<u8>], present: bool) -> Result<u32, SubscriptionError> {
        let mut batch = Writes::default();
        let mut changes = posting::Changes::default();
        let doc = changes.docnum(space, &mut batch, rtype, id).map_err(|e| scratch_error(format!("{e:?}")))?;
        for r in rows {
            if present {
                changes.add(r, doc);
            } else {
                changes.remove(r, doc);
            }
        }
        changes.flush(space, &mut batch).map_err(|e| scratch_error(format!("{e:?}")))?;
        self.tree.apply_batch(batch.into_batch()).map_err(scratch_error)?;
        Ok(doc)
    }

    /// Drops the scratch tree (its doc numbers grow with the ids seen) and starts an empty one.
    fn renew(&mut self) -> Result<(), SubscriptionError> {
        self.generation += 1;
        let tree = self.db.open_tree(format!("scratch{}", self.generation)).map_err(scratch_error)?;
        let old = std::mem::replace(&mut self.tree, tree);
        self.written = 0;
        let _ = self.db.drop_tree(old.name());
        Ok(())
    }
}

fn scratch_error(e: impl std::fmt::Display) -> SubscriptionError {
    SubscriptionError::Internal(format!("scratch index: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::FhirVersion;
    use serde_json::json;

    fn setup() -> (Arc<Registry>, Definitions) {
        (Arc::new(Registry::load(FhirVersion::R4)), Definitions::load(FhirVersion::R4))
    }

    #[test]
    fn criteria_parse_as_searches_and_refuse_what_one_resource_cannot_decide() {
        let (reg, defs) = setup();
        let c = parse(&reg, &defs, "Observation?code=http://loinc.org|1234-5&status=final").unwrap();
        assert_eq!(c.rtype, "Observation");
        assert_eq!(c.params.len(), 2);
        assert_eq!(parse(&reg, &defs, "Patient").unwrap().query.criteria.len(), 0);
        for bad in ["", "Nope?x=1", "Patient?nope=1", "Patient?_count=5", "Observation?subject:Patient.name=x", "Patient?_has:Observation:subject:code=1", "Patient?birthdate=notadate", "Patient?_text=x"] {
            assert!(parse(&reg, &defs, bad).is_err(), "{bad}");
        }
        assert!(parse(&reg, &defs, &format!("Patient?name={}", "a".repeat(5000))).is_err());
    }

    #[test]
    fn a_version_is_judged_by_the_search_semantics_on_its_own_content() {
        let (reg, defs) = setup();
        let mut m = Matcher::new(reg.clone()).unwrap();
        m.renew_every = 50;
        let finals = parse(&reg, &defs, "Observation?status=final").unwrap();
        let coded = parse(&reg, &defs, "Observation?code=http://loinc.org|1234-5").unwrap();
        let by_id = parse(&reg, &defs, "Observation?_id=o1").unwrap();
        let obs = |id: &str, status: &str, code: &str| {
            json!({"resourceType": "Observation", "id": id, "status": status, "code": {"coding": [{"system": "http://loinc.org", "code": code}]}}).to_string()
        };
        let qs = [(&finals.key, &*finals.query), (&coded.key, &*coded.query), (&by_id.key, &*by_id.query)];
        assert_eq!(m.matches("Observation", "o1", obs("o1", "final", "1234-5").as_bytes(), &qs).unwrap(), vec![true, true, true]);
        assert_eq!(m.matches("Observation", "o2", obs("o2", "preliminary", "1234-5").as_bytes(), &qs).unwrap(), vec![false, true, false]);
        // A later version of o1 that no longer matches is judged on itself.
        assert_eq!(m.matches("Observation", "o1", obs("o1", "amended", "9").as_bytes(), &qs).unwrap(), vec![false, false, true]);
        assert_eq!(m.matches("Observation", "o3", b"not json", &qs).unwrap(), vec![false, false, false]);
        // The scratch tree is renewed and still answers.
        for i in 0..m.renew_every + 3 {
            let id = format!("x{i}");
            let r = m.matches("Observation", &id, obs(&id, "final", "1").as_bytes(), &[(&finals.key, &*finals.query)]).unwrap();
            assert_eq!(r, vec![true]);
        }
        assert!(m.written < m.renew_every && m.generation >= 1, "renewed");
        // Memoized answers are the searches' answers: the same rows of another id.
        assert_eq!(m.matches("Observation", "o9", obs("o9", "final", "1234-5").as_bytes(), &qs).unwrap(), vec![true, true, false]);
        assert_eq!(m.matches("Observation", "o1", obs("o1", "final", "1234-5").as_bytes(), &qs).unwrap(), vec![true, true, true]);
        assert_eq!(m.matches("Observation", "o9", obs("o9", "final", "1234-5").as_bytes(), &qs).unwrap(), vec![true, true, false]);
    }
}
