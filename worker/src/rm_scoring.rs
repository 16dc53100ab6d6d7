//! Reward-model scoring, shared by `label` (a reward-model oracle) and `precompute` (the ensemble members' rewards):
//! loading a reward-model checkpoint with its tokenizer, and batched rewards of encoded rows.

use crate::data_io::{self, Codec};
use rmdistill_ml::RewardModel;
use rmdistill_ml::tch;
use rmdistill_stages::port::{StageError, StageResult};
use serde_json::Value;
use std::path::Path;

/// Rewards of (prompt, response) rows under a reward model, batched, as f64.
pub fn rm_scores(
    model: &RewardModel,
    codec: &Codec,
    prompts: &[Vec<i64>],
    responses: &[Vec<i64>],
    batch: usize,
) -> StageResult<Vec<f64>> {
    let mut out = Vec::with_capacity(prompts.len());
    for r in data_io::chunks(prompts.len(), batch) {
        let ps: Vec<&[i64]> = prompts[r.clone()].iter().map(|x| x.as_slice()).collect();
        let rs: Vec<&[i64]> = responses[r.clone()].iter().map(|x| x.as_slice()).collect();
        let b = codec.batch(&ps, &rs, model.device())?;
        let s = tch::no_grad(|| rmdistill_ml::with_autocast(model.device(), || model.rewards(&b)));
        out.extend(data_io::to_f64s(&s)?);
    }
    Ok(out)
}

/// Loads a reward model (not a causal LM: a labelling oracle needs a trained score head) and its tokenizer.
pub fn load_rm(dir: &Path, slot: &str, device: tch::Device) -> StageResult<(RewardModel, Codec)> {
    data_io::check_checkpoint(dir, slot)?;
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("config.json"))?)
        .map_err(|e| StageError::invalid(slot, format!("{}: config.json: {e}", dir.display())))?;
    if rmdistill_ml::ModelConfig::head_from_json(&cfg) != rmdistill_ml::Head::Score {
        return Err(StageError::invalid(
            slot,
            format!(
                "{}: not a reward model (config.json architectures is not *ForSequenceClassification)",
                dir.display()
            ),
        ));
    }
    let codec = Codec::load(dir, slot)?;
    let m = RewardModel::load(dir, device, false).map_err(|e| StageError::invalid(slot, format!("{e:#}")))?;
    codec.check_vocab(m.config.vocab_size(), slot)?;
    Ok((m, codec))
}
