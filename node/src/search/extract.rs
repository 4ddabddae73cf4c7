//! Turns the FHIRPath results of one search parameter on one resource into index values, per
//! parameter type (search.html#ptypes): tokens from codes, Codings, CodeableConcepts,
//! Identifiers, ContactPoints and booleans; strings from primitives, HumanName and Address;
//! dates as `[low, high)` microsecond ranges from date/dateTime/instant/Period/Timing;
//! numbers and quantities as exact decimals; references as type/id plus the literal reference;
//! uris; identifier types (`:of-type`), reference identifiers (`:identifier`) and positions
//! (`near`). Decimal values are taken from the JSON text, never through floating point.

use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

use super::decimal::Decimal;
use super::fhirpath::{reference_type, Item};
use super::params::ParamType;
use crate::fhir::meta::parse_fhir_range;

/// One indexed value of one parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// `system|code` (system `None` when the element has none).
    Token { system: Option<String>, code: String },
    /// Display / text of a token (for `:text`), normalized.
    TokenText(String),
    /// The exact string, and its normalized form (lowercase, accents removed).
    String { exact: String, normalized: String },
    /// Microseconds, half-open; `i64::MIN` / `i64::MAX` for open ends.
    Date { low: i64, high: i64 },
    Number(Decimal),
    Quantity { value: Decimal, system: Option<String>, code: Option<String>, unit: Option<String> },
    /// A reference: `Type` and `id` when the reference names them, and the literal text.
    Reference { rtype: Option<String>, id: Option<String>, literal: String },
    Uri(String),
    /// An Identifier with a type, for `:of-type` (`type system|type code|value`).
    IdentifierOfType { type_system: String, type_code: String, value: String },
    /// `Reference.identifier`, for `:identifier` on reference parameters.
    ReferenceIdentifier { system: Option<String>, value: String },
    /// A geographic position (Location.position), for the special parameter `near`.
    Position { latitude: Decimal, longitude: Decimal },
}

/// Lowercase, accents removed: what string search compares (search.html#string).
pub fn normalize(s: &str) -> String {
    s.nfd().filter(|c| !unicode_normalization::char::is_combining_mark(*c)).flat_map(char::to_lowercase).collect()
}

fn text(v: &Value, key: &str) -> Option<String> {
    v.get(key).and_then(Value::as_str).map(String::from)
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    match v.get(key) {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(String::from).collect(),
        _ => Vec::new(),
    }
}

fn string_value(s: &str) -> IndexValue {
    IndexValue::String { exact: s.to_string(), normalized: normalize(s) }
}

fn decimal(v: &Value) -> Option<Decimal> {
    match v {
        Value::Number(n) => Decimal::parse_saturating(&n.to_string()),
        Value::String(s) => Decimal::parse_saturating(s),
        _ => None,
    }
}

fn date_range(s: &str) -> Option<(i64, i64)> {
    parse_fhir_range(s)
}

const CONTACT_SYSTEMS: [&str; 7] = ["phone", "fax", "email", "pager", "url", "sms", "other"];

fn tokens(out: &mut Vec<IndexValue>, v: &Value, ty: Option<&str>) {
    match v {
        Value::String(s) => out.push(IndexValue::Token { system: None, code: s.clone() }),
        Value::Bool(b) => out.push(IndexValue::Token { system: None, code: b.to_string() }),
        Value::Number(n) => out.push(IndexValue::Token { system: None, code: n.to_string() }),
        Value::Object(o) => {
            if let Some(Value::Array(codings)) = o.get("coding") {
                for c in codings {
                    tokens(out, c, Some("Coding"));
                }
                if let Some(t) = text(v, "text") {
                    out.push(IndexValue::TokenText(normalize(&t)));
                }
                return;
            }
            if o.contains_key("code") {
                if let Some(code) = text(v, "code") {
                    out.push(IndexValue::Token { system: text(v, "system"), code });
                }
                if let Some(d) = text(v, "display") {
                    out.push(IndexValue::TokenText(normalize(&d)));
                }
            } else if let Some(value) = text(v, "value") {
                let system = text(v, "system");
                let contact = ty == Some("ContactPoint") || system.as_deref().is_some_and(|s| CONTACT_SYSTEMS.contains(&s));
                if !contact {
                    for c in v.get("type").and_then(|t| t.get("coding")).and_then(Value::as_array).into_iter().flatten() {
                        if let (Some(ts), Some(tc)) = (text(c, "system"), text(c, "code")) {
                            out.push(IndexValue::IdentifierOfType { type_system: ts, type_code: tc, value: value.clone() });
                        }
                    }
                }
                out.push(IndexValue::Token { system, code: value });
                if !contact {
                    if let Some(t) = v.get("type").and_then(|t| t.get("text")).and_then(Value::as_str) {
                        out.push(IndexValue::TokenText(normalize(t)));
                    }
                }
            } else if let Some(r) = text(v, "reference") {
                // A Reference searched as a token: its target id.
                out.push(IndexValue::Token { system: None, code: r });
            }
        }
        _ => {}
    }
}

fn string_values(out: &mut Vec<IndexValue>, v: &Value) {
    match v {
        Value::String(s) => out.push(string_value(s)),
        Value::Object(o) => {
            // HumanName, Address: their string parts; other types: their direct string fields.
            let keys: &[&str] = if o.contains_key("family") || o.contains_key("given") {
                &["family", "given", "prefix", "suffix", "text"]
            } else if o.contains_key("line") || o.contains_key("city") || o.contains_key("postalCode") || o.contains_key("country") {
                &["line", "city", "district", "state", "postalCode", "country", "text"]
            } else {
                &[]
            };
            if keys.is_empty() {
                for x in o.values() {
                    if let Value::String(s) = x {
                        out.push(string_value(s));
                    }
                }
            }
            for k in keys {
                for s in strings(v, k) {
                    out.push(string_value(&s));
                }
            }
        }
        _ => {}
    }
}

fn dates(out: &mut Vec<IndexValue>, v: &Value) {
    match v {
        Value::String(s) => {
            if let Some((low, high)) = date_range(s) {
                out.push(IndexValue::Date { low, high });
            }
        }
        Value::Object(o) if o.contains_key("start") || o.contains_key("end") => {
            let start = o.get("start").and_then(Value::as_str).and_then(date_range);
            let end = o.get("end").and_then(Value::as_str).and_then(date_range);
            let (low, high) = match (start, end) {
                // An end-first Period (invalid, stored as sent): from the end to the start.
                (Some(s), Some(e)) if s.0 >= e.1 => (e.0, s.1),
                (s, e) => (s.map(|r| r.0).unwrap_or(i64::MIN), e.map(|r| r.1).unwrap_or(i64::MAX)),
            };
            out.push(IndexValue::Date { low, high });
        }
        Value::Object(o) if o.contains_key("event") || o.contains_key("repeat") => {
            // Timing: from its earliest to its latest event, or its bounds.
            let events: Vec<(i64, i64)> = strings(v, "event").iter().filter_map(|s| date_range(s)).collect();
            if !events.is_empty() {
                let low = events.iter().map(|e| e.0).min().unwrap_or(i64::MIN);
                let high = events.iter().map(|e| e.1).max().unwrap_or(i64::MAX);
                out.push(IndexValue::Date { low, high });
            } else if let Some(b) = v.get("repeat").and_then(|r| r.get("boundsPeriod")) {
                dates(out, b);
            }
        }
        _ => {}
    }
}

fn quantities(out: &mut Vec<IndexValue>, v: &Value) {
    let Some(value) = v.get("value").and_then(decimal) else { return };
    if let Some(currency) = text(v, "currency") {
        // Money.
        out.push(IndexValue::Quantity { value, system: Some("urn:iso:std:iso:4217".into()), code: Some(currency), unit: None });
        return;
    }
    out.push(IndexValue::Quantity { value, system: text(v, "system"), code: text(v, "code"), unit: text(v, "unit") });
}

fn references(out: &mut Vec<IndexValue>, v: &Value) {
    match v {
        Value::Object(_) => {
            if let Some(r) = text(v, "reference") {
                let rtype = reference_type(&r).map(String::from);
                let id = rtype.as_ref().and_then(|_| {
                    let path = r.split(['?', '#']).next().unwrap_or(&r);
                    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
                    let n = segs.len();
                    let id = if n >= 4 && segs[n - 2] == "_history" { segs[n - 3] } else { segs[n - 1] };
                    Some(id.to_string())
                });
                out.push(IndexValue::Reference { rtype, id, literal: r });
            }
            if let Some(ident) = v.get("identifier") {
                if let Some(value) = text(ident, "value") {
                    out.push(IndexValue::ReferenceIdentifier { system: text(ident, "system"), value });
                }
            }
        }
        // canonical / uri references
        Value::String(s) => out.push(IndexValue::Reference { rtype: None, id: None, literal: s.clone() }),
        _ => {}
    }
}

/// Index values of one parameter from its expression's results.
pub fn extract(kind: ParamType, items: &[Item]) -> Vec<IndexValue> {
    let mut out = Vec::new();
    for item in items {
        match item {
            Item::Node { value, ty } => {
                let v: &Value = value;
                match kind {
                    ParamType::Token => tokens(&mut out, v, ty.as_deref()),
                    ParamType::String => string_values(&mut out, v),
                    ParamType::Date => dates(&mut out, v),
                    ParamType::Number => {
                        if let Some(d) = decimal(v) {
                            out.push(IndexValue::Number(d));
                        }
                    }
                    ParamType::Quantity => quantities(&mut out, v),
                    ParamType::Reference => references(&mut out, v),
                    ParamType::Uri => {
                        if let Some(s) = v.as_str() {
                            out.push(IndexValue::Uri(s.to_string()));
                        }
                    }
                    // `near` (Location.position): the only special parameter with an expression.
                    ParamType::Special => {
                        if let (Some(latitude), Some(longitude)) = (v.get("latitude").and_then(decimal), v.get("longitude").and_then(decimal)) {
                            out.push(IndexValue::Position { latitude, longitude });
                        }
                    }
                    ParamType::Composite => {}
                }
            }
            Item::Bool(b) if kind == ParamType::Token => out.push(IndexValue::Token { system: None, code: b.to_string() }),
            _ => {}
        }
    }
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::fhirpath::{compile, eval_resource};
    use serde_json::json;

    fn run(kind: ParamType, expr: &str, r: &Value) -> Vec<IndexValue> {
        extract(kind, &eval_resource(&compile(expr).unwrap(), r))
    }

    #[test]
    fn tokens_strings_dates_quantities_references() {
        let obs = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "15074-8", "display": "Glucose"}], "text": "Blood Glucose"},
            "subject": {"reference": "Patient/p1"}, "effectivePeriod": {"start": "2013-04-02T09:30:10+01:00"},
            "valueQuantity": {"value": 6.3, "unit": "mmol/l", "system": "http://unitsofmeasure.org", "code": "mmol/L"}});
        let t = run(ParamType::Token, "Observation.code", &obs);
        assert!(t.contains(&IndexValue::Token { system: Some("http://loinc.org".into()), code: "15074-8".into() }));
        assert!(t.contains(&IndexValue::TokenText("blood glucose".into())) && t.contains(&IndexValue::TokenText("glucose".into())));
        let q = run(ParamType::Quantity, "(Observation.value as Quantity)", &obs);
        assert_eq!(q, vec![IndexValue::Quantity { value: Decimal::parse("6.3").unwrap(), system: Some("http://unitsofmeasure.org".into()), code: Some("mmol/L".into()), unit: Some("mmol/l".into()) }]);
        let d = run(ParamType::Date, "Observation.effective", &obs);
        assert!(matches!(d[..], [IndexValue::Date { high: i64::MAX, .. }]), "open-ended period: {d:?}");
        let r = run(ParamType::Reference, "Observation.subject", &obs);
        assert_eq!(r, vec![IndexValue::Reference { rtype: Some("Patient".into()), id: Some("p1".into()), literal: "Patient/p1".into() }]);
        let p = json!({"resourceType": "Patient", "name": [{"family": "Chalmérs", "given": ["Peter", "James"]}], "birthDate": "1944-11-17",
            "telecom": [{"system": "phone", "value": "(03) 5555 6473"}], "active": true});
        let s = run(ParamType::String, "Patient.name", &p);
        assert!(s.contains(&IndexValue::String { exact: "Chalmérs".into(), normalized: "chalmers".into() }));
        assert_eq!(s.len(), 3);
        let b = run(ParamType::Date, "Patient.birthDate", &p);
        assert!(matches!(b[..], [IndexValue::Date { low, high }] if low < 0 && high - low == 86_400_000_000), "{b:?}");
        assert_eq!(run(ParamType::Token, "Patient.active", &p), vec![IndexValue::Token { system: None, code: "true".into() }]);
        assert_eq!(run(ParamType::Token, "Patient.telecom.where(system='phone')", &p), vec![IndexValue::Token { system: Some("phone".into()), code: "(03) 5555 6473".into() }]);
    }
}
