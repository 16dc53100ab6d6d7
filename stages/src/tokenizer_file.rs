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
//!
//! A BPE model with no `unk_token` silently drops each character it has no token for (nor byte-fallback tokens):
//! a text counts fewer tokens than it has, with no error. [`may_drop_characters`] says whether a tokenizer can do
//! that; [`DropCheck::of`] derives, once per tokenizer, what [`DropCheck::first_dropped`] needs to find what it
//! drops from one text.
use serde_json::Value;
use std::borrow::Cow;
use std::path::Path;
use tokenizers::normalizer::Range;
use tokenizers::{Model, ModelWrapper, NormalizedString, NormalizerWrapper, PreTokenizer, PreTokenizerWrapper};

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

/// Whether `tok` can drop characters of a text without a token, error or unknown token standing for them. Only a
/// BPE model with no `unk_token` can: WordPiece and WordLevel give their unknown token for what their vocabulary
/// lacks (or fail when it is missing from the vocabulary), and Unigram gives its `unk_id` (or fails without one).
/// Such a BPE model still drops nothing when each character the model can be given has a token: with
/// `byte_fallback` and all 256 `<0xXX>` byte tokens, or when the model only ever sees the 256 symbols of a ByteLevel
/// pre-tokenizer (or normalizer) and has them all (as GPT-2 and its kin do). Decided from what the model holds, not
/// from what texts it meets, so `false` is a guarantee and `true` only says that texts need checking.
pub fn may_drop_characters(tok: &tokenizers::Tokenizer) -> bool {
    let ModelWrapper::BPE(bpe) = tok.get_model() else { return false };
    if bpe.unk_token.is_some() {
        // one not in the vocabulary makes an unknown character an error, not a drop
        return false;
    }
    let has = |t: &str| bpe.token_to_id(t).is_some();
    if bpe.byte_fallback && (0..=255u8).all(|b| has(&byte_token(b))) {
        return false;
    }
    if !byte_level_input(tok) {
        return true;
    }
    let prefix = bpe.continuing_subword_prefix.as_deref().unwrap_or("");
    let suffix = bpe.end_of_word_suffix.as_deref().unwrap_or("");
    // the model looks each character up as is, behind the prefix (not first in its word), before the suffix (last)
    !tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().all(|c| {
        [("", ""), (prefix, ""), ("", suffix), (prefix, suffix)].iter().all(|(p, s)| has(&format!("{p}{c}{s}")))
    })
}

/// The normalizers of `tok` in the order they run (a Sequence's members in its place).
fn normalizers(tok: &tokenizers::Tokenizer) -> Vec<&NormalizerWrapper> {
    fn flat<'a>(n: &'a NormalizerWrapper, out: &mut Vec<&'a NormalizerWrapper>) {
        match n {
            NormalizerWrapper::Sequence(s) => s.as_ref().iter().for_each(|n| flat(n, out)),
            n => out.push(n),
        }
    }
    let mut out = Vec::new();
    tok.get_normalizer().into_iter().for_each(|n| flat(n, &mut out));
    out
}

/// The pre-tokenizers of `tok` in the order they run (a Sequence's members in its place).
fn pre_tokenizers(tok: &tokenizers::Tokenizer) -> Vec<&PreTokenizerWrapper> {
    fn flat<'a>(p: &'a PreTokenizerWrapper, out: &mut Vec<&'a PreTokenizerWrapper>) {
        match p {
            PreTokenizerWrapper::Sequence(s) => s.as_ref().iter().for_each(|p| flat(p, out)),
            p => out.push(p),
        }
    }
    let mut out = Vec::new();
    tok.get_pre_tokenizer().into_iter().for_each(|p| flat(p, &mut out));
    out
}

/// Whether the model of `tok` is given only the 256 symbols a ByteLevel pre-tokenizer or normalizer maps bytes to:
/// one runs last among the normalizers, or among the pre-tokenizers with no Metaspace after it (which puts `▁` in).
fn byte_level_input(tok: &tokenizers::Tokenizer) -> bool {
    let mut byte_level = matches!(normalizers(tok).last(), Some(NormalizerWrapper::ByteLevel(_)));
    for p in pre_tokenizers(tok) {
        match p {
            PreTokenizerWrapper::ByteLevel(_) => byte_level = true,
            PreTokenizerWrapper::Metaspace(_) => byte_level = false,
            // the others split the text (and may leave parts out) but change no character
            _ => {}
        }
    }
    byte_level
}

/// The byte-fallback token of byte `b`, as the BPE model spells it (`<0x0A>`).
fn byte_token(b: u8) -> String {
    format!("<{b:#04X}>")
}

/// What a tokenizer drops from a text: the first run of dropped characters and the word (pre-tokenizer split) it is
/// in, both as the text has them (before the normalizer), and the run as the model was given it.
#[derive(Debug, PartialEq)]
pub struct Dropped {
    pub chars: String,
    pub normalized: String,
    pub word: String,
}

impl Dropped {
    /// The dropped characters, as the normalizer gave them to the model where that differs, and their word:
    /// `"c" (in "ac")`, `"C" (normalized to "c") (in "CA")`.
    pub fn described(&self) -> String {
        let normalized = if self.normalized == self.chars {
            String::new()
        } else {
            format!(" (normalized to {:?})", self.normalized)
        };
        format!("{:?}{normalized} (in {:?})", self.chars, self.word)
    }
}

/// Why a drop is refused, and what to use instead: the words every refusal of a drop says.
pub const DROP_CAUSE: &str = "the tokenizer has no token for it and no unknown token or byte fallback to stand for it";
pub const DROP_REMEDY: &str = "use the model's own tokenizer, or one with an unk_token or byte fallback";

/// What finding a tokenizer's drops needs, derived once per tokenizer: the characters it inserts itself.
#[derive(Clone, Debug)]
pub struct DropCheck {
    inserted: Vec<char>,
}

impl DropCheck {
    /// The check for `tok`, or `None` when it cannot drop characters ([`may_drop_characters`]): its texts need none.
    pub fn of(tok: &tokenizers::Tokenizer) -> Option<DropCheck> {
        may_drop_characters(tok).then(|| DropCheck { inserted: inserted_chars(tok) })
    }

    /// The first characters `tok` drops from `text`, or `None`. The text goes through the tokenizer's added tokens,
    /// normalizer and pre-tokenizer as `encode` takes it; what they take out (the spaces between words, an accent
    /// stripped) is not a drop. Each character of each word left is then looked up as the BPE model looks it up
    /// before merging, a character with no token being one it drops. Whitespace is not counted as dropped, nor a
    /// character standing for whitespace of the text (Metaspace's `▁`), nor one the tokenizer puts in that is not in
    /// the text (the `▁` a Metaspace with `prepend_scheme` "first" or "always", or a `Prepend` normalizer, puts
    /// before a word: see [`inserted_chars`]). The encoding's offsets cannot say this: the BPE model gives the
    /// tokens after a dropped character offsets shifted back by its length.
    pub fn first_dropped(&self, tok: &tokenizers::Tokenizer, text: &str) -> tokenizers::Result<Option<Dropped>> {
        let ModelWrapper::BPE(bpe) = tok.get_model() else { return Ok(None) };
        if bpe.unk_token.is_some() {
            return Ok(None);
        }
        let mut pre = tok.get_added_vocabulary().extract_and_normalize(tok.get_normalizer(), text);
        if let Some(p) = tok.get_pre_tokenizer() {
            p.pre_tokenize(&mut pre)?;
        }
        // `split` hands over each word not yet made a token (an added token is one), and keeps it as it is given back
        let mut found = None;
        pre.split(|_, word| {
            if found.is_none() {
                found = dropped_in(bpe, &word, &self.inserted);
            }
            Ok(std::iter::once(word))
        })?;
        Ok(found)
    }
}

/// `text` cut to its first `n` characters, with `…` where it was cut.
pub fn preview(text: &str, n: usize) -> String {
    let mut c: String = text.chars().take(n).collect();
    if c.len() < text.len() {
        c.push('…');
    }
    c
}

/// The characters the normalizer or pre-tokenizer of `tok` may put into a text for its spaces or word starts: the
/// `replacement` of each Metaspace, the string of each `Prepend` normalizer, and the `content` of each `Replace`
/// normalizer of a whitespace string. One put before a word (by Metaspace's `prepend_scheme` "first" or "always", or
/// by `Prepend`) is aligned with the word's first character, so it does not look like whitespace of the text.
fn inserted_chars(tok: &tokenizers::Tokenizer) -> Vec<char> {
    let mut out = Vec::new();
    for n in normalizers(tok) {
        match n {
            NormalizerWrapper::Prepend(p) => out.extend(p.prepend.chars()),
            NormalizerWrapper::Replace(r) => {
                // the crate keeps the pattern private; its serialisation is `{"String": " "}` or `{"Regex": …}`
                let json = serde_json::to_value(r).unwrap_or_default();
                let pattern = json.get("pattern").and_then(|p| p.get("String")).and_then(Value::as_str);
                if pattern.is_some_and(|p| !p.is_empty() && p.chars().all(char::is_whitespace)) {
                    out.extend(r.content.chars());
                }
            }
            _ => {}
        }
    }
    for p in pre_tokenizers(tok) {
        if let PreTokenizerWrapper::Metaspace(m) = p {
            out.push(m.get_replacement());
        }
    }
    out
}

/// The first run of characters of one word that `bpe` (with no `unk_token`) drops, as `BPE::merge_word` does.
/// Whitespace is not a drop, nor a character standing for whitespace of the text, nor one of `inserted` (see
/// [`inserted_chars`]) that the text does not have there.
fn dropped_in(bpe: &tokenizers::models::bpe::BPE, word: &NormalizedString, inserted: &[char]) -> Option<Dropped> {
    let s = word.get();
    if s.is_empty() || (bpe.ignore_merges && bpe.token_to_id(s).is_some()) {
        return None;
    }
    let prefix = bpe.continuing_subword_prefix.as_deref().unwrap_or("");
    let suffix = bpe.end_of_word_suffix.as_deref().unwrap_or("");
    let original = |r: std::ops::Range<usize>| word.get_range_original(Range::Normalized(r)).unwrap_or("");
    let mut run: Option<std::ops::Range<usize>> = None;
    let mut chars = s.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        let end = chars.peek().map_or(s.len(), |&(j, _)| j);
        let (p, x) = (if i > 0 { prefix } else { "" }, if end == s.len() { suffix } else { "" });
        let unit: Cow<str> = if p.is_empty() && x.is_empty() {
            Cow::Borrowed(&s[i..end])
        } else {
            format!("{p}{}{x}", &s[i..end]).into()
        };
        let kept = bpe.token_to_id(&unit).is_some()
            || (bpe.byte_fallback && unit.bytes().all(|b| bpe.token_to_id(&byte_token(b)).is_some()));
        let blank = || {
            let o = original(i..end);
            // an inserted `▁` is aligned with the character after it: losing it loses nothing of `o`, while a `▁`
            // of the text itself (aligned with itself) is the text's own
            c.is_whitespace()
                || (!o.is_empty() && o.chars().all(char::is_whitespace))
                || (inserted.contains(&c) && !o.contains(c))
        };
        if kept || blank() {
            if run.is_some() {
                break;
            }
        } else if let Some(r) = &mut run {
            r.end = end;
        } else {
            run = Some(i..end);
        }
    }
    let r = run?;
    let normalized = &s[r.clone()];
    let chars = Some(original(r)).filter(|o| !o.is_empty()).unwrap_or(normalized);
    Some(Dropped {
        chars: preview(chars, 20),
        normalized: preview(normalized, 20),
        word: preview(word.get_original(), 40),
    })
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

    /// `{token: id}` of `tokens`, in order.
    fn vocab<S: AsRef<str>>(tokens: impl IntoIterator<Item = S>) -> Value {
        Value::Object(tokens.into_iter().enumerate().map(|(i, t)| (t.as_ref().to_string(), json!(i))).collect())
    }

    /// A BPE tokenizer of single characters, no merges, no unknown token, no byte fallback, with `set` applied.
    fn chars_tok(chars: &[&str], set: &[(&str, Value)]) -> tokenizers::Tokenizer {
        let mut v = bpe(vocab(chars), json!([]), json!({}));
        for (k, x) in set {
            match k.strip_prefix("model.") {
                Some(m) => v["model"][m] = x.clone(),
                None => v[*k] = x.clone(),
            }
        }
        read_json(&v).unwrap()
    }

    /// [`DropCheck::first_dropped`] of a check made for `t` whether or not `t` may drop (a tokenizer that cannot must
    /// find nothing).
    fn first_dropped(t: &tokenizers::Tokenizer, text: &str) -> tokenizers::Result<Option<Dropped>> {
        DropCheck { inserted: inserted_chars(t) }.first_dropped(t, text)
    }

    fn dropped(t: &tokenizers::Tokenizer, text: &str) -> Option<(String, String, String)> {
        first_dropped(t, text).unwrap().map(|d| (d.chars, d.normalized, d.word))
    }

    fn byte_level_chars() -> Vec<String> {
        let mut a: Vec<String> =
            tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().map(|c| c.to_string()).collect();
        a.sort();
        a
    }

    #[test]
    fn only_a_bpe_model_without_unknown_token_and_without_a_token_for_every_input_may_drop() {
        let byte_level =
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        let all = byte_level_chars();
        let read_bpe = |chars: Vec<String>, set: &[(&str, Value)]| {
            chars_tok(&chars.iter().map(String::as_str).collect::<Vec<_>>(), set)
        };
        // no unknown token, no fallback, any pre-tokenizer but a byte-level one: it may drop
        assert!(may_drop_characters(&chars_tok(&["a", "b"], &[])));
        assert!(!may_drop_characters(&chars_tok(&["a", "<unk>"], &[("model.unk_token", json!("<unk>"))])));
        // byte fallback covers every character only with all 256 byte tokens
        let bytes: Vec<String> = (0..=255u8).map(byte_token).collect();
        assert_eq!(bytes[10], "<0x0A>");
        assert!(!may_drop_characters(&read_bpe(bytes.clone(), &[("model.byte_fallback", json!(true))])));
        assert!(may_drop_characters(&read_bpe(bytes[1..].to_vec(), &[("model.byte_fallback", json!(true))])));
        // byte-level: GPT-2's 256 symbols all in the vocabulary, its pre-tokenizer alone, in a sequence, or a
        // normalizer; one symbol missing, or a Metaspace after it, and it may drop
        let bl = [("pre_tokenizer", byte_level.clone())];
        assert!(!may_drop_characters(&read_bpe(all.clone(), &bl)));
        let seq =
            json!({"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level]});
        assert!(!may_drop_characters(&read_bpe(all.clone(), &[("pre_tokenizer", seq.clone())])));
        let norm = [("normalizer", json!({"type": "ByteLevel"})), ("pre_tokenizer", Value::Null)];
        assert!(!may_drop_characters(&read_bpe(all.clone(), &norm)));
        assert!(may_drop_characters(&read_bpe(all[1..].to_vec(), &bl)));
        let mut then_metaspace = seq;
        then_metaspace["pretokenizers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}));
        assert!(may_drop_characters(&read_bpe(all.clone(), &[("pre_tokenizer", then_metaspace)])));
        // with a continuing-subword prefix, the prefixed symbols are looked up too
        let prefixed = [("pre_tokenizer", byte_level), ("model.continuing_subword_prefix", json!("##"))];
        assert!(may_drop_characters(&read_bpe(all.clone(), &prefixed)));
        let both = all.iter().cloned().chain(all.iter().map(|c| format!("##{c}"))).collect();
        assert!(!may_drop_characters(&read_bpe(both, &prefixed)));
        // the other models give an unknown token or fail; they never drop
        for model in [
            json!({"type": "WordLevel", "vocab": vocab(["a"]), "unk_token": "<unk>"}),
            json!({"type": "WordPiece", "vocab": vocab(["a"]), "unk_token": "<unk>", "continuing_subword_prefix": "##",
                "max_input_chars_per_word": 100}),
            json!({"type": "Unigram", "vocab": [["a", -1.0]], "unk_id": null, "byte_fallback": false}),
        ] {
            let mut v = bpe(vocab(["a"]), json!([]), json!({}));
            v["model"] = model;
            let t = read_json(&v).unwrap();
            assert!(!may_drop_characters(&t), "{:?}", t.get_model());
            assert!(first_dropped(&t, "a b").unwrap().is_none());
            let counted = t.encode_fast("b", false).map(|e| e.len());
            assert!(counted.as_ref().is_ok_and(|&n| n == 1) || counted.is_err(), "{counted:?}");
        }
    }

    #[test]
    fn the_first_run_of_dropped_characters_is_named_with_its_word() {
        let t = chars_tok(&["a", "b"], &[]);
        assert_eq!(t.encode_fast("ab ac", false).unwrap().len(), 3, "the drop this is about: `c` counts nothing");
        assert_eq!(dropped(&t, "ab ac"), Some(("c".into(), "c".into(), "ac".into())));
        assert_eq!(dropped(&t, "a €€b ab"), Some(("€€".into(), "€€".into(), "€€".into())));
        assert_eq!(dropped(&t, "ab  ba\n"), None, "the pre-tokenizer takes spaces out");
        // Whitespace splits punctuation off: a comma with no token is dropped
        assert_eq!(dropped(&t, "ab, ba"), Some((",".into(), ",".into(), ",".into())));
        // the model's offsets after a drop are shifted back: they would blame `a`, not `c`
        assert_eq!(t.encode("ca", false).unwrap().get_offsets(), &[(0, 1)]);
        assert_eq!(dropped(&t, "ca"), Some(("c".into(), "c".into(), "ca".into())));
        // no pre-tokenizer: whitespace reaches the model, and is not counted as dropped
        let t = chars_tok(&["a", "b"], &[("pre_tokenizer", Value::Null)]);
        assert_eq!(dropped(&t, "a b\ta"), None);
        assert_eq!(dropped(&t, "a bc"), Some(("c".into(), "c".into(), "a bc".into())));
    }

    #[test]
    fn what_the_normalizer_and_pre_tokenizer_change_or_take_out_is_not_a_drop() {
        // Lowercase: "AB" is given to the model as "ab"; a drop is named as the text has it
        let lower = chars_tok(&["a", "b"], &[("normalizer", json!({"type": "Lowercase"}))]);
        assert_eq!(dropped(&lower, "AB Ba"), None);
        assert_eq!(dropped(&lower, "AB CA"), Some(("C".into(), "c".into(), "CA".into())));
        // an accent stripped (precomposed or not) and NFKC's ligature split
        let nfd = json!({"type": "Sequence", "normalizers": [{"type": "NFD"}, {"type": "StripAccents"}]});
        let strip = chars_tok(&["e", "f", "i"], &[("normalizer", nfd)]);
        assert_eq!(dropped(&strip, "e\u{301} \u{e9}fi"), None);
        let nfkc = chars_tok(&["f", "i"], &[("normalizer", json!({"type": "NFKC"}))]);
        assert_eq!(dropped(&nfkc, "\u{fb01}"), None);
        // punctuation the pre-tokenizer removes
        let removed = json!({"type": "Punctuation", "behavior": "Removed"});
        assert_eq!(dropped(&chars_tok(&["a"], &[("pre_tokenizer", removed)]), "a!a"), None);
        // Metaspace's `▁` stands for a space: without a token for it, it is not counted as dropped
        let meta = json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "never", "split": true});
        let m = chars_tok(&["a", "b"], &[("pre_tokenizer", meta)]);
        assert_eq!(dropped(&m, "a b"), None);
        assert_eq!(dropped(&m, "a bc"), Some(("c".into(), "c".into(), " bc".into())));
        // an added token is not the model's to drop
        let mut v = bpe(vocab(["a"]), json!([]), json!({}));
        v["added_tokens"] = json!([{"id": 1, "content": "<x>", "single_word": false, "lstrip": false, "rstrip": false,
            "normalized": false, "special": true}]);
        assert_eq!(dropped(&read_json(&v).unwrap(), "a<x>a"), None);
    }

    /// The `▁` a Metaspace pre-tokenizer (prepend_scheme "first" or "always", as Llama's files have it) or a
    /// `Prepend` normalizer puts before a word is not the user's: losing it drops nothing, and a drop after it is
    /// blamed on its own character, never on the word's first one (to which the inserted `▁` is aligned).
    #[test]
    fn what_the_tokenizer_inserts_is_not_a_drop() {
        for scheme in ["first", "always"] {
            let meta = json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": true});
            let m = chars_tok(&["a", "b"], &[("pre_tokenizer", meta)]);
            assert_eq!(m.encode_fast("ab ba", false).unwrap().len(), 4, "{scheme}: the model drops the `▁`s");
            assert_eq!(dropped(&m, "ab ba"), None, "{scheme}");
            assert_eq!(dropped(&m, "a"), None, "{scheme}");
            let d = dropped(&m, "ab ca").unwrap();
            assert_eq!((d.0.as_str(), d.1.as_str()), ("c", "c"), "{scheme}: {d:?}");
            assert!(d.2 == " ca" || d.2 == "ca", "{scheme}: {d:?}");
            assert_eq!(dropped(&m, "ca"), Some(("c".into(), "c".into(), "ca".into())), "{scheme}");
            assert_eq!(dropped(&m, "ab ac").map(|d| d.0), Some("c".into()), "{scheme}");
            // a `▁` the text itself has is its own, and the model drops it
            assert_eq!(dropped(&m, "a▁b"), Some(("▁".into(), "▁".into(), "▁b".into())), "{scheme}");
        }
        // older Llama files: the normalizer prepends `▁` and replaces spaces with it, with no pre-tokenizer
        let llama = json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]});
        let l = chars_tok(&["a", "b"], &[("normalizer", llama), ("pre_tokenizer", Value::Null)]);
        assert_eq!(dropped(&l, "ab ba"), None);
        assert_eq!(dropped(&l, "b"), None);
        assert_eq!(dropped(&l, "ab c"), Some(("c".into(), "c".into(), "ab c".into())));
        assert_eq!(dropped(&l, "cb"), Some(("c".into(), "c".into(), "cb".into())));
    }

    /// The drops [`first_dropped`] finds are the model's: over many words, a word has a drop exactly when the
    /// model's tokens fall short of its end, with a prefix, a suffix, byte fallback and `ignore_merges`.
    #[test]
    fn drops_agree_with_the_model() {
        let settings: [&[(&str, Value)]; 4] = [
            &[],
            &[("model.continuing_subword_prefix", json!("##"))],
            &[("model.end_of_word_suffix", json!("</w>"))],
            &[("model.byte_fallback", json!(true))],
        ];
        let words: Vec<String> = (0..5u32.pow(4))
            .map(|mut k| {
                (0..1 + k % 4)
                    .map(|_| {
                        let c = ["a", "b", "c", "é", "€"][(k % 5) as usize];
                        k /= 5;
                        c
                    })
                    .collect()
            })
            .collect();
        for set in settings {
            let mut set = set.to_vec();
            set.push(("pre_tokenizer", Value::Null));
            // some characters have a token, as is, behind the prefix, before the suffix, as bytes ("é" is C3 A9)
            let t = chars_tok(&["a", "##a", "##b", "c</w>", "a</w>", "<0xC3>", "<0xA9>", "ab", "abc"], &set);
            let mut drops = 0;
            for w in &words {
                // the model's own offsets (the encoding's are widened to whole characters)
                let tokens = t.get_model().tokenize(w).unwrap();
                let end = tokens.last().map_or(0, |t| t.offsets.1);
                let d = first_dropped(&t, w).unwrap();
                assert_eq!(d.is_some(), end < w.len(), "{set:?} {w:?}: {d:?}; the model's tokens: {tokens:?}");
                drops += d.is_some() as usize;
            }
            assert!(drops > 0 && drops < words.len(), "{set:?}: {drops}");
        }
        // with a `▁` put before each word (by Metaspace or by the normalizer) and standing for each space: the
        // model drops every `▁` (none has a token, the texts have none), and a text has a drop exactly when the
        // model's tokens of some word fall short of its end by more than its `▁`s
        let metaspace = json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true});
        let llama = json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]});
        let inserting: [&[(&str, Value)]; 4] = [
            &[("pre_tokenizer", metaspace.clone())],
            &[("pre_tokenizer", metaspace), ("model.continuing_subword_prefix", json!("##"))],
            &[("normalizer", llama.clone()), ("pre_tokenizer", Value::Null)],
            &[("normalizer", llama), ("pre_tokenizer", Value::Null), ("model.byte_fallback", json!(true))],
        ];
        let texts: Vec<String> =
            words.iter().enumerate().map(|(i, w)| format!("{w} {}", words[i * 7 % words.len()])).collect();
        for set in inserting {
            let t = chars_tok(&["a", "##a", "##b", "c", "<0xC3>", "<0xA9>", "ab", "abc"], set);
            let mut drops = 0;
            for text in words.iter().chain(&texts) {
                let mut pre = t.get_added_vocabulary().extract_and_normalize(t.get_normalizer(), text);
                if let Some(p) = t.get_pre_tokenizer() {
                    p.pre_tokenize(&mut pre).unwrap();
                }
                let model_drops = pre
                    .get_splits(tokenizers::OffsetReferential::Normalized, tokenizers::OffsetType::Byte)
                    .into_iter()
                    .any(|(s, _, _)| {
                        let tokens = t.get_model().tokenize(s).unwrap();
                        let end = tokens.last().map_or(0, |t| t.offsets.1);
                        end < s.len() - s.matches('▁').count() * '▁'.len_utf8()
                    });
                let d = first_dropped(&t, text).unwrap();
                assert_eq!(d.is_some(), model_drops, "{set:?} {text:?}: {d:?}");
                assert!(
                    d.as_ref().is_none_or(|d| d.normalized != "▁" && !d.chars.starts_with('a')),
                    "{set:?} {text:?}"
                );
                drops += d.is_some() as usize;
            }
            assert!(drops > 0 && drops < words.len() + texts.len(), "{set:?}: {drops}");
        }
        // ignore_merges takes a whole word in the vocabulary as one token, whatever its characters
        let t = chars_tok(&["a", "abc"], &[("model.ignore_merges", json!(true))]);
        assert_eq!((dropped(&t, "abc"), dropped(&t, "abcb").map(|d| d.0)), (None, Some("bcb".into())));
    }
}
