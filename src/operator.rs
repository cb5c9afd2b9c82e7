//! The composition root: assembles the operator — Reflex's MCP server, the loopback MCP
//! client the stages read through, the stages, the alert intake, and the HTTP router that
//! serves `/alerts`, `/mcp`, `/a2a` and the agent card — for `reflex run` and `reflex demo` alike, so the demo runs
//! exactly what runs in a cluster.
//!
//! Contract: [`Operator::assemble`] wires; it reads nothing from the environment, the file
//! system or the command line (the CLI does that and passes a [`Config`]). It starts the
//! intake's watches; [`Operator::serve`] serves the router; [`Operator::run_controller`] runs
//! the controller, elected or alone, until shutdown.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::executor::PlaybookExecutor;
use crate::agent::llm::Price;
use crate::agent::stage::AgentStage;
use crate::agent::tools::{Loopback, ToolSource};
use crate::cluster::Impersonator;
use crate::controller::leader;
use crate::controller::reconcile::{self, Guards};
use crate::controller::stages::Stages;
use crate::deploy::identity::{DeployerIdentity, Deployers};
use crate::intake::webhook::{self, Intake};
use crate::mcp::client::Audit;
use crate::mcp::identity::Identities;
use crate::mcp::server::{Backends, ReflexMcp};
use crate::metrics::MetricsSource;

/// The parts of the operator one process runs (`reflex run --role`): all of them, or one, so
/// that a chart can run each as its own Deployment with its own ServiceAccount — the identity
/// that impersonates MCP and A2A callers is then not the one that runs the controller, and
/// the webhook scales out on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    /// The reconciler (elected) and its stages.
    pub controller: bool,
    /// `/alerts`: the Alertmanager webhook.
    pub intake: bool,
    /// `/mcp` and `/a2a` (with the agent card).
    pub mcp: bool,
}

impl Roles {
    pub const ALL: Self = Self { controller: true, intake: true, mcp: true };

    /// `all`, or one of `controller`, `intake`, `mcp`.
    ///
    /// # Errors
    /// Any other name.
    pub fn parse(name: &str) -> Result<Self, String> {
        let none = Self { controller: false, intake: false, mcp: false };
        match name {
            "all" => Ok(Self::ALL),
            "controller" => Ok(Self { controller: true, ..none }),
            "intake" => Ok(Self { intake: true, ..none }),
            "mcp" => Ok(Self { mcp: true, ..none }),
            other => Err(format!("{other:?} is not a role: all, controller, intake or mcp")),
        }
    }
}

/// What the operator is assembled from.
pub struct Config {
    /// The operator's own client.
    pub client: kube::Client,
    /// The configuration `client` was built from: the MCP server derives impersonating
    /// clients for its callers from it.
    pub kube_config: kube::Config,
    /// Where verification (and the playbook executor, when it reads directly) gets metrics.
    pub metrics: Arc<dyn MetricsSource>,
    /// The Prometheus the MCP server's PromQL and alert tools query; without one, they
    /// answer from `metrics`.
    pub prometheus: Option<prometheus_http_query::Client>,
    /// The URL this operator serves `/mcp` at, for its own loopback client.
    pub mcp_url: String,
    /// The operator's bearer token for its own MCP server, and the file to re-read it from
    /// (tokens rotate); without one the playbook executor reads directly, not through MCP.
    pub own_token: Option<(String, Option<PathBuf>)>,
    /// Host names MCP clients may reach `/mcp` by, besides loopback.
    pub mcp_allowed_hosts: Vec<String>,
    /// Audiences an MCP caller's token must be minted for; empty: the API server's.
    pub mcp_audiences: Vec<String>,
    /// The webhook's settings (bearer token, kill switch).
    pub webhook: webhook::Settings,
    /// The LLM price table (dollars per million tokens by model).
    pub prices: BTreeMap<String, Price>,
    /// Where the loopback MCP client's calls are audited.
    pub audit: Arc<dyn Audit>,
    /// The hash-chained audit log (`--audit-log`): tool calls, LLM calls, delegations, gate
    /// decisions, approvals, deploys and rollbacks; none: the tool calls are logged only.
    pub audit_log: Option<Arc<dyn crate::audit::Sink>>,
    /// The ServiceAccounts deploy and rollback act as, one per environment.
    pub deployers: Deployers,
    /// Most changes deploying or being verified at once, across the cluster.
    pub max_concurrent_deploys: Option<u32>,
    /// Alertmanager, for silences while a fix is in flight.
    pub alertmanager: Option<Arc<crate::silence::Alertmanager>>,
    /// How GitOps changes are made (working copies, local repositories, forge polling).
    pub gitops: crate::gitops::flow::Settings,
    /// Reflex's A2A endpoint and the discovery of other agents.
    pub a2a: crate::a2a::Settings,
    /// What this process runs.
    pub roles: Roles,
}

/// An assembled operator.
pub struct Operator {
    /// The operator's own client.
    pub client: kube::Client,
    /// The stages the controller drives.
    pub stages: Stages,
    /// The alert intake (its watches are running; see [`Intake::ready`]).
    pub intake: Arc<Intake>,
    /// `/alerts` and `/mcp`.
    pub router: axum::Router,
    /// What the controller enforces before every effect (the kill switch intake obeys too).
    pub guards: Guards,
    /// The agents discovered over A2A.
    pub delegates: Arc<crate::a2a::registry::Registry>,
    /// What this process runs.
    pub roles: Roles,
}

impl Operator {
    /// Assembles the operator. `stop` ends the MCP server's calls in flight at shutdown.
    pub fn assemble(config: Config, stop: &CancellationToken) -> Self {
        let Config {
            client,
            kube_config,
            metrics,
            prometheus,
            mcp_url,
            own_token,
            mcp_allowed_hosts,
            mcp_audiences,
            webhook,
            prices,
            audit,
            audit_log,
            deployers,
            max_concurrent_deploys,
            alertmanager,
            gitops,
            a2a,
            roles,
        } = config;
        // Tool calls and delegations go to the chained log too, when there is one.
        let audit: Arc<dyn Audit> = match &audit_log {
            Some(sink) => Arc::new(Chained { log: audit, sink: sink.clone() }),
            None => audit,
        };
        let identity = DeployerIdentity { deployers, impersonator: Arc::new(Impersonator::new(kube_config.clone())) };
        // The playbook executor reads through Reflex's own MCP server, as the operator.
        let tools = match own_token {
            Some((token, token_file)) => ToolSource::Mcp(Arc::new(
                Loopback::new(mcp_url, token, audit.clone())
                    .with_token_file(token_file)
                    .with_audiences(mcp_audiences.clone()),
            )),
            None => {
                tracing::warn!(
                    "the kubeconfig has no static token for the operator's identity (exec or client certificates); the playbook executor reads directly instead of through MCP"
                );
                ToolSource::Direct
            }
        };
        let tool_metrics = crate::mcp::server::ToolMetrics::default();
        // The agents other agents are: discovered from annotated Services, re-read on a timer.
        let delegates = Arc::new(crate::a2a::registry::Registry::default());
        let backends = Backends {
            metrics: prometheus.is_none().then(|| metrics.clone()),
            prometheus,
            operator: Some(client.clone()),
            agents: Some(delegates.clone()),
            tool_metrics: tool_metrics.clone(),
        };
        let identities = Arc::new(Identities::new(client.clone(), kube_config).with_audiences(mcp_audiences));
        let mcp = crate::mcp::router(ReflexMcp::new(backends), identities.clone(), mcp_allowed_hosts, stop.clone());
        // A2A callers are reviewed and impersonated exactly as MCP callers are.
        let a2a_router = crate::a2a::server::router(identities, client.clone(), crate::a2a::card::card(&a2a.url));
        tokio::spawn(
            crate::a2a::registry::Discovery {
                client: client.clone(),
                registry: delegates.clone(),
                addressing: a2a.addressing,
                refresh: a2a.refresh,
                publish: roles.controller,
            }
            .run(stop.clone()),
        );
        // Webhooks over https only: their URLs come from Secrets namespace users write.
        let notifier = crate::notify::Notifier::new(false)
            .map_err(|e| tracing::warn!(error = %e, "notifications are off: no HTTP client"))
            .ok();
        let guards = Guards {
            kill_switch: webhook.kill_switch.clone(),
            max_concurrent_deploys,
            alertmanager,
            notifier,
            audit: audit_log.clone().map(crate::controller::reconcile::AuditSink),
            metrics: crate::controller::reconcile::ControllerMetrics::default(),
        };
        // Targets resolved from an alert's labels are read through Reflex's own MCP server, as the
        // namespace's reader identity (not the operator).
        let reader: Option<Arc<dyn crate::intake::resolve::Reader>> = match &tools {
            ToolSource::Mcp(loopback) => Some(Arc::new(McpReader::new(loopback.clone(), client.clone()))),
            ToolSource::Direct => None,
        };
        let intake =
            Intake::start_resolving(client.clone(), webhook, crate::intake::webhook::Limits::default(), reader);
        if let Some(n) = &guards.notifier {
            intake.register_metrics(|r| n.register(r));
        }
        intake.register_metrics(|r| guards.metrics.register(r));
        intake.register_metrics(|r| tool_metrics.register(r));
        // Each role serves only its own endpoints (health and metrics everywhere).
        let mut router = webhook::health_router(intake.clone());
        if roles.intake {
            router = router.merge(webhook::alerts_router(intake.clone()));
        }
        if roles.mcp {
            router = router.merge(mcp).merge(a2a_router);
        }
        let stages = stages(StageParts {
            client: client.clone(),
            metrics,
            tools,
            prices,
            identity,
            kill_switch: guards.kill_switch.clone(),
            gitops,
            delegates: Some(delegates.clone()),
            audit: audit.clone(),
            audit_log,
        });
        Self { stages, client, intake, router, guards, delegates, roles }
    }

    /// Serves `/alerts` and `/mcp` on `listener` until `stop`, within the listener bounds
    /// every endpoint has (`web::serve`: connections, header time; each request knows its
    /// peer, so token reviews are limited per source).
    pub fn serve(&self, listener: tokio::net::TcpListener, stop: CancellationToken) -> JoinHandle<()> {
        // Request/response traffic (MCP calls, webhook deliveries): no Nagle delay.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            let _ = tcp.set_nodelay(true);
        });
        crate::web::serve(listener, self.router.clone(), crate::web::Limits::default(), stop)
    }

    /// Runs the controller until `shutdown`: under `election` when given (only the leader
    /// reconciles), else alone (one replica only). Without the controller role, waits for
    /// `shutdown`.
    ///
    /// # Errors
    /// The controller's: the CRDs are not installed, or the election failed.
    pub async fn run_controller(
        &self,
        election: Option<leader::Election>,
        shutdown: impl Future<Output = ()> + Send + Sync + 'static,
    ) -> Result<(), leader::ElectionError> {
        if !self.roles.controller {
            shutdown.await;
            return Ok(());
        }
        let (client, stages, guards) = (self.client.clone(), self.stages.clone(), self.guards.clone());
        match election {
            None => Ok(reconcile::run(client, stages, guards, shutdown).await?),
            Some(election) => leader::run_elected(client, stages, guards, election, shutdown).await,
        }
    }
}

/// What the stages this build ships are made from.
pub struct StageParts {
    pub client: kube::Client,
    /// Where verification and the playbook executor's direct reads get metrics.
    pub metrics: Arc<dyn MetricsSource>,
    /// How the playbook executor reads (through Reflex's MCP server, or directly).
    pub tools: ToolSource,
    /// The LLM price table.
    pub prices: BTreeMap<String, Price>,
    /// The deployer ServiceAccounts CI, deploy and rollback act as.
    pub identity: DeployerIdentity,
    /// The kill switch deploy reads again before it writes.
    pub kill_switch: Option<(String, String)>,
    /// How GitOps changes are made.
    pub gitops: crate::gitops::flow::Settings,
    /// The agents discovered over A2A, for delegated steps.
    pub delegates: Option<Arc<crate::a2a::registry::Registry>>,
    /// Where the agent's tool calls and delegations are audited.
    pub audit: Arc<dyn Audit>,
    /// The chained audit log, for the agent's LLM calls.
    pub audit_log: Option<Arc<dyn crate::audit::Sink>>,
}

/// An [`Audit`] that also appends each record to the chained audit log: a tool call, or a
/// delegation (its server is `a2a:…`).
struct Chained {
    log: Arc<dyn Audit>,
    sink: Arc<dyn crate::audit::Sink>,
}

impl Audit for Chained {
    fn record(&self, r: &crate::mcp::client::AuditRecord) {
        self.log.record(r);
        let kind = if r.server.starts_with("a2a:") { "delegation" } else { "tool_call" };
        let fields = serde_json::to_value(r).unwrap_or_default();
        self.sink.record(kind, r.trace_id.as_deref(), fields);
    }
}

/// The stages this build ships: the agent (the playbook executor, reading through `tools`,
/// the LLM agent, and delegation to discovered agents), CI (server-side dry-run, then a test
/// Job or a GitOps pull request), the trust gate, deploy and rollback (server-side apply, or
/// the pull request's merge and revert) (CI, deploy and rollback acting as the deployer
/// `identity`; deploy reading the operator's `kill_switch` again before it writes), and the
/// verification sampler reading `metrics`.
pub fn stages(parts: StageParts) -> Stages {
    let StageParts { client, metrics, tools, prices, identity, kill_switch, gitops, delegates, audit, audit_log } =
        parts;
    let loopback = match &tools {
        ToolSource::Mcp(l) => Some(l.clone()),
        ToolSource::Direct => None,
    };
    let executor = Arc::new(PlaybookExecutor::new(client.clone(), metrics.clone()).with_tools(tools));
    let agent = Arc::new(AgentStage {
        client: client.clone(),
        playbook: executor,
        loopback,
        prices: Arc::new(prices),
        audit,
        audit_log,
        delegates,
    });
    let gate = Arc::new(crate::gate::trust::TrustGate { client: client.clone() });
    // Deploy asks the same gate again just before it writes.
    // A GitOps policy's change is merged, not applied: the deploy backends choose per policy.
    let deploy = Arc::new(crate::deploy::gitops::Backends {
        direct: crate::deploy::apply::ServerSideApply {
            client: client.clone(),
            gate: gate.clone(),
            identity: identity.clone(),
            kill_switch,
        },
        gitops: Arc::new(gitops.clone()),
    });
    Stages {
        diagnose: Some(agent.clone()),
        propose: Some(agent),
        test: Some(Arc::new(crate::ci::Ci::new(client.clone(), identity).with_gitops(gitops))),
        gate: Some(gate),
        deploy: Some(deploy.clone()),
        verify: Some(Arc::new(crate::verify::sampler::Sampler { client, metrics })),
        rollback: Some(deploy),
    }
}

/// Intake's [`crate::intake::resolve::Reader`]: `get_resource` on Reflex's MCP server as the
/// reader ServiceAccount of the alert's namespace (its MCP session kept a few minutes, within
/// the reader token's life).
struct McpReader {
    loopback: Arc<Loopback>,
    operator: kube::Client,
    sessions: moka::future::Cache<String, Arc<crate::mcp::client::McpClient>>,
}

impl McpReader {
    fn new(loopback: Arc<Loopback>, operator: kube::Client) -> Self {
        let ttl =
            std::time::Duration::from_secs(u64::try_from(crate::agent::tools::READER_TOKEN_SECONDS / 2).unwrap_or(300));
        Self {
            loopback,
            operator,
            sessions: moka::future::Cache::builder().max_capacity(1000).time_to_live(ttl).build(),
        }
    }
}

impl crate::intake::resolve::Reader for McpReader {
    fn read<'a>(
        &'a self,
        namespace: &'a str,
        kind: &'a str,
        name: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<serde_json::Value>, String>> {
        use futures::FutureExt;
        async move {
            let session = self
                .sessions
                .try_get_with(namespace.to_owned(), async {
                    self.loopback.agent_client(&self.operator, namespace).await.map(Arc::new).map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| e.to_string())?;
            let mut args = serde_json::Map::new();
            args.insert("kind".into(), kind.into());
            args.insert("namespace".into(), namespace.into());
            args.insert("name".into(), name.into());
            let ctx = crate::mcp::client::CallContext { cancel: CancellationToken::new(), trace_id: None };
            match session.call("get_resource", args, &ctx).await {
                Ok(v) => Ok(v.get("object").cloned()),
                Err(crate::mcp::client::ClientError::Tool { message, .. }) if message.contains("not found: ") => {
                    Ok(None)
                }
                // The session itself failed (its token, the connection): a new one next time.
                Err(
                    e @ (crate::mcp::client::ClientError::Connect { .. }
                    | crate::mcp::client::ClientError::Transport { .. }),
                ) => {
                    self.sessions.invalidate(namespace).await;
                    Err(e.to_string())
                }
                Err(e) => Err(e.to_string()),
            }
        }
        .boxed()
    }
}
