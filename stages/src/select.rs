//! `select`: β/τ selection by validation (METHOD.md step 5: "chose by validation oracle reward").
//!
//! Input `evals` (many evaluate.summary, run with `split = "eval"`), whose node coordinates carry `method`, `rho`
//! (optional), `seed` (optional) and the swept hyper-parameter (`beta` or `tau`; the summary's own `beta`/`tau`
//! columns fill in). For every (method, ρ) the value with the highest mean validation advantage over seeds wins
//! (ties: the smaller value). Output `selection` (Parquet): method, rho, param ("beta" | "tau"), value, advantage
//! (mean over seeds), seeds, candidates.

use crate::evaluation::read_eval;
use crate::port::*;
use crate::selection::{Choice, rho_key};
use crate::table;
use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
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

/// One validation result: method, ρ, the swept parameter's name and value, γ where candidates differ in it, and the
/// validation advantage.
pub struct Candidate {
    pub method: String,
    pub rho: Option<f64>,
    pub param: String,
    pub value: f64,
    pub gamma: Option<f64>,
    pub advantage: f64,
}

/// One (method, ρ) group of [`choose`]: ρ, the parameter's name, (value, γ) bits → (value, γ, advantages over seeds).
type Group = (Option<f64>, String, BTreeMap<(i64, i64), (f64, Option<f64>, Vec<f64>)>);

/// Validation results → the best (value, γ) per (method, ρ): the highest mean advantage over seeds (ties: the
/// smaller value, then the smaller γ).
pub fn choose(rows: &[Candidate]) -> Vec<Choice> {
    let bits = |v: f64| (v * 1e9).round() as i64;
    let mut g: BTreeMap<(String, i64), Group> = BTreeMap::new();
    for r in rows {
        let e = g.entry((r.method.clone(), rho_key(r.rho))).or_insert((r.rho, r.param.clone(), BTreeMap::new()));
        let key = (bits(r.value), r.gamma.map_or(i64::MIN, bits));
        e.2.entry(key).or_insert((r.value, r.gamma, vec![])).2.push(r.advantage);
    }
    g.into_iter()
        .map(|((method, _), (rho, param, vals))| {
            let candidates = vals.len();
            let mut best: Option<(f64, Option<f64>, f64, usize)> = None;
            for (v, gamma, advs) in vals.into_values() {
                let a = crate::stats::mean(&advs);
                if best.is_none_or(|b| a > b.2) {
                    best = Some((v, gamma, a, advs.len()));
                }
            }
            let (value, gamma, advantage, seeds) = best.unwrap();
            Choice { method, rho, param, value, gamma, advantage, seeds, candidates }
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
        rows.push(Candidate {
            method: r.method,
            rho: r.rho,
            param: param.to_string(),
            value: v,
            gamma: r.gamma,
            advantage: r.advantage.mean,
        });
    }
    let chosen = choose(&rows);
    let schema = Schema::new(vec![
        Field::new("method", DataType::Utf8, false),
        Field::new("rho", DataType::Float64, true),
        Field::new("param", DataType::Utf8, false),
        Field::new("value", DataType::Float64, false),
        Field::new("gamma", DataType::Float64, true),
        Field::new("advantage", DataType::Float64, false),
        Field::new("seeds", DataType::UInt32, false),
        Field::new("candidates", DataType::UInt32, false),
    ]);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(chosen.iter().map(|c| c.method.clone()).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(chosen.iter().map(|c| c.rho).collect::<Vec<_>>())),
        Arc::new(StringArray::from(chosen.iter().map(|c| c.param.clone()).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(chosen.iter().map(|c| c.value).collect::<Vec<_>>())),
        Arc::new(Float64Array::from(chosen.iter().map(|c| c.gamma).collect::<Vec<_>>())),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn c(m: &str, rho: f64, param: &str, value: f64, gamma: Option<f64>, advantage: f64) -> Candidate {
        Candidate { method: m.into(), rho: Some(rho), param: param.into(), value, gamma, advantage }
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
}
