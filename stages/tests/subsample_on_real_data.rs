//! `subsample` on real preference data (the TL;DR comparisons, imported by `import`) and on a generated table
//! (`generate`): exact ρ, "max", infeasible requests, subsets of subsets, seeds, strict params, unlabelled rows.
//! Here, not in `stages/src/subsample.rs`, since they take other stages' outputs as fixtures and a stage file never
//! imports another stage file.
use arrow::array::{Array, AsArray, Int8Array, RecordBatch, StringArray};
use rmdistill_stages::port;
use rmdistill_stages::port::Stage;
use rmdistill_stages::subsample::{self, Subsample};
use rmdistill_stages::table;
use serde_json::{Value, json};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

#[path = "support/local_ctx.rs"]
mod local_ctx;
use local_ctx::{LocalCtx, shared_data};

/// The TL;DR import, made once per test binary.
fn tldr_pairs() -> &'static Path {
    static P: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    &P.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let file = shared_data().join("tldr-2k/train.jsonl");
        let ctx = LocalCtx::new(dir.path(), json!({"path": file.to_string_lossy()})).external("path", &file);
        rmdistill_stages::import::run(&ctx).unwrap();
        let out = ctx.out("pairs");
        (dir, out)
    })
    .1
}

fn run(input: &Path, out_dir: &Path, params: Value) -> Result<(Value, PathBuf), String> {
    std::fs::create_dir_all(out_dir).unwrap();
    let ctx = LocalCtx::new(out_dir, params).input("pairs", input);
    Subsample.validate(port::Ctx::params(&ctx)).map_err(|e| e.to_string())?;
    let s = subsample::run(&ctx).map_err(|e| e.to_string())?;
    Ok((s, ctx.out("dataset")))
}

/// Checks a D_rho against the input: every row is a labelled input row, unique, with the right
/// `longer_preferred` flag (recomputed from words and label), and the exact count of longer-preferred rows.
fn check(input: &Path, out: &Path, size: usize, n_long: usize) {
    let t = table::read_table(out, None).unwrap();
    assert_eq!(t.num_rows(), size);
    let ids = t.column_by_name("pair_id").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
    let uniq: HashSet<&str> = ids.iter().map(|s| s.unwrap()).collect();
    assert_eq!(uniq.len(), size, "no pair twice");
    let inp = table::read_table(input, Some(&["pair_id"])).unwrap();
    let all: HashSet<&str> = inp.column(0).as_string::<i32>().iter().map(|s| s.unwrap()).collect();
    assert!(uniq.iter().all(|id| all.contains(id)));
    let lp = t.column_by_name("longer_preferred").unwrap().as_boolean();
    assert_eq!(lp.true_count(), n_long);
    let (wa, wb) = (table::u32_values(&t, "words_a").unwrap(), table::u32_values(&t, "words_b").unwrap());
    let label = t.column_by_name("label").unwrap().as_primitive::<arrow::datatypes::Int8Type>();
    for i in 0..size {
        let (a, b) = (wa.value(i) as f64, wb.value(i) as f64);
        assert!(label.is_valid(i));
        let b_longer = b >= 1.1 * a && b > a;
        let a_longer = a >= 1.1 * b && a > b;
        assert!(a_longer || b_longer, "row {i} within the margin");
        assert_eq!(lp.value(i), (label.value(i) == 1) == b_longer, "row {i}");
    }
}

#[test]
fn exact_rho_on_tldr() {
    let dir = tempfile::tempdir().unwrap();
    for (k, rho) in [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8].into_iter().enumerate() {
        let (s, out) =
            run(tldr_pairs(), &dir.path().join(k.to_string()), json!({"rho": rho, "size": 500, "seed": 1})).unwrap();
        let n_long = (rho * 500.0_f64).round() as usize;
        assert_eq!(s["longer_preferred"], n_long);
        assert_eq!(s["rho_achieved"].as_f64().unwrap(), n_long as f64 / 500.0);
        assert_eq!(s["length"], "words");
        check(tldr_pairs(), &out, 500, n_long);
        if k == 0 {
            eprintln!("tldr subsample summary: {s}");
            let share = s["input_longer_preferred_share"].as_f64().unwrap();
            assert!((0.5..0.66).contains(&share), "{share}");
            let kv = table::read_kv(&out).unwrap();
            assert!(kv.contains(&("rmdistill.rho_achieved".into(), "0.2".into())), "{kv:?}");
        }
    }
}

#[test]
fn infeasible_request_names_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let (s, _) = run(tldr_pairs(), &dir.path().join("ok"), json!({"rho": 0.5, "size": 10})).unwrap();
    let (l, sh, w, u) = (
        s["longer_preferred_available"].as_u64().unwrap(),
        s["shorter_preferred_available"].as_u64().unwrap(),
        s["within_margin"].as_u64().unwrap(),
        s["unlabelled"].as_u64().unwrap(),
    );
    let out = dir.path().join("bad");
    let e = run(tldr_pairs(), &out, json!({"rho": 0.8, "size": 1500})).unwrap_err();
    let want = format!(
        "size: rho=0.8, size=1500 needs 1200 longer-preferred pairs but only {l} are available ({} labelled pairs differ in length by ≥10% words: {l} longer-preferred, {sh} shorter-preferred; {w} within the margin; {u} unlabelled)",
        l + sh
    );
    assert_eq!(e, want);
    assert!(!out.join("dataset.parquet").exists(), "nothing written");
    let e = run(tldr_pairs(), &out, json!({"rho": 0.2, "size": 1500, "margin": 0.5})).unwrap_err();
    assert!(e.contains("shorter-preferred pairs but only") && e.contains("≥50% words"), "{e}");
}

#[test]
fn size_max_is_the_largest_feasible() {
    let dir = tempfile::tempdir().unwrap();
    for (k, rho) in [0.0, 0.2, 0.5, 0.65, 1.0].into_iter().enumerate() {
        let (s, out) = run(tldr_pairs(), &dir.path().join(k.to_string()), json!({"rho": rho, "size": "max"})).unwrap();
        let size = s["size"].as_u64().unwrap();
        let (l, sh) =
            (s["longer_preferred_available"].as_u64().unwrap(), s["shorter_preferred_available"].as_u64().unwrap());
        check(tldr_pairs(), &out, size as usize, s["longer_preferred"].as_u64().unwrap() as usize);
        // one more is infeasible
        let nl = (rho * (size + 1) as f64).round() as u64;
        assert!(nl > l || size + 1 - nl > sh, "rho {rho}: size {size} is not the max");
        if rho == 0.0 {
            assert_eq!(size, sh);
        }
        if rho == 1.0 {
            assert_eq!(size, l);
        }
    }
}

#[test]
fn ensemble_subset_of_a_subset() {
    let dir = tempfile::tempdir().unwrap();
    let (_, d) = run(tldr_pairs(), &dir.path().join("d"), json!({"rho": 0.5, "size": 800, "seed": 4})).unwrap();
    let d_schema = table::read_schema(&d).unwrap();
    let mut prev: Option<Vec<u8>> = None;
    for (k, rho) in [0.2, 0.35, 0.5, 0.65, 0.8].into_iter().enumerate() {
        let (s, sub) = run(&d, &dir.path().join(format!("e{k}")), json!({"rho": rho, "size": 400, "seed": k})).unwrap();
        assert_eq!(s["rows_in"], 800);
        check(&d, &sub, 400, (rho * 400.0_f64).round() as usize);
        assert_eq!(table::read_schema(&sub).unwrap(), d_schema, "input schema = output schema");
        let bytes = std::fs::read(&sub).unwrap();
        assert_ne!(prev.as_ref(), Some(&bytes));
        prev = Some(bytes);
    }
    // a subset of a rho=0.5 set of 800 has 400 of each: 0.8·600 = 480 longer is too many
    let e = run(&d, &dir.path().join("x"), json!({"rho": 0.8, "size": 600})).unwrap_err();
    assert!(e.contains("needs 480 longer-preferred pairs but only 400 are available"), "{e}");
}

#[test]
fn seeds_reproduce_and_differ() {
    let dir = tempfile::tempdir().unwrap();
    let p = |seed: u64| json!({"rho": 0.4, "size": 300, "seed": seed});
    let (_, a) = run(tldr_pairs(), &dir.path().join("a"), p(7)).unwrap();
    let (_, b) = run(tldr_pairs(), &dir.path().join("b"), p(7)).unwrap();
    let (_, c) = run(tldr_pairs(), &dir.path().join("c"), p(8)).unwrap();
    let (ba, bb, bc) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap(), std::fs::read(&c).unwrap());
    assert_eq!(ba, bb);
    assert_ne!(ba, bc);
    let ids = |f: &Path| -> HashSet<String> {
        let t = table::read_table(f, Some(&["pair_id"])).unwrap();
        t.column(0).as_string::<i32>().iter().map(|s| s.unwrap().to_string()).collect()
    };
    let (ia, ic) = (ids(&a), ids(&c));
    assert!(ia.intersection(&ic).count() < 250, "different seeds select different rows");
    // the output order is shuffled, not the input order
    let t = table::read_table(&a, Some(&["source_row"])).unwrap();
    let src = table::u32_values(&t, "source_row").unwrap();
    assert!(src.values().windows(2).any(|w| w[0] > w[1]));
}

#[test]
fn strict_params_and_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (json!({"rho": 0.5, "size": 10, "sise": 3}), "unknown field `sise`"),
        (json!({"rho": 1.5, "size": 10}), "rho: must be in [0, 1]"),
        (json!({"rho": 0.5, "size": 0}), "size: size must be a positive integer"),
        (json!({"rho": 0.5, "size": "all"}), "size: size must be a positive integer or \"max\", got \"all\""),
        (json!({"rho": 0.5, "size": 2.5}), "a positive integer or the string \"max\""),
        (json!({"rho": 0.5, "size": 10, "margin": -1.0}), "margin: must be"),
        (json!({"rho": 0.5, "size": 10, "length": "chars"}), "length: unknown variant"),
        (json!({"rho": 0.5}), "missing field `size`"),
    ];
    for (p, want) in cases {
        let e = Subsample.validate(p.as_object().unwrap()).unwrap_err().to_string();
        assert!(e.contains(want), "{p}: {e}");
    }
    let e = run(tldr_pairs(), dir.path(), json!({"rho": 0.5, "size": 10, "length": "tokens"})).unwrap_err();
    assert!(e.starts_with("length:") && e.contains("null token counts"), "{e}");
    // a bad label column is named as the param, with its value, the input and the columns there are
    let e = run(tldr_pairs(), dir.path(), json!({"rho": 0.5, "size": 10, "label_column": "oracle_label"})).unwrap_err();
    assert!(
        e.starts_with("label_column: \"oracle_label\" is not a column of input `pairs` (from test-pairs); its columns: pair_id, prompt,"),
        "{e}"
    );
    let e = run(tldr_pairs(), dir.path(), json!({"rho": 0.5, "size": 10, "label_column": "prompt"})).unwrap_err();
    assert!(
        e.starts_with(
            "label_column: \"prompt\" is a column of Utf8 values in input `pairs` (from test-pairs), not of labels"
        ) && e.contains("its integer columns: label, words_a, words_b, tokens_a, tokens_b, source_row"),
        "{e}"
    );
    assert!(!e.contains(".parquet") && !e.contains("/tmp"), "no path in the store: {e}");
    // a column of other integers: the row and the value
    let e = run(tldr_pairs(), dir.path(), json!({"rho": 0.5, "size": 10, "label_column": "words_a"})).unwrap_err();
    assert!(
        e.starts_with("label_column: column `words_a` of input `pairs` (from test-pairs), row 0: a label must be 0"),
        "{e}"
    );
}

#[test]
fn unlabelled_rows_are_never_selected() {
    // a generated table with half of its labels nulled and tokens filled in: auto uses the tokens
    let dir = tempfile::tempdir().unwrap();
    let (batch, _) = rmdistill_stages::generate::generate(json!({"n": 2000, "seed": 5}).as_object().unwrap()).unwrap();
    let n = batch.num_rows();
    let label = batch.column_by_name("label").unwrap().as_primitive::<arrow::datatypes::Int8Type>();
    let label: Int8Array = (0..n).map(|i| if i % 2 == 0 { None } else { Some(label.value(i)) }).collect();
    let wa = table::u32_values(&batch, "words_a").unwrap();
    let wb = table::u32_values(&batch, "words_b").unwrap();
    // tokens: the reverse of the word order (so the classes differ between words and tokens)
    let ta = wb.clone();
    let tb = wa.clone();
    let mut cols = batch.columns().to_vec();
    let idx = |c: &str| batch.schema().index_of(c).unwrap();
    cols[idx("label")] = Arc::new(label);
    cols[idx("tokens_a")] = Arc::new(ta);
    cols[idx("tokens_b")] = Arc::new(tb);
    let batch = RecordBatch::try_new(batch.schema(), cols).unwrap();
    let input = dir.path().join("in.parquet");
    table::write_table(&input, &batch, &[]).unwrap();
    let (s, out) = run(&input, &dir.path().join("o"), json!({"rho": 0.5, "size": "max"})).unwrap();
    assert_eq!(s["unlabelled"], 1000);
    assert_eq!(s["length"], "tokens");
    let t = table::read_table(&out, Some(&["label", "source_row"])).unwrap();
    assert_eq!(t.column(0).null_count(), 0);
    assert!(table::u32_values(&t, "source_row").unwrap().values().iter().all(|r| r % 2 == 1));
    let (sw, _) = run(&input, &dir.path().join("w"), json!({"rho": 0.5, "size": "max", "length": "words"})).unwrap();
    assert_eq!(sw["longer_preferred_available"], s["shorter_preferred_available"], "tokens are the words swapped");
}
