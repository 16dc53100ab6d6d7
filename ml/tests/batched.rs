//! K models as one batched model equal the K models one by one: log-probs, rewards, gradients, a few training
//! steps with per-model losses and per-model clipping, saved checkpoints; and the packing of shared prompts equals
//! the unpacked batch. Also: the flat AdamW equals libtorch's own AdamW.

mod common;
use common::*;
use rmdistill_ml::logprobs::{PairBatch, Reduction, sequence_logprobs};
use rmdistill_ml::train::deterministic_cpu;
use rmdistill_ml::{
    BatchedCausalLm, BatchedRewardModel, BatchedTrainer, Gpt2Config, LanguageModel, LlamaConfig, ModelConfig,
    OptimConfig, PerModelBatches, RewardModel, SampleConfig, Schedule, Trainer, generate, generate_batched,
};
use tch::{Device, Kind, Tensor, nn::OptimizerConfig};

/// K different models of one architecture: a fixture (or a fresh untied config) plus model-specific noise.
fn family(name: &str, k: usize) -> Vec<LanguageModel> {
    deterministic_cpu(3, 1);
    let base = match name {
        "gpt2-untied" => {
            let mut c = Gpt2Config::new(96, 64, 32, 2, 4);
            c.tie_word_embeddings = false;
            LanguageModel::new(ModelConfig::Gpt2(c), Device::Cpu)
        }
        "llama-untied-bias" => {
            let mut c = LlamaConfig::new(96, 32, 48, 2, 4, 2);
            c.tie_word_embeddings = false;
            c.attention_bias = true;
            LanguageModel::new(ModelConfig::Llama(c), Device::Cpu)
        }
        fixture => LanguageModel::load(&fixtures().join(fixture), Device::Cpu).unwrap(),
    };
    (0..k)
        .map(|i| {
            let m = base.try_clone().unwrap();
            tch::no_grad(|| {
                for (_, mut v) in m.vs.variables() {
                    let noise = v.randn_like() * (0.02 * i as f64);
                    let _ = v.g_add_(&noise);
                }
            });
            m
        })
        .collect()
}

const ARCHS: [&str; 4] = ["gpt2-tiny", "llama-tiny", "gpt2-untied", "llama-untied-bias"];

/// Pairs (two responses per prompt, so the batch is packed) of varied lengths, plus one row with its own prompt.
fn pair_batch() -> PairBatch {
    let p: [&[i64]; 4] = [&[5, 17, 33], &[9], &[40, 41, 42, 43, 44, 45, 46], &[7, 8]];
    let r1: [&[i64]; 4] = [&[11, 12], &[13, 14, 15, 16], &[20], &[30, 31, 32]];
    let r2: [&[i64]; 4] = [&[50, 51, 52, 53, 54], &[60], &[61, 62, 63], &[3, 4]];
    let prompts: Vec<&[i64]> = p.iter().chain(p.iter()).copied().chain([&[1i64, 2][..]]).collect();
    let responses: Vec<&[i64]> = r1.iter().chain(r2.iter()).copied().chain([&[70i64, 71, 72][..]]).collect();
    PairBatch::new(&prompts, &responses, 0, None, Device::Cpu).unwrap()
}

#[test]
fn packed_shared_prompts_equal_unpacked_rows() {
    let _rng = rng_lock();
    for name in ARCHS {
        let m = family(name, 1).remove(0);
        let packed = pair_batch();
        assert!(packed.is_packed());
        let plain = pair_batch().without_packing();
        assert!(!plain.is_packed());
        assert!(packed.num_positions() < plain.num_positions());
        for red in [Reduction::Sum, Reduction::Mean] {
            let a = tch::no_grad(|| sequence_logprobs(m.net(), &packed, red));
            let b = tch::no_grad(|| sequence_logprobs(m.net(), &plain, red));
            assert!(max_abs_diff(&a, &b) < 1e-5, "{name} {red:?}: {}", max_abs_diff(&a, &b));
        }
        // gradients agree too
        let grad = |batch: &PairBatch| {
            m.vs.trainable_variables().iter().for_each(|t| {
                let mut t = t.shallow_clone();
                t.zero_grad()
            });
            let w = Tensor::linspace(-1.0, 1.0, batch.len() as i64, (Kind::Float, Device::Cpu));
            (sequence_logprobs(m.net(), batch, Reduction::Sum) * w).sum(Kind::Float).backward();
            let mut vars: Vec<(String, Tensor)> = m.vs.variables().into_iter().collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            Tensor::cat(&vars.iter().map(|(_, t)| t.grad().reshape([-1])).collect::<Vec<_>>(), 0)
        };
        let (ga, gb) = (grad(&packed), grad(&plain));
        let scale = f64::try_from(gb.abs().max()).unwrap();
        assert!(scale > 1e-3 && max_abs_diff(&ga, &gb) < 1e-5 * scale.max(1.0), "{name}: gradients differ");
    }
    // reward models read each response's last token in the packed sequence
    for name in ["gpt2-tiny-rm", "llama-tiny-rm"] {
        let rm = RewardModel::load(&fixtures().join(name), Device::Cpu, false).unwrap();
        let a = tch::no_grad(|| rm.rewards(&pair_batch()));
        let b = tch::no_grad(|| rm.rewards(&pair_batch().without_packing()));
        assert!(max_abs_diff(&a, &b) < 1e-5, "{name}");
    }
}

/// The last layer computed only where a head reads (response-predicting positions for log-probs, each row's last
/// token for rewards) equals computing it everywhere: values and gradients, packed or not.
#[test]
fn last_layer_only_where_read_equals_full_last_layer() {
    let _rng = rng_lock();
    for name in ARCHS {
        let m = family(name, 1).remove(0);
        for packed in [true, false] {
            let mk = || if packed { pair_batch() } else { pair_batch().without_packing() };
            let (part, full) = (mk(), mk().with_full_last_layer());
            let grads = |batch: &PairBatch| {
                m.vs.trainable_variables().iter().for_each(|t| {
                    let mut t = t.shallow_clone();
                    t.zero_grad()
                });
                let lp = sequence_logprobs(m.net(), batch, Reduction::Sum);
                let w = Tensor::linspace(-1.0, 1.0, batch.len() as i64, (Kind::Float, Device::Cpu));
                (&lp * w).sum(Kind::Float).backward();
                let mut vars: Vec<(String, Tensor)> = m.vs.variables().into_iter().collect();
                vars.sort_by(|a, b| a.0.cmp(&b.0));
                (lp.detach(), Tensor::cat(&vars.iter().map(|(_, t)| t.grad().reshape([-1])).collect::<Vec<_>>(), 0))
            };
            let ((la, ga), (lb, gb)) = (grads(&part), grads(&full));
            assert!(
                max_abs_diff(&la, &lb) < 1e-5,
                "{name} packed={packed}: log-probs differ by {}",
                max_abs_diff(&la, &lb)
            );
            let scale = f64::try_from(gb.abs().max()).unwrap();
            assert!(max_abs_diff(&ga, &gb) < 1e-5 * scale.max(1.0), "{name} packed={packed}: gradients differ");
        }
    }
    for name in ["gpt2-tiny-rm", "llama-tiny-rm"] {
        let rm = RewardModel::load(&fixtures().join(name), Device::Cpu, false).unwrap();
        for batch in [pair_batch(), pair_batch().without_packing()] {
            let a = tch::no_grad(|| rm.rewards(&batch));
            let b = tch::no_grad(|| rm.rewards(&batch.with_full_last_layer()));
            assert!(max_abs_diff(&a, &b) < 1e-5, "{name}");
        }
    }
}

#[test]
fn batched_logprobs_and_rewards_equal_one_model_at_a_time() {
    let _rng = rng_lock();
    for name in ARCHS {
        let models = family(name, 3);
        let refs: Vec<&LanguageModel> = models.iter().collect();
        let bm = BatchedCausalLm::from_models(&refs).unwrap();
        assert_eq!(bm.num_models(), 3);
        for batch in [pair_batch(), pair_batch().without_packing(), pair_batch().with_full_last_layer()] {
            for red in [Reduction::Sum, Reduction::Mean] {
                let all = tch::no_grad(|| bm.sequence_logprobs(&batch, red));
                assert_eq!(all.size(), [3, batch.len() as i64]);
                for (k, m) in models.iter().enumerate() {
                    let one = tch::no_grad(|| sequence_logprobs(m.net(), &batch, red));
                    let d = max_abs_diff(&all.get(k as i64), &one);
                    assert_eq!(d, 0.0, "{name} model {k} {red:?} packed={}", batch.is_packed());
                }
            }
        }
        // model k comes back out as itself
        let back = bm.to_model(1).unwrap();
        for (n, v) in models[1].vs.variables() {
            assert_eq!(max_abs_diff(&v, &back.vs.variables()[&n]), 0.0, "{name} {n}");
        }
    }
    for name in ["gpt2-tiny-rm", "llama-tiny-rm"] {
        let base = RewardModel::load(&fixtures().join(name), Device::Cpu, false).unwrap();
        let members: Vec<RewardModel> = (0..3)
            .map(|i| {
                let m = base.try_clone().unwrap();
                tch::no_grad(|| {
                    for (_, mut v) in m.vs.variables() {
                        let _ = v.g_add_(&(v.randn_like() * (0.05 * i as f64)));
                    }
                });
                m
            })
            .collect();
        let bm = BatchedRewardModel::from_models(&members.iter().collect::<Vec<_>>()).unwrap();
        let batch = pair_batch();
        let all = tch::no_grad(|| bm.rewards(&batch));
        for (k, m) in members.iter().enumerate() {
            let d = max_abs_diff(&all.get(k as i64), &tch::no_grad(|| m.rewards(&batch)));
            assert_eq!(d, 0.0, "{name} member {k}");
        }
    }
}

/// DPO with a per-model β on the same batches, with warm-up, decay, weight decay and clipping (some steps clipped,
/// some not): K models trained as one equal the K models trained one by one bit for bit — losses, gradient norms,
/// every parameter.
#[test]
fn batched_training_equals_training_one_by_one() {
    let _rng = rng_lock();
    let betas = [0.1, 1.0, 10.0];
    for name in ARCHS {
        let batch = pair_batch();
        let b = 4i64; // rows 0..4 chosen, 4..8 rejected (row 8 is an extra unpaired row, unused by the loss)
        let models = family(name, 3);
        let reference = tch::no_grad(|| sequence_logprobs(models[0].net(), &batch, Reduction::Sum));
        let cfg = OptimConfig {
            lr: 1e-3,
            warmup_steps: 2,
            total_steps: 6,
            schedule: Schedule::Linear,
            weight_decay: 0.01,
            grad_clip: Some(0.5),
            ..Default::default()
        };
        let dpo = |lp: &Tensor, beta: &Tensor| {
            // lp [.., rows]; β broadcast over the pairs
            let lr = lp - &reference;
            let margin = lr.narrow(-1, 0, b) - lr.narrow(-1, b, b);
            -(margin * beta).log_sigmoid().mean_dim(-1, false, Kind::Float)
        };
        let bm = BatchedCausalLm::from_models(&models.iter().collect::<Vec<_>>()).unwrap();
        let mut bt = BatchedTrainer::new(bm.trainable(), cfg.clone()).unwrap();
        let beta_t = Tensor::from_slice(&betas).to_kind(Kind::Float).unsqueeze(1);
        while !bt.is_done() {
            let losses = dpo(&bm.sequence_logprobs(&batch, Reduction::Sum), &beta_t);
            bt.backward(&losses, &[("beta", &betas)]).unwrap();
        }
        let mut clipped = [false, false];
        for (k, m) in models.iter().enumerate() {
            let mut tr = Trainer::new(&m.vs, cfg.clone()).unwrap();
            let beta = Tensor::from(betas[k]).to_kind(Kind::Float);
            while !tr.is_done() {
                let loss = dpo(&sequence_logprobs(m.net(), &batch, Reduction::Sum), &beta);
                tr.backward(&loss, &[]).unwrap();
            }
            assert_eq!(tr.history.len(), bt.history[k].len());
            for (one, all) in tr.history.iter().zip(&bt.history[k]) {
                assert_eq!((one.loss, one.grad_norm, one.lr), (all.loss, all.grad_norm, all.lr), "{name} model {k}");
                clipped[(one.grad_norm > 0.5) as usize] = true;
                assert_eq!(all.extra["beta"], betas[k]);
            }
            let after = bm.to_model(k).unwrap();
            for (n, v) in m.vs.variables() {
                assert_eq!(max_abs_diff(&v, &after.vs.variables()[&n]), 0.0, "{name} model {k} parameter {n}");
            }
        }
        assert!(clipped[0] && clipped[1], "{name}: the test needs steps with and without clipping");
    }
}

#[test]
fn batched_models_save_as_their_own_checkpoints() {
    let _rng = rng_lock();
    let models = family("llama-tiny", 2);
    let bm = BatchedCausalLm::from_models(&models.iter().collect::<Vec<_>>()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (k, model) in models.iter().enumerate() {
        let d = dir.path().join(format!("m{k}"));
        bm.save_model(k, &d, None).unwrap();
        let loaded = LanguageModel::load(&d, Device::Cpu).unwrap();
        let batch = pair_batch();
        let a = tch::no_grad(|| sequence_logprobs(loaded.net(), &batch, Reduction::Sum));
        let b = tch::no_grad(|| sequence_logprobs(model.net(), &batch, Reduction::Sum));
        assert_eq!(max_abs_diff(&a, &b), 0.0);
    }
    let again =
        BatchedCausalLm::from_checkpoints(&[&dir.path().join("m1"), &dir.path().join("m0")], Device::Cpu).unwrap();
    let a = tch::no_grad(|| again.sequence_logprobs(&pair_batch(), Reduction::Sum));
    let b = tch::no_grad(|| bm.sequence_logprobs(&pair_batch(), Reduction::Sum));
    assert_eq!(max_abs_diff(&a.get(0), &b.get(1)), 0.0);
}

/// The flat AdamW (one buffer, whole-buffer operations) against libtorch's per-parameter AdamW on the same model.
/// (Llama: GPT-2's key bias has an exactly-zero gradient in exact arithmetic, so any two AdamW implementations turn
/// its rounding noise into different learning-rate-sized steps.)
#[test]
fn flat_adamw_equals_libtorch_adamw() {
    let _rng = rng_lock();
    let batch = pair_batch();
    let cfg = OptimConfig {
        lr: 1e-2,
        weight_decay: 0.1,
        total_steps: 5,
        schedule: Schedule::Constant,
        grad_clip: None,
        ..Default::default()
    };
    let loss_of = |m: &LanguageModel| sequence_logprobs(m.net(), &batch, Reduction::Mean).mean(Kind::Float);
    let (flat, plain) = (family("llama-tiny", 1).remove(0), family("llama-tiny", 1).remove(0));
    let start = family("llama-tiny", 1).remove(0);
    let mut tr = Trainer::new(&flat.vs, cfg.clone()).unwrap();
    // libtorch's AdamW with the same groups: no weight decay on biases and norms
    let mut opt = tch::nn::AdamW { beta1: 0.9, beta2: 0.999, wd: 0.1, eps: 1e-8, amsgrad: false }
        .build(&plain.vs, cfg.lr)
        .unwrap();
    opt.zero_grad();
    opt.set_weight_decay_group(rmdistill_ml::model::NO_DECAY_GROUP, 0.0);
    for _ in 0..5 {
        tr.backward(&loss_of(&flat), &[]).unwrap();
        opt.zero_grad();
        loss_of(&plain).backward();
        opt.step();
    }
    for (n, v) in flat.vs.variables() {
        let moved = max_abs_diff(&v, &start.vs.variables()[&n]);
        assert!(moved > 1e-3, "{n} did not move");
        let d = max_abs_diff(&v, &plain.vs.variables()[&n]);
        assert!(d < 1e-6, "{n}: flat AdamW and libtorch AdamW differ by {d}");
    }
}

/// Sampling from K models at once gives each model's own samples: the same tokens (rows finishing at different
/// steps in different models) and the same log-probs (to float32 rounding of the logits) as sampling from each model alone.
#[test]
fn batched_sampling_equals_sampling_each_model() {
    let _rng = rng_lock();
    let prompts: [&[i64]; 4] = [&[5, 17, 33], &[9], &[40, 41, 42, 43, 44, 45, 46], &[7, 8]];
    for name in ["gpt2-tiny", "llama-tiny"] {
        let models = family(name, 3);
        let bm = BatchedCausalLm::from_models(&models.iter().collect::<Vec<_>>()).unwrap();
        for (temperature, top_p, use_cache) in [(1.0, 0.9, true), (0.0, 1.0, true), (1.0, 1.0, false)] {
            // EOS ids common enough that rows stop at different steps
            let cfg = SampleConfig {
                max_new_tokens: 12,
                temperature,
                top_p,
                seed: 5,
                eos_ids: vec![3, 7, 11, 19],
                use_cache,
            };
            let all = generate_batched(&bm, &prompts, 0, &cfg).unwrap();
            let mut lengths = std::collections::BTreeSet::new();
            for (k, m) in models.iter().enumerate() {
                let one = generate(m, &prompts, 0, &cfg).unwrap();
                assert_eq!(all[k].tokens, one.tokens, "{name} model {k} (T={temperature}, cache={use_cache})");
                assert_eq!(all[k].finished, one.finished, "{name} model {k}");
                for (a, b) in all[k].logprobs.iter().flatten().zip(one.logprobs.iter().flatten()) {
                    // rows finish at different steps, so a model's batch holds other rows than alone, and the matrix
                    // products round differently in the last bits of the logits
                    assert!((a - b).abs() <= 1e-5, "{name} model {k}: log-prob {a} vs {b}");
                }
                lengths.extend(one.tokens.iter().map(|t| t.len()));
            }
            if temperature > 0.0 {
                assert!(lengths.len() > 2, "{name}: rows should finish at different steps ({lengths:?})");
            }
        }
    }
}

/// Batch `m` of a family of batches that differ in prompts, lengths and packing (for per-model data).
fn own_batch(m: usize) -> PairBatch {
    let shift = |v: &[i64]| v.iter().map(|&t| (t + 5 * m as i64) % 90 + 3).collect::<Vec<i64>>();
    let p: Vec<Vec<i64>> =
        [&[5, 17, 33][..], &[9], &[40, 41, 42, 43, 44, 45, 46][..(3 + m)], &[7, 8]].map(shift).to_vec();
    let r1: Vec<Vec<i64>> = [&[11, 12][..], &[13, 14, 15, 16], &[20], &[30, 31, 32][..(1 + m)]].map(shift).to_vec();
    let r2: Vec<Vec<i64>> = [&[50, 51, 52, 53, 54][..(5 - m)], &[60], &[61, 62, 63], &[3, 4]].map(shift).to_vec();
    let prompts: Vec<&[i64]> = p.iter().chain(p.iter()).map(|v| v.as_slice()).collect();
    let responses: Vec<&[i64]> = r1.iter().chain(r2.iter()).map(|v| v.as_slice()).collect();
    let b = PairBatch::new(&prompts, &responses, 0, None, Device::Cpu).unwrap();
    if m == 1 { b.without_packing() } else { b }
}

/// Each model on its own batch (ensemble members on their own subsets): log-probs, rewards and a few DPO steps equal
/// each model alone on its batch, to float rounding (the batches are padded to a common shape).
#[test]
fn per_model_batches_equal_each_model_on_its_own_batch() {
    let _rng = rng_lock();
    for name in ["llama-tiny", "gpt2-untied"] {
        let models = family(name, 3);
        let bm = BatchedCausalLm::from_models(&models.iter().collect::<Vec<_>>()).unwrap();
        let own: Vec<PairBatch> = (0..3).map(own_batch).collect();
        let stacked = PerModelBatches::new(&own).unwrap();
        for red in [Reduction::Sum, Reduction::Mean] {
            let all = tch::no_grad(|| bm.sequence_logprobs_each(&stacked, red)).unwrap();
            for (k, m) in models.iter().enumerate() {
                let one = tch::no_grad(|| sequence_logprobs(m.net(), &own[k], red));
                let d = max_abs_diff(&all.get(k as i64), &one);
                assert!(d < 1e-5, "{name} model {k} {red:?}: {d}");
            }
        }
        // training: per-step losses and the trained models' log-probs
        let cfg = OptimConfig { lr: 1e-3, total_steps: 4, grad_clip: Some(0.5), ..Default::default() };
        let refs: Vec<Tensor> =
            (0..3).map(|k| tch::no_grad(|| sequence_logprobs(models[0].net(), &own[k], Reduction::Sum))).collect();
        let ref_all = Tensor::stack(&refs, 0);
        let dpo = |lp: &Tensor, r: &Tensor| {
            let lr = lp - r;
            -(lr.narrow(-1, 0, 4) - lr.narrow(-1, 4, 4)).log_sigmoid().mean_dim(-1, false, Kind::Float)
        };
        let mut bt = BatchedTrainer::new(bm.trainable(), cfg.clone()).unwrap();
        while !bt.is_done() {
            let lp = bm.sequence_logprobs_each(&stacked, Reduction::Sum).unwrap();
            bt.backward(&dpo(&lp, &ref_all), &[]).unwrap();
        }
        for (k, m) in models.iter().enumerate() {
            let mut tr = Trainer::new(&m.vs, cfg.clone()).unwrap();
            while !tr.is_done() {
                tr.backward(&dpo(&sequence_logprobs(m.net(), &own[k], Reduction::Sum), &refs[k]), &[]).unwrap();
            }
            for (one, all) in tr.history.iter().zip(&bt.history[k]) {
                let rel = (one.loss - all.loss).abs() / one.loss.abs();
                assert!(rel < 1e-5, "{name} model {k} step {}: loss {} vs {}", one.step, one.loss, all.loss);
            }
            let a = tch::no_grad(|| sequence_logprobs(bm.to_model(k).unwrap().net(), &own[k], Reduction::Sum));
            let b = tch::no_grad(|| sequence_logprobs(m.net(), &own[k], Reduction::Sum));
            assert!(max_abs_diff(&a, &b) < 1e-4, "{name} model {k}: trained models differ by {}", max_abs_diff(&a, &b));
        }
    }
    for name in ["gpt2-tiny-rm", "llama-tiny-rm"] {
        let base = RewardModel::load(&fixtures().join(name), Device::Cpu, false).unwrap();
        let members: Vec<RewardModel> = (0..3).map(|_| base.try_clone().unwrap()).collect();
        let bm = BatchedRewardModel::from_models(&members.iter().collect::<Vec<_>>()).unwrap();
        let own: Vec<PairBatch> = (0..3).map(own_batch).collect();
        let all = tch::no_grad(|| bm.rewards_each(&PerModelBatches::new(&own).unwrap())).unwrap();
        for (k, m) in members.iter().enumerate() {
            let d = max_abs_diff(&all.get(k as i64), &tch::no_grad(|| m.rewards(&own[k])));
            assert!(d < 1e-5, "{name} member {k}: {d}");
        }
    }
    let unequal = [own_batch(0), pair_batch()];
    let err = PerModelBatches::new(&unequal).err().expect("different row counts are refused").to_string();
    assert!(err.contains("same number of rows"), "{err}");
}
