//! Applying [`SubCursorOp`]s: the rest-hook delivery positions are replicated state
//! ([`crate::machine::sub_cursor`]), decided here identically on every node. A position moves
//! only forward and never past the replicated clock (a position beyond every write would skip
//! notifications); the position of a Subscription that is deleted or absent is removed, so
//! positions are bounded by the Subscriptions that exist.

use crate::store::keys;
use super::state_machine::{u64_pair, StateMachine};
use crate::store::writes::Writes;
use crate::store::{Store, StoreError};
use crate::machine::sub_cursor::{self as cursor, SubCursorOp, MAX_MOVES};

impl StateMachine {
    /// Applies one position op in one batch with the applied index.
    pub(super) fn apply_subscription_cursor(&mut self, index: u64, term: u64, op: SubCursorOp) -> Result<(), StoreError> {
        let mut w = Writes::default();
        let SubCursorOp::Advance { tenant, moves } = op;
        let valid_tenant = tenant.as_deref().is_none_or(crate::tenancy::valid_tenant);
        if valid_tenant {
            let store = Store::new(self.tree.clone()).tenant(tenant.as_deref());
            for (id, ts) in moves.into_iter().take(MAX_MOVES) {
                if !crate::fhir::valid_id(&id) {
                    continue;
                }
                let key = cursor::cursor_key(tenant.as_deref(), &id);
                let exists = store.current("Subscription", &id)?.is_some_and(|c| !c.deleted);
                if !exists {
                    if self.tree.contains_key(&key)? {
                        w.remove_meta(key);
                    }
                    continue;
                }
                let at = cursor::load(&self.tree, tenant.as_deref(), &id)?;
                if ts > at && ts <= self.last_ts() {
                    w.insert_meta(key, &ts.to_be_bytes());
                }
            }
        }
        w.insert_meta(keys::META_APPLIED, &u64_pair(index, term));
        self.write(w)
    }
}

#[cfg(test)]
mod tests {
    use crate::machine::command::{Action, Command, CommandV1, WriteOp};
    use crate::machine::StateMachine;
    use crate::machine::sub_cursor::{self as cursor, SubCursorOp};

    #[test]
    fn positions_move_forward_only_within_the_clock_and_go_with_their_subscription() {
        let dir = tempfile::tempdir().unwrap();
        let tree = sled::open(dir.path()).unwrap().open_tree("state").unwrap();
        let mut sm = StateMachine::open(tree.clone()).unwrap();
        let sub = serde_json::json!({"resourceType": "Subscription", "id": "s", "status": "active", "reason": "r", "criteria": "Patient", "channel": {"type": "websocket"}});
        // One write moves the replicated clock to 1,000 µs.
        crate::machine::testing::put_all(&mut sm, 1, &[sub]);
        let mut index = 1;
        let apply = |sm: &mut StateMachine, index: &mut u64, moves: Vec<(&str, u64)>| {
            *index += 1;
            let op = SubCursorOp::Advance { tenant: None, moves: moves.into_iter().map(|(i, t)| (i.to_string(), t)).collect() };
            let cmd = Command::V1(CommandV1::SubscriptionCursor(op));
            assert!(cmd.check(&crate::fhir::Definitions::load(crate::fhir::FhirVersion::R4), 64).is_err(), "never forwarded");
            sm.apply(*index, 1, &cmd.encode()).unwrap();
        };
        apply(&mut sm, &mut index, vec![("s", 500), ("ghost", 700)]);
        assert_eq!(cursor::load(&tree, None, "s").unwrap(), 500);
        assert_eq!(cursor::load(&tree, None, "ghost").unwrap(), 0, "no position for a subscription that does not exist");
        apply(&mut sm, &mut index, vec![("s", 400)]);
        assert_eq!(cursor::load(&tree, None, "s").unwrap(), 500, "never backwards");
        apply(&mut sm, &mut index, vec![("s", u64::MAX)]);
        assert_eq!(cursor::load(&tree, None, "s").unwrap(), 500, "never past the last write");
        assert_eq!(cursor::load(&tree, Some("acme"), "s").unwrap(), 0, "per tenant");
        let del = WriteOp { action: Action::Delete, rtype: "Subscription".into(), id: "s".into(), body: None, if_match: None, allow_create: true };
        index += 1;
        sm.apply(index, 1, &Command::V1(CommandV1::Writes { ts_micros: 2_000, ops: vec![del] }).encode()).unwrap();
        apply(&mut sm, &mut index, vec![("s", 1_500)]);
        assert_eq!(cursor::load(&tree, None, "s").unwrap(), 0, "removed with its subscription");
        assert_eq!(sm.applied_index(), index);
    }
}
