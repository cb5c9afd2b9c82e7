//! Alert intake: turns Alertmanager webhook deliveries into Remediations.
//!
//! Contract: the pure core here plans deliveries ([`plan`]) with the policies' matchers and
//! name templates (`api::matcher`, `api::template`). The webhook server (bearer auth, size
//! limits, dedup, backpressure) is the effectful shell; it creates or updates Remediations
//! and nothing else, and rejects a bad delivery without creating anything.

pub mod known;
pub mod payload;
pub mod plan;
pub mod queue;
pub mod resolve;
pub mod webhook;
