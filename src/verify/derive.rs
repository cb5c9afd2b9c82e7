//! Verification derived from the alert itself: the alerting rule's own expression, scoped to
//! the alert's series, must return nothing.
//!
//! Contract: pure. [`pick_rule`] finds the rule that fired — by alert name, and among rules
//! of that name the ones whose static labels the alert carries; two that disagree on the
//! expression are ambiguous, never guessed between. [`identifying`] are the alert's labels
//! that came from the expression's series: all but `alertname` and the rule's static labels.
//! [`scope`] parses the expression with `promql-parser` (never string-edits PromQL) and adds
//! an equality matcher for each identifying label to every vector selector — inside range
//! selectors, subqueries, function calls, aggregations and both sides of binary operators —
//! then prints it back. A label a selector cannot carry empties the result, which would look
//! like a pass: the shell therefore checks that the scoped expression reproduces the alert
//! at the time it started before it trusts an empty answer.

use std::collections::BTreeMap;

pub use crate::metrics::AlertRule;
use promql_parser::label::{MatchOp, Matcher, Matchers};
use promql_parser::parser::{self, Expr, VectorSelector};

/// The rule behind an alert named `alertname` with `labels`.
///
/// # Errors
/// No rule of that name carries the alert's static labels, or several do with different
/// expressions.
pub fn pick_rule<'a>(
    rules: &'a [AlertRule],
    alertname: &str,
    labels: &BTreeMap<String, String>,
) -> Result<&'a AlertRule, String> {
    let named: Vec<&AlertRule> = rules.iter().filter(|r| r.name == alertname).collect();
    if named.is_empty() {
        return Err(format!("Prometheus has no alerting rule named {alertname:?}"));
    }
    let fitting: Vec<&AlertRule> =
        named.into_iter().filter(|r| r.labels.iter().all(|(k, v)| labels.get(k) == Some(v))).collect();
    match fitting.as_slice() {
        [] => Err(format!("no alerting rule named {alertname:?} carries the alert's labels")),
        [one] => Ok(one),
        [first, rest @ ..] if rest.iter().all(|r| r.expr == first.expr) => Ok(first),
        _ => Err(format!(
            "{} alerting rules named {alertname:?} fit the alert with different expressions; give verify.query",
            fitting.len()
        )),
    }
}

/// Labels that name one Pod, process or container instance: a rollout replaces them, so a
/// check scoped to them goes silent whether or not the fix worked.
const PER_INSTANCE: &[&str] =
    &["pod", "pod_name", "instance", "container_id", "pod_ip", "uid", "pod_uid", "id", "name"];

/// The alert's labels that identify its series: all but `alertname`, the rule's static
/// labels, and those naming one Pod or instance ([`PER_INSTANCE`]).
pub fn identifying(alert: &BTreeMap<String, String>, rule: &AlertRule) -> BTreeMap<String, String> {
    alert
        .iter()
        .filter(|(k, _)| {
            k.as_str() != "alertname" && !rule.labels.contains_key(k.as_str()) && !PER_INSTANCE.contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// For an alert that named a Pod, the matcher for any Pod of the same workload (`<target>-…`,
/// as the Deployment, StatefulSet and DaemonSet controllers name them), so the check follows
/// the workload across the rollout instead of the Pod it replaced.
pub fn workload_pods(alert: &BTreeMap<String, String>, target: &str) -> Option<(String, String)> {
    alert.contains_key("pod").then(|| ("pod".to_owned(), format!("{}-.+", regex_escape(target))))
}

fn regex_escape(s: &str) -> String {
    s.chars().fold(String::new(), |mut out, c| {
        if !c.is_ascii_alphanumeric() && c != '-' && c != '_' {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

/// The scoped check and the query saying its series still exist.
#[derive(Clone, Debug, PartialEq)]
pub struct Scoped {
    /// `expr` narrowed to the alert's series.
    pub query: String,
    /// The longest range the expression looks back over (range selectors, subqueries): after
    /// a fix the expression can stay true that long on history alone.
    pub lookback: std::time::Duration,
    /// Data when the check can still see the alert's subject, so an empty check means
    /// "clear", not "gone": `count(...) or ...` over every narrowed selector, or over a
    /// selector with no metric name and only the subject's labels — the alert's labels the
    /// rule's own matchers do not pin (a rule that selects `reason="CrashLoopBackOff"` reads
    /// a series that exists only while the container waits for that reason; the container's
    /// other series go on existing once it is healthy).
    pub presence: String,
}

/// `expr` with an equality matcher for every label in `labels` — and, when given, a regex
/// matcher `pods` — in every vector selector.
///
/// # Errors
/// The expression does not parse.
pub fn scope(expr: &str, labels: &BTreeMap<String, String>, pods: Option<&(String, String)>) -> Result<Scoped, String> {
    let mut ast = parser::parse(expr).map_err(|e| format!("the alerting rule's expression does not parse: {e}"))?;
    // Labels the rule pins to one value are its condition (`reason="CrashLoopBackOff"`) —
    // except the namespace and the job, which say whose series and from which source: they
    // stay in the subject, so another namespace's series or another exporter's never count.
    let mut pinned = std::collections::BTreeSet::new();
    crate::metrics::each_selector(&mut ast, &mut |vs| {
        let groups = std::iter::once(&vs.matchers.matchers).chain(&vs.matchers.or_matchers);
        pinned.extend(
            groups
                .flatten()
                .filter(|m| m.op == MatchOp::Equal && !matches!(m.name.as_str(), "namespace" | "job"))
                .map(|m| m.name.clone()),
        );
    });
    let mut selectors = Vec::new();
    crate::metrics::inject_matchers(&mut ast, labels, pods, &mut selectors);
    let mut subject: Vec<Matcher> = labels
        .iter()
        .filter(|(k, v)| !pinned.contains(k.as_str()) && !v.is_empty())
        .map(|(k, v)| Matcher::new(MatchOp::Equal, k, v))
        .collect();
    if let Some((name, pattern)) = pods.filter(|(name, _)| !pinned.contains(name)) {
        let r = regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| format!("the Pod pattern: {e}"))?;
        subject.push(Matcher::new(MatchOp::Re(r), name, pattern));
    }
    if !subject.is_empty() {
        selectors.push(Expr::VectorSelector(VectorSelector::new(None, Matchers::new(subject))).to_string());
    }
    let presence = selectors.iter().map(|s| format!("count({s})")).collect::<Vec<_>>().join(" or ");
    Ok(Scoped { query: ast.to_string(), presence, lookback: lookback(&ast) })
}

fn lookback(expr: &Expr) -> std::time::Duration {
    match expr {
        Expr::MatrixSelector(ms) => ms.range,
        Expr::Subquery(s) => s.range.max(lookback(&s.expr)),
        Expr::Aggregate(a) => lookback(&a.expr).max(a.param.as_deref().map_or(Default::default(), lookback)),
        Expr::Unary(u) => lookback(&u.expr),
        Expr::Binary(b) => lookback(&b.lhs).max(lookback(&b.rhs)),
        Expr::Paren(p) => lookback(&p.expr),
        Expr::Call(c) => c.args.args.iter().map(|a| lookback(a)).max().unwrap_or_default(),
        _ => std::time::Duration::ZERO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn shop() -> BTreeMap<String, String> {
        labels(&[("namespace", "shop"), ("pod", "checkout-1")])
    }

    /// The scoped expression, and that it parses again to the same thing.
    fn scoped(expr: &str) -> String {
        let out = scope(expr, &shop(), None).unwrap().query;
        let again = parser::parse(&out).unwrap().to_string();
        assert_eq!(again, out, "prints back to something that parses to itself");
        out
    }

    #[test]
    fn every_vector_selector_is_narrowed_whatever_wraps_it() {
        let cases = [
            // A bare selector, with and without a metric name.
            ("up", r#"up{namespace="shop",pod="checkout-1"}"#),
            (r#"{__name__="up",job="k"}"#, r#"{__name__="up",job="k",namespace="shop",pod="checkout-1"}"#),
            // A range selector inside a function.
            ("rate(errors_total[5m])", r#"rate(errors_total{namespace="shop",pod="checkout-1"}[5m])"#),
            // An aggregation with grouping, and one with a parameter.
            (
                "sum by (namespace) (rate(x[1m])) > 0",
                r#"sum by (namespace) (rate(x{namespace="shop",pod="checkout-1"}[1m])) > 0"#,
            ),
            ("topk(3, x)", r#"topk(3, x{namespace="shop",pod="checkout-1"})"#),
            // Both sides of a binary operator, with vector matching.
            (
                "a / on (namespace) group_left b",
                r#"a{namespace="shop",pod="checkout-1"} / on (namespace) group_left () b{namespace="shop",pod="checkout-1"}"#,
            ),
            ("a and b", r#"a{namespace="shop",pod="checkout-1"} and b{namespace="shop",pod="checkout-1"}"#),
            // A subquery, an offset, an @ modifier, parentheses and a unary minus.
            (
                "max_over_time((x > 1)[10m:1m] offset 5m)",
                r#"max_over_time((x{namespace="shop",pod="checkout-1"} > 1)[10m:1m] offset 5m)"#,
            ),
            ("x offset 1h", r#"x{namespace="shop",pod="checkout-1"} offset 1h"#),
            ("x @ 1700000000", r#"x{namespace="shop",pod="checkout-1"} @ 1700000000.000"#),
            ("-(x)", r#"-(x{namespace="shop",pod="checkout-1"})"#),
            // Functions of several arguments, and literals left alone.
            (
                r#"label_replace(x, "a", "$1", "b", "(.*)") > 0.5"#,
                r#"label_replace(x{namespace="shop",pod="checkout-1"}, "a", "$1", "b", "(.*)") > 0.5"#,
            ),
            ("vector(1)", "vector(1)"),
            // A matcher already there is not doubled; a different one stays (both must hold).
            (r#"x{namespace="shop"}"#, r#"x{namespace="shop",pod="checkout-1"}"#),
            (r#"x{pod=~"checkout-.*"}"#, r#"x{namespace="shop",pod="checkout-1",pod=~"checkout-.*"}"#),
        ];
        for (expr, want) in cases {
            assert_eq!(scoped(expr), want, "{expr}");
        }
    }

    #[test]
    fn or_groups_are_each_narrowed() {
        let out = scoped(r#"x{job="a" or job="b"}"#);
        assert_eq!(
            out,
            r#"x{job="a", namespace="shop", pod="checkout-1" or job="b", namespace="shop", pod="checkout-1"}"#
        );
    }

    #[test]
    fn an_expression_that_does_not_parse_is_an_error_not_a_guess() {
        let err = scope("sum(rate(x[5m]) by", &shop(), None).unwrap_err();
        assert!(err.starts_with("the alerting rule's expression does not parse"), "{err}");
    }

    fn rule(name: &str, expr: &str, static_labels: &[(&str, &str)]) -> AlertRule {
        AlertRule { name: name.into(), expr: expr.into(), labels: labels(static_labels) }
    }

    #[test]
    fn the_rule_is_the_one_named_for_the_alert_whose_static_labels_it_carries() {
        let rules = [
            rule("KubePodCrashLooping", "a > 0", &[("severity", "warning")]),
            rule("KubePodCrashLooping", "a > 5", &[("severity", "critical")]),
            rule("Other", "b", &[]),
        ];
        let alert = labels(&[("alertname", "KubePodCrashLooping"), ("severity", "critical"), ("pod", "p")]);
        assert_eq!(pick_rule(&rules, "KubePodCrashLooping", &alert).unwrap().expr, "a > 5");
        assert!(pick_rule(&rules, "Missing", &alert).unwrap_err().contains("no alerting rule named \"Missing\""));
        let unlabelled = labels(&[("alertname", "KubePodCrashLooping"), ("pod", "p")]);
        let ambiguous = [rule("A", "x > 1", &[]), rule("A", "x > 2", &[])];
        assert!(pick_rule(&ambiguous, "A", &unlabelled).unwrap_err().contains("different expressions"));
        let same = [rule("A", "x > 1", &[]), rule("A", "x > 1", &[])];
        assert!(pick_rule(&same, "A", &unlabelled).is_ok(), "the same rule loaded twice is one rule");
        assert!(pick_rule(&rules, "KubePodCrashLooping", &labels(&[("severity", "info")])).is_err());
    }

    #[test]
    fn identifying_labels_leave_out_the_alert_name_the_rules_own_labels_and_the_pod() {
        let r = rule("A", "x", &[("severity", "warning"), ("team", "shop")]);
        let alert = labels(&[
            ("alertname", "A"),
            ("severity", "warning"),
            ("team", "shop"),
            ("namespace", "shop"),
            ("container", "app"),
            ("pod", "checkout-7d9f-abcde"),
            ("instance", "10.0.0.1:8080"),
        ]);
        assert_eq!(identifying(&alert, &r), labels(&[("container", "app"), ("namespace", "shop")]));
    }

    /// A crash-looping Pod's alert: the check follows the workload's Pods (the rollout
    /// replaces that Pod, so a check scoped to it would go silent whatever the fix did), and
    /// the presence query says whether any series the check reads still exists.
    #[test]
    fn a_pod_alert_is_checked_across_the_workloads_pods_and_presence_is_checked_too() {
        let alert = labels(&[("namespace", "shop"), ("pod", "checkout-7d9f-abcde")]);
        let pods = workload_pods(&alert, "checkout").unwrap();
        let ns = labels(&[("namespace", "shop")]);
        let s = scope(
            "max_over_time(kube_pod_container_status_waiting_reason{reason=\"CrashLoopBackOff\"}[5m]) >= 1",
            &ns,
            Some(&pods),
        )
        .unwrap();
        assert_eq!(
            s.query,
            r#"max_over_time(kube_pod_container_status_waiting_reason{namespace="shop",pod=~"checkout-.+",reason="CrashLoopBackOff"}[5m]) >= 1"#
        );
        assert_eq!(
            s.presence,
            r#"count(kube_pod_container_status_waiting_reason{namespace="shop",pod=~"checkout-.+",reason="CrashLoopBackOff"}) or count({namespace="shop",pod=~"checkout-.+"})"#,
            "the series the rule reads, or any series of the workload's Pods"
        );
        assert_eq!(workload_pods(&labels(&[("namespace", "shop")]), "checkout"), None, "no pod, no pod matcher");
        assert_eq!(workload_pods(&alert, "web.v2").unwrap().1, r"web\.v2-.+", "the name is a literal");
        assert_eq!(s.lookback, std::time::Duration::from_secs(300));
        let nested = scope("max_over_time(rate(x[15m])[1h:1m])", &ns, None).unwrap();
        assert_eq!(nested.lookback, std::time::Duration::from_secs(3600));
        let two = scope("a / b", &ns, None).unwrap();
        assert_eq!(two.lookback, std::time::Duration::ZERO);
        assert_eq!(
            two.presence,
            r#"count(a{namespace="shop"}) or count(b{namespace="shop"}) or count({namespace="shop"})"#
        );
        let broad = scope(
            r#"a{namespace=~".*", job="kube-state-metrics", reason=~"Err.*"}"#,
            &labels(&[("namespace", "shop"), ("job", "kube-state-metrics"), ("reason", "Error")]),
            None,
        )
        .unwrap();
        assert!(
            broad.presence.ends_with(r#"or count({job="kube-state-metrics",namespace="shop",reason="Error"})"#),
            "the namespace and the job stay in the subject; only an equality pins a label: {}",
            broad.presence
        );
        let pinned = scope(
            r#"a{namespace="shop", reason="Failed"}"#,
            &labels(&[("namespace", "shop"), ("reason", "Failed")]),
            None,
        )
        .unwrap();
        assert_eq!(
            pinned.presence, r#"count(a{namespace="shop",reason="Failed"}) or count({namespace="shop"})"#,
            "labels the rule pins are its condition, not its subject"
        );
    }
}
