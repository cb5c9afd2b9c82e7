//! Target name templates: literal text with `{{ labels.NAME }}` placeholders, nothing else.
//! No logic runs in a template, so alert labels cannot do more than fill in a name.
//!
//! Contract: pure. [`NameTemplate::parse`] validates once; [`NameTemplate::render`] checks
//! the result is a valid object name.

use std::collections::BTreeMap;

/// A parsed name template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameTemplate {
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Label(String),
}

/// Why a template could not be parsed or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{{` without `}}`.
    #[error("unclosed placeholder: every {{{{ needs a matching }}}}")]
    Unclosed,
    /// A placeholder other than `labels.NAME`.
    #[error("unsupported placeholder {0:?}: only {{{{ labels.NAME }}}} is allowed")]
    Unsupported(String),
    /// The alert lacks a label the template needs.
    #[error("the alert has no label {0:?}")]
    MissingLabel(String),
    /// The rendered name is not a valid Kubernetes object name.
    #[error("{0:?} is not a valid object name (lowercase letters, digits, '-' and '.', at most 253 characters)")]
    InvalidName(String),
}

impl NameTemplate {
    /// Parses a template.
    ///
    /// # Errors
    /// [`TemplateError`] for unclosed or unsupported placeholders.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut segments = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find("{{") {
            if open > 0 {
                segments.push(Segment::Literal(rest[..open].to_owned()));
            }
            let after = &rest[open + 2..];
            let close = after.find("}}").ok_or(TemplateError::Unclosed)?;
            let expr = after[..close].trim();
            let label = expr
                .strip_prefix("labels.")
                .filter(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
                .ok_or_else(|| TemplateError::Unsupported(expr.to_owned()))?;
            segments.push(Segment::Label(label.to_owned()));
            rest = &after[close + 2..];
        }
        if rest.contains("}}") {
            return Err(TemplateError::Unsupported("}}".to_owned()));
        }
        if !rest.is_empty() {
            segments.push(Segment::Literal(rest.to_owned()));
        }
        Ok(Self { segments })
    }

    /// Label names the template reads.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Label(l) => Some(l.as_str()),
            Segment::Literal(_) => None,
        })
    }

    /// Renders the template from alert labels.
    ///
    /// # Errors
    /// A missing label, or a result that is not a valid object name.
    pub fn render(&self, labels: &BTreeMap<String, String>) -> Result<String, TemplateError> {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Label(name) => {
                    out.push_str(labels.get(name).ok_or_else(|| TemplateError::MissingLabel(name.clone()))?);
                }
            }
        }
        if is_dns_subdomain(&out) { Ok(out) } else { Err(TemplateError::InvalidName(out)) }
    }
}

/// RFC 1123 subdomain, the rule for most object names.
pub fn is_dns_subdomain(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn renders_labels_and_literals() {
        let t = NameTemplate::parse("{{ labels.deployment }}-canary").unwrap();
        assert_eq!(t.render(&labels(&[("deployment", "checkout")])).unwrap(), "checkout-canary");
        assert_eq!(t.labels().collect::<Vec<_>>(), ["deployment"]);
        assert_eq!(NameTemplate::parse("fixed").unwrap().render(&labels(&[])).unwrap(), "fixed");
    }

    #[test]
    fn refuses_logic_and_unclosed_placeholders() {
        assert_eq!(NameTemplate::parse("{{ labels.x"), Err(TemplateError::Unclosed));
        assert!(matches!(NameTemplate::parse("{{ env.HOME }}"), Err(TemplateError::Unsupported(_))));
        assert!(matches!(NameTemplate::parse("{{ labels.a | upper }}"), Err(TemplateError::Unsupported(_))));
        assert!(matches!(NameTemplate::parse("a }} b"), Err(TemplateError::Unsupported(_))));
    }

    #[test]
    fn a_label_cannot_smuggle_an_invalid_name() {
        let t = NameTemplate::parse("{{ labels.deployment }}").unwrap();
        for bad in ["../etc", "Checkout", "a b", "", "x/y"] {
            assert!(matches!(t.render(&labels(&[("deployment", bad)])), Err(TemplateError::InvalidName(_))), "{bad:?}");
        }
        assert_eq!(t.render(&labels(&[])), Err(TemplateError::MissingLabel("deployment".into())));
    }
}
