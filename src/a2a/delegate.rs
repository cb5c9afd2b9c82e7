//! Delegation: a step handed to another agent over A2A, and what comes back.
//!
//! Contract: [`delegate`] finds the agent (the policy's pinned one, or a ready agent in the
//! Remediation's namespace listing the skill), sends it one message — a data part with the
//! skill, the alert, the target and what Reflex knows so far — as `SendStreamingMessage`,
//! and follows the stream to the first terminal state or message within the timeout. Every
//! fault is a [`DelegateError`] that says what happened: no agent, gone (unreachable),
//! timed out (a stream that never ends included), refused (rejected, failed, an error), or a
//! malformed answer; on a timeout or cancellation the delegate gets `CancelTask`. Each
//! delegation is a span and an audit record. [`diagnosis_from`] and [`proposal_from`] —
//! pure — read the answer, bounded: what a delegate says is hostile input like any other,
//! and its patch is judged by the same safety check, CI and gate as any proposal.

use std::time::{Duration, Instant};

use a2a::{
    CancelTaskRequest, Message, Part, PartContent, Role, SendMessageConfiguration, SendMessageRequest, StreamResponse,
    TaskState,
};
use a2a_client::A2AClient;
use a2a_client::jsonrpc::JsonRpcTransport;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::registry::{Agent, Registry};
use crate::api::playbook::PatchType;
use crate::api::remediation::{Diagnosis, Finding, Proposal, ProposalSource};
use crate::api::validate::ValidDelegation;
use crate::mcp::client::{Audit, AuditRecord};

/// Longest summary, finding and rationale kept from a delegate.
const MAX_TEXT: usize = 2000;
const MAX_FINDINGS: usize = 32;
/// Largest patch accepted from a delegate (as JSON).
const MAX_PATCH: usize = 64 * 1024;
/// Most events one delegation may stream.
const MAX_EVENTS: usize = 256;

/// Why a delegation did not produce an answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DelegateError {
    #[error("no agent to delegate to: {0}")]
    NoAgent(String),
    #[error("agent {agent} is unreachable: {why}")]
    Unreachable { agent: String, why: String },
    #[error("agent {agent} did not finish within {}s", .after.as_secs())]
    TimedOut { agent: String, after: Duration },
    #[error("agent {agent} refused: {why}")]
    Refused { agent: String, why: String },
    #[error("agent {agent} answered with nothing usable: {why}")]
    Malformed { agent: String, why: String },
    #[error("the delegation was cancelled")]
    Cancelled,
}

/// A delegate's answer: its parts' text and its first data part.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// `namespace/service` of the agent that answered.
    pub agent: String,
    pub text: String,
    pub data: Option<Value>,
}

/// Adds `parts`' text and first data part to what was collected, keeping the text within
/// twice [`MAX_TEXT`] as it grows.
fn collect(parts: &[Part], text: &mut Vec<String>, data: &mut Option<Value>) {
    for p in parts {
        match &p.content {
            PartContent::Text(t) => {
                let held: usize = text.iter().map(String::len).sum();
                if held < 2 * MAX_TEXT {
                    text.push(t.chars().take(2 * MAX_TEXT - held).collect());
                }
            }
            PartContent::Data(v) if data.is_none() => *data = Some(v.clone()),
            _ => {}
        }
    }
}

/// Hands `request` (a data part; `skill` is added) to an agent with `d.skill`.
pub async fn delegate(
    registry: &Registry,
    namespace: &str,
    d: &ValidDelegation,
    mut request: Value,
    audit: &dyn Audit,
    trace_id: Option<String>,
    cancel: &CancellationToken,
) -> Result<Answer, DelegateError> {
    let pinned = d.agent.as_ref().map(|(ns, name)| (ns.as_deref().unwrap_or(namespace), name.as_str()));
    let agent = registry.find(namespace, pinned, &d.skill).map_err(DelegateError::NoAgent)?;
    request["skill"] = json!(d.skill);
    let span = tracing::info_span!("delegate", agent = %agent.key(), skill = %d.skill, trace_id = trace_id.as_deref().unwrap_or_default());
    let started = Instant::now();
    let result = tracing::Instrument::instrument(call(&agent, d, &request, cancel), span).await;
    let (outcome, digest) = match &result {
        Ok(a) => ("ok".to_owned(), Some(crate::patch::digest(&json!({"text": a.text, "data": a.data})))),
        Err(e) => (e.to_string(), None),
    };
    audit.record(&AuditRecord {
        server: format!("a2a:{}", agent.key()),
        tool: format!("delegate:{}", d.skill),
        arguments: request,
        result_digest: digest,
        outcome,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        attempts: 1,
        trace_id,
    });
    result
}

async fn call(
    agent: &Agent,
    d: &ValidDelegation,
    request: &Value,
    cancel: &CancellationToken,
) -> Result<Answer, DelegateError> {
    let key = agent.key();
    let unreachable = |why: String| DelegateError::Unreachable { agent: key.clone(), why };
    let endpoint = agent.endpoint().ok_or_else(|| unreachable("its card has no JSON-RPC interface".into()))?;
    // The client's own timeout is past the delegation's deadline: the deadline decides, and
    // the delegate is told to cancel.
    let http =
        crate::egress::client(Some(d.timeout + Duration::from_secs(10))).map_err(|e| unreachable(e.to_string()))?;
    let client = A2AClient::new(JsonRpcTransport::new(http, endpoint));
    let mut message = Message::new(Role::User, vec![Part::data(request.clone())]);
    message.metadata = Some([("skill".to_owned(), json!(d.skill))].into());
    let req = SendMessageRequest {
        message,
        configuration: Some(SendMessageConfiguration {
            accepted_output_modes: Some(vec!["application/json".into(), "text/plain".into()]),
            task_push_notification_config: None,
            history_length: None,
            return_immediately: None,
        }),
        metadata: None,
        tenant: None,
    };
    let deadline = tokio::time::Instant::now() + d.timeout;
    let mut task_id: Option<String> = None;
    let outcome = async {
        let mut stream = client.send_streaming_message(&req).await.map_err(|e| match e.code {
            a2a::error_code::INTERNAL_ERROR => unreachable(bounded(&e.message)),
            _ => DelegateError::Refused { agent: key.clone(), why: format!("{} ({})", bounded(&e.message), e.code) },
        })?;
        let (mut text, mut data) = (Vec::new(), None);
        let mut events = 0;
        while let Some(event) = stream.next().await {
            events += 1;
            if events > MAX_EVENTS {
                return Err(DelegateError::Malformed {
                    agent: key.clone(),
                    why: format!("it streamed over {MAX_EVENTS} events without finishing"),
                });
            }
            // A JSON-RPC error is the agent's answer; a broken stream is the agent gone.
            let event = event.map_err(|e| match e.code {
                a2a::error_code::INTERNAL_ERROR => unreachable(format!("the stream broke: {}", bounded(&e.message))),
                _ => {
                    DelegateError::Refused { agent: key.clone(), why: format!("{} ({})", bounded(&e.message), e.code) }
                }
            })?;
            let (state, parts) = match event {
                StreamResponse::Message(m) => {
                    collect(&m.parts, &mut text, &mut data);
                    return Ok((text, data));
                }
                StreamResponse::Task(t) => {
                    task_id = Some(t.id.clone());
                    for a in t.artifacts.iter().flatten() {
                        collect(&a.parts, &mut text, &mut data);
                    }
                    (t.status.state, t.status.message.map(|m| m.parts).unwrap_or_default())
                }
                StreamResponse::ArtifactUpdate(a) => {
                    task_id.get_or_insert(a.task_id.clone());
                    collect(&a.artifact.parts, &mut text, &mut data);
                    continue;
                }
                StreamResponse::StatusUpdate(u) => {
                    task_id.get_or_insert(u.task_id.clone());
                    (u.status.state, u.status.message.map(|m| m.parts).unwrap_or_default())
                }
            };
            match state {
                TaskState::Completed => {
                    collect(&parts, &mut text, &mut data);
                    return Ok((text, data));
                }
                TaskState::Failed | TaskState::Rejected | TaskState::Canceled => {
                    let mut why = Vec::new();
                    collect(&parts, &mut why, &mut None);
                    return Err(DelegateError::Refused {
                        agent: key.clone(),
                        why: format!("the task ended {state:?}: {}", bounded(&why.join(" "))),
                    });
                }
                TaskState::InputRequired | TaskState::AuthRequired => {
                    return Err(DelegateError::Refused {
                        agent: key.clone(),
                        why: format!("the task wants {state:?}, which a delegated step cannot give"),
                    });
                }
                _ => {}
            }
        }
        Err(DelegateError::Malformed { agent: key.clone(), why: "the stream ended before the task did".into() })
    };
    let result = tokio::select! {
        r = tokio::time::timeout_at(deadline, outcome) => r.unwrap_or(Err(DelegateError::TimedOut { agent: key.clone(), after: d.timeout })),
        () = cancel.cancelled() => Err(DelegateError::Cancelled),
    };
    if matches!(result, Err(DelegateError::TimedOut { .. } | DelegateError::Cancelled))
        && let Some(id) = task_id
    {
        // The delegate stops too (best effort, bounded).
        let cancel = CancelTaskRequest { id: id.clone(), metadata: None, tenant: None };
        match tokio::time::timeout(Duration::from_secs(5), client.cancel_task(&cancel)).await {
            Ok(Ok(_)) => tracing::info!(agent = %key, task = %id, "A2A: cancelled the delegate's task"),
            Ok(Err(e)) => {
                tracing::warn!(agent = %key, task = %id, error = %e.message, "A2A: the delegate did not cancel its task")
            }
            Err(_) => tracing::warn!(agent = %key, task = %id, "A2A: the delegate did not answer CancelTask"),
        }
    }
    let (text, data) = result?;
    Ok(Answer { agent: key, text: bounded(&text.join("\n")), data })
}

fn bounded(s: &str) -> String {
    s.chars().filter(|c| !c.is_control() || *c == '\n').take(MAX_TEXT).collect()
}

fn malformed(a: &Answer, why: &str) -> DelegateError {
    DelegateError::Malformed { agent: a.agent.clone(), why: why.to_owned() }
}

/// A delegate's diagnosis: its data part's `summary` and `findings` (`[{source, detail}]`),
/// or failing those its text; bounded, each finding's source prefixed with the agent. Pure.
pub fn diagnosis_from(a: &Answer, skill: &str) -> Result<Diagnosis, DelegateError> {
    let data = a.data.clone().unwrap_or(Value::Null);
    let summary = data.get("summary").and_then(Value::as_str).map(bounded).unwrap_or_else(|| a.text.clone());
    let findings: Vec<Finding> = match data.get("findings") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .take(MAX_FINDINGS)
            .map(|f| match (f.get("source").and_then(Value::as_str), f.get("detail").and_then(Value::as_str), f) {
                (source, Some(detail), _) => Ok(Finding {
                    source: format!(
                        "a2a {} ({skill}){}",
                        a.agent,
                        source.map(|s| format!(": {}", bounded(s))).unwrap_or_default()
                    ),
                    detail: bounded(detail),
                }),
                (_, None, Value::String(s)) => {
                    Ok(Finding { source: format!("a2a {} ({skill})", a.agent), detail: bounded(s) })
                }
                _ => Err(malformed(a, "a finding without a detail (send {\"source\", \"detail\"} objects)")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(malformed(a, "findings is not a list")),
    };
    if summary.trim().is_empty() && findings.is_empty() {
        return Err(malformed(a, "no summary, findings or text"));
    }
    Ok(Diagnosis { summary: format!("delegated to agent {} (skill {skill}): {}", a.agent, summary), findings })
}

/// A delegate's proposal: its data part's `patch` (an object), `patchType` (`strategic`, the
/// default, or `merge`), `rationale` and `expectedEffect`. Pure; the patch is judged later
/// like any other.
pub fn proposal_from(a: &Answer, skill: &str, playbook: Option<String>) -> Result<Proposal, DelegateError> {
    let data = a.data.as_ref().ok_or_else(|| malformed(a, "no data part with a patch"))?;
    let patch = data.get("patch").filter(|p| p.is_object()).ok_or_else(|| malformed(a, "no patch object"))?;
    if patch.to_string().len() > MAX_PATCH {
        return Err(malformed(a, "the patch is over 64 KiB"));
    }
    let patch_type = match data.get("patchType").and_then(Value::as_str) {
        None | Some("strategic") => PatchType::Strategic,
        Some("merge") => PatchType::Merge,
        Some(other) => {
            return Err(malformed(a, &format!("patchType {:?} is not strategic or merge", bounded(other))));
        }
    };
    let rationale = data.get("rationale").and_then(Value::as_str).map(bounded).unwrap_or_else(|| a.text.clone());
    if rationale.trim().is_empty() {
        return Err(malformed(a, "no rationale"));
    }
    Ok(Proposal {
        patch_type,
        digest: crate::patch::digest(patch),
        patch: crate::api::AnyJson(patch.clone()),
        rationale: format!("{rationale} (proposed by agent {} over A2A, skill {skill})", a.agent),
        expected_effect: data.get("expectedEffect").and_then(Value::as_str).map(bounded),
        produced_by: ProposalSource::Delegate,
        playbook,
        model: None,
        tokens: None,
        cost_usd: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(data: Value) -> Answer {
        Answer { agent: "shop/oom-expert".into(), text: "looked".into(), data: Some(data) }
    }

    #[test]
    fn a_delegates_findings_are_kept_bounded_and_attributed() {
        let d = diagnosis_from(
            &answer(json!({"summary": "OOM", "findings": [{"source": "pods", "detail": "x".repeat(5000)}, "plain"]})),
            "diagnose-oom",
        )
        .unwrap();
        assert_eq!(d.summary, "delegated to agent shop/oom-expert (skill diagnose-oom): OOM");
        assert_eq!(d.findings[0].source, "a2a shop/oom-expert (diagnose-oom): pods");
        assert_eq!(d.findings[0].detail.len(), MAX_TEXT);
        assert_eq!(d.findings[1].detail, "plain");
    }

    #[test]
    fn malformed_answers_are_named() {
        for (data, why) in
            [(json!({"findings": "many"}), "not a list"), (json!({"findings": [{"source": "x"}]}), "without a detail")]
        {
            let e = diagnosis_from(&answer(data), "s").unwrap_err();
            assert!(e.to_string().contains(why), "{e}");
        }
        let empty = Answer { agent: "a/b".into(), text: String::new(), data: None };
        assert!(diagnosis_from(&empty, "s").unwrap_err().to_string().contains("no summary"));
        for (data, why) in [
            (json!({"rationale": "r"}), "no patch object"),
            (json!({"patch": "x", "rationale": "r"}), "no patch object"),
            (json!({"patch": {}, "patchType": "json", "rationale": "r"}), "not strategic or merge"),
        ] {
            let e = proposal_from(&answer(data), "s", None).unwrap_err();
            assert!(e.to_string().contains(why), "{e}");
        }
    }

    #[test]
    fn a_delegates_patch_is_a_proposal_marked_as_the_delegates() {
        let p = proposal_from(
            &answer(json!({"patch": {"spec": {"replicas": 3}}, "rationale": "more replicas"})),
            "propose-fix",
            Some("scale".into()),
        )
        .unwrap();
        assert_eq!(p.produced_by, ProposalSource::Delegate);
        assert_eq!(p.patch_type, PatchType::Strategic);
        assert_eq!(p.digest, crate::patch::digest(&json!({"spec": {"replicas": 3}})));
        assert!(p.rationale.contains("proposed by agent shop/oom-expert over A2A"));
    }
}
