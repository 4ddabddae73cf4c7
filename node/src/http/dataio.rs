//! `GET /_cluster/backup` (operator listener, behind its token): streams this node's state at its
//! applied index as a backup file ([`crate::dataio::format`]), after a read barrier (Raft ReadIndex), so
//! it holds every write acknowledged before the request, on a follower too.
//!
//! The capture is the one the Raft snapshots use (`store::snapshot::Capture`): started on the Raft
//! thread between two entries, so the stream is exactly the state at that index while writes go
//! on; keys written meanwhile keep their old values in the pre-image tree until the stream has
//! passed them. One capture at a time: while a backup streams, a lagging follower's snapshot
//! waits (Raft asks again), and a backup asked for during a snapshot transfer is answered 503.
//! A sender thread reads chunks of about 1 MiB into a channel of 4, so memory stays bounded
//! whatever the state's size; a client that stops reading for [`STALL`] or goes away ends the
//! capture. Response headers: `X-Kiln-Backup-Index`, `X-Kiln-Backup-Term`, `X-Kiln-Node-Id`;
//! the digests are in the stream's trailer (they are known only at its end).

use std::time::{Duration, Instant};

use actix_web::{web, HttpResponse};
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::dataio::format::{Encoder, Header};
use crate::http::error::ApiError;
use crate::http::AppState;
use crate::store::snapshot::Capture;

/// Bytes per chunk read from the state.
const CHUNK_BYTES: usize = 1024 * 1024;
/// Chunks waiting for the client at most.
const QUEUE: usize = 4;
/// How long the sender waits for a client that does not read before it gives up.
pub const STALL: Duration = Duration::from_secs(120);

/// Ends the capture whatever way the sender thread leaves.
struct Finish<'a> {
    capture: &'a Capture,
    id: u64,
}

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.capture.finish(self.id);
    }
}

pub async fn backup(st: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    // Linearizable: first apply everything the leader had committed when the request came, so a
    // backup from a follower holds every write acknowledged before it was asked for.
    st.raft.read_barrier().await?;
    let start = st.raft.begin_backup().await?;
    let capture = st.raft.capture().clone();
    let tree = st.store.tree().tree().clone();
    let header = Header {
        index: start.index,
        term: start.term,
        node_id: st.cfg.node_id,
        fhir_version: st.defs.version.as_str().to_string(),
        created: crate::dataio::now_rfc3339(),
    };
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(QUEUE);
    let spawned = std::thread::Builder::new().name("kiln-backup".into()).spawn(move || {
        let _finish = Finish { capture: &capture, id: start.id };
        let mut enc = Encoder::default();
        if !send(&tx, Ok(Bytes::from(enc.header(&header)))) {
            return;
        }
        let (started, mut bytes) = (Instant::now(), 0usize);
        loop {
            let chunk = match capture.next_chunk(start.id, &tree, CHUNK_BYTES) {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(stream = start.id, "backup stream failed: {e}");
                    send(&tx, Err(std::io::Error::other(e.to_string())));
                    return;
                }
            };
            if chunk.is_empty() {
                break;
            }
            if let Err(e) = enc.chunk(&chunk) {
                send(&tx, Err(std::io::Error::other(e.to_string())));
                return;
            }
            bytes += chunk.len();
            if !send(&tx, Ok(Bytes::from(chunk))) {
                tracing::warn!(stream = start.id, "backup abandoned: the client went away or stopped reading");
                return;
            }
        }
        if send(&tx, Ok(Bytes::from(enc.trailer()))) {
            tracing::info!(index = header.index, bytes, secs = started.elapsed().as_secs_f64(), "backup streamed");
        }
    });
    if let Err(e) = spawned {
        st.raft.capture().finish(start.id);
        return Err(crate::store::StoreError::Storage(format!("cannot start the backup sender: {e}")).into());
    }
    let body = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header(("X-Kiln-Backup-Index", start.index.to_string()))
        .insert_header(("X-Kiln-Backup-Term", start.term.to_string()))
        .insert_header(("X-Kiln-Node-Id", st.cfg.node_id.to_string()))
        .streaming(body))
}

/// Queues `item` for the client, waiting up to [`STALL`] for room; `false` when the client is
/// gone or stalled.
fn send(tx: &mpsc::Sender<Result<Bytes, std::io::Error>>, mut item: Result<Bytes, std::io::Error>) -> bool {
    let deadline = Instant::now() + STALL;
    loop {
        match tx.try_send(item) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(back)) => {
                if Instant::now() > deadline {
                    return false;
                }
                item = back;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}
