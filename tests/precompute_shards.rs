//! `precompute` sharded (3 shards, each output merged back with `merge`) against the unsharded stage, through the
//! binary: the merged tables equal the unsharded ones row for row, value for value (floats bit for bit), for both
//! `rewards` and `ref_samples`, with `batch_size = 8` (40 pairs: 5 batches over 3 shards) and with the pipeline's own
//! settings (batch 128 > 40 pairs: two shards are empty). Shards are whole batches; were they cut mid-batch, the
//! float32 kernels would round differently on the other padded shapes. And `oracle_rewards`: the pairs' own oracle
//! scores as the last member, after the reward models or alone, sharded and merged.

mod common;
use common::*;
use serde_json::Value;

fn manifest(w: &Work) -> String {
    let pipeline = repo().join("pipelines/robust-distill.toml");
    let inputs = r#"inputs = { pairs = "d_rho.dataset", reference = "sft.model", reward_models = "rm_member.model" }"#;
    let mut m = format!(
        r#"pipeline = "{}"

[vars]
n_docs = 300
sft_steps = 60
rhos = [0.3]
members = [0.2, 0.8]
seeds = [0]
size = 40
member_size = 10
rm_epochs = 1.0

[stages.whole_bs8]
kind = "precompute"
{inputs}
sweep = {{ rho = "${{rhos}}", seed = "${{seeds}}" }}
params = {{ seed = "${{seed}}", samples_per_prompt = 2, sample_batch = 4, batch_size = 8 }}
"#,
        pipeline.display()
    );
    for (stage, extra) in [("shard_bs8", ", sample_batch = 4, batch_size = 8"), ("shard", "")] {
        let spp = if stage == "shard" { 1 } else { 2 };
        m += &format!(
            r#"
[stages.{stage}]
kind = "precompute"
{inputs}
sweep = {{ rho = "${{rhos}}", seed = "${{seeds}}", shard = [0, 1, 2] }}
params = {{ seed = "${{seed}}", samples_per_prompt = {spp}, shard = "${{shard}}", shards = 3{extra} }}
"#
        );
        for out in ["rewards", "ref_samples"] {
            m += &format!(
                "\n[stages.{stage}_{out}]\nkind = \"merge\"\ninputs = {{ parts = \"{stage}.{out}\" }}\nsweep = {{ rho = \"${{rhos}}\", seed = \"${{seeds}}\" }}\n"
            );
        }
    }
    // the oracle's own scores as a member (`oracle_rewards`): after the reward models, alone, and alone in shards
    m += r#"
[stages.oracle_members]
kind = "precompute"
inputs = { pairs = "d_rho.dataset", reference = "sft.model", reward_models = "rm_member.model" }
sweep = { rho = "${rhos}", seed = "${seeds}" }
params = { seed = "${seed}", samples_per_prompt = 0, oracle_rewards = true }

[stages.oracle_only]
kind = "precompute"
inputs = { pairs = "d_rho.dataset", reference = "sft.model" }
sweep = { rho = "${rhos}", seed = "${seeds}" }
params = { seed = "${seed}", samples_per_prompt = 0, oracle_rewards = true, batch_size = 8 }

[stages.oracle_shard]
kind = "precompute"
inputs = { pairs = "d_rho.dataset", reference = "sft.model" }
sweep = { rho = "${rhos}", seed = "${seeds}", shard = [0, 1, 2] }
params = { seed = "${seed}", samples_per_prompt = 0, oracle_rewards = true, batch_size = 8, shard = "${shard}", shards = 3 }

[stages.oracle_shard_rewards]
kind = "merge"
inputs = { parts = "oracle_shard.rewards" }
sweep = { rho = "${rhos}", seed = "${seeds}" }
"#;
    w.write("sharded.toml", &m);
    "sharded.toml".to_string()
}

#[test]
fn sharded_precompute_merges_back_to_the_unsharded_tables() {
    let t0 = std::time::Instant::now();
    let w = Work::new();
    let m = manifest(&w);
    let merged = ["shard_bs8_rewards", "shard_bs8_ref_samples", "shard_rewards", "shard_ref_samples"];
    let oracle = ["oracle_members", "oracle_only", "oracle_shard_rewards", "d_rho"];
    let mut targets = vec![m.as_str(), "precompute", "whole_bs8"];
    targets.extend(merged);
    targets.extend(oracle);
    // On the CPU, as the other pipeline tests.
    targets.extend(["-j", "2", "--device", "cpu"]);
    let s = w.run_json(&targets);
    assert!(nodes_with(&s, "failed").is_empty(), "{s}");
    let ran = nodes_with(&s, "ran");
    assert!(
        ran.contains(&"shard@rho=0.3,seed=0,shard=2".to_string())
            && ran.contains(&"shard_bs8_rewards@rho=0.3,seed=0".to_string()),
        "{ran:?}"
    );
    let table = |node: &str, out: &str| -> Value {
        serde_json::from_str(&w.ok(&[
            "show",
            &m,
            &format!("{node}@rho=0.3,seed=0.{out}"),
            "--json",
            "--rows",
            "100000",
        ]))
        .unwrap()
    };
    // The unsharded table's metadata (other than what names the shard and the stage) is kept by the merge.
    let same_meta = |a: &Value, b: &Value, out: &str| {
        let skip = ["rmdistill.shard", "rmdistill.shards", "rmdistill.stage", "rmdistill.output"];
        for (k, v) in a["metadata"].as_object().unwrap().iter().filter(|(k, _)| !skip.contains(&k.as_str())) {
            assert_eq!(Some(v), b["metadata"].get(k), "{out}: metadata {k}");
        }
    };
    for out in ["rewards", "ref_samples"] {
        // batch_size = 8
        let (a, b) = (table("whole_bs8", out), table(&format!("shard_bs8_{out}"), "merged"));
        let n = a["rows"].as_u64().unwrap_or_else(|| panic!("{a}"));
        assert!(n >= 20, "{out}: {n} rows");
        assert_eq!(a["preview"].as_array().map(|p| p.len() as u64), Some(n), "the whole table is shown");
        assert_eq!(a["rows"], b["rows"], "{out}: row counts differ");
        assert_eq!(a["preview"], b["preview"], "{out}: the merged shards differ from the unsharded table");
        same_meta(&a, &b, out);
        // The pipeline's own precompute (default batch size) against its sharded twin.
        let (a, b) = (table("precompute", out), table(&format!("shard_{out}"), "merged"));
        assert_eq!(a["rows"], b["rows"], "{out}: row counts differ");
        assert_eq!(
            a["preview"], b["preview"],
            "{out}: the merged shards differ from the unsharded table (default batch size)"
        );
        same_meta(&a, &b, out);
    }
    // `oracle_rewards`: the pairs' own oracle scores are the last member, named `oracle`, row for row; in shards too
    let pairs = table("d_rho", "dataset");
    let rows = |t: &Value| t["preview"].as_array().unwrap().clone();
    let (with_rms, alone, merged) =
        (table("oracle_members", "rewards"), table("oracle_only", "rewards"), table("oracle_shard_rewards", "merged"));
    let rm_only = table("precompute", "rewards");
    assert_eq!(with_rms["metadata"]["rmdistill.members"].as_str().map(|m| m.ends_with(",\"oracle\"]")), Some(true));
    assert_eq!(alone["metadata"]["rmdistill.members"], "[\"oracle\"]");
    assert_eq!(rows(&pairs).len(), rows(&alone).len());
    for (i, p) in rows(&pairs).iter().enumerate() {
        let (w, a, r) = (&rows(&with_rms)[i], &rows(&alone)[i], &rows(&rm_only)[i]);
        assert_eq!((&a["pair_id"], &w["pair_id"]), (&p["pair_id"], &p["pair_id"]));
        for (col, oracle_col) in [("reward_a", "oracle_a"), ("reward_b", "oracle_b")] {
            assert_eq!(a[col], serde_json::json!([p[oracle_col]]), "row {i}");
            let mut want = r[col].as_array().unwrap().clone();
            want.push(p[oracle_col].clone());
            assert_eq!(w[col], Value::Array(want), "row {i}");
        }
    }
    assert_eq!(rows(&alone), rows(&merged), "the oracle member in shards, merged, differs from the unsharded table");
    eprintln!("sharded precompute test: {:.1}s", t0.elapsed().as_secs_f64());
}
