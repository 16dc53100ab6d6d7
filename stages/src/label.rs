//! `label`: oracle labelling (METHOD.md, experiment step 1), shardable.
//!
//! Input `pairs` (the normalised pairs table, labelled or not) and, for `oracle = "reward_model"`, the oracle reward
//! model: the `oracle` input (a reward-model checkpoint, e.g. `train_rm` on the human labels) or the path parameter
//! `oracle_path` naming a given checkpoint's directory (`model.safetensors`, `config.json`, `tokenizer.json`;
//! the whole directory's content enters the cache key, and a change to any file of it while the node runs fails it). `oracle = "synthetic"` scores with the embedded
//! task's programmatic oracle [`crate::oracle::oracle_score`] and its `oracle_params`.
//!
//! Every row gets both oracle scores and the oracle's preference. Output `labelled`: the input's columns, with
//! `label` replaced by the oracle label (0: `response_a`, 1: `response_b`; ties — scores equal within
//! [`crate::oracle::TIE_TOLERANCE`], so that rounding never decides — are broken by a bit of the pair's hash, a fair,
//! reproducible coin; with `ties = "drop"` they are left out of the table and its summary figures), `tokens_a/b`
//! filled where null (the oracle model's tokenizer, or word counts for the synthetic oracle), then `human_label` (the
//! input's label, Int8, null when unlabelled),
//! `oracle_a`, `oracle_b` (Float64) and `longer` (Int8: 0 when `response_a` is longer by the margin — at least
//! (1 + `margin`) × the other's tokens and strictly more —, 1 when `response_b` is, null within the margin).
//!
//! Sharding: `shards` = N, `shard` = k labels the k-th contiguous block of rows (`⌊n·k/N⌋..⌊n·(k+1)/N⌋`); `merge`
//! concatenates the blocks in shard order, which gives back the unsharded table. The shard numbers are written in the
//! output's metadata (`rmdistill.shard`, `rmdistill.shards`).
//!
//! Summary: pairs, ties, the share of length-differing pairs whose longer response the oracle prefers
//! (`longer_preferred_share`, the paper's ~61%), agreement with the human labels when there are any.
use crate::data_io;
use crate::oracle::OracleParams;
use crate::port::*;
use serde::Deserialize;
use serde_json::{Map, Value};

pub struct Label;

#[derive(Debug, Clone, Copy, serde::Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OracleKind {
    Synthetic,
    RewardModel,
}

/// What `label` does with a pair the oracle scores as a tie.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Ties {
    /// Keep it, labelled by a fair, reproducible coin (a bit of the pair's hash): what a rater without a preference
    /// does.
    #[default]
    Coin,
    /// Leave it out of the table: every label then is the oracle's own preference.
    Drop,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// "synthetic": the embedded task's programmatic oracle; "reward_model": the `oracle` input or oracle_path.
    pub oracle: OracleKind,
    /// Synthetic oracle knobs (coverage_weight, invent_penalty, repeat_penalty, length_bonus, length_cap).
    #[serde(default)]
    pub oracle_params: Map<String, Value>,
    /// A reward-model checkpoint directory (model.safetensors, config.json, tokenizer.json), instead of `oracle`.
    #[serde(default)]
    pub oracle_path: Option<String>,
    /// Which block of rows this node labels, 0-based (< shards); `merge` concatenates the blocks.
    #[serde(default)]
    pub shard: usize,
    /// Number of contiguous row blocks the table is cut into (1: unsharded).
    #[serde(default = "d_shards")]
    #[schemars(range(min = 1))]
    pub shards: usize,
    /// Pairs the oracle scores as a tie: "coin" keeps them with a coin-flip label, "drop" leaves them out.
    #[serde(default)]
    pub ties: Ties,
    /// "Longer" (the `longer` column) = at least (1 + margin) × the other's tokens and strictly more.
    #[serde(default = "d_margin")]
    pub margin: f64,
    /// Pairs per reward-model forward pass (oracle = "reward_model").
    #[serde(default = "d_bs")]
    #[schemars(range(min = 1))]
    pub batch_size: usize,
    /// Truncation of `prompt ++ response` when a reward model labels (as `train_rm`'s `max_len`); default: the
    /// positions the model can place.
    #[serde(default)]
    #[schemars(range(min = 2))]
    pub max_len: Option<usize>,
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

pub fn parse(params: &Map<String, Value>) -> StageResult<(Params, OracleParams)> {
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
    fn validate(&self, params: &Map<String, Value>) -> StageResult<()> {
        parse(params).map(|_| ())
    }
    fn validate_bound(&self, params: &Map<String, Value>, bound: &dyn Fn(&str) -> bool) -> StageResult<()> {
        let (p, _) = parse(params)?;
        match (p.oracle, bound("oracle"), p.oracle_path.is_some()) {
            (OracleKind::RewardModel, false, false) => Err(StageError::invalid(
                "oracle",
                "oracle = \"reward_model\" needs the `oracle` input or the oracle_path param",
            )),
            (OracleKind::RewardModel, true, true) => Err(StageError::invalid(
                "oracle_path",
                "give the oracle either as the `oracle` input or as oracle_path, not both",
            )),
            (OracleKind::Synthetic, true, _) => Err(StageError::invalid(
                "oracle",
                "the synthetic oracle takes no `oracle` input; use oracle = \"reward_model\"",
            )),
            _ => Ok(()),
        }
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
