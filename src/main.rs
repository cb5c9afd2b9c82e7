//! The `reflex` command line. Wiring only: everything testable lives in the library.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use reflex::{controller, telemetry};

/// Reflex: a Kubernetes operator that closes the loop from a Prometheus alert to a
/// verified fix.
#[derive(Parser)]
#[command(name = "reflex", version, about, long_about = None)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value = "text", env = "REFLEX_LOG_FORMAT")]
    log_format: telemetry::LogFormat,
    /// OTLP/gRPC endpoint to export traces to (e.g. http://otel-collector:4317): one trace per
    /// Remediation, with spans for every step, MCP tool call and LLM call. Unset: no traces.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once at start-up: the size of the `run` variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run the operator against the current kubeconfig context, or the in-cluster config
    /// when running in a Pod. Needs the CRDs installed (`reflex crd | kubectl apply -f -`).
    Run {
        /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
        #[arg(long, env = "KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// Kubeconfig context to use (default: the current context).
        #[arg(long)]
        context: Option<String>,
        /// Prometheus base URL the verify and read steps query.
        #[arg(long, env = "REFLEX_PROMETHEUS_URL", default_value = "http://prometheus-operated.monitoring:9090")]
        prometheus_url: String,
        /// Address the Alertmanager webhook (`POST /alerts`) listens on.
        #[arg(long, env = "REFLEX_LISTEN", default_value = "0.0.0.0:8080")]
        listen: std::net::SocketAddr,
        /// Namespace of the leader-election Lease (the operator's own namespace).
        #[arg(long, env = "POD_NAMESPACE", default_value = "reflex-system")]
        lease_namespace: String,
        /// This replica's identity in the election (the Pod name in a cluster).
        #[arg(long, env = "POD_NAME")]
        identity: Option<String>,
        /// File holding the bearer token Alertmanager presents to the webhook.
        #[arg(long, env = "REFLEX_WEBHOOK_TOKEN_FILE")]
        webhook_token_file: Option<PathBuf>,
        /// Secret (`namespace/name`, key `token`) holding that token instead.
        #[arg(long, env = "REFLEX_WEBHOOK_TOKEN_SECRET", conflicts_with = "webhook_token_file")]
        webhook_token_secret: Option<String>,
        /// Accept webhook deliveries without a token (only behind something that authenticates).
        #[arg(long)]
        insecure_webhook: bool,
        /// ConfigMap (`namespace/name`) whose `killSwitch: "true"` stops all new Remediations.
        #[arg(long, env = "REFLEX_KILL_SWITCH_CONFIGMAP")]
        kill_switch_configmap: Option<String>,
        /// Host names MCP clients may reach `/mcp` by, besides loopback (the Service's DNS
        /// names, e.g. reflex.reflex-system.svc); repeat or comma-separate.
        #[arg(long, env = "REFLEX_MCP_ALLOWED_HOSTS", value_delimiter = ',')]
        mcp_allowed_hosts: Vec<String>,
        /// The URL other agents reach Reflex's A2A endpoint at, for its agent card (e.g.
        /// http://reflex.reflex-system.svc:8080/a2a); default: the listen address's.
        #[arg(long, env = "REFLEX_A2A_URL")]
        a2a_url: Option<String>,
        /// Reach discovered agents' Services at 127.0.0.1:<port> (an operator outside the
        /// cluster with the ports forwarded), not <service>.<namespace>.svc.
        #[arg(long, env = "REFLEX_A2A_LOOPBACK")]
        a2a_loopback: bool,
        /// What this process runs: all (the default), or one role — controller (the elected
        /// reconciler and its stages), intake (the Alertmanager webhook), mcp (the MCP and A2A
        /// servers) — so each can run as its own Deployment with its own ServiceAccount.
        #[arg(long, env = "REFLEX_ROLE", default_value = "all", value_parser = reflex::operator::Roles::parse)]
        role: reflex::operator::Roles,
        /// Where the stages reach Reflex's MCP server (the mcp role's Service when the
        /// controller runs on its own); default: this process's listen address.
        #[arg(long, env = "REFLEX_MCP_URL")]
        mcp_url: Option<String>,
        /// The hash-chained audit log: a file to append to, or `-` for stdout.
        #[arg(long, env = "REFLEX_AUDIT_LOG", default_value = "-")]
        audit_log: String,
        /// How often every discovered agent's card is read again.
        #[arg(long, env = "REFLEX_A2A_REFRESH_SECONDS", default_value_t = 30)]
        a2a_refresh_seconds: u64,
        /// Audiences an MCP caller's token must be minted for (e.g. `reflex`, from a
        /// TokenRequest); empty: the API server's own. List the API server's audience too to go
        /// on accepting ordinary ServiceAccount tokens.
        #[arg(long, env = "REFLEX_MCP_AUDIENCES", value_delimiter = ',')]
        mcp_audiences: Vec<String>,
        /// Let calls to URLs a policy names (LLM endpoint, MCP servers, webhooks) reach
        /// link-local and cloud metadata addresses, refused by default.
        #[arg(long, env = "REFLEX_ALLOW_LINK_LOCAL_EGRESS")]
        allow_link_local_egress: bool,
        /// Where GitOps working copies are cloned (each removed after its step).
        #[arg(long, env = "REFLEX_GITOPS_WORK_DIR")]
        gitops_work_dir: Option<std::path::PathBuf>,
        /// Seconds between questions to a forge about checks, reviews and merges.
        #[arg(long, env = "REFLEX_GITOPS_POLL_SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
        gitops_poll_seconds: u64,
        /// Let GitOps policies name file:// repositories on the operator's own filesystem
        /// (tests and demos only).
        #[arg(long, env = "REFLEX_ALLOW_LOCAL_REPOSITORIES")]
        allow_local_repositories: bool,
        /// YAML price table for the LLM agent's cost accounting and budgets: model name →
        /// {inputPerMillion, outputPerMillion} in US dollars per million tokens.
        #[arg(long, env = "REFLEX_LLM_PRICES")]
        llm_prices: Option<std::path::PathBuf>,
        /// Run the controller without leader election (one replica only).
        #[arg(long)]
        no_leader_election: bool,
        /// The ServiceAccount deploy and rollback act as in staging namespaces (in the
        /// operator's namespace); the operator itself never writes a workload.
        #[arg(long, env = "REFLEX_DEPLOYER_STAGING", default_value = "reflex-deployer-staging")]
        deployer_staging: String,
        /// The ServiceAccount deploy and rollback act as in production namespaces.
        #[arg(long, env = "REFLEX_DEPLOYER_PRODUCTION", default_value = "reflex-deployer-production")]
        deployer_production: String,
        /// Most changes deploying or being verified at once across the cluster; a deploy past
        /// it waits (condition ConcurrencyCap).
        #[arg(long, env = "REFLEX_MAX_CONCURRENT_DEPLOYS", value_parser = clap::value_parser!(u32).range(1..))]
        max_concurrent_deploys: Option<u32>,
        /// Alertmanager's base URL, for the silences policies ask for (`spec.silenceAlert`)
        /// while a fix is in flight.
        #[arg(long, env = "REFLEX_ALERTMANAGER_URL")]
        alertmanager_url: Option<String>,
    },
    /// Run the whole loop — alert to verified fix — on the built-in sandbox, and print the
    /// timeline. Exits 0 when the scenario ends as it expects.
    Demo {
        /// Built-in scenario: `oom` (the fix holds), `bad-fix` (it does not; rolled back),
        /// `llm` (an LLM agent — a scripted stand-in model — diagnoses over MCP and proposes),
        /// or one per playbook: `saturation` (scale-out-on-saturation), `leak`
        /// (restart-on-leak), `bad-rollout` (rollback-bad-rollout), `pool`
        /// (tune-config-parameter), `known-bug` (image-bump), `hpa-saturation`
        /// (raise-hpa-max-on-saturation), `production` (the fix waits for approval; a forged
        /// approval is refused; on-call approves as themselves; deployed as the production
        /// deployer).
        #[arg(long, default_value = "oom")]
        scenario: String,
        /// Run a scenario file instead of a built-in one.
        #[arg(long, conflicts_with = "scenario")]
        scenario_file: Option<PathBuf>,
        /// Leave the sandbox running afterwards, to inspect it with kubectl.
        #[arg(long)]
        keep: bool,
        /// Where `--keep` writes the sandbox's kubeconfig.
        #[arg(long, default_value = "reflex-demo.kubeconfig")]
        kubeconfig: PathBuf,
    },
    /// Print Reflex's CustomResourceDefinitions as multi-document YAML
    /// (`reflex crd | kubectl apply -f -`).
    Crd {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Start the sandbox (an in-memory stand-in for a Kubernetes API server) with Reflex's
    /// CRDs installed, write its kubeconfig, and serve until interrupted.
    Sandbox {
        /// Loopback port to listen on (0 picks a free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Where to write the kubeconfig.
        #[arg(long, default_value = "reflex-sandbox.kubeconfig")]
        kubeconfig: PathBuf,
        /// RBAC table (YAML: users, serviceAccounts, grants). Default: one administrator.
        #[arg(long)]
        rbac: Option<PathBuf>,
    },
    /// Approve the Remediation's current proposal, as yourself (also `kubectl reflex approve`).
    Approve {
        /// The Remediation.
        name: String,
        #[command(flatten)]
        who: Who,
        /// Why, for the audit trail.
        #[arg(long)]
        reason: Option<String>,
        /// The proposal digest you reviewed (`reflex describe`): refused if it changed since.
        #[arg(long)]
        digest: Option<String>,
    },
    /// Reject the Remediation's change, as yourself: it is cancelled.
    Reject {
        /// The Remediation.
        name: String,
        #[command(flatten)]
        who: Who,
        /// Why, for the audit trail.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Cancel the Remediation, as yourself: nothing further is deployed.
    Cancel {
        /// The Remediation.
        name: String,
        #[command(flatten)]
        who: Who,
    },
    /// List the agents Reflex discovers over A2A (Services annotated
    /// reflex.dev/a2a-agent: "true"): each card read now, its skills, and why one is not usable.
    Agents {
        /// In every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Reach the Services at 127.0.0.1:<port> (their ports forwarded), not by cluster DNS.
        #[arg(long)]
        loopback: bool,
        #[command(flatten)]
        who: Who,
    },
    /// List Remediations (phase, target, what they wait for).
    Get {
        #[command(flatten)]
        who: Who,
    },
    /// Show one Remediation: proposal, CI, gate, approval, deploy, verification.
    Describe {
        /// The Remediation.
        name: String,
        #[command(flatten)]
        who: Who,
    },
    /// Explain one Remediation: what fired, what Reflex did and when, what it changed, and the
    /// verification samples as a chart with the verdict.
    Explain {
        /// The Remediation.
        name: String,
        #[command(flatten)]
        who: Who,
    },
    /// The audit log: `reflex audit verify FILE` checks its hash chain and names the first
    /// record that was edited, removed or moved.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// MCP: `reflex mcp manifest` prints every tool's name, version and schema hash.
    Mcp {
        #[command(subcommand)]
        command: McpCommand,
    },
    /// What Reflex would do with an alert, given policies, playbooks, manifests and metric
    /// values — on an in-memory API server, writing nowhere: which policy matches and why the
    /// others do not, the target, each read and its value, the patch as a diff (or the
    /// refusal), the gate's decision.
    Simulate {
        /// The alert: a YAML or JSON file with `labels` (and `annotations`).
        #[arg(long, conflicts_with = "label")]
        alert: Option<std::path::PathBuf>,
        /// The alert's labels instead, as `name=value` (repeat).
        #[arg(long)]
        label: Vec<String>,
        /// Files of policies, playbooks and manifests (repeat; multi-document YAML).
        #[arg(long = "file", short = 'f')]
        files: Vec<std::path::PathBuf>,
        /// A YAML list of `{query, value}`: what each PromQL query returns.
        #[arg(long)]
        series: Option<std::path::PathBuf>,
        /// The namespace of namespaced documents that name none (a policy pack).
        #[arg(long, short = 'n')]
        namespace: Option<String>,
        /// Read metrics from this Prometheus instead of `--series`.
        #[arg(long, conflicts_with = "series")]
        prometheus_url: Option<String>,
        /// Also copy the alert's namespace from the current cluster (read-only: lists only;
        /// Secrets never): its policies, playbooks, workloads, Pods and ConfigMaps.
        #[arg(long)]
        from_cluster: bool,
        /// Kubeconfig for --from-cluster.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Context for --from-cluster.
        #[arg(long)]
        context: Option<String>,
    },
    /// Policy unit tests, in the spirit of `promtool test rules`: every `*.yaml` file in DIR
    /// holds cases of alert + objects + series and the target, patch (or refusal) and gate
    /// decision each must come to. Exit code 1 when one fails.
    Test {
        /// The directory of test files.
        dir: std::path::PathBuf,
    },
    /// Print version and build information.
    Version,
}

/// Who acts and where: the kubeconfig identity (never the operator's).
#[derive(clap::Args)]
struct Who {
    /// Namespace (default: the kubeconfig context's).
    #[arg(short, long)]
    namespace: Option<String>,
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use (default: the current context).
    #[arg(long)]
    context: Option<String>,
}

impl Who {
    /// A client as the kubeconfig's user, and the namespace to act in.
    async fn connect(self) -> anyhow::Result<(kube::Client, String)> {
        reflex::install_crypto_provider();
        let (client, config) = client(self.kubeconfig, self.context).await?;
        Ok((client, self.namespace.unwrap_or(config.default_namespace)))
    }
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check a log's hash chain (exit code 1 at the first record that does not hold).
    Verify {
        /// The log: JSON lines as `reflex run --audit-log` writes them (other lines are skipped).
        file: PathBuf,
    },
}

#[derive(Subcommand)]
enum McpCommand {
    /// Print the tool manifest (commit it as mcp-manifest.json).
    Manifest,
}

/// The operator's allocator (see Cargo.toml: its hot paths are allocation-bound).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd { dir: None } => {
            print!("{}", reflex::api::crds::render_all().context("rendering CRDs")?);
        }
        Command::Crd { dir: Some(dir) } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            for crd in reflex::api::crds::all() {
                let path = dir.join(reflex::api::crds::file_name(&crd));
                let body = reflex::api::crds::render_file(&crd).context("rendering CRD")?;
                std::fs::write(&path, body).with_context(|| format!("writing {}", path.display()))?;
                println!("wrote {}", path.display());
            }
        }
        Command::Mcp { command: McpCommand::Manifest } => {
            print!("{}", reflex::mcp::manifest::render(&reflex::mcp::manifest::compute()));
        }
        Command::Approve { name, who, reason, digest } => {
            let (client, ns) = who.connect().await?;
            let decision = reflex::api::ApprovalDecision::Approve;
            let a = reflex::oncall::decide(&client, &ns, &name, decision, reason, digest.as_deref()).await?;
            println!(
                "remediationapproval/{} created: {} approves proposal {} of {ns}/{name}",
                a.metadata.name.unwrap_or_default(),
                a.spec.approver,
                a.spec.proposal_digest.unwrap_or_default()
            );
        }
        Command::Reject { name, who, reason } => {
            let (client, ns) = who.connect().await?;
            let a = reflex::oncall::decide(&client, &ns, &name, reflex::api::ApprovalDecision::Reject, reason, None)
                .await?;
            println!(
                "remediationapproval/{} created: {} rejects {ns}/{name}",
                a.metadata.name.unwrap_or_default(),
                a.spec.approver
            );
        }
        Command::Cancel { name, who } => {
            let (client, ns) = who.connect().await?;
            reflex::oncall::cancel(&client, &ns, &name).await?;
            println!("remediation/{name} cancelled in {ns}: nothing further is deployed");
        }
        Command::Agents { all_namespaces, loopback, who } => {
            let (client, ns) = who.connect().await?;
            let addressing = if loopback {
                reflex::a2a::registry::Addressing::Loopback
            } else {
                reflex::a2a::registry::Addressing::ClusterDns
            };
            let namespace = (!all_namespaces).then_some(ns.as_str());
            let agents = reflex::a2a::registry::discover_once(&client, namespace, addressing)
                .await
                .context("listing Services")?;
            print!("{}", reflex::a2a::registry::table(&agents));
        }
        Command::Audit { command: AuditCommand::Verify { file } } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            match reflex::audit::verify(&text) {
                Ok(v) => println!(
                    "{}: {} records in {} chain(s) hold; last hash {}",
                    file.display(),
                    v.records,
                    v.chains,
                    v.last.as_deref().unwrap_or("(none)")
                ),
                Err(e) => {
                    eprintln!("{}: {e}", file.display());
                    std::process::exit(1);
                }
            }
        }
        Command::Get { who } => {
            let (client, ns) = who.connect().await?;
            let list = kube::Api::<reflex::api::Remediation>::namespaced(client, &ns)
                .list(&kube::api::ListParams::default())
                .await
                .with_context(|| format!("listing Remediations in {ns}"))?;
            println!("{:<40} {:<18} {:<30} MESSAGE", "NAME", "PHASE", "TARGET");
            for r in list.items {
                let status = r.status.clone().unwrap_or_default();
                println!(
                    "{:<40} {:<18} {:<30} {}",
                    r.metadata.name.unwrap_or_default(),
                    status.phase.to_string(),
                    format!("{}/{}", r.spec.target.kind.as_str(), r.spec.target.name),
                    status.message.unwrap_or_default()
                );
            }
        }
        Command::Describe { name, who } => {
            let (client, ns) = who.connect().await?;
            let rem = kube::Api::<reflex::api::Remediation>::namespaced(client, &ns)
                .get(&name)
                .await
                .with_context(|| format!("reading Remediation {ns}/{name}"))?;
            print!("{}", reflex::oncall::describe(&rem));
        }
        Command::Explain { name, who } => {
            let (client, ns) = who.connect().await?;
            let rem = kube::Api::<reflex::api::Remediation>::namespaced(client.clone(), &ns)
                .get(&name)
                .await
                .with_context(|| format!("reading Remediation {ns}/{name}"))?;
            // Events help but are not required (they expire; RBAC may hide them).
            let events = reflex::oncall::happenings(&client, &ns, &name).await.unwrap_or_else(|e| {
                eprintln!("note: the Remediation's Events could not be read ({e}); showing status only");
                Vec::new()
            });
            print!("{}", reflex::oncall::explain::explain(&rem, &events));
        }
        Command::Simulate {
            alert,
            label,
            files,
            series,
            namespace,
            prometheus_url,
            from_cluster,
            kubeconfig,
            context,
        } => {
            reflex::install_crypto_provider();
            let mut world = reflex::simulate::World { namespace, ..Default::default() };
            if let Some(url) = &prometheus_url {
                let source = reflex::metrics::Prometheus::new(url, std::time::Duration::from_secs(10))
                    .map_err(|e| anyhow::anyhow!("--prometheus-url {url}: {e}"))?;
                world.metrics = Some(std::sync::Arc::new(source));
            }
            for f in &files {
                let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
                world.add_yaml(&text, &f.display().to_string())?;
            }
            if let Some(s) = &series {
                let text = std::fs::read_to_string(s).with_context(|| format!("reading {}", s.display()))?;
                world.series = serde_saphyr::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("{}: a list of {{query, value}}: {e}", s.display()))?;
            }
            let alert: reflex::simulate::Alert = match &alert {
                Some(path) => {
                    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                    serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
                }
                None => reflex::simulate::Alert {
                    labels: label
                        .iter()
                        .map(|l| {
                            l.split_once('=')
                                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                                .with_context(|| format!("--label {l:?}: write name=value"))
                        })
                        .collect::<anyhow::Result<_>>()?,
                    annotations: Default::default(),
                },
            };
            if from_cluster {
                let ns =
                    alert.labels.get("namespace").cloned().context("--from-cluster: the alert names no namespace")?;
                let (client, _) = client(kubeconfig, context).await?;
                world.documents.extend(reflex::simulate::from_cluster(&client, &ns).await?);
            }
            print!("{}", reflex::simulate::simulate(&world, &alert).await?);
        }
        Command::Test { dir } => {
            let (text, ok) = reflex::simulate::run_tests(&dir).await?;
            print!("{text}");
            if !ok {
                std::process::exit(1);
            }
        }
        Command::Version => {
            println!("reflex {}", env!("CARGO_PKG_VERSION"));
            println!("api: {}/{}", reflex::api::GROUP, reflex::api::VERSION);
        }
        Command::Sandbox { port, kubeconfig, rbac } => {
            telemetry::init(cli.log_format);
            let mut config = reflex::sandbox::Config { port, ..Default::default() };
            if let Some(path) = rbac {
                let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                config.rbac = reflex::sandbox::rbac::Table::from_yaml(&text).map_err(anyhow::Error::msg)?;
            }
            let token = config
                .rbac
                .users
                .iter()
                .find(|u| u.groups.iter().any(|g| g == "system:masters"))
                .map(|u| u.token.clone());
            let sandbox = reflex::sandbox::Sandbox::start(config).await?;
            sandbox.install_crds()?;
            let token = token.unwrap_or_else(|| reflex::sandbox::ADMIN_TOKEN.to_owned());
            sandbox.write_kubeconfig(&kubeconfig, &token)?;
            println!("Reflex sandbox (an in-memory stand-in for a Kubernetes API server) at {}", sandbox.url());
            println!("CRDs installed: remediations, remediationpolicies, playbooks, remediationapprovals (reflex.dev)");
            println!("kubeconfig: {}", kubeconfig.display());
            println!("try: kubectl --kubeconfig {} get remediations -A", kubeconfig.display());
            println!("Ctrl-C to stop.");
            shutdown_signal().await;
            sandbox.shutdown();
        }
        Command::Run {
            kubeconfig,
            context,
            prometheus_url,
            listen,
            lease_namespace,
            identity,
            no_leader_election,
            webhook_token_file,
            webhook_token_secret,
            insecure_webhook,
            kill_switch_configmap,
            mcp_allowed_hosts,
            a2a_url,
            a2a_loopback,
            a2a_refresh_seconds,
            role,
            mcp_url,
            audit_log,
            mcp_audiences,
            allow_link_local_egress,
            gitops_work_dir,
            gitops_poll_seconds,
            allow_local_repositories,
            llm_prices,
            deployer_staging,
            deployer_production,
            max_concurrent_deploys,
            alertmanager_url,
        } => {
            // Kept to the end of the run: dropping it flushes the spans still buffered.
            let _telemetry =
                telemetry::init_with(cli.log_format, cli.otlp_endpoint.as_deref()).map_err(anyhow::Error::msg)?;
            reflex::install_crypto_provider();
            reflex::egress::allow_link_local(allow_link_local_egress);
            let (client, config) = client(kubeconfig, context).await?;
            let metrics = std::sync::Arc::new(
                reflex::metrics::Prometheus::new(&prometheus_url, std::time::Duration::from_secs(10))
                    .map_err(|e| anyhow::anyhow!("--prometheus-url {prometheus_url}: {e}"))?,
            );
            let prometheus = reflex::mcp::server::prometheus_client(&prometheus_url)
                .map_err(|e| anyhow::anyhow!("--prometheus-url {prometheus_url}: {e}"))?;
            let prices: std::collections::BTreeMap<String, reflex::agent::llm::Price> = match &llm_prices {
                Some(path) => serde_saphyr::from_str(
                    &std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
                )
                .with_context(|| {
                    format!("{}: a map of model name to {{inputPerMillion, outputPerMillion}}", path.display())
                })?,
                None => std::collections::BTreeMap::new(),
            };
            let token = match (webhook_token_file, webhook_token_secret) {
                (Some(path), _) => Some(
                    std::fs::read_to_string(&path)
                        .with_context(|| format!("reading {}", path.display()))?
                        .trim()
                        .to_owned(),
                ),
                (None, Some(secret)) => Some(secret_token(&client, &secret).await?),
                (None, None) if insecure_webhook => None,
                (None, None) => anyhow::bail!(
                    "the webhook needs a bearer token: --webhook-token-file or --webhook-token-secret (or --insecure-webhook)"
                ),
            };
            if token.as_deref().is_some_and(str::is_empty) {
                anyhow::bail!("the webhook token is empty");
            }
            let kill_switch = match kill_switch_configmap {
                Some(s) => {
                    let (ns, name) = s.split_once('/').context("--kill-switch-configmap is namespace/name")?;
                    (ns.to_owned(), name.to_owned())
                }
                None => (lease_namespace.clone(), "reflex-settings".to_owned()),
            };
            let host = if listen.ip().is_unspecified() { "127.0.0.1".to_owned() } else { listen.ip().to_string() };
            let own_token = own_token(&config);
            let listener =
                tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
            tracing::info!(%listen, ?role, "listening (/alerts with the intake role, /mcp and /a2a with the mcp role; /healthz, /readyz, /metrics always)");
            let stop = tokio_util::sync::CancellationToken::new();
            let operator = reflex::operator::Operator::assemble(
                reflex::operator::Config {
                    client,
                    kube_config: config,
                    metrics,
                    prometheus: Some(prometheus),
                    mcp_url: mcp_url.unwrap_or_else(|| format!("http://{host}:{}/mcp", listen.port())),
                    roles: role,
                    own_token,
                    mcp_allowed_hosts,
                    mcp_audiences,
                    a2a: reflex::a2a::Settings {
                        url: a2a_url.unwrap_or_else(|| format!("http://{host}:{}/a2a", listen.port())),
                        addressing: if a2a_loopback {
                            reflex::a2a::registry::Addressing::Loopback
                        } else {
                            reflex::a2a::registry::Addressing::ClusterDns
                        },
                        refresh: std::time::Duration::from_secs(a2a_refresh_seconds),
                    },
                    webhook: reflex::intake::webhook::Settings { token, kill_switch: Some(kill_switch) },
                    prices,
                    audit: std::sync::Arc::new(reflex::mcp::client::LogAudit),
                    audit_log: Some(std::sync::Arc::new(if audit_log == "-" {
                        reflex::audit::AuditLog::stdout()
                    } else {
                        reflex::audit::AuditLog::file(std::path::Path::new(&audit_log))
                            .map_err(|e| anyhow::anyhow!("--audit-log: {e}"))?
                    })),
                    deployers: reflex::deploy::identity::Deployers {
                        namespace: lease_namespace.clone(),
                        staging: deployer_staging,
                        production: deployer_production,
                    },
                    max_concurrent_deploys,
                    alertmanager: alertmanager_url
                        .as_deref()
                        .map(reflex::silence::Alertmanager::new)
                        .transpose()
                        .map_err(|e| anyhow::anyhow!("--alertmanager-url: {e}"))?
                        .map(std::sync::Arc::new),
                    gitops: reflex::gitops::flow::Settings {
                        work_dir: gitops_work_dir.unwrap_or_else(std::env::temp_dir),
                        allow_local: allow_local_repositories,
                        poll: std::time::Duration::from_secs(gitops_poll_seconds),
                    },
                },
                &stop,
            );
            let server = operator.serve(listener, stop.clone());
            tracing::info!("reflex operator starting");
            let shutdown = {
                let stop = stop.clone();
                async move {
                    shutdown_signal().await;
                    tracing::info!("shutting down");
                    stop.cancel();
                }
            };
            let election = (!no_leader_election).then(|| controller::leader::Election {
                namespace: lease_namespace,
                lease: "reflex-operator".into(),
                identity: identity.unwrap_or_else(|| format!("reflex-{}", std::process::id())),
                duration: 15,
                grace: 5,
            });
            operator.run_controller(election, shutdown).await?;
            stop.cancel();
            let _ = server.await;
        }
        Command::Demo { scenario, scenario_file, keep, kubeconfig } => {
            let scenario = match scenario_file {
                Some(path) => {
                    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                    reflex::demo::scenario::Scenario::parse(&text)
                }
                None => reflex::demo::scenario::Scenario::built_in(&scenario),
            }
            .map_err(anyhow::Error::msg)?;
            let mut stdout = std::io::stdout();
            let outcome = reflex::demo::run(scenario, keep, &mut stdout).await?;
            if let Some(sandbox) = &outcome.sandbox {
                sandbox.write_kubeconfig(&kubeconfig, reflex::sandbox::ADMIN_TOKEN)?;
                let k = format!("kubectl --kubeconfig {}", kubeconfig.display());
                let rem = outcome.remediation.metadata.name.clone().unwrap_or_default();
                if outcome.phase() == Some(reflex::api::Phase::AwaitingApproval) {
                    let ns = outcome.remediation.metadata.namespace.clone().unwrap_or_default();
                    println!("The change waits for approval, the operator still running. Approve it as yourself:");
                    println!(
                        "  ln -s \"$(command -v reflex || echo target/debug/reflex)\" ~/.local/bin/kubectl-reflex   # once: the kubectl plugin"
                    );
                    println!("  {k} reflex approve {rem} -n {ns} --reason \"looks right\"");
                }
                println!("The sandbox is still running. Inspect it with:");
                println!("  {k} get remediations -n shop");
                println!("  {k} describe remediation {rem} -n shop");
                println!("  {k} get deploy,rs,pods -n shop");
                println!("Ctrl-C to stop.");
                shutdown_signal().await;
            }
            if !outcome.as_expected() {
                anyhow::bail!("the scenario expected {:?}, got {:?}", outcome.expected, outcome.phase());
            }
        }
    }
    Ok(())
}

/// The webhook token from a Secret (`namespace/name`, key `token`).
async fn secret_token(client: &kube::Client, at: &str) -> anyhow::Result<String> {
    let (ns, name) = at.split_once('/').context("--webhook-token-secret is namespace/name")?;
    let secret = kube::Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .with_context(|| format!("reading Secret {at}"))?;
    let bytes =
        secret.data.and_then(|d| d.get("token").cloned()).with_context(|| format!("Secret {at} has no key token"))?;
    Ok(String::from_utf8(bytes.0).context("the token is not UTF-8")?.trim().to_owned())
}

/// Ctrl-C, or SIGTERM (what Kubernetes sends a Pod it stops).
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// The operator's own bearer token, for calling its own MCP server, and the file it comes
/// from (re-read on reconnect, as ServiceAccount tokens rotate): the kubeconfig's token
/// file or the in-cluster ServiceAccount token, else a static token in the kubeconfig.
fn own_token(config: &kube::Config) -> Option<(String, Option<PathBuf>)> {
    use secrecy::ExposeSecret;
    let file = config
        .auth_info
        .token_file
        .clone()
        .unwrap_or_else(|| "/var/run/secrets/kubernetes.io/serviceaccount/token".to_owned());
    let from_file = std::fs::read_to_string(&file).ok().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
    match from_file {
        Some(t) => Some((t, Some(PathBuf::from(file)))),
        None => config.auth_info.token.as_ref().map(|t| (t.expose_secret().to_owned(), None)),
    }
}

async fn client(kubeconfig: Option<PathBuf>, context: Option<String>) -> anyhow::Result<(kube::Client, kube::Config)> {
    let options = kube::config::KubeConfigOptions { context, ..Default::default() };
    let config = match kubeconfig {
        Some(path) => {
            let file = kube::config::Kubeconfig::read_from(&path)
                .with_context(|| format!("reading kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(file, &options).await?
        }
        None if options.context.is_some() => kube::Config::from_kubeconfig(&options).await?,
        None => kube::Config::infer().await.context("no kubeconfig found and not running in a cluster")?,
    };
    Ok((kube::Client::try_from(config.clone())?, config))
}
