//! `evaluate`: oracle evaluation of a policy against the reference (METHOD.md, step 6).
//!
//! Samples `samples_per_prompt` responses from the policy and from π_ref for each held-out prompt of `prompts`
//! (rows whose `split` equals the `split` param when the table has that column; distinct prompts in table order;
//! `skip_prompts` leaves out the first ones, `n_prompts` caps the rest). Both models sample with the same per-batch seeds (common random numbers). Each response
//! is scored by the oracle:
//! - `oracle = "synthetic"`: the embedded task's programmatic oracle ([`crate::oracle`]) with the
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
//! Run on a validation split (`split = "eval"`) this is what β/τ selection reads (see `select`). With a
//! `selection` bound, `policy` may bind every candidate of a β/τ sweep (one per value, for this node's ρ and seed):
//! the one the selection chose for its method and ρ is evaluated, the others only enter the cache key.
//!
//! π_ref's samples do not depend on the policy: every evaluation of one seed with the same prompts, oracle and
//! sampling parameters draws the same π_ref responses. Bind `reference_samples` to the `samples` of one evaluation
//! of π_ref itself (`policy` = `reference`, which samples once) and its π_ref responses and their oracle scores are
//! read instead of drawn again. The `samples` table records what its π_ref side depends on
//! ([`crate::evaluation::SAMPLING_KEY`]: the reference's and the prompts' content hashes, the oracle, every sampling
//! parameter); a bound table whose record differs from this node's is refused, naming the fields, and so is one whose
//! rows are not this node's (shard's) (prompt, sample) rows in order. Reused or drawn, the outputs are the same bytes.
//!
//! Sharding (`shard`/`shards`): the (prompt, sample) rows are cut into batches of `batch_size` exactly as unsharded,
//! and shard k of N evaluates the k-th contiguous block of batches with the same per-batch seeds, so `merge_eval`
//! concatenating the shards' `samples` gives back the unsharded table row for row, and its summary the
//! unsharded summary.
use crate::port::*;
use crate::sampling_params;
use serde::Deserialize;
use serde_json::{Map, Value};

pub struct Evaluate;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OracleKind {
    Synthetic,
    RewardModel,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// "synthetic": the embedded task's programmatic oracle; "reward_model": the checkpoint bound to `oracle`.
    pub oracle: OracleKind,
    /// The synthetic oracle's knobs (as `synth`'s OracleParams).
    #[serde(default)]
    pub oracle_params: Map<String, Value>,
    /// Rows of `prompts` to evaluate on, by their `split` column; `null`/absent column: every row.
    #[serde(default = "d_split")]
    pub split: Option<String>,
    /// Evaluate only the first N distinct prompts of the split (table order, after `skip_prompts`); none: all.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub n_prompts: Option<usize>,
    /// Leave out the first N distinct prompts of the split: a table of held-out prompts serves as validation prompts
    /// (the first N, `n_prompts = N`) and as test prompts (`skip_prompts = N`), never the same prompt twice.
    #[serde(default)]
    pub skip_prompts: usize,
    /// Responses sampled per prompt from the policy, and as many from π_ref.
    #[serde(default = "d_one")]
    #[schemars(range(min = 1))]
    pub samples_per_prompt: usize,
    /// Sampling temperature (> 0); `kl` is exact in expectation only at 1.
    #[serde(default = "d_temp")]
    pub temperature: f64,
    /// Nucleus sampling: the smallest token set with this probability mass, in (0, 1] (1: all tokens).
    #[serde(default = "d_top_p")]
    pub top_p: f64,
    /// Most tokens sampled per response (EOS ends it earlier).
    #[serde(default = "d_max_new")]
    #[schemars(range(min = 1))]
    pub max_new_tokens: usize,
    /// (prompt, sample) rows per batch; each batch has its own sampling seed, and shards are whole batches.
    #[serde(default = "d_bs")]
    #[schemars(range(min = 1))]
    pub batch_size: usize,
    /// Truncation of prompt + response in tokens; samples continue the last max_len − max_new_tokens prompt tokens.
    #[serde(default = "d_max_len")]
    #[schemars(range(min = 2))]
    pub max_len: usize,
    /// Base seed: batch b samples with a seed derived from (seed, b), the same for the policy and π_ref.
    #[serde(default)]
    pub seed: u64,
    /// Which contiguous block of batches this node evaluates, 0-based (< shards); `merge_eval` joins them.
    #[serde(default)]
    pub shard: usize,
    /// Number of blocks the batches are cut into (1: unsharded).
    #[serde(default = "d_one")]
    #[schemars(range(min = 1))]
    pub shards: usize,
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

pub fn parse(params: &Map<String, Value>) -> StageResult<Params> {
    let p: Params = parse_params(params)?;
    sampling_params::check_temperature(p.temperature, "")?;
    sampling_params::check_top_p(p.top_p)?;
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
    crate::data_io::check_prompt_room(p.max_len, p.max_new_tokens)?;
    // samples are numbered in 32 bits (the samples table's `sample` column and the row index)
    if p.samples_per_prompt > u32::MAX as usize {
        return Err(StageError::invalid(
            "samples_per_prompt",
            format!("must be at most {}, got {}", u32::MAX, p.samples_per_prompt),
        ));
    }
    if p.shard >= p.shards {
        return Err(StageError::invalid("shard", format!("must be < shards ({}), got {}", p.shards, p.shard)));
    }
    if p.oracle == OracleKind::RewardModel && !p.oracle_params.is_empty() {
        return Err(StageError::invalid("oracle_params", "only the synthetic oracle takes oracle_params"));
    }
    Ok(p)
}

/// What π_ref's responses and their oracle scores depend on: the content hashes of the reference, the prompts table
/// and the oracle checkpoint, and every parameter that chooses the rows, draws the samples or scores them. Not the
/// shard: shards are whole batches with the unsharded seeds (merged shards are the unsharded table), and the reader
/// checks the rows.
pub fn sampling_record(p: &Params, reference: &str, prompts: &str, oracle_model: Option<&str>) -> Value {
    // the knobs as the oracle reads them, not as written: `1` and `1.0` (which key alike) or a default left out are
    // one oracle, and a record written with either must match the other's
    let knobs = match p.oracle {
        OracleKind::Synthetic => crate::oracle::OracleParams::from_map(&p.oracle_params, "oracle_params")
            .ok()
            .and_then(|k| serde_json::to_value(k).ok())
            .unwrap_or_else(|| Value::Object(p.oracle_params.clone())),
        OracleKind::RewardModel => Value::Object(p.oracle_params.clone()),
    };
    serde_json::json!({
        "reference": reference,
        "prompts": prompts,
        "oracle": p.oracle,
        "oracle_model": oracle_model,
        "oracle_params": knobs,
        "split": p.split,
        "skip_prompts": p.skip_prompts,
        "n_prompts": p.n_prompts,
        "samples_per_prompt": p.samples_per_prompt,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "max_new_tokens": p.max_new_tokens,
        "batch_size": p.batch_size,
        "max_len": p.max_len,
        "seed": p.seed,
    })
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
            InputSpec {
                name: "reference_samples",
                required: false,
                many: false,
                doc: "`samples` of an evaluation with the same reference, prompts, oracle and sampling parameters: its π_ref responses are reused, not drawn again",
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
    fn validate(&self, params: &Map<String, Value>) -> StageResult<()> {
        parse(params).map(|_| ())
    }
    fn validate_bound(&self, params: &Map<String, Value>, bound: &dyn Fn(&str) -> bool) -> StageResult<()> {
        match (parse(params)?.oracle, bound("oracle")) {
            (OracleKind::RewardModel, false) => Err(StageError::invalid(
                "oracle",
                "oracle = \"reward_model\" needs a reward-model checkpoint bound to the `oracle` input",
            )),
            // the synthetic oracle would score with its formula and ignore the checkpoint
            (OracleKind::Synthetic, true) => Err(StageError::invalid(
                "oracle",
                "a checkpoint is bound to the `oracle` input, but the synthetic oracle takes none; use oracle = \
                 \"reward_model\" or remove the binding",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reuse::record_mismatch;
    use serde_json::json;

    fn params(v: Value) -> Params {
        parse(v.as_object().unwrap()).unwrap()
    }

    #[test]
    fn max_len_must_leave_room_for_a_prompt_beside_the_response() {
        let with = |max_len: u64| {
            parse(json!({"oracle": "synthetic", "max_new_tokens": 64, "max_len": max_len}).as_object().unwrap())
        };
        for bad in [0, 1, 64] {
            match with(bad) {
                Err(StageError::Invalid { field, message }) => {
                    assert_eq!(field, "max_len");
                    assert!(message.contains("must exceed max_new_tokens (64)"), "{message}");
                }
                other => panic!("max_len = {bad}: {other:?}"),
            }
        }
        assert!(with(65).is_ok());
        let many = parse(json!({"oracle": "synthetic", "samples_per_prompt": 100_000_000_000u64}).as_object().unwrap());
        assert!(
            matches!(&many, Err(StageError::Invalid { field, .. }) if field == "samples_per_prompt"),
            "was silently taken modulo 2^32: {many:?}"
        );
    }

    #[test]
    fn a_record_reuses_only_what_this_node_would_draw() {
        let p = params(json!({"oracle": "synthetic", "split": "test", "seed": 3}));
        let ours = sampling_record(&p, "ref-hash", "prompts-hash", None);
        assert!(record_mismatch(&ours, Some(&ours.clone())).is_empty());
        // one sampling parameter, the reference, or the oracle's knobs apart: refused, naming each field
        let other = sampling_record(
            &params(json!({"oracle": "synthetic", "split": "test", "seed": 3, "batch_size": 32})),
            "ref-hash",
            "prompts-hash",
            None,
        );
        assert_eq!(record_mismatch(&ours, Some(&other)), vec!["batch_size: 32 there, 64 here"]);
        let other = sampling_record(&p, "another-ref", "prompts-hash", None);
        assert_eq!(record_mismatch(&ours, Some(&other)), vec!["reference: \"another-ref\" there, \"ref-hash\" here"]);
        let other = sampling_record(
            &params(json!({"oracle": "synthetic", "oracle_params": {"length_bonus": 0.2}, "split": "test", "seed": 3})),
            "ref-hash",
            "prompts-hash",
            None,
        );
        assert_eq!(record_mismatch(&ours, Some(&other)).len(), 1);
        assert!(record_mismatch(&ours, Some(&other))[0].starts_with("oracle_params:"));
        // the knobs as the oracle reads them: 1 and 1.0, or a default written out, are one oracle (a reviewer's
        // finding: 1 and 1.0 key alike, so a cached shard's record said 1.0 and a fresh one's 1, and merge_eval
        // refused the pair for good)
        let with = |knobs: Value| {
            sampling_record(
                &params(json!({"oracle": "synthetic", "oracle_params": knobs, "split": "test", "seed": 3})),
                "ref-hash",
                "prompts-hash",
                None,
            )
        };
        assert_eq!(with(json!({"coverage_weight": 1})), with(json!({"coverage_weight": 1.0})));
        assert_eq!(with(json!({})), with(json!({"coverage_weight": 1.0, "length_cap": 10})));
        // a field only one side has, and no record at all
        let mut extra = ours.clone();
        extra["new_knob"] = json!(1);
        assert_eq!(record_mismatch(&ours, Some(&extra)), vec!["new_knob: 1 there, absent here"]);
        assert_eq!(record_mismatch(&ours, None).len(), 1);
    }
}
