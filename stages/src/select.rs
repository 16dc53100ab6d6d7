//! `select`: β/τ selection by validation (METHOD.md step 5: "chose by validation oracle reward").
//!
//! Input `evals` (many evaluate.summary, run with `split = "eval"`), whose node coordinates carry `method`, `rho`
//! (optional), `seed` (optional) and the swept hyper-parameter (`beta` or `tau`; the summary's own `beta`/`tau`
//! columns fill in). For every (method, ρ) the value with the highest mean validation advantage over seeds wins
//! (ties: the smaller value). Output `selection` (Parquet): method, rho, param ("beta" | "tau"), value, advantage
//! (mean over seeds), seeds, candidates, seed_list (the seeds themselves), and the runner-up: its value (and γ), the margin it lost by and, with the
//! evaluations' `samples` bound, the margin's standard error paired over the validation prompts — with one seed of
//! 200 prompts, candidates often differ by less than their noise, and the report says which choices are such ties —
//! and the ends of each group's grid (`grid_min`/`grid_max`, `gamma_grid_min`/`gamma_grid_max`; see `grid`), from
//! which the report tells a choice at an end of its grid.

use crate::eval_stats::{Scores, paired_within, read_scores};
use crate::evaluation::{self, read_eval};
use crate::grid::{self, Grid};
use crate::port::*;
use crate::selection::{Choice, RunnerUp, rho_key};
use crate::table;
use arrow::array::{ArrayRef, Float64Array, ListArray, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

pub struct Select;

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Methods whose swept parameter is τ rather than β.
    #[serde(default = "d_tau_methods")]
    tau_methods: Vec<String>,
}
fn d_tau_methods() -> Vec<String> {
    vec!["ipo".into()]
}

/// One validation result: method, ρ, the swept parameter's name and value, γ where candidates differ in it, the
/// validation advantage, the seed and, when `samples` are bound, the per-(prompt, sample) oracle differences.
pub struct Candidate {
    pub method: String,
    pub rho: Option<f64>,
    pub param: String,
    pub value: f64,
    pub gamma: Option<f64>,
    pub advantage: f64,
    pub seed: Option<i64>,
    pub scores: Option<Arc<Scores>>,
}

/// One validation run of a configuration: seed, advantage, scores.
type Run = (Option<i64>, f64, Option<Arc<Scores>>);
/// One candidate configuration of a group: value, γ, and its runs.
type Config = (f64, Option<f64>, Vec<Run>);
/// One (method, ρ) group of [`choose`]: ρ, the parameter's name, (value, γ) bits → its configuration.
type Group = (Option<f64>, String, BTreeMap<(i64, i64), Config>);

/// Validation results → the best (value, γ) per (method, ρ): the highest mean advantage over seeds (ties: the
/// smaller value, then the smaller γ), with the runner-up and the margin between them.
pub fn choose(rows: &[Candidate]) -> Vec<Choice> {
    // exact values, in numeric order (β = 1e-10 and 3e-10 are two candidates; −0 is 0)
    let bits = |v: f64| {
        let b = (v + 0.0).to_bits() as i64;
        if b < 0 { b ^ i64::MAX } else { b }
    };
    let mut g: BTreeMap<(String, i64), Group> = BTreeMap::new();
    for r in rows {
        let e = g.entry((r.method.clone(), rho_key(r.rho))).or_insert((r.rho, r.param.clone(), BTreeMap::new()));
        let key = (bits(r.value), r.gamma.map_or(i64::MIN, bits));
        e.2.entry(key).or_insert((r.value, r.gamma, vec![])).2.push((r.seed, r.advantage, r.scores.clone()));
    }
    g.into_iter()
        .map(|((method, _), (rho, param, configs))| {
            let candidates = configs.len();
            let mean = |c: &Config| crate::stats::mean(&c.2.iter().map(|r| r.1).collect::<Vec<_>>());
            // best first; the sort is stable, so ties keep the map's order (smaller value, then smaller γ)
            let mut ranked: Vec<(f64, Config)> = configs.into_values().map(|c| (mean(&c), c)).collect();
            // a mean that is not finite (a diverged candidate) ranks last: it is no evidence of being best, and a
            // NaN compared as "equal" would leave the sort's order to chance
            let rank = |m: f64| if m.is_finite() { m } else { f64::NEG_INFINITY };
            ranked.sort_by(|a, b| rank(b.0).total_cmp(&rank(a.0)));
            let runner_up = ranked.get(1).map(|(a, c)| RunnerUp {
                value: c.0,
                gamma: c.1,
                margin: ranked[0].0 - a,
                margin_se: paired_se(&ranked[0].1.2, &c.2),
            });
            let (advantage, (value, gamma, runs)) = ranked.swap_remove(0);
            let seed_list = runs.iter().filter_map(|r| r.0).collect::<std::collections::BTreeSet<_>>();
            let seed_list = seed_list.into_iter().collect();
            Choice { method, rho, param, value, gamma, advantage, seeds: runs.len(), seed_list, candidates, runner_up }
        })
        .collect()
}

/// Candidates of one method and ρ are compared by their mean over seeds, paired seed by seed: each must have been
/// evaluated on the same seeds, or a candidate could win by the seeds it lacks.
fn refuse_unequal_seeds(rows: &[Candidate]) -> StageResult<()> {
    type Seeds = std::collections::BTreeSet<Option<i64>>;
    /// One candidate: value, γ, the seeds it was evaluated on.
    type Evaluated = (f64, Option<f64>, Seeds);
    /// (method, ρ) → (value, γ) bits → the candidate.
    type Groups = BTreeMap<(String, i64), BTreeMap<(u64, Option<u64>), Evaluated>>;
    let mut g = Groups::new();
    for r in rows {
        g.entry((r.method.clone(), rho_key(r.rho)))
            .or_default()
            .entry(((r.value + 0.0).to_bits(), r.gamma.map(|x| (x + 0.0).to_bits())))
            .or_insert((r.value, r.gamma, Seeds::new()))
            .2
            .insert(r.seed);
    }
    let seeds = |s: &Seeds| s.iter().map(|x| x.map_or("none".into(), |x| x.to_string())).collect::<Vec<_>>().join(", ");
    for ((method, rho_k), configs) in &g {
        let mut it = configs.values();
        let Some(first) = it.next() else { continue };
        if let Some(other) = it.find(|c| c.2 != first.2) {
            let row = rows.iter().find(|r| r.method == *method && rho_key(r.rho) == *rho_k).expect("a group has rows");
            let rho = row.rho;
            let name = |c: &Evaluated| match c.1 {
                Some(gm) => format!("{} = {}, γ = {gm}", row.param, c.0),
                None => format!("{} = {}", row.param, c.0),
            };
            return Err(StageError::invalid(
                "evals",
                format!(
                    "the candidates of {}{} were evaluated on different seeds: {} on seeds [{}], {} on seeds [{}]; \
                     bind every candidate's evaluation on the same seeds (a mean over other seeds is no comparison)",
                    crate::paper::name(method),
                    rho.map_or(String::new(), |r| format!(" at ρ = {r}")),
                    name(first),
                    seeds(&first.2),
                    name(other),
                    seeds(&other.2)
                ),
            ));
        }
    }
    Ok(())
}

/// Standard error of the difference of two configurations' mean advantages over seeds, paired within each seed over
/// the validation prompts (METHOD.md, "Evaluation statistics"): each seed's paired difference has variance
/// SE_s² = s²_prompts / n_prompts, and the mean of S seeds' differences Σ SE_s² / S². None unless every seed of `a`
/// has a run of `b` and both have scores.
fn paired_se(a: &[Run], b: &[Run]) -> Option<f64> {
    let mut var = 0.0;
    for (seed, _, sa) in a {
        let sb = b.iter().find(|r| r.0 == *seed)?.2.as_ref()?;
        let w = paired_within(sa.as_ref()?, sb)?;
        var += w.prompt_var / w.prompts as f64;
    }
    (!a.is_empty()).then(|| var.sqrt() / a.len() as f64)
}

impl Stage for Select {
    fn kind(&self) -> &'static str {
        "select"
    }
    fn doc(&self) -> &'static str {
        "pick β (τ for IPO) per method and ρ by validation advantage"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        &[
            InputSpec {
                name: "evals",
                required: true,
                many: true,
                doc: "evaluate.summary on the validation split (coords method, rho, beta|tau, seed)",
            },
            InputSpec {
                name: "samples",
                required: false,
                many: true,
                doc: "the same evaluations' samples (evaluate.samples): the runner-up's margin gets a paired standard error",
            },
        ]
    }
    fn outputs(&self) -> &'static [OutputSpec] {
        &[OutputSpec { name: "selection", kind: ArtifactKind::File, doc: "chosen value per method and ρ (Parquet)" }]
    }
    fn validate(&self, params: &Map<String, Value>) -> StageResult<()> {
        parse_params::<Params>(params).map(|_| ())
    }
    fn params_schema(&self) -> schemars::Schema {
        schemars::schema_for!(Params)
    }
    fn runs(&self) -> Runs {
        Runs::InProcess(run)
    }
}

pub fn run(ctx: &dyn Ctx) -> StageResult<Value> {
    let p: Params = parse_params(ctx.params())?;
    let evals = ctx.inputs("evals");
    if evals.is_empty() {
        return Err(StageError::invalid("evals", "no evaluation summaries are bound to `evals`"));
    }
    // samples are matched to summaries by the node that wrote both
    let mut samples: HashMap<&str, &InputArtifact> = HashMap::new();
    for a in ctx.inputs("samples") {
        if samples.insert(a.node.as_str(), a).is_some() {
            return Err(StageError::invalid(
                "samples",
                format!("{} is bound twice: bind each evaluation once", a.node),
            ));
        }
    }
    let with_samples = !samples.is_empty();
    let mut rows = vec![];
    let mut keys = vec![];
    let mut read = vec![];
    for a in evals {
        let scores = match samples.remove(a.node.as_str()) {
            Some(s) => Some(Arc::new(read_scores(&s.path)?)),
            None if with_samples => {
                return Err(StageError::invalid(
                    "samples",
                    format!("no samples of {} are bound: bind every evaluation's samples, or none", a.node),
                ));
            }
            None => None,
        };
        let r = read_eval(a)?;
        read.push(r.clone());
        let param = if p.tau_methods.contains(&r.method) { "tau" } else { "beta" };
        let v = if param == "tau" { r.tau } else { r.beta };
        let v = v.ok_or_else(|| {
            StageError::invalid(
                "evals",
                format!("{}: no `{param}` in its coordinates or summary: nothing to select over", a.node),
            )
        })?;
        // what tells candidates apart is the selected value and γ: two alike in both on one seed are a repeat (or a
        // method in `tau_methods` whose candidates differ in β, which the selection cannot see)
        keys.push(((r.method.clone(), rho_key(r.rho), v.to_bits(), r.gamma.map(f64::to_bits), r.seed), &a.node));
        rows.push(Candidate {
            method: r.method,
            rho: r.rho,
            param: param.to_string(),
            value: v,
            gamma: r.gamma,
            advantage: r.advantage.mean,
            seed: r.seed,
            scores,
        });
    }
    evaluation::refuse_repeats(
        "evals",
        "method, ρ, selected value and γ",
        &format!(
            "bind each evaluation once; if they differ in β or τ, the one not selected, `tau_methods` (now {:?}) names \
             the wrong parameter for this method",
            p.tau_methods
        ),
        keys,
    )?;
    evaluation::check_comparable(&read, "evals")?;
    if let Some(extra) = samples.keys().next() {
        return Err(StageError::invalid(
            "samples",
            format!("samples of {extra} are bound, but not its summary (`evals`): bind both for every evaluation"),
        ));
    }
    let non_finite: Vec<String> = rows
        .iter()
        .filter(|r| !r.advantage.is_finite())
        .map(|r| {
            let (m, rho) = (crate::paper::name(&r.method), crate::paper::rho_text(r.rho));
            format!("{m} at {rho}, {} = {} ({})", r.param, r.value, r.advantage)
        })
        .collect();
    if !non_finite.is_empty() {
        // one warning for all of them: a diverged sweep would otherwise print a line per candidate
        let more = non_finite.len().saturating_sub(5);
        ctx.warn(&format!(
            "{} candidate(s) have a validation advantage that is not finite, ranked last: {}{}",
            non_finite.len(),
            non_finite[..non_finite.len() - more].join("; "),
            if more > 0 { format!("; and {more} more") } else { String::new() }
        ));
    }
    refuse_unequal_seeds(&rows)?;
    let chosen = choose(&rows);
    let batch = selection_batch(&chosen, &rows)?;
    let summary = json!({ "chosen": chosen });
    table::write_table(
        &ctx.output_path("selection"),
        &batch,
        &table::summary_kv("select", &json!({"choices": chosen.len()})),
    )?;
    Ok(summary)
}

/// The `selection` table: one row per choice, with the ends of its grid (the report marks a choice at an end).
fn selection_batch(chosen: &[Choice], rows: &[Candidate]) -> StageResult<RecordBatch> {
    let ru = |f: fn(&RunnerUp) -> Option<f64>| -> ArrayRef {
        Arc::new(Float64Array::from(chosen.iter().map(|c| c.runner_up.as_ref().and_then(f)).collect::<Vec<_>>()))
    };
    let schema = Schema::new(vec![
        Field::new("method", DataType::Utf8, false),
        Field::new("rho", DataType::Float64, true),
        Field::new("param", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
        Field::new("gamma", DataType::Float64, true),
        Field::new("advantage", DataType::Float64, false),
        Field::new("seeds", DataType::UInt32, false),
        Field::new("candidates", DataType::UInt32, false),
        Field::new("seed_list", DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true))), false),
        Field::new("runner_up", DataType::Float64, true),
        Field::new("runner_up_gamma", DataType::Float64, true),
        Field::new("margin", DataType::Float64, true),
        Field::new("margin_se", DataType::Float64, true),
        Field::new(grid::COLUMNS[0], DataType::Float64, true),
        Field::new(grid::COLUMNS[1], DataType::Float64, true),
        Field::new(grid::COLUMNS[2], DataType::Float64, true),
        Field::new(grid::COLUMNS[3], DataType::Float64, true),
    ]);
    let grids = grid::grids(rows.iter().map(|r| (r.method.as_str(), r.rho, r.value, r.gamma)));
    let of = |c: &Choice| grids.get(&(c.method.clone(), rho_key(c.rho))).copied().unwrap_or_default();
    let end = |f: fn(Grid) -> Option<f64>| -> ArrayRef {
        Arc::new(Float64Array::from(chosen.iter().map(|c| f(of(c))).collect::<Vec<_>>()))
    };
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(chosen.iter().map(|c| c.method.clone()).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(chosen.iter().map(|c| c.rho).collect::<Vec<_>>())),
        Arc::new(StringArray::from(chosen.iter().map(|c| c.param.clone()).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(chosen.iter().map(|c| c.value).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(chosen.iter().map(|c| c.gamma).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(chosen.iter().map(|c| c.advantage).collect::<Vec<_>>())),
        Arc::new(UInt32Array::from(chosen.iter().map(|c| c.seeds as u32).collect::<Vec<_>>())),
        Arc::new(UInt32Array::from(chosen.iter().map(|c| c.candidates as u32).collect::<Vec<_>>())),
        Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(
            chosen.iter().map(|c| Some(c.seed_list.iter().map(|&s| Some(s)).collect::<Vec<_>>())),
        )),
        ru(|r| Some(r.value)),
        ru(|r| r.gamma),
        ru(|r| Some(r.margin)),
        ru(|r| r.margin_se),
        end(|g| g.value.map(|v| v.0)),
        end(|g| g.value.map(|v| v.1)),
        end(|g| g.gamma.map(|v| v.0)),
        end(|g| g.gamma.map(|v| v.1)),
    ];
    Ok(RecordBatch::try_new(Arc::new(schema), cols)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(m: &str, rho: f64, param: &str, value: f64, gamma: Option<f64>, advantage: f64) -> Candidate {
        Candidate {
            method: m.into(),
            rho: Some(rho),
            param: param.into(),
            value,
            gamma,
            advantage,
            seed: None,
            scores: None,
        }
    }

    #[test]
    fn picks_best_mean_over_seeds() {
        let r = |m: &str, rho: f64, v: f64, a: f64| c(m, rho, "beta", v, None, a);
        let rows = vec![
            r("dpo", 0.2, 0.1, 0.5),
            r("dpo", 0.2, 0.1, 0.1), // mean 0.3
            r("dpo", 0.2, 1.0, 0.4),
            r("dpo", 0.2, 1.0, 0.4), // mean 0.4 → chosen
            r("dpo", 0.8, 0.1, 0.9),
            r("dpo", 0.8, 1.0, 0.2),
            c("ipo", 0.2, "tau", 3.0, None, 0.0),
        ];
        let ch = choose(&rows);
        assert_eq!(ch.len(), 3);
        assert_eq!((ch[0].value, ch[0].seeds, ch[0].candidates, ch[0].gamma), (1.0, 2, 2, None));
        assert_eq!(ch[1].value, 0.1);
        assert_eq!((ch[2].param.as_str(), ch[2].value), ("tau", 3.0));
    }

    fn scored(value: f64, seed: i64, d: &[f64]) -> Candidate {
        let scores = Scores { d: d.iter().enumerate().map(|(i, &x)| ((format!("p{i}"), 0), x)).collect() };
        let advantage = d.iter().sum::<f64>() / d.len() as f64;
        Candidate { seed: Some(seed), scores: Some(Arc::new(scores)), ..c("dpo", 0.5, "beta", value, None, advantage) }
    }

    #[test]
    fn the_runner_up_and_its_paired_margin_worked_by_hand() {
        // seed 0, 4 prompts: β = 1 has d = (0.3, 0.1, 0.2, 0.4), mean 0.25; β = 10 (0.1, 0.2, 0.0, 0.3), mean 0.15;
        // β = 0.1 mean 0.05. Paired differences (0.2, −0.1, 0.2, 0.1): mean 0.1, deviations (0.1, −0.2, 0.1, 0),
        // s² = 0.06 / 3 = 0.02, SE = √(0.02 / 4) = 0.070711
        let rows = vec![
            scored(1.0, 0, &[0.3, 0.1, 0.2, 0.4]),
            scored(10.0, 0, &[0.1, 0.2, 0.0, 0.3]),
            scored(0.1, 0, &[0.0, 0.1, 0.0, 0.1]),
        ];
        let ch = choose(&rows);
        let ru = ch[0].runner_up.as_ref().unwrap();
        assert_eq!((ch[0].value, ru.value, ch[0].candidates), (1.0, 10.0, 3));
        assert!((ru.margin - 0.1).abs() < 1e-12, "{ru:?}");
        assert!((ru.margin_se.unwrap() - 0.070_710_678).abs() < 1e-8, "{ru:?}");
        assert_eq!(ru.within_noise(), Some(true), "0.1 < 1.96 × 0.0707");
        // a second seed: the margin is the mean of the seeds' differences, its SE √(SE₀² + SE₁²) / 2; seed 1's
        // differences (0.5, 0.5, 0.4, 0.6): mean 0.5, s² = 0.02 / 3, SE₁² = 0.02 / 12
        let mut two = rows;
        two.push(scored(1.0, 1, &[0.6, 0.6, 0.5, 0.7]));
        two.push(scored(10.0, 1, &[0.1, 0.1, 0.1, 0.1]));
        two.push(scored(0.1, 1, &[0.0, 0.0, 0.0, 0.0]));
        let ru = choose(&two)[0].runner_up.clone().unwrap();
        assert!((ru.margin - 0.3).abs() < 1e-12, "{ru:?}");
        let want = (0.02 / 4.0 + 0.02 / 12.0f64).sqrt() / 2.0;
        assert!((ru.margin_se.unwrap() - want).abs() < 1e-12, "{ru:?} vs {want}");
        assert_eq!(ru.within_noise(), Some(false));
        // without scores there is a margin but no SE; a single candidate has no runner-up
        let plain = vec![c("dpo", 0.5, "beta", 1.0, None, 0.3), c("dpo", 0.5, "beta", 10.0, None, 0.2)];
        let ru = choose(&plain)[0].runner_up.clone().unwrap();
        assert!((ru.margin - 0.1).abs() < 1e-12 && ru.margin_se.is_none() && ru.within_noise().is_none());
        assert!(choose(&plain[..1])[0].runner_up.is_none());
    }

    /// The table as written reads back as chosen, the seeds the candidates ran on included (the report leaves them
    /// out of its check of the findings).
    #[test]
    fn the_selection_table_reads_back_with_its_seeds() {
        let rows = vec![
            scored(1.0, 3, &[0.5, 0.5]),
            scored(10.0, 3, &[0.1, 0.2]),
            scored(1.0, 0, &[0.4, 0.6]),
            scored(10.0, 0, &[0.0, 0.1]),
            Candidate { gamma: Some(0.1), ..c("e-dpo", 0.2, "beta", 0.3, None, 0.2) },
        ];
        let chosen = choose(&rows);
        assert_eq!(chosen.iter().map(|c| c.seed_list.clone()).collect::<Vec<_>>(), vec![vec![0, 3], vec![]]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("selection.parquet");
        table::write_table(&path, &selection_batch(&chosen, &rows).unwrap(), &[]).unwrap();
        assert_eq!(crate::selection::read_selection(&path).unwrap(), chosen);
    }

    #[test]
    fn a_candidate_without_a_finite_advantage_is_never_chosen() {
        // a diverged candidate whose validation advantage is NaN (or ±∞) ranks last, whatever its place in the grid
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            for at in 0..3 {
                let mut rows: Vec<Candidate> =
                    [0.1, 1.0, 10.0].iter().map(|&v| c("dpo", 0.5, "beta", v, None, v / 100.0)).collect();
                rows[at].advantage = bad;
                let ch = choose(&rows);
                let want = if at == 2 { 1.0 } else { 10.0 };
                assert_eq!(ch[0].value, want, "{bad} at {at}: {ch:?}");
                assert!(ch[0].advantage.is_finite() && ch[0].runner_up.as_ref().unwrap().margin.is_finite(), "{ch:?}");
            }
        }
        // every candidate non-finite: the choice says so rather than pretending
        let rows = vec![c("dpo", 0.5, "beta", 0.1, None, f64::NAN), c("dpo", 0.5, "beta", 1.0, None, f64::NAN)];
        assert!(choose(&rows)[0].advantage.is_nan());
    }

    #[test]
    fn chooses_beta_and_gamma_together() {
        // e-DPO's 2 β × 2 γ grid: the best pair wins, not the best β and the best γ separately
        let rows = vec![
            c("e-dpo", 0.5, "beta", 0.1, Some(0.01), 0.30),
            c("e-dpo", 0.5, "beta", 0.1, Some(0.1), 0.10),
            c("e-dpo", 0.5, "beta", 1.0, Some(0.01), 0.20),
            c("e-dpo", 0.5, "beta", 1.0, Some(0.1), 0.35),
        ];
        let ch = choose(&rows);
        assert_eq!((ch[0].value, ch[0].gamma, ch[0].candidates), (1.0, Some(0.1), 4));
        assert!((ch[0].advantage - 0.35).abs() < 1e-12);
        // ties: the smaller β, then the smaller γ
        let tie = vec![
            c("p-dpo", 0.5, "beta", 1.0, Some(0.01), 0.2),
            c("p-dpo", 0.5, "beta", 0.1, Some(0.1), 0.2),
            c("p-dpo", 0.5, "beta", 0.1, Some(0.01), 0.2),
        ];
        assert_eq!(choose(&tie).iter().map(|x| (x.value, x.gamma)).collect::<Vec<_>>(), vec![(0.1, Some(0.01))]);
    }

    /// Values are told apart exactly, at any scale: β = 1e-10 and 3e-10 used to be one candidate (rounded to 1e-9),
    /// and 1e10 and 1e11 another (the rounding saturated), their advantages averaged.
    #[test]
    fn distinct_values_are_distinct_candidates_at_any_scale() {
        for (small, large) in [(1e-10, 3e-10), (1e10, 1e11), (0.1, 0.1 + 1e-15)] {
            let ch = choose(&[c("dpo", 0.5, "beta", small, None, -0.178), c("dpo", 0.5, "beta", large, None, 0.0)]);
            assert_eq!((ch[0].value, ch[0].candidates, ch[0].advantage), (large, 2, 0.0), "{small} vs {large}");
            assert_eq!(ch[0].runner_up.as_ref().map(|r| r.value), Some(small));
            // a tie still goes to the smaller value, in numeric order
            let tie = choose(&[c("dpo", 0.5, "beta", large, None, 0.0), c("dpo", 0.5, "beta", small, None, 0.0)]);
            assert_eq!(tie[0].value, small);
        }
        // and whoever reads the choice tells them apart too (the report's chosen runs, Fig. B.1)
        let ch = choose(&[c("dpo", 0.5, "beta", 1e-10, None, 0.1), c("dpo", 0.5, "beta", 3e-10, None, 0.0)]);
        assert!(ch[0].is_value(Some(1e-10)) && !ch[0].is_value(Some(3e-10)));
        // −0 and 0 are one value
        assert_eq!(
            choose(&[c("dpo", 0.5, "beta", 0.0, None, 0.1), c("dpo", 0.5, "beta", -0.0, None, 0.3)])[0].candidates,
            1
        );
    }

    /// Identical candidates (the same advantages on the same prompts: margin 0 ± 0) are a tie, not a win.
    #[test]
    fn an_exact_tie_is_a_tie_within_noise() {
        let d = [0.3, 0.1, 0.2];
        let ch = choose(&[scored(1.0, 0, &d), scored(10.0, 0, &d)]);
        let ru = ch[0].runner_up.as_ref().unwrap();
        assert_eq!((ru.margin, ru.margin_se), (0.0, Some(0.0)));
        assert_eq!(ru.within_noise(), Some(true));
    }

    /// Candidates compared by their means over seeds must share their seeds.
    #[test]
    fn candidates_on_different_seeds_are_refused() {
        let on = |v: f64, seed: i64, a: f64| Candidate { seed: Some(seed), ..c("dpo", 0.5, "beta", v, None, a) };
        let same = [on(0.5, 0, 0.1), on(0.5, 1, 0.2), on(0.7, 0, 0.3), on(0.7, 1, 0.0)];
        assert!(refuse_unequal_seeds(&same).is_ok());
        // another ρ of the same method first: the message names the group that differs
        let at_02 = Candidate { rho: Some(0.2), ..on(0.5, 0, 0.1) };
        let e =
            refuse_unequal_seeds(&[at_02, on(0.5, 0, 0.1), on(0.5, 1, 0.2), on(0.7, 0, 0.3)]).unwrap_err().to_string();
        assert!(
            e.contains("the candidates of DPO at ρ = 0.5 were evaluated on different seeds: beta = 0.5 on seeds [0, 1], beta = 0.7 on seeds [0]"),
            "{e}"
        );
    }
}
