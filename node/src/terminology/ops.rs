//! The terminology operations' answers, apart from HTTP (`crate::http::terminology` reads the parameters and
//! routes): `$expand` (a ValueSet with `expansion`: `filter` on code or display, case-insensitive
//! substring; `offset` / `count` paging over the filtered codes; `total`), `$validate-code`,
//! `$lookup` and `$subsumes` (Parameters).

use serde_json::{json, Value};

use super::expand::Expander;
use super::load::Source;
use super::model::{Code, CodeSystem, ValueSet};
use super::TerminologyError;

/// A code as a request names it (`system` / `code` / `display` / `version`, or a Coding).
#[derive(Debug, Clone, Default)]
pub struct Coding {
    pub system: Option<String>,
    pub code: String,
    pub display: Option<String>,
    pub version: Option<String>,
}

impl Coding {
    pub fn from_json(v: &Value) -> Option<Coding> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        Some(Coding { system: s("system"), code: s("code")?, display: s("display"), version: s("version") })
    }
}

/// `$expand` paging and text filter.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub filter: Option<String>,
    pub offset: usize,
    pub count: Option<usize>,
}

/// The `$expand` answer: `vs` with an expansion page of `codes`.
pub fn expansion(vs: &ValueSet, codes: Vec<Code>, page: &Page, timestamp: &str) -> Value {
    let needle = page.filter.as_deref().map(str::to_lowercase);
    let matching: Vec<Code> = match &needle {
        Some(n) => codes.into_iter().filter(|c| c.code.to_lowercase().contains(n.as_str()) || c.display.as_deref().is_some_and(|d| d.to_lowercase().contains(n.as_str()))).collect(),
        None => codes,
    };
    let total = matching.len();
    let contains: Vec<Value> = matching
        .into_iter()
        .skip(page.offset)
        .take(page.count.unwrap_or(usize::MAX))
        .map(|c| {
            let mut e = json!({"system": c.system, "code": c.code});
            if let Some(d) = c.display {
                e["display"] = json!(d);
            }
            e
        })
        .collect();
    let mut parameter = Vec::new();
    if let Some(f) = &page.filter {
        parameter.push(json!({"name": "filter", "valueString": f}));
    }
    parameter.push(json!({"name": "offset", "valueInteger": page.offset}));
    if let Some(c) = page.count {
        parameter.push(json!({"name": "count", "valueInteger": c}));
    }
    let mut out = json!({"resourceType": "ValueSet", "status": vs.status.as_deref().unwrap_or("active")});
    for (k, v) in [("url", &vs.url), ("version", &vs.version), ("name", &vs.name)] {
        if let Some(v) = v {
            out[k] = json!(v);
        }
    }
    let mut expansion = json!({
        "identifier": format!("urn:uuid:{}", uuid::Uuid::new_v4()),
        "timestamp": timestamp,
        "total": total,
        "offset": page.offset,
        "parameter": parameter
    });
    if !contains.is_empty() {
        expansion["contains"] = Value::Array(contains);
    }
    out["expansion"] = expansion;
    out
}

fn parameters(items: Vec<Value>) -> Value {
    json!({"resourceType": "Parameters", "parameter": items})
}

/// `$validate-code`: whether one of `codings` is in the expansion of `vs` (a coding without
/// system matches the code in any system), with the display when it is.
pub fn validate(ex: &Expander<'_>, vs: &ValueSet, what: &str, codings: &[Coding]) -> Result<Value, TerminologyError> {
    let codes = ex.expand(vs, what)?;
    for coding in codings {
        let Some(hit) = codes.iter().find(|c| c.code == coding.code && coding.system.as_deref().is_none_or(|s| s == c.system)) else { continue };
        let mut out = vec![json!({"name": "result", "valueBoolean": true})];
        if let Some(d) = &hit.display {
            out.push(json!({"name": "display", "valueString": d}));
        }
        if let (Some(given), Some(d)) = (&coding.display, &hit.display) {
            if !given.eq_ignore_ascii_case(d) {
                out[0] = json!({"name": "result", "valueBoolean": false});
                out.push(json!({"name": "message", "valueString": format!("the display '{given}' is not the display of {}|{} ('{d}')", hit.system, hit.code)}));
            }
        }
        return Ok(parameters(out));
    }
    let named: Vec<String> = codings.iter().map(|c| format!("{}|{}", c.system.as_deref().unwrap_or(""), c.code)).collect();
    Ok(parameters(vec![
        json!({"name": "result", "valueBoolean": false}),
        json!({"name": "message", "valueString": format!("{} is not in the value set {what}", named.join(", "))}),
    ]))
}

/// The position of `code` in `cs`, or the error naming both.
fn concept(cs: &CodeSystem, code: &str) -> Result<usize, TerminologyError> {
    cs.find(code).ok_or_else(|| TerminologyError::UnknownCode { system: cs.url.clone(), code: code.to_string() })
}

/// The code system a lookup or subsumption test works in: held, with concepts.
pub fn code_system(src: &Source<'_>, system: &str, version: Option<&str>) -> Result<std::sync::Arc<CodeSystem>, TerminologyError> {
    let cs = src.need_code_system(system, version)?;
    if cs.concepts.is_empty() {
        return Err(TerminologyError::NotHeld { system: system.to_string(), why: format!("its CodeSystem (content = {}) lists no concepts", cs.content) });
    }
    Ok(cs)
}

/// `$lookup`: name, version, display, designations, the properties held, and the parents and
/// children (as the `parent` / `child` properties).
pub fn lookup(cs: &CodeSystem, code: &str) -> Result<Value, TerminologyError> {
    let i = concept(cs, code)?;
    let c = &cs.concepts[i];
    let mut out = vec![json!({"name": "name", "valueString": cs.name.as_deref().unwrap_or(&cs.url)})];
    if let Some(v) = &cs.version {
        out.push(json!({"name": "version", "valueString": v}));
    }
    if let Some(d) = &c.display {
        out.push(json!({"name": "display", "valueString": d}));
    }
    for (language, value) in &c.designations {
        let mut part = Vec::new();
        if let Some(l) = language {
            part.push(json!({"name": "language", "valueCode": l}));
        }
        part.push(json!({"name": "value", "valueString": value}));
        out.push(json!({"name": "designation", "part": part}));
    }
    let link = |name: &str, j: usize| json!({"name": "property", "part": [{"name": "code", "valueCode": name}, {"name": "value", "valueCode": cs.concepts[j].code}]});
    out.extend(cs.parents(i).iter().map(|&j| link("parent", j)));
    out.extend(cs.children(i).iter().map(|&j| link("child", j)));
    for (code, key, value) in &c.properties {
        let mut v = json!({"name": "value"});
        v[key.as_str()] = value.clone();
        out.push(json!({"name": "property", "part": [{"name": "code", "valueCode": code}, v]}));
    }
    Ok(parameters(out))
}

/// `$subsumes`: how `a` relates to `b` in the is-a hierarchy of `cs`.
pub fn subsumes(cs: &CodeSystem, a: &str, b: &str) -> Result<Value, TerminologyError> {
    let (i, j) = (concept(cs, a)?, concept(cs, b)?);
    let outcome = if i == j {
        "equivalent"
    } else if cs.subsumes(i, j) {
        "subsumes"
    } else if cs.subsumes(j, i) {
        "subsumed-by"
    } else {
        "not-subsumed"
    };
    Ok(parameters(vec![json!({"name": "outcome", "valueCode": outcome})]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::FhirVersion;

    fn param<'a>(p: &'a Value, name: &str) -> Option<&'a Value> {
        p["parameter"].as_array()?.iter().find(|x| x["name"] == name)
    }

    #[test]
    fn lookup_subsumes_validate_and_paging() {
        let ix = crate::machine::testing::indexed();
        let src = Source { version: FhirVersion::R4, tree: &ix.tree };
        let act = code_system(&src, "http://terminology.hl7.org/CodeSystem/v3-ActCode", None).unwrap();
        let l = lookup(&act, "AMB").unwrap();
        assert_eq!(param(&l, "display").unwrap()["valueString"], "ambulatory");
        let parents: Vec<&Value> = l["parameter"].as_array().unwrap().iter().filter(|p| p["part"][0]["valueCode"] == "parent").collect();
        assert!(parents.iter().any(|p| p["part"][1]["valueCode"] == "_ActEncounterCode"));
        let outcome = |a: &str, b: &str| subsumes(&act, a, b).unwrap()["parameter"][0]["valueCode"].as_str().unwrap().to_string();
        assert_eq!(outcome("_ActEncounterCode", "AMB"), "subsumes");
        assert_eq!(outcome("AMB", "_ActEncounterCode"), "subsumed-by");
        assert_eq!(outcome("AMB", "AMB"), "equivalent");
        assert_eq!(outcome("AMB", "EMER"), "not-subsumed");
        assert!(matches!(subsumes(&act, "AMB", "nope"), Err(TerminologyError::UnknownCode { .. })));
        assert!(matches!(code_system(&src, "http://snomed.info/sct", None), Err(TerminologyError::NotHeld { .. })));

        let ex = Expander { src, limit: 1000, key: "test", displays: true };
        let vs = src.value_set("http://hl7.org/fhir/ValueSet/observation-status").unwrap();
        let ok = validate(&ex, &vs, "observation-status", &[Coding { system: Some("http://hl7.org/fhir/observation-status".into()), code: "final".into(), ..Default::default() }]).unwrap();
        assert_eq!(param(&ok, "result").unwrap()["valueBoolean"], true);
        assert_eq!(param(&ok, "display").unwrap()["valueString"], "Final");
        let wrong_display = validate(&ex, &vs, "s", &[Coding { code: "final".into(), display: Some("Done".into()), ..Default::default() }]).unwrap();
        assert_eq!(param(&wrong_display, "result").unwrap()["valueBoolean"], false);
        let no = validate(&ex, &vs, "s", &[Coding { system: Some("urn:x".into()), code: "final".into(), ..Default::default() }]).unwrap();
        assert_eq!(param(&no, "result").unwrap()["valueBoolean"], false);
        assert!(param(&no, "message").unwrap()["valueString"].as_str().unwrap().contains("urn:x|final"));

        let codes = ex.expand(&vs, "s").unwrap();
        let all = codes.len();
        let page = expansion(&vs, codes.clone(), &Page { filter: None, offset: 2, count: Some(3) }, "2024-01-01T00:00:00Z");
        assert_eq!((page["expansion"]["total"].as_u64(), page["expansion"]["contains"].as_array().unwrap().len()), (Some(all as u64), 3));
        assert_eq!(page["expansion"]["contains"][0]["code"], codes[2].code.as_str());
        let filtered = expansion(&vs, codes, &Page { filter: Some("AMEND".into()), offset: 0, count: None }, "t");
        assert_eq!(filtered["expansion"]["total"], 1);
        assert_eq!(filtered["expansion"]["contains"][0]["code"], "amended");
    }
}
