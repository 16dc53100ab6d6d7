//! `report`: the experiment's Markdown report and figures, from any run's evaluation summaries and training
//! metrics.
//!
//! Inputs: `evals` (many evaluate.summary; their node coordinates give `rho`, `method`, `seed` and, in a sweep
//! without selection, `beta`/`tau`; the summary's own `rho`/`method` columns fill in what coordinates lack),
//! `metrics` (many policy.metrics, same coordinates), optional `rm_metrics` (many train_rm.metrics: their key-value
//! metadata is tabulated).
//!
//! Seeds are aggregated per (method, ρ): with ≥ 2 seeds the mean advantage over seeds with a Student-t 95% interval
//! across seeds; with one seed that run's own paired interval. The best method per ρ is compared with the runner-up
//! by a Wald test (significant at p < 0.05). A method evaluated at several β/τ values without selection appears
//! once per value.
//!
//! Output `report` (Dir): `report.md`, `advantage_vs_rho.png` (paper Fig. 2), `logp_trajectories.png` (Fig. B.1:
//! mean `log π_θ(y_w)` and `log π_θ(y_l)` over training per method, at the smallest ρ), `member_usage.png`
//! (Fig. B.3: share of e-DPO steps choosing each ensemble member, vs ρ) and `results.json` (the aggregated numbers).
//! Text in the PNGs uses DejaVu Sans embedded from the `dejavu` crate: no system fonts are needed.

use crate::data_io;
use crate::evaluation::{EvalRow, read_eval};
use crate::port::*;
use crate::selection::rho_key;
use crate::stats::{self, Estimate};
use crate::table;
use plotters::prelude::*;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::Path;

pub struct Report;

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Title of the report.
    #[serde(default = "d_title")]
    title: String,
    /// Significance level for "best method" claims.
    #[serde(default = "d_alpha")]
    alpha: f64,
}
fn d_title() -> String {
    "Robust preference optimization through reward-model distillation".into()
}
fn d_alpha() -> f64 {
    0.05
}

fn parse(params: &Map<String, Value>) -> StageResult<Params> {
    let p: Params = parse_params(params)?;
    if !(p.alpha > 0.0 && p.alpha < 1.0) {
        return Err(StageError::invalid("alpha", format!("must be in (0, 1), got {}", p.alpha)));
    }
    Ok(p)
}

/// Aggregate over seeds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Cell {
    pub label: String,
    pub rho: Option<f64>,
    pub seeds: usize,
    pub advantage: Estimate,
    pub win_rate: f64,
    pub mean_len: f64,
    pub ref_mean_len: f64,
    pub kl: f64,
}

/// Distinguishes a method's β/τ values in labels when several were evaluated for the same ρ and seed (a sweep
/// without selection). Values chosen per ρ by validation differ across ρ but stay one method.
fn label_rows(rows: &mut [EvalRow]) {
    let mut values: BTreeMap<(String, i64, Option<i64>), (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new();
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

/// Whether a training run used the value the selection chose for its method and ρ (true when nothing was chosen
/// for it).
fn is_chosen(chosen: &[crate::selection::Choice], t: &Trajectory) -> bool {
    crate::selection::choice_for(chosen, &t.method, t.rho)
        .is_none_or(|c| c.is_value(if c.param == "tau" { t.tau } else { t.beta }))
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
            let m = |f: fn(&EvalRow) -> f64| stats::mean(&g.iter().map(|r| f(r)).collect::<Vec<_>>());
            Cell {
                label: g[0].label.clone(),
                rho: g[0].rho,
                seeds: g.len(),
                advantage: adv,
                win_rate: m(|r| r.win_rate),
                mean_len: m(|r| r.mean_len),
                ref_mean_len: m(|r| r.ref_mean_len),
                kl: m(|r| r.kl),
            }
        })
        .collect()
}

/// Per-step training metrics of one policy run.
#[derive(Debug, Clone)]
pub struct Trajectory {
    pub method: String,
    pub rho: Option<f64>,
    pub step: Vec<f64>,
    pub logp_chosen: Vec<Option<f64>>,
    pub logp_rejected: Vec<Option<f64>>,
    pub chosen_member: Vec<Option<f64>>,
    pub final_kl: Option<f64>,
    pub beta: Option<f64>,
    pub tau: Option<f64>,
}

fn read_metrics(a: &InputArtifact) -> StageResult<Trajectory> {
    let t = table::read_table(&a.path, None)?;
    let kv = table::read_kv(&a.path)?;
    let method = data_io::coord_str(&a.coords, "method")
        .or_else(|| kv.iter().find(|(k, _)| k == "rmdistill.method").map(|(_, v)| v.trim_matches('"').to_string()))
        .unwrap_or_else(|| a.node.clone());
    let kl = data_io::opt_f64s(&t, "kl");
    let num = |k: &str| {
        data_io::coord_f64(&a.coords, k)
            .or_else(|| kv.iter().find(|(x, _)| x == &format!("rmdistill.{k}")).and_then(|(_, v)| v.parse().ok()))
    };
    Ok(Trajectory {
        beta: num("beta"),
        tau: num("tau"),
        method,
        rho: data_io::coord_f64(&a.coords, "rho"),
        step: data_io::opt_f64s(&t, "step").into_iter().map(|v| v.unwrap_or(0.0)).collect(),
        logp_chosen: data_io::opt_f64s(&t, "logp_chosen"),
        logp_rejected: data_io::opt_f64s(&t, "logp_rejected"),
        chosen_member: data_io::opt_f64s(&t, "chosen_member"),
        final_kl: kl.iter().rev().flatten().next().copied(),
    })
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

fn plot_err<E: std::fmt::Debug>(e: E) -> StageError {
    StageError::failed(format!("plotting: {e:?}"))
}

fn range(vals: impl Iterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in vals.filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.08).max(1e-3);
    (lo - pad, hi + pad)
}

/// Fig. 2: advantage vs ρ per method, with 95% intervals.
fn plot_advantage(path: &Path, cells: &[Cell], labels: &[String]) -> StageResult<()> {
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let rhos: Vec<f64> = cells.iter().map(|c| c.rho.unwrap_or(0.5)).collect();
    let (x0, x1) = range(rhos.iter().copied());
    let (y0, y1) = range(cells.iter().flat_map(|c| [c.advantage.ci_low, c.advantage.ci_high]).chain([0.0]));
    let mut chart = ChartBuilder::on(&root)
        .caption("Oracle advantage over π_ref vs ρ (95% CI)", ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("ρ (share of training pairs preferring the longer response)")
        .y_desc("advantage (oracle reward)")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(plot_err)?;
    chart.draw_series(LineSeries::new([(x0, 0.0), (x1, 0.0)], BLACK.mix(0.4))).map_err(plot_err)?;
    let n = labels.len().max(1) as f64;
    let jitter = (x1 - x0) * 0.006;
    for (k, label) in labels.iter().enumerate() {
        let color = PALETTE[k % PALETTE.len()];
        let mut pts: Vec<&Cell> = cells.iter().filter(|c| &c.label == label).collect();
        pts.sort_by(|a, b| a.rho.partial_cmp(&b.rho).unwrap_or(std::cmp::Ordering::Equal));
        let dx = (k as f64 - (n - 1.0) / 2.0) * jitter;
        let xy: Vec<(f64, f64)> = pts.iter().map(|c| (c.rho.unwrap_or(0.5) + dx, c.advantage.mean)).collect();
        chart
            .draw_series(LineSeries::new(xy.clone(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        chart.draw_series(xy.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(plot_err)?;
        chart
            .draw_series(pts.iter().map(|c| {
                let x = c.rho.unwrap_or(0.5) + dx;
                PathElement::new(vec![(x, c.advantage.ci_low), (x, c.advantage.ci_high)], color.stroke_width(1))
            }))
            .map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Mean over runs of a per-step series (runs may differ in length: each step averages the runs that have it).
fn mean_series(runs: &[&Vec<Option<f64>>], steps: &[&Vec<f64>]) -> Vec<(f64, f64)> {
    let len = runs.iter().map(|r| r.len()).max().unwrap_or(0);
    (0..len)
        .filter_map(|i| {
            let v: Vec<f64> = runs.iter().filter_map(|r| r.get(i).copied().flatten()).collect();
            let s = steps.iter().find_map(|s| s.get(i).copied())?;
            (!v.is_empty()).then(|| (s, stats::mean(&v)))
        })
        .collect()
}

/// Fig. B.1: log π_θ(y_w) (left) and log π_θ(y_l) (right) over training per method at one ρ.
fn plot_trajectories(path: &Path, trajs: &[Trajectory], rho: Option<f64>, methods: &[String]) -> StageResult<bool> {
    let at: Vec<&Trajectory> = trajs.iter().filter(|t| rho_key(t.rho) == rho_key(rho)).collect();
    let series: Vec<(String, Vec<(f64, f64)>, Vec<(f64, f64)>)> = methods
        .iter()
        .filter_map(|m| {
            let runs: Vec<&Trajectory> = at.iter().copied().filter(|t| &t.method == m).collect();
            if runs.is_empty() {
                return None;
            }
            let steps: Vec<&Vec<f64>> = runs.iter().map(|t| &t.step).collect();
            let w = mean_series(&runs.iter().map(|t| &t.logp_chosen).collect::<Vec<_>>(), &steps);
            let l = mean_series(&runs.iter().map(|t| &t.logp_rejected).collect::<Vec<_>>(), &steps);
            (!w.is_empty()).then(|| (m.clone(), w, l))
        })
        .collect();
    if series.is_empty() {
        return Ok(false);
    }
    let root = BitMapBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let title = match rho {
        Some(r) => format!("Policy log-likelihood of training responses during training (ρ = {r})"),
        None => "Policy log-likelihood of training responses during training".to_string(),
    };
    let root = root.titled(&title, ("sans-serif", 22)).map_err(plot_err)?;
    let panels = root.split_evenly((1, 2));
    let (x0, x1) = range(series.iter().flat_map(|s| s.1.iter().map(|p| p.0)));
    let (y0, y1) = range(series.iter().flat_map(|s| s.1.iter().chain(s.2.iter()).map(|p| p.1)));
    for (pi, (panel, name)) in
        panels.iter().zip(["log π_θ(y_w | x) (chosen)", "log π_θ(y_l | x) (rejected)"]).enumerate()
    {
        let mut chart = ChartBuilder::on(panel)
            .caption(name, ("sans-serif", 18))
            .margin(10)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(x0.max(0.0)..x1, y0..y1)
            .map_err(plot_err)?;
        chart.configure_mesh().x_desc("optimizer step").label_style(("sans-serif", 14)).draw().map_err(plot_err)?;
        for (k, (m, w, l)) in series.iter().enumerate() {
            let color = PALETTE[methods.iter().position(|x| x == m).unwrap_or(k) % PALETTE.len()];
            let pts = if pi == 0 { w.clone() } else { l.clone() };
            chart
                .draw_series(LineSeries::new(pts, color.stroke_width(2)))
                .map_err(plot_err)?
                .label(m.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::LowerLeft)
            .draw()
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(true)
}

/// Share of e-DPO steps that chose each member, per ρ (averaged over seeds).
fn member_usage(trajs: &[Trajectory]) -> BTreeMap<i64, (Option<f64>, Vec<f64>)> {
    let mut out: BTreeMap<i64, (Option<f64>, Vec<Vec<f64>>)> = BTreeMap::new();
    for t in trajs.iter().filter(|t| t.method == "e-dpo") {
        let chosen: Vec<usize> = t.chosen_member.iter().flatten().map(|&m| m as usize).collect();
        if chosen.is_empty() {
            continue;
        }
        let m = chosen.iter().max().unwrap() + 1;
        let mut share = vec![0.0; m];
        for c in &chosen {
            share[*c] += 1.0 / chosen.len() as f64;
        }
        out.entry(rho_key(t.rho)).or_insert((t.rho, vec![])).1.push(share);
    }
    out.into_iter()
        .map(|(k, (rho, runs))| {
            let m = runs.iter().map(|r| r.len()).max().unwrap_or(0);
            let avg = (0..m)
                .map(|j| stats::mean(&runs.iter().map(|r| r.get(j).copied().unwrap_or(0.0)).collect::<Vec<_>>()))
                .collect();
            (k, (rho, avg))
        })
        .collect()
}

/// Fig. B.3: e-DPO ensemble-member usage vs ρ.
fn plot_members(path: &Path, usage: &BTreeMap<i64, (Option<f64>, Vec<f64>)>) -> StageResult<bool> {
    if usage.is_empty() {
        return Ok(false);
    }
    let members = usage.values().map(|u| u.1.len()).max().unwrap_or(0);
    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let (x0, x1) = range(usage.values().map(|u| u.0.unwrap_or(0.5)));
    let mut chart = ChartBuilder::on(&root)
        .caption("e-DPO: share of steps whose min-loss member is m, vs ρ", ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, 0.0..1.05)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("ρ")
        .y_desc("share of optimizer steps")
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(plot_err)?;
    for m in 0..members {
        let color = PALETTE[m % PALETTE.len()];
        let pts: Vec<(f64, f64)> =
            usage.values().map(|u| (u.0.unwrap_or(0.5), u.1.get(m).copied().unwrap_or(0.0))).collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(format!("member {m}"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(true)
}

fn fmt_rho(r: Option<f64>) -> String {
    r.map_or("–".into(), |v| format!("{v}"))
}

/// The best label per ρ and its Wald test against the runner-up.
pub fn best_per_rho(cells: &[Cell]) -> Vec<(Option<f64>, String, Option<(String, stats::Test)>)> {
    let mut by: BTreeMap<i64, Vec<&Cell>> = BTreeMap::new();
    for c in cells {
        by.entry(rho_key(c.rho)).or_default().push(c);
    }
    by.into_values()
        .map(|mut v| {
            v.sort_by(|a, b| b.advantage.mean.partial_cmp(&a.advantage.mean).unwrap_or(std::cmp::Ordering::Equal));
            let second = v.get(1).map(|s| (s.label.clone(), stats::wald(&v[0].advantage, &s.advantage)));
            (v[0].rho, v[0].label.clone(), second)
        })
        .collect()
}

impl Stage for Report {
    fn kind(&self) -> &'static str {
        "report"
    }
    fn doc(&self) -> &'static str {
        "report.md and PNG figures: advantage vs rho per method with CIs (Fig. 2), log-prob trajectories (Fig. B.1), e-DPO member usage (Fig. B.3)"
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
                name: "metrics",
                required: false,
                many: true,
                doc: "policy.metrics of every policy (coords rho, method, seed)",
            },
            InputSpec { name: "rm_metrics", required: false, many: true, doc: "reward-model training metrics" },
            InputSpec {
                name: "selection",
                required: false,
                many: true,
                doc: "select.selection: β/τ chosen by validation (tabulated; trajectories of other values dropped)",
            },
        ]
    }
    fn outputs(&self) -> &'static [OutputSpec] {
        &[OutputSpec { name: "report", kind: ArtifactKind::Dir, doc: "report.md, results.json and PNG figures" }]
    }
    fn validate(&self, params: &Map<String, Value>) -> StageResult<()> {
        parse(params).map(|_| ())
    }
    fn runs(&self) -> Runs {
        Runs::InProcess(run)
    }
}

pub fn run(ctx: &dyn Ctx) -> StageResult<Value> {
    let p = parse(ctx.params())?;
    register_font();
    let evals = ctx.inputs("evals");
    if evals.is_empty() {
        return Err(StageError::invalid("evals", "no evaluation summaries are bound to `evals`"));
    }
    let mut rows: Vec<EvalRow> = evals.iter().map(read_eval).collect::<StageResult<_>>()?;
    label_rows(&mut rows);
    let mut trajs: Vec<Trajectory> = ctx.inputs("metrics").iter().map(read_metrics).collect::<StageResult<_>>()?;
    let mut chosen: Vec<crate::selection::Choice> = vec![];
    for a in ctx.inputs("selection") {
        chosen.extend(crate::selection::read_selection(&a.path)?);
    }
    trajs.retain(|t| is_chosen(&chosen, t));
    let cells = aggregate(&rows);
    // method order: as METHOD.md lists them, then any others
    let mut labels: Vec<String> = cells.iter().map(|c| c.label.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    let order = |l: &String| {
        crate::method::Method::ALL.iter().position(|m| l.split(' ').next() == Some(m.name())).unwrap_or(99)
    };
    labels.sort_by_key(|l| (order(l), l.clone()));
    let rhos: Vec<Option<f64>> = {
        let mut v: Vec<Option<f64>> = cells.iter().map(|c| c.rho).collect();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v.dedup_by(|a, b| rho_key(*a) == rho_key(*b));
        v
    };
    let out = ctx.output_path("report");
    std::fs::create_dir_all(&out)?;
    plot_advantage(&out.join("advantage_vs_rho.png"), &cells, &labels)?;
    let traj_methods: Vec<String> = {
        let mut m: Vec<String> = trajs.iter().map(|t| t.method.clone()).collect::<BTreeSet<_>>().into_iter().collect();
        m.sort_by_key(|l| (order(l), l.clone()));
        m
    };
    let traj_rho = trajs.iter().map(|t| t.rho).min_by(|a, b| a.partial_cmp(b).unwrap()).flatten();
    let has_traj = plot_trajectories(&out.join("logp_trajectories.png"), &trajs, traj_rho, &traj_methods)?;
    let usage = member_usage(&trajs);
    let has_members = plot_members(&out.join("member_usage.png"), &usage)?;
    // ---- report.md
    let mut md = String::new();
    let seeds = rows.iter().filter_map(|r| r.seed).collect::<BTreeSet<_>>().len().max(1);
    let _ = writeln!(md, "# {}\n", p.title);
    let _ = writeln!(
        md,
        "{} evaluations: {} method configurations × {} values of ρ × {} seed(s). Advantage = mean oracle reward of the policy \
         minus that of π_ref on held-out prompts (paired by prompt); ± is the half-width of the 95% interval (across seeds when \
         there are ≥ 2, else the run's own paired interval).\n",
        rows.len(),
        labels.len(),
        rhos.len(),
        seeds
    );
    let _ = writeln!(md, "## Advantage over π_ref\n");
    let _ = write!(md, "| ρ |");
    for l in &labels {
        let _ = write!(md, " {l} |");
    }
    let _ = write!(md, "\n|---|");
    for _ in &labels {
        let _ = write!(md, "---|");
    }
    md.push('\n');
    let best = best_per_rho(&cells);
    for r in &rhos {
        let _ = write!(md, "| {} |", fmt_rho(*r));
        let best_label = best.iter().find(|b| rho_key(b.0) == rho_key(*r)).map(|b| b.1.clone());
        for l in &labels {
            match cells.iter().find(|c| &c.label == l && rho_key(c.rho) == rho_key(*r)) {
                Some(c) => {
                    let h = (c.advantage.ci_high - c.advantage.ci_low) / 2.0;
                    let s = format!("{:+.4} ± {:.4}", c.advantage.mean, h);
                    if best_label.as_ref() == Some(l) {
                        let _ = write!(md, " **{s}** |");
                    } else {
                        let _ = write!(md, " {s} |");
                    }
                }
                None => {
                    let _ = write!(md, " – |");
                }
            }
        }
        md.push('\n');
    }
    let _ = writeln!(md, "\n![advantage vs rho](advantage_vs_rho.png)\n");
    let _ = writeln!(md, "## Best method per ρ\n");
    let _ = writeln!(
        md,
        "| ρ | best | runner-up | difference | Wald z | p | significant (p < {}) |\n|---|---|---|---|---|---|---|",
        p.alpha
    );
    let mut best_json = vec![];
    for (rho, label, second) in &best {
        match second {
            Some((l2, t)) => {
                let _ = writeln!(
                    md,
                    "| {} | {label} | {l2} | {:+.4} | {:.2} | {:.3} | {} |",
                    fmt_rho(*rho),
                    t.diff,
                    t.stat,
                    t.p_value,
                    if t.p_value < p.alpha { "yes" } else { "no" }
                );
                best_json.push(
                    json!({"rho": rho, "best": label, "runner_up": l2, "test": t, "significant": t.p_value < p.alpha}),
                );
            }
            None => {
                let _ = writeln!(md, "| {} | {label} | – | | | | |", fmt_rho(*rho));
                best_json.push(json!({"rho": rho, "best": label}));
            }
        }
    }
    let _ = writeln!(md, "\n## Win rate, length and KL\n");
    let _ = writeln!(
        md,
        "| method | ρ | seeds | win rate vs π_ref | mean length | π_ref length | KL(π_θ‖π_ref) |\n|---|---|---|---|---|---|---|"
    );
    for l in &labels {
        for r in &rhos {
            if let Some(c) = cells.iter().find(|c| &c.label == l && rho_key(c.rho) == rho_key(*r)) {
                let _ = writeln!(
                    md,
                    "| {l} | {} | {} | {:.3} | {:.1} | {:.1} | {:.3} |",
                    fmt_rho(*r),
                    c.seeds,
                    c.win_rate,
                    c.mean_len,
                    c.ref_mean_len,
                    c.kl
                );
            }
        }
    }
    if has_traj {
        let _ = writeln!(
            md,
            "\n## Likelihood of the training responses (Fig. B.1)\n\nMean log π_θ of the chosen (y_w) and rejected (y_l) responses \
             of each training mini-batch, at ρ = {}, averaged over seeds (each point is one mini-batch, so the curves are \
             noisy). The paper reports that DPO pushes both down (likelihood collapse) while distillation and pessimism keep \
             them near π_ref: compare with the curves measured here.\n\n![log-prob trajectories](logp_trajectories.png)\n",
            fmt_rho(traj_rho)
        );
    }
    if has_members {
        let _ =
            writeln!(md, "\n## e-DPO ensemble-member usage (Fig. B.3)\n\n| ρ | share of steps per member |\n|---|---|");
        for (rho, u) in usage.values() {
            let s: Vec<String> = u.iter().enumerate().map(|(m, v)| format!("m{m}: {v:.2}")).collect();
            let _ = writeln!(md, "| {} | {} |", fmt_rho(*rho), s.join(", "));
        }
        let _ = writeln!(md, "\n![member usage](member_usage.png)\n");
    }
    if !chosen.is_empty() {
        let _ = writeln!(
            md,
            "\n## β/τ chosen by validation\n\nPer method and ρ, the value with the highest mean oracle advantage over π_ref on the \
             validation prompts (mean over seeds); the tables above evaluate that policy on the test prompts.\n\n\
             | method | ρ | parameter | chosen | validation advantage | candidates |\n|---|---|---|---|---|---|"
        );
        for c in &chosen {
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {:+.4} | {} |",
                c.method,
                fmt_rho(c.rho),
                c.param,
                c.value,
                c.advantage,
                c.candidates
            );
        }
    }
    let rm = ctx.inputs("rm_metrics");
    if !rm.is_empty() {
        let _ = writeln!(md, "\n## Reward models\n\n| node | metrics |\n|---|---|");
        for a in rm {
            let kv = if a.path.is_file() { table::read_kv(&a.path).unwrap_or_default() } else { vec![] };
            let s: Vec<String> = kv
                .iter()
                .filter(|(k, _)| k.starts_with("rmdistill.") && k != "rmdistill.stage")
                .map(|(k, v)| format!("{}={}", k.trim_start_matches("rmdistill."), v))
                .collect();
            let _ = writeln!(md, "| {} | {} |", a.node, s.join(", "));
        }
    }
    std::fs::write(out.join("report.md"), &md)?;
    let results = json!({
        "cells": cells,
        "best": best_json,
        "member_usage": usage.values().map(|(r, u)| json!({"rho": r, "share": u})).collect::<Vec<_>>(),
        "training": trajs.iter().map(|t| json!({"method": t.method, "rho": t.rho, "final_kl": t.final_kl})).collect::<Vec<_>>(),
    });
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&results).map_err(anyhow::Error::from)? + "\n",
    )?;
    ctx.log(&format!(
        "report: {} evaluations, {} cells, figures written to {}",
        rows.len(),
        cells.len(),
        out.display()
    ));
    Ok(json!({"evaluations": rows.len(), "cells": cells.len(), "best": best_json}))
}
