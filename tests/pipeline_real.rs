//! The paper's set-up on real preference data through the binary, at a small size on CPU: TL;DR comparisons from
//! ../shared/data, π_ref from scratch, an oracle reward model trained on the human labels relabelling the pairs,
//! the six methods, evaluation by the oracle on held-out records, and the report.

mod common;
use common::*;

#[test]
fn tldr_with_an_oracle_reward_model_runs_end_to_end() {
    let w = Work::new();
    let manifest = repo().join("manifests/tldr-scratch.toml");
    let m = manifest.to_str().unwrap();
    let data = shared_data().join("tldr-2k/train.jsonl");
    let data_set = format!("data={:?}", data.to_str().unwrap());
    let s = w.run_json(&[
        m, "--jobs", "2", "-S", &data_set, "-S", "rhos=[0.2, 0.8]", "-S", "seeds=[0]", "-S", "members=[0.2, 0.8]",
        "-S", "size=100", "-S", "member_size=25", "-S", "sft_steps=50", "-S", "train_records=400", "-S", "test_records=40",
        "-S", "eval_prompts=20", "-S", "policy_epochs=1", "-S", "rm_epochs=1.0", "-S", "oracle_epochs=1.0",
    ]);
    assert_eq!(s["failed"], 0, "{s}");
    assert_eq!(s["ran"], 47);
    // The oracle relabelled the training pairs; evaluation used held-out records (the file's tail).
    let label = s["nodes"].as_array().unwrap().iter().find(|n| n["node"] == "label").unwrap();
    assert!(label["outputs"]["labelled"]["size"].as_u64().unwrap() > 0);
    let shown: serde_json::Value = serde_json::from_str(&w.ok(&["show", m, "test_data", "--json", "--rows", "1",
        "-S", &data_set, "-S", "train_records=400", "-S", "test_records=40"])).unwrap();
    assert_eq!(shown["preview"][0]["source_row"].as_u64().map(|r| r >= 400), Some(true), "{shown}");
    let out = w.ok(&["report", m, "-o", "rep", "-S", &data_set, "-S", "rhos=[0.2, 0.8]", "-S", "seeds=[0]", "-S", "members=[0.2, 0.8]",
        "-S", "size=100", "-S", "member_size=25", "-S", "sft_steps=50", "-S", "train_records=400", "-S", "test_records=40",
        "-S", "eval_prompts=20", "-S", "policy_epochs=1", "-S", "rm_epochs=1.0", "-S", "oracle_epochs=1.0"]);
    assert!(out.contains("report.md"));
    let md = std::fs::read_to_string(w.path().join("rep/report.md")).unwrap();
    assert!(md.contains("TL;DR") && md.contains("e-dpo"), "{md}");
}
