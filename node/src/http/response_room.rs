//! Room for response bodies in flight (`limits.max_inflight_response_bytes`): the node-wide
//! bound on the memory that large responses hold until their clients have read them.
//!
//! A read's response body of [`CHARGED_FROM`] bytes or more, once built, takes room for its
//! size ([`ResponseRoom::take`]) and keeps it until the last chunk has been handed to the
//! connection ([`HeldBody`], written in [`CHUNK`]-byte pieces so a slow reader holds the room,
//! not the other way round). A batch takes room for every GET entry as it builds them and
//! keeps it for the assembled bundle (its other bytes are charged when there is room). When the room is spent the body is dropped and the answer
//! is 503 with `Retry-After` (a batch entry answers so in its own `response`); one
//! authenticated caller holds at most a quarter of the room (429 past it). A client that takes
//! nothing of a held body for `limits.stall_timeout_ms` is hung up on, which gives its room back.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, MessageBody};
use actix_web::web::Bytes;
use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::RequestError;
use crate::budget::Presence;

/// Bodies from this size on are charged (smaller ones are cheap and many).
pub const CHARGED_FROM: usize = 64 * 1024;
/// Piece of a held body handed to the connection at a time.
const CHUNK: usize = 256 * 1024;

/// Bytes each caller holds, by caller.
type Shares = Arc<Mutex<HashMap<String, usize>>>;

/// The room, counted in KiB, and each caller's part of it.
pub struct ResponseRoom {
    room: Arc<Semaphore>,
    limit: usize,
    /// Most one caller may hold: a quarter of the room, at least one whole batch response.
    share: usize,
    shares: Shares,
    /// Longest pause a client may make in taking a held body (`limits.stall_timeout_ms`).
    pub stall: Duration,
}

impl ResponseRoom {
    pub fn new(limit_bytes: usize, batch_bytes: usize, stall: Duration) -> ResponseRoom {
        let kib = limit_bytes.div_ceil(1024).clamp(1, Semaphore::MAX_PERMITS);
        ResponseRoom { room: Arc::new(Semaphore::new(kib)), limit: limit_bytes, share: (limit_bytes / 4).max(batch_bytes), shares: Shares::default(), stall }
    }

    /// Room for `bytes` more, added to `held`; refused at once (never waits) when the node's
    /// room is spent (503) or `caller` (an authenticated caller's key) holds its share (429).
    pub fn take(&self, held: &mut Held, bytes: usize, caller: Option<&str>) -> Result<(), RequestError> {
        let kib = u32::try_from(bytes.div_ceil(1024)).unwrap_or(u32::MAX);
        if kib == 0 {
            return Ok(());
        }
        let mut shares = self.shares.lock();
        if let Some(c) = caller {
            let mine = shares.get(c).copied().unwrap_or(0);
            if mine.saturating_add(bytes) > self.share {
                return Err(RequestError::TooManyRequests(format!(
                    "this caller already holds {mine} bytes of responses its connections have not read, of {} one caller may hold (a quarter of config limits.max_inflight_response_bytes); read them, or retry later",
                    self.share
                )));
            }
        }
        let permit = self.room.clone().try_acquire_many_owned(kib).map_err(|_| {
            RequestError::Busy(format!(
                "the node is holding {} bytes of responses not yet read by their clients (config limits.max_inflight_response_bytes); retry later or ask for smaller pages",
                self.limit
            ))
        })?;
        held.permits.push(permit);
        if let Some(c) = caller {
            *shares.entry(c.to_string()).or_default() += bytes;
            match &mut held.share {
                Some((_, _, n)) => *n += bytes,
                none => *none = Some((self.shares.clone(), c.to_string(), bytes)),
            }
        }
        Ok(())
    }

    /// Free room, in bytes (for tests and metrics).
    pub fn available(&self) -> usize {
        self.room.available_permits().saturating_mul(1024)
    }
}

/// Room taken for one response; given back when dropped.
#[derive(Default)]
pub struct Held {
    permits: Vec<OwnedSemaphorePermit>,
    share: Option<(Shares, String, usize)>,
}

impl Held {
    pub fn is_empty(&self) -> bool {
        self.permits.is_empty()
    }

}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some((shares, caller, n)) = self.share.take() {
            let mut shares = shares.lock();
            if let Some(mine) = shares.get_mut(&caller) {
                *mine = mine.saturating_sub(n);
                if *mine == 0 {
                    shares.remove(&caller);
                }
            }
        }
    }
}

use super::idle::Progress;

/// A response body that keeps its room until the connection has taken all of it.
pub struct HeldBody {
    rest: Bytes,
    progress: Arc<Progress>,
    _held: Held,
}

impl HeldBody {
    pub fn new(body: Vec<u8>, held: Held) -> HeldBody {
        HeldBody { rest: Bytes::from(body), progress: Arc::new(Progress::new()), _held: held }
    }

    /// Hangs up `conn` when its client takes nothing of this body for `stall`, so a client that
    /// stops reading cannot keep the room (the connection's end drops the body).
    /// (The watch holds neither: the connection's socket closes when the connection ends.)
    pub fn watched(self, conn: &Arc<dyn Presence>, stall: Duration) -> HeldBody {
        if tokio::runtime::Handle::try_current().is_ok() {
            let why = "a client stopped reading a large response";
            tokio::spawn(super::idle::hang_up_when_quiet(Arc::downgrade(&self.progress), Arc::downgrade(conn), stall, Duration::from_secs(1), why));
        }
        self
    }
}

impl MessageBody for HeldBody {
    type Error = std::convert::Infallible;

    fn size(&self) -> BodySize {
        BodySize::Sized(self.rest.len() as u64)
    }

    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        this.progress.0.touch();
        if this.rest.is_empty() {
            return Poll::Ready(None);
        }
        let n = this.rest.len().min(CHUNK);
        Poll::Ready(Some(Ok(this.rest.split_to(n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn room_is_taken_until_the_body_is_dropped_and_refused_when_spent() {
        let room = ResponseRoom::new(1024 * 1024, 0, Duration::from_secs(30));
        let mut a = Held::default();
        room.take(&mut a, 600 * 1024, None).unwrap();
        room.take(&mut a, 300 * 1024, None).unwrap();
        assert_eq!(room.available(), 124 * 1024);
        let mut b = Held::default();
        let refused = room.take(&mut b, 200 * 1024, None).unwrap_err();
        assert!(refused.to_string().contains("limits.max_inflight_response_bytes"), "{refused}");
        let body = HeldBody::new(vec![7u8; 900 * 1024], a);
        assert_eq!(room.available(), 124 * 1024, "the body keeps the room");
        let bytes = futures::executor::block_on(actix_web::body::to_bytes(body)).unwrap();
        assert_eq!(bytes.len(), 900 * 1024);
        assert_eq!(room.available(), 1024 * 1024, "read to the end: the room is back");
        room.take(&mut b, 200 * 1024, None).unwrap();
    }

    #[test]
    fn one_caller_holds_at_most_its_share() {
        let room = ResponseRoom::new(4 << 20, 0, Duration::from_secs(30));
        let mut a = Held::default();
        room.take(&mut a, 700 << 10, Some("mallory")).unwrap();
        room.take(&mut a, 300 << 10, Some("mallory")).unwrap();
        let mut b = Held::default();
        let refused = room.take(&mut b, 100 << 10, Some("mallory")).unwrap_err();
        assert!(matches!(refused, RequestError::TooManyRequests(_)), "{refused}");
        room.take(&mut b, 1 << 20, Some("alice")).unwrap();
        room.take(&mut b, 1 << 20, None).unwrap();
        drop(a);
        room.take(&mut Held::default(), 1 << 20, Some("mallory")).unwrap();
        assert!(room.shares.lock().get("mallory").is_none(), "given back once dropped");
    }

    #[tokio::test]
    async fn a_client_that_stops_reading_is_hung_up_on() {
        let line: Arc<dyn Presence> = Arc::new(crate::budget::TestLine::default());
        let hung = |l: &Arc<dyn Presence>| l.gone();
        let mut body = HeldBody::new(vec![0u8; CHUNK * 3], Held::default()).watched(&line, Duration::from_secs(1));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let start = Instant::now();
        for _ in 0..4 {
            assert!(Pin::new(&mut body).poll_next(&mut cx).is_ready());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // (Four pieces within 1 s of each other: taken, whatever the stall check saw.)
        assert!(!hung(&line) || start.elapsed() > Duration::from_secs(1), "a client that keeps taking is not hung up on");
        let last = Instant::now();
        while !hung(&line) {
            assert!(last.elapsed() < Duration::from_secs(20), "never hung up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(last.elapsed() >= Duration::from_millis(500), "hung up {:?} after the last piece, before the stall passed", last.elapsed());
    }

    #[test]
    fn a_held_body_comes_in_pieces() {
        let mut body = HeldBody::new(vec![1u8; CHUNK * 2 + 5], Held::default());
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut sizes = Vec::new();
        while let Poll::Ready(Some(Ok(b))) = Pin::new(&mut body).poll_next(&mut cx) {
            sizes.push(b.len());
        }
        assert_eq!(sizes, vec![CHUNK, CHUNK, 5]);
    }
}
