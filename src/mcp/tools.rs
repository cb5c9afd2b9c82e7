//! The context tools' bodies: each validates its input against the bounds before any work,
//! then runs as the caller through [`ReflexMcp::run`](super::call), and shapes its output
//! within the caps.
//!
//! Contract: read-only. Kubernetes errors become tool errors that name the missing
//! permission ([`api_error`]); Secret values never leave ([`bounds::clean_as`]).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, LogParams};
use kube::core::GroupVersionKind;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::service::RequestContext;
use rmcp::{RoleServer, tool, tool_router};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::bounds::{self, Truncation};
use super::call::ReflexMcp;
use super::call::{Json, args, scoped_promql};
use super::identity::Caller;
use super::schema::*;
use crate::api::playbook::Playbook;
use crate::api::remediation::Remediation;

/// Default per-tool timeout.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(10);

/// The kinds Reflex knows by name: (kind, apiVersion, plural, namespaced).
const KINDS: &[(&str, &str, &str, bool)] = &[
    ("Pod", "v1", "pods", true),
    ("Service", "v1", "services", true),
    ("ConfigMap", "v1", "configmaps", true),
    ("Secret", "v1", "secrets", true),
    ("Event", "v1", "events", true),
    ("ServiceAccount", "v1", "serviceaccounts", true),
    ("PersistentVolumeClaim", "v1", "persistentvolumeclaims", true),
    ("Namespace", "v1", "namespaces", false),
    ("Node", "v1", "nodes", false),
    ("Deployment", "apps/v1", "deployments", true),
    ("StatefulSet", "apps/v1", "statefulsets", true),
    ("DaemonSet", "apps/v1", "daemonsets", true),
    ("ReplicaSet", "apps/v1", "replicasets", true),
    ("HorizontalPodAutoscaler", "autoscaling/v2", "horizontalpodautoscalers", true),
    ("Job", "batch/v1", "jobs", true),
    ("CronJob", "batch/v1", "cronjobs", true),
    ("Remediation", "reflex.dev/v1alpha1", "remediations", true),
    ("RemediationPolicy", "reflex.dev/v1alpha1", "remediationpolicies", true),
    ("Playbook", "reflex.dev/v1alpha1", "playbooks", true),
];

/// Whether `kind` is one Reflex knows by name, namespaced (and of `api_version`, if given).
pub fn known_namespaced(kind: &str, api_version: Option<&str>) -> bool {
    KINDS.iter().any(|(k, v, _, namespaced)| *k == kind && *namespaced && api_version.is_none_or(|a| a == *v))
}

/// The API resource of `kind` (and whether it is namespaced).
pub fn resource_of(kind: &str, api_version: Option<&str>) -> Result<(ApiResource, bool), String> {
    let known = KINDS.iter().find(|(k, v, ..)| *k == kind && api_version.is_none_or(|a| a == *v));
    if let Some((k, v, plural, namespaced)) = known {
        let (group, version) = v.split_once('/').unwrap_or(("", v));
        let gvk = GroupVersionKind::gvk(group, version, k);
        return Ok((ApiResource::from_gvk_with_plural(&gvk, plural), *namespaced));
    }
    let Some(v) = api_version else {
        let names: Vec<&str> = KINDS.iter().map(|(k, ..)| *k).collect();
        return Err(format!("unknown kind {kind:?}: give apiVersion, or one of {}", names.join(", ")));
    };
    if kind.is_empty() || !kind.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(format!("kind {kind:?} is not a Kubernetes kind"));
    }
    let (group, version) = v.split_once('/').unwrap_or(("", v));
    Ok((ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind)), true))
}

/// A Deployment's rollout history, newest revision first (the `get_rollout_history` tool;
/// the playbook executor's direct reads use it too).
pub async fn rollout_history(
    client: kube::Client,
    namespace: &str,
    deployment: &str,
) -> Result<RolloutHistory, String> {
    let d = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get(deployment)
        .await
        .map_err(|e| api_error("get", "deployments", Some(namespace), &e))?;
    let uid = d.metadata.uid.clone().unwrap_or_default();
    let current = d.metadata.annotations.as_ref().and_then(|a| a.get("deployment.kubernetes.io/revision")).cloned();
    let rss = Api::<ReplicaSet>::namespaced(client, namespace)
        .list(&ListParams::default())
        .await
        .map_err(|e| api_error("list", "replicasets", Some(namespace), &e))?;
    let mut revisions: Vec<Revision> = rss
        .items
        .into_iter()
        .filter(|rs| rs.metadata.owner_references.as_ref().is_some_and(|o| o.iter().any(|r| r.uid == uid)))
        .map(|rs| {
            let rev =
                rs.metadata.annotations.as_ref().and_then(|a| a.get("deployment.kubernetes.io/revision")).cloned();
            let containers: Vec<ContainerImage> = rs
                .spec
                .template
                .as_ref()
                .and_then(|t| t.spec.as_ref())
                .map(|s| {
                    s.containers
                        .iter()
                        .filter_map(|c| Some(ContainerImage { name: c.name.clone(), image: c.image.clone()? }))
                        .collect()
                })
                .unwrap_or_default();
            let images = containers.iter().map(|c| c.image.clone()).collect();
            Revision {
                revision: rev.as_deref().and_then(|r| r.parse().ok()).unwrap_or(0),
                replica_set: rs.metadata.name.clone().unwrap_or_default(),
                images,
                containers,
                replicas: rs.status.as_ref().map_or(0, |s| s.replicas),
                created: rs.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()),
                current: rev.is_some() && rev == current,
            }
        })
        .collect();
    revisions.sort_by_key(|r| std::cmp::Reverse(r.revision));
    let previous = previous_revision(&revisions);
    Ok(RolloutHistory { revisions, previous })
}

/// A Kubernetes API error as a tool error; a 403 names the permission that was missing.
pub fn api_error(verb: &str, resource: &str, namespace: Option<&str>, e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 403 => {
            let scope = namespace.map_or_else(|| "cluster-wide".to_owned(), |n| format!("in namespace {n}"));
            format!("forbidden: {}; missing permission: {verb} {resource} {scope}", s.message)
        }
        kube::Error::Api(s) if s.code == 404 => format!("not found: {}", s.message),
        // Overload and outages: worth another attempt, never a verdict on the request.
        kube::Error::Api(s) if s.code == 429 || s.code >= 500 => {
            format!("unavailable: the API server answered {} to {verb} {resource}: {}", s.code, s.message)
        }
        kube::Error::Service(_) | kube::Error::HyperError(_) => {
            format!("unavailable: cannot reach the API server to {verb} {resource}: {e}")
        }
        other => other.to_string(),
    }
}

fn ns_name(namespace: &str, name: &str) -> Result<(), String> {
    bounds::name("namespace", namespace)?;
    bounds::name("name", name)
}

fn time_of(t: &str, what: &str) -> Result<jiff::Timestamp, String> {
    t.parse().map_err(|e| format!("{what} {t:?} is not an RFC 3339 time: {e}"))
}

fn labels(m: &std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    m.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// The revision a rollback returns to (see [`RolloutHistory::previous`]): by ReplicaSet
/// creation time, then revision number.
fn previous_revision(revisions: &[Revision]) -> Option<Revision> {
    let when = |r: &Revision| r.created.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let current = revisions.iter().find(|r| r.current)?;
    let now = (when(current)?, current.revision);
    revisions
        .iter()
        .filter(|r| !r.current)
        .filter_map(|r| Some(((when(r)?, r.revision), r)))
        .filter(|(at, _)| *at < now)
        .max_by_key(|(at, _)| *at)
        .map(|(_, r)| r.clone())
}

/// Drop items from the end until the serialized list fits the output cap.
fn fit<T: Serialize>(mut items: Vec<T>, mut cut: Option<Truncation>, how: &str) -> (Vec<T>, Option<Truncation>) {
    let budget = bounds::MAX_OUTPUT_BYTES * 9 / 10;
    let sizes: Vec<usize> = items.iter().map(|i| serde_json::to_string(i).map_or(0, |s| s.len() + 1)).collect();
    let total: usize = sizes.iter().sum();
    if total <= budget {
        return (items, cut);
    }
    let mut used = 0;
    let keep = sizes.iter().take_while(|s| {
        used += **s;
        used <= budget
    });
    let keep = keep.count();
    let had = cut.as_ref().and_then(|c| c.total).unwrap_or(items.len() as u64);
    items.truncate(keep);
    cut = Some(Truncation {
        shown: keep as u64,
        total: Some(had),
        notice: format!("{keep} of {had} shown (output cap {} bytes); {how}", bounds::MAX_OUTPUT_BYTES),
    });
    (items, cut)
}

/// A listing's input checked: the namespace (when given) is a name; the limit within bounds.
fn in_namespace(p: &ListInNamespace) -> Result<u32, String> {
    let limit = bounds::limit(p.limit)?;
    if let Some(ns) = &p.namespace {
        bounds::name("namespace", ns)?;
    }
    Ok(limit)
}

/// Objects of `K` as the caller lists them (in `namespace`, or everywhere), each summarised,
/// at most `limit` with a truncation notice.
async fn list_summarised<K, S>(
    caller: &Caller,
    namespace: Option<&str>,
    plural: &str,
    limit: u32,
    summarise: impl Fn(K) -> S,
) -> Result<(Vec<S>, Option<Truncation>), String>
where
    K: kube::Resource<Scope = NamespaceResourceScope> + Clone + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = match namespace {
        Some(ns) => Api::namespaced(caller.client.clone(), ns),
        None => Api::all(caller.client.clone()),
    };
    let list = api.list(&ListParams::default()).await.map_err(|e| api_error("list", plural, namespace, &e))?;
    let items = list.items.into_iter().map(summarise).collect();
    Ok(bounds::cap(items, limit as usize, None, "give a namespace or raise limit"))
}

#[tool_router(vis = "pub(super)")]
impl ReflexMcp {
    #[tool(
        description = "Get one Kubernetes object as the caller may see it (Secret values are always redacted).",
        annotations(read_only_hint = true)
    )]
    async fn get_resource(
        &self,
        Parameters(p): Parameters<GetResource>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ObjectOutput>, String> {
        let (ar, namespaced) = resource_of(&p.kind, p.api_version.as_deref())?;
        bounds::name("name", &p.name)?;
        if let Some(ns) = &p.namespace {
            bounds::name("namespace", ns)?;
        }
        if namespaced && p.namespace.is_none() {
            return Err(format!("{} is namespaced: give a namespace", p.kind));
        }
        self.run(&ctx, "get_resource", args(&p), TOOL_TIMEOUT, |caller| async move {
            let api: Api<DynamicObject> = match (&p.namespace, namespaced) {
                (Some(ns), true) => Api::namespaced_with(caller.client, ns, &ar),
                _ => Api::all_with(caller.client, &ar),
            };
            let obj = api.get(&p.name).await.map_err(|e| api_error("get", &ar.plural, p.namespace.as_deref(), &e))?;
            let v = serde_json::to_value(obj).map_err(|e| e.to_string())?;
            Ok(ObjectOutput { object: bounds::clean_as(v, bounds::is_secret(&ar)) })
        })
        .await
    }

    #[tool(
        description = "List Kubernetes objects of a kind, optionally in one namespace and by label/field selector; bounded, with a truncation notice.",
        annotations(read_only_hint = true)
    )]
    async fn list_resources(
        &self,
        Parameters(p): Parameters<ListResourcesInput>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<ListOutput>, String> {
        let (ar, namespaced) = resource_of(&p.kind, p.api_version.as_deref())?;
        let limit = bounds::limit(p.limit)?;
        if let Some(ns) = &p.namespace {
            bounds::name("namespace", ns)?;
        }
        let secret = bounds::is_secret(&ar);
        self.run(&ctx, "list_resources", args(&p), TOOL_TIMEOUT, |caller| async move {
            let api: Api<DynamicObject> = match (&p.namespace, namespaced) {
                (Some(ns), true) => Api::namespaced_with(caller.client, ns, &ar),
                _ => Api::all_with(caller.client, &ar),
            };
            let mut lp = ListParams::default().limit(limit);
            if let Some(l) = &p.label_selector {
                lp = lp.labels(l);
            }
            if let Some(f) = &p.field_selector {
                lp = lp.fields(f);
            }
            let list = api.list(&lp).await.map_err(|e| api_error("list", &ar.plural, p.namespace.as_deref(), &e))?;
            let more = list.metadata.remaining_item_count.map(|n| n.max(0) as u64);
            let more = more.or_else(|| list.metadata.continue_.as_ref().filter(|c| !c.is_empty()).map(|_| 1));
            let items: Vec<Value> = list
                .items
                .into_iter()
                .filter_map(|o| serde_json::to_value(o).ok())
                .map(|v| bounds::clean_as(v, secret))
                .collect();
            let (items, cut) = bounds::cap(items, limit as usize, more, "narrow the selector or raise limit");
            let (items, truncated) = fit(items, cut, "narrow the selector");
            Ok(ListOutput { items, truncated })
        })
        .await
    }

    #[tool(description = "Events about one object (newest first).", annotations(read_only_hint = true))]
    async fn get_events(
        &self,
        Parameters(p): Parameters<GetEvents>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<EventsOutput>, String> {
        ns_name(&p.namespace, &p.name)?;
        resource_of(&p.kind, None).or_else(|_| {
            if p.kind.chars().all(|c| c.is_ascii_alphanumeric()) && !p.kind.is_empty() {
                Ok((ApiResource::erase::<Event>(&()), true))
            } else {
                Err(format!("kind {:?} is not a Kubernetes kind", p.kind))
            }
        })?;
        let limit = bounds::limit(p.limit)?;
        self.run(&ctx, "get_events", args(&p), TOOL_TIMEOUT, |caller| async move {
            let api: Api<Event> = Api::namespaced(caller.client, &p.namespace);
            let lp =
                ListParams::default().fields(&format!("involvedObject.kind={},involvedObject.name={}", p.kind, p.name));
            let list = api.list(&lp).await.map_err(|e| api_error("list", "events", Some(&p.namespace), &e))?;
            let mut events: Vec<(Option<jiff::Timestamp>, EventSummary)> = list
                .items
                .into_iter()
                .map(|e| {
                    let last = e
                        .last_timestamp
                        .as_ref()
                        .map(|t| t.0)
                        .or_else(|| e.event_time.as_ref().map(|t| t.0))
                        .or_else(|| e.metadata.creation_timestamp.as_ref().map(|t| t.0));
                    let source = e
                        .reporting_component
                        .clone()
                        .filter(|s| !s.is_empty())
                        .or_else(|| e.source.as_ref().and_then(|s| s.component.clone()));
                    let summary = EventSummary {
                        type_: e.type_.unwrap_or_default(),
                        reason: e.reason.unwrap_or_default(),
                        message: e.message.unwrap_or_default(),
                        count: e.count.unwrap_or(1),
                        last_seen: last.map(|t| t.to_string()),
                        source,
                    };
                    (last, summary)
                })
                .collect();
            events.sort_by_key(|e| std::cmp::Reverse(e.0));
            let events: Vec<EventSummary> = events.into_iter().map(|(_, e)| e).collect();
            let (events, truncated) = bounds::cap(events, limit as usize, None, "raise limit");
            Ok(EventsOutput { events, truncated })
        })
        .await
    }

    #[tool(
        description = "A pod's logs: the newest lines (bounded tail and time window).",
        annotations(read_only_hint = true)
    )]
    async fn get_pod_logs(
        &self,
        Parameters(p): Parameters<GetPodLogs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<LogsOutput>, String> {
        ns_name(&p.namespace, &p.pod)?;
        let (tail, since) = bounds::logs(p.tail_lines, p.since_seconds)?;
        if let Some(c) = &p.container {
            bounds::name("container", c)?;
        }
        self.run(&ctx, "get_pod_logs", args(&p), Duration::from_secs(15), |caller| async move {
            let api: Api<Pod> = Api::namespaced(caller.client, &p.namespace);
            let lp = LogParams {
                container: p.container.clone(),
                tail_lines: Some(i64::from(tail)),
                since_seconds: since.map(|s| s as i64),
                previous: p.previous,
                limit_bytes: Some(bounds::MAX_OUTPUT_BYTES as i64 * 2),
                ..LogParams::default()
            };
            let text = api.logs(&p.pod, &lp).await.map_err(|e| api_error("get", "pods/log", Some(&p.namespace), &e))?;
            let lines: Vec<String> = text.lines().map(str::to_owned).collect();
            let (lines, truncated) = bounds::tail_bytes(lines, bounds::MAX_OUTPUT_BYTES * 9 / 10);
            Ok(LogsOutput { lines, truncated })
        })
        .await
    }

    #[tool(
        description = "A Deployment's rollout history: its ReplicaSet revisions (newest first), each container's image, which is current, and the previous one a rollback returns to.",
        annotations(read_only_hint = true)
    )]
    async fn get_rollout_history(
        &self,
        Parameters(p): Parameters<GetRolloutHistory>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<RolloutHistory>, String> {
        ns_name(&p.namespace, &p.deployment)?;
        self.run(&ctx, "get_rollout_history", args(&p), TOOL_TIMEOUT, |caller| async move {
            rollout_history(caller.client, &p.namespace, &p.deployment).await
        })
        .await
    }

    #[tool(description = "Evaluate a PromQL expression at one time (default now).", annotations(read_only_hint = true))]
    async fn query_prometheus(
        &self,
        Parameters(p): Parameters<QueryPrometheus>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<InstantOutput>, String> {
        bounds::query(&p.query)?;
        let at = p.time.as_deref().map(|t| time_of(t, "time")).transpose()?;
        if self.inner.backends.prometheus.is_none()
            && let Some(metrics) = self.inner.backends.metrics.clone()
        {
            return self
                .run(&ctx, "query_prometheus", args(&p), TOOL_TIMEOUT, |caller| async move {
                    Self::may_query_metrics(&caller).await?;
                    let query = scoped_promql(&caller, &p.query)?;
                    let v = metrics.instant(&query).await.map_err(|e| format!("metrics: {e:?}"))?;
                    let series = v.map(|value| SeriesValue { labels: BTreeMap::new(), value }).into_iter().collect();
                    Ok(InstantOutput { series, truncated: None })
                })
                .await;
        }
        let prom = self.prometheus()?.clone();
        self.run(&ctx, "query_prometheus", args(&p), TOOL_TIMEOUT, |caller| async move {
            Self::may_query_metrics(&caller).await?;
            let query = scoped_promql(&caller, &p.query)?;
            let mut q = prom.query(&query).timeout(TOOL_TIMEOUT.as_millis() as i64);
            if let Some(at) = at {
                q = q.at(at.as_second());
            }
            let res = q.get().await.map_err(|e| format!("Prometheus: {e}"))?;
            let series: Vec<SeriesValue> = match res.data() {
                prometheus_http_query::response::Data::Vector(v) => {
                    v.iter().map(|s| SeriesValue { labels: labels(s.metric()), value: s.sample().value() }).collect()
                }
                prometheus_http_query::response::Data::Scalar(s) => {
                    vec![SeriesValue { labels: BTreeMap::new(), value: s.value() }]
                }
                prometheus_http_query::response::Data::Matrix(m) => m
                    .iter()
                    .filter_map(|s| {
                        s.samples().last().map(|l| SeriesValue { labels: labels(s.metric()), value: l.value() })
                    })
                    .collect(),
            };
            let (series, truncated) = bounds::cap(series, bounds::MAX_SERIES, None, "aggregate the query (sum by ...)");
            Ok(InstantOutput { series, truncated })
        })
        .await
    }

    #[tool(
        description = "Evaluate a PromQL expression over a time range (bounded points per series).",
        annotations(read_only_hint = true)
    )]
    async fn query_prometheus_range(
        &self,
        Parameters(p): Parameters<QueryPrometheusRange>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<RangeOutput>, String> {
        bounds::query(&p.query)?;
        let (start, end) = (time_of(&p.start, "start")?, time_of(&p.end, "end")?);
        if !(p.step_seconds.is_finite() && p.step_seconds > 0.0) {
            return Err("stepSeconds must be a positive number".into());
        }
        bounds::range(start, end, Duration::from_secs_f64(p.step_seconds.min(1e9)))?;
        let prom = self.prometheus()?.clone();
        self.run(&ctx, "query_prometheus_range", args(&p), Duration::from_secs(20), |caller| async move {
            Self::may_query_metrics(&caller).await?;
            let query = scoped_promql(&caller, &p.query)?;
            let res = prom
                .query_range(&query, start.as_second(), end.as_second(), p.step_seconds)
                .timeout(20_000)
                .get()
                .await
                .map_err(|e| format!("Prometheus: {e}"))?;
            let series: Vec<Series> = match res.data() {
                prometheus_http_query::response::Data::Matrix(m) => m
                    .iter()
                    .map(|s| Series {
                        labels: labels(s.metric()),
                        points: s.samples().iter().map(|x| (x.timestamp(), x.value())).collect(),
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let (series, cut) = bounds::cap(series, bounds::MAX_SERIES, None, "aggregate the query (sum by ...)");
            let (series, truncated) = fit(series, cut, "aggregate the query or raise the step");
            Ok(RangeOutput { series, truncated })
        })
        .await
    }

    #[tool(
        description = "Alerts firing in Prometheus now, optionally for one namespace.",
        annotations(read_only_hint = true)
    )]
    async fn list_firing_alerts(
        &self,
        Parameters(p): Parameters<ListFiringAlerts>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<AlertsOutput>, String> {
        if let Some(ns) = &p.namespace {
            bounds::name("namespace", ns)?;
        }
        let prom = self.prometheus()?.clone();
        self.run(&ctx, "list_firing_alerts", args(&p), TOOL_TIMEOUT, |caller| async move {
            Self::may_query_metrics(&caller).await?;
            let alerts = prom.alerts().await.map_err(|e| format!("Prometheus: {e}"))?;
            let alerts: Vec<FiringAlert> = alerts
                .iter()
                .filter(|a| format!("{:?}", a.state()).eq_ignore_ascii_case("firing"))
                .filter(|a| p.namespace.as_ref().is_none_or(|ns| a.labels().get("namespace") == Some(ns)))
                .map(|a| FiringAlert {
                    labels: labels(a.labels()),
                    annotations: labels(a.annotations()),
                    active_at: a.active_at().to_string(),
                    value: a.value(),
                })
                .collect();
            let (alerts, truncated) = bounds::cap(alerts, bounds::MAX_LIMIT as usize, None, "filter by namespace");
            Ok(AlertsOutput { alerts, truncated })
        })
        .await
    }

    #[tool(
        description = "Reflex Remediations (phase, policy, target, alert), optionally in one namespace.",
        annotations(read_only_hint = true)
    )]
    async fn list_remediations(
        &self,
        Parameters(p): Parameters<ListInNamespace>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<RemediationsOutput>, String> {
        let limit = in_namespace(&p)?;
        self.run(&ctx, "list_remediations", args(&p), TOOL_TIMEOUT, |caller| async move {
            let (remediations, truncated) =
                list_summarised(&caller, p.namespace.as_deref(), "remediations", limit, |r: Remediation| {
                    let (namespace, name) =
                        (r.metadata.namespace.clone().unwrap_or_default(), r.metadata.name.clone().unwrap_or_default());
                    RemediationSummary {
                        uri: format!("remediation://{namespace}/{name}"),
                        phase: r.status.as_ref().map_or("Pending".into(), |s| s.phase.to_string()),
                        message: r.status.as_ref().and_then(|s| s.message.clone()),
                        policy: r.spec.policy_ref.name.clone(),
                        target: format!("{}/{}", r.spec.target.kind.as_str(), r.spec.target.name),
                        alert: r.spec.alert.name.clone(),
                        namespace,
                        name,
                    }
                })
                .await?;
            Ok(RemediationsOutput { remediations, truncated })
        })
        .await
    }

    #[tool(description = "Reflex Playbooks, optionally in one namespace.", annotations(read_only_hint = true))]
    async fn list_playbooks(
        &self,
        Parameters(p): Parameters<ListInNamespace>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<PlaybooksOutput>, String> {
        let limit = in_namespace(&p)?;
        self.run(&ctx, "list_playbooks", args(&p), TOOL_TIMEOUT, |caller| async move {
            let (playbooks, truncated) =
                list_summarised(&caller, p.namespace.as_deref(), "playbooks", limit, |pb: Playbook| {
                    let (namespace, name) = (
                        pb.metadata.namespace.clone().unwrap_or_default(),
                        pb.metadata.name.clone().unwrap_or_default(),
                    );
                    PlaybookSummary {
                        uri: format!("playbook://{namespace}/{name}"),
                        description: pb.spec.description.clone(),
                        namespace,
                        name,
                    }
                })
                .await?;
            Ok(PlaybooksOutput { playbooks, truncated })
        })
        .await
    }

    #[tool(
        description = "Agents Reflex discovered over A2A (Services annotated reflex.dev/a2a-agent), with their skills and whether their cards are usable; optionally in one namespace. Lists only agents whose Service the caller may get.",
        annotations(read_only_hint = true)
    )]
    async fn list_agents(
        &self,
        Parameters(p): Parameters<ListInNamespace>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<Json<AgentsOutput>, String> {
        in_namespace(&p)?;
        let directory = self.inner.backends.agents.clone();
        self.run(&ctx, "list_agents", args(&p), TOOL_TIMEOUT, |caller| async move {
            let all = directory.map(|d| d.agents()).unwrap_or_default();
            let wanted = all.into_iter().filter(|a| p.namespace.as_deref().is_none_or(|ns| a.namespace == ns));
            Ok(AgentsOutput { agents: visible_agents(&caller, wanted).await })
        })
        .await
    }
}

/// The agents whose Service `caller` may get (a reader: in its own namespace only).
pub(super) async fn visible_agents(caller: &Caller, agents: impl Iterator<Item = AgentSummary>) -> Vec<AgentSummary> {
    let mut out = Vec::new();
    for a in agents {
        if caller.scope.as_deref().is_some_and(|s| s != a.namespace) {
            continue;
        }
        let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(caller.client.clone(), &a.namespace);
        if services.get_metadata(&a.service).await.is_ok() {
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_or_overloaded_api_server_is_reported_as_unavailable() {
        let status = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status { code, message: "busy".into(), ..Default::default() }))
        };
        assert!(api_error("get", "deployments", Some("shop"), &status(503)).starts_with("unavailable: "));
        assert!(api_error("get", "deployments", Some("shop"), &status(429)).starts_with("unavailable: "));
        assert!(api_error("get", "deployments", Some("shop"), &status(403)).starts_with("forbidden: "));
        assert!(!api_error("get", "deployments", Some("shop"), &status(422)).starts_with("unavailable: "));
    }

    #[test]
    fn the_previous_revision_is_older_than_what_runs() {
        let rev = |revision: u64, at: &str, current: bool| Revision {
            revision,
            replica_set: format!("rs-{revision}"),
            images: vec![],
            containers: vec![],
            replicas: 0,
            created: Some(at.into()),
            current,
        };
        // A bad rollout: 2 runs, 1 is older.
        let h = [rev(2, "2026-01-01T00:10:00Z", true), rev(1, "2026-01-01T00:00:00Z", false)];
        assert_eq!(previous_revision(&h).map(|r| r.revision), Some(1));
        // After a rollback the restored ReplicaSet (old) is revision 3; the bad release (2) is
        // newer than it and is not where a second rollback goes.
        let h = [rev(3, "2026-01-01T00:00:00Z", true), rev(2, "2026-01-01T00:10:00Z", false)];
        assert_eq!(previous_revision(&h).map(|r| r.revision), None);
        // Same second: the revision number decides.
        let h = [rev(2, "2026-01-01T00:00:00Z", true), rev(1, "2026-01-01T00:00:00Z", false)];
        assert_eq!(previous_revision(&h).map(|r| r.revision), Some(1));
        assert!(previous_revision(&[rev(1, "2026-01-01T00:00:00Z", true)]).is_none());
    }

    #[test]
    fn kinds_resolve_and_unknown_ones_say_what_is_known() {
        let (ar, namespaced) = resource_of("Deployment", None).unwrap();
        assert_eq!((ar.plural.as_str(), ar.group.as_str(), namespaced), ("deployments", "apps", true));
        assert!(!resource_of("Node", None).unwrap().1);
        let e = resource_of("Widget", None).unwrap_err();
        assert!(e.contains("give apiVersion") && e.contains("HorizontalPodAutoscaler"), "{e}");
        let (ar, _) = resource_of("Widget", Some("example.com/v1")).unwrap();
        assert_eq!((ar.plural.as_str(), ar.version.as_str()), ("widgets", "v1"));
        assert!(resource_of("Wid/get", Some("v1")).is_err());
    }
}
