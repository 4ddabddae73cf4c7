//! What the Raft thread does with frames from peers ([`Node::on_peer`]): raft-rs messages (only a
//! peer's own, never proposals or local types), forwarded writes (already checked on the
//! connection's thread) and their answers (only from the leader asked), snapshot messages (only
//! once their stream arrived whole), and what the transport reports back (undelivered frames,
//! sent snapshots).

use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use raft::SnapshotStatus;

use super::{context, Node, Stage};
use crate::consensus::transport::{Frame, Inbound};
use crate::consensus::ConsensusError;

impl Node {
    pub(super) fn on_peer(&mut self, m: Inbound) {
        match m {
            Inbound::Frame { frame: Frame::Raft(bytes), from } => match Message::parse_from_bytes(&bytes) {
                Ok(msg) => match peer_message_refusal(&msg, from, self.me) {
                    // A member speaks only for itself, and proposes only through Forward (checked):
                    // a MsgPropose from the wire would put unchecked commands in the log (and an
                    // empty one panics raft-rs).
                    Some(why) => tracing::warn!(peer = from, "raft message refused: {why}"),
                    None => {
                        if let Err(e) = self.raw.step(msg) {
                            tracing::debug!("raft step: {e}");
                        }
                    }
                },
                Err(e) => tracing::warn!("undecodable raft message: {e}"),
            },
            Inbound::Frame { from, frame: Frame::Forward { origin, req_id, term, data } } => {
                let answer = if term != self.raw.raft.term {
                    Frame::ForwardReject { req_id, reason: format!("forwarded in term {term}, leader is in term {}", self.raw.raft.term) }
                } else {
                    match self.propose_local(context(origin, req_id), data) {
                        Ok((index, term)) => Frame::ForwardAck { req_id, index, term },
                        Err(e) => Frame::ForwardReject { req_id, reason: e.to_string() },
                    }
                };
                if let Some(t) = &self.transport {
                    t.send(from, answer);
                }
            }
            Inbound::Frame { frame: Frame::ForwardAck { req_id, index, .. }, from } => {
                if let Some(w) = self.waiters.get_mut(&req_id) {
                    if matches!(w.stage, Stage::Forwarded { leader, .. } if leader == from) {
                        w.stage = Stage::Proposed { index };
                        w.data = None;
                        if index <= self.sm.applied_index() {
                            // Applied before the ack arrived and not recognised: replaced by
                            // another entry, or skipped over by a snapshot (outcome unknown).
                            let err = if index <= self.snapshot_index { ConsensusError::OutcomeUnknown } else { ConsensusError::Dropped };
                            if let Some(w) = self.waiters.remove(&req_id) {
                                let _ = w.reply.send(Err(err));
                            }
                        } else {
                            self.by_index.insert(index, req_id);
                        }
                    }
                }
            }
            Inbound::Frame { frame: Frame::ForwardReject { req_id, reason }, from } => {
                if self.forwarded_to(req_id) == Some(from) {
                    tracing::debug!(req_id, "forward refused: {reason}");
                    self.requeue(req_id);
                }
            }
            Inbound::Frame { frame: Frame::ForwardInvalid { req_id, reason }, from } => {
                if self.forwarded_to(req_id) == Some(from) {
                    if let Some(w) = self.waiters.remove(&req_id) {
                        let _ = w.reply.send(Err(ConsensusError::Refused(reason)));
                    }
                }
            }
            // Hello is consumed by the transport, chunks go to the staging tree on the connection's thread.
            Inbound::Frame { frame: Frame::Hello { .. } | Frame::SnapshotChunk { .. }, .. } => {}
            Inbound::Frame { frame: Frame::Snapshot(bytes), from } => {
                // Step a snapshot only once its stream arrived whole (else the leader, hearing
                // nothing applied, sends another).
                let stream = Message::parse_from_bytes(&bytes).ok().map(|m| crate::store::snapshot::parse_descriptor(m.get_snapshot().get_data()));
                match stream {
                    // Claimed: no chunk can replace the stream until this turn's Ready installs it.
                    Some(Some(id)) if !self.staging.claim(id) => {
                        tracing::warn!(peer = from, stream = id, "snapshot message without its complete stream: ignored");
                    }
                    Some(Some(_)) => self.on_peer(Inbound::Frame { from, frame: Frame::Raft(bytes) }),
                    _ => tracing::warn!(peer = from, "a snapshot frame that is not a Kiln snapshot: ignored"),
                }
            }
            Inbound::Undelivered { to, frame: Frame::Raft(_) } => self.raw.report_unreachable(to),
            Inbound::Undelivered { to, frame: Frame::Snapshot(_) } => {
                self.raw.report_unreachable(to);
                self.raw.report_snapshot(to, SnapshotStatus::Failure);
            }
            Inbound::SnapshotSent { to } => self.raw.report_snapshot(to, SnapshotStatus::Finish),
            Inbound::Undelivered { frame: Frame::Forward { req_id, .. }, .. } => self.requeue(req_id),
            Inbound::Undelivered { .. } => {}
        }
    }

    /// The leader a pending forward was sent to.
    fn forwarded_to(&self, req: u64) -> Option<u64> {
        match self.waiters.get(&req)?.stage {
            Stage::Forwarded { leader, .. } => Some(leader),
            _ => None,
        }
    }
}

/// Why a Raft message from peer `from` must not be stepped (`None`: step it).
fn peer_message_refusal(msg: &Message, from: u64, me: u64) -> Option<String> {
    if msg.from != from {
        return Some(format!("it claims to come from node {} on node {from}'s connection", msg.from));
    }
    if msg.to != me {
        return Some(format!("it is addressed to node {}", msg.to));
    }
    match msg.get_msg_type() {
        MessageType::MsgPropose => Some("proposals travel as checked forwards, never as raft messages".into()),
        MessageType::MsgHup | MessageType::MsgBeat | MessageType::MsgUnreachable | MessageType::MsgSnapStatus | MessageType::MsgCheckQuorum => {
            Some(format!("{:?} is a local message", msg.get_msg_type()))
        }
        _ => None,
    }
}
