//! Batched sequence log-prob throughput (the offline precompute's inner loop), to compare with
//! `scripts/ml/bench_logprobs_hf.py` on the same model, shapes and thread count.
//!
//! usage: cargo run --release -p rmdistill-ml --example bench_logprobs -- CHECKPOINT_DIR BATCH PROMPT_LEN RESPONSE_LEN ITERS THREADS

use rmdistill_ml::logprobs::{PairBatch, Reduction, sequence_logprobs};
use rmdistill_ml::{LanguageModel, tch};
use tch::Device;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let dir = std::path::Path::new(&a[1]);
    let [b, p, r, iters, threads]: [usize; 5] = std::array::from_fn(|i| a[i + 2].parse().unwrap());
    tch::set_num_threads(threads as i32);
    let m = LanguageModel::load(dir, Device::Cpu)?;
    let v = m.config.vocab_size();
    let prompts: Vec<Vec<i64>> =
        (0..b).map(|i| (0..p).map(|j| ((i * 131 + j * 17) as i64 % (v - 3)) + 3).collect()).collect();
    let responses: Vec<Vec<i64>> =
        (0..b).map(|i| (0..r).map(|j| ((i * 71 + j * 29) as i64 % (v - 3)) + 3).collect()).collect();
    let pr: Vec<&[i64]> = prompts.iter().map(|x| x.as_slice()).collect();
    let rr: Vec<&[i64]> = responses.iter().map(|x| x.as_slice()).collect();
    let batch = PairBatch::new(&pr, &rr, 0, None, Device::Cpu)?;
    let run = || tch::no_grad(|| sequence_logprobs(m.net(), &batch, Reduction::Sum));
    let first = run();
    let t = std::time::Instant::now();
    for _ in 0..iters {
        let _ = run();
    }
    let s = t.elapsed().as_secs_f64() / iters as f64;
    println!(
        "{{\"impl\": \"rmdistill\", \"seqs_per_s\": {:.2}, \"tokens_per_s\": {:.0}, \"sec_per_batch\": {s:.4}, \"first_logprob\": {:.5}}}",
        b as f64 / s,
        (b * (p + r)) as f64 / s,
        f64::try_from(first.get(0))?
    );
    Ok(())
}
