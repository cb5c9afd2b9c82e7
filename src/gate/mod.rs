//! The gate: trust levels, earned trust, approvals, SubjectAccessReview and the deployer
//! identity to impersonate.
//!
//! Contract: implements the port `Gate` ([`trust::TrustGate`]). It decides; it changes
//! nothing.

pub mod trust;
