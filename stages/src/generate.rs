//! `generate`: synthetic labelled pairs in the normalised pairs table (see [`crate::table`]), for tests and
//! benchmarks that need no input file.
//!
//! Text is made of pseudo-words (two consonant–vowel syllables, 4,900 of them). Each pair gets a prompt and two
//! responses whose word counts are uniform in the `prompt_words` / `response_words` ranges (inclusive `[min, max]`).
//! When the two responses' word counts differ, the longer one is preferred with probability `longer_preferred`;
//! when they are equal, the label is a fair coin. Rows are generated in chunks of 65,536, chunk `c` from
//! ChaCha8(`seed`, stream `c`), so the output is the same for any number of threads.
use crate::port::*;
use crate::table::{self, PairRow, PairsBuilder};
use arrow::array::RecordBatch;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Deserialize;
use serde_json::{Map, Value, json};

pub struct Generate;

const CHUNK: u64 = 1 << 16;
/// The longest prompt or response, in words (each at most 5 bytes with its space).
const MAX_WORDS: u32 = 10_000;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Number of pairs to generate (1 ..= 4294967295).
    n: u64,
    /// Seed: rows are made in chunks of 65,536, chunk c from ChaCha8(seed, stream c).
    #[serde(default)]
    seed: u64,
    /// Probability that the longer response is preferred when word counts differ (equal: a fair coin).
    #[serde(default = "default_longer_preferred")]
    longer_preferred: f64,
    /// [min, max] words per prompt, uniform (1 ≤ min ≤ max ≤ 10000).
    #[serde(default = "default_prompt_words")]
    prompt_words: [u32; 2],
    /// [min, max] words per response, uniform (1 ≤ min ≤ max ≤ 10000).
    #[serde(default = "default_response_words")]
    response_words: [u32; 2],
}
fn default_longer_preferred() -> f64 {
    0.6
}
fn default_prompt_words() -> [u32; 2] {
    [8, 24]
}
fn default_response_words() -> [u32; 2] {
    [2, 16]
}

fn parse(params: &Map<String, Value>) -> StageResult<Params> {
    let p: Params = parse_params(params)?;
    if p.n == 0 || p.n > u32::MAX as u64 {
        return Err(StageError::invalid("n", format!("must be in 1..={}, got {}", u32::MAX, p.n)));
    }
    if !(0.0..=1.0).contains(&p.longer_preferred) {
        return Err(StageError::invalid("longer_preferred", format!("must be in [0, 1], got {}", p.longer_preferred)));
    }
    for (name, [lo, hi]) in [("prompt_words", p.prompt_words), ("response_words", p.response_words)] {
        if lo == 0 || lo > hi || hi > MAX_WORDS {
            return Err(StageError::invalid(
                name,
                format!("must be [min, max] with 1 <= min <= max <= {MAX_WORDS}, got [{lo}, {hi}]"),
            ));
        }
    }
    Ok(p)
}

const CONSONANTS: &[u8] = b"bdfgklmnprstvz";
const VOWELS: &[u8] = b"aeiou";

fn push_word(s: &mut String, i: u64) {
    let (c, v) = (CONSONANTS.len() as u64, VOWELS.len() as u64);
    let mut i = i;
    for _ in 0..2 {
        s.push(CONSONANTS[(i % c) as usize] as char);
        i /= c;
        s.push(VOWELS[(i % v) as usize] as char);
        i /= v;
    }
}

fn text(rng: &mut ChaCha8Rng, s: &mut String, [lo, hi]: [u32; 2]) -> u32 {
    s.clear();
    let n = lo + table::uniform_below(rng, (hi - lo + 1) as u64) as u32;
    let vocab = (CONSONANTS.len() * VOWELS.len()).pow(2) as u64;
    for k in 0..n {
        if k > 0 {
            s.push(' ');
        }
        push_word(s, table::uniform_below(rng, vocab));
    }
    n
}

/// Generates one chunk: rows `[c·CHUNK, min((c+1)·CHUNK, n))`. Returns the batch and (length-differing pairs,
/// of which longer preferred).
fn chunk(p: &Params, c: u64) -> (RecordBatch, u64, u64) {
    let start = c * CHUNK;
    let end = (start + CHUNK).min(p.n);
    let rows = (end - start) as usize;
    // A capacity hint only (bounded, so that long texts grow the buffer instead of reserving it all at once).
    let avg = |[lo, hi]: [u32; 2]| (lo as usize + hi as usize) / 2 * 5;
    let hint = rows.saturating_mul(avg(p.prompt_words) + 2 * avg(p.response_words)).saturating_mul(2);
    let mut b = PairsBuilder::with_capacity(rows, hint.min(1 << 28));
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    rng.set_stream(c);
    let (mut prompt, mut ra, mut rb) = (String::new(), String::new(), String::new());
    let (mut differing, mut longer) = (0u64, 0u64);
    for row in start..end {
        text(&mut rng, &mut prompt, p.prompt_words);
        let wa = text(&mut rng, &mut ra, p.response_words);
        let wb = text(&mut rng, &mut rb, p.response_words);
        let u = table::uniform_f64(&mut rng);
        let label: i8 = if wa == wb {
            (u < 0.5) as i8
        } else {
            differing += 1;
            let prefer_longer = u < p.longer_preferred;
            longer += prefer_longer as u64;
            // label 1 means b preferred: b is preferred when (b is longer) == prefer_longer
            ((wb > wa) == prefer_longer) as i8
        };
        let id = table::pair_id(&table::pair_hash(&prompt, &ra, &rb));
        b.push(PairRow {
            pair_id: &id,
            prompt: &prompt,
            a: &ra,
            b: &rb,
            label: Some(label),
            words: (wa, wb),
            tokens: None,
            source_row: row as u32,
        });
    }
    (b.finish(), differing, longer)
}

/// Generates the whole table in memory (the stage writes it; benchmarks and tests may use it directly).
pub fn generate(params: &Map<String, Value>) -> StageResult<(RecordBatch, Value)> {
    let p = parse(params)?;
    let chunks = p.n.div_ceil(CHUNK);
    let parts: Vec<(RecordBatch, u64, u64)> = (0..chunks).into_par_iter().map(|c| chunk(&p, c)).collect();
    let (differing, longer) = parts.iter().fold((0, 0), |(d, l), x| (d + x.1, l + x.2));
    let batches: Vec<RecordBatch> = parts.into_iter().map(|x| x.0).collect();
    let batch = arrow::compute::concat_batches(&table::pairs_schema(), &batches)?;
    let summary = json!({
        "pairs": p.n,
        "seed": p.seed,
        "longer_preferred_param": p.longer_preferred,
        "length_differing_pairs": differing,
        "longer_preferred_share": if differing > 0 { longer as f64 / differing as f64 } else { 0.0 },
    });
    Ok((batch, summary))
}

impl Stage for Generate {
    fn kind(&self) -> &'static str {
        "generate"
    }
    fn doc(&self) -> &'static str {
        "synthetic labelled pairs in the normalised pairs table (for tests and benchmarks)"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        &[]
    }
    fn outputs(&self) -> &'static [OutputSpec] {
        &[OutputSpec { name: "pairs", kind: ArtifactKind::File, doc: "normalised pairs (Parquet)" }]
    }
    fn validate(&self, params: &Map<String, Value>) -> StageResult<()> {
        parse(params).map(|_| ())
    }
    fn params_schema(&self) -> schemars::Schema {
        schemars::schema_for!(Params)
    }
    fn runs(&self) -> Runs {
        Runs::InProcess(run)
    }
}

pub fn run(ctx: &dyn Ctx) -> StageResult<Value> {
    let (batch, summary) = generate(ctx.params())?;
    ctx.progress(batch.num_rows() as u64, batch.num_rows() as u64);
    table::write_table(&ctx.output_path("pairs"), &batch, &table::summary_kv("generate", &summary))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::local_ctx::LocalCtx;

    #[test]
    fn deterministic_and_shaped() {
        let dir = tempfile::tempdir().unwrap();
        let params = json!({"n": 70_000, "seed": 3, "response_words": [1, 5]});
        let c1 = LocalCtx::new(&dir.path().join("1"), params.clone());
        std::fs::create_dir_all(&c1.out_dir).unwrap();
        let s = run(&c1).unwrap();
        let c2 = LocalCtx::new(&dir.path().join("2"), params);
        std::fs::create_dir_all(&c2.out_dir).unwrap();
        run(&c2).unwrap();
        let (b1, b2) = (std::fs::read(c1.out("pairs")).unwrap(), std::fs::read(c2.out("pairs")).unwrap());
        assert_eq!(b1, b2);
        let share = s["longer_preferred_share"].as_f64().unwrap();
        assert!((share - 0.6).abs() < 0.01, "{share}");
        let t = table::read_table(&c1.out("pairs"), None).unwrap();
        assert_eq!(t.schema(), table::pairs_schema());
        assert_eq!(t.num_rows(), 70_000);
        let wa = table::u32_values(&t, table::WORDS_A).unwrap();
        assert!(wa.values().iter().all(|&w| (1..=5).contains(&w)));
        let bad = Generate.validate(json!({"n": 5, "nope": 1}).as_object().unwrap()).unwrap_err().to_string();
        assert!(bad.contains("nope"), "{bad}");
    }
}
