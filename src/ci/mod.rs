//! CI for proposals — the test step: the patch-safety check, a server-side dry-run, and
//! optionally a test Job or a GitOps pull request.
//!
//! Contract: implements the port `Test` ([`dryrun::DryRun`]). It never changes the target;
//! its result names the digest of the proposal it tested, so a later edit invalidates it. It
//! dry-runs exactly the request deploy will send (`deploy::request`).

pub mod dryrun;
