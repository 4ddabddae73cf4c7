//! FHIR search: the parameter registry built from the official SearchParameter definitions
//! ([`params`]), their FHIRPath expressions compiled once at start-up ([`fhirpath`]), value
//! extraction per parameter type ([`extract`]) with exact decimals ([`decimal`]), and the index
//! rows the state machine writes with every version ([`index`]) and their compact posting lists
//! ([`posting`]); parsing a search ([`parse`]) and running it
//! on those rows ([`query`], dates in [`date_query`], the row budget of conditions in [`cost`]); `_sort` keys ([`sort`]); result order and keyset pages ([`page`]).

pub use crate::index::{cost, posting};

pub mod conditions;
pub mod date_query;
pub mod decimal;
pub mod error;
pub mod extract;
pub mod fhirpath;
pub mod index;
pub mod kinds;
pub mod lookups;
pub mod page;
pub mod params;
pub mod parse;
pub mod query;
pub mod sort;
pub mod terms;
