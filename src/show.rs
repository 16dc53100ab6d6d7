//! `show`: previews a node's output — a Parquet table (schema, row count, first rows), a JSON document, or a
//! directory artifact's listing — by node name or by hash.

use crate::error::{NotReady, StoreError, quoted};
use crate::exec;
use crate::plan::Plan;
use crate::render::{is_unsafe_char, visible};
use crate::store::{Entry, OutputRef, Store};
use arrow::array::{Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::pretty::pretty_format_batches;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rmdistill_stages::ArtifactKind;
use std::sync::Arc;

/// The artifact `what` names: its label, where it is, and the warnings of the node that wrote it (none for a blob
/// named by hash).
fn resolve(plan: &Plan, store: &Store, what: &str) -> anyhow::Result<(String, OutputRef, Vec<String>)> {
    let (node, output) = match plan.find(what) {
        Some(_) => (what, None),
        None => match what.rsplit_once('.') {
            Some((n, o)) if plan.find(n).is_some() => (n, Some(o)),
            _ => {
                // A hash (or its prefix) of a blob: hashes are lower-case hex, a prefix is matched in either case.
                if what.len() >= 8 && what.chars().all(|c| c.is_ascii_hexdigit()) {
                    let prefix = what.to_ascii_lowercase();
                    let blobs = store.list(&format!("blobs/{}", &prefix[..2]))?;
                    let hits: Vec<_> = blobs
                        .iter()
                        .filter(|(p, _, _)| p.rsplit('/').next().unwrap_or("").starts_with(&prefix))
                        .collect();
                    if let [(p, size, _)] = hits.as_slice() {
                        let hash = p.rsplit('/').next().unwrap().to_string();
                        let kind = if store.tree(&hash).is_ok() { ArtifactKind::Dir } else { ArtifactKind::File };
                        return Ok((hash.clone(), OutputRef { hash, kind, size: *size }, Vec::new()));
                    }
                    anyhow::bail!("{} blobs match {}", hits.len(), quoted(&visible(what, &[])));
                }
                anyhow::bail!(
                    "{} is neither a node, NODE.OUTPUT, nor a blob hash of this store{}",
                    quoted(&visible(what, &[])),
                    not_a_hash_prefix(what)
                );
            }
        },
    };
    let i = plan.find(node).expect("checked");
    let entry = stored_entry(plan, store, i)?;
    // in the order the stage declares them (its main output first: a policy's model, an evaluation's summary)
    let declared: Vec<String> = plan.nodes[i].kind.outputs().iter().map(|o| o.name.to_string()).collect();
    let mut ordered: Vec<&String> = entry.outputs.keys().collect();
    ordered.sort_by_key(|o| declared.iter().position(|d| d == *o).unwrap_or(usize::MAX));
    let names = ordered.iter().map(|o| o.as_str()).collect::<Vec<_>>().join(", ");
    let name = match output {
        Some(o) => o.to_string(),
        None => {
            // the first, said: `run` sends a user here for a node's warnings, whatever its outputs
            let first = ordered.first().map(|o| o.to_string()).unwrap_or_default();
            if entry.outputs.len() > 1 {
                eprintln!("note: {node} has several outputs ({names}): showing {first}; name one as {node}.OUTPUT");
            }
            first
        }
    };
    let out = entry.outputs.get(&name).cloned().ok_or_else(|| {
        anyhow::anyhow!("{node} has no output {}; its outputs: {names}", quoted(&visible(&name, &[])))
    })?;
    Ok((format!("{node}.{name}"), out, entry.warnings))
}

/// Why `what`, when it looks like a blob hash prefix, is not one: the first character that is not a hex digit (8
/// or more letters and digits, at least half of them hex digits), or too few digits (hex digits only, one a
/// digit). Empty when it does not look like one (a mistyped node name).
fn not_a_hash_prefix(what: &str) -> String {
    if what.is_empty() || !what.chars().all(|c| c.is_ascii_alphanumeric()) {
        return String::new();
    }
    let hex = what.chars().filter(|c| c.is_ascii_hexdigit()).count();
    match what.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        Some((i, c)) if what.len() >= 8 && 2 * hex >= what.len() => format!(
            " (as a blob hash prefix: `{c}`, character {} of it, is not a hex digit; hashes are written with 0-9 and a-f)",
            i + 1
        ),
        None if what.chars().any(|c| c.is_ascii_digit()) => {
            format!(" (as a blob hash prefix it is too short: give at least 8 hex digits, not {})", what.len())
        }
        _ => String::new(),
    }
}

/// The stored entry of a node for the current manifest (verified like every cache hit). Not stored yet is exit 4
/// (run it first); stored but corrupt or missing blobs is a store error, exit 3 (a run recomputes it).
pub fn stored_entry(plan: &Plan, store: &Store, target: usize) -> anyhow::Result<Entry> {
    known_entry(plan, store, target, exec::resolve_node(plan, store, target)?)
}

/// [`stored_entry`] and the stored entries of every node it depends on, with their indices in the plan.
pub fn stored_entry_with_upstream(
    plan: &Plan,
    store: &Store,
    target: usize,
) -> anyhow::Result<(Entry, Vec<(usize, Entry)>)> {
    let (resolved, upstream) = exec::resolve_with_upstream(plan, store, target)?;
    Ok((known_entry(plan, store, target, resolved)?, upstream))
}

/// The entry a resolution found, or the error saying why there is none.
fn known_entry(plan: &Plan, store: &Store, target: usize, resolved: exec::Resolved) -> anyhow::Result<Entry> {
    let node = &plan.nodes[target].name;
    let m = plan.manifest.path().display();
    match resolved {
        exec::Resolved::Known { hit: Some(e), .. } => Ok(e),
        exec::Resolved::Known { key, .. } => match store.incomplete_reason(&key) {
            Some(why) => Err(StoreError(format!("{node}: {why}; `rmdistill run {m}` recomputes it")).into()),
            None => Err(NotReady(format!(
                "{node} has no stored result for the current manifest; run it first (`rmdistill status {m}` says why)"
            ))
            .into()),
        },
        exec::Resolved::Undetermined { missing, .. } => Err(NotReady(format!(
            "{node} has no stored result for the current manifest: {}; run it first (`rmdistill status {m}` says why)",
            not_stored(&missing)
        ))
        .into()),
    }
}

/// Where and how the results of libtorch stages were produced (each entry's `machine`: [`crate::store::computed_on`]),
/// as one line, and whether more than one way: libtorch's numbers differ in their last bits between kinds of CPU,
/// thread counts, devices and kernel pins, so results from a mix are reproduced by no one machine and setting (each
/// reproduces its own exactly; the other stages' results are the same everywhere). E.g. "built from 700 stored
/// results of libtorch stages, all produced on AMD EPYC (x86_64)".
pub fn provenance<'a>(machines: impl IntoIterator<Item = Option<&'a str>>) -> (String, bool) {
    let machines: Vec<Option<&str>> = machines.into_iter().collect();
    let n = machines.len();
    let by = crate::store::count_machines(machines.iter().flatten().copied());
    let unrecorded = n - by.iter().map(|(_, c)| c).sum::<usize>();
    let mut parts = crate::store::machines_listed(&by);
    if unrecorded > 0 {
        parts.push(format!("{unrecorded} on a machine not recorded (stored before machines were)"));
    }
    match (by.len(), unrecorded) {
        (0, 0) => ("built from no stored result of a libtorch stage".to_string(), false),
        (1, 0) => (format!("built from {n} stored results of libtorch stages, all produced on {}", by[0].0), false),
        (0 | 1, _) => (format!("built from {n} stored results of libtorch stages: {}", parts.join(", ")), false),
        (kinds, _) => (
            format!(
                "built from {n} stored results of libtorch stages produced on {kinds} kinds of machine or settings: {}. \
                 libtorch's numbers differ in their last bits between kinds of CPU, thread counts and kernel pins, so \
                 no single machine and setting reproduces these results exactly; run the pipeline into a store of its \
                 own on one kind, with one setting, for a report it reproduces",
                parts.join(", ")
            ),
            true,
        ),
    }
}

/// "its upstream A is not stored", or a few of many upstream nodes and how many more (a report can wait on hundreds).
fn not_stored(missing: &[String]) -> String {
    match missing {
        [one] => format!("its upstream {one} is not stored"),
        _ if missing.len() <= exec::NAMES_SHOWN => format!("its upstream {} are not stored", missing.join(", ")),
        _ => format!("{} of its upstream nodes are not stored ({})", missing.len(), exec::some_names(missing)),
    }
}

/// Prints the artifact `what` names: a table's schema, key-value metadata and first `rows` rows (`--rows 0`: none,
/// and a line saying so), the first `5 × rows` lines of a text file, or a directory's listing with the total size of
/// its files. Human-readable output writes every character of the data that a terminal could act on visibly (see
/// [`crate::render::visible`]). With `json`, one JSON document on stdout for every kind; in a table's `preview`,
/// a null is left out of its row (as before) and a floating-point NaN or infinity, which JSON has no number for, is
/// the string "NaN", "inf" or "-inf" (never null). Characters a terminal could act on are escaped (`\u001b`,
/// `\u202e`), as JSON allows.
pub fn show(plan: &Plan, store: &Store, what: &str, rows: usize, json: bool) -> anyhow::Result<()> {
    let (label, out, warnings) = resolve(plan, store, what)?;
    let path = match store.materialize(&out) {
        Ok(p) => p,
        // damaged in the store: removed, so that the next `run` computes it again (a remote store checks only
        // sizes on lookup, and would otherwise count it a hit for good)
        Err(e) => match e.downcast::<crate::store::Corrupt>() {
            Ok(c) => {
                let remedy = if store.discard_if_corrupt(&c.hash).unwrap_or(false) {
                    "removed from the store: `rmdistill run` recomputes it"
                } else {
                    "`rmdistill run --force NODE` recomputes it"
                };
                let detail = format!("{}; {remedy}", c.detail);
                return Err(crate::store::Corrupt { hash: c.hash, detail }.into());
            }
            Err(e) => return Err(e),
        },
    };
    let shown_label = visible(&label, &[]);
    // The warnings go to stderr, where `run` gave them: stdout stays the artifact's view (and valid JSON).
    for w in &warnings {
        eprintln!("warning: {shown_label}: {}", visible(w, &['\n', '\t']));
    }
    if out.kind == ArtifactKind::Dir {
        let tree = store.tree(&out.hash)?;
        // the files' bytes (a listing named by its hash has its own size in the store, not its files')
        let total: u64 = tree.files.iter().map(|f| f.size).sum();
        if json {
            let files: Vec<_> = tree
                .files
                .iter()
                .map(|f| serde_json::json!({"path": f.path, "size": f.size, "hash": f.hash}))
                .collect();
            let doc = serde_json::json!({
                "artifact": label, "hash": out.hash, "kind": "dir", "files": tree.files.len(), "bytes": total,
                "listing": files,
            });
            println!("{}", json_text(&doc)?);
            return Ok(());
        }
        println!("{shown_label}: directory {} ({} files, {total} bytes)", out.hash, tree.files.len());
        for f in tree.files {
            println!("  {:>12}  {}  {}", f.size, crate::key::short(&f.hash), visible(&f.path, &[]));
        }
        return Ok(());
    }
    let mut magic = [0u8; 4];
    use std::io::Read;
    std::fs::File::open(&path)?.read_exact(&mut magic).ok();
    if &magic == b"PAR1" {
        let b = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&path)?)?;
        let total = b.metadata().file_metadata().num_rows();
        let kv: Vec<(String, String)> = b
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .map(|kv| {
                kv.iter()
                    .filter(|k| k.key != "ARROW:schema")
                    .map(|k| (k.key.clone(), k.value.clone().unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        let schema = b.schema().clone();
        let reader = b.with_batch_size(rows.clamp(1, 8192)).with_limit(rows).build()?;
        let batches: Vec<_> = reader.collect::<Result<_, _>>()?;
        if json {
            let preview = preview_json(&batches)?;
            let doc = serde_json::json!({
                "artifact": label, "hash": out.hash, "kind": "table", "rows": total,
                "metadata": kv.into_iter().collect::<std::collections::BTreeMap<_, _>>(), "preview": preview,
            });
            println!("{}", json_text(&doc)?);
            return Ok(());
        }
        println!("{shown_label}: table {} ({total} rows, {} bytes)", out.hash, out.size);
        for f in schema.fields() {
            let line =
                format!("{:<16} {}{}", f.name(), f.data_type(), if f.is_nullable() { " (nullable)" } else { "" });
            println!("  {}", visible(&line, &[]));
        }
        for (k, v) in kv {
            println!("  meta {} = {}", visible(&k, &[]), visible(&v, &[]));
        }
        let shown: usize = batches.iter().map(|b| b.num_rows()).sum();
        if shown == 0 {
            println!("{}", if total == 0 { "(the table has no rows)" } else { "(no rows shown: --rows 0)" });
            return Ok(());
        }
        println!("{}", pretty_format_batches(&[preview_text(&batches)?])?);
    } else {
        let data = std::fs::read(&path)?;
        let text = std::str::from_utf8(&data).ok();
        if json {
            let mut doc = serde_json::json!({
                "artifact": label, "hash": out.hash, "kind": "file", "bytes": out.size, "binary": text.is_none(),
            });
            if let Some(text) = text {
                doc["preview"] = text.lines().take(rows.saturating_mul(5)).collect();
            }
            println!("{}", json_text(&doc)?);
            return Ok(());
        }
        match text {
            Some(text) => {
                println!("{shown_label}: file {} ({} bytes)", out.hash, out.size);
                for line in text.lines().take(rows.saturating_mul(5)) {
                    println!("{}", visible(line, &['\t']));
                }
            }
            None => println!("{shown_label}: binary file {} ({} bytes)", out.hash, out.size),
        }
    }
    Ok(())
}

/// Pretty JSON of `doc`, with every character a terminal could act on that JSON allows raw (DEL, C1 controls,
/// bidi marks; serde already escapes C0 controls) written as a `\uXXXX` escape: the same document, safe on a
/// terminal. Apart from the line breaks between values, such characters occur only inside strings, where the
/// escape means the character itself.
fn json_text(doc: &serde_json::Value) -> anyhow::Result<String> {
    let text = serde_json::to_string_pretty(doc)?;
    let escape = |c: char| c != '\n' && is_unsafe_char(c);
    if !text.chars().any(escape) {
        return Ok(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if escape(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// The rows of `batches` as JSON objects (a null is left out of its row), with NaN and ±infinity, which the JSON
/// writer turns into null, written as "NaN", "inf" and "-inf", at any depth of lists and structs.
fn preview_json(batches: &[RecordBatch]) -> anyhow::Result<serde_json::Value> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::json::ArrayWriter::new(&mut buf);
        for batch in batches {
            w.write(batch)?;
        }
        w.finish()?;
    }
    let mut rows: serde_json::Value = if buf.is_empty() {
        serde_json::json!([])
    } else {
        serde_json::from_slice(&buf).map_err(|e| anyhow::anyhow!("cannot write the rows as JSON: {e}"))?
    };
    let Some(list) = rows.as_array_mut() else { anyhow::bail!("cannot write the rows as JSON: not an array") };
    let mut at = 0;
    for batch in batches {
        let float_cols: Vec<_> = batch
            .schema()
            .fields()
            .iter()
            .zip(batch.columns())
            .filter(|(f, _)| holds_floats(f.data_type()))
            .map(|(f, c)| (f.name().clone(), c.clone()))
            .collect();
        for i in 0..batch.num_rows() {
            if let Some(obj) = list.get_mut(at + i).and_then(|r| r.as_object_mut()) {
                for (name, col) in &float_cols {
                    if let Some(v) = obj.get_mut(name) {
                        non_finite_as_strings(col.as_ref(), i, v);
                    }
                }
            }
        }
        at += batch.num_rows();
    }
    Ok(rows)
}

/// Whether values of this type can hold a floating-point number (at any depth).
fn holds_floats(t: &DataType) -> bool {
    match t {
        DataType::Float16 | DataType::Float32 | DataType::Float64 => true,
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => holds_floats(f.data_type()),
        DataType::Struct(fs) => fs.iter().any(|f| holds_floats(f.data_type())),
        _ => false,
    }
}

/// The name of a float that JSON has no number for: "NaN", "inf" or "-inf" (as the table preview writes them).
fn non_finite_name(x: f64) -> Option<&'static str> {
    match x {
        x if x.is_nan() => Some("NaN"),
        f64::INFINITY => Some("inf"),
        f64::NEG_INFINITY => Some("-inf"),
        _ => None,
    }
}

/// Replaces, in `v` (the JSON the writer made of row `i` of `col`), each NaN or infinity by its name.
fn non_finite_as_strings(col: &dyn Array, i: usize, v: &mut serde_json::Value) {
    use arrow::array::AsArray;
    use arrow::datatypes::{Float16Type, Float32Type, Float64Type};
    if col.is_null(i) {
        return;
    }
    let float = match col.data_type() {
        DataType::Float16 => Some(col.as_primitive::<Float16Type>().value(i).to_f64()),
        DataType::Float32 => Some(col.as_primitive::<Float32Type>().value(i) as f64),
        DataType::Float64 => Some(col.as_primitive::<Float64Type>().value(i)),
        _ => None,
    };
    if let Some(x) = float {
        if let Some(name) = non_finite_name(x) {
            *v = serde_json::Value::String(name.to_string());
        }
        return;
    }
    let items = match col.data_type() {
        DataType::List(_) => Some(col.as_list::<i32>().value(i)),
        DataType::LargeList(_) => Some(col.as_list::<i64>().value(i)),
        DataType::FixedSizeList(..) => Some(col.as_fixed_size_list().value(i)),
        _ => None,
    };
    if let Some(items) = items {
        if let Some(vs) = v.as_array_mut() {
            for (k, item) in vs.iter_mut().enumerate().take(items.len()) {
                non_finite_as_strings(items.as_ref(), k, item);
            }
        }
        return;
    }
    if let DataType::Struct(fields) = col.data_type()
        && let Some(obj) = v.as_object_mut()
    {
        let st = col.as_struct();
        for (f, child) in fields.iter().zip(st.columns()) {
            if holds_floats(f.data_type())
                && let Some(x) = obj.get_mut(f.name())
            {
                non_finite_as_strings(child.as_ref(), i, x);
            }
        }
    }
}

/// The longest cell of the text preview, in characters of the data; a longer one is cut, ending in `…`.
const CELL_CHARS: usize = 60;

/// The text of one cell: line breaks as spaces (one line per row), every other character a terminal could act on
/// written visibly (`\u{1b}`, `\t`), cut after [`CELL_CHARS`] characters of the data.
fn cell_text(v: &str) -> String {
    let long = v.chars().nth(CELL_CHARS).is_some();
    let take = if long { CELL_CHARS - 1 } else { CELL_CHARS };
    let mut out = String::with_capacity(v.len().min(4 * CELL_CHARS));
    for c in v.chars().take(take) {
        match c {
            '\n' => out.push(' '),
            c if is_unsafe_char(c) => out.push_str(&visible(c.encode_utf8(&mut [0; 4]), &[])),
            c => out.push(c),
        }
    }
    if long {
        out.push('…');
    }
    out
}

/// The rows of `batches` as one batch of text columns, as the table preview prints them: every value formatted as
/// Arrow formats it (a null is empty) and then made a cell by [`cell_text`], headers made visible too. Long values
/// are cut so a preview stays a preview.
fn preview_text(batches: &[RecordBatch]) -> anyhow::Result<RecordBatch> {
    use arrow::array::{ArrayRef, StringBuilder};
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let schema = batches.first().map(|b| b.schema()).ok_or_else(|| anyhow::anyhow!("no rows to preview"))?;
    let options = FormatOptions::default().with_display_error(true);
    let mut cols: Vec<StringBuilder> = schema.fields().iter().map(|_| StringBuilder::new()).collect();
    for batch in batches {
        for (col, b) in batch.columns().iter().zip(cols.iter_mut()) {
            let fmt = ArrayFormatter::try_new(col.as_ref(), &options)?;
            for i in 0..col.len() {
                if col.is_null(i) {
                    b.append_null();
                } else {
                    b.append_value(cell_text(&fmt.value(i).to_string()));
                }
            }
        }
    }
    let fields: Vec<Field> =
        schema.fields().iter().map(|f| Field::new(visible(f.name(), &[]), DataType::Utf8, true)).collect();
    let arrays: Vec<ArrayRef> = cols.iter_mut().map(|b| Arc::new(b.finish()) as ArrayRef).collect();
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}

#[cfg(test)]
mod tests {
    use super::{cell_text, json_text, not_stored, preview_json, preview_text, provenance};
    use arrow::array::{ArrayRef, Float32Array, Float64Array, ListArray, RecordBatch, StringArray, StructArray};
    use arrow::datatypes::{DataType, Field, Float64Type};
    use std::sync::Arc;

    fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(cols).unwrap()
    }

    #[test]
    fn nan_and_infinities_are_named_in_json_and_nulls_left_out() {
        let f64s: ArrayRef = Arc::new(Float64Array::from(vec![
            Some(1.5),
            Some(f64::NAN),
            Some(f64::INFINITY),
            Some(f64::NEG_INFINITY),
            None,
        ]));
        let f32s: ArrayRef =
            Arc::new(Float32Array::from(vec![Some(f32::NAN), None, Some(0.25), Some(f32::NEG_INFINITY), Some(2.0)]));
        let lists: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Float64Type, _, _>(vec![
            Some(vec![Some(f64::NAN), Some(1.0), None]),
            None,
            Some(vec![]),
            Some(vec![Some(f64::INFINITY)]),
            Some(vec![Some(-0.5)]),
        ]));
        let inner: ArrayRef =
            Arc::new(Float64Array::from(vec![Some(f64::NEG_INFINITY), Some(2.0), None, Some(f64::NAN), Some(3.0)]));
        let structs: ArrayRef =
            Arc::new(StructArray::from(vec![(Arc::new(Field::new("x", DataType::Float64, true)), inner)]));
        let text: ArrayRef = Arc::new(StringArray::from(vec!["NaN", "inf", "a", "b", "c"]));
        let b = batch(vec![("f", f64s), ("g", f32s), ("l", lists), ("s", structs), ("t", text)]);
        // split in two batches, as the reader hands them over
        let rows = preview_json(&[b.slice(0, 2), b.slice(2, 3)]).unwrap();
        assert_eq!(
            rows,
            serde_json::json!([
                {"f": 1.5, "g": "NaN", "l": ["NaN", 1.0, null], "s": {"x": "-inf"}, "t": "NaN"},
                {"f": "NaN", "s": {"x": 2.0}, "t": "inf"},
                {"f": "inf", "g": 0.25, "l": [], "s": {}, "t": "a"},
                {"f": "-inf", "g": "-inf", "l": ["inf"], "s": {"x": "NaN"}, "t": "b"},
                {"g": 2.0, "l": [-0.5], "s": {"x": 3.0}, "t": "c"},
            ])
        );
        assert_eq!(preview_json(&[]).unwrap(), serde_json::json!([]));
    }

    #[test]
    fn text_previews_show_what_a_terminal_would_act_on() {
        assert_eq!(cell_text("a\u{1b}]0;T\u{7}b\nc\td\u{202e}"), "a\\u{1b}]0;T\\u{7}b c\\td\\u{202e}");
        // cut after 60 characters of the data, whatever their escapes' length
        let long = "\u{1b}".repeat(100);
        assert_eq!(cell_text(&long), format!("{}…", "\\u{1b}".repeat(59)));
        assert_eq!(cell_text(&"x".repeat(60)), "x".repeat(60));
        assert_eq!(cell_text(&"x".repeat(61)), format!("{}…", "x".repeat(59)));
        // headers, strings inside lists and numbers alike
        let lists: ArrayRef =
            Arc::new(arrow::array::ListArray::from_iter_primitive::<arrow::datatypes::Int32Type, _, _>(vec![
                Some(vec![Some(1), Some(2)]),
                None,
            ]));
        let text: ArrayRef = Arc::new(StringArray::from(vec![Some("\u{1b}[2J"), None]));
        let nan: ArrayRef = Arc::new(Float64Array::from(vec![f64::NAN, f64::NEG_INFINITY]));
        let b = batch(vec![("col\u{9b}1", text), ("l", lists), ("x", nan)]);
        let shown = arrow::util::pretty::pretty_format_batches(&[preview_text(&[b]).unwrap()]).unwrap().to_string();
        assert!(!shown.chars().any(|c| c != '\n' && crate::render::is_unsafe_char(c)), "{shown}");
        assert!(shown.contains("col\\u{9b}1") && shown.contains("\\u{1b}[2J") && shown.contains("[1, 2]"), "{shown}");
        assert!(shown.contains("| NaN ") && shown.contains("| -inf "), "{shown}");
    }

    #[test]
    fn json_is_the_same_document_with_terminal_controls_escaped() {
        let doc = serde_json::json!({"a": "x\u{1b}y\u{7f}z\u{9b}w\u{202e}v\u{2066}\n", "b": [1, "ok ☕"]});
        let text = json_text(&doc).unwrap();
        assert!(!text.chars().any(|c| c != '\n' && crate::render::is_unsafe_char(c)), "{text}");
        assert!(text.contains(r#""x\u001by\u007fz\u009bw\u202ev\u2066\n""#), "{text}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&text).unwrap(), doc);
    }

    #[test]
    fn provenance_names_the_machines_and_warns_on_a_mix() {
        let (amd, xeon) = ("AMD EPYC (x86_64)", "Intel(R) Xeon(R) Processor (x86_64)");
        assert_eq!(
            provenance([Some(amd), Some(amd)]),
            ("built from 2 stored results of libtorch stages, all produced on AMD EPYC (x86_64)".to_string(), false)
        );
        assert_eq!(
            provenance([Some(amd), None]),
            (
                "built from 2 stored results of libtorch stages: 1 on AMD EPYC (x86_64), 1 on a machine not \
                 recorded (stored before machines were)"
                    .to_string(),
                false
            )
        );
        let (line, mixed) = provenance([Some(xeon), Some(amd), Some(amd), None]);
        assert!(mixed);
        assert!(
            line.starts_with(
                "built from 4 stored results of libtorch stages produced on 2 kinds of machine or settings: 2 on AMD EPYC \
                 (x86_64), 1 on Intel(R) Xeon(R) Processor (x86_64), 1 on a machine not recorded"
            ),
            "{line}"
        );
        assert_eq!(provenance([]), ("built from no stored result of a libtorch stage".to_string(), false));
    }

    #[test]
    fn a_long_list_of_missing_upstream_nodes_is_cut_with_a_count() {
        let names = |n: usize| (0..n).map(|i| format!("n{i}")).collect::<Vec<_>>();
        assert_eq!(not_stored(&names(1)), "its upstream n0 is not stored");
        assert_eq!(not_stored(&names(3)), "its upstream n0, n1, n2 are not stored");
        assert_eq!(
            not_stored(&names(500)),
            "500 of its upstream nodes are not stored (n0, n1, n2, n3, n4, n5, n6, n7, and 492 more)"
        );
    }
}
