//! The deterministic state machine. Every committed Raft entry is applied here, in log order, on
//! every node, as ONE sled batch that also records the applied index, so a restart resumes exactly
//! and every node holds the same bytes.

use std::collections::HashMap;
use std::sync::Arc;


use super::command::{Command, CommandV1, OpOutcome, WriteOp};
use crate::store::keys;
use crate::store::snapshot::{Capture, Staging};
use crate::store::space::Space;
use crate::store::writes::Writes;
use crate::store::resources::Current;
use crate::store::StoreError;
use crate::search::posting;
use crate::search::params::Registry;

/// Writes staged for one sled batch: the batch, what it changed so far (later writes of the same
/// entry see earlier ones), and the clock.
pub(super) struct Staged {
    pub(super) batch: Writes,
    pub(super) overlay: HashMap<Vec<u8>, Current>,
    pub(super) index_overlay: HashMap<Vec<u8>, Vec<Vec<u8>>>,
    pub(super) postings: posting::Changes,
    pub(super) ts: u64,
    pub(super) last_ts: u64,
}

impl Staged {
    /// Gives `rtype/id` a doc number if it has none yet (the index rebuild).
    pub(super) fn assign_docnum(&mut self, tree: &Space, rtype: &str, id: &str) -> Result<u32, StoreError> {
        Ok(self.postings.docnum(tree, &mut self.batch, rtype, id)?)
    }

    /// The current pointers written so far.
    pub(super) fn overlay(&self) -> &HashMap<Vec<u8>, Current> {
        &self.overlay
    }
}

/// What a conditional write turned into.
pub(super) enum Resolved {
    Ops(Vec<WriteOp>),
    Outcome(OpOutcome),
}

/// Applies commands to the `state` tree.
pub struct StateMachine {
    pub(super) tree: sled::Tree,
    /// The tenant whose entry is being applied (the default tenant between entries).
    pub(super) space: Space,
    pub(super) applied_index: u64,
    pub(super) applied_term: u64,
    pub(super) last_ts: u64,
    /// Search parameters whose index rows are written with every version (`None`: no index).
    pub(super) search: Option<Arc<Registry>>,
    /// The index format the cluster is pinned to ([`CommandV1::Pin`]), if any yet.
    pub(super) pin: Option<String>,
    /// The snapshot being streamed to a peer, if any (shared with its sender thread).
    pub(super) capture: Arc<Capture>,
}

pub(super) fn read_u64_pair(tree: &sled::Tree, key: &[u8]) -> Result<(u64, u64), StoreError> {
    match tree.get(key)? {
        None => Ok((0, 0)),
        Some(b) if b.len() == 16 => Ok((
            u64::from_be_bytes(b[..8].try_into().expect("8 bytes")),
            u64::from_be_bytes(b[8..].try_into().expect("8 bytes")),
        )),
        Some(_) => Err(StoreError::Corrupt(format!("metadata key {}", String::from_utf8_lossy(key)))),
    }
}

pub(super) fn u64_pair(a: u64, b: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&a.to_be_bytes());
    out[8..].copy_from_slice(&b.to_be_bytes());
    out
}

impl StateMachine {
    pub fn open(tree: sled::Tree) -> Result<StateMachine, StoreError> {
        let (applied_index, applied_term) = read_u64_pair(&tree, keys::META_APPLIED)?;
        let (last_ts, _) = read_u64_pair(&tree, keys::META_LAST_TS)?;
        let pin = tree.get(keys::META_PIN)?.map(|v| String::from_utf8_lossy(&v).into_owned());
        Ok(StateMachine { space: Space::root(tree.clone()), tree, applied_index, applied_term, last_ts, search: None, pin, capture: Arc::new(Capture::default()) })
    }

    /// Maintains the embedded search index of `registry` in every apply batch.
    pub fn with_search(mut self, registry: Arc<Registry>) -> StateMachine {
        self.search = Some(registry);
        self
    }

    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// The timestamp of the last write applied (the replicated clock).
    pub(super) fn last_ts(&self) -> u64 {
        self.last_ts
    }

    pub fn applied_term(&self) -> u64 {
        self.applied_term
    }

    /// Records an entry that carries no command (leader no-op, configuration change).
    pub fn apply_empty(&mut self, index: u64, term: u64) -> Result<(), StoreError> {
        let mut w = Writes::default();
        w.insert_meta(keys::META_APPLIED, &u64_pair(index, term));
        self.write(w)?;
        self.applied_index = index;
        self.applied_term = term;
        Ok(())
    }

    /// Records a membership change: the new Raft conf state (protobuf bytes) and, for an added
    /// member, its addresses (`Some(json)`) or, for a removed one, `None`.
    pub fn apply_conf(&mut self, index: u64, term: u64, conf_state: &[u8], peer: Option<(u64, Option<Vec<u8>>)>) -> Result<(), StoreError> {
        let mut batch = Writes::default();
        batch.insert_meta(keys::META_CONF, conf_state);
        match peer {
            Some((id, Some(info))) => batch.insert_meta(keys::meta_peer(id), info),
            Some((id, None)) => batch.remove_meta(keys::meta_peer(id)),
            None => {}
        }
        batch.insert_meta(keys::META_APPLIED, &u64_pair(index, term));
        self.write(batch)?;
        self.applied_index = index;
        self.applied_term = term;
        Ok(())
    }

    /// The conf state recorded by the last applied membership change (protobuf bytes).
    pub fn conf_state(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree.get(keys::META_CONF)?.map(|v| v.to_vec()))
    }

    /// Members added at run time: (id, JSON addresses).
    pub fn peers(&self) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.tree.scan_prefix(keys::META_PEER_PREFIX) {
            let (k, v) = item?;
            let id = k[keys::META_PEER_PREFIX.len()..]
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| StoreError::Corrupt("peer key".into()))?;
            out.push((id, v.to_vec()));
        }
        Ok(out)
    }

    /// Shares `capture` with the snapshot sender (the leader's side of a transfer).
    pub fn with_capture(mut self, capture: Arc<Capture>) -> StateMachine {
        self.capture = capture;
        self
    }

    /// The snapshot capture this state machine feeds.
    pub fn capture(&self) -> &Arc<Capture> {
        &self.capture
    }

    /// The `state` tree (read by the snapshot sender).
    pub fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    /// Replaces the state by the staged snapshot stream `id` and resumes from the index recorded in it.
    pub fn restore(&mut self, staging: &Staging, id: u64) -> Result<(), StoreError> {
        // A transfer this node was streaming as leader cannot go on from a replaced state.
        self.capture.abort();
        staging.install(id, &self.tree)?;
        let mut reopened = StateMachine::open(self.tree.clone())?;
        reopened.search = self.search.take();
        reopened.capture = self.capture.clone();
        *self = reopened;
        // A snapshot of a cluster pinned to other search definitions: refuse it loudly.
        self.check_pin(self.applied_index, None)?;
        // A snapshot from a node of another version may carry another index layout.
        self.ensure_index()?;
        Ok(())
    }

    /// Applies one committed entry. `Err` means storage failed (the node must stop applying);
    /// per-write outcomes such as version conflicts are in the returned list.
    pub fn apply(&mut self, index: u64, term: u64, data: &[u8]) -> Result<Vec<OpOutcome>, StoreError> {
        // Every search this entry's conditions make shares one row budget (search::cost).
        crate::search::cost::pool(crate::search::cost::ENTRY_ROWS, || self.apply_entry(index, term, data))
    }

    /// Whether this node's index format differs from the cluster's pin (or there is none yet):
    /// a leader then proposes a [`CommandV1::Pin`] with its own.
    pub fn needs_pin(&self) -> Option<String> {
        let mine = self.index_format()?;
        (self.pin.as_deref() != Some(mine.as_str())).then_some(mine)
    }

    /// `Err` when the cluster is pinned to another index format than this node's.
    fn check_pin(&self, index: u64, incoming: Option<&str>) -> Result<(), StoreError> {
        let (Some(mine), Some(pinned)) = (self.index_format(), incoming.or(self.pin.as_deref())) else { return Ok(()) };
        if mine == pinned {
            return Ok(());
        }
        Err(StoreError::Corrupt(format!(
            "log entry {index}: the cluster is pinned to index format {pinned:?} (FHIR version and search parameters), this node runs {mine:?}; \
             replicas with different search definitions would decide conditions differently, so this node stops applying. \
             Run the same Kiln binary and FHIR version on every node (docs/operations.md, upgrades)"
        )))
    }

    fn apply_entry(&mut self, index: u64, term: u64, data: &[u8]) -> Result<Vec<OpOutcome>, StoreError> {
        // Skipping an entry this binary cannot decode would let this node's state differ from
        // nodes that understand it (a newer binary wrote it): stop applying instead, with the reason.
        let command = Command::decode(data)
            .map_err(|e| StoreError::Corrupt(format!("log entry {index} cannot be decoded ({e}); it was probably written by a newer Kiln: upgrade this node")))?;
        let Command::V1(command) = command;
        let (tenant, command) = match command {
            CommandV1::InTenant { tenant, command } => {
                // Command::check refuses anything else before it is proposed.
                let inner = CommandV1::tenant_write(&command).map_err(|e| StoreError::Corrupt(format!("log entry {index}: {e}")))?;
                if !crate::tenancy::valid_tenant(&tenant) {
                    return Err(StoreError::Corrupt(format!("log entry {index}: invalid tenant id")));
                }
                (Some(tenant), inner)
            }
            other => (None, other),
        };
        if let Some(t) = &tenant {
            self.space = Space::of(self.tree.clone(), Some(t));
        }
        let result = self.apply_command(index, term, command, tenant.as_deref());
        self.space = Space::root(self.tree.clone());
        result
    }

    fn apply_command(&mut self, index: u64, term: u64, command: CommandV1, tenant: Option<&str>) -> Result<Vec<OpOutcome>, StoreError> {
        let pinning = match &command {
            CommandV1::Pin { format } => Some(format.as_str()),
            _ => None,
        };
        self.check_pin(index, pinning)?;
        let outcomes = match command {
            CommandV1::InTenant { .. } => return Err(StoreError::Corrupt(format!("log entry {index}: nested tenant commands"))),
            CommandV1::Writes { ts_micros, ops } => self.apply_writes(index, term, ts_micros, &ops, tenant)?,
            CommandV1::Bundle { ts_micros, atomic, entries } => self.apply_bundle(index, term, ts_micros, atomic, entries, tenant)?,
            CommandV1::Pin { format } => {
                let mut batch = Writes::default();
                batch.insert_meta(keys::META_PIN, format.as_bytes());
                batch.insert_meta(keys::META_APPLIED, &u64_pair(index, term));
                self.write(batch)?;
                self.pin = Some(format);
                Vec::new()
            }
            CommandV1::Export(op) => {
                self.apply_export(index, term, op)?;
                Vec::new()
            }
            CommandV1::SearchCursor(op) => {
                self.apply_search_cursor(index, term, op)?;
                Vec::new()
            }
            CommandV1::SubscriptionCursor(op) => {
                self.apply_subscription_cursor(index, term, op)?;
                Vec::new()
            }
            CommandV1::Conditional { ts_micros, op, condition } => match self.resolve(&op, &condition)? {
                Resolved::Ops(ops) => {
                    let mut outs = self.apply_writes(index, term, ts_micros, &ops, tenant)?;
                    for (out, op) in outs.iter_mut().zip(&ops) {
                        if let Ok(a) = out {
                            a.id = Some(op.id.clone());
                        }
                    }
                    outs
                }
                Resolved::Outcome(out) => {
                    let mut w = Writes::default();
                    w.insert_meta(keys::META_APPLIED, &u64_pair(index, term));
                    self.write(w)?;
                    vec![out]
                }
            },
        };
        self.applied_index = index;
        self.applied_term = term;
        Ok(outcomes)
    }

    /// Writes of one entry in ONE batch, with the applied index and the clock.
    fn apply_writes(&mut self, index: u64, term: u64, ts_micros: u64, ops: &[WriteOp], tenant: Option<&str>) -> Result<Vec<OpOutcome>, StoreError> {
        let mut staged = self.stage(ts_micros);
        self.register_tenant(&mut staged, tenant)?;
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            outcomes.push(self.stage_op(&mut staged, op)?);
        }
        self.commit(staged, index, term)?;
        Ok(outcomes)
    }

    /// Records a tenant the first time it writes (the index rebuild visits every tenant).
    pub(super) fn register_tenant(&self, staged: &mut Staged, tenant: Option<&str>) -> Result<(), StoreError> {
        if let Some(t) = tenant {
            let key = keys::meta_tenant(t);
            if !self.tree.contains_key(&key)? {
                staged.batch.insert_meta(key, &[]);
            }
        }
        Ok(())
    }

    /// Every tenant that has written (not the default tenant).
    pub fn tenants(&self) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for k in self.tree.scan_prefix(keys::META_TENANT_PREFIX).keys() {
            out.push(String::from_utf8_lossy(&k?[keys::META_TENANT_PREFIX.len()..]).into_owned());
        }
        Ok(out)
    }

    /// Moves the clock to `ts_micros` (or keeps it, if it is ahead) for an entry that writes no
    /// resource but must be ordered in time (an export's kick-off): writes applied before have
    /// timestamps up to the returned instant, later ones after it.
    pub(super) fn advance_clock(&mut self, ts_micros: u64, w: &mut Writes) -> u64 {
        self.last_ts = self.last_ts.max(ts_micros);
        w.insert_meta(keys::META_LAST_TS, &u64_pair(self.last_ts, 0));
        self.last_ts
    }

}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::meta;
    use crate::machine::command::{Action, Condition};
    use serde_json::Value;
    use crate::store::resources::{HistoryQuery, HistoryScope, PageDir, Store};

    fn op(action: Action, id: &str, body: Option<&str>, if_match: Option<u64>) -> WriteOp {
        WriteOp {
            action,
            rtype: "Patient".into(),
            id: id.into(),
            body: body.map(String::from),
            if_match,
            allow_create: true,
        }
    }

    fn writes(ts: u64, ops: Vec<WriteOp>) -> Vec<u8> {
        Command::V1(CommandV1::Writes { ts_micros: ts, ops }).encode()
    }

    const P: &str = r#"{"resourceType":"Patient","id":"a"}"#;

    fn open() -> (tempfile::TempDir, StateMachine, Store) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let tree = db.open_tree("state").unwrap();
        (dir, StateMachine::open(tree.clone()).unwrap(), Store::new(tree))
    }

    #[test]
    fn versions_if_match_and_deletes_within_one_entry() {
        let (_d, mut sm, store) = open();
        let out = sm
            .apply(
                1,
                1,
                &writes(
                    100,
                    vec![
                        op(Action::Update, "a", Some(P), None),
                        op(Action::Update, "a", Some(P), Some(1)),
                        op(Action::Update, "a", Some(P), Some(1)),
                        op(Action::Delete, "a", None, None),
                        op(Action::Delete, "a", None, None),
                        op(Action::Delete, "zz", None, None),
                    ],
                ),
            )
            .unwrap();
        assert_eq!(out[0].as_ref().unwrap().version, Some(1));
        assert!(out[0].as_ref().unwrap().created);
        assert_eq!(out[1].as_ref().unwrap().version, Some(2));
        assert!(matches!(out[2], Err(StoreError::VersionConflict { expected: 1, current: Some(2), .. })));
        assert_eq!(out[3].as_ref().unwrap().version, Some(3));
        assert!(out[4].as_ref().unwrap().noop);
        assert!(out[5].as_ref().unwrap().noop && out[5].as_ref().unwrap().version.is_none());
        assert_eq!(sm.applied_index(), 1);
        assert!(matches!(store.read("Patient", "a"), Err(StoreError::Gone { version: 3, .. })));
        let v2 = store.vread("Patient", "a", 2).unwrap();
        let body: Value = serde_json::from_slice(v2.body()).unwrap();
        assert_eq!(body["meta"]["versionId"], "2");
        assert_eq!(body["meta"]["lastUpdated"], meta::format_instant(101));
        // Undelete: a new version, reported as created.
        let out = sm.apply(2, 1, &writes(50, vec![op(Action::Update, "a", Some(P), None)])).unwrap();
        let a = out[0].as_ref().unwrap();
        assert_eq!((a.version, a.created), (Some(4), true));
        assert_eq!(a.ts_micros, 103, "timestamps never go backwards along the log");
    }

    #[test]
    fn an_entry_this_binary_cannot_decode_stops_apply() {
        let (_d, mut sm, _store) = open();
        assert!(matches!(sm.apply(1, 1, b"\x07\x00\x00\x00garbage"), Err(StoreError::Corrupt(_))));
        assert_eq!(sm.applied_index(), 0, "nothing recorded as applied");
    }

    #[test]
    fn reopen_resumes_applied_index_and_clock() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = sled::open(dir.path()).unwrap();
            let mut sm = StateMachine::open(db.open_tree("state").unwrap()).unwrap();
            sm.apply(7, 2, &writes(1000, vec![op(Action::Create, "x", Some(P), None)])).unwrap();
            db.flush().unwrap();
        }
        // sled's background flusher can hold the file lock for a moment after the drop.
        let start = std::time::Instant::now();
        let db = loop {
            match sled::open(dir.path()) {
                Ok(db) => break db,
                Err(e) if start.elapsed() < std::time::Duration::from_secs(10) => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("reopen: {e}"),
            }
        };
        let sm = StateMachine::open(db.open_tree("state").unwrap()).unwrap();
        assert_eq!((sm.applied_index(), sm.applied_term(), sm.last_ts), (7, 2, 1000));
    }

    #[test]
    fn history_pages_walk_both_ways() {
        let (_d, mut sm, store) = open();
        for i in 0..5u64 {
            sm.apply(i + 1, 1, &writes(10 + i, vec![op(Action::Update, "a", Some(P), None)])).unwrap();
        }
        let scope = HistoryScope::Instance { rtype: "Patient".into(), id: "a".into() };
        let q = |cursor| HistoryQuery { since: None, at: None, count: 2, cursor, max_scan: 1000 };
        let p1 = store.history(&scope, &q(None)).unwrap();
        assert_eq!(p1.entries.iter().map(|e| e.version).collect::<Vec<_>>(), [5, 4]);
        assert!(p1.newer.is_none());
        let p2 = store.history(&scope, &q(Some((p1.older.clone().unwrap(), PageDir::Older)))).unwrap();
        assert_eq!(p2.entries.iter().map(|e| e.version).collect::<Vec<_>>(), [3, 2]);
        let p3 = store.history(&scope, &q(Some((p2.older.clone().unwrap(), PageDir::Older)))).unwrap();
        assert_eq!(p3.entries.iter().map(|e| e.version).collect::<Vec<_>>(), [1]);
        assert!(p3.older.is_none());
        let back = store.history(&scope, &q(Some((p3.newer.clone().unwrap(), PageDir::Newer)))).unwrap();
        assert_eq!(back.entries.iter().map(|e| e.version).collect::<Vec<_>>(), [3, 2]);
        let sys = store.history(&HistoryScope::System, &HistoryQuery { since: Some(12), at: None, count: 10, cursor: None, max_scan: 1000 }).unwrap();
        assert_eq!(sys.entries.iter().map(|e| e.version).collect::<Vec<_>>(), [5, 4, 3]);
        let at = store.history(&scope, &HistoryQuery { since: None, at: Some((12, 13)), count: 10, cursor: None, max_scan: 1000 }).unwrap();
        // `_at` before everything reads nothing on the system history (was: every version).
        let early = store.history(&HistoryScope::System, &HistoryQuery { since: None, at: Some((0, 1)), count: 10, cursor: None, max_scan: 1 }).unwrap();
        assert!(early.entries.is_empty());
        let costly = store.history(&HistoryScope::System, &HistoryQuery { since: Some(10), at: Some((11, 12)), count: 10, cursor: None, max_scan: 1 });
        assert!(matches!(costly, Err(StoreError::TooCostly(_))), "{costly:?}");
        assert_eq!(at.entries.iter().map(|e| e.version).collect::<Vec<_>>(), [3]);
    }

    fn conditional_delete(query: &str) -> Vec<u8> {
        let op = WriteOp { action: Action::Delete, rtype: "Patient".into(), id: "x".into(), body: None, if_match: None, allow_create: true };
        let condition = Condition { query: serde_urlencoded::from_str(query).unwrap(), client_id: false, multiple: true };
        Command::V1(CommandV1::Conditional { ts_micros: 5_000, op, condition }).encode()
    }

    #[test]
    fn a_condition_past_its_row_budget_fails_alike_everywhere() {
        let mut ix = crate::machine::testing::indexed();
        // 3,000 Patients with distinct names: `name:contains=a` reads one row per name.
        let people: Vec<Value> = (0..3_000).map(|i| serde_json::json!({"resourceType": "Patient", "id": format!("p{i}"), "name": [{"family": format!("fam{i}a")}]})).collect();
        crate::machine::testing::put_all(&mut ix.sm, 1, &people);
        let cheap = ix.sm.apply(2, 1, &conditional_delete("_id=p1")).unwrap();
        assert!(cheap[0].is_ok(), "{cheap:?}");
        let all = crate::search::query::condition_ids(&ix.reg, &ix.tree, "Patient", &[("name:contains".into(), "a".into())]).unwrap();
        assert_eq!(all.len(), 2_999, "within the default budget (p1 was deleted)");
        // An entry's pool smaller than what the condition reads: it fails, with the limit named.
        let out = crate::search::cost::pool(1_000, || crate::search::query::condition_ids(&ix.reg, &ix.tree, "Patient", &[("name:contains".into(), "a".into())]));
        let err = out.unwrap_err().to_string();
        assert!(err.contains("too costly") && err.contains("1000"), "{err}");
        // Inside apply, the outcome is a per-write failure: the entry is applied (as a no-op).
        let before = ix.sm.applied_index();
        let many = crate::search::cost::pool(1_000, || ix.sm.apply(before + 1, 1, &conditional_delete("name:contains=a")));
        assert!(matches!(&many.unwrap()[0], Err(StoreError::BadCondition(m)) if m.contains("too costly")));
        assert_eq!(ix.sm.applied_index(), before + 1);
        assert!(ix.sm.apply(before + 2, 1, &conditional_delete("near=1|2|3|km")).unwrap()[0].is_err(), "near is refused in conditions");
    }

    #[test]
    fn a_replica_with_other_search_definitions_stops_instead_of_diverging() {
        let mut ix = crate::machine::testing::indexed();
        let mine = ix.sm.needs_pin().expect("no pin yet");
        let pin = |format: &str| Command::V1(CommandV1::Pin { format: format.into() }).encode();
        assert!(matches!(ix.sm.apply(1, 1, &pin("6:Stu3-0000")), Err(StoreError::Corrupt(m)) if m.contains("pinned")), "a foreign pin is refused");
        assert_eq!(ix.sm.applied_index(), 0);
        ix.sm.apply(1, 1, &pin(&mine)).unwrap();
        assert!(ix.sm.needs_pin().is_none());
        crate::machine::testing::put_all(&mut ix.sm, 2, &[serde_json::json!({"resourceType": "Patient", "id": "a"})]);
        // The cluster re-pinned by a leader with other definitions: this node stops at the pin,
        // and (were the pin already in its state, from a snapshot) at any later write.
        assert!(ix.sm.apply(3, 1, &pin("99:R4-other")).is_err());
        ix.tree.insert(keys::META_PIN, b"99:R4-other".as_slice()).unwrap();
        let mut reopened = StateMachine::open(ix.tree.tree().clone()).unwrap().with_search(ix.reg.clone());
        assert!(reopened.needs_pin().is_some());
        assert!(matches!(reopened.apply(3, 1, &conditional_delete("_id=a")), Err(StoreError::Corrupt(_))));
        assert_eq!(reopened.applied_index(), 2, "nothing applied");
    }
}
