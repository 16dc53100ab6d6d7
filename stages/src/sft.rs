//! `sft`: the reference policy `π_ref`, by supervised fine-tuning on demonstrations.
//!
//! Inputs: `data` — a demonstrations table (`prompt`, `summary`, optional `split`: rows with `split = "train"` train,
//! `"eval"` rows measure held-out loss) or a labelled pairs table (`prompt`, `response_a`, `response_b`, `label`: the
//! chosen response of every labelled row is the demonstration; unlabelled rows are skipped); optional `base` (a causal
//! LM checkpoint to start from) or `tokenizer` (a directory with `tokenizer.json`) — without `base` a tiny model is
//! built from scratch with the `arch` parameters; without either, a tokenizer is trained on the data
//! (`tokenizer_kind` = `word_level` | `byte_bpe`, `tokenizer_vocab`).
//!
//! The loss is the mean negative log-likelihood per response token under the encoding convention of
//! the worker's `data_io` (`[BOS] prompt` → `response [EOS]`; prompt tokens are not scored). AdamW with warm-up and
//! cosine decay; batches are drawn by a seeded shuffle per epoch. Without an eval split, the last `eval_rows`
//! training examples (after a seeded shuffle) are held out.
//!
//! Outputs: `model` (Dir: a Hugging Face causal-LM checkpoint with its tokenizer) and `metrics` (Parquet: step, loss,
//! lr, grad_norm, eval_loss — eval_loss at every `eval_every` steps and the last). Same inputs, params and thread
//! count → byte-identical outputs on CPU.
use crate::port::*;
use serde::Deserialize;
use serde_json::{Map, Value};

pub struct Sft;

#[derive(Debug, Clone, Copy, serde::Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Gpt2,
    Llama,
}

/// The shape of a model built from scratch.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ArchParams {
    /// "gpt2" (default; GPT2LMHeadModel) or "llama" (LlamaForCausalLM, as many key/value heads as heads).
    #[serde(default = "d_arch")]
    pub kind: Arch,
    /// Hidden size (width of the embeddings); a multiple of n_head.
    #[serde(default = "d_dim")]
    pub d_model: i64,
    /// Number of transformer blocks.
    #[serde(default = "d_layers")]
    pub n_layer: i64,
    /// Attention heads per block (must divide d_model).
    #[serde(default = "d_heads")]
    pub n_head: i64,
    /// Inner width of each block's feed-forward layer (GPT-2's n_inner, Llama's intermediate_size).
    #[serde(default = "d_ff")]
    pub d_ff: i64,
    /// Longest sequence the model can place, in tokens (n_positions / max_position_embeddings).
    #[serde(default = "d_pos")]
    pub max_positions: i64,
    /// Standard deviation of the normal initialisation of the weights (transformers' `initializer_range`, > 0).
    #[serde(default = "d_init_std")]
    pub init_std: f64,
}
fn d_arch() -> Arch {
    Arch::Gpt2
}
fn d_dim() -> i64 {
    64
}
fn d_layers() -> i64 {
    2
}
fn d_heads() -> i64 {
    4
}
fn d_ff() -> i64 {
    256
}
fn d_pos() -> i64 {
    128
}
fn d_init_std() -> f64 {
    0.02
}
impl Default for ArchParams {
    fn default() -> Self {
        ArchParams {
            kind: d_arch(),
            d_model: d_dim(),
            n_layer: d_layers(),
            n_head: d_heads(),
            d_ff: d_ff(),
            max_positions: d_pos(),
            init_std: d_init_std(),
        }
    }
}

#[derive(Debug, Clone, Copy, serde::Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TokKind {
    WordLevel,
    ByteBpe,
}

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Shape of the model built from scratch (without `base`; ignored when `base` is bound).
    #[serde(default)]
    pub arch: ArchParams,
    /// Optimizer steps (≥ 1).
    #[serde(default = "d_steps")]
    #[schemars(range(min = 1))]
    pub steps: usize,
    /// Demonstrations per optimizer step.
    #[serde(default = "d_bs")]
    #[schemars(range(min = 1))]
    pub batch_size: usize,
    /// Peak AdamW learning rate, cosine-decayed to 0.1 × lr after warm-up.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// Steps of linear learning-rate warm-up (at most half of `steps`).
    #[serde(default = "d_warmup")]
    pub warmup_steps: usize,
    /// AdamW decoupled weight decay (weight matrices and embeddings only).
    #[serde(default = "d_wd")]
    pub weight_decay: f64,
    /// Seed of libtorch (the initialisation), the held-out draw and the batch shuffles.
    #[serde(default)]
    pub seed: u64,
    /// Truncation of prompt + response in tokens; default: the positions the model can place.
    #[serde(default)]
    #[schemars(range(min = 2))]
    pub max_len: Option<usize>,
    /// Measure eval_loss every this many steps (and at the last).
    #[serde(default = "d_eval_every")]
    #[schemars(range(min = 1))]
    pub eval_every: usize,
    /// Most held-out examples for eval_loss (without an eval split, up to 10% of the training rows are held out).
    #[serde(default = "d_eval_rows")]
    pub eval_rows: usize,
    /// Tokenizer trained on the data when neither `base` nor `tokenizer` is bound: byte_bpe (default) or word_level.
    #[serde(default = "d_tok_kind")]
    pub tokenizer_kind: TokKind,
    /// Vocabulary size (at most) of the tokenizer trained here.
    #[serde(default = "d_tok_vocab")]
    pub tokenizer_vocab: usize,
    /// Which tokens the loss scores: the response only (the usual SFT loss), or every token of prompt and response
    /// (language modelling of the prompts too, which teaches a tiny model from scratch to read its context).
    #[serde(default = "d_train_on")]
    pub train_on: TrainOn,
}

#[derive(Debug, Clone, Copy, serde::Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum TrainOn {
    Response,
    All,
}
fn d_train_on() -> TrainOn {
    TrainOn::Response
}
fn d_steps() -> usize {
    300
}
fn d_bs() -> usize {
    32
}
fn d_lr() -> f64 {
    3e-3
}
fn d_warmup() -> usize {
    20
}
fn d_wd() -> f64 {
    0.01
}
fn d_eval_every() -> usize {
    50
}
fn d_eval_rows() -> usize {
    256
}
fn d_tok_kind() -> TokKind {
    TokKind::ByteBpe
}
fn d_tok_vocab() -> usize {
    1024
}

pub fn parse(params: &Map<String, Value>) -> StageResult<Params> {
    let p: Params = parse_params(params)?;
    if p.steps == 0 {
        return Err(StageError::invalid("steps", "must be at least 1"));
    }
    if p.batch_size == 0 {
        return Err(StageError::invalid("batch_size", "must be at least 1"));
    }
    // a sequence's log-probability needs a token to predict from and one to predict
    if p.max_len.is_some_and(|m| m < 2) {
        return Err(StageError::invalid("max_len", "must be at least 2"));
    }
    if !(p.lr > 0.0 && p.lr.is_finite()) {
        return Err(StageError::invalid("lr", format!("must be a positive number, got {}", p.lr)));
    }
    if p.eval_every == 0 {
        return Err(StageError::invalid("eval_every", "must be at least 1"));
    }
    check_arch(&p.arch)?;
    Ok(p)
}

pub fn check_arch(a: &ArchParams) -> StageResult<()> {
    for (n, v) in [
        ("arch.d_model", a.d_model),
        ("arch.n_layer", a.n_layer),
        ("arch.n_head", a.n_head),
        ("arch.d_ff", a.d_ff),
        ("arch.max_positions", a.max_positions),
    ] {
        if v <= 0 {
            return Err(StageError::invalid(n, format!("must be positive, got {v}")));
        }
    }
    if !(a.init_std > 0.0 && a.init_std.is_finite()) {
        return Err(StageError::invalid("arch.init_std", format!("must be a positive number, got {}", a.init_std)));
    }
    if a.d_model % a.n_head != 0 {
        return Err(StageError::invalid(
            "arch.n_head",
            format!("must divide d_model ({}), got {}", a.d_model, a.n_head),
        ));
    }
    Ok(())
}

impl Stage for Sft {
    fn kind(&self) -> &'static str {
        "sft"
    }
    fn doc(&self) -> &'static str {
        "the reference policy: supervised fine-tuning of a tiny model from scratch (or a base checkpoint) on demonstrations or chosen responses"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        &[
            InputSpec {
                name: "data",
                required: true,
                many: false,
                doc: "demonstrations (prompt, summary[, split]) or labelled pairs",
            },
            InputSpec { name: "base", required: false, many: false, doc: "a causal-LM checkpoint to start from" },
            InputSpec {
                name: "tokenizer",
                required: false,
                many: false,
                doc: "a directory with tokenizer.json (model built from scratch)",
            },
        ]
    }
    fn outputs(&self) -> &'static [OutputSpec] {
        &[
            OutputSpec { name: "model", kind: ArtifactKind::Dir, doc: "causal-LM checkpoint with tokenizer" },
            OutputSpec {
                name: "metrics",
                kind: ArtifactKind::File,
                doc: "step, loss, lr, grad_norm, eval_loss (Parquet)",
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

    #[test]
    fn init_std_defaults_to_transformers_and_must_be_positive() {
        let p = parse(json!({}).as_object().unwrap()).unwrap();
        assert_eq!(p.arch.init_std, 0.02);
        let p = parse(json!({"arch": {"init_std": 0.1}}).as_object().unwrap()).unwrap();
        assert_eq!(p.arch.init_std, 0.1);
        for bad in [0.0, -0.1] {
            match parse(json!({"arch": {"init_std": bad}}).as_object().unwrap()) {
                Err(StageError::Invalid { field, message }) => {
                    assert_eq!(field, "arch.init_std");
                    assert!(message.contains("positive"), "{message}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
