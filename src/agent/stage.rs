//! The agent stage: per policy, the deterministic playbook, the LLM agent, or the agent
//! with the playbook as its fallback (`agent.mode`).
//!
//! Contract: [`AgentStage`] is the controller's Diagnose and Propose. In `playbook` mode it
//! is the playbook executor. In `llm` and `llm-then-playbook` modes, Propose connects the
//! agent's MCP clients (Reflex's own tools over loopback, and the policy's external servers,
//! schema-pinned), reads the target, runs [`super::llm_agent::run`] within the policy's
//! budgets and cancellation, and returns a proposal marked as the LLM's with model, tokens
//! and cost, and a bounded summary of the run in its rationale. When the agent does not
//! propose: `llm` mode fails the step — escalated or refused → NeedsHuman, budget →
//! BudgetExhausted, an unreachable model → Transient; `llm-then-playbook` runs the playbook
//! instead (unless the agent run was cancelled). The API key is read from the Secret the
//! policy names, in the Remediation's namespace, for each agent run. When the policy's
//! playbook delegates parameters (`delegate: true`), the playbook executor reads first and
//! the model chooses only those values (`propose_parameters`); the playbook renders the
//! patch, refusing a value outside its bounds, and the safety check judges it as any other.
//! A policy's `delegate.diagnose` / `delegate.propose` hands that step to an agent discovered
//! over A2A ([`crate::a2a::delegate`]) before any of this; when the delegation fails, its
//! `fallback` runs (the playbook, or the LLM agent, with a note saying why) or the step ends
//! for a person (NeedsHuman) with the reason. A delegate's proposal is marked `Delegate` and
//! judged by the same safety check, CI and gate as any other.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use kube::api::Api;

use super::executor::PlaybookExecutor;
use super::llm::{LlmClient, LlmSettings, Price};
use super::llm_agent::{AgentRun, Brief, Budgets, Delegation, Ending, run};
use super::tools::{AgentMcpTools, Loopback};
use crate::agent::tools::AgentClientError;
use crate::api::policy::AgentMode;
use crate::api::remediation::{Diagnosis, Proposal, ProposalSource, TokenUsage};
use crate::api::{AnyJson, ErrorCategory};
use crate::cluster::{api_category, load_playbook, remediation_lookup, target_api};
use crate::patch::safety::{Rules, Target};
use crate::ports::{Diagnose, Propose, StageError, StageFuture, StageInput};

/// Longest summary of an agent run kept in status.
const MAX_SUMMARY: usize = 2000;

/// Diagnose and Propose by the policy's agent mode.
#[derive(Clone)]
pub struct AgentStage {
    pub client: kube::Client,
    pub playbook: Arc<PlaybookExecutor>,
    /// Reflex's own tools for the agent; without it the LLM modes fail with a clear error.
    pub loopback: Option<Arc<Loopback>>,
    /// Dollars per million tokens by model name (the operator's price table).
    pub prices: Arc<BTreeMap<String, Price>>,
    pub audit: Arc<dyn crate::mcp::client::Audit>,
    /// The agents discovered over A2A, for a policy that delegates a step.
    pub delegates: Option<Arc<crate::a2a::registry::Registry>>,
    /// The chained audit log: one record per LLM agent run.
    pub audit_log: Option<Arc<dyn crate::audit::Sink>>,
}

fn err(category: ErrorCategory, message: impl Into<String>) -> StageError {
    StageError::new(category, message)
}

fn mode(input: &StageInput) -> AgentMode {
    input.policy.as_ref().map_or(AgentMode::Playbook, |p| p.agent.mode)
}

/// A bounded, human-readable account of a run: turns, each tool call, tokens and cost.
pub fn summary(model: &str, r: &AgentRun) -> String {
    let tools: Vec<String> =
        r.tools.iter().map(|t| format!("{} {}ms {}", t.tool, t.duration.as_millis(), t.outcome)).collect();
    let mut s = format!(
        "LLM agent ({model}): {} turns, {} tokens, ${:.4}; tool calls: {}",
        r.iterations,
        r.usage.total(),
        r.cost_usd,
        if tools.is_empty() { "none".to_owned() } else { tools.join(", ") }
    );
    if s.len() > MAX_SUMMARY {
        let mut cut = MAX_SUMMARY - 3;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

impl AgentStage {
    async fn api_key(&self, namespace: &str, input: &StageInput) -> Result<Option<secrecy::SecretString>, StageError> {
        let Some(r) =
            input.policy.as_ref().and_then(|p| p.agent.model.as_ref()).and_then(|m| m.api_key_secret_ref.as_ref())
        else {
            return Ok(None);
        };
        let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(self.client.clone(), namespace);
        let secret = secrets
            .get(&r.name)
            .await
            .map_err(|e| err(api_category(&e), format!("the model's API key Secret {namespace}/{}: {e}", r.name)))?;
        // As for MCP credentials: only Secrets labelled for Reflex, so a policy cannot send
        // an arbitrary Secret to an endpoint of its choosing.
        let labelled = secret
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(crate::mcp::client::CREDENTIALS_LABEL))
            .is_some_and(|v| v == "true");
        if !labelled {
            return Err(err(
                ErrorCategory::InvalidSpec,
                format!(
                    "Secret {namespace}/{} is not labelled {}=true; label the Secret that holds the model's API key",
                    r.name,
                    crate::mcp::client::CREDENTIALS_LABEL
                ),
            ));
        }
        // And only to the endpoint it was made for.
        let endpoint =
            input.policy.as_ref().and_then(|p| p.agent.model.as_ref()).map(|m| m.endpoint.as_str()).unwrap_or_default();
        crate::egress::bound_to(&format!("{namespace}/{}", r.name), secret.metadata.annotations.as_ref(), endpoint)
            .map_err(|e| err(ErrorCategory::InvalidSpec, e))?;
        let value = secret.data.and_then(|d| d.get(&r.key).cloned()).ok_or_else(|| {
            err(ErrorCategory::InvalidSpec, format!("Secret {namespace}/{} has no key {:?}", r.name, r.key))
        })?;
        let key = String::from_utf8(value.0).map_err(|_| {
            err(ErrorCategory::InvalidSpec, format!("Secret {namespace}/{} key {:?} is not text", r.name, r.key))
        })?;
        Ok(Some(key.trim().to_owned().into()))
    }

    /// Run the agent; the proposal when it made one, else the error that ends the step.
    async fn agent(&self, input: &StageInput) -> Result<Proposal, StageError> {
        let rem = &input.remediation;
        let policy = input.policy.as_ref().ok_or_else(|| err(ErrorCategory::InvalidSpec, "the policy is missing"))?;
        let agent = &policy.agent;
        let model = agent.model.as_ref().ok_or_else(|| {
            err(ErrorCategory::InvalidSpec, "agent.model is required when agent.mode is llm or llm-then-playbook")
        })?;
        let loopback = self.loopback.as_ref().ok_or_else(|| {
            err(ErrorCategory::InvalidSpec, "the LLM agent needs Reflex's MCP server (this operator runs without it)")
        })?;
        let namespace = rem.metadata.namespace.clone().unwrap_or_default();
        let target = &rem.spec.target;
        let lookup = remediation_lookup(rem);
        // A playbook that delegates only its bounded parameters: the executor reads as in
        // playbook mode, and the model chooses those values.
        let mut delegated_run = None;
        let (rules, instructions) = match &policy.playbook {
            Some(name) => {
                let pb = load_playbook(&self.client, &namespace, name).await?;
                let found = (Rules::from_playbook_in(&pb, &lookup), pb.agent_instructions.clone().unwrap_or_default());
                if pb.parameters.iter().any(|p| p.delegate) {
                    // One reading of the playbook for the rules and the rendering.
                    delegated_run = Some(self.playbook.read_all_with(input, Some(pb)).await?);
                }
                found
            }
            None => (Rules::default_for(target.kind.as_str()), String::new()),
        };
        // The target as read: by the playbook's run when it did the reads.
        let current = match &delegated_run {
            Some(r) => r.scope.object.clone(),
            None => {
                let current = target_api(&self.client, rem).get(&target.name).await.map_err(|e| {
                    err(api_category(&e), format!("{} {namespace}/{}: {e}", target.kind.as_str(), target.name))
                })?;
                serde_json::to_value(current).map_err(|e| err(ErrorCategory::Transient, e.to_string()))?
            }
        };
        let reader = loopback.agent_client(&self.client, &namespace).await.map_err(|e| match e {
            AgentClientError::Reader { category, message } => err(category, message),
            AgentClientError::Connect(e) => err(ErrorCategory::Transient, format!("Reflex's MCP server: {e}")),
        })?;
        let mut clients = vec![Arc::new(reader)];
        let external = crate::mcp::client::connect_policy_servers(
            &self.client,
            &namespace,
            &agent.mcp_servers,
            self.audit.clone(),
        )
        .await
        .map_err(|e| err(ErrorCategory::InvalidSpec, e.to_string()))?;
        clients.extend(external.into_iter().map(Arc::new));
        let trace_id = rem.status.as_ref().and_then(|s| s.trace_id.clone());
        let tools = AgentMcpTools {
            clients,
            ctx: crate::mcp::client::CallContext { cancel: input.cancel.clone(), trace_id },
            scope: Some(namespace.clone()),
        };
        let price = self.prices.get(&model.model).copied();
        if agent.max_cost_usd.is_some() && price.is_none() {
            return Err(err(
                ErrorCategory::InvalidSpec,
                format!(
                    "agent.maxCostUSD is set but model {:?} has no price in the operator's price table (--llm-prices), so the cost budget could not be kept",
                    model.model
                ),
            ));
        }
        let llm = LlmClient::new(LlmSettings {
            endpoint: model.endpoint.clone(),
            model: model.model.clone(),
            api_key: self.api_key(&namespace, input).await?,
            timeout: Duration::from_secs(60),
            attempts: 3,
            price,
        })
        .map_err(|e| err(ErrorCategory::InvalidSpec, e.to_string()))?;
        let budgets = Budgets {
            max_iterations: agent.max_iterations,
            max_tokens: u64::from(agent.max_tokens),
            wall_clock: agent.timeout,
            max_cost_usd: agent.max_cost_usd.unwrap_or(f64::INFINITY),
            ..Budgets::default()
        };
        let alert = &rem.spec.alert;
        // The playbook's instructions, then the policy's; a default when neither gives any.
        let instructions: Vec<String> =
            [Some(instructions), agent.instructions.clone()].into_iter().flatten().filter(|i| !i.is_empty()).collect();
        let instructions = if instructions.is_empty() {
            "Find the cause of the alert and propose the smallest change that fixes it.".to_owned()
        } else {
            instructions.join("\n\n")
        };
        let brief = Brief {
            instructions: &instructions,
            alert: &alert.name,
            labels: &alert.labels,
            annotations: &alert.annotations,
            target: Target { kind: target.kind.as_str(), namespace: &namespace, name: &target.name },
            rules: &rules,
            delegation: delegated_run.as_ref().map(|r| Delegation {
                playbook_name: &r.playbook_name,
                playbook: &r.playbook,
                scope: &r.scope,
            }),
        };
        let r = run(&llm, &tools, &brief, &current, &budgets, &input.cancel).await;
        let summary = summary(&model.model, &r);
        if let Some(sink) = &self.audit_log {
            sink.record(
                "llm_call",
                rem.status.as_ref().and_then(|s| s.trace_id.as_deref()),
                serde_json::json!({
                    "remediation": format!("{namespace}/{}", rem.metadata.name.as_deref().unwrap_or_default()),
                    "endpoint": model.endpoint, "model": model.model, "turns": r.iterations,
                    "promptTokens": r.usage.prompt, "completionTokens": r.usage.completion,
                    "costUSD": format!("{:.6}", r.cost_usd), "summary": summary,
                }),
            );
        }
        for t in &r.tools {
            tracing::info!(tool = %t.tool, duration_ms = t.duration.as_millis() as u64, outcome = %t.outcome, "agent tool call");
        }
        match r.ending {
            Ending::Proposed(p) => {
                let rationale = format!("{} [{summary}]", p.rationale);
                Ok(Proposal {
                    patch_type: p.patch_type,
                    digest: crate::patch::digest(&p.patch),
                    patch: AnyJson(p.patch),
                    rationale: rationale.chars().take(MAX_SUMMARY * 2).collect(),
                    expected_effect: p.expected_effect,
                    produced_by: ProposalSource::Llm,
                    playbook: policy.playbook.clone(),
                    model: Some(model.model.clone()),
                    tokens: Some(TokenUsage {
                        prompt: u64::from(r.usage.prompt),
                        completion: u64::from(r.usage.completion),
                    }),
                    cost_usd: Some(format!("{:.6}", r.cost_usd)),
                })
            }
            Ending::Escalated(why) | Ending::Blocked(why) => {
                Err(err(ErrorCategory::NeedsHuman, format!("{why} ({summary})")))
            }
            Ending::Budget(why) => Err(err(ErrorCategory::BudgetExhausted, format!("{why} ({summary})"))),
            Ending::Failed(why) => Err(err(ErrorCategory::Transient, format!("{why} ({summary})"))),
            Ending::Cancelled => Err(err(ErrorCategory::Transient, "the agent run was cancelled")),
        }
    }
}

impl AgentStage {
    /// The step handed to another agent: its answer, or the error that ends the delegation.
    async fn delegated(
        &self,
        input: &StageInput,
        d: &crate::api::validate::ValidDelegation,
        step: &str,
    ) -> Result<crate::a2a::delegate::Answer, crate::a2a::delegate::DelegateError> {
        use crate::a2a::delegate::DelegateError;
        let registry = self
            .delegates
            .as_ref()
            .ok_or_else(|| DelegateError::NoAgent("this operator runs without A2A discovery".into()))?;
        let rem = &input.remediation;
        let namespace = rem.metadata.namespace.clone().unwrap_or_default();
        let alert = &rem.spec.alert;
        let request = serde_json::json!({
            "step": step,
            "namespace": namespace,
            "remediation": rem.metadata.name,
            "target": {"kind": rem.spec.target.kind, "name": rem.spec.target.name},
            "alert": {"name": alert.name, "labels": alert.labels, "annotations": alert.annotations},
            "diagnosis": rem.status.as_ref().and_then(|s| s.diagnosis.as_ref()),
        });
        let trace_id = rem.status.as_ref().and_then(|s| s.trace_id.clone());
        crate::a2a::delegate::delegate(registry, &namespace, d, request, self.audit.as_ref(), trace_id, &input.cancel)
            .await
    }

    /// The diagnosis as the LLM modes record it (the agent investigates when it proposes).
    fn llm_diagnosis(input: &StageInput) -> Diagnosis {
        let rem = &input.remediation;
        let summary = format!(
            "{} on {} {}: the LLM agent investigates with MCP tools when it proposes",
            rem.spec.alert.name,
            rem.spec.target.kind.as_str(),
            rem.spec.target.name
        );
        Diagnosis { summary, findings: vec![] }
    }
}

/// A failed delegation: the fallback's note, or the error that ends the step (escalated:
/// a person looks, told why).
fn delegation_failed(
    d: &crate::api::validate::ValidDelegation,
    e: &crate::a2a::delegate::DelegateError,
    input: &StageInput,
) -> Result<String, StageError> {
    use crate::api::policy::DelegationFallback;
    if input.cancel.is_cancelled() {
        return Err(err(ErrorCategory::Transient, e.to_string()));
    }
    tracing::warn!(skill = %d.skill, error = %e, fallback = ?d.fallback, "A2A: the delegation failed");
    // What a delegate said is bounded before it reaches status.
    let why: String = e.to_string().chars().take(MAX_SUMMARY).collect();
    match d.fallback {
        DelegationFallback::Escalate => {
            Err(err(ErrorCategory::NeedsHuman, format!("delegation of skill {:?} failed: {why}", d.skill)))
        }
        DelegationFallback::Playbook | DelegationFallback::Llm => {
            Ok(format!("(the delegation of skill {:?} failed: {why}; fell back to the {:?})", d.skill, d.fallback))
        }
    }
}

impl Diagnose for AgentStage {
    fn diagnose(&self, input: StageInput) -> StageFuture<Diagnosis> {
        let this = self.clone();
        async move {
            let delegation = input.policy.as_ref().and_then(|p| p.delegate_diagnose.clone());
            let mut note = None;
            if let Some(d) = &delegation {
                let answer = this.delegated(&input, d, "diagnose").await;
                match answer.and_then(|a| crate::a2a::delegate::diagnosis_from(&a, &d.skill)) {
                    Ok(diagnosis) => return Ok(diagnosis),
                    Err(e) => note = Some(delegation_failed(d, &e, &input)?),
                }
            }
            let fallback_to_llm =
                delegation.as_ref().is_some_and(|d| d.fallback == crate::api::policy::DelegationFallback::Llm);
            let mut diagnosis = if mode(&input) == AgentMode::Llm || fallback_to_llm {
                Self::llm_diagnosis(&input)
            } else {
                this.playbook.diagnose(input).await?
            };
            if let Some(note) = note {
                diagnosis.summary = format!("{} {note}", diagnosis.summary);
            }
            Ok(diagnosis)
        }
        .boxed()
    }
}

impl Propose for AgentStage {
    fn propose(&self, input: StageInput) -> StageFuture<Proposal> {
        let this = self.clone();
        async move {
            if let Some(d) = input.policy.as_ref().and_then(|p| p.delegate_propose.clone()) {
                let answer = this.delegated(&input, &d, "propose").await;
                let playbook = input.policy.as_ref().and_then(|p| p.playbook.clone());
                let note = match answer.and_then(|a| crate::a2a::delegate::proposal_from(&a, &d.skill, playbook)) {
                    Ok(p) => return Ok(p),
                    Err(e) => delegation_failed(&d, &e, &input)?,
                };
                let mut p = match d.fallback {
                    crate::api::policy::DelegationFallback::Llm => this.agent(&input).await?,
                    _ => this.playbook.propose(input).await?,
                };
                p.rationale = format!("{} {note}", p.rationale);
                return Ok(p);
            }
            match mode(&input) {
                AgentMode::Playbook => this.playbook.propose(input).await,
                AgentMode::Llm => this.agent(&input).await,
                AgentMode::LlmThenPlaybook => match this.agent(&input).await {
                    Ok(p) => Ok(p),
                    Err(e) if input.cancel.is_cancelled() => Err(e),
                    Err(e) => {
                        tracing::info!(error = %e, "the LLM agent did not propose; running the playbook");
                        let mut p = this.playbook.propose(input).await?;
                        let why: String = e.message.chars().take(MAX_SUMMARY).collect();
                        p.rationale = format!("{} (the LLM agent did not propose: {why})", p.rationale);
                        Ok(p)
                    }
                },
            }
        }
        .boxed()
    }
}
