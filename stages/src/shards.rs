//! The shards of a sharded stage (`label`, `precompute`, `evaluate`) read back: each shard table carries
//! `rmdistill.shard`/`rmdistill.shards` metadata; all must agree on `shards`, every shard be present exactly once, all
//! with one schema; they are concatenated in shard order, which gives back the unsharded table. `merge` and
//! `merge_eval` both start from it.

use crate::port::*;
use crate::table;
use std::collections::BTreeMap;

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
