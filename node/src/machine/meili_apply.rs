//! Applying [`CursorOp`]s: the Meilisearch indexer's cursor is replicated state
//! ([`crate::machine::meili_cursor`]), decided here identically on every node. An advance from an older
//! epoch or to an earlier timestamp changes nothing: the cursor never moves back except by a
//! reset, and an indexer that read its batch before a reset cannot undo it.

use crate::store::keys;
use super::state_machine::{u64_pair, StateMachine};
use crate::store::writes::Writes;
use crate::store::StoreError;
use crate::machine::meili_cursor::{self as cursor, CursorOp};

impl StateMachine {
    /// Applies one cursor op in one batch with the applied index.
    pub(super) fn apply_search_cursor(&mut self, index: u64, term: u64, op: CursorOp) -> Result<(), StoreError> {
        let mut w = Writes::default();
        match op {
            CursorOp::Advance { tenant, epoch, ts } => {
                let (now, at) = cursor::load(&self.tree, tenant.as_deref())?;
                // Never past the replicated clock: a cursor beyond every write would stop indexing.
                if epoch == now && ts > at && ts <= self.last_ts() {
                    w.insert_meta(cursor::cursor_key(tenant.as_deref()), &cursor::encode(epoch, ts));
                }
            }
            CursorOp::Reset => {
                let next = cursor::epoch(&self.tree)?.saturating_add(1);
                w.insert_meta(cursor::EPOCH_KEY, &next.to_be_bytes());
            }
        }
        w.insert_meta(keys::META_APPLIED, &u64_pair(index, term));
        self.write(w)
    }
}

#[cfg(test)]
mod tests {
    use crate::machine::meili_cursor::{self as cursor, CursorOp};
    use crate::machine::command::{Command, CommandV1};
    use crate::machine::StateMachine;

    #[test]
    fn the_cursor_moves_forward_only_and_a_reset_turns_away_older_moves() {
        let dir = tempfile::tempdir().unwrap();
        let tree = sled::open(dir.path()).unwrap().open_tree("state").unwrap();
        let mut sm = StateMachine::open(tree.clone()).unwrap();
        // A write moves the replicated clock to 1,000 µs: cursors may not pass it.
        crate::machine::testing::put_all(&mut sm, 1, &[serde_json::json!({"resourceType": "Patient", "id": "p"})]);
        let mut index = 1;
        let mut apply = |op: CursorOp| {
            index += 1;
            let cmd = Command::V1(CommandV1::SearchCursor(op.clone()));
            let forwarded = cmd.check(&crate::fhir::Definitions::load(crate::fhir::FhirVersion::R4), 64);
            assert_eq!(forwarded.is_ok(), matches!(op, CursorOp::Reset), "only a reset may be forwarded");
            sm.apply(index, 1, &cmd.encode()).unwrap();
        };
        let adv = |tenant: Option<&str>, epoch, ts| CursorOp::Advance { tenant: tenant.map(String::from), epoch, ts };
        assert_eq!(cursor::load(&tree, None).unwrap(), (0, 0));
        apply(adv(None, 0, 500));
        assert_eq!(cursor::load(&tree, None).unwrap(), (0, 500));
        apply(adv(None, 0, 300));
        assert_eq!(cursor::load(&tree, None).unwrap(), (0, 500), "never backwards");
        apply(adv(Some("acme"), 0, 700));
        assert_eq!(cursor::load(&tree, Some("acme")).unwrap(), (0, 700), "per tenant");
        apply(CursorOp::Reset);
        assert_eq!(cursor::load(&tree, None).unwrap(), (1, 0));
        assert_eq!(cursor::load(&tree, Some("acme")).unwrap(), (1, 0));
        apply(adv(None, 0, 900));
        assert_eq!(cursor::load(&tree, None).unwrap(), (1, 0), "a move read before the reset is turned away");
        apply(adv(None, 1, 100));
        assert_eq!(cursor::load(&tree, None).unwrap(), (1, 100));
        apply(adv(None, 1, u64::MAX));
        assert_eq!(cursor::load(&tree, None).unwrap(), (1, 100), "never past the last write");
        assert_eq!(sm.applied_index(), 8);
    }
}
