//! CI for proposals: the patch-safety check, a server-side dry-run, and optionally a test
//! Job or a GitOps pull request.
//!
//! Contract: [`Test`] is the controller's seam. It never changes the target; its result
//! names the digest of the proposal it tested, so a later edit invalidates it.

use crate::api::remediation::CiResult;
use crate::controller::stages::{StageFuture, StageInput};

/// Tests a proposal.
pub trait Test: Send + Sync {
    /// Tests the proposal recorded in `input.remediation`'s status.
    fn test(&self, input: StageInput) -> StageFuture<CiResult>;
}
pub mod dryrun;
