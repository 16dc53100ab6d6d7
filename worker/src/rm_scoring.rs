//! Reward-model scoring, shared by `label` (a reward-model oracle) and `precompute` (the ensemble members' rewards):
//! loading a reward-model checkpoint with its tokenizer, and batched rewards of encoded pairs — finite ones only
//! ([`batch_rewards`], which `evaluate`'s reward-model oracle calls too).

use crate::data_io::{self, Codec};
use rmdistill_ml::RewardModel;
use rmdistill_ml::tch;
use rmdistill_stages::port::{StageError, StageResult};
use serde_json::Value;
use std::path::Path;

/// Rewards of both responses of every pair, a pair's two rows in one batch (its prompt computed once:
/// [`data_io::score_pairs`]); `batch` rows per batch. `scored(k)` is told after each batch that k more pairs are
/// done, so that a long labelling run shows its progress.
pub fn rm_pair_scores(
    model: &RewardModel,
    codec: &Codec,
    prompts: &[Vec<i64>],
    a: &[Vec<i64>],
    b: &[Vec<i64>],
    batch: usize,
    mut scored: impl FnMut(usize),
) -> StageResult<(Vec<f64>, Vec<f64>)> {
    data_io::score_pairs(prompts, a, b, batch, |ps, rs| {
        let v = batch_rewards(model, codec, ps, rs)?;
        scored(ps.len() / 2);
        Ok(v)
    })
}

/// The rewards of one batch of (prompt, response) rows, finite ones only.
pub fn batch_rewards(model: &RewardModel, codec: &Codec, ps: &[&[i64]], rs: &[&[i64]]) -> StageResult<Vec<f64>> {
    let b = codec.batch(ps, rs, model.device())?;
    let s = tch::no_grad(|| rmdistill_ml::with_autocast(model.device(), || model.rewards(&b)));
    finite_rewards(data_io::to_f64s(&s)?)
}

/// A reward that is not finite would label a pair by a comparison that is always false, or make a distillation
/// target of NaN: refused rather than stored.
fn finite_rewards(v: Vec<f64>) -> StageResult<Vec<f64>> {
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(v),
        Some(i) => Err(StageError::failed(format!(
            "the reward model produced a non-finite reward ({}) for row {i} of a batch: its weights or its inputs \
             overflow; nothing was stored",
            v[i]
        ))),
    }
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_non_finite_reward_is_refused() {
        assert_eq!(super::finite_rewards(vec![0.5, -2.0]).unwrap(), vec![0.5, -2.0]);
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let e = super::finite_rewards(vec![0.5, bad]).unwrap_err().to_string();
            assert!(e.contains("non-finite reward") && e.contains("row 1"), "{e}");
        }
    }
}
