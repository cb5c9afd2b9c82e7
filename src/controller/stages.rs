//! The seams between the controller and the loop's stages. Each stage is a small trait in
//! its own module; [`Stages`] holds whichever implementations this build has, and the
//! machine stalls with a condition naming any stage that is missing.
//!
//! Contract: a stage receives an [`EffectKey`] and must be idempotent per key — it may be
//! called again with the same key after a crash. It never writes the Remediation's status;
//! it returns its output and the controller records it.

use std::{fmt, sync::Arc};

use futures::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::machine::StageSet;
use crate::agent::{Diagnose, Propose};
use crate::api::ErrorCategory;
use crate::api::remediation::{
    CiResult, DeployRecord, Diagnosis, GateResult, Proposal, Remediation, RollbackRecord, Step, Verification,
};
use crate::api::validate::ValidPolicy;
use crate::ci::Test;
use crate::deploy::{Deploy, Rollback};
use crate::gate::Gate;
use crate::patch::TestedPatch;
use crate::verify::Verify;

/// Identifies one effect: remediation uid, step, attempt.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EffectKey {
    /// The Remediation's uid.
    pub uid: String,
    /// Which effect.
    pub step: Step,
    /// Attempt number.
    pub attempt: u32,
}

impl fmt::Display for EffectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}#{}", self.uid, self.step, self.attempt)
    }
}

/// Everything a stage gets.
#[derive(Clone)]
pub struct StageInput {
    /// The Remediation as of the decision.
    pub remediation: Arc<Remediation>,
    /// The governing policy, validated; absent only for a rollback whose policy was
    /// deleted after the change was applied.
    pub policy: Option<Arc<ValidPolicy>>,
    /// The effect's key.
    pub key: EffectKey,
    /// Cancelled when the run is cancelled, the alert resolves, or the operator stops.
    pub cancel: CancellationToken,
}

/// A stage failure, categorised so the machine can retry, fail or escalate.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{category}: {message}")]
pub struct StageError {
    /// How it failed.
    pub category: ErrorCategory,
    /// What a human should know.
    pub message: String,
}

impl StageError {
    /// Builds an error.
    pub fn new(category: ErrorCategory, message: impl Into<String>) -> Self {
        Self { category, message: message.into() }
    }
}

/// What a stage may return.
pub type StageResult<T> = Result<T, StageError>;
/// The boxed future a stage returns.
pub type StageFuture<T> = BoxFuture<'static, StageResult<T>>;

/// The output of any step, to be recorded in status.
#[derive(Clone, Debug, PartialEq)]
pub enum StageOutput {
    /// From diagnose.
    Diagnosis(Diagnosis),
    /// From propose.
    Proposal(Proposal),
    /// From test.
    Ci(CiResult),
    /// From gate.
    Gate(GateResult),
    /// From snapshot (previous values) or deploy (the same record, now applied).
    Deploy(DeployRecord),
    /// From verify (one sample and the verdict so far).
    Verification(Verification),
    /// From rollback.
    Rollback(RollbackRecord),
}

/// The stage implementations available to the controller.
#[derive(Clone, Default)]
pub struct Stages {
    /// Diagnose.
    pub diagnose: Option<Arc<dyn Diagnose>>,
    /// Propose.
    pub propose: Option<Arc<dyn Propose>>,
    /// Test.
    pub test: Option<Arc<dyn Test>>,
    /// Gate.
    pub gate: Option<Arc<dyn Gate>>,
    /// Snapshot and deploy.
    pub deploy: Option<Arc<dyn Deploy>>,
    /// Verify.
    pub verify: Option<Arc<dyn Verify>>,
    /// Rollback.
    pub rollback: Option<Arc<dyn Rollback>>,
}

impl Stages {
    /// The stages this build ships: the playbook executor (diagnose, propose), CI by
    /// server-side dry-run, the trust gate, server-side apply deploy and rollback, and the
    /// verification sampler reading `metrics`.
    pub fn standard(client: kube::Client, metrics: Arc<dyn crate::verify::metrics::MetricsSource>) -> Self {
        Self::standard_with(client, metrics, crate::agent::tools::ToolSource::Direct)
    }

    /// [`Stages::standard`], the playbook executor reading through `tools`.
    pub fn standard_with(
        client: kube::Client,
        metrics: Arc<dyn crate::verify::metrics::MetricsSource>,
        tools: crate::agent::tools::ToolSource,
    ) -> Self {
        Self::standard_priced(client, metrics, tools, std::collections::BTreeMap::new())
    }

    /// [`Stages::standard_with`], with the operator's LLM price table (dollars per million
    /// tokens by model) for the agent's cost accounting and budget.
    pub fn standard_priced(
        client: kube::Client,
        metrics: Arc<dyn crate::verify::metrics::MetricsSource>,
        tools: crate::agent::tools::ToolSource,
        prices: std::collections::BTreeMap<String, crate::agent::llm::Price>,
    ) -> Self {
        let loopback = match &tools {
            crate::agent::tools::ToolSource::Mcp(l) => Some(l.clone()),
            crate::agent::tools::ToolSource::Direct => None,
        };
        let executor =
            Arc::new(crate::agent::executor::PlaybookExecutor::new(client.clone(), metrics.clone()).with_tools(tools));
        let agent = Arc::new(crate::agent::stage::AgentStage {
            client: client.clone(),
            playbook: executor,
            loopback,
            prices: Arc::new(prices),
            audit: Arc::new(crate::mcp::client::LogAudit),
        });
        let deploy = Arc::new(crate::deploy::apply::ServerSideApply { client: client.clone() });
        Self {
            diagnose: Some(agent.clone()),
            propose: Some(agent),
            test: Some(Arc::new(crate::ci::dryrun::DryRun { client: client.clone() })),
            gate: Some(Arc::new(crate::gate::trust::TrustGate { client: client.clone() })),
            deploy: Some(deploy.clone()),
            verify: Some(Arc::new(crate::verify::sampler::Sampler { client, metrics })),
            rollback: Some(deploy),
        }
    }

    /// Which steps can run.
    pub fn available(&self) -> StageSet {
        let mut set = StageSet::NONE;
        for (present, steps) in [
            (self.diagnose.is_some(), &[Step::Diagnose][..]),
            (self.propose.is_some(), &[Step::Propose]),
            (self.test.is_some(), &[Step::Test]),
            (self.gate.is_some(), &[Step::Gate]),
            (self.deploy.is_some(), &[Step::Snapshot, Step::Deploy]),
            (self.verify.is_some(), &[Step::Verify]),
            (self.rollback.is_some(), &[Step::Rollback]),
        ] {
            if present {
                for step in steps {
                    set = set.with(*step);
                }
            }
        }
        set
    }

    /// Starts the effect for `input.key.step`; `None` when that stage is not available.
    pub fn start(&self, input: StageInput) -> Option<StageFuture<StageOutput>> {
        use futures::FutureExt;
        fn wrap<T: Send + 'static>(fut: StageFuture<T>, f: fn(T) -> StageOutput) -> StageFuture<StageOutput> {
            fut.map(move |r| r.map(f)).boxed()
        }
        Some(match input.key.step {
            Step::Diagnose => wrap(self.diagnose.as_ref()?.diagnose(input), StageOutput::Diagnosis),
            Step::Propose => wrap(self.propose.as_ref()?.propose(input), StageOutput::Proposal),
            Step::Test => wrap(self.test.as_ref()?.test(input), StageOutput::Ci),
            Step::Gate => wrap(self.gate.as_ref()?.gate(input), StageOutput::Gate),
            Step::Snapshot => wrap(self.deploy.as_ref()?.snapshot(input), StageOutput::Deploy),
            Step::Deploy => {
                let deploy = self.deploy.as_ref()?.clone();
                let status = input.remediation.status.as_ref();
                let tested = status.and_then(|s| match (&s.proposal, &s.ci) {
                    (Some(p), Some(ci)) => TestedPatch::new(p, ci),
                    _ => None,
                });
                match tested {
                    Some(patch) => wrap(deploy.apply(input, patch), StageOutput::Deploy),
                    None => futures::future::ready(Err(StageError::new(
                        ErrorCategory::InvalidSpec,
                        "no tested patch matches the proposal",
                    )))
                    .boxed(),
                }
            }
            Step::Verify => wrap(self.verify.as_ref()?.verify(input), StageOutput::Verification),
            Step::Rollback => wrap(self.rollback.as_ref()?.rollback(input), StageOutput::Rollback),
        })
    }
}
