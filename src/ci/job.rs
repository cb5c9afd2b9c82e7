//! CI by test Job: a Kubernetes Job runs the policy's image and command against the patched
//! manifest, mounted from a ConfigMap at `/reflex/manifest.yaml` (the live object beside it
//! at `/reflex/live.yaml`); exit code 0 passes.
//!
//! Contract: the pure core builds the ConfigMap and Job ([`objects`]), judges a Job's status
//! against the timeout ([`judge`]) and cleans a log into the lines status keeps ([`tail`]).
//! The shell ([`run`]) creates both objects as the deployer of the change's environment (RBAC
//! decides whether it may run Pods there), owned by the Remediation; their name derives from
//! the effect key and the proposal's digest, so a resumed effect finds its own Job instead of
//! starting a second. It polls the Job until it finishes or the timeout (counted from the
//! Job's creation, so a restart does not extend it) passes, reads the tail of the Pod's log
//! (or the last one seen while it ran, when a deadline took the Pod),
//! and deletes both objects whatever the outcome — also when the Remediation is cancelled.
//! The Pod runs under the restricted Pod Security profile with no ServiceAccount token.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams, PropagationPolicy};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::api::ErrorCategory;
use crate::api::policy::CiJobSpec;
use crate::api::remediation::Remediation;
use crate::cluster::api_error;
use crate::ports::{StageError, StageInput, StageResult};

/// Lines of the Job's log kept in status.
pub const TAIL_LINES: usize = 20;
/// Longest line kept.
pub const MAX_LINE: usize = 240;
/// How long after the timeout a Job is still given to report before it counts as hung (the
/// Job controller's own `activeDeadlineSeconds` normally ends it first).
const GRACE: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_secs(1);

/// Label on both objects: the Remediation's uid.
pub const UID_LABEL: &str = "reflex.dev/remediation-uid";

/// The name of the test Job (and its ConfigMap) for one effect: the Remediation's name cut to
/// 40 characters, then a hash of its uid, the attempt and the proposal's digest — a DNS label
/// (the Job controller copies it into a label value, at most 63 characters).
pub fn job_name(rem: &Remediation, attempt: u32, digest: &str) -> String {
    let name = rem.metadata.name.as_deref().unwrap_or("remediation").replace('.', "-");
    let cut: String = name.chars().take(40).collect();
    let hash = Sha256::digest(format!("{}/{attempt}/{digest}", rem.metadata.uid.as_deref().unwrap_or_default()));
    let hex: String = hash.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("{}-ci-{hex}", cut.trim_end_matches('-'))
}

/// The ConfigMap with the manifests and the Job that tests them.
pub fn objects(
    rem: &Remediation,
    name: &str,
    spec: &CiJobSpec,
    timeout: Duration,
    patched_yaml: &str,
    live_yaml: &str,
    digest: &str,
) -> (Value, Value) {
    let namespace = rem.metadata.namespace.as_deref().unwrap_or_default();
    let uid = rem.metadata.uid.as_deref().unwrap_or_default();
    let owner = json!([{"apiVersion": "reflex.dev/v1alpha1", "kind": "Remediation",
        "name": rem.metadata.name, "uid": uid, "controller": true}]);
    let labels = json!({UID_LABEL: uid, "app.kubernetes.io/managed-by": "reflex", "app.kubernetes.io/component": "ci"});
    let meta = json!({"name": name, "namespace": namespace, "labels": labels, "ownerReferences": owner,
        "annotations": {"reflex.dev/proposal-digest": digest}});
    let config = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
        "data": {"manifest.yaml": patched_yaml, "live.yaml": live_yaml}});
    let mut env: Vec<Value> = vec![
        json!({"name": "REFLEX_REMEDIATION", "value": rem.metadata.name}),
        json!({"name": "REFLEX_NAMESPACE", "value": namespace}),
        json!({"name": "REFLEX_TARGET_KIND", "value": rem.spec.target.kind.as_str()}),
        json!({"name": "REFLEX_TARGET_NAME", "value": rem.spec.target.name}),
        json!({"name": "REFLEX_MANIFEST", "value": "/reflex/manifest.yaml"}),
    ];
    env.extend(spec.env.iter().map(|v| json!({"name": v.name, "value": v.value})));
    let deadline = timeout.as_secs().max(1);
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": {
        "backoffLimit": 0,
        "activeDeadlineSeconds": deadline,
        // A backstop for an operator that stops before it cleans up.
        "ttlSecondsAfterFinished": 3600,
        "template": {"metadata": {"labels": labels}, "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65532, "runAsGroup": 65532,
                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "test",
                "image": spec.image,
                "command": spec.command,
                "env": env,
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "512Mi"}},
                "securityContext": {"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true,
                    "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "manifest", "mountPath": "/reflex", "readOnly": true},
                    {"name": "tmp", "mountPath": "/tmp"}]
            }],
            "volumes": [{"name": "manifest", "configMap": {"name": name}}, {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}]
        }}
    }});
    (config, job)
}

/// Where a test Job is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Still running (or not started).
    Running,
    /// Finished successfully.
    Passed,
    /// Finished unsuccessfully, or ran out of time; the message says which.
    Failed(String),
}

/// Judges a Job's status at `now`: its terminal conditions first (`Complete`,
/// `SuccessCriteriaMet`; `Failed`, `FailureTarget`), then the timeout counted from `created`.
pub fn judge(job: &Value, created: Timestamp, timeout: Duration, now: Timestamp) -> JobState {
    let conditions = job.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    let holds = |ty: &str| {
        conditions.iter().find(|c| {
            c.get("type").and_then(Value::as_str) == Some(ty) && c.get("status").and_then(Value::as_str) == Some("True")
        })
    };
    if holds("Complete").or_else(|| holds("SuccessCriteriaMet")).is_some() {
        return JobState::Passed;
    }
    if let Some(c) = holds("Failed").or_else(|| holds("FailureTarget")) {
        let reason = c.get("reason").and_then(Value::as_str).unwrap_or("Failed");
        let message = c.get("message").and_then(Value::as_str).unwrap_or_default();
        return JobState::Failed(match reason {
            "DeadlineExceeded" => {
                format!("the test Job ran longer than its timeout ({}s) and was stopped", timeout.as_secs())
            }
            _ if message.is_empty() => format!("the test Job failed ({reason})"),
            _ => format!("the test Job failed ({reason}: {message})"),
        });
    }
    if now.duration_since(created).unsigned_abs() > timeout + GRACE {
        return JobState::Failed(format!("the test Job did not finish within its timeout ({}s)", timeout.as_secs()));
    }
    JobState::Running
}

/// The last [`TAIL_LINES`] non-empty lines of a log, control characters removed and each cut
/// at [`MAX_LINE`] characters: what status keeps of what the test printed.
pub fn tail(log: &str) -> Vec<String> {
    let lines: Vec<String> = log
        .lines()
        .map(|l| {
            let clean: String = l.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
            let clean = clean.trim_end();
            if clean.chars().count() > MAX_LINE {
                format!("{}…", clean.chars().take(MAX_LINE).collect::<String>())
            } else {
                clean.to_owned()
            }
        })
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(TAIL_LINES)..].to_vec()
}

/// What a finished test Job says.
#[derive(Clone, Debug, PartialEq)]
pub struct JobOutcome {
    /// The Job's name.
    pub name: String,
    /// Passed, or why not.
    pub state: JobState,
    /// The test container's exit code, when it terminated.
    pub exit_code: Option<i32>,
    /// The tail of its log.
    pub log_tail: Vec<String>,
}

/// Runs (or resumes) the test Job for `input`'s effect: `deployer` creates and deletes, `reader`
/// (the operator) polls and reads the log.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    deployer: &kube::Client,
    reader: &kube::Client,
    input: &StageInput,
    spec: &CiJobSpec,
    timeout: Duration,
    patched_yaml: &str,
    live_yaml: &str,
    digest: &str,
) -> StageResult<JobOutcome> {
    let rem = &input.remediation;
    let namespace = rem.metadata.namespace.clone().unwrap_or_default();
    let name = job_name(rem, input.key.attempt, digest);
    let (config, job) = objects(rem, &name, spec, timeout, patched_yaml, live_yaml, digest);
    let maps: Api<ConfigMap> = Api::namespaced(deployer.clone(), &namespace);
    let jobs: Api<Job> = Api::namespaced(deployer.clone(), &namespace);
    let read_jobs: Api<Job> = Api::namespaced(reader.clone(), &namespace);
    create_once(&maps, &decode(config.clone(), "ConfigMap")?, "the test Job's ConfigMap").await?;
    create_once(&jobs, &decode(job.clone(), "Job")?, "the test Job").await?;
    // A ConfigMap of that name made by someone else (the name is predictable) must not feed
    // the test another manifest.
    let mounted = Api::<ConfigMap>::namespaced(reader.clone(), &namespace)
        .get_opt(&name)
        .await
        .map_err(|e| api_error(&format!("reading ConfigMap {name}"), &e))?;
    let want: ConfigMap = decode(config.clone(), "ConfigMap")?;
    if mounted.as_ref().is_some_and(|m| !owned_by(&m.metadata, rem) || m.data != want.data) {
        return Err(StageError::new(
            ErrorCategory::NeedsHuman,
            format!("ConfigMap {namespace}/{name} exists and is not this Remediation's test manifest; delete it"),
        ));
    }

    let give_up = tokio::time::Instant::now() + timeout + GRACE * 2;
    let mut created_again = 0;
    let (mut polls, mut seen) = (0_u32, String::new());
    let outcome = loop {
        let found = read_jobs.get_opt(&name).await.map_err(|e| api_error(&format!("reading Job {name}"), &e))?;
        // Gone, or going (a resumed effect whose earlier run was being cleaned up): start it
        // again once it has gone, a bounded number of times.
        let Some(live) = found.filter(|j| j.metadata.deletion_timestamp.is_none()) else {
            if read_jobs.get_opt(&name).await.ok().flatten().is_none() {
                created_again += 1;
                if created_again > 3 {
                    return Err(StageError::new(
                        ErrorCategory::Transient,
                        format!("Job {namespace}/{name} keeps disappearing"),
                    ));
                }
                create_once(&maps, &decode(config.clone(), "ConfigMap")?, "the test Job's ConfigMap").await?;
                create_once(&jobs, &decode(job.clone(), "Job")?, "the test Job").await?;
            }
            if tokio::time::Instant::now() > give_up {
                return Err(StageError::new(
                    ErrorCategory::Transient,
                    format!("Job {namespace}/{name} is still being deleted from an earlier run"),
                ));
            }
            tokio::select! {
                () = input.cancel.cancelled() => return Err(StageError::new(ErrorCategory::Transient, "cancelled")),
                () = tokio::time::sleep(POLL) => continue,
            }
        };
        if !owned_by(&live.metadata, rem) {
            return Err(StageError::new(
                ErrorCategory::NeedsHuman,
                format!(
                    "Job {namespace}/{name} exists and was not created for this Remediation; delete it or rename the Remediation"
                ),
            ));
        }
        let created = live.metadata.creation_timestamp.as_ref().map_or_else(Timestamp::now, |t| t.0);
        let value = serde_json::to_value(&live).unwrap_or_default();
        match judge(&value, created, timeout, Timestamp::now()) {
            JobState::Running => {}
            state => break state,
        }
        // The log of a running Job, now and then (polls 1, 2, 4, 8, 16, then every 16th): a
        // Job stopped at its deadline loses its Pod, and with it the log of what it was doing.
        polls += 1;
        if polls.is_power_of_two() && polls <= 16 || polls % 16 == 0 {
            let (_, log) = last_words(reader, &namespace, live.metadata.uid.as_deref().unwrap_or_default()).await;
            if !log.trim().is_empty() {
                seen = log;
            }
        }
        tokio::select! {
            () = input.cancel.cancelled() => {
                clean_up(&maps, &jobs, &name).await;
                return Err(StageError::new(ErrorCategory::Transient, "cancelled; the test Job was deleted"));
            }
            () = tokio::time::sleep(POLL) => {}
        }
    };
    let job_uid = read_jobs.get_opt(&name).await.ok().flatten().and_then(|j| j.metadata.uid).unwrap_or_default();
    let (exit_code, log) = last_words(reader, &namespace, &job_uid).await;
    let log = if log.trim().is_empty() { seen } else { log };
    clean_up(&maps, &jobs, &name).await;
    Ok(JobOutcome { name, state: outcome, exit_code, log_tail: tail(&log) })
}

fn decode<K: serde::de::DeserializeOwned>(v: Value, what: &str) -> StageResult<K> {
    serde_json::from_value(v)
        .map_err(|e| StageError::new(ErrorCategory::InvalidSpec, format!("building the {what}: {e}")))
}

/// Creates `object` unless it exists already (a resumed effect).
async fn create_once<K>(api: &Api<K>, object: &K, what: &str) -> StageResult<()>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e @ kube::Error::Api(_)) if matches!(&e, kube::Error::Api(s) if s.code == 403) => Err(StageError::new(
            ErrorCategory::NeedsHuman,
            format!(
                "creating {what}: the deployer may not ({e}); grant it create, get and delete on jobs and configmaps in this namespace"
            ),
        )),
        Err(e) => Err(api_error(&format!("creating {what}"), &e)),
    }
}

/// Whether `meta` names `rem` as its owner (by uid: a label anyone can copy).
fn owned_by(meta: &kube::api::ObjectMeta, rem: &Remediation) -> bool {
    let uid = rem.metadata.uid.as_deref().unwrap_or_default();
    !uid.is_empty() && meta.owner_references.iter().flatten().any(|o| o.uid == uid && o.kind == "Remediation")
}

/// The test container's exit code and log, from the newest Pod of the Job whose uid is
/// `job_uid` (the controller's label, which only the Job controller sets); nothing when there
/// is no Pod or the log cannot be read (the verdict stands on the Job's status alone).
async fn last_words(reader: &kube::Client, namespace: &str, job_uid: &str) -> (Option<i32>, String) {
    if job_uid.is_empty() {
        return (None, String::new());
    }
    let pods: Api<Pod> = Api::namespaced(reader.clone(), namespace);
    let selector = format!("batch.kubernetes.io/controller-uid={job_uid}");
    let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await else {
        return (None, String::new());
    };
    let Some(pod) = list.items.iter().max_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0)) else {
        return (None, String::new());
    };
    let exit = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == "test"))
        .and_then(|c| c.state.as_ref()?.terminated.as_ref())
        .map(|t| t.exit_code);
    let params = LogParams {
        container: Some("test".into()),
        tail_lines: Some(TAIL_LINES as i64 * 2),
        limit_bytes: Some(32 * 1024),
        ..LogParams::default()
    };
    let log = pods.logs(pod.metadata.name.as_deref().unwrap_or_default(), &params).await.unwrap_or_default();
    (exit, log)
}

/// Deletes the Job (its Pods with it) and the ConfigMap; a failure is logged, not fatal: both
/// are owned by the Remediation and go with it, and the Job's TTL removes it after an hour.
async fn clean_up(maps: &Api<ConfigMap>, jobs: &Api<Job>, name: &str) {
    let background =
        DeleteParams { propagation_policy: Some(PropagationPolicy::Background), ..DeleteParams::default() };
    if let Err(e) = jobs.delete(name, &background).await
        && !matches!(&e, kube::Error::Api(s) if s.code == 404)
    {
        tracing::warn!(job = name, error = %e, "could not delete the test Job");
    }
    if let Err(e) = maps.delete(name, &DeleteParams::default()).await
        && !matches!(&e, kube::Error::Api(s) if s.code == 404)
    {
        tracing::warn!(configmap = name, error = %e, "could not delete the test Job's ConfigMap");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::policy::CiEnvVar;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    fn rem() -> Remediation {
        serde_json::from_value(json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Remediation",
            "metadata": {"name": "web.oom-7f2a", "namespace": "shop", "uid": "u-1"},
            "spec": {"policyRef": {"name": "p"}, "alert": {"name": "A", "fingerprint": "f", "startsAt": "2026-01-01T00:00:00Z"}, "target": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}}}))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_job_passes_or_fails_by_its_own_conditions() {
        let t = Duration::from_secs(60);
        let with = |ty: &str, reason: &str| json!({"status": {"conditions": [{"type": ty, "status": "True", "reason": reason}]}});
        assert_eq!(judge(&with("Complete", "x"), ts(0), t, ts(5)), JobState::Passed);
        assert_eq!(judge(&with("SuccessCriteriaMet", "x"), ts(0), t, ts(5)), JobState::Passed);
        assert!(
            matches!(judge(&with("Failed", "BackoffLimitExceeded"), ts(0), t, ts(5)), JobState::Failed(m) if m.contains("BackoffLimitExceeded"))
        );
        assert!(matches!(judge(&with("FailureTarget", "PodFailurePolicy"), ts(0), t, ts(5)), JobState::Failed(_)));
        assert!(
            matches!(judge(&with("Failed", "DeadlineExceeded"), ts(0), t, ts(5)), JobState::Failed(m) if m.contains("longer than its timeout (60s)"))
        );
        let false_complete = json!({"status": {"conditions": [{"type": "Complete", "status": "False"}]}});
        assert_eq!(judge(&false_complete, ts(0), t, ts(5)), JobState::Running);
    }

    #[test]
    fn a_job_that_never_finishes_fails_at_its_timeout_counted_from_its_creation() {
        let t = Duration::from_secs(60);
        assert_eq!(judge(&json!({}), ts(0), t, ts(89)), JobState::Running);
        assert!(
            matches!(judge(&json!({}), ts(0), t, ts(91)), JobState::Failed(m) if m.contains("did not finish within its timeout (60s)"))
        );
    }

    #[test]
    fn the_log_tail_keeps_the_last_lines_without_control_characters() {
        let log: String =
            (0..30).map(|i| format!("line {i}\x1b[31m red\r\n")).collect::<String>() + "\n\n" + &"x".repeat(500);
        let kept = tail(&log);
        assert_eq!(kept.len(), TAIL_LINES);
        assert_eq!(kept[0], "line 11 [31m red");
        assert!(kept.iter().all(|l| !l.chars().any(char::is_control)));
        assert_eq!(kept[TAIL_LINES - 1].chars().count(), MAX_LINE + 1);
    }

    #[test]
    fn the_job_is_named_per_effect_and_proposal_and_runs_restricted() {
        let r = rem();
        let name = job_name(&r, 1, "sha256:aa");
        assert!(name.starts_with("web-oom-7f2a-ci-") && name.len() <= 63, "{name}");
        assert_ne!(name, job_name(&r, 2, "sha256:aa"));
        assert_ne!(name, job_name(&r, 1, "sha256:bb"));
        let spec = CiJobSpec {
            image: "registry.example/kubeconform:1".into(),
            command: vec!["kubeconform".into(), "/reflex/manifest.yaml".into()],
            env: vec![CiEnvVar { name: "STRICT".into(), value: "1".into() }],
            timeout: crate::api::DurationString::new("2m"),
        };
        let (config, job) = objects(
            &r,
            &name,
            &spec,
            Duration::from_secs(120),
            "kind: Deployment\n",
            "kind: Deployment\n",
            "sha256:aa",
        );
        assert_eq!(config["data"]["manifest.yaml"], "kind: Deployment\n");
        assert_eq!(job["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert_eq!(job["spec"]["activeDeadlineSeconds"], 120);
        assert_eq!(job["spec"]["backoffLimit"], 0);
        let pod = &job["spec"]["template"]["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        let c = &pod["containers"][0];
        assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
        assert_eq!(c["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
        assert!(c["env"].as_array().is_some_and(|e| e.iter().any(|v| v["name"] == "STRICT" && v["value"] == "1")));
        assert_eq!(pod["volumes"][0]["configMap"]["name"], json!(name));
    }
}
