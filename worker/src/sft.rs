//! `sft` (declared in `rmdistill_stages::sft`): trains π_ref. Each node runs in a worker process of its own, so the
//! libtorch generator it seeds (initial weights) is this node's alone: concurrent nodes cannot interleave their draws.
use crate::data_io::{self, Codec};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rmdistill_ml::logprobs::lm_loss;
use rmdistill_ml::tch;
use rmdistill_ml::{
    Gpt2Config, LanguageModel, LlamaConfig, ModelConfig, OptimConfig, Reduction, Schedule, StepMetrics, Tokenizer,
    TokenizerSpec, Trainer, sequence_logprobs,
};
use rmdistill_stages::port::*;
use rmdistill_stages::sft::{Arch, ArchParams, Params, TokKind, TrainOn, parse};
use rmdistill_stages::table;
use serde_json::{Value, json};
use std::path::Path;

/// A fresh model config for a tokenizer.
pub fn build_config(a: &ArchParams, tok: &Codec) -> ModelConfig {
    let vocab = tok.tok.vocab_size() as i64;
    let mut c = match a.kind {
        Arch::Gpt2 => {
            let mut c = Gpt2Config::new(vocab, a.max_positions, a.d_model, a.n_layer, a.n_head);
            c.n_inner = Some(a.d_ff);
            c.initializer_range = a.init_std;
            ModelConfig::Gpt2(c)
        }
        Arch::Llama => {
            let mut c = LlamaConfig::new(vocab, a.d_model, a.d_ff, a.n_layer, a.n_head, a.n_head);
            c.max_position_embeddings = Some(a.max_positions);
            c.initializer_range = a.init_std;
            ModelConfig::Llama(c)
        }
    };
    c.set_special_ids(Some(tok.bos), Some(tok.eos), Some(tok.pad));
    c
}

/// A fresh model of `arch`, refused before libtorch allocates it when training it cannot fit in this machine's
/// memory at all (libtorch's failed allocation is a panic inside tch, which would read as a bug).
fn new_model(a: &ArchParams, codec: &Codec, device: tch::Device) -> StageResult<LanguageModel> {
    let config = build_config(a, codec);
    if device == tch::Device::Cpu
        && let Some(have) = rmdistill_ml::machine_memory_bytes()
    {
        check_fits(config.min_parameters(), a, config.vocab_size(), have)?;
    }
    Ok(LanguageModel::new(config, device))
}

/// fp32 weights, their gradients and AdamW's two moments: 16 bytes per parameter, before any activation.
const TRAINING_BYTES_PER_PARAMETER: u128 = 16;

fn check_fits(parameters: u128, a: &ArchParams, vocab: i64, have: u64) -> StageResult<()> {
    let need = parameters.saturating_mul(TRAINING_BYTES_PER_PARAMETER);
    if need <= have as u128 {
        return Ok(());
    }
    let gb = |b: u128| b as f64 / 1e9;
    Err(StageError::invalid(
        "arch",
        format!(
            "the model as configured (d_model = {}, n_layer = {}, d_ff = {}, vocabulary {vocab}) has at least {parameters} \
             parameters; training it needs at least {:.1} GB (fp32 weights, gradients and AdamW's two moments) and this \
             machine has {:.1} GB of memory and swap in all: make `arch` smaller",
            a.d_model,
            a.n_layer,
            a.d_ff,
            gb(need),
            gb(have as u128)
        ),
    ))
}

/// (prompt, response) pairs.
type Demos = Vec<(String, String)>;

/// Demonstrations (prompt, response) split into (train, eval) from a corpus or labelled pairs table.
fn demonstrations(path: &Path) -> StageResult<(Demos, Demos, &'static str)> {
    let schema = table::read_schema(path)?;
    let has = |c: &str| schema.index_of(c).is_ok();
    if has("prompt") && has("summary") {
        let t = data_io::read_nonempty(path, "data", None)?;
        let prompts = data_io::strings(&t, "prompt", path, true)?;
        let summaries = data_io::strings(&t, "summary", path, true)?;
        let splits = if has("split") { Some(data_io::strings(&t, "split", path, false)?) } else { None };
        let (mut train, mut eval) = (vec![], vec![]);
        for i in 0..t.num_rows() {
            let row = (prompts[i].clone(), summaries[i].clone());
            match splits.as_ref().map(|s| s[i].as_str()) {
                None | Some("train") => train.push(row),
                Some("eval") => eval.push(row),
                _ => {}
            }
        }
        return Ok((train, eval, "demonstrations"));
    }
    if has("prompt") && has("response_a") && has("response_b") && has("label") {
        let t = data_io::read_nonempty(path, "data", Some(&["prompt", "response_a", "response_b", "label"]))?;
        let prompts = data_io::strings(&t, "prompt", path, true)?;
        let a = data_io::strings(&t, "response_a", path, true)?;
        let b = data_io::strings(&t, "response_b", path, true)?;
        let label = data_io::opt_i64s(&t, "label", path)?;
        let mut train = vec![];
        for i in 0..t.num_rows() {
            match label[i] {
                Some(0) => train.push((prompts[i].clone(), a[i].clone())),
                Some(1) => train.push((prompts[i].clone(), b[i].clone())),
                None => {}
                Some(x) => {
                    return Err(StageError::invalid(
                        "label",
                        format!("{}: row {i} has label {x}, expected 0 or 1", path.display()),
                    ));
                }
            }
        }
        if train.is_empty() {
            return Err(StageError::invalid(
                "label",
                format!("{}: no labelled pair to take a chosen response from", path.display()),
            ));
        }
        return Ok((train, vec![], "chosen responses"));
    }
    let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    Err(StageError::invalid(
        "data",
        format!(
            "{}: expected demonstrations (prompt, summary) or labelled pairs (prompt, response_a, response_b, label); the table has: {}",
            path.display(),
            have.join(", ")
        ),
    ))
}

type Encoded = Vec<(Vec<i64>, Vec<i64>)>;

fn encode(codec: &Codec, rows: &[(String, String)]) -> StageResult<Encoded> {
    rows.iter().map(|(p, r)| Ok((codec.prompt(p)?, codec.response(r)?))).collect()
}

/// Mean NLL per response token of `rows` under `model` (no gradients).
pub fn mean_nll(model: &LanguageModel, codec: &Codec, rows: &Encoded, batch: usize) -> StageResult<f64> {
    let (mut sum, mut n) = (0.0, 0usize);
    for r in data_io::chunks(rows.len(), batch) {
        let ps: Vec<&[i64]> = rows[r.clone()].iter().map(|x| x.0.as_slice()).collect();
        let rs: Vec<&[i64]> = rows[r.clone()].iter().map(|x| x.1.as_slice()).collect();
        let b = codec.batch(&ps, &rs, model.device())?;
        let lp = tch::no_grad(|| sequence_logprobs(model.net(), &b, Reduction::Sum));
        sum -= data_io::to_f64s(&lp)?.iter().sum::<f64>();
        n += b.response_lens.iter().sum::<usize>();
    }
    Ok(sum / n.max(1) as f64)
}

pub fn run(ctx: &dyn Ctx) -> StageResult<Value> {
    let p = parse(ctx.params())?;
    let t0 = std::time::Instant::now();
    data_io::torch_setup(ctx, p.seed);
    let device = data_io::tch_device(ctx);
    // read: the demonstrations, and where the model starts (a base checkpoint, a tokenizer, or neither)
    let data = data_io::one_input(ctx, "data")?;
    let (train, eval, source) = demonstrations(&data.path)?;
    if train.is_empty() {
        return Err(StageError::invalid(
            "data",
            format!("{}: no training rows (split = \"train\")", data.path.display()),
        ));
    }
    let (mut codec, model, tok_source) = starting_point(ctx, &p, device, &train)?;
    codec.max_len = p.max_len.or(model.config.max_positions().map(|m| m as usize));
    // compute
    let (train_ids, eval_ids) = encoded_split(ctx, &p, &codec, train, eval)?;
    let run = fine_tune(ctx, &p, device, &model, &codec, &train_ids, &eval_ids)?;
    let h = &run.history;
    let summary = json!({
        "source": source,
        "tokenizer": tok_source,
        "train_rows": train_ids.len(),
        "eval_rows": eval_ids.len(),
        "parameters": model.num_parameters(),
        "model_type": model.config.model_type(),
        "vocab_size": model.config.vocab_size(),
        "steps": p.steps,
        "first_loss": h.first().map(|r| r.loss),
        "final_loss": h.last().map(|r| r.loss),
        "eval_loss_before": run.eval_before,
        "eval_loss": run.eval_loss.iter().rev().flatten().next().copied(),
        "seconds": t0.elapsed().as_secs_f64(),
    });
    // write
    let out_dir = ctx.output_path("model");
    std::fs::create_dir_all(&out_dir)?;
    codec.tok.save(&out_dir)?;
    model.save(&out_dir, None)?;
    data_io::write_metrics(
        &ctx.output_path("metrics"),
        &[
            ("step", h.iter().map(|r| Some(r.step as f64)).collect()),
            ("loss", h.iter().map(|r| Some(r.loss)).collect()),
            ("lr", h.iter().map(|r| Some(r.lr)).collect()),
            ("grad_norm", h.iter().map(|r| Some(r.grad_norm)).collect()),
            ("eval_loss", run.eval_loss),
        ],
        &table::summary_kv("sft", &json!({"parameters": summary["parameters"], "eval_loss": summary["eval_loss"]})),
    )?;
    codec.warn_truncated(ctx, "the demonstrations");
    ctx.log(&format!(
        "{} parameters, {} steps: loss {} → {}, {}",
        summary["parameters"],
        p.steps,
        loss(h.first().map(|r| r.loss)),
        loss(h.last().map(|r| r.loss)),
        match (run.eval_before, summary["eval_loss"].as_f64()) {
            (Some(before), Some(after)) => format!("eval loss {} → {}", loss(Some(before)), loss(Some(after))),
            _ => "no eval rows (eval loss not measured)".to_string(),
        }
    ));
    Ok(summary)
}

/// The tokenizer and the model training starts from, and where the tokenizer came from: a `base` checkpoint (with
/// the `tokenizer` input's tokenizer when one is bound), a fresh model for the `tokenizer` input, or a tokenizer
/// trained here on the training demonstrations and a fresh model for it.
fn starting_point(
    ctx: &dyn Ctx,
    p: &Params,
    device: tch::Device,
    train: &Demos,
) -> StageResult<(Codec, LanguageModel, &'static str)> {
    let base = data_io::opt_input(ctx, "base")?;
    let tok_in = data_io::opt_input(ctx, "tokenizer")?;
    Ok(match (base, tok_in) {
        (Some(b), _) => {
            data_io::check_checkpoint(&b.path, "base")?;
            let codec = match tok_in {
                Some(t) => Codec::load(&t.path, "tokenizer")?,
                None => Codec::load(&b.path, "base")?,
            };
            let m = LanguageModel::load(&b.path, device).map_err(|e| StageError::invalid("base", format!("{e:#}")))?;
            codec.check_vocab(m.config.vocab_size(), "base")?;
            (codec, m, "base")
        }
        (None, Some(t)) => {
            let codec = Codec::load(&t.path, "tokenizer")?;
            (codec.clone(), new_model(&p.arch, &codec, device)?, "tokenizer input")
        }
        (None, None) => {
            let spec = match p.tokenizer_kind {
                TokKind::WordLevel => TokenizerSpec::WordLevel { vocab_size: p.tokenizer_vocab, min_frequency: 1 },
                TokKind::ByteBpe => TokenizerSpec::ByteBpe { vocab_size: p.tokenizer_vocab, min_frequency: 2 },
            };
            let texts = train.iter().flat_map(|(a, b)| [a.as_str(), b.as_str()]);
            let tok = Tokenizer::train(spec, texts)?;
            let codec = Codec::new(tok, "tokenizer_kind")?;
            (codec.clone(), new_model(&p.arch, &codec, device)?, "trained here")
        }
    })
}

/// The training and eval demonstrations, encoded: without eval rows in the data, a seeded sample of the training
/// rows is held out; at most `eval_rows` are kept.
fn encoded_split(
    ctx: &dyn Ctx,
    p: &Params,
    codec: &Codec,
    mut train: Demos,
    mut eval: Demos,
) -> StageResult<(Encoded, Encoded)> {
    if eval.is_empty() {
        // hold out a seeded sample of the training rows
        let mut rng = ChaCha8Rng::seed_from_u64(p.seed ^ 0x5f7);
        let n = train.len();
        let k = p.eval_rows.min(n / 10);
        table::partial_shuffle(&mut rng, &mut train, n);
        eval = train.split_off(n - k);
    }
    eval.truncate(p.eval_rows);
    let train_ids = encode(codec, &train)?;
    let eval_ids = encode(codec, &eval)?;
    codec.warn_unknown(ctx, "the demonstrations");
    Ok((train_ids, eval_ids))
}

/// What [`fine_tune`] leaves: the optimizer's step history (the optimizer itself is freed before the model is
/// written), and the eval loss before training and every `eval_every` steps (None between).
struct Run {
    history: Vec<StepMetrics>,
    eval_before: Option<f64>,
    eval_loss: Vec<Option<f64>>,
}

/// `steps` optimizer steps of next-token loss on the training demonstrations (the responses' tokens, or all), in
/// batches drawn without replacement from a seeded order, reshuffled at each pass.
fn fine_tune(
    ctx: &dyn Ctx,
    p: &Params,
    device: tch::Device,
    model: &LanguageModel,
    codec: &Codec,
    train_ids: &Encoded,
    eval_ids: &Encoded,
) -> StageResult<Run> {
    if p.warmup_steps > p.steps / 2 && ctx.params().contains_key("warmup_steps") {
        // the documented limit, said where the run shows it (never silently)
        ctx.warn(&format!(
            "warmup_steps {} is more than half the {} steps: {} are used (at most half)",
            p.warmup_steps,
            p.steps,
            p.steps / 2
        ));
    }
    let cfg = OptimConfig {
        lr: p.lr,
        weight_decay: p.weight_decay,
        warmup_steps: p.warmup_steps.min(p.steps / 2),
        total_steps: p.steps,
        schedule: Schedule::Cosine,
        min_lr_ratio: 0.1,
        ..Default::default()
    };
    let mut trainer = Trainer::new(&model.vs, cfg)?;
    let eval_before = if eval_ids.is_empty() { None } else { Some(mean_nll(model, codec, eval_ids, 256)?) };
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
    let mut order: Vec<usize> = (0..train_ids.len()).collect();
    let mut pos = order.len();
    let mut eval_loss: Vec<Option<f64>> = vec![];
    for step in 0..p.steps {
        let mut idx = Vec::with_capacity(p.batch_size);
        while idx.len() < p.batch_size.min(train_ids.len()) {
            if pos == order.len() {
                let n = order.len();
                table::partial_shuffle(&mut rng, &mut order, n);
                pos = 0;
            }
            idx.push(order[pos]);
            pos += 1;
        }
        let ps: Vec<&[i64]> = idx.iter().map(|&i| train_ids[i].0.as_slice()).collect();
        let rs: Vec<&[i64]> = idx.iter().map(|&i| train_ids[i].1.as_slice()).collect();
        let b = codec.batch(&ps, &rs, device)?;
        let loss = match p.train_on {
            TrainOn::Response => {
                let n_tok: usize = b.response_lens.iter().sum();
                let lp = rmdistill_ml::with_autocast(device, || sequence_logprobs(model.net(), &b, Reduction::Sum));
                -lp.sum(tch::Kind::Float) / n_tok as f64
            }
            TrainOn::All => {
                let (nll, n) =
                    rmdistill_ml::with_autocast(device, || lm_loss(model.net(), &b.input_ids, &b.attention_mask));
                nll / n
            }
        };
        trainer.backward(&loss, &[])?;
        let last = step + 1 == p.steps;
        if !eval_ids.is_empty() && ((step + 1) % p.eval_every == 0 || last) {
            eval_loss.push(Some(mean_nll(model, codec, eval_ids, 256)?));
        } else {
            eval_loss.push(None);
        }
        ctx.progress(step as u64 + 1, p.steps as u64);
    }
    Ok(Run { history: trainer.history, eval_before, eval_loss })
}

/// A loss as the log shows it: three decimals, or `none`.
fn loss(l: Option<f64>) -> String {
    l.map_or_else(|| "none".to_string(), |l| format!("{l:.3}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmdistill_stages::sft::ArchParams;

    #[test]
    fn init_std_sets_the_spread_of_a_fresh_model() {
        let words = "aa bb cc dd ee ff gg hh ii jj kk ll mm nn oo pp";
        let spec = TokenizerSpec::WordLevel { vocab_size: 100, min_frequency: 1 };
        let codec = Codec::new(Tokenizer::train(spec, std::iter::once(words)).unwrap(), "tokenizer").unwrap();
        for (kind, std, name) in [
            (Arch::Gpt2, 0.02, "transformer.wte.weight"),
            (Arch::Gpt2, 0.1, "transformer.wte.weight"),
            (Arch::Llama, 0.1, "model.embed_tokens.weight"),
        ] {
            tch::manual_seed(0);
            let a = ArchParams { kind, init_std: std, ..ArchParams::default() };
            let m = LanguageModel::new(build_config(&a, &codec), tch::Device::Cpu);
            let (_, w) = m.vs.variables().into_iter().find(|(k, _)| k == name).expect(name);
            // ~19 × 64 normal draws: the sample std is within a few percent of the configured one
            let s = w.std(true).double_value(&[]);
            assert!((s - std).abs() < 0.1 * std, "{kind:?}: std {s}, configured {std}");
        }
    }

    #[test]
    fn a_model_that_cannot_fit_is_refused_with_its_shape_and_the_memory() {
        let a = ArchParams { d_model: 100_000, ..ArchParams::default() };
        // 120k parameters × 16 B fit in 2 MB; 80 G parameters × 16 B do not fit in 24 GB
        assert!(check_fits(120_000, &ArchParams::default(), 400, 2_000_000).is_ok());
        let err = check_fits(80_000_000_000, &a, 400, 24_000_000_000).unwrap_err().to_string();
        for needle in ["arch", "d_model = 100000", "at least 80000000000 parameters", "1280.0 GB", "24.0 GB", "smaller"]
        {
            assert!(err.contains(needle), "`{needle}` in {err}");
        }
        assert!(check_fits(u128::MAX, &a, 400, u64::MAX).is_err(), "no overflow");
    }
}
