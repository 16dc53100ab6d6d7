//! AdamW over one flat buffer: every trainable parameter of a model (or of K stacked models) becomes a view into one
//! tensor, and so does every gradient, so that the AdamW update and gradient clipping are a handful of whole-buffer
//! operations instead of a dozen small operations per parameter. On the tiny models of the embedded experiment the
//! per-operation overhead of those small operations is a measurable part of a step (`ml/README.md`).
//!
//! Each parameter (`[K, ...]` for K stacked models) is one dense block of the buffer, weight-decayed parameters
//! first. Per-model gradient norms are one row-wise reduction per parameter, summed per model on the host in a fixed
//! order, and per-model clipping is one multiply by a per-element coefficient: each model is clipped by its own norm
//! and gets bit for bit the numbers it would get if trained alone (`ml/tests/batched.rs`).
//!
//! How the views are made: `Tensor::set_data` re-points a parameter (and, after the first backward pass, its
//! gradient) at a slice of the buffer while keeping its autograd identity, so the model code, the `VarStore` and
//! checkpoint saving see the same tensors as before. From then on autograd accumulates into the gradient slices in
//! place (`grad += new`), and [`FlatAdamW::zero_grad`] zeroes the buffer rather than dropping the gradients.
//!
//! The update is torch's AdamW (decoupled weight decay, bias-corrected moments) written with `lerp` for the moments,
//! as torch's own foreach/fused implementations do.

use anyhow::{Result, bail};
use tch::{Kind, Tensor};

/// A trainable parameter handed to [`FlatAdamW::new`].
pub struct FlatParam {
    pub name: String,
    /// The parameter itself (a leaf that requires grad). With `k` models its first dimension is `k`.
    pub tensor: Tensor,
    /// Whether decoupled weight decay applies (weights and embeddings; not biases and norms).
    pub decay: bool,
}

/// AdamW hyper-parameters that stay fixed during a run (the learning rate is given at each step).
#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

/// Parameters, gradients and AdamW moments of `k` models in flat buffers (see the module doc).
pub struct FlatAdamW {
    k: i64,
    names: Vec<String>,
    /// Each parameter's `(offset, numel)` in the buffers (`numel` counts all `k` models).
    spans: Vec<(i64, i64)>,
    params: Vec<Tensor>,
    /// Buffer prefix `[0, decay_len)` gets weight decay.
    decay_len: i64,
    /// Parameters per model.
    per_model: i64,
    data: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    scratch: Tensor,
    /// For per-model clipping (k > 1): how many consecutive elements each (parameter, model) run has.
    runs: Option<Tensor>,
    /// Parameters whose gradient is not a view of `grad` yet (none had been computed when last looked at).
    pending: Vec<usize>,
    cfg: AdamWConfig,
    steps: i32,
}

impl FlatAdamW {
    /// Moves `params` into one buffer. With `k = Some(K)` each parameter is `[K, ...]` (K stacked models, slice k =
    /// model k); with `None` there is one model and parameters have any shape.
    pub fn new(mut params: Vec<FlatParam>, k: Option<i64>, cfg: AdamWConfig) -> Result<Self> {
        if params.is_empty() {
            bail!("no trainable parameters");
        }
        // decayed parameters first, each group in the given order
        params.sort_by_key(|p| !p.decay);
        let kk = k.unwrap_or(1);
        let first = &params[0].tensor;
        let (device, kind) = (first.device(), first.kind());
        let mut spans = Vec::with_capacity(params.len());
        let (mut n, mut decay_len) = (0i64, 0i64);
        for p in &params {
            let size = p.tensor.size();
            if k.is_some() && size.first() != Some(&kk) {
                bail!("parameter {} has shape {size:?}, expected a leading dimension of {kk} models", p.name);
            }
            if p.tensor.kind() != kind || p.tensor.device() != device {
                bail!(
                    "parameter {} is {:?} on {:?}, the others {kind:?} on {device:?}",
                    p.name,
                    p.tensor.kind(),
                    p.tensor.device()
                );
            }
            let numel = p.tensor.numel() as i64;
            spans.push((n, numel));
            n += numel;
            if p.decay {
                decay_len = n;
            }
        }
        let opts = (kind, device);
        let data = Tensor::zeros([n], opts);
        let mut tensors = Vec::with_capacity(params.len());
        tch::no_grad(|| {
            for (p, &(off, numel)) in params.iter().zip(&spans) {
                let mut t = p.tensor.shallow_clone();
                let mut view = data.narrow(0, off, numel).view(t.size().as_slice());
                view.copy_(&t.detach());
                t.set_data(&view);
                tensors.push(t);
            }
        });
        let runs = (kk > 1).then(|| {
            let r: Vec<i64> =
                spans.iter().flat_map(|&(_, numel)| std::iter::repeat_n(numel / kk, kk as usize)).collect();
            Tensor::from_slice(&r).to_device(device)
        });
        let pending = (0..spans.len()).collect();
        Ok(FlatAdamW {
            k: kk,
            names: params.into_iter().map(|p| p.name).collect(),
            spans,
            params: tensors,
            decay_len,
            per_model: n / kk,
            grad: Tensor::zeros([n], opts),
            exp_avg: Tensor::zeros([n], opts),
            exp_avg_sq: Tensor::zeros([n], opts),
            scratch: Tensor::zeros([n], opts),
            data,
            runs,
            pending,
            cfg,
            steps: 0,
        })
    }

    /// Number of models.
    pub fn num_models(&self) -> i64 {
        self.k
    }
    /// Parameters per model.
    pub fn numel_per_model(&self) -> i64 {
        self.per_model
    }
    /// Optimizer steps taken.
    pub fn steps(&self) -> i32 {
        self.steps
    }

    /// Makes gradients computed since the last look views of the gradient buffer (their values are kept).
    fn adopt_grads(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let mut still = vec![];
        tch::no_grad(|| {
            for &i in &self.pending {
                let mut g = self.params[i].grad();
                if !g.defined() {
                    still.push(i);
                    continue;
                }
                let (off, numel) = self.spans[i];
                let mut view = self.grad.narrow(0, off, numel).view(g.size().as_slice());
                view.copy_(&g);
                g.set_data(&view);
            }
        });
        self.pending = still;
    }

    /// Zeroes every gradient (keeping them as views of the buffer).
    pub fn zero_grad(&mut self) {
        self.adopt_grads();
        let _ = self.grad.zero_();
        for &i in &self.pending {
            let mut g = self.params[i].grad();
            if g.defined() {
                let _ = g.detach_().zero_();
            }
        }
    }

    /// Per-model global L2 norms of the gradients (a parameter whose gradient was never computed counts as zero):
    /// one row-wise sum of squares per parameter, then per model a sum over parameters in a fixed order in f64.
    pub fn grad_norms(&mut self) -> Result<Vec<f64>> {
        self.adopt_grads();
        let sums = tch::no_grad(|| {
            let _ = self.grad.square_out(&self.scratch);
            let rows: Vec<Tensor> = self
                .spans
                .iter()
                .map(|&(off, numel)| {
                    self.scratch.narrow(0, off, numel).view([self.k, numel / self.k]).sum_dim_intlist(
                        1,
                        false,
                        Kind::Float,
                    )
                })
                .collect();
            Tensor::stack(&rows, 0) // [params, k]
        });
        let sums = Vec::<f64>::try_from(sums.to_kind(Kind::Double).to_device(tch::Device::Cpu).view([-1]))?;
        let k = self.k as usize;
        Ok((0..k).map(|m| sums.iter().skip(m).step_by(k).sum::<f64>().sqrt()).collect())
    }

    /// Names of model `model`'s parameters whose gradient holds a NaN or an infinity (for error messages).
    pub fn non_finite_params(&mut self, model: i64) -> Vec<&str> {
        self.adopt_grads();
        self.spans
            .iter()
            .zip(&self.names)
            .filter(|((off, n), _)| {
                let block = self.grad.narrow(0, *off, *n).view([self.k, n / self.k]).get(model);
                !bool::try_from(block.isfinite().all()).unwrap_or(false)
            })
            .map(|(_, name)| name.as_str())
            .collect()
    }

    /// Multiplies model k's gradients by `coef[k]`.
    pub fn scale_grads(&mut self, coef: &[f64]) {
        self.adopt_grads();
        tch::no_grad(|| match &self.runs {
            None => {
                let _ = self.grad.g_mul_scalar_(coef[0]);
            }
            Some(runs) => {
                let c = Tensor::from_slice(coef).to_kind(self.grad.kind()).to_device(self.grad.device());
                let per_run = c.repeat([self.spans.len() as i64]);
                let per_elem = per_run.repeat_interleave_self_tensor(runs, 0, Some(self.grad.numel() as i64));
                let _ = self.grad.g_mul_(&per_elem);
            }
        });
    }
    /// One AdamW step at learning rate `lr` for every model.
    pub fn step(&mut self, lr: f64) {
        self.adopt_grads();
        self.steps += 1;
        let c = self.cfg;
        let t = self.steps;
        let bc1 = 1.0 - c.beta1.powi(t);
        let bc2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
        tch::no_grad(|| {
            if c.weight_decay != 0.0 && self.decay_len > 0 {
                let _ = self.data.narrow(0, 0, self.decay_len).g_mul_scalar_(1.0 - lr * c.weight_decay);
            }
            let _ = self.exp_avg.lerp_(&self.grad, 1.0 - c.beta1);
            let _ = self.grad.square_out(&self.scratch);
            let _ = self.exp_avg_sq.lerp_(&self.scratch, 1.0 - c.beta2);
            if lr == 0.0 {
                return;
            }
            // p -= lr/bc1 · m / (sqrt(v)/sqrt(bc2) + eps), with the step size folded into the denominator:
            // denominator = (sqrt(v) + eps·sqrt(bc2)) · (−bc1 / (lr·sqrt(bc2)))
            let _ = self.exp_avg_sq.sqrt_out(&self.scratch);
            let _ = self.scratch.g_add_scalar_(c.eps * bc2_sqrt);
            let _ = self.scratch.g_mul_scalar_(-bc1 / (lr * bc2_sqrt));
            let _ = self.data.addcdiv_(&self.exp_avg, &self.scratch);
        });
    }
}
