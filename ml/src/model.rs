//! What every architecture shares: the `Backbone`/`CausalLm` traits, the KV cache, padding-aware attention masks
//! and position ids, and the small layers (linear, norms) written out so parameter names match transformers.

use std::collections::HashMap;
use tch::{Kind, Tensor, nn};

/// Parameter group for weights that get no weight decay (biases, norms), as is usual for transformers.
pub const NO_DECAY_GROUP: usize = 1;

/// Per-layer cached keys and values, `[batch, kv_heads, past_len, head_dim]` each.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(num_layers: usize) -> Self {
        KvCache { layers: (0..num_layers).map(|_| None).collect() }
    }
    /// Number of positions already cached.
    pub fn seq_len(&self) -> i64 {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |(k, _)| k.size()[2])
    }
    /// Appends this step's keys/values for layer `i` and returns the full ones.
    pub fn update(&mut self, i: usize, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
        let (k, v) = match self.layers[i].take() {
            Some((pk, pv)) => (Tensor::cat(&[pk, k], 2), Tensor::cat(&[pv, v], 2)),
            None => (k, v),
        };
        self.layers[i] = Some((k.shallow_clone(), v.shallow_clone()));
        (k, v)
    }
    /// Keeps only the given batch rows (e.g. to drop finished sequences).
    pub fn select_rows(&mut self, rows: &Tensor) {
        for l in self.layers.iter_mut().flatten() {
            l.0 = l.0.index_select(0, rows);
            l.1 = l.1.index_select(0, rows);
        }
    }
}

/// A transformer body: token ids to final hidden states `[batch, seq, hidden]` (after the last norm).
///
/// `attention_mask` is `[batch, past + seq]`, 1 for real tokens and 0 for padding (left or right), covering the
/// cached positions too; `None` means no padding. Positions are counted over real tokens only, so a left-padded
/// prompt sees the same positions as an unpadded one.
pub trait Backbone {
    fn forward_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Tensor;
    /// Hidden states for explicit `position_ids` `[batch, seq]` and a boolean attention mask `[batch, 1, seq, seq]`
    /// (true = may attend; `None`: plain causal), without a cache: for scoring a [`crate::PairBatch`] (packed
    /// sequences in which several responses share one prompt, or plain rows). With `last_layer`, the last layer runs
    /// only at its positions and the result is `[batch, width, hidden]`.
    fn forward_rows(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        mask: Option<&Tensor>,
        last_layer: Option<&crate::logprobs::LastLayerRows>,
    ) -> Tensor;
    fn num_layers(&self) -> usize;
    fn hidden_size(&self) -> i64;
    /// The largest number of positions the model can represent, if it has a hard limit (GPT-2's learned positions).
    fn max_positions(&self) -> Option<i64> {
        None
    }
}

/// A backbone with a next-token head.
pub trait CausalLm: Backbone {
    /// Hidden states to logits `[.., vocab]`.
    fn lm_head(&self, hidden: &Tensor) -> Tensor;
    fn vocab_size(&self) -> i64;
    /// Logits `[batch, seq, vocab]`.
    fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, cache: Option<&mut KvCache>) -> Tensor {
        self.lm_head(&self.forward_hidden(input_ids, attention_mask, cache))
    }
}

/// Position ids `[batch, seq]` of the `seq` new tokens after `past` cached ones.
pub fn position_ids(attention_mask: Option<&Tensor>, batch: i64, seq: i64, past: i64, device: tch::Device) -> Tensor {
    match attention_mask {
        Some(m) => {
            let pos = (m.to_kind(Kind::Int64).cumsum(-1, Kind::Int64) - 1).clamp_min(0);
            let total = pos.size()[1];
            pos.narrow(1, total - seq, seq)
        }
        None => Tensor::arange_start(past, past + seq, (Kind::Int64, device)).unsqueeze(0).expand([batch, seq], true),
    }
}

/// Boolean attention mask `[batch, 1, seq, past + seq]` (true = may attend), or `None` when plain causal
/// attention without padding is exact (then SDPA's `is_causal` fast path is used).
///
/// Every query may always see itself: a padding query would otherwise see nothing and produce NaN, which would then
/// leak through `0 × NaN` into later layers even though its output is never used.
pub fn attention_mask_4d(attention_mask: Option<&Tensor>, seq: i64, past: i64, device: tch::Device) -> Option<Tensor> {
    let total = past + seq;
    let q = Tensor::arange_start(past, total, (Kind::Int64, device)).unsqueeze(1);
    let k = Tensor::arange(total, (Kind::Int64, device)).unsqueeze(0);
    let causal = k.le_tensor(&q); // [seq, total]
    match attention_mask {
        None if past == 0 => None,
        None => Some(causal.unsqueeze(0).unsqueeze(0)),
        Some(m) => {
            let valid = m.to_kind(Kind::Bool).unsqueeze(1).unsqueeze(1); // [b,1,1,total]
            let diag = k.eq_tensor(&q);
            Some(causal.unsqueeze(0).unsqueeze(0).logical_and(&valid).logical_or(&diag.unsqueeze(0).unsqueeze(0)))
        }
    }
}

/// Scaled dot-product attention over `[b, h, s, d]` tensors; `kv` heads are repeated for grouped-query attention
/// exactly like transformers' `repeat_kv` (query head `i` uses kv head `i / (h / kv)`).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, scale: f64) -> Tensor {
    let (h, hkv) = (q.size()[1], k.size()[1]);
    let (k, v) = if h == hkv {
        (k.shallow_clone(), v.shallow_clone())
    } else {
        let rep = h / hkv;
        let expand = |t: &Tensor| {
            let s = t.size();
            t.unsqueeze(2).expand([s[0], s[1], rep, s[2], s[3]], true).reshape([s[0], s[1] * rep, s[2], s[3]])
        };
        (expand(k), expand(v))
    };
    let is_causal = mask.is_none() && q.size()[2] == k.size()[2] && q.size()[2] > 1;
    Tensor::scaled_dot_product_attention(q, &k, &v, mask, 0.0, is_causal, Some(scale), false)
}

/// A model's parameters by their Hugging Face names, created as variables of a `VarStore` (so they are saved,
/// loaded and trained under those names). Biases and norm weights go to [`NO_DECAY_GROUP`].
#[derive(Debug, Default)]
pub struct ParamTable {
    map: HashMap<String, Tensor>,
}

impl ParamTable {
    /// Creates the variable `name` (dot-separated, relative to `root`).
    pub fn add(&mut self, root: &nn::Path, name: &str, shape: &[i64], init: nn::Init, decay: bool) {
        let (dir, leaf) = name.rsplit_once('.').unwrap_or(("", name));
        let mut p = root.set_group(0);
        for part in dir.split('.').filter(|s| !s.is_empty()) {
            p = &p / part;
        }
        let p = if decay { p } else { p.set_group(NO_DECAY_GROUP) };
        self.map.insert(name.to_string(), p.var(leaf, shape, init));
    }
    /// LayerNorm `weight` (ones) and `bias` (zeros) under `name`.
    pub fn layer_norm(&mut self, root: &nn::Path, name: &str, dim: i64) {
        self.add(root, &format!("{name}.weight"), &[dim], nn::Init::Const(1.0), false);
        self.add(root, &format!("{name}.bias"), &[dim], nn::Init::Const(0.0), false);
    }
    pub fn get(&self, name: &str) -> Option<Tensor> {
        self.map.get(name).map(|t| t.shallow_clone())
    }
    /// The parameter with a leading model dimension of one (a view, made at each call: a view made earlier would
    /// not follow the parameter when an optimizer moves its storage).
    pub fn get_as_batch(&self, name: &str) -> Option<Tensor> {
        self.map.get(name).map(|t| t.unsqueeze(0))
    }
}

/// An activation function, applied elementwise.
pub type Activation = fn(&Tensor) -> Tensor;

/// The activations by transformers' name: [`activation`] applies them, and a config naming another is refused
/// when it is read (`Gpt2Config::check`).
pub const ACTIVATIONS: [(&str, Activation); 7] = [
    ("gelu_new", |x| x.gelu("tanh")),
    ("gelu_pytorch_tanh", |x| x.gelu("tanh")),
    ("gelu_fast", |x| x.gelu("tanh")),
    ("gelu", |x| x.gelu("none")),
    ("relu", |x| x.relu()),
    ("silu", |x| x.silu()),
    ("swish", |x| x.silu()),
];

/// Activation by transformers' name (one of [`ACTIVATIONS`]; configs are checked when read).
pub fn activation(name: &str, x: &Tensor) -> Tensor {
    match ACTIVATIONS.iter().find(|(n, _)| *n == name) {
        Some((_, f)) => f(x),
        None => panic!("unsupported activation {name:?}"),
    }
}
