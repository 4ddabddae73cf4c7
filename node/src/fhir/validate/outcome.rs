//! From the `jsonschema` crate's errors to the issues of an OperationOutcome: each error's instance
//! location (a JSON pointer, `/name/0/given`) becomes a FHIRPath-ish `expression`
//! (`Patient.name[0].given`, resolved against the body so that array indexes and element names are
//! told apart), and its kind a short diagnostic that never quotes more than [`SHORT`] bytes of the
//! body.

use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::ValidationError;
use serde_json::Value;

/// Longest quotation of a value in a diagnostic.
const SHORT: usize = 120;

/// One problem found in a resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Where, as FHIRPath: `Patient.name[0].given`.
    pub expression: String,
    /// What, starting with the JSON pointer: `at /name/0/given: expected an array, found "Jo"`.
    pub diagnostics: String,
}

/// The issues of `errors` (from validating `body`, a `rtype`), at most `max`. A value of the wrong
/// JSON type is reported once: not also as failing its pattern or enum.
pub fn issues<'a>(rtype: &str, body: &Value, errors: impl Iterator<Item = ValidationError<'a>>, max: usize) -> Vec<Issue> {
    let described: Vec<(String, String, bool)> = errors
        .flat_map(|err| {
            let wrong_type = matches!(err.kind(), ValidationErrorKind::Type { .. });
            describe(&err).into_iter().map(move |(pointer, message)| (pointer, message, wrong_type))
        })
        .collect();
    let wrong_type: Vec<&str> = described.iter().filter(|d| d.2).map(|d| d.0.as_str()).collect();
    let mut out: Vec<Issue> = Vec::new();
    for (pointer, message, is_type) in &described {
        if out.len() >= max {
            break;
        }
        if !is_type && wrong_type.contains(&pointer.as_str()) {
            continue;
        }
        let issue = Issue {
            expression: expression(rtype, body, pointer),
            diagnostics: format!("at {}: {message}", if pointer.is_empty() { "/" } else { pointer }),
        };
        if !out.contains(&issue) {
            out.push(issue);
        }
    }
    out
}

/// `(instance pointer, message)` pairs of one error: one per unknown element, else one.
fn describe(err: &ValidationError<'_>) -> Vec<(String, String)> {
    let at = err.instance_path().as_str().to_string();
    let found = || short(&err.instance().to_string());
    let message = match err.kind() {
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            return unexpected.iter().map(|name| (format!("{at}/{}", escape(name)), format!("unknown element '{name}'"))).collect();
        }
        ValidationErrorKind::Type { kind } => format!("expected {}, found {}", type_names(kind), found()),
        ValidationErrorKind::Pattern { pattern } => format!("{} does not match the pattern {pattern}", found()),
        ValidationErrorKind::Enum { options } => {
            let allowed: Vec<String> = options.as_array().into_iter().flatten().map(Value::to_string).collect();
            format!("{} is not one of {}", found(), short(&allowed.join(", ")))
        }
        ValidationErrorKind::Constant { expected_value } => format!("expected {expected_value}, found {}", found()),
        ValidationErrorKind::Required { property } => {
            format!("the required element '{}' is missing", property.as_str().unwrap_or_default())
        }
        // Not produced by the FHIR schemas; the crate's own words, without the instance.
        _ => short(&err.masked().to_string()),
    };
    vec![(at, message)]
}

fn type_names(kind: &TypeKind) -> String {
    let name = |t: String| match t.as_str() {
        "object" | "array" | "integer" => format!("an {t}"),
        "null" => t,
        _ => format!("a {t}"),
    };
    match kind {
        TypeKind::Single(t) => name(t.to_string()),
        TypeKind::Multiple(set) => set.iter().map(|t| name(t.to_string())).collect::<Vec<_>>().join(" or "),
    }
}

/// JSON-pointer escaping of one key.
fn escape(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// The FHIRPath of the element at `pointer` in `body`: `/contained/0/name` → `Patient.contained[0].name`.
pub fn expression(rtype: &str, body: &Value, pointer: &str) -> String {
    let mut out = rtype.to_string();
    let mut at = Some(body);
    for token in pointer.split('/').skip(1) {
        let key = token.replace("~1", "/").replace("~0", "~");
        match at {
            Some(Value::Array(items)) if key.parse::<usize>().is_ok() => {
                out.push_str(&format!("[{key}]"));
                at = key.parse::<usize>().ok().and_then(|i| items.get(i));
            }
            _ => {
                out.push('.');
                if is_identifier(&key) {
                    out.push_str(&key);
                } else {
                    out.push('`');
                    out.push_str(&key.replace('\\', "\\\\").replace('`', "\\`"));
                    out.push('`');
                }
                at = at.and_then(|v| v.get(&key));
            }
        }
    }
    out
}

/// Whether `s` is a plain FHIRPath identifier (others are written in backticks).
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_') && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Keeps diagnostics readable: long values are cut.
fn short(s: &str) -> String {
    if s.len() <= SHORT {
        return s.to_string();
    }
    let mut end = SHORT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pointers_become_fhirpath() {
        let body = json!({"resourceType": "Patient", "name": [{"given": ["a", "b"]}], "contained": [{"0": {"a/b": 1}}]});
        assert_eq!(expression("Patient", &body, ""), "Patient");
        assert_eq!(expression("Patient", &body, "/name/0/given/1"), "Patient.name[0].given[1]");
        assert_eq!(expression("Patient", &body, "/name/0/_given"), "Patient.name[0]._given");
        // "0" is a key of an object here, not an index; "a/b" needs quoting.
        assert_eq!(expression("Patient", &body, "/contained/0/0/a~1b"), "Patient.contained[0].`0`.`a/b`");
        assert_eq!(expression("Patient", &body, "/colour-x"), "Patient.`colour-x`");
    }

    #[test]
    fn values_are_quoted_short() {
        let long = "é".repeat(200);
        let s = short(&long);
        assert!(s.len() <= SHORT + 3 && s.ends_with('…'));
        assert_eq!(short("abc"), "abc");
    }
}
