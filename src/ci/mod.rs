//! CI for proposals — the test step: the patch-safety check and a server-side dry-run always,
//! then the policy's backend, if any: a test Job, or a GitOps pull request and its checks.
//!
//! Contract: implements the port `Test` ([`Ci`]). It never changes the target; its result
//! names the digest of the proposal it tested, so a later edit invalidates it. It dry-runs
//! exactly the request deploy will send (`deploy::request`); a backend runs only on a patch
//! the dry-run passed, and its result is added to the dry-run's (messages, diff) rather than
//! replacing it.

pub mod dryrun;
pub mod job;
pub mod manifest;

use std::sync::Arc;

use futures::FutureExt;

use crate::api::remediation::{CiBackend, CiResult, CiVerdict};
use crate::api::validate::ValidCi;
use crate::deploy::identity::DeployerIdentity;
use crate::gitops::flow::{Session, Settings};
use crate::gitops::short;
use crate::ports::{StageFuture, StageInput, StageResult, Test};

/// The CI stage.
#[derive(Clone)]
pub struct Ci {
    /// Reads, as the operator.
    pub client: kube::Client,
    /// The dry-run and the test Job act as the deployer that would apply the change, so the
    /// API server answers for the deployer's permissions too.
    pub identity: DeployerIdentity,
    /// How GitOps pull requests are made.
    pub gitops: Arc<Settings>,
}

impl Ci {
    /// The CI stage reading as `client` and acting as `identity`'s deployers.
    pub fn new(client: kube::Client, identity: DeployerIdentity) -> Self {
        Self { client, identity, gitops: Arc::default() }
    }

    /// With these GitOps settings.
    #[must_use]
    pub fn with_gitops(mut self, settings: Settings) -> Self {
        self.gitops = Arc::new(settings);
        self
    }
}

impl Test for Ci {
    fn test(&self, input: StageInput) -> StageFuture<CiResult> {
        let ci = self.clone();
        async move { ci.run(input).await }.boxed()
    }

    fn release(&self, input: StageInput) -> StageFuture<()> {
        let ci = self.clone();
        async move {
            let Some(ValidCi::Gitops(gitops)) = input.policy.as_deref().map(|p| &p.ci) else { return Ok(()) };
            let rem = &input.remediation;
            let namespace = rem.metadata.namespace.clone().unwrap_or_default();
            let session = Session::new(&ci.client, &namespace, gitops, &ci.gitops, input.cancel.clone()).await?;
            session.release(rem).await
        }
        .boxed()
    }
}

impl Ci {
    async fn run(&self, input: StageInput) -> StageResult<CiResult> {
        let outcome = dryrun::dry_run(&self.client, &self.identity, &input).await?;
        let mut result = outcome.result;
        let Some(stored) = outcome.stored else { return Ok(result) };
        if result.verdict != CiVerdict::Passed {
            return Ok(result);
        }
        let Some(policy) = input.policy.clone() else { return Ok(result) };
        match &policy.ci {
            ValidCi::DryRunOnly => Ok(result),
            ValidCi::Job(spec, timeout) => {
                let rem = &input.remediation;
                let (deployer, _) = self.identity.acting(&self.client, rem, Some(&policy)).await?;
                let patched = manifest::yaml(&manifest::clean(&stored));
                let live = manifest::yaml(&manifest::clean(&outcome.live));
                let digest = result.proposal_digest.clone();
                let ran = job::run(&deployer, &self.client, &input, spec, *timeout, &patched, &live, &digest).await?;
                result.backend = CiBackend::Job;
                result.reference = Some(ran.name.clone());
                result.log_tail = ran.log_tail;
                let exit = ran.exit_code.map(|c| format!(", exit code {c}")).unwrap_or_default();
                match ran.state {
                    job::JobState::Passed => result.messages.push(format!("test Job {} passed{exit}", ran.name)),
                    job::JobState::Failed(why) => {
                        result.verdict = CiVerdict::Failed;
                        result.messages.push(format!("{why}{exit} (Job {})", ran.name));
                    }
                    // `run` returns only a finished Job; anything else is no pass.
                    job::JobState::Running => {
                        result.verdict = CiVerdict::Failed;
                        result.messages.push(format!("test Job {} ended without a verdict", ran.name));
                    }
                }
                Ok(result)
            }
            ValidCi::Gitops(gitops) => {
                let rem = &input.remediation;
                let namespace = rem.metadata.namespace.clone().unwrap_or_default();
                let session =
                    Session::new(&self.client, &namespace, gitops, &self.gitops, input.cancel.clone()).await?;
                let proposal = rem.status.as_ref().and_then(|s| s.proposal.clone()).ok_or_else(|| {
                    crate::ports::StageError::new(
                        crate::api::ErrorCategory::InvalidSpec,
                        "there is no proposal to test",
                    )
                })?;
                let opened = session.propose(rem, &proposal, &outcome.live, &stored).await?;
                result.backend = CiBackend::Gitops;
                result.reference = Some(opened.record.url.clone());
                let checks: Vec<String> =
                    opened.record.checks.iter().map(|c| format!("{} {}", c.name, c.state)).collect();
                match opened.verdict {
                    Ok(()) => result.messages.push(format!(
                        "pull request {} (commit {}, {}): checks passed ({})",
                        opened.record.url,
                        short(&opened.record.commit),
                        opened.record.file,
                        checks.join(", ")
                    )),
                    Err(why) => {
                        result.verdict = CiVerdict::Failed;
                        result.messages.push(format!(
                            "pull request {}: {why}; it was closed and its branch deleted",
                            opened.record.url
                        ));
                    }
                }
                result.pull_request = Some(opened.record);
                Ok(result)
            }
        }
    }
}
