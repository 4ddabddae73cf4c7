//! The R4 websocket channel's hub and pinger (the endpoint, `GET /_subscriptions/ws`, is
//! `crate::http::websocket`; also under `/tenant/{id}`), advertised in
//! the CapabilityStatement's `capabilitystatement-websocket` extension. The upgrade request goes
//! through the API's authentication middleware like any other (a bearer token or API key when
//! auth is on). On the socket the client sends `bind {id}` for a websocket Subscription it may
//! read; the server answers `bound {id}` (or `error {id} {reason}`), then sends `ping {id}` for
//! each write that meets the Subscription's criteria. A ping carries no resource: the client
//! searches for what changed, with its own rights.
//!
//! Pings come from the node the client is connected to: its [`pinger`] reads its own replica's
//! applied history after the moment the first binding appeared (every node has the same
//! history), so websocket clients may connect to any node, leader or not. A ping for a
//! connection that is gone, or whose outgoing queue is full (a client that does not read), is
//! dropped: R4 websocket notifications are a hint to re-query, not a log. Bounded: connections
//! per node (`max_websockets`), bindings per connection (`max_bindings_per_socket`), client
//! frames of 4 KiB, 256 pings waiting per connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::mpsc;

use super::criteria::{Criteria, Matcher};
use super::notifier::{scan, Reader, BATCH_ROWS};
use super::{spec, Subscriptions, SubscriptionError, SubscriptionsConfig};
use crate::store::space::Space;
use crate::store::{keys, Store, StoreError};

/// A binding: (tenant, Subscription id).
pub type Key = (Option<String>, String);
/// The connections bound to one Subscription: (connection number, its outgoing queue).
type Bound = Vec<(u64, mpsc::Sender<String>)>;
/// Pings waiting per connection.
pub const OUTBOX: usize = 256;
/// Largest client frame.
pub const MAX_FRAME: usize = 4096;
/// How often the pinger looks for new writes.
const TICK: Duration = Duration::from_millis(20);

/// This node's websocket connections and their bindings.
pub struct Hub {
    open: AtomicUsize,
    max: usize,
    /// The next connection number.
    pub next: AtomicU64,
    bindings: Mutex<HashMap<Key, Bound>>,
}

/// A connection's place among `max_websockets`, given back when dropped.
pub struct Slot(Arc<Subscriptions>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.hub.open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Hub {
    pub fn new(cfg: &SubscriptionsConfig) -> Hub {
        Hub { open: AtomicUsize::new(0), max: cfg.max_websockets, next: AtomicU64::new(1), bindings: Mutex::new(HashMap::new()) }
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }

    /// A place among `max_websockets` for a new connection.
    pub fn claim(subs: &Arc<Subscriptions>) -> Result<Slot, SubscriptionError> {
        let hub = &subs.hub;
        let prev = hub.open.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(subs.clone());
        if prev >= hub.max {
            return Err(SubscriptionError::TooManySockets { max: hub.max });
        }
        Ok(slot)
    }

    /// Binds connection `conn` (its outgoing queue `tx`) to `key`.
    pub fn bind(&self, key: Key, conn: u64, tx: mpsc::Sender<String>) {
        let mut b = self.bindings.lock();
        let list = b.entry(key).or_default();
        if !list.iter().any(|(c, _)| *c == conn) {
            list.push((conn, tx));
        }
    }

    /// Drops connection `conn`'s bindings.
    pub fn unbind(&self, conn: u64, keys: &[Key]) {
        let mut b = self.bindings.lock();
        for k in keys {
            if let Some(list) = b.get_mut(k) {
                list.retain(|(c, _)| *c != conn);
                if list.is_empty() {
                    b.remove(k);
                }
            }
        }
    }

    fn bound(&self) -> Vec<Key> {
        self.bindings.lock().keys().cloned().collect()
    }

    /// `ping {id}` to every connection bound to `key` (dropped for a connection that does not read).
    fn ping(&self, key: &Key) {
        if let Some(list) = self.bindings.lock().get(key) {
            for (_, tx) in list {
                let _ = tx.try_send(format!("ping {}", key.1));
            }
        }
    }
}

/// The websocket Subscription a binding names, when active.
fn bound_criteria(st: &Subscriptions, tree: &sled::Tree, key: &Key, cache: &mut HashMap<Key, (u64, Option<Criteria>)>) -> Result<Option<Criteria>, StoreError> {
    let store = Store::new(tree.clone()).tenant(key.0.as_deref());
    let Some(cur) = store.current("Subscription", &key.1)? else { return Ok(None) };
    if cur.deleted {
        return Ok(None);
    }
    if let Some((v, c)) = cache.get(key) {
        if *v == cur.version {
            return Ok(c.clone());
        }
    }
    let rec = store.vread("Subscription", &key.1, cur.version)?;
    let criteria = serde_json::from_slice::<Value>(rec.body()).ok().and_then(|body| {
        let ok = spec::status(&body) == "active" && body.pointer("/channel/type").and_then(Value::as_str) == Some("websocket");
        ok.then(|| spec::read(&st.rules, &body).ok().map(|s| s.criteria)).flatten()
    });
    cache.insert(key.clone(), (cur.version, criteria.clone()));
    Ok(criteria)
}

/// The timestamp of `tenant`'s last history row.
fn history_head(tree: &sled::Tree, tenant: Option<&str>) -> Result<u64, StoreError> {
    let space = Space::of(tree.clone(), tenant);
    let last = space.range(vec![keys::SYS_HISTORY]..crate::meili::status::history_end()).next_back();
    match last {
        Some(item) => Ok(keys::decode_sys_history(&item?.0).map(|h| h.ts).unwrap_or(0)),
        None => Ok(0),
    }
}

/// One pinger round for every tenant with bindings (blocking: sled).
fn ping_round(subs: &Subscriptions, tree: &sled::Tree, matcher: &mut Matcher, pos: &mut HashMap<Option<String>, u64>, cache: &mut HashMap<Key, (u64, Option<Criteria>)>) -> Result<(), SubscriptionError> {
    let bound = subs.hub.bound();
    cache.retain(|k, _| bound.contains(k));
    let mut by_tenant: HashMap<Option<String>, Vec<Key>> = HashMap::new();
    for k in bound {
        by_tenant.entry(k.0.clone()).or_default().push(k);
    }
    pos.retain(|t, _| by_tenant.contains_key(t));
    for (tenant, keys) in by_tenant {
        let from = match pos.get(&tenant) {
            Some(p) => *p,
            None => {
                let head = history_head(tree, tenant.as_deref())?;
                pos.insert(tenant.clone(), head);
                continue;
            }
        };
        let mut readers = Vec::new();
        let mut who = Vec::new();
        for k in keys {
            if let Some(c) = bound_criteria(subs, tree, &k, cache)? {
                readers.push(Reader { key: c.key, rtype: c.rtype, query: c.query, pos: from });
                who.push(k);
            }
        }
        let s = scan(tree, matcher, tenant.as_deref(), from, &readers, BATCH_ROWS)?;
        for (i, _) in &s.events {
            subs.hub.ping(&who[*i]);
        }
        if s.rows > 0 {
            pos.insert(tenant, s.last_ts.max(from));
        }
    }
    Ok(())
}

/// Pings bound connections on this node, from its own replica's history (see the module doc).
pub async fn pinger(subs: Arc<Subscriptions>, tree: sled::Tree) {
    let matcher = match Matcher::new(subs.rules.reg.clone()) {
        Ok(m) => Arc::new(Mutex::new(m)),
        Err(e) => return tracing::error!("websocket pinger: {e}"),
    };
    let state = Arc::new(Mutex::new((HashMap::new(), HashMap::new())));
    loop {
        tokio::time::sleep(TICK).await;
        if subs.hub.bindings.lock().is_empty() {
            state.lock().0.clear();
            continue;
        }
        let (subs2, tree2, m2, st2) = (subs.clone(), tree.clone(), matcher.clone(), state.clone());
        let r = tokio::task::spawn_blocking(move || {
            let mut m = m2.lock();
            let mut st = st2.lock();
            let (pos, cache) = &mut *st;
            ping_round(&subs2, &tree2, &mut m, pos, cache)
        })
        .await;
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("websocket pinger: {e}"),
            Err(e) => tracing::warn!("websocket pinger: {e}"),
        }
    }
}
