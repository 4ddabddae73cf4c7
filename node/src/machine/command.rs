//! The commands proposed to Raft and their results. Everything non-deterministic (ids, the
//! timestamp, the resolved body) is decided by the proposer and carried here; everything that depends
//! on state (versions, If-Match, existence) is decided at apply.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use crate::store::Action;
use crate::store::StoreError;
use crate::fhir::{valid_id, Definitions};

/// A replicated command. The outer enum is the wire version: add `V2` rather than changing `V1`'s
/// existing variants; new kinds of command are appended to `V1` (bincode numbers variants by
/// position, so older entries still decode). A node that meets an entry it cannot decode (written
/// by a newer binary) stops applying rather than skip it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Command {
    V1(CommandV1),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum CommandV1 {
    /// Independent writes coalesced into one entry (group commit). Each succeeds or fails alone.
    Writes {
        /// Proposer's clock (µs since epoch); apply makes it strictly increasing along the log.
        ts_micros: u64,
        ops: Vec<WriteOp>,
    },
    /// A conditional create / update / delete: the condition is a search evaluated at apply, so
    /// the decision is atomic and the same on every node. Always alone in its entry.
    Conditional {
        ts_micros: u64,
        /// Create: the new resource (id chosen by the proposer, used on no match). Update: the
        /// resource (its id is used on no match). Delete: only `rtype` matters.
        op: WriteOp,
        condition: Condition,
    },
    /// The writes of a batch or transaction bundle, in processing order. A transaction
    /// (`atomic`) is applied all-or-nothing in one sled batch, with `urn:uuid:` / `urn:oid:`
    /// fullUrls and conditional references resolved at apply; batch entries succeed or fail alone.
    Bundle {
        ts_micros: u64,
        atomic: bool,
        entries: Vec<BundleOp>,
    },
    /// Pins the cluster to one index format (the FHIR version and the search parameter set every
    /// replica must evaluate conditions and write index rows with). Proposed by a leader whose
    /// own format differs from the pinned one; a replica with another format refuses to apply it
    /// and every later write (a mixed cluster stops instead of diverging).
    Pin { format: String },
    /// A write command (Writes, Conditional or Bundle) of tenant `tenant`: applied in that
    /// tenant's key space ([`crate::store::space`]). The default tenant's commands are not wrapped.
    /// `command` is the inner command's encoding ([`CommandV1::tenant_write`] decodes it), so
    /// decoding never recurses however a peer nests it.
    InTenant { tenant: String, command: Vec<u8> },
    /// A change to a bulk export job ([`crate::machine::export_job`]): kick-off, checkpoint, completion,
    /// failure, cancel, removal.
    Export(crate::machine::export_job::ExportOp),
    /// A move of the Meilisearch indexer's replicated cursor, or its reset
    /// ([`crate::machine::meili_cursor`]). Not a resource write: no timestamp, no tenant wrapper.
    SearchCursor(crate::machine::meili_cursor::CursorOp),
    /// Moves of the rest-hook delivery positions of Subscriptions
    /// ([`crate::machine::sub_cursor`]). Proposed by the leader's notifier only.
    SubscriptionCursor(crate::machine::sub_cursor::SubCursorOp),
}

/// One write entry of a [`CommandV1::Bundle`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BundleOp {
    /// Position in the client's bundle (errors and responses name it).
    pub index: u32,
    pub op: WriteOp,
    /// Conditional create / update / delete: decided by this search on the state before the bundle.
    pub condition: Option<Condition>,
    /// `ifNoneMatch: *` on a PUT: only when the resource does not exist.
    pub if_none_match: bool,
    /// The entry's fullUrl: references to it in other entries are rewritten to `Type/id`.
    pub full_url: Option<String>,
}

/// The search of a conditional write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Condition {
    /// Search parameters, as in a type-level search.
    pub query: Vec<(String, String)>,
    /// Update: the client's body carried an id (it must then equal the match's).
    pub client_id: bool,
    /// Delete: several matches may all be deleted (else 412).
    pub multiple: bool,
}

/// One write of a [`CommandV1::Writes`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteOp {
    pub action: Action,
    pub rtype: String,
    pub id: String,
    /// The validated resource JSON without server-owned meta (none for Delete).
    pub body: Option<String>,
    /// Required current version (`If-Match`).
    pub if_match: Option<u64>,
    /// Whether an Update may create a resource that does not exist.
    pub allow_create: bool,
}

/// The result of one applied write.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The resulting current version (for a no-op delete: the existing version, if any).
    pub version: Option<u64>,
    pub ts_micros: u64,
    /// The write made a resource exist that did not (201 Created).
    pub created: bool,
    /// The write changed nothing (delete of a deleted or absent resource).
    pub noop: bool,
    /// The stored body, with meta stamped (not for deletes).
    pub body: Option<Arc<Vec<u8>>>,
    /// The resource this is about, when a conditional write decided it (else the op's id).
    pub id: Option<String>,
}

/// Per-op result of applying one entry.
pub type OpOutcome = Result<Applied, StoreError>;

impl CommandV1 {
    fn with_ts(mut self, ts: u64) -> CommandV1 {
        match &mut self {
            CommandV1::Writes { ts_micros, .. } | CommandV1::Conditional { ts_micros, .. } | CommandV1::Bundle { ts_micros, .. } => *ts_micros = ts,
            CommandV1::Pin { .. } | CommandV1::SearchCursor(_) | CommandV1::SubscriptionCursor(_) => {}
            CommandV1::Export(op) => *op = op.clone().with_ts(ts),
            CommandV1::InTenant { command, .. } => {
                // Undecodable: left as is (checks and apply refuse it).
                if let Ok(inner) = CommandV1::tenant_write(command) {
                    *command = bincode::serialize(&inner.with_ts(ts)).expect("commands always serialize");
                }
            }
        }
        self
    }

    /// The write inside an [`CommandV1::InTenant`]: Writes, Conditional or Bundle, nothing else.
    pub fn tenant_write(bytes: &[u8]) -> Result<CommandV1, String> {
        match bincode::deserialize::<CommandV1>(bytes).map_err(|e| format!("undecodable tenant command: {e}"))? {
            c @ (CommandV1::Writes { .. } | CommandV1::Conditional { .. } | CommandV1::Bundle { .. }) => Ok(c),
            _ => Err("a tenant command must be a write".into()),
        }
    }
}

impl Command {
    /// Checks a command that arrived from a peer before the leader proposes it, as the proposing
    /// node's actor checked it: known resource types, valid ids, and bodies that are resources of
    /// their type passing validation. The log then never holds a write that apply cannot take.
    pub fn check(&self, defs: &Definitions, max_depth: usize) -> Result<(), String> {
        // (op, whether a condition decides its target)
        let ops: Vec<(&WriteOp, bool)> = match self {
            Command::V1(CommandV1::Writes { ops, .. }) => ops.iter().map(|op| (op, false)).collect(),
            Command::V1(CommandV1::Conditional { op, .. }) => vec![(op, true)],
            Command::V1(CommandV1::Bundle { entries, .. }) => entries.iter().map(|e| (&e.op, e.condition.is_some())).collect(),
            Command::V1(CommandV1::Pin { .. }) => return Err("a Pin is proposed by the leader itself, never forwarded".into()),
            Command::V1(CommandV1::Export(op)) => return op.check(defs),
            Command::V1(CommandV1::SearchCursor(op)) => return op.check(),
            Command::V1(CommandV1::SubscriptionCursor(op)) => return op.check(),
            Command::V1(CommandV1::InTenant { tenant, command }) => {
                if !crate::tenancy::valid_tenant(tenant) {
                    return Err(format!("invalid tenant id {tenant:?}"));
                }
                return Command::V1(CommandV1::tenant_write(command)?).check(defs, max_depth);
            }
        };
        for (op, conditional) in ops {
            let rtype = defs.resource_type(&op.rtype).map_err(|e| e.to_string())?;
            // A conditional delete names no resource: the condition finds them at apply.
            let unnamed = conditional && op.action == Action::Delete && op.id.is_empty();
            if !unnamed && !valid_id(&op.id) {
                return Err(format!("invalid id {:?}", op.id));
            }
            match (op.action, &op.body) {
                (Action::Delete, None) => {}
                (Action::Delete, Some(_)) => return Err("a delete carries no body".into()),
                (_, None) => return Err(format!("a write of {rtype} without a body")),
                (_, Some(text)) => {
                    let body: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("body of {rtype}/{}: {e}", op.id))?;
                    defs.validate(rtype, &body, max_depth).map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(())
    }

    /// The same command with its timestamp replaced (the leader stamps forwarded writes with its
    /// own clock, so a follower's clock never moves `lastUpdated`).
    pub fn with_ts(self, ts: u64) -> Command {
        let Command::V1(inner) = self;
        Command::V1(inner.with_ts(ts))
    }

    /// The command as tenant `tenant` proposes it (unchanged for the default tenant).
    pub fn in_tenant(self, tenant: Option<&str>) -> Command {
        match (tenant, self) {
            (Some(t), Command::V1(inner)) => {
                Command::V1(CommandV1::InTenant { tenant: t.to_string(), command: bincode::serialize(&inner).expect("commands always serialize") })
            }
            (None, cmd) => cmd,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        bincode::serialize(self).expect("commands always serialize")
    }

    pub fn decode(bytes: &[u8]) -> Result<Command, StoreError> {
        bincode::deserialize(bytes).map_err(|e| StoreError::Corrupt(format!("undecodable command: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_round_trips() {
        let c = Command::V1(CommandV1::Writes {
            ts_micros: 42,
            ops: vec![WriteOp {
                action: Action::Update,
                rtype: "Patient".into(),
                id: "a".into(),
                body: Some("{\"resourceType\":\"Patient\"}".into()),
                if_match: Some(3),
                allow_create: true,
            }],
        });
        let Command::V1(CommandV1::Writes { ts_micros, ops }) = Command::decode(&c.encode()).unwrap() else { panic!("writes") };
        assert_eq!(ts_micros, 42);
        assert_eq!(ops[0].if_match, Some(3));
        assert!(Command::decode(b"\xff\xff").is_err());
        let Command::V1(CommandV1::Writes { ts_micros, .. }) = c.with_ts(7) else { panic!("writes") };
        assert_eq!(ts_micros, 7);
        for a in [Action::Create, Action::Update, Action::Patch, Action::Delete] {
            assert_eq!(Action::from_code(a.code()), Some(a));
        }
    }

    #[test]
    fn tenant_commands_wrap_one_write_and_never_nest() {
        let defs = Definitions::load(crate::fhir::FhirVersion::R4);
        let op = WriteOp { action: Action::Update, rtype: "Patient".into(), id: "a".into(), body: Some(r#"{"resourceType":"Patient","id":"a"}"#.into()), if_match: None, allow_create: true };
        let write = Command::V1(CommandV1::Writes { ts_micros: 1, ops: vec![op] });
        let wrapped = write.clone().in_tenant(Some("acme"));
        wrapped.check(&defs, 64).unwrap();
        let Command::V1(CommandV1::InTenant { tenant, command }) = Command::decode(&wrapped.clone().with_ts(9).encode()).unwrap() else { panic!("in tenant") };
        assert_eq!(tenant, "acme");
        let CommandV1::Writes { ts_micros, .. } = CommandV1::tenant_write(&command).unwrap() else { panic!("writes") };
        assert_eq!(ts_micros, 9, "the leader's clock reaches the inner write");
        assert!(wrapped.clone().in_tenant(Some("other")).check(&defs, 64).is_err(), "nested: refused");
        assert!(write.clone().in_tenant(Some("bad tenant")).check(&defs, 64).is_err());
        let pin = Command::V1(CommandV1::Pin { format: "x".into() }).in_tenant(Some("acme"));
        assert!(pin.check(&defs, 64).is_err());
        assert!(matches!(write.in_tenant(None), Command::V1(CommandV1::Writes { .. })));
    }

    #[test]
    fn forwarded_commands_are_checked() {
        let defs = Definitions::load(crate::fhir::FhirVersion::R4);
        let w = |rtype: &str, id: &str, action: Action, body: Option<&str>| {
            Command::V1(CommandV1::Writes {
                ts_micros: 1,
                ops: vec![WriteOp { action, rtype: rtype.into(), id: id.into(), body: body.map(String::from), if_match: None, allow_create: true }],
            })
        };
        assert!(w("Patient", "a", Action::Update, Some(r#"{"resourceType":"Patient","id":"a"}"#)).check(&defs, 64).is_ok());
        assert!(w("Patient", "a", Action::Delete, None).check(&defs, 64).is_ok());
        let cond = Condition { query: vec![("name".into(), "x".into())], client_id: false, multiple: false };
        let del = WriteOp { action: Action::Delete, rtype: "Patient".into(), id: String::new(), body: None, if_match: None, allow_create: true };
        let conditional_delete = Command::V1(CommandV1::Conditional { ts_micros: 1, op: del.clone(), condition: cond.clone() });
        assert!(conditional_delete.check(&defs, 64).is_ok(), "a conditional delete names no id");
        let in_bundle = Command::V1(CommandV1::Bundle {
            ts_micros: 1,
            atomic: true,
            entries: vec![BundleOp { index: 0, op: del.clone(), condition: Some(cond), if_none_match: false, full_url: None }],
        });
        assert!(in_bundle.check(&defs, 64).is_ok());
        assert!(Command::V1(CommandV1::Writes { ts_micros: 1, ops: vec![del] }).check(&defs, 64).is_err(), "a plain delete needs an id");
        for bad in [
            w("Nope", "a", Action::Update, Some(r#"{"resourceType":"Nope"}"#)),
            w("Patient", "a/b", Action::Update, Some(r#"{"resourceType":"Patient"}"#)),
            w("Patient", "a", Action::Update, Some("not json")),
            w("Patient", "a", Action::Update, Some(r#"{"resourceType":"Observation"}"#)),
            w("Patient", "a", Action::Update, Some(r#"{"resourceType":"Patient","active":"yes"}"#)),
            w("Patient", "a", Action::Update, None),
            w("Patient", "a", Action::Delete, Some("{}")),
        ] {
            assert!(bad.check(&defs, 64).is_err(), "{bad:?}");
        }
    }
}
