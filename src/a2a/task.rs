//! Tasks are Remediations: the pure mapping between the two, and the parsing of what a caller
//! asks for. Nothing here does I/O.
//!
//! Contract: a task's id is `<namespace>/<name>` of its Remediation, so any replica (or a
//! restarted operator) answers for it from the API server. Its state follows the phase
//! ([`state_of`]); its artifacts carry the diagnosis, the proposal, the verdict and the links
//! a person follows (`kubectl reflex explain …`) ([`task_of`]). [`parse_request`] turns a
//! message into one of the three skills' requests, or an `InvalidParams` error that names
//! the field and what to send. [`remediation_for`] builds the Remediation a `remediate`
//! request creates; its name is derived from the caller and the message id, so a retried
//! message finds the Remediation it created instead of starting a second one.

use std::collections::{BTreeMap, HashMap};

use a2a::{A2AError, Artifact, Message, Part, PartContent, Role, Task, TaskState, TaskStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::api::remediation::{AlertRef, Phase, Remediation, RemediationSpec, TargetRef};
use crate::api::{LocalObjectRef, TargetKind};

/// The skills Reflex's card offers.
pub const REMEDIATE: &str = "remediate";
pub const DIAGNOSE: &str = "diagnose";
pub const STATUS: &str = "status";

/// Annotations a Remediation started over A2A carries.
pub const CONTEXT_ANNOTATION: &str = "reflex.dev/a2a-context-id";
pub const MESSAGE_ANNOTATION: &str = "reflex.dev/a2a-message-id";
pub const DESCRIPTION_ANNOTATION: &str = "reflex.dev/a2a-description";
/// Longest incident description kept on the Remediation.
const MAX_DESCRIPTION: usize = 2000;

/// The task id of Remediation `namespace/name`.
pub fn task_id(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The Remediation a task id names, validated as object names.
pub fn parse_task_id(id: &str) -> Result<(String, String), A2AError> {
    let invalid = || {
        A2AError::task_not_found(&format!(
            "{id} (a Reflex task id is <namespace>/<remediation name>, both Kubernetes object names)"
        ))
    };
    let (namespace, name) = id.split_once('/').ok_or_else(invalid)?;
    if !is_name(namespace, 63) || !is_name(name, 253) {
        return Err(invalid());
    }
    Ok((namespace.to_owned(), name.to_owned()))
}

/// A lowercase DNS-1123 name of at most `max` characters.
fn is_name(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// The task state of a Remediation: working while the loop runs, input-required while a
/// RemediationApproval is awaited, and the terminal states by outcome (a diagnosis-only
/// Remediation that reported its findings completed).
pub fn state_of(rem: &Remediation) -> TaskState {
    let Some(status) = rem.status.as_ref() else { return TaskState::Submitted };
    match status.phase {
        Phase::Pending => TaskState::Submitted,
        Phase::Diagnosing
        | Phase::Proposed
        | Phase::Testing
        | Phase::Deploying
        | Phase::Verifying
        | Phase::RollingBack => TaskState::Working,
        // A person approves (a RemediationApproval), not the A2A caller: still working.
        Phase::AwaitingApproval => TaskState::Working,
        Phase::Succeeded | Phase::Unverified => TaskState::Completed,
        Phase::Escalated if reason_of(rem).as_deref() == Some("Diagnosed") => TaskState::Completed,
        Phase::Failed | Phase::RolledBack | Phase::Escalated => TaskState::Failed,
        Phase::Cancelled => TaskState::Canceled,
    }
}

/// Whether a stream of this task's updates ends here: a terminal state (a task waiting for
/// an approval is working, and its stream goes on).
pub fn stream_ends(state: &TaskState) -> bool {
    state.is_terminal()
}

/// The `Ready` condition's reason (the machine's last word on the phase).
fn reason_of(rem: &Remediation) -> Option<String> {
    rem.status.as_ref()?.conditions.iter().find(|c| c.type_ == "Ready").map(|c| c.reason.clone())
}

fn agent_text(text: String, task: &str, context: &str) -> Message {
    let mut m = Message::new(Role::Agent, vec![Part::text(text)]);
    m.task_id = Some(task.to_owned());
    m.context_id = Some(context.to_owned());
    m
}

/// The context a Remediation's task belongs to: the caller's, when it started over A2A, else
/// the Remediation's uid.
pub fn context_of(rem: &Remediation) -> String {
    rem.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONTEXT_ANNOTATION))
        .cloned()
        .or_else(|| rem.metadata.uid.clone())
        .unwrap_or_default()
}

/// One line on where the Remediation is and why.
pub fn headline(rem: &Remediation) -> String {
    let name = rem.metadata.name.as_deref().unwrap_or_default();
    let target = format!("{} {}", rem.spec.target.kind.as_str(), rem.spec.target.name);
    match rem.status.as_ref() {
        None => format!("Remediation {name} of {target}: created, not started yet"),
        Some(s) => {
            let why = s.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
            format!("Remediation {name} of {target}: {:?}{why}", s.phase)
        }
    }
}

fn data_artifact(id: &str, name: &str, value: Value) -> Artifact {
    Artifact {
        artifact_id: id.to_owned(),
        name: Some(name.to_owned()),
        description: None,
        parts: vec![Part::data(value)],
        metadata: None,
        extensions: None,
    }
}

/// What the Remediation has produced so far, as artifacts: the diagnosis, the proposal, the
/// verdict, and the links. Stable ids, so a stream sends each once it appears or changes.
pub fn artifacts_of(rem: &Remediation) -> Vec<Artifact> {
    let namespace = rem.metadata.namespace.as_deref().unwrap_or_default();
    let name = rem.metadata.name.as_deref().unwrap_or_default();
    let mut out = Vec::new();
    if let Some(s) = rem.status.as_ref() {
        if let Some(d) = &s.diagnosis {
            out.push(data_artifact("diagnosis", "diagnosis", json!(d)));
        }
        if let Some(p) = &s.proposal {
            out.push(data_artifact(
                "proposal",
                "proposal",
                json!({
                    "patchType": p.patch_type, "patch": p.patch, "digest": p.digest,
                    "rationale": p.rationale, "expectedEffect": p.expected_effect,
                    "producedBy": p.produced_by, "playbook": p.playbook,
                }),
            ));
        }
        if let Some(v) = &s.verification {
            out.push(data_artifact(
                "verdict",
                "verdict",
                json!({"verdict": v.verdict, "message": v.message, "query": v.query, "samples": v.samples.len()}),
            ));
        }
    }
    out.push(Artifact {
        artifact_id: "links".to_owned(),
        name: Some("links".to_owned()),
        description: Some("how a person follows this Remediation".to_owned()),
        parts: vec![Part::text(format!(
            "kubectl reflex explain -n {namespace} {name}\nkubectl get remediation -n {namespace} {name} -o yaml"
        ))],
        metadata: None,
        extensions: None,
    });
    out
}

/// The task of a Remediation, as any replica would answer for it.
pub fn task_of(rem: &Remediation) -> Task {
    let namespace = rem.metadata.namespace.as_deref().unwrap_or_default();
    let name = rem.metadata.name.as_deref().unwrap_or_default();
    let id = task_id(namespace, name);
    let context = context_of(rem);
    let timestamp = rem
        .status
        .as_ref()
        .and_then(|s| s.finished_at.clone().or(s.started_at.clone()))
        .or(rem.metadata.creation_timestamp.clone())
        // RFC 3339 both ways (jiff prints it, the A2A types read it).
        .and_then(|t| serde_json::from_value(json!(t.0.to_string())).ok());
    let mut metadata = HashMap::new();
    if let Some(s) = rem.status.as_ref() {
        metadata.insert("phase".to_owned(), json!(s.phase));
    }
    if let Some(reason) = reason_of(rem) {
        metadata.insert("reason".to_owned(), json!(reason));
    }
    Task {
        status: TaskStatus { state: state_of(rem), message: Some(agent_text(headline(rem), &id, &context)), timestamp },
        artifacts: Some(artifacts_of(rem)),
        history: None,
        metadata: Some(metadata),
        id,
        context_id: context,
    }
}

/// What a caller asks of Reflex.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Remediate(Remediate),
    Diagnose { namespace: String, target: TargetRef },
    Status { namespace: String, name: String },
}

/// A `remediate` request: run the loop under `policy` for `target`.
#[derive(Debug, Clone, PartialEq)]
pub struct Remediate {
    pub namespace: String,
    pub policy: String,
    pub target: TargetRef,
    pub alert_name: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub description: String,
    /// Whether the caller named an alert (checked against the policy's alert names and
    /// matchers, as intake checks a delivered one); without one the alert is `A2ARequest`.
    pub names_alert: bool,
}

/// Most labels and annotations an alert in a request may carry, and their longest value.
const MAX_LABELS: usize = 64;
const MAX_LABEL_VALUE: usize = 1024;

/// Prometheus label names: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn is_label_name(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn bounded_map(
    map: BTreeMap<String, String>,
    field: &str,
    label_names: bool,
) -> Result<BTreeMap<String, String>, A2AError> {
    if map.len() > MAX_LABELS {
        return Err(invalid(field, &format!("at most {MAX_LABELS} entries")));
    }
    for (k, v) in &map {
        if label_names && !is_label_name(k) {
            return Err(invalid(field, &format!("{k:?} is not a label name ([a-zA-Z_][a-zA-Z0-9_]*)")));
        }
        if k.is_empty() || k.len() > 253 || v.len() > MAX_LABEL_VALUE || v.chars().any(|c| c.is_control() && c != '\n')
        {
            return Err(invalid(
                field,
                &format!("{k:?}: names up to 253 and values up to {MAX_LABEL_VALUE} characters, no control characters"),
            ));
        }
    }
    Ok(map)
}

impl Remediate {
    /// Whether the policy acts on the alert the caller named (its name, its matchers, in the
    /// policy's namespace), as intake checks a delivered alert. Pure.
    ///
    /// # Errors
    /// `InvalidParams` naming what does not match.
    pub fn check_against(&self, policy: &crate::api::validate::ValidPolicy) -> Result<(), A2AError> {
        if !self.names_alert {
            return Ok(());
        }
        if !policy.alertnames.contains(&self.alert_name) {
            return Err(invalid(
                "alert.name",
                &format!("policy {} acts on alerts {:?}, not {:?}", self.policy, policy.alertnames, self.alert_name),
            ));
        }
        let mut labels = self.labels.clone();
        labels.insert("alertname".to_owned(), self.alert_name.clone());
        if let Some(m) = policy.matchers.iter().find(|m| !m.matches(&labels)) {
            return Err(invalid("alert.labels", &format!("policy {}'s matcher {m} does not hold", self.policy)));
        }
        Ok(())
    }
}

fn invalid(field: &str, what: &str) -> A2AError {
    A2AError::invalid_params(format!(
        "{field}: {what}. Send a data part such as {{\"skill\": \"remediate\", \"namespace\": \"shop\", \"policy\": \"checkout-oom\", \"target\": {{\"kind\": \"Deployment\", \"name\": \"checkout\"}}}}, or {{\"skill\": \"diagnose\", \"namespace\": …, \"target\": …}}, or {{\"skill\": \"status\", \"namespace\": …, \"remediation\": …}}"
    ))
}

fn string_field(data: &Value, field: &str) -> Result<String, A2AError> {
    data.get(field).and_then(Value::as_str).map(str::to_owned).ok_or_else(|| invalid(field, "is required (a string)"))
}

fn name_field(data: &Value, field: &str, max: usize) -> Result<String, A2AError> {
    let s = string_field(data, field)?;
    if !is_name(&s, max) {
        return Err(invalid(field, &format!("{s:?} is not a Kubernetes object name")));
    }
    Ok(s)
}

fn string_map(data: &Value, field: &str) -> Result<BTreeMap<String, String>, A2AError> {
    match data.get(field) {
        None | Some(Value::Null) => Ok(BTreeMap::new()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|_| invalid(field, "must be an object of strings")),
    }
}

fn target_field(data: &Value) -> Result<TargetRef, A2AError> {
    let t = data.get("target").ok_or_else(|| invalid("target", "is required ({\"kind\": …, \"name\": …})"))?;
    let kind: TargetKind = t.get("kind").cloned().and_then(|k| serde_json::from_value(k).ok()).ok_or_else(|| {
        invalid(
            "target.kind",
            "must be one of Deployment, StatefulSet, DaemonSet, ConfigMap, HorizontalPodAutoscaler, Job, CronJob",
        )
    })?;
    let name =
        name_field(t, "name", 253).map_err(|_| invalid("target.name", "is required (a Kubernetes object name)"))?;
    Ok(TargetRef { api_version: kind.api_version().to_owned(), kind, name })
}

/// The request a message makes: the skill from a data part's `skill` (or the message's
/// metadata), its arguments from that data part; text parts are the incident description.
pub fn parse_request(message: &Message, metadata: Option<&HashMap<String, Value>>) -> Result<Request, A2AError> {
    let data = message
        .parts
        .iter()
        .find_map(|p| match &p.content {
            PartContent::Data(v) if v.is_object() => Some(v.clone()),
            _ => None,
        })
        .unwrap_or(Value::Null);
    let text: Vec<&str> = message.parts.iter().filter_map(Part::as_text).collect();
    let skill = data
        .get("skill")
        .and_then(Value::as_str)
        .or_else(|| message.metadata.as_ref().and_then(|m| m.get("skill")).and_then(Value::as_str))
        .or_else(|| metadata.and_then(|m| m.get("skill")).and_then(Value::as_str))
        .ok_or_else(|| invalid("skill", "is required: remediate, diagnose or status"))?;
    match skill {
        REMEDIATE => {
            let alert = data.get("alert").cloned().unwrap_or(Value::Null);
            let (alert_name, names_alert) = match alert.get("name").and_then(Value::as_str) {
                Some(n) if !n.is_empty() && n.len() <= 253 && !n.chars().any(char::is_control) => (n.to_owned(), true),
                Some(_) => return Err(invalid("alert.name", "must be 1 to 253 characters")),
                None => ("A2ARequest".to_owned(), false),
            };
            let namespace = name_field(&data, "namespace", 63)?;
            let mut labels = bounded_map(
                string_map(&alert, "labels").map_err(|_| invalid("alert.labels", "must be an object of strings"))?,
                "alert.labels",
                true,
            )?;
            // The alert is about the namespace the Remediation is in, whatever the caller says.
            if labels.get("namespace").is_some_and(|n| *n != namespace) {
                return Err(invalid("alert.labels.namespace", "must be the request's namespace (or left out)"));
            }
            labels.insert("namespace".to_owned(), namespace.clone());
            labels.remove("alertname");
            let annotations = bounded_map(
                string_map(&alert, "annotations")
                    .map_err(|_| invalid("alert.annotations", "must be an object of strings"))?,
                "alert.annotations",
                false,
            )?;
            let description =
                data.get("description").and_then(Value::as_str).map(str::to_owned).unwrap_or_else(|| text.join("\n"));
            Ok(Request::Remediate(Remediate {
                namespace,
                policy: name_field(&data, "policy", 253)?,
                target: target_field(&data)?,
                alert_name,
                labels,
                annotations,
                description: description
                    .chars()
                    .filter(|c| !c.is_control() || *c == '\n')
                    .take(MAX_DESCRIPTION)
                    .collect(),
                names_alert,
            }))
        }
        DIAGNOSE => {
            Ok(Request::Diagnose { namespace: name_field(&data, "namespace", 63)?, target: target_field(&data)? })
        }
        STATUS => Ok(Request::Status {
            namespace: name_field(&data, "namespace", 63)?,
            name: name_field(&data, "remediation", 253)?,
        }),
        other => {
            Err(invalid("skill", &format!("{other:?} is not one of Reflex's skills (remediate, diagnose, status)")))
        }
    }
}

/// The name of the Remediation the caller `user`'s message `message_id` creates: the same
/// for a retried message, different for another caller.
pub fn remediation_name(user: &str, message_id: &str) -> String {
    let hash: String =
        Sha256::digest(format!("{user}\n{message_id}").as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect();
    format!("a2a-{hash}")
}

/// The Remediation a `remediate` request creates (its spec only: the controller does the rest,
/// under the named policy's limits and trust, as for any other Remediation).
pub fn remediation_for(
    r: &Remediate,
    name: &str,
    message_id: &str,
    context_id: &str,
    now: k8s_openapi::jiff::Timestamp,
) -> Remediation {
    let fingerprint: String = Sha256::digest(name.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect();
    let mut annotations = BTreeMap::from([
        (CONTEXT_ANNOTATION.to_owned(), context_id.chars().take(256).collect()),
        (MESSAGE_ANNOTATION.to_owned(), message_id.chars().take(256).collect()),
    ]);
    if !r.description.is_empty() {
        annotations.insert(DESCRIPTION_ANNOTATION.to_owned(), r.description.clone());
    }
    let mut labels = r.labels.clone();
    labels.insert("alertname".to_owned(), r.alert_name.clone());
    let mut rem = Remediation::new(
        name,
        RemediationSpec {
            policy_ref: LocalObjectRef { name: r.policy.clone() },
            alert: AlertRef {
                name: r.alert_name.clone(),
                fingerprint,
                labels,
                annotations: r.annotations.clone(),
                starts_at: Time(now),
                generator_url: None,
            },
            target: r.target.clone(),
            cancel: false,
        },
    );
    rem.metadata.namespace = Some(r.namespace.clone());
    rem.metadata.annotations = Some(annotations);
    rem.metadata.labels =
        Some(BTreeMap::from([(crate::api::remediation::REQUESTED_OVER_LABEL.to_owned(), "a2a".to_owned())]));
    rem
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::remediation::RemediationStatus;

    fn message(data: Value) -> Message {
        Message::new(Role::User, vec![Part::data(data), Part::text("checkout keeps getting OOM-killed")])
    }

    fn remediate() -> Value {
        json!({"skill": "remediate", "namespace": "shop", "policy": "checkout-oom",
               "target": {"kind": "Deployment", "name": "checkout"}})
    }

    #[test]
    fn a_remediate_message_names_policy_target_and_description() {
        let Request::Remediate(r) = parse_request(&message(remediate()), None).unwrap() else { panic!() };
        assert_eq!(
            (r.namespace.as_str(), r.policy.as_str(), r.target.name.as_str()),
            ("shop", "checkout-oom", "checkout")
        );
        assert_eq!(r.target.api_version, "apps/v1");
        assert_eq!(r.description, "checkout keeps getting OOM-killed");
        assert_eq!(r.alert_name, "A2ARequest");
    }

    #[test]
    fn a_bad_message_is_refused_naming_the_field() {
        for (data, field) in [
            (json!({"namespace": "shop"}), "skill"),
            (json!({"skill": "deploy-anything"}), "skill"),
            (
                json!({"skill": "remediate", "namespace": "Shop!", "policy": "p", "target": {"kind": "Deployment", "name": "x"}}),
                "namespace",
            ),
            (
                json!({"skill": "remediate", "namespace": "shop", "target": {"kind": "Deployment", "name": "x"}}),
                "policy",
            ),
            (
                json!({"skill": "diagnose", "namespace": "shop", "target": {"kind": "Secret", "name": "x"}}),
                "target.kind",
            ),
            (json!({"skill": "status", "namespace": "shop"}), "remediation"),
            (
                json!({"skill": "remediate", "namespace": "shop", "policy": "p", "target": {"kind": "Deployment", "name": "x"}, "alert": {"labels": {"a": 1}}}),
                "alert.labels",
            ),
        ] {
            let e = parse_request(&message(data.clone()), None).unwrap_err();
            assert_eq!(e.code, a2a::error_code::INVALID_PARAMS, "{data}");
            assert!(e.message.starts_with(&format!("{field}:")), "{data}: {}", e.message);
        }
    }

    #[test]
    fn a_named_alert_must_be_one_the_policy_acts_on_in_its_own_namespace() {
        let policy: crate::api::policy::RemediationPolicySpec = serde_json::from_value(json!({
            "match": {"alertnames": ["KubeContainerOOMKilled"], "matchers": ["deployment=\"checkout\""]},
            "target": {"kind": "Deployment", "name": "{{ labels.deployment }}"}, "playbook": "raise-memory-limit"}))
        .unwrap();
        let policy = crate::api::validate::ValidPolicy::from_spec(&policy).unwrap();
        let request = |alert: Value| {
            let mut data = remediate();
            data["alert"] = alert;
            match parse_request(&message(data), None) {
                Ok(Request::Remediate(r)) => r.check_against(&policy).map(|()| r),
                Ok(other) => panic!("{other:?}"),
                Err(e) => Err(e),
            }
        };
        let ok = request(json!({"name": "KubeContainerOOMKilled", "labels": {"deployment": "checkout"}})).unwrap();
        assert_eq!(
            ok.labels.get("namespace").map(String::as_str),
            Some("shop"),
            "the namespace label is the request's"
        );
        for (alert, why) in [
            (json!({"name": "KubeNodeNotReady"}), "alert.name: policy checkout-oom acts on alerts"),
            (
                json!({"name": "KubeContainerOOMKilled", "labels": {"deployment": "payments"}}),
                "alert.labels: policy checkout-oom's matcher",
            ),
            (
                json!({"name": "KubeContainerOOMKilled", "labels": {"namespace": "kube-system"}}),
                "alert.labels.namespace",
            ),
            (
                json!({"name": "KubeContainerOOMKilled", "labels": {"bad-name": "x"}}),
                "alert.labels: \"bad-name\" is not a label name",
            ),
        ] {
            let e = request(alert.clone()).unwrap_err();
            assert!(e.message.starts_with(why), "{alert}: {}", e.message);
        }
        // No alert named: the request's own, which no policy's alert names could match.
        let bare = request(Value::Null).unwrap();
        assert_eq!((bare.alert_name.as_str(), bare.names_alert), ("A2ARequest", false));
    }

    #[test]
    fn the_skill_may_come_from_the_messages_metadata() {
        let mut m = Message::new(Role::User, vec![Part::data(json!({"namespace": "shop", "remediation": "r-1"}))]);
        m.metadata = Some(HashMap::from([("skill".to_owned(), json!("status"))]));
        assert_eq!(parse_request(&m, None).unwrap(), Request::Status { namespace: "shop".into(), name: "r-1".into() });
    }

    #[test]
    fn a_retried_message_names_the_same_remediation_and_another_caller_another() {
        let a = remediation_name("alice", "m-1");
        assert_eq!(a, remediation_name("alice", "m-1"));
        assert_ne!(a, remediation_name("bob", "m-1"));
        assert!(is_name(&a, 253));
    }

    #[test]
    fn task_ids_round_trip_and_hostile_ids_are_not_found() {
        assert_eq!(parse_task_id(&task_id("shop", "a2a-1")).unwrap(), ("shop".into(), "a2a-1".into()));
        for bad in ["shop", "../x/y", "shop/", "/x", "shop/a/b", "SHOP/x"] {
            assert_eq!(parse_task_id(bad).unwrap_err().code, a2a::error_code::TASK_NOT_FOUND, "{bad}");
        }
    }

    fn with_phase(phase: Phase, reason: &str) -> Remediation {
        let Request::Remediate(r) = parse_request(&message(remediate()), None).unwrap() else { panic!() };
        let mut rem = remediation_for(&r, "a2a-1", "m-1", "ctx-1", k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
        let mut status = RemediationStatus { phase, ..Default::default() };
        status.conditions.push(k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: "Ready".into(),
            status: "False".into(),
            reason: reason.into(),
            message: String::new(),
            last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
            observed_generation: None,
        });
        rem.status = Some(status);
        rem
    }

    #[test]
    fn task_state_follows_the_phase() {
        for (phase, reason, state) in [
            (Phase::Diagnosing, "", TaskState::Working),
            (Phase::AwaitingApproval, "", TaskState::Working),
            (Phase::Succeeded, "Verified", TaskState::Completed),
            (Phase::RolledBack, "", TaskState::Failed),
            (Phase::Escalated, "BudgetExhausted", TaskState::Failed),
            (Phase::Escalated, "Diagnosed", TaskState::Completed),
            (Phase::Cancelled, "", TaskState::Canceled),
        ] {
            assert_eq!(state_of(&with_phase(phase, reason)), state, "{phase:?} {reason}");
        }
        let task = task_of(&with_phase(Phase::Verifying, ""));
        assert_eq!((task.id.as_str(), task.context_id.as_str()), ("shop/a2a-1", "ctx-1"));
        let links = task.artifacts.unwrap().into_iter().find(|a| a.artifact_id == "links").unwrap();
        assert!(links.parts[0].as_text().unwrap().contains("kubectl reflex explain -n shop a2a-1"));
    }
}
