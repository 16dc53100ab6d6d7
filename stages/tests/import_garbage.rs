//! `import` fed damaged files: real preference data (TL;DR JSONL, a LLaMA-Factory JSON array, a Parquet pairs table)
//! cut, flipped, spliced and retyped by a seeded generator. Whatever the damage, `import` must return (never panic),
//! and an error must name the file; a file it accepts must give a readable pairs table.
use rand::{Rng, SeedableRng};
use rmdistill_stages::port;
use rmdistill_stages::port::Stage;
use rmdistill_stages::{import, table};
use serde_json::{Value, json};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

#[path = "support/local_ctx.rs"]
mod local_ctx;
use local_ctx::{LocalCtx, shared_data};

/// What one import of `file` did: `Ok(pairs)`, `Err(message)`, or a panic (the test's failure).
fn import_once(dir: &Path, file: &Path, extra: &Value) -> Result<Result<usize, String>, String> {
    let mut params = json!({"path": file.file_name().unwrap().to_string_lossy()});
    for (k, v) in extra.as_object().unwrap() {
        params[k] = v.clone();
    }
    let ctx = LocalCtx::new(dir, params).external("path", file);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        import::Import.validate(port::Ctx::params(&ctx))?;
        import::run(&ctx)?;
        let t = table::read_table(&ctx.out("pairs"), None)?;
        Ok::<usize, port::StageError>(t.num_rows())
    }));
    match outcome {
        Ok(r) => Ok(r.map_err(|e| e.to_string())),
        Err(p) => Err(p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()),
    }
}

/// One damage of `bytes`, chosen by `rng`; the name says what was done, for a failure's message.
fn damage(rng: &mut impl Rng, bytes: &[u8]) -> (String, Vec<u8>) {
    let mut b = bytes.to_vec();
    let at = |rng: &mut dyn FnMut(usize) -> usize, n: usize| rng(n.max(1));
    let mut pick = |n: usize| rng.random_range(0..n.max(1));
    match pick(8) {
        0 => {
            let n = at(&mut pick, b.len());
            b.truncate(n);
            (format!("cut at byte {n}"), b)
        }
        1 => {
            let mut what = Vec::new();
            for _ in 0..1 + pick(8) {
                let i = at(&mut pick, b.len());
                if i < b.len() {
                    b[i] ^= 1 << pick(8);
                    what.push(i);
                }
            }
            (format!("bits flipped at bytes {what:?}"), b)
        }
        2 => {
            let i = at(&mut pick, b.len());
            let n = 1 + pick(64).min(b.len().saturating_sub(i));
            b.drain(i..(i + n).min(b.len()));
            (format!("{n} bytes deleted at {i}"), b)
        }
        3 => {
            const BITS: [&[u8]; 14] = [
                b"\"",
                b"\\",
                b"{",
                b"}",
                b"[",
                b"]",
                b",",
                b":",
                b"\n",
                b"null",
                b"\\ud800",
                b"\xff\xfe",
                b"\x00",
                b"1e999",
            ];
            let i = at(&mut pick, b.len());
            let s = BITS[pick(BITS.len())];
            b.splice(i..i, s.iter().copied());
            (format!("{:?} inserted at {i}", String::from_utf8_lossy(s)), b)
        }
        4 => {
            // a field's value replaced by another JSON type
            const VALUES: [&str; 9] = ["null", "1", "-0.5", "true", "[]", "{}", "[\"x\", 2]", "{\"role\": 3}", "\"\""];
            let v = VALUES[pick(VALUES.len())];
            let text = String::from_utf8_lossy(&b).into_owned();
            let starts: Vec<usize> = text.match_indices("\": ").map(|(i, _)| i + 3).collect();
            if starts.is_empty() {
                return ("unchanged".into(), b);
            }
            let s = starts[pick(starts.len())];
            let end = value_end(text.as_bytes(), s);
            let out = format!("{}{v}{}", &text[..s], &text[end..]);
            (format!("value at {s} replaced by {v}"), out.into_bytes())
        }
        5 => {
            // a line doubled, another removed: duplicates and gaps
            let mut lines: Vec<&[u8]> = bytes.split(|&c| c == b'\n').collect();
            let i = pick(lines.len());
            let l = lines[i];
            lines.insert(pick(lines.len()), l);
            let j = pick(lines.len());
            lines.remove(j);
            (format!("line {i} doubled, line {j} removed"), lines.join(&b'\n'))
        }
        6 => {
            let i = at(&mut pick, b.len());
            let n = pick(4096).min(b.len() - i.min(b.len()));
            let chunk = b[i..i + n].to_vec();
            let j = at(&mut pick, b.len());
            b.splice(j..j, chunk);
            (format!("{n} bytes from {i} copied to {j}"), b)
        }
        _ => {
            let i = at(&mut pick, b.len());
            let n = pick(16).min(b.len() - i.min(b.len()));
            for x in &mut b[i..i + n] {
                *x = pick(256) as u8;
            }
            (format!("{n} random bytes at {i}"), b)
        }
    }
}

/// The end of the JSON value that starts at `s` (a string, or a scalar up to the next `,` or `}`).
fn value_end(t: &[u8], s: usize) -> usize {
    if t.get(s) == Some(&b'"') {
        let mut i = s + 1;
        while i < t.len() {
            match t[i] {
                b'\\' => i += 2,
                b'"' => return i + 1,
                _ => i += 1,
            }
        }
        return t.len();
    }
    let mut i = s;
    while i < t.len() && !matches!(t[i], b',' | b'}' | b']' | b'\n') {
        i += 1;
    }
    i
}

fn first_lines(path: &Path, n: usize) -> Vec<u8> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out: String = text.lines().take(n).collect::<Vec<_>>().join("\n");
    out.push('\n');
    out.into_bytes()
}

/// Imports `cases` damaged copies of `original` (named `name`) with each of `settings`; returns the panics.
fn damaged_imports(seed: u64, name: &str, original: &[u8], cases: usize, settings: &[Value]) -> Vec<String> {
    let tmp = tempfile::tempdir().unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut panics = Vec::new();
    let (mut ok, mut refused) = (0, 0);
    for case in 0..cases {
        let (what, bytes) = damage(&mut rng, original);
        let dir = tmp.path().join(format!("{case}"));
        std::fs::create_dir_all(&dir).unwrap();
        let file: PathBuf = dir.join(name);
        std::fs::write(&file, &bytes).unwrap();
        for extra in settings {
            match import_once(&dir, &file, extra) {
                Ok(Ok(_)) => ok += 1,
                Ok(Err(e)) => {
                    refused += 1;
                    if !e.contains(name) {
                        panics.push(format!("case {case} ({what}, {extra}): the error does not name {name}: {e}"));
                    }
                }
                Err(p) => panics.push(format!("case {case} ({what}, {extra}): panicked: {p}")),
            }
        }
    }
    eprintln!("{name}: {cases} damaged copies × {} settings: {ok} imported, {refused} refused", settings.len());
    assert!(ok > 0 && refused > 0, "the damage should leave some files readable and make others unreadable");
    panics
}

#[test]
fn damaged_tldr_jsonl_never_panics_and_errors_name_the_file() {
    let original = first_lines(&shared_data().join("tldr-2k/train.jsonl"), 40);
    let settings = [json!({}), json!({"on_invalid": "skip"}), json!({"format": "trl", "skip": 3, "limit": 20})];
    let panics = damaged_imports(11, "train.jsonl", &original, 150, &settings);
    assert!(panics.is_empty(), "{}", panics.join("\n"));
}

#[test]
fn damaged_llama_factory_json_never_panics_and_errors_name_the_file() {
    let original = std::fs::read(shared_data().join("preference-formats/llama-factory-dpo_en_demo.json")).unwrap();
    // a shorter array keeps each case fast: the first 12 records
    let v: Vec<Value> = serde_json::from_slice(&original).unwrap();
    let short = serde_json::to_vec_pretty(&v[..12]).unwrap();
    let settings = [json!({}), json!({"on_invalid": "skip"})];
    let panics = damaged_imports(12, "dpo_en_demo.json", &short, 150, &settings);
    assert!(panics.is_empty(), "{}", panics.join("\n"));
}

#[test]
fn damaged_parquet_never_panics_and_errors_name_the_file() {
    // a Parquet file `import` reads: its own pairs table of 40 TL;DR records
    let tmp = tempfile::tempdir().unwrap();
    let jsonl = tmp.path().join("train.jsonl");
    std::fs::write(&jsonl, first_lines(&shared_data().join("tldr-2k/train.jsonl"), 40)).unwrap();
    let ctx = LocalCtx::new(tmp.path(), json!({"path": "train.jsonl"})).external("path", &jsonl);
    import::run(&ctx).unwrap();
    let original = std::fs::read(ctx.out("pairs")).unwrap();
    let settings = [json!({}), json!({"on_invalid": "skip"})];
    let panics = damaged_imports(13, "pairs.parquet", &original, 200, &settings);
    assert!(panics.is_empty(), "{}", panics.join("\n"));
}

#[test]
fn damaged_nested_binary_parquet_never_panics_and_errors_name_the_file() {
    // 40 TL;DR records as TRL messages whose roles and contents are bytes (list<struct<role: binary, content:
    // binary>>), `chosen` as maps of bytes, beside a column import does not read (a timestamp in a named time zone)
    use arrow::array::{ArrayRef, BinaryArray, ListArray, MapBuilder, StructArray, TimestampNanosecondArray};
    use arrow::datatypes::Field;
    use std::sync::Arc;
    let text = String::from_utf8(first_lines(&shared_data().join("tldr-2k/train.jsonl"), 40)).unwrap();
    let recs: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let field = |k: &str| recs.iter().map(|r| r[k].as_str().unwrap().as_bytes()).collect::<Vec<_>>();
    let one_each = |values: ArrayRef| -> ArrayRef {
        let item = Arc::new(Field::new("item", values.data_type().clone(), true));
        let offsets = arrow::buffer::OffsetBuffer::from_lengths(std::iter::repeat_n(1, recs.len()));
        Arc::new(ListArray::new(item, offsets, values, None))
    };
    let messages = |role: &[u8], k: &str| -> ArrayRef {
        let roles: ArrayRef = Arc::new(BinaryArray::from(vec![role; recs.len()]));
        let contents: ArrayRef = Arc::new(BinaryArray::from(field(k)));
        one_each(Arc::new(StructArray::from(vec![
            (Arc::new(Field::new("role", roles.data_type().clone(), true)), roles),
            (Arc::new(Field::new("content", contents.data_type().clone(), true)), contents),
        ])))
    };
    let mut chosen = MapBuilder::new(None, arrow::array::BinaryBuilder::new(), arrow::array::BinaryBuilder::new());
    for c in field("chosen") {
        chosen.keys().append_value("role");
        chosen.values().append_value("assistant");
        chosen.keys().append_value("content");
        chosen.values().append_value(c);
        chosen.append(true).unwrap();
    }
    let ts: ArrayRef =
        Arc::new(TimestampNanosecondArray::from((0..recs.len() as i64).collect::<Vec<_>>()).with_timezone("UTC"));
    let batch = arrow::array::RecordBatch::try_from_iter([
        ("prompt", messages(b"user", "prompt")),
        ("chosen", one_each(Arc::new(chosen.finish()))),
        ("rejected", messages(b"assistant", "rejected")),
        ("ts", ts),
    ])
    .unwrap();
    let mut original = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut original, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    // undamaged, every record imports
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("nested.parquet");
    std::fs::write(&file, &original).unwrap();
    assert_eq!(import_once(tmp.path(), &file, &json!({})), Ok(Ok(40)));
    let settings = [json!({}), json!({"on_invalid": "skip"})];
    let panics = damaged_imports(14, "nested.parquet", &original, 200, &settings);
    assert!(panics.is_empty(), "{}", panics.join("\n"));
}

/// A byte-level BPE tokenizer.json written as GPT-2's and SmolLM2's are (their model, pre-tokenizer, post-processor
/// and decoder types), with the 256 byte symbols and a few merges: small enough to damage many times.
fn bpe_tokenizer_json() -> Vec<u8> {
    let mut alphabet: Vec<char> = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().collect();
    alphabet.sort();
    let mut vocab = serde_json::Map::new();
    vocab.insert("<|endoftext|>".into(), json!(0));
    for c in alphabet {
        let id = vocab.len();
        vocab.insert(c.to_string(), json!(id));
    }
    let merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a")];
    for (a, b) in merges {
        let id = vocab.len();
        vocab.entry(format!("{a}{b}")).or_insert(json!(id));
    }
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let t = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [{"id": 0, "content": "<|endoftext|>", "single_word": false, "lstrip": false, "rstrip": false,
                          "normalized": false, "special": true}],
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": byte_level,
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "vocab": vocab,
                  "merges": merges.iter().map(|(a, b)| format!("{a} {b}")).collect::<Vec<_>>()},
    });
    serde_json::to_vec_pretty(&t).unwrap()
}

#[test]
fn damaged_tokenizer_json_never_panics_and_errors_name_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("train.jsonl");
    std::fs::write(&data, first_lines(&shared_data().join("tldr-2k/train.jsonl"), 20)).unwrap();
    let original = bpe_tokenizer_json();
    let run = |case: usize, bytes: &[u8]| {
        let dir = tmp.path().join(format!("{case}"));
        std::fs::create_dir_all(&dir).unwrap();
        let tok = dir.join("tok.json");
        std::fs::write(&tok, bytes).unwrap();
        let ctx = LocalCtx::new(&dir, json!({"path": "train.jsonl", "tokenizer": "tok.json"}))
            .external("path", &data)
            .external("tokenizer", &tok);
        catch_unwind(AssertUnwindSafe(|| {
            import::Import.validate(port::Ctx::params(&ctx))?;
            let summary = import::run(&ctx)?;
            let t = table::read_table(&ctx.out("pairs"), None)?;
            Ok::<(Value, usize), port::StageError>((summary, t.column_by_name("tokens_a").unwrap().null_count()))
        }))
        .map(|r| r.map_err(|e| e.to_string()))
    };
    // undamaged, it counts every response's tokens
    let (summary, nulls) = run(usize::MAX, &original).expect("no panic").expect("the tokenizer loads");
    assert_eq!((summary["tokenizer"].as_bool(), nulls), (Some(true), 0), "{summary}");

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(23);
    let (mut ok, mut refused, mut panics) = (0, 0, Vec::new());
    for case in 0..150 {
        let (what, bytes) = damage(&mut rng, &original);
        match run(case, &bytes) {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(e)) if e.contains("tok.json") => refused += 1,
            Ok(Err(e)) => panics.push(format!("case {case} ({what}): the error does not name tok.json: {e}")),
            Err(_) => panics.push(format!("case {case} ({what}): panicked")),
        }
    }
    eprintln!("tok.json: 150 damaged copies: {ok} imported, {refused} refused");
    assert!(ok > 0 && refused > 0, "the damage should leave some tokenizers readable and make others unreadable");
    assert!(panics.is_empty(), "{}", panics.join("\n"));
}
