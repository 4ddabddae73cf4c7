//! The fuzz harnesses' fixtures, built once per process: definitions and the search registry, a
//! small indexed state to search, and a state machine over the seed resources for bundles (rebuilt
//! after any input that wrote).

use std::sync::{Arc, Mutex, OnceLock};

use super::FILLER_OBSERVATIONS;
use serde_json::{json, Value};
use crate::actors::resource::ActorSettings;
use crate::fhir::{Definitions, FhirVersion};
use crate::search::params::Registry;
use crate::machine::command::{Action, Command, CommandV1, WriteOp};
use crate::machine::StateMachine;

pub(super) struct Fixtures {
    pub(super) defs: Definitions,
    pub(super) reg: Arc<Registry>,
    pub(super) settings: ActorSettings,
}

pub(super) fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| Fixtures {
        defs: Definitions::load(FhirVersion::R4),
        reg: Arc::new(Registry::load(FhirVersion::R4)),
        settings: { let c = crate::config::Config::default(); crate::actors::resource::ActorSettings::new(c.allow_update_create, c.limits.max_depth, c.limits.max_body_bytes) },
    })
}

/// The resources every searched / written state starts with: a small graph of patients,
/// observations and what they reference, with values of each search parameter type.
pub(super) fn seed_resources() -> Vec<Value> {
    vec![
        json!({"resourceType": "Organization", "id": "o1", "name": "Acme Clinic", "identifier": [{"system": "urn:org", "value": "acme"}]}),
        json!({"resourceType": "Practitioner", "id": "d1", "name": [{"family": "House", "given": ["Gregory"]}], "identifier": [{"system": "urn:npi", "value": "123"}]}),
        json!({"resourceType": "Patient", "id": "p1", "active": true, "gender": "female", "birthDate": "1974-12-25",
            "name": [{"family": "Chalmérs", "given": ["Peter", "James"]}], "identifier": [{"system": "urn:mrn", "value": "12345",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}],
            "telecom": [{"system": "phone", "value": "(03) 5555 6473"}, {"system": "email", "value": "p@example.org"}],
            "address": [{"line": ["534 Erewhon St"], "city": "PleasantVille", "postalCode": "3999", "country": "AU"}],
            "generalPractitioner": [{"reference": "Practitioner/d1"}], "managingOrganization": {"reference": "Organization/o1"},
            "link": [{"other": {"reference": "Patient/p2"}, "type": "seealso"}]}),
        json!({"resourceType": "Patient", "id": "p2", "active": false, "gender": "male", "birthDate": "2001-02",
            "name": [{"family": "Smith", "given": ["Ann"]}], "deceasedDateTime": "2020-01-01T10:00:00Z",
            "identifier": [{"system": "urn:mrn", "value": "67890"}]}),
        json!({"resourceType": "Encounter", "id": "e1", "status": "finished", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": "Patient/p1"}, "period": {"start": "2013-04-01", "end": "2013-04-03"}}),
        json!({"resourceType": "Location", "id": "l1", "name": "South Wing", "position": {"longitude": -83.6945691, "latitude": 42.25475478}}),
        json!({"resourceType": "Observation", "id": "ob1", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure"}], "text": "BP"},
            "subject": {"reference": "Patient/p1"}, "encounter": {"reference": "Encounter/e1"}, "performer": [{"reference": "Practitioner/d1"}],
            "effectiveDateTime": "2013-04-02T09:30:10+01:00", "issued": "2013-04-03T15:30:10.123Z",
            "component": [
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": {"value": 107, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]}, "valueQuantity": {"value": 60, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}]}),
        json!({"resourceType": "Observation", "id": "ob2", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "15074-8", "display": "Glucose"}]},
            "subject": {"reference": "Patient/p1"}, "effectivePeriod": {"start": "2013-04-02T09:30:10+01:00", "end": "2013-04-05"},
            "valueQuantity": {"value": 6.3, "unit": "mmol/l", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
            "hasMember": [{"reference": "Observation/ob1"}], "derivedFrom": [{"reference": "Observation/ob3"}]}),
        json!({"resourceType": "Observation", "id": "ob3", "status": "amended",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "365853002"}, {"system": "http://loinc.org", "code": "3141-9"}]},
            "subject": {"reference": "Patient/p2"}, "effectiveDateTime": "2021",
            "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "260385009", "display": "Negative"}], "text": "Negative"},
            "identifier": [{"system": "urn:obs", "value": "x1"}]}),
        json!({"resourceType": "Observation", "id": "ob4", "status": "preliminary",
            "code": {"text": "weight"}, "subject": {"reference": "http://other.example/fhir/Patient/p9"},
            "effectiveInstant": "2019-07-01T00:00:00.5Z", "valueQuantity": {"value": serde_json::from_str::<Value>("1.000000000000000000e-245").expect("a JSON number"), "code": "kg"},
            "specimen": {"identifier": {"system": "urn:spec", "value": "s1"}}}),
        json!({"resourceType": "Observation", "id": "ob5", "status": "final", "code": {"coding": [{"code": "no-system"}]},
            "effectiveTiming": {"event": ["2010-01-01", "2011-06-30T12:00:00Z"]}, "valueString": "Ünïcode text, commas\\, and $dollars|pipes"}),
    ]
}

/// One write of each seed resource, as the log carries them.
pub(super) fn seed_command() -> &'static [u8] {
    static C: OnceLock<Vec<u8>> = OnceLock::new();
    C.get_or_init(|| {
        let ops = seed_resources()
            .into_iter()
            .map(|r| WriteOp {
                action: Action::Update,
                rtype: r["resourceType"].as_str().expect("seed type").into(),
                id: r["id"].as_str().expect("seed id").into(),
                body: Some(r.to_string()),
                if_match: None,
                allow_create: true,
            })
            .collect();
        Command::V1(CommandV1::Writes { ts_micros: 1_000_000, ops }).encode()
    })
}

pub(super) fn temporary_tree() -> (sled::Db, sled::Tree) {
    let db = sled::Config::new().temporary(true).open().expect("a temporary sled database");
    let tree = db.open_tree("state").expect("the state tree");
    (db, tree)
}

/// The indexed state [`query`] searches (written once, then only read).
pub(super) struct SearchState {
    pub(super) _db: sled::Db,
    pub(super) tree: sled::Tree,
}

pub(super) fn search_state() -> &'static SearchState {
    static S: OnceLock<SearchState> = OnceLock::new();
    S.get_or_init(|| {
        let (db, tree) = temporary_tree();
        let mut sm = StateMachine::open(tree.clone()).expect("state machine").with_search(fixtures().reg.clone());
        for out in sm.apply(1, 1, seed_command()).expect("the seed entry applies") {
            out.expect("every seed write succeeds");
        }
        // Enough matches for paging to walk the sort rows (`search::page`, 1,000 or more).
        let ops = (0..FILLER_OBSERVATIONS)
            .map(|i| {
                let status = if i % 2 == 0 { "final" } else { "amended" };
                let body = json!({"resourceType": "Observation", "id": format!("f{i}"), "status": status,
                    "code": {"coding": [{"system": "http://loinc.org", "code": format!("c{}", i % 7)}]},
                    "subject": {"reference": format!("Patient/p{}", 1 + i % 2)}, "effectiveDateTime": format!("20{:02}-{:02}-{:02}", i % 30, 1 + i % 12, 1 + i % 28),
                    "valueQuantity": {"value": i % 97, "code": "kg"}});
                WriteOp { action: Action::Update, rtype: "Observation".into(), id: format!("f{i}"), body: Some(body.to_string()), if_match: None, allow_create: true }
            })
            .collect();
        for out in sm.apply(2, 1, &Command::V1(CommandV1::Writes { ts_micros: 2_000_000, ops }).encode()).expect("the filler entry applies") {
            out.expect("every filler write succeeds");
        }
        SearchState { _db: db, tree }
    })
}

/// A state machine for [`bundle`] to apply commands to, holding the seed resources before each
/// input (reset after any input that wrote something).
pub(super) struct WriteState {
    pub(super) _db: sled::Db,
    pub(super) tree: sled::Tree,
    /// Whether the last command changed resources (the seed state must be rebuilt).
    pub(super) dirty: bool,
}

pub(super) fn write_state() -> &'static Mutex<WriteState> {
    static S: OnceLock<Mutex<WriteState>> = OnceLock::new();
    S.get_or_init(|| {
        let (db, tree) = temporary_tree();
        Mutex::new(WriteState { _db: db, tree, dirty: true })
    })
}

/// Applies `cmd` (a command that passed the leader's check) as log entry 2, on the seed state.
pub(super) fn apply_on_seed_state(cmd: &Command) {
    let mut state = write_state().lock().unwrap_or_else(|e| e.into_inner());
    let reg = fixtures().reg.clone();
    if state.dirty {
        state.tree.clear().expect("clearing the temporary tree");
        let mut sm = StateMachine::open(state.tree.clone()).expect("state machine").with_search(reg.clone());
        sm.apply(1, 1, seed_command()).expect("the seed entry applies");
    }
    let mut sm = StateMachine::open(state.tree.clone()).expect("state machine").with_search(reg);
    // A storage error (`Err`) stops a node; every replica would hit it at the same entry, so the
    // whole cluster would stop: a checked command must never cause one.
    let outcomes = sm.apply(2, 1, &cmd.encode());
    state.dirty = true;
    let outcomes = outcomes.unwrap_or_else(|e| panic!("a checked command failed to apply: {e}"));
    state.dirty = outcomes.iter().any(|o| matches!(o, Ok(a) if !a.noop));
}
