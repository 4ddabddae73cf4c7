//! The replicated delivery positions: per rest-hook Subscription, the timestamp up to which
//! every matching history row has been delivered (or given up on, when the Subscription went
//! to `error`). The history rows are the outbox; these positions are the only state delivery
//! adds, changed only through Raft ([`SubCursorOp`], applied by
//! `machine::subscription_apply`), so a new leader's notifier resumes where the old one stopped.
//!
//! | key | value |
//! |---|---|
//! | `msubcur\0` tenant `\0` id | ts µs u64 BE (the default tenant: empty name) |

use serde::{Deserialize, Serialize};

use crate::store::StoreError;

pub const CURSOR_PREFIX: &[u8] = b"msubcur\0";
/// Most moves one command carries (the notifier sends more in several).
pub const MAX_MOVES: usize = 1024;

/// A change of delivery positions, carried by `CommandV1::SubscriptionCursor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubCursorOp {
    /// For each (Subscription id, ts) of `tenant`: every matching row up to `ts` is delivered.
    /// Applied per move only forward and never past the replicated clock; the position of a
    /// Subscription that no longer exists is removed instead.
    Advance { tenant: Option<String>, moves: Vec<(String, u64)> },
}

impl SubCursorOp {
    /// A forwarded op is refused: only the leader's own notifier moves positions (a forwarded
    /// move is a deposed leader's or a peer's, and could skip notifications).
    pub fn check(&self) -> Result<(), String> {
        Err("a subscription delivery position is proposed by the leader's notifier itself, never forwarded".into())
    }
}

pub fn cursor_key(tenant: Option<&str>, id: &str) -> Vec<u8> {
    let mut k = CURSOR_PREFIX.to_vec();
    k.extend_from_slice(tenant.unwrap_or("").as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

/// The position of one Subscription (0: none yet).
pub fn load(tree: &sled::Tree, tenant: Option<&str>, id: &str) -> Result<u64, StoreError> {
    match tree.get(cursor_key(tenant, id))? {
        None => Ok(0),
        Some(b) => Ok(u64::from_be_bytes(b.as_ref().try_into().map_err(|_| StoreError::Corrupt("subscription cursor".into()))?)),
    }
}
