//! The embedded search index: the rows a resource is in ([`rows`]), computed from its search
//! parameters' values, written by the state machine in the same sled batch as the resource
//! version (so every node holds the same index and a search right after a write sees it), and
//! the reverse lists that name them. The row key layout is [`crate::index::rows`]'s, the posting
//! lists stored under them [`crate::index::posting`]'s.

use serde_json::Value;

use super::decimal::Decimal;
use super::extract::{extract, IndexValue};
use super::fhirpath::{eval_resource, evaluate, Item};
use super::params::{Component, ParamType, Registry};
pub use crate::index::rows::{ROW, REVERSE, push_str, i64_key, i64_from_key, param_rows, param_prefix, exact_prefix, kind_prefix, base_exact, base_open, composite_base, reverse_key, DATE_SPANS, date_class, multi_date_row, live_row};

/// The row keys of one value under `base`.
fn value_keys(base: &[u8], v: &IndexValue) -> Vec<Vec<u8>> {
    let p = |kind: u8| kind_prefix(base, kind);
    let with = |kind: u8, parts: &[&str]| {
        let mut k = p(kind);
        for s in parts {
            push_str(&mut k, s);
        }
        k
    };
    let num = |kind: u8, prefix_parts: &[&str], d: &Decimal| {
        let mut k = p(kind);
        for s in prefix_parts {
            push_str(&mut k, s);
        }
        k.extend_from_slice(&d.key());
        k
    };
    match v {
        IndexValue::Token { system, code: c } => vec![with(b't', &[c, system.as_deref().unwrap_or("")])],
        IndexValue::TokenText(t) => vec![with(b'x', &[t])],
        IndexValue::String { exact, normalized } => vec![with(b'l', &[normalized, exact])],
        IndexValue::Date { low, high } => {
            // By low end (`d`: sorting, and prefixes bounded by the low end), and by span class
            // then low end (`k`: a range's low end is within its class's span of its high end, so
            // "ends after X" becomes a bounded scan). A Period given end-first (invalid, but
            // stored as sent) is indexed as the range it spans.
            let (low, high) = (*low.min(high), *low.max(high));
            let mut d = p(b'd');
            d.extend_from_slice(&i64_key(low));
            d.extend_from_slice(&i64_key(high));
            let mut k = p(b'k');
            k.push(date_class(low, high));
            k.extend_from_slice(&i64_key(low));
            k.extend_from_slice(&i64_key(high));
            vec![d, k]
        }
        IndexValue::Number(d) => vec![num(b'#', &[], d)],
        IndexValue::Quantity { value, system, code: c, unit } => {
            let mut out = vec![num(b'q', &[], value)];
            for cu in [c, unit].into_iter().flatten() {
                out.push(num(b'c', &[cu], value));
            }
            if let Some(c) = c {
                out.push(num(b'Q', &[system.as_deref().unwrap_or(""), c], value));
            }
            out
        }
        IndexValue::Reference { rtype: t, id, literal } => {
            let mut out = vec![with(b'R', &[literal])];
            if let (Some(t), Some(id)) = (t, id) {
                out.push(with(b'r', &[t, id]));
            }
            out
        }
        IndexValue::Uri(u) => vec![with(b'u', &[u])],
        IndexValue::IdentifierOfType { type_system, type_code, value } => vec![with(b'o', &[type_system, type_code, value])],
        IndexValue::ReferenceIdentifier { system, value } => vec![with(b'i', &[value, system.as_deref().unwrap_or("")])],
        IndexValue::Position { latitude, longitude } => {
            let mut k = p(b'g');
            k.extend_from_slice(&latitude.key());
            k.extend_from_slice(&longitude.key());
            vec![k]
        }
    }
}

/// The exact-match parts of a composite's leading component value, one list per way it can be
/// searched (token: `t` code, system — a code without system is found by skipping from system
/// to system; reference: `R` literal, and `r` type id; string: `l` normalized; uri: `u`). Empty
/// for types that can only lead with ranges.
pub fn leading_parts(v: &IndexValue) -> Vec<Vec<String>> {
    match v {
        IndexValue::Token { system, code } => vec![vec!["t".into(), code.clone(), system.clone().unwrap_or_default()]],
        IndexValue::Reference { rtype, id, literal } => {
            let mut out = vec![vec!["R".into(), literal.clone()]];
            if let (Some(t), Some(id)) = (rtype, id) {
                out.push(vec!["r".into(), t.clone(), id.clone()]);
            }
            out
        }
        IndexValue::String { normalized, .. } => vec![vec!["l".into(), normalized.clone()]],
        IndexValue::Uri(u) => vec![vec!["u".into(), u.clone()]],
        _ => Vec::new(),
    }
}

/// Fewest (leading parts, last value) combinations a composite item may have indexed; an item
/// with more values than this may have as many combinations as it has values.
const MIN_COMPOSITE_COMBINATIONS: usize = 64;

/// The (leading parts, last value) combinations of one composite item: every combination of
/// the leading components' values (each in each of its searchable forms) with each value of
/// the last component, all taken from the same item (search.html#composite). The product of
/// the value counts is cut (deterministically: the first combinations, in value order) at
/// [`MIN_COMPOSITE_COMBINATIONS`] or the item's number of values, whichever is larger, so a
/// resource's rows stay linear in its size: 400 codes × 400 values in one Observation are
/// 800 combinations, not 160,000. Items with a few values of each component (real ones) are
/// indexed completely.
fn composite_values(components: &[Component], resource: &Value, item: &Item) -> Vec<(Vec<Vec<String>>, IndexValue)> {
    let Some((last, leading)) = components.split_last() else { return Vec::new() };
    let values = |c: &Component| extract(c.param.def.kind, &evaluate(&c.expr, resource, std::slice::from_ref(item)));
    let leading_forms: Vec<Vec<Vec<String>>> = leading.iter().map(|c| values(c).iter().flat_map(leading_parts).collect()).collect();
    let lasts = values(last);
    let limit = MIN_COMPOSITE_COMBINATIONS.max(leading_forms.iter().map(Vec::len).sum::<usize>() + lasts.len());
    let mut combos: Vec<Vec<Vec<String>>> = vec![Vec::new()];
    for forms in &leading_forms {
        combos = combos
            .iter()
            .flat_map(|combo| forms.iter().map(move |f| { let mut c = combo.clone(); c.push(f.clone()); c }))
            .take(limit)
            .collect();
    }
    combos.iter().flat_map(|combo| lasts.iter().map(move |v| (combo.clone(), v.clone()))).take(limit).collect()
}

/// Every index row key of a (live) resource, sorted, each once.
pub fn rows(reg: &Registry, rtype: &str, resource: &Value) -> Vec<Vec<u8>> {
    let mut out = std::collections::BTreeSet::new();
    out.insert(live_row(rtype));
    for param in reg.for_type(rtype) {
        param_row_keys(rtype, param, resource, &mut out);
    }
    out.into_iter().collect()
}

/// The rows of `resource` for the parameters named `codes` only (the same rows [`rows`] writes
/// for them): what an authorization check reads of a body, without indexing all of it.
pub fn rows_of(reg: &Registry, rtype: &str, codes: &[String], resource: &Value) -> Vec<Vec<u8>> {
    let mut out = std::collections::BTreeSet::new();
    for param in reg.for_type(rtype).filter(|p| codes.contains(&p.def.code)) {
        param_row_keys(rtype, param, resource, &mut out);
    }
    out.into_iter().collect()
}

/// The ids of the `target` resources `resource` references through the reference parameters
/// `codes` (e.g. the patients whose compartment it is in), sorted, each once.
pub fn referenced_ids(reg: &Registry, rtype: &str, codes: &[String], resource: &Value, target: &str) -> Vec<String> {
    let mut out = std::collections::BTreeSet::new();
    for row in rows_of(reg, rtype, codes, resource) {
        for code in codes {
            let want = exact_prefix(rtype, code, b'r', &[target]);
            if let Some(rest) = row.strip_prefix(want.as_slice()) {
                // FHIR ids hold no byte push_str escapes: the id runs to its terminator.
                let id = rest.split(|b| *b == 0).next().unwrap_or_default();
                if let Ok(id) = std::str::from_utf8(id) {
                    if !id.is_empty() {
                        out.insert(id.to_string());
                    }
                }
            }
        }
    }
    out.into_iter().collect()
}

/// Adds the rows of one parameter of `resource` to `out`.
fn param_row_keys(rtype: &str, param: &super::params::SearchParam, resource: &Value, out: &mut std::collections::BTreeSet<Vec<u8>>) {
    let Some(expr) = &param.expr else { return };
    if param.def.kind == ParamType::Composite {
        for item in eval_resource(expr, resource) {
            for (leading, last) in composite_values(&param.components, resource, &item) {
                out.extend(value_keys(&composite_base(rtype, &param.def.code, &leading), &last));
            }
        }
        return;
    }
    let base = param_rows(rtype, &param.def.code);
    let values = extract(param.def.kind, &eval_resource(expr, resource));
    for v in &values {
        out.extend(value_keys(&base, v));
    }
    if param.def.kind == ParamType::Date && distinct_dates(&values) > 1 {
        out.insert(multi_date_row(rtype, &param.def.code));
    }
}

/// How many different ranges a date parameter's values span.
fn distinct_dates(values: &[IndexValue]) -> usize {
    let mut ranges: Vec<(i64, i64)> = values
        .iter()
        .filter_map(|v| match v {
            IndexValue::Date { low, high } => Some((*low.min(high), *low.max(high))),
            _ => None,
        })
        .collect();
    ranges.sort_unstable();
    ranges.dedup();
    ranges.len()
}

/// The reverse row's value: the keys front-coded (each as the length it shares with the key
/// before it and the rest, both as LEB128 varints, then the rest's bytes). The keys of one
/// resource share their `x` type prefix and mostly their parameter, so this is about half the
/// size of plain keys (issue #16: the reverse lists were the largest class of live data).
pub fn encode_list(keys: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(keys.iter().map(|k| k.len() / 2 + 2).sum());
    let mut prev: &[u8] = &[];
    for k in keys {
        let shared = prev.iter().zip(k.iter()).take_while(|(a, b)| a == b).count();
        push_varint(&mut out, shared as u64);
        push_varint(&mut out, (k.len() - shared) as u64);
        out.extend_from_slice(&k[shared..]);
        prev = k;
    }
    out
}

/// Decodes [`encode_list`]'s bytes; `None` for anything it cannot have written: keys not strictly
/// ascending (which also refuses layout-8 lists), or keys adding up to more than 256× the encoded
/// size plus 256 MiB (a damaged value must not expand quadratically; a real list of a body within
/// `limits.max_body_bytes` stays far below).
pub fn decode_list(mut b: &[u8]) -> Option<Vec<Vec<u8>>> {
    let budget = b.len().saturating_mul(256).saturating_add(256 << 20);
    let mut total = 0usize;
    let mut out: Vec<Vec<u8>> = Vec::new();
    while !b.is_empty() {
        let shared = usize::try_from(take_varint(&mut b)?).ok()?;
        let rest = usize::try_from(take_varint(&mut b)?).ok()?;
        let prev = out.last().map(Vec::as_slice).unwrap_or_default();
        if shared > prev.len() || rest > b.len() {
            return None;
        }
        let mut k = Vec::with_capacity(shared + rest);
        k.extend_from_slice(&prev[..shared]);
        k.extend_from_slice(&b[..rest]);
        b = &b[rest..];
        total += k.len();
        if total > budget || k.is_empty() || out.last().is_some_and(|p| k <= *p) {
            return None;
        }
        out.push(k);
    }
    Some(out)
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(b: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first()?;
        *b = rest;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::FhirVersion;
    use serde_json::json;

    #[test]
    fn damaged_reverse_lists_are_refused_not_misread() {
        let keys = vec![b"xPatient\0a".to_vec(), b"xPatient\0b".to_vec(), vec![0xff; 300]];
        let list = encode_list(&keys);
        assert_eq!(decode_list(&list), Some(keys));
        assert_eq!(decode_list(&[]), Some(vec![]));
        assert_eq!(decode_list(&[5, 1, b'a']), None, "shares more than the previous key has");
        assert_eq!(decode_list(&[0, 9, b'a']), None, "shorter than it says");
        assert_eq!(decode_list(&[0x80; 12]), None, "a varint that never ends");
        assert_eq!(decode_list(&[0, 1, b'b', 0, 1, b'a']), None, "keys out of order");
        assert_eq!(decode_list(&[0, 1, b'a', 1, 0]), None, "a repeated key");
        let old_layout = [0u8, 0, 0, 2, b'x', b'a', 0, 0, 0, 1, b'y'];
        assert_eq!(decode_list(&old_layout), None, "a layout-8 list (u32 lengths) is not misread");
        // Each entry re-copying the previous key would expand quadratically.
        let mut bomb = vec![0u8, 1, b'a'];
        for n in 1..30_000u64 {
            push_varint(&mut bomb, n);
            push_varint(&mut bomb, 1);
            bomb.push(b'a');
        }
        assert_eq!(decode_list(&bomb), None, "expansion beyond the budget");
    }

    #[test]
    fn composite_rows_stay_linear_in_the_values() {
        // Was: every code paired with every value: 400 codings in `code` and 400 in
        // `valueCodeableConcept` (a 23 KB valid Observation) made 321,603 rows (16.8 MB of keys),
        // written on every replica; a body of a few hundred KB would exhaust memory.
        let reg = Registry::load(FhirVersion::R4);
        let codings = |n: usize, p: &str| -> Vec<Value> { (0..n).map(|i| json!({"system": "s", "code": format!("{p}{i}")})).collect() };
        let obs = json!({"resourceType": "Observation", "id": "x", "status": "final",
            "code": {"coding": codings(400, "c")}, "valueCodeableConcept": {"coding": codings(400, "v")}});
        let rs = rows(&reg, "Observation", &obs);
        let composite = |code: &str| rs.iter().filter(|k| k.starts_with(&param_rows("Observation", code))).count();
        assert!(composite("code-value-concept") <= 800 && composite("combo-code-value-concept") <= 800, "{}", composite("code-value-concept"));
        assert!(rs.len() < 10_000, "{} rows", rs.len());
        // A few values of each: every combination is indexed.
        let small = json!({"resourceType": "Observation", "id": "y", "status": "final",
            "code": {"coding": codings(8, "c")}, "valueCodeableConcept": {"coding": codings(8, "v")}});
        let rs = rows(&reg, "Observation", &small);
        let n = rs.iter().filter(|k| k.starts_with(&param_rows("Observation", "code-value-concept"))).count();
        assert_eq!(n, 64, "8 codes × 8 values");
        let lopsided = json!({"resourceType": "Observation", "id": "z", "status": "final",
            "code": {"coding": codings(1, "c")}, "valueCodeableConcept": {"coding": codings(500, "v")}});
        let rs = rows(&reg, "Observation", &lopsided);
        let n = rs.iter().filter(|k| k.starts_with(&param_rows("Observation", "code-value-concept"))).count();
        assert_eq!(n, 500, "one code × 500 values: all indexed");
    }

    #[test]
    fn rows_are_value_keys_and_include_the_live_row() {
        let reg = Registry::load(FhirVersion::R4);
        let obs = json!({"resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "15074-8"}]},
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2013-04-02",
            "valueQuantity": {"value": 6.3, "system": "http://unitsofmeasure.org", "code": "mmol/L"},
            "meta": {"lastUpdated": "2024-01-01T00:00:00Z", "versionId": "1"}});
        let rs = rows(&reg, "Observation", &obs);
        assert!(rs.contains(&live_row("Observation")));
        assert!(rs.windows(2).all(|w| w[0] < w[1]), "sorted, each once");
        let mut want = param_prefix("Observation", "code", b't');
        push_str(&mut want, "15074-8");
        push_str(&mut want, "http://loinc.org");
        assert!(rs.contains(&want), "code, system row");
        for code in ["_id", "_lastUpdated", "status", "subject", "patient", "date", "value-quantity"] {
            let p = param_rows("Observation", code);
            assert!(rs.iter().any(|k| k.starts_with(&p)), "{code} indexed");
        }
        let pat = json!({"resourceType": "Patient", "id": "p", "name": [{"family": "Chalmérs"}]});
        let mut exact = param_prefix("Patient", "family", b'l');
        push_str(&mut exact, "chalmers");
        push_str(&mut exact, "Chalmérs");
        assert!(rows(&reg, "Patient", &pat).contains(&exact), "string rows: normalized, then exact");
        let list = encode_list(&rs);
        assert_eq!(decode_list(&list).unwrap(), rs);
        let plain: usize = rs.iter().map(|k| k.len() + 4).sum();
        assert!(list.len() * 10 < plain * 6, "front coding saves 40% or more: {} of {plain} bytes", list.len());
        assert!(i64_key(-5) < i64_key(3) && i64_from_key(&i64_key(-5)) == Some(-5));
    }
}
