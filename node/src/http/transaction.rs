//! `POST /` with a Bundle of type `batch` or `transaction` (http.html#transaction).
//!
//! The bundle is planned ([`super::bundle_plan`]: every entry checked, validated, ids assigned,
//! patches applied), then ALL its writes are proposed as ONE Raft entry
//! ([`CommandV1::Bundle`]), applied in one sled batch on every node
//! ([`crate::machine::bundle_apply`]): a transaction is all-or-nothing everywhere; batch entries
//! succeed or fail alone. Transaction writes are processed DELETE, POST, PUT / PATCH; GET / HEAD
//! entries run after the writes on this node (so they see them; a failing read is answered in its
//! entry and does not undo the writes). The response lists the entries
//! in the client's order with `status`, `location`, `etag`, `lastModified`, and the resource or an
//! OperationOutcome per `Prefer: return=`.

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use super::bundle::{Bundle, Entry, Resource};
use super::bundle_plan::{self, Kind, Method, Plan, Step};
use super::negotiate::{self, Ctx, Return};
use super::patch::MAX_ATTEMPTS;
use super::{AppState, RequestError};
use crate::http::error::{operation_outcome, ApiError};
use crate::fhir::meta;
use crate::machine::command::{Action, Applied, BundleOp, Command, CommandV1};
use crate::machine::OpOutcome;
use crate::store::StoreError;

/// What became of one entry.
enum Answer {
    Write { rtype: String, action: Action, outcome: OpOutcome },
    Read { response: Result<HttpResponse, ApiError>, head: bool },
    Failed(ApiError),
}

pub async fn process(req: HttpRequest, payload: web::Payload, st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let ctx = Ctx::new(&req, &st)?;
    negotiate::require_json_body(&req)?;
    let limits = &st.cfg.limits;
    // Room for this body among the bundles in flight: its declared length, or the most a body
    // may be when it comes chunked.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(limits.max_bundle_bytes)
        .min(limits.max_bundle_bytes);
    let kib = u32::try_from(declared.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
    let wait = std::time::Duration::from_millis(st.cfg.write_timeout_ms);
    let _room = match tokio::time::timeout(wait, st.bundle_room.acquire_many(kib)).await {
        Ok(Ok(permit)) => permit,
        _ => return Err(RequestError::Busy(format!(
            "too many large bundles are being processed (limits.max_inflight_bundle_bytes = {}); retry later",
            limits.max_inflight_bundle_bytes
        )).into()),
    };
    let body = negotiate::read_json_limited(payload, limits.max_bundle_bytes, "limits.max_bundle_bytes", limits).await?;
    // Planning reads current versions (PATCH) and runs searches: after the barrier, if asked.
    negotiate::read_barrier(&req, &st).await?;
    // A PATCH entry is applied to the version read here; if another write changes that resource
    // before the bundle commits, plan and propose again (only the body is kept for that).
    let spare = bundle_plan::has_unconditioned_patch(&body).then(|| body.clone());
    let mut body = Some(body);
    for attempt in 1..=MAX_ATTEMPTS {
        if attempt > 1 {
            super::patch::backoff(attempt).await;
        }
        let current = match body.take() {
            Some(b) => b,
            None => spare.clone().ok_or_else(|| StoreError::Corrupt("bundle body kept for a retry".into()))?,
        };
        let plan = {
            let (st, planning) = (st.clone(), ctx.clone());
            web::block(move || bundle_plan::plan(&st, &planning, current)).await.map_err(|e| StoreError::Storage(e.to_string()))??
        };
        match execute(&ctx, &st, plan).await {
            Ok(response) => return Ok(response),
            Err(Retry::Fatal(e)) => return Err(e),
            Err(Retry::Conflict(e)) if attempt == MAX_ATTEMPTS => return Err(e),
            Err(Retry::Conflict(_)) => {}
        }
    }
    Err(RequestError::PreconditionFailed("the bundle's PATCH targets kept changing; nothing was applied".into()).into())
}

/// Why [`execute`] did not answer.
enum Retry {
    /// A PATCH entry without `ifMatch` met a newer version: plan again.
    Conflict(ApiError),
    Fatal(ApiError),
}

impl<E: Into<ApiError>> From<E> for Retry {
    fn from(e: E) -> Self {
        Retry::Fatal(e.into())
    }
}

/// Proposes the plan's writes as one entry, runs its reads, and builds the response bundle.
async fn execute(ctx: &Ctx, st: &web::Data<AppState>, plan: Plan) -> Result<HttpResponse, Retry> {
    let Plan { kind, entries } = plan;
    let atomic = kind == Kind::Transaction;
    let labels: Vec<String> = entries.iter().map(|e| e.label()).collect();
    let retry: Vec<bool> = entries.iter().map(|e| e.retry_on_conflict).collect();
    let mut answers: Vec<Option<Answer>> = (0..entries.len()).map(|_| None).collect();
    let mut writes: Vec<(Option<Method>, BundleOp)> = Vec::new();
    let mut reads = Vec::new();
    for e in entries {
        match e.step {
            Err(err) if atomic => return Err(Retry::Fatal(ApiError::Entry { label: labels[e.index].clone(), cause: Box::new(err) })),
            Err(err) => answers[e.index] = Some(Answer::Failed(err)),
            Ok(Step::Write(op)) => writes.push((e.method, op)),
            Ok(Step::Read(r)) => reads.push((e.index, r)),
        }
    }
    // A bundle that reads is a costly request of its caller until its last read has run: it
    // takes the caller's fair share before it writes anything (429: nothing was done).
    // (Its entries' work holds the place too: a dropped bundle cannot free it while an entry
    // still reads.)
    let batch_ctx;
    let ctx = match reads.is_empty() {
        true => ctx,
        false => {
            batch_ctx = Ctx { share: super::work::caller_share(ctx, st)?.map(std::sync::Arc::new), ..ctx.clone() };
            &batch_ctx
        }
    };
    if atomic {
        writes.sort_by_key(|(m, op)| (m.map(Method::order), op.index));
    }
    if !writes.is_empty() {
        let targets: Vec<(usize, String, Action)> = writes.iter().map(|(_, op)| (op.index as usize, op.op.rtype.clone(), op.op.action)).collect();
        let cmd = Command::V1(CommandV1::Bundle { ts_micros: meta::now_micros(), atomic, entries: writes.into_iter().map(|(_, op)| op).collect() })
            .in_tenant(ctx.tenant.as_deref());
        // A large bundle takes a while to replicate and apply: 2 ms per write beyond write_timeout_ms.
        let outcomes = st.raft.propose_within(&cmd, std::time::Duration::from_millis(2 * targets.len() as u64)).await?;
        if let [Err(StoreError::EntryFailed { entry, reason })] = outcomes.as_slice() {
            let i = *entry as usize;
            let err = ApiError::Entry { label: labels.get(i).cloned().unwrap_or_default(), cause: Box::new(ApiError::Store((**reason).clone())) };
            let conflict = matches!(**reason, StoreError::VersionConflict { .. }) && retry.get(i).copied().unwrap_or(false);
            return Err(if conflict { Retry::Conflict(err) } else { Retry::Fatal(err) });
        }
        if outcomes.len() != targets.len() {
            return Err(StoreError::Corrupt(format!("{} outcomes for {} bundle writes", outcomes.len(), targets.len())).into());
        }
        for ((index, rtype, action), outcome) in targets.into_iter().zip(outcomes) {
            answers[index] = Some(Answer::Write { rtype, action, outcome });
        }
    }
    // The reads share the request's budget; their responses together stay under
    // limits.max_batch_response_bytes (an entry past it answers 413 and is not run).
    // They also take their room among the node's responses in flight, kept until the client
    // has read the bundle (an entry without room answers 503 in its own `response`).
    let limit = st.cfg.limits.max_batch_response_bytes;
    let mut bytes = 0usize;
    let mut held = super::response_room::Held::default();
    let caller = ctx.caller();
    for (index, r) in reads {
        match ctx.budget.check() {
            Err(crate::budget::Spent::ClientGone) => return Err(Retry::Fatal(super::work::too_costly(crate::budget::Spent::ClientGone))),
            Err(spent) => {
                answers[index] = Some(Answer::Failed(super::work::too_costly(spent)));
                continue;
            }
            Ok(()) => {}
        }
        if bytes > limit {
            answers[index] = Some(Answer::Failed(RequestError::ResponseTooLarge { limit }.into()));
            continue;
        }
        let entry_ctx = match r.query.len() > st.cfg.limits.max_query_bytes {
            true => Err(RequestError::UriTooLong { limit: st.cfg.limits.max_query_bytes }),
            false => ctx.entry(&r.query, r.if_none_match.as_deref(), r.if_modified_since.as_deref()),
        }
        .and_then(|e| super::work::check_params(&e.params, &st.cfg.limits).map(|()| e));
        let mut answer = match entry_ctx {
            Ok(ectx) => Answer::Read { response: r.route.run(&ectx, st).await, head: r.head },
            Err(e) => Answer::Failed(e.into()),
        };
        // (A HEAD entry's body is dropped when its entry is built: not counted.)
        if let Answer::Read { response: Ok(resp), head: false } = &answer {
            let n = match actix_web::body::MessageBody::size(resp.body()) {
                actix_web::body::BodySize::Sized(n) => usize::try_from(n).unwrap_or(usize::MAX),
                _ => 0,
            };
            bytes = bytes.saturating_add(n);
            if bytes > limit {
                answer = Answer::Failed(RequestError::ResponseTooLarge { limit }.into());
            } else if let Err(e) = st.response_room.take(&mut held, n, caller.as_deref()) {
                bytes -= n;
                answer = Answer::Failed(e.into());
            }
        }
        answers[index] = Some(answer);
    }
    let mut out = Vec::with_capacity(answers.len());
    for answer in answers {
        let answer = answer.ok_or_else(|| StoreError::Corrupt("a bundle entry without an answer".into()))?;
        out.push(entry(ctx, st, answer).await?);
    }
    let kind = if atomic { "transaction-response" } else { "batch-response" };
    // Embedding the read entries' bodies checks and copies them: past LARGE_RESPONSE bytes that
    // is costly work, done off the HTTP worker ([`super::work::offload`]).
    let size_hint = bytes.saturating_add(256 * out.len());
    let build = move |ctx: &Ctx| -> Result<Vec<u8>, ApiError> {
        let entries = out.into_iter().map(Pending::finish).collect::<Result<Vec<_>, _>>()?;
        Bundle::new(kind, None, Vec::new(), entries).to_bytes_sized(ctx, size_hint)
    };
    // (After the writes committed: assembled without admission, never refused.)
    let body = match bytes > LARGE_RESPONSE {
        true => {
            let entry_ctx = ctx.clone();
            super::work::offload(ctx, st, move || build(&entry_ctx)).await.map_err(Retry::Fatal)?.map_err(Retry::Fatal)?
        }
        false => build(ctx)?,
    };
    // The rest of the bundle (written resources returned, entry envelopes) is charged when
    // there is room, never refused: its writes have committed.
    let _ = st.response_room.take(&mut held, body.len().saturating_sub(bytes), None);
    Ok(ctx.respond_held(HttpResponse::Ok(), body, held))
}

/// Read responses (bytes together) past which a batch response is assembled on the pool.
const LARGE_RESPONSE: usize = 1 << 20;

/// An entry of the response, its body not yet embedded.
enum Pending {
    Ready(Entry<'static>),
    Body { response: Map<String, Value>, bytes: actix_web::web::Bytes, outcome: bool },
}

impl Pending {
    fn finish(self) -> Result<Entry<'static>, ApiError> {
        match self {
            Pending::Ready(e) => Ok(e),
            Pending::Body { mut response, bytes, outcome } => {
                let mut resource = None;
                if outcome {
                    let outcome: Value = serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(format!("outcome: {e}")))?;
                    response.insert("outcome".into(), outcome);
                } else {
                    resource = Some(raw(bytes.to_vec())?);
                }
                Ok(Entry { full_url: None, resource, search: None, request: None, response: Some(Value::Object(response)) })
            }
        }
    }
}

fn status_line(s: StatusCode) -> String {
    format!("{} {}", s.as_u16(), s.canonical_reason().unwrap_or(""))
}

fn raw(bytes: Vec<u8>) -> Result<Resource<'static>, ApiError> {
    let text = String::from_utf8(bytes).map_err(|e| StoreError::Corrupt(format!("entry body: {e}")))?;
    Ok(Resource::Owned(RawValue::from_string(text).map_err(|e| StoreError::Corrupt(format!("entry body: {e}")))?))
}

async fn entry(ctx: &Ctx, st: &AppState, answer: Answer) -> Result<Pending, ApiError> {
    match answer {
        Answer::Write { rtype, action, outcome: Ok(applied) } => {
            let id = applied.id.clone().unwrap_or_default();
            let readable = crate::http::guard::may_return(ctx, st, &rtype, &id, applied.body.as_deref().map(Vec::as_slice));
            write_entry(ctx, &rtype, action, &applied, readable).map(Pending::Ready)
        }
        Answer::Write { outcome: Err(e), .. } => response_entry(ApiError::Store(e).error_response(), false).await,
        Answer::Read { response: Ok(r), head } => response_entry(r, head).await,
        Answer::Read { response: Err(e), .. } | Answer::Failed(e) => response_entry(e.error_response(), false).await,
    }
}

/// The entry of an applied write (its resource only when the caller may read the type).
fn write_entry(ctx: &Ctx, rtype: &str, action: Action, a: &Applied, readable: bool) -> Result<Entry<'static>, ApiError> {
    let id = a.id.clone().unwrap_or_default();
    let mut response = Map::new();
    let text;
    if action == Action::Delete {
        response.insert("status".into(), json!(status_line(StatusCode::NO_CONTENT)));
        text = match (a.noop, a.version) {
            _ if id.is_empty() => format!("no {rtype} matched the condition; nothing deleted"),
            (false, Some(v)) => format!("Deleted {rtype}/{id} (version {v})"),
            _ => format!("{rtype}/{id} does not exist or was already deleted; nothing to delete"),
        };
    } else {
        let version = a.version.unwrap_or_default();
        let status = if a.created { StatusCode::CREATED } else { StatusCode::OK };
        response.insert("status".into(), json!(status_line(status)));
        response.insert("location".into(), json!(format!("{rtype}/{id}/_history/{version}")));
        text = match (a.created, a.noop) {
            (true, _) => format!("Created {rtype}/{id} version {version}"),
            (false, true) => format!("{rtype}/{id} matched the condition; nothing was written"),
            (false, false) => format!("Updated {rtype}/{id} version {version}"),
        };
    }
    if let Some(v) = a.version {
        response.insert("etag".into(), json!(format!("W/\"{v}\"")));
        if a.ts_micros > 0 {
            response.insert("lastModified".into(), json!(meta::format_instant(a.ts_micros)));
        }
    }
    let mut resource = None;
    match ctx.ret {
        Return::Minimal => {}
        Return::OperationOutcome => {
            response.insert("outcome".into(), operation_outcome("information", "informational", &text));
        }
        Return::Representation if !readable => {}
        Return::Representation => {
            if let Some(body) = &a.body {
                resource = Some(raw(body.to_vec())?);
            }
        }
    }
    Ok(Entry {
        full_url: (!id.is_empty()).then(|| format!("{}/{rtype}/{id}", ctx.base)),
        resource,
        search: None,
        request: None,
        response: Some(Value::Object(response)),
    })
}

/// The entry of a read, or of an error, from the HTTP response it would have been.
async fn response_entry(r: HttpResponse, head: bool) -> Result<Pending, ApiError> {
    let status = r.status();
    let mut response = Map::new();
    response.insert("status".into(), json!(status_line(status)));
    let h = |name: header::HeaderName| r.headers().get(name).and_then(|v| v.to_str().ok()).map(String::from);
    if let Some(loc) = h(header::LOCATION) {
        response.insert("location".into(), json!(loc));
    }
    if let Some(etag) = h(header::ETAG) {
        response.insert("etag".into(), json!(etag));
    }
    if let Some(lm) = h(header::LAST_MODIFIED).and_then(|d| meta::parse_http_date(&d)) {
        response.insert("lastModified".into(), json!(meta::format_instant(lm)));
    }
    let bytes = actix_web::body::to_bytes(r.into_body()).await.map_err(|e| StoreError::Corrupt(format!("entry body: {e}")))?;
    if bytes.is_empty() || head {
        return Ok(Pending::Ready(Entry { full_url: None, resource: None, search: None, request: None, response: Some(Value::Object(response)) }));
    }
    Ok(Pending::Body { response, bytes, outcome: status.as_u16() >= 400 })
}
