//! What the policy-side stages share about language models: the device, and how a prompt and a response become
//! token ids.
//!
//! **Encoding convention** (every stage that scores `log π(y|x)` must use it, or log-probs computed in different
//! stages do not agree): prompt ids = `[BOS] ++ encode(prompt)`; response ids = `encode(response) ++ [EOS]`, so
//! `log π(y|x)` includes the probability of stopping. BOS is the tokenizer's BOS (its EOS when it has none, as
//! GPT-2 does). Sampled responses are decoded without their EOS (special tokens skipped), so re-encoding a sample
//! gives back the sampled ids.

use rmdistill_ml::tch;
use crate::port::{Ctx, Device, StageError, StageResult};
use rmdistill_ml::{PairBatch, Reduction, Tokenizer, sequence_logprobs};
use std::path::Path;
use tch::Tensor;

/// File the `policy` stage writes into its checkpoint (method, β, τ, γ, ρ, seed); `evaluate` copies it into its
/// summary.
pub const POLICY_INFO_FILE: &str = "rmdistill_policy.json";

/// The tch device a stage should use.
pub fn tch_device(ctx: &dyn Ctx) -> tch::Device {
    match ctx.device() {
        Device::Cpu => tch::Device::Cpu,
        Device::Cuda(i) => tch::Device::Cuda(i),
    }
}

/// A tokenizer with the encoding convention of this module.
#[derive(Clone, Debug)]
pub struct Codec {
    pub tok: Tokenizer,
    pub bos: i64,
    pub eos: i64,
    pub pad: i64,
    /// Truncation of `prompt ++ response` (see [`PairBatch::new`]).
    pub max_len: Option<usize>,
}

impl Codec {
    /// The tokenizer of a checkpoint directory (`tokenizer.json`), or an error naming the input slot.
    pub fn load(dir: &Path, slot: &str, max_len: Option<usize>) -> StageResult<Codec> {
        if !dir.join("tokenizer.json").exists() {
            return Err(StageError::invalid(slot, format!("{}: checkpoint has no tokenizer.json", dir.display())));
        }
        let tok = Tokenizer::load(dir).map_err(|e| StageError::invalid(slot, format!("{e:#}")))?;
        let eos = tok
            .eos_id
            .ok_or_else(|| StageError::invalid(slot, format!("{}: tokenizer has no EOS token", dir.display())))?;
        let bos = tok.bos_id.unwrap_or(eos);
        let pad = tok.pad_id.unwrap_or(eos);
        // Never longer than the model can place: a tiny model's n_positions may be below the stage's default.
        let positions = std::fs::read(dir.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|c| c.get("n_positions").or_else(|| c.get("max_position_embeddings")).and_then(|v| v.as_u64()))
            .map(|n| n as usize);
        let max_len = match (max_len, positions) {
            (Some(m), Some(n)) => Some(m.min(n)),
            (m, n) => m.or(n),
        };
        Ok(Codec { tok, bos, eos, pad, max_len })
    }
    pub fn prompt(&self, text: &str) -> StageResult<Vec<i64>> {
        let mut ids = vec![self.bos];
        ids.extend(self.tok.encode(text)?);
        Ok(ids)
    }
    pub fn response(&self, text: &str) -> StageResult<Vec<i64>> {
        let mut ids = self.tok.encode(text)?;
        ids.push(self.eos);
        Ok(ids)
    }
    /// A sampled response (without its EOS) as text.
    pub fn decode_sample(&self, ids: &[i64]) -> StageResult<String> {
        let ids: Vec<i64> = ids.iter().copied().filter(|&i| i != self.eos).collect();
        Ok(self.tok.decode(&ids, true)?)
    }
    /// A right-padded batch of `prompt ++ response` rows.
    pub fn batch(&self, prompts: &[&[i64]], responses: &[&[i64]], device: tch::Device) -> StageResult<PairBatch> {
        Ok(PairBatch::new(prompts, responses, self.pad, self.max_len, device)?)
    }
    /// The model's vocabulary must cover the tokenizer's ids.
    pub fn check_vocab(&self, model_vocab: i64, slot: &str) -> StageResult<()> {
        let v = self.tok.vocab_size() as i64;
        if v > model_vocab {
            return Err(StageError::invalid(
                slot,
                format!("tokenizer has {v} tokens but the model's vocabulary has {model_vocab}: model/tokenizer mismatch"),
            ));
        }
        Ok(())
    }
}

/// `log π(y|x)` of many (prompt, response) rows under a frozen model, in batches, as f64.
pub fn logprobs_nograd(
    model: &rmdistill_ml::LanguageModel,
    codec: &Codec,
    prompts: &[&[i64]],
    responses: &[&[i64]],
    reduction: Reduction,
    batch_size: usize,
) -> StageResult<Vec<f64>> {
    let mut out = Vec::with_capacity(prompts.len());
    let dev = model.device();
    for (p, r) in prompts.chunks(batch_size.max(1)).zip(responses.chunks(batch_size.max(1))) {
        let b = codec.batch(p, r, dev)?;
        let lp: Tensor = tch::no_grad(|| rmdistill_ml::with_autocast(dev, || sequence_logprobs(model.net(), &b, reduction)));
        out.extend(Vec::<f64>::try_from(lp.to_kind(tch::Kind::Double).to_device(tch::Device::Cpu)).map_err(anyhow::Error::from)?);
    }
    Ok(out)
}

/// The single artifact bound to a slot, or an error naming the slot.
pub fn one_input<'a>(ctx: &'a dyn Ctx, slot: &str) -> StageResult<&'a crate::port::InputArtifact> {
    match ctx.inputs(slot) {
        [one] => Ok(one),
        [] => Err(StageError::invalid(slot, format!("no input is bound to slot `{slot}`"))),
        many => Err(StageError::invalid(slot, format!("expects one input, got {}", many.len()))),
    }
}

/// The artifact bound to an optional slot.
pub fn opt_input<'a>(ctx: &'a dyn Ctx, slot: &str) -> StageResult<Option<&'a crate::port::InputArtifact>> {
    match ctx.inputs(slot) {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        many => Err(StageError::invalid(slot, format!("expects at most one input, got {}", many.len()))),
    }
}

/// A Utf8 column as strings (nulls are an error naming the column and row).
pub fn strings(batch: &arrow::array::RecordBatch, col: &str, file: &Path) -> StageResult<Vec<String>> {
    use arrow::array::{Array, AsArray};
    let a = batch
        .column_by_name(col)
        .ok_or_else(|| StageError::invalid(col, format!("{}: missing column `{col}`", file.display())))?;
    let cast = arrow::compute::cast(a, &arrow::datatypes::DataType::Utf8)?;
    let s = cast.as_string::<i32>();
    (0..s.len())
        .map(|i| {
            if s.is_null(i) {
                Err(StageError::invalid(col, format!("{}: column `{col}` is null at row {i}", file.display())))
            } else {
                Ok(s.value(i).to_string())
            }
        })
        .collect()
}

/// A numeric column as f64 (nulls are an error naming the column and row).
pub fn f64s(batch: &arrow::array::RecordBatch, col: &str, file: &Path) -> StageResult<Vec<f64>> {
    use arrow::array::{Array, AsArray};
    let a = batch
        .column_by_name(col)
        .ok_or_else(|| StageError::invalid(col, format!("{}: missing column `{col}`", file.display())))?;
    let cast = arrow::compute::cast(a, &arrow::datatypes::DataType::Float64)
        .map_err(|e| StageError::invalid(col, format!("{}: column `{col}` is not numeric: {e}", file.display())))?;
    let v = cast.as_primitive::<arrow::datatypes::Float64Type>();
    (0..v.len())
        .map(|i| {
            if v.is_null(i) {
                Err(StageError::invalid(col, format!("{}: column `{col}` is null at row {i}", file.display())))
            } else {
                Ok(v.value(i))
            }
        })
        .collect()
}

/// Builds a Parquet-ready batch from named f64 columns (plus leading string/u32 columns made by the caller).
pub fn f64_column(v: Vec<f64>) -> arrow::array::ArrayRef {
    std::sync::Arc::new(arrow::array::Float64Array::from(v))
}
