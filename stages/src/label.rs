//! `label`: oracle labelling (METHOD.md, experiment step 1), shardable.
//!
//! Input `pairs` (the normalised pairs table, labelled or not) and, for `oracle = "reward_model"`, the oracle reward
//! model: the `oracle` input (a reward-model checkpoint, e.g. `train_rm` on the human labels) or the path parameter
//! `oracle_path` naming a given checkpoint's `model.safetensors` (its directory must hold `config.json` and
//! `tokenizer.json`; only that file's content enters the cache key). `oracle = "synthetic"` scores with the embedded
//! task's programmatic oracle [`crate::synth::oracle_score`] and its `oracle_params`.
//!
//! Every row gets both oracle scores and the oracle's preference. Output `labelled`: the input's columns, with
//! `label` replaced by the oracle label (0: `response_a`, 1: `response_b`; exact ties are broken by a bit of the
//! pair's hash, so they are a fair, reproducible coin), `tokens_a/b` filled where null (the oracle model's tokenizer,
//! or word counts for the synthetic oracle), then `human_label` (the input's label, Int8, null when unlabelled),
//! `oracle_a`, `oracle_b` (Float64) and `longer` (Int8: 0 when `response_a` is longer by the margin — at least
//! (1 + `margin`) × the other's tokens and strictly more —, 1 when `response_b` is, null within the margin).
//!
//! Sharding: `shards` = N, `shard` = k labels the k-th contiguous block of rows (`⌊n·k/N⌋..⌊n·(k+1)/N⌋`); `merge`
//! concatenates the blocks in shard order, which gives back the unsharded table. The shard numbers are written in the
//! output's metadata (`rmdistill.shard`, `rmdistill.shards`).
//!
//! Summary: pairs, ties, the share of length-differing pairs whose longer response the oracle prefers
//! (`longer_preferred_share`, the paper's ~61%), agreement with the human labels when there are any.
use crate::data_io::{self, Codec};
use crate::port::*;
use crate::synth::{OracleParams, oracle_score};
use crate::table;
use arrow::array::{ArrayRef, Float64Array, Int8Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use rmdistill_ml::RewardModel;
use rmdistill_ml::tch;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub struct Label;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum OracleKind {
    Synthetic,
    RewardModel,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    oracle: OracleKind,
    #[serde(default)]
    oracle_params: Map<String, Value>,
    #[serde(default)]
    oracle_path: Option<String>,
    #[serde(default)]
    shard: usize,
    #[serde(default = "d_shards")]
    shards: usize,
    #[serde(default = "d_margin")]
    margin: f64,
    #[serde(default = "d_bs")]
    batch_size: usize,
    /// Truncation of `prompt ++ response` when a reward model labels (as `train_rm`'s `max_len`); default: the
    /// positions the model can place.
    #[serde(default)]
    max_len: Option<usize>,
}
fn d_shards() -> usize {
    1
}
fn d_margin() -> f64 {
    0.1
}
fn d_bs() -> usize {
    64
}

fn parse(params: &Map<String, Value>) -> StageResult<(Params, OracleParams)> {
    let p: Params = parse_params(params)?;
    data_io::check_shards(p.shard, p.shards)?;
    if !(p.margin >= 0.0 && p.margin.is_finite()) {
        return Err(StageError::invalid("margin", format!("must be a finite number ≥ 0, got {}", p.margin)));
    }
    if p.batch_size == 0 {
        return Err(StageError::invalid("batch_size", "must be at least 1"));
    }
    if p.max_len.is_some_and(|m| m < 2) {
        return Err(StageError::invalid("max_len", "must be at least 2"));
    }
    let o = OracleParams::from_map(&p.oracle_params, "oracle_params")?;
    match p.oracle {
        OracleKind::Synthetic if p.oracle_path.is_some() => {
            return Err(StageError::invalid("oracle_path", "only oracle = \"reward_model\" takes a checkpoint"));
        }
        OracleKind::RewardModel if !p.oracle_params.is_empty() => {
            return Err(StageError::invalid("oracle_params", "only oracle = \"synthetic\" takes oracle_params"));
        }
        _ => {}
    }
    Ok((p, o))
}

/// Which response is longer by the margin: Some(0) a, Some(1) b, None within the margin.
pub fn longer(a: u32, b: u32, margin: f64) -> Option<i8> {
    let (a, b) = (a as f64, b as f64);
    if a > b && a >= (1.0 + margin) * b {
        Some(0)
    } else if b > a && b >= (1.0 + margin) * a {
        Some(1)
    } else {
        None
    }
}

/// Rewards of (prompt, response) rows under a reward model, batched, as f64.
pub fn rm_scores(
    model: &RewardModel,
    codec: &Codec,
    prompts: &[Vec<i64>],
    responses: &[Vec<i64>],
    batch: usize,
) -> StageResult<Vec<f64>> {
    let mut out = Vec::with_capacity(prompts.len());
    for r in data_io::chunks(prompts.len(), batch) {
        let ps: Vec<&[i64]> = prompts[r.clone()].iter().map(|x| x.as_slice()).collect();
        let rs: Vec<&[i64]> = responses[r.clone()].iter().map(|x| x.as_slice()).collect();
        let b = codec.batch(&ps, &rs, model.device())?;
        let s = tch::no_grad(|| rmdistill_ml::with_autocast(model.device(), || model.rewards(&b)));
        out.extend(data_io::to_f64s(&s)?);
    }
    Ok(out)
}

/// Loads a reward model (not a causal LM: a labelling oracle needs a trained score head) and its tokenizer.
pub fn load_rm(dir: &Path, slot: &str, device: tch::Device) -> StageResult<(RewardModel, Codec)> {
    data_io::check_checkpoint(dir, slot)?;
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)
        .map_err(|e| StageError::invalid(slot, format!("{}: config.json: {e}", dir.display())))?;
    if rmdistill_ml::ModelConfig::head_from_json(&cfg) != rmdistill_ml::Head::Score {
        return Err(StageError::invalid(
            slot,
            format!(
                "{}: not a reward model (config.json architectures is not *ForSequenceClassification)",
                dir.display()
            ),
        ));
    }
    let codec = Codec::load(dir, slot)?;
    let m = RewardModel::load(dir, device, false).map_err(|e| StageError::invalid(slot, format!("{e:#}")))?;
    codec.check_vocab(m.config.vocab_size(), slot)?;
    Ok((m, codec))
}

impl Stage for Label {
    fn kind(&self) -> &'static str {
        "label"
    }
    fn doc(&self) -> &'static str {
        "oracle labelling: both oracle scores, token lengths, the longer-by-margin flag and the oracle label (shardable)"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        &[
            InputSpec { name: "pairs", required: true, many: false, doc: "normalised pairs table" },
            InputSpec {
                name: "oracle",
                required: false,
                many: false,
                doc: "oracle reward-model checkpoint (oracle = \"reward_model\")",
            },
        ]
    }
    fn outputs(&self) -> &'static [OutputSpec] {
        &[OutputSpec {
            name: "labelled",
            kind: ArtifactKind::File,
            doc: "pairs + human_label, oracle_a, oracle_b, longer; label = oracle label",
        }]
    }
    fn path_params(&self) -> &'static [&'static str] {
        &["oracle_path"]
    }
    fn code_files(&self) -> &'static [&'static str] {
        &["label.rs", "synth.rs", "data_io.rs", "table.rs"]
    }
    fn validate(&self, params: &Map<String, Value>) -> StageResult<()> {
        parse(params).map(|_| ())
    }
    fn wants_gpu(&self) -> bool {
        true
    }
    fn run(&self, ctx: &dyn Ctx) -> StageResult<Value> {
        let (p, oracle_params) = parse(ctx.params())?;
        data_io::torch_setup(ctx, 0);
        let device = data_io::tch_device(ctx);
        let pairs = data_io::one_input(ctx, "pairs")?;
        // the oracle model, resolved before any work
        let rm = match p.oracle {
            OracleKind::Synthetic => {
                if !ctx.inputs("oracle").is_empty() {
                    return Err(StageError::invalid(
                        "oracle",
                        "the synthetic oracle takes no `oracle` input; use oracle = \"reward_model\"",
                    ));
                }
                None
            }
            OracleKind::RewardModel => {
                let dir: PathBuf = match (data_io::opt_input(ctx, "oracle")?, p.oracle_path.as_ref()) {
                    (Some(_), Some(_)) => {
                        return Err(StageError::invalid(
                            "oracle_path",
                            "give the oracle either as the `oracle` input or as oracle_path, not both",
                        ));
                    }
                    (Some(i), None) => i.path.clone(),
                    (None, Some(_)) => {
                        let f = ctx
                            .external("oracle_path")
                            .ok_or_else(|| StageError::invalid("oracle_path", "not resolved by the runner"))?;
                        f.parent().map(Path::to_path_buf).unwrap_or_default()
                    }
                    (None, None) => {
                        return Err(StageError::invalid(
                            "oracle",
                            "oracle = \"reward_model\" needs the `oracle` input or the oracle_path param",
                        ));
                    }
                };
                Some(load_rm(&dir, "oracle", device)?)
            }
        };
        let all = data_io::read_nonempty(&pairs.path, "pairs", None)?;
        let range = data_io::shard_range(all.num_rows(), p.shard, p.shards);
        let t = all.slice(range.start, range.len());
        let n = t.num_rows();
        let path = &pairs.path;
        let prompts = data_io::strings(&t, table::PROMPT, path, true)?;
        let ra = data_io::strings(&t, table::RESPONSE_A, path, true)?;
        let rb = data_io::strings(&t, table::RESPONSE_B, path, true)?;
        let ids = data_io::strings(&t, table::PAIR_ID, path, true)?;
        let human = data_io::opt_i64s(&t, table::LABEL, path)?;
        if let Some((i, x)) =
            human.iter().enumerate().find_map(|(i, h)| h.filter(|x| *x != 0 && *x != 1).map(|x| (i, x)))
        {
            return Err(StageError::invalid(
                "label",
                format!("{}: row {} has label {x}, expected 0, 1 or null", path.display(), range.start + i),
            ));
        }
        let tok_a = data_io::opt_i64s(&t, table::TOKENS_A, path)?;
        let tok_b = data_io::opt_i64s(&t, table::TOKENS_B, path)?;
        let (oa, ob, ta, tb): (Vec<f64>, Vec<f64>, Vec<u32>, Vec<u32>) = match &rm {
            None => {
                let oa = (0..n).map(|i| oracle_score(&prompts[i], &ra[i], &oracle_params)).collect();
                let ob = (0..n).map(|i| oracle_score(&prompts[i], &rb[i], &oracle_params)).collect();
                let ta = (0..n).map(|i| tok_a[i].map_or(table::word_count(&ra[i]), |x| x as u32)).collect();
                let tb = (0..n).map(|i| tok_b[i].map_or(table::word_count(&rb[i]), |x| x as u32)).collect();
                (oa, ob, ta, tb)
            }
            Some((model, codec)) => {
                let mut codec = codec.clone();
                codec.max_len = model.config.max_positions().map(|m| m as usize);
                if let Some(m) = p.max_len {
                    codec = codec.with_max_len(m);
                }
                let pe: Vec<Vec<i64>> = prompts.iter().map(|x| codec.prompt(x)).collect::<StageResult<_>>()?;
                let ae: Vec<Vec<i64>> = ra.iter().map(|x| codec.response(x)).collect::<StageResult<_>>()?;
                let be: Vec<Vec<i64>> = rb.iter().map(|x| codec.response(x)).collect::<StageResult<_>>()?;
                let oa = rm_scores(model, &codec, &pe, &ae, p.batch_size)?;
                ctx.progress(n as u64, 2 * n as u64);
                let ob = rm_scores(model, &codec, &pe, &be, p.batch_size)?;
                let ta = (0..n).map(|i| tok_a[i].map_or(ae[i].len() as u32 - 1, |x| x as u32)).collect();
                let tb = (0..n).map(|i| tok_b[i].map_or(be[i].len() as u32 - 1, |x| x as u32)).collect();
                (oa, ob, ta, tb)
            }
        };
        let mut ties = 0u64;
        let (mut differ, mut longer_wins, mut agree, mut human_n) = (0u64, 0u64, 0u64, 0u64);
        let mut labels = Vec::with_capacity(n);
        let mut longer_col = Vec::with_capacity(n);
        for i in 0..n {
            let l: i8 = if oa[i] > ob[i] {
                0
            } else if ob[i] > oa[i] {
                1
            } else {
                ties += 1;
                (u8::from_str_radix(&ids[i][..2], 16).unwrap_or(0) & 1) as i8
            };
            labels.push(Some(l));
            let lg = longer(ta[i], tb[i], p.margin);
            if let Some(x) = lg {
                differ += 1;
                longer_wins += (x == l) as u64;
            }
            longer_col.push(lg);
            if let Some(h) = human[i] {
                human_n += 1;
                agree += (h as i8 == l) as u64;
            }
        }
        // columns: input's (label replaced, tokens filled) + human_label, oracle_a, oracle_b, longer
        let schema = t.schema();
        let mut fields: Vec<Field> = vec![];
        let mut cols: Vec<ArrayRef> = vec![];
        for (f, c) in schema.fields().iter().zip(t.columns()) {
            let (f, c): (Field, ArrayRef) = match f.name().as_str() {
                table::LABEL => {
                    (Field::new(table::LABEL, DataType::Int8, true), Arc::new(Int8Array::from(labels.clone())))
                }
                table::TOKENS_A => {
                    (Field::new(table::TOKENS_A, DataType::UInt32, true), Arc::new(UInt32Array::from(ta.clone())))
                }
                table::TOKENS_B => {
                    (Field::new(table::TOKENS_B, DataType::UInt32, true), Arc::new(UInt32Array::from(tb.clone())))
                }
                "human_label" | "oracle_a" | "oracle_b" | "longer" => continue, // relabelling a labelled table
                _ => (f.as_ref().clone(), c.clone()),
            };
            fields.push(f);
            cols.push(c);
        }
        let had_human = schema.index_of("human_label").is_ok();
        let human_col: Vec<Option<i8>> = if had_human {
            // keep the original human labels of a table labelled before
            let h = data_io::opt_i64s(&t, "human_label", path)?;
            h.into_iter().map(|x| x.map(|v| v as i8)).collect()
        } else {
            human.iter().map(|h| h.map(|v| v as i8)).collect()
        };
        fields.push(Field::new("human_label", DataType::Int8, true));
        cols.push(Arc::new(Int8Array::from(human_col)));
        fields.push(Field::new("oracle_a", DataType::Float64, false));
        cols.push(Arc::new(Float64Array::from(oa.clone())));
        fields.push(Field::new("oracle_b", DataType::Float64, false));
        cols.push(Arc::new(Float64Array::from(ob.clone())));
        fields.push(Field::new("longer", DataType::Int8, true));
        cols.push(Arc::new(Int8Array::from(longer_col)));
        let out = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?;
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let summary = json!({
            "oracle": match p.oracle { OracleKind::Synthetic => "synthetic", OracleKind::RewardModel => "reward_model" },
            "shard": p.shard,
            "shards": p.shards,
            "rows_in": all.num_rows(),
            "pairs": n,
            "ties": ties,
            "margin": p.margin,
            "length_differing": differ,
            "longer_preferred": longer_wins,
            "longer_preferred_share": if differ > 0 { longer_wins as f64 / differ as f64 } else { 0.0 },
            "human_labelled": human_n,
            "human_agreement": if human_n > 0 { Some(agree as f64 / human_n as f64) } else { None },
            "mean_oracle": (mean(&oa) + mean(&ob)) / 2.0,
        });
        table::write_table(&ctx.output_path("labelled"), &out, &table::summary_kv("label", &summary))?;
        ctx.progress(2 * n as u64, 2 * n as u64);
        ctx.log(&format!(
            "labelled {n} pairs (shard {}/{}): longer preferred in {:.1}% of {differ} length-differing pairs, {ties} ties",
            p.shard,
            p.shards,
            100.0 * summary["longer_preferred_share"].as_f64().unwrap_or(0.0)
        ));
        Ok(summary)
    }
}
