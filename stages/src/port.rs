//! The port between a stage and whatever runs it: a stage reads input artifacts as local paths, writes its outputs
//! under paths it is given, reports progress, and returns a small JSON summary. It never sees storage, cache keys or
//! scheduling, so the same code runs in the engine's process (pure stages), in a worker process per node (stages on
//! libtorch, see [`Runs`] and [`crate::protocol`]), under `node run` on a cluster, or in a unit test.

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
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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
    /// Something the user must see even under `--quiet`: the output is written and valid, but a figure drawn from it
    /// may mislead (duplicates that disagree, records skipped). Kept with the node's cache entry, so `show` repeats it
    /// after the run.
    fn warn(&self, message: &str);
    fn device(&self) -> Device;
    /// Threads the stage may use for its own parallelism.
    fn threads(&self) -> usize;
}

/// A stage kind's declaration: its name, inputs, outputs and parameters, checked before any work, and where its
/// computation runs. Declarations never link libtorch, so the engine knows every stage without loading it.
pub trait Stage: Send + Sync {
    /// Name used in manifests (`kind = "subsample"`); also the stem of the file that declares it
    /// (`stages/src/<kind>.rs`) and, for a worker stage, of the file that computes it (`worker/src/<kind>.rs`).
    fn kind(&self) -> &'static str;
    fn doc(&self) -> &'static str;
    fn inputs(&self) -> &'static [InputSpec];
    fn outputs(&self) -> &'static [OutputSpec];
    /// Parameters that name external files; the runner resolves them against the manifest's directory and puts
    /// their content hash into the cache key (the path as written stays a param: renaming re-keys the node).
    fn path_params(&self) -> &'static [&'static str] {
        &[]
    }
    /// Checks parameters before any work starts (types, ranges, unknown keys).
    fn validate(&self, params: &Map<String, Value>) -> StageResult<()>;
    /// Checks what parameters require of the inputs, knowing which slots the manifest binds (`bound`), also before
    /// any work starts: what `validate` alone cannot see (an oracle checkpoint that nothing names).
    fn validate_bound(&self, _params: &Map<String, Value>, _bound: &dyn Fn(&str) -> bool) -> StageResult<()> {
        Ok(())
    }
    /// Whether the stage wants a GPU slot when one exists.
    fn wants_gpu(&self) -> bool {
        false
    }
    /// The parameters as JSON Schema, derived from the stage's Params struct (names, types, defaults and the doc
    /// comments as descriptions): what `rmdistill stages KIND` prints.
    fn params_schema(&self) -> schemars::Schema;
    /// Where the computation runs.
    fn runs(&self) -> Runs;
    /// Input slots whose content decides some of the node's parameters rather than entering its computation
    /// (`policy`'s `selection`). Before keying a node that binds one, the runner applies [`Stage::bind`] and keys
    /// the decided values instead of the slot, and the stage then runs with those parameters and without the slot:
    /// a policy trained with the β a selection chose is the same computation — and the same cache entry — as the
    /// candidate trained with that β written in the manifest.
    fn binding_slots(&self) -> &'static [&'static str] {
        &[]
    }
    /// The node's parameters with what its bound [`Stage::binding_slots`] decide applied (called only when at
    /// least one of them is bound).
    fn bind(&self, params: &Map<String, Value>, _inputs: &dyn BindInputs) -> StageResult<Map<String, Value>> {
        Ok(params.clone())
    }
}

/// What [`Stage::bind`] may read of a node's inputs: every slot's producing coordinates, and any slot's artifacts
/// materialised on demand (the runner keys nodes on the no-op path, so nothing is fetched unless asked for).
pub trait BindInputs {
    /// The producing nodes' sweep coordinates of the artifacts bound to `slot` (empty when unbound).
    fn coords(&self, slot: &str) -> Vec<&BTreeMap<String, Value>>;
    /// The artifacts bound to `slot` as local, hash-verified paths.
    fn open(&self, slot: &str) -> StageResult<Vec<InputArtifact>>;
}

/// A stage's computation: reads its inputs, writes its outputs, and returns a small JSON summary (counts, metrics)
/// kept in the cache entry.
pub type RunFn = fn(&dyn Ctx) -> StageResult<Value>;

/// Where a stage's computation runs.
#[derive(Clone, Copy)]
pub enum Runs {
    /// Pure computation (no libtorch), in the engine's own process.
    InProcess(RunFn),
    /// Computation on libtorch, in one `rmdistill-worker` process per node (`worker/src/<kind>.rs`): a crash, its
    /// thread count and its GPU memory stay with that node.
    Worker,
}

/// Parses a stage's parameters into its typed struct; an error names the offending field path.
pub fn parse_params<T: DeserializeOwned>(params: &Map<String, Value>) -> StageResult<T> {
    let v = Value::Object(params.clone());
    serde_path_to_error::deserialize(v).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." { String::new() } else { path };
        StageError::invalid(field, plain_serde(&e.into_inner().to_string()))
    })
}

/// A stage's [`StageError::Invalid`] as a user reads it: "param `beta`: …" for a parameter, "input `evals`: …" for
/// an input slot, and the field alone for anything else (a field of a data record, which is no parameter).
pub fn invalid_message(kind: &str, field: &str, message: &str) -> String {
    if field.is_empty() {
        return message.to_string();
    }
    let stage = crate::registry().into_iter().find(|s| s.kind() == kind);
    let top = field.split(['.', '[']).next().unwrap_or(field);
    let is_input = stage.is_some_and(|s| s.inputs().iter().any(|i| i.name == top));
    let is_param = stage.is_none_or(|s| {
        s.params_schema().as_value().get("properties").and_then(|p| p.get(top)).is_some()
            || s.path_params().contains(&top)
    });
    if is_input && !is_param {
        format!("input `{field}`: {message}")
    } else if is_param {
        format!("param `{field}`: {message}")
    } else {
        format!("`{field}`: {message}")
    }
}

/// serde's message in the manifest's terms: "expected u64" means nothing to a user who writes TOML.
pub fn plain_serde(msg: &str) -> String {
    let mut m = msg.to_string();
    for (rust, plain) in [
        ("expected usize", "expected a whole number ≥ 0"),
        ("expected u64", "expected a whole number ≥ 0"),
        ("expected u32", "expected a whole number from 0 to 4294967295"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected isize", "expected a whole number"),
        ("expected i64", "expected a whole number"),
        ("expected i32", "expected a whole number from -2147483648 to 2147483647"),
        ("expected f64", "expected a number"),
        ("expected f32", "expected a number"),
        ("expected fewer elements in array", "expected fewer elements in the list"),
        ("expected more elements in array", "expected more elements in the list"),
    ] {
        m = m.replace(rust, plain);
    }
    m
}

mod derived {
    include!(concat!(env!("OUT_DIR"), "/code_identity.rs"));
}

/// The code identity of a stage kind (32 hex digits), derived at build time by [`crate::code_identity`] from every
/// source file its computation can reach and the versions of the libraries that shape its outputs. Panics for a kind
/// without a declaration file of its name, which the registry test rules out.
pub fn code_identity(stage: &dyn Stage) -> &'static str {
    stage_code(stage.kind())
        .unwrap_or_else(|| panic!("stage kind {} has no stages/src/{}.rs", stage.kind(), stage.kind()))
        .0
}

/// A stage kind's code identity and the workspace-relative source files it covers, as compiled in.
pub fn stage_code(kind: &str) -> Option<(&'static str, &'static [&'static str])> {
    derived::STAGE_CODE.iter().find(|(k, ..)| *k == kind).map(|(_, id, files)| (*id, *files))
}

/// The stage kinds whose declaration files the build found (`stages/src/<kind>.rs` implementing `Stage`).
pub fn derived_kinds() -> Vec<&'static str> {
    derived::STAGE_CODE.iter().map(|(k, ..)| *k).collect()
}

/// The library versions the identities cover (`name=version;…`).
pub const LIBRARY_VERSIONS: &str = derived::LIBS;

#[cfg(test)]
mod tests {
    #[test]
    fn an_invalid_field_is_named_as_what_it_is() {
        use super::invalid_message as m;
        assert_eq!(m("subsample", "size", "too big"), "param `size`: too big");
        assert_eq!(m("report", "evals", "bound twice"), "input `evals`: bound twice");
        // a field of a data record is no parameter (a reviewer's finding: "param rejected: bad.jsonl line 2")
        assert_eq!(m("import", "rejected", "line 2: missing"), "`rejected`: line 2: missing");
        assert_eq!(m("import", "path", "no such file"), "param `path`: no such file");
        // both a parameter and an input (label's `oracle`): the parameter
        assert_eq!(m("label", "oracle", "x"), "param `oracle`: x");
        assert_eq!(m("sft", "arch.d_model", "x"), "param `arch.d_model`: x");
        assert_eq!(m("subsample", "", "plain"), "plain");
        assert_eq!(m("serpent", "x", "y"), "param `x`: y");
        assert_eq!(
            super::plain_serde("invalid type: string \"a\", expected f64"),
            "invalid type: string \"a\", expected a number"
        );
    }
}
