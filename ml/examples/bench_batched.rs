//! K policies trained one after another vs as one batched model, on the shapes of the embedded experiment (tiny
//! GPT-2 or Llama from scratch, 16 pairs per step, prompts of a few dozen tokens): the speed that lets a sweep train
//! every β candidate of a method. Both sides run the same DPO steps (each model its own β) on the same batches and
//! must end with bit-identical losses; the example fails if they differ.
//!
//! usage: bench_batched K PAIRS PROMPT_LEN RESPONSE_LEN ITERS THREADS [D_MODEL N_LAYER gpt2|llama]

#[path = "common/cpu_time.rs"]
mod cpu_time;

use rmdistill_ml::logprobs::{PairBatch, Reduction, sequence_logprobs};
use rmdistill_ml::{
    BatchedCausalLm, BatchedTrainer, Gpt2Config, LanguageModel, LlamaConfig, ModelConfig, OptimConfig, Trainer, tch,
};
use tch::{Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let [k, b, p, r, iters, threads]: [usize; 6] = std::array::from_fn(|i| a[i + 1].parse().unwrap());
    let d: i64 = a.get(7).map_or(64, |s| s.parse().unwrap());
    let layers: i64 = a.get(8).map_or(2, |s| s.parse().unwrap());
    let arch = a.get(9).map_or("gpt2", |s| s.as_str());
    tch::set_num_threads(threads as i32);
    rmdistill_ml::tune_allocator();
    tch::manual_seed(0);
    let vocab = 400;
    let config = match arch {
        "gpt2" => {
            let mut c = Gpt2Config::new(vocab, 128, d, layers, 4);
            c.n_inner = Some(4 * d);
            ModelConfig::Gpt2(c)
        }
        "llama" => ModelConfig::Llama(LlamaConfig::new(vocab, d, 4 * d, layers, 4, 4)),
        other => anyhow::bail!("unknown architecture {other}"),
    };
    let base = LanguageModel::new(config, Device::Cpu);
    let betas: Vec<f64> = (0..k).map(|i| 0.1 * 10f64.powi(i as i32 % 3)).collect();
    let tok = |i: usize, j: usize, m: usize| ((i * m + j * 17) as i64 % (vocab - 3)) + 3;
    // a fresh batch per step, as in training (same batches on both sides)
    let batches: Vec<PairBatch> = (0..iters + 1)
        .map(|s| {
            let prompts: Vec<Vec<i64>> =
                (0..2 * b).map(|i| (0..p).map(|j| tok(s * b + i % b, j, 131)).collect()).collect();
            let responses: Vec<Vec<i64>> =
                (0..2 * b).map(|i| (0..r - (i % 3)).map(|j| tok(s * 2 * b + i, j, 71)).collect()).collect();
            let pr: Vec<&[i64]> = prompts.iter().map(|x| x.as_slice()).collect();
            let rr: Vec<&[i64]> = responses.iter().map(|x| x.as_slice()).collect();
            PairBatch::new(&pr, &rr, 0, None, Device::Cpu).unwrap()
        })
        .collect();
    let refs: Vec<Tensor> =
        batches.iter().map(|bt| tch::no_grad(|| sequence_logprobs(base.net(), bt, Reduction::Sum))).collect();
    let cfg = OptimConfig { lr: 5e-4, total_steps: iters + 1, grad_clip: Some(1.0), ..Default::default() };
    let bb = b as i64;
    let dpo = |lp: &Tensor, reference: &Tensor, beta: &Tensor| {
        let lr = lp - reference;
        let delta = lr.narrow(-1, 0, bb) - lr.narrow(-1, bb, bb);
        -(delta * beta).log_sigmoid().mean_dim(-1, false, Kind::Float)
    };

    // K models one after another (each its own Trainer), timed over all K
    let models: Vec<LanguageModel> = (0..k).map(|_| base.try_clone().unwrap()).collect();
    let mut trainers: Vec<Trainer> = models.iter().map(|m| Trainer::new(&m.vs, cfg.clone()).unwrap()).collect();
    let mut one_losses = vec![vec![]; k];
    let mut seq_time = (0.0, 0.0);
    for (s, batch) in batches.iter().enumerate() {
        let (t, c) = (std::time::Instant::now(), cpu_time::now());
        for (i, (m, tr)) in models.iter().zip(trainers.iter_mut()).enumerate() {
            let beta = Tensor::from(betas[i]).to_kind(Kind::Float);
            let loss = dpo(&sequence_logprobs(m.net(), batch, Reduction::Sum), &refs[s], &beta);
            one_losses[i].push(tr.backward(&loss, &[])?.unwrap().loss);
        }
        if s > 0 {
            seq_time.0 += t.elapsed().as_secs_f64();
            seq_time.1 += cpu_time::now() - c;
        }
    }

    // the same K models as one
    let bm = BatchedCausalLm::replicate(&base, k)?;
    let mut bt = BatchedTrainer::new(bm.trainable(), cfg.clone())?;
    let beta_t = Tensor::from_slice(&betas).to_kind(Kind::Float).unsqueeze(1);
    let mut bat_time = (0.0, 0.0);
    for (s, batch) in batches.iter().enumerate() {
        let (t, c) = (std::time::Instant::now(), cpu_time::now());
        let losses = dpo(&bm.sequence_logprobs(batch, Reduction::Sum), &refs[s], &beta_t);
        bt.backward(&losses, &[])?;
        if s > 0 {
            bat_time.0 += t.elapsed().as_secs_f64();
            bat_time.1 += cpu_time::now() - c;
        }
    }
    for (i, losses) in one_losses.iter().enumerate() {
        let batched: Vec<f64> = bt.history[i].iter().map(|h| h.loss).collect();
        anyhow::ensure!(&batched == losses, "model {i}: batched losses differ from one-by-one training");
    }
    let steps = (iters * k) as f64;
    println!(
        "{{\"impl\": \"rmdistill\", \"arch\": \"{arch}\", \"k\": {k}, \"d_model\": {d}, \"n_layer\": {layers}, \"params_per_model\": {}, \"one_by_one_policy_steps_per_s\": {:.1}, \"batched_policy_steps_per_s\": {:.1}, \"speedup\": {:.2}, \"one_by_one_cpu_s_per_policy_step\": {:.5}, \"batched_cpu_s_per_policy_step\": {:.5}, \"cpu_speedup\": {:.2}, \"losses_identical\": true}}",
        base.num_parameters(),
        steps / seq_time.0,
        steps / bat_time.0,
        seq_time.0 / bat_time.0,
        seq_time.1 / steps,
        bat_time.1 / steps,
        seq_time.1 / bat_time.1
    );
    Ok(())
}
