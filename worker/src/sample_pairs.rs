//! `sample_pairs` (declared in `rmdistill_stages::sample_pairs`): samples the pairs from the policy.
use crate::data_io::{self, Codec};
use arrow::array::RecordBatch;
use rmdistill_ml::{LanguageModel, SampleConfig, tch};
use rmdistill_stages::longer::{SUMMARY_MARGIN, longer};
use rmdistill_stages::port::*;
use rmdistill_stages::sample_pairs::{Params, parse};
use rmdistill_stages::table::{self, PairRow, PairsBuilder};
use serde_json::{Value, json};
use std::collections::HashSet;

/// Distinct prompts of a prompts table (first occurrence order) with their row, filtered by split.
pub fn read_prompts(path: &std::path::Path, split: &str, slot: &str) -> StageResult<Vec<(String, u32)>> {
    let schema = table::read_schema(path)?;
    if schema.index_of("prompt").is_err() {
        return Err(StageError::invalid(
            "prompt",
            format!("{}: missing column `prompt` in input `{slot}`", path.display()),
        ));
    }
    let has_split = schema.index_of("split").is_ok();
    let cols: Vec<&str> = if has_split { vec!["prompt", "split"] } else { vec!["prompt"] };
    let t = data_io::read_nonempty(path, slot, Some(&cols))?;
    let prompts = data_io::strings(&t, "prompt", path, true)?;
    let splits = if has_split { Some(data_io::strings(&t, "split", path, false)?) } else { None };
    let mut seen = HashSet::new();
    let mut out = vec![];
    for (i, pr) in prompts.into_iter().enumerate() {
        if split != "all"
            && let Some(s) = &splits
            && s[i] != split
        {
            continue;
        }
        if seen.insert(pr.clone()) {
            out.push((pr, i as u32));
        }
    }
    if out.is_empty() {
        return Err(StageError::invalid("split", format!("{}: no prompt with split = {split:?}", path.display())));
    }
    Ok(out)
}

pub fn run(ctx: &dyn Ctx) -> StageResult<Value> {
    let p = parse(ctx.params())?;
    data_io::torch_setup(ctx, p.seed);
    let device = data_io::tch_device(ctx);
    // read
    let (model, codec) = read_policy(ctx, device)?;
    let prompts = read_sampled_prompts(ctx, &p)?;
    // compute
    let enc = encode_prompts(&p, &model, &codec, &prompts)?;
    let s = sample(ctx, &p, device, &model, &codec, &prompts, &enc)?;
    let total = prompts.len();
    if s.kept == 0 {
        return Err(StageError::invalid(
            "policy",
            format!(
                "no usable pair: of {} sampled pairs, {} were identical and {} had an empty response",
                total * p.pairs_per_prompt,
                s.identical,
                s.empty
            ),
        ));
    }
    let summary = json!({
        "prompts": total,
        "pairs": s.kept,
        "dropped_identical": s.identical,
        "dropped_empty": s.empty,
        "dropped_duplicate": s.duplicate,
        "truncated_samples": s.truncated,
        "mean_tokens": s.len_sum as f64 / (2 * s.kept) as f64,
        "length_differing_share": s.differ as f64 / s.kept as f64,
    });
    // write
    table::write_table(&ctx.output_path("pairs"), &s.pairs, &table::summary_kv("sample_pairs", &summary))?;
    ctx.log(&format!(
        "{} pairs from {total} prompts ({} identical, {} empty, {} repeated dropped); mean {:.2} tokens",
        s.kept,
        s.identical,
        s.empty,
        s.duplicate,
        summary["mean_tokens"].as_f64().unwrap_or(0.0)
    ));
    Ok(summary)
}

/// The policy that samples (π_ref in the pipelines), with its tokenizer.
fn read_policy(ctx: &dyn Ctx, device: tch::Device) -> StageResult<(LanguageModel, Codec)> {
    let pol = data_io::one_input(ctx, "policy")?;
    data_io::check_checkpoint(&pol.path, "policy")?;
    let codec = Codec::load(&pol.path, "policy")?;
    let model = LanguageModel::load(&pol.path, device).map_err(|e| StageError::invalid("policy", format!("{e:#}")))?;
    codec.check_vocab(model.config.vocab_size(), "policy")?;
    Ok((model, codec))
}

/// The distinct prompts of the split, the first `max_prompts` of them.
fn read_sampled_prompts(ctx: &dyn Ctx, p: &Params) -> StageResult<Vec<(String, u32)>> {
    let prompts_in = data_io::one_input(ctx, "prompts")?;
    let mut prompts = read_prompts(&prompts_in.path, &p.split, "prompts")?;
    if let Some(m) = p.max_prompts {
        prompts.truncate(m);
    }
    Ok(prompts)
}

/// The prompts' tokens; an error when `max_new_tokens` leaves no room for a prompt in the model's positions.
fn encode_prompts(
    p: &Params,
    model: &LanguageModel,
    codec: &Codec,
    prompts: &[(String, u32)],
) -> StageResult<Vec<Vec<i64>>> {
    let enc: Vec<Vec<i64>> = prompts.iter().map(|(pr, _)| codec.prompt(pr)).collect::<StageResult<_>>()?;
    if let Some(maxp) = model.config.max_positions() {
        // Longer prompts keep their end when sampled (see rmdistill_ml::generate); no room at all is an error.
        if p.max_new_tokens as i64 >= maxp {
            return Err(StageError::invalid(
                "max_new_tokens",
                format!(
                    "max_new_tokens {} leaves no room for a prompt in the model's {maxp} positions",
                    p.max_new_tokens
                ),
            ));
        }
    }
    Ok(enc)
}

/// The pairs table sampled, and what was dropped on the way.
struct Sampled {
    pairs: RecordBatch,
    kept: u64,
    identical: u64,
    empty: u64,
    duplicate: u64,
    truncated: u64,
    len_sum: u64,
    differ: u64,
}

/// `pairs_per_prompt` pairs of two samples per prompt, batch by batch; a pair with an empty response, two identical
/// responses, or one sampled before (the same pair id) is dropped and counted.
fn sample(
    ctx: &dyn Ctx,
    p: &Params,
    device: tch::Device,
    model: &LanguageModel,
    codec: &Codec,
    prompts: &[(String, u32)],
    enc: &[Vec<i64>],
) -> StageResult<Sampled> {
    let per = 2 * p.pairs_per_prompt;
    let mut b = PairsBuilder::with_capacity(prompts.len() * p.pairs_per_prompt, 0);
    let mut seen = HashSet::new();
    let (mut identical, mut empty, mut duplicate, mut truncated, mut kept) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut len_sum, mut differ) = (0u64, 0u64);
    let total = prompts.len();
    for (k, r) in data_io::chunks(total, p.batch_size).enumerate() {
        let rows: Vec<&[i64]> = r.clone().flat_map(|i| std::iter::repeat_n(enc[i].as_slice(), per)).collect();
        let cfg = SampleConfig {
            max_new_tokens: p.max_new_tokens,
            temperature: p.temperature,
            top_p: p.top_p,
            seed: p.seed.wrapping_add(k as u64),
            eos_ids: vec![codec.eos],
            use_cache: true,
        };
        let s = rmdistill_ml::with_autocast(device, || rmdistill_ml::generate(model, &rows, codec.pad, &cfg))?;
        truncated += s.finished.iter().filter(|f| !**f).count() as u64;
        for (j, i) in r.clone().enumerate() {
            let (prompt, src) = &prompts[i];
            for q in 0..p.pairs_per_prompt {
                let (ia, ib) = (j * per + 2 * q, j * per + 2 * q + 1);
                let ra = codec.decode_sample(&s.tokens[ia])?;
                let rb = codec.decode_sample(&s.tokens[ib])?;
                if ra.trim().is_empty() || rb.trim().is_empty() {
                    empty += 1;
                    continue;
                }
                if ra == rb {
                    identical += 1;
                    continue;
                }
                let id = table::pair_id(&table::pair_hash(prompt, &ra, &rb));
                if !seen.insert(id.clone()) {
                    duplicate += 1;
                    continue;
                }
                let (ta, tb) = (codec.count(&ra)?, codec.count(&rb)?);
                len_sum += (ta + tb) as u64;
                if longer(ta, tb, SUMMARY_MARGIN).is_some() {
                    differ += 1;
                }
                kept += 1;
                b.push(PairRow {
                    pair_id: &id,
                    prompt,
                    a: &ra,
                    b: &rb,
                    label: None,
                    words: (table::word_count(&ra), table::word_count(&rb)),
                    tokens: Some((ta, tb)),
                    source_row: *src,
                });
            }
        }
        ctx.progress(r.end as u64, total as u64);
    }
    Ok(Sampled { pairs: b.finish(), kept, identical, empty, duplicate, truncated, len_sum, differ })
}
