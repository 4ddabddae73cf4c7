//! The OperationOutcome of one issue, as every layer builds it (HTTP errors, batch entries,
//! export error files).

use serde_json::json;

/// An OperationOutcome with one issue.
pub fn operation_outcome(severity: &str, code: &str, diagnostics: &str) -> serde_json::Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": [{ "severity": severity, "code": code, "diagnostics": diagnostics }]
    })
}
