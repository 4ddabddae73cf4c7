//! One integration-test binary (fast linking): HTTP conformance, official examples, crash safety.

mod bench_smoke;
mod crash;
mod crud;
mod examples;
mod history;
mod negotiation;
