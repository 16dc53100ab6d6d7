//! `select`: β/τ selection by validation (METHOD.md step 5: "chose by validation oracle reward").
//!
//! Input `evals` (many evaluate.summary, run with `split = "eval"`), whose node coordinates carry `method`, `rho`
//! (optional), `seed` (optional) and the swept hyper-parameter (`beta` or `tau`; the summary's own `beta`/`tau`
//! columns fill in). For every (method, ρ) the value with the highest mean validation advantage over seeds wins
//! (ties: the smaller value). Output `selection` (Parquet): method, rho, param ("beta" | "tau"), value, advantage
//! (mean over seeds), seeds, candidates.

use crate::port::*;
use crate::report::read_eval;
use crate::table;
use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;

pub struct Select;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Methods whose swept parameter is τ rather than β.
    #[serde(default = "d_tau_methods")]
    tau_methods: Vec<String>,
}
fn d_tau_methods() -> Vec<String> {
    vec!["ipo".into()]
}

/// One chosen hyper-parameter.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Choice {
    pub method: String,
    pub rho: Option<f64>,
    pub param: String,
    pub value: f64,
    pub advantage: f64,
    pub seeds: usize,
    pub candidates: usize,
}

/// ρ as a grouping key (values equal to 6 decimals are one ρ; none is its own key).
pub fn rho_key(rho: Option<f64>) -> i64 {
    rho.map_or(i64::MIN, |r| (r * 1e6).round() as i64)
}

impl Choice {
    /// Whether a run trained with `value` of this choice's parameter used the chosen value.
    pub fn is_value(&self, value: Option<f64>) -> bool {
        value.is_some_and(|v| (v - self.value).abs() <= 1e-9 * v.abs().max(self.value.abs()).max(1.0))
    }
}

/// The choice made for `method` at `rho` (a choice made without ρ covers every ρ); ρ values match as [`choose`]
/// groups them.
pub fn choice_for<'a>(chosen: &'a [Choice], method: &str, rho: Option<f64>) -> Option<&'a Choice> {
    chosen.iter().find(|c| c.method == method && (c.rho.is_none() || rho_key(c.rho) == rho_key(rho)))
}

/// (method, ρ, param, value, advantage) rows → the best value per (method, ρ).
pub fn choose(rows: &[(String, Option<f64>, String, f64, f64)]) -> Vec<Choice> {
    // (method, rho key) → value bits → advantages
    let mut g: BTreeMap<(String, i64), (Option<f64>, String, BTreeMap<i64, (f64, Vec<f64>)>)> = BTreeMap::new();
    for (m, rho, param, v, adv) in rows {
        let key = (m.clone(), rho_key(*rho));
        let e = g.entry(key).or_insert((*rho, param.clone(), BTreeMap::new()));
        e.2.entry((v * 1e9).round() as i64).or_insert((*v, vec![])).1.push(*adv);
    }
    g.into_iter()
        .map(|((method, _), (rho, param, vals))| {
            let candidates = vals.len();
            let mut best: Option<(f64, f64, usize)> = None;
            for (v, advs) in vals.into_values() {
                let a = crate::stats::mean(&advs);
                if best.is_none_or(|b| a > b.1) {
                    best = Some((v, a, advs.len()));
                }
            }
            let (value, advantage, seeds) = best.unwrap();
            Choice { method, rho, param, value, advantage, seeds, candidates }
        })
        .collect()
}

/// Reads a `selection` table back (what `evaluate` uses to pick the chosen candidate policy).
pub fn read_selection(path: &std::path::Path) -> StageResult<Vec<Choice>> {
    let t = table::read_table(path, None)?;
    let methods = crate::data_io::strings(&t, "method", path, true)?;
    let params = crate::data_io::strings(&t, "param", path, true)?;
    let f = |c: &str| -> StageResult<Vec<Option<f64>>> {
        if t.column_by_name(c).is_none() {
            return Err(StageError::invalid("selection", format!("{}: missing column `{c}`", path.display())));
        }
        Ok(crate::data_io::opt_f64s(&t, c))
    };
    let (rho, value, adv, seeds, cands) = (f("rho")?, f("value")?, f("advantage")?, f("seeds")?, f("candidates")?);
    (0..t.num_rows())
        .map(|i| {
            Ok(Choice {
                method: methods[i].clone(),
                rho: rho[i],
                param: params[i].clone(),
                value: value[i].ok_or_else(|| {
                    StageError::invalid("selection", format!("{}: row {i}: null `value`", path.display()))
                })?,
                advantage: adv[i].unwrap_or(f64::NAN),
                seeds: seeds[i].unwrap_or(0.0) as usize,
                candidates: cands[i].unwrap_or(0.0) as usize,
            })
        })
        .collect()
}

impl Stage for Select {
    fn kind(&self) -> &'static str {
        "select"
    }
    fn doc(&self) -> &'static str {
        "pick beta (tau for IPO) per method and rho by validation advantage"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        &[InputSpec {
            name: "evals",
            required: true,
            many: true,
            doc: "evaluate.summary on the validation split (coords method, rho, beta|tau, seed)",
        }]
    }
    fn outputs(&self) -> &'static [OutputSpec] {
        &[OutputSpec { name: "selection", kind: ArtifactKind::File, doc: "chosen value per method and rho (Parquet)" }]
    }
    fn code_files(&self) -> &'static [&'static str] {
        &["select.rs", "report.rs", "plots.rs", "paper.rs", "eval_stats.rs", "data_io.rs", "stats.rs", "table.rs"]
    }
    fn validate(&self, params: &Map<String, Value>) -> StageResult<()> {
        parse_params::<Params>(params).map(|_| ())
    }
    fn run(&self, ctx: &dyn Ctx) -> StageResult<Value> {
        let p: Params = parse_params(ctx.params())?;
        let evals = ctx.inputs("evals");
        if evals.is_empty() {
            return Err(StageError::invalid("evals", "no evaluation summaries are bound to `evals`"));
        }
        let mut rows = vec![];
        for a in evals {
            let r = read_eval(a)?;
            let param = if p.tau_methods.contains(&r.method) { "tau" } else { "beta" };
            let v = if param == "tau" { r.tau } else { r.beta };
            let v = v.ok_or_else(|| {
                StageError::invalid(
                    "evals",
                    format!("{}: no `{param}` in its coordinates or summary: nothing to select over", a.node),
                )
            })?;
            rows.push((r.method, r.rho, param.to_string(), v, r.advantage.mean));
        }
        let chosen = choose(&rows);
        let schema = Schema::new(vec![
            Field::new("method", DataType::Utf8, false),
            Field::new("rho", DataType::Float64, true),
            Field::new("param", DataType::Utf8, false),
            Field::new("value", DataType::Float64, false),
            Field::new("advantage", DataType::Float64, false),
            Field::new("seeds", DataType::UInt32, false),
            Field::new("candidates", DataType::UInt32, false),
        ]);
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(chosen.iter().map(|c| c.method.clone()).collect::<Vec<_>>())),
            Arc::new(Float64Array::from(chosen.iter().map(|c| c.rho).collect::<Vec<_>>())),
            Arc::new(StringArray::from(chosen.iter().map(|c| c.param.clone()).collect::<Vec<_>>())),
            Arc::new(Float64Array::from(chosen.iter().map(|c| c.value).collect::<Vec<_>>())),
            Arc::new(Float64Array::from(chosen.iter().map(|c| c.advantage).collect::<Vec<_>>())),
            Arc::new(UInt32Array::from(chosen.iter().map(|c| c.seeds as u32).collect::<Vec<_>>())),
            Arc::new(UInt32Array::from(chosen.iter().map(|c| c.candidates as u32).collect::<Vec<_>>())),
        ];
        let batch = RecordBatch::try_new(Arc::new(schema), cols)?;
        let summary = json!({ "chosen": chosen });
        table::write_table(
            &ctx.output_path("selection"),
            &batch,
            &table::summary_kv("select", &json!({"choices": chosen.len()})),
        )?;
        Ok(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_best_mean_over_seeds() {
        let r = |m: &str, rho: f64, v: f64, a: f64| (m.to_string(), Some(rho), "beta".to_string(), v, a);
        let rows = vec![
            r("dpo", 0.2, 0.1, 0.5),
            r("dpo", 0.2, 0.1, 0.1), // mean 0.3
            r("dpo", 0.2, 1.0, 0.4),
            r("dpo", 0.2, 1.0, 0.4), // mean 0.4 → chosen
            r("dpo", 0.8, 0.1, 0.9),
            r("dpo", 0.8, 1.0, 0.2),
            ("ipo".to_string(), Some(0.2), "tau".to_string(), 3.0, 0.0),
        ];
        let c = choose(&rows);
        assert_eq!(c.len(), 3);
        assert_eq!((c[0].value, c[0].seeds, c[0].candidates), (1.0, 2, 2));
        assert_eq!(c[1].value, 0.1);
        assert_eq!((c[2].param.as_str(), c[2].value), ("tau", 3.0));
    }
}
