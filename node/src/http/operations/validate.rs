//! `$validate` (operation-resource-validate): `POST [type]/$validate` and
//! `POST [type]/[id]/$validate`, with the resource as the body or in a `Parameters` body
//! (`resource`, `mode`, `profile`). The resource goes through exactly what a write does before it
//! is proposed ([`crate::actors::resource::prepare`]: id rules, server-owned meta, JSON-schema
//! validation of every element, nesting depth), and nothing is written. The answer is `200` with
//! an OperationOutcome: the `error` issues a write would be refused with (one per schema problem,
//! located by `expression`), else one `information` issue. `mode=update` also needs the id to match the URL's, `mode=delete` that the resource
//! exists. Checked: the base FHIR definition of the type (the official JSON schema, with the
//! fixes in schemas/README.md). Not checked: profiles other than the base one (a `warning` says
//! so), terminology bindings, and FHIRPath invariants.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::params::Inputs;
use super::OperationError;
use crate::actors::resource::prepare;
use crate::actors::WriteIntent;
use crate::http::guard;
use crate::auth::Op;
use crate::http::error::{classify, error_outcome, ApiError};
use crate::http::negotiate::{self, Ctx};
use crate::http::AppState;
use crate::machine::command::Action;

pub async fn type_level(req: HttpRequest, path: web::Path<String>, payload: web::Payload, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    validate(&req, &st, &path, None, payload).await
}

pub async fn instance(req: HttpRequest, path: web::Path<(String, String)>, payload: web::Payload, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    validate(&req, &st, &path.0, Some(&path.1), payload).await
}

fn bad(name: &str, reason: impl Into<String>) -> ApiError {
    OperationError::BadParameter { name: name.into(), reason: reason.into() }.into()
}

async fn validate(req: &HttpRequest, st: &AppState, rtype: &str, id: Option<&str>, payload: web::Payload) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(req, st)?;
    let rtype = st.defs.resource_type(rtype)?;
    // Validating reveals nothing a read of the type would not (mode=delete tells existence).
    guard::require_ctx(&ctx, st, Op::READ, rtype)?;
    negotiate::require_json_body(req)?;
    let body = negotiate::read_json(payload, &st.cfg.limits).await?;
    let is_params = body.get("resourceType").and_then(Value::as_str) == Some("Parameters") && rtype != "Parameters";
    let query: Vec<(String, String)> = ctx.params.clone();
    let (inputs, resource) = if is_params {
        let inputs = Inputs::new(Some(body), query);
        let resource = inputs.resource("resource").cloned();
        (inputs, resource)
    } else {
        (Inputs::new(None, query), Some(body))
    };
    let mode = inputs.text("mode").unwrap_or_else(|| if id.is_some() { "update" } else { "create" }.into());
    let action = match mode.as_str() {
        "create" => Action::Create,
        "update" => Action::Update,
        "delete" => Action::Delete,
        other => return Err(bad("mode", format!("'{other}' is not create, update or delete"))),
    };
    if action == Action::Delete && id.is_none() {
        return Err(bad("mode", "delete names an instance: POST [type]/[id]/$validate"));
    }
    let mut issues = Vec::new();
    if let Some(p) = inputs.text("profile") {
        let base = format!("http://hl7.org/fhir/StructureDefinition/{rtype}");
        if p.split('|').next() != Some(base.as_str()) {
            issues.push(json!({"severity": "warning", "code": "not-supported",
                "diagnostics": format!("profile {p}: Kiln validates against the base definition of {rtype} only; the profile's constraints were not checked")}));
        }
    }
    let outcome = match action {
        Action::Delete => {
            let id = id.unwrap_or_default();
            crate::http::crud::type_and_id(st, rtype, id)?;
            ctx.store.read(rtype, id).map(|_| ()).map_err(ApiError::from)
        }
        _ => {
            let resource = resource.ok_or_else(|| bad("resource", format!("mode={mode} needs the resource (the body, or a 'resource' parameter)")))?;
            check(st, rtype, action, id, resource)
        }
    };
    if let Err(e) = outcome {
        // The issues the write would have answered: one per schema problem, with `expression`.
        let (_, code) = classify(&e);
        issues.extend(error_outcome(&e, code)["issue"].as_array().cloned().unwrap_or_default());
    }
    if !issues.iter().any(|i| i["severity"] == "error") {
        issues.push(json!({"severity": "information", "code": "informational",
            "diagnostics": format!("{rtype} is valid for {mode} against the base FHIR {} definition (JSON schema); terminology bindings and invariants are not checked", st.cfg.fhir_version.as_str())}));
    }
    let out = serde_json::to_vec(&json!({"resourceType": "OperationOutcome", "issue": issues})).map_err(|e| crate::store::StoreError::Corrupt(e.to_string()))?;
    Ok(ctx.respond(HttpResponse::Ok(), out))
}

/// What a write of `resource` would meet before it is proposed.
fn check(st: &AppState, rtype: &'static str, action: Action, id: Option<&str>, resource: Value) -> Result<(), ApiError> {
    let id = match (action, id) {
        (Action::Create, _) => None,
        (_, Some(id)) => Some(crate::http::crud::type_and_id(st, rtype, id)?.1.to_string()),
        (_, None) => Some(resource.get("id").and_then(Value::as_str).ok_or_else(|| bad("resource", "mode=update needs the resource's id"))?.to_string()),
    };
    let intent = WriteIntent { action, id, body: Some(resource), if_match: None, condition: None };
    prepare(&st.defs, &st.write_settings, rtype, intent).map(|_| ()).map_err(ApiError::from)
}
