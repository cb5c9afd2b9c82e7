//! `reflex simulate` and `reflex test`: what Reflex would do with an alert, given policies,
//! playbooks, manifests and metric values — computed on an in-memory sandbox, written nowhere.
//!
//! Contract: [`simulate`] loads a [`World`] (policies, playbooks, objects, series) into a fresh
//! sandbox API server and, for one alert, reports for every policy whether it matches and why
//! not (alert name, namespace scope, each matcher); for each match the resolved target, each
//! read the playbook makes and its value (series answer queries compared as promql-parser
//! prints them), the patch and its diff against the live object — or the refusal, with every
//! reason the patch-safety check gives — and the gate's decision in the target's environment
//! with no trust earned yet. [`run_tests`] runs YAML cases of alert + objects + series against
//! their expected target, patch or refusal, and gate decision, in the spirit of
//! `promtool test rules`. Nothing here reaches a real cluster or Prometheus.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use futures::future::BoxFuture;
use kube::api::{Api, DynamicObject};

use crate::demo::apply;
use kube::core::GroupVersionKind;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::agent::executor::PlaybookExecutor;
use crate::api::remediation::{GateDecision, Remediation, Step};
use crate::api::validate::ValidPolicy;
use crate::api::{Environment, RemediationPolicy, TargetKind};
use crate::metrics::{MetricsError, MetricsSource, normalize_query as normalize};
use crate::ports::{EffectKey, Propose, StageInput};
use crate::sandbox::{ADMIN_TOKEN, Config, Sandbox};

/// One metric value: what `query` returns (none: no data).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Series {
    /// The PromQL as the playbook renders it.
    pub query: String,
    /// Its value; absent: the query returns nothing.
    #[serde(default)]
    pub value: Option<f64>,
}

/// What the simulation runs on.
#[derive(Clone, Debug, Default)]
pub struct World {
    /// Every manifest: policies, playbooks, namespaces, workloads.
    pub documents: Vec<Value>,
    /// Metric values.
    pub series: Vec<Series>,
    /// The namespace of namespaced documents that name none (a policy pack applied with
    /// `kubectl apply -n`).
    pub namespace: Option<String>,
    /// Read metrics from this source instead of `series` (a Prometheus URL).
    pub metrics: Option<Arc<dyn MetricsSource>>,
}

impl std::fmt::Debug for dyn MetricsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MetricsSource")
    }
}

/// The kinds copied from a cluster for a simulation: what policies, playbooks and target
/// resolution read.
const COPIED: [(&str, &str, &str); 11] = [
    ("reflex.dev", "v1alpha1", "RemediationPolicy"),
    ("reflex.dev", "v1alpha1", "Playbook"),
    ("apps", "v1", "Deployment"),
    ("apps", "v1", "StatefulSet"),
    ("apps", "v1", "DaemonSet"),
    ("apps", "v1", "ReplicaSet"),
    ("autoscaling", "v2", "HorizontalPodAutoscaler"),
    ("batch", "v1", "Job"),
    ("batch", "v1", "CronJob"),
    ("", "v1", "Pod"),
    ("", "v1", "ConfigMap"),
];

/// Copies `namespace` (its policies, playbooks, workloads, Pods and ConfigMaps, and the
/// Namespace itself with its labels) from the cluster `client` reads — lists only, nothing
/// written there. Server-set fields are dropped; owner references keep kind and name (their
/// uids are filled in again in the sandbox). Secrets are never copied.
///
/// # Errors
/// A list the cluster refuses.
pub async fn from_cluster(client: &kube::Client, namespace: &str) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let ns = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .get(namespace)
        .await
        .with_context(|| format!("reading namespace {namespace}"))?;
    out.push(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": ns.metadata.labels}}),
    );
    for (group, version, kind) in COPIED {
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let api =
            Api::<DynamicObject>::namespaced_with(client.clone(), namespace, &kube::api::ApiResource::from_gvk(&gvk));
        let list = match api.list(&Default::default()).await {
            Ok(l) => l,
            // Reflex's CRDs may be missing from a cluster the policies are tried against.
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {kind} in {namespace}")),
        };
        for item in list.items {
            let mut v = serde_json::to_value(&item)?;
            v["apiVersion"] = json!(if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") });
            v["kind"] = json!(kind);
            if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
                for field in ["uid", "resourceVersion", "creationTimestamp", "managedFields", "generation", "selfLink"]
                {
                    meta.remove(field);
                }
                if let Some(refs) = meta.get_mut("ownerReferences").and_then(Value::as_array_mut) {
                    for r in refs.iter_mut().filter_map(Value::as_object_mut) {
                        r.remove("uid");
                    }
                }
            }
            if let Some(obj) = v.as_object_mut() {
                obj.remove("status");
            }
            out.push(v);
        }
    }
    Ok(out)
}

impl World {
    /// Adds every document of a multi-document YAML text.
    ///
    /// # Errors
    /// The text is not YAML.
    pub fn add_yaml(&mut self, text: &str, from: &str) -> anyhow::Result<()> {
        let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| anyhow::anyhow!("{from}: {e}"))?;
        self.documents.extend(docs.into_iter().filter(|d| !d.is_null()));
        Ok(())
    }
}

/// An alert to simulate.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// Its labels (`alertname`, `namespace`, …).
    pub labels: BTreeMap<String, String>,
    /// Its annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// What happened for one policy.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyReport {
    /// `namespace/name`.
    pub policy: String,
    /// Why it does not match (none: it matches).
    pub mismatch: Option<String>,
    /// The target, or why none.
    pub target: Option<Result<(TargetKind, String), String>>,
    /// Each read and its value.
    pub reads: Vec<(String, String)>,
    /// The patch, or the refusal.
    pub patch: Option<Result<Value, String>>,
    /// The diff the patch makes to the live object.
    pub diff: String,
    /// The gate's decision and reason.
    pub gate: Option<(GateDecision, String)>,
    /// The policy only diagnoses (trust level `observe`): its reads go to people, and no
    /// patch is proposed.
    pub diagnosis_only: bool,
}

/// Everything [`simulate`] found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// One entry per policy in the world.
    pub policies: Vec<PolicyReport>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for p in &self.policies {
            match &p.mismatch {
                Some(why) => writeln!(f, "policy {}: does not match — {why}", p.policy)?,
                None => writeln!(f, "policy {}: matches", p.policy)?,
            }
            match &p.target {
                Some(Ok((kind, name))) => writeln!(f, "  target   {} {name}", kind.as_str())?,
                Some(Err(why)) => writeln!(f, "  target   none — {why}")?,
                None => {}
            }
            for (name, value) in &p.reads {
                writeln!(f, "  read     {name}: {value}")?;
            }
            match &p.patch {
                Some(Ok(patch)) => {
                    writeln!(f, "  patch    {patch}")?;
                    for line in p.diff.lines() {
                        writeln!(f, "           {line}")?;
                    }
                }
                Some(Err(why)) => writeln!(f, "  refused  {why}")?,
                None if p.diagnosis_only && p.mismatch.is_none() => {
                    writeln!(
                        f,
                        "  outcome  diagnosis only (trust level observe): the reads above go to people; nothing is proposed"
                    )?;
                }
                None => {}
            }
            if let Some((decision, reason)) = &p.gate {
                writeln!(f, "  gate     {decision:?}: {reason}")?;
            }
        }
        Ok(())
    }
}

/// Metric values from the world's series, by query as promql-parser prints it.
struct Values(BTreeMap<String, Option<f64>>);

impl MetricsSource for Values {
    fn instant(&self, query: &str) -> BoxFuture<'_, Result<Option<f64>, MetricsError>> {
        let found = self.0.get(&normalize(query)).copied();
        let query = query.to_owned();
        Box::pin(async move {
            found.ok_or_else(|| MetricsError::Unavailable(format!("no series given for {query}; add it to the series")))
        })
    }
}

/// Reads objects from the sandbox (the simulation's reader of what an alert names).
struct SandboxReader(kube::Client);

impl crate::intake::resolve::Reader for SandboxReader {
    fn read<'a>(
        &'a self,
        namespace: &'a str,
        kind: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Value>, String>> {
        Box::pin(async move {
            let (group, version) = match kind {
                "Pod" => ("", "v1"),
                "Job" | "CronJob" => ("batch", "v1"),
                "HorizontalPodAutoscaler" => ("autoscaling", "v2"),
                _ => ("apps", "v1"),
            };
            let gvk = GroupVersionKind::gvk(group, version, kind);
            let api = Api::<DynamicObject>::namespaced_with(
                self.0.clone(),
                namespace,
                &kube::api::ApiResource::from_gvk(&gvk),
            );
            match api.get_opt(name).await {
                Ok(found) => Ok(found.and_then(|o| serde_json::to_value(o).ok())),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

/// `doc` with the world's default namespace when it names none.
fn placed(doc: &Value, namespace: Option<&str>) -> Value {
    let mut d = doc.clone();
    if let (Some(ns), None) = (namespace, d.pointer("/metadata/namespace"))
        && d.get("kind").and_then(Value::as_str) != Some("Namespace")
        && let Some(meta) = d.get_mut("metadata").and_then(Value::as_object_mut)
    {
        meta.insert("namespace".into(), json!(ns));
    }
    d
}

/// Hand-written objects name their owners by kind and name; the uid is the one the sandbox gave
/// the owner (an owner reference is followed only to the object whose uid it names).
async fn fill_owner_uids(client: &kube::Client, docs: &[Value]) -> anyhow::Result<()> {
    for doc in docs {
        let Some(refs) = doc.pointer("/metadata/ownerReferences").and_then(Value::as_array) else { continue };
        let ns = doc.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default();
        let mut filled = Vec::new();
        for r in refs {
            let mut r = r.clone();
            if r.get("uid").is_none_or(|u| u.as_str().is_none_or(str::is_empty)) {
                let (kind, name) = (
                    r.get("kind").and_then(Value::as_str).unwrap_or_default(),
                    r.get("name").and_then(Value::as_str).unwrap_or_default(),
                );
                let owner = crate::intake::resolve::Reader::read(&SandboxReader(client.clone()), ns, kind, name)
                    .await
                    .map_err(|e| anyhow::anyhow!(e))?
                    .with_context(|| {
                        format!("an owner reference names {kind} {ns}/{name}, which is not among the objects")
                    })?;
                r["uid"] = owner.pointer("/metadata/uid").cloned().unwrap_or(Value::Null);
            }
            filled.push(r);
        }
        let mut fixed = doc.clone();
        fixed["metadata"]["ownerReferences"] = Value::Array(filled);
        if let Some(m) = fixed.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        apply(client, &fixed).await?;
    }
    Ok(())
}

/// Why `policy` (in `namespace`) does not match `alert`, if it does not.
fn mismatch(policy: &ValidPolicy, namespace: &str, alert: &Alert) -> Option<String> {
    let name = alert.labels.get("alertname").map(String::as_str).unwrap_or_default();
    if !policy.alertnames.iter().any(|a| a == name) {
        return Some(format!("alertname {name:?} is not one of {:?}", policy.alertnames));
    }
    if alert.labels.get("namespace").map(String::as_str) != Some(namespace) {
        return Some(format!(
            "the alert's namespace label is {:?}, not the policy's namespace {namespace:?}",
            alert.labels.get("namespace")
        ));
    }
    policy.matchers.iter().find(|m| !m.matches(&alert.labels)).map(|m| format!("matcher {m} does not hold"))
}

/// What Reflex would do with `alert` in `world`.
///
/// # Errors
/// The world cannot be loaded (a bad manifest, an invalid policy).
pub async fn simulate(world: &World, alert: &Alert) -> anyhow::Result<Report> {
    crate::install_crypto_provider();
    // A static world: no controller creates, scales or deletes anything behind the simulation.
    let sandbox = Sandbox::start(Config { workloads: false, ..Config::default() }).await?;
    sandbox.install_crds()?;
    let client = sandbox.client(ADMIN_TOKEN).await?;
    // Namespaces first, then everything else in order.
    let documents: Vec<Value> = world.documents.iter().map(|d| placed(d, world.namespace.as_deref())).collect();
    let mut namespaces: Vec<String> = documents
        .iter()
        .filter_map(|d| d.pointer("/metadata/namespace").and_then(Value::as_str).map(str::to_owned))
        .collect();
    namespaces.sort();
    namespaces.dedup();
    for doc in documents.iter().filter(|d| d.get("kind").and_then(Value::as_str) == Some("Namespace")) {
        apply(&client, doc).await?;
    }
    for ns in &namespaces {
        if !documents.iter().any(|d| {
            d.get("kind").and_then(Value::as_str) == Some("Namespace")
                && d.pointer("/metadata/name").and_then(Value::as_str) == Some(ns)
        }) {
            apply(&client, &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})).await?;
        }
    }
    // Owners before what they own; then each owner reference gets its owner's uid.
    let owned = |d: &Value| d.pointer("/metadata/ownerReferences").is_some();
    for doc in documents.iter().filter(|d| d.get("kind").and_then(Value::as_str) != Some("Namespace") && !owned(d)) {
        apply(&client, doc).await?;
    }
    let with_owners: Vec<Value> = documents.iter().filter(|d| owned(d)).cloned().collect();
    // Each owned object is created (its owner's uid not yet known), then its references filled.
    for doc in &with_owners {
        let mut bare = doc.clone();
        if let Some(m) = bare.get_mut("metadata").and_then(Value::as_object_mut) {
            m.remove("ownerReferences");
        }
        apply(&client, &bare).await?;
    }
    fill_owner_uids(&client, &with_owners).await?;
    let metrics: Arc<dyn MetricsSource> = match &world.metrics {
        Some(m) => m.clone(),
        None => Arc::new(Values(world.series.iter().map(|s| (normalize(&s.query), s.value)).collect())),
    };
    let executor = PlaybookExecutor::new(client.clone(), metrics);
    let reader = SandboxReader(client.clone());
    let mut report = Report::default();
    let policies = Api::<RemediationPolicy>::all(client.clone()).list(&Default::default()).await?;
    for object in policies.items {
        let namespace = object.metadata.namespace.clone().unwrap_or_default();
        let name = object.metadata.name.clone().unwrap_or_default();
        let policy =
            ValidPolicy::from_spec(&object.spec).map_err(|e| anyhow::anyhow!("policy {namespace}/{name}: {e}"))?;
        let mut p = PolicyReport {
            policy: format!("{namespace}/{name}"),
            mismatch: mismatch(&policy, &namespace, alert),
            target: None,
            reads: vec![],
            patch: None,
            diff: String::new(),
            gate: None,
            diagnosis_only: policy.trust.level == crate::api::policy::TrustLevel::Observe,
        };
        if p.mismatch.is_some() {
            report.policies.push(p);
            continue;
        }
        let target = match (&policy.target_name, policy.target_kinds.first()) {
            (Some(template), Some(kind)) => {
                template.render(&alert.labels).map(|n| (*kind, n)).map_err(|e| e.to_string())
            }
            _ => crate::intake::resolve::resolve(&reader, &namespace, &alert.labels, &policy.target_kinds)
                .await
                .map_err(|u| format!("{}: {}", u.reason, u.message)),
        };
        p.target = Some(target.clone());
        let Ok((kind, target_name)) = target else {
            report.policies.push(p);
            continue;
        };
        let rem: Remediation = serde_json::from_value(
            json!({"apiVersion": "reflex.dev/v1alpha1", "kind": "Remediation",
            "metadata": {"name": format!("{name}-simulated"), "namespace": namespace, "uid": "simulated"},
            "spec": {"policyRef": {"name": name}, "target": {"apiVersion": kind.api_version(), "kind": kind.as_str(), "name": target_name},
                "alert": {"name": alert.labels.get("alertname"), "fingerprint": "simulated", "labels": alert.labels,
                    "annotations": alert.annotations, "startsAt": jiff::Timestamp::now().to_string()}}}),
        )?;
        let policy = Arc::new(policy);
        let input = StageInput {
            remediation: Arc::new(rem.clone()),
            policy: Some(policy.clone()),
            key: EffectKey { uid: "simulated".into(), step: Step::Propose, attempt: 1 },
            cancel: Default::default(),
        };
        if let Ok(run) = executor.read_all(&input).await {
            p.reads = run
                .scope
                .reads
                .iter()
                .map(|(k, v)| {
                    let shown = match v.get("value") {
                        Some(value) => value.to_string(),
                        None => format!(
                            "{} {}",
                            v.get("kind").and_then(Value::as_str).unwrap_or("object"),
                            v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
                        ),
                    };
                    (k.clone(), shown)
                })
                .collect();
        }
        let proposed = if p.diagnosis_only { None } else { Some(executor.propose(input).await) };
        match proposed {
            None => {}
            Some(Ok(proposal)) => {
                let live =
                    crate::cluster::read_target(&client, &rem).await.ok().and_then(|o| serde_json::to_value(o).ok());
                if let Some(live) = live
                    && let Ok(after) = crate::patch::safety::apply(proposal.patch_type, &live, &proposal.patch.0)
                {
                    p.diff = crate::ci::manifest::diff_named(&live, &after, "patched");
                }
                p.patch = Some(Ok(proposal.patch.0));
            }
            Some(Err(e)) => p.patch = Some(Err(e.message)),
        }
        let env = crate::cluster::environment(&client, &rem, Some(&policy)).await.unwrap_or(Environment::Production);
        let gate = crate::gate::trust::decide(env, &policy.trust, 0, None);
        p.gate = Some((gate.decision, gate.reason));
        report.policies.push(p);
    }
    sandbox.shutdown();
    Ok(report)
}

/// A file of policy tests.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TestFile {
    /// Files (relative to this one) whose documents are loaded: policies, playbooks, manifests.
    #[serde(default)]
    pub files: Vec<String>,
    /// More documents, inline.
    #[serde(default)]
    pub objects: String,
    /// Metric values shared by the cases.
    #[serde(default)]
    pub series: Vec<Series>,
    /// The namespace of documents that name none (a policy pack).
    #[serde(default)]
    pub namespace: Option<String>,
    /// The cases.
    pub cases: Vec<TestCase>,
}

/// One case: an alert and what must follow.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TestCase {
    /// Its name.
    pub name: String,
    /// The alert.
    pub alert: Alert,
    /// Metric values for this case only (added to the file's).
    #[serde(default)]
    pub series: Vec<Series>,
    /// What must follow.
    pub expect: Expectation,
}

/// What a case expects of the policy it names.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Expectation {
    /// `namespace/name` of the policy that must match and act (another may match only to
    /// stand aside: no patch).
    pub policy: Option<String>,
    /// `Kind/name` of the target, or `none` (no target: the message must then contain
    /// `targetError`).
    #[serde(default)]
    pub target: Option<String>,
    /// Text the target error must contain.
    #[serde(default)]
    pub target_error: Option<String>,
    /// A JSON subset the patch must contain.
    #[serde(default)]
    pub patch: Option<Value>,
    /// Text the refusal must contain (the patch must then be refused).
    #[serde(default)]
    pub refusal: Option<String>,
    /// The gate's decision: `Approved`, `ApprovalRequired` or `Denied`.
    #[serde(default)]
    pub gate: Option<GateDecision>,
    /// The policy only diagnoses: no patch is proposed (trust level `observe`).
    #[serde(default)]
    pub diagnosis_only: bool,
}

/// Whether `have` contains everything in `want` (objects by key, lists item by item).
fn contains(have: &Value, want: &Value) -> bool {
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w.iter().all(|(k, v)| h.get(k).is_some_and(|hv| contains(hv, v))),
        (Value::Array(h), Value::Array(w)) => w.iter().all(|wv| h.iter().any(|hv| contains(hv, wv))),
        _ => have == want,
    }
}

/// What one case came to: failures (empty: passed).
fn judge(case: &TestCase, report: &Report) -> Vec<String> {
    let mut failures = Vec::new();
    let matched: Vec<&PolicyReport> = report.policies.iter().filter(|p| p.mismatch.is_none()).collect();
    let e = &case.expect;
    let policy = match (&e.policy, matched.as_slice()) {
        (None, []) => return failures,
        (None, many) => {
            failures.push(format!(
                "expected no policy to match; matched {}",
                many.iter().map(|p| p.policy.clone()).collect::<Vec<_>>().join(", ")
            ));
            return failures;
        }
        (Some(want), many) if let Some(one) = many.iter().find(|p| &p.policy == want) => {
            // Several policies may match one alert (one per cause); only this one may act.
            for other in many.iter().filter(|p| &p.policy != want) {
                if let Some(Ok(patch)) = &other.patch {
                    failures.push(format!("{} matches too and would also patch: {patch}", other.policy));
                }
            }
            *one
        }
        (Some(want), _) => {
            let why: Vec<String> = report
                .policies
                .iter()
                .map(|p| format!("{}: {}", p.policy, p.mismatch.clone().unwrap_or_else(|| "matches".into())))
                .collect();
            failures.push(format!("expected exactly {want} to match; {}", why.join("; ")));
            return failures;
        }
    };
    match (&e.target, &policy.target) {
        (Some(want), Some(Ok((kind, name)))) if want == &format!("{}/{name}", kind.as_str()) => {}
        (Some(want), Some(Err(why))) if want == "none" => {
            if let Some(text) = &e.target_error
                && !why.contains(text.as_str())
            {
                failures.push(format!("target error {why:?} does not contain {text:?}"));
            }
        }
        (Some(want), got) => failures.push(format!("expected target {want}, got {got:?}")),
        (None, _) => {}
    }
    match (&e.refusal, &e.patch, &policy.patch) {
        (Some(text), _, Some(Err(why))) if why.contains(text.as_str()) => {}
        (Some(text), _, got) => failures.push(format!("expected a refusal containing {text:?}, got {got:?}")),
        (None, Some(want), Some(Ok(patch))) if contains(patch, want) => {}
        (None, Some(want), got) => failures.push(format!("expected a patch containing {want}, got {got:?}")),
        (None, None, _) => {}
    }
    if e.diagnosis_only && !(policy.diagnosis_only && policy.patch.is_none()) {
        failures.push(format!("expected diagnosis only, got a patch or refusal: {:?}", policy.patch));
    }
    if let Some(want) = e.gate
        && policy.gate.as_ref().map(|g| g.0) != Some(want)
    {
        failures.push(format!("expected gate {want:?}, got {:?}", policy.gate));
    }
    failures
}

/// Runs every `*.yaml` test file in `dir`; returns the report text and whether all passed.
///
/// # Errors
/// A test file cannot be read or parsed, or its world cannot be loaded.
pub async fn run_tests(dir: &std::path::Path) -> anyhow::Result<(String, bool)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let (mut out, mut ok, mut passed, mut failed) = (String::new(), true, 0, 0);
    for path in files {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let file: TestFile = serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let base = path.parent().unwrap_or(dir);
        let mut world = World::default();
        for f in &file.files {
            let p = base.join(f);
            let t =
                std::fs::read_to_string(&p).with_context(|| format!("{}: reading {}", path.display(), p.display()))?;
            world.add_yaml(&t, &p.display().to_string())?;
        }
        world.add_yaml(&file.objects, &format!("{}: objects", path.display()))?;
        world.series = file.series.clone();
        world.namespace = file.namespace.clone();
        for case in &file.cases {
            let mut w = world.clone();
            w.series.extend(case.series.clone());
            let report = simulate(&w, &case.alert).await?;
            let failures = judge(case, &report);
            if failures.is_empty() {
                passed += 1;
                out.push_str(&format!("PASS {} :: {}\n", path.display(), case.name));
            } else {
                ok = false;
                failed += 1;
                out.push_str(&format!("FAIL {} :: {}\n", path.display(), case.name));
                for f in failures {
                    out.push_str(&format!("  {f}\n"));
                }
            }
        }
    }
    out.push_str(&format!("{passed} passed, {failed} failed\n"));
    Ok((out, ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(expect: Value) -> TestCase {
        serde_json::from_value(json!({"name": "c", "alert": {"labels": {}}, "expect": expect}))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn report() -> Report {
        Report {
            policies: vec![
                PolicyReport {
                    policy: "shop/a".into(),
                    mismatch: None,
                    target: Some(Ok((TargetKind::Deployment, "web".into()))),
                    reads: vec![],
                    patch: Some(Ok(
                        json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "app", "image": "x"}]}}}}),
                    )),
                    diff: String::new(),
                    gate: Some((GateDecision::ApprovalRequired, "propose".into())),
                    diagnosis_only: false,
                },
                PolicyReport {
                    policy: "shop/b".into(),
                    mismatch: Some("alertname".into()),
                    target: None,
                    reads: vec![],
                    patch: None,
                    diff: String::new(),
                    gate: None,
                    diagnosis_only: false,
                },
            ],
        }
    }

    #[test]
    fn a_case_passes_only_when_policy_target_patch_and_gate_are_as_expected() {
        let r = report();
        let good = case(json!({"policy": "shop/a", "target": "Deployment/web",
            "patch": {"spec": {"template": {"spec": {"containers": [{"name": "app"}]}}}}, "gate": "ApprovalRequired"}));
        assert_eq!(judge(&good, &r), Vec::<String>::new());
        for (bad, says) in [
            (json!({"policy": "shop/b"}), "expected exactly shop/b to match"),
            (json!({}), "expected no policy to match"),
            (json!({"policy": "shop/a", "target": "Deployment/api"}), "expected target Deployment/api"),
            (json!({"policy": "shop/a", "patch": {"spec": {"replicas": 4}}}), "expected a patch containing"),
            (json!({"policy": "shop/a", "refusal": "unsafe"}), "expected a refusal containing \"unsafe\""),
            (json!({"policy": "shop/a", "gate": "Approved"}), "expected gate Approved"),
        ] {
            let failures = judge(&case(bad.clone()), &r);
            assert!(failures.iter().any(|f| f.contains(says)), "{bad}: {failures:?}");
        }
    }
}
