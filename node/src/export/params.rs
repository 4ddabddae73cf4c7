//! The kick-off parameters of `$export` (Bulk Data Access IG 2.0), from the query string of a
//! GET or the `Parameters` body of a POST, checked before anything is proposed.

use serde_json::Value;

use super::ExportError;
use crate::fhir::Definitions;
use crate::search::params::Registry;

/// The parameters of one kick-off, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KickOff {
    pub since: Option<u64>,
    /// `_type`, in the order given, each once (`None`: not given).
    pub types: Option<Vec<String>>,
    pub type_filters: Vec<(String, Vec<(String, String)>)>,
    pub elements: Vec<(Option<String>, String)>,
    pub patients: Vec<String>,
    /// Parameters ignored under lenient handling.
    pub ignored: Vec<String>,
}

/// The `_outputFormat` values meaning NDJSON.
pub const NDJSON_FORMATS: [&str; 3] = ["application/fhir+ndjson", "application/ndjson", "ndjson"];

fn bad(name: &str, reason: impl Into<String>) -> ExportError {
    ExportError::BadParameter { name: name.to_string(), reason: reason.into() }
}

/// A `Parameters` body as (name, value) pairs: `valueX` primitives as text, `valueReference`
/// as its reference.
pub fn from_parameters(body: &Value) -> Result<Vec<(String, String)>, ExportError> {
    if body.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(bad("body", "a POST kick-off carries a Parameters resource"));
    }
    let mut out = Vec::new();
    for p in body.get("parameter").and_then(Value::as_array).into_iter().flatten() {
        let name = p.get("name").and_then(Value::as_str).ok_or_else(|| bad("parameter.name", "missing"))?;
        let obj = p.as_object().ok_or_else(|| bad(name, "not an object"))?;
        let value = obj.iter().find(|(k, _)| k.starts_with("value")).map(|(k, v)| (k.as_str(), v));
        let text = match value {
            Some(("valueReference", v)) => v.get("reference").and_then(Value::as_str).ok_or_else(|| bad(name, "valueReference without a reference"))?.to_string(),
            Some((_, Value::String(s))) => s.clone(),
            Some((_, Value::Bool(b))) => b.to_string(),
            Some((_, Value::Number(n))) => n.to_string(),
            _ => return Err(bad(name, "needs a primitive value[x] or a valueReference")),
        };
        // One Parameters entry is one filter (a query string as in a URL): its commas are not
        // filter separators, as they are in the GET form.
        let text = if name == "_typeFilter" { text.replace(',', "%2C") } else { text };
        out.push((name.to_string(), text));
    }
    Ok(out)
}

/// Checks the parameters. `compartment`: the types of a Patient / Group export (`None` for a
/// system export). `lenient`: unknown parameters are ignored (and reported) instead of refused.
pub fn parse(params: &[(String, String)], defs: &Definitions, reg: &Registry, compartment: Option<&[String]>, lenient: bool) -> Result<KickOff, ExportError> {
    let mut k = KickOff::default();
    let ty = |name: &str, t: &str| -> Result<String, ExportError> {
        let t = defs.resource_type(t.trim()).map_err(|e| bad(name, e.to_string()))?;
        if compartment.is_some_and(|c| !c.iter().any(|x| x == t)) {
            return Err(bad(name, format!("{t} is not in the Patient compartment, which a Patient or Group export covers")));
        }
        Ok(t.to_string())
    };
    for (name, value) in params {
        match name.as_str() {
            "_outputFormat" => {
                if !NDJSON_FORMATS.contains(&value.trim()) {
                    return Err(bad(name, format!("'{value}' is not supported; use application/fhir+ndjson")));
                }
            }
            "_since" => {
                let (low, _) = crate::fhir::meta::parse_fhir_datetime(value.trim()).ok_or_else(|| bad(name, format!("'{value}' is not a FHIR instant")))?;
                k.since = Some(low);
            }
            "_type" => {
                let list = k.types.get_or_insert_with(Vec::new);
                for t in value.split(',').filter(|t| !t.trim().is_empty()) {
                    let t = ty(name, t)?;
                    if !list.contains(&t) {
                        list.push(t);
                    }
                }
            }
            "_typeFilter" => {
                for f in value.split(',').filter(|f| !f.trim().is_empty()) {
                    let (t, query) = f.trim().split_once('?').ok_or_else(|| bad(name, format!("'{f}' is not Type?search")))?;
                    let t = ty(name, t)?;
                    let q: Vec<(String, String)> = serde_urlencoded::from_str(query).map_err(|e| bad(name, format!("'{f}': {e}")))?;
                    if q.is_empty() {
                        return Err(bad(name, format!("'{f}' has no search parameters")));
                    }
                    if let Some((p, _)) = q.iter().find(|(p, _)| matches!(p.as_str(), "_include" | "_revinclude" | "_sort" | "_count" | "_summary" | "_elements" | "_total" | "_contained" | "_containedType")) {
                        return Err(bad(name, format!("'{f}': {p} does not select resources; a filter takes search criteria only")));
                    }
                    crate::search::parse::parse(reg, &t, &q, false).map_err(|e| bad(name, format!("'{f}': {e}")))?;
                    k.type_filters.push((t, q));
                }
            }
            "_elements" => {
                for e in value.split(',').map(str::trim).filter(|e| !e.is_empty()) {
                    match e.split_once('.') {
                        Some((t, el)) => k.elements.push((Some(ty(name, t)?), el.to_string())),
                        None => k.elements.push((None, e.to_string())),
                    }
                }
            }
            "patient" => {
                if compartment.is_none() {
                    return Err(bad(name, "patient applies to Patient and Group exports"));
                }
                for r in value.split(',').map(str::trim).filter(|r| !r.is_empty()) {
                    let id = r.strip_prefix("Patient/").filter(|id| crate::fhir::valid_id(id)).ok_or_else(|| bad(name, format!("'{r}' is not a Patient/id reference")))?;
                    k.patients.push(id.to_string());
                }
            }
            // Nothing beyond the resources themselves is associated; `_none` asks for that.
            "includeAssociatedData" if value.split(',').all(|v| v.trim() == "_none") => {}
            // Format and pretty-printing of the kick-off answer itself.
            "_format" | "_pretty" => {}
            _ if lenient => k.ignored.push(format!("{name}={value}")),
            "includeAssociatedData" => return Err(bad(name, format!("'{value}' is not supported (only _none); send Prefer: handling=lenient to ignore it"))),
            _ => return Err(ExportError::Unsupported(format!("parameter {name} is not supported by $export; send Prefer: handling=lenient to ignore it"))),
        }
    }
    if let Some(types) = &k.types {
        if types.is_empty() {
            return Err(bad("_type", "names no type"));
        }
        if let Some((t, _)) = k.type_filters.iter().find(|(t, _)| !types.contains(t)) {
            return Err(bad("_typeFilter", format!("filters {t}, which _type does not list")));
        }
    }
    Ok(k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::FhirVersion;
    use serde_json::json;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect()
    }

    #[test]
    fn kick_off_parameters_are_checked() {
        let defs = Definitions::load(FhirVersion::R4);
        let reg = Registry::load(FhirVersion::R4);
        let k = parse(&p(&[("_type", "Patient,Observation,Patient"), ("_since", "2020-01-01T00:00:00Z"), ("_typeFilter", "Observation?code=1234-5,Observation?status=final"), ("_elements", "id,Patient.name")]), &defs, &reg, None, false).unwrap();
        assert_eq!(k.types, Some(vec!["Patient".into(), "Observation".into()]));
        assert_eq!(k.since, Some(1_577_836_800_000_000));
        assert_eq!(k.type_filters.len(), 2);
        assert_eq!(k.elements, vec![(None, "id".into()), (Some("Patient".into()), "name".into())]);
        for bad in [
            p(&[("_outputFormat", "text/csv")]),
            p(&[("_type", "Nope")]),
            p(&[("_since", "yesterday")]),
            p(&[("_typeFilter", "Observation")]),
            p(&[("_typeFilter", "Observation?nope=1")]),
            p(&[("_typeFilter", "Observation?_sort=date")]),
            p(&[("_type", "Patient"), ("_typeFilter", "Observation?code=1")]),
            p(&[("patient", "Patient/1")]),
            p(&[("foo", "1")]),
            p(&[("includeAssociatedData", "LatestProvenanceResources")]),
        ] {
            assert!(parse(&bad, &defs, &reg, None, false).is_err(), "{bad:?}");
        }
        let lenient = parse(&p(&[("foo", "1")]), &defs, &reg, None, true).unwrap();
        assert_eq!(lenient.ignored, vec!["foo=1"]);
        let comp = vec!["Patient".to_string(), "Observation".to_string()];
        assert!(parse(&p(&[("_type", "Organization")]), &defs, &reg, Some(&comp), false).is_err(), "not in the compartment");
        assert_eq!(parse(&p(&[("patient", "Patient/a,Patient/b")]), &defs, &reg, Some(&comp), false).unwrap().patients, vec!["a", "b"]);
    }

    #[test]
    fn parameters_bodies_become_pairs() {
        let body = json!({"resourceType": "Parameters", "parameter": [
            {"name": "_type", "valueString": "Patient"},
            {"name": "patient", "valueReference": {"reference": "Patient/x"}},
            {"name": "_since", "valueInstant": "2020-01-01T00:00:00Z"},
            {"name": "_typeFilter", "valueString": "Observation?code=a,b"}
        ]});
        let pairs = from_parameters(&body).unwrap();
        assert_eq!(pairs[..3], p(&[("_type", "Patient"), ("patient", "Patient/x"), ("_since", "2020-01-01T00:00:00Z")])[..]);
        let defs = Definitions::load(FhirVersion::R4);
        let reg = Registry::load(FhirVersion::R4);
        let k = parse(&pairs[3..], &defs, &reg, None, false).unwrap();
        assert_eq!(k.type_filters, vec![("Observation".to_string(), p(&[("code", "a,b")]))], "one entry, one filter");
        assert!(from_parameters(&json!({"resourceType": "Patient"})).is_err());
        assert!(from_parameters(&json!({"resourceType": "Parameters", "parameter": [{"name": "x"}]})).is_err());
    }
}
