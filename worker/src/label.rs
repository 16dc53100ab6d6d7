//! `label` (declared in `rmdistill_stages::label`): scores every pair with the oracle and labels it.
use crate::data_io;
use crate::rm_scoring::{load_rm, rm_pair_scores};
use arrow::array::{ArrayRef, Float64Array, Int8Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use rmdistill_stages::label::{OracleKind, Ties, parse};
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
    let pairs = data_io::one_input(ctx, "pairs")?;
    // the oracle model, resolved before any work
    let rm = match p.oracle {
        OracleKind::Synthetic => {
            if !ctx.inputs("oracle").is_empty() {
                return Err(StageError::invalid(
                    "oracle",
                    "the synthetic oracle takes no `oracle` input; use oracle = \"reward_model\"",
                ));
            }
            None
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
            Some(load_rm(&dir, "oracle", device)?)
        }
    };
    let all = data_io::read_nonempty(&pairs.path, "pairs", None)?;
    let range = data_io::shard_range(all.num_rows(), p.shard, p.shards);
    let t = all.slice(range.start, range.len());
    let n = t.num_rows();
    let path = &pairs.path;
    let prompts = data_io::strings(&t, table::PROMPT, path, true)?;
    let ra = data_io::strings(&t, table::RESPONSE_A, path, true)?;
    let rb = data_io::strings(&t, table::RESPONSE_B, path, true)?;
    let ids = data_io::strings(&t, table::PAIR_ID, path, true)?;
    let human = data_io::opt_i64s(&t, table::LABEL, path)?;
    if let Some((i, x)) = human.iter().enumerate().find_map(|(i, h)| h.filter(|x| *x != 0 && *x != 1).map(|x| (i, x))) {
        return Err(StageError::invalid(
            "label",
            format!("{}: row {} has label {x}, expected 0, 1 or null", path.display(), range.start + i),
        ));
    }
    let tok_a = data_io::opt_i64s(&t, table::TOKENS_A, path)?;
    let tok_b = data_io::opt_i64s(&t, table::TOKENS_B, path)?;
    let (oa, ob, ta, tb): (Vec<f64>, Vec<f64>, Vec<u32>, Vec<u32>) = match &rm {
        None => {
            let oa = (0..n).map(|i| oracle_score(&prompts[i], &ra[i], &oracle_params)).collect();
            let ob = (0..n).map(|i| oracle_score(&prompts[i], &rb[i], &oracle_params)).collect();
            let ta = (0..n).map(|i| tok_a[i].map_or(table::word_count(&ra[i]), |x| x as u32)).collect();
            let tb = (0..n).map(|i| tok_b[i].map_or(table::word_count(&rb[i]), |x| x as u32)).collect();
            (oa, ob, ta, tb)
        }
        Some((model, codec)) => {
            let mut codec = codec.clone();
            codec.max_len = model.config.max_positions().map(|m| m as usize);
            if let Some(m) = p.max_len {
                codec = codec.with_max_len(m);
            }
            let pe: Vec<Vec<i64>> = prompts.iter().map(|x| codec.prompt(x)).collect::<StageResult<_>>()?;
            let ae: Vec<Vec<i64>> = ra.iter().map(|x| codec.response(x)).collect::<StageResult<_>>()?;
            let be: Vec<Vec<i64>> = rb.iter().map(|x| codec.response(x)).collect::<StageResult<_>>()?;
            codec.warn_unknown(ctx, "the pairs labelled");
            let mut done = 0u64;
            let (oa, ob) = rm_pair_scores(model, &codec, &pe, &ae, &be, p.batch_size, |k| {
                done += 2 * k as u64;
                ctx.progress(done, 2 * n as u64);
            })?;
            codec.warn_truncated(ctx, "the pairs labelled");
            let ta = (0..n).map(|i| tok_a[i].map_or(ae[i].len() as u32 - 1, |x| x as u32)).collect();
            let tb = (0..n).map(|i| tok_b[i].map_or(be[i].len() as u32 - 1, |x| x as u32)).collect();
            (oa, ob, ta, tb)
        }
    };
    let mut ties = 0u64;
    let (mut differ, mut longer_wins, mut agree, mut human_n) = (0u64, 0u64, 0u64, 0u64);
    let mut labels = Vec::with_capacity(n);
    let mut longer_col = Vec::with_capacity(n);
    let mut keep = Vec::with_capacity(n);
    for i in 0..n {
        let preference = oracle::compare(oa[i], ob[i]);
        let l: i8 = match preference {
            std::cmp::Ordering::Greater => 0,
            std::cmp::Ordering::Less => 1,
            std::cmp::Ordering::Equal => {
                ties += 1;
                (u8::from_str_radix(&ids[i][..2], 16).unwrap_or(0) & 1) as i8
            }
        };
        labels.push(Some(l));
        let lg = longer(ta[i], tb[i], p.margin);
        longer_col.push(lg);
        let keep_row = p.ties == Ties::Coin || preference.is_ne();
        keep.push(keep_row);
        if !keep_row {
            continue; // a dropped tie counts in no figure but `ties`
        }
        if let Some(x) = lg {
            differ += 1;
            longer_wins += (x == l) as u64;
        }
        if let Some(h) = human[i] {
            human_n += 1;
            agree += (h as i8 == l) as u64;
        }
    }
    // columns: input's (label replaced, tokens filled) + human_label, oracle_a, oracle_b, longer
    let schema = t.schema();
    let mut fields: Vec<Field> = vec![];
    let mut cols: Vec<ArrayRef> = vec![];
    for (f, c) in schema.fields().iter().zip(t.columns()) {
        let (f, c): (Field, ArrayRef) = match f.name().as_str() {
            table::LABEL => (Field::new(table::LABEL, DataType::Int8, true), Arc::new(Int8Array::from(labels.clone()))),
            table::TOKENS_A => {
                (Field::new(table::TOKENS_A, DataType::UInt32, true), Arc::new(UInt32Array::from(ta.clone())))
            }
            table::TOKENS_B => {
                (Field::new(table::TOKENS_B, DataType::UInt32, true), Arc::new(UInt32Array::from(tb.clone())))
            }
            "human_label" | "oracle_a" | "oracle_b" | "longer" => continue, // relabelling a labelled table
            _ => (f.as_ref().clone(), c.clone()),
        };
        fields.push(f);
        cols.push(c);
    }
    let had_human = schema.index_of("human_label").is_ok();
    let human_col: Vec<Option<i8>> = if had_human {
        // keep the original human labels of a table labelled before
        let h = data_io::opt_i64s(&t, "human_label", path)?;
        h.into_iter().map(|x| x.map(|v| v as i8)).collect()
    } else {
        human.iter().map(|h| h.map(|v| v as i8)).collect()
    };
    fields.push(Field::new("human_label", DataType::Int8, true));
    cols.push(Arc::new(Int8Array::from(human_col)));
    fields.push(Field::new("oracle_a", DataType::Float64, false));
    cols.push(Arc::new(Float64Array::from(oa.clone())));
    fields.push(Field::new("oracle_b", DataType::Float64, false));
    cols.push(Arc::new(Float64Array::from(ob.clone())));
    fields.push(Field::new("longer", DataType::Int8, true));
    cols.push(Arc::new(Int8Array::from(longer_col)));
    let out = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?;
    let out = arrow::compute::filter_record_batch(&out, &arrow::array::BooleanArray::from(keep))?;
    let kept = out.num_rows();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let summary = json!({
        "oracle": match p.oracle { OracleKind::Synthetic => "synthetic", OracleKind::RewardModel => "reward_model" },
        "shard": p.shard,
        "shards": p.shards,
        "rows_in": all.num_rows(),
        "pairs": kept,
        "ties": ties,
        "ties_dropped": n - kept,
        "margin": p.margin,
        "length_differing": differ,
        "longer_preferred": longer_wins,
        "longer_preferred_share": if differ > 0 { longer_wins as f64 / differ as f64 } else { 0.0 },
        "human_labelled": human_n,
        "human_agreement": if human_n > 0 { Some(agree as f64 / human_n as f64) } else { None },
        "mean_oracle": (mean(&oa) + mean(&ob)) / 2.0,
    });
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
