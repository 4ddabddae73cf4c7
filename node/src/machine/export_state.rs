//! Where export jobs live in the replicated `state` tree, and how they are read back. Jobs are
//! state-machine metadata (outside every tenant's key space; a job names its tenant):
//!
//! | key | value |
//! |---|---|
//! | `mexport\0` job id | JSON [`Job`] |
//! | `mexportf\0` job id `\0` type | the doc numbers `_typeFilter` selects of that type, as of the kick-off (roaring) |

use roaring::RoaringBitmap;

use super::export_job::Job;
use crate::store::StoreError;

pub const JOB_PREFIX: &[u8] = b"mexport\0";
pub const FILTER_PREFIX: &[u8] = b"mexportf\0";

pub fn job_key(id: &str) -> Vec<u8> {
    let mut k = JOB_PREFIX.to_vec();
    k.extend_from_slice(id.as_bytes());
    k
}

/// Prefix of every filter row of one job.
pub fn filters_of(id: &str) -> Vec<u8> {
    let mut k = FILTER_PREFIX.to_vec();
    k.extend_from_slice(id.as_bytes());
    k.push(0);
    k
}

pub fn filter_key(id: &str, rtype: &str) -> Vec<u8> {
    let mut k = filters_of(id);
    k.extend_from_slice(rtype.as_bytes());
    k
}

pub fn decode_job(raw: &[u8]) -> Result<Job, StoreError> {
    serde_json::from_slice(raw).map_err(|e| StoreError::Corrupt(format!("export job record: {e}")))
}

/// One job, if it exists.
pub fn load(tree: &sled::Tree, id: &str) -> Result<Option<Job>, StoreError> {
    tree.get(job_key(id))?.map(|raw| decode_job(&raw)).transpose()
}

/// Every job (active, finished, cancelled but not yet removed).
pub fn list(tree: &sled::Tree) -> Result<Vec<Job>, StoreError> {
    let mut out = Vec::new();
    for item in tree.scan_prefix(JOB_PREFIX) {
        let (_, v) = item?;
        out.push(decode_job(&v)?);
    }
    Ok(out)
}

/// The doc numbers `_typeFilter` selected of `rtype` (`None`: the type has no filter).
pub fn filter(tree: &sled::Tree, id: &str, rtype: &str) -> Result<Option<RoaringBitmap>, StoreError> {
    match tree.get(filter_key(id, rtype))? {
        None => Ok(None),
        Some(raw) => RoaringBitmap::deserialize_from(&raw[..]).map(Some).map_err(|e| StoreError::Corrupt(format!("export filter: {e}"))),
    }
}
