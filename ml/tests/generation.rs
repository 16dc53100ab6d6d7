//! Sampling: the KV cache changes nothing, seeds make samples repeatable and independent of batch-mates, EOS
//! stops a row, and the log-probs reported with samples are the model's own sequence log-probs.

mod common;
use common::*;
use rmdistill_ml::logprobs::{PairBatch, Reduction, sequence_logprobs};
use rmdistill_ml::{LanguageModel, SampleConfig, generate};
use tch::Device;

const PROMPTS: [&[i64]; 3] = [&[5, 17, 33], &[9], &[40, 41, 42, 43, 44, 45, 46]];

fn models() -> Vec<(&'static str, LanguageModel)> {
    ["gpt2-tiny", "llama-tiny"]
        .into_iter()
        .map(|n| (n, LanguageModel::load(&fixtures().join(n), Device::Cpu).unwrap()))
        .collect()
}

#[test]
fn greedy_with_cache_equals_without() {
    for (name, m) in models() {
        let cfg = SampleConfig { max_new_tokens: 20, temperature: 0.0, ..Default::default() };
        let with = generate(&m, &PROMPTS, 0, &cfg).unwrap();
        let without = generate(&m, &PROMPTS, 0, &SampleConfig { use_cache: false, ..cfg }).unwrap();
        assert_eq!(with.tokens, without.tokens, "{name}");
        assert!(with.tokens.iter().all(|t| t.len() == 20));
        // Batched equals one prompt at a time (left padding is invisible).
        for (i, p) in PROMPTS.iter().enumerate() {
            let alone =
                generate(&m, &[p], 0, &SampleConfig { max_new_tokens: 20, temperature: 0.0, ..Default::default() })
                    .unwrap();
            assert_eq!(alone.tokens[0], with.tokens[i], "{name} row {i}");
        }
    }
}

#[test]
fn sampling_is_seeded_and_row_independent() {
    for (name, m) in models() {
        let cfg = SampleConfig { max_new_tokens: 16, temperature: 1.0, top_p: 0.9, seed: 11, ..Default::default() };
        let a = generate(&m, &PROMPTS, 0, &cfg).unwrap();
        let b = generate(&m, &PROMPTS, 0, &cfg).unwrap();
        assert_eq!(a, b, "{name}: same seed, same samples");
        let c = generate(&m, &PROMPTS, 0, &SampleConfig { seed: 12, ..cfg.clone() }).unwrap();
        assert_ne!(a.tokens, c.tokens, "{name}: another seed, other samples");
        // Row 0 does not depend on its batch-mates.
        let alone = generate(&m, &PROMPTS[..1], 0, &cfg).unwrap();
        assert_eq!(alone.tokens[0], a.tokens[0], "{name}");
        // A vanishing nucleus is greedy.
        let g = generate(&m, &PROMPTS, 0, &SampleConfig { temperature: 0.0, ..cfg.clone() }).unwrap();
        let p = generate(&m, &PROMPTS, 0, &SampleConfig { top_p: 1e-6, ..cfg.clone() }).unwrap();
        assert_eq!(g.tokens, p.tokens, "{name}: top_p→0 must be greedy");
    }
}

#[test]
fn stops_at_eos_per_row() {
    let (_, m) = models().remove(1);
    let greedy =
        generate(&m, &PROMPTS, 0, &SampleConfig { max_new_tokens: 12, temperature: 0.0, ..Default::default() })
            .unwrap();
    // Make row 0's third greedy token the EOS: row 0 must stop there (keeping it), other rows are unaffected
    // unless they emit it too.
    let eos = greedy.tokens[0][2];
    let cfg = SampleConfig { max_new_tokens: 12, temperature: 0.0, eos_ids: vec![eos], ..Default::default() };
    let s = generate(&m, &PROMPTS, 0, &cfg).unwrap();
    let first = greedy.tokens[0].iter().position(|&t| t == eos).unwrap();
    assert_eq!(s.tokens[0], greedy.tokens[0][..=first].to_vec());
    assert!(s.finished[0]);
    for i in 1..3 {
        let stop = greedy.tokens[i].iter().position(|&t| t == eos).map_or(12, |p| p + 1);
        assert_eq!(s.tokens[i], greedy.tokens[i][..stop].to_vec(), "row {i}");
        assert_eq!(s.finished[i], stop < 12 || greedy.tokens[i][11] == eos);
    }
}

#[test]
fn sample_logprobs_are_sequence_logprobs() {
    for (name, m) in models() {
        let s = generate(
            &m,
            &PROMPTS,
            0,
            &SampleConfig { max_new_tokens: 10, temperature: 1.3, seed: 3, ..Default::default() },
        )
        .unwrap();
        let r: Vec<&[i64]> = s.tokens.iter().map(|t| t.as_slice()).collect();
        let batch = PairBatch::new(&PROMPTS, &r, 0, None, Device::Cpu).unwrap();
        let lp = tch::no_grad(|| sequence_logprobs(m.net(), &batch, Reduction::Sum));
        let want: Vec<f64> = s.logprobs.iter().map(|v| v.iter().sum()).collect();
        let d = max_abs_diff(&lp, &tch::Tensor::from_slice(&want));
        assert!(d < 1e-4, "{name}: {d}");
    }
}
