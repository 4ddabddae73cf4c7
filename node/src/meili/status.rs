//! The indexer's state as `/_cluster/status` shows it (`meilisearch`), and the lag check text
//! queries make. Cursor and backlog are read from this node's replica (they are replicated);
//! `running`, `last_error` and the counters are this node's own.

use serde_json::{json, Value};

use crate::machine::meili_cursor as cursor;
use super::{Meili, MeiliError};
use crate::store::keys;
use crate::store::space::Space;
use crate::store::StoreError;

/// Most backlog rows counted for the status page (beyond: "at least").
pub const MAX_COUNTED_ROWS: usize = 1_000_000;

/// What the indexer last did on this node.
#[derive(Debug, Default, Clone)]
pub struct IndexerState {
    /// The indexer actor runs here (this node leads).
    pub running: bool,
    pub last_error: Option<String>,
    /// When `last_error` happened (µs).
    pub last_error_at: Option<u64>,
    /// Documents added or replaced, and deleted, by this node since it started.
    pub docs_sent: u64,
    pub docs_deleted: u64,
    /// When the last successful round ended (µs).
    pub last_ok_at: Option<u64>,
}

/// The default tenant and every tenant that has written.
pub fn tenants(tree: &sled::Tree) -> Result<Vec<Option<String>>, StoreError> {
    let mut out = vec![None];
    for k in tree.scan_prefix(keys::META_TENANT_PREFIX).keys() {
        out.push(Some(String::from_utf8_lossy(&k?[keys::META_TENANT_PREFIX.len()..]).into_owned()));
    }
    Ok(out)
}

/// The first history key after `ts`.
pub fn history_after(ts: u64) -> Vec<u8> {
    let mut k = vec![keys::SYS_HISTORY];
    k.extend_from_slice(&ts.saturating_add(1).to_be_bytes());
    k
}

/// The end of the history rows.
pub fn history_end() -> Vec<u8> {
    keys::prefix_end(&[keys::SYS_HISTORY])
}

/// The backlog of one tenant: (cursor, timestamp of the oldest row not yet indexed, rows not yet
/// indexed counted up to `max_rows`).
pub fn backlog(tree: &sled::Tree, tenant: Option<&str>, max_rows: usize) -> Result<(u64, Option<u64>, usize), StoreError> {
    let (_, at) = cursor::load(tree, tenant)?;
    let space = Space::of(tree.clone(), tenant);
    let mut rows = space.range(history_after(at)..history_end());
    let oldest = match rows.next() {
        None => return Ok((at, None, 0)),
        Some(item) => keys::decode_sys_history(&item?.0).map(|h| h.ts),
    };
    let mut n = 1;
    for item in rows.take(max_rows.saturating_sub(1)) {
        item?;
        n += 1;
    }
    Ok((at, oldest, n))
}

/// `Err(Behind)` when the oldest write of `tenant` not yet in Meilisearch is older than
/// `max_lag_ms`.
pub fn check_lag(tree: &sled::Tree, tenant: Option<&str>, max_lag_ms: u64) -> Result<(), MeiliError> {
    let (_, oldest, _) = backlog(tree, tenant, 1)?;
    if let Some(ts) = oldest {
        let lag_ms = crate::fhir::meta::now_micros().saturating_sub(ts) / 1000;
        if lag_ms > max_lag_ms {
            return Err(MeiliError::Behind { lag_ms, max_lag_ms });
        }
    }
    Ok(())
}

/// The `meilisearch` object of `/_cluster/status`.
pub fn status_json(meili: Option<&Meili>, tree: &sled::Tree) -> Value {
    let Some(m) = meili else { return json!({ "configured": false }) };
    let st = m.state.lock().clone();
    let now = crate::fhir::meta::now_micros();
    let mut per_tenant = Vec::new();
    let (mut lag_rows, mut lag_ms) = (0usize, 0u64);
    let tenants = tenants(tree).unwrap_or_else(|_| vec![None]);
    for t in &tenants {
        match backlog(tree, t.as_deref(), MAX_COUNTED_ROWS) {
            Ok((at, oldest, rows)) => {
                let lag = oldest.map(|o| now.saturating_sub(o) / 1000).unwrap_or(0);
                lag_rows += rows;
                lag_ms = lag_ms.max(lag);
                per_tenant.push(json!({
                    "tenant": t,
                    "index": m.cfg.index_uid(t.as_deref()),
                    "cursor": at,
                    "cursor_time": (at > 0).then(|| crate::fhir::meta::format_instant(at)),
                    "lag_rows": rows,
                    "lag_ms": lag,
                }));
            }
            Err(e) => per_tenant.push(json!({ "tenant": t, "error": e.to_string() })),
        }
    }
    let epoch = cursor::epoch(tree).unwrap_or(0);
    json!({
        "configured": true,
        "url": m.url,
        "running": st.running,
        "epoch": epoch,
        "lag_rows": lag_rows,
        "lag_rows_capped": lag_rows >= MAX_COUNTED_ROWS,
        "lag_ms": lag_ms,
        "tenants": per_tenant,
        "docs_sent": st.docs_sent,
        "docs_deleted": st.docs_deleted,
        "last_ok": st.last_ok_at.map(crate::fhir::meta::format_instant),
        "last_error": st.last_error,
        "last_error_at": st.last_error_at.map(crate::fhir::meta::format_instant),
    })
}
