//! `export argo` and `export k8s`: the documents are checked against the required fields and name rules of the Argo
//! Workflow and batch/v1 Job specs, cover exactly the nodes still to run, respect the DAG, and stay small for a
//! sweep of thousands of nodes.

mod common;
use common::*;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// A DNS-1123 label: what Kubernetes requires of names, and what we promise for task names.
fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// A Kubernetes resource quantity (the forms we emit: integers with an optional binary suffix).
fn quantity(v: &Value) -> bool {
    let s = v.as_str().unwrap_or("");
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && ["", "Mi", "Gi", "Ki"].contains(&&s[digits.len()..])
}

/// Checks a Workflow against the Argo spec's required fields and rules; returns node name → task name.
fn validate_workflow(v: &Value) -> BTreeMap<String, String> {
    assert_eq!(v["apiVersion"], "argoproj.io/v1alpha1");
    assert_eq!(v["kind"], "Workflow");
    let gen_name = v["metadata"]["generateName"]
        .as_str()
        .or(v["metadata"]["name"].as_str())
        .expect("metadata.name or generateName");
    assert!(dns_label(gen_name.trim_end_matches('-')), "{gen_name}");
    let spec = &v["spec"];
    let templates = spec["templates"].as_array().expect("spec.templates");
    assert!(!templates.is_empty());
    let mut by_name: HashMap<&str, &Value> = HashMap::new();
    for t in templates {
        let name = t["name"].as_str().expect("template name");
        assert!(dns_label(name), "template name {name}");
        assert!(by_name.insert(name, t).is_none(), "template {name} twice");
        let kinds =
            ["container", "script", "dag", "steps", "resource", "suspend", "data", "http", "plugin", "containerSet"];
        assert_eq!(
            kinds.iter().filter(|k| t.get(**k).is_some()).count(),
            1,
            "template {name} must have exactly one kind"
        );
        if let Some(c) = t.get("container") {
            assert!(c["image"].as_str().is_some_and(|i| !i.is_empty()), "{name}: container.image");
            for section in ["requests", "limits"] {
                for (k, q) in c["resources"][section].as_object().into_iter().flatten() {
                    assert!(quantity(q), "{name}: resources.{section}.{k} = {q}");
                }
            }
        }
    }
    let entry = spec["entrypoint"].as_str().expect("spec.entrypoint");
    let dag = &by_name.get(entry).unwrap_or_else(|| panic!("entrypoint {entry} names no template"))["dag"];
    let tasks = dag["tasks"].as_array().expect("dag.tasks");
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut nodes = BTreeMap::new();
    for (i, t) in tasks.iter().enumerate() {
        let name = t["name"].as_str().expect("task name");
        assert!(dns_label(name), "task name {name} is not DNS-1123");
        assert!(seen.insert(name, i).is_none(), "task {name} twice");
        let tpl = by_name
            .get(t["template"].as_str().expect("task.template"))
            .unwrap_or_else(|| panic!("{name}: unknown template"));
        for d in t["dependencies"].as_array().into_iter().flatten() {
            let d = d.as_str().unwrap();
            let j = *seen.get(d).unwrap_or_else(|| panic!("{name} depends on {d}, which is no earlier task"));
            assert!(j < i);
        }
        // Every input parameter without a default is given.
        let given: BTreeMap<&str, &str> = t["arguments"]["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| (p["name"].as_str().unwrap(), p["value"].as_str().unwrap()))
            .collect();
        for p in tpl["inputs"]["parameters"].as_array().into_iter().flatten() {
            let pn = p["name"].as_str().unwrap();
            assert!(
                p.get("default").is_some() || p.get("value").is_some() || given.contains_key(pn),
                "{name}: parameter {pn} not given"
            );
        }
        let node = given["node"];
        if node == "{{item}}" {
            let items = t["withItems"].as_array().expect("{{item}} needs withItems");
            assert!(!items.is_empty());
            for it in items {
                assert!(nodes.insert(it.as_str().unwrap().to_string(), name.to_string()).is_none());
            }
        } else {
            assert!(t.get("withItems").is_none());
            assert!(nodes.insert(node.to_string(), name.to_string()).is_none());
        }
    }
    nodes
}

/// name → deps, from `node list --json`.
fn node_deps(w: &Work, manifest: &str) -> BTreeMap<String, Vec<String>> {
    let v: Value = serde_json::from_str(&w.ok(&["node", "list", manifest, "--json"])).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap().to_string(),
                n["deps"].as_array().unwrap().iter().map(|d| d.as_str().unwrap().to_string()).collect(),
            )
        })
        .collect()
}

/// gen, sub over 2 ρ × 1000 seeds, and pick element-wise over sub: 4001 nodes.
pub fn big_manifest() -> String {
    let seeds: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    format!(
        r#"[vars]
rhos = [0.2, 0.8]
seeds = [{}]

[stages.gen]
kind = "generate"
params = {{ n = 5000, seed = 7 }}

[stages.sub]
kind = "subsample"
inputs = {{ pairs = "gen.pairs" }}
sweep = {{ rho = "${{rhos}}", seed = "${{seeds}}" }}
params = {{ rho = "${{rho}}", size = 300, seed = "${{seed}}" }}
"#,
        seeds.join(", ")
    ) + &with_pick("")
}

fn with_pick(m: &str) -> String {
    // A stage element-wise over `sub`: pick@rho,seed reads sub@rho,seed.
    format!(
        "{m}\n[stages.pick]\nkind = \"subsample\"\ninputs = {{ pairs = \"sub.dataset\" }}\nsweep = {{ rho = \"${{rhos}}\", seed = \"${{seeds}}\" }}\nparams = {{ rho = 0.5, size = 40, seed = \"${{seed}}\" }}\n"
    )
}

#[test]
fn argo_workflow_follows_the_dag_with_per_stage_resources() {
    let w = Work::new();
    w.write(
        "m.toml",
        &gen_manifest(5000).replace(
            "[stages.sub]\n",
            "[stages.sub]\nresources = { cpus = 2, memory = \"2G\", gpus = 1, time = \"1h30m\" }\n",
        ),
    );
    let out = w.ok(&["export", "argo", "m.toml", "--image", "ghcr.io/x/rmdistill:1", "--parallelism", "8"]);
    let v: Value = serde_json::from_str(&out).expect("JSON");
    let nodes = validate_workflow(&v);
    let all = node_deps(&w, "m.toml");
    assert_eq!(nodes.keys().collect::<Vec<_>>(), all.keys().collect::<Vec<_>>());
    // Every dependency of a node is a dependency of its task.
    let tasks = v["spec"]["templates"][0]["dag"]["tasks"].as_array().unwrap();
    let task_deps: HashMap<&str, BTreeSet<&str>> = tasks
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap(),
                t["dependencies"].as_array().into_iter().flatten().map(|d| d.as_str().unwrap()).collect(),
            )
        })
        .collect();
    for (n, deps) in &all {
        for d in deps {
            assert!(task_deps[nodes[n].as_str()].contains(nodes[d].as_str()), "{n} needs {d}");
        }
    }
    assert_eq!(tasks.len(), 3, "gen, sub fanned out, member fanned out after sub");
    assert_eq!(v["spec"]["parallelism"], 8);
    let sub_t = v["spec"]["templates"].as_array().unwrap().iter().find(|t| t["name"] == "node-sub").unwrap();
    assert_eq!(sub_t["container"]["image"], "ghcr.io/x/rmdistill:1");
    assert_eq!(sub_t["container"]["resources"]["limits"]["nvidia.com/gpu"], "1");
    assert_eq!(sub_t["container"]["resources"]["requests"]["memory"], "2048Mi");
    assert_eq!(sub_t["activeDeadlineSeconds"], "5400");
    let args: Vec<&str> = sub_t["container"]["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    // Options first, then `--`: the manifest and the node name are never read as options.
    assert_eq!(&args[..2], &["node", "run"]);
    let manifest = w.path().join("m.toml").canonicalize().unwrap().display().to_string();
    assert_eq!(&args[args.len() - 3..], &["--", manifest.as_str(), "{{inputs.parameters.node}}"]);
    assert!(args[2..args.len() - 3].iter().all(|a| a.starts_with("--") && a.contains('=')), "{args:?}");
    assert_eq!(sub_t["container"]["command"][0], "rmdistill");

    // Cached nodes are left out, and so are dependencies on them.
    w.ok(&["run", "m.toml", "gen", "-q"]);
    let v: Value = serde_json::from_str(&w.ok(&["export", "argo", "m.toml", "--image", "img"])).unwrap();
    let nodes = validate_workflow(&v);
    assert!(!nodes.contains_key("gen") && nodes.len() == 24);
    let sub =
        v["spec"]["templates"][0]["dag"]["tasks"].as_array().unwrap().iter().find(|t| t["name"] == "sub").unwrap();
    assert!(sub.get("dependencies").is_none(), "{sub}");
}

#[test]
fn argo_workflow_for_a_4000_node_sweep_stays_small() {
    let w = Work::new();
    w.write("big.toml", &big_manifest());
    let t = std::time::Instant::now();
    let out = w.ok(&["export", "argo", "big.toml", "--image", "img"]);
    let took = t.elapsed();
    let v: Value = serde_json::from_str(&out).unwrap();
    let nodes = validate_workflow(&v);
    assert_eq!(nodes.len(), 4001);
    let tasks = v["spec"]["templates"][0]["dag"]["tasks"].as_array().unwrap();
    assert!(tasks.len() <= 10, "{} tasks", tasks.len());
    let compact = serde_json::to_string(&v).unwrap().len();
    assert!(compact < 1_000_000, "{compact} bytes: over Kubernetes' object size limit");
    eprintln!("argo: 4001 nodes -> {} tasks, {compact} bytes, exported in {took:?}", tasks.len());
}

#[test]
fn k8s_jobs_one_per_node_in_topological_order() {
    let w = Work::new();
    w.write("m.toml", &gen_manifest(5000));
    let v: Value = serde_json::from_str(&w.ok(&[
        "export",
        "k8s",
        "m.toml",
        "--image",
        "img",
        "--namespace",
        "ml",
        "--name",
        "Sweep_1",
    ]))
    .unwrap();
    assert_eq!(v["apiVersion"], "v1");
    assert_eq!(v["kind"], "List");
    let items = v["items"].as_array().unwrap();
    let all = node_deps(&w, "m.toml");
    assert_eq!(items.len(), all.len());
    let mut names = BTreeSet::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    for j in items {
        assert_eq!(j["apiVersion"], "batch/v1");
        assert_eq!(j["kind"], "Job");
        let name = j["metadata"]["name"].as_str().unwrap();
        assert!(dns_label(name) && name.starts_with("sweep-1-"), "{name}");
        assert!(names.insert(name.to_string()), "{name} twice");
        assert_eq!(j["metadata"]["namespace"], "ml");
        let node = j["metadata"]["annotations"]["rmdistill.dev/node"].as_str().unwrap();
        for d in &all[node] {
            assert!(done.contains(d), "{node} before its upstream {d}");
        }
        done.insert(node.to_string());
        let pod = &j["spec"]["template"]["spec"];
        assert_eq!(pod["restartPolicy"], "Never");
        assert!(j["spec"]["backoffLimit"].as_u64().is_some());
        let cmd: Vec<&str> =
            pod["containers"][0]["command"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        assert_eq!(&cmd[..2], &["sh", "-c"]);
        assert!(cmd[2].contains("-ne 4"), "waits while upstream is missing: {}", cmd[2]);
        let store = format!("--store=file://{}", w.path().join(".rmdistill/store").canonicalize().unwrap().display());
        let run = j["metadata"]["annotations"]["rmdistill.dev/run"].as_str().unwrap();
        assert!(run.starts_with("sweep-1-") && run.len() <= 64, "{run}");
        assert_eq!(
            &cmd[4..],
            &[
                "rmdistill",
                "node",
                "run",
                &store,
                &format!("--run-id={run}"),
                "--attempts=3",
                "--",
                w.path().join("m.toml").canonicalize().unwrap().to_str().unwrap(),
                node
            ]
        );
        // Deadlines without --all-at-once (default time limit 1h): a Job may queue behind others, so no Job has a
        // deadline counted from its creation; a pod that waits for nothing has its node's limit; waiting is not
        // bounded.
        assert!(j["spec"].get("activeDeadlineSeconds").is_none(), "{node}");
        if node.starts_with("gen") {
            assert_eq!(pod["activeDeadlineSeconds"], 3600, "{node}");
            assert!(cmd[2].contains("-ge 0 ]"), "{node} gives up at once: {}", cmd[2]);
        } else {
            assert!(pod.get("activeDeadlineSeconds").is_none(), "{node}");
            assert!(!cmd[2].contains("-ge") && !cmd[2].contains("giving up"), "{node} waits: {}", cmd[2]);
        }
    }
}

/// The Job of `node` in an exported `List`.
fn job_of<'a>(doc: &'a Value, node: &str) -> &'a Value {
    doc["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["metadata"]["annotations"]["rmdistill.dev/node"] == node)
        .unwrap()
}

/// A Job's command as its container runs it: Kubernetes turns `$$` into `$` (no `$(VAR)` is set here).
fn k8s_command(job: &Value) -> Vec<String> {
    job["spec"]["template"]["spec"]["containers"][0]["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().replace("$$", "$"))
        .collect()
}

#[test]
fn k8s_all_at_once_a_dependent_stops_waiting_once_its_upstream_jobs_deadlines_pass() {
    let w = Work::new();
    w.write(
        "m.toml",
        "[stages.gen]\nkind = \"generate\"\nparams = { n = 50, seed = 1 }\nresources = { time = \"1s\" }\n\n\
         [stages.sub]\nkind = \"subsample\"\ninputs = { pairs = \"gen.pairs\" }\nparams = { rho = 0.5, size = 10, seed = 0 }\n",
    );
    let bin = env!("CARGO_BIN_EXE_rmdistill");
    let args = [
        "export",
        "k8s",
        "m.toml",
        "--image",
        "img",
        "--bin",
        bin,
        "--poll",
        "1",
        "--backoff-limit",
        "0",
        "--all-at-once",
    ];
    let v: Value = serde_json::from_str(&w.ok(&args)).unwrap();
    let job = |node: &str| job_of(&v, node);
    // gen: 1s, one attempt. sub waits for gen's Job to end (1s), then one more check, then its own hour.
    assert_eq!(job("gen")["spec"]["activeDeadlineSeconds"], 1);
    assert_eq!(job("gen")["spec"]["template"]["spec"]["activeDeadlineSeconds"], 1);
    assert_eq!(job("sub")["spec"]["activeDeadlineSeconds"], 1 + 1 + 3600);
    assert_eq!(job("sub")["spec"]["template"]["spec"]["activeDeadlineSeconds"], 1 + 1 + 3600);

    // gen's Job failed, so gen is never stored: sub's pod checks, waits, checks again, then gives up saying why
    // (it used to wait forever).
    let sub = k8s_command(job("sub"));
    let t = std::time::Instant::now();
    let o = std::process::Command::new(&sub[0]).args(&sub[1..]).current_dir(w.path()).output().unwrap();
    let err = s(&o.stderr);
    assert_eq!(o.status.code(), Some(4), "{err}");
    assert!(t.elapsed() >= std::time::Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(err.contains("upstream not stored yet; checking again in 1s"), "{err}");
    assert!(
        err.contains(
            "rmdistill: giving up: upstream results still not stored after waiting 1s, past the deadlines (1s)"
        ),
        "{err}"
    );

    // With gen run, the same command runs sub.
    let upstream = k8s_command(job("gen"));
    let o = std::process::Command::new(&upstream[0]).args(&upstream[1..]).current_dir(w.path()).output().unwrap();
    assert!(o.status.success(), "{upstream:?}: {}", s(&o.stderr));
    // (Exported now, sub reads only cached results: it does not wait, and has its hour.)
    let again: Value = serde_json::from_str(&w.ok(&args)).unwrap();
    let only: Vec<&Value> = again["items"].as_array().unwrap().iter().collect();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0]["spec"]["activeDeadlineSeconds"], 3600);
    assert_eq!(only[0]["spec"]["template"]["spec"]["activeDeadlineSeconds"], 3600);
    let o = std::process::Command::new(&sub[0]).args(&sub[1..]).current_dir(w.path()).output().unwrap();
    assert!(o.status.success(), "{sub:?}: {}", s(&o.stderr));
    let st: Value = serde_json::from_str(&w.ok(&["status", "m.toml", "--json"])).unwrap();
    assert!(st.as_array().unwrap().iter().all(|n| n["state"] == "cached"), "{st}");

    // A node whose upstream was stored when exported but is gone from the store gives up at once.
    std::fs::remove_dir_all(w.store()).unwrap();
    std::fs::create_dir_all(w.store()).unwrap();
    let late = k8s_command(only[0]);
    let o = std::process::Command::new(&late[0]).args(&late[1..]).current_dir(w.path()).output().unwrap();
    assert_eq!(o.status.code(), Some(4), "{}", s(&o.stderr));
    assert!(s(&o.stderr).contains("were stored when this Job was exported but are not now"), "{}", s(&o.stderr));
}

/// Runs a Job's command as its pod would, as attempt `pod` (the pod's name, which Kubernetes passes).
fn start_pod(w: &Work, job: &Value, pod: &str) -> std::process::Child {
    let c = k8s_command(job);
    std::process::Command::new(&c[0])
        .args(&c[1..])
        .current_dir(w.path())
        .env("RMDISTILL_ATTEMPT", pod)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits at most `secs` for a pod's command to end: its exit code and stderr, or None while it still runs.
fn ended_within(child: &mut std::process::Child, secs: u64) -> Option<(Option<i32>, String)> {
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(secs) {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
            return Some((status.code(), err));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    None
}

#[test]
fn k8s_a_waiting_job_stops_once_every_attempt_of_its_upstream_failed_and_passes_it_on() {
    let w = Work::new();
    w.write("d.jsonl", "not json\n");
    w.write(
        "m.toml",
        "[stages.imp]\nkind = \"import\"\nparams = { path = \"d.jsonl\" }\n\n\
         [stages.sub]\nkind = \"subsample\"\ninputs = { pairs = \"imp.pairs\" }\nparams = { rho = 0.5, size = 10, seed = 0 }\n\n\
         [stages.again]\nkind = \"subsample\"\ninputs = { pairs = \"sub.dataset\" }\nparams = { rho = 0.5, size = 5, seed = 0 }\n",
    );
    let bin = env!("CARGO_BIN_EXE_rmdistill");
    let export = |run: &str| -> Value {
        let args = [
            "export",
            "k8s",
            "m.toml",
            "--image",
            "img",
            "--bin",
            bin,
            "--poll",
            "1",
            "--backoff-limit",
            "1",
            "--run-id",
            run,
        ];
        serde_json::from_str(&w.ok(&args)).unwrap()
    };
    let v = export("r1");
    let job = |node: &str| job_of(&v, node);
    for j in v["items"].as_array().unwrap() {
        assert_eq!(j["metadata"]["annotations"]["rmdistill.dev/run"], "r1");
        // exit 5 ends the Job at once; each pod knows its own name
        assert_eq!(
            j["spec"]["podFailurePolicy"]["rules"][0],
            json!({"action": "FailJob", "onExitCodes": {"containerName": "node", "operator": "In", "values": [5]}})
        );
        let env = &j["spec"]["template"]["spec"]["containers"][0]["env"][0];
        assert_eq!(env["name"], "RMDISTILL_ATTEMPT");
        assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    }

    // sub and again wait; imp's first attempt fails (its data is not JSON): one of its two attempts, so they go on
    // waiting.
    let mut sub = start_pod(&w, job("sub"), "m-sub-x1");
    let mut again = start_pod(&w, job("again"), "m-again-x1");
    let o = start_pod(&w, job("imp"), "m-imp-a1").wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", s(&o.stderr));
    assert!(ended_within(&mut sub, 3).is_none(), "sub stopped waiting after 1 of 2 attempts");

    // An attempt killed from outside (here a kill -9 of node run, as the out-of-memory killer does) is recorded by
    // the pod's wrapper: the second of two, so sub gives up, naming imp and its error, with exit code 5.
    let mut c = k8s_command(job("imp"));
    c[2] = c[2].replacen("\"$@\" & c=$!", "sh -c 'kill -9 $$' & c=$!", 1);
    let o = std::process::Command::new(&c[0])
        .args(&c[1..])
        .current_dir(w.path())
        .env("RMDISTILL_ATTEMPT", "m-imp-a2")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(137), "{}", s(&o.stderr));
    let (code, err) = ended_within(&mut sub, 20).expect("sub still waits after every attempt of imp failed");
    assert_eq!(code, Some(5), "{err}");
    assert!(
        err.contains("upstream node imp will not be stored in run r1: all 2 attempts of its Job failed")
            && err.contains("exit code 137 (SIGKILL: out of memory?)"),
        "{err}"
    );
    // again (which reads sub, which reads imp) stops too, naming the node at the root of it.
    let (code, err) = ended_within(&mut again, 20).expect("again still waits after every attempt of imp failed");
    assert_eq!(code, Some(5), "{err}");
    assert!(err.contains("upstream node imp will not be stored in run r1"), "{err}");

    // A new export is a new run: the old records do not count there, and once imp can run, everything runs.
    let v2 = export("r2");
    let mut sub = start_pod(&w, job_of(&v2, "sub"), "m-sub-y1");
    assert!(ended_within(&mut sub, 2).is_none(), "sub gave up in a new run on the old run's records");
    let mut rows = String::new();
    for i in 0..40 {
        let (a, b) = if i % 2 == 0 { ("a", "a much longer answer here") } else { ("a much longer answer here", "b") };
        rows.push_str(&format!("{{\"prompt\": \"p{i}\", \"chosen\": \"{a} {i}\", \"rejected\": \"{b} {i}\"}}\n"));
    }
    w.write("d.jsonl", &rows);
    let o = start_pod(&w, job_of(&v2, "imp"), "m-imp-b1").wait_with_output().unwrap();
    assert!(o.status.success(), "{}", s(&o.stderr));
    let (code, err) = ended_within(&mut sub, 30).expect("sub still waits with imp stored");
    assert_eq!(code, Some(0), "{err}");

    // node run's own checks of --run-id: it names a folder of the store
    let o = w.run(&["node", "run", "--run-id", "../x", "--attempts", "1", "m.toml", "imp"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(s(&o.stderr).contains("--run-id `../x`: expected 1 to 64 letters"), "{}", s(&o.stderr));
    let o = w.run(&["node", "run", "--run-id", "r", "m.toml", "imp"]);
    assert_eq!(o.status.code(), Some(2), "--run-id without --attempts: {}", s(&o.stderr));
}

/// Checks a document against a definition of Argo's published JSON schema (api/jsonschema/schema.json of
/// argoproj/argo-workflows), strictly: every field must be one the schema names, required fields present, and
/// scalar types right. Returns the problems.
fn check_schema(v: &Value, s: &Value, defs: &serde_json::Map<String, Value>, path: &str, errs: &mut Vec<String>) {
    let mut s = s;
    while let Some(r) = s.get("$ref").and_then(|r| r.as_str()) {
        s = &defs[r.rsplit('/').next().unwrap()];
    }
    match s.get("type").and_then(|t| t.as_str()) {
        Some("string") if !v.is_string() => errs.push(format!("{path}: expected a string, got {v}")),
        Some("integer") if !(v.is_i64() || v.is_u64()) => errs.push(format!("{path}: expected an integer, got {v}")),
        Some("boolean") if !v.is_boolean() => errs.push(format!("{path}: expected a boolean, got {v}")),
        Some("array") if !v.is_array() => errs.push(format!("{path}: expected an array, got {v}")),
        Some("object") if !v.is_object() => errs.push(format!("{path}: expected an object, got {v}")),
        _ => {}
    }
    if let (Some(o), Some(props)) = (v.as_object(), s.get("properties").and_then(|p| p.as_object())) {
        for (k, x) in o {
            match props.get(k) {
                Some(ps) => check_schema(x, ps, defs, &format!("{path}.{k}"), errs),
                None => errs.push(format!("{path}.{k}: no such field")),
            }
        }
        for r in s.get("required").and_then(|r| r.as_array()).into_iter().flatten() {
            if !o.contains_key(r.as_str().unwrap()) {
                errs.push(format!("{path}: missing required field {r}"));
            }
        }
    } else if let (Some(o), Some(ap)) = (v.as_object(), s.get("additionalProperties").filter(|a| a.is_object())) {
        for (k, x) in o {
            check_schema(x, ap, defs, &format!("{path}.{k}"), errs);
        }
    } else if let (Some(a), Some(items)) = (v.as_array(), s.get("items")) {
        for (i, x) in a.iter().enumerate() {
            check_schema(x, items, defs, &format!("{path}[{i}]"), errs);
        }
    }
}

#[test]
fn argo_workflow_matches_the_published_schema_when_given() {
    // The schema is not vendored; point ARGO_WORKFLOW_SCHEMA at api/jsonschema/schema.json of argo-workflows.
    let Some(path) = std::env::var_os("ARGO_WORKFLOW_SCHEMA") else {
        eprintln!(
            "SKIPPED: set ARGO_WORKFLOW_SCHEMA to argo-workflows' api/jsonschema/schema.json to check against it"
        );
        return;
    };
    let schema: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let defs = schema["definitions"].as_object().unwrap();
    let w = Work::new();
    w.write(
        "m.toml",
        &with_pick(&gen_manifest(5000).replace("[stages.sub]\n", "[stages.sub]\nresources = { gpus = 1 }\n")),
    );
    let v: Value = serde_json::from_str(&w.ok(&[
        "export",
        "argo",
        "m.toml",
        "--image",
        "img",
        "--parallelism",
        "4",
        "--service-account",
        "sa",
        "--namespace",
        "ns",
    ]))
    .unwrap();
    let mut errs = Vec::new();
    check_schema(&v, &json!({"$ref": "#/definitions/io.argoproj.workflow.v1alpha1.Workflow"}), defs, "$", &mut errs);
    assert!(errs.is_empty(), "{}", errs.join("\n"));
    // The check has teeth: a misspelt field and an integer deadline are caught.
    let mut bad = v.clone();
    bad["spec"]["templates"][1]["retrystrategy"] = json!({});
    bad["spec"]["templates"][1]["activeDeadlineSeconds"] = json!(60);
    let mut errs = Vec::new();
    check_schema(&bad, &json!({"$ref": "#/definitions/io.argoproj.workflow.v1alpha1.Workflow"}), defs, "$", &mut errs);
    assert_eq!(errs.len(), 2, "{errs:?}");
}

/// `.venv/bin/python` with Hera and kubernetes-validate (scripts/setup.sh installs them); None (skipped) without, unless
/// CI is set.
fn schema_python() -> Option<std::path::PathBuf> {
    let py = repo().join(".venv/bin/python");
    let ok = std::process::Command::new(&py)
        .args(["-c", "import hera.workflows, kubernetes_validate"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{} with hera and kubernetes-validate is missing: scripts/setup.sh installs them",
            py.display()
        );
        eprintln!(
            "SKIPPED: upstream schema test: {} with hera and kubernetes-validate is missing (run scripts/setup.sh)",
            py.display()
        );
        return None;
    }
    Some(py)
}

/// scripts/validate_k8s.py on a document: Ok, or the violations it printed.
fn upstream_check(py: &std::path::Path, w: &Work, what: &str, doc: &Value) -> Result<(), String> {
    let path = w.write(&format!("{what}-check.json"), &serde_json::to_string_pretty(doc).unwrap());
    let o = std::process::Command::new(py)
        .arg(repo().join("scripts/validate_k8s.py"))
        .arg(what)
        .arg(&path)
        .output()
        .unwrap();
    match o.status.code() {
        Some(0) => Ok(()),
        Some(1) => Err(s(&o.stderr)),
        _ => panic!("validate_k8s.py {what} did not run ({:?}):\n{}\n{}", o.status.code(), s(&o.stdout), s(&o.stderr)),
    }
}

#[test]
fn argo_and_k8s_documents_pass_the_upstream_schemas_strictly() {
    let Some(py) = schema_python() else { return };
    let w = Work::new();
    // A sweep with an element-wise stage, GPUs, and every option that adds fields.
    w.write(
        "m.toml",
        &with_pick(&gen_manifest(5000).replace(
            "[stages.sub]\n",
            "[stages.sub]\nresources = { cpus = 2, memory = \"2G\", gpus = 1, time = \"1h30m\" }\n",
        )),
    );
    let opts = [
        "--image",
        "ghcr.io/x/rmdistill:1",
        "--service-account",
        "sa",
        "--namespace",
        "ns",
        "--name",
        "Sweep_1",
        "--manifest-path",
        "/m/m.toml",
        "--bin",
        "/usr/bin/rmdistill",
    ];
    let mut args = vec!["export", "argo", "m.toml", "--parallelism", "4", "--retries", "3"];
    args.extend(opts);
    let argo: Value = serde_json::from_str(&w.ok(&args)).unwrap();
    let mut args = vec!["export", "k8s", "m.toml", "--backoff-limit", "3"];
    args.extend(opts);
    let k8s: Value = serde_json::from_str(&w.ok(&args)).unwrap();
    assert_eq!(k8s["items"].as_array().unwrap().len(), 31);
    if let Err(e) = upstream_check(&py, &w, "argo", &argo) {
        panic!("the Workflow violates Argo's schema:\n{e}");
    }
    if let Err(e) = upstream_check(&py, &w, "k8s", &k8s) {
        panic!("the Jobs violate Kubernetes' batch/v1 schema:\n{e}");
    }

    // The validators have teeth: a misspelt field, a wrong type and a missing required field are each caught.
    let tpl = argo["spec"]["templates"].as_array().unwrap().iter().position(|t| t.get("container").is_some()).unwrap();
    let dag = argo["spec"]["templates"].as_array().unwrap().iter().position(|t| t.get("dag").is_some()).unwrap();
    type Break = (&'static str, Box<dyn Fn(&mut Value)>, &'static str);
    let breaks: Vec<Break> = vec![
        (
            "argo",
            Box::new(move |v: &mut Value| v["spec"]["templates"][tpl]["retrystrategy"] = json!({})),
            "retrystrategy",
        ),
        ("argo", Box::new(|v: &mut Value| v["spec"]["parallelism"] = json!("4")), "parallelism"),
        (
            "argo",
            Box::new(move |v: &mut Value| v["spec"]["templates"][tpl]["container"]["resources"]["limit"] = json!({})),
            "limit",
        ),
        (
            "argo",
            Box::new(move |v: &mut Value| {
                v["spec"]["templates"][dag]["dag"]["tasks"][1].as_object_mut().unwrap().remove("name");
            }),
            "tasks.1.name",
        ),
        ("k8s", Box::new(|v: &mut Value| v["items"][3]["spec"]["backofflimit"] = json!(2)), "backofflimit"),
        ("k8s", Box::new(|v: &mut Value| v["items"][3]["spec"]["backoffLimit"] = json!("2")), "backoffLimit"),
        (
            "k8s",
            Box::new(|v: &mut Value| {
                v["items"][3]["spec"]["template"]["spec"]["containers"][0].as_object_mut().unwrap().remove("name");
            }),
            "name",
        ),
    ];
    for (what, f, field) in breaks {
        let mut bad = if what == "argo" { argo.clone() } else { k8s.clone() };
        f(&mut bad);
        let e = upstream_check(&py, &w, what, &bad).expect_err(&format!("{what}: breaking `{field}` was not caught"));
        assert!(e.contains(field), "{what}: the violation names no `{field}`:\n{e}");
    }
}
