//! `synth`: the embedded synthetic summarisation task, generated here, with a programmatic oracle whose ground truth
//! is known (DESIGN.md, "The embedded default").
//!
//! # The task
//! - **Vocabulary**: `vocab_size` pseudo-words (two consonant–vowel syllables, e.g. `kobe`, `tusa`), plus the
//!   separator word `tldr` that ends every prompt.
//! - **Topics**: `topics` distributions over the vocabulary. Topic `t` has a core of `topic_words` words (a seeded
//!   permutation of the vocabulary); a word is drawn from the core with weight ∝ 1/(rank+1) with probability
//!   1 − `background`, else uniformly from the whole vocabulary.
//! - **Documents** (`prompt`): a topic, a length L uniform in `doc_len` = [min, max]; `salient` = [min, max] distinct
//!   *salient* words drawn from the topic, each repeated a number of times uniform in `repeats`; the remaining
//!   positions are distinct non-salient words of the topic (each appears once); the positions are shuffled. So the
//!   salient words of a document are exactly **the words it repeats**. The prompt is the document followed by `tldr`.
//! - **Key words** (`key_words`, 0 by default here; **6 in the default pipeline**): with k > 0 only the first k core
//!   words of each topic may be salient, and no document uses a key word of any topic as a non-salient word, so
//!   salience becomes a property of the word itself (as a name or a number is in a real summary) rather than only of
//!   its count in the document. The oracle is unchanged: coverage still counts the document's own salient words, and
//!   a key word the document does not contain is still invented. Why the default pipeline uses k = 6 (issue 9,
//!   measured 2026-12-01 with `scripts/bench/rm-oracle.sh`, 3 seeds, BENCHMARKS.md "Reward models that learn the
//!   task"): the tiny reward models learn from ~1,080 pairs of D_ρ what a word is worth, but not to match a word
//!   against the document — with k = 0 the model trained on D_0.5 agreed with the oracle on 0.53 of decided held-out
//!   pairs (0.56 within the length margin), 0.61 with a π_ref that reads better (`init_std` 0.1, 40,000 documents);
//!   with that π_ref and k = 12 / 8 / 6: 0.71 / 0.76 / 0.78 (within the margin 0.71 / 0.76 / 0.80), while the length
//!   bias stays learnable (length sensitivity of the D_0.2 and D_0.8 models 0.46 → 0.82 at k = 6). With the old
//!   π_ref, k = 12 gained nothing (0.56): the two changes work together.
//! - **Demonstrations** (`summary`, what `sft` learns from): the document's words in order of first appearance,
//!   keeping each salient word with probability `demo_keep` and each non-salient word with probability
//!   `demo_extra`; then, with probability `demo_invent`, one word absent from the document is inserted at a random
//!   place, and with probability `demo_repeat` one kept word is repeated. Never empty (the first salient word stays
//!   when nothing else does). Demonstrations are deliberately imperfect, so that the SFT policy is a broad
//!   distribution whose samples differ in quality and length.
//! - **Splits**: each document is `test` with probability `test_frac`, else `eval` with probability `eval_frac`, else
//!   `train`.
//!
//! Document `i` is generated from ChaCha8(`seed`, stream `i`), so the corpus does not depend on threads and its
//! first documents do not depend on `n_docs`.
//!
//! Defaults, and why: documents of 12–20 words with 2–4 salient words (DESIGN.md's starting point was 20–40 words;
//! measured: the default tiny GPT-2 (128k parameters) trained for 1,000 steps on 20–40-word documents did not learn to
//! copy from its context at all — held-out loss 4.2 nats/token, no better than the topic's word frequencies — while on
//! 12–20-word documents it starts to copy salient words, 3.4 nats/token).
//!
//! # The oracle
//! [`crate::oracle`]: the programmatic oracle `label` and `evaluate` score with (knobs `oracle_params`).
//!
//! # Outputs
//! - `corpus` (Parquet): `doc_id` UInt32, `topic` UInt32, `split` Utf8, `prompt` Utf8, `summary` Utf8, `salient` Utf8
//!   (the salient words, space-separated, in order of first appearance). Summary: counts and the demonstrations' mean
//!   oracle score and length.
//! - `tokenizer` (Dir): a word-level `tokenizer.json` (+ `tokenizer_config.json`) over exactly the task vocabulary:
//!   `<|endoftext|>` (BOS/EOS), `<|pad|>`, `<|unk|>`, `tldr`, then the words.
//!
//! This file declares the stage and generates the corpus (pure); the worker's `synth.rs` builds the tokenizer with the
//! ML core's `Tokenizer` and writes both outputs.
use crate::oracle::{OracleParams, SEP, oracle_score};
use crate::port::*;
use crate::table;
use arrow::array::{ArrayRef, RecordBatch, StringBuilder, UInt32Builder};
use arrow::datatypes::{DataType, Field, Schema};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

pub struct Synth;

#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Seed of the corpus: document i is drawn from ChaCha8(seed, stream i), so it does not depend on n_docs.
    #[serde(default)]
    seed: u64,
    /// Documents to generate (≥ 1), across the train, eval and test splits.
    #[serde(default = "d_n_docs")]
    #[schemars(range(min = 1))]
    n_docs: u32,
    /// Pseudo-words in the vocabulary besides `tldr` (more than the longest document, at most 4900).
    #[serde(default = "d_vocab")]
    #[schemars(range(min = 21))]
    vocab_size: u32,
    /// Number of topics (word distributions); each document draws one uniformly.
    #[serde(default = "d_topics")]
    #[schemars(range(min = 1))]
    topics: u32,
    /// Core words per topic (≤ vocab_size), drawn with weight ∝ 1/(rank+1).
    #[serde(default = "d_topic_words")]
    #[schemars(range(min = 1))]
    topic_words: u32,
    /// Key words per topic: the first `key_words` of its core (by rank) are the only words a document may repeat
    /// (its salient words), and no document uses a key word of any topic as a non-salient word, so salience is a
    /// property of the word a reader can learn from a thousand pairs (the default pipeline uses 6). 0: any core word
    /// may be salient, and salience can only be read by counting a word's occurrences in the document.
    #[serde(default = "d_key_words")]
    key_words: u32,
    /// Probability that a word is drawn uniformly from the whole vocabulary rather than the topic's core.
    #[serde(default = "d_background")]
    background: f64,
    /// [min, max] document length in words, uniform (2 ≤ min, max ≤ 1000); the prompt adds `tldr`.
    #[serde(default = "d_doc_len")]
    doc_len: [u32; 2],
    /// [min, max] distinct salient words (the words it repeats) per document, uniform (min ≥ 1).
    #[serde(default = "d_salient")]
    salient: [u32; 2],
    /// [min, max] occurrences of each salient word in its document, uniform (min ≥ 2).
    #[serde(default = "d_repeats")]
    repeats: [u32; 2],
    /// Probability that a document is in the `eval` split (eval_frac + test_frac < 1).
    #[serde(default = "d_frac")]
    eval_frac: f64,
    /// Probability that a document is in the `test` split; the rest are `train`.
    #[serde(default = "d_frac")]
    test_frac: f64,
    /// Probability that a demonstration keeps each salient word of its document.
    #[serde(default = "d_keep")]
    demo_keep: f64,
    /// Probability that a demonstration keeps each non-salient word of its document.
    #[serde(default = "d_extra")]
    demo_extra: f64,
    /// Probability that a demonstration gets one word absent from its document.
    #[serde(default = "d_invent")]
    demo_invent: f64,
    /// Probability that a demonstration repeats one of its kept words.
    #[serde(default = "d_repeat")]
    demo_repeat: f64,
    /// Synthetic oracle knobs (coverage_weight, invent_penalty, repeat_penalty, length_bonus, length_cap).
    #[serde(default)]
    oracle_params: Map<String, Value>,
}
fn d_n_docs() -> u32 {
    3000
}
fn d_vocab() -> u32 {
    300
}
fn d_topics() -> u32 {
    4
}
fn d_topic_words() -> u32 {
    60
}
fn d_key_words() -> u32 {
    0
}
fn d_background() -> f64 {
    0.15
}
fn d_doc_len() -> [u32; 2] {
    [12, 20]
}
fn d_salient() -> [u32; 2] {
    [2, 4]
}
fn d_repeats() -> [u32; 2] {
    [2, 3]
}
fn d_frac() -> f64 {
    0.1
}
fn d_keep() -> f64 {
    0.8
}
fn d_extra() -> f64 {
    0.1
}
fn d_invent() -> f64 {
    0.15
}
fn d_repeat() -> f64 {
    0.05
}

const CONSONANTS: &[u8] = b"bdfgklmnprstvz";
const VOWELS: &[u8] = b"aeiou";
const MAX_VOCAB: u32 = 4900;

/// The `i`-th vocabulary word (`i < 4900`).
pub fn word(i: u32) -> String {
    let (c, v) = (CONSONANTS.len() as u32, VOWELS.len() as u32);
    let mut i = i;
    let mut s = String::with_capacity(4);
    for _ in 0..2 {
        s.push(CONSONANTS[(i % c) as usize] as char);
        i /= c;
        s.push(VOWELS[(i % v) as usize] as char);
        i /= v;
    }
    s
}

fn parse(params: &Map<String, Value>) -> StageResult<(Params, OracleParams)> {
    let p: Params = parse_params(params)?;
    let o = OracleParams::from_map(&p.oracle_params, "oracle_params")?;
    if p.n_docs == 0 {
        return Err(StageError::invalid("n_docs", "must be at least 1"));
    }
    if p.topics == 0 {
        return Err(StageError::invalid("topics", "must be at least 1"));
    }
    let range = |name: &str, [lo, hi]: [u32; 2], min: u32| -> StageResult<()> {
        if lo < min || lo > hi {
            return Err(StageError::invalid(
                name,
                format!("must be [min, max] with {min} <= min <= max, got [{lo}, {hi}]"),
            ));
        }
        Ok(())
    };
    range("doc_len", p.doc_len, 2)?;
    range("salient", p.salient, 1)?;
    range("repeats", p.repeats, 2)?;
    if p.doc_len[1] > 1000 {
        return Err(StageError::invalid("doc_len", format!("max must be at most 1000, got {}", p.doc_len[1])));
    }
    if p.salient[1] * p.repeats[1] > p.doc_len[0] {
        return Err(StageError::invalid(
            "salient",
            format!(
                "{} salient words × {} repeats do not fit in the shortest document ({} words)",
                p.salient[1], p.repeats[1], p.doc_len[0]
            ),
        ));
    }
    if p.vocab_size > MAX_VOCAB || p.vocab_size < p.doc_len[1] + 1 {
        return Err(StageError::invalid(
            "vocab_size",
            format!(
                "must be in {}..={MAX_VOCAB} (more words than the longest document), got {}",
                p.doc_len[1] + 1,
                p.vocab_size
            ),
        ));
    }
    if p.topic_words == 0 || p.topic_words > p.vocab_size {
        return Err(StageError::invalid(
            "topic_words",
            format!("must be in 1..={} (vocab_size), got {}", p.vocab_size, p.topic_words),
        ));
    }
    if p.key_words > 0 && (p.key_words < p.salient[1] || p.key_words > p.topic_words) {
        return Err(StageError::invalid(
            "key_words",
            format!(
                "must be 0 or in {}..={} (at least salient's max, at most topic_words), got {}",
                p.salient[1], p.topic_words, p.key_words
            ),
        ));
    }
    if p.key_words > 0 && p.vocab_size < p.topics * p.key_words + p.doc_len[1] {
        return Err(StageError::invalid(
            "key_words",
            format!(
                "{} topics × {} key words leave fewer non-key words than the longest document ({} words) in a \
                 vocabulary of {}",
                p.topics, p.key_words, p.doc_len[1], p.vocab_size
            ),
        ));
    }
    for (n, v) in [
        ("background", p.background),
        ("eval_frac", p.eval_frac),
        ("test_frac", p.test_frac),
        ("demo_keep", p.demo_keep),
        ("demo_extra", p.demo_extra),
        ("demo_invent", p.demo_invent),
        ("demo_repeat", p.demo_repeat),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err(StageError::invalid(n, format!("must be in [0, 1], got {v}")));
        }
    }
    if p.eval_frac + p.test_frac >= 1.0 {
        return Err(StageError::invalid("eval_frac", "eval_frac + test_frac must leave some training documents (< 1)"));
    }
    Ok((p, o))
}

struct Topic {
    core: Vec<u32>,
    /// cumulative weights over `core`
    cdf: Vec<f64>,
}

fn topics(p: &Params) -> Vec<Topic> {
    (0..p.topics)
        .map(|t| {
            let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
            rng.set_stream(u64::MAX - t as u64);
            let mut all: Vec<u32> = (0..p.vocab_size).collect();
            table::partial_shuffle(&mut rng, &mut all, p.topic_words as usize);
            let core = all[..p.topic_words as usize].to_vec();
            let mut acc = 0.0;
            let cdf = (0..core.len())
                .map(|r| {
                    acc += 1.0 / (r as f64 + 1.0);
                    acc
                })
                .collect();
            Topic { core, cdf }
        })
        .collect()
}

/// Every topic's key words (empty when `key_words` is 0): the words that may be salient, and only salient.
fn key_set(p: &Params, topics: &[Topic]) -> HashSet<u32> {
    topics.iter().flat_map(|t| t.core[..p.key_words as usize].iter().copied()).collect()
}

/// One of the first `k` core words of topic `t`, with weight ∝ 1/(rank+1).
fn draw_core(rng: &mut ChaCha8Rng, t: &Topic, k: usize) -> u32 {
    let u = table::uniform_f64(rng) * t.cdf[k - 1];
    t.core[t.cdf[..k].partition_point(|&c| c <= u).min(k - 1)]
}

/// A key word of topic `t`, with the same weights as the core (no background draws: salient words are always the
/// topic's).
fn draw_key(rng: &mut ChaCha8Rng, p: &Params, t: &Topic) -> u32 {
    draw_core(rng, t, p.key_words as usize)
}

fn draw(rng: &mut ChaCha8Rng, p: &Params, t: &Topic) -> u32 {
    if table::uniform_f64(rng) < p.background {
        return table::uniform_below(rng, p.vocab_size as u64) as u32;
    }
    draw_core(rng, t, t.core.len())
}

fn in_range(rng: &mut ChaCha8Rng, [lo, hi]: [u32; 2]) -> u32 {
    lo + table::uniform_below(rng, (hi - lo + 1) as u64) as u32
}

/// One generated document.
struct Doc {
    topic: u32,
    split: &'static str,
    words: Vec<u32>,
    salient: Vec<u32>,
    summary: Vec<u32>,
}

fn doc(p: &Params, topics: &[Topic], keys: &HashSet<u32>, i: u32) -> Doc {
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    rng.set_stream(i as u64);
    let u = table::uniform_f64(&mut rng);
    let split = if u < p.test_frac {
        "test"
    } else if u < p.test_frac + p.eval_frac {
        "eval"
    } else {
        "train"
    };
    let topic = table::uniform_below(&mut rng, topics.len() as u64) as u32;
    let t = &topics[topic as usize];
    let len = in_range(&mut rng, p.doc_len) as usize;
    let n_sal = in_range(&mut rng, p.salient) as usize;
    let mut used: HashSet<u32> = HashSet::new();
    // distinct words from the topic (falling back to uniform draws if the topic keeps repeating itself); with key
    // words, salient words are drawn among them and non-salient words never are
    let fresh = |rng: &mut ChaCha8Rng, used: &mut HashSet<u32>, salient: bool| -> u32 {
        let fits = |w: u32| keys.is_empty() || keys.contains(&w) == salient;
        for _ in 0..64 {
            let w = if salient && !keys.is_empty() { draw_key(rng, p, t) } else { draw(rng, p, t) };
            if fits(w) && used.insert(w) {
                return w;
            }
        }
        loop {
            let w = table::uniform_below(rng, p.vocab_size as u64) as u32;
            if fits(w) && used.insert(w) {
                return w;
            }
        }
    };
    let mut words = Vec::with_capacity(len);
    let mut salient_set = Vec::with_capacity(n_sal);
    for _ in 0..n_sal {
        let w = fresh(&mut rng, &mut used, true);
        salient_set.push(w);
        let r = in_range(&mut rng, p.repeats) as usize;
        words.extend(std::iter::repeat_n(w, r));
    }
    words.truncate(len);
    while words.len() < len {
        let w = fresh(&mut rng, &mut used, false);
        words.push(w);
    }
    let n = words.len();
    table::partial_shuffle(&mut rng, &mut words, n);
    // salient in order of first appearance
    let mut counts: HashMap<u32, u32> = HashMap::new();
    for &w in &words {
        *counts.entry(w).or_default() += 1;
    }
    let mut seen = HashSet::new();
    let mut salient = vec![];
    let mut summary = vec![];
    for &w in &words {
        if !seen.insert(w) {
            continue;
        }
        let is_sal = counts[&w] >= 2;
        if is_sal {
            salient.push(w);
        }
        let keep = if is_sal { p.demo_keep } else { p.demo_extra };
        if table::uniform_f64(&mut rng) < keep {
            summary.push(w);
        }
    }
    if summary.is_empty() {
        summary.push(salient.first().copied().unwrap_or(words[0]));
    }
    if table::uniform_f64(&mut rng) < p.demo_invent {
        // a word absent from the document
        let w = loop {
            let w = table::uniform_below(&mut rng, p.vocab_size as u64) as u32;
            if !counts.contains_key(&w) {
                break w;
            }
        };
        let at = table::uniform_below(&mut rng, summary.len() as u64 + 1) as usize;
        summary.insert(at, w);
    }
    if table::uniform_f64(&mut rng) < p.demo_repeat {
        let k = table::uniform_below(&mut rng, summary.len() as u64) as usize;
        let w = summary[k];
        summary.insert(k + 1, w);
    }
    Doc { topic, split, words, salient, summary }
}

fn join(ws: &[u32], names: &[String]) -> String {
    ws.iter().map(|&w| names[w as usize].as_str()).collect::<Vec<_>>().join(" ")
}

/// The corpus table and its summary (the stage writes it; tests use it directly).
pub fn generate_corpus(params: &Map<String, Value>) -> StageResult<(RecordBatch, Value, Vec<String>)> {
    let (p, oracle) = parse(params)?;
    let names: Vec<String> = (0..p.vocab_size).map(word).collect();
    let ts = topics(&p);
    let keys = key_set(&p, &ts);
    let docs: Vec<Doc> = (0..p.n_docs).map(|i| doc(&p, &ts, &keys, i)).collect();
    let mut ids = UInt32Builder::new();
    let mut topic = UInt32Builder::new();
    let mut split = StringBuilder::new();
    let mut prompt = StringBuilder::new();
    let mut summary = StringBuilder::new();
    let mut salient = StringBuilder::new();
    let (mut score_sum, mut len_sum, mut doc_len_sum, mut sal_sum) = (0.0, 0usize, 0usize, 0usize);
    let mut n_split: HashMap<&str, u64> = HashMap::new();
    for (i, d) in docs.iter().enumerate() {
        let pr = format!("{} {SEP}", join(&d.words, &names));
        let su = join(&d.summary, &names);
        score_sum += oracle_score(&pr, &su, &oracle);
        len_sum += d.summary.len();
        doc_len_sum += d.words.len();
        sal_sum += d.salient.len();
        *n_split.entry(d.split).or_default() += 1;
        ids.append_value(i as u32);
        topic.append_value(d.topic);
        split.append_value(d.split);
        prompt.append_value(&pr);
        summary.append_value(&su);
        salient.append_value(join(&d.salient, &names));
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("doc_id", DataType::UInt32, false),
        Field::new("topic", DataType::UInt32, false),
        Field::new("split", DataType::Utf8, false),
        Field::new("prompt", DataType::Utf8, false),
        Field::new("summary", DataType::Utf8, false),
        Field::new("salient", DataType::Utf8, false),
    ]));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(ids.finish()),
        Arc::new(topic.finish()),
        Arc::new(split.finish()),
        Arc::new(prompt.finish()),
        Arc::new(summary.finish()),
        Arc::new(salient.finish()),
    ];
    let batch = RecordBatch::try_new(schema, cols)?;
    let n = p.n_docs as f64;
    let summary = json!({
        "docs": p.n_docs,
        "train": n_split.get("train").copied().unwrap_or(0),
        "eval": n_split.get("eval").copied().unwrap_or(0),
        "test": n_split.get("test").copied().unwrap_or(0),
        "vocab_size": p.vocab_size,
        "topics": p.topics,
        "mean_doc_len": doc_len_sum as f64 / n,
        "mean_salient": sal_sum as f64 / n,
        "mean_summary_len": len_sum as f64 / n,
        "mean_summary_oracle": score_sum / n,
        "oracle_params": serde_json::to_value(&oracle).expect("serialises"),
    });
    Ok((batch, summary, names))
}

impl Stage for Synth {
    fn kind(&self) -> &'static str {
        "synth"
    }
    fn doc(&self) -> &'static str {
        "the embedded synthetic summarisation task: documents with salient (repeated) words, demonstrations, a word-level tokenizer; its oracle is rmdistill_stages::oracle::oracle_score"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        &[]
    }
    fn outputs(&self) -> &'static [OutputSpec] {
        &[
            OutputSpec {
                name: "corpus",
                kind: ArtifactKind::File,
                doc: "doc_id, topic, split, prompt, summary, salient (Parquet)",
            },
            OutputSpec {
                name: "tokenizer",
                kind: ArtifactKind::Dir,
                doc: "word-level tokenizer.json over the task vocabulary",
            },
        ]
    }
    fn validate(&self, params: &Map<String, Value>) -> StageResult<()> {
        parse(params).map(|_| ())
    }
    fn params_schema(&self) -> schemars::Schema {
        schemars::schema_for!(Params)
    }
    fn runs(&self) -> Runs {
        Runs::Worker
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_is_deterministic_and_salient_means_repeated() {
        let params = json!({"n_docs": 200, "seed": 3});
        let (b1, s1, names) = generate_corpus(params.as_object().unwrap()).unwrap();
        let (b2, _, _) = generate_corpus(params.as_object().unwrap()).unwrap();
        assert_eq!(b1, b2);
        let (b3, _, _) = generate_corpus(json!({"n_docs": 50, "seed": 3}).as_object().unwrap()).unwrap();
        assert_eq!(b3, b1.slice(0, 50), "documents do not depend on n_docs");
        let prompts = crate::data_io::strings(&b1, "prompt", std::path::Path::new("t"), true).unwrap();
        let sal = crate::data_io::strings(&b1, "salient", std::path::Path::new("t"), true).unwrap();
        let sums = crate::data_io::strings(&b1, "summary", std::path::Path::new("t"), true).unwrap();
        for ((p, s), su) in prompts.iter().zip(&sal).zip(&sums) {
            let words: Vec<&str> = p.split_whitespace().collect();
            assert_eq!(*words.last().unwrap(), SEP);
            assert!((13..=21).contains(&words.len()), "{p}");
            let mut c: HashMap<&str, usize> = HashMap::new();
            for w in &words[..words.len() - 1] {
                *c.entry(w).or_default() += 1;
            }
            let mut rep: Vec<&str> = c.iter().filter(|(_, n)| **n >= 2).map(|(w, _)| *w).collect();
            let mut listed: Vec<&str> = s.split_whitespace().collect();
            rep.sort();
            listed.sort();
            assert_eq!(rep, listed);
            assert!((2..=4).contains(&listed.len()));
            assert!(!su.is_empty());
        }
        assert!(s1["mean_summary_oracle"].as_f64().unwrap() > 0.5, "{s1}");
        assert_eq!(names.len(), 300);
    }

    #[test]
    fn key_words_make_salience_a_property_of_the_word() {
        let params = json!({"n_docs": 300, "seed": 5, "key_words": 6});
        let (b, _, _) = generate_corpus(params.as_object().unwrap()).unwrap();
        let sal = crate::data_io::strings(&b, "salient", std::path::Path::new("t"), true).unwrap();
        let prompts = crate::data_io::strings(&b, "prompt", std::path::Path::new("t"), true).unwrap();
        let keys: HashSet<&str> = sal.iter().flat_map(|s| s.split_whitespace()).collect();
        // 4 topics × 6 key words at most, and a key word never appears once (as a non-salient word)
        assert!(keys.len() <= 24 && keys.len() >= 6, "{}", keys.len());
        for p in &prompts {
            let mut c: HashMap<&str, usize> = HashMap::new();
            for w in p.split_whitespace().filter(|w| *w != SEP) {
                *c.entry(w).or_default() += 1;
            }
            for (w, n) in c {
                assert_eq!(keys.contains(w), n >= 2, "{w} ×{n} in {p}");
            }
        }
    }

    #[test]
    fn bad_params_name_the_field() {
        let cases = [
            (json!({"n_docs": 0}), "n_docs"),
            (json!({"vocab_size": 10}), "vocab_size"),
            (json!({"doc_len": [30, 20]}), "doc_len"),
            (json!({"salient": [3, 9], "repeats": [2, 3]}), "salient"),
            (json!({"doc_len": [1, 3]}), "doc_len"),
            (json!({"demo_keep": 1.5}), "demo_keep"),
            (json!({"key_words": 3}), "key_words"),
            (json!({"key_words": 61}), "key_words"),
            (json!({"key_words": 60, "topics": 5}), "key_words"),
            (json!({"oracle_params": {"length_bonus": -1.0}}), "oracle_params.length_bonus"),
            // finite, but a score weighed by it overflows: refused, not labelled as ties of ±∞
            (
                json!({"oracle_params": {"length_bonus": 1e308}}),
                "oracle_params.length_bonus: must be a number in [0, 1e6]",
            ),
            (json!({"oracle_params": {"coverage_weight": 1e7}}), "oracle_params.coverage_weight"),
            (json!({"oracle_params": {"lenght_bonus": 1.0}}), "oracle_params"),
            (json!({"nope": 1}), "nope"),
        ];
        for (p, field) in cases {
            let e = Synth.validate(p.as_object().unwrap()).unwrap_err().to_string();
            assert!(e.contains(field), "{p}: {e}");
        }
    }
}
