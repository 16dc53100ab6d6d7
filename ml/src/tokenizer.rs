//! Tokenizers through the `tokenizers` crate: a Hugging Face `tokenizer.json` with its special tokens,
//! encode/decode, the special ids a pipeline needs (BOS, EOS, padding), and training a byte-level BPE or word-level
//! tokenizer on a corpus for models trained from scratch. Saved tokenizers come with a `tokenizer_config.json` so
//! `transformers`' `AutoTokenizer` loads them as they are.
//!
//! A `tokenizer.json` is read by `rmdistill_stages::tokenizer_file::read` (checked where the `tokenizers` crate would
//! panic or be non-deterministic, with the file's truncation and padding off), then given its special tokens by
//! [`Tokenizer::with_config`]; this crate has no reader of its own.

use anyhow::{Context, Result, anyhow, bail};
use serde_json::{Value, json};
use std::path::Path;
use tokenizers::models::TrainerWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::models::wordlevel::{WordLevel, WordLevelTrainer};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::{AddedToken, decoders::DecoderWrapper};

/// End of text (also used as beginning of text, as GPT-2 does) in tokenizers trained here.
pub const EOS_TOKEN: &str = "<|endoftext|>";
pub const PAD_TOKEN: &str = "<|pad|>";
pub const UNK_TOKEN: &str = "<|unk|>";

/// What kind of tokenizer to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum TokenizerSpec {
    /// Byte-level BPE (GPT-2 style): never produces unknown tokens.
    ByteBpe { vocab_size: usize, min_frequency: u64 },
    /// One token per whitespace-separated word (the synthetic task's vocabulary); rare words map to `<|unk|>`.
    WordLevel { vocab_size: usize, min_frequency: u64 },
}

/// A tokenizer with the special ids a pipeline needs.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub bos_id: Option<i64>,
    pub eos_id: Option<i64>,
    pub pad_id: Option<i64>,
    /// Extra keys for tokenizer_config.json (e.g. a chat template), kept when saving.
    pub extra_config: serde_json::Map<String, Value>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tokenizer(vocab {}, bos {:?}, eos {:?}, pad {:?})",
            self.vocab_size(),
            self.bos_id,
            self.eos_id,
            self.pad_id
        )
    }
}

fn token_str(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

impl Tokenizer {
    /// `inner` with its special tokens found by their common names. Give it a tokenizer for whole texts: one read
    /// from a file by `rmdistill_stages::tokenizer_file::read`, which turns the file's saved truncation and padding
    /// off.
    pub fn from_inner(inner: tokenizers::Tokenizer) -> Self {
        let mut t = Tokenizer { inner, bos_id: None, eos_id: None, pad_id: None, extra_config: Default::default() };
        // Common names, for tokenizer.json files that come without a tokenizer_config.json.
        t.eos_id = ["<|endoftext|>", "</s>", "<|im_end|>", "<eos>", "<|end_of_text|>"].iter().find_map(|s| t.id(s));
        t.bos_id = ["<s>", "<|im_start|>", "<bos>", "<|begin_of_text|>"].iter().find_map(|s| t.id(s)).or(t.eos_id);
        t.pad_id = [PAD_TOKEN, "<pad>", "[PAD]"].iter().find_map(|s| t.id(s)).or(t.eos_id);
        t
    }

    /// `inner` (read from `dir`'s tokenizer.json by `rmdistill_stages::tokenizer_file::read`), with its special
    /// tokens from `dir`'s `tokenizer_config.json` when there is one, else found by their common names
    /// ([`Tokenizer::from_inner`]).
    pub fn with_config(inner: tokenizers::Tokenizer, dir: Option<&Path>) -> Result<Self> {
        let mut t = Self::from_inner(inner);
        if let Some(cfg) = dir.map(|d| d.join("tokenizer_config.json")).filter(|p| p.exists()) {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&cfg)?)
                .with_context(|| format!("parsing {}", cfg.display()))?;
            let lookup = |k: &str| token_str(v.get(k)).and_then(|s| t.id(&s));
            let (b, e, p) = (lookup("bos_token"), lookup("eos_token"), lookup("pad_token"));
            t.bos_id = b.or(t.bos_id);
            t.eos_id = e.or(t.eos_id);
            t.pad_id = p.or(t.pad_id);
            if let Some(ct) = v.get("chat_template") {
                t.extra_config.insert("chat_template".into(), ct.clone());
            }
        }
        Ok(t)
    }

    /// Writes `tokenizer.json` and a `tokenizer_config.json` naming the special tokens into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        self.inner.save(dir.join("tokenizer.json"), false).map_err(|e| anyhow!("saving tokenizer: {e}"))?;
        let name = |id: Option<i64>| id.and_then(|i| self.inner.id_to_token(i as u32));
        let mut cfg = json!({"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": false});
        let o = cfg.as_object_mut().unwrap();
        for (k, id) in [("bos_token", self.bos_id), ("eos_token", self.eos_id), ("pad_token", self.pad_id)] {
            if let Some(s) = name(id) {
                o.insert(k.into(), s.into());
            }
        }
        if let Some(unk) = self.id(UNK_TOKEN) {
            o.insert("unk_token".into(), self.inner.id_to_token(unk as u32).into());
        }
        o.extend(self.extra_config.clone());
        std::fs::write(dir.join("tokenizer_config.json"), serde_json::to_string_pretty(&cfg)? + "\n")?;
        Ok(())
    }

    /// Trains a tokenizer on `texts`; the special tokens `<|endoftext|>` (BOS and EOS), `<|pad|>` (and
    /// `<|unk|>` for word level) get the first ids.
    pub fn train<I, S>(spec: TokenizerSpec, texts: I) -> Result<Self>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        let special = |unk: bool| {
            let mut v = vec![AddedToken::from(EOS_TOKEN, true), AddedToken::from(PAD_TOKEN, true)];
            if unk {
                v.push(AddedToken::from(UNK_TOKEN, true));
            }
            v
        };
        let mut tok = match spec {
            TokenizerSpec::ByteBpe { vocab_size, min_frequency } => {
                let mut tok = tokenizers::Tokenizer::new(BPE::default());
                tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
                tok.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
                let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
                    .vocab_size(vocab_size)
                    .min_frequency(min_frequency)
                    .special_tokens(special(false))
                    .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
                    .show_progress(false)
                    .build()
                    .into();
                tok.train(&mut trainer, texts).map_err(|e| anyhow!("training BPE: {e}"))?;
                tok
            }
            TokenizerSpec::WordLevel { vocab_size, min_frequency } => {
                let model = WordLevel::builder().unk_token(UNK_TOKEN.into()).build().map_err(|e| anyhow!("{e}"))?;
                let mut tok = tokenizers::Tokenizer::new(model);
                tok.with_pre_tokenizer(Some(WhitespaceSplit));
                tok.with_decoder(Some(DecoderWrapper::WordPiece(tokenizers::decoders::wordpiece::WordPiece::new(
                    "##".into(),
                    false,
                ))));
                let mut trainer: TrainerWrapper = WordLevelTrainer::builder()
                    .vocab_size(vocab_size)
                    .min_frequency(min_frequency)
                    .special_tokens(special(true))
                    .show_progress(false)
                    .build()
                    .map_err(|e| anyhow!("{e}"))?
                    .into();
                tok.train(&mut trainer, texts).map_err(|e| anyhow!("training word-level tokenizer: {e}"))?;
                tok
            }
        };
        tok.with_padding(None);
        let t = Self::from_inner(tok);
        if t.eos_id.is_none() || t.pad_id.is_none() {
            bail!("trained tokenizer lacks its special tokens");
        }
        Ok(t)
    }

    pub fn id(&self, token: &str) -> Option<i64> {
        self.inner.token_to_id(token).map(i64::from)
    }
    pub fn token(&self, id: i64) -> Option<String> {
        self.inner.id_to_token(id as u32)
    }
    /// Vocabulary size including added/special tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
    /// Token ids of `text`, without BOS/EOS (callers add them where their format wants them).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let enc = self.inner.encode(text, false).map_err(|e| anyhow!("encoding: {e}"))?;
        Ok(enc.get_ids().iter().map(|&i| i as i64).collect())
    }
    pub fn encode_batch(&self, texts: &[&str]) -> Result<Vec<Vec<i64>>> {
        let encs = self.inner.encode_batch(texts.to_vec(), false).map_err(|e| anyhow!("encoding: {e}"))?;
        Ok(encs.iter().map(|e| e.get_ids().iter().map(|&i| i as i64).collect()).collect())
    }
    pub fn decode(&self, ids: &[i64], skip_special_tokens: bool) -> Result<String> {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        self.inner.decode(&ids, skip_special_tokens).map_err(|e| anyhow!("decoding: {e}"))
    }
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
