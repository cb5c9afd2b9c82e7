//! The small tool interface the playbook executor reads production through.
//!
//! Contract: a [`Tools`] call takes a tool name and string arguments and returns JSON. The
//! built-in implementation, [`KubeTools`], is scoped to one namespace (a remediation never
//! reads outside its own) and offers `get_resource` (the workload kinds Reflex targets —
//! never Secrets), `query` (an instant PromQL value) and `get_rollout_history` (a
//! Deployment's revisions, newest first). [`McpTools`] offers the same three
//! through Reflex's own MCP server over loopback (`get_resource`, `query_prometheus`), via
//! the MCP client — timed, cancellable and audited like every other tool call in the loop;
//! the executor does not change. A failed or partial read is an error: no remediation
//! proceeds on it.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use kube::api::{Api, DynamicObject};
use serde_json::{Value, json};

use crate::api::{ErrorCategory, TargetKind};
use crate::cluster::{api_category, api_resource};
use crate::metrics::{MetricsError, MetricsSource};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{tool}: {message}")]
pub struct ToolError {
    pub tool: String,
    pub category: ErrorCategory,
    pub message: String,
}

/// Calls tools by name.
pub trait Tools: Send + Sync {
    fn call<'a>(&'a self, tool: &'a str, args: &'a BTreeMap<String, String>)
    -> BoxFuture<'a, Result<Value, ToolError>>;
}

/// A kind the executor may read: the kinds Reflex targets (never Secrets).
fn readable_kind(tool: &str, name: &str) -> Result<TargetKind, ToolError> {
    serde_json::from_value(json!(name)).map_err(|_| ToolError {
        tool: tool.to_owned(),
        category: ErrorCategory::InvalidSpec,
        message: format!(
            "cannot read kind {name:?}: it reads Deployment, StatefulSet, DaemonSet, ConfigMap and HorizontalPodAutoscaler"
        ),
    })
}

/// Reads through the Kubernetes API and a metrics source, in one namespace.
pub struct KubeTools {
    pub client: kube::Client,
    pub namespace: String,
    pub metrics: Arc<dyn MetricsSource>,
}

impl KubeTools {
    fn err(tool: &str, category: ErrorCategory, message: impl Into<String>) -> ToolError {
        ToolError { tool: tool.to_owned(), category, message: message.into() }
    }

    async fn get_resource(&self, args: &BTreeMap<String, String>) -> Result<Value, ToolError> {
        let tool = "get_resource";
        let kind_name = args.get("kind").ok_or_else(|| Self::err(tool, ErrorCategory::InvalidSpec, "needs a kind"))?;
        let name = args.get("name").ok_or_else(|| Self::err(tool, ErrorCategory::InvalidSpec, "needs a name"))?;
        let kind = readable_kind(tool, kind_name)?;
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &self.namespace, &api_resource(kind));
        let obj = api.get(name).await.map_err(|e| Self::err(tool, api_category(&e), e.to_string()))?;
        let mut v = serde_json::to_value(&obj).map_err(|e| Self::err(tool, ErrorCategory::Transient, e.to_string()))?;
        if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
        }
        Ok(v)
    }

    async fn query(&self, args: &BTreeMap<String, String>) -> Result<Value, ToolError> {
        let tool = "query";
        let q = args.get("query").ok_or_else(|| Self::err(tool, ErrorCategory::InvalidSpec, "needs a query"))?;
        match self.metrics.instant(q).await {
            Ok(v) => Ok(json!({"query": q, "value": v})),
            Err(MetricsError::Rejected(m)) => Err(Self::err(tool, ErrorCategory::InvalidSpec, m)),
            Err(MetricsError::Unavailable(m)) => Err(Self::err(tool, ErrorCategory::Transient, m)),
        }
    }
}

impl Tools for KubeTools {
    fn call<'a>(
        &'a self,
        tool: &'a str,
        args: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<Value, ToolError>> {
        Box::pin(async move {
            match tool {
                "get_resource" => self.get_resource(args).await,
                "query" => self.query(args).await,
                "get_rollout_history" => {
                    let name = args
                        .get("deployment")
                        .ok_or_else(|| Self::err(tool, ErrorCategory::InvalidSpec, "needs a deployment"))?;
                    let history = crate::mcp::tools::rollout_history(self.client.clone(), &self.namespace, name)
                        .await
                        .map_err(|m| Self::err(tool, tool_error_category(&m), m))?;
                    serde_json::to_value(history).map_err(|e| Self::err(tool, ErrorCategory::Transient, e.to_string()))
                }
                other => {
                    Err(Self::err(other, ErrorCategory::InvalidSpec, format!("no such tool (available: {TOOL_NAMES})")))
                }
            }
        })
    }
}

/// Where the executor's tools come from.
#[derive(Clone)]
pub enum ToolSource {
    /// Straight to the Kubernetes API and the metrics source (no MCP server running).
    Direct,
    /// Through Reflex's own MCP server, connected lazily and shared.
    Mcp(Arc<Loopback>),
}

/// A lazily connected MCP client to Reflex's own server.
pub struct Loopback {
    spec: crate::mcp::client::ServerSpec,
    /// Re-read on every (re)connect: ServiceAccount tokens are rotated.
    token_file: Option<std::path::PathBuf>,
    audit: Arc<dyn crate::mcp::client::Audit>,
    client: tokio::sync::Mutex<Option<Arc<crate::mcp::client::McpClient>>>,
    /// The MCP server's token audiences (none: the API server's).
    audiences: Vec<String>,
}

/// Reflex's own tools the LLM agent may call: every read-only context tool.
pub const AGENT_TOOLS: &[&str] = &[
    "get_resource",
    "list_resources",
    "get_events",
    "get_pod_logs",
    "get_rollout_history",
    "query_prometheus",
    "query_prometheus_range",
    "list_firing_alerts",
];

/// How long a reader token minted for one agent run lasts (the API server's minimum).
pub const READER_TOKEN_SECONDS: i64 = 600;

/// Why the LLM agent has no client to Reflex's MCP server.
#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    /// No token for the reader ServiceAccount.
    #[error("{message}")]
    Reader { category: ErrorCategory, message: String },
    /// The server could not be reached, or its tools drifted.
    #[error(transparent)]
    Connect(crate::mcp::client::ClientError),
}

/// The tools the executor uses, pinned at this build's schemas.
pub const EXECUTOR_TOOLS: &[&str] = &["get_resource", "query_prometheus", "get_rollout_history"];

/// The tools a playbook's reads may name.
const TOOL_NAMES: &str = "get_resource, query, get_rollout_history";

impl Loopback {
    /// Reflex's MCP server at `url`, called with `token` (the operator's own).
    pub fn new(url: String, token: String, audit: Arc<dyn crate::mcp::client::Audit>) -> Self {
        let manifest = crate::mcp::manifest::compute();
        let pins = EXECUTOR_TOOLS
            .iter()
            .map(|t| crate::mcp::client::Pin {
                tool: (*t).to_owned(),
                hash: manifest.iter().find(|e| e.name == *t).map(|e| e.hash.clone()),
            })
            .collect();
        let spec = crate::mcp::client::ServerSpec {
            name: "reflex".into(),
            url,
            token: Some(token),
            pins,
            timeout: std::time::Duration::from_secs(15),
        };
        Self { spec, token_file: None, audit, client: tokio::sync::Mutex::new(None), audiences: Vec::new() }
    }

    /// Read the token from `file` on each (re)connect (the token given to `new` is the
    /// fallback when it cannot be read).
    pub fn with_token_file(mut self, file: Option<std::path::PathBuf>) -> Self {
        self.token_file = file;
        self
    }

    /// The spec with the freshest token (the file's, when it can be read).
    fn fresh_spec(&self) -> crate::mcp::client::ServerSpec {
        let mut spec = self.spec.clone();
        if let Some(fresh) = self.token_file.as_ref().and_then(|f| std::fs::read_to_string(f).ok()) {
            let fresh = fresh.trim();
            if !fresh.is_empty() {
                spec.token = Some(fresh.to_owned());
            }
        }
        spec
    }

    /// A new client to Reflex's own server for the LLM agent, reading as the
    /// [`READER`](crate::mcp::identity::READER) ServiceAccount of `namespace` — never as the
    /// operator: a short-lived token minted for it by a TokenRequest (as `operator`, for the
    /// MCP server's audiences), so RBAC holds the agent to read-only in that namespace and
    /// the server keeps it there. [`AGENT_TOOLS`], pinned at this build's schemas.
    ///
    /// # Errors
    /// The reader cannot be minted a token (it does not exist, or the operator may not create
    /// its tokens) — said so a person can act — or the server cannot be reached.
    pub async fn agent_client(
        &self,
        operator: &kube::Client,
        namespace: &str,
    ) -> Result<crate::mcp::client::McpClient, AgentClientError> {
        use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
        use k8s_openapi::api::core::v1::ServiceAccount;
        let reader = crate::mcp::identity::READER;
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: (!self.audiences.is_empty()).then(|| self.audiences.clone()),
                expiration_seconds: Some(READER_TOKEN_SECONDS),
                ..TokenRequestSpec::default()
            }),
            ..TokenRequest::default()
        };
        let minted = kube::Api::<ServiceAccount>::namespaced(operator.clone(), namespace)
            .create_token_request(reader, &kube::api::PostParams::default(), &request)
            .await
            .map_err(|e| AgentClientError::Reader {
                category: crate::cluster::api_category(&e),
                message: format!(
                    "the LLM agent reads as ServiceAccount {namespace}/{reader}, and no token could be minted for it ({e}): create it with read-only RBAC in {namespace}, and let the operator create serviceaccounts/token for it"
                ),
            })?;
        let token =
            minted.status.and_then(|s| s.token).filter(|t| !t.is_empty()).ok_or_else(|| AgentClientError::Reader {
                category: ErrorCategory::Transient,
                message: format!("the TokenRequest for {namespace}/{reader} returned no token"),
            })?;
        let manifest = crate::mcp::manifest::compute();
        let mut spec = self.spec.clone();
        spec.token = Some(token);
        spec.pins = AGENT_TOOLS
            .iter()
            .map(|t| crate::mcp::client::Pin {
                tool: (*t).to_owned(),
                hash: manifest.iter().find(|e| e.name == *t).map(|e| e.hash.clone()),
            })
            .collect();
        crate::mcp::client::McpClient::connect(spec, self.audit.clone()).await.map_err(AgentClientError::Connect)
    }

    /// The MCP server's token audiences, which the reader's token is minted for (none: the
    /// API server's).
    #[must_use]
    pub fn with_audiences(mut self, audiences: Vec<String>) -> Self {
        self.audiences = audiences;
        self
    }

    async fn client(&self) -> Result<Arc<crate::mcp::client::McpClient>, ToolError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let spec = self.fresh_spec();
        let c = crate::mcp::client::McpClient::connect(spec, self.audit.clone()).await.map_err(|e| {
            let category = if matches!(e, crate::mcp::client::ClientError::Drift { .. }) {
                ErrorCategory::InvalidSpec
            } else {
                ErrorCategory::Transient
            };
            ToolError { tool: "mcp".into(), category, message: e.to_string() }
        })?;
        let c = Arc::new(c);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// Forget the connection (after a transport failure), so the next call reconnects.
    async fn reset(&self) {
        *self.client.lock().await = None;
    }
}

/// The executor's tools over MCP, scoped to one namespace and one run.
pub struct McpTools {
    pub loopback: Arc<Loopback>,
    pub namespace: String,
    pub ctx: crate::mcp::client::CallContext,
}

impl McpTools {
    async fn call_mcp(&self, tool: &str, args: serde_json::Map<String, Value>) -> Result<Value, ToolError> {
        use crate::mcp::client::ClientError;
        let client = self.loopback.client().await?;
        let result = client.call(tool, args, &self.ctx).await;
        if matches!(&result, Err(ClientError::Connect { .. } | ClientError::Transport { .. })) {
            // The connection itself failed: the next call reconnects. (Timeouts, tool errors
            // and cancellations keep it, and its breaker.)
            self.loopback.reset().await;
        }
        result.map_err(|e| {
            let category = match &e {
                ClientError::Tool { message, .. } => tool_error_category(message),
                ClientError::NotAllowed { .. } | ClientError::Drift { .. } | ClientError::Missing { .. } => {
                    ErrorCategory::InvalidSpec
                }
                _ => ErrorCategory::Transient,
            };
            ToolError { tool: tool.to_owned(), category, message: e.to_string() }
        })
    }
}

/// The category of an error Reflex's own MCP server reported (see `mcp::tools::api_error`).
fn tool_error_category(message: &str) -> ErrorCategory {
    if message.starts_with("forbidden:") {
        ErrorCategory::Forbidden
    } else if message.starts_with("not found:") {
        ErrorCategory::NotFound
    } else if message.starts_with("unavailable:")
        || message.contains("timed out")
        || message.contains("cancelled by the client")
        || message.starts_with("Prometheus:")
        || message.starts_with("metrics:")
        || message.starts_with("cannot check access")
    {
        ErrorCategory::Transient
    } else {
        ErrorCategory::InvalidSpec
    }
}

impl Tools for McpTools {
    fn call<'a>(
        &'a self,
        tool: &'a str,
        args: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<Value, ToolError>> {
        Box::pin(async move {
            let need = |k: &str| {
                args.get(k).cloned().ok_or_else(|| ToolError {
                    tool: tool.to_owned(),
                    category: ErrorCategory::InvalidSpec,
                    message: format!("needs {k}"),
                })
            };
            match tool {
                "get_resource" => {
                    // The kinds Reflex targets, in the Remediation's namespace — as KubeTools.
                    let kind = readable_kind(tool, &need("kind")?)?;
                    let mut a = serde_json::Map::new();
                    a.insert("kind".into(), json!(kind.as_str()));
                    a.insert("name".into(), json!(need("name")?));
                    a.insert("namespace".into(), json!(self.namespace));
                    let out = self.call_mcp("get_resource", a).await?;
                    match out.get("object") {
                        Some(o) if o.is_object() => Ok(o.clone()),
                        _ => Err(ToolError {
                            tool: tool.into(),
                            category: ErrorCategory::Transient,
                            message: "the result carried no object".into(),
                        }),
                    }
                }
                "query" => {
                    let q = need("query")?;
                    let mut a = serde_json::Map::new();
                    a.insert("query".into(), json!(q));
                    let out = self.call_mcp("query_prometheus", a).await?;
                    if out.get("truncated").is_some_and(|t| !t.is_null()) {
                        return Err(ToolError {
                            tool: tool.into(),
                            category: ErrorCategory::InvalidSpec,
                            message: format!("{q} returned more series than a read may use; aggregate it"),
                        });
                    }
                    let Some(series) = out.get("series").and_then(Value::as_array) else {
                        return Err(ToolError {
                            tool: tool.into(),
                            category: ErrorCategory::Transient,
                            message: "the result carried no series".into(),
                        });
                    };
                    // NaN and ±Inf arrive as null: refuse them rather than sum what is left.
                    let values: Option<Vec<f64>> =
                        series.iter().map(|x| x.get("value").and_then(Value::as_f64)).collect();
                    let Some(values) = values else {
                        return Err(ToolError {
                            tool: tool.into(),
                            category: ErrorCategory::InvalidSpec,
                            message: format!("{q} returned a value that is not a number (NaN or infinite)"),
                        });
                    };
                    let value = (!values.is_empty()).then(|| values.iter().sum::<f64>());
                    Ok(json!({"query": q, "value": value}))
                }
                "get_rollout_history" => {
                    let mut a = serde_json::Map::new();
                    a.insert("deployment".into(), json!(need("deployment")?));
                    a.insert("namespace".into(), json!(self.namespace));
                    self.call_mcp("get_rollout_history", a).await
                }
                other => Err(ToolError {
                    tool: other.to_owned(),
                    category: ErrorCategory::InvalidSpec,
                    message: format!("no such tool (available: {TOOL_NAMES})"),
                }),
            }
        })
    }
}

/// The LLM agent's tools: every tool the policy's MCP clients may call (Reflex's own and
/// external ones), uniform, timed and audited by the client. When two servers offer the
/// same name, the first client's wins.
pub struct AgentMcpTools {
    pub clients: Vec<Arc<crate::mcp::client::McpClient>>,
    pub ctx: crate::mcp::client::CallContext,
    /// The Remediation's namespace: calls to the first client (Reflex's own tools) read only
    /// there (a missing `namespace` argument is filled in, another one refused).
    pub scope: Option<String>,
}

impl crate::agent::llm_agent::AgentTools for AgentMcpTools {
    fn definitions(&self) -> Vec<crate::agent::llm_agent::ToolDef> {
        let mut seen = std::collections::BTreeSet::new();
        self.clients
            .iter()
            .flat_map(|c| c.tools())
            .filter(|t| seen.insert(t.name.to_string()))
            .map(|t| crate::agent::llm_agent::ToolDef {
                name: t.name.to_string(),
                description: t.description.as_deref().unwrap_or_default().to_owned(),
                schema: Value::Object((*t.input_schema).clone()),
            })
            .collect()
    }

    fn call<'a>(
        &'a self,
        name: &'a str,
        args: Value,
        cancel: &'a tokio_util::sync::CancellationToken,
    ) -> BoxFuture<'a, Result<String, crate::agent::llm_agent::ToolFailure>> {
        use crate::agent::llm_agent::ToolFailure;
        Box::pin(async move {
            let Some(index) = self.clients.iter().position(|c| c.tools().any(|t| t.name == name)) else {
                return Err(ToolFailure::from(format!("no server offers {name:?}")));
            };
            let client = &self.clients[index];
            let Value::Object(mut args) = args else {
                return Err(ToolFailure::from("the arguments must be a JSON object".to_owned()));
            };
            if let (0, Some(scope)) = (index, &self.scope) {
                let takes_namespace = client
                    .tools()
                    .find(|t| t.name == name)
                    .is_some_and(|t| t.input_schema.get("properties").and_then(|p| p.get("namespace")).is_some());
                match args.get("namespace").and_then(Value::as_str) {
                    Some(ns) if ns != scope => {
                        return Err(ToolFailure::from(format!(
                            "this remediation may only read namespace {scope:?}, not {ns:?}"
                        )));
                    }
                    None if takes_namespace => {
                        args.insert("namespace".into(), Value::String(scope.clone()));
                    }
                    _ => {}
                }
            }
            let ctx = crate::mcp::client::CallContext { cancel: cancel.clone(), trace_id: self.ctx.trace_id.clone() };
            // Reflex's own server (the first) speaks in Reflex's and the API server's words; an
            // external server's own text goes to the model, not into the record.
            client.call(name, args, &ctx).await.map(|v| v.to_string()).map_err(|e| ToolFailure {
                for_model: e.to_string(),
                for_record: if index == 0 { e.to_string() } else { e.in_own_words() },
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the 1,000-Remediation benchmark: a read that failed because the API server
    /// shed the connection failed the whole diagnosis as an invalid spec, with no retry.
    #[test]
    fn a_read_the_api_server_could_not_answer_is_transient_not_an_invalid_spec() {
        assert_eq!(
            tool_error_category(
                "unavailable: cannot reach the API server to get deployments: ServiceError: client error (SendRequest)"
            ),
            ErrorCategory::Transient
        );
        assert_eq!(
            tool_error_category("unavailable: the API server answered 503 to get pods: busy"),
            ErrorCategory::Transient
        );
    }

    #[test]
    fn server_errors_keep_their_category() {
        assert_eq!(
            tool_error_category("forbidden: pods is forbidden; missing permission: get pods"),
            ErrorCategory::Forbidden
        );
        assert_eq!(tool_error_category("not found: deployments \"x\" not found"), ErrorCategory::NotFound);
        assert_eq!(tool_error_category("get_resource: timed out after 10s"), ErrorCategory::Transient);
        assert_eq!(tool_error_category("Prometheus: 404 page not found"), ErrorCategory::Transient);
        assert_eq!(tool_error_category("limit 5000 is over 500"), ErrorCategory::InvalidSpec);
    }
}
