//! GPT-2 (Radford et al. 2019), parameter for parameter as `transformers.GPT2LMHeadModel`: learned positions,
//! pre-LayerNorm blocks, fused `c_attn` projection stored as a `Conv1D` (weight `[in, out]`), tanh-GELU MLP and an
//! LM head tied to the token embeddings. This file creates the parameters (names, shapes, transformers' init); the
//! arithmetic is `nets::Gpt2Net`, shared with the batched models.

use crate::config::Gpt2Config;
use crate::logprobs::LastLayerRows;
use crate::model::{Backbone, CausalLm, KvCache, ParamTable, attention_mask_4d, position_ids};
use crate::nets::{Gpt2Net, Inputs, Tail, head_logits};
use tch::{Tensor, nn};

/// `GPT2LMHeadModel`: parameters live under `transformer.*` (plus `lm_head.weight` only when untied).
#[derive(Debug)]
pub struct Gpt2 {
    params: ParamTable,
    config: Gpt2Config,
}

impl Gpt2 {
    /// Creates the parameters under `root` (`root/"transformer"/...`); `with_lm_head` is false for a reward model.
    pub fn new(root: &nn::Path, c: &Gpt2Config, with_lm_head: bool) -> Self {
        let mut t = ParamTable::default();
        let init = nn::Init::Randn { mean: 0.0, stdev: c.initializer_range };
        let zero = nn::Init::Const(0.0);
        let (d, ff) = (c.n_embd, c.inner_dim());
        // GPT-2 scales the residual projections by 1/sqrt(2·n_layer) at init.
        let proj = nn::Init::Randn { mean: 0.0, stdev: c.initializer_range / (2.0 * c.n_layer as f64).sqrt() };
        t.add(root, "transformer.wte.weight", &[c.vocab_size, d], init, true);
        t.add(root, "transformer.wpe.weight", &[c.n_positions, d], nn::Init::Randn { mean: 0.0, stdev: 0.01 }, true);
        for i in 0..c.n_layer {
            let h = format!("transformer.h.{i}");
            t.layer_norm(root, &format!("{h}.ln_1"), d);
            t.add(root, &format!("{h}.attn.c_attn.weight"), &[d, 3 * d], init, true);
            t.add(root, &format!("{h}.attn.c_attn.bias"), &[3 * d], zero, false);
            t.add(root, &format!("{h}.attn.c_proj.weight"), &[d, d], proj, true);
            t.add(root, &format!("{h}.attn.c_proj.bias"), &[d], zero, false);
            t.layer_norm(root, &format!("{h}.ln_2"), d);
            t.add(root, &format!("{h}.mlp.c_fc.weight"), &[d, ff], init, true);
            t.add(root, &format!("{h}.mlp.c_fc.bias"), &[ff], zero, false);
            t.add(root, &format!("{h}.mlp.c_proj.weight"), &[ff, d], proj, true);
            t.add(root, &format!("{h}.mlp.c_proj.bias"), &[d], zero, false);
        }
        t.layer_norm(root, "transformer.ln_f", d);
        if with_lm_head && !c.tie_word_embeddings {
            t.add(root, "lm_head.weight", &[c.vocab_size, d], init, true);
        }
        Gpt2 { params: t, config: c.clone() }
    }
    pub fn config(&self) -> &Gpt2Config {
        &self.config
    }
    /// The shared arithmetic over this model's parameters as a batch of one.
    fn net(&self) -> Gpt2Net {
        Gpt2Net::new(&|n| self.params.get_as_batch(n), &self.config)
    }
    fn run(&self, input_ids: &Tensor, pos: &Tensor, mask: Option<&Tensor>, cache: Option<&mut KvCache>) -> Tensor {
        let inp = Inputs { ids: &input_ids.unsqueeze(0), pos: &pos.unsqueeze(0), mask, tail: None };
        self.net().run(&inp, cache).squeeze_dim(0)
    }
}

impl Backbone for Gpt2 {
    fn forward_hidden(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
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
        self.config.n_layer as usize
    }
    fn hidden_size(&self) -> i64 {
        self.config.n_embd
    }
    fn max_positions(&self) -> Option<i64> {
        Some(self.config.n_positions)
    }
}

impl CausalLm for Gpt2 {
    fn lm_head(&self, hidden: &Tensor) -> Tensor {
        let w = self.params.get("lm_head.weight").or_else(|| self.params.get("transformer.wte.weight")).unwrap();
        head_logits_any(hidden, &w)
    }
    fn vocab_size(&self) -> i64 {
        self.config.vocab_size
    }
}

/// [`head_logits`] for hidden states of any leading shape `[.., d]` and one model's weight `[out, d]`.
pub(crate) fn head_logits_any(hidden: &Tensor, w: &Tensor) -> Tensor {
    let mut shape = hidden.size();
    let d = shape.pop().unwrap();
    let out = head_logits(&hidden.reshape([1, -1, d]), &w.unsqueeze(0));
    shape.push(w.size()[0]);
    out.view(shape.as_slice())
}
