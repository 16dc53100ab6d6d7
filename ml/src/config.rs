//! Model configurations read from (and written back to) Hugging Face `config.json` files.
//!
//! Keys this crate does not use are kept in `extra`, so a checkpoint that round-trips through rmdistill keeps
//! everything `transformers` put there.

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

fn default_gpt2_act() -> String {
    "gelu_new".into()
}
fn default_true() -> bool {
    true
}
fn default_ln_eps() -> f64 {
    1e-5
}
fn default_init_range() -> f64 {
    0.02
}

/// GPT-2 (`model_type: "gpt2"`), field names as in `transformers.GPT2Config`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Gpt2Config {
    pub vocab_size: i64,
    pub n_positions: i64,
    pub n_embd: i64,
    pub n_layer: i64,
    pub n_head: i64,
    /// Width of the MLP; `None` means 4 × `n_embd`, as in transformers.
    #[serde(default)]
    pub n_inner: Option<i64>,
    #[serde(default = "default_gpt2_act")]
    pub activation_function: String,
    #[serde(default = "default_ln_eps")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default = "default_true")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<i64>,
    #[serde(default)]
    pub eos_token_id: Option<i64>,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Gpt2Config {
    /// A fresh config for a model trained from scratch (extra keys filled as transformers would write them).
    pub fn new(vocab_size: i64, n_positions: i64, n_embd: i64, n_layer: i64, n_head: i64) -> Self {
        Gpt2Config {
            vocab_size,
            n_positions,
            n_embd,
            n_layer,
            n_head,
            n_inner: None,
            activation_function: default_gpt2_act(),
            layer_norm_epsilon: 1e-5,
            initializer_range: 0.02,
            scale_attn_weights: true,
            scale_attn_by_inverse_layer_idx: false,
            tie_word_embeddings: true,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            extra: Map::new(),
        }
    }
    pub fn inner_dim(&self) -> i64 {
        self.n_inner.unwrap_or(4 * self.n_embd)
    }
}

fn default_rms_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10000.0
}
fn default_silu() -> String {
    "silu".into()
}

/// Llama (`model_type: "llama"`; SmolLM2 is one), field names as in `transformers.LlamaConfig`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LlamaConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    /// Grouped-query attention; `None` means as many as `num_attention_heads`.
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// transformers ≥ 5 may move this into `rope_parameters`; see [`LlamaConfig::rope_theta`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub max_position_embeddings: Option<i64>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default = "default_silu")]
    pub hidden_act: String,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default)]
    pub bos_token_id: Option<i64>,
    #[serde(default)]
    pub eos_token_id: Option<i64>,
    #[serde(default)]
    pub pad_token_id: Option<i64>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl LlamaConfig {
    pub fn new(
        vocab_size: i64,
        hidden_size: i64,
        intermediate_size: i64,
        num_hidden_layers: i64,
        num_attention_heads: i64,
        num_key_value_heads: i64,
    ) -> Self {
        LlamaConfig {
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: Some(num_key_value_heads),
            head_dim: None,
            rms_norm_eps: 1e-5,
            rope_theta: Some(10000.0),
            max_position_embeddings: Some(2048),
            tie_word_embeddings: true,
            attention_bias: false,
            mlp_bias: false,
            hidden_act: default_silu(),
            initializer_range: 0.02,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            extra: Map::new(),
        }
    }
    pub fn kv_heads(&self) -> i64 {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    pub fn head_dim(&self) -> i64 {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads)
    }
    /// RoPE base: top-level `rope_theta` (transformers 4), else `rope_parameters.rope_theta` (transformers 5).
    pub fn rope_theta(&self) -> f64 {
        if let Some(t) = self.rope_theta {
            return t;
        }
        self.extra
            .get("rope_parameters")
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .unwrap_or_else(default_rope_theta)
    }
    pub(crate) fn check(&self) -> Result<()> {
        let scaling = self.extra.get("rope_scaling").or_else(|| self.extra.get("rope_parameters"));
        if let Some(s) = scaling {
            let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str);
            if !matches!(kind, None | Some("default")) {
                bail!("rope scaling {kind:?} is not supported (only plain RoPE)");
            }
        }
        if self.hidden_act != "silu" {
            bail!("llama hidden_act {:?} is not supported (only silu)", self.hidden_act);
        }
        positive(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
        ])?;
        if let Some(p) = self.max_position_embeddings {
            positive(&[("max_position_embeddings", p)])?;
        }
        if self.num_attention_heads % self.kv_heads() != 0 {
            bail!("num_attention_heads must be a multiple of num_key_value_heads");
        }
        if self.head_dim.is_none() && self.hidden_size % self.num_attention_heads != 0 {
            bail!(
                "hidden_size {} is not a multiple of num_attention_heads {} (and no head_dim is given)",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        let hd = self.head_dim();
        if hd <= 0 || hd % 2 != 0 {
            bail!("head_dim must be positive and even (rotary embeddings rotate pairs); it is {hd}");
        }
        Ok(())
    }
}

/// Every named size must be at least 1: a zero or negative size is a damaged or hand-edited config, and the model
/// built from it would fail deep inside libtorch (or divide by zero) instead of saying which field is wrong.
fn positive(sizes: &[(&str, i64)]) -> Result<()> {
    for &(name, v) in sizes {
        if v <= 0 {
            bail!("{name} must be at least 1; it is {v}");
        }
    }
    Ok(())
}

impl Gpt2Config {
    fn check(&self) -> Result<()> {
        positive(&[
            ("vocab_size", self.vocab_size),
            ("n_positions", self.n_positions),
            ("n_embd", self.n_embd),
            ("n_layer", self.n_layer),
            ("n_head", self.n_head),
            ("n_inner", self.inner_dim()),
        ])?;
        if self.n_embd % self.n_head != 0 {
            bail!("n_embd {} is not a multiple of n_head {}", self.n_embd, self.n_head);
        }
        let known = crate::model::ACTIVATIONS.map(|(name, _)| name);
        if !known.contains(&self.activation_function.as_str()) {
            bail!(
                "activation_function {:?} is not supported (supported: {})",
                self.activation_function,
                known.join(", ")
            );
        }
        Ok(())
    }
}

/// Which architecture a checkpoint holds, with its configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelConfig {
    Gpt2(Gpt2Config),
    Llama(LlamaConfig),
}

impl ModelConfig {
    /// Parses a `config.json` value; `model_type` picks the architecture.
    pub fn from_json(v: &Value) -> Result<Self> {
        let mt = v.get("model_type").and_then(Value::as_str).unwrap_or("");
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            // Written back by to_json; keeping them in `extra` would duplicate them.
            o.remove("model_type");
        }
        let config = match mt {
            "gpt2" => ModelConfig::Gpt2(serde_json::from_value(v).context("gpt2 config.json")?),
            "llama" => ModelConfig::Llama(serde_json::from_value(v).context("llama config.json")?),
            other => bail!("unsupported model_type {other:?} (supported: gpt2, llama)"),
        };
        config.check()?;
        Ok(config)
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Self::from_json(&v).with_context(|| format!("in {}", path.display()))
    }

    /// Refuses sizes no model can have (zero, negative, heads that do not divide) and what this crate cannot run.
    pub fn check(&self) -> Result<()> {
        match self {
            ModelConfig::Gpt2(c) => c.check(),
            ModelConfig::Llama(c) => c.check(),
        }
    }

    /// At least this many parameters (the embeddings and every layer's weight matrices; norms and biases left
    /// out), computed without building the model: a config whose size its weights file cannot hold is refused
    /// before libtorch is asked for the memory.
    pub fn min_parameters(&self) -> u128 {
        let u = |v: i64| v.max(0) as u128;
        match self {
            ModelConfig::Gpt2(c) => {
                let (d, i) = (u(c.n_embd), u(c.inner_dim()));
                u(c.vocab_size) * d + u(c.n_positions) * d + u(c.n_layer) * (4 * d * d + 2 * d * i)
            }
            ModelConfig::Llama(c) => {
                let (d, i, hd) = (u(c.hidden_size), u(c.intermediate_size), u(c.head_dim()));
                let (q, kv) = (u(c.num_attention_heads) * hd, u(c.kv_heads()) * hd);
                u(c.vocab_size) * d + u(c.num_hidden_layers) * (2 * d * q + 2 * d * kv + 3 * d * i)
            }
        }
    }

    pub fn model_type(&self) -> &'static str {
        match self {
            ModelConfig::Gpt2(_) => "gpt2",
            ModelConfig::Llama(_) => "llama",
        }
    }

    /// `config.json` content; `architectures` names the transformers class that loads it.
    pub fn to_json(&self, head: Head) -> Value {
        let mut v = match self {
            ModelConfig::Gpt2(c) => serde_json::to_value(c),
            ModelConfig::Llama(c) => serde_json::to_value(c),
        }
        .expect("config serialises");
        let o = v.as_object_mut().expect("object");
        o.insert("model_type".into(), self.model_type().into());
        let arch = match (self, head) {
            (ModelConfig::Gpt2(_), Head::CausalLm) => "GPT2LMHeadModel",
            (ModelConfig::Gpt2(_), Head::Score) => "GPT2ForSequenceClassification",
            (ModelConfig::Llama(_), Head::CausalLm) => "LlamaForCausalLM",
            (ModelConfig::Llama(_), Head::Score) => "LlamaForSequenceClassification",
        };
        o.insert("architectures".into(), Value::Array(vec![arch.into()]));
        match head {
            Head::Score => {
                // One scalar output: transformers derives num_labels from id2label.
                o.insert("id2label".into(), serde_json::json!({"0": "LABEL_0"}));
                o.insert("label2id".into(), serde_json::json!({"LABEL_0": 0}));
            }
            Head::CausalLm => {
                o.remove("id2label");
                o.remove("label2id");
            }
        }
        if !o.contains_key("torch_dtype") && !o.contains_key("dtype") {
            o.insert("torch_dtype".into(), "float32".into());
        }
        v
    }

    /// The head the config's `architectures` names (a sequence classifier means a reward model).
    pub fn head_from_json(v: &Value) -> Head {
        let is_cls = v
            .get("architectures")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|s| s.as_str().is_some_and(|s| s.ends_with("ForSequenceClassification"))));
        if is_cls { Head::Score } else { Head::CausalLm }
    }

    pub fn vocab_size(&self) -> i64 {
        match self {
            ModelConfig::Gpt2(c) => c.vocab_size,
            ModelConfig::Llama(c) => c.vocab_size,
        }
    }
    pub fn hidden_size(&self) -> i64 {
        match self {
            ModelConfig::Gpt2(c) => c.n_embd,
            ModelConfig::Llama(c) => c.hidden_size,
        }
    }
    pub fn num_layers(&self) -> i64 {
        match self {
            ModelConfig::Gpt2(c) => c.n_layer,
            ModelConfig::Llama(c) => c.num_hidden_layers,
        }
    }
    pub fn tie_word_embeddings(&self) -> bool {
        match self {
            ModelConfig::Gpt2(c) => c.tie_word_embeddings,
            ModelConfig::Llama(c) => c.tie_word_embeddings,
        }
    }
    pub fn pad_token_id(&self) -> Option<i64> {
        match self {
            ModelConfig::Gpt2(c) => c.pad_token_id,
            ModelConfig::Llama(c) => c.pad_token_id,
        }
    }
    pub fn eos_token_id(&self) -> Option<i64> {
        match self {
            ModelConfig::Gpt2(c) => c.eos_token_id,
            ModelConfig::Llama(c) => c.eos_token_id,
        }
    }
    /// Sets bos/eos/pad ids (e.g. from a tokenizer trained alongside the model).
    pub fn set_special_ids(&mut self, bos: Option<i64>, eos: Option<i64>, pad: Option<i64>) {
        let (b, e, p) = match self {
            ModelConfig::Gpt2(c) => (&mut c.bos_token_id, &mut c.eos_token_id, &mut c.pad_token_id),
            ModelConfig::Llama(c) => (&mut c.bos_token_id, &mut c.eos_token_id, &mut c.pad_token_id),
        };
        *b = bos;
        *e = eos;
        *p = pad;
    }
    /// Longest sequence the positional scheme supports (GPT-2's learned positions are a hard limit).
    pub fn max_positions(&self) -> Option<i64> {
        match self {
            ModelConfig::Gpt2(c) => Some(c.n_positions),
            ModelConfig::Llama(c) => c.max_position_embeddings,
        }
    }
    pub fn num_parameters_estimate(&self) -> i64 {
        match self {
            ModelConfig::Gpt2(c) => {
                let d = c.n_embd;
                c.vocab_size * d + c.n_positions * d + c.n_layer * (4 * d * d + 2 * d * c.inner_dim())
            }
            ModelConfig::Llama(c) => {
                let d = c.hidden_size;
                let kv = c.kv_heads() * c.head_dim();
                let emb = c.vocab_size * d * if c.tie_word_embeddings { 1 } else { 2 };
                emb + c.num_hidden_layers
                    * (2 * d * c.num_attention_heads * c.head_dim() + 2 * d * kv + 3 * d * c.intermediate_size)
            }
        }
    }
}

/// Which output head sits on the backbone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// Next-token logits (`lm_head`, possibly tied to the embeddings).
    CausalLm,
    /// One scalar per sequence (`score.weight`), read at the last non-padding token: a reward model.
    Score,
}
