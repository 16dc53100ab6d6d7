//! Batched sequence log-probabilities `log π(y|x)` of responses given prompts: the quantity every loss in
//! METHOD.md is built from. Sequences are right-padded; only response tokens count (prompt and padding are
//! masked); the default reduction is the sum over response tokens, the per-token mean is offered for IPO-style losses.

use crate::model::CausalLm;
use anyhow::{Result, bail};
use tch::{Device, Kind, Tensor};

/// How per-token log-probs of a response are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reduction {
    /// `Σ_t log π(y_t | x, y_<t)`, the paper's sequence log-probability.
    #[default]
    Sum,
    /// The sum divided by the number of response tokens.
    Mean,
}

/// A right-padded batch of `prompt ++ response` sequences.
#[derive(Debug)]
pub struct PairBatch {
    /// `[batch, seq]`, padded with `pad_id`.
    pub input_ids: Tensor,
    /// `[batch, seq]`, 1 on real tokens.
    pub attention_mask: Tensor,
    /// `[batch, seq]`, 1 on response tokens only: these are the ones scored.
    pub response_mask: Tensor,
    /// Prompt and response lengths after truncation.
    pub prompt_lens: Vec<usize>,
    pub response_lens: Vec<usize>,
}

impl PairBatch {
    /// Concatenates each prompt with its response and right-pads to the longest. When `max_len` is set and a
    /// sequence is longer, the prompt loses tokens from its start first (keeping at least one, which the first response
    /// token is conditioned on), then the response loses tokens from its end.
    pub fn new(
        prompts: &[&[i64]],
        responses: &[&[i64]],
        pad_id: i64,
        max_len: Option<usize>,
        device: Device,
    ) -> Result<Self> {
        if prompts.len() != responses.len() || prompts.is_empty() {
            bail!("need as many prompts as responses, and at least one ({} vs {})", prompts.len(), responses.len());
        }
        let mut rows = Vec::with_capacity(prompts.len());
        let (mut plens, mut rlens) = (vec![], vec![]);
        for (p, r) in prompts.iter().zip(responses) {
            if p.is_empty() {
                bail!("empty prompt: the first response token needs a context (prepend a BOS token)");
            }
            if r.is_empty() {
                bail!("empty response");
            }
            let (mut p, mut r) = (*p, *r);
            if let Some(m) = max_len {
                if m < 2 {
                    bail!("max_len must be at least 2");
                }
                if p.len() + r.len() > m {
                    let keep_p = p.len().min(m.saturating_sub(r.len()).max(1));
                    p = &p[p.len() - keep_p..];
                    r = &r[..r.len().min(m - p.len())];
                }
            }
            plens.push(p.len());
            rlens.push(r.len());
            rows.push((p, r));
        }
        let t = rows.iter().map(|(p, r)| p.len() + r.len()).max().unwrap();
        let b = rows.len();
        let mut ids = vec![pad_id; b * t];
        let mut att = vec![0i64; b * t];
        let mut resp = vec![0i64; b * t];
        for (i, (p, r)) in rows.iter().enumerate() {
            for (j, &tok) in p.iter().chain(r.iter()).enumerate() {
                ids[i * t + j] = tok;
                att[i * t + j] = 1;
                resp[i * t + j] = (j >= p.len()) as i64;
            }
        }
        let mk = |v: Vec<i64>| Tensor::from_slice(&v).view([b as i64, t as i64]).to_device(device);
        Ok(PairBatch {
            input_ids: mk(ids),
            attention_mask: mk(att),
            response_mask: mk(resp),
            prompt_lens: plens,
            response_lens: rlens,
        })
    }

    pub fn len(&self) -> usize {
        self.prompt_lens.len()
    }
    pub fn is_empty(&self) -> bool {
        self.prompt_lens.is_empty()
    }
    /// Number of real tokens in the batch (for throughput figures).
    pub fn num_tokens(&self) -> usize {
        self.prompt_lens.iter().zip(&self.response_lens).map(|(p, r)| p + r).sum()
    }
}

/// `log π(ids[t+1] | ids[..=t])` for every position: `[batch, seq-1]`, in fp32.
///
/// Computed as `logit[target] − logsumexp(logits)`, which never materialises a full log-softmax.
pub fn token_logprobs(logits: &Tensor, input_ids: &Tensor) -> Tensor {
    let t = logits.size()[1];
    let logits = logits.narrow(1, 0, t - 1).to_kind(Kind::Float);
    let targets = input_ids.narrow(1, 1, t - 1).unsqueeze(-1);
    logits.gather(-1, &targets, false).squeeze_dim(-1) - logits.logsumexp([-1], false)
}

/// Per-sequence log-probs `[batch]` of the response tokens, from logits already computed on `batch.input_ids`.
pub fn sequence_logprobs_from_logits(logits: &Tensor, batch: &PairBatch, reduction: Reduction) -> Tensor {
    let lp = token_logprobs(logits, &batch.input_ids);
    let t = batch.response_mask.size()[1];
    let mask = batch.response_mask.narrow(1, 1, t - 1).to_kind(Kind::Float);
    let sum = (lp * &mask).sum_dim_intlist(-1, false, Kind::Float);
    match reduction {
        Reduction::Sum => sum,
        Reduction::Mean => sum / mask.sum_dim_intlist(-1, false, Kind::Float).clamp_min(1.0),
    }
}

/// Per-sequence log-probs `[batch]` of each response given its prompt under `model` (differentiable; wrap in
/// `tch::no_grad` for frozen reference models).
///
/// Two savings over "logits → log-softmax → gather": the LM head and its log-sum-exp run only on the positions that
/// predict a response token (prompts are usually much longer than responses, and the head is the widest layer), and
/// no padding mask is passed: the batch is right-padded, so plain causal attention is exact for every real token and
/// SDPA can take its fused causal path (flash attention on GPU).
pub fn sequence_logprobs(model: &dyn CausalLm, batch: &PairBatch, reduction: Reduction) -> Tensor {
    let hidden = model.forward_hidden(&batch.input_ids, None, None);
    let (b, t, h) = hidden.size3().unwrap();
    // Position i predicts token i+1: keep positions whose next token is a response token.
    let pred = batch.response_mask.narrow(1, 1, t - 1).reshape([-1]);
    let flat = pred.nonzero().squeeze_dim(-1);
    let hs = hidden.narrow(1, 0, t - 1).reshape([-1, h]).index_select(0, &flat);
    let targets = batch.input_ids.narrow(1, 1, t - 1).reshape([-1]).index_select(0, &flat);
    let logits = model.lm_head(&hs).to_kind(Kind::Float); // [n, vocab]
    let lp = logits.gather(1, &targets.unsqueeze(1), false).squeeze_dim(1) - logits.logsumexp([-1], false);
    let rows = flat.divide_scalar_mode(t - 1, "floor");
    let sum = Tensor::zeros([b], (Kind::Float, hidden.device())).index_add(0, &rows, &lp);
    match reduction {
        Reduction::Sum => sum,
        Reduction::Mean => {
            let n = Tensor::from_slice(&batch.response_lens.iter().map(|&n| n as f32).collect::<Vec<_>>())
                .to_device(hidden.device());
            sum / n
        }
    }
}

/// Summed negative log-likelihood and token count over a batch of right-padded plain sequences: for language-model
/// loss and perplexity. Every real token after the first is scored. (Right padding: no mask needed in attention,
/// as in [`sequence_logprobs`].)
pub fn lm_loss(model: &dyn CausalLm, input_ids: &Tensor, attention_mask: &Tensor) -> (Tensor, Tensor) {
    let logits = model.forward(input_ids, None, None);
    let lp = token_logprobs(&logits, input_ids);
    let t = attention_mask.size()[1];
    let mask = attention_mask.narrow(1, 1, t - 1).to_kind(Kind::Float);
    let n = mask.sum(Kind::Float);
    (-(lp * &mask).sum(Kind::Float), n)
}
