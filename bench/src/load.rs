//! The load engine: closed loop (`clients` tasks, each sending its next request when the last one
//! answered) or open loop (requests scheduled at a fixed rate; latency counts from the scheduled
//! time, so a slow server cannot hide its queueing: no coordinated omission). Latencies go into HDR
//! histograms (µs, 3 significant digits); requests during the warm-up are sent but not recorded.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;

/// How long and how hard to run one scenario.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub clients: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Stop after this many recorded requests (whichever comes first with `duration`).
    pub max_requests: Option<u64>,
    /// Open loop: requests per second. `None` = closed loop.
    pub rate: Option<f64>,
    /// Sample this process's resident memory while running.
    pub server_pid: Option<u32>,
}

/// What one run measured.
#[derive(Debug)]
pub struct Measured {
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub hist: Histogram<u64>,
    pub first_error: Option<String>,
    pub rss_max_kb: Option<u64>,
}

fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Resident set size of a process in KiB, from /proc.
pub fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

struct Shared {
    recorded: AtomicU64,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

/// Runs `step(client, iteration)` under `spec`.
pub async fn run<F, Fut>(spec: &RunSpec, step: F) -> Measured
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let step = Arc::new(step);
    let shared = Arc::new(Shared { recorded: AtomicU64::new(0), errors: AtomicU64::new(0), first_error: std::sync::Mutex::new(None) });
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let deadline = measure_from + spec.duration;
    let max = spec.max_requests.unwrap_or(u64::MAX);
    let sampler = spec.server_pid.map(|pid| {
        tokio::spawn(async move {
            let mut peak = 0;
            while Instant::now() < deadline {
                peak = peak.max(rss_kb(pid).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            peak
        })
    });
    let done = move |shared: &Shared| Instant::now() >= deadline || shared.recorded.load(Ordering::Relaxed) >= max;
    let record = move |shared: &Shared, hist: &mut Histogram<u64>, began: Instant, result: Result<(), String>| {
        if began < measure_from {
            return;
        }
        match result {
            Ok(()) => {
                let us = began.elapsed().as_micros().clamp(1, 60_000_000) as u64;
                hist.saturating_record(us);
                shared.recorded.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                shared.first_error.lock().expect("lock").get_or_insert(e);
            }
        }
    };
    let mut hist = new_hist();
    match spec.rate {
        None => {
            let tasks: Vec<_> = (0..spec.clients.max(1))
                .map(|c| {
                    let (step, shared) = (step.clone(), shared.clone());
                    tokio::spawn(async move {
                        let mut h = new_hist();
                        let mut i = 0u64;
                        while !done(&shared) {
                            let began = Instant::now();
                            let result = step(c, i).await;
                            record(&shared, &mut h, began, result);
                            i += 1;
                        }
                        h
                    })
                })
                .collect();
            for t in tasks {
                if let Ok(h) = t.await {
                    hist.add(h).expect("same bounds");
                }
            }
        }
        Some(rate) => {
            let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
            let in_flight = Arc::new(Semaphore::new(4096));
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Histogram<u64>>();
            let mut i = 0u64;
            let mut next = Instant::now();
            while !done(&shared) {
                tokio::time::sleep_until(next.into()).await;
                let scheduled = next;
                next += interval;
                let permit = in_flight.clone().acquire_owned().await.expect("semaphore open");
                let (step, shared, tx) = (step.clone(), shared.clone(), tx.clone());
                let client = (i as usize) % spec.clients.max(1);
                tokio::spawn(async move {
                    let mut h = new_hist();
                    let result = step(client, i).await;
                    record(&shared, &mut h, scheduled, result);
                    let _ = tx.send(h);
                    drop(permit);
                });
                i += 1;
            }
            drop(tx);
            while let Some(h) = rx.recv().await {
                hist.add(h).expect("same bounds");
            }
        }
    }
    let elapsed = Instant::now().saturating_duration_since(measure_from);
    let rss_max_kb = match sampler {
        Some(s) => s.await.ok(),
        None => None,
    };
    let first_error = shared.first_error.lock().expect("lock").take();
    Measured {
        ok: shared.recorded.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        elapsed,
        hist,
        first_error,
        rss_max_kb,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn closed_loop_counts_and_skips_warmup() {
        let spec = RunSpec { clients: 3, duration: Duration::from_millis(300), warmup: Duration::from_millis(100), max_requests: Some(50), rate: None, server_pid: None };
        let m = run(&spec, |_, i| async move {
            tokio::time::sleep(Duration::from_millis(2)).await;
            if i == 7 { Err("boom".to_string()) } else { Ok(()) }
        })
        .await;
        assert!(m.ok >= 50 && m.ok < 60, "{}", m.ok);
        assert_eq!(m.hist.len(), m.ok);
        assert!(m.hist.value_at_quantile(0.5) >= 2000);
    }

    #[tokio::test]
    async fn open_loop_keeps_the_rate() {
        let spec = RunSpec { clients: 2, duration: Duration::from_millis(500), warmup: Duration::ZERO, max_requests: None, rate: Some(200.0), server_pid: None };
        let m = run(&spec, |_, _| async { Ok(()) }).await;
        assert!((80..=120).contains(&m.ok), "{}", m.ok);
        assert!(rss_kb(std::process::id()).unwrap() > 0);
    }
}
