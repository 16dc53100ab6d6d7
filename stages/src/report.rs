//! `report`: the experiment's Markdown report and figures, from any run's evaluation summaries and training
//! metrics, with the statistics of METHOD.md "Evaluation statistics".
//!
//! Inputs: `evals` (many evaluate.summary; their node coordinates give `rho`, `method`, `seed` and, in a sweep
//! without selection, `beta`/`tau`; the summary's own columns fill in what coordinates lack), optional `samples`
//! (the same evaluations' evaluate.samples, matched by node: the within-seed variance of paired differences for the
//! power estimate), `metrics` (many policy.metrics), `rm_metrics` (many train_rm.metrics), `selection` (many
//! select.selection) and `oracle_agreement` (one label.labelled table of held-out pairs that carry human labels: on
//! real data, the oracle's agreement with them).
//!
//! What it computes ([`analyse`]):
//! - per method and ρ, the advantage over π_ref across seeds (mean of per-seed advantages, Student-t 95% interval on
//!   seeds − 1 df; with one seed, that run's own interval over prompts) and the length-controlled advantage (the
//!   per-seed least-squares intercept `a` of `d_i = a + b·Δlen_i`, aggregated the same way) with its slope `b`;
//! - the contrasts fixed in advance ([`crate::paper`]): per ρ, paired differences of per-seed advantages (same
//!   prompts, same π_ref samples, same seed), a t-test on seeds − 1 df, Holm's correction within the family of
//!   contrasts at that ρ;
//! - the verdict of each finding of the paper (holds / contradicted / inconclusive / not tested) with its evidence,
//!   and again without the seeds a `selection` was made on (where a method's final policy is its chosen candidate);
//! - a power estimate: the smallest difference the design detects at 80% power (α, and Holm's first-step α/m), from
//!   the contrasts' variance over seeds, and — with `samples` bound — the split of that variance into between-seed
//!   and within-seed parts and the numbers of test prompts and samples per prompt a target difference needs;
//! - on real data, the oracle's agreement with held-out human labels (Wilson 95% interval), with a warning at the
//!   top of the report when the interval includes 0.5.
//!
//! Output `report` (Dir): `report.md`, `advantage_vs_rho.png` (Fig. 2), `logp_trajectories.png` (Fig. B.1 at the
//! smallest ρ), `member_usage.png` (Fig. B.3: per example and per mini-batch) and `results.json` (every number).
//!
//! Fig. B.3 reads, from e-DPO's policy metrics, the per-step columns `best_member_<m>` (share of the mini-batch's
//! examples whose implicit reward member m matches best) and `chosen_member` (the member whose distillation loss
//! was the minimum), and the member names from the `rmdistill.member_chosen_steps` metadata.

use crate::data_io;
use crate::eval_stats::{self, ContrastVariance, Scores};
use crate::evaluation::{self, EvalRow, kv_get, read_eval};
use crate::grid::{Edge, Grid, at_edges};
use crate::paper::{self, Assessment, Contrast};
use crate::plots::{self, AdvantagePoint, MemberUsage, Run};
use crate::port::*;
use crate::selection::{Choice, rho_key};
use crate::stats::{self, Components, Design, Estimate, Plan, Proportion};
use crate::table;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

pub struct Report;

#[derive(Debug, Clone, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Title of the report.
    #[serde(default = "d_title")]
    pub title: String,
    /// Family-wise significance level of the contrasts (two-sided).
    #[serde(default = "d_alpha")]
    pub alpha: f64,
    /// The smallest advantage difference that matters, in oracle-reward units: the power estimate's target and the
    /// equivalence bound of "p-DPO alone gives no clear gain over DPO".
    #[serde(default = "d_min_difference")]
    pub min_difference: f64,
    /// The power the design should have at `min_difference`.
    #[serde(default = "d_power")]
    pub power: f64,
    /// Further contrasts fixed in advance, each `[first, second]` by method string (e.g. an ablation's
    /// `["d-dpo-oracle", "d-dpo"]`): tested at every ρ where both were evaluated, as one family of their own over
    /// all of them and every ρ, Holm-corrected within it. The paper's families and verdicts are unchanged by them.
    #[serde(default)]
    pub contrasts: Vec<[String; 2]>,
    /// What a seed varies in this pipeline, as the report says it ("Seeds vary …"): the embedded task's seeds
    /// redraw the data too; a pipeline over a fixed file of pairs with one π_ref varies less, and says so.
    #[serde(default = "d_seeds_vary")]
    pub seeds_vary: String,
}
fn d_seeds_vary() -> String {
    "the data (corpus, π_ref, pairs) as well as training".into()
}
fn d_title() -> String {
    "Robust preference optimization through reward-model distillation".into()
}
fn d_alpha() -> f64 {
    0.05
}
fn d_min_difference() -> f64 {
    0.02
}
fn d_power() -> f64 {
    0.8
}

impl Default for Params {
    fn default() -> Self {
        Params {
            title: d_title(),
            alpha: d_alpha(),
            min_difference: d_min_difference(),
            power: d_power(),
            contrasts: vec![],
            seeds_vary: d_seeds_vary(),
        }
    }
}

fn parse(params: &Map<String, Value>) -> StageResult<Params> {
    let p: Params = parse_params(params)?;
    for (f, v) in [("alpha", p.alpha), ("power", p.power)] {
        if !(v > 0.0 && v < 1.0) {
            return Err(StageError::invalid(f, format!("must be in (0, 1), got {v}")));
        }
    }
    if p.alpha < 1e-9 {
        return Err(StageError::invalid(
            "alpha",
            format!("must be at least 1e-9 (a level no experiment of seeds can reach), got {}", p.alpha),
        ));
    }
    if p.power <= p.alpha {
        return Err(StageError::invalid(
            "power",
            format!(
                "must exceed alpha ({}), got {}: a test has power alpha against a difference of 0, so no difference is \
                 needed for less",
                p.alpha, p.power
            ),
        ));
    }
    if !(p.min_difference > 0.0 && p.min_difference.is_finite()) {
        return Err(StageError::invalid(
            "min_difference",
            format!("must be a positive number, got {}", p.min_difference),
        ));
    }
    for (i, [a, b]) in p.contrasts.iter().enumerate() {
        if a.is_empty() || b.is_empty() || a == b {
            return Err(StageError::invalid(
                format!("contrasts[{i}]"),
                format!("must name two different methods, got [{a:?}, {b:?}]"),
            ));
        }
        // the same contrast twice (either way round) would be tested twice and enlarge Holm's family
        if let Some(j) = p.contrasts[..i].iter().position(|[x, y]| (x == a && y == b) || (x == b && y == a)) {
            return Err(StageError::invalid(
                format!("contrasts[{i}]"),
                format!("[{a:?}, {b:?}] is contrasts[{j}] again: each contrast is tested once, in one direction"),
            ));
        }
    }
    Ok(p)
}

// ---------------------------------------------------------------------------------------------------------------
// Reading

/// Distinguishes a method's β/τ values in labels when several were evaluated for the same ρ and seed (a sweep
/// without selection). Values chosen per ρ by validation differ across ρ but stay one method.
fn label_rows(rows: &mut [EvalRow]) {
    // (method, ρ, seed) → the β and τ values evaluated there
    type Values = (BTreeSet<String>, BTreeSet<String>);
    let mut values: BTreeMap<(String, i64, Option<i64>), Values> = BTreeMap::new();
    for r in rows.iter() {
        let e = values.entry((r.method.clone(), rho_key(r.rho), r.seed)).or_default();
        e.0.insert(format!("{:?}", r.beta));
        e.1.insert(format!("{:?}", r.tau));
    }
    let mut swept: BTreeMap<String, (bool, bool)> = BTreeMap::new();
    for ((m, _, _), (b, t)) in &values {
        let e = swept.entry(m.clone()).or_default();
        e.0 |= b.len() > 1;
        e.1 |= t.len() > 1;
    }
    for r in rows.iter_mut() {
        let (b, t) = swept[&r.method];
        let mut l = r.method.clone();
        if b {
            l.push_str(&format!(" β={}", r.beta.map_or("-".into(), |v| v.to_string())));
        }
        if t {
            l.push_str(&format!(" τ={}", r.tau.map_or("-".into(), |v| v.to_string())));
        }
        r.label = l;
    }
}

/// Per-step training metrics of one policy run.
#[derive(Debug, Clone, Default)]
pub struct Trajectory {
    /// The policy node that logged it.
    pub node: String,
    pub method: String,
    pub rho: Option<f64>,
    pub step: Vec<f64>,
    pub logp_chosen: Vec<Option<f64>>,
    pub logp_rejected: Vec<Option<f64>>,
    pub chosen_member: Vec<Option<f64>>,
    /// Per member m, the per-step share of examples it matches best (`best_member_<m>`).
    pub best_member: Vec<Vec<Option<f64>>>,
    /// Ensemble member names in index order (from the metadata), when known.
    pub member_names: Vec<String>,
    /// Per step, the forward KL(π_ref ‖ π_θ) estimated on the mini-batch's π_ref samples (the pessimistic methods).
    pub kl: Vec<Option<f64>>,
    pub beta: Option<f64>,
    pub tau: Option<f64>,
}

/// Member node names ordered as precompute orders members: by their coordinates (numbers numerically), then name.
fn member_names(kv: &[(String, String)]) -> Vec<String> {
    let Some(map) = kv_get(kv, "member_chosen_steps").and_then(|s| serde_json::from_str::<Map<String, Value>>(s).ok())
    else {
        return vec![];
    };
    let coords = |n: &str| -> Vec<(String, Option<f64>, String)> {
        n.split_once('@')
            .map(|(_, c)| {
                c.split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.parse().ok(), v.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut names: Vec<String> = map.keys().cloned().collect();
    names.sort_by(|a, b| {
        let (ca, cb) = (coords(a), coords(b));
        for (x, y) in ca.iter().zip(&cb) {
            let o = x.0.cmp(&y.0).then(match (x.1, y.1) {
                (Some(p), Some(q)) => p.total_cmp(&q),
                _ => x.2.cmp(&y.2),
            });
            if o.is_ne() {
                return o;
            }
        }
        a.cmp(b)
    });
    names
}

/// "ρ′ = 0.2" from a member node name with a `member` coordinate, else the name.
fn member_label(name: &str) -> String {
    name.split_once('@')
        .and_then(|(_, c)| c.split(',').find_map(|kv| kv.strip_prefix("member=")))
        .map_or_else(|| name.to_string(), |v| format!("ρ′ = {v}"))
}

fn read_metrics(a: &InputArtifact) -> StageResult<Trajectory> {
    let t = table::read_table(&a.path, None)?;
    let kv = table::read_kv(&a.path)?;
    let method = data_io::coord_str(&a.coords, "method")
        .or_else(|| kv_get(&kv, "method").map(|v| v.trim_matches('"').to_string()))
        .unwrap_or_else(|| a.node.clone());
    let kl = data_io::opt_f64s(&t, "kl");
    let num = |k: &str| data_io::coord_f64(&a.coords, k).or_else(|| kv_get(&kv, k).and_then(|v| v.parse().ok()));
    let mut best_member = vec![];
    while t.column_by_name(&format!("best_member_{}", best_member.len())).is_some() {
        best_member.push(data_io::opt_f64s(&t, &format!("best_member_{}", best_member.len())));
    }
    Ok(Trajectory {
        node: a.node.clone(),
        beta: num("beta"),
        tau: num("tau"),
        method,
        rho: data_io::coord_f64(&a.coords, "rho"),
        step: data_io::opt_f64s(&t, "step").into_iter().map(|v| v.unwrap_or(0.0)).collect(),
        logp_chosen: data_io::opt_f64s(&t, "logp_chosen"),
        logp_rejected: data_io::opt_f64s(&t, "logp_rejected"),
        chosen_member: data_io::opt_f64s(&t, "chosen_member"),
        best_member,
        member_names: member_names(&kv),
        kl,
    })
}

/// One reward model's figures (train_rm.metrics metadata).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RmRow {
    /// The stage that trained it (e.g. `rm`, `rm_member`, `oracle`).
    pub stage: String,
    pub rho: Option<f64>,
    pub member: Option<f64>,
    /// The seed it was trained on (its node's `seed` coordinate), which pairs reward models across ρ.
    pub seed: Option<i64>,
    /// Accuracy against the oracle's labels on held-out labelled pairs (`eval_accuracy`).
    pub eval_accuracy: Option<f64>,
    /// The same on pairs whose lengths differ by less than the margin (`eval_accuracy_within_margin`).
    pub eval_within_margin: Option<f64>,
    /// Share of length-differing held-out labelled pairs where it prefers the longer (`eval_length_sensitivity`).
    pub eval_length_sensitivity: Option<f64>,
    /// Agreement with its own training table's labels on rows held out of training (`held_out_accuracy`).
    pub held_out_accuracy: Option<f64>,
    /// Length sensitivity on those rows (`length_sensitivity`).
    pub length_sensitivity: Option<f64>,
}

fn read_rm(a: &InputArtifact) -> StageResult<RmRow> {
    let kv = table::read_kv(&a.path)?;
    let num = |k: &str| kv_get(&kv, k).and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite());
    Ok(RmRow {
        stage: a.node.split('@').next().unwrap_or(&a.node).to_string(),
        rho: data_io::coord_f64(&a.coords, "rho"),
        member: data_io::coord_f64(&a.coords, "member"),
        seed: data_io::coord_f64(&a.coords, "seed").map(|s| s as i64),
        eval_accuracy: num("eval_accuracy"),
        eval_within_margin: num("eval_accuracy_within_margin"),
        eval_length_sensitivity: num("eval_length_sensitivity"),
        held_out_accuracy: num("held_out_accuracy"),
        length_sensitivity: num("length_sensitivity"),
    })
}

/// The oracle's agreement with the human labels of a labelled table (`label` = the oracle's, `human_label` = the
/// human's; rows without a human label are skipped), with a Wilson 95% interval.
pub fn read_agreement(a: &InputArtifact) -> StageResult<Proportion> {
    let t = table::read_table(&a.path, Some(&[table::LABEL, "human_label"])).map_err(|e| {
        StageError::invalid(
            "oracle_agreement",
            format!("{} ({}): {e}: bind a `label` output of pairs with human labels", a.node, a.path.display()),
        )
    })?;
    let oracle = data_io::opt_i64s(&t, table::LABEL, &a.path)?;
    let human = data_io::opt_i64s(&t, "human_label", &a.path)?;
    let (mut k, mut n) = (0u64, 0u64);
    for (o, h) in oracle.iter().zip(&human) {
        if let (Some(o), Some(h)) = (o, h) {
            n += 1;
            k += (o == h) as u64;
        }
    }
    if n == 0 {
        return Err(StageError::invalid(
            "oracle_agreement",
            format!("{} ({}): no row has a human label to compare the oracle with", a.node, a.path.display()),
        ));
    }
    Ok(stats::wilson(k, n, 0.95))
}

/// Everything the report reads.
#[derive(Debug, Default)]
pub struct Inputs {
    pub evals: Vec<EvalRow>,
    /// Evaluation node → its samples' oracle-reward differences.
    pub samples: HashMap<String, Scores>,
    pub trajectories: Vec<Trajectory>,
    pub chosen: Vec<Choice>,
    /// The ends of each selection group's grid, by (method, ρ key).
    pub grids: BTreeMap<(String, i64), Grid>,
    pub reward_models: Vec<RmRow>,
    pub oracle_agreement: Option<Proportion>,
}

fn read_inputs(ctx: &dyn Ctx) -> StageResult<Inputs> {
    let evals = ctx.inputs("evals");
    if evals.is_empty() {
        return Err(StageError::invalid("evals", "no evaluation summaries are bound to `evals`"));
    }
    let (mut chosen, mut grids) = (vec![], BTreeMap::new());
    for a in ctx.inputs("selection") {
        chosen.extend(crate::selection::read_selection(&a.path)?);
        grids.extend(crate::grid::read_grids(&a.path)?);
    }
    let mut samples = HashMap::new();
    for a in ctx.inputs("samples") {
        samples.insert(a.node.clone(), eval_stats::read_scores(&a.path)?);
    }
    let oracle_agreement = match ctx.inputs("oracle_agreement") {
        [] => None,
        [one] => Some(read_agreement(one)?),
        many => {
            return Err(StageError::invalid("oracle_agreement", format!("expects one table, got {}", many.len())));
        }
    };
    let evals: Vec<EvalRow> = evals.iter().map(read_eval).collect::<StageResult<_>>()?;
    // samples are matched to evaluations by node: one that matches none would be ignored, and samples for some
    // evaluations only would pool contrasts measured two ways into one variance (as `select` refuses both)
    if let Some(extra) = samples.keys().find(|n| !evals.iter().any(|e| &e.node == *n)) {
        return Err(StageError::invalid(
            "samples",
            format!("samples of {extra} are bound, but not its summary (`evals`): bind both for every evaluation"),
        ));
    }
    let without: Vec<&str> = evals.iter().filter(|e| !samples.contains_key(&e.node)).map(|e| e.node.as_str()).collect();
    if !samples.is_empty() && !without.is_empty() {
        return Err(StageError::invalid(
            "samples",
            format!(
                "{} of {} evaluations have no samples bound ({}{}): bind the samples of every evaluation, or of none",
                without.len(),
                evals.len(),
                without.iter().take(3).copied().collect::<Vec<_>>().join(", "),
                if without.len() > 3 { ", …" } else { "" }
            ),
        ));
    }
    let bits = |v: Option<f64>| v.map(f64::to_bits);
    evaluation::refuse_repeats(
        "evals",
        "method, ρ, β, τ and γ",
        "bind each evaluation once",
        evals
            .iter()
            .map(|r| ((r.method.clone(), rho_key(r.rho), r.seed, bits(r.beta), bits(r.tau), bits(r.gamma)), &r.node)),
    )?;
    Ok(Inputs {
        evals,
        samples,
        trajectories: ctx.inputs("metrics").iter().map(read_metrics).collect::<StageResult<_>>()?,
        chosen,
        grids,
        reward_models: ctx
            .inputs("rm_metrics")
            .iter()
            .filter(|a| a.path.is_file())
            .map(read_rm)
            .collect::<StageResult<_>>()?,
        oracle_agreement,
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Computing

/// One method configuration at one ρ, over seeds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cell {
    pub label: String,
    pub rho: Option<f64>,
    pub seeds: usize,
    pub advantage: Estimate,
    /// Length-controlled advantage (the advantage at equal length), aggregated like `advantage`.
    pub lc_advantage: Option<Estimate>,
    /// Mean over seeds of the reward per token of length difference.
    pub lc_slope: Option<f64>,
    pub win_rate: f64,
    pub mean_len: f64,
    pub ref_mean_len: f64,
    pub kl: f64,
}

/// Aggregates seeds per (label, ρ).
pub fn aggregate(rows: &[EvalRow]) -> Vec<Cell> {
    let mut groups: BTreeMap<(String, i64), Vec<&EvalRow>> = BTreeMap::new();
    for r in rows {
        groups.entry((r.label.clone(), rho_key(r.rho))).or_default().push(r);
    }
    groups
        .into_values()
        .map(|g| {
            let adv = if g.len() >= 2 {
                stats::estimate(&g.iter().map(|r| r.advantage.mean).collect::<Vec<_>>())
            } else {
                g[0].advantage
            };
            let lcs: Vec<stats::Line> = g.iter().filter_map(|r| r.stats.and_then(|s| s.lc)).collect();
            let lc_advantage = if lcs.len() != g.len() || lcs.is_empty() {
                None
            } else if lcs.len() >= 2 {
                Some(stats::estimate(&lcs.iter().map(|l| l.intercept).collect::<Vec<_>>()))
            } else {
                // one seed: the regression's own interval (n − 2 df)
                let l = lcs[0];
                let h = if l.n > 2 { stats::t_quantile(0.975, (l.n - 2) as f64) * l.se_intercept } else { f64::NAN };
                Some(Estimate {
                    mean: l.intercept,
                    se: l.se_intercept,
                    n: l.n,
                    ci_low: l.intercept - h,
                    ci_high: l.intercept + h,
                })
            };
            let m = |f: fn(&EvalRow) -> f64| stats::mean(&g.iter().map(|r| f(r)).collect::<Vec<_>>());
            Cell {
                label: g[0].label.clone(),
                rho: g[0].rho,
                seeds: g.len(),
                advantage: adv,
                lc_advantage,
                lc_slope: (!lcs.is_empty()).then(|| stats::mean(&lcs.iter().map(|l| l.slope).collect::<Vec<_>>())),
                win_rate: m(|r| r.win_rate),
                mean_len: m(|r| r.mean_len),
                ref_mean_len: m(|r| r.ref_mean_len),
                kl: m(|r| r.kl),
            }
        })
        .collect()
}

/// The distinct ρ values, ascending (no ρ first).
fn distinct_rhos(rows: &[EvalRow]) -> Vec<Option<f64>> {
    let mut v: Vec<Option<f64>> = rows.iter().map(|r| r.rho).collect();
    v.sort_by_key(|r| rho_key(*r));
    v.dedup_by(|a, b| rho_key(*a) == rho_key(*b));
    v
}

/// The evaluations at one ρ that are a plain method (a method swept without selection has no single configuration).
fn plain_at(rows: &[EvalRow], rho: Option<f64>) -> Vec<&EvalRow> {
    rows.iter().filter(|r| rho_key(r.rho) == rho_key(rho) && r.label == r.method).collect()
}

/// The seeds on which both `a` and `b` were evaluated at one ρ: each seed's pair of evaluations.
fn common_seeds<'r>(at: &[&'r EvalRow], (a, b): (&str, &str)) -> Vec<(&'r EvalRow, &'r EvalRow)> {
    let by_seed = |m: &str| -> BTreeMap<Option<i64>, &'r EvalRow> {
        at.iter().filter(|r| r.method == m).map(|r| (r.seed, *r)).collect()
    };
    let (ra, rb) = (by_seed(a), by_seed(b));
    ra.iter().filter_map(|(s, x)| rb.get(s).map(|y| (*x, *y))).collect()
}

/// first − second at one ρ over the seeds both have, paired by seed (not yet Holm-adjusted).
fn paired_contrast(at: &[&EvalRow], rho: Option<f64>, (a, b): (&str, &str)) -> Contrast {
    let (xs, ys): (Vec<f64>, Vec<f64>) =
        common_seeds(at, (a, b)).iter().map(|(x, y)| (x.advantage.mean, y.advantage.mean)).unzip();
    Contrast {
        rho,
        first: a.to_string(),
        second: b.to_string(),
        seeds: xs.len(),
        test: stats::paired(&xs, &ys),
        p_holm: f64::NAN,
        family: 0,
    }
}

/// The variance figures of first − second at one ρ (for the power estimate), when it has at least two seeds.
fn contrast_variance(
    at: &[&EvalRow],
    pair: (&str, &str),
    samples: &HashMap<String, Scores>,
) -> Option<ContrastVariance> {
    let common = common_seeds(at, pair);
    let diffs: Vec<f64> = common.iter().map(|(x, y)| x.advantage.mean - y.advantage.mean).collect();
    let within: Vec<eval_stats::Within> = common
        .iter()
        .filter_map(|(x, y)| eval_stats::paired_within(samples.get(&x.node)?, samples.get(&y.node)?))
        .collect();
    (diffs.len() >= 2)
        .then(|| eval_stats::contrast_variance(&diffs, if within.len() == diffs.len() { &within } else { &[] }))
}

/// Holm's correction over one family: each contrast's adjusted p and the family's size (testable contrasts only).
fn holm_within(family: &mut [Contrast]) {
    let adj = stats::holm(&family.iter().map(|c| c.test.p_value).collect::<Vec<_>>());
    let m = adj.iter().filter(|p| !p.is_nan()).count();
    for (c, p) in family.iter_mut().zip(adj) {
        c.p_holm = p;
        c.family = m;
    }
}

/// The contrasts of every family (one per ρ), Holm-adjusted within it, and each contrast's variance figures.
pub fn contrasts(rows: &[EvalRow], samples: &HashMap<String, Scores>) -> (Vec<Contrast>, Vec<ContrastVariance>) {
    let rhos = distinct_rhos(rows);
    let (mut out, mut vars) = (vec![], vec![]);
    for &rho in &rhos {
        let at = plain_at(rows, rho);
        let methods: BTreeSet<String> = at.iter().map(|r| r.method.clone()).collect();
        let mut tested = vec![];
        for pair in paper::family(rho, &rhos, &methods) {
            tested.push(paired_contrast(&at, rho, pair));
            vars.extend(contrast_variance(&at, pair, samples));
        }
        holm_within(&mut tested);
        out.extend(tested);
    }
    (out, vars)
}

/// The further contrasts a user fixed in advance (`params.contrasts`): each at every ρ where both methods were
/// evaluated, all of them one family, Holm-adjusted within it.
pub fn further_contrasts(rows: &[EvalRow], pairs: &[[String; 2]]) -> Vec<Contrast> {
    let mut out = vec![];
    for rho in distinct_rhos(rows) {
        let at = plain_at(rows, rho);
        for [a, b] in pairs {
            if at.iter().any(|r| &r.method == a) && at.iter().any(|r| &r.method == b) {
                out.push(paired_contrast(&at, rho, (a, b)));
            }
        }
    }
    holm_within(&mut out);
    out
}

/// A further contrast naming a method that no evaluation has is a mistake in the manifest, not an empty table.
fn check_contrasts(rows: &[EvalRow], pairs: &[[String; 2]]) -> StageResult<()> {
    let evaluated: BTreeSet<&str> = rows.iter().map(|r| r.method.as_str()).collect();
    for (i, pair) in pairs.iter().enumerate() {
        if let Some(m) = pair.iter().find(|m| !evaluated.contains(m.as_str())) {
            return Err(StageError::invalid(
                format!("contrasts[{i}]"),
                format!(
                    "method {m:?} has no evaluation among the report's inputs (evaluated: {})",
                    evaluated.iter().copied().collect::<Vec<_>>().join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// The power estimate (see the module docs).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Power {
    /// Contrasts with ≥ 2 seeds whose variance was pooled.
    pub contrasts: usize,
    pub seeds: usize,
    pub prompts: Option<f64>,
    pub samples_per_prompt: Option<f64>,
    /// The largest family (Holm's first step tests at α/m).
    pub family: usize,
    /// Pooled variance over seeds of the per-seed paired differences.
    pub seed_var: f64,
    /// The smallest difference detected at the chosen power with α, and with α/m (Holm's first step).
    pub detectable: f64,
    pub detectable_holm: f64,
    /// The median contrast's variance over seeds and what it would detect at α: the pooled mean is what the design
    /// gives on average, but one unstable cell (a policy that diverged on one seed) can dominate it.
    pub median_seed_var: f64,
    pub detectable_median: f64,
    /// The share of the pooled variance (the sum over contrasts) that the most variable contrast carries.
    pub largest_share: f64,
    /// With `samples` bound: the split of the per-seed variance, and plans for the target difference.
    pub components: Option<Components>,
    pub sampling_var: Option<f64>,
    /// Prompts needed with one sample each (no limit on prompts).
    pub plan_prompts: Option<Plan>,
    /// Samples per prompt needed at the current number of prompts.
    pub plan_samples: Option<Plan>,
    /// The same two at Holm's first-step α.
    pub plan_prompts_holm: Option<Plan>,
}

pub fn power(vars: &[ContrastVariance], family: usize, p: &Params) -> Option<Power> {
    let seed_var = stats::mean(&vars.iter().map(|v| v.seed_var).collect::<Vec<_>>());
    // no variation at all between seeds (every contrast the same on every seed): nothing to scale a plan by; a
    // design "detecting 0" would be no estimate
    if vars.is_empty() || seed_var.is_nan() || seed_var <= 0.0 {
        return None;
    }
    let seeds = vars.iter().map(|v| v.seeds).min().unwrap_or(0);
    let holm_alpha = p.alpha / family.max(1) as f64;
    let detectable = stats::minimum_detectable(seed_var.sqrt(), seeds, p.alpha, p.power);
    let detectable_holm = stats::minimum_detectable(seed_var.sqrt(), seeds, holm_alpha, p.power);
    let mut sorted: Vec<f64> = vars.iter().map(|v| v.seed_var).filter(|x| !x.is_nan()).collect();
    sorted.sort_by(f64::total_cmp);
    let k = sorted.len();
    let median_seed_var = if k % 2 == 1 { sorted[k / 2] } else { (sorted[k / 2 - 1] + sorted[k / 2]) / 2.0 };
    let total: f64 = sorted.iter().sum();
    let largest_share = if total > 0.0 { sorted[k - 1] / total } else { 0.0 };
    let split = eval_stats::pool(vars);
    let (components, pooled) = match split {
        Some((c, pooled)) => (Some(c), Some(pooled)),
        None => (None, None),
    };
    let n_now = pooled.map(|v| v.prompts.round().max(1.0) as usize);
    let plan = |max_prompts: usize, max_samples: usize, alpha: f64| {
        components.map(|c| stats::plan_design(&c, p.min_difference, seeds, max_prompts, max_samples, alpha, p.power))
    };
    Some(Power {
        contrasts: vars.len(),
        seeds,
        prompts: pooled.map(|v| v.prompts),
        samples_per_prompt: pooled.map(|v| v.samples_per_prompt),
        family,
        seed_var,
        detectable,
        detectable_holm,
        median_seed_var,
        detectable_median: stats::minimum_detectable(median_seed_var.sqrt(), seeds, p.alpha, p.power),
        largest_share,
        components,
        sampling_var: pooled.map(|v| v.sampling_var),
        plan_prompts: plan(MAX_PROMPTS, 1, p.alpha),
        plan_samples: n_now.and_then(|n| plan(n, MAX_SAMPLES, p.alpha)),
        plan_prompts_holm: plan(MAX_PROMPTS, 1, holm_alpha),
    })
}

/// The most prompts and samples per prompt a plan considers.
const MAX_PROMPTS: usize = 10_000_000;
const MAX_SAMPLES: usize = 64;

/// The hyper-parameters of the evaluated policies, per method and ρ, with how they were set.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HyperRow {
    pub label: String,
    pub rho: Option<f64>,
    pub beta: Vec<f64>,
    pub tau: Vec<f64>,
    pub gamma: Vec<f64>,
    /// The selection's choices for this method and ρ (parameter, value, validation advantage, candidates, seeds).
    pub chosen: Vec<Choice>,
    /// For each choice, the ends of its grid it lies at.
    pub edges: Vec<Vec<Edge>>,
}

fn hyper_rows(rows: &[EvalRow], chosen: &[Choice], grids: &BTreeMap<(String, i64), Grid>) -> Vec<HyperRow> {
    let edges = |c: &Choice| grids.get(&(c.method.clone(), rho_key(c.rho))).map_or(vec![], |g| at_edges(c, g));
    let mut g: BTreeMap<(usize, String, i64), HyperRow> = BTreeMap::new();
    for r in rows {
        let e = g.entry((paper::order(&r.label), r.label.clone(), rho_key(r.rho))).or_insert_with(|| {
            let chosen: Vec<Choice> = chosen
                .iter()
                .filter(|c| c.method == r.method && (c.rho.is_none() || rho_key(c.rho) == rho_key(r.rho)))
                .cloned()
                .collect();
            HyperRow {
                label: r.label.clone(),
                rho: r.rho,
                beta: vec![],
                tau: vec![],
                gamma: vec![],
                edges: chosen.iter().map(edges).collect(),
                chosen,
            }
        });
        // a policy records every parameter; show the one its loss uses (τ for IPO, β otherwise)
        let (beta, tau) = if paper::uses_tau(&r.method) { (None, r.tau) } else { (r.beta, None) };
        for (v, list) in [(beta, &mut e.beta), (tau, &mut e.tau), (r.gamma, &mut e.gamma)] {
            if let Some(v) = v.filter(|v| !list.iter().any(|x: &f64| (x - v).abs() < 1e-12)) {
                list.push(v);
            }
        }
    }
    g.into_values().collect()
}

/// Fig. B.3's data per ρ from e-DPO's training metrics (averaged over seeds).
fn member_usage(trajs: &[Trajectory]) -> Vec<MemberUsage> {
    let mut by: BTreeMap<i64, (Option<f64>, Vec<&Trajectory>)> = BTreeMap::new();
    for t in trajs.iter().filter(|t| t.method == "e-dpo") {
        by.entry(rho_key(t.rho)).or_insert((t.rho, vec![])).1.push(t);
    }
    let avg = |runs: &[Vec<f64>]| -> Vec<f64> {
        let m = runs.iter().map(|r| r.len()).max().unwrap_or(0);
        (0..m)
            .map(|j| stats::mean(&runs.iter().map(|r| r.get(j).copied().unwrap_or(0.0)).collect::<Vec<_>>()))
            .collect()
    };
    by.into_values()
        .filter_map(|(rho, runs)| {
            let chosen: Vec<Vec<f64>> = runs
                .iter()
                .filter_map(|t| {
                    let c: Vec<usize> = t.chosen_member.iter().flatten().map(|&m| m as usize).collect();
                    let n = (c.iter().max()? + 1).max(t.best_member.len());
                    let mut share = vec![0.0; n];
                    for m in &c {
                        share[*m] += 1.0 / c.len() as f64;
                    }
                    Some(share)
                })
                .collect();
            let best: Vec<Vec<f64>> = runs
                .iter()
                .filter(|t| !t.best_member.is_empty())
                .map(|t| {
                    t.best_member
                        .iter()
                        .map(|col| stats::mean(&col.iter().flatten().copied().collect::<Vec<_>>()))
                        .collect()
                })
                .collect();
            if chosen.is_empty() && best.is_empty() {
                return None;
            }
            let names = runs.iter().map(|t| &t.member_names).find(|n| !n.is_empty());
            let n = chosen.iter().chain(&best).map(|v| v.len()).max().unwrap_or(0);
            let members = (0..n)
                .map(|m| names.and_then(|n| n.get(m)).map_or_else(|| format!("member {m}"), |s| member_label(s)))
                .collect();
            Some(MemberUsage { rho, members, best_per_example: avg(&best), chosen_per_batch: avg(&chosen) })
        })
        .collect()
}

/// Whether a training run used the value the selection chose for its method and ρ (true when nothing was chosen
/// for it).
fn is_chosen(chosen: &[Choice], t: &Trajectory) -> bool {
    crate::selection::choice_for(chosen, &t.method, t.rho)
        .is_none_or(|c| c.is_value(if c.param == "tau" { t.tau } else { t.beta }))
}

/// Everything the report states.
#[derive(Debug)]
pub struct Analysis {
    pub params: Params,
    pub evaluations: usize,
    pub seeds: usize,
    pub labels: Vec<String>,
    pub rhos: Vec<Option<f64>>,
    pub cells: Vec<Cell>,
    pub contrasts: Vec<Contrast>,
    /// The user's further contrasts (`params.contrasts`), one family.
    pub further: Vec<Contrast>,
    pub findings: Vec<Assessment>,
    /// The findings again without the seeds the selection was made on, where there were such seeds.
    pub without_selection_seeds: Option<WithoutSelectionSeeds>,
    pub power: Option<Power>,
    /// Whether the evaluations' `samples` were bound (the power estimate's split needs them).
    pub samples_bound: bool,
    pub hyper: Vec<HyperRow>,
    pub reward_models: Vec<RmRow>,
    /// The length bias the single reward models learned ([`length_bias_learned`]).
    pub length_bias: Vec<LengthBias>,
    pub members: Vec<MemberUsage>,
    pub oracle_agreement: Option<Proportion>,
    /// Training runs drawn in Fig. B.1 (the chosen β/τ only).
    pub trajectories: Vec<Trajectory>,
    /// Evaluations whose policy samples were cut at `max_new_tokens` in 1% of their rows or more.
    pub cut: Vec<CutSamples>,
}

/// An evaluation whose policy samples reached `max_new_tokens` without EOS often enough to cap its lengths.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CutSamples {
    pub node: String,
    pub cut: usize,
    pub rows: usize,
}

fn cut_samples(rows: &[EvalRow]) -> Vec<CutSamples> {
    let mut cut: Vec<CutSamples> = rows
        .iter()
        .filter_map(|r| {
            let (cut, rows) = r.cut_samples?;
            crate::evaluation::notable_cut(cut, rows).then(|| CutSamples { node: r.node.clone(), cut, rows })
        })
        .collect();
    cut.sort_by(|a, b| (b.cut * a.rows).cmp(&(a.cut * b.rows)).then_with(|| a.node.cmp(&b.node)));
    cut
}

/// What the report says of cut samples, in Markdown (None when no evaluation had 1% or more).
fn cut_note(a: &Analysis) -> Option<String> {
    let worst = a.cut.first()?;
    Some(format!(
        "**Cut samples.** In {} of {} evaluations 1% or more of the policy's samples reached `max_new_tokens` without \
         EOS (most: {} of {} in {}). Those samples are scored as cut and the policy's length is capped there, which \
         understates length differences; raise `max_new_tokens` to measure them whole.",
        a.cut.len(),
        a.evaluations,
        worst.cut,
        worst.rows,
        worst.node
    ))
}

pub fn analyse(mut inputs: Inputs, params: Params) -> Analysis {
    label_rows(&mut inputs.evals);
    let rows = &inputs.evals;
    let cells = aggregate(rows);
    let mut labels: Vec<String> = cells.iter().map(|c| c.label.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    labels.sort_by_key(|l| (paper::order(l), l.clone()));
    let rhos = distinct_rhos(rows);
    let (contrasts, vars) = contrasts(rows, &inputs.samples);
    let further = further_contrasts(rows, &params.contrasts);
    let findings = paper::FINDINGS
        .iter()
        .map(|f| paper::assess(f, &contrasts, &rhos, params.alpha, params.min_difference))
        .collect();
    let family = contrasts.iter().map(|c| c.family).max().unwrap_or(0);
    let power = power(&vars, family, &params);
    let chosen = inputs.chosen.clone();
    let without_selection_seeds = without_selection_seeds(rows, &chosen, &rhos, &params);
    inputs.trajectories.retain(|t| is_chosen(&chosen, t));
    Analysis {
        evaluations: rows.len(),
        seeds: rows.iter().filter_map(|r| r.seed).collect::<BTreeSet<_>>().len().max(1),
        hyper: hyper_rows(rows, &chosen, &inputs.grids),
        members: member_usage(&inputs.trajectories),
        labels,
        rhos,
        cells,
        contrasts,
        further,
        findings,
        without_selection_seeds,
        power,
        samples_bound: !inputs.samples.is_empty(),
        length_bias: length_bias_learned(&inputs.reward_models),
        reward_models: inputs.reward_models,
        oracle_agreement: inputs.oracle_agreement,
        trajectories: inputs.trajectories,
        cut: cut_samples(rows),
        params,
    }
}

/// The findings measured on the seeds that no selection was made on.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WithoutSelectionSeeds {
    /// The seeds left out: those the candidates of any selection were trained and chosen on.
    pub excluded: Vec<i64>,
    /// How many seeds are left.
    pub seeds: usize,
    pub findings: Vec<Assessment>,
}

/// The findings without the selection's seeds. On such a seed each method's final policy is its chosen candidate,
/// whose test result keeps the training luck that won the validation; the more candidates a method had, the more
/// luck it could pick, so these seeds can favour the methods with larger grids. None when no evaluated seed was a
/// selection seed (or seeds are not coordinates).
fn without_selection_seeds(
    rows: &[EvalRow],
    chosen: &[Choice],
    rhos: &[Option<f64>],
    p: &Params,
) -> Option<WithoutSelectionSeeds> {
    let excluded: BTreeSet<i64> = chosen.iter().flat_map(|c| c.seed_list.iter().copied()).collect();
    let is_excluded = |r: &EvalRow| r.seed.is_some_and(|s| excluded.contains(&s));
    if !rows.iter().any(is_excluded) {
        return None;
    }
    let kept: Vec<EvalRow> = rows.iter().filter(|r| !is_excluded(r)).cloned().collect();
    // the contrasts as the full analysis computes them, on fewer seeds (no variance split: it only feeds the power)
    let (contrasts, _) = contrasts(&kept, &HashMap::new());
    Some(WithoutSelectionSeeds {
        excluded: excluded.into_iter().collect(),
        seeds: kept.iter().filter_map(|r| r.seed).collect::<BTreeSet<_>>().len(),
        findings: paper::FINDINGS
            .iter()
            .map(|f| paper::assess(f, &contrasts, rhos, p.alpha, p.min_difference))
            .collect(),
    })
}

/// One method's mean log π_θ of the chosen and rejected responses over the first and the last tenth of training.
struct LikelihoodChange {
    method: String,
    runs: usize,
    /// (first tenth, last tenth), means over the runs.
    chosen: (f64, f64),
    rejected: (f64, f64),
    /// The forward KL(π_ref ‖ π_θ) over the last tenth, mean over the runs that estimate it (the pessimistic methods).
    kl_last: Option<f64>,
}

/// The mean of the logged values among the first (or last) tenth of a run's steps.
fn tenth(v: &[Option<f64>], last: bool) -> Option<f64> {
    let k = v.len().div_ceil(10);
    let part = if last { &v[v.len() - k..] } else { &v[..k] };
    let vals: Vec<f64> = part.iter().flatten().copied().filter(|x| x.is_finite()).collect();
    (!vals.is_empty()).then(|| crate::stats::mean(&vals))
}

/// Fig. B.1 as numbers: per method at `rho`, in the paper's order, the runs that logged both log-probs.
fn likelihood_change(trajectories: &[Trajectory], rho: Option<f64>) -> Vec<LikelihoodChange> {
    /// One run: log π_θ(y_w) and log π_θ(y_l) over the first and last tenth, and its last tenth's KL if it has one.
    type Run = ([f64; 4], Option<f64>);
    let mut by_method: BTreeMap<String, Vec<Run>> = BTreeMap::new();
    for t in trajectories.iter().filter(|t| rho_key(t.rho) == rho_key(rho) && !t.logp_chosen.is_empty()) {
        let four = [
            tenth(&t.logp_chosen, false),
            tenth(&t.logp_chosen, true),
            tenth(&t.logp_rejected, false),
            tenth(&t.logp_rejected, true),
        ];
        if let [Some(a), Some(b), Some(c), Some(d)] = four {
            by_method.entry(t.method.clone()).or_default().push(([a, b, c, d], tenth(&t.kl, true)));
        }
    }
    let mut rows: Vec<LikelihoodChange> = by_method
        .into_iter()
        .map(|(method, runs)| {
            let mean = |i: usize| crate::stats::mean(&runs.iter().map(|r| r.0[i]).collect::<Vec<_>>());
            let kl: Vec<f64> = runs.iter().filter_map(|r| r.1).collect();
            LikelihoodChange {
                method,
                runs: runs.len(),
                chosen: (mean(0), mean(1)),
                rejected: (mean(2), mean(3)),
                kl_last: (!kl.is_empty()).then(|| crate::stats::mean(&kl)),
            }
        })
        .collect();
    rows.sort_by_key(|r| paper::order(&r.method));
    rows
}

// ---------------------------------------------------------------------------------------------------------------
// Writing

fn fmt_rho(r: Option<f64>) -> String {
    r.map_or("–".into(), |v| format!("{v}"))
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.filter(|v| v.is_finite()).map_or("n/a".into(), |v| format!("{v:.digits$}"))
}

fn fmt_p(p: f64) -> String {
    if p.is_nan() {
        "–".into()
    } else if p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

fn fmt_est(e: &Estimate) -> String {
    let h = (e.ci_high - e.ci_low) / 2.0;
    if h.is_finite() { format!("{:+.4} ± {:.4}", e.mean, h) } else { format!("{:+.4}", e.mean) }
}

/// The plain-words warning of a chance-level oracle (None when its interval excludes 0.5).
pub fn oracle_warning(p: &Proportion) -> Option<String> {
    p.includes_chance().then(|| {
        format!(
            "**Warning: the ground truth is no better than a coin.** The oracle agrees with held-out human labels on {:.1}% \
             of {} pairs (95% interval {:.1}%–{:.1}%), an interval that includes 50%. Every advantage, contrast and verdict \
             below is measured against this oracle, so none of them says anything about what humans prefer.",
            100.0 * p.rate,
            p.n,
            100.0 * p.ci_low,
            100.0 * p.ci_high
        )
    })
}

/// The report's Markdown.
pub fn markdown(a: &Analysis, figures: &Figures) -> String {
    let p = &a.params;
    let mut md = String::new();
    let _ = writeln!(md, "# {}\n", p.title);
    if a.oracle_agreement.is_none() {
        let _ = writeln!(
            md,
            "**Ground truth.** No agreement of the oracle with human labels was bound: with the embedded task's \
             programmatic oracle the scores are the ground truth itself (`stages/src/oracle.rs` defines it), so no \
             interval applies to it; with a learned oracle, bind `oracle_agreement` to state it.\n"
        );
    }
    if let Some(o) = &a.oracle_agreement {
        let _ = writeln!(
            md,
            "**Ground truth.** The oracle agrees with held-out human labels on {:.1}% of {} pairs (Wilson 95% interval \
             {:.1}%–{:.1}%).\n",
            100.0 * o.rate,
            o.n,
            100.0 * o.ci_low,
            100.0 * o.ci_high
        );
        if let Some(w) = oracle_warning(o) {
            let _ = writeln!(md, "> {w}\n");
        }
    }
    if let Some(c) = cut_note(a) {
        let _ = writeln!(md, "> {c}\n");
    }
    let _ = writeln!(
        md,
        "{} evaluations: {} method configurations × {} values of ρ × {} seed(s). **Advantage** = mean over held-out prompts of \
         r*(x, y^θ) − r*(x, y^ref) (oracle reward of the policy's response minus π_ref's on the same prompt; a prompt's samples \
         averaged first); ± is the half-width of the 95% Student-t interval across seeds (seeds − 1 df), or with one seed the \
         run's own interval over prompts. Seeds vary {}. Significance is at family-wise α = {} (Holm within each ρ).\n",
        a.evaluations,
        a.labels.len(),
        a.rhos.len(),
        a.seeds,
        p.seeds_vary,
        p.alpha
    );
    findings_md(&mut md, a);
    let _ = writeln!(md, "## Advantage over π_ref (Fig. 2)\n");
    let _ = write!(md, "| ρ |");
    for l in &a.labels {
        let _ = write!(md, " {} |", paper::label(l));
    }
    let _ = write!(md, "\n|---|");
    for _ in &a.labels {
        let _ = write!(md, "---|");
    }
    md.push('\n');
    for r in &a.rhos {
        let _ = write!(md, "| {} |", fmt_rho(*r));
        for l in &a.labels {
            match a.cells.iter().find(|c| &c.label == l && rho_key(c.rho) == rho_key(*r)) {
                Some(c) => {
                    let _ = write!(md, " {} |", fmt_est(&c.advantage));
                }
                None => {
                    let _ = write!(md, " – |");
                }
            }
        }
        md.push('\n');
    }
    let _ = writeln!(
        md,
        "\n![advantage vs ρ](advantage_vs_rho.png)\n\n(Fig. 2: each method's mean advantage ± its 95% t-interval \
         over seeds; the methods are drawn slightly apart around each ρ so that their bars do not overlap.)\n"
    );
    let _ = writeln!(
        md,
        "## Per method: raw and length-controlled advantage, win rate, length, KL\n\n\
         The length-controlled (LC) advantage is the intercept a of the least-squares fit d_i = a + b·(len(y_i^θ) − len(y_i^ref)) \
         over prompts, per seed (the advantage at equal length, as AlpacaEval's length-controlled win rate zeroes its length \
         term), aggregated over seeds like the advantage. b is the slope of the advantage on the length difference across \
         prompts: an association, not the oracle's own length term (whatever else comes with longer responses, such as \
         repeats, loads onto it), so raw − a (b times the mean length difference, per seed) is the part of the raw \
         advantage that goes with length, and a is read at equal length — an extrapolation where the policy's \
         responses are rarely as long as π_ref's. The win rate counts a tie with \
         π_ref's sample (oracle scores within 1e-9 times the larger magnitude, or 1e-9 below 1, as `label` decides \
         ties) as half a win. KL is the mean log π_θ(y) − log π_ref(y) over the policy's samples: the reverse KL on the \
         test prompts, not the forward KL(π_ref‖π_θ) on π_ref's samples that the Fig. B.1 table gives for training; \
         a Monte Carlo estimate over the policy's samples of the test prompts, so it can come out below 0 for a policy near π_ref, \
         which the KL itself cannot. b, the win rate, the lengths and KL are means over seeds, without an interval.\n\n\
         | method | ρ | seeds | advantage | LC advantage | b (per token) | win rate vs π_ref | mean length | π_ref length | KL(π_θ‖π_ref) |\n\
         |---|---|---|---|---|---|---|---|---|---|"
    );
    for l in &a.labels {
        for r in &a.rhos {
            if let Some(c) = a.cells.iter().find(|c| &c.label == l && rho_key(c.rho) == rho_key(*r)) {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {:.3} | {:.1} | {:.1} | {:.3} |",
                    paper::label(l),
                    fmt_rho(*r),
                    c.seeds,
                    fmt_est(&c.advantage),
                    c.lc_advantage.as_ref().map_or("n/a".into(), fmt_est),
                    c.lc_slope.map_or("n/a".into(), |b| format!("{b:+.4}")),
                    c.win_rate,
                    c.mean_len,
                    c.ref_mean_len,
                    c.kl
                );
            }
        }
    }
    contrasts_md(&mut md, a);
    further_md(&mut md, a);
    power_md(&mut md, a);
    hyper_md(&mut md, a);
    rm_md(&mut md, a);
    if figures.trajectories {
        let rho = a.trajectories.iter().map(|t| t.rho).min_by_key(|r| rho_key(*r)).flatten();
        let _ = writeln!(
            md,
            "\n## Likelihood of the training responses (Fig. B.1)\n\nMean log π_θ of the chosen (y_w) and rejected (y_l) responses \
             of each training mini-batch, at ρ = {}, averaged over seeds (each point is one mini-batch, so the curves are \
             noisy). The paper reports that DPO pushes both down (likelihood collapse) while distillation and pessimism keep \
             them near π_ref; the table checks that claim rather than assume it. Measured here, the table gives each \
             method's mean over its first and its last tenth of the \
             training steps (nats per response; means over the runs), and for the pessimistic methods the forward KL(π_ref‖π_θ) \
             they regularise, estimated on each mini-batch's samples of π_ref as mean(log π_ref − log π_θ) (METHOD.md; \
             another method estimates it only when π_ref's samples are bound to it), over the last tenth.\n\n\
             ![log-prob trajectories](logp_trajectories.png)\n",
            fmt_rho(rho)
        );
        let rows = likelihood_change(&a.trajectories, rho);
        if !rows.is_empty() {
            let _ = writeln!(
                md,
                "| method | runs | log π_θ(y_w), first → last tenth | change | log π_θ(y_l), first → last tenth | change | \
                 KL(π_ref‖π_θ), last tenth |\n|---|---|---|---|---|---|---|"
            );
            for r in rows {
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.2} → {:.2} | {:+.2} | {:.2} → {:.2} | {:+.2} | {} |",
                    paper::name(&r.method),
                    r.runs,
                    r.chosen.0,
                    r.chosen.1,
                    r.chosen.1 - r.chosen.0,
                    r.rejected.0,
                    r.rejected.1,
                    r.rejected.1 - r.rejected.0,
                    r.kl_last.map_or("–".into(), |k| format!("{k:.3}"))
                );
            }
        }
    }
    if figures.members {
        members_md(&mut md, a);
    }
    md
}

fn findings_md(md: &mut String, a: &Analysis) {
    let _ = writeln!(
        md,
        "## Findings of the paper, measured here\n\nEach finding of the paper (§6.2) against the contrasts it needs: *holds* when \
         every one is significant in its direction (p̃ < {alpha}: Holm-adjusted within its ρ, see the contrasts below), \
         *contradicted* when one is significant the other way both within its ρ and among the finding's own contrasts \
         (p̃ and p̃_f < {alpha}; p̃_f is Holm-adjusted over all the contrasts of the finding, across its ρ: a finding that \
         spans seven ρ would otherwise be contradicted by chance up to seven times as often as α; the two families \
         differ in size, so either adjusted p may be the larger, and a contradiction needs both — stricter than \
         METHOD.md's rule, which asks for one contrast significant the other way), *inconclusive* otherwise \
         (with few seeds that includes evidence leaning wholly one way: read the counts in italics), *not tested* \
         when none could be measured (a method not run, or fewer than two seeds). Evidence: \
         first where the point estimates lean (in italics; \"against it\" counted as the verdict counts it), then each \
         difference of advantages [95% interval], p̃, p̃_f.\n\n| finding | verdict | evidence |\n|---|---|---|",
        alpha = a.params.alpha
    );
    for f in &a.findings {
        let mut ev: Vec<String> = f.evidence.iter().zip(&f.p_finding).map(|(c, p_f)| evidence_text(c, *p_f)).collect();
        if !f.missing.is_empty() {
            ev.push(format!("not measured or untestable: {}", f.missing.join("; ")));
        }
        if f.id == "p-dpo-no-clear-gain" {
            ev.push(format!(
                "holds only if every interval lies below +{} (the smallest difference that matters)",
                a.params.min_difference
            ));
        }
        // first: where the estimates lean, which the verdict alone does not say
        if let Some(lean) = f.lean(a.params.alpha, a.params.min_difference) {
            ev.insert(0, format!("*{lean}*"));
        }
        let _ = writeln!(md, "| {} | {} | {} |", f.text, verdict_md(f), ev.join("<br>"));
    }
    md.push('\n');
    if let Some(w) = &a.without_selection_seeds {
        without_selection_seeds_md(md, a, w);
    }
}

/// One contrast of a finding's evidence: the difference [95% interval], p̃ (Holm within its ρ), p̃_f (Holm among the
/// finding's contrasts).
fn evidence_text(c: &Contrast, p_f: f64) -> String {
    format!(
        "{} − {} at {}: {:+.4} [{:+.4}, {:+.4}], p̃ = {}, p̃_f = {}",
        paper::name(&c.first),
        paper::name(&c.second),
        paper::rho_text(c.rho),
        c.test.diff,
        c.test.ci_low,
        c.test.ci_high,
        fmt_p(c.p_holm),
        fmt_p(p_f)
    )
}

/// A finding's verdict in bold, and METHOD.md's rule's beside it where that rule (a contradiction needs one contrast
/// significant the other way within its ρ, no second adjustment) decides otherwise.
fn verdict_md(f: &paper::Assessment) -> String {
    let v = format!("**{}**", f.verdict.as_str());
    if f.verdict_within_rho == f.verdict {
        v
    } else {
        format!("{v} (by METHOD.md's rule, without p̃_f: {})", f.verdict_within_rho.as_str())
    }
}

/// The findings again without the selection's seeds, beside the verdicts on every seed.
fn without_selection_seeds_md(md: &mut String, a: &Analysis, w: &WithoutSelectionSeeds) {
    let list = w.excluded.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
    let s = if w.excluded.len() == 1 { "" } else { "s" };
    let _ = write!(
        md,
        "**Without the selection seed{s}.** The β/τ/γ candidates were trained and chosen on seed{s} {list}, where each \
         method's final policy is its chosen candidate: its test result keeps the training luck that won the \
         validation, and a method with more candidates had more luck to pick from. The same findings on the other \
         {} seed(s) only",
        w.seeds
    );
    if w.seeds < 2 {
        let _ = writeln!(md, ": not testable (a paired t-test needs two seeds).\n");
        return;
    }
    let _ = writeln!(
        md,
        " ({} df per contrast, so this check has less power than the table above; it shows whether a verdict on \
         every seed rests on the selection seed{s}, and what the other seeds say by themselves, by the rule above):\n\n| finding | all {} seeds | without seed{s} {list} | where the estimates lean without \
         them |\n|---|---|---|---|",
        w.seeds - 1,
        a.seeds
    );
    for (all, without) in a.findings.iter().zip(&w.findings) {
        let mut lean = without.lean(a.params.alpha, a.params.min_difference).unwrap_or_default();
        let against: Vec<String> = without
            .evidence
            .iter()
            .zip(&without.p_finding)
            .filter(|(c, _)| without.is_against_within_rho(c, a.params.alpha))
            .map(|(c, p_f)| evidence_text(c, *p_f))
            .collect();
        if !against.is_empty() {
            lean += &format!("<br>significant against it within its ρ: {}", against.join("; "));
        }
        let _ =
            writeln!(md, "| {} | {} | {} | {lean} |", all.text, verdict_md(all).replace("**", ""), verdict_md(without));
    }
    md.push('\n');
}

fn contrasts_md(md: &mut String, a: &Analysis) {
    if a.contrasts.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## Contrasts fixed in advance\n\nPer ρ, the paper's seven contrasts (d-DPO, dp-DPO, e-DPO each against DPO and IPO; \
         p-DPO against DPO) plus those a finding needs there (e-DPO against the other methods at ρ ≤ {}; d-DPO against \
         the others at ρ > 0.5). Each is the mean over seeds of the paired difference of the two methods' advantages (same \
         prompts, same π_ref samples, same seed), tested with Student's t on seeds − 1 df. **Family**: all contrasts at one \
         ρ (each ρ is its own experiment — its own D_ρ, reward models and policies); Holm's step-down correction within it \
         controls the family-wise error at α = {}. A finding over several ρ holds only if every contrast does (which keeps \
         its level without a further correction); a contradiction must also pass Holm over the finding's own contrasts \
         (the findings above).\n\n| ρ | contrast | seeds | difference | 95% interval | p | Holm p | family | at α |\n\
         |---|---|---|---|---|---|---|---|---|",
        paper::HARDEST_RHO,
        a.params.alpha
    );
    for c in &a.contrasts {
        let _ = writeln!(md, "{}", contrast_row(c, a.params.alpha, true));
    }
}

fn further_md(md: &mut String, a: &Analysis) {
    if a.params.contrasts.is_empty() {
        return;
    }
    let asked: Vec<String> =
        a.params.contrasts.iter().map(|[x, y]| format!("{} − {}", paper::name(x), paper::name(y))).collect();
    let _ = writeln!(
        md,
        "\n## Further contrasts fixed in advance\n\nThe contrasts this report was asked for besides the paper's ({}), at \
         every ρ where both methods were evaluated, paired and tested as above. **Family**: all of them at every ρ \
         together ({} contrasts); Holm's correction within it controls the family-wise error at α = {}. They leave the \
         paper's families and the findings above unchanged.\n",
        asked.join("; "),
        a.further.first().map_or(0, |c| c.family),
        a.params.alpha
    );
    if a.further.is_empty() {
        let _ = writeln!(md, "No ρ has an evaluation of both methods of any of them as one configuration.");
        return;
    }
    let _ = writeln!(
        md,
        "| ρ | contrast | seeds | difference | 95% interval | p | Holm p | at α |\n|---|---|---|---|---|---|---|---|"
    );
    for c in &a.further {
        let _ = writeln!(md, "{}", contrast_row(c, a.params.alpha, false));
    }
}

/// One contrast as a table row: ρ, contrast, seeds, difference, 95% interval ("–" with fewer than two seeds), p,
/// Holm p, the family's size where the table has that column (each ρ its own family), and the verdict at α.
fn contrast_row(c: &Contrast, alpha: f64, with_family: bool) -> String {
    let t = &c.test;
    let interval = if t.ci_low.is_nan() { "–".into() } else { format!("[{:+.4}, {:+.4}]", t.ci_low, t.ci_high) };
    let family = if with_family { format!(" {} |", c.family) } else { String::new() };
    format!(
        "| {} | {} − {} | {} | {:+.4} | {} | {} | {} |{family} {} |",
        fmt_rho(c.rho),
        paper::name(&c.first),
        paper::name(&c.second),
        c.seeds,
        t.diff,
        interval,
        fmt_p(t.p_value),
        fmt_p(c.p_holm),
        if t.p_value.is_nan() {
            format!("untestable ({})", t.untestable.map_or("no test", crate::stats::Untestable::reason))
        } else {
            c.direction(alpha).to_string()
        }
    )
}

fn power_md(md: &mut String, a: &Analysis) {
    let p = &a.params;
    let _ = writeln!(md, "\n## Power of this design\n");
    let Some(w) = &a.power else {
        let _ = writeln!(
            md,
            "Not estimable: no contrast was measured on two or more seeds with any variation between them, so the \
             variance between seeds is unknown.\n"
        );
        return;
    };
    let design = match (w.prompts, w.samples_per_prompt) {
        (Some(n), Some(m)) => format!("{} seeds × {:.0} test prompts × {:.0} sample(s) per prompt", w.seeds, n, m),
        _ => format!("{} seeds", w.seeds),
    };
    let _ = writeln!(
        md,
        "Design: {design}. Over {} contrasts, the paired differences vary between seeds with sd {:.4} (pooled; {} df each, \
         so this is itself uncertain). With a two-sided paired t-test on {} df, the smallest advantage difference detected \
         with {:.0}% power is **{:.4}** at α = {} and **{:.4}** at Holm's first step (α/{} = {:.4}, the conservative case). \
         Target: {} (`min_difference`).\n",
        w.contrasts,
        w.seed_var.sqrt(),
        w.seeds.saturating_sub(1),
        w.seeds.saturating_sub(1),
        100.0 * p.power,
        w.detectable,
        p.alpha,
        w.detectable_holm,
        w.family,
        p.alpha / w.family.max(1) as f64,
        p.min_difference
    );
    let _ = writeln!(
        md,
        "The contrasts are not alike: the median one varies between seeds with sd {:.4} (it alone would detect **{:.4}** \
         at α = {}), and the most variable one carries {:.0}% of the pooled variance — where that share is large, a few \
         unstable cells (a policy that diverged on one seed: see the ± of the per-method table) set the pooled figure, \
         and the plans below, which use it, are pessimistic for the rest.\n",
        w.median_seed_var.sqrt(),
        w.detectable_median,
        p.alpha,
        100.0 * w.largest_share
    );
    let Some(c) = &w.components else {
        let _ = writeln!(
            md,
            "{}",
            if a.samples_bound {
                "The evaluations' `samples` are bound, but splitting this variance into its between-seed and \
                 within-seed parts (and planning the numbers of prompts and samples per prompt) needs at least two \
                 prompts in every evaluation.\n"
            } else {
                "Bind the evaluations' `samples` to the report to split this variance into its between-seed and \
                 within-seed parts and to plan the numbers of prompts and samples per prompt.\n"
            }
        );
        return;
    };
    let within = if c.within_prompt.is_nan() {
        String::new()
    } else {
        format!(" + within prompt {:.3e}/(n·m)", c.within_prompt)
    };
    let _ = writeln!(
        md,
        "Variance of one seed's difference = between seeds {:.3e} + between prompts {:.3e}/n{within}, for n prompts × m \
         samples per prompt (measured: the differences vary over seeds with variance {:.3e}, of which the evaluations' \
         sampling error predicts {:.3e}). ",
        c.between_seed,
        c.between_prompt,
        w.seed_var,
        w.sampling_var.unwrap_or(f64::NAN)
    );
    if w.sampling_var.is_some_and(|sv| sv >= w.seed_var) {
        let _ = writeln!(
            md,
            "The seeds' differences vary less than their sampling error alone predicts, so the between-seed part is \
             estimated at 0: on {} df that is chance, not evidence that seeds do not matter, and the plans below, which \
             assume it, are optimistic (more prompts cannot remove a between-seed variance that is there). ",
            w.seeds.saturating_sub(1)
        );
    }
    if c.within_prompt.is_nan() {
        let _ = writeln!(
            md,
            "With one sample per prompt the within-prompt part cannot be told from the between-prompt part; it is counted \
             with the prompts (more samples per prompt are assumed not to help: draw ≥ 2 per prompt to measure it). "
        );
    }
    let plan_text = |pl: &Option<Plan>, what: &str| -> String {
        match pl {
            Some(Plan { design: Some(Design { prompts, samples_per_prompt, .. }), detectable, .. }) => format!(
                "{what}: **{prompts} prompts × {samples_per_prompt} sample(s)** per seed detect {detectable:.4}."
            ),
            Some(pl) => format!(
                "{what}: no number of prompts or samples reaches {} with {} seeds (the floor from the between-seed variance alone \
                 is {:.4}); {}.",
                p.min_difference,
                w.seeds,
                pl.floor,
                match pl.seeds_needed {
                    Some(s) => format!("**{s} seeds** would lower the floor below it"),
                    None => format!("not even {} seeds would", stats::MAX_SEEDS),
                }
            ),
            None => String::new(),
        }
    };
    let _ = writeln!(
        md,
        "\nTo detect {} with {:.0}% power at {} seeds:\n\n- {}\n- {}\n- {}\n\n(`stats::plan_design` computes these for other \
         targets; a seed adds a whole training run, a prompt or sample only an evaluation.)\n",
        p.min_difference,
        100.0 * p.power,
        w.seeds,
        plan_text(&w.plan_prompts, &format!("at α = {}, one sample per prompt", p.alpha)),
        if c.within_prompt.is_nan() {
            "more samples per prompt: unknown with one sample per prompt".to_string()
        } else {
            plan_text(&w.plan_samples, &format!("at α = {}, with the current number of prompts", p.alpha))
        },
        plan_text(&w.plan_prompts_holm, &format!("at Holm's first step (α/{}), one sample per prompt", w.family)),
    );
}

fn hyper_md(md: &mut String, a: &Analysis) {
    let _ = writeln!(
        md,
        "\n## Hyper-parameters of the evaluated policies\n\nβ, τ and γ of each policy evaluated above; where a selection \
         stage chose a value by validation (mean validation advantage over seeds), the choice with its validation advantage, \
         the number of candidates and the number of seeds the candidates were trained on (candidates may be trained on \
         fewer seeds than the comparison; the final policies are trained with the chosen values on every seed). Where the \
         candidates were trained on one of the comparison's seeds, that seed's final policy is the chosen candidate: \
         its test prompts are held out from the validation prompts, but its corpus, π_ref and pairs are the ones the \
         choice was made on, so a choice that won by noise favours its method on that seed. A γ with one candidate \
         value was not selected here but set by the manifest."
    );
    let list = |v: &[f64]| {
        if v.is_empty() { "–".to_string() } else { v.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(", ") }
    };
    let choices: Vec<&Choice> = a.hyper.iter().flat_map(|h| &h.chosen).collect();
    let measured = choices.iter().filter(|c| c.runner_up.as_ref().is_some_and(|r| r.margin_se.is_some())).count();
    let ties = choices.iter().filter(|c| c.runner_up.as_ref().and_then(|r| r.within_noise()) == Some(true)).count();
    if measured > 0 {
        let _ = writeln!(
            md,
            "\nThe runner-up of each choice, and the margin it lost by ± its standard error over the validation prompts \
             (paired: both candidates met the same prompts and π_ref samples). **{ties} of {measured}** choices beat \
             their runner-up by less than 1.96 standard errors (*a tie within noise*): validation cannot tell those \
             candidates apart, and a change as small as float rounding may choose the other one. Their final policies \
             are what this run chose, not what the method would choose with a larger validation set."
        );
    }
    let edges = a.hyper.iter().flat_map(|h| &h.edges).filter(|e| !e.is_empty()).count();
    if edges > 0 {
        let _ = writeln!(
            md,
            "\n**{edges} of {}** choices lie at an end of their grid (*the lowest* or *the highest* value tried, marked \
             below): the best value may lie beyond the grid, where validation did not look, and the method may be \
             under-tuned against the others. Widen that method's grid on that side (`--set` of its grid variable) to \
             compare every method at its best.",
            choices.len()
        );
    }
    // the header after every paragraph: a table's rows must follow its header, or Markdown renders them as text
    let _ = writeln!(md, "\n| method | ρ | β | τ | γ | chosen by validation |\n|---|---|---|---|---|---|");
    fn sym(param: &str) -> &str {
        match param {
            "beta" => "β",
            "tau" => "τ",
            "gamma" => "γ",
            other => other,
        }
    }
    for h in &a.hyper {
        // no selection among the report's inputs: set in the manifest, or chosen by a selection not given to it
        let chosen = if h.chosen.is_empty() {
            "not by a selection given to this report".to_string()
        } else {
            h.chosen
                .iter()
                .zip(&h.edges)
                .map(|(c, edges)| {
                    let edges: Vec<String> = edges
                        .iter()
                        .map(|(param, low)| {
                            format!("*the {} {} tried*", if *low { "lowest" } else { "highest" }, sym(param))
                        })
                        .collect();
                    let sym = sym(&c.param);
                    let gamma = |g: Option<f64>| g.map(|g| format!(", γ = {g}")).unwrap_or_default();
                    let runner_up = c
                        .runner_up
                        .as_ref()
                        .map(|r| {
                            let se = r.margin_se.map(|se| format!(" ± {se:.4}")).unwrap_or_default();
                            let tie = if r.within_noise() == Some(true) { ", *a tie within noise*" } else { "" };
                            format!("; runner-up {sym} = {}{} by {:.4}{se}{tie}", r.value, gamma(r.gamma), r.margin)
                        })
                        .unwrap_or_default();
                    let edges = if edges.is_empty() { String::new() } else { format!("; {}", edges.join(", ")) };
                    format!(
                        "{sym} = {}{} (validation {:+.4}, {} candidates, {} seed{}{runner_up}{edges})",
                        c.value,
                        gamma(c.gamma),
                        c.advantage,
                        c.candidates,
                        c.seeds,
                        if c.seeds == 1 { "" } else { "s" }
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            paper::label(&h.label),
            fmt_rho(h.rho),
            list(&h.beta),
            list(&h.tau),
            list(&h.gamma),
            chosen
        );
    }
}

fn rm_md(md: &mut String, a: &Analysis) {
    if a.reward_models.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "\n## Reward models\n\nAgainst the oracle on held-out labelled pairs (`eval`; pairs the oracle scores as a tie left \
         out): accuracy overall, on pairs whose lengths \
         differ by less than the margin, and length sensitivity (share of length-differing pairs where the model prefers the \
         longer response); then agreement with its own training table's labels on rows held out of training. Means over \
         seeds, the first three ± the half-width of their 95% Student-t interval across seeds (seeds − 1 df; seeds vary the \
         data the model is trained and measured on); n/a where the metrics do not carry the figure.\n\n\
         | reward model | ρ | ρ′ | seeds | accuracy vs oracle | within margin | length sensitivity | held-out accuracy (own labels) | held-out length sensitivity |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    let mut g: BTreeMap<(String, i64, i64), Vec<&RmRow>> = BTreeMap::new();
    for r in &a.reward_models {
        g.entry((r.stage.clone(), rho_key(r.rho), rho_key(r.member))).or_default().push(r);
    }
    for rows in g.values() {
        let values = |f: fn(&RmRow) -> Option<f64>| -> Vec<f64> { rows.iter().filter_map(|r| f(r)).collect() };
        let m = |f: fn(&RmRow) -> Option<f64>| {
            let v = values(f);
            (!v.is_empty()).then(|| stats::mean(&v))
        };
        let with_ci = |f: fn(&RmRow) -> Option<f64>| {
            let v = values(f);
            match v.len() {
                0 => "n/a".to_string(),
                1 => format!("{:.3}", v[0]),
                _ => {
                    let e = stats::estimate(&v);
                    format!("{:.3} ± {:.3}", e.mean, (e.ci_high - e.ci_low) / 2.0)
                }
            }
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            rows[0].stage,
            fmt_rho(rows[0].rho),
            fmt_rho(rows[0].member),
            rows.len(),
            with_ci(|r| r.eval_accuracy),
            with_ci(|r| r.eval_within_margin),
            with_ci(|r| r.eval_length_sensitivity),
            fmt_opt(m(|r| r.held_out_accuracy), 3),
            fmt_opt(m(|r| r.length_sensitivity), 3)
        );
    }
    if !a.length_bias.is_empty() {
        let _ = writeln!(
            md,
            "\nThe length bias the reward models learned from their data: each stage's length sensitivity against the \
             oracle at its highest ρ minus at its lowest, paired by seed (Student's t on seeds − 1 df). A difference near \
             0 would mean the reward models did not pick up the bias of D_ρ, so the comparison across ρ could not show \
             what distillation does with a biased reward model.\n"
        );
        for s in &a.length_bias {
            let ci = if s.test.ci_low.is_finite() {
                format!(" [{:+.3}, {:+.3}], p = {}", s.test.ci_low, s.test.ci_high, fmt_p(s.test.p_value))
            } else {
                String::new()
            };
            let _ = writeln!(
                md,
                "- `{}`: ρ = {} − ρ = {}: {:+.3}{ci} ({} seed(s))",
                s.stage, s.high, s.low, s.test.diff, s.seeds
            );
        }
    }
}

/// One stage's learned length bias: length sensitivity against the oracle at its highest ρ minus at its lowest.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LengthBias {
    pub stage: String,
    pub low: f64,
    pub high: f64,
    pub seeds: usize,
    pub test: stats::Test,
}

/// For every stage of single reward models (no ρ′) trained at two or more ρ, the per-seed difference of their length
/// sensitivity against the oracle between the highest and the lowest ρ, tested over the seeds that have both.
pub fn length_bias_learned(rows: &[RmRow]) -> Vec<LengthBias> {
    let mut by_stage: BTreeMap<&str, Vec<&RmRow>> = BTreeMap::new();
    for r in rows.iter().filter(|r| r.member.is_none() && r.rho.is_some() && r.eval_length_sensitivity.is_some()) {
        by_stage.entry(r.stage.as_str()).or_default().push(r);
    }
    let mut out = vec![];
    for (stage, rs) in by_stage {
        let rhos: Vec<f64> = rs.iter().filter_map(|r| r.rho).collect();
        let low = rhos.iter().copied().fold(f64::INFINITY, f64::min);
        let high = rhos.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if rho_key(Some(low)) == rho_key(Some(high)) {
            continue;
        }
        let at = |rho: f64| -> BTreeMap<Option<i64>, f64> {
            rs.iter()
                .filter(|r| rho_key(r.rho) == rho_key(Some(rho)))
                .filter_map(|r| Some((r.seed, r.eval_length_sensitivity?)))
                .collect()
        };
        let (lo, hi) = (at(low), at(high));
        let diffs: Vec<f64> = hi.iter().filter_map(|(s, h)| lo.get(s).map(|l| h - l)).collect();
        if diffs.is_empty() {
            continue;
        }
        out.push(LengthBias { stage: stage.to_string(), low, high, seeds: diffs.len(), test: stats::t_test(&diffs) });
    }
    out
}

fn members_md(md: &mut String, a: &Analysis) {
    let _ = writeln!(
        md,
        "\n## e-DPO ensemble members (Fig. B.3)\n\nLeft, as the paper draws it: per ρ, the share of training examples whose \
         policy implicit reward each member matches best. Right: the share of mini-batches whose minimum distillation loss — \
         the member e-DPO trains on — was each member. Means over steps and seeds.\n\n| ρ | best match per example | chosen per mini-batch |\n|---|---|---|"
    );
    let fmt = |names: &[String], v: &[f64]| {
        if v.is_empty() {
            "n/a (no `best_member_<m>` columns)".to_string()
        } else {
            v.iter()
                .enumerate()
                .map(|(m, x)| format!("{}: {x:.2}", names.get(m).map_or("?", |s| s.as_str())))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    for u in &a.members {
        let _ = writeln!(
            md,
            "| {} | {} | {} |",
            fmt_rho(u.rho),
            fmt(&u.members, &u.best_per_example),
            fmt(&u.members, &u.chosen_per_batch)
        );
    }
    let _ = writeln!(md, "\n![member usage](member_usage.png)\n");
}

/// Which figures were drawn.
#[derive(Debug, Default, Clone, Copy)]
pub struct Figures {
    pub trajectories: bool,
    pub members: bool,
}

fn draw(a: &Analysis, out: &std::path::Path) -> StageResult<Figures> {
    plots::register_font();
    let points: Vec<AdvantagePoint> = a
        .cells
        .iter()
        .map(|c| AdvantagePoint {
            label: paper::label(&c.label),
            rho: c.rho,
            mean: c.advantage.mean,
            ci_low: c.advantage.ci_low,
            ci_high: c.advantage.ci_high,
        })
        .collect();
    let labels: Vec<String> = a.labels.iter().map(|l| paper::label(l)).collect();
    plots::plot_advantage(&out.join("advantage_vs_rho.png"), &points, &labels)?;
    let rho = a.trajectories.iter().map(|t| t.rho).min_by_key(|r| rho_key(*r)).flatten();
    let names: Vec<String> = a.trajectories.iter().map(|t| paper::name(&t.method)).collect();
    let runs: Vec<Run> = a
        .trajectories
        .iter()
        .zip(&names)
        .filter(|(t, _)| rho_key(t.rho) == rho_key(rho))
        .map(|(t, n)| Run { label: n, step: &t.step, logp_chosen: &t.logp_chosen, logp_rejected: &t.logp_rejected })
        .collect();
    let mut methods: Vec<String> = names.iter().cloned().collect::<BTreeSet<_>>().into_iter().collect();
    methods.sort_by_key(|l| (paper::METHODS.iter().position(|m| m.1 == l).unwrap_or(99), l.clone()));
    Ok(Figures {
        trajectories: plots::plot_trajectories(&out.join("logp_trajectories.png"), &runs, rho, &methods)?,
        members: plots::plot_members(&out.join("member_usage.png"), &a.members)?,
    })
}

fn results_json(a: &Analysis) -> Value {
    json!({
        "alpha": a.params.alpha,
        "min_difference": a.params.min_difference,
        "oracle_agreement": a.oracle_agreement,
        "oracle_at_chance": a.oracle_agreement.map(|o| o.includes_chance()),
        "cells": a.cells,
        "findings": a.findings,
        "findings_without_selection_seeds": a.without_selection_seeds,
        "evaluations_with_cut_samples": a.cut,
        "contrasts": a.contrasts,
        "further_contrasts": a.further,
        "power": a.power,
        "hyper_parameters": a.hyper,
        "reward_models": a.reward_models,
        "length_bias_learned": a.length_bias,
        "member_usage": a.members,
        "training": a.trajectories.iter().map(|t| json!({"node": t.node, "method": t.method, "rho": t.rho, "kl_last_tenth": tenth(&t.kl, true)})).collect::<Vec<_>>(),
    })
}

impl Stage for Report {
    fn kind(&self) -> &'static str {
        "report"
    }
    fn doc(&self) -> &'static str {
        "report.md and PNG figures: findings of the paper with verdicts, advantage and length-controlled advantage per method and ρ (Fig. 2), Holm-corrected paired contrasts, a power estimate, reward models, Fig. B.1 and B.3"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        &[
            InputSpec {
                name: "evals",
                required: true,
                many: true,
                doc: "evaluate.summary of every policy (coords rho, method, seed)",
            },
            InputSpec {
                name: "samples",
                required: false,
                many: true,
                doc: "evaluate.samples of the same evaluations (matched by node): within-seed variance for the power estimate",
            },
            InputSpec {
                name: "metrics",
                required: false,
                many: true,
                doc: "policy.metrics of every policy (coords rho, method, seed)",
            },
            InputSpec { name: "rm_metrics", required: false, many: true, doc: "train_rm.metrics of the reward models" },
            InputSpec {
                name: "selection",
                required: false,
                many: true,
                doc: "select.selection: values chosen by validation (tabulated; trajectories of other values dropped)",
            },
            InputSpec {
                name: "oracle_agreement",
                required: false,
                many: false,
                doc: "label.labelled of held-out pairs with human labels: the oracle's agreement with them (real data)",
            },
        ]
    }
    fn outputs(&self) -> &'static [OutputSpec] {
        &[OutputSpec { name: "report", kind: ArtifactKind::Dir, doc: "report.md, results.json and PNG figures" }]
    }
    fn validate(&self, params: &Map<String, Value>) -> StageResult<()> {
        parse(params).map(|_| ())
    }
    fn params_schema(&self) -> schemars::Schema {
        schemars::schema_for!(Params)
    }
    fn runs(&self) -> Runs {
        Runs::InProcess(run)
    }
}

pub fn run(ctx: &dyn Ctx) -> StageResult<Value> {
    let params = parse(ctx.params())?;
    // read
    let inputs = read_inputs(ctx)?;
    check_contrasts(&inputs.evals, &params.contrasts)?;
    crate::evaluation::check_comparable(&inputs.evals, "evals")?;
    // compute
    let a = analyse(inputs, params);
    // write
    let out = ctx.output_path("report");
    std::fs::create_dir_all(&out)?;
    let figures = draw(&a, &out)?;
    std::fs::write(out.join("report.md"), markdown(&a, &figures))?;
    let results = results_json(&a);
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results).map_err(anyhow::Error::from)? + "\n",
    )?;
    // the directory is the node's scratch space, gone once the output is stored: `rmdistill report` copies it out
    ctx.log(&format!("{} evaluations, {} cells; `rmdistill report` copies it out", a.evaluations, a.cells.len()));
    if let Some(w) = a.oracle_agreement.as_ref().and_then(oracle_warning) {
        ctx.warn(&w.replace("**", "")); // the report's own words, without its Markdown
    }
    if let Some(c) = cut_note(&a) {
        ctx.warn(&c.replace("**", "").replace('`', ""));
    }
    Ok(json!({
        "evaluations": a.evaluations,
        "cells": a.cells.len(),
        "findings": a.findings.iter().map(|f| json!({"id": f.id, "verdict": f.verdict})).collect::<Vec<_>>(),
        "oracle_at_chance": a.oracle_agreement.map(|o| o.includes_chance()),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paper::Verdict;
    use arrow::array::{ArrayRef, Int8Array, RecordBatch};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn row(method: &str, rho: f64, seed: i64, adv: f64) -> EvalRow {
        EvalRow {
            node: format!("eval_{method}@rho={rho},seed={seed}"),
            label: method.into(),
            method: method.into(),
            rho: Some(rho),
            seed: Some(seed),
            advantage: Estimate { mean: adv, se: 0.01, n: 200, ci_low: adv - 0.02, ci_high: adv + 0.02 },
            win_rate: 0.5,
            mean_len: 10.0,
            ref_mean_len: 9.0,
            kl: 1.0,
            beta: Some(0.1),
            tau: None,
            gamma: None,
            stats: None,
            sampling: None,
            cut_samples: None,
        }
    }

    #[test]
    fn contrasts_are_paired_over_seeds_and_holm_corrected_per_rho() {
        // ρ = 0.4 with DPO, IPO and d-DPO: the family is {d-DPO − DPO, d-DPO − IPO} (m = 2).
        // d-DPO − DPO per seed: (0.10, 0.04, 0.14) → t = 3.2118 on 2 df, p = 0.084791 (worked in stats.rs).
        // d-DPO − IPO per seed: (0.05, 0.06, 0.07): mean 0.06, sd 0.01, se 0.0057735, t = 10.3923 on 2 df;
        // F(t) = ½ + t/(2√(2 + t²)) = 0.5 + 10.3923/(2·√110) = 0.995433, p = 0.009134.
        // Holm: 0.009134·2 = 0.018268 (d-DPO − IPO), then max(0.018268, 0.084791·1) = 0.084791 (d-DPO − DPO).
        let mut rows = vec![];
        for (s, (d, dpo, ipo)) in [(0.30, 0.20, 0.25), (0.25, 0.21, 0.19), (0.41, 0.27, 0.34)].into_iter().enumerate() {
            rows.push(row("d-dpo", 0.4, s as i64, d));
            rows.push(row("dpo", 0.4, s as i64, dpo));
            rows.push(row("ipo", 0.4, s as i64, ipo));
        }
        let (c, vars) = contrasts(&rows, &HashMap::new());
        assert_eq!(c.len(), 2);
        let dd = c.iter().find(|c| c.second == "dpo").unwrap();
        let di = c.iter().find(|c| c.second == "ipo").unwrap();
        assert!((dd.test.p_value - 0.084791).abs() < 2e-6 && (dd.p_holm - 0.084791).abs() < 2e-6, "{dd:?}");
        assert!((di.test.stat - 10.3923).abs() < 1e-3, "{di:?}");
        assert!((di.test.p_value - 0.009134).abs() < 2e-6 && (di.p_holm - 0.018268).abs() < 4e-6, "{di:?}");
        assert_eq!((dd.family, dd.seeds), (2, 3));
        assert_eq!(di.direction(0.05), "better");
        assert_eq!(dd.direction(0.05), "n.s.");
        // variance over seeds without samples tables: no split
        assert_eq!(vars.len(), 2);
        assert!(vars.iter().all(|v| v.sampling_var.is_nan()));
        let p = power(&vars, 2, &Params::default()).unwrap();
        assert!(p.components.is_none() && p.detectable > 0.0 && p.detectable_holm > p.detectable);
        // by hand: per-seed differences (0.10, 0.04, 0.14) and (0.05, 0.06, 0.07) have variances 0.0025333 and 0.0001;
        // the median of two is their mean, and the larger carries 0.0025333 / 0.0026333 of the sum
        assert!((p.median_seed_var - 0.00131667).abs() < 1e-7, "{p:?}");
        assert!((p.median_seed_var - p.seed_var).abs() < 1e-12);
        assert!((p.largest_share - 0.962025).abs() < 1e-5, "{p:?}");
        // three contrasts, one unstable: the median is the middle one, not the mean
        let mut three = vars.clone();
        three.push(ContrastVariance { seed_var: 0.09, ..vars[1] });
        let q = power(&three, 3, &Params::default()).unwrap();
        assert!((q.median_seed_var - 0.0025333).abs() < 1e-6 && q.seed_var > 0.03, "{q:?}");
        assert!(q.detectable_median < q.detectable && (q.largest_share - 0.09 / 0.0926333).abs() < 1e-5, "{q:?}");
    }

    /// Two seeds with the same difference (a coarse oracle on few prompts gives that often) test nothing: before,
    /// se = 0 made p = 0 and the contrast "significant", and a finding *contradicted*.
    #[test]
    fn a_contrast_without_spread_between_seeds_is_untestable_not_significant() {
        let mut rows = vec![];
        for s in 0..2 {
            rows.push(row("d-dpo", 0.2, s, 0.1));
            rows.push(row("dpo", 0.2, s, 0.5333));
            rows.push(row("ipo", 0.2, s, 0.2 + 0.1 * s as f64));
        }
        let (c, vars) = contrasts(&rows, &HashMap::new());
        let dd = c.iter().find(|c| c.first == "d-dpo" && c.second == "dpo").unwrap();
        assert!(dd.test.p_value.is_nan() && dd.p_holm.is_nan() && !dd.significant(0.05), "{dd:?}");
        assert!(contrast_row(dd, 0.05, false).contains("untestable (the same difference on every seed)"));
        // the other contrast of the family is tested, and alone in it
        let di = c.iter().find(|c| c.first == "d-dpo" && c.second == "ipo").unwrap();
        assert!(!di.test.p_value.is_nan() && di.family == 1, "{di:?}");
        let f = paper::FINDINGS.iter().find(|f| f.contrasts.contains(&("d-dpo", "dpo"))).unwrap();
        let a = paper::assess(f, &c, &[Some(0.2)], 0.05, 0.02);
        assert_ne!(a.verdict, Verdict::Contradicted);
        assert!(
            a.missing.iter().any(|m| m.contains("d-DPO − DPO at ρ = 0.2 (the same difference on every seed)")),
            "{:?}",
            a.missing
        );
        // every contrast without spread: no power estimate (it would "detect 0")
        let flat: Vec<EvalRow> = rows.iter().filter(|r| r.method != "ipo").cloned().collect();
        let (_, vars_flat) = contrasts(&flat, &HashMap::new());
        assert!(power(&vars_flat, 1, &Params::default()).is_none());
        assert!(power(&vars, 2, &Params::default()).is_some());
    }

    #[test]
    fn alpha_and_power_must_make_a_test() {
        let e = |v: serde_json::Value| parse(v.as_object().unwrap()).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e(serde_json::json!({"alpha": 1e-17})).contains("must be at least 1e-9"));
        assert!(e(serde_json::json!({"alpha": 0.9, "power": 0.5})).contains("must exceed alpha (0.9)"));
        assert!(e(serde_json::json!({"alpha": 0.5, "power": 0.5})).contains("must exceed alpha"));
        assert_eq!(e(serde_json::json!({"alpha": 0.01, "power": 0.9})), "");
    }

    #[test]
    fn further_contrasts_are_one_family_over_every_rho() {
        // ρ = 0.4 as in the test above; ρ = 0.6 has DPO and d-DPO only, d-DPO − DPO per seed (0.05, 0.06, 0.07):
        // p = 0.009134 (above). Asked for d-DPO − DPO and d-DPO − IPO: three contrasts exist (IPO is missing at
        // 0.6), one family. Holm over p = (0.084791, 0.009134, 0.009134): 3·0.009134 = 0.027402, then
        // max(0.027402, 2·0.009134) = 0.027402, then max(0.027402, 0.084791) = 0.084791.
        let mut rows = vec![];
        for (s, (d, dpo, ipo)) in [(0.30, 0.20, 0.25), (0.25, 0.21, 0.19), (0.41, 0.27, 0.34)].into_iter().enumerate() {
            rows.push(row("d-dpo", 0.4, s as i64, d));
            rows.push(row("dpo", 0.4, s as i64, dpo));
            rows.push(row("ipo", 0.4, s as i64, ipo));
        }
        for (s, d) in [0.05, 0.06, 0.07].into_iter().enumerate() {
            rows.push(row("d-dpo", 0.6, s as i64, 0.2 + d));
            rows.push(row("dpo", 0.6, s as i64, 0.2));
        }
        let asked = [["d-dpo".to_string(), "dpo".to_string()], ["d-dpo".to_string(), "ipo".to_string()]];
        let f = further_contrasts(&rows, &asked);
        let at = |rho: f64, b: &str| f.iter().find(|c| c.rho == Some(rho) && c.second == b).unwrap();
        assert_eq!(f.len(), 3, "{f:?}");
        assert!(f.iter().all(|c| c.family == 3 && c.seeds == 3));
        assert!((at(0.4, "dpo").p_holm - 0.084791).abs() < 2e-6);
        assert!((at(0.4, "ipo").p_holm - 0.027402).abs() < 6e-6, "{f:?}");
        assert!((at(0.6, "dpo").p_holm - 0.027402).abs() < 6e-6, "{f:?}");
        assert!((at(0.6, "dpo").test.diff - 0.06).abs() < 1e-12);
        // the paper's own family at ρ = 0.4 is not changed by them (m = 2: 0.018268)
        let (c, _) = contrasts(&rows, &HashMap::new());
        let di = c.iter().find(|c| c.rho == Some(0.4) && c.second == "ipo").unwrap();
        assert!((di.p_holm - 0.018268).abs() < 4e-6 && di.family == 2, "{di:?}");
        // the report states them in their own section, under the paper's names
        let params = Params { contrasts: asked.to_vec(), ..Params::default() };
        let a = analyse(Inputs { evals: rows.clone(), ..Inputs::default() }, params);
        let md = markdown(&a, &Figures::default());
        let sec = &md[md.find("## Further contrasts fixed in advance").expect("section")..];
        assert!(sec.contains("| 0.6 | d-DPO − DPO | 3 | +0.0600 |"), "{sec}");
        // a method no evaluation has is named, not an empty table
        let typo = [["d-dpo-orcle".to_string(), "dpo".to_string()]];
        let e = check_contrasts(&rows, &typo).unwrap_err().to_string();
        assert!(e.contains("contrasts[0]") && e.contains("d-dpo-orcle") && e.contains("d-dpo, dpo, ipo"), "{e}");
        assert!(check_contrasts(&rows, &asked).is_ok());
        // and the same method twice is refused when the parameters are read
        let e = parse(json!({"contrasts": [["dpo", "dpo"]]}).as_object().unwrap()).unwrap_err().to_string();
        assert!(e.contains("contrasts[0]") && e.contains("two different methods"), "{e}");
        // and so is a contrast asked twice, either way round: it would be tested twice and enlarge Holm's family
        for again in
            [json!([["dpo", "ipo"], ["d-dpo", "dpo"], ["dpo", "ipo"]]), json!([["dpo", "ipo"], ["ipo", "dpo"]])]
        {
            let n = again.as_array().unwrap().len() - 1;
            let e = parse(json!({"contrasts": again}).as_object().unwrap()).unwrap_err().to_string();
            assert!(e.starts_with(&format!("contrasts[{n}]: ")) && e.contains("is contrasts[0] again"), "{e}");
        }
        // one evaluation bound twice, or two alike in every coordinate, would count a seed twice
        let (a, b) = ("eval_dpo@seed=0".to_string(), "eval_dpo2@seed=0".to_string());
        let e = evaluation::refuse_repeats("evals", "method and ρ", "check", [(1, &a), (1, &a)]).unwrap_err();
        assert_eq!(e.to_string(), "evals: eval_dpo@seed=0 is bound twice: each evaluation counts once");
        let e = evaluation::refuse_repeats("evals", "method and ρ", "check", [(1, &a), (2, &a), (1, &b)]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "evals: eval_dpo@seed=0 and eval_dpo2@seed=0 have the same method and ρ and seed: one seed would count \
             twice; check"
        );
        assert!(evaluation::refuse_repeats("evals", "", "", [(1, &a), (2, &b)]).is_ok());
    }

    fn six_methods(rho: f64, gain: [f64; 3]) -> Vec<EvalRow> {
        // DPO and IPO near each other; d-DPO, dp-DPO, e-DPO at DPO + gain (per method) ± a few 0.001 over 3 seeds,
        // no two methods apart by the same difference on every seed (that would be untestable)
        let mut rows = vec![];
        for s in 0..3 {
            let base = 0.1 * s as f64;
            let e = [0.001, -0.001, 0.0][s as usize];
            rows.push(row("dpo", rho, s, base));
            rows.push(row("ipo", rho, s, base + 0.01 + e));
            rows.push(row("p-dpo", rho, s, base + 0.02 - e));
            rows.push(row("d-dpo", rho, s, base + gain[0] + 3.0 * e));
            rows.push(row("dp-dpo", rho, s, base + gain[1] - 2.0 * e));
            rows.push(row("e-dpo", rho, s, base + gain[2] + 2.0 * e));
        }
        rows
    }

    #[test]
    fn likelihood_change_averages_the_first_and_last_tenth_of_each_run() {
        let run = |method: &str, rho: f64, chosen: Vec<Option<f64>>, rejected: Vec<Option<f64>>| Trajectory {
            method: method.into(),
            rho: Some(rho),
            step: (0..chosen.len()).map(|i| i as f64).collect(),
            logp_chosen: chosen,
            logp_rejected: rejected,
            ..Default::default()
        };
        // 20 steps: the tenths are steps 0–1 and 18–19; a missing value is skipped
        let line = |a: f64, b: f64| (0..20).map(|i| Some(a + (b - a) * i as f64 / 19.0)).collect::<Vec<_>>();
        let mut gap = line(-10.0, -29.0);
        gap[19] = None; // last tenth: step 18 alone, -28
        // e-DPO logs its forward KL: 0.0 … 1.9 over 20 steps, so the last tenth is (1.8 + 1.9) / 2
        let e_dpo = Trajectory {
            kl: (0..20).map(|i| Some(i as f64 / 10.0)).collect(),
            ..run("e-dpo", 0.2, line(-10.0, -10.0), line(-12.0, -12.0))
        };
        let t = vec![
            e_dpo,
            run("dpo", 0.2, line(-10.0, -29.0), line(-12.0, -31.0)),
            run("dpo", 0.2, gap, line(-12.0, -12.0)),
            run("dpo", 0.8, line(0.0, 0.0), line(0.0, 0.0)),
        ];
        let rows = likelihood_change(&t, Some(0.2));
        assert_eq!(rows.iter().map(|r| (r.method.as_str(), r.runs)).collect::<Vec<_>>(), [("dpo", 2), ("e-dpo", 1)]);
        // DPO, chosen: first tenth (-10 + -11) / 2 = -10.5 in both runs; last (-28 + -29) / 2 = -28.5 and -28
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        assert!(
            close(rows[0].chosen.0, -10.5) && close(rows[0].chosen.1, (-28.5 - 28.0) / 2.0),
            "{:?}",
            rows[0].chosen
        );
        // rejected: -12.5 → -30.5 in one run, -12 throughout in the other
        assert!(close(rows[0].rejected.0, (-12.5 - 12.0) / 2.0) && close(rows[0].rejected.1, (-30.5 - 12.0) / 2.0));
        assert!(close(rows[1].chosen.0, -10.0) && close(rows[1].chosen.1, -10.0));
        // DPO estimates no KL; e-DPO's is its own run's last tenth
        assert_eq!(rows[0].kl_last, None);
        assert!(close(rows[1].kl_last.unwrap(), 1.85), "{:?}", rows[1].kl_last);
        assert!(likelihood_change(&t, Some(0.5)).is_empty());
    }

    #[test]
    fn findings_from_constructed_evaluations() {
        let inputs = |rows| Inputs { evals: rows, ..Default::default() };
        // ρ = 0.4: every distillation method 0.5 above DPO and IPO, consistently over seeds → holds
        let a = analyse(inputs(six_methods(0.4, [0.5, 0.5, 0.5])), Params::default());
        assert_eq!(a.findings[0].verdict, Verdict::Holds, "{:?}", a.findings[0]);
        // no ρ ≤ 0.3 or > 0.5 was run: those findings are not tested
        assert_eq!(a.findings[1].verdict, Verdict::NotTested);
        assert_eq!(a.findings[2].verdict, Verdict::NotTested);
        // e-DPO 0.5 below: contradicted
        let a = analyse(inputs(six_methods(0.4, [0.5, 0.5, -0.5])), Params::default());
        assert_eq!(a.findings[0].verdict, Verdict::Contradicted);
        // noisy gains: inconclusive
        let mut rows = six_methods(0.4, [0.5, 0.5, 0.5]);
        for r in rows.iter_mut().filter(|r| r.method == "d-dpo") {
            r.advantage.mean = [0.9, -0.4, 0.3][r.seed.unwrap() as usize];
        }
        let a = analyse(inputs(rows), Params::default());
        assert_eq!(a.findings[0].verdict, Verdict::Inconclusive);
        let md = markdown(&a, &Figures::default());
        for needle in
            ["| **inconclusive** |", "d-DPO − DPO", "e-DPO", "dp-DPO", "p-DPO", "IPO", "Holm p", "Power of this design"]
        {
            assert!(md.contains(needle), "report lacks {needle}:\n{md}");
        }
        // the pipeline's lower-case strings never reach a table or legend
        for raw in ["| dpo", "| e-dpo", "| d-dpo"] {
            assert!(!md.contains(raw), "{raw} in:\n{md}");
        }
    }

    /// The findings again without the seeds the selection was made on: the same analysis on the other seeds, and
    /// a verdict that the selection seed alone carried shows as one.
    #[test]
    fn findings_are_checked_without_the_selection_seeds() {
        let choice = |method: &str, seed_list: Vec<i64>| Choice {
            method: method.into(),
            rho: Some(0.4),
            param: "beta".into(),
            value: 0.1,
            gamma: None,
            advantage: 0.0,
            seeds: seed_list.len(),
            seed_list,
            candidates: 3,
            runner_up: None,
        };
        // e-DPO far above DPO and IPO on seed 0 (the selection's), below them on seeds 1 and 2
        let mut rows = six_methods(0.4, [0.5, 0.5, 0.5]);
        for r in rows.iter_mut().filter(|r| r.method == "e-dpo" && r.seed != Some(0)) {
            r.advantage.mean -= 1.0;
        }
        let with = |chosen| Inputs { evals: rows.clone(), chosen, ..Default::default() };
        let a = analyse(with(vec![choice("dpo", vec![0]), choice("e-dpo", vec![0])]), Params::default());
        assert_eq!(a.findings[0].verdict, Verdict::Inconclusive, "{:?}", a.findings[0]);
        let w = a.without_selection_seeds.as_ref().expect("seed 0 was a selection seed");
        assert_eq!((w.excluded.clone(), w.seeds), (vec![0], 2));
        assert_eq!(w.findings[0].verdict, Verdict::Contradicted, "{:?}", w.findings[0]);
        // exactly the analysis of seeds 1 and 2 alone
        let rest = analyse(
            Inputs { evals: rows.iter().filter(|r| r.seed != Some(0)).cloned().collect(), ..Default::default() },
            Params::default(),
        );
        for (x, y) in w.findings.iter().zip(&rest.findings) {
            assert_eq!(x.verdict, y.verdict);
            let diffs = |f: &Assessment| f.evidence.iter().map(|c| (c.test.diff, c.p_holm)).collect::<Vec<_>>();
            assert_eq!(diffs(x), diffs(y));
        }
        let md = markdown(&a, &Figures::default());
        assert!(
            md.contains("**Without the selection seed.** The β/τ/γ candidates were trained and chosen on seed 0"),
            "{md}"
        );
        assert!(md.contains("| finding | all 3 seeds | without seed 0 |"), "{md}");
        assert!(md.contains("| inconclusive | **contradicted** |"), "{md}");
        // no selection seed among the evaluated ones (or no selection): no such section
        for chosen in [vec![], vec![choice("dpo", vec![7])]] {
            let a = analyse(with(chosen), Params::default());
            assert!(a.without_selection_seeds.is_none());
            assert!(!markdown(&a, &Figures::default()).contains("Without the selection seed"));
        }
        // every evaluated seed a selection seed: said, not tested
        let a = analyse(with(vec![choice("dpo", vec![0, 1, 2])]), Params::default());
        assert_eq!(a.without_selection_seeds.as_ref().unwrap().seeds, 0);
        let md = markdown(&a, &Figures::default());
        assert!(md.contains("on the other 0 seed(s) only: not testable"), "{md}");
    }

    #[test]
    fn a_verdict_that_method_md_s_rule_decides_otherwise_says_so() {
        let mut f = paper::assess(&paper::FINDINGS[4], &[], &[Some(0.5)], 0.05, 0.02);
        assert_eq!(verdict_md(&f), "**not tested**");
        (f.verdict, f.verdict_within_rho) = (Verdict::Inconclusive, Verdict::Contradicted);
        assert_eq!(verdict_md(&f), "**inconclusive** (by METHOD.md's rule, without p̃_f: contradicted)");
    }

    #[test]
    fn evaluations_with_cut_samples_are_named_at_the_top() {
        let mut evals = six_methods(0.5, [0.1, 0.1, 0.1]);
        for (k, e) in evals.iter_mut().enumerate().take(6) {
            e.cut_samples = Some((k, 200)); // 0 … 5 of 200: the last four at 1% or more; the rest not counted
        }
        let a = analyse(Inputs { evals, ..Default::default() }, Params::default());
        assert_eq!(a.cut.iter().map(|c| c.cut).collect::<Vec<_>>(), [5, 4, 3, 2]);
        let md = markdown(&a, &Figures::default());
        assert!(md.contains("**Cut samples.** In 4 of 18 evaluations 1% or more"), "{md}");
        assert!(md.contains(&format!("(most: 5 of 200 in {})", a.cut[0].node)), "{md}");
        assert_eq!(results_json(&a)["evaluations_with_cut_samples"].as_array().unwrap().len(), 4);
    }

    fn labelled(dir: &std::path::Path, agree: usize, n: usize) -> InputArtifact {
        // oracle label 0 everywhere; human label 0 on `agree` rows, 1 on the rest
        let human: Vec<Option<i8>> = (0..n).map(|i| Some(if i < agree { 0 } else { 1 })).collect();
        let schema = Schema::new(vec![
            Field::new("label", DataType::Int8, true),
            Field::new("human_label", DataType::Int8, true),
        ]);
        let cols: Vec<ArrayRef> = vec![Arc::new(Int8Array::from(vec![Some(0i8); n])), Arc::new(Int8Array::from(human))];
        let path = dir.join(format!("labelled-{agree}-{n}.parquet"));
        table::write_table(&path, &RecordBatch::try_new(Arc::new(schema), cols).unwrap(), &[]).unwrap();
        InputArtifact { path, hash: String::new(), node: "label_eval".into(), coords: BTreeMap::new() }
    }

    #[test]
    fn a_chance_level_oracle_is_flagged_at_the_top() {
        let dir = tempfile::tempdir().unwrap();
        let report = |agree, n| {
            let o = read_agreement(&labelled(dir.path(), agree, n)).unwrap();
            let a = analyse(
                Inputs { evals: six_methods(0.5, [0.1, 0.1, 0.1]), oracle_agreement: Some(o), ..Default::default() },
                Params::default(),
            );
            markdown(&a, &Figures::default())
        };
        // 52 of 100: Wilson [0.423, 0.615] includes 0.5 → warned, before any table
        let md = report(52, 100);
        let warn = md.find("the ground truth is no better than a coin").expect("warning");
        assert!(warn < md.find("## Findings").unwrap(), "{md}");
        assert!(md.contains("52.0% of 100 pairs"), "{md}");
        // 320 of 400 (0.80): Wilson [0.758, 0.836] → stated, not warned
        let md = report(320, 400);
        assert!(md.contains("80.0% of 400 pairs") && !md.contains("no better than a coin"), "{md}");
        // a table without human labels is an error naming the slot
        let none = labelled(dir.path(), 0, 0);
        assert!(matches!(read_agreement(&none), Err(StageError::Invalid { field, .. }) if field == "oracle_agreement"));
    }

    fn rm(stage: &str, rho: f64, member: Option<f64>, seed: i64, sens: f64, acc: f64) -> RmRow {
        RmRow {
            stage: stage.into(),
            rho: Some(rho),
            member,
            seed: Some(seed),
            eval_accuracy: Some(acc),
            eval_within_margin: Some(acc),
            eval_length_sensitivity: Some(sens),
            held_out_accuracy: None,
            length_sensitivity: None,
        }
    }

    #[test]
    fn reward_models_state_their_spread_over_seeds_and_the_length_bias_they_learned() {
        let mut rows = vec![];
        for (seed, (lo, hi)) in [(0.40, 0.80), (0.45, 0.84), (0.50, 0.91)].into_iter().enumerate() {
            rows.push(rm("rm", 0.2, None, seed as i64, lo, 0.70 + 0.01 * seed as f64));
            rows.push(rm("rm", 0.8, None, seed as i64, hi, 0.80));
            // an ensemble member is not a single reward model of D_ρ: left out of the length-bias test
            rows.push(rm("rm_member", 0.2, Some(0.8), seed as i64, 0.0, 0.7));
        }
        // a seed trained at one ρ only has nothing to pair with
        rows.push(rm("rm", 0.8, None, 7, 0.99, 0.80));
        // per seed 0.80 − 0.40, 0.84 − 0.45, 0.91 − 0.50 = 0.40, 0.39, 0.41: mean 0.40, sd 0.01, se 0.0057735;
        // t = 69.282 on 2 df, two-sided p = 1 − t/√(t² + 2) = 0.000208; half-width 4.302653 · se = 0.024841.
        let shifts = length_bias_learned(&rows);
        assert_eq!(shifts.len(), 1, "{shifts:?}");
        let s = &shifts[0];
        assert_eq!((s.stage.as_str(), s.low, s.high, s.seeds), ("rm", 0.2, 0.8, 3));
        assert!((s.test.diff - 0.40).abs() < 1e-12);
        assert!((s.test.p_value - 0.000208).abs() < 1e-6, "{}", s.test.p_value);
        assert!((s.test.ci_low - 0.375159).abs() < 1e-5 && (s.test.ci_high - 0.424841).abs() < 1e-5, "{:?}", s.test);
        let a = analyse(
            Inputs { evals: six_methods(0.5, [0.1, 0.1, 0.1]), reward_models: rows, ..Default::default() },
            Params::default(),
        );
        let md = markdown(&a, &Figures::default());
        // accuracy 0.70, 0.71, 0.72: mean 0.71, se 0.0057735, half-width 0.0248
        assert!(md.contains("| rm | 0.2 | – | 3 | 0.710 ± 0.025 |"), "{md}");
        assert!(md.contains("- `rm`: ρ = 0.8 − ρ = 0.2: +0.400 [+0.375, +0.425], p = 0.0002 (3 seed(s))"), "{md}");
    }
}
