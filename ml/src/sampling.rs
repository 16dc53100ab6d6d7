//! Batched sampling from a causal LM: temperature, nucleus (top-p), `max_new_tokens`, per-sequence stop at EOS,
//! with a KV cache. Seeded per row (row `i` draws from its own ChaCha stream), so a row's sample does not depend on
//! which other rows share its batch or when they finish, nor on the device. [`generate_batched`] samples from K
//! models at once (one forward pass per token for all K), each model giving what [`generate`] gives for it.

use crate::batched::BatchedCausalLm;
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

/// The next token of each row of `logits` `[rows, vocab]`; `u` holds one uniform draw per row (unused when greedy).
fn pick(logits: &Tensor, cfg: &SampleConfig, u: &[f32]) -> Tensor {
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
    let target = Tensor::from_slice(u).to_device(logits.device()).unsqueeze(1) * total;
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
    let prompts = truncate_prompts(prompts, model.config.max_positions(), cfg)?;
    let dev = model.device();
    let mut rngs = row_rngs(n, cfg);
    let (mut seq, mut att) = left_padded(&prompts, pad_id, dev);
    let mut out = Samples { tokens: vec![vec![]; n], logprobs: vec![vec![]; n], finished: vec![false; n] };
    let mut active: Vec<usize> = (0..n).collect();
    let mut cache = cfg.use_cache.then(|| model.new_cache());
    tch::no_grad(|| -> Result<()> {
        let mut logits = model.forward(&seq, Some(&att), cache.as_mut());
        for _ in 0..cfg.max_new_tokens {
            let last = logits.select(1, logits.size()[1] - 1).to_kind(Kind::Float);
            let u: Vec<f32> =
                if cfg.temperature > 0.0 { active.iter().map(|&r| rngs[r].random::<f32>()).collect() } else { vec![] };
            let next = pick(&last, cfg, &u);
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

/// Left-truncates prompts longer than the model can hold with the new tokens (the same left truncation as
/// `PairBatch`, so a sample's log-prob is later computed in the context it was sampled in).
fn truncate_prompts<'a>(
    prompts: &[&'a [i64]],
    max_positions: Option<i64>,
    cfg: &SampleConfig,
) -> Result<Vec<&'a [i64]>> {
    match max_positions {
        Some(maxp) if maxp as usize <= cfg.max_new_tokens => {
            bail!("max_new_tokens ({}) leaves no room for a prompt in the model's {maxp} positions", cfg.max_new_tokens)
        }
        _ => match prompt_room(max_positions, cfg.max_new_tokens) {
            Some(room) => Ok(prompts.iter().map(|p| if p.len() > room { &p[p.len() - room..] } else { *p }).collect()),
            None => Ok(prompts.to_vec()),
        },
    }
}

/// How many prompt tokens sampling keeps when a model of `max_positions` (None: unbounded) is to draw
/// `max_new_tokens` more; a longer prompt keeps its last ones. None: the whole prompt.
pub fn prompt_room(max_positions: Option<i64>, max_new_tokens: usize) -> Option<usize> {
    max_positions.map(|m| (m as usize).saturating_sub(max_new_tokens))
}

/// Row `i`'s random stream.
fn row_rngs(n: usize, cfg: &SampleConfig) -> Vec<ChaCha12Rng> {
    (0..n).map(|i| ChaCha12Rng::seed_from_u64(cfg.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))).collect()
}

/// Left-padded ids and attention mask `[n, longest]`.
fn left_padded(prompts: &[&[i64]], pad_id: i64, dev: tch::Device) -> (Tensor, Tensor) {
    let n = prompts.len();
    let plen = prompts.iter().map(|p| p.len()).max().unwrap_or(0);
    let mut ids = vec![pad_id; n * plen];
    let mut mask = vec![0i64; n * plen];
    for (i, p) in prompts.iter().enumerate() {
        let off = i * plen + plen - p.len();
        ids[off..off + p.len()].copy_from_slice(p);
        mask[off..off + p.len()].fill(1);
    }
    let shape = [n as i64, plen as i64];
    (Tensor::from_slice(&ids).view(shape).to_device(dev), Tensor::from_slice(&mask).view(shape).to_device(dev))
}

/// Samples continuations of the same `prompts` from each of the K models of `model`: `result[k]` is what
/// [`generate`] returns for model k with the same arguments (the same per-row random streams), computed with one
/// forward pass per new token for all K models.
///
/// Rows that finish leave the batch as in [`generate`]; since the K models share one batch shape, a model with fewer
/// unfinished rows than another fills its remaining slots with copies of one of its rows, whose outputs are ignored
/// and which draw no random numbers.
pub fn generate_batched(
    model: &BatchedCausalLm,
    prompts: &[&[i64]],
    pad_id: i64,
    cfg: &SampleConfig,
) -> Result<Vec<Samples>> {
    let (k, n) = (model.num_models(), prompts.len());
    let empty = Samples { tokens: vec![vec![]; n], logprobs: vec![vec![]; n], finished: vec![false; n] };
    let mut out = vec![empty; k];
    if n == 0 {
        return Ok(out);
    }
    if prompts.iter().any(|p| p.is_empty()) {
        bail!("empty prompt: prepend a BOS token");
    }
    let prompts = truncate_prompts(prompts, model.config().max_positions(), cfg)?;
    let dev = model.device();
    let mut rngs: Vec<Vec<ChaCha12Rng>> = (0..k).map(|_| row_rngs(n, cfg)).collect();
    let (ids, mask) = left_padded(&prompts, pad_id, dev);
    let (kk, plen) = (k as i64, ids.size()[1]);
    let mut seq = ids.unsqueeze(0).expand([kk, n as i64, plen], false).contiguous();
    let mut att = mask.unsqueeze(0).expand([kk, n as i64, plen], false).contiguous();
    // slots[m][j]: the row in model m's slot j (None: a filler)
    let mut slots: Vec<Vec<Option<usize>>> = vec![(0..n).map(Some).collect(); k];
    let mut cache = cfg.use_cache.then(|| model.new_cache());
    let last_logits = |h: &Tensor| {
        let t = h.size()[2];
        model.logits(&h.select(2, t - 1)).to_kind(Kind::Float) // [K, slots, vocab]
    };
    tch::no_grad(|| -> Result<()> {
        let mut logits = last_logits(&model.forward_hidden(&seq, Some(&att), cache.as_mut()));
        for _ in 0..cfg.max_new_tokens {
            let width = slots[0].len();
            let flat = logits.view([kk * width as i64, -1]);
            let mut u = vec![];
            if cfg.temperature > 0.0 {
                for (m, s) in slots.iter().enumerate() {
                    u.extend(s.iter().map(|r| r.map_or(0.5, |r| rngs[m][r].random::<f32>())));
                }
            }
            let next = pick(&flat, cfg, &u);
            let lp = flat.log_softmax(-1, Kind::Float).gather(-1, &next.unsqueeze(-1), false).squeeze_dim(-1);
            let next_v = Vec::<i64>::try_from(&next.to_device(tch::Device::Cpu))?;
            let lp_v = Vec::<f64>::try_from(&lp.to_device(tch::Device::Cpu).to_kind(Kind::Double))?;
            // per model, the slots to keep
            let mut keep: Vec<Vec<usize>> = vec![vec![]; k];
            for (m, s) in slots.iter().enumerate() {
                for (j, row) in s.iter().enumerate() {
                    let Some(row) = *row else { continue };
                    let (tok, l) = (next_v[m * width + j], lp_v[m * width + j]);
                    out[m].tokens[row].push(tok);
                    out[m].logprobs[row].push(l);
                    if cfg.eos_ids.contains(&tok) {
                        out[m].finished[row] = true;
                    } else {
                        keep[m].push(j);
                    }
                }
            }
            seq = Tensor::cat(&[&seq, &next.view([kk, width as i64, 1])], 2);
            att = Tensor::cat(&[&att, &att.ones_like().narrow(2, 0, 1)], 2);
            let new_width = keep.iter().map(|v| v.len()).max().unwrap_or(0);
            if new_width == 0 {
                break;
            }
            let finished_some = keep.iter().zip(&slots).any(|(kp, s)| kp.len() != s.iter().flatten().count());
            if finished_some {
                let mut index = Vec::with_capacity(k * new_width);
                let mut new_slots = Vec::with_capacity(k);
                for (m, kp) in keep.iter().enumerate() {
                    let base = (m * width) as i64;
                    let filler = kp.first().copied().unwrap_or(0) as i64;
                    index.extend((0..new_width).map(|j| base + kp.get(j).map_or(filler, |&s| s as i64)));
                    new_slots.push((0..new_width).map(|j| kp.get(j).and_then(|&s| slots[m][s])).collect());
                }
                let idx = Tensor::from_slice(&index).to_device(dev);
                let s = seq.size()[2];
                seq = seq.view([-1, s]).index_select(0, &idx).view([kk, new_width as i64, s]);
                att = att.view([-1, s]).index_select(0, &idx).view([kk, new_width as i64, s]);
                if let Some(c) = cache.as_mut() {
                    c.select_rows(&idx);
                }
                slots = new_slots;
            }
            let h = match cache.as_mut() {
                Some(c) => model.forward_hidden(&seq.narrow(2, seq.size()[2] - 1, 1), Some(&att), Some(c)),
                None => model.forward_hidden(&seq, Some(&att), None),
            };
            logits = last_logits(&h);
        }
        Ok(())
    })?;
    Ok(out)
}
