//! K models of one architecture trained and evaluated as one: the β candidates of a method, the members of a
//! reward-model ensemble. Every parameter is stacked with a leading dimension of K, every matrix product is a
//! batched one (`baddbmm`/`bmm`), and one forward pass, one backward pass and one optimizer step serve all K, so
//! the per-operation overhead that dominates tiny models is paid once instead of K times.
//!
//! Each model computes exactly what it would compute alone: model k reads only its own parameters, its losses are
//! its own (`[K]`, summed for the backward pass, which gives every model the gradient of its own loss), it is
//! clipped by its own gradient norm ([`BatchedTrainer`]), and it is saved as its own Hugging Face checkpoint. The
//! results equal training the models one by one up to float rounding (tested in `ml/tests/batched.rs`).
//!
//! - [`BatchedCausalLm`]: `from_checkpoints`, `replicate`, `sequence_logprobs` → `[K, batch]`, `save_model`,
//!   `to_model`; sampling over all K at once is [`crate::sampling::generate_batched`].
//! - [`BatchedRewardModel`]: the same for Bradley–Terry reward models (`rewards` → `[K, batch]`).
//! - [`BatchedTrainer`]: AdamW over all K with per-model clipping and one metrics row per model and step.
//!
//! Inputs are shared by all K models (a [`PairBatch`] built once); only sampling feeds each model its own tokens.

use crate::checkpoint::{LanguageModel, RewardModel};
use crate::config::ModelConfig;
use crate::logprobs::{PairBatch, Read, Reduction};
use crate::model::{KvCache, NO_DECAY_GROUP, attention_mask_4d, position_ids};
use crate::nets::{Gpt2Net, Inputs, LlamaNet, Net, Tail, head_logits, rope_inv_freq, select_rows};
use crate::optim::{FlatAdamW, FlatParam};
use crate::train::{OptimConfig, StepMetrics, adamw_config, check_config, clip_and_step};
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor, nn};

/// Stacked parameters `[K, ...]` by their Hugging Face names, with their weight-decay flag.
struct Stack {
    k: i64,
    config: ModelConfig,
    params: BTreeMap<String, (Tensor, bool)>,
}

impl Stack {
    /// Stacks the named variables of `stores` (one per model, same config), as trainable leaves.
    fn new(config: &ModelConfig, stores: &[&nn::VarStore]) -> Result<Stack> {
        if stores.is_empty() {
            bail!("a batched model needs at least one model");
        }
        let device = stores[0].device();
        let decay: HashMap<usize, bool> = {
            let vars = stores[0].variables_.lock().unwrap();
            vars.trainable_variables.iter().map(|v| (v.tensor.data_ptr() as usize, v.group != NO_DECAY_GROUP)).collect()
        };
        let first = stores[0].variables();
        let all: Vec<HashMap<String, Tensor>> = stores.iter().map(|s| s.variables()).collect();
        let mut params = BTreeMap::new();
        tch::no_grad(|| -> Result<()> {
            for (name, t0) in &first {
                let mut parts = Vec::with_capacity(all.len());
                for (i, vars) in all.iter().enumerate() {
                    let t = vars.get(name).with_context(|| format!("model {i} has no parameter {name}"))?;
                    if t.size() != t0.size() {
                        bail!("parameter {name}: model {i} has shape {:?}, model 0 {:?}", t.size(), t0.size());
                    }
                    parts.push(t.detach().to_device(device));
                }
                let stacked = Tensor::stack(&parts, 0).set_requires_grad(true);
                params.insert(name.clone(), (stacked, *decay.get(&(t0.data_ptr() as usize)).unwrap_or(&true)));
            }
            Ok(())
        })?;
        Ok(Stack { k: stores.len() as i64, config: config.clone(), params })
    }

    fn p(&self, name: &str) -> Tensor {
        match self.params.get(name) {
            Some((t, _)) => t.shallow_clone(),
            None => panic!("batched model: no parameter {name}"),
        }
    }

    fn flat_params(&self) -> Vec<FlatParam> {
        self.params
            .iter()
            .map(|(n, (t, decay))| FlatParam { name: n.clone(), tensor: t.shallow_clone(), decay: *decay })
            .collect()
    }

    /// Copies model `k`'s parameters into `vs` (same names).
    fn copy_into(&self, k: i64, vs: &nn::VarStore) -> Result<()> {
        let vars = vs.variables();
        tch::no_grad(|| -> Result<()> {
            for (name, (t, _)) in &self.params {
                let mut v =
                    vars.get(name).with_context(|| format!("target model has no parameter {name}"))?.shallow_clone();
                v.copy_(&t.get(k).to_device(v.device()));
            }
            Ok(())
        })
    }
}

/// The shared arithmetic over a stack's parameters, and how a shared [`PairBatch`] enters it.
fn make_net(s: &Stack, device: Device) -> Net {
    let p = |n: &str| s.params.get(n).map(|(t, _)| t.shallow_clone());
    match &s.config {
        ModelConfig::Gpt2(c) => Net::Gpt2(Gpt2Net::new(&p, c)),
        ModelConfig::Llama(c) => Net::Llama(LlamaNet::new(&p, c, &rope_inv_freq(c, device))),
    }
}

/// The final hidden states `[K, n, d]` that `read` needs from a shared `batch`, in its plan's order (packed
/// sequences when prompts are shared, the last layer only where read: as [`crate::sequence_logprobs`]).
fn read_hidden(net: &Net, k: i64, batch: &PairBatch, read: Read) -> Tensor {
    let (ids, pos, mask, max_position) = batch.model_inputs();
    if let Some(maxp) = net.max_positions() {
        assert!(max_position < maxp, "sequence of {} tokens exceeds the model's {maxp} positions", max_position + 1);
    }
    let (s, l) = ids.size2().unwrap();
    let mask = mask.map(|m| m.unsqueeze(0).expand([k, s, 1, l, l], false).reshape([k * s, 1, l, l]));
    let (last_layer, flat) = batch.reading(read);
    let tail = last_layer.map(|t| Tail { index: &t.index, mask: &t.mask, width: t.width });
    let inp =
        Inputs { ids: &ids.expand([k, s, l], false), pos: &pos.expand([k, s, l], false), mask: mask.as_ref(), tail };
    let h = net.run(&inp, None);
    let d = *h.size().last().unwrap();
    h.reshape([k, -1, d]).index_select(1, flat)
}

/// One [`PairBatch`] per model, stacked so that K models run as one while each reads only its own rows: the members
/// of an ensemble trained on different subsets (D_ρ'). Every batch must have the same number of rows; sequences,
/// lengths and read positions are padded to the largest (the padding is computed and ignored), so the results equal
/// each model on its own batch up to float rounding, not bit for bit.
pub struct PerModelBatches {
    k: i64,
    rows: i64,
    ids: Tensor,
    pos: Tensor,
    mask: Option<Tensor>,
    max_position: i64,
    logprobs: StackedRead,
    rewards: StackedRead,
    /// `[K, n]` response tokens scored and their rows (padding: the extra column `rows`).
    targets: Tensor,
    token_rows: Tensor,
    /// `[K, rows]` response lengths.
    lens: Tensor,
}

/// Per-model read positions: the last layer's rows (`index` `[K, S·width]`, `mask` `[K·S, 1, width, L]`) when the
/// batches use them, and `read` `[K, n]` flat into the model's output.
struct StackedRead {
    tail: Option<(Tensor, Tensor, i64)>,
    read: Tensor,
}

fn to_vec_i64(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.to_device(Device::Cpu).reshape([-1])).unwrap_or_default()
}

impl PerModelBatches {
    /// `batches[k]` is model k's batch (built with [`PairBatch::new`], packed or not).
    pub fn new(batches: &[PairBatch]) -> Result<Self> {
        let Some(first) = batches.first() else { bail!("no batches") };
        let rows = first.len();
        if let Some((k, b)) = batches.iter().enumerate().find(|(_, b)| b.len() != rows) {
            bail!(
                "model {k}'s batch has {} rows, model 0's {rows}: every model needs the same number of rows",
                b.len()
            );
        }
        let device = first.input_ids.device();
        let k = batches.len();
        let inputs: Vec<_> = batches.iter().map(|b| b.model_inputs()).collect();
        let s_max = inputs.iter().map(|i| i.0.size()[0]).max().unwrap();
        let l_max = inputs.iter().map(|i| i.0.size()[1]).max().unwrap();
        let max_position = inputs.iter().map(|i| i.3).max().unwrap();
        let kk = k as i64;
        let ids = Tensor::zeros([kk, s_max, l_max], (Kind::Int64, device));
        let pos = Tensor::zeros([kk, s_max, l_max], (Kind::Int64, device));
        // causal everywhere is what no mask means; a packed batch's own mask replaces it on its sequences
        let any_mask = inputs.iter().any(|i| i.2.is_some());
        let mask = any_mask.then(|| {
            let q = Tensor::arange(l_max, (Kind::Int64, device));
            let causal = q.unsqueeze(0).le_tensor(&q.unsqueeze(1)); // [L, L]: key ≤ query
            causal.view([1, 1, 1, l_max, l_max]).expand([kk, s_max, 1, l_max, l_max], false).contiguous()
        });
        tch::no_grad(|| {
            for (m, (i, p, mk, _)) in inputs.iter().enumerate() {
                let (s, l) = i.size2().unwrap();
                ids.get(m as i64).narrow(0, 0, s).narrow(1, 0, l).copy_(i);
                pos.get(m as i64).narrow(0, 0, s).narrow(1, 0, l).copy_(p);
                if let (Some(all), Some(own)) = (&mask, mk) {
                    all.get(m as i64).narrow(0, 0, s).narrow(2, 0, l).narrow(3, 0, l).copy_(own);
                }
            }
        });
        let stacked = |read: Read| -> StackedRead {
            let use_tail = batches.iter().all(|b| b.reading(read).0.is_some());
            let widths: Vec<i64> = batches.iter().map(|b| b.reading(read).0.map_or(1, |t| t.width)).collect();
            let w_max = *widths.iter().max().unwrap();
            let n_max = batches.iter().map(|b| b.reading(read).1.numel()).max().unwrap();
            let (mut index, mut tmask) = (vec![0i64; k * (s_max * w_max) as usize], vec![false; 0]);
            if use_tail {
                tmask = vec![false; k * (s_max * w_max * l_max) as usize];
            }
            let mut read_all = vec![0i64; k * n_max];
            for (m, b) in batches.iter().enumerate() {
                let (s_k, l_k) = inputs[m].0.size2().unwrap();
                let (tail, flat) = b.reading(read);
                let flat = to_vec_i64(flat);
                match tail {
                    Some(t) => {
                        let w_k = t.width;
                        let idx = to_vec_i64(&t.index);
                        let own =
                            Vec::<bool>::try_from(t.mask.to_device(Device::Cpu).reshape([-1])).unwrap_or_default();
                        for s in 0..s_max {
                            for j in 0..w_max {
                                let at = m * (s_max * w_max) as usize + (s * w_max + j) as usize;
                                let row = &mut tmask[at * l_max as usize..(at + 1) * l_max as usize];
                                if s < s_k {
                                    let jj = j.min(w_k - 1);
                                    let q = idx[(s * w_k + jj) as usize] - s * l_k;
                                    index[at] = s * l_max + q;
                                    let src =
                                        &own[((s * w_k + jj) * l_k) as usize..((s * w_k + jj + 1) * l_k) as usize];
                                    row[..l_k as usize].copy_from_slice(src);
                                } else {
                                    index[at] = s * l_max;
                                    row[0] = true;
                                }
                            }
                        }
                        for (i, r) in flat.iter().enumerate() {
                            read_all[m * n_max + i] = (r / w_k) * w_max + r % w_k;
                        }
                    }
                    None => {
                        for (i, r) in flat.iter().enumerate() {
                            read_all[m * n_max + i] = (r / l_k) * l_max + r % l_k;
                        }
                    }
                }
            }
            let tail = use_tail.then(|| {
                let index = Tensor::from_slice(&index).view([kk, s_max * w_max]).to_device(device);
                let tm = Tensor::from_slice(&tmask).view([kk * s_max, 1, w_max, l_max]).to_device(device);
                (index, tm, w_max)
            });
            StackedRead { tail, read: Tensor::from_slice(&read_all).view([kk, n_max as i64]).to_device(device) }
        };
        let (logprobs, rewards) = (stacked(Read::LogProbs), stacked(Read::Rewards));
        let n_max = logprobs.read.size()[1] as usize;
        let (mut targets, mut token_rows) = (vec![0i64; k * n_max], vec![rows as i64; k * n_max]);
        let mut lens = Vec::with_capacity(k * rows);
        for (m, b) in batches.iter().enumerate() {
            let (t, r, l) = b.score_targets();
            let (t, r) = (to_vec_i64(t), to_vec_i64(r));
            targets[m * n_max..m * n_max + t.len()].copy_from_slice(&t);
            token_rows[m * n_max..m * n_max + r.len()].copy_from_slice(&r);
            lens.extend(Vec::<f32>::try_from(l.to_device(Device::Cpu))?);
        }
        let shape = [kk, n_max as i64];
        Ok(PerModelBatches {
            k: kk,
            rows: rows as i64,
            ids,
            pos,
            mask: mask.map(|m| m.view([kk * s_max, 1, l_max, l_max])),
            max_position,
            logprobs,
            rewards,
            targets: Tensor::from_slice(&targets).view(shape).to_device(device),
            token_rows: Tensor::from_slice(&token_rows).view(shape).to_device(device),
            lens: Tensor::from_slice(&lens).view([kk, rows as i64]).to_device(device),
        })
    }

    pub fn num_models(&self) -> usize {
        self.k as usize
    }
    /// Rows per model.
    pub fn len(&self) -> usize {
        self.rows as usize
    }
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The final hidden states `[K, n, d]` that `read` needs, model k on its own batch.
    fn read_hidden(&self, net: &Net, k: i64, read: Read) -> Result<Tensor> {
        if k != self.k {
            bail!("{} batches for {k} models", self.k);
        }
        if let Some(maxp) = net.max_positions()
            && self.max_position >= maxp
        {
            bail!("sequence of {} tokens exceeds the model's {maxp} positions", self.max_position + 1);
        }
        let r = match read {
            Read::LogProbs => &self.logprobs,
            Read::Rewards => &self.rewards,
        };
        let tail = r.tail.as_ref().map(|(index, mask, width)| Tail { index, mask, width: *width });
        let inp = Inputs { ids: &self.ids, pos: &self.pos, mask: self.mask.as_ref(), tail };
        let h = net.run(&inp, None);
        let d = *h.size().last().unwrap();
        Ok(select_rows(&h.reshape([k, -1, d]), &r.read))
    }
}

/// K causal language models (policies) as one; see the module doc.
pub struct BatchedCausalLm {
    stack: Stack,
    net: Net,
    device: Device,
}

impl std::fmt::Debug for BatchedCausalLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "BatchedCausalLm({} × {}, {} layers)",
            self.stack.k,
            self.stack.config.model_type(),
            self.net.num_layers()
        )
    }
}

impl BatchedCausalLm {
    /// Stacks copies of the given models' parameters (same architecture and shapes), on the first model's device.
    pub fn from_models(models: &[&LanguageModel]) -> Result<Self> {
        let Some(first) = models.first() else { bail!("a batched model needs at least one model") };
        for (i, m) in models.iter().enumerate() {
            if m.config != first.config {
                bail!("model {i}'s config differs from model 0's: a batched model needs one architecture");
            }
        }
        let stores: Vec<&nn::VarStore> = models.iter().map(|m| &m.vs).collect();
        let stack = Stack::new(&first.config, &stores)?;
        let device = first.device();
        Ok(BatchedCausalLm { net: make_net(&stack, device), stack, device })
    }

    /// Loads K checkpoint directories (e.g. K policies to evaluate).
    pub fn from_checkpoints(dirs: &[&Path], device: Device) -> Result<Self> {
        let models = dirs.iter().map(|d| LanguageModel::load(d, device)).collect::<Result<Vec<_>>>()?;
        Self::from_models(&models.iter().collect::<Vec<_>>())
    }

    /// K copies of one model (e.g. K policies that all start from π_ref).
    pub fn replicate(model: &LanguageModel, k: usize) -> Result<Self> {
        Self::from_models(&vec![model; k])
    }

    pub fn num_models(&self) -> usize {
        self.stack.k as usize
    }
    pub fn config(&self) -> &ModelConfig {
        &self.stack.config
    }
    pub fn device(&self) -> Device {
        self.device
    }
    pub fn num_layers(&self) -> usize {
        self.net.num_layers()
    }
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.net.num_layers())
    }
    /// Trainable parameters for [`BatchedTrainer`] (each `[K, ...]`).
    pub fn trainable(&self) -> Vec<FlatParam> {
        self.stack.flat_params()
    }

    /// Model `k` as a standalone [`LanguageModel`] (a copy).
    pub fn to_model(&self, k: usize) -> Result<LanguageModel> {
        let m = LanguageModel::new(self.stack.config.clone(), self.device);
        self.stack.copy_into(k as i64, &m.vs)?;
        Ok(m)
    }

    /// Writes model `k` as a Hugging Face checkpoint directory (as [`LanguageModel::save`]).
    pub fn save_model(&self, k: usize, dir: &Path, tokenizer_dir: Option<&Path>) -> Result<()> {
        self.to_model(k)?.save(dir, tokenizer_dir)
    }

    /// Per-model sequence log-probs `[K, batch]` of each response given its prompt (differentiable; the batched
    /// counterpart of [`crate::sequence_logprobs`], with the same packing of shared prompts and the LM head only on
    /// response positions).
    pub fn sequence_logprobs(&self, batch: &PairBatch, reduction: Reduction) -> Tensor {
        let k = self.stack.k;
        let hs = read_hidden(&self.net, k, batch, Read::LogProbs); // [K, n, d]
        let (targets, rows, lens) = batch.score_targets();
        let n = hs.size()[1];
        let logits = self.logits(&hs); // [K, n, vocab]
        let lp = logits.gather(2, &targets.view([1, n, 1]).expand([k, n, 1], false), false).squeeze_dim(2)
            - logits.logsumexp([-1], false);
        let sum = Tensor::zeros([k, batch.len() as i64], (Kind::Float, hs.device())).index_add(1, rows, &lp);
        match reduction {
            Reduction::Sum => sum,
            Reduction::Mean => sum / lens.unsqueeze(0),
        }
    }

    /// Per-model sequence log-probs `[K, rows]` with model k scoring its own batch `batches[k]`.
    pub fn sequence_logprobs_each(&self, batches: &PerModelBatches, reduction: Reduction) -> Result<Tensor> {
        let k = self.stack.k;
        let hs = batches.read_hidden(&self.net, k, Read::LogProbs)?; // [K, n, d]
        let logits = self.logits(&hs);
        let lp = logits.gather(2, &batches.targets.unsqueeze(2), false).squeeze_dim(2) - logits.logsumexp([-1], false);
        let sum = Tensor::zeros([k, batches.rows + 1], (Kind::Float, hs.device()))
            .scatter_add(1, &batches.token_rows, &lp)
            .narrow(1, 0, batches.rows);
        Ok(match reduction {
            Reduction::Sum => sum,
            Reduction::Mean => sum / &batches.lens,
        })
    }

    /// Logits `[K, rows, vocab]` in fp32 of hidden states `[K, rows, d]` (fp32 even under autocast, as the
    /// single-model head).
    pub fn logits(&self, hidden: &Tensor) -> Tensor {
        head_logits(hidden, self.net.head_weight())
    }

    /// Hidden states `[K, B, T, d]` of per-model token ids `[K, B, T]` with a per-model padding mask
    /// `[K, B, past + T]` (1 = real token) and an optional cache over all `K·B` rows: sampling's forward pass.
    pub fn forward_hidden(&self, ids: &Tensor, attention_mask: Option<&Tensor>, cache: Option<&mut KvCache>) -> Tensor {
        let (k, b, t) = ids.size3().unwrap();
        let past = cache.as_ref().map_or(0, |c| c.seq_len());
        if let Some(maxp) = self.net.max_positions() {
            assert!(past + t <= maxp, "GPT-2 sequence of {} tokens exceeds n_positions = {maxp}", past + t);
        }
        let flat_mask = attention_mask.map(|m| m.reshape([k * b, -1]));
        let pos = position_ids(flat_mask.as_ref(), k * b, t, past, ids.device()).view([k, b, t]);
        let mask = attention_mask_4d(flat_mask.as_ref(), t, past, ids.device());
        self.net.run(&Inputs { ids, pos: &pos, mask: mask.as_ref(), tail: None }, cache)
    }
}

/// K Bradley–Terry reward models as one (an ensemble); see the module doc and [`RewardModel`].
pub struct BatchedRewardModel {
    stack: Stack,
    net: Net,
    score: Tensor,
    device: Device,
}

impl BatchedRewardModel {
    pub fn from_models(models: &[&RewardModel]) -> Result<Self> {
        let Some(first) = models.first() else { bail!("a batched model needs at least one model") };
        for (i, m) in models.iter().enumerate() {
            if m.config != first.config {
                bail!("reward model {i}'s config differs from model 0's: a batched model needs one architecture");
            }
        }
        let stores: Vec<&nn::VarStore> = models.iter().map(|m| &m.vs).collect();
        let stack = Stack::new(&first.config, &stores)?;
        let device = first.device();
        Ok(BatchedRewardModel { net: make_net(&stack, device), score: stack.p("score.weight"), stack, device })
    }

    /// Loads K reward-model checkpoints (or, with `init_head_if_missing`, causal-LM checkpoints as backbones).
    pub fn from_checkpoints(dirs: &[&Path], device: Device, init_head_if_missing: bool) -> Result<Self> {
        let models =
            dirs.iter().map(|d| RewardModel::load(d, device, init_head_if_missing)).collect::<Result<Vec<_>>>()?;
        Self::from_models(&models.iter().collect::<Vec<_>>())
    }

    pub fn replicate(model: &RewardModel, k: usize) -> Result<Self> {
        Self::from_models(&vec![model; k])
    }
    pub fn num_models(&self) -> usize {
        self.stack.k as usize
    }
    pub fn device(&self) -> Device {
        self.device
    }
    pub fn trainable(&self) -> Vec<FlatParam> {
        self.stack.flat_params()
    }
    pub fn to_model(&self, k: usize) -> Result<RewardModel> {
        let m = RewardModel::new(self.stack.config.clone(), self.device);
        self.stack.copy_into(k as i64, &m.vs)?;
        Ok(m)
    }
    pub fn save_model(&self, k: usize, dir: &Path, tokenizer_dir: Option<&Path>) -> Result<()> {
        self.to_model(k)?.save(dir, tokenizer_dir)
    }

    /// Rewards `[K, batch]` of each `prompt ++ response` row under each model (as [`RewardModel::rewards`]).
    pub fn rewards(&self, batch: &PairBatch) -> Tensor {
        let sel = read_hidden(&self.net, self.stack.k, batch, Read::Rewards);
        head_logits(&sel, &self.score).squeeze_dim(-1)
    }
}

impl BatchedRewardModel {
    /// Rewards `[K, rows]` with model k scoring its own batch `batches[k]` (ensemble members on their own subsets).
    pub fn rewards_each(&self, batches: &PerModelBatches) -> Result<Tensor> {
        let sel = batches.read_hidden(&self.net, self.stack.k, Read::Rewards)?;
        Ok(head_logits(&sel, &self.score).squeeze_dim(-1))
    }
}

/// AdamW over the K models of a batched model, with each model's loss, clipping and metrics its own.
pub struct BatchedTrainer {
    opt: FlatAdamW,
    cfg: OptimConfig,
    k: usize,
    step: usize,
    micro: usize,
    loss_sum: Vec<f64>,
    extra_sum: Vec<BTreeMap<String, f64>>,
    started: Instant,
    /// `history[k]`: model k's metrics rows, one per optimizer step.
    pub history: Vec<Vec<StepMetrics>>,
}

impl BatchedTrainer {
    /// `params` from [`BatchedCausalLm::trainable`] or [`BatchedRewardModel::trainable`]; all K models share the
    /// optimizer settings and schedule.
    pub fn new(params: Vec<FlatParam>, cfg: OptimConfig) -> Result<Self> {
        check_config(&cfg)?;
        crate::device::tune_allocator();
        let k = params.first().map_or(0, |p| p.tensor.size()[0]);
        let opt = FlatAdamW::new(params, Some(k), adamw_config(&cfg))?;
        let k = k as usize;
        Ok(BatchedTrainer {
            opt,
            cfg,
            k,
            step: 0,
            micro: 0,
            loss_sum: vec![0.0; k],
            extra_sum: vec![BTreeMap::new(); k],
            started: Instant::now(),
            history: vec![vec![]; k],
        })
    }
    pub fn step(&self) -> usize {
        self.step
    }
    pub fn config(&self) -> &OptimConfig {
        &self.cfg
    }
    pub fn is_done(&self) -> bool {
        self.step >= self.cfg.total_steps
    }

    /// Back-propagates the K models' micro-batch losses `[K]` (each model gets the gradient of its own loss), with
    /// per-model extra metrics (`values[k]` for model k); after `grad_accum` micro-batches takes one optimizer step
    /// for all K and returns their rows. A non-finite loss or gradient of any model is an error naming it.
    pub fn backward(&mut self, losses: &Tensor, extra: &[(&str, &[f64])]) -> Result<Option<Vec<StepMetrics>>> {
        if losses.size() != [self.k as i64] {
            bail!("expected one loss per model ([{}]), got shape {:?}", self.k, losses.size());
        }
        let values = Vec::<f64>::try_from(losses.detach().to_kind(Kind::Double).to_device(Device::Cpu))?;
        if let Some(k) = values.iter().position(|v| !v.is_finite()) {
            bail!(
                "non-finite loss ({}) of model {k} at optimizer step {}, micro-batch {}",
                values[k],
                self.step + 1,
                self.micro + 1
            );
        }
        for (name, v) in extra {
            if v.len() != self.k {
                bail!("metric {name}: {} values for {} models", v.len(), self.k);
            }
        }
        if self.micro == 0 {
            self.opt.zero_grad();
        }
        let total = losses.sum(Kind::Float);
        if self.cfg.grad_accum == 1 {
            total.backward()
        } else {
            (total / self.cfg.grad_accum as f64).backward()
        }
        for k in 0..self.k {
            self.loss_sum[k] += values[k];
            for (name, v) in extra {
                *self.extra_sum[k].entry((*name).to_string()).or_default() += v[k];
            }
        }
        self.micro += 1;
        if self.micro < self.cfg.grad_accum {
            return Ok(None);
        }
        let lr = self.cfg.lr_at(self.step);
        let norms = clip_and_step(&mut self.opt, &self.cfg, lr, self.step)?;
        self.step += 1;
        let n = self.micro as f64;
        let seconds = self.started.elapsed().as_secs_f64();
        let rows: Vec<StepMetrics> = (0..self.k)
            .map(|k| StepMetrics {
                step: self.step,
                lr,
                loss: self.loss_sum[k] / n,
                grad_norm: norms[k],
                seconds,
                extra: std::mem::take(&mut self.extra_sum[k]).into_iter().map(|(name, v)| (name, v / n)).collect(),
            })
            .collect();
        self.micro = 0;
        self.loss_sum.iter_mut().for_each(|l| *l = 0.0);
        for (h, r) in self.history.iter_mut().zip(&rows) {
            h.push(r.clone());
        }
        Ok(Some(rows))
    }

    /// Attaches validation metrics to each model's latest row (`values[k]` for model k).
    pub fn log_eval(&mut self, metrics: &[(&str, &[f64])]) {
        for (k, h) in self.history.iter_mut().enumerate() {
            if let Some(row) = h.last_mut() {
                row.extra.extend(metrics.iter().filter_map(|(n, v)| v.get(k).map(|x| ((*n).to_string(), *x))));
            }
        }
    }
}
