//! `sample_pairs`: unlabelled response pairs sampled from a policy (the SFT policy `π_ref`), in the normalised pairs
//! table (see [`crate::table`]).
//!
//! Inputs: `policy` (a causal-LM checkpoint with its tokenizer), `prompts` (a table with `prompt` and, optionally,
//! `split`: with `split = "train"` (the default) only those rows are used; `split = "all"` uses every row).
//! For each distinct prompt (first `max_prompts` if set), `pairs_per_prompt` pairs: two independent samples each
//! (temperature, top-p, `max_new_tokens`). Pairs whose two responses are identical or empty are dropped and counted;
//! so is a repeat of a pair already drawn. Responses are decoded without their EOS (encoding convention of
//! the worker's `data_io`).
//!
//! Sampling is seeded per batch of prompts (batch `k` of `batch_size` prompts draws with seed `seed + k`, row by row
//! as `rmdistill_ml::generate` does), so the output depends on the inputs, params and thread count only.
//! Output `pairs`: `label` null, `words_*` word counts, `tokens_*` token counts under the policy's tokenizer
//! (without EOS), `source_row` = the prompt's row in `prompts`. Summary: counts, mean lengths, share of pairs
//! that differ in length by the margin, truncated samples (no EOS within `max_new_tokens`).
use crate::port::*;
use crate::sampling_params;
use serde::Deserialize;
use serde_json::{Map, Value};

pub struct SamplePairs;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Use the rows of `prompts` whose `split` equals this; "all" (or no `split` column): every row.
    #[serde(default = "d_split")]
    pub split: String,
    /// Pairs drawn per distinct prompt (two independent samples each).
    #[serde(default = "d_ppp")]
    #[schemars(range(min = 1))]
    pub pairs_per_prompt: usize,
    /// Use only the first N distinct prompts (table order); none: all.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub max_prompts: Option<usize>,
    /// Sampling temperature (> 0).
    #[serde(default = "d_temp")]
    pub temperature: f64,
    /// Nucleus sampling: the smallest token set with this probability mass, in (0, 1] (1: all tokens).
    #[serde(default = "d_top_p")]
    pub top_p: f64,
    /// Most tokens sampled per response (EOS ends it earlier; samples without EOS count as truncated).
    #[serde(default = "d_max_new")]
    #[schemars(range(min = 1))]
    pub max_new_tokens: usize,
    /// Base seed: prompt batch k samples with seed + k.
    #[serde(default)]
    pub seed: u64,
    /// Prompts per sampling batch (each gives 2 × pairs_per_prompt samples).
    #[serde(default = "d_bs")]
    #[schemars(range(min = 1))]
    pub batch_size: usize,
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

pub fn parse(params: &Map<String, Value>) -> StageResult<Params> {
    let p: Params = parse_params(params)?;
    if p.pairs_per_prompt == 0 {
        return Err(StageError::invalid("pairs_per_prompt", "must be at least 1"));
    }
    sampling_params::check_temperature(p.temperature, "; pairs need two distinct samples")?;
    sampling_params::check_top_p(p.top_p)?;
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
    fn validate(&self, params: &Map<String, Value>) -> StageResult<()> {
        parse(params).map(|_| ())
    }
    fn wants_gpu(&self) -> bool {
        true
    }
    fn params_schema(&self) -> schemars::Schema {
        schemars::schema_for!(Params)
    }
    fn runs(&self) -> Runs {
        Runs::Worker
    }
}
