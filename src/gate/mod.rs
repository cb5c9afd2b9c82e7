//! The gate: trust levels, earned trust, approvals, SubjectAccessReview and the deployer
//! identity to impersonate.
//!
//! Contract: [`Gate`] is the controller's seam. It decides; it changes nothing.

use crate::api::remediation::GateResult;
use crate::controller::stages::{StageFuture, StageInput};

/// Decides whether a tested change may deploy now, needs a human, or must not happen.
pub trait Gate: Send + Sync {
    /// Decides for the remediation in `input`.
    fn gate(&self, input: StageInput) -> StageFuture<GateResult>;
}
pub mod trust;
