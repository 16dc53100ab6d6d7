//! Tokenizers trained with the `tokenizers` crate: round trips, special tokens, save and read back (as the pipeline
//! reads a tokenizer.json: `rmdistill_stages::tokenizer_file::read`), and transformers' AutoTokenizer reading the
//! saved files the same way.

mod common;
use common::*;
use rmdistill_ml::{Tokenizer, TokenizerSpec};

fn tldr_summaries(n: usize) -> Vec<String> {
    let text = std::fs::read_to_string(shared_data().join("tldr-2k/train.jsonl"))
        .expect("shared data (set RMDISTILL_SHARED_DATA)");
    text.lines()
        .take(n)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["chosen"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn byte_bpe_trains_round_trips_and_saves() {
    let texts = tldr_summaries(800);
    let tok = Tokenizer::train(TokenizerSpec::ByteBpe { vocab_size: 600, min_frequency: 2 }, texts.iter()).unwrap();
    assert!(tok.vocab_size() <= 600 && tok.vocab_size() > 300, "{}", tok.vocab_size());
    let (eos, pad) = (tok.eos_id.unwrap(), tok.pad_id.unwrap());
    assert_ne!(eos, pad);
    let sample = "TL;DR: my roommate ate 3 of my pizzas — ünïcode & emoji 🍕 too";
    let ids = tok.encode(sample).unwrap();
    assert_eq!(tok.decode(&ids, false).unwrap(), sample, "byte-level BPE must round-trip any text");
    let avg: f64 =
        texts[..100].iter().map(|t| tok.encode(t).unwrap().len() as f64 / t.len() as f64).sum::<f64>() / 100.0;
    assert!(avg < 0.45, "merges should compress English: {avg:.2} tokens/byte");
    let with_eos = [ids.clone(), vec![eos]].concat();
    assert_eq!(tok.decode(&with_eos, true).unwrap(), sample);

    let dir = tempfile::tempdir().unwrap();
    tok.save(dir.path()).unwrap();
    let back = load_tokenizer(dir.path()).unwrap();
    assert_eq!(back.encode(sample).unwrap(), ids);
    assert_eq!((back.eos_id, back.pad_id), (tok.eos_id, tok.pad_id));

    let Some(py) = python() else {
        println!("SKIPPED: no Python venv: AutoTokenizer check not run");
        return;
    };
    let code = "import sys, json\nfrom transformers import AutoTokenizer\nt = AutoTokenizer.from_pretrained(sys.argv[1])\nprint(json.dumps([t(sys.argv[2], add_special_tokens=False)['input_ids'], t.eos_token_id, t.pad_token_id]))";
    let out = std::process::Command::new(py).args(["-c", code]).arg(dir.path()).arg(sample).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: (Vec<i64>, i64, i64) = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v, (ids, eos, pad));
}

#[test]
fn word_level_maps_unknown_words() {
    let corpus = ["alpha beta gamma beta", "gamma delta alpha beta", "beta beta epsilon"];
    let tok = Tokenizer::train(TokenizerSpec::WordLevel { vocab_size: 100, min_frequency: 1 }, corpus.iter()).unwrap();
    let ids = tok.encode("beta gamma zeta").unwrap();
    assert_eq!(ids.len(), 3);
    assert_eq!(ids[2], tok.id(rmdistill_ml::tokenizer::UNK_TOKEN).unwrap());
    assert_eq!(tok.decode(&ids[..2], false).unwrap(), "beta gamma");
    assert_eq!(tok.vocab_size(), 3 + 5);
}

#[test]
fn a_tokenizer_json_broken_inside_its_decoder_is_refused_never_a_panic() {
    // tokenizers 0.23 panics (`expect("Helper")`) when the JSON breaks off inside the `decoder` object. The reader
    // is `rmdistill_stages::tokenizer_file::read`, whose own tests have no such file: this is its check.
    let dir = tempfile::tempdir().unwrap();
    let good = r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
 "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null,
 "decoder": {"type": "WordPiece", "prefix": "~~", "cleanup": false},
 "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "a": 1, "b": 2}, "unk_token": "[UNK]"}}"#;
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, good).unwrap();
    let t = load_tokenizer(&path).expect("the undamaged tokenizer loads");
    assert_eq!(t.encode("a b a").unwrap(), vec![1, 2, 1]);
    for cut in ["\"prefix\": \"~~\"", "\"type\": \"WordPiece\","] {
        let at = good.find(cut).unwrap() + cut.len();
        std::fs::write(&path, &good[..at]).unwrap();
        let loaded = std::panic::catch_unwind(|| load_tokenizer(&path))
            .unwrap_or_else(|_| panic!("loading a tokenizer.json cut after {cut:?} panicked"));
        let Err(e) = loaded else { panic!("a tokenizer.json cut after {cut:?} loaded") };
        let e = e.to_string();
        assert!(e.contains("tokenizer.json") && e.contains("not valid JSON"), "{e}");
    }
}
