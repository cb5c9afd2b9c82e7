//! Verification: sample the policy's PromQL expression and judge whether the fix holds
//! for its window, within its timeout.
//!
//! Contract: implements the port `Verify` ([`sampler::Sampler`]). Each call takes one sample
//! and returns the verification so far (samples, verdict, when the next sample is due).
//! Read-only. [`judge`] is the pure verdict; the numbers come from a `crate::metrics` source.

pub mod derive;
pub mod guard;
pub mod judge;
pub mod sampler;
