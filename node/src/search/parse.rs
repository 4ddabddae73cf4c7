//! Parsing a search request into criteria ([`Query`]): parameter names with modifiers and
//! chains (`subject:Patient.name`), `_has`, `_in-compartment`, value checks per parameter type,
//! and the limits on links. Running the criteria is [`super::query`]'s.

use std::sync::Arc;

use super::date_query::DateTest;
use super::decimal::Decimal;
use super::params::{ParamType, Registry, SearchParam};
use super::query::SearchError;
use crate::fhir::FhirVersion;

/// Result parameters: handled by the HTTP layer, not criteria.
pub const CONTROL: &[&str] = &["_count", "_sort", "_total", "_summary", "_elements", "_format", "_pretty", "_page", "_include", "_revinclude", "_include:iterate", "_revinclude:iterate", "_include:recurse", "_revinclude:recurse"];

/// Control parameters of the spec that are refused with "not supported yet".
const NOT_YET: &[&str] = &["_contained", "_containedType", "_list", "_query", "_filter", "_text", "_content"];

/// Prefixes of ordered types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

pub(super) fn split_prefix(v: &str) -> (Prefix, &str) {
    let p = match v.get(..2) {
        Some("eq") => Prefix::Eq,
        Some("ne") => Prefix::Ne,
        Some("gt") => Prefix::Gt,
        Some("lt") => Prefix::Lt,
        Some("ge") => Prefix::Ge,
        Some("le") => Prefix::Le,
        Some("sa") => Prefix::Sa,
        Some("eb") => Prefix::Eb,
        Some("ap") => Prefix::Ap,
        _ => return (Prefix::Eq, v),
    };
    (p, &v[2..])
}

/// One parameter occurrence: its values are OR-ed.
#[derive(Debug, Clone)]
pub struct Criterion {
    pub param: Arc<SearchParam>,
    pub modifier: Option<String>,
    pub values: Vec<String>,
    /// Chaining or reverse chaining through `param` (a reference parameter).
    pub link: Option<Link>,
}

/// How a criterion reaches other resources.
#[derive(Debug, Clone)]
pub enum Link {
    /// `param[:Type].rest=value`: resources whose `param` references a target (of each listed
    /// type) that matches the inner criterion.
    Chain(Vec<(String, Criterion)>),
    /// `_has:Source:param:rest=value`: resources referenced through `param` by a `Source`
    /// resource matching the inner criterion.
    Has { source: String, inner: Box<Criterion> },
    /// `_in-compartment=Type/id`: resources in the compartment of `Type/id` (linked through
    /// `codes`, the CompartmentDefinition's parameters of the searched type; the compartment's
    /// own resource too). What a `patient/` grant's conditional writes are confined to, in the
    /// replicated condition, so apply decides within the compartment on every node.
    Compartment { ctype: String, id: String, codes: Vec<String> },
    /// `:in` / `:not-in` / `:below` / `:above` on a token: the codes come from a ValueSet or
    /// CodeSystem, stored (read from the searched state) or shipped for this FHIR version
    /// ([`crate::search::terms`]).
    Terms(FhirVersion),
}

/// A parsed search: criteria (AND-ed) and the parameters ignored under `handling=lenient`.
#[derive(Debug, Default)]
pub struct Query {
    pub criteria: Vec<Criterion>,
    pub ignored: Vec<(String, String)>,
}

impl Query {
    /// Whether a criterion (also inside a chain or `_has`) satisfies `test`.
    fn any(&self, test: &dyn Fn(&Criterion) -> bool) -> bool {
        fn walk(c: &Criterion, test: &dyn Fn(&Criterion) -> bool) -> bool {
            match &c.link {
                Some(Link::Chain(links)) => links.iter().any(|(_, inner)| walk(inner, test)),
                Some(Link::Has { inner, .. }) => walk(inner, test),
                Some(Link::Compartment { .. }) => false,
                Some(Link::Terms(_)) | None => test(c),
            }
        }
        self.criteria.iter().any(|c| walk(c, test))
    }

    /// The types a chain or `_has` reads (their resources decide the matches, so a caller must be
    /// allowed to search them too).
    pub fn linked_types(&self) -> Vec<String> {
        fn walk(c: &Criterion, out: &mut Vec<String>) {
            match &c.link {
                Some(Link::Chain(links)) => {
                    for (t, inner) in links {
                        out.push(t.clone());
                        walk(inner, out);
                    }
                }
                Some(Link::Has { source, inner }) => {
                    out.push(source.clone());
                    walk(inner, out);
                }
                // Terminology reads stored ValueSets and CodeSystems.
                Some(Link::Terms(_)) => {
                    if matches!(c.modifier.as_deref(), Some("in" | "not-in")) {
                        out.push("ValueSet".into());
                    }
                    out.push("CodeSystem".into());
                }
                Some(Link::Compartment { .. }) | None => {}
            }
        }
        let mut out = Vec::new();
        for c in &self.criteria {
            walk(c, &mut out);
        }
        out.sort();
        out.dedup();
        out
    }

    /// Whether the answer uses `near` (geometry in floating point).
    pub fn uses_near(&self) -> bool {
        self.any(&|c| c.param.def.kind == ParamType::Special)
    }

    /// Whether the answer depends on the current time (the `ap` prefix on dates): such a query
    /// cannot decide a replicated write.
    pub fn uses_now(&self) -> bool {
        self.any(&|c| {
            let last_is_date = match c.param.def.kind {
                ParamType::Date => true,
                ParamType::Composite => c.param.components.last().is_some_and(|l| l.param.def.kind == ParamType::Date),
                _ => false,
            };
            last_is_date && c.values.iter().any(|v| v.rsplit('$').next().is_some_and(|last| last.starts_with("ap")))
        })
    }
}

/// Splits on unescaped commas (`\,` is a literal comma).
fn split_or(v: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if matches!(chars.peek(), Some(',' | '$' | '|' | '\\')) => out.last_mut().expect("one").push(chars.next().expect("peeked")),
            ',' => out.push(String::new()),
            c => out.last_mut().expect("one").push(c),
        }
    }
    out
}

/// Parses the criteria of a type-level search.
pub fn parse(reg: &Registry, rtype: &str, params: &[(String, String)], lenient: bool) -> Result<Query, SearchError> {
    let mut q = Query::default();
    for (name, value) in params {
        if CONTROL.contains(&name.as_str()) {
            continue;
        }
        match parse_one(reg, rtype, name, value, &mut Links::default()) {
            Ok(c) => q.criteria.push(c),
            Err(e) if lenient => q.ignored.push((name.clone(), e.to_string())),
            Err(e) => return Err(e),
        }
    }
    Ok(q)
}

/// Deepest chain / `_has` nesting accepted: far beyond any path through FHIR's resource graph,
/// and a bound on the recursion a crafted query can cause. Fixed, not configuration: conditional
/// writes run searches inside the state machine, where every node must decide alike.
pub const MAX_LINK_DEPTH: usize = 64;
/// Most links one parameter may expand to: a chain without `:Type` follows every target type of
/// each reference, so its size can grow with each step. Reaching it is an error, never a cut.
pub const MAX_LINKS: usize = 10_000;

/// The links of one parameter so far, and how deep the current one is.
#[derive(Default)]
struct Links {
    depth: usize,
    total: usize,
}

/// `_in-compartment=Type/id` on `rtype`.
fn in_compartment(reg: &Registry, rtype: &str, value: &str) -> Result<Criterion, SearchError> {
    let bad = |reason: String| SearchError::BadValue { param: "_in-compartment".into(), reason };
    let (ctype, id) = value.split_once('/').ok_or_else(|| bad(format!("'{value}' is not Type/id")))?;
    let codes = reg.compartment_params(ctype, rtype).ok_or_else(|| bad(format!("{ctype} is not a compartment")))?;
    let param = reg.get(rtype, "_id").ok_or_else(|| SearchError::UnknownParameter { rtype: rtype.into(), param: "_id".into() })?;
    Ok(Criterion { param: param.clone(), modifier: None, values: Vec::new(), link: Some(Link::Compartment { ctype: ctype.into(), id: id.into(), codes }) })
}

/// One `name=value` on `rtype`, following chains and `_has`.
fn parse_one(reg: &Registry, rtype: &str, name: &str, value: &str, links: &mut Links) -> Result<Criterion, SearchError> {
    if name == "_in-compartment" && links.depth == 0 {
        return in_compartment(reg, rtype, value);
    }
    if name.starts_with("_has:") || name.contains('.') {
        links.total += 1;
        if links.depth >= MAX_LINK_DEPTH {
            return Err(SearchError::TooCostly(format!("{name}: more than {MAX_LINK_DEPTH} chained links")));
        }
        if links.total > MAX_LINKS {
            return Err(SearchError::TooCostly(format!(
                "{name}: the chain expands to more than {MAX_LINKS} links (every target type of each reference); name the types with :Type"
            )));
        }
    }
    let deeper = |reg: &Registry, t: &str, rest: &str, links: &mut Links| {
        links.depth += 1;
        let out = parse_one(reg, t, rest, value, links);
        links.depth -= 1;
        out
    };
    if let Some(rest) = name.strip_prefix("_has:") {
        // _has:Source:param:rest
        let mut parts = rest.splitn(3, ':');
        let (Some(source), Some(code), Some(inner)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SearchError::BadValue { param: name.into(), reason: "use _has:Type:parameter:criterion".into() });
        };
        let param = reg.get(source, code).filter(|p| p.def.kind == ParamType::Reference).ok_or_else(|| SearchError::UnknownParameter {
            rtype: source.into(),
            param: format!("{code} (a reference parameter, in {name})"),
        })?;
        let inner = deeper(reg, source, inner, links)?;
        return Ok(Criterion { param: param.clone(), modifier: None, values: Vec::new(), link: Some(Link::Has { source: source.into(), inner: Box::new(inner) }) });
    }
    if let Some((left, rest)) = name.split_once('.') {
        let (code, modifier) = match left.split_once(':') {
            Some((c, m)) => (c, Some(m.to_string())),
            None => (left, None),
        };
        let param = reg.get(rtype, code).ok_or_else(|| SearchError::UnknownParameter { rtype: rtype.into(), param: name.into() })?;
        if param.def.kind != ParamType::Reference {
            return Err(SearchError::BadValue { param: name.into(), reason: format!("{code} is not a reference parameter and cannot be chained") });
        }
        let targets: Vec<String> = match &modifier {
            Some(t) => vec![t.clone()],
            None => param.def.target.clone(),
        };
        let mut branches = Vec::new();
        let mut last_err = None;
        for t in targets {
            match deeper(reg, &t, rest, links) {
                Ok(c) => branches.push((t, c)),
                // A limit is never a reason to leave a target type out of the answer.
                Err(e @ SearchError::TooCostly(_)) => return Err(e),
                Err(e) => last_err = Some(e),
            }
        }
        if branches.is_empty() {
            return Err(last_err.unwrap_or_else(|| SearchError::BadValue { param: name.into(), reason: "the reference has no target types".into() }));
        }
        return Ok(Criterion { param: param.clone(), modifier, values: Vec::new(), link: Some(Link::Chain(branches)) });
    }
    let (code, modifier) = match name.split_once(':') {
        Some((c, m)) => (c, Some(m.to_string())),
        None => (name, None),
    };
    if NOT_YET.contains(&code) {
        return Err(SearchError::NotSupported(code.to_string()));
    }
    let param = reg.get(rtype, code).ok_or_else(|| SearchError::UnknownParameter { rtype: rtype.into(), param: name.into() })?;
    if !param.searchable() {
        return Err(SearchError::NotSupported(format!("search parameter {code} ({:?})", param.def.kind)));
    }
    if let Some(m) = &modifier {
        check_modifier(param, m)?;
    }
    let values = split_or(value);
    if modifier.is_none() {
        check_values(param, &values)?;
    }
    let terms = param.def.kind == ParamType::Token && modifier.as_deref().is_some_and(|m| crate::search::terms::MODIFIERS.contains(&m));
    let link = terms.then_some(Link::Terms(reg.version));
    Ok(Criterion { param: param.clone(), modifier, values, link })
}

/// Date and number values are checked when the search is parsed, so a bad one is a 400 (or,
/// under lenient handling, an ignored parameter) whatever else the search finds.
fn check_values(p: &SearchParam, values: &[String]) -> Result<(), SearchError> {
    let code = p.def.code.as_str();
    for v in values {
        match p.def.kind {
            ParamType::Date => {
                DateTest::parse(code, v)?;
            }
            ParamType::Number | ParamType::Quantity => {
                let number = v.split('|').next().unwrap_or_default();
                let (_, text) = split_prefix(number);
                if Decimal::parse(text).and_then(|d| d.implicit_range()).is_none() {
                    return Err(SearchError::BadValue { param: code.into(), reason: format!("'{text}' is not a number Kiln can search on (at most 36 digits, magnitude below 10^38)") });
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_modifier(p: &SearchParam, m: &str) -> Result<(), SearchError> {
    let ok = match (p.def.kind, m) {
        (_, "missing") => true,
        (ParamType::String, "exact" | "contains") => true,
        (ParamType::Token, "text" | "not" | "of-type" | "in" | "not-in" | "above" | "below") => true,
        (ParamType::Reference, "identifier") => true,
        (ParamType::Uri, "below" | "above") => true,
        (ParamType::Reference, t) => t.starts_with(|c: char| c.is_ascii_uppercase()),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(SearchError::BadValue { param: format!("{}:{m}", p.def.code), reason: format!("modifier :{m} does not apply to a {:?} parameter", p.def.kind) })
    }
}
