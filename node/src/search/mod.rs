//! FHIR search: the parameter registry built from the official SearchParameter definitions
//! ([`params`]), their FHIRPath expressions compiled once at start-up ([`fhirpath`]), value
//! extraction per parameter type ([`extract`]) with exact decimals ([`decimal`]), and the index
//! rows the state machine writes with every version ([`index`]); parsing and running a search
//! on those rows ([`query`]); `_sort` keys ([`sort`]).

pub mod decimal;
pub mod extract;
pub mod fhirpath;
pub mod index;
pub mod params;
pub mod query;
pub mod sort;
