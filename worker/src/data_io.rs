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
        // read as import reads it (rmdistill_stages::tokenizer_file): checked, and deterministic
        let file = dir.join("tokenizer.json");
        let inner = rmdistill_stages::tokenizer_file::read(&file)
            .map_err(|e| StageError::invalid(slot, format!("loading {}: {e}", file.display())))?;
        let tok = Tokenizer::with_config(inner, Some(dir)).map_err(|e| StageError::invalid(slot, format!("{e:#}")))?;
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

/// Scores both responses of every pair `(prompts[i], a[i], b[i])` with `score` (one value per row of a batch), in
/// batches of `batch` rows that hold a pair's two rows together: rows sharing a prompt are packed
/// (`prompt ++ a ++ b`, see `rmdistill_ml::logprobs`), so the prompt is computed once for both responses instead of
/// once per response. Returns the values of the `a` rows and of the `b` rows, in pair order.
pub fn score_pairs(
    prompts: &[Vec<i64>],
    a: &[Vec<i64>],
    b: &[Vec<i64>],
    batch: usize,
    mut score: impl FnMut(&[&[i64]], &[&[i64]]) -> StageResult<Vec<f64>>,
) -> StageResult<(Vec<f64>, Vec<f64>)> {
    let n = prompts.len();
    let (mut out_a, mut out_b) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for r in chunks(n, (batch / 2).max(1)) {
        let k = r.len();
        let ps: Vec<&[i64]> = prompts[r.clone()].iter().chain(&prompts[r.clone()]).map(|x| x.as_slice()).collect();
        let rs: Vec<&[i64]> = a[r.clone()].iter().chain(&b[r.clone()]).map(|x| x.as_slice()).collect();
        let v = score(&ps, &rs)?;
        if v.len() != 2 * k {
            return Err(StageError::failed(format!("scored {} rows of a batch of {}", v.len(), 2 * k)));
        }
        out_a.extend_from_slice(&v[..k]);
        out_b.extend_from_slice(&v[k..]);
    }
    Ok((out_a, out_b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_pairs_keeps_a_pairs_rows_together_and_returns_them_in_order() {
        // row value: prompt id × 100 + response id, so a misplaced row shows
        let n = 5;
        let prompts: Vec<Vec<i64>> = (0..n).map(|i| vec![i]).collect();
        let a: Vec<Vec<i64>> = (0..n).map(|i| vec![10 + i]).collect();
        let b: Vec<Vec<i64>> = (0..n).map(|i| vec![50 + i]).collect();
        for batch in [1, 2, 3, 4, 7, 10, 64] {
            let mut sizes = vec![];
            let (va, vb) = score_pairs(&prompts, &a, &b, batch, |ps, rs| {
                sizes.push(ps.len());
                let k = ps.len() / 2;
                // each batch holds whole pairs: row j and row j + k share their prompt
                assert!((0..k).all(|j| ps[j] == ps[j + k]), "batch {batch}");
                Ok(ps.iter().zip(rs).map(|(p, r)| (p[0] * 100 + r[0]) as f64).collect())
            })
            .unwrap();
            assert_eq!(va, (0..n).map(|i| (i * 100 + 10 + i) as f64).collect::<Vec<_>>(), "batch {batch}");
            assert_eq!(vb, (0..n).map(|i| (i * 100 + 50 + i) as f64).collect::<Vec<_>>(), "batch {batch}");
            assert!(sizes.iter().all(|&s| s <= batch.max(2)), "batch {batch}: {sizes:?}");
        }
        let e = score_pairs(&prompts, &a, &b, 4, |ps, _| Ok(vec![0.0; ps.len() - 1])).unwrap_err();
        assert!(e.to_string().contains("scored 3 rows of a batch of 4"), "{e}");
    }
}
