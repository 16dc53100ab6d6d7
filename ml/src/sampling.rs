//! Batched sampling from a causal LM: temperature, nucleus (top-p), `max_new_tokens`, per-sequence stop at EOS,
//! with a KV cache. Seeded per row (row `i` draws from its own ChaCha stream), so a row's sample does not depend on
//! which other rows share its batch or when they finish, nor on the device.

use crate::checkpoint::LanguageModel;
use anyhow::{Result, bail};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha12Rng;
use tch::{Kind, Tensor};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SampleConfig {
    pub max_new_tokens: usize,
    /// 0 means greedy (argmax).
    pub temperature: f64,
    /// Nucleus sampling: keep the smallest set of most likely tokens whose probability reaches `top_p` (1 = off).
    pub top_p: f64,
    pub seed: u64,
    /// Generation stops for a row when it emits any of these (the token is kept in the output).
    pub eos_ids: Vec<i64>,
    /// Off only for testing: recomputes the whole prefix at every step.
    pub use_cache: bool,
}

impl Default for SampleConfig {
    fn default() -> Self {
        SampleConfig { max_new_tokens: 64, temperature: 1.0, top_p: 1.0, seed: 0, eos_ids: vec![], use_cache: true }
    }
}

/// Generated continuations (prompt excluded), one per prompt, in prompt order.
#[derive(Debug, Clone, PartialEq)]
pub struct Samples {
    pub tokens: Vec<Vec<i64>>,
    /// `log π(token)` of each generated token under the model itself (temperature 1, no top-p): what the KL
    /// estimate and precomputed reference log-probs need.
    pub logprobs: Vec<Vec<f64>>,
    /// Whether the row stopped at an EOS token (else it hit `max_new_tokens`).
    pub finished: Vec<bool>,
}

fn pick(logits: &Tensor, cfg: &SampleConfig, rngs: &mut [ChaCha12Rng], rows: &[usize]) -> Tensor {
    if cfg.temperature <= 0.0 {
        return logits.argmax(-1, false);
    }
    let probs = (logits / cfg.temperature).softmax(-1, Kind::Float);
    let (sorted, idx) = probs.sort(-1, true);
    let kept = if cfg.top_p >= 1.0 {
        sorted.cumsum(-1, Kind::Float)
    } else {
        let cdf = sorted.cumsum(-1, Kind::Float);
        let keep = (&cdf - &sorted).lt(cfg.top_p); // tokens before which less than top_p mass was accumulated
        (sorted * keep.to_kind(Kind::Float)).cumsum(-1, Kind::Float)
    };
    let v = kept.size()[1];
    let total = kept.narrow(1, v - 1, 1);
    let u: Vec<f32> = rows.iter().map(|&r| rngs[r].random::<f32>()).collect();
    let target = Tensor::from_slice(&u).to_device(logits.device()).unsqueeze(1) * total;
    let pos = kept.lt_tensor(&target).sum_dim_intlist(-1, true, Kind::Int64).clamp_max(v - 1);
    idx.gather(-1, &pos, false).squeeze_dim(-1)
}

/// Samples continuations of `prompts` (token ids, each non-empty). Prompts are left-padded with `pad_id`.
pub fn generate(model: &LanguageModel, prompts: &[&[i64]], pad_id: i64, cfg: &SampleConfig) -> Result<Samples> {
    let n = prompts.len();
    if n == 0 {
        return Ok(Samples { tokens: vec![], logprobs: vec![], finished: vec![] });
    }
    if prompts.iter().any(|p| p.is_empty()) {
        bail!("empty prompt: prepend a BOS token");
    }
    // A prompt longer than the model can hold with the new tokens keeps its end (the same left truncation as
    // `PairBatch`, so a sample's log-prob is later computed in the context it was sampled in).
    let truncated: Vec<&[i64]>;
    let prompts: &[&[i64]] = match model.config.max_positions() {
        Some(maxp) if maxp as usize <= cfg.max_new_tokens => {
            bail!("max_new_tokens ({}) leaves no room for a prompt in the model's {maxp} positions", cfg.max_new_tokens)
        }
        Some(maxp) => {
            let room = maxp as usize - cfg.max_new_tokens;
            truncated = prompts.iter().map(|p| if p.len() > room { &p[p.len() - room..] } else { *p }).collect();
            &truncated
        }
        None => prompts,
    };
    let plen = prompts.iter().map(|p| p.len()).max().unwrap();
    let dev = model.device();
    let mut rngs: Vec<ChaCha12Rng> =
        (0..n).map(|i| ChaCha12Rng::seed_from_u64(cfg.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))).collect();
    let mut ids = vec![pad_id; n * plen];
    let mut mask = vec![0i64; n * plen];
    for (i, p) in prompts.iter().enumerate() {
        let off = i * plen + plen - p.len();
        ids[off..off + p.len()].copy_from_slice(p);
        mask[off..off + p.len()].fill(1);
    }
    let mut seq = Tensor::from_slice(&ids).view([n as i64, plen as i64]).to_device(dev);
    let mut att = Tensor::from_slice(&mask).view([n as i64, plen as i64]).to_device(dev);
    let mut out = Samples { tokens: vec![vec![]; n], logprobs: vec![vec![]; n], finished: vec![false; n] };
    let mut active: Vec<usize> = (0..n).collect();
    let mut cache = cfg.use_cache.then(|| model.new_cache());
    tch::no_grad(|| -> Result<()> {
        let mut logits = model.forward(&seq, Some(&att), cache.as_mut());
        for _ in 0..cfg.max_new_tokens {
            let last = logits.select(1, logits.size()[1] - 1).to_kind(Kind::Float);
            let next = pick(&last, cfg, &mut rngs, &active);
            let lp = last.log_softmax(-1, Kind::Float).gather(-1, &next.unsqueeze(-1), false).squeeze_dim(-1);
            let next_v = Vec::<i64>::try_from(&next.to_device(tch::Device::Cpu))?;
            let lp_v = Vec::<f64>::try_from(&lp.to_device(tch::Device::Cpu).to_kind(Kind::Double))?;
            let mut keep = vec![];
            for (j, &row) in active.iter().enumerate() {
                out.tokens[row].push(next_v[j]);
                out.logprobs[row].push(lp_v[j]);
                if cfg.eos_ids.contains(&next_v[j]) {
                    out.finished[row] = true;
                } else {
                    keep.push(j as i64);
                }
            }
            // Finished rows leave the batch (and the cache): no compute is spent on them.
            let next = next.unsqueeze(1);
            seq = Tensor::cat(&[&seq, &next], 1);
            att = Tensor::cat(&[&att, &att.ones_like().narrow(1, 0, 1)], 1);
            if keep.is_empty() {
                break;
            }
            if keep.len() < active.len() {
                let k = Tensor::from_slice(&keep).to_device(dev);
                seq = seq.index_select(0, &k);
                att = att.index_select(0, &k);
                if let Some(c) = cache.as_mut() {
                    c.select_rows(&k);
                }
                active = keep.iter().map(|&j| active[j as usize]).collect();
            }
            logits = match cache.as_mut() {
                Some(c) => model.forward(&seq.narrow(1, seq.size()[1] - 1, 1), Some(&att), Some(c)),
                None => model.forward(&seq, Some(&att), None),
            };
        }
        Ok(())
    })?;
    Ok(out)
}
