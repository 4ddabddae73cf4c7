//! `_sort`: any parameter, several keys, `-` for descending. A result's sort key is built from its
//! index rows (their value bytes are order-preserving): per key the lowest value (ascending) or the
//! highest (descending), resources without a value last; the keys are joined into one byte string
//! that compares in the requested order (descending parts inverted), then the doc number (creation
//! order, also the whole key without `_sort`). Paging cursors are these byte strings.

use crate::store::space::Space;
use std::sync::Arc;

use super::index::{decode_list, param_rows, reverse_key};
use super::posting;
use super::params::{ParamType, Registry, SearchParam};
use super::query::SearchError;
use crate::store::StoreError;

/// Parsed `_sort`.
#[derive(Debug, Clone, Default)]
pub struct SortSpec {
    pub keys: Vec<(Arc<SearchParam>, bool)>,
}

/// `_sort=a,-b`; `None` / empty sorts by doc number (creation order).
pub fn parse(reg: &Registry, rtype: &str, value: Option<&str>) -> Result<SortSpec, SearchError> {
    let mut spec = SortSpec::default();
    for part in value.unwrap_or("").split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (code, desc) = match part.strip_prefix('-') {
            Some(c) => (c, true),
            None => (part, false),
        };
        let p = reg.get(rtype, code).ok_or_else(|| SearchError::UnknownParameter { rtype: rtype.into(), param: format!("_sort={code}") })?;
        if primary_kind(p.def.kind).is_none() || p.expr.is_none() {
            return Err(SearchError::NotSupported(format!("_sort on {code} ({:?})", p.def.kind)));
        }
        spec.keys.push((p.clone(), desc));
    }
    Ok(spec)
}

/// The row kind whose value orders a parameter's values.
fn primary_kind(kind: ParamType) -> Option<u8> {
    Some(match kind {
        ParamType::Token => b't',
        ParamType::String => b'l',
        ParamType::Date => b'd',
        ParamType::Number => b'#',
        ParamType::Quantity => b'q',
        ParamType::Reference => b'R',
        ParamType::Uri => b'u',
        ParamType::Composite | ParamType::Special => return None,
    })
}

/// Order-preserving, prefix-free encoding of one part (`\0` → `\0\xff`, then `\0\x01`).
fn encode(out: &mut Vec<u8>, bytes: &[u8], invert: bool) {
    let start = out.len();
    for &b in bytes {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 1]);
    if invert {
        for b in &mut out[start..] {
            *b = !*b;
        }
    }
}

/// `x` type `\0` code `\0` kind: the rows whose values order a sort parameter.
pub fn rows_prefix(rtype: &str, param: &SearchParam) -> Vec<u8> {
    let mut prefix = param_rows(rtype, &param.def.code);
    prefix.push(primary_kind(param.def.kind).expect("checked at parse"));
    prefix
}

/// The part of a row's value (after [`rows_prefix`]) that orders it: strings sort by their
/// normalized form only (case and accents do not order them), the rest by the whole value.
pub fn sort_value(kind: ParamType, rest: &[u8]) -> &[u8] {
    match rest.iter().position(|b| *b == 0) {
        Some(end) if kind == ParamType::String => &rest[..=end],
        _ => rest,
    }
}

/// Appends one sort key part: the chosen value, or none (sorts last either way).
pub fn push_part(out: &mut Vec<u8>, value: Option<&[u8]>, desc: bool) {
    match value {
        Some(v) => {
            out.push(1);
            encode(out, v, desc);
        }
        None => out.push(2),
    }
}

/// The value and doc number of a one-key sort key made by [`key`] (`None` value: no value).
pub fn decode_single(key: &[u8], desc: bool) -> Option<(Option<Vec<u8>>, u32)> {
    let doc = |b: &[u8]| b.get(..4).map(|d| u32::from_be_bytes(d.try_into().expect("4 bytes")));
    match key.split_first()? {
        (2, rest) => Some((None, doc(rest)?)),
        (1, rest) => {
            let flip = |b: u8| if desc { !b } else { b };
            let mut value = Vec::new();
            let mut i = 0;
            loop {
                match (flip(*rest.get(i)?), rest.get(i + 1).map(|b| flip(*b))) {
                    (0, Some(0xff)) => value.push(0),
                    (0, Some(1)) => break,
                    (0, _) => return None,
                    (b, _) => {
                        value.push(b);
                        i += 1;
                        continue;
                    }
                }
                i += 2;
            }
            Some((Some(value), doc(&rest[i + 2..])?))
        }
        _ => None,
    }
}

/// The sort key of doc number `doc` of `rtype`.
pub fn key(tree: &Space, rtype: &str, doc: u32, spec: &SortSpec) -> Result<Vec<u8>, SearchError> {
    let mut out = Vec::new();
    if !spec.keys.is_empty() {
        let rows = match posting::doc_id(tree, rtype, doc)? {
            Some(id) => match tree.get(reverse_key(rtype, &id))? {
                Some(b) => decode_list(&b).ok_or_else(|| StoreError::Corrupt(format!("index list of {rtype}/{id}")))?,
                None => Vec::new(),
            },
            None => Vec::new(),
        };
        for (param, desc) in &spec.keys {
            let prefix = rows_prefix(rtype, param);
            let values = rows.iter().filter_map(|k| k.strip_prefix(prefix.as_slice())).map(|v| sort_value(param.def.kind, v));
            push_part(&mut out, if *desc { values.max() } else { values.min() }, *desc);
        }
    }
    out.extend_from_slice(&doc.to_be_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_keys_decode_back() {
        for desc in [false, true] {
            for v in [&b""[..], b"a", b"a\0b", b"\xff\0"] {
                let mut k = Vec::new();
                push_part(&mut k, Some(v), desc);
                k.extend_from_slice(&7u32.to_be_bytes());
                k.extend_from_slice(b"Patient");
                assert_eq!(decode_single(&k, desc), Some((Some(v.to_vec()), 7)));
            }
            assert_eq!(decode_single(&[2, 0, 0, 0, 9], desc), Some((None, 9)));
            assert_eq!(decode_single(&[1, 5], desc), None);
        }
    }

    #[test]
    fn inverted_parts_sort_in_reverse() {
        let enc = |s: &[u8], inv: bool| {
            let mut v = Vec::new();
            encode(&mut v, s, inv);
            v
        };
        let vals: [&[u8]; 5] = [b"", b"a", b"a\0", b"ab", b"b"];
        for w in vals.windows(2) {
            assert!(enc(w[0], false) < enc(w[1], false));
            assert!(enc(w[0], true) > enc(w[1], true));
        }
    }
}
