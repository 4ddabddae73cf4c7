//! The one error table: every error a request can meet, from every module, mapped to an HTTP status
//! and a FHIR `issue.code`, and rendered as an OperationOutcome whose diagnostics say what to fix.
//!
//! One thread-local stays, on purpose: the FHIR version of the node an HTTP worker serves
//! ([`set_thread_version`], set by the app factory), because actix renders an error through
//! `ResponseError::error_response(&self)`, which sees neither the request nor the app state, and
//! a few issue codes differ in STU3.

use std::cell::Cell;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::actors::WriteError;
use crate::auth::AuthError;
use crate::binary::BinaryError;
use crate::objects::ObjectsError;
use crate::http::operations::OperationError;
use crate::tenancy::TenancyError;
use crate::terminology::TerminologyError;
use crate::config::ConfigError;
use crate::consensus::ConsensusError;
use crate::export::ExportError;
use crate::fhir::{schema_heading, FhirError, FhirVersion, Issue};
use crate::http::RequestError;
use crate::meili::MeiliError;
use crate::metrics::MetricsError;
use crate::search::query::SearchError;
use crate::store::StoreError;
use crate::subscription::SubscriptionError;

/// Any error that ends a request.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Fhir(#[from] FhirError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
    #[error(transparent)]
    Write(#[from] WriteError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Search(#[from] SearchError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error(transparent)]
    Tenancy(#[from] TenancyError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Objects(#[from] ObjectsError),
    #[error(transparent)]
    Binary(#[from] BinaryError),
    #[error(transparent)]
    Meili(#[from] MeiliError),
    #[error(transparent)]
    Operation(#[from] OperationError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Terminology(#[from] TerminologyError),
    #[error(transparent)]
    Subscription(#[from] SubscriptionError),
    /// A batch / transaction entry failed: `label` names it ("Bundle.entry[3] (PUT Patient/1)").
    #[error("{label}: {cause}")]
    Entry { label: String, cause: Box<ApiError> },
}

/// `(HTTP status, FHIR issue code)` of an error: the table.
pub fn classify(e: &ApiError) -> (u16, &'static str) {
    match e {
        ApiError::Request(r) => match r {
            RequestError::NotAcceptable(_) => (406, "not-supported"),
            RequestError::UnsupportedMediaType(_) => (415, "not-supported"),
            RequestError::InvalidJson(_) => (400, "structure"),
            RequestError::BodyTooLarge { .. } | RequestError::TooManyEntries { .. } => (413, "too-costly"),
            RequestError::BadParameter { .. } => (400, "value"),
            RequestError::UnknownParameter(_) => (400, "not-supported"),
            RequestError::BadHeader { .. } => (400, "value"),
            RequestError::NotImplemented(_) => (501, "not-supported"),
            RequestError::MethodNotAllowed(_) => (405, "not-supported"),
            RequestError::NoRoute(_) => (404, "not-found"),
            RequestError::InvalidPatch(_) => (400, "structure"),
            RequestError::PatchFailed(_) => (422, "processing"),
            RequestError::PatchChangesIdentity => (422, "business-rule"),
            RequestError::PatchTooCostly(_) => (422, "too-costly"),
            RequestError::PreconditionFailed(_) => (412, "conflict"),
            RequestError::Unauthorized(_) => (401, "login"),
            RequestError::Busy(_) => (503, "throttled"),
            RequestError::TooManyRequests(_) => (429, "throttled"),
            RequestError::TooCostly(_) => (400, "too-costly"),
            RequestError::ResponseTooLarge { .. } => (413, "too-costly"),
            RequestError::BodyStalled { .. } | RequestError::BodyTooSlow { .. } => (408, "timeout"),
            RequestError::UriTooLong { .. } => (414, "too-costly"),
        },
        ApiError::Fhir(f) => classify_fhir(f),
        ApiError::Store(s) => classify_store(s),
        ApiError::Consensus(c) => classify_consensus(c),
        ApiError::Write(w) => match w {
            WriteError::Fhir(f) => classify_fhir(f),
            WriteError::Store(s) => classify_store(s),
            WriteError::Consensus(c) => classify_consensus(c),
            WriteError::MissingBody(_) => (400, "required"),
            WriteError::Mailbox(_) => (503, "transient"),
            WriteError::Hook(h) => match h.downcast_ref::<SubscriptionError>() {
                Some(s) => classify_subscription(s),
                None => (400, "invalid"),
            },
        },
        ApiError::Config(_) => (500, "exception"),
        ApiError::Search(e) => match e {
            SearchError::UnknownParameter { .. } => (400, "not-supported"),
            SearchError::BadValue { .. } => (400, "value"),
            SearchError::NotSupported(_) => (400, "not-supported"),
            SearchError::TooCostly(_) => (400, "too-costly"),
            SearchError::Terminology(t) => classify_terminology(t),
            SearchError::Store(s) => classify_store(s),
        },
        ApiError::Terminology(t) => classify_terminology(t),
        ApiError::Auth(a) => match a {
            AuthError::Missing | AuthError::Invalid(_) => (401, "login"),
            AuthError::Forbidden(_) => (403, "forbidden"),
            AuthError::Config(_) => (500, "exception"),
        },
        ApiError::Tenancy(t) => match t {
            TenancyError::Invalid(_) => (400, "value"),
            TenancyError::Unknown(_) => (404, "not-found"),
            TenancyError::Mismatch { .. } | TenancyError::NoClaim(_) => (403, "forbidden"),
        },
        ApiError::Export(e) => match e {
            ExportError::BadParameter { .. } => (400, "value"),
            ExportError::Unsupported(_) => (400, "not-supported"),
            ExportError::NoJob(_) | ExportError::NoFile { .. } => (404, "not-found"),
            ExportError::TooManyActive { .. } | ExportError::TooManyOwned { .. } | ExportError::TooManyKept { .. } => (429, "throttled"),
            ExportError::Failed(_) => (500, "exception"),
            ExportError::Sink(_) => (500, "exception"),
            ExportError::Objects(o) => classify_objects(o),
            ExportError::Internal(_) => (500, "exception"),
            ExportError::Store(s) => classify_store(s),
            ExportError::Consensus(c) => classify_consensus(c),
        },
        ApiError::Objects(o) => classify_objects(o),
        ApiError::Binary(b) => match b {
            BinaryError::NeedsS3(_) => (501, "not-supported"),
            BinaryError::ClusterNeedsS3 { .. } | BinaryError::TooLarge { .. } => (413, "too-costly"),
            BinaryError::Forged(_) => (400, "invalid"),
            BinaryError::NotPresignable(_) => (400, "not-supported"),
            BinaryError::Body(_) => (400, "structure"),
            BinaryError::Objects(o) => classify_objects(o),
        },
        ApiError::Meili(e) => match e {
            MeiliError::NotConfigured(_) => (400, "not-supported"),
            MeiliError::Unavailable { .. } | MeiliError::Behind { .. } => (503, "transient"),
            MeiliError::BadKey(_) => (503, "security"),
            MeiliError::Task(_) => (502, "exception"),
            MeiliError::TooMany { .. } | MeiliError::TooDeep { .. } => (400, "too-costly"),
            MeiliError::BadValue { .. } => (400, "value"),
            MeiliError::Store(s) => classify_store(s),
            MeiliError::Consensus(c) => classify_consensus(c),
        },
        ApiError::Operation(e) => match e {
            OperationError::BadParameter { .. } => (400, "value"),
            // A version-level $meta-add / $meta-delete: understood, refused by design.
            OperationError::NotSupported(_) => (422, "not-supported"),
            OperationError::TooCostly(_) => (422, "too-costly"),
        },
        ApiError::Metrics(m) => match m {
            MetricsError::Register { .. } | MetricsError::Encode(_) => (500, "exception"),
        },
        ApiError::Subscription(s) => classify_subscription(s),
        ApiError::Entry { cause, .. } => classify(cause),
    }
}

/// Terminology: a system Kiln does not hold, or an expansion past its bound, is unprocessable
/// (422) with the system or the limit named; bad input is a 400.
fn classify_terminology(t: &TerminologyError) -> (u16, &'static str) {
    match t {
        TerminologyError::UnknownValueSet(_) => (400, "not-found"),
        TerminologyError::UnknownCode { .. } => (404, "not-found"),
        TerminologyError::NotHeld { .. } | TerminologyError::Unsupported(_) => (422, "not-supported"),
        TerminologyError::TooLarge { .. } => (422, "too-costly"),
        TerminologyError::Ambiguous { .. } => (400, "multiple-matches"),
        TerminologyError::BadParameter { .. } => (400, "value"),
        TerminologyError::Invalid(_) => (400, "invalid"),
        TerminologyError::TooCostly(_) => (400, "too-costly"),
        TerminologyError::Store(s) => classify_store(s),
    }
}

fn classify_subscription(e: &SubscriptionError) -> (u16, &'static str) {
    match e {
        SubscriptionError::Criteria(_) | SubscriptionError::Invalid(_) => (400, "invalid"),
        SubscriptionError::Search(s) => classify(&ApiError::Search(s.clone())),
        SubscriptionError::ChannelNotSupported(_) => (400, "not-supported"),
        SubscriptionError::Disabled => (404, "not-supported"),
        SubscriptionError::TooManySockets { .. } => (503, "throttled"),
        SubscriptionError::Internal(_) => (500, "exception"),
        SubscriptionError::Store(s) => classify_store(s),
        SubscriptionError::Consensus(c) => classify_consensus(c),
    }
}

/// Object storage: the bucket's faults are the gateway's (502 / 503), never the client's.
fn classify_objects(o: &ObjectsError) -> (u16, &'static str) {
    match o {
        ObjectsError::Config(_) => (500, "exception"),
        ObjectsError::Credentials { .. } | ObjectsError::Failed { .. } | ObjectsError::NoBucket { .. } => (502, "exception"),
        ObjectsError::Unavailable { .. } => (503, "transient"),
        ObjectsError::NotFound { .. } => (404, "not-found"),
    }
}

fn classify_store(s: &StoreError) -> (u16, &'static str) {
    match s {
        StoreError::Storage(_) | StoreError::Corrupt(_) => (500, "exception"),
        StoreError::NotFound { .. } | StoreError::VersionNotFound { .. } => (404, "not-found"),
        StoreError::Gone { .. } => (410, "deleted"),
        StoreError::VersionConflict { .. } => (412, "conflict"),
        StoreError::CreateViaUpdateDisabled { .. } => (405, "not-supported"),
        StoreError::AlreadyExists { .. } => (409, "duplicate"),
        StoreError::InvalidCursor => (400, "value"),
        StoreError::TooCostly(_) => (400, "too-costly"),
        StoreError::MultipleMatches { .. } => (412, "multiple-matches"),
        StoreError::BadCondition(_) => (400, "invalid"),
        StoreError::NoneMatchFailed { .. } => (412, "conflict"),
        StoreError::BadReference(_) => (400, "invalid"),
        StoreError::DuplicateTarget(_) => (400, "business-rule"),
        StoreError::EntryFailed { reason, .. } => classify_store(reason),
    }
}

fn classify_consensus(c: &ConsensusError) -> (u16, &'static str) {
    match c {
        ConsensusError::Stopped | ConsensusError::NoLeader | ConsensusError::Dropped => (503, "transient"),
        ConsensusError::StoppedOutcomeUnknown => (503, "timeout"),
        ConsensusError::NotLeader(_) => (503, "transient"),
        ConsensusError::Timeout(_) | ConsensusError::NoLeaderTimeout(_) | ConsensusError::OutcomeUnknown => (503, "timeout"),
        ConsensusError::Membership(_) => (409, "conflict"),
        ConsensusError::TooLarge { .. } => (413, "too-costly"),
        ConsensusError::Refused(_) => (400, "invalid"),
        ConsensusError::Transport(_) => (500, "exception"),
        ConsensusError::Busy(_) => (503, "transient"),
        ConsensusError::Raft(_) | ConsensusError::Storage(_) => (500, "exception"),
    }
}

fn classify_fhir(f: &FhirError) -> (u16, &'static str) {
    match f {
        FhirError::UnknownType(..) => (404, "not-supported"),
        FhirError::InvalidId(_) => (400, "value"),
        FhirError::NotAnObject => (400, "structure"),
        FhirError::TypeMismatch { .. } => (400, "invalid"),
        FhirError::MissingResourceType => (400, "required"),
        FhirError::IdMismatch { .. } => (400, "invalid"),
        FhirError::MissingId(_) => (400, "required"),
        FhirError::Schema { .. } => (400, "structure"),
        FhirError::TooDeep(_) => (400, "too-costly"),
    }
}

thread_local! {
    /// The FHIR version of the node whose HTTP worker runs on this thread (set by the app factory).
    static THREAD_VERSION: Cell<FhirVersion> = const { Cell::new(FhirVersion::R4) };
}

/// Records the FHIR version served by this worker thread (issue codes differ slightly in STU3).
pub fn set_thread_version(v: FhirVersion) {
    THREAD_VERSION.with(|c| c.set(v));
}

/// The schema issues an error carries, and the text that precedes each one's diagnostics.
fn schema_issues(e: &ApiError) -> Option<(String, &[Issue])> {
    match e {
        ApiError::Fhir(FhirError::Schema { version, rtype, issues })
        | ApiError::Write(WriteError::Fhir(FhirError::Schema { version, rtype, issues })) => {
            Some((schema_heading(*version, rtype), issues))
        }
        ApiError::Entry { label, cause } => schema_issues(cause).map(|(heading, issues)| (format!("{label}: {heading}"), issues)),
        _ => None,
    }
}

/// The OperationOutcome of an error: one issue per schema problem, located by its FHIRPath
/// `expression`, else one issue.
pub fn error_outcome(e: &ApiError, code: &str) -> serde_json::Value {
    let Some((heading, issues)) = schema_issues(e) else {
        return operation_outcome("error", code, &e.to_string());
    };
    let issues: Vec<serde_json::Value> = issues
        .iter()
        .map(|i| json!({"severity": "error", "code": code, "diagnostics": format!("{heading}{}", i.diagnostics), "expression": [i.expression]}))
        .collect();
    json!({"resourceType": "OperationOutcome", "issue": issues})
}

pub use crate::fhir::outcome::operation_outcome;

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(classify(self).0).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        let (status, mut code) = classify(self);
        if THREAD_VERSION.with(Cell::get) == FhirVersion::Stu3 {
            // STU3's IssueType has neither "deleted" nor "multiple-matches".
            code = match code {
                "deleted" => "not-found",
                "multiple-matches" => "conflict",
                other => other,
            };
        }
        if status >= 500 {
            tracing::error!("{self}");
        }
        let body = error_outcome(self, code);
        let mut b = HttpResponse::build(self.status_code());
        if status == 401 {
            // RFC 6750: say how to authenticate, and why a token was refused.
            let challenge = match self {
                ApiError::Auth(AuthError::Invalid(why)) => format!("Bearer realm=\"kiln\", error=\"invalid_token\", error_description=\"{}\"", why.replace(['"', '\\'], "'")),
                _ => "Bearer realm=\"kiln\"".to_string(),
            };
            b.insert_header((actix_web::http::header::WWW_AUTHENTICATE, challenge));
        }
        // When to try again (RFC 9110): a limit that frees up (429), a node that is busy or
        // between leaders (503).
        match (status, code) {
            // A caller's fair share frees up when one of its requests ends.
            (429, _) if matches!(self, ApiError::Request(RequestError::TooManyRequests(_))) => {
                b.insert_header((actix_web::http::header::RETRY_AFTER, "1"));
            }
            (429, _) => {
                b.insert_header((actix_web::http::header::RETRY_AFTER, "30"));
            }
            (503, "transient" | "throttled" | "timeout") => {
                b.insert_header((actix_web::http::header::RETRY_AFTER, "1"));
            }
            _ => {}
        }
        b.content_type(crate::http::negotiate::FHIR_JSON).body(serde_json::to_vec(&body).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_examples() {
        let gone = ApiError::Store(StoreError::Gone { rtype: "Patient".into(), id: "a".into(), version: 2 });
        assert_eq!(classify(&gone), (410, "deleted"));
        let conflict = ApiError::Write(WriteError::Store(StoreError::VersionConflict {
            rtype: "Patient".into(),
            id: "a".into(),
            expected: 1,
            current: Some(2),
        }));
        assert_eq!(classify(&conflict), (412, "conflict"));
        let unknown = ApiError::Fhir(FhirError::UnknownType("Foo".into(), FhirVersion::R4));
        assert_eq!(classify(&unknown), (404, "not-supported"));
        assert!(unknown.to_string().contains("Foo"));
        assert_eq!(classify(&ApiError::Consensus(ConsensusError::Timeout(5))), (503, "timeout"));
        // A write the stopping loop had already sent on may be applied: never "transient" (retry).
        let unknown = ApiError::Consensus(ConsensusError::StoppedOutcomeUnknown);
        assert_eq!(classify(&unknown), (503, "timeout"));
        assert!(unknown.to_string().contains("may have been applied"));
        assert_eq!(classify(&ApiError::Consensus(ConsensusError::Stopped)), (503, "transient"));
        let creds = ApiError::Objects(ObjectsError::Credentials { status: 403, place: "bucket b at endpoint e".into(), detail: "SignatureDoesNotMatch".into() });
        assert_eq!(classify(&creds), (502, "exception"));
        assert!(creds.to_string().contains("refused the credentials (403) for bucket b at endpoint e"));
        let down = ApiError::Objects(ObjectsError::Unavailable { place: "p".into(), detail: "connection refused".into() });
        assert_eq!(classify(&down), (503, "transient"));
        assert_eq!(classify(&ApiError::Binary(BinaryError::ClusterNeedsS3 { limit: 1 })), (413, "too-costly"));
    }

    #[test]
    fn schema_errors_give_one_issue_each_with_expression() {
        let defs = crate::fhir::Definitions::load(FhirVersion::R4);
        let body = json!({"resourceType": "Patient", "gender": "bogus", "name": [{"given": "Jo"}]});
        let err = ApiError::Entry { label: "Bundle.entry[2] (POST Patient)".into(), cause: Box::new(defs.validate("Patient", &body, 64).unwrap_err().into()) };
        assert_eq!(classify(&err), (400, "structure"));
        let oo = error_outcome(&err, "structure");
        let issues = oo["issue"].as_array().unwrap();
        assert_eq!(issues.len(), 2, "{oo}");
        let mut expressions: Vec<&str> = issues.iter().map(|i| i["expression"][0].as_str().unwrap()).collect();
        expressions.sort();
        assert_eq!(expressions, ["Patient.gender", "Patient.name[0].given"]);
        for issue in issues {
            let diag = issue["diagnostics"].as_str().unwrap();
            assert!(diag.starts_with("Bundle.entry[2] (POST Patient): the body is not valid R4 (4.0.1) Patient: at /"), "{diag}");
            assert_eq!(issue["code"], "structure");
        }
        let one = error_outcome(&ApiError::Fhir(FhirError::NotAnObject), "structure");
        assert_eq!(one["issue"].as_array().unwrap().len(), 1);
        assert!(one["issue"][0].get("expression").is_none());
    }
}
