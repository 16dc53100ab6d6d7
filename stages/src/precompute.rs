//! `precompute`: the offline tables the policy stage trains from (METHOD.md, experiment step 4), shardable.
//!
//! Inputs: `pairs` (the training set `D_ρ`), `reference` (the frozen reference policy `π_ref`, a causal-LM checkpoint
//! with its tokenizer), `reward_models` (many: reward-model checkpoints, at least one). Members are ordered by their
//! upstream sweep coordinates (numbers compared as numbers, then by node name), so `rm_member@member=0.2` comes before
//! `…member=0.35`; each member encodes text with its own tokenizer.
//!
//! Output `rewards` (Parquet, one row per pair in `pairs` order): `pair_id`; `ref_logp_a`, `ref_logp_b` (Float64:
//! `log π_ref(y|x)` summed over the response tokens *and the EOS that ends them* — the encoding convention of
//! [`crate::data_io`]); `len_a`, `len_b` (UInt32: the number of tokens those sums run over, EOS included, for a
//! per-token mean); `reward_a`, `reward_b` (List<Float64>: one reward per member, in member order). Metadata
//! `rmdistill.members` = JSON list of the members' node names, `rmdistill.member_coords` = their coordinates.
//!
//! Output `ref_samples` (Parquet): for every distinct prompt of `pairs` (first-appearance order),
//! `samples_per_prompt` responses sampled from `π_ref` (temperature `temperature`, default 1: the KL estimator needs
//! samples of `π_ref` itself) with `prompt`, `response` (decoded without EOS), `ref_logp` (Float64, scored with the
//! same convention as `rewards`, so `ref_logp − log π_θ` is the per-sample KL estimate), `finished` (whether the
//! sample ended with EOS within `max_new_tokens`). `samples_per_prompt = 0` writes an empty table (when another
//! precompute node supplies the samples). Prompts are sampled in fixed blocks of `sample_batch` (block `k` with seed
//! `seed + k`), so the samples do not depend on sharding.
//!
//! Sequences are truncated to `max_len` tokens (default 512, as `policy`'s: the two must agree, or the precomputed
//! reference log-probs of long pairs differ from the policy stage's and its first-batch check fails). `π_ref` samples
//! are drawn from the last `max_len − max_new_tokens` prompt tokens, the context their log-probs are scored with.
//!
//! Sharding: shard k of N covers the k-th contiguous run of whole `batch_size` batches of pairs and the k-th
//! contiguous run of prompt blocks (each block's samples scored on their own); `merge` concatenates each output's
//! shards back into the unsharded table, bit for bit: every batch, hence its padding and the kernels' rounding on
//! that shape, is the one the unsharded stage runs. A shard may be empty (more shards than batches).
use crate::data_io::{self, Codec};
use crate::port::*;
use crate::table;
use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Float64Builder, ListBuilder, RecordBatch, StringArray, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use rmdistill_ml::tch;
use rmdistill_ml::{LanguageModel, RewardModel, SampleConfig};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

pub struct Precompute;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default)]
    shard: usize,
    #[serde(default = "d_shards")]
    shards: usize,
    #[serde(default = "d_spp")]
    samples_per_prompt: usize,
    #[serde(default = "d_max_new")]
    max_new_tokens: usize,
    #[serde(default = "d_temp")]
    temperature: f64,
    #[serde(default)]
    seed: u64,
    #[serde(default = "d_bs")]
    batch_size: usize,
    #[serde(default = "d_sample_batch")]
    sample_batch: usize,
    /// Truncation of `prompt ++ response` (never beyond the model's positions). Must equal the `policy` stage's
    /// `max_len` (same default), or the precomputed reference log-probs of long pairs do not match the policy's.
    #[serde(default = "d_max_len")]
    max_len: usize,
}
fn d_max_len() -> usize {
    512
}
fn d_shards() -> usize {
    1
}
fn d_spp() -> usize {
    1
}
fn d_max_new() -> usize {
    32
}
fn d_temp() -> f64 {
    1.0
}
fn d_bs() -> usize {
    128
}
fn d_sample_batch() -> usize {
    256
}

fn parse(params: &Map<String, Value>) -> StageResult<Params> {
    let p: Params = parse_params(params)?;
    data_io::check_shards(p.shard, p.shards)?;
    if p.samples_per_prompt > 0 && !(p.temperature > 0.0 && p.temperature.is_finite()) {
        return Err(StageError::invalid("temperature", format!("must be positive, got {}", p.temperature)));
    }
    if p.max_new_tokens == 0 {
        return Err(StageError::invalid("max_new_tokens", "must be at least 1"));
    }
    if p.max_len < 2 {
        return Err(StageError::invalid("max_len", "must be at least 2"));
    }
    if p.batch_size == 0 || p.sample_batch == 0 {
        return Err(StageError::invalid(
            if p.batch_size == 0 { "batch_size" } else { "sample_batch" },
            "must be at least 1",
        ));
    }
    Ok(p)
}

fn cmp_value(a: &Value, b: &Value) -> Ordering {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x.partial_cmp(&y).unwrap_or(Ordering::Equal),
        _ => a.to_string().cmp(&b.to_string()),
    }
}

/// Orders members by coordinates (numbers numerically), then node name.
pub fn member_order(members: &[InputArtifact]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..members.len()).collect();
    idx.sort_by(|&i, &j| {
        let (a, b) = (&members[i], &members[j]);
        let keys: Vec<&String> =
            a.coords.keys().chain(b.coords.keys()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
        for k in keys {
            let o = match (a.coords.get(k), b.coords.get(k)) {
                (Some(x), Some(y)) => cmp_value(x, y),
                (None, Some(_)) => Ordering::Less,
                (Some(_), None) => Ordering::Greater,
                (None, None) => Ordering::Equal,
            };
            if o != Ordering::Equal {
                return o;
            }
        }
        a.node.cmp(&b.node)
    });
    idx
}

/// Summed `log π(y|x)` (EOS included) of rows, batched.
pub fn ref_logprobs(
    model: &LanguageModel,
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
        let lp = tch::no_grad(|| {
            rmdistill_ml::with_autocast(model.device(), || {
                rmdistill_ml::sequence_logprobs(model.net(), &b, rmdistill_ml::Reduction::Sum)
            })
        });
        out.extend(data_io::to_f64s(&lp)?);
    }
    Ok(out)
}

impl Stage for Precompute {
    fn kind(&self) -> &'static str {
        "precompute"
    }
    fn doc(&self) -> &'static str {
        "offline tables for policy training: member rewards and reference log-probs per pair, reference samples with log-probs (shardable)"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        &[
            InputSpec { name: "pairs", required: true, many: false, doc: "the training set D_rho" },
            InputSpec {
                name: "reference",
                required: true,
                many: false,
                doc: "reference policy (causal-LM checkpoint with tokenizer)",
            },
            InputSpec {
                name: "reward_models",
                required: true,
                many: true,
                doc: "reward-model checkpoints (members, ordered by coords)",
            },
        ]
    }
    fn outputs(&self) -> &'static [OutputSpec] {
        &[
            OutputSpec {
                name: "rewards",
                kind: ArtifactKind::File,
                doc: "pair_id, ref_logp_a/b, len_a/b, reward_a/b (list per member)",
            },
            OutputSpec {
                name: "ref_samples",
                kind: ArtifactKind::File,
                doc: "prompt, response, ref_logp, finished: samples of pi_ref",
            },
        ]
    }
    fn code_files(&self) -> &'static [&'static str] {
        &["precompute.rs", "label.rs", "synth.rs", "data_io.rs", "table.rs"]
    }
    fn validate(&self, params: &Map<String, Value>) -> StageResult<()> {
        parse(params).map(|_| ())
    }
    fn wants_gpu(&self) -> bool {
        true
    }
    fn run(&self, ctx: &dyn Ctx) -> StageResult<Value> {
        let p = parse(ctx.params())?;
        data_io::torch_setup(ctx, p.seed);
        let device = data_io::tch_device(ctx);
        // everything is loaded and checked before any work
        let reference = data_io::one_input(ctx, "reference")?;
        data_io::check_checkpoint(&reference.path, "reference")?;
        let mut codec = Codec::load(&reference.path, "reference")?;
        let model = LanguageModel::load(&reference.path, device)
            .map_err(|e| StageError::invalid("reference", format!("{e:#}")))?;
        codec.check_vocab(model.config.vocab_size(), "reference")?;
        codec.max_len = model.config.max_positions().map(|m| m as usize);
        let codec = codec.with_max_len(p.max_len);
        let members_in = ctx.inputs("reward_models");
        if members_in.is_empty() {
            return Err(StageError::invalid(
                "reward_models",
                "an ensemble of zero members: bind at least one reward model",
            ));
        }
        let order = member_order(members_in);
        let mut members: Vec<(RewardModel, Codec)> = vec![];
        for &i in &order {
            let (m, mut c) = crate::label::load_rm(&members_in[i].path, "reward_models", device).map_err(|e| {
                StageError::invalid(
                    "reward_models",
                    format!("{} ({}): {e}", members_in[i].node, members_in[i].path.display()),
                )
            })?;
            c.max_len = m.config.max_positions().map(|x| x as usize);
            members.push((m, c.with_max_len(p.max_len)));
        }
        let names: Vec<String> = order.iter().map(|&i| members_in[i].node.clone()).collect();
        let coords: Vec<BTreeMap<String, Value>> = order.iter().map(|&i| members_in[i].coords.clone()).collect();
        let pairs = data_io::one_input(ctx, "pairs")?;
        let path = &pairs.path;
        let all = data_io::read_nonempty(
            path,
            "pairs",
            Some(&[table::PAIR_ID, table::PROMPT, table::RESPONSE_A, table::RESPONSE_B]),
        )?;
        let all_prompts = data_io::strings(&all, table::PROMPT, path, true)?;
        // Whole batches, so that the shards' batches are the unsharded stage's (see the module doc).
        let batches = data_io::shard_range(all.num_rows().div_ceil(p.batch_size), p.shard, p.shards);
        let range =
            (batches.start * p.batch_size).min(all.num_rows())..(batches.end * p.batch_size).min(all.num_rows());
        let t = all.slice(range.start, range.len());
        let n = t.num_rows();
        let ids = data_io::strings(&t, table::PAIR_ID, path, true)?;
        let prompts = &all_prompts[range.clone()];
        let ra = data_io::strings(&t, table::RESPONSE_A, path, true)?;
        let rb = data_io::strings(&t, table::RESPONSE_B, path, true)?;
        let work = (2 * n * (1 + members.len())) as u64 + 1;
        // reference log-probs
        let pe: Vec<Vec<i64>> = prompts.iter().map(|x| codec.prompt(x)).collect::<StageResult<_>>()?;
        let ae: Vec<Vec<i64>> = ra.iter().map(|x| codec.response(x)).collect::<StageResult<_>>()?;
        let be: Vec<Vec<i64>> = rb.iter().map(|x| codec.response(x)).collect::<StageResult<_>>()?;
        let lp_a = ref_logprobs(&model, &codec, &pe, &ae, p.batch_size)?;
        let lp_b = ref_logprobs(&model, &codec, &pe, &be, p.batch_size)?;
        let mut done = 2 * n as u64;
        ctx.progress(done, work);
        // member rewards
        let mut rew_a = vec![Vec::with_capacity(members.len()); n];
        let mut rew_b = vec![Vec::with_capacity(members.len()); n];
        let mut member_stats = vec![];
        for (k, (m, c)) in members.iter().enumerate() {
            let (pe, ae, be) = if c.tok.inner().get_vocab(true) == codec.tok.inner().get_vocab(true) {
                (pe.clone(), ae.clone(), be.clone())
            } else {
                let enc = |v: &[String], f: &dyn Fn(&str) -> StageResult<Vec<i64>>| {
                    v.iter().map(|x| f(x)).collect::<StageResult<Vec<_>>>()
                };
                (enc(prompts, &|x| c.prompt(x))?, enc(&ra, &|x| c.response(x))?, enc(&rb, &|x| c.response(x))?)
            };
            let sa = crate::label::rm_scores(m, c, &pe, &ae, p.batch_size)?;
            let sb = crate::label::rm_scores(m, c, &pe, &be, p.batch_size)?;
            let mean_diff = sa.iter().zip(&sb).map(|(a, b)| (a - b).abs()).sum::<f64>() / n.max(1) as f64;
            member_stats.push(json!({"member": names[k], "mean_abs_reward_diff": mean_diff}));
            for i in 0..n {
                rew_a[i].push(sa[i]);
                rew_b[i].push(sb[i]);
            }
            done += 2 * n as u64;
            ctx.progress(done, work);
        }
        let list = |v: &[Vec<f64>]| -> ArrayRef {
            let mut b = ListBuilder::new(Float64Builder::new()).with_field(Arc::new(Field::new(
                "item",
                DataType::Float64,
                false,
            )));
            for row in v {
                b.values().append_slice(row);
                b.append(true);
            }
            Arc::new(b.finish())
        };
        let item = Arc::new(Field::new("item", DataType::Float64, false));
        let schema = Arc::new(Schema::new(vec![
            Field::new(table::PAIR_ID, DataType::Utf8, false),
            Field::new("ref_logp_a", DataType::Float64, false),
            Field::new("ref_logp_b", DataType::Float64, false),
            Field::new("len_a", DataType::UInt32, false),
            Field::new("len_b", DataType::UInt32, false),
            Field::new("reward_a", DataType::List(item.clone()), false),
            Field::new("reward_b", DataType::List(item), false),
        ]));
        let rewards = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(ids.clone())),
                Arc::new(Float64Array::from(lp_a.clone())),
                Arc::new(Float64Array::from(lp_b.clone())),
                Arc::new(UInt32Array::from(ae.iter().map(|x| x.len() as u32).collect::<Vec<_>>())),
                Arc::new(UInt32Array::from(be.iter().map(|x| x.len() as u32).collect::<Vec<_>>())),
                list(&rew_a),
                list(&rew_b),
            ],
        )?;
        // reference samples: distinct prompts of the whole table, in fixed blocks
        let mut seen = HashSet::new();
        let distinct: Vec<&String> = all_prompts.iter().filter(|x| seen.insert(x.as_str())).collect();
        let blocks = distinct.len().div_ceil(p.sample_batch);
        let my_blocks = data_io::shard_range(blocks, p.shard, p.shards);
        let (mut s_prompt, mut s_resp, mut s_lp, mut s_fin) = (vec![], vec![], vec![], vec![]);
        if p.samples_per_prompt > 0 {
            for k in my_blocks.clone() {
                let block = &distinct[k * p.sample_batch..((k + 1) * p.sample_batch).min(distinct.len())];
                let enc: Vec<Vec<i64>> = block.iter().map(|x| codec.prompt(x)).collect::<StageResult<_>>()?;
                let rows: Vec<&[i64]> = enc
                    .iter()
                    .map(|e| data_io::sampling_context(e, p.max_len, p.max_new_tokens))
                    .flat_map(|e| std::iter::repeat_n(e, p.samples_per_prompt))
                    .collect();
                let cfg = SampleConfig {
                    max_new_tokens: p.max_new_tokens,
                    temperature: p.temperature,
                    top_p: 1.0,
                    seed: p.seed.wrapping_add(k as u64),
                    eos_ids: vec![codec.eos],
                    use_cache: true,
                };
                let s = rmdistill_ml::with_autocast(device, || rmdistill_ml::generate(&model, &rows, codec.pad, &cfg))?;
                let first = s_prompt.len();
                for (j, toks) in s.tokens.iter().enumerate() {
                    s_prompt.push(block[j / p.samples_per_prompt].clone());
                    s_resp.push(codec.decode_sample(toks)?);
                    s_fin.push(s.finished[j]);
                }
                // scored block by block, so that the batches do not depend on sharding
                let pe: Vec<Vec<i64>> =
                    s_prompt[first..].iter().map(|x| codec.prompt(x)).collect::<StageResult<_>>()?;
                let re: Vec<Vec<i64>> =
                    s_resp[first..].iter().map(|x| codec.response(x)).collect::<StageResult<_>>()?;
                s_lp.extend(ref_logprobs(&model, &codec, &pe, &re, p.batch_size)?);
            }
        }
        let samples = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("prompt", DataType::Utf8, false),
                Field::new("response", DataType::Utf8, false),
                Field::new("ref_logp", DataType::Float64, false),
                Field::new("finished", DataType::Boolean, false),
            ])),
            vec![
                Arc::new(StringArray::from(s_prompt.clone())),
                Arc::new(StringArray::from(s_resp.clone())),
                Arc::new(Float64Array::from(s_lp.clone())),
                Arc::new(BooleanArray::from(s_fin.clone())),
            ],
        )?;
        let mean = |v: &[f64]| if v.is_empty() { None } else { Some(v.iter().sum::<f64>() / v.len() as f64) };
        let summary = json!({
            "shard": p.shard,
            "shards": p.shards,
            "pairs": n,
            "members": names,
            "member_coords": coords,
            "member_stats": member_stats,
            "mean_ref_logp": mean(&[lp_a.as_slice(), lp_b.as_slice()].concat()),
            "ref_samples": s_resp.len(),
            "ref_samples_unfinished": s_fin.iter().filter(|f| !**f).count(),
            "mean_ref_sample_logp": mean(&s_lp),
        });
        let kv = |stage_out: &str| {
            let mut kv =
                table::summary_kv("precompute", &json!({"shard": p.shard, "shards": p.shards, "output": stage_out}));
            kv.push(("rmdistill.members".into(), serde_json::to_string(&names).expect("json")));
            kv.push(("rmdistill.member_coords".into(), serde_json::to_string(&coords).expect("json")));
            kv
        };
        table::write_table(&ctx.output_path("rewards"), &rewards, &kv("rewards"))?;
        table::write_table(&ctx.output_path("ref_samples"), &samples, &kv("ref_samples"))?;
        ctx.progress(work, work);
        ctx.log(&format!("{n} pairs × {} members; {} reference samples", names.len(), s_resp.len()));
        Ok(summary)
    }
}
