//! `GET /metadata`: the CapabilityStatement, generated from [`super::INTERACTIONS`] (the routing
//! table) and the node's configuration, so it claims exactly what is served.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::negotiate::Ctx;
use super::{AppState, Level, INTERACTIONS};
use crate::error::ApiError;
use crate::fhir::FhirVersion;

pub async fn capability_statement(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    let cs = build(&st, &ctx.base);
    Ok(ctx.respond(HttpResponse::Ok(), ctx.json_body(&cs)))
}

fn codes(level: Level) -> Vec<Value> {
    INTERACTIONS.iter().filter(|i| i.level == level && !i.code.starts_with("history-system")).map(|i| json!({"code": i.code})).collect()
}

pub fn build(st: &AppState, base: &str) -> Value {
    let mut per_type: Vec<Value> = codes(Level::Instance);
    per_type.extend(codes(Level::Type));
    let resources: Vec<Value> = st
        .defs
        .types
        .iter()
        .map(|t| {
            json!({
                "type": t,
                "interaction": per_type,
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": st.cfg.allow_update_create,
                "conditionalCreate": false,
                "conditionalRead": "full-support",
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported"
            })
        })
        .collect();
    let system: Vec<Value> = INTERACTIONS
        .iter()
        .filter(|i| i.level == Level::System)
        .map(|i| json!({"code": i.code}))
        .collect();
    let mut cs = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": st.started,
        "publisher": "Kiln",
        "kind": "instance",
        "software": {"name": "Kiln", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "Kiln replicated FHIR server", "url": base},
        "fhirVersion": st.defs.version.as_str(),
        "format": ["application/fhir+json", "application/json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [{
            "mode": "server",
            "documentation": "Reads are served by any node; every write is committed through Raft before it is acknowledged.",
            "resource": resources,
            "interaction": system
        }]
    });
    if st.defs.version == FhirVersion::Stu3 {
        cs["acceptUnknown"] = json!("no");
    }
    cs
}
