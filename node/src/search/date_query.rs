//! Date criteria on the index. A value is a range `[low, high)` (its precision, a Period, a
//! Timing), stored twice ([`super::index`]): `d` low, high — ordered by the low end — and `k`
//! span class, low, high — within a class the low end is at most the class's span below the high
//! end, so "ends after X" is a scan from `X − span` per class instead of from the beginning.
//!
//! - One criterion reads only the key range that can hold its matches (and still tests every
//!   row it reads): `eq`, `le`, `lt`, `eb`, `sa` on `d`; `gt`, `ge`, `ap` on `k`; `ne` reads all.
//! - A lower bound and an upper bound on one parameter (`date=ge2020-01&date=lt2020-02`) are one
//!   scan per class bounded on both sides, keeping the rows that satisfy both. That is exact for
//!   resources with one value of the parameter; resources with several (listed in the
//!   parameter's `M` row) are checked value by value from their own rows.

use crate::store::space::Space;
use super::index::{i64_from_key, i64_key, kind_prefix, multi_date_row, param_rows, DATE_SPANS};
use super::posting;
use super::query::{split_prefix, Executor, Ids, Prefix, SearchError};
use crate::fhir::meta::{now_micros, parse_fhir_range};

/// Most resources with several values of a parameter checked one by one for a range pair; past
/// it the two bounds are searched separately (the same answer, more rows read).
const MAX_MULTI_CHECKED: u64 = 10_000;

/// One date search value: prefix and range (`ap` widened by 10% of its distance from now).
#[derive(Debug, Clone, Copy)]
pub struct DateTest {
    pub prefix: Prefix,
    lo: i64,
    hi: i64,
    alo: i64,
    ahi: i64,
}

impl DateTest {
    pub fn parse(code: &str, v: &str) -> Result<DateTest, SearchError> {
        let (prefix, text) = split_prefix(v);
        let (lo, hi) = parse_fhir_range(text)
            .ok_or_else(|| SearchError::BadValue { param: code.into(), reason: format!("'{text}' is not a FHIR date, dateTime or instant") })?;
        let (alo, ahi) = if prefix == Prefix::Ap {
            // Approximately: the value widened by 10% of its distance from now (at least a day).
            let now = now_micros() as i64;
            let w = ((now - lo).abs() / 10).max(86_400_000_000);
            (lo.saturating_sub(w), hi.saturating_add(w))
        } else {
            (lo, hi)
        };
        Ok(DateTest { prefix, lo, hi, alo, ahi })
    }

    /// Whether a stored range `[tlo, thi)` matches.
    pub fn matches(&self, tlo: i64, thi: i64) -> bool {
        let DateTest { prefix, lo, hi, alo, ahi } = *self;
        let eq = tlo >= lo && thi <= hi;
        match prefix {
            Prefix::Eq => eq,
            Prefix::Ne => !eq,
            Prefix::Gt => thi > hi,
            Prefix::Lt => tlo < lo,
            Prefix::Ge => thi > hi || eq,
            Prefix::Le => tlo < lo || eq,
            Prefix::Sa => tlo >= hi,
            Prefix::Eb => thi <= lo,
            Prefix::Ap => tlo < ahi && thi > alo,
        }
    }

    /// For a lower-bound prefix: the least low end a match can have in a class of `span`
    /// (`None`: unbounded). `None` as well for prefixes that are not lower bounds.
    fn least_low(&self, span: Option<i64>) -> Option<i64> {
        match (self.prefix, span) {
            (Prefix::Sa, _) => Some(self.hi),
            // thi > hi, or inside [lo, hi]: thi >= lo, and tlo >= thi - span.
            (Prefix::Ge, Some(s)) => Some(self.lo.saturating_sub(s)),
            (Prefix::Gt, Some(s)) => Some(self.hi.saturating_sub(s).saturating_add(1)),
            (Prefix::Ap, Some(s)) => Some(self.alo.saturating_sub(s).saturating_add(1)),
            _ => None,
        }
    }

    /// For an upper-bound prefix: the low end every match is below (exclusive).
    fn low_end_below(&self) -> Option<i64> {
        match self.prefix {
            Prefix::Lt => Some(self.lo),
            Prefix::Le | Prefix::Eq => Some(self.hi.saturating_add(1)),
            Prefix::Eb => Some(self.lo.saturating_add(1)),
            Prefix::Ap => Some(self.ahi),
            _ => None,
        }
    }

    fn is_lower_bound(&self) -> bool {
        matches!(self.prefix, Prefix::Ge | Prefix::Gt | Prefix::Sa)
    }

    fn is_upper_bound(&self) -> bool {
        matches!(self.prefix, Prefix::Le | Prefix::Lt | Prefix::Eb)
    }
}

fn range_of(rest: &[u8]) -> Option<(i64, i64)> {
    Some((i64_from_key(rest)?, i64_from_key(rest.get(8..)?)?))
}

/// The rows of `base` that can match `tests` (all must hold on one row), into `out`.
fn scan_all(tree: &Space, base: &[u8], tests: &[DateTest], out: &mut Ids) -> Result<(), SearchError> {
    let keep = |rest: &[u8]| range_of(rest).is_some_and(|(tlo, thi)| tests.iter().all(|t| t.matches(tlo, thi)));
    let below = tests.iter().filter_map(DateTest::low_end_below).min();
    let by_class = tests.iter().any(|t| matches!(t.prefix, Prefix::Ge | Prefix::Gt | Prefix::Ap));
    if by_class {
        for class in 0..=DATE_SPANS.len() {
            let span = DATE_SPANS.get(class).copied();
            let from = tests.iter().filter_map(|t| t.least_low(span)).max();
            let mut prefix = kind_prefix(base, b'k');
            prefix.push(class as u8);
            posting::scan_range(tree, &prefix, from.map(i64_key), below.map(i64_key), keep, out)?;
        }
    } else {
        let from = tests.iter().filter_map(|t| match t.prefix {
            Prefix::Eq => Some(t.lo),
            Prefix::Sa => Some(t.hi),
            _ => None,
        });
        posting::scan_range(tree, &kind_prefix(base, b'd'), from.max().map(i64_key), below.map(i64_key), keep, out)?;
    }
    Ok(())
}

/// One criterion value under `base`.
pub fn scan(tree: &Space, base: &[u8], test: &DateTest, out: &mut Ids) -> Result<(), SearchError> {
    scan_all(tree, base, std::slice::from_ref(test), out)
}

/// The resources matching both a lower bound `l` and an upper bound `u` on date parameter
/// `code` (each a single value), or `None` when they are not such a pair or too many resources
/// have several values (then the criteria are searched one by one).
pub fn range_pair(ex: &Executor, code: &str, l: &DateTest, u: &DateTest) -> Result<Option<Ids>, SearchError> {
    if !(l.is_lower_bound() && u.is_upper_bound()) {
        return Ok(None);
    }
    let mut multi = Ids::new();
    posting::scan(ex.tree, &multi_date_row(ex.rtype, code), &mut multi)?;
    if multi.len() > MAX_MULTI_CHECKED {
        return Ok(None);
    }
    let mut out = Ids::new();
    scan_all(ex.tree, &param_rows(ex.rtype, code), &[*l, *u], &mut out)?;
    // Several values: the bounds may hold on different values of the same resource.
    let prefix = kind_prefix(&param_rows(ex.rtype, code), b'd');
    for doc in &multi {
        if out.contains(doc) {
            continue;
        }
        let ranges: Vec<(i64, i64)> = super::query::rows_under(ex.tree, ex.rtype, &ex.id(doc)?, &prefix)?.iter().filter_map(|r| range_of(r)).collect();
        if ranges.iter().any(|(a, b)| l.matches(*a, *b)) && ranges.iter().any(|(a, b)| u.matches(*a, *b)) {
            out.insert(doc);
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::index::date_class;

    #[test]
    fn span_classes_and_bounds() {
        assert_eq!(date_class(0, 1), 0);
        assert_eq!(date_class(0, 86_400_000_000), 1);
        assert_eq!(date_class(0, 31 * 86_400_000_000), 2);
        assert_eq!(date_class(i64::MIN, 0), 5);
        assert_eq!(date_class(0, i64::MAX), 5);
        let ge = DateTest::parse("date", "ge2020-01-01").unwrap();
        assert_eq!(ge.least_low(None), None, "open-ended ranges: no lower bound");
        assert!(ge.least_low(Some(DATE_SPANS[1])).unwrap() < ge.lo);
        let far = DateTest::parse("date", "gt9999").unwrap();
        assert!(far.least_low(Some(DATE_SPANS[4])).is_some(), "no overflow near the end of time");
    }

    /// Every row's own test, on every row: what the bounded scans must equal.
    fn full_scan(tree: &Space, base: &[u8], tests: &[DateTest]) -> Ids {
        let mut out = Ids::new();
        let keep = |rest: &[u8]| range_of(rest).is_some_and(|(a, b)| tests.iter().all(|t| t.matches(a, b)));
        posting::scan_filter(tree, &kind_prefix(base, b'd'), keep, &mut out).unwrap();
        out
    }

    #[test]
    fn bounded_scans_find_what_a_full_scan_finds_at_every_boundary() {
        use crate::fhir::meta::format_instant;
        let mut ix = crate::machine::testing::indexed();
        // Ranges of every span class starting around a pivot, and open-ended ones.
        let pivot = parse_fhir_range("2020-06-15").unwrap().0 as u64;
        let (sec, day) = (1_000_000u64, 86_400_000_000u64);
        let offsets = [0, sec, day - sec, day, 2 * day, 40 * day, 400 * day, 4_000 * day];
        let spans = [sec, day - sec, day, 31 * day, 366 * day, 3_000 * day, 5_000 * day];
        let mut obs = Vec::new();
        for (i, off) in offsets.iter().enumerate() {
            for (j, span) in spans.iter().enumerate() {
                for (k, low) in [pivot - off, pivot + off].into_iter().enumerate() {
                    let id = format!("o{i}-{j}-{k}");
                    let period = match j % 3 {
                        0 => serde_json::json!({"start": format_instant(low)}),
                        1 => serde_json::json!({"end": format_instant(low + span)}),
                        _ => serde_json::json!({"start": format_instant(low), "end": format_instant(low + span)}),
                    };
                    obs.push(serde_json::json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "x"}, "effectivePeriod": period}));
                    obs.push(serde_json::json!({"resourceType": "Observation", "id": format!("{id}-closed"), "status": "final", "code": {"text": "x"},
                        "effectivePeriod": {"start": format_instant(low), "end": format_instant(low + span)}}));
                }
            }
        }
        crate::machine::testing::put_all(&mut ix.sm, 1, &obs);
        let base = param_rows("Observation", "date");
        let ex = Executor { tree: &ix.tree, rtype: "Observation" };
        let values = ["2020-06-15", "2020-06", "2020", "2020-06-14T23:59:59Z", "2020-06-16", "2009", "2031-01-01"];
        let prefixes = ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"];
        let tests: Vec<DateTest> = values.iter().flat_map(|v| prefixes.iter().map(move |p| DateTest::parse("date", &format!("{p}{v}")).unwrap())).collect();
        let mut checked = 0;
        for t in &tests {
            let mut got = Ids::new();
            scan(&ix.tree, &base, t, &mut got).unwrap();
            let want = full_scan(&ix.tree, &base, std::slice::from_ref(t));
            assert_eq!(got, want, "{t:?}");
            checked += usize::from(!want.is_empty());
        }
        for l in tests.iter().filter(|t| t.is_lower_bound()) {
            for u in tests.iter().filter(|t| t.is_upper_bound()) {
                let got = range_pair(&ex, "date", l, u).unwrap().expect("a pair");
                assert_eq!(got, full_scan(&ix.tree, &base, &[*l]) & full_scan(&ix.tree, &base, &[*u]), "{l:?} {u:?}");
            }
        }
        assert!(checked > 40, "most tests match something ({checked})");
    }
}
