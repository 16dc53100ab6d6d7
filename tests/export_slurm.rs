//! `export slurm`: the script's shape (with a stand-in sbatch), and a real one-node Slurm cluster (Debian's slurm-wlm,
//! started by scripts/slurm/start-local.sh) running a manifest to the same store contents as a local run, a failing
//! node stopping its dependents, and a re-submission finishing only what is left.

mod common;
use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn resources_manifest() -> String {
    gen_manifest(5000).replace(
        "[stages.sub]\n",
        "[stages.sub]\nresources = { cpus = 2, memory = \"2G\", gpus = 1, time = \"1h30m\" }\n",
    )
}

/// A stand-in `sbatch` that records each submission and answers with increasing job ids.
fn fake_sbatch(dir: &Path) -> PathBuf {
    let bin = dir.join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = dir.join("sbatch-log");
    std::fs::create_dir_all(&log).unwrap();
    let script = format!(
        r#"#!/bin/bash
n=$(( $(ls {log} | wc -l) / 2 + 100 ))
printf '%s\n' "$@" > {log}/$n.args
cat > {log}/$n.script
echo "$n;cluster"
"#,
        log = log.display()
    );
    // squeue answers with the rows in DIR/squeue-rows (`%F|%K|%T|%r|%E|%j|%k`), cut to the fields asked for when the
    // script asks for `%F|%r|%k|%E`; scontrol prints a recorded job script.
    let squeue = format!(
        r#"#!/bin/bash
fmt=""; while [[ $# -gt 0 ]]; do [[ $1 == -o ]] && fmt=$2; shift; done
touch {dir}/squeue-rows
if [[ $fmt == '%F|%r|%k|%E' ]]; then awk -F'|' -v OFS='|' '{{ print $1, $4, $7, $5 }}' {dir}/squeue-rows; else cat {dir}/squeue-rows; fi
"#,
        dir = dir.display()
    );
    let scontrol = format!(
        "#!/bin/bash\n[[ $1 == write && $2 == batch_script ]] || exit 1\ncat {}/${{3%%_*}}.script\n",
        log.display()
    );
    use std::os::unix::fs::PermissionsExt;
    for (name, text) in [("sbatch", script), ("squeue", squeue), ("scontrol", scontrol)] {
        let p = bin.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

/// squeue rows for every job the stand-in sbatch recorded, all pending (one row per array task) on the dependencies
/// it was submitted with; `skip` drops (job, task) rows, `never` marks them DependencyNeverSatisfied.
fn queued_rows(dir: &Path, skip: &[(u32, Option<u32>)], never: &[(u32, Option<u32>)]) -> String {
    let mut out = String::new();
    let log = dir.join("sbatch-log");
    let mut ids: Vec<u32> = std::fs::read_dir(&log)
        .unwrap()
        .flatten()
        .filter_map(|f| f.file_name().to_str()?.strip_suffix(".args")?.parse().ok())
        .collect();
    ids.sort();
    for id in ids {
        let args = std::fs::read_to_string(log.join(format!("{id}.args"))).unwrap();
        let get = |k: &str| args.lines().find_map(|l| l.strip_prefix(k)).map(str::to_string);
        let (name, comment) = (get("--job-name=").unwrap(), get("--comment=").unwrap());
        let deps = get("--dependency=").map(|d| d + "(unfulfilled)").unwrap_or_default();
        let tasks: Vec<Option<u32>> = match get("--array=0-") {
            Some(n) => (0..=n.split('%').next().unwrap().parse::<u32>().unwrap()).map(Some).collect(),
            None => vec![None],
        };
        for t in tasks {
            if skip.contains(&(id, t)) {
                continue;
            }
            let reason = if never.contains(&(id, t)) { "DependencyNeverSatisfied" } else { "Dependency" };
            let k = t.map_or("N/A".to_string(), |t| t.to_string());
            out += &format!("{id}|{k}|PENDING|{reason}|{deps}|{name}|{comment}\n");
        }
    }
    out
}

#[test]
fn slurm_script_maps_the_dag_to_sbatch_arrays_and_dependencies() {
    let w = Work::new();
    w.write("m.toml", &resources_manifest());
    let script = w.ok(&["export", "slurm", "m.toml", "--array-limit", "3", "--partition", "gpu", "--account", "lab"]);
    // bash accepts it.
    let path = w.write("submit.sh", &script);
    let o = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(o.status.success(), "bash -n: {}", s(&o.stderr));

    let submits: Vec<&str> = script.lines().filter(|l| l.starts_with("submit ")).collect();
    // gen; sub as one array of 6; member as 6 arrays of 3, each after its own sub task.
    assert_eq!(submits.len(), 8, "{script}");
    assert!(
        submits[0].starts_with("submit gen ")
            && !submits[0].contains("--array")
            && !submits[0].contains("--dependency"),
        "{}",
        submits[0]
    );
    assert!(submits[0].contains("--cpus-per-task=1 --mem=4096M --time=0-01:00:00"), "{}", submits[0]);
    let sub = submits[1];
    for want in [
        "submit sub ",
        "--cpus-per-task=2",
        "--mem=2048M",
        "--gres=gpu:1",
        "--time=0-01:30:00",
        "--array=0-5%3",
        "--dependency=\"afterok:$J0\"",
    ] {
        assert!(sub.contains(want), "{want} not in {sub}");
    }
    for (k, line) in submits[2..].iter().enumerate() {
        assert!(line.starts_with(&format!("submit member-{k} ")), "{line}");
        assert!(
            line.contains("--array=0-2%3") && line.contains(&format!("--dependency=\"afterok:${{J1}}_{k}\"")),
            "{line}"
        );
    }
    assert!(script.contains("COMMON=(--chdir=") && script.contains("--partition=gpu --account=lab)"), "{script}");
    // Array tasks pick their node by index from the generated list; names are quoted for bash.
    let bin = Path::new(env!("CARGO_BIN_EXE_rmdistill")).canonicalize().unwrap();
    let manifest = w.path().join("m.toml").canonicalize().unwrap();
    assert!(script.contains("  sub@rho=0.2,seed=0\n  sub@rho=0.2,seed=1\n"), "{script}");
    // `node run`'s options come first and `--` ends them: the manifest and the node are never read as options.
    let store = w.store().canonicalize().unwrap();
    assert!(
        script.contains(&format!(
            "exec {} node run --store=file://{} -- {} \"${{nodes[$SLURM_ARRAY_TASK_ID]}}\"\n",
            bin.display(),
            store.display(),
            manifest.display()
        )),
        "{script}"
    );
    assert!(
        script.contains(&format!(
            "exec {} node run --store=file://{} -- {} gen\n",
            bin.display(),
            store.display(),
            manifest.display()
        )),
        "{script}"
    );

    // A stage whose node i reads node i of an array waits element-wise: aftercorr.
    let pick = "\n[stages.pick]\nkind = \"subsample\"\ninputs = { pairs = \"sub.dataset\" }\nsweep = { rho = \"${rhos}\", seed = \"${seeds}\" }\nparams = { rho = 0.5, size = 40, seed = \"${seed}\" }\n";
    w.write("p.toml", &(resources_manifest() + pick));
    let script = w.ok(&["export", "slurm", "p.toml"]);
    let line = script.lines().find(|l| l.starts_with("submit pick ")).expect("pick job");
    assert!(line.contains("--array=0-5 ") && line.contains("--dependency=\"aftercorr:$J1\""), "{line}");

    // --max-array splits; cached nodes are not submitted and dependencies on them are dropped.
    w.ok(&["run", "m.toml", "gen", "-q"]);
    let script = w.ok(&["export", "slurm", "m.toml", "--max-array", "4"]);
    let submits: Vec<&str> = script.lines().filter(|l| l.starts_with("submit ")).collect();
    assert!(!script.contains(&format!("-- {} gen\n", manifest.display())), "gen is cached:\n{script}");
    assert!(submits[0].contains("--array=0-3 ") && !submits[0].contains("--dependency"), "{}", submits[0]);
    assert!(submits[1].contains("--array=0-1 ") && !submits[1].contains("--dependency"), "{}", submits[1]);
    assert!(script.contains("# 25 node(s): 1 cached"), "{script}");
    w.ok(&["run", "m.toml", "-q"]);
    let script = w.ok(&["export", "slurm", "m.toml"]);
    assert!(
        !script.contains("\nsubmit ") && script.contains("nothing to submit: all 25 node(s) are cached"),
        "{script}"
    );
}

#[test]
fn slurm_submit_runs_the_script_and_reports_job_ids() {
    let w = Work::new();
    w.write("m.toml", &gen_manifest(5000));
    let fake = fake_sbatch(w.path());
    let path = format!("{}:{}", fake.display(), std::env::var("PATH").unwrap());
    let o = w.cmd(&["export", "slurm", "m.toml", "--submit", "--json"]).env("PATH", &path).output().unwrap();
    assert!(o.status.success(), "{}", s(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["submitted"], 25);
    let jobs = v["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 8);
    assert_eq!(jobs[0]["id"], "100");
    assert_eq!(jobs[1]["nodes"].as_array().unwrap().len(), 6);
    // The ids sbatch answered are what dependents wait on.
    let args = std::fs::read_to_string(w.path().join("sbatch-log/102.args")).unwrap();
    assert!(args.lines().any(|l| l == "--dependency=afterok:101_0"), "{args}");
    let job = std::fs::read_to_string(w.path().join("sbatch-log/102.script")).unwrap();
    assert!(job.starts_with("#!/bin/bash\n") && job.contains("nodes=(\n  member@member=0.2,rho=0.2,seed=0\n"), "{job}");

    // Submitted again while all of it is queued: nothing new, every job reused.
    let sbatch_calls = || std::fs::read_dir(w.path().join("sbatch-log")).unwrap().count() / 2;
    w.write("squeue-rows", &queued_rows(w.path(), &[], &[]));
    let o = w.cmd(&["export", "slurm", "m.toml", "--submit", "--json"]).env("PATH", &path).output().unwrap();
    assert!(o.status.success(), "{}", s(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        (v["submitted"].as_u64(), v["in_flight"].as_u64(), v["reused"].as_array().unwrap().len()),
        (Some(0), Some(25), 8),
        "{v}"
    );
    assert_eq!(sbatch_calls(), 8);
    // So does the script, run again: each job finds its own identity queued.
    let script = w.path().join("submit.sh");
    w.ok(&["export", "slurm", "m.toml", "-o", script.to_str().unwrap()]);
    let o = Command::new("bash").arg(&script).env("PATH", &path).output().unwrap();
    assert!(o.status.success(), "{}", s(&o.stderr));
    assert_eq!(s(&o.stdout).lines().filter(|l| l.starts_with("reuse ")).count(), 8, "{}", s(&o.stdout));
    assert_eq!(sbatch_calls(), 8);
    // A sub task that can never run (its node and the three members below it are submitted again, waiting on gen's
    // live job), and one that is gone (not cached, not queued: the same).
    w.write("squeue-rows", &queued_rows(w.path(), &[(101, Some(4))], &[(101, Some(1))]));
    let o = w.cmd(&["export", "slurm", "m.toml", "--submit", "--json"]).env("PATH", &path).output().unwrap();
    assert!(o.status.success(), "{}", s(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["submitted"].as_u64(), v["in_flight"].as_u64()), (Some(8), Some(17)), "{v}");
    let again: BTreeSet<String> = task_ids(&v).into_keys().collect();
    let sub_nodes: Vec<String> =
        jobs[1]["nodes"].as_array().unwrap().iter().map(|n| n.as_str().unwrap().to_string()).collect();
    for k in [1, 4] {
        assert!(again.contains(&sub_nodes[k]), "{} not submitted again: {again:?}", sub_nodes[k]);
    }
    let first_new = std::fs::read_to_string(w.path().join("sbatch-log/108.args")).unwrap();
    assert!(first_new.lines().any(|l| l == "--dependency=afterok:100"), "{first_new}");

    // Slurm marks only a failed job's direct dependents DependencyNeverSatisfied; the jobs below them stay pending
    // on plain `Dependency` for good. With gen gone (failed), sub's job never to run and sub's nodes since run
    // here, the members' live jobs wait on sub's and will never run: they are submitted again, not reused (a
    // reviewer's finding on a real Slurm: reused, they hung the submission).
    w.ok(&["run", "m.toml", "gen", "sub"]);
    let sub_tasks: Vec<(u32, Option<u32>)> = (0..6).map(|t| (101, Some(t))).collect();
    let mut gone = vec![(100, None)];
    gone.extend((108..=115).flat_map(|j| [(j, None), (j, Some(0)), (j, Some(1)), (j, Some(2))]));
    w.write("squeue-rows", &queued_rows(w.path(), &gone, &sub_tasks));
    let o = w.cmd(&["export", "slurm", "m.toml", "--submit", "--json"]).env("PATH", &path).output().unwrap();
    assert!(o.status.success(), "{}", s(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((v["submitted"].as_u64(), v["in_flight"].as_u64()), (Some(18), Some(0)), "{v}");
    // the script decides alike
    let script = w.path().join("submit2.sh");
    w.ok(&["export", "slurm", "m.toml", "-o", script.to_str().unwrap()]);
    let o = Command::new("bash").arg(&script).env("PATH", &path).output().unwrap();
    assert!(o.status.success(), "{}", s(&o.stderr));
    assert!(!s(&o.stdout).lines().any(|l| l.starts_with("reuse ")), "{}", s(&o.stdout));

    // No sbatch: a clear error.
    let nobin = w.path().join("nobin");
    std::fs::create_dir_all(&nobin).unwrap();
    std::os::unix::fs::symlink("/bin/bash", nobin.join("bash")).unwrap();
    let o = w.cmd(&["export", "slurm", "m.toml", "--submit"]).env("PATH", &nobin).output().unwrap();
    assert!(!o.status.success());
    assert!(s(&o.stderr).contains("sbatch is not on PATH"), "{}", s(&o.stderr));
}

#[test]
fn slurm_export_rejects_what_it_cannot_honour() {
    let w = Work::new();
    w.write(
        "m.toml",
        &gen_manifest(5000).replace("[stages.sub]\n", "[stages.sub]\nresources = { memory = \"lots\" }\n"),
    );
    let o = w.run(&["export", "slurm", "m.toml"]);
    assert_eq!(o.status.code(), Some(2));
    // Reported where it is written, when the manifest loads.
    assert!(s(&o.stderr).contains("m.toml:15:24: resources.memory: \"lots\": expected a size"), "{}", s(&o.stderr));
    // --json without --submit: the output is a script, so the flag is refused rather than ignored
    let o = w.run(&["export", "slurm", "m.toml", "--json"]);
    assert!(o.status.code() == Some(2) && s(&o.stderr).contains("--json: without --submit"), "{}", s(&o.stderr));
    w.write("n.toml", &gen_manifest(5000));
    let o = w.run(&["export", "slurm", "n.toml", "--store", "memory://"]);
    assert!(!o.status.success() && s(&o.stderr).contains("cannot share it"), "{}", s(&o.stderr));
    let o = w.run(&["export", "slurm", "n.toml", "--max-array", "0"]);
    assert!(!o.status.success() && s(&o.stderr).contains("--max-array 0"), "{}", s(&o.stderr));
}

// ---- a real Slurm ----

struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(repo().join("scripts/slurm/stop-local.sh")).arg(self.dir.path()).status();
    }
}

impl Cluster {
    fn log_tail(&self) -> String {
        let mut out = String::new();
        for f in ["slurmctld.log", "slurmd.log"] {
            let t = std::fs::read_to_string(self.dir.path().join("log").join(f)).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            out += &format!("--- {f}\n{}\n", lines[lines.len().saturating_sub(15)..].join("\n"));
        }
        out
    }
    fn cmd(&self, prog: &str) -> Command {
        let mut c = Command::new(prog);
        c.env("SLURM_CONF", &self.conf);
        c
    }
}

fn have(prog: &str) -> bool {
    Command::new("bash")
        .arg("-c")
        .arg(format!("command -v {prog} || test -x /usr/sbin/{prog}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Starts the one-node cluster, or says why not and returns None (only where CI is unset).
fn start_cluster() -> Option<Cluster> {
    let ci = std::env::var_os("CI").is_some();
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| s(&o.stdout).trim() == "0");
    let installed = ["sbatch", "slurmctld", "slurmd", "munged"].iter().all(|p| have(p));
    let why = if !root {
        Some("not root (start-local.sh installs slurm-wlm and runs slurmd)")
    } else if !installed && !have("apt-get") {
        Some("slurm-wlm is not installed and apt-get is unavailable")
    } else {
        None
    };
    if let Some(why) = why {
        if !ci {
            eprintln!("SKIPPED: real Slurm test: {why}");
            return None;
        }
        panic!("CI is set, so the real Slurm test must run, but: {why}");
    }
    let dir = tempfile::Builder::new().prefix("rmdistill-slurm-").tempdir().unwrap();
    let o = Command::new("bash").arg(repo().join("scripts/slurm/start-local.sh")).arg(dir.path()).output().unwrap();
    let conf = dir.path().join("slurm.conf");
    let cl = Cluster { dir, conf };
    assert!(o.status.success(), "start-local.sh failed ({:?}):\n{}\n{}", o.status.code(), s(&o.stderr), cl.log_tail());
    Some(cl)
}

const MANIFEST: &str = r#"description = "generated pairs, D_rho at two sizes, and ensemble subsets: one size cannot be met"

[vars]
n = 3000
rhos = [0.2, 0.5]
sizes = [300, 100000]
members = [0.2, 0.8]

[stages.gen]
kind = "generate"
params = { n = "${n}", seed = 7 }
resources = { memory = "512M", time = "10m" }

[stages.sub]
kind = "subsample"
inputs = { pairs = "gen.pairs" }
sweep = { rho = "${rhos}", size = "${sizes}" }
params = { rho = "${rho}", size = "${size}", seed = 0 }
resources = { memory = "512M", time = "10m" }

[stages.member]
kind = "subsample"
inputs = { pairs = "sub.dataset" }
sweep = { rho = "${rhos}", size = "${sizes}", member = "${members}" }
params = { rho = "${member}", size = 60, seed = 1 }
resources = { memory = "512M", time = "10m" }

[stages.pick]
kind = "subsample"
inputs = { pairs = "sub.dataset" }
sweep = { rho = "${rhos}", size = "${sizes}" }
params = { rho = 0.5, size = 40, seed = 2 }
resources = { memory = "512M", time = "10m" }
"#;

/// (job or task id, state, reason) of the given jobs, finished ones included.
fn squeue(cl: &Cluster, ids: &[String]) -> Vec<(String, String, String)> {
    let o = cl.cmd("squeue").args(["-h", "-t", "all", "-o", "%i|%T|%r", "-j", &ids.join(",")]).output().unwrap();
    assert!(o.status.success(), "squeue: {}", s(&o.stderr));
    s(&o.stdout)
        .lines()
        .filter_map(|l| {
            let p: Vec<&str> = l.trim().split('|').collect();
            (p.len() == 3).then(|| (p[0].to_string(), p[1].to_string(), p[2].to_string()))
        })
        .collect()
}

/// Waits until nothing of these jobs is running or can still start; returns the final table.
fn wait_settled(cl: &Cluster, ids: &[String], limit: Duration) -> Vec<(String, String, String)> {
    let t = Instant::now();
    loop {
        let q = squeue(cl, ids);
        let busy = q.iter().any(|(_, st, why)| {
            !(matches!(st.as_str(), "COMPLETED" | "FAILED" | "CANCELLED" | "TIMEOUT" | "OUT_OF_MEMORY" | "NODE_FAIL")
                || (st == "PENDING" && why == "DependencyNeverSatisfied"))
        });
        if !busy && !q.is_empty() {
            return q;
        }
        assert!(t.elapsed() < limit, "jobs not settled after {limit:?}: {q:?}\n{}", cl.log_tail());
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The ids a squeue line stands for: `12`, `12_3`, or pending tasks folded as `12_[1,3-5%4]`.
fn expand(id: &str) -> Vec<String> {
    let Some((job, rest)) = id.split_once("_[") else { return vec![id.to_string()] };
    let list = rest.trim_end_matches(']').split('%').next().unwrap();
    let mut out = Vec::new();
    for part in list.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        for k in a.parse::<u32>().unwrap()..=b.parse::<u32>().unwrap() {
            out.push(format!("{job}_{k}"));
        }
    }
    out
}

fn entry_of<'a>(q: &'a [(String, String, String)], id: &str) -> &'a (String, String, String) {
    q.iter().find(|(i, _, _)| expand(i).iter().any(|x| x == id)).unwrap_or_else(|| panic!("no job {id} in {q:?}"))
}

fn state_of<'a>(q: &'a [(String, String, String)], id: &str) -> &'a str {
    &entry_of(q, id).1
}

fn submit(w: &Work, cl: &Cluster, store: &str, sets: &[&str]) -> Value {
    let mut args = vec!["export", "slurm", "m.toml", "--store", store, "--submit", "--json", "--array-limit", "4"];
    for x in sets {
        args.extend(["--set", x]);
    }
    let o = w.cmd(&args).env("SLURM_CONF", &cl.conf).output().unwrap();
    assert!(o.status.success(), "export --submit failed: {}\n{}", s(&o.stderr), cl.log_tail());
    serde_json::from_slice(&o.stdout).unwrap()
}

/// node → (job or task id as squeue shows it).
fn task_ids(sub: &Value) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for j in sub["jobs"].as_array().unwrap() {
        let id = j["id"].as_str().unwrap();
        for (k, n) in j["nodes"].as_array().unwrap().iter().enumerate() {
            let tid = if j["array"] == true { format!("{id}_{k}") } else { id.to_string() };
            m.insert(n.as_str().unwrap().to_string(), tid);
        }
    }
    m
}

/// key → {output → hash} of every cache entry in a file:// store.
fn entry_map(store: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    entries(store)
        .into_iter()
        .map(|e| {
            let outs = e["outputs"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v["hash"].as_str().unwrap().to_string()))
                .collect();
            (e["key"].as_str().unwrap().to_string(), outs)
        })
        .collect()
}

#[test]
fn real_slurm_runs_the_manifest_like_a_local_run() {
    let t0 = Instant::now();
    let Some(cl) = start_cluster() else { return };
    let started = t0.elapsed();
    let w = Work::new();
    w.write("m.toml", MANIFEST);
    let store = w.path().join("slurm-store");
    std::fs::create_dir_all(&store).unwrap();
    let url = format!("file://{}", store.display());

    // 1. size 100000 cannot be met: those two sub tasks fail, the nodes below them never run (members wait on one
    //    sub task each with afterok; pick is element-wise over sub with aftercorr), everything else completes.
    let first = submit(&w, &cl, &url, &[]);
    assert_eq!(first["submitted"], 17, "{first}");
    let jobs = first["jobs"].as_array().unwrap();
    let names: Vec<&str> = jobs.iter().map(|j| j["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["gen", "sub", "member-0", "member-1", "member-2", "member-3", "pick"], "{first}");
    let ids: Vec<String> = jobs.iter().map(|j| j["id"].as_str().unwrap().to_string()).collect();
    let tasks = task_ids(&first);
    let q = wait_settled(&cl, &ids, Duration::from_secs(90));
    let t1 = t0.elapsed();
    for (node, tid) in &tasks {
        let (st, why) = (state_of(&q, tid), &entry_of(&q, tid).2);
        if node.starts_with("sub@") && node.contains("size=100000") {
            assert_eq!(st, "FAILED", "{node}: {q:?}");
        } else if node.contains("size=100000") {
            assert_eq!((st, why.as_str()), ("PENDING", "DependencyNeverSatisfied"), "{node}: {q:?}");
        } else {
            assert_eq!(st, "COMPLETED", "{node}: {q:?}");
        }
    }
    // Cancel what can never run.
    let never: BTreeSet<String> = q
        .iter()
        .filter(|(_, st, why)| st == "PENDING" && why == "DependencyNeverSatisfied")
        .map(|(i, _, _)| i.split('_').next().unwrap().to_string())
        .collect();
    let expected: BTreeSet<String> = jobs
        .iter()
        .filter(|j| ["member-1", "member-3", "pick"].contains(&j["name"].as_str().unwrap()))
        .map(|j| j["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(never, expected, "{q:?}");
    let o = cl.cmd("scancel").args(never.iter()).output().unwrap();
    assert!(o.status.success(), "scancel: {}", s(&o.stderr));
    assert_eq!(
        entries(&store).len(),
        1 + 2 + 4 + 2,
        "gen, the two feasible subs, their four members and two picks are stored"
    );

    // 2. Fixed (a size that can be met): the re-submission submits only what is left, and finishes it.
    let fixed = ["sizes=[300, 400]"];
    let script = w.ok(&["export", "slurm", "m.toml", "--store", &url, "--set", fixed[0]]);
    assert!(script.contains("# 17 node(s): 9 cached"), "{script}");
    let second = submit(&w, &cl, &url, &fixed);
    assert_eq!(second["submitted"], 8, "{second}");
    let submitted: BTreeSet<String> = task_ids(&second).into_keys().collect();
    assert!(submitted.iter().all(|n| n.contains("size=400")), "{submitted:?}");
    let ids: Vec<String> =
        second["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_string()).collect();
    let q = wait_settled(&cl, &ids, Duration::from_secs(90));
    assert!(q.iter().all(|(_, st, _)| st == "COMPLETED"), "{q:?}");
    let t2 = t0.elapsed();
    assert_store_consistent(&store);

    // 3. The same store contents as a local run of the fixed manifest.
    let local = Work::new();
    local.write("m.toml", MANIFEST);
    let summary = local.run_json(&["m.toml", "--set", fixed[0], "-q"]);
    assert_eq!(summary["ran"], 17, "{summary}");
    let ours = entry_map(&store);
    assert_eq!(ours.len(), 17);
    assert_eq!(ours, entry_map(&local.store()), "cache entries (keys and output hashes) differ from a local run's");
    let blobs =
        |p: &Path| blob_files(p).into_iter().map(|(n, _)| n).filter(|n| !n.contains('#')).collect::<BTreeSet<_>>();
    assert_eq!(blobs(&store), blobs(&local.store()));
    // Nothing is left to submit.
    let again = submit(&w, &cl, &url, &fixed);
    assert_eq!(again["submitted"], 0);
    drop(cl);
    eprintln!(
        "real Slurm: cluster up in {:.1}s, first submission settled at {:.1}s, re-submission done at {:.1}s, total {:.1}s",
        started.as_secs_f64(),
        t1.as_secs_f64(),
        t2.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

/// Distinct job ids (array jobs once) the cluster knows, finished ones included.
fn all_jobs(cl: &Cluster) -> BTreeSet<String> {
    let o = cl.cmd("squeue").args(["-h", "-t", "all", "-o", "%F"]).output().unwrap();
    assert!(o.status.success(), "squeue: {}", s(&o.stderr));
    s(&o.stdout).lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
}

/// gen, sub over two ρ, member over two ρ′ each: 7 nodes as 4 jobs (gen, the sub array, a member array per sub task).
fn small() -> String {
    gen_manifest(3000)
        .replace("rhos = [0.2, 0.5, 0.8]", "rhos = [0.2, 0.5]")
        .replace("seeds = [0, 1]", "seeds = [0]")
        .replace("members = [0.2, 0.5, 0.8]", "members = [0.2, 0.8]")
}

#[test]
fn real_slurm_resubmission_while_queued_reuses_the_live_jobs() {
    let t0 = Instant::now();
    let Some(cl) = start_cluster() else { return };
    let up = t0.elapsed();
    let w = Work::new();
    w.write("m.toml", &small());
    let store = w.path().join("slurm-store");
    std::fs::create_dir_all(&store).unwrap();
    let url = format!("file://{}", store.display());

    // 1. The script, submitted held (so that everything stays queued), then run again: every job is found queued by
    //    its identity and reused, nothing is submitted twice.
    let script = w.ok(&["export", "slurm", "m.toml", "--store", &url, "--sbatch-arg=--hold", "-o", "submit.sh"]);
    assert!(script.is_empty());
    let run_script = || {
        let o = cl.cmd("bash").arg(w.path().join("submit.sh")).current_dir(w.path()).output().unwrap();
        assert!(o.status.success(), "submit.sh: {}\n{}", s(&o.stderr), cl.log_tail());
        s(&o.stdout)
    };
    let out1 = run_script();
    assert_eq!(out1.lines().filter(|l| l.starts_with("job ")).count(), 4, "{out1}");
    let jobs1 = all_jobs(&cl);
    assert_eq!(jobs1.len(), 4, "{jobs1:?}");
    let out2 = run_script();
    assert_eq!(out2.lines().filter(|l| l.starts_with("reuse ")).count(), 4, "{out2}");
    assert!(!out2.lines().any(|l| l.starts_with("job ")), "{out2}");
    // The same ids, in the same order.
    let ids = |out: &str| out.lines().filter_map(|l| l.split(' ').nth(1).map(str::to_string)).collect::<Vec<_>>();
    assert_eq!(ids(&out1), ids(&out2));
    assert_eq!(all_jobs(&cl), jobs1, "the second run of the script submitted jobs");

    // 2. `--submit` while they are still queued: all 7 nodes are in flight, nothing is submitted, and the output
    //    says which jobs were reused.
    let again = submit(&w, &cl, &url, &[]);
    assert_eq!((again["submitted"].as_u64(), again["in_flight"].as_u64()), (Some(0), Some(7)), "{again}");
    let reused: BTreeSet<String> =
        again["reused"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(reused, jobs1, "{again}");
    assert_eq!(all_jobs(&cl), jobs1, "--submit submitted jobs that were queued already");
    let text = w
        .cmd(&["export", "slurm", "m.toml", "--store", &url, "--submit"])
        .env("SLURM_CONF", &cl.conf)
        .output()
        .unwrap();
    assert!(
        text.status.success() && s(&text.stdout).lines().filter(|l| l.contains("\treused: ")).count() == 4,
        "{}\n{}",
        s(&text.stdout),
        s(&text.stderr)
    );

    let queued = t0.elapsed();
    // 3. Released, they run once, to the same store contents as a local run.
    let list: Vec<String> = jobs1.iter().cloned().collect();
    let o = cl.cmd("scontrol").arg("release").arg(list.join(",")).output().unwrap();
    assert!(o.status.success(), "scontrol release: {}", s(&o.stderr));
    let q = wait_settled(&cl, &list, Duration::from_secs(90));
    assert!(q.iter().all(|(_, st, _)| st == "COMPLETED"), "{q:?}");
    let ran = t0.elapsed();
    assert_eq!(all_jobs(&cl), jobs1);
    assert_store_consistent(&store);
    let local = Work::new();
    local.write("m.toml", &small());
    assert_eq!(local.run_json(&["m.toml", "-q"])["ran"], 7);
    assert_eq!(entry_map(&store), entry_map(&local.store()), "cache entries differ from a local run's");
    let after = submit(&w, &cl, &url, &[]);
    assert_eq!((after["submitted"].as_u64(), after["in_flight"].as_u64()), (Some(0), Some(0)), "{after}");
    drop(cl);
    eprintln!(
        "real Slurm re-submission test: cluster up at {:.1}s, submitted twice by {:.1}s, jobs done at {:.1}s, total {:.1}s",
        up.as_secs_f64(),
        queued.as_secs_f64(),
        ran.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

/// Job identity covers the pipeline file a manifest names, not only the manifest: live jobs of the pipeline's
/// previous version are not reused after it is edited (they would run, or wait for, the old version's nodes).
#[test]
fn slurm_identity_changes_with_the_pipeline_file() {
    let w = Work::new();
    let pipeline = |n: u32| {
        format!(
            "[vars]\nsize = 20\n\n[stages.gen]\nkind = \"generate\"\nparams = {{ n = {n}, seed = 1 }}\n\n\
             [stages.sub]\nkind = \"subsample\"\ninputs = {{ pairs = \"gen.pairs\" }}\nsweep = {{ rho = [0.3, 0.5] }}\n\
             params = {{ rho = \"${{rho}}\", size = \"${{size}}\", seed = 0 }}\n"
        )
    };
    w.write("p.toml", &pipeline(200));
    w.write("m.toml", "pipeline = \"p.toml\"\n");
    let ident = || {
        let script = w.ok(&["export", "slurm", "m.toml"]);
        let ids: BTreeSet<String> = script
            .lines()
            .filter(|l| l.starts_with("submit "))
            .map(|l| l.split(' ').nth(2).unwrap().rsplit_once(':').unwrap().0.to_string())
            .collect();
        assert_eq!(ids.len(), 1, "{script}");
        ids.into_iter().next().unwrap()
    };
    let first = ident();
    assert!(first.starts_with("rmdistill:"), "{first}");
    assert_eq!(ident(), first, "the same files give the same identity");

    // Submitted, and all of it still queued: submitting again reuses every job.
    let fake = fake_sbatch(w.path());
    let path = format!("{}:{}", fake.display(), std::env::var("PATH").unwrap());
    let submit = || {
        let o = w.cmd(&["export", "slurm", "m.toml", "--submit", "--json"]).env("PATH", &path).output().unwrap();
        assert!(o.status.success(), "{}", s(&o.stderr));
        serde_json::from_slice::<Value>(&o.stdout).unwrap()
    };
    assert_eq!(submit()["submitted"], 3);
    w.write("squeue-rows", &queued_rows(w.path(), &[], &[]));
    let v = submit();
    assert_eq!((v["submitted"].as_u64(), v["in_flight"].as_u64()), (Some(0), Some(3)), "{v}");

    // The pipeline edited (same node names, another gen): a new identity, and nothing of the old jobs reused.
    w.write("p.toml", &pipeline(300));
    let second = ident();
    assert_ne!(second, first);
    let v = submit();
    assert_eq!((v["submitted"].as_u64(), v["in_flight"].as_u64()), (Some(3), Some(0)), "{v}");
    // A `--set` that changes what the pipeline resolves to changes it too.
    let o = w.ok(&["export", "slurm", "m.toml", "--set", "size=30"]);
    assert!(!o.contains(&format!("{second}:")), "{o}");
}

/// A submission stopped part-way names the jobs it submitted so far, to cancel them (the ERR trap: without `set -E`
/// it did not fire inside the function that calls sbatch, and the user learnt nothing of the jobs left queued).
#[test]
fn slurm_script_names_the_jobs_submitted_before_it_stopped() {
    let w = Work::new();
    w.write("m.toml", &gen_manifest(500));
    let fake = fake_sbatch(w.path());
    let sbatch = fake.join("sbatch");
    let log = w.path().join("sbatch-log");
    let text = std::fs::read_to_string(&sbatch).unwrap().replacen(
        "\n",
        &format!(
            "\n[ -e {}/100.args ] && {{ echo 'sbatch: error: Invalid generic resource (gres) specification' >&2; exit 1; }}\n",
            log.display()
        ),
        1,
    );
    std::fs::write(&sbatch, text).unwrap();
    let path = format!("{}:{}", fake.display(), std::env::var("PATH").unwrap());
    let script = w.path().join("submit.sh");
    w.ok(&["export", "slurm", "m.toml", "-o", script.to_str().unwrap()]);
    let o = Command::new("bash").arg(&script).current_dir(w.path()).env("PATH", &path).output().unwrap();
    assert!(!o.status.success());
    let err = s(&o.stderr);
    // once: not again from the command substitution that ran sbatch
    assert_eq!(err.matches("submission stopped; submitted so far: 100 (scancel them").count(), 1, "{err}");
}

/// sbatch reads `%` in `--output` as the start of a pattern (`%j`, `%x`, …) and `%%` as `%`: a log directory with
/// `%` in its name is written with `%%`, so the output lands in that directory. A backslash, which makes sbatch
/// expand nothing and drop it, is refused.
#[test]
fn slurm_log_directory_percent_signs_are_escaped() {
    let w = Work::new();
    w.write("m.toml", &gen_manifest(500));
    let fake = fake_sbatch(w.path());
    let path = format!("{}:{}", fake.display(), std::env::var("PATH").unwrap());
    let logs = w.path().join("logs 100%j %x %%");
    let script = w.path().join("submit.sh");
    w.ok(&["export", "slurm", "m.toml", "--logs", logs.to_str().unwrap(), "-o", script.to_str().unwrap()]);
    let o = Command::new("bash").arg(&script).current_dir(w.path()).env("PATH", &path).output().unwrap();
    assert!(o.status.success(), "{}", s(&o.stderr));
    assert!(logs.is_dir(), "the log directory is made as named");
    let escaped = logs.display().to_string().replace('%', "%%");
    let args = std::fs::read_to_string(w.path().join("sbatch-log/100.args")).unwrap();
    assert!(args.lines().any(|l| l == format!("--output={escaped}/%x-%j.out")), "{args}");
    let args = std::fs::read_to_string(w.path().join("sbatch-log/101.args")).unwrap();
    assert!(args.lines().any(|l| l == format!("--output={escaped}/%x-%A_%a.out")), "{args}");

    // The directory given when the script runs (RMDISTILL_SLURM_LOGS) too.
    let env_logs = w.path().join("env%logs");
    let o = Command::new("bash")
        .arg(&script)
        .current_dir(w.path())
        .env("PATH", &path)
        .env("RMDISTILL_SLURM_LOGS", &env_logs)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", s(&o.stderr));
    let escaped = env_logs.display().to_string().replace('%', "%%");
    let args = std::fs::read_to_string(w.path().join("sbatch-log/108.args")).unwrap();
    assert!(args.lines().any(|l| l == format!("--output={escaped}/%x-%j.out")), "{args}");

    // A relative RMDISTILL_SLURM_LOGS, the script run from elsewhere: taken against the jobs' --chdir, where sbatch
    // resolves --output (made in the caller's directory, the jobs failed to start and left no log).
    let elsewhere = w.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let o = Command::new("bash")
        .arg(&script)
        .current_dir(&elsewhere)
        .env("PATH", &path)
        .env("RMDISTILL_SLURM_LOGS", "rel")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", s(&o.stderr));
    let rel = w.path().canonicalize().unwrap().join("rel");
    assert!(rel.is_dir() && !elsewhere.join("rel").exists());
    let args = std::fs::read_to_string(w.path().join("sbatch-log/116.args")).unwrap();
    assert!(args.lines().any(|l| l == format!("--output={}/%x-%j.out", rel.display())), "{args}");

    // A backslash: refused when exporting, and by the script when it comes from RMDISTILL_SLURM_LOGS.
    let o = w.run(&["export", "slurm", "m.toml", "--logs", "lo\\gs"]);
    assert_eq!(o.status.code(), Some(2), "{}", s(&o.stderr));
    assert!(s(&o.stderr).contains("backslash"), "{}", s(&o.stderr));
    let o = Command::new("bash")
        .arg(&script)
        .current_dir(w.path())
        .env("PATH", &path)
        .env("RMDISTILL_SLURM_LOGS", w.path().join("a\\b"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(3), "{}", s(&o.stderr));
    assert!(s(&o.stderr).contains("has a backslash"), "{}", s(&o.stderr));
}

/// With a real sbatch: jobs submitted from a directory whose name holds `%` patterns (so `--chdir` and the default
/// log directory hold them too) run there, and their output files land in that log directory under the names asked
/// for (`%x-%j.out`, `%x-%A_%a.out`), not in a directory sbatch made up by expanding the `%`.
#[test]
fn real_slurm_logs_land_in_a_directory_with_percent_signs() {
    let Some(cl) = start_cluster() else { return };
    let w = Work::new();
    let dir = w.path().join("run %j %x 100%%");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("m.toml"),
        "[stages.gen]\nkind = \"generate\"\nparams = { n = 200, seed = 1 }\nresources = { memory = \"512M\", time = \"10m\" }\n\n\
         [stages.sub]\nkind = \"subsample\"\ninputs = { pairs = \"gen.pairs\" }\nsweep = { rho = [0.3, 0.5] }\n\
         params = { rho = \"${rho}\", size = 20, seed = 0 }\nresources = { memory = \"512M\", time = \"10m\" }\n",
    )
    .unwrap();
    let o = w
        .cmd(&["export", "slurm", "m.toml", "--submit", "--json"])
        .current_dir(&dir)
        .env("SLURM_CONF", &cl.conf)
        .output()
        .unwrap();
    assert!(o.status.success(), "export --submit failed: {}\n{}", s(&o.stderr), cl.log_tail());
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let ids: Vec<String> =
        v["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 2, "{v}");
    let q = wait_settled(&cl, &ids, Duration::from_secs(90));
    assert!(q.iter().all(|(_, st, _)| st == "COMPLETED"), "{q:?}\n{}", cl.log_tail());
    assert_eq!(entries(&dir.join(".rmdistill/store")).len(), 3, "the jobs ran in the submitting directory");
    let logs = dir.join(".rmdistill/slurm");
    let mut got: Vec<String> =
        std::fs::read_dir(&logs).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
    got.sort();
    let want = vec![format!("gen-{}.out", ids[0]), format!("sub-{}_0.out", ids[1]), format!("sub-{}_1.out", ids[1])];
    assert_eq!(got, want, "in {}", logs.display());
}
