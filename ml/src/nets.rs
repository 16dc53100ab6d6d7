//! The arithmetic of GPT-2 and Llama, written once for K stacked models: every parameter has a leading model
//! dimension (`[K, ...]`), activations are `[K, rows, d]`, matrix products are batched (`baddbmm`/`bmm`) and
//! attention runs over `K·batch` sequences. A single model is the case K = 1 (`gpt2.rs`/`llama.rs` hand in their
//! parameters with a leading dimension of one), so one model trained alone and the same model trained inside a
//! batch of K compute bit for bit the same numbers (`ml/tests/batched.rs`).

use crate::config::{Gpt2Config, LlamaConfig};
use crate::model::{KvCache, activation, attention};
use tch::{Kind, Tensor};

/// `[K, rows, in]` · `[K, in, out]` + `[K, out]`: GPT-2's `Conv1D`, which stores its weight as `[in, out]`.
pub(crate) fn conv1d(x: &Tensor, w: &Tensor, b: &Tensor) -> Tensor {
    b.unsqueeze(1).baddbmm(x, w, 1.0, 1.0)
}

/// `nn.Linear` (weight `[K, out, in]`, optional bias `[K, out]`).
pub(crate) fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
    match b {
        Some(b) => b.unsqueeze(1).baddbmm(x, &w.transpose(1, 2), 1.0, 1.0),
        None => x.bmm(&w.transpose(1, 2)),
    }
}

/// LayerNorm over the last dimension with per-model weight and bias `[K, d]`.
pub(crate) fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Tensor {
    let d = *x.size().last().unwrap();
    let xhat = x.layer_norm([d], None::<&Tensor>, None::<&Tensor>, eps, true);
    b.unsqueeze(1).addcmul(&xhat, &w.unsqueeze(1))
}

/// RMSNorm computed in fp32 and cast back, as transformers' `LlamaRMSNorm`, with per-model weight `[K, d]`.
pub(crate) fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Tensor {
    let kind = x.kind();
    let xf = x.to_kind(Kind::Float);
    let var = xf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
    let y = (xf * (var + eps).rsqrt()).to_kind(kind);
    w.unsqueeze(1) * y
}

/// Rows of per-model embedding tables `[K, vocab, d]` for ids `[K, rows]` → `[K, rows, d]`.
pub(crate) fn embed(w: &Tensor, ids: &Tensor) -> Tensor {
    let (k, _, d) = w.size3().unwrap();
    let n = ids.size()[1];
    w.gather(1, &ids.reshape([k, n, 1]).expand([k, n, d], false), false)
}

/// `hidden · Wᵀ` per model (`[K, rows, d]` · `[K, out, d]`ᵀ → `[K, rows, out]`) in fp32 even under bf16 autocast:
/// policy/reference log-ratios are small differences of large log-probs (and reward differences are what
/// distillation regresses on), and bf16 logits (≈3 significant digits) would drown them.
pub(crate) fn head_logits(hidden: &Tensor, w: &Tensor) -> Tensor {
    let f = || hidden.to_kind(Kind::Float).bmm(&w.to_kind(Kind::Float).transpose(1, 2));
    if hidden.device().is_cuda() { tch::autocast(false, f) } else { f() }
}

/// One forward call: token ids `[K, B, T]`, position ids `[K, B, T]`, a boolean attention mask
/// `[K·B, 1, T, past + T]` (true = may attend) or `None` for plain causal attention, and optionally the positions
/// at which the last layer runs (`crate::logprobs::LastLayerRows`).
pub(crate) struct Inputs<'a> {
    pub ids: &'a Tensor,
    pub pos: &'a Tensor,
    pub mask: Option<&'a Tensor>,
    pub tail: Option<Tail<'a>>,
}

/// The last layer only at some positions: `index` flat into `[B·T]` and `mask` `[B, 1, width, T]`, the same for
/// every model (`index` `[B·width]`); or per model (`index` `[K, B·width]`, `mask` `[K·B, 1, width, T]`).
pub(crate) struct Tail<'a> {
    pub index: &'a Tensor,
    pub mask: &'a Tensor,
    pub width: i64,
}

impl Tail<'_> {
    fn per_model(&self) -> bool {
        self.index.dim() == 2
    }
    /// The mask for `k` models.
    fn mask_for(&self, k: i64) -> Tensor {
        let s = self.mask.size();
        if k == 1 || self.per_model() {
            return self.mask.shallow_clone();
        }
        self.mask.unsqueeze(0).expand([k, s[0], s[1], s[2], s[3]], false).reshape([k * s[0], s[1], s[2], s[3]])
    }
    /// The tail's rows of `x` `[K, B·T, ...]` → `[K, B·width, ...]`.
    fn select(&self, x: &Tensor) -> Tensor {
        select_rows(x, self.index)
    }
}

/// Rows `index` of `x` `[K, n, ...]` along dimension 1: the same rows for every model (`index` `[m]`) or each
/// model its own (`index` `[K, m]`).
pub(crate) fn select_rows(x: &Tensor, index: &Tensor) -> Tensor {
    if index.dim() == 1 {
        return x.index_select(1, index);
    }
    let mut shape = x.size();
    shape[1] = index.size()[1];
    let mut idx = index.shallow_clone();
    for _ in 2..shape.len() {
        idx = idx.unsqueeze(-1);
    }
    x.gather(1, &idx.expand(shape.as_slice(), false), false)
}

/// A parameter by its Hugging Face name, `[K, ...]`; `None` if the model has no such parameter.
pub(crate) type Params<'a> = &'a dyn Fn(&str) -> Option<Tensor>;

fn req(p: Params, name: &str) -> Tensor {
    p(name).unwrap_or_else(|| panic!("model has no parameter {name}"))
}

/// GPT-2 as `transformers.GPT2LMHeadModel` computes it.
pub(crate) struct Gpt2Net {
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Gpt2Block>,
    ln_f: (Tensor, Tensor),
    lm_head: Option<Tensor>,
    c: Gpt2Config,
}

struct Gpt2Block {
    ln_1: (Tensor, Tensor),
    c_attn: (Tensor, Tensor),
    attn_proj: (Tensor, Tensor),
    ln_2: (Tensor, Tensor),
    c_fc: (Tensor, Tensor),
    mlp_proj: (Tensor, Tensor),
    scale: f64,
}

impl Gpt2Net {
    pub(crate) fn new(p: Params, c: &Gpt2Config) -> Self {
        let pair = |n: &str| (req(p, &format!("{n}.weight")), req(p, &format!("{n}.bias")));
        let blocks = (0..c.n_layer)
            .map(|i| {
                let h = format!("transformer.h.{i}");
                let mut scale = if c.scale_attn_weights { 1.0 / ((c.n_embd / c.n_head) as f64).sqrt() } else { 1.0 };
                if c.scale_attn_by_inverse_layer_idx {
                    scale /= (i + 1) as f64;
                }
                Gpt2Block {
                    ln_1: pair(&format!("{h}.ln_1")),
                    c_attn: pair(&format!("{h}.attn.c_attn")),
                    attn_proj: pair(&format!("{h}.attn.c_proj")),
                    ln_2: pair(&format!("{h}.ln_2")),
                    c_fc: pair(&format!("{h}.mlp.c_fc")),
                    mlp_proj: pair(&format!("{h}.mlp.c_proj")),
                    scale,
                }
            })
            .collect();
        Gpt2Net {
            wte: req(p, "transformer.wte.weight"),
            wpe: req(p, "transformer.wpe.weight"),
            blocks,
            ln_f: pair("transformer.ln_f"),
            lm_head: p("lm_head.weight"),
            c: c.clone(),
        }
    }

    /// Final hidden states `[K, B, T, d]` (after `ln_f`), or `[K, B, width, d]` with a tail.
    // `x = x + f(x)`, not `x += f(x)`: an in-place add would overwrite what autograd saved for the backward pass
    #[allow(clippy::assign_op_pattern)]
    pub(crate) fn run(&self, inp: &Inputs, mut cache: Option<&mut KvCache>) -> Tensor {
        let (k, b, t) = inp.ids.size3().unwrap();
        let (d, nh) = (self.c.n_embd, self.c.n_head);
        let eps = self.c.layer_norm_epsilon;
        let mut x = embed(&self.wte, &inp.ids.reshape([k, -1])) + embed(&self.wpe, &inp.pos.reshape([k, -1]));
        let last = self.blocks.len() - 1;
        for (i, blk) in self.blocks.iter().enumerate() {
            if let (Some(tail), true) = (&inp.tail, i == last) {
                // keys and values everywhere, the rest of the layer only at the tail's positions
                let h = layer_norm(&x, &blk.ln_1.0, &blk.ln_1.1, eps);
                let (w, bias) = &blk.c_attn;
                let kv = conv1d(&h, &w.narrow(2, d, 2 * d), &bias.narrow(1, d, 2 * d)).view([k * b, t, 2 * d]);
                let q = conv1d(&tail.select(&h), &w.narrow(2, 0, d), &bias.narrow(1, 0, d));
                let width = tail.width;
                let q = q.view([k * b, width, nh, d / nh]).transpose(1, 2);
                let parts = kv.split(d, -1);
                let heads = |u: &Tensor| u.view([k * b, t, nh, d / nh]).transpose(1, 2);
                let mask = tail.mask_for(k);
                let y = attention(&q, &heads(&parts[0]), &heads(&parts[1]), Some(&mask), blk.scale);
                let y = y.transpose(1, 2).contiguous().view([k, b * width, d]);
                let x = tail.select(&x) + conv1d(&y, &blk.attn_proj.0, &blk.attn_proj.1);
                let h = layer_norm(&x, &blk.ln_2.0, &blk.ln_2.1, eps);
                let h = activation(&self.c.activation_function, &conv1d(&h, &blk.c_fc.0, &blk.c_fc.1));
                let x = x + conv1d(&h, &blk.mlp_proj.0, &blk.mlp_proj.1);
                return layer_norm(&x, &self.ln_f.0, &self.ln_f.1, eps).view([k, b, width, d]);
            }
            let h = layer_norm(&x, &blk.ln_1.0, &blk.ln_1.1, eps);
            let qkv = conv1d(&h, &blk.c_attn.0, &blk.c_attn.1).view([k * b, t, 3 * d]);
            let parts = qkv.split(d, -1);
            let heads = |u: &Tensor| u.view([k * b, t, nh, d / nh]).transpose(1, 2);
            let (q, mut kk, mut v) = (heads(&parts[0]), heads(&parts[1]), heads(&parts[2]));
            if let Some(c) = cache.as_deref_mut() {
                (kk, v) = c.update(i, kk, v);
            }
            let y = attention(&q, &kk, &v, inp.mask, blk.scale).transpose(1, 2).contiguous().view([k, b * t, d]);
            x = x + conv1d(&y, &blk.attn_proj.0, &blk.attn_proj.1);
            let h = layer_norm(&x, &blk.ln_2.0, &blk.ln_2.1, eps);
            let h = activation(&self.c.activation_function, &conv1d(&h, &blk.c_fc.0, &blk.c_fc.1));
            x = x + conv1d(&h, &blk.mlp_proj.0, &blk.mlp_proj.1);
        }
        layer_norm(&x, &self.ln_f.0, &self.ln_f.1, eps).view([k, b, t, d])
    }

    /// The LM head's weight `[K, vocab, d]` (the token embeddings when tied).
    pub(crate) fn head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.wte)
    }
    pub(crate) fn num_layers(&self) -> usize {
        self.blocks.len()
    }
}

/// `1 / rope_theta^(2i/head_dim)`, in fp32 like transformers' default rotary embedding.
pub(crate) fn rope_inv_freq(c: &LlamaConfig, device: tch::Device) -> Tensor {
    let hd = c.head_dim();
    let exps = Tensor::arange_start_step(0, hd, 2, (Kind::Int64, device)).to_kind(Kind::Float) / hd as f64;
    Tensor::from(c.rope_theta()).to_kind(Kind::Float).to_device(device).pow(&exps).reciprocal()
}

/// Llama as `transformers.LlamaForCausalLM` computes it: RMSNorm, rotary positions (half-split "rotate_half"
/// layout), grouped-query attention, SiLU-gated MLP.
pub(crate) struct LlamaNet {
    embed_tokens: Tensor,
    layers: Vec<LlamaLayer>,
    norm: Tensor,
    lm_head: Option<Tensor>,
    inv_freq: Tensor,
    c: LlamaConfig,
}

type Lin = (Tensor, Option<Tensor>);

struct LlamaLayer {
    input_layernorm: Tensor,
    q: Lin,
    k: Lin,
    v: Lin,
    o: Lin,
    post_attention_layernorm: Tensor,
    gate: Lin,
    up: Lin,
    down: Lin,
}

impl LlamaNet {
    pub(crate) fn new(p: Params, c: &LlamaConfig, inv_freq: &Tensor) -> Self {
        let lin = |n: &str| (req(p, &format!("{n}.weight")), p(&format!("{n}.bias")));
        let layers = (0..c.num_hidden_layers)
            .map(|i| {
                let l = format!("model.layers.{i}");
                LlamaLayer {
                    input_layernorm: req(p, &format!("{l}.input_layernorm.weight")),
                    q: lin(&format!("{l}.self_attn.q_proj")),
                    k: lin(&format!("{l}.self_attn.k_proj")),
                    v: lin(&format!("{l}.self_attn.v_proj")),
                    o: lin(&format!("{l}.self_attn.o_proj")),
                    post_attention_layernorm: req(p, &format!("{l}.post_attention_layernorm.weight")),
                    gate: lin(&format!("{l}.mlp.gate_proj")),
                    up: lin(&format!("{l}.mlp.up_proj")),
                    down: lin(&format!("{l}.mlp.down_proj")),
                }
            })
            .collect();
        LlamaNet {
            embed_tokens: req(p, "model.embed_tokens.weight"),
            layers,
            norm: req(p, "model.norm.weight"),
            lm_head: p("lm_head.weight"),
            inv_freq: inv_freq.shallow_clone(),
            c: c.clone(),
        }
    }

    /// Final hidden states `[K, B, T, d]` (after the last norm), or `[K, B, width, d]` with a tail.
    // `x = x + f(x)`, not `x += f(x)`: an in-place add would overwrite what autograd saved for the backward pass
    #[allow(clippy::assign_op_pattern)]
    pub(crate) fn run(&self, inp: &Inputs, mut cache: Option<&mut KvCache>) -> Tensor {
        let (k, b, t) = inp.ids.size3().unwrap();
        let c = &self.c;
        let (nh, nkv, hd, d) = (c.num_attention_heads, c.kv_heads(), c.head_dim(), c.hidden_size);
        let eps = c.rms_norm_eps;
        let mut x = embed(&self.embed_tokens, &inp.ids.reshape([k, -1]));
        // cos, sin `[K·B, 1, T, head_dim]`, computed in fp32 like transformers and cast to the activations' kind
        let inv = self.inv_freq.to_device(x.device());
        let freqs = inp.pos.reshape([k * b, t]).to_kind(Kind::Float).unsqueeze(-1) * inv.view([1, 1, -1]);
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        let (cos, sin) = (emb.cos().to_kind(x.kind()), emb.sin().to_kind(x.kind()));
        // x·cos + rotate_half(x)·sin, rotate_half swapping the halves of the head dimension (negating one)
        let rope_with = |u: &Tensor, cos: &Tensor, sin: &Tensor| {
            let half = hd / 2;
            let rotated = Tensor::cat(&[u.narrow(3, half, half).neg(), u.narrow(3, 0, half)], 3);
            u * cos + rotated * sin
        };
        let rope = |u: &Tensor| rope_with(u, &cos, &sin);
        let last = self.layers.len() - 1;
        for (i, l) in self.layers.iter().enumerate() {
            if let (Some(tail), true) = (&inp.tail, i == last) {
                // keys and values everywhere, the rest of the layer only at the tail's positions
                let width = tail.width;
                let h = rms_norm(&x, &l.input_layernorm, eps);
                let kv_heads = |p: &Lin| linear(&h, &p.0, p.1.as_ref()).view([k * b, t, nkv, hd]).transpose(1, 2);
                let (kk, v) = (rope(&kv_heads(&l.k)), kv_heads(&l.v));
                let hq = tail.select(&h);
                let q = linear(&hq, &l.q.0, l.q.1.as_ref()).view([k * b, width, nh, hd]).transpose(1, 2);
                let pos_q = tail.select(&inp.pos.reshape([k, -1])).reshape([k * b, width]);
                let fq = pos_q.to_kind(Kind::Float).unsqueeze(-1) * inv.view([1, 1, -1]);
                let eq = Tensor::cat(&[&fq, &fq], -1).unsqueeze(1);
                let q = rope_with(&q, &eq.cos().to_kind(x.kind()), &eq.sin().to_kind(x.kind()));
                let mask = tail.mask_for(k);
                let y = attention(&q, &kk, &v, Some(&mask), 1.0 / (hd as f64).sqrt());
                let y = y.transpose(1, 2).contiguous().view([k, b * width, nh * hd]);
                let x = tail.select(&x) + linear(&y, &l.o.0, l.o.1.as_ref());
                let h = rms_norm(&x, &l.post_attention_layernorm, eps);
                let g = linear(&h, &l.gate.0, l.gate.1.as_ref()).silu() * linear(&h, &l.up.0, l.up.1.as_ref());
                let x = x + linear(&g, &l.down.0, l.down.1.as_ref());
                return rms_norm(&x, &self.norm, eps).view([k, b, width, d]);
            }
            let h = rms_norm(&x, &l.input_layernorm, eps);
            let heads = |p: &Lin, n: i64| linear(&h, &p.0, p.1.as_ref()).view([k * b, t, n, hd]).transpose(1, 2);
            let q = rope(&heads(&l.q, nh));
            let (mut kk, mut v) = (rope(&heads(&l.k, nkv)), heads(&l.v, nkv));
            if let Some(cc) = cache.as_deref_mut() {
                (kk, v) = cc.update(i, kk, v);
            }
            let y = attention(&q, &kk, &v, inp.mask, 1.0 / (hd as f64).sqrt());
            let y = y.transpose(1, 2).contiguous().view([k, b * t, nh * hd]);
            x = x + linear(&y, &l.o.0, l.o.1.as_ref());
            let h = rms_norm(&x, &l.post_attention_layernorm, eps);
            let g = linear(&h, &l.gate.0, l.gate.1.as_ref()).silu() * linear(&h, &l.up.0, l.up.1.as_ref());
            x = x + linear(&g, &l.down.0, l.down.1.as_ref());
        }
        rms_norm(&x, &self.norm, eps).view([k, b, t, d])
    }

    pub(crate) fn head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }
    pub(crate) fn num_layers(&self) -> usize {
        self.layers.len()
    }
}

/// Either architecture.
pub(crate) enum Net {
    Gpt2(Gpt2Net),
    Llama(LlamaNet),
}

impl Net {
    pub(crate) fn run(&self, inp: &Inputs, cache: Option<&mut KvCache>) -> Tensor {
        match self {
            Net::Gpt2(n) => n.run(inp, cache),
            Net::Llama(n) => n.run(inp, cache),
        }
    }
    pub(crate) fn head_weight(&self) -> &Tensor {
        match self {
            Net::Gpt2(n) => n.head_weight(),
            Net::Llama(n) => n.head_weight(),
        }
    }
    pub(crate) fn num_layers(&self) -> usize {
        match self {
            Net::Gpt2(n) => n.num_layers(),
            Net::Llama(n) => n.num_layers(),
        }
    }
    /// GPT-2's learned positions are a hard limit; rotary positions are not.
    pub(crate) fn max_positions(&self) -> Option<i64> {
        match self {
            Net::Gpt2(n) => Some(n.c.n_positions),
            Net::Llama(_) => None,
        }
    }
}
