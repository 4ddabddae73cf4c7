//! R4 Subscriptions (`[subscriptions]`, docs/api.md "Subscriptions"): `Subscription` resources
//! whose `criteria` (a search) decide which writes are notified, over a `rest-hook` (HTTP to the
//! subscriber's endpoint) or a `websocket` (the R4 `bind` / `bound` / `ping` protocol).
//!
//! Nothing is added to the write path. Every apply batch writes history rows; they are the
//! outbox, read after the fact, off the Raft thread:
//! - [`spec`]: what a Subscription asks for, checked on the client's write (4xx) and again
//!   when the server activates it.
//! - [`criteria`]: criteria parsed as a search of this server, and the matcher that judges one
//!   version with the search implementation itself (a scratch index).
//! - `crate::machine::sub_cursor`: the replicated rest-hook delivery positions (`CommandV1::SubscriptionCursor`).
//! - [`notifier`]: the leader-only actor: activates Subscriptions (a replicated write of
//!   `status`), reads history after the positions, matches, delivers rest-hooks at least once
//!   with per-Subscription queues, retries with backoff, sets `error` after `max_retries`.
//! - [`rest_hook`]: the HTTP client (timeouts, no redirects, private addresses refused unless
//!   allowed, also after name resolution).
//! - [`websocket`]: `GET /_subscriptions/ws` and the per-node pinger of bound connections.
//!
//! One [`Subscriptions`] per node holds the rules, the websocket hub and the notifier's state.

pub mod config;
pub mod criteria;
pub mod notifier;
pub mod rest_hook;
pub mod spec;
pub mod websocket;

use std::sync::Arc;

use parking_lot::Mutex;

pub use config::SubscriptionsConfig;

use crate::consensus::ConsensusError;
use crate::fhir::{Definitions, FhirVersion};
use crate::search::params::Registry;
use crate::search::query::SearchError;
use crate::store::StoreError;

/// The websocket endpoint (also under `/tenant/{id}`), advertised in the CapabilityStatement.
pub const WS_PATH: &str = "/_subscriptions/ws";

/// Why a Subscription is refused, or a subscription operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SubscriptionError {
    #[error("invalid Subscription.criteria: {0}")]
    Criteria(String),
    #[error("invalid Subscription.criteria: {0}")]
    Search(#[from] SearchError),
    #[error("invalid Subscription: {0}")]
    Invalid(String),
    #[error("{0}")]
    ChannelNotSupported(String),
    #[error("subscriptions are not enabled on this server ([subscriptions] enabled = false)")]
    Disabled,
    #[error("this node has {max} websocket connections open, the most it takes (subscriptions.max_websockets); retry later")]
    TooManySockets { max: usize },
    #[error("subscription notifier: {0}")]
    Internal(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
}

/// What checking a Subscription needs.
pub struct Rules {
    pub cfg: SubscriptionsConfig,
    pub reg: Arc<Registry>,
    pub defs: Arc<Definitions>,
}

impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rules").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl Rules {
    pub fn new(cfg: SubscriptionsConfig, version: FhirVersion) -> Rules {
        Rules { cfg, reg: Arc::new(Registry::load(version)), defs: Arc::new(Definitions::load(version)) }
    }

    pub fn with(cfg: SubscriptionsConfig, reg: Arc<Registry>, defs: Arc<Definitions>) -> Rules {
        Rules { cfg, reg, defs }
    }
}

/// What the notifier last did on this node (shown in `/_cluster/status`).
#[derive(Debug, Default, Clone)]
pub struct NotifierState {
    pub running: bool,
    /// rest-hook Subscriptions the notifier delivers for.
    pub active_rest_hooks: usize,
    pub delivered: u64,
    pub failed_attempts: u64,
    pub last_error: Option<String>,
}

/// A node's subscription side.
pub struct Subscriptions {
    pub rules: Arc<Rules>,
    pub hub: websocket::Hub,
    pub state: Mutex<NotifierState>,
}

impl Subscriptions {
    pub fn new(rules: Arc<Rules>) -> Subscriptions {
        let hub = websocket::Hub::new(&rules.cfg);
        Subscriptions { rules, hub, state: Mutex::new(NotifierState::default()) }
    }

    pub fn enabled(&self) -> bool {
        self.rules.cfg.enabled
    }

    /// `/_cluster/status`'s `subscriptions` object.
    pub fn status_json(&self) -> serde_json::Value {
        let s = self.state.lock().clone();
        serde_json::json!({
            "enabled": self.enabled(),
            "notifier_running": s.running,
            "active_rest_hooks": s.active_rest_hooks,
            "delivered": s.delivered,
            "failed_attempts": s.failed_attempts,
            "last_error": s.last_error,
            "websockets": self.hub.open(),
        })
    }
}
