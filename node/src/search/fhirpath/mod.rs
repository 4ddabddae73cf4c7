//! The FHIRPath subset that the official search parameter expressions use, compiled once at
//! start-up and evaluated over a resource's JSON: paths with choice elements (`value` finds
//! `valueQuantity` and remembers its type), unions `|`, `as` / `.as()` / `.ofType()`, `is`,
//! `.where(...)`, `resolve() is Type` (a check of the reference's target type, without
//! resolving), `.extension('url')`, indexers `[n]`, `.first()`, `.exists()`, `.empty()`, `.not()`,
//! `=`, `!=`, `and`, `or`, string / boolean / number literals and `$this`. Anything else is a
//! compile error naming what is not supported. Numbers are never converted to floating point: a
//! JSON number is handed on as its exact text.
//!
//! Tokenizing and parsing into [`Expr`] is [`parse`]'s; evaluating is here.

mod parse;

use serde_json::Value;

pub use parse::compile;

/// Why an expression did not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FhirPathError {
    #[error("FHIRPath syntax error at byte {pos}: {msg}")]
    Syntax { pos: usize, msg: String },
    #[error("FHIRPath function or operator not supported: {0}")]
    Unsupported(String),
}

/// A compiled expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// A type name at the start of a path: the resource if it has that type.
    Root(String),
    /// The focus (`$this`, or the implicit start inside `where`).
    This,
    Child(Box<Expr>, String),
    Index(Box<Expr>, usize),
    Where(Box<Expr>, Box<Expr>),
    As(Box<Expr>, String),
    Is(Box<Expr>, String),
    Resolve(Box<Expr>),
    Extension(Box<Expr>, String),
    First(Box<Expr>),
    Exists(Box<Expr>),
    Empty(Box<Expr>),
    Not(Box<Expr>),
    Union(Vec<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Eq(Box<Expr>, Box<Expr>),
    Ne(Box<Expr>, Box<Expr>),
    Str(String),
    Bool(bool),
    Num(String),
}

/// One value in an evaluation result. Two nodes are the same item when they are the same node
/// of the resource (identity, not a deep comparison: unions stay cheap on large resources).
#[derive(Debug, Clone)]
pub enum Item<'a> {
    /// A JSON node, with its FHIR type when the path told it (choice suffix, `as`).
    Node { value: &'a Value, ty: Option<String> },
    Bool(bool),
    Str(String),
    Num(String),
    /// The target of a reference, known only by its type (`resolve()`).
    Resolved(String),
}

/// What makes two items the same for [`PartialEq`], as a hashable value: a node by its address
/// and type, the others by value.
#[derive(PartialEq, Eq, Hash)]
enum ItemKey {
    Node(usize, Option<String>),
    Bool(bool),
    Str(String),
    Num(String),
    Resolved(String),
}

impl Item<'_> {
    fn key(&self) -> ItemKey {
        match self {
            Item::Node { value, ty } => ItemKey::Node(std::ptr::from_ref::<Value>(value) as usize, ty.clone()),
            Item::Bool(b) => ItemKey::Bool(*b),
            Item::Str(s) => ItemKey::Str(s.clone()),
            Item::Num(s) => ItemKey::Num(s.clone()),
            Item::Resolved(s) => ItemKey::Resolved(s.clone()),
        }
    }
}

impl PartialEq for Item<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Item::Node { value: a, ty: ta }, Item::Node { value: b, ty: tb }) => std::ptr::eq(*a, *b) && ta == tb,
            (Item::Bool(a), Item::Bool(b)) => a == b,
            (Item::Str(a), Item::Str(b)) | (Item::Num(a), Item::Num(b)) | (Item::Resolved(a), Item::Resolved(b)) => a == b,
            _ => false,
        }
    }
}

fn lower_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_ascii_lowercase().to_string() + c.as_str(),
        None => String::new(),
    }
}

/// Does the type name `want` (FHIRPath spelling) name the type `have`?
fn same_type(have: &str, want: &str) -> bool {
    lower_first(have) == lower_first(want)
}

fn push_json<'a>(out: &mut Vec<Item<'a>>, v: &'a Value, ty: Option<String>) {
    match v {
        Value::Array(items) => {
            for i in items {
                if !i.is_null() {
                    out.push(Item::Node { value: i, ty: ty.clone() });
                }
            }
        }
        Value::Null => {}
        other => out.push(Item::Node { value: other, ty }),
    }
}

fn child<'a>(out: &mut Vec<Item<'a>>, v: &'a Value, name: &str) {
    let Value::Object(map) = v else { return };
    if let Some(x) = map.get(name) {
        push_json(out, x, None);
        return;
    }
    // A choice element: `value` matches `valueQuantity`, `valueDateTime`, ...
    for (k, x) in map {
        if let Some(suffix) = k.strip_prefix(name) {
            if suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
                push_json(out, x, Some(suffix.to_string()));
            }
        }
    }
}

fn truthy(items: &[Item]) -> bool {
    match items {
        [] => false,
        [Item::Bool(b)] => *b,
        [Item::Node { value: Value::Bool(b), .. }] => *b,
        _ => true,
    }
}

fn as_text(i: &Item) -> Option<String> {
    match i {
        Item::Node { value: Value::String(s), .. } => Some(s.clone()),
        Item::Node { value: Value::Number(n), .. } => Some(n.to_string()),
        Item::Node { value: Value::Bool(b), .. } => Some(b.to_string()),
        Item::Str(s) | Item::Num(s) => Some(s.clone()),
        Item::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn equal(a: &[Item], b: &[Item]) -> Option<bool> {
    if a.is_empty() || b.is_empty() {
        return None;
    }
    if a.len() != b.len() {
        return Some(false);
    }
    Some(a.iter().zip(b).all(|(x, y)| match (x, y) {
        (Item::Node { value: v1, .. }, Item::Node { value: v2, .. }) => v1 == v2,
        _ => as_text(x).is_some() && as_text(x) == as_text(y),
    }))
}

/// The type a reference points at: `Patient/1`, `http://x/fhir/Patient/1`, `Patient/1/_history/2`.
pub fn reference_type(reference: &str) -> Option<&str> {
    let path = reference.split(['?', '#']).next().unwrap_or(reference);
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let n = segs.len();
    let ty = if n >= 4 && segs[n - 2] == "_history" { segs[n - 4] } else if n >= 2 { segs[n - 2] } else { return None };
    ty.starts_with(|c: char| c.is_ascii_uppercase()).then_some(ty)
}

thread_local! {
    /// Evaluation steps left on this thread, and whether a charge was refused (`None`: no
    /// budget, as for the search engine's own expressions).
    static STEPS: std::cell::Cell<Option<(u64, bool)>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with at most `steps` evaluation steps (each sub-expression evaluated and each item it
/// yields) on this thread; returns its result and whether the budget ran out (then some
/// evaluations stopped early with no items, so the result must be discarded).
pub fn with_step_budget<T>(steps: u64, f: impl FnOnce() -> T) -> (T, bool) {
    let outer = STEPS.with(|s| s.replace(Some((steps, false))));
    let out = f();
    let spent = STEPS.with(|s| s.replace(outer));
    (out, spent.is_some_and(|(_, exhausted)| exhausted))
}

/// Charges `n` steps; false once the budget is spent.
fn step(n: u64) -> bool {
    STEPS.with(|s| match s.get() {
        None => true,
        Some((left, false)) if left >= n => {
            s.set(Some((left - n, false)));
            true
        }
        Some(_) => {
            s.set(Some((0, true)));
            false
        }
    })
}

/// Evaluates `e` with `focus` as `$this` over `root` (the resource).
pub fn evaluate<'a>(e: &Expr, root: &'a Value, focus: &[Item<'a>]) -> Vec<Item<'a>> {
    if !step(1 + focus.len() as u64) {
        return Vec::new();
    }
    let eval = |x: &Expr| evaluate(x, root, focus);
    match e {
        Expr::Root(t) => {
            let rt = root.get("resourceType").and_then(Value::as_str).unwrap_or("");
            if rt == t || t == "Resource" || t == "DomainResource" {
                vec![Item::Node { value: root, ty: Some(rt.to_string()) }]
            } else {
                Vec::new()
            }
        }
        Expr::This => focus.to_vec(),
        Expr::Child(f, name) => {
            let mut out = Vec::new();
            for i in eval(f) {
                if let Item::Node { value, .. } = i {
                    child(&mut out, value, name);
                }
            }
            if !step(out.len() as u64) {
                return Vec::new();
            }
            out
        }
        Expr::Index(f, n) => eval(f).into_iter().nth(*n).into_iter().collect(),
        Expr::First(f) => eval(f).into_iter().take(1).collect(),
        Expr::Where(f, cond) => eval(f).into_iter().filter(|i| truthy(&evaluate(cond, root, std::slice::from_ref(i)))).collect(),
        Expr::As(f, t) => eval(f)
            .into_iter()
            .filter(|i| match i {
                // Without a known type (not a choice element) the model is not consulted: kept.
                Item::Node { ty: Some(ty), .. } => same_type(ty, t),
                Item::Node { ty: None, .. } => true,
                Item::Resolved(rt) => rt == t,
                _ => false,
            })
            .map(|i| match i {
                Item::Node { value, ty: None } => Item::Node { value, ty: Some(t.clone()) },
                other => other,
            })
            .collect(),
        Expr::Is(f, t) => {
            let items = eval(f);
            match items.as_slice() {
                [] => Vec::new(),
                [Item::Resolved(rt)] => vec![Item::Bool(rt == t)],
                [Item::Node { ty: Some(ty), .. }] => vec![Item::Bool(same_type(ty, t))],
                _ => vec![Item::Bool(false)],
            }
        }
        Expr::Resolve(f) => eval(f)
            .into_iter()
            .filter_map(|i| match i {
                Item::Node { value, .. } => value.get("reference").and_then(Value::as_str).and_then(reference_type).map(|t| Item::Resolved(t.to_string())),
                _ => None,
            })
            .collect(),
        Expr::Extension(f, url) => {
            let mut exts = Vec::new();
            for i in eval(f) {
                if let Item::Node { value, .. } = i {
                    child(&mut exts, value, "extension");
                }
            }
            exts.into_iter()
                .filter(|i| matches!(i, Item::Node { value, .. } if value.get("url").and_then(Value::as_str) == Some(url.as_str())))
                .collect()
        }
        Expr::Exists(f) => vec![Item::Bool(!eval(f).is_empty())],
        Expr::Empty(f) => vec![Item::Bool(eval(f).is_empty())],
        Expr::Not(f) => {
            let v = eval(f);
            if v.is_empty() { Vec::new() } else { vec![Item::Bool(!truthy(&v))] }
        }
        Expr::Union(parts) => {
            // Each distinct item once, in first-seen order; the items seen are kept in a set, not
            // compared one by one, so a union over a large resource stays linear.
            let mut seen = std::collections::HashSet::new();
            let mut out: Vec<Item<'a>> = Vec::new();
            for p in parts {
                for i in eval(p) {
                    if seen.insert(i.key()) {
                        out.push(i);
                    }
                }
            }
            out
        }
        Expr::And(a, b) => {
            let (x, y) = (eval(a), eval(b));
            match (x.is_empty(), y.is_empty()) {
                (false, false) => vec![Item::Bool(truthy(&x) && truthy(&y))],
                _ if (!x.is_empty() && !truthy(&x)) || (!y.is_empty() && !truthy(&y)) => vec![Item::Bool(false)],
                _ => Vec::new(),
            }
        }
        Expr::Or(a, b) => {
            let (x, y) = (eval(a), eval(b));
            if truthy(&x) || truthy(&y) {
                vec![Item::Bool(true)]
            } else if x.is_empty() || y.is_empty() {
                Vec::new()
            } else {
                vec![Item::Bool(false)]
            }
        }
        Expr::Eq(a, b) => equal(&eval(a), &eval(b)).map(Item::Bool).into_iter().collect(),
        Expr::Ne(a, b) => equal(&eval(a), &eval(b)).map(|v| Item::Bool(!v)).into_iter().collect(),
        Expr::Str(s) => vec![Item::Str(s.clone())],
        Expr::Bool(b) => vec![Item::Bool(*b)],
        Expr::Num(n) => vec![Item::Num(n.clone())],
    }
}

/// Evaluates a compiled expression against a resource.
pub fn eval_resource<'a>(e: &Expr, resource: &'a Value) -> Vec<Item<'a>> {
    let rt = resource.get("resourceType").and_then(Value::as_str).map(String::from);
    evaluate(e, resource, &[Item::Node { value: resource, ty: rt }])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(expr: &str, r: &Value) -> Vec<String> {
        let e = compile(expr).unwrap_or_else(|err| panic!("{expr}: {err}"));
        eval_resource(&e, r)
            .iter()
            .map(|i| match i {
                Item::Node { value, ty } => format!("{}{}", value, ty.as_deref().map(|t| format!(":{t}")).unwrap_or_default()),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn paths_choices_and_casts() {
        let obs = json!({"resourceType": "Observation", "valueQuantity": {"value": 6.3, "unit": "mmol/L"},
            "component": [{"valueString": "a"}, {"valueQuantity": {"value": 1}}],
            "subject": {"reference": "Patient/p1"}, "performer": [{"reference": "Practitioner/x"}, {"reference": "http://e.org/fhir/Patient/p2"}]});
        assert_eq!(values("(Observation.value as Quantity).value", &obs), ["6.3"], "decimal text kept exactly");
        assert_eq!(values("Observation.value.as(Quantity).unit", &obs), ["\"mmol/L\""]);
        assert!(values("Observation.value as string", &obs).is_empty());
        assert_eq!(values("Observation.component.value.ofType(string)", &obs), ["\"a\":String"]);
        assert_eq!(values("Patient.name | Observation.subject", &obs), ["{\"reference\":\"Patient/p1\"}"]);
        assert_eq!(values("Observation.performer.where(resolve() is Patient)", &obs), ["{\"reference\":\"http://e.org/fhir/Patient/p2\"}"]);
        assert_eq!(values("Observation.performer[1].reference", &obs).len(), 1);
    }

    #[test]
    fn where_equality_extension_and_booleans() {
        let p = json!({"resourceType": "Patient", "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"}],
            "deceasedDateTime": "2020-01-01", "extension": [{"url": "http://x/race", "valueString": "r"}]});
        assert_eq!(values("Patient.telecom.where(system='email').value", &p), ["\"a@b\""]);
        assert_eq!(values("Patient.deceased.exists() and Patient.deceased != false", &p), ["Bool(true)"]);
        let alive = json!({"resourceType": "Patient", "deceasedBoolean": false});
        assert_eq!(values("Patient.deceased.exists() and Patient.deceased != false", &alive), ["Bool(false)"]);
        assert_eq!(values("Patient.extension('http://x/race').value", &p), ["\"r\":String"]);
        assert_eq!(values("Patient.extension.where(url = 'http://x/race').exists()", &p), ["Bool(true)"]);
    }

    #[test]
    fn unions_of_many_items_stay_linear() {
        // Was: each item compared with every item kept before it: this union over 40,000
        // components (a ~1 MB body) took 35 s in a debug build, and indexing runs on every replica.
        let n = 40_000;
        let comps: Vec<Value> = (0..n).map(|_| json!({"code": {"text": "a"}})).collect();
        let obs = json!({"resourceType": "Observation", "code": {"text": "t"}, "component": comps});
        let e = compile("Observation.code | Observation.component.code | Observation.component.code").unwrap();
        let start = std::time::Instant::now();
        let items = eval_resource(&e, &obs);
        assert_eq!(items.len(), n + 1, "each node once");
        assert!(std::ptr::eq(match &items[1] { Item::Node { value, .. } => *value, _ => panic!() }, &obs["component"][0]["code"]), "first-seen order");
        assert!(start.elapsed() < std::time::Duration::from_secs(5), "{n} items took {:?}", start.elapsed());
        let mixed = eval_resource(&compile("'a' | 'a' | true | true | 1 | 1").unwrap(), &obs);
        assert_eq!(mixed, vec![Item::Str("a".into()), Item::Bool(true), Item::Num("1".into())]);
    }

    #[test]
    fn reference_types() {
        assert_eq!(reference_type("Patient/1"), Some("Patient"));
        assert_eq!(reference_type("http://h/fhir/Encounter/9/_history/2"), Some("Encounter"));
        assert_eq!(reference_type("#contained"), None);
        assert_eq!(reference_type("urn:uuid:1234"), None);
    }

    #[test]
    fn unsupported_is_an_error_not_a_guess() {
        assert!(matches!(compile("Patient.name.select(family)"), Err(FhirPathError::Unsupported(_))));
        assert!(matches!(compile("Patient.birthDate > @2000"), Err(_)));
        assert!(matches!(compile("Patient.name."), Err(FhirPathError::Syntax { .. })));
    }
}
