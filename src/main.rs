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
    #[command(subcommand)]
    command: Command,
}

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
    },
    /// Print Reflex's CustomResourceDefinitions as multi-document YAML
    /// (`reflex crd | kubectl apply -f -`).
    Crd {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print version and build information.
    Version,
}

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
        Command::Version => {
            println!("reflex {}", env!("CARGO_PKG_VERSION"));
            println!("api: {}/{}", reflex::api::GROUP, reflex::api::VERSION);
        }
        Command::Run { kubeconfig, context } => {
            telemetry::init(cli.log_format);
            reflex::install_crypto_provider();
            let client = client(kubeconfig, context).await?;
            // No stage implementations ship yet: each Remediation stops with a Stalled
            // condition that names the missing stage rather than pretending to act.
            let stages = controller::stages::Stages::default();
            tracing::info!("reflex operator starting");
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
                tracing::info!("shutting down");
            };
            controller::reconcile::run(client, stages, shutdown).await?;
        }
    }
    Ok(())
}

async fn client(kubeconfig: Option<PathBuf>, context: Option<String>) -> anyhow::Result<kube::Client> {
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
    Ok(kube::Client::try_from(config)?)
}
