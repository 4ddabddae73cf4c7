//! Kiln's fixes to the upstream FHIR JSON schemas, applied as transformations of the schema JSON
//! before the `jsonschema` crate compiles it (the files in `schemas/` stay byte copies of upstream):
//! - R4: `schemas/r4/schema-patch.json`, an RFC 6902 JSON Patch (made by `schemas/make-r4-patch.py`).
//! - STU3 ([`anchor_patterns`], [`fix_stu3_properties`], [`close_stu3_definitions`]): patterns are
//!   unanchored upstream, so every `pattern` is anchored (and its `\s` given XML Schema's meaning, as
//!   in the R4 patch); an `enum` put on an array property (e.g. `ElementDefinition.representation`)
//!   moves to its items; `doseSimpleQuantity`-style names get their correct JSON twin `doseQuantity`;
//!   each definition's `allOf` chain (`Patient` = `DomainResource` + own elements) is flattened into
//!   one object schema with `additionalProperties: false`, so unknown elements are rejected as in R4.
//! - Both ([`require_objects`]): a schema with `properties` also says `type: object` (upstream a
//!   `HumanName` slot accepted `5`, since `properties` alone ignores non-objects).
//! - Both ([`nullable_extension_items`]): `null` is accepted in primitive-extension arrays
//!   (`"_given": [null, {...}]`), as FHIR JSON requires for alignment with the value array.
//! - Both ([`dispatch_resource_list`]): `definitions/ResourceList` (a `oneOf` over every resource
//!   type, used for the root, `contained`, `Bundle.entry.resource`, ...) becomes a `resourceType`
//!   check plus a binary tree of `if`/`then`/`else` on it ([`dispatch_tree`]), so a resource is
//!   checked against its own type only, and an invalid one reports that type's errors. A failing
//!   `oneOf` collects every branch's errors (the crate's discriminator only speeds up the valid
//!   case), recursively: exponential in the nesting of contained resources. The schema becomes
//!   draft-07, the first draft with `if`/`then`; the other keywords used mean the same in draft-04/06.

use std::collections::BTreeSet;

use serde_json::{json, Map, Value};

use super::errors::ValidateError;
use crate::fhir::FhirVersion;

/// The bundled upstream schema of `version`, as shipped.
pub fn upstream(version: FhirVersion) -> &'static str {
    match version {
        FhirVersion::R4 => include_str!("../../../../schemas/r4/fhir.schema.json"),
        FhirVersion::Stu3 => include_str!("../../../../schemas/stu3/fhir.schema.json"),
    }
}

/// The schema of `version` with every fix of the module doc applied, and its resource types (sorted).
pub fn patched(version: FhirVersion) -> Result<(Value, Vec<String>), ValidateError> {
    let mut doc: Value = serde_json::from_str(upstream(version)).map_err(ValidateError::SchemaJson)?;
    match version {
        FhirVersion::R4 => {
            let patch: json_patch::Patch = serde_json::from_str(include_str!("../../../../schemas/r4/schema-patch.json"))
                .map_err(ValidateError::SchemaJson)?;
            json_patch::patch(&mut doc, &patch)?;
        }
        FhirVersion::Stu3 => {
            anchor_patterns(&mut doc);
            fix_stu3_properties(&mut doc);
            close_stu3_definitions(&mut doc)?;
        }
    }
    let types = resource_types(&doc);
    require_objects(&mut doc);
    nullable_extension_items(&mut doc);
    dispatch_resource_list(&mut doc, &types)?;
    Ok((doc, types))
}

fn definitions(doc: &mut Value) -> Result<&mut Map<String, Value>, ValidateError> {
    doc.get_mut("definitions").and_then(Value::as_object_mut).ok_or(ValidateError::Shape("no `definitions` object"))
}

/// The names in `definitions.ResourceList.oneOf`, sorted.
fn resource_types(doc: &Value) -> Vec<String> {
    let names: BTreeSet<String> = doc["definitions"]["ResourceList"]["oneOf"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["$ref"].as_str()?.strip_prefix("#/definitions/").map(str::to_string))
        .collect();
    names.into_iter().collect()
}

/// STU3: JSON-schema patterns are unanchored searches; FHIR's regexes are whole-value matches.
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

/// STU3: `*SimpleQuantity` twins and `enum` moved from arrays to their items.
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
                for prop in props.values_mut().filter_map(Value::as_object_mut) {
                    if prop.get("type") == Some(&Value::String("array".into())) {
                        if let Some(options) = prop.remove("enum") {
                            if let Some(items) = prop.get_mut("items").and_then(Value::as_object_mut) {
                                items.insert("enum".into(), options);
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

/// STU3: every definition `{"allOf": [{"$ref": base}, {"properties": ..., "required": ...}]}`
/// becomes one closed object schema holding its bases' elements and its own. An element declared
/// twice (`Resource.id` over `Element.id`) keeps both schemas under `allOf`, as before.
fn close_stu3_definitions(doc: &mut Value) -> Result<(), ValidateError> {
    let defs = definitions(doc)?;
    let names: Vec<String> = defs.keys().filter(|n| defs[*n].get("allOf").is_some()).cloned().collect();
    let mut closed = Vec::with_capacity(names.len());
    for name in &names {
        let mut props = Map::new();
        let mut required = Vec::new();
        collect_elements(defs, name, &mut props, &mut required, &mut BTreeSet::new())?;
        let mut schema = Map::new();
        if let Some(d) = defs[name].get("allOf").and_then(|parts| parts.as_array()?.iter().find_map(|p| p.get("description"))) {
            schema.insert("description".into(), d.clone());
        }
        schema.insert("properties".into(), Value::Object(props));
        schema.insert("additionalProperties".into(), Value::Bool(false));
        if !required.is_empty() {
            schema.insert("required".into(), Value::Array(required));
        }
        closed.push(Value::Object(schema));
    }
    for (name, schema) in names.into_iter().zip(closed) {
        defs.insert(name, schema);
    }
    Ok(())
}

/// Gathers the elements of definition `name` along its `allOf` / `$ref` chain, bases first.
fn collect_elements(
    defs: &Map<String, Value>,
    name: &str,
    props: &mut Map<String, Value>,
    required: &mut Vec<Value>,
    seen: &mut BTreeSet<String>,
) -> Result<(), ValidateError> {
    if !seen.insert(name.to_string()) {
        return Ok(());
    }
    let parts = defs.get(name).and_then(|d| d.get("allOf")).and_then(Value::as_array).ok_or(ValidateError::Shape("an STU3 base definition without allOf"))?;
    for part in parts {
        if let Some(base) = part.get("$ref").and_then(Value::as_str) {
            let base = base.strip_prefix("#/definitions/").ok_or(ValidateError::Shape("a $ref outside #/definitions"))?;
            collect_elements(defs, base, props, required, seen)?;
        }
        for (key, schema) in part.get("properties").and_then(Value::as_object).into_iter().flatten() {
            match props.get_mut(key) {
                Some(existing) if existing != schema => *existing = json!({"allOf": [existing.take(), schema.clone()]}),
                Some(_) => {}
                None => {
                    props.insert(key.clone(), schema.clone());
                }
            }
        }
        for r in part.get("required").and_then(Value::as_array).into_iter().flatten() {
            if !required.contains(r) {
                required.push(r.clone());
            }
        }
    }
    Ok(())
}

/// Both: a schema with `properties` accepts objects only.
fn require_objects(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.get("properties").is_some_and(Value::is_object) && !map.contains_key("type") {
                map.insert("type".into(), Value::String("object".into()));
            }
            for (key, sub) in map.iter_mut() {
                if key == "properties" {
                    sub.as_object_mut().into_iter().flat_map(|p| p.values_mut()).for_each(require_objects);
                } else {
                    require_objects(sub);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(require_objects),
        _ => {}
    }
}

/// Both: the items of `_x` arrays may be `null`. Items that are a `$ref` to an object definition
/// point at its nullable twin `{name}-or-null` (same schema, `type: ["object", "null"]`).
fn nullable_extension_items(doc: &mut Value) {
    let mut twins: BTreeSet<String> = BTreeSet::new();
    mark_extension_items(doc, &mut twins);
    let Some(defs) = doc.get_mut("definitions").and_then(Value::as_object_mut) else { return };
    for name in twins {
        if let Some(mut twin) = defs.get(&name).cloned() {
            if let Some(obj) = twin.as_object_mut() {
                obj.insert("type".into(), json!(["object", "null"]));
            }
            defs.insert(format!("{name}-or-null"), twin);
        }
    }
}

fn mark_extension_items(v: &mut Value, twins: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get_mut("properties") {
                for (_, prop) in props.iter_mut().filter(|(k, _)| k.starts_with('_')) {
                    let Some(items) = prop.get_mut("items") else { continue };
                    let target = items.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix("#/definitions/")).map(str::to_string);
                    match target {
                        Some(name) => {
                            *items = json!({"$ref": format!("#/definitions/{name}-or-null")});
                            twins.insert(name);
                        }
                        None => *items = json!({"anyOf": [{"type": "null"}, items.take()]}),
                    }
                }
            }
            map.values_mut().for_each(|sub| mark_extension_items(sub, twins));
        }
        Value::Array(items) => items.iter_mut().for_each(|sub| mark_extension_items(sub, twins)),
        _ => {}
    }
}

/// Both: `ResourceList` dispatches on `resourceType`; the root is a `ResourceList`.
fn dispatch_resource_list(doc: &mut Value, types: &[String]) -> Result<(), ValidateError> {
    if types.is_empty() {
        return Err(ValidateError::Shape("no resource types in definitions/ResourceList"));
    }
    let list = json!({
        "description": "A resource of any type: its resourceType names the definition it follows",
        "type": "object",
        "required": ["resourceType"],
        "properties": {"resourceType": {"enum": types}},
        "if": {"required": ["resourceType"], "properties": {"resourceType": {"enum": types}}},
        "then": dispatch_tree(types)
    });
    definitions(doc)?.insert("ResourceList".into(), list);
    let root = doc.as_object_mut().ok_or(ValidateError::Shape("the schema is not an object"))?;
    for key in ["oneOf", "discriminator", "id", "$id"] {
        root.remove(key);
    }
    root.insert("$schema".into(), json!("http://json-schema.org/draft-07/schema#"));
    root.insert("$ref".into(), json!("#/definitions/ResourceList"));
    Ok(())
}

/// A binary search over the sorted `types`: `if` its `resourceType` is in the lower half, `then` the
/// lower half's tree, `else` the upper half's; a single type is its definition. Eight `enum` (hash
/// set) checks find one of 146 types; one `if` per type cost a valid R4 example 4x as much in all.
fn dispatch_tree(types: &[String]) -> Value {
    if let [only] = types {
        return json!({"$ref": format!("#/definitions/{only}")});
    }
    let (low, high) = types.split_at(types.len() / 2);
    json!({"if": {"properties": {"resourceType": {"enum": low}}}, "then": dispatch_tree(low), "else": dispatch_tree(high)})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stu3_definitions_are_flattened_and_closed() {
        let (doc, types) = patched(FhirVersion::Stu3).unwrap();
        assert!(types.iter().any(|t| t == "ProcessRequest"));
        let patient = &doc["definitions"]["Patient"];
        assert_eq!(patient["additionalProperties"], json!(false));
        assert_eq!(patient["type"], json!("object"));
        for element in ["id", "meta", "text", "contained", "extension", "birthDate", "_birthDate"] {
            assert!(patient["properties"].get(element).is_some(), "Patient.{element}");
        }
        // Element.id (any string) and Resource.id (the id pattern) both apply.
        assert_eq!(patient["properties"]["id"]["allOf"].as_array().map(Vec::len), Some(2));
        assert!(patient["properties"]["birthDate"]["pattern"].as_str().unwrap().starts_with('^'));
        let dosage = &doc["definitions"]["Dosage"]["properties"];
        assert_eq!(dosage["doseQuantity"], dosage["doseSimpleQuantity"]);
        assert!(doc.to_string().find("\"allOf\":[{\"$ref\"").is_none(), "no allOf inheritance is left");
    }

    #[test]
    fn both_versions_dispatch_and_allow_null_extension_items() {
        for version in [FhirVersion::R4, FhirVersion::Stu3] {
            let (doc, types) = patched(version).unwrap();
            assert_eq!(doc["$ref"], json!("#/definitions/ResourceList"));
            let list = &doc["definitions"]["ResourceList"];
            fn leaves(tree: &Value, out: &mut Vec<String>) {
                match tree["$ref"].as_str() {
                    Some(r) => out.push(r.trim_start_matches("#/definitions/").to_string()),
                    None => ["then", "else"].iter().for_each(|k| leaves(&tree[*k], out)),
                }
            }
            let mut found = Vec::new();
            leaves(&list["then"], &mut found);
            assert_eq!(found, types, "{version}: every type once, in order");
            assert_eq!(list["properties"]["resourceType"]["enum"].as_array().unwrap().len(), types.len());
            let given = &doc["definitions"]["HumanName"]["properties"]["_given"]["items"];
            assert_eq!(given["$ref"], json!("#/definitions/Element-or-null"), "{version}");
            assert_eq!(doc["definitions"]["Element-or-null"]["type"], json!(["object", "null"]));
        }
    }
}
