//! Property test: random resources and random queries, the index engine (`kiln::search`) against
//! a deliberately simple reference evaluator written here from search.html. The reference walks
//! each resource's JSON with a hand-written element table (no FHIRPath, no index code) and applies
//! the spec's matching rules directly: string = case- and accent-insensitive starts-with, `:exact`;
//! token `code`, `system|code`, `|code`, `system|`; date prefixes over the implicit range of each
//! value's precision (Periods as ranges); quantity prefixes with the implicit range of the search
//! value's digits, exact decimals; reference `Type/id` and bare id. Both must return the same ids;
//! date criteria include lower + upper bound pairs on one parameter, and Goals with several due
//! dates; with a random `_sort` and page size, the pages (followed by their `next` links, then back by
//! their `previous` links) must list them in the reference's order: lowest value ascending,
//! highest descending, resources without a value last, ties in creation order.

use std::collections::BTreeSet;
use std::sync::Arc;

use kiln::fhir::FhirVersion;
use kiln::search::page;
use kiln::search::params::Registry;
use kiln::search::query::{parse, Executor};
use kiln::search::sort;
use kiln::machine::command::{Action, Command, CommandV1, WriteOp};
use kiln::machine::StateMachine;
use serde_json::{json, Value};
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }
}

const FAMILIES: [&str; 6] = ["Chalmers", "Chalmérs", "CHAN", "Smith", "Smithson", "Öberg"];
const SYSTEMS: [&str; 2] = ["http://loinc.org", "urn:oid:1.2.3"];
const CODES: [&str; 3] = ["1234-5", "8867-4", "x"];

fn date_text(r: &mut Rng) -> String {
    let (y, m, d, h) = (2000 + r.below(3), 1 + r.below(12), 1 + r.below(28), r.below(24));
    match r.below(4) {
        0 => format!("{y}"),
        1 => format!("{y}-{m:02}"),
        2 => format!("{y}-{m:02}-{d:02}"),
        _ => format!("{y}-{m:02}-{d:02}T{h:02}:30:00Z"),
    }
}

fn decimal_text(r: &mut Rng) -> String {
    let whole = r.below(20);
    match r.below(3) {
        0 => format!("{whole}"),
        1 => format!("{whole}.{}", r.below(10)),
        _ => format!("{whole}.{:02}", r.below(100)),
    }
}

fn resources(r: &mut Rng) -> Vec<Value> {
    let mut out = Vec::new();
    for i in 0..12 {
        let mut p = json!({"resourceType": "Patient", "id": format!("p{i}"), "name": [{"family": r.pick(&FAMILIES)}]});
        if r.below(3) > 0 {
            p["birthDate"] = json!(date_text(r).chars().take(10).collect::<String>());
        }
        if r.below(2) == 0 {
            p["identifier"] = json!([{"system": r.pick(&SYSTEMS), "value": r.pick(&CODES)}, {"value": r.pick(&CODES)}]);
        }
        out.push(p);
    }
    for i in 0..18 {
        let mut o = json!({"resourceType": "Observation", "id": format!("o{i}"), "status": "final",
            "code": {"coding": [{"system": r.pick(&SYSTEMS), "code": r.pick(&CODES)}]},
            "subject": {"reference": format!("Patient/p{}", r.below(12))}});
        if r.below(3) > 0 {
            o["valueQuantity"] = json!({"value": serde_json::from_str::<Value>(&decimal_text(r)).unwrap(), "system": "http://unitsofmeasure.org", "code": "mg"});
        }
        match r.below(3) {
            0 => o["effectiveDateTime"] = json!(date_text(r)),
            1 => o["effectivePeriod"] = json!({"start": date_text(r)}),
            _ => {
                let (a, b) = (date_text(r), date_text(r));
                let (s, e) = if a <= b { (a, b) } else { (b, a) };
                o["effectivePeriod"] = json!({"start": s, "end": e});
            }
        }
        out.push(o);
    }
    // Goals: zero to three targets, each with a due date: a date parameter with several values.
    for i in 0..10 {
        let targets: Vec<Value> = (0..r.below(4)).map(|_| json!({"dueDate": date_text(r).chars().take(10).collect::<String>()})).collect();
        let mut g = json!({"resourceType": "Goal", "id": format!("g{i}"), "lifecycleStatus": "active", "description": {"text": "x"}, "subject": {"reference": "Patient/p0"}});
        if !targets.is_empty() {
            g["target"] = json!(targets);
        }
        out.push(g);
    }
    out
}

// ---- the reference evaluator ------------------------------------------------------------------

/// What a resource sorts by.
enum SortValue {
    Text(String),
    Range(i128, i128),
    Number((i128, u32)),
}

/// The value a resource sorts by: its lowest ascending, its highest descending.
fn sort_value(res: &Value, code: &str, desc: bool) -> Option<SortValue> {
    let s = |v: &Value| v.as_str().map(String::from);
    match code {
        "target-date" => {
            let ranges = res["target"].as_array().into_iter().flatten().filter_map(|t| t["dueDate"].as_str()).map(range);
            let pick = if desc { ranges.max() } else { ranges.min() };
            pick.map(|(lo, hi)| SortValue::Range(lo, hi))
        }
        "family" => s(&res["name"][0]["family"]).map(|f| SortValue::Text(fold(&f))),
        "_id" => s(&res["id"]).map(SortValue::Text),
        "birthdate" => s(&res["birthDate"]).map(|d| {
            let (lo, hi) = range(&d);
            SortValue::Range(lo, hi)
        }),
        "date" => {
            if let Some(d) = s(&res["effectiveDateTime"]) {
                let (lo, hi) = range(&d);
                Some(SortValue::Range(lo, hi))
            } else {
                let p = res.get("effectivePeriod")?;
                let lo = p.get("start").and_then(|x| x.as_str()).map(|x| range(x).0).unwrap_or(i128::MIN);
                let hi = p.get("end").and_then(|x| x.as_str()).map(|x| range(x).1).unwrap_or(i128::MAX);
                Some(SortValue::Range(lo, hi))
            }
        }
        "value-quantity" => res.get("valueQuantity").map(|q| SortValue::Number(dec(&q["value"].to_string()))),
        other => unreachable!("{other}"),
    }
}

fn cmp_sort(a: &SortValue, b: &SortValue) -> std::cmp::Ordering {
    match (a, b) {
        (SortValue::Text(x), SortValue::Text(y)) => x.cmp(y),
        (SortValue::Range(a1, a2), SortValue::Range(b1, b2)) => (a1, a2).cmp(&(b1, b2)),
        (SortValue::Number(x), SortValue::Number(y)) => cmp_dec(*x, *y),
        _ => unreachable!("one parameter, one kind of value"),
    }
}

fn fold(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'é' | 'É' => 'e',
            'ö' | 'Ö' => 'o',
            other => other,
        })
        .flat_map(char::to_lowercase)
        .collect()
}

/// `[low, high)` in microseconds of a date / dateTime (UTC assumed).
fn range(text: &str) -> (i128, i128) {
    let us = |d: PrimitiveDateTime| d.assume_utc().unix_timestamp_nanos() / 1000;
    let p: Vec<&str> = text.split(['-', 'T', ':', 'Z']).filter(|s| !s.is_empty()).collect();
    let n: Vec<i32> = p.iter().map(|s| s.parse().unwrap()).collect();
    let day = |y: i32, m: i32, d: i32| PrimitiveDateTime::new(Date::from_calendar_date(y, Month::try_from(m as u8).unwrap(), d as u8).unwrap(), Time::MIDNIGHT);
    match n.len() {
        1 => (us(day(n[0], 1, 1)), us(day(n[0] + 1, 1, 1))),
        2 => (us(day(n[0], n[1], 1)), if n[1] == 12 { us(day(n[0] + 1, 1, 1)) } else { us(day(n[0], n[1] + 1, 1)) }),
        3 => (us(day(n[0], n[1], n[2])), us(day(n[0], n[1], n[2])) + 86_400_000_000),
        _ => {
            let t = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap();
            let lo = t.unix_timestamp_nanos() / 1000;
            (lo, lo + 1_000_000)
        }
    }
}

/// Exact decimal as (mantissa, scale).
fn dec(text: &str) -> (i128, u32) {
    let (i, f) = text.split_once('.').unwrap_or((text, ""));
    (format!("{i}{f}").parse().unwrap(), f.len() as u32)
}

fn cmp_dec(a: (i128, u32), b: (i128, u32)) -> std::cmp::Ordering {
    let s = a.1.max(b.1);
    (a.0 * 10i128.pow(s - a.1)).cmp(&(b.0 * 10i128.pow(s - b.1)))
}

fn prefix(v: &str) -> (&str, &str) {
    match v.get(..2) {
        Some(p @ ("eq" | "ne" | "gt" | "lt" | "ge" | "le" | "sa" | "eb")) => (p, &v[2..]),
        _ => ("eq", v),
    }
}

fn date_matches(target: (i128, i128), v: &str) -> bool {
    let (p, text) = prefix(v);
    let (lo, hi) = range(text);
    let (tlo, thi) = target;
    let eq = tlo >= lo && thi <= hi;
    match p {
        "eq" => eq,
        "ne" => !eq,
        "gt" => thi > hi,
        "lt" => tlo < lo,
        "ge" => thi > hi || eq,
        "le" => tlo < lo || eq,
        "sa" => tlo >= hi,
        _ => thi <= lo,
    }
}

fn matches(res: &Value, param: &str, value: &str) -> bool {
    let s = |v: &Value| v.as_str().unwrap_or("").to_string();
    match param {
        "family" => res["name"].as_array().into_iter().flatten().any(|n| fold(&s(&n["family"])).starts_with(&fold(value))),
        "family:exact" => res["name"].as_array().into_iter().flatten().any(|n| s(&n["family"]) == value),
        "identifier" | "code" => {
            let codings: Vec<(Option<String>, String)> = if param == "identifier" {
                res["identifier"].as_array().into_iter().flatten().map(|i| (i.get("system").map(s), s(&i["value"]))).collect()
            } else {
                res["code"]["coding"].as_array().into_iter().flatten().map(|c| (c.get("system").map(s), s(&c["code"]))).collect()
            };
            codings.iter().any(|(sys, code)| match value.split_once('|') {
                None => code == value,
                Some(("", c)) => sys.is_none() && code == c,
                Some((sy, "")) => sys.as_deref() == Some(sy),
                Some((sy, c)) => sys.as_deref() == Some(sy) && code == c,
            })
        }
        "birthdate" => res.get("birthDate").is_some_and(|d| date_matches(range(&s(d)), value)),
        "date" => {
            if let Some(d) = res.get("effectiveDateTime") {
                date_matches(range(&s(d)), value)
            } else if let Some(p) = res.get("effectivePeriod") {
                let lo = p.get("start").map(|x| range(&s(x)).0).unwrap_or(i128::MIN);
                let hi = p.get("end").map(|x| range(&s(x)).1).unwrap_or(i128::MAX);
                date_matches((lo, hi), value)
            } else {
                false
            }
        }
        "value-quantity" => {
            let Some(q) = res.get("valueQuantity") else { return false };
            let t = dec(&q["value"].to_string());
            let (p, text) = prefix(value);
            let v = dec(text);
            let half_lo = (v.0 * 10 - 5, v.1 + 1);
            let half_hi = (v.0 * 10 + 5, v.1 + 1);
            use std::cmp::Ordering::*;
            let in_range = cmp_dec(t, half_lo) != Less && cmp_dec(t, half_hi) == Less;
            match p {
                "eq" => in_range,
                "ne" => !in_range,
                "gt" | "sa" => cmp_dec(t, v) == Greater,
                "lt" | "eb" => cmp_dec(t, v) == Less,
                "ge" => cmp_dec(t, v) != Less,
                _ => cmp_dec(t, v) != Greater,
            }
        }
        "subject" => {
            let r = s(&res["subject"]["reference"]);
            r == value || r.rsplit('/').next() == Some(value)
        }
        "target-date" => res["target"].as_array().into_iter().flatten().any(|t| t.get("dueDate").is_some_and(|d| date_matches(range(&s(d)), value))),
        _ => unreachable!("{param}"),
    }
}

/// A lower and an upper bound on one date parameter (`ge…&lt…`): the engine answers such pairs
/// with one bounded scan.
fn random_range(r: &mut Rng) -> (&'static str, Vec<(String, String)>) {
    let (rtype, param, day_only) = match r.below(3) {
        0 => ("Patient", "birthdate", true),
        1 => ("Observation", "date", false),
        _ => ("Goal", "target-date", true),
    };
    let value = |r: &mut Rng, prefixes: &[&str]| {
        let d = date_text(r);
        format!("{}{}", r.pick(prefixes), if day_only { d.chars().take(10).collect::<String>() } else { d })
    };
    let lower = value(r, &["ge", "gt", "sa"]);
    let upper = value(r, &["le", "lt", "eb"]);
    (rtype, vec![(param.to_string(), lower), (param.to_string(), upper)])
}

fn random_query(r: &mut Rng) -> (&'static str, &'static str, String) {
    let prefixes = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"];
    if r.below(9) == 0 {
        return ("Goal", "target-date", format!("{}{}", r.pick(&prefixes), date_text(r).chars().take(10).collect::<String>()));
    }
    match r.below(8) {
        0 => {
            let f = r.pick(&FAMILIES);
            let n = 1 + r.below(f.chars().count() as u64) as usize;
            let cut: String = f.chars().take(n).collect();
            ("Patient", "family", if r.below(2) == 0 { cut.to_uppercase() } else { cut })
        }
        1 => ("Patient", "family:exact", r.pick(&FAMILIES).to_string()),
        2 => {
            let (sys, code) = (r.pick(&SYSTEMS), r.pick(&CODES));
            ("Patient", "identifier", match r.below(4) { 0 => code.to_string(), 1 => format!("{sys}|{code}"), 2 => format!("|{code}"), _ => format!("{sys}|") })
        }
        3 => {
            let (sys, code) = (r.pick(&SYSTEMS), r.pick(&CODES));
            ("Observation", "code", if r.below(2) == 0 { code.to_string() } else { format!("{sys}|{code}") })
        }
        4 => ("Patient", "birthdate", format!("{}{}", r.pick(&prefixes), date_text(r).chars().take(10).collect::<String>())),
        5 => ("Observation", "date", format!("{}{}", r.pick(&prefixes), date_text(r))),
        6 => ("Observation", "value-quantity", format!("{}{}", r.pick(&prefixes), decimal_text(r))),
        _ => {
            let p = r.below(12);
            ("Observation", "subject", if r.below(2) == 0 { format!("Patient/p{p}") } else { format!("p{p}") })
        }
    }
}

#[test]
fn index_engine_agrees_with_the_reference_evaluator() {
    let reg = Arc::new(Registry::load(FhirVersion::R4));
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut compared = 0;
    for round in 0..25 {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("state").unwrap();
        let mut sm = StateMachine::open(tree.clone()).unwrap().with_search(reg.clone());
        let data = resources(&mut rng);
        let ops = data
            .iter()
            .map(|v| WriteOp { action: Action::Update, rtype: v["resourceType"].as_str().unwrap().into(), id: v["id"].as_str().unwrap().into(), body: Some(v.to_string()), if_match: None, allow_create: true })
            .collect();
        sm.apply(1, 1, &Command::V1(CommandV1::Writes { ts_micros: 1, ops }).encode()).unwrap();
        for _ in 0..40 {
            // One to two criteria, AND-ed, on the same type.
            let (rtype, mut criteria) = if rng.below(4) == 0 {
                random_range(&mut rng)
            } else {
                let (rtype, param, value) = random_query(&mut rng);
                (rtype, vec![(param.to_string(), value)])
            };
            if rng.below(3) == 0 {
                let (t2, p2, v2) = random_query(&mut rng);
                if t2 == rtype {
                    criteria.push((p2.to_string(), v2));
                }
            }
            let want: BTreeSet<String> = data
                .iter()
                .filter(|r| r["resourceType"] == rtype)
                .filter(|r| criteria.iter().all(|(p, v)| matches(r, p, v)))
                .map(|r| r["id"].as_str().unwrap().to_string())
                .collect();
            let q = parse(&reg, rtype, &criteria, false).unwrap();
            let exec = Executor { tree: &kiln::store::space::Space::root(tree.clone()), rtype };
            let docs = exec.run(&q).unwrap();
            let got: BTreeSet<String> = exec.ids(&docs).unwrap().into_iter().collect();
            assert_eq!(got, want, "round {round}: {rtype}?{criteria:?}");
            compared += 1;
            // Sorted and paged.
            let sorts: &[&str] = match rtype {
                "Patient" => &["family", "-family", "birthdate", "-birthdate", "_id", "-_id"],
                "Observation" => &["date", "-date", "value-quantity", "-value-quantity", "_id"],
                _ => &["target-date", "-target-date", "_id"],
            };
            let sort_by = *rng.pick(sorts);
            let count = 1 + rng.below(5) as usize;
            let (code, desc) = match sort_by.strip_prefix('-') {
                Some(c) => (c, true),
                None => (sort_by, false),
            };
            let mut order: Vec<&Value> = data.iter().filter(|r| r["resourceType"] == rtype && want.contains(r["id"].as_str().unwrap())).collect();
            order.sort_by(|a, b| match (sort_value(a, code, desc), sort_value(b, code, desc)) {
                (Some(x), Some(y)) if desc => cmp_sort(&y, &x),
                (Some(x), Some(y)) => cmp_sort(&x, &y),
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (None, None) => std::cmp::Ordering::Equal,
            });
            let want_order: Vec<String> = order.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
            let spec = sort::parse(&reg, rtype, Some(sort_by)).unwrap();
            let get = |cursor: Option<String>| page::page(&kiln::store::space::Space::root(tree.clone()), vec![(rtype, docs.clone())], std::slice::from_ref(&spec), cursor.as_deref(), count, u64::MAX).unwrap();
            let ids_of = |p: &page::Page| p.items.iter().map(|(_, d)| exec.id(*d).unwrap()).collect::<Vec<_>>();
            let (mut forward, mut pages) = (Vec::new(), get(None));
            loop {
                assert!(pages.items.len() <= count);
                forward.extend(ids_of(&pages));
                match &pages.next {
                    Some(edge) => pages = get(Some(format!("n:{}", hex::encode(edge)))),
                    None => break,
                }
            }
            assert_eq!(forward, want_order, "round {round}: {rtype}?{criteria:?}&_sort={sort_by}&_count={count}, forward");
            let mut backward = Vec::new();
            loop {
                backward.splice(0..0, ids_of(&pages));
                match &pages.previous {
                    Some(edge) => pages = get(Some(format!("p:{}", hex::encode(edge)))),
                    None => break,
                }
            }
            assert_eq!(backward, want_order, "round {round}: {rtype}?{criteria:?}&_sort={sort_by}&_count={count}, backward");
        }
    }
    eprintln!("{compared} random queries: index engine == reference evaluator");
}
