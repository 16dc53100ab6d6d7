//! The paper's experiment end to end through the binary, on the embedded synthetic task at a small size: every
//! stage from synth to the report, a cached re-run, and one method's β changed.

mod common;
use common::*;

const SMALL: &[&str] = &[
    "--set", "n_docs=1500", "--set", "sft_steps=150", "--set", "rhos=[0.2, 0.8]", "--set", "seeds=[0]",
    "--set", "members=[0.2, 0.8]", "--set", "size=240", "--set", "member_size=60", "--set", "rm_epochs=1.0",
    "--set", "policy_epochs=1", "--set", "eval_prompts=40",
];

fn args<'a>(head: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = head.to_vec();
    v.extend_from_slice(SMALL);
    v.extend_from_slice(extra);
    v
}

#[test]
fn the_default_experiment_runs_end_to_end_and_reruns_only_what_a_beta_change_affects() {
    let w = Work::new();
    let manifest = repo().join("manifests/synthetic-default.toml");
    let m = manifest.to_str().unwrap();
    let first = w.run_json(&args(&[m, "--jobs", "2"], &[]));
    assert_eq!(first["failed"], 0, "{first}");
    let nodes = first["nodes"].as_array().unwrap().len();
    assert_eq!(first["ran"].as_u64().unwrap() as usize, nodes);

    // The report: markdown with the advantage table and the three figures.
    let out = w.ok(&args(&["report", m, "-o", "rep"], &[]));
    assert!(out.trim().ends_with("rep/report.md"), "{out}");
    let md = std::fs::read_to_string(w.path().join("rep/report.md")).unwrap();
    for needle in ["Advantage over π_ref", "| 0.2 |", "| 0.8 |", "e-dpo", "d-dpo", "p-dpo", "dp-dpo", "ipo", "dpo"] {
        assert!(md.contains(needle), "report lacks {needle}:\n{md}");
    }
    for png in ["advantage_vs_rho.png", "logp_trajectories.png", "member_usage.png"] {
        let bytes = std::fs::read(w.path().join("rep").join(png)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000, "{png}");
    }

    assert_eq!(w.run_json(&args(&[m], &[]))["ran"], 0);

    // Changing e-DPO's β re-runs e-DPO, its evaluations and the report — nothing else.
    let changed = w.run_json(&args(&[m], &["--set", "beta_e_dpo=0.3"]));
    let ran = nodes_with(&changed, "ran");
    let mut expected = vec!["report".to_string()];
    for rho in ["0.2", "0.8"] {
        expected.push(format!("e_dpo@rho={rho},seed=0"));
        expected.push(format!("eval_e_dpo@rho={rho},seed=0"));
    }
    expected.sort();
    assert_eq!(ran, expected);
}
