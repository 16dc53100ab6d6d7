//! `subsample`: bias-controlled subsampling (placeholder until the real stage lands).
use crate::port::*;
use serde_json::{json, Map, Value};

pub struct Subsample;

impl Stage for Subsample {
    fn kind(&self) -> &'static str { "subsample" }
    fn doc(&self) -> &'static str { "select D_rho with an exact share rho of longer-preferred pairs" }
    fn inputs(&self) -> &'static [InputSpec] {
        &[InputSpec { name: "pairs", required: true, many: false, doc: "labelled pairs" }]
    }
    fn outputs(&self) -> &'static [OutputSpec] {
        &[OutputSpec { name: "dataset", kind: ArtifactKind::File, doc: "D_rho (Parquet)" }]
    }
    fn code_files(&self) -> &'static [&'static str] { &["subsample.rs", "table.rs"] }
    fn validate(&self, _params: &Map<String, Value>) -> StageResult<()> { Ok(()) }
    fn run(&self, ctx: &dyn Ctx) -> StageResult<Value> {
        let inp = &ctx.inputs("pairs")[0];
        let mut bytes = std::fs::read(&inp.path)?;
        bytes.extend_from_slice(serde_json::to_string(ctx.params()).unwrap().as_bytes());
        std::fs::write(ctx.output_path("dataset"), bytes)?;
        Ok(json!({}))
    }
}
