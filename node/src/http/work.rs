//! Where the costly part of a request runs, and who may start it. Reads that scan (the index
//! part of searches, history pages, batch GET entries, `$everything`'s members, `$meta`) do
//! not run on the HTTP workers: [`block`] sends them to the blocking threads, at most
//! `limits.scan_workers` at once with at most `limits.scan_queue` waiting (past it: 503 with
//! `Retry-After`), and at most `limits.max_concurrent_per_principal` of one caller (and
//! `limits.max_concurrent_per_tenant` of one tenant) at once (past it: 429 with `Retry-After`),
//! so `/metadata`, `/_health` and point reads are answered while a caller floods the node.
//! (Also on the pool: search pages of more than 50 matches or with includes, and batch responses
//! past 1 MiB. Still on the worker: smaller pages, inside the budget. Patches, bundle plans and
//! terminology operations use the blocking threads without this pool.)
//!
//! Heavy requests and callers (past `limits.heavy_rows` rows) run in the heavy lane instead
//! ([`super::heavy`]): as many threads again, at a lower CPU priority, with their own places.
//!
//! The work runs inside the request's [`Budget`] (`limits.max_request_rows`,
//! `limits.request_timeout_ms`, and whether the client is still connected: [`on_connect`] keeps
//! a duplicate of each connection's socket, which [`Connection::gone`] peeks at), so it stops
//! between two rows when the budget is spent, the deadline passes or the client hangs up.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix_web::web;
use parking_lot::Mutex;

use super::heavy::{HeavyCallers, HeavyLane};
use super::negotiate::Ctx;
use super::{AppState, RequestError};
use crate::budget::{self, Budget, Presence};
use crate::config::Limits;
use crate::http::error::ApiError;

/// The connection a request came on, as seen through a duplicate of its socket.
pub struct Connection(std::net::TcpStream);

impl Presence for Connection {
    /// The peer closed or reset the connection. (A client that half-closes its sending side
    /// after the request counts as gone: HTTP clients do not.)
    fn gone(&self) -> bool {
        let mut byte = [0u8; 1];
        match self.0.peek(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted),
        }
    }

    /// Shuts the socket down both ways: the server's pending writes on it fail, and the
    /// connection ends.
    fn hang_up(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

/// `HttpServer::on_connect`: keeps a duplicate of the connection's socket in the connection's
/// data, for [`Connection::gone`], and starts its idle watch ([`super::idle`], closing it after
/// `idle_limit` without a request in progress). The socket is already non-blocking (shared with
/// the original), so a peek never waits.
pub fn on_connect(conn: &dyn std::any::Any, ext: &mut actix_web::dev::Extensions, idle_limit: Duration) {
    type Plain = actix_web::rt::net::TcpStream;
    type Tls = actix_tls::accept::rustls_0_23::TlsStream<Plain>;
    let tcp = if let Some(s) = conn.downcast_ref::<Plain>() {
        s
    } else if let Some(s) = conn.downcast_ref::<Tls>() {
        s.get_ref().0
    } else {
        return;
    };
    if let Ok(addr) = tcp.local_addr() {
        ext.insert(LocalAddr(addr));
    }
    let fd = tcp.as_fd().try_clone_to_owned();
    match fd {
        Ok(fd) => {
            let c: Arc<dyn Presence> = Arc::new(Connection(std::net::TcpStream::from(fd)));
            let activity = super::idle::Activity::new();
            if tokio::runtime::Handle::try_current().is_ok() {
                actix_web::rt::spawn(super::idle::watch(Arc::downgrade(&activity), Arc::downgrade(&c), idle_limit));
            }
            ext.insert(activity);
            ext.insert(c);
        }
        Err(e) => tracing::warn!("cannot watch a connection for disconnects: {e}"),
    }
}

/// The address a connection reached (not the listener's, which may be `0.0.0.0`).
#[derive(Debug, Clone, Copy)]
pub struct LocalAddr(pub std::net::SocketAddr);

/// The budget of a request on this connection.
pub fn budget_for(req: &actix_web::HttpRequest, limits: &Limits) -> Arc<Budget> {
    let client = req.conn_data::<Arc<dyn Presence>>().cloned();
    Budget::new(limits.max_request_rows, Duration::from_millis(limits.request_timeout_ms), client)
}

/// Costly work in flight per caller and per tenant.
#[derive(Default)]
struct Shares(Mutex<HashMap<String, usize>>);

impl Shares {
    /// Takes one of `max` places for `key`, or `None` when all are taken.
    fn take(self: &Arc<Self>, key: String, max: usize) -> Option<Share> {
        let mut m = self.0.lock();
        let n = m.entry(key.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Share { shares: self.clone(), key })
    }
}

/// A place taken in [`Shares`], given back on drop.
pub struct Share {
    shares: Arc<Shares>,
    key: String,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut m = self.shares.0.lock();
        if let Some(n) = m.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
    }
}

/// The node's pool for costly reads.
pub struct WorkPool {
    permits: Arc<tokio::sync::Semaphore>,
    workers: usize,
    waiting: AtomicUsize,
    max_waiting: usize,
    per_principal: usize,
    per_tenant: usize,
    principals: Arc<Shares>,
    tenants: Arc<Shares>,
    /// The heavy lane (see [`super::heavy`]): its threads, its places, who is heavy now.
    heavy: HeavyLane,
    heavy_permits: Arc<tokio::sync::Semaphore>,
    heavy_rows: u64,
    heavy_callers: Arc<HeavyCallers>,
}

impl WorkPool {
    pub fn new(limits: &Limits) -> WorkPool {
        let workers = limits.scan_workers();
        WorkPool {
            permits: Arc::new(tokio::sync::Semaphore::new(workers)),
            workers,
            waiting: AtomicUsize::new(0),
            max_waiting: limits.scan_queue,
            per_principal: limits.max_concurrent_per_principal,
            per_tenant: limits.max_concurrent_per_tenant,
            principals: Arc::default(),
            tenants: Arc::default(),
            heavy: HeavyLane::start(workers, limits.heavy_nice),
            heavy_permits: Arc::new(tokio::sync::Semaphore::new(workers)),
            heavy_rows: limits.heavy_rows,
            heavy_callers: Arc::default(),
        }
    }

    /// Costly requests running now.
    pub fn running(&self) -> usize {
        self.workers - self.permits.available_permits()
    }
}

/// Counts a waiter while it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One of the caller's places in the fair share (`limits.max_concurrent_per_principal`), held
/// until dropped: [`block`] takes one for a request's costly part, and a batch or transaction
/// with GET entries one for its whole run (its entries run in it), so a caller's batches count
/// as costly requests from their first entry to their last. `None` for the open server's
/// anonymous caller; 429 when the caller's places are all taken.
pub fn caller_share(ctx: &Ctx, st: &AppState) -> Result<Option<Share>, ApiError> {
    let pool = &st.work;
    let Some(caller) = ctx.caller() else { return Ok(None) };
    let share = pool.principals.take(caller, pool.per_principal).ok_or_else(|| {
        RequestError::TooManyRequests(format!(
            "{} already has {} costly requests (searches, history, batches) running on this node (config limits.max_concurrent_per_principal); retry when one has finished",
            ctx.principal.subject, pool.per_principal
        ))
    })?;
    Ok(Some(share))
}

/// Runs `f` (a request's costly part) on the pool, inside the request's budget. The fair-share
/// limits apply to authenticated callers (an open server has one anonymous caller).
pub async fn block<T, E, F>(ctx: &Ctx, st: &AppState, f: F) -> Result<T, ApiError>
where
    T: Send + 'static,
    E: Into<ApiError> + Send + 'static,
    F: FnOnce() -> Result<T, E> + Send + 'static,
{
    ctx.budget.check().map_err(too_costly)?;
    let pool = &st.work;
    let authenticated = ctx.principal.via != crate::auth::Via::Open;
    let tenant = ctx.tenant.as_deref().unwrap_or("");
    // The open server has one anonymous caller: no fair share, and only the request counts as heavy.
    let caller = ctx.caller();
    // (A batch entry runs in the place its batch holds: the work keeps it too.)
    let mine = match (&ctx.share, ctx.by_batch) {
        (Some(batch), _) => Some(batch.clone()),
        (None, true) => None,
        (None, false) => caller_share(ctx, st)?.map(Arc::new),
    };
    // A request that has already read much, or a caller whose recent requests did, goes to the
    // heavy lane.
    let heavy = ctx.budget.used() > pool.heavy_rows || caller.as_deref().is_some_and(|c| pool.heavy_callers.is_heavy(c));
    // The tenant's share counts normal-lane work only: heavy work is bounded by the heavy lane's
    // own places, so a few heavy users cannot take every place of their tenant's other users.
    let theirs = match (authenticated && !heavy, ctx.tenant.is_some()) {
        (true, true) => Some(pool.tenants.take(tenant.to_string(), pool.per_tenant).ok_or_else(|| {
            RequestError::TooManyRequests(format!(
                "tenant {tenant} already has {} costly requests running on this node (config limits.max_concurrent_per_tenant); retry later",
                pool.per_tenant
            ))
        })?),
        _ => None,
    };
    let places = if heavy { &pool.heavy_permits } else { &pool.permits };
    let permit = match places.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(_) => {
            if pool.waiting.fetch_add(1, Ordering::Relaxed) >= pool.max_waiting {
                pool.waiting.fetch_sub(1, Ordering::Relaxed);
                return Err(busy(pool));
            }
            let _waiting = Waiting(&pool.waiting);
            match tokio::time::timeout(ctx.budget.remaining(), places.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                _ => return Err(busy(pool)),
            }
        }
    };
    // The client may have left while the request waited.
    ctx.budget.check().map_err(too_costly)?;
    let budget = ctx.budget.clone();
    // The pool's place and the caller's shares go with the work, not with this future: if the
    // handler is dropped (the client reset the stream), they are held until the work stops.
    let work = move || {
        let held = (permit, mine, theirs);
        let out = budget::within(&budget, f);
        drop(held);
        out
    };
    let out = match heavy {
        true => pool.heavy.run(work).await.ok_or_else(|| crate::store::StoreError::Storage("the request's work failed on the heavy lane (see the node's log)".into()))?,
        false => web::block(work).await.map_err(|e| crate::store::StoreError::Storage(format!("request worker: {e}")))?,
    };
    // (Marked here, on the async side, not on a low-priority thread holding the map's lock.)
    if let Some(caller) = caller.filter(|_| ctx.budget.used() > pool.heavy_rows) {
        pool.heavy_callers.mark(&caller);
    }
    out.map_err(Into::into)
}

/// Runs `f` off the HTTP worker without admission: work that must finish once started (the
/// assembly of a batch response after its writes committed), in the heavy lane when the request
/// is heavy, else on the blocking threads. Never refused for fair share, queue or budget.
pub async fn offload<T: Send + 'static>(ctx: &Ctx, st: &AppState, f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    let failed = |what: String| ApiError::from(crate::store::StoreError::Storage(what));
    match ctx.budget.used() > st.work.heavy_rows {
        true => st.work.heavy.run(f).await.ok_or_else(|| failed("the request's work failed on the heavy lane (see the node's log)".into())),
        false => web::block(f).await.map_err(|e| failed(format!("request worker: {e}"))),
    }
}

fn busy(pool: &WorkPool) -> ApiError {
    RequestError::Busy(format!(
        "the node is busy: {} costly requests running and {} waiting (config limits.scan_workers, limits.scan_queue); retry later",
        pool.workers, pool.max_waiting
    ))
    .into()
}

/// A spent budget as the answer of the request.
pub fn too_costly(e: budget::Spent) -> ApiError {
    RequestError::TooCostly(e.to_string()).into()
}

/// Bounds the shape of a query (or `_search` form): how many parameters, and how many
/// comma-separated values one parameter may list.
pub fn check_params(params: &[(String, String)], limits: &Limits) -> Result<(), RequestError> {
    if params.len() > limits.max_parameters {
        return Err(RequestError::TooCostly(format!(
            "the query has {} parameters; the limit is {} (config limits.max_parameters)",
            params.len(),
            limits.max_parameters
        )));
    }
    for (name, value) in params {
        let values = or_values(value);
        if values > limits.max_or_values {
            return Err(RequestError::TooCostly(format!(
                "parameter {name} lists {values} values; the limit is {} (config limits.max_or_values)",
                limits.max_or_values
            )));
        }
    }
    Ok(())
}

/// How many values a search splits `value` into: commas split, except one escaped by a
/// backslash (`\,`); `\\` is an escaped backslash (the same reading as the search parser's).
fn or_values(value: &str) -> usize {
    let mut n = 1;
    let mut bytes = value.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'\\' => {
                // The escaped character is part of the value, whatever it is.
                bytes.next();
            }
            b',' => n += 1,
            _ => {}
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_shape_is_bounded() {
        let limits = Limits { max_parameters: 3, max_or_values: 3, ..Limits::default() };
        let p = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
        assert!(check_params(&p(&[("code", "a,b,c"), ("x", "1")]), &limits).is_ok());
        assert!(check_params(&p(&[("code", "a,b\\,b,c")]), &limits).is_ok(), "an escaped comma is part of a value");
        assert_eq!(or_values("a\\\\,b\\\\,c\\\\,d"), 4, "an escaped backslash does not escape the comma after it");
        assert_eq!(or_values(",,"), 3);
        let e = check_params(&p(&[("code", "a,b,c,d")]), &limits).unwrap_err().to_string();
        assert!(e.contains("limits.max_or_values") && e.contains("code"), "{e}");
        let e = check_params(&p(&[("a", "1"), ("b", "1"), ("c", "1"), ("d", "1")]), &limits).unwrap_err().to_string();
        assert!(e.contains("limits.max_parameters"), "{e}");
    }
}
