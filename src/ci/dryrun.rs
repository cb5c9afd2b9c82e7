//! CI by server-side dry-run, which always runs first: the API server runs the patch through
//! defaulting, validation and admission without storing it.
//!
//! Contract: first the patch-safety check, against the rules of the policy's playbook (or the
//! kind's defaults) and the target as it is now — a refusal is `Failed` with every reason;
//! then the exact request deploy will send (`deploy::request::request`) goes to
//! the API server with `dryRun=All`, and the object it answers with — what it would store,
//! after its own merge, directives, server-side apply and defaulting — is judged against the
//! live one by the same check (`safety::effect`), so a difference between our emulation and
//! the server's cannot pass unjudged. Accepted and allowed → `Passed`; rejected by the API server (4xx) → `Failed` with the
//! server's own message, which fails the Remediation; unreachable → a transient stage error
//! (retried). The result carries the proposal's digest so only this exact patch can deploy,
//! and the diff between the live object and what the server would store.

use serde_json::Value;

use crate::api::ErrorCategory;
use crate::api::remediation::{CiBackend, CiResult, CiVerdict};
use crate::cluster::{api_category, as_json, revision_of, rules_for, target_api};
use crate::deploy::identity::DeployerIdentity;
use crate::patch::safety::{Proposed, Target, check, effect};
use crate::ports::{StageError, StageInput, StageResult};

/// What the dry-run found: its result, and for a patch it accepted, the live object and what
/// the API server would store (for the diff in status and the backends that follow).
pub struct DryRunOutcome {
    /// The verdict so far.
    pub result: CiResult,
    /// The live object, as JSON.
    pub live: Value,
    /// What the API server would store; present when it accepted the patch.
    pub stored: Option<Value>,
}

/// The patch-safety check, then the server-side dry-run of deploy's own request.
pub async fn dry_run(
    client: &kube::Client,
    identity: &DeployerIdentity,
    input: &StageInput,
) -> StageResult<DryRunOutcome> {
    let rem = &input.remediation;
    let proposal = rem
        .status
        .as_ref()
        .and_then(|s| s.proposal.clone())
        .ok_or_else(|| StageError::new(ErrorCategory::InvalidSpec, "there is no proposal to test"))?;
    let namespace = rem.metadata.namespace.clone().unwrap_or_default();
    let rules = rules_for(client, input).await?;
    // The patch-safety check again, here where the proposal is tested: independent of
    // whoever wrote it, and of anything that edited the status since.
    let target = &rem.spec.target;
    let live = crate::cluster::read_target(client, rem).await?;
    let current = as_json(&live)?;
    let target_revision = revision_of(&live.metadata);
    let allowed = Target { kind: target.kind.as_str(), namespace: &namespace, name: &target.name };
    let proposed = Proposed { target: allowed.clone(), patch_type: proposal.patch_type, patch: &proposal.patch.0 };
    let result = |verdict, messages| CiResult {
        proposal_digest: proposal.digest.clone(),
        backend: CiBackend::DryRun,
        verdict,
        messages,
        reference: None,
        target_revision: target_revision.clone(),
        diff: None,
        log_tail: Vec::new(),
        pull_request: None,
    };
    let refused = |result: CiResult| DryRunOutcome { result, live: current.clone(), stored: None };
    let verdict = check(&rules, &allowed, &current, &proposed);
    if !verdict.allowed() {
        return Ok(refused(result(
            CiVerdict::Failed,
            vec![format!("the patch-safety check refused the patch: {}", verdict.summary())],
        )));
    }
    // Exactly the request deploy will send, as the deployer that will send it, with dryRun=All.
    let (deployer, _) = identity.acting(client, rem, input.policy.as_deref()).await?;
    let api = target_api(&deployer, rem);
    let (params, patch) = crate::deploy::request::request(rem, &proposal, true)?;
    match api.patch(&rem.spec.target.name, &params, &patch).await {
        Ok(obj) => {
            // Judge what the API server would store, not only our emulation of its merge.
            let stored = as_json(&obj)?;
            let server = effect(&rules, target.kind.as_str(), &current, &stored);
            if !server.allowed() {
                return Ok(refused(result(
                    CiVerdict::Failed,
                    vec![format!(
                        "the patch-safety check refused what the API server would store: {}",
                        server.summary()
                    )],
                )));
            }
            let mut passed = result(
                CiVerdict::Passed,
                vec![match obj.metadata.generation {
                    Some(g) => format!("server-side dry-run accepted the patch (would be generation {g})"),
                    // Kinds without a spec (ConfigMaps) have no generation.
                    None => "server-side dry-run accepted the patch".to_owned(),
                }],
            );
            let diff = super::manifest::diff(&current, &stored);
            passed.diff = (!diff.is_empty()).then_some(diff);
            Ok(DryRunOutcome { result: passed, live: current, stored: Some(stored) })
        }
        // Not allowed to, or nothing to patch: not a verdict on the patch.
        Err(e @ kube::Error::Api(_)) if matches!(&e, kube::Error::Api(s) if matches!(s.code, 401 | 403 | 404)) => {
            Err(StageError::new(api_category(&e), format!("server-side dry-run: {e}")))
        }
        Err(kube::Error::Api(status)) if (400..500).contains(&status.code) && status.code != 429 => Ok(refused(
            result(CiVerdict::Failed, vec![format!("server-side dry-run rejected the patch: {}", status.message)]),
        )),
        Err(e) => Err(StageError::new(ErrorCategory::Transient, format!("server-side dry-run: {e}"))),
    }
}
