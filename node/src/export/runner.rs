//! The export actors. A [`ExportSupervisor`] runs on every node: on the leader it starts one
//! [`JobActor`] per active job (resuming from the job's replicated cursor), removes cancelled and
//! expired jobs after deleting their outputs, and stops its job actors when the node stops
//! leading; on every node it deletes local part files of jobs that are gone. A job actor writes
//! one part at a time through the job's [`ExportSink`], reading sled on the blocking pool a
//! chunk at a time (never a whole type in memory), and checkpoints each durable part through Raft.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::actors::msg::Stop;
use crate::machine::export_job::{file_name, Cursor, ExportOp, Job, Part, SinkKind, Status};
use super::scan::Selector;
use super::sink::{ExportSink, LocalSink, PartWriter};
use super::ExportError;
use crate::machine::export_state as state;
use crate::consensus::RaftHandle;
use crate::fhir::Definitions;
use crate::search::params::Registry;
use crate::machine::command::{Command, CommandV1};
use crate::store::Store;

/// Ids a chunk visits at most (between checks for cancel and leadership).
const CHUNK_VISIT: usize = 4096;
/// Lines and bytes per chunk read on the blocking pool (what one chunk holds in memory).
const CHUNK_LINES: u64 = 4096;
const CHUNK_BYTES: u64 = 8 << 20;

/// What the export actors and handlers share.
pub struct Exporter {
    pub raft: RaftHandle,
    /// The default tenant's store (a job names its tenant).
    pub root: Store,
    pub reg: Arc<Registry>,
    pub defs: Arc<Definitions>,
    pub cfg: super::ExportConfig,
    pub local: Arc<LocalSink>,
    /// The `[s3]` sink, when configured.
    pub s3: Option<Arc<dyn ExportSink>>,
    /// Local parts written again for a download, one at a time on this node.
    pub rewrites: tokio::sync::Semaphore,
}

impl Exporter {
    pub fn sink(&self, kind: SinkKind) -> Result<Arc<dyn ExportSink>, ExportError> {
        match kind {
            SinkKind::Local => Ok(self.local.clone()),
            SinkKind::S3 => self.s3.clone().ok_or_else(|| ExportError::Sink("this node has no [s3] configuration for the job's S3 sink".into())),
        }
    }

    pub fn job(&self, id: &str) -> Result<Option<Job>, ExportError> {
        Ok(state::load(self.root.tree().tree(), id)?)
    }

    pub async fn propose(&self, op: ExportOp) -> Result<(), ExportError> {
        let cmd = Command::V1(CommandV1::Export(op.with_ts(crate::fhir::meta::now_micros())));
        self.raft.propose(&cmd).await?;
        Ok(())
    }

    /// The selector of `rtype` for `job`.
    pub fn selector(&self, job: &Job, rtype: &str) -> Result<Arc<Selector>, ExportError> {
        let patients = job.patient_set().map(Arc::new);
        Ok(Arc::new(Selector::new(&self.root, self.reg.clone(), self.defs.clone(), job, rtype, patients)?))
    }

    /// Writes the lines of `part` again into `w` (a node serving a local part it did not write).
    pub async fn rewrite(&self, job: &Job, part: &Part, mut w: Box<dyn PartWriter>) -> Result<(), ExportError> {
        let sel = self.selector(job, &part.rtype)?;
        let mut after = part.after.clone();
        loop {
            let (s, a, until) = (sel.clone(), after.clone(), part.last.clone());
            let (chunk, buf) = blocking(move || {
                let mut buf = Vec::new();
                let chunk = s.fill(a.as_deref(), Some(&until), CHUNK_LINES, CHUNK_BYTES, CHUNK_VISIT, &mut buf)?;
                Ok((chunk, buf))
            })
            .await?;
            if !buf.is_empty() {
                w.write(buf).await?;
            }
            if chunk.done || chunk.last.is_none() {
                break;
            }
            after = chunk.last;
        }
        w.finish().await
    }
}

/// Pauses after a chunk that took `took` so that reading uses at most `share` of a core.
async fn pace(took: Duration, share: f64) {
    if share < 1.0 {
        tokio::time::sleep(took.mul_f64(1.0 / share - 1.0)).await;
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ExportError> + Send + 'static) -> Result<T, ExportError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| ExportError::Internal(format!("export reader: {e}")))?
}

/// Runs one job on the leader until it completes, fails, is cancelled or this node stops leading.
pub struct JobActor {
    ex: Arc<Exporter>,
    id: String,
}

impl Actor for JobActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let (ex, id) = (self.ex.clone(), self.id.clone());
        ctx.spawn(
            async move {
                let mut attempt = 0u32;
                loop {
                    match run(&ex, &id).await {
                        Ok(()) => return,
                        // Leadership moved or the log refused: the next leader (or the next tick) resumes.
                        Err(ExportError::Consensus(e)) => return tracing::info!(job = %id, "export paused: {e}"),
                        // Storage that may come back (S3 unavailable, a full disk): resume from the
                        // last checkpoint after a pause, a few times.
                        Err(e) if transient(&e) && attempt < RETRIES => {
                            attempt += 1;
                            tracing::warn!(job = %id, attempt, "export interrupted, resuming from its last checkpoint: {e}");
                            tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
                        }
                        Err(e) => {
                            tracing::warn!(job = %id, "export failed: {e}");
                            if ex.raft.leads() {
                                let _ = ex.propose(ExportOp::Fail { job: id.clone(), ts_micros: 0, error: e.to_string() }).await;
                            }
                            return;
                        }
                    }
                }
            }
            .into_actor(self)
            .map(|_, _, ctx| ctx.stop()),
        );
    }
}

/// Attempts after a transient storage error before a job fails (pauses of 2, 4, … 32 s).
const RETRIES: u32 = 5;

/// Whether an error may go away by itself (the storage is down or full), as opposed to one that
/// will not (credentials refused, no such bucket, corrupt data).
fn transient(e: &ExportError) -> bool {
    use crate::objects::ObjectsError;
    matches!(e, ExportError::Sink(_) | ExportError::Internal(_) | ExportError::Objects(ObjectsError::Unavailable { .. }))
}

impl Handler<Stop> for JobActor {
    type Result = ();
    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// The job loop: one part per iteration, checkpointed through Raft.
async fn run(ex: &Arc<Exporter>, id: &str) -> Result<(), ExportError> {
    let mut selectors: HashMap<String, Arc<Selector>> = HashMap::new();
    loop {
        let Some(job) = ex.job(id)? else { return Ok(()) };
        if !job.is_active() || !ex.raft.leads() {
            return Ok(());
        }
        if job.at_end() {
            if !job.spec.ignored.is_empty() {
                // The ignored parameters' file goes where the parts go (one kind of URL per manifest).
                let mut w = ex.sink(job.spec.sink)?.open(id, crate::machine::export_job::ERRORS_FILE).await?;
                w.write(crate::machine::export_job::errors_ndjson(&job)).await?;
                w.finish().await?;
            }
            return ex.propose(ExportOp::Complete { job: id.to_string(), ts_micros: 0 }).await;
        }
        let sink = ex.sink(job.spec.sink)?;
        // Empty types are passed in memory; the next checkpoint carries the cursor past them.
        let mut cursor = job.cursor.clone();
        let n = job.parts.len() as u32;
        let mut written: Option<(Part, Box<dyn PartWriter>)> = None;
        while cursor.type_index < job.spec.types.len() {
            let rtype = job.spec.types[cursor.type_index].clone();
            let sel = match selectors.get(&rtype) {
                Some(s) => s.clone(),
                None => selectors.entry(rtype.clone()).or_insert(ex.selector(&job, &rtype)?).clone(),
            };
            let file = file_name(&rtype, n);
            let mut part = Part { rtype: rtype.clone(), n, count: 0, bytes: 0, after: cursor.after.clone(), last: String::new() };
            let mut writer: Option<Box<dyn PartWriter>> = None;
            let done = loop {
                let (s, after) = (sel.clone(), cursor.after.clone());
                let lines = (job.spec.part_max_lines - part.count).min(CHUNK_LINES);
                let bytes = (job.spec.part_max_bytes - part.bytes).min(CHUNK_BYTES);
                let began = std::time::Instant::now();
                let (chunk, buf) = blocking(move || {
                    let mut buf = Vec::new();
                    let chunk = s.fill(after.as_deref(), None, lines, bytes, CHUNK_VISIT, &mut buf)?;
                    Ok((chunk, buf))
                })
                .await?;
                pace(began.elapsed(), ex.cfg.read_share).await;
                if !buf.is_empty() {
                    if writer.is_none() {
                        writer = Some(sink.open(id, &file).await?);
                    }
                    writer.as_mut().expect("opened").write(buf).await?;
                }
                part.count += chunk.count;
                part.bytes += chunk.bytes;
                if let Some(last) = chunk.last {
                    part.last = last.clone();
                    cursor.after = Some(last);
                }
                if chunk.done {
                    break true;
                }
                if part.count >= job.spec.part_max_lines || part.bytes >= job.spec.part_max_bytes {
                    break false;
                }
                if !ex.raft.leads() || !ex.job(id)?.is_some_and(|j| j.is_active()) {
                    if let Some(w) = writer {
                        w.abort().await;
                    }
                    return Ok(());
                }
            };
            if done {
                cursor = Cursor { type_index: cursor.type_index + 1, after: None };
            }
            if part.count > 0 {
                written = Some((part, writer.expect("a part with lines has a writer")));
                break;
            }
            if let Some(w) = writer {
                w.abort().await;
            }
        }
        let part = match written {
            Some((part, w)) => {
                w.finish().await?;
                Some(part)
            }
            None => None,
        };
        ex.propose(ExportOp::Checkpoint { job: id.to_string(), part, cursor }).await?;
    }
}

/// Starts and stops the job actors of this node and cleans up after jobs.
pub struct ExportSupervisor {
    ex: Arc<Exporter>,
    running: HashMap<String, Addr<JobActor>>,
    /// Jobs whose outputs are being deleted (cancelled or expired) by this node, and jobs whose
    /// deletion failed with when to try again (the storage may be down).
    cleaning: Arc<parking_lot::Mutex<HashSet<String>>>,
    retry: Arc<parking_lot::Mutex<HashMap<String, std::time::Instant>>>,
    ticks: u64,
}

impl ExportSupervisor {
    pub fn new(ex: Arc<Exporter>) -> ExportSupervisor {
        ExportSupervisor { ex, running: HashMap::new(), cleaning: Default::default(), retry: Default::default(), ticks: 0 }
    }

    fn tick(&mut self, _ctx: &mut Context<Self>) {
        self.ticks += 1;
        self.running.retain(|_, a| a.connected());
        let jobs = match state::list(self.ex.root.tree().tree()) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!("export jobs unreadable: {e}");
                return;
            }
        };
        if self.ticks % 20 == 1 {
            self.collect_local(&jobs);
        }
        if !self.ex.raft.leads() {
            for (_, a) in self.running.drain() {
                a.do_send(Stop);
            }
            return;
        }
        let now = crate::fhir::meta::now_micros();
        let expiry = self.ex.cfg.expiry_secs.saturating_mul(1_000_000);
        for job in jobs {
            let expired = job.finished.is_some_and(|f| f.saturating_add(expiry) <= now);
            match job.status {
                Status::Active if !self.running.contains_key(&job.id) => {
                    let actor = JobActor { ex: self.ex.clone(), id: job.id.clone() }.start();
                    self.running.insert(job.id.clone(), actor);
                }
                Status::Cancelled => self.remove(job),
                Status::Complete | Status::Failed(_) if expired => self.remove(job),
                _ => {}
            }
        }
    }

    /// Deletes a job's outputs, then forgets the job (through Raft).
    fn remove(&mut self, job: Job) {
        if self.retry.lock().get(&job.id).is_some_and(|at| *at > std::time::Instant::now()) || !self.cleaning.lock().insert(job.id.clone()) {
            return;
        }
        if let Some(a) = self.running.remove(&job.id) {
            a.do_send(Stop);
        }
        let (ex, cleaning, retry) = (self.ex.clone(), self.cleaning.clone(), self.retry.clone());
        actix::spawn(async move {
            let deleted = match ex.sink(job.spec.sink) {
                // Twice: a part a stopping actor (or a deposed leader) was finishing when the
                // first delete ran is gone after the second.
                Ok(sink) => match sink.delete_job(&job.id).await {
                    Ok(()) => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        sink.delete_job(&job.id).await
                    }
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match deleted {
                Ok(()) => {
                    retry.lock().remove(&job.id);
                    if let Err(e) = ex.propose(ExportOp::Remove { job: job.id.clone() }).await {
                        tracing::info!(job = %job.id, "export job removal deferred: {e}");
                    }
                }
                Err(e) => {
                    tracing::warn!(job = %job.id, "cannot delete the outputs of export job (retried in 30 s): {e}");
                    retry.lock().insert(job.id.clone(), std::time::Instant::now() + Duration::from_secs(30));
                }
            }
            cleaning.lock().remove(&job.id);
        });
    }

    /// Deletes local part folders of jobs that are gone or cancelled (every node: a node that
    /// served a part wrote its own copy).
    fn collect_local(&self, jobs: &[Job]) {
        let keep: HashSet<String> = jobs.iter().filter(|j| j.status != Status::Cancelled).map(|j| j.id.clone()).collect();
        let dir = self.ex.local.dir.clone();
        // File system work off the arbiter that runs the supervisor.
        tokio::task::spawn_blocking(move || {
            let Ok(entries) = std::fs::read_dir(&dir) else { return };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if crate::machine::export_job::valid_job_id(&name) && !keep.contains(&name) {
                    if let Err(e) = std::fs::remove_dir_all(entry.path()) {
                        tracing::warn!("cannot delete {}: {e}", entry.path().display());
                    }
                }
            }
        });
    }
}

impl Actor for ExportSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(Duration::from_millis(500), |act, ctx| act.tick(ctx));
    }
}

/// Asks the supervisor to look at the jobs now (after a kick-off).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Poke;

impl Handler<Poke> for ExportSupervisor {
    type Result = ();
    fn handle(&mut self, _: Poke, ctx: &mut Context<Self>) {
        self.tick(ctx);
    }
}
