//! `precompute` (declared in `rmdistill_stages::precompute`): reference log-probs, member rewards and π_ref samples.
use crate::data_io::{self, Codec};
use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Float64Builder, ListBuilder, RecordBatch, StringArray, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use rmdistill_ml::tch;
use rmdistill_ml::{LanguageModel, RewardModel, SampleConfig};
use rmdistill_stages::port::*;
use rmdistill_stages::precompute::parse;
use rmdistill_stages::table;
use serde_json::{Value, json};
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

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

pub fn run(ctx: &dyn Ctx) -> StageResult<Value> {
    let p = parse(ctx.params())?;
    data_io::torch_setup(ctx, p.seed);
    let device = data_io::tch_device(ctx);
    // everything is loaded and checked before any work
    let reference = data_io::one_input(ctx, "reference")?;
    data_io::check_checkpoint(&reference.path, "reference")?;
    let mut codec = Codec::load(&reference.path, "reference")?;
    let model =
        LanguageModel::load(&reference.path, device).map_err(|e| StageError::invalid("reference", format!("{e:#}")))?;
    codec.check_vocab(model.config.vocab_size(), "reference")?;
    codec.max_len = model.config.max_positions().map(|m| m as usize);
    let codec = codec.with_max_len(p.max_len);
    // no members: a table of reference log-probs only (empty reward lists), for the methods that distil nothing
    let members_in = ctx.inputs("reward_models");
    let order = member_order(members_in);
    let mut members: Vec<(RewardModel, Codec)> = vec![];
    for &i in &order {
        let (m, mut c) = crate::rm_scoring::load_rm(&members_in[i].path, "reward_models", device).map_err(|e| {
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
    let range = (batches.start * p.batch_size).min(all.num_rows())..(batches.end * p.batch_size).min(all.num_rows());
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
        let sa = crate::rm_scoring::rm_scores(m, c, &pe, &ae, p.batch_size)?;
        let sb = crate::rm_scoring::rm_scores(m, c, &pe, &be, p.batch_size)?;
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
        let mut b =
            ListBuilder::new(Float64Builder::new()).with_field(Arc::new(Field::new("item", DataType::Float64, false)));
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
    // (a loop over no samples when samples_per_prompt = 0)
    #[allow(clippy::manual_checked_ops)]
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
            let pe: Vec<Vec<i64>> = s_prompt[first..].iter().map(|x| codec.prompt(x)).collect::<StageResult<_>>()?;
            let re: Vec<Vec<i64>> = s_resp[first..].iter().map(|x| codec.response(x)).collect::<StageResult<_>>()?;
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
