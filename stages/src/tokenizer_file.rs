//! A `tokenizer.json` read for counting and encoding whole texts: checked where the `tokenizers` crate would panic
//! or be non-deterministic, and with the file's own truncation and padding turned off.
//!
//! - The file must be JSON (the crate's decoder deserialiser panics on JSON cut inside the `decoder` object).
//! - A BPE `model.dropout` is refused: dropout samples another segmentation on every call, so one input would give
//!   other token counts (and other training inputs) on every run of one cache key.
//! - A BPE merge whose tokens or merged token are not in the vocabulary is refused naming the merge (the crate
//!   panics on some of them, slicing past its buffer, and refuses others without saying which).
//! - `truncation` and `padding` are the settings of a tokenizer in use, saved with it (`"truncation":
//!   {"max_length": 512}` is common): applied here they would cap or inflate every count. The pipeline counts whole
//!   texts and truncates and pads its own batches, so both are turned off.
//!
//! Any other panic inside the crate is caught and said as the file's error, without the crate's panic message on
//! stderr.
use serde_json::Value;
use std::path::Path;

/// The tokenizer of `path`, or what is wrong with the file (without the path: callers name it).
pub fn read(path: &Path) -> Result<tokenizers::Tokenizer, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    let json: Value = serde_json::from_slice(&bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    check_model(&json)?;
    let mut tok = quietly(|| tokenizers::Tokenizer::from_bytes(&bytes))
        .map_err(|m| format!("the tokenizers crate could not read it (it failed inside: {m})"))?
        .map_err(|e| e.to_string())?;
    tok.with_truncation(None).map_err(|e| e.to_string())?;
    tok.with_padding(None);
    Ok(tok)
}

/// The checks of the module doc on `model`, for a BPE model; other models pass.
fn check_model(json: &Value) -> Result<(), String> {
    let Some(model) = json.get("model").filter(|m| m.get("type").and_then(Value::as_str) == Some("BPE")) else {
        return Ok(());
    };
    if let Some(d) = model.get("dropout").and_then(Value::as_f64).filter(|&d| d > 0.0) {
        return Err(format!(
            "model.dropout = {d}: BPE dropout samples another segmentation on every call, so token counts and \
             training inputs would differ between runs of one node; set it to null"
        ));
    }
    let Some(vocab) = model.get("vocab").and_then(Value::as_object) else { return Ok(()) };
    let prefix = model.get("continuing_subword_prefix").and_then(Value::as_str).unwrap_or("");
    let merges = model.get("merges").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    for (i, m) in merges.iter().enumerate() {
        let (a, b) = match m {
            Value::String(s) => match s.split_once(' ') {
                Some((a, b)) if !b.contains(' ') => (a, b),
                _ => return Err(format!("model.merges[{i}] = {s:?}: expected two tokens separated by one space")),
            },
            Value::Array(p) => match p.as_slice() {
                [Value::String(a), Value::String(b)] => (a.as_str(), b.as_str()),
                _ => return Err(format!("model.merges[{i}]: expected a pair of token strings")),
            },
            _ => return Err(format!("model.merges[{i}]: expected \"a b\" or [\"a\", \"b\"]")),
        };
        for t in [a, b] {
            if !vocab.contains_key(t) {
                return Err(format!("model.merges[{i}] merges {a:?} and {b:?}, but {t:?} is not in model.vocab"));
            }
        }
        // the crate joins `a` with `b` less the continuing-subword prefix's length
        let merged = b.get(prefix.len()..).map(|rest| format!("{a}{rest}"));
        if !merged.as_ref().is_some_and(|t| vocab.contains_key(t)) {
            let shown =
                merged.map_or("(b is shorter than the continuing_subword_prefix)".to_string(), |t| format!("{t:?}"));
            return Err(format!("model.merges[{i}] merges {a:?} and {b:?} into {shown}, which is not in model.vocab"));
        }
    }
    Ok(())
}

/// `f`, with a panic inside it caught and returned as its message, and not printed by the panic hook. The hook is
/// process-wide and swapped only around `f` (the reading of one file): a panic on another thread in that moment
/// goes unprinted too, though its node still fails with it (the runner catches a stage's panic).
fn quietly<T>(f: impl FnOnce() -> T + std::panic::UnwindSafe) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = std::panic::catch_unwind(f);
    std::panic::set_hook(hook);
    r.map_err(|p| {
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bpe(vocab: Value, merges: Value, extra: Value) -> Value {
        let mut model = json!({"type": "BPE", "vocab": vocab, "merges": merges, "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false});
        model.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
            "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null, "model": model})
    }

    fn read_json(v: &Value) -> Result<tokenizers::Tokenizer, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        std::fs::write(&p, serde_json::to_vec(v).unwrap()).unwrap();
        read(&p)
    }

    #[test]
    fn a_merge_into_a_token_missing_from_the_vocabulary_is_named_not_a_panic() {
        let e = read_json(&bpe(json!({"a": 0, "b": 1}), json!(["a b"]), json!({}))).unwrap_err();
        assert!(e.contains("model.merges[0] merges \"a\" and \"b\" into \"ab\""), "{e}");
        let e = read_json(&bpe(json!({"a": 0, "ab": 1}), json!([["a", "c"]]), json!({}))).unwrap_err();
        assert!(e.contains("\"c\" is not in model.vocab"), "{e}");
        let ok = read_json(&bpe(json!({"a": 0, "b": 1, "ab": 2}), json!(["a b"]), json!({}))).unwrap();
        assert_eq!(ok.encode("ab", false).unwrap().get_ids(), &[2]);
    }

    #[test]
    fn dropout_is_refused_and_truncation_and_padding_are_off() {
        let v = bpe(json!({"a": 0, "b": 1, "ab": 2}), json!(["a b"]), json!({"dropout": 0.5}));
        assert!(read_json(&v).unwrap_err().contains("model.dropout = 0.5"));
        let mut v = bpe(json!({"w": 0, "<unk>": 1}), json!([]), json!({"unk_token": "<unk>"}));
        v["truncation"] = json!({"direction": "Right", "max_length": 2, "strategy": "LongestFirst", "stride": 0});
        v["padding"] = json!({"strategy": {"Fixed": 16}, "direction": "Right", "pad_to_multiple_of": null,
            "pad_id": 1, "pad_type_id": 0, "pad_token": "<unk>"});
        let t = read_json(&v).unwrap();
        assert_eq!(t.encode_fast("w w w w w", false).unwrap().len(), 5);
    }
}
