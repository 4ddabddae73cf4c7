//! Terminology: the CodeSystem and ValueSet resources Kiln knows, and what is computed from them.
//!
//! - [`model`]: code systems (concepts, is-a hierarchy) and value sets (compose) read from FHIR
//!   JSON, the same way for shipped and stored resources.
//! - [`load`]: where definitions come from: the 2,377 official ones compiled into the binary per
//!   FHIR version (`schemas/{r4,stu3}/terminology.json`, parsed once on first use), and the ones
//!   users store (read from the node's replicated state through the `url` search index). A stored
//!   resource with the canonical url of a shipped one overrides it.
//! - [`expand`]: value set expansion (include / exclude, concept lists, filters, imports), bounded.
//! - `crate::search::terms`: the token modifiers `:in`, `:not-in`, `:below`, `:above` on the
//!   posting lists (in search, which builds on this module).
//! - [`ops`]: the operations' answers; `crate::http::terminology`: their routes, `ValueSet/$expand`, `ValueSet/$validate-code`, `CodeSystem/$lookup`,
//!   `CodeSystem/$subsumes`.
//!
//! A conditional write's search
//! runs in apply on every node, so what it reads must be the same everywhere: the shipped
//! definitions (part of the binary, fingerprinted into the cluster's index format pin) and the
//! node's state at the applied index; the search bound is the constant [`SEARCH_MAX_CODES`], not
//! configuration.

pub mod expand;
pub mod load;
pub mod model;
pub mod ops;

use crate::store::StoreError;

/// Most codes a search modifier may expand to (`:in`, `:not-in`, `:below`, `:above`). Fixed, not
/// configuration: conditional writes evaluate these in apply, where every node must decide alike.
pub const SEARCH_MAX_CODES: usize = 10_000;

/// Deepest chain of ValueSet imports (`compose.include.valueSet`) followed.
pub const MAX_IMPORT_DEPTH: usize = 16;

/// Why a terminology request or a search modifier cannot be answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TerminologyError {
    #[error("no ValueSet with url '{0}' is stored on this server or shipped with it")]
    UnknownValueSet(String),
    #[error("code system {system} is not held by this server ({why}); Kiln holds the FHIR, HL7 v2 and v3 code systems and those stored as CodeSystem resources, not external terminologies such as SNOMED CT or LOINC")]
    NotHeld { system: String, why: String },
    #[error("the expansion of {what} has more than {limit} codes ({key}); use a narrower value set or a filter")]
    TooLarge { what: String, limit: usize, key: &'static str },
    #[error("code '{code}' is not in code system {system}")]
    UnknownCode { system: String, code: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("{count} stored {rtype} resources have url '{url}'; name the one meant as url|version")]
    Ambiguous { rtype: &'static str, url: String, count: usize },
    #[error("invalid parameter {name}: {reason}")]
    BadParameter { name: String, reason: String },
    #[error("{0}")]
    Invalid(String),
    #[error("terminology too costly: {0}")]
    TooCostly(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<crate::index::posting::PostingError> for TerminologyError {
    fn from(e: crate::index::posting::PostingError) -> Self {
        match e {
            crate::index::posting::PostingError::TooCostly(x) => x.into(),
            e => TerminologyError::Store(e.into()),
        }
    }
}

impl From<crate::index::cost::Exhausted> for TerminologyError {
    fn from(e: crate::index::cost::Exhausted) -> Self {
        TerminologyError::TooCostly(e.to_string())
    }
}

impl From<sled::Error> for TerminologyError {
    fn from(e: sled::Error) -> Self {
        TerminologyError::Store(e.into())
    }
}
