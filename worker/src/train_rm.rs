//! `train_rm` (declared in `rmdistill_stages::train_rm`): trains the Bradley–Terry reward model.
use crate::data_io::{self, Codec};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rmdistill_ml::tch;
use rmdistill_ml::{OptimConfig, RewardModel, Schedule, Trainer};
use rmdistill_stages::longer::longer;
use rmdistill_stages::oracle;
use rmdistill_stages::port::*;
use rmdistill_stages::table;
use rmdistill_stages::train_rm::parse;
use serde_json::{Value, json};
use std::path::Path;
use tch::Tensor;

/// Encoded labelled pairs: (prompt, chosen, rejected) ids, and whether the oracle scored the pair a tie (its label a
/// coin; false where the table has no `oracle_a`/`oracle_b`).
struct Pairs {
    ids: Vec<String>,
    prompt: Vec<Vec<i64>>,
    chosen: Vec<Vec<i64>>,
    rejected: Vec<Vec<i64>>,
    oracle_tie: Vec<bool>,
}

fn load_pairs(path: &Path, slot: &str, label_col: &str, codec: &Codec) -> StageResult<Pairs> {
    let t = data_io::read_nonempty(path, slot, None)?;
    if t.schema().index_of(label_col).is_err() {
        let have: Vec<String> = t.schema().fields().iter().map(|f| f.name().clone()).collect();
        return Err(StageError::invalid(
            label_col,
            format!("{}: missing label column `{label_col}` (the table has: {})", path.display(), have.join(", ")),
        ));
    }
    let prompts = data_io::strings(&t, table::PROMPT, path, true)?;
    let a = data_io::strings(&t, table::RESPONSE_A, path, true)?;
    let b = data_io::strings(&t, table::RESPONSE_B, path, true)?;
    let ids = data_io::strings(&t, table::PAIR_ID, path, true)?;
    let labels = data_io::labels(&t, label_col, path)?;
    let (oa, ob) = (data_io::opt_f64s(&t, "oracle_a"), data_io::opt_f64s(&t, "oracle_b"));
    let oracle_tie = oa
        .iter()
        .zip(&ob)
        .map(|(a, b)| matches!((a, b), (Some(a), Some(b)) if oracle::compare(*a, *b).is_eq()))
        .collect();
    let mut out = Pairs { ids, prompt: vec![], chosen: vec![], rejected: vec![], oracle_tie };
    for i in 0..t.num_rows() {
        let (w, l) = if labels[i] == 0 { (&a[i], &b[i]) } else { (&b[i], &a[i]) };
        out.prompt.push(codec.prompt(&prompts[i])?);
        out.chosen.push(codec.response(w)?);
        out.rejected.push(codec.response(l)?);
    }
    Ok(out)
}

/// (chosen − rejected) reward margins of the given rows.
fn margins(model: &RewardModel, codec: &Codec, d: &Pairs, rows: &[usize], batch: usize) -> StageResult<Vec<f64>> {
    let mut out = Vec::with_capacity(rows.len());
    for r in data_io::chunks(rows.len(), batch) {
        let idx = &rows[r];
        let ps: Vec<&[i64]> = idx.iter().chain(idx).map(|&i| d.prompt[i].as_slice()).collect();
        let rs: Vec<&[i64]> =
            idx.iter().map(|&i| d.chosen[i].as_slice()).chain(idx.iter().map(|&i| d.rejected[i].as_slice())).collect();
        let b = codec.batch(&ps, &rs, model.device())?;
        let s = tch::no_grad(|| rmdistill_ml::with_autocast(model.device(), || model.rewards(&b)));
        let v = data_io::to_f64s(&s)?;
        let n = idx.len();
        out.extend((0..n).map(|k| v[k] - v[n + k]));
    }
    Ok(out)
}

/// How a reward model agrees with the labels of some rows.
#[derive(Debug, Clone, Copy, Default)]
struct Agreement {
    /// Share of rows where the model prefers the labelled-chosen response.
    accuracy: Option<f64>,
    /// The same on rows whose lengths differ by less than the margin (length alone cannot decide them).
    within_margin_accuracy: Option<f64>,
    within_margin: usize,
    /// Share of length-differing rows where the model prefers the longer response.
    length_sensitivity: Option<f64>,
    length_differing: usize,
}

/// Agreement of a model with the labels on rows of `d`.
fn evaluate(model: &RewardModel, codec: &Codec, d: &Pairs, rows: &[usize], margin: f64) -> StageResult<Agreement> {
    if rows.is_empty() {
        return Ok(Agreement::default());
    }
    let m = margins(model, codec, d, rows, 128)?;
    let share = |hits: usize, n: usize| (n > 0).then(|| hits as f64 / n as f64);
    let acc = m.iter().filter(|&&x| x > 0.0).count();
    let (mut differ, mut longer_pref, mut within, mut within_hit) = (0usize, 0usize, 0usize, 0usize);
    for (k, &i) in rows.iter().enumerate() {
        // lengths without the EOS; the model prefers the chosen one when m > 0
        let (lw, ll) = (d.chosen[i].len() as u32 - 1, d.rejected[i].len() as u32 - 1);
        match longer(lw, ll, margin) {
            // x = 0: the chosen one is longer
            Some(x) => {
                differ += 1;
                longer_pref += ((x == 0) == (m[k] > 0.0)) as usize;
            }
            None => {
                within += 1;
                within_hit += (m[k] > 0.0) as usize;
            }
        }
    }
    Ok(Agreement {
        accuracy: share(acc, m.len()),
        within_margin_accuracy: share(within_hit, within),
        within_margin: within,
        length_sensitivity: share(longer_pref, differ),
        length_differing: differ,
    })
}

fn held_out(id: &str, seed: u64, frac: f64) -> bool {
    let h = blake3::hash(format!("{seed}\0{id}").as_bytes());
    let x = u64::from_le_bytes(h.as_bytes()[..8].try_into().unwrap());
    (x as f64 / u64::MAX as f64) < frac
}

pub fn run(ctx: &dyn Ctx) -> StageResult<Value> {
    let p = parse(ctx.params())?;
    let t0 = std::time::Instant::now();
    data_io::torch_setup(ctx, p.seed);
    let device = data_io::tch_device(ctx);
    let base = data_io::one_input(ctx, "base")?;
    data_io::check_checkpoint(&base.path, "base")?;
    let mut codec = Codec::load(&base.path, "base")?;
    let model =
        RewardModel::load(&base.path, device, true).map_err(|e| StageError::invalid("base", format!("{e:#}")))?;
    codec.check_vocab(model.config.vocab_size(), "base")?;
    codec.max_len = p.max_len.or(model.config.max_positions().map(|m| m as usize));
    let data = data_io::one_input(ctx, "data")?;
    let d = load_pairs(&data.path, "data", &p.label_column, &codec)?;
    // read before training: a bad `eval` table fails the node at once, not after the work
    let eval = data_io::opt_input(ctx, "eval")?.map(|e| load_pairs(&e.path, "eval", "label", &codec)).transpose()?;
    codec.warn_unknown(ctx, "the pairs");
    let (mut train, mut held): (Vec<usize>, Vec<usize>) = (vec![], vec![]);
    for i in 0..d.ids.len() {
        if held_out(&d.ids[i], p.seed, p.held_out) {
            held.push(i);
        } else {
            train.push(i);
        }
    }
    if train.is_empty() {
        return Err(StageError::invalid(
            "held_out",
            format!("all {} rows were held out: nothing to train on", d.ids.len()),
        ));
    }
    let data_longer = {
        let (mut differ, mut lp) = (0usize, 0usize);
        for &i in &train {
            if let Some(x) = longer(d.chosen[i].len() as u32 - 1, d.rejected[i].len() as u32 - 1, p.margin) {
                differ += 1;
                lp += (x == 0) as usize;
            }
        }
        if differ > 0 { Some(lp as f64 / differ as f64) } else { None }
    };
    let bs = p.batch_size.min(train.len());
    let steps = p.steps.unwrap_or_else(|| ((p.epochs * train.len() as f64) / bs as f64).ceil().max(1.0) as usize);
    // what the documented limits changed in a value the user set, said where the run shows it (a default that
    // adapts to a small input is not news)
    if p.batch_size > train.len() && ctx.params().contains_key("batch_size") {
        ctx.warn(&format!(
            "batch_size {} is more than the {} training pairs: each step takes all of them",
            p.batch_size,
            train.len()
        ));
    }
    if p.warmup_steps > steps / 2 && ctx.params().contains_key("warmup_steps") {
        ctx.warn(&format!(
            "warmup_steps {} is more than half the {steps} steps: {} are used (at most half)",
            p.warmup_steps,
            steps / 2
        ));
    }
    let cfg = OptimConfig {
        lr: p.lr,
        weight_decay: p.weight_decay,
        warmup_steps: p.warmup_steps.min(steps / 2),
        total_steps: steps,
        schedule: Schedule::Linear,
        min_lr_ratio: 0.0,
        ..Default::default()
    };
    let mut trainer = Trainer::new(&model.vs, cfg)?;
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    let mut order = train.clone();
    let mut pos = order.len();
    for step in 0..steps {
        let mut idx = Vec::with_capacity(bs);
        while idx.len() < bs {
            if pos == order.len() {
                let n = order.len();
                table::partial_shuffle(&mut rng, &mut order, n);
                pos = 0;
            }
            idx.push(order[pos]);
            pos += 1;
        }
        let ps: Vec<&[i64]> = idx.iter().chain(&idx).map(|&i| d.prompt[i].as_slice()).collect();
        let rs: Vec<&[i64]> =
            idx.iter().map(|&i| d.chosen[i].as_slice()).chain(idx.iter().map(|&i| d.rejected[i].as_slice())).collect();
        let b = codec.batch(&ps, &rs, device)?;
        let r = rmdistill_ml::with_autocast(device, || model.rewards(&b));
        let n = idx.len() as i64;
        let m: Tensor = r.narrow(0, 0, n) - r.narrow(0, n, n);
        let loss = -m.log_sigmoid().mean(tch::Kind::Float);
        let acc =
            f64::try_from(m.gt(0.0).to_kind(tch::Kind::Float).mean(tch::Kind::Float)).map_err(anyhow::Error::from)?;
        let mm = f64::try_from(m.detach().mean(tch::Kind::Float)).map_err(anyhow::Error::from)?;
        trainer.backward(&loss, &[("accuracy", acc), ("margin", mm)])?;
        ctx.progress(step as u64 + 1, steps as u64);
    }
    let out_dir = ctx.output_path("model");
    std::fs::create_dir_all(&out_dir)?;
    model.save(&out_dir, Some(&base.path))?;
    let held_agreement = evaluate(&model, &codec, &d, &held, p.margin)?;
    let (held_acc, sens, held_differ) =
        (held_agreement.accuracy, held_agreement.length_sensitivity, held_agreement.length_differing);
    let sample: Vec<usize> = train.iter().copied().take(512).collect();
    let train_acc = evaluate(&model, &codec, &d, &sample, p.margin)?.accuracy;
    let (ev, eval_n, eval_ties) = match &eval {
        Some(ed) => {
            // against the oracle: only the pairs it decides (a tie's label is a coin no model can be scored on)
            let rows: Vec<usize> = (0..ed.ids.len()).filter(|&i| !ed.oracle_tie[i]).collect();
            (evaluate(&model, &codec, ed, &rows, p.margin)?, rows.len(), ed.ids.len() - rows.len())
        }
        None => (Agreement::default(), 0, 0),
    };
    let (eval_acc, eval_sens) = (ev.accuracy, ev.length_sensitivity);
    let h = &trainer.history;
    let summary = json!({
        "train_pairs": train.len(),
        "held_out_pairs": held.len(),
        "held_out_length_differing": held_differ,
        "steps": steps,
        "parameters": model.vs.trainable_variables().iter().map(|t| t.numel()).sum::<usize>(),
        "first_loss": h.first().map(|r| r.loss),
        "final_loss": h.last().map(|r| r.loss),
        "train_accuracy": train_acc,
        "held_out_accuracy": held_acc,
        "length_sensitivity": sens,
        "data_longer_preferred_share": data_longer,
        "eval_pairs": eval_n,
        "eval_ties_left_out": eval_ties,
        "eval_accuracy": eval_acc,
        "eval_accuracy_within_margin": ev.within_margin_accuracy,
        "eval_within_margin_pairs": ev.within_margin,
        "eval_length_sensitivity": eval_sens,
        "eval_length_differing_pairs": ev.length_differing,
        "held_out_accuracy_within_margin": held_agreement.within_margin_accuracy,
        "seconds": t0.elapsed().as_secs_f64(),
    });
    let col = |f: &dyn Fn(&rmdistill_ml::StepMetrics) -> f64| h.iter().map(|r| Some(f(r))).collect::<Vec<_>>();
    data_io::write_metrics(
        &ctx.output_path("metrics"),
        &[
            ("step", col(&|r| r.step as f64)),
            ("loss", col(&|r| r.loss)),
            ("lr", col(&|r| r.lr)),
            ("grad_norm", col(&|r| r.grad_norm)),
            ("accuracy", col(&|r| r.extra.get("accuracy").copied().unwrap_or(f64::NAN))),
            ("margin", col(&|r| r.extra.get("margin").copied().unwrap_or(f64::NAN))),
        ],
        &table::summary_kv(
            "train_rm",
            // what the report's reward-model table reads
            &json!({
                "held_out_accuracy": held_acc,
                "length_sensitivity": sens,
                "eval_accuracy": eval_acc,
                "eval_accuracy_within_margin": ev.within_margin_accuracy,
                "eval_length_sensitivity": eval_sens,
                "train_pairs": train.len()
            }),
        ),
    )?;
    codec.warn_truncated(ctx, "the pairs");
    ctx.log(&format!(
        "{} steps on {} pairs: loss {:.3} → {:.3}; held-out accuracy {}, length sensitivity {}, eval accuracy {}",
        steps,
        train.len(),
        summary["first_loss"].as_f64().unwrap_or(f64::NAN),
        summary["final_loss"].as_f64().unwrap_or(f64::NAN),
        shown(held_acc),
        shown(sens),
        shown(eval_acc)
    ));
    Ok(summary)
}

/// A figure as the log shows it: three decimals, or `not measured` (no held-out or eval pairs).
fn shown(x: Option<f64>) -> String {
    x.map_or_else(|| "not measured".to_string(), |x| format!("{x:.3}"))
}
