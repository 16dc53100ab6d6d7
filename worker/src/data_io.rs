//! What the model stages (`sft`, `sample_pairs`, `label`, `train_rm`, `precompute`, `policy`, `evaluate`) share about
//! data: the pure helpers of `rmdistill_stages::data_io` (re-exported here), the device, deterministic libtorch
//! settings, tensor values, and how a prompt and a response become token ids.
//!
//! **Encoding convention** (identical to the policy side's `lm_io`; every stage that scores `log π(y|x)` must use
//! it, or log-probs computed in different stages do not agree): prompt ids = `[BOS] ++ encode(prompt)`; response ids
//! = `encode(response) ++ [EOS]`, so `log π(y|x)` includes the probability of stopping. BOS is the tokenizer's BOS
//! (its EOS when it has none, as GPT-2 does). Sampled responses are decoded without their EOS, so re-encoding a
//! finished sample gives back the sampled ids; one whose text its tokenizer would drop characters of on encoding it
//! again is refused as it is decoded ([`Codec::decode_sample`]). A reward model reads `prompt ++ response` (with the
//! EOS) at its last token.

use rmdistill_ml::tch;
use rmdistill_ml::{PairBatch, Tokenizer};
pub use rmdistill_stages::data_io::*;
use rmdistill_stages::port::{Ctx, Device, StageError, StageResult};
use rmdistill_stages::tokenizer_file::{DROP_CAUSE, DROP_REMEDY, DropCheck, Dropped, preview};
use std::path::Path;

/// The tch device a stage should use.
pub fn tch_device(ctx: &dyn Ctx) -> tch::Device {
    match ctx.device() {
        Device::Cpu => tch::Device::Cpu,
        Device::Cuda(i) => tch::Device::Cuda(i),
    }
}

/// Deterministic libtorch settings for a stage: its thread budget and a seed.
pub fn torch_setup(ctx: &dyn Ctx, seed: u64) {
    rmdistill_ml::train::deterministic_cpu(seed, ctx.threads().max(1) as i32);
}

/// A tokenizer with the encoding convention of this module.
#[derive(Clone, Debug)]
pub struct Codec {
    pub tok: Tokenizer,
    pub bos: i64,
    pub eos: i64,
    pub pad: i64,
    /// Truncation of `prompt ++ response` (see [`PairBatch::new`]).
    pub max_len: Option<usize>,
    /// The input slot (or parameter) the tokenizer came from, named by the errors of its texts.
    slot: String,
    /// When the tokenizer can drop characters of a text silently, its check
    /// ([`rmdistill_stages::tokenizer_file::DropCheck`]): every text is then checked for what it drops, and refused
    /// with a drop. Derived once; the tokenizers the pipeline trains cannot drop and are not checked.
    drops: Option<DropCheck>,
    /// The id of the model's unknown token, when it has one, and how many tokens this codec (and its clones) has
    /// encoded and how many of them were that token, for [`Codec::warn_unknown`].
    unknown: Option<(i64, std::sync::Arc<UnknownCount>)>,
    /// How many rows this codec (and its clones) has put into batches, and how many lost part of their prompt or
    /// response to `max_len`, for [`Codec::warn_truncated`].
    cut: std::sync::Arc<CutCount>,
}

/// Rows put into batches, and how many lost the start of their prompt or the end of their response to `max_len`.
#[derive(Debug, Default)]
struct CutCount {
    rows: std::sync::atomic::AtomicU64,
    prompts: std::sync::atomic::AtomicU64,
    responses: std::sync::atomic::AtomicU64,
}

/// Tokens encoded, and how many were the unknown token.
#[derive(Debug, Default)]
struct UnknownCount {
    tokens: std::sync::atomic::AtomicU64,
    unknown: std::sync::atomic::AtomicU64,
}

/// The share of unknown tokens above which [`Codec::warn_unknown`] warns: beyond it the model is trained on (or
/// scores) texts it mostly cannot see.
pub const UNKNOWN_WARN_SHARE: f64 = 0.05;

/// The id of `tok`'s unknown token, when its model has one.
fn unknown_id(tok: &tokenizers::Tokenizer) -> Option<i64> {
    use tokenizers::models::ModelWrapper;
    let name = match tok.get_model() {
        ModelWrapper::WordLevel(m) => Some(m.unk_token.clone()),
        ModelWrapper::BPE(m) => m.unk_token.clone(),
        ModelWrapper::WordPiece(m) => Some(m.unk_token.clone()),
        ModelWrapper::Unigram(m) => {
            let id = serde_json::to_value(m).ok()?.get("unk_id")?.as_u64()?;
            return Some(id as i64);
        }
    }?;
    tok.token_to_id(&name).map(i64::from)
}

impl Codec {
    pub fn new(tok: Tokenizer, field: &str) -> StageResult<Codec> {
        let eos = tok.eos_id.ok_or_else(|| StageError::invalid(field, "tokenizer has no EOS token"))?;
        let bos = tok.bos_id.unwrap_or(eos);
        let pad = tok.pad_id.unwrap_or(eos);
        let drops = DropCheck::of(tok.inner());
        let unknown = unknown_id(tok.inner()).map(|id| (id, Default::default()));
        Ok(Codec {
            tok,
            bos,
            eos,
            pad,
            max_len: None,
            slot: field.to_string(),
            drops,
            unknown,
            cut: Default::default(),
        })
    }
    /// The tokenizer of a directory (`tokenizer.json`), or an error naming the input slot. When the directory is a
    /// checkpoint, sequences are truncated to the positions its model can place (`n_positions` /
    /// `max_position_embeddings`).
    pub fn load(dir: &Path, slot: &str) -> StageResult<Codec> {
        if !dir.join("tokenizer.json").exists() {
            return Err(StageError::invalid(slot, format!("{}: no tokenizer.json in this directory", dir.display())));
        }
        // read as import reads it (rmdistill_stages::tokenizer_file): checked, and deterministic
        let file = dir.join("tokenizer.json");
        let inner = rmdistill_stages::tokenizer_file::read(&file)
            .map_err(|e| StageError::invalid(slot, format!("loading {}: {e}", file.display())))?;
        let tok = Tokenizer::with_config(inner, Some(dir)).map_err(|e| StageError::invalid(slot, format!("{e:#}")))?;
        let mut codec = Codec::new(tok, slot)?;
        codec.max_len = std::fs::read(dir.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|c| c.get("n_positions").or_else(|| c.get("max_position_embeddings")).and_then(|v| v.as_u64()))
            .map(|n| n as usize);
        Ok(codec)
    }
    /// Truncates sequences to `max_len` tokens, never beyond what the model can place.
    pub fn with_max_len(mut self, max_len: usize) -> Codec {
        self.max_len = Some(self.max_len.map_or(max_len, |m| m.min(max_len)));
        self
    }
    /// `[BOS] ++ encode(text)`, or an error naming what the tokenizer would drop of the prompt.
    pub fn prompt(&self, text: &str) -> StageResult<Vec<i64>> {
        let mut ids = vec![self.bos];
        ids.extend(self.encode(text, "prompt")?);
        Ok(ids)
    }
    /// `encode(text) ++ [EOS]`, or an error naming what the tokenizer would drop of the response.
    pub fn response(&self, text: &str) -> StageResult<Vec<i64>> {
        let mut ids = self.encode(text, "response")?;
        ids.push(self.eos);
        Ok(ids)
    }
    /// Tokens of a text without BOS/EOS (the `tokens_a/b` length of a response).
    pub fn count(&self, text: &str) -> StageResult<u32> {
        Ok(self.encode(text, "response")?.len() as u32)
    }
    /// The ids of `text` (a `what`: prompt or response), refused when the tokenizer drops characters of it: a BPE
    /// model with no unknown token and no byte fallback leaves out what its vocabulary lacks, and the model would
    /// be trained on or score a text other than the data's, with no error (as import refuses such a response).
    fn encode(&self, text: &str, what: &str) -> StageResult<Vec<i64>> {
        let ids = self.tok.encode(text)?;
        if let Some((unk, n)) = &self.unknown {
            use std::sync::atomic::Ordering::Relaxed;
            n.tokens.fetch_add(ids.len() as u64, Relaxed);
            n.unknown.fetch_add(ids.iter().filter(|&&i| i == *unk).count() as u64, Relaxed);
        }
        if let Some(d) = self.first_dropped(text, what)? {
            return Err(StageError::invalid(
                &self.slot,
                format!(
                    "a {what} loses {} of {:?}: {DROP_CAUSE}, so the model would be given the {what} without it ({} tokens, too few); {DROP_REMEDY}",
                    d.described(),
                    preview(text, 60),
                    ids.len()
                ),
            ));
        }
        Ok(ids)
    }
    /// What the tokenizer drops of `text` (a `what`), when it can drop characters at all.
    fn first_dropped(&self, text: &str, what: &str) -> StageResult<Option<Dropped>> {
        let Some(check) = &self.drops else { return Ok(None) };
        check
            .first_dropped(self.tok.inner(), text)
            .map_err(|e| StageError::failed(format!("encoding a {what} ({:?}): {e}", preview(text, 60))))
    }
    /// A sampled response (without its EOS) as text, refused when the tokenizer would drop characters of that text
    /// on encoding it again: its decoder can write characters its model has no token for (a vocabulary token
    /// holding a character that has no token of its own, or the `�` a byte-fallback decoder writes for sampled bytes
    /// that are not UTF-8). The text is the tokenizer's own output, so [`DROP_REMEDY`] ("use the model's own
    /// tokenizer") would be wrong for it, and the error says what is. Checked here, the text is one this codec's
    /// later encodings of it ([`Codec::response`], [`Codec::count`], [`Codec::prompt`]) cannot refuse: the check is
    /// theirs, of the same text.
    pub fn decode_sample(&self, ids: &[i64]) -> StageResult<String> {
        let ids: Vec<i64> = ids.iter().copied().filter(|&i| i != self.eos).collect();
        let text = self.tok.decode(&ids, true)?;
        if let Some(d) = self.first_dropped(&text, "sampled response")? {
            let back = self.tok.decode(&self.tok.encode(&text)?, true)?;
            return Err(StageError::invalid(
                &self.slot,
                format!(
                    "a sampled response decodes to text its tokenizer cannot read back: encoded again, it loses {} of {:?}, which comes back as {:?}; the tokenizer's decoder writes characters its model has no token for, and it has no unknown token or byte fallback to stand for them; use a tokenizer with an unk_token or byte fallback",
                    d.described(),
                    preview(&text, 60),
                    preview(&back, 60)
                ),
            ));
        }
        Ok(text)
    }
    /// Warns (through `ctx`) when more than [`UNKNOWN_WARN_SHARE`] of the tokens this codec has encoded so far were
    /// the unknown token: a tokenizer that does not cover the data turns most of it into one token, and the model
    /// then learns from (or scores) texts it cannot see, with no error. `what` names the texts (e.g. "the
    /// training texts").
    pub fn warn_unknown(&self, ctx: &dyn Ctx, what: &str) {
        let Some((unk, n)) = &self.unknown else { return };
        let (tokens, unknown) =
            (n.tokens.load(std::sync::atomic::Ordering::Relaxed), n.unknown.load(std::sync::atomic::Ordering::Relaxed));
        if tokens == 0 || (unknown as f64) <= UNKNOWN_WARN_SHARE * tokens as f64 {
            return;
        }
        let name = self.tok.inner().id_to_token(*unk as u32).unwrap_or_default();
        ctx.warn(&format!(
            "{:.1}% of the {tokens} tokens of {what} are the unknown token {name:?} ({unknown} tokens): the tokenizer of `{}` does not cover these texts, so the model sees all those words as one token; use a tokenizer made for this data (for `sft`, leave `tokenizer` unset to train one on it, or raise `tokenizer_vocab`)",
            100.0 * unknown as f64 / tokens as f64,
            self.slot
        ));
    }
    pub fn batch(&self, prompts: &[&[i64]], responses: &[&[i64]], device: tch::Device) -> StageResult<PairBatch> {
        if let Some(m) = self.max_len.filter(|&m| m >= 2) {
            use std::sync::atomic::Ordering::Relaxed;
            let (mut p_cut, mut r_cut) = (0, 0);
            for (p, r) in prompts.iter().zip(responses) {
                let (kp, kr) = rmdistill_ml::fit(p.len(), r.len(), m);
                p_cut += u64::from(kp < p.len());
                r_cut += u64::from(kr < r.len());
            }
            self.cut.rows.fetch_add(prompts.len() as u64, Relaxed);
            self.cut.prompts.fetch_add(p_cut, Relaxed);
            self.cut.responses.fetch_add(r_cut, Relaxed);
        }
        Ok(PairBatch::new(prompts, responses, self.pad, self.max_len, device)?)
    }
    /// Warns (through `ctx`) when a notable share ([`rmdistill_stages::evaluation::notable_cut`]) of the rows this
    /// codec has put into batches lost the start of their prompt or the end of their response to `max_len`: the
    /// model is then trained on, or scores, texts other than the data's — a response cut loses its EOS and is scored
    /// as if it were whole. `what` names the texts. Call it once the batches are done.
    pub fn warn_truncated(&self, ctx: &dyn Ctx, what: &str) {
        use std::sync::atomic::Ordering::Relaxed;
        let (rows, p, r) =
            (self.cut.rows.load(Relaxed), self.cut.prompts.load(Relaxed), self.cut.responses.load(Relaxed));
        let share = |n: u64| n as f64 / rows.max(1) as f64;
        let notable = |n: u64| rmdistill_stages::evaluation::notable_cut(n as usize, rows as usize);
        if !notable(p) && !notable(r) {
            return;
        }
        ctx.warn(&format!(
            "max_len = {} tokens cut {:.1}% of the prompt–response sequences of {what} at the start of their prompt \
             and {:.1}% at the end of their response (a response cut loses its EOS and is scored as if whole): the \
             model sees texts other than the data's; raise max_len (up to the model's positions) or use shorter texts",
            self.max_len.unwrap_or_default(),
            100.0 * share(p),
            100.0 * share(r)
        ));
    }
    /// The model's vocabulary must cover the tokenizer's ids.
    pub fn check_vocab(&self, model_vocab: i64, slot: &str) -> StageResult<()> {
        let v = self.tok.vocab_size() as i64;
        if v > model_vocab {
            return Err(StageError::invalid(
                slot,
                format!(
                    "tokenizer has {v} tokens but the model's vocabulary has {model_vocab}: model/tokenizer mismatch"
                ),
            ));
        }
        Ok(())
    }
}

/// f64 values of a tensor.
pub fn to_f64s(t: &tch::Tensor) -> StageResult<Vec<f64>> {
    Vec::<f64>::try_from(t.to_kind(tch::Kind::Double).to_device(tch::Device::Cpu))
        .map_err(|e| StageError::failed(e.to_string()))
}

/// Scores both responses of every pair `(prompts[i], a[i], b[i])` with `score` (one value per row of a batch), in
/// batches of `batch` rows that hold a pair's two rows together: rows sharing a prompt are packed
/// (`prompt ++ a ++ b`, see `rmdistill_ml::logprobs`), so the prompt is computed once for both responses instead of
/// once per response. Returns the values of the `a` rows and of the `b` rows, in pair order.
pub fn score_pairs(
    prompts: &[Vec<i64>],
    a: &[Vec<i64>],
    b: &[Vec<i64>],
    batch: usize,
    mut score: impl FnMut(&[&[i64]], &[&[i64]]) -> StageResult<Vec<f64>>,
) -> StageResult<(Vec<f64>, Vec<f64>)> {
    let n = prompts.len();
    let (mut out_a, mut out_b) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for r in chunks(n, (batch / 2).max(1)) {
        let k = r.len();
        let ps: Vec<&[i64]> = prompts[r.clone()].iter().chain(&prompts[r.clone()]).map(|x| x.as_slice()).collect();
        let rs: Vec<&[i64]> = a[r.clone()].iter().chain(&b[r.clone()]).map(|x| x.as_slice()).collect();
        let v = score(&ps, &rs)?;
        if v.len() != 2 * k {
            return Err(StageError::failed(format!("scored {} rows of a batch of {}", v.len(), 2 * k)));
        }
        out_a.extend_from_slice(&v[..k]);
        out_b.extend_from_slice(&v[k..]);
    }
    Ok((out_a, out_b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// The codec of a tokenizer.json holding `model` (Whitespace pre-tokenizer), read as a stage reads an input.
    fn load(model: Value) -> Codec {
        let dir = tempfile::tempdir().unwrap();
        let tok = json!({"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
            "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null, "model": model});
        std::fs::write(dir.path().join("tokenizer.json"), serde_json::to_vec(&tok).unwrap()).unwrap();
        Codec::load(dir.path(), "tokenizer").unwrap()
    }

    /// A BPE model with no unknown token drops what its vocabulary lacks ("ab ac" would be `[a, b, a]`): a prompt
    /// or response with such a character is refused, naming it; one it covers is encoded as before.
    #[test]
    fn a_text_the_tokenizer_drops_characters_of_is_refused() {
        let codec = load(json!({"type": "BPE", "vocab": {"a": 0, "b": 1, "<|endoftext|>": 2}, "merges": [],
            "dropout": null, "unk_token": null, "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false}));
        assert_eq!(codec.tok.encode("ab ac").unwrap(), vec![0, 1, 0], "the drop this is about");
        let e = codec.prompt("ab ac").unwrap_err();
        assert!(matches!(&e, StageError::Invalid { field, .. } if field == "tokenizer"), "{e:?}");
        let e = e.to_string();
        for part in ["a prompt loses \"c\" (in \"ac\") of \"ab ac\"", "no unknown token or byte fallback", "unk_token"]
        {
            assert!(e.contains(part), "{part}: {e}");
        }
        let e = codec.response("ba c").unwrap_err().to_string();
        assert!(e.contains("a response loses \"c\" (in \"c\")"), "{e}");
        assert!(codec.count("abc").unwrap_err().to_string().contains("a response loses \"c\""));
        // the text is shown cut to its first 60 characters
        let long = format!("{} é", "ab ".repeat(40));
        let e = codec.prompt(&long).unwrap_err().to_string();
        assert!(e.contains(&format!("\"é\" (in \"é\") of \"{}…\"", &long[..60])), "{e}");
        // covered: the ids of `encode`, with BOS / EOS
        let ids = codec.tok.encode("ab ba").unwrap();
        assert_eq!(ids, vec![0, 1, 1, 0]);
        assert_eq!(codec.prompt("ab ba").unwrap(), [&[2][..], &ids].concat());
        assert_eq!(codec.response("ab ba").unwrap(), [&ids[..], &[2]].concat());
        assert_eq!(codec.count("ab ba").unwrap(), 4);
    }

    /// A sampled response is the tokenizer's own output: when its decoder writes a character the model has no
    /// token for (here "é", held only by the token "aé", which no merge reaches), encoding the text again drops it,
    /// and the error says the tokenizer cannot read back its own output, not "use the model's own tokenizer".
    #[test]
    fn a_sampled_response_its_tokenizer_cannot_read_back_is_refused_as_such() {
        let codec = load(json!({"type": "BPE", "vocab": {"a": 0, "b": 1, "aé": 2, "<|endoftext|>": 3},
            "merges": [], "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false}));
        assert!(codec.drops.is_some());
        // the round trip this is about: "b aé" (no decoder: tokens joined by spaces) encodes as `[b, a]`
        let sampled = [1, 2, 3];
        let text = codec.tok.decode(&sampled[..2], true).unwrap();
        assert_eq!(text, "b aé");
        assert_eq!(codec.tok.encode(&text).unwrap(), vec![1, 0], "the drop this is about");
        let e = codec.decode_sample(&sampled).unwrap_err();
        assert!(matches!(&e, StageError::Invalid { field, .. } if field == "tokenizer"), "{e:?}");
        let e = e.to_string();
        for part in [
            "a sampled response decodes to text its tokenizer cannot read back",
            "encoded again, it loses \"é\" (in \"aé\") of \"b aé\", which comes back as \"b a\";",
            "the tokenizer's decoder writes characters its model has no token for",
            "use a tokenizer with an unk_token or byte fallback",
        ] {
            assert!(e.contains(part), "{part}: {e}");
        }
        assert!(!e.contains("model's own tokenizer"), "{e}");
        // the same text given as data (not sampled) keeps the other remedy
        let e = codec.response(&text).unwrap_err().to_string();
        assert!(e.contains("a response loses \"é\"") && e.contains("model's own tokenizer"), "{e}");
        // a sample it reads back is its text, which this codec's encodings then take as they are (EOS or not)
        for ids in [&[0, 1, 0, 3][..], &[1, 0]] {
            let text = codec.decode_sample(ids).unwrap();
            assert_eq!(text, if ids.len() == 4 { "a b a" } else { "b a" });
            let kept: Vec<i64> = ids.iter().copied().filter(|&i| i != 3).collect();
            assert_eq!(codec.response(&text).unwrap(), [&kept[..], &[3]].concat());
            assert_eq!(codec.count(&text).unwrap(), kept.len() as u32);
        }
    }

    /// Tokenizers with an unknown token, and those the pipeline trains, cannot drop: they are not checked at all.
    #[test]
    fn tokenizers_that_cannot_drop_are_not_checked() {
        let word_level = load(json!({"type": "WordLevel", "vocab": {"<unk>": 0, "a": 1, "<|endoftext|>": 2},
            "unk_token": "<unk>"}));
        let bpe_unk = load(json!({"type": "BPE", "vocab": {"a": 0, "<unk>": 1, "<|endoftext|>": 2}, "merges": [],
            "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false}));
        // what the vocabulary lacks becomes the unknown token
        for (codec, unk) in [(&word_level, 0), (&bpe_unk, 1)] {
            assert!(codec.drops.is_none());
            assert_eq!(codec.prompt("a b €").unwrap(), vec![2, if unk == 0 { 1 } else { 0 }, unk, unk]);
            assert_eq!(codec.response("c").unwrap(), vec![unk, 2]);
            assert_eq!(codec.count("a c").unwrap(), 2);
        }
        let texts = ["alpha beta gamma", "delta epsilon"];
        for spec in [
            rmdistill_ml::tokenizer::TokenizerSpec::ByteBpe { vocab_size: 300, min_frequency: 1 },
            rmdistill_ml::tokenizer::TokenizerSpec::WordLevel { vocab_size: 300, min_frequency: 1 },
        ] {
            let codec = Codec::new(Tokenizer::train(spec, texts.iter()).unwrap(), "tokenizer_kind").unwrap();
            assert!(codec.drops.is_none(), "{:?}", codec.tok);
            assert!(codec.prompt("zeta € ✓").is_ok());
        }
        let names: Vec<String> = (0..10).map(rmdistill_stages::synth::word).collect();
        assert!(Codec::new(crate::synth::task_tokenizer(&names).unwrap(), "t").unwrap().drops.is_none());
    }

    #[test]
    fn score_pairs_keeps_a_pairs_rows_together_and_returns_them_in_order() {
        // row value: prompt id × 100 + response id, so a misplaced row shows
        let n = 5;
        let prompts: Vec<Vec<i64>> = (0..n).map(|i| vec![i]).collect();
        let a: Vec<Vec<i64>> = (0..n).map(|i| vec![10 + i]).collect();
        let b: Vec<Vec<i64>> = (0..n).map(|i| vec![50 + i]).collect();
        for batch in [1, 2, 3, 4, 7, 10, 64] {
            let mut sizes = vec![];
            let (va, vb) = score_pairs(&prompts, &a, &b, batch, |ps, rs| {
                sizes.push(ps.len());
                let k = ps.len() / 2;
                // each batch holds whole pairs: row j and row j + k share their prompt
                assert!((0..k).all(|j| ps[j] == ps[j + k]), "batch {batch}");
                Ok(ps.iter().zip(rs).map(|(p, r)| (p[0] * 100 + r[0]) as f64).collect())
            })
            .unwrap();
            assert_eq!(va, (0..n).map(|i| (i * 100 + 10 + i) as f64).collect::<Vec<_>>(), "batch {batch}");
            assert_eq!(vb, (0..n).map(|i| (i * 100 + 50 + i) as f64).collect::<Vec<_>>(), "batch {batch}");
            assert!(sizes.iter().all(|&s| s <= batch.max(2)), "batch {batch}: {sizes:?}");
        }
        let e = score_pairs(&prompts, &a, &b, 4, |ps, _| Ok(vec![0.0; ps.len() - 1])).unwrap_err();
        assert!(e.to_string().contains("scored 3 rows of a batch of 4"), "{e}");
    }
}
