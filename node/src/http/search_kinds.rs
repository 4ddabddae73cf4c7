//! The parameter types a search is observed under in the search metrics
//! ([`crate::metrics::search::SearchMetrics`]): `token`, `date`, `reference`, ... as the registry
//! defines them; `chain` for chained parameters and `_has`, `text` for `_content` / `_text`,
//! `none` for a search with no criteria.

use crate::search::params::{ParamType, Registry};

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
