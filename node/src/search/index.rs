//! The embedded search index: rows in the `state` tree, written by the state machine in the same
//! sled batch as the resource version (so every node holds the same index and a search right
//! after a write sees it). All encodings live here.
//!
//! | key | meaning |
//! |---|---|
//! | `x` type `\0` code `\0` kind parts… `\0` id | one value of parameter `code` on `type/id` |
//! | `y` type `\0` id | the list of the resource's `x` keys (to replace them on update/delete) |
//!
//! String parts are escaped (`\0` → `\1\1`, `\1` → `\1\2`, order kept) and end with `\0`;
//! numbers and dates are fixed-width order-preserving binaries. The id is what follows the last
//! `\0`. Kinds (one row per value, to keep writes cheap): `t` token code, system (empty when
//! none) · `x` token text · `l` normalized string, with the exact strings as the row's value ·
//! `d` date low, high · `#` number · `q` quantity value · `c` quantity code-or-unit, value ·
//! `Q` quantity system, code, value · `r` reference type, id · `R` literal reference · `u` uri.
//! Rows have empty values except `l`.

use serde_json::Value;

use super::decimal::Decimal;
use super::extract::{extract, IndexValue};
use super::fhirpath::eval_resource;
use super::params::{ParamType, Registry};

pub const ROW: u8 = b'x';
pub const REVERSE: u8 = b'y';

/// Appends `s` escaped and terminated, keeping byte order.
pub fn push_str(k: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        match b {
            0 => k.extend_from_slice(&[1, 1]),
            1 => k.extend_from_slice(&[1, 2]),
            _ => k.push(b),
        }
    }
    k.push(0);
}

/// Order-preserving bytes of a signed 64-bit number.
pub fn i64_key(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn i64_from_key(b: &[u8]) -> Option<i64> {
    Some((u64::from_be_bytes(b.get(..8)?.try_into().ok()?) ^ (1 << 63)) as i64)
}

/// `x` type `\0` code `\0`: the prefix of every row of one parameter.
pub fn param_rows(rtype: &str, code: &str) -> Vec<u8> {
    let mut k = vec![ROW];
    push_str(&mut k, rtype);
    push_str(&mut k, code);
    k
}

/// `x` type `\0` code `\0` kind: the prefix of every row of one parameter kind.
pub fn param_prefix(rtype: &str, code: &str, kind: u8) -> Vec<u8> {
    let mut k = param_rows(rtype, code);
    k.push(kind);
    k
}

/// Prefix of the rows of one parameter kind whose leading parts equal `parts` exactly.
pub fn exact_prefix(rtype: &str, code: &str, kind: u8, parts: &[&str]) -> Vec<u8> {
    let mut k = param_prefix(rtype, code, kind);
    for p in parts {
        push_str(&mut k, p);
    }
    k
}

/// Prefix of the rows of one parameter kind whose first part starts with `text`.
pub fn open_prefix(rtype: &str, code: &str, kind: u8, text: &str) -> Vec<u8> {
    let mut k = exact_prefix(rtype, code, kind, &[text]);
    k.pop(); // no terminator: any continuation matches
    k
}

/// One index row: key, and value (the exact strings of an `l` row, else empty).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Row {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

pub fn reverse_key(rtype: &str, id: &str) -> Vec<u8> {
    let mut k = vec![REVERSE];
    push_str(&mut k, rtype);
    k.extend_from_slice(id.as_bytes());
    k
}

/// The id at the end of a row key.
pub fn row_id(key: &[u8]) -> Option<&str> {
    let at = key.iter().rposition(|b| *b == 0)?;
    std::str::from_utf8(&key[at + 1..]).ok()
}

fn finish(mut k: Vec<u8>, id: &str) -> Vec<u8> {
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

/// The row keys (without the id) of one value, with the row value.
fn value_keys(rtype: &str, code: &str, v: &IndexValue) -> Vec<(Vec<u8>, Option<String>)> {
    let p = |kind: u8| param_prefix(rtype, code, kind);
    let with = |kind: u8, parts: &[&str]| {
        let mut k = p(kind);
        for s in parts {
            push_str(&mut k, s);
        }
        k.pop(); // the id separator follows
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
        IndexValue::Token { system, code: c } => vec![(with(b't', &[c, system.as_deref().unwrap_or("")]), None)],
        IndexValue::TokenText(t) => vec![(with(b'x', &[t]), None)],
        IndexValue::String { exact, normalized } => vec![(with(b'l', &[normalized]), Some(exact.clone()))],
        IndexValue::Date { low, high } => {
            let mut d = p(b'd');
            d.extend_from_slice(&i64_key(*low));
            d.extend_from_slice(&i64_key(*high));
            vec![(d, None)]
        }
        IndexValue::Number(d) => vec![(num(b'#', &[], d), None)],
        IndexValue::Quantity { value, system, code: c, unit } => {
            let mut out = vec![(num(b'q', &[], value), None)];
            for cu in [c, unit].into_iter().flatten() {
                out.push((num(b'c', &[cu], value), None));
            }
            if let Some(c) = c {
                out.push((num(b'Q', &[system.as_deref().unwrap_or(""), c], value), None));
            }
            out
        }
        IndexValue::Reference { rtype: t, id, literal } => {
            let mut out = vec![(with(b'R', &[literal]), None)];
            if let (Some(t), Some(id)) = (t, id) {
                out.push((with(b'r', &[t, id]), None));
            }
            out
        }
        IndexValue::Uri(u) => vec![(with(b'u', &[u]), None)],
    }
}

/// Exact strings stored in an `l` row's value, `\0`-separated.
pub fn exact_strings(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == 0)
}

/// Every index row of a resource, sorted by key, one row per key.
pub fn rows(reg: &Registry, rtype: &str, id: &str, resource: &Value) -> Vec<Row> {
    let mut out: std::collections::BTreeMap<Vec<u8>, Vec<String>> = std::collections::BTreeMap::new();
    for param in reg.for_type(rtype) {
        let Some(expr) = &param.expr else { continue };
        if matches!(param.def.kind, ParamType::Composite | ParamType::Special) {
            continue;
        }
        let values = extract(param.def.kind, &eval_resource(expr, resource));
        if values.is_empty() {
            continue;
        }
        for v in &values {
            for (k, exact) in value_keys(rtype, &param.def.code, v) {
                let strings = out.entry(finish(k, id)).or_default();
                if let Some(e) = exact {
                    if !strings.contains(&e) {
                        strings.push(e);
                    }
                }
            }
        }
    }
    out.into_iter().map(|(key, strings)| Row { key, value: strings.join("\0").into_bytes() }).collect()
}

/// The reverse row's value: the keys, each with a u32 length.
pub fn encode_list(keys: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(keys.iter().map(|k| k.len() + 4).sum());
    for k in keys {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k);
    }
    out
}

pub fn decode_list(mut b: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    while !b.is_empty() {
        let len = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
        out.push(b.get(4..4 + len)?.to_vec());
        b = &b[4 + len..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::FhirVersion;
    use serde_json::json;

    #[test]
    fn rows_carry_the_id_and_sort_by_value() {
        let reg = Registry::load(FhirVersion::R4);
        let obs = json!({"resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "15074-8"}]},
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2013-04-02",
            "valueQuantity": {"value": 6.3, "system": "http://unitsofmeasure.org", "code": "mmol/L"},
            "meta": {"lastUpdated": "2024-01-01T00:00:00Z", "versionId": "1"}});
        let rs: Vec<Vec<u8>> = rows(&reg, "Observation", "o1", &obs).into_iter().map(|r| r.key).collect();
        assert!(rs.iter().all(|k| row_id(k) == Some("o1")));
        let mut want = param_prefix("Observation", "code", b't');
        push_str(&mut want, "15074-8");
        push_str(&mut want, "http://loinc.org");
        assert!(rs.contains(&finish({ want.pop(); want }, "o1")), "code, system row");
        for code in ["_id", "_lastUpdated", "status", "subject", "patient", "date", "value-quantity"] {
            let p = param_rows("Observation", code);
            assert!(rs.iter().any(|k| k.starts_with(&p)), "{code} indexed");
        }
        let list = encode_list(&rs);
        assert_eq!(decode_list(&list).unwrap(), rs);
        assert!(i64_key(-5) < i64_key(3) && i64_from_key(&i64_key(-5)) == Some(-5));
    }
}
