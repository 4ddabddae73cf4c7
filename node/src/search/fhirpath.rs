//! The FHIRPath subset that the official search parameter expressions use, compiled once at
//! start-up and evaluated over a resource's JSON: paths with choice elements (`value` finds
//! `valueQuantity` and remembers its type), unions `|`, `as` / `.as()` / `.ofType()`, `is`,
//! `.where(...)`, `resolve() is Type` (a check of the reference's target type, without
//! resolving), `.extension('url')`, indexers `[n]`, `.first()`, `.exists()`, `.empty()`, `.not()`,
//! `=`, `!=`, `and`, `or`, string / boolean / number literals and `$this`. Anything else is a
//! compile error naming what is not supported. Numbers are never converted to floating point: a
//! JSON number is handed on as its exact text.

use serde_json::Value;

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

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Sym(&'static str),
    End,
}

fn tokenize(src: &str) -> Result<Vec<(usize, Tok)>, FhirPathError> {
    let b = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |pos: usize, msg: &str| FhirPathError::Syntax { pos, msg: msg.into() };
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == b'_' || c == b'$' || c == b'%' {
            let s = i;
            i += 1;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push((s, Tok::Ident(src[s..i].to_string())));
        } else if c == b'`' {
            let s = i + 1;
            let e = src[s..].find('`').ok_or_else(|| err(i, "unterminated `identifier`"))? + s;
            out.push((i, Tok::Ident(src[s..e].to_string())));
            i = e + 1;
        } else if c == b'\'' {
            let mut text = String::new();
            let s = i;
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err(err(s, "unterminated string")),
                    Some(b'\\') => {
                        let next = *b.get(i + 1).ok_or_else(|| err(i, "bad escape"))?;
                        text.push(match next {
                            b'n' => '\n',
                            b't' => '\t',
                            other => other as char,
                        });
                        i += 2;
                    }
                    Some(b'\'') => {
                        i += 1;
                        break;
                    }
                    Some(_) => {
                        let ch = src[i..].chars().next().expect("char");
                        text.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            out.push((s, Tok::Str(text)));
        } else if c.is_ascii_digit() {
            let s = i;
            while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                i += 1;
            }
            out.push((s, Tok::Num(src[s..i].to_string())));
        } else {
            let two = src.get(i..i + 2).unwrap_or("");
            let sym: &'static str = match (two, c) {
                ("!=", _) => "!=",
                ("<=", _) => "<=",
                (">=", _) => ">=",
                (_, b'.') => ".",
                (_, b'(') => "(",
                (_, b')') => ")",
                (_, b'[') => "[",
                (_, b']') => "]",
                (_, b'|') => "|",
                (_, b'=') => "=",
                (_, b',') => ",",
                (_, b'<') => "<",
                (_, b'>') => ">",
                (_, b'+') => "+",
                (_, b'-') => "-",
                (_, b'*') => "*",
                (_, b'/') => "/",
                (_, b'&') => "&",
                (_, b'~') => "~",
                _ => return Err(err(i, &format!("unexpected character {:?}", c as char))),
            };
            out.push((i, Tok::Sym(sym)));
            i += sym.len();
        }
    }
    out.push((src.len(), Tok::End));
    Ok(out)
}

struct Parser {
    toks: Vec<(usize, Tok)>,
    at: usize,
    /// Nesting of sub-expressions (parentheses, function arguments) being parsed.
    depth: usize,
}

/// Deepest nesting of sub-expressions accepted (expressions from clients, such as FHIRPath
/// Patch paths, must not recurse the parser, the evaluator or the tree's drop off the stack).
const MAX_NESTING: usize = 32;

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.at].1
    }

    fn pos(&self) -> usize {
        self.toks[self.at].0
    }

    fn next(&mut self) -> Tok {
        let t = self.toks[self.at].1.clone();
        if self.at + 1 < self.toks.len() {
            self.at += 1;
        }
        t
    }

    fn syntax<T>(&self, msg: impl Into<String>) -> Result<T, FhirPathError> {
        Err(FhirPathError::Syntax { pos: self.pos(), msg: msg.into() })
    }

    fn expect(&mut self, sym: &'static str) -> Result<(), FhirPathError> {
        if self.peek() == &Tok::Sym(sym) {
            self.next();
            Ok(())
        } else {
            self.syntax(format!("expected '{sym}', found {:?}", self.peek()))
        }
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s == w)
    }

    // implies < or/xor < and < in/contains < equality < comparison < union < is/as < postfix
    fn expr(&mut self, inside: bool) -> Result<Expr, FhirPathError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return self.syntax(format!("sub-expressions nest deeper than {MAX_NESTING}"));
        }
        let e = self.or_expr(inside);
        self.depth -= 1;
        e
    }

    fn or_expr(&mut self, inside: bool) -> Result<Expr, FhirPathError> {
        let mut left = self.and(inside)?;
        loop {
            if self.is_word("or") {
                self.next();
                let right = self.and(inside)?;
                left = Expr::Or(Box::new(left), Box::new(right));
            } else if self.is_word("xor") || self.is_word("implies") {
                return Err(FhirPathError::Unsupported(format!("operator {:?}", self.peek())));
            } else {
                return Ok(left);
            }
        }
    }

    fn and(&mut self, inside: bool) -> Result<Expr, FhirPathError> {
        let mut left = self.equality(inside)?;
        while self.is_word("and") {
            self.next();
            let right = self.equality(inside)?;
            left = Expr::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn equality(&mut self, inside: bool) -> Result<Expr, FhirPathError> {
        let left = self.union(inside)?;
        match self.peek() {
            Tok::Sym("=") => {
                self.next();
                Ok(Expr::Eq(Box::new(left), Box::new(self.union(inside)?)))
            }
            Tok::Sym("!=") => {
                self.next();
                Ok(Expr::Ne(Box::new(left), Box::new(self.union(inside)?)))
            }
            Tok::Sym(s @ ("<" | ">" | "<=" | ">=" | "~" | "+" | "-" | "*" | "/" | "&")) => {
                Err(FhirPathError::Unsupported(format!("operator '{s}'")))
            }
            Tok::Ident(w) if ["in", "contains", "div", "mod"].contains(&w.as_str()) => {
                Err(FhirPathError::Unsupported(format!("operator '{w}'")))
            }
            _ => Ok(left),
        }
    }

    fn union(&mut self, inside: bool) -> Result<Expr, FhirPathError> {
        let first = self.typed(inside)?;
        if self.peek() != &Tok::Sym("|") {
            return Ok(first);
        }
        let mut parts = vec![first];
        while self.peek() == &Tok::Sym("|") {
            self.next();
            parts.push(self.typed(inside)?);
        }
        Ok(Expr::Union(parts))
    }

    fn type_name(&mut self) -> Result<String, FhirPathError> {
        match self.next() {
            Tok::Ident(mut t) => {
                // `FHIR.Quantity` / `System.String`
                while self.peek() == &Tok::Sym(".") {
                    self.next();
                    match self.next() {
                        Tok::Ident(n) => t = n,
                        other => return self.syntax(format!("bad type name after '.': {other:?}")),
                    }
                }
                Ok(t)
            }
            other => self.syntax(format!("expected a type name, found {other:?}")),
        }
    }

    fn typed(&mut self, inside: bool) -> Result<Expr, FhirPathError> {
        let mut e = self.postfix(inside)?;
        loop {
            if self.is_word("as") {
                self.next();
                e = Expr::As(Box::new(e), self.type_name()?);
            } else if self.is_word("is") {
                self.next();
                e = Expr::Is(Box::new(e), self.type_name()?);
            } else {
                return Ok(e);
            }
        }
    }

    fn postfix(&mut self, inside: bool) -> Result<Expr, FhirPathError> {
        let mut e = self.primary(inside)?;
        loop {
            match self.peek() {
                Tok::Sym(".") => {
                    self.next();
                    let name = match self.next() {
                        Tok::Ident(n) => n,
                        other => return self.syntax(format!("expected a name after '.', found {other:?}")),
                    };
                    e = self.invocation(e, name)?;
                }
                Tok::Sym("[") => {
                    self.next();
                    let n = match self.next() {
                        Tok::Num(n) => n.parse::<usize>().map_err(|_| FhirPathError::Syntax { pos: self.pos(), msg: "bad index".into() })?,
                        other => return self.syntax(format!("expected an index, found {other:?}")),
                    };
                    self.expect("]")?;
                    e = Expr::Index(Box::new(e), n);
                }
                _ => return Ok(e),
            }
        }
    }

    /// `focus.name` or `focus.name(args)`.
    fn invocation(&mut self, focus: Expr, name: String) -> Result<Expr, FhirPathError> {
        if self.peek() != &Tok::Sym("(") {
            return Ok(Expr::Child(Box::new(focus), name));
        }
        self.next();
        let f = Box::new(focus);
        let e = match name.as_str() {
            "where" => Expr::Where(f, Box::new(self.expr(true)?)),
            "as" | "ofType" => Expr::As(f, self.type_name()?),
            "is" => Expr::Is(f, self.type_name()?),
            "resolve" => Expr::Resolve(f),
            "first" => Expr::First(f),
            "exists" if self.peek() == &Tok::Sym(")") => Expr::Exists(f),
            "exists" => Expr::Exists(Box::new(Expr::Where(f, Box::new(self.expr(true)?)))),
            "empty" => Expr::Empty(f),
            "not" => Expr::Not(f),
            "extension" => match self.next() {
                Tok::Str(url) => Expr::Extension(f, url),
                other => return self.syntax(format!("extension() takes a string, found {other:?}")),
            },
            other => return Err(FhirPathError::Unsupported(format!("function {other}()"))),
        };
        self.expect(")")?;
        Ok(e)
    }

    fn primary(&mut self, inside: bool) -> Result<Expr, FhirPathError> {
        match self.next() {
            Tok::Sym("(") => {
                let e = self.expr(inside)?;
                self.expect(")")?;
                Ok(e)
            }
            Tok::Str(s) => Ok(Expr::Str(s)),
            Tok::Num(n) => Ok(Expr::Num(n)),
            Tok::Ident(w) if w == "true" || w == "false" => Ok(Expr::Bool(w == "true")),
            Tok::Ident(w) if w == "$this" => Ok(Expr::This),
            // The resource being indexed (composite components refer to it).
            Tok::Ident(w) if w == "%resource" => Ok(Expr::Root("Resource".into())),
            Tok::Ident(w) if w.starts_with('%') || w.starts_with('$') => Err(FhirPathError::Unsupported(format!("variable {w}"))),
            Tok::Ident(w) => {
                if self.peek() == &Tok::Sym("(") {
                    // A function on the implicit focus, e.g. `resolve()` inside `where`.
                    self.invocation(Expr::This, w)
                } else if !inside && w.starts_with(|c: char| c.is_ascii_uppercase()) {
                    Ok(Expr::Root(w))
                } else {
                    Ok(Expr::Child(Box::new(Expr::This), w))
                }
            }
            other => self.syntax(format!("unexpected {other:?}")),
        }
    }
}

/// Compiles an expression.
pub fn compile(src: &str) -> Result<Expr, FhirPathError> {
    let mut p = Parser { toks: tokenize(src)?, at: 0, depth: 0 };
    let e = p.expr(false)?;
    if p.peek() != &Tok::End {
        return p.syntax(format!("unexpected {:?} after the expression", p.peek()));
    }
    Ok(e)
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
