//! Bad experiment settings on the embedded default are refused before any work starts: exit 2, the pipeline file,
//! line and column of the offending value, the node and the field, what was expected — and nothing in the store.

mod common;
use common::*;

fn refused(set: &str, needles: &[&str]) {
    let w = Work::new();
    let manifest = repo().join("manifests/synthetic-default.toml");
    let o = w.run(&["run", manifest.to_str().unwrap(), "-S", set]);
    let err = s(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{set}: {err}");
    for n in needles {
        assert!(err.contains(n), "{set}: expected `{n}` in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !w.path().join(".rmdistill/store/blobs").exists() || blob_files(&w.store()).is_empty(),
        "{set}: something was stored"
    );
}

/// `status` of the manifest (and overrides) in `args` lists `node` as to run: a failed node left nothing stored.
fn assert_still_to_run(w: &Work, args: &[&str], node: &str) {
    let out = s(&w.run(&[&["status"], args].concat()).stdout);
    let line = out.lines().find(|l| l.trim_end().ends_with(&format!(" {node}"))).unwrap_or_default();
    assert!(line.starts_with("run "), "{node} must still be to run, not stored: {line:?} in\n{out}");
}

#[test]
fn out_of_range_settings_are_refused_before_work_starts() {
    refused(
        "rhos=[0.2, 1.5]",
        &["robust-distill.toml:", "d_rho@rho=1.5,seed=0: param `rho`: must be in [0, 1], got 1.5"],
    );
    refused(
        "betas_e_dpo=[0]",
        &["cand_e_dpo@beta=0,gamma=0.1,rho=0.2,seed=0: ", "param `beta`: must be a finite number > 0, got 0"],
    );
    refused("betas_dpo=[0.1, -1]", &["param `beta`: must be a finite number > 0, got -1"]);
    refused("taus_ipo=[0]", &["param `tau`: must be a finite number > 0, got 0"]);
    refused("members=[]", &["sweep `member` is empty"]);
    refused("size=0", &["param `size`"]);
    refused("gammas=[-1]", &["param `gamma`: must be finite and >= 0, got -1"]);
    refused("val_prompts=0", &["ref_val@seed=0: param `n_prompts`: must be >= 1"]);
    refused("no_such_var=1", &["declares no variable `no_such_var`"]);
}

/// A model too large for the machine is refused by its node before libtorch is asked for the memory (libtorch's
/// failed allocation is a panic inside tch, which read as "a bug in rmdistill"): the node fails naming `arch`,
/// the shape and the memory, nothing of it is stored, and a re-run tries it again rather than serving anything.
#[test]
fn a_model_too_large_for_the_machine_fails_its_node_naming_arch_never_a_panic() {
    let w = Work::new();
    let manifest = repo().join("manifests/synthetic-default.toml");
    let args =
        ["run", manifest.to_str().unwrap(), "sft@seed=0", "-S", "sft_arch={d_model=100000}", "-S", "sft_steps=3"];
    for attempt in 0..2 {
        let o = w.run(&args);
        let err = s(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "attempt {attempt}: {err}");
        for n in ["sft@seed=0 failed: param `arch`", "d_model = 100000", "parameters", "GB", "make `arch` smaller"] {
            assert!(err.contains(n), "attempt {attempt}: expected `{n}` in:\n{err}");
        }
        assert!(!err.contains("panicked") && !err.contains("frame #"), "{err}");
        let m = manifest.to_str().unwrap();
        assert_still_to_run(&w, &[m, "-S", "sft_arch={d_model=100000}", "-S", "sft_steps=3"], "sft@seed=0");
    }
}

/// The SFT log says its losses as numbers (it printed `Some(5.74…)` and `Number(5.26…)`), and says when there were
/// no rows to measure an eval loss on.
#[test]
fn the_sft_log_prints_plain_numbers() {
    let w = Work::new();
    let three_decimals = |x: &str| x.split_once('.').is_some_and(|(a, b)| a.parse::<u32>().is_ok() && b.len() == 3);
    for eval_rows in ["", ", eval_rows = 0"] {
        let m = w.write(
            "m.toml",
            &format!(
                "[stages.synth]\nkind = \"synth\"\nparams = {{ seed = 0, n_docs = 200 }}\n[stages.sft]\nkind = \"sft\"\n\
                 inputs = {{ data = \"synth.corpus\", tokenizer = \"synth.tokenizer\" }}\n\
                 params = {{ steps = 3, seed = 0{eval_rows} }}\n"
            ),
        );
        let o = w.run(&["run", m.to_str().unwrap()]);
        let err = s(&o.stderr);
        assert!(o.status.success(), "{err}");
        let line = err.lines().find_map(|l| l.split_once("sft: ")).unwrap_or_else(|| panic!("no sft log in:\n{err}")).1;
        assert!(!line.contains("Some(") && !line.contains("None") && !line.contains("Number("), "{line}");
        // "127744 parameters, 3 steps: loss 5.730 → 5.363, eval loss 5.741 → 5.267"
        let (head, rest) = line.split_once(" parameters, 3 steps: loss ").unwrap_or_else(|| panic!("{line}"));
        assert!(head.parse::<u64>().is_ok(), "{line}");
        let (losses, eval) = rest.split_once(", ").unwrap_or_else(|| panic!("{line}"));
        assert!(losses.split(" → ").filter(|l| three_decimals(l)).count() == 2, "{line}");
        if eval_rows.is_empty() {
            let eval = eval.strip_prefix("eval loss ").unwrap_or_else(|| panic!("{line}"));
            assert!(eval.split(" → ").filter(|l| three_decimals(l)).count() == 2, "{line}");
        } else {
            assert_eq!(eval, "no eval rows (eval loss not measured)", "{line}");
        }
    }
}

/// A setting whose memory no machine has (10^16 pairs per prompt) ends its node with the allocation failure said as
/// out of memory, naming the size — not "aborted (a failed assertion in native code?)" — and nothing is stored.
/// 4·10^17 bytes exceed the 48-bit address space, so the allocation fails whatever the machine's overcommit setting.
#[test]
fn an_allocation_no_machine_can_give_is_said_as_out_of_memory() {
    let w = Work::new();
    let m = w.write(
        "m.toml",
        r#"
[stages.synth]
kind = "synth"
params = { seed = 0, n_docs = 200 }
[stages.sft]
kind = "sft"
inputs = { data = "synth.corpus", tokenizer = "synth.tokenizer" }
params = { steps = 3, seed = 0 }
[stages.pairs]
kind = "sample_pairs"
inputs = { policy = "sft.model", prompts = "synth.corpus" }
params = { split = "train", pairs_per_prompt = 10000000000000000, seed = 0, max_prompts = 10 }
"#,
    );
    let o = w.run(&["run", m.to_str().unwrap(), "-j", "1"]);
    let err = s(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("pairs failed: pairs: worker pid"), "{err}");
    assert!(err.contains("killed by SIGABRT (6): out of memory (memory allocation of "), "{err}");
    assert!(err.contains(" bytes failed): the node needs more memory than it is given"), "{err}");
    assert!(!err.contains("failed assertion"), "{err}");
    assert_still_to_run(&w, &[m.to_str().unwrap()], "pairs");
}

/// A tiny DPO sweep (2 seeds × 2 β at one ρ) with a `select` and a `report` whose bindings the caller writes.
fn tiny_sweep(sel: &str, rep: &str) -> String {
    format!(
        r#"[stages.synth]
kind = "synth"
sweep = {{ seed = [0, 1] }}
params = {{ seed = "${{seed}}", n_docs = 300 }}
[stages.sft]
kind = "sft"
inputs = {{ data = "synth.corpus", tokenizer = "synth.tokenizer" }}
sweep = {{ seed = [0, 1] }}
params = {{ steps = 5, seed = "${{seed}}", batch_size = 8 }}
[stages.pairs]
kind = "sample_pairs"
inputs = {{ policy = "sft.model", prompts = "synth.corpus" }}
sweep = {{ seed = [0, 1] }}
params = {{ split = "train", pairs_per_prompt = 1, seed = "${{seed}}", max_prompts = 150 }}
[stages.label]
kind = "label"
inputs = {{ pairs = "pairs.pairs" }}
sweep = {{ seed = [0, 1] }}
params = {{ oracle = "synthetic" }}
[stages.d_rho]
kind = "subsample"
inputs = {{ pairs = "label.labelled" }}
sweep = {{ rho = [0.5], seed = [0, 1] }}
params = {{ rho = "${{rho}}", size = 12, seed = "${{seed}}", margin = 0.0 }}
[stages.pol]
kind = "policy"
inputs = {{ pairs = "d_rho.dataset", reference = "sft.model" }}
sweep = {{ rho = [0.5], seed = [0, 1], beta = [0.1, 1.0], method = ["dpo"] }}
params = {{ method = "${{method}}", beta = "${{beta}}", epochs = 1, batch_size = 8, seed = "${{seed}}" }}
[stages.ev]
kind = "evaluate"
inputs = {{ policy = "pol.model", reference = "sft.model", prompts = "synth.corpus" }}
sweep = {{ rho = [0.5], seed = [0, 1], beta = [0.1, 1.0], method = ["dpo"] }}
params = {{ oracle = "synthetic", split = "eval", n_prompts = 8, seed = "${{seed}}" }}
[stages.sel]
kind = "select"
{sel}
[stages.rep]
kind = "report"
{rep}
"#
    )
}

/// One seed's evaluation bound twice would count that seed twice (a mean weighing one run double, an interval over
/// seeds seven times too narrow, found by an input sweep); so would `select` told that DPO's parameter is τ, which
/// merges its β candidates. Both are refused naming the evaluations, and nothing of those nodes is stored.
#[test]
fn an_evaluation_counted_twice_is_refused_by_select_and_report() {
    let w = Work::new();
    let twice = r#"inputs = { evals = ["ev.summary", "ev.summary"] }"#;
    let m = w.write("twice.toml", &tiny_sweep(twice, twice));
    let o = w.run(&["run", m.to_str().unwrap(), "-j", "2"]);
    let err = s(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    for node in ["sel", "rep"] {
        assert!(
            err.contains(&format!(
                "{node} failed: input `evals`: ev@beta=0.1,method=dpo,rho=0.5,seed=0 is bound twice"
            )),
            "{node}: {err}"
        );
        assert_still_to_run(&w, &[m.to_str().unwrap()], node);
    }
    assert!(!err.contains("panicked"), "{err}");

    // the same store: only sel and rep differ, so the sweep's 18 nodes are cached
    let tau = r#"inputs = { evals = "ev.summary", samples = "ev.samples" }
params = { tau_methods = ["dpo"] }"#;
    let m = w.write("tau.toml", &tiny_sweep(tau, r#"inputs = { evals = "ev.summary" }"#));
    let o = w.run(&["run", m.to_str().unwrap(), "sel"]);
    let err = s(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "ev@beta=0.1,method=dpo,rho=0.5,seed=0 and ev@beta=1.0,method=dpo,rho=0.5,seed=0 have the same method, ρ, \
             selected value and γ and seed"
        ) && err.contains("`tau_methods` (now [\"dpo\"])"),
        "{err}"
    );
    // bound once, with DPO's parameter β, both run
    let once = r#"inputs = { evals = "ev.summary", samples = "ev.samples" }"#;
    let m = w.write("once.toml", &tiny_sweep(once, once));
    w.ok(&["run", m.to_str().unwrap()]);
}

/// A report's contrasts are paired on the prompts and π_ref's samples, and a selection compares its candidates: an
/// evaluation drawn another way (another temperature, split, number of prompts…) is refused naming both evaluations
/// and what differs, never compared silently (found by a red-team of silent coercions).
#[test]
fn evaluations_drawn_another_way_are_not_compared() {
    let w = Work::new();
    let hot = r#"inputs = { evals = ["ev.summary", "ev_hot.summary"] }
[stages.pol_ipo]
kind = "policy"
inputs = { pairs = "d_rho.dataset", reference = "sft.model" }
sweep = { rho = [0.5], seed = [0, 1], method = ["ipo"] }
params = { method = "${method}", tau = 0.1, epochs = 1, batch_size = 8, seed = "${seed}" }
[stages.ev_hot]
kind = "evaluate"
inputs = { policy = "pol_ipo.model", reference = "sft.model", prompts = "synth.corpus" }
sweep = { rho = [0.5], seed = [0, 1], method = ["ipo"] }
params = { oracle = "synthetic", split = "eval", n_prompts = 8, temperature = 0.5, seed = "${seed}" }"#;
    let m = w.write("hot.toml", &tiny_sweep(r#"inputs = { evals = "ev.summary" }"#, hot));
    let o = w.run(&["run", m.to_str().unwrap(), "-j", "2"]);
    let err = s(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains(
            "rep failed: input `evals`: ev@beta=0.1,method=dpo,rho=0.5,seed=0 and ev_hot@method=ipo,rho=0.5,seed=0 were \
             evaluated under another protocol (temperature 1.0 in ev@beta=0.1,method=dpo,rho=0.5,seed=0, 0.5 in \
             ev_hot@method=ipo,rho=0.5,seed=0)"
        ),
        "{err}"
    );
    assert_still_to_run(&w, &[m.to_str().unwrap()], "rep");
    assert!(!err.contains("panicked"), "{err}");
}

/// What a documented limit changed in a value the user set, sequences cut by max_len, π_ref's samples drawn at another temperature than the KL
/// term needs, fewer prompts than asked for, and samples cut at `max_new_tokens` are each said as a warning of the
/// node that met them (they were silent: found by a red-team of silent coercions). A checkpoint bound to the
/// synthetic oracle, which would ignore it, is refused before work starts.
#[test]
fn documented_limits_truncation_fewer_prompts_and_cut_samples_are_warned_of() {
    let w = Work::new();
    let m = w.write(
        "m.toml",
        r#"[stages.synth]
kind = "synth"
params = { seed = 0, n_docs = 300, key_words = 6 }
[stages.sft]
kind = "sft"
inputs = { data = "synth.corpus", tokenizer = "synth.tokenizer" }
params = { steps = 6, seed = 0, batch_size = 8, eval_every = 5, eval_rows = 8, warmup_steps = 100 }
[stages.pairs]
kind = "sample_pairs"
inputs = { policy = "sft.model", prompts = "synth.corpus" }
params = { split = "train", max_prompts = 120, max_new_tokens = 16 }
[stages.label]
kind = "label"
inputs = { pairs = "pairs.pairs" }
params = { oracle = "synthetic", ties = "drop" }
[stages.d_rho]
kind = "subsample"
inputs = { pairs = "label.labelled" }
params = { rho = 0.1, size = 20, seed = 0 }
[stages.rm]
kind = "train_rm"
inputs = { data = "d_rho.dataset", base = "sft.model" }
params = { steps = 3, batch_size = 500, max_len = 6 }
[stages.pre]
kind = "precompute"
inputs = { pairs = "d_rho.dataset", reference = "sft.model", reward_models = "rm.model" }
params = { samples_per_prompt = 1, max_new_tokens = 8, temperature = 2.0 }
[stages.pol]
kind = "policy"
inputs = { pairs = "d_rho.dataset", reference = "sft.model", rewards = "pre.rewards", ref_samples = "pre.ref_samples" }
params = { method = "d-dpo", steps = 3, batch_size = 100, warmup_steps = 50 }
[stages.ev]
kind = "evaluate"
inputs = { policy = "pol.model", reference = "sft.model", prompts = "synth.corpus" }
params = { oracle = "synthetic", split = "test", n_prompts = 100000, max_new_tokens = 1 }
"#,
    );
    let o = w.run(&["run", m.to_str().unwrap()]);
    let err = s(&o.stderr);
    assert!(o.status.success(), "{err}");
    for needle in [
        "warning: sft: warmup_steps 100 is more than half the 6 steps: 3 are used (at most half)",
        "warning: rm: batch_size 500 is more than the ",
        "warning: rm: max_len = 6 tokens cut ",
        "warning: pre: π_ref's samples are drawn at temperature 2: the KL term of p-DPO, dp-DPO and e-DPO",
        "warning: pol: batch_size 100 is more than the 20 pairs of D_ρ: each step takes all 20",
        "warning: pol: warmup_steps 50 is more than the 3 steps: the learning rate never reaches lr = 0.0001",
        "warning: ev: n_prompts = 100000, but split \"test\" of synth holds only ",
        "policy samples (",
        "reached max_new_tokens = 1 without EOS: they are scored cut",
    ] {
        assert!(err.contains(needle), "{needle}\n{err}");
    }
    // rm's default warmup_steps (5) adapts to its 3 steps without a word
    assert!(!err.contains("rm: warmup_steps"), "{err}");
    // show repeats the evaluation's warnings, and its summary counts the cut samples
    let o = w.run(&["show", m.to_str().unwrap(), "ev.summary", "--json"]);
    let (out, err) = (s(&o.stdout), s(&o.stderr));
    assert!(err.contains("warning: ev.summary: ") && err.contains("scored cut"), "{err}");
    assert!(out.contains("\"rmdistill.cut_samples\": \""), "{out}");

    // a checkpoint bound to the synthetic oracle: refused at load, naming the input
    let bound = std::fs::read_to_string(&m).unwrap().replace(
        r#"prompts = "synth.corpus" }
params = { oracle = "synthetic""#,
        r#"prompts = "synth.corpus", oracle = "rm.model" }
params = { oracle = "synthetic""#,
    );
    let m2 = w.write("bound.toml", &bound);
    let o = w.run(&["run", m2.to_str().unwrap()]);
    let err = s(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("a checkpoint is bound to the `oracle` input, but the synthetic oracle takes none"), "{err}");
}
