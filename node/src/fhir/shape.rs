//! The shape of FHIR elements: for each type (resource, data type or backbone element), which
//! properties it has, whether each repeats (a JSON array) and which type it holds. Read once per
//! version from the official JSON schema (`definitions/*/properties`, STU3's `allOf` compositions
//! merged) into a small table; the parsed schema itself is dropped. FHIRPath Patch uses it to
//! know whether `add` appends to a list or sets a single element, and the JSON name of a choice
//! element (`value` + `Quantity` → `valueQuantity`).

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::Value;

use super::FhirVersion;

/// One property of a type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prop {
    /// A list in JSON (`max` > 1).
    pub repeats: bool,
    /// The definition its values have (`HumanName`, `Patient_Contact`, `ResourceList`, `string`…).
    pub of: Option<String>,
}

/// Properties by type, for one FHIR version.
#[derive(Debug, Default)]
pub struct Shapes {
    types: HashMap<String, HashMap<String, Prop>>,
}

/// The shapes of `version`, built on first use.
pub fn shapes(version: FhirVersion) -> &'static Shapes {
    static R4: OnceLock<Shapes> = OnceLock::new();
    static STU3: OnceLock<Shapes> = OnceLock::new();
    let cell = match version {
        FhirVersion::R4 => &R4,
        FhirVersion::Stu3 => &STU3,
    };
    cell.get_or_init(|| {
        let schema: Value = serde_json::from_str(super::validate::patches::upstream(version)).expect("the shipped FHIR schema is JSON");
        Shapes::from_schema(&schema)
    })
}

fn ref_name(v: &Value) -> Option<String> {
    v.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/definitions/")).map(String::from)
}

impl Shapes {
    /// Builds the table from a JSON schema with FHIR's `definitions`.
    pub fn from_schema(schema: &Value) -> Shapes {
        let Some(defs) = schema.get("definitions").and_then(Value::as_object) else { return Shapes::default() };
        let mut types = HashMap::new();
        for name in defs.keys() {
            let mut props = HashMap::new();
            collect(defs, name, &mut props, 0);
            types.insert(name.clone(), props);
        }
        Shapes { types }
    }

    /// Property `name` of type `of`.
    pub fn prop(&self, of: &str, name: &str) -> Option<&Prop> {
        self.types.get(of)?.get(name)
    }

    /// Whether the type is known.
    pub fn has_type(&self, of: &str) -> bool {
        self.types.contains_key(of)
    }

    /// The type of the element at `path` (property names and list indexes from the resource
    /// `root` down): `None` when a step is unknown. `contained` resources and other
    /// `ResourceList` values take the type named by their own `resourceType` (read from `doc`).
    pub fn type_at(&self, doc: &Value, path: &[String]) -> Option<String> {
        let mut ty = doc.get("resourceType")?.as_str()?.to_string();
        let mut node = doc;
        for step in path {
            node = match node {
                Value::Array(items) => items.get(step.parse::<usize>().ok()?)?,
                Value::Object(map) => {
                    let prop = self.prop(&ty, step)?;
                    ty = prop.of.clone()?;
                    map.get(step)?
                }
                _ => return None,
            };
            if ty == "ResourceList" || ty == "Resource" {
                if let Some(rt) = node.get("resourceType").and_then(Value::as_str) {
                    ty = rt.to_string();
                }
            }
        }
        Some(ty)
    }
}

/// Properties of definition `name`, following `allOf` parts and their `$ref`s (STU3).
fn collect(defs: &serde_json::Map<String, Value>, name: &str, out: &mut HashMap<String, Prop>, depth: usize) {
    let Some(def) = defs.get(name) else { return };
    if depth > 16 {
        return;
    }
    let mut parts = vec![def];
    if let Some(all) = def.get("allOf").and_then(Value::as_array) {
        parts.extend(all.iter());
    }
    for part in parts {
        if let Some(base) = ref_name(part) {
            if base != name {
                collect(defs, &base, out, depth + 1);
            }
        }
        let Some(props) = part.get("properties").and_then(Value::as_object) else { continue };
        for (pname, p) in props {
            let repeats = p.get("type").and_then(Value::as_str) == Some("array") || p.get("items").is_some();
            let of = if repeats { p.get("items").and_then(ref_name) } else { ref_name(p) };
            // STU3 writes primitives inline (`"type": "string"` with a pattern) without a $ref.
            let of = of.or_else(|| p.get("type").and_then(Value::as_str).filter(|t| *t != "array").map(String::from));
            out.insert(pname.clone(), Prop { repeats, of });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn r4_and_stu3_shapes() {
        for v in [FhirVersion::R4, FhirVersion::Stu3] {
            let s = shapes(v);
            let name = s.prop("Patient", "name").unwrap();
            assert!(name.repeats, "{v:?}");
            assert_eq!(name.of.as_deref(), Some("HumanName"));
            assert!(!s.prop("Patient", "birthDate").unwrap().repeats);
            assert!(s.prop("HumanName", "given").unwrap().repeats);
            assert!(!s.prop("HumanName", "family").unwrap().repeats);
            assert!(s.prop("Observation", "valueQuantity").is_some());
            assert!(s.prop("Patient", "id").is_some(), "inherited from Resource in STU3's allOf");
            assert!(s.prop("Patient", "nope").is_none());
        }
    }

    #[test]
    fn types_along_a_path() {
        let s = shapes(FhirVersion::R4);
        let doc = json!({"resourceType": "Patient", "contact": [{"name": {"given": ["a"]}}], "contained": [{"resourceType": "Organization", "name": "o"}]});
        let at = |p: &[&str]| s.type_at(&doc, &p.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        assert_eq!(at(&[]).as_deref(), Some("Patient"));
        assert_eq!(at(&["contact", "0"]).as_deref(), Some("Patient_Contact"));
        assert_eq!(at(&["contact", "0", "name"]).as_deref(), Some("HumanName"));
        assert_eq!(at(&["contained", "0"]).as_deref(), Some("Organization"));
        assert_eq!(at(&["nope"]), None);
    }
}
