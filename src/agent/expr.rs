//! Parameter expressions of playbooks: small, total, and side-effect free.
//!
//! Contract: `expr := term (('+'|'-') term)*`, `term := factor (('*'|'/') factor)*`,
//! `factor := number | quantity in quotes | path | max(e, e, ..) | min(e, e, ..) | ( e )`,
//! `path := ident ('.' ident | '[' n ']' | '[' key '=' value ']')*`, resolved against a JSON
//! scope (`reads`, `target`, `labels`). Quantities (`"128Mi"`, `"500m"`) and numeric strings
//! read as numbers in base units. Names may contain `-`, so subtraction needs spaces
//! (`a - 1`). Nesting is capped and non-finite results are errors. Errors name the
//! expression and the failing part.

use serde_json::Value;

use crate::api::quantity::parse_quantity;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("expression {expr:?}: {message}")]
pub struct ExprError {
    pub expr: String,
    pub message: String,
}

struct Parser<'a> {
    src: &'a str,
    pos: usize,
    scope: &'a Value,
    depth: usize,
}

/// Deepest nesting of parentheses and function calls accepted.
const MAX_DEPTH: usize = 32;

fn number_of(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => parse_quantity(s).ok(),
        _ => None,
    }
}

impl<'a> Parser<'a> {
    fn err<T>(&self, message: impl Into<String>) -> Result<T, ExprError> {
        Err(ExprError { expr: self.src.to_owned(), message: message.into() })
    }

    fn rest(&self) -> &'a str {
        &self.src[self.pos..]
    }

    fn skip_ws(&mut self) {
        let trimmed = self.rest().trim_start();
        self.pos = self.src.len() - trimmed.len();
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.rest().starts_with(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expr(&mut self) -> Result<f64, ExprError> {
        let mut acc = self.term()?;
        loop {
            if self.eat('+') {
                acc += self.term()?;
            } else if self.eat('-') {
                acc -= self.term()?;
            } else {
                return Ok(acc);
            }
        }
    }

    fn term(&mut self) -> Result<f64, ExprError> {
        let mut acc = self.factor()?;
        loop {
            if self.eat('*') {
                acc *= self.factor()?;
            } else if self.eat('/') {
                let d = self.factor()?;
                if d == 0.0 {
                    return self.err("division by zero");
                }
                acc /= d;
            } else {
                return Ok(acc);
            }
        }
    }

    fn ident(&mut self) -> String {
        self.skip_ws();
        let len = self
            .rest()
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .unwrap_or(self.rest().len());
        let id = self.rest()[..len].to_owned();
        self.pos += len;
        id
    }

    fn factor(&mut self) -> Result<f64, ExprError> {
        self.depth += 1;
        let v = self.factor_inner();
        self.depth -= 1;
        v
    }

    fn factor_inner(&mut self) -> Result<f64, ExprError> {
        if self.depth > MAX_DEPTH {
            return self.err(format!("nested more than {MAX_DEPTH} deep"));
        }
        self.skip_ws();
        let rest = self.rest();
        if rest.starts_with('(') {
            self.pos += 1;
            let v = self.expr()?;
            if !self.eat(')') {
                return self.err("missing ')'");
            }
            return Ok(v);
        }
        if let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') {
            let body = &rest[1..];
            let Some(end) = body.find(quote) else { return self.err("unterminated quote") };
            let text = &body[..end];
            self.pos += end + 2;
            return parse_quantity(text).or_else(|_| self.err(format!("{text:?} is not a number or quantity")));
        }
        if rest.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
            let len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
            let text = &rest[..len];
            self.pos += len;
            return text.parse::<f64>().or_else(|_| self.err(format!("{text:?} is not a number")));
        }
        let name = self.ident();
        if name.is_empty() {
            return self.err(format!("unexpected {:?}", self.rest().chars().next().unwrap_or(' ')));
        }
        if (name == "max" || name == "min") && self.eat('(') {
            let mut values = vec![self.expr()?];
            while self.eat(',') {
                values.push(self.expr()?);
            }
            if !self.eat(')') {
                return self.err(format!("missing ')' after {name}("));
            }
            if values.iter().any(|v| !v.is_finite()) {
                return self.err(format!("an argument of {name}() is not a finite number"));
            }
            let pick = if name == "max" { f64::max } else { f64::min };
            return Ok(values.into_iter().fold(if name == "max" { f64::MIN } else { f64::MAX }, pick));
        }
        self.path(name)
    }

    fn path(&mut self, first: String) -> Result<f64, ExprError> {
        let (node, shown) = self.resolve(first)?;
        match number_of(node) {
            Some(n) => Ok(n),
            None => self.err(format!("{shown} is {node}, not a number")),
        }
    }

    /// The value a path names, and the path as written.
    fn resolve(&mut self, first: String) -> Result<(&'a Value, String), ExprError> {
        let mut shown = first.clone();
        let Some(mut node) = self.scope.get(&first) else { return self.err(format!("unknown name {first:?}")) };
        loop {
            if self.rest().starts_with('.') && !self.rest()[1..].starts_with(|c: char| c.is_ascii_digit()) {
                self.pos += 1;
                let key = self.ident();
                shown.push('.');
                shown.push_str(&key);
                node = match node.get(&key) {
                    Some(n) => n,
                    None => return self.err(format!("{shown} is not set")),
                };
            } else if self.rest().starts_with('[') {
                let Some(end) = self.rest().find(']') else { return self.err("missing ']'") };
                let inner = self.rest()[1..end].trim().to_owned();
                self.pos += end + 1;
                shown.push_str(&format!("[{inner}]"));
                node = if let Some((k, v)) = inner.split_once('=') {
                    let (k, v) = (k.trim(), v.trim().trim_matches('"'));
                    let same = |i: &Value| match i.get(k) {
                        Some(Value::String(s)) => s == v,
                        Some(Value::Bool(b)) => v == if *b { "true" } else { "false" },
                        Some(Value::Number(n)) => v.parse::<f64>().ok() == n.as_f64(),
                        _ => false,
                    };
                    match node.as_array().and_then(|a| a.iter().find(|i| same(i))) {
                        Some(n) => n,
                        None => return self.err(format!("{shown} matches nothing")),
                    }
                } else {
                    let i: usize = match inner.parse() {
                        Ok(i) => i,
                        Err(_) => return self.err(format!("[{inner}] is not an index or key=value")),
                    };
                    match node.get(i) {
                        Some(n) => n,
                        None => return self.err(format!("{shown} is out of range")),
                    }
                };
            } else {
                break;
            }
        }
        Ok((node, shown))
    }
}

/// Evaluate `src` against `scope`.
pub fn eval(src: &str, scope: &Value) -> Result<f64, ExprError> {
    if src.len() > 4096 {
        return Err(ExprError { expr: src.chars().take(64).collect(), message: "longer than 4096 bytes".into() });
    }
    let mut p = Parser { src, pos: 0, scope, depth: 0 };
    let v = p.expr()?;
    p.skip_ws();
    if p.pos != src.len() {
        return p.err(format!("unexpected {:?}", p.rest()));
    }
    if !v.is_finite() {
        return p.err("the result is not a finite number");
    }
    Ok(v)
}

/// The text at the path `src` in `scope` (for image parameters): the whole expression must
/// be one path, and what it names a string.
pub fn text(src: &str, scope: &Value) -> Result<String, ExprError> {
    if src.len() > 4096 {
        return Err(ExprError { expr: src.chars().take(64).collect(), message: "longer than 4096 bytes".into() });
    }
    let mut p = Parser { src, pos: 0, scope, depth: 0 };
    p.skip_ws();
    let first = p.ident();
    if first.is_empty() {
        return p.err("expected a path such as reads.history.revisions[current=false].images[0]");
    }
    let (node, shown) = p.resolve(first)?;
    p.skip_ws();
    if p.pos != src.len() {
        return p.err(format!("unexpected {:?}: an image parameter's value is a single path", p.rest()));
    }
    match node {
        Value::String(s) => Ok(s.clone()),
        other => p.err(format!("{shown} is {other}, not text")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn scope() -> Value {
        json!({
            "reads": {"usage": {"value": 209715200.0}, "target": {"spec": {"template": {"spec": {"containers": [
                {"name": "sidecar", "resources": {"limits": {"memory": "32Mi"}}},
                {"name": "app", "resources": {"limits": {"memory": "128Mi", "cpu": "500m"}}}
            ]}}}}},
            "labels": {"container": "app"}
        })
    }

    #[test]
    fn arithmetic_paths_and_quantities() {
        let s = scope();
        let mi = 1024.0 * 1024.0;
        assert_eq!(
            eval("reads.target.spec.template.spec.containers[name=app].resources.limits.memory * 1.5", &s).unwrap(),
            192.0 * mi
        );
        assert_eq!(
            eval("reads.target.spec.template.spec.containers[0].resources.limits.memory", &s).unwrap(),
            32.0 * mi
        );
        assert_eq!(eval("max(reads.usage.value * 1.25, '64Mi')", &s).unwrap(), 250.0 * mi);
        assert_eq!(eval("min(1, 2, 3) + (2 - 1) * 4 / 2", &s).unwrap(), 3.0);
        assert_eq!(eval("reads.target.spec.template.spec.containers[name=app].resources.limits.cpu", &s).unwrap(), 0.5);
    }

    #[test]
    fn text_paths_select_by_flag_and_name() {
        let s = json!({"reads": {"history": {"revisions": [
            {"revision": 3, "current": true, "images": ["r/app:1.5.0"]},
            {"revision": 2, "current": false, "images": ["r/app:1.4.2"]},
            {"revision": 1, "current": false, "images": ["r/app:1.4.1"]}]}}, "labels": {"fixed": "1.4.3"}});
        assert_eq!(text("reads.history.revisions[current=false].images[0]", &s).unwrap(), "r/app:1.4.2");
        assert_eq!(text("reads.history.revisions[revision=1].images[0]", &s).unwrap(), "r/app:1.4.1");
        assert_eq!(text(" labels.fixed ", &s).unwrap(), "1.4.3");
        assert!(text("reads.history.revisions[0].revision", &s).unwrap_err().message.contains("not text"));
        assert!(text("labels.fixed + 1", &s).unwrap_err().message.contains("single path"));
        assert!(text("'1.2'", &s).is_err());
    }

    #[test]
    fn errors_name_the_problem() {
        let s = scope();
        let e = |x: &str| eval(x, &s).unwrap_err().message;
        assert_eq!(e("reads.nope.value"), "reads.nope is not set");
        assert_eq!(
            e("reads.target.spec.template.spec.containers[name=web].x"),
            "reads.target.spec.template.spec.containers[name=web] matches nothing"
        );
        assert!(e("1 +").starts_with("unexpected"));
        assert_eq!(e("1 / 0"), "division by zero");
        assert_eq!(e("secrets.x"), "unknown name \"secrets\"");
        assert!(e("labels.container").contains("not a number"));
        assert!(e("2 2").starts_with("unexpected"));
        assert!(e(&format!("{}1{}", "(".repeat(100), ")".repeat(100))).contains("nested"));
        let big = format!("1{}", "0".repeat(300));
        assert!(e(&format!("max({big} * {big} - {big} * {big}, 1)")).contains("not a finite number"));
    }
}
