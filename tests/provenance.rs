//! Where stored results were produced: every entry records its machine, and a run that takes a libtorch stage's
//! result from another kind of machine, or computed with other threads or kernel pins, says so (its numbers differ
//! from this run's in the last bits).

mod common;
use common::*;
use serde_json::Value;

const M: &str = r#"description = "one libtorch node, one pure node"

[stages.synth]
kind = "synth"
params = { n_docs = 40, seed = 1 }

[stages.sft]
kind = "sft"
inputs = { data = "synth.corpus", tokenizer = "synth.tokenizer" }
params = { steps = 3, batch_size = 2, eval_every = 1000, seed = 1 }

[stages.gen]
kind = "generate"
params = { n = 50, seed = 3 }
"#;

/// Rewrites the `machine` of `node`'s entry as if another machine had stored it, keeping the entry's `check` valid
/// (what a store shared with another machine holds).
fn as_if_from(w: &Work, node: &str, machine: &str) {
    let dir = w.store().join("cache");
    for d in std::fs::read_dir(&dir).unwrap().flatten() {
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            let bytes = std::fs::read(f.path()).unwrap();
            let v: Value = serde_json::from_slice(&bytes).unwrap();
            if v["node"] != node {
                continue;
            }
            let text = String::from_utf8(bytes).unwrap();
            let at = text.rfind(",\n  \"check\": \"").expect("an entry ends with its check");
            let old = format!("\"machine\": {}", v["machine"]);
            assert!(text.contains(&old), "{text}");
            let body = text[..at].replace(&old, &format!("\"machine\": {}", Value::from(machine))) + "\n}";
            let check = blake3::hash(body.as_bytes()).to_hex();
            let out = format!("{},\n  \"check\": \"{check}\"\n}}", &body[..body.len() - 2]);
            std::fs::write(f.path(), out).unwrap();
            return;
        }
    }
    panic!("no entry for {node}");
}

#[test]
fn entries_record_their_machine_and_a_run_names_results_from_another() {
    let w = Work::new();
    w.write("m.toml", M);
    assert_eq!(w.run_json(&["m.toml"])["ran"], 3);
    let model = cpu_model_name();
    for e in entries(&w.store()) {
        let m = e["machine"].as_str().unwrap_or_else(|| panic!("no machine in {e}"));
        assert!(m.ends_with(&format!("({})", std::env::consts::ARCH)), "{m}");
        if let Some(model) = &model {
            assert!(m.starts_with(model.as_str()), "{m} vs {model}");
        }
    }
    // Nothing from elsewhere: no note.
    let o = w.run(&["run", "m.toml"]);
    assert!(o.status.success() && !s(&o.stderr).contains("cached result(s) of libtorch"), "{}", s(&o.stderr));

    // The same store as another machine would leave it: the entries still verify, every node is cached, and the
    // libtorch node's result (not the pure one's, the same bits everywhere) is named.
    as_if_from(&w, "sft", "Some Other CPU (x86_64)");
    as_if_from(&w, "gen", "Some Other CPU (x86_64)");
    let o = w.run(&["run", "m.toml"]);
    let (out, err) = (s(&o.stdout), s(&o.stderr));
    assert!(o.status.success() && out.contains("nothing to do: all 3 nodes cached"), "{out}\n{err}");
    assert!(
        err.contains(
            "note: 1 cached result(s) of libtorch stages were produced on another kind of machine or with other \
             settings than this run's"
        ) && err.contains("1 on Some Other CPU (x86_64)"),
        "{err}"
    );
    let j = w.run_json(&["m.toml"]);
    let other: Vec<(&str, &str)> = j["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| Some((n["node"].as_str()?, n.get("other_machine")?.as_str()?)))
        .collect();
    assert_eq!(other, vec![("sft", "Some Other CPU (x86_64)")]);
    assert_store_consistent(&w.store());
}

/// libtorch's bits also change with the threads per node and with kernel pins (BENCHMARKS.md: a DPO step's weights
/// differ between 1 and 2 threads, and between a Xeon pinned to AVX2 and unpinned), so both are recorded beside the
/// machine and a cached result computed otherwise is named like one from another machine.
#[test]
fn threads_and_kernel_pins_are_recorded_and_a_run_computing_otherwise_names_them() {
    let w = Work::new();
    w.write("m.toml", M);
    let o = w.cmd(&["run", "m.toml", "--json"]).env("ATEN_CPU_CAPABILITY", "default").output().unwrap();
    assert!(o.status.success(), "{}", s(&o.stderr));
    let machine = |node: &str| -> String {
        let e = entries(&w.store()).into_iter().find(|e| e["node"] == node).unwrap();
        e["machine"].as_str().unwrap().to_string()
    };
    let here = machine("gen");
    assert!(
        here.ends_with(&format!("({})", std::env::consts::ARCH)),
        "the pure node's entry names the machine alone: {here}"
    );
    assert_eq!(machine("sft"), format!("{here} with ATEN_CPU_CAPABILITY=default"));

    // Unpinned, the pinned results are cached but named (sft's, and synth's: it runs in the worker too); the pure
    // node's is not.
    let o = w.run(&["run", "m.toml"]);
    let err = s(&o.stderr);
    assert!(o.status.success() && s(&o.stdout).contains("all 3 nodes cached"), "{err}");
    assert!(
        err.contains(&format!(
            "settings than this run's ({here} with 1 thread): 2 on {here} with ATEN_CPU_CAPABILITY=default"
        )),
        "{err}"
    );

    // Fewer jobs than cores: each libtorch node gets more threads, which the entry records.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores >= 2 {
        let j = w.run_json(&["m.toml", "-j", "1", "--force", "sft"]);
        assert_eq!(j["computed_on"], format!("{here} with {cores} threads"), "{j}");
        assert_eq!(machine("sft"), format!("{here} with {cores} threads"));
        let j = w.run_json(&["m.toml"]);
        let sft = j["nodes"].as_array().unwrap().iter().find(|n| n["node"] == "sft").unwrap().clone();
        assert_eq!(sft["other_machine"], format!("{here} with {cores} threads"), "{j}");
        // the note names the one thread this run computes with (a reviewer's finding: "… (AMD EPYC (x86_64) with
        // 2 threads): 1 on AMD EPYC (x86_64)" hid what differed)
        let err = s(&w.run(&["run", "m.toml"]).stderr);
        assert!(err.contains(&format!("this run's ({here} with 1 thread): ")), "{err}");
        assert!(err.contains(&format!("1 on {here} with {cores} threads")), "{err}");
    }
    assert_store_consistent(&w.store());
}
