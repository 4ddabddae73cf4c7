//! FHIR search: the parameter registry built from the official SearchParameter definitions
//! ([`params`]), their FHIRPath expressions compiled once at start-up ([`fhirpath`]), value
//! extraction per parameter type ([`extract`]) with exact decimals ([`decimal`]).

pub mod decimal;
pub mod extract;
pub mod fhirpath;
pub mod params;
