//! `show` as a user sees it: data that a terminal could act on (escape sequences, bidi overrides) is written
//! visibly in every human-readable view and stays exact in `--json`; NaN and infinities are named in `--json`,
//! never turned into null; a directory reports its files' total by name and by hash alike; `--rows 0` shows no
//! rows and says so; and `--json` is one JSON document for tables, files and directories.

mod common;
use common::*;
use serde_json::Value;
use std::sync::Arc;

/// Whether `text` holds a character a terminal could act on (a line break apart).
fn has_terminal_controls(text: &str) -> bool {
    text.chars().any(|c| c != '\n' && rmdistill::render::is_unsafe_char(c))
}

/// A prompt that sets the terminal's title, clears the screen, turns text red and reverses the rest.
const HOSTILE: &str = "hello \u{1b}]0;PWNED\u{7} \u{1b}[2J\u{1b}[31m red\u{202e} rtl \u{9b}31m tab\there";

fn import_manifest(w: &Work, records: &[Value]) {
    let lines: Vec<String> = records.iter().map(|r| r.to_string()).collect();
    let data = w.write("d.jsonl", &(lines.join("\n") + "\n"));
    w.write(
        "m.toml",
        &format!("[stages.imp]\nkind = \"import\"\nparams = {{ path = {:?} }}\n", data.to_str().unwrap()),
    );
}

/// Stores `bytes` as a blob of the working directory's store, as a stage's output would be; returns its hash.
fn put_blob(w: &Work, bytes: &[u8]) -> String {
    let hash = blake3::hash(bytes).to_hex().to_string();
    let path = w.store().join("blobs").join(&hash[..2]).join(&hash);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    hash
}

#[test]
fn data_that_a_terminal_would_act_on_is_shown_escaped_and_kept_exact_in_json() {
    let w = Work::new();
    import_manifest(&w, &[serde_json::json!({"prompt": HOSTILE, "chosen": "a\u{7f}", "rejected": "b"})]);
    w.ok(&["run", "m.toml", "-q"]);
    let shown = w.ok(&["show", "m.toml", "imp"]);
    assert!(!has_terminal_controls(&shown), "{shown:?}");
    assert!(
        shown.contains(r"hello \u{1b}]0;PWNED\u{7} \u{1b}[2J\u{1b}[31m red\u{202e} rtl \u{9b}31m tab\there"),
        "{shown}"
    );
    assert!(shown.contains(r"a\u{7f}"), "{shown}");
    let o = w.run(&["show", "m.toml", "imp", "--json"]);
    let text = s(&o.stdout);
    assert!(!has_terminal_controls(&text), "{text:?}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["kind"], "table");
    assert_eq!(v["preview"][0]["prompt"], HOSTILE, "--json keeps the text exact");
    assert_eq!(v["preview"][0]["response_b"], "a\u{7f}");

    // A text file and a column named with a control character, by hash.
    let file = put_blob(&w, format!("line one\n{HOSTILE}\nlast\u{1b}[0m\n").as_bytes());
    let shown = w.ok(&["show", "m.toml", &file]);
    // (a text file's tabs are kept: it may be a TSV)
    assert!(!has_terminal_controls(&shown.replace('\t', " ")), "{shown:?}");
    assert!(
        shown.contains("line one\nhello \\u{1b}]0;PWNED") && shown.contains("tab\there\nlast\\u{1b}[0m"),
        "{shown}"
    );
    let v: Value = serde_json::from_str(&w.ok(&["show", "m.toml", &file, "--json"])).unwrap();
    assert_eq!(v["kind"], "file");
    assert_eq!(v["binary"], false);
    assert_eq!(v["preview"], serde_json::json!(["line one", HOSTILE, "last\u{1b}[0m"]));
}

/// A Parquet file of `batch`.
fn parquet(batch: &arrow::array::RecordBatch) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut wr = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), None).unwrap();
    wr.write(batch).unwrap();
    wr.close().unwrap();
    buf
}

#[test]
fn nan_and_infinities_are_named_in_json_not_made_null() {
    use arrow::array::{ArrayRef, Float64Array, StringArray};
    let w = Work::new();
    import_manifest(&w, &[serde_json::json!({"prompt": "p", "chosen": "a", "rejected": "b"})]);
    let x: ArrayRef = Arc::new(Float64Array::from(vec![
        Some(0.5),
        Some(f64::NAN),
        Some(f64::INFINITY),
        Some(f64::NEG_INFINITY),
        None,
    ]));
    let name: ArrayRef = Arc::new(StringArray::from(vec!["a", "b", "c", "d", "e"]));
    let batch = arrow::array::RecordBatch::try_from_iter([("name", name), ("x\u{1b}[2J", x)]).unwrap();
    let hash = put_blob(&w, &parquet(&batch));
    let v: Value = serde_json::from_str(&w.ok(&["show", "m.toml", &hash, "--json"])).unwrap();
    let xs: Vec<Option<&Value>> = v["preview"].as_array().unwrap().iter().map(|r| r.get("x\u{1b}[2J")).collect();
    let want = [Some(serde_json::json!(0.5)), Some("NaN".into()), Some("inf".into()), Some("-inf".into()), None];
    assert_eq!(xs, want.iter().map(Option::as_ref).collect::<Vec<_>>(), "{v}");
    // The table writes them so too, and its header made visible.
    let shown = w.ok(&["show", "m.toml", &hash]);
    assert!(!has_terminal_controls(&shown), "{shown:?}");
    for cell in ["| 0.5 ", "| NaN ", "| inf ", "| -inf "] {
        assert!(shown.contains(cell), "{cell}: {shown}");
    }
    assert!(shown.contains(r"x\u{1b}[2J"), "{shown}");
}

#[test]
fn rows_0_shows_the_schema_and_no_rows() {
    let w = Work::new();
    import_manifest(&w, &[serde_json::json!({"prompt": "p", "chosen": "a", "rejected": "b"})]);
    w.ok(&["run", "m.toml", "-q"]);
    let shown = w.ok(&["show", "m.toml", "imp", "--rows", "0"]);
    assert!(shown.contains("(1 rows,") && shown.contains("  prompt "), "{shown}");
    assert!(!shown.contains("++") && !shown.contains("+--"), "{shown}");
    assert!(shown.trim_end().ends_with("(no rows shown: --rows 0)"), "{shown}");
    let v: Value = serde_json::from_str(&w.ok(&["show", "m.toml", "imp", "--rows", "0", "--json"])).unwrap();
    assert_eq!((v["rows"].as_u64(), v["preview"].as_array().map(Vec::len)), (Some(1), Some(0)), "{v}");
    // One row shown is a table.
    let shown = w.ok(&["show", "m.toml", "imp", "--rows", "1"]);
    assert!(shown.contains("| pair_id ") && !shown.contains("no rows shown"), "{shown}");
    // A text file shows its header only.
    let file = put_blob(&w, b"one\ntwo\n");
    let shown = w.ok(&["show", "m.toml", &file, "--rows", "0"]);
    assert_eq!(shown, format!("{file}: file {file} (8 bytes)\n"));
}

#[test]
fn a_directory_reports_its_files_total_by_name_and_by_hash() {
    // synth's tokenizer is a directory artifact (two files)
    let w = Work::new();
    w.write("m.toml", "[stages.t]\nkind = \"synth\"\n");
    w.ok(&["run", "m.toml", "-q"]);
    let by_name = w.ok(&["show", "m.toml", "t.tokenizer"]);
    let v: Value = serde_json::from_str(&w.ok(&["show", "m.toml", "t.tokenizer", "--json"])).unwrap();
    assert_eq!(v["kind"], "dir");
    let hash = v["hash"].as_str().unwrap().to_string();
    let sizes: Vec<u64> = v["listing"].as_array().unwrap().iter().map(|f| f["size"].as_u64().unwrap()).collect();
    let total: u64 = sizes.iter().sum();
    assert_eq!((v["files"].as_u64(), v["bytes"].as_u64()), (Some(sizes.len() as u64), Some(total)), "{v}");
    assert!(by_name.starts_with(&format!("t.tokenizer: directory {hash} (2 files, {total} bytes)\n")), "{by_name}");
    let listing_size = std::fs::metadata(w.store().join("blobs").join(&hash[..2]).join(&hash)).unwrap().len();
    assert_ne!(listing_size, total, "the listing's own size would not tell the two apart");
    let by_hash = w.ok(&["show", "m.toml", &hash[..12]]);
    assert_eq!(by_hash, by_name.replacen("t.tokenizer", &hash, 1));
    let v2: Value = serde_json::from_str(&w.ok(&["show", "m.toml", &hash, "--json"])).unwrap();
    assert_eq!(v2["bytes"], v["bytes"]);
    assert_eq!(v2["listing"], v["listing"]);
}
