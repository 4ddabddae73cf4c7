//! FHIR knowledge Kiln needs outside search: the served version, the resource-type list, id rules,
//! `meta` stamping, JSON-schema validation and `_summary` / `_elements` subsetting. The
//! definitions are compiled into the binary from `schemas/` (see `schemas/README.md`).

pub mod elements;
pub mod meta;
pub mod outcome;
pub mod references;
pub mod shape;
pub mod validate;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use elements::{Subset, SummaryMode};
pub use validate::{Issue, Validators};

/// Errors about the content of a FHIR request: what the client must fix.
#[derive(Debug, thiserror::Error)]
pub enum FhirError {
    #[error("unknown resource type '{0}' (this server serves FHIR {1})")]
    UnknownType(String, FhirVersion),
    #[error("resource id '{0}' is not valid: ids are 1-64 characters of A-Z a-z 0-9 '-' '.'")]
    InvalidId(String),
    #[error("the body must be a JSON object holding a FHIR resource")]
    NotAnObject,
    #[error("the body's resourceType is '{found}' but the URL is for '{expected}'")]
    TypeMismatch { expected: String, found: String },
    #[error("the body has no resourceType")]
    MissingResourceType,
    #[error("the body's id '{found}' does not match the id '{expected}' in the URL")]
    IdMismatch { expected: String, found: String },
    #[error("an update (PUT) must carry the resource id in the body, matching the URL id '{0}'")]
    MissingId(String),
    /// At most [`validate::MAX_REPORTED`] issues, each with its FHIRPath expression.
    #[error("{}{}", schema_heading(*.version, .rtype), .issues.iter().map(|i| i.diagnostics.as_str()).collect::<Vec<_>>().join("; "))]
    Schema { version: FhirVersion, rtype: String, issues: Vec<Issue> },
    #[error("JSON nesting deeper than the limit of {0} levels")]
    TooDeep(usize),
}

/// What precedes each schema issue's diagnostics: `the body is not valid R4 (4.0.1) Patient: `.
pub fn schema_heading(version: FhirVersion, rtype: &str) -> String {
    format!("the body is not valid {version} {rtype}: ")
}

/// The FHIR version a node serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum FhirVersion {
    #[default]
    #[serde(rename = "4.0.1", alias = "R4", alias = "4.0")]
    R4,
    #[serde(rename = "3.0.1", alias = "STU3", alias = "3.0.2", alias = "3.0")]
    Stu3,
}

impl FhirVersion {
    /// The exact version string of `CapabilityStatement.fhirVersion`.
    pub fn as_str(self) -> &'static str {
        match self {
            FhirVersion::R4 => "4.0.1",
            FhirVersion::Stu3 => "3.0.1",
        }
    }
}

impl fmt::Display for FhirVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FhirVersion::R4 => "R4 (4.0.1)",
            FhirVersion::Stu3 => "STU3 (3.0.1)",
        })
    }
}

/// Whether `id` follows FHIR's id rule `[A-Za-z0-9\-\.]{1,64}`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Everything version-specific, loaded once per node.
pub struct Definitions {
    pub version: FhirVersion,
    /// Resource types in canonical spelling, sorted.
    pub types: Vec<&'static str>,
    pub validators: std::sync::Arc<Validators>,
    elements: BTreeMap<String, elements::TypeElements>,
}

impl Definitions {
    /// Loads the definitions compiled into the binary for `version`.
    pub fn load(version: FhirVersion) -> Definitions {
        let validators = Validators::load(version);
        let types = validators.resource_types();
        let raw = match version {
            FhirVersion::R4 => include_str!("../../../schemas/r4/elements.json"),
            FhirVersion::Stu3 => include_str!("../../../schemas/stu3/elements.json"),
        };
        let elements = serde_json::from_str(raw).expect("schemas/*/elements.json is valid (checked by tests)");
        Definitions { version, types, validators, elements }
    }

    /// The canonical name of a resource type, or `UnknownType`.
    pub fn resource_type(&self, name: &str) -> Result<&'static str, FhirError> {
        self.types
            .binary_search(&name)
            .map(|i| self.types[i])
            .map_err(|_| FhirError::UnknownType(name.to_string(), self.version))
    }

    /// Checks a body for `rtype`: object, resourceType, nesting depth, schema.
    pub fn validate(&self, rtype: &str, body: &Value, max_depth: usize) -> Result<(), FhirError> {
        let obj = body.as_object().ok_or(FhirError::NotAnObject)?;
        match obj.get("resourceType").and_then(Value::as_str) {
            None => return Err(FhirError::MissingResourceType),
            Some(t) if t != rtype => {
                return Err(FhirError::TypeMismatch { expected: rtype.into(), found: t.into() })
            }
            Some(_) => {}
        }
        if depth(body) > max_depth {
            return Err(FhirError::TooDeep(max_depth));
        }
        self.validators.validate(rtype, body)
    }

    /// Applies `_summary` / `_elements` to a resource body; returns whether it was subsetted.
    pub fn subset(&self, body: &mut Value, subset: &Subset) -> bool {
        let rtype = body.get("resourceType").and_then(Value::as_str).unwrap_or_default().to_string();
        let els = self.elements.get(&rtype);
        subset.apply(body, els)
    }
}

/// Nesting depth of a JSON value (a scalar is 0).
pub fn depth(v: &Value) -> usize {
    match v {
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_rules() {
        assert!(valid_id("abc-1.2"));
        assert!(valid_id(&"a".repeat(64)));
        assert!(!valid_id(&"a".repeat(65)));
        assert!(!valid_id(""));
        assert!(!valid_id("a_b"));
        assert!(!valid_id("a/b"));
    }

    #[test]
    fn resource_type_lookup_is_exact() {
        let d = Definitions::load(FhirVersion::R4);
        assert_eq!(d.types.len(), 146);
        assert_eq!(d.resource_type("Patient").unwrap(), "Patient");
        assert!(d.resource_type("patient").is_err());
        let s = Definitions::load(FhirVersion::Stu3);
        assert!(s.resource_type("ProcessRequest").is_ok());
        assert!(s.resource_type("ServiceRequest").is_err());
    }

    #[test]
    fn depth_counts_nesting() {
        assert_eq!(depth(&serde_json::json!({"a": [{"b": 1}]})), 3);
    }
}
