//! FHIR operations served besides bulk `$export` (which lives in [`crate::export`]):
//! `$validate` ([`validate`]), `$meta`, `$meta-add`, `$meta-delete` ([`meta`]) and
//! `Patient/$everything` ([`everything`]). Every route here runs behind the FHIR API's auth
//! middleware like any interaction, and each handler asks [`crate::http::guard`] for the rights
//! it needs (read for `$meta` and `$validate`, update for `$meta-add` / `$meta-delete`, search
//! within the caller's reach for `$everything`). Inputs come as query parameters or a
//! `Parameters` body ([`params`]).

pub mod everything;
pub mod meta;
pub mod params;
pub mod validate;

use actix_web::web;

/// Errors of the operations' own inputs (what they share with the rest of the API, such as
/// unknown types or storage failures, keeps its own error type).
#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    #[error("parameter {name}: {reason}")]
    BadParameter { name: String, reason: String },
    #[error("{0}")]
    NotSupported(String),
    #[error("{0}")]
    TooCostly(String),
}

/// The canonical URLs of the operations served (CapabilityStatement `operation.definition`),
/// by name and the levels they are listed under.
pub const SERVED: &[(&str, &str)] = &[
    ("validate", "http://hl7.org/fhir/OperationDefinition/Resource-validate"),
    ("meta", META),
    ("meta-add", "http://hl7.org/fhir/OperationDefinition/Resource-meta-add"),
    ("meta-delete", "http://hl7.org/fhir/OperationDefinition/Resource-meta-delete"),
];

/// `$meta`'s definition (also listed at system level).
pub const META: &str = "http://hl7.org/fhir/OperationDefinition/Resource-meta";

/// `Patient/$everything`'s definition (listed under Patient only).
pub const EVERYTHING: &str = "http://hl7.org/fhir/OperationDefinition/Patient-everything";

/// Registers the routes (before the generic `$operation` fallback).
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/Patient/{id}/$everything", web::get().to(everything::instance));
    cfg.route("/Patient/{id}/$everything", web::post().to(everything::instance));
    cfg.route("/Patient/$everything", web::get().to(everything::type_level));
    cfg.route("/Patient/$everything", web::post().to(everything::type_level));
    cfg.route("/$meta", web::get().to(meta::system));
    cfg.route("/$meta", web::post().to(meta::system));
    cfg.route("/{type}/$meta", web::get().to(meta::type_level));
    cfg.route("/{type}/$meta", web::post().to(meta::type_level));
    cfg.route("/{type}/{id}/$meta", web::get().to(meta::instance));
    cfg.route("/{type}/{id}/$meta", web::post().to(meta::instance));
    cfg.route("/{type}/{id}/_history/{vid}/$meta", web::get().to(meta::version));
    cfg.route("/{type}/{id}/_history/{vid}/$meta", web::post().to(meta::version));
    cfg.route("/{type}/{id}/$meta-add", web::post().to(meta::add));
    cfg.route("/{type}/{id}/$meta-delete", web::post().to(meta::delete));
    cfg.route("/{type}/{id}/_history/{vid}/$meta-add", web::post().to(meta::version_change));
    cfg.route("/{type}/{id}/_history/{vid}/$meta-delete", web::post().to(meta::version_change));
    cfg.route("/{type}/$validate", web::post().to(validate::type_level));
    cfg.route("/{type}/{id}/$validate", web::post().to(validate::instance));
}
