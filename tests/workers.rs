//! Stages on libtorch run in a worker process per node: a worker killed by a real signal fails its node with a message
//! naming the node and the signal, its dependents are skipped, independent nodes still succeed, nothing of it is
//! stored, and a re-run succeeds; killing the runner with SIGKILL leaves no worker behind.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Two long SFT nodes (one to kill with SIGKILL, one with SIGSEGV), each with a dependent, and a pure branch that
/// depends on neither.
fn manifest(w: &Work) -> PathBuf {
    w.write(
        "m.toml",
        r#"description = "two long torch nodes and a pure branch"

[vars]
steps = 100000

[stages.synth]
kind = "synth"
params = { n_docs = 60, seed = 1 }

[stages.sft_a]
kind = "sft"
inputs = { data = "synth.corpus", tokenizer = "synth.tokenizer" }
params = { steps = "${steps}", batch_size = 4, eval_every = 1000000, seed = 1 }

[stages.sft_b]
kind = "sft"
inputs = { data = "synth.corpus", tokenizer = "synth.tokenizer" }
params = { steps = "${steps}", batch_size = 4, eval_every = 1000000, seed = 2 }

[stages.pairs_a]
kind = "sample_pairs"
inputs = { policy = "sft_a.model", prompts = "synth.corpus" }
params = { max_prompts = 4, max_new_tokens = 4 }

[stages.pairs_b]
kind = "sample_pairs"
inputs = { policy = "sft_b.model", prompts = "synth.corpus" }
params = { max_prompts = 4, max_new_tokens = 4 }

[stages.gen]
kind = "generate"
params = { n = 200, seed = 3 }

[stages.sub]
kind = "subsample"
inputs = { pairs = "gen.pairs" }
params = { rho = 0.5, size = 40, seed = 0 }
"#,
    )
}

/// Running worker processes whose job file lies under `dir`: (pid, node). Each job's directory holds the pid of the
/// process running it (`worker.pid`), whether forked from the run's fork server or started on its own.
fn workers_under(dir: &Path) -> Vec<(i32, String)> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
        let pid = std::fs::read_to_string(d.join("worker.pid")).ok().and_then(|p| p.trim().parse::<i32>().ok());
        let job =
            std::fs::read(d.join("job.json")).ok().and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        if let (Some(pid), Some(job)) = (pid, job)
            && alive(pid)
            && std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(16).any(|w| w == b"rmdistill-worker"))
        {
            out.push((pid, job["node"].as_str().unwrap_or_default().to_string()));
        }
    }
    out
}

/// Whether a process exists and is not a zombie.
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Waits until the workers of `nodes` are running (their job files under `dir`); returns their pids.
fn wait_for_workers(dir: &Path, nodes: &[&str], runner: &mut std::process::Child) -> Vec<i32> {
    let t0 = Instant::now();
    loop {
        let found = workers_under(dir);
        let pids: Vec<i32> =
            nodes.iter().filter_map(|n| found.iter().find(|(_, node)| node == n).map(|(p, _)| *p)).collect();
        if pids.len() == nodes.len() {
            return pids;
        }
        if let Some(st) = runner.try_wait().unwrap() {
            panic!("the runner ended ({st}) before workers of {nodes:?} were seen");
        }
        assert!(t0.elapsed() < Duration::from_secs(300), "no workers for {nodes:?} after 300 s: {found:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn workers_killed_by_signals_fail_their_nodes_and_nothing_else() {
    let w = Work::new();
    let m = manifest(&w);
    let m = m.to_str().unwrap();
    let mut runner = w.cmd(&["run", m, "--json", "--jobs", "2"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    let pids = wait_for_workers(w.path(), &["sft_a", "sft_b"], &mut runner);
    // the real signals: an out-of-memory kill and a crash in native code
    unsafe {
        assert_eq!(libc::kill(pids[0], libc::SIGKILL), 0);
        // Rust's runtime catches the first SIGSEGV (to tell a stack overflow from other faults) and restores the
        // default action; a real fault repeats and then kills, a sent one is survived once — so send it until it
        // kills (a worker forked from the fork server always has that handler installed already).
        let t0 = Instant::now();
        while alive(pids[1]) {
            assert_eq!(libc::kill(pids[1], libc::SIGSEGV), 0);
            assert!(t0.elapsed() < Duration::from_secs(10), "worker {} survives SIGSEGV", pids[1]);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let out = runner.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "a node failed: {}", s(&out.stderr));
    let sum: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let node = |n: &str| sum["nodes"].as_array().unwrap().iter().find(|x| x["node"] == n).unwrap().clone();
    let (a, b) = (node("sft_a"), node("sft_b"));
    assert_eq!(a["outcome"], "failed");
    let ea = a["error"].as_str().unwrap();
    assert!(
        ea.starts_with(&format!("sft_a: worker pid {} killed by SIGKILL (9): out of memory? see dmesg", pids[0])),
        "{ea}"
    );
    assert_eq!(b["outcome"], "failed");
    let eb = b["error"].as_str().unwrap();
    assert!(eb.starts_with(&format!("sft_b: worker pid {} killed by SIGSEGV (11)", pids[1])), "{eb}");
    for (n, up) in [("pairs_a", "sft_a"), ("pairs_b", "sft_b")] {
        let x = node(n);
        assert_eq!(x["outcome"], "skipped", "{x}");
        assert_eq!(x["error"], format!("upstream failed: {up}"));
    }
    for n in ["synth", "gen", "sub"] {
        assert_eq!(node(n)["outcome"], "ran", "{n}");
    }
    // nothing of the killed nodes is in the store, and their scratch space is gone
    let stored: Vec<String> = entries(&w.store()).iter().map(|e| e["node"].as_str().unwrap().to_string()).collect();
    assert!(!stored.iter().any(|n| n.starts_with("sft") || n.starts_with("pairs")), "{stored:?}");
    assert_store_consistent(&w.store());
    let tmp = w.path().join(".rmdistill/local/tmp");
    let left: Vec<_> = std::fs::read_dir(&tmp).map(|r| r.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
    // a re-run (at a size that finishes) runs what failed and what was skipped, and reuses the rest
    let again = w.run_json(&[m, "--set", "steps=3"]);
    assert_eq!(nodes_with(&again, "ran"), ["pairs_a", "pairs_b", "sft_a", "sft_b"]);
    assert_eq!(nodes_with(&again, "cached"), ["gen", "sub", "synth"]);
    assert_store_consistent(&w.store());
}

#[test]
fn killing_the_runner_leaves_no_worker_behind() {
    let w = Work::new();
    let m = manifest(&w);
    let mut runner = w.cmd(&["run", m.to_str().unwrap(), "--jobs", "2", "--quiet"]).spawn().unwrap();
    let pids = wait_for_workers(w.path(), &["sft_a", "sft_b"], &mut runner);
    runner.kill().unwrap(); // SIGKILL
    runner.wait().unwrap();
    let t0 = Instant::now();
    while pids.iter().any(|&p| alive(p)) {
        assert!(t0.elapsed() < Duration::from_secs(5), "workers {pids:?} outlived their runner");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(workers_under(w.path()).is_empty());
}

#[test]
fn a_missing_worker_binary_is_a_clear_error() {
    let w = Work::new();
    let m = w.write(
        "m.toml",
        "[stages.synth]\nkind = \"synth\"\nparams = { n_docs = 20 }\n\n[stages.gen]\nkind = \"generate\"\nparams = { n = 50 }\n",
    );
    let o =
        w.cmd(&["run", m.to_str().unwrap(), "--json"]).env("RMDISTILL_WORKER", w.path().join("nope")).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", s(&o.stderr));
    let sum: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(nodes_with(&sum, "ran"), ["gen"], "a pure node needs no worker");
    let synth = &sum["nodes"].as_array().unwrap().iter().find(|x| x["node"] == "synth").unwrap()["error"];
    assert!(
        synth.as_str().unwrap().contains("RMDISTILL_WORKER=") && synth.as_str().unwrap().contains("nope"),
        "{synth}"
    );
}

#[test]
fn workers_forked_from_the_fork_server_compute_what_a_worker_of_its_own_computes() {
    let (forked, spawned) = (Work::new(), Work::new());
    let run = |w: &Work, fork: &str| -> serde_json::Value {
        let m = manifest(w);
        let o = w
            .cmd(&["run", m.to_str().unwrap(), "--set", "steps=3", "--jobs", "2", "--json"])
            .env("RMDISTILL_FORK_SERVER", fork)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", s(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let (a, b) = (run(&forked, "1"), run(&spawned, "0"));
    assert_eq!(a["ran"], 7, "{a}");
    assert_eq!(output_hashes(&a), output_hashes(&b));
}
