//! `label` (declared in `rmdistill_stages::label`): scores every pair with the oracle and labels it.
use crate::data_io;
use crate::data_io::Codec;
use crate::rm_scoring::{load_rm, rm_pair_scores};
use arrow::array::{ArrayRef, Float64Array, Int8Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use rmdistill_ml::{RewardModel, tch};
use rmdistill_stages::label::{OracleKind, Params, Ties, parse};
use rmdistill_stages::longer::longer;
use rmdistill_stages::oracle;
use rmdistill_stages::oracle::oracle_score;
use rmdistill_stages::port::*;
use rmdistill_stages::table;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;

pub fn run(ctx: &dyn Ctx) -> StageResult<Value> {
    let (p, oracle_params) = parse(ctx.params())?;
    data_io::torch_setup(ctx, 0);
    let device = data_io::tch_device(ctx);
    // read: the oracle model first, resolved before any work; then this shard's pairs
    let rm = read_oracle(ctx, &p, device)?;
    let pairs = read_pairs(ctx, &p)?;
    // compute: the oracle's scores, the labels they give, the table with them
    let scores = match &rm {
        None => synthetic_scores(&pairs, &oracle_params),
        Some((model, codec)) => rm_scores(ctx, &p, model, codec, &pairs)?,
    };
    let labels = Labels::of(&p, &pairs, &scores);
    let summary = summary(&p, &pairs, &scores, &labels);
    let (n, differ, ties, kept) = (pairs.len(), labels.differ, labels.ties, labels.kept());
    let out = labelled_table(&pairs, scores, labels)?;
    // write
    table::write_table(&ctx.output_path("labelled"), &out, &table::summary_kv("label", &summary))?;
    ctx.progress(2 * n as u64, 2 * n as u64);
    ctx.log(&format!(
        "labelled {n} pairs (shard {}/{}): longer preferred in {:.1}% of {differ} length-differing pairs, {ties} ties \
         ({} dropped)",
        p.shard,
        p.shards,
        100.0 * summary["longer_preferred_share"].as_f64().unwrap_or(0.0),
        n - kept
    ));
    Ok(summary)
}

/// The reward-model oracle's checkpoint (from the `oracle` input or `oracle_path`), loaded; None for the synthetic
/// oracle.
fn read_oracle(ctx: &dyn Ctx, p: &Params, device: tch::Device) -> StageResult<Option<(RewardModel, Codec)>> {
    match p.oracle {
        OracleKind::Synthetic => {
            if !ctx.inputs("oracle").is_empty() {
                return Err(StageError::invalid(
                    "oracle",
                    "the synthetic oracle takes no `oracle` input; use oracle = \"reward_model\"",
                ));
            }
            Ok(None)
        }
        OracleKind::RewardModel => {
            let dir: PathBuf = match (data_io::opt_input(ctx, "oracle")?, p.oracle_path.as_ref()) {
                (Some(_), Some(_)) => {
                    return Err(StageError::invalid(
                        "oracle_path",
                        "give the oracle either as the `oracle` input or as oracle_path, not both",
                    ));
                }
                (Some(i), None) => i.path.clone(),
                (None, Some(_)) => {
                    let d = ctx
                        .external("oracle_path")
                        .ok_or_else(|| StageError::invalid("oracle_path", "not resolved by the runner"))?;
                    // the whole checkpoint labels (its config and tokenizer too), so the whole directory is keyed:
                    // a file in it would key that file alone
                    if !d.is_dir() {
                        return Err(StageError::invalid(
                            "oracle_path",
                            format!(
                                "{}: name the oracle checkpoint's directory (model.safetensors, config.json, \
                                 tokenizer.json), not a file in it: the whole directory is what labels, and what the \
                                 cache key holds",
                                d.display()
                            ),
                        ));
                    }
                    d.to_path_buf()
                }
                (None, None) => {
                    return Err(StageError::invalid(
                        "oracle",
                        "oracle = \"reward_model\" needs the `oracle` input or the oracle_path param",
                    ));
                }
            };
            Ok(Some(load_rm(&dir, "oracle", device)?))
        }
    }
}

/// This shard's rows of the `pairs` input, with the columns the oracle and the summary read.
struct Pairs {
    /// where the rows come from, for messages
    path: PathBuf,
    /// the rows of the whole input table (every shard's)
    rows_in: usize,
    /// this shard's rows, every column
    table: RecordBatch,
    prompts: Vec<String>,
    a: Vec<String>,
    b: Vec<String>,
    ids: Vec<String>,
    /// the input's labels (a human's, or an earlier labelling's): 0, 1 or null
    human: Vec<Option<i64>>,
    tokens_a: Vec<Option<i64>>,
    tokens_b: Vec<Option<i64>>,
}

impl Pairs {
    fn len(&self) -> usize {
        self.table.num_rows()
    }
}

fn read_pairs(ctx: &dyn Ctx, p: &Params) -> StageResult<Pairs> {
    let input = data_io::one_input(ctx, "pairs")?;
    let all = data_io::read_nonempty(&input.path, "pairs", None)?;
    let range = data_io::shard_range(all.num_rows(), p.shard, p.shards);
    let t = all.slice(range.start, range.len());
    let path = &input.path;
    let prompts = data_io::strings(&t, table::PROMPT, path, true)?;
    let a = data_io::strings(&t, table::RESPONSE_A, path, true)?;
    let b = data_io::strings(&t, table::RESPONSE_B, path, true)?;
    let ids = data_io::strings(&t, table::PAIR_ID, path, true)?;
    let human = data_io::opt_i64s(&t, table::LABEL, path)?;
    if let Some((i, x)) = human.iter().enumerate().find_map(|(i, h)| h.filter(|x| *x != 0 && *x != 1).map(|x| (i, x))) {
        return Err(StageError::invalid(
            "label",
            format!("{}: row {} has label {x}, expected 0, 1 or null", path.display(), range.start + i),
        ));
    }
    Ok(Pairs {
        prompts,
        a,
        b,
        ids,
        human,
        tokens_a: data_io::opt_i64s(&t, table::TOKENS_A, path)?,
        tokens_b: data_io::opt_i64s(&t, table::TOKENS_B, path)?,
        path: path.clone(),
        rows_in: all.num_rows(),
        table: t,
    })
}

/// The oracle's score of each response, and each response's length (the input's token counts where it has them).
struct Scores {
    a: Vec<f64>,
    b: Vec<f64>,
    len_a: Vec<u32>,
    len_b: Vec<u32>,
}

/// The synthetic oracle's scores; lengths in words where the input has no token counts.
fn synthetic_scores(pairs: &Pairs, oracle_params: &oracle::OracleParams) -> Scores {
    let n = pairs.len();
    let len =
        |given: &[Option<i64>], text: &[String], i: usize| given[i].map_or(table::word_count(&text[i]), |x| x as u32);
    Scores {
        a: (0..n).map(|i| oracle_score(&pairs.prompts[i], &pairs.a[i], oracle_params)).collect(),
        b: (0..n).map(|i| oracle_score(&pairs.prompts[i], &pairs.b[i], oracle_params)).collect(),
        len_a: (0..n).map(|i| len(&pairs.tokens_a, &pairs.a, i)).collect(),
        len_b: (0..n).map(|i| len(&pairs.tokens_b, &pairs.b, i)).collect(),
    }
}

/// The reward-model oracle's scores; lengths in the oracle's tokens where the input has no token counts.
fn rm_scores(ctx: &dyn Ctx, p: &Params, model: &RewardModel, codec: &Codec, pairs: &Pairs) -> StageResult<Scores> {
    let n = pairs.len();
    let mut codec = codec.clone();
    codec.max_len = model.config.max_positions().map(|m| m as usize);
    if let Some(m) = p.max_len {
        codec = codec.with_max_len(m);
    }
    let pe: Vec<Vec<i64>> = pairs.prompts.iter().map(|x| codec.prompt(x)).collect::<StageResult<_>>()?;
    let ae: Vec<Vec<i64>> = pairs.a.iter().map(|x| codec.response(x)).collect::<StageResult<_>>()?;
    let be: Vec<Vec<i64>> = pairs.b.iter().map(|x| codec.response(x)).collect::<StageResult<_>>()?;
    codec.warn_unknown(ctx, "the pairs labelled");
    let mut done = 0u64;
    let (a, b) = rm_pair_scores(model, &codec, &pe, &ae, &be, p.batch_size, |k| {
        done += 2 * k as u64;
        ctx.progress(done, 2 * n as u64);
    })?;
    codec.warn_truncated(ctx, "the pairs labelled");
    let len =
        |given: &[Option<i64>], enc: &[Vec<i64>], i: usize| given[i].map_or(enc[i].len() as u32 - 1, |x| x as u32);
    Ok(Scores {
        a,
        b,
        len_a: (0..n).map(|i| len(&pairs.tokens_a, &ae, i)).collect(),
        len_b: (0..n).map(|i| len(&pairs.tokens_b, &be, i)).collect(),
    })
}

/// Each pair's label (the higher score's response; a tie by a coin, one bit of the pair id), which response is
/// longer by the margin, whether the row is kept, and the counts of the summary over the kept rows.
struct Labels {
    labels: Vec<Option<i8>>,
    longer: Vec<Option<i8>>,
    keep: Vec<bool>,
    ties: u64,
    differ: u64,
    longer_wins: u64,
    agree: u64,
    human_n: u64,
}

impl Labels {
    fn of(p: &Params, pairs: &Pairs, scores: &Scores) -> Labels {
        let n = pairs.len();
        let mut l = Labels {
            labels: Vec::with_capacity(n),
            longer: Vec::with_capacity(n),
            keep: Vec::with_capacity(n),
            ties: 0,
            differ: 0,
            longer_wins: 0,
            agree: 0,
            human_n: 0,
        };
        for i in 0..n {
            let preference = oracle::compare(scores.a[i], scores.b[i]);
            let label: i8 = match preference {
                std::cmp::Ordering::Greater => 0,
                std::cmp::Ordering::Less => 1,
                std::cmp::Ordering::Equal => {
                    l.ties += 1;
                    (u8::from_str_radix(&pairs.ids[i][..2], 16).unwrap_or(0) & 1) as i8
                }
            };
            l.labels.push(Some(label));
            let lg = longer(scores.len_a[i], scores.len_b[i], p.margin);
            l.longer.push(lg);
            let keep_row = p.ties == Ties::Coin || preference.is_ne();
            l.keep.push(keep_row);
            if !keep_row {
                continue; // a dropped tie counts in no figure but `ties`
            }
            if let Some(x) = lg {
                l.differ += 1;
                l.longer_wins += (x == label) as u64;
            }
            if let Some(h) = pairs.human[i] {
                l.human_n += 1;
                l.agree += (h as i8 == label) as u64;
            }
        }
        l
    }

    /// The rows kept: all but the dropped ties.
    fn kept(&self) -> usize {
        self.keep.iter().filter(|k| **k).count()
    }
}

/// The input's columns (label replaced, token counts filled) + human_label, oracle_a, oracle_b, longer; the kept
/// rows only.
fn labelled_table(pairs: &Pairs, scores: Scores, labels: Labels) -> StageResult<RecordBatch> {
    let t = &pairs.table;
    let schema = t.schema();
    let mut fields: Vec<Field> = vec![];
    let mut cols: Vec<ArrayRef> = vec![];
    // the replaced columns, built once before the loop that places them
    let (label, tokens_a, tokens_b): (ArrayRef, ArrayRef, ArrayRef) = (
        Arc::new(Int8Array::from(labels.labels)),
        Arc::new(UInt32Array::from(scores.len_a)),
        Arc::new(UInt32Array::from(scores.len_b)),
    );
    for (f, c) in schema.fields().iter().zip(t.columns()) {
        let (f, c): (Field, ArrayRef) = match f.name().as_str() {
            table::LABEL => (Field::new(table::LABEL, DataType::Int8, true), label.clone()),
            table::TOKENS_A => (Field::new(table::TOKENS_A, DataType::UInt32, true), tokens_a.clone()),
            table::TOKENS_B => (Field::new(table::TOKENS_B, DataType::UInt32, true), tokens_b.clone()),
            "human_label" | "oracle_a" | "oracle_b" | "longer" => continue, // relabelling a labelled table
            _ => (f.as_ref().clone(), c.clone()),
        };
        fields.push(f);
        cols.push(c);
    }
    let human_col: Vec<Option<i8>> = if schema.index_of("human_label").is_ok() {
        // keep the original human labels of a table labelled before
        let h = data_io::opt_i64s(t, "human_label", &pairs.path)?;
        h.into_iter().map(|x| x.map(|v| v as i8)).collect()
    } else {
        pairs.human.iter().map(|h| h.map(|v| v as i8)).collect()
    };
    fields.push(Field::new("human_label", DataType::Int8, true));
    cols.push(Arc::new(Int8Array::from(human_col)));
    fields.push(Field::new("oracle_a", DataType::Float64, false));
    cols.push(Arc::new(Float64Array::from(scores.a)));
    fields.push(Field::new("oracle_b", DataType::Float64, false));
    cols.push(Arc::new(Float64Array::from(scores.b)));
    fields.push(Field::new("longer", DataType::Int8, true));
    cols.push(Arc::new(Int8Array::from(labels.longer)));
    let out = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?;
    Ok(arrow::compute::filter_record_batch(&out, &arrow::array::BooleanArray::from(labels.keep))?)
}

fn summary(p: &Params, pairs: &Pairs, scores: &Scores, l: &Labels) -> Value {
    let kept = l.kept();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    json!({
        "oracle": match p.oracle { OracleKind::Synthetic => "synthetic", OracleKind::RewardModel => "reward_model" },
        "shard": p.shard,
        "shards": p.shards,
        "rows_in": pairs.rows_in,
        "pairs": kept,
        "ties": l.ties,
        "ties_dropped": pairs.len() - kept,
        "margin": p.margin,
        "length_differing": l.differ,
        "longer_preferred": l.longer_wins,
        "longer_preferred_share": if l.differ > 0 { l.longer_wins as f64 / l.differ as f64 } else { 0.0 },
        "human_labelled": l.human_n,
        "human_agreement": if l.human_n > 0 { Some(l.agree as f64 / l.human_n as f64) } else { None },
        "mean_oracle": (mean(&scores.a) + mean(&scores.b)) / 2.0,
    })
}
