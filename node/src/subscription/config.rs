//! `[subscriptions]`: whether the server activates and serves R4 Subscriptions, and the bounds
//! of delivery (docs/api.md, "Subscriptions"). Off by default: a node that has not been told to
//! makes no outbound calls.

use serde::{Deserialize, Serialize};

/// `[subscriptions]` of the node configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SubscriptionsConfig {
    /// Activate Subscriptions and deliver their notifications (rest-hook from the leader,
    /// websocket from the node a client is connected to). Off: Subscription resources are
    /// stored like any other and stay `requested`; the CapabilityStatement lists no channel.
    pub enabled: bool,
    /// Most active Subscriptions in the cluster (all tenants); one more is set to `error`.
    pub max_active: usize,
    /// Timeout of one rest-hook request (connect, send, answer).
    pub delivery_timeout_ms: u64,
    /// Failed attempts at one notification before the Subscription is set to `error`.
    pub max_retries: u32,
    /// Longest pause between two attempts (the pause doubles from 100 ms up to it).
    pub max_backoff_ms: u64,
    /// rest-hook requests in flight at once, over every Subscription.
    pub max_in_flight: usize,
    /// Notifications one Subscription may have waiting; the history reader passes it by until
    /// it has room (it catches up from its own position, so nothing is dropped).
    pub max_queue: usize,
    /// rest-hook endpoints may be on loopback, private, link-local or unique-local addresses.
    /// Off by default: anyone allowed to write a Subscription could otherwise make the server
    /// call services inside the network (SSRF). Turn it on for an integration engine on the
    /// internal network, and restrict who may write Subscription (docs/security.md).
    pub allow_private_endpoints: bool,
    /// Open websocket connections per node.
    pub max_websockets: usize,
    /// Subscriptions one websocket connection may bind.
    pub max_bindings_per_socket: usize,
}

impl Default for SubscriptionsConfig {
    fn default() -> Self {
        SubscriptionsConfig {
            enabled: false,
            max_active: 1000,
            delivery_timeout_ms: 5_000,
            max_retries: 5,
            max_backoff_ms: 30_000,
            max_in_flight: 32,
            max_queue: 1000,
            allow_private_endpoints: false,
            max_websockets: 256,
            max_bindings_per_socket: 16,
        }
    }
}

impl SubscriptionsConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_active == 0 || self.max_active > 100_000 {
            return Err("subscriptions.max_active must be between 1 and 100000".into());
        }
        if self.delivery_timeout_ms == 0 || self.delivery_timeout_ms > 600_000 {
            return Err("subscriptions.delivery_timeout_ms must be between 1 and 600000".into());
        }
        if self.max_retries > 100 {
            return Err("subscriptions.max_retries must be at most 100".into());
        }
        if self.max_backoff_ms < 100 || self.max_backoff_ms > 3_600_000 {
            return Err("subscriptions.max_backoff_ms must be between 100 and 3600000".into());
        }
        if self.max_in_flight == 0 || self.max_in_flight > 10_000 || self.max_queue == 0 || self.max_queue > 1_000_000 {
            return Err("subscriptions.max_in_flight (1..=10000) and max_queue (1..=1000000) must be positive".into());
        }
        if self.max_websockets > 100_000 || self.max_bindings_per_socket == 0 || self.max_bindings_per_socket > 1000 {
            return Err("subscriptions.max_websockets must be at most 100000 and max_bindings_per_socket between 1 and 1000".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bounds_are_checked() {
        let mut c = SubscriptionsConfig::default();
        assert!(!c.enabled && !c.allow_private_endpoints, "off and no private endpoints unless configured");
        c.validate().unwrap();
        c.max_active = 0;
        assert!(c.validate().is_err());
        c = SubscriptionsConfig { max_backoff_ms: 10, ..SubscriptionsConfig::default() };
        assert!(c.validate().is_err());
        c = SubscriptionsConfig { max_bindings_per_socket: 0, ..SubscriptionsConfig::default() };
        assert!(c.validate().is_err());
    }
}
