//! The small tool interface the playbook executor reads production through.
//!
//! Contract: a [`Tools`] call takes a tool name and string arguments and returns JSON. The
//! built-in implementation, [`KubeTools`], is scoped to one namespace (a remediation never
//! reads outside its own) and offers `get_resource` (the workload kinds Reflex targets —
//! never Secrets) and `query` (an instant PromQL value). Issue 6 puts the same tools behind
//! MCP; the executor does not change.

use std::collections::BTreeMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

use crate::api::{ErrorCategory, TargetKind};
use crate::verify::metrics::{MetricsError, MetricsSource};

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

/// The API resource of a target kind.
pub fn api_resource(kind: TargetKind) -> ApiResource {
    let (group, version) = match kind.api_version().split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", kind.api_version()),
    };
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind.as_str()))
}

/// Map an API error to a stage error category.
pub fn category(e: &kube::Error) -> ErrorCategory {
    crate::controller::reconcile::api_category(e)
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
        let kind: TargetKind = serde_json::from_value(json!(kind_name)).map_err(|_| {
            Self::err(tool, ErrorCategory::InvalidSpec, format!("cannot read kind {kind_name:?}: it reads Deployment, StatefulSet, DaemonSet, ConfigMap and HorizontalPodAutoscaler"))
        })?;
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &self.namespace, &api_resource(kind));
        let obj = api.get(name).await.map_err(|e| Self::err(tool, category(&e), e.to_string()))?;
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
                other => {
                    Err(Self::err(other, ErrorCategory::InvalidSpec, "no such tool (available: get_resource, query)"))
                }
            }
        })
    }
}
