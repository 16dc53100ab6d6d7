//! Where each choice of a `select` stage lies in the grid its candidates spanned: the smallest and the largest value
//! of the swept parameter (β or τ) and of γ per (method, ρ), as `select` records them beside its selection, and which
//! end of its grid a choice sits at. A choice at an end may have a better value beyond it that validation never saw,
//! so the report marks it. Kept apart from `selection` (which `policy` and `evaluate` read): the grid only informs
//! the reader, and a change here must not re-run the stages that train and evaluate.

use crate::port::*;
use crate::selection::{Choice, rho_key};
use crate::table;
use std::collections::BTreeMap;

/// The ends of one (method, ρ) group's grid.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Grid {
    /// Smallest and largest value of the swept parameter among the candidates.
    pub value: Option<(f64, f64)>,
    /// The same for γ, where the candidates had one.
    pub gamma: Option<(f64, f64)>,
}

/// The column names `select` writes them under.
pub const COLUMNS: [&str; 4] = ["grid_min", "grid_max", "gamma_grid_min", "gamma_grid_max"];

/// An end of a grid at which a choice lies: the parameter ("beta" | "tau" | "gamma") and whether it is the lowest.
pub type Edge = (String, bool);

/// Grids per (method, ρ key) from the candidates' (method, ρ, value, γ).
pub fn grids<'a>(
    candidates: impl Iterator<Item = (&'a str, Option<f64>, f64, Option<f64>)>,
) -> BTreeMap<(String, i64), Grid> {
    let widen = |r: Option<(f64, f64)>, x: f64| Some(r.map_or((x, x), |(lo, hi): (f64, f64)| (lo.min(x), hi.max(x))));
    let mut out: BTreeMap<(String, i64), Grid> = BTreeMap::new();
    for (method, rho, value, gamma) in candidates {
        let g = out.entry((method.to_string(), rho_key(rho))).or_default();
        g.value = widen(g.value, value);
        if let Some(x) = gamma {
            g.gamma = widen(g.gamma, x);
        }
    }
    out
}

/// The grids of a `selection` table, keyed by (method, ρ key); empty for a selection written before they were.
pub fn read_grids(path: &std::path::Path) -> StageResult<BTreeMap<(String, i64), Grid>> {
    let t = table::read_table(path, None)?;
    if COLUMNS.iter().any(|c| t.column_by_name(c).is_none()) {
        return Ok(BTreeMap::new());
    }
    let methods = crate::data_io::strings(&t, "method", path, true)?;
    let rho = crate::data_io::opt_f64s(&t, "rho");
    let [lo, hi, glo, ghi] = COLUMNS.map(|c| crate::data_io::opt_f64s(&t, c));
    Ok((0..t.num_rows())
        .map(|i| {
            let g = Grid { value: lo[i].zip(hi[i]), gamma: glo[i].zip(ghi[i]) };
            ((methods[i].clone(), rho_key(rho[i])), g)
        })
        .collect())
}

/// The ends of their grids at which the chosen value (and γ) lie; empty when each is inside its grid, or a grid
/// holds one value (a fixed value is no edge).
pub fn at_edges(c: &Choice, g: &Grid) -> Vec<Edge> {
    let same = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0);
    let edge = |v: f64, grid: Option<(f64, f64)>| match grid {
        Some((lo, hi)) if !same(lo, hi) && same(v, lo) => Some(true),
        Some((lo, hi)) if !same(lo, hi) && same(v, hi) => Some(false),
        _ => None,
    };
    let mut out = vec![];
    if let Some(low) = edge(c.value, g.value) {
        out.push((c.param.clone(), low));
    }
    if let Some(low) = c.gamma.and_then(|x| edge(x, g.gamma)) {
        out.push(("gamma".to_string(), low));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn choice(param: &str, value: f64, gamma: Option<f64>) -> Choice {
        Choice {
            method: "e-dpo".into(),
            rho: Some(0.2),
            param: param.into(),
            value,
            gamma,
            advantage: 0.1,
            seeds: 1,
            seed_list: vec![0],
            candidates: 3,
            runner_up: None,
        }
    }

    #[test]
    fn grids_span_each_groups_candidates() {
        let rows = [
            ("e-dpo", Some(0.2), 1.0, Some(0.1)),
            ("e-dpo", Some(0.2), 0.1, Some(0.01)),
            ("e-dpo", Some(0.2), 10.0, Some(0.1)),
            ("e-dpo", Some(0.8), 3.0, Some(0.1)),
            ("ipo", Some(0.2), 0.5, None),
        ];
        let g = grids(rows.into_iter());
        assert_eq!(
            g[&("e-dpo".into(), rho_key(Some(0.2)))],
            Grid { value: Some((0.1, 10.0)), gamma: Some((0.01, 0.1)) }
        );
        assert_eq!(g[&("e-dpo".into(), rho_key(Some(0.8)))], Grid { value: Some((3.0, 3.0)), gamma: Some((0.1, 0.1)) });
        assert_eq!(g[&("ipo".into(), rho_key(Some(0.2)))], Grid { value: Some((0.5, 0.5)), gamma: None });
    }

    #[test]
    fn a_choice_at_an_end_of_its_grid_says_which() {
        let g = Grid { value: Some((0.1, 10.0)), gamma: Some((0.1, 0.1)) };
        // lowest β; a one-value γ grid is a fixed value, not an edge
        assert_eq!(at_edges(&choice("beta", 0.1, Some(0.1)), &g), vec![("beta".to_string(), true)]);
        let g2 = Grid { gamma: Some((0.01, 0.1)), ..g };
        assert_eq!(
            at_edges(&choice("beta", 0.1, Some(0.1)), &g2),
            vec![("beta".to_string(), true), ("gamma".to_string(), false)]
        );
        assert!(at_edges(&choice("beta", 1.0, None), &g2).is_empty());
        assert_eq!(at_edges(&choice("tau", 10.0, None), &g), vec![("tau".to_string(), false)]);
        // no grid recorded (an older selection): nothing said
        assert!(at_edges(&choice("beta", 0.1, None), &Grid::default()).is_empty());
    }
}
