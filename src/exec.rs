//! The local executor and the cache logic every command shares.
//!
//! A node is resolved once its upstream nodes have outputs: its key record is built from their content hashes, and
//! it is a cache hit when an entry for the key exists and every blob it names is present. Otherwise it runs on a
//! worker (at most `jobs` at once): inputs are materialised and verified, the stage writes into a private scratch
//! directory, outputs are stored as blobs, and only then is the entry written create-only. A crash at any point
//! leaves no entry without its blobs, so the next run redoes exactly the unfinished nodes.

use crate::key::{self, InputRef, KEY_VERSION, KeyRecord};
use crate::plan::{Node, Plan};
use crate::progress::Progress;
use crate::store::{Corrupt, Entry, OutputRef, Store};
use rmdistill_stages::{ArtifactKind, Ctx, Device, InputArtifact, StageError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// Content hashes of external files, remembered by (path, size, mtime) so that a no-op run does not re-read
/// large datasets (as DVC's state database does).
pub struct ExternalHashes {
    file: PathBuf,
    map: Mutex<(BTreeMap<String, String>, bool)>,
}

impl ExternalHashes {
    pub fn open(local_dir: &Path) -> ExternalHashes {
        let file = local_dir.join("external-hashes.json");
        let map = std::fs::read(&file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        ExternalHashes { file, map: Mutex::new((map, false)) }
    }

    pub fn hash(&self, path: &Path) -> anyhow::Result<String> {
        if path.is_dir() {
            // A directory (e.g. a checkpoint) is addressed like a directory artifact: by its canonical listing.
            let tree = key::hash_tree(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            return Ok(blake3::hash(&tree.bytes()).to_hex().to_string());
        }
        let meta = std::fs::metadata(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let mtime =
            meta.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_nanos());
        let abs = path.canonicalize().unwrap_or(path.to_path_buf());
        let id = format!("{}\0{}\0{mtime}", abs.display(), meta.len());
        if let Some(h) = self.map.lock().unwrap().0.get(&id) {
            return Ok(h.clone());
        }
        let (h, _) = key::hash_file(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let mut m = self.map.lock().unwrap();
        m.0.insert(id, h.clone());
        m.1 = true;
        Ok(h)
    }

    pub fn save(&self) {
        let m = self.map.lock().unwrap();
        if m.1 {
            let tmp = self.file.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, serde_json::to_vec(&m.0).unwrap_or_default()).is_ok() {
                let _ = std::fs::rename(&tmp, &self.file);
            }
        }
    }
}

/// Builds a node's key record from its upstream outputs (all of which must be known).
pub fn record(
    plan: &Plan,
    i: usize,
    outputs: &[Option<BTreeMap<String, OutputRef>>],
    ext: &ExternalHashes,
) -> anyhow::Result<KeyRecord> {
    let n = &plan.nodes[i];
    let mut inputs = BTreeMap::new();
    for (slot, ups) in &n.inputs {
        let refs: Vec<InputRef> = ups
            .iter()
            .map(|u| {
                let o = outputs[u.node].as_ref().expect("upstream resolved first");
                InputRef { hash: o[u.output].hash.clone(), coords: plan.nodes[u.node].coords.clone() }
            })
            .collect();
        inputs.insert(slot.clone(), refs);
    }
    let mut externals = BTreeMap::new();
    for (p, path) in &n.externals {
        externals.insert(p.clone(), ext.hash(path)?);
    }
    Ok(KeyRecord {
        v: KEY_VERSION,
        stage_kind: n.kind.kind().to_string(),
        code: rmdistill_stages::port::code_identity(n.kind),
        params: n.params.clone(),
        inputs,
        externals,
    })
}

/// Scope under which node pointers are kept: the manifest's canonical path (not its contents, so that after an
/// edit `status` can still say what changed), so two manifests sharing a store keep separate histories.
pub fn scope(plan: &Plan) -> String {
    let p = plan.manifest.path();
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf()).display().to_string()
}

/// A cache hit: the entry for `key`, if it and every blob it names exist.
pub fn lookup(store: &Store, key: &str) -> anyhow::Result<Option<Entry>> {
    match store.get_entry(key)? {
        Some(e) if store.entry_complete(&e)? => Ok(Some(e)),
        _ => Ok(None),
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ran,
    Cached,
    Failed,
    Skipped,
    Pending,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: String,
    pub outcome: Outcome,
    pub key: Option<String>,
    pub seconds: f64,
    pub outputs: BTreeMap<String, OutputRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub run_id: String,
    pub ran: usize,
    pub cached: usize,
    pub failed: usize,
    pub skipped: usize,
    pub seconds: f64,
    pub nodes: Vec<NodeReport>,
}

pub struct RunOptions {
    pub jobs: usize,
    /// Nodes to run even when cached.
    pub force: Vec<usize>,
    /// Run only these nodes and what they need (all when empty).
    pub targets: Vec<usize>,
    /// Fail instead of running nodes other than the targets (for `node run`).
    pub upstream_must_be_cached: bool,
    /// `Cuda(_)` when GPUs are to be used: nodes of stages that want one get a GPU slot each.
    pub device: Device,
    /// Number of GPUs (GPU slots) when `device` is CUDA.
    pub gpus: usize,
}

struct NodeCtx<'a> {
    node: &'a Node,
    params: &'a Map<String, Value>,
    inputs: BTreeMap<String, Vec<InputArtifact>>,
    outputs: BTreeMap<String, PathBuf>,
    progress: &'a Progress,
    device: Device,
    threads: usize,
    empty: Vec<InputArtifact>,
}

impl Ctx for NodeCtx<'_> {
    fn params(&self) -> &Map<String, Value> {
        self.params
    }
    fn inputs(&self, slot: &str) -> &[InputArtifact] {
        self.inputs.get(slot).unwrap_or(&self.empty)
    }
    fn external(&self, param: &str) -> Option<&Path> {
        self.node.externals.get(param).map(PathBuf::as_path)
    }
    fn output_path(&self, name: &str) -> PathBuf {
        self.outputs
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("stage {} has no output {name}", self.node.kind.kind()))
    }
    fn progress(&self, done: u64, total: u64) {
        self.progress.progress(&self.node.name, done, total);
    }
    fn log(&self, message: &str) {
        self.progress.log(&self.node.name, message);
    }
    fn device(&self) -> Device {
        self.device
    }
    fn threads(&self) -> usize {
        self.threads
    }
}

/// Why a node execution did not produce an entry.
enum ExecError {
    /// An input blob is corrupt or missing: its producer must run again.
    Corrupt(Corrupt),
    Failed(String),
}

/// Runs one node's stage and stores its outputs and entry.
fn execute(
    plan: &Plan,
    store: &Store,
    i: usize,
    rec: &KeyRecord,
    key: &str,
    outputs: &[Option<BTreeMap<String, OutputRef>>],
    scratch_root: &Path,
    progress: &Progress,
    opts: &RunOptions,
    replace: bool,
    device: Device,
) -> Result<Entry, ExecError> {
    let n = &plan.nodes[i];
    let t0 = Instant::now();
    let fail = |e: anyhow::Error| match e.downcast::<Corrupt>() {
        Ok(c) => ExecError::Corrupt(c),
        Err(e) => ExecError::Failed(format!("{e:#}")),
    };
    let mut inputs: BTreeMap<String, Vec<InputArtifact>> = BTreeMap::new();
    for (slot, ups) in &n.inputs {
        for u in ups {
            let o = &outputs[u.node].as_ref().expect("resolved")[u.output];
            let path = store.materialize(o).map_err(fail)?;
            inputs.entry(slot.clone()).or_default().push(InputArtifact {
                path,
                hash: o.hash.clone(),
                node: plan.nodes[u.node].name.clone(),
                coords: plan.nodes[u.node].coords.clone(),
            });
        }
    }
    let scratch = scratch_root.join(format!("{i}-{}", &key[..12]));
    let _ = std::fs::remove_dir_all(&scratch);
    let mut out_paths = BTreeMap::new();
    for spec in n.kind.outputs() {
        let p = scratch.join(spec.name);
        match spec.kind {
            ArtifactKind::Dir => std::fs::create_dir_all(&p),
            ArtifactKind::File => std::fs::create_dir_all(&scratch),
        }
        .map_err(|e| ExecError::Failed(format!("cannot create scratch space {}: {e}", scratch.display())))?;
        out_paths.insert(spec.name.to_string(), p);
    }
    let threads = (std::thread::available_parallelism().map_or(1, |n| n.get()) / opts.jobs.max(1)).max(1);
    let ctx = NodeCtx {
        node: n,
        params: &n.params,
        inputs,
        outputs: out_paths.clone(),
        progress,
        device,
        threads,
        empty: Vec::new(),
    };
    // Grad mode is thread-local in libtorch and `tch::no_grad` does not restore it when its closure panics, so a
    // stage that panicked could leave it off for the next stage on this worker: every stage starts with it on.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| tch::with_grad(|| n.kind.run(&ctx))));
    let summary = match result {
        Ok(Ok(s)) => s,
        Ok(Err(StageError::Invalid { field, message })) => {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(ExecError::Failed(if field.is_empty() {
                message
            } else {
                format!("param `{field}`: {message}")
            }));
        }
        Ok(Err(StageError::Failed(m))) => {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(ExecError::Failed(m));
        }
        Err(panic) => {
            let _ = std::fs::remove_dir_all(&scratch);
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            return Err(ExecError::Failed(format!("stage `{}` panicked (a bug in rmdistill): {msg}", n.kind.kind())));
        }
    };
    let mut outs = BTreeMap::new();
    for spec in n.kind.outputs() {
        let p = &out_paths[spec.name];
        let ok = match spec.kind {
            ArtifactKind::File => p.is_file(),
            ArtifactKind::Dir => p.is_dir(),
        };
        if !ok {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(ExecError::Failed(format!(
                "stage `{}` did not write its output `{}`",
                n.kind.kind(),
                spec.name
            )));
        }
        outs.insert(spec.name.to_string(), store.put_output(p, spec.kind).map_err(fail)?);
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let entry = Entry {
        v: KEY_VERSION,
        key: key.to_string(),
        node: n.name.clone(),
        record: rec.clone(),
        outputs: outs,
        summary,
        created: chrono::Utc::now().to_rfc3339(),
        seconds: t0.elapsed().as_secs_f64(),
    };
    store.put_entry(&entry, replace).map_err(fail)
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes scratch directories left by runs that were killed.
fn clean_stale_scratch(tmp: &Path) {
    if let Ok(rd) = std::fs::read_dir(tmp) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if let Some(pid) = name.split('-').next().and_then(|p| p.parse::<u32>().ok()) {
                if !pid_alive(pid) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

pub fn new_run_id() -> String {
    format!("{}-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"), std::process::id())
}

enum State {
    Waiting,
    Queued,
    Running,
    Done,
    Failed,
    Skipped,
}

/// Executes a plan against a store.
pub fn run(plan: &Plan, store: &Store, opts: &RunOptions, progress: &Progress) -> anyhow::Result<Summary> {
    let t0 = Instant::now();
    let run_id = new_run_id();
    let n = plan.nodes.len();
    let tmp = store.local_dir().join("tmp");
    clean_stale_scratch(&tmp);
    let scratch_root = tmp.join(format!("{}-{run_id}", std::process::id()));
    let ext = ExternalHashes::open(store.local_dir());
    let scope = scope(plan);

    let wanted: Vec<bool> = if opts.targets.is_empty() {
        vec![true; n]
    } else {
        let mut w = vec![false; n];
        for &t in &opts.targets {
            for a in plan.ancestors_and_self(t) {
                w[a] = true;
            }
        }
        w
    };
    let mut force = vec![false; n];
    for &f in &opts.force {
        force[f] = true;
    }
    let dependents = plan.dependents();
    let mut state: Vec<State> = (0..n).map(|_| State::Waiting).collect();
    let mut outputs: Vec<Option<BTreeMap<String, OutputRef>>> = vec![None; n];
    let mut reports: Vec<NodeReport> = plan
        .nodes
        .iter()
        .map(|nd| NodeReport {
            node: nd.name.clone(),
            outcome: Outcome::Pending,
            key: None,
            seconds: 0.0,
            outputs: BTreeMap::new(),
            error: None,
        })
        .collect();
    let mut records: Vec<Option<KeyRecord>> = vec![None; n];
    let mut replace = vec![false; n];
    let mut attempts = vec![0u32; n];
    let mut recomputing: std::collections::HashSet<String> = Default::default();
    let mut queue: std::collections::VecDeque<usize> = Default::default();
    let mut running = 0usize;
    let mut cpu_running = 0usize;
    let mut gpu_busy = vec![false; if let Device::Cuda(_) = opts.device { opts.gpus.max(1) } else { 0 }];
    let mut on_device = vec![Device::Cpu; n];
    let journal = |status: &str, reports: &[NodeReport]| {
        let j = json!({
            "run_id": run_id, "manifest": plan.manifest.path().display().to_string(), "status": status,
            "host": std::env::var("HOSTNAME").unwrap_or_default(), "pid": std::process::id(),
            "updated": chrono::Utc::now().to_rfc3339(),
            "nodes": reports.iter().filter(|r| r.outcome != Outcome::Pending).collect::<Vec<_>>(),
        });
        store.put_journal(&run_id, &j)
    };
    let mut fatal: Option<anyhow::Error> = None;

    std::thread::scope(|s| -> anyhow::Result<()> {
        type Job = (usize, KeyRecord, String, Vec<Option<BTreeMap<String, OutputRef>>>, bool, Device);
        let (job_tx, job_rx) = std::sync::mpsc::channel::<Job>();
        let job_rx = std::sync::Arc::new(Mutex::new(job_rx));
        let (res_tx, res_rx) = std::sync::mpsc::channel::<(usize, Result<Entry, ExecError>)>();
        for _ in 0..opts.jobs.max(1) + gpu_busy.len() {
            let job_rx = job_rx.clone();
            let res_tx = res_tx.clone();
            let scratch_root = &scratch_root;
            s.spawn(move || {
                loop {
                    let job = job_rx.lock().unwrap().recv();
                    let Ok((i, rec, key, outs, replace, device)) = job else { break };
                    let r = execute(plan, store, i, &rec, &key, &outs, scratch_root, progress, opts, replace, device);
                    if res_tx.send((i, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(res_tx);
        let mut journaled = false;

        loop {
            // Resolve every node whose upstream is known: cache hit, or queue it.
            let mut changed = true;
            while changed {
                changed = false;
                for i in 0..n {
                    if !wanted[i] || !matches!(state[i], State::Waiting) {
                        continue;
                    }
                    let deps: Vec<usize> = plan.nodes[i].deps().collect();
                    if deps.iter().any(|&d| matches!(state[d], State::Failed | State::Skipped)) {
                        state[i] = State::Skipped;
                        reports[i].outcome = Outcome::Skipped;
                        let failed: Vec<&str> = deps.iter().filter(|&&d| matches!(state[d], State::Failed | State::Skipped)).map(|&d| plan.nodes[d].name.as_str()).collect();
                        reports[i].error = Some(format!("upstream failed: {}", failed.join(", ")));
                        progress.finished(&plan.nodes[i].name, "skipped", &format!("(upstream {} failed)", failed.join(", ")));
                        changed = true;
                        continue;
                    }
                    if !deps.iter().all(|&d| matches!(state[d], State::Done)) {
                        continue;
                    }
                    changed = true;
                    let rec = match record(plan, i, &outputs, &ext) {
                        Ok(r) => r,
                        Err(e) => {
                            state[i] = State::Failed;
                            reports[i].outcome = Outcome::Failed;
                            reports[i].error = Some(format!("{e:#}"));
                            progress.finished(&plan.nodes[i].name, "failed", &format!("{e:#}"));
                            continue;
                        }
                    };
                    let key = rec.key();
                    reports[i].key = Some(key.clone());
                    let hit = if force[i] { None } else { lookup(store, &key)? };
                    if let Some(e) = hit {
                        if store.last_key(&scope, &plan.nodes[i].name)?.as_deref() != Some(key.as_str()) {
                            store.set_last_key(&scope, &plan.nodes[i].name, &key)?;
                        }
                        outputs[i] = Some(e.outputs.clone());
                        reports[i].outputs = e.outputs;
                        reports[i].outcome = Outcome::Cached;
                        state[i] = State::Done;
                        progress.finished(&plan.nodes[i].name, "cached", "");
                    } else if opts.upstream_must_be_cached && !opts.targets.contains(&i) {
                        return Err(crate::error::NotReady(format!(
                            "upstream node {} is not in the store yet (run it first; a scheduler orders this by dependencies)",
                            plan.nodes[i].name
                        ))
                        .into());
                    } else {
                        // An entry whose blobs are gone or corrupt is replaced rather than trusted.
                        replace[i] = replace[i] || store.get_entry(&key)?.is_some();
                        records[i] = Some(rec);
                        state[i] = State::Queued;
                        queue.push_back(i);
                    }
                }
            }
            if !journaled && !queue.is_empty() {
                journal("running", &reports)?;
                journaled = true;
            }
            // CPU nodes share `jobs` slots; nodes of GPU stages take a free GPU each when there are GPUs.
            let mut k = 0;
            while k < queue.len() {
                let i = queue[k];
                let gpu = if plan.nodes[i].kind.wants_gpu() { gpu_busy.iter().position(|b| !b) } else { None };
                let device = match gpu {
                    Some(g) => Device::Cuda(g),
                    None if cpu_running < opts.jobs.max(1) => Device::Cpu,
                    None => {
                        k += 1;
                        continue;
                    }
                };
                queue.remove(k);
                match gpu {
                    Some(g) => gpu_busy[g] = true,
                    None => cpu_running += 1,
                }
                on_device[i] = device;
                let rec = records[i].clone().expect("queued nodes have records");
                let key = rec.key();
                progress.started(&plan.nodes[i].name);
                state[i] = State::Running;
                running += 1;
                job_tx.send((i, rec, key, outputs.clone(), replace[i], device)).expect("workers alive");
            }
            if running == 0 {
                break;
            }
            let (i, res) = res_rx.recv().expect("a worker answers");
            running -= 1;
            match on_device[i] {
                Device::Cuda(g) => gpu_busy[g] = false,
                Device::Cpu => cpu_running -= 1,
            }
            match res {
                Ok(e) => {
                    let secs = e.seconds;
                    store.set_last_key(&scope, &plan.nodes[i].name, &e.key)?;
                    outputs[i] = Some(e.outputs.clone());
                    reports[i].outputs = e.outputs;
                    reports[i].outcome = Outcome::Ran;
                    reports[i].seconds = secs;
                    state[i] = State::Done;
                    progress.finished(&plan.nodes[i].name, "done", &format!("{secs:.2}s"));
                }
                Err(ExecError::Corrupt(c)) => {
                    attempts[i] += 1;
                    if !store.discard_if_corrupt(&c.hash)? {
                        // Already replaced by a recomputation: read it again.
                        state[i] = State::Waiting;
                        reports[i].outcome = Outcome::Pending;
                        continue;
                    }
                    progress.message(&format!("warning: {c}; discarding it and recomputing what produced it"));
                    // Every finished node that produced this blob runs again; the reader waits for it. A reader
                    // that hits a blob already being recomputed just waits too.
                    let producers: Vec<usize> = (0..n)
                        .filter(|&p| outputs[p].as_ref().is_some_and(|o| o.values().any(|r| r.hash == c.hash)))
                        .collect();
                    if (producers.is_empty() && !recomputing.contains(&c.hash)) || attempts[i] > 3 {
                        state[i] = State::Failed;
                        reports[i].outcome = Outcome::Failed;
                        reports[i].error = Some(c.to_string());
                        progress.finished(&plan.nodes[i].name, "failed", &c.to_string());
                    } else {
                        recomputing.insert(c.hash.clone());
                        for p in producers {
                            outputs[p] = None;
                            force[p] = true;
                            replace[p] = true;
                            state[p] = State::Waiting;
                            reports[p].outcome = Outcome::Pending;
                            // Queued readers of the discarded blob wait for the producer again.
                            for &d in &dependents[p] {
                                if matches!(state[d], State::Queued) {
                                    queue.retain(|&q| q != d);
                                    state[d] = State::Waiting;
                                }
                            }
                        }
                        state[i] = State::Waiting;
                        reports[i].outcome = Outcome::Pending;
                    }
                }
                Err(ExecError::Failed(msg)) => {
                    state[i] = State::Failed;
                    reports[i].outcome = Outcome::Failed;
                    reports[i].error = Some(msg.clone());
                    progress.finished(&plan.nodes[i].name, "failed", &msg);
                }
            }
        }
        drop(job_tx);
        Ok(())
    })
    .unwrap_or_else(|e| fatal = Some(e));
    ext.save();
    let _ = std::fs::remove_dir_all(&scratch_root);
    if let Some(e) = fatal {
        return Err(e);
    }

    let count = |o: Outcome| reports.iter().filter(|r| r.outcome == o).count();
    let summary = Summary {
        run_id: run_id.clone(),
        ran: count(Outcome::Ran),
        cached: count(Outcome::Cached),
        failed: count(Outcome::Failed),
        skipped: count(Outcome::Skipped),
        seconds: t0.elapsed().as_secs_f64(),
        nodes: reports.into_iter().enumerate().filter(|(i, _)| wanted[*i]).map(|(_, r)| r).collect(),
    };
    if summary.ran + summary.failed > 0 {
        journal(if summary.failed > 0 { "failed" } else { "succeeded" }, &summary.nodes)?;
    }
    Ok(summary)
}

/// One node's key as the store determines it now.
pub enum Resolved {
    /// The key record, the key, and the cache hit if there is one.
    Known { record: KeyRecord, key: String, hit: Option<Entry> },
    /// Upstream nodes whose outputs are not stored yet, so this node's key is not determined.
    Undetermined { missing: Vec<String> },
}

/// Resolves one node's key against the store, reading only the nodes it depends on (not the whole plan).
pub fn resolve_node(plan: &Plan, store: &Store, target: usize) -> anyhow::Result<Resolved> {
    let ext = ExternalHashes::open(store.local_dir());
    let mut outputs: Vec<Option<BTreeMap<String, OutputRef>>> = vec![None; plan.nodes.len()];
    for i in plan.ancestors_and_self(target) {
        let missing: Vec<String> =
            plan.nodes[i].deps().filter(|&d| outputs[d].is_none()).map(|d| plan.nodes[d].name.clone()).collect();
        if !missing.is_empty() {
            if i == target {
                ext.save();
                return Ok(Resolved::Undetermined { missing });
            }
            continue;
        }
        let record = record(plan, i, &outputs, &ext)?;
        let key = record.key();
        let hit = lookup(store, &key)?;
        if i == target {
            ext.save();
            return Ok(Resolved::Known { record, key, hit });
        }
        outputs[i] = hit.map(|e| e.outputs);
    }
    unreachable!("a node is among its own ancestors")
}

/// The stored entry of a node for the current manifest, or an error saying to run it first.
pub fn stored_entry(plan: &Plan, store: &Store, target: usize) -> anyhow::Result<Entry> {
    match resolve_node(plan, store, target)? {
        Resolved::Known { hit: Some(e), .. } => Ok(e),
        _ => anyhow::bail!(
            "{} has no stored result for the current manifest; run it first (`rmdistill status {}` says why)",
            plan.nodes[target].name,
            plan.manifest.path().display()
        ),
    }
}

/// What `status` says of one node.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    pub node: String,
    /// "cached", "run" (would run), or "blocked" (waits on an upstream that would run).
    pub state: String,
    pub key: Option<String>,
    pub reasons: Vec<String>,
}

/// Why each node would or would not run, without running anything.
pub fn status(plan: &Plan, store: &Store) -> anyhow::Result<Vec<NodeStatus>> {
    let ext = ExternalHashes::open(store.local_dir());
    let scope = scope(plan);
    let mut outputs: Vec<Option<BTreeMap<String, OutputRef>>> = vec![None; plan.nodes.len()];
    let mut out = Vec::new();
    for (i, n) in plan.nodes.iter().enumerate() {
        let pending: Vec<&str> = n
            .deps()
            .filter(|&d| outputs[d].is_none())
            .map(|d| plan.nodes[d].name.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if !pending.is_empty() {
            out.push(NodeStatus {
                node: n.name.clone(),
                state: "blocked".into(),
                key: None,
                reasons: vec![format!(
                    "waits on upstream {} (runs again only if their outputs change)",
                    pending.join(", ")
                )],
            });
            continue;
        }
        let rec = record(plan, i, &outputs, &ext)?;
        let key = rec.key();
        if let Some(e) = lookup(store, &key)? {
            outputs[i] = Some(e.outputs);
            out.push(NodeStatus { node: n.name.clone(), state: "cached".into(), key: Some(key), reasons: vec![] });
            continue;
        }
        let reasons = why_run(store, &scope, &n.name, &rec, &key)?;
        out.push(NodeStatus { node: n.name.clone(), state: "run".into(), key: Some(key), reasons });
    }
    ext.save();
    Ok(out)
}

/// Why a node whose key has no complete entry must run.
pub fn why_run(store: &Store, scope: &str, node: &str, rec: &KeyRecord, key: &str) -> anyhow::Result<Vec<String>> {
    if let Some(why) = store.incomplete_reason(key) {
        return Ok(vec![why]);
    }
    let Some(last) = store.last_key(scope, node)? else {
        return Ok(vec!["never run with this store".into()]);
    };
    match store.get_entry(&last)? {
        Some(old) => {
            let d = rec.diff(&old.record);
            Ok(if d.is_empty() { vec!["key record differs from the last run's".into()] } else { d })
        }
        None => Ok(vec![format!("the last run's entry ({}) is gone from the store", key::short(&last))]),
    }
}

/// Rows of a node table for `--json` consumers and the text views.
pub fn node_map(plan: &Plan) -> HashMap<&str, usize> {
    plan.nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect()
}
