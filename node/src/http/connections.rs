//! How many connections the FHIR listener keeps open and how long a new one may take to send
//! its request head: the bounds that keep file descriptors for the node's own use.
//!
//! Every connection is a file descriptor. Without a bound, clients that open connections and
//! trickle header lines take all of them, and then sled, the Raft transport, export files and
//! Binary content fail with EMFILE: a stall of the whole node, not of one listener. So at start
//! the process's soft descriptor limit is raised to its hard limit ([`raise_fd_limit`]), and the
//! listener keeps at most `limits.max_connections` open (default: half the descriptors for
//! connections, two each, so a quarter of the limit; at most [`DERIVED_CEILING`]); past it new
//! connections wait in the kernel's accept queue. A new connection that has not sent its first
//! request head within `limits.header_timeout_ms` is answered 408 and closed, so slots held by
//! trickling clients come back (later heads: [`super::idle`]). (A bound per client address
//! belongs in the load balancer or proxy in front: the HTTP server sees no address before it
//! has accepted the connection.)

use crate::config::Limits;

/// Descriptors one connection takes: its socket, and the duplicate that watches it for the
/// client leaving ([`super::work::on_connect`]).
pub const DESCRIPTORS_PER_CONNECTION: u64 = 2;

/// Most connections a derived `max_connections` allows, however many descriptors there are
/// (each connection may buffer a request head of up to 128 KiB meanwhile).
pub const DERIVED_CEILING: usize = 16_384;

/// Connections the operator listener keeps open (each HTTP worker of it).
pub const ADMIN_CONNECTIONS: usize = 64;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (at most 2^20); the soft limit in force
/// after.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    let (soft, hard) = (limit.current, limit.maximum);
    if let (Some(s), hard) = (soft, hard) {
        if hard.is_none_or(|h| h > s) && s < 1 << 20 {
            let target = hard.unwrap_or(u64::MAX).min(1 << 20).max(s);
            let raised = rustix::process::Rlimit { current: Some(target), maximum: hard };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => return target,
                Err(e) => tracing::warn!("cannot raise the open-file limit from {s} to {target}: {e}"),
            }
        }
        return s;
    }
    u64::MAX
}

/// Connections each of `workers` HTTP workers may keep (`max_connections` is for the node).
pub fn per_worker(limits: &Limits, workers: usize, fd_limit: u64) -> usize {
    let total = match limits.max_connections {
        0 => usize::try_from(fd_limit / 2 / DESCRIPTORS_PER_CONNECTION).unwrap_or(usize::MAX).clamp(1, DERIVED_CEILING),
        n => n,
    };
    total.div_ceil(workers.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_shared_among_workers_and_derived_from_the_descriptor_limit() {
        let mut l = Limits::default();
        assert_eq!(per_worker(&l, 2, 20_000), 2_500, "half the descriptors, two a connection");
        assert_eq!(per_worker(&l, 3, 1024), 86);
        assert!(per_worker(&l, 2, 64) >= 1);
        assert_eq!(per_worker(&l, 1, 1 << 40), DERIVED_CEILING);
        l.max_connections = 41;
        assert_eq!(per_worker(&l, 2, 20_000), 21);
        assert_eq!(per_worker(&l, 0, 20_000), 41);
    }

    #[test]
    fn the_soft_descriptor_limit_reaches_the_hard_one() {
        let after = raise_fd_limit();
        let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(now.current, Some(after).filter(|&a| a != u64::MAX));
        let want = now.maximum.unwrap_or(u64::MAX).min(1 << 20);
        assert!(now.current.unwrap_or(u64::MAX) >= want, "{now:?}");
    }
}
