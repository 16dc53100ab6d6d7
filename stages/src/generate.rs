//! `generate`: synthetic labelled pairs in the normalised pairs table (see [`crate::table`]), for tests and
//! benchmarks that need no input file.
//!
//! Text is made of pseudo-words (two consonant–vowel syllables, 4,900 of them). Each pair gets a prompt and two
//! responses whose word counts are uniform in the `prompt_words` / `response_words` ranges (inclusive `[min, max]`).
//! When the two responses' word counts differ, the longer one is preferred with probability `longer_preferred`;
//! when they are equal, the label is a fair coin. Rows are generated in chunks of 65,536, chunk `c` from
//! ChaCha8(`seed`, stream `c`), so the output is the same for any number of threads.
//!
//! The table is written as it is generated, a few chunks at a time, in row groups of at most 1,048,576 rows and
//! [`GROUP_BYTES`] of text, so memory stays bounded however long the texts. Its size is bounded too: the stages
//! that read it hold a text column as one Arrow string array (at most 2 GiB), so parameters whose prompt or response
//! column would come to more than [`MAX_COLUMN_BYTES`] (`n` × the mean bytes of a text) are refused, naming them.
use crate::port::*;
use crate::table::{self, PairRow, PairsBuilder};
use arrow::array::{Array, AsArray, RecordBatch};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::Deserialize;
use serde_json::{Map, Value, json};

pub struct Generate;

const CHUNK: u64 = 1 << 16;
/// The longest prompt or response, in words (each at most 5 bytes with its space).
const MAX_WORDS: u32 = 10_000;
/// The most bytes a text column of the table may come to: the stages that read the table hold a column as one
/// Arrow string array, whose 32-bit offsets address at most 2 GiB; 1/16 of that is left for the texts' chance
/// variation about their mean (a few MB at the most).
pub const MAX_COLUMN_BYTES: u64 = 15 << 27;
/// The most bytes of text in one row group (defaults: about 190 MB in a full group of 1,048,576 rows).
pub const GROUP_BYTES: usize = 256 << 20;

/// How the table is cut up as it is written (tests make these small).
#[derive(Clone, Copy)]
struct Sizes {
    /// A chunk is generated in pieces of about this many bytes of text, which row groups are cut from.
    piece: usize,
    /// The most bytes of text in one row group (a single piece may exceed it).
    group: usize,
    /// About the most bytes of text generated ahead of the writer (whole chunks at once, in parallel), and of row
    /// groups complete but not yet written.
    window: u64,
}

const SIZES: Sizes = Sizes { piece: 32 << 20, group: GROUP_BYTES, window: 512 << 20 };

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Number of pairs to generate (1 ..= 4294967295, and at most what keeps every text column within 1.875 GiB:
    /// n × the mean bytes of a prompt or a response, 5 per word less one).
    #[schemars(range(min = 1))]
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
    check_size(&p)?;
    Ok(p)
}

/// The mean bytes of a text of `[lo, hi]` words (each word 4 letters, a space between two), times 2.
fn mean_text_bytes_x2([lo, hi]: [u32; 2]) -> u64 {
    5 * (lo as u64 + hi as u64) - 2
}

/// The mean bytes of text in one row: `pair_id`, prompt and both responses.
fn mean_row_bytes(p: &Params) -> u64 {
    16 + (mean_text_bytes_x2(p.prompt_words) + 2 * mean_text_bytes_x2(p.response_words)).div_ceil(2)
}

/// Refuses parameters whose table would have a text column of more than [`MAX_COLUMN_BYTES`] (by the mean size of
/// its texts), naming them, rather than failing on the way or leaving a table no stage can read.
fn check_size(p: &Params) -> StageResult<()> {
    let limit = MAX_COLUMN_BYTES;
    let (pw, rw) = (p.prompt_words, p.response_words);
    let columns = [
        ("prompt_words", "a prompt column", Some(pw), mean_text_bytes_x2(pw), "a prompt"),
        ("response_words", "response_a and response_b columns", Some(rw), mean_text_bytes_x2(rw), "a response"),
        ("n", "a pair_id column", None, 32, "a pair"),
    ];
    for (param, column, words, x2, per) in columns {
        let bytes = (p.n as u128 * x2 as u128).div_ceil(2);
        if bytes <= limit as u128 {
            continue;
        }
        let most = limit as u128 * 2 / x2 as u128;
        let (with, lower) = match words {
            Some([lo, hi]) => (
                format!(" with {param} = [{lo}, {hi}]"),
                format!("lower n (to at most {most} with these words) or {param}"),
            ),
            None => (String::new(), format!("lower n to at most {most}")),
        };
        let each = if param == "response_words" { " each" } else { "" };
        return Err(StageError::invalid(
            param,
            format!(
                "n = {n} pairs{with} (about {mean} bytes {per}) make {column} of about {bytes} bytes{each}, more \
                 than the {limit} bytes (1.875 GiB) a text column may hold: the stages that read the table hold a \
                 column as one Arrow string array, which holds at most 2 GiB; {lower}",
                n = p.n,
                mean = x2.div_ceil(2),
            ),
        ));
    }
    Ok(())
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

/// The rows of one chunk, `[c·CHUNK, min((c+1)·CHUNK, n))`, from ChaCha8(`seed`, stream `c`), handed out in
/// pieces of about [`Sizes::piece`] bytes of text; and the chunk's counts of length-differing pairs and of those
/// where the longer response is preferred.
struct ChunkRows<'a> {
    p: &'a Params,
    piece_bytes: usize,
    rng: ChaCha8Rng,
    row: u64,
    end: u64,
    differing: u64,
    longer: u64,
}

impl<'a> ChunkRows<'a> {
    fn new(p: &'a Params, c: u64, piece_bytes: usize) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
        rng.set_stream(c);
        let start = c * CHUNK;
        ChunkRows { p, piece_bytes, rng, row: start, end: (start + CHUNK).min(p.n), differing: 0, longer: 0 }
    }

    /// The next rows of the chunk, as many as make about `piece_bytes` of text (at least one); `None` at its end.
    fn next_piece(&mut self) -> Option<RecordBatch> {
        if self.row >= self.end {
            return None;
        }
        let p = self.p;
        let rows_left = (self.end - self.row) as usize;
        // A capacity hint only (bounded, so that long texts grow the buffer instead of reserving it all at once).
        let avg = |[lo, hi]: [u32; 2]| (lo as usize + hi as usize) / 2 * 5;
        let hint = rows_left.saturating_mul(avg(p.prompt_words) + 2 * avg(p.response_words)).saturating_mul(2);
        let mut b = PairsBuilder::with_capacity(rows_left, hint.min(self.piece_bytes * 2));
        let (mut prompt, mut ra, mut rb) = (String::new(), String::new(), String::new());
        let mut bytes = 0;
        while self.row < self.end && bytes < self.piece_bytes {
            let rng = &mut self.rng;
            text(rng, &mut prompt, p.prompt_words);
            let wa = text(rng, &mut ra, p.response_words);
            let wb = text(rng, &mut rb, p.response_words);
            let u = table::uniform_f64(rng);
            let label: i8 = if wa == wb {
                (u < 0.5) as i8
            } else {
                self.differing += 1;
                let prefer_longer = u < p.longer_preferred;
                self.longer += prefer_longer as u64;
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
                source_row: self.row as u32,
            });
            bytes += id.len() + prompt.len() + ra.len() + rb.len();
            self.row += 1;
        }
        Some(b.finish())
    }
}

/// Generates the pieces of chunks `[c0, c1)`, chunks in parallel; with the chunks' counts.
fn chunks(p: &Params, c0: u64, c1: u64, piece_bytes: usize) -> Vec<(Vec<RecordBatch>, u64, u64)> {
    (c0..c1)
        .into_par_iter()
        .map(|c| {
            let mut rows = ChunkRows::new(p, c, piece_bytes);
            let pieces = std::iter::from_fn(|| rows.next_piece()).collect();
            (pieces, rows.differing, rows.longer)
        })
        .collect()
}

/// The stage's summary from the counts.
fn summary(p: &Params, differing: u64, longer: u64) -> Value {
    json!({
        "pairs": p.n,
        "seed": p.seed,
        "longer_preferred_param": p.longer_preferred,
        "length_differing_pairs": differing,
        "longer_preferred_share": if differing > 0 { longer as f64 / differing as f64 } else { 0.0 },
    })
}

/// Generates the whole table in memory (the stage writes it as it goes; benchmarks and tests may use this).
pub fn generate(params: &Map<String, Value>) -> StageResult<(RecordBatch, Value)> {
    let p = parse(params)?;
    let parts = chunks(&p, 0, p.n.div_ceil(CHUNK), SIZES.piece);
    let (differing, longer) = parts.iter().fold((0, 0), |(d, l), x| (d + x.1, l + x.2));
    let batches: Vec<RecordBatch> = parts.into_iter().flat_map(|x| x.0).collect();
    let batch = arrow::compute::concat_batches(&table::pairs_schema(), &batches)?;
    Ok((batch, summary(&p, differing, longer)))
}

/// Bytes of text (all string columns) in `batch`.
fn text_bytes(batch: &RecordBatch) -> [usize; 4] {
    let mut out = [0; 4];
    let strings = batch.columns().iter().filter_map(|c| c.as_string_opt::<i32>());
    for (o, s) in out.iter_mut().zip(strings) {
        let offsets = s.value_offsets();
        *o = (offsets[s.len()] - offsets[0]) as usize;
    }
    out
}

/// Cuts the rows handed to it, in order, into row groups of at most [`table::ROW_GROUP_ROWS`] rows and
/// [`Sizes::group`] bytes of text, and writes them a few at a time (every column of them encoded at once).
struct Groups {
    w: table::GroupWriter,
    sizes: Sizes,
    /// The row group being filled: its pieces, rows and bytes.
    group: Vec<RecordBatch>,
    rows: usize,
    bytes: usize,
    /// Row groups complete but not written yet, and their bytes.
    ready: Vec<RecordBatch>,
    ready_bytes: usize,
    /// Bytes of each string column so far (pair_id, prompt, response_a, response_b).
    columns: [usize; 4],
}

impl Groups {
    fn push(&mut self, mut piece: RecordBatch) -> StageResult<()> {
        while piece.num_rows() > 0 {
            // as many of its rows as the group has room for, if their bytes fit too (else the group is complete)
            let head = piece.slice(0, (table::ROW_GROUP_ROWS - self.rows).min(piece.num_rows()));
            let cols = text_bytes(&head);
            let bytes: usize = cols.iter().sum();
            if self.rows > 0 && self.bytes + bytes > self.sizes.group {
                self.close()?;
                continue;
            }
            piece = piece.slice(head.num_rows(), piece.num_rows() - head.num_rows());
            for (total, b) in self.columns.iter_mut().zip(cols) {
                *total += b;
            }
            self.rows += head.num_rows();
            self.bytes += bytes;
            self.group.push(head);
            if self.rows == table::ROW_GROUP_ROWS {
                self.close()?;
            }
        }
        Ok(())
    }

    fn close(&mut self) -> StageResult<()> {
        if self.group.is_empty() {
            return Ok(());
        }
        let group = arrow::compute::concat_batches(&table::pairs_schema(), &self.group)?;
        self.group.clear();
        self.ready.push(group);
        self.ready_bytes += std::mem::take(&mut self.bytes);
        self.rows = 0;
        if self.ready.len() >= 2 * rayon::current_num_threads() || self.ready_bytes as u64 >= self.sizes.window {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> StageResult<()> {
        self.ready_bytes = 0;
        self.w.write_groups(std::mem::take(&mut self.ready))
    }
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
    let p = parse(ctx.params())?;
    write(&p, &ctx.output_path("pairs"), SIZES, |done| ctx.progress(done, p.n))
}

/// Generates the table of `p` into `path`, a few chunks at a time, cut up by `sizes`; returns the summary.
fn write(p: &Params, path: &std::path::Path, sizes: Sizes, progress: impl Fn(u64)) -> StageResult<Value> {
    let mut groups = Groups {
        w: table::GroupWriter::create(path, table::pairs_schema())?,
        sizes,
        group: Vec::new(),
        rows: 0,
        bytes: 0,
        ready: Vec::new(),
        ready_bytes: 0,
        columns: [0; 4],
    };
    let n_chunks = p.n.div_ceil(CHUNK);
    // as many chunks at once as make about `sizes.window` of text (one chunk of long texts is streamed piece by
    // piece)
    let per_chunk = mean_row_bytes(p).saturating_mul(CHUNK).max(1);
    let window = (sizes.window / per_chunk).clamp(1, 16);
    let (mut differing, mut longer) = (0, 0);
    let mut c = 0;
    while c < n_chunks {
        let c1 = (c + window).min(n_chunks);
        if window == 1 {
            let mut rows = ChunkRows::new(p, c, sizes.piece);
            while let Some(piece) = rows.next_piece() {
                groups.push(piece)?;
            }
            (differing, longer) = (differing + rows.differing, longer + rows.longer);
        } else {
            for (pieces, d, l) in chunks(p, c, c1, sizes.piece) {
                for piece in pieces {
                    groups.push(piece)?;
                }
                (differing, longer) = (differing + d, longer + l);
            }
        }
        c = c1;
        progress((c * CHUNK).min(p.n));
    }
    groups.close()?;
    groups.flush()?;
    // the mean size was checked; the texts' chance variation about it is far below the margin left, but a table
    // that no stage could read is never handed on
    if let Some((name, bytes)) = ["pair_id", "prompt", "response_a", "response_b"]
        .into_iter()
        .zip(groups.columns)
        .find(|(_, b)| *b as u64 > i32::MAX as u64)
    {
        return Err(StageError::failed(format!(
            "the {name} column came to {bytes} bytes, more than the 2 GiB a text column may hold"
        )));
    }
    let summary = summary(p, differing, longer);
    groups.w.finish(&table::summary_kv("generate", &summary))?;
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

    /// The table as the stage wrote it, one batch per row group, and the bytes of text of each.
    fn row_groups(path: &std::path::Path) -> Vec<(RecordBatch, usize)> {
        let b =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
                .unwrap();
        let groups = b.metadata().num_row_groups();
        (0..groups)
            .map(|g| {
                let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                    std::fs::File::open(path).unwrap(),
                )
                .unwrap()
                .with_row_groups(vec![g])
                .with_batch_size(1 << 21)
                .build()
                .unwrap();
                let batches: Vec<RecordBatch> = r.collect::<Result<_, _>>().unwrap();
                let batch = arrow::compute::concat_batches(&table::pairs_schema(), &batches).unwrap();
                let bytes = text_bytes(&batch).iter().sum();
                (batch, bytes)
            })
            .collect()
    }

    #[test]
    fn long_texts_are_written_in_row_groups_bounded_in_bytes_whatever_the_threads() {
        let dir = tempfile::tempdir().unwrap();
        // long rows (one chunk is streamed piece by piece), and short rows (several chunks at once)
        for (params, sizes, min_groups, window) in [
            (
                json!({"n": 3000, "seed": 2, "prompt_words": [200, 400], "response_words": [50, 100]}),
                Sizes { piece: 64 << 10, group: 1 << 20, window: 2 << 20 },
                7,
                1,
            ),
            (
                json!({"n": 200_000, "seed": 5, "prompt_words": [1, 3], "response_words": [1, 2]}),
                Sizes { piece: 256 << 10, group: 1 << 20, window: 8 << 20 },
                8,
                3,
            ),
        ] {
            let p = parse(params.as_object().unwrap()).unwrap();
            // chunks at once: one (streamed piece by piece), or several (in parallel)
            assert_eq!((sizes.window / (mean_row_bytes(&p) * CHUNK)).max(1), window);
            let (whole, summary) = generate(params.as_object().unwrap()).unwrap();
            let mut written = Vec::new();
            for threads in [1, 4] {
                let out = dir.path().join(format!("{threads}.parquet"));
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                let s = pool.install(|| write(&p, &out, sizes, |_| {})).unwrap();
                assert_eq!(s, summary);
                written.push(std::fs::read(&out).unwrap());
                let groups = row_groups(&out);
                assert!(groups.len() >= min_groups, "{params}: {} row groups", groups.len());
                for (_, bytes) in &groups {
                    assert!(*bytes <= sizes.group, "{params}: a row group of {bytes} bytes");
                }
                let batches: Vec<RecordBatch> = groups.into_iter().map(|g| g.0).collect();
                let read = arrow::compute::concat_batches(&table::pairs_schema(), &batches).unwrap();
                assert_eq!(read, whole, "{params}: the rows differ from the table made in memory");
            }
            assert_eq!(written[0], written[1], "{params}: the bytes depend on the number of threads");
        }
    }

    #[test]
    fn parameters_whose_table_no_stage_could_read_are_refused_naming_them() {
        let check = |v: Value| Generate.validate(v.as_object().unwrap()).map_err(|e| e.to_string());
        // the reviewer's: 50,000 prompts of 10,000 words are 2.5 GB in one column (arrow panicked past 2 GiB)
        let err = check(json!({"n": 50_000, "prompt_words": [10_000, 10_000], "response_words": [1, 1]})).unwrap_err();
        assert_eq!(
            err,
            "prompt_words: n = 50000 pairs with prompt_words = [10000, 10000] (about 49999 bytes a prompt) make a \
             prompt column of about 2499950000 bytes, more than the 2013265920 bytes (1.875 GiB) a text column may \
             hold: the stages that read the table hold a column as one Arrow string array, which holds at most 2 GiB; \
             lower n (to at most 40266 with these words) or prompt_words"
        );
        // the bound is exact, by the mean size
        assert!(check(json!({"n": 40_266, "prompt_words": [10_000, 10_000]})).is_ok());
        assert!(check(json!({"n": 40_267, "prompt_words": [10_000, 10_000]})).is_err());
        let err = check(json!({"n": 1_000_000, "response_words": [1_000, 2_000]})).unwrap_err();
        assert!(
            err.starts_with(
                "response_words: n = 1000000 pairs with response_words = [1000, 2000] (about 7499 bytes a \
                 response) make response_a and response_b columns of about 7499000000 bytes each"
            ),
            "{err}"
        );
        let err = check(json!({"n": 4_294_967_295u64})).unwrap_err();
        assert!(err.starts_with("prompt_words: n = 4294967295 pairs with prompt_words = [8, 24]"), "{err}");
        let err = check(json!({"n": 200_000_000, "prompt_words": [1, 1], "response_words": [1, 1]})).unwrap_err();
        assert!(
            err.starts_with("n: n = 200000000 pairs (about 16 bytes a pair) make a pair_id column of about 3200000000")
                && err.ends_with("lower n to at most 125829120"),
            "{err}"
        );
        // the sizes the pipeline and its benchmarks use pass
        assert!(check(json!({"n": 10_000_000, "prompt_words": [3, 8], "response_words": [1, 12]})).is_ok());
        assert!(check(json!({"n": 15_000_000})).is_ok());
    }
}
