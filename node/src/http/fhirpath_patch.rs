//! FHIRPath Patch (fhirpatch.html): a `Parameters` resource whose `operation` parameters add,
//! insert, delete, replace or move elements named by FHIRPath. Each operation is evaluated against
//! the document as the previous ones left it and turned into JSON Patch operations at the JSON
//! locations its path selects, so it runs through the same bounded applier as JSON Patch
//! ([`super::patch::Bounded`]: size and depth limits) and the same never-lose-a-write path.
//!
//! Paths use the FHIRPath subset of the search engine ([`crate::search::fhirpath`]: children,
//! indexers, `where`, `first()`, `ofType()`, `extension(url)`, …); a path that leaves the resource
//! (`resolve()`) is refused. Whether `add` appends to a list or sets a single element, and the
//! JSON name of a choice element, come from the FHIR schema ([`crate::fhir::shape`]). Deleting
//! the last item of a list or the last element of an object removes the emptied container too
//! (FHIR JSON has no empty arrays or objects).

use serde_json::{Map, Value};

use super::RequestError;
use crate::fhir::shape::Shapes;
use crate::search::fhirpath::{self, Expr, Item};

/// JSON nodes visited while locating the elements of one patch, at most (a patch of many
/// operations over a large resource is refused instead of taking the CPU).
const MAX_VISITS: usize = 5_000_000;

/// FHIRPath evaluation steps one patch may take ([`fhirpath::with_step_budget`]): nested
/// `where(...)` clauses that restart at the resource cost N^depth, so evaluation is bounded too.
const MAX_STEPS: u64 = 2_000_000;

/// Longest `path` accepted, in bytes (FHIRPath Patch paths are short; a long one only costs).
const MAX_PATH_BYTES: usize = 1024;

/// A value given to `add`, `insert` or `replace`: its JSON and, for `value[x]`, the type suffix.
#[derive(Debug, Clone)]
struct Typed {
    json: Value,
    suffix: Option<String>,
}

#[derive(Debug, Clone)]
enum Kind {
    Add { name: String, value: Typed },
    Insert { index: usize, value: Typed },
    Delete,
    Replace { value: Typed },
    Move { source: usize, destination: usize },
}

#[derive(Debug, Clone)]
struct Op {
    /// Position among the operations (for messages).
    n: usize,
    source: String,
    path: Expr,
    kind: Kind,
}

/// A parsed FHIRPath Patch.
#[derive(Debug, Clone)]
pub struct FhirPatch {
    ops: Vec<Op>,
}

fn invalid(n: usize, msg: impl std::fmt::Display) -> RequestError {
    RequestError::InvalidPatch(format!("FHIRPath Patch operation {n}: {msg}"))
}

fn failed(op: &Op, msg: impl std::fmt::Display) -> RequestError {
    RequestError::PatchFailed(format!("FHIRPath Patch operation {} ({}): {msg}", op.n, op.source))
}

/// The value of a `Parameters` part: `value[x]`, or nested `part`s building an object (a
/// backbone element).
fn part_value(part: &Value, n: usize, depth: usize) -> Result<Typed, RequestError> {
    if depth > 32 {
        return Err(invalid(n, "value parts nest too deep"));
    }
    let obj = part.as_object().ok_or_else(|| invalid(n, "a part is not an object"))?;
    for (k, v) in obj {
        if let Some(suffix) = k.strip_prefix("value") {
            if suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
                return Ok(Typed { json: v.clone(), suffix: Some(suffix.to_string()) });
            }
        }
    }
    let parts = obj.get("part").and_then(Value::as_array).ok_or_else(|| invalid(n, "the value part has neither value[x] nor parts"))?;
    let mut out = Map::new();
    for p in parts {
        let name = p.get("name").and_then(Value::as_str).ok_or_else(|| invalid(n, "a value part has no name"))?;
        let v = part_value(p, n, depth + 1)?.json;
        match out.get_mut(name) {
            Some(Value::Array(list)) => list.push(v),
            Some(one) => *one = Value::Array(vec![one.take(), v]),
            None => {
                out.insert(name.to_string(), v);
            }
        }
    }
    Ok(Typed { json: Value::Object(out), suffix: None })
}

fn index_part(part: &Value, what: &str, n: usize) -> Result<usize, RequestError> {
    let v = part.get("valueInteger").ok_or_else(|| invalid(n, format!("{what} must be a valueInteger")))?;
    v.as_u64().and_then(|i| usize::try_from(i).ok()).ok_or_else(|| invalid(n, format!("{what} must be a non-negative integer")))
}

impl FhirPatch {
    /// Parses a `Parameters` resource of `operation` parameters (at most `max_ops`).
    pub fn parse(doc: &Value, max_ops: usize) -> Result<FhirPatch, RequestError> {
        if doc.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
            return Err(RequestError::InvalidPatch("a FHIRPath Patch is a Parameters resource".into()));
        }
        let params = doc.get("parameter").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
        if params.len() > max_ops {
            return Err(RequestError::PatchTooCostly(format!("it has {} operations; the limit is {max_ops} (config limits.max_patch_ops)", params.len())));
        }
        let mut ops = Vec::with_capacity(params.len());
        for (n, p) in params.iter().enumerate() {
            if p.get("name").and_then(Value::as_str) != Some("operation") {
                return Err(invalid(n, "every parameter of a FHIRPath Patch is named 'operation'"));
            }
            let parts = p.get("part").and_then(Value::as_array).ok_or_else(|| invalid(n, "no parts"))?;
            let mut get = std::collections::HashMap::new();
            for part in parts {
                let name = part.get("name").and_then(Value::as_str).ok_or_else(|| invalid(n, "a part has no name"))?;
                if !["type", "path", "name", "value", "index", "source", "destination"].contains(&name) {
                    return Err(invalid(n, format!("unknown part '{name}'")));
                }
                if get.insert(name, part).is_some() {
                    return Err(invalid(n, format!("part '{name}' given twice")));
                }
            }
            let text = |k: &str| get.get(k).and_then(|p| p.get("valueCode").or_else(|| p.get("valueString"))).and_then(Value::as_str);
            let ty = text("type").ok_or_else(|| invalid(n, "missing type"))?;
            let source = text("path").ok_or_else(|| invalid(n, "missing path"))?.to_string();
            if source.len() > MAX_PATH_BYTES {
                return Err(invalid(n, format!("the path is longer than {MAX_PATH_BYTES} bytes")));
            }
            let path = fhirpath::compile(&source).map_err(|e| invalid(n, format!("path '{source}': {e}")))?;
            let value = || get.get("value").ok_or_else(|| invalid(n, format!("{ty} needs a value"))).and_then(|p| part_value(p, n, 0));
            let index = |k: &str| get.get(k).ok_or_else(|| invalid(n, format!("{ty} needs {k}"))).and_then(|p| index_part(p, k, n));
            let kind = match ty {
                "add" => Kind::Add { name: text("name").ok_or_else(|| invalid(n, "add needs a name"))?.to_string(), value: value()? },
                "insert" => Kind::Insert { index: index("index")?, value: value()? },
                "delete" => Kind::Delete,
                "replace" => Kind::Replace { value: value()? },
                "move" => Kind::Move { source: index("source")?, destination: index("destination")? },
                other => return Err(invalid(n, format!("unknown type '{other}' (add, insert, delete, replace, move)"))),
            };
            ops.push(Op { n, source, path, kind });
        }
        Ok(FhirPatch { ops })
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Applies every operation in order to `body`, each through `apply` (the bounded JSON Patch
    /// applier).
    pub fn apply(
        &self,
        body: &mut Value,
        shapes: &Shapes,
        mut apply: impl FnMut(&mut Value, &json_patch::PatchOperation) -> Result<(), RequestError>,
    ) -> Result<(), RequestError> {
        let mut visits = 0usize;
        for op in &self.ops {
            for json_op in locate(op, body, shapes, &mut visits)? {
                apply(body, &json_op)?;
            }
        }
        Ok(())
    }
}

/// A JSON pointer from its unescaped segments.
fn pointer(segs: &[String]) -> String {
    segs.iter().map(|s| format!("/{}", s.replace('~', "~0").replace('/', "~1"))).collect()
}

fn ptr(segs: &[String]) -> json_patch::jsonptr::PointerBuf {
    json_patch::jsonptr::PointerBuf::from_tokens(segs.iter().map(String::as_str))
}

/// One step of a JSON location: an object key or an array index.
#[derive(Clone, Copy)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// The locations (segments from `root`) of the nodes at the addresses `targets`, in one
/// depth-first walk that keeps, per node, only its parent's slot and its own segment (counting
/// the nodes visited against the patch's budget). `None` for an address not in the document.
fn locations(root: &Value, targets: &[*const Value], visits: &mut usize) -> Result<Vec<Option<Vec<String>>>, RequestError> {
    let mut found: Vec<Option<Vec<String>>> = vec![None; targets.len()];
    let mut left = targets.len();
    let mut slots: Vec<(usize, Option<Seg>)> = Vec::new();
    let mut stack: Vec<(&Value, usize)> = vec![(root, 0)];
    slots.push((0, None));
    while let Some((v, slot)) = stack.pop() {
        if left == 0 {
            break;
        }
        *visits += 1;
        if *visits > MAX_VISITS {
            return Err(RequestError::PatchTooCostly(format!("locating its elements visited more than {MAX_VISITS} JSON nodes")));
        }
        for (i, t) in targets.iter().enumerate() {
            if found[i].is_none() && std::ptr::eq(v, *t) {
                let mut segs = Vec::new();
                let mut at = slot;
                while let (parent, Some(seg)) = slots[at] {
                    segs.push(match seg {
                        Seg::Key(k) => k.to_string(),
                        Seg::Index(i) => i.to_string(),
                    });
                    at = parent;
                }
                segs.reverse();
                found[i] = Some(segs);
                left -= 1;
            }
        }
        match v {
            Value::Object(map) => {
                for (k, x) in map {
                    slots.push((slot, Some(Seg::Key(k))));
                    stack.push((x, slots.len() - 1));
                }
            }
            Value::Array(items) => {
                for (i, x) in items.iter().enumerate() {
                    slots.push((slot, Some(Seg::Index(i))));
                    stack.push((x, slots.len() - 1));
                }
            }
            _ => {}
        }
    }
    Ok(found)
}

/// The nodes a path selects, with their locations; anything else (a `resolve()`d target, a
/// computed value) is refused. Evaluation and the walk are bounded.
fn select<'a>(op: &Op, body: &'a Value, visits: &mut usize) -> Result<Vec<(Vec<String>, &'a Value, Option<String>)>, RequestError> {
    let (items, exhausted) = fhirpath::with_step_budget(MAX_STEPS, || fhirpath::eval_resource(&op.path, body));
    if exhausted {
        return Err(RequestError::PatchTooCostly(format!("operation {} ({}): evaluating the path took more than {MAX_STEPS} steps", op.n, op.source)));
    }
    let mut nodes = Vec::with_capacity(items.len());
    for item in items {
        let Item::Node { value, ty } = item else {
            return Err(failed(op, "the path must select elements of the patched resource"));
        };
        nodes.push((value, ty));
    }
    let targets: Vec<*const Value> = nodes.iter().map(|(v, _)| std::ptr::from_ref::<Value>(*v)).collect();
    let found = locations(body, &targets, visits)?;
    nodes
        .into_iter()
        .zip(found)
        .map(|((value, ty), at)| at.map(|at| (at, value, ty)).ok_or_else(|| failed(op, "the path must select elements of the patched resource")))
        .collect()
}

/// The location of the one list a path selects whole: (list location, its length).
fn whole_list(op: &Op, body: &Value, visits: &mut usize) -> Result<Option<(Vec<String>, usize)>, RequestError> {
    let items = select(op, body, visits)?;
    let not_a_list = || failed(op, "the path must select one whole list (every item of one repeating element)");
    let Some((first, _, _)) = items.first() else { return Ok(None) };
    let (_, parent) = first.split_last().ok_or_else(not_a_list)?;
    let len = body.pointer(&pointer(parent)).and_then(Value::as_array).map(Vec::len).ok_or_else(not_a_list)?;
    let same = items.iter().enumerate().all(|(i, (at, _, _))| at.split_last().is_some_and(|(last, up)| up == parent && *last == i.to_string()));
    if same && len == items.len() {
        Ok(Some((parent.to_vec(), len)))
    } else {
        Err(not_a_list())
    }
}

fn add_op(path: &[String], value: Value) -> json_patch::PatchOperation {
    json_patch::PatchOperation::Add(json_patch::AddOperation { path: ptr(path), value })
}

fn remove_op(path: &[String]) -> json_patch::PatchOperation {
    json_patch::PatchOperation::Remove(json_patch::RemoveOperation { path: ptr(path) })
}

/// The JSON Patch operations one FHIRPath operation stands for, at the current state of `body`.
fn locate(op: &Op, body: &Value, shapes: &Shapes, visits: &mut usize) -> Result<Vec<json_patch::PatchOperation>, RequestError> {
    match &op.kind {
        Kind::Add { name, value } => {
            let (at, node) = match select(op, body, visits)?.as_slice() {
                [(at, node @ Value::Object(_), _)] => (at.clone(), *node),
                [] => return Err(failed(op, "the path selects nothing to add to")),
                [_] => return Err(failed(op, "the path selects a value, not an element to add to")),
                many => return Err(failed(op, format!("the path selects {} elements; add needs exactly one", many.len()))),
            };
            let ty = shapes.type_at(body, &at).ok_or_else(|| failed(op, "the type of the element at the path is not known"))?;
            let choice = value.suffix.as_ref().map(|s| format!("{name}{s}"));
            let (key, prop) = match (shapes.prop(&ty, name), choice.as_ref().and_then(|c| shapes.prop(&ty, c).map(|p| (c, p)))) {
                (Some(p), _) => (name.clone(), p),
                (None, Some((c, p))) => (c.clone(), p),
                (None, None) => return Err(failed(op, format!("{ty} has no element '{name}'"))),
            };
            let mut target = at;
            target.push(key.clone());
            match (prop.repeats, node.get(&key)) {
                (true, Some(Value::Array(_))) => {
                    target.push("-".into());
                    Ok(vec![add_op(&target, value.json.clone())])
                }
                (true, _) => Ok(vec![add_op(&target, Value::Array(vec![value.json.clone()]))]),
                (false, Some(_)) => Err(failed(op, format!("{ty}.{key} is already present and does not repeat: use replace"))),
                (false, None) => Ok(vec![add_op(&target, value.json.clone())]),
            }
        }
        Kind::Insert { index, value } => match whole_list(op, body, visits)? {
            Some((list, len)) if *index <= len => {
                let mut at = list;
                at.push(index.to_string());
                Ok(vec![add_op(&at, value.json.clone())])
            }
            Some((_, len)) => Err(failed(op, format!("index {index} is past the end of the list ({len} items)"))),
            // An empty list: only `Parent.name` at index 0 can start it.
            None => {
                let Expr::Child(parent, name) = &op.path else { return Err(failed(op, "the path selects no list")) };
                if *index != 0 {
                    return Err(failed(op, format!("index {index} is past the end of the empty list")));
                }
                let parent_op = Op { path: (**parent).clone(), ..op.clone() };
                match select(&parent_op, body, visits)?.as_slice() {
                    [(at, Value::Object(_), _)] => {
                        let mut at = at.clone();
                        at.push(name.clone());
                        Ok(vec![add_op(&at, Value::Array(vec![value.json.clone()]))])
                    }
                    _ => Err(failed(op, "the path selects no list")),
                }
            }
        },
        Kind::Delete => match select(op, body, visits)?.as_slice() {
            [] => Ok(Vec::new()),
            [(at, _, _)] if at.is_empty() => Err(failed(op, "the resource itself cannot be deleted by a patch")),
            [(at, _, _)] => {
                // Remove the element, then each container it leaves empty.
                let mut cut = at.clone();
                while cut.len() > 1 {
                    let parent = &cut[..cut.len() - 1];
                    match body.pointer(&pointer(parent)) {
                        Some(Value::Array(a)) if a.len() == 1 => cut.pop(),
                        Some(Value::Object(o)) if o.len() == 1 => cut.pop(),
                        _ => break,
                    };
                }
                Ok(vec![remove_op(&cut)])
            }
            many => Err(failed(op, format!("the path selects {} elements; delete removes one", many.len()))),
        },
        Kind::Replace { value } => match select(op, body, visits)?.as_slice() {
            [(at, _, _)] if at.is_empty() => Err(failed(op, "the resource itself cannot be replaced by a patch")),
            [(at, _, ty)] => {
                let key = at.last().cloned().unwrap_or_default();
                // A choice element given a value of another type changes its JSON name.
                if let (Some(old), Some(new)) = (ty, &value.suffix) {
                    if old != new && key.ends_with(old.as_str()) {
                        let mut renamed = at[..at.len() - 1].to_vec();
                        renamed.push(format!("{}{new}", &key[..key.len() - old.len()]));
                        return Ok(vec![remove_op(at), add_op(&renamed, value.json.clone())]);
                    }
                }
                Ok(vec![json_patch::PatchOperation::Replace(json_patch::ReplaceOperation { path: ptr(at), value: value.json.clone() })])
            }
            [] => Err(failed(op, "the path selects nothing to replace")),
            many => Err(failed(op, format!("the path selects {} elements; replace needs exactly one", many.len()))),
        },
        Kind::Move { source, destination } => match whole_list(op, body, visits)? {
            Some((list, len)) if *source < len && *destination < len => {
                let (mut from, mut to) = (list.clone(), list);
                from.push(source.to_string());
                to.push(destination.to_string());
                Ok(vec![json_patch::PatchOperation::Move(json_patch::MoveOperation { from: ptr(&from), path: ptr(&to) })])
            }
            Some((_, len)) => Err(failed(op, format!("source {source} and destination {destination} must be below the list's length {len}"))),
            None => Err(failed(op, "the path selects no list")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::{shape::shapes, FhirVersion};
    use serde_json::json;

    fn op(ty: &str, path: &str, extra: Vec<Value>) -> Value {
        let mut parts = vec![json!({"name": "type", "valueCode": ty}), json!({"name": "path", "valueString": path})];
        parts.extend(extra);
        json!({"name": "operation", "part": parts})
    }

    fn run(body: &mut Value, ops: Vec<Value>) -> Result<(), RequestError> {
        let doc = json!({"resourceType": "Parameters", "parameter": ops});
        let patch = FhirPatch::parse(&doc, 100)?;
        let mut bounded = super::super::patch::Bounded::new(body, 1 << 20, 64);
        patch.apply(body, shapes(FhirVersion::R4), |b, o| bounded.apply(b, o))
    }

    fn patient() -> Value {
        json!({"resourceType": "Patient", "id": "p", "name": [{"family": "Doe", "given": ["Jo"]}], "birthDate": "1970-01-01"})
    }

    #[test]
    fn add_appends_to_lists_and_sets_single_elements() {
        let mut p = patient();
        run(&mut p, vec![
            op("add", "Patient.name[0]", vec![json!({"name": "name", "valueString": "given"}), json!({"name": "value", "valueString": "Al"})]),
            op("add", "Patient", vec![json!({"name": "name", "valueString": "identifier"}), json!({"name": "value", "valueIdentifier": {"system": "s", "value": "1"}})]),
            op("add", "Patient", vec![json!({"name": "name", "valueString": "gender"}), json!({"name": "value", "valueCode": "female"})]),
            op("add", "Patient", vec![json!({"name": "name", "valueString": "contact"}), json!({"name": "value", "part": [{"name": "name", "valueHumanName": {"text": "Mum"}}]})]),
        ])
        .unwrap();
        assert_eq!(p["name"][0]["given"], json!(["Jo", "Al"]));
        assert_eq!(p["identifier"], json!([{"system": "s", "value": "1"}]));
        assert_eq!(p["gender"], "female");
        assert_eq!(p["contact"], json!([{"name": {"text": "Mum"}}]));
        let again = run(&mut p, vec![op("add", "Patient", vec![json!({"name": "name", "valueString": "gender"}), json!({"name": "value", "valueCode": "male"})])]);
        assert!(again.unwrap_err().to_string().contains("use replace"));
        let unknown = run(&mut p, vec![op("add", "Patient", vec![json!({"name": "name", "valueString": "colour"}), json!({"name": "value", "valueCode": "x"})])]);
        assert!(unknown.unwrap_err().to_string().contains("no element 'colour'"));
    }

    #[test]
    fn choice_elements_take_their_json_names() {
        let mut o = json!({"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"}});
        run(&mut o, vec![op("add", "Observation", vec![json!({"name": "name", "valueString": "value"}), json!({"name": "value", "valueQuantity": {"value": 5}})])]).unwrap();
        assert_eq!(o["valueQuantity"], json!({"value": 5}));
        run(&mut o, vec![op("replace", "Observation.value", vec![json!({"name": "value", "valueString": "five"})])]).unwrap();
        assert_eq!(o.get("valueQuantity"), None);
        assert_eq!(o["valueString"], "five");
    }

    #[test]
    fn insert_move_replace_delete() {
        let mut p = patient();
        p["identifier"] = json!([{"value": "a"}, {"value": "b"}]);
        run(&mut p, vec![
            op("insert", "Patient.identifier", vec![json!({"name": "index", "valueInteger": 1}), json!({"name": "value", "valueIdentifier": {"value": "x"}})]),
            op("move", "Patient.identifier", vec![json!({"name": "source", "valueInteger": 0}), json!({"name": "destination", "valueInteger": 2})]),
            op("replace", "Patient.birthDate", vec![json!({"name": "value", "valueDate": "1980-02-02"})]),
            op("insert", "Patient.telecom", vec![json!({"name": "index", "valueInteger": 0}), json!({"name": "value", "valueContactPoint": {"system": "phone", "value": "1"}})]),
        ])
        .unwrap();
        assert_eq!(p["identifier"], json!([{"value": "x"}, {"value": "b"}, {"value": "a"}]));
        assert_eq!(p["birthDate"], "1980-02-02");
        assert_eq!(p["telecom"], json!([{"system": "phone", "value": "1"}]));
        run(&mut p, vec![op("delete", "Patient.identifier.where(value = 'b')", vec![]), op("delete", "Patient.nothing", vec![])]).unwrap();
        assert_eq!(p["identifier"], json!([{"value": "x"}, {"value": "a"}]));
        // Deleting the only given name of the only name leaves no empty containers behind.
        run(&mut p, vec![op("delete", "Patient.name[0].given", vec![]), op("delete", "Patient.name[0].family", vec![])]).unwrap();
        assert_eq!(p.get("name"), None, "{p}");
        let two = run(&mut p, vec![op("delete", "Patient.identifier", vec![])]);
        assert!(two.unwrap_err().to_string().contains("selects 2 elements"));
        let past = run(&mut p, vec![op("insert", "Patient.identifier", vec![json!({"name": "index", "valueInteger": 5}), json!({"name": "value", "valueIdentifier": {}})])]);
        assert!(past.unwrap_err().to_string().contains("past the end"));
        let partial = run(&mut p, vec![op("move", "Patient.identifier.where(value = 'a')", vec![json!({"name": "source", "valueInteger": 0}), json!({"name": "destination", "valueInteger": 0})])]);
        assert!(partial.unwrap_err().to_string().contains("whole list"));
    }

    #[test]
    fn malformed_patches_are_refused() {
        let bad = |ops: Vec<Value>| FhirPatch::parse(&json!({"resourceType": "Parameters", "parameter": ops}), 3).unwrap_err();
        assert!(matches!(bad(vec![op("frobnicate", "Patient", vec![])]), RequestError::InvalidPatch(_)));
        assert!(matches!(bad(vec![op("replace", "Patient.(", vec![])]), RequestError::InvalidPatch(_)));
        assert!(matches!(bad(vec![op("replace", "Patient.active", vec![])]), RequestError::InvalidPatch(_)), "replace without a value");
        assert!(matches!(bad(vec![op("insert", "Patient.name", vec![json!({"name": "index", "valueInteger": -1}), json!({"name": "value", "valueString": "x"})])]), RequestError::InvalidPatch(_)));
        assert!(matches!(bad(vec![json!({"name": "op"})]), RequestError::InvalidPatch(_)));
        assert!(matches!(bad((0..4).map(|_| op("delete", "Patient.active", vec![])).collect()), RequestError::PatchTooCostly(_)));
        assert!(FhirPatch::parse(&json!({"resourceType": "Patient"}), 3).is_err());
        let mut p = patient();
        let cross = run(&mut p, vec![op("delete", "Patient.managingOrganization.resolve()", vec![])]);
        assert!(cross.is_ok(), "nothing selected: nothing deleted");
        p["managingOrganization"] = json!({"reference": "Organization/1"});
        let cross = run(&mut p, vec![op("delete", "Patient.managingOrganization.resolve()", vec![])]);
        assert!(cross.unwrap_err().to_string().contains("elements of the patched resource"));
        let root = run(&mut p, vec![op("delete", "Patient", vec![])]);
        assert!(root.unwrap_err().to_string().contains("cannot be deleted"));
        let moved = run(&mut p, vec![op("move", "Patient", vec![json!({"name": "source", "valueInteger": 0}), json!({"name": "destination", "valueInteger": 0})])]);
        assert!(moved.unwrap_err().to_string().contains("whole list"), "the root is no list (and no panic)");
        let inserted = run(&mut p, vec![op("insert", "Patient.name | Patient", vec![json!({"name": "index", "valueInteger": 0}), json!({"name": "value", "valueString": "x"})])]);
        assert!(inserted.is_err());
    }

    #[test]
    fn hostile_paths_are_bounded() {
        let mut p = patient();
        // Nesting that would recurse the parser, evaluator and drop off the stack.
        let deep = format!("{}Patient{}", "(".repeat(200), ")".repeat(200));
        assert!(matches!(run(&mut p, vec![op("delete", &deep, vec![])]), Err(RequestError::InvalidPatch(_))));
        let long = format!("Patient{}", ".a".repeat(600));
        assert!(matches!(run(&mut p, vec![op("delete", &long, vec![])]), Err(RequestError::InvalidPatch(_))));
        // where() clauses that restart at the resource: N^depth evaluations, stopped by the budget.
        p["identifier"] = Value::Array((0..40).map(|i| json!({"value": i.to_string()})).collect());
        let mut path = "%resource.identifier.exists()".to_string();
        for _ in 0..6 {
            path = format!("%resource.identifier.where({path}).exists()");
        }
        path = format!("Patient.identifier.where({path})");
        let started = std::time::Instant::now();
        let err = run(&mut p, vec![op("delete", &path, vec![])]).unwrap_err();
        assert!(matches!(err, RequestError::PatchTooCostly(_)), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(20));
    }
}
