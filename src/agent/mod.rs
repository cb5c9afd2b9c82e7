//! The agent: reads production through MCP tools and produces a diagnosis and a patch
//! proposal, by a deterministic playbook or an LLM within budgets.
//!
//! Contract: [`Diagnose`] and [`Propose`] are the controller's seams. Implementations read
//! only (through MCP, as the caller's identity) and return data; they change nothing.

use crate::api::remediation::{Diagnosis, Proposal};
use crate::controller::stages::{StageFuture, StageInput};

/// Reads production and summarises what is wrong.
pub trait Diagnose: Send + Sync {
    /// Produces a diagnosis for the remediation in `input`.
    fn diagnose(&self, input: StageInput) -> StageFuture<Diagnosis>;
}

/// Produces a patch proposal from the diagnosis.
pub trait Propose: Send + Sync {
    /// Produces a proposal for the remediation in `input`.
    fn propose(&self, input: StageInput) -> StageFuture<Proposal>;
}

pub mod executor;
pub mod expr;
pub mod llm;
pub mod llm_agent;
pub mod playbook;
pub mod stage;
pub mod tools;
