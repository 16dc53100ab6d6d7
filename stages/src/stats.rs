//! Small statistics for evaluation and the report: means with Student-t confidence intervals, paired tests, the
//! Wald test between two independent estimates. Written out (no statistics crate) and unit-tested against
//! tabulated values.

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

/// Sample standard deviation (n − 1).
pub fn sd(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return 0.0;
    }
    let m = mean(v);
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
}

/// Mean ± t_{0.975, n−1}·sd/√n.
pub fn estimate(v: &[f64]) -> Estimate {
    let n = v.len();
    let m = mean(v);
    if n < 2 {
        return Estimate { mean: m, se: 0.0, n, ci_low: m, ci_high: m };
    }
    let se = sd(v) / (n as f64).sqrt();
    let h = t_quantile(0.975, (n - 1) as f64) * se;
    Estimate { mean: m, se, n, ci_low: m - h, ci_high: m + h }
}

/// Standard normal CDF (Abramowitz–Stegun 7.1.26 via erf; |error| < 1.5e-7).
pub fn normal_cdf(x: f64) -> f64 {
    0.5 * (1.0 + erf(x / std::f64::consts::SQRT_2))
}

fn erf(x: f64) -> f64 {
    let s = x.signum();
    let x = x.abs();
    let t = 1.0 / (1.0 + 0.3275911 * x);
    let y = 1.0
        - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592)
            * t
            * (-x * x).exp();
    s * y
}

fn ln_gamma(x: f64) -> f64 {
    // Lanczos (g = 7, n = 9)
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Regularised incomplete beta I_x(a, b) (continued fraction, Numerical Recipes' betacf).
fn inc_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let bt = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    let cf = |x: f64, a: f64, b: f64| {
        let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
        let mut c = 1.0;
        let mut d = 1.0 - qab * x / qap;
        if d.abs() < 1e-300 {
            d = 1e-300;
        }
        d = 1.0 / d;
        let mut h = d;
        for m in 1..300 {
            let m = m as f64;
            let m2 = 2.0 * m;
            let aa = m * (b - m) * x / ((qam + m2) * (a + m2));
            d = 1.0 + aa * d;
            if d.abs() < 1e-300 {
                d = 1e-300;
            }
            c = 1.0 + aa / c;
            if c.abs() < 1e-300 {
                c = 1e-300;
            }
            d = 1.0 / d;
            h *= d * c;
            let aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2));
            d = 1.0 + aa * d;
            if d.abs() < 1e-300 {
                d = 1e-300;
            }
            c = 1.0 + aa / c;
            if c.abs() < 1e-300 {
                c = 1e-300;
            }
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < 1e-14 {
                break;
            }
        }
        h
    };
    if x < (a + 1.0) / (a + b + 2.0) { bt * cf(x, a, b) / a } else { 1.0 - bt * cf(1.0 - x, b, a) / b }
}

/// Student-t CDF with `df` degrees of freedom.
pub fn t_cdf(t: f64, df: f64) -> f64 {
    let x = df / (df + t * t);
    let tail = 0.5 * inc_beta(x, df / 2.0, 0.5);
    if t >= 0.0 { 1.0 - tail } else { tail }
}

/// Student-t quantile (bisection on [`t_cdf`]).
pub fn t_quantile(p: f64, df: f64) -> f64 {
    let (mut lo, mut hi) = (-1e3, 1e3);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if t_cdf(mid, df) < p { lo = mid } else { hi = mid }
    }
    0.5 * (lo + hi)
}

/// A two-sided test result.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Test {
    /// Estimated difference (first − second).
    pub diff: f64,
    pub se: f64,
    /// z (Wald) or t (paired) statistic.
    pub stat: f64,
    pub p_value: f64,
}

/// Wald test of `a.mean − b.mean = 0` for two independent estimates: z = Δ/√(se_a² + se_b²), normal p-value.
pub fn wald(a: &Estimate, b: &Estimate) -> Test {
    let diff = a.mean - b.mean;
    let se = (a.se.powi(2) + b.se.powi(2)).sqrt();
    let stat = if se > 0.0 {
        diff / se
    } else if diff == 0.0 {
        0.0
    } else {
        f64::INFINITY * diff.signum()
    };
    Test { diff, se, stat, p_value: 2.0 * (1.0 - normal_cdf(stat.abs())) }
}

/// Paired t-test of `mean(a − b) = 0` over matched values (e.g. two methods' oracle rewards on the same prompts).
pub fn paired(a: &[f64], b: &[f64]) -> Test {
    assert_eq!(a.len(), b.len(), "paired test needs matched values");
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let e = estimate(&d);
    let stat = if e.se > 0.0 {
        e.mean / e.se
    } else if e.mean == 0.0 {
        0.0
    } else {
        f64::INFINITY * e.mean.signum()
    };
    let df = (d.len().max(2) - 1) as f64;
    Test { diff: e.mean, se: e.se, stat, p_value: 2.0 * (1.0 - t_cdf(stat.abs(), df)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_tables() {
        for (df, q) in [(1.0, 12.706), (2.0, 4.303), (5.0, 2.571), (10.0, 2.228), (30.0, 2.042), (1000.0, 1.962)] {
            assert!((t_quantile(0.975, df) - q).abs() < 2e-3, "df {df}: {}", t_quantile(0.975, df));
        }
        assert!((normal_cdf(1.959964) - 0.975).abs() < 1e-6);
        assert!((t_cdf(0.0, 7.0) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn estimates_and_tests() {
        let e = estimate(&[1.0, 2.0, 3.0, 4.0]);
        assert_eq!(e.mean, 2.5);
        let se = (5.0f64 / 3.0).sqrt() / 2.0;
        assert!((e.se - se).abs() < 1e-12);
        assert!((e.ci_high - (2.5 + 3.182446 * se)).abs() < 1e-3);
        let one = estimate(&[3.0]);
        assert_eq!((one.ci_low, one.ci_high, one.se), (3.0, 3.0, 0.0));
        // Wald: Δ = 1, se = √(0.3² + 0.4²) = 0.5 → z = 2, p = 0.0455
        let w = wald(
            &Estimate { mean: 1.5, se: 0.3, n: 9, ci_low: 0.0, ci_high: 0.0 },
            &Estimate { mean: 0.5, se: 0.4, n: 9, ci_low: 0.0, ci_high: 0.0 },
        );
        assert!((w.stat - 2.0).abs() < 1e-12 && (w.p_value - 0.0455).abs() < 1e-3, "{w:?}");
        // paired: differences [1, 2, 3] → mean 2, se 1/√3, t = 3.464, df 2 → p = 0.0742
        let p = paired(&[2.0, 4.0, 6.0], &[1.0, 2.0, 3.0]);
        assert!((p.stat - 3.4641).abs() < 1e-3 && (p.p_value - 0.0742).abs() < 1e-3, "{p:?}");
    }
}
