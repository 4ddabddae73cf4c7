//! The indexer. An [`IndexerSupervisor`] runs on every node and runs the indexer loop while the node
//! leads ([`crate::actors::leader`]). The indexer
//! loops over the tenants: it reads the history rows after the tenant's replicated cursor in
//! batches (at most `batch_rows`, ending on a timestamp boundary, at most [`MAX_BATCH_BYTES`] of
//! bodies), takes each distinct resource's CURRENT state (deleted: its document is deleted; else
//! the document of its current version), sends them to Meilisearch (up to [`PIPELINE`] batches
//! enqueued at once), and moves the cursor through Raft past a batch only once every task of that
//! batch succeeded, in order. At least once and idempotent: a
//! round repeated after a crash or a leader change sends the same current state again, and an
//! older version never replaces a newer one because the current version is always what is sent.
//! When Meilisearch fails the round is retried with a doubling pause (up to
//! `max_backoff_ms`); the history rows stay, so the backlog is only delayed.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use meilisearch_sdk::task_info::TaskInfo;
use serde_json::Value;

use super::{document, status, Meili, MeiliError};
use crate::machine::meili_cursor as cursor;
use crate::actors::leader::LeaderWork;
use crate::consensus::RaftHandle;
use crate::machine::command::{Command, CommandV1};
use crate::store::space::Space;
use crate::store::{keys, Store, StoreError};

/// Bodies one round reads at most (then it ends at the next timestamp boundary).
pub const MAX_BATCH_BYTES: usize = 64 << 20;
/// Pause when there was nothing to index.
const IDLE: Duration = Duration::from_millis(100);
/// How often an idle indexer checks that Meilisearch answers and re-applies the settings.
const CHECK_EVERY: Duration = Duration::from_secs(5);
const SETTINGS_EVERY: Duration = Duration::from_secs(60);

/// What the indexer and the supervisor share.
pub struct IndexerCtx {
    pub meili: Arc<Meili>,
    pub raft: RaftHandle,
    pub tree: sled::Tree,
}

/// One round's work for one tenant.
#[derive(Debug, Default)]
pub struct Batch {
    pub epoch: u64,
    /// History rows read, and the timestamp of the last one.
    pub rows: usize,
    pub last_ts: u64,
    pub upserts: Vec<Value>,
    pub deletes: Vec<String>,
}

/// Reads the batch of `tenant` after history timestamp `from` (blocking: sled).
pub fn read_batch(tree: &sled::Tree, tenant: Option<&str>, epoch: u64, from: u64, max_rows: usize) -> Result<Batch, StoreError> {
    let space = Space::of(tree.clone(), tenant);
    let store = Store::new(tree.clone()).tenant(tenant);
    let mut batch = Batch { epoch, ..Batch::default() };
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut bytes = 0usize;
    for item in space.range(status::history_after(from)..status::history_end()) {
        let (k, _) = item?;
        let h = keys::decode_sys_history(&k).ok_or_else(|| StoreError::Corrupt("history key".into()))?;
        // Stop on a timestamp boundary only, so the cursor never splits one instant.
        if (batch.rows >= max_rows || bytes >= MAX_BATCH_BYTES) && h.ts != batch.last_ts {
            break;
        }
        batch.rows += 1;
        batch.last_ts = h.ts;
        if !seen.insert((h.rtype.clone(), h.id.clone())) {
            continue;
        }
        let key = document::doc_key(&h.rtype, &h.id);
        match store.read(&h.rtype, &h.id) {
            Ok((cur, rec)) => match document::build(&h.rtype, &h.id, cur.version, rec.ts, rec.body()) {
                Ok(doc) => {
                    bytes += rec.body().len();
                    batch.upserts.push(doc);
                }
                Err(e) => {
                    // Not JSON (never stored by Kiln): left out of text search, said loudly.
                    tracing::error!("meilisearch: {e}; the resource is left out of full-text search");
                    batch.deletes.push(key);
                }
            },
            Err(StoreError::Gone { .. } | StoreError::NotFound { .. }) => batch.deletes.push(key),
            Err(e) => return Err(e),
        }
    }
    Ok(batch)
}

/// Sends one batch (enqueues its tasks; does not wait).
pub async fn send(m: &Meili, tenant: Option<&str>, batch: &Batch) -> Result<Vec<TaskInfo>, MeiliError> {
    let uid = m.cfg.index_uid(tenant);
    m.ensure_index(&uid).await?;
    let index = m.client().index(&uid);
    let mut tasks = Vec::new();
    for chunk in batch.upserts.chunks(m.cfg.docs_per_request) {
        tasks.push(m.call(index.add_or_replace(chunk, Some("key"))).await?);
    }
    for chunk in batch.deletes.chunks(m.cfg.docs_per_request) {
        tasks.push(m.call(index.delete_documents(chunk)).await?);
    }
    Ok(tasks)
}

/// Waits for every task of a batch; `Err` unless all succeeded. Tasks of one index run in
/// order: once the last is done the others are, so this is one wait plus one look at each.
pub async fn wait_all(m: &Meili, tasks: Vec<TaskInfo>) -> Result<(), MeiliError> {
    for task in tasks.into_iter().rev() {
        m.wait(task).await?;
    }
    Ok(())
}

/// A batch whose tasks are enqueued in Meilisearch.
struct InFlight {
    epoch: u64,
    last_ts: u64,
    rows: usize,
    upserts: u64,
    deletes: u64,
    tasks: Vec<TaskInfo>,
}

/// Batches of one tenant in flight at once: while Meilisearch indexes one, the next is read
/// and enqueued (Meilisearch merges enqueued tasks into bigger, cheaper batches).
const PIPELINE: usize = 6;
/// Batches one tenant gets before the other tenants get their turn.
const TURN: usize = 20;

/// Indexes `tenant`'s backlog (up to [`TURN`] batches): the number of history rows indexed.
/// Each batch's cursor move is proposed, in order, only once its own tasks succeeded.
async fn drain(cx: &IndexerCtx, tenant: Option<String>) -> Result<usize, MeiliError> {
    let (epoch, mut from) = cursor::load(&cx.tree, tenant.as_deref())?;
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    let (mut total, mut batches, mut at_end) = (0usize, 0usize, false);
    loop {
        if !at_end && inflight.len() < PIPELINE && batches < TURN {
            let (tree, t, max) = (cx.tree.clone(), tenant.clone(), cx.meili.cfg.batch_rows);
            let batch = tokio::task::spawn_blocking(move || read_batch(&tree, t.as_deref(), epoch, from, max))
                .await
                .map_err(|e| MeiliError::Task(format!("history reader: {e}")))??;
            if batch.rows == 0 {
                at_end = true;
            } else {
                let tasks = send(&cx.meili, tenant.as_deref(), &batch).await?;
                from = batch.last_ts;
                batches += 1;
                inflight.push_back(InFlight {
                    epoch,
                    last_ts: batch.last_ts,
                    rows: batch.rows,
                    upserts: batch.upserts.len() as u64,
                    deletes: batch.deletes.len() as u64,
                    tasks,
                });
                continue;
            }
        }
        let Some(done) = inflight.pop_front() else { return Ok(total) };
        wait_all(&cx.meili, done.tasks).await?;
        {
            let mut s = cx.meili.state.lock();
            s.docs_sent += done.upserts;
            s.docs_deleted += done.deletes;
        }
        if !cx.raft.leads() {
            return Ok(total);
        }
        let op = cursor::CursorOp::Advance { tenant: tenant.clone(), epoch: done.epoch, ts: done.last_ts };
        cx.raft.propose(&Command::V1(CommandV1::SearchCursor(op))).await?;
        total += done.rows;
    }
}

/// The indexing loop, while this node leads.
async fn run(cx: Arc<IndexerCtx>) {
    let min_backoff = Duration::from_millis(100);
    let max_backoff = Duration::from_millis(cx.meili.cfg.max_backoff_ms).max(min_backoff);
    let mut backoff = min_backoff;
    let mut last_check = Instant::now() - CHECK_EVERY;
    let mut last_settings = Instant::now();
    let mut seen_epoch = cursor::epoch(&cx.tree).unwrap_or(0);
    while cx.raft.leads() {
        let mut worked = false;
        let mut failed = None;
        let epoch = cursor::epoch(&cx.tree).unwrap_or(seen_epoch);
        if epoch != seen_epoch {
            // A reindex dropped the indexes (maybe on another node): create them again with
            // Kiln's settings before sending anything.
            seen_epoch = epoch;
            cx.meili.forget_indexes();
        }
        if last_settings.elapsed() >= SETTINGS_EVERY {
            // Meilisearch may have lost its data or been replaced: set the settings again.
            cx.meili.forget_indexes();
            last_settings = Instant::now();
        }
        let tenants = match status::tenants(&cx.tree) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("meilisearch indexer: {e}");
                vec![None]
            }
        };
        for t in tenants {
            match drain(&cx, t).await {
                Ok(n) => worked |= n > 0,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if failed.is_none() && !worked && last_check.elapsed() >= CHECK_EVERY {
            // Idle: make sure Meilisearch answers and takes the key (the status page shows it).
            last_check = Instant::now();
            let uid = cx.meili.cfg.index_uid(None);
            if let Err(e) = cx.meili.ensure_index(&uid).await {
                failed = Some(e);
            } else if let Err(e) = cx.meili.call(cx.meili.client().get_stats()).await {
                failed = Some(e);
            }
        }
        match failed {
            Some(MeiliError::Consensus(e)) => {
                // Leadership moved or the log is busy: the next leader (or round) goes on.
                tracing::info!("meilisearch indexer: cursor not moved: {e}");
                tokio::time::sleep(min_backoff).await;
            }
            Some(e) => {
                tracing::warn!("meilisearch indexer: {e}; retrying in {} ms", backoff.as_millis());
                {
                    let mut s = cx.meili.state.lock();
                    s.last_error = Some(e.to_string());
                    s.last_error_at = Some(crate::fhir::meta::now_micros());
                }
                cx.meili.forget_indexes();
                last_check = Instant::now() - CHECK_EVERY;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max_backoff);
            }
            None => {
                backoff = min_backoff;
                if worked || last_check.elapsed() < Duration::from_millis(50) {
                    let mut s = cx.meili.state.lock();
                    s.last_error = None;
                    s.last_ok_at = Some(crate::fhir::meta::now_micros());
                }
                if !worked {
                    tokio::time::sleep(IDLE).await;
                }
            }
        }
    }
}

impl LeaderWork for IndexerCtx {
    fn raft(&self) -> &RaftHandle {
        &self.raft
    }

    fn run(self: Arc<Self>) -> futures::future::LocalBoxFuture<'static, ()> {
        Box::pin(run(self))
    }

    fn running(&self, on: bool) {
        self.meili.state.lock().running = on;
    }
}

/// Starts the indexer on the leader and stops it elsewhere.
pub type IndexerSupervisor = crate::actors::leader::Supervisor<IndexerCtx>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::command::{Action, WriteOp};
    use crate::machine::StateMachine;

    fn write(sm: &mut StateMachine, index: u64, ops: Vec<(Action, &str, Option<&str>)>) {
        let ops = ops
            .into_iter()
            .map(|(action, id, body)| WriteOp { action, rtype: "Patient".into(), id: id.into(), body: body.map(String::from), if_match: None, allow_create: true })
            .collect();
        sm.apply(index, 1, &Command::V1(CommandV1::Writes { ts_micros: index * 1_000, ops }).encode()).unwrap();
    }

    #[test]
    fn batches_send_current_versions_and_deletions_and_end_on_a_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        let tree = sled::open(dir.path()).unwrap().open_tree("state").unwrap();
        let mut sm = StateMachine::open(tree.clone()).unwrap();
        let body = |id: &str, word: &str| format!(r#"{{"resourceType":"Patient","id":"{id}","text":{{"div":"<div>{word}</div>"}}}}"#);
        let (a1, b1, a2) = (body("a", "first"), body("b", "bee"), body("a", "second"));
        write(&mut sm, 2, vec![(Action::Update, "a", Some(&a1)), (Action::Update, "b", Some(&b1))]);
        write(&mut sm, 3, vec![(Action::Update, "a", Some(&a2)), (Action::Delete, "b", None)]);
        let all = read_batch(&tree, None, 0, 0, 100).unwrap();
        assert_eq!(all.rows, 4);
        assert_eq!(all.upserts.len(), 1, "a once, at its current version");
        assert_eq!(all.upserts[0]["versionId"], 2);
        assert_eq!(all.upserts[0]["narrative"], "second");
        assert_eq!(all.deletes, ["Patient-b"]);
        let first = read_batch(&tree, None, 0, 0, 1).unwrap();
        assert_eq!(first.rows, 1);
        let rest = read_batch(&tree, None, 0, first.last_ts, 100).unwrap();
        assert_eq!(rest.rows, 3);
        assert_eq!(rest.last_ts, all.last_ts);
        assert_eq!(read_batch(&tree, None, 0, all.last_ts, 100).unwrap().rows, 0);
        // Another tenant's rows are not this tenant's.
        assert_eq!(read_batch(&tree, Some("acme"), 0, 0, 100).unwrap().rows, 0);
    }
}
