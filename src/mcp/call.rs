//! The call machinery every context tool runs through: as the caller (the [`Caller`] the
//! identity middleware put in the request), cached per identity, tool and typed input,
//! timed out, cancellable (by disconnect or `notifications/cancelled`), with progress when
//! asked, and capped in size — and the cache's fast path at the `/mcp` edge, which answers a
//! plain repeated `tools/call` exactly as rmcp would.
//!
//! Contract: a tool body is a closure from the caller to its typed output; [`ReflexMcp::run`]
//! does everything around it. A result is serialized once ([`Served`]) and shared by every
//! cache hit.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use kube::api::Api;
use rmcp::handler::server::router::prompt::PromptRouter;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::IntoCallToolResult;
use rmcp::model::{CallToolResponse, CallToolResult, ProgressNotificationParam};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::actions::ACTION_TOOLS;
use super::bounds;
use super::identity::Caller;
use super::schema::{GetEvents, GetResource, GetRolloutHistory, ListResourcesInput};

/// What the server reads besides the Kubernetes API.
#[derive(Clone, Default)]
pub struct Backends {
    /// Prometheus, for the PromQL and alert tools.
    pub prometheus: Option<prometheus_http_query::Client>,
    /// The operator's own client: used only to enumerate namespaces when a caller cannot
    /// list cluster-wide (every read of their contents is still as the caller).
    pub operator: Option<kube::Client>,
    /// Instant values for `query_prometheus` when there is no Prometheus (the demo's
    /// model); one unlabelled series.
    pub metrics: Option<Arc<dyn crate::metrics::MetricsSource>>,
    /// The agents Reflex discovered over A2A, for `list_agents` and `agent://` resources.
    pub agents: Option<Arc<dyn AgentDirectory>>,
    /// Tool latency, served on `/metrics`.
    pub tool_metrics: ToolMetrics,
}

/// How long each tool call took, by tool and outcome (`reflex_mcp_tool_duration_seconds`).
#[derive(Clone, Debug)]
pub struct ToolMetrics(
    prometheus_client::metrics::family::Family<
        ToolLabels,
        prometheus_client::metrics::histogram::Histogram,
        fn() -> prometheus_client::metrics::histogram::Histogram,
    >,
);

#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct ToolLabels {
    pub tool: &'static str,
    pub outcome: &'static str,
}

fn tool_histogram() -> prometheus_client::metrics::histogram::Histogram {
    prometheus_client::metrics::histogram::Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
    ])
}

impl Default for ToolMetrics {
    fn default() -> Self {
        Self(prometheus_client::metrics::family::Family::new_with_constructor(tool_histogram))
    }
}

impl ToolMetrics {
    /// Registers `mcp_tool_duration_seconds` under the registry's prefix.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "mcp_tool_duration_seconds",
            "MCP tool calls served (cache misses), by tool and outcome",
            self.0.clone(),
        );
    }

    fn observe(&self, tool: &'static str, outcome: &'static str, started: std::time::Instant) {
        self.0.get_or_create(&ToolLabels { tool, outcome }).observe(started.elapsed().as_secs_f64());
    }
}

/// The agents discovered over A2A, as the MCP server shows them (the A2A registry implements
/// it; the server filters by what each caller may see).
pub trait AgentDirectory: Send + Sync {
    fn agents(&self) -> Vec<super::schema::AgentSummary>;
}

/// The server. Cheap to clone (rmcp builds one per stateless request): everything is
/// behind one `Arc`.
#[derive(Clone)]
pub struct ReflexMcp {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) backends: Backends,
    pub(super) inflight: InFlight,
    /// Served results; `None`: caching off. Bounded in bytes.
    pub(super) cache: Option<moka::future::Cache<String, Arc<Served>>>,
    pub(super) tool_router: ToolRouter<ReflexMcp>,
    pub(super) prompt_router: PromptRouter<ReflexMcp>,
}

/// Calls in progress, by (caller, JSON-RPC request id): a `notifications/cancelled` that
/// arrives as its own POST (stateless servers get no session to route it through) finds
/// the call here and stops it.
#[derive(Clone, Default)]
pub struct InFlight(Arc<std::sync::Mutex<HashMap<(String, String), tokio_util::sync::CancellationToken>>>);

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), tokio_util::sync::CancellationToken>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn enter(&self, caller: &str, id: &str) -> InFlightGuard {
        let token = tokio_util::sync::CancellationToken::new();
        self.lock().insert((caller.to_owned(), id.to_owned()), token.clone());
        InFlightGuard { set: self.clone(), key: (caller.to_owned(), id.to_owned()), token }
    }

    /// Cancel `caller`'s call `id` (the request id as JSON); whether one was running.
    pub fn cancel(&self, caller: &str, id: &str) -> bool {
        match self.lock().get(&(caller.to_owned(), id.to_owned())) {
            Some(t) => {
                t.cancel();
                true
            }
            None => false,
        }
    }
}

pub(super) struct InFlightGuard {
    set: InFlight,
    key: (String, String),
    pub(super) token: tokio_util::sync::CancellationToken,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.set.lock().remove(&self.key);
    }
}

/// A tool's result as it goes out: the structured content and its JSON text (MCP asks for
/// both), made once per read and shared by every cache hit.
#[derive(Debug)]
pub struct Served {
    structured: Value,
    pub(super) text: String,
    /// The whole `CallToolResult` as JSON, for the cache's fast path; made on first use.
    result: std::sync::OnceLock<String>,
}

impl Served {
    fn of<T: Serialize>(out: &T) -> Result<Self, String> {
        let structured = serde_json::to_value(out).map_err(|e| e.to_string())?;
        let text = structured.to_string();
        Ok(Self { structured, text, result: std::sync::OnceLock::new() })
    }

    /// The tool result as rmcp sends it (`content` with the text, `structuredContent`).
    fn call_tool_result(&self) -> CallToolResult {
        let mut result = CallToolResult::success(vec![rmcp::model::ContentBlock::text(self.text.clone())]);
        result.structured_content = Some(self.structured.clone());
        result
    }

    /// The result's JSON for peers before protocol 2026-07-28 (the only ones the fast path
    /// serves): as rmcp sends it to them, without the `resultType: "complete"` discriminator.
    /// `None` if it cannot be serialized (then rmcp answers).
    fn result_json(&self) -> Option<&str> {
        let text = self.result.get_or_init(|| {
            let mut result = self.call_tool_result();
            result.result_type = None;
            serde_json::to_string(&result).unwrap_or_default()
        });
        (!text.is_empty()).then_some(text.as_str())
    }
}

/// A `tools/call` request as the cache's fast path reads it: exactly these fields, no
/// `_meta` (progress tokens, per-request protocol versions) — anything else goes to rmcp.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FastCall {
    jsonrpc: String,
    id: Value,
    method: String,
    params: FastCallParams,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FastCallParams {
    name: String,
    #[serde(default)]
    /// An object, as rmcp requires (serde would otherwise read a struct from an array).
    arguments: Option<serde_json::Map<String, Value>>,
}

/// The key a context tool's result is cached under: who asked, the tool, its typed input.
fn cache_key(caller: &Caller, tool: &str, args: &str) -> String {
    format!("{}\u{1f}{tool}\u{1f}{args}", caller.key())
}

/// The cache key's arguments for a typed input, as the tool itself computes them.
fn fast_args<T: DeserializeOwned + Serialize>(arguments: Value) -> Option<String> {
    serde_json::from_value::<T>(arguments).ok().map(|p| args(&p))
}

/// A tool's structured output of type `T`. Named `Json` on purpose: rmcp's `#[tool]` macro
/// derives the output schema from a return type `Json<T>` (by that name), so the schemas
/// and the manifest are exactly those of `T`; unlike rmcp's own wrapper, the value is
/// already serialized (a cache hit re-serializes nothing).
pub struct Json<T>(Arc<Served>, std::marker::PhantomData<fn() -> T>);

impl<T> Json<T> {
    pub(super) fn new(served: Arc<Served>) -> Self {
        Self(served, std::marker::PhantomData)
    }
}

impl<T: 'static> IntoCallToolResult for Json<T> {
    fn into_call_tool_result(self) -> Result<CallToolResponse, ErrorData> {
        Ok(self.0.call_tool_result().into())
    }
}

/// The authenticated caller of a request.
pub(super) fn caller_of(ctx: &RequestContext<RoleServer>) -> Result<Caller, String> {
    ctx.extensions
        .get::<axum::http::request::Parts>()
        .and_then(|p| p.extensions.get::<Caller>())
        .or_else(|| ctx.extensions.get::<Caller>())
        .cloned()
        .ok_or_else(|| "no authenticated caller (the request carried no Kubernetes token)".to_owned())
}

/// Whether a call stays in the namespace its caller is scoped to: no action; a `namespace`
/// argument that is that one (a tool that would read every namespace without it must be
/// given it); a kind that is one Reflex knows to be namespaced. PromQL is scoped by the tools
/// themselves ([`scoped_promql`]).
///
/// # Errors
/// What the call would reach outside the scope, for the caller to read.
pub(super) fn within_scope(tool: &str, args: &str, namespace: &str) -> Result<(), String> {
    if ACTION_TOOLS.contains(&tool) {
        return Err(format!("{tool}: this identity reads namespace {namespace:?} only; it takes no action"));
    }
    let args: Value = serde_json::from_str(args).unwrap_or(Value::Null);
    match args.get("namespace").and_then(Value::as_str) {
        Some(n) if n == namespace => {}
        Some(n) => return Err(format!("{tool}: this identity may only read namespace {namespace:?}, not {n:?}")),
        None if args.get("namespace").is_some()
            || ["list_resources", "list_firing_alerts", "list_remediations", "list_playbooks"].contains(&tool) =>
        {
            return Err(format!("{tool}: this identity may only read namespace {namespace:?}; name it"));
        }
        None => {}
    }
    if let Some(kind) = args.get("kind").and_then(Value::as_str) {
        let version = args.get("apiVersion").and_then(Value::as_str);
        if !super::tools::known_namespaced(kind, version) {
            return Err(format!(
                "{tool}: this identity reads namespaced kinds Reflex knows only, in {namespace:?}; {kind} is not one"
            ));
        }
    }
    Ok(())
}

/// `query` as `caller` may run it: scoped to its namespace when it has one.
///
/// # Errors
/// The query does not parse (a scoped caller's query must).
pub(super) fn scoped_promql(caller: &Caller, query: &str) -> Result<String, String> {
    match &caller.scope {
        Some(namespace) => {
            let labels = std::collections::BTreeMap::from([("namespace".to_owned(), namespace.to_string())]);
            crate::metrics::scoped_query(query, &labels)
        }
        None => Ok(query.to_owned()),
    }
}

/// A tool's arguments as JSON, for the cache key: typed inputs serialize the same way every
/// time (fields in declaration order, and no input holds a map).
pub(super) fn args(p: &impl Serialize) -> String {
    serde_json::to_string(p).unwrap_or_default()
}

impl ReflexMcp {
    /// The cache's fast path: the JSON-RPC response to a plain `tools/call` of a context tool
    /// whose result this caller has cached — the same key, and the same bytes once parsed,
    /// as the tool itself would answer with on a hit — or `None` for anything else (rmcp
    /// handles it). Only tools whose input checks depend on nothing but the input take it,
    /// so a key in the cache means those checks passed.
    pub async fn cached_reply(&self, caller: &Caller, body: &[u8]) -> Option<String> {
        let cache = self.inner.cache.as_ref()?;
        let call: FastCall = serde_json::from_slice(body).ok()?;
        if call.jsonrpc != "2.0" || call.method != "tools/call" || !(call.id.is_string() || call.id.is_i64()) {
            return None;
        }
        let arguments = Value::Object(call.params.arguments.unwrap_or_default());
        let (tool, input) = match call.params.name.as_str() {
            "get_resource" => ("get_resource", fast_args::<GetResource>(arguments)?),
            "list_resources" => ("list_resources", fast_args::<ListResourcesInput>(arguments)?),
            "get_events" => ("get_events", fast_args::<GetEvents>(arguments)?),
            "get_rollout_history" => ("get_rollout_history", fast_args::<GetRolloutHistory>(arguments)?),
            _ => return None,
        };
        let hit = cache.get(&cache_key(caller, tool, &input)).await?;
        Some(format!("{{\"jsonrpc\":\"2.0\",\"id\":{},\"result\":{}}}", call.id, hit.result_json()?))
    }

    /// Prometheus has no per-user authorization; the PromQL and alert tools are for callers
    /// RBAC allows `get` on the virtual resource `prometheus` in group `reflex.dev`.
    pub(super) async fn may_query_metrics(caller: &Caller) -> Result<(), String> {
        use k8s_openapi::api::authorization::v1::{
            ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
        };
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    group: Some("reflex.dev".into()),
                    resource: Some("prometheus".into()),
                    verb: Some("get".into()),
                    ..ResourceAttributes::default()
                }),
                ..SelfSubjectAccessReviewSpec::default()
            },
            ..SelfSubjectAccessReview::default()
        };
        let reviewed = Api::<SelfSubjectAccessReview>::all(caller.client.clone())
            .create(&kube::api::PostParams::default(), &review)
            .await
            .map_err(|e| format!("cannot check access to metrics: {e}"))?;
        if reviewed.status.is_some_and(|s| s.allowed) {
            Ok(())
        } else {
            Err(format!(
                "forbidden: User {:?} may not query metrics; missing permission: get prometheus.reflex.dev (cluster-wide)",
                caller.user
            ))
        }
    }

    /// Run a tool: as the caller, timed out, cancellable, with progress; a context tool's
    /// result cached, an action tool's ([`ACTION_TOOLS`]) never — every call acts.
    pub(super) async fn run<T, F, Fut>(
        &self,
        ctx: &RequestContext<RoleServer>,
        tool: &'static str,
        args: String,
        timeout: Duration,
        work: F,
    ) -> Result<Json<T>, String>
    where
        T: Serialize,
        F: FnOnce(Caller) -> Fut,
        Fut: Future<Output = Result<T, String>>,
    {
        let cached = !ACTION_TOOLS.contains(&tool);
        let caller = caller_of(ctx)?;
        if let Some(namespace) = &caller.scope {
            within_scope(tool, &args, namespace)?;
        }
        let key = cache_key(&caller, tool, &args);
        let cache = self.inner.cache.as_ref().filter(|_| cached);
        if let Some(cache) = cache
            && let Some(hit) = cache.get(&key).await
        {
            return Ok(Json::new(hit));
        }
        let progress = ctx.meta.get_progress_token();
        if let Some(token) = &progress {
            let note = ProgressNotificationParam::new(token.clone(), 0.0)
                .with_total(1.0)
                .with_message(format!("{tool}: reading"));
            let _ = ctx.peer.notify_progress(note).await;
        }
        let started = std::time::Instant::now();
        let span = tracing::info_span!("mcp.tool", otel.name = %format!("tools/call {tool}"), otel.kind = "server",
            rpc.system = "mcp", tool, user = %caller.user);
        // The caller's trace, when its request carries one in `_meta` (SEP-414).
        if let Some(traceparent) = ctx.meta.0.get_traceparent() {
            crate::telemetry::trace::continue_from(&span, traceparent);
        }
        let user = caller.user.clone();
        let call = self.inner.inflight.enter(caller.key(), &serde_json::to_string(&ctx.id).unwrap_or_default());
        let out = tokio::select! {
            () = ctx.ct.cancelled() => return Err(format!("{tool}: cancelled by the client")),
            () = call.token.cancelled() => {
                tracing::info!(tool, %user, "call cancelled by notifications/cancelled");
                return Err(format!("{tool}: cancelled by the client"));
            }
            r = tokio::time::timeout(timeout, tracing::Instrument::instrument(work(caller), span)) => match r {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    self.inner.backends.tool_metrics.observe(tool, "error", started);
                    return Err(e);
                }
                Err(_) => {
                    self.inner.backends.tool_metrics.observe(tool, "timeout", started);
                    return Err(format!("{tool}: timed out after {}s", timeout.as_secs()));
                }
            },
        };
        self.inner.backends.tool_metrics.observe(tool, "ok", started);
        let served = Served::of(&out)?;
        let size = served.text.len();
        if size > bounds::MAX_OUTPUT_BYTES {
            return Err(format!(
                "{tool}: the result is {size} bytes, over the {} byte cap; narrow the request (limit, selector, window)",
                bounds::MAX_OUTPUT_BYTES
            ));
        }
        if let Some(token) = progress {
            let note = ProgressNotificationParam::new(token, 1.0).with_total(1.0).with_message(format!("{tool}: done"));
            let _ = ctx.peer.notify_progress(note).await;
        }
        tracing::debug!(tool, %user, bytes = size, "mcp tool served");
        let served = Arc::new(served);
        if let Some(cache) = cache {
            cache.insert(key, served.clone()).await;
        }
        Ok(Json::new(served))
    }

    /// The configured Prometheus, or an error a caller can act on.
    pub(super) fn prometheus(&self) -> Result<&prometheus_http_query::Client, String> {
        self.inner
            .backends
            .prometheus
            .as_ref()
            .ok_or_else(|| "no Prometheus is configured (--prometheus-url)".to_owned())
    }
}
