//! The statistics of one evaluation (one policy on one seed) that the report needs beyond the advantage itself, and
//! the within-seed variance of a paired contrast between two evaluations (METHOD.md, "Evaluation statistics").
//!
//! Per evaluation, from its rows `d = r*(x, y^θ) − r*(x, y^ref)` (one per prompt × sample):
//! - the **length-controlled advantage**: least squares `d_i = a + b·(len(y_i^θ) − len(y_i^ref)) + ε` over prompts
//!   (a prompt's samples averaged first, lengths too), `a` being the advantage at equal length and `b` the reward per
//!   token of length difference;
//! - what the power estimate needs: the number of prompts, samples per prompt, the sd of the per-prompt means `d_i`
//!   and the pooled within-prompt variance of `d` (NaN with one sample per prompt).
//!
//! `evaluate` and `merge_eval` write these as extra columns of their summary ([`COLUMNS`]); the report reads them
//! back with [`SeedStats::read`]. The report also reads evaluations' `samples` tables ([`read_scores`]) to measure
//! the within-seed variance of paired differences between two methods ([`paired_within`]): they share the prompts and
//! π_ref's samples (same seed, common random numbers), so that variance is not the sum of the two methods' own.

use crate::port::{StageError, StageResult};
use crate::stats::{self, Components, Line};
use crate::table;
use arrow::array::{Array, AsArray, RecordBatch};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// One evaluation's length-controlled advantage and variance figures (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct SeedStats {
    pub prompts: usize,
    /// Mean number of samples per prompt.
    pub samples_per_prompt: f64,
    /// Sample sd of the per-prompt mean differences d_i.
    pub prompt_sd: f64,
    /// Pooled variance of d between the samples of one prompt (NaN when no prompt has two samples).
    pub within_prompt_var: f64,
    /// d_i on the length difference; None when every prompt has the same length difference.
    pub lc: Option<Line>,
}

/// The summary columns [`SeedStats`] adds, in order.
pub const COLUMNS: [&str; 7] =
    ["lc_advantage", "lc_se", "lc_slope", "lc_slope_se", "prompt_sd", "within_prompt_var", "samples_per_prompt"];

/// Per-prompt means, in prompt order: (d̄_i, mean length difference, samples, Σ_k (d_ik − d̄_i)²).
fn per_prompt(prompt: &[u32], d: &[f64], len_diff: &[f64]) -> Vec<(f64, f64, usize, f64)> {
    let mut g: BTreeMap<u32, Vec<(f64, f64)>> = BTreeMap::new();
    for i in 0..prompt.len() {
        g.entry(prompt[i]).or_default().push((d[i], len_diff[i]));
    }
    g.into_values()
        .map(|rows| {
            let k = rows.len() as f64;
            let md = rows.iter().map(|r| r.0).sum::<f64>() / k;
            let ml = rows.iter().map(|r| r.1).sum::<f64>() / k;
            let ss = rows.iter().map(|r| (r.0 - md).powi(2)).sum::<f64>();
            (md, ml, rows.len(), ss)
        })
        .collect()
}

/// Pooled within-group variance Σ SS / Σ (m_i − 1); NaN when no group has two members.
fn pooled(groups: &[(f64, f64, usize, f64)]) -> f64 {
    let dof: usize = groups.iter().map(|g| g.2 - 1).sum();
    if dof == 0 { f64::NAN } else { groups.iter().map(|g| g.3).sum::<f64>() / dof as f64 }
}

/// The statistics of one evaluation from its rows: prompt index, d = policy − π_ref oracle reward, and the length
/// difference (policy − π_ref tokens) of each (prompt, sample).
pub fn seed_stats(prompt: &[u32], d: &[f64], len_diff: &[f64]) -> SeedStats {
    let g = per_prompt(prompt, d, len_diff);
    let means: Vec<f64> = g.iter().map(|r| r.0).collect();
    let lens: Vec<f64> = g.iter().map(|r| r.1).collect();
    SeedStats {
        prompts: g.len(),
        samples_per_prompt: if g.is_empty() { 0.0 } else { prompt.len() as f64 / g.len() as f64 },
        prompt_sd: stats::sd(&means),
        within_prompt_var: pooled(&g),
        lc: stats::ols(&lens, &means),
    }
}

impl SeedStats {
    /// The values of [`COLUMNS`] (None = null).
    pub fn values(&self) -> [Option<f64>; 7] {
        let f = |v: f64| v.is_finite().then_some(v);
        [
            self.lc.map(|l| l.intercept),
            self.lc.and_then(|l| f(l.se_intercept)),
            self.lc.map(|l| l.slope),
            self.lc.and_then(|l| f(l.se_slope)),
            f(self.prompt_sd),
            f(self.within_prompt_var),
            f(self.samples_per_prompt),
        ]
    }

    /// Reads the columns back from a summary table (first row); None when the summary predates them.
    pub fn read(t: &RecordBatch) -> Option<SeedStats> {
        let get = |c: &str| -> Option<f64> {
            let a = t.column_by_name(c)?;
            let a = arrow::compute::cast(a, &arrow::datatypes::DataType::Float64).ok()?;
            let a = a.as_primitive::<arrow::datatypes::Float64Type>();
            (!a.is_empty() && a.is_valid(0)).then(|| a.value(0))
        };
        t.column_by_name("prompt_sd")?;
        let prompts = get("n_prompts").unwrap_or(0.0) as usize;
        let lc = get("lc_advantage").map(|a| Line {
            intercept: a,
            slope: get("lc_slope").unwrap_or(f64::NAN),
            se_intercept: get("lc_se").unwrap_or(f64::NAN),
            se_slope: get("lc_slope_se").unwrap_or(f64::NAN),
            n: prompts,
        });
        Some(SeedStats {
            prompts,
            samples_per_prompt: get("samples_per_prompt").unwrap_or(f64::NAN),
            prompt_sd: get("prompt_sd").unwrap_or(f64::NAN),
            within_prompt_var: get("within_prompt_var").unwrap_or(f64::NAN),
            lc,
        })
    }
}

/// The oracle-reward differences of one evaluation's `samples` table, keyed by (prompt, sample index).
#[derive(Debug, Clone, Default)]
pub struct Scores {
    pub d: HashMap<(String, u32), f64>,
}

/// Reads `prompt`, `sample`, `policy_oracle` and `ref_oracle` of an evaluate `samples` table.
pub fn read_scores(path: &Path) -> StageResult<Scores> {
    let t = table::read_table(path, Some(&["prompt", "sample", "policy_oracle", "ref_oracle"]))?;
    let col = |c: &str| t.column_by_name(c).expect("projected");
    let prompt = arrow::compute::cast(col("prompt"), &arrow::datatypes::DataType::Utf8)?;
    let prompt = prompt.as_string::<i32>();
    let sample = arrow::compute::cast(col("sample"), &arrow::datatypes::DataType::UInt32)?;
    let sample = sample.as_primitive::<arrow::datatypes::UInt32Type>();
    let f = |c: &str| -> StageResult<Vec<f64>> {
        let a = arrow::compute::cast(col(c), &arrow::datatypes::DataType::Float64)?;
        let a = a.as_primitive::<arrow::datatypes::Float64Type>();
        if a.null_count() > 0 {
            return Err(StageError::invalid("samples", format!("{}: `{c}` has nulls", path.display())));
        }
        Ok(a.values().to_vec())
    };
    let (pol, rf) = (f("policy_oracle")?, f("ref_oracle")?);
    let mut d = HashMap::with_capacity(t.num_rows());
    for i in 0..t.num_rows() {
        d.insert((prompt.value(i).to_string(), sample.value(i)), pol[i] - rf[i]);
    }
    Ok(Scores { d })
}

/// The within-seed sampling variance of one seed's paired difference between two evaluations.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Within {
    pub prompts: usize,
    pub samples_per_prompt: f64,
    /// Mean over matched rows of d_A − d_B.
    pub mean: f64,
    /// Variance of the per-prompt mean differences (n − 1).
    pub prompt_var: f64,
    /// Pooled variance between samples of one prompt (NaN with one sample per prompt).
    pub within_prompt_var: f64,
}

impl Within {
    /// Variance of this seed's mean difference: prompt_var / prompts.
    pub fn sampling_var(&self) -> f64 {
        self.prompt_var / self.prompts as f64
    }
}

/// Paired differences `d_A − d_B` over the (prompt, sample) rows both evaluations have; None with fewer than two
/// common prompts.
pub fn paired_within(a: &Scores, b: &Scores) -> Option<Within> {
    let mut keys: Vec<&(String, u32)> = a.d.keys().filter(|k| b.d.contains_key(*k)).collect();
    keys.sort();
    let mut ids: HashMap<&str, u32> = HashMap::new();
    let (mut p, mut e) = (vec![], vec![]);
    for k in keys {
        let n = ids.len() as u32;
        p.push(*ids.entry(k.0.as_str()).or_insert(n));
        e.push(a.d[k] - b.d[k]);
    }
    let zeros = vec![0.0; e.len()];
    let g = per_prompt(&p, &e, &zeros);
    if g.len() < 2 {
        return None;
    }
    let means: Vec<f64> = g.iter().map(|r| r.0).collect();
    Some(Within {
        prompts: g.len(),
        samples_per_prompt: e.len() as f64 / g.len() as f64,
        mean: stats::mean(&e),
        prompt_var: stats::var(&means),
        within_prompt_var: pooled(&g),
    })
}

/// The variance figures of one contrast over seeds, before they are pooled over contrasts.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct ContrastVariance {
    pub seeds: usize,
    /// Variance over seeds of the per-seed differences (seeds − 1 df): between-seed + sampling variance.
    pub seed_var: f64,
    /// Mean over seeds of the within-seed sampling variance of the difference (NaN without samples tables).
    pub sampling_var: f64,
    /// Mean over seeds of the between-prompt variance component (prompt-mean variance less its within-prompt part).
    pub between_prompt: f64,
    /// Mean over seeds of the pooled within-prompt variance (NaN with one sample per prompt).
    pub within_prompt: f64,
    pub prompts: f64,
    pub samples_per_prompt: f64,
}

/// A contrast's variance figures from its per-seed differences and, when the samples tables were read, each seed's
/// within-seed figures.
pub fn contrast_variance(diffs: &[f64], within: &[Within]) -> ContrastVariance {
    let nanmean = |v: Vec<f64>| {
        let v: Vec<f64> = v.into_iter().filter(|x| !x.is_nan()).collect();
        stats::mean(&v)
    };
    ContrastVariance {
        seeds: diffs.len(),
        seed_var: stats::var(diffs),
        sampling_var: stats::mean(&within.iter().map(Within::sampling_var).collect::<Vec<_>>()),
        between_prompt: stats::mean(
            &within
                .iter()
                .map(|w| {
                    let wp = if w.within_prompt_var.is_nan() { 0.0 } else { w.within_prompt_var };
                    (w.prompt_var - wp / w.samples_per_prompt).max(0.0)
                })
                .collect::<Vec<_>>(),
        ),
        within_prompt: nanmean(within.iter().map(|w| w.within_prompt_var).collect()),
        prompts: stats::mean(&within.iter().map(|w| w.prompts as f64).collect::<Vec<_>>()),
        samples_per_prompt: stats::mean(&within.iter().map(|w| w.samples_per_prompt).collect::<Vec<_>>()),
    }
}

/// Pools contrasts' variance figures (means of each; contrasts with NaN figures are left out of that figure) into
/// variance components: between-seed = max(0, seed variance − sampling variance).
pub fn pool(parts: &[ContrastVariance]) -> Option<(Components, ContrastVariance)> {
    let m = |f: fn(&ContrastVariance) -> f64| {
        let v: Vec<f64> = parts.iter().map(f).filter(|x| !x.is_nan()).collect();
        stats::mean(&v)
    };
    let pooled = ContrastVariance {
        seeds: parts.iter().map(|p| p.seeds).min()?,
        seed_var: m(|p| p.seed_var),
        sampling_var: m(|p| p.sampling_var),
        between_prompt: m(|p| p.between_prompt),
        within_prompt: m(|p| p.within_prompt),
        prompts: m(|p| p.prompts),
        samples_per_prompt: m(|p| p.samples_per_prompt),
    };
    if pooled.seed_var.is_nan() || pooled.sampling_var.is_nan() {
        return None;
    }
    let c = Components {
        between_seed: (pooled.seed_var - pooled.sampling_var).max(0.0),
        between_prompt: pooled.between_prompt,
        within_prompt: pooled.within_prompt,
    };
    Some((c, pooled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_stats_average_samples_per_prompt_first() {
        // 3 prompts × 2 samples. d: p0 (0.1, 0.3), p1 (0.5, 0.5), p2 (−0.2, 0.0); length differences: p0 (1, 3),
        // p1 (4, 4), p2 (−1, −3).
        // Prompt means: d̄ = (0.2, 0.5, −0.1), Δlen = (2, 4, −2). Within: SS = 0.02 + 0 + 0.02 = 0.04 on 3 df
        // → 0.013333. sd(d̄): mean 0.2, deviations (0, 0.3, −0.3), var = 0.18/2 = 0.09, sd 0.3.
        // LC: mean Δlen = 4/3; Sxx = (2/3)² + (8/3)² + (10/3)² = 168/9 = 18.6667;
        // Sxy = Σ(x − x̄)(y − ȳ) = (2/3)·0 + (8/3)·0.3 + (−10/3)·(−0.3) = 1.8;
        // b = 1.8/18.6667 = 0.096429; a = 0.2 − 0.096429·(4/3) = 0.071429.
        let s = seed_stats(&[0, 0, 1, 1, 2, 2], &[0.1, 0.3, 0.5, 0.5, -0.2, 0.0], &[1.0, 3.0, 4.0, 4.0, -1.0, -3.0]);
        assert_eq!((s.prompts, s.samples_per_prompt), (3, 2.0));
        assert!((s.prompt_sd - 0.3).abs() < 1e-12, "{s:?}");
        assert!((s.within_prompt_var - 0.04 / 3.0).abs() < 1e-12, "{s:?}");
        let lc = s.lc.unwrap();
        assert!((lc.slope - 0.096429).abs() < 1e-6 && (lc.intercept - 0.071429).abs() < 1e-6, "{lc:?}");
        // one sample per prompt: no within-prompt variance
        assert!(seed_stats(&[0, 1], &[0.1, 0.2], &[0.0, 1.0]).within_prompt_var.is_nan());
    }

    #[test]
    fn paired_within_matches_rows_and_cancels_what_they_share() {
        let sc =
            |rows: &[(&str, u32, f64)]| Scores { d: rows.iter().map(|(p, k, d)| ((p.to_string(), *k), *d)).collect() };
        // A and B share a large per-prompt effect (+1, −1, 0): it cancels in the paired difference.
        let a = sc(&[("x", 0, 1.2), ("y", 0, -0.9), ("z", 0, 0.1), ("extra", 0, 5.0)]);
        let b = sc(&[("x", 0, 1.0), ("y", 0, -1.0), ("z", 0, 0.0)]);
        let w = paired_within(&a, &b).unwrap();
        // differences (0.2, 0.1, 0.1): mean 0.133333, var 0.003333
        assert_eq!(w.prompts, 3);
        assert!((w.mean - 0.4 / 3.0).abs() < 1e-12);
        assert!((w.prompt_var - 0.01 / 3.0).abs() < 1e-12, "{w:?}");
        assert!(w.within_prompt_var.is_nan());
        assert!((w.sampling_var() - 0.01 / 9.0).abs() < 1e-12);
        assert!(paired_within(&a, &sc(&[("x", 0, 0.0)])).is_none());
    }

    #[test]
    fn components_split_seed_from_sampling_variance() {
        // per-seed differences (0.10, 0.04, 0.14): variance 0.0025333; each seed's sampling variance 0.0005
        // (prompt_var 0.1 over 200 prompts) → between-seed 0.0020333.
        let w =
            Within { prompts: 200, samples_per_prompt: 1.0, mean: 0.0, prompt_var: 0.1, within_prompt_var: f64::NAN };
        let cv = contrast_variance(&[0.10, 0.04, 0.14], &[w, w, w]);
        assert!((cv.seed_var - 0.0076 / 3.0).abs() < 1e-12, "{cv:?}");
        assert!((cv.sampling_var - 0.0005).abs() < 1e-12);
        let (c, _) = pool(&[cv]).unwrap();
        assert!((c.between_seed - (0.0076 / 3.0 - 0.0005)).abs() < 1e-12, "{c:?}");
        assert!((c.between_prompt - 0.1).abs() < 1e-12 && c.within_prompt.is_nan());
        // without samples tables there is no split
        assert!(pool(&[contrast_variance(&[0.1, 0.2], &[])]).is_none());
    }
}
