//! The β/τ selection as the stages that use it read it: a chosen value per (method, ρ) ([`Choice`]), how ρ values are
//! matched ([`rho_key`]), the lookup of the choice for a run ([`choice_for`]), and reading a `select` stage's
//! `selection` table back (`evaluate` picks the chosen candidate policy with it; `report` marks the chosen runs).

use crate::port::*;
use crate::table;

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

/// The choice made for `method` at `rho` (a choice made without ρ covers every ρ); ρ values match as `select`
/// groups them.
pub fn choice_for<'a>(chosen: &'a [Choice], method: &str, rho: Option<f64>) -> Option<&'a Choice> {
    chosen.iter().find(|c| c.method == method && (c.rho.is_none() || rho_key(c.rho) == rho_key(rho)))
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
