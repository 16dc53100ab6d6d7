//! `train_rm`: a Bradley–Terry reward model on a labelled pairs table (METHOD.md, "Reward models").
//!
//! Inputs: `data` (a table with `prompt`, `response_a`, `response_b` and a label column, `label_column` =
//! `label` by default; every row must be labelled), `base` (a causal-LM checkpoint, whose backbone starts the reward
//! model with a fresh score head, or a reward-model checkpoint to continue from; its `tokenizer.json` is used), and
//! optionally `eval` (another labelled table, e.g. oracle-labelled pairs the reward model never saw, scored after
//! training: `eval_accuracy`, `eval_accuracy_within_margin` — on pairs whose lengths differ by less than the margin, which
//! length alone cannot decide — and `eval_length_sensitivity`, in the summary and the metrics table's metadata, where the
//! report reads them). Where `eval` carries the oracle's scores (`oracle_a`, `oracle_b`, as `label` writes them), the
//! pairs the oracle scores as a tie are left out of these figures (`eval_ties_left_out`): their label is a coin.
//!
//! Loss `−log σ(r(x, y_w) − r(x, y_l))`, AdamW with warm-up and linear decay over `steps` (default:
//! `epochs` passes over the training rows), batches drawn by a seeded shuffle per epoch. `r` reads the score head
//! at the EOS that ends `[BOS] prompt response [EOS]` (encoding convention of the worker's `data_io`).
//!
//! Held-out split: a row is held out when BLAKE3(`seed` ␀ pair_id) falls in the first `held_out` fraction (so the split
//! does not depend on row order); held-out rows are never trained on. The summary reports `held_out_accuracy`
//! (agreement with the table's labels on held-out rows) and `length_sensitivity` (the share of held-out pairs whose
//! lengths differ by `margin` — ≥ (1 + margin) × tokens — where the model prefers the longer response), the same two
//! on `eval` when given, `train_accuracy`, and the training labels' own `data_longer_preferred_share`.
//!
//! Outputs: `model` (Dir: a `*ForSequenceClassification` checkpoint with its tokenizer) and `metrics` (Parquet:
//! step, loss, lr, grad_norm, accuracy, margin per optimizer step).
use crate::port::*;
use serde::Deserialize;
use serde_json::{Map, Value};

pub struct TrainRm;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Optimizer steps; default: ⌈epochs × training rows / batch_size⌉.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub steps: Option<usize>,
    /// Passes over the training rows when `steps` is not set (> 0, may be fractional).
    #[serde(default = "d_epochs")]
    pub epochs: f64,
    /// Pairs per optimizer step (at most the number of training rows).
    #[serde(default = "d_bs")]
    #[schemars(range(min = 1))]
    pub batch_size: usize,
    /// Peak AdamW learning rate, decayed linearly to 0 after warm-up.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// Steps of linear learning-rate warm-up (at most half of the steps).
    #[serde(default = "d_warmup")]
    pub warmup_steps: usize,
    /// AdamW decoupled weight decay (weight matrices and embeddings only).
    #[serde(default)]
    pub weight_decay: f64,
    /// Seed of the held-out split, the batch shuffles and libtorch (the score head's initialisation).
    #[serde(default)]
    pub seed: u64,
    /// Fraction of rows held out of training (by a hash of seed and pair_id), in [0, 1).
    #[serde(default = "d_held_out")]
    pub held_out: f64,
    /// "Longer" (for length_sensitivity) = at least (1 + margin) × the other's tokens and strictly more.
    #[serde(default = "d_margin")]
    pub margin: f64,
    /// Column of `data` with the preference (0: response_a, 1: response_b); `eval` always uses `label`.
    #[serde(default = "d_label")]
    pub label_column: String,
    /// Truncation of prompt + response in tokens; default: the positions the model can place.
    #[serde(default)]
    #[schemars(range(min = 2))]
    pub max_len: Option<usize>,
}
fn d_epochs() -> f64 {
    2.0
}
fn d_bs() -> usize {
    32
}
fn d_lr() -> f64 {
    1e-3
}
fn d_warmup() -> usize {
    5
}
fn d_held_out() -> f64 {
    0.1
}
fn d_margin() -> f64 {
    0.1
}
fn d_label() -> String {
    "label".into()
}

pub fn parse(params: &Map<String, Value>) -> StageResult<Params> {
    let p: Params = parse_params(params)?;
    if p.steps == Some(0) {
        return Err(StageError::invalid("steps", "must be at least 1"));
    }
    if !(p.epochs > 0.0 && p.epochs.is_finite()) {
        return Err(StageError::invalid("epochs", format!("must be positive, got {}", p.epochs)));
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
    if !(0.0..1.0).contains(&p.held_out) {
        return Err(StageError::invalid("held_out", format!("must be in [0, 1), got {}", p.held_out)));
    }
    if !(p.margin >= 0.0 && p.margin.is_finite()) {
        return Err(StageError::invalid("margin", format!("must be a finite number ≥ 0, got {}", p.margin)));
    }
    Ok(p)
}

impl Stage for TrainRm {
    fn kind(&self) -> &'static str {
        "train_rm"
    }
    fn doc(&self) -> &'static str {
        "a Bradley–Terry reward model on a labelled pairs table; summary: held-out accuracy and length sensitivity"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        &[
            InputSpec { name: "data", required: true, many: false, doc: "labelled pairs table" },
            InputSpec {
                name: "base",
                required: true,
                many: false,
                doc: "causal-LM or reward-model checkpoint with tokenizer",
            },
            InputSpec { name: "eval", required: false, many: false, doc: "a labelled table to score after training" },
        ]
    }
    fn outputs(&self) -> &'static [OutputSpec] {
        &[
            OutputSpec { name: "model", kind: ArtifactKind::Dir, doc: "reward-model checkpoint with tokenizer" },
            OutputSpec {
                name: "metrics",
                kind: ArtifactKind::File,
                doc: "step, loss, lr, grad_norm, accuracy, margin (Parquet)",
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
