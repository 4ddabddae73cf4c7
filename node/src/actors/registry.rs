//! Starts one [`ResourceActor`] per resource type, spread over a few arbiters (threads) so that
//! validation of different types runs in parallel, and finds the actor of a type.

use std::collections::HashMap;
use std::sync::Arc;

use actix::{Actor, Addr, Arbiter};

use super::resource::{ActorSettings, ResourceActor};
use crate::consensus::RaftHandle;
use crate::fhir::Definitions;

/// The actor of every resource type.
pub struct Mailboxes {
    actors: HashMap<&'static str, Addr<ResourceActor>>,
    arbiters: Vec<Arbiter>,
}

impl Mailboxes {
    /// Must run inside an actix system. `threads` arbiters host the actors.
    pub fn start(defs: Arc<Definitions>, raft: RaftHandle, settings: ActorSettings, threads: usize) -> Mailboxes {
        let arbiters: Vec<Arbiter> = (0..threads.max(1)).map(|_| Arbiter::new()).collect();
        let mut actors = HashMap::new();
        for (i, rtype) in defs.types.iter().copied().enumerate() {
            let actor = ResourceActor::new(rtype, defs.clone(), raft.clone(), settings.clone());
            let addr = ResourceActor::start_in_arbiter(&arbiters[i % arbiters.len()].handle(), move |_| actor);
            actors.insert(rtype, addr);
        }
        Mailboxes { actors, arbiters }
    }

    pub fn get(&self, rtype: &str) -> Option<&Addr<ResourceActor>> {
        self.actors.get(rtype)
    }

    /// Stops the arbiters (and with them the actors).
    pub fn stop(&self) {
        for a in &self.arbiters {
            a.stop();
        }
    }
}
