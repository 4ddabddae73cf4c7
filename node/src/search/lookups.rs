//! Index reads about one resource or one parameter, outside a search: the rows a resource is
//! in, its references, who references it, and the distinct values of a parameter.

use super::error::SearchError;
use super::query::{unescape, Executor, Ids};
use crate::store::space::Space;


use super::index::{exact_prefix, param_prefix};
use super::posting::{self, PostingError};
use crate::store::StoreError;


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
