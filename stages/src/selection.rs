//! The β/τ(/γ) selection as the stages that use it read it: a chosen value per (method, ρ) ([`Choice`]), how ρ values
//! are matched ([`rho_key`]), the lookup of the choice for a run ([`choice_for`]), reading a `select` stage's
//! `selection` table back (with the runner-up and the margin it lost by, [`RunnerUp`]), and applying a choice to a
//! policy's parameters ([`apply_choice`]): `policy` trains with the chosen values, `evaluate` picks the chosen
//! candidate policy, `report` marks the chosen runs.

use crate::port::*;
use crate::table;

/// One chosen hyper-parameter.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Choice {
    pub method: String,
    pub rho: Option<f64>,
    pub param: String,
    pub value: f64,
    /// γ chosen with it (pessimistic methods whose candidates swept γ too).
    pub gamma: Option<f64>,
    pub advantage: f64,
    pub seeds: usize,
    /// Those seeds (where seeds are coordinates). On them the final policy is the chosen candidate itself, whose
    /// test result keeps the luck that won the selection: the report checks its findings without them.
    pub seed_list: Vec<i64>,
    pub candidates: usize,
    /// The best of the other candidates (None with a single candidate).
    pub runner_up: Option<RunnerUp>,
}

/// The runner-up of a selection, and by how much the chosen candidate beat it on the validation prompts.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunnerUp {
    pub value: f64,
    pub gamma: Option<f64>,
    /// Chosen minus runner-up mean validation advantage (≥ 0).
    pub margin: f64,
    /// Standard error of `margin` over the validation prompts, paired (both candidates were evaluated on the same
    /// prompts against the same π_ref samples); None when `select` was not given the candidates' samples.
    pub margin_se: Option<f64>,
}

impl RunnerUp {
    /// Whether the margin is inside the validation's own noise (not above 1.96 standard errors, so an exact tie
    /// with no spread counts too): the two candidates are a tie that the measurement cannot break, and anything
    /// (float rounding included) may decide between them.
    pub fn within_noise(&self) -> Option<bool> {
        self.margin_se.map(|se| self.margin <= 1.96 * se)
    }
}

/// ρ as a grouping key (values equal to 6 decimals are one ρ; none is its own key).
pub fn rho_key(rho: Option<f64>) -> i64 {
    rho.map_or(i64::MIN, |r| (r * 1e6).round() as i64)
}

impl Choice {
    /// Whether a run trained with `value` of this choice's parameter used the chosen value.
    pub fn is_value(&self, value: Option<f64>) -> bool {
        value.is_some_and(|v| same(v, self.value))
    }

    /// Whether a run trained with `value` and `gamma` used this choice (γ is compared only when it was chosen).
    pub fn is_config(&self, value: Option<f64>, gamma: Option<f64>) -> bool {
        self.is_value(value) && self.gamma.is_none_or(|g| gamma.is_some_and(|x| same(x, g)))
    }
}

fn same(a: f64, b: f64) -> bool {
    // relative only: `select` tells 1e-10 from 3e-10 (it compares exact values), so must whoever reads its choice
    (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

/// The choice made for `method` at `rho` (a choice made without ρ covers every ρ); ρ values match as `select`
/// groups them.
pub fn choice_for<'a>(chosen: &'a [Choice], method: &str, rho: Option<f64>) -> Option<&'a Choice> {
    chosen.iter().find(|c| c.method == method && (c.rho.is_none() || rho_key(c.rho) == rho_key(rho)))
}

/// [`choice_for`], or what the selection covers instead (the message `policy` and `evaluate` both report).
pub fn require_choice<'a>(chosen: &'a [Choice], method: &str, rho: Option<f64>) -> Result<&'a Choice, String> {
    choice_for(chosen, method, rho).ok_or_else(|| {
        let at = |m: &str, rho: Option<f64>| format!("{} at {}", crate::paper::name(m), crate::paper::rho_text(rho));
        let have: Vec<String> = chosen.iter().map(|c| at(&c.method, c.rho)).collect();
        format!("the selection has no choice for {}; it covers {}", at(method, rho), have.join(", "))
    })
}

/// [`read_selection`] once per content hash in this process: the runner binds every selection-bound policy's
/// parameters when it keys the node, on the no-op path too, and dozens of nodes share one selection.
pub fn read_selection_memo(hash: &str, path: &std::path::Path) -> StageResult<std::sync::Arc<Vec<Choice>>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static READ: OnceLock<Mutex<HashMap<String, Arc<Vec<Choice>>>>> = OnceLock::new();
    let memo = READ.get_or_init(Default::default);
    if let Some(c) = memo.lock().unwrap().get(hash) {
        return Ok(c.clone());
    }
    let chosen = Arc::new(read_selection(path)?);
    memo.lock().unwrap().insert(hash.to_string(), chosen.clone());
    Ok(chosen)
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
    // written since γ can be selected, and since the runner-up is recorded; older selections have none
    let opt = |c: &str| t.column_by_name(c).map(|_| crate::data_io::opt_f64s(&t, c));
    let gamma = opt("gamma");
    let (ru, ru_gamma, margin, margin_se) = (opt("runner_up"), opt("runner_up_gamma"), opt("margin"), opt("margin_se"));
    let at = |c: &Option<Vec<Option<f64>>>, i: usize| c.as_ref().and_then(|v| v[i]);
    let seed_list = seed_lists(&t, path)?;
    (0..t.num_rows())
        .map(|i| {
            Ok(Choice {
                method: methods[i].clone(),
                rho: rho[i],
                param: params[i].clone(),
                value: value[i].ok_or_else(|| {
                    StageError::invalid("selection", format!("{}: row {i}: null `value`", path.display()))
                })?,
                gamma: gamma.as_ref().and_then(|g| g[i]),
                advantage: adv[i].unwrap_or(f64::NAN),
                seeds: seeds[i].unwrap_or(0.0) as usize,
                seed_list: seed_list.as_ref().map_or_else(Vec::new, |l| l[i].clone()),
                candidates: cands[i].unwrap_or(0.0) as usize,
                runner_up: at(&ru, i).map(|value| RunnerUp {
                    value,
                    gamma: at(&ru_gamma, i),
                    margin: at(&margin, i).unwrap_or(f64::NAN),
                    margin_se: at(&margin_se, i),
                }),
            })
        })
        .collect()
}

/// The `seed_list` column (a list of seeds per choice), if the table has one: selections written before it have none.
fn seed_lists(t: &arrow::array::RecordBatch, path: &std::path::Path) -> StageResult<Option<Vec<Vec<i64>>>> {
    use arrow::array::{Array, Int64Array, ListArray};
    let Some(col) = t.column_by_name("seed_list") else { return Ok(None) };
    let bad = || StageError::invalid("selection", format!("{}: `seed_list` is not a list of int64", path.display()));
    let list = col.as_any().downcast_ref::<ListArray>().ok_or_else(bad)?;
    (0..list.len())
        .map(|i| {
            let v = list.value(i);
            let v = v.as_any().downcast_ref::<Int64Array>().ok_or_else(bad)?;
            Ok(v.iter().flatten().collect())
        })
        .collect::<StageResult<Vec<_>>>()
        .map(Some)
}

/// A policy's parameters with the choice for its method and ρ applied: the chosen β (or τ) and, when chosen, γ.
/// Refuses parameters that also set a chosen value themselves, so that no manifest value is silently replaced.
pub fn apply_choice(
    params: &serde_json::Map<String, serde_json::Value>,
    chosen: &[Choice],
    method: &str,
    rho: Option<f64>,
) -> StageResult<(serde_json::Map<String, serde_json::Value>, Choice)> {
    let c = require_choice(chosen, method, rho).map_err(|e| StageError::invalid("selection", e))?;
    let mut out = params.clone();
    let mut set = |k: &str, v: f64| {
        if out.contains_key(k) {
            return Err(StageError::invalid(
                k,
                format!("{k} is both set here and chosen by the bound selection ({k} = {v}); remove one"),
            ));
        }
        out.insert(k.to_string(), serde_json::json!(v));
        Ok(())
    };
    set(&c.param, c.value)?;
    if let Some(g) = c.gamma {
        set("gamma", g)?;
    }
    Ok((out, c.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn choice(method: &str, rho: f64, param: &str, value: f64, gamma: Option<f64>) -> Choice {
        Choice {
            method: method.into(),
            rho: Some(rho),
            param: param.into(),
            value,
            gamma,
            advantage: 0.1,
            seeds: 1,
            seed_list: vec![0],
            candidates: 6,
            runner_up: None,
        }
    }

    #[test]
    fn applies_the_choice_for_the_method_and_rho() {
        let chosen = vec![
            choice("e-dpo", 0.2, "beta", 1.0, Some(0.01)),
            choice("e-dpo", 0.5, "beta", 10.0, Some(0.1)),
            choice("ipo", 0.2, "tau", 3.0, None),
        ];
        let params = json!({"method": "e-dpo", "epochs": 2}).as_object().unwrap().clone();
        let (p, c) = apply_choice(&params, &chosen, "e-dpo", Some(0.5)).unwrap();
        assert_eq!((p["beta"].as_f64(), p["gamma"].as_f64(), p["epochs"].as_i64()), (Some(10.0), Some(0.1), Some(2)));
        assert!(c.is_config(Some(10.0), Some(0.1)) && !c.is_config(Some(10.0), Some(0.01)));
        let ipo = json!({"method": "ipo"}).as_object().unwrap().clone();
        let (p, _) = apply_choice(&ipo, &chosen, "ipo", Some(0.2)).unwrap();
        assert_eq!((p["tau"].as_f64(), p.get("gamma")), (Some(3.0), None));
        // a value set twice, or no choice for this ρ, is an error that names it
        let twice = json!({"method": "e-dpo", "gamma": 0.5}).as_object().unwrap().clone();
        let e = apply_choice(&twice, &chosen, "e-dpo", Some(0.2)).unwrap_err().to_string();
        assert!(e.contains("gamma is both set here and chosen"), "{e}");
        let e = apply_choice(&params, &chosen, "e-dpo", Some(0.8)).unwrap_err().to_string();
        assert!(e.contains("no choice for e-DPO at ρ = 0.8"), "{e}");
    }
}
