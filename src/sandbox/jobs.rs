//! The Job controller and the kubelet's part for Jobs' Pods: enough to run a test Job to
//! success, failure or a hang, as the scenario says.
//!
//! Contract: a Job that has not finished gets one Pod at a time (labels `job-name`,
//! `batch.kubernetes.io/job-name`, `controller-uid`; owned by the Job) until one succeeds or
//! more than `backoffLimit` fail. A Pod starts Running at once, its container "prints" the
//! scenario's log lines (readable through `pods/log`), and after the scenario's time it
//! terminates with exit code 0 (`Succeeded`) or the scenario's code (`Failed`) — or never, for
//! a hang. Job status follows the real controller: `startTime`, `active`, `succeeded`,
//! `failed`; `SuccessCriteriaMet` then `Complete` with `completionTime`; `FailureTarget` then
//! `Failed` with reason `BackoffLimitExceeded`, or `DeadlineExceeded` once
//! `activeDeadlineSeconds` pass (its running Pods are deleted).

use std::time::Duration;

use serde_json::{Value, json};

use super::api::Api;
use super::meta::now;
use super::status::ApiError;
use super::store::name_of;
use super::workload::{Kubelet, ctx, ctx_at, int, list, owned_by, owner_ref, put_status, template_hash, uid};

/// How one Job's Pod ends.
#[derive(Clone, Debug, PartialEq)]
pub enum JobRun {
    /// Exits 0 after `after`, having printed `log`.
    Succeed { after: Duration, log: Vec<String> },
    /// Exits with `code` after `after`, having printed `log`.
    Fail { after: Duration, code: i32, log: Vec<String> },
    /// Prints `log` and runs until it is stopped.
    Hang { log: Vec<String> },
}

/// What a scenario says about Jobs.
pub trait JobModel: Send + Sync {
    /// How `job`'s Pods end. Must be stable for one Job.
    fn run(&self, job: &Value) -> JobRun;
}

/// Whether `pod` belongs to a Job (the Job controller here runs it, not the default kubelet).
pub fn runs_a_job(pod: &Value) -> bool {
    pod.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .is_some_and(|r| r.iter().any(|r| r.get("kind").and_then(Value::as_str) == Some("Job")))
}

fn condition(status: &Value, ty: &str) -> bool {
    status.get("conditions").and_then(Value::as_array).is_some_and(|c| {
        c.iter().any(|c| {
            c.get("type").and_then(Value::as_str) == Some(ty) && c.get("status").and_then(Value::as_str) == Some("True")
        })
    })
}

fn finished(job: &Value) -> bool {
    let status = job.get("status").cloned().unwrap_or(json!({}));
    condition(&status, "Complete") || condition(&status, "Failed")
}

fn seconds_since(t: Option<&str>, now_ts: jiff::Timestamp) -> Option<Duration> {
    let t: jiff::Timestamp = t?.parse().ok()?;
    Some(now_ts.duration_since(t).unsigned_abs())
}

fn phase(pod: &Value) -> &str {
    pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Pending")
}

/// One pass over a namespace's Jobs and their Pods; returns when to come back, if anything
/// is due to change by the clock.
pub fn reconcile(api: &Api, ns: &str, kubelet: &Kubelet) -> Result<Option<Duration>, ApiError> {
    let Some(jw) = ctx_at(api, "batch", "v1", "jobs", ns) else { return Ok(None) };
    let Some(pw) = ctx(api, "pods", "", ns) else { return Ok(None) };
    let mut wake: Option<Duration> = None;
    let mut at = |d: Duration| wake = Some(wake.map_or(d, |w: Duration| w.min(d)));
    let now_ts = jiff::Timestamp::now();
    for job in list(api, "batch", "jobs", ns) {
        if job.pointer("/metadata/deletionTimestamp").is_some() || finished(&job) {
            continue;
        }
        let run = kubelet
            .jobs
            .as_ref()
            .map_or(JobRun::Succeed { after: kubelet.ready_after, log: Vec::new() }, |m| m.run(&job));
        let all_pods = list(api, "", "pods", ns);
        let pods: Vec<Value> = owned_by(&all_pods, uid(&job)).into_iter().cloned().collect();
        let backoff_limit = job.pointer("/spec/backoffLimit").and_then(Value::as_i64).unwrap_or(6);
        // The kubelet: start each Pod, print its log, end it when the scenario says.
        for pod in &pods {
            match phase(pod) {
                "Succeeded" | "Failed" => continue,
                "Running" => {}
                _ => {
                    start(api, &pw, pod, &run)?;
                    continue;
                }
            }
            let ran_for =
                seconds_since(pod.pointer("/status/startTime").and_then(Value::as_str), now_ts).unwrap_or_default();
            let (after, code) = match &run {
                JobRun::Succeed { after, .. } => (*after, 0),
                JobRun::Fail { after, code, .. } => (*after, *code),
                JobRun::Hang { .. } => continue,
            };
            if ran_for < after {
                at(after - ran_for);
                continue;
            }
            let t = now();
            let container = pod.pointer("/spec/containers/0/name").cloned().unwrap_or(json!("main"));
            let mut status = pod.get("status").cloned().unwrap_or(json!({}));
            status["phase"] = json!(if code == 0 { "Succeeded" } else { "Failed" });
            status["containerStatuses"] = json!([{"name": container, "ready": false, "started": false, "restartCount": 0,
                "image": pod.pointer("/spec/containers/0/image"),
                "state": {"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
                    "startedAt": pod.pointer("/status/startTime"), "finishedAt": t}}}]);
            status["conditions"] =
                json!([{"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": t}]);
            put_status(api, &pw, pod, status)?;
        }
        // The Job controller.
        let pods: Vec<Value> = owned_by(&list(api, "", "pods", ns), uid(&job)).into_iter().cloned().collect();
        let succeeded = pods.iter().filter(|p| phase(p) == "Succeeded").count() as i64;
        let failed = pods.iter().filter(|p| phase(p) == "Failed").count() as i64;
        let active: Vec<&Value> = pods.iter().filter(|p| !matches!(phase(p), "Succeeded" | "Failed")).collect();
        let old = job.get("status").cloned().unwrap_or(json!({}));
        let t = now();
        let start_time = old.get("startTime").cloned().unwrap_or(json!(t));
        let deadline = job.pointer("/spec/activeDeadlineSeconds").and_then(Value::as_u64).map(Duration::from_secs);
        let running_for = seconds_since(start_time.as_str(), now_ts).unwrap_or_default();
        let cond = |ty: &str, reason: &str, message: &str| json!({"type": ty, "status": "True", "reason": reason, "message": message, "lastProbeTime": t, "lastTransitionTime": t});
        let mut status = json!({"startTime": start_time, "active": active.len(), "succeeded": succeeded, "failed": failed,
            "ready": 0, "terminating": 0});
        if succeeded >= int(&job, "/spec/completions").max(1) {
            status["completionTime"] = json!(t);
            status["active"] = json!(0);
            status["conditions"] = json!([
                cond("SuccessCriteriaMet", "CompletionsReached", "Reached expected number of succeeded pods"),
                cond("Complete", "CompletionsReached", "Reached expected number of succeeded pods")
            ]);
        } else if failed > backoff_limit {
            status["conditions"] = json!([
                cond("FailureTarget", "BackoffLimitExceeded", "Job has reached the specified backoff limit"),
                cond("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
            ]);
        } else if let Some(deadline) = deadline.filter(|d| running_for >= *d) {
            for pod in &active {
                match api.delete(&pw, name_of(pod), &Default::default()) {
                    Ok(_) | Err(ApiError { code: 404, .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            status["active"] = json!(0);
            let message = format!("Job was active longer than specified deadline ({}s)", deadline.as_secs());
            status["conditions"] = json!([
                cond("FailureTarget", "DeadlineExceeded", &message),
                cond("Failed", "DeadlineExceeded", &message)
            ]);
        } else {
            if let Some(deadline) = deadline {
                at(deadline - running_for);
            }
            if active.is_empty() {
                create_pod(api, &pw, &job, ns)?;
                status["active"] = json!(1);
            }
        }
        put_status(api, &jw, &job, status)?;
    }
    Ok(wake)
}

fn create_pod(api: &Api, pw: &super::api::WriteCtx, job: &Value, ns: &str) -> Result<(), ApiError> {
    let template = job.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let suffix = template_hash(&json!([uid(job), now(), uuid::Uuid::new_v4().to_string()]));
    let mut labels = template.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
    for key in ["job-name", "batch.kubernetes.io/job-name"] {
        labels[key] = json!(name_of(job));
    }
    for key in ["controller-uid", "batch.kubernetes.io/controller-uid"] {
        labels[key] = json!(uid(job));
    }
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {
        "name": format!("{}-{}", name_of(job), &suffix[..5]), "namespace": ns, "labels": labels,
        "ownerReferences": owner_ref("batch/v1", "Job", job)},
        "spec": template.get("spec").cloned().unwrap_or(json!({}))});
    api.create(pw, pod).map(|_| ())
}

/// The container starts: Running, and its log lines are "printed".
fn start(api: &Api, pw: &super::api::WriteCtx, pod: &Value, run: &JobRun) -> Result<(), ApiError> {
    let t = now();
    let container = pod.pointer("/spec/containers/0/name").and_then(Value::as_str).unwrap_or("main");
    let log = match run {
        JobRun::Succeed { log, .. } | JobRun::Fail { log, .. } | JobRun::Hang { log } => log,
    };
    let at = jiff::Timestamp::now();
    for line in log {
        api.logs.append(super::store::ns_of(pod), name_of(pod), container, at, line);
    }
    let status = json!({"phase": "Running", "startTime": t, "podIP": "10.0.0.2",
        "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": t}],
        "containerStatuses": [{"name": container, "ready": true, "started": true, "restartCount": 0,
            "image": pod.pointer("/spec/containers/0/image"), "state": {"running": {"startedAt": t}}}]});
    put_status(api, pw, pod, status)
}
