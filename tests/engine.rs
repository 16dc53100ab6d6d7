//! The engine as a user meets it: run, re-run, change one value, kill and resume, two runners at once, a corrupted
//! blob, and the inspection commands.

mod common;
use common::*;
use std::time::Instant;

#[test]
fn run_rerun_and_change_one_sweep_value() {
    let w = Work::new();
    w.write("m.toml", &gen_manifest(5000));
    let first = w.run_json(&["m.toml"]);
    assert_eq!(first["ran"], 25, "{first}");
    assert_eq!(first["failed"], 0);

    // Without a terminal, progress is plain timestamped lines on stderr, one per node start and end.
    let o = w.run(&["run", "m.toml", "--set", "seeds=[0, 1, 2]"]);
    let err = s(&o.stderr);
    assert!(err.contains("] run     sub@rho=0.2,seed=2") && err.contains("] done    sub@rho=0.2,seed=2"), "{err}");
    assert!(err.contains("] cached  gen"), "{err}");
    assert!(s(&o.stdout).contains("12 ran, 25 cached, 0 failed, 0 skipped in"), "{}", s(&o.stdout));

    // A second run does nothing and says so (its speed is measured in scripts/bench, not asserted here).
    let out = w.ok(&["run", "m.toml"]);
    assert!(out.contains("nothing to do: all 25 nodes cached"), "{out}");
    assert!(w.ok(&["run", "m.toml", "--set", "seeds=[0, 1, 2]"]).contains("nothing to do: all 37 nodes cached"));

    // One sweep value changes: exactly the nodes at that value run, nothing else.
    let changed = w.run_json(&["m.toml", "--set", "rhos=[0.2, 0.5, 0.7]"]);
    let ran = nodes_with(&changed, "ran");
    let mut expected = vec![];
    for seed in [0, 1] {
        expected.push(format!("sub@rho=0.7,seed={seed}"));
        for m in ["0.2", "0.5", "0.8"] {
            expected.push(format!("member@member={m},rho=0.7,seed={seed}"));
        }
    }
    expected.sort();
    assert_eq!(ran, expected);
    assert_eq!(changed["cached"], 1 + 4 + 12);

    // One parameter changes: its nodes and their descendants run.
    let sized = w.run_json(&["m.toml", "--set", "size=250"]);
    assert_eq!(sized["ran"], 24);
    assert_eq!(nodes_with(&sized, "cached"), vec!["gen".to_string()]);
    assert_store_consistent(&w.store());
}

#[test]
fn an_identical_rerun_output_keeps_descendants_cached() {
    // Reformatting the data file changes its bytes (import re-runs) but not the pairs (its output is identical),
    // so everything below import stays cached: early cutoff.
    let w = Work::new();
    let src = std::fs::read_to_string(shared_data().join("tldr-2k/train.jsonl")).unwrap();
    let lines: Vec<&str> = src.lines().take(400).collect();
    w.write("data.jsonl", &(lines.join("\n") + "\n"));
    w.write(
        "m.toml",
        r#"
[vars]
size = 60

[stages.import]
kind = "import"
params = { path = "data.jsonl" }

[stages.sub]
kind = "subsample"
inputs = { pairs = "import.pairs" }
sweep = { rho = [0.3, 0.5] }
params = { rho = "${rho}", size = "${size}", length = "words" }
"#,
    );
    assert_eq!(w.run_json(&["m.toml"])["ran"], 3);
    let reformatted: Vec<String> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            // Keys in another order, pretty spacing: other bytes, same records.
            format!("{{ \"rejected\": {}, \"chosen\": {}, \"prompt\": {} }}", v["rejected"], v["chosen"], v["prompt"])
        })
        .collect();
    // first a size the subsets had not had, and back: status says they may be cached when the upstream gives the
    // same bytes again (a reviewer's finding: it said "would run" because the size differed from the last run's,
    // while an older result of exactly this combination was stored)
    assert_eq!(w.run_json(&["m.toml", "--set", "size=50"])["ran"], 2);
    w.write("data.jsonl", &(reformatted.join("\n") + "\n"));
    let st = w.ok(&["status", "m.toml"]);
    assert!(st.contains("content of the file or directory named by params.path changed"), "{st}");
    assert!(st.contains("blocked  sub@rho=0.3\n           waits on upstream import (runs again only if"), "{st}");
    let again = w.run_json(&["m.toml"]);
    assert_eq!(nodes_with(&again, "ran"), vec!["import".to_string()]);
    assert_eq!(nodes_with(&again, "cached"), vec!["sub@rho=0.3".to_string(), "sub@rho=0.5".to_string()]);
}

#[test]
fn renaming_an_upstream_stage_reruns_what_reads_its_name_and_says_why() {
    // A stage sees its inputs' node names (the report labels rows by them, precompute orders and names its members
    // by them), so they are keyed: a rename that leaves every byte the same re-runs every node that reads the renamed
    // stage's outputs (subsample, here, whether or not it uses the name: the key cannot tell), never serves outputs
    // that carry the old name. Below them, identical outputs keep everything cached.
    let w = Work::new();
    w.write("m.toml", &gen_manifest(2000));
    assert_eq!(w.run_json(&["m.toml"])["failed"], 0);
    w.write(
        "m.toml",
        &gen_manifest(2000).replace("[stages.gen]", "[stages.made]").replace("\"gen.pairs\"", "\"made.pairs\""),
    );
    let st = w.ok(&["status", "m.toml"]);
    assert!(st.contains("inputs.pairs come from other nodes: gen -> made"), "{st}");
    let again = w.run_json(&["m.toml"]);
    // `made` is `gen`'s key (a node's own name is not in its key), the subsets read its name
    assert_eq!(nodes_with(&again, "cached").iter().filter(|n| !n.starts_with("member")).collect::<Vec<_>>(), ["made"]);
    assert_eq!(nodes_with(&again, "ran").len(), 6, "{again}");
}

#[test]
fn an_oracle_checkpoint_directory_is_keyed_whole() {
    // `label`'s oracle_path names a reward-model checkpoint's directory: its config and tokenizer label as much as
    // its weights, so an edit of config.json re-runs the node (a reviewer's finding: only model.safetensors was
    // keyed, and a changed config.json was served the old labels).
    let w = Work::new();
    let base = r#"
[stages.synth]
kind = "synth"
params = { n_docs = 200, seed = 0 }
[stages.sft]
kind = "sft"
inputs = { data = "synth.corpus", tokenizer = "synth.tokenizer" }
params = { steps = 5, batch_size = 8, seed = 0 }
[stages.pairs]
kind = "sample_pairs"
inputs = { policy = "sft.model", prompts = "synth.corpus" }
params = { split = "train", max_prompts = 60, max_new_tokens = 8, seed = 0 }
[stages.label]
kind = "label"
inputs = { pairs = "pairs.pairs" }
params = { oracle = "synthetic", ties = "coin" }
[stages.rm]
kind = "train_rm"
inputs = { data = "label.labelled", base = "sft.model" }
params = { epochs = 1.0, seed = 1 }
"#;
    w.write("m.toml", base);
    assert_eq!(w.run_json(&["m.toml"])["failed"], 0);
    // the reward model as a checkpoint directory of the user's, from the store's blobs
    let show: serde_json::Value = serde_json::from_str(&w.ok(&["show", "m.toml", "rm.model", "--json"])).unwrap();
    for f in show["listing"].as_array().unwrap() {
        let h = f["hash"].as_str().unwrap();
        let to = w.path().join("oracle").join(f["path"].as_str().unwrap());
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(w.store().join("blobs").join(&h[..2]).join(h), to).unwrap();
    }
    let with = |path: &str| {
        format!(
            "{base}[stages.relabel]\nkind = \"label\"\ninputs = {{ pairs = \"pairs.pairs\" }}\n\
             params = {{ oracle = \"reward_model\", oracle_path = \"{path}\", ties = \"coin\" }}\n"
        )
    };
    // a file in the directory is refused, naming what to give
    w.write("m.toml", &with("oracle/model.safetensors"));
    let o = w.run(&["run", "m.toml"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        s(&o.stdout).contains("name the oracle checkpoint's directory")
            || s(&o.stderr).contains("name the oracle checkpoint's directory"),
        "{}{}",
        s(&o.stdout),
        s(&o.stderr)
    );
    w.write("m.toml", &with("oracle"));
    let first = w.run_json(&["m.toml"]);
    assert_eq!(nodes_with(&first, "ran"), ["relabel"], "{first}");
    let cfg = w.path().join("oracle/config.json");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let eps = "\"layer_norm_epsilon\": 0.00001";
    assert!(text.contains(eps), "{text}");
    std::fs::write(&cfg, text.replace(eps, "\"layer_norm_epsilon\": 0.5")).unwrap();
    let st = w.ok(&["status", "m.toml"]);
    assert!(st.contains("content of the file or directory named by params.oracle_path changed"), "{st}");
    let again = w.run_json(&["m.toml"]);
    assert_eq!(nodes_with(&again, "ran"), ["relabel"], "{again}");
    let labelled = |v: &serde_json::Value| output_hashes(v)["relabel"]["labelled"].clone();
    assert_ne!(labelled(&first), labelled(&again), "another config labels otherwise");
    // a Hugging Face cache snapshot: links into its blobs, read (and keyed) as the files they point at: the same
    // checkpoint labels alike, and an edit of a file a link points at is seen
    std::fs::create_dir_all(w.path().join("snap")).unwrap();
    for f in std::fs::read_dir(w.path().join("oracle")).unwrap().flatten() {
        let blob = w.path().join("blobs").join(f.file_name());
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::copy(f.path(), &blob).unwrap();
        std::os::unix::fs::symlink(&blob, w.path().join("snap").join(f.file_name())).unwrap();
    }
    w.write("m.toml", &with("snap"));
    let linked = w.run_json(&["m.toml"]);
    assert_eq!(labelled(&linked), labelled(&again), "{linked}");
    std::fs::write(w.path().join("blobs/config.json"), text).unwrap();
    let st = w.ok(&["status", "m.toml"]);
    assert!(st.contains("params.oracle_path changed"), "{st}");
}

#[test]
fn kill_9_at_random_points_then_resume_gives_identical_artifacts() {
    let manifest = gen_manifest(120_000);
    let reference = Work::new();
    reference.write("m.toml", &manifest);
    let t = Instant::now();
    let full = reference.run_json(&["m.toml", "--jobs", "2"]);
    let full_time = t.elapsed();
    let expected = output_hashes(&full);

    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    let mut rng = seed;
    let mut fraction = move || {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (rng >> 33) as f64 / (1u64 << 31) as f64
    };
    let (mut kills, mut trials) = (0, 0);
    // At least 4 trials; more (up to 12) while fewer than 4 runs were caught mid-way, because a run on a loaded
    // machine can finish before the moment drawn for it (CI once caught 3 of 8 with a fixed count of trials).
    while trials < 4 || (kills < 4 && trials < 12) {
        trials += 1;
        let w = Work::new();
        w.write("m.toml", &manifest);
        // Kill a run at a random moment, then kill its resumption at another, drawn within the time the
        // resumption has left (the nodes not yet in the store), not the whole run's.
        for _ in 0..2 {
            let left = 1.0 - entries(&w.store()).len() as f64 / 25.0;
            let mut child = w.cmd(&["run", "m.toml", "--jobs", "2", "--quiet"]).spawn().unwrap();
            std::thread::sleep(full_time.mul_f64(left.max(0.1) * (0.05 + 0.7 * fraction())));
            if child.try_wait().unwrap().is_none() {
                child.kill().unwrap(); // SIGKILL
                kills += 1;
            }
            child.wait().unwrap();
            // Whatever the moment, no entry without its blobs, no blob with wrong bytes.
            assert_store_consistent(&w.store());
        }
        let done_before: std::collections::HashSet<String> =
            entries(&w.store()).iter().map(|e| e["key"].as_str().unwrap().to_string()).collect();
        let resumed = w.run_json(&["m.toml", "--jobs", "2"]);
        assert_eq!(
            output_hashes(&resumed),
            expected,
            "artifacts after kills differ from an uninterrupted run (seed {seed})"
        );
        // Finished nodes were not redone.
        for n in resumed["nodes"].as_array().unwrap() {
            if n["outcome"] == "ran" {
                assert!(
                    !done_before.contains(n["key"].as_str().unwrap()),
                    "{} ran again although it had finished",
                    n["node"]
                );
            }
        }
        assert_eq!(resumed["ran"].as_u64().unwrap() as usize + done_before.len(), 25);
        assert_eq!(w.run_json(&["m.toml"])["ran"], 0);
        assert_store_consistent(&w.store());
    }
    eprintln!("killed {kills} of {} runs (seed {seed}, uninterrupted run {full_time:?})", 2 * trials);
    assert!(kills >= 4, "too few runs were killed mid-way to test anything");
}

/// Ctrl-C and a scheduler's SIGTERM stop a run saying so (a red-team finding: the run ended silently, exit 130 or
/// 143 from the shell's default, and its journal said "running" with no node), keep what it stored, and the same
/// command resumes.
#[test]
fn sigint_and_sigterm_stop_the_run_saying_so_and_it_resumes() {
    let manifest = gen_manifest(120_000);
    let reference = Work::new();
    reference.write("m.toml", &manifest);
    let expected = output_hashes(&reference.run_json(&["m.toml", "--jobs", "1"]));
    let w = Work::new();
    w.write("m.toml", &manifest);
    let journals = |w: &Work| -> Vec<serde_json::Value> {
        let dir = w.store().join("runs");
        let mut v: Vec<serde_json::Value> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten().map(|f| serde_json::from_slice(&std::fs::read(f.path()).unwrap()).unwrap()).collect()
            })
            .unwrap_or_default();
        v.retain(|j| j["status"] == "interrupted");
        v
    };
    let mut stopped = 0;
    for (sig, code, name) in [(libc::SIGTERM, 143, "SIGTERM"), (libc::SIGINT, 130, "SIGINT (Ctrl-C)")] {
        let before = entries(&w.store()).len();
        let child = w.cmd(&["run", "m.toml", "--jobs", "1"]).stderr(std::process::Stdio::piped()).spawn().unwrap();
        // once the run has stored a node more (or, at the start, once it runs), with the rest still to do
        let t = Instant::now();
        while entries(&w.store()).len() == before && t.elapsed() < std::time::Duration::from_secs(60) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        // SAFETY: signalling a child this test started.
        unsafe { libc::kill(child.id() as i32, sig) };
        let o = child.wait_with_output().unwrap();
        let err = s(&o.stderr);
        if o.status.code() == Some(0) {
            continue; // it finished first: nothing to stop
        }
        stopped += 1;
        // ended by the signal itself, so that a shell script or loop around it stops too (a shell reports 128 + it)
        use std::os::unix::process::ExitStatusExt;
        assert_eq!((o.status.signal(), o.status.code()), (Some(sig), None), "{err}");
        assert_eq!(128 + sig, code);
        assert!(err.contains(&format!("interrupted by {name}: ")) && err.contains("the same command resumes"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_store_consistent(&w.store());
        assert_eq!(journals(&w).len(), stopped, "the journal says the run was interrupted");
    }
    assert!(stopped > 0, "no run was caught before it finished");
    // Ctrl-C in a terminal reaches the whole process group: a shell running the command goes no further (a
    // reviewer's finding: ended by exit(130), the run let the script around it go on to its next command)
    let sh = Work::new();
    sh.write("m.toml", &manifest);
    let mut cmd = std::process::Command::new("bash");
    cmd.args(["-c", "\"$0\" run m.toml --jobs 1 -q; echo the script went on", env!("CARGO_BIN_EXE_rmdistill")])
        .current_dir(sh.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid in the child before exec, so that the group can be signalled as a terminal would.
    unsafe { cmd.pre_exec(|| if libc::setsid() < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }) };
    let child = cmd.spawn().unwrap();
    let t = Instant::now();
    while entries(&sh.store()).is_empty() && t.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // SAFETY: signalling the process group this test started.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    if entries(&sh.store()).len() < 25 {
        assert!(!s(&o.stdout).contains("the script went on"), "{}{}", s(&o.stdout), s(&o.stderr));
        assert!(s(&o.stderr).contains("interrupted by SIGINT (Ctrl-C)"), "{}", s(&o.stderr));
    }
    // the same command resumes: what was stored is not run again, and the outputs are an uninterrupted run's
    let stored = entries(&w.store()).len();
    let resumed = w.run_json(&["m.toml", "--jobs", "1"]);
    assert_eq!(resumed["ran"].as_u64().unwrap() as usize + stored, 25, "{resumed}");
    assert_eq!(output_hashes(&resumed), expected);
}

#[test]
fn two_runners_at_once_both_succeed_and_write_each_entry_once() {
    let w = Work::new();
    w.write("m.toml", &gen_manifest(60_000));
    let a = w.cmd(&["run", "m.toml", "--json", "--jobs", "2"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let b = w.cmd(&["run", "m.toml", "--json", "--jobs", "2"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let (oa, ob) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(oa.status.success() && ob.status.success(), "{}\n{}", s(&oa.stderr), s(&ob.stderr));
    let (sa, sb): (serde_json::Value, serde_json::Value) =
        (serde_json::from_slice(&oa.stdout).unwrap(), serde_json::from_slice(&ob.stdout).unwrap());
    assert_eq!(output_hashes(&sa), output_hashes(&sb));
    // One entry per distinct key, each naming the outputs both runners report.
    let keys: std::collections::BTreeSet<String> =
        sa["nodes"].as_array().unwrap().iter().map(|n| n["key"].as_str().unwrap().to_string()).collect();
    let es = entries(&w.store());
    assert_eq!(es.len(), keys.len());
    assert_store_consistent(&w.store());
    assert_eq!(w.run_json(&["m.toml"])["ran"], 0);
}

#[test]
fn a_corrupted_blob_is_detected_and_recomputed() {
    let w = Work::new();
    w.write("m.toml", &gen_manifest(3000));
    let first = w.run_json(&["m.toml"]);
    let hashes = output_hashes(&first);
    let gen_hash = hashes["gen"]["pairs"].clone();
    let blob = w.store().join("blobs").join(&gen_hash[..2]).join(&gen_hash);

    // A bit flip in gen's output: the next node that reads it notices, gen runs again, the run succeeds.
    let mut bytes = std::fs::read(&blob).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x10;
    std::fs::write(&blob, &bytes).unwrap();
    let o = w.run(&["run", "m.toml", "--json", "--set", "size=250"]);
    assert!(o.status.success(), "{}", s(&o.stderr));
    assert!(s(&o.stderr).contains(&format!("corrupt blob {gen_hash}")), "{}", s(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(nodes_with(&summary, "ran").contains(&"gen".to_string()), "{summary}");
    assert_eq!(blake3::hash(&std::fs::read(&blob).unwrap()).to_hex().to_string(), gen_hash);

    // A truncated D_rho read by its ensemble subsets.
    let sub_hash = output_hashes(&summary)["sub@rho=0.2,seed=0"]["dataset"].clone();
    let blob = w.store().join("blobs").join(&sub_hash[..2]).join(&sub_hash);
    let len = std::fs::metadata(&blob).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&blob).unwrap().set_len(len / 3).unwrap();
    let o = w.run(&["run", "m.toml", "--json", "--set", "size=250", "--set", "members=[0.2, 0.6]"]);
    assert!(o.status.success(), "{}", s(&o.stderr));
    assert!(s(&o.stderr).contains(&format!("corrupt blob {sub_hash}")), "{}", s(&o.stderr));
    assert_store_consistent(&w.store());
}

#[test]
fn status_explain_dag_show_and_gc() {
    let w = Work::new();
    w.write("m.toml", &gen_manifest(2000));
    // a store that does not exist is read as empty, said, and not created (a red-team finding: a mistyped --store
    // became a new, empty store)
    let o = w.run(&["status", "m.toml", "--store", "./stroe"]);
    assert!(o.status.success() && s(&o.stderr).contains("note: no store at ./stroe yet"), "{}", s(&o.stderr));
    assert!(!w.path().join("stroe").exists());
    let st = w.ok(&["status", "m.toml"]);
    assert!(st.contains("run      gen") && st.contains("no run of this manifest has stored it yet"), "{st}");
    assert!(
        st.contains(
            "blocked  sub@rho=0.2,seed=0\n           waits on upstream gen; no run of this manifest has stored it"
        ),
        "{st}"
    );
    w.ok(&["run", "m.toml", "--quiet"]);
    assert!(w.ok(&["status", "m.toml"]).contains("25 cached, 0 would run"));

    // explain names the field that differs from the last cached entry.
    let ex = w.ok(&["explain", "m.toml", "sub@rho=0.5,seed=1", "--set", "size=250"]);
    assert!(ex.contains("state    would run"), "{ex}");
    assert!(ex.contains("why      params.size changed: 300 -> 250"), "{ex}");
    assert!(ex.contains("\"stage_kind\": \"subsample\""), "{ex}");
    let exj: serde_json::Value = serde_json::from_str(&w.ok(&["explain", "m.toml", "gen", "--json"])).unwrap();
    assert_eq!(exj["cached"], true);
    assert_eq!(exj["record"]["params"]["n"], 2000);

    let st = w.ok(&["status", "m.toml", "--set", "size=250"]);
    assert!(st.contains("params.size changed: 300 -> 250"), "{st}");

    let text = w.ok(&["dag", "m.toml"]);
    assert!(
        text.contains("member@member=0.2,rho=0.2,seed=0 [subsample]\n    <- sub@rho=0.2,seed=0 (dataset→pairs)"),
        "{text}"
    );
    let dot = w.ok(&["dag", "m.toml", "--format", "dot", "--stages"]);
    assert!(dot.contains("\"gen\" -> \"sub\"") && dot.contains("\"sub\" -> \"member\""), "{dot}");
    let j: serde_json::Value = serde_json::from_str(&w.ok(&["dag", "m.toml", "--stages", "--json"])).unwrap();
    assert_eq!(j["vertices"], serde_json::json!(["gen", "sub", "member"]), "{j}");
    assert_eq!(j["edges"][0], serde_json::json!({"from": "gen", "to": "sub", "label": "pairs→pairs"}), "{j}");
    let mermaid = w.ok(&["dag", "m.toml", "--format", "mermaid"]);
    assert!(mermaid.starts_with("flowchart LR") && mermaid.matches("-->").count() == 24, "{mermaid}");

    let shown = w.ok(&["show", "m.toml", "sub@rho=0.2,seed=0", "--rows", "3"]);
    assert!(shown.contains("(300 rows"), "{shown}");
    assert!(shown.contains("longer_preferred"), "{shown}");
    let shown: serde_json::Value =
        serde_json::from_str(&w.ok(&["show", "m.toml", "sub@rho=0.2,seed=0.dataset", "--json", "--rows", "2"]))
            .unwrap();
    assert_eq!(shown["rows"], 300);
    assert_eq!(shown["preview"].as_array().unwrap().len(), 2);

    // gc keeps every referenced blob, removes an orphan only once it is older than the grace period.
    let orphan = blake3::hash(b"orphan").to_hex().to_string();
    w.write(&format!(".rmdistill/store/blobs/{}/{orphan}", &orphan[..2]), "orphan");
    let before = blob_files(&w.store()).len();
    assert!(w.ok(&["gc", "m.toml"]).contains("removed 0 blob(s)"));
    let g = w.ok(&["gc", "m.toml", "--grace", "0s"]);
    assert!(g.contains("removed 1 blob(s) (6 bytes)"), "{g}");
    assert_eq!(blob_files(&w.store()).len(), before - 1);
    assert_eq!(w.run_json(&["m.toml"])["ran"], 0);

    // explain of a node whose upstream is not stored names that upstream once, even when two inputs bind it (the
    // default pipeline's `sft` reads `synth` twice)
    let manifest = repo().join("manifests/synthetic-default.toml");
    let empty = format!("file://{}", w.path().join("empty").display());
    let ex = w.ok(&["explain", manifest.to_str().unwrap(), "sft@seed=0", "--store", &empty]);
    assert!(
        ex.contains(
            "key      its key is not determined yet: upstream synth@seed=0 has no stored result for the manifest as \
             it is now (it would run first)\n"
        ),
        "{ex}"
    );
}

/// A node below an upstream that would run, whose own params changed too, would run whatever that upstream gives:
/// `status` and `explain` say so and why (a red-team finding: both said only "waits on upstream", `explain` called
/// the upstream's stored results absent, and `explain --json` printed text).
#[test]
fn a_node_changed_below_a_changed_upstream_would_run_and_says_why() {
    let w = Work::new();
    w.write("m.toml", &gen_manifest(2000));
    w.ok(&["run", "m.toml", "--quiet"]);
    // gen changes (so sub@… waits on it); the members change their own size as well
    let set = ["--set", "n=2100"];
    let member = "member@member=0.2,rho=0.2,seed=0";
    w.write("m.toml", &gen_manifest(2000).replace("size = 60", "size = 50"));
    let st = w.ok(&[&["status", "m.toml"][..], &set].concat());
    assert!(st.contains("blocked  sub@rho=0.2,seed=0\n           waits on upstream gen (runs again only if"), "{st}");
    assert!(
        st.contains(&format!("run      {member}\n           params.size changed: 60 -> 50\n           runs after upstream sub@rho=0.2,seed=0\n")),
        "{st}"
    );
    assert!(st.contains("0 cached, 19 would run, 6 wait on upstream"), "{st}");
    let ex = w.ok(&[&["explain", "m.toml", member][..], &set].concat());
    assert!(ex.contains("state    would run\n") && ex.contains("why      params.size changed: 60 -> 50"), "{ex}");
    let j: serde_json::Value =
        serde_json::from_str(&w.ok(&[&["explain", "m.toml", member, "--json"][..], &set].concat())).unwrap();
    assert_eq!((j["state"].as_str(), j["key"].is_null()), (Some("run"), true), "{j}");
    assert_eq!(j["reasons"][0], "params.size changed: 60 -> 50", "{j}");
    let j: serde_json::Value =
        serde_json::from_str(&w.ok(&[&["explain", "m.toml", "sub@rho=0.2,seed=0", "--json"][..], &set].concat()))
            .unwrap();
    assert_eq!((j["state"].as_str(), j["waits_on"][0].as_str()), (Some("blocked"), Some("gen")), "{j}");
    // and the run does what status said: every member runs (sub reproduces nothing it had: gen's pairs changed)
    let r = w.run_json(&[&["m.toml"][..], &set].concat());
    assert_eq!((r["ran"].as_u64(), r["cached"].as_u64()), (Some(25), Some(0)), "{r}");
}

#[test]
fn node_run_is_the_unit_a_scheduler_executes() {
    let w = Work::new();
    w.write("m.toml", &gen_manifest(2000));
    let o = w.run(&["node", "run", "m.toml", "sub@rho=0.2,seed=0"]);
    assert_eq!(o.status.code(), Some(4), "{}", s(&o.stderr));
    assert!(s(&o.stderr).contains("upstream node gen is not in the store yet"), "{}", s(&o.stderr));
    let a = serde_json::from_str::<serde_json::Value>(&w.ok(&["node", "run", "m.toml", "gen", "--json"])).unwrap();
    assert_eq!(a["ran"], 1);
    let b =
        serde_json::from_str::<serde_json::Value>(&w.ok(&["node", "run", "m.toml", "sub@rho=0.2,seed=0", "--json"]))
            .unwrap();
    assert_eq!(nodes_with(&b, "ran"), vec!["sub@rho=0.2,seed=0".to_string()]);
    // Retried by a scheduler: a cache hit, nothing runs.
    let c =
        serde_json::from_str::<serde_json::Value>(&w.ok(&["node", "run", "m.toml", "sub@rho=0.2,seed=0", "--json"]))
            .unwrap();
    assert_eq!(c["ran"], 0);
    let list = w.ok(&["node", "list", "m.toml"]);
    assert_eq!(list.lines().count(), 25);
    assert_eq!(list.lines().next(), Some("gen"));
    let o = w.run(&["node", "run", "m.toml", "nope"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn memory_store_runs_within_one_process() {
    let w = Work::new();
    w.write("m.toml", &gen_manifest(1000));
    let s = w.run_json(&["m.toml", "--store", "memory://"]);
    assert_eq!(s["ran"], 25);
    assert!(!w.store().exists());
}

#[test]
fn fail_fast_starts_nothing_after_the_first_failure_and_a_quiet_run_names_it_at_once() {
    let w = Work::new();
    // rho = 0 of 1200 needs more shorter-preferred pairs than 2000 generated pairs hold; it comes first in the plan.
    w.write("m.toml", &gen_manifest(2000).replace("rhos = [0.2, 0.5, 0.8]", "rhos = [0.0, 0.5]"));
    let o = w.run(&["run", "m.toml", "--json", "--set", "size=1200", "--jobs", "1", "--fail-fast"]);
    assert_eq!(o.status.code(), Some(1), "{}", s(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(nodes_with(&summary, "ran"), vec!["gen".to_string()], "{summary}");
    assert_eq!(nodes_with(&summary, "failed"), vec!["sub@rho=0.0,seed=0".to_string()]);
    assert_eq!(summary["skipped"], 15, "{summary}");
    let reason = |n: &str| {
        summary["nodes"].as_array().unwrap().iter().find(|x| x["node"] == n).unwrap()["error"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(reason("member@member=0.2,rho=0.0,seed=0"), "upstream failed: sub@rho=0.0,seed=0");
    for n in ["sub@rho=0.0,seed=1", "sub@rho=0.5,seed=1", "member@member=0.8,rho=0.5,seed=0"] {
        assert_eq!(reason(n), "not started: the run stopped after sub@rho=0.0,seed=0 failed (--fail-fast)", "{n}");
    }
    // --json is quiet, and a quiet run still names the failure on stderr when it happens.
    let err = s(&o.stderr);
    assert!(err.contains("error: sub@rho=0.0,seed=0 failed: param `size`"), "{err}");

    // Without --fail-fast every node that does not depend on a failure runs.
    let again = w.run(&["run", "m.toml", "--json", "--set", "size=1200", "--jobs", "1"]);
    let summary: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(summary["cached"], 1, "{summary}");
    assert_eq!(summary["ran"], 8, "{summary}");
    assert_eq!(summary["failed"], 2, "{summary}");
    assert_eq!(summary["skipped"], 6, "{summary}");
}

#[test]
fn a_failing_node_stops_its_dependents_and_the_run_exits_1() {
    let w = Work::new();
    // rho = 0 of 1200 needs more shorter-preferred pairs than 2000 generated pairs hold.
    w.write("m.toml", &gen_manifest(2000).replace("rhos = [0.2, 0.5, 0.8]", "rhos = [0.5, 0.0]"));
    let o = w.run(&["run", "m.toml", "--json", "--set", "size=1200"]);
    assert_eq!(o.status.code(), Some(1), "{}", s(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        nodes_with(&summary, "failed"),
        vec!["sub@rho=0.0,seed=0".to_string(), "sub@rho=0.0,seed=1".to_string()]
    );
    assert_eq!(summary["skipped"], 6);
    let err = summary["nodes"].as_array().unwrap().iter().find(|n| n["outcome"] == "failed").unwrap()["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.contains("longer-preferred") && err.contains("available"), "{err}");
    // Nothing partial was published for the failed nodes.
    assert_eq!(entries(&w.store()).len(), 1 + 2 + 6);
    // status says the node failed with this key, not that it never ran (a red-team finding); once the key changes,
    // the failure of the old key is no longer its reason
    let st = w.ok(&["status", "m.toml", "--set", "size=1200"]);
    let run_id = summary["run_id"].as_str().unwrap();
    assert!(
        st.contains(&format!("run      sub@rho=0.0,seed=0\n           failed with this key in run {run_id} (")),
        "{st}"
    );
    assert!(st.contains("longer-preferred"), "{st}");
    let st = w.ok(&["status", "m.toml", "--set", "size=1100"]);
    assert!(!st.contains("failed with this key"), "{st}");
}

/// Two independent nodes run one at a time: `a_model` (in a worker process, here a stand-in script that does what
/// the test asks) first, then `b_small`, an in-process import of `small.jsonl`, and `c_sub` below it. Both keys are
/// computed before either runs.
const RACE_MANIFEST: &str = r#"[stages.a_model]
kind = "import_model"
params = { path = "m.gguf" }

[stages.b_small]
kind = "import"
params = { path = "small.jsonl" }

[stages.c_sub]
kind = "subsample"
inputs = { pairs = "b_small.pairs" }
params = { rho = 0.5, size = 1, seed = 0 }

[execution]
jobs = 1
device = "cpu"
"#;

fn pair_line(v: &str) -> String {
    format!("{{\"prompt\":\"{v}\",\"chosen\":\"version {v} chosen, longer\",\"rejected\":\"version {v}\"}}\n")
}

/// A stand-in for `rmdistill-worker run JOB` (one process per node: no fork server) that runs `body` with `$OUT`
/// the job's output directory `model`.
fn stand_in_worker(w: &Work, body: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = w.path().display();
    let p = w.write(
        "worker.sh",
        &format!("#!/bin/sh\n[ \"$1\" = run ] || exit 3\ncd '{dir}' || exit 3\nOUT=$(dirname \"$2\")/model\n{body}\n"),
    );
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

fn run_with_worker(w: &Work, worker: &std::path::Path, args: &[&str]) -> std::process::Output {
    w.cmd(args).env("RMDISTILL_WORKER", worker).env("RMDISTILL_FORK_SERVER", "0").output().unwrap()
}

fn node_error(summary: &serde_json::Value, node: &str) -> String {
    let n = summary["nodes"].as_array().unwrap().iter().find(|n| n["node"] == node).unwrap();
    n["error"].as_str().unwrap_or_default().to_string()
}

fn status_of(w: &Work, node: &str) -> String {
    let st: serde_json::Value = serde_json::from_str(&w.ok(&["status", "m.toml", "--json"])).unwrap();
    st.as_array().unwrap().iter().find(|n| n["node"] == node).unwrap()["state"].as_str().unwrap().to_string()
}

#[test]
fn an_external_file_replaced_while_its_node_is_queued_fails_it_and_stores_nothing() {
    // The finding: the key of b_small holds version A's hash; the file is replaced (renamed over, as a download or
    // an editor does) by version B while b_small waits behind a_model; b_small then read B and stored B's rows under
    // A's key, so that after putting A back `status` said cached and `show` served B. Deterministic: the stand-in
    // worker of a_model replaces the file while b_small is queued.
    let w = Work::new();
    w.write("m.toml", RACE_MANIFEST);
    w.write("m.gguf", "not a model");
    w.write("small_A.jsonl", &pair_line("A"));
    w.write("small_B.jsonl", &pair_line("B"));
    w.write("small.jsonl", &pair_line("A"));
    let worker = stand_in_worker(&w, "cp small_B.jsonl small.tmp && mv small.tmp small.jsonl\nexit 1");
    let o = run_with_worker(&w, &worker, &["run", "m.toml", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", s(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(nodes_with(&summary, "failed"), vec!["a_model".to_string(), "b_small".to_string()], "{summary}");
    assert_eq!(nodes_with(&summary, "skipped"), vec!["c_sub".to_string()], "{summary}");
    let err = node_error(&summary, "b_small");
    assert!(err.starts_with("param `path`: small.jsonl changed while the node was queued ("), "{err}");
    assert!(err.contains("its output would not match its key") && err.ends_with("run again"), "{err}");
    assert!(s(&o.stderr).contains("error: b_small failed: param `path`: small.jsonl changed"), "{}", s(&o.stderr));
    // Nothing of it stored: no entry, no blob.
    assert!(entries(&w.store()).is_empty());
    assert!(blob_files(&w.store()).is_empty());

    // Version A back: not cached, and a run stores A's rows.
    w.write("small.jsonl", &pair_line("A"));
    assert_eq!(status_of(&w, "b_small"), "run");
    let worker = stand_in_worker(&w, "exit 1");
    let o = run_with_worker(&w, &worker, &["run", "m.toml", "b_small", "--json"]);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(nodes_with(&summary, "ran"), vec!["b_small".to_string()], "{summary}");
    let shown = w.ok(&["show", "m.toml", "b_small"]);
    assert!(shown.contains("version A chosen") && !shown.contains("version B"), "{shown}");
    assert_store_consistent(&w.store());
}

#[test]
fn an_external_file_changed_while_its_node_runs_fails_it_in_run_and_in_node_run() {
    // The stand-in worker of a_model (a node in a worker process) appends to its GGUF while it runs, then writes
    // an output and reports success: the check after it ran, before anything is stored, fails it — under `run` and
    // under `node run`, the unit a batch scheduler executes.
    let w = Work::new();
    w.write("m.toml", RACE_MANIFEST);
    w.write("small.jsonl", &pair_line("A"));
    let done = r#"mkdir -p "$OUT" && echo '{}' > "$OUT/config.json" && echo '{"done":{"summary":{}}}'"#;
    let worker = stand_in_worker(&w, &format!("echo more >> m.gguf\n{done}"));
    for cmd in [&["node", "run", "m.toml", "a_model", "--json"][..], &["run", "m.toml", "a_model", "--json"]] {
        w.write("m.gguf", "not a model");
        let o = run_with_worker(&w, &worker, cmd);
        assert_eq!(o.status.code(), Some(1), "{cmd:?}: {}", s(&o.stderr));
        let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let err = node_error(&summary, "a_model");
        assert!(err.starts_with("param `path`: m.gguf changed while the node ran ("), "{cmd:?}: {err}");
        assert!(err.contains("its output would not match its key"), "{err}");
        assert!(entries(&w.store()).is_empty(), "{cmd:?}");
        assert!(blob_files(&w.store()).is_empty(), "{cmd:?}");
        assert_eq!(status_of(&w, "a_model"), "run");
    }
    // Written to and put back while it ran (A → B → A: its bytes are A's again, its stat identity changed): the
    // stage may have read B, so it fails too, and nothing is stored.
    let worker = stand_in_worker(&w, &format!("cp m.gguf m.keep && echo other > m.gguf && cp m.keep m.gguf\n{done}"));
    w.write("m.gguf", "not a model");
    let o = run_with_worker(&w, &worker, &["node", "run", "m.toml", "a_model", "--json"]);
    assert_eq!(o.status.code(), Some(1), "{}", s(&o.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let err = node_error(&summary, "a_model");
    assert!(err.contains("m.gguf changed while the node ran (it was written to or replaced, and holds its key's bytes again now, but the stage may have read it in between)"), "{err}");
    assert!(entries(&w.store()).is_empty());
    // Left alone while it ran: stored.
    let worker = stand_in_worker(&w, done);
    let o = run_with_worker(&w, &worker, &["node", "run", "m.toml", "a_model", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", s(&o.stderr));
    assert_eq!(entries(&w.store()).len(), 1);
    assert_eq!(status_of(&w, "a_model"), "cached");
}

/// The node's scratch directory removed while it runs (a hand `rm -rf .rmdistill`, another run's clean-up) and its
/// output directory made again by the stage, holding only what was written after: before, that partial model was
/// stored and served from the cache for good. Now the node fails and nothing is stored.
#[test]
fn a_scratch_directory_removed_while_its_node_runs_fails_it_and_stores_nothing() {
    let w = Work::new();
    w.write("m.toml", RACE_MANIFEST);
    w.write("m.gguf", "not a model");
    w.write("small.jsonl", &pair_line("A"));
    let done = r#"mkdir -p "$OUT" && echo '{}' > "$OUT/config.json" && echo '{"done":{"summary":{}}}'"#;
    let worker = stand_in_worker(&w, &format!("rm -rf \"$(dirname \"$2\")\"\n{done}"));
    for cmd in [&["node", "run", "m.toml", "a_model", "--json"][..], &["run", "m.toml", "a_model", "--json"]] {
        let o = run_with_worker(&w, &worker, cmd);
        assert_eq!(o.status.code(), Some(1), "{cmd:?}: {}", s(&o.stderr));
        let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let err = node_error(&summary, "a_model");
        assert!(err.contains("scratch directory") && err.contains("was removed or replaced while it ran"), "{err}");
        assert!(entries(&w.store()).is_empty(), "{cmd:?}");
        assert_eq!(status_of(&w, "a_model"), "run");
    }
    let o = run_with_worker(&w, &stand_in_worker(&w, done), &["run", "m.toml", "a_model", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", s(&o.stderr));
    assert_eq!(status_of(&w, "a_model"), "cached");
}

/// A worker's warnings (`{"warn": …}` lines) are shown under `--quiet`, reported in the run's `--json` summary and
/// kept with the node's entry, where `show` repeats them and a cached rerun notes them; a node that fails still shows
/// and reports the warnings it gave.
#[test]
fn a_worker_s_warnings_reach_the_user_and_the_entry() {
    let w = Work::new();
    w.write("m.toml", "[stages.a_model]\nkind = \"import_model\"\nparams = { path = \"m.gguf\" }\n");
    w.write("m.gguf", "not a model");
    let failing = stand_in_worker(&w, "echo '{\"warn\":{\"message\":\"from the failed attempt\"}}'\nexit 1");
    let o = run_with_worker(&w, &failing, &["run", "m.toml", "-q"]);
    assert_eq!(o.status.code(), Some(1), "{}", s(&o.stderr));
    assert!(s(&o.stderr).contains("warning: a_model: from the failed attempt"), "{}", s(&o.stderr));
    assert!(s(&o.stderr).contains("1 warning(s) from a_model, shown above"), "{}", s(&o.stderr));
    let o = run_with_worker(&w, &failing, &["run", "m.toml", "--json"]);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["nodes"][0]["warnings"], serde_json::json!(["from the failed attempt"]), "{summary}");
    let warn = "echo '{\"warn\":{\"message\":\"the reward model is at chance\"}}'";
    let worker = stand_in_worker(&w, &format!("{warn}\necho '{{\"done\":{{\"summary\":{{}}}}}}'\nexit 0"));
    let o = run_with_worker(&w, &worker, &["run", "m.toml", "-q"]);
    let err = s(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("warning: a_model: the reward model is at chance"), "{err}");
    assert!(err.contains("1 warning(s) from a_model, shown above"), "{err}");
    let o = run_with_worker(&w, &worker, &["run", "m.toml", "--force", "a_model", "--json"]);
    let summary: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(summary["nodes"][0]["warnings"], serde_json::json!(["the reward model is at chance"]), "{summary}");
    // a cached rerun says that a node warned when it ran
    let o = run_with_worker(&w, &worker, &["run", "m.toml"]);
    assert!(s(&o.stdout).contains("nothing to do"), "{}", s(&o.stdout));
    assert!(
        s(&o.stderr).contains("note: 1 cached node(s) warned when they ran (1 warning(s)): a_model"),
        "{}",
        s(&o.stderr)
    );
    let o = w.cmd(&["show", "m.toml", "a_model"]).output().unwrap();
    assert!(o.status.success(), "{}", s(&o.stderr));
    assert_eq!(s(&o.stderr).matches("warning: a_model.model: ").count(), 1, "{}", s(&o.stderr));
    assert!(s(&o.stderr).contains("warning: a_model.model: the reward model is at chance"), "{}", s(&o.stderr));
}

#[test]
fn twin_nodes_with_one_key_compute_it_once() {
    // Two stages that compute the same thing have one key: whichever starts first computes it, the other waits for
    // it and is a cache hit, with one thread or two.
    for jobs in ["1", "2"] {
        let w = Work::new();
        w.write(
            "m.toml",
            r#"
[stages.gen_a]
kind = "generate"
params = { n = 3000, seed = 7 }

[stages.gen_b]
kind = "generate"
params = { n = 3000, seed = 7 }

[stages.sub]
kind = "subsample"
inputs = { pairs = "gen_b.pairs" }
params = { rho = 0.5, size = 100, seed = 0 }
"#,
        );
        // status says so beforehand: the second of the two waits on the first
        let st = w.ok(&["status", "m.toml", "--json"]);
        let st: serde_json::Value = serde_json::from_str(&st).unwrap();
        let gen_b = st.as_array().unwrap().iter().find(|n| n["node"] == "gen_b").unwrap();
        assert_eq!(gen_b["state"], "blocked", "{st}");
        assert!(gen_b["reasons"][0].as_str().unwrap().contains("the same key as gen_a, which runs first"), "{st}");
        let out = w.run_json(&["m.toml", "--jobs", jobs]);
        assert_eq!((out["ran"].as_u64(), out["cached"].as_u64()), (Some(2), Some(1)), "-j {jobs}: {out}");
        let gens: Vec<String> = ["ran", "cached"].iter().flat_map(|o| nodes_with(&out, o)).collect();
        assert!(gens.contains(&"gen_a".to_string()) && gens.contains(&"gen_b".to_string()), "{out}");
        assert_eq!(nodes_with(&out, "ran").iter().filter(|n| n.starts_with("gen")).count(), 1, "{out}");
        assert_store_consistent(&w.store());
    }
}
