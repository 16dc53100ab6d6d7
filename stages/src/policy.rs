//! `policy`: trains π_θ from the reference policy on `D_ρ` with one method of METHOD.md (DPO, IPO, d-DPO, p-DPO,
//! dp-DPO, e-DPO); the losses are in the worker's `losses` module.
//!
//! Inputs: `pairs` (D_ρ: pair_id, prompt, response_a, response_b, label), `reference` (Dir checkpoint, π_ref and the
//! start of π_θ), `rewards` (precompute.rewards: pair_id, ref_logp_a/b, reward_a/b as List<Float64> per member),
//! `ref_samples` (precompute.ref_samples: prompt, response, ref_logp). `rewards` is needed by the distillation
//! methods and by `kl_source = "pairs"`; without it (DPO, IPO, p-DPO) the reference log-probs are computed here.
//! `ref_samples` is needed by the pessimistic methods with `kl_source = "ref_samples"` (the default); when bound it
//! also gives every method's KL estimate as a metric.
//!
//! Label-based methods train on (y_w, y_l) from `label`; distillation methods on (response_a, response_b) with the
//! members' scores (no label used). Every optimizer step logs: loss, base_loss (before the KL term), margin
//! (`β·(logr_w − logr_l)` where labels exist), accuracy (share of positive margins), logp_chosen/logp_rejected
//! (mean `log π_θ` of y_w / y_l), kl (estimate), gamma, and for e-DPO chosen_member, member_loss_<m> and
//! best_member_<m> (share of the batch's examples best matched by member m).
//!
//! The `kl` metric is `mean(log π_ref − log π_θ)` on the π_ref samples the KL term trains on (METHOD.md), so it is an
//! in-sample figure: after the first epoch the pessimistic methods have raised π_θ's likelihood of exactly those
//! samples, and it can fall below 0 (e.g. −0.30 at the end of a p-DPO candidate of the default run), which a KL's
//! expectation on fresh samples cannot. The KL the report compares methods by is `evaluate`'s, on fresh samples of π_θ.
//!
//! With `selection` bound (a `select` stage's output), the node trains with the β (τ for IPO) and, where chosen, γ
//! that validation chose for its method and ρ (ρ from the `pairs` input); the parameters must then not set them.
//! The runner applies the choice before keying the node ([`Stage::bind`]), so the key holds the chosen values and
//! not the selection: the final policy of a seed the candidates were trained on is the chosen candidate's cache
//! entry, not a second training of it, and a new selection that chooses the same values re-runs nothing.
//!
//! Outputs: `model` (Dir: a Hugging Face checkpoint with the reference's tokenizer, plus `rmdistill_policy.json`
//! recording method and hyper-parameters) and `metrics` (Parquet, one row per optimizer step).
//!
//! Deterministic on CPU for a given seed and thread count (seeded shuffles and KL-sample draws, libtorch seeded).
use crate::method::{GammaSchedule, LrSchedule, Method, Reduction};
use crate::port::*;
use serde::Deserialize;
use serde_json::{Map, Value};

pub struct Policy;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum KlSource {
    /// Responses sampled once from π_ref per training prompt (precompute.ref_samples), for the prompts of the step's
    /// own pairs: one sample per pair (drawn among its prompt's samples when there are several). Sharing the pairs'
    /// prompts, these rows pack into the pairs' sequences (`prompt ++ y_1 ++ y_2 ++ y_ref`), so the KL term costs
    /// its response tokens only, not a second pass over the prompts.
    #[default]
    RefSamples,
    /// `kl_batch_size` of the same samples per step, drawn uniformly over all prompts (rows of their own).
    RefSamplesUniform,
    /// The pair data's own responses (valid when they were sampled from π_ref).
    Pairs,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// The loss π_θ is trained with: DPO, IPO, d-DPO, p-DPO, dp-DPO or e-DPO (METHOD.md).
    pub method: Method,
    /// β: scale of the implicit reward β·(log π_θ − log π_ref) in DPO, d-DPO, p-DPO, dp-DPO and e-DPO (IPO uses τ).
    #[serde(default = "d_beta")]
    pub beta: f64,
    /// τ of IPO: the log-ratio difference is regressed onto 1/(2τ); unused by the other methods.
    #[serde(default = "d_tau")]
    pub tau: f64,
    /// γ: weight of the forward-KL term γ·KL(π_ref‖π_θ), required by p-DPO, dp-DPO and e-DPO; unused by the others.
    #[serde(default)]
    pub gamma: Option<GammaSchedule>,
    /// Samples for the KL term: "ref_samples" (precompute.ref_samples of the step's own prompts),
    /// "ref_samples_uniform" (`kl_batch_size` of them drawn over all prompts) or "pairs" (D_ρ's own responses).
    #[serde(default)]
    pub kl_source: KlSource,
    /// Optimizer steps; default: `epochs` passes over D_ρ.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub steps: Option<usize>,
    /// Passes over D_ρ when `steps` is not set.
    #[serde(default = "d_epochs")]
    #[schemars(range(min = 1))]
    pub epochs: usize,
    /// Peak AdamW learning rate (> 0), reached after warm-up.
    #[serde(default = "d_lr")]
    pub lr: f64,
    /// Pairs per optimizer step (at most the number of pairs in D_ρ).
    #[serde(default = "d_batch")]
    #[schemars(range(min = 1))]
    pub batch_size: usize,
    /// KL samples per step with kl_source = "ref_samples_uniform" (default: batch_size).
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub kl_batch_size: Option<usize>,
    /// Steps of linear learning-rate warm-up at the start (0: none).
    #[serde(default)]
    pub warmup_steps: usize,
    /// Global L2 norm the gradients are clipped to (> 0).
    #[serde(default = "d_clip")]
    pub grad_clip: f64,
    /// AdamW decoupled weight decay (≥ 0; weight matrices and embeddings only).
    #[serde(default)]
    pub weight_decay: f64,
    /// Learning-rate decay after warm-up: "linear" or "cosine" to 0 at the last step; "constant" (the default): none.
    #[serde(default)]
    pub lr_schedule: Option<LrSchedule>,
    /// Sum over response tokens (paper) or per-token mean (TRL's IPO).
    #[serde(default)]
    pub reduction: Reduction,
    /// Tokens of prompt + response kept per sequence (the prompt loses its start first; at most the model's positions).
    #[serde(default = "d_max_len")]
    #[schemars(range(min = 2))]
    pub max_len: usize,
    /// Seed of libtorch, the batch shuffles and the KL-sample draws.
    #[serde(default)]
    pub seed: u64,
    /// Fail when the precomputed reference log-probs do not match the reference model on the first batch.
    #[serde(default = "d_true")]
    pub check_ref_logp: bool,
    /// With a bound `selection`: the method whose choice applies, as the selection names it (the `method` coordinate
    /// of the evaluations it chose from, e.g. "d-dpo-oracle" for an ablation of d-DPO); default: `method`. Used to
    /// bind the choice, then dropped, so it is not part of the cache key.
    #[serde(default)]
    pub selection_method: Option<String>,
}
fn d_beta() -> f64 {
    0.1
}
fn d_tau() -> f64 {
    0.1
}
fn d_epochs() -> usize {
    1
}
fn d_lr() -> f64 {
    1e-4
}
fn d_batch() -> usize {
    16
}
fn d_clip() -> f64 {
    1.0
}
fn d_max_len() -> usize {
    512
}
fn d_true() -> bool {
    true
}

fn positive(field: &str, v: f64) -> StageResult<()> {
    if v > 0.0 && v.is_finite() {
        Ok(())
    } else {
        Err(StageError::invalid(field, format!("must be a finite number > 0, got {v}")))
    }
}

/// The parameters with the bound selection's choice for this method and ρ applied (ρ from the `pairs` input's
/// coordinates, else from what `subsample` recorded in the file).
fn bind_selection(params: &Map<String, Value>, inputs: &dyn BindInputs) -> StageResult<Map<String, Value>> {
    let method: Method = serde_json::from_value(params.get("method").cloned().unwrap_or(Value::Null))
        .map_err(|e| StageError::invalid("method", e.to_string()))?;
    let rho = match inputs.coords("pairs").first().and_then(|c| crate::data_io::coord_f64(c, "rho")) {
        Some(r) => Some(r),
        None => match inputs.open("pairs")?.first() {
            Some(p) => recorded_rho(&p.path)?,
            None => None,
        },
    };
    let sel = inputs.open("selection")?;
    let sel = sel.first().ok_or_else(|| StageError::invalid("selection", "bound to nothing"))?;
    let chosen = crate::selection::read_selection_memo(&sel.hash, &sel.path)?;
    let mut params = params.clone();
    let name = match params.remove("selection_method") {
        Some(Value::String(s)) => s,
        Some(other) => return Err(StageError::invalid("selection_method", format!("must be a string, got {other}"))),
        None => method.name().to_string(),
    };
    let (params, _) = crate::selection::apply_choice(&params, &chosen, &name, rho)
        .map_err(|e| StageError::invalid("selection", format!("{} ({}): {e}", sel.node, sel.path.display())))?;
    Ok(params)
}

/// ρ of a `D_ρ` table as `subsample` recorded it in the file's metadata (`None` for pairs from elsewhere).
pub fn recorded_rho(pairs: &std::path::Path) -> StageResult<Option<f64>> {
    Ok(crate::table::read_kv(pairs)?.into_iter().find(|(k, _)| k == "rmdistill.rho").and_then(|(_, v)| v.parse().ok()))
}

/// The checks made before any work. γ may be missing here: a bound `selection` can choose it (the run checks again
/// with the choice applied, and says what is missing then).
pub fn validate(params: &Map<String, Value>) -> StageResult<()> {
    let mut p = params.clone();
    p.entry("gamma").or_insert(Value::from(0.0));
    parse(&p).map(|_| ())
}

pub fn parse(params: &Map<String, Value>) -> StageResult<Params> {
    let p: Params = parse_params(params)?;
    positive("beta", p.beta)?;
    positive("tau", p.tau)?;
    positive("lr", p.lr)?;
    if let Some(g) = &p.gamma {
        for v in g.values() {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(StageError::invalid("gamma", format!("must be finite and >= 0, got {v}")));
            }
        }
    }
    if p.method.pessimistic() && p.gamma.is_none() {
        return Err(StageError::invalid(
            "gamma",
            format!(
                "{} has a forward-KL term: set its weight gamma (a number, or {{ start = .., end = .. }})",
                p.method
            ),
        ));
    }
    if p.batch_size == 0 {
        return Err(StageError::invalid("batch_size", "must be >= 1"));
    }
    if p.kl_batch_size == Some(0) {
        return Err(StageError::invalid("kl_batch_size", "must be >= 1"));
    }
    if p.kl_batch_size.is_some() && p.kl_source != KlSource::RefSamplesUniform {
        return Err(StageError::invalid(
            "kl_batch_size",
            "applies to kl_source = \"ref_samples_uniform\" only: with \"ref_samples\" (the default) the KL term \
             takes one π_ref sample per pair of the step, with \"pairs\" the step's own responses",
        ));
    }
    if p.steps == Some(0) || p.epochs == 0 {
        return Err(StageError::invalid(if p.steps == Some(0) { "steps" } else { "epochs" }, "must be >= 1"));
    }
    if p.max_len < 2 {
        return Err(StageError::invalid("max_len", "must be >= 2"));
    }
    if !(p.grad_clip > 0.0 && p.grad_clip.is_finite()) {
        return Err(StageError::invalid("grad_clip", format!("must be a finite number > 0, got {}", p.grad_clip)));
    }
    if !(p.weight_decay >= 0.0 && p.weight_decay.is_finite()) {
        return Err(StageError::invalid(
            "weight_decay",
            format!("must be a finite number >= 0, got {}", p.weight_decay),
        ));
    }
    Ok(p)
}

impl Stage for Policy {
    fn kind(&self) -> &'static str {
        "policy"
    }
    fn doc(&self) -> &'static str {
        "train a policy from π_ref on D_ρ with DPO, IPO, d-DPO, p-DPO, dp-DPO or e-DPO"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        &[
            InputSpec { name: "pairs", required: true, many: false, doc: "D_ρ (pairs table with label)" },
            InputSpec { name: "reference", required: true, many: false, doc: "reference policy checkpoint (Dir)" },
            InputSpec {
                name: "rewards",
                required: false,
                many: false,
                doc: "precompute.rewards: reference log-probs and member rewards",
            },
            InputSpec {
                name: "ref_samples",
                required: false,
                many: false,
                doc: "precompute.ref_samples: samples from π_ref for the KL term",
            },
            InputSpec {
                name: "selection",
                required: false,
                many: false,
                doc: "select.selection: train with the β/τ (and γ) chosen by validation for this method and ρ",
            },
        ]
    }
    fn binding_slots(&self) -> &'static [&'static str] {
        &["selection"]
    }
    fn bind(&self, params: &Map<String, Value>, inputs: &dyn BindInputs) -> StageResult<Map<String, Value>> {
        bind_selection(params, inputs)
    }
    fn outputs(&self) -> &'static [OutputSpec] {
        &[
            OutputSpec { name: "model", kind: ArtifactKind::Dir, doc: "trained policy checkpoint" },
            OutputSpec { name: "metrics", kind: ArtifactKind::File, doc: "per-step training metrics (Parquet)" },
        ]
    }
    fn validate(&self, params: &Map<String, Value>) -> StageResult<()> {
        validate(params)
    }
    fn validate_bound(&self, params: &Map<String, Value>, bound: &dyn Fn(&str) -> bool) -> StageResult<()> {
        if bound("selection") {
            return Ok(());
        }
        // nothing can choose γ then, and nothing consumes selection_method
        if params.contains_key("selection_method") {
            return Err(StageError::invalid(
                "selection_method",
                "names whose choice a bound `selection` applies, but no `selection` input is bound: bind one or \
                 remove it",
            ));
        }
        parse(params).map(|_| ())
    }
    fn wants_gpu(&self) -> bool {
        true
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
    use serde_json::json;

    /// Each optimiser setting out of range is refused under its own name.
    #[test]
    fn grad_clip_and_weight_decay_are_refused_by_name() {
        let field = |extra: Value| {
            let mut v = json!({"method": "dpo"});
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            match parse(v.as_object().unwrap()) {
                Err(StageError::Invalid { field, .. }) => Some(field),
                _ => None,
            }
        };
        assert_eq!(field(json!({"grad_clip": 0.0})), Some("grad_clip".to_string()));
        assert_eq!(field(json!({"grad_clip": -1.0})), Some("grad_clip".to_string()));
        assert_eq!(field(json!({"weight_decay": -0.1})), Some("weight_decay".to_string()));
        assert_eq!(field(json!({"grad_clip": 0.5, "weight_decay": 0.01})), None);
    }
}
