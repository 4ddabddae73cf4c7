//! The module's error type: why a bundled schema could not be prepared or compiled. These are
//! faults of the build (the schemas are compiled into the binary), found by the unit tests; an
//! invalid resource is not an error of this module but a [`FhirError::Schema`](crate::fhir::FhirError)
//! carrying the [`Issue`](super::Issue)s found.

use crate::fhir::FhirVersion;

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error("a bundled schema file is not valid JSON: {0}")]
    SchemaJson(serde_json::Error),
    #[error("schemas/r4/schema-patch.json does not apply to the upstream schema: {0}")]
    Patch(#[from] json_patch::PatchError),
    #[error("the schema does not have the expected shape: {0}")]
    Shape(&'static str),
    #[error("the patched {version} schema does not compile: {message}")]
    Compile { version: FhirVersion, message: String },
}
