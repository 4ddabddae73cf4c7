//! The work budget of one client request: how many rows (index rows and blocks, history rows,
//! stored bodies) it may read in all, until when it may run, and whether its client is still
//! there. Every entry of a batch and every parameter value of a search draws on the same
//! [`Budget`]. The request's blocking work runs inside [`within`], which makes the budget the
//! current one of that thread; the readers call [`charge`] per row (through
//! [`crate::search::cost::charge`] for the index), so a spent budget, a passed deadline or a
//! client that hung up stops the work between two rows.
//!
//! The current budget is a thread-local on purpose: the readers that charge it sit many calls
//! below the handler, in code that also runs on the Raft thread (which never has a request
//! budget). Outside [`within`] charging costs one thread-local read.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Rows between two checks of the deadline and of the client's connection.
const CHECK_EVERY: u64 = 2048;

/// Tells whether the client of a request has gone (its connection closed).
pub trait Presence: Send + Sync {
    fn gone(&self) -> bool;
    /// Ends the connection (a client that stopped taking its response).
    fn hang_up(&self) {}
}

/// A connection for tests: it is gone once hung up on.
#[cfg(test)]
#[derive(Default)]
pub struct TestLine(std::sync::atomic::AtomicBool);

#[cfg(test)]
impl Presence for TestLine {
    fn gone(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
    fn hang_up(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What stopped a request's work. The messages name the config keys that bound it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Spent {
    #[error("the request read more than {limit} rows (index rows, history rows and resources, all entries and parameter values together), the limit of one request (config limits.max_request_rows); make the search more selective, page with a smaller _count, or split the batch")]
    Rows { limit: u64 },
    #[error("the request ran longer than {ms} ms (config limits.request_timeout_ms); make it more selective or split it")]
    Deadline { ms: u64 },
    #[error("the client closed the connection; the request's work was stopped")]
    ClientGone,
}

/// One request's budget, shared by every part of its work.
pub struct Budget {
    limit: u64,
    used: AtomicU64,
    started: Instant,
    timeout: Duration,
    client: Option<Arc<dyn Presence>>,
    /// The first reason the work was stopped (later charges fail the same way at once).
    stopped: AtomicBool,
    reason: parking_lot::Mutex<Option<Spent>>,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget").field("limit", &self.limit).field("used", &self.used()).field("timeout", &self.timeout).finish()
    }
}

impl Budget {
    /// A budget of `rows` row reads within `timeout` from now; `client` tells whether the
    /// caller is still connected.
    pub fn new(rows: u64, timeout: Duration, client: Option<Arc<dyn Presence>>) -> Arc<Budget> {
        Arc::new(Budget {
            limit: rows,
            used: AtomicU64::new(0),
            started: Instant::now(),
            timeout,
            client,
            stopped: AtomicBool::new(false),
            reason: parking_lot::Mutex::new(None),
        })
    }

    /// A budget nothing exhausts (internal work that is not a client request).
    pub fn unlimited() -> Arc<Budget> {
        Budget::new(u64::MAX, Duration::from_secs(u64::MAX / 4), None)
    }

    /// The connection of the request, when it is watched.
    pub fn client(&self) -> Option<Arc<dyn Presence>> {
        self.client.clone()
    }

    /// Rows read so far.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn stop(&self, why: Spent) -> Spent {
        let mut r = self.reason.lock();
        let first = *r.get_or_insert(why);
        self.stopped.store(true, Ordering::Release);
        first
    }

    /// Charges `n` rows; checks the deadline and the client every [`CHECK_EVERY`] rows.
    pub fn charge(&self, n: u64) -> Result<(), Spent> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(self.reason.lock().unwrap_or(Spent::ClientGone));
        }
        let before = self.used.fetch_add(n, Ordering::Relaxed);
        let after = before.saturating_add(n);
        if after > self.limit {
            return Err(self.stop(Spent::Rows { limit: self.limit }));
        }
        if before / CHECK_EVERY != after / CHECK_EVERY || before == 0 {
            self.check()?;
        }
        Ok(())
    }

    /// Whether the work may go on: deadline not passed, client still there.
    pub fn check(&self) -> Result<(), Spent> {
        if self.stopped.load(Ordering::Acquire) {
            return Err(self.reason.lock().unwrap_or(Spent::ClientGone));
        }
        if self.started.elapsed() > self.timeout {
            return Err(self.stop(Spent::Deadline { ms: self.timeout.as_millis() as u64 }));
        }
        if self.client.as_ref().is_some_and(|c| c.gone()) {
            return Err(self.stop(Spent::ClientGone));
        }
        Ok(())
    }

    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.timeout.saturating_sub(self.started.elapsed())
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<Budget>>> = const { RefCell::new(None) };
}

/// Runs `f` with `budget` as this thread's current budget (restored afterwards, even on panic).
pub fn within<T>(budget: &Arc<Budget>, f: impl FnOnce() -> T) -> T {
    let previous = CURRENT.with(|c| c.borrow_mut().replace(budget.clone()));
    struct Restore(Option<Arc<Budget>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = previous);
        }
    }
    let _restore = Restore(previous);
    f()
}

/// Charges `n` rows to this thread's current budget, if any.
pub fn charge(n: u64) -> Result<(), Spent> {
    CURRENT.with(|c| match c.borrow().as_ref() {
        Some(b) => b.charge(n),
        None => Ok(()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Flag(AtomicBool);
    impl Presence for Flag {
        fn gone(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn rows_are_counted_across_calls_and_the_first_reason_sticks() {
        assert!(charge(u64::MAX / 2).is_ok(), "no budget: free");
        let b = Budget::new(10, Duration::from_secs(60), None);
        within(&b, || {
            assert!(charge(4).is_ok());
            assert!(charge(6).is_ok());
            assert_eq!(charge(1), Err(Spent::Rows { limit: 10 }));
            assert_eq!(charge(0), Err(Spent::Rows { limit: 10 }), "stays spent");
        });
        assert!(charge(100).is_ok(), "restored");
        // Another thread (a second batch entry) draws on the same budget.
        let b = Budget::new(10, Duration::from_secs(60), None);
        let b2 = b.clone();
        std::thread::spawn(move || within(&b2, || charge(8).unwrap())).join().unwrap();
        assert!(within(&b, || charge(3)).is_err());
    }

    #[test]
    fn deadline_and_client_stop_the_work() {
        let b = Budget::new(u64::MAX, Duration::from_millis(0), None);
        std::thread::sleep(Duration::from_millis(2));
        assert_eq!(b.charge(1), Err(Spent::Deadline { ms: 0 }));
        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let b = Budget::new(u64::MAX, Duration::from_secs(60), Some(flag.clone()));
        for _ in 0..10_000 {
            b.charge(1).unwrap();
        }
        flag.0.store(true, Ordering::Relaxed);
        let stopped_after = (0..CHECK_EVERY + 1).position(|_| b.charge(1).is_err());
        assert!(stopped_after.is_some_and(|n| n <= CHECK_EVERY as usize), "noticed within {CHECK_EVERY} rows: {stopped_after:?}");
        assert_eq!(b.check(), Err(Spent::ClientGone));
    }
}
