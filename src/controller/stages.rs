//! The registry of stages the controller drives: whichever implementations of the ports
//! this operator was assembled with (`operator::stages` builds the standard set). The
//! machine stalls with a condition naming any stage that is missing.
//!
//! Contract: [`Stages::start`] starts the effect a decision names and never writes status;
//! the reconciler records what it returns.

use std::sync::Arc;

use super::machine::StageSet;
use crate::api::ErrorCategory;
use crate::api::remediation::Step;
use crate::patch::TestedPatch;
use crate::ports::{
    Deploy, Diagnose, Gate, Propose, Rollback, StageError, StageFuture, StageInput, StageOutput, Test, Verify,
};

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
    /// Which steps can run.
    pub fn available(&self) -> StageSet {
        let mut set = StageSet::NONE;
        for (present, steps) in [
            (self.diagnose.is_some(), &[Step::Diagnose][..]),
            (self.propose.is_some(), &[Step::Propose]),
            (self.test.is_some(), &[Step::Test]),
            (self.gate.is_some(), &[Step::Gate]),
            (self.deploy.is_some(), &[Step::Snapshot, Step::Deploy, Step::Rollout]),
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
            Step::Rollout => wrap(self.deploy.as_ref()?.rollout(input), StageOutput::Rollout),
            Step::Verify => wrap(self.verify.as_ref()?.verify(input), StageOutput::Verification),
            Step::Rollback => wrap(self.rollback.as_ref()?.rollback(input), StageOutput::Rollback),
        })
    }
}
