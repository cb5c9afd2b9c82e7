//! Reflex's MCP server: the context tools every step of the loop reads production through,
//! served at `/mcp` (streamable HTTP, stateless, so replicas need no sticky sessions).
//!
//! Contract: every tool has typed input and structured output. A call runs *as the caller*
//! (the [`Caller`] the identity middleware put in the request: an impersonating client), so
//! a caller sees exactly what RBAC lets it see; a forbidden read is a tool error naming the
//! missing permission. Inputs are bounded ([`super::bounds`]) before any work; each tool has
//! a timeout; outputs are capped with an explicit truncation notice; Secret values never
//! leave. A slow call reports progress when the client asked for it, and stops when the
//! client cancels (or disconnects). Results are cached for [`CACHE_TTL`] per identity,
//! tool and arguments, so an agent asking twice costs one read. Resources
//! `remediation://NAMESPACE/NAME` and `playbook://NAMESPACE/NAME`; a prompt for diagnosing
//! an alert.
//!
//! The server's parts: [`super::call`] (the server value and the call machinery — as the
//! caller, cached, timed out, cancellable, with progress — and the cache's fast path),
//! [`super::schema`] (every tool's typed input and output), [`super::tools`] (the tool
//! bodies), [`super::resources`] (resources and the prompt); this module builds the server
//! and answers MCP's server requests.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use rmcp::model::{
    Implementation, ListResourceTemplatesResult, ListResourcesResult, PaginatedRequestParams,
    ReadResourceRequestParams, ReadResourceResponse, ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData, RoleServer, ServerHandler, prompt_handler, tool_handler};

pub use super::call::{AgentDirectory, Backends, ReflexMcp, ToolMetrics};
use super::call::{InFlight, Inner, Served};

/// How long a context tool's result is reused for the same identity and arguments.
pub const CACHE_TTL: Duration = Duration::from_secs(2);
/// Most bytes the read-through cache holds.
pub const CACHE_BYTES: u64 = 64 * 1024 * 1024;
/// Each tool's version: bump it with any change to its input or output schema, and run
/// `reflex mcp manifest > mcp-manifest.json` (a test holds the two together).
pub const TOOL_VERSIONS: &[(&str, u32)] = &[
    ("get_resource", 2),
    ("list_resources", 2),
    ("get_events", 2),
    ("get_pod_logs", 2),
    ("get_rollout_history", 3),
    ("query_prometheus", 2),
    ("query_prometheus_range", 2),
    ("list_firing_alerts", 2),
    ("list_remediations", 2),
    ("list_playbooks", 2),
    ("list_agents", 1),
    ("approve_remediation", 2),
    ("reject_remediation", 2),
    ("cancel_remediation", 2),
];

/// A Prometheus client for the PromQL and alert tools (ring TLS through our reqwest).
pub fn prometheus_client(url: &str) -> Result<prometheus_http_query::Client, String> {
    crate::install_crypto_provider();
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().map_err(|e| e.to_string())?;
    prometheus_http_query::Client::from(http, url).map_err(|e| e.to_string())
}

impl ReflexMcp {
    pub fn new(backends: Backends) -> Self {
        Self::build(backends, CACHE_TTL)
    }

    /// Cache results for `ttl` instead of [`CACHE_TTL`] (zero: no caching).
    pub fn with_cache_ttl(self, ttl: Duration) -> Self {
        Self::build(self.inner.backends.clone(), ttl)
    }

    fn build(backends: Backends, ttl: Duration) -> Self {
        let cache = (!ttl.is_zero()).then(|| {
            moka::future::Cache::builder()
                // The structured copy weighs about what its text does.
                .weigher(|k: &String, v: &Arc<Served>| u32::try_from(k.len() + 2 * v.text.len()).unwrap_or(u32::MAX))
                .max_capacity(CACHE_BYTES)
                .time_to_live(ttl)
                .build()
        });
        let inner = Inner {
            backends,
            inflight: InFlight::default(),
            cache,
            tool_router: standard_router(Self::tool_router() + Self::action_router()),
            prompt_router: Self::prompt_router(),
        };
        Self { inner: Arc::new(inner) }
    }

    /// Calls in progress, for cancellation by notification.
    pub fn inflight(&self) -> InFlight {
        self.inner.inflight.clone()
    }

    /// Whether results are cached (the fast path has anything to serve).
    pub fn caches(&self) -> bool {
        self.inner.cache.is_some()
    }
}

#[tool_handler(router = self.inner.tool_router)]
#[prompt_handler(router = self.inner.prompt_router)]
impl ServerHandler for ReflexMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().enable_prompts().enable_resources().build())
            .with_server_info(Implementation::new("reflex", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Reflex's context tools read Kubernetes (as you: your token's RBAC applies) and Prometheus. \
                 Resources: remediation://NAMESPACE/NAME, playbook://NAMESPACE/NAME.",
            )
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        self.resource_list(&ctx).await
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(super::resources::templates())
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        self.resource_read(request, &ctx).await
    }
}

/// The tools as listed (for the manifest and tests).
pub fn tools() -> Vec<rmcp::model::Tool> {
    standard_router(ReflexMcp::tool_router() + ReflexMcp::action_router()).list_all()
}

/// The router with every tool's schemas in standard JSON Schema (see [`standard_schema`]).
fn standard_router(
    mut router: rmcp::handler::server::router::tool::ToolRouter<ReflexMcp>,
) -> rmcp::handler::server::router::tool::ToolRouter<ReflexMcp> {
    for route in router.map.values_mut() {
        let tool = &mut route.attr;
        let mut input = Value::Object((*tool.input_schema).clone());
        standard_schema(&mut input);
        if let Value::Object(m) = input {
            tool.input_schema = Arc::new(m);
        }
        if let Some(output) = &tool.output_schema {
            let mut output = Value::Object((**output).clone());
            standard_schema(&mut output);
            if let Value::Object(m) = output {
                tool.output_schema = Some(Arc::new(m));
            }
        }
    }
    router
}

/// Replaces the Rust-specific `format`s schemars writes for integers and floats (`uint32`,
/// `uint64`, `int32`, `double`, …), which JSON Schema does not define and strict clients
/// reject, by standard bounds: `minimum: 0` for unsigned integers, the 32-bit range where it
/// applies, nothing for floats.
pub fn standard_schema(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let format = m.get("format").and_then(Value::as_str).map(str::to_owned);
            let bounds: Option<(Option<f64>, Option<f64>)> = match format.as_deref() {
                Some("uint" | "uint64" | "uint16" | "uint8") => Some((Some(0.0), None)),
                Some("uint32") => Some((Some(0.0), Some(f64::from(u32::MAX)))),
                Some("int32") => Some((Some(f64::from(i32::MIN)), Some(f64::from(i32::MAX)))),
                Some("int" | "int64" | "int16" | "int8" | "float" | "double") => Some((None, None)),
                _ => None,
            };
            if let Some((min, max)) = bounds {
                m.remove("format");
                if let Some(min) = min {
                    m.entry("minimum").or_insert(json!(min));
                }
                if let Some(max) = max {
                    m.entry("maximum").or_insert(json!(max));
                }
            }
            for child in m.values_mut() {
                standard_schema(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(standard_schema),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tool_has_a_version_and_typed_schemas() {
        let tools = tools();
        assert_eq!(tools.len(), TOOL_VERSIONS.len());
        for t in &tools {
            assert!(TOOL_VERSIONS.iter().any(|(n, _)| *n == t.name), "{} has no version", t.name);
            assert!(t.output_schema.is_some(), "{} has no output schema", t.name);
            let read_only = !super::super::actions::ACTION_TOOLS.contains(&t.name.as_ref());
            assert_eq!(t.annotations.as_ref().and_then(|a| a.read_only_hint), Some(read_only), "{}", t.name);
        }
    }

    #[test]
    fn tool_schemas_are_standard_json_schema() {
        for t in tools() {
            let schemas =
                [Some(Value::Object((*t.input_schema).clone())), t.output_schema.map(|o| Value::Object((*o).clone()))];
            for schema in schemas.into_iter().flatten() {
                let text = schema.to_string();
                for format in ["\"uint", "\"int8", "\"int16", "\"int32", "\"int64", "\"double", "\"float\""] {
                    assert!(!text.contains(&format!("\"format\":{format}")), "{}: {text}", t.name);
                }
            }
        }
        let mut limit = json!({"type": "integer", "format": "uint32"});
        standard_schema(&mut limit);
        assert_eq!(limit, json!({"type": "integer", "minimum": 0.0, "maximum": 4294967295.0}));
    }
}
