//! `GET /metadata`: the CapabilityStatement, generated from [`super::INTERACTIONS`] (the routing
//! table) and the node's configuration, so it claims exactly what is served.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::negotiate::Ctx;
use super::{AppState, Level, INTERACTIONS};
use crate::http::error::ApiError;
use crate::fhir::FhirVersion;
use crate::search::params::ParamType;

pub async fn capability_statement(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    let body = match ctx.pretty {
        true => ctx.json_body(&build(&st, &ctx.base)),
        false => st.capability.get(&ctx.base, || serde_json::to_vec(&build(&st, &ctx.base)).unwrap_or_default()).to_vec(),
    };
    Ok(ctx.respond(HttpResponse::Ok(), body))
}

/// The CapabilityStatement's compact JSON by base URL, built once per base: it depends only on the node's
/// configuration and the base, and `/metadata` must stay cheap (liveness checks, clients that
/// ask before every session). At most [`Capabilities::MAX_BASES`] bases are kept.
#[derive(Default)]
pub struct Capabilities(parking_lot::Mutex<std::collections::HashMap<String, std::sync::Arc<Vec<u8>>>>);

impl Capabilities {
    const MAX_BASES: usize = 16;

    /// The statement's compact JSON.
    fn get(&self, base: &str, build: impl FnOnce() -> Vec<u8>) -> std::sync::Arc<Vec<u8>> {
        if let Some(v) = self.0.lock().get(base) {
            return v.clone();
        }
        let v = std::sync::Arc::new(build());
        let mut m = self.0.lock();
        if m.len() >= Self::MAX_BASES {
            m.clear();
        }
        m.insert(base.to_string(), v.clone());
        v
    }
}

/// `GET /.well-known/smart-configuration` (SMART App Launch v2): what this resource server
/// accepts. Kiln validates tokens; the authorization server is whatever issues them
/// (`[auth] issuer`, `authorization_endpoint`, `token_endpoint`).
pub async fn smart_configuration(req: HttpRequest, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    let a = &st.auth.cfg;
    if !st.auth.enabled() {
        return Err(super::RequestError::NoRoute("/.well-known/smart-configuration: authentication is off on this server ([auth] mode = \"none\")".into()).into());
    }
    let mut body = json!({
        "capabilities": ["permission-v1", "permission-v2", "permission-patient", "permission-user"],
        "scopes_supported": ["patient/*.cruds", "user/*.cruds", "system/*.cruds", "patient/*.read", "user/*.read", "system/*.read", "patient/*.write", "user/*.write", "system/*.write"],
        "grant_types_supported": ["authorization_code", "client_credentials"],
        "code_challenge_methods_supported": ["S256"]
    });
    for (key, value) in [("issuer", &a.issuer), ("authorization_endpoint", &a.authorization_endpoint), ("token_endpoint", &a.token_endpoint)] {
        if let Some(v) = value {
            body[key] = json!(v);
        }
    }
    Ok(ctx.respond(HttpResponse::Ok(), ctx.json_body(&body)))
}

/// `rest.security` when authentication is on.
fn security(st: &AppState) -> Option<Value> {
    if !st.auth.enabled() {
        return None;
    }
    let a = &st.auth.cfg;
    let mut uris = Vec::new();
    for (url, value) in [("authorize", &a.authorization_endpoint), ("token", &a.token_endpoint)] {
        if let Some(v) = value {
            uris.push(json!({"url": url, "valueUri": v}));
        }
    }
    let mut sec = json!({
        "cors": false,
        "service": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}], "text": "OAuth2 bearer tokens (JWT: HS256, RS256, ES256)"}],
        "description": format!(
            "Every request needs Authorization: Bearer <JWT> (or an x-api-key). Group rules from the '{}' claim (FWoA RBAC) and SMART v1/v2 scopes (patient/, user/, system/) are both enforced when present; patient/ scopes are limited to the compartment of the token's patient claim, in reads, searches (totals, _include, _revinclude, chains, _has), history, bundles and writes. See /.well-known/smart-configuration.",
            a.groups_claim
        )
    });
    if !uris.is_empty() {
        sec["extension"] = json!([{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris", "extension": uris}]);
    }
    Some(sec)
}

fn codes(level: Level) -> Vec<Value> {
    let mut seen = Vec::new();
    // Conditional update / delete are flags of the resource entry, not interaction codes.
    for i in INTERACTIONS.iter().filter(|i| i.level == level && !i.code.starts_with("history-system") && !i.code.starts_with("conditional-") && i.code != "search-compartment") {
        let c = json!({"code": i.code});
        if !seen.contains(&c) {
            seen.push(c);
        }
    }
    seen
}

/// `_include` values for `rtype`: each of its reference parameters.
fn includes(st: &AppState, rtype: &str) -> Vec<String> {
    let mut v: Vec<String> = st.search.for_type(rtype).filter(|p| p.def.kind == ParamType::Reference).map(|p| format!("{rtype}:{}", p.def.code)).collect();
    v.sort();
    v.dedup();
    v
}

/// Canonical URLs of the compartments searchable as `/{Compartment}/{id}/{type}`.
fn compartments(st: &AppState) -> Vec<String> {
    let mut v: Vec<String> = st
        .search
        .compartments
        .keys()
        .map(|c| {
            let mut name = c.clone();
            name[..1].make_ascii_lowercase();
            format!("http://hl7.org/fhir/CompartmentDefinition/{name}")
        })
        .collect();
    v.sort();
    v
}

/// `_revinclude` values for `rtype`: every reference parameter that can point at it.
fn revincludes(st: &AppState, rtype: &str) -> Vec<String> {
    let mut v: Vec<String> = st
        .search
        .all
        .iter()
        .filter(|p| p.def.kind == ParamType::Reference && p.def.target.iter().any(|t| t == rtype))
        .flat_map(|p| p.def.base.iter().map(move |b| format!("{b}:{}", p.def.code)))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The search parameters Kiln indexes for `rtype`, with their definitions.
fn search_params(st: &AppState, rtype: &str) -> Vec<Value> {
    let mut out: Vec<Value> = st
        .search
        .for_type(rtype)
        .filter(|p| p.searchable())
        .map(|p| {
            json!({
                "name": p.def.code,
                "definition": p.def.url,
                "type": format!("{:?}", p.def.kind).to_lowercase(),
            })
        })
        .collect();
    if st.meili.is_some() {
        // Full-text search through Meilisearch (crate::meili): every resource has `_content`,
        // the DomainResources (those with a narrative) `_text`.
        out.push(json!({"name": "_content", "definition": "http://hl7.org/fhir/SearchParameter/Resource-content", "type": "string",
            "documentation": "Full-text search (Meilisearch, typo-tolerant) over every string of the resource; relevance order by default, entry.search.score filled"}));
        if !matches!(rtype, "Bundle" | "Binary" | "Parameters") {
            out.push(json!({"name": "_text", "definition": "http://hl7.org/fhir/SearchParameter/DomainResource-text", "type": "string",
                "documentation": "Full-text search (Meilisearch, typo-tolerant) over the narrative (text.div); relevance order by default, entry.search.score filled"}));
        }
    }
    out.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    out.dedup_by(|a, b| a["name"] == b["name"]);
    out
}

/// The `rest.documentation` text: what search supports, depending on Meilisearch.
fn documentation(st: &AppState) -> String {
    let common = "Reads are served by any node; every write is committed through Raft before it is acknowledged. Batch and transaction bundles (POST /): a whole bundle is one Raft entry; transactions are all-or-nothing on every node. Conditional PATCH (PATCH /[type]?search) is supported. Search: every official parameter listed in searchParam (composite ones with token/reference/string/uri leading components; of the special ones, near); modifiers :missing, :exact, :contains (string), :text, :not, :of-type, :in, :not-in, :below, :above (token; :in / :not-in take a ValueSet url, :below / :above system|code, against the shipped FHIR, HL7 v2 and v3 terminology and the CodeSystem / ValueSet resources stored here, at most 10,000 codes; code systems not held, such as SNOMED CT and LOINC, are a 422), :[type], :identifier (reference), :below, :above (uri); prefixes eq ne gt lt ge le sa eb ap. Chaining and _has up to 64 links deep (at most 10,000 links per parameter; beyond: 400 too-costly); _include and _revinclude with :iterate and Type:*.";
    let unsupported = "Not supported (400): _sort on composite parameters, composite parameters with a leading number/date/quantity component";
    match &st.meili {
        Some(m) => format!(
            "{common} _content (every string) and _text (the narrative) are full-text searches answered by Meilisearch, ANDed with the other criteria; ordered by relevance (_sort=_score, the default for them) with entry.search.score; at most {} text matches per query (beyond: 400 too-costly); 503 while Meilisearch is unreachable or behind. {unsupported}, _filter, _list, _query.",
            m.cfg.max_hits
        ),
        None => format!("{common} {unsupported}, _text, _content (this server runs without Meilisearch), _filter, _list, _query."),
    }
}

/// The websocket URL of the Subscription channel, from the FHIR base (`http` → `ws`).
pub fn websocket_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    let ws = match base.strip_prefix("https://") {
        Some(rest) => format!("wss://{rest}"),
        None => format!("ws://{}", base.strip_prefix("http://").unwrap_or(base)),
    };
    format!("{ws}{}", crate::subscription::WS_PATH)
}

/// The Subscription entry's documentation: the channels served, or that none is.
fn subscription_channels(st: &AppState, base: &str) -> String {
    if !st.subscriptions.enabled() {
        return "Subscriptions are stored but not activated: this server serves no subscription channel ([subscriptions] enabled = false).".into();
    }
    let c = &st.subscriptions.rules.cfg;
    format!(
        "Channels served: rest-hook (no payload: an empty POST to the endpoint; payload application/fhir+json: PUT {{endpoint}}/{{type}}/{{id}}, DELETE there for a deletion; channel.header sent), delivered at least once by the cluster leader, retried with backoff, status error after {} failed attempts; websocket at {} (bind {{id}} / bound {{id}} / ping {{id}}). Criteria: a search of this server without chains or _has. At most {} active subscriptions.",
        c.max_retries + 1,
        websocket_url(base),
        c.max_active
    )
}

/// The Bulk Data Access IG's canonical base.
const BULK_DATA: &str = "http://hl7.org/fhir/uv/bulkdata";

/// An operation entry.
fn op_entry(st: &AppState, name: &str, url: &str) -> Value {
    json!({"name": name, "definition": definition(st, url)})
}

/// A Bulk Data export operation entry.
fn operation(st: &AppState, op: &str) -> Value {
    op_entry(st, "export", &format!("{BULK_DATA}/OperationDefinition/{op}"))
}

/// An operation's `definition`: a canonical (STU3: a Reference to it).
fn definition(st: &AppState, url: &str) -> Value {
    if st.defs.version == FhirVersion::Stu3 { json!({"reference": url}) } else { json!(url) }
}

pub fn build(st: &AppState, base: &str) -> Value {
    let mut per_type: Vec<Value> = codes(Level::Instance);
    per_type.extend(codes(Level::Type));
    let resources: Vec<Value> = st
        .defs
        .types
        .iter()
        .map(|t| {
            let mut r = json!({
                "type": t,
                "interaction": per_type,
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": st.cfg.allow_update_create,
                "conditionalCreate": true,
                "conditionalRead": "full-support",
                "conditionalUpdate": true,
                "conditionalDelete": if st.cfg.allow_multiple_conditional_delete { "multiple" } else { "single" },
                "searchParam": search_params(st, t),
                "searchInclude": includes(st, t),
                "searchRevInclude": revincludes(st, t)
            });
            // $validate and the $meta family on every type (crate::http::operations); bulk export at
            // Patient and Group level (crate::export) and $everything on Patient.
            let mut ops: Vec<Value> = crate::http::operations::SERVED.iter().map(|(name, url)| op_entry(st, name, url)).collect();
            match *t {
                "Patient" => {
                    ops.push(operation(st, "patient-export"));
                    ops.push(op_entry(st, "everything", crate::http::operations::EVERYTHING));
                }
                "Group" => ops.push(operation(st, "group-export")),
                _ => {}
            }
            // Terminology operations (crate::http::terminology).
            ops.extend(crate::http::terminology::OPERATIONS.iter().filter(|(rtype, _, _)| rtype == t).map(|(_, name, url)| op_entry(st, name, url)));
            r["operation"] = json!(ops);
            if *t == "Subscription" {
                r["documentation"] = json!(subscription_channels(st, base));
            }
            r
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
        // JSON Patch, and FHIRPath Patch (a Parameters resource).
        "patchFormat": ["application/json-patch+json", "application/fhir+json"],
        "rest": [{
            "mode": "server",
            "compartment": compartments(st),
            "documentation": documentation(st),
            "resource": resources,
            "interaction": system,
            "operation": [operation(st, "export"), op_entry(st, "meta", crate::http::operations::META)]
        }]
    });
    cs["instantiates"] = json!([format!("{BULK_DATA}/CapabilityStatement/bulk-data")]);
    if let Some(sec) = security(st) {
        cs["rest"][0]["security"] = sec;
    }
    if st.subscriptions.enabled() {
        // Where the R4 websocket channel is served (the CapabilityStatement websocket extension).
        cs["rest"][0]["extension"] = json!([{"url": "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket", "valueUri": websocket_url(base)}]);
    }
    if st.defs.version == FhirVersion::Stu3 {
        cs["acceptUnknown"] = json!("no");
    }
    cs
}
