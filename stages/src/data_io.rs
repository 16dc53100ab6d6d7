//! What the stages share about reading and writing tables: input-slot lookups, typed column reads with errors that
//! name the column, sweep coordinates of inputs, sharding, and small metrics tables. No tensors here: the worker's
//! `data_io` adds the device, the tokenizer codec and tensor values on top of this module.

use crate::port::{Ctx, InputArtifact, StageError, StageResult};
use arrow::array::{Array, AsArray, RecordBatch};
use std::path::Path;

/// The single artifact bound to a slot, or an error naming the slot.
pub fn one_input<'a>(ctx: &'a dyn Ctx, slot: &str) -> StageResult<&'a InputArtifact> {
    match ctx.inputs(slot) {
        [one] => Ok(one),
        [] => Err(StageError::invalid(slot, format!("no input is bound to slot `{slot}`"))),
        many => Err(StageError::invalid(slot, format!("expects one input, got {}", many.len()))),
    }
}

/// The artifact bound to an optional slot.
pub fn opt_input<'a>(ctx: &'a dyn Ctx, slot: &str) -> StageResult<Option<&'a InputArtifact>> {
    match ctx.inputs(slot) {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        many => Err(StageError::invalid(slot, format!("expects at most one input, got {}", many.len()))),
    }
}

/// A numeric sweep coordinate of an input (a number, or a string holding one).
pub fn coord_f64(coords: &std::collections::BTreeMap<String, serde_json::Value>, k: &str) -> Option<f64> {
    coords.get(k).and_then(|v| v.as_f64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
}

/// A sweep coordinate of an input as text (a string as it is, anything else as JSON).
pub fn coord_str(c: &std::collections::BTreeMap<String, serde_json::Value>, k: &str) -> Option<String> {
    c.get(k).map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string()))
}

/// A numeric column as f64 per row (null → None; a missing column → all None).
pub fn opt_f64s(t: &RecordBatch, col: &str) -> Vec<Option<f64>> {
    match t.column_by_name(col).and_then(|a| arrow::compute::cast(a, &arrow::datatypes::DataType::Float64).ok()) {
        Some(a) => {
            let a = a.as_primitive::<arrow::datatypes::Float64Type>();
            (0..a.len()).map(|i| a.is_valid(i).then(|| a.value(i))).collect()
        }
        None => vec![None; t.num_rows()],
    }
}

/// A sampling stage's `max_len` must leave room for a prompt beside `max_new_tokens` of response: with less, every
/// sample would continue a prompt cut to its last token ([`sampling_context`] keeps at least one), a silently
/// different evaluation.
pub fn check_prompt_room(max_len: usize, max_new_tokens: usize) -> StageResult<()> {
    if max_len <= max_new_tokens {
        return Err(StageError::invalid(
            "max_len",
            format!(
                "must exceed max_new_tokens ({max_new_tokens}): prompt + response are truncated to max_len tokens, so \
                 max_len = {max_len} leaves no room for the prompt; raise max_len or lower max_new_tokens"
            ),
        ));
    }
    Ok(())
}

/// The prompt tokens a sample continues: the last `max_len − max_new_tokens` (at least one), so that the prompt and
/// the sample together fit the `max_len` context their log-probs are scored with (`Codec::batch` truncates on the
/// left).
pub fn sampling_context(prompt: &[i64], max_len: usize, max_new_tokens: usize) -> &[i64] {
    let room = max_len.saturating_sub(max_new_tokens).max(1);
    &prompt[prompt.len().saturating_sub(room)..]
}

/// A checkpoint directory input must hold `config.json`; an error names the slot.
pub fn check_checkpoint(dir: &Path, slot: &str) -> StageResult<()> {
    if !dir.is_dir() || !dir.join("config.json").exists() {
        return Err(StageError::invalid(
            slot,
            format!("{}: not a checkpoint directory (no config.json)", dir.display()),
        ));
    }
    Ok(())
}

/// A Utf8 column as strings; nulls (and, with `non_empty`, empty strings) are errors naming the column and row.
pub fn strings(batch: &RecordBatch, col: &str, file: &Path, non_empty: bool) -> StageResult<Vec<String>> {
    let a = batch
        .column_by_name(col)
        .ok_or_else(|| StageError::invalid(col, format!("{}: missing column `{col}`", file.display())))?;
    let cast = arrow::compute::cast(a, &arrow::datatypes::DataType::Utf8)
        .map_err(|e| StageError::invalid(col, format!("{}: column `{col}` is not text: {e}", file.display())))?;
    let s = cast.as_string::<i32>();
    (0..s.len())
        .map(|i| {
            if s.is_null(i) {
                Err(StageError::invalid(col, format!("{}: column `{col}` is null at row {i}", file.display())))
            } else if non_empty && s.value(i).trim().is_empty() {
                Err(StageError::invalid(col, format!("{}: column `{col}` is empty at row {i}", file.display())))
            } else {
                Ok(s.value(i).to_string())
            }
        })
        .collect()
}

/// An integer column (any integer type) as optional i64s.
pub fn opt_i64s(batch: &RecordBatch, col: &str, file: &Path) -> StageResult<Vec<Option<i64>>> {
    let a = batch
        .column_by_name(col)
        .ok_or_else(|| StageError::invalid(col, format!("{}: missing column `{col}`", file.display())))?;
    if !a.data_type().is_integer() {
        return Err(StageError::invalid(
            col,
            format!("{}: column `{col}` must be an integer column, found {}", file.display(), a.data_type()),
        ));
    }
    let cast = arrow::compute::cast(a, &arrow::datatypes::DataType::Int64)?;
    let v = cast.as_primitive::<arrow::datatypes::Int64Type>();
    Ok((0..v.len()).map(|i| if v.is_null(i) { None } else { Some(v.value(i)) }).collect())
}

/// Labels (0 = a preferred, 1 = b preferred) of a column; every row must be labelled.
pub fn labels(batch: &RecordBatch, col: &str, file: &Path) -> StageResult<Vec<u8>> {
    opt_i64s(batch, col, file)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| match v {
            Some(0) => Ok(0),
            Some(1) => Ok(1),
            None => Err(StageError::invalid(col, format!("{}: row {i} is unlabelled (null `{col}`)", file.display()))),
            Some(x) => {
                Err(StageError::invalid(col, format!("{}: row {i} has `{col}` = {x}, expected 0 or 1", file.display())))
            }
        })
        .collect()
}

/// A table read for a stage: errors name the input slot when it is empty.
pub fn read_nonempty(path: &Path, slot: &str, columns: Option<&[&str]>) -> StageResult<RecordBatch> {
    let t = crate::table::read_table(path, columns)?;
    if t.num_rows() == 0 {
        return Err(StageError::invalid(slot, format!("{}: the table is empty", path.display())));
    }
    Ok(t)
}

/// Runs `f` over `0..n` in chunks of `size`, reporting progress.
pub fn chunks(n: usize, size: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let size = size.max(1);
    (0..n.div_ceil(size)).map(move |c| c * size..((c + 1) * size).min(n))
}

/// Writes a small JSON-lines-free metrics table: rows of named f64 columns (NaN for missing → null).
pub fn write_metrics(path: &Path, columns: &[(&str, Vec<Option<f64>>)], kv: &[(String, String)]) -> StageResult<()> {
    use arrow::datatypes::{DataType, Field, Schema};
    let fields: Vec<Field> = columns.iter().map(|(n, _)| Field::new(*n, DataType::Float64, true)).collect();
    let arrays: Vec<arrow::array::ArrayRef> = columns
        .iter()
        .map(|(_, v)| std::sync::Arc::new(arrow::array::Float64Array::from(v.clone())) as arrow::array::ArrayRef)
        .collect();
    let batch = RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), arrays)?;
    crate::table::write_table(path, &batch, kv)
}

/// Splits rows into shard `shard` of `shards` (contiguous, in order; the concatenation of all shards is the whole).
pub fn shard_range(n: usize, shard: usize, shards: usize) -> std::ops::Range<usize> {
    (n * shard / shards)..(n * (shard + 1) / shards)
}

/// Validates shard/shards parameters.
pub fn check_shards(shard: usize, shards: usize) -> StageResult<()> {
    if shards == 0 {
        return Err(StageError::invalid("shards", "must be at least 1"));
    }
    if shard >= shards {
        return Err(StageError::invalid("shard", format!("must be below shards ({shards}), got {shard}")));
    }
    Ok(())
}

/// A numeric column as f64 (nulls are an error naming the column and row).
pub fn f64s(batch: &arrow::array::RecordBatch, col: &str, file: &Path) -> StageResult<Vec<f64>> {
    use arrow::array::{Array, AsArray};
    let a = batch
        .column_by_name(col)
        .ok_or_else(|| StageError::invalid(col, format!("{}: missing column `{col}`", file.display())))?;
    let cast = arrow::compute::cast(a, &arrow::datatypes::DataType::Float64)
        .map_err(|e| StageError::invalid(col, format!("{}: column `{col}` is not numeric: {e}", file.display())))?;
    let v = cast.as_primitive::<arrow::datatypes::Float64Type>();
    (0..v.len())
        .map(|i| {
            if v.is_null(i) {
                Err(StageError::invalid(col, format!("{}: column `{col}` is null at row {i}", file.display())))
            } else {
                Ok(v.value(i))
            }
        })
        .collect()
}
