//! The sampling settings every stage that samples from a model accepts (`sample_pairs`, `evaluate`, `precompute`),
//! checked one way.

use crate::port::{StageError, StageResult};

/// The lowest sampling temperature accepted. The worker divides fp32 logits by the temperature: near 1e-38 the
/// quotient overflows and the samples are garbage, and long before that the sampling is greedy in all but name.
pub const MIN_TEMPERATURE: f64 = 1e-3;

/// `temperature` must be a finite number ≥ [`MIN_TEMPERATURE`]; `why` says what a lower one would break, if more.
pub fn check_temperature(t: f64, why: &str) -> StageResult<()> {
    if t.is_finite() && t >= MIN_TEMPERATURE {
        return Ok(());
    }
    Err(StageError::invalid(
        "temperature",
        format!(
            "must be a finite number ≥ {MIN_TEMPERATURE} (below it fp32 logits / temperature overflow, and sampling \
             is greedy in all but name){why}, got {t:?}"
        ),
    ))
}

/// `top_p` (nucleus sampling) must lie in (0, 1].
pub fn check_top_p(p: f64) -> StageResult<()> {
    if p > 0.0 && p <= 1.0 {
        return Ok(());
    }
    Err(StageError::invalid("top_p", format!("must be in (0, 1], got {p}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperatures_that_overflow_fp32_logits_are_refused() {
        for bad in [0.0, -1.0, 1e-40, 1e-4, f64::NAN, f64::INFINITY] {
            let e = check_temperature(bad, "").unwrap_err().to_string();
            assert!(e.starts_with("temperature: must be a finite number ≥ 0.001"), "{bad}: {e}");
        }
        for ok in [1e-3, 0.7, 1.0, 50.0] {
            check_temperature(ok, "").unwrap();
        }
        for bad in [0.0, -0.1, 1.5, f64::NAN] {
            assert!(check_top_p(bad).is_err(), "{bad}");
        }
        check_top_p(1.0).unwrap();
    }
}
