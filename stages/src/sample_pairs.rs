//! `sample_pairs`: unlabelled response pairs sampled from a policy (the SFT policy `π_ref`), in the normalised pairs
//! table (see [`crate::table`]).
//!
//! Inputs: `policy` (a causal-LM checkpoint with its tokenizer), `prompts` (a table with `prompt` and, optionally,
//! `split`: with `split = "train"` (the default) only those rows are used; `split = "all"` uses every row).
//! For each distinct prompt (first `max_prompts` if set), `pairs_per_prompt` pairs: two independent samples each
//! (temperature, top-p, `max_new_tokens`). Pairs whose two responses are identical or empty are dropped and counted;
//! so is a repeat of a pair already drawn. Responses are decoded without their EOS (encoding convention of
//! [`crate::data_io`]).
//!
//! Sampling is seeded per batch of prompts (batch `k` of `batch_size` prompts draws with seed `seed + k`, row by row
//! as `rmdistill_ml::generate` does), so the output depends on the inputs, params and thread count only.
//! Output `pairs`: `label` null, `words_*` word counts, `tokens_*` token counts under the policy's tokenizer
//! (without EOS), `source_row` = the prompt's row in `prompts`. Summary: counts, mean lengths, share of pairs
//! that differ in length by the margin, truncated samples (no EOS within `max_new_tokens`).
use crate::data_io::{self, Codec};
use crate::port::*;
use crate::table::{self, PairRow, PairsBuilder};
use rmdistill_ml::{LanguageModel, SampleConfig};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::HashSet;

pub struct SamplePairs;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    #[serde(default = "d_split")]
    split: String,
    #[serde(default = "d_ppp")]
    pairs_per_prompt: usize,
    #[serde(default)]
    max_prompts: Option<usize>,
    #[serde(default = "d_temp")]
    temperature: f64,
    #[serde(default = "d_top_p")]
    top_p: f64,
    #[serde(default = "d_max_new")]
    max_new_tokens: usize,
    #[serde(default)]
    seed: u64,
    #[serde(default = "d_bs")]
    batch_size: usize,
}
fn d_split() -> String {
    "train".into()
}
fn d_ppp() -> usize {
    1
}
fn d_temp() -> f64 {
    1.0
}
fn d_top_p() -> f64 {
    1.0
}
fn d_max_new() -> usize {
    32
}
fn d_bs() -> usize {
    256
}

fn parse(params: &Map<String, Value>) -> StageResult<Params> {
    let p: Params = parse_params(params)?;
    if p.pairs_per_prompt == 0 {
        return Err(StageError::invalid("pairs_per_prompt", "must be at least 1"));
    }
    if !(p.temperature > 0.0 && p.temperature.is_finite()) {
        return Err(StageError::invalid(
            "temperature",
            format!("must be positive (pairs need two distinct samples), got {}", p.temperature),
        ));
    }
    if !(p.top_p > 0.0 && p.top_p <= 1.0) {
        return Err(StageError::invalid("top_p", format!("must be in (0, 1], got {}", p.top_p)));
    }
    if p.max_new_tokens == 0 {
        return Err(StageError::invalid("max_new_tokens", "must be at least 1"));
    }
    if p.batch_size == 0 {
        return Err(StageError::invalid("batch_size", "must be at least 1"));
    }
    if p.max_prompts == Some(0) {
        return Err(StageError::invalid("max_prompts", "must be at least 1"));
    }
    Ok(p)
}

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
        if split != "all" {
            if let Some(s) = &splits {
                if s[i] != split {
                    continue;
                }
            }
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

impl Stage for SamplePairs {
    fn kind(&self) -> &'static str {
        "sample_pairs"
    }
    fn doc(&self) -> &'static str {
        "unlabelled response pairs sampled from a policy for each prompt (normalised pairs table)"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        &[
            InputSpec { name: "policy", required: true, many: false, doc: "causal-LM checkpoint with tokenizer" },
            InputSpec { name: "prompts", required: true, many: false, doc: "table with prompt (and optional split)" },
        ]
    }
    fn outputs(&self) -> &'static [OutputSpec] {
        &[OutputSpec { name: "pairs", kind: ArtifactKind::File, doc: "normalised pairs, unlabelled (Parquet)" }]
    }
    fn code_files(&self) -> &'static [&'static str] {
        &["sample_pairs.rs", "data_io.rs", "table.rs"]
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
        let pol = data_io::one_input(ctx, "policy")?;
        data_io::check_checkpoint(&pol.path, "policy")?;
        let codec = Codec::load(&pol.path, "policy")?;
        let model =
            LanguageModel::load(&pol.path, device).map_err(|e| StageError::invalid("policy", format!("{e:#}")))?;
        codec.check_vocab(model.config.vocab_size(), "policy")?;
        let prompts_in = data_io::one_input(ctx, "prompts")?;
        let mut prompts = read_prompts(&prompts_in.path, &p.split, "prompts")?;
        if let Some(m) = p.max_prompts {
            prompts.truncate(m);
        }
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
            let s = rmdistill_ml::with_autocast(device, || rmdistill_ml::generate(&model, &rows, codec.pad, &cfg))?;
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
                    let (lo, hi) = (ta.min(tb) as f64, ta.max(tb) as f64);
                    if hi > lo && hi >= 1.1 * lo {
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
        if kept == 0 {
            return Err(StageError::invalid(
                "policy",
                format!(
                    "no usable pair: of {} sampled pairs, {identical} were identical and {empty} had an empty response",
                    total * p.pairs_per_prompt
                ),
            ));
        }
        let batch = b.finish();
        let summary = json!({
            "prompts": total,
            "pairs": kept,
            "dropped_identical": identical,
            "dropped_empty": empty,
            "dropped_duplicate": duplicate,
            "truncated_samples": truncated,
            "mean_tokens": len_sum as f64 / (2 * kept) as f64,
            "length_differing_share": differ as f64 / kept as f64,
        });
        table::write_table(&ctx.output_path("pairs"), &batch, &table::summary_kv("sample_pairs", &summary))?;
        ctx.log(&format!(
            "{kept} pairs from {total} prompts ({identical} identical, {empty} empty, {duplicate} repeated dropped); mean {:.2} tokens",
            summary["mean_tokens"].as_f64().unwrap_or(0.0)
        ));
        Ok(summary)
    }
}
