//! FHIR search: the parameter registry built from the official SearchParameter definitions
//! ([`params`]), and their FHIRPath expressions compiled once at start-up ([`fhirpath`]).

pub mod fhirpath;
pub mod params;
