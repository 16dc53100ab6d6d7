//! What the policy-side stages share about language models: log-probs under a frozen model, table columns, and (from
//! [`crate::data_io`], which every model stage shares) the device and how a prompt and a response become token ids.
//!
//! **Encoding convention** (implemented once, by [`Codec`]) (every stage that scores `log π(y|x)` must use it, or log-probs computed in different
//! stages do not agree): prompt ids = `[BOS] ++ encode(prompt)`; response ids = `encode(response) ++ [EOS]`, so
//! `log π(y|x)` includes the probability of stopping. BOS is the tokenizer's BOS (its EOS when it has none, as
//! GPT-2 does). Sampled responses are decoded without their EOS (special tokens skipped), so re-encoding a sample
//! gives back the sampled ids.

use rmdistill_ml::tch;
use rmdistill_ml::{Reduction, sequence_logprobs};
use rmdistill_stages::port::StageResult;

pub use crate::data_io::{Codec, f64s, one_input, opt_input, tch_device};
use std::path::Path;
use tch::Tensor;

/// File the `policy` stage writes into its checkpoint (method, β, τ, γ, ρ, seed); `evaluate` copies it into its
/// summary.
pub const POLICY_INFO_FILE: &str = "rmdistill_policy.json";

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
        let lp: Tensor =
            tch::no_grad(|| rmdistill_ml::with_autocast(dev, || sequence_logprobs(model.net(), &b, reduction)));
        out.extend(
            Vec::<f64>::try_from(lp.to_kind(tch::Kind::Double).to_device(tch::Device::Cpu))
                .map_err(anyhow::Error::from)?,
        );
    }
    Ok(out)
}

/// A Utf8 column as strings (nulls are an error naming the column and row).
pub fn strings(batch: &arrow::array::RecordBatch, col: &str, file: &Path) -> StageResult<Vec<String>> {
    crate::data_io::strings(batch, col, file, false)
}

/// Builds a Parquet-ready batch from named f64 columns (plus leading string/u32 columns made by the caller).
pub fn f64_column(v: Vec<f64>) -> arrow::array::ArrayRef {
    std::sync::Arc::new(arrow::array::Float64Array::from(v))
}

/// The ML core's reduction for a stage parameter's.
pub fn reduction(r: rmdistill_stages::method::Reduction) -> Reduction {
    match r {
        rmdistill_stages::method::Reduction::Sum => Reduction::Sum,
        rmdistill_stages::method::Reduction::Mean => Reduction::Mean,
    }
}

/// The ML core's learning-rate schedule for a stage parameter's.
pub fn lr_schedule(s: rmdistill_stages::method::LrSchedule) -> rmdistill_ml::Schedule {
    match s {
        rmdistill_stages::method::LrSchedule::Constant => rmdistill_ml::Schedule::Constant,
        rmdistill_stages::method::LrSchedule::Linear => rmdistill_ml::Schedule::Linear,
        rmdistill_stages::method::LrSchedule::Cosine => rmdistill_ml::Schedule::Cosine,
    }
}
