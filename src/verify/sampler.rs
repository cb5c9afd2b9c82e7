//! The verify stage's shell: take one sample of the verification query and judge it.
//!
//! Contract: the rule is the policy's `verify`, else the playbook's. A query the source
//! rejects is an invalid spec (no retry); an unreachable source is transient (retried with
//! backoff); everything else is [`super::judge::judge`].

use std::sync::Arc;

use futures::FutureExt;

use super::Verify;
use super::judge::judge;
use super::metrics::{MetricsError, MetricsSource};
use crate::api::ErrorCategory;
use crate::api::remediation::Verification;
use crate::controller::stages::{StageError, StageFuture, StageInput};

#[derive(Clone)]
pub struct Sampler {
    pub client: kube::Client,
    pub metrics: Arc<dyn MetricsSource>,
}

impl Verify for Sampler {
    fn verify(&self, input: StageInput) -> StageFuture<Verification> {
        let this = self.clone();
        async move {
            let policy = input
                .policy
                .clone()
                .ok_or_else(|| StageError::new(ErrorCategory::InvalidSpec, "the policy is missing"))?;
            let rule = match &policy.verify {
                Some(v) => v.clone(),
                None => {
                    let ns = input.remediation.metadata.namespace.clone().unwrap_or_default();
                    let name = policy.playbook.clone().unwrap_or_default();
                    crate::agent::executor::load_playbook(&this.client, &ns, &name).await?.verify.ok_or_else(|| {
                        StageError::new(
                            ErrorCategory::InvalidSpec,
                            "neither the policy nor its playbook says how to verify",
                        )
                    })?
                }
            };
            let value = match this.metrics.instant(&rule.query).await {
                Ok(v) => v,
                Err(MetricsError::Rejected(m)) => return Err(StageError::new(ErrorCategory::InvalidSpec, m)),
                Err(MetricsError::Unavailable(m)) => return Err(StageError::new(ErrorCategory::Transient, m)),
            };
            let prev = input.remediation.status.as_ref().and_then(|s| s.verification.as_ref());
            Ok(judge(&rule, prev, value, jiff::Timestamp::now()))
        }
        .boxed()
    }
}
