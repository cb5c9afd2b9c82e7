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

use promql_parser::label::{MatchOp, Matcher, Matchers};

pub use crate::metrics::AlertRule;
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

/// The alert's labels that identify its series: all but `alertname` and the rule's static
/// labels.
pub fn identifying(alert: &BTreeMap<String, String>, rule: &AlertRule) -> BTreeMap<String, String> {
    alert
        .iter()
        .filter(|(k, _)| k.as_str() != "alertname" && !rule.labels.contains_key(k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `expr` with an equality matcher for every label in `labels` in every vector selector.
///
/// # Errors
/// The expression does not parse.
pub fn scope(expr: &str, labels: &BTreeMap<String, String>) -> Result<String, String> {
    let mut ast = parser::parse(expr).map_err(|e| format!("the alerting rule's expression does not parse: {e}"))?;
    inject(&mut ast, labels);
    Ok(ast.to_string())
}

fn inject(expr: &mut Expr, labels: &BTreeMap<String, String>) {
    match expr {
        Expr::VectorSelector(vs) => narrow(vs, labels),
        Expr::MatrixSelector(ms) => narrow(&mut ms.vs, labels),
        Expr::Aggregate(a) => {
            inject(&mut a.expr, labels);
            if let Some(param) = a.param.as_mut() {
                inject(param, labels);
            }
        }
        Expr::Unary(u) => inject(&mut u.expr, labels),
        Expr::Binary(b) => {
            inject(&mut b.lhs, labels);
            inject(&mut b.rhs, labels);
        }
        Expr::Paren(p) => inject(&mut p.expr, labels),
        Expr::Subquery(s) => inject(&mut s.expr, labels),
        Expr::Call(c) => c.args.args.iter_mut().for_each(|a| inject(a, labels)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Adds `name="value"` to a selector unless it already has exactly that matcher; with `or`
/// groups, to every group (each is a selector of its own).
fn narrow(vs: &mut VectorSelector, labels: &BTreeMap<String, String>) {
    let add = |group: &mut Vec<Matcher>| {
        for (name, value) in labels {
            let present = group.iter().any(|m| m.name == *name && m.op == MatchOp::Equal && m.value == *value);
            if !present {
                group.push(Matcher::new(MatchOp::Equal, name, value));
            }
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

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn shop() -> BTreeMap<String, String> {
        labels(&[("namespace", "shop"), ("pod", "checkout-1")])
    }

    /// The scoped expression, and that it parses again to the same thing.
    fn scoped(expr: &str) -> String {
        let out = scope(expr, &shop()).unwrap();
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
        let err = scope("sum(rate(x[5m]) by", &shop()).unwrap_err();
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
    fn identifying_labels_leave_out_the_alert_name_and_the_rules_own_labels() {
        let r = rule("A", "x", &[("severity", "warning"), ("team", "shop")]);
        let alert = labels(&[
            ("alertname", "A"),
            ("severity", "warning"),
            ("team", "shop"),
            ("namespace", "shop"),
            ("pod", "p"),
        ]);
        assert_eq!(identifying(&alert, &r), labels(&[("namespace", "shop"), ("pod", "p")]));
    }
}
