//! Group rules (FWoA's RBAC model): a group allows a set of interactions (CapabilityStatement
//! codes: `read`, `vread`, `search-type`, `create`, …) on a set of resource types (`*`: all). The
//! rules file is FWoA's JSON shape: `{"version": 1.0, "groupRules": {"name": {"operations":
//! [...], "resources": [...]}}}`. A caller is allowed what any of its groups allows.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;

use super::AuthError;

/// Every interaction code a rule may name.
pub const OPERATIONS: &[&str] = &[
    "read",
    "vread",
    "search-type",
    "search-system",
    "history-instance",
    "history-type",
    "history-system",
    "create",
    "update",
    "patch",
    "delete",
    "transaction",
    "batch",
];

/// FWoA's `non-practitioner` types.
pub const FINANCIAL_RESOURCES: &[&str] = &[
    "Coverage",
    "CoverageEligibilityRequest",
    "CoverageEligibilityResponse",
    "EnrollmentRequest",
    "EnrollmentResponse",
    "Claim",
    "ClaimResponse",
    "Invoice",
    "PaymentNotice",
    "PaymentReconciliation",
    "Account",
    "ChargeItem",
    "ChargeItemDefinition",
    "Contract",
    "ExplanationOfBenefit",
    "InsurancePlan",
];

#[derive(Debug, Clone, Deserialize)]
struct Rule {
    operations: Vec<String>,
    resources: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RulesFile {
    #[allow(dead_code)]
    version: Option<f64>,
    group_rules: HashMap<String, Rule>,
}

/// The loaded rules.
#[derive(Debug, Clone)]
pub struct Rules {
    groups: HashMap<String, Rule>,
}

impl Rules {
    /// FWoA's defaults: `practitioner` may do everything on every type, `non-practitioner` may
    /// read and search the financial types, `auditor` may read and search Patients.
    pub fn fwoa_default() -> Rules {
        let ops = |o: &[&str]| o.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let read_only = ops(&["read", "vread", "search-type"]);
        let mut groups = HashMap::new();
        groups.insert("practitioner".to_string(), Rule { operations: ops(OPERATIONS), resources: vec!["*".into()] });
        groups.insert("non-practitioner".to_string(), Rule { operations: read_only.clone(), resources: ops(FINANCIAL_RESOURCES) });
        groups.insert("auditor".to_string(), Rule { operations: read_only, resources: vec!["Patient".into()] });
        Rules { groups }
    }

    pub fn from_file(path: &Path) -> Result<Rules, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|e| AuthError::Config(format!("rules_file {}: {e}", path.display())))?;
        Self::parse(&text).map_err(|e| AuthError::Config(format!("rules_file {}: {e}", path.display())))
    }

    pub fn parse(text: &str) -> Result<Rules, String> {
        let file: RulesFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        for (name, rule) in &file.group_rules {
            if let Some(op) = rule.operations.iter().find(|o| !OPERATIONS.contains(&o.as_str())) {
                return Err(format!("group {name}: unknown operation '{op}' (known: {})", OPERATIONS.join(", ")));
            }
        }
        Ok(Rules { groups: file.group_rules })
    }

    /// Whether one of `groups` allows `op` on `rtype`.
    pub fn allows(&self, groups: &[String], op: &str, rtype: &str) -> bool {
        groups.iter().filter_map(|g| self.groups.get(g)).any(|r| {
            r.operations.iter().any(|o| o == op) && r.resources.iter().any(|t| t == "*" || t == rtype)
        })
    }

    /// Whether one of `groups` allows `op` on some type (transaction, batch).
    pub fn allows_any(&self, groups: &[String], op: &str) -> bool {
        groups.iter().filter_map(|g| self.groups.get(g)).any(|r| r.operations.iter().any(|o| o == op))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn fwoa_defaults() {
        let r = Rules::fwoa_default();
        for op in OPERATIONS {
            assert!(r.allows(&g(&["practitioner"]), op, "Observation"));
        }
        assert!(r.allows(&g(&["non-practitioner"]), "read", "Claim"));
        assert!(!r.allows(&g(&["non-practitioner"]), "read", "Patient"));
        assert!(!r.allows(&g(&["non-practitioner"]), "create", "Claim"));
        assert!(r.allows(&g(&["auditor"]), "search-type", "Patient"));
        assert!(!r.allows(&g(&["auditor"]), "update", "Patient"));
        assert!(!r.allows(&g(&["auditor"]), "read", "Observation"));
        assert!(!r.allows(&g(&["nobody"]), "read", "Patient"));
        assert!(r.allows(&g(&["nobody", "auditor"]), "read", "Patient"), "any group suffices");
    }

    #[test]
    fn a_rules_file_in_fwoa_shape() {
        let r = Rules::parse(r#"{"version": 1.0, "groupRules": {"nurse": {"operations": ["read", "search-type"], "resources": ["Observation"]}}}"#).unwrap();
        assert!(r.allows(&g(&["nurse"]), "read", "Observation"));
        assert!(!r.allows(&g(&["practitioner"]), "read", "Observation"), "a file replaces the defaults");
        assert!(Rules::parse(r#"{"groupRules": {"x": {"operations": ["fly"], "resources": ["*"]}}}"#).unwrap_err().contains("fly"));
    }
}
