//! A minimal [`Ctx`] that runs a stage on local files, for unit tests and examples (no engine, no store).
//! Included with `#[path]` both by the crate's unit tests (`crate::table::local_ctx`) and by the examples, so it
//! names the port through `super::port`, which each includer brings into scope.
#![allow(dead_code)]

use super::port::{Ctx, Device, InputArtifact};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct LocalCtx {
    pub params: Map<String, Value>,
    pub inputs: BTreeMap<String, Vec<InputArtifact>>,
    pub externals: BTreeMap<String, PathBuf>,
    pub out_dir: PathBuf,
    pub progress: Mutex<Vec<(u64, u64)>>,
    pub logs: Mutex<Vec<String>>,
    pub warnings: Mutex<Vec<String>>,
    pub threads: usize,
}

impl LocalCtx {
    /// A context whose outputs go to `out_dir/<name>.parquet`, with `params` (a JSON object).
    pub fn new(out_dir: &Path, params: Value) -> Self {
        let Value::Object(params) = params else { panic!("params must be a JSON object") };
        LocalCtx {
            params,
            inputs: BTreeMap::new(),
            externals: BTreeMap::new(),
            out_dir: out_dir.to_path_buf(),
            progress: Mutex::new(Vec::new()),
            logs: Mutex::new(Vec::new()),
            warnings: Mutex::new(Vec::new()),
            threads: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        }
    }

    /// Binds the external file of a path parameter (as the engine does after resolving it).
    pub fn external(mut self, param: &str, path: impl Into<PathBuf>) -> Self {
        self.externals.insert(param.to_string(), path.into());
        self
    }

    /// Binds one file to an input slot.
    pub fn input(mut self, slot: &str, path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let hash = std::fs::read(&path).map(|b| blake3::hash(&b).to_hex().to_string()).unwrap_or_default();
        self.inputs.entry(slot.to_string()).or_default().push(InputArtifact {
            path,
            hash,
            node: format!("test-{slot}"),
            coords: BTreeMap::new(),
        });
        self
    }

    pub fn out(&self, name: &str) -> PathBuf {
        self.out_dir.join(format!("{name}.parquet"))
    }
}

impl Ctx for LocalCtx {
    fn params(&self) -> &Map<String, Value> {
        &self.params
    }
    fn inputs(&self, slot: &str) -> &[InputArtifact] {
        self.inputs.get(slot).map(|v| v.as_slice()).unwrap_or(&[])
    }
    fn external(&self, param: &str) -> Option<&Path> {
        self.externals.get(param).map(|p| p.as_path())
    }
    fn output_path(&self, name: &str) -> PathBuf {
        self.out(name)
    }
    fn progress(&self, done: u64, total: u64) {
        self.progress.lock().unwrap().push((done, total));
    }
    fn log(&self, message: &str) {
        self.logs.lock().unwrap().push(message.to_string());
    }
    fn warn(&self, message: &str) {
        self.warnings.lock().unwrap().push(message.to_string());
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn threads(&self) -> usize {
        self.threads
    }
}

/// The project's real preference data: `../shared/data` beside the repository (the clone's parent must hold
/// `shared/`), or $RMDISTILL_SHARED_DATA. Missing, the tests that read it stop here saying where they looked.
pub fn shared_data() -> PathBuf {
    let dir = match std::env::var_os("RMDISTILL_SHARED_DATA") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data")),
    };
    assert!(
        dir.is_dir(),
        "the shared test data is not at {} (the tests read ../shared/data beside the repository): clone the \
         repository beside shared/, link shared/ there, or set RMDISTILL_SHARED_DATA",
        dir.display()
    );
    dir
}
