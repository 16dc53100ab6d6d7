//! `policy` (declared in `rmdistill_stages::policy`): trains π_θ with the method's loss.

use crate::lm_io::{self, Codec};
use crate::losses::{BatchTerms, GammaSchedule, Hyper, Method, objective};
use arrow::array::{Array, ArrayRef, AsArray, Float64Array, RecordBatch, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rmdistill_ml::tch;
use rmdistill_ml::{LanguageModel, OptimConfig, Reduction, Schedule, Trainer, sequence_logprobs, with_autocast};
use rmdistill_stages::policy::{KlSource, parse};
use rmdistill_stages::port::*;
use rmdistill_stages::table;
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use tch::{Kind, Tensor};

pub use crate::lm_io::POLICY_INFO_FILE;

/// D_ρ as the policy needs it.
struct Pairs {
    ids: Vec<String>,
    prompt: Vec<String>,
    a: Vec<String>,
    b: Vec<String>,
    /// 0: a preferred, 1: b preferred; None: unlabelled.
    label: Vec<Option<i8>>,
}

fn read_pairs(path: &Path) -> StageResult<Pairs> {
    let t = table::read_table(
        path,
        Some(&[table::PAIR_ID, table::PROMPT, table::RESPONSE_A, table::RESPONSE_B, table::LABEL]),
    )?;
    if t.num_rows() == 0 {
        return Err(StageError::invalid("pairs", format!("{}: the pairs table is empty", path.display())));
    }
    let lab = arrow::compute::cast(t.column_by_name(table::LABEL).unwrap(), &DataType::Int8)?;
    let lab = lab.as_primitive::<arrow::datatypes::Int8Type>();
    let label: Vec<Option<i8>> = (0..lab.len()).map(|i| lab.is_valid(i).then(|| lab.value(i))).collect();
    if let Some(i) = label.iter().position(|l| l.is_some_and(|v| v != 0 && v != 1)) {
        return Err(StageError::invalid("label", format!("{}: row {i}: label must be 0, 1 or null", path.display())));
    }
    let p = Pairs {
        ids: lm_io::strings(&t, table::PAIR_ID, path)?,
        prompt: lm_io::strings(&t, table::PROMPT, path)?,
        a: lm_io::strings(&t, table::RESPONSE_A, path)?,
        b: lm_io::strings(&t, table::RESPONSE_B, path)?,
        label,
    };
    for (col, v) in [(table::PROMPT, &p.prompt), (table::RESPONSE_A, &p.a), (table::RESPONSE_B, &p.b)] {
        if let Some(i) = v.iter().position(|s| s.trim().is_empty()) {
            return Err(StageError::invalid(col, format!("{}: row {i}: `{col}` is empty", path.display())));
        }
    }
    Ok(p)
}

/// precompute.rewards, aligned to the pairs' order.
struct Rewards {
    ref_a: Vec<f64>,
    ref_b: Vec<f64>,
    /// [pair][member]
    r_a: Vec<Vec<f64>>,
    r_b: Vec<Vec<f64>>,
    members: usize,
    member_names: Vec<String>,
}

fn list_f64(batch: &RecordBatch, col: &str, path: &Path) -> StageResult<Vec<Vec<f64>>> {
    let a = batch
        .column_by_name(col)
        .ok_or_else(|| StageError::invalid(col, format!("{}: missing column `{col}`", path.display())))?;
    let l = match a.data_type() {
        DataType::List(_) => a.as_list::<i32>(),
        other => {
            return Err(StageError::invalid(
                col,
                format!("{}: `{col}` must be List<Float64>, found {other}", path.display()),
            ));
        }
    };
    (0..l.len())
        .map(|i| {
            if l.is_null(i) {
                return Err(StageError::invalid(col, format!("{}: `{col}` is null at row {i}", path.display())));
            }
            let v = arrow::compute::cast(&l.value(i), &DataType::Float64)?;
            let v = v.as_primitive::<arrow::datatypes::Float64Type>();
            if v.null_count() > 0 {
                return Err(StageError::invalid(
                    col,
                    format!("{}: `{col}` has a null score at row {i}", path.display()),
                ));
            }
            Ok(v.values().to_vec())
        })
        .collect()
}

fn read_rewards(path: &Path, pairs: &Pairs) -> StageResult<Rewards> {
    let t = table::read_table(path, Some(&[table::PAIR_ID, "ref_logp_a", "ref_logp_b", "reward_a", "reward_b"]))?;
    let ids = lm_io::strings(&t, table::PAIR_ID, path)?;
    let (ra, rb) = (lm_io::f64s(&t, "ref_logp_a", path)?, lm_io::f64s(&t, "ref_logp_b", path)?);
    let (wa, wb) = (list_f64(&t, "reward_a", path)?, list_f64(&t, "reward_b", path)?);
    let index: HashMap<&str, usize> = ids.iter().enumerate().map(|(i, s)| (s.as_str(), i)).collect();
    let members = wa.first().map_or(0, |v| v.len());
    let mut out = Rewards { ref_a: vec![], ref_b: vec![], r_a: vec![], r_b: vec![], members, member_names: vec![] };
    for (k, id) in pairs.ids.iter().enumerate() {
        let &i = index.get(id.as_str()).ok_or_else(|| {
            StageError::invalid(
                "rewards",
                format!("{}: no row for pair_id {id} (pairs row {k}): precompute ran on other pairs", path.display()),
            )
        })?;
        if wa[i].len() != members || wb[i].len() != members {
            return Err(StageError::invalid(
                "rewards",
                format!(
                    "{}: row {i} has {} / {} member scores, expected {members}",
                    path.display(),
                    wa[i].len(),
                    wb[i].len()
                ),
            ));
        }
        out.ref_a.push(ra[i]);
        out.ref_b.push(rb[i]);
        out.r_a.push(wa[i].clone());
        out.r_b.push(wb[i].clone());
    }
    let kv = table::read_kv(path)?;
    if let Some((_, v)) = kv.iter().find(|(k, _)| k == "rmdistill.members")
        && let Ok(Value::Array(a)) = serde_json::from_str::<Value>(v)
    {
        out.member_names = a.iter().map(|x| x.as_str().map(str::to_string).unwrap_or_else(|| x.to_string())).collect();
    }
    if out.member_names.len() != members {
        out.member_names = (0..members).map(|m| format!("member{m}")).collect();
    }
    Ok(out)
}

struct RefSamples {
    prompt: Vec<Vec<i64>>,
    response: Vec<Vec<i64>>,
    ref_logp: Vec<f64>,
    /// For each pair, the samples of its prompt (kl_source = "ref_samples"; empty otherwise).
    of_pair: Vec<Vec<u32>>,
}

/// Reads precompute.ref_samples; with `pairs` (kl_source = "ref_samples") also finds each pair's samples, and fails
/// when a pair's prompt has none.
fn read_ref_samples(path: &Path, codec: &Codec, pairs: Option<&Pairs>) -> StageResult<RefSamples> {
    let t = table::read_table(path, Some(&[table::PROMPT, "response", "ref_logp"]))?;
    if t.num_rows() == 0 {
        return Err(StageError::invalid("ref_samples", format!("{}: no reference samples", path.display())));
    }
    let p = lm_io::strings(&t, table::PROMPT, path)?;
    let r = lm_io::strings(&t, "response", path)?;
    let mut of_prompt: HashMap<&str, Vec<u32>> = HashMap::new();
    for (j, x) in p.iter().enumerate() {
        of_prompt.entry(x.as_str()).or_default().push(j as u32);
    }
    let of_pair = match pairs {
        None => vec![],
        Some(pairs) => (pairs.prompt.iter().enumerate())
            .map(|(k, x)| {
                of_prompt.get(x.as_str()).cloned().ok_or_else(|| {
                    StageError::invalid(
                        "ref_samples",
                        format!(
                            "{}: no π_ref sample for the prompt of pair {} (pairs row {k}): the samples were drawn for \
                             other prompts; bind the precompute of this D_ρ, or set kl_source = \"ref_samples_uniform\"",
                            path.display(),
                            pairs.ids[k]
                        ),
                    )
                })
            })
            .collect::<StageResult<_>>()?,
    };
    Ok(RefSamples {
        prompt: p.iter().map(|s| codec.prompt(s)).collect::<StageResult<_>>()?,
        response: r.iter().map(|s| codec.response(s)).collect::<StageResult<_>>()?,
        ref_logp: lm_io::f64s(&t, "ref_logp", path)?,
        of_pair,
    })
}

fn tensor(v: &[f64], dev: tch::Device) -> Tensor {
    Tensor::from_slice(v).to_kind(Kind::Float).to_device(dev)
}
fn tensor2(rows: &[&Vec<f64>], dev: tch::Device) -> Tensor {
    let m = rows.first().map_or(0, |r| r.len()) as i64;
    let flat: Vec<f64> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_slice(&flat).to_kind(Kind::Float).view([rows.len() as i64, m]).to_device(dev)
}
fn scalar(t: &Tensor) -> f64 {
    f64::try_from(t.detach().to_kind(Kind::Double).to_device(tch::Device::Cpu)).unwrap_or(f64::NAN)
}

/// Writes per-step metrics: `step` then every other column (Float64, null where a step lacks it), sorted by name.
pub fn write_metrics(path: &Path, history: &[rmdistill_ml::StepMetrics], kv: &[(String, String)]) -> StageResult<()> {
    // no wall-clock column: the same run must give the same bytes
    let mut keys: Vec<String> = vec!["lr".into(), "loss".into(), "grad_norm".into()];
    let mut extra: Vec<String> = history.iter().flat_map(|h| h.extra.keys().cloned()).collect();
    extra.sort();
    extra.dedup();
    keys.extend(extra);
    let mut fields = vec![Field::new("step", DataType::UInt32, false)];
    let mut cols: Vec<ArrayRef> =
        vec![Arc::new(UInt32Array::from(history.iter().map(|h| h.step as u32).collect::<Vec<_>>()))];
    for k in &keys {
        let v: Vec<Option<f64>> = history
            .iter()
            .map(|h| match k.as_str() {
                "lr" => Some(h.lr),
                "loss" => Some(h.loss),
                "grad_norm" => Some(h.grad_norm),
                other => h.extra.get(other).copied(),
            })
            .collect();
        fields.push(Field::new(k, DataType::Float64, true));
        cols.push(Arc::new(Float64Array::from(v)));
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols)?;
    table::write_table(path, &batch, kv)
}

/// The policy's inputs, read and checked against the method before any training.
struct Inputs {
    pairs: Pairs,
    reference_path: std::path::PathBuf,
    rewards: Option<Rewards>,
    ref_samples_path: Option<std::path::PathBuf>,
    /// ρ of D_ρ, as `subsample` recorded it.
    rho: Option<f64>,
}

fn read_inputs(ctx: &dyn Ctx, p: &rmdistill_stages::policy::Params) -> StageResult<Inputs> {
    let method = p.method;
    let pairs_in = lm_io::one_input(ctx, "pairs")?;
    let ref_in = lm_io::one_input(ctx, "reference")?;
    let rewards_in = lm_io::opt_input(ctx, "rewards")?;
    let samples_in = lm_io::opt_input(ctx, "ref_samples")?;
    if method.uses_rewards() && rewards_in.is_none() {
        return Err(StageError::invalid(
            "rewards",
            format!("{method} distils reward models: bind precompute.rewards to `rewards`"),
        ));
    }
    if method.pessimistic() && p.kl_source != KlSource::Pairs && samples_in.is_none() {
        return Err(StageError::invalid(
            "ref_samples",
            format!(
                "{method} with kl_source = \"{}\" needs precompute.ref_samples bound to `ref_samples` (or kl_source = \"pairs\")",
                serde_json::to_value(p.kl_source).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
            ),
        ));
    }
    if method.pessimistic() && p.kl_source == KlSource::Pairs && rewards_in.is_none() {
        return Err(StageError::invalid(
            "rewards",
            "kl_source = \"pairs\" needs the pairs' reference log-probs: bind precompute.rewards",
        ));
    }
    let pairs = read_pairs(&pairs_in.path)?;
    let n = pairs.ids.len();
    if method.uses_labels() {
        let unlabelled = pairs.label.iter().filter(|l| l.is_none()).count();
        if unlabelled > 0 {
            return Err(StageError::invalid(
                "pairs",
                format!(
                    "{method} needs a preference label on every pair; {unlabelled} of {n} rows of {} have none",
                    pairs_in.path.display()
                ),
            ));
        }
    }
    let rewards = rewards_in.map(|r| read_rewards(&r.path, &pairs)).transpose()?;
    if let Some(r) = &rewards {
        match method {
            Method::DDpo | Method::DpDpo if r.members != 1 => {
                return Err(StageError::invalid(
                    "rewards",
                    format!(
                        "{method} distils exactly one reward model, but the rewards table has {} members ({})",
                        r.members,
                        r.member_names.join(", ")
                    ),
                ));
            }
            Method::EDpo if r.members == 0 => {
                return Err(StageError::invalid(
                    "rewards",
                    "e-DPO needs an ensemble of at least one reward model; the rewards table has 0 members",
                ));
            }
            _ => {}
        }
    }
    let rho = rmdistill_stages::policy::recorded_rho(&pairs_in.path)?;
    // With kl_source = "pairs" the KL term uses the pairs themselves, so bound samples are not read.
    let ref_samples_path =
        samples_in.filter(|_| !(method.pessimistic() && p.kl_source == KlSource::Pairs)).map(|s| s.path.clone());
    Ok(Inputs { pairs, reference_path: ref_in.path.clone(), rewards, ref_samples_path, rho })
}

/// The pairs' prompts and responses as token ids, encoded once.
struct Tokens {
    prompts: Vec<Vec<i64>>,
    resp_a: Vec<Vec<i64>>,
    resp_b: Vec<Vec<i64>>,
}

fn encode(codec: &Codec, pairs: &Pairs) -> StageResult<Tokens> {
    Ok(Tokens {
        prompts: pairs.prompt.iter().map(|s| codec.prompt(s)).collect::<StageResult<_>>()?,
        resp_a: pairs.a.iter().map(|s| codec.response(s)).collect::<StageResult<_>>()?,
        resp_b: pairs.b.iter().map(|s| codec.response(s)).collect::<StageResult<_>>()?,
    })
}

/// Where the reference log-probs log π_ref(y|x) of the pairs came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RefSource {
    /// `precompute.rewards` (summed log-probs, checked against the reference model on the first batch).
    RewardsTable,
    /// Computed here from the reference model (no rewards table, or a reduction other than the sum).
    ReferenceModel,
}

impl std::fmt::Display for RefSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RefSource::RewardsTable => "rewards table",
            RefSource::ReferenceModel => "reference model",
        })
    }
}

/// log π_ref(y_a|x) and log π_ref(y_b|x) of every pair.
fn reference_logprobs(
    rewards: Option<&Rewards>,
    reference: &LanguageModel,
    codec: &Codec,
    tokens: &Tokens,
    reduction: Reduction,
    batch_size: usize,
) -> StageResult<(Vec<f64>, Vec<f64>, RefSource)> {
    if let (Some(r), Reduction::Sum) = (rewards, reduction) {
        return Ok((r.ref_a.clone(), r.ref_b.clone(), RefSource::RewardsTable));
    }
    let pr: Vec<&[i64]> = tokens.prompts.iter().map(|v| v.as_slice()).collect();
    let ra: Vec<&[i64]> = tokens.resp_a.iter().map(|v| v.as_slice()).collect();
    let rb: Vec<&[i64]> = tokens.resp_b.iter().map(|v| v.as_slice()).collect();
    let bs = batch_size.max(32);
    Ok((
        lm_io::logprobs_nograd(reference, codec, &pr, &ra, reduction, bs)?,
        lm_io::logprobs_nograd(reference, codec, &pr, &rb, reduction, bs)?,
        RefSource::ReferenceModel,
    ))
}

/// One mini-batch as the loss sees it: the pairs `idx` as (y_1, y_2) — (y_w, y_l) for the label methods — with the
/// reference log-probs in the same orientation.
struct MiniBatch {
    idx: Vec<usize>,
    /// Whether y_1 is the labelled-chosen response (None: unlabelled pair).
    first_is_chosen: Vec<Option<bool>>,
    ref_1: Vec<f64>,
    ref_2: Vec<f64>,
    /// The 2b sequences: the b y_1 rows, then the b y_2 rows; then any extra rows (the KL term's, see [`KlRows`]).
    tokens: rmdistill_ml::PairBatch,
}

#[allow(clippy::too_many_arguments)]
fn mini_batch(
    idx: Vec<usize>,
    method: Method,
    inputs: &Inputs,
    t: &Tokens,
    refs: (&[f64], &[f64]),
    extra: &[(&[i64], &[i64])],
    codec: &Codec,
    device: tch::Device,
) -> StageResult<MiniBatch> {
    let b = idx.len();
    let first_is_chosen: Vec<Option<bool>> = idx.iter().map(|&i| inputs.pairs.label[i].map(|l| l == 0)).collect();
    // label methods train on (y_w, y_l): flip the pairs whose label prefers response_b
    let flip: Vec<bool> = first_is_chosen.iter().map(|o| method.uses_labels() && *o == Some(false)).collect();
    let mut ps: Vec<&[i64]> = Vec::with_capacity(2 * b);
    let mut rs: Vec<&[i64]> = Vec::with_capacity(2 * b);
    let (mut ref_1, mut ref_2) = (Vec::with_capacity(b), Vec::with_capacity(b));
    for (k, &i) in idx.iter().enumerate() {
        ps.push(&t.prompts[i]);
        rs.push(if flip[k] { &t.resp_b[i] } else { &t.resp_a[i] });
        ref_1.push(if flip[k] { refs.1[i] } else { refs.0[i] });
        ref_2.push(if flip[k] { refs.0[i] } else { refs.1[i] });
    }
    for (k, &i) in idx.iter().enumerate() {
        ps.push(&t.prompts[i]);
        rs.push(if flip[k] { &t.resp_a[i] } else { &t.resp_b[i] });
    }
    for &(prompt, response) in extra {
        ps.push(prompt);
        rs.push(response);
    }
    let tokens = codec.batch(&ps, &rs, device)?;
    Ok(MiniBatch { idx, first_is_chosen, ref_1, ref_2, tokens })
}

/// The (prompt, response) rows the KL term is estimated on, with their reference log-probs.
type KlRows<'a> = (Vec<(&'a [i64], &'a [i64])>, Vec<f64>);

/// The sequences the KL term is estimated on (the pessimistic methods train on it, the others only report it), with
/// their reference log-probs: the batch's own pairs (kl_source = "pairs"), one π_ref sample of each pair's prompt
/// ("ref_samples"), or `kl_bs` samples of π_ref drawn over all prompts ("ref_samples_uniform"); `rng` draws the
/// samples; none without samples.
#[allow(clippy::too_many_arguments)]
fn kl_rows<'a>(
    idx: &[usize],
    method: Method,
    p: &rmdistill_stages::policy::Params,
    inputs: &Inputs,
    t: &'a Tokens,
    samples: Option<&'a RefSamples>,
    kl_bs: usize,
    rng: &mut ChaCha8Rng,
) -> Option<KlRows<'a>> {
    let sample = |s: &'a RefSamples, j: usize| (&s.prompt[j][..], &s.response[j][..], s.ref_logp[j]);
    let rows: Vec<(&[i64], &[i64], f64)> = match (samples, method.pessimistic() && p.kl_source == KlSource::Pairs) {
        (_, true) => {
            let r = inputs.rewards.as_ref().expect("kl_source = \"pairs\" was checked to have rewards");
            idx.iter()
                .flat_map(|&i| {
                    [
                        (&t.prompts[i][..], &t.resp_a[i][..], r.ref_a[i]),
                        (&t.prompts[i][..], &t.resp_b[i][..], r.ref_b[i]),
                    ]
                })
                .collect()
        }
        (Some(s), false) if p.kl_source == KlSource::RefSamplesUniform => {
            (0..kl_bs).map(|_| sample(s, table::uniform_below(rng, s.prompt.len() as u64) as usize)).collect()
        }
        (Some(s), false) => idx
            .iter()
            .map(|&i| {
                let of = &s.of_pair[i];
                // one sample per prompt (the pipelines' default) takes nothing from `rng`, which the shuffles share
                let k = if of.len() == 1 { 0 } else { table::uniform_below(rng, of.len() as u64) as usize };
                sample(s, of[k] as usize)
            })
            .collect(),
        (None, false) => return None,
    };
    if rows.is_empty() {
        return None;
    }
    Some((rows.iter().map(|r| (r.0, r.1)).collect(), rows.iter().map(|r| r.2).collect()))
}

/// Fails when the precomputed reference log-probs disagree with the reference model's on the first batch (the
/// policy starts as π_ref, so π_θ's log-probs there are π_ref's).
fn check_reference(pi: (&Tensor, &Tensor), reference: (&Tensor, &Tensor), device: tch::Device) -> StageResult<()> {
    let diff = scalar(&(pi.0 - reference.0).abs().max().maximum(&(pi.1 - reference.1).abs().max()));
    let tol = if device.is_cuda() { 0.5 } else { 1e-2 };
    if diff.is_nan() || diff > tol {
        return Err(StageError::invalid(
            "rewards",
            format!(
                "the precomputed reference log-probs differ from the reference model's by up to {diff:.4} on the first batch \
                 (tolerance {tol}): precompute and policy disagree on the reference or on the prompt/response encoding \
                 (see worker/src/data_io.rs); set check_ref_logp = false to train anyway"
            ),
        ));
    }
    Ok(())
}

/// The step's chosen/rejected figures, over the pairs that have a label (oriented by the label for every method):
/// mean log π_θ of the chosen and of the rejected response, the implicit reward margin β·Δ and its accuracy.
fn label_metrics(
    pb: &MiniBatch,
    method: Method,
    beta: f64,
    pi_1: &Tensor,
    pi_2: &Tensor,
) -> StageResult<Vec<(String, f64)>> {
    let to_vec = |t: &Tensor| {
        Vec::<f64>::try_from(t.detach().to_kind(Kind::Double).to_device(tch::Device::Cpu)).map_err(anyhow::Error::from)
    };
    let (lp1, lp2) = (to_vec(pi_1)?, to_vec(pi_2)?);
    let (mut cw, mut cl, mut margin, mut acc, mut nl) = (0.0, 0.0, 0.0, 0.0, 0usize);
    for k in 0..pb.idx.len() {
        let Some(first_is_chosen) = (if method.uses_labels() { Some(true) } else { pb.first_is_chosen[k] }) else {
            continue;
        };
        let (r1, r2) = (pb.ref_1[k], pb.ref_2[k]);
        let (w, l, rw, rl) = if first_is_chosen { (lp1[k], lp2[k], r1, r2) } else { (lp2[k], lp1[k], r2, r1) };
        let m = beta * ((w - rw) - (l - rl));
        cw += w;
        cl += l;
        margin += m;
        acc += (m > 0.0) as u8 as f64;
        nl += 1;
    }
    if nl == 0 {
        return Ok(vec![]);
    }
    let d = nl as f64;
    Ok(vec![
        ("logp_chosen".into(), cw / d),
        ("logp_rejected".into(), cl / d),
        ("margin".into(), margin / d),
        ("accuracy".into(), acc / d),
    ])
}

/// What training leaves besides the policy's weights: the step metrics and, for e-DPO, how often each member was
/// the pessimistic choice (per step) and the best match (per example).
struct Training {
    history: Vec<rmdistill_ml::StepMetrics>,
    steps: usize,
    member_chosen: Vec<u64>,
    member_best: Vec<u64>,
}

/// Trains π_θ (which starts as π_ref) with the method's objective, one mini-batch per optimizer step.
#[allow(clippy::too_many_arguments)]
fn train(
    ctx: &dyn Ctx,
    p: &rmdistill_stages::policy::Params,
    inputs: &Inputs,
    policy: &LanguageModel,
    codec: &Codec,
    tokens: &Tokens,
    refs: (&[f64], &[f64], RefSource),
    samples: Option<&RefSamples>,
    device: tch::Device,
) -> StageResult<Training> {
    let method = p.method;
    let reduction = lm_io::reduction(p.reduction);
    let n = inputs.pairs.ids.len();
    let batch_size = p.batch_size.min(n);
    let total = p.steps.unwrap_or(n.div_ceil(batch_size) * p.epochs);
    let gamma = p.gamma.unwrap_or(GammaSchedule::Constant(0.0));
    let optim = OptimConfig {
        lr: p.lr,
        weight_decay: p.weight_decay,
        warmup_steps: p.warmup_steps,
        total_steps: total,
        schedule: p.lr_schedule.map(lm_io::lr_schedule).unwrap_or(Schedule::Constant),
        grad_clip: Some(p.grad_clip),
        ..OptimConfig::default()
    };
    // what the documented limits changed in a value the user set, said where the run shows it (a default that
    // adapts to a small input is not news)
    if p.batch_size > n && ctx.params().contains_key("batch_size") {
        ctx.warn(&format!("batch_size {} is more than the {n} pairs of D_ρ: each step takes all {n}", p.batch_size));
    }
    if p.warmup_steps > total {
        ctx.warn(&format!(
            "warmup_steps {} is more than the {total} steps: the learning rate never reaches lr = {} (the last step's \
             is {:.3e})",
            p.warmup_steps,
            p.lr,
            optim.lr_at(total.saturating_sub(1))
        ));
    }
    let mut trainer = Trainer::new(&policy.vs, optim)?;
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed ^ 0x5eed_0001);
    let mut order: Vec<u32> = (0..n as u32).collect();
    let kl_bs = p.kl_batch_size.unwrap_or(batch_size);
    let members = inputs.rewards.as_ref().map_or(0, |r| r.members);
    let (mut member_chosen, mut member_best) = (vec![0u64; members], vec![0u64; members]);
    // the paper's names, and only the coefficients this method has
    let coefficients = match method {
        Method::Ipo => format!("τ {}", p.tau),
        m if m.pessimistic() => format!("β {}, γ {gamma}", p.beta),
        _ => format!("β {}", p.beta),
    };
    ctx.log(&format!(
        "{}: {n} pairs, {total} steps of {batch_size}, {coefficients}, reference log-probs from the {}",
        rmdistill_stages::paper::name(method.name()),
        refs.2
    ));
    let mut pos = n; // position in the current shuffled order; n forces a reshuffle
    let mut first = true;
    while !trainer.is_done() {
        let step = trainer.step();
        if pos >= n {
            table::partial_shuffle(&mut rng, &mut order, n);
            pos = 0;
        }
        let idx: Vec<usize> = order[pos..(pos + batch_size).min(n)].iter().map(|&i| i as usize).collect();
        pos += batch_size;
        let b = idx.len();
        let kl = kl_rows(&idx, method, p, inputs, tokens, samples, kl_bs, &mut rng);
        // the pessimistic methods' KL rows join the pairs' forward and backward pass: one pass over the model per
        // step instead of two (the tiny models' steps are dominated by per-op overhead)
        let joined = kl.as_ref().filter(|_| method.pessimistic()).map_or(&[][..], |k| &k.0[..]);
        let pb = mini_batch(idx, method, inputs, tokens, (refs.0, refs.1), joined, codec, device)?;
        let kl_apart = match &kl {
            Some((rows, _)) if !method.pessimistic() => {
                let (kp, kr): (Vec<&[i64]>, Vec<&[i64]>) = rows.iter().copied().unzip();
                Some(codec.batch(&kp, &kr, device)?)
            }
            _ => None,
        };
        let g = gamma.at(step, total);
        let (loss, mut extra) = with_autocast(device, || -> StageResult<(Tensor, Vec<(String, f64)>)> {
            let lp = sequence_logprobs(policy.net(), &pb.tokens, reduction);
            let (pi_1, pi_2) = (lp.narrow(0, 0, b as i64), lp.narrow(0, b as i64, b as i64));
            let (ref_1, ref_2) = (tensor(&pb.ref_1, device), tensor(&pb.ref_2, device));
            if first && p.check_ref_logp && reduction == Reduction::Sum && refs.2 == RefSource::RewardsTable {
                check_reference((&pi_1, &pi_2), (&ref_1, &ref_2), device)?;
            }
            let rew = inputs.rewards.as_ref().filter(|_| method.uses_rewards()).map(|r| {
                let a: Vec<&Vec<f64>> = pb.idx.iter().map(|&i| &r.r_a[i]).collect();
                let bb: Vec<&Vec<f64>> = pb.idx.iter().map(|&i| &r.r_b[i]).collect();
                (tensor2(&a, device), tensor2(&bb, device))
            });
            let kl_t = kl.as_ref().map(|(rows, refs)| {
                let lp = match &kl_apart {
                    Some(kb) => tch::no_grad(|| sequence_logprobs(policy.net(), kb, reduction)),
                    None => lp.narrow(0, 2 * b as i64, rows.len() as i64),
                };
                (lp, tensor(refs, device))
            });
            let terms = BatchTerms {
                pi_1: &pi_1,
                pi_2: &pi_2,
                ref_1: &ref_1,
                ref_2: &ref_2,
                rewards: rew.as_ref().map(|(a, b)| (a, b)),
                kl: kl_t.as_ref().map(|(a, b)| (a, b)),
            };
            let o = objective(method, &terms, Hyper { beta: p.beta, tau: p.tau, gamma: g })?;
            let mut extra: Vec<(String, f64)> =
                vec![("base_loss".into(), o.base_loss), ("gamma".into(), if method.pessimistic() { g } else { 0.0 })];
            if let Some(k) = o.kl_estimate {
                extra.push(("kl".into(), k));
            }
            extra.extend(label_metrics(&pb, method, p.beta, &pi_1, &pi_2)?);
            if let Some(e) = &o.ensemble {
                extra.push(("chosen_member".into(), e.chosen as f64));
                member_chosen[e.chosen] += 1;
                for (m, l) in e.member_losses.iter().enumerate() {
                    extra.push((format!("member_loss_{m}"), *l));
                    let share = e.best_per_example.iter().filter(|&&x| x == m).count();
                    member_best[m] += share as u64;
                    extra.push((format!("best_member_{m}"), share as f64 / b as f64));
                }
            }
            Ok((o.loss, extra))
        })?;
        first = false;
        extra.sort_by(|a, b| a.0.cmp(&b.0));
        let named: Vec<(&str, f64)> = extra.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        trainer.backward(&loss, &named).map_err(|e| StageError::failed(format!("{method} training: {e:#}")))?;
        ctx.progress(trainer.step() as u64, total as u64);
    }
    Ok(Training { history: trainer.history, steps: total, member_chosen, member_best })
}

/// What the policy records of itself beside its weights, and the stage's summary.
fn describe(p: &rmdistill_stages::policy::Params, inputs: &Inputs, t: &Training) -> (Value, Value) {
    let method = p.method;
    let gamma = p.gamma.unwrap_or(GammaSchedule::Constant(0.0));
    let gamma = if method.pessimistic() { json!(gamma) } else { Value::Null };
    let info = json!({
        "method": method.name(),
        "beta": p.beta,
        "tau": p.tau,
        "gamma": gamma,
        "kl_source": p.kl_source,
        "reduction": lm_io::reduction(p.reduction),
        "steps": t.steps,
        "seed": p.seed,
        "rho": inputs.rho,
        "members": inputs.rewards.as_ref().map(|r| r.member_names.clone()),
    });
    let (first, last) = (t.history.first().unwrap(), t.history.last().unwrap());
    let get = |r: &rmdistill_ml::StepMetrics, k: &str| r.extra.get(k).copied();
    let mut summary = json!({
        "method": method.name(),
        "beta": p.beta,
        "tau": p.tau,
        "gamma": gamma,
        "pairs": inputs.pairs.ids.len(),
        "steps": t.steps,
        "final_loss": last.loss,
        "final_kl": get(last, "kl"),
        "logp_chosen_start": get(first, "logp_chosen"),
        "logp_chosen_end": get(last, "logp_chosen"),
        "logp_rejected_start": get(first, "logp_rejected"),
        "logp_rejected_end": get(last, "logp_rejected"),
    });
    if !t.member_chosen.is_empty() && method == Method::EDpo {
        let names = &inputs.rewards.as_ref().unwrap().member_names;
        let total_best: u64 = t.member_best.iter().sum();
        summary["member_chosen_steps"] =
            json!(names.iter().cloned().zip(t.member_chosen.iter().copied()).collect::<BTreeMap<String, u64>>());
        summary["member_best_share"] = json!(
            names
                .iter()
                .cloned()
                .zip(t.member_best.iter().map(|&c| c as f64 / total_best.max(1) as f64))
                .collect::<BTreeMap<String, f64>>()
        );
    }
    (info, summary)
}

pub fn run(ctx: &dyn Ctx) -> StageResult<Value> {
    let t0 = std::time::Instant::now();
    // a bound `selection` was applied to the parameters by the runner (the stage's `bind`)
    let p = parse(ctx.params())?;
    if let Some(m) = &p.selection_method {
        // binding drops it: still here, no selection was bound to apply it to
        return Err(StageError::invalid(
            "selection_method",
            format!(
                "names whose choice a bound `selection` applies ({m}), but no selection is bound: bind one or remove it"
            ),
        ));
    }
    let method = p.method;

    // ---- read: the inputs, checked against the method; π_ref; the samples of π_ref for the KL term
    let inputs = read_inputs(ctx, &p)?;
    let device = lm_io::tch_device(ctx);
    tch::set_num_threads(ctx.threads().max(1) as i32);
    rmdistill_ml::train::deterministic_cpu(p.seed, ctx.threads().max(1) as i32);
    let codec = Codec::load(&inputs.reference_path, "reference")?.with_max_len(p.max_len);
    let mut reference = LanguageModel::load(&inputs.reference_path, device)
        .map_err(|e| StageError::invalid("reference", format!("{e:#}")))?;
    codec.check_vocab(reference.net().vocab_size(), "reference")?;
    reference.freeze();
    let per_pair = (p.kl_source != KlSource::RefSamplesUniform).then_some(&inputs.pairs);
    let samples = inputs.ref_samples_path.as_deref().map(|s| read_ref_samples(s, &codec, per_pair)).transpose()?;

    // ---- compute: tokens and log π_ref once, then π_θ trained from π_ref
    let tokens = encode(&codec, &inputs.pairs)?;
    codec.warn_unknown(ctx, "the pairs");
    let reduction = lm_io::reduction(p.reduction);
    let (ref_a, ref_b, ref_source) =
        reference_logprobs(inputs.rewards.as_ref(), &reference, &codec, &tokens, reduction, p.batch_size)?;
    let policy = reference.try_clone()?;
    let training =
        train(ctx, &p, &inputs, &policy, &codec, &tokens, (&ref_a, &ref_b, ref_source), samples.as_ref(), device)?;
    codec.warn_truncated(ctx, "the pairs");
    let (info, mut summary) = describe(&p, &inputs, &training);

    // ---- write: the model (with its info), the step metrics
    let model_dir = ctx.output_path("model");
    std::fs::create_dir_all(&model_dir)?;
    policy.save(&model_dir, Some(&inputs.reference_path))?;
    std::fs::write(
        model_dir.join(POLICY_INFO_FILE),
        serde_json::to_string_pretty(&info).map_err(anyhow::Error::from)? + "\n",
    )?;
    write_metrics(&ctx.output_path("metrics"), &training.history, &table::summary_kv("policy", &summary))?;
    let final_loss = training.history.last().unwrap().loss;
    summary["seconds"] = json!(t0.elapsed().as_secs_f64());
    ctx.log(&format!(
        "{method}: {} steps in {:.2} s, final loss {final_loss:.4}",
        training.steps,
        t0.elapsed().as_secs_f64()
    ));
    Ok(summary)
}
