//! Connections that keep their slot without asking for anything.
//!
//! actix-http times only a connection's first request head (`limits.header_timeout_ms`) and,
//! between requests, a keep-alive pause that ends at the first byte of the next request. A
//! client could send one request and then trickle the head of the next one for ever, keeping
//! one of `limits.max_connections` slots. So each connection counts its requests in progress
//! ([`Busy`], from the request's start until its response body has been sent) and a watch
//! ([`watch`]) closes it once it has had none for `limits.idle_timeout_ms` +
//! `limits.header_timeout_ms`: longer than any connection with nothing to do is kept, so
//! only one that is sending a head too slowly is closed.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::web::Bytes;

use crate::budget::Presence;

/// Responses at most this large are sent in one piece: the request ends with its handler.
const SMALL: u64 = 64 * 1024;

/// When something last moved, for a watch that ends what has been still too long.
pub struct Clock {
    start: Instant,
    last_ms: AtomicU64,
}

impl Clock {
    pub fn new() -> Clock {
        Clock { start: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    pub fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Time since the last touch.
    pub fn still(&self) -> Duration {
        self.start.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// What a watch asks of what it watches.
pub trait Quiet: Send + Sync + 'static {
    /// How long it has had nothing going on.
    fn quiet(&self) -> Duration;
}

/// What a connection is doing.
pub struct Activity {
    busy: AtomicUsize,
    clock: Clock,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity { busy: AtomicUsize::new(0), clock: Clock::new() })
    }
}

impl Quiet for Activity {
    /// How long the connection has had no request in progress (zero while it has one).
    fn quiet(&self) -> Duration {
        match self.busy.load(Ordering::Relaxed) {
            0 => self.clock.still(),
            _ => Duration::ZERO,
        }
    }
}

/// One request in progress on its connection.
pub struct Busy(Arc<Activity>);

impl Busy {
    pub fn enter(activity: Option<&Arc<Activity>>) -> Option<Busy> {
        let a = activity?;
        a.busy.fetch_add(1, Ordering::Relaxed);
        a.clock.touch();
        Some(Busy(a.clone()))
    }

    /// Requests in progress on the connection, this one included.
    pub fn in_progress(&self) -> usize {
        self.0.busy.load(Ordering::Relaxed)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.clock.touch();
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// When a response body was last taken from.
pub struct Progress(pub Clock, pub std::sync::atomic::AtomicBool);

impl Progress {
    pub fn new() -> Progress {
        Progress(Clock::new(), std::sync::atomic::AtomicBool::new(false))
    }
}

impl Quiet for Progress {
    /// Zero while the body's own source has not produced its next piece (the client is waiting
    /// on the server then, not the other way round).
    fn quiet(&self) -> Duration {
        match self.1.load(Ordering::Relaxed) {
            true => Duration::ZERO,
            false => self.0.still(),
        }
    }
}

/// The response body, holding the request's [`Busy`] until it has been sent when it is large or
/// streamed (a download may take longer than the idle limit). Such a body is watched: a client
/// that takes nothing of it for `stall` (`limits.stall_timeout_ms`) is hung up on, so a
/// download nobody reads (a raw Binary, an export file) does not keep its connection, file and
/// buffers for ever. (`conn` is `None` for an HTTP/2 connection, whose other streams a hang-up
/// would end too, and for a websocket, which is quiet between notifications.)
pub fn until_sent(body: BoxBody, busy: Option<Busy>, conn: Option<&Arc<dyn Presence>>, stall: Duration) -> BoxBody {
    let large = match body.size() {
        BodySize::Stream => true,
        BodySize::Sized(n) => n > SMALL,
        BodySize::None => false,
    };
    match busy.filter(|_| large) {
        Some(busy) => {
            let progress = Arc::new(Progress::new());
            if let (Some(conn), true) = (conn, tokio::runtime::Handle::try_current().is_ok()) {
                let why = "a client stopped reading a response";
                tokio::spawn(hang_up_when_quiet(Arc::downgrade(&progress), Arc::downgrade(conn), stall, Duration::from_secs(1), why));
            }
            BoxBody::new(Sent { inner: body, progress, _busy: busy })
        }
        None => body,
    }
}

struct Sent {
    inner: BoxBody,
    progress: Arc<Progress>,
    _busy: Busy,
}

impl MessageBody for Sent {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.inner.size()
    }

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        // (Asked for more: the connection has taken what it was given.)
        self.progress.0.touch();
        let next = Pin::new(&mut self.inner).poll_next(cx);
        self.progress.1.store(next.is_pending(), Ordering::Relaxed);
        self.progress.0.touch();
        next
    }
}

/// Hangs up `conn` once `subject` has been quiet for longer than `limit` (checked every quarter
/// of it, at most every `every_max`); ends when either is gone. `why` goes to the log.
pub async fn hang_up_when_quiet<T: Quiet>(subject: Weak<T>, conn: Weak<dyn Presence>, limit: Duration, every_max: Duration, why: &'static str) {
    let every = (limit / 4).clamp(Duration::from_millis(50), every_max);
    loop {
        tokio::time::sleep(every).await;
        let (Some(s), Some(conn)) = (subject.upgrade(), conn.upgrade()) else { return };
        if s.quiet() > limit {
            tracing::info!(limit_ms = limit.as_millis() as u64, "{why}: connection closed");
            conn.hang_up();
            return;
        }
    }
}

/// Closes the connection once it has had no request in progress for `limit`; ends with it.
pub async fn watch(activity: Weak<Activity>, conn: Weak<dyn Presence>, limit: Duration) {
    hang_up_when_quiet(activity, conn, limit, Duration::from_secs(5), "a connection sent no whole request for too long").await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_connection_is_closed_only_after_an_idle_limit_without_requests() {
        let a = Activity::new();
        let line: Arc<dyn Presence> = Arc::new(crate::budget::TestLine::default());
        tokio::spawn(watch(Arc::downgrade(&a), Arc::downgrade(&line), Duration::from_millis(400)));
        // A request in progress for longer than the limit (a slow download): kept.
        let busy = Busy::enter(Some(&a));
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(!line.gone(), "closed while a request was in progress");
        drop(busy);
        let ended = Instant::now();
        while !line.gone() {
            assert!(ended.elapsed() < Duration::from_secs(10), "never closed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ended.elapsed() >= Duration::from_millis(350), "closed {:?} after its last request", ended.elapsed());
    }

    #[test]
    fn small_bodies_end_the_request_with_the_handler() {
        let a = Activity::new();
        let stall = Duration::from_secs(30);
        let small = until_sent(BoxBody::new("ok"), Busy::enter(Some(&a)), None, stall);
        assert_eq!(a.busy.load(Ordering::Relaxed), 0);
        let large = until_sent(BoxBody::new(vec![0u8; 100_000]), Busy::enter(Some(&a)), None, stall);
        assert_eq!(a.busy.load(Ordering::Relaxed), 1);
        drop((small, large));
        assert_eq!(a.busy.load(Ordering::Relaxed), 0);
    }
}
