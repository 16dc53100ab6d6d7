//! `show`: previews a node's output — a Parquet table (schema, row count, first rows), a JSON document, or a
//! directory artifact's listing — by node name or by hash.

use crate::error::{NotReady, StoreError, quoted};
use crate::exec;
use crate::plan::Plan;
use crate::store::{Entry, OutputRef, Store};
use arrow::util::pretty::pretty_format_batches;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rmdistill_stages::ArtifactKind;

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
                    anyhow::bail!("{} blobs match {}", hits.len(), quoted(what));
                }
                anyhow::bail!(
                    "{} is neither a node, NODE.OUTPUT, nor a blob hash of this store{}",
                    quoted(what),
                    not_a_hash_prefix(what)
                );
            }
        },
    };
    let i = plan.find(node).expect("checked");
    let entry = stored_entry(plan, store, i)?;
    let name = match output {
        Some(o) => o.to_string(),
        None if entry.outputs.len() == 1 => entry.outputs.keys().next().unwrap().clone(),
        None => anyhow::bail!(
            "{node} has several outputs ({}); name one as {node}.OUTPUT",
            entry.outputs.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    };
    let out =
        entry.outputs.get(&name).cloned().ok_or_else(|| anyhow::anyhow!("{node} has no output {}", quoted(&name)))?;
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
        exec::Resolved::Undetermined { missing } => Err(NotReady(format!(
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

pub fn show(plan: &Plan, store: &Store, what: &str, rows: usize, json: bool) -> anyhow::Result<()> {
    let (label, out, warnings) = resolve(plan, store, what)?;
    let path = store.materialize(&out)?;
    // The warnings go to stderr, where `run` gave them: stdout stays the artifact's view (and valid JSON).
    for w in &warnings {
        eprintln!("warning: {label}: {w}");
    }
    if out.kind == ArtifactKind::Dir {
        let tree = store.tree(&out.hash)?;
        println!("{label}: directory {} ({} files, {} bytes)", out.hash, tree.files.len(), out.size);
        for f in tree.files {
            println!("  {:>12}  {}  {}", f.size, crate::key::short(&f.hash), f.path);
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
        let reader = b.with_batch_size(rows.max(1)).with_limit(rows).build()?;
        let batches: Vec<_> = reader.collect::<Result<_, _>>()?;
        if json {
            let mut buf = Vec::new();
            {
                let mut w = arrow::json::ArrayWriter::new(&mut buf);
                for batch in &batches {
                    w.write(batch)?;
                }
                w.finish()?;
            }
            let rows: serde_json::Value = serde_json::from_slice(&buf).unwrap_or(serde_json::json!([]));
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"artifact": label, "hash": out.hash, "rows": total, "metadata": kv.into_iter().collect::<std::collections::BTreeMap<_,_>>(), "preview": rows})
                )?
            );
            return Ok(());
        }
        println!("{label}: table {} ({total} rows, {} bytes)", out.hash, out.size);
        for f in schema.fields() {
            println!("  {:<16} {}{}", f.name(), f.data_type(), if f.is_nullable() { " (nullable)" } else { "" });
        }
        for (k, v) in kv {
            println!("  meta {k} = {v}");
        }
        // Long strings are cut so a preview stays a preview.
        let cut: Vec<_> = batches.iter().map(truncate_strings).collect::<Result<_, _>>()?;
        println!("{}", pretty_format_batches(&cut)?);
    } else {
        let data = std::fs::read(&path)?;
        match std::str::from_utf8(&data) {
            Ok(text) => {
                println!("{label}: file {} ({} bytes)", out.hash, out.size);
                for line in text.lines().take(rows.max(1) * 5) {
                    println!("{line}");
                }
            }
            Err(_) => println!("{label}: binary file {} ({} bytes)", out.hash, out.size),
        }
    }
    Ok(())
}

fn truncate_strings(b: &arrow::record_batch::RecordBatch) -> anyhow::Result<arrow::record_batch::RecordBatch> {
    use arrow::array::{Array, ArrayRef, StringArray};
    use std::sync::Arc;
    let mut cols: Vec<ArrayRef> = Vec::new();
    let mut fields = Vec::new();
    for (f, c) in b.schema().fields().iter().zip(b.columns()) {
        if let Some(s) = c.as_any().downcast_ref::<StringArray>() {
            let t: StringArray = s
                .iter()
                .map(|v| {
                    v.map(|v| {
                        let one_line = v.replace('\n', " ");
                        if one_line.chars().count() > 60 {
                            format!("{}…", one_line.chars().take(59).collect::<String>())
                        } else {
                            one_line
                        }
                    })
                })
                .collect();
            cols.push(Arc::new(t));
            fields.push(arrow::datatypes::Field::new(f.name(), arrow::datatypes::DataType::Utf8, true));
        } else {
            cols.push(c.clone());
            fields.push(f.as_ref().clone());
        }
        let _ = c.len();
    }
    Ok(arrow::record_batch::RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), cols)?)
}

#[cfg(test)]
mod tests {
    use super::{not_stored, provenance};

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
