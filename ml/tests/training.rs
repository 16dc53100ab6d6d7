//! The shared training loop: a tiny GPT-2 learns TL;DR summaries (held-out loss falls), runs repeat bit for bit,
//! gradient accumulation matches a large batch, the schedule has the right shape, and NaN/inf fail loudly.

mod common;
use common::*;
use rmdistill_ml::logprobs::lm_loss;
use rmdistill_ml::train::deterministic_cpu;
use rmdistill_ml::{Gpt2Config, LanguageModel, ModelConfig, OptimConfig, Schedule, Tokenizer, TokenizerSpec, Trainer};
use tch::{Device, Tensor};

fn summaries() -> Vec<String> {
    let text = std::fs::read_to_string(shared_data().join("tldr-2k/train.jsonl"))
        .expect("shared data (set RMDISTILL_SHARED_DATA)");
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["chosen"].as_str().unwrap().trim().to_string())
        .collect()
}

/// Right-padded `[eos] ++ text ++ [eos]` rows, truncated to `len`.
fn batch(tok: &Tokenizer, texts: &[String], len: usize) -> (Tensor, Tensor) {
    let (eos, pad) = (tok.eos_id.unwrap(), tok.pad_id.unwrap());
    let mut ids = vec![pad; texts.len() * len];
    let mut mask = vec![0i64; texts.len() * len];
    for (i, t) in texts.iter().enumerate() {
        let row: Vec<i64> = [vec![eos], tok.encode(t).unwrap(), vec![eos]].concat();
        for (j, &x) in row.iter().take(len).enumerate() {
            ids[i * len + j] = x;
            mask[i * len + j] = 1;
        }
    }
    let shape = [texts.len() as i64, len as i64];
    (Tensor::from_slice(&ids).view(shape), Tensor::from_slice(&mask).view(shape))
}

fn tiny_gpt2(vocab: usize) -> LanguageModel {
    let mut c = Gpt2Config::new(vocab as i64, 64, 64, 2, 4);
    c.n_inner = Some(128);
    LanguageModel::new(ModelConfig::Gpt2(c), Device::Cpu)
}

fn mean_loss(m: &LanguageModel, ids: &Tensor, mask: &Tensor) -> f64 {
    let (s, n) = tch::no_grad(|| lm_loss(m.net(), ids, mask));
    f64::try_from(s / n).unwrap()
}

#[test]
fn sft_on_tldr_summaries_lowers_heldout_loss() {
    let _rng = rng_lock();
    // One intra-op thread: on a shared 2-core machine two torch threads contend and run ~5× slower.
    deterministic_cpu(0, 1);
    let all = summaries();
    let (train, held) = all.split_at(1800);
    let tok = Tokenizer::train(TokenizerSpec::ByteBpe { vocab_size: 512, min_frequency: 2 }, train.iter()).unwrap();
    let m = tiny_gpt2(tok.vocab_size());
    let (hid, hmask) = batch(&tok, &held[..128], 48);
    let before = mean_loss(&m, &hid, &hmask);
    let steps = 150;
    let cfg = OptimConfig {
        lr: 5e-3,
        warmup_steps: 10,
        total_steps: steps,
        schedule: Schedule::Cosine,
        weight_decay: 0.01,
        ..Default::default()
    };
    let mut tr = Trainer::new(&m.vs, cfg).unwrap();
    let bs = 32;
    let t0 = std::time::Instant::now();
    let batches: Vec<(Tensor, Tensor)> = (0..steps)
        .map(|s| batch(&tok, &(0..bs).map(|i| train[(s * bs + i) % train.len()].clone()).collect::<Vec<_>>(), 48))
        .collect();
    println!("tokenised {} summaries in {:.2}s", steps * bs, t0.elapsed().as_secs_f64());
    let t0 = std::time::Instant::now();
    for (ids, mask) in &batches {
        let (sum, n) = lm_loss(m.net(), ids, mask);
        tr.backward(&(sum / n), &[]).unwrap().expect("one micro-batch per step");
    }
    let secs = t0.elapsed().as_secs_f64();
    let after = mean_loss(&m, &hid, &hmask);
    let h = &tr.history;
    println!(
        "tiny GPT-2 ({} params) SFT, {steps} steps × {bs} summaries in {secs:.2}s: held-out loss {before:.3} → {after:.3} nats/token (train {:.3} → {:.3})",
        m.num_parameters(),
        h[0].loss,
        h[h.len() - 1].loss
    );
    assert_eq!(h.len(), steps);
    assert!(after < before - 1.5, "held-out loss must fall clearly: {before} → {after}");
    assert!(h.iter().all(|r| r.grad_norm.is_finite() && r.lr > 0.0));
}

fn run_steps(accum: usize, micro_bs: usize, steps: usize) -> (Vec<f64>, Tensor) {
    deterministic_cpu(42, 1);
    let m = tiny_gpt2(96);
    let cfg = OptimConfig { lr: 1e-2, total_steps: steps, grad_accum: accum, warmup_steps: 2, ..Default::default() };
    let mut tr = Trainer::new(&m.vs, cfg).unwrap();
    let data = Tensor::randint_low(1, 96, [steps as i64 * 8, 24], (tch::Kind::Int64, Device::Cpu));
    let mask = data.ones_like();
    for s in 0..steps {
        for k in 0..accum {
            let rows = data.narrow(0, (s * 8 + k * micro_bs) as i64, micro_bs as i64);
            let (sum, n) = lm_loss(m.net(), &rows, &mask.narrow(0, 0, micro_bs as i64));
            tr.backward(&(sum / n), &[("tokens", 1.0)]).unwrap();
        }
    }
    let w = m.vs.variables()["transformer.h.1.mlp.c_fc.weight"].detach().copy();
    (tr.history.iter().map(|r| r.loss).collect(), w)
}

#[test]
fn training_is_deterministic_and_accumulation_matches_big_batch() {
    let _rng = rng_lock();
    let (l1, w1) = run_steps(2, 4, 5);
    let (l2, w2) = run_steps(2, 4, 5);
    assert_eq!(l1, l2, "same seed and threads must give identical losses");
    assert_eq!(max_abs_diff(&w1, &w2), 0.0);
    // 2 micro-batches of 4 == 1 batch of 8 (mean losses with equal token counts), up to float rounding.
    let (l3, w3) = run_steps(1, 8, 5);
    // Adam divides by the gradient's running RMS, which amplifies rounding on near-zero gradients: compare losses
    // tightly and weights to well below one learning-rate-sized update (1e-2).
    let d = max_abs_diff(&w1, &w3);
    assert!(d < 1e-3, "accumulated vs big batch weights differ by {d}");
    for (a, b) in l1.iter().zip(&l3) {
        assert!((a - b).abs() < 1e-4, "losses {l1:?} vs {l3:?}");
    }
}

#[test]
fn schedule_shapes() {
    let c =
        OptimConfig { lr: 1.0, warmup_steps: 10, total_steps: 110, schedule: Schedule::Linear, ..Default::default() };
    assert_eq!(c.lr_at(0), 0.1);
    assert_eq!(c.lr_at(9), 1.0);
    assert_eq!(c.lr_at(10), 1.0);
    assert!((c.lr_at(60) - 0.5).abs() < 1e-12);
    assert_eq!(c.lr_at(110), 0.0);
    let c = OptimConfig { schedule: Schedule::Cosine, min_lr_ratio: 0.1, ..c };
    assert!((c.lr_at(60) - 0.55).abs() < 1e-12);
    assert!((c.lr_at(110) - 0.1).abs() < 1e-12);
    let c = OptimConfig { schedule: Schedule::Constant, ..c };
    assert_eq!(c.lr_at(100), 1.0);
}

#[test]
fn non_finite_loss_or_gradient_fails_loudly() {
    let _rng = rng_lock();
    let m = tiny_gpt2(96);
    let mut tr = Trainer::new(&m.vs, OptimConfig::default()).unwrap();
    let w = m.vs.variables()["transformer.ln_f.weight"].shallow_clone();
    let err = tr.backward(&(w.sum(tch::Kind::Float) * f64::NAN), &[]).unwrap_err();
    assert!(err.to_string().contains("non-finite loss"), "{err}");
    // Finite loss, NaN gradient: d/dw sqrt(0·w) at 0.
    let err = tr.backward(&(&w * 0.0).sqrt().sum(tch::Kind::Float), &[]).unwrap_err();
    assert!(
        err.to_string().contains("non-finite gradient") && err.to_string().contains("transformer.ln_f.weight"),
        "{err}"
    );
}
