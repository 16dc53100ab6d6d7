//! Batched sequence log-probabilities `log π(y|x)` of responses given prompts: the quantity every loss in
//! METHOD.md is built from. Sequences are right-padded; only response tokens count (prompt and padding are
//! masked); the default reduction is the sum over response tokens, the per-token mean is offered for IPO-style losses.
//!
//! Shared prompts are computed once. Preference data comes in pairs — every prompt has two responses, and DPO, the
//! distillation losses, the reward model and the offline precompute all score both — so when a prompt occurs in
//! several rows of a [`PairBatch`] the model sees one *packed* sequence `prompt ++ response_1 ++ response_2 ++ …`
//! in which each response attends to the prompt and to itself only and restarts its positions where the prompt
//! ends. Every response token then has exactly the context and position it has in its own row, so the results are
//! those of the unpacked batch up to float rounding, while the prompt's tokens are computed once instead of once per
//! response (on a 48-token prompt with two 16-token responses, 80 positions instead of 128).

use crate::model::{Backbone, CausalLm};
use anyhow::{Result, bail};
use std::collections::HashMap;
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
    /// Where the model reads what it scores (precomputed here, so a forward pass issues no index computations).
    plan: Plan,
}

/// The packed layout of a batch whose rows share prompts (see the module doc).
#[derive(Debug)]
struct Packed {
    /// `[groups, len]`: each distinct prompt followed by its responses, right-padded.
    input_ids: Tensor,
    /// `[groups, len]`: every response's positions restart where its prompt ends.
    position_ids: Tensor,
    /// `[groups, 1, len, len]`, true = may attend: causal, and a response sees only its prompt and itself.
    mask: Tensor,
    /// Largest position id used (GPT-2's learned positions are a hard limit).
    max_position: i64,
}

/// Where the model reads what it scores, computed when the batch is built so that a forward pass issues no index
/// computations. Flat indices are into the hidden states `[sequences, len, hidden]` viewed as
/// `[sequences·len, hidden]` (the packed sequences when prompts are shared, else the rows).
#[derive(Debug)]
struct Plan {
    packed: Option<Packed>,
    /// Positions whose next token is a response token, row by row.
    pred: Tensor,
    /// That next token.
    targets: Tensor,
    /// The batch row each of them belongs to.
    rows: Tensor,
    /// Each row's last real token (where a reward head reads).
    last: Tensor,
    /// Response lengths as floats, for [`Reduction::Mean`].
    lens: Tensor,
    /// The last layer only at `pred`, and only at `last` (see [`LastLayerRows`]).
    pred_tail: LastLayerRows,
    last_tail: LastLayerRows,
    /// Off: the last layer runs at every position (for tests).
    use_tail: bool,
}

/// The positions at which the last transformer layer is computed. Only the final hidden states that a head reads
/// are needed, and the last layer's output at any other position feeds nothing (earlier layers still run at every
/// position, since their keys and values are attended to): so the last layer's queries, attention output, MLP and
/// final norm run only at the read positions — for log-probs the positions that predict a response token, for a
/// reward head each row's last token. Per sequence the read positions are padded to the same `width` (by repeating
/// one) and `read` maps the plan's flat indices into the result `[sequences·width, hidden]`.
#[derive(Debug)]
pub struct LastLayerRows {
    /// `[sequences·width]` flat indices of the selected positions into `[sequences·len]`.
    pub(crate) index: Tensor,
    /// `[sequences, 1, width, len]`, true = may attend: each selected query's row of the attention mask.
    pub(crate) mask: Tensor,
    pub(crate) width: i64,
    /// The read positions as flat indices into `[sequences·width]`.
    pub(crate) read: Tensor,
}

impl LastLayerRows {
    /// `read` are flat indices into `[seqs·len]`; `allowed(s, q, k)` is the attention mask of sequence `s`.
    fn new(
        read: &[i64],
        seqs: usize,
        len: usize,
        allowed: &dyn Fn(usize, usize, usize) -> bool,
        device: Device,
    ) -> Self {
        let mut sel: Vec<Vec<usize>> = vec![vec![]; seqs];
        for &r in read {
            sel[r as usize / len].push(r as usize % len);
        }
        for v in &mut sel {
            v.sort_unstable();
            v.dedup();
        }
        let width = sel.iter().map(|v| v.len()).max().unwrap_or(0).max(1);
        let mut index = vec![0i64; seqs * width];
        let mut mask = vec![false; seqs * width * len];
        for (s, v) in sel.iter().enumerate() {
            for j in 0..width {
                let q = v.get(j).or(v.last()).copied().unwrap_or(0);
                index[s * width + j] = (s * len + q) as i64;
                let row = &mut mask[(s * width + j) * len..(s * width + j + 1) * len];
                for (k, m) in row.iter_mut().enumerate() {
                    *m = k == q || allowed(s, q, k);
                }
            }
        }
        let remapped: Vec<i64> = read
            .iter()
            .map(|&r| {
                let (s, q) = (r as usize / len, r as usize % len);
                (s * width + sel[s].binary_search(&q).unwrap()) as i64
            })
            .collect();
        let (s64, w64, l64) = (seqs as i64, width as i64, len as i64);
        LastLayerRows {
            index: Tensor::from_slice(&index).to_device(device),
            mask: Tensor::from_slice(&mask).view([s64, 1, w64, l64]).to_device(device),
            width: w64,
            read: Tensor::from_slice(&remapped).to_device(device),
        }
    }
}

/// What a forward pass over a [`PairBatch`] is for: which positions' final hidden states are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    /// The positions that predict response tokens.
    LogProbs,
    /// Each row's last real token.
    Rewards,
}

/// How much of a prompt (its last tokens) and of its response (its first) [`PairBatch::new`] keeps within `max_len`
/// (≥ 2): the prompt loses tokens from its start first, keeping at least one, then the response from its end.
pub fn fit(prompt_len: usize, response_len: usize, max_len: usize) -> (usize, usize) {
    if prompt_len + response_len <= max_len {
        return (prompt_len, response_len);
    }
    let keep_p = prompt_len.min(max_len.saturating_sub(response_len).max(1));
    (keep_p, response_len.min(max_len - keep_p))
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
                let (keep_p, keep_r) = fit(p.len(), r.len(), m);
                p = &p[p.len() - keep_p..];
                r = &r[..keep_r];
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
        let plan = Plan::new(&rows, t, true, device);
        let mk = |v: Vec<i64>| Tensor::from_slice(&v).view([b as i64, t as i64]).to_device(device);
        Ok(PairBatch {
            input_ids: mk(ids),
            attention_mask: mk(att),
            response_mask: mk(resp),
            prompt_lens: plens,
            response_lens: rlens,
            plan,
        })
    }

    /// The same batch without prompt sharing: every row is its own sequence (for tests and benchmarks).
    pub fn without_packing(mut self) -> Self {
        if self.plan.packed.is_some() {
            let ids = Vec::<Vec<i64>>::try_from(&self.input_ids.to_device(Device::Cpu)).unwrap_or_default();
            let rows: Vec<(&[i64], &[i64])> = ids
                .iter()
                .zip(self.prompt_lens.iter().zip(&self.response_lens))
                .map(|(row, (&p, &r))| (&row[..p], &row[p..p + r]))
                .collect();
            let use_tail = self.plan.use_tail;
            self.plan = Plan::new(&rows, self.input_ids.size()[1] as usize, false, self.input_ids.device());
            self.plan.use_tail = use_tail;
        }
        self
    }

    /// The same batch with the last layer computed at every position instead of only where it is read (for tests
    /// and benchmarks; see [`LastLayerRows`]).
    pub fn with_full_last_layer(mut self) -> Self {
        self.plan.use_tail = false;
        self
    }

    /// Whether shared prompts are computed once (some prompt occurs in more than one row).
    pub fn is_packed(&self) -> bool {
        self.plan.packed.is_some()
    }

    /// Number of positions the model computes for this batch (packed or not).
    pub fn num_positions(&self) -> usize {
        match &self.plan.packed {
            Some(p) => p.input_ids.numel(),
            None => self.input_ids.numel(),
        }
    }

    /// The final hidden states `[n, hidden]` that `read` needs, in the plan's order (for log-probs the positions
    /// that predict response tokens, row by row; for rewards each row's last token), computed on the sequences the
    /// model sees for this batch (the packed ones when prompts are shared) with the last layer only where read.
    pub(crate) fn read_hidden(&self, model: &dyn Backbone, read: Read) -> Tensor {
        let (tail, flat) = self.reading(read);
        let h = match &self.plan.packed {
            Some(p) => {
                if let Some(maxp) = model.max_positions() {
                    assert!(
                        p.max_position < maxp,
                        "sequence of {} tokens exceeds the model's {maxp} positions (truncate, e.g. PairBatch max_len)",
                        p.max_position + 1
                    );
                }
                model.forward_rows(&p.input_ids, &p.position_ids, Some(&p.mask), tail)
            }
            // Right padding: plain causal attention is exact for every real token, so no mask is passed and SDPA
            // can take its fused causal path (flash attention on GPU).
            None => {
                let (b, t) = self.input_ids.size2().unwrap();
                if let Some(maxp) = model.max_positions() {
                    assert!(
                        t <= maxp,
                        "sequence of {t} tokens exceeds the model's {maxp} positions (truncate, e.g. PairBatch max_len)"
                    );
                }
                let pos = Tensor::arange(t, (Kind::Int64, self.input_ids.device())).unsqueeze(0).expand([b, t], false);
                model.forward_rows(&self.input_ids, &pos, None, tail)
            }
        };
        let d = *h.size().last().unwrap();
        h.reshape([-1, d]).index_select(0, flat)
    }

    /// The model's inputs for this batch: ids and position ids `[sequences, len]` and the attention mask
    /// `[sequences, 1, len, len]` (`None`: plain causal), plus the largest position id.
    pub(crate) fn model_inputs(&self) -> (Tensor, Tensor, Option<&Tensor>, i64) {
        match &self.plan.packed {
            Some(p) => (p.input_ids.shallow_clone(), p.position_ids.shallow_clone(), Some(&p.mask), p.max_position),
            None => {
                let (b, t) = self.input_ids.size2().unwrap();
                let pos = Tensor::arange(t, (Kind::Int64, self.input_ids.device())).unsqueeze(0).expand([b, t], false);
                (self.input_ids.shallow_clone(), pos, None, t - 1)
            }
        }
    }

    /// For `read`: the last-layer rows (if used) and the flat indices into the model's output to read.
    pub(crate) fn reading(&self, read: Read) -> (Option<&LastLayerRows>, &Tensor) {
        let (tail, flat) = match read {
            Read::LogProbs => (&self.plan.pred_tail, &self.plan.pred),
            Read::Rewards => (&self.plan.last_tail, &self.plan.last),
        };
        if self.plan.use_tail { (Some(tail), &tail.read) } else { (None, flat) }
    }

    /// The response tokens scored, the batch row of each, and the response lengths (floats).
    pub(crate) fn score_targets(&self) -> (&Tensor, &Tensor, &Tensor) {
        (&self.plan.targets, &self.plan.rows, &self.plan.lens)
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

impl Plan {
    /// `rows` are (prompt, response) after truncation; `t` is the unpacked batch's length. Packs when `pack` is set
    /// and some prompt occurs more than once.
    fn new(rows: &[(&[i64], &[i64])], t: usize, pack: bool, device: Device) -> Plan {
        let mut groups: Vec<(&[i64], Vec<usize>)> = vec![];
        if pack {
            let mut seen: HashMap<&[i64], usize> = HashMap::new();
            for (i, (p, _)) in rows.iter().enumerate() {
                let g = *seen.entry(p).or_insert_with(|| {
                    groups.push((p, vec![]));
                    groups.len() - 1
                });
                groups[g].1.push(i);
            }
        }
        let n_pred: usize = rows.iter().map(|(_, r)| r.len()).sum();
        let (mut pred, mut targets, mut row_of) =
            (Vec::with_capacity(n_pred), Vec::with_capacity(n_pred), Vec::with_capacity(n_pred));
        let mut last = vec![0i64; rows.len()];
        let lens: Vec<f32> = rows.iter().map(|(_, r)| r.len() as f32).collect();
        let t64 = |v: Vec<i64>| Tensor::from_slice(&v).to_device(device);
        let tails;
        let packed = if pack && groups.len() < rows.len() {
            // response j of group g starts at start[i] inside the group's sequence
            let len = groups.iter().map(|(p, rs)| p.len() + rs.iter().map(|&i| rows[i].1.len()).sum::<usize>()).max();
            let (g_n, l) = (groups.len(), len.unwrap_or(0));
            let mut ids = vec![0i64; g_n * l];
            let mut pos = vec![0i64; g_n * l];
            // segment of each position: 0 prompt, 1.. response, -1 padding
            let mut seg = vec![-1i32; g_n * l];
            let mut start = vec![0usize; rows.len()];
            let mut max_position = 0i64;
            for (g, (p, members)) in groups.iter().enumerate() {
                let base = g * l;
                for (j, &tok) in p.iter().enumerate() {
                    ids[base + j] = tok;
                    pos[base + j] = j as i64;
                    seg[base + j] = 0;
                }
                let mut at = p.len();
                for (m, &i) in members.iter().enumerate() {
                    start[i] = at;
                    for (j, &tok) in rows[i].1.iter().enumerate() {
                        ids[base + at + j] = tok;
                        pos[base + at + j] = (p.len() + j) as i64;
                        seg[base + at + j] = m as i32 + 1;
                    }
                    max_position = max_position.max((p.len() + rows[i].1.len()) as i64 - 1);
                    at += rows[i].1.len();
                }
            }
            let mut mask = vec![false; g_n * l * l];
            for g in 0..g_n {
                for q in 0..l {
                    let sq = seg[g * l + q];
                    let m = &mut mask[(g * l + q) * l..(g * l + q + 1) * l];
                    m[q] = true; // a padding query sees itself, so attention never divides by zero
                    if sq < 0 {
                        continue;
                    }
                    for (k, allowed) in m.iter_mut().enumerate().take(q) {
                        let sk = seg[g * l + k];
                        *allowed = sk == 0 || sk == sq;
                    }
                }
            }
            let group_of: HashMap<usize, usize> =
                groups.iter().enumerate().flat_map(|(g, (_, ms))| ms.iter().map(move |&i| (i, g))).collect();
            for (i, (p, r)) in rows.iter().enumerate() {
                let base = group_of[&i] * l;
                for j in 0..r.len() {
                    // token j of the response is predicted by the prompt's last position (j = 0) or by token j-1
                    pred.push((base + if j == 0 { p.len() - 1 } else { start[i] + j - 1 }) as i64);
                    targets.push(r[j]);
                    row_of.push(i as i64);
                }
                last[i] = (base + start[i] + r.len() - 1) as i64;
            }
            let allowed = |s: usize, q: usize, k: usize| mask[(s * l + q) * l + k];
            tails = Some((
                LastLayerRows::new(&pred, g_n, l, &allowed, device),
                LastLayerRows::new(&last, g_n, l, &allowed, device),
            ));
            let shape = [g_n as i64, l as i64];
            Some(Packed {
                input_ids: Tensor::from_slice(&ids).view(shape).to_device(device),
                position_ids: Tensor::from_slice(&pos).view(shape).to_device(device),
                mask: Tensor::from_slice(&mask).view([g_n as i64, 1, l as i64, l as i64]).to_device(device),
                max_position,
            })
        } else {
            for (i, (p, r)) in rows.iter().enumerate() {
                for j in 0..r.len() {
                    pred.push((i * t + p.len() + j - 1) as i64);
                    targets.push(r[j]);
                    row_of.push(i as i64);
                }
                last[i] = (i * t + p.len() + r.len() - 1) as i64;
            }
            let causal = |_: usize, q: usize, k: usize| k <= q;
            tails = Some((
                LastLayerRows::new(&pred, rows.len(), t, &causal, device),
                LastLayerRows::new(&last, rows.len(), t, &causal, device),
            ));
            None
        };
        let (pred_tail, last_tail) = tails.unwrap();
        Plan {
            packed,
            pred: t64(pred),
            targets: t64(targets),
            rows: t64(row_of),
            last: t64(last),
            lens: Tensor::from_slice(&lens).to_device(device),
            pred_tail,
            last_tail,
            use_tail: true,
        }
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
/// Savings over "logits → log-softmax → gather" on one row per response: a prompt shared by several rows is
/// computed once (the module doc); the last layer and the LM head with its log-sum-exp run only on the positions
/// that predict a response token ([`LastLayerRows`]; prompts are usually much longer than responses, and the head is
/// the widest layer), through indices computed when the batch was built; and without shared prompts the layers below
/// the last get no padding mask: the batch is right-padded, so plain causal attention is exact for every real token
/// and SDPA takes its fused causal path.
pub fn sequence_logprobs(model: &dyn CausalLm, batch: &PairBatch, reduction: Reduction) -> Tensor {
    let hs = batch.read_hidden(model, Read::LogProbs); // [n, hidden]
    let plan = &batch.plan;
    let logits = model.lm_head(&hs).to_kind(Kind::Float); // [n, vocab]
    let lp = logits.gather(1, &plan.targets.unsqueeze(1), false).squeeze_dim(1) - logits.logsumexp([-1], false);
    let sum = Tensor::zeros([batch.len() as i64], (Kind::Float, hs.device())).index_add(0, &plan.rows, &lp);
    match reduction {
        Reduction::Sum => sum,
        Reduction::Mean => sum / &plan.lens,
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

#[cfg(test)]
mod tests {
    use super::fit;

    #[test]
    fn the_prompt_loses_its_start_first_then_the_response_its_end() {
        assert_eq!(fit(3, 3, 8), (3, 3)); // fits
        assert_eq!(fit(10, 5, 8), (3, 5)); // the prompt's last 3 tokens
        assert_eq!(fit(2, 10, 8), (1, 7)); // one prompt token kept, the response cut
        assert_eq!(fit(1, 1, 2), (1, 1));
    }
}
