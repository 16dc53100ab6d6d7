//! The training loop pieces every trainer shares (SFT, reward models, policies): AdamW, linear warm-up then
//! linear or cosine decay, global-norm gradient clipping, gradient accumulation, a loud failure on NaN/inf, and one
//! metrics row per optimizer step. Deterministic on CPU for a fixed seed and thread count.

use crate::model::NO_DECAY_GROUP;
use anyhow::{Result, bail};
use std::collections::BTreeMap;
use std::time::Instant;
use tch::{Kind, Tensor, nn, nn::OptimizerConfig};

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
pub struct Trainer {
    opt: nn::Optimizer,
    cfg: OptimConfig,
    params: Vec<(String, Tensor)>,
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
        if cfg.grad_accum == 0 || cfg.total_steps == 0 {
            bail!("grad_accum and total_steps must be positive");
        }
        let mut opt =
            nn::AdamW { beta1: cfg.beta1, beta2: cfg.beta2, wd: cfg.weight_decay, eps: cfg.eps, amsgrad: false }
                .build(vs, cfg.lr)?;
        opt.zero_grad(); // registers the parameters and so creates their groups
        let has_no_decay = vs.variables_.lock().unwrap().trainable_variables.iter().any(|v| v.group == NO_DECAY_GROUP);
        if has_no_decay {
            opt.set_weight_decay_group(NO_DECAY_GROUP, 0.0);
        }
        let mut params: Vec<(String, Tensor)> = vs.variables().into_iter().filter(|(_, t)| t.requires_grad()).collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let mut t = Trainer {
            opt,
            cfg,
            params,
            step: 0,
            micro: 0,
            loss_sum: 0.0,
            extra_sum: BTreeMap::new(),
            started: Instant::now(),
            history: vec![],
        };
        t.opt.set_lr(t.cfg.lr_at(0));
        Ok(t)
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
        (loss / self.cfg.grad_accum as f64).backward();
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
        let grad_norm = tch::no_grad(|| -> Result<f64> {
            let grads: Vec<Tensor> = self.params.iter().map(|(_, p)| p.grad()).filter(|g| g.defined()).collect();
            if grads.is_empty() {
                bail!("no gradients at step {}: is the loss connected to the parameters?", self.step + 1);
            }
            let sq: Vec<Tensor> =
                grads.iter().map(|g| g.to_kind(Kind::Float).pow_tensor_scalar(2).sum(Kind::Float)).collect();
            let norm = f64::try_from(Tensor::stack(&sq, 0).sum(Kind::Float).sqrt())?;
            if !norm.is_finite() {
                let bad: Vec<&str> = self
                    .params
                    .iter()
                    .filter(|(_, p)| p.grad().defined() && !bool::try_from(p.grad().isfinite().all()).unwrap_or(false))
                    .map(|(n, _)| n.as_str())
                    .take(5)
                    .collect();
                bail!(
                    "non-finite gradient norm at optimizer step {} (first parameters affected: {})",
                    self.step + 1,
                    bad.join(", ")
                );
            }
            if let Some(max) = self.cfg.grad_clip {
                if norm > max {
                    let c = max / (norm + 1e-6);
                    for mut g in grads {
                        let _ = g.g_mul_scalar_(c);
                    }
                }
            }
            Ok(norm)
        })?;
        self.opt.set_lr(lr);
        self.opt.step();
        self.opt.zero_grad();
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

/// Fixes libtorch's seed and intra-op thread count: together they make CPU training repeatable bit for bit.
pub fn deterministic_cpu(seed: u64, threads: i32) {
    tch::set_num_threads(threads);
    crate::device::seed_everything(seed);
}
