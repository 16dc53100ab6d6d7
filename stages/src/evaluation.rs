//! The evaluation summary that `evaluate` computes from its samples and `merge_eval` recomputes from merged shards:
//! per (prompt, sample) rows, the paired advantage with its interval, win rate, lengths and KL, the two tables they
//! are written as, and reading them back (`select` and `report` read summaries; the report compares samples).

use crate::data_io;
use crate::port::*;
use crate::stats::{self, Estimate};
use crate::table;
use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::Arc;

/// Per (prompt, sample) results of one evaluation.
#[derive(Debug, Default, Clone)]
pub struct SampleRows {
    pub prompt_idx: Vec<u32>,
    pub sample: Vec<u32>,
    pub prompt: Vec<String>,
    pub policy_response: Vec<String>,
    pub ref_response: Vec<String>,
    pub policy_oracle: Vec<f64>,
    pub ref_oracle: Vec<f64>,
    pub policy_len: Vec<u32>,
    pub ref_len: Vec<u32>,
    pub policy_logp: Vec<f64>,
    pub policy_logp_ref: Vec<f64>,
}

/// The summary numbers of an evaluation (see the module docs).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub advantage: stats::Estimate,
    pub win_rate: f64,
    pub mean_len: f64,
    pub ref_mean_len: f64,
    pub kl: f64,
    pub policy_mean: f64,
    pub ref_mean: f64,
    /// Length-controlled advantage and the power estimate's figures.
    pub seed: crate::eval_stats::SeedStats,
}

/// Summarises sample rows: per-prompt mean differences give the paired advantage estimate.
pub fn summarize(s: &SampleRows) -> Summary {
    let n = s.prompt_idx.len();
    let mut per_prompt: std::collections::BTreeMap<u32, (f64, usize)> = Default::default();
    let mut wins = 0.0;
    for i in 0..n {
        let d = s.policy_oracle[i] - s.ref_oracle[i];
        let e = per_prompt.entry(s.prompt_idx[i]).or_default();
        e.0 += d;
        e.1 += 1;
        wins += match crate::oracle::compare(s.policy_oracle[i], s.ref_oracle[i]) {
            std::cmp::Ordering::Greater => 1.0,
            std::cmp::Ordering::Equal => 0.5,
            std::cmp::Ordering::Less => 0.0,
        };
    }
    let diffs: Vec<f64> = per_prompt.values().map(|(sum, c)| sum / *c as f64).collect();
    let mean_u = |v: &[u32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64;
    let kl: Vec<f64> = s.policy_logp.iter().zip(&s.policy_logp_ref).map(|(a, b)| a - b).collect();
    let d: Vec<f64> = s.policy_oracle.iter().zip(&s.ref_oracle).map(|(a, b)| a - b).collect();
    let len_diff: Vec<f64> = s.policy_len.iter().zip(&s.ref_len).map(|(a, b)| *a as f64 - *b as f64).collect();
    Summary {
        seed: crate::eval_stats::seed_stats(&s.prompt_idx, &d, &len_diff),
        advantage: stats::estimate(&diffs),
        win_rate: wins / n.max(1) as f64,
        mean_len: mean_u(&s.policy_len),
        ref_mean_len: mean_u(&s.ref_len),
        kl: stats::mean(&kl),
        policy_mean: stats::mean(&s.policy_oracle),
        ref_mean: stats::mean(&s.ref_oracle),
    }
}

pub fn samples_table(s: &SampleRows) -> StageResult<RecordBatch> {
    let f = |n: &str, t: DataType| Field::new(n, t, false);
    let schema = Schema::new(vec![
        f("prompt_idx", DataType::UInt32),
        f("sample", DataType::UInt32),
        f("prompt", DataType::Utf8),
        f("policy_response", DataType::Utf8),
        f("ref_response", DataType::Utf8),
        f("policy_oracle", DataType::Float64),
        f("ref_oracle", DataType::Float64),
        f("policy_len", DataType::UInt32),
        f("ref_len", DataType::UInt32),
        f("policy_logp", DataType::Float64),
        f("policy_logp_ref", DataType::Float64),
    ]);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(s.prompt_idx.clone())),
        Arc::new(UInt32Array::from(s.sample.clone())),
        Arc::new(StringArray::from(s.prompt.clone())),
        Arc::new(StringArray::from(s.policy_response.clone())),
        Arc::new(StringArray::from(s.ref_response.clone())),
        Arc::new(Float64Array::from(s.policy_oracle.clone())),
        Arc::new(Float64Array::from(s.ref_oracle.clone())),
        Arc::new(UInt32Array::from(s.policy_len.clone())),
        Arc::new(UInt32Array::from(s.ref_len.clone())),
        Arc::new(Float64Array::from(s.policy_logp.clone())),
        Arc::new(Float64Array::from(s.policy_logp_ref.clone())),
    ];
    Ok(RecordBatch::try_new(Arc::new(schema), cols)?)
}

/// The key, in an evaluation's `samples` table metadata, of what its π_ref side depends on (`evaluate`'s
/// `sampling_record`): `evaluate` checks a reused table by it, `merge_eval` that its shards are one evaluation's.
pub const SAMPLING_KEY: &str = "rmdistill.reference_sampling";

/// The summary table's columns, in order.
pub const SUMMARY_COLUMNS: [&str; 13] = [
    "advantage",
    "ci_low",
    "ci_high",
    "se",
    "n_prompts",
    "win_rate",
    "mean_len",
    "ref_mean_len",
    "kl",
    "policy_mean",
    "ref_mean",
    "beta",
    "tau",
];

pub fn summary_table(s: &Summary, info: &Value, split: Option<&str>) -> StageResult<RecordBatch> {
    let num = |k: &str| info.get(k).and_then(Value::as_f64);
    let vals: Vec<Option<f64>> = vec![
        Some(s.advantage.mean),
        Some(s.advantage.ci_low),
        Some(s.advantage.ci_high),
        Some(s.advantage.se),
        Some(s.advantage.n as f64),
        Some(s.win_rate),
        Some(s.mean_len),
        Some(s.ref_mean_len),
        Some(s.kl),
        Some(s.policy_mean),
        Some(s.ref_mean),
        num("beta"),
        num("tau"),
    ];
    let mut fields: Vec<Field> = SUMMARY_COLUMNS.iter().map(|c| Field::new(*c, DataType::Float64, true)).collect();
    let mut cols: Vec<ArrayRef> = vals.into_iter().map(|v| Arc::new(Float64Array::from(vec![v])) as ArrayRef).collect();
    for (c, v) in crate::eval_stats::COLUMNS.iter().zip(s.seed.values()) {
        fields.push(Field::new(*c, DataType::Float64, true));
        cols.push(Arc::new(Float64Array::from(vec![v])));
    }
    fields.push(Field::new("rho", DataType::Float64, true));
    cols.push(Arc::new(Float64Array::from(vec![num("rho")])));
    fields.push(Field::new("method", DataType::Utf8, true));
    cols.push(Arc::new(StringArray::from(vec![info.get("method").and_then(Value::as_str).map(str::to_string)])));
    fields.push(Field::new("split", DataType::Utf8, true));
    cols.push(Arc::new(StringArray::from(vec![split.map(str::to_string)])));
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?)
}

/// What both tables' metadata and the node's summary record (the shard numbers and the policy's info let
/// `merge_eval` rebuild the unsharded summary).
pub fn summary_json(
    sum: &Summary,
    samples: usize,
    split: Option<&str>,
    info: &Value,
    shard: usize,
    shards: usize,
    cut: usize,
) -> Value {
    json!({
        "advantage": sum.advantage.mean,
        "ci_low": sum.advantage.ci_low,
        "ci_high": sum.advantage.ci_high,
        "se": sum.advantage.se,
        "n_prompts": sum.advantage.n,
        "samples": samples,
        "win_rate": sum.win_rate,
        "mean_len": sum.mean_len,
        "ref_mean_len": sum.ref_mean_len,
        "kl": sum.kl,
        "policy_mean": sum.policy_mean,
        "ref_mean": sum.ref_mean,
        "lc_advantage": sum.seed.lc.map(|l| l.intercept),
        "cut_samples": cut,
        "split": split,
        "method": info.get("method"),
        "shard": shard,
        "shards": shards,
        "policy_info": info.to_string(),
    })
}

/// How many of an evaluation's policy samples reached `max_new_tokens` without EOS: they are scored as cut, and
/// their length is capped at it (what the length findings measure).
pub fn cut_samples(s: &SampleRows, max_new_tokens: usize) -> usize {
    s.policy_len.iter().filter(|&&l| l as usize >= max_new_tokens).count()
}

/// Whether `cut` of `rows` texts cut short (samples at `max_new_tokens`, sequences at `max_len`) is worth a warning:
/// 1% or more. A handful among hundreds is the tail of any sampler; more changes what is measured or learned.
pub fn notable_cut(cut: usize, rows: usize) -> bool {
    rows > 0 && cut * 100 >= rows
}

/// The warning for an evaluation whose policy samples were cut at `max_new_tokens` ([`notable_cut`]): it caps the
/// policy's length and scores unfinished text.
pub fn cut_warning(cut: usize, rows: usize, max_new_tokens: usize) -> Option<String> {
    notable_cut(cut, rows).then(|| {
        format!(
            "{cut} of {rows} policy samples ({:.1}%) reached max_new_tokens = {max_new_tokens} without EOS: they are \
             scored cut, and the policy's length is capped there (raise max_new_tokens)",
            100.0 * cut as f64 / rows as f64
        )
    })
}

/// The sampling record's fields that belong to one seed: its π_ref, its prompts, its sampling seed, its oracle's
/// checkpoint. Everything else in the record is the evaluation protocol, the same for every seed.
const PER_SEED: [&str; 4] = ["reference", "prompts", "seed", "oracle_model"];

/// Evaluations that are compared with one another (a report's paired contrasts, a selection's candidates) must have
/// been drawn alike: the same protocol everywhere (split, prompts taken, samples per prompt, sampling, `max_len`,
/// oracle), and within one seed the same π_ref, prompts, sampling seed and oracle too, since the contrasts are paired
/// on the prompts and π_ref's samples. Summaries written before the record are not checked.
pub fn check_comparable(rows: &[EvalRow], slot: &str) -> StageResult<()> {
    type Fields = serde_json::Map<String, Value>;
    // the fields of one part of the record (PER_SEED, or the protocol) that differ between two evaluations
    let differ = |a: &EvalRow, am: &Fields, b: &EvalRow, bm: &Fields, per_seed: bool| -> Option<String> {
        let show = |v: Option<&Value>| v.map_or_else(|| "absent".to_string(), |v| v.to_string());
        let d: Vec<String> = crate::reuse::differing_keys(am, bm, |k| PER_SEED.contains(&k) == per_seed)
            .into_iter()
            .map(|k| format!("{k} {} in {}, {} in {}", show(am.get(k)), a.node, show(bm.get(k)), b.node))
            .collect();
        (!d.is_empty()).then(|| d.join("; "))
    };
    let refuse = |a: &EvalRow, b: &EvalRow, what: &str, d: String| {
        StageError::invalid(
            slot,
            format!(
                "{} and {} were evaluated {what} ({d}): comparing them would not be a paired comparison of policies; \
                 evaluate every policy compared here alike",
                a.node, b.node
            ),
        )
    };
    let with: Vec<(&EvalRow, &Fields)> =
        rows.iter().filter_map(|r| Some((r, r.sampling.as_ref()?.as_object()?))).collect();
    let Some(&(first, fm)) = with.first() else { return Ok(()) };
    let mut by_seed: std::collections::BTreeMap<Option<i64>, (&EvalRow, &Fields)> = Default::default();
    for &(r, m) in &with {
        if let Some(d) = differ(first, fm, r, m, false) {
            return Err(refuse(first, r, "under another protocol", d));
        }
        let &mut (a, am) = by_seed.entry(r.seed).or_insert((r, m));
        if let Some(d) = differ(a, am, r, m, true) {
            return Err(refuse(a, r, "on one seed with other prompts, π_ref or oracle", d));
        }
    }
    Ok(())
}

/// Reads an evaluate `samples` table back (for the report's paired comparisons).
pub fn read_samples(path: &Path) -> StageResult<SampleRows> {
    samples_from(&table::read_table(path, None)?, path)
}

pub fn samples_from(t: &RecordBatch, path: &Path) -> StageResult<SampleRows> {
    let t = t.clone();
    let u = |c: &str| -> StageResult<Vec<u32>> { Ok(table::u32_values(&t, c)?.values().to_vec()) };
    Ok(SampleRows {
        prompt_idx: u("prompt_idx")?,
        sample: u("sample")?,
        prompt: data_io::strings(&t, "prompt", path, false)?,
        policy_response: data_io::strings(&t, "policy_response", path, false)?,
        ref_response: data_io::strings(&t, "ref_response", path, false)?,
        policy_oracle: data_io::f64s(&t, "policy_oracle", path)?,
        ref_oracle: data_io::f64s(&t, "ref_oracle", path)?,
        policy_len: u("policy_len")?,
        ref_len: u("ref_len")?,
        policy_logp: data_io::f64s(&t, "policy_logp", path)?,
        policy_logp_ref: data_io::f64s(&t, "policy_logp_ref", path)?,
    })
}

/// Refuses two evaluations of one configuration on one seed — the same summary bound twice, or two nodes alike in
/// everything `alike` names — since either would count that seed twice: a mean weighing one run double, an interval
/// over seeds narrower than the data allow. A mistake in the manifest, not data; `hint` says what to check.
pub fn refuse_repeats<'a, K: Ord>(
    slot: &str,
    alike: &str,
    hint: &str,
    rows: impl IntoIterator<Item = (K, &'a String)>,
) -> StageResult<()> {
    let mut seen: std::collections::BTreeMap<K, &String> = std::collections::BTreeMap::new();
    for (key, node) in rows {
        if let Some(first) = seen.get(&key) {
            let message = if *first == node {
                format!("{node} is bound twice: each evaluation counts once")
            } else {
                format!("{first} and {node} have the same {alike} and seed: one seed would count twice; {hint}")
            };
            return Err(StageError::invalid(slot, message));
        }
        seen.insert(key, node);
    }
    Ok(())
}

/// One evaluation summary with where it came from.
#[derive(Debug, Clone)]
pub struct EvalRow {
    pub node: String,
    pub label: String,
    pub method: String,
    pub rho: Option<f64>,
    pub seed: Option<i64>,
    pub advantage: Estimate,
    pub win_rate: f64,
    pub mean_len: f64,
    pub ref_mean_len: f64,
    pub kl: f64,
    pub beta: Option<f64>,
    pub tau: Option<f64>,
    pub gamma: Option<f64>,
    /// The length-controlled advantage and variance figures (None for summaries written before they existed).
    pub stats: Option<crate::eval_stats::SeedStats>,
    /// How it was drawn (`evaluate`'s sampling record; None for summaries written before the summary carried it).
    pub sampling: Option<Value>,
    /// Policy samples cut at `max_new_tokens`, and the evaluation's rows (None for summaries written before the cut
    /// ones were counted).
    pub cut_samples: Option<(usize, usize)>,
}

fn opt_f64(t: &arrow::array::RecordBatch, col: &str) -> Option<f64> {
    data_io::opt_f64s(t, col).first().copied().flatten()
}

fn opt_str(t: &arrow::array::RecordBatch, col: &str) -> Option<String> {
    use arrow::array::{Array, AsArray};
    let a = t.column_by_name(col)?;
    let a = a.as_string_opt::<i32>()?;
    (a.len() > 0 && a.is_valid(0)).then(|| a.value(0).to_string())
}

pub fn kv_get<'a>(kv: &'a [(String, String)], key: &str) -> Option<&'a str> {
    kv.iter().find(|(k, _)| k.strip_prefix("rmdistill.") == Some(key)).map(|(_, v)| v.as_str())
}

/// Reads one evaluate summary (first row) with its node coordinates.
pub fn read_eval(a: &InputArtifact) -> StageResult<EvalRow> {
    let t = table::read_table(&a.path, None)?;
    if t.num_rows() != 1 {
        return Err(StageError::invalid(
            "evals",
            format!("{} ({}): a summary has one row, found {}", a.node, a.path.display(), t.num_rows()),
        ));
    }
    let need = |c: &str| {
        opt_f64(&t, c)
            .ok_or_else(|| StageError::invalid("evals", format!("{} ({}): missing `{c}`", a.node, a.path.display())))
    };
    let method =
        data_io::coord_str(&a.coords, "method").or_else(|| opt_str(&t, "method")).unwrap_or_else(|| a.node.clone());
    // γ is recorded only in the policy's info (the summary's metadata), as is how the evaluation was drawn
    let kv = table::read_kv(&a.path).unwrap_or_default();
    let json_at = |key: &str| kv_get(&kv, key).and_then(|s| serde_json::from_str::<Value>(s).ok());
    let info = json_at("policy_info").unwrap_or(Value::Null);
    Ok(EvalRow {
        node: a.node.clone(),
        label: method.clone(),
        method,
        rho: data_io::coord_f64(&a.coords, "rho").or_else(|| opt_f64(&t, "rho")),
        seed: data_io::coord_f64(&a.coords, "seed").map(|s| s as i64),
        advantage: Estimate {
            mean: need("advantage")?,
            se: need("se")?,
            n: need("n_prompts")? as usize,
            ci_low: need("ci_low")?,
            ci_high: need("ci_high")?,
        },
        win_rate: need("win_rate")?,
        mean_len: need("mean_len")?,
        ref_mean_len: need("ref_mean_len")?,
        kl: need("kl")?,
        beta: data_io::coord_f64(&a.coords, "beta").or_else(|| opt_f64(&t, "beta")),
        tau: data_io::coord_f64(&a.coords, "tau").or_else(|| opt_f64(&t, "tau")),
        gamma: data_io::coord_f64(&a.coords, "gamma").or_else(|| info.get("gamma").and_then(Value::as_f64)),
        stats: crate::eval_stats::SeedStats::read(&t),
        sampling: json_at(SAMPLING_KEY.trim_start_matches("rmdistill.")),
        cut_samples: json_at("cut_samples")
            .and_then(|v| v.as_u64())
            .zip(json_at("samples").and_then(|v| v.as_u64()))
            .map(|(c, n)| (c as usize, n as usize)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval_row(node: &str, seed: i64, sampling: Value) -> EvalRow {
        EvalRow {
            node: node.into(),
            label: "dpo".into(),
            method: "dpo".into(),
            rho: Some(0.5),
            seed: Some(seed),
            advantage: Estimate { mean: 0.1, se: 0.01, n: 10, ci_low: 0.08, ci_high: 0.12 },
            win_rate: 0.5,
            mean_len: 3.0,
            ref_mean_len: 3.0,
            kl: 0.1,
            beta: Some(0.1),
            tau: None,
            gamma: None,
            stats: None,
            sampling: Some(sampling),
            cut_samples: None,
        }
    }

    #[test]
    fn evaluations_compared_must_be_drawn_alike() {
        let rec = |seed: i64, temperature: f64, reference: &str| {
            json!({"reference": reference, "prompts": format!("p{seed}"), "seed": seed, "oracle_model": null,
                   "split": "test", "n_prompts": 30, "temperature": temperature, "max_new_tokens": 64})
        };
        // other seeds: their own π_ref, prompts and sampling seed, the same protocol
        let ok = [
            eval_row("a@0", 0, rec(0, 1.0, "r0")),
            eval_row("b@0", 0, rec(0, 1.0, "r0")),
            eval_row("a@1", 1, rec(1, 1.0, "r1")),
        ];
        check_comparable(&ok, "evals").unwrap();
        // another temperature, even on another seed: another protocol, named with both nodes
        let hot = [eval_row("a@0", 0, rec(0, 1.0, "r0")), eval_row("b@1", 1, rec(1, 0.3, "r1"))];
        let e = check_comparable(&hot, "evals").unwrap_err().to_string();
        assert!(
            e.contains("a@0 and b@1 were evaluated under another protocol (temperature 1.0 in a@0, 0.3 in b@1)"),
            "{e}"
        );
        // one seed, another π_ref: not paired
        let unpaired = [eval_row("a@0", 0, rec(0, 1.0, "r0")), eval_row("b@0", 0, rec(0, 1.0, "rX"))];
        let e = check_comparable(&unpaired, "evals").unwrap_err().to_string();
        assert!(
            e.contains("a@0 and b@0 were evaluated on one seed with other prompts, π_ref or oracle")
                && e.contains("reference \"r0\" in a@0, \"rX\" in b@0"),
            "{e}"
        );
        // summaries written before the record: not checked
        let mut old = eval_row("c@0", 0, Value::Null);
        old.sampling = None;
        check_comparable(&[eval_row("a@0", 0, rec(0, 1.0, "r0")), old], "evals").unwrap();
    }

    #[test]
    fn samples_cut_at_max_new_tokens_are_counted_and_warned_of_from_one_percent() {
        let mut s = rows(&[1.0; 200], &[0.0; 200], &(0..200).collect::<Vec<_>>());
        s.policy_len[0] = 64;
        s.policy_len[1] = 70; // a longer cap is cut too
        assert_eq!(cut_samples(&s, 64), 2);
        assert_eq!(cut_samples(&s, 65), 1);
        assert!(cut_warning(1, 200, 64).is_none());
        let w = cut_warning(2, 200, 64).unwrap();
        assert!(w.starts_with("2 of 200 policy samples (1.0%) reached max_new_tokens = 64 without EOS"), "{w}");
        assert!(cut_warning(0, 0, 64).is_none());
    }

    fn rows(pol: &[f64], rf: &[f64], prompts: &[u32]) -> SampleRows {
        let n = pol.len();
        SampleRows {
            prompt_idx: prompts.to_vec(),
            sample: vec![0; n],
            prompt: prompts.iter().map(|i| format!("p{i}")).collect(),
            policy_response: vec!["x".into(); n],
            ref_response: vec!["y".into(); n],
            policy_oracle: pol.to_vec(),
            ref_oracle: rf.to_vec(),
            policy_len: vec![4; n],
            ref_len: vec![2; n],
            policy_logp: vec![-1.0; n],
            policy_logp_ref: vec![-1.5; n],
        }
    }

    #[test]
    fn summary_is_paired_by_prompt() {
        // two samples per prompt for prompts 0 and 1; per-prompt diffs: p0 = (1 + 0)/2 = 0.5, p1 = (2 + 2)/2 = 2
        let s = rows(&[1.0, 0.5, 3.0, 3.0], &[0.0, 0.5, 1.0, 1.0], &[0, 0, 1, 1]);
        let m = summarize(&s);
        assert_eq!(m.advantage.n, 2);
        assert!((m.advantage.mean - 1.25).abs() < 1e-12);
        assert!((m.advantage.se - 0.75).abs() < 1e-12);
        // wins: 1, tie (½), 1, 1 → 3.5/4
        assert!((m.win_rate - 0.875).abs() < 1e-12);
        assert_eq!((m.mean_len, m.ref_mean_len), (4.0, 2.0));
        assert!((m.kl - 0.5).abs() < 1e-12);
        assert!((m.policy_mean - m.ref_mean - 1.25).abs() < 1e-12);
    }
}
