//! `evaluate`: oracle evaluation of a policy against the reference (METHOD.md, step 6).
//!
//! Samples `samples_per_prompt` responses from the policy and from π_ref for each held-out prompt of `prompts`
//! (rows whose `split` equals the `split` param when the table has that column; distinct prompts in table order;
//! `n_prompts` caps them). Both models sample with the same per-batch seeds (common random numbers). Each response
//! is scored by the oracle:
//! - `oracle = "synthetic"`: the embedded task's programmatic oracle (`stages::synth::oracle_score`) with the
//!   knobs in `oracle_params`;
//! - `oracle = "reward_model"`: a reward-model checkpoint bound to the `oracle` input (scored with its own
//!   tokenizer on the decoded text).
//!
//! Outputs: `samples` (one row per prompt × sample: prompt, both responses, their oracle scores, lengths in tokens
//! without EOS, and `log π_θ` / `log π_ref` of the policy's sample at temperature 1) and `summary` (one row):
//! - `advantage` = mean oracle(policy) − mean oracle(π_ref), paired by prompt, with a 95% Student-t interval
//!   (`ci_low`, `ci_high`, `se`, `n_prompts`);
//! - `win_rate`: share of (prompt, sample) where the policy's response scores higher (ties count ½);
//! - `mean_len`, `ref_mean_len`; `kl`: mean `log π_θ(y) − log π_ref(y)` over the policy's samples (a Monte-Carlo
//!   estimate of KL(π_θ‖π_ref), exact in expectation at temperature 1);
//! - `policy_mean`, `ref_mean`, and what trained the policy (`method`, `beta`, `tau`, `rho` from the checkpoint's
//!   `rmdistill_policy.json`, when present).
//!
//! Run on a validation split (`split = "eval"`) this is what β/τ selection reads (see [`crate::select`]). With a
//! `selection` bound, `policy` may bind every candidate of a β/τ sweep (one per value, for this node's ρ and seed):
//! the one the selection chose for its method and ρ is evaluated, the others only enter the cache key.
//!
//! Sharding (`shard`/`shards`): the (prompt, sample) rows are cut into batches of `batch_size` exactly as unsharded,
//! and shard k of N evaluates the k-th contiguous block of batches with the same per-batch seeds, so [`MergeEval`]
//! (`merge_eval`) concatenating the shards' `samples` gives back the unsharded table row for row, and its summary the
//! unsharded summary.

use crate::lm_io::{self, Codec};
use crate::port::*;
use crate::stats;
use crate::table;
use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use rmdistill_ml::tch;
use rmdistill_ml::{LanguageModel, Reduction, RewardModel, SampleConfig, generate, with_autocast};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::path::Path;
use std::sync::Arc;

pub struct Evaluate;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OracleKind {
    Synthetic,
    RewardModel,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    oracle: OracleKind,
    /// The synthetic oracle's knobs (as `synth`'s OracleParams).
    #[serde(default)]
    oracle_params: Map<String, Value>,
    /// Rows of `prompts` to evaluate on, by their `split` column; `null`/absent column: every row.
    #[serde(default = "d_split")]
    split: Option<String>,
    #[serde(default)]
    n_prompts: Option<usize>,
    #[serde(default = "d_one")]
    samples_per_prompt: usize,
    #[serde(default = "d_temp")]
    temperature: f64,
    #[serde(default = "d_top_p")]
    top_p: f64,
    #[serde(default = "d_max_new")]
    max_new_tokens: usize,
    #[serde(default = "d_bs")]
    batch_size: usize,
    #[serde(default = "d_max_len")]
    max_len: usize,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    shard: usize,
    #[serde(default = "d_one")]
    shards: usize,
}
fn d_split() -> Option<String> {
    Some("test".into())
}
fn d_one() -> usize {
    1
}
fn d_temp() -> f64 {
    1.0
}
fn d_top_p() -> f64 {
    1.0
}
fn d_max_new() -> usize {
    64
}
fn d_bs() -> usize {
    64
}
fn d_max_len() -> usize {
    512
}

fn parse(params: &Map<String, Value>) -> StageResult<Params> {
    let p: Params = parse_params(params)?;
    if !(p.temperature > 0.0 && p.temperature.is_finite()) {
        return Err(StageError::invalid("temperature", format!("must be > 0, got {}", p.temperature)));
    }
    if !(p.top_p > 0.0 && p.top_p <= 1.0) {
        return Err(StageError::invalid("top_p", format!("must be in (0, 1], got {}", p.top_p)));
    }
    for (f, v) in [
        ("samples_per_prompt", p.samples_per_prompt),
        ("max_new_tokens", p.max_new_tokens),
        ("batch_size", p.batch_size),
        ("shards", p.shards),
    ] {
        if v == 0 {
            return Err(StageError::invalid(f, "must be >= 1"));
        }
    }
    if p.n_prompts == Some(0) {
        return Err(StageError::invalid("n_prompts", "must be >= 1"));
    }
    if p.shard >= p.shards {
        return Err(StageError::invalid("shard", format!("must be < shards ({}), got {}", p.shards, p.shard)));
    }
    if p.oracle == OracleKind::RewardModel && !p.oracle_params.is_empty() {
        return Err(StageError::invalid("oracle_params", "only the synthetic oracle takes oracle_params"));
    }
    Ok(p)
}

/// The embedded task's programmatic oracle. Until the data team's `synth` module is merged into this branch the
/// call is not compiled in, and `oracle = "synthetic"` fails with a clear error; unit tests install a stub.
pub fn synthetic_oracle(prompt: &str, response: &str, knobs: &Map<String, Value>) -> StageResult<f64> {
    #[cfg(test)]
    if let Some(f) = test_oracle::get() {
        return Ok(f(prompt, response, knobs));
    }
    let p: crate::synth::OracleParams = crate::port::parse_params(knobs).map_err(|e| match e {
        StageError::Invalid { field, message } => StageError::invalid(format!("oracle_params.{field}"), message),
        other => other,
    })?;
    Ok(crate::synth::oracle_score(prompt, response, &p))
}

#[cfg(test)]
pub mod test_oracle {
    use serde_json::{Map, Value};
    use std::sync::RwLock;
    pub type F = fn(&str, &str, &Map<String, Value>) -> f64;
    static STUB: RwLock<Option<F>> = RwLock::new(None);
    pub fn set(f: F) {
        *STUB.write().unwrap() = Some(f);
    }
    pub fn get() -> Option<F> {
        *STUB.read().unwrap()
    }
}

/// The evaluation prompts: distinct, in table order, filtered by split, capped, sharded.
fn read_prompts(path: &Path, p: &Params) -> StageResult<Vec<String>> {
    let schema = table::read_schema(path)?;
    let has_split = schema.index_of("split").is_ok();
    let cols: Vec<&str> = if has_split { vec![table::PROMPT, "split"] } else { vec![table::PROMPT] };
    let t = table::read_table(path, Some(&cols))?;
    let prompts = lm_io::strings(&t, table::PROMPT, path)?;
    let splits = if has_split { Some(lm_io::strings(&t, "split", path)?) } else { None };
    let mut seen = std::collections::HashSet::new();
    let mut out = vec![];
    let mut available = std::collections::BTreeMap::<String, usize>::new();
    for (i, pr) in prompts.into_iter().enumerate() {
        if let Some(s) = &splits {
            *available.entry(s[i].clone()).or_default() += 1;
            if p.split.as_ref().is_some_and(|want| &s[i] != want) {
                continue;
            }
        }
        if pr.trim().is_empty() {
            return Err(StageError::invalid("prompts", format!("{}: row {i}: empty prompt", path.display())));
        }
        if seen.insert(pr.clone()) {
            out.push(pr);
        }
    }
    if let Some(n) = p.n_prompts {
        out.truncate(n);
    }
    if out.is_empty() {
        return Err(StageError::invalid(
            "split",
            format!(
                "{}: no prompts to evaluate for split {:?} (rows per split: {available:?})",
                path.display(),
                p.split
            ),
        ));
    }
    Ok(out)
}

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
        wins += if d > 0.0 {
            1.0
        } else if d == 0.0 {
            0.5
        } else {
            0.0
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

/// Scores (prompt, response) texts with a reward-model oracle.
struct RmOracle {
    model: RewardModel,
    codec: Codec,
}

impl RmOracle {
    fn score(&self, prompts: &[String], responses: &[String], batch_size: usize) -> StageResult<Vec<f64>> {
        let mut out = Vec::with_capacity(prompts.len());
        let dev = self.model.device();
        for (ps, rs) in prompts.chunks(batch_size).zip(responses.chunks(batch_size)) {
            let pi: Vec<Vec<i64>> = ps.iter().map(|s| self.codec.prompt(s)).collect::<StageResult<_>>()?;
            let ri: Vec<Vec<i64>> = rs.iter().map(|s| self.codec.response(s)).collect::<StageResult<_>>()?;
            let pr: Vec<&[i64]> = pi.iter().map(|v| v.as_slice()).collect();
            let rr: Vec<&[i64]> = ri.iter().map(|v| v.as_slice()).collect();
            let b = self.codec.batch(&pr, &rr, dev)?;
            let r = tch::no_grad(|| with_autocast(dev, || self.model.rewards(&b)));
            out.extend(
                Vec::<f64>::try_from(r.to_kind(tch::Kind::Double).to_device(tch::Device::Cpu))
                    .map_err(anyhow::Error::from)?,
            );
        }
        Ok(out)
    }
}

fn samples_table(s: &SampleRows) -> StageResult<RecordBatch> {
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

fn summary_table(s: &Summary, info: &Value, split: Option<&str>) -> StageResult<RecordBatch> {
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
fn summary_json(
    sum: &Summary,
    samples: usize,
    split: Option<&str>,
    info: &Value,
    shard: usize,
    shards: usize,
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
        "split": split,
        "method": info.get("method"),
        "shard": shard,
        "shards": shards,
        "policy_info": info.to_string(),
    })
}

fn read_info(dir: &Path) -> Value {
    std::fs::read_to_string(dir.join(lm_io::POLICY_INFO_FILE))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null)
}

/// The policy to evaluate: the one bound, or, with a `selection`, the candidate it chose for this method and ρ.
fn pick_policy(ctx: &dyn Ctx) -> StageResult<(&InputArtifact, Value)> {
    let cands: Vec<(&InputArtifact, Value)> = ctx.inputs("policy").iter().map(|a| (a, read_info(&a.path))).collect();
    let names = |c: &[(&InputArtifact, Value)]| c.iter().map(|(a, _)| a.node.as_str()).collect::<Vec<_>>().join(", ");
    let sel = lm_io::opt_input(ctx, "selection")?;
    let Some(sel) = sel else {
        return match cands.len() {
            0 => Err(StageError::invalid("policy", "no policy checkpoint is bound")),
            1 => Ok(cands.into_iter().next().unwrap()),
            n => Err(StageError::invalid(
                "policy",
                format!(
                    "{n} policies are bound ({}); bind `selection` (a select stage's output) to choose one, or sweep this stage over their axes",
                    names(&cands)
                ),
            )),
        };
    };
    let choices = crate::select::read_selection(&sel.path)?;
    let num = |a: &InputArtifact, info: &Value, k: &str| {
        info.get(k).and_then(Value::as_f64).or_else(|| crate::data_io::coord_f64(&a.coords, k))
    };
    let mut chosen = vec![];
    let mut wanted = None;
    for (a, info) in &cands {
        let method = info
            .get("method")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| a.coords.get("method").and_then(Value::as_str).map(str::to_string));
        let Some(method) = method else {
            return Err(StageError::invalid(
                "policy",
                format!("{}: no `method` in its {}: not a policy checkpoint", a.node, lm_io::POLICY_INFO_FILE),
            ));
        };
        let rho = num(a, info, "rho");
        let Some(c) = crate::select::choice_for(&choices, &method, rho) else {
            let have: Vec<String> = choices.iter().map(|c| format!("{} at ρ = {:?}", c.method, c.rho)).collect();
            return Err(StageError::invalid(
                "selection",
                format!(
                    "{} ({}): the selection ({}) has no choice for {method} at ρ = {rho:?}; it covers {}",
                    a.node,
                    method,
                    sel.node,
                    have.join(", ")
                ),
            ));
        };
        if c.is_value(num(a, info, &c.param)) {
            chosen.push((*a, info.clone()));
        }
        wanted = Some(c.clone());
    }
    let w = wanted.ok_or_else(|| StageError::invalid("policy", "no policy checkpoint is bound"))?;
    match chosen.len() {
        1 => Ok(chosen.pop().unwrap()),
        0 => Err(StageError::invalid(
            "policy",
            format!(
                "the selection chose {} = {} for {} at ρ = {:?}, but no bound policy was trained with it (bound: {})",
                w.param,
                w.value,
                w.method,
                w.rho,
                names(&cands)
            ),
        )),
        n => Err(StageError::invalid(
            "policy",
            format!(
                "{n} bound policies match the selection's {} = {} ({}); sweep this stage over the axes that tell them apart",
                w.param,
                w.value,
                names(&chosen)
            ),
        )),
    }
}

impl Stage for Evaluate {
    fn kind(&self) -> &'static str {
        "evaluate"
    }
    fn doc(&self) -> &'static str {
        "sample from a policy and the reference on held-out prompts, score with the oracle: advantage ±95% CI, win rate, length, KL"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        &[
            InputSpec {
                name: "policy",
                required: true,
                many: true,
                doc: "policy checkpoint (Dir); the candidates of a β/τ sweep with `selection`",
            },
            InputSpec {
                name: "selection",
                required: false,
                many: false,
                doc: "select.selection: which candidate policy to evaluate",
            },
            InputSpec { name: "reference", required: true, many: false, doc: "reference policy checkpoint (Dir)" },
            InputSpec {
                name: "prompts",
                required: true,
                many: false,
                doc: "table with `prompt` (and optional `split`)",
            },
            InputSpec {
                name: "oracle",
                required: false,
                many: false,
                doc: "reward-model oracle checkpoint (oracle = \"reward_model\")",
            },
        ]
    }
    fn outputs(&self) -> &'static [OutputSpec] {
        &[
            OutputSpec {
                name: "samples",
                kind: ArtifactKind::File,
                doc: "per prompt and sample: responses, oracle scores, lengths, log-probs",
            },
            OutputSpec {
                name: "summary",
                kind: ArtifactKind::File,
                doc: "one row: advantage, ci_low, ci_high, win_rate, mean_len, ref_mean_len, kl, ...",
            },
        ]
    }
    fn code_files(&self) -> &'static [&'static str] {
        &["evaluate.rs", "select.rs", "lm_io.rs", "data_io.rs", "synth.rs", "stats.rs", "eval_stats.rs", "table.rs"]
    }
    fn validate(&self, params: &Map<String, Value>) -> StageResult<()> {
        parse(params).map(|_| ())
    }
    fn wants_gpu(&self) -> bool {
        true
    }
    fn run(&self, ctx: &dyn Ctx) -> StageResult<Value> {
        let p = parse(ctx.params())?;
        let t0 = std::time::Instant::now();
        let (pol_in, info) = pick_policy(ctx)?;
        let ref_in = lm_io::one_input(ctx, "reference")?;
        let prompts_in = lm_io::one_input(ctx, "prompts")?;
        let oracle_in = lm_io::opt_input(ctx, "oracle")?;
        if p.oracle == OracleKind::RewardModel && oracle_in.is_none() {
            return Err(StageError::invalid(
                "oracle",
                "oracle = \"reward_model\" needs a reward-model checkpoint bound to the `oracle` input",
            ));
        }
        if p.oracle == OracleKind::Synthetic {
            // fail before sampling when the synthetic oracle is unavailable or its knobs are wrong
            synthetic_oracle("probe", "probe", &p.oracle_params)?;
        }
        let prompts = read_prompts(&prompts_in.path, &p)?;
        let device = lm_io::tch_device(ctx);
        tch::set_num_threads(ctx.threads().max(1) as i32);
        rmdistill_ml::seed_everything(p.seed);
        let codec = Codec::load(&ref_in.path, "reference")?.with_max_len(p.max_len);
        let pcodec = Codec::load(&pol_in.path, "policy")?.with_max_len(p.max_len);
        if pcodec.tok.vocab_size() != codec.tok.vocab_size() || pcodec.eos != codec.eos {
            return Err(StageError::invalid("policy", "the policy's tokenizer differs from the reference's"));
        }
        let load = |dir: &Path, slot: &str| {
            LanguageModel::load(dir, device).map_err(|e| StageError::invalid(slot, format!("{e:#}")))
        };
        let (mut policy, mut reference) = (load(&pol_in.path, "policy")?, load(&ref_in.path, "reference")?);
        policy.freeze();
        reference.freeze();
        codec.check_vocab(reference.net().vocab_size(), "reference")?;
        let rm = match (p.oracle, oracle_in) {
            (OracleKind::RewardModel, Some(o)) => {
                let mut model = RewardModel::load(&o.path, device, false)
                    .map_err(|e| StageError::invalid("oracle", format!("{e:#}")))?;
                model.freeze();
                let c = Codec::load(&o.path, "oracle")?.with_max_len(p.max_len);
                c.check_vocab(model.config.vocab_size(), "oracle")?;
                Some(RmOracle { model, codec: c })
            }
            _ => None,
        };
        // ---- sample: rows are (prompt, sample index), batched; a shard takes a contiguous block of batches
        let mut rows: Vec<(u32, u32)> = vec![];
        for i in 0..prompts.len() as u32 {
            for k in 0..p.samples_per_prompt as u32 {
                rows.push((i, k));
            }
        }
        let n_batches = rows.len().div_ceil(p.batch_size);
        let mine = crate::data_io::shard_range(n_batches, p.shard, p.shards);
        if mine.is_empty() {
            return Err(StageError::invalid(
                "shards",
                format!(
                    "shard {} of {} has no work: {} rows make only {n_batches} batches of {}; use fewer shards or a smaller batch_size",
                    p.shard,
                    p.shards,
                    rows.len(),
                    p.batch_size
                ),
            ));
        }
        let prompt_ids: Vec<Vec<i64>> = prompts.iter().map(|s| codec.prompt(s)).collect::<StageResult<_>>()?;
        let mut s = SampleRows::default();
        let total = mine.len() as u64;
        let batches: Vec<(usize, &[(u32, u32)])> =
            rows.chunks(p.batch_size).enumerate().filter(|(bi, _)| mine.contains(bi)).collect();
        for (done, (bi, chunk)) in batches.into_iter().enumerate() {
            let ps: Vec<&[i64]> = chunk
                .iter()
                .map(|(i, _)| crate::data_io::sampling_context(&prompt_ids[*i as usize], p.max_len, p.max_new_tokens))
                .collect();
            let cfg = SampleConfig {
                max_new_tokens: p.max_new_tokens,
                temperature: p.temperature,
                top_p: p.top_p,
                seed: p.seed.wrapping_add(bi as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                eos_ids: vec![codec.eos],
                use_cache: true,
            };
            let gp = with_autocast(device, || generate(&policy, &ps, codec.pad, &cfg))?;
            let gr = with_autocast(device, || generate(&reference, &ps, codec.pad, &cfg))?;
            let strip = |t: &Vec<i64>| -> Vec<i64> { t.iter().copied().filter(|&x| x != codec.eos).collect() };
            // the policy's sample with EOS when it stopped, scored under both models (for the KL estimate)
            let scored: Vec<Vec<i64>> =
                gp.tokens.iter().map(|t| if t.is_empty() { vec![codec.eos] } else { t.clone() }).collect();
            let sr: Vec<&[i64]> = scored.iter().map(|v| v.as_slice()).collect();
            let lp_pol = lm_io::logprobs_nograd(&policy, &codec, &ps, &sr, Reduction::Sum, p.batch_size)?;
            let lp_ref = lm_io::logprobs_nograd(&reference, &codec, &ps, &sr, Reduction::Sum, p.batch_size)?;
            for (j, (i, k)) in chunk.iter().enumerate() {
                let (tp, tr) = (strip(&gp.tokens[j]), strip(&gr.tokens[j]));
                s.prompt_idx.push(*i);
                s.sample.push(*k);
                s.prompt.push(prompts[*i as usize].clone());
                s.policy_response.push(codec.decode_sample(&tp)?);
                s.ref_response.push(codec.decode_sample(&tr)?);
                s.policy_len.push(tp.len() as u32);
                s.ref_len.push(tr.len() as u32);
                s.policy_logp.push(lp_pol[j]);
                s.policy_logp_ref.push(lp_ref[j]);
            }
            ctx.progress(done as u64 + 1, total + 1);
        }
        // ---- oracle
        match &rm {
            Some(o) => {
                s.policy_oracle = o.score(&s.prompt, &s.policy_response, p.batch_size)?;
                s.ref_oracle = o.score(&s.prompt, &s.ref_response, p.batch_size)?;
            }
            None => {
                for i in 0..s.prompt.len() {
                    s.policy_oracle.push(synthetic_oracle(&s.prompt[i], &s.policy_response[i], &p.oracle_params)?);
                    s.ref_oracle.push(synthetic_oracle(&s.prompt[i], &s.ref_response[i], &p.oracle_params)?);
                }
            }
        }
        let sum = summarize(&s);
        let summary = summary_json(&sum, s.prompt.len(), p.split.as_deref(), &info, p.shard, p.shards);
        // artifact bytes are deterministic: wall time goes only into the returned summary
        let kv = table::summary_kv("evaluate", &summary);
        let mut summary = summary;
        summary["seconds"] = json!(t0.elapsed().as_secs_f64());
        table::write_table(&ctx.output_path("samples"), &samples_table(&s)?, &kv)?;
        table::write_table(&ctx.output_path("summary"), &summary_table(&sum, &info, p.split.as_deref())?, &kv)?;
        ctx.progress(total + 1, total + 1);
        ctx.log(&format!(
            "{} rows of {} prompts × {}: advantage {:+.4} [{:+.4}, {:+.4}], win rate {:.3}, length {:.1} vs {:.1}, KL {:.3} ({:.1} s)",
            s.prompt.len(),
            prompts.len(),
            p.samples_per_prompt,
            sum.advantage.mean,
            sum.advantage.ci_low,
            sum.advantage.ci_high,
            sum.win_rate,
            sum.mean_len,
            sum.ref_mean_len,
            sum.kl,
            t0.elapsed().as_secs_f64()
        ));
        Ok(summary)
    }
}

/// `merge_eval`: an evaluation's shards back into one: the `samples` tables concatenated in shard order (the
/// unsharded table, row for row) and the summary recomputed from them.
pub struct MergeEval;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MergeParams {}

impl Stage for MergeEval {
    fn kind(&self) -> &'static str {
        "merge_eval"
    }
    fn doc(&self) -> &'static str {
        "joins a sharded evaluate's samples in shard order and recomputes its summary (= the unsharded evaluation)"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        &[InputSpec { name: "parts", required: true, many: true, doc: "evaluate.samples of every shard" }]
    }
    fn outputs(&self) -> &'static [OutputSpec] {
        &[
            OutputSpec { name: "samples", kind: ArtifactKind::File, doc: "the shards' samples in shard order" },
            OutputSpec { name: "summary", kind: ArtifactKind::File, doc: "one row, as evaluate's summary" },
        ]
    }
    fn code_files(&self) -> &'static [&'static str] {
        &["evaluate.rs", "merge.rs", "lm_io.rs", "data_io.rs", "stats.rs", "eval_stats.rs", "table.rs"]
    }
    fn validate(&self, params: &Map<String, Value>) -> StageResult<()> {
        parse_params::<MergeParams>(params).map(|_| ())
    }
    fn run(&self, ctx: &dyn Ctx) -> StageResult<Value> {
        let parts = ctx.inputs("parts");
        let crate::merge::Shards { shards, by_shard, merged } = crate::merge::concat_shards(ctx, parts)?;
        // every shard evaluated the same policy on the same split
        let meta = |(k, kv): &(usize, Vec<(String, String)>), key: &str| {
            kv.iter().find(|(x, _)| x == &format!("rmdistill.{key}")).map(|(_, v)| v.clone()).ok_or_else(|| {
                StageError::invalid(
                    "parts",
                    format!(
                        "{} ({}): no `rmdistill.{key}` metadata: not an evaluate.samples table",
                        parts[*k].node,
                        parts[*k].path.display()
                    ),
                )
            })
        };
        let first = &by_shard[&0];
        let (info, split) = (meta(first, "policy_info")?, meta(first, "split")?);
        for part in by_shard.values() {
            if meta(part, "policy_info")? != info || meta(part, "split")? != split {
                return Err(StageError::invalid(
                    "parts",
                    format!("{} evaluated another policy or split than {}", parts[part.0].node, parts[first.0].node),
                ));
            }
        }
        let s = samples_from(&merged, &parts[0].path)?;
        let sum = summarize(&s);
        let info: Value = serde_json::from_str(&info).unwrap_or(Value::Null);
        let split = (split != "null").then_some(split);
        let summary = summary_json(&sum, s.prompt.len(), split.as_deref(), &info, 0, 1);
        let kv = table::summary_kv("merge_eval", &summary);
        table::write_table(&ctx.output_path("samples"), &merged, &kv)?;
        table::write_table(&ctx.output_path("summary"), &summary_table(&sum, &info, split.as_deref())?, &kv)?;
        ctx.log(&format!(
            "merged {shards} shards: {} rows, advantage {:+.4} [{:+.4}, {:+.4}]",
            s.prompt.len(),
            sum.advantage.mean,
            sum.advantage.ci_low,
            sum.advantage.ci_high
        ));
        Ok(summary)
    }
}

/// Reads an evaluate `samples` table back (for the report's paired comparisons).
pub fn read_samples(path: &Path) -> StageResult<SampleRows> {
    samples_from(&table::read_table(path, None)?, path)
}

fn samples_from(t: &RecordBatch, path: &Path) -> StageResult<SampleRows> {
    let t = t.clone();
    let u = |c: &str| -> StageResult<Vec<u32>> { Ok(table::u32_values(&t, c)?.values().to_vec()) };
    Ok(SampleRows {
        prompt_idx: u("prompt_idx")?,
        sample: u("sample")?,
        prompt: lm_io::strings(&t, "prompt", path)?,
        policy_response: lm_io::strings(&t, "policy_response", path)?,
        ref_response: lm_io::strings(&t, "ref_response", path)?,
        policy_oracle: lm_io::f64s(&t, "policy_oracle", path)?,
        ref_oracle: lm_io::f64s(&t, "ref_oracle", path)?,
        policy_len: u("policy_len")?,
        ref_len: u("ref_len")?,
        policy_logp: lm_io::f64s(&t, "policy_logp", path)?,
        policy_logp_ref: lm_io::f64s(&t, "policy_logp_ref", path)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
