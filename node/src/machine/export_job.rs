//! The replicated state of a bulk export job: what was asked ([`ExportSpec`]), the instant the
//! export is consistent with (`as_of`), which output parts are written ([`Part`]), where the
//! writer stands ([`Cursor`]) and how the job ended ([`Status`]). Every change is a Raft command
//! ([`ExportOp`]) applied identically on every node, so any node answers the status URL and a
//! new leader resumes from the last checkpoint.

use serde::{Deserialize, Serialize};

/// The level of the kick-off request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Level {
    /// `[base]/$export`: every type.
    System,
    /// `[base]/Patient/$export`: the Patient compartment of every patient (or of `patient`).
    Patient,
    /// `[base]/Group/[id]/$export`: the compartments of the Group's patient members.
    Group(String),
}

/// Where the NDJSON parts go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SinkKind {
    /// Files under the data folder, served by the nodes (`requiresAccessToken: true`).
    Local,
    /// Objects in the `[s3]` bucket, handed out as presigned GET URLs.
    S3,
}

/// What a kick-off asked for, checked and resolved by the node that received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportSpec {
    pub level: Level,
    /// The tenant the export reads (`None`: the default tenant).
    pub tenant: Option<String>,
    /// Who asked (`sub` or API key name): only they (or an operator) see the status and files.
    pub owner: String,
    /// The kick-off URL as the client sent it (the manifest's `request`).
    pub request: String,
    /// The types to export, in output order.
    pub types: Vec<String>,
    /// `_since`: only resources whose version as of `as_of` was written after this (µs).
    pub since: Option<u64>,
    /// `_typeFilter`: per type, searches whose matches (any of them) are exported.
    pub type_filters: Vec<(String, Vec<(String, String)>)>,
    /// `_elements`: (type or `None` for every type, element name).
    pub elements: Vec<(Option<String>, String)>,
    /// `patient`: limits a Patient or Group export to these patients.
    pub patients: Vec<String>,
    pub sink: SinkKind,
    /// Parameters ignored under `Prefer: handling=lenient` (reported in the manifest's `error`).
    pub ignored: Vec<String>,
    /// Where a part ends (from the kick-off node's `[export]`): fixed in the job so that every
    /// node cuts the same parts, whatever its own configuration.
    pub part_max_lines: u64,
    pub part_max_bytes: u64,
    /// Active jobs the cluster (per tenant) may hold, and jobs one owner may hold: a kick-off
    /// beyond them is refused at apply, identically everywhere.
    pub max_active: u32,
    pub max_per_owner: u32,
}

/// Bounds on what one kick-off may carry (its spec is replicated and rewritten with the job).
pub const MAX_TYPES: usize = 400;
pub const MAX_FILTERS: usize = 100;
pub const MAX_ELEMENTS: usize = 200;
pub const MAX_PATIENTS: usize = 1000;
pub const MAX_IGNORED: usize = 50;
/// Characters of one filter, element or ignored parameter, and of the request URL.
pub const MAX_TEXT: usize = 4096;
/// Jobs of any status the cluster holds; past it a kick-off is refused until some expire.
pub const MAX_JOBS: usize = 1000;

/// The end (or not) of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Active,
    Complete,
    Failed(String),
    /// Cancelled by the client: the status URL answers 404 from now on; outputs are deleted.
    Cancelled,
}

/// Where the writer stands: the type being exported and the last id visited of it (ordered:
/// type first, then id; `None` is the start of the type).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cursor {
    pub type_index: usize,
    pub after: Option<String>,
}

/// One written output file: the resources of `rtype` with ids in `(after, last]` that the
/// export selects. Its content is a function of the replicated state and the job, so any node
/// can write it again byte for byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub rtype: String,
    /// Part number within the job (0, 1, …): the file is `{rtype}-{n}.ndjson`.
    pub n: u32,
    pub count: u64,
    pub bytes: u64,
    pub after: Option<String>,
    pub last: String,
}

impl Part {
    /// Whether this part may follow a job whose writer stands at `at`: it is the next part and
    /// starts where the writer stands, or at the start of a later type (the types between were
    /// empty), and `next` does not move the writer back.
    pub fn follows(&self, types: &[String], parts: usize, at: &Cursor, next: &Cursor) -> bool {
        let Some(i) = types.iter().position(|t| *t == self.rtype) else { return false };
        let starts = if i == at.type_index { self.after == at.after } else { i > at.type_index && self.after.is_none() };
        self.n as usize == parts && starts && *next >= (Cursor { type_index: i, after: Some(self.last.clone()) })
    }

    /// The file name of the part.
    pub fn file(&self) -> String {
        file_name(&self.rtype, self.n)
    }
}

/// `{rtype}-{n}.ndjson`.
pub fn file_name(rtype: &str, n: u32) -> String {
    format!("{rtype}-{n}.ndjson")
}

/// A job as every node holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub spec: ExportSpec,
    /// The export holds exactly the writes with timestamps up to this instant (µs): the
    /// manifest's `transactionTime`. Later writes get later timestamps.
    pub as_of: u64,
    /// Group export: the member patients as of `as_of` (sorted).
    pub members: Option<Vec<String>>,
    pub status: Status,
    pub parts: Vec<Part>,
    pub cursor: Cursor,
    /// When the job completed, failed or was cancelled (µs, the leader's clock).
    pub finished: Option<u64>,
}

impl Job {
    pub fn is_active(&self) -> bool {
        self.status == Status::Active
    }

    /// Whether the writer has passed every type.
    pub fn at_end(&self) -> bool {
        self.cursor.type_index >= self.spec.types.len()
    }

    /// The patients whose compartments a Patient or Group export covers (`None`: every patient).
    pub fn patient_set(&self) -> Option<Vec<String>> {
        let given = (!self.spec.patients.is_empty()).then(|| {
            let mut p = self.spec.patients.clone();
            p.sort();
            p.dedup();
            p
        });
        match (&self.members, given) {
            (Some(m), Some(p)) => Some(p.into_iter().filter(|id| m.binary_search(id).is_ok()).collect()),
            (Some(m), None) => Some(m.clone()),
            (None, p) => p,
        }
    }

    /// Resources written so far (`X-Progress`).
    pub fn written(&self) -> u64 {
        self.parts.iter().map(|p| p.count).sum()
    }
}

/// A change to the export jobs, proposed through Raft.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ExportOp {
    /// A kick-off: the job starts consistent with everything applied before this entry.
    Start { job: String, ts_micros: u64, spec: ExportSpec },
    /// A part was written durably and the cursor moved past it (or past empty types).
    Checkpoint { job: String, part: Option<Part>, cursor: Cursor },
    /// Every type is written.
    Complete { job: String, ts_micros: u64 },
    /// The job cannot go on (storage refused, a filter failed).
    Fail { job: String, ts_micros: u64, error: String },
    /// `DELETE` on the status URL.
    Cancel { job: String, ts_micros: u64 },
    /// The job's outputs are deleted (expired or cancelled): forget it.
    Remove { job: String },
}

impl ExportOp {
    pub fn job(&self) -> &str {
        match self {
            ExportOp::Start { job, .. }
            | ExportOp::Checkpoint { job, .. }
            | ExportOp::Complete { job, .. }
            | ExportOp::Fail { job, .. }
            | ExportOp::Cancel { job, .. }
            | ExportOp::Remove { job } => job,
        }
    }

    /// The same op stamped with the proposing leader's clock.
    pub fn with_ts(mut self, ts: u64) -> ExportOp {
        match &mut self {
            ExportOp::Start { ts_micros, .. } | ExportOp::Complete { ts_micros, .. } | ExportOp::Fail { ts_micros, .. } | ExportOp::Cancel { ts_micros, .. } => *ts_micros = ts,
            ExportOp::Checkpoint { .. } | ExportOp::Remove { .. } => {}
        }
        self
    }

    /// Checks an op a peer forwards before the leader proposes it. Only a kick-off and a cancel
    /// come from other nodes; checkpoints, completion, failure and removal are the leader's own
    /// (a deposed leader's late ones are refused here, never applied). A kick-off's spec must
    /// be one [`ExportSpec::check`] accepts.
    pub fn check(&self, defs: &crate::fhir::Definitions) -> Result<(), String> {
        if !valid_job_id(self.job()) {
            return Err(format!("invalid export job id {:?}", self.job()));
        }
        match self {
            ExportOp::Start { spec, .. } => spec.check(defs),
            ExportOp::Cancel { .. } => Ok(()),
            _ => Err("export checkpoints, completion, failure and removal are proposed by the leader itself, never forwarded".into()),
        }
    }
}

impl ExportSpec {
    /// What a kick-off node checked, checked again (a peer's spec is not trusted): known and
    /// distinct types, filters and elements on those types, valid ids, bounded lists.
    pub fn check(&self, defs: &crate::fhir::Definitions) -> Result<(), String> {
        let long = |t: &str| t.len() > MAX_TEXT;
        if self.types.is_empty() || self.types.len() > MAX_TYPES {
            return Err(format!("an export names 1 to {MAX_TYPES} types"));
        }
        let mut seen = std::collections::HashSet::new();
        for t in &self.types {
            if defs.resource_type(t).ok() != Some(t.as_str()) || !seen.insert(t) {
                return Err(format!("type {t:?} is unknown or repeated"));
            }
        }
        if self.type_filters.len() > MAX_FILTERS || self.elements.len() > MAX_ELEMENTS || self.patients.len() > MAX_PATIENTS || self.ignored.len() > MAX_IGNORED {
            return Err(format!("an export carries at most {MAX_FILTERS} filters, {MAX_ELEMENTS} elements, {MAX_PATIENTS} patients"));
        }
        for (t, q) in &self.type_filters {
            if !self.types.contains(t) || q.is_empty() || q.iter().any(|(k, v)| long(k) || long(v)) {
                return Err(format!("a filter on {t:?} that is not an exported type, or empty, or too long"));
            }
        }
        if self.elements.iter().any(|(t, e)| long(e) || t.as_ref().is_some_and(|t| !self.types.contains(t))) || self.ignored.iter().any(|i| long(i)) || long(&self.request) {
            return Err("an element, ignored parameter or request URL too long, or an element of a type not exported".into());
        }
        if self.patients.iter().any(|p| !crate::fhir::valid_id(p)) {
            return Err("invalid patient id".into());
        }
        if let Level::Group(g) = &self.level {
            if !crate::fhir::valid_id(g) {
                return Err(format!("invalid Group id {g:?}"));
            }
        }
        if let Some(t) = &self.tenant {
            if !crate::tenancy::valid_tenant(t) {
                return Err(format!("invalid tenant id {t:?}"));
            }
        }
        if self.part_max_lines == 0 || self.part_max_bytes < 1024 || self.max_active == 0 || self.max_per_owner == 0 {
            return Err("part limits and job limits must be positive".into());
        }
        Ok(())
    }
}

/// Job ids are UUIDs (lowercase hex and dashes): safe in keys, paths and object names.
pub fn valid_job_id(id: &str) -> bool {
    id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase() || b == b'-')
}

/// The ignored parameters of a job as NDJSON OperationOutcomes (a function of the job).
pub fn errors_ndjson(job: &Job) -> Vec<u8> {
    let mut out = Vec::new();
    for p in &job.spec.ignored {
        let oo = crate::fhir::outcome::operation_outcome("warning", "not-supported", &format!("parameter {p} was ignored (Prefer: handling=lenient)"));
        out.extend_from_slice(oo.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

/// The file listing parameters ignored under lenient handling (one OperationOutcome per line).
pub const ERRORS_FILE: &str = "OperationOutcome-0.ndjson";
#[cfg(test)]
mod tests {
    use super::*;

    fn job(members: Option<Vec<&str>>, patients: Vec<&str>) -> Job {
        Job {
            id: "00000000-0000-0000-0000-000000000000".into(),
            spec: ExportSpec {
                level: Level::Patient,
                tenant: None,
                owner: "x".into(),
                request: "r".into(),
                types: vec!["Patient".into()],
                since: None,
                type_filters: vec![],
                elements: vec![],
                patients: patients.into_iter().map(String::from).collect(),
                sink: SinkKind::Local,
                ignored: vec![],
                part_max_lines: 10,
                part_max_bytes: 1 << 20,
                max_active: 4,
                max_per_owner: 20,
            },
            as_of: 1,
            members: members.map(|m| m.into_iter().map(String::from).collect()),
            status: Status::Active,
            parts: vec![],
            cursor: Cursor::default(),
            finished: None,
        }
    }

    #[test]
    fn patient_sets_intersect_group_members_with_the_patient_parameter() {
        assert_eq!(job(None, vec![]).patient_set(), None);
        assert_eq!(job(None, vec!["b", "a", "b"]).patient_set(), Some(vec!["a".into(), "b".into()]));
        assert_eq!(job(Some(vec!["a", "c"]), vec![]).patient_set(), Some(vec!["a".into(), "c".into()]));
        assert_eq!(job(Some(vec!["a", "c"]), vec!["c", "d"]).patient_set(), Some(vec!["c".into()]));
    }

    #[test]
    fn job_ids_are_uuids() {
        assert!(valid_job_id(&uuid::Uuid::new_v4().to_string()));
        assert!(!valid_job_id("../../etc/passwd"));
        assert!(!valid_job_id("00000000-0000-0000-0000-00000000000G"));
        let defs = crate::fhir::Definitions::load(crate::fhir::FhirVersion::R4);
        assert!(ExportOp::Remove { job: "x".into() }.check(&defs).is_err());
        let id = uuid::Uuid::new_v4().to_string();
        assert!(ExportOp::Remove { job: id.clone() }.check(&defs).is_err(), "leader-only ops are never forwarded");
        assert!(ExportOp::Checkpoint { job: id.clone(), part: None, cursor: Cursor::default() }.check(&defs).is_err());
        assert!(ExportOp::Cancel { job: id.clone(), ts_micros: 0 }.check(&defs).is_ok());
        let spec = job(None, vec![]).spec;
        assert!(ExportOp::Start { job: id.clone(), ts_micros: 0, spec: spec.clone() }.check(&defs).is_ok());
        for bad in [
            ExportSpec { types: vec!["Patient".into(), "Patient".into()], ..spec.clone() },
            ExportSpec { types: vec!["Nope".into()], ..spec.clone() },
            ExportSpec { type_filters: vec![("Observation".into(), vec![("code".into(), "x".into())])], ..spec.clone() },
            ExportSpec { level: Level::Group("../x".into()), ..spec.clone() },
            ExportSpec { patients: vec!["a b".into()], ..spec.clone() },
            ExportSpec { part_max_lines: 0, ..spec.clone() },
        ] {
            assert!(ExportOp::Start { job: id.clone(), ts_micros: 0, spec: bad.clone() }.check(&defs).is_err(), "{bad:?}");
        }
    }
}
