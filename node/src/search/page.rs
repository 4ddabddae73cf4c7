//! Result order and keyset pages. A match's place is its key: (sort values, doc number, type),
//! built by [`super::sort`]; a cursor is the key of a page edge, so a page does not shift when
//! resources are added or removed elsewhere in the result. Three ways to find a page, all giving
//! the same order and the same keys:
//! - one type, no `_sort`: the bitmap in doc number order (creation order); a page is found by
//!   rank / select, without looking at the other matches;
//! - one type, one `_sort` key, a result large enough that reading the sort parameter's rows in
//!   value order fills a page sooner than a lookup per match: those rows are walked from the
//!   cursor, each candidate checked against its own key (its lowest value ascending, highest
//!   descending), until the page is full ([`walk`]);
//! - otherwise every match gets its key (a lookup per match) and the keys are sorted.

use crate::store::space::Space;
use super::posting::{self, add_block, row_of};
use super::query::{Ids, SearchError};
use super::sort::{self, SortSpec};
use crate::store::keys::prefix_end;

/// One page of a search.
#[derive(Debug, Default)]
pub struct Page {
    /// The page's matches in result order: (type, doc number).
    pub items: Vec<(&'static str, u32)>,
    pub total: usize,
    /// Cursor edges for the `previous` (`p:`) and `next` (`n:`) links, when there are such pages.
    pub previous: Option<Vec<u8>>,
    pub next: Option<Vec<u8>>,
}

/// Where a page starts: the first page, after `n:<key>`, or before `p:<key>`.
enum Cursor {
    First,
    After(Vec<u8>),
    Before(Vec<u8>),
}

fn parse_cursor(cursor: Option<&str>) -> Result<Cursor, SearchError> {
    let Some(p) = cursor else { return Ok(Cursor::First) };
    let (dir, edge) = p.split_once(':').ok_or_else(bad_cursor)?;
    let edge = hex::decode(edge).map_err(|_| bad_cursor())?;
    match dir {
        "n" => Ok(Cursor::After(edge)),
        "p" => Ok(Cursor::Before(edge)),
        _ => Err(bad_cursor()),
    }
}

fn bad_cursor() -> SearchError {
    SearchError::BadValue { param: "_page".into(), reason: "use the links of the search bundle".into() }
}

/// The page of `found` (doc numbers per type; `sorts` in the same order) at `cursor`.
/// `max_keyed` bounds the matches that may need a sort key each (several types, or a sort the
/// row walk does not serve): past it the search is refused as too costly rather than holding a
/// key per match in memory.
pub fn page(tree: &Space, found: Vec<(&'static str, Ids)>, sorts: &[SortSpec], cursor: Option<&str>, count: usize, max_keyed: u64) -> Result<Page, SearchError> {
    let cursor = parse_cursor(cursor)?;
    if let ([(t, docs)], [spec]) = (found.as_slice(), sorts) {
        if spec.keys.len() == 1 && walk_pays(tree, t, docs, count)? {
            return walk_page(tree, t, docs, spec, &cursor, count);
        }
    }
    if let ([_], [spec]) = (found.as_slice(), sorts) {
        if spec.keys.is_empty() {
            let (t, docs) = found.into_iter().next().expect("one type");
            return Ok(Ordered::Docs(t, docs).page(&cursor, count));
        }
    }
    let matches: u64 = found.iter().map(|(_, d)| d.len()).sum();
    if matches > max_keyed {
        return Err(SearchError::TooCostly(format!(
            "ordering {matches} matches{} needs a sort key for each; the limit is {max_keyed} (limits.max_sort_matches): add criteria, or search one type",
            if found.len() > 1 { format!(" of {} types", found.len()) } else { String::new() }
        )));
    }
    let mut keyed = Vec::with_capacity(matches as usize);
    for ((t, docs), spec) in found.into_iter().zip(sorts) {
        for doc in &docs {
            let mut k = sort::key(tree, t, doc, spec)?;
            k.extend_from_slice(t.as_bytes());
            keyed.push((k, (t, doc)));
        }
    }
    keyed.sort_unstable();
    Ok(Ordered::Keyed(keyed).page(&cursor, count))
}

/// The page at `cursor` of matches whose keys the caller made (`_content` / `_text` in
/// relevance order: [`crate::meili::query::score_key`]): keyset paging like every other order.
pub fn page_keyed(mut keyed: Vec<(Vec<u8>, (&'static str, u32))>, cursor: Option<&str>, count: usize) -> Result<Page, SearchError> {
    let cursor = parse_cursor(cursor)?;
    keyed.sort_unstable();
    Ok(Ordered::Keyed(keyed).page(&cursor, count))
}

/// Whether walking the sort rows is expected to read fewer rows than there are matches to look
/// up: a page needs about `count × live / matches` rows when matches are spread evenly.
fn walk_pays(tree: &Space, rtype: &str, docs: &Ids, count: usize) -> Result<bool, SearchError> {
    const MIN_MATCHES: u64 = 1_000;
    if docs.len() < MIN_MATCHES {
        return Ok(false);
    }
    let mut live = Ids::new();
    posting::scan(tree, &super::index::live_row(rtype), &mut live)?;
    Ok((count as u64 + 1).saturating_mul(live.len()) / docs.len() < docs.len())
}

/// The matches in result order, all known.
enum Ordered {
    /// One type, no `_sort`: doc number order.
    Docs(&'static str, Ids),
    /// (key, (type, doc number)), sorted by key.
    Keyed(Vec<(Vec<u8>, (&'static str, u32))>),
}

fn doc_key(t: &str, doc: u32) -> Vec<u8> {
    let mut k = doc.to_be_bytes().to_vec();
    k.extend_from_slice(t.as_bytes());
    k
}

impl Ordered {
    fn len(&self) -> usize {
        match self {
            Ordered::Docs(_, d) => d.len() as usize,
            Ordered::Keyed(k) => k.len(),
        }
    }

    fn get(&self, i: usize) -> Option<(&'static str, u32)> {
        match self {
            Ordered::Docs(t, d) => d.select(u32::try_from(i).ok()?).map(|doc| (*t, doc)),
            Ordered::Keyed(k) => k.get(i).map(|(_, m)| *m),
        }
    }

    fn key(&self, i: usize) -> Option<Vec<u8>> {
        match self {
            Ordered::Docs(t, _) => self.get(i).map(|(_, doc)| doc_key(t, doc)),
            Ordered::Keyed(k) => k.get(i).map(|(key, _)| key.clone()),
        }
    }

    /// How many matches have a key below `edge` (`or_equal`: at most `edge`).
    fn count_before(&self, edge: &[u8], or_equal: bool) -> usize {
        let below = |k: &[u8]| if or_equal { k <= edge } else { k < edge };
        match self {
            Ordered::Keyed(keys) => keys.partition_point(|(k, _)| below(k)),
            Ordered::Docs(t, docs) => {
                // Keys are the doc number (4 bytes) then the type: compare on the doc number,
                // and on the whole key only for the edge's own doc number.
                let mut d = [0u8; 4];
                let n = edge.len().min(4);
                d[..n].copy_from_slice(&edge[..n]);
                let doc = u32::from_be_bytes(d);
                let lower = if doc == 0 { 0 } else { docs.rank(doc - 1) as usize };
                lower + usize::from(docs.contains(doc) && below(&doc_key(t, doc)))
            }
        }
    }

    fn page(&self, cursor: &Cursor, count: usize) -> Page {
        let len = self.len();
        let (start, end) = match cursor {
            Cursor::First => (0, count.min(len)),
            Cursor::After(edge) => {
                let s = self.count_before(edge, true);
                (s, (s + count).min(len))
            }
            // Fewer than a page before the edge (matches were deleted): the first page.
            Cursor::Before(edge) => match self.count_before(edge, false) {
                e if e < count => (0, count.min(len)),
                e => (e - count, e),
            },
        };
        let items = (start..end).filter_map(|i| self.get(i)).collect();
        // Before the first match of this page; past the end, just after the last match. A
        // `_count=0` page (the total only) has no neighbours.
        let previous = (start > 0 && count > 0).then(|| if start < len { self.key(start) } else { self.key(len - 1).map(just_after) }).flatten();
        let next = (end < len && end > start).then(|| self.key(end - 1)).flatten();
        Page { items, total: len, previous, next }
    }
}

/// The smallest key above `k` (keys are prefix-free per type).
fn just_after(mut k: Vec<u8>) -> Vec<u8> {
    k.push(0);
    k
}

/// Walks one sort parameter's rows for a page (see the module doc).
fn walk_page(tree: &Space, rtype: &'static str, docs: &Ids, spec: &SortSpec, cursor: &Cursor, count: usize) -> Result<Page, SearchError> {
    let w = Walk { tree, rtype, docs, spec };
    let total = docs.len() as usize;
    if count == 0 {
        return Ok(Page { total, ..Page::default() });
    }
    let page = match cursor {
        Cursor::First => {
            let mut items = w.collect(None, true, count + 1)?;
            let more = items.len() > count;
            items.truncate(count);
            Page { next: more.then(|| items.last().map(|(_, k)| k.clone())).flatten(), previous: None, items: w.finish(items), total }
        }
        Cursor::After(edge) => {
            let mut items = w.collect(Some((edge, false)), true, count + 1)?;
            let more = items.len() > count;
            items.truncate(count);
            // Past the end (the edge was deleted): just after the last match, as the sorted path.
            let last_before = w.collect(Some((edge, true)), false, 1)?;
            let previous = match (items.first(), last_before.first()) {
                (_, None) => None,
                (Some((_, k)), Some(_)) => Some(k.clone()),
                (None, Some((_, k))) => Some(just_after(k.clone())),
            };
            Page { next: more.then(|| items.last().map(|(_, k)| k.clone())).flatten(), previous, items: w.finish(items), total }
        }
        Cursor::Before(edge) => {
            let mut items = w.collect(Some((edge, false)), false, count + 1)?;
            if items.len() < count {
                // Fewer than a page before the edge (matches were deleted): the first page.
                return walk_page(w.tree, rtype, docs, spec, &Cursor::First, count);
            }
            let more = items.len() > count;
            items.truncate(count);
            items.reverse();
            let after = !w.collect(Some((edge, true)), true, 1)?.is_empty();
            Page { previous: more.then(|| items.first().map(|(_, k)| k.clone())).flatten(), next: after.then(|| items.last().map(|(_, k)| k.clone())).flatten(), items: w.finish(items), total }
        }
    };
    Ok(page)
}

struct Walk<'a> {
    tree: &'a Space,
    rtype: &'static str,
    docs: &'a Ids,
    spec: &'a SortSpec,
}

impl Walk<'_> {
    fn finish(&self, items: Vec<(u32, Vec<u8>)>) -> Vec<(&'static str, u32)> {
        items.into_iter().map(|(d, _)| (self.rtype, d)).collect()
    }

    /// The key `doc` has if its sort value is `value` (`None`: it has no value).
    fn key_with(&self, doc: u32, value: Option<&[u8]>) -> Vec<u8> {
        let mut key = Vec::new();
        sort::push_part(&mut key, value, self.spec.keys[0].1);
        key.extend_from_slice(&doc.to_be_bytes());
        key.extend_from_slice(self.rtype.as_bytes());
        key
    }

    /// Whether `doc`'s own key is `key` (its lowest value ascending, highest descending, is the
    /// one `key` was made with: a resource appears once, at that value).
    fn is_own(&self, doc: u32, key: &[u8]) -> Result<bool, SearchError> {
        let own = sort::key(self.tree, self.rtype, doc, self.spec)?;
        Ok(key.strip_suffix(self.rtype.as_bytes()) == Some(own.as_slice()))
    }

    /// Up to `limit` matches in result order (`forward`) or against it, strictly beyond the edge
    /// (or at it, when the flag is set): (doc, key).
    fn collect(&self, edge: Option<(&Vec<u8>, bool)>, forward: bool, limit: usize) -> Result<Vec<(u32, Vec<u8>)>, SearchError> {
        let (param, desc) = &self.spec.keys[0];
        let kind = param.def.kind;
        let prefix = sort::rows_prefix(self.rtype, param);
        let edge_at = match edge {
            Some((e, _)) => Some(sort::decode_single(e, *desc).ok_or_else(bad_cursor)?),
            None => None,
        };
        let beyond = |key: &[u8]| match edge {
            None => true,
            Some((e, inclusive)) => {
                let e = e.as_slice();
                if forward {
                    key > e || (inclusive && key == e)
                } else {
                    key < e || (inclusive && key == e)
                }
            }
        };
        let mut out = Vec::new();
        // Matches without a value come after all others in result order.
        let in_missing = matches!(edge_at, Some((None, _)));
        if !forward && in_missing {
            self.missing(&prefix, false, &beyond, limit, &mut out)?;
            if out.len() >= limit {
                return Ok(out);
            }
        }
        if !(forward && in_missing) {
            // Rows in value order: ascending forward, or descending backward, and the reverse.
            let rows_forward = forward != *desc;
            let edge_value = if in_missing { None } else { edge_at.as_ref().and_then(|(v, _)| v.clone()) };
            let mut start = prefix.clone();
            let mut end = prefix_end(&prefix);
            if let Some(v) = &edge_value {
                let mut at = prefix.clone();
                at.extend_from_slice(v);
                if rows_forward {
                    start = at;
                } else {
                    end = prefix_end(&at);
                }
            }
            let rows = self.tree.range(start..end);
            let rows: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if rows_forward { Box::new(rows) } else { Box::new(rows.rev()) };
            let mut group: Option<Vec<u8>> = None;
            let mut candidates = Ids::new();
            for item in rows {
                let (k, v) = item?;
                let value = sort::sort_value(kind, &row_of(&k)[prefix.len()..]).to_vec();
                if group.as_ref().is_some_and(|g| *g != value) {
                    self.emit(group.as_deref(), &candidates, forward, &beyond, limit, &mut out)?;
                    if out.len() >= limit {
                        return Ok(out);
                    }
                    candidates.clear();
                }
                group = Some(value);
                let mut block = Ids::new();
                add_block(&k, &v, &mut block)?;
                candidates |= block & self.docs;
            }
            self.emit(group.as_deref(), &candidates, forward, &beyond, limit, &mut out)?;
            if out.len() >= limit {
                return Ok(out);
            }
        }
        if forward {
            self.missing(&prefix, true, &beyond, limit, &mut out)?;
        }
        Ok(out)
    }

    /// Adds the candidates of one value group whose own key has that value and lies beyond the
    /// edge, in result order (doc numbers ascending forward).
    fn emit(&self, value: Option<&[u8]>, candidates: &Ids, forward: bool, beyond: &dyn Fn(&[u8]) -> bool, limit: usize, out: &mut Vec<(u32, Vec<u8>)>) -> Result<(), SearchError> {
        let Some(value) = value else { return Ok(()) };
        let docs: Box<dyn Iterator<Item = u32>> = if forward { Box::new(candidates.iter()) } else { Box::new(candidates.iter().rev()) };
        for doc in docs {
            if out.len() >= limit {
                break;
            }
            let key = self.key_with(doc, Some(value));
            if beyond(&key) && self.is_own(doc, &key)? {
                out.push((doc, key));
            }
        }
        Ok(())
    }

    /// Adds matches without any value of the sort parameter (ordered by doc number).
    fn missing(&self, prefix: &[u8], forward: bool, beyond: &dyn Fn(&[u8]) -> bool, limit: usize, out: &mut Vec<(u32, Vec<u8>)>) -> Result<(), SearchError> {
        let mut valued = Ids::new();
        posting::scan(self.tree, prefix, &mut valued)?;
        let missing = self.docs - valued;
        let docs: Box<dyn Iterator<Item = u32>> = if forward { Box::new(missing.iter()) } else { Box::new(missing.iter().rev()) };
        for doc in docs {
            if out.len() >= limit {
                break;
            }
            let key = self.key_with(doc, None);
            if beyond(&key) {
                out.push((doc, key));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::query::{parse, Executor};
    use crate::machine::command::{Action, Command, CommandV1, WriteOp};

    #[test]
    fn ordering_more_matches_than_the_key_limit_is_refused() {
        let ix = crate::machine::testing::indexed();
        let a: Ids = (0..10u32).collect();
        let b: Ids = (0..5u32).collect();
        let spec = SortSpec::default();
        let err = page(&ix.tree, vec![("Patient", a.clone()), ("Observation", b.clone())], &[spec.clone(), spec.clone()], None, 5, 14).unwrap_err();
        assert!(matches!(err, SearchError::TooCostly(ref m) if m.contains("15 matches of 2 types")), "{err}");
        // One type in creation order needs no keys: no limit applies.
        assert!(page(&ix.tree, vec![("Patient", a)], std::slice::from_ref(&spec), None, 5, 1).is_ok());
    }

    #[test]
    fn doc_order_pages_match_keyed_pages() {
        let docs: Ids = [1u32, 5, 6, 9, 300, 70_000].into_iter().collect();
        let fast = Ordered::Docs("Patient", docs.clone());
        let slow = Ordered::Keyed(docs.iter().map(|d| (doc_key("Patient", d), ("Patient", d))).collect());
        let after = |k: Vec<u8>| Cursor::After(k);
        let before = |k: Vec<u8>| Cursor::Before(k);
        let docs_of = |p: &Page| p.items.iter().map(|(_, d)| *d).collect::<Vec<_>>();
        for o in [&fast, &slow] {
            let first = o.page(&Cursor::First, 4);
            assert_eq!((docs_of(&first), first.previous.is_none()), (vec![1, 5, 6, 9], true));
            let second = o.page(&after(first.next.clone().unwrap()), 4);
            assert_eq!((docs_of(&second), second.next.is_none()), (vec![300, 70_000], true));
            assert_eq!(docs_of(&o.page(&before(second.previous.clone().unwrap()), 2)), [6, 9]);
            // An edge that is no longer in the result (deleted): the next page starts after it.
            assert_eq!(docs_of(&o.page(&after(doc_key("Patient", 7)), 10)), [9, 300, 70_000]);
            assert_eq!(docs_of(&o.page(&before(doc_key("Patient", 7)), 2)), [5, 6]);
            // Fewer than a page before the edge: the first page, whole.
            assert_eq!(docs_of(&o.page(&before(doc_key("Patient", 7)), 4)), [1, 5, 6, 9]);
            assert!(o.page(&before(doc_key("Patient", 0)), 4).next.is_some(), "no underflow before the first match");
            // Past the end: empty, with a way back to the last match.
            let past = o.page(&after(doc_key("Patient", 80_000)), 3);
            assert!(past.items.is_empty());
            assert_eq!(docs_of(&o.page(&before(past.previous.unwrap()), 3)), [9, 300, 70_000]);
        }
        assert!(fast.page(&after(vec![0]), 1).items.len() == 1, "a short cursor never panics");
        let counted = fast.page(&after(doc_key("Patient", 5)), 0);
        assert!(counted.items.is_empty() && counted.previous.is_none() && counted.next.is_none(), "_count=0: the total only");
        assert!(parse_cursor(Some("x:00")).is_err());
        assert!(parse_cursor(Some("n:zz")).is_err());
    }

    /// Every page, forward then backward, through `walk_page` and through sorted keys.
    fn all_pages(tree: &Space, docs: &Ids, spec: &SortSpec, count: usize, walk: bool) -> (Vec<u32>, Vec<u32>) {
        let get = |cursor: &Cursor| {
            if walk {
                walk_page(tree, "Patient", docs, spec, cursor, count).unwrap()
            } else {
                page(tree, vec![("Patient", docs.clone())], std::slice::from_ref(spec), match cursor {
                    Cursor::First => None,
                    Cursor::After(e) => Some(format!("n:{}", hex::encode(e))),
                    Cursor::Before(e) => Some(format!("p:{}", hex::encode(e))),
                }.as_deref(), count, u64::MAX).unwrap()
            }
        };
        let mut forward = Vec::new();
        let mut p = get(&Cursor::First);
        assert!(p.previous.is_none());
        loop {
            forward.extend(p.items.iter().map(|(_, d)| *d));
            match p.next.clone() {
                Some(n) => {
                    p = get(&Cursor::After(n));
                    assert!(p.previous.is_some(), "a page after another has a previous link");
                }
                None => break,
            }
        }
        let mut backward = Vec::new();
        loop {
            backward.splice(0..0, p.items.iter().map(|(_, d)| *d));
            match p.previous.clone() {
                Some(e) => p = get(&Cursor::Before(e)),
                None => break,
            }
        }
        (forward, backward)
    }

    #[test]
    fn walking_sort_rows_gives_the_same_pages_as_sorting_keys() {
        let crate::machine::testing::Indexed { dir: _dir, tree, reg, mut sm } = crate::machine::testing::indexed();
        // Several names per patient (a patient sorts at its lowest / highest), shared values,
        // case variants of one name, dates of different precision, patients without values.
        let families = ["Smith", "smith", "Zed", "Alpha", "mu", "Mu", "beta"];
        let ops: Vec<WriteOp> = (0..60)
            .map(|i: usize| {
                let mut p = serde_json::json!({"resourceType": "Patient", "id": format!("p{i:02}"), "gender": if i.is_multiple_of(3) { "male" } else { "female" }});
                if !i.is_multiple_of(5) {
                    p["name"] = serde_json::json!([{"family": families[i % 7]}, {"family": families[(i * 3) % 7]}]);
                }
                if !i.is_multiple_of(4) {
                    p["birthDate"] = serde_json::json!(match i % 3 { 0 => format!("19{:02}", i), 1 => format!("19{:02}-0{}", i % 50, 1 + i % 9), _ => format!("1970-01-{:02}", 1 + i % 28) });
                }
                WriteOp { action: Action::Update, rtype: "Patient".into(), id: format!("p{i:02}"), body: Some(p.to_string()), if_match: None, allow_create: true }
            })
            .collect();
        sm.apply(1, 1, &Command::V1(CommandV1::Writes { ts_micros: 1, ops }).encode()).unwrap();
        let exec = Executor { tree: &tree, rtype: "Patient" };
        for filter in ["", "gender=female"] {
            let params: Vec<(String, String)> = serde_urlencoded::from_str(filter).unwrap();
            let docs = exec.run(&parse(&reg, "Patient", &params, false).unwrap()).unwrap();
            for sort in ["family", "-family", "birthdate", "-birthdate", "gender", "-_id"] {
                let spec = sort::parse(&reg, "Patient", Some(sort)).unwrap();
                for count in [1, 7, 100] {
                    let (keyed_f, keyed_b) = all_pages(&tree, &docs, &spec, count, false);
                    let (walk_f, walk_b) = all_pages(&tree, &docs, &spec, count, true);
                    assert_eq!(keyed_f.len(), docs.len() as usize, "{filter} {sort} {count}: every match once");
                    assert_eq!(keyed_f, keyed_b, "{filter} {sort} {count}: keyed backward");
                    assert_eq!(walk_f, keyed_f, "{filter} {sort} {count}: walk forward");
                    assert_eq!(walk_b, keyed_f, "{filter} {sort} {count}: walk backward");
                }
                // A cursor past every match (its resource deleted): both give the same way back.
                let mut beyond = vec![2];
                beyond.extend_from_slice(&u32::MAX.to_be_bytes());
                beyond.extend_from_slice(b"Patient");
                let walked = walk_page(&tree, "Patient", &docs, &spec, &Cursor::After(beyond.clone()), 5).unwrap();
                let sorted = page(&tree, vec![("Patient", docs.clone())], std::slice::from_ref(&spec), Some(&format!("n:{}", hex::encode(&beyond))), 5, u64::MAX).unwrap();
                assert!(walked.items.is_empty() && sorted.items.is_empty());
                assert_eq!((walked.previous.as_ref(), walked.next.as_ref()), (sorted.previous.as_ref(), sorted.next.as_ref()), "{filter} {sort}: past the end");
                assert!(walked.previous.is_some());
            }
        }
    }
}
