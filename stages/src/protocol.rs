//! How the engine hands a node to a worker process and hears back from it. Stages on libtorch run in
//! `rmdistill-worker`, one process per node, so that a crash, an out-of-memory kill, thread pools and GPU memory stay
//! with that node, and the engine itself never loads libtorch.
//!
//! - The engine writes a [`Job`] as JSON to `job.json` in the node's scratch directory and starts
//!   `rmdistill-worker run <job.json>`.
//! - The worker answers with [`Message`]s, one JSON object per line, on its original standard output; it points its
//!   own file descriptor 1 at standard error first, so that nothing a library prints can corrupt the protocol.
//!   Standard error is free text (the engine keeps its tail for failure messages).
//! - A clean run is `Done` as the last message and exit status 0; only then does the engine store the outputs. `Invalid`
//!   or `Failed` (status 1), a job the worker refuses (status 3, e.g. a different code identity), a signal, or an exit
//!   without `Done` fail the node, and nothing of it is stored.
//!
//! `rmdistill-worker devices` answers one [`Message::Devices`] (how many CUDA devices libtorch can use), which the
//! engine asks once, and only when a node that wants a GPU must run with `--device auto|cuda`.

use crate::port::{Device, InputArtifact};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Version of the job format and of the messages; a worker refuses other versions. 2: `Message::Warn`.
pub const VERSION: u32 = 2;

/// The file name of a job in its node's scratch directory.
pub const JOB_FILE: &str = "job.json";

/// Exit status of a worker that refused its job (bad job file, another protocol version or code identity).
pub const EXIT_REFUSED: i32 = 3;

/// What to do about a node that ran out of memory: said alike whether libtorch's allocation failed inside the
/// worker (the worker reports it) or Rust's did and aborted the worker (the engine sees the abort).
pub const OUT_OF_MEMORY_ADVICE: &str = "the node needs more memory than it is given; a smaller model, batch or \
                                        sequence length, fewer nodes at once (`--jobs`), or a machine with more memory";

/// One node for a worker to compute.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub v: u32,
    /// The node's name, for messages (`policy@rho=0.2,seed=0`).
    pub node: String,
    /// The stage kind.
    pub kind: String,
    /// The stage kind's code identity as the engine computed its cache key with; the worker refuses the job when its
    /// own compiled-in identity differs (the two binaries were built from different sources).
    pub code: String,
    /// Resolved parameters.
    pub params: Map<String, Value>,
    /// Input slot → artifacts (local, verified paths, with their hashes, producing nodes and coordinates).
    pub inputs: BTreeMap<String, Vec<InputArtifact>>,
    /// Path parameter → the local file it names.
    pub externals: BTreeMap<String, PathBuf>,
    /// Output name → where to write it (a file path, or an existing empty directory).
    pub outputs: BTreeMap<String, PathBuf>,
    pub device: Device,
    /// libtorch intra-op threads (and the stage's own parallelism); the engine keeps jobs × threads ≤ cores.
    pub threads: usize,
    /// libtorch inter-op threads.
    pub interop_threads: usize,
}

/// What a worker reports, one JSON object per line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Message {
    /// Progress within the node; `total` 0 means unknown.
    Progress { done: u64, total: u64 },
    /// A line of log for the user.
    Log { message: String },
    /// A warning for the user (see `Ctx::warn`), shown in every mode and kept with the cache entry.
    Warn { message: String },
    /// The outputs are written; the summary goes into the cache entry. The last message of a clean run.
    Done { summary: Value },
    /// A parameter or input the user must fix (`field` names it; empty when none applies).
    Invalid { field: String, message: String },
    /// Anything else that went wrong.
    Failed { message: String },
    /// CUDA devices libtorch can use (the answer to `rmdistill-worker devices`).
    Devices { cuda: usize },
}

impl Message {
    /// One protocol line (without the newline).
    pub fn line(&self) -> String {
        serde_json::to_string(self).expect("protocol messages serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_of_json_each() {
        let m = Message::Log { message: "two\nlines".into() };
        assert!(!m.line().contains('\n'));
        assert_eq!(serde_json::from_str::<Message>(&m.line()).unwrap(), m);
        let w = Message::Warn { message: "w".into() };
        assert_eq!(w.line(), r#"{"warn":{"message":"w"}}"#);
        assert_eq!(serde_json::from_str::<Message>(&w.line()).unwrap(), w);
        assert_eq!(Message::Progress { done: 1, total: 2 }.line(), r#"{"progress":{"done":1,"total":2}}"#);
        assert!(serde_json::from_str::<Message>(r#"{"progress":{"done":1}}"#).is_err());
    }

    #[test]
    fn jobs_round_trip() {
        let mut inputs = BTreeMap::new();
        inputs.insert(
            "pairs".to_string(),
            vec![InputArtifact {
                path: "/tmp/x".into(),
                hash: "ab".into(),
                node: "n@a=1".into(),
                coords: [("a".to_string(), Value::from(1))].into_iter().collect(),
            }],
        );
        let j = Job {
            v: VERSION,
            node: "policy@rho=0.2".into(),
            kind: "policy".into(),
            code: "0123".into(),
            params: Map::new(),
            inputs,
            externals: BTreeMap::new(),
            outputs: [("model".to_string(), PathBuf::from("/tmp/model"))].into_iter().collect(),
            device: Device::Cuda(1),
            threads: 2,
            interop_threads: 1,
        };
        let text = serde_json::to_string(&j).unwrap();
        assert!(text.contains(r#""device":{"cuda":1}"#), "{text}");
        let back: Job = serde_json::from_str(&text).unwrap();
        assert_eq!(back.inputs["pairs"][0].coords["a"], 1);
        assert_eq!(back.device, Device::Cuda(1));
    }
}
