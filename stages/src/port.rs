//! The port between a stage and whatever runs it: a stage reads input artifacts as local paths, writes its outputs
//! under paths it is given, reports progress, and returns a small JSON summary. It never sees storage, cache keys or
//! scheduling, so the same code runs under the local executor, `node run` on a cluster, or a unit test.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Whether an artifact is one file (a Parquet table, a JSON document) or a directory (a checkpoint).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    File,
    Dir,
}

/// One output a stage writes.
#[derive(Clone, Copy, Debug)]
pub struct OutputSpec {
    pub name: &'static str,
    pub kind: ArtifactKind,
    pub doc: &'static str,
}

/// One input slot a stage reads. `many` slots accept the outputs of several upstream nodes (fan-in over a sweep).
#[derive(Clone, Copy, Debug)]
pub struct InputSpec {
    pub name: &'static str,
    pub required: bool,
    pub many: bool,
    pub doc: &'static str,
}

/// What can go wrong inside a stage. `Invalid` is the user's to fix (bad parameter, data that cannot satisfy the
/// request) and names the field; `Failed` is anything else.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    Failed(String),
}

impl StageError {
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        StageError::Invalid { field: field.into(), message: message.into() }
    }
    pub fn failed(message: impl Into<String>) -> Self {
        StageError::Failed(message.into())
    }
}

impl From<anyhow::Error> for StageError {
    fn from(e: anyhow::Error) -> Self {
        StageError::Failed(format!("{e:#}"))
    }
}
impl From<std::io::Error> for StageError {
    fn from(e: std::io::Error) -> Self {
        StageError::Failed(e.to_string())
    }
}
impl From<arrow::error::ArrowError> for StageError {
    fn from(e: arrow::error::ArrowError) -> Self {
        StageError::Failed(e.to_string())
    }
}
impl From<parquet::errors::ParquetError> for StageError {
    fn from(e: parquet::errors::ParquetError) -> Self {
        StageError::Failed(e.to_string())
    }
}

pub type StageResult<T> = Result<T, StageError>;

/// An input artifact as the stage sees it: a local, hash-verified path, and where it came from.
#[derive(Clone, Debug)]
pub struct InputArtifact {
    pub path: PathBuf,
    /// Content hash of the artifact (BLAKE3 hex).
    pub hash: String,
    /// The node that produced it, e.g. `subsample@rho=0.2`.
    pub node: String,
    /// The producing node's sweep coordinates, e.g. `{"rho": 0.2}`.
    pub coords: BTreeMap<String, Value>,
}

/// Which device a stage should compute on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

/// What a running stage can ask of its runner.
pub trait Ctx {
    /// The node's parameters, fully resolved (sweep values and variables substituted), as JSON.
    fn params(&self) -> &Map<String, Value>;
    /// Artifacts bound to an input slot (empty when an optional slot is unbound).
    fn inputs(&self, slot: &str) -> &[InputArtifact];
    /// Local path of an external file a path parameter names (resolved against the manifest, content-hashed).
    fn external(&self, param: &str) -> Option<&Path>;
    /// Where to write an output: a file path, or a directory that exists and is empty.
    fn output_path(&self, name: &str) -> PathBuf;
    /// Progress within the node; `total` 0 means unknown.
    fn progress(&self, done: u64, total: u64);
    /// A line of log for the user.
    fn log(&self, message: &str);
    fn device(&self) -> Device;
    /// Threads the stage may use for its own parallelism.
    fn threads(&self) -> usize;
}

/// A stage kind: a pure computation from input artifacts and parameters to output artifacts.
pub trait Stage: Send + Sync {
    /// Name used in manifests (`kind = "subsample"`).
    fn kind(&self) -> &'static str;
    fn doc(&self) -> &'static str;
    fn inputs(&self) -> &'static [InputSpec];
    fn outputs(&self) -> &'static [OutputSpec];
    /// Parameters that name external files; the runner resolves them against the manifest's directory and puts
    /// their content hash (never the path) into the cache key.
    fn path_params(&self) -> &'static [&'static str] {
        &[]
    }
    /// Source files (under `stages/src/`) whose bytes define this stage's behaviour. Changing any of them changes
    /// the stage's code identity; files of other stages do not.
    fn code_files(&self) -> &'static [&'static str];
    /// Bump to invalidate cached results when behaviour changes without a source change here (e.g. a new model).
    fn version(&self) -> u32 {
        1
    }
    /// Checks parameters before any work starts (types, ranges, unknown keys).
    fn validate(&self, params: &Map<String, Value>) -> StageResult<()>;
    /// Whether the stage wants a GPU slot when one exists.
    fn wants_gpu(&self) -> bool {
        false
    }
    /// Runs the computation. Returns a small JSON summary (counts, metrics) kept in the cache entry.
    fn run(&self, ctx: &dyn Ctx) -> StageResult<Value>;
}

/// Parses a stage's parameters into its typed struct; an error names the offending field path.
pub fn parse_params<T: DeserializeOwned>(params: &Map<String, Value>) -> StageResult<T> {
    let v = Value::Object(params.clone());
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        StageError::invalid(field, e.into_inner().to_string())
    })
}

include!(concat!(env!("OUT_DIR"), "/code_hashes.rs"));

/// The code identity of a stage: BLAKE3 over its declared source files' hashes, its version and the artifact
/// libraries' versions. Panics on a misdeclared file name, which is a bug caught by the registry test.
pub fn code_identity(stage: &dyn Stage) -> String {
    let mut h = blake3::Hasher::new();
    h.update(format!("stage={};version={};libs={}\n", stage.kind(), stage.version(), ARTIFACT_LIBS).as_bytes());
    let mut files: Vec<&str> = stage.code_files().to_vec();
    files.push("port.rs");
    files.sort();
    files.dedup();
    for f in files {
        let (_, hash) = SOURCE_FILES
            .iter()
            .find(|(p, _)| *p == f)
            .unwrap_or_else(|| panic!("stage {} declares unknown source file {f}", stage.kind()));
        h.update(format!("{f}={hash}\n").as_bytes());
    }
    h.finalize().to_hex()[..32].to_string()
}
