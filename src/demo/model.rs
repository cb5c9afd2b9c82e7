//! The demo's stand-in for the kubelet's OOM killer and for Prometheus, driven by the
//! sandbox's state — never by a script of what should happen.
//!
//! Contract: a Pod of a modelled workload whose container memory limit is below the working
//! set is OOM-killed every `restartEvery` (restart count, `OOMKilled` last state,
//! `CrashLoopBackOff`, not ready); once a rollout gives it a limit at or above the working set,
//! its Pods are healthy. The metrics side answers exactly the queries the scenario binds —
//! the working set, OOM kills within a window counted from the Pods' recorded lives, and
//! saturation (the workload's load over its Deployment's current replicas) — and rejects any
//! other query by saying what it models.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;
use serde_json::{Value, json};

use super::scenario::{Model, SeriesValue};
use crate::api::quantity::parse_quantity;
use crate::metrics::{MetricsError, MetricsSource};
use crate::sandbox::api::{Api, ListOptions};
use crate::sandbox::workload::PodModel;

#[derive(Clone, Debug)]
struct Workload {
    namespace: String,
    deployment: String,
    container: String,
    working_set: f64,
    every: Duration,
    load: Option<f64>,
    /// Bytes per second each Pod's working set grows by.
    leak: Option<f64>,
    /// Cores the container would use unthrottled.
    cpu_demand: Option<f64>,
    uptime: Duration,
    error_rates: std::collections::BTreeMap<String, f64>,
    crashing_images: Vec<String>,
}

/// Error ratio of a Pod running an image the scenario does not name.
const HEALTHY_ERROR_RATE: f64 = 0.001;

/// What the model remembers of a Pod's life.
#[derive(Clone, Copy, Debug)]
struct Life {
    created: Timestamp,
    oom: bool,
    /// Its image exits 1 at start (and it is not OOM-killed first).
    crash: bool,
    last_seen: Timestamp,
}

impl Life {
    fn restarts(&self) -> bool {
        self.oom || self.crash
    }
}

pub struct OomModel {
    workloads: Vec<Workload>,
    model: Model,
    /// The sandbox, attached once it runs (the model is handed to it before it starts).
    api: std::sync::OnceLock<Arc<Api>>,
    lives: Mutex<HashMap<String, (String, Life)>>,
    /// Each workload's first pod template (`pod-template-hash`) seen: its Pods are `uptime` old.
    first_template: Mutex<HashMap<String, String>>,
}

use crate::metrics::normalize_query as normalize;

impl OomModel {
    /// Attach the sandbox whose Pods the metrics side reads.
    pub fn attach(&self, api: Arc<Api>) {
        let _ = self.api.set(api);
    }

    pub fn new(model: &Model) -> Result<Self, String> {
        let workloads = model
            .workloads
            .iter()
            .map(|w| {
                Ok(Workload {
                    namespace: w.namespace.clone(),
                    deployment: w.deployment.clone(),
                    container: w.container.clone(),
                    working_set: parse_quantity(&w.working_set).map_err(|e| e.to_string())?,
                    every: w.restart_every.parse().map_err(|e| e.to_string())?.max(Duration::from_millis(100)),
                    load: w.load,
                    leak: w
                        .leak_per_hour
                        .as_deref()
                        .map(|q| parse_quantity(q).map(|b| b / 3600.0))
                        .transpose()
                        .map_err(|e| e.to_string())?,
                    uptime: w.uptime.as_ref().map_or(Ok(Duration::ZERO), |d| d.parse()).map_err(|e| e.to_string())?,
                    error_rates: w.error_rates.clone(),
                    crashing_images: w.crashing_images.clone(),
                    cpu_demand: w.cpu_demand.as_deref().map(parse_quantity).transpose().map_err(|e| e.to_string())?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Self {
            workloads,
            model: model.clone(),
            api: std::sync::OnceLock::new(),
            lives: Mutex::default(),
            first_template: Mutex::default(),
        })
    }

    fn api(&self) -> Result<&Arc<Api>, MetricsError> {
        self.api.get().ok_or_else(|| MetricsError::Unavailable("the sandbox is not running".into()))
    }

    /// The sandbox and one of its resources.
    fn resource(
        &self,
        group: &str,
        version: &str,
        resource: &str,
    ) -> Result<(&Arc<Api>, Arc<crate::sandbox::resources::ResourceType>), MetricsError> {
        let api = self.api()?;
        let rt = api
            .store
            .registry()
            .find(group, version, resource)
            .ok_or_else(|| MetricsError::Unavailable(format!("the sandbox serves no {resource}")))?;
        Ok((api, rt))
    }

    /// Objects of a resource in `namespace` from the sandbox.
    fn list(&self, group: &str, version: &str, resource: &str, namespace: &str) -> Result<Vec<Value>, MetricsError> {
        let (api, rt) = self.resource(group, version, resource)?;
        let list = api
            .list(&rt, Some(namespace), &ListOptions::default())
            .map_err(|e| MetricsError::Unavailable(e.to_string()))?;
        Ok(list.get("items").and_then(Value::as_array).cloned().unwrap_or_default())
    }

    /// The workload's Pods (not being deleted).
    fn pods(&self, w: &Workload) -> Result<Vec<Value>, MetricsError> {
        Ok(self
            .list("", "v1", "pods", &w.namespace)?
            .into_iter()
            .filter(|p| self.workload_of(p).is_some_and(|pw| pw.deployment == w.deployment))
            .filter(|p| p.pointer("/metadata/deletionTimestamp").is_none())
            .collect())
    }

    /// An object of a resource in `namespace` by name, from the sandbox.
    fn named(
        &self,
        (group, version, resource): (&str, &str, &str),
        namespace: &str,
        name: &str,
    ) -> Result<Option<Value>, MetricsError> {
        let (api, rt) = self.resource(group, version, resource)?;
        match api.get(&rt, namespace, name) {
            Ok(o) => Ok(Some(o)),
            Err(e) if e.code == 404 => Ok(None),
            Err(e) => Err(MetricsError::Unavailable(e.message)),
        }
    }

    /// The workload's Deployment as the sandbox has it.
    fn deployment(&self, w: &Workload) -> Result<Value, MetricsError> {
        self.named(("apps", "v1", "deployments"), &w.namespace, &w.deployment)?
            .ok_or_else(|| MetricsError::Unavailable(format!("no Deployment {}/{}", w.namespace, w.deployment)))
    }

    /// The workload's demand, for the saturation series.
    fn load(w: &Workload) -> Result<f64, MetricsError> {
        w.load.ok_or_else(|| MetricsError::Rejected(format!("the modelled workload {} has no load", w.deployment)))
    }

    /// How long a Pod has been up: since it was created, plus the scenario's `uptime` for the
    /// Pods of the first pod template seen (those running when the scenario began).
    fn age(&self, w: &Workload, pod: &Value, now: Timestamp) -> Duration {
        let created = pod
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)
            .and_then(|t| t.parse::<Timestamp>().ok());
        let lived =
            created.map_or(Duration::ZERO, |c| Duration::try_from(now.duration_since(c)).unwrap_or(Duration::ZERO));
        let hash = pod.pointer("/metadata/labels/pod-template-hash").and_then(Value::as_str).unwrap_or_default();
        let mut first = self.first_template.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let first = first.entry(w.deployment.clone()).or_insert_with(|| hash.to_owned());
        if *first == hash { lived + w.uptime } else { lived }
    }

    /// The image a Pod runs in the modelled container.
    fn image_of<'a>(w: &Workload, spec: &'a Value) -> Option<&'a str> {
        spec.get("containers")
            .and_then(Value::as_array)?
            .iter()
            .find(|c| c.get("name").and_then(Value::as_str) == Some(&w.container))?
            .get("image")
            .and_then(Value::as_str)
    }

    fn workload_of(&self, pod: &Value) -> Option<&Workload> {
        let ns = pod.pointer("/metadata/namespace").and_then(Value::as_str)?;
        let name = pod.pointer("/metadata/name").and_then(Value::as_str)?;
        self.workloads.iter().find(|w| w.namespace == ns && name.starts_with(&format!("{}-", w.deployment)))
    }

    /// Is this Pod's container limited below the working set?
    fn ooms(w: &Workload, pod: &Value) -> bool {
        let limit = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .and_then(|cs| cs.iter().find(|c| c.get("name").and_then(Value::as_str) == Some(&w.container)))
            .and_then(|c| c.pointer("/resources/limits/memory"))
            .and_then(Value::as_str)
            .and_then(|q| parse_quantity(q).ok());
        limit.is_some_and(|l| l < w.working_set)
    }

    fn remember(&self, w: &Workload, pod: &Value, now: Timestamp) -> Option<Life> {
        let uid = pod.pointer("/metadata/uid").and_then(Value::as_str)?.to_owned();
        let created = pod.pointer("/metadata/creationTimestamp").and_then(Value::as_str)?.parse::<Timestamp>().ok()?;
        let oom = Self::ooms(w, pod);
        let crash = !oom
            && pod
                .get("spec")
                .and_then(|s| Self::image_of(w, s))
                .is_some_and(|i| w.crashing_images.iter().any(|c| c == i));
        let life = Life { created, oom, crash, last_seen: now };
        let mut lives = self.lives.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        lives.insert(uid, (w.deployment.clone(), life));
        Some(life)
    }

    /// Restarts of `life` between `from` and `to`: OOM kills only, or (`any`) every restart.
    fn restarts_in(life: &Life, every: Duration, from: Timestamp, to: Timestamp, any: bool) -> u64 {
        if !(life.oom || (any && life.crash)) {
            return 0;
        }
        let end = to.min(life.last_seen);
        let count = |t: Timestamp| -> u64 {
            let since = t.duration_since(life.created).as_secs_f64().max(0.0);
            (since / every.as_secs_f64()).floor() as u64
        };
        if end <= from { 0 } else { count(end).saturating_sub(count(from.max(life.created))) }
    }
}

impl PodModel for OomModel {
    fn status(&self, pod: &Value, now: Timestamp) -> Option<(Value, Option<Duration>)> {
        let w = self.workload_of(pod)?;
        let life = self.remember(w, pod, now)?;
        if !life.restarts() {
            return None;
        }
        let (reason, code) = if life.oom { ("OOMKilled", 137) } else { ("Error", 1) };
        let age = now.duration_since(life.created).as_secs_f64().max(0.0);
        let every = w.every.as_secs_f64();
        let restarts = (age / every).floor() as u64;
        let next = Duration::from_secs_f64(every - (age % every)).max(Duration::from_millis(10));
        let started = pod.pointer("/metadata/creationTimestamp").cloned().unwrap_or(Value::Null);
        let statuses: Vec<Value> = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| {
                let name = c.get("name").cloned().unwrap_or(Value::Null);
                if name.as_str() == Some(&w.container) {
                    let mut s = json!({"name": name, "image": c.get("image"), "ready": false, "started": false, "restartCount": restarts,
                        "state": if restarts == 0 { json!({"running": {"startedAt": started}}) } else {
                            json!({"waiting": {"reason": "CrashLoopBackOff", "message": format!("back-off restarting failed container {} ({reason})", w.container)}}) }});
                    if restarts > 0 {
                        s["lastState"] = json!({"terminated": {"reason": reason, "exitCode": code}});
                    }
                    s
                } else {
                    json!({"name": name, "image": c.get("image"), "ready": true, "started": true, "restartCount": 0, "state": {"running": {"startedAt": started}}})
                }
            })
            .collect();
        let cond = |ty: &str, ok: bool| json!({"type": ty, "status": if ok { "True" } else { "False" }, "lastTransitionTime": started});
        let status = json!({"phase": "Running", "startTime": started, "podIP": "10.0.0.1",
            "conditions": [cond("PodScheduled", true), cond("Initialized", true), cond("ContainersReady", false), cond("Ready", false)],
            "containerStatuses": statuses});
        Some((status, Some(next)))
    }
}

impl crate::sandbox::jobs::JobModel for OomModel {
    fn run(&self, job: &Value) -> crate::sandbox::jobs::JobRun {
        use crate::sandbox::jobs::JobRun;
        let name = job.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        match self.model.jobs.iter().find(|j| j.name == name) {
            Some(j) => JobRun::Fail { after: Duration::from_millis(100), code: j.exit_code, log: j.log.clone() },
            None => JobRun::Succeed { after: Duration::from_millis(100), log: vec![] },
        }
    }
}

impl MetricsSource for OomModel {
    fn instant(&self, query: &str) -> BoxFuture<'_, Result<Option<f64>, MetricsError>> {
        let wanted = normalize(query);
        let query = query.to_owned();
        Box::pin(async move {
            let Some(series) = self.model.series.iter().find(|s| normalize(&s.query) == wanted) else {
                let known: Vec<&str> = self.model.series.iter().map(|s| s.query.as_str()).collect();
                return Err(MetricsError::Rejected(format!(
                    "the demo's metrics model (a stand-in for Prometheus) has no series for {query:?}; it models: {}",
                    known.join(" | ")
                )));
            };
            let Some(w) = self.workloads.iter().find(|w| w.deployment == series.deployment) else {
                return Err(MetricsError::Rejected(format!("no modelled workload {}", series.deployment)));
            };
            match series.value {
                SeriesValue::WorkingSet => {
                    let Some(leak) = w.leak else { return Ok(Some(w.working_set)) };
                    let now = Timestamp::now();
                    let oldest = self.pods(w)?.iter().map(|p| self.age(w, p, now)).max().unwrap_or(Duration::ZERO);
                    Ok(Some(w.working_set + leak * oldest.as_secs_f64()))
                }
                SeriesValue::MemoryGrowth => Ok(Some(w.leak.unwrap_or(0.0))),
                SeriesValue::ErrorRate => {
                    let rate = |image: Option<&str>| {
                        image.and_then(|i| w.error_rates.get(i)).copied().unwrap_or(HEALTHY_ERROR_RATE)
                    };
                    let pods = self.pods(w)?;
                    if pods.is_empty() {
                        let d = self.deployment(w)?;
                        return Ok(Some(rate(d.pointer("/spec/template/spec").and_then(|s| Self::image_of(w, s)))));
                    }
                    let total: f64 = pods.iter().map(|p| rate(p.get("spec").and_then(|s| Self::image_of(w, s)))).sum();
                    Ok(Some(total / pods.len() as f64))
                }
                SeriesValue::ConfigSaturation => {
                    let load = Self::load(w)?;
                    let key = series
                        .config
                        .as_ref()
                        .ok_or_else(|| MetricsError::Rejected(format!("series {:?} names no config", series.query)))?;
                    let capacity = self
                        .named(("", "v1", "configmaps"), &w.namespace, &key.name)?
                        .and_then(|c| {
                            c.pointer(&format!("/data/{}", key.key)).and_then(Value::as_str).map(str::to_owned)
                        })
                        .and_then(|v| v.trim().parse::<f64>().ok())
                        .filter(|v| *v > 0.0)
                        .ok_or_else(|| {
                            MetricsError::Unavailable(format!(
                                "ConfigMap {}/{} has no positive number at {}",
                                w.namespace, key.name, key.key
                            ))
                        })?;
                    Ok(Some(load / capacity))
                }
                SeriesValue::HpaSaturation => {
                    let load = Self::load(w)?;
                    let name = series
                        .hpa
                        .as_deref()
                        .ok_or_else(|| MetricsError::Rejected(format!("series {:?} names no hpa", series.query)))?;
                    let max = self
                        .named(("autoscaling", "v2", "horizontalpodautoscalers"), &w.namespace, name)?
                        .and_then(|h| h.pointer("/spec/maxReplicas").and_then(Value::as_f64))
                        .filter(|m| *m > 0.0)
                        .ok_or_else(|| {
                            MetricsError::Unavailable(format!(
                                "no HorizontalPodAutoscaler {}/{name} with a maxReplicas",
                                w.namespace
                            ))
                        })?;
                    Ok(Some(load / max))
                }
                SeriesValue::CpuThrottling => {
                    let demand = w.cpu_demand.ok_or_else(|| {
                        MetricsError::Rejected(format!("the modelled workload {} has no cpuDemand", w.deployment))
                    })?;
                    let deployment = self.deployment(w)?;
                    let limit = deployment
                        .pointer("/spec/template/spec/containers")
                        .and_then(Value::as_array)
                        .and_then(|cs| cs.iter().find(|c| c.get("name").and_then(Value::as_str) == Some(&w.container)))
                        .and_then(|c| c.pointer("/resources/limits/cpu"))
                        .and_then(Value::as_str)
                        .and_then(|q| parse_quantity(q).ok());
                    Ok(Some(limit.map_or(0.0, |l| (1.0 - l / demand).max(0.0))))
                }
                SeriesValue::Saturation => {
                    let load = Self::load(w)?;
                    let replicas = self.deployment(w)?.pointer("/spec/replicas").and_then(Value::as_f64).unwrap_or(1.0);
                    Ok(Some(load / replicas.max(1.0)))
                }
                SeriesValue::JobFailedPods => {
                    let name = series
                        .job
                        .as_deref()
                        .ok_or_else(|| MetricsError::Rejected(format!("series {:?} names no job", series.query)))?;
                    let job = self.named(("batch", "v1", "jobs"), &w.namespace, name)?;
                    Ok(job.and_then(|j| j.pointer("/status/failed").and_then(Value::as_f64)))
                }
                SeriesValue::RevisionAge => {
                    let now = Timestamp::now();
                    let newest = self
                        .list("apps", "v1", "replicasets", &w.namespace)?
                        .iter()
                        .filter(|rs| {
                            rs.pointer("/metadata/ownerReferences").and_then(Value::as_array).is_some_and(|r| {
                                r.iter().any(|o| {
                                    o.get("kind").and_then(Value::as_str) == Some("Deployment")
                                        && o.get("name").and_then(Value::as_str) == Some(&w.deployment)
                                })
                            })
                        })
                        // Only a ReplicaSet that runs Pods: one a rollback scaled to 0 is history.
                        .filter(|rs| rs.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1) > 0)
                        .filter_map(|rs| {
                            rs.pointer("/metadata/creationTimestamp").and_then(Value::as_str)?.parse::<Timestamp>().ok()
                        })
                        .max();
                    let age = newest.map(|t| now.duration_since(t).as_secs_f64().max(0.0));
                    Ok(age.filter(|a| *a < 3600.0))
                }
                SeriesValue::OomKills | SeriesValue::Restarts | SeriesValue::OomKilled | SeriesValue::NotOomKilled => {
                    let now = Timestamp::now();
                    let api =
                        self.api.get().ok_or_else(|| MetricsError::Unavailable("the sandbox is not running".into()))?;
                    if let Some(rt) = api.store.registry().find("", "v1", "pods") {
                        let pods = api
                            .list(&rt, Some(&w.namespace), &ListOptions::default())
                            .map_err(|e| MetricsError::Unavailable(e.to_string()))?;
                        for pod in pods.get("items").and_then(Value::as_array).into_iter().flatten() {
                            if self.workload_of(pod).is_some_and(|pw| pw.deployment == w.deployment) {
                                self.remember(w, pod, now);
                            }
                        }
                    }
                    let window = series.window.as_ref().and_then(|d| d.parse().ok()).unwrap_or(Duration::from_secs(60));
                    let from = now.checked_sub(window).unwrap_or(now);
                    let lives = self.lives.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let any = series.value == SeriesValue::Restarts;
                    let count: u64 = lives
                        .values()
                        .filter(|(d, _)| *d == w.deployment)
                        .map(|(_, l)| Self::restarts_in(l, w.every, from, now, any))
                        .sum();
                    Ok(match series.value {
                        SeriesValue::OomKilled => (count > 0).then_some(1.0),
                        SeriesValue::NotOomKilled => (count == 0).then_some(1.0),
                        _ => Some(count as f64),
                    })
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(2_000_000_000 + s).unwrap()
    }

    #[test]
    fn kills_are_counted_within_the_window_and_the_pods_life() {
        let every = Duration::from_secs(1);
        let life = Life { created: at(0), oom: true, crash: false, last_seen: at(100) };
        assert_eq!(OomModel::restarts_in(&life, every, at(0), at(10), false), 10);
        assert_eq!(OomModel::restarts_in(&life, every, at(50), at(60), false), 10);
        let gone = Life { last_seen: at(20), ..life };
        assert_eq!(OomModel::restarts_in(&gone, every, at(15), at(25), false), 5, "no kills after the pod is gone");
        assert_eq!(OomModel::restarts_in(&gone, every, at(21), at(31), false), 0);
        let healthy = Life { oom: false, ..life };
        assert_eq!(OomModel::restarts_in(&healthy, every, at(0), at(10), false), 0);
        let crashing = Life { oom: false, crash: true, ..life };
        assert_eq!(OomModel::restarts_in(&crashing, every, at(0), at(10), false), 0, "a crash is not an OOM kill");
        assert_eq!(OomModel::restarts_in(&crashing, every, at(0), at(10), true), 10, "but it is a restart");
    }
}
