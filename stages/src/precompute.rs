//! `precompute`: the offline tables the policy stage trains from (METHOD.md, experiment step 4), shardable.
//!
//! Inputs: `pairs` (the training set `D_ρ`), `reference` (the frozen reference policy `π_ref`, a causal-LM checkpoint
//! with its tokenizer), `reward_models` (many: reward-model checkpoints; none gives a table of reference log-probs
//! only, with empty reward lists — what DPO and IPO read so as not to score D_ρ themselves). Members are ordered by their
//! upstream sweep coordinates (numbers compared as numbers, then by node name), so `rm_member@member=0.2` comes before
//! `…member=0.35`; each member encodes text with its own tokenizer.
//!
//! With `oracle_rewards`, the pairs table's own oracle scores (`oracle_a`, `oracle_b` from `label`) are one more member,
//! named `oracle`, after the reward models (or the only one): the ablation "d-DPO from the true reward".
//!
//! Output `rewards` (Parquet, one row per pair in `pairs` order): `pair_id`; `ref_logp_a`, `ref_logp_b` (Float64:
//! `log π_ref(y|x)` summed over the response tokens *and the EOS that ends them* — the encoding convention of
//! the worker's `data_io`); `len_a`, `len_b` (UInt32: the number of tokens those sums run over, EOS included, for a
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
//! Reference log-probs computed once: `reference_logprobs` may bind the `rewards` of another precompute node of the
//! same `pairs` and `reference` (in the default pipeline `precompute_ref`, which computes nothing else); its
//! `ref_logp_a`/`ref_logp_b` are then read instead of computed again. The `rewards` table records what those columns
//! depend on ([`SCORING_KEY`]: the reference's and the pairs' content hashes, `max_len` and `batch_size`); a bound
//! table whose record differs from this node's, or whose pair ids are not this node's (shard's) in order, is refused,
//! naming the difference. Read or computed,
//! the outputs are the same bytes.
//!
//! Sharding: shard k of N covers the k-th contiguous run of whole `batch_size` batches of pairs and the k-th
//! contiguous run of prompt blocks (each block's samples scored on their own); `merge` concatenates each output's
//! shards back into the unsharded table, bit for bit: every batch, hence its padding and the kernels' rounding on
//! that shape, is the one the unsharded stage runs. A shard may be empty (more shards than batches).
use crate::data_io;
use crate::port::*;
use crate::sampling_params;
use serde::Deserialize;
use serde_json::{Map, Value};

pub struct Precompute;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Which shard this node computes, 0-based (< shards): the k-th run of pair batches and of prompt blocks.
    #[serde(default)]
    pub shard: usize,
    /// Number of shards (1: unsharded); `merge` concatenates them into the unsharded tables, bit for bit.
    #[serde(default = "d_shards")]
    #[schemars(range(min = 1))]
    pub shards: usize,
    /// π_ref samples per distinct prompt in ref_samples (0: an empty table).
    #[serde(default = "d_spp")]
    pub samples_per_prompt: usize,
    /// Most tokens sampled per π_ref response (EOS ends it earlier; `finished` says which did).
    #[serde(default = "d_max_new")]
    #[schemars(range(min = 1))]
    pub max_new_tokens: usize,
    /// Sampling temperature of π_ref's samples (keep 1: the KL estimate needs samples of π_ref itself).
    #[serde(default = "d_temp")]
    pub temperature: f64,
    /// Base seed: prompt block k samples with seed + k.
    #[serde(default)]
    pub seed: u64,
    /// Pairs per forward pass for the reference log-probs and rewards; shards are whole batches.
    #[serde(default = "d_bs")]
    #[schemars(range(min = 1))]
    pub batch_size: usize,
    /// Distinct prompts per sampling block (block k samples with seed + k); shards are whole blocks.
    #[serde(default = "d_sample_batch")]
    #[schemars(range(min = 1))]
    pub sample_batch: usize,
    /// Truncation of `prompt ++ response` (never beyond the model's positions). Must equal the `policy` stage's
    /// `max_len` (same default), or the precomputed reference log-probs of long pairs do not match the policy's.
    #[serde(default = "d_max_len")]
    #[schemars(range(min = 2))]
    pub max_len: usize,
    /// Add the oracle's own scores of the pairs (the `oracle_a`, `oracle_b` columns `label` writes) as one more member,
    /// named `oracle`, after the reward models: d-DPO distilled from the true reward r* instead of a learned one, the
    /// ablation that tells what distillation does from what its reward models' errors do.
    #[serde(default)]
    pub oracle_rewards: bool,
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

pub fn parse(params: &Map<String, Value>) -> StageResult<Params> {
    let p: Params = parse_params(params)?;
    data_io::check_shards(p.shard, p.shards)?;
    if p.samples_per_prompt > 0 {
        sampling_params::check_temperature(p.temperature, "")?;
    }
    if p.max_new_tokens == 0 {
        return Err(StageError::invalid("max_new_tokens", "must be at least 1"));
    }
    if p.max_len < 2 {
        return Err(StageError::invalid("max_len", "must be at least 2"));
    }
    if p.samples_per_prompt > 0 {
        data_io::check_prompt_room(p.max_len, p.max_new_tokens)?;
    }
    if p.batch_size == 0 || p.sample_batch == 0 {
        return Err(StageError::invalid(
            if p.batch_size == 0 { "batch_size" } else { "sample_batch" },
            "must be at least 1",
        ));
    }
    Ok(p)
}

/// The key, in the `rewards` table's metadata, of what its reference log-probs depend on ([`scoring_record`]).
pub const SCORING_KEY: &str = "rmdistill.reference_scoring";

/// What `ref_logp_a`/`ref_logp_b` depend on: the content hashes of the reference and the pairs, and the parameters
/// that cut and batch the sequences (padding and batch shape change the kernels' rounding). Not the shard: a shard's
/// rows are whole batches of the unsharded table (so merged shards are that table), and the reader checks the rows.
pub fn scoring_record(p: &Params, reference: &str, pairs: &str) -> Value {
    serde_json::json!({
        "reference": reference,
        "pairs": pairs,
        "max_len": p.max_len,
        "batch_size": p.batch_size,
    })
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
            InputSpec { name: "pairs", required: true, many: false, doc: "the training set D_ρ" },
            InputSpec {
                name: "reference",
                required: true,
                many: false,
                doc: "reference policy (causal-LM checkpoint with tokenizer)",
            },
            InputSpec {
                name: "reward_models",
                required: false,
                many: true,
                doc: "reward-model checkpoints (members, ordered by coords; none: reference log-probs only)",
            },
            InputSpec {
                name: "reference_logprobs",
                required: false,
                many: false,
                doc: "`rewards` of a precompute node with the same pairs, reference, max_len, batch_size and shard: its reference log-probs are read, not computed again",
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
                doc: "prompt, response, ref_logp, finished: samples of π_ref",
            },
        ]
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Sampling π_ref needs room for a prompt beside max_new_tokens; scoring alone (samples_per_prompt = 0) does not.
    #[test]
    fn max_len_leaves_room_for_a_prompt_only_where_samples_are_drawn() {
        let with = |spp: u64, max_len: u64| {
            parse(json!({"samples_per_prompt": spp, "max_new_tokens": 32, "max_len": max_len}).as_object().unwrap())
        };
        match with(1, 32) {
            Err(StageError::Invalid { field, .. }) => assert_eq!(field, "max_len"),
            other => panic!("{other:?}"),
        }
        assert!(with(1, 33).is_ok());
        assert!(with(0, 16).is_ok(), "no samples: max_len only truncates the scored pairs");
    }
}
