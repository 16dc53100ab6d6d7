//! Small contracts of the public API: config round trips, padding/truncation of pair batches, device choice,
//! reward read-out position, metrics rows.

mod common;
use common::*;
use rmdistill_ml::config::Head;
use rmdistill_ml::logprobs::{PairBatch, Reduction, sequence_logprobs, sequence_logprobs_from_logits};
use rmdistill_ml::{DeviceChoice, LanguageModel, ModelConfig, OptimConfig, RewardModel, Trainer};
use serde_json::json;
use tch::{Device, Kind, Tensor};

#[test]
fn config_round_trip_keeps_unknown_keys() {
    for name in ["gpt2-tiny", "llama-tiny-rm"] {
        let text = std::fs::read_to_string(fixtures().join(name).join("config.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let c = ModelConfig::from_json(&v).unwrap();
        let head = ModelConfig::head_from_json(&v);
        assert_eq!(head, if name.ends_with("-rm") { Head::Score } else { Head::CausalLm });
        let back = c.to_json(head);
        for (k, val) in v.as_object().unwrap() {
            assert_eq!(back.get(k), Some(val), "{name}: key {k}");
        }
        assert_eq!(ModelConfig::from_json(&back).unwrap(), c);
    }
    let bad = serde_json::json!({"model_type": "mamba"});
    assert!(ModelConfig::from_json(&bad).unwrap_err().to_string().contains("mamba"));
}

#[test]
fn pair_batch_pads_right_masks_prompt_and_truncates() {
    let b = PairBatch::new(&[&[1, 2, 3], &[4]], &[&[5], &[6, 7, 8]], 0, None, Device::Cpu).unwrap();
    assert_eq!(to_vec2(&b.input_ids), vec![vec![1, 2, 3, 5], vec![4, 6, 7, 8]]);
    assert_eq!(to_vec2(&b.response_mask), vec![vec![0, 0, 0, 1], vec![0, 1, 1, 1]]);
    let b =
        PairBatch::new(&[&[1, 2, 3, 4, 5], &[9]], &[&[6, 7], &[1, 2, 3, 4, 5, 6]], 0, Some(4), Device::Cpu).unwrap();
    // Prompt keeps its end; the response keeps its start; a prompt keeps at least one token.
    assert_eq!(to_vec2(&b.input_ids), vec![vec![4, 5, 6, 7], vec![9, 1, 2, 3]]);
    assert_eq!(to_vec2(&b.attention_mask), vec![vec![1, 1, 1, 1], vec![1, 1, 1, 1]]);
    assert_eq!((b.prompt_lens.clone(), b.response_lens.clone()), (vec![2, 1], vec![2, 3]));
    assert!(PairBatch::new(&[&[]], &[&[1]], 0, None, Device::Cpu).is_err());
}

#[test]
fn padding_does_not_change_logprobs_and_mask_path_agrees() {
    let m = LanguageModel::load(&fixtures().join("llama-tiny"), Device::Cpu).unwrap();
    let alone = PairBatch::new(&[&[3, 4]], &[&[5, 6, 7]], 0, None, Device::Cpu).unwrap();
    let padded =
        PairBatch::new(&[&[3, 4], &[1, 1, 1, 1, 1, 1]], &[&[5, 6, 7], &[2, 2, 2, 2]], 0, None, Device::Cpu).unwrap();
    for red in [Reduction::Sum, Reduction::Mean] {
        let a = tch::no_grad(|| sequence_logprobs(m.net(), &alone, red));
        let b = tch::no_grad(|| sequence_logprobs(m.net(), &padded, red)).narrow(0, 0, 1);
        let c = tch::no_grad(|| {
            sequence_logprobs_from_logits(
                &m.forward(&padded.input_ids, Some(&padded.attention_mask), None),
                &padded,
                red,
            )
        })
        .narrow(0, 0, 1);
        assert!(max_abs_diff(&a, &b) < 1e-5 && max_abs_diff(&a, &c) < 1e-5);
    }
}

#[test]
fn reward_is_read_at_last_real_token_with_either_padding() {
    let rm = RewardModel::load(&fixtures().join("gpt2-tiny-rm"), Device::Cpu, false).unwrap();
    let plain = Tensor::from_slice(&[7i64, 8, 9]).view([1, 3]);
    let right = Tensor::from_slice(&[7i64, 8, 9, 0, 0]).view([1, 5]);
    let rmask = Tensor::from_slice(&[1i64, 1, 1, 0, 0]).view([1, 5]);
    let left = Tensor::from_slice(&[0i64, 0, 7, 8, 9]).view([1, 5]);
    let lmask = Tensor::from_slice(&[0i64, 0, 1, 1, 1]).view([1, 5]);
    let a = tch::no_grad(|| rm.forward(&plain, None));
    assert!(max_abs_diff(&a, &tch::no_grad(|| rm.forward(&right, Some(&rmask)))) < 1e-5);
    assert!(max_abs_diff(&a, &tch::no_grad(|| rm.forward(&left, Some(&lmask)))) < 1e-5);
    // The PairBatch path agrees with the masked forward.
    let b = PairBatch::new(&[&[7, 8], &[5]], &[&[9], &[6, 4, 3]], 0, None, Device::Cpu).unwrap();
    let r = tch::no_grad(|| rm.rewards(&b));
    let f = tch::no_grad(|| rm.forward(&b.input_ids, Some(&b.attention_mask)));
    assert!(max_abs_diff(&r, &f) < 1e-5);
    assert!(max_abs_diff(&r.narrow(0, 0, 1), &a) < 1e-5);
}

#[test]
fn device_choice_parses_and_resolves() {
    assert_eq!("auto".parse::<DeviceChoice>().unwrap(), DeviceChoice::Auto);
    assert_eq!("CPU".parse::<DeviceChoice>().unwrap(), DeviceChoice::Cpu);
    assert!("tpu".parse::<DeviceChoice>().is_err());
    assert_eq!(DeviceChoice::Cpu.resolve().unwrap(), Device::Cpu);
    if !tch::Cuda::is_available() {
        assert_eq!(DeviceChoice::Auto.resolve().unwrap(), Device::Cpu);
        assert!(DeviceChoice::Cuda.resolve().is_err(), "asking for CUDA without one must fail, not fall back");
    }
}

#[test]
fn metrics_rows_serialise_flat() {
    let m = LanguageModel::load(&fixtures().join("gpt2-tiny"), Device::Cpu).unwrap();
    let mut tr = Trainer::new(&m.vs, OptimConfig { total_steps: 3, ..Default::default() }).unwrap();
    let ids = Tensor::from_slice(&[1i64, 2, 3, 4]).view([1, 4]);
    let loss = m.forward(&ids, None, None).mean(Kind::Float);
    let row = tr.backward(&loss, &[("margin", 0.5)]).unwrap().unwrap();
    tr.log_eval(&[("val_loss", 1.25)]);
    let v = serde_json::to_value(&tr.history[0]).unwrap();
    assert_eq!(v["step"], 1);
    assert_eq!(v["margin"], 0.5);
    assert_eq!(v["val_loss"], 1.25);
    assert_eq!(row.lr, tr.config().lr_at(0));
}

#[test]
fn response_only_head_gives_the_same_gradients() {
    let m = LanguageModel::load(&fixtures().join("gpt2-tiny"), Device::Cpu).unwrap();
    let b = PairBatch::new(&[&[3, 4, 5], &[6]], &[&[7, 8], &[9, 10, 11, 12]], 0, None, Device::Cpu).unwrap();
    let grad = |fast: bool| {
        for t in m.vs.trainable_variables() {
            if t.grad().defined() {
                let _ = t.grad().zero_();
            }
        }
        let lp = if fast {
            sequence_logprobs(m.net(), &b, Reduction::Mean)
        } else {
            sequence_logprobs_from_logits(&m.forward(&b.input_ids, Some(&b.attention_mask), None), &b, Reduction::Mean)
        };
        (lp * Tensor::from_slice(&[1.0f32, -2.0])).sum(Kind::Float).backward();
        m.vs.variables()["transformer.h.0.attn.c_attn.weight"].grad().copy()
    };
    let (a, b) = (grad(true), grad(false));
    assert!(f64::try_from(a.abs().max()).unwrap() > 1e-4);
    assert!(max_abs_diff(&a, &b) < 1e-5, "{}", max_abs_diff(&a, &b));
}

/// A `config.json` with an impossible size is refused naming the field, and one that describes a model larger than
/// its weights file is refused before the model is allocated.
#[test]
fn impossible_configs_are_refused_before_the_model_is_built() {
    one_thread();
    let src = fixtures().join("gpt2-tiny");
    let config: serde_json::Value = serde_json::from_slice(&std::fs::read(src.join("config.json")).unwrap()).unwrap();
    for (field, value, expected) in [
        ("n_head", json!(0), "n_head must be at least 1; it is 0"),
        ("n_embd", json!(-32), "n_embd must be at least 1; it is -32"),
        ("n_head", json!(5), "n_embd 32 is not a multiple of n_head 5"),
        ("activation_function", json!("mish"), "activation_function \"mish\" is not supported"),
        ("n_embd", json!(1i64 << 40), "holds only"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        for f in std::fs::read_dir(&src).unwrap().flatten() {
            std::fs::copy(f.path(), dir.path().join(f.file_name())).unwrap();
        }
        let mut c = config.clone();
        c[field] = value.clone();
        std::fs::write(dir.path().join("config.json"), serde_json::to_vec(&c).unwrap()).unwrap();
        let e = LanguageModel::load(dir.path(), Device::Cpu).err().map(|e| format!("{e:#}"));
        let e = e.unwrap_or_else(|| panic!("{field} = {value} was accepted"));
        assert!(e.contains(expected), "{field} = {value}: {e}");
        assert!(e.contains("config.json"), "{field} = {value}: the error names no file: {e}");
    }
}

/// A `model.safetensors` damaged in seeded ways (cut, bits flipped in its header or data, the header's length
/// overwritten) loads or is refused with an error naming the file — never a panic.
#[test]
fn damaged_safetensors_are_refused_never_a_panic() {
    use rand::{Rng, SeedableRng};
    one_thread();
    let src = fixtures().join("gpt2-tiny");
    let original = std::fs::read(src.join("model.safetensors")).unwrap();
    let header = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
    let (mut loaded, mut refused, mut panics) = (0, 0, Vec::new());
    for case in 0..200 {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
        let mut b = original.clone();
        // most damage in the JSON header, where it changes what is parsed; some in the data
        let at = if case % 5 == 4 { rng.random_range(header..b.len()) } else { rng.random_range(0..header) };
        let what = match case % 3 {
            0 => {
                b.truncate(at);
                format!("cut at {at}")
            }
            1 => {
                b[at] ^= 1 << rng.random_range(0..8);
                format!("bit flipped at {at}")
            }
            _ => {
                let v = [0u64, 2, 1 << 20, u32::MAX as u64, u64::MAX][rng.random_range(0..5)];
                b[..8].copy_from_slice(&v.to_le_bytes());
                format!("header length {v}")
            }
        };
        std::fs::write(dir.path().join("model.safetensors"), &b).unwrap();
        let outcome = std::panic::catch_unwind(|| LanguageModel::load(dir.path(), Device::Cpu).map(|_| ()));
        match outcome {
            Ok(Ok(())) => loaded += 1,
            Ok(Err(e)) => {
                refused += 1;
                let e = format!("{e:#}");
                if !e.contains("model.safetensors") && !e.contains("config.json") {
                    panics.push(format!("case {case} ({what}): the error names no file: {e}"));
                }
            }
            Err(p) => panics.push(format!("case {case} ({what}): panicked: {}", panic_message(p))),
        }
    }
    println!("{loaded} loaded, {refused} refused, {} failed", panics.len());
    assert!(panics.is_empty(), "{}", panics.join("\n"));
    assert!(loaded > 0 && refused > 0, "loaded {loaded}, refused {refused}");
}
