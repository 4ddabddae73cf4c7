//! The leader's snapshot sender: one thread per transfer streams the captured state
//! (`store::snapshot::Capture`) to the peer as `SnapshotChunk` frames, paced so that only a few
//! chunks wait in memory, then sends the Raft `MsgSnapshot` that names the stream on the same
//! connection (so it arrives after its chunks). A transfer that cannot finish is reported to Raft
//! as a failed snapshot, and Raft tries again later.

use std::sync::Arc;
use std::time::Duration;

use super::transport::{Frame, Inbound, Transport};
use crate::metrics::raft::RaftMetrics;
use crate::store::snapshot::Capture;

/// How long one chunk may wait for room in the peer's queue before the transfer is abandoned.
const CHUNK_WAIT: Duration = Duration::from_secs(60);

/// Streams stream `id` of `state` to `to`, then sends `msg` (the encoded `MsgSnapshot`).
/// Each transfer counts in `kiln_raft_snapshot_sends_total{outcome}` (`sent` or `failed`).
#[allow(clippy::too_many_arguments)]
pub fn spawn(transport: Arc<Transport>, capture: Arc<Capture>, state: sled::Tree, to: u64, id: u64, msg: Vec<u8>, chunk_bytes: usize, metrics: Arc<RaftMetrics>) {
    let started = std::thread::Builder::new().name(format!("raft-snapshot-{to}")).spawn({
        let (transport, capture, metrics) = (transport.clone(), capture.clone(), metrics.clone());
        move || {
            let result = send_chunks(&transport, &capture, &state, to, id, chunk_bytes);
            capture.finish(id);
            match result {
                Ok((chunks, bytes)) => {
                    metrics.snapshot_sends.with_label_values(&["sent"]).inc();
                    tracing::info!(peer = to, stream = id, chunks, bytes, "snapshot streamed");
                    transport.send(to, Frame::Snapshot(msg));
                }
                Err(e) => {
                    metrics.snapshot_sends.with_label_values(&["failed"]).inc();
                    tracing::warn!(peer = to, stream = id, "snapshot transfer abandoned: {e}");
                    transport.report(Inbound::Undelivered { to, frame: Frame::Snapshot(msg) });
                }
            }
        }
    });
    if let Err(e) = started {
        metrics.snapshot_sends.with_label_values(&["failed"]).inc();
        tracing::warn!("cannot start a snapshot sender: {e}");
        capture.finish(id);
        transport.report(Inbound::Undelivered { to, frame: Frame::Snapshot(Vec::new()) });
    }
}

/// (chunks, bytes) sent.
fn send_chunks(t: &Transport, capture: &Capture, state: &sled::Tree, to: u64, id: u64, chunk_bytes: usize) -> Result<(u64, u64), String> {
    let (mut seq, mut bytes) = (0u64, 0u64);
    loop {
        let data = capture.next_chunk(id, state, chunk_bytes).map_err(|e| e.to_string())?;
        let last = data.is_empty();
        bytes += data.len() as u64;
        if !t.send_paced(to, Frame::SnapshotChunk { id, seq, last, data }, CHUNK_WAIT) {
            return Err(format!("chunk {seq} could not be queued for node {to}"));
        }
        seq += 1;
        if last {
            return Ok((seq, bytes));
        }
    }
}
