//! "Longer by the margin" (METHOD.md, experiment step 1): a response is longer than the other when it has at least
//! (1 + margin) × its tokens and strictly more; pairs within the margin are neither. `label` records it per pair and
//! `train_rm` measures its reward models' length sensitivity with it (`subsample` applies the same rule, vectorised).

/// The margin of the summaries that report a length bias before any margin is chosen (`import`'s `length_bias`,
/// `sample_pairs`' `length_differing_share`): 10% more tokens, as in the paper. Stages that act on length take the
/// margin as a parameter instead.
pub const SUMMARY_MARGIN: f64 = 0.1;

/// Which response is longer by the margin: Some(0) a, Some(1) b, None within the margin.
pub fn longer(a: u32, b: u32, margin: f64) -> Option<i8> {
    if longer_than(a, b, margin) {
        Some(0)
    } else if longer_than(b, a, margin) {
        Some(1)
    } else {
        None
    }
}

/// Whether `x` tokens are longer than `y` by the margin: more, by at least `margin × y`. The extra tokens are counted
/// exactly, and `margin × y` is taken as the decimal it stands for: `1.1 × 50` is 55.000000000000007 in floating
/// point, which counted 55 against 50 (exactly 10% more) as within a margin of 0.1. A relative 1e-12 below it absorbs
/// that rounding; it could absorb a real difference only where `margin × y` exceeds 10^(12 − d) tokens for a margin
/// of d decimals (10^9 tokens at 3 decimals), far beyond any response.
pub fn longer_than(x: u32, y: u32, margin: f64) -> bool {
    let need = margin * y as f64;
    x > y && (x - y) as f64 >= need - need.abs() * 1e-12
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_the_margin_more_is_longer() {
        // a red-team finding: 55 vs 50, 99 vs 90, 110 vs 100 and 11 vs 10 (10% more each) were within a margin of 0.1
        for (x, y) in [(55, 50), (99, 90), (110, 100), (11, 10), (1_100_000, 1_000_000)] {
            assert_eq!(longer(x, y, 0.1), Some(0), "{x} vs {y}");
            assert_eq!(longer(y, x, 0.1), Some(1), "{y} vs {x}");
            assert_eq!(longer(x - 1, y, 0.1), None, "{} vs {y}", x - 1);
        }
        // every whole-percent margin against its definition in integers: 100·(x − y) ≥ p·y
        for p in 0..=100u32 {
            let m = p as f64 / 100.0;
            for y in 1..300u32 {
                for x in y..=y + y * p / 100 + 2 {
                    let want = x > y && 100 * (x - y) >= p * y;
                    assert_eq!(longer_than(x, y, m), want, "margin {m}: {x} vs {y}");
                }
            }
        }
        // equal lengths are never longer, whatever the margin
        assert_eq!(longer(7, 7, 0.0), None);
        assert_eq!(longer(8, 7, 0.0), Some(0));
    }
}
