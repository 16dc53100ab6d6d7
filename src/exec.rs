//! The local executor and the cache logic every command shares.
//!
//! A node is resolved once its upstream nodes have outputs: its key record is built from their content hashes, and
//! it is a cache hit when an entry for the key exists and every blob it names is present. Otherwise it runs (at most
//! `jobs` at once, plus one per GPU): inputs are materialised and verified, the stage writes into a private scratch
//! directory — in this process for pure stages, in an `rmdistill-worker` process of its own for stages on libtorch
//! ([`crate::worker`]) —, outputs are stored as blobs, and only then is the entry written create-only. A crash at any
//! point leaves no entry without its blobs, so the next run redoes exactly the unfinished nodes.
//!
//! [`run`] is a per-node state machine: each node's [`NodeRun`] (state, key record, outputs, attempts, device) is the
//! one source of truth; a node is resolved when the count of its unfinished upstream nodes reaches zero, so no round
//! rescans the plan.

use crate::key::{self, InputRef, KEY_VERSION, KeyRecord};
use crate::node_ctx;
use crate::plan::Plan;
use crate::progress::Progress;
use crate::store::{Corrupt, Entry, OutputRef, Store};
use rmdistill_stages::{ArtifactKind, BindInputs, Device, InputArtifact, Runs, StageError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// Content hashes of external files, remembered by their path and stat identity ([`StatId`]) so that a no-op run
/// does not re-read large datasets (as DVC's state database does).
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

    /// The content hash of `path`, and its stat identity ([`Ident`]) taken before its bytes were hashed: unchanged
    /// later, the file (or directory) still holds the bytes that were hashed.
    fn hash(&self, path: &Path) -> anyhow::Result<(String, Ident)> {
        let cannot = |e: std::io::Error| anyhow::anyhow!("cannot read {}: {e}", path.display());
        let stat = match Ident::of(path).map_err(cannot)? {
            dir @ Ident::Dir(_) => return Ok((hash_dir(path).map_err(cannot)?, dir)),
            Ident::File(stat) => stat,
        };
        let abs = path.canonicalize().unwrap_or(path.to_path_buf());
        // the whole identity: a file replaced with the same size and mtime (`cp -p`, `rsync -t`) is another file
        let StatId { dev, ino, size, mtime_ns, ctime_ns } = stat;
        let id = format!("{}\0{size}\0{mtime_ns}\0{dev}\0{ino}\0{ctime_ns}", abs.display());
        if let Some(h) = self.map.lock().unwrap().0.get(&id) {
            return Ok((h.clone(), Ident::File(stat)));
        }
        let (h, _) = key::hash_file(path).map_err(cannot)?;
        let mut m = self.map.lock().unwrap();
        m.0.insert(id, h.clone());
        m.1 = true;
        Ok((h, Ident::File(stat)))
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

/// A directory external (e.g. a checkpoint) is addressed like a directory artifact: by its canonical listing.
fn hash_dir(path: &Path) -> std::io::Result<String> {
    Ok(blake3::hash(&key::hash_external_tree(path)?.bytes()).to_hex().to_string())
}

/// A file's hash read through `read` rather than a memory map: the file is re-hashed because it changed, and a
/// mapped file cut short under the map would kill this process with SIGBUS.
fn hash_file_read(path: &Path) -> std::io::Result<String> {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path)?)?;
    Ok(h.finalize().to_hex().to_string())
}

/// A file as `stat` gives it: device, inode, size, and modification and status-change times in nanoseconds. A write
/// changes mtime and ctime, a replacement (a rename onto the path, a new download) the inode and ctime, and ctime
/// cannot be set back by a user, so an unchanged identity means unchanged bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct StatId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl StatId {
    fn of(meta: &std::fs::Metadata) -> StatId {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        StatId {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// One external file of a node as its key saw it: the param that names it, its path, the content hash its key
/// holds, and its stat identity when it was hashed. The stage reads the file itself later, so before the node starts
/// and again before its outputs are stored, [`Watched::check`] makes sure it still holds those bytes: a file edited or
/// replaced meanwhile would leave the other version's output under this version's key.
#[derive(Clone, Debug)]
struct Watched {
    param: String,
    path: PathBuf,
    hash: String,
    id: Ident,
}

/// What `stat` says of an external: a file's [`StatId`], or every file of a directory (by relative path) with its
/// own. Taken before the bytes are hashed, so that an unchanged identity later means the bytes hashed are there.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ident {
    File(StatId),
    Dir(Vec<(String, StatId)>),
}

impl Ident {
    fn of(path: &Path) -> std::io::Result<Ident> {
        let meta = std::fs::metadata(path)?;
        if !meta.is_dir() {
            return Ok(Ident::File(StatId::of(&meta)));
        }
        // the files `hash_dir` hashes, each with its identity
        // a link to a file counts as the file (`hash_external_tree`): its target's identity, which re-pointing the
        // link changes too
        let files = key::tree_files(path, true)?
            .into_iter()
            .map(|(rel, p)| Ok((rel, StatId::of(&std::fs::metadata(&p)?))))
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Ident::Dir(files))
    }

    fn is_dir(&self) -> bool {
        matches!(self, Ident::Dir(_))
    }
}

/// When [`Watched::check`] looks: before the node starts, or after it ran and before its outputs are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Moment {
    Queued,
    Ran,
}

impl Watched {
    /// Ok when the file (or directory) still holds what the key hashed. An unchanged stat identity says so with
    /// `stat` alone (`Ok(false)`). Before the node starts, a changed identity is hashed again, and the same bytes
    /// pass (`Ok(true)`; the new identity is kept, for the check after the run). After the run, a changed identity
    /// fails even when the bytes hash as before: it was written while the stage may have been reading it, and a swap
    /// to other bytes and back (A → B → A) would have fed the stage B under A's key (kernels before 6.13 may stamp
    /// writes within one clock tick alike, so a swap and back within 1–10 ms can pass there). Otherwise the message
    /// names the param, the path and what changed.
    fn check(&mut self, moment: Moment) -> Result<bool, String> {
        let when = match moment {
            Moment::Queued => "was queued",
            Moment::Ran => "ran",
        };
        let changed = |what: String| {
            format!(
                "param `{}`: {} changed while the node {when} ({what}): its output would not match its key, so \
                 nothing was stored for it — run again",
                self.param,
                self.path.display()
            )
        };
        let id = Ident::of(&self.path).map_err(|e| changed(format!("it cannot be read now: {e}")))?;
        if id == self.id {
            return Ok(false);
        }
        let hash = match (&id, self.id.is_dir()) {
            (Ident::File(_), false) => hash_file_read(&self.path),
            (Ident::Dir(_), true) => hash_dir(&self.path),
            (Ident::Dir(_), false) => return Err(changed("it is a directory now".into())),
            (Ident::File(_), true) => return Err(changed("it is not a directory now".into())),
        }
        .map_err(|e| changed(format!("it cannot be read now: {e}")))?;
        if hash != self.hash {
            return Err(changed(format!(
                "its content hashes to {} now, its key holds {}",
                key::short(&hash),
                key::short(&self.hash)
            )));
        }
        if moment == Moment::Ran {
            return Err(changed(
                "it was written to or replaced, and holds its key's bytes again now, but the stage may have read it \
                 in between"
                    .into(),
            ));
        }
        self.id = id;
        Ok(true)
    }
}

/// Checks every external file of a node ([`Watched::check`]); the first that changed fails it.
fn check_externals(watched: &mut [Watched], moment: Moment) -> Result<(), String> {
    watched.iter_mut().try_for_each(|w| w.check(moment).map(|_| ()))
}

/// Builds a node's key record from its upstream outputs (all of which must be known).
pub fn record(
    plan: &Plan,
    store: &Store,
    i: usize,
    outputs: &[Option<BTreeMap<String, OutputRef>>],
    ext: &ExternalHashes,
) -> anyhow::Result<KeyRecord> {
    Ok(record_with(plan, store, i, &|u| outputs[u].as_ref(), ext)?.0)
}

/// [`record`] with the upstream outputs looked up by node index, and the node's external files as the key saw them
/// (to check before its outputs are stored that the stage read those bytes). A node that binds one of its stage's
/// binding slots (`policy`'s `selection`) is keyed by the parameters the stage binds from it, without the slot
/// ([`rmdistill_stages::Stage::bind`]); it then runs with exactly what its key records.
fn record_with<'o>(
    plan: &Plan,
    store: &Store,
    i: usize,
    outputs: &dyn Fn(usize) -> Option<&'o BTreeMap<String, OutputRef>>,
    ext: &ExternalHashes,
) -> anyhow::Result<(KeyRecord, Vec<Watched>)> {
    let n = &plan.nodes[i];
    let mut inputs = BTreeMap::new();
    for (slot, ups) in &n.inputs {
        let refs: Vec<InputRef> = ups
            .iter()
            .map(|u| {
                let o = outputs(u.node).expect("upstream resolved first");
                let up = &plan.nodes[u.node];
                InputRef { hash: o[u.output].hash.clone(), node: up.name.clone(), coords: up.coords.clone() }
            })
            .collect();
        inputs.insert(slot.clone(), refs);
    }
    let mut externals = BTreeMap::new();
    let mut watched = Vec::new();
    for (p, path) in &n.externals {
        let (hash, id) = ext.hash(path)?;
        externals.insert(p.clone(), hash.clone());
        watched.push(Watched { param: p.clone(), path: path.clone(), hash, id });
    }
    let binding: Vec<&str> = n.kind.binding_slots().iter().copied().filter(|s| n.inputs.contains_key(*s)).collect();
    let params = if binding.is_empty() {
        n.params.clone()
    } else {
        let bound = n.kind.bind(&n.params, &Binding { plan, store, i, outputs }).map_err(|e| match e {
            StageError::Invalid { field, message } => anyhow::anyhow!("param `{field}`: {message}"),
            StageError::Failed(m) => anyhow::anyhow!("binding parameters from {}: {m}", binding.join(", ")),
        })?;
        for slot in binding {
            inputs.remove(slot);
        }
        bound
    };
    let record = KeyRecord {
        v: KEY_VERSION,
        stage_kind: n.kind.kind().to_string(),
        code: rmdistill_stages::port::code_identity(n.kind).to_string(),
        params,
        inputs,
        externals,
    };
    Ok((record, watched))
}

/// A node's inputs as [`rmdistill_stages::Stage::bind`] reads them: coordinates from the plan, artifacts from the
/// store only when asked for.
struct Binding<'a, 'o> {
    plan: &'a Plan,
    store: &'a Store,
    i: usize,
    outputs: &'a dyn Fn(usize) -> Option<&'o BTreeMap<String, OutputRef>>,
}

impl Binding<'_, '_> {
    fn ups(&self, slot: &str) -> &[crate::plan::Upstream] {
        self.plan.nodes[self.i].inputs.get(slot).map(Vec::as_slice).unwrap_or_default()
    }
}

impl BindInputs for Binding<'_, '_> {
    fn coords(&self, slot: &str) -> Vec<&BTreeMap<String, Value>> {
        self.ups(slot).iter().map(|u| &self.plan.nodes[u.node].coords).collect()
    }
    fn open(&self, slot: &str) -> Result<Vec<InputArtifact>, StageError> {
        self.ups(slot)
            .iter()
            .map(|u| {
                let o = &(self.outputs)(u.node).expect("upstream resolved first")[u.output];
                Ok(node_ctx::input_artifact(self.plan, self.store, o, u.node)?)
            })
            .collect()
    }
}

/// Why an upstream node's result will never come in this run, from its failed attempts: one gave up on its own
/// upstream, or as many failed as its Job makes. None while it may still come.
fn never_coming(failed: &[crate::store::FailedAttempt], a: &Attempt) -> Option<String> {
    if let Some(f) = failed.iter().find(|f| f.given_up) {
        return Some(format!("its Job gave up ({}): {}", f.at, f.error));
    }
    let last = failed.last()?;
    (failed.len() as u64 >= u64::from(a.attempts))
        .then(|| format!("all {} attempts of its Job failed (the last at {}: {})", failed.len(), last.at, last.error))
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

/// [`lookup`] for a runner that needs only the outputs of a hit (the no-op path: no key record or summary parsed).
pub fn lookup_outputs(store: &Store, key: &str) -> anyhow::Result<Option<BTreeMap<String, OutputRef>>> {
    Ok(lookup_head(store, key)?.map(|h| h.outputs))
}

/// [`lookup_outputs`] with the rest of the entry's head (the machine that produced it).
fn lookup_head(store: &Store, key: &str) -> anyhow::Result<Option<crate::store::EntryHead>> {
    match store.get_entry_head(key)? {
        Some(h) if store.outputs_complete(&h.key, &h.node, &h.outputs)? => Ok(Some(h)),
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
    /// For a cached node of a libtorch stage, the machine its stored result was produced on, when another than
    /// this one ([`crate::store::machine`]): its numbers differ from this machine's in their last bits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub other_machine: Option<String>,
    /// What the stage warned of when it ran: in this run, or (a cached node) when its stored result was made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl Summary {
    /// A note on cached libtorch results computed on other kinds of machine or with other settings, if any: how
    /// many, and where.
    pub fn other_machines_note(&self) -> Option<String> {
        let by = crate::store::count_machines(self.nodes.iter().filter_map(|n| n.other_machine.as_deref()));
        let n: usize = by.iter().map(|(_, c)| c).sum();
        (n > 0).then(|| {
            // one CPU thread is the description's default, left unsaid; here it is what may differ
            // what follows the machine's "(arch)" is the settings (a CPU's own name may hold " with ")
            let said = |m: &str| if m.contains(") with ") { m.to_string() } else { format!("{m} with 1 thread") };
            let list: Vec<String> = by.iter().map(|(m, c)| format!("{c} on {}", said(m))).collect();
            format!(
                "{n} cached result(s) of libtorch stages were produced on another kind of machine or with other \
                 settings than this run's ({}): {}. Their numbers differ from what this run computes in the last \
                 bits; a store of results computed here, this way, reproduces exactly",
                said(&self.computed_on),
                list.join(", ")
            )
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Summary {
    pub run_id: String,
    pub ran: usize,
    pub cached: usize,
    pub failed: usize,
    pub skipped: usize,
    pub seconds: f64,
    /// How this run's libtorch nodes compute on the CPU ([`crate::store::computed_on`]): the machine, and the
    /// threads per node and kernel pins where they are not the default.
    #[serde(default)]
    pub computed_on: String,
    pub nodes: Vec<NodeReport>,
}

/// Where a queued node runs: a free GPU for a node that wants one, else a free CPU slot, else nothing yet. Under
/// `--device cuda` a node that wants a GPU waits for one instead of taking a CPU slot: the user sized its models for
/// a GPU (SmolLM2 training steps take seconds on a GPU and minutes on a CPU).
fn pick_slot(wants_gpu: bool, free_gpu: Option<usize>, cpu_free: bool, request: DeviceRequest) -> Option<Device> {
    match free_gpu {
        Some(g) => Some(Device::Cuda(g)),
        None if wants_gpu && request == DeviceRequest::Cuda => None,
        None if cpu_free => Some(Device::Cpu),
        None => None,
    }
}

/// Which device torch stages may use: `cpu`, `cuda` (an error where no CUDA device is usable) or `auto`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceRequest {
    Cpu,
    Auto,
    Cuda,
}

impl std::str::FromStr for DeviceRequest {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "auto" => DeviceRequest::Auto,
            "cpu" => DeviceRequest::Cpu,
            "cuda" | "gpu" => DeviceRequest::Cuda,
            other => anyhow::bail!("unknown device {other:?} (expected auto, cpu, or cuda; gpu is the same as cuda)"),
        })
    }
}

pub struct RunOptions {
    pub jobs: usize,
    /// Nodes to run even when cached.
    pub force: Vec<usize>,
    /// Run only these nodes and what they need (all when empty).
    pub targets: Vec<usize>,
    /// Fail instead of running nodes other than the targets (for `node run`).
    pub upstream_must_be_cached: bool,
    /// Start no node after the first failure (`run --fail-fast`): the nodes not started are reported as skipped.
    pub fail_fast: bool,
    /// Where nodes of stages that want a GPU run. With `auto` or `cuda` the worker is asked once, when the first
    /// such node must run, how many CUDA devices there are; each GPU is then a slot of its own.
    pub device: DeviceRequest,
    /// `node run` as one attempt of a Job of an exported run with nothing to order its Jobs (`export k8s`): an
    /// upstream node whose attempts in that run have all failed is reported as never coming ([`UpstreamFailed`]).
    pub attempt: Option<Attempt>,
}

/// One attempt (a pod) of a node's Job in an exported run ([`crate::store::Store::record_attempt`]).
#[derive(Debug, Clone)]
pub struct Attempt {
    /// The run's id, fixed when the Jobs were exported.
    pub run: String,
    /// Attempts a Job makes before it fails (`backoffLimit` + 1).
    pub attempts: u32,
    /// This attempt's id (the pod's name).
    pub id: String,
}

/// A run id names a folder of the store: 1 to 64 letters, digits, `-`, `_` or `.`, not starting with `.`.
pub fn check_run_id(run: &str) -> Result<(), crate::error::Invalid> {
    let ok = !run.is_empty()
        && run.len() <= 64
        && run.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !run.starts_with('.');
    if ok {
        return Ok(());
    }
    Err(crate::error::Invalid(format!(
        "--run-id {}: expected 1 to 64 letters, digits, `-`, `_` or `.`, not starting with `.`",
        crate::error::quoted(run)
    )))
}

/// An upstream node of `node run` will never be stored in this exported run: every attempt of its Job failed, or it
/// gave up on its own upstream (exit code 5).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UpstreamFailed(pub String);

/// Why a node execution did not produce an entry.
enum ExecError {
    /// An input blob is corrupt or missing: its producer must run again.
    Corrupt(Corrupt),
    Failed(String),
}

/// What one execution of a node needs, handed to the thread that runs it.
struct Task {
    i: usize,
    record: KeyRecord,
    key: String,
    /// Slot → the upstream outputs bound to it, in binding order.
    inputs: Vec<(String, OutputRef, usize)>,
    replace: bool,
    device: Device,
    threads: usize,
    /// The node's external files as its key saw them, checked before it starts and before its outputs are stored.
    watched: Vec<Watched>,
}

/// Runs one node's stage (in this process, or in a worker process for stages on libtorch) and stores its outputs
/// and entry. The stage reads the node's external files itself, so they are checked against the hashes its key
/// holds right before it starts and again after it ran, before anything of it is stored: a file edited or replaced
/// meanwhile fails the node instead of leaving the other version's output under this version's key.
fn execute(
    plan: &Plan,
    store: &Store,
    mut t: Task,
    scratch_root: &Path,
    progress: &Progress,
) -> Result<Entry, ExecError> {
    let n = &plan.nodes[t.i];
    let t0 = Instant::now();
    let fail = |e: anyhow::Error| match e.downcast::<Corrupt>() {
        Ok(c) => ExecError::Corrupt(c),
        Err(e) => ExecError::Failed(format!("{e:#}")),
    };
    let mut inputs: BTreeMap<String, Vec<InputArtifact>> = BTreeMap::new();
    for (slot, o, up) in &t.inputs {
        inputs.entry(slot.clone()).or_default().push(node_ctx::input_artifact(plan, store, o, *up).map_err(fail)?);
    }
    let scratch = scratch_root.join(format!("{}-{}", t.i, &t.key[..12]));
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
    std::fs::create_dir_all(&scratch)
        .map_err(|e| ExecError::Failed(format!("cannot create scratch space {}: {e}", scratch.display())))?;
    let marker = JobMarker::create(&scratch)
        .map_err(|e| ExecError::Failed(format!("cannot create scratch space {}: {e}", scratch.display())))?;
    if let Err(m) = check_externals(&mut t.watched, Moment::Queued) {
        let _ = std::fs::remove_dir_all(&scratch);
        return Err(ExecError::Failed(m));
    }
    progress.take_warnings(&n.name); // an earlier attempt's are not this one's
    let result = match n.kind.runs() {
        Runs::InProcess(run) => {
            let ctx = node_ctx::NodeCtx {
                node: n,
                params: &t.record.params,
                inputs,
                outputs: out_paths.clone(),
                progress,
                device: t.device,
                threads: t.threads,
            };
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&ctx))) {
                Ok(Ok(s)) => Ok(s),
                Ok(Err(StageError::Invalid { field, message })) => {
                    Err(rmdistill_stages::port::invalid_message(n.kind.kind(), &field, &message))
                }
                Ok(Err(StageError::Failed(m))) => Err(m),
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    Err(format!("stage `{}` panicked (a bug in rmdistill): {msg}", n.kind.kind()))
                }
            }
        }
        Runs::Worker => {
            let job = node_ctx::job(n, &t.record, inputs, out_paths.clone(), t.device, t.threads);
            crate::worker::binary()
                .map_err(|e| format!("{e:#}"))
                .and_then(|bin| crate::worker::run_job(&bin, &job, &scratch, progress))
        }
    };
    let summary = match result.and_then(|s| check_externals(&mut t.watched, Moment::Ran).map(|()| s)) {
        Ok(s) => s,
        Err(m) => {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(ExecError::Failed(m));
        }
    };
    if let Err(m) = marker.check() {
        let _ = std::fs::remove_dir_all(&scratch);
        return Err(ExecError::Failed(m));
    }
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
    // again after storing: a removal while a directory was being read could have left it listed in part (the
    // blobs stored are unreferenced then, and `gc` takes them)
    if let Err(m) = marker.check() {
        let _ = std::fs::remove_dir_all(&scratch);
        return Err(ExecError::Failed(m));
    }
    let _ = std::fs::remove_dir_all(&scratch);
    let entry = Entry {
        v: KEY_VERSION,
        key: t.key,
        node: n.name.clone(),
        record: t.record,
        outputs: outs,
        summary,
        // taken only here: a node that fails leaves them for the runner's report of the failure
        warnings: progress.take_warnings(&n.name),
        created: chrono::Utc::now().to_rfc3339(),
        seconds: t0.elapsed().as_secs_f64(),
        machine: Some(if n.runs_on_libtorch() {
            crate::store::computed_on(matches!(t.device, Device::Cuda(_)), t.threads)
        } else {
            crate::store::machine().to_string()
        }),
    };
    store.put_entry(&entry, t.replace).map_err(fail)
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// A file in a node's scratch directory, made before the stage runs and looked for (same device and inode) before
/// its outputs are stored: if the directory was removed while the node ran (a hand `rm`, a clean-up), a stage that
/// recreates its output directory would leave only what it wrote after that, and a partial model would be stored
/// as the node's result.
struct JobMarker {
    path: PathBuf,
    id: (u64, u64),
}

impl JobMarker {
    const NAME: &'static str = ".rmdistill-job";

    fn create(scratch: &Path) -> std::io::Result<JobMarker> {
        use std::os::unix::fs::MetadataExt;
        let path = scratch.join(Self::NAME);
        let m = std::fs::File::create(&path)?.metadata()?;
        Ok(JobMarker { path, id: (m.dev(), m.ino()) })
    }

    fn check(&self) -> Result<(), String> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::symlink_metadata(&self.path) {
            Ok(m) if (m.dev(), m.ino()) == self.id => Ok(()),
            _ => Err(format!(
                "the node's scratch directory {} was removed or replaced while it ran (by hand, or by a clean-up of \
                 `.rmdistill`): its outputs may be incomplete and are not stored; run again",
                self.path.parent().unwrap_or(&self.path).display()
            )),
        }
    }
}

/// The lock a run holds on its scratch directory while it runs (`.lock`, flock(2)): another run's clean-up tells a
/// live run's directory from a killed one's by it, also where it cannot see the other run's process (another pid
/// namespace: containers sharing a host name and a working directory).
pub struct ScratchLock {
    _file: std::fs::File,
}

const SCRATCH_LOCK: &str = ".lock";

impl ScratchLock {
    /// Creates `dir` and takes its lock (best effort: a directory that cannot be made fails its nodes later, with
    /// the reason). The lock file is locked under a private name and then linked into place, so that a clean-up's
    /// probe never finds it unlocked (a probe that took the lock for an instant would otherwise make this take fail).
    pub fn take(dir: &Path) -> Option<ScratchLock> {
        use std::os::unix::io::AsRawFd;
        std::fs::create_dir_all(dir).ok()?;
        let private = dir.join(format!("{SCRATCH_LOCK}.{}", std::process::id()));
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&private).ok()?;
        // SAFETY: flock on a descriptor this function owns.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        // a link, not a rename: it never replaces a lock file that is there already
        let placed = locked && std::fs::hard_link(&private, dir.join(SCRATCH_LOCK)).is_ok();
        let _ = std::fs::remove_file(&private);
        placed.then_some(ScratchLock { _file: file })
    }

    /// Whether a live process holds `dir`'s lock: None when it has no lock file, or the lock cannot be asked
    /// (a file system without flock), so that the caller judges the directory otherwise.
    fn held(dir: &Path) -> Option<bool> {
        use std::os::unix::io::AsRawFd;
        let file = std::fs::File::open(dir.join(SCRATCH_LOCK)).ok()?;
        // SAFETY: as above; the lock, if taken, is released when `file` closes.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Some(false);
        }
        (std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)).then_some(true)
    }
}

/// This machine's host name, as scratch directories are named with it (`_` for characters other than letters,
/// digits, `.` and `-`).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let raw = if ok {
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        String::from_utf8_lossy(&buf[..end]).to_string()
    } else {
        String::new()
    };
    let name: String =
        raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
    if name.is_empty() { "localhost".into() } else { name }
}

/// A run's scratch directory name: `HOST@PID@RUN_ID`. Runs on other hosts may share the working directory (jobs of
/// one Slurm submission), so a directory is only ever judged by the host that made it.
pub fn scratch_name(host: &str, pid: u32, run_id: &str) -> String {
    format!("{host}@{pid}@{run_id}")
}

/// Removes scratch directories left by killed runs of this host; directories of other hosts, and of live runs, are
/// left alone. A run is live while it holds its directory's lock ([`ScratchLock`]); a directory without a lock file
/// (made by an older version, or in the instant before its lock) is judged by its process, and only once it is a
/// minute old.
pub fn clean_stale_scratch(tmp: &Path, host: &str) {
    if let Ok(rd) = std::fs::read_dir(tmp) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            let mut parts = name.splitn(3, '@');
            let (Some(h), Some(pid), Some(_)) = (parts.next(), parts.next(), parts.next()) else { continue };
            if h != host {
                continue;
            }
            let stale = match ScratchLock::held(&e.path()) {
                Some(held) => !held,
                None => {
                    let old = e
                        .metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t.elapsed().is_ok_and(|a| a > std::time::Duration::from_secs(60)));
                    old && pid.parse::<u32>().is_ok_and(|p| !pid_alive(p))
                }
            };
            if stale {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// A run's id: its start time (so that ids sort by time), its process id and 32 random bits. Time and pid alone
/// can repeat: containers of one batch job each run as pid 1 (or a low pid), and two started within the same
/// millisecond would share one journal in the store, the later one overwriting the other's.
pub fn new_run_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    // std's RandomState is seeded from the OS's random source once per process
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish() as u32;
    format!("{}-{}-{random:08x}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"), std::process::id())
}

/// Where a node is in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Some upstream node is not done yet (or it is in the ready list, about to be resolved).
    Waiting,
    /// Not cached: waiting for a slot.
    Queued,
    Running,
    Done,
    Failed,
    Skipped,
}

/// One node's part in a run: the single source of truth the executor works from.
struct NodeRun {
    wanted: bool,
    state: State,
    /// Distinct upstream nodes that are not done.
    waiting_on: usize,
    force: bool,
    /// Replace an existing entry (its blobs were found missing or corrupt).
    replace: bool,
    attempts: u32,
    record: Option<KeyRecord>,
    /// A queued node's external files as its key saw them.
    watched: Vec<Watched>,
    outputs: Option<BTreeMap<String, OutputRef>>,
    device: Device,
    report: NodeReport,
}

/// What the store holds for a ready node, found by [`Runner::look_up`].
#[allow(clippy::large_enum_variant)] // one per ready node, consumed at once
enum Lookup {
    /// Its key could not be built (an external file is unreadable).
    Failed(String),
    /// A cache hit; `pointer_current` when the node's last-run pointer already names this key.
    Hit {
        key: String,
        outputs: BTreeMap<String, OutputRef>,
        pointer_current: bool,
        other_machine: Option<String>,
        /// What the stage warned of when it ran.
        warnings: Vec<String>,
    },
    Miss {
        key: String,
        rec: KeyRecord,
        watched: Vec<Watched>,
    },
}

/// The executor's state: every node's [`NodeRun`], the nodes ready to be resolved, the queue of nodes waiting for a
/// slot, and the slots.
struct Runner<'a> {
    plan: &'a Plan,
    store: &'a Store,
    opts: &'a RunOptions,
    progress: &'a Progress,
    ext: &'a ExternalHashes,
    scope: String,
    nodes: Vec<NodeRun>,
    deps: Vec<Vec<usize>>,
    dependents: Vec<Vec<usize>>,
    /// Nodes whose upstream is done, to resolve (cache hit or queue), in the order they became ready.
    ready: VecDeque<usize>,
    queue: VecDeque<usize>,
    recomputing: HashSet<String>,
    /// The keys of the nodes running now: a queued node with one of them (a twin: another node that computes the
    /// same thing) waits for it and is then looked up again, a cache hit, instead of computing it a second time.
    in_flight: HashSet<String>,
    running: usize,
    cpu_running: usize,
    /// One flag per GPU (busy), once the worker was asked how many there are.
    gpus: Option<Vec<bool>>,
    /// Under `--fail-fast`, the first node that failed: no node starts after it.
    stopped_by: Option<usize>,
    /// How this run computes a libtorch node on the CPU and on a GPU ([`crate::store::computed_on`]), what a cached
    /// entry's `machine` is compared with; worked out once, not per cache hit.
    computed_on_cpu: String,
    computed_on_cuda: String,
}

impl Runner<'_> {
    /// Marks `i` done and readies the waiting dependents it was the last upstream of.
    fn done(&mut self, i: usize) {
        self.nodes[i].state = State::Done;
        for k in 0..self.dependents[i].len() {
            let d = self.dependents[i][k];
            let nd = &mut self.nodes[d];
            if nd.wanted && nd.state == State::Waiting {
                nd.waiting_on -= 1;
                if nd.waiting_on == 0 {
                    self.ready.push_back(d);
                }
            }
        }
    }

    /// The queued twins of a node that just stored `key` are looked up again: cache hits now.
    fn look_up_twins_again(&mut self, key: &str) {
        let (twins, rest): (VecDeque<usize>, VecDeque<usize>) =
            self.queue.drain(..).partition(|&q| self.nodes[q].report.key.as_deref() == Some(key));
        self.queue = rest;
        for t in twins {
            self.nodes[t].state = State::Waiting;
            self.ready.push_back(t);
        }
    }

    /// Marks `i` failed and skips every waiting node downstream of it.
    fn failed(&mut self, i: usize, msg: String) {
        self.nodes[i].state = State::Failed;
        self.nodes[i].report.outcome = Outcome::Failed;
        self.progress.finished(&self.plan.nodes[i].name, "failed", &msg);
        self.nodes[i].report.error = Some(msg);
        self.skip_downstream(i);
        if self.opts.fail_fast && self.stopped_by.is_none() {
            self.stopped_by = Some(i);
        }
    }

    /// Under `--fail-fast`, after the running nodes came back: every wanted node that did not start is skipped, with
    /// the failure that stopped the run as the reason.
    fn skip_not_started(&mut self) {
        let Some(f) = self.stopped_by else { return };
        let why = format!("not started: the run stopped after {} failed (--fail-fast)", self.plan.nodes[f].name);
        for i in 0..self.nodes.len() {
            if self.nodes[i].wanted && matches!(self.nodes[i].state, State::Waiting | State::Queued) {
                self.mark_skipped(i, why.clone(), "(--fail-fast)");
            }
        }
    }

    /// Reports `i` as skipped: `error` in the summary, `detail` on its progress line.
    fn mark_skipped(&mut self, i: usize, error: String, detail: &str) {
        let nd = &mut self.nodes[i];
        nd.state = State::Skipped;
        nd.report.outcome = Outcome::Skipped;
        nd.report.error = Some(error);
        self.progress.finished(&self.plan.nodes[i].name, "skipped", detail);
    }

    fn skip_downstream(&mut self, i: usize) {
        let mut stack = vec![i];
        while let Some(u) = stack.pop() {
            for k in 0..self.dependents[u].len() {
                let d = self.dependents[u][k];
                if self.nodes[d].wanted && self.nodes[d].state == State::Waiting {
                    self.skip(d);
                    stack.push(d);
                }
            }
        }
    }

    fn skip(&mut self, d: usize) {
        let failed: Vec<&str> = self.deps[d]
            .iter()
            .filter(|&&u| matches!(self.nodes[u].state, State::Failed | State::Skipped))
            .map(|&u| self.plan.nodes[u].name.as_str())
            .collect();
        let failed = failed.join(", ");
        self.mark_skipped(d, format!("upstream failed: {failed}"), &format!("(upstream {failed} failed)"));
    }

    /// A node set back to waiting: skipped if an upstream failed meanwhile, resolved again once its upstream is done.
    fn wait_again(&mut self, i: usize) {
        self.nodes[i].state = State::Waiting;
        self.nodes[i].report.outcome = Outcome::Pending;
        self.nodes[i].waiting_on = self.deps[i].iter().filter(|&&u| self.nodes[u].state != State::Done).count();
        if self.deps[i].iter().any(|&u| matches!(self.nodes[u].state, State::Failed | State::Skipped)) {
            self.skip(i);
            self.skip_downstream(i);
        } else if self.nodes[i].waiting_on == 0 {
            self.ready.push_back(i);
        }
    }

    /// Resolves every ready node: the keys and store lookups of the batch concurrently (they read only the store and
    /// the outputs of nodes already done), then each outcome in order. A no-op run is mostly these lookups.
    fn resolve_ready(&mut self) -> anyhow::Result<()> {
        use rayon::prelude::*;
        // a run asked to stop resolves no more: a long chain of cache hits must not hold up Ctrl-C
        while !self.ready.is_empty() && interrupted().is_none() {
            let batch: Vec<usize> = self.ready.drain(..).collect();
            let looked: Vec<anyhow::Result<Option<Lookup>>> = batch.par_iter().map(|&i| self.look_up(i)).collect();
            for (i, l) in batch.into_iter().zip(looked) {
                if let Some(l) = l? {
                    self.resolve(i, l)?;
                }
            }
        }
        Ok(())
    }

    /// A ready node's key from its upstream outputs and what the store holds for it (`None` when it was resolved
    /// already, or an upstream node is running again).
    fn look_up(&self, i: usize) -> anyhow::Result<Option<Lookup>> {
        let nd = &self.nodes[i];
        if nd.state != State::Waiting || nd.waiting_on > 0 {
            return Ok(None);
        }
        let nodes = &self.nodes;
        let (rec, watched) = match record_with(self.plan, self.store, i, &|u| nodes[u].outputs.as_ref(), self.ext) {
            Ok(r) => r,
            Err(e) => return Ok(Some(Lookup::Failed(format!("{e:#}")))),
        };
        let key = rec.key();
        let hit = if nd.force { None } else { lookup_head(self.store, &key)? };
        Ok(Some(match hit {
            Some(h) => {
                let pointer_current =
                    self.store.last_key(&self.scope, &self.plan.nodes[i].name)?.as_deref() == Some(key.as_str());
                let node = &self.plan.nodes[i];
                // compared with how this run would compute it: on a GPU only where --device cuda makes it wait
                // for one
                let cuda = node.kind.wants_gpu() && self.opts.device == DeviceRequest::Cuda;
                let here = if cuda { &self.computed_on_cuda } else { &self.computed_on_cpu };
                let other_machine = h.machine.filter(|m| node.runs_on_libtorch() && m != here);
                Lookup::Hit { key, outputs: h.outputs, pointer_current, other_machine, warnings: h.warnings }
            }
            None => Lookup::Miss { key, rec, watched },
        }))
    }

    /// Under `node run --run-id`: the run, and why `node`'s Job will make no further attempt there, if it will not.
    fn attempts_spent(&self, node: &str) -> anyhow::Result<Option<(&Attempt, String)>> {
        let Some(a) = &self.opts.attempt else { return Ok(None) };
        Ok(never_coming(&self.store.failed_attempts(&a.run, &self.scope, node)?, a).map(|why| (a, why)))
    }

    /// A looked-up node: a cache hit, or a place in the queue.
    fn resolve(&mut self, i: usize, l: Lookup) -> anyhow::Result<()> {
        if self.nodes[i].state != State::Waiting || self.nodes[i].waiting_on > 0 {
            return Ok(());
        }
        let name = &self.plan.nodes[i].name;
        match l {
            Lookup::Failed(msg) => self.failed(i, msg),
            Lookup::Hit { key, outputs, pointer_current, other_machine, warnings } => {
                if !pointer_current {
                    self.store.set_last_key(&self.scope, name, &key)?;
                }
                let nd = &mut self.nodes[i];
                nd.report.key = Some(key);
                nd.report.other_machine = other_machine;
                nd.report.warnings = warnings;
                nd.outputs = Some(outputs.clone());
                nd.report.outputs = outputs;
                nd.report.outcome = Outcome::Cached;
                self.progress.finished(name, "cached", "");
                self.done(i);
            }
            Lookup::Miss { key, .. } if self.opts.upstream_must_be_cached && !self.opts.targets.contains(&i) => {
                // stored once, but found damaged (its entry or a blob, set aside or removed just now): not "not
                // yet", which under a scheduler that ran it already would send the user looking elsewhere
                let msg = match self.store.incomplete_reason(&key) {
                    Some(why) => format!(
                        "upstream node {name} was stored, but its result is damaged ({why}) and was set aside: run \
                         `node run` for {name} again"
                    ),
                    None => format!(
                        "upstream node {name} is not in the store yet (run it first; a scheduler orders this by \
                         dependencies; if a scheduler ran it already, the manifest, its data or the code may have \
                         changed since the export, giving it another key: export again)"
                    ),
                };
                if let Some((a, why)) = self.attempts_spent(name)? {
                    return Err(UpstreamFailed(format!(
                        "upstream node {name} will not be stored in run {}: {why} (if these Jobs were applied again \
                         from the same export, export again: each export is a run of its own)",
                        a.run
                    ))
                    .into());
                }
                return Err(crate::error::NotReady(msg).into());
            }
            Lookup::Miss { key, rec, watched } => {
                // A Job makes at most its attempts, and one that gave up is ended: another attempt of a spent Job in
                // the same run comes from the same exported file applied again, whose dependents would read the
                // old records and give up on this node while it runs.
                if self.opts.targets.contains(&i)
                    && let Some((a, why)) = self.attempts_spent(name)?
                {
                    return Err(crate::error::Invalid(format!(
                        "node {name} ran out of attempts in run {} already ({why}): these Jobs were applied again \
                         from the same export; export again for a new run (what is stored stays stored)",
                        a.run
                    ))
                    .into());
                }
                // An entry whose blobs are gone or corrupt is replaced rather than trusted.
                let exists = self.store.get_entry(&key)?.is_some();
                let nd = &mut self.nodes[i];
                nd.report.key = Some(key);
                nd.replace = nd.replace || exists;
                nd.record = Some(rec);
                nd.watched = watched;
                nd.state = State::Queued;
                self.queue.push_back(i);
            }
        }
        Ok(())
    }

    /// The GPU slots, asking the worker how many GPUs there are the first time.
    fn gpu_slots(&mut self) -> anyhow::Result<&mut Vec<bool>> {
        if self.gpus.is_none() {
            let n = match self.opts.device {
                DeviceRequest::Cpu => 0,
                DeviceRequest::Auto => {
                    crate::worker::binary().and_then(|b| crate::worker::cuda_devices(&b)).unwrap_or(0)
                }
                DeviceRequest::Cuda => {
                    let n = crate::worker::cuda_devices(&crate::worker::binary()?)?;
                    if n == 0 {
                        anyhow::bail!(
                            "device cuda was asked for (--device, or the manifest's [execution] device) but libtorch sees no CUDA device (is rmdistill-worker built with the `cuda` feature?)"
                        );
                    }
                    n
                }
            };
            self.gpus = Some(vec![false; n]);
        }
        Ok(self.gpus.as_mut().expect("set above"))
    }

    /// The next queued node that has a slot, with its device: a free GPU for a node that wants one (CPU when every
    /// GPU is busy and a CPU slot is free), else a CPU slot.
    fn next_task(&mut self) -> anyhow::Result<Option<(usize, Device)>> {
        if self.stopped_by.is_some() {
            return Ok(None);
        }
        let mut k = 0;
        while k < self.queue.len() {
            let i = self.queue[k];
            if self.nodes[i].report.key.as_ref().is_some_and(|key| self.in_flight.contains(key)) {
                k += 1;
                continue;
            }
            let node = &self.plan.nodes[i];
            let wants_gpu = node.kind.wants_gpu() && node.runs_on_libtorch();
            let gpu = if wants_gpu { self.gpu_slots()?.iter().position(|b| !b) } else { None };
            let cpu_free = self.cpu_running < self.opts.jobs.max(1);
            let Some(device) = pick_slot(wants_gpu, gpu, cpu_free, self.opts.device) else {
                k += 1;
                continue;
            };
            self.queue.remove(k);
            match device {
                Device::Cuda(g) => self.gpus.as_mut().expect("probed")[g] = true,
                Device::Cpu => self.cpu_running += 1,
            }
            self.nodes[i].device = device;
            self.nodes[i].state = State::Running;
            self.in_flight.extend(self.nodes[i].report.key.clone());
            self.running += 1;
            return Ok(Some((i, device)));
        }
        Ok(None)
    }

    /// Frees the slot of a node that came back.
    fn release(&mut self, i: usize) {
        self.running -= 1;
        if let Some(key) = &self.nodes[i].report.key {
            self.in_flight.remove(key);
        }
        match self.nodes[i].device {
            Device::Cuda(g) => self.gpus.as_mut().expect("probed")[g] = false,
            Device::Cpu => self.cpu_running -= 1,
        }
    }

    /// A node came back with an input blob that is corrupt or missing: the nodes that produced it run again (and
    /// every node waiting on them waits again), then this one.
    fn corrupt_input(&mut self, i: usize, c: Corrupt) -> anyhow::Result<()> {
        self.nodes[i].attempts += 1;
        self.nodes[i].state = State::Waiting;
        if !self.store.discard_if_corrupt(&c.hash)? {
            // Already replaced by a recomputation: read it again.
            self.wait_again(i);
            return Ok(());
        }
        self.progress.message(&format!("warning: {c}; discarding it and recomputing what produced it"));
        let producers: Vec<usize> = (0..self.nodes.len())
            .filter(|&p| {
                self.nodes[p].state == State::Done
                    && self.nodes[p].outputs.as_ref().is_some_and(|o| o.values().any(|r| r.hash == c.hash))
            })
            .collect();
        if (producers.is_empty() && !self.recomputing.contains(&c.hash)) || self.nodes[i].attempts > 3 {
            self.failed(i, c.to_string());
            return Ok(());
        }
        self.recomputing.insert(c.hash.clone());
        for p in producers {
            let np = &mut self.nodes[p];
            np.outputs = None;
            np.force = true;
            np.replace = true;
            np.state = State::Waiting;
            np.report.outcome = Outcome::Pending;
            // Readers of p that have not started wait for it again (queued ones leave the queue); running ones
            // count again when they come back (`wait_again`), and finished ones keep what they read.
            for k in 0..self.dependents[p].len() {
                let d = self.dependents[p][k];
                let nd = &mut self.nodes[d];
                if nd.wanted && matches!(nd.state, State::Waiting | State::Queued) {
                    nd.waiting_on += 1;
                    if nd.state == State::Queued {
                        nd.state = State::Waiting;
                        self.queue.retain(|&q| q != d);
                    }
                }
            }
            self.wait_again(p);
        }
        self.wait_again(i);
        Ok(())
    }
}

/// The signal (SIGINT, SIGTERM) that asked the run to stop, or 0.
static INTERRUPTED: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

/// The signal that asked the run to stop, if one did.
fn interrupted() -> Option<i32> {
    match INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

/// A second signal ends the process at once, in case the run cannot get to stopping (a store that does not answer).
extern "C" fn on_interrupt(sig: libc::c_int) {
    if INTERRUPTED.swap(sig, std::sync::atomic::Ordering::SeqCst) != 0 {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(128 + sig) };
    }
}

/// Ctrl-C (SIGINT) and a scheduler's SIGTERM stop the run between two of its checks: [`stop_interrupted`].
fn catch_interrupts() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic and calls _exit, both async-signal-safe.
        unsafe {
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_interrupt as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
}

/// Executes a plan against a store.
pub fn run(plan: &Plan, store: &Store, opts: &RunOptions, progress: &Progress) -> anyhow::Result<Summary> {
    catch_interrupts();
    let t0 = Instant::now();
    let run_id = new_run_id();
    let n = plan.nodes.len();
    let tmp = store.local_dir().join("tmp");
    let host = hostname();
    clean_stale_scratch(&tmp, &host);
    let scratch_root = tmp.join(scratch_name(&host, std::process::id(), &run_id));
    let scratch_lock = ScratchLock::take(&scratch_root);
    let ext = ExternalHashes::open(store.local_dir());
    let dependents = plan.dependents();
    let mut deps = vec![Vec::new(); n];
    for (u, ds) in dependents.iter().enumerate() {
        for &d in ds {
            deps[d].push(u);
        }
    }
    let mut wanted = vec![opts.targets.is_empty(); n];
    for &t in &opts.targets {
        for a in plan.ancestors_and_self(t) {
            wanted[a] = true;
        }
    }
    let nodes: Vec<NodeRun> = plan
        .nodes
        .iter()
        .enumerate()
        .map(|(i, nd)| NodeRun {
            wanted: wanted[i],
            state: State::Waiting,
            waiting_on: deps[i].len(),
            force: opts.force.contains(&i),
            replace: false,
            attempts: 0,
            record: None,
            watched: Vec::new(),
            outputs: None,
            device: Device::Cpu,
            report: NodeReport {
                node: nd.name.clone(),
                outcome: Outcome::Pending,
                key: None,
                seconds: 0.0,
                outputs: BTreeMap::new(),
                error: None,
                other_machine: None,
                warnings: Vec::new(),
            },
        })
        .collect();
    let ready = (0..n).filter(|&i| wanted[i] && deps[i].is_empty()).collect();
    let threads = (std::thread::available_parallelism().map_or(1, |n| n.get()) / opts.jobs.max(1)).max(1);
    let mut r = Runner {
        plan,
        store,
        opts,
        progress,
        ext: &ext,
        scope: scope(plan),
        nodes,
        deps,
        dependents,
        ready,
        queue: VecDeque::new(),
        recomputing: HashSet::new(),
        in_flight: HashSet::new(),
        running: 0,
        cpu_running: 0,
        gpus: None,
        stopped_by: None,
        computed_on_cpu: crate::store::computed_on(false, threads),
        computed_on_cuda: crate::store::computed_on(true, threads),
    };
    // what a run leaves behind however it ends: the input hashes it learned, and no scratch space
    let clean_up = || {
        ext.save();
        let _ = std::fs::remove_dir_all(&scratch_root);
    };
    let journal = |status: &str, reports: &[&NodeReport]| {
        let j = json!({
            "run_id": run_id, "manifest": plan.manifest.path().display().to_string(), "status": status,
            "host": host, "pid": std::process::id(),
            "updated": chrono::Utc::now().to_rfc3339(),
            "nodes": reports.iter().filter(|r| r.outcome != Outcome::Pending).collect::<Vec<_>>(),
        });
        store.put_journal(&run_id, &j)
    };

    let result = std::thread::scope(|s| -> anyhow::Result<()> {
        let (res_tx, res_rx) = std::sync::mpsc::channel::<(usize, Result<Entry, ExecError>)>();
        let mut journaled = false;
        // SIGINT or SIGTERM: what is stored stays, the journal says "interrupted", the process ends
        let stop = |r: &Runner, sig: i32| -> ! {
            let reports: Vec<&NodeReport> = r.nodes.iter().map(|nd| &nd.report).collect();
            let stored = reports.iter().filter(|nd| nd.outcome == Outcome::Ran).count();
            let journaled = journal("interrupted", &reports);
            clean_up();
            stop_interrupted(progress, sig, stored, r.running, journaled.err())
        };
        loop {
            r.resolve_ready()?;
            if let Some(sig) = interrupted() {
                stop(&r, sig)
            }
            if !journaled && !r.queue.is_empty() {
                journal("running", &r.nodes.iter().map(|nd| &nd.report).collect::<Vec<_>>())?;
                journaled = true;
            }
            while let Some((i, device)) = r.next_task()? {
                let nd = &r.nodes[i];
                let record = nd.record.clone().expect("queued nodes have records");
                let mut inputs = vec![];
                // the slots the key records: a binding slot was read into the parameters instead
                for (slot, ups) in plan.nodes[i].inputs.iter().filter(|(s, _)| record.inputs.contains_key(*s)) {
                    for u in ups {
                        let o = &r.nodes[u.node].outputs.as_ref().expect("upstream done")[u.output];
                        inputs.push((slot.clone(), o.clone(), u.node));
                    }
                }
                let watched = nd.watched.clone();
                let task = Task { i, key: record.key(), record, inputs, replace: nd.replace, device, threads, watched };
                progress.started(&plan.nodes[i].name);
                let res_tx = res_tx.clone();
                let scratch_root = &scratch_root;
                s.spawn(move || {
                    let res = execute(plan, store, task, scratch_root, progress);
                    let _ = res_tx.send((i, res));
                });
            }
            if r.running == 0 {
                r.skip_not_started();
                break;
            }
            // waiting for a node to end, checking ten times a second whether the run was asked to stop; a node that
            // fails once it was is taken as stopped by the signal too (Ctrl-C reaches the workers as well)
            let (i, res) = loop {
                let got = res_rx.recv_timeout(std::time::Duration::from_millis(100));
                match (got, interrupted()) {
                    (Ok((_, Err(_))) | Err(_), Some(sig)) => stop(&r, sig),
                    (Ok(got), _) => break got,
                    (Err(std::sync::mpsc::RecvTimeoutError::Timeout), _) => {}
                    (Err(std::sync::mpsc::RecvTimeoutError::Disconnected), _) => {
                        unreachable!("the loop holds a sender")
                    }
                }
            };
            r.release(i);
            match res {
                Ok(e) => {
                    let secs = e.seconds;
                    store.set_last_key(&r.scope, &plan.nodes[i].name, &e.key)?;
                    let nd = &mut r.nodes[i];
                    nd.outputs = Some(e.outputs.clone());
                    nd.report.outputs = e.outputs;
                    nd.report.warnings = e.warnings;
                    nd.report.outcome = Outcome::Ran;
                    nd.report.seconds = secs;
                    progress.finished(&plan.nodes[i].name, "done", &format!("{secs:.2}s"));
                    r.done(i);
                    r.look_up_twins_again(&e.key);
                }
                Err(ExecError::Corrupt(c)) => r.corrupt_input(i, c)?,
                Err(ExecError::Failed(msg)) => {
                    r.nodes[i].report.warnings = progress.take_warnings(&plan.nodes[i].name);
                    if let Some(rec) = &r.nodes[i].record {
                        // for `status`, which would otherwise say the node never ran; it never decides a hit
                        let _ = store.set_failure(&r.scope, &plan.nodes[i].name, &rec.key(), &run_id, &msg);
                    }
                    r.failed(i, msg)
                }
            }
        }
        Ok(())
    });
    clean_up();
    crate::worker::shutdown_fork_servers();
    drop(scratch_lock);
    result?;

    let reports: Vec<NodeReport> = r.nodes.into_iter().filter(|nd| nd.wanted).map(|nd| nd.report).collect();
    let count = |o: Outcome| reports.iter().filter(|r| r.outcome == o).count();
    let summary = Summary {
        run_id: run_id.clone(),
        ran: count(Outcome::Ran),
        cached: count(Outcome::Cached),
        failed: count(Outcome::Failed),
        skipped: count(Outcome::Skipped),
        seconds: t0.elapsed().as_secs_f64(),
        computed_on: r.computed_on_cpu,
        nodes: reports,
    };
    if summary.ran + summary.failed > 0 {
        // the run is over: a store that cannot take its journal now (full, read-only) must not hide what ran
        let status = if summary.failed > 0 { "failed" } else { "succeeded" };
        if let Err(e) = journal(status, &summary.nodes.iter().collect::<Vec<_>>()) {
            progress.message(&format!("warning: the run journal could not be stored (it says \"running\"): {e:#}"));
        }
    }
    Ok(summary)
}

/// Ends a run that SIGINT or SIGTERM asked to stop: what it stored stays stored (every result is put whole or not at
/// all), the nodes still running die with their workers, and the same command resumes. The process ends by the
/// signal itself (default action, raised again), not by exit(128 + signal): a shell stops a script or loop only when
/// its child was killed by SIGINT, and would go on to the next command after an exit code.
fn stop_interrupted(progress: &Progress, sig: i32, stored: usize, running: usize, journal: Option<anyhow::Error>) -> ! {
    let name = if sig == libc::SIGINT { "SIGINT (Ctrl-C)" } else { "SIGTERM" };
    if let Some(e) = journal {
        progress.message(&format!("warning: the run journal could not be stored (it says \"running\"): {e:#}"));
    }
    progress.message(&format!(
        "interrupted by {name}: {stored} node(s) ran and are stored, {running} running were stopped; the same command \
         resumes from the store (what is stored is not run again)"
    ));
    // SAFETY: restoring the default action and raising the signal in this process.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
    std::process::exit(128 + sig) // not reached: the default action of SIGINT and SIGTERM ends the process
}

/// One node's key as the store determines it now.
#[allow(clippy::large_enum_variant)] // one per command, never stored in bulk
pub enum Resolved {
    /// The key record, the key, and the cache hit if there is one.
    Known { record: KeyRecord, key: String, hit: Option<Entry> },
    /// Upstream nodes whose outputs are not stored yet, so this node's key is not determined.
    /// And what its own fields tell of whether it will run ([`own_changes`]).
    Undetermined { missing: Vec<String>, own_changes: OwnChanges },
}

/// Resolves one node's key against the store, reading only the nodes it depends on (not the whole plan).
pub fn resolve_node(plan: &Plan, store: &Store, target: usize) -> anyhow::Result<Resolved> {
    resolve_seeing(plan, store, target, &mut |_, _| ())
}

/// [`resolve_node`], and the stored entries of the nodes it depends on (those resolved and stored) with their
/// indices in the plan, e.g. to say on which machines the results behind a report were produced.
pub fn resolve_with_upstream(
    plan: &Plan,
    store: &Store,
    target: usize,
) -> anyhow::Result<(Resolved, Vec<(usize, Entry)>)> {
    let mut upstream = Vec::new();
    let r = resolve_seeing(plan, store, target, &mut |i, e| upstream.push((i, e.clone())))?;
    Ok((r, upstream))
}

fn resolve_seeing(
    plan: &Plan,
    store: &Store,
    target: usize,
    seen: &mut dyn FnMut(usize, &Entry),
) -> anyhow::Result<Resolved> {
    let ext = ExternalHashes::open(store.local_dir());
    let mut outputs: Vec<Option<BTreeMap<String, OutputRef>>> = vec![None; plan.nodes.len()];
    for i in plan.ancestors_and_self(target) {
        // a node bound to one upstream by several inputs names it once
        let mut missing: Vec<String> = Vec::new();
        for d in plan.nodes[i].deps().filter(|&d| outputs[d].is_none()) {
            if !missing.contains(&plan.nodes[d].name) {
                missing.push(plan.nodes[d].name.clone());
            }
        }
        if !missing.is_empty() {
            if i == target {
                let own_changes = own_changes(plan, store, &scope(plan), i, &outputs, &ext, &LastEntries::default());
                ext.save();
                return Ok(Resolved::Undetermined { missing, own_changes });
            }
            continue;
        }
        let record = record(plan, store, i, &outputs, &ext)?;
        let key = record.key();
        let hit = lookup(store, &key)?;
        if i == target {
            ext.save();
            return Ok(Resolved::Known { record, key, hit });
        }
        outputs[i] = hit.map(|e| {
            seen(i, &e);
            e.outputs
        });
    }
    unreachable!("a node is among its own ancestors")
}

/// What `status` says of one node.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    pub node: String,
    /// "cached", "run" (would run), or "blocked" (waits on an upstream that would run, and runs again only if its
    /// outputs change; or on a twin, a node with the same key that runs first). A node below a pending upstream whose
    /// own fields changed is "run", without a key.
    pub state: String,
    pub key: Option<String>,
    pub reasons: Vec<String>,
}

/// Why each node would or would not run, without running anything.
pub fn status(plan: &Plan, store: &Store) -> anyhow::Result<Vec<NodeStatus>> {
    let ext = ExternalHashes::open(store.local_dir());
    let scope = scope(plan);
    let last = LastEntries::default();
    let mut outputs: Vec<Option<BTreeMap<String, OutputRef>>> = vec![None; plan.nodes.len()];
    let mut out = Vec::new();
    let mut to_run: HashMap<String, usize> = HashMap::new();
    for (i, n) in plan.nodes.iter().enumerate() {
        let pending: Vec<&str> = n
            .deps()
            .filter(|&d| outputs[d].is_none())
            .map(|d| plan.nodes[d].name.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        if !pending.is_empty() {
            let own = own_changes(plan, store, &scope, i, &outputs, &ext, &last);
            let (state, reasons) = blocked_status(&own, &some_names(&pending));
            out.push(NodeStatus { node: n.name.clone(), state: state.into(), key: None, reasons });
            continue;
        }
        let rec = record(plan, store, i, &outputs, &ext)?;
        let key = rec.key();
        if let Some(o) = lookup_outputs(store, &key)? {
            outputs[i] = Some(o);
            out.push(NodeStatus { node: n.name.clone(), state: "cached".into(), key: Some(key), reasons: vec![] });
            continue;
        }
        // a twin (another node with this key, listed before it) computes it: `run` serves this one from its result
        if let Some(&t) = to_run.get(&key) {
            let reasons =
                vec![format!("the same key as {}, which runs first: a cache hit once it has", plan.nodes[t].name)];
            out.push(NodeStatus { node: n.name.clone(), state: "blocked".into(), key: Some(key), reasons });
            continue;
        }
        to_run.insert(key.clone(), i);
        let reasons = why_run(store, &scope, &n.name, &rec, &key)?;
        out.push(NodeStatus { node: n.name.clone(), state: "run".into(), key: Some(key), reasons });
    }
    ext.save();
    Ok(out)
}

/// What a node whose upstream is not stored yet will do, as far as its own fields tell ([`own_changes`]).
#[derive(Debug, Clone, PartialEq)]
pub enum OwnChanges {
    /// No run of it is stored for this manifest: it runs after its upstream.
    NeverRan,
    /// Not to be told (an upstream that never ran, a selection still to be made, a store that did not answer).
    Unknown,
    /// Its own fields are as at its last run, or a stored result matches them with the upstream's last outputs: it
    /// runs again only if the upstream's outputs change.
    Unchanged,
    /// What changed in its own fields (code, params, data files, inputs from stored nodes): it runs whatever the
    /// upstream gives, short of an older result of exactly the new combination.
    Changed(Vec<String>),
}

/// The last stored entry of each node, read once per command (a store read per blocked node and upstream adds up
/// on S3).
pub type LastEntries = std::cell::RefCell<HashMap<usize, Option<Entry>>>;

/// [`OwnChanges`] of node `i`, whose upstream `outputs` are partly unknown: its record with each pending upstream's
/// last stored outputs in their place — a stored result for that record means it may be a cache hit — then, with
/// the pending slots as at its last run, against its last run's record. Only ever explains: a failure to read
/// the store is "unknown", never an error.
pub fn own_changes(
    plan: &Plan,
    store: &Store,
    scope: &str,
    i: usize,
    outputs: &[Option<BTreeMap<String, OutputRef>>],
    ext: &ExternalHashes,
    last: &LastEntries,
) -> OwnChanges {
    let entry = |j: usize| -> Option<Entry> {
        if let Some(e) = last.borrow().get(&j) {
            return e.clone();
        }
        let e = match store.last_key(scope, &plan.nodes[j].name) {
            Ok(Some(k)) => store.get_entry(&k).ok().flatten(),
            _ => None,
        };
        last.borrow_mut().insert(j, e.clone());
        e
    };
    let n = &plan.nodes[i];
    let Some(old) = entry(i) else { return OwnChanges::NeverRan };
    let pending: Vec<&String> =
        n.inputs.iter().filter(|(_, ups)| ups.iter().any(|u| outputs[u.node].is_none())).map(|(s, _)| s).collect();
    // a parameter a pending selection decides is the upstream's doing, not the node's
    if pending.iter().any(|s| n.kind.binding_slots().contains(&s.as_str())) {
        return OwnChanges::Unknown;
    }
    let mut assumed = outputs.to_vec();
    for d in n.deps() {
        if assumed[d].is_none() {
            match entry(d) {
                Some(e) => assumed[d] = Some(e.outputs),
                None => return OwnChanges::Unknown,
            }
        }
    }
    let Ok(rec) = record(plan, store, i, &assumed, ext) else { return OwnChanges::Unknown };
    if rec.key() == old.key || lookup_head(store, &rec.key()).ok().flatten().is_some() {
        return OwnChanges::Unchanged;
    }
    // the pending slots as they were: a difference there is the upstream's, and says nothing of the node
    let mut own = rec;
    for slot in pending {
        match old.record.inputs.get(slot) {
            Some(refs) => own.inputs.insert(slot.clone(), refs.clone()),
            None => own.inputs.remove(slot),
        };
    }
    match own.diff(&old.record) {
        d if d.is_empty() || own.key() == old.key => OwnChanges::Unchanged,
        d => OwnChanges::Changed(d),
    }
}

/// A blocked node's state and reasons in `status` (and `explain`): "run" when its own fields changed.
pub fn blocked_status(own: &OwnChanges, waits: &str) -> (&'static str, Vec<String>) {
    match own {
        OwnChanges::Changed(d) => {
            let mut r = d.clone();
            r.push(format!("runs after upstream {waits}"));
            ("run", r)
        }
        OwnChanges::NeverRan => (
            "blocked",
            vec![format!("waits on upstream {waits}; no run of this manifest has stored it, so it runs then")],
        ),
        OwnChanges::Unknown => {
            ("blocked", vec![format!("waits on upstream {waits} (whether it runs again depends on their outputs)")])
        }
        OwnChanges::Unchanged => {
            ("blocked", vec![format!("waits on upstream {waits} (runs again only if their outputs change)")])
        }
    }
}

/// Names joined by commas, or the first eight and how many more: a report can wait on hundreds of nodes, and a line
/// that lists them all hides everything else.
pub fn some_names<S: AsRef<str>>(names: &[S]) -> String {
    let join = |ns: &[S]| ns.iter().map(|n| n.as_ref()).collect::<Vec<_>>().join(", ");
    if names.len() <= NAMES_SHOWN {
        join(names)
    } else {
        format!("{}, and {} more", join(&names[..NAMES_SHOWN]), names.len() - NAMES_SHOWN)
    }
}

/// How many names [`some_names`] shows.
pub const NAMES_SHOWN: usize = 8;

/// Why a node whose key has no complete entry must run.
pub fn why_run(store: &Store, scope: &str, node: &str, rec: &KeyRecord, key: &str) -> anyhow::Result<Vec<String>> {
    if let Some(why) = store.incomplete_reason(key) {
        return Ok(vec![why]);
    }
    let last = store.last_key(scope, node)?;
    // a failure with this key that a later run of the same key got past (its entry since lost) is no reason
    let failed = store
        .failure(scope, node, key)?
        .filter(|_| last.as_deref() != Some(key))
        .map(|f| format!("failed with this key {f}"));
    let Some(last) = last else {
        // the pointer is per manifest path: a copied or moved manifest has none, whatever the store holds
        return Ok(vec![failed.unwrap_or_else(|| {
            "no run of this manifest has stored it yet (history is kept per manifest path)".into()
        })]);
    };
    let mut why = match store.get_entry(&last)? {
        Some(old) => {
            let d = rec.diff(&old.record);
            if d.is_empty() { vec!["key record differs from the last run's".into()] } else { d }
        }
        None => vec![format!("the last run's entry ({}) is gone from the store", key::short(&last))],
    };
    why.extend(failed);
    Ok(why)
}

/// Rows of a node table for `--json` consumers and the text views.
pub fn node_map(plan: &Plan) -> HashMap<&str, usize> {
    plan.nodes.iter().enumerate().map(|(i, n)| (n.name.as_str(), i)).collect()
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_upstream_never_comes_once_its_attempts_are_spent_or_one_gave_up() {
        let a = Attempt { run: "r".into(), attempts: 2, id: "p".into() };
        let f = |given_up: bool, at: &str| crate::store::FailedAttempt {
            node: "n".into(),
            run: "r".into(),
            attempt: at.into(),
            given_up,
            at: at.into(),
            error: format!("e{at}"),
        };
        assert_eq!(never_coming(&[], &a), None);
        assert_eq!(never_coming(&[f(false, "1")], &a), None, "1 of 2 attempts failed: the Job retries");
        assert_eq!(
            never_coming(&[f(false, "1"), f(false, "2")], &a).as_deref(),
            Some("all 2 attempts of its Job failed (the last at 2: e2)")
        );
        // one that gave up on its own upstream ends its Job (podFailurePolicy): no retry will come
        assert_eq!(never_coming(&[f(true, "1")], &a).as_deref(), Some("its Job gave up (1): e1"));
    }
    use super::*;

    #[test]
    fn run_ids_of_one_process_and_millisecond_differ() {
        let (a, b) = (new_run_id(), new_run_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), b.len(), "{a} {b}");
        assert!(a.starts_with("20") && a.contains(&format!("Z-{}-", std::process::id())), "{a}");
    }

    #[test]
    fn a_long_list_of_names_shows_eight_and_a_count() {
        let names = |n: usize| (0..n).map(|i| format!("n{i}")).collect::<Vec<_>>();
        assert_eq!(some_names(&names(2)), "n0, n1");
        assert_eq!(some_names(&names(8)), "n0, n1, n2, n3, n4, n5, n6, n7");
        assert_eq!(some_names(&names(9)), "n0, n1, n2, n3, n4, n5, n6, n7, and 1 more");
    }

    /// A run's scratch directory is live while its lock is held, whatever its process id says (another pid
    /// namespace cannot see it); one without a lock file is judged by its pid, once a minute old.
    #[test]
    fn stale_scratch_is_told_by_its_lock() {
        let d = tempfile::tempdir().unwrap();
        let dead = 999_999_999u32; // no such pid
        let dir = |name: String| {
            let p = d.path().join(name);
            std::fs::create_dir_all(p.join("0-abc")).unwrap();
            p
        };
        let held = dir(scratch_name("h", dead, "r1"));
        let _lock = ScratchLock::take(&held).unwrap();
        let released = dir(scratch_name("h", dead, "r2"));
        drop(ScratchLock::take(&released).unwrap());
        let young = dir(scratch_name("h", dead, "r3"));
        let old = dir(scratch_name("h", dead, "r4"));
        let ours = dir(scratch_name("h", std::process::id(), "r5"));
        let other_host = dir(scratch_name("g", dead, "r6"));
        let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for p in [&old, &ours] {
            std::fs::File::open(p).unwrap().set_modified(long_ago).unwrap();
        }
        clean_stale_scratch(d.path(), "h");
        for (p, kept) in
            [(&held, true), (&released, false), (&young, true), (&old, false), (&ours, true), (&other_host, true)]
        {
            assert_eq!(p.exists(), kept, "{}", p.display());
        }
        // a second lock on a held directory is refused: two runs never share one
        assert!(ScratchLock::take(&held).is_none());
        // the lock file only ever appears locked: a probe finds none (then the directory is judged by its pid and
        // age) or a held one, never a free one it could take for an instant and make the run's take fail
        let fresh = d.path().join(scratch_name("h", dead, "r7"));
        let _taken = ScratchLock::take(&fresh).unwrap();
        assert_eq!(ScratchLock::held(&fresh), Some(true));
        assert_eq!(std::fs::read_dir(&fresh).unwrap().count(), 1, "only `.lock` is left in place");
    }

    #[test]
    fn a_job_marker_sees_its_scratch_directory_removed_or_replaced() {
        let d = tempfile::tempdir().unwrap();
        let scratch = d.path().join("0-abc");
        std::fs::create_dir_all(&scratch).unwrap();
        let m = JobMarker::create(&scratch).unwrap();
        assert_eq!(m.check(), Ok(()));
        std::fs::remove_dir_all(&scratch).unwrap();
        std::fs::create_dir_all(scratch.join("model")).unwrap();
        assert!(m.check().unwrap_err().contains("was removed or replaced while it ran"));
    }

    /// An external file as a node's key sees it.
    fn watch(dir: &Path, name: &str) -> Watched {
        let path = dir.join(name);
        let ext = ExternalHashes::open(dir);
        let (hash, id) = ext.hash(&path).unwrap();
        Watched { param: "path".into(), path, hash, id }
    }

    /// Sets a file's mtime (as `touch -d`, `cp -p` or `rsync -t` do).
    fn set_mtime(path: &Path, t: std::time::SystemTime) {
        std::fs::File::options().write(true).open(path).unwrap().set_modified(t).unwrap();
    }

    #[test]
    fn an_external_file_is_hashed_again_only_when_its_stat_identity_changed() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("data.jsonl");
        std::fs::write(&f, "version A\n").unwrap();
        let mut w = watch(d.path(), "data.jsonl");
        assert!(matches!(w.id, Ident::File(_)));
        // unchanged: one stat, no hashing
        assert_eq!(w.check(Moment::Queued), Ok(false));
        assert_eq!(w.check(Moment::Ran), Ok(false));
        // touched, or rewritten with the same bytes, before the node starts: hashed again, the same, and its new
        // identity kept
        set_mtime(&f, std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000));
        assert_eq!(w.check(Moment::Queued), Ok(true));
        assert_eq!(w.check(Moment::Queued), Ok(false));
        let tmp = d.path().join("tmp");
        std::fs::write(&tmp, "version A\n").unwrap();
        std::fs::rename(&tmp, &f).unwrap();
        assert_eq!(w.check(Moment::Queued), Ok(true));
        assert_eq!(w.check(Moment::Ran), Ok(false));
    }

    /// While the node runs the stage reads the file: a swap to other bytes and back (A → B → A) leaves A's bytes,
    /// but the stage may have read B. The identity changed, so the node fails; a touch alone fails it too (it
    /// cannot be told apart).
    #[test]
    fn an_external_file_written_while_the_node_ran_fails_it_even_with_its_bytes_back() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("data.jsonl");
        std::fs::write(&f, "version A\n").unwrap();
        let mut w = watch(d.path(), "data.jsonl");
        assert_eq!(w.check(Moment::Queued), Ok(false));
        // past a coarse clock tick: kernels before 6.13 may stamp writes within one tick (1–10 ms) alike
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, "version B\n").unwrap();
        std::fs::write(&f, "version A\n").unwrap();
        let err = w.check(Moment::Ran).unwrap_err();
        assert!(
            err.contains("changed while the node ran (it was written to or replaced, and holds its key's bytes again now, but the stage may have read it in between)"),
            "{err}"
        );
        assert!(err.ends_with("run again"), "{err}");
        let mut w = watch(d.path(), "data.jsonl");
        set_mtime(&f, std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(2_000_000));
        assert!(w.check(Moment::Ran).unwrap_err().contains("holds its key's bytes again now"));
    }

    #[test]
    fn an_external_file_replaced_after_keying_fails_the_check_naming_the_param_and_the_path() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("data.jsonl");
        std::fs::write(&f, "version A\n").unwrap();
        let mtime = std::fs::metadata(&f).unwrap().modified().unwrap();
        let mut w = watch(d.path(), "data.jsonl");
        // replaced by rename with other bytes of the same size and the same mtime (as `cp -p` or `rsync -t` leave
        // it): what (path, size, mtime) alone would not see
        let tmp = d.path().join("tmp");
        std::fs::write(&tmp, "version B\n").unwrap();
        set_mtime(&tmp, mtime);
        std::fs::rename(&tmp, &f).unwrap();
        let err = w.check(Moment::Queued).unwrap_err();
        let path = f.display().to_string();
        assert!(err.starts_with(&format!("param `path`: {path} changed while the node was queued (")), "{err}");
        assert!(err.contains("its output would not match its key") && err.ends_with("run again"), "{err}");
        // and stays failed: the key still holds version A's hash
        assert!(w.check(Moment::Ran).unwrap_err().contains("changed while the node ran"));
        // edited in place
        std::fs::write(&f, "version A\n").unwrap();
        let mut w = watch(d.path(), "data.jsonl");
        std::fs::write(&f, "version C, longer\n").unwrap();
        assert!(w.check(Moment::Ran).unwrap_err().contains("changed while the node ran (its content hashes to"));
        // gone
        std::fs::write(&f, "version A\n").unwrap();
        let mut w = watch(d.path(), "data.jsonl");
        std::fs::remove_file(&f).unwrap();
        assert!(w.check(Moment::Queued).unwrap_err().contains("(it cannot be read now: "));
    }

    #[test]
    fn an_external_directory_is_hashed_again_when_a_file_of_it_changed() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("ckpt/sub")).unwrap();
        std::fs::write(d.path().join("ckpt/config.json"), "{}").unwrap();
        std::fs::write(d.path().join("ckpt/sub/tokenizer.json"), "{}").unwrap();
        let mut w = watch(d.path(), "ckpt");
        assert!(matches!(&w.id, Ident::Dir(files) if files.len() == 2), "{:?}", w.id);
        assert_eq!(w.check(Moment::Queued), Ok(false));
        // a file of it rewritten with the same bytes before the node starts: hashed again, the same
        std::fs::write(d.path().join("ckpt/sub/tokenizer.json"), "{}").unwrap();
        assert_eq!(w.check(Moment::Queued), Ok(true));
        assert_eq!(w.check(Moment::Ran), Ok(false));
        // the same while it ran: the stage may have read another version
        let mut w2 = w.clone();
        std::fs::write(d.path().join("ckpt/config.json"), "{}").unwrap();
        assert!(w2.check(Moment::Ran).unwrap_err().contains("ckpt changed while the node ran (it was written to"));
        // a file added
        let mut w = watch(d.path(), "ckpt");
        std::fs::write(d.path().join("ckpt/model.safetensors"), "weights").unwrap();
        let err = w.check(Moment::Ran).unwrap_err();
        assert!(err.contains("ckpt changed while the node ran (its content hashes to"), "{err}");
    }

    #[test]
    fn a_node_that_wants_a_gpu_waits_for_one_under_device_cuda() {
        use DeviceRequest::*;
        // a free GPU is taken whatever was asked
        assert!(matches!(pick_slot(true, Some(0), true, Cuda), Some(Device::Cuda(0))));
        // every GPU busy: under --device cuda the node waits, under auto it takes a free CPU slot
        assert!(pick_slot(true, None, true, Cuda).is_none());
        assert!(matches!(pick_slot(true, None, true, Auto), Some(Device::Cpu)));
        // nodes that want no GPU take CPU slots, and wait when none is free
        assert!(matches!(pick_slot(false, None, true, Cuda), Some(Device::Cpu)));
        assert!(pick_slot(false, None, false, Auto).is_none());
    }
}
