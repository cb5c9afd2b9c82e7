//! Kubernetes quantities (`512Mi`, `250m`, `1.5G`, `2`) as numbers, for bounds checks.
//!
//! Contract: pure; only the canonical suffixes and decimal exponents the API server accepts.

/// Why a quantity could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a Kubernetes quantity (e.g. 512Mi, 1Gi, 250m, 2)")]
pub struct QuantityError(pub String);

/// Parses a quantity into its value in base units (bytes, cores, …).
///
/// # Errors
/// [`QuantityError`] for anything that is not `<number><suffix>`.
pub fn parse_quantity(text: &str) -> Result<f64, QuantityError> {
    let err = || QuantityError(text.to_owned());
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    // Decimal exponents (`1e3`, `5E-2`) are quantities too.
    if let Some(exp) = suffix.strip_prefix(['e', 'E']).filter(|e| {
        let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
        !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
    }) {
        let base: f64 = number.parse().map_err(|_| err())?;
        let exp: i32 = exp.parse().map_err(|_| err())?;
        let out = base * 10f64.powi(exp);
        return if out.is_finite() { Ok(out) } else { Err(err()) };
    }
    if number.is_empty() || number.chars().filter(|c| *c == '.').count() > 1 {
        return Err(err());
    }
    let value: f64 = number.parse().map_err(|_| err())?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "Pi" => 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "Ei" => 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return Err(err()),
    };
    let out = value * factor;
    if out.is_finite() { Ok(out) } else { Err(err()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_binary_decimal_and_milli_suffixes() {
        assert_eq!(parse_quantity("512Mi"), Ok(512.0 * 1024.0 * 1024.0));
        assert_eq!(parse_quantity("1Gi"), Ok(1024.0 * 1024.0 * 1024.0));
        assert_eq!(parse_quantity("250m"), Ok(0.25));
        assert_eq!(parse_quantity("1.5G"), Ok(1.5e9));
        assert_eq!(parse_quantity("3"), Ok(3.0));
        assert_eq!(parse_quantity("1e3"), Ok(1000.0));
        assert_eq!(parse_quantity("5E-1"), Ok(0.5));
    }

    #[test]
    fn rejects_unknown_suffixes_and_junk() {
        for bad in ["", "Mi", "12MB", "1.2.3", "ten", "5 Mi", "1e400"] {
            assert!(parse_quantity(bad).is_err(), "{bad:?}");
        }
    }
}
