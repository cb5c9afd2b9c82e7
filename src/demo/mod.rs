//! `reflex demo`: the whole loop — alert to verified fix — on the sandbox.
//!
//! Contract: [`run`] starts the sandbox (with the scenario's Pod model), installs the CRDs,
//! applies the scenario's resources, starts the operator (the same controller, stages and
//! intake `reflex run` uses, with the scenario's model standing in for Prometheus), posts
//! the scenario's alert to the intake over HTTP as Alertmanager would, and prints a timeline
//! as the Remediation moves until it reaches a terminal phase. The outcome says whether it
//! ended in the phase the scenario expects.

pub mod forge;
pub mod model;
pub mod peer;
pub mod repository;
pub mod scenario;
pub mod standin;
pub mod syncer;
pub mod timeline;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use self::model::OomModel;
use self::scenario::Scenario;
use crate::api::remediation::{Phase, Remediation, RemediationStatus};
use crate::deploy::identity::Deployers;
use crate::operator::{self, Operator};
use crate::sandbox::{ADMIN_TOKEN, Config, Sandbox};

/// The demo's RBAC table: an operator that cannot write workloads, and one deployer
/// ServiceAccount per environment that can, in `shop` only.
pub const DEMO_RBAC: &str = include_str!("rbac.yaml");

/// The approval admission policy (a ValidatingAdmissionPolicy and its binding).
const APPROVAL_POLICY: &str = include_str!("../../config/admission/approver-is-requester.yaml");
/// Only the operator writes status (a ValidatingAdmissionPolicy and its binding).
const STATUS_POLICY: &str = include_str!("../../config/admission/status-by-controller.yaml");

/// The operator's ServiceAccount token in the demo's RBAC table.
const OPERATOR_TOKEN: &str = "reflex-demo-operator";

/// What the demo ended with.
pub struct Outcome {
    pub scenario: String,
    pub expected: Phase,
    pub remediation: Remediation,
    /// The target's container memory limit before the alert and at the end.
    pub memory_before: String,
    pub memory_after: String,
    /// The target's pod template before the alert and at the end.
    pub template_before: Value,
    pub template_after: Value,
    /// Reasons of the Events recorded on the Remediation, oldest first.
    pub events: Vec<String>,
    /// MCP tool calls the playbook executor made (each audited), by tool.
    pub tool_calls: Vec<String>,
    pub elapsed: Duration,
    /// The W3C `traceparent` headers the LLM stand-in received, in order.
    pub llm_traceparents: Vec<String>,
    /// Still running when `keep` was asked for.
    pub sandbox: Option<Sandbox>,
}

impl Outcome {
    pub fn phase(&self) -> Option<Phase> {
        self.remediation.status.as_ref().map(|s| s.phase)
    }

    pub fn as_expected(&self) -> bool {
        self.phase() == Some(self.expected)
    }
}

/// Alertmanager's fingerprint is a hash of the label set; any stable hash serves here.
pub fn fingerprint(labels: &std::collections::BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (k, v) in labels {
        h.update(k.as_bytes());
        h.update([0xff]);
        h.update(v.as_bytes());
        h.update([0xff]);
    }
    h.finalize().iter().take(8).map(|b| format!("{b:02x}")).collect()
}

fn memory_limit(d: &Deployment, container: &str) -> String {
    d.spec
        .template
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == container))
        .and_then(|c| c.resources.as_ref())
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .map_or_else(|| "(unset)".to_owned(), |q| q.0.clone())
}

/// Apply one manifest as `kubectl apply --server-side` would; returns `kind/name`.
///
/// # Errors
/// The manifest names no kind or name, its kind is not served, or the API server refuses it.
pub async fn apply(client: &kube::Client, doc: &Value) -> anyhow::Result<String> {
    let api_version = doc.get("apiVersion").and_then(Value::as_str).context("a resource without apiVersion")?;
    let kind = doc.get("kind").and_then(Value::as_str).context("a resource without kind")?;
    let name = doc.pointer("/metadata/name").and_then(Value::as_str).context("a resource without a name")?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let (ar, caps) = kube::discovery::pinned_kind(client, &GroupVersionKind::gvk(group, version, kind)).await?;
    let api: Api<DynamicObject> = match doc.pointer("/metadata/namespace").and_then(Value::as_str) {
        Some(ns) if caps.scope == kube::discovery::Scope::Namespaced => Api::namespaced_with(client.clone(), ns, &ar),
        _ => Api::all_with(client.clone(), &ar),
    };
    api.patch(name, &PatchParams::apply("kubectl").force(), &Patch::Apply(doc)).await?;
    Ok(format!("{}/{name}", kind.to_ascii_lowercase()))
}

/// Wait (10 s at most) until the Deployment's latest generation has rolled out.
async fn rolled_out(deployments: &Api<Deployment>, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let d = deployments.get(name).await?;
        let want = d.spec.replicas.unwrap_or(1);
        let done = d.status.as_ref().is_some_and(|s| {
            s.observed_generation == d.metadata.generation
                && s.updated_replicas == Some(want)
                && s.replicas == Some(want)
                && s.available_replicas == Some(want)
        });
        if done {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "Deployment {name} did not roll out within 10s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The token of `user` in the demo's RBAC table.
fn token_of(user: &str) -> anyhow::Result<String> {
    let table = crate::sandbox::rbac::Table::from_yaml(DEMO_RBAC).map_err(|e| anyhow!("the demo's RBAC table: {e}"))?;
    table
        .users
        .iter()
        .find(|u| u.name == user)
        .map(|u| u.token.clone())
        .with_context(|| format!("no user {user} in the demo's RBAC table"))
}

/// The people of a scenario that waits for approval: the forger first (the admission policy
/// refuses an approval in someone else's name), then the approver, as themselves — exactly
/// what `kubectl reflex approve` does.
async fn approve_as_people(
    sandbox: &Sandbox,
    script: &scenario::ApprovalScript,
    rem: &Remediation,
    out: &mut (dyn Write + Send),
    t0: Instant,
) -> anyhow::Result<()> {
    use crate::api::ApprovalDecision;
    use crate::api::approval::RemediationApproval;
    let ns = rem.metadata.namespace.clone().unwrap_or_default();
    let name = rem.metadata.name.clone().unwrap_or_default();
    if let Some(forger) = &script.forger {
        let client = sandbox.client(&token_of(forger)?).await?;
        let forged = crate::oncall::approval_for(rem, ApprovalDecision::Approve, &script.approver, None, "forged")?;
        match Api::<RemediationApproval>::namespaced(client, &ns)
            .create(&kube::api::PostParams::default(), &forged)
            .await
        {
            Err(kube::Error::Api(status)) => writeln!(
                out,
                "[{:>5.1}s] forged      {forger} creates an approval naming {}: refused ({}): {}",
                t0.elapsed().as_secs_f64(),
                script.approver,
                status.code,
                status.message
            )?,
            Ok(_) => anyhow::bail!("the admission policy let {forger} approve in {}'s name", script.approver),
            Err(e) => return Err(e.into()),
        }
    }
    let client = sandbox.client(&token_of(&script.approver)?).await?;
    // Alice approves what she reviewed: the proposal as it is now.
    let reviewed = rem.status.as_ref().and_then(|s| s.proposal.as_ref()).map(|p| p.digest.clone());
    let reason = Some("on call: the raise looks right".to_owned());
    let approval =
        crate::oncall::decide(&client, &ns, &name, ApprovalDecision::Approve, reason, reviewed.as_deref()).await?;
    writeln!(
        out,
        "[{:>5.1}s] approved    {} (kubectl reflex approve {name} -n {ns}) → remediationapproval/{} for proposal {}",
        t0.elapsed().as_secs_f64(),
        approval.spec.approver,
        approval.metadata.name.unwrap_or_default(),
        approval.spec.proposal_digest.unwrap_or_default()
    )?;
    Ok(())
}

/// Run `scenario`; progress goes to `out`.
pub async fn run(mut scenario: Scenario, keep: bool, out: &mut (dyn Write + Send)) -> anyhow::Result<Outcome> {
    crate::install_crypto_provider();
    // The model, when the scenario is LLM-driven: the scripted stand-in, on loopback.
    let standin = match &scenario.llm {
        Some(llm) => {
            let s = standin::StandIn::start().await?;
            s.load(&llm.turns);
            scenario.resources = scenario.resources.replace("${LLM_ENDPOINT}", &s.url);
            Some(s)
        }
        None => None,
    };
    // The other agent, when the policy delegates to one: its Service's port is the stand-in's.
    let peer = match &scenario.peer {
        Some(p) => {
            let peer = peer::Peer::start(&p.skill, p.findings.clone()).await?;
            scenario.resources = scenario.resources.replace("${PEER_PORT}", &peer.port.to_string());
            Some(peer)
        }
        None => None,
    };
    // The repository the cluster is synced from, and its forge, when the scenario is GitOps.
    let repository = match &scenario.gitops {
        Some(g) => {
            let r = repository::Repository::start(g).await?;
            scenario.resources = r.substitute(&scenario.resources, &g.forge);
            Some(r)
        }
        None => None,
    };
    let docs = scenario.documents().map_err(|e| anyhow!(e))?;
    let model = Arc::new(OomModel::new(&scenario.model).map_err(|e| anyhow!("scenario model: {e}"))?);
    let rbac = crate::sandbox::rbac::Table::from_yaml(DEMO_RBAC).map_err(|e| anyhow!("the demo's RBAC table: {e}"))?;
    // Jobs run as the sandbox's default (each exits 0) unless the scenario makes some fail.
    let job_model: Option<Arc<dyn crate::sandbox::jobs::JobModel>> =
        (!scenario.model.jobs.is_empty()).then(|| model.clone() as Arc<dyn crate::sandbox::jobs::JobModel>);
    let config = Config { pod_model: Some(model.clone()), job_model, rbac, ..Config::default() };
    let sandbox = Sandbox::start(config).await?;
    model.attach(sandbox.api().clone());
    sandbox.install_crds()?;
    let client = sandbox.client(ADMIN_TOKEN).await?;
    // The admission policies Reflex ships: nobody approves in someone else's name; only the
    // operator writes status (the earned-trust record included).
    for policy in [APPROVAL_POLICY, STATUS_POLICY] {
        for doc in serde_saphyr::from_multiple::<Value>(policy).map_err(|e| anyhow!("an admission policy: {e}"))? {
            apply(&client, &doc).await?;
        }
    }
    writeln!(out, "Reflex demo — scenario {}", scenario.name)?;
    writeln!(out, "  {}", scenario.description)?;
    writeln!(
        out,
        "  stand-ins: the Kubernetes API is Reflex's in-memory sandbox ({}); Pod OOM kills and the Prometheus queries come from the scenario's model, computed from the sandbox's state",
        sandbox.url()
    )?;
    if let (Some(s), Some(llm)) = (&standin, &scenario.llm) {
        writeln!(
            out,
            "  stand-in: the LLM is a scripted OpenAI-compatible server ({}), not a model; it replays {} turns as {:?}, charged at ${}/${} per million tokens in/out",
            s.url,
            llm.turns.len(),
            llm.model,
            llm.price.input_per_million,
            llm.price.output_per_million
        )?;
    }
    if let Some(p) = &peer {
        writeln!(
            out,
            "  stand-in: the other agent is a scripted A2A agent on the A2A Rust SDK (127.0.0.1:{}), not another team's; tests/a2a.rs proves the same with the official Python SDK",
            p.port
        )?;
    }
    if let Some(r) = &repository {
        writeln!(
            out,
            "  stand-ins: the forge is a stand-in serving GitHub's and GitLab's pull-request endpoints ({}) over a local git repository ({}); the GitOps controller is a stand-in that applies main every 0.5s",
            r.url,
            r.bare.display()
        )?;
    }
    let mut applied = Vec::new();
    for doc in &docs {
        applied.push(apply(&client, doc).await?);
    }
    // The GitOps controller stand-in: what is on main is what runs.
    if let (Some(r), Some(g)) = (&repository, &scenario.gitops) {
        r.keep_synced(client.clone(), g.namespace.clone()).await?;
        applied.push(format!("the manifests on main ({})", g.files.keys().cloned().collect::<Vec<_>>().join(", ")));
    }
    // The ServiceAccount the LLM agent reads as, in each namespace Reflex serves (the chart
    // creates it with its read-only Role).
    for namespace in
        scenario.model.workloads.iter().map(|w| w.namespace.clone()).collect::<std::collections::BTreeSet<_>>()
    {
        let reader = json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": crate::mcp::identity::READER, "namespace": namespace}});
        applied.push(apply(&client, &reader).await?);
    }
    let workload = scenario.model.workloads.first().context("the scenario models no workload")?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &workload.namespace);
    // A later release: applied once the first revision has rolled out.
    let rollout = scenario.rollout_documents().map_err(|e| anyhow!(e))?;
    // A release whose image crashes never finishes rolling out (its Pods never get ready).
    let crashes = !workload.crashing_images.is_empty();
    if !rollout.is_empty() {
        rolled_out(&deployments, &workload.deployment).await?;
        for doc in &rollout {
            applied.push(format!("{} (a new revision)", apply(&client, doc).await?));
        }
        if !crashes {
            rolled_out(&deployments, &workload.deployment).await?;
        }
    }
    let before = deployments.get(&workload.deployment).await?;
    let memory_before = memory_limit(&before, &workload.container);
    let mut before_json = serde_json::to_value(&before)?;

    // The operator, assembled as `reflex run` assembles it: the same controller, stages,
    // intake and MCP server; the playbook executor reads through MCP, as the operator's
    // identity. The scenario's model stands in for Prometheus.
    let stop = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let intake_url = format!("http://{address}/alerts");
    let audit = Arc::new(crate::mcp::client::MemoryAudit::default());
    // The webhook wants a bearer token, as in production; the demo's Alertmanager has it.
    let token = uuid::Uuid::new_v4().simple().to_string();
    // The operator runs as its own ServiceAccount, which cannot write a workload: its changes
    // are made as the deployer of their environment (see rbac.yaml).
    let operator = Operator::assemble(
        operator::Config {
            client: sandbox.client(OPERATOR_TOKEN).await?,
            kube_config: sandbox.config(OPERATOR_TOKEN).await?,
            metrics: model.clone(),
            prometheus: None,
            mcp_url: format!("http://{address}/mcp"),
            // Services are reached on loopback: the demo's "cluster" is in this process.
            roles: crate::operator::Roles::ALL,
            a2a: crate::a2a::Settings {
                url: format!("http://{address}/a2a"),
                addressing: crate::a2a::registry::Addressing::Loopback,
                refresh: Duration::from_secs(1),
            },
            own_token: Some((OPERATOR_TOKEN.to_owned(), None)),
            mcp_allowed_hosts: vec![],
            mcp_audiences: vec![],
            webhook: crate::intake::webhook::Settings { token: Some(token.clone()), kill_switch: None },
            prices: scenario.llm.iter().map(|l| (l.model.clone(), l.price)).collect(),
            audit: audit.clone(),
            audit_log: None,
            deployers: Deployers::default(),
            max_concurrent_deploys: None,
            alertmanager: None,
            gitops: repository.as_ref().map(repository::Repository::settings).unwrap_or_default(),
        },
        &stop,
    );
    tokio::time::timeout(Duration::from_secs(10), operator.intake.ready())
        .await
        .map_err(|_| anyhow::anyhow!("intake's watches did not list within 10s"))?;
    let server = operator.serve(listener, stop.clone());
    let delegates = operator.delegates.clone();
    let controller = {
        let stop = stop.clone();
        tokio::spawn(async move { operator.run_controller(None, async move { stop.cancelled().await }).await })
    };
    let t0 = Instant::now();
    writeln!(
        out,
        "[{:>5.1}s] setup       applied {}; {} memory limit {memory_before}, working set {}",
        0.0,
        applied.join(", "),
        workload.deployment,
        workload.working_set
    )?;

    // Wait until the workload is visibly failing, as it would be when the alert fires (when
    // the model makes it fail: a memory limit below the working set).
    let pods: Api<Pod> = Api::namespaced(client.clone(), &workload.namespace);
    let deadline = Instant::now() + Duration::from_secs(10);
    let fails = crashes
        || match (
            crate::api::quantity::parse_quantity(&memory_before),
            crate::api::quantity::parse_quantity(&workload.working_set),
        ) {
            (Ok(limit), Ok(working_set)) => limit < working_set,
            _ => true,
        };
    if !fails && workload.load.is_some() {
        writeln!(
            out,
            "[{:>5.1}s] saturated   load {} on {} replicas",
            t0.elapsed().as_secs_f64(),
            workload.load.unwrap_or_default(),
            before.spec.replicas.unwrap_or(1)
        )?;
    }
    if fails {
        loop {
            let list = pods.list(&ListParams::default()).await?;
            let statuses: Vec<_> = list
                .items
                .iter()
                .flat_map(|p| p.status.iter().flat_map(|s| s.container_statuses.iter().flatten()))
                .collect();
            let restarts: i32 = statuses.iter().map(|c| c.restart_count).sum();
            if restarts > 0 {
                let last = statuses
                    .iter()
                    .filter_map(|c| c.last_state.as_ref()?.terminated.as_ref()?.reason.clone())
                    .next()
                    .unwrap_or_default();
                writeln!(
                    out,
                    "[{:>5.1}s] failing     {} restarts so far, last state {last}",
                    t0.elapsed().as_secs_f64(),
                    restarts
                )?;
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "the scenario's workload never failed; check its model");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // A Job the scenario makes fail has failed before its alert fires.
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(client.clone(), &workload.namespace);
    for failing in &scenario.model.jobs {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let job = jobs.get_opt(&failing.name).await?;
            let failed = job
                .as_ref()
                .and_then(|j| j.status.as_ref())
                .is_some_and(|s| s.conditions.iter().flatten().any(|c| c.type_ == "Failed" && c.status == "True"));
            if failed {
                writeln!(
                    out,
                    "[{:>5.1}s] failing     Job {} failed ({} Pods exited {})",
                    t0.elapsed().as_secs_f64(),
                    failing.name,
                    job.and_then(|j| j.status).and_then(|s| s.failed).unwrap_or_default(),
                    failing.exit_code
                )?;
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "Job {} never failed; check the scenario's model", failing.name);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Another agent: found from its Service's annotation alone, before the alert fires.
    if let Some(p) = &scenario.peer {
        let deadline = Instant::now() + Duration::from_secs(10);
        let agent = loop {
            let found = delegates
                .agents()
                .into_iter()
                .find(|a| a.state == crate::a2a::registry::AgentState::Ready && a.skills.contains(&p.skill));
            if let Some(a) = found {
                break a;
            }
            anyhow::ensure!(Instant::now() < deadline, "Reflex did not discover the scenario's agent within 10s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        writeln!(
            out,
            "[{:>5.1}s] discovered  A2A agent {} ({:?}) from its Service's annotation reflex.dev/a2a-agent; skills {}",
            t0.elapsed().as_secs_f64(),
            agent.key(),
            agent.name,
            agent.skills.join(", ")
        )?;
    }

    // Fire the alert as Alertmanager does.
    // `${POD}` in the alert's labels: one of the workload's Pods, as the mixin's alerts name it.
    if scenario.alert.labels.values().any(|v| v == "${POD}") {
        let list = pods.list(&ListParams::default()).await?;
        let restarts = |p: &Pod| -> i32 {
            p.status.iter().flat_map(|s| s.container_statuses.iter().flatten()).map(|c| c.restart_count).sum()
        };
        // The Pod the alert names is a failing one, when any fails.
        let mut ours: Vec<&Pod> = list
            .items
            .iter()
            .filter(|p| p.metadata.name.as_deref().is_some_and(|n| n.starts_with(&format!("{}-", workload.deployment))))
            .collect();
        ours.sort_by_key(|p| std::cmp::Reverse(restarts(p)));
        let pod = ours
            .first()
            .and_then(|p| p.metadata.name.clone())
            .context("the scenario's alert names ${POD}, and the workload has no Pod")?;
        for v in scenario.alert.labels.values_mut().filter(|v| *v == "${POD}") {
            v.clone_from(&pod);
        }
        for v in scenario.alert.annotations.values_mut() {
            *v = v.replace("${POD}", &pod);
        }
    }
    let fp = fingerprint(&scenario.alert.labels);
    let body = json!({
        "version": "4", "groupKey": "{}:{alertname=\"KubeContainerOOMKilled\"}", "truncatedAlerts": 0, "status": "firing",
        "receiver": "reflex", "groupLabels": {}, "commonLabels": scenario.alert.labels, "commonAnnotations": scenario.alert.annotations,
        "externalURL": "http://alertmanager.invalid",
        "alerts": [{"status": "firing", "labels": scenario.alert.labels, "annotations": scenario.alert.annotations,
            "startsAt": jiff::Timestamp::now().to_string(), "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": fp}]
    });
    let response: Value = reqwest::Client::new()
        .post(&intake_url)
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let created = response["created"].as_array().and_then(|a| a.first()).and_then(Value::as_str).map(str::to_owned);
    let Some(created) = created else {
        stop.cancel();
        anyhow::bail!("the intake created no Remediation: {response}");
    };
    let (ns, name) = created.split_once('/').context("intake answered with a malformed name")?;
    // The target as it is before anything changes it (the timeline shows the patch against
    // it): the Deployment read above, or whatever else the policy targets.
    let target = Api::<Remediation>::namespaced(client.clone(), ns).get(name).await?.spec.target;
    if target.kind != crate::api::TargetKind::Deployment || target.name != workload.deployment {
        let api: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), ns, &crate::cluster::api_resource(target.kind));
        before_json = serde_json::to_value(api.get(&target.name).await?)?;
    }
    writeln!(
        out,
        "[{:>5.1}s] alert       {} firing → POST {intake_url} → Remediation {created}",
        t0.elapsed().as_secs_f64(),
        scenario.alert.labels.get("alertname").map_or("", String::as_str)
    )?;

    // Follow the Remediation until it ends: its Events (one per phase transition) and its status.
    let rems: Api<Remediation> = Api::namespaced(client.clone(), ns);
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let by_rv = |e: &Event| e.metadata.resource_version.as_deref().and_then(|r| r.parse::<u64>().ok()).unwrap_or(0);
    let mut shown = RemediationStatus::default();
    let mut clock = timeline::StepClock::default();
    let mut seen_events = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut approved = false;
    let rem = loop {
        let rem = rems.get(name).await?;
        let status = rem.status.clone().unwrap_or_default();
        let at = t0.elapsed();
        let mut evs = events.list(&ListParams::default().fields(&format!("involvedObject.name={name}"))).await?.items;
        evs.sort_by_key(by_rv);
        for e in evs {
            if seen_events.insert(e.metadata.name.clone().unwrap_or_default()) {
                writeln!(out, "{}", timeline::transition(e.message.as_deref().unwrap_or_default(), at))?;
            }
        }
        for line in clock.observe(&status, at).into_iter().chain(timeline::changes(&shown, &status, &before_json, at)) {
            writeln!(out, "{line}")?;
        }
        shown = status;
        if shown.phase.is_terminal() {
            break rem;
        }
        if let (Phase::AwaitingApproval, Some(script), false) = (shown.phase, &scenario.approval, approved) {
            if keep {
                // Leave it waiting, the operator running: a person approves.
                writeln!(
                    out,
                    "[{:>5.1}s] waiting     for approval: kubectl reflex approve {name} -n {ns}",
                    at.as_secs_f64()
                )?;
                let sandbox = Some(sandbox);
                let expected = Phase::AwaitingApproval;
                return Ok(Outcome {
                    scenario: scenario.name,
                    expected,
                    remediation: rem,
                    memory_before: memory_before.clone(),
                    memory_after: memory_before,
                    template_before: serde_json::to_value(&before.spec.template)?,
                    template_after: serde_json::Value::Null,
                    events: Vec::new(),
                    tool_calls: Vec::new(),
                    elapsed: t0.elapsed(),
                    llm_traceparents: standin.as_ref().map(standin::StandIn::traceparents).unwrap_or_default(),
                    sandbox,
                });
            }
            approve_as_people(&sandbox, script, &rem, &mut *out, t0).await?;
            approved = true;
        }
        if Instant::now() > deadline {
            stop.cancel();
            anyhow::bail!("the Remediation did not finish within 2 minutes (phase {:?})", shown.phase);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let elapsed = t0.elapsed();
    let after = deployments.get(&workload.deployment).await?;
    let memory_after = memory_limit(&after, &workload.container);
    let template_after = serde_json::to_value(&after.spec.template)?;
    let template_before = serde_json::to_value(&before.spec.template)?;
    // The controller publishes a transition's Event after writing the status: wait (briefly)
    // for the one into the final phase.
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let into_final = format!("-> {}:", shown.phase);
    let settle = Instant::now() + Duration::from_secs(5);
    let mut evs = loop {
        let evs = events.list(&ListParams::default().fields(&format!("involvedObject.name={name}"))).await?.items;
        if Instant::now() > settle || evs.iter().any(|e| e.message.as_deref().is_some_and(|m| m.contains(&into_final)))
        {
            break evs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    evs.sort_by(|a, b| {
        a.metadata
            .resource_version
            .as_deref()
            .map(|r| r.parse::<u64>().unwrap_or(0))
            .cmp(&b.metadata.resource_version.as_deref().map(|r| r.parse::<u64>().unwrap_or(0)))
    });
    // Transitions whose Event came after the status that ended the Remediation (the controller
    // publishes it after the write): on the timeline too.
    for e in &evs {
        if seen_events.insert(e.metadata.name.clone().unwrap_or_default()) {
            writeln!(out, "{}", timeline::transition(e.message.as_deref().unwrap_or_default(), elapsed))?;
        }
    }
    let event_reasons: Vec<String> = evs.iter().filter_map(|e| e.reason.clone()).collect();
    if let Some(r) = &repository
        && rem.status.as_ref().and_then(|s| s.deploy.as_ref()?.pull_request.as_ref()).is_some()
    {
        writeln!(out, "main, as merged (git diff main^1 main):")?;
        for line in r.last_merge() {
            writeln!(out, "    {line}")?;
        }
    }
    stop.cancel();
    let _ = controller.await;
    let _ = server.await;
    let tool_calls: Vec<String> =
        audit.0.lock().map(|r| r.iter().map(|c| format!("{} {}", c.tool, c.outcome)).collect()).unwrap_or_default();
    let phase = shown.phase;
    let expected = scenario.expect.phase;
    writeln!(
        out,
        "result: {phase:?} ({}) in {:.1}s; {} memory limit {memory_before} → {memory_after}; {} Events on the Remediation; {} MCP tool calls (audited)",
        if phase == expected {
            "as the scenario expects".to_owned()
        } else {
            format!("the scenario expects {expected:?}")
        },
        elapsed.as_secs_f64(),
        workload.deployment,
        event_reasons.len(),
        tool_calls.len()
    )?;
    let sandbox = if keep { Some(sandbox) } else { None };
    Ok(Outcome {
        scenario: scenario.name,
        expected,
        remediation: rem,
        memory_before,
        memory_after,
        template_before,
        template_after,
        events: event_reasons,
        tool_calls,
        elapsed,
        llm_traceparents: standin.as_ref().map(standin::StandIn::traceparents).unwrap_or_default(),
        sandbox,
    })
}
