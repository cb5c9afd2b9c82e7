//! The playbook executor: the diagnose and propose stages for policies in playbook mode.
//!
//! Contract: loads the policy's `Playbook` from the remediation's namespace, runs its read
//! steps through [`Tools`] (arguments rendered from the target and the alert's labels), and
//! renders its bounded patch ([`super::playbook::render`]). Diagnose reports what was read;
//! propose reads again (fresh numbers) and returns the patch with its digest and the bounds
//! that applied. Nothing here writes to the cluster.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::FutureExt;
use serde_json::Value;

use super::playbook::{Rendered, Scope, render, substitute};
use super::tools::{KubeTools, McpTools, ToolSource, Tools};
use crate::api::AnyJson;
use crate::api::ErrorCategory;
use crate::api::playbook::PatchMode;
use crate::api::remediation::{Diagnosis, Finding, Proposal, ProposalSource};
use crate::api::validate::ValidPlaybook;
use crate::cluster::load_playbook;
use crate::metrics::MetricsSource;
use crate::patch::safety::{Proposed, Rules, Target, check};
use crate::ports::{Diagnose, Propose, StageError, StageFuture, StageInput};

/// Runs playbooks; one per operator.
#[derive(Clone)]
pub struct PlaybookExecutor {
    client: kube::Client,
    metrics: Arc<dyn MetricsSource>,
    tools: ToolSource,
}

fn invalid(message: impl Into<String>) -> StageError {
    StageError::new(ErrorCategory::InvalidSpec, message)
}

/// A playbook run (one execution of a playbook within one effect): the validated playbook
/// and what it knows (after reading, its reads and the target as read).
pub struct PlaybookRun {
    pub playbook_name: String,
    pub playbook: ValidPlaybook,
    pub scope: Scope,
}

impl PlaybookExecutor {
    pub fn new(client: kube::Client, metrics: Arc<dyn MetricsSource>) -> Self {
        Self { client, metrics, tools: ToolSource::Direct }
    }

    /// Read through `tools` (Reflex's MCP server) instead of directly.
    pub fn with_tools(mut self, tools: ToolSource) -> Self {
        self.tools = tools;
        self
    }

    /// `loaded`: the policy's playbook when the caller has read it already.
    async fn prepare(
        &self,
        input: &StageInput,
        loaded: Option<ValidPlaybook>,
    ) -> Result<(PlaybookRun, Box<dyn Tools>), StageError> {
        let rem = &input.remediation;
        let namespace = rem.metadata.namespace.clone().ok_or_else(|| invalid("the remediation has no namespace"))?;
        let policy = input.policy.as_ref().ok_or_else(|| invalid("the policy is missing"))?;
        let playbook_name = policy
            .playbook
            .clone()
            .ok_or_else(|| invalid("the policy names no playbook (llm mode needs the agent stage)"))?;
        let playbook = match loaded {
            Some(pb) => pb,
            None => load_playbook(&self.client, &namespace, &playbook_name).await?,
        };
        if playbook.patch_mode != PatchMode::Template {
            return Err(invalid(format!(
                "playbook {playbook_name} delegates its patch to the agent, which this build does not run"
            )));
        }
        let target = &rem.spec.target;
        // The name goes into reads and into Reflex's own PromQL fragments as it is.
        if !crate::api::template::is_dns_subdomain(&target.name) {
            return Err(invalid(format!("the target name {:?} is not an object name", target.name)));
        }
        if !playbook.target_kinds.contains(&target.kind) {
            return Err(invalid(format!("playbook {playbook_name} does not fix {} targets", target.kind.as_str())));
        }
        let scope = Scope {
            target: BTreeMap::from([
                ("kind".to_owned(), target.kind.as_str().to_owned()),
                ("name".to_owned(), target.name.clone()),
                ("namespace".to_owned(), namespace.clone()),
                ("apiVersion".to_owned(), target.api_version.clone()),
            ]),
            labels: rem.spec.alert.labels.clone(),
            promql: [
                crate::metrics::pods_of(target.kind.as_str(), &namespace, &target.name).map(|q| ("pods".to_owned(), q)),
                crate::metrics::pod_name_regex(&target.name).map(|r| ("podNameRegex".to_owned(), r)),
            ]
            .into_iter()
            .flatten()
            .collect(),
            now: Some(
                jiff::Timestamp::now().round(jiff::Unit::Second).unwrap_or_else(|_| jiff::Timestamp::now()).to_string(),
            ),
            ..Scope::default()
        };
        let tools: Box<dyn Tools> = match &self.tools {
            ToolSource::Direct => {
                Box::new(KubeTools { client: self.client.clone(), namespace, metrics: self.metrics.clone() })
            }
            ToolSource::Mcp(loopback) => Box::new(McpTools {
                loopback: loopback.clone(),
                namespace,
                ctx: crate::mcp::client::CallContext {
                    cancel: input.cancel.clone(),
                    trace_id: rem.status.as_ref().and_then(|s| s.trace_id.clone()),
                },
            }),
        };
        Ok((PlaybookRun { playbook_name, playbook, scope }, tools))
    }

    /// Prepare a run and do its reads (the LLM agent's delegated parameters start here too).
    pub async fn read_all(&self, input: &StageInput) -> Result<PlaybookRun, StageError> {
        self.read_all_with(input, None).await
    }

    /// [`Self::read_all`] with the policy's playbook as the caller already read it.
    pub async fn read_all_with(
        &self,
        input: &StageInput,
        loaded: Option<ValidPlaybook>,
    ) -> Result<PlaybookRun, StageError> {
        let (mut run, tools) = self.prepare(input, loaded).await?;
        self.read(&mut run, tools.as_ref()).await?;
        Ok(run)
    }

    /// Runs every read step; the target object itself is always read too.
    async fn read(&self, run: &mut PlaybookRun, tools: &dyn Tools) -> Result<(), StageError> {
        for step in &run.playbook.reads {
            let mut args = BTreeMap::new();
            for (k, v) in &step.arguments {
                let rendered =
                    substitute(v, &|n| run.scope.lookup(n)).map_err(|e| invalid(format!("read {}: {e}", step.name)))?;
                args.insert(k.clone(), rendered);
            }
            let result = tools
                .call(&step.tool, &args)
                .await
                .map_err(|e| StageError::new(e.category, format!("read {}: {e}", step.name)))?;
            run.scope.reads.insert(step.name.clone(), result);
            // A requirement unmet ends the run at once: the reads after it are for a fix
            // that does not apply.
            if let Some(unmet) = unmet(run, &step.name) {
                return Err(StageError::new(ErrorCategory::NotApplicable, unmet));
            }
        }
        let target_args = BTreeMap::from([
            ("kind".to_owned(), run.scope.target.get("kind").cloned().unwrap_or_default()),
            ("name".to_owned(), run.scope.target.get("name").cloned().unwrap_or_default()),
        ]);
        run.scope.object = tools
            .call("get_resource", &target_args)
            .await
            .map_err(|e| StageError::new(e.category, format!("reading the target: {e}")))?;
        Ok(())
    }
}

/// The playbook's requirement on the read `read`, said for people, when the read did not
/// meet it.
fn unmet(run: &PlaybookRun, read: &str) -> Option<String> {
    run.playbook.requires.iter().filter(|r| r.read == read).find_map(|r| {
        let found = match run.scope.reads.get(&r.read) {
            None | Some(Value::Null) => false,
            Some(v) => match v.get("value") {
                Some(value) => value.as_f64().is_some_and(|x| x != 0.0),
                None => true,
            },
        };
        (!found).then(|| {
            format!("playbook {} does not apply: {} (read {} found nothing)", run.playbook_name, r.otherwise, r.read)
        })
    })
}

/// The conditions an object's controller explains (those with a reason), as
/// `Type=Status (Reason: message)` — what a person reads first on a failed Job or a stuck
/// rollout. At most four, each message cut at 200 characters.
fn conditions_of(v: &Value) -> Option<String> {
    let text = |c: &Value, k: &str| c.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
    let listed: Vec<String> = v
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .filter(|c| !text(c, "reason").is_empty())
        .take(4)
        .map(|c| {
            let message: String = text(c, "message").chars().filter(|ch| !ch.is_control()).take(200).collect();
            format!("{}={} ({}: {message})", text(c, "type"), text(c, "status"), text(c, "reason"))
        })
        .collect();
    (!listed.is_empty()).then(|| format!("conditions {}", listed.join(", ")))
}

/// One line per read, for status and the timeline.
fn describe_read(name: &str, v: &Value) -> String {
    if let Some(kind) = v.get("kind").and_then(Value::as_str) {
        let n = v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        let object = match v.pointer("/metadata/generation").and_then(Value::as_i64) {
            Some(generation) => format!("{name}: {kind}/{n} (generation {generation})"),
            None => format!(
                "{name}: {kind}/{n} (resourceVersion {})",
                v.pointer("/metadata/resourceVersion").and_then(Value::as_str).unwrap_or("?")
            ),
        };
        return match conditions_of(v) {
            Some(c) => format!("{object}; {c}"),
            None => object,
        };
    }
    match v.get("value") {
        Some(Value::Number(n)) => {
            let x = n.as_f64().unwrap_or_default();
            let shown = if x >= 1024.0 { super::playbook::format_quantity(x) } else { format!("{x}") };
            format!("{name}: {shown}")
        }
        Some(Value::Null) => format!("{name}: no data"),
        _ => {
            let s: String = v.to_string().chars().take(200).collect();
            format!("{name}: {s}")
        }
    }
}

impl Diagnose for PlaybookExecutor {
    fn diagnose(&self, input: StageInput) -> StageFuture<Diagnosis> {
        let this = self.clone();
        async move {
            let run = this.read_all(&input).await?;
            let findings: Vec<Finding> = run
                .scope
                .reads
                .iter()
                .map(|(name, v)| Finding {
                    source: format!("playbook {} read {name}", run.playbook_name),
                    detail: describe_read(name, v),
                })
                .collect();
            let alert = &input.remediation.spec.alert;
            let summary = format!(
                "{} on {}/{}: {}",
                alert.name,
                run.scope.target.get("kind").map_or("", String::as_str),
                run.scope.target.get("name").map_or("", String::as_str),
                findings.iter().map(|f| f.detail.clone()).collect::<Vec<_>>().join("; ")
            );
            Ok(Diagnosis { summary, findings })
        }
        .boxed()
    }
}

impl Propose for PlaybookExecutor {
    fn propose(&self, input: StageInput) -> StageFuture<Proposal> {
        let this = self.clone();
        async move {
            let run = this.read_all(&input).await?;
            if run.playbook.diagnoses_only {
                return Err(invalid(format!(
                    "playbook {} only diagnoses (it has no patch): a policy that runs it needs trust level observe",
                    run.playbook_name
                )));
            }
            let Rendered { patch, params, notes } = render(&run.playbook, &run.scope)
                .map_err(|e| invalid(format!("playbook {}: {e}", run.playbook_name)))?;
            // Checked independently of the renderer that bounded it: the same check an LLM's
            // proposal meets.
            let field = |k: &str| run.scope.target.get(k).map_or("", String::as_str);
            let target = Target { kind: field("kind"), namespace: field("namespace"), name: field("name") };
            let proposed = Proposed { target: target.clone(), patch_type: run.playbook.patch_type, patch: &patch };
            let rules = Rules::from_playbook_in(&run.playbook, &|n| run.scope.lookup(n));
            let verdict = check(&rules, &target, &run.scope.object, &proposed);
            if !verdict.allowed() {
                return Err(invalid(format!(
                    "playbook {}: the patch-safety check refused the patch: {}",
                    run.playbook_name,
                    verdict.summary()
                )));
            }
            let mut rationale = if params.is_empty() {
                format!("playbook {}", run.playbook_name)
            } else {
                format!(
                    "playbook {} with {}",
                    run.playbook_name,
                    params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")
                )
            };
            for n in &notes {
                rationale.push_str("; ");
                rationale.push_str(n);
            }
            Ok(Proposal {
                patch_type: run.playbook.patch_type,
                digest: crate::patch::digest(&patch),
                patch: AnyJson(patch),
                rationale,
                expected_effect: None,
                produced_by: ProposalSource::Playbook,
                playbook: Some(run.playbook_name),
                model: None,
                tokens: None,
                cost_usd: None,
            })
        }
        .boxed()
    }
}
