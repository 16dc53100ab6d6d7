//! What each rmdistill stage computes. Every stage is pure computation behind the port in [`port`]: read input
//! artifacts, write output artifacts, report progress. Storage, caching and scheduling belong to the engine.

#[cfg(test)]
mod data_chain_tests;
pub mod data_io;
pub mod eval_stats;
pub mod evaluate;
pub mod generate;
pub mod import;
pub mod import_model;
pub mod label;
pub mod lm_io;
pub mod losses;
pub mod merge;
pub mod paper;
pub mod plots;
pub mod policy;
pub mod port;
pub mod precompute;
pub mod report;
pub mod sample_pairs;
pub mod select;
pub mod sft;
pub mod stats;
pub mod subsample;
pub mod synth;
pub mod table;
pub mod train_rm;

pub use port::{ArtifactKind, Ctx, Device, InputArtifact, InputSpec, OutputSpec, Stage, StageError, StageResult};

/// Every stage kind a manifest may name.
pub fn registry() -> Vec<&'static dyn Stage> {
    vec![
        &import::Import,
        &import_model::ImportModel,
        &subsample::Subsample,
        &generate::Generate,
        &policy::Policy,
        &evaluate::Evaluate,
        &evaluate::MergeEval,
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
    #[test]
    fn every_stage_declares_real_source_files() {
        for s in super::registry() {
            let id = super::port::code_identity(s);
            assert_eq!(id.len(), 32, "{}", s.kind());
        }
    }
}

#[cfg(test)]
#[path = "../tests/support/policy_e2e.rs"]
mod policy_e2e;
