//! Llama (Touvron et al. 2023), parameter for parameter as `transformers.LlamaForCausalLM`: RMSNorm, rotary
//! position embeddings (`rope_theta`, half-split "rotate_half" layout), grouped-query attention, SiLU-gated MLP and
//! optionally tied embeddings (SmolLM2 ties them). This file creates the parameters; the arithmetic is
//! `nets::LlamaNet`, shared with the batched models.

use crate::config::LlamaConfig;
use crate::gpt2::head_logits_any;
use crate::logprobs::LastLayerRows;
use crate::model::{Backbone, CausalLm, KvCache, ParamTable, attention_mask_4d, position_ids};
use crate::nets::{Inputs, LlamaNet, Tail, rope_inv_freq};
use tch::{Tensor, nn};

/// `LlamaForCausalLM`: parameters under `model.*`, plus `lm_head.weight` unless tied.
#[derive(Debug)]
pub struct Llama {
    params: ParamTable,
    inv_freq: Tensor,
    config: LlamaConfig,
}

impl Llama {
    /// Creates the parameters under `root` (`root/"model"/...`); `with_lm_head` is false for a reward model.
    pub fn new(root: &nn::Path, c: &LlamaConfig, with_lm_head: bool) -> Self {
        let mut t = ParamTable::default();
        let init = nn::Init::Randn { mean: 0.0, stdev: c.initializer_range };
        let (d, hd, ff) = (c.hidden_size, c.head_dim(), c.intermediate_size);
        t.add(root, "model.embed_tokens.weight", &[c.vocab_size, d], init, true);
        let linear = |t: &mut ParamTable, name: String, out: i64, inp: i64, bias: bool| {
            t.add(root, &format!("{name}.weight"), &[out, inp], init, true);
            if bias {
                t.add(root, &format!("{name}.bias"), &[out], nn::Init::Const(0.0), false);
            }
        };
        for i in 0..c.num_hidden_layers {
            let l = format!("model.layers.{i}");
            t.add(root, &format!("{l}.input_layernorm.weight"), &[d], nn::Init::Const(1.0), false);
            let (nq, nkv) = (c.num_attention_heads * hd, c.kv_heads() * hd);
            linear(&mut t, format!("{l}.self_attn.q_proj"), nq, d, c.attention_bias);
            linear(&mut t, format!("{l}.self_attn.k_proj"), nkv, d, c.attention_bias);
            linear(&mut t, format!("{l}.self_attn.v_proj"), nkv, d, c.attention_bias);
            linear(&mut t, format!("{l}.self_attn.o_proj"), d, nq, c.attention_bias);
            t.add(root, &format!("{l}.post_attention_layernorm.weight"), &[d], nn::Init::Const(1.0), false);
            linear(&mut t, format!("{l}.mlp.gate_proj"), ff, d, c.mlp_bias);
            linear(&mut t, format!("{l}.mlp.up_proj"), ff, d, c.mlp_bias);
            linear(&mut t, format!("{l}.mlp.down_proj"), d, ff, c.mlp_bias);
        }
        t.add(root, "model.norm.weight", &[d], nn::Init::Const(1.0), false);
        if with_lm_head && !c.tie_word_embeddings {
            t.add(root, "lm_head.weight", &[c.vocab_size, d], init, true);
        }
        Llama { params: t, inv_freq: rope_inv_freq(c, root.device()), config: c.clone() }
    }
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }
    /// The shared arithmetic over this model's parameters as a batch of one.
    fn net(&self) -> LlamaNet {
        LlamaNet::new(&|n| self.params.get_as_batch(n), &self.config, &self.inv_freq)
    }
    fn run(&self, input_ids: &Tensor, pos: &Tensor, mask: Option<&Tensor>, cache: Option<&mut KvCache>) -> Tensor {
        let inp = Inputs { ids: &input_ids.unsqueeze(0), pos: &pos.unsqueeze(0), mask, tail: None };
        self.net().run(&inp, cache).squeeze_dim(0)
    }
}

impl Backbone for Llama {
    fn forward_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Tensor {
        let (b, t) = input_ids.size2().unwrap();
        let past = cache.as_ref().map_or(0, |c| c.seq_len());
        let dev = input_ids.device();
        let pos = position_ids(attention_mask, b, t, past, dev);
        let mask = attention_mask_4d(attention_mask, t, past, dev);
        self.run(input_ids, &pos, mask.as_ref(), cache)
    }
    fn forward_rows(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        mask: Option<&Tensor>,
        last_layer: Option<&LastLayerRows>,
    ) -> Tensor {
        let tail = last_layer.map(|l| Tail { index: &l.index, mask: &l.mask, width: l.width });
        let inp = Inputs { ids: &input_ids.unsqueeze(0), pos: &position_ids.unsqueeze(0), mask, tail };
        self.net().run(&inp, None).squeeze_dim(0)
    }
    fn num_layers(&self) -> usize {
        self.config.num_hidden_layers as usize
    }
    fn hidden_size(&self) -> i64 {
        self.config.hidden_size
    }
}

impl CausalLm for Llama {
    fn lm_head(&self, hidden: &Tensor) -> Tensor {
        let w = self.params.get("lm_head.weight").or_else(|| self.params.get("model.embed_tokens.weight")).unwrap();
        head_logits_any(hidden, &w)
    }
    fn vocab_size(&self) -> i64 {
        self.config.vocab_size
    }
}
