//! Batched sequence log-prob throughput (the offline precompute's inner loop), to compare with
//! `scripts/ml/bench_logprobs_hf.py` on the same model, token ids, shapes and thread count.
//!
//! LAYOUT `pairs` (the default; what the precompute scores: every prompt with its two responses, row i and row
//! i + BATCH/2 sharing prompt i, so each prompt is computed once) or `distinct` (every row its own prompt).
//!
//! usage: bench_logprobs CHECKPOINT_DIR BATCH PROMPT_LEN RESPONSE_LEN ITERS THREADS [pairs|distinct]

#[path = "common/cpu_time.rs"]
mod cpu_time;

use rmdistill_ml::logprobs::{PairBatch, Reduction, sequence_logprobs};
use rmdistill_ml::{LanguageModel, tch};
use tch::Device;

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let dir = std::path::Path::new(&a[1]);
    let [b, p, r, iters, threads]: [usize; 5] = std::array::from_fn(|i| a[i + 2].parse().unwrap());
    let layout = a.get(7).map_or("pairs", |s| s.as_str());
    anyhow::ensure!(matches!(layout, "pairs" | "distinct"), "LAYOUT must be pairs or distinct");
    anyhow::ensure!(layout == "distinct" || b % 2 == 0, "pairs need an even BATCH");
    tch::set_num_threads(threads as i32);
    rmdistill_ml::tune_allocator();
    let m = LanguageModel::load(dir, Device::Cpu)?;
    let v = m.config.vocab_size();
    let prompt_of = |i: usize| if layout == "pairs" { i % (b / 2) } else { i };
    let prompts: Vec<Vec<i64>> =
        (0..b).map(|i| (0..p).map(|j| ((prompt_of(i) * 131 + j * 17) as i64 % (v - 3)) + 3).collect()).collect();
    let responses: Vec<Vec<i64>> =
        (0..b).map(|i| (0..r).map(|j| ((i * 71 + j * 29) as i64 % (v - 3)) + 3).collect()).collect();
    let pr: Vec<&[i64]> = prompts.iter().map(|x| x.as_slice()).collect();
    let rr: Vec<&[i64]> = responses.iter().map(|x| x.as_slice()).collect();
    let batch = PairBatch::new(&pr, &rr, 0, None, Device::Cpu)?;
    let run = || tch::no_grad(|| sequence_logprobs(m.net(), &batch, Reduction::Sum));
    let first = run();
    let (t, c) = (std::time::Instant::now(), cpu_time::now());
    let mut fastest = f64::INFINITY;
    for _ in 0..iters {
        let c0 = cpu_time::now();
        let _ = run();
        fastest = fastest.min(cpu_time::now() - c0);
    }
    let s = t.elapsed().as_secs_f64() / iters as f64;
    let cpu = (cpu_time::now() - c) / iters as f64;
    println!(
        "{{\"impl\": \"rmdistill\", \"layout\": \"{layout}\", \"packed\": {}, \"seqs_per_s\": {:.2}, \"tokens_per_s\": {:.0}, \"sec_per_batch\": {s:.4}, \"cpu_sec_per_batch\": {cpu:.4}, \"min_cpu_sec_per_batch\": {fastest:.4}, \"first_logprob\": {:.5}}}",
        batch.is_packed(),
        b as f64 / s,
        (b * (p + r)) as f64 / s,
        f64::try_from(first.get(0))?
    );
    Ok(())
}
