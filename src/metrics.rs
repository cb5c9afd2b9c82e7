//! Where Reflex reads numbers from: verification's samples, the playbook executor's direct
//! reads, and the MCP server's PromQL tool when no Prometheus is configured.
//!
//! Contract: a [`MetricsSource`] answers an instant PromQL query with one number (the sum
//! of the result vector, or the scalar), `None` when the query matched no series. Two
//! sources: [`Prometheus`] over HTTP (prometheus-http-query), and models that stand in for
//! Prometheus in the demo (see `crate::demo`), which must say which queries they can answer.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use promql_parser::label::{MatchOp, Matcher, Matchers};
use promql_parser::parser::{Expr, VectorSelector};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MetricsError {
    /// The server rejected the query (bad PromQL): retrying will not help.
    #[error("query rejected: {0}")]
    Rejected(String),
    /// The source could not be reached or timed out.
    #[error("metrics source unavailable: {0}")]
    Unavailable(String),
}

/// An alerting rule as the metrics source reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertRule {
    /// The alert name.
    pub name: String,
    /// Its PromQL expression.
    pub expr: String,
    /// Its static labels (added to every alert it fires).
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Answers instant queries.
pub trait MetricsSource: Send + Sync {
    fn instant(&self, query: &str) -> BoxFuture<'_, Result<Option<f64>, MetricsError>>;

    /// The query evaluated at `at` instead of now.
    fn instant_at(&self, query: &str, at: jiff::Timestamp) -> BoxFuture<'_, Result<Option<f64>, MetricsError>> {
        let _ = (query, at);
        Box::pin(async { Err(MetricsError::Unavailable("this metrics source cannot evaluate at a past time".into())) })
    }

    /// The alerting rules named `name`.
    fn alert_rules(&self, name: &str) -> BoxFuture<'_, Result<Vec<AlertRule>, MetricsError>> {
        let _ = name;
        Box::pin(async { Err(MetricsError::Unavailable("this metrics source has no rules API".into())) })
    }
}

fn vector_value(query: &str, data: &prometheus_http_query::response::Data) -> Result<Option<f64>, MetricsError> {
    use prometheus_http_query::response::Data;
    Ok(match data {
        Data::Vector(v) if v.is_empty() => None,
        Data::Vector(v) => Some(v.iter().map(|s| s.sample().value()).sum()),
        Data::Scalar(s) => Some(s.value()),
        Data::Matrix(_) => {
            return Err(MetricsError::Rejected(format!("{query:?} returns a range vector; use an instant expression")));
        }
    })
}

/// Only a query Prometheus cannot run (bad data, an execution error) is rejected; a timeout,
/// a cancellation or an unavailable or failing server is the provider failing, retried.
fn prometheus_error(e: prometheus_http_query::Error) -> MetricsError {
    use prometheus_http_query::error::PrometheusErrorType;
    match e {
        prometheus_http_query::Error::Prometheus(p)
            if matches!(p.error_type(), PrometheusErrorType::BadData | PrometheusErrorType::Execution) =>
        {
            MetricsError::Rejected(p.to_string())
        }
        other => MetricsError::Unavailable(other.to_string()),
    }
}

/// A Prometheus server's HTTP API.
pub struct Prometheus {
    client: prometheus_http_query::Client,
    timeout: Duration,
}

impl Prometheus {
    /// `url` is the server's base URL (`http://prometheus:9090`).
    pub fn new(url: &str, timeout: Duration) -> Result<Self, MetricsError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| MetricsError::Unavailable(e.to_string()))?;
        let client =
            prometheus_http_query::Client::from(http, url).map_err(|e| MetricsError::Rejected(e.to_string()))?;
        Ok(Self { client, timeout })
    }
}

impl MetricsSource for Prometheus {
    fn instant(&self, query: &str) -> BoxFuture<'_, Result<Option<f64>, MetricsError>> {
        let query = query.to_owned();
        Box::pin(async move {
            let timeout_ms = i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX);
            let result = self.client.query(&query).timeout(timeout_ms).get().await.map_err(prometheus_error)?;
            vector_value(&query, result.data())
        })
    }

    fn instant_at(&self, query: &str, at: jiff::Timestamp) -> BoxFuture<'_, Result<Option<f64>, MetricsError>> {
        let query = query.to_owned();
        Box::pin(async move {
            let timeout_ms = i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX);
            let result = self
                .client
                .query(&query)
                // Milliseconds matter: an alert starts within the second its sample arrived.
                .query("time", format!("{:.3}", at.as_millisecond() as f64 / 1000.0))
                .timeout(timeout_ms)
                .get()
                .await
                .map_err(prometheus_error)?;
            vector_value(&query, result.data())
        })
    }

    fn alert_rules(&self, name: &str) -> BoxFuture<'_, Result<Vec<AlertRule>, MetricsError>> {
        use prometheus_http_query::response::Rule;
        let name = name.to_owned();
        Box::pin(async move {
            let groups = self
                .client
                .rules()
                .kind(prometheus_http_query::RuleKind::Alerting)
                .name(&name)
                .get()
                .await
                .map_err(prometheus_error)?;
            Ok(groups
                .iter()
                .flat_map(|g| g.rules())
                .filter_map(|r| match r {
                    Rule::Alerting(a) if a.name() == name => Some(AlertRule {
                        name: a.name().to_owned(),
                        expr: a.query().to_owned(),
                        labels: a.labels().iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    }),
                    _ => None,
                })
                .collect())
        })
    }
}

impl<T: MetricsSource + ?Sized> MetricsSource for Arc<T> {
    fn instant(&self, query: &str) -> BoxFuture<'_, Result<Option<f64>, MetricsError>> {
        (**self).instant(query)
    }

    fn instant_at(&self, query: &str, at: jiff::Timestamp) -> BoxFuture<'_, Result<Option<f64>, MetricsError>> {
        (**self).instant_at(query, at)
    }

    fn alert_rules(&self, name: &str) -> BoxFuture<'_, Result<Vec<AlertRule>, MetricsError>> {
        (**self).alert_rules(name)
    }
}

/// `query` with `labels` ANDed into every vector selector (PromQL parsed with promql-parser,
/// never string-edited): a query scoped to a namespace reads only that namespace's series,
/// whatever matchers it had (`namespace=~".*"` and `namespace="shop"` select only shop).
///
/// # Errors
/// The query does not parse.
pub fn scoped_query(query: &str, labels: &BTreeMap<String, String>) -> Result<String, String> {
    let mut ast = promql_parser::parser::parse(query).map_err(|e| format!("the query does not parse: {e}"))?;
    inject_matchers(&mut ast, labels, None, &mut Vec::new());
    Ok(ast.to_string())
}

/// Adds an equality matcher for each of `labels` (and the `pods` regex matcher, when given) to
/// every vector selector of `expr` — inside range selectors, subqueries, function calls,
/// aggregations and both sides of binary operators; each selector, as scoped, goes to `out`.
pub fn inject_matchers(
    expr: &mut Expr,
    labels: &BTreeMap<String, String>,
    pods: Option<&(String, String)>,
    out: &mut Vec<String>,
) {
    each_selector(expr, &mut |vs| {
        narrow(vs, labels, pods);
        out.push(Expr::VectorSelector(vs.clone()).to_string());
    });
}

/// Calls `f` with every vector selector of `expr`, wherever it sits (range selectors,
/// subqueries, function calls, aggregations, both sides of binary operators).
pub fn each_selector(expr: &mut Expr, f: &mut impl FnMut(&mut VectorSelector)) {
    match expr {
        Expr::VectorSelector(vs) => f(vs),
        Expr::MatrixSelector(ms) => f(&mut ms.vs),
        Expr::Aggregate(a) => {
            each_selector(&mut a.expr, f);
            if let Some(param) = a.param.as_mut() {
                each_selector(param, f);
            }
        }
        Expr::Unary(u) => each_selector(&mut u.expr, f),
        Expr::Binary(b) => {
            each_selector(&mut b.lhs, f);
            each_selector(&mut b.rhs, f);
        }
        Expr::Paren(p) => each_selector(&mut p.expr, f),
        Expr::Subquery(s) => each_selector(&mut s.expr, f),
        Expr::Call(c) => c.args.args.iter_mut().for_each(|a| each_selector(a, f)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Adds `name="value"` to a selector unless it already has exactly that matcher (and the
/// `pods` regex matcher); with `or` groups, to every group (each is a selector of its own).
fn narrow(vs: &mut VectorSelector, labels: &BTreeMap<String, String>, pods: Option<&(String, String)>) {
    let regex = pods.and_then(|(name, pattern)| {
        regex::Regex::new(&format!("^(?:{pattern})$")).ok().map(|r| Matcher::new(MatchOp::Re(r), name, pattern))
    });
    let add = |group: &mut Vec<Matcher>| {
        for (name, value) in labels {
            let present = group.iter().any(|m| m.name == *name && m.op == MatchOp::Equal && m.value == *value);
            if !present {
                group.push(Matcher::new(MatchOp::Equal, name, value));
            }
        }
        if let Some(r) = &regex {
            group.push(r.clone());
        }
    };
    let Matchers { matchers, or_matchers } = &mut vs.matchers;
    if or_matchers.is_empty() {
        add(matchers);
    } else {
        or_matchers.iter_mut().for_each(add);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scoped_query_reads_only_its_namespace_whatever_its_matchers_say() {
        let shop = BTreeMap::from([("namespace".to_owned(), "shop".to_owned())]);
        let q = scoped_query(r#"sum(rate(http_requests_total{namespace=~".*"}[5m])) / on() group_left sum(up)"#, &shop)
            .unwrap();
        assert_eq!(q.matches(r#"namespace="shop""#).count(), 2, "{q}");
        assert!(q.contains(r#"namespace=~".*""#), "the caller's own matcher stays, ANDed: {q}");
        let q = scoped_query(r#"max_over_time(x{namespace="other"}[1h:1m] offset 5m)"#, &shop).unwrap();
        assert!(q.contains(r#"namespace="other""#) && q.contains(r#"namespace="shop""#), "both: no series at all: {q}");
        let q = scoped_query(r#"{__name__=~"secret.*"} or vector(1)"#, &shop).unwrap();
        assert!(q.contains(r#"namespace="shop""#), "{q}");
        assert!(scoped_query("sum(", &shop).unwrap_err().contains("does not parse"));
    }
}

/// A query as Prometheus would read it: parsed and printed back by promql-parser (so matcher
/// order and spacing do not matter); the text with its spaces collapsed when it does not
/// parse. What stand-ins for Prometheus (the demo's model, `reflex simulate`'s series) match
/// queries by.
pub fn normalize_query(q: &str) -> String {
    match promql_parser::parser::parse(q) {
        Ok(expr) => expr.to_string(),
        Err(_) => q.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// The Pods of a workload in PromQL, by kube-state-metrics' owner series rather than by their
/// names: a vector with one series (value 1) per Pod, labelled `namespace` and `pod`, to join
/// with `* on (namespace, pod) group_left ()`. A Deployment's Pods are found through their
/// ReplicaSets (`kube_pod_owner` → `kube_replicaset_owner`); a StatefulSet's or DaemonSet's
/// directly. `None` for kinds that run no Pods. `namespace` and `name` must be object names
/// (the caller's validated target); anything else gets `None`, never pasted PromQL.
pub fn pods_of(kind: &str, namespace: &str, name: &str) -> Option<String> {
    if !crate::api::template::is_dns_subdomain(namespace) || !crate::api::template::is_dns_subdomain(name) {
        return None;
    }
    match kind {
        "Deployment" => Some(format!(
            "max by (namespace, pod) (kube_pod_owner{{namespace=\"{namespace}\",owner_kind=\"ReplicaSet\"}} * on (namespace, owner_name) group_left () max by (namespace, owner_name) (label_replace(kube_replicaset_owner{{namespace=\"{namespace}\",owner_kind=\"Deployment\",owner_name=\"{name}\"}}, \"owner_name\", \"$1\", \"replicaset\", \"(.*)\")))"
        )),
        "StatefulSet" | "DaemonSet" => Some(format!(
            "max by (namespace, pod) (kube_pod_owner{{namespace=\"{namespace}\",owner_kind=\"{kind}\",owner_name=\"{name}\"}})"
        )),
        _ => None,
    }
}

/// The names a workload's controller gives its Pods, as a regex for `pod=~`: the fallback a
/// playbook may choose where kube-state-metrics' owner series are not scraped. It also
/// matches a sibling DaemonSet's Pods named `NAME-<5>`; owner joins do not. `None` for a name
/// that is not an object name.
pub fn pod_name_regex(name: &str) -> Option<String> {
    crate::api::template::is_dns_subdomain(name).then(|| format!("{name}-(([a-z0-9]+-)?[a-z0-9]{{5}}|[0-9]+)"))
}

#[cfg(test)]
mod owner_join_tests {
    use super::*;

    #[test]
    fn owner_joins_parse_as_promql_and_select_by_owner_not_name() {
        for kind in ["Deployment", "StatefulSet", "DaemonSet"] {
            let q = pods_of(kind, "shop", "web").unwrap_or_default();
            let joined = format!(
                "max(container_memory_working_set_bytes{{namespace=\"shop\"}} * on (namespace, pod) group_left () {q})"
            );
            assert!(promql_parser::parser::parse(&joined).is_ok(), "{kind}: {joined}");
            assert!(!q.contains("pod=~"), "{q}");
        }
        assert!(
            pods_of("Deployment", "shop", "web")
                .unwrap_or_default()
                .contains("owner_kind=\"Deployment\",owner_name=\"web\"")
        );
        assert_eq!(pods_of("ConfigMap", "shop", "web"), None);
        assert_eq!(pod_name_regex("web").as_deref(), Some("web-(([a-z0-9]+-)?[a-z0-9]{5}|[0-9]+)"));
        assert_eq!(pods_of("Deployment", "shop", "web\"} or vector(1)"), None, "never pasted");
        assert_eq!(pod_name_regex("web\"}"), None);
    }
}
