//! The paper's experiment end to end through the binary, on the embedded synthetic task at a small size: every
//! stage from synth to the report (every method's β — τ for IPO — and the pessimistic methods' γ chosen by
//! validation), a cached re-run, one method's grid changed, the DPO candidates changed, and a sharded evaluation
//! merged back equal to the unsharded one.

mod common;
use common::*;

const SMALL: &[&str] = &[
    "--set",
    "n_docs=1500",
    "--set",
    "sft_steps=150",
    "--set",
    "rhos=[0.2, 0.8]",
    "--set",
    "seeds=[0]",
    "--set",
    "members=[0.2, 0.8]",
    "--set",
    "size=240",
    "--set",
    "member_size=60",
    "--set",
    "rm_epochs=1.0",
    "--set",
    "policy_epochs=1",
    "--set",
    "eval_prompts=40",
    "--set",
    "val_prompts=40",
    // two candidates per grid (γ: two as well), so that every method's selection is exercised at a small size
    "--set",
    "betas_dpo=[0.1, 1.0]",
    "--set",
    "taus_ipo=[0.1, 1.0]",
    "--set",
    "betas_p_dpo=[0.1, 1.0]",
    "--set",
    "betas_d_dpo=[0.1, 1.0]",
    "--set",
    "betas_dp_dpo=[0.1, 1.0]",
    "--set",
    "betas_e_dpo=[0.1, 1.0]",
    // γ is fixed in the default pipeline; selecting it with β is tested here
    "--set",
    "gammas=[0.01, 0.1]",
];

fn args<'a>(head: &[&'a str], extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = head.to_vec();
    v.extend_from_slice(SMALL);
    v.extend_from_slice(extra);
    v
}

/// ρ → (chosen β or τ, chosen γ) of a method's selection.
fn chosen(w: &Work, m: &str, stage: &str, extra: &[&str]) -> std::collections::BTreeMap<String, (f64, Option<f64>)> {
    let sel: serde_json::Value =
        serde_json::from_str(&w.ok(&args(&["show", m, &format!("select_{stage}"), "--json"], extra))).unwrap();
    let rows = sel["preview"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{sel}");
    // numbers as node names write them (`beta=1.0`)
    let num = |v: &serde_json::Value| serde_json::json!(v.as_f64().unwrap()).to_string();
    rows.iter().map(|r| (num(&r["rho"]), (r["value"].as_f64().unwrap(), r["gamma"].as_f64()))).collect()
}

#[test]
fn the_default_experiment_runs_end_to_end_and_reruns_only_what_a_beta_change_affects() {
    let w = Work::new();
    let manifest = repo().join("manifests/synthetic-default.toml");
    let m = manifest.to_str().unwrap();
    let first = w.run_json(&args(&[m, "--jobs", "2"], &[]));
    assert_eq!(first["failed"], 0, "{first}");
    let nodes = first["nodes"].as_array().unwrap().len();
    // Everything ran but the final policies: seed 0 is the candidates' seed, so each final policy, keyed by the
    // values its selection chose, is the chosen candidate's cache entry (checked below).
    let finals = ["dpo", "ipo", "p_dpo", "d_dpo", "dp_dpo", "e_dpo"];
    let cached = nodes_with(&first, "cached");
    assert_eq!(cached.len(), finals.len() * 2, "{cached:?}");
    assert!(cached.iter().all(|n| finals.iter().any(|f| n.starts_with(&format!("{f}@")))), "{cached:?}");
    assert_eq!(first["ran"].as_u64().unwrap() as usize, nodes - cached.len());
    // The 10-seed manifest is this one with more seeds: under the same overrides (`seeds` among them) every node is
    // a cache hit, so after the default run it trains only the seeds the default did not.
    let ten = repo().join("manifests/synthetic-10-seeds.toml");
    let st = w.ok(&args(&["status", ten.to_str().unwrap()], &[]));
    assert!(st.trim_end().ends_with(&format!("{nodes} cached, 0 would run, 0 wait on upstream")), "{st}");
    // The ablation d-DPO from the oracle's reward: its own stages on top of the default's cached ones, and a report
    // with it beside the six methods.
    let ablation = repo().join("manifests/synthetic-oracle-distillation.toml");
    let ab = ablation.to_str().unwrap();
    let o = w.run_json(&args(&[ab, "report_oracle", "--jobs", "2"], &[]));
    assert_eq!(o["failed"], 0, "{o}");
    let ran = nodes_with(&o, "ran");
    assert!(ran.iter().all(|n| n.contains("oracle")), "only the ablation's nodes run: {ran:?}");
    for n in ["precompute_oracle@rho=0.2,seed=0", "eval_d_dpo_oracle@method=d-dpo-oracle,rho=0.8,seed=0"] {
        assert!(ran.contains(&n.to_string()), "{n} did not run: {ran:?}");
    }
    let o = w.run(&args(&["report", ab, "--node", "report_oracle", "-o", "rep_oracle"], &[]));
    assert!(o.status.success(), "{}", s(&o.stderr));
    let md = std::fs::read_to_string(w.path().join("rep_oracle/report.md")).unwrap();
    assert_tables_render(&md);
    assert!(md.contains("| ρ | DPO | IPO | d-DPO | p-DPO | dp-DPO | e-DPO | d-DPO from r* |"), "{md}");
    // the ablation's own contrasts, one family over every ρ: 3 contrasts × the ρ the test runs
    let further = &md[md.find("## Further contrasts fixed in advance").expect("the ablation's contrasts")..];
    for c in ["d-DPO from r* − DPO", "d-DPO from r* − IPO", "d-DPO from r* − d-DPO"] {
        assert!(further.contains(&format!("| 0.2 | {c} |")), "{c}: {further}");
    }
    // its β was chosen by validation, and the report shows that choice (a reviewer's finding: it said "not by a
    // selection given to this report", the ablation's selection being left out of it)
    let hyper = &md[md.find("## Hyper-parameters of the evaluated policies").expect("the hyper-parameters")..];
    let row = hyper.lines().find(|l| l.starts_with("| d-DPO from r* | 0.2 |")).expect("d-DPO from r* at ρ = 0.2");
    assert!(row.contains("(validation ") && row.contains(" candidates, 1 seed"), "{row}");

    // The report: markdown with the advantage table and the three figures.
    let o = w.run(&args(&["report", m, "-o", "rep"], &[]));
    let (out, err) = (s(&o.stdout), s(&o.stderr));
    assert!(o.status.success() && out.trim().ends_with("rep/report.md"), "{out}\n{err}");
    // where the results behind it were produced: every node ran here, so one kind of machine, named as lscpu does
    assert!(err.contains("stored results of libtorch stages, all produced on "), "{err}");
    if let Some(model) = cpu_model_name() {
        assert!(err.contains(&format!("all produced on {model}")), "{err}");
    }
    // and so does the file beside it
    let prov = std::fs::read_to_string(w.path().join("rep/provenance.txt")).unwrap();
    let lines: Vec<&str> = prov.lines().collect();
    assert!(
        lines[0].starts_with("report.md: the output of node `report` of ") && lines[0].contains("(artifact "),
        "{prov}"
    );
    assert!(lines[1].starts_with("built from ") && err.contains(lines[1]), "{prov}");
    let md = std::fs::read_to_string(w.path().join("rep/report.md")).unwrap();
    assert_tables_render(&md);
    // a directory that cannot be made is named, not only the OS error
    let o = w.run(&args(&["report", m, "-o", "/proc/self/no/such"], &[]));
    let err = s(&o.stderr);
    assert!(!o.status.success() && err.contains("cannot create the directory /proc/self/no/such"), "{err}");
    // --json answers JSON (a reviewer's finding: the path was printed as text); a file where the directory goes and
    // a node that is not there are named, with the report nodes there are
    let j: serde_json::Value = serde_json::from_str(&w.ok(&args(&["report", m, "-o", "rep2", "--json"], &[]))).unwrap();
    assert!(
        j["report"].as_str().unwrap().ends_with("rep2/report.md") && j["files"].as_array().unwrap().len() >= 4,
        "{j}"
    );
    assert_eq!(j["node"], "report");
    std::fs::write(w.path().join("afile"), "").unwrap();
    let err = s(&w.run(&args(&["report", m, "-o", "afile"], &[])).stderr);
    assert!(err.contains("report -o afile: not a directory"), "{err}");
    let err = s(&w.run(&args(&["report", m, "--node", "nosuch"], &[])).stderr);
    assert!(err.contains("no node named `nosuch`; report nodes in this manifest: report"), "{err}");
    for needle in [
        "Advantage over π_ref",
        "| 0.2 |",
        "| 0.8 |",
        "e-DPO",
        "d-DPO",
        "p-DPO",
        "dp-DPO",
        "IPO",
        "DPO",
        "Findings of the paper, measured here",
        "Contrasts fixed in advance",
        "LC advantage",
        "Power of this design",
        "Hyper-parameters of the evaluated policies",
        "chosen by validation",
        "Reward models",
        // the single reward models of ρ = 0.8 against those of ρ = 0.2 (one seed here: no interval)
        "- `rm`: ρ = 0.8 − ρ = 0.2: ",
    ] {
        assert!(md.contains(needle), "report lacks {needle}:\n{md}");
    }
    // Selection: every method's candidates (2 β or τ; × 2 γ for the pessimistic methods) were trained and validated
    // per ρ on seed 0; the report lists each method once (the chosen values), and the final policies are the
    // chosen candidates (the same model bytes).
    let ran = nodes_with(&first, "ran");
    let count = |prefix: &str| ran.iter().filter(|n| n.starts_with(prefix)).count();
    for (stage, per_rho) in [("dpo", 2), ("ipo", 2), ("p_dpo", 4), ("d_dpo", 2), ("dp_dpo", 4), ("e_dpo", 4)] {
        assert_eq!(count(&format!("cand_{stage}@")), 2 * per_rho, "{stage}");
        assert_eq!(count(&format!("val_{stage}@")), 2 * per_rho, "{stage}");
        assert_eq!(count(&format!("eval_{stage}@")), 2, "{stage}");
        assert_eq!(count(&format!("select_{stage}")), 1, "{stage}");
    }
    let hashes = output_hashes(&first);
    for stage in finals {
        for (rho, (value, gamma)) in chosen(&w, m, stage, &[]) {
            // axes sorted by name, as node names write them
            let (value, gamma) = (serde_json::json!(value), gamma.map(|g| format!(",gamma={}", serde_json::json!(g))));
            let cand = if stage == "ipo" {
                format!("cand_ipo@rho={rho},seed=0,tau={value}")
            } else {
                format!("cand_{stage}@beta={value}{},rho={rho},seed=0", gamma.unwrap_or_default())
            };
            let fin = format!("{stage}@rho={rho},seed=0");
            assert!(hashes.contains_key(&cand), "no candidate {cand}: {:?}", hashes.keys());
            assert_eq!(hashes[&fin], hashes[&cand], "{fin} is not its chosen candidate {cand}");
        }
    }
    assert!(!md.contains("DPO β="), "a chosen β must not split DPO into several columns:\n{md}");
    // with two values per grid every choice lies at an end of it, and the report says so of each
    let choices = md.lines().filter(|l| l.contains("(validation ")).count();
    assert!(choices > 0, "{md}");
    assert!(md.contains(&format!("**{choices} of {choices}** choices lie at an end of their grid")), "{md}");
    assert_eq!(md.lines().filter(|l| l.contains(" tried*")).count(), choices, "{md}");
    let sel: serde_json::Value = serde_json::from_str(&w.ok(&args(&["show", m, "select_dpo", "--json"], &[]))).unwrap();
    let rows = sel["preview"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{sel}");
    // a node of several outputs shows its first and says so (`run` sends a user to `show NODE` for its warnings);
    // an output it lacks is named with the ones it has
    let o = w.run(&args(&["show", m, "synth@seed=0", "--rows", "1"], &[]));
    assert!(o.status.success(), "{}", s(&o.stderr));
    assert!(s(&o.stderr).contains("note: synth@seed=0 has several outputs (corpus, tokenizer): showing corpus"));
    assert!(s(&o.stdout).starts_with("synth@seed=0.corpus: table "), "{}", s(&o.stdout));
    let o = w.run(&args(&["show", m, "synth@seed=0.model"], &[]));
    assert!(
        s(&o.stderr).contains("synth@seed=0 has no output `model`; its outputs: corpus, tokenizer"),
        "{}",
        s(&o.stderr)
    );
    for r in rows {
        let rho = r["rho"].as_f64().unwrap();
        let chosen = r["value"].as_f64().unwrap();
        let eval: serde_json::Value = serde_json::from_str(
            &w.ok(&args(&["show", m, &format!("eval_dpo@rho={rho},seed=0.summary"), "--json"], &[])),
        )
        .unwrap();
        assert_eq!(eval["preview"][0]["beta"].as_f64(), Some(chosen), "{eval}");
        assert_eq!(eval["preview"][0]["split"], "test");
    }
    // e-DPO's β and γ are chosen together, from its 4 candidates per ρ
    let sel: serde_json::Value =
        serde_json::from_str(&w.ok(&args(&["show", m, "select_e_dpo", "--json"], &[]))).unwrap();
    for r in sel["preview"].as_array().unwrap() {
        assert_eq!(r["candidates"].as_u64(), Some(4), "{sel}");
        assert!([0.01, 0.1].contains(&r["gamma"].as_f64().unwrap()), "{sel}");
        assert!([0.1, 1.0].contains(&r["value"].as_f64().unwrap()), "{sel}");
        // the runner-up, the margin it lost by and that margin's standard error, paired over the validation prompts
        assert!(r["runner_up"].as_f64().is_some(), "{sel}");
        assert!(r["margin"].as_f64().unwrap() >= 0.0 && r["margin_se"].as_f64().unwrap() > 0.0, "{sel}");
    }
    assert!(md.contains("; runner-up β = ") && md.contains("choices beat their runner-up by less than 1.96"), "{md}");
    // the reward-model table has every figure: accuracy against the oracle overall and within the margin, and
    // length sensitivity
    let rm_rows: Vec<&str> =
        md.lines().filter(|l| l.starts_with("| rm | ") || l.starts_with("| rm_member | ")).collect();
    assert_eq!(rm_rows.len(), 2 + 4, "{md}");
    for l in &rm_rows {
        let cells: Vec<&str> = l.split('|').map(str::trim).collect();
        assert!(cells[5..8].iter().all(|c| c.parse::<f64>().is_ok()), "{l}");
    }
    for png in ["advantage_vs_rho.png", "logp_trajectories.png", "member_usage.png"] {
        let bytes = std::fs::read(w.path().join("rep").join(png)).unwrap();
        assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000, "{png}");
    }

    assert_eq!(w.run_json(&args(&[m], &[]))["ran"], 0);

    // A third β for e-DPO trains and validates only the new candidates (2 ρ × 2 γ), then e-DPO's selection and the
    // report; a final policy is never trained again (seed 0's is a candidate), and its evaluation re-runs only
    // where the choice changed.
    let before = chosen(&w, m, "e_dpo", &[]);
    // 3 written as an integer: chosen, it reaches the final policy as a float (3.0), which must key as the candidate
    let grid = "betas_e_dpo=[0.1, 1.0, 3]";
    let changed = w.run_json(&args(&[m], &["--set", grid]));
    let after = chosen(&w, m, "e_dpo", &["--set", grid]);
    let ran = nodes_with(&changed, "ran");
    let new_cands: Vec<&String> = ran.iter().filter(|n| n.starts_with("cand_e_dpo@")).collect();
    assert_eq!(new_cands.len(), 4, "{ran:?}");
    assert!(new_cands.iter().all(|n| n.contains("beta=3")), "{ran:?}");
    assert_eq!(ran.iter().filter(|n| n.starts_with("val_e_dpo@")).count(), 4, "{ran:?}");
    let rest: Vec<&String> =
        ran.iter().filter(|n| !n.starts_with("cand_e_dpo@") && !n.starts_with("val_e_dpo@")).collect();
    let mut want: Vec<String> = after
        .iter()
        .filter(|(rho, c)| before.get(*rho) != Some(c))
        .map(|(rho, _)| format!("eval_e_dpo@rho={rho},seed=0"))
        .collect();
    want.extend(["report".to_string(), "select_e_dpo".to_string()]);
    assert_eq!(rest, want.iter().collect::<Vec<_>>(), "choices {before:?} → {after:?}");

    // Dropping one DPO candidate: every candidate is cached; DPO's selection, the report, and the evaluations of the
    // ρ whose choice changed (the final policy is then the other candidate, cached) re-run.
    let before = chosen(&w, m, "dpo", &["--set", grid]);
    let fewer = w.run_json(&args(&[m], &["--set", grid, "--set", "betas_dpo=[0.1]"]));
    let mut want: Vec<String> = before
        .iter()
        .filter(|(_, (value, _))| *value != 0.1)
        .map(|(rho, _)| format!("eval_dpo@rho={rho},seed=0"))
        .collect();
    want.extend(["report".to_string(), "select_dpo".to_string()]);
    assert_eq!(nodes_with(&fewer, "ran"), want, "{fewer}");

    // A grid written in integers: the chosen β reaches the final policy as a float (3.0) and keys as the candidate
    // (3), so seed 0's final policy is the candidate's cache entry, not trained again.
    let int = w.run_json(&args(&[m], &["--set", grid, "--set", "betas_dpo=[3]"]));
    let ran = nodes_with(&int, "ran");
    assert!(ran.iter().any(|n| n.starts_with("cand_dpo@beta=3")), "{ran:?}");
    assert!(!ran.iter().any(|n| n.starts_with("dpo@")), "{ran:?}");

    // Manifests of further stages over the default pipeline.
    let pipeline = repo().join("pipelines/robust-distill.toml");
    let over_pipeline = |name: &str, stages: &str| w.write(name, &format!("pipeline = {:?}\n{stages}", pipeline));
    // a node of such a manifest that must fail (exit 1): what it printed
    let refused = |manifest: &std::path::Path, node: &str| {
        let o = w.run(&args(&["run", manifest.to_str().unwrap(), node], &[]));
        assert_eq!(o.status.code(), Some(1));
        s(&o.stdout) + &s(&o.stderr)
    };

    // A sharded evaluation (3 shards + merge_eval) equals the unsharded one with the same batches, row for row.
    let sharded = over_pipeline(
        "sharded.toml",
        r#"

[stages.whole]
kind = "evaluate"
inputs = { policy = "e_dpo.model", reference = "sft.model", prompts = "synth.corpus" }
sweep = { rho = "${rhos}", seed = "${seeds}" }
params = { oracle = "synthetic", split = "test", n_prompts = 37, batch_size = 8, seed = "${seed}" }

[stages.part]
kind = "evaluate"
inputs = { policy = "e_dpo.model", reference = "sft.model", prompts = "synth.corpus" }
sweep = { rho = "${rhos}", seed = "${seeds}", shard = [0, 1, 2] }
params = { oracle = "synthetic", split = "test", n_prompts = 37, batch_size = 8, seed = "${seed}", shard = "${shard}", shards = 3 }

[stages.merged]
kind = "merge_eval"
inputs = { parts = "part.samples" }
sweep = { rho = "${rhos}", seed = "${seeds}" }
"#,
    );
    let sm = sharded.to_str().unwrap();
    let run = w.run_json(&args(&[sm, "whole", "merged"], &[]));
    assert_eq!(run["failed"], 0, "{run}");
    for rho in ["0.2", "0.8"] {
        let get = |what: &str| -> serde_json::Value {
            let v: serde_json::Value =
                serde_json::from_str(&w.ok(&args(&["show", sm, what, "--json", "--rows", "100"], &[]))).unwrap();
            v["preview"].clone()
        };
        let (whole, merged) =
            (get(&format!("whole@rho={rho},seed=0.samples")), get(&format!("merged@rho={rho},seed=0.samples")));
        assert_eq!(whole.as_array().unwrap().len(), 37);
        assert_eq!(whole, merged, "sharded samples differ at rho {rho}");
        let (ws, ms) =
            (get(&format!("whole@rho={rho},seed=0.summary")), get(&format!("merged@rho={rho},seed=0.summary")));
        assert_eq!(ws, ms, "sharded summary differs at rho {rho}");
        // each shard evaluated only its own block of batches
        let part0 = get(&format!("part@rho={rho},seed=0,shard=0.samples"));
        assert!(part0.as_array().unwrap().len() < 37);
    }
    // Shards of different evaluations (here each shard sampled with its own seed) are refused, naming what differs,
    // instead of being joined into one table that no single evaluation would have written.
    let mixed = over_pipeline(
        "mixed.toml",
        r#"

[stages.part]
kind = "evaluate"
inputs = { policy = "e_dpo.model", reference = "sft.model", prompts = "synth.corpus" }
sweep = { rho = "${rhos}", seed = "${seeds}", shard = [0, 1] }
params = { oracle = "synthetic", split = "test", n_prompts = 16, batch_size = 8, seed = "${shard}", shard = "${shard}", shards = 2 }

[stages.merged]
kind = "merge_eval"
inputs = { parts = "part.samples" }
sweep = { rho = "${rhos}", seed = "${seeds}" }
"#,
    );
    let err = refused(&mixed, "merged@rho=0.2,seed=0");
    assert!(err.contains("a shard of another evaluation") && err.contains("seed: 1 there, 0 here"), "{err}");

    // Several candidate policies and no selection: the node fails naming them, and publishes nothing.
    let bad = over_pipeline(
        "bad.toml",
        r#"

[stages.unselected]
kind = "evaluate"
inputs = { policy = "cand_dpo.model", reference = "sft.model", prompts = "synth.corpus" }
sweep = { rho = "${rhos}", seed = "${seeds}" }
params = { oracle = "synthetic", seed = "${seed}" }
"#,
    );
    let err = refused(&bad, "unselected@rho=0.2,seed=0");
    assert!(err.contains("2 policies are bound") && err.contains("selection"), "{err}");
}
