//! Label and field selectors, parsed and matched the way the API server does.
//!
//! Contract: [`LabelSelector::parse`] accepts the string syntax of `?labelSelector=`
//! (`a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`, comma = AND);
//! [`FieldSelector::parse`] accepts `path=value`, `path==value`, `path!=value`. Both reject
//! malformed input with a message naming the bad term. Which field paths a resource supports is
//! decided by the caller ([`FieldSelector::paths`]), as the API server does per kind.

use std::collections::BTreeSet;

use serde_json::Value;

#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelTerm {
    Eq(String, String),
    NotEq(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed `labelSelector`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelTerm>);

fn valid_key(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 317
        && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
}

fn valid_value(v: &str) -> bool {
    v.len() <= 63 && v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Split on commas that are not inside parentheses.
fn split_terms(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(terms));
        }
        for raw in split_terms(s) {
            let t = raw.trim();
            let bad = || format!("unable to parse requirement: {t:?} is not a valid label selector term");
            let term = if let Some(k) = t.strip_prefix('!') {
                LabelTerm::NotExists(k.trim().to_owned())
            } else if let Some((k, v)) = t.split_once("!=") {
                LabelTerm::NotEq(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = t.split_once("==") {
                LabelTerm::Eq(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, v)) = t.split_once('=') {
                LabelTerm::Eq(k.trim().to_owned(), v.trim().to_owned())
            } else if let Some((k, rest)) = t.split_once(" notin ") {
                LabelTerm::NotIn(k.trim().to_owned(), parse_set(rest).ok_or_else(bad)?)
            } else if let Some((k, rest)) = t.split_once(" in ") {
                LabelTerm::In(k.trim().to_owned(), parse_set(rest).ok_or_else(bad)?)
            } else {
                LabelTerm::Exists(t.to_owned())
            };
            let (key, values): (&str, Vec<&String>) = match &term {
                LabelTerm::Eq(k, v) | LabelTerm::NotEq(k, v) => (k, vec![v]),
                LabelTerm::In(k, vs) | LabelTerm::NotIn(k, vs) => (k, vs.iter().collect()),
                LabelTerm::Exists(k) | LabelTerm::NotExists(k) => (k, vec![]),
            };
            if !valid_key(key) {
                return Err(format!("unable to parse requirement: invalid label key {key:?}"));
            }
            if let Some(v) = values.into_iter().find(|v| !valid_value(v)) {
                return Err(format!("unable to parse requirement: invalid label value {v:?}"));
            }
            terms.push(term);
        }
        Ok(Self(terms))
    }

    /// Does an object with these labels match?
    pub fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|t| match t {
            LabelTerm::Eq(k, v) => get(k) == Some(v.as_str()),
            LabelTerm::NotEq(k, v) => get(k) != Some(v.as_str()),
            LabelTerm::In(k, vs) => get(k).is_some_and(|x| vs.contains(x)),
            LabelTerm::NotIn(k, vs) => get(k).is_none_or(|x| !vs.contains(x)),
            LabelTerm::Exists(k) => get(k).is_some(),
            LabelTerm::NotExists(k) => get(k).is_none(),
        })
    }

    /// The selector a `metav1.LabelSelector` object (matchLabels + matchExpressions) means.
    pub fn from_object(sel: &Value) -> Result<Self, String> {
        let mut terms = Vec::new();
        if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
            for (k, v) in m {
                terms.push(LabelTerm::Eq(k.clone(), v.as_str().unwrap_or_default().to_owned()));
            }
        }
        for e in sel.get("matchExpressions").and_then(Value::as_array).into_iter().flatten() {
            let key = e.get("key").and_then(Value::as_str).unwrap_or_default().to_owned();
            let values: BTreeSet<String> = e
                .get("values")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
            terms.push(match e.get("operator").and_then(Value::as_str) {
                Some("In") => LabelTerm::In(key, values),
                Some("NotIn") => LabelTerm::NotIn(key, values),
                Some("Exists") => LabelTerm::Exists(key),
                Some("DoesNotExist") => LabelTerm::NotExists(key),
                other => return Err(format!("{other:?} is not a valid label selector operator")),
            });
        }
        Ok(Self(terms))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn parse_set(rest: &str) -> Option<BTreeSet<String>> {
    let inner = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some(inner.split(',').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect())
}

/// A parsed `fieldSelector`: (path, wanted value, equal?).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, String, bool)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        if s.trim().is_empty() {
            return Ok(Self(terms));
        }
        for raw in s.split(',') {
            let t = raw.trim();
            let (path, value, eq) = if let Some((k, v)) = t.split_once("!=") {
                (k, v, false)
            } else if let Some((k, v)) = t.split_once("==") {
                (k, v, true)
            } else if let Some((k, v)) = t.split_once('=') {
                (k, v, true)
            } else {
                return Err(format!("invalid selector: {t:?}; can't understand {t:?}"));
            };
            terms.push((path.trim().to_owned(), value.trim().to_owned(), eq));
        }
        Ok(Self(terms))
    }

    /// The field paths this selector uses, for the caller to check against what the kind supports.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(p, _, _)| p.as_str())
    }

    /// Does the object match? A missing field reads as "".
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, want, eq)| {
            let got = path.split('.').try_fold(obj, |v, seg| v.get(seg));
            let got = match got {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(other) => other.to_string(),
            };
            (got == *want) == *eq
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selector_terms() {
        let l = json!({"app": "web", "tier": "front"});
        let ok = |s: &str| LabelSelector::parse(s).unwrap().matches(&l);
        assert!(ok("app=web"));
        assert!(ok("app==web,tier"));
        assert!(!ok("app!=web"));
        assert!(ok("tier in (front, back)"));
        assert!(!ok("tier notin (front)"));
        assert!(ok("!missing"));
        assert!(!ok("missing"));
        assert!(ok("missing notin (x)"));
        assert!(ok(""));
        assert!(LabelSelector::parse("app in front").is_err());
        assert!(LabelSelector::parse("a b=c").is_err());
    }

    #[test]
    fn selector_object_form() {
        let sel = json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]});
        let s = LabelSelector::from_object(&sel).unwrap();
        assert!(s.matches(&json!({"app": "web", "tier": "front"})));
        assert!(!s.matches(&json!({"app": "web"})));
    }

    #[test]
    fn field_selector_paths() {
        let ev = json!({"involvedObject": {"name": "r1", "kind": "Remediation"}, "type": "Normal"});
        let f = FieldSelector::parse("involvedObject.name=r1,involvedObject.kind==Remediation,type!=Warning").unwrap();
        assert!(f.matches(&ev));
        assert!(!FieldSelector::parse("involvedObject.name=r2").unwrap().matches(&ev));
        assert!(FieldSelector::parse("involvedObject.uid=").unwrap().matches(&ev));
        assert!(FieldSelector::parse("nonsense").is_err());
        assert_eq!(f.paths().collect::<Vec<_>>(), ["involvedObject.name", "involvedObject.kind", "type"]);
    }
}
