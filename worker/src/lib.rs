//! The stages of rmdistill that compute on libtorch (through the ML core, `rmdistill-ml`), and the worker process
//! that runs one of them per node. Each stage is declared in `rmdistill-stages` (`stages/src/<kind>.rs`: inputs,
//! outputs, parameters, their checks) and computed here in the file of the same name (`worker/src/<kind>.rs`, a
//! `run` function over the declaration's parameters). The engine never links this crate: it writes a job file and
//! starts the `rmdistill-worker` binary ([`job`], `rmdistill_stages::protocol`).
//!
//! Modules the stages share: [`data_io`] (device, tokenizer codec, tensor values, on top of the pure
//! `rmdistill_stages::data_io`), [`lm_io`] (log-probs under a frozen model), [`losses`] (the methods' losses),
//! [`rm_scoring`] (reward-model scores).

pub mod data_io;
pub mod evaluate;
pub mod import_model;
pub mod job;
pub mod label;
pub mod lm_io;
pub mod losses;
pub mod policy;
pub mod precompute;
pub mod rm_scoring;
pub mod sample_pairs;
pub mod serve;
pub mod sft;
pub mod synth;
pub mod train_rm;

use rmdistill_stages::{RunFn, Runs};

/// The computation of a stage kind: the worker's own for the stages it implements, the declaration's in-process one
/// for the others (so a job of any kind runs here as it would in the engine).
pub fn implementation(kind: &str) -> Option<RunFn> {
    let own: Option<RunFn> = match kind {
        "evaluate" => Some(evaluate::run),
        "import_model" => Some(import_model::run),
        "label" => Some(label::run),
        "policy" => Some(policy::run),
        "precompute" => Some(precompute::run),
        "sample_pairs" => Some(sample_pairs::run),
        "sft" => Some(sft::run),
        "synth" => Some(synth::run),
        "train_rm" => Some(train_rm::run),
        _ => None,
    };
    own.or_else(|| match rmdistill_stages::stage(kind)?.runs() {
        Runs::InProcess(f) => Some(f),
        Runs::Worker => None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_worker_stage_is_implemented_here_in_a_file_of_its_name() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        for s in rmdistill_stages::registry() {
            let has_file = src.join(format!("{}.rs", s.kind())).is_file();
            match s.runs() {
                rmdistill_stages::Runs::Worker => {
                    assert!(has_file, "worker/src/{}.rs", s.kind());
                    assert!(super::implementation(s.kind()).is_some(), "{}", s.kind());
                }
                rmdistill_stages::Runs::InProcess(_) => {
                    assert!(!has_file, "worker/src/{}.rs computes an in-process stage", s.kind())
                }
            }
        }
    }
}
