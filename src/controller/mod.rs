//! The controller: drives each Remediation through the loop.
//!
//! Contract: [`machine`] decides (pure); [`plan`] turns a decision chain into the status to
//! write, the transitions to announce and the effect to start (pure); [`reconcile`] observes,
//! performs what the plan names through the stage registry ([`stages`]) and records it in
//! status; [`effects`] holds the effects in flight; [`approvals`] reports on each approval
//! whether it counts. Only the leader runs it ([`leader`]). The
//! controller knows the stages only through their ports (`crate::ports`).

pub mod approvals;
pub mod effects;
mod history;
pub mod ineffective;
pub mod leader;
pub mod limits;
pub mod machine;
pub mod metrics;
pub mod plan;
pub mod reconcile;
mod retry;
mod slots;
pub mod stages;
mod trust;
