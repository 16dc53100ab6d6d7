//! Llama (Touvron et al. 2023), parameter for parameter as `transformers.LlamaForCausalLM`: RMSNorm, rotary
//! position embeddings (`rope_theta`, half-split "rotate_half" layout), grouped-query attention, SiLU-gated MLP and
//! optionally tied embeddings (SmolLM2 ties them).

use crate::config::LlamaConfig;
use crate::model::{
    Backbone, CausalLm, KvCache, Linear, RmsNorm, attention, attention_mask_4d, fp32_logits, position_ids,
};
use tch::{Kind, Tensor, nn};

/// `x·cos + rotate_half(x)·sin`, where `rotate_half` swaps the two halves of the head dimension (negating one).
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let x1 = x.narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    let rotated = Tensor::cat(&[x2.neg(), x1], 3);
    x * cos + rotated * sin
}

#[derive(Debug)]
struct Layer {
    input_layernorm: RmsNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    post_attention_layernorm: RmsNorm,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    n_head: i64,
    n_kv: i64,
    head_dim: i64,
}

impl Layer {
    fn new(p: &nn::Path, c: &LlamaConfig) -> Self {
        let (d, hd, std) = (c.hidden_size, c.head_dim(), c.initializer_range);
        let a = p / "self_attn";
        let m = p / "mlp";
        Layer {
            input_layernorm: RmsNorm::new(&(p / "input_layernorm"), d, c.rms_norm_eps),
            q_proj: Linear::new(&(&a / "q_proj"), d, c.num_attention_heads * hd, c.attention_bias, std),
            k_proj: Linear::new(&(&a / "k_proj"), d, c.kv_heads() * hd, c.attention_bias, std),
            v_proj: Linear::new(&(&a / "v_proj"), d, c.kv_heads() * hd, c.attention_bias, std),
            o_proj: Linear::new(&(&a / "o_proj"), c.num_attention_heads * hd, d, c.attention_bias, std),
            post_attention_layernorm: RmsNorm::new(&(p / "post_attention_layernorm"), d, c.rms_norm_eps),
            gate_proj: Linear::new(&(&m / "gate_proj"), d, c.intermediate_size, c.mlp_bias, std),
            up_proj: Linear::new(&(&m / "up_proj"), d, c.intermediate_size, c.mlp_bias, std),
            down_proj: Linear::new(&(&m / "down_proj"), c.intermediate_size, d, c.mlp_bias, std),
            n_head: c.num_attention_heads,
            n_kv: c.kv_heads(),
            head_dim: hd,
        }
    }

    fn forward(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor {
        let (b, t, _) = x.size3().unwrap();
        let h = self.input_layernorm.forward(x);
        let q = self.q_proj.forward(&h).view([b, t, self.n_head, self.head_dim]).transpose(1, 2);
        let k = self.k_proj.forward(&h).view([b, t, self.n_kv, self.head_dim]).transpose(1, 2);
        let v = self.v_proj.forward(&h).view([b, t, self.n_kv, self.head_dim]).transpose(1, 2);
        let q = apply_rope(&q, cos, sin);
        let mut k = apply_rope(&k, cos, sin);
        let mut v = v;
        if let Some((cache, i)) = cache {
            (k, v) = cache.update(i, k, v);
        }
        let y = attention(&q, &k, &v, mask, 1.0 / (self.head_dim as f64).sqrt());
        let y = y.transpose(1, 2).contiguous().view([b, t, self.n_head * self.head_dim]);
        let x = x + self.o_proj.forward(&y);
        let h = self.post_attention_layernorm.forward(&x);
        let m = self.down_proj.forward(&(self.gate_proj.forward(&h).silu() * self.up_proj.forward(&h)));
        x + m
    }
}

/// `LlamaForCausalLM`: parameters under `model.*`, plus `lm_head.weight` unless tied.
#[derive(Debug)]
pub struct Llama {
    embed_tokens: Tensor,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Option<Tensor>,
    inv_freq: Tensor,
    config: LlamaConfig,
}

impl Llama {
    /// Creates the parameters under `root` (`root/"model"/...`); `with_lm_head` is false for a reward model.
    pub fn new(root: &nn::Path, c: &LlamaConfig, with_lm_head: bool) -> Self {
        let p = root / "model";
        let init = nn::Init::Randn { mean: 0.0, stdev: c.initializer_range };
        let embed_tokens = (&p / "embed_tokens").var("weight", &[c.vocab_size, c.hidden_size], init);
        let layers = (0..c.num_hidden_layers).map(|i| Layer::new(&(&p / "layers" / i), c)).collect();
        let norm = RmsNorm::new(&(&p / "norm"), c.hidden_size, c.rms_norm_eps);
        let lm_head = (with_lm_head && !c.tie_word_embeddings)
            .then(|| (root / "lm_head").var("weight", &[c.vocab_size, c.hidden_size], init));
        // Same recipe and precision as transformers' default rotary embedding (fp32).
        let hd = c.head_dim();
        let exps = Tensor::arange_start_step(0, hd, 2, (Kind::Int64, root.device())).to_kind(Kind::Float) / hd as f64;
        let inv_freq =
            Tensor::from(c.rope_theta()).to_kind(Kind::Float).to_device(root.device()).pow(&exps).reciprocal();
        Llama { embed_tokens, layers, norm, lm_head, inv_freq, config: c.clone() }
    }
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }
    /// `cos`, `sin` of shape `[b, 1, t, head_dim]`, computed in fp32 like transformers and cast to `kind`.
    fn rope(&self, pos: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let freqs = pos.to_kind(Kind::Float).unsqueeze(-1) * self.inv_freq.to_device(pos.device()).view([1, 1, -1]);
        let emb = Tensor::cat(&[&freqs, &freqs], -1).unsqueeze(1);
        (emb.cos().to_kind(kind), emb.sin().to_kind(kind))
    }
}

impl Backbone for Llama {
    fn forward_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor {
        let (b, t) = input_ids.size2().unwrap();
        let past = cache.as_ref().map_or(0, |c| c.seq_len());
        let dev = input_ids.device();
        let pos = position_ids(attention_mask, b, t, past, dev);
        let mask = attention_mask_4d(attention_mask, t, past, dev);
        let mut x = Tensor::embedding(&self.embed_tokens, input_ids, -1, false, false);
        let (cos, sin) = self.rope(&pos, x.kind());
        for (i, layer) in self.layers.iter().enumerate() {
            x = layer.forward(&x, &cos, &sin, mask.as_ref(), cache.as_deref_mut().map(|c| (c, i)));
        }
        self.norm.forward(&x)
    }
    fn num_layers(&self) -> usize {
        self.layers.len()
    }
    fn hidden_size(&self) -> i64 {
        self.config.hidden_size
    }
}

impl CausalLm for Llama {
    fn lm_head(&self, hidden: &Tensor) -> Tensor {
        fp32_logits(hidden, self.lm_head.as_ref().unwrap_or(&self.embed_tokens))
    }
    fn vocab_size(&self) -> i64 {
        self.config.vocab_size
    }
}
