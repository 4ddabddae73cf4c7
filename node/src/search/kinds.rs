//! The executor's per-type matching ([`Executor`]): composite parameters, `near`, token,
//! string, date, number, quantity, reference and uri criteria on the index rows.

use super::error::SearchError;
use super::query::{escaped, Executor, Ids};


use super::decimal::Decimal;
use super::extract::normalize;
use super::index::{base_exact, base_open, composite_base, kind_prefix, push_str};
use super::date_query::{self, DateTest};
use super::params::ParamType;
use super::parse::split_prefix;
use super::parse::{Criterion, Prefix};


impl Executor<'_> {
    /// `a$b[$c]`: the leading values match exactly (token `code`, `system|code`, `|code`;
    /// reference; string, exact after normalization; uri), the last with its type's semantics
    /// (prefixes included), all on the same element of the composite's expression.
    pub(super) fn composite(&self, c: &Criterion, v: &str, out: &mut Ids) -> Result<(), SearchError> {
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
    pub(super) fn distinct_parts(&self, prefix: &[u8]) -> Result<Vec<Vec<u8>>, SearchError> {
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
    pub(super) fn near(&self, code: &str, base: &[u8], v: &str, out: &mut Ids) -> Result<(), SearchError> {
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

    pub(super) fn token(&self, c: &Criterion, base: &[u8], v: &str, out: &mut Ids) -> Result<(), SearchError> {
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

    pub(super) fn string(&self, c: &Criterion, base: &[u8], v: &str, out: &mut Ids) -> Result<(), SearchError> {
        match c.modifier.as_deref() {
            Some("exact") => self.scan(&base_exact(base, b'l', &[&normalize(v), v]), out),
            Some("contains") => {
                let needle = escaped(&normalize(v));
                self.scan_filter(&kind_prefix(base, b'l'), |rest| rest.windows(needle.len()).any(|w| w == needle.as_slice()), out)
            }
            _ => self.scan(&base_open(base, b'l', &normalize(v)), out),
        }
    }

    pub(super) fn date(&self, c: &Criterion, base: &[u8], v: &str, out: &mut Ids) -> Result<(), SearchError> {
        date_query::scan(self.tree, base, &DateTest::parse(&c.param.def.code, v)?, out)
    }

    /// Number semantics for number and quantity rows under `prefix + parts`.
    pub(super) fn number(&self, code: &str, base: &[u8], v: &str, kind: u8, parts: &[&str], out: &mut Ids) -> Result<(), SearchError> {
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

    pub(super) fn quantity(&self, code: &str, base: &[u8], v: &str, out: &mut Ids) -> Result<(), SearchError> {
        let parts: Vec<&str> = v.splitn(3, '|').collect();
        match parts.as_slice() {
            [n] => self.number(code, base, n, b'q', &[], out),
            [n, "", unit] => self.number(code, base, n, b'c', &[unit], out),
            [n, system, unit] => self.number(code, base, n, b'Q', &[system, unit], out),
            _ => Err(SearchError::BadValue { param: code.into(), reason: "use number, number||code or number|system|code".into() }),
        }
    }

    pub(super) fn reference(&self, c: &Criterion, base: &[u8], v: &str, out: &mut Ids) -> Result<(), SearchError> {
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

    pub(super) fn uri(&self, c: &Criterion, base: &[u8], v: &str, out: &mut Ids) -> Result<(), SearchError> {
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
