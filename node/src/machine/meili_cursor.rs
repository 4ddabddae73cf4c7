//! The replicated indexer cursor: per tenant, the timestamp of the last system history row whose
//! resource is in Meilisearch. The history rows (`h` + ts, written by every apply batch) are the
//! outbox; the cursor is the only state the indexer adds, and it changes only through Raft
//! ([`CursorOp`], applied by `machine::meili_apply`), so a new leader resumes where the old one
//! stopped. An epoch (bumped by a reset, `kiln reindex`) makes every tenant's cursor 0 at once
//! and turns away the moves of an indexer that read its batch before the reset.
//!
//! | key | value |
//! |---|---|
//! | `mmeili_epoch` | epoch u64 BE |
//! | `mmeili\0` tenant | epoch u64 BE, ts µs u64 BE (the default tenant: empty name) |

use serde::{Deserialize, Serialize};

use crate::store::StoreError;

pub const EPOCH_KEY: &[u8] = b"mmeili_epoch";
pub const CURSOR_PREFIX: &[u8] = b"mmeili\0";

/// A change of the cursor, carried by `CommandV1::SearchCursor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CursorOp {
    /// Every history row of `tenant` up to `ts` (µs) is in Meilisearch, as read in `epoch`.
    /// Applied only if `epoch` is the current one and `ts` is ahead: the cursor never moves back.
    Advance { tenant: Option<String>, epoch: u64, ts: u64 },
    /// Starts over (`kiln reindex`): every tenant's cursor becomes 0.
    Reset,
}

impl CursorOp {
    /// Checks a forwarded op: a valid tenant name.
    pub fn check(&self) -> Result<(), String> {
        // Only the leader's own indexer moves or resets the cursor (a reset comes from the
        // operator API of the node that receives it, proposed there): a forwarded advance is a
        // deposed leader's, or a peer's, and is refused.
        match self {
            CursorOp::Advance { .. } => Err("a search cursor advance is proposed by the leader's indexer itself, never forwarded".into()),
            CursorOp::Reset => Ok(()),
        }
    }
}

pub fn cursor_key(tenant: Option<&str>) -> Vec<u8> {
    let mut k = CURSOR_PREFIX.to_vec();
    k.extend_from_slice(tenant.unwrap_or("").as_bytes());
    k
}

pub fn encode(epoch: u64, ts: u64) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&epoch.to_be_bytes());
    b[8..].copy_from_slice(&ts.to_be_bytes());
    b
}

/// The current epoch (0 before any reset).
pub fn epoch(tree: &sled::Tree) -> Result<u64, StoreError> {
    match tree.get(EPOCH_KEY)? {
        None => Ok(0),
        Some(b) => Ok(u64::from_be_bytes(b.as_ref().try_into().map_err(|_| StoreError::Corrupt("meilisearch epoch".into()))?)),
    }
}

/// (current epoch, cursor of `tenant` in it: 0 if it was last moved in an older epoch).
pub fn load(tree: &sled::Tree, tenant: Option<&str>) -> Result<(u64, u64), StoreError> {
    let now = epoch(tree)?;
    let Some(b) = tree.get(cursor_key(tenant))? else { return Ok((now, 0)) };
    if b.len() != 16 {
        return Err(StoreError::Corrupt("meilisearch cursor".into()));
    }
    let e = u64::from_be_bytes(b[..8].try_into().expect("8 bytes"));
    let ts = u64::from_be_bytes(b[8..].try_into().expect("8 bytes"));
    Ok((now, if e == now { ts } else { 0 }))
}
