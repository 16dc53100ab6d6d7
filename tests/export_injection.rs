//! Nothing from a manifest or the command line reaches a shell unquoted: every exporter is given hostile values in
//! every field that ends up in what it writes (node names from sweep values, the manifest's path, the store URL,
//! `--set` values, the binary's path, partition, account, extra sbatch options, the log directory, image) — newlines,
//! single and double quotes, `$()`, backticks, semicolons, `$VAR` — and the generated scripts and commands are then
//! *executed* with stand-ins (`sbatch`, `squeue`, and an `rmdistill` that records its arguments): every value must
//! arrive byte for byte, and none of the injected commands may run. Values a scheduler would rewrite itself and that
//! cannot be escaped (Argo's `{{`, AWS Batch's `Ref::`), and control characters in node names and store URLs, are
//! refused with exit code 2.

mod common;
use common::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Each of these, if any injected command ran, leaves a file named PWNED… in the directory the scripts run in.
const SWEEP_VALUES: &[&str] = &[
    "it's",
    "say \"hi\"",
    "$(touch PWNED_subst)",
    "`touch PWNED_tick`",
    "a;touch PWNED_semi",
    "$HOME and $PATH",
    "x' ; touch PWNED_q1 ; '",
    "x\" ; touch PWNED_q2 ; \"",
    "$(VAR) $$(VAR)",
    "back\\slash",
    "RMDISTILL_JOB_SCRIPT",
];

/// A directory name with a newline, quotes, `$()`, backticks and a semicolon.
const DIR: &str = "w'e\"i $(touch PWNED_d1) `touch PWNED_d2`; touch PWNED_d3\ntouch PWNED_d4 &";

/// A `--set` value with quotes, `$()`, backticks, `;`, `&&`, `#` and option-like words (a newline is refused by
/// `--set` itself, which asks for a TOML string instead).
const SET: &str =
    "note=it's \"$(touch PWNED_set1)\" `touch PWNED_set2`; touch PWNED_set3 && touch PWNED_set4 # --help -q";

fn manifest() -> String {
    let values: Vec<String> = SWEEP_VALUES.iter().map(|v| toml_str(v)).collect();
    format!(
        r#"[vars]
note = "plain"

[stages.gen]
kind = "generate"
params = {{ n = 500, seed = 1 }}

[stages.sub]
kind = "subsample"
inputs = {{ pairs = "gen.pairs" }}
sweep = {{ tag = [{}] }}
params = {{ rho = 0.5, size = 20, seed = 0 }}
"#,
        values.join(", ")
    )
}

fn toml_str(v: &str) -> String {
    serde_json::to_string(v).unwrap() // a JSON string is a TOML basic string
}

fn node_names() -> BTreeSet<String> {
    let mut n: BTreeSet<String> = SWEEP_VALUES.iter().map(|v| format!("sub@tag={v}")).collect();
    n.insert("gen".into());
    n
}

fn write_exe(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A stand-in `rmdistill` that appends its arguments (NUL-separated, one file per call) to `rec`.
fn recorder(dir: &Path, rec: &Path) -> PathBuf {
    std::fs::create_dir_all(rec).unwrap();
    let p = dir.join("bin dir $(touch PWNED_bin)").join("rmdistill");
    write_exe(&p, &format!("#!/bin/sh\nprintf '%s\\0' \"$@\" > \"{}/call.$$.$(date +%s%N)\"\n", rec.display()));
    p
}

/// The calls the recorder saw, each as its argument list.
fn calls(rec: &Path) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for f in std::fs::read_dir(rec).unwrap().flatten() {
        let b = std::fs::read(f.path()).unwrap();
        let args: Vec<String> =
            b.split(|&c| c == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8(a.to_vec()).unwrap()).collect();
        out.push(args);
    }
    out
}

/// Files named PWNED* anywhere under `dir`.
fn pwned(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_name().to_string_lossy().starts_with("PWNED") {
                out.push(p.clone());
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

struct Setup {
    w: Work,
    manifest: PathBuf,
    store: String,
    rec: PathBuf,
    bin: PathBuf,
}

fn setup() -> Setup {
    let w = Work::new();
    let dir = w.path().join(DIR);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("m'$(touch PWNED_m).toml");
    std::fs::write(&path, manifest()).unwrap();
    let store_dir = w.path().join("st'o\"re $(touch PWNED_s1) `touch PWNED_s2`; touch PWNED_s3");
    std::fs::create_dir_all(&store_dir).unwrap();
    let store = format!("file://{}", store_dir.display());
    let rec = w.path().join("rec");
    let bin = recorder(w.path(), &rec);
    Setup { w, manifest: path, store, rec, bin }
}

impl Setup {
    /// The calls every node's job makes, with a scheduler's own `node run` options before the `--`.
    fn expected_calls_with(&self, extra: &[&str]) -> BTreeSet<Vec<String>> {
        let m = self.manifest.canonicalize().unwrap().display().to_string();
        let store = format!(
            "file://{}",
            Path::new(self.store.strip_prefix("file://").unwrap()).canonicalize().unwrap().display()
        );
        node_names()
            .into_iter()
            .map(|n| {
                let (store, set) = (format!("--store={store}"), format!("--set={SET}"));
                let mut v: Vec<String> = ["node", "run", &store, &set].iter().map(|s| s.to_string()).collect();
                v.extend(extra.iter().map(|s| s.to_string()));
                v.extend(["--", &m, &n].iter().map(|s| s.to_string()));
                v
            })
            .collect()
    }
    fn check_calls_and_nothing_ran(&self) {
        self.check_calls_with_and_nothing_ran(&[])
    }
    fn check_calls_with_and_nothing_ran(&self, extra: &[&str]) {
        let got: BTreeSet<Vec<String>> = calls(&self.rec).into_iter().collect();
        assert_eq!(got, self.expected_calls_with(extra), "the jobs did not receive the values byte for byte");
        assert_eq!(pwned(self.w.path()), Vec::<PathBuf>::new(), "an injected command ran");
        std::fs::remove_dir_all(&self.rec).unwrap();
        std::fs::create_dir_all(&self.rec).unwrap();
    }
}

#[test]
fn slurm_script_quotes_every_value_and_runs_nothing_injected() {
    let st = setup();
    let w = &st.w;
    let logs = w.path().join("lo'gs $(touch PWNED_l1) `touch PWNED_l2`");
    let m = st.manifest.to_str().unwrap();
    let script = w.ok(&[
        "export",
        "slurm",
        m,
        "--store",
        &st.store,
        "--set",
        SET,
        "--bin",
        st.bin.to_str().unwrap(),
        "--partition",
        "gpu'; touch PWNED_p",
        "--account",
        "$(touch PWNED_a)\n`touch PWNED_a2`",
        "--sbatch-arg=--qos=\"low\"; touch PWNED_x",
        "--logs",
        logs.to_str().unwrap(),
    ]);
    // Comment lines stay comments: no line of the script starts with an injected command.
    for l in script.lines() {
        assert!(!l.trim_start().starts_with("touch"), "a value broke out onto its own line: {l}");
    }
    let (log, path_env) = submit_to_stand_in_sbatch(w, &script);

    // Every sbatch received the options as given.
    let mut ids: Vec<u32> = std::fs::read_dir(&log)
        .unwrap()
        .flatten()
        .filter_map(|f| f.file_name().to_str()?.strip_suffix(".args")?.parse().ok())
        .collect();
    ids.sort();
    assert_eq!(ids.len(), 2, "gen and one array of sub");
    for id in &ids {
        let args = sbatch_args(&log, *id);
        for want in [
            "--partition=gpu'; touch PWNED_p".to_string(),
            "--account=$(touch PWNED_a)\n`touch PWNED_a2`".to_string(),
            "--qos=\"low\"; touch PWNED_x".to_string(),
        ] {
            assert!(args.contains(&want), "{want:?} not among {args:?}");
        }
        let out = args.iter().find(|a| a.starts_with("--output=")).unwrap();
        assert!(out.starts_with(&format!("--output={}/", logs.display())), "{out}");
        // Each job script, as Slurm would run it: every array task.
        let job = log.join(format!("{id}.script"));
        let tasks = args
            .iter()
            .find_map(|a| a.strip_prefix("--array=0-"))
            .map_or(1, |n| n.split('%').next().unwrap().parse::<usize>().unwrap() + 1);
        for t in 0..tasks {
            let o = Command::new("bash")
                .arg(&job)
                .current_dir(w.path())
                .env("SLURM_ARRAY_TASK_ID", t.to_string())
                .output()
                .unwrap();
            assert!(o.status.success(), "job {id} task {t}: {}", s(&o.stderr));
        }
    }
    st.check_calls_and_nothing_ran();

    // The script run through `--submit` too.
    let o = w
        .cmd(&["export", "slurm", m, "--store", &st.store, "--set", SET, "--bin", st.bin.to_str().unwrap(), "--submit"])
        .env("PATH", &path_env)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", s(&o.stderr));
    assert_eq!(pwned(w.path()), Vec::<PathBuf>::new(), "an injected command ran");
}

/// Kubernetes' expansion of a container's command and args: `$$` is `$`, `$(NAME)` a variable (none are set
/// here, so it stays as written), any other `$` itself.
fn k8s_expand(s: &str) -> String {
    let b: Vec<char> = s.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == '$' && i + 1 < b.len() && b[i + 1] == '$' {
            out.push('$');
            i += 2;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_string()).collect()
}

#[test]
fn k8s_and_argo_commands_carry_every_value_unchanged() {
    let st = setup();
    let w = &st.w;
    let m = st.manifest.to_str().unwrap();
    let base = ["--store", &st.store, "--set", SET, "--bin", st.bin.to_str().unwrap(), "--image", "reg/img:1"];

    // k8s: each Job's command, expanded as Kubernetes does and run by sh (dash here), calls the binary with exactly
    // the values given.
    let mut args = vec!["export", "k8s", m, "--run-id", "r1"];
    args.extend(base);
    let doc: Value = serde_json::from_str(&w.ok(&args)).unwrap();
    for item in doc["items"].as_array().unwrap() {
        let cmd: Vec<String> =
            strs(&item["spec"]["template"]["spec"]["containers"][0]["command"]).iter().map(|a| k8s_expand(a)).collect();
        assert_eq!(&cmd[..2], ["sh", "-c"]);
        let o = Command::new(&cmd[0]).args(&cmd[1..]).current_dir(w.path()).output().unwrap();
        assert!(o.status.success(), "{cmd:?}: {}", s(&o.stderr));
    }
    st.check_calls_with_and_nothing_ran(&["--run-id=r1", "--attempts=3"]);

    // Argo: the template's args with each task's node name put in, as Argo then Kubernetes do.
    let mut args = vec!["export", "argo", m];
    args.extend(base);
    let wf: Value = serde_json::from_str(&w.ok(&args)).unwrap();
    let templates = wf["spec"]["templates"].as_array().unwrap();
    let mut ran = 0;
    for task in templates[0]["dag"]["tasks"].as_array().unwrap() {
        let t = templates.iter().find(|t| t["name"] == task["template"]).unwrap();
        let nodes = match task.get("withItems") {
            Some(items) => strs(items),
            None => vec![task["arguments"]["parameters"][0]["value"].as_str().unwrap().to_string()],
        };
        for node in nodes {
            let mut argv = strs(&t["container"]["command"]);
            argv.extend(strs(&t["container"]["args"]));
            let argv: Vec<String> =
                argv.iter().map(|a| k8s_expand(&a.replace("{{inputs.parameters.node}}", &node))).collect();
            let o = Command::new(&argv[0]).args(&argv[1..]).current_dir(w.path()).output().unwrap();
            assert!(o.status.success(), "{argv:?}: {}", s(&o.stderr));
            ran += 1;
        }
    }
    assert_eq!(ran, node_names().len());
    st.check_calls_and_nothing_ran();

    // What Argo would substitute, and what a pod spec cannot carry, is refused.
    let brace = w.write("brace.toml", &manifest().replace("\"it's\"", "\"{{workflow.name}}\""));
    let mut args = vec!["export", "argo", brace.to_str().unwrap()];
    args.extend(base);
    let o = w.run(&args);
    assert_eq!(o.status.code(), Some(2), "{}", s(&o.stderr));
    assert!(s(&o.stderr).contains("node name \"sub@tag={{workflow.name}}\" contains `{{`"), "{}", s(&o.stderr));
    let o = w.run(&["export", "k8s", m, "--store", &st.store, "--image", "img; touch PWNED_i"]);
    assert_eq!(o.status.code(), Some(2), "{}", s(&o.stderr));
    let o = w.run(&["export", "k8s", m, "--store", &st.store, "--image", "img", "--namespace", "a;b"]);
    assert_eq!(o.status.code(), Some(2), "{}", s(&o.stderr));
    assert!(pwned(w.path()).is_empty());
}

#[test]
fn aws_batch_commands_carry_every_value_unchanged() {
    let st = setup();
    let w = &st.w;
    let m = st.manifest.to_str().unwrap();
    let base = ["--store", &st.store, "--set", SET, "--bin", st.bin.to_str().unwrap(), "--image", "reg/img:1"];
    let mut args = vec!["export", "aws-batch", m];
    args.extend(base);
    let doc: Value = serde_json::from_str(&w.ok(&args)).unwrap();
    for job in doc["jobs"].as_array().unwrap() {
        let sj = &job["submitJob"];
        let cmd = strs(&sj["containerOverrides"]["command"]);
        let size = sj["arrayProperties"]["size"].as_u64();
        for i in 0..size.unwrap_or(1) {
            let mut c = Command::new(&cmd[0]);
            c.args(&cmd[1..]).current_dir(w.path());
            if size.is_some() {
                c.env("AWS_BATCH_JOB_ARRAY_INDEX", i.to_string());
            }
            let o = c.output().unwrap();
            assert!(o.status.success(), "{cmd:?} [{i}]: {}", s(&o.stderr));
        }
    }
    st.check_calls_and_nothing_ran();

    let reff = w.write("ref.toml", &manifest().replace("\"it's\"", "\"Ref::node\""));
    let mut args = vec!["export", "aws-batch", reff.to_str().unwrap()];
    args.extend(base);
    let o = w.run(&args);
    assert_eq!(o.status.code(), Some(2), "{}", s(&o.stderr));
    assert!(s(&o.stderr).contains("contains `Ref::`"), "{}", s(&o.stderr));
    let o =
        w.run(&["export", "aws-batch", m, "--store", &st.store, "--image", "img", "--job-queue", "q'; touch PWNED"]);
    assert_eq!(o.status.code(), Some(2), "{}", s(&o.stderr));
    assert!(pwned(w.path()).is_empty());
}

#[test]
fn control_characters_in_node_names_and_store_urls_are_refused() {
    let w = Work::new();
    w.write("m.toml", &manifest().replace("\"it's\"", "\"line\\nbreak\""));
    let o = w.run(&["export", "slurm", "m.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", s(&o.stderr));
    let err = s(&o.stderr);
    assert!(err.contains("m.toml:11:") && err.contains("control character"), "{err}");
    w.write("n.toml", &manifest());
    let o = w.run(&["export", "slurm", "n.toml", "--store", "file:///tmp/x\ntouch PWNED"]);
    assert_eq!(o.status.code(), Some(2), "{}", s(&o.stderr));
    assert!(s(&o.stderr).contains("control character"), "{}", s(&o.stderr));
    w.write("u.toml", &format!("[store]\nurl = \"file:///tmp/x\\n$(touch PWNED)\"\n{}", manifest()));
    let o = w.run(&["export", "slurm", "u.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", s(&o.stderr));
    assert!(s(&o.stderr).contains("u.toml:2:7: [store] url"), "{}", s(&o.stderr));
    // A relative store resolved in a directory whose path has a newline: refused at export, as each job would
    // refuse it (a reviewer's finding on a real Slurm: the export said nothing and every job failed).
    let nl = w.path().join("a\nb");
    std::fs::create_dir_all(&nl).unwrap();
    std::fs::write(nl.join("m.toml"), manifest()).unwrap();
    for store in [vec!["--store", "./st"], vec![]] {
        let mut args = vec!["export", "slurm", "m.toml"];
        args.extend(store.iter().copied());
        std::fs::create_dir_all(nl.join("st")).unwrap();
        let o = w.cmd(&args).current_dir(&nl).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", s(&o.stderr));
        let err = s(&o.stderr);
        assert!(err.contains("control character") && err.contains("as the jobs would be given it"), "{err}");
    }
    // Stage names are plain words.
    w.write("s.toml", "[stages.\"a;b\"]\nkind = \"generate\"\nparams = { n = 10 }\n");
    let o = w.run(&["export", "slurm", "s.toml"]);
    assert_eq!(o.status.code(), Some(2), "{}", s(&o.stderr));
    assert!(s(&o.stderr).contains("s.toml:1:9: stage name `a;b` may use only"), "{}", s(&o.stderr));
    assert!(pwned(w.path()).is_empty());
}

// ---- option-like node names and manifest paths ----

/// The argv a k8s Job's container runs (Kubernetes' `$$` → `$`), an Argo task's for one node, an AWS Batch job's
/// for one array index: what each exporter would start, ready to run here.
fn k8s_argvs(doc: &Value) -> Vec<Vec<String>> {
    doc["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            strs(&j["spec"]["template"]["spec"]["containers"][0]["command"]).iter().map(|a| k8s_expand(a)).collect()
        })
        .collect()
}

fn argo_argvs(wf: &Value) -> Vec<Vec<String>> {
    let templates = wf["spec"]["templates"].as_array().unwrap();
    let mut out = Vec::new();
    for task in templates[0]["dag"]["tasks"].as_array().unwrap() {
        let t = templates.iter().find(|t| t["name"] == task["template"]).unwrap();
        let nodes = match task.get("withItems") {
            Some(items) => strs(items),
            None => vec![task["arguments"]["parameters"][0]["value"].as_str().unwrap().to_string()],
        };
        for node in nodes {
            let mut argv = strs(&t["container"]["command"]);
            argv.extend(strs(&t["container"]["args"]));
            out.push(argv.iter().map(|a| k8s_expand(&a.replace("{{inputs.parameters.node}}", &node))).collect());
        }
    }
    out
}

/// (argv, AWS_BATCH_JOB_ARRAY_INDEX) per array task, barriers left out.
fn aws_argvs(doc: &Value) -> Vec<(Vec<String>, Option<u64>)> {
    let mut out = Vec::new();
    for job in doc["jobs"].as_array().unwrap().iter().filter(|j| j["barrier"] != true) {
        let sj = &job["submitJob"];
        let cmd = strs(&sj["containerOverrides"]["command"]);
        match sj["arrayProperties"]["size"].as_u64() {
            Some(n) => out.extend((0..n).map(|i| (cmd.clone(), Some(i)))),
            None => out.push((cmd, None)),
        }
    }
    out
}

/// A command to run, and the one environment variable it needs (the array index), if any.
type Run = (Vec<String>, Option<(&'static str, String)>);

fn run_argv(argv: &[String], env: Option<(&str, String)>, dir: &Path) -> std::process::Output {
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]).current_dir(dir).env_remove("RMDISTILL_STORE");
    if let Some((k, v)) = env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// A stage named `--help` made every exported job exit 0 without running its node: the commands put the node name
/// where `node run` read it as its `--help` flag (help printed, exit 0, so Slurm's afterok, the k8s loop and AWS Batch
/// all counted the node as done). Now every command ends `node run`'s options with `--`: run with the real binary,
/// each option-like node name is looked up as a node. (Manifests may refuse such stage names themselves; the
/// exporters do not rely on it, so the graph is built here directly.)
#[test]
fn option_like_node_names_are_never_read_as_options() {
    use rmdistill::export::{GNode, Graph, RunSpec, argo, aws, slurm};
    use rmdistill::manifest::Resources;
    let w = Work::new();
    let m = w.write("m.toml", &gen_manifest(500));
    std::fs::create_dir_all(w.store()).unwrap();
    let run = RunSpec {
        bin: env!("CARGO_BIN_EXE_rmdistill").into(),
        manifest: m.display().to_string(),
        store: format!("file://{}", w.store().canonicalize().unwrap().display()),
        sets: vec!["size=20".into()],
        workdir: w.path().to_path_buf(),
    };
    // `--help` alone; an array of `-q`, `-h`, `--version`, `-V`, `--with-deps` after it.
    let names = ["--help", "-q", "-h", "--version", "-V", "--with-deps"];
    let nodes: Vec<GNode> = names
        .iter()
        .enumerate()
        .map(|(i, n)| GNode {
            name: n.to_string(),
            stage: if i == 0 { "--help".into() } else { "-q".into() },
            resources: Resources::default(),
            deps: if i == 0 { vec![] } else { vec![0] },
            after: vec![],
        })
        .collect();
    let g = Graph { total: nodes.len(), cached: 0, nodes, in_flight: vec![] };

    // Each command, run: `node run` takes the name as NODE, finds no such node in the manifest and says so (exit 2);
    // before, it printed its help and exited 0.
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut check = |what: &str, o: std::process::Output| {
        let (out, err) = (s(&o.stdout), s(&o.stderr));
        assert!(!out.contains("Usage:") && !err.contains("Usage:"), "{what}: read as an option:\n{out}{err}");
        assert_eq!(o.status.code(), Some(2), "{what}: {err}");
        let node = names
            .iter()
            .find(|n| err.contains(&format!("no node named `{n}`")))
            .unwrap_or_else(|| panic!("{what}: {err}"));
        seen.insert(format!("{what} {node}"));
    };
    let kopts =
        argo::Opts { image: "img".into(), prefix: "p".into(), poll: 1, run_id: "r".into(), ..Default::default() };
    for argv in k8s_argvs(&argo::jobs(&g, &run, &kopts).unwrap()) {
        assert_eq!(&argv[argv.len() - 3..argv.len() - 1], ["--", run.manifest.as_str()], "{argv:?}");
        check("k8s", run_argv(&argv, None, w.path()));
    }
    for argv in argo_argvs(&argo::workflow(&g, &run, &kopts).unwrap()) {
        assert_eq!(&argv[argv.len() - 3..argv.len() - 1], ["--", run.manifest.as_str()], "{argv:?}");
        check("argo", run_argv(&argv, None, w.path()));
    }
    let aopts = aws::Opts {
        image: "img".into(),
        job_queue: "q".into(),
        job_definition: "d".into(),
        attempts: 1,
        max_array: 10_000,
    };
    for (argv, index) in aws_argvs(&aws::document(&g, &run, &aopts).unwrap()) {
        check("aws", run_argv(&argv, index.map(|i| ("AWS_BATCH_JOB_ARRAY_INDEX", i.to_string())), w.path()));
    }
    for group in [&names[..1], &names[1..]] {
        let script = w.write("job.sh", &slurm::job_script(&run, group).unwrap());
        for t in 0..group.len() {
            let argv = vec!["bash".to_string(), script.display().to_string()];
            check("slurm", run_argv(&argv, Some(("SLURM_ARRAY_TASK_ID", t.to_string())), w.path()));
        }
    }
    let want: BTreeSet<String> =
        ["k8s", "argo", "aws", "slurm"].iter().flat_map(|x| names.iter().map(move |n| format!("{x} {n}"))).collect();
    assert_eq!(seen, want);
}

/// End to end with the real binary: the commands every exporter writes, run in order, run the nodes, with a
/// manifest path that begins with `-` (k8s, Argo and AWS Batch take it as given, `--manifest-path`).
#[test]
fn exported_commands_run_the_nodes_with_an_option_like_manifest_path() {
    let w = Work::new();
    let manifest = "[stages.gen]\nkind = \"generate\"\nparams = { n = 200, seed = 1 }\n\n[stages.sub]\nkind = \"subsample\"\n\
                    inputs = { pairs = \"gen.pairs\" }\nsweep = { rho = [0.3, 0.5] }\nparams = { rho = \"${rho}\", size = 20, seed = 0 }\n";
    w.write("-m/m.toml", manifest);
    w.write("m.toml", manifest);
    let bin = env!("CARGO_BIN_EXE_rmdistill");
    let all_cached = |store: &Path| {
        let url = format!("file://{}", store.display());
        let st: Value = serde_json::from_str(&w.ok(&["status", "m.toml", "--store", &url, "--json"])).unwrap();
        let states: Vec<&str> = st.as_array().unwrap().iter().map(|n| n["state"].as_str().unwrap()).collect();
        assert_eq!(states, ["cached"; 3], "{st}");
    };
    for exporter in ["k8s", "argo", "aws-batch", "slurm"] {
        let store = w.path().join(format!("store-{exporter}"));
        std::fs::create_dir_all(&store).unwrap();
        let url = format!("file://{}", store.display());
        let mut args = vec!["export", exporter, "m.toml", "--store", &url, "--bin", bin];
        if exporter != "slurm" {
            args.extend(["--image", "img", "--manifest-path=-m/m.toml"]);
        }
        let out = w.ok(&args);
        let runs: Vec<Run> = match exporter {
            "k8s" => k8s_argvs(&serde_json::from_str(&out).unwrap()).into_iter().map(|a| (a, None)).collect(),
            "argo" => argo_argvs(&serde_json::from_str(&out).unwrap()).into_iter().map(|a| (a, None)).collect(),
            "aws-batch" => aws_argvs(&serde_json::from_str(&out).unwrap())
                .into_iter()
                .map(|(a, i)| (a, i.map(|i| ("AWS_BATCH_JOB_ARRAY_INDEX", i.to_string()))))
                .collect(),
            _ => {
                // The job scripts the submission script hands to sbatch (a stand-in that keeps them), as Slurm runs
                // them: every array task.
                let (log, _) = submit_to_stand_in_sbatch(&w, &out);
                let mut runs = Vec::new();
                for id in 100..102 {
                    let tasks = sbatch_args(&log, id)
                        .iter()
                        .find_map(|a| a.strip_prefix("--array=0-"))
                        .map_or(1, |n| n.parse::<usize>().unwrap() + 1);
                    let job = log.join(format!("{id}.script")).display().to_string();
                    runs.extend((0..tasks).map(|t| {
                        (vec!["bash".to_string(), job.clone()], Some(("SLURM_ARRAY_TASK_ID", t.to_string())))
                    }));
                }
                runs
            }
        };
        assert_eq!(runs.len(), 3, "{exporter}");
        for (argv, env) in runs {
            let o = run_argv(&argv, env, w.path());
            assert!(o.status.success(), "{exporter}: {argv:?}: {}", s(&o.stderr));
        }
        all_cached(&store);
    }
    // A binary that begins with `-` would be an option to the shell's `exec`: refused.
    for args in
        [&["export", "k8s", "m.toml", "--bin=-x", "--image", "img"][..], &["export", "slurm", "m.toml", "--bin=-x"]]
    {
        let o = w.run(args);
        assert_eq!(o.status.code(), Some(2), "{}", s(&o.stderr));
        assert!(s(&o.stderr).contains("--bin `-x`: a command that begins with `-`"), "{}", s(&o.stderr));
    }
}

/// Runs a Slurm submission script with stand-ins on `PATH`: `sbatch` keeps each call's options (NUL-separated) and
/// job script in the returned directory as `N.args` and `N.script`, numbering the jobs from 100; `squeue` knows no
/// jobs. Also returns that `PATH`.
fn submit_to_stand_in_sbatch(w: &Work, script: &str) -> (std::path::PathBuf, String) {
    let fake = w.path().join("fakebin");
    let log = w.path().join("sbatch-log");
    std::fs::create_dir_all(&log).unwrap();
    write_exe(
        &fake.join("sbatch"),
        &format!(
            "#!/bin/bash\nn=$(( $(ls {log} | wc -l) / 2 + 100 ))\nprintf '%s\\0' \"$@\" > {log}/$n.args\ncat > {log}/$n.script\necho \"$n;cluster\"\n",
            log = log.display()
        ),
    );
    write_exe(&fake.join("squeue"), "#!/bin/sh\nexit 0\n");
    let path = w.write("submit.sh", script);
    let path_env = format!("{}:{}", fake.display(), std::env::var("PATH").unwrap());
    let o = Command::new("bash").arg(&path).current_dir(w.path()).env("PATH", &path_env).output().unwrap();
    assert!(o.status.success(), "submit.sh: {}\n{}", s(&o.stderr), s(&o.stdout));
    (log, path_env)
}

/// The options stand-in `sbatch` call `id` was given.
fn sbatch_args(log: &std::path::Path, id: u32) -> Vec<String> {
    std::fs::read(log.join(format!("{id}.args")))
        .unwrap()
        .split(|&c| c == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8(a.to_vec()).unwrap())
        .collect()
}
