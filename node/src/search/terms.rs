//! The token search modifiers that need terminology: `:in` / `:not-in` (a code in a value set's
//! expansion) and `:below` / `:above` (`system|code` and its descendants / ancestors in the
//! code system's is-a hierarchy). Each becomes the OR of its (system, code) pairs over the token
//! posting lists, one range read per distinct code (the same reads as the OR list written out);
//! resources are never scanned. A code without a system in the resource (a `code` element, such
//! as `Observation.status`, whose system is its binding's) matches when the code is in the set.

use std::collections::{BTreeMap, BTreeSet};

use roaring::RoaringBitmap;

use crate::terminology::expand::Expander;
use crate::terminology::load::Source;
use crate::terminology::{TerminologyError, SEARCH_MAX_CODES};
use crate::fhir::FhirVersion;
use super::index::{kind_prefix, param_rows, push_str};
use super::parse::Criterion;
use super::posting;
use crate::store::space::Space;

/// The modifiers this module serves on token parameters.
pub const MODIFIERS: &[&str] = &["in", "not-in", "below", "above"];

/// The (code → systems) pairs a criterion's values stand for.
pub fn pairs(src: Source<'_>, modifier: &str, param: &str, values: &[String]) -> Result<BTreeMap<String, BTreeSet<String>>, TerminologyError> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut count = 0usize;
    let too_large = |what: String| TerminologyError::TooLarge { what, limit: SEARCH_MAX_CODES, key: "a fixed limit of search modifiers" };
    for v in values {
        let mut add = |system: &str, code: &str| -> Result<(), TerminologyError> {
            if out.entry(code.to_string()).or_default().insert(system.to_string()) {
                count += 1;
                if count > SEARCH_MAX_CODES {
                    return Err(too_large(format!("{param}:{modifier}")));
                }
            }
            Ok(())
        };
        match modifier {
            "in" | "not-in" => {
                let vs = src.value_set(v)?;
                let ex = Expander { src, limit: SEARCH_MAX_CODES, key: "a fixed limit of search modifiers", displays: false };
                for c in ex.expand(&vs, v)? {
                    add(&c.system, &c.code)?;
                }
            }
            "below" | "above" => {
                let Some((system, code)) = v.split_once('|').filter(|(s, c)| !s.is_empty() && !c.is_empty()) else {
                    return Err(TerminologyError::BadParameter {
                        name: format!("{param}:{modifier}"),
                        reason: format!("'{v}': :{modifier} on a token needs system|code (the code system whose hierarchy is meant)"),
                    });
                };
                let cs = src.complete_code_system(system, None)?;
                add(system, code)?;
                if let Some(i) = cs.find(code) {
                    let related = if modifier == "below" { cs.descendants(i) } else { cs.ancestors(i) };
                    for j in related {
                        add(system, &cs.concepts[j].code)?;
                    }
                }
            }
            other => return Err(TerminologyError::Unsupported(format!(":{other} is not a terminology modifier"))),
        }
    }
    Ok(out)
}

/// The doc numbers of `rtype` with a value of the criterion's token parameter among its pairs
/// (`:not-in` and `:not`-like complements are the caller's).
pub fn docs(tree: &Space, version: FhirVersion, rtype: &str, c: &Criterion) -> Result<RoaringBitmap, TerminologyError> {
    let modifier = c.modifier.as_deref().unwrap_or_default();
    let code = c.param.def.code.as_str();
    let pairs = pairs(Source { version, tree }, modifier, code, &c.values)?;
    let base = kind_prefix(&param_rows(rtype, code), b't');
    let mut out = RoaringBitmap::new();
    for (value, systems) in &pairs {
        // Rows are `t` code, system: one read of the code's rows, kept for the systems wanted
        // (and for no system).
        let mut k = base.clone();
        push_str(&mut k, value);
        let wanted: Vec<Vec<u8>> = systems.iter().map(|s| escaped_part(s)).chain(std::iter::once(escaped_part(""))).collect();
        posting::scan_filter(
            tree,
            &k,
            |rest| wanted.iter().any(|w| w.as_slice() == rest),
            &mut out,
        )?;
    }
    Ok(out)
}

/// `s` as a terminated key part.
fn escaped_part(s: &str) -> Vec<u8> {
    let mut k = Vec::new();
    push_str(&mut k, s);
    k
}

#[cfg(test)]
mod tests {
    use crate::search::query::{parse, Executor, SearchError};
    use crate::terminology::TerminologyError;
    use serde_json::json;

    #[test]
    fn modifiers_on_the_posting_lists() {
        let mut ix = crate::machine::testing::indexed();
        let act = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
        let enc = |id: &str, code: &str| json!({"resourceType": "Encounter", "id": id, "status": "finished", "class": {"system": act, "code": code}});
        let obs = |id: &str, status: &str, code: serde_json::Value| json!({"resourceType": "Observation", "id": id, "status": status, "code": code});
        crate::machine::testing::put_all(&mut ix.sm, 1, &[
            enc("amb", "AMB"), enc("emer", "EMER"), enc("acct", "ACCTRECEIVABLE"),
            obs("final", "final", json!({"text": "x"})), obs("prelim", "preliminary", json!({"text": "x"})), obs("cancel", "cancelled", json!({"text": "x"})),
            obs("mine", "final", json!({"coding": [{"system": "urn:mine", "code": "b"}]})),
            json!({"resourceType": "CodeSystem", "id": "mine", "url": "urn:mine", "status": "active", "content": "complete", "concept": [{"code": "a", "concept": [{"code": "b"}]}, {"code": "c"}]}),
            json!({"resourceType": "ValueSet", "id": "mine", "url": "urn:mine:vs", "status": "active", "compose": {"include": [{"system": "urn:mine", "filter": [{"property": "concept", "op": "is-a", "value": "a"}]}]}}),
        ]);
        let s = |rt: &str, qs: &str| -> Result<Vec<String>, SearchError> {
            let params: Vec<(String, String)> = serde_urlencoded::from_str(qs).unwrap();
            let q = parse(&ix.reg, rt, &params, false)?;
            let mut ids = Executor { tree: &ix.tree, rtype: rt }.run_ids(&q)?;
            ids.sort();
            Ok(ids)
        };
        let ok = |rt: &str, qs: &str| s(rt, qs).unwrap_or_else(|e| panic!("{qs}: {e}"));
        // A status code (no system in the resource) is in the shipped value set of its binding.
        let status = "http://hl7.org/fhir/ValueSet/observation-status";
        assert_eq!(ok("Observation", &format!("status:in={status}")), ["cancel", "final", "mine", "prelim"]);
        assert_eq!(ok("Observation", &format!("status:not-in={status}")), Vec::<String>::new());
        assert_eq!(ok("Observation", "code:in=urn:mine:vs"), ["mine"]);
        assert_eq!(ok("Observation", "code:not-in=urn:mine:vs"), ["cancel", "final", "prelim"]);
        // Subsumption in v3 ActCode: AMB and EMER are encounter codes, ACCTRECEIVABLE is not.
        assert_eq!(ok("Encounter", &format!("class:below={act}|_ActEncounterCode")), ["amb", "emer"]);
        assert_eq!(ok("Encounter", &format!("class:below={act}|AMB")), ["amb"]);
        assert_eq!(ok("Encounter", &format!("class:above={act}|AMB")), ["amb"]);
        assert_eq!(ok("Observation", "code:above=urn:mine|b"), ["mine"]);
        assert!(ok("Observation", "code:above=urn:mine|c").is_empty());
        // Refusals: a value without system, a system not held, an unknown value set.
        assert!(matches!(s("Encounter", "class:below=AMB"), Err(SearchError::Terminology(TerminologyError::BadParameter { .. }))));
        assert!(matches!(s("Observation", "code:below=http://snomed.info/sct|404684003"), Err(SearchError::Terminology(TerminologyError::NotHeld { .. }))));
        assert!(matches!(s("Observation", "code:in=urn:nothing"), Err(SearchError::Terminology(TerminologyError::UnknownValueSet(_)))));
        // In a condition (apply): the same answer, within the row budget.
        let cond = crate::search::query::condition_ids(&ix.reg, &ix.tree, "Observation", &[("code:in".into(), "urn:mine:vs".into())]).unwrap();
        assert_eq!(cond, ["mine"]);
        // Linked types: the caller must be allowed to read what the modifier reads.
        let q = parse(&ix.reg, "Observation", &[("code:in".into(), "urn:mine:vs".into())], false).unwrap();
        assert_eq!(q.linked_types(), ["CodeSystem", "ValueSet"]);
    }

    #[test]
    fn search_expansions_are_bounded() {
        let mut ix = crate::machine::testing::indexed();
        let concepts: Vec<serde_json::Value> = (0..super::SEARCH_MAX_CODES + 1).map(|i| json!({"code": format!("c{i}")})).collect();
        crate::machine::testing::put_all(&mut ix.sm, 1, &[
            json!({"resourceType": "CodeSystem", "id": "big", "url": "urn:big", "status": "active", "content": "complete", "concept": concepts}),
            json!({"resourceType": "ValueSet", "id": "big", "url": "urn:big:vs", "status": "active", "compose": {"include": [{"system": "urn:big"}]}}),
        ]);
        let params = [("code:in".to_string(), "urn:big:vs".to_string())];
        let q = parse(&ix.reg, "Observation", &params, false).unwrap();
        match (Executor { tree: &ix.tree, rtype: "Observation" }).run(&q) {
            Err(SearchError::Terminology(e @ TerminologyError::TooLarge { .. })) => assert!(e.to_string().contains("10000")),
            other => panic!("{other:?}"),
        }
    }
}
