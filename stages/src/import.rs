//! `import`: a user's preference dataset (placeholder until the real importer lands).
use crate::port::*;
use serde_json::{json, Map, Value};

pub struct Import;

impl Stage for Import {
    fn kind(&self) -> &'static str { "import" }
    fn doc(&self) -> &'static str { "normalise a preference dataset into a pairs table" }
    fn inputs(&self) -> &'static [InputSpec] { &[] }
    fn outputs(&self) -> &'static [OutputSpec] {
        &[OutputSpec { name: "pairs", kind: ArtifactKind::File, doc: "normalised pairs (Parquet)" }]
    }
    fn path_params(&self) -> &'static [&'static str] { &["path"] }
    fn code_files(&self) -> &'static [&'static str] { &["import.rs", "table.rs"] }
    fn validate(&self, _params: &Map<String, Value>) -> StageResult<()> { Ok(()) }
    fn run(&self, ctx: &dyn Ctx) -> StageResult<Value> {
        let src = ctx.external("path").ok_or_else(|| StageError::invalid("path", "missing"))?;
        std::fs::copy(src, ctx.output_path("pairs"))?;
        Ok(json!({}))
    }
}
