//! `ResourceActor`: the write pipeline of one resource type. It validates each write, assigns ids
//! and strips server-owned meta, then group-commits: while one proposal of this type is in flight,
//! new writes queue, and they all go out together as ONE Raft entry when it returns. Each
//! proposal runs in a `propose` tracing span: a child of the request's span for a lone write,
//! else a root span that lists the `request_ids` it carries (`crate::http::request_id`).

use std::sync::Arc;

use actix::prelude::*;
use serde_json::Value;
use tokio::sync::oneshot;
use tracing::Instrument;

use super::msg::{Write, WriteIntent};
use super::WriteError;
use crate::consensus::RaftHandle;
use crate::fhir::{meta, Definitions, FhirError};
use crate::trace::Trace;
use crate::machine::command::{Action, Applied, Command, CommandV1, WriteOp};
use crate::tenancy::Tenant;

/// Per-node settings the actors need.
#[derive(Debug, Clone)]
pub struct ActorSettings {
    pub allow_update_create: bool,
    pub max_depth: usize,
    /// Most writes in one proposal.
    pub max_batch: usize,
    /// Most body bytes in one proposal (a single larger write still goes, alone): every Raft entry
    /// must fit in one transport frame (`cluster.max_frame_bytes`), or followers refuse it.
    pub max_batch_bytes: usize,
    /// Proposals of one type in flight at once: while one is being replicated and applied, the
    /// next batch is already proposed, so the Raft thread commits several per fsync under load
    /// (1 was stop-and-wait: throughput = batch / commit latency).
    pub max_in_flight: usize,
    /// Checks features run on a client's write of their resource type before it is proposed
    /// (Subscriptions when `[subscriptions]` is on); a type without one is stored as sent.
    pub hooks: Vec<Arc<dyn WriteHook>>,
}

/// A feature's check of a client's write of one resource type, before it is proposed: it may
/// rewrite the body, and its error refuses the write (the HTTP error table classifies it).
pub trait WriteHook: Send + Sync {
    /// The resource type it checks.
    fn rtype(&self) -> &'static str;
    fn check(&self, body: &mut Value) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}

impl std::fmt::Debug for dyn WriteHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WriteHook({})", self.rtype())
    }
}

impl ActorSettings {
    /// `allow_update_create` (PUT to a new id creates it), `max_depth` (of a resource's JSON) and
    /// `max_batch_bytes` (body bytes in one proposal) from the node's config.
    pub fn new(allow_update_create: bool, max_depth: usize, max_batch_bytes: usize) -> ActorSettings {
        ActorSettings { allow_update_create, max_depth, max_batch: 1024, max_batch_bytes, max_in_flight: 4, hooks: Vec::new() }
    }

    /// With `hook` run on every client write of its type.
    pub fn with_hook(mut self, hook: Option<Arc<dyn WriteHook>>) -> ActorSettings {
        self.hooks.extend(hook);
        self
    }
}

type Reply = oneshot::Sender<Result<(String, Applied), WriteError>>;

pub struct ResourceActor {
    rtype: &'static str,
    defs: Arc<Definitions>,
    raft: RaftHandle,
    settings: ActorSettings,
    /// Writes waiting for the next proposal, with their tenant (one proposal is one tenant's).
    pending: Vec<(Tenant, WriteOp, Reply, Trace)>,
    /// Proposals sent and not yet answered (at most `settings.max_in_flight`).
    in_flight: usize,
}

impl Actor for ResourceActor {
    type Context = Context<Self>;
}

impl ResourceActor {
    pub fn new(rtype: &'static str, defs: Arc<Definitions>, raft: RaftHandle, settings: ActorSettings) -> Self {
        ResourceActor { rtype, defs, raft, settings, pending: Vec::new(), in_flight: 0 }
    }

    /// Sends everything pending as one proposal.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        let Some((tenant, _, _, _)) = self.pending.first() else { return };
        let tenant = tenant.clone();
        let same = self.pending.iter().take_while(|(t, _, _, _)| *t == tenant).count();
        let take = batch_len(self.pending[..same].iter().map(|(_, op, _, _)| op), self.settings.max_batch, self.settings.max_batch_bytes);
        let mut traces = Vec::with_capacity(take);
        let (ops, replies): (Vec<WriteOp>, Vec<Reply>) = self
            .pending
            .drain(..take)
            .map(|(_, op, reply, trace)| {
                traces.push(trace);
                (op, reply)
            })
            .unzip();
        let span = propose_span(self.rtype, &traces);
        let ids: Vec<String> = ops.iter().map(|o| o.id.clone()).collect();
        let cmd = Command::V1(CommandV1::Writes { ts_micros: meta::now_micros(), ops }).in_tenant(tenant.as_deref());
        let raft = self.raft.clone();
        self.in_flight += 1;
        let proposal = async move { raft.propose(&cmd).await }.instrument(span);
        ctx.spawn(proposal.into_actor(self).map(move |result, act, ctx| {
            match result {
                Ok(outcomes) => {
                    let mut outcomes = outcomes.into_iter();
                    for (reply, id) in replies.into_iter().zip(ids) {
                        let out = outcomes
                            .next()
                            .unwrap_or_else(|| Err(crate::store::StoreError::Corrupt("missing outcome".into())));
                        let _ = reply.send(out.map(|a| (id, a)).map_err(WriteError::from));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone().into()));
                    }
                }
            }
            act.in_flight -= 1;
            act.flush(ctx);
        }));
    }
}

/// The span a proposal of `traces`' writes runs in: under the request's span for one write;
/// for several, a root span naming their request ids and following from each request's span.
fn propose_span(rtype: &'static str, traces: &[Trace]) -> tracing::Span {
    match traces {
        [one] => tracing::info_span!(parent: &one.span, "propose", rtype, writes = 1),
        many => {
            let ids: Vec<&str> = many.iter().filter_map(|t| t.request_id.as_deref()).collect();
            let span = tracing::info_span!(parent: None, "propose", rtype, writes = many.len(), request_ids = %ids.join(","));
            for t in many {
                span.follows_from(&t.span);
            }
            span
        }
    }
}

/// How many of `ops` (at least one) go into the next proposal: at most `max_ops`, and no more
/// than `max_bytes` of bodies in all.
fn batch_len<'a>(ops: impl Iterator<Item = &'a WriteOp>, max_ops: usize, max_bytes: usize) -> usize {
    let mut bytes = 0usize;
    let mut n = 0;
    for op in ops.take(max_ops) {
        bytes = bytes.saturating_add(op.body.as_ref().map_or(0, String::len) + op.id.len() + op.rtype.len());
        if n > 0 && bytes > max_bytes {
            break;
        }
        n += 1;
    }
    n
}

/// Validates and resolves a write into the op that is proposed: assigns the id of a create
/// (a client id is ignored), checks the id of an update, strips server-owned meta, validates.
pub fn prepare(defs: &Definitions, settings: &ActorSettings, rtype: &'static str, intent: WriteIntent) -> Result<WriteOp, WriteError> {
    let id = match (intent.action, intent.id) {
        (Action::Create, _) => uuid::Uuid::new_v4().to_string(),
        (_, Some(id)) => id,
        (_, None) => return Err(WriteError::MissingBody("resource id")),
    };
    let body = match (intent.action, intent.body) {
        (Action::Delete, _) => None,
        (_, None) => return Err(WriteError::MissingBody(rtype)),
        (action, Some(mut body)) => {
            let obj = body.as_object_mut().ok_or(FhirError::NotAnObject)?;
            if action == Action::Create {
                // The server assigns the id of a created resource; a client id is ignored.
                obj.shift_remove("id");
                let at = obj.keys().position(|k| k == "resourceType").map(|i| i + 1).unwrap_or(0);
                obj.shift_insert(at, "id".into(), Value::String(id.clone()));
            } else {
                match obj.get("id").and_then(Value::as_str) {
                    None => return Err(FhirError::MissingId(id).into()),
                    Some(found) if found != id => {
                        return Err(FhirError::IdMismatch { expected: id, found: found.into() }.into())
                    }
                    Some(_) => {}
                }
            }
            meta::strip_server_meta(&mut body);
            defs.validate(rtype, &body, settings.max_depth)?;
            for hook in settings.hooks.iter().filter(|h| h.rtype() == rtype) {
                // (Subscriptions: status requested (or off), criteria and channel checked: a
                // 4xx here, not an `error` later.)
                hook.check(&mut body).map_err(WriteError::Hook)?;
            }
            Some(serde_json::to_string(&body).map_err(|_| FhirError::NotAnObject)?)
        }
    };
    Ok(WriteOp {
        action: intent.action,
        rtype: rtype.to_string(),
        id,
        body,
        if_match: intent.if_match,
        allow_create: settings.allow_update_create,
    })
}

impl Handler<Write> for ResourceActor {
    type Result = ResponseFuture<Result<(String, Applied), WriteError>>;

    fn handle(&mut self, Write(mut intent, tenant, trace): Write, ctx: &mut Context<Self>) -> Self::Result {
        let condition = intent.condition.take();
        let op = match prepare(&self.defs, &self.settings, self.rtype, intent) {
            Ok(op) => op,
            Err(e) => return Box::pin(async move { Err(e) }),
        };
        if let Some(condition) = condition {
            // Alone in its entry: apply evaluates the search on the state before the entry.
            let raft = self.raft.clone();
            let cmd = Command::V1(CommandV1::Conditional { ts_micros: meta::now_micros(), op: op.clone(), condition }).in_tenant(tenant.as_deref());
            let span = propose_span(self.rtype, std::slice::from_ref(&trace));
            return Box::pin(async move {
                let mut first = None;
                for out in raft.propose(&cmd).instrument(span).await? {
                    let applied = out?;
                    first.get_or_insert(applied);
                }
                let applied = first.ok_or_else(|| crate::store::StoreError::Corrupt("conditional write without outcome".into()))?;
                Ok((applied.id.clone().unwrap_or(op.id), applied))
            });
        }
        let (tx, rx) = oneshot::channel();
        self.pending.push((tenant, op, tx, trace));
        if self.in_flight < self.settings.max_in_flight.max(1) {
            self.flush(ctx);
        }
        let rtype = self.rtype;
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err(WriteError::Mailbox(rtype.to_string()))) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::command::Action;

    fn op(body_len: usize) -> WriteOp {
        WriteOp { action: Action::Create, rtype: "Patient".into(), id: "i".into(), body: Some("x".repeat(body_len)), if_match: None, allow_create: true }
    }

    #[test]
    fn batches_are_capped_by_count_and_bytes() {
        let ops: Vec<WriteOp> = (0..10).map(|_| op(1000)).collect();
        assert_eq!(batch_len(ops.iter(), 1024, 1 << 20), 10);
        assert_eq!(batch_len(ops.iter(), 4, 1 << 20), 4);
        assert_eq!(batch_len(ops.iter(), 1024, 3100), 3, "three bodies of ~1 KB fit in 3,100 bytes");
        let big = [op(5000), op(10)];
        assert_eq!(batch_len(big.iter(), 1024, 3000), 1, "one write larger than the cap still goes, alone");
        assert_eq!(batch_len(std::iter::empty(), 1024, 3000), 0);
    }
}
