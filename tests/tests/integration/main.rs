//! One integration-test binary (fast linking): HTTP conformance, official examples, crash safety, 3-node clusters.

mod abuse;
mod api_tls;
mod auth;
mod binary;
mod bench_smoke;
mod bundles;
mod cluster;
mod conditional;
mod crash;
mod crud;
mod dataio;
mod examples;
mod export;
mod history;
mod hostile;
mod k8s;
mod meili;
mod metrics;
mod negotiation;
mod operations;
mod search;
mod search_examples;
mod search_property;
mod subscriptions;
mod tenancy;
mod terminology;
