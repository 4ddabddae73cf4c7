//! Search latency by parameter type: `kiln_search_duration_seconds{param_type}`. A search is
//! observed once under each distinct type of the parameters it uses (`token`, `date`,
//! `reference`, ... as the registry defines them; `chain` for chained parameters and `_has`,
//! `text` for `_content` / `_text`, `none` for a search with no criteria), so a slow parameter
//! type shows in its own series; `kiln_search_requests_total{param_type}` counts the same.

use prometheus::{HistogramVec, IntCounterVec};

use super::{Families, MetricsError, LATENCY_BUCKETS};
use crate::search::params::{ParamType, Registry};

pub struct SearchMetrics {
    pub duration: HistogramVec,
    pub requests: IntCounterVec,
}

impl SearchMetrics {
    pub(crate) fn new(f: &Families) -> Result<SearchMetrics, MetricsError> {
        Ok(SearchMetrics {
            duration: f.histogram_vec(
                "kiln_search_duration_seconds",
                "Search time (criteria, sort, page, includes), observed once per parameter type the search uses.",
                &["param_type"],
                LATENCY_BUCKETS,
            )?,
            requests: f.counter_vec("kiln_search_requests_total", "Searches run, counted once per parameter type they use.", &["param_type"])?,
        })
    }

    /// Records one search that took `seconds` under each of `kinds`.
    pub fn observe(&self, kinds: &[&'static str], seconds: f64) {
        for k in kinds {
            self.duration.with_label_values(&[k]).observe(seconds);
            self.requests.with_label_values(&[k]).inc();
        }
    }
}

fn type_name(t: ParamType) -> &'static str {
    match t {
        ParamType::Number => "number",
        ParamType::Date => "date",
        ParamType::String => "string",
        ParamType::Token => "token",
        ParamType::Reference => "reference",
        ParamType::Composite => "composite",
        ParamType::Quantity => "quantity",
        ParamType::Uri => "uri",
        ParamType::Special => "special",
    }
}

/// The distinct parameter types of a search's parameters (`name[:modifier]=value`) over `types`;
/// result parameters (`_count`, `_sort`, `_include`, ...) and unknown names are not criteria.
pub fn param_kinds(reg: &Registry, types: &[&str], params: &[(String, String)]) -> Vec<&'static str> {
    let mut kinds: Vec<&'static str> = Vec::new();
    for (name, _) in params {
        let code = name.split(':').next().unwrap_or("");
        let kind = if crate::meili::query::is_text_param(code) {
            "text"
        } else if code.contains('.') || code == "_has" {
            "chain"
        } else if let Some(p) = types.iter().find_map(|t| reg.get(t, code)) {
            type_name(p.def.kind)
        } else {
            continue;
        };
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    if kinds.is_empty() {
        kinds.push("none");
    }
    kinds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_of_a_query() {
        let reg = Registry::load(crate::fhir::FhirVersion::R4);
        let p = |v: &[(&str, &str)]| v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let q = p(&[("name", "a"), ("birthdate", "ge2000"), ("family:exact", "b"), ("_count", "5"), ("general-practitioner.name", "x")]);
        assert_eq!(param_kinds(&reg, &["Patient"], &q), vec!["string", "date", "chain"]);
        assert_eq!(param_kinds(&reg, &["Patient"], &p(&[("_count", "1")])), vec!["none"]);
        assert_eq!(param_kinds(&reg, &["Patient"], &p(&[("_id", "1"), ("_text", "x")])), vec!["token", "text"]);
    }
}
