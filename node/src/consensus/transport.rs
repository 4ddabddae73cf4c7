//! The node-to-node transport: one persistent TCP (optionally mutual-TLS) connection per peer and
//! direction, carrying length-prefixed [`Frame`]s: raft-rs messages (protobuf), and the write
//! forwarding of followers (a follower hands its command to the leader, which answers with the log
//! index the command got). Each peer has a sender thread with a bounded queue that reconnects with
//! backoff; frames that cannot be delivered are reported back (Raft then marks the peer
//! unreachable; a forwarded write is retried). A [`FaultFilter`] can cut chosen peers off, for
//! partition tests.

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use parking_lot::{Mutex, RwLock};
use bincode::Options as _;
use serde::{Deserialize, Serialize};

use super::tls::TlsSetup;
use crate::pki::TlsError;
use super::config::{ClusterConfig, PeerConfig};

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot listen for peers on {addr}: {source}")]
    Listen { addr: String, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// What travels between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Frame {
    /// First frame of every connection: who is calling.
    Hello { from: u64 },
    /// A raft-rs `Message`, protobuf-encoded.
    Raft(Vec<u8>),
    /// A raft-rs `MsgSnapshot`, protobuf-encoded: like `Raft`, but its sender hears whether it
    /// was sent (Raft keeps the peer paused until it does).
    Snapshot(Vec<u8>),
    /// A follower's write for the leader to propose, tagged with its origin. The leader proposes it
    /// only in `term` (the follower's view), so an accepted forward's entry has exactly that term.
    Forward { origin: u64, req_id: u64, term: u64, data: Vec<u8> },
    /// The leader proposed `req_id` at `index` in `term`.
    ForwardAck { req_id: u64, index: u64, term: u64 },
    /// The receiver did not propose `req_id` (it is not the leader); the origin may retry.
    ForwardReject { req_id: u64, reason: String },
    /// The receiver refused `req_id` for good: the command failed its checks.
    ForwardInvalid { req_id: u64, reason: String },
    /// Chunk `seq` of snapshot stream `id` (store::snapshot), sent ahead of the `Snapshot` frame
    /// that names the stream; `last` (an empty chunk) ends it.
    SnapshotChunk { id: u64, seq: u64, last: bool, data: Vec<u8> },
}

/// What the transport hands to the Raft thread.
#[derive(Debug)]
pub enum Inbound {
    /// A frame from peer `from`.
    Frame { from: u64, frame: Frame },
    /// A frame could not be sent to `to`.
    Undelivered { to: u64, frame: Frame },
    /// A `Snapshot` frame was written and flushed to `to`.
    SnapshotSent { to: u64 },
}

/// Drops traffic to and from isolated peers (both directions), like a network partition.
#[derive(Default)]
pub struct FaultFilter {
    isolated: RwLock<HashSet<u64>>,
}

impl FaultFilter {
    pub fn isolate(&self, peers: impl IntoIterator<Item = u64>) {
        *self.isolated.write() = peers.into_iter().collect();
    }

    pub fn isolated(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.isolated.read().iter().copied().collect();
        v.sort_unstable();
        v
    }

    fn blocks(&self, peer: u64) -> bool {
        self.isolated.read().contains(&peer)
    }
}

type Deliver = Arc<dyn Fn(Inbound) + Send + Sync>;

/// Checks (and may rewrite) the command of a forwarded write on the connection's own thread,
/// before it reaches the Raft thread; `Err` refuses it with a reason.
pub type ForwardCheck = Arc<dyn Fn(Vec<u8>) -> Result<Vec<u8>, String> + Send + Sync>;

/// Takes an incoming snapshot chunk `(from, id, seq, last, data)` on the connection's own thread.
pub type SnapshotSink = Arc<dyn Fn(u64, u64, u64, bool, &[u8]) -> Result<(), String> + Send + Sync>;

/// What the transport does with frames on the connection's thread, off the Raft thread.
#[derive(Clone)]
pub struct Hooks {
    pub forward: ForwardCheck,
    pub snapshot: SnapshotSink,
}

const QUEUE: usize = 8192;
/// Queued frames below which [`Transport::send_paced`] adds another.
const PACED_QUEUE: usize = 4;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The running transport of one node.
pub struct Transport {
    me: u64,
    peers: RwLock<HashMap<u64, PeerConfig>>,
    senders: Mutex<HashMap<u64, Sender<Frame>>>,
    deliver: Deliver,
    hooks: Hooks,
    pub faults: Arc<FaultFilter>,
    tls: Option<Arc<TlsSetup>>,
    max_frame: usize,
    stopped: Arc<AtomicBool>,
    pub local_addr: SocketAddr,
}

impl Transport {
    /// Binds the peer listener and starts accepting. `deliver` receives every inbound frame.
    pub fn start(me: u64, cfg: &ClusterConfig, deliver: Deliver, hooks: Hooks) -> Result<Arc<Transport>, TransportError> {
        let addr = cfg.raft_listen.clone().unwrap_or_default();
        // A node restarted in the same process may find its old listener not yet closed.
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(&addr) {
                Ok(l) => break l,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 30 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(source) => return Err(TransportError::Listen { addr, source }),
            }
        };
        let local_addr = listener.local_addr().map_err(|source| TransportError::Listen { addr, source })?;
        let tls = cfg.tls.as_ref().map(TlsSetup::load).transpose()?.map(Arc::new);
        let t = Arc::new(Transport {
            me,
            peers: RwLock::new(cfg.peers.iter().map(|p| (p.id, p.clone())).collect()),
            senders: Mutex::new(HashMap::new()),
            deliver,
            hooks,
            faults: Arc::new(FaultFilter::default()),
            tls,
            max_frame: cfg.max_frame_bytes,
            stopped: Arc::new(AtomicBool::new(false)),
            local_addr,
        });
        let acceptor = t.clone();
        std::thread::Builder::new()
            .name(format!("raft-accept-{me}"))
            .spawn(move || acceptor.accept_loop(listener))
            .map_err(|source| TransportError::Listen { addr: local_addr.to_string(), source })?;
        Ok(t)
    }

    /// Adds or replaces a peer's addresses (a member added at run time).
    pub fn set_peer(&self, peer: PeerConfig) {
        let changed = self.peers.read().get(&peer.id) != Some(&peer);
        if changed {
            // A new address needs a new connection: the old sender thread ends with its channel.
            self.senders.lock().remove(&peer.id);
            self.peers.write().insert(peer.id, peer);
        }
    }

    pub fn peers(&self) -> Vec<PeerConfig> {
        let mut v: Vec<PeerConfig> = self.peers.read().values().cloned().collect();
        v.sort_by_key(|p| p.id);
        v
    }

    /// The queue of `to`'s sender thread, started on first use (`None`: unknown peer).
    fn sender_for(&self, to: u64) -> Option<Sender<Frame>> {
        let mut senders = self.senders.lock();
        if let Some(s) = senders.get(&to) {
            return Some(s.clone());
        }
        let peer = self.peers.read().get(&to).cloned()?;
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let link = Link { me: self.me, peer, deliver: self.deliver.clone(), tls: self.tls.clone(), stopped: self.stopped.clone(), faults: self.faults.clone() };
        std::thread::Builder::new().name(format!("raft-send-{}-{to}", self.me)).spawn(move || link.run(rx)).ok()?;
        senders.insert(to, tx.clone());
        Some(tx)
    }

    /// Queues a frame for `to`. Undeliverable frames come back through `deliver`.
    pub fn send(&self, to: u64, frame: Frame) {
        if to == self.me {
            return;
        }
        if self.faults.blocks(to) {
            if matches!(frame, Frame::Snapshot(_)) {
                (self.deliver)(Inbound::Undelivered { to, frame });
            }
            return;
        }
        let Some(sender) = self.sender_for(to) else {
            (self.deliver)(Inbound::Undelivered { to, frame });
            return;
        };
        match sender.try_send(frame) {
            Ok(()) => {}
            Err(TrySendError::Full(frame)) | Err(TrySendError::Disconnected(frame)) => {
                (self.deliver)(Inbound::Undelivered { to, frame });
            }
        }
    }

    /// Queues a large frame for `to` once its queue is nearly empty (at most a few large frames
    /// wait in memory), giving up after `timeout`. Returns whether it was queued.
    pub fn send_paced(&self, to: u64, frame: Frame, timeout: Duration) -> bool {
        if to == self.me || self.faults.blocks(to) {
            return false;
        }
        let Some(sender) = self.sender_for(to) else { return false };
        let deadline = std::time::Instant::now() + timeout;
        while sender.len() >= PACED_QUEUE {
            if std::time::Instant::now() > deadline || self.stopped.load(Ordering::SeqCst) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        sender.send_timeout(frame, deadline.saturating_duration_since(std::time::Instant::now())).is_ok()
    }

    /// Hands `m` to the Raft thread as if the transport had produced it.
    pub fn report(&self, m: Inbound) {
        (self.deliver)(m);
    }

    /// Stops accepting and ends every sender thread.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.senders.lock().clear();
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.local_addr, CONNECT_TIMEOUT);
    }

    fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        for conn in listener.incoming() {
            if self.stopped.load(Ordering::SeqCst) {
                break;
            }
            let Ok(stream) = conn else { continue };
            let me = self.clone();
            let _ = std::thread::Builder::new().name(format!("raft-recv-{}", self.me)).spawn(move || {
                if let Err(e) = me.serve_connection(stream) {
                    tracing::debug!("peer connection closed: {e}");
                }
            });
        }
    }

    fn serve_connection(&self, stream: TcpStream) -> std::io::Result<()> {
        tune(&stream)?;
        // A caller has 10 s to say who it is (a connection that says nothing ties up no thread
        // for long); after the Hello, a quiet peer is normal and keepalive watches the link.
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let (reader, peer_cert): (Box<dyn Read + Send>, _) = match &self.tls {
            Some(tls) => {
                let s = tls.accept(stream.try_clone()?)?;
                let cert = super::tls::peer_certificate(&s.conn);
                (Box::new(s), cert)
            }
            None => (Box::new(stream.try_clone()?), None),
        };
        // The TLS handshake clears the socket's timeout when it is done: set it again for the Hello.
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut reader = BufReader::with_capacity(256 * 1024, reader);
        let from = match read_frame(&mut reader, self.max_frame)? {
            Frame::Hello { from } => from,
            other => return Err(invalid(format!("expected Hello, got {}", other.kind()))),
        };
        if let Some(tls) = &self.tls {
            // A peer is the node its certificate names, not whatever its Hello claims.
            tls.check_node_id(peer_cert.as_ref(), from)?;
        }
        stream.set_read_timeout(None)?;
        loop {
            let frame = read_frame(&mut reader, self.max_frame)?;
            if self.stopped.load(Ordering::SeqCst) {
                return Ok(());
            }
            if self.faults.blocks(from) {
                continue;
            }
            let frame = match frame {
                Frame::SnapshotChunk { id, seq, last, data } => {
                    if let Err(e) = (self.hooks.snapshot)(from, id, seq, last, &data) {
                        tracing::warn!(peer = from, id, seq, "snapshot chunk refused: {e}");
                    }
                    continue;
                }
                // A write on behalf of another node ends the connection, whatever it carries.
                Frame::Forward { origin, .. } if origin != from => return Err(invalid(format!("node {from} forwarded a write on behalf of node {origin}"))),
                Frame::Forward { origin, req_id, term, data } => match (self.hooks.forward)(data) {
                    Ok(data) => Frame::Forward { origin, req_id, term, data },
                    Err(reason) => {
                        tracing::warn!(peer = from, req_id, "refused a forwarded write: {reason}");
                        self.send(from, Frame::ForwardInvalid { req_id, reason });
                        continue;
                    }
                },
                Frame::Hello { .. } => return Err(invalid("a second Hello on one connection".into())),
                other => other,
            };
            (self.deliver)(Inbound::Frame { from, frame });
        }
    }
}

impl Frame {
    /// The frame's kind, for messages (never its payload).
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello { .. } => "Hello",
            Frame::Raft(_) => "Raft",
            Frame::Snapshot(_) => "Snapshot",
            Frame::Forward { .. } => "Forward",
            Frame::ForwardAck { .. } => "ForwardAck",
            Frame::ForwardReject { .. } => "ForwardReject",
            Frame::ForwardInvalid { .. } => "ForwardInvalid",
            Frame::SnapshotChunk { .. } => "SnapshotChunk",
        }
    }
}

/// No Nagle delay; TCP keepalive so a vanished peer (power loss, partition) is noticed and its
/// threads end instead of blocking forever.
fn tune(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(10))
        .with_interval(Duration::from_secs(5))
        .with_retries(3);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg)
}

pub fn read_frame(r: &mut impl Read, max: usize) -> std::io::Result<Frame> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(invalid(format!("frame of {len} bytes exceeds cluster.max_frame_bytes = {max}")));
    }
    let buf = read_up_to(r, len)?;
    if buf.len() != len {
        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed inside a frame"));
    }
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(len as u64)
        .deserialize(&buf)
        .map_err(|e| invalid(format!("bad frame: {e}")))
}

/// Up to `len` bytes of `r` (fewer if it ends first). Memory follows the bytes that actually
/// arrive, not the length a peer announces.
fn read_up_to(r: &mut impl Read, len: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len.min(1 << 20));
    r.take(len as u64).read_to_end(&mut buf)?;
    Ok(buf)
}

pub(crate) fn write_frame(w: &mut impl Write, frame: &Frame) -> std::io::Result<()> {
    let body = bincode::serialize(frame).map_err(|e| invalid(e.to_string()))?;
    let len = u32::try_from(body.len()).map_err(|_| invalid("frame over 4 GiB".into()))?;
    w.write_all(&len.to_be_bytes())?;
    w.write_all(&body)
}

/// The sending side of one peer connection.
struct Link {
    me: u64,
    peer: PeerConfig,
    deliver: Deliver,
    tls: Option<Arc<TlsSetup>>,
    stopped: Arc<AtomicBool>,
    faults: Arc<FaultFilter>,
}

impl Link {
    fn connect(&self) -> std::io::Result<BufWriter<Box<dyn Write + Send>>> {
        let addr = self
            .peer
            .raft_addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| invalid(format!("{} resolves to no address", self.peer.raft_addr)))?;
        let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
        tune(&stream)?;
        stream.set_write_timeout(Some(Duration::from_secs(10)))?;
        let stream: Box<dyn Write + Send> = match &self.tls {
            Some(tls) => {
                let s = tls.connect(stream, &self.peer.raft_addr)?;
                // The node at that address must be the member we mean to reach.
                tls.check_node_id(super::tls::peer_certificate(&s.conn).as_ref(), self.peer.id)?;
                Box::new(s)
            }
            None => Box::new(stream),
        };
        let mut w = BufWriter::with_capacity(256 * 1024, stream);
        write_frame(&mut w, &Frame::Hello { from: self.me })?;
        Ok(w)
    }

    fn run(self, rx: Receiver<Frame>) {
        let mut conn: Option<BufWriter<Box<dyn Write + Send>>> = None;
        let mut backoff = Duration::from_millis(50);
        let mut retry_at = std::time::Instant::now();
        loop {
            let frame = match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(f) => f,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            if self.stopped.load(Ordering::SeqCst) {
                return;
            }
            if self.faults.blocks(self.peer.id) {
                if matches!(frame, Frame::Snapshot(_)) {
                    (self.deliver)(Inbound::Undelivered { to: self.peer.id, frame });
                }
                continue;
            }
            if conn.is_none() && std::time::Instant::now() >= retry_at {
                match self.connect() {
                    Ok(c) => {
                        conn = Some(c);
                        backoff = Duration::from_millis(50);
                    }
                    Err(e) => {
                        tracing::debug!(peer = self.peer.id, "cannot connect to {}: {e}", self.peer.raft_addr);
                        retry_at = std::time::Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            let Some(w) = conn.as_mut() else {
                (self.deliver)(Inbound::Undelivered { to: self.peer.id, frame });
                continue;
            };
            // Write everything queued, then flush once.
            let mut batch = vec![frame];
            batch.extend(rx.try_iter().take(1024));
            let mut failed = None;
            for (i, f) in batch.iter().enumerate() {
                if let Err(e) = write_frame(w, f) {
                    failed = Some((i, e));
                    break;
                }
            }
            let failed = match failed {
                None => w.flush().err().map(|e| (0, e)),
                Some(f) => Some(f),
            };
            if failed.is_none() {
                for _ in batch.iter().filter(|f| matches!(f, Frame::Snapshot(_))) {
                    (self.deliver)(Inbound::SnapshotSent { to: self.peer.id });
                }
            }
            if let Some((from, e)) = failed {
                tracing::debug!(peer = self.peer.id, "connection lost: {e}");
                conn = None;
                retry_at = std::time::Instant::now() + backoff;
                // Some of these may have reached the peer. Raft messages are safe to report (the
                // peer is marked unreachable, Raft resends); a forwarded write is NOT reported,
                // since retrying one that did arrive would apply it twice: its proposer times out.
                for f in batch.into_iter().skip(from).filter(|f| matches!(f, Frame::Raft(_) | Frame::Snapshot(_))) {
                    (self.deliver)(Inbound::Undelivered { to: self.peer.id, frame: f });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_oversize_is_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Frame::Forward { origin: 2, req_id: 9, term: 1, data: vec![1, 2, 3] }).unwrap();
        let f = read_frame(&mut buf.as_slice(), 1 << 20).unwrap();
        assert!(matches!(f, Frame::Forward { origin: 2, req_id: 9, term: 1, ref data } if data == &[1, 2, 3]));
        assert!(read_frame(&mut buf.as_slice(), 4).is_err());
    }

    fn pass() -> Hooks {
        hooks(Arc::new(Ok))
    }

    fn hooks(forward: ForwardCheck) -> Hooks {
        Hooks { forward, snapshot: Arc::new(|_, _, _, _, _| Ok(())) }
    }

    #[test]
    fn a_huge_announced_length_allocates_nothing_up_front() {
        // 1 GiB announced, 3 bytes sent: an error, without a 1 GiB buffer.
        let mut buf = (1u32 << 30).to_be_bytes().to_vec();
        buf.extend_from_slice(b"abc");
        let err = read_frame(&mut buf.as_slice(), 1 << 30).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
        let got = read_up_to(&mut &b"abc"[..], 1 << 30).unwrap();
        assert_eq!(got, b"abc");
        assert!(got.capacity() <= 1 << 20, "no buffer of the announced size: {}", got.capacity());
        // A frame whose Vec length field claims more than the frame holds is refused too.
        let mut frame = Vec::new();
        write_frame(&mut frame, &Frame::Raft(vec![1, 2, 3])).unwrap();
        let n = frame.len();
        frame[n - 11..n - 3].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(read_frame(&mut frame.as_slice(), 1 << 20).is_err());
    }

    #[test]
    fn forwarded_writes_are_checked_on_arrival() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let cfg = ClusterConfig { raft_listen: Some("127.0.0.1:0".into()), ..ClusterConfig::default() };
        let tx1 = tx.clone();
        let refuse_odd: ForwardCheck = Arc::new(|d: Vec<u8>| if d.len() % 2 == 1 { Err("odd".into()) } else { Ok(d) });
        let a = Transport::start(1, &cfg, Arc::new(move |i| { let _ = tx1.send((1, i)); }), pass()).unwrap();
        let b = Transport::start(2, &cfg, Arc::new(move |i| { let _ = tx.send((2, i)); }), hooks(refuse_odd)).unwrap();
        a.set_peer(PeerConfig { id: 2, raft_addr: b.local_addr.to_string(), http_url: String::new(), admin_url: String::new() });
        b.set_peer(PeerConfig { id: 1, raft_addr: a.local_addr.to_string(), http_url: String::new(), admin_url: String::new() });
        a.send(2, Frame::Forward { origin: 1, req_id: 1, term: 1, data: vec![1] });
        let (at, got) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(at, 1, "the sender hears that its write was refused");
        assert!(matches!(got, Inbound::Frame { from: 2, frame: Frame::ForwardInvalid { req_id: 1, .. } }));
        a.send(2, Frame::Forward { origin: 1, req_id: 2, term: 1, data: vec![1, 2] });
        let (at, got) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(at, 2);
        assert!(matches!(got, Inbound::Frame { from: 1, frame: Frame::Forward { req_id: 2, .. } }));
        a.stop();
        b.stop();
    }

    #[test]
    fn two_transports_talk_and_faults_cut_them() {
        let (tx, rx) = crossbeam_channel::unbounded();
        let cfg = |port: u16| ClusterConfig {
            raft_listen: Some(format!("127.0.0.1:{port}")),
            peers: vec![],
            ..ClusterConfig::default()
        };
        let tx1 = tx.clone();
        let a = Transport::start(1, &cfg(0), Arc::new(move |i| { let _ = tx1.send((1, i)); }), pass()).unwrap();
        let b = Transport::start(2, &cfg(0), Arc::new(move |i| { let _ = tx.send((2, i)); }), pass()).unwrap();
        a.set_peer(PeerConfig { id: 2, raft_addr: b.local_addr.to_string(), http_url: String::new(), admin_url: String::new() });
        a.send(2, Frame::ForwardAck { req_id: 1, index: 5, term: 1 });
        let (at, got) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(at, 2);
        assert!(matches!(got, Inbound::Frame { from: 1, frame: Frame::ForwardAck { index: 5, .. } }));
        // Unknown peer: reported back at once.
        a.send(7, Frame::Raft(vec![]));
        assert!(matches!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), (1, Inbound::Undelivered { to: 7, .. })));
        b.faults.isolate([1]);
        a.send(2, Frame::ForwardAck { req_id: 2, index: 6, term: 1 });
        assert!(rx.recv_timeout(Duration::from_millis(300)).is_err(), "isolated peers hear nothing");
        a.stop();
        b.stop();
    }
}
