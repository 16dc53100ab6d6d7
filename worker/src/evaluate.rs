//! `evaluate` (declared in `rmdistill_stages::evaluate`): samples the policy and π_ref, scores them with the oracle
//! and writes the summary of [`rmdistill_stages::evaluation`].

use crate::lm_io::{self, Codec};
use rmdistill_ml::tch;
use rmdistill_ml::{LanguageModel, Reduction, RewardModel, SampleConfig, generate, with_autocast};
use rmdistill_stages::evaluate::{OracleKind, Params, parse, sampling_record};
use rmdistill_stages::evaluation::SAMPLING_KEY;
use rmdistill_stages::evaluation::{
    SampleRows, cut_samples, cut_warning, samples_from, samples_table, summarize, summary_json, summary_table,
};
use rmdistill_stages::oracle::synthetic_oracle;
use rmdistill_stages::port::*;
use rmdistill_stages::reuse::Offered;
use rmdistill_stages::table;
use serde_json::{Value, json};
use std::path::Path;

/// How a message names the split asked for: `split "eval"`, or every split.
fn split_name(split: Option<&str>) -> String {
    split.map_or("the table (every split)".to_string(), |s| format!("split {s:?}"))
}

/// The evaluation prompts: distinct, in table order, filtered by split, the first `skip_prompts` left out, capped.
fn read_prompts(path: &Path, shown: &str, p: &Params) -> StageResult<Vec<String>> {
    let schema = table::read_schema(path)?;
    let has_split = schema.index_of("split").is_ok();
    let cols: Vec<&str> = if has_split { vec![table::PROMPT, "split"] } else { vec![table::PROMPT] };
    let t = table::read_table(path, Some(&cols))?;
    let prompts = lm_io::strings(&t, table::PROMPT, path)?;
    let splits = if has_split { Some(lm_io::strings(&t, "split", path)?) } else { None };
    let mut seen = std::collections::HashSet::new();
    let mut out = vec![];
    let mut available = std::collections::BTreeMap::<String, usize>::new();
    for (i, pr) in prompts.into_iter().enumerate() {
        if let Some(s) = &splits {
            *available.entry(s[i].clone()).or_default() += 1;
            if p.split.as_ref().is_some_and(|want| &s[i] != want) {
                continue;
            }
        }
        if pr.trim().is_empty() {
            return Err(StageError::invalid("prompts", format!("{shown}: row {i}: empty prompt")));
        }
        if seen.insert(pr.clone()) {
            out.push(pr);
        }
    }
    let distinct = out.len();
    out.drain(..p.skip_prompts.min(distinct));
    if let Some(n) = p.n_prompts {
        out.truncate(n);
    }
    if out.is_empty() && p.skip_prompts > 0 && distinct > 0 {
        return Err(StageError::invalid(
            "skip_prompts",
            format!(
                "{shown}: skipping {} prompts leaves none of the {distinct} distinct prompts of {}",
                p.skip_prompts,
                split_name(p.split.as_deref())
            ),
        ));
    }
    if out.is_empty() {
        return Err(StageError::invalid(
            "split",
            format!(
                "{shown}: no prompts to evaluate for {} (rows per split: {available:?})",
                split_name(p.split.as_deref())
            ),
        ));
    }
    Ok(out)
}

/// Scores (prompt, response) texts with a reward-model oracle.
struct RmOracle {
    model: RewardModel,
    codec: Codec,
}

impl RmOracle {
    fn score(&self, prompts: &[String], responses: &[String], batch_size: usize) -> StageResult<Vec<f64>> {
        let mut out = Vec::with_capacity(prompts.len());
        for (ps, rs) in prompts.chunks(batch_size).zip(responses.chunks(batch_size)) {
            let pi: Vec<Vec<i64>> = ps.iter().map(|s| self.codec.prompt(s)).collect::<StageResult<_>>()?;
            let ri: Vec<Vec<i64>> = rs.iter().map(|s| self.codec.response(s)).collect::<StageResult<_>>()?;
            let pr: Vec<&[i64]> = pi.iter().map(|v| v.as_slice()).collect();
            let rr: Vec<&[i64]> = ri.iter().map(|v| v.as_slice()).collect();
            out.extend(crate::rm_scoring::batch_rewards(&self.model, &self.codec, &pr, &rr)?);
        }
        Ok(out)
    }
}

fn read_info(dir: &Path) -> Value {
    std::fs::read_to_string(dir.join(lm_io::POLICY_INFO_FILE))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null)
}

/// The policy to evaluate: the one bound, or, with a `selection`, the candidate it chose for this method and ρ.
fn pick_policy(ctx: &dyn Ctx) -> StageResult<(&InputArtifact, Value)> {
    let cands: Vec<(&InputArtifact, Value)> = ctx.inputs("policy").iter().map(|a| (a, read_info(&a.path))).collect();
    let names = |c: &[(&InputArtifact, Value)]| c.iter().map(|(a, _)| a.node.as_str()).collect::<Vec<_>>().join(", ");
    let sel = lm_io::opt_input(ctx, "selection")?;
    let Some(sel) = sel else {
        return match cands.len() {
            0 => Err(StageError::invalid("policy", "no policy checkpoint is bound")),
            1 => Ok(cands.into_iter().next().unwrap()),
            n => Err(StageError::invalid(
                "policy",
                format!(
                    "{n} policies are bound ({}); bind `selection` (a select stage's output) to choose one, or sweep this stage over their axes",
                    names(&cands)
                ),
            )),
        };
    };
    let choices = rmdistill_stages::selection::read_selection(&sel.path)?;
    let num = |a: &InputArtifact, info: &Value, k: &str| {
        info.get(k).and_then(Value::as_f64).or_else(|| rmdistill_stages::data_io::coord_f64(&a.coords, k))
    };
    let mut chosen = vec![];
    let mut wanted = None;
    for (a, info) in &cands {
        let method = info
            .get("method")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| a.coords.get("method").and_then(Value::as_str).map(str::to_string));
        let Some(method) = method else {
            return Err(StageError::invalid(
                "policy",
                format!("{}: no `method` in its {}: not a policy checkpoint", a.node, lm_io::POLICY_INFO_FILE),
            ));
        };
        let rho = num(a, info, "rho");
        let c = rmdistill_stages::selection::require_choice(&choices, &method, rho).map_err(|e| {
            StageError::invalid(
                "selection",
                format!("{} ({}): {e} (selection {})", a.node, rmdistill_stages::paper::name(&method), sel.node),
            )
        })?;
        if c.is_config(num(a, info, &c.param), num(a, info, "gamma")) {
            chosen.push((*a, info.clone()));
        }
        wanted = Some(c.clone());
    }
    let w = wanted.ok_or_else(|| StageError::invalid("policy", "no policy checkpoint is bound"))?;
    match chosen.len() {
        1 => Ok(chosen.pop().unwrap()),
        0 => Err(StageError::invalid(
            "policy",
            format!(
                "the selection chose {} = {} for {} at ρ = {:?}, but no bound policy was trained with it (bound: {})",
                w.param,
                w.value,
                w.method,
                w.rho,
                names(&cands)
            ),
        )),
        n => Err(StageError::invalid(
            "policy",
            format!(
                "{n} bound policies match the selection's {} = {} ({}); sweep this stage over the axes that tell them apart",
                w.param,
                w.value,
                names(&chosen)
            ),
        )),
    }
}

/// π_ref's responses, lengths and oracle scores for this node's rows, from a bound `reference_samples` table: only
/// when its record equals this node's (same reference, prompts, oracle and sampling parameters) and its rows are this
/// node's (shard's) (prompt, sample) rows in order, so that the result is what sampling π_ref here would give.
fn reuse_reference_samples(
    bound: &InputArtifact,
    record: &Value,
    rows: &[(u32, u32)],
    prompts: &[String],
) -> StageResult<SampleRows> {
    let offered = Offered {
        slot: "reference_samples",
        bound,
        wanted: "the `samples` of an `evaluate` node with the same reference, prompts, oracle and sampling parameters",
    };
    offered.check_record(SAMPLING_KEY, record, "drawn")?;
    let t = samples_from(&table::read_table(&bound.path, None)?, &bound.path)?;
    offered.check_rows(t.prompt.len(), rows.len())?;
    for (j, &(i, k)) in rows.iter().enumerate() {
        if (t.prompt_idx[j], t.sample[j]) != (i, k) || t.prompt[j] != prompts[i as usize] {
            return Err(offered.refuse(format!(
                "row {j} is prompt {} sample {}, this node's is prompt {i} sample {k}",
                t.prompt_idx[j], t.sample[j]
            )));
        }
    }
    Ok(t)
}

pub fn run(ctx: &dyn Ctx) -> StageResult<Value> {
    let p = parse(ctx.params())?;
    let t0 = std::time::Instant::now();
    // read: the policy (or the one the selection chose), π_ref, the prompts, the oracle
    let (pol_in, info) = pick_policy(ctx)?;
    let ref_in = lm_io::one_input(ctx, "reference")?;
    let prompts_in = lm_io::one_input(ctx, "prompts")?;
    let oracle_in = lm_io::opt_input(ctx, "oracle")?;
    if p.oracle == OracleKind::RewardModel && oracle_in.is_none() {
        return Err(StageError::invalid(
            "oracle",
            "oracle = \"reward_model\" needs a reward-model checkpoint bound to the `oracle` input",
        ));
    }
    if p.oracle == OracleKind::Synthetic {
        // fail before sampling when the synthetic oracle is unavailable or its knobs are wrong
        synthetic_oracle("probe", "probe", &p.oracle_params)?;
    }
    let prompts = read_prompts(&prompts_in.path, &format!("the prompts of {}", prompts_in.node), &p)?;
    if let Some(n) = p.n_prompts
        && prompts.len() < n
    {
        ctx.warn(&format!(
            "n_prompts = {n}, but {} of {} holds only {} distinct prompts after skip_prompts = {}: {} are evaluated",
            split_name(p.split.as_deref()),
            prompts_in.node,
            prompts.len(),
            p.skip_prompts,
            prompts.len()
        ));
    }
    let record = sampling_record(&p, &ref_in.hash, &prompts_in.hash, oracle_in.map(|o| o.hash.as_str()));
    let device = lm_io::tch_device(ctx);
    tch::set_num_threads(ctx.threads().max(1) as i32);
    rmdistill_ml::seed_everything(p.seed);
    let m = load_models(&p, pol_in, ref_in, oracle_in, device)?;
    // compute: this shard's samples of both models (π_ref's reused when a `reference_samples` table is bound and
    // drawn alike), then the oracle's scores of both
    let (mut s, reused, total) = sample(ctx, &p, device, &m, &prompts, &record)?;
    score(ctx, &p, &m, reused.as_ref(), &mut s)?;
    let sum = summarize(&s);
    let cut = cut_samples(&s, p.max_new_tokens);
    let summary = summary_json(&sum, s.prompt.len(), p.split.as_deref(), &info, p.shard, p.shards, cut);
    // the tables carry how they were drawn: another evaluation reuses the samples by it, a report or a selection
    // checks by it that what it compares was drawn alike (artifact bytes are deterministic: wall time goes only into
    // the returned summary)
    let kv = [table::summary_kv("evaluate", &summary), vec![(SAMPLING_KEY.to_string(), record.to_string())]].concat();
    let mut summary = summary;
    summary["seconds"] = json!(t0.elapsed().as_secs_f64());
    // write
    table::write_table(&ctx.output_path("samples"), &samples_table(&s)?, &kv)?;
    table::write_table(&ctx.output_path("summary"), &summary_table(&sum, &info, p.split.as_deref())?, &kv)?;
    if let Some(w) = cut_warning(cut, s.prompt.len(), p.max_new_tokens) {
        ctx.warn(&w);
    }
    ctx.progress(total + 1, total + 1);
    ctx.log(&format!(
        "{} rows of {} prompts × {}: advantage {:+.4} [{:+.4}, {:+.4}], win rate {:.3}, length {:.1} vs {:.1}, KL {:.3} ({:.1} s)",
        s.prompt.len(),
        prompts.len(),
        p.samples_per_prompt,
        sum.advantage.mean,
        sum.advantage.ci_low,
        sum.advantage.ci_high,
        sum.win_rate,
        sum.mean_len,
        sum.ref_mean_len,
        sum.kl,
        t0.elapsed().as_secs_f64()
    ));
    Ok(summary)
}

/// The policy, π_ref and the reward-model oracle (when there is one), loaded and frozen, with their tokenizers.
struct Models {
    codec: Codec,
    policy: LanguageModel,
    reference: LanguageModel,
    rm: Option<RmOracle>,
    /// π_ref evaluated against itself: its samples are the reference's, draw for draw
    same_model: bool,
}

fn load_models(
    p: &Params,
    pol_in: &InputArtifact,
    ref_in: &InputArtifact,
    oracle_in: Option<&InputArtifact>,
    device: tch::Device,
) -> StageResult<Models> {
    let same_model = pol_in.path == ref_in.path || (!pol_in.hash.is_empty() && pol_in.hash == ref_in.hash);
    let codec = Codec::load(&ref_in.path, "reference")?.with_max_len(p.max_len);
    let pcodec = Codec::load(&pol_in.path, "policy")?.with_max_len(p.max_len);
    if pcodec.tok.vocab_size() != codec.tok.vocab_size() || pcodec.eos != codec.eos {
        return Err(StageError::invalid("policy", "the policy's tokenizer differs from the reference's"));
    }
    let load = |dir: &Path, slot: &str| {
        LanguageModel::load(dir, device).map_err(|e| StageError::invalid(slot, format!("{e:#}")))
    };
    let (mut policy, mut reference) = (load(&pol_in.path, "policy")?, load(&ref_in.path, "reference")?);
    policy.freeze();
    reference.freeze();
    codec.check_vocab(reference.net().vocab_size(), "reference")?;
    let rm = match (p.oracle, oracle_in) {
        (OracleKind::RewardModel, Some(o)) => {
            let mut model = RewardModel::load(&o.path, device, false)
                .map_err(|e| StageError::invalid("oracle", format!("{e:#}")))?;
            model.freeze();
            let c = Codec::load(&o.path, "oracle")?.with_max_len(p.max_len);
            c.check_vocab(model.config.vocab_size(), "oracle")?;
            Some(RmOracle { model, codec: c })
        }
        _ => None,
    };
    Ok(Models { codec, policy, reference, rm, same_model })
}

/// This shard's (prompt, sample) rows: the policy's samples with their log-probabilities under both models, and
/// π_ref's samples (reused from a bound `reference_samples` table, which is returned too, when it was drawn alike),
/// and the number of batches sampled.
fn sample(
    ctx: &dyn Ctx,
    p: &Params,
    device: tch::Device,
    m: &Models,
    prompts: &[String],
    record: &Value,
) -> StageResult<(SampleRows, Option<SampleRows>, u64)> {
    let Models { codec, policy, reference, same_model, .. } = m;
    let same_model = *same_model;
    // rows are (prompt, sample index), batched; a shard takes a contiguous block of batches
    let mut rows: Vec<(u32, u32)> = vec![];
    for i in 0..prompts.len() as u32 {
        for k in 0..p.samples_per_prompt as u32 {
            rows.push((i, k));
        }
    }
    let n_batches = rows.len().div_ceil(p.batch_size);
    let mine = rmdistill_stages::data_io::shard_range(n_batches, p.shard, p.shards);
    if mine.is_empty() {
        return Err(StageError::invalid(
            "shards",
            format!(
                "shard {} of {} has no work: {} rows make only {n_batches} batches of {}; use fewer shards or a smaller batch_size",
                p.shard,
                p.shards,
                rows.len(),
                p.batch_size
            ),
        ));
    }
    let prompt_ids: Vec<Vec<i64>> = prompts.iter().map(|s| codec.prompt(s)).collect::<StageResult<_>>()?;
    let mut s = SampleRows::default();
    let total = mine.len() as u64;
    let batches: Vec<(usize, &[(u32, u32)])> =
        rows.chunks(p.batch_size).enumerate().filter(|(bi, _)| mine.contains(bi)).collect();
    let my_rows: Vec<(u32, u32)> = batches.iter().flat_map(|(_, c)| c.iter().copied()).collect();
    let reused = lm_io::opt_input(ctx, "reference_samples")?
        .map(|b| reuse_reference_samples(b, record, &my_rows, prompts))
        .transpose()?;
    for (done, (bi, chunk)) in batches.into_iter().enumerate() {
        let ps: Vec<&[i64]> = chunk
            .iter()
            .map(|(i, _)| {
                rmdistill_stages::data_io::sampling_context(&prompt_ids[*i as usize], p.max_len, p.max_new_tokens)
            })
            .collect();
        let cfg = SampleConfig {
            max_new_tokens: p.max_new_tokens,
            temperature: p.temperature,
            top_p: p.top_p,
            seed: p.seed.wrapping_add(bi as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            eos_ids: vec![codec.eos],
            use_cache: true,
        };
        let gp = with_autocast(device, || generate(policy, &ps, codec.pad, &cfg))?;
        // π_ref's samples: read (reused), the policy's own (same model), or drawn
        let gr = match (&reused, same_model) {
            (None, false) => Some(with_autocast(device, || generate(reference, &ps, codec.pad, &cfg))?),
            _ => None,
        };
        let strip = |t: &Vec<i64>| -> Vec<i64> { t.iter().copied().filter(|&x| x != codec.eos).collect() };
        // the policy's sample with EOS when it stopped, scored under both models (for the KL estimate)
        let scored: Vec<Vec<i64>> =
            gp.tokens.iter().map(|t| if t.is_empty() { vec![codec.eos] } else { t.clone() }).collect();
        let sr: Vec<&[i64]> = scored.iter().map(|v| v.as_slice()).collect();
        // the sampler already has log π_θ of every token it drew (untempered, on the same context): a second pass
        // over the policy is needed only where the sampler cut a context further to fit the model or a sample is empty
        let room = rmdistill_ml::prompt_room(policy.config.max_positions(), p.max_new_tokens);
        let whole = |c: &[i64]| room.is_none_or(|r| c.len() <= r);
        let lp_pol = if ps.iter().all(|c| whole(c)) && gp.tokens.iter().all(|t| !t.is_empty()) {
            gp.logprobs.iter().map(|v| v.iter().sum()).collect()
        } else {
            lm_io::logprobs_nograd(policy, codec, &ps, &sr, Reduction::Sum, p.batch_size)?
        };
        let lp_ref = if same_model {
            lp_pol.clone()
        } else {
            lm_io::logprobs_nograd(reference, codec, &ps, &sr, Reduction::Sum, p.batch_size)?
        };
        for (j, (i, k)) in chunk.iter().enumerate() {
            let tp = strip(&gp.tokens[j]);
            let (ref_response, ref_len) = match (&reused, &gr) {
                (Some(r), _) => (r.ref_response[s.prompt.len()].clone(), r.ref_len[s.prompt.len()]),
                (None, Some(g)) => {
                    let tr = strip(&g.tokens[j]);
                    (codec.decode_sample(&tr)?, tr.len() as u32)
                }
                (None, None) => (codec.decode_sample(&tp)?, tp.len() as u32),
            };
            s.prompt_idx.push(*i);
            s.sample.push(*k);
            s.prompt.push(prompts[*i as usize].clone());
            s.policy_response.push(codec.decode_sample(&tp)?);
            s.ref_response.push(ref_response);
            s.policy_len.push(tp.len() as u32);
            s.ref_len.push(ref_len);
            s.policy_logp.push(lp_pol[j]);
            s.policy_logp_ref.push(lp_ref[j]);
        }
        ctx.progress(done as u64 + 1, total + 1);
    }
    Ok((s, reused, total))
}

/// The oracle's score of every policy sample and π_ref sample (π_ref's read with its samples when reused).
fn score(ctx: &dyn Ctx, p: &Params, m: &Models, reused: Option<&SampleRows>, s: &mut SampleRows) -> StageResult<()> {
    let (rm, same_model) = (&m.rm, m.same_model);
    match rm {
        Some(o) => s.policy_oracle = o.score(&s.prompt, &s.policy_response, p.batch_size)?,
        None => {
            for i in 0..s.prompt.len() {
                s.policy_oracle.push(synthetic_oracle(&s.prompt[i], &s.policy_response[i], &p.oracle_params)?);
            }
        }
    }
    s.ref_oracle = match (reused, rm) {
        (Some(r), _) => r.ref_oracle.clone(),
        (None, _) if same_model => s.policy_oracle.clone(),
        (None, Some(o)) => o.score(&s.prompt, &s.ref_response, p.batch_size)?,
        (None, None) => (0..s.prompt.len())
            .map(|i| synthetic_oracle(&s.prompt[i], &s.ref_response[i], &p.oracle_params))
            .collect::<StageResult<_>>()?,
    };
    if let Some(o) = rm {
        o.codec.warn_unknown(ctx, "the samples the oracle scored");
        o.codec.warn_truncated(ctx, "the samples the oracle scored");
    }
    Ok(())
}
