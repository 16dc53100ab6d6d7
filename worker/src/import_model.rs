//! `import_model` (declared in `rmdistill_stages::import_model`): the GGUF conversion, by the ML core.

use rmdistill_stages::port::*;
use serde_json::{Value, json};

pub fn run(ctx: &dyn Ctx) -> StageResult<Value> {
    let src = ctx.external("path").ok_or_else(|| StageError::invalid("path", "no file"))?;
    let out = ctx.output_path("model");
    ctx.log(&format!("converting {}", src.display()));
    let m = rmdistill_ml::gguf::import_gguf(src, &out)
        .map_err(|e| StageError::invalid("path", format!("{}: {e:#}", src.display())))?;
    if !out.join("tokenizer.json").is_file() {
        return Err(StageError::invalid("path", format!("{}: the GGUF file carries no tokenizer", src.display())));
    }
    Ok(json!({ "vocab_size": m.config.vocab_size() }))
}
