//! The second half of a Raft turn ([`Node::on_ready`]): send the Ready's messages, install a
//! snapshot, apply committed entries (writes, membership changes) to the state machine and answer
//! their proposers, persist entries and hard state with one fsync, advance; then compact the log
//! and publish `/_cluster/status`.

use super::*;

impl Node {
    pub(super) fn on_ready(&mut self) -> Result<(), ConsensusError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        self.send_messages(ready.take_messages());
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot().clone())?;
        }
        for rs in ready.take_read_states() {
            let req = rs.request_ctx.as_slice().try_into().map(u64::from_be_bytes).unwrap_or_default();
            if let Some(r) = self.reads.get_mut(&req) {
                r.index = Some(rs.index);
            }
        }
        self.apply(ready.take_committed_entries())?;
        let mut persisted = false;
        if !ready.entries().is_empty() {
            self.raw.store().append(ready.entries())?;
            persisted = true;
        }
        if let Some(hs) = ready.hs() {
            // Term and vote must be durable before any message that depends on them; a commit
            // index alone need not be (it is recomputed, and start-up raises it to the applied
            // index), so a commit-only change rides on the next fsync.
            let before = self.raw.store().hard_state()?;
            if before.term != hs.term || before.vote != hs.vote {
                persisted = true;
            }
            self.raw.store().set_hard_state(hs)?;
        }
        if persisted {
            // One fsync for every write in this Ready (and every entry applied so far).
            let applied = self.sm.applied_index();
            let fsync = std::time::Instant::now();
            self.db.flush()?;
            self.metrics.fsync_seconds.observe(fsync.elapsed().as_secs_f64());
            self.durable_applied = applied;
        }
        self.send_messages(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.store().set_commit(commit)?;
        }
        self.send_messages(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        self.maybe_compact()?;
        Ok(())
    }

    /// Replaces the state machine by a snapshot from the leader (one batch), then the log.
    pub(super) fn install_snapshot(&mut self, snap: Snapshot) -> Result<(), ConsensusError> {
        let meta = snap.get_metadata();
        tracing::info!(index = meta.index, bytes = snap.data.len(), "installing a snapshot");
        // State first and durable, then the log: a crash in between leaves the state machine
        // ahead of the log, which start-up repairs.
        let id = crate::store::snapshot::parse_descriptor(&snap.data)
            .ok_or_else(|| ConsensusError::Storage("snapshot data is not a Kiln stream descriptor".into()))?;
        self.sm.restore(&self.staging, id).map_err(storage_failure)?;
        self.db.flush()?;
        self.raw.store().reset_to(meta.index, meta.term, Some(meta.get_conf_state()))?;
        self.db.flush()?;
        self.durable_applied = self.sm.applied_index();
        self.snapshot_index = meta.index;
        self.metrics.snapshot_installs.inc();
        // Proposals whose entries the snapshot may cover cannot learn their outcome: those with a
        // known index at or below it, and every forward not yet acknowledged.
        let mut covered: Vec<u64> = self.by_index.range(..=meta.index).map(|(_, r)| *r).collect();
        covered.extend(self.waiters.iter().filter(|(_, w)| matches!(w.stage, Stage::Forwarded { .. })).map(|(k, _)| *k));
        self.by_index.retain(|i, _| *i > meta.index);
        for req in covered {
            if let Some(w) = self.waiters.remove(&req) {
                let _ = w.reply.send(Err(ConsensusError::OutcomeUnknown));
            }
        }
        self.refresh_peers();
        Ok(())
    }

    pub(super) fn apply(&mut self, entries: Vec<Entry>) -> Result<(), ConsensusError> {
        if entries.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let batch = entries.len();
        let debug = tracing::enabled!(tracing::Level::DEBUG);
        let mut replies = Vec::new();
        for entry in entries {
            let mine = parse_context(&entry.context).filter(|(origin, _)| *origin == self.me).map(|(_, req)| req);
            let result = match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {
                    self.sm.apply_empty(entry.index, entry.term).map_err(storage_failure)?;
                    Vec::new()
                }
                EntryType::EntryNormal => {
                    self.bytes_since_compact += entry.data.len() as u64;
                    self.sm.apply(entry.index, entry.term, &entry.data).map_err(storage_failure)?
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_conf_change(&entry)?;
                    Vec::new()
                }
            };
            if let Some((req, w)) = mine.and_then(|req| self.waiters.remove(&req).map(|w| (req, w))) {
                if let Stage::Proposed { index } = w.stage {
                    self.forget_index(index, req);
                }
                if debug {
                    let commit = self.raw.raft.raft_log.committed;
                    w.span.in_scope(|| tracing::debug!(index = entry.index, term = entry.term, commit, "applied"));
                }
                replies.push((w.reply, Ok(result)));
            }
        }
        self.metrics.apply_seconds.observe(started.elapsed().as_secs_f64());
        self.metrics.apply_batch_entries.observe(batch as f64);
        self.metrics.applied_entries.inc_by(batch as u64);
        // The status shows a write as applied before its proposer hears back.
        self.publish_status();
        // Forwards accepted in term T have entries of term T, and every entry of term T that will
        // ever commit precedes the entries of later terms: once an entry of a later term is
        // applied, an unmatched forward of T was never appended, or was overwritten.
        let applied_term = self.sm.applied_term();
        let lost: Vec<u64> = if applied_term > self.checked_term {
            self.checked_term = applied_term;
            self.waiters
                .iter()
                .filter(|(_, w)| matches!(w.stage, Stage::Forwarded { term, .. } if term < applied_term))
                .map(|(k, _)| *k)
                .collect()
        } else {
            Vec::new()
        };
        for req in lost {
            if let Some(w) = self.waiters.remove(&req) {
                replies.push((w.reply, Err(ConsensusError::Dropped)));
            }
        }
        // Proposals whose index was applied with another entry were lost in a leadership change.
        let applied = self.sm.applied_index();
        let stale: Vec<(u64, u64)> = self.by_index.range(..=applied).map(|(i, r)| (*i, *r)).collect();
        for (index, req) in stale {
            self.by_index.remove(&index);
            if let Some(w) = self.waiters.remove(&req) {
                replies.push((w.reply, Err(ConsensusError::Dropped)));
            }
        }
        for (reply, result) in replies {
            let _ = reply.send(result);
        }
        Ok(())
    }

    pub(super) fn apply_conf_change(&mut self, entry: &Entry) -> Result<(), ConsensusError> {
        let decode_err = |e: protobuf::ProtobufError| ConsensusError::Raft(e.to_string());
        let cc = if entry.get_entry_type() == EntryType::EntryConfChange {
            raft_proto::ConfChangeI::into_v2(ConfChange::parse_from_bytes(&entry.data).map_err(decode_err)?)
        } else {
            ConfChangeV2::parse_from_bytes(&entry.data).map_err(decode_err)?
        };
        let (cs, peer) = match self.raw.apply_conf_change(&cc) {
            // Added members bring their addresses in the change's context.
            Ok(cs) => (
                cs,
                cc.changes.first().map(|c| match c.get_change_type() {
                    ConfChangeType::RemoveNode => (c.node_id, None),
                    _ => (c.node_id, (!cc.context.is_empty()).then(|| cc.context.to_vec())),
                }),
            ),
            Err(e) => {
                // An invalid change is ignored identically on every node.
                tracing::warn!(index = entry.index, "membership change refused: {e}");
                (self.raw.store().conf_state()?, None)
            }
        };
        let cs_bytes = cs.write_to_bytes().map_err(|e| ConsensusError::Raft(e.to_string()))?;
        self.sm.apply_conf(entry.index, entry.term, &cs_bytes, peer).map_err(storage_failure)?;
        self.raw.store().set_conf_state(&cs)?;
        self.refresh_peers();
        Ok(())
    }

    /// Gives the transport the addresses of members added at run time.
    pub(super) fn refresh_peers(&mut self) {
        let Some(t) = &self.transport else { return };
        match self.sm.peers() {
            Ok(peers) => {
                for (_, json) in peers {
                    match serde_json::from_slice::<PeerConfig>(&json) {
                        Ok(p) => t.set_peer(p),
                        Err(e) => tracing::warn!("stored peer address unreadable: {e}"),
                    }
                }
            }
            Err(e) => tracing::warn!("cannot read stored peers: {e}"),
        }
    }

    /// Compacts the log to `log_keep_entries` behind the applied index once it holds twice that,
    /// or to a short tail ([`MIN_KEPT_ENTRIES`]) once the entries applied since the last compaction
    /// exceed `log_max_bytes` (large bundles would otherwise keep gigabytes of log).
    pub(super) fn maybe_compact(&mut self) -> Result<(), ConsensusError> {
        // Only entries whose application is on disk: after a crash the state machine resumes
        // from its last flushed applied index and must find every later entry in the log.
        let applied = self.durable_applied;
        let first = self.raw.store().first_index()?;
        let keep = if applied > first + 2 * self.keep_entries {
            self.keep_entries
        } else if self.bytes_since_compact > self.max_log_bytes {
            self.keep_entries.min(MIN_KEPT_ENTRIES)
        } else {
            return Ok(());
        };
        // Not past a snapshot being streamed: its follower continues from the log after it.
        let to = (applied.saturating_sub(keep)).min(self.sm.capture().index().unwrap_or(u64::MAX));
        if applied > keep && to >= first {
            self.raw.store().compact(to)?;
            self.bytes_since_compact = 0;
        }
        Ok(())
    }

    pub(super) fn publish_status(&self) {
        let r = &self.raw.raft;
        let conf = r.prs().conf();
        let learners: Vec<u64> = {
            let mut l: Vec<u64> = conf.learners().iter().copied().collect();
            l.sort_unstable();
            l
        };
        let voters: Vec<u64> = conf.voters().ids().iter().collect();
        let last = self.raw.store().last_index().unwrap_or_default();
        let leader = r.state == StateRole::Leader;
        let addresses: HashMap<u64, PeerConfig> =
            self.transport.as_ref().map(|t| t.peers().into_iter().map(|p| (p.id, p)).collect()).unwrap_or_default();
        let mut peers: Vec<PeerStatus> = voters
            .iter()
            .chain(learners.iter())
            .filter(|id| **id != self.me)
            .map(|id| {
                let matched = if leader { r.prs().get(*id).map(|p| p.matched) } else { None };
                let addr = addresses.get(id);
                PeerStatus {
                    id: *id,
                    address: addr.map(|a| a.raft_addr.clone()).unwrap_or_default(),
                    http_url: addr.map(|a| a.http_url.clone()).unwrap_or_default(),
                    admin_url: addr.map(|a| a.admin_url.clone()).unwrap_or_default(),
                    role: if learners.contains(id) { "learner" } else { "voter" },
                    match_index: matched,
                    lag: matched.map(|m| last.saturating_sub(m)),
                }
            })
            .collect();
        peers.sort_by_key(|p| p.id);
        let mut s = self.status.write();
        s.role = match r.state {
            StateRole::Leader => "leader",
            _ if learners.contains(&self.me) => "learner",
            StateRole::Follower => "follower",
            StateRole::Candidate | StateRole::PreCandidate => "candidate",
        };
        s.term = r.term;
        s.leader_id = r.leader_id;
        s.commit_index = r.raft_log.committed;
        s.applied_index = self.sm.applied_index();
        s.first_index = self.raw.store().first_index().unwrap_or_default();
        s.last_index = last;
        s.voters = voters;
        s.learners = learners;
        s.peers = peers;
    }
}
