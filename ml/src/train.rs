//! The training loop pieces every trainer shares (SFT, reward models, policies): AdamW, linear warm-up then
//! linear or cosine decay, global-norm gradient clipping, gradient accumulation, a loud failure on NaN/inf, and one
//! metrics row per optimizer step. Deterministic on CPU for a fixed seed and thread count.

use crate::model::NO_DECAY_GROUP;
use crate::optim::{AdamWConfig, FlatAdamW, FlatParam};
use anyhow::{Result, bail};
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;
use tch::{Kind, Tensor, nn};

/// Learning-rate decay after warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    #[default]
    Linear,
    Cosine,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct OptimConfig {
    pub lr: f64,
    /// Decoupled weight decay, applied to weight matrices and embeddings only (not to biases or norms).
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub warmup_steps: usize,
    /// Optimizer steps in the whole run (the decay reaches `min_lr_ratio · lr` there).
    pub total_steps: usize,
    pub schedule: Schedule,
    pub min_lr_ratio: f64,
    /// Global L2 norm to clip gradients to; `None` for no clipping.
    pub grad_clip: Option<f64>,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 1e-3,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            warmup_steps: 0,
            total_steps: 1000,
            schedule: Schedule::Linear,
            min_lr_ratio: 0.0,
            grad_clip: Some(1.0),
            grad_accum: 1,
        }
    }
}

impl OptimConfig {
    /// Learning rate for optimizer step `step` (0-based): linear warm-up from lr/warmup, then the decay.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
        let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
        let floor = self.min_lr_ratio;
        let factor = match self.schedule {
            Schedule::Constant => 1.0,
            Schedule::Linear => 1.0 - (1.0 - floor) * progress,
            Schedule::Cosine => floor + (1.0 - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        };
        self.lr * factor
    }
}

/// One row per optimizer step.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepMetrics {
    /// 1-based optimizer step.
    pub step: usize,
    pub lr: f64,
    /// Mean of the micro-batch losses of this step.
    pub loss: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub seconds: f64,
    /// Loss-specific values (margins, log-probs, KL estimate, chosen ensemble member, ...), averaged over micro-batches.
    #[serde(flatten)]
    pub extra: BTreeMap<String, f64>,
}

/// AdamW plus schedule, clipping, accumulation and checks, over the trainable variables of one `VarStore`.
///
/// The variables are moved into one flat buffer ([`FlatAdamW`]) when the trainer is built; they stay the same
/// tensors for the model, the store and checkpoint saving.
pub struct Trainer {
    opt: FlatAdamW,
    cfg: OptimConfig,
    step: usize,
    micro: usize,
    loss_sum: f64,
    extra_sum: BTreeMap<String, f64>,
    started: Instant,
    /// Every completed step's metrics, in order.
    pub history: Vec<StepMetrics>,
}

impl Trainer {
    pub fn new(vs: &nn::VarStore, cfg: OptimConfig) -> Result<Self> {
        check_config(&cfg)?;
        crate::device::tune_allocator();
        let params = {
            let vars = vs.variables_.lock().unwrap();
            let names: HashMap<usize, &String> =
                vars.named_variables.iter().map(|(n, t)| (t.data_ptr() as usize, n)).collect();
            let mut params: Vec<FlatParam> = vars
                .trainable_variables
                .iter()
                .filter(|v| v.tensor.requires_grad())
                .map(|v| FlatParam {
                    name: names.get(&(v.tensor.data_ptr() as usize)).map_or_else(|| "?".into(), |n| (*n).clone()),
                    tensor: v.tensor.shallow_clone(),
                    decay: v.group != NO_DECAY_GROUP,
                })
                .collect();
            params.sort_by(|a, b| a.name.cmp(&b.name));
            params
        };
        let opt = FlatAdamW::new(params, None, adamw_config(&cfg))?;
        Ok(Trainer {
            opt,
            cfg,
            step: 0,
            micro: 0,
            loss_sum: 0.0,
            extra_sum: BTreeMap::new(),
            started: Instant::now(),
            history: vec![],
        })
    }

    /// Optimizer steps taken so far.
    pub fn step(&self) -> usize {
        self.step
    }
    pub fn config(&self) -> &OptimConfig {
        &self.cfg
    }
    pub fn is_done(&self) -> bool {
        self.step >= self.cfg.total_steps
    }

    /// Back-propagates one micro-batch's mean loss (scaled by 1/grad_accum), with optional extra metrics; after
    /// `grad_accum` micro-batches takes an optimizer step and returns its metrics row. Fails, naming the step, on
    /// a non-finite loss or gradient instead of corrupting the weights.
    pub fn backward(&mut self, loss: &Tensor, extra: &[(&str, f64)]) -> Result<Option<StepMetrics>> {
        let value = f64::try_from(loss.detach().to_kind(Kind::Double))?;
        if !value.is_finite() {
            bail!("non-finite loss ({value}) at optimizer step {}, micro-batch {}", self.step + 1, self.micro + 1);
        }
        if self.micro == 0 {
            self.opt.zero_grad();
        }
        if self.cfg.grad_accum == 1 {
            loss.backward()
        } else {
            (loss / self.cfg.grad_accum as f64).backward()
        }
        self.loss_sum += value;
        for (k, v) in extra {
            *self.extra_sum.entry((*k).to_string()).or_default() += v;
        }
        self.micro += 1;
        if self.micro < self.cfg.grad_accum {
            return Ok(None);
        }
        Ok(Some(self.optimizer_step()?))
    }

    /// Attaches validation metrics (e.g. `val_loss`, `val_accuracy`) to the latest step's row: periodic
    /// validation is the caller's loop, its results live in the same table.
    pub fn log_eval(&mut self, metrics: &[(&str, f64)]) {
        if let Some(row) = self.history.last_mut() {
            row.extra.extend(metrics.iter().map(|(k, v)| ((*k).to_string(), *v)));
        }
    }

    fn optimizer_step(&mut self) -> Result<StepMetrics> {
        let lr = self.cfg.lr_at(self.step);
        let grad_norm = clip_and_step(&mut self.opt, &self.cfg, lr, self.step)?[0];
        self.step += 1;
        let n = self.micro as f64;
        let row = StepMetrics {
            step: self.step,
            lr,
            loss: self.loss_sum / n,
            grad_norm,
            seconds: self.started.elapsed().as_secs_f64(),
            extra: std::mem::take(&mut self.extra_sum).into_iter().map(|(k, v)| (k, v / n)).collect(),
        };
        self.micro = 0;
        self.loss_sum = 0.0;
        self.history.push(row.clone());
        Ok(row)
    }
}

pub(crate) fn check_config(cfg: &OptimConfig) -> Result<()> {
    if cfg.grad_accum == 0 || cfg.total_steps == 0 {
        bail!("grad_accum and total_steps must be positive");
    }
    Ok(())
}

pub(crate) fn adamw_config(cfg: &OptimConfig) -> AdamWConfig {
    AdamWConfig { beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.eps, weight_decay: cfg.weight_decay }
}

/// The optimizer step every trainer shares: per-model gradient norms (an error naming the model, step and
/// parameters when one is not finite), per-model clipping to `cfg.grad_clip`, then AdamW at `lr`. Returns the norms
/// before clipping.
pub(crate) fn clip_and_step(opt: &mut FlatAdamW, cfg: &OptimConfig, lr: f64, step: usize) -> Result<Vec<f64>> {
    let norms = opt.grad_norms()?;
    if let Some(k) = norms.iter().position(|n| !n.is_finite()) {
        let bad = opt.non_finite_params(k as i64);
        let which = if norms.len() > 1 { format!(" of model {k}") } else { String::new() };
        bail!(
            "non-finite gradient norm{which} at optimizer step {} (first parameters affected: {})",
            step + 1,
            bad.iter().take(5).copied().collect::<Vec<_>>().join(", ")
        );
    }
    if let Some(max) = cfg.grad_clip
        && norms.iter().any(|&n| n > max)
    {
        let coef: Vec<f64> = norms.iter().map(|&n| if n > max { max / (n + 1e-6) } else { 1.0 }).collect();
        opt.scale_grads(&coef);
    }
    opt.step(lr);
    Ok(norms)
}

/// Fixes libtorch's seed and intra-op thread count: together they make CPU training repeatable bit for bit.
pub fn deterministic_cpu(seed: u64, threads: i32) {
    tch::set_num_threads(threads);
    crate::device::seed_everything(seed);
}
