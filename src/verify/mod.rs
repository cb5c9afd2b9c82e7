//! Verification: sample the policy's PromQL expression and judge whether the fix holds
//! for its window, within its timeout.
//!
//! Contract: [`Verify`] is the controller's seam. Each call takes one sample and returns
//! the verification so far (samples, verdict, when the next sample is due). Read-only.

use crate::api::remediation::Verification;
use crate::controller::stages::{StageFuture, StageInput};

/// Takes one verification sample.
pub trait Verify: Send + Sync {
    /// Samples and judges for the remediation in `input`.
    fn verify(&self, input: StageInput) -> StageFuture<Verification>;
}

pub mod judge;
pub mod metrics;
pub mod sampler;
