//! Models bound to their parameters, and Hugging Face checkpoint directories: `config.json` + `model.safetensors`
//! (+ `tokenizer.json`), tensor names exactly as transformers writes them, so a directory written here loads with
//! `AutoModelForCausalLM.from_pretrained` / `AutoModelForSequenceClassification.from_pretrained` as it is.

use crate::config::{Head, ModelConfig};
use crate::gpt2::Gpt2;
use crate::llama::Llama;
use crate::model::{CausalLm, KvCache};
use anyhow::{Context, Result, bail};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{Device, Kind, Tensor, nn};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

fn build_lm(root: &nn::Path, config: &ModelConfig, with_lm_head: bool) -> Box<dyn CausalLm + Send> {
    match config {
        ModelConfig::Gpt2(c) => Box::new(Gpt2::new(root, c, with_lm_head)),
        ModelConfig::Llama(c) => Box::new(Llama::new(root, c, with_lm_head)),
    }
}

/// A causal language model (policy / reference policy) with its own parameters.
pub struct LanguageModel {
    pub vs: nn::VarStore,
    pub config: ModelConfig,
    net: Box<dyn CausalLm + Send>,
}

impl std::fmt::Debug for LanguageModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "LanguageModel({}, {} layers, d={})",
            self.config.model_type(),
            self.net.num_layers(),
            self.net.hidden_size()
        )
    }
}

impl LanguageModel {
    /// Freshly initialised (transformers' init: normal(0, initializer_range)); seed with `tch::manual_seed` first.
    pub fn new(config: ModelConfig, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let net = build_lm(&vs.root(), &config, true);
        LanguageModel { vs, config, net }
    }

    /// Loads a checkpoint directory (`config.json` + `model.safetensors`).
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join(CONFIG_FILE))?;
        weights_can_hold(&config, dir)?;
        let mut m = Self::new(config, device);
        load_safetensors(&mut m.vs, &dir.join(WEIGHTS_FILE), &[])?;
        Ok(m)
    }

    /// Writes `config.json` and `model.safetensors` into `dir` (created), copying `tokenizer` files along if given.
    pub fn save(&self, dir: &Path, tokenizer_dir: Option<&Path>) -> Result<()> {
        save_checkpoint(&self.vs, &self.config, Head::CausalLm, dir, tokenizer_dir)
    }

    /// Logits `[batch, seq, vocab]`.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>, cache: Option<&mut KvCache>) -> Tensor {
        self.net.forward(input_ids, attention_mask, cache)
    }
    pub fn net(&self) -> &dyn CausalLm {
        self.net.as_ref()
    }
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.net.num_layers())
    }
    pub fn device(&self) -> Device {
        self.vs.device()
    }
    pub fn num_parameters(&self) -> i64 {
        self.vs.trainable_variables().iter().map(|t| t.numel() as i64).sum()
    }
    /// Stops gradients to every parameter (a frozen reference policy).
    pub fn freeze(&mut self) {
        self.vs.freeze();
    }
    /// A deep copy (e.g. the policy initialised from the reference).
    pub fn try_clone(&self) -> Result<Self> {
        let mut m = Self::new(self.config.clone(), self.device());
        m.vs.copy(&self.vs)?;
        Ok(m)
    }
}

/// A Bradley–Terry reward model: a backbone plus `score.weight` (`[1, hidden]`, no bias), read at the last
/// non-padding token, as transformers' `*ForSequenceClassification` with `num_labels = 1`.
pub struct RewardModel {
    pub vs: nn::VarStore,
    pub config: ModelConfig,
    backbone: Box<dyn CausalLm + Send>,
    score: Tensor,
}

impl std::fmt::Debug for RewardModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RewardModel({}, {} layers)", self.config.model_type(), self.backbone.num_layers())
    }
}

impl RewardModel {
    pub fn new(config: ModelConfig, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let backbone = build_lm(&vs.root(), &config, false);
        let h = config.hidden_size();
        // A fixed pseudo-random head (uniform, variance 1/h) rather than libtorch's global generator: that generator
        // is shared by every thread of the process, so reward models initialised concurrently would differ run to run.
        let vals: Vec<f32> = (0..h as u64)
            .map(|i| {
                let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15).wrapping_mul(0xBF58_476D_1CE4_E5B9);
                z = (z ^ (z >> 31)).wrapping_mul(0x94D0_49BB_1331_11EB);
                z ^= z >> 29;
                let u = (z >> 11) as f64 / (1u64 << 53) as f64;
                ((2.0 * u - 1.0) * (3.0 / h as f64).sqrt()) as f32
            })
            .collect();
        let init = Tensor::from_slice(&vals).view([1, h]).to_device(device);
        let score = (vs.root() / "score").var_copy("weight", &init);
        RewardModel { vs, config, backbone, score }
    }

    /// Loads a reward-model checkpoint, or, with `init_head_if_missing`, a causal-LM checkpoint whose backbone
    /// initialises the reward model (its LM head is ignored and `score` is fresh): the usual start from the SFT model.
    pub fn load(dir: &Path, device: Device, init_head_if_missing: bool) -> Result<Self> {
        let config = ModelConfig::from_file(&dir.join(CONFIG_FILE))?;
        weights_can_hold(&config, dir)?;
        let mut m = Self::new(config, device);
        let optional: &[&str] = if init_head_if_missing { &["score.weight"] } else { &[] };
        load_safetensors(&mut m.vs, &dir.join(WEIGHTS_FILE), optional)?;
        Ok(m)
    }

    pub fn save(&self, dir: &Path, tokenizer_dir: Option<&Path>) -> Result<()> {
        save_checkpoint(&self.vs, &self.config, Head::Score, dir, tokenizer_dir)
    }

    /// Rewards `[batch]` at each row's last real token (rightmost 1 in `attention_mask`; the last position if none).
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Tensor {
        let h = self.backbone.forward_hidden(input_ids, attention_mask, None);
        let (b, t, d) = h.size3().unwrap();
        let last = match attention_mask {
            Some(m) => {
                let idx = Tensor::arange(t, (Kind::Int64, h.device())).unsqueeze(0);
                (idx * m.to_kind(Kind::Int64)).argmax(-1, false)
            }
            None => Tensor::full([b], t - 1, (Kind::Int64, h.device())),
        };
        let sel = h.gather(1, &last.view([b, 1, 1]).expand([b, 1, d], true), false).squeeze_dim(1);
        // fp32 even under autocast: distillation regresses onto reward *differences*.
        crate::gpt2::head_logits_any(&sel, &self.score).squeeze_dim(-1)
    }
    /// Rewards `[batch]` of each `prompt ++ response` row of a right-padded [`PairBatch`]: the Bradley–Terry
    /// trainer's and the offline precompute's call. No attention mask is needed: right padding is invisible to
    /// every real token under causal attention.
    /// Rows that share a prompt are packed as in `sequence_logprobs` (the prompt is computed once).
    pub fn rewards(&self, batch: &crate::logprobs::PairBatch) -> Tensor {
        let sel = batch.read_hidden(self.backbone.as_ref(), crate::logprobs::Read::Rewards);
        crate::gpt2::head_logits_any(&sel, &self.score).squeeze_dim(-1)
    }
    pub fn device(&self) -> Device {
        self.vs.device()
    }
    pub fn freeze(&mut self) {
        self.vs.freeze();
    }
    pub fn try_clone(&self) -> Result<Self> {
        let mut m = Self::new(self.config.clone(), self.device());
        m.vs.copy(&self.vs)?;
        Ok(m)
    }
}

/// Refuses a checkpoint whose `config.json` describes a model its weights file cannot hold (at least a byte per
/// parameter), before the model is allocated: a damaged config must not ask libtorch for terabytes.
fn weights_can_hold(config: &ModelConfig, dir: &Path) -> Result<()> {
    let weights = dir.join(WEIGHTS_FILE);
    let bytes = std::fs::metadata(&weights).with_context(|| format!("reading {}", weights.display()))?.len();
    let need = config.min_parameters();
    if need > bytes as u128 {
        bail!(
            "{}: the config describes a model of at least {need} parameters, but {} holds only {bytes} bytes",
            dir.join(CONFIG_FILE).display(),
            weights.display()
        );
    }
    Ok(())
}

fn st_kind(d: Dtype) -> Result<Kind> {
    Ok(match d {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F64 => Kind::Double,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        other => bail!("unsupported safetensors dtype {other:?}"),
    })
}

fn kind_st(k: Kind) -> Result<Dtype> {
    Ok(match k {
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Double => Dtype::F64,
        Kind::Int64 => Dtype::I64,
        other => bail!("cannot save tensors of kind {other:?}"),
    })
}

/// Copies every variable of `vs` from a safetensors file, converting dtype and device. Names missing from the
/// file are an error unless listed in `optional`; extra names (transformers' buffers such as GPT-2's `attn.bias`, or
/// an LM head when loading a reward model) are ignored. Old GPT-2 files without the `transformer.` prefix load too.
pub fn load_safetensors(vs: &mut nn::VarStore, path: &Path, optional: &[&str]) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let st = SafeTensors::deserialize(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    let vars = vs.variables();
    let mut missing = vec![];
    tch::no_grad(|| -> Result<()> {
        for (name, var) in vars.iter() {
            let found =
                st.tensor(name).ok().or_else(|| name.strip_prefix("transformer.").and_then(|n| st.tensor(n).ok()));
            let Some(view) = found else {
                if !optional.contains(&name.as_str()) {
                    missing.push(name.clone());
                }
                continue;
            };
            let shape: Vec<i64> = view.shape().iter().map(|&s| s as i64).collect();
            if shape != var.size() {
                bail!("{}: tensor {name} has shape {shape:?}, the config implies {:?}", path.display(), var.size());
            }
            let src = Tensor::f_from_data_size(view.data(), &shape, st_kind(view.dtype())?)?;
            let mut var = var.shallow_clone();
            var.copy_(&src.to_kind(var.kind()).to_device(var.device()));
        }
        Ok(())
    })?;
    if !missing.is_empty() {
        missing.sort();
        bail!("{}: missing tensors {}", path.display(), missing.join(", "));
    }
    Ok(())
}

/// Writes every variable of `vs` to a safetensors file under its own name (metadata `format: pt`, which
/// transformers checks).
pub fn save_safetensors(vs: &nn::VarStore, path: &Path) -> Result<()> {
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut buffers = vec![];
    for (name, t) in &vars {
        let t = t.detach().to_device(Device::Cpu).contiguous();
        let n = t.numel();
        let mut buf = vec![0u8; n * t.kind().elt_size_in_bytes()];
        t.copy_data_u8(&mut buf, n);
        let shape: Vec<usize> = t.size().iter().map(|&s| s as usize).collect();
        buffers.push((name.clone(), kind_st(t.kind())?, shape, buf));
    }
    let views = buffers
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), path).with_context(|| format!("writing {}", path.display()))?;
    // serialize_to_file creates the file owner-only; a checkpoint is meant to be shared like its config.json.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    }
    Ok(())
}

fn save_checkpoint(
    vs: &nn::VarStore,
    config: &ModelConfig,
    head: Head,
    dir: &Path,
    tokenizer_dir: Option<&Path>,
) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cfg = serde_json::to_string_pretty(&config.to_json(head))?;
    std::fs::write(dir.join(CONFIG_FILE), cfg + "\n")?;
    save_safetensors(vs, &dir.join(WEIGHTS_FILE))?;
    if let Some(src) = tokenizer_dir {
        for f in [TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"] {
            let from = src.join(f);
            if from.exists() && src != dir {
                std::fs::copy(&from, dir.join(f)).with_context(|| format!("copying {}", from.display()))?;
            }
        }
    }
    Ok(())
}
