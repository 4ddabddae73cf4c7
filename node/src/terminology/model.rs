//! CodeSystem and ValueSet definitions as Kiln uses them, read from FHIR JSON: the shipped files
//! (`schemas/{r4,stu3}/terminology.json`, reduced resources of the same shape) and resources users
//! store go through the same [`CodeSystem::from_json`] / [`ValueSet::from_json`].
//!
//! A CodeSystem's is-a hierarchy is its concept nesting plus the `parent` / `subsumedBy`
//! properties (this concept's parents) and the `child` property (this concept's children): a
//! concept may have several parents (v3 code systems use `child` for that).

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use super::TerminologyError;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConcept {
    code: Option<String>,
    display: Option<String>,
    #[serde(default)]
    designation: Vec<RawDesignation>,
    #[serde(default)]
    property: Vec<serde_json::Map<String, Value>>,
    #[serde(default)]
    concept: Vec<RawConcept>,
}

#[derive(Deserialize)]
struct RawDesignation {
    language: Option<String>,
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCodeSystem {
    url: Option<String>,
    version: Option<String>,
    name: Option<String>,
    content: Option<String>,
    case_sensitive: Option<bool>,
    #[serde(default)]
    concept: Vec<RawConcept>,
}

/// One concept of a code system.
#[derive(Debug, Clone)]
pub struct Concept {
    pub code: String,
    pub display: Option<String>,
    /// (language, value)
    pub designations: Vec<(Option<String>, String)>,
    /// Properties other than the hierarchy links: (code, `value[x]` name, value).
    pub properties: Vec<(String, String, Value)>,
}

/// A code system: its concepts in definition order and the is-a links between them.
#[derive(Debug, Clone)]
pub struct CodeSystem {
    pub url: String,
    pub version: Option<String>,
    pub name: Option<String>,
    /// `content` (`complete` when absent): only a complete code system enumerates its codes.
    pub content: String,
    pub case_sensitive: bool,
    pub concepts: Vec<Concept>,
    by_code: HashMap<String, usize>,
    parents: Vec<Vec<usize>>,
    children: Vec<Vec<usize>>,
}

/// The code of a hierarchy property's value (`valueCode`, or `valueString` / `valueCoding.code`).
fn linked_code(p: &serde_json::Map<String, Value>) -> Option<String> {
    p.get("valueCode").or_else(|| p.get("valueString")).and_then(Value::as_str).or_else(|| p.get("valueCoding")?.get("code")?.as_str()).map(str::to_string)
}

impl CodeSystem {
    pub fn from_json(v: &Value) -> Result<CodeSystem, TerminologyError> {
        let raw = RawCodeSystem::deserialize(v).map_err(|e| TerminologyError::Invalid(format!("CodeSystem: {e}")))?;
        let url = raw.url.ok_or_else(|| TerminologyError::Invalid("a CodeSystem without url".into()))?;
        let mut cs = CodeSystem {
            url,
            version: raw.version,
            name: raw.name,
            content: raw.content.unwrap_or_else(|| "complete".into()),
            case_sensitive: raw.case_sensitive.unwrap_or(true),
            concepts: Vec::new(),
            by_code: HashMap::new(),
            parents: Vec::new(),
            children: Vec::new(),
        };
        // (child code, parent code) pairs, resolved once every code is known.
        let mut links: Vec<(String, String)> = Vec::new();
        let mut stack: Vec<(RawConcept, Option<String>)> = raw.concept.into_iter().rev().map(|c| (c, None)).collect();
        while let Some((c, parent)) = stack.pop() {
            let Some(code) = c.code else { continue };
            if let Some(p) = parent {
                links.push((code.clone(), p));
            }
            let mut properties = Vec::new();
            for p in c.property {
                let Some(pcode) = p.get("code").and_then(Value::as_str).map(str::to_string) else { continue };
                match pcode.as_str() {
                    "parent" | "subsumedBy" => links.extend(linked_code(&p).map(|to| (code.clone(), to))),
                    "child" => links.extend(linked_code(&p).map(|to| (to, code.clone()))),
                    _ => {
                        if let Some((k, val)) = p.iter().find(|(k, _)| k.starts_with("value")) {
                            properties.push((pcode, k.clone(), val.clone()));
                        }
                    }
                }
            }
            let designations = c.designation.into_iter().filter_map(|d| Some((d.language, d.value?))).collect();
            if !cs.by_code.contains_key(&code) {
                cs.by_code.insert(code.clone(), cs.concepts.len());
                cs.concepts.push(Concept { code: code.clone(), display: c.display, designations, properties });
            }
            stack.extend(c.concept.into_iter().rev().map(|k| (k, Some(code.clone()))));
        }
        cs.parents = vec![Vec::new(); cs.concepts.len()];
        cs.children = vec![Vec::new(); cs.concepts.len()];
        for (child, parent) in links {
            if let (Some(&c), Some(&p)) = (cs.by_code.get(&child), cs.by_code.get(&parent)) {
                if c != p && !cs.parents[c].contains(&p) {
                    cs.parents[c].push(p);
                    cs.children[p].push(c);
                }
            }
        }
        Ok(cs)
    }

    /// The position of `code`.
    pub fn find(&self, code: &str) -> Option<usize> {
        self.by_code.get(code).copied().or_else(|| {
            // A case-insensitive system matches codes whatever their case.
            (!self.case_sensitive).then(|| self.concepts.iter().position(|c| c.code.eq_ignore_ascii_case(code))).flatten()
        })
    }

    pub fn parents(&self, i: usize) -> &[usize] {
        &self.parents[i]
    }

    pub fn children(&self, i: usize) -> &[usize] {
        &self.children[i]
    }

    /// Every concept reachable from `i` through `next` (not `i` itself unless on a cycle), in
    /// breadth-first order, each once.
    fn reach<'s>(&'s self, i: usize, next: impl Fn(usize) -> &'s [usize]) -> Vec<usize> {
        let mut seen = vec![false; self.concepts.len()];
        seen[i] = true;
        let mut out = Vec::new();
        let mut at = 0;
        let mut frontier = vec![i];
        while at < frontier.len() {
            for &n in next(frontier[at]) {
                if !seen[n] {
                    seen[n] = true;
                    out.push(n);
                    frontier.push(n);
                }
            }
            at += 1;
        }
        out
    }

    /// The concepts `i` subsumes, `i` excluded.
    pub fn descendants(&self, i: usize) -> Vec<usize> {
        self.reach(i, |n| &self.children[n])
    }

    /// The concepts that subsume `i`, `i` excluded.
    pub fn ancestors(&self, i: usize) -> Vec<usize> {
        self.reach(i, |n| &self.parents[n])
    }

    /// Whether `a` subsumes `b` (is `b` or one of its ancestors).
    pub fn subsumes(&self, a: usize, b: usize) -> bool {
        a == b || self.ancestors(b).contains(&a)
    }

    /// Whether this resource enumerates every code of its system.
    pub fn enumerates(&self) -> bool {
        self.content == "complete" && !self.concepts.is_empty()
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawInclude {
    system: Option<String>,
    version: Option<String>,
    #[serde(default)]
    concept: Vec<RawCode>,
    #[serde(default)]
    filter: Vec<RawFilter>,
    #[serde(default)]
    value_set: Vec<String>,
}

#[derive(Deserialize)]
struct RawCode {
    code: Option<String>,
    display: Option<String>,
}

#[derive(Deserialize)]
struct RawFilter {
    property: Option<String>,
    op: Option<String>,
    value: Option<Value>,
}

#[derive(Deserialize, Default)]
struct RawCompose {
    #[serde(default)]
    include: Vec<RawInclude>,
    #[serde(default)]
    exclude: Vec<RawInclude>,
}

#[derive(Deserialize, Default)]
struct RawExpansion {
    #[serde(default)]
    contains: Vec<RawContains>,
}

#[derive(Deserialize)]
struct RawContains {
    system: Option<String>,
    code: Option<String>,
    display: Option<String>,
    #[serde(default)]
    contains: Vec<RawContains>,
}

#[derive(Deserialize)]
struct RawValueSet {
    url: Option<String>,
    version: Option<String>,
    name: Option<String>,
    status: Option<String>,
    compose: Option<RawCompose>,
    expansion: Option<RawExpansion>,
}

/// `compose.include.filter`.
#[derive(Debug, Clone)]
pub struct Filter {
    pub property: String,
    pub op: String,
    pub value: String,
}

/// One `compose.include` / `exclude`.
#[derive(Debug, Clone, Default)]
pub struct Include {
    pub system: Option<String>,
    pub version: Option<String>,
    /// (code, display)
    pub concepts: Vec<(String, Option<String>)>,
    pub filters: Vec<Filter>,
    pub value_sets: Vec<String>,
}

/// A code of an expansion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Code {
    pub system: String,
    pub code: String,
    pub display: Option<String>,
}

/// A value set: its compose, or (without one) the codes of the expansion it carries.
#[derive(Debug, Clone)]
pub struct ValueSet {
    pub url: Option<String>,
    pub version: Option<String>,
    pub name: Option<String>,
    pub status: Option<String>,
    pub include: Vec<Include>,
    pub exclude: Vec<Include>,
    /// `expansion.contains` (flattened), used only when there is no compose.
    pub contains: Vec<Code>,
    pub has_compose: bool,
}

fn include(raw: RawInclude) -> Result<Include, TerminologyError> {
    let mut filters = Vec::new();
    for f in raw.filter {
        let (Some(property), Some(op)) = (f.property, f.op) else {
            return Err(TerminologyError::Invalid("a compose filter needs property and op".into()));
        };
        let value = match f.value {
            Some(Value::String(s)) => s,
            Some(Value::Bool(b)) => b.to_string(),
            Some(other) => other.to_string(),
            None => String::new(),
        };
        filters.push(Filter { property, op, value });
    }
    Ok(Include {
        system: raw.system,
        version: raw.version,
        concepts: raw.concept.into_iter().filter_map(|c| Some((c.code?, c.display))).collect(),
        filters,
        value_sets: raw.value_set,
    })
}

fn flatten(items: Vec<RawContains>, out: &mut Vec<Code>) {
    for c in items {
        if let (Some(system), Some(code)) = (c.system, c.code) {
            out.push(Code { system, code, display: c.display });
        }
        flatten(c.contains, out);
    }
}

impl ValueSet {
    pub fn from_json(v: &Value) -> Result<ValueSet, TerminologyError> {
        let raw = RawValueSet::deserialize(v).map_err(|e| TerminologyError::Invalid(format!("ValueSet: {e}")))?;
        let has_compose = raw.compose.is_some();
        let compose = raw.compose.unwrap_or_default();
        let mut contains = Vec::new();
        if !has_compose {
            flatten(raw.expansion.unwrap_or_default().contains, &mut contains);
        }
        Ok(ValueSet {
            url: raw.url,
            version: raw.version,
            name: raw.name,
            status: raw.status,
            include: compose.include.into_iter().map(include).collect::<Result<_, _>>()?,
            exclude: compose.exclude.into_iter().map(include).collect::<Result<_, _>>()?,
            contains,
            has_compose,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn hierarchy_from_nesting_and_properties() {
        let cs = CodeSystem::from_json(&json!({"resourceType": "CodeSystem", "url": "urn:x", "concept": [
            {"code": "A", "display": "a", "concept": [{"code": "A1", "concept": [{"code": "A11"}]}, {"code": "A2"}]},
            {"code": "B", "property": [{"code": "child", "valueCode": "A11"}]},
            {"code": "C", "property": [{"code": "parent", "valueCode": "B"}, {"code": "status", "valueCode": "active"}]},
            {"code": "D", "property": [{"code": "subsumedBy", "valueCode": "C"}]}
        ]}))
        .unwrap();
        let code = |i: usize| cs.concepts[i].code.as_str();
        let f = |c: &str| cs.find(c).unwrap();
        let mut d: Vec<&str> = cs.descendants(f("A")).into_iter().map(code).collect();
        d.sort();
        assert_eq!(d, ["A1", "A11", "A2"]);
        let mut up: Vec<&str> = cs.ancestors(f("A11")).into_iter().map(code).collect();
        up.sort();
        assert_eq!(up, ["A", "A1", "B"], "A11 has two parents: A1 by nesting, B by its child property");
        assert_eq!(cs.descendants(f("B")).into_iter().map(code).collect::<Vec<_>>(), ["A11", "C", "D"]);
        assert!(cs.subsumes(f("B"), f("D")) && !cs.subsumes(f("D"), f("B")) && cs.subsumes(f("A"), f("A")));
        assert_eq!(cs.concepts[f("C")].properties.len(), 1, "hierarchy properties become links, others stay properties");
        assert!(cs.enumerates());
    }

    #[test]
    fn cycles_end_and_bad_shapes_are_errors() {
        let cs = CodeSystem::from_json(&json!({"url": "urn:c", "concept": [
            {"code": "a", "property": [{"code": "parent", "valueCode": "b"}]},
            {"code": "b", "property": [{"code": "parent", "valueCode": "a"}]}
        ]}))
        .unwrap();
        assert_eq!(cs.descendants(0), [1]);
        assert!(CodeSystem::from_json(&json!({"concept": []})).is_err(), "no url");
        assert!(CodeSystem::from_json(&json!({"url": "u", "concept": "x"})).is_err());
        assert!(ValueSet::from_json(&json!({"compose": {"include": [{"filter": [{"op": "is-a"}]}]}})).is_err());
        let not_present = CodeSystem::from_json(&json!({"url": "http://snomed.info/sct", "content": "not-present"})).unwrap();
        assert!(!not_present.enumerates());
        let insensitive = CodeSystem::from_json(&json!({"url": "u", "caseSensitive": false, "concept": [{"code": "Abc"}]})).unwrap();
        assert_eq!(insensitive.find("aBC"), Some(0));
    }
}
