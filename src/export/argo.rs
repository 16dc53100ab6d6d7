//! `export argo`: an Argo Workflows `Workflow` (JSON, which Argo and kubectl accept as they accept YAML) with one DAG
//! template. Each stage gets one container template parametrised by the node name, carrying the stage's resources;
//! a stage's nodes that need the same upstream form one DAG task fanned out with `withItems`, which keeps a large sweep
//! to a few tasks and the object far under Kubernetes' size limit. Our cache check (`node run`) replaces Argo's
//! memoisation.
//!
//! `export k8s`: where Argo is absent, a `List` of plain `batch/v1` Jobs, one per node, in topological order.
//! Kubernetes does not order Jobs; each pod runs `node run` in a loop that waits while it exits 4 (upstream not stored
//! yet), so creating them all at once is safe, and `backoffLimit` covers real failures. Each export is a run
//! ([`new_run_id`]) whose failed attempts are recorded in the store, so a pod waiting for a node whose Job has spent
//! its attempts stops with exit code 5, and a `podFailurePolicy` ends its Job at once. A pod that waits for nothing has
//! its node's time limit (`resources.time`) as its `activeDeadlineSeconds`. A Job's own deadline counts from its
//! creation, queueing included, so only with `--all-at-once` (a cluster that runs every Job at once) does each Job get
//! one, built from the limits of its node and of the nodes upstream of it ([`Deadline`]): then a node that runs too
//! long is stopped, and one whose upstream Job failed or was stopped gives up waiting, saying so.

use super::{Ctx, Graph, Req, RunSpec, Source};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::PathBuf;

/// What both `export argo` and `export k8s` are asked for.
#[derive(Debug, Clone, Default)]
pub struct ContainerRequest {
    pub source: Source,
    /// The container image with rmdistill in it.
    pub image: String,
    /// The rmdistill binary inside the image.
    pub bin: Option<String>,
    /// The manifest's path inside the container (default: its absolute path here).
    pub manifest_path: Option<String>,
    pub namespace: Option<String>,
    /// Prefix of the generated names (default: the manifest's file stem).
    pub name: Option<String>,
    pub service_account: Option<String>,
    pub output: Option<PathBuf>,
}

/// `export argo`.
#[derive(Debug, Clone, Default)]
pub struct ArgoRequest {
    pub c: ContainerRequest,
    /// Pods of this workflow running at once (spec.parallelism).
    pub parallelism: Option<u32>,
    /// Retries of a failed node.
    pub retries: u32,
}

/// `export k8s`.
#[derive(Debug, Clone, Default)]
pub struct K8sRequest {
    pub c: ContainerRequest,
    /// Failed pods before a Job gives up (a pod still waiting for its upstream has not failed).
    pub backoff_limit: u32,
    /// Seconds between checks while a node waits for its upstream.
    pub poll: u32,
    /// Every Job runs as soon as it is created: deadlines counted from creation bound the waits ([`Deadline`]).
    pub all_at_once: bool,
    /// The run's id (default: made up, [`new_run_id`]).
    pub run_id: Option<String>,
}

/// A run id for one export: the name prefix, the time (UTC) and a random part, so that two exports of the same
/// manifest, even in the same second, never share their records of failed attempts.
pub fn new_run_id(prefix: &str) -> String {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let noise = blake3::hash(format!("{}\0{}\0{prefix}", t.as_nanos(), std::process::id()).as_bytes()).to_hex();
    format!("{prefix}-{}-{}", chrono::Utc::now().format("%Y%m%dt%H%M%S"), &noise[..6])
}

/// A string as Kubernetes passes it to a container's command or args: Kubernetes expands `$(VAR)` there and reads
/// `$$` as `$`, so each `$` that starts one of those is doubled.
pub fn k8s_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        out.push(c);
        if c == '$' && matches!(it.peek(), Some('(') | Some('$')) {
            out.push('$');
        }
    }
    out
}

/// Checks what the pods carry: the image, namespace and service account (Kubernetes names), and no control
/// characters anywhere.
fn check_container(c: &ContainerRequest) -> anyhow::Result<()> {
    if c.image.is_empty() || c.image.chars().any(|ch| ch.is_control() || ch.is_whitespace()) {
        return Err(crate::error::Invalid(format!(
            "--image \"{}\": expected an image reference (no spaces or control characters)",
            c.image.escape_debug()
        ))
        .into());
    }
    for (flag, v) in [("--namespace", &c.namespace), ("--service-account", &c.service_account)] {
        if let Some(v) = v {
            let ok = !v.is_empty()
                && v.len() <= 253
                && v.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '-' || ch == '.')
                && v.starts_with(|ch: char| ch.is_ascii_alphanumeric())
                && v.ends_with(|ch: char| ch.is_ascii_alphanumeric());
            if !ok {
                return Err(crate::error::Invalid(format!(
                    "{flag} \"{}\": expected a Kubernetes name (lower-case letters, digits, `-` and `.`)",
                    v.escape_debug()
                ))
                .into());
            }
        }
    }
    Ok(())
}

/// Options for the Kubernetes-side objects.
#[derive(Debug, Clone, Default)]
pub struct Opts {
    pub image: String,
    pub prefix: String,
    pub namespace: Option<String>,
    pub service_account: Option<String>,
    pub parallelism: Option<u32>,
    pub retries: u32,
    pub backoff_limit: u32,
    pub poll: u32,
    pub all_at_once: bool,
    pub run_id: String,
}

fn opts(c: &ContainerRequest, ctx: &Ctx) -> Opts {
    let stem =
        ctx.manifest_file().file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "rmdistill".into());
    let prefix = super::sanitize(c.name.as_deref().unwrap_or(&stem), 20);
    Opts {
        image: c.image.clone(),
        prefix,
        namespace: c.namespace.clone(),
        service_account: c.service_account.clone(),
        ..Default::default()
    }
}

pub fn run_argo(a: ArgoRequest) -> anyhow::Result<()> {
    check_container(&a.c)?;
    let ctx = Ctx::load(&a.c.source, a.c.bin.as_deref(), a.c.manifest_path.as_deref(), true)?;
    // Argo substitutes `{{…}}` in task arguments and container args, with no way to escape it.
    super::refuse_marker(&ctx, &[("--image", &a.c.image)], "{{", "Argo Workflows")?;
    let o = Opts { parallelism: a.parallelism, retries: a.retries, ..opts(&a.c, &ctx) };
    let doc = workflow(&ctx.graph, &ctx.run, &o)?;
    super::emit(&(serde_json::to_string_pretty(&doc)? + "\n"), a.c.output.as_deref())
}

pub fn run_k8s(a: K8sRequest) -> anyhow::Result<()> {
    if a.poll == 0 {
        anyhow::bail!("--poll 0: give the seconds between checks for upstream results");
    }
    check_container(&a.c)?;
    let ctx = Ctx::load(&a.c.source, a.c.bin.as_deref(), a.c.manifest_path.as_deref(), true)?;
    let mut o = Opts { backoff_limit: a.backoff_limit, poll: a.poll, all_at_once: a.all_at_once, ..opts(&a.c, &ctx) };
    o.run_id = match a.run_id {
        Some(r) => {
            crate::exec::check_run_id(&r)?;
            r
        }
        None => new_run_id(&o.prefix),
    };
    let doc = jobs(&ctx.graph, &ctx.run, &o)?;
    super::emit(&(serde_json::to_string_pretty(&doc)? + "\n"), a.c.output.as_deref())
}

fn resources(r: &Req) -> Value {
    let mut limits = json!({"memory": format!("{}Mi", r.mem_mib)});
    if r.gpus > 0 {
        limits["nvidia.com/gpu"] = json!(r.gpus.to_string());
    }
    json!({"requests": {"cpu": r.cpus.to_string(), "memory": format!("{}Mi", r.mem_mib)}, "limits": limits})
}

fn labels(stage: Option<&str>) -> Value {
    let mut l = json!({"app.kubernetes.io/managed-by": "rmdistill"});
    if let Some(s) = stage {
        l["rmdistill.dev/stage"] = json!(super::sanitize(s, 63));
    }
    l
}

/// The Workflow.
pub fn workflow(g: &Graph, run: &RunSpec, o: &Opts) -> anyhow::Result<Value> {
    // Argo tasks depend on whole tasks, so a fan-out waits for all of its upstream tasks (a superset of what each
    // item needs): about one task per stage instead of one per node keeps large sweeps within Argo's limits.
    let groups = super::group(g, usize::MAX, true, false);
    let mut templates: Vec<Value> = Vec::new();
    let mut stage_template: Vec<(String, String)> = Vec::new(); // stage → template name
    let mut tasks: Vec<Value> = Vec::new();
    let stage_names = super::unique_names(
        &groups.iter().map(|gr| gr.stage.clone()).collect::<BTreeSet<_>>().into_iter().collect::<Vec<_>>(),
        50,
    );
    let stages: Vec<String> = groups.iter().map(|gr| gr.stage.clone()).collect::<BTreeSet<_>>().into_iter().collect();
    for gr in &groups {
        let tname = if let Some((_, t)) = stage_template.iter().find(|(s, _)| *s == gr.stage) {
            t.clone()
        } else {
            let t = format!("node-{}", stage_names[stages.iter().position(|s| *s == gr.stage).unwrap()]);
            let req = Req::of(&g.nodes[gr.nodes[0]].resources)?;
            let mut args: Vec<String> = run.argv("{{inputs.parameters.node}}").iter().map(|a| k8s_literal(a)).collect();
            let command = vec![args.remove(0)];
            templates.push(json!({
                "name": t,
                "inputs": {"parameters": [{"name": "node"}]},
                "metadata": {"labels": labels(Some(gr.stage.as_str()))},
                // IntOrString; the published schema types it as a string.
                "activeDeadlineSeconds": req.seconds.to_string(),
                "retryStrategy": {"limit": o.retries.to_string(), "retryPolicy": "OnFailure"},
                "container": {"image": o.image, "command": command, "args": args, "resources": resources(&req)},
            }));
            stage_template.push((gr.stage.clone(), t.clone()));
            t
        };
        let deps: BTreeSet<String> = gr.deps.iter().map(|d| groups[d.group()].name.clone()).collect();
        let mut task = json!({"name": gr.name, "template": tname});
        // The node name ends up in the container's args, where Kubernetes expands `$(…)`.
        if gr.nodes.len() == 1 {
            task["arguments"] =
                json!({"parameters": [{"name": "node", "value": k8s_literal(&g.nodes[gr.nodes[0]].name)}]});
        } else {
            task["arguments"] = json!({"parameters": [{"name": "node", "value": "{{item}}"}]});
            task["withItems"] = json!(gr.nodes.iter().map(|&n| k8s_literal(&g.nodes[n].name)).collect::<Vec<_>>());
        }
        if !deps.is_empty() {
            task["dependencies"] = json!(deps);
        }
        tasks.push(task);
    }
    let mut all = vec![json!({"name": "pipeline", "dag": {"tasks": tasks}})];
    all.extend(templates);
    let mut spec = json!({
        "entrypoint": "pipeline",
        "templates": all,
        "podGC": {"strategy": "OnPodSuccess"},
    });
    if let Some(p) = o.parallelism {
        spec["parallelism"] = json!(p);
    }
    if let Some(sa) = &o.service_account {
        spec["serviceAccountName"] = json!(sa);
    }
    let mut metadata = json!({
        "generateName": format!("{}-", o.prefix),
        "labels": labels(None),
        "annotations": {"rmdistill.dev/nodes": format!("{} total, {} cached, {} to run", g.total, g.cached, g.nodes.len())},
    });
    if let Some(ns) = &o.namespace {
        metadata["namespace"] = json!(ns);
    }
    Ok(json!({"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow", "metadata": metadata, "spec": spec}))
}

/// The shell loop a Kubernetes Job runs: `node run` until it stops answering 4 (upstream not stored yet), checking
/// every `poll` seconds, for at most `wait` seconds when given (counted as the sleeps between checks); then it gives
/// up, saying why. `node run` records its own failures in the store; an attempt that ends otherwise (killed when out
/// of memory, a panic) or is stopped (SIGTERM at a deadline or an eviction; `node run` runs in the background so that
/// the trap runs at once) is recorded by calling it again with `RMDISTILL_RECORD_EXIT` (a second record of one
/// attempt is never written). Codes 4 and 5 (an upstream node will never come) need no record of the wrapper's.
fn wait_loop(poll: u32, wait: Option<u64>, has_upstream: bool) -> String {
    let trap = "trap 'kill -TERM \"$c\" 2>/dev/null; wait \"$c\"; RMDISTILL_RECORD_EXIT=143 \"$@\"; exit 143' TERM; ";
    let once = "\"$@\" & c=$!; wait \"$c\"; rc=$?; if [ \"$rc\" -ne 4 ]; then \
                if [ \"$rc\" -ne 0 ] && [ \"$rc\" -ne 5 ]; then RMDISTILL_RECORD_EXIT=$rc \"$@\"; fi; exit \"$rc\"; fi; ";
    // (in the background too, so that a SIGTERM while waiting is recorded at once)
    let nap = format!(
        "echo \"rmdistill: upstream not stored yet; checking again in {poll}s\" >&2; sleep {poll} & c=$!; wait \"$c\"; "
    );
    let Some(wait) = wait else {
        return format!("{trap}while :; do {once}{nap}done");
    };
    let why = if has_upstream {
        format!(
            "upstream results still not stored after waiting ${{waited}}s, past the deadlines ({wait}s) of the Jobs that \
             produce them (annotation rmdistill.dev/depends-on): one of them failed or ran out of time"
        )
    } else {
        "its upstream results were stored when this Job was exported but are not now (removed from the store?); \
         export again"
            .to_string()
    };
    format!(
        "{trap}waited=0; while :; do {once}\
         if [ \"$waited\" -ge {wait} ]; then echo \"rmdistill: giving up: {why}\" >&2; exit 4; fi; \
         {nap}waited=$((waited + {poll})); done"
    )
}

/// Kubernetes' largest `activeDeadlineSeconds` (an int64).
const MAX_DEADLINE: u64 = i64::MAX as u64;

/// Time bounds of one node's Job, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// How long its pod waits for upstream results: the latest Job deadline among the nodes it reads from (0 for
    /// a node whose upstream is all stored). The Jobs are created together, so by then each of those Jobs has
    /// stored its result or stopped.
    pub wait: u64,
    /// One pod's limit (`template.spec.activeDeadlineSeconds`): the wait, one more check, and the node's time limit.
    pub pod: u64,
    /// The Job's limit (`spec.activeDeadlineSeconds`, counted from when the Job starts): the wait, one more check,
    /// and the node's time limit once per attempt (`backoffLimit` + 1).
    pub job: u64,
}

/// Each node's [`Deadline`], in the graph's (topological) order.
pub fn deadlines(g: &Graph, backoff_limit: u32, poll: u32) -> anyhow::Result<Vec<Deadline>> {
    let attempts = u64::from(backoff_limit) + 1;
    let mut out: Vec<Deadline> = Vec::with_capacity(g.nodes.len());
    for n in &g.nodes {
        let limit = Req::of(&n.resources)?.seconds;
        let wait = n.deps.iter().map(|&d| out[d].job).max().unwrap_or(0);
        let start = if n.deps.is_empty() { 0 } else { wait.saturating_add(u64::from(poll)) };
        let job = start.saturating_add(limit.saturating_mul(attempts)).min(MAX_DEADLINE);
        out.push(Deadline { wait, pod: start.saturating_add(limit).min(job), job });
    }
    Ok(out)
}

/// A `List` of batch/v1 Jobs, one per node, in topological order. Every Job has a deadline (see [`Deadline`]): a
/// node that runs past its time limit is stopped, and a node whose upstream Job failed stops waiting for it.
pub fn jobs(g: &Graph, run: &RunSpec, o: &Opts) -> anyhow::Result<Value> {
    let raw: Vec<String> = g.nodes.iter().map(|n| n.name.clone()).collect();
    let names = super::unique_names(&raw, 62 - o.prefix.len() - 7);
    let limits = deadlines(g, o.backoff_limit, o.poll)?;
    let mut items = Vec::new();
    for (i, n) in g.nodes.iter().enumerate() {
        let req = Req::of(&n.resources)?;
        // Without --all-at-once a Job may queue behind others, and a deadline counted from its creation would kill
        // it before it ran: only a pod that waits for nothing gets one (its node's limit), and waiting is unbounded.
        let dl = match (o.all_at_once, n.deps.is_empty()) {
            (true, _) => limits[i],
            (false, true) => Deadline { wait: 0, pod: req.seconds, job: 0 },
            (false, false) => Deadline { wait: 0, pod: 0, job: 0 },
        };
        let bounded = o.all_at_once || n.deps.is_empty();
        let name = format!("{}-{}", o.prefix, names[i]);
        let deps: Vec<&str> = n.deps.iter().map(|&d| g.nodes[d].name.as_str()).collect();
        // The node's command is passed to the loop as arguments ("$@"), never pasted into its text.
        let mut command = vec![
            "sh".to_string(),
            "-c".into(),
            wait_loop(o.poll, bounded.then_some(dl.wait), !n.deps.is_empty()),
            "rmdistill-node".into(),
        ];
        let attempts = u64::from(o.backoff_limit) + 1;
        command.extend(run.argv_with(&n.name, &[format!("--run-id={}", o.run_id), format!("--attempts={attempts}")]));
        let command: Vec<String> = command.iter().map(|a| k8s_literal(a)).collect();
        // Each pod is one attempt, named by the pod's name.
        let env = json!([{"name": "RMDISTILL_ATTEMPT", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]);
        let mut pod = json!({
            "restartPolicy": "Never",
            "containers": [{"name": "node", "image": o.image, "command": command, "env": env,
                "resources": resources(&req)}],
        });
        if bounded {
            pod["activeDeadlineSeconds"] = json!(dl.pod);
        }
        if let Some(sa) = &o.service_account {
            pod["serviceAccountName"] = json!(sa);
        }
        let mut metadata = json!({
            "name": name,
            "labels": labels(Some(n.stage.as_str())),
            "annotations": {"rmdistill.dev/node": n.name, "rmdistill.dev/depends-on": deps.join(" "),
                "rmdistill.dev/time-limit-seconds": req.seconds.to_string(), "rmdistill.dev/run": o.run_id},
        });
        if let Some(ns) = &o.namespace {
            metadata["namespace"] = json!(ns);
        }
        // Exit code 5: an upstream node will never be stored in this run, so no retry can help.
        let give_up = json!({"rules": [{"action": "FailJob",
            "onExitCodes": {"containerName": "node", "operator": "In", "values": [crate::error::exit::UPSTREAM_FAILED]}}]});
        let mut spec = json!({"backoffLimit": o.backoff_limit, "podFailurePolicy": give_up,
            "template": {"metadata": {"labels": labels(Some(n.stage.as_str()))}, "spec": pod}});
        if o.all_at_once {
            spec["activeDeadlineSeconds"] = json!(dl.job);
        }
        items.push(json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}));
    }
    Ok(json!({"apiVersion": "v1", "kind": "List", "items": items}))
}
