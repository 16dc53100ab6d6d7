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
use crate::table;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashSet};

pub struct Merge;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {}

/// The shard tables of a sharded stage, checked and concatenated in shard order.
pub struct Shards {
    pub shards: usize,
    /// shard → (index into the parts, the part's key-value metadata)
    pub by_shard: BTreeMap<usize, (usize, Vec<(String, String)>)>,
    pub merged: arrow::array::RecordBatch,
}

/// Reads `parts`: each must carry `rmdistill.shard`/`rmdistill.shards` metadata, all agreeing on `shards`, every
/// shard present exactly once, all with one schema; concatenates them in shard order (progress per shard).
pub fn concat_shards(ctx: &dyn Ctx, parts: &[InputArtifact]) -> StageResult<Shards> {
    if parts.is_empty() {
        return Err(StageError::invalid("parts", "no shard table is bound"));
    }
    let mut by_shard: BTreeMap<usize, (usize, Vec<(String, String)>)> = BTreeMap::new();
    let mut shards_seen: Option<usize> = None;
    for (k, part) in parts.iter().enumerate() {
        let kv = table::read_kv(&part.path)?;
        let get = |key: &str| -> StageResult<usize> {
            kv.iter().find(|(k, _)| k == key).and_then(|(_, v)| v.parse::<usize>().ok()).ok_or_else(|| {
                StageError::invalid(
                    "parts",
                    format!(
                        "{} (from {}): no `{key}` metadata: not the output of a sharded stage",
                        part.path.display(),
                        part.node
                    ),
                )
            })
        };
        let (shard, shards) = (get("rmdistill.shard")?, get("rmdistill.shards")?);
        if *shards_seen.get_or_insert(shards) != shards {
            return Err(StageError::invalid(
                "parts",
                format!("{} says shards = {shards}, another part says {}", part.node, shards_seen.unwrap()),
            ));
        }
        if shard >= shards {
            return Err(StageError::invalid("parts", format!("{}: shard {shard} of {shards}", part.node)));
        }
        if by_shard.insert(shard, (k, kv)).is_some() {
            return Err(StageError::invalid("parts", format!("shard {shard} is bound twice")));
        }
    }
    let shards = shards_seen.unwrap();
    let missing: Vec<String> = (0..shards).filter(|s| !by_shard.contains_key(s)).map(|s| s.to_string()).collect();
    if !missing.is_empty() {
        return Err(StageError::invalid("parts", format!("shards {} of {shards} are missing", missing.join(", "))));
    }
    let mut batches = vec![];
    let mut schema = None;
    for (shard, (k, _)) in &by_shard {
        let t = table::read_table(&parts[*k].path, None)?;
        match &schema {
            None => schema = Some(t.schema()),
            Some(s) if *s != t.schema() => {
                return Err(StageError::invalid(
                    "parts",
                    format!("shard {shard} ({}) has a different schema from shard 0", parts[*k].node),
                ));
            }
            _ => {}
        }
        batches.push(t);
        ctx.progress(*shard as u64 + 1, shards as u64);
    }
    let merged = arrow::compute::concat_batches(&schema.unwrap(), &batches)?;
    Ok(Shards { shards, by_shard, merged })
}

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
    fn code_files(&self) -> &'static [&'static str] {
        &["merge.rs", "data_io.rs", "table.rs"]
    }
    fn validate(&self, params: &Map<String, Value>) -> StageResult<()> {
        parse_params::<Params>(params).map(|_| ())
    }
    fn run(&self, ctx: &dyn Ctx) -> StageResult<Value> {
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
            common.into_iter().filter(|(k, _)| {
                !matches!(k.as_str(), "rmdistill.parts" | "rmdistill.rows" | "rmdistill.merged_stage")
            }),
        );
        table::write_table(&ctx.output_path("merged"), &merged, &kv)?;
        ctx.log(&format!("merged {shards} shards of `{stage}`: {} rows", merged.num_rows()));
        Ok(summary)
    }
}
