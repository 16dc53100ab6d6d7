//! `merge`: concatenates the outputs of a sharded stage (`label`, `precompute`) back into one table.
//!
//! Input slot `parts` (many): the shard tables, in any order. Each must carry `rmdistill.shard` and
//! `rmdistill.shards` in its Parquet metadata (the sharded stages write them); all must agree on `shards` and the
//! schema, and every shard `0..shards` must be present exactly once. The rows are concatenated in shard order, which
//! gives back the table the unsharded stage would have written (shards are contiguous blocks of rows). Metadata
//! keys other than the shard's own (e.g. `rmdistill.members`) are kept when all parts agree on them. A repeated
//! `pair_id` (when the table has one) is an error.
use crate::data_io;
use crate::port::*;
use crate::shards::{Shards, concat_shards};
use crate::table;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::HashSet;

pub struct Merge;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {}

impl Stage for Merge {
    fn kind(&self) -> &'static str {
        "merge"
    }
    fn doc(&self) -> &'static str {
        "concatenates the shard tables of a sharded stage in shard order"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        &[InputSpec {
            name: "parts",
            required: true,
            many: true,
            doc: "the shard tables (rmdistill.shard/shards metadata)",
        }]
    }
    fn outputs(&self) -> &'static [OutputSpec] {
        &[OutputSpec { name: "merged", kind: ArtifactKind::File, doc: "the concatenated table (Parquet)" }]
    }
    fn validate(&self, params: &Map<String, Value>) -> StageResult<()> {
        parse_params::<Params>(params).map(|_| ())
    }
    fn params_schema(&self) -> schemars::Schema {
        schemars::schema_for!(Params)
    }
    fn runs(&self) -> Runs {
        Runs::InProcess(run)
    }
}

pub fn run(ctx: &dyn Ctx) -> StageResult<Value> {
    let parts = ctx.inputs("parts");
    let Shards { shards, by_shard, merged } = concat_shards(ctx, parts)?;
    let schema = merged.schema();
    if schema.index_of(table::PAIR_ID).is_ok() {
        let ids = data_io::strings(&merged, table::PAIR_ID, &parts[0].path, false)?;
        let mut seen = HashSet::new();
        if let Some(dup) = ids.iter().find(|id| !seen.insert(id.as_str())) {
            return Err(StageError::invalid("parts", format!("pair_id {dup} appears in more than one row")));
        }
    }
    // metadata every part agrees on, except the per-shard keys and stage-computed counts
    let first = &by_shard[&0].1;
    let common: Vec<(String, String)> = first
        .iter()
        .filter(|(k, _)| k.starts_with("rmdistill.") && k != "rmdistill.shard" && k != "rmdistill.stage")
        .filter(|(k, v)| by_shard.values().all(|(_, kv)| kv.iter().any(|(k2, v2)| k2 == k && v2 == v)))
        .cloned()
        .collect();
    let stage = first.iter().find(|(k, _)| k == "rmdistill.stage").map(|(_, v)| v.clone()).unwrap_or_default();
    let summary = json!({"parts": shards, "rows": merged.num_rows(), "stage": stage});
    let mut kv =
        table::summary_kv("merge", &json!({"parts": shards, "rows": merged.num_rows(), "merged_stage": stage}));
    kv.extend(
        common
            .into_iter()
            .filter(|(k, _)| !matches!(k.as_str(), "rmdistill.parts" | "rmdistill.rows" | "rmdistill.merged_stage")),
    );
    table::write_table(&ctx.output_path("merged"), &merged, &kv)?;
    ctx.log(&format!("merged {shards} shards of `{stage}`: {} rows", merged.num_rows()));
    Ok(summary)
}
