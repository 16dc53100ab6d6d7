//! The report's figures (PNG, drawn with `plotters`; text in DejaVu Sans embedded from the `dejavu` crate, so no
//! system fonts are needed): the paper's Fig. 2 (advantage vs ρ per method), Fig. B.1 (log-likelihood of the training
//! responses over training) and Fig. B.3 (which e-DPO ensemble member best matches each example, beside which member
//! each mini-batch chose). Legends use the paper's method names; callers pass them.

use crate::port::{StageError, StageResult};
use crate::stats;
use plotters::prelude::*;
use std::path::Path;

/// One point of Fig. 2: a method's advantage at one ρ with its 95% interval.
#[derive(Clone, Debug)]
pub struct AdvantagePoint {
    pub label: String,
    pub rho: Option<f64>,
    pub mean: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

/// One policy run's per-step log-likelihoods (Fig. B.1).
#[derive(Clone, Debug)]
pub struct Run<'a> {
    pub label: &'a str,
    pub step: &'a [f64],
    pub logp_chosen: &'a [Option<f64>],
    pub logp_rejected: &'a [Option<f64>],
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

pub fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

pub fn plot_err<E: std::fmt::Debug>(e: E) -> StageError {
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

/// A tick label with as many decimals as ticks about a tenth of `span` apart need; never "-0.0" (plotters' own
/// formatter prints a tick computed as −1e-17 so).
fn tick_label(v: f64, span: f64) -> String {
    let decimals = if span > 0.0 { (-(span / 10.0).log10().floor()).clamp(0.0, 6.0) as usize } else { 2 };
    let s = format!("{v:.decimals$}");
    if s.starts_with('-') && s[1..].chars().all(|c| c == '0' || c == '.') { s[1..].to_string() } else { s }
}

/// Fig. 2: advantage vs ρ per method, with 95% intervals.
pub fn plot_advantage(path: &Path, cells: &[AdvantagePoint], labels: &[String]) -> StageResult<()> {
    let root = BitMapBackend::new(path, (900, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let rhos: Vec<f64> = cells.iter().map(|c| c.rho.unwrap_or(0.5)).collect();
    let (x0, x1) = range(rhos.iter().copied());
    let (y0, y1) = range(cells.iter().flat_map(|c| [c.ci_low, c.ci_high]).chain([0.0]));
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
        .y_label_formatter(&|v| tick_label(*v, y1 - y0))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(plot_err)?;
    chart.draw_series(LineSeries::new([(x0, 0.0), (x1, 0.0)], BLACK.mix(0.4))).map_err(plot_err)?;
    let n = labels.len().max(1) as f64;
    let jitter = (x1 - x0) * 0.006;
    for (k, label) in labels.iter().enumerate() {
        let color = PALETTE[k % PALETTE.len()];
        let mut pts: Vec<&AdvantagePoint> = cells.iter().filter(|c| &c.label == label).collect();
        pts.sort_by(|a, b| a.rho.partial_cmp(&b.rho).unwrap_or(std::cmp::Ordering::Equal));
        let dx = (k as f64 - (n - 1.0) / 2.0) * jitter;
        let xy: Vec<(f64, f64)> = pts.iter().map(|c| (c.rho.unwrap_or(0.5) + dx, c.mean)).collect();
        chart
            .draw_series(LineSeries::new(xy.clone(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        chart.draw_series(xy.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(plot_err)?;
        chart
            .draw_series(pts.iter().map(|c| {
                let x = c.rho.unwrap_or(0.5) + dx;
                PathElement::new(vec![(x, c.ci_low), (x, c.ci_high)], color.stroke_width(1))
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
fn mean_series(runs: &[&[Option<f64>]], steps: &[&[f64]]) -> Vec<(f64, f64)> {
    let len = runs.iter().map(|r| r.len()).max().unwrap_or(0);
    (0..len)
        .filter_map(|i| {
            let v: Vec<f64> = runs.iter().filter_map(|r| r.get(i).copied().flatten()).collect();
            let s = steps.iter().find_map(|s| s.get(i).copied())?;
            (!v.is_empty()).then(|| (s, stats::mean(&v)))
        })
        .collect()
}

/// A method's mean curves of log π_θ(y_w) and log π_θ(y_l): (label, chosen, rejected).
type Series = (String, Vec<(f64, f64)>, Vec<(f64, f64)>);

/// Fig. B.1: log π_θ(y_w) (left) and log π_θ(y_l) (right) over training per method (the runs of one ρ, averaged
/// over seeds per label); false when there is nothing to draw.
pub fn plot_trajectories(path: &Path, at: &[Run], rho: Option<f64>, methods: &[String]) -> StageResult<bool> {
    let series: Vec<Series> = methods
        .iter()
        .filter_map(|m| {
            let runs: Vec<&Run> = at.iter().filter(|t| t.label == m.as_str()).collect();
            if runs.is_empty() {
                return None;
            }
            let steps: Vec<&[f64]> = runs.iter().map(|t| t.step).collect();
            let w = mean_series(&runs.iter().map(|t| t.logp_chosen).collect::<Vec<_>>(), &steps);
            let l = mean_series(&runs.iter().map(|t| t.logp_rejected).collect::<Vec<_>>(), &steps);
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

/// Fig. B.3 data at one ρ: per member (in the ensemble's order), the share of training examples it matches best
/// (the paper's figure) and the share of optimizer steps whose mini-batch minimum it was (e-DPO's choice).
#[derive(Clone, Debug, serde::Serialize)]
pub struct MemberUsage {
    pub rho: Option<f64>,
    /// Member labels, e.g. "ρ′ = 0.2".
    pub members: Vec<String>,
    /// Empty when the policy metrics carry no per-example column (`best_member_<m>`).
    pub best_per_example: Vec<f64>,
    pub chosen_per_batch: Vec<f64>,
}

/// Fig. B.3: e-DPO's ensemble members vs ρ, per example (left) and per mini-batch (right).
pub fn plot_members(path: &Path, usage: &[MemberUsage]) -> StageResult<bool> {
    if usage.is_empty() {
        return Ok(false);
    }
    let members = usage.iter().map(|u| u.members.len()).max().unwrap_or(0);
    let names: Vec<String> = (0..members)
        .map(|m| usage.iter().find_map(|u| u.members.get(m).cloned()).unwrap_or_else(|| format!("member {m}")))
        .collect();
    let root = BitMapBackend::new(path, (1300, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let root = root.titled("e-DPO ensemble members vs ρ (Fig. B.3)", ("sans-serif", 22)).map_err(plot_err)?;
    let panels = root.split_evenly((1, 2));
    let (x0, x1) = range(usage.iter().map(|u| u.rho.unwrap_or(0.5)));
    type Column = fn(&MemberUsage) -> &Vec<f64>;
    let panel_data: [(&str, Column); 2] = [
        ("share of examples best matched by the member", |u| &u.best_per_example),
        ("share of mini-batches whose minimum is the member", |u| &u.chosen_per_batch),
    ];
    for (panel, (title, get)) in panels.iter().zip(panel_data) {
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 17))
            .margin(10)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d(x0..x1, 0.0..1.05)
            .map_err(plot_err)?;
        chart.configure_mesh().x_desc("ρ").label_style(("sans-serif", 14)).draw().map_err(plot_err)?;
        if usage.iter().all(|u| get(u).is_empty()) {
            continue;
        }
        for (m, name) in names.iter().enumerate() {
            let color = PALETTE[m % PALETTE.len()];
            let pts: Vec<(f64, f64)> = usage
                .iter()
                .filter(|u| !get(u).is_empty())
                .map(|u| (u.rho.unwrap_or(0.5), get(u).get(m).copied().unwrap_or(0.0)))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(plot_err)?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
            chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(plot_err)?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 13))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::tick_label;

    #[test]
    fn tick_labels_fit_the_span_and_zero_has_no_sign() {
        assert_eq!(tick_label(-1e-17, 0.9), "0.00");
        assert_eq!(tick_label(-0.0, 0.9), "0.00");
        assert_eq!(tick_label(-0.1, 0.9), "-0.10");
        assert_eq!(tick_label(0.25, 0.9), "0.25");
        assert_eq!(tick_label(0.005, 0.02), "0.005");
        assert_eq!(tick_label(-3e-19, 0.02), "0.000");
        assert_eq!(tick_label(20.0, 150.0), "20");
        assert_eq!(tick_label(0.5, 0.0), "0.50");
    }
}
