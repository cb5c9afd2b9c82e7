//! Go-style duration strings (`"30s"`, `"5m"`, `"1h30m"`), the form Kubernetes CEL's
//! `duration()` reads, so the API server can compare them in validation rules.
//!
//! The CRD schema restricts the syntax with a pattern; [`DurationString::parse`] turns a
//! value into a [`std::time::Duration`] at the validation edge.

use std::{borrow::Cow, fmt, time::Duration};

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

/// The syntax accepted for durations: one or more `<integer><unit>` groups.
pub const DURATION_PATTERN: &str = r"^([0-9]+(ms|s|m|h))+$";

/// Longest duration any Reflex field accepts (one year), so arithmetic never overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);

/// A duration as written in a manifest, e.g. `"90s"` or `"1h30m"`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DurationString(String);

/// Why a duration string could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text is not `<integer><unit>` groups.
    #[error("{0:?} is not a duration: write it like 30s, 5m, 1h30m or 500ms")]
    Syntax(String),
    /// The value is larger than [`MAX_DURATION`].
    #[error("{0:?} is longer than the maximum of 8784h (one year)")]
    TooLong(String),
}

impl DurationString {
    /// Wraps text without checking it; [`DurationString::parse`] checks.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// Builds the canonical string for a whole number of seconds.
    pub fn from_secs(secs: u64) -> Self {
        Self(format!("{secs}s"))
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses the text into a [`Duration`].
    ///
    /// # Errors
    /// [`DurationError`] when the text does not follow [`DURATION_PATTERN`] or is too long.
    pub fn parse(&self) -> Result<Duration, DurationError> {
        parse_duration(&self.0)
    }
}

impl fmt::Display for DurationString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for DurationString {
    fn schema_name() -> Cow<'static, str> {
        "DurationString".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "pattern": DURATION_PATTERN,
            "maxLength": 32,
        })
    }
}

/// Parses `<integer><unit>` groups (units `ms`, `s`, `m`, `h`).
///
/// # Errors
/// [`DurationError`] on any other text, an empty string, or a value over [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let syntax = || DurationError::Syntax(text.to_owned());
    let mut rest = text;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return Err(syntax());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(syntax)?;
        if digits == 0 {
            return Err(syntax());
        }
        let number: u64 = rest[..digits].parse().map_err(|_| DurationError::TooLong(text.to_owned()))?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('s') {
            (1_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else {
            return Err(syntax());
        };
        rest = &rest[len..];
        let millis = number.checked_mul(unit_ms).ok_or_else(|| DurationError::TooLong(text.to_owned()))?;
        total =
            total.checked_add(Duration::from_millis(millis)).ok_or_else(|| DurationError::TooLong(text.to_owned()))?;
    }
    if total > MAX_DURATION {
        return Err(DurationError::TooLong(text.to_owned()));
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_groups() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m5s"), Ok(Duration::from_secs(125)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_what_the_schema_pattern_rejects() {
        let pattern = regex::Regex::new(DURATION_PATTERN).unwrap();
        for bad in ["", "5", "m", "1.5h", "-1s", "1d", "1h 30m", "s30", "1hh"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
            assert!(!pattern.is_match(bad), "{bad:?} should not match the schema pattern");
        }
        for good in ["30s", "1h30m", "500ms", "0s"] {
            assert!(pattern.is_match(good));
        }
    }

    #[test]
    fn refuses_values_that_would_overflow() {
        assert_eq!(
            parse_duration("99999999999999999999h"),
            Err(DurationError::TooLong("99999999999999999999h".into()))
        );
        assert!(matches!(parse_duration("9000h"), Err(DurationError::TooLong(_))));
        assert!(parse_duration("8784h").is_ok());
    }
}
