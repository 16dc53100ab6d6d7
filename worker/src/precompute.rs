//! `precompute` (declared in `rmdistill_stages::precompute`): reference log-probs, member rewards and π_ref samples.
use crate::data_io::{self, Codec};
use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Float64Builder, ListBuilder, RecordBatch, StringArray, UInt32Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use rmdistill_ml::tch;
use rmdistill_ml::{LanguageModel, RewardModel, SampleConfig};
use rmdistill_stages::port::*;
use rmdistill_stages::precompute::{Params, SCORING_KEY, parse, scoring_record};
use rmdistill_stages::reuse::Offered;
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
        out.extend(batch_logprobs(model, codec, &ps, &rs)?);
    }
    Ok(out)
}

/// Summed `log π(y|x)` of both responses of every pair, a pair's two rows in one batch (its prompt computed once:
/// [`data_io::score_pairs`]); `batch` rows per batch.
pub fn ref_pair_logprobs(
    model: &LanguageModel,
    codec: &Codec,
    prompts: &[Vec<i64>],
    a: &[Vec<i64>],
    b: &[Vec<i64>],
    batch: usize,
) -> StageResult<(Vec<f64>, Vec<f64>)> {
    data_io::score_pairs(prompts, a, b, batch, |ps, rs| batch_logprobs(model, codec, ps, rs))
}

fn batch_logprobs(model: &LanguageModel, codec: &Codec, ps: &[&[i64]], rs: &[&[i64]]) -> StageResult<Vec<f64>> {
    let b = codec.batch(ps, rs, model.device())?;
    let lp = tch::no_grad(|| {
        rmdistill_ml::with_autocast(model.device(), || {
            rmdistill_ml::sequence_logprobs(model.net(), &b, rmdistill_ml::Reduction::Sum)
        })
    });
    data_io::to_f64s(&lp)
}

/// log π_ref of both responses of this shard's pairs from a bound `reference_logprobs` table: only when its record
/// equals this node's (same reference, pairs, `max_len` and `batch_size`) and its pair ids are this node's (shard's),
/// in order, so that the values are the ones computing them here would give.
fn reuse_reference_logprobs(
    bound: &InputArtifact,
    record: &Value,
    ids: &[String],
) -> StageResult<(Vec<f64>, Vec<f64>)> {
    let path = &bound.path;
    let offered = Offered {
        slot: "reference_logprobs",
        bound,
        wanted: "the `rewards` of a precompute node with the same pairs, reference, max_len, batch_size and shard",
    };
    offered.check_record(SCORING_KEY, record, "computed")?;
    let t = table::read_table(path, Some(&[table::PAIR_ID, "ref_logp_a", "ref_logp_b"]))?;
    let theirs = data_io::strings(&t, table::PAIR_ID, path, true)?;
    offered.check_rows(theirs.len(), ids.len())?;
    if let Some(i) = (0..ids.len()).find(|&i| theirs[i] != ids[i]) {
        return Err(offered.refuse(format!("row {i} is pair {}, this node's is {}", theirs[i], ids[i])));
    }
    Ok((data_io::f64s(&t, "ref_logp_a", path)?, data_io::f64s(&t, "ref_logp_b", path)?))
}

/// π_ref as this stage scores with it: the model and its codec, cut to `max_len`.
struct Reference {
    model: LanguageModel,
    codec: Codec,
}

/// The reward models, in the order their rewards are listed (`member_order`).
struct Members {
    models: Vec<(RewardModel, Codec)>,
    names: Vec<String>,
    coords: Vec<BTreeMap<String, Value>>,
}

/// This shard's rows of the `pairs` table, and the distinct prompts of the whole table (π_ref samples).
struct Pairs {
    ids: Vec<String>,
    prompts: Vec<String>,
    response_a: Vec<String>,
    response_b: Vec<String>,
    distinct_prompts: Vec<String>,
    /// The oracle's scores of both responses (`oracle_a`, `oracle_b`), read only with `oracle_rewards`.
    oracle: Option<(Vec<f64>, Vec<f64>)>,
}

/// The member name of the oracle's own scores (`oracle_rewards`).
const ORACLE_MEMBER: &str = "oracle";

/// π_ref's samples of the distinct prompts, with their log-probs.
#[derive(Default)]
struct Samples {
    prompt: Vec<String>,
    response: Vec<String>,
    logp: Vec<f64>,
    finished: Vec<bool>,
}

fn read_reference(ctx: &dyn Ctx, max_len: usize, device: tch::Device) -> StageResult<Reference> {
    let reference = data_io::one_input(ctx, "reference")?;
    data_io::check_checkpoint(&reference.path, "reference")?;
    let mut codec = Codec::load(&reference.path, "reference")?;
    let model =
        LanguageModel::load(&reference.path, device).map_err(|e| StageError::invalid("reference", format!("{e:#}")))?;
    codec.check_vocab(model.config.vocab_size(), "reference")?;
    codec.max_len = model.config.max_positions().map(|m| m as usize);
    Ok(Reference { model, codec: codec.with_max_len(max_len) })
}

/// No members is allowed: the table then holds reference log-probs only (empty reward lists), for the methods that
/// distil nothing.
fn read_members(ctx: &dyn Ctx, max_len: usize, device: tch::Device) -> StageResult<Members> {
    let inputs = ctx.inputs("reward_models");
    let order = member_order(inputs);
    let mut models = vec![];
    for &i in &order {
        let (m, mut c) = crate::rm_scoring::load_rm(&inputs[i].path, "reward_models", device).map_err(|e| {
            StageError::invalid("reward_models", format!("{} ({}): {e}", inputs[i].node, inputs[i].path.display()))
        })?;
        c.max_len = m.config.max_positions().map(|x| x as usize);
        models.push((m, c.with_max_len(max_len)));
    }
    Ok(Members {
        models,
        names: order.iter().map(|&i| inputs[i].node.clone()).collect(),
        coords: order.iter().map(|&i| inputs[i].coords.clone()).collect(),
    })
}

fn read_pairs(ctx: &dyn Ctx, p: &Params) -> StageResult<Pairs> {
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
    let mut seen = HashSet::new();
    let distinct_prompts = all_prompts.iter().filter(|x| seen.insert(x.as_str())).cloned().collect();
    let oracle = if p.oracle_rewards {
        // the whole table was read with four columns; the oracle's two are read for this shard's rows only
        let o = table::read_table(path, Some(&["oracle_a", "oracle_b"]))?.slice(range.start, range.len());
        let (a, b) = (data_io::f64s(&o, "oracle_a", path)?, data_io::f64s(&o, "oracle_b", path)?);
        if let Some(i) = a.iter().chain(&b).position(|x| !x.is_finite()) {
            return Err(StageError::invalid(
                "pairs",
                format!("{}: oracle score of row {} is not finite", path.display(), range.start + i % a.len().max(1)),
            ));
        }
        Some((a, b))
    } else {
        None
    };
    Ok(Pairs {
        ids: data_io::strings(&t, table::PAIR_ID, path, true)?,
        prompts: all_prompts[range].to_vec(),
        response_a: data_io::strings(&t, table::RESPONSE_A, path, true)?,
        response_b: data_io::strings(&t, table::RESPONSE_B, path, true)?,
        distinct_prompts,
        oracle,
    })
}

/// Prompts and both responses as token ids of `codec`.
type Tokens = (Vec<Vec<i64>>, Vec<Vec<i64>>, Vec<Vec<i64>>);

fn encode(codec: &Codec, pairs: &Pairs) -> StageResult<Tokens> {
    let enc = |v: &[String], f: &dyn Fn(&str) -> StageResult<Vec<i64>>| {
        v.iter().map(|x| f(x)).collect::<StageResult<Vec<_>>>()
    };
    Ok((
        enc(&pairs.prompts, &|x| codec.prompt(x))?,
        enc(&pairs.response_a, &|x| codec.response(x))?,
        enc(&pairs.response_b, &|x| codec.response(x))?,
    ))
}

/// Every member's rewards of both responses (`[row][member]`), and each member's mean |r(a) − r(b)|.
struct MemberRewards {
    a: Vec<Vec<f64>>,
    b: Vec<Vec<f64>>,
    stats: Vec<Value>,
}

fn member_rewards(
    ctx: &dyn Ctx,
    members: &Members,
    reference: &Reference,
    pairs: &Pairs,
    tokens: &Tokens,
    batch: usize,
    work: (u64, u64),
) -> StageResult<MemberRewards> {
    let n = pairs.ids.len();
    let (mut done, total) = work;
    let mut rew_a = vec![Vec::with_capacity(members.models.len()); n];
    let mut rew_b = vec![Vec::with_capacity(members.models.len()); n];
    let mut stats = vec![];
    let reference_vocab = reference.codec.tok.inner().get_vocab(true);
    for (k, (m, c)) in members.models.iter().enumerate() {
        // a member with π_ref's vocabulary reads π_ref's tokens
        let own;
        let (pe, ae, be) = if c.tok.inner().get_vocab(true) == reference_vocab {
            tokens
        } else {
            own = encode(c, pairs)?;
            &own
        };
        let (sa, sb) = crate::rm_scoring::rm_pair_scores(m, c, pe, ae, be, batch, |k| {
            done += 2 * k as u64;
            ctx.progress(done, total);
        })?;
        let mean_diff = sa.iter().zip(&sb).map(|(a, b)| (a - b).abs()).sum::<f64>() / n.max(1) as f64;
        stats.push(json!({"member": members.names[k], "mean_abs_reward_diff": mean_diff}));
        for i in 0..n {
            rew_a[i].push(sa[i]);
            rew_b[i].push(sb[i]);
        }
    }
    if let Some((sa, sb)) = &pairs.oracle {
        let mean_diff = sa.iter().zip(sb).map(|(a, b)| (a - b).abs()).sum::<f64>() / n.max(1) as f64;
        stats.push(json!({"member": ORACLE_MEMBER, "mean_abs_reward_diff": mean_diff}));
        for i in 0..n {
            rew_a[i].push(sa[i]);
            rew_b[i].push(sb[i]);
        }
    }
    Ok(MemberRewards { a: rew_a, b: rew_b, stats })
}

/// `samples_per_prompt` samples of π_ref per distinct prompt, in fixed blocks of `sample_batch` prompts (this shard's
/// blocks), each scored by π_ref block by block, so that the batches do not depend on sharding.
fn reference_samples(reference: &Reference, pairs: &Pairs, p: &Params, device: tch::Device) -> StageResult<Samples> {
    let (model, codec) = (&reference.model, &reference.codec);
    let distinct = &pairs.distinct_prompts;
    let mut s = Samples::default();
    if p.samples_per_prompt == 0 {
        return Ok(s);
    }
    let blocks = distinct.len().div_ceil(p.sample_batch);
    for k in data_io::shard_range(blocks, p.shard, p.shards) {
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
        let out = rmdistill_ml::with_autocast(device, || rmdistill_ml::generate(model, &rows, codec.pad, &cfg))?;
        let first = s.prompt.len();
        for (j, toks) in out.tokens.iter().enumerate() {
            s.prompt.push(block[j / p.samples_per_prompt].clone());
            s.response.push(codec.decode_sample(toks)?);
            s.finished.push(out.finished[j]);
        }
        // scored on the whole prompt (the block's encoding, not the sampling context cut to fit)
        let pe: Vec<Vec<i64>> = (0..out.tokens.len()).map(|j| enc[j / p.samples_per_prompt].clone()).collect();
        let re: Vec<Vec<i64>> = s.response[first..].iter().map(|x| codec.response(x)).collect::<StageResult<_>>()?;
        s.logp.extend(ref_logprobs(model, codec, &pe, &re, p.batch_size)?);
    }
    Ok(s)
}

/// The `rewards` table: one row per pair, rewards listed in member order.
fn rewards_table(
    ids: &[String],
    logp: (&[f64], &[f64]),
    tokens: &Tokens,
    rewards: (&[Vec<f64>], &[Vec<f64>]),
) -> StageResult<RecordBatch> {
    let list = |v: &[Vec<f64>]| -> ArrayRef {
        let mut b =
            ListBuilder::new(Float64Builder::new()).with_field(Arc::new(Field::new("item", DataType::Float64, false)));
        for row in v {
            b.values().append_slice(row);
            b.append(true);
        }
        Arc::new(b.finish())
    };
    let lengths =
        |v: &[Vec<i64>]| -> ArrayRef { Arc::new(UInt32Array::from_iter_values(v.iter().map(|x| x.len() as u32))) };
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
    Ok(RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(ids)),
            Arc::new(Float64Array::from(logp.0.to_vec())),
            Arc::new(Float64Array::from(logp.1.to_vec())),
            lengths(&tokens.1),
            lengths(&tokens.2),
            list(rewards.0),
            list(rewards.1),
        ],
    )?)
}

fn samples_table(s: &Samples) -> StageResult<RecordBatch> {
    Ok(RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("prompt", DataType::Utf8, false),
            Field::new("response", DataType::Utf8, false),
            Field::new("ref_logp", DataType::Float64, false),
            Field::new("finished", DataType::Boolean, false),
        ])),
        vec![
            Arc::new(StringArray::from_iter_values(&s.prompt)),
            Arc::new(StringArray::from_iter_values(&s.response)),
            Arc::new(Float64Array::from(s.logp.clone())),
            Arc::new(BooleanArray::from(s.finished.clone())),
        ],
    )?)
}

pub fn run(ctx: &dyn Ctx) -> StageResult<Value> {
    let p = parse(ctx.params())?;
    data_io::torch_setup(ctx, p.seed);
    let device = data_io::tch_device(ctx);

    // ---- read: π_ref, the reward models, this shard's pairs (everything loaded and checked before any work)
    let reference = read_reference(ctx, p.max_len, device)?;
    let mut members = read_members(ctx, p.max_len, device)?;
    let pairs = read_pairs(ctx, &p)?;
    if pairs.oracle.is_some() {
        members.names.push(ORACLE_MEMBER.to_string());
        members.coords.push(BTreeMap::new());
    }

    // ---- compute: log π_ref of both responses, every member's rewards, π_ref's samples
    let n = pairs.ids.len();
    let work = (2 * n * (1 + members.models.len())) as u64 + 1;
    let tokens = encode(&reference.codec, &pairs)?;
    reference.codec.warn_unknown(ctx, "the pairs");
    let (pe, ae, be) = &tokens;
    let record =
        scoring_record(&p, &data_io::one_input(ctx, "reference")?.hash, &data_io::one_input(ctx, "pairs")?.hash);
    let (lp_a, lp_b) = match data_io::opt_input(ctx, "reference_logprobs")? {
        Some(bound) => reuse_reference_logprobs(bound, &record, &pairs.ids)?,
        None => ref_pair_logprobs(&reference.model, &reference.codec, pe, ae, be, p.batch_size)?,
    };
    ctx.progress(2 * n as u64, work);
    let rewards = member_rewards(ctx, &members, &reference, &pairs, &tokens, p.batch_size, (2 * n as u64, work))?;
    if p.samples_per_prompt > 0 && p.temperature != 1.0 {
        ctx.warn(&format!(
            "π_ref's samples are drawn at temperature {}: the KL term of p-DPO, dp-DPO and e-DPO estimates \
             KL(π_ref‖π_θ) from samples of π_ref itself (temperature 1), so from these it is biased",
            p.temperature
        ));
    }
    let samples = reference_samples(&reference, &pairs, &p, device)?;
    reference.codec.warn_truncated(ctx, "the pairs (π_ref's log-probs)");

    // ---- write: the two tables, each carrying the member list in its metadata
    let rewards_out = rewards_table(&pairs.ids, (&lp_a, &lp_b), &tokens, (&rewards.a, &rewards.b))?;
    let kv = |stage_out: &str| {
        let mut kv =
            table::summary_kv("precompute", &json!({"shard": p.shard, "shards": p.shards, "output": stage_out}));
        kv.push(("rmdistill.members".into(), serde_json::to_string(&members.names).expect("json")));
        kv.push(("rmdistill.member_coords".into(), serde_json::to_string(&members.coords).expect("json")));
        kv
    };
    // the rewards table carries what its reference log-probs depend on, so that another precompute can reuse them
    let rewards_kv = [kv("rewards"), vec![(SCORING_KEY.to_string(), record.to_string())]].concat();
    table::write_table(&ctx.output_path("rewards"), &rewards_out, &rewards_kv)?;
    table::write_table(&ctx.output_path("ref_samples"), &samples_table(&samples)?, &kv("ref_samples"))?;
    ctx.progress(work, work);
    ctx.log(&format!("{n} pairs × {} members; {} reference samples", members.names.len(), samples.response.len()));
    let mean = |v: &[f64]| if v.is_empty() { None } else { Some(v.iter().sum::<f64>() / v.len() as f64) };
    Ok(json!({
        "shard": p.shard,
        "shards": p.shards,
        "pairs": n,
        "members": members.names,
        "member_coords": members.coords,
        "member_stats": rewards.stats,
        "mean_ref_logp": mean(&[lp_a.as_slice(), lp_b.as_slice()].concat()),
        "ref_samples": samples.response.len(),
        "ref_samples_unfinished": samples.finished.iter().filter(|f| !**f).count(),
        "mean_ref_sample_logp": mean(&samples.logp),
    }))
}
