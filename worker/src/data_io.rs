//! What the model stages (`sft`, `sample_pairs`, `label`, `train_rm`, `precompute`, `policy`, `evaluate`) share about
//! data: the pure helpers of `rmdistill_stages::data_io` (re-exported here), the device, deterministic libtorch
//! settings, tensor values, and how a prompt and a response become token ids.
//!
//! **Encoding convention** (identical to the policy side's `lm_io`; every stage that scores `log π(y|x)` must use
//! it, or log-probs computed in different stages do not agree): prompt ids = `[BOS] ++ encode(prompt)`; response ids
//! = `encode(response) ++ [EOS]`, so `log π(y|x)` includes the probability of stopping. BOS is the tokenizer's BOS
//! (its EOS when it has none, as GPT-2 does). Sampled responses are decoded without their EOS, so re-encoding a
//! finished sample gives back the sampled ids. A reward model reads `prompt ++ response` (with the EOS) at its last
//! token.

use rmdistill_ml::tch;
use rmdistill_ml::{PairBatch, Tokenizer};
pub use rmdistill_stages::data_io::*;
use rmdistill_stages::port::{Ctx, Device, StageError, StageResult};
use std::path::Path;

/// The tch device a stage should use.
pub fn tch_device(ctx: &dyn Ctx) -> tch::Device {
    match ctx.device() {
        Device::Cpu => tch::Device::Cpu,
        Device::Cuda(i) => tch::Device::Cuda(i),
    }
}

/// Deterministic libtorch settings for a stage: its thread budget and a seed.
pub fn torch_setup(ctx: &dyn Ctx, seed: u64) {
    rmdistill_ml::train::deterministic_cpu(seed, ctx.threads().max(1) as i32);
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
    pub fn new(tok: Tokenizer, field: &str) -> StageResult<Codec> {
        let eos = tok.eos_id.ok_or_else(|| StageError::invalid(field, "tokenizer has no EOS token"))?;
        let bos = tok.bos_id.unwrap_or(eos);
        let pad = tok.pad_id.unwrap_or(eos);
        Ok(Codec { tok, bos, eos, pad, max_len: None })
    }
    /// The tokenizer of a directory (`tokenizer.json`), or an error naming the input slot. When the directory is a
    /// checkpoint, sequences are truncated to the positions its model can place (`n_positions` /
    /// `max_position_embeddings`).
    pub fn load(dir: &Path, slot: &str) -> StageResult<Codec> {
        if !dir.join("tokenizer.json").exists() {
            return Err(StageError::invalid(slot, format!("{}: no tokenizer.json in this directory", dir.display())));
        }
        let tok = Tokenizer::load(dir).map_err(|e| StageError::invalid(slot, format!("{e:#}")))?;
        let mut codec = Codec::new(tok, slot)?;
        codec.max_len = std::fs::read(dir.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|c| c.get("n_positions").or_else(|| c.get("max_position_embeddings")).and_then(|v| v.as_u64()))
            .map(|n| n as usize);
        Ok(codec)
    }
    /// Truncates sequences to `max_len` tokens, never beyond what the model can place.
    pub fn with_max_len(mut self, max_len: usize) -> Codec {
        self.max_len = Some(self.max_len.map_or(max_len, |m| m.min(max_len)));
        self
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
    /// Tokens of a text without BOS/EOS (the `tokens_a/b` length of a response).
    pub fn count(&self, text: &str) -> StageResult<u32> {
        Ok(self.tok.encode(text)?.len() as u32)
    }
    /// A sampled response (without its EOS) as text.
    pub fn decode_sample(&self, ids: &[i64]) -> StageResult<String> {
        let ids: Vec<i64> = ids.iter().copied().filter(|&i| i != self.eos).collect();
        Ok(self.tok.decode(&ids, true)?)
    }
    pub fn batch(&self, prompts: &[&[i64]], responses: &[&[i64]], device: tch::Device) -> StageResult<PairBatch> {
        Ok(PairBatch::new(prompts, responses, self.pad, self.max_len, device)?)
    }
    /// The model's vocabulary must cover the tokenizer's ids.
    pub fn check_vocab(&self, model_vocab: i64, slot: &str) -> StageResult<()> {
        let v = self.tok.vocab_size() as i64;
        if v > model_vocab {
            return Err(StageError::invalid(
                slot,
                format!(
                    "tokenizer has {v} tokens but the model's vocabulary has {model_vocab}: model/tokenizer mismatch"
                ),
            ));
        }
        Ok(())
    }
}

/// f64 values of a tensor.
pub fn to_f64s(t: &tch::Tensor) -> StageResult<Vec<f64>> {
    Vec::<f64>::try_from(t.to_kind(tch::Kind::Double).to_device(tch::Device::Cpu))
        .map_err(|e| StageError::failed(e.to_string()))
}
