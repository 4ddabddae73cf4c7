//! The deterministic reader behind every part: walks one type's current pointers in id order and
//! turns each resource into its NDJSON line as of the job's instant, applying `_since`,
//! `_typeFilter` (the doc numbers decided at kick-off), the Patient compartment of a Patient or
//! Group export, and `_elements`. The lines of the ids `(after, last]` depend only on the
//! replicated state and the job, so a part is the same bytes whichever node writes it, when.

use std::ops::Bound;
use std::sync::Arc;

use roaring::RoaringBitmap;
use serde_json::Value;

use crate::machine::export_job::{Job, Level};
use crate::machine::export_state as state;
use crate::fhir::elements::Subset;
use crate::fhir::Definitions;
use crate::search::params::Registry;
use crate::search::{index, posting};
use crate::store::{keys, Store, StoreError, VersionRecord};

const PATIENT: &str = "Patient";

/// How far a [`Selector::fill`] got.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Chunk {
    /// Lines written.
    pub count: u64,
    pub bytes: u64,
    /// The last id visited (written or not): the cursor to continue after.
    pub last: Option<String>,
    /// The range (or the type) has no more ids.
    pub done: bool,
}

/// Selects and renders the resources of one type of one job.
pub struct Selector {
    store: Store,
    reg: Arc<Registry>,
    defs: Arc<Definitions>,
    rtype: String,
    as_of: u64,
    since: Option<u64>,
    filter: Option<RoaringBitmap>,
    /// Patient / Group export: the parameters putting this type in a Patient compartment, and
    /// the patients (`None`: any patient).
    compartment: Option<(Vec<String>, Option<Arc<Vec<String>>>)>,
    elements: Option<Vec<String>>,
}

/// The types a Patient or Group export covers: Patient and every member type of its compartment.
pub fn compartment_types(reg: &Registry, defs: &Definitions) -> Vec<String> {
    defs.types
        .iter()
        .filter(|t| **t == PATIENT || reg.compartment_params(PATIENT, t).is_some_and(|p| !p.is_empty()))
        .map(|t| t.to_string())
        .collect()
}

impl Selector {
    /// `root` is the default tenant's store (the job names its tenant); `patients` is
    /// [`Job::patient_set`], computed once per job.
    pub fn new(root: &Store, reg: Arc<Registry>, defs: Arc<Definitions>, job: &Job, rtype: &str, patients: Option<Arc<Vec<String>>>) -> Result<Selector, StoreError> {
        let filter = state::filter(root.tree().tree(), &job.id, rtype)?;
        let compartment = match job.spec.level {
            Level::System => None,
            Level::Patient | Level::Group(_) => Some((reg.compartment_params(PATIENT, rtype).unwrap_or_default(), patients)),
        };
        let elements: Vec<String> = job
            .spec
            .elements
            .iter()
            .filter(|(t, _)| t.as_deref().is_none_or(|t| t == rtype))
            .map(|(_, e)| e.clone())
            .collect();
        Ok(Selector {
            store: root.tenant(job.spec.tenant.as_deref()),
            reg,
            defs,
            rtype: rtype.to_string(),
            as_of: job.as_of,
            since: job.spec.since,
            filter,
            compartment,
            elements: (!elements.is_empty()).then_some(elements),
        })
    }

    /// Appends the lines of the ids after `after` (up to and including `until`, when given) to
    /// `out`, stopping after `max_lines` lines, `max_bytes` bytes or `max_visit` ids and version rows read (checked between ids).
    /// Reads the type's version records in key order (id, then version): one sequential scan,
    /// no lookup per resource; the version of an id as of the job's instant is its last one
    /// written by then.
    pub fn fill(&self, after: Option<&str>, until: Option<&str>, max_lines: u64, max_bytes: u64, max_visit: usize, out: &mut Vec<u8>) -> Result<Chunk, StoreError> {
        let prefix = keys::versions_of_type(&self.rtype);
        let start = match after {
            Some(a) => Bound::Included(keys::prefix_end(&keys::versions_of(&self.rtype, a))),
            None => Bound::Included(prefix.clone()),
        };
        let end = match until {
            Some(u) => Bound::Excluded(keys::prefix_end(&keys::versions_of(&self.rtype, u))),
            None => Bound::Excluded(keys::prefix_end(&prefix)),
        };
        let mut chunk = Chunk::default();
        // Ids and version rows read (a resource with many versions costs its rows).
        let mut visited = 0usize;
        // The id being read and its version as of the job's instant (if any yet).
        let mut group: Option<(String, Option<VersionRecord>)> = None;
        for item in self.store.tree().range::<Vec<u8>, _>((start, end)) {
            let (k, v) = item?;
            let id = id_of(&k, prefix.len())?;
            if group.as_ref().is_some_and(|(g, _)| g != id) {
                let (gid, rec) = group.take().expect("checked");
                self.finish(&gid, rec, out, &mut chunk)?;
                visited += 1;
                chunk.last = Some(gid);
                if chunk.count >= max_lines || chunk.bytes >= max_bytes || visited >= max_visit {
                    return Ok(chunk);
                }
            }
            visited += 1;
            let rec = VersionRecord::decode(v)?;
            let g = group.get_or_insert_with(|| (id.to_string(), None));
            if rec.ts <= self.as_of {
                g.1 = Some(rec);
            }
        }
        if let Some((gid, rec)) = group {
            self.finish(&gid, rec, out, &mut chunk)?;
            chunk.last = Some(gid);
        }
        chunk.done = true;
        Ok(chunk)
    }

    /// Adds the line of `id` given its version as of the job's instant; whether it was written.
    fn finish(&self, id: &str, rec: Option<VersionRecord>, out: &mut Vec<u8>, chunk: &mut Chunk) -> Result<bool, StoreError> {
        let Some(rec) = rec else { return Ok(false) };
        let before = out.len();
        if !self.line(id, &rec, out)? {
            return Ok(false);
        }
        chunk.count += 1;
        chunk.bytes += (out.len() - before) as u64;
        Ok(true)
    }

    /// Appends the line of `id` (version `rec`) if the export selects it.
    fn line(&self, id: &str, rec: &VersionRecord, out: &mut Vec<u8>) -> Result<bool, StoreError> {
        if rec.is_delete() || self.since.is_some_and(|s| rec.ts <= s) {
            return Ok(false);
        }
        if let Some(f) = &self.filter {
            match posting::docnum(self.store.tree(), &self.rtype, id)? {
                Some(doc) if f.contains(doc) => {}
                _ => return Ok(false),
            }
        }
        let raw = rec.body();
        let needs_parse = self.elements.is_some() || raw.contains(&b'\n') || self.compartment.as_ref().is_some_and(|_| self.rtype != PATIENT);
        if let Some((_, Some(patients))) = &self.compartment {
            if self.rtype == PATIENT && patients.binary_search_by(|p| p.as_str().cmp(id)).is_err() {
                return Ok(false);
            }
        }
        if !needs_parse {
            out.extend_from_slice(raw);
            out.push(b'\n');
            return Ok(true);
        }
        let mut body: Value = serde_json::from_slice(raw).map_err(|e| StoreError::Corrupt(format!("stored body of {}/{id}: {e}", self.rtype)))?;
        if let Some((codes, patients)) = &self.compartment {
            if self.rtype != PATIENT {
                let refs = index::referenced_ids(&self.reg, &self.rtype, codes, &body, PATIENT);
                let inside = match patients {
                    None => !refs.is_empty(),
                    Some(p) => refs.iter().any(|r| p.binary_search(r).is_ok()),
                };
                if !inside {
                    return Ok(false);
                }
            }
        }
        if let Some(els) = &self.elements {
            self.defs.subset(&mut body, &Subset { summary: None, elements: Some(els.clone()) });
        }
        serde_json::to_writer(&mut *out, &body).map_err(|e| StoreError::Storage(e.to_string()))?;
        out.push(b'\n');
        Ok(true)
    }
}

/// The id in a version key `v type \0 id \0 version(8)` whose type prefix is `skip` bytes long.
fn id_of(k: &[u8], skip: usize) -> Result<&str, StoreError> {
    let bad = || StoreError::Corrupt("version key".into());
    let rest = k.get(skip..).filter(|r| r.len() >= 10).ok_or_else(bad)?;
    std::str::from_utf8(&rest[..rest.len() - 9]).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::export_job::{ExportOp, ExportSpec, SinkKind};
    use crate::fhir::FhirVersion;
    use crate::machine::testing::{indexed, put_all};
    use crate::machine::command::{Command, CommandV1};
    use serde_json::json;

    fn start(sm: &mut crate::machine::StateMachine, index: u64, level: Level, filters: Vec<(String, Vec<(String, String)>)>) -> Job {
        let id = uuid::Uuid::new_v4().to_string();
        let spec = ExportSpec {
            level,
            tenant: None,
            owner: "t".into(),
            request: "r".into(),
            types: vec!["Patient".into(), "Observation".into()],
            since: None,
            type_filters: filters,
            elements: vec![],
            patients: vec![],
            sink: SinkKind::Local,
            ignored: vec![],
            part_max_lines: 10,
            part_max_bytes: 1 << 20,
            max_active: 10,
            max_per_owner: 10,
        };
        sm.apply(index, 1, &Command::V1(CommandV1::Export(ExportOp::Start { job: id.clone(), ts_micros: 0, spec })).encode()).unwrap();
        state::load(sm.tree(), &id).unwrap().unwrap()
    }

    fn all(sel: &Selector, visit: usize, lines: u64) -> (Vec<u8>, u64) {
        let (mut out, mut after, mut n) = (Vec::new(), None::<String>, 0);
        loop {
            let c = sel.fill(after.as_deref(), None, lines, u64::MAX, visit, &mut out).unwrap();
            n += c.count;
            if c.done {
                return (out, n);
            }
            after = c.last;
        }
    }

    #[test]
    fn parts_are_the_state_as_of_the_kick_off_in_any_chunking() {
        let mut ix = indexed();
        let patients: Vec<_> = (0..30).map(|i| json!({"resourceType": "Patient", "id": format!("p{i:02}"), "gender": if i % 2 == 0 { "female" } else { "male" }})).collect();
        put_all(&mut ix.sm, 1, &patients);
        let obs: Vec<_> = (0..10).map(|i| json!({"resourceType": "Observation", "id": format!("o{i}"), "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/p{i:02}")}})).collect();
        put_all(&mut ix.sm, 2, &obs);
        let job = start(&mut ix.sm, 3, Level::System, vec![("Patient".into(), vec![("gender".into(), "female".into())])]);
        // After the kick-off: a change and a new female patient, which the export must not see.
        put_all(&mut ix.sm, 4, &[json!({"resourceType": "Patient", "id": "p00", "gender": "male"}), json!({"resourceType": "Patient", "id": "p99", "gender": "female"})]);
        let root = Store::new(ix.sm.tree().clone());
        let defs = Arc::new(Definitions::load(FhirVersion::R4));
        let sel = Selector::new(&root, ix.reg.clone(), defs.clone(), &job, "Patient", None).unwrap();
        let (whole, n) = all(&sel, usize::MAX, u64::MAX);
        assert_eq!(n, 15, "the filter decided at kick-off: the 15 female patients then");
        let text = String::from_utf8(whole.clone()).unwrap();
        assert!(text.contains(r#""id":"p00""#) && text.contains(r#""gender":"female""#) && !text.contains("p99"));
        for (visit, lines) in [(1, u64::MAX), (3, 2), (7, 5)] {
            assert_eq!(all(&sel, visit, lines).0, whole, "same bytes in chunks of {visit} ids / {lines} lines");
        }
        // A range (after, until] gives exactly its lines again.
        let mut part = Vec::new();
        let c = sel.fill(Some("p03"), Some("p09"), u64::MAX, u64::MAX, usize::MAX, &mut part).unwrap();
        assert!(c.done);
        assert_eq!(c.count, 3, "p04, p06, p08");

        // Patient level: the compartment; a Group export: its members only.
        let pjob = start(&mut ix.sm, 5, Level::Patient, vec![]);
        let osel = Selector::new(&root, ix.reg.clone(), defs.clone(), &pjob, "Observation", Some(Arc::new(vec!["p01".into(), "p02".into()]))).unwrap();
        assert_eq!(all(&osel, usize::MAX, u64::MAX).1, 2);
        let psel = Selector::new(&root, ix.reg.clone(), defs, &pjob, "Patient", Some(Arc::new(vec!["p01".into(), "p99".into()]))).unwrap();
        assert_eq!(all(&psel, usize::MAX, u64::MAX).1, 2);
    }
}
