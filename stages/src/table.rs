//! Parquet helpers shared by the table stages, and the normalised pairs table they exchange.
//!
//! # The normalised pairs table
//! One row per preference pair (see [`pairs_schema`]):
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `pair_id` | Utf8 | first 16 hex chars of BLAKE3(prompt ␀ min(a,b) ␀ max(a,b)): stable under row and a/b order |
//! | `prompt`, `response_a`, `response_b` | Utf8 | non-null, non-empty |
//! | `label` | Int8, nullable | 0: `response_a` preferred, 1: `response_b` preferred, null: unlabelled |
//! | `words_a`, `words_b` | UInt32 | whitespace-separated word counts |
//! | `tokens_a`, `tokens_b` | UInt32, nullable | token counts under the import's tokenizer, null without one |
//! | `source_row` | UInt32 | 0-based record index in the input file |
//!
//! Later stages may add columns (e.g. `subsample` adds `longer_preferred` Boolean) and must keep the others.
//!
//! # Helpers
//! - [`write_table`]`(path, &batch, kv)`: deterministic Parquet (fixed writer properties, zstd, no timestamps; the same
//!   batch and key-value metadata give byte-identical files). The stage's counts go in `kv` (see [`summary_kv`]).
//! - [`read_table`]`(path, Some(&["label", "words_a"]))`: the whole file or a projection of its columns, as one batch;
//!   row groups are decoded in parallel. A missing column is an error naming the file and the column.
//! - [`read_rows`]`(path, &sorted_rows)`: only the given rows (all columns); [`read_rows_parts`] leaves them per row
//!   group for one final gather. Untouched row groups are not read; sparse selections skip values and pages.
//! - [`read_kv`]: a file's key-value metadata.
//! - [`pair_hash`], [`pair_id`], [`word_count`], [`PairsBuilder`]: building the normalised table.
//! - [`uniform_below`], [`uniform_f64`], [`partial_shuffle`]: seeded sampling with fixed algorithms (ChaCha8 streams).
//!
//! Unit tests and examples drive stages through `tests/support/local_ctx.rs` (a `Ctx` on local files), included here
//! as `table::local_ctx` under `cfg(test)`.

use crate::port::{StageError, StageResult};
use arrow::array::{Array, ArrayRef, Int8Builder, RecordBatch, StringBuilder, UInt32Builder};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection,
};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::{KeyValue, PageIndexPolicy};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use rayon::prelude::*;
use serde_json::Value;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

#[allow(unused_imports)]
use crate::port;

pub const PAIR_ID: &str = "pair_id";
pub const PROMPT: &str = "prompt";
pub const RESPONSE_A: &str = "response_a";
pub const RESPONSE_B: &str = "response_b";
pub const LABEL: &str = "label";
pub const WORDS_A: &str = "words_a";
pub const WORDS_B: &str = "words_b";
pub const TOKENS_A: &str = "tokens_a";
pub const TOKENS_B: &str = "tokens_b";
pub const SOURCE_ROW: &str = "source_row";
pub const LONGER_PREFERRED: &str = "longer_preferred";

/// Rows per row group: large enough for fast scans, small enough that several row groups decode in parallel.
pub const ROW_GROUP_ROWS: usize = 1 << 20;

/// The schema of the normalised pairs table (see the module docs).
pub fn pairs_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(PAIR_ID, DataType::Utf8, false),
        Field::new(PROMPT, DataType::Utf8, false),
        Field::new(RESPONSE_A, DataType::Utf8, false),
        Field::new(RESPONSE_B, DataType::Utf8, false),
        Field::new(LABEL, DataType::Int8, true),
        Field::new(WORDS_A, DataType::UInt32, false),
        Field::new(WORDS_B, DataType::UInt32, false),
        Field::new(TOKENS_A, DataType::UInt32, true),
        Field::new(TOKENS_B, DataType::UInt32, true),
        Field::new(SOURCE_ROW, DataType::UInt32, false),
    ]))
}

/// BLAKE3 over `prompt ␀ lo ␀ hi`, where (lo, hi) are the two responses in byte order: the same pair hashes the same
/// whatever the order of its responses or of the rows. Text may hold U+0000 (JSON's `\u0000`), which would make that
/// ambiguous (("P␀A", "B") and ("P", "A␀B") hashed alike, and import dropped one as the other's duplicate): a pair
/// with a NUL in any text is hashed as `␀␀␀` and each text prefixed by its length instead. That input has at least four
/// NULs and the first exactly two, so the two encodings never meet, and NUL-free pairs keep their ids.
pub fn pair_hash(prompt: &str, a: &str, b: &str) -> blake3::Hash {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut h = blake3::Hasher::new();
    if [prompt, lo, hi].iter().any(|t| t.as_bytes().contains(&0)) {
        h.update(&[0, 0, 0]);
        for t in [prompt, lo, hi] {
            h.update(&(t.len() as u64).to_le_bytes());
            h.update(t.as_bytes());
        }
        return h.finalize();
    }
    h.update(prompt.as_bytes());
    h.update(&[0]);
    h.update(lo.as_bytes());
    h.update(&[0]);
    h.update(hi.as_bytes());
    h.finalize()
}

/// The `pair_id` of a pair hash: its first 16 hex characters.
pub fn pair_id(hash: &blake3::Hash) -> String {
    hash.to_hex()[..16].to_string()
}

/// Whitespace-separated words (`str::split_whitespace`). ASCII text, the usual case, is counted as the non-space bytes
/// that follow a space or the start: nothing carried from byte to byte, so the loop vectorises (3× the stateful loop
/// it replaced, on the responses of `import`'s 1M-record benchmark file).
pub fn word_count(s: &str) -> u32 {
    if !s.is_ascii() {
        return s.split_whitespace().count() as u32;
    }
    // the ASCII characters `char::is_whitespace` accepts: space and 0x09..=0x0d
    let space = |b: u8| b == b' ' || b.wrapping_sub(b'\t') < 5;
    let b = s.as_bytes();
    let Some(&first) = b.first() else { return 0 };
    let starts: u32 = b.iter().zip(&b[1..]).map(|(&prev, &c)| (space(prev) & !space(c)) as u32).sum();
    starts + !space(first) as u32
}

/// Appends rows of the normalised pairs table.
pub struct PairsBuilder {
    pair_id: StringBuilder,
    prompt: StringBuilder,
    a: StringBuilder,
    b: StringBuilder,
    label: Int8Builder,
    words_a: UInt32Builder,
    words_b: UInt32Builder,
    tokens_a: UInt32Builder,
    tokens_b: UInt32Builder,
    source_row: UInt32Builder,
}

/// One row of the normalised pairs table, borrowed.
pub struct PairRow<'a> {
    pub pair_id: &'a str,
    pub prompt: &'a str,
    pub a: &'a str,
    pub b: &'a str,
    pub label: Option<i8>,
    pub words: (u32, u32),
    pub tokens: Option<(u32, u32)>,
    pub source_row: u32,
}

impl PairsBuilder {
    pub fn with_capacity(rows: usize, text_bytes: usize) -> Self {
        let s = |bytes| StringBuilder::with_capacity(rows, bytes);
        PairsBuilder {
            pair_id: s(rows * 16),
            prompt: s(text_bytes / 2),
            a: s(text_bytes / 4),
            b: s(text_bytes / 4),
            label: Int8Builder::with_capacity(rows),
            words_a: UInt32Builder::with_capacity(rows),
            words_b: UInt32Builder::with_capacity(rows),
            tokens_a: UInt32Builder::with_capacity(rows),
            tokens_b: UInt32Builder::with_capacity(rows),
            source_row: UInt32Builder::with_capacity(rows),
        }
    }

    pub fn push(&mut self, r: PairRow<'_>) {
        self.pair_id.append_value(r.pair_id);
        self.prompt.append_value(r.prompt);
        self.a.append_value(r.a);
        self.b.append_value(r.b);
        self.label.append_option(r.label);
        self.words_a.append_value(r.words.0);
        self.words_b.append_value(r.words.1);
        self.tokens_a.append_option(r.tokens.map(|t| t.0));
        self.tokens_b.append_option(r.tokens.map(|t| t.1));
        self.source_row.append_value(r.source_row);
    }

    pub fn finish(mut self) -> RecordBatch {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.pair_id.finish()),
            Arc::new(self.prompt.finish()),
            Arc::new(self.a.finish()),
            Arc::new(self.b.finish()),
            Arc::new(self.label.finish()),
            Arc::new(self.words_a.finish()),
            Arc::new(self.words_b.finish()),
            Arc::new(self.tokens_a.finish()),
            Arc::new(self.tokens_b.finish()),
            Arc::new(self.source_row.finish()),
        ];
        RecordBatch::try_new(pairs_schema(), cols).expect("pairs columns match the pairs schema")
    }
}

/// Key-value metadata from a stage's JSON summary: `rmdistill.stage` = the stage, and `rmdistill.<key>` for each
/// top-level field (strings as they are, everything else as compact JSON), in the summary's order.
pub fn summary_kv(stage: &str, summary: &Value) -> Vec<(String, String)> {
    let mut kv = vec![("rmdistill.stage".to_string(), stage.to_string())];
    if let Value::Object(m) = summary {
        for (k, v) in m {
            let s = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            kv.push((format!("rmdistill.{k}"), s));
        }
    }
    kv
}

/// The fixed writer properties of every table this crate writes: the bytes depend only on the data and `kv`.
pub fn writer_properties(kv: &[(String, String)]) -> WriterProperties {
    WriterProperties::builder()
        .set_writer_version(WriterVersion::PARQUET_1_0)
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("valid zstd level")))
        .set_created_by("rmdistill-stages".to_string())
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_key_value_metadata(Some(kv.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())).collect()))
        .build()
}

/// Writes `batch` to `path` as Parquet with [`writer_properties`]. Deterministic: same batch and `kv`, same bytes.
/// Column chunks are encoded and compressed in parallel (every row group × column at once), then appended in order,
/// so the bytes do not depend on the number of threads.
pub fn write_table(path: &Path, batch: &RecordBatch, kv: &[(String, String)]) -> StageResult<()> {
    write_table_in_groups(path, std::slice::from_ref(batch), kv, ROW_GROUP_ROWS)
}

/// [`write_table`] of the concatenation of `batches` (one schema), without concatenating them: each batch is cut
/// into row groups of [`ROW_GROUP_ROWS`] on its own, so batches of exactly that many rows (the last one shorter)
/// give the same bytes as `write_table` of their concatenation.
pub fn write_tables(path: &Path, batches: &[RecordBatch], kv: &[(String, String)]) -> StageResult<()> {
    write_table_in_groups(path, batches, kv, ROW_GROUP_ROWS)
}

/// [`write_tables`] with row groups of `group_rows` rows (at most [`ROW_GROUP_ROWS`]): smaller groups give more
/// column chunks to compress at once, for a table written once and read whole (`import`'s).
pub fn write_table_in_groups(
    path: &Path,
    batches: &[RecordBatch],
    kv: &[(String, String)],
    group_rows: usize,
) -> StageResult<()> {
    write_owned_in_groups(path, batches.to_vec(), kv, group_rows)
}

/// [`write_table_in_groups`] that takes the batches and lets each go once its rows are written: a batch of whole
/// row groups is freed as the file grows, so the table and its compressed pages are never all in memory at once.
pub fn write_owned_in_groups(
    path: &Path,
    batches: Vec<RecordBatch>,
    kv: &[(String, String)],
    group_rows: usize,
) -> StageResult<()> {
    let Some(first) = batches.first() else {
        return Err(StageError::failed(format!("{}: no batch to write", path.display())));
    };
    let mut w = GroupWriter::create(path, first.schema())?;
    // every row group's rows in order (an empty table has none), each batch cut into its own groups
    let mut groups = batches
        .into_iter()
        .flat_map(|b| {
            let rows = b.num_rows();
            (0..rows.div_ceil(group_rows))
                .map(|g| b.slice(g * group_rows, group_rows.min(rows - g * group_rows)))
                .collect::<Vec<_>>()
        })
        .peekable();
    // two groups per thread at once: enough columns to keep every thread busy (a group's prompt column takes
    // longer than its other columns together)
    let window = 2 * rayon::current_num_threads();
    while groups.peek().is_some() {
        w.write_groups(groups.by_ref().take(window).collect())?;
    }
    w.finish(kv)
}

/// A Parquet file with [`writer_properties`] written a few row groups at a time, its key-value metadata given at
/// the end: a stage that streams its input (`import`) writes each group as it is complete and its counts once it
/// has seen everything. The bytes are those of [`write_table_in_groups`] of the same groups and `kv` (that function
/// writes through this), whatever the number of threads and however the groups are handed over.
pub struct GroupWriter {
    path: std::path::PathBuf,
    file: parquet::file::writer::SerializedFileWriter<std::io::BufWriter<File>>,
    factory: parquet::arrow::arrow_writer::ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    /// `ARROW:schema`, which the footer lists after the stage's own key-value pairs, as `ArrowWriter` puts it
    arrow_schema: KeyValue,
    groups: usize,
}

impl GroupWriter {
    pub fn create(path: &Path, schema: SchemaRef) -> StageResult<GroupWriter> {
        use parquet::arrow::arrow_writer::ArrowWriterOptions;
        let file = File::create(path).map_err(|e| io_err(path, e))?;
        let sink = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut scratch = WriterProperties::builder().build();
        parquet::arrow::add_encoded_arrow_schema_to_metadata(&schema, &mut scratch);
        let arrow_schema = scratch
            .key_value_metadata()
            .and_then(|kv| kv.iter().find(|k| k.key == parquet::arrow::ARROW_SCHEMA_META_KEY))
            .cloned()
            .ok_or_else(|| StageError::failed(format!("{}: the Arrow schema did not encode", path.display())))?;
        let options = ArrowWriterOptions::new().with_properties(writer_properties(&[])).with_skip_arrow_metadata(true);
        let writer = ArrowWriter::try_new_with_options(sink, schema.clone(), options)?;
        let (file, factory) = writer.into_serialized_writer()?;
        Ok(GroupWriter { path: path.to_path_buf(), file, factory, schema, arrow_schema, groups: 0 })
    }

    /// Appends one row group per batch, in order; every column of every group is encoded at once on rayon's
    /// threads. The batches are freed as their groups are written.
    pub fn write_groups(&mut self, batches: Vec<RecordBatch>) -> StageResult<()> {
        use parquet::arrow::arrow_writer::{ArrowColumnChunk, compute_leaves};
        let first = self.groups;
        let mut tasks = Vec::new();
        for (k, batch) in batches.iter().enumerate() {
            let writers = self.factory.create_column_writers(first + k)?;
            let mut leaves = Vec::with_capacity(writers.len());
            for (field, col) in self.schema.fields().iter().zip(batch.columns()) {
                leaves.extend(compute_leaves(field, col)?);
            }
            if writers.len() != leaves.len() {
                return Err(StageError::failed(format!(
                    "{}: a batch does not have the file's schema ({} columns for {})",
                    self.path.display(),
                    leaves.len(),
                    writers.len()
                )));
            }
            tasks.extend(writers.into_iter().zip(leaves).map(|(w, l)| (k, w, l)));
        }
        drop(batches);
        let chunks: Vec<(usize, ArrowColumnChunk)> = tasks
            .into_par_iter()
            .map(|(k, mut w, leaf)| {
                w.write(&leaf)?;
                Ok((k, w.close()?))
            })
            .collect::<parquet::errors::Result<_>>()?;
        let mut chunks = chunks.into_iter().peekable();
        while let Some(&(k, _)) = chunks.peek() {
            let mut rg = self.file.next_row_group()?;
            while let Some((_, chunk)) = chunks.next_if(|(ck, _)| *ck == k) {
                chunk.append_to_row_group(&mut rg)?;
            }
            rg.close()?;
            self.groups += 1;
        }
        Ok(())
    }

    /// Writes the footer with `kv` (then `ARROW:schema`) and syncs the file.
    pub fn finish(mut self, kv: &[(String, String)]) -> StageResult<()> {
        for (k, v) in kv {
            self.file.append_key_value_metadata(KeyValue::new(k.clone(), v.clone()));
        }
        self.file.append_key_value_metadata(self.arrow_schema);
        let sink = self.file.into_inner()?;
        let path = self.path;
        sink.into_inner().map_err(|e| io_err(&path, e.into_error()))?.sync_all().map_err(|e| io_err(&path, e))?;
        Ok(())
    }
}

fn io_err(path: &Path, e: std::io::Error) -> StageError {
    StageError::failed(format!("{}: {e}", path.display()))
}

fn open(path: &Path) -> StageResult<File> {
    File::open(path).map_err(|e| io_err(path, e))
}

fn load_meta(path: &Path, page_index: bool) -> StageResult<ArrowReaderMetadata> {
    let file = open(path)?;
    let opts = ArrowReaderOptions::new().with_page_index_policy(if page_index {
        PageIndexPolicy::Optional
    } else {
        PageIndexPolicy::Skip
    });
    ArrowReaderMetadata::load(&file, opts)
        .map_err(|e| StageError::failed(format!("{}: not a readable Parquet file: {e}", path.display())))
}

/// The file's Arrow schema (from its footer only), without key-value metadata (see [`read_kv`]).
pub fn read_schema(path: &Path) -> StageResult<SchemaRef> {
    Ok(plain(load_meta(path, false)?.schema()))
}

/// The file's key-value metadata, in file order.
pub fn read_kv(path: &Path) -> StageResult<Vec<(String, String)>> {
    let meta = load_meta(path, false)?;
    Ok(meta
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .map(|kv| kv.iter().map(|k| (k.key.clone(), k.value.clone().unwrap_or_default())).collect())
        .unwrap_or_default())
}

/// The projection mask for `columns` and the Arrow schema it yields (file order, without the file's key-value
/// metadata, which [`read_kv`] returns).
fn projection(
    path: &Path,
    meta: &ArrowReaderMetadata,
    columns: Option<&[&str]>,
) -> StageResult<(ProjectionMask, SchemaRef)> {
    let schema = meta.schema();
    let Some(cols) = columns else { return Ok((ProjectionMask::all(), plain(schema))) };
    let mut idx = Vec::with_capacity(cols.len());
    for c in cols {
        match schema.index_of(c) {
            Ok(i) => idx.push(i),
            Err(_) => {
                let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(StageError::invalid(
                    *c,
                    format!("{}: missing column `{c}` (the table has: {})", path.display(), have.join(", ")),
                ));
            }
        }
    }
    idx.sort_unstable();
    idx.dedup();
    let projected = schema.project(&idx)?;
    Ok((ProjectionMask::roots(meta.parquet_schema(), idx), plain(&Arc::new(projected))))
}

/// The schema without its metadata.
fn plain(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(schema.fields().clone()))
}

/// Decodes one reader's batches into a single batch of `schema`.
fn collect(
    reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    schema: &SchemaRef,
) -> StageResult<RecordBatch> {
    let batches = reader.map(|b| b.and_then(|b| b.with_schema(schema.clone()))).collect::<Result<Vec<_>, _>>()?;
    Ok(concat_batches(schema, &batches)?)
}

/// Reads the whole table at `path`, or only `columns` (in file order), as one batch. Row groups decode in parallel.
pub fn read_table(path: &Path, columns: Option<&[&str]>) -> StageResult<RecordBatch> {
    let meta = load_meta(path, false)?;
    let (mask, schema) = projection(path, &meta, columns)?;
    let n_rg = meta.metadata().num_row_groups();
    let parts: Vec<RecordBatch> = (0..n_rg)
        .into_par_iter()
        .map(|rg| {
            let rows = meta.metadata().row_group(rg).num_rows() as usize;
            let reader = ParquetRecordBatchReaderBuilder::new_with_metadata(open(path)?, meta.clone())
                .with_projection(mask.clone())
                .with_row_groups(vec![rg])
                .with_batch_size(rows.max(1))
                .build()?;
            collect(reader, &schema)
        })
        .collect::<StageResult<_>>()?;
    Ok(concat_batches(&schema, &parts)?)
}

/// Reads the rows at the given 0-based positions (sorted ascending, no repeats), all columns: one part per row group
/// that holds any of them, as (batch, the positions in that batch of the requested rows, in order). Row groups
/// without requested rows are not read. Where few of a group's rows are requested, pages without any are skipped and
/// the batch holds only the requested rows; where many are, the whole group is decoded (cheaper than filtering) and
/// the positions point into it, for a single gather by the caller (e.g. `interleave_record_batch`).
pub fn read_rows_parts(path: &Path, rows: &[u32]) -> StageResult<Vec<(RecordBatch, Vec<u32>)>> {
    use parquet::arrow::arrow_reader::RowSelectionPolicy;
    assert!(rows.windows(2).all(|w| w[0] < w[1]), "read_rows needs sorted, distinct rows");
    let meta = load_meta(path, true)?;
    let schema = plain(meta.schema());
    // (row group, the requested rows local to it, rows in the group)
    let mut groups: Vec<(usize, Vec<u32>, usize)> = Vec::new();
    let mut start = 0u64;
    let mut i = 0usize;
    for rg in 0..meta.metadata().num_row_groups() {
        let n = meta.metadata().row_group(rg).num_rows() as u64;
        let end = start + n;
        let first = i;
        while i < rows.len() && (rows[i] as u64) < end {
            i += 1;
        }
        if i > first {
            groups.push((rg, rows[first..i].iter().map(|&r| (r as u64 - start) as u32).collect(), n as usize));
        }
        start = end;
    }
    if i < rows.len() {
        return Err(StageError::failed(format!(
            "{}: row {} requested but the table has {start} rows",
            path.display(),
            rows[i]
        )));
    }
    groups
        .into_par_iter()
        .map(|(rg, local, n)| {
            let builder =
                ParquetRecordBatchReaderBuilder::new_with_metadata(open(path)?, meta.clone()).with_row_groups(vec![rg]);
            // Measured on 10M short-text pairs: skipping wins below about a quarter of the rows.
            if local.len() * 4 < n {
                let mut ranges: Vec<std::ops::Range<usize>> = Vec::new();
                for &r in &local {
                    let r = r as usize;
                    match ranges.last_mut() {
                        Some(x) if x.end == r => x.end += 1,
                        _ => ranges.push(r..r + 1),
                    }
                }
                let reader = builder
                    .with_row_selection(RowSelection::from_consecutive_ranges(ranges.into_iter(), n))
                    .with_row_selection_policy(RowSelectionPolicy::Selectors)
                    .with_batch_size(local.len())
                    .build()?;
                Ok((collect(reader, &schema)?, (0..local.len() as u32).collect()))
            } else {
                let reader = builder.with_batch_size(n.max(1)).build()?;
                Ok((collect(reader, &schema)?, local))
            }
        })
        .collect()
}

/// The rows at the given 0-based positions (sorted ascending, no repeats), all columns, in that order.
pub fn read_rows(path: &Path, rows: &[u32]) -> StageResult<RecordBatch> {
    let parts = read_rows_parts(path, rows)?;
    if parts.is_empty() {
        return Ok(RecordBatch::new_empty(plain(load_meta(path, false)?.schema())));
    }
    let at: Vec<(usize, usize)> =
        parts.iter().enumerate().flat_map(|(p, (_, pos))| pos.iter().map(move |&r| (p, r as usize))).collect();
    let refs: Vec<&RecordBatch> = parts.iter().map(|(b, _)| b).collect();
    Ok(arrow::compute::interleave_record_batch(&refs, &at)?)
}

/// The values of a UInt32 column with no nulls (after `read_table`), or an error naming the column.
pub fn u32_values<'a>(batch: &'a RecordBatch, col: &str) -> StageResult<&'a arrow::array::UInt32Array> {
    let a = batch.column_by_name(col).ok_or_else(|| StageError::invalid(col, format!("missing column `{col}`")))?;
    a.as_any()
        .downcast_ref::<arrow::array::UInt32Array>()
        .ok_or_else(|| StageError::invalid(col, format!("column `{col}` must be UInt32, found {}", a.data_type())))
}

// ---- Deterministic randomness, fixed here rather than borrowed from `rand`'s distributions (whose algorithms may
// change between versions): the same seed must select the same rows on every machine and toolchain.

/// A uniform integer in `0..n` (`n > 0`) by Lemire's multiply-and-reject method: unbiased, one draw almost always.
pub fn uniform_below(rng: &mut impl rand::RngCore, n: u64) -> u64 {
    assert!(n > 0, "uniform_below(0)");
    let mut m = (rng.next_u64() as u128) * (n as u128);
    if (m as u64) < n {
        let threshold = n.wrapping_neg() % n;
        while (m as u64) < threshold {
            m = (rng.next_u64() as u128) * (n as u128);
        }
    }
    (m >> 64) as u64
}

/// A uniform f64 in `[0, 1)` with 53 random bits.
pub fn uniform_f64(rng: &mut impl rand::RngCore) -> f64 {
    (rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// Moves a uniform random sample of `k` of `v`'s elements, without replacement, to `v[..k]` (a partial
/// Fisher–Yates shuffle: O(k) draws, and `v[..k]` is itself in uniformly random order).
pub fn partial_shuffle<T>(rng: &mut impl rand::RngCore, v: &mut [T], k: usize) {
    let n = v.len();
    assert!(k <= n);
    for i in 0..k.min(n.saturating_sub(1)) {
        let j = i + uniform_below(rng, (n - i) as u64) as usize;
        v.swap(i, j);
    }
}

#[cfg(test)]
#[path = "../tests/support/local_ctx.rs"]
pub(crate) mod local_ctx;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_count_agrees_with_split_whitespace() {
        for s in [
            "",
            " ",
            "\t",
            "a",
            "  a",
            "a  ",
            "one",
            " two  words ",
            "a\tb\nc\x0bd\x0ce\rf",
            "x\x1cy\x1fz",
            "caf\u{e9} au lait",
            "no\u{a0}break\u{2003}em\u{3000}ideographic",
            "\u{85}next line",
        ] {
            assert_eq!(word_count(s), s.split_whitespace().count() as u32, "{s:?}");
        }
        for b in 0u8..128 {
            let s = format!("a{}b", b as char);
            assert_eq!(word_count(&s), s.split_whitespace().count() as u32, "byte {b:#x}");
        }
    }

    #[test]
    fn uniform_below_is_in_range_and_roughly_uniform() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let mut counts = [0u32; 7];
        for _ in 0..70_000 {
            counts[uniform_below(&mut rng, 7) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (9_000..11_000).contains(&c)), "{counts:?}");
        let mut v: Vec<u32> = (0..100).collect();
        partial_shuffle(&mut rng, &mut v, 100);
        let mut s = v.clone();
        s.sort();
        assert_eq!(s, (0..100).collect::<Vec<_>>());
        assert_ne!(v, s);
    }

    #[test]
    fn parallel_write_is_thread_independent_and_rows_read_across_groups() {
        let dir = tempfile::tempdir().unwrap();
        let (batch, _) =
            crate::generate::generate(serde_json::json!({"n": 1000, "seed": 2}).as_object().unwrap()).unwrap();
        let write = |threads: usize, name: &str| {
            let p = dir.path().join(name);
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| write_table_in_groups(&p, std::slice::from_ref(&batch), &[("a".into(), "b".into())], 128))
                .unwrap();
            p
        };
        let (p1, p3) = (write(1, "1.parquet"), write(3, "3.parquet"));
        assert_eq!(std::fs::read(&p1).unwrap(), std::fs::read(&p3).unwrap());
        // the same rows given as batches of whole row groups (the last one shorter): the same bytes
        let parts: Vec<RecordBatch> =
            [0, 256, 768].iter().zip([256, 512, 232]).map(|(&o, n)| batch.slice(o, n)).collect();
        let pp = dir.path().join("parts.parquet");
        write_table_in_groups(&pp, &parts, &[("a".into(), "b".into())], 128).unwrap();
        assert_eq!(std::fs::read(&pp).unwrap(), std::fs::read(&p1).unwrap());
        assert_eq!(load_meta(&p1, false).unwrap().metadata().num_row_groups(), 8);
        assert_eq!(read_table(&p1, None).unwrap(), batch);
        // sparse (selectors) in some groups, dense (mask) in others, and whole groups skipped
        let rows: Vec<u32> = (0..1000u32).filter(|r| r % 97 == 0 || (300..420).contains(r) || r % 128 == 127).collect();
        let got = read_rows(&p1, &rows).unwrap();
        let want = arrow::compute::take_record_batch(&batch, &arrow::array::UInt32Array::from(rows.clone())).unwrap();
        assert_eq!(got, want);
        assert_eq!(read_rows_parts(&p1, &[5, 900]).unwrap().len(), 2);
    }

    #[test]
    fn pair_hash_ignores_response_order() {
        assert_eq!(pair_hash("p", "x", "y"), pair_hash("p", "y", "x"));
        assert_ne!(pair_hash("p", "x", "y"), pair_hash("p", "x", "z"));
        // the separator keeps field boundaries: ("ab","c") and ("a","bc") differ
        assert_ne!(pair_hash("p", "ab", "c"), pair_hash("p", "a", "bc"));
        assert_eq!(pair_id(&pair_hash("p", "x", "y")).len(), 16);
        // a NUL inside a text does not move a field boundary (a red-team finding: import dropped the second record
        // as a duplicate of the first)
        assert_ne!(pair_hash("P\0A", "B", "C"), pair_hash("P", "A\0B", "C"));
        assert_ne!(pair_hash("P", "A\0", "B"), pair_hash("P", "A", "\0B"));
        assert_eq!(pair_hash("P\0", "x", "y"), pair_hash("P\0", "y", "x"));
        // pairs without a NUL keep the ids they always had
        assert_eq!(pair_id(&pair_hash("p", "x", "y")), pair_id(&blake3::hash(b"p\0x\0y")));
    }

    #[test]
    fn write_read_roundtrip_projection_and_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = PairsBuilder::with_capacity(10, 100);
        for i in 0..10u32 {
            let (p, a, bb) = (format!("p{i}"), format!("a {i}"), format!("b b {i}"));
            let id = pair_id(&pair_hash(&p, &a, &bb));
            b.push(PairRow {
                pair_id: &id,
                prompt: &p,
                a: &a,
                b: &bb,
                label: if i % 3 == 0 { None } else { Some((i % 2) as i8) },
                words: (word_count(&a), word_count(&bb)),
                tokens: None,
                source_row: i,
            });
        }
        let batch = b.finish();
        let path = dir.path().join("t.parquet");
        write_table(&path, &batch, &[("k".into(), "v".into())]).unwrap();
        assert_eq!(read_table(&path, None).unwrap(), batch);
        let proj = read_table(&path, Some(&[WORDS_B, LABEL])).unwrap();
        assert_eq!(proj.num_columns(), 2);
        assert_eq!(proj.schema().field(0).name(), LABEL, "projection keeps file order");
        let rows = read_rows(&path, &[1, 2, 7]).unwrap();
        assert_eq!(rows.num_rows(), 3);
        let src = u32_values(&rows, SOURCE_ROW).unwrap();
        assert_eq!(src.values().to_vec(), vec![1, 2, 7]);
        assert!(read_kv(&path).unwrap().contains(&("k".to_string(), "v".to_string())));
        let err = read_table(&path, Some(&["nope"])).unwrap_err().to_string();
        assert!(err.contains("missing column `nope`"), "{err}");
        // deterministic bytes
        let path2 = dir.path().join("t2.parquet");
        write_table(&path2, &batch, &[("k".into(), "v".into())]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&path2).unwrap());
    }
}
