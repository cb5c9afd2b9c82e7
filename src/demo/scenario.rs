//! Demo scenarios: data, not code paths. A scenario names the playbooks it uses, the
//! resources to apply, the model standing in for the kubelet and Prometheus, the alert to
//! fire, and the phase it expects. The built-in ones are compiled in from `scenarios/` and
//! `playbooks/`; `--scenario-file` reads another one from disk.
//!
//! Contract: [`Scenario::parse`] rejects unknown fields and missing parts with a message that
//! names them; [`Scenario::documents`] returns every manifest to apply, playbooks first.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use crate::api::quantity::parse_quantity;
use crate::api::remediation::Phase;

/// The scenarios that ship with Reflex.
pub const BUILT_IN: &[(&str, &str)] = &[
    ("oom", include_str!("../../scenarios/oom.yaml")),
    ("bad-fix", include_str!("../../scenarios/bad-fix.yaml")),
    ("llm", include_str!("../../scenarios/llm.yaml")),
    ("saturation", include_str!("../../scenarios/saturation.yaml")),
    ("leak", include_str!("../../scenarios/leak.yaml")),
    ("bad-rollout", include_str!("../../scenarios/bad-rollout.yaml")),
    ("pool", include_str!("../../scenarios/pool.yaml")),
    ("known-bug", include_str!("../../scenarios/known-bug.yaml")),
    ("hpa-saturation", include_str!("../../scenarios/hpa-saturation.yaml")),
    ("production", include_str!("../../scenarios/production.yaml")),
    ("gitops", include_str!("../../scenarios/gitops.yaml")),
    ("cpu-throttling", include_str!("../../scenarios/cpu-throttling.yaml")),
    ("crashloop", include_str!("../../scenarios/crashloop.yaml")),
    ("hpa-maxed-out", include_str!("../../scenarios/hpa-maxed-out.yaml")),
    ("crashloop-new-revision", include_str!("../../scenarios/crashloop-new-revision.yaml")),
    ("rollout-stuck", include_str!("../../scenarios/rollout-stuck.yaml")),
    ("job-failed", include_str!("../../scenarios/job-failed.yaml")),
    ("a2a", include_str!("../../scenarios/a2a.yaml")),
];

/// The playbooks that ship with Reflex.
pub const PLAYBOOKS: &[(&str, &str)] = &[
    ("raise-memory-limit", include_str!("../../playbooks/raise-memory-limit.yaml")),
    ("raise-memory-limit-timid", include_str!("../../playbooks/raise-memory-limit-timid.yaml")),
    ("scale-out-on-saturation", include_str!("../../playbooks/scale-out-on-saturation.yaml")),
    ("restart-on-leak", include_str!("../../playbooks/restart-on-leak.yaml")),
    ("rollback-bad-rollout", include_str!("../../playbooks/rollback-bad-rollout.yaml")),
    ("tune-config-parameter", include_str!("../../playbooks/tune-config-parameter.yaml")),
    ("image-bump", include_str!("../../playbooks/image-bump.yaml")),
    ("raise-hpa-max-on-saturation", include_str!("../../playbooks/raise-hpa-max-on-saturation.yaml")),
    ("raise-cpu-limit", include_str!("../../playbooks/raise-cpu-limit.yaml")),
    ("raise-memory-limit-if-oom-killed", include_str!("../../playbooks/raise-memory-limit-if-oom-killed.yaml")),
    ("rollback-new-revision", include_str!("../../playbooks/rollback-new-revision.yaml")),
    ("diagnose-failed-job", include_str!("../../playbooks/diagnose-failed-job.yaml")),
];

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub phase: Phase,
}

/// A modelled workload: its container's working set and how often it is OOM-killed while
/// its memory limit is below that.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Workload {
    pub namespace: String,
    pub deployment: String,
    pub container: String,
    pub working_set: String,
    pub restart_every: crate::api::duration::DurationString,
    /// Demand in replicas' worth of work (for `saturation`): saturation is load / replicas;
    /// or in units of a configured capacity (for `configSaturation`).
    #[serde(default)]
    pub load: Option<f64>,
    /// The CPU the container would use unthrottled (a quantity, e.g. `800m`), for the
    /// CPU-throttling series.
    #[serde(default)]
    pub cpu_demand: Option<String>,
    /// A memory leak: each Pod's working set grows by this much per hour of its life.
    #[serde(default)]
    pub leak_per_hour: Option<String>,
    /// How long the Pods running when the scenario starts (the first pod template seen) had
    /// already been up.
    #[serde(default)]
    pub uptime: Option<crate::api::duration::DurationString>,
    /// Error ratio of Pods running each image; other images serve at 0.001.
    #[serde(default)]
    pub error_rates: BTreeMap<String, f64>,
    /// Images whose container exits 1 at start (a bad release): its Pods crash-loop every
    /// `restartEvery`, last state `Error`, whatever their memory.
    #[serde(default)]
    pub crashing_images: Vec<String>,
}

/// A query the metrics model answers, and what from.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Series {
    pub query: String,
    pub deployment: String,
    pub value: SeriesValue,
    #[serde(default)]
    pub window: Option<crate::api::duration::DurationString>,
    /// For `configSaturation`: the ConfigMap key holding the capacity.
    #[serde(default)]
    pub config: Option<ConfigKey>,
    /// For `hpaSaturation`: the HorizontalPodAutoscaler whose maxReplicas caps the workload.
    #[serde(default)]
    pub hpa: Option<String>,
    /// For `jobFailedPods`: the Job.
    #[serde(default)]
    pub job: Option<String>,
}

/// A ConfigMap key in the workload's namespace.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigKey {
    pub name: String,
    pub key: String,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum SeriesValue {
    /// The workload's working set in bytes: its largest Pod's, when it leaks.
    WorkingSet,
    /// How fast the working set grows, in bytes per second.
    MemoryGrowth,
    /// The share of requests that fail, averaged over the Pods by the image each runs.
    ErrorRate,
    /// The workload's `load` divided by the number in the series' ConfigMap key.
    ConfigSaturation,
    /// The workload's `load` (replicas' worth at the HPA's target) divided by the series'
    /// HorizontalPodAutoscaler's maxReplicas: how far past its ceiling the HPA would scale.
    HpaSaturation,
    /// OOM kills of the workload's container within `window`.
    OomKills,
    /// The workload's `load` divided by its Deployment's current replicas.
    Saturation,
    /// The share of its container's CFS periods throttled: 1 − its CPU limit ÷ its
    /// `cpuDemand`, at least 0 (read from the Deployment's template as it is now).
    CpuThrottling,
    /// Restarts of the workload's container within `window`, whatever the cause.
    Restarts,
    /// 1 when the workload's container was OOM-killed within `window`; no data otherwise
    /// (as `max(… last_terminated_reason{reason="OOMKilled"} …)` answers).
    OomKilled,
    /// 1 when it was not OOM-killed within `window`; no data otherwise (as `absent(…)`).
    NotOomKilled,
    /// The series' Job's failed Pods (`status.failed`).
    JobFailedPods,
    /// Seconds since the Deployment's newest ReplicaSet that runs Pods was created, when
    /// under an hour; no data otherwise (as `time() - max(kube_replicaset_created …) < 3600`).
    RevisionAge,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    pub workloads: Vec<Workload>,
    pub series: Vec<Series>,
    /// Jobs whose Pods fail (the sandbox's Job controller runs them); others succeed.
    #[serde(default)]
    pub jobs: Vec<FailingJob>,
}

/// A Job whose Pods exit non-zero.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FailingJob {
    pub name: String,
    pub exit_code: i32,
    /// What each Pod prints before it exits.
    #[serde(default)]
    pub log: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertSpec {
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    pub playbooks: Vec<String>,
    pub expect: Expect,
    pub resources: String,
    /// Manifests applied once the resources have rolled out: a new revision (a release).
    #[serde(default)]
    pub rollout: Option<String>,
    pub model: Model,
    pub alert: AlertSpec,
    /// An LLM-driven scenario: the script the stand-in model replays. `${LLM_ENDPOINT}` in
    /// the resources becomes the stand-in's URL.
    #[serde(default)]
    pub llm: Option<LlmScript>,
    /// A scenario whose change waits for a person: who approves it (a user of the demo's
    /// RBAC table), and who first tries to approve in their name.
    #[serde(default)]
    pub approval: Option<ApprovalScript>,
    /// A GitOps scenario: the repository the cluster is synced from. `${GITOPS_REPOSITORY}`,
    /// `${FORGE_API}` and `${FORGE_URL}` in the resources become the local repository, the
    /// forge stand-in's API and its address.
    #[serde(default)]
    pub gitops: Option<GitopsScript>,
    /// A scenario with another agent Reflex discovers and delegates to: the A2A peer
    /// stand-in's skill and the findings it answers with. `${PEER_PORT}` in the resources
    /// becomes its port (the annotated Service's).
    #[serde(default)]
    pub peer: Option<PeerScript>,
}

/// The other agent of an A2A scenario.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerScript {
    pub skill: String,
    pub findings: Vec<String>,
}

/// The repository of a GitOps scenario: its files, and the forge that hosts it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GitopsScript {
    /// `github` or `gitlab`: which API the forge stand-in is spoken to with.
    pub forge: String,
    /// The files on `main`: path → content.
    pub files: BTreeMap<String, String>,
    /// The namespace the GitOps controller stand-in applies them to.
    pub namespace: String,
}

/// The people of a scenario that waits for approval.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApprovalScript {
    /// Approves, as themselves (as `kubectl reflex approve` does).
    pub approver: String,
    /// Creates an approval naming the approver first; the admission policy refuses it.
    #[serde(default)]
    pub forger: Option<String>,
}

/// What the stand-in model answers, turn by turn (see [`super::standin`]), and the price the
/// run is charged at.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LlmScript {
    pub model: String,
    pub price: crate::agent::llm::Price,
    pub turns: Vec<Value>,
}

impl Scenario {
    /// A built-in scenario by name.
    pub fn built_in(name: &str) -> Result<Self, String> {
        let (_, text) = BUILT_IN.iter().find(|(n, _)| *n == name).ok_or_else(|| {
            format!(
                "no scenario {name:?}; built in: {}",
                BUILT_IN.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
            )
        })?;
        Self::parse(text)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let s: Scenario = serde_saphyr::from_str(text).map_err(|e| format!("scenario: {e}"))?;
        for w in &s.model.workloads {
            parse_quantity(&w.working_set).map_err(|e| format!("scenario model {}: workingSet: {e}", w.deployment))?;
        }
        for w in &s.model.workloads {
            if let Some(leak) = &w.leak_per_hour {
                parse_quantity(leak).map_err(|e| format!("scenario model {}: leakPerHour: {e}", w.deployment))?;
            }
        }
        for q in &s.model.series {
            if q.value == SeriesValue::ConfigSaturation && q.config.is_none() {
                return Err(format!("scenario model: series {:?} is configSaturation but names no config", q.query));
            }
            if q.value == SeriesValue::HpaSaturation && q.hpa.is_none() {
                return Err(format!("scenario model: series {:?} is hpaSaturation but names no hpa", q.query));
            }
            if !s.model.workloads.iter().any(|w| w.deployment == q.deployment) {
                return Err(format!(
                    "scenario model: series {:?} names deployment {:?}, which is not modelled",
                    q.query, q.deployment
                ));
            }
        }
        if !s.alert.labels.contains_key("alertname") {
            return Err("scenario alert: labels need an alertname".into());
        }
        Ok(s)
    }

    /// The manifests of the scenario's later rollout, if it has one.
    pub fn rollout_documents(&self) -> Result<Vec<Value>, String> {
        let Some(text) = &self.rollout else { return Ok(Vec::new()) };
        let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| format!("scenario rollout: {e}"))?;
        Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
    }

    /// Every manifest to apply: the playbooks (into the namespace of the first resource that
    /// has one), then the scenario's resources.
    pub fn documents(&self) -> Result<Vec<Value>, String> {
        let resources: Vec<Value> =
            serde_saphyr::from_multiple(&self.resources).map_err(|e| format!("scenario resources: {e}"))?;
        let resources: Vec<Value> = resources.into_iter().filter(|d| !d.is_null()).collect();
        let namespace = resources
            .iter()
            .find_map(|d| d.pointer("/metadata/namespace").and_then(Value::as_str))
            .ok_or("scenario resources: nothing names a namespace")?
            .to_owned();
        let mut docs = Vec::new();
        for name in &self.playbooks {
            let (_, text) = PLAYBOOKS
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| format!("no playbook {name:?} in playbooks/"))?;
            let mut pb: Value = serde_saphyr::from_str(text).map_err(|e| format!("playbooks/{name}.yaml: {e}"))?;
            pb["metadata"]["namespace"] = Value::String(namespace.clone());
            docs.push(pb);
        }
        // Namespaces first, so the playbooks have somewhere to go.
        let (namespaces, rest): (Vec<Value>, Vec<Value>) =
            resources.into_iter().partition(|d| d.get("kind") == Some(&Value::String("Namespace".into())));
        Ok(namespaces.into_iter().chain(docs).chain(rest).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_scenarios_parse_and_expand() {
        for (name, _) in BUILT_IN {
            let s = Scenario::built_in(name).unwrap();
            let docs = s.documents().unwrap();
            let kinds: Vec<&str> = docs.iter().filter_map(|d| d.get("kind").and_then(Value::as_str)).collect();
            let expected: &[&str] = if *name == "pool" {
                &["Namespace", "Playbook", "ConfigMap", "Deployment", "RemediationPolicy"]
            } else if *name == "gitops" {
                // The Deployment is in the repository; the GitOps controller stand-in applies it.
                &["Namespace", "Playbook", "Secret", "RemediationPolicy"]
            } else if *name == "job-failed" {
                &["Namespace", "Playbook", "Deployment", "Job", "RemediationPolicy"]
            } else if *name == "a2a" {
                &["Namespace", "Playbook", "Deployment", "Service", "RemediationPolicy"]
            } else if *name == "hpa-saturation" || *name == "hpa-maxed-out" {
                &["Namespace", "Playbook", "Deployment", "HorizontalPodAutoscaler", "RemediationPolicy"]
            } else {
                &["Namespace", "Playbook", "Deployment", "RemediationPolicy"]
            };
            assert_eq!(kinds, expected, "{name}");
            assert_eq!(docs[1].pointer("/metadata/namespace").and_then(Value::as_str), Some("shop"));
        }
        assert_eq!(Scenario::built_in("oom").unwrap().expect.phase, Phase::Succeeded);
        assert_eq!(Scenario::built_in("bad-fix").unwrap().expect.phase, Phase::RolledBack);
        assert!(Scenario::built_in("nope").unwrap_err().contains("built in: oom, bad-fix"));
    }

    #[test]
    fn bad_scenarios_are_named() {
        let text = BUILT_IN[0].1.replace("workingSet: 200Mi", "workingSet: lots");
        assert!(Scenario::parse(&text).unwrap_err().contains("workingSet"));
        let text = BUILT_IN[0].1.replace("name: oom", "name: oom\nextra: 1");
        assert!(Scenario::parse(&text).unwrap_err().contains("extra"));
    }
}
