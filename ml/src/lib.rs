//! The ML core shared by rmdistill's stages: GPT-2 and Llama on `tch` (libtorch), Hugging Face checkpoints,
//! tokenizers, batched sequence log-probabilities, sampling with a KV cache, the training loop, and GGUF import.
//! It knows nothing of storage, caching or scheduling.

pub mod checkpoint;
pub mod config;
pub mod device;
pub mod gguf;
pub mod gpt2;
pub mod llama;
pub mod logprobs;
pub mod model;
pub mod sampling;
pub mod tokenizer;
pub mod train;

pub use checkpoint::{LanguageModel, RewardModel};
pub use config::{Gpt2Config, Head, LlamaConfig, ModelConfig};
pub use device::{DeviceChoice, seed_everything, with_autocast};
pub use logprobs::{PairBatch, Reduction, sequence_logprobs};
pub use model::{Backbone, CausalLm, KvCache};
pub use sampling::{SampleConfig, Samples, generate};
pub use tokenizer::{Tokenizer, TokenizerSpec};
pub use train::{OptimConfig, Schedule, StepMetrics, Trainer};
pub use tch;
