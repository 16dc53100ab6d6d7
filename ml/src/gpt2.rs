//! GPT-2 (Radford et al. 2019), parameter for parameter as `transformers.GPT2LMHeadModel`: learned positions,
//! pre-LayerNorm blocks, fused `c_attn` projection stored as a `Conv1D` (weight `[in, out]`), tanh-GELU MLP and an
//! LM head tied to the token embeddings.

use crate::config::Gpt2Config;
use crate::model::{
    Backbone, CausalLm, KvCache, LayerNorm, activation, attention, attention_mask_4d, fp32_logits, position_ids,
};
use tch::{Tensor, nn};

/// transformers' `Conv1D`: a linear layer whose weight is stored transposed (`[in, out]`).
#[derive(Debug)]
struct Conv1D {
    weight: Tensor,
    bias: Tensor,
}

impl Conv1D {
    fn new(p: &nn::Path, nx: i64, nf: i64, std: f64) -> Self {
        Conv1D {
            weight: p.var("weight", &[nx, nf], nn::Init::Randn { mean: 0.0, stdev: std }),
            bias: p.set_group(crate::model::NO_DECAY_GROUP).var("bias", &[nf], nn::Init::Const(0.0)),
        }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        x.matmul(&self.weight) + &self.bias
    }
}

#[derive(Debug)]
struct Block {
    ln_1: LayerNorm,
    c_attn: Conv1D,
    attn_proj: Conv1D,
    ln_2: LayerNorm,
    c_fc: Conv1D,
    mlp_proj: Conv1D,
    n_head: i64,
    scale: f64,
    act: String,
}

impl Block {
    fn new(p: &nn::Path, c: &Gpt2Config, layer: i64) -> Self {
        let d = c.n_embd;
        let std = c.initializer_range;
        // GPT-2 scales the residual projections by 1/sqrt(2·n_layer) at init.
        let proj_std = std / (2.0 * c.n_layer as f64).sqrt();
        let mut scale = if c.scale_attn_weights { 1.0 / ((d / c.n_head) as f64).sqrt() } else { 1.0 };
        if c.scale_attn_by_inverse_layer_idx {
            scale /= (layer + 1) as f64;
        }
        Block {
            ln_1: LayerNorm::new(&(p / "ln_1"), d, c.layer_norm_epsilon),
            c_attn: Conv1D::new(&(p / "attn" / "c_attn"), d, 3 * d, std),
            attn_proj: Conv1D::new(&(p / "attn" / "c_proj"), d, d, proj_std),
            ln_2: LayerNorm::new(&(p / "ln_2"), d, c.layer_norm_epsilon),
            c_fc: Conv1D::new(&(p / "mlp" / "c_fc"), d, c.inner_dim(), std),
            mlp_proj: Conv1D::new(&(p / "mlp" / "c_proj"), c.inner_dim(), d, proj_std),
            n_head: c.n_head,
            scale,
            act: c.activation_function.clone(),
        }
    }

    fn forward(&self, x: &Tensor, mask: Option<&Tensor>, cache: Option<(&mut KvCache, usize)>) -> Tensor {
        let (b, t, d) = x.size3().unwrap();
        let hd = d / self.n_head;
        let qkv = self.c_attn.forward(&self.ln_1.forward(x));
        let heads = |t_: &Tensor| t_.view([b, t, self.n_head, hd]).transpose(1, 2);
        let parts = qkv.split(d, -1);
        let (q, mut k, mut v) = (heads(&parts[0]), heads(&parts[1]), heads(&parts[2]));
        if let Some((cache, i)) = cache {
            (k, v) = cache.update(i, k, v);
        }
        let y = attention(&q, &k, &v, mask, self.scale).transpose(1, 2).contiguous().view([b, t, d]);
        let x = x + self.attn_proj.forward(&y);
        let h = activation(&self.act, &self.c_fc.forward(&self.ln_2.forward(&x)));
        &x + self.mlp_proj.forward(&h)
    }
}

/// `GPT2LMHeadModel`: parameters live under `transformer.*` (plus `lm_head.weight` only when untied).
#[derive(Debug)]
pub struct Gpt2 {
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    lm_head: Option<Tensor>,
    config: Gpt2Config,
}

impl Gpt2 {
    /// Creates the parameters under `root` (`root/"transformer"/...`); `with_lm_head` is false for a reward model.
    pub fn new(root: &nn::Path, c: &Gpt2Config, with_lm_head: bool) -> Self {
        let p = root / "transformer";
        let init = nn::Init::Randn { mean: 0.0, stdev: c.initializer_range };
        let wte = (&p / "wte").var("weight", &[c.vocab_size, c.n_embd], init);
        let wpe = (&p / "wpe").var("weight", &[c.n_positions, c.n_embd], nn::Init::Randn { mean: 0.0, stdev: 0.01 });
        let blocks = (0..c.n_layer).map(|i| Block::new(&(&p / "h" / i), c, i)).collect();
        let ln_f = LayerNorm::new(&(&p / "ln_f"), c.n_embd, c.layer_norm_epsilon);
        let lm_head = (with_lm_head && !c.tie_word_embeddings)
            .then(|| (root / "lm_head").var("weight", &[c.vocab_size, c.n_embd], init));
        Gpt2 { wte, wpe, blocks, ln_f, lm_head, config: c.clone() }
    }
    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }
}

impl Backbone for Gpt2 {
    fn forward_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        mut cache: Option<&mut KvCache>,
    ) -> Tensor {
        let (b, t) = input_ids.size2().unwrap();
        let past = cache.as_ref().map_or(0, |c| c.seq_len());
        // Learned positions are a hard limit; say so instead of failing inside an embedding lookup.
        assert!(
            past + t <= self.config.n_positions,
            "GPT-2 sequence of {} tokens exceeds n_positions = {} (truncate, e.g. PairBatch max_len)",
            past + t,
            self.config.n_positions
        );
        let dev = input_ids.device();
        let pos = position_ids(attention_mask, b, t, past, dev);
        let mask = attention_mask_4d(attention_mask, t, past, dev);
        let mut x = Tensor::embedding(&self.wte, input_ids, -1, false, false)
            + Tensor::embedding(&self.wpe, &pos, -1, false, false);
        for (i, blk) in self.blocks.iter().enumerate() {
            x = blk.forward(&x, mask.as_ref(), cache.as_deref_mut().map(|c| (c, i)));
        }
        self.ln_f.forward(&x)
    }
    fn num_layers(&self) -> usize {
        self.blocks.len()
    }
    fn hidden_size(&self) -> i64 {
        self.config.n_embd
    }
}

impl CausalLm for Gpt2 {
    fn lm_head(&self, hidden: &Tensor) -> Tensor {
        fp32_logits(hidden, self.lm_head.as_ref().unwrap_or(&self.wte))
    }
    fn vocab_size(&self) -> i64 {
        self.config.vocab_size
    }
}
