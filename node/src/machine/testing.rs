//! Test support: a state machine keeping the R4 search index on a temporary sled tree, and
//! resources written into it the way the log writes them.

use std::sync::Arc;

use serde_json::Value;

use crate::search::params::Registry;
use crate::fhir::FhirVersion;
use crate::machine::command::{Action, Command, CommandV1, WriteOp};
use crate::store::space::Space;
use crate::machine::StateMachine;

pub struct Indexed {
    pub dir: tempfile::TempDir,
    pub tree: Space,
    pub reg: Arc<Registry>,
    pub sm: StateMachine,
}

pub fn indexed() -> Indexed {
    let dir = tempfile::tempdir().unwrap();
    let tree = sled::open(dir.path()).unwrap().open_tree("state").unwrap();
    let reg = Arc::new(Registry::load(FhirVersion::R4));
    let sm = StateMachine::open(tree.clone()).unwrap().with_search(reg.clone());
    Indexed { dir, tree: Space::root(tree), reg, sm }
}

/// An update (create allowed) of each resource, in order, as one log entry at `index`.
pub fn put_all(sm: &mut StateMachine, index: u64, resources: &[Value]) {
    let ops = resources
        .iter()
        .map(|r| WriteOp {
            action: Action::Update,
            rtype: r["resourceType"].as_str().unwrap().into(),
            id: r["id"].as_str().unwrap().into(),
            body: Some(r.to_string()),
            if_match: None,
            allow_create: true,
        })
        .collect();
    sm.apply(index, 1, &Command::V1(CommandV1::Writes { ts_micros: 1_000, ops }).encode()).unwrap();
}
