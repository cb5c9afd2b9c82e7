//! Alertmanager label matchers: `name="value"`, `name!="value"`, `name=~"regex"`,
//! `name!~"regex"`, with Alertmanager's semantics (regexes are fully anchored; a missing
//! label reads as the empty string).
//!
//! Contract: pure. [`Matcher::parse`] validates once; [`Matcher::matches`] never fails.

use std::{collections::BTreeMap, fmt};

use regex::Regex;

/// Matcher operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatchOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~`
    Regex,
    /// `!~`
    NotRegex,
}

/// A parsed, compiled label matcher.
#[derive(Clone, Debug)]
pub struct Matcher {
    /// Label name.
    pub name: String,
    /// Operator.
    pub op: MatchOp,
    /// Value or regex source as written.
    pub value: String,
    regex: Option<Regex>,
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

/// Why a matcher could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatcherError {
    /// No operator found.
    #[error("expected name, operator (=, !=, =~, !~) and value, e.g. severity=~\"critical|page\"")]
    MissingOperator,
    /// Label name is not `[a-zA-Z_][a-zA-Z0-9_]*`.
    #[error("{0:?} is not a valid label name")]
    BadName(String),
    /// A quoted value is not closed or has a bad escape.
    #[error("the quoted value is not closed or has an invalid escape")]
    BadQuote,
    /// The regex does not compile.
    #[error("invalid regex {value:?}: {reason}")]
    BadRegex {
        /// The regex as written.
        value: String,
        /// The compiler's message.
        reason: String,
    },
}

/// Longest regex source accepted, to bound compile cost.
const MAX_REGEX_LEN: usize = 1024;

impl Matcher {
    /// Parses one matcher in Alertmanager syntax.
    ///
    /// # Errors
    /// [`MatcherError`] naming what is wrong.
    pub fn parse(text: &str) -> Result<Self, MatcherError> {
        let text = text.trim();
        let op_at = text.find(['=', '!']).ok_or(MatcherError::MissingOperator)?;
        let name = text[..op_at].trim();
        let rest = &text[op_at..];
        let (op, rest) = if let Some(r) = rest.strip_prefix("=~") {
            (MatchOp::Regex, r)
        } else if let Some(r) = rest.strip_prefix("!~") {
            (MatchOp::NotRegex, r)
        } else if let Some(r) = rest.strip_prefix("!=") {
            (MatchOp::NotEqual, r)
        } else if let Some(r) = rest.strip_prefix('=') {
            (MatchOp::Equal, r)
        } else {
            return Err(MatcherError::MissingOperator);
        };
        if !is_label_name(name) {
            return Err(MatcherError::BadName(name.to_owned()));
        }
        let value = unquote(rest.trim())?;
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => {
                if value.len() > MAX_REGEX_LEN {
                    return Err(MatcherError::BadRegex {
                        value,
                        reason: format!("longer than {MAX_REGEX_LEN} characters"),
                    });
                }
                let anchored = format!("^(?:{value})$");
                Some(
                    Regex::new(&anchored)
                        .map_err(|e| MatcherError::BadRegex { value: value.clone(), reason: e.to_string() })?,
                )
            }
            MatchOp::Equal | MatchOp::NotEqual => None,
        };
        Ok(Self { name: name.to_owned(), op, value, regex })
    }

    /// Whether a label set satisfies this matcher (a missing label is the empty string).
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let actual = labels.get(&self.name).map_or("", String::as_str);
        match (self.op, &self.regex) {
            (MatchOp::Equal, _) => actual == self.value,
            (MatchOp::NotEqual, _) => actual != self.value,
            (MatchOp::Regex, Some(re)) => re.is_match(actual),
            (MatchOp::NotRegex, Some(re)) => !re.is_match(actual),
            // parse() always compiles a regex for regex operators.
            (MatchOp::Regex | MatchOp::NotRegex, None) => false,
        }
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = match self.op {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        };
        write!(f, "{}{}{:?}", self.name, op, self.value)
    }
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn unquote(raw: &str) -> Result<String, MatcherError> {
    let Some(inner) = raw.strip_prefix('"') else {
        return Ok(raw.to_owned());
    };
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                return if chars.as_str().trim().is_empty() { Ok(out) } else { Err(MatcherError::BadQuote) };
            }
            '\\' => match chars.next() {
                Some('"') => out.push('"'),
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                _ => return Err(MatcherError::BadQuote),
            },
            c => out.push(c),
        }
    }
    Err(MatcherError::BadQuote)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn parses_every_operator() {
        let cases = [
            (r#"severity="critical""#, MatchOp::Equal, "critical"),
            (r#"team!="infra""#, MatchOp::NotEqual, "infra"),
            (r#"severity=~"critical|page""#, MatchOp::Regex, "critical|page"),
            (r#"env!~"dev.*""#, MatchOp::NotRegex, "dev.*"),
            ("namespace=shop", MatchOp::Equal, "shop"),
            (r#" name = "a \"b\" \\ c" "#, MatchOp::Equal, r#"a "b" \ c"#),
        ];
        for (text, op, value) in cases {
            let m = Matcher::parse(text).unwrap();
            assert_eq!((m.op, m.value.as_str()), (op, value), "{text}");
        }
    }

    #[test]
    fn regexes_are_anchored_like_alertmanager() {
        let m = Matcher::parse(r#"severity=~"crit""#).unwrap();
        assert!(m.matches(&labels(&[("severity", "crit")])));
        assert!(!m.matches(&labels(&[("severity", "critical")])), "must not match a prefix");
        assert!(!m.matches(&labels(&[("severity", "supercrit")])), "must not match a suffix");
    }

    #[test]
    fn missing_label_reads_as_empty() {
        assert!(Matcher::parse(r#"team!="infra""#).unwrap().matches(&labels(&[])));
        assert!(!Matcher::parse(r#"team="infra""#).unwrap().matches(&labels(&[])));
        assert!(Matcher::parse(r#"team=~"infra|""#).unwrap().matches(&labels(&[])));
        assert!(Matcher::parse(r#"team!~".+""#).unwrap().matches(&labels(&[])));
    }

    #[test]
    fn rejects_malformed_matchers_with_a_reason() {
        assert_eq!(Matcher::parse("severity"), Err(MatcherError::MissingOperator));
        assert_eq!(Matcher::parse(r#"1abc="x""#), Err(MatcherError::BadName("1abc".into())));
        assert_eq!(Matcher::parse(r#"a="unterminated"#), Err(MatcherError::BadQuote));
        assert_eq!(Matcher::parse(r#"a="x" trailing"#), Err(MatcherError::BadQuote));
        assert!(matches!(Matcher::parse(r#"a=~"(unclosed""#), Err(MatcherError::BadRegex { .. })));
    }
}
