//! rmdistill's engine: manifests, the DAG of nodes, content-addressed cache keys, the artifact store, the local
//! executor and the command line. What each stage computes lives in the `rmdistill-stages` crate (declarations, and
//! the stages that need no libtorch) and the `rmdistill-worker` crate (stages on libtorch, run in a worker process per
//! node, see [`worker`]); this crate does not link libtorch.

pub mod cli;
pub mod error;
pub mod exec;
pub mod export;
pub mod gc;
pub mod key;
pub mod manifest;
pub mod node_ctx;
pub mod plan;
pub mod progress;
pub mod remote;
pub mod render;
pub mod show;
pub mod store;
pub mod units;
pub mod worker;
