//! Running search criteria ([`super::parse`]) on the embedded index. Semantics
//! are search.html's: repeated parameters AND, comma-separated values OR; prefixes
//! `eq ne gt lt ge le sa eb ap` with the implicit range of the value's precision; modifiers
//! `:missing`, `:exact`, `:contains` (string), `:text`, `:not` (token), `:[type]` (reference),
//! `:below`, `:above` (uri), `:of-type` (token), `:identifier` (reference); composite parameters
//! (`a$b`) and `near`. What is not implemented yet is refused with a 400 that says so.

use crate::store::space::Space;
use std::collections::HashMap;
use std::sync::Arc;

use roaring::RoaringBitmap;

use super::decimal::Decimal;
use super::extract::normalize;
use super::index::{base_exact, base_open, composite_base, exact_prefix, kind_prefix, live_row, param_prefix, param_rows, push_str};
use super::date_query::{self, DateTest};
use super::posting::{self, PostingError};
use super::params::{ParamType, Registry};
pub(super) use super::parse::split_prefix;
pub use super::parse::{parse, Criterion, Link, Prefix, Query, CONTROL, MAX_LINKS, MAX_LINK_DEPTH};
use crate::store::StoreError;

/// Why a search request is refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SearchError {
    #[error("unknown search parameter '{param}' for {rtype} (see GET /metadata for the supported ones)")]
    UnknownParameter { rtype: String, param: String },
    #[error("invalid value for search parameter '{param}': {reason}")]
    BadValue { param: String, reason: String },
    #[error("'{0}' is not supported by this server yet")]
    NotSupported(String),
    #[error("search too costly: {0}")]
    TooCostly(String),
    /// A terminology modifier that cannot be evaluated (storage failures and spent budgets are
    /// [`SearchError::Store`] / [`SearchError::TooCostly`], as for every other criterion).
    #[error(transparent)]
    Terminology(crate::terminology::TerminologyError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<PostingError> for SearchError {
    fn from(e: PostingError) -> Self {
        match e {
            PostingError::TooCostly(x) => x.into(),
            e => SearchError::Store(e.into()),
        }
    }
}

impl From<crate::terminology::TerminologyError> for SearchError {
    fn from(e: crate::terminology::TerminologyError) -> Self {
        use crate::terminology::TerminologyError as T;
        match e {
            T::Store(s) => SearchError::Store(s),
            T::TooCostly(x) => SearchError::TooCostly(x),
            e => SearchError::Terminology(e),
        }
    }
}

impl From<super::cost::Exhausted> for SearchError {
    fn from(e: super::cost::Exhausted) -> Self {
        SearchError::TooCostly(e.to_string())
    }
}

impl From<sled::Error> for SearchError {
    fn from(e: sled::Error) -> Self {
        SearchError::Store(e.into())
    }
}

/// The ids of `rtype` matching a condition (a search that decides a replicated write), in id
/// order, read within the row budget of [`super::cost`]. Refused, identically on every node:
/// parameters that do not parse, and queries whose answer is not a function of the replicated
/// state alone (`ap` reads the clock, `near` computes with platform floating point).
pub fn condition_ids(reg: &Registry, tree: &Space, rtype: &str, params: &[(String, String)]) -> Result<Vec<String>, SearchError> {
    let q = condition_query(reg, rtype, params)?;
    let mut ids = super::cost::limited(super::cost::CONDITION_ROWS, || (Executor { tree, rtype }).run_ids(&q))?;
    ids.sort();
    Ok(ids)
}

/// [`condition_ids`] as doc numbers (an export's `_typeFilter`, decided at apply).
pub fn condition_docs(reg: &Registry, tree: &Space, rtype: &str, params: &[(String, String)]) -> Result<Ids, SearchError> {
    let q = condition_query(reg, rtype, params)?;
    super::cost::limited(super::cost::CONDITION_ROWS, || (Executor { tree, rtype }).run(&q))
}

/// A search that decides replicated state: parsed strictly, without what replicas could
/// evaluate differently.
fn condition_query(reg: &Registry, rtype: &str, params: &[(String, String)]) -> Result<Query, SearchError> {
    let q = parse(reg, rtype, params, false)?;
    if q.uses_now() {
        return Err(SearchError::NotSupported("the ap prefix in a condition (it depends on the current time)".into()));
    }
    if q.uses_near() {
        return Err(SearchError::NotSupported("near in a condition (its distance is computed in floating point, which replicas need not share)".into()));
    }
    Ok(q)
}

thread_local! {
    /// The resources chains and `_has` may read, per linked type, for the search running on
    /// this thread ([`with_link_scope`]); types not in it are read whole.
    static LINK_SCOPE: std::cell::RefCell<Option<Arc<HashMap<String, Ids>>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with chains and `_has` limited, per linked type, to `scope` (the caller's reach:
/// a `patient/` grant reads only that patient's compartment through a chain too).
pub fn with_link_scope<T>(scope: Option<Arc<HashMap<String, Ids>>>, f: impl FnOnce() -> T) -> T {
    /// Puts the previous scope back however `f` ends (a panic on a reused blocking thread must
    /// not leave this request's scope behind).
    struct Restore(Option<Option<Arc<HashMap<String, Ids>>>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take().flatten();
            LINK_SCOPE.with(|s| *s.borrow_mut() = previous);
        }
    }
    let _restore = Restore(Some(LINK_SCOPE.with(|s| s.replace(scope))));
    f()
}

/// `ids` of `rtype` limited to the link scope of this thread.
fn link_scoped(rtype: &str, ids: Ids) -> Ids {
    LINK_SCOPE.with(|s| match s.borrow().as_ref().and_then(|m| m.get(rtype)) {
        Some(within) => ids & within,
        None => ids,
    })
}

/// Runs queries against the `state` tree.
pub struct Executor<'a> {
    pub tree: &'a Space,
    pub rtype: &'a str,
}

/// A result: doc numbers of `rtype` ([`super::posting`]), in creation order.
pub type Ids = RoaringBitmap;

impl Executor<'_> {
    /// Every current, non-deleted resource of the type.
    pub fn all(&self) -> Result<Ids, SearchError> {
        let mut out = Ids::new();
        self.scan(&live_row(self.rtype), &mut out)?;
        Ok(out)
    }

    fn scan(&self, prefix: &[u8], out: &mut Ids) -> Result<(), SearchError> {
        Ok(posting::scan(self.tree, prefix, out)?)
    }

    /// Rows of one kind with the key part after `prefix` handed to `keep`.
    fn scan_filter(&self, prefix: &[u8], keep: impl Fn(&[u8]) -> bool, out: &mut Ids) -> Result<(), SearchError> {
        Ok(posting::scan_filter(self.tree, prefix, keep, out)?)
    }

    /// The doc numbers matching every criterion.
    pub fn run(&self, q: &Query) -> Result<Ids, SearchError> {
        let mut result: Option<Ids> = None;
        let mut and = |ids: Ids| {
            let r = match result.take() {
                None => ids,
                Some(r) => r & ids,
            };
            let empty = r.is_empty();
            result = Some(r);
            empty
        };
        // A lower and an upper bound on one date parameter: one scan bounded on both sides.
        let mut done = vec![false; q.criteria.len()];
        for (i, j) in date_pairs(&q.criteria) {
            let (l, u) = (&q.criteria[i], &q.criteria[j]);
            let code = &l.param.def.code;
            let (Ok(lt), Ok(ut)) = (DateTest::parse(code, &l.values[0]), DateTest::parse(code, &u.values[0])) else { continue };
            if let Some(ids) = date_query::range_pair(self, code, &lt, &ut)? {
                done[i] = true;
                done[j] = true;
                if and(ids) {
                    return Ok(result.unwrap_or_default());
                }
            }
        }
        for (c, _) in q.criteria.iter().zip(&done).filter(|(_, d)| !**d) {
            if and(self.criterion(c)?) {
                break;
            }
        }
        match result {
            Some(r) => Ok(r),
            None => self.all(),
        }
    }

    /// The ids matching every criterion, in doc number order.
    pub fn run_ids(&self, q: &Query) -> Result<Vec<String>, SearchError> {
        self.ids(&self.run(q)?)
    }

    /// The ids of doc numbers of this type.
    pub fn ids(&self, docs: &Ids) -> Result<Vec<String>, SearchError> {
        docs.iter().map(|d| self.id(d)).collect()
    }

    /// The id of one doc number of this type.
    pub fn id(&self, doc: u32) -> Result<String, SearchError> {
        Ok(posting::doc_id(self.tree, self.rtype, doc)?.ok_or_else(|| StoreError::Corrupt(format!("{} doc number {doc} has no id", self.rtype)))?)
    }

    /// The doc numbers of ids of this type (ids never written are left out).
    pub fn docs<'i>(&self, ids: impl IntoIterator<Item = &'i str>) -> Result<Ids, SearchError> {
        let mut out = Ids::new();
        for id in ids {
            if let Some(d) = posting::docnum(self.tree, self.rtype, id)? {
                out.insert(d);
            }
        }
        Ok(out)
    }

    pub fn criterion(&self, c: &Criterion) -> Result<Ids, SearchError> {
        let code = c.param.def.code.as_str();
        match &c.link {
            Some(Link::Chain(links)) => {
                let mut out = Ids::new();
                for (target, inner) in links {
                    let on_target = Executor { tree: self.tree, rtype: target };
                    for id in on_target.ids(&link_scoped(target, on_target.criterion(inner)?))? {
                        self.scan(&exact_prefix(self.rtype, code, b'r', &[target, &id]), &mut out)?;
                    }
                }
                return Ok(out);
            }
            Some(Link::Compartment { ctype, id, codes }) => {
                let mut out = Ids::new();
                for code in codes {
                    self.scan(&exact_prefix(self.rtype, code, b'r', &[ctype, id]), &mut out)?;
                }
                if self.rtype == ctype {
                    out |= self.docs([id.as_str()])?;
                }
                return Ok(out & self.all()?);
            }
            Some(Link::Terms(version)) => {
                let hits = crate::search::terms::docs(self.tree, *version, self.rtype, c)?;
                return Ok(if c.modifier.as_deref() == Some("not-in") { self.all()? - hits } else { hits });
            }
            Some(Link::Has { source, inner }) => {
                let mut targets = Vec::new();
                let on_source = Executor { tree: self.tree, rtype: source };
                for id in on_source.ids(&link_scoped(source, on_source.criterion(inner)?))? {
                    targets.extend(references(self.tree, source, &id, code)?.into_iter().filter(|(t, _)| t == self.rtype).map(|(_, target)| target));
                }
                // Doc numbers outlive deletes: keep the targets that still exist.
                return Ok(self.docs(targets.iter().map(String::as_str))? & self.all()?);
            }
            None => {}
        }
        let bad = |reason: String| SearchError::BadValue { param: code.to_string(), reason };
        if c.modifier.as_deref() == Some("missing") {
            let mut present = Ids::new();
            self.scan(&param_rows(self.rtype, code), &mut present)?;
            return match c.values.as_slice() {
                [v] if v == "true" => Ok(self.all()? - present),
                [v] if v == "false" => Ok(present),
                _ => Err(bad(":missing takes true or false".into())),
            };
        }
        if c.modifier.as_deref() == Some("not") {
            let plain = Criterion { modifier: None, ..c.clone() };
            let hits = self.criterion(&plain)?;
            return Ok(self.all()? - hits);
        }
        let mut out = Ids::new();
        let base = param_rows(self.rtype, code);
        for v in &c.values {
            if v.is_empty() {
                return Err(bad("empty value".into()));
            }
            match c.param.def.kind {
                ParamType::Composite => self.composite(c, v, &mut out)?,
                ParamType::Special => self.near(code, &base, v, &mut out)?,
                _ => self.value(c, &base, v, &mut out)?,
            }
        }
        Ok(out)
    }

    /// One value of a plain parameter (or of a composite's last component) under `base`.
    fn value(&self, c: &Criterion, base: &[u8], v: &str, out: &mut Ids) -> Result<(), SearchError> {
        let code = c.param.def.code.as_str();
        match c.param.def.kind {
            ParamType::Token => self.token(c, base, v, out),
            ParamType::String => self.string(c, base, v, out),
            ParamType::Date => self.date(c, base, v, out),
            ParamType::Number => self.number(code, base, v, b'#', &[], out),
            ParamType::Quantity => self.quantity(code, base, v, out),
            ParamType::Reference => self.reference(c, base, v, out),
            ParamType::Uri => self.uri(c, base, v, out),
            ParamType::Composite | ParamType::Special => Err(SearchError::NotSupported(code.into())),
        }
    }

    /// `a$b[$c]`: the leading values match exactly (token `code`, `system|code`, `|code`;
    /// reference; string, exact after normalization; uri), the last with its type's semantics
    /// (prefixes included), all on the same element of the composite's expression.
    fn composite(&self, c: &Criterion, v: &str, out: &mut Ids) -> Result<(), SearchError> {
        let code = c.param.def.code.as_str();
        let comps = &c.param.components;
        let values: Vec<&str> = v.split('$').collect();
        if values.len() != comps.len() {
            return Err(SearchError::BadValue { param: code.into(), reason: format!("'{v}' needs {} values separated by '$'", comps.len()) });
        }
        // The row prefixes the leading values select: one, or one per system for a token
        // given without one (found by skipping from system to system, not by reading every row).
        let mut bases: Vec<Vec<u8>> = vec![composite_base(self.rtype, code, &[])];
        for (comp, val) in comps.iter().zip(&values).take(comps.len() - 1) {
            let parts: Vec<String> = match comp.param.def.kind {
                ParamType::Token => match val.split_once('|') {
                    None => {
                        let mut next = Vec::new();
                        for b in &bases {
                            let mut p = b.clone();
                            push_str(&mut p, "t");
                            push_str(&mut p, val);
                            next.extend(self.distinct_parts(&p)?);
                        }
                        bases = next;
                        continue;
                    }
                    Some((s, c)) => vec!["t".into(), c.into(), s.into()],
                },
                ParamType::Reference => {
                    let segs: Vec<&str> = val.split('/').collect();
                    match segs.as_slice() {
                        [t, id] if t.starts_with(|ch: char| ch.is_ascii_uppercase()) => vec!["r".into(), t.to_string(), id.to_string()],
                        _ => vec!["R".into(), val.to_string()],
                    }
                }
                ParamType::String => vec!["l".into(), normalize(val)],
                ParamType::Uri => vec!["u".into(), val.to_string()],
                other => return Err(SearchError::NotSupported(format!("{code}: a leading {other:?} component"))),
            };
            for b in bases.iter_mut() {
                for p in &parts {
                    push_str(b, p);
                }
            }
        }
        let last = comps.last().expect("two or more components");
        let inner = Criterion { param: last.param.clone(), modifier: None, values: Vec::new(), link: None };
        for b in &bases {
            self.value(&inner, b, values[values.len() - 1], out)?;
        }
        Ok(())
    }

    /// `prefix` extended by each distinct next part (escaped, with its terminator) found under
    /// it, seeking past each part's rows instead of reading them.
    fn distinct_parts(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, SearchError> {
        let mut out = Vec::new();
        let mut from = prefix.to_vec();
        while let Some(k) = self.tree.range(from.clone()..).next() {
            super::cost::charge(1)?;
            let k = k?.0;
            if !k.starts_with(prefix) {
                break;
            }
            let Some(end) = k[prefix.len()..].iter().position(|b| *b == 0) else { break };
            let with_part = k[..prefix.len() + end + 1].to_vec();
            // Just past every key under `with_part` (its last byte is the 0 terminator).
            from = with_part.clone();
            *from.last_mut().expect("terminator") = 1;
            out.push(with_part);
        }
        Ok(out)
    }

    /// `near=latitude|longitude|distance|units` (Location.position): within `distance` (default
    /// 10 km; units km, m, mi or [mi_i]; default km) on a sphere of radius 6,371 km.
    fn near(&self, code: &str, base: &[u8], v: &str, out: &mut Ids) -> Result<(), SearchError> {
        let bad = |reason: String| SearchError::BadValue { param: code.into(), reason };
        let parts: Vec<&str> = v.split('|').collect();
        let num = |s: &str| s.trim().parse::<f64>().map_err(|_| bad(format!("'{s}' is not a number")));
        let (lat, lon) = match parts.as_slice() {
            [lat, lon, ..] => (num(lat)?, num(lon)?),
            _ => return Err(bad("use latitude|longitude|distance|units".into())),
        };
        let distance = match parts.get(2).filter(|d| !d.is_empty()) {
            Some(d) => num(d)?,
            None => 10.0,
        };
        let km = distance
            * match parts.get(3).copied().unwrap_or("km") {
                "km" | "" => 1.0,
                "m" => 0.001,
                "mi" | "[mi_i]" | "[mi_us]" => 1.609_344,
                other => return Err(bad(format!("unit '{other}': use km, m or [mi_i]"))),
            };
        let keep = |rest: &[u8]| -> bool {
            let (Some(a), Some(b)) = (rest.get(..16).and_then(Decimal::from_key), rest.get(16..32).and_then(Decimal::from_key)) else { return false };
            let (p1, p2) = (lat.to_radians(), a.to_f64().to_radians());
            let dl = (b.to_f64() - lon).to_radians();
            let h = ((p2 - p1) / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
            2.0 * 6371.0 * h.sqrt().asin() <= km
        };
        self.scan_filter(&kind_prefix(base, b'g'), keep, out)
    }

    fn token(&self, c: &Criterion, base: &[u8], v: &str, out: &mut Ids) -> Result<(), SearchError> {
        let code = c.param.def.code.as_str();
        if c.modifier.as_deref() == Some("text") {
            return self.scan(&base_open(base, b'x', &normalize(v)), out);
        }
        if c.modifier.as_deref() == Some("of-type") {
            let parts: Vec<&str> = v.splitn(3, '|').collect();
            let [ts, tc, value] = parts.as_slice() else {
                return Err(SearchError::BadValue { param: format!("{code}:of-type"), reason: "use type-system|type-code|value".into() });
            };
            return self.scan(&base_exact(base, b'o', &[ts, tc, value]), out);
        }
        // Rows are `t` code, system: code-first, so `code` and `system|code` are prefix scans.
        let mut k = kind_prefix(base, b't');
        match v.split_once('|') {
            None => push_str(&mut k, v),
            Some((s, "")) => {
                // Every code of one system: filter on the second part.
                let sys = escaped(s);
                return self.scan_filter(
                    &k,
                    |rest| {
                        let mut parts = rest.splitn(3, |b| *b == 0);
                        let _code = parts.next();
                        parts.next() == Some(sys.as_slice())
                    },
                    out,
                );
            }
            Some((s, c2)) => {
                push_str(&mut k, c2);
                push_str(&mut k, s);
            }
        }
        self.scan(&k, out)
    }

    fn string(&self, c: &Criterion, base: &[u8], v: &str, out: &mut Ids) -> Result<(), SearchError> {
        match c.modifier.as_deref() {
            Some("exact") => self.scan(&base_exact(base, b'l', &[&normalize(v), v]), out),
            Some("contains") => {
                let needle = escaped(&normalize(v));
                self.scan_filter(&kind_prefix(base, b'l'), |rest| rest.windows(needle.len()).any(|w| w == needle.as_slice()), out)
            }
            _ => self.scan(&base_open(base, b'l', &normalize(v)), out),
        }
    }

    fn date(&self, c: &Criterion, base: &[u8], v: &str, out: &mut Ids) -> Result<(), SearchError> {
        date_query::scan(self.tree, base, &DateTest::parse(&c.param.def.code, v)?, out)
    }

    /// Number semantics for number and quantity rows under `prefix + parts`.
    fn number(&self, code: &str, base: &[u8], v: &str, kind: u8, parts: &[&str], out: &mut Ids) -> Result<(), SearchError> {
        let (prefix, text) = split_prefix(v);
        let d = Decimal::parse(text).ok_or_else(|| SearchError::BadValue { param: code.into(), reason: format!("'{text}' is not a number") })?;
        let (lo, hi) = d.implicit_range().ok_or_else(|| SearchError::BadValue { param: code.into(), reason: format!("'{text}' is too large to search on (its magnitude must be below 10^38)") })?;
        let tenth = Decimal { mantissa: (d.mantissa / 10).abs(), scale: d.scale };
        let keep = move |t: Decimal| -> bool {
            match prefix {
                Prefix::Eq => t >= lo && t < hi,
                Prefix::Ne => !(t >= lo && t < hi),
                Prefix::Gt | Prefix::Sa => t > d,
                Prefix::Lt | Prefix::Eb => t < d,
                Prefix::Ge => t >= d,
                Prefix::Le => t <= d,
                Prefix::Ap => {
                    let a = Decimal { mantissa: d.mantissa - tenth.mantissa, scale: d.scale };
                    let b = Decimal { mantissa: d.mantissa + tenth.mantissa, scale: d.scale };
                    t >= a && t <= b
                }
            }
        };
        self.scan_filter(&base_exact(base, kind, parts), |rest| rest.get(..16).and_then(Decimal::from_key).is_some_and(keep), out)
    }

    fn quantity(&self, code: &str, base: &[u8], v: &str, out: &mut Ids) -> Result<(), SearchError> {
        let parts: Vec<&str> = v.splitn(3, '|').collect();
        match parts.as_slice() {
            [n] => self.number(code, base, n, b'q', &[], out),
            [n, "", unit] => self.number(code, base, n, b'c', &[unit], out),
            [n, system, unit] => self.number(code, base, n, b'Q', &[system, unit], out),
            _ => Err(SearchError::BadValue { param: code.into(), reason: "use number, number||code or number|system|code".into() }),
        }
    }

    fn reference(&self, c: &Criterion, base: &[u8], v: &str, out: &mut Ids) -> Result<(), SearchError> {
        if c.modifier.as_deref() == Some("identifier") {
            // `system|value`, `|value` (no system) or `value` (any system).
            let k = match v.split_once('|') {
                Some((s, value)) => base_exact(base, b'i', &[value, s]),
                None => base_exact(base, b'i', &[v]),
            };
            return self.scan(&k, out);
        }
        let type_modifier = c.modifier.as_deref().filter(|m| m.starts_with(|ch: char| ch.is_ascii_uppercase()));
        let segs: Vec<&str> = v.trim_end_matches('/').split('/').collect();
        let n = segs.len();
        let k = if let Some(t) = type_modifier {
            base_exact(base, b'r', &[t, v])
        } else if n == 1 && !v.contains(':') {
            // A bare id (of any of the parameter's target types), or a literal such as
            // `#contained` / a relative canonical.
            for t in &c.param.def.target {
                self.scan(&base_exact(base, b'r', &[t, v]), out)?;
            }
            base_exact(base, b'R', &[v])
        } else if n >= 2 && segs[n - 2].starts_with(|ch: char| ch.is_ascii_uppercase()) && !segs[n - 1].is_empty() {
            // `Type/id`, or a full URL ending in it: matched by type and id, as well as literally.
            self.scan(&base_exact(base, b'R', &[v]), out)?;
            base_exact(base, b'r', &[segs[n - 2], segs[n - 1]])
        } else {
            base_exact(base, b'R', &[v])
        };
        self.scan(&k, out)
    }

    fn uri(&self, c: &Criterion, base: &[u8], v: &str, out: &mut Ids) -> Result<(), SearchError> {
        match c.modifier.as_deref() {
            Some("below") => self.scan(&base_open(base, b'u', v), out),
            Some("above") => {
                // Every stored uri that is a prefix of the value at a path boundary.
                let mut cut = v.len();
                loop {
                    self.scan(&base_exact(base, b'u', &[&v[..cut]]), out)?;
                    match v[..cut].rfind('/') {
                        Some(i) if i > 0 && !v[..i].ends_with('/') => cut = i,
                        _ => return Ok(()),
                    }
                }
            }
            _ => self.scan(&base_exact(base, b'u', &[v]), out),
        }
    }
}

/// Undoes [`push_str`]'s escaping of one part.
fn unescape(b: &[u8]) -> String {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == 1 && i + 1 < b.len() {
            out.push(b[i + 1] - 1);
            i += 2;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Pairs (lower bound, upper bound) of single-value, unmodified criteria on the same plain date
/// parameter, each criterion in at most one pair.
fn date_pairs(criteria: &[Criterion]) -> Vec<(usize, usize)> {
    let plain_date = |c: &Criterion| c.link.is_none() && c.modifier.is_none() && c.values.len() == 1 && c.param.def.kind == ParamType::Date;
    let bound = |c: &Criterion, lower: bool| {
        plain_date(c) && {
            let (p, _) = split_prefix(&c.values[0]);
            if lower { matches!(p, Prefix::Ge | Prefix::Gt | Prefix::Sa) } else { matches!(p, Prefix::Le | Prefix::Lt | Prefix::Eb) }
        }
    };
    let mut used = vec![false; criteria.len()];
    let mut out = Vec::new();
    for i in 0..criteria.len() {
        if used[i] || !bound(&criteria[i], true) {
            continue;
        }
        if let Some(j) = (0..criteria.len()).find(|&j| !used[j] && bound(&criteria[j], false) && criteria[j].param.def.code == criteria[i].param.def.code) {
            used[i] = true;
            used[j] = true;
            out.push((i, j));
        }
    }
    out
}

/// The parts after `prefix` of `rtype/id`'s index rows that start with it (its reverse list).
pub fn rows_under(tree: &Space, rtype: &str, id: &str, prefix: &[u8]) -> Result<Vec<Vec<u8>>, SearchError> {
    super::cost::charge(1)?;
    let Some(list) = tree.get(super::index::reverse_key(rtype, id))? else { return Ok(Vec::new()) };
    let rows = super::index::decode_list(&list).ok_or_else(|| StoreError::Corrupt(format!("index list of {rtype}/{id}")))?;
    Ok(rows.into_iter().filter_map(|k| k.strip_prefix(prefix).map(<[u8]>::to_vec)).collect())
}

/// The (type, id) targets of `rtype/id`'s reference parameter `code`, from its index rows.
pub fn references(tree: &Space, rtype: &str, id: &str, code: &str) -> Result<Vec<(String, String)>, SearchError> {
    Ok(rows_under(tree, rtype, id, &param_prefix(rtype, code, b'r'))?
        .iter()
        .filter_map(|rest| {
            let mut parts = rest.split(|b| *b == 0);
            Some((unescape(parts.next()?), unescape(parts.next()?)))
        })
        .collect())
}

/// Doc numbers of the `source` resources whose reference parameter `code` points at `rtype/id`.
pub fn referrer_docs(tree: &Space, source: &str, code: &str, rtype: &str, id: &str) -> Result<Ids, SearchError> {
    let mut out = Ids::new();
    (Executor { tree, rtype: source }).scan(&exact_prefix(source, code, b'r', &[rtype, id]), &mut out)?;
    Ok(out)
}

/// Every resource of `source` whose `code` references any resource of type `rtype`.
pub fn referrers_of_type(tree: &Space, source: &str, code: &str, rtype: &str) -> Result<Ids, SearchError> {
    let mut out = Ids::new();
    (Executor { tree, rtype: source }).scan(&exact_prefix(source, code, b'r', &[rtype]), &mut out)?;
    Ok(out)
}

/// The distinct values (their parts, e.g. token code and system) that rows of one kind of
/// `rtype`'s parameter `code` hold for at least one resource. `None` past `max` values.
pub fn distinct_values(tree: &Space, rtype: &str, code: &str, kind: u8, max: usize) -> Result<Option<std::collections::BTreeSet<Vec<String>>>, SearchError> {
    let prefix = param_prefix(rtype, code, kind);
    let mut out = std::collections::BTreeSet::new();
    for item in tree.scan_prefix(&prefix) {
        crate::search::cost::charge(1).map_err(PostingError::from)?;
        let (k, v) = item.map_err(PostingError::from)?;
        let mut docs = Ids::new();
        posting::add_block(&k, &v, &mut docs)?;
        if docs.is_empty() {
            continue;
        }
        let Some(parts) = k.get(prefix.len()..k.len().saturating_sub(4)) else { continue };
        let parts: Vec<String> = parts.split(|b| *b == 0).map(unescape).collect();
        // The split leaves an empty piece after the last terminator.
        let parts = parts[..parts.len().saturating_sub(1)].to_vec();
        out.insert(parts);
        if out.len() > max {
            return Ok(None);
        }
    }
    Ok(Some(out))
}

/// `s` escaped like [`push_str`] but without the terminator (a prefix to scan).
fn escaped(s: &str) -> Vec<u8> {
    let mut k = Vec::new();
    push_str(&mut k, s);
    k.pop();
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::command::{Action, Command, CommandV1, WriteOp};
    use crate::machine::StateMachine;
    use serde_json::json;

    fn setup(resources: &[serde_json::Value]) -> (tempfile::TempDir, Space, Arc<Registry>) {
        let mut ix = crate::machine::testing::indexed();
        crate::machine::testing::put_all(&mut ix.sm, 1, resources);
        (ix.dir, ix.tree, ix.reg)
    }

    #[test]
    fn in_compartment_keeps_one_patients_resources() {
        let res = [
            json!({"resourceType": "Patient", "id": "p1"}),
            json!({"resourceType": "Patient", "id": "p2"}),
            json!({"resourceType": "Observation", "id": "a", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/p1"}}),
            json!({"resourceType": "Observation", "id": "b", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/p2"}}),
            json!({"resourceType": "Observation", "id": "c", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/p2"}, "performer": [{"reference": "Patient/p1"}]}),
        ];
        let (_d, tree, reg) = setup(&res);
        let s = |rt: &str, qs: &str| search(&tree, &reg, rt, qs).unwrap_or_else(|e| panic!("{qs}: {e}"));
        assert_eq!(s("Observation", "_in-compartment=Patient/p1"), ["a", "c"]);
        assert_eq!(s("Observation", "_in-compartment=Patient/p2&status=final"), ["b", "c"]);
        assert_eq!(s("Patient", "_in-compartment=Patient/p1"), ["p1"]);
        assert!(s("Observation", "_in-compartment=Patient/nobody").is_empty());
        assert!(matches!(search(&tree, &reg, "Observation", "_in-compartment=Nope/1"), Err(SearchError::BadValue { .. })));
        assert!(matches!(search(&tree, &reg, "Observation", "_in-compartment=p1"), Err(SearchError::BadValue { .. })));
    }

    fn search(tree: &Space, reg: &Registry, rtype: &str, qs: &str) -> Result<Vec<String>, SearchError> {
        let params: Vec<(String, String)> = serde_urlencoded::from_str(qs).unwrap();
        let q = parse(reg, rtype, &params, false)?;
        let mut ids = Executor { tree, rtype }.run_ids(&q)?;
        ids.sort();
        Ok(ids)
    }

    #[test]
    fn table_of_parameter_types() {
        let pats = [
            json!({"resourceType": "Patient", "id": "a", "name": [{"family": "Chalmérs", "given": ["Peter"]}], "birthDate": "1974-12-25", "gender": "male", "active": true}),
            json!({"resourceType": "Patient", "id": "b", "name": [{"family": "Chalmers-Smith"}], "birthDate": "1974-12", "gender": "female"}),
            json!({"resourceType": "Patient", "id": "c", "name": [{"family": "Windsor"}], "birthDate": "2001-05-06T10:00:00Z",
                "identifier": [{"system": "urn:oid:1.2", "value": "12345"}]}),
            json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "15074-8"}], "text": "Glucose"},
                "subject": {"reference": "Patient/a"}, "valueQuantity": {"value": 6.3, "system": "http://unitsofmeasure.org", "code": "mmol/L"}}),
            json!({"resourceType": "Observation", "id": "o2", "status": "intent-free", "code": {"coding": [{"system": "http://snomed.info/sct", "code": "15074-8"}]},
                "subject": {"reference": "Patient/b"}, "valueQuantity": {"value": 100, "unit": "mg"}}),
        ];
        let (_d, tree, reg) = setup(&pats);
        let s = |rt: &str, qs: &str| search(&tree, &reg, rt, qs).unwrap();
        // string: starts-with, case and accent insensitive; :exact; :contains
        assert_eq!(s("Patient", "family=chalmers"), ["a", "b"]);
        assert_eq!(s("Patient", "family:exact=Chalmers-Smith"), ["b"]);
        assert!(s("Patient", "family:exact=chalmers-smith").is_empty());
        assert_eq!(s("Patient", "family:contains=SMITH"), ["b"]);
        assert_eq!(s("Patient", "name=pet"), ["a"]);
        // token: code, system|code, |code, :not, booleans, identifiers
        assert_eq!(s("Observation", "code=15074-8"), ["o1", "o2"]);
        assert_eq!(s("Observation", "code=http://loinc.org|15074-8"), ["o1"]);
        assert!(s("Observation", "code=|15074-8").is_empty());
        assert_eq!(s("Observation", "code:text=gluc"), ["o1"]);
        assert_eq!(s("Patient", "gender:not=male"), ["b", "c"]);
        assert_eq!(s("Patient", "active=true"), ["a"]);
        assert_eq!(s("Patient", "identifier=urn:oid:1.2|12345"), ["c"]);
        assert!(s("Observation", "status=intent").is_empty(), "tokens never match by prefix");
        // date: precision ranges and prefixes
        assert_eq!(s("Patient", "birthdate=1974"), ["a", "b"]);
        assert_eq!(s("Patient", "birthdate=1974-12-25"), ["a"]);
        assert!(s("Patient", "birthdate=1974-12-25").len() == 1, "a month does not fit in a day");
        assert_eq!(s("Patient", "birthdate=gt1990"), ["c"]);
        assert_eq!(s("Patient", "birthdate=lt1974-12-25"), ["b"]);
        // 1974-12 overlaps both the range above and the range below the day: it matches both.
        assert_eq!(s("Patient", "birthdate=ge1974-12-25&birthdate=le1974-12-25"), ["a", "b"]);
        assert_eq!(s("Patient", "birthdate=ge1974-12-25&birthdate=le1974-12-25&birthdate=eq1974-12-25"), ["a"]);
        assert_eq!(s("Patient", "birthdate=sa1975"), ["c"]);
        assert_eq!(s("Patient", "birthdate=eb1975"), ["a", "b"]);
        assert_eq!(s("Patient", "birthdate=ne1974"), ["c"]);
        // ap: within 10% of the distance from now (about 5 years for 1974).
        assert_eq!(s("Patient", "birthdate=ap1976"), ["a", "b"]);
        assert!(s("Patient", "birthdate=ap1990").is_empty());
        // quantity / number: implicit precision, exact decimals, units
        assert_eq!(s("Observation", "value-quantity=6.3"), ["o1"]);
        assert_eq!(s("Observation", "value-quantity=6.3|http://unitsofmeasure.org|mmol/L"), ["o1"]);
        assert_eq!(s("Observation", "value-quantity=100||mg"), ["o2"]);
        assert_eq!(s("Observation", "value-quantity=gt6.29"), ["o1", "o2"]);
        assert!(s("Observation", "value-quantity=6.31").is_empty());
        assert_eq!(s("Observation", "value-quantity=6.30"), ["o1"]);
        // reference: Type/id, id, :Type, full URL
        assert_eq!(s("Observation", "subject=Patient/a"), ["o1"]);
        assert_eq!(s("Observation", "subject=b"), ["o2"]);
        assert_eq!(s("Observation", "subject:Patient=a"), ["o1"]);
        assert_eq!(s("Observation", "patient=http://example.org/fhir/Patient/a"), ["o1"]);
        // OR, AND, :missing, _id
        assert_eq!(s("Patient", "family=windsor,smith"), ["c"]);
        assert_eq!(s("Patient", "family=windsor,chal&gender=female"), ["b"]);
        assert_eq!(s("Patient", "active:missing=true"), ["b", "c"]);
        assert_eq!(s("Patient", "_id=a,c"), ["a", "c"]);
        assert_eq!(s("Patient", ""), ["a", "b", "c"]);
        // refusals
        assert!(matches!(search(&tree, &reg, "Patient", "nonsense=1"), Err(SearchError::UnknownParameter { .. })));
        assert!(matches!(search(&tree, &reg, "Patient", "birthdate=yesterday"), Err(SearchError::BadValue { .. })));
        assert!(matches!(search(&tree, &reg, "Observation", "code:in=http://vs"), Err(SearchError::Terminology(crate::terminology::TerminologyError::UnknownValueSet(_)))));
        // chains and reverse chains
        assert_eq!(s("Observation", "subject:Patient.family=windsor,chalmers-smith"), ["o2"]);
        assert_eq!(s("Observation", "patient.gender=male"), ["o1"]);
        assert_eq!(s("Patient", "_has:Observation:subject:code=http://snomed.info/sct|15074-8"), ["b"]);
        assert_eq!(s("Patient", "_has:Observation:patient:status=final"), ["a"]);
        assert!(matches!(search(&tree, &reg, "Observation", "status.name=x"), Err(SearchError::BadValue { .. })));
        assert!(matches!(search(&tree, &reg, "Patient", "_has:Observation:code:status=final"), Err(SearchError::UnknownParameter { .. })));
        assert!(matches!(search(&tree, &reg, "Patient", "family:below=x"), Err(SearchError::NotSupported(_)) | Err(SearchError::BadValue { .. })));
    }

    #[test]
    fn deleted_targets_and_end_first_periods() {
        let res = [
            json!({"resourceType": "Patient", "id": "p"}),
            json!({"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/p"},
                "effectivePeriod": {"start": "2021-06-01", "end": "2020-03-01"}}),
        ];
        let (_d, tree, reg) = setup(&res);
        let s = |rt: &str, qs: &str| search(&tree, &reg, rt, qs).unwrap_or_else(|e| panic!("{qs}: {e}"));
        // An end-first Period is searched as the range it spans.
        assert_eq!(s("Observation", "date=lt2020-04"), ["o"]);
        assert_eq!(s("Observation", "date=gt2021-01"), ["o"]);
        assert_eq!(s("Observation", "date=ge2021-01"), ["o"]);
        // It spans 2020-03-01 to the end of 2021-06-01.
        assert_eq!(s("Observation", "date=lt2020-03-02"), ["o"]);
        assert!(s("Observation", "date=eb2021-06-01").is_empty());
        // A bad value is refused even when another criterion finds nothing.
        assert!(matches!(search(&tree, &reg, "Observation", "date=ge2030&date=lt2020&date=notadate"), Err(SearchError::BadValue { .. })));
        assert!(matches!(search(&tree, &reg, "Observation", "code=zzz&value-quantity=ten"), Err(SearchError::BadValue { .. })));
        assert_eq!(s("Patient", "_has:Observation:subject:status=final"), ["p"]);
        let mut sm = StateMachine::open(tree.tree().clone()).unwrap().with_search(reg.clone());
        let del = WriteOp { action: Action::Delete, rtype: "Patient".into(), id: "p".into(), body: None, if_match: None, allow_create: false };
        sm.apply(2, 1, &Command::V1(CommandV1::Writes { ts_micros: 2_000, ops: vec![del] }).encode()).unwrap();
        assert!(s("Patient", "_has:Observation:subject:status=final").is_empty(), "a deleted target is not a match");
        assert_eq!(s("Observation", "subject=Patient/p"), ["o"], "the reference itself is still there");
    }

    #[test]
    fn composite_special_and_identifier_modifiers() {
        let res = [
            // Blood pressure: two components, each a code with a value.
            json!({"resourceType": "Observation", "id": "bp", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
                "subject": {"reference": "Patient/p", "identifier": {"system": "urn:mrn", "value": "M1"}},
                "component": [
                    {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                    {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]}, "valueQuantity": {"value": 80, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]}),
            json!({"resourceType": "Observation", "id": "hr", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "valueQuantity": {"value": 72, "unit": "/min"}, "effectiveDateTime": "2024-03-01"}),
            json!({"resourceType": "Observation", "id": "hr2", "status": "final", "code": {"coding": [{"system": "urn:other", "code": "8867-4"}]}, "valueQuantity": {"value": 50}}),
            json!({"resourceType": "Observation", "id": "dt", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "21112-8"}]}, "valueDateTime": "2024-03-01"}),
            json!({"resourceType": "Patient", "id": "p", "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}, "system": "urn:mrn", "value": "M1"}]}),
            json!({"resourceType": "Location", "id": "ams", "position": {"latitude": 52.3676, "longitude": 4.9041}}),
            json!({"resourceType": "Location", "id": "rtm", "position": {"latitude": 51.9244, "longitude": 4.4777}}),
        ];
        let (_d, tree, reg) = setup(&res);
        let s = |rt: &str, qs: &str| search(&tree, &reg, rt, qs).unwrap_or_else(|e| panic!("{qs}: {e}"));
        // Composite: both parts on the SAME component; the last part with prefixes.
        assert_eq!(s("Observation", "component-code-value-quantity=http://loinc.org|8480-6$gt100"), ["bp"]);
        assert!(s("Observation", "component-code-value-quantity=8480-6$lt100").is_empty(), "80 belongs to the other component");
        assert_eq!(s("Observation", "component-code-value-quantity=8462-4$80"), ["bp"]);
        assert_eq!(s("Observation", "code-value-quantity=http://loinc.org|8867-4$72||/min"), ["hr"]);
        assert_eq!(s("Observation", "combo-code-value-quantity=8480-6$120,8867-4$ge70"), ["bp", "hr"]);
        // A code without system: every system that has it (hr: loinc, hr2: urn:other).
        assert_eq!(s("Observation", "code-value-quantity=8867-4$ge0"), ["hr", "hr2"]);
        assert_eq!(s("Observation", "code-value-quantity=8867-4$lt60"), ["hr2"]);
        assert_eq!(s("Observation", "code-value-quantity=urn:other|8867-4$ge0"), ["hr2"]);
        assert_eq!(s("Observation", "code-value-date=21112-8$2024-03"), ["dt"]);
        assert!(s("Observation", "code-value-date=21112-8$2025").is_empty());
        assert!(matches!(search(&tree, &reg, "Observation", "code-value-quantity=8867-4"), Err(SearchError::BadValue { .. })));
        // near: Amsterdam–Rotterdam is about 57 km.
        assert_eq!(s("Location", "near=52.37|4.90|5|km"), ["ams"]);
        assert_eq!(s("Location", "near=52.37|4.90|80|km"), ["ams", "rtm"]);
        assert_eq!(s("Location", "near=52.37|4.90|40|[mi_i]"), ["ams", "rtm"]);
        assert!(matches!(search(&tree, &reg, "Location", "near=north"), Err(SearchError::BadValue { .. })));
        // :identifier (Reference.identifier) and :of-type (Identifier.type + value).
        assert_eq!(s("Observation", "subject:identifier=urn:mrn|M1"), ["bp"]);
        assert_eq!(s("Observation", "subject:identifier=M1"), ["bp"]);
        assert!(s("Observation", "subject:identifier=urn:other|M1").is_empty());
        assert_eq!(s("Patient", "identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|M1"), ["p"]);
        assert!(s("Patient", "identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|SS|M1").is_empty());
    }
}
