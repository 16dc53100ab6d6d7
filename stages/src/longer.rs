//! "Longer by the margin" (METHOD.md, experiment step 1): a response is longer than the other when it has at least
//! (1 + margin) × its tokens and strictly more; pairs within the margin are neither. `label` records it per pair and
//! `train_rm` measures its reward models' length sensitivity with it (`subsample` applies the same rule, vectorised).

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
