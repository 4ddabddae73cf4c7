//! What history and search bundles share: the Bundle / entry shapes, resources embedded as their
//! stored bytes (no parse) unless `_summary` / `_elements` / `_pretty` asks for changes, and
//! paging links that repeat the request's parameters.

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::negotiate::Ctx;
use super::AppState;
use crate::http::error::ApiError;
use crate::fhir::meta;
use crate::store::StoreError;

/// A resource inside an entry.
#[derive(Serialize)]
#[serde(untagged)]
pub enum Resource<'a> {
    Raw(&'a RawValue),
    Owned(Box<RawValue>),
    Parsed(Value),
}

/// The stored `body` of `label` as the request wants it.
pub fn embed<'a>(ctx: &Ctx, st: &AppState, body: &'a [u8], label: &str) -> Result<Resource<'a>, ApiError> {
    let corrupt = |err: serde_json::Error| StoreError::Corrupt(format!("stored body of {label}: {err}"));
    Ok(if ctx.subset.is_empty() && !ctx.pretty {
        Resource::Raw(serde_json::from_slice(body).map_err(corrupt)?)
    } else {
        let mut v: Value = serde_json::from_slice(body).map_err(corrupt)?;
        st.defs.subset(&mut v, &ctx.subset);
        Resource::Parsed(v)
    })
}

#[derive(Serialize)]
pub struct Entry<'a> {
    #[serde(rename = "fullUrl", skip_serializing_if = "Option::is_none")]
    pub full_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<Resource<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<Value>,
}

#[derive(Serialize)]
pub struct Bundle<'a> {
    #[serde(rename = "resourceType")]
    pub resource_type: &'static str,
    pub id: String,
    pub meta: Value,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub link: Vec<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entry: Vec<Entry<'a>>,
}

impl<'a> Bundle<'a> {
    pub fn new(kind: &'static str, total: Option<usize>, link: Vec<Value>, entry: Vec<Entry<'a>>) -> Bundle<'a> {
        Bundle {
            resource_type: "Bundle",
            id: uuid::Uuid::new_v4().to_string(),
            meta: json!({"lastUpdated": meta::format_instant(meta::now_micros())}),
            kind,
            total,
            link,
            entry,
        }
    }

    pub fn to_bytes(&self, ctx: &Ctx) -> Result<Vec<u8>, ApiError> {
        self.to_bytes_sized(ctx, 0)
    }

    /// [`Bundle::to_bytes`] into a buffer of `capacity` bytes to start with (no copies while a
    /// large bundle grows).
    pub fn to_bytes_sized(&self, ctx: &Ctx, capacity: usize) -> Result<Vec<u8>, ApiError> {
        let mut out = Vec::with_capacity(capacity);
        let r = if ctx.pretty { serde_json::to_writer_pretty(&mut out, self) } else { serde_json::to_writer(&mut out, self) };
        r.map_err(|e| StoreError::Corrupt(format!("bundle: {e}")))?;
        Ok(out)
    }
}

/// `base + path` with the request's parameters (without `_page`), plus `_page` when given.
pub fn link(ctx: &Ctx, path: &str, params: &[(String, String)], page: Option<String>) -> String {
    let mut ps: Vec<(&str, &str)> = params.iter().filter(|(k, _)| k != "_page").map(|(k, v)| (k.as_str(), v.as_str())).collect();
    if let Some(p) = &page {
        ps.push(("_page", p));
    }
    let qs = serde_urlencoded::to_string(&ps).unwrap_or_default();
    if qs.is_empty() { format!("{}{path}", ctx.base) } else { format!("{}{path}?{qs}", ctx.base) }
}

pub fn relation(rel: &str, url: String) -> Value {
    json!({"relation": rel, "url": url})
}
