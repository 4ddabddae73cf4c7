//! Authentication and authorization of the FHIR API: who is calling ([`Principal`], from a JWT
//! bearer token or an API key) and what they may do ([`Principal::grant`]: FWoA-style group
//! rules AND SMART on FHIR scopes, each enforced when present).
//!
//! The layers: `crate::http::authenticate` authenticates every request once (401 before any handler runs) and
//! puts the [`Principal`] in the request; the handlers' shared paths (read, search, history,
//! writes, bundle entries) ask `crate::http::guard` before they touch data, so a bundle entry, an `_include`
//! and a plain read pass the same checks. Files: [`config`] (`[auth]`), [`jwt`] (verification,
//! JWKS, cache), [`rbac`] (group rules), [`smart`] (scopes), [`api_keys`], [`token`] (`kiln
//! token`), [`audit`] (one line per request).

pub mod api_keys;
pub mod audit;
pub mod config;
pub mod jwt;
pub mod rbac;
pub mod smart;
pub mod token;

use std::sync::Arc;

pub use config::{AuthConfig, AuthMode};

/// Why a request is not authenticated or not allowed, or why auth cannot start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// No credentials: 401.
    #[error("authentication required: send Authorization: Bearer <token> (or an x-api-key)")]
    Missing,
    /// Credentials that do not verify: 401.
    #[error("invalid credentials: {0}")]
    Invalid(String),
    /// Authenticated but not allowed: 403.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The `[auth]` configuration or one of its files is unusable (at start).
    #[error("auth configuration: {0}")]
    Config(String),
}

/// How a caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `[auth] mode = "none"`: every request may do everything.
    Open,
    Jwt,
    ApiKey,
}

/// A verified caller.
#[derive(Debug, Clone)]
pub struct Principal {
    pub via: Via,
    /// `sub` of the token, or the API key's name.
    pub subject: String,
    /// The groups claim (`groups_claim`), when the token has one: group rules apply.
    pub groups: Option<Vec<String>>,
    /// SMART scopes (`scope` / `scp`), when the token has them: scopes apply.
    pub scopes: Option<smart::Scopes>,
    /// The `patient` launch context (SMART `patient/` scopes are limited to its compartment).
    pub patient: Option<String>,
    /// The tenant claim (`tenant_claim`).
    pub tenant: Option<String>,
    /// Membership of the operator group (`admin_group`).
    pub admin: bool,
}

impl Principal {
    /// The caller of an open server (`mode = "none"`).
    pub fn open() -> Principal {
        Principal { via: Via::Open, subject: "anonymous".into(), groups: None, scopes: None, patient: None, tenant: None, admin: true }
    }
}

/// One FHIR interaction as the rules see it: the CapabilityStatement code (the group rules'
/// `operations` name these) and the SMART v2 permission letter it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Op {
    pub code: &'static str,
    pub smart: char,
}

impl Op {
    pub const READ: Op = Op { code: "read", smart: 'r' };
    pub const VREAD: Op = Op { code: "vread", smart: 'r' };
    pub const HISTORY_INSTANCE: Op = Op { code: "history-instance", smart: 'r' };
    pub const HISTORY_TYPE: Op = Op { code: "history-type", smart: 's' };
    pub const HISTORY_SYSTEM: Op = Op { code: "history-system", smart: 's' };
    pub const SEARCH_TYPE: Op = Op { code: "search-type", smart: 's' };
    pub const SEARCH_SYSTEM: Op = Op { code: "search-system", smart: 's' };
    pub const CREATE: Op = Op { code: "create", smart: 'c' };
    pub const UPDATE: Op = Op { code: "update", smart: 'u' };
    pub const PATCH: Op = Op { code: "patch", smart: 'u' };
    pub const DELETE: Op = Op { code: "delete", smart: 'd' };
}

/// How a type relates to the Patient compartment (what `patient/` scopes may reach of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kinship {
    /// A member type (CompartmentDefinition Patient): limited to the patient's compartment.
    Member,
    /// Shared reference data no patient owns (Medication, Practitioner, ValueSet, …,
    /// [`SHARED_TYPES`]): `patient/` scopes may read and search all of it, never write it.
    Shared,
    /// Anything else outside the compartment (Bundle, Binary, Task, Device, …: they may hold
    /// some patient's data): `patient/` scopes reach none of it.
    Other,
}

/// Types outside the Patient compartment that hold no patient's data.
pub const SHARED_TYPES: &[&str] = &[
    "Medication", "MedicationKnowledge", "MedicinalProduct", "MedicinalProductAuthorization", "MedicinalProductContraindication",
    "MedicinalProductIndication", "MedicinalProductIngredient", "MedicinalProductInteraction", "MedicinalProductManufactured",
    "MedicinalProductPackaged", "MedicinalProductPharmaceutical", "MedicinalProductUndesirableEffect", "Substance",
    "SubstanceNucleicAcid", "SubstancePolymer", "SubstanceProtein", "SubstanceReferenceInformation", "SubstanceSourceMaterial",
    "SubstanceSpecification", "Organization", "OrganizationAffiliation", "Practitioner", "PractitionerRole", "Location",
    "HealthcareService", "Endpoint", "InsurancePlan", "ActivityDefinition", "PlanDefinition", "Questionnaire", "ValueSet",
    "CodeSystem", "ConceptMap", "NamingSystem", "StructureDefinition", "StructureMap", "SearchParameter", "OperationDefinition",
    "CapabilityStatement", "CompartmentDefinition", "ImplementationGuide", "GraphDefinition", "MessageDefinition",
    "EventDefinition", "Library", "Measure", "ObservationDefinition", "SpecimenDefinition", "DeviceDefinition",
    "ChargeItemDefinition", "ResearchDefinition", "ResearchElementDefinition", "Evidence", "EvidenceVariable",
    "EffectEvidenceSynthesis", "RiskEvidenceSynthesis", "ExampleScenario", "TerminologyCapabilities", "TestScript",
    "CatalogEntry", "ResearchStudy", "DataElement", "DataRequirement", "ServiceDefinition", "ExpansionProfile",
];

/// What a principal may reach of one type for one interaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Every resource of the type.
    All,
    /// Only the resources in the compartment of `Patient/{0}` (SMART `patient/` scopes).
    Patient(String),
}

impl Principal {
    /// Whether this principal may perform `op` on `rtype`, and on which resources; `kinship`
    /// gives the type's relation to the Patient compartment (asked only for a `patient/` scope).
    pub fn grant(&self, rules: &rbac::Rules, op: Op, rtype: &str, kinship: impl FnOnce() -> Kinship) -> Result<Grant, AuthError> {
        if self.via == Via::Open {
            return Ok(Grant::All);
        }
        if self.groups.is_none() && self.scopes.is_none() {
            return Err(AuthError::Forbidden(format!("{} has neither groups nor SMART scopes, so it may do nothing", self.subject)));
        }
        if let Some(groups) = &self.groups {
            if !rules.allows(groups, op.code, rtype) {
                return Err(AuthError::Forbidden(format!("no group of {} ({}) allows {} on {rtype}", self.subject, groups.join(","), op.code)));
            }
        }
        let Some(scopes) = &self.scopes else { return Ok(Grant::All) };
        match scopes.reach(rtype, op.smart) {
            smart::Reach::None => Err(AuthError::Forbidden(format!("no SMART scope of {} grants '{}' ({}) on {rtype}", self.subject, op.smart, op.code))),
            smart::Reach::All => Ok(Grant::All),
            smart::Reach::Patient => match kinship() {
                Kinship::Shared if matches!(op.smart, 'r' | 's') => Ok(Grant::All),
                Kinship::Shared => Err(AuthError::Forbidden(format!("patient/ scopes do not write {rtype} (shared data no patient owns)"))),
                Kinship::Other => Err(AuthError::Forbidden(format!("patient/ scopes do not reach {rtype}: it is outside the Patient compartment and may hold other patients' data"))),
                Kinship::Member => match &self.patient {
                    Some(p) => Ok(Grant::Patient(p.clone())),
                    None => Err(AuthError::Forbidden(format!("the patient/ scope on {rtype} needs a patient claim in the token (the launch context)"))),
                },
            },
        }
    }

    /// Whether the principal may run a bundle of this kind (`transaction` / `batch`) at all; each
    /// entry is then checked as its own interaction.
    pub fn allows_bundle(&self, rules: &rbac::Rules, kind: &str) -> Result<(), AuthError> {
        match &self.groups {
            Some(groups) if self.via != Via::Open && !rules.allows_any(groups, kind) => {
                Err(AuthError::Forbidden(format!("no group of {} allows {kind}", self.subject)))
            }
            _ => Ok(()),
        }
    }
}

/// Everything a node needs to authenticate requests: built once at start from `[auth]`.
pub struct Authority {
    pub cfg: AuthConfig,
    pub rules: rbac::Rules,
    verifier: Option<jwt::Verifier>,
    keys: api_keys::ApiKeys,
    open: Arc<Principal>,
    /// The audit log, when on (`audit_log`, default: with `mode = "jwt"`).
    pub audit: Option<Arc<audit::AuditLog>>,
}

impl Authority {
    pub fn load(cfg: &AuthConfig) -> Result<Authority, AuthError> {
        let rules = match &cfg.rules_file {
            Some(path) => rbac::Rules::from_file(path)?,
            None => rbac::Rules::fwoa_default(),
        };
        let keys = match &cfg.api_keys_file {
            Some(path) => api_keys::ApiKeys::from_file(path)?,
            None => api_keys::ApiKeys::default(),
        };
        let verifier = match cfg.mode {
            AuthMode::None => None,
            AuthMode::Jwt => Some(jwt::Verifier::new(cfg)?),
        };
        let audit = match cfg.audit_log.unwrap_or(cfg.mode == AuthMode::Jwt) {
            true => Some(audit::AuditLog::open(cfg.audit_file.as_deref())?),
            false => None,
        };
        Ok(Authority { cfg: cfg.clone(), rules, verifier, keys, open: Arc::new(Principal::open()), audit })
    }

    /// The principal of every request when auth is off.
    pub fn open(&self) -> Arc<Principal> {
        self.open.clone()
    }

    pub fn enabled(&self) -> bool {
        self.verifier.is_some()
    }

    /// Authenticates a request from its `Authorization` / `x-api-key` headers.
    pub fn authenticate(&self, authorization: Option<&str>, api_key: Option<&str>) -> Result<Arc<Principal>, AuthError> {
        let Some(verifier) = &self.verifier else { return Ok(self.open.clone()) };
        if let Some(h) = authorization {
            let token = h
                .strip_prefix("Bearer ")
                .or_else(|| h.strip_prefix("bearer "))
                .ok_or_else(|| AuthError::Invalid("the Authorization header must be 'Bearer <token>'".into()))?;
            return verifier.verify(token.trim());
        }
        if let Some(k) = api_key {
            let (name, group) = self.keys.lookup(k).ok_or_else(|| AuthError::Invalid("unknown API key".into()))?;
            return Ok(Arc::new(Principal {
                via: Via::ApiKey,
                subject: name.to_string(),
                admin: group == self.cfg.admin_group,
                groups: Some(vec![group.to_string()]),
                scopes: None,
                patient: None,
                tenant: None,
            }));
        }
        Err(AuthError::Missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt_principal(groups: Option<&[&str]>, scope: Option<&str>, patient: Option<&str>) -> Principal {
        Principal {
            via: Via::Jwt,
            subject: "t".into(),
            groups: groups.map(|g| g.iter().map(|s| s.to_string()).collect()),
            scopes: scope.map(smart::Scopes::parse),
            patient: patient.map(String::from),
            tenant: None,
            admin: false,
        }
    }

    #[test]
    fn groups_and_scopes_are_both_enforced() {
        let rules = rbac::Rules::fwoa_default();
        let both = jwt_principal(Some(&["practitioner"]), Some("patient/Observation.rs"), Some("p1"));
        assert_eq!(both.grant(&rules, Op::READ, "Observation", || Kinship::Member).unwrap(), Grant::Patient("p1".into()));
        assert!(both.grant(&rules, Op::CREATE, "Observation", || Kinship::Member).is_err(), "the scope has no c");
        assert!(both.grant(&rules, Op::READ, "Patient", || Kinship::Member).is_err(), "no scope on Patient");
        let auditor = jwt_principal(Some(&["auditor"]), Some("user/*.cruds"), None);
        assert!(auditor.grant(&rules, Op::UPDATE, "Patient", || Kinship::Member).is_err(), "the group is read-only");
        assert_eq!(auditor.grant(&rules, Op::READ, "Patient", || Kinship::Member).unwrap(), Grant::All);
        let nothing = jwt_principal(None, None, None);
        assert!(nothing.grant(&rules, Op::READ, "Patient", || Kinship::Member).is_err());
        let no_context = jwt_principal(None, Some("patient/*.rs"), None);
        assert!(no_context.grant(&rules, Op::READ, "Observation", || Kinship::Member).is_err());
        assert_eq!(no_context.grant(&rules, Op::READ, "Medication", || Kinship::Shared).unwrap(), Grant::All);
        let writer = jwt_principal(None, Some("patient/*.cruds"), Some("p1"));
        assert!(writer.grant(&rules, Op::DELETE, "Practitioner", || Kinship::Shared).is_err(), "shared data is read-only to patient/ scopes");
        assert!(writer.grant(&rules, Op::READ, "Bundle", || Kinship::Other).is_err(), "a Bundle may hold anyone's data");
        assert_eq!(Principal::open().grant(&rules, Op::DELETE, "Patient", || Kinship::Member).unwrap(), Grant::All);
    }
}
