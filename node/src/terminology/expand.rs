//! Value set expansion: the codes of a ValueSet's compose, in include order, each (system, code)
//! once, minus the excludes. An include lists concepts, or takes a code system's codes (all, or
//! those its filters select: `is-a`, `descendent-of`, `is-not-a`, `generalizes`, `=`, `in`,
//! `not-in`, `exists`, `regex`), and/or the codes common to the value sets it imports. Codes of a
//! system Kiln does not hold can be listed but not selected by filter or whole: that is an error
//! naming the system, never a silently empty expansion. Every expansion stops with
//! [`TerminologyError::TooLarge`] past its limit, and the work is charged to the search cost
//! budget ([`crate::index::cost`]) so a condition that expands is bounded alike on every node.

use std::collections::HashSet;

use super::load::Source;
use super::model::{Code, CodeSystem, Filter, Include, ValueSet};
use super::{TerminologyError, MAX_IMPORT_DEPTH};
use crate::index::cost;

/// Expands value sets from one [`Source`] with at most `limit` codes (`key`: the setting or
/// constant that sets it, named in the error).
pub struct Expander<'a> {
    pub src: Source<'a>,
    pub limit: usize,
    pub key: &'static str,
    /// Whether codes need their displays (a search does not: listed codes of a system are then
    /// taken as listed, without reading the code system).
    pub displays: bool,
}

/// Codes gathered in order, each (system, code) once, bounded.
struct Gather<'w> {
    codes: Vec<Code>,
    seen: HashSet<(String, String)>,
    limit: usize,
    what: &'w str,
    key: &'static str,
}

impl Gather<'_> {
    fn push(&mut self, c: Code) -> Result<(), TerminologyError> {
        if self.seen.insert((c.system.clone(), c.code.clone())) {
            if self.codes.len() >= self.limit {
                return Err(TerminologyError::TooLarge { what: self.what.to_string(), limit: self.limit, key: self.key });
            }
            self.codes.push(c);
        }
        Ok(())
    }
}

fn code_of(cs: &CodeSystem, i: usize) -> Code {
    let c = &cs.concepts[i];
    Code { system: cs.url.clone(), code: c.code.clone(), display: c.display.clone() }
}

/// A concept's property value as text (`valueCode`, `valueString`, `valueBoolean`, …).
fn property_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(o) => o.get("code").and_then(|c| c.as_str()).unwrap_or_default().to_string(),
        other => other.to_string(),
    }
}

/// The concepts of `cs` a filter selects, in definition order.
pub fn filter(cs: &CodeSystem, f: &Filter) -> Result<Vec<usize>, TerminologyError> {
    let n = cs.concepts.len();
    let root = || {
        cs.find(&f.value).ok_or_else(|| TerminologyError::Invalid(format!("filter {} {} {}: code '{}' is not in code system {}", f.property, f.op, f.value, f.value, cs.url)))
    };
    let is_code = matches!(f.property.as_str(), "concept" | "code");
    let mark = |picked: Vec<usize>| {
        let mut m = vec![false; n];
        for i in picked {
            m[i] = true;
        }
        m
    };
    let keep: Vec<bool> = match (f.op.as_str(), is_code) {
        ("is-a", true) => {
            let r = root()?;
            let mut v = cs.descendants(r);
            v.push(r);
            mark(v)
        }
        ("descendent-of", true) => mark(cs.descendants(root()?)),
        ("is-not-a", true) => {
            let r = root()?;
            let mut v = cs.descendants(r);
            v.push(r);
            mark(v).into_iter().map(|b| !b).collect()
        }
        ("generalizes", true) => {
            let r = root()?;
            let mut v = cs.ancestors(r);
            v.push(r);
            mark(v)
        }
        ("regex", true) => {
            let re = regex::RegexBuilder::new(&format!("^(?:{})$", f.value))
                .size_limit(1 << 20)
                .build()
                .map_err(|e| TerminologyError::Invalid(format!("filter {} regex: {e}", f.property)))?;
            cs.concepts.iter().map(|c| re.is_match(&c.code)).collect()
        }
        ("=" | "in" | "not-in", _) => {
            let wanted: Vec<&str> = if f.op == "=" { vec![f.value.as_str()] } else { f.value.split(',').map(str::trim).collect() };
            let hit = |i: usize| -> bool {
                let c = &cs.concepts[i];
                match f.property.as_str() {
                    "concept" | "code" => wanted.contains(&c.code.as_str()),
                    "display" => c.display.as_deref().is_some_and(|d| wanted.contains(&d)),
                    "parent" => cs.parents(i).iter().any(|&p| wanted.contains(&cs.concepts[p].code.as_str())),
                    "child" => cs.children(i).iter().any(|&p| wanted.contains(&cs.concepts[p].code.as_str())),
                    prop => c.properties.iter().any(|(code, _, v)| code == prop && wanted.contains(&property_text(v).as_str())),
                }
            };
            (0..n).map(|i| hit(i) != (f.op == "not-in")).collect()
        }
        ("exists", false) => {
            let want = f.value != "false";
            (0..n).map(|i| cs.concepts[i].properties.iter().any(|(code, _, _)| *code == f.property) == want).collect()
        }
        _ => return Err(TerminologyError::Unsupported(format!("the compose filter '{} {} {}' on {} is not supported (is-a, descendent-of, is-not-a, generalizes and regex on concept; =, in, not-in and exists on properties)", f.property, f.op, f.value, cs.url))),
    };
    Ok((0..n).filter(|&i| keep[i]).collect())
}

impl Expander<'_> {
    /// The codes of `vs` (`what` names it in errors).
    pub fn expand(&self, vs: &ValueSet, what: &str) -> Result<Vec<Code>, TerminologyError> {
        let mut stack = Vec::new();
        self.expand_in(vs, what, &mut stack)
    }

    fn expand_in(&self, vs: &ValueSet, what: &str, stack: &mut Vec<String>) -> Result<Vec<Code>, TerminologyError> {
        let mut out = Gather { codes: Vec::new(), seen: HashSet::new(), limit: self.limit, what, key: self.key };
        if !vs.has_compose {
            for c in &vs.contains {
                out.push(c.clone())?;
            }
            cost::charge(out.codes.len() as u64)?;
            return Ok(out.codes);
        }
        for inc in &vs.include {
            for c in self.include(inc, what, stack)? {
                out.push(c)?;
            }
        }
        if !vs.exclude.is_empty() {
            let mut gone = HashSet::new();
            for ex in &vs.exclude {
                gone.extend(self.include(ex, what, stack)?.into_iter().map(|c| (c.system, c.code)));
            }
            out.codes.retain(|c| !gone.contains(&(c.system.clone(), c.code.clone())));
        }
        Ok(out.codes)
    }

    /// The codes of one include (or exclude).
    fn include(&self, inc: &Include, what: &str, stack: &mut Vec<String>) -> Result<Vec<Code>, TerminologyError> {
        let mut gathered = Gather { codes: Vec::new(), seen: HashSet::new(), limit: self.limit, what, key: self.key };
        let mut from_system = false;
        if let Some(system) = &inc.system {
            from_system = true;
            if !inc.concepts.is_empty() {
                if !inc.filters.is_empty() {
                    return Err(TerminologyError::Invalid(format!("{what}: an include of {system} has both concepts and filters")));
                }
                // Listed codes need not be held (e.g. SNOMED CT codes); displays come from the
                // code system when Kiln holds it and the list gives none.
                let cs = if self.displays { self.src.code_system(system, inc.version.as_deref())? } else { None };
                for (code, display) in &inc.concepts {
                    let display = display.clone().or_else(|| cs.as_ref().and_then(|cs| cs.find(code)).and_then(|i| cs.as_ref().and_then(|cs| cs.concepts[i].display.clone())));
                    gathered.push(Code { system: system.clone(), code: code.clone(), display })?;
                }
            } else {
                let cs = self.src.complete_code_system(system, inc.version.as_deref())?;
                let mut picked: Vec<usize> = (0..cs.concepts.len()).collect();
                for f in &inc.filters {
                    let keep: HashSet<usize> = filter(&cs, f)?.into_iter().collect();
                    picked.retain(|i| keep.contains(i));
                }
                for i in picked {
                    gathered.push(code_of(&cs, i))?;
                }
            }
            cost::charge(gathered.codes.len() as u64)?;
        }
        if inc.value_sets.is_empty() {
            return Ok(gathered.codes);
        }
        if stack.len() >= MAX_IMPORT_DEPTH {
            return Err(TerminologyError::Invalid(format!("{what}: value set imports nest deeper than {MAX_IMPORT_DEPTH}")));
        }
        // The codes in every imported value set (and in the system part, when there is one).
        let mut common: Option<Vec<Code>> = from_system.then_some(gathered.codes);
        for url in &inc.value_sets {
            if stack.contains(url) {
                return Err(TerminologyError::Invalid(format!("{what}: value set {url} imports itself")));
            }
            let vs = self.src.value_set(url)?;
            stack.push(url.clone());
            let codes = self.expand_in(&vs, what, stack);
            stack.pop();
            let codes = codes?;
            common = Some(match common {
                None => codes,
                Some(prev) => {
                    let these: HashSet<(&str, &str)> = codes.iter().map(|c| (c.system.as_str(), c.code.as_str())).collect();
                    prev.into_iter().filter(|c| these.contains(&(c.system.as_str(), c.code.as_str()))).collect()
                }
            });
        }
        Ok(common.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::FhirVersion;
    use serde_json::json;

    fn expand(tree: &crate::store::space::Space, version: FhirVersion, vs: serde_json::Value, limit: usize) -> Result<Vec<String>, TerminologyError> {
        let ex = Expander { src: Source { version, tree }, limit, key: "test", displays: true };
        Ok(ex.expand(&ValueSet::from_json(&vs)?, "the test value set")?.into_iter().map(|c| c.code).collect())
    }

    #[test]
    fn shipped_filters_imports_and_bounds() {
        let ix = crate::machine::testing::indexed();
        let act = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
        let below = expand(&ix.tree, FhirVersion::R4, json!({"compose": {"include": [{"system": act, "filter": [{"property": "concept", "op": "is-a", "value": "_ActEncounterCode"}]}]}}), 10_000).unwrap();
        assert_eq!(below[0], "_ActEncounterCode", "is-a includes the code itself");
        for c in ["AMB", "EMER", "IMP", "ACUTE", "NONAC"] {
            assert!(below.contains(&c.to_string()), "{c} is an encounter code");
        }
        assert!(!below.contains(&"_ActAccountCode".to_string()));
        let desc = expand(&ix.tree, FhirVersion::R4, json!({"compose": {"include": [{"system": act, "filter": [{"property": "concept", "op": "descendent-of", "value": "_ActEncounterCode"}]}]}}), 10_000).unwrap();
        assert_eq!(desc.len() + 1, below.len());
        // Exclude, concept lists of systems not held, imports.
        let vs = json!({"compose": {
            "include": [{"system": act, "filter": [{"property": "concept", "op": "is-a", "value": "_ActEncounterCode"}]}, {"system": "http://snomed.info/sct", "concept": [{"code": "123", "display": "x"}]}],
            "exclude": [{"system": act, "concept": [{"code": "AMB"}]}]}});
        let codes = expand(&ix.tree, FhirVersion::R4, vs, 10_000).unwrap();
        assert!(!codes.contains(&"AMB".to_string()) && codes.contains(&"123".to_string()) && codes.contains(&"EMER".to_string()));
        let status = expand(&ix.tree, FhirVersion::R4, json!({"compose": {"include": [{"valueSet": ["http://hl7.org/fhir/ValueSet/observation-status"]}]}}), 100).unwrap();
        assert!(status.contains(&"final".to_string()) && status.contains(&"amended".to_string()) && status.len() >= 8);
        // Bounds: an expansion past its limit fails, it is never cut.
        let big = json!({"compose": {"include": [{"system": act}]}});
        assert!(matches!(expand(&ix.tree, FhirVersion::R4, big, 10), Err(TerminologyError::TooLarge { limit: 10, .. })));
        // All of SNOMED CT, or a filter on it: not held, named.
        let sct = json!({"compose": {"include": [{"system": "http://snomed.info/sct", "filter": [{"property": "concept", "op": "is-a", "value": "404684003"}]}]}});
        match expand(&ix.tree, FhirVersion::R4, sct, 10_000) {
            Err(e @ TerminologyError::NotHeld { .. }) => assert!(e.to_string().contains("http://snomed.info/sct")),
            other => panic!("{other:?}"),
        }
        let odd = json!({"compose": {"include": [{"system": act, "filter": [{"property": "concept", "op": "soundex", "value": "x"}]}]}});
        assert!(matches!(expand(&ix.tree, FhirVersion::R4, odd, 10_000), Err(TerminologyError::Unsupported(_))));
        let cyclic = json!({"url": "urn:self", "compose": {"include": [{"valueSet": ["http://hl7.org/fhir/ValueSet/observation-status"]}]}});
        assert!(expand(&ix.tree, FhirVersion::R4, cyclic, 10_000).is_ok());
    }

    #[test]
    fn property_filters_and_stored_overrides() {
        let mut ix = crate::machine::testing::indexed();
        let cs = json!({"resourceType": "CodeSystem", "id": "cs", "url": "urn:colors", "status": "active", "content": "complete", "concept": [
            {"code": "warm", "concept": [{"code": "red", "property": [{"code": "hex", "valueString": "f00"}]}, {"code": "orange"}]},
            {"code": "cold", "concept": [{"code": "blue"}]}]});
        // A stored ValueSet with a shipped url wins over the shipped one.
        let vs = json!({"resourceType": "ValueSet", "id": "vs", "url": "http://hl7.org/fhir/ValueSet/observation-status", "status": "active",
            "compose": {"include": [{"system": "urn:colors", "filter": [{"property": "concept", "op": "is-not-a", "value": "warm"}]}]}});
        crate::machine::testing::put_all(&mut ix.sm, 1, &[cs, vs]);
        let src = Source { version: FhirVersion::R4, tree: &ix.tree };
        let ex = Expander { src, limit: 100, key: "test", displays: true };
        let codes = |vs: &ValueSet| ex.expand(vs, "t").unwrap().into_iter().map(|c| c.code).collect::<Vec<_>>();
        assert_eq!(codes(&src.value_set("http://hl7.org/fhir/ValueSet/observation-status").unwrap()), ["cold", "blue"]);
        let by = |property: &str, op: &str, value: &str| {
            codes(&ValueSet::from_json(&json!({"compose": {"include": [{"system": "urn:colors", "filter": [{"property": property, "op": op, "value": value}]}]}})).unwrap())
        };
        assert_eq!(by("hex", "=", "f00"), ["red"]);
        assert_eq!(by("parent", "=", "warm"), ["red", "orange"]);
        assert_eq!(by("concept", "in", "blue, red"), ["red", "blue"]);
        assert_eq!(by("hex", "exists", "true"), ["red"]);
        assert_eq!(by("concept", "regex", "b.*|o.*"), ["orange", "blue"]);
        assert_eq!(by("concept", "generalizes", "blue"), ["cold", "blue"]);
        assert!(matches!(ex.expand(&ValueSet::from_json(&json!({"compose": {"include": [{"system": "urn:colors", "filter": [{"property": "concept", "op": "is-a", "value": "nope"}]}]}})).unwrap(), "t"), Err(TerminologyError::Invalid(_))));
        assert!(matches!(src.value_set("urn:nothing"), Err(TerminologyError::UnknownValueSet(_))));
        // A new version is read as such (parsed definitions are cached by content, never by id).
        let changed = json!({"resourceType": "ValueSet", "id": "vs", "url": "http://hl7.org/fhir/ValueSet/observation-status", "status": "active",
            "compose": {"include": [{"system": "urn:colors", "concept": [{"code": "orange"}]}]}});
        crate::machine::testing::put_all(&mut ix.sm, 2, &[changed]);
        let src = Source { version: FhirVersion::R4, tree: &ix.tree };
        let ex = Expander { src, limit: 100, key: "test", displays: true };
        assert_eq!(ex.expand(&src.value_set("http://hl7.org/fhir/ValueSet/observation-status").unwrap(), "t").unwrap().into_iter().map(|c| c.code).collect::<Vec<_>>(), ["orange"]);
    }
}
