//! The heavy lane: where the costly reads of heavy requests and heavy callers run, so that they
//! take the CPU only when nobody else needs it. A request is heavy once it has read more than
//! `limits.heavy_rows` rows; its caller stays heavy for [`COOL_DOWN`] after its last heavy
//! request. Their work runs on `limits.scan_workers` threads of their own, started at a lower
//! CPU priority (`limits.heavy_nice`, a Linux per-thread nice value), so the scheduler gives the
//! HTTP workers and the ordinary pool the cores first. The threads are never raised again (an
//! unprivileged process cannot lower a nice value), which is why the lane is its own threads.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long a caller stays heavy after its last heavy request.
pub const COOL_DOWN: Duration = Duration::from_secs(10);

/// Callers known to be not too many: past this the expired entries are dropped.
const PRUNE_AT: usize = 10_000;

type Job = Box<dyn FnOnce() + Send>;

/// The lane's threads and their queue. (Jobs enter only with one of the lane's permits, so the
/// queue holds at most as many jobs as there are threads.)
pub struct HeavyLane {
    jobs: crossbeam_channel::Sender<Job>,
}

impl HeavyLane {
    /// Starts `threads` threads at nice `nice`.
    pub fn start(threads: usize, nice: i32) -> HeavyLane {
        let (jobs, rx) = crossbeam_channel::unbounded::<Job>();
        for n in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new().name(format!("kiln-heavy-{n}")).spawn(move || {
                lower_priority(nice.clamp(0, 19));
                for job in rx {
                    // A panicking job loses its own answer (its caller gets an error), not the thread.
                    if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)) {
                        let what = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned()).unwrap_or_default();
                        tracing::error!("a request's work panicked on the heavy lane: {what}");
                    }
                }
            });
            if let Err(e) = spawned {
                tracing::error!("cannot start a heavy-lane thread: {e}");
            }
        }
        HeavyLane { jobs }
    }

    /// Runs `f` on the lane; its result, or `None` if the lane has stopped.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs.send(job).ok()?;
        rx.await.ok()
    }
}

/// Lowers this thread's CPU priority (on Linux, nice values are per thread, named by the tid).
/// Elsewhere the lane runs at the process's priority.
#[cfg(target_os = "linux")]
fn lower_priority(nice: i32) {
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice) {
        tracing::warn!("heavy lane: cannot set nice {nice}: {e}");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority(_nice: i32) {}

/// Callers whose recent requests were heavy, with when the last one was.
#[derive(Default)]
pub struct HeavyCallers(Mutex<HashMap<String, Instant>>);

impl HeavyCallers {
    pub fn mark(&self, caller: &str) {
        let mut m = self.0.lock();
        if m.len() >= PRUNE_AT {
            m.retain(|_, at| at.elapsed() < COOL_DOWN);
        }
        m.insert(caller.to_string(), Instant::now());
    }

    pub fn is_heavy(&self, caller: &str) -> bool {
        let m = self.0.lock();
        m.get(caller).is_some_and(|at| at.elapsed() < COOL_DOWN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_is_heavy_until_it_cools_down() {
        let h = HeavyCallers::default();
        assert!(!h.is_heavy("a"));
        h.mark("a");
        assert!(h.is_heavy("a") && !h.is_heavy("b"));
        h.0.lock().insert("a".into(), Instant::now() - COOL_DOWN);
        assert!(!h.is_heavy("a"));
    }

    #[cfg(target_os = "linux")]
    #[actix_web::test]
    async fn lane_threads_run_jobs_at_the_lower_priority_and_survive_a_panic() {
        let lane = HeavyLane::start(1, 7);
        let nice = lane.run(|| rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap()).await;
        // 7, or the process's own nice value when the tests already run above it.
        assert!(nice.is_some_and(|n| n >= 7), "{nice:?}");
        assert_eq!(lane.run(|| -> u32 { panic!("boom") }).await, None, "the panicking job's caller gets nothing");
        assert_eq!(lane.run(|| 2 + 2).await, Some(4), "the one thread is still there");
    }
}
