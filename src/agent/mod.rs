//! The agent: reads production through MCP tools and produces a diagnosis and a patch
//! proposal, by a deterministic playbook or an LLM within budgets.
//!
//! Contract: implements the ports `Diagnose` and `Propose` ([`stage::AgentStage`], with the
//! playbook executor inside it). Implementations read only (through MCP, as the caller's
//! identity) and return data; they change nothing.

pub mod executor;
pub mod expr;
pub mod llm;
pub mod llm_agent;
pub mod playbook;
pub mod stage;
pub mod tools;
