//! What a node's stage is handed, in this process ([`NodeCtx`]) or in a worker ([`job`], [`worker_env`]): its parameters as its key
//! records them, its inputs (hash-verified local copies, with the producing node's name and coordinates), its
//! external files, where to write its outputs, its device and its threads. Every byte of this file can change what a
//! stage writes, so it is part of every stage's code identity (`stages/src/code_identity.rs`, `HARNESS`), with the
//! worker's side of the same hand-over (`worker/src/job.rs`); keep here only that hand-over, since an edit anywhere in
//! this file re-runs every stage.

use crate::key::KeyRecord;
use crate::plan::{Node, Plan};
use crate::progress::Progress;
use crate::store::{OutputRef, Store};
use rmdistill_stages::protocol::{self, Job};
use rmdistill_stages::{Ctx, Device, InputArtifact};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The context of a stage that runs in the engine's process.
pub struct NodeCtx<'a> {
    pub node: &'a Node,
    pub params: &'a Map<String, Value>,
    pub inputs: BTreeMap<String, Vec<InputArtifact>>,
    pub outputs: BTreeMap<String, PathBuf>,
    pub progress: &'a Progress,
    pub device: Device,
    pub threads: usize,
}

impl Ctx for NodeCtx<'_> {
    fn params(&self) -> &Map<String, Value> {
        self.params
    }
    fn inputs(&self, slot: &str) -> &[InputArtifact] {
        self.inputs.get(slot).map_or(&[], Vec::as_slice)
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
    fn warn(&self, message: &str) {
        self.progress.warning(&self.node.name, message);
    }
    fn device(&self) -> Device {
        self.device
    }
    fn threads(&self) -> usize {
        self.threads
    }
}

/// An upstream output as a stage reads it: materialised locally (hash-verified), with where it came from.
pub fn input_artifact(plan: &Plan, store: &Store, o: &OutputRef, up: usize) -> anyhow::Result<InputArtifact> {
    Ok(InputArtifact {
        path: store.materialize(o)?,
        hash: o.hash.clone(),
        node: plan.nodes[up].name.clone(),
        coords: plan.nodes[up].coords.clone(),
    })
}

/// The job a worker runs a node's stage from: the same hand-over as [`NodeCtx`], written to the worker.
pub fn job(
    n: &Node,
    record: &KeyRecord,
    inputs: BTreeMap<String, Vec<InputArtifact>>,
    outputs: BTreeMap<String, PathBuf>,
    device: Device,
    threads: usize,
) -> Job {
    Job {
        v: protocol::VERSION,
        node: n.name.clone(),
        kind: n.kind.kind().to_string(),
        code: record.code.clone(),
        params: record.params.clone(),
        inputs,
        externals: n.externals.clone(),
        outputs,
        device,
        threads,
        interop_threads: 1,
    }
}

/// The environment a worker process starts with for `threads` threads per node: libtorch's OpenMP pool and MKL are
/// sized at start-up from these, before the worker can call `set_num_threads` ([`job`] hands it the same count).
pub fn worker_env(threads: &str) -> [(&'static str, &str); 2] {
    [("OMP_NUM_THREADS", threads), ("MKL_NUM_THREADS", threads)]
}
