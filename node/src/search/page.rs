//! Result order and keyset pages. Without `_sort` a one-type result stays a bitmap in doc number
//! order (creation order) and a page is found by rank / select, without touching the other
//! matches; with `_sort` or several types every match gets its sort key ([`super::sort`]) and the
//! keys are sorted. Either way a cursor is the key of the page's edge (sort key, doc number,
//! type), so a page does not shift when resources are added or removed elsewhere in the result.

use super::query::{Ids, SearchError};
use super::sort::{self, SortSpec};

/// The matches of a search in result order.
pub enum Ordered {
    /// One type, no `_sort`: doc number order.
    Docs(&'static str, Ids),
    /// (key, (type, doc number)), sorted by key.
    Keyed(Vec<(Vec<u8>, (&'static str, u32))>),
}

/// Orders `found` (doc numbers per type; `sorts` in the same order).
pub fn order(tree: &sled::Tree, found: Vec<(&'static str, Ids)>, sorts: &[SortSpec]) -> Result<Ordered, SearchError> {
    if found.len() == 1 && sorts.first().is_none_or(|s| s.keys.is_empty()) {
        let (t, docs) = found.into_iter().next().expect("one");
        return Ok(Ordered::Docs(t, docs));
    }
    let mut keyed = Vec::with_capacity(found.iter().map(|(_, d)| d.len() as usize).sum());
    for ((t, docs), spec) in found.into_iter().zip(sorts) {
        for doc in &docs {
            let mut k = sort::key(tree, t, doc, spec)?;
            k.extend_from_slice(t.as_bytes());
            keyed.push((k, (t, doc)));
        }
    }
    keyed.sort_unstable();
    Ok(Ordered::Keyed(keyed))
}

fn doc_key(t: &str, doc: u32) -> Vec<u8> {
    let mut k = doc.to_be_bytes().to_vec();
    k.extend_from_slice(t.as_bytes());
    k
}

impl Ordered {
    pub fn len(&self) -> usize {
        match self {
            Ordered::Docs(_, d) => d.len() as usize,
            Ordered::Keyed(k) => k.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`-th match.
    pub fn get(&self, i: usize) -> Option<(&'static str, u32)> {
        match self {
            Ordered::Docs(t, d) => d.select(u32::try_from(i).ok()?).map(|doc| (*t, doc)),
            Ordered::Keyed(k) => k.get(i).map(|(_, m)| *m),
        }
    }

    /// The cursor key of the `i`-th match.
    pub fn key(&self, i: usize) -> Option<Vec<u8>> {
        match self {
            Ordered::Docs(t, _) => self.get(i).map(|(_, doc)| doc_key(t, doc)),
            Ordered::Keyed(k) => k.get(i).map(|(key, _)| key.clone()),
        }
    }

    /// How many matches have a key below `edge` (`or_equal`: at most `edge`).
    fn count_before(&self, edge: &[u8], or_equal: bool) -> Result<usize, SearchError> {
        let below = |k: &[u8]| if or_equal { k <= edge } else { k < edge };
        match self {
            Ordered::Keyed(keys) => Ok(keys.partition_point(|(k, _)| below(k))),
            Ordered::Docs(t, docs) => {
                let doc = edge.get(..4).map(|b| u32::from_be_bytes(b.try_into().expect("4 bytes"))).ok_or_else(bad_cursor)?;
                let lower = if doc == 0 { 0 } else { docs.rank(doc - 1) as usize };
                Ok(lower + usize::from(docs.contains(doc) && below(&doc_key(t, doc))))
            }
        }
    }

    /// The `[start, end)` range of the page: the first `count` matches, the `count` after the
    /// cursor `n:<key>`, or the `count` before `p:<key>`.
    pub fn page(&self, cursor: Option<&str>, count: usize) -> Result<(usize, usize), SearchError> {
        let len = self.len();
        let Some(p) = cursor else { return Ok((0, count.min(len))) };
        let (dir, edge) = p.split_once(':').ok_or_else(bad_cursor)?;
        let edge = hex::decode(edge).map_err(|_| bad_cursor())?;
        match dir {
            "n" => {
                let s = self.count_before(&edge, true)?;
                Ok((s, (s + count).min(len)))
            }
            "p" => {
                let e = self.count_before(&edge, false)?;
                Ok((e.saturating_sub(count), e))
            }
            _ => Err(bad_cursor()),
        }
    }
}

fn bad_cursor() -> SearchError {
    SearchError::BadValue { param: "_page".into(), reason: "use the links of the search bundle".into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doc_order_pages_match_keyed_pages() {
        let docs: Ids = [1u32, 5, 6, 9, 300, 70_000].into_iter().collect();
        let fast = Ordered::Docs("Patient", docs.clone());
        let slow = Ordered::Keyed(docs.iter().map(|d| (doc_key("Patient", d), ("Patient", d))).collect());
        for o in [&fast, &slow] {
            assert_eq!(o.page(None, 4).unwrap(), (0, 4));
            let edge = hex::encode(o.key(3).unwrap());
            assert_eq!(o.page(Some(&format!("n:{edge}")), 4).unwrap(), (4, 6));
            assert_eq!(o.page(Some(&format!("p:{edge}")), 2).unwrap(), (1, 3));
            // An edge that is no longer in the result (deleted): the next page starts after it.
            let gone = hex::encode(doc_key("Patient", 7));
            assert_eq!(o.page(Some(&format!("n:{gone}")), 10).unwrap(), (3, 6));
            assert_eq!(o.page(Some(&format!("p:{gone}")), 10).unwrap(), (0, 3));
            assert_eq!(o.get(5), Some(("Patient", 70_000)));
            assert!(o.page(Some("x:00"), 1).is_err());
        }
        assert!(fast.page(Some("n:00"), 1).is_err(), "a cursor shorter than a doc number");
    }
}
