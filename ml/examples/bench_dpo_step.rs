//! One DPO optimizer step (policy log-probs of chosen and rejected, loss against precomputed reference
//! log-probs, backward, clipping, AdamW), for throughput comparisons with `scripts/ml/bench_dpo_step_hf.py`.
//!
//! usage: bench_dpo_step CHECKPOINT_DIR PAIRS PROMPT_LEN RESPONSE_LEN ITERS THREADS

use rmdistill_ml::logprobs::{PairBatch, Reduction, sequence_logprobs};
use rmdistill_ml::{LanguageModel, OptimConfig, Trainer, tch};
use tch::{Device, Kind};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let [b, p, r, iters, threads]: [usize; 5] = std::array::from_fn(|i| a[i + 2].parse().unwrap());
    tch::set_num_threads(threads as i32);
    tch::manual_seed(0);
    let m = LanguageModel::load(std::path::Path::new(&a[1]), Device::Cpu)?;
    let v = m.config.vocab_size();
    let tok = |i: usize, j: usize, k: usize| ((i * k + j * 17) as i64 % (v - 3)) + 3;
    let prompts: Vec<Vec<i64>> = (0..2 * b).map(|i| (0..p).map(|j| tok(i % b, j, 131)).collect()).collect();
    let responses: Vec<Vec<i64>> = (0..2 * b).map(|i| (0..r).map(|j| tok(i, j, 71)).collect()).collect();
    let pr: Vec<&[i64]> = prompts.iter().map(|x| x.as_slice()).collect();
    let rr: Vec<&[i64]> = responses.iter().map(|x| x.as_slice()).collect();
    let batch = PairBatch::new(&pr, &rr, 0, None, Device::Cpu)?; // rows 0..b chosen, b..2b rejected
    let reference = tch::no_grad(|| sequence_logprobs(m.net(), &batch, Reduction::Sum));
    let mut tr = Trainer::new(
        &m.vs,
        OptimConfig {
            lr: 1e-4,
            total_steps: iters + 1,
            schedule: rmdistill_ml::Schedule::Constant,
            ..Default::default()
        },
    )?;
    let beta = 0.1;
    let mut step = || -> anyhow::Result<f64> {
        let lr = sequence_logprobs(m.net(), &batch, Reduction::Sum) - &reference;
        let margin = lr.narrow(0, 0, b as i64) - lr.narrow(0, b as i64, b as i64);
        let loss = -(margin * beta).log_sigmoid().mean(Kind::Float);
        Ok(tr.backward(&loss, &[])?.unwrap().loss)
    };
    step()?;
    let t = std::time::Instant::now();
    let mut last = 0.0;
    for _ in 0..iters {
        last = step()?;
    }
    let s = t.elapsed().as_secs_f64() / iters as f64;
    println!(
        "{{\"impl\": \"rmdistill\", \"pairs_per_s\": {:.2}, \"sec_per_step\": {s:.4}, \"last_loss\": {last:.5}}}",
        b as f64 / s
    );
    Ok(())
}
