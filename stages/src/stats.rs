//! The statistics of the evaluation and the report (METHOD.md, "Evaluation statistics"): means with Student-t
//! intervals over seeds, one-sample and paired t-tests, Holm's step-down correction, least squares for the
//! length-controlled advantage, the Wilson interval of an agreement rate, and the power of the paired design over
//! seeds with the variance components it depends on. Pure Rust, no tensors.
//!
//! The t and normal distributions come from `statrs` (its Student-t quantile is ~30× faster than the bisection this
//! module used before; its CDF is as fast). Everything else here is a few lines of arithmetic, unit-tested against
//! examples worked by hand in the tests' comments.

use statrs::distribution::{ChiSquared, ContinuousCDF, Normal, StudentsT};

/// A mean with its standard error and a 95% confidence interval.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Estimate {
    pub mean: f64,
    /// Standard error of the mean (0 with fewer than two values).
    pub se: f64,
    pub n: usize,
    pub ci_low: f64,
    pub ci_high: f64,
}

pub fn mean(v: &[f64]) -> f64 {
    if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 }
}

/// Sample variance (n − 1); NaN with fewer than two values.
pub fn var(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return f64::NAN;
    }
    let m = mean(v);
    v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64
}

/// Sample standard deviation (n − 1); 0 with fewer than two values.
pub fn sd(v: &[f64]) -> f64 {
    if v.len() < 2 { 0.0 } else { var(v).sqrt() }
}

/// Student-t CDF with `df` degrees of freedom (df > 0).
pub fn t_cdf(t: f64, df: f64) -> f64 {
    if t.is_nan() || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    if t.is_infinite() {
        return if t > 0.0 { 1.0 } else { 0.0 };
    }
    StudentsT::new(0.0, 1.0, df).map_or(f64::NAN, |d| d.cdf(t))
}

/// Student-t quantile (df > 0, 0 < p < 1).
pub fn t_quantile(p: f64, df: f64) -> f64 {
    if !(p > 0.0 && p < 1.0) || df.is_nan() || df <= 0.0 {
        return f64::NAN;
    }
    StudentsT::new(0.0, 1.0, df).map_or(f64::NAN, |d| d.inverse_cdf(p))
}

fn std_normal() -> Normal {
    Normal::standard()
}

/// Standard normal CDF.
pub fn normal_cdf(x: f64) -> f64 {
    std_normal().cdf(x)
}

/// Standard normal quantile.
pub fn normal_quantile(p: f64) -> f64 {
    std_normal().inverse_cdf(p)
}

/// Mean ± t_{0.975, n−1}·sd/√n. With fewer than two values the spread is unknown: se and the interval are NaN (not
/// 0, which would read as certainty).
pub fn estimate(v: &[f64]) -> Estimate {
    let n = v.len();
    let m = mean(v);
    if n < 2 {
        return Estimate { mean: m, se: f64::NAN, n, ci_low: f64::NAN, ci_high: f64::NAN };
    }
    let se = sd(v) / (n as f64).sqrt();
    let h = t_quantile(0.975, (n - 1) as f64) * se;
    Estimate { mean: m, se, n, ci_low: m - h, ci_high: m + h }
}

/// A two-sided one-sample t-test of `mean = 0` with its 95% interval.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Test {
    /// The estimated mean (of paired differences: first − second).
    pub diff: f64,
    pub se: f64,
    /// Degrees of freedom (n − 1).
    pub df: f64,
    /// t statistic (NaN when nothing can be tested: fewer than two values, or no spread between them).
    pub stat: f64,
    /// Two-sided p-value (NaN when nothing can be tested, as for `stat`).
    pub p_value: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// Why nothing was tested, if it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub untestable: Option<Untestable>,
}

/// Why a [`t_test`] tested nothing, if it did not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")] // results.json's spelling: "too_few", not Rust's "TooFew"
pub enum Untestable {
    /// Fewer than two values.
    TooFew,
    /// A value that is NaN or infinite (a diverged run).
    NotFinite,
    /// Every value the same (to float rounding): the t-test's variance estimate is 0, and t = ±∞ with p = 0
    /// would claim certainty from what is more likely a coarse measurement (an oracle whose rewards come in steps,
    /// one prompt per evaluation) than a difference known exactly.
    NoSpread,
}

/// Relative spread below which values count as all the same: float rounding of a difference of sums leaves ~1e-16.
const NO_SPREAD: f64 = 1e-12;

/// One-sample t-test of `mean(v) = 0` on n − 1 degrees of freedom (e.g. the per-seed paired differences of two
/// methods). Nothing is tested ([`untestable`]) with fewer than two values or when they do not vary: then stat, p
/// and the interval are NaN, and `diff` is their mean.
pub fn t_test(v: &[f64]) -> Test {
    t_test_at(v, max_abs(v))
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0f64, |a, x| a.max(x.abs()))
}

/// [`t_test`] with the magnitude that float rounding is relative to (that of the values the differences came from).
fn t_test_at(v: &[f64], scale: f64) -> Test {
    let e = estimate(v);
    let df = v.len().saturating_sub(1) as f64;
    if let Some(why) = untestable_at(v, scale) {
        return Test {
            diff: e.mean,
            se: f64::NAN,
            df,
            stat: f64::NAN,
            p_value: f64::NAN,
            ci_low: f64::NAN,
            ci_high: f64::NAN,
            untestable: Some(why),
        };
    }
    let stat = e.mean / e.se;
    let p_value = 2.0 * t_cdf(-stat.abs(), df);
    Test { diff: e.mean, se: e.se, df, stat, p_value, ci_low: e.ci_low, ci_high: e.ci_high, untestable: None }
}

/// Why [`t_test`] of `v` tests nothing: fewer than two values, a value that is not finite, or a standard error that
/// is zero or float rounding (at most 1e-12 of the largest |value|).
pub fn untestable(v: &[f64]) -> Option<Untestable> {
    untestable_at(v, max_abs(v))
}

fn untestable_at(v: &[f64], scale: f64) -> Option<Untestable> {
    if v.len() < 2 {
        return Some(Untestable::TooFew);
    }
    if v.iter().any(|x| !x.is_finite()) {
        return Some(Untestable::NotFinite);
    }
    let se = sd(v) / (v.len() as f64).sqrt();
    (se <= NO_SPREAD * scale).then_some(Untestable::NoSpread)
}

impl Untestable {
    /// Why, in a report's words.
    pub fn reason(self) -> &'static str {
        match self {
            Untestable::TooFew => "fewer than two seeds",
            Untestable::NotFinite => "a value that is not finite (a diverged run)",
            Untestable::NoSpread => "the same difference on every seed",
        }
    }
}

/// Paired t-test of `mean(a − b) = 0` over matched values (same seed, same prompts, same π_ref samples).
/// Differences that vary only by float rounding of the values themselves (0.1 + 0.2 against 0.3) are no spread.
pub fn paired(a: &[f64], b: &[f64]) -> Test {
    assert_eq!(a.len(), b.len(), "paired test needs matched values");
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    t_test_at(&d, max_abs(a).max(max_abs(b)).max(max_abs(&d)))
}

/// Holm's step-down adjusted p-values, in the input order: sort ascending, p̃_(i) = max_{j ≤ i} min(1, (m − j + 1)·p_(j)).
/// Rejecting where p̃ < α controls the family-wise error rate at α. NaN p-values (untestable contrasts) stay NaN and
/// do not count in m.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..p.len()).filter(|&i| !p[i].is_nan()).collect();
    idx.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let m = idx.len();
    let mut out = vec![f64::NAN; p.len()];
    let mut running: f64 = 0.0;
    for (j, &i) in idx.iter().enumerate() {
        running = running.max(((m - j) as f64 * p[i]).min(1.0));
        out[i] = running;
    }
    out
}

/// A least-squares line `y = intercept + slope·x` with its standard errors (n − 2 degrees of freedom).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Line {
    pub intercept: f64,
    pub slope: f64,
    pub se_intercept: f64,
    pub se_slope: f64,
    pub n: usize,
}

/// Ordinary least squares of `y` on `x`. None when the slope is not identified (fewer than two points or every x
/// equal); the standard errors are NaN with only two points.
pub fn ols(x: &[f64], y: &[f64]) -> Option<Line> {
    let n = x.len();
    if n != y.len() || n < 2 {
        return None;
    }
    let (mx, my) = (mean(x), mean(y));
    let sxx: f64 = x.iter().map(|v| (v - mx).powi(2)).sum();
    if sxx <= 1e-12 * (1.0 + mx * mx) * n as f64 {
        return None;
    }
    let sxy: f64 = x.iter().zip(y).map(|(a, b)| (a - mx) * (b - my)).sum();
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let (se_intercept, se_slope) = if n > 2 {
        let rss: f64 = x.iter().zip(y).map(|(a, b)| (b - intercept - slope * a).powi(2)).sum();
        let s2 = rss / (n - 2) as f64;
        ((s2 * (1.0 / n as f64 + mx * mx / sxx)).sqrt(), (s2 / sxx).sqrt())
    } else {
        (f64::NAN, f64::NAN)
    };
    Some(Line { intercept, slope, se_intercept, se_slope, n })
}

/// An agreement rate `k / n` with its Wilson score interval.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Proportion {
    pub k: u64,
    pub n: u64,
    pub rate: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    /// The confidence level of the interval (e.g. 0.95).
    pub level: f64,
}

/// Wilson score interval of `k` successes in `n` trials at `level` (e.g. 0.95): centre (p̂ + z²/2n)/(1 + z²/n),
/// half-width z/(1 + z²/n)·√(p̂(1 − p̂)/n + z²/4n²). Better than the Wald interval near 0 or 1 and at small n.
pub fn wilson(k: u64, n: u64, level: f64) -> Proportion {
    if n == 0 {
        return Proportion { k, n, rate: f64::NAN, ci_low: 0.0, ci_high: 1.0, level };
    }
    let z = normal_quantile(1.0 - (1.0 - level) / 2.0);
    let (nf, p) = (n as f64, k as f64 / n as f64);
    let d = 1.0 + z * z / nf;
    let c = (p + z * z / (2.0 * nf)) / d;
    let h = z / d * (p * (1.0 - p) / nf + z * z / (4.0 * nf * nf)).sqrt();
    Proportion { k, n, rate: p, ci_low: (c - h).max(0.0), ci_high: (c + h).min(1.0), level }
}

impl Proportion {
    /// Whether the interval includes chance (0.5): a ground truth no better than a coin at this sample size.
    pub fn includes_chance(&self) -> bool {
        self.ci_low <= 0.5 && 0.5 <= self.ci_high
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Power of the paired design

/// Quantiles of χ²_df at the midpoints of 2,000 equal-probability bins: the nodes of the power integral.
fn chi2_nodes(df: f64) -> Vec<f64> {
    const K: usize = 2000;
    let u = (0..K).map(|i| (i as f64 + 0.5) / K as f64);
    if df == 1.0 {
        // statrs' χ²₁ quantile is NaN near 0; χ²₁ = Z², so its u-quantile is Φ⁻¹((1 + u)/2)²
        return u.map(|u| normal_quantile((1.0 + u) / 2.0).powi(2)).collect();
    }
    let chi = ChiSquared::new(df).expect("df > 0");
    u.map(|u| chi.inverse_cdf(u)).collect()
}

/// Power on precomputed nodes (see [`t_power`]).
fn power_on(nodes: &[f64], delta: f64, sd: f64, seeds: usize, alpha: f64) -> f64 {
    let df = (seeds - 1) as f64;
    // the lower tail, negated: 1 − α/2 rounds to 1 for α below ~1e-16, the lower tail keeps every digit
    let c = -t_quantile(alpha / 2.0, df);
    let lam = delta.abs() * (seeds as f64).sqrt() / sd;
    let acc: f64 = nodes
        .iter()
        .map(|v| {
            let s = c * (v / df).sqrt();
            normal_cdf(lam - s) + normal_cdf(-s - lam)
        })
        .sum();
    acc / nodes.len() as f64
}

/// Power of the two-sided one-sample t-test on `seeds` values (df = seeds − 1) at level `alpha` when the true mean
/// is `delta` and the values' standard deviation is `sd`: P(|T| > t_{1−α/2}) with T noncentral t, ncp = δ√S/σ.
/// Computed as E_V[Φ(λ − c√(V/df)) + Φ(−c√(V/df) − λ)] over V ~ χ²_df (midpoint rule on 2,000 quantiles of V;
/// agrees with SciPy's numerical integration to 1e-4).
pub fn t_power(delta: f64, sd: f64, seeds: usize, alpha: f64) -> f64 {
    if seeds < 2 || sd.is_nan() || !(alpha > 0.0 && alpha < 1.0) {
        return f64::NAN;
    }
    if sd <= 0.0 {
        return if delta != 0.0 { 1.0 } else { alpha };
    }
    power_on(&chi2_nodes((seeds - 1) as f64), delta, sd, seeds, alpha)
}

/// The smallest true mean difference the two-sided t-test on `seeds` values detects with probability `power` at
/// level `alpha`, when the values' standard deviation is `sd` (bisection on [`t_power`] to 1e-6 relative). NaN
/// below two seeds.
pub fn minimum_detectable(sd: f64, seeds: usize, alpha: f64, power: f64) -> f64 {
    if seeds < 2 || sd.is_nan() || !(power > alpha && power < 1.0) || !(alpha > 0.0 && alpha < 1.0) {
        return f64::NAN;
    }
    // a critical value the quantile function cannot give would make every comparison below false and the
    // bisection end at 0: "detects any difference"
    if !t_quantile(alpha / 2.0, (seeds - 1) as f64).is_finite() {
        return f64::NAN;
    }
    if sd <= 0.0 {
        return 0.0;
    }
    // in units of sd, then scaled: one set of nodes per call
    let nodes = chi2_nodes((seeds - 1) as f64);
    let (mut lo, mut hi) = (0.0, 1.0);
    while power_on(&nodes, hi, 1.0, seeds, alpha) < power {
        hi *= 2.0;
        if hi > 1e9 {
            return f64::INFINITY;
        }
    }
    while hi - lo > 1e-6 * hi {
        let mid = 0.5 * (lo + hi);
        if power_on(&nodes, mid, 1.0, seeds, alpha) < power { lo = mid } else { hi = mid }
    }
    hi * sd
}

/// Variance components of a per-seed advantage difference between two methods (or of one method's advantage):
/// `D_s = μ + u_s + e_s`, where `u_s` varies with the seed (data, π_ref, training; variance `between_seed`) and `e_s`
/// is the evaluation's sampling error, `between_prompt / n + within_prompt / (n·m)` for `n` prompts × `m` samples per
/// prompt.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Components {
    pub between_seed: f64,
    pub between_prompt: f64,
    /// Between samples of one prompt; NaN when every prompt had one sample (then it cannot be told apart from
    /// `between_prompt`, which then holds both: more samples per prompt are assumed not to help).
    pub within_prompt: f64,
}

/// An evaluation design: seeds × test prompts × samples per prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Design {
    pub seeds: usize,
    pub prompts: usize,
    pub samples_per_prompt: usize,
}

impl Components {
    /// Variance of one seed's difference under a design.
    pub fn seed_variance(&self, prompts: usize, samples_per_prompt: usize) -> f64 {
        let n = prompts.max(1) as f64;
        let w = if self.within_prompt.is_nan() { 0.0 } else { self.within_prompt };
        self.between_seed + self.between_prompt / n + w / (n * samples_per_prompt.max(1) as f64)
    }
    /// The smallest difference the design detects at `power` (two-sided level `alpha`, t on seeds − 1 df).
    pub fn minimum_detectable(&self, d: Design, alpha: f64, power: f64) -> f64 {
        minimum_detectable(self.seed_variance(d.prompts, d.samples_per_prompt).sqrt(), d.seeds, alpha, power)
    }
}

/// The most seeds [`plan_design`] considers.
pub const MAX_SEEDS: usize = 100;

/// What it takes to detect a target difference (see [`plan_design`]).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Plan {
    /// The design to use: None when no number of prompts and samples reaches the target with these seeds (the
    /// between-seed variance alone is too large: more seeds are needed).
    pub design: Option<Design>,
    /// The smallest difference that design detects (≤ the target when `design` is Some).
    pub detectable: f64,
    /// The floor with infinitely many prompts and samples at this number of seeds.
    pub floor: f64,
    /// The fewest seeds (up to [`MAX_SEEDS`]) whose floor is below the target (the prompts/samples limits still
    /// apply to reach it).
    pub seeds_needed: Option<usize>,
}

/// The cheapest evaluation design that detects `target` at `power` (two-sided `alpha`) with `seeds` seeds: the fewest
/// prompts up to `max_prompts` (the test split's size), with one sample per prompt; past `max_prompts`, the fewest
/// samples per prompt up to `max_samples`. Prompts come first because, at equal generation cost, a new prompt
/// removes both the between-prompt and the within-prompt variance while a new sample removes only the latter.
/// This is the function to choose the pipeline's `eval_prompts` and `samples_per_prompt` from.
pub fn plan_design(
    c: &Components,
    target: f64,
    seeds: usize,
    max_prompts: usize,
    max_samples: usize,
    alpha: f64,
    power: f64,
) -> Plan {
    let mde =
        |n: usize, m: usize| c.minimum_detectable(Design { seeds, prompts: n, samples_per_prompt: m }, alpha, power);
    let floor = minimum_detectable(c.between_seed.max(0.0).sqrt(), seeds, alpha, power);
    // the floor decreases with the number of seeds: bisection
    let floor_at = |s: usize| minimum_detectable(c.between_seed.max(0.0).sqrt(), s, alpha, power);
    let seeds_needed = (floor_at(MAX_SEEDS) < target).then(|| {
        let (mut lo, mut hi) = (1usize, MAX_SEEDS);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if floor_at(mid) < target { hi = mid } else { lo = mid }
        }
        hi
    });
    let max_prompts = max_prompts.max(1);
    let found = if mde(max_prompts, 1) <= target {
        // bisection on the number of prompts: the detectable difference decreases with n
        let (mut lo, mut hi) = (0usize, max_prompts);
        while hi - lo > 1 {
            let mid = (lo + hi) / 2;
            if mde(mid, 1) <= target { hi = mid } else { lo = mid }
        }
        Some((hi, 1))
    } else if c.within_prompt.is_nan() || c.within_prompt <= 0.0 {
        None
    } else {
        (2..=max_samples.max(1)).find(|&m| mde(max_prompts, m) <= target).map(|m| (max_prompts, m))
    };
    match found {
        Some((n, m)) => Plan {
            design: Some(Design { seeds, prompts: n, samples_per_prompt: m }),
            detectable: mde(n, m),
            floor,
            seeds_needed,
        },
        None => Plan { design: None, detectable: mde(max_prompts, max_samples.max(1)), floor, seeds_needed },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn t_quantiles_match_the_printed_table() {
        // two-sided 95% critical values from a printed t table (e.g. Student's table in any statistics text)
        for (df, q) in [(1.0, 12.706), (2.0, 4.303), (3.0, 3.182), (5.0, 2.571), (10.0, 2.228), (30.0, 2.042)] {
            assert!(close(t_quantile(0.975, df), q, 5e-4), "df {df}: {}", t_quantile(0.975, df));
        }
        // df = 2 has a closed form: t_p = (2p − 1)/√(2p(1 − p)); p = 0.99 → 0.98/√0.0198 = 6.9646
        assert!(close(t_quantile(0.99, 2.0), 0.98 / 0.0198f64.sqrt(), 1e-9));
        // and so does its CDF: F(t) = ½ + t/(2√(2 + t²)); t = 2 → ½ + 2/(2√6) = 0.908248
        assert!(close(t_cdf(2.0, 2.0), 0.5 + 1.0 / 6.0f64.sqrt(), 1e-12));
        assert!(close(normal_cdf(1.959964), 0.975, 1e-6));
        assert!(close(t_cdf(0.0, 7.0), 0.5, 1e-12));
    }

    #[test]
    fn a_three_seed_paired_difference() {
        // Advantages of method A and B on seeds 0, 1, 2: A = (0.30, 0.25, 0.41), B = (0.20, 0.21, 0.27).
        // Differences d = (0.10, 0.04, 0.14): mean 0.28/3 = 0.093333; deviations (0.006667, −0.053333, 0.046667);
        // squares sum 0.0000444 + 0.0028444 + 0.0021778 = 0.0050667; var = 0.0050667/2 = 0.0025333, sd = 0.050332;
        // se = 0.050332/√3 = 0.029059; t = 0.093333/0.029059 = 3.2118 on 2 df.
        // p = 2·(1 − F(3.2118)) with F(t) = ½ + t/(2√(2 + t²)): √(2 + 10.3157) = 3.50938, F = 0.5 + 3.2118/7.01876
        // = 0.957604, p = 0.084791. 95% interval: 0.093333 ± 4.302653·0.029059 = [−0.031699, 0.218366].
        let t = paired(&[0.30, 0.25, 0.41], &[0.20, 0.21, 0.27]);
        assert!(close(t.diff, 0.093333, 1e-6), "{t:?}");
        assert!(close(t.se, 0.029059, 1e-6), "{t:?}");
        assert_eq!(t.df, 2.0);
        assert!(close(t.stat, 3.2118, 1e-4), "{t:?}");
        assert!(close(t.p_value, 0.084791, 2e-6), "{t:?}");
        assert!(close(t.ci_low, -0.031699, 2e-6) && close(t.ci_high, 0.218366, 2e-6), "{t:?}");
        // one seed: nothing to test
        let one = t_test(&[0.1]);
        assert!(one.p_value.is_nan() && one.stat.is_nan());
        assert_eq!(untestable(&[0.1]), Some(Untestable::TooFew));
        // values that do not vary, exactly or to float rounding (0.1 + 0.2 − 0.3 ≠ 0): nothing to test, not p = 0
        // (which made two seeds with the same coarse difference "contradict" a finding) nor p = 1
        for same in [vec![0.1, 0.1, 0.1], vec![0.5, 0.5], vec![0.0, 0.0], vec![-0.4333, -0.4333 + 1e-16]] {
            let t = t_test(&same);
            assert!(t.p_value.is_nan() && t.stat.is_nan() && t.ci_low.is_nan(), "{same:?}: {t:?}");
            assert_eq!(untestable(&same), Some(Untestable::NoSpread), "{same:?}");
        }
        assert!(t_test(&[0.1 + 0.2, 0.3]).p_value.is_nan());
        // rounding noise of the values compared, around a difference of 0: no spread either
        let a = [0.1 + 0.2, 0.1 + 0.2, 0.1 + 0.2, 0.1 + 0.2, 0.3];
        assert_eq!(paired(&a, &[0.3; 5]).untestable, Some(Untestable::NoSpread));
        // a diverged value is named as such, not as "no spread"
        assert_eq!(untestable(&[f64::NAN, 0.1]), Some(Untestable::NotFinite));
        assert_eq!(t_test(&[f64::INFINITY, 0.1]).untestable, Some(Untestable::NotFinite));
        // a real spread, however small the values, is tested
        let small = t_test(&[1e-9, 2e-9, 3e-9]);
        assert!(small.p_value > 0.0 && small.p_value < 1.0, "{small:?}");
    }

    #[test]
    fn estimates() {
        let e = estimate(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(e.mean, 2.5);
        let se = (5.0f64 / 3.0).sqrt() / 2.0;
        assert!(close(e.se, se, 1e-12));
        assert!(close(e.ci_high, 2.5 + 3.182446 * se, 1e-5));
        // one value: its spread is unknown, not zero
        let one = estimate(&[3.0]);
        assert!(one.mean == 3.0 && one.ci_low.is_nan() && one.ci_high.is_nan() && one.se.is_nan(), "{one:?}");
    }

    #[test]
    fn holm_step_down_on_five_p_values() {
        // p = (0.01, 0.04, 0.03, 0.005, 0.20), m = 5. Sorted: 0.005 (#4), 0.01 (#1), 0.03 (#3), 0.04 (#2), 0.20 (#5).
        // Multipliers m − j + 1 = 5, 4, 3, 2, 1: 0.025, 0.04, 0.09, 0.08, 0.20; running maximum: 0.025, 0.04, 0.09,
        // 0.09, 0.20. At α = 0.05 Holm rejects #4 and #1 and stops at #3 (0.09), so #2 (raw 0.04) is not rejected.
        let adj = holm(&[0.01, 0.04, 0.03, 0.005, 0.20]);
        let want = [0.04, 0.09, 0.09, 0.025, 0.20];
        for (a, w) in adj.iter().zip(want) {
            assert!(close(*a, w, 1e-12), "{adj:?}");
        }
        // capped at 1; NaN (untestable) stays NaN and is not counted: m = 2 here → 2·0.6 = 1.2 → 1
        let adj = holm(&[0.6, f64::NAN, 0.7]);
        assert_eq!(adj[0], 1.0);
        assert!(adj[1].is_nan());
        assert_eq!(adj[2], 1.0);
    }

    #[test]
    fn least_squares_on_six_points() {
        // x = length differences (−2, −1, 0, 1, 2, 3), y = advantage differences (0.1, 0.3, 0.2, 0.5, 0.4, 0.7).
        // mean x = 0.5, mean y = 2.2/6 = 0.366667; Sxx = 6.25 + 2.25 + 0.25 + 0.25 + 2.25 + 6.25 = 17.5;
        // Sxy = Σ(x − 0.5)·y = −2.5·0.1 − 1.5·0.3 − 0.5·0.2 + 0.5·0.5 + 1.5·0.4 + 2.5·0.7 = 1.8;
        // slope b = 1.8/17.5 = 0.102857; intercept a = 0.366667 − 0.102857·0.5 = 0.315238.
        // fitted: 0.109524, 0.212381, 0.315238, 0.418095, 0.520952, 0.623810; residuals: −0.009524, 0.087619,
        // −0.115238, 0.081905, −0.120952, 0.076190; RSS = 0.0000907 + 0.0076771 + 0.0132798 + 0.0067084 + 0.0146295
        // + 0.0058050 = 0.0481905; s² = RSS/4 = 0.0120476; se(b) = √(s²/Sxx) = 0.026238;
        // se(a) = √(s²·(1/6 + 0.25/17.5)) = √(0.0120476·0.180952) = 0.046691.
        let l = ols(&[-2.0, -1.0, 0.0, 1.0, 2.0, 3.0], &[0.1, 0.3, 0.2, 0.5, 0.4, 0.7]).unwrap();
        assert!(close(l.slope, 0.102857, 1e-6), "{l:?}");
        assert!(close(l.intercept, 0.315238, 1e-6), "{l:?}");
        assert!(close(l.se_slope, 0.026238, 1e-6), "{l:?}");
        assert!(close(l.se_intercept, 0.046691, 1e-6), "{l:?}");
        assert_eq!(l.n, 6);
        // not identified: all x equal, or one point
        assert!(ols(&[1.0, 1.0, 1.0], &[0.0, 1.0, 2.0]).is_none());
        assert!(ols(&[1.0], &[0.0]).is_none());
    }

    #[test]
    fn wilson_intervals_by_hand() {
        // 52 of 100, z = 1.959964: z² = 3.841459; d = 1 + 0.038415 = 1.038415; centre = (0.52 + 0.019207)/d
        // = 0.519260; half = 1.959964/1.038415·√(0.2496/100 + 3.841459/40000) = 1.887456·√0.00259204 = 0.096094
        // → [0.423166, 0.615354]: includes 0.5.
        let p = wilson(52, 100, 0.95);
        assert!(close(p.ci_low, 0.423166, 2e-6) && close(p.ci_high, 0.615354, 2e-6), "{p:?}");
        assert!(p.includes_chance());
        // 320 of 400: d = 1.009604; centre = (0.8 + 0.004802)/d = 0.797146; half = 1.941320·√(0.0004 + 0.0000060)
        // = 0.039116 → [0.758030, 0.836263]: excludes 0.5.
        let p = wilson(320, 400, 0.95);
        assert!(close(p.ci_low, 0.758030, 2e-6) && close(p.ci_high, 0.836263, 2e-6), "{p:?}");
        assert!(!p.includes_chance());
        assert!(wilson(0, 0, 0.95).includes_chance());
    }

    #[test]
    fn power_of_the_paired_t_test() {
        // Minimum detectable differences in units of the per-seed sd at 80% power, two-sided α = 0.05, against SciPy
        // (numerical integration of the noncentral t over χ²_df with scipy.integrate.quad, then brentq):
        // 2 seeds (1 df) 11.5499, 3 seeds 3.26404, 5 seeds 1.68200, 10 seeds 0.99600, 30 seeds 0.52924; 3 seeds at
        // Holm's first step of a family of 7 (α = 0.05/7) 8.66260. Power at δ = σ: 3 seeds 0.179255, 10 seeds 0.803097.
        for (s, a, want) in [
            (2, 0.05, 11.5499),
            (3, 0.05, 3.26404),
            (5, 0.05, 1.68200),
            (10, 0.05, 0.99600),
            (30, 0.05, 0.52924),
            (3, 0.05 / 7.0, 8.66260),
        ] {
            let got = minimum_detectable(1.0, s, a, 0.8);
            assert!(close(got, want, 2e-3 * want), "{s} seeds, α {a}: {got}");
        }
        assert!(close(t_power(1.0, 1.0, 3, 0.05), 0.179255, 2e-4));
        assert!(close(t_power(1.0, 1.0, 10, 0.05), 0.803097, 2e-4));
        // scale: the detectable difference is proportional to sd
        assert!(close(minimum_detectable(0.02, 10, 0.05, 0.8), 0.02 * 0.99600, 1e-4));
        assert!(minimum_detectable(1.0, 1, 0.05, 0.8).is_nan());
        // a tiny α is a huge difference (or unknown), never 0: 1 − α/2 rounding to 1 made it 0
        let tiny = minimum_detectable(1.0, 10, 1e-17, 0.8);
        assert!(tiny.is_nan() || tiny > 5.0, "{tiny}");
        assert!(minimum_detectable(1.0, 10, 1e-9, 0.8) > minimum_detectable(1.0, 10, 1e-6, 0.8));
        // power at or below α needs no difference at all: not a design
        assert!(minimum_detectable(1.0, 10, 0.5, 0.5).is_nan() && minimum_detectable(1.0, 10, 0.9, 0.5).is_nan());
    }

    #[test]
    fn planning_a_design() {
        // σ²_seed = 0.0001, σ²_prompt = 0.04, σ²_within = 0.02; 10 seeds. Per-seed variance with n prompts, 1 sample:
        // 0.0001 + 0.06/n. Target 0.02 needs sd ≤ 0.02/0.996 = 0.020080 → variance ≤ 0.00040321 → 0.06/n ≤ 0.00030321
        // → n ≥ 197.9: 198 prompts.
        let c = Components { between_seed: 0.0001, between_prompt: 0.04, within_prompt: 0.02 };
        let p = plan_design(&c, 0.02, 10, 1000, 8, 0.05, 0.8);
        let d = p.design.unwrap();
        assert!((197..=199).contains(&d.prompts) && d.samples_per_prompt == 1, "{p:?}");
        assert!(p.detectable <= 0.02);
        // Only 100 prompts available: 0.0001 + 0.04/100 + 0.02/(100 m) ≤ 0.00040321 → 0.0002/m ≤ −0.0000968: never
        // with 10 seeds.
        let p = plan_design(&c, 0.02, 10, 100, 8, 0.05, 0.8);
        assert!(p.design.is_none(), "{p:?}");
        // The floor with 3 seeds: 3.26404·0.01 = 0.0326 > 0.02: no design of 3 seeds can reach 0.02; 5 seeds
        // (1.682·0.01 = 0.0168) can.
        let p = plan_design(&c, 0.02, 3, 100_000, 8, 0.05, 0.8);
        assert!(p.design.is_none() && close(p.floor, 0.0326404, 1e-4), "{p:?}");
        assert_eq!(p.seeds_needed, Some(5));
    }
}
