//! The sandbox: an in-memory Kubernetes API over real HTTP for `demo`, `simulate` and the
//! integration tests. It is a stand-in for kube-apiserver, not a substitute for a cluster.
//!
//! Contract: [`Sandbox::start`] serves discovery, CRUD, patch (JSON, merge, strategic,
//! server-side apply), watch, the status subresource, dry-run, RBAC and the workload model on
//! a loopback port, and writes a kubeconfig that `kube::Client` and `kubectl` use unchanged.
//! Layout: [`status`] (errors), [`resources`] (types, discovery), [`store`] (versions, log),
//! [`api`] (object semantics), [`ssa`] (field ownership; list semantics and strategic merge live in `crate::patch::merge`), [`schema`] (CRD
//! admission), [`selectors`], [`rbac`], [`table`] (server-side printing), [`workload`]
//! (Deployment → ReplicaSet → Pod), [`server`] (HTTP).

pub mod admission;
pub mod api;
mod defaults;
mod deletion;
pub mod jobs;
pub mod logs;
pub mod meta;
pub mod protobuf;
pub mod rbac;
pub mod resources;
pub mod schema;
pub mod selectors;
pub mod server;
pub mod ssa;
pub mod status;
pub mod store;
pub mod table;
pub mod tls;
pub mod workload;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use self::api::{Api, WriteCtx};
use self::schema::FieldValidation;

/// The token of the built-in administrator (group `system:masters`).
pub const ADMIN_TOKEN: &str = "reflex-sandbox-admin";

/// The RBAC table used when none is given: one administrator.
pub const DEFAULT_RBAC: &str = r#"
users:
  - name: sandbox-admin
    token: reflex-sandbox-admin
    groups: ["system:masters"]
"#;

/// How to run a sandbox.
#[derive(Clone)]
pub struct Config {
    /// Loopback port; 0 picks a free one.
    pub port: u16,
    pub rbac: rbac::Table,
    /// How many changes the watch log keeps before older versions answer 410.
    pub log_capacity: usize,
    /// How often idle watches that asked for bookmarks get one.
    pub bookmark_interval: Duration,
    /// How long a new Pod takes to become Ready.
    pub pod_ready_after: Duration,
    /// Scenario behaviour of Pods (the demo's OOM kills); default: all become ready.
    pub pod_model: Option<Arc<dyn workload::PodModel>>,
    /// How Jobs' Pods end (success, failure, hang); default: each exits 0.
    pub job_model: Option<Arc<dyn jobs::JobModel>>,
    /// Run the workload model (controllers and kubelet); off: objects stay as they are written
    /// (`reflex simulate`'s static world).
    pub workloads: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            port: 0,
            rbac: rbac::Table::from_yaml(DEFAULT_RBAC).unwrap_or_default(),
            log_capacity: 10_000,
            bookmark_interval: Duration::from_secs(1),
            pod_ready_after: Duration::ZERO,
            pod_model: None,
            job_model: None,
            workloads: true,
        }
    }
}

/// A running sandbox; stops when dropped or on [`Sandbox::shutdown`].
pub struct Sandbox {
    addr: SocketAddr,
    ca_pem: String,
    api: Arc<Api>,
    stop: CancellationToken,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Sandbox {
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port))
            .await
            .with_context(|| format!("binding the sandbox to 127.0.0.1:{}", config.port))?;
        let addr = listener.local_addr()?;
        let store = Arc::new(store::Store::new(config.log_capacity));
        let api = Arc::new(Api::new(store.clone()));
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            create(
                &api,
                "",
                "namespaces",
                "",
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            )?;
        }
        let state = Arc::new(server::State {
            api: api.clone(),
            rbac: config.rbac,
            addr: addr.to_string(),
            bookmark_interval: config.bookmark_interval,
        });
        let app = axum::Router::new().fallback(server::handle).with_state(state);
        let tls = tls::self_signed()?;
        let ca_pem = tls.ca_pem.clone();
        let stop = CancellationToken::new();
        let listener = tls::TlsListener::new(listener, tls.acceptor, stop.clone())?;
        let shutdown = stop.clone();
        // Bounded like every listener: connections at once, time for request headers.
        crate::web::serve(listener, app, crate::web::Limits::default(), shutdown);
        let kubelet =
            workload::Kubelet { ready_after: config.pod_ready_after, model: config.pod_model, jobs: config.job_model };
        if config.workloads {
            tokio::spawn(workload::run(api.clone(), kubelet, stop.clone()));
        }
        tracing::info!(%addr, "sandbox Kubernetes API listening (in-memory stand-in for kube-apiserver)");
        Ok(Self { addr, ca_pem, api, stop })
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Direct access to the API semantics (for scenario loading and tests).
    pub fn api(&self) -> &Arc<Api> {
        &self.api
    }

    /// Drop the watch history, as an etcd compaction does: older resourceVersions answer 410.
    pub fn compact(&self) {
        self.api.store.compact();
    }

    /// The CA certificate (PEM) the sandbox's serving certificate chains to.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A kubeconfig (YAML) for this sandbox authenticating with `token`.
    pub fn kubeconfig(&self, token: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: reflex-sandbox\n  cluster:\n    server: {url}\n    certificate-authority-data: {ca}\ncontexts:\n- name: reflex-sandbox\n  context:\n    cluster: reflex-sandbox\n    user: reflex-sandbox\n    namespace: default\ncurrent-context: reflex-sandbox\nusers:\n- name: reflex-sandbox\n  user:\n    token: {token}\n",
            url = self.url(),
            ca = base64::engine::general_purpose::STANDARD.encode(&self.ca_pem),
        )
    }

    pub fn write_kubeconfig(&self, path: &Path, token: &str) -> anyhow::Result<()> {
        std::fs::write(path, self.kubeconfig(token)).with_context(|| format!("writing {}", path.display()))
    }

    /// A `kube::Config` for this sandbox, built from its kubeconfig.
    pub async fn config(&self, token: &str) -> anyhow::Result<kube::Config> {
        let kc = kube::config::Kubeconfig::from_yaml(&self.kubeconfig(token))?;
        Ok(kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?)
    }

    /// A `kube::Client` for this sandbox, built from its kubeconfig.
    pub async fn client(&self, token: &str) -> anyhow::Result<kube::Client> {
        Ok(kube::Client::try_from(self.config(token).await?)?)
    }

    /// Register Reflex's CRDs, as `kubectl apply -f crds/` would.
    pub fn install_crds(&self) -> anyhow::Result<()> {
        for crd in crate::api::crds::all() {
            let crd = serde_json::to_value(&crd)?;
            create(&self.api, "apiextensions.k8s.io", "customresourcedefinitions", "", crd)?;
        }
        Ok(())
    }

    /// Stop serving.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }
}

fn create(api: &Api, group: &str, plural: &str, ns: &str, obj: Value) -> anyhow::Result<()> {
    let rt = api.store.registry().find(group, "v1", plural).with_context(|| format!("{plural} is not served"))?;
    let w = WriteCtx {
        rt,
        namespace: ns.into(),
        manager: "reflex-sandbox".into(),
        dry_run: false,
        validation: FieldValidation::Strict,
        user: None,
    };
    match api.create(&w, obj) {
        Ok(_) => Ok(()),
        Err(e) if e.code == 409 => Ok(()),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}
