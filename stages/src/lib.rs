//! Every stage kind rmdistill knows, declared behind the port in [`port`]: its inputs, outputs and parameters, checked
//! before any work, and where it computes. Stages that need no libtorch (import, generate, subsample, merge,
//! merge_eval, select, report) compute here, in the engine's process; the others are declared here and computed by
//! the `rmdistill-worker` crate, one worker process per node (see [`port::Runs`]). The pure modules stages share live
//! here too. This crate never links libtorch, so the engine that depends on it starts instantly.
//!
//! A stage file never imports another stage file: what two stages share lives in a module of its own. The stage files
//! are the kinds [`registry`] lists (`stages/src/<kind>.rs`); every other module here is shared (e.g. [`data_io`],
//! [`table`], [`stats`], [`eval_stats`], [`oracle`], [`evaluation`], [`selection`], [`paper`], [`reuse`], [`shards`],
//! [`longer`], [`method`]).
//! Each stage's code identity is derived from the files it reaches ([`code_identity`]).

pub mod code_identity;
pub mod data_io;
pub mod eval_stats;
pub mod evaluate;
pub mod evaluation;
pub mod generate;
pub mod grid;
pub mod import;
pub mod import_model;
pub mod label;
pub mod longer;
pub mod merge;
pub mod merge_eval;
pub mod method;
pub mod oracle;
pub mod paper;
pub mod param_docs;
pub mod plots;
pub mod policy;
pub mod port;
pub mod precompute;
pub mod protocol;
pub mod report;
pub mod reuse;
pub mod sample_pairs;
pub mod sampling_params;
pub mod select;
pub mod selection;
pub mod sft;
pub mod shards;
pub mod stats;
pub mod subsample;
pub mod synth;
pub mod table;
pub mod tokenizer_file;
pub mod train_rm;

pub use port::{
    ArtifactKind, BindInputs, Ctx, Device, InputArtifact, InputSpec, OutputSpec, RunFn, Runs, Stage, StageError,
    StageResult,
};

/// Every stage kind a manifest may name.
pub fn registry() -> Vec<&'static dyn Stage> {
    vec![
        &import::Import,
        &import_model::ImportModel,
        &subsample::Subsample,
        &generate::Generate,
        &policy::Policy,
        &evaluate::Evaluate,
        &merge_eval::MergeEval,
        &report::Report,
        &select::Select,
        &synth::Synth,
        &sft::Sft,
        &sample_pairs::SamplePairs,
        &label::Label,
        &merge::Merge,
        &train_rm::TrainRm,
        &precompute::Precompute,
    ]
}

/// The stage of a given kind, if there is one.
pub fn stage(kind: &str) -> Option<&'static dyn Stage> {
    registry().into_iter().find(|s| s.kind() == kind)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    #[test]
    fn every_stage_kind_is_declared_in_a_file_of_its_name() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let kinds: Vec<&str> = super::registry().iter().map(|s| s.kind()).collect();
        for s in super::registry() {
            assert!(root.join(format!("{}.rs", s.kind())).is_file(), "stages/src/{}.rs", s.kind());
            let (id, files) =
                super::port::stage_code(s.kind()).unwrap_or_else(|| panic!("{} has no code identity", s.kind()));
            assert_eq!(id.len(), 32, "{}", s.kind());
            assert!(files.contains(&format!("stages/src/{}.rs", s.kind()).as_str()), "{}: {files:?}", s.kind());
            assert!(files.contains(&"stages/src/port.rs"), "{}: {files:?}", s.kind());
            let worker_file = format!("worker/src/{}.rs", s.kind());
            match s.runs() {
                super::Runs::Worker => assert!(files.contains(&worker_file.as_str()), "{}: {files:?}", s.kind()),
                super::Runs::InProcess(_) => {
                    assert!(
                        files.iter().all(|f| !f.starts_with("worker/") && !f.starts_with("ml/")),
                        "{}: {files:?}",
                        s.kind()
                    )
                }
            }
        }
        // and every declaration file found in the tree is a registered kind
        for k in super::port::derived_kinds() {
            assert!(kinds.contains(&k), "stages/src/{k}.rs declares a stage that is not in the registry");
        }
    }
}
