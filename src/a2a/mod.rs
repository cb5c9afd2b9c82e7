//! A2A 1.0: Reflex as an agent other agents find and use, and the agents Reflex finds and
//! delegates to.
//!
//! Contract: [`server`] serves Reflex's card ([`card`]) and the JSON-RPC binding over
//! Remediations ([`task`]: a task is a Remediation, its state the phase), every call made as
//! the caller; [`investigate`] is the read-only `diagnose` skill. [`registry`] discovers
//! agents from annotated Services and keeps their cards; [`delegate`] hands a policy's step
//! to one of them, with every fault named. Built on the A2A project's own Rust SDK (a2a-lf,
//! a2a-server-lf, a2a-client-lf).

pub mod card;
pub mod delegate;
pub mod investigate;
pub mod registry;
pub mod server;
pub mod task;

/// How the operator takes part in A2A.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The URL other agents reach Reflex's JSON-RPC endpoint at (`…/a2a`), for its card.
    pub url: String,
    /// How discovered Services are reached.
    pub addressing: registry::Addressing,
    /// How often every discovered agent's card is read again.
    pub refresh: std::time::Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8080/a2a".to_owned(),
            addressing: registry::Addressing::default(),
            refresh: std::time::Duration::from_secs(30),
        }
    }
}
