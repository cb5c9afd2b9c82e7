//! A2A 1.0: Reflex as an agent other agents find and use, and the agents Reflex finds and
//! delegates to.
//!
//! Contract: [`server`] serves Reflex's card ([`card`]) and the JSON-RPC binding over
//! Remediations ([`task`]: a task is a Remediation, its state the phase), every call made as
//! the caller; [`investigate`] is the read-only `diagnose` skill. Built on the A2A project's
//! own Rust SDK (a2a-lf, a2a-server-lf, a2a-client-lf).

pub mod card;
pub mod investigate;
pub mod server;
pub mod task;
