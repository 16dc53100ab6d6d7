//! "Longer by the margin" (METHOD.md, experiment step 1): a response is longer than the other when it has at least
//! (1 + margin) × its tokens and strictly more; pairs within the margin are neither. `label` records it per pair and
//! `train_rm` measures its reward models' length sensitivity with it (`subsample` applies the same rule, vectorised).

/// The margin of the summaries that report a length bias before any margin is chosen (`import`'s `length_bias`,
/// `sample_pairs`' `length_differing_share`): 10% more tokens, as in the paper. Stages that act on length take the
/// margin as a parameter instead.
pub const SUMMARY_MARGIN: f64 = 0.1;

/// Which response is longer by the margin: Some(0) a, Some(1) b, None within the margin.
pub fn longer(a: u32, b: u32, margin: f64) -> Option<i8> {
    let (a, b) = (a as f64, b as f64);
    if a > b && a >= (1.0 + margin) * b {
        Some(0)
    } else if b > a && b >= (1.0 + margin) * a {
        Some(1)
    } else {
        None
    }
}
