//! The notifier. A [`NotifierSupervisor`] runs on every node and runs the notifier loop while the node
//! leads ([`crate::actors::leader`]), like the Meilisearch indexer. The notifier:
//! 1. Reloads the Subscriptions when one was written (and every [`RELOAD_EVERY`]): a
//!    `requested` one is checked and set `active` (or `error` with the reason, or `off` past
//!    its `end`) by a replicated write pinned to the version it read; each active rest-hook
//!    gets a queue, starting at its replicated position ([`crate::machine::sub_cursor`]) or, the first
//!    time, at its activation.
//! 2. Reads history rows after the lowest position among Subscriptions whose queue has room
//!    ([`scan`], at most [`BATCH_ROWS`] rows ending on a timestamp boundary, off the async
//!    thread), judges each version against the criteria of the Subscriptions of its type that
//!    have not passed it yet ([`super::criteria::Matcher`]; a deletion is judged on the version
//!    before it), and queues the matches. A Subscription with a full queue is passed by and
//!    catches up from its own position later, so a dead endpoint never holds back the others.
//! 3. Delivers each queue in order, one request at a time per Subscription and at most
//!    `max_in_flight` in all; a failure is retried after a doubling pause (up to
//!    `max_backoff_ms`); after `max_retries` failed attempts at one notification the
//!    Subscription is set to `error` with the reason (replicated) and its queue dropped.
//! 4. Every [`CURSOR_EVERY`], proposes the positions that moved: everything before the first
//!    undelivered notification. A new leader starts from them, so a notification is never lost;
//!    those delivered after the last proposed move are sent again (at least once).
//!
//! Websocket Subscriptions are activated here but pinged by the node each client is connected
//! to ([`super::websocket`]).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::Value;
use tokio::task::JoinSet;

use super::criteria::Matcher;
use crate::machine::sub_cursor::{self as cursor, SubCursorOp, MAX_MOVES};
use super::rest_hook::{Notification, RestHook};
use super::spec::{self, Channel, Spec};
use super::{Subscriptions, SubscriptionError};
use crate::actors::leader::LeaderWork;
use crate::consensus::RaftHandle;
use crate::meili::status::{history_after, history_end, tenants};
use crate::search::query::Query;
use crate::machine::command::{Action, Command, CommandV1, WriteOp};
use crate::store::space::Space;
use crate::store::{keys, Store, StoreError};

/// History rows one read takes at most (then it ends at the next timestamp boundary).
pub const BATCH_ROWS: usize = 2_000;
/// How often the positions that moved are proposed.
pub const CURSOR_EVERY: Duration = Duration::from_millis(200);
/// How often the Subscriptions are reloaded when none was written (for `end`).
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);
/// Pause of an idle loop.
const IDLE: Duration = Duration::from_millis(10);
/// Most Subscription resources one reload reads per tenant (those beyond are not activated
/// until others are deleted; said in the log).
pub const MAX_SCANNED: usize = 100_000;

/// One notification to make: a history row that matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub ts: u64,
    pub rtype: String,
    pub id: String,
    pub version: u64,
    pub deleted: bool,
}

/// Who reads a scan: a Subscription's type, criteria and position.
pub struct Reader {
    pub key: Arc<str>,
    pub rtype: String,
    pub query: Arc<Query>,
    pub pos: u64,
}

/// What a scan found.
#[derive(Debug, Default)]
pub struct Scan {
    pub rows: usize,
    pub last_ts: u64,
    /// (reader index, event), in history order.
    pub events: Vec<(usize, Event)>,
    pub saw_subscription: bool,
}

/// Reads `tenant`'s history rows after `from` (blocking: sled) and judges them for `readers`
/// (each only on the rows after its own position).
pub fn scan(tree: &sled::Tree, matcher: &mut Matcher, tenant: Option<&str>, from: u64, readers: &[Reader], max_rows: usize) -> Result<Scan, SubscriptionError> {
    let space = Space::of(tree.clone(), tenant);
    let store = Store::new(tree.clone()).tenant(tenant);
    let mut out = Scan::default();
    for item in space.range(history_after(from)..history_end()) {
        let (k, _) = item.map_err(StoreError::from)?;
        let h = keys::decode_sys_history(&k).ok_or_else(|| StoreError::Corrupt("history key".into()))?;
        if out.rows >= max_rows && h.ts != out.last_ts {
            break;
        }
        out.rows += 1;
        out.last_ts = h.ts;
        if h.rtype == "Subscription" {
            out.saw_subscription = true;
        }
        let who: Vec<usize> = readers.iter().enumerate().filter(|(_, r)| r.pos < h.ts && r.rtype == h.rtype).map(|(i, _)| i).collect();
        if who.is_empty() {
            continue;
        }
        let rec = store.vread(&h.rtype, &h.id, h.version);
        let (body, deleted) = match rec {
            Ok(r) if !r.is_delete() => (r.body().to_vec(), false),
            // A deletion is notified when the version it deleted met the criteria.
            Ok(_) | Err(StoreError::Gone { .. }) => match h.version.checked_sub(1).filter(|v| *v > 0) {
                Some(prev) => match store.vread(&h.rtype, &h.id, prev) {
                    Ok(p) if !p.is_delete() => (p.body().to_vec(), true),
                    _ => continue,
                },
                None => continue,
            },
            Err(StoreError::NotFound { .. }) => continue,
            Err(e) => return Err(e.into()),
        };
        let queries: Vec<(&Arc<str>, &Query)> = who.iter().map(|i| (&readers[*i].key, &*readers[*i].query)).collect();
        let hits = matcher.matches(&h.rtype, &h.id, &body, &queries)?;
        for (i, hit) in who.into_iter().zip(hits) {
            if hit {
                out.events.push((i, Event { ts: h.ts, rtype: h.rtype.clone(), id: h.id.clone(), version: h.version, deleted }));
            }
        }
    }
    Ok(out)
}

type Key = (Option<String>, String);

/// An active rest-hook Subscription on the leader.
struct Sub {
    version: u64,
    spec: Spec,
    /// History read into the queue up to here.
    pos: u64,
    queue: VecDeque<Event>,
    failures: u32,
    next_try: Instant,
    in_flight: bool,
    /// The position last proposed (or loaded).
    proposed: u64,
}

impl Sub {
    /// Everything before the first undelivered notification.
    fn position(&self) -> u64 {
        match self.queue.front() {
            Some(e) => e.ts.saturating_sub(1).max(self.proposed),
            None => self.pos,
        }
    }
}

/// What the notifier and the supervisor share.
pub struct NotifierCtx {
    pub subs: Arc<Subscriptions>,
    pub raft: RaftHandle,
    pub tree: sled::Tree,
}

/// One loaded Subscription resource.
struct Loaded {
    tenant: Option<String>,
    id: String,
    version: u64,
    ts: u64,
    body: Value,
}

/// Every current Subscription of every tenant (blocking: sled).
fn load_all(tree: &sled::Tree) -> Result<Vec<Loaded>, StoreError> {
    let mut out = Vec::new();
    for tenant in tenants(tree)? {
        let store = Store::new(tree.clone()).tenant(tenant.as_deref());
        let space = Space::of(tree.clone(), tenant.as_deref());
        let mut prefix = keys::current("Subscription", "");
        prefix.pop();
        prefix.push(0);
        for item in space.scan_prefix(&prefix).take(MAX_SCANNED) {
            let (k, _) = item?;
            let Some((_, id)) = keys::decode_current(&k) else { continue };
            match store.read("Subscription", &id) {
                Ok((cur, rec)) => {
                    let Ok(body) = serde_json::from_slice::<Value>(rec.body()) else { continue };
                    out.push(Loaded { tenant: tenant.clone(), id, version: cur.version, ts: cur.ts, body });
                }
                Err(StoreError::Gone { .. } | StoreError::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(out)
}

/// Proposes the Subscription `l` with `status` (and `error` text), pinned to the version read.
async fn set_status(cx: &NotifierCtx, l: &Loaded, status: &str, error: Option<String>) -> Result<(), SubscriptionError> {
    let mut body = l.body.clone();
    if let Some(obj) = body.as_object_mut() {
        obj.insert("status".into(), Value::String(status.into()));
        match error {
            Some(e) => {
                obj.insert("error".into(), Value::String(e.chars().take(1000).collect()));
            }
            None => {
                obj.shift_remove("error");
            }
        }
    }
    crate::fhir::meta::strip_server_meta(&mut body);
    let op = WriteOp { action: Action::Update, rtype: "Subscription".into(), id: l.id.clone(), body: Some(body.to_string()), if_match: Some(l.version), allow_create: false };
    let cmd = Command::V1(CommandV1::Writes { ts_micros: crate::fhir::meta::now_micros(), ops: vec![op] }).in_tenant(l.tenant.as_deref());
    for out in cx.raft.propose(&cmd).await? {
        if let Err(e) = out {
            // Changed meanwhile (a client's update): the next reload sees the new version.
            tracing::info!("subscription {}: status {status} not written: {e}", l.id);
        }
    }
    tracing::info!(tenant = l.tenant.as_deref().unwrap_or(""), "subscription {} set {status}", l.id);
    Ok(())
}

/// The notifier's loop state.
struct Run {
    cx: Arc<NotifierCtx>,
    hook: Arc<RestHook>,
    matcher: Arc<Mutex<Matcher>>,
    subs: HashMap<Key, Sub>,
    /// Deliveries in flight: (Subscription, its version when sent, result).
    inflight: JoinSet<(Key, u64, Result<(), String>)>,
}

impl Run {
    /// Activates, expires and (re)loads the Subscriptions; whether it wrote a status (then the
    /// next round reloads again, to take the Subscriptions it activated).
    async fn reload(&mut self) -> Result<bool, SubscriptionError> {
        let tree = self.cx.tree.clone();
        let all = tokio::task::spawn_blocking(move || load_all(&tree)).await.map_err(|e| SubscriptionError::Internal(e.to_string()))??;
        let rules = self.cx.subs.rules.clone();
        let now = crate::fhir::meta::now_micros();
        let mut active = all.iter().filter(|l| spec::status(&l.body) == "active").count();
        let mut seen: HashSet<Key> = HashSet::new();
        let mut wrote = false;
        for l in &all {
            let parsed = spec::read(&rules, &l.body);
            let expired = parsed.as_ref().ok().and_then(|s| s.end).is_some_and(|end| end <= now);
            let status = spec::status(&l.body);
            wrote |= match status {
                "requested" => true,
                "active" => expired || parsed.is_err(),
                _ => false,
            };
            match (status, parsed) {
                ("requested" | "active", _) if expired => set_status(&self.cx, l, "off", None).await?,
                ("requested" | "active", Err(e)) => set_status(&self.cx, l, "error", Some(e.to_string())).await?,
                ("requested", Ok(_)) if active >= rules.cfg.max_active => {
                    let e = format!("this server runs at most {} active subscriptions (subscriptions.max_active)", rules.cfg.max_active);
                    set_status(&self.cx, l, "error", Some(e)).await?
                }
                ("requested", Ok(_)) => {
                    active += 1;
                    set_status(&self.cx, l, "active", None).await?
                }
                ("active", Ok(spec)) if matches!(spec.channel, Channel::RestHook { .. }) => {
                    let key = (l.tenant.clone(), l.id.clone());
                    seen.insert(key.clone());
                    if self.subs.get(&key).is_some_and(|s| s.version == l.version) {
                        continue;
                    }
                    let at = cursor::load(&self.cx.tree, l.tenant.as_deref(), &l.id)?;
                    // First run: from its activation (the write that made it active).
                    let pos = at.max(l.ts);
                    self.subs.insert(key, Sub { version: l.version, spec, pos, queue: VecDeque::new(), failures: 0, next_try: Instant::now(), in_flight: false, proposed: at });
                }
                _ => {}
            }
        }
        self.subs.retain(|k, _| seen.contains(k));
        self.cx.subs.state.lock().active_rest_hooks = self.subs.len();
        Ok(wrote)
    }

    /// One read of every tenant's history for the Subscriptions with room; whether a
    /// Subscription was written.
    async fn read(&mut self) -> Result<(bool, usize), SubscriptionError> {
        let room = self.cx.subs.rules.cfg.max_queue;
        let mut by_tenant: HashMap<Option<String>, Vec<(Key, Reader)>> = HashMap::new();
        for (k, s) in &self.subs {
            if s.queue.len() < room {
                let c = &s.spec.criteria;
                let reader = Reader { key: c.key.clone(), rtype: c.rtype.clone(), query: c.query.clone(), pos: s.pos };
                by_tenant.entry(k.0.clone()).or_default().push((k.clone(), reader));
            }
        }
        // Subscription writes are noticed from the default tenant's rows too when nothing is
        // subscribed there: read from the head at least.
        let (mut saw, mut rows) = (false, 0);
        for (tenant, readers) in by_tenant {
            let from = readers.iter().map(|(_, r)| r.pos).min().unwrap_or(0);
            let (keys, readers): (Vec<Key>, Vec<Reader>) = readers.into_iter().unzip();
            let (tree, matcher, t) = (self.cx.tree.clone(), self.matcher.clone(), tenant.clone());
            let found = tokio::task::spawn_blocking(move || {
                let mut m = matcher.lock();
                scan(&tree, &mut m, t.as_deref(), from, &readers, BATCH_ROWS).map(|s| (s, readers))
            })
            .await
            .map_err(|e| SubscriptionError::Internal(e.to_string()))??;
            let (s, readers) = found;
            saw |= s.saw_subscription;
            rows += s.rows;
            for (i, ev) in s.events {
                if let Some(sub) = self.subs.get_mut(&keys[i]) {
                    sub.queue.push_back(ev);
                }
            }
            for (k, r) in keys.iter().zip(readers) {
                if let Some(sub) = self.subs.get_mut(k) {
                    sub.pos = sub.pos.max(r.pos).max(s.last_ts);
                }
            }
        }
        Ok((saw, rows))
    }

    /// Starts the deliveries that may start.
    fn deliver(&mut self) {
        let max = self.cx.subs.rules.cfg.max_in_flight;
        let now = Instant::now();
        let store = Store::new(self.cx.tree.clone());
        for (key, sub) in self.subs.iter_mut() {
            if self.inflight.len() >= max {
                break;
            }
            if sub.in_flight || now < sub.next_try {
                continue;
            }
            let Some(ev) = sub.queue.front() else { continue };
            let Channel::RestHook { endpoint, payload, headers } = &sub.spec.channel else { continue };
            let body = match (payload, ev.deleted) {
                (spec::Payload::Json, false) => match store.tenant(key.0.as_deref()).vread(&ev.rtype, &ev.id, ev.version) {
                    Ok(r) => Some(r.body().to_vec()),
                    Err(_) => None,
                },
                _ => None,
            };
            let n = Notification { endpoint: endpoint.clone(), payload: *payload, headers: headers.clone(), rtype: ev.rtype.clone(), id: ev.id.clone(), body };
            sub.in_flight = true;
            let (hook, key, version) = (self.hook.clone(), key.clone(), sub.version);
            self.inflight.spawn(async move {
                let r = hook.deliver(&n).await;
                (key, version, r)
            });
        }
    }

    /// Takes the result of one delivery.
    async fn done(&mut self, key: Key, version: u64, result: Result<(), String>) -> Result<(), SubscriptionError> {
        let cfg = &self.cx.subs.rules.cfg;
        // A Subscription reloaded meanwhile (another version) has a new queue: not this result's.
        let Some(sub) = self.subs.get_mut(&key).filter(|s| s.version == version) else { return Ok(()) };
        sub.in_flight = false;
        match result {
            Ok(()) => {
                sub.queue.pop_front();
                sub.failures = 0;
                self.cx.subs.state.lock().delivered += 1;
            }
            Err(e) => {
                sub.failures += 1;
                {
                    let mut st = self.cx.subs.state.lock();
                    st.failed_attempts += 1;
                    st.last_error = Some(e.clone());
                }
                if sub.failures > cfg.max_retries {
                    let text = format!("notification not delivered after {} attempts: {e}", sub.failures);
                    tracing::warn!("subscription {}: {text}", key.1);
                    self.subs.remove(&key);
                    let store = Store::new(self.cx.tree.clone()).tenant(key.0.as_deref());
                    if let Ok((cur, rec)) = store.read("Subscription", &key.1) {
                        if cur.version == version {
                            if let Ok(body) = serde_json::from_slice::<Value>(rec.body()) {
                                let l = Loaded { tenant: key.0.clone(), id: key.1.clone(), version, ts: cur.ts, body };
                                set_status(&self.cx, &l, "error", Some(text)).await?;
                            }
                        }
                    }
                } else {
                    let pause = Duration::from_millis(100u64.saturating_mul(1 << (sub.failures - 1).min(20)).min(cfg.max_backoff_ms));
                    sub.next_try = Instant::now() + pause;
                }
            }
        }
        Ok(())
    }

    /// Proposes the positions that moved.
    async fn propose_positions(&mut self) -> Result<(), SubscriptionError> {
        let mut by_tenant: HashMap<Option<String>, Vec<(String, u64)>> = HashMap::new();
        for ((tenant, id), sub) in &self.subs {
            let p = sub.position();
            if p > sub.proposed {
                by_tenant.entry(tenant.clone()).or_default().push((id.clone(), p));
            }
        }
        for (tenant, moves) in by_tenant {
            for chunk in moves.chunks(MAX_MOVES) {
                if !self.cx.raft.leads() {
                    return Ok(());
                }
                let op = SubCursorOp::Advance { tenant: tenant.clone(), moves: chunk.to_vec() };
                self.cx.raft.propose(&Command::V1(CommandV1::SubscriptionCursor(op))).await?;
                for (id, p) in chunk {
                    if let Some(s) = self.subs.get_mut(&(tenant.clone(), id.clone())) {
                        s.proposed = s.proposed.max(*p);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The loop, while this node leads.
async fn run(cx: Arc<NotifierCtx>) {
    let setup = (RestHook::new(&cx.subs.rules.cfg), Matcher::new(cx.subs.rules.reg.clone()));
    let (hook, matcher) = match setup {
        (Ok(h), Ok(m)) => (h, m),
        (Err(e), _) => return tracing::error!("subscription notifier: {e}"),
        (_, Err(e)) => return tracing::error!("subscription notifier: {e}"),
    };
    let mut r = Run { cx: cx.clone(), hook: Arc::new(hook), matcher: Arc::new(Mutex::new(matcher)), subs: HashMap::new(), inflight: JoinSet::new() };
    let mut reload_due = true;
    let mut last_reload = Instant::now();
    let mut last_positions = Instant::now();
    // A Subscription write anywhere: noticed from the history heads (the readers may be idle).
    let mut heads: HashMap<Option<String>, u64> = HashMap::new();
    if let Err(e) = subscriptions_written(&cx.tree, &mut heads) {
        tracing::warn!("subscription notifier: {e}");
    }
    while cx.raft.leads() {
        let outcome = async {
            if reload_due || last_reload.elapsed() >= RELOAD_EVERY {
                reload_due = r.reload().await?;
                last_reload = Instant::now();
            }
            let (saw, rows) = r.read().await?;
            reload_due |= saw || subscriptions_written(&cx.tree, &mut heads)?;
            r.deliver();
            if last_positions.elapsed() >= CURSOR_EVERY {
                r.propose_positions().await?;
                last_positions = Instant::now();
            }
            Ok::<usize, SubscriptionError>(rows)
        }
        .await;
        let busy = match outcome {
            Ok(rows) => rows > 0,
            Err(SubscriptionError::Consensus(e)) => {
                tracing::info!("subscription notifier: {e}");
                false
            }
            Err(e) => {
                tracing::warn!("subscription notifier: {e}");
                cx.subs.state.lock().last_error = Some(e.to_string());
                tokio::time::sleep(Duration::from_millis(200)).await;
                false
            }
        };
        // Results of deliveries: wait for one (or the idle pause) when there is nothing to read.
        let first = if busy || r.inflight.is_empty() {
            if !busy {
                tokio::time::sleep(IDLE).await;
            }
            r.inflight.try_join_next()
        } else {
            tokio::select! {
                j = r.inflight.join_next() => j,
                _ = tokio::time::sleep(IDLE) => None,
            }
        };
        let mut next = first;
        while let Some(j) = next {
            if let Ok((key, version, result)) = j {
                if let Err(e) = r.done(key, version, result).await {
                    tracing::info!("subscription notifier: {e}");
                }
            }
            next = r.inflight.try_join_next();
        }
    }
    r.inflight.abort_all();
}

/// Whether a Subscription was written since the last look (per tenant, the type history head).
fn subscriptions_written(tree: &sled::Tree, heads: &mut HashMap<Option<String>, u64>) -> Result<bool, StoreError> {
    let mut changed = false;
    for tenant in tenants(tree)? {
        let space = Space::of(tree.clone(), tenant.as_deref());
        let prefix = keys::type_history_prefix("Subscription");
        let last = match space.scan_prefix(&prefix).next_back() {
            Some(item) => keys::decode_type_history(&item?.0).map(|h| h.ts).unwrap_or(0),
            None => 0,
        };
        let prev = heads.insert(tenant, last);
        changed |= prev.is_some_and(|p| p != last);
    }
    Ok(changed)
}

impl LeaderWork for NotifierCtx {
    fn raft(&self) -> &RaftHandle {
        &self.raft
    }

    fn run(self: Arc<Self>) -> futures::future::LocalBoxFuture<'static, ()> {
        Box::pin(run(self))
    }

    fn running(&self, on: bool) {
        let mut s = self.subs.state.lock();
        s.running = on;
        if !on {
            s.active_rest_hooks = 0;
        }
    }
}

/// Starts the notifier on the leader and stops it elsewhere.
pub type NotifierSupervisor = crate::actors::leader::Supervisor<NotifierCtx>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::FhirVersion;
    use crate::search::params::Registry;
    use crate::machine::StateMachine;
    use serde_json::json;

    fn write(sm: &mut StateMachine, index: u64, ops: Vec<(Action, &str, &str, Option<Value>)>) {
        let ops = ops
            .into_iter()
            .map(|(action, rtype, id, body)| WriteOp { action, rtype: rtype.into(), id: id.into(), body: body.map(|b| b.to_string()), if_match: None, allow_create: true })
            .collect();
        sm.apply(index, 1, &Command::V1(CommandV1::Writes { ts_micros: index * 1_000, ops }).encode()).unwrap();
    }

    #[test]
    fn a_scan_queues_matching_versions_and_deletions_per_reader_position() {
        let dir = tempfile::tempdir().unwrap();
        let tree = sled::open(dir.path()).unwrap().open_tree("state").unwrap();
        let reg = Arc::new(Registry::load(FhirVersion::R4));
        let defs = crate::fhir::Definitions::load(FhirVersion::R4);
        let mut sm = StateMachine::open(tree.clone()).unwrap().with_search(reg.clone());
        let p = |id: &str, active: bool| json!({"resourceType": "Patient", "id": id, "active": active});
        write(&mut sm, 2, vec![(Action::Update, "Patient", "a", Some(p("a", true))), (Action::Update, "Patient", "b", Some(p("b", false)))]);
        write(&mut sm, 3, vec![(Action::Update, "Observation", "o", Some(json!({"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"}})))]);
        write(&mut sm, 4, vec![(Action::Delete, "Patient", "a", None), (Action::Delete, "Patient", "b", None)]);
        write(&mut sm, 5, vec![(Action::Update, "Subscription", "s", Some(json!({"resourceType": "Subscription", "id": "s", "status": "requested", "reason": "r", "criteria": "Patient", "channel": {"type": "websocket"}})))]);
        let mut m = Matcher::new(reg.clone()).unwrap();
        let active = super::super::criteria::parse(&reg, &defs, "Patient?active=true").unwrap();
        let all = super::super::criteria::parse(&reg, &defs, "Patient").unwrap();
        let readers = vec![
            Reader { key: active.key.clone(), rtype: "Patient".into(), query: active.query.clone(), pos: 0 },
            Reader { key: all.key.clone(), rtype: "Patient".into(), query: all.query.clone(), pos: 3_000 },
        ];
        let s = scan(&tree, &mut m, None, 0, &readers, 100).unwrap();
        assert_eq!(s.rows, 6);
        assert!(s.saw_subscription);
        let got: Vec<(usize, &str, bool)> = s.events.iter().map(|(i, e)| (*i, e.id.as_str(), e.deleted)).collect();
        // Reader 0: a's creation and a's deletion (its last version was active); reader 1 only
        // after its position: both deletions.
        assert_eq!(got, vec![(0, "a", false), (0, "a", true), (1, "a", true), (1, "b", true)]);
        // A batch ends on a timestamp boundary.
        let first = scan(&tree, &mut m, None, 0, &readers, 1).unwrap();
        let rest = scan(&tree, &mut m, None, first.last_ts, &readers, 100).unwrap();
        assert_eq!(first.rows + rest.rows, 6);
        assert_eq!(rest.last_ts, s.last_ts);
        assert_eq!(scan(&tree, &mut m, Some("acme"), 0, &readers, 100).unwrap().rows, 0, "per tenant");
    }

    #[test]
    fn the_position_stops_before_the_first_undelivered_notification() {
        let reg = Arc::new(Registry::load(FhirVersion::R4));
        let defs = crate::fhir::Definitions::load(FhirVersion::R4);
        let rules = super::super::Rules::with(Default::default(), reg, Arc::new(defs));
        let spec = spec::read(&rules, &json!({"criteria": "Patient", "channel": {"type": "websocket"}})).unwrap();
        let ev = |ts| Event { ts, rtype: "Patient".into(), id: "a".into(), version: 1, deleted: false };
        let mut s = Sub { version: 1, spec, pos: 900, queue: VecDeque::new(), failures: 0, next_try: Instant::now(), in_flight: false, proposed: 100 };
        assert_eq!(s.position(), 900, "nothing waiting: everything read");
        s.queue.push_back(ev(500));
        s.queue.push_back(ev(700));
        assert_eq!(s.position(), 499);
        s.queue.pop_front();
        assert_eq!(s.position(), 699);
    }
}
