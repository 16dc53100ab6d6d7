//! The data/reward half of pipelines/robust-distill.toml through the binary, at a small size: synth → sft → pairs →
//! label → D_rho → D_rho' → reward models → precompute. Checks that it runs, that a second run is fully cached,
//! that a fresh store reproduces every artifact byte for byte, and that sharded labelling merges back.

mod common;
use common::*;
use serde_json::Value;

fn small_manifest(w: &Work) -> std::path::PathBuf {
    let pipeline = repo().join("pipelines/robust-distill.toml");
    w.write(
        "small.toml",
        &format!(
            r#"pipeline = "{}"

[vars]
n_docs = 300
sft_steps = 60
rhos = [0.3, 0.7]
members = [0.2, 0.8]
seeds = [0]
size = 40
member_size = 10
rm_epochs = 1.0
"#,
            pipeline.display()
        ),
    )
}

#[test]
fn data_half_runs_caches_and_reproduces() {
    let w = Work::new();
    let m = small_manifest(&w);
    let m = m.to_str().unwrap();
    let t0 = std::time::Instant::now();
    // Two jobs: nodes that read the same directory artifact (sft.model) at once share one verified copy.
    // Only the data half: the reward-side targets and what they need.
    let s = w.run_json(&[m, "precompute", "precompute_rm", "-j", "2"]);
    let secs = t0.elapsed().as_secs_f64();
    let ran = nodes_with(&s, "ran");
    eprintln!("first run: {} nodes in {secs:.1}s", ran.len());
    // synth, sft, pairs, label, pairs_eval, label_eval, 2 d_rho, 4 members, 2 rm, 4 rm_member, 2 precompute,
    // 2 precompute_rm, and the 2 precompute_ref whose reference log-probs both read
    assert_eq!(ran.len(), 24, "{ran:?}");
    assert!(nodes_with(&s, "failed").is_empty());
    for n in ["precompute@rho=0.3,seed=0", "precompute_rm@rho=0.7,seed=0", "rm_member@member=0.8,rho=0.3,seed=0"] {
        assert!(ran.contains(&n.to_string()), "{n} not in {ran:?}");
    }
    // the rewards table has one reward per member, members ordered by rho'
    let show = w.ok(&["show", m, "precompute@rho=0.3,seed=0.rewards", "--json"]);
    let v: Value = serde_json::from_str(&show).expect("show --json");
    let text = v.to_string();
    assert!(text.contains("reward_a") && text.contains("ref_logp_a"), "{text}");
    let members_at = |s: &str| s.find("rm_member@member=0.2").zip(s.find("rm_member@member=0.8"));
    let (a, b) = members_at(&text).expect("members named in the metadata");
    assert!(a < b, "members in rho' order");
    // everything cached the second time
    let again = w.run_json(&[m, "precompute", "precompute_rm"]);
    assert!(nodes_with(&again, "ran").is_empty(), "{:?}", nodes_with(&again, "ran"));
    // a fresh store reproduces every artifact byte for byte (CPU determinism)
    let w2 = Work::new();
    let m2 = small_manifest(&w2);
    let s2 = w2.run_json(&[m2.to_str().unwrap(), "precompute", "precompute_rm", "-j", "2"]);
    assert_eq!(output_hashes(&s), output_hashes(&s2));
}

#[test]
fn sharded_labelling_merges_back() {
    let w = Work::new();
    let pipeline = repo().join("pipelines/robust-distill.toml");
    let m = w.write(
        "sharded.toml",
        &format!(
            r#"pipeline = "{}"

[vars]
n_docs = 200
sft_steps = 10
seeds = [0]

[stages.label_shard]
kind = "label"
inputs = {{ pairs = "pairs.pairs" }}
sweep = {{ seed = "${{seeds}}", shard = [0, 1, 2] }}
params = {{ oracle = "synthetic", shard = "${{shard}}", shards = 3, ties = "${{ties}}" }}

[stages.label_merged]
kind = "merge"
inputs = {{ parts = "label_shard.labelled" }}
sweep = {{ seed = "${{seeds}}" }}
"#,
            pipeline.display()
        ),
    );
    let m = m.to_str().unwrap();
    let s = w.run_json(&[m, "label", "label_merged", "-j", "1"]);
    assert!(nodes_with(&s, "failed").is_empty());
    let h = output_hashes(&s);
    let show = |node: &str| -> Value { serde_json::from_str(&w.ok(&["show", m, node, "--json"])).unwrap() };
    let (a, b) = (show("label@seed=0.labelled"), show("label_merged@seed=0.merged"));
    assert_eq!(a["rows"], b["rows"], "{a}\n{b}");
    assert!(h.contains_key("label_merged@seed=0"), "{h:?}");
}

/// A tokenizer that does not cover the data (here the synthetic task's word-level tokenizer given `generate`'s
/// texts, whose words it never saw) turns most words into its unknown token: `sft` still trains, but says so, under
/// `-q` too; a tokenizer made for the data (trained here) gives no warning.
#[test]
fn a_tokenizer_that_does_not_cover_the_data_is_warned_about() {
    let w = Work::new();
    w.write(
        "m.toml",
        r#"[stages.synth]
kind = "synth"
params = { n_docs = 40, seed = 1 }
[stages.gen]
kind = "generate"
params = { n = 200 }
[stages.sft_unk]
kind = "sft"
inputs = { data = "gen.pairs", tokenizer = "synth.tokenizer" }
params = { steps = 2, batch_size = 4 }
[stages.sft_own]
kind = "sft"
inputs = { data = "gen.pairs" }
params = { steps = 2, batch_size = 4 }
"#,
    );
    let o = w.run(&["run", "m.toml", "-q", "--store", "file://./store"]);
    assert!(o.status.success(), "{}", s(&o.stderr));
    let err = s(&o.stderr);
    let warned: Vec<&str> = err.lines().filter(|l| l.starts_with("warning: ")).collect();
    assert_eq!(warned.len(), 1, "{err}");
    let line = warned[0];
    assert!(line.starts_with("warning: sft_unk: "), "{line}");
    assert!(
        line.contains("% of the ") && line.contains(" tokens of the demonstrations are the unknown token \"<|unk|>\""),
        "{line}"
    );
    assert!(line.contains("the tokenizer of `tokenizer` does not cover these texts"), "{line}");
    let share: f64 = line["warning: sft_unk: ".len()..].split('%').next().unwrap().parse().unwrap();
    assert!(share > 50.0, "{line}");
}
