//! One preference-optimization step (policy log-probs of both responses of each pair, the loss against
//! precomputed reference log-probs, backward, clipping, AdamW), for side-by-side throughput comparisons with
//! `scripts/ml/bench_dpo_torch.py` (a hand-written PyTorch loop) and `scripts/ml/bench_dpo_trl.py` (TRL's
//! `DPOTrainer`) on the same checkpoint, token ids, shapes, optimizer settings and thread count.
//!
//! LOSS is `dpo` (sigmoid DPO, β = 0.1) or `distill` (d-DPO, METHOD.md eq. 7, β = 0.1, with the same fixed
//! per-pair reward differences as the Python loop). `--unpacked` scores each (prompt, response) row on its own
//! instead of computing each pair's shared prompt once. `--device=cuda` runs it on the GPU, under bf16 autocast
//! as the stages do there (`--fp32` for plain float32); scripts/gpu/check.sh turns the printed figures into MFU.
//!
//! `last_loss_exact` and `weights_fingerprint` (a hash of every parameter's bits after the last step) tell whether two
//! runs — two machines, or two settings of `ATEN_CPU_CAPABILITY` / `MKL_CBWR` — computed the very same numbers.
//!
//! Besides the times it prints `positions_per_step` (the token positions the model computes per step: with shared
//! prompts each pair's prompt once, plus padding) and `non_embedding_params` (N, without token and position
//! embeddings), so that FLOPs can be counted as 6·N per position for the forward and backward pass.
//!
//! usage: bench_dpo_step CHECKPOINT_DIR PAIRS PROMPT_LEN RESPONSE_LEN ITERS THREADS [LOSS] [--unpacked]
//!        [--device=cpu|cuda] [--fp32]

#[path = "common/cpu_time.rs"]
mod cpu_time;

use rmdistill_ml::logprobs::{PairBatch, Reduction, sequence_logprobs};
use rmdistill_ml::{LanguageModel, OptimConfig, Trainer, tch};
use tch::{Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let all: Vec<String> = std::env::args().collect();
    let flag = |f: &str| all.iter().any(|s| s == f);
    let unpacked = flag("--unpacked");
    let a: Vec<&String> = all.iter().filter(|s| !s.starts_with("--")).collect();
    anyhow::ensure!(
        a.len() >= 7,
        "usage: bench_dpo_step CHECKPOINT_DIR PAIRS PROMPT_LEN RESPONSE_LEN ITERS THREADS [LOSS] [--unpacked] [--device=cpu|cuda] [--fp32]"
    );
    let [b, p, r, iters, threads]: [usize; 5] = std::array::from_fn(|i| a[i + 2].parse().unwrap());
    let loss_kind = a.get(7).map_or("dpo", |s| s.as_str());
    anyhow::ensure!(matches!(loss_kind, "dpo" | "distill"), "LOSS must be dpo or distill");
    let device = match all.iter().find_map(|s| s.strip_prefix("--device=")).unwrap_or("cpu") {
        "cpu" => Device::Cpu,
        "cuda" => rmdistill_ml::DeviceChoice::Cuda.resolve()?,
        other => anyhow::bail!("--device={other}: expected cpu or cuda"),
    };
    // The stages' precision policy: bf16 autocast on a GPU (LM head in fp32), float32 on CPU.
    let bf16 = device.is_cuda() && !flag("--fp32");
    tch::set_num_threads(threads as i32);
    rmdistill_ml::tune_allocator();
    tch::manual_seed(0);
    let m = LanguageModel::load(std::path::Path::new(a[1].as_str()), device)?;
    let non_embedding: i64 =
        m.vs.variables()
            .iter()
            .filter(|(name, _)| !["wte", "wpe", "embed_tokens", "lm_head"].iter().any(|e| name.contains(e)))
            .map(|(_, t)| t.numel() as i64)
            .sum();
    let v = m.config.vocab_size();
    let tok = |i: usize, j: usize, k: usize| ((i * k + j * 17) as i64 % (v - 3)) + 3;
    let prompts: Vec<Vec<i64>> = (0..2 * b).map(|i| (0..p).map(|j| tok(i % b, j, 131)).collect()).collect();
    let responses: Vec<Vec<i64>> = (0..2 * b).map(|i| (0..r).map(|j| tok(i, j, 71)).collect()).collect();
    let pr: Vec<&[i64]> = prompts.iter().map(|x| x.as_slice()).collect();
    let rr: Vec<&[i64]> = responses.iter().map(|x| x.as_slice()).collect();
    let mut batch = PairBatch::new(&pr, &rr, 0, None, device)?; // rows 0..b chosen, b..2b rejected
    if unpacked {
        batch = batch.without_packing();
    }
    let logprobs = || {
        if bf16 {
            rmdistill_ml::with_autocast(device, || sequence_logprobs(m.net(), &batch, Reduction::Sum))
        } else {
            sequence_logprobs(m.net(), &batch, Reduction::Sum)
        }
    };
    let reference = tch::no_grad(logprobs);
    let reward_diff = Tensor::from_slice(&(0..b).map(|i| ((i * 37) % 11) as f32 / 5.0 - 1.0).collect::<Vec<f32>>())
        .to_kind(Kind::Float)
        .to_device(device);
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
    let bb = b as i64;
    let mut step = || -> anyhow::Result<f64> {
        let logr = logprobs() - &reference;
        let delta = logr.narrow(0, 0, bb) - logr.narrow(0, bb, bb);
        let loss = if loss_kind == "dpo" {
            -(delta * beta).log_sigmoid().mean(Kind::Float)
        } else {
            (&reward_diff - delta * beta).square().mean(Kind::Float)
        };
        Ok(tr.backward(&loss, &[])?.unwrap().loss)
    };
    step()?;
    if device.is_cuda() {
        step()?; // a second warm-up: the caching allocator and cuBLAS pick their algorithms on the first steps
        tch::Cuda::synchronize(0);
    }
    let (t, c) = (std::time::Instant::now(), cpu_time::now());
    let mut last = 0.0;
    let mut fastest = f64::INFINITY;
    for _ in 0..iters {
        let c0 = cpu_time::now();
        last = step()?;
        fastest = fastest.min(cpu_time::now() - c0);
    }
    if device.is_cuda() {
        tch::Cuda::synchronize(0);
    }
    let s = t.elapsed().as_secs_f64() / iters as f64;
    let cpu = (cpu_time::now() - c) / iters as f64;
    let positions = batch.num_positions();
    let fingerprint = weights_fingerprint(&m.vs)?;
    println!(
        "{{\"impl\": \"rmdistill\", \"loss\": \"{loss_kind}\", \"packed\": {}, \"device\": \"{}\", \"precision\": \"{}\", \"pairs\": {b}, \"prompt_len\": {p}, \"response_len\": {r}, \"pairs_per_s\": {:.2}, \"sec_per_step\": {s:.4}, \"cpu_sec_per_step\": {cpu:.4}, \"min_cpu_sec_per_step\": {fastest:.4}, \"last_loss\": {last:.5}, \"last_loss_exact\": \"{last:?}\", \"weights_fingerprint\": \"{fingerprint:016x}\", \"positions_per_step\": {positions}, \"positions_per_s\": {:.1}, \"non_embedding_params\": {non_embedding}}}",
        batch.is_packed(),
        if device.is_cuda() { "cuda" } else { "cpu" },
        if bf16 { "bf16-autocast" } else { "fp32" },
        b as f64 / s,
        positions as f64 / s
    );
    Ok(())
}

/// A hash of every parameter's f32 bits, by name: equal exactly when the weights are bit for bit the same.
fn weights_fingerprint(vs: &tch::nn::VarStore) -> anyhow::Result<u64> {
    use std::hash::{Hash, Hasher};
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    // DefaultHasher::new() is SipHash with fixed keys: the same on every machine for one build
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (name, t) in vars {
        name.hash(&mut h);
        let values = Vec::<f32>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Float).flatten(0, -1))?;
        values.iter().for_each(|x| x.to_bits().hash(&mut h));
    }
    Ok(h.finish())
}
