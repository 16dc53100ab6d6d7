//! The preference-optimization losses of METHOD.md, on `tch` tensors.
//!
//! Every input is a `[batch]` tensor of **sequence log-probabilities** (sums over response tokens by default, see
//! [`rmdistill_ml::Reduction`]); policy log-probs carry gradients, reference log-probs and rewards do not.
//! `logr(x,y) = log π_θ(y|x) − log π_ref(y|x)` is the policy's log-ratio and `β·logr` its implicit reward.
//!
//! | loss | per example |
//! |---|---|
//! | [`dpo`] | `−log σ(β·(logr_w − logr_l))` (TRL `loss_type="sigmoid"`) |
//! | [`ipo`] | `((logr_w − logr_l) − 1/(2τ))²` (TRL `loss_type="ipo"`, with TRL's β as τ) |
//! | [`distill`] (d-DPO, eq. 7) | `((r(y1) − r(y2)) − β·(logr_1 − logr_2))²` |
//! | [`forward_kl`] | trainable part of `KL(π_ref‖π_θ)`: NLL of π_θ on samples from π_ref; estimate `mean(log π_ref − log π_θ)` |
//! | [`ensemble_distill`] (e-DPO) | `min_m mean_batch L_distill(r_m)`, gradients through the chosen member only |
//!
//! p-DPO = DPO + γ·KL, dp-DPO = distill + γ·KL, e-DPO = min-over-members distill + γ·KL: see [`Method`] and
//! [`objective`]. γ follows a [`GammaSchedule`]. Per-example losses are returned unreduced where a caller may want
//! them; mini-batch objectives are means.

use rmdistill_ml::tch;
pub use rmdistill_stages::method::{GammaSchedule, Method};
use tch::{Kind, Tensor};

/// The policy's log-ratio `log π_θ − log π_ref`.
pub fn log_ratio(policy: &Tensor, reference: &Tensor) -> Tensor {
    policy - reference
}

/// DPO per example: `−log σ(β·((π_w − π_l) − (ref_w − ref_l)))`, written as TRL does (`-logsigmoid(β·logits)`).
pub fn dpo(pi_w: &Tensor, pi_l: &Tensor, ref_w: &Tensor, ref_l: &Tensor, beta: f64) -> Tensor {
    let logits = (pi_w - pi_l) - (ref_w - ref_l);
    -(logits * beta).log_sigmoid()
}

/// IPO per example: `((π_w − π_l) − (ref_w − ref_l) − 1/(2τ))²`.
pub fn ipo(pi_w: &Tensor, pi_l: &Tensor, ref_w: &Tensor, ref_l: &Tensor, tau: f64) -> Tensor {
    let logits = (pi_w - pi_l) - (ref_w - ref_l);
    (logits - 1.0 / (2.0 * tau)).square()
}

/// Distillation (d-DPO, eq. 7) per example: `((r_1 − r_2) − β·(logr_1 − logr_2))²`. Symmetric in (y_1, y_2); no
/// preference label is used. `r_1`, `r_2` are `[batch]` (one reward model) or `[batch, members]` (broadcast: one
/// column per member, giving `[batch, members]`).
pub fn distill(
    pi_1: &Tensor,
    pi_2: &Tensor,
    ref_1: &Tensor,
    ref_2: &Tensor,
    r_1: &Tensor,
    r_2: &Tensor,
    beta: f64,
) -> Tensor {
    let implicit = (log_ratio(pi_1, ref_1) - log_ratio(pi_2, ref_2)) * beta;
    let implicit = if r_1.dim() == 2 { implicit.unsqueeze(1) } else { implicit };
    ((r_1 - r_2) - implicit).square()
}

/// The forward-KL term on samples `y ∼ π_ref`: `(trainable mini-batch term, KL estimate)`. The trainable term is the
/// mean negative log-likelihood `−mean(log π_θ(y))` (its gradient is the KL's: `E[log π_ref]` does not depend on θ);
/// the estimate is `mean(log π_ref(y) − log π_θ(y))`.
pub fn forward_kl(pi_on_ref_samples: &Tensor, ref_on_ref_samples: &Tensor) -> (Tensor, f64) {
    let nll = -pi_on_ref_samples.mean(Kind::Float);
    let est = f64::try_from((ref_on_ref_samples - pi_on_ref_samples.detach()).mean(Kind::Double)).unwrap_or(f64::NAN);
    (nll, est)
}

/// The e-DPO distillation part on one mini-batch.
#[derive(Debug)]
pub struct EnsembleOut {
    /// The mini-batch mean distillation loss of the chosen member (differentiable through that member only).
    pub loss: Tensor,
    /// Index of the member with the smallest mini-batch mean loss (ties: the first).
    pub chosen: usize,
    /// Every member's mini-batch mean loss.
    pub member_losses: Vec<f64>,
    /// Per example, the member whose reward difference best matches the policy's implicit reward difference
    /// (smallest per-example loss; paper Fig. B.3).
    pub best_per_example: Vec<usize>,
}

/// e-DPO's `min_{r∈S} L_distill(r)` with the min taken per mini-batch: the per-member mean losses are compared and
/// only the smallest is returned as the loss. `r_1`, `r_2`: `[batch, members]`.
pub fn ensemble_distill(
    pi_1: &Tensor,
    pi_2: &Tensor,
    ref_1: &Tensor,
    ref_2: &Tensor,
    r_1: &Tensor,
    r_2: &Tensor,
    beta: f64,
) -> EnsembleOut {
    assert_eq!(r_1.dim(), 2, "ensemble rewards are [batch, members]");
    let per = distill(pi_1, pi_2, ref_1, ref_2, r_1, r_2, beta); // [batch, members]
    let means = per.mean_dim(0, false, Kind::Float); // [members]
    let member_losses =
        Vec::<f64>::try_from(means.detach().to_kind(Kind::Double).to_device(tch::Device::Cpu)).unwrap_or_default();
    let mut chosen = 0;
    for (m, &l) in member_losses.iter().enumerate() {
        if l < member_losses[chosen] {
            chosen = m;
        }
    }
    let best = per.detach().argmin(1, false).to_device(tch::Device::Cpu);
    let best_per_example = Vec::<i64>::try_from(best).unwrap_or_default().into_iter().map(|b| b as usize).collect();
    EnsembleOut { loss: means.select(0, chosen as i64), chosen, member_losses, best_per_example }
}

/// One mini-batch's inputs to a method's objective. For label-based methods `(y_1, y_2) = (y_w, y_l)`; for
/// distillation they are the pair's two responses in table order (the loss is symmetric).
pub struct BatchTerms<'a> {
    pub pi_1: &'a Tensor,
    pub pi_2: &'a Tensor,
    pub ref_1: &'a Tensor,
    pub ref_2: &'a Tensor,
    /// `[batch, members]` reward-model scores of y_1 and y_2 (distillation methods only).
    pub rewards: Option<(&'a Tensor, &'a Tensor)>,
    /// `(log π_θ, log π_ref)` on the KL samples (pessimistic methods only).
    pub kl: Option<(&'a Tensor, &'a Tensor)>,
}

/// A method's mini-batch objective and what to log about it.
#[derive(Debug)]
pub struct Objective {
    pub loss: Tensor,
    /// The preference/distillation part (before the KL term), detached value.
    pub base_loss: f64,
    pub kl_estimate: Option<f64>,
    pub ensemble: Option<EnsembleOut>,
}

/// Hyper-parameters of a method.
#[derive(Clone, Copy, Debug)]
pub struct Hyper {
    pub beta: f64,
    pub tau: f64,
    pub gamma: f64,
}

/// The mini-batch objective of `method` exactly as METHOD.md defines it.
pub fn objective(method: Method, t: &BatchTerms, h: Hyper) -> anyhow::Result<Objective> {
    let need_rewards = || t.rewards.ok_or_else(|| anyhow::anyhow!("{method} needs reward-model scores"));
    let mut ensemble = None;
    let base = match method {
        Method::Dpo | Method::PDpo => dpo(t.pi_1, t.pi_2, t.ref_1, t.ref_2, h.beta).mean(Kind::Float),
        Method::Ipo => ipo(t.pi_1, t.pi_2, t.ref_1, t.ref_2, h.tau).mean(Kind::Float),
        Method::DDpo | Method::DpDpo => {
            let (r1, r2) = need_rewards()?;
            if r1.size()[1] != 1 {
                anyhow::bail!("{method} distils exactly one reward model, got {}", r1.size()[1]);
            }
            distill(t.pi_1, t.pi_2, t.ref_1, t.ref_2, &r1.select(1, 0), &r2.select(1, 0), h.beta).mean(Kind::Float)
        }
        Method::EDpo => {
            let (r1, r2) = need_rewards()?;
            let e = ensemble_distill(t.pi_1, t.pi_2, t.ref_1, t.ref_2, r1, r2, h.beta);
            let l = e.loss.shallow_clone();
            ensemble = Some(e);
            l
        }
    };
    let base_loss = f64::try_from(base.detach().to_kind(Kind::Double))?;
    let (loss, kl_estimate) = match (method.pessimistic(), t.kl) {
        (true, Some((pi, rf))) => {
            let (nll, est) = forward_kl(pi, rf);
            (base + nll * h.gamma, Some(est))
        }
        (true, None) => anyhow::bail!("{method} needs samples for its forward-KL term"),
        (false, Some((pi, rf))) => (base, Some(forward_kl(&pi.detach(), rf).1)),
        (false, None) => (base, None),
    };
    Ok(Objective { loss, base_loss, kl_estimate, ensemble })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f64]) -> Tensor {
        Tensor::from_slice(v).to_kind(Kind::Float)
    }
    fn leaf(v: &[f64]) -> Tensor {
        t(v).set_requires_grad(true)
    }
    fn vec(x: &Tensor) -> Vec<f64> {
        Vec::<f64>::try_from(x.detach().to_kind(Kind::Double).reshape([-1])).unwrap()
    }
    fn close(a: &[f64], b: &[f64], tol: f64) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= tol * (1.0 + y.abs()), "{a:?} vs {b:?}");
        }
    }
    fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    // Log-probs shared by the TRL comparisons (policy chosen/rejected, reference chosen/rejected).
    const PC: [f64; 4] = [-12.5, -30.0, -4.0, -55.25];
    const PR: [f64; 4] = [-14.0, -29.0, -9.5, -40.0];
    const RC: [f64; 4] = [-13.0, -31.0, -4.5, -50.0];
    const RR: [f64; 4] = [-13.5, -28.0, -8.0, -41.0];

    /// TRL's DPOTrainer.dpo_loss, loss_type="sigmoid", label_smoothing=0, written out as TRL does:
    /// logits = (π_c − π_r) − (ref_c − ref_r); losses = −logsigmoid(β·logits).
    fn trl_sigmoid(pc: f64, pr: f64, rc: f64, rr: f64, beta: f64) -> f64 {
        let logits = (pc - pr) - (rc - rr);
        -(sigmoid(beta * logits)).ln()
    }
    /// TRL's loss_type="ipo" (TRL's `beta` is IPO's τ): losses = (logits − 1/(2β))².
    fn trl_ipo(pc: f64, pr: f64, rc: f64, rr: f64, tau: f64) -> f64 {
        let logits = (pc - pr) - (rc - rr);
        (logits - 1.0 / (2.0 * tau)).powi(2)
    }

    #[test]
    fn dpo_matches_trl_sigmoid_and_closed_form() {
        for beta in [0.01, 0.1, 1.0, 3.0] {
            let got = vec(&dpo(&t(&PC), &t(&PR), &t(&RC), &t(&RR), beta));
            let want: Vec<f64> = (0..4).map(|i| trl_sigmoid(PC[i], PR[i], RC[i], RR[i], beta)).collect();
            close(&got, &want, 1e-6);
        }
        // closed form: equal log-ratios give log 2
        let z = t(&[0.0, 0.0]);
        close(&vec(&dpo(&z, &z, &z, &z, 0.5)), &[2f64.ln(), 2f64.ln()], 1e-7);
        // a margin of 2/β in implicit reward → −log σ(2)
        close(&vec(&dpo(&t(&[1.0]), &t(&[-1.0]), &t(&[0.0]), &t(&[0.0]), 1.0)), &[-(sigmoid(2.0)).ln()], 1e-7);
        // no overflow at huge margins: −log σ(−1000) = 1000
        close(&vec(&dpo(&t(&[-1000.0]), &t(&[0.0]), &t(&[0.0]), &t(&[0.0]), 1.0)), &[1000.0], 1e-6);
    }

    #[test]
    fn dpo_gradient_is_closed_form() {
        // dL/dπ_w = −β·σ(−β·h), dL/dπ_l = +β·σ(−β·h), with h the log-ratio difference
        let (pw, pl) = (leaf(&[-3.0]), leaf(&[-5.0]));
        let beta = 0.7;
        dpo(&pw, &pl, &t(&[-4.0]), &t(&[-4.5]), beta).sum(Kind::Float).backward();
        let h = (-3.0 - -5.0) - (-4.0 - -4.5);
        close(&vec(&pw.grad()), &[-beta * sigmoid(-beta * h)], 1e-6);
        close(&vec(&pl.grad()), &[beta * sigmoid(-beta * h)], 1e-6);
    }

    #[test]
    fn ipo_matches_trl_and_closed_form() {
        for tau in [0.01, 0.1, 1.0, 25.0] {
            let got = vec(&ipo(&t(&PC), &t(&PR), &t(&RC), &t(&RR), tau));
            let want: Vec<f64> = (0..4).map(|i| trl_ipo(PC[i], PR[i], RC[i], RR[i], tau)).collect();
            close(&got, &want, 1e-6);
        }
        // zero at the IPO target margin 1/(2τ)
        let tau = 0.25;
        close(&vec(&ipo(&t(&[2.0]), &t(&[0.0]), &t(&[0.0]), &t(&[0.0]), tau)), &[0.0], 1e-7);
        // at the reference: (1/(2τ))²
        let z = t(&[0.0]);
        close(&vec(&ipo(&z, &z, &z, &z, 0.1)), &[25.0], 1e-6);
    }

    #[test]
    fn distill_closed_form_and_symmetry() {
        // ((r1 − r2) − β·(logr1 − logr2))² with logr1 = 1, logr2 = −0.5, β = 2, r1 − r2 = 1 → (1 − 3)² = 4
        let got = vec(&distill(&t(&[-1.0]), &t(&[-3.5]), &t(&[-2.0]), &t(&[-3.0]), &t(&[0.5]), &t(&[-0.5]), 2.0));
        close(&got, &[4.0], 1e-6);
        // swapping y1 and y2 leaves the loss unchanged
        let a = vec(&distill(
            &t(&PC),
            &t(&PR),
            &t(&RC),
            &t(&RR),
            &t(&[1.0, 2.0, 3.0, 4.0]),
            &t(&[0.0, 5.0, 1.0, -1.0]),
            0.3,
        ));
        let b = vec(&distill(
            &t(&PR),
            &t(&PC),
            &t(&RR),
            &t(&RC),
            &t(&[0.0, 5.0, 1.0, -1.0]),
            &t(&[1.0, 2.0, 3.0, 4.0]),
            0.3,
        ));
        close(&a, &b, 1e-6);
        // the minimiser: implicit reward difference equals the reward difference
        let got = vec(&distill(&t(&[0.5]), &t(&[0.0]), &t(&[0.0]), &t(&[0.0]), &t(&[1.0]), &t(&[0.0]), 2.0));
        close(&got, &[0.0], 1e-7);
        // gradient: dL/dπ_1 = −2β·((r1−r2) − β·Δlogr)
        let p1 = leaf(&[0.0]);
        distill(&p1, &t(&[0.0]), &t(&[0.0]), &t(&[0.0]), &t(&[1.0]), &t(&[0.0]), 2.0).sum(Kind::Float).backward();
        close(&vec(&p1.grad()), &[-4.0], 1e-6);
    }

    #[test]
    fn forward_kl_is_nll_and_estimate() {
        let pi = leaf(&[-2.0, -4.0]);
        let (nll, est) = forward_kl(&pi, &t(&[-1.0, -3.0]));
        close(&vec(&nll), &[3.0], 1e-7);
        assert!((est - 1.0).abs() < 1e-7, "{est}");
        nll.backward();
        close(&vec(&pi.grad()), &[-0.5, -0.5], 1e-7);
        // zero at the reference
        let (_, est) = forward_kl(&t(&[-2.0, -4.0]), &t(&[-2.0, -4.0]));
        assert_eq!(est, 0.0);
    }

    #[test]
    fn ensemble_takes_the_batch_min_and_backprops_through_it_only() {
        // two examples, three members; β = 1; implicit reward differences h = [1, −1]
        let (p1, p2) = (leaf(&[0.0, -1.0]), leaf(&[-1.0, 0.0]));
        let z = t(&[0.0, 0.0]);
        // reward differences per member: m0 = [3, 1] → losses [4, 4] mean 4; m1 = [1, 0] → [0, 1] mean 0.5;
        // m2 = [0.5, −1] → [0.25, 0] mean 0.125 (the min)
        let r1 = Tensor::from_slice(&[3.0f32, 1.0, 0.5, 1.0, 0.0, -1.0]).view([2, 3]);
        let r2 = Tensor::zeros([2, 3], (Kind::Float, tch::Device::Cpu));
        let e = ensemble_distill(&p1, &p2, &z, &z, &r1, &r2, 1.0);
        close(&e.member_losses, &[4.0, 0.5, 0.125], 1e-6);
        assert_eq!(e.chosen, 2);
        close(&vec(&e.loss), &[0.125], 1e-6);
        // per example: ex 0 best matched by m1 (0) ; ex 1 by m2 (0)
        assert_eq!(e.best_per_example, vec![1, 2]);
        e.loss.backward();
        let g_ens = (vec(&p1.grad()), vec(&p2.grad()));
        // the same gradient as the chosen member's d-DPO loss alone
        let (q1, q2) = (leaf(&[0.0, -1.0]), leaf(&[-1.0, 0.0]));
        distill(&q1, &q2, &z, &z, &r1.select(1, 2), &r2.select(1, 2), 1.0).mean(Kind::Float).backward();
        close(&g_ens.0, &vec(&q1.grad()), 1e-7);
        close(&g_ens.1, &vec(&q2.grad()), 1e-7);
        // closed form: dL/dπ_1 = mean_i −2·(Δr_i − h_i) = [−2·(0.5−1), −2·(−1+1)]/2 = [0.5, 0]
        close(&g_ens.0, &[0.5, 0.0], 1e-6);
        // one member = d-DPO
        let e1 = ensemble_distill(&p1, &p2, &z, &z, &r1.narrow(1, 0, 1), &r2.narrow(1, 0, 1), 1.0);
        assert_eq!(e1.chosen, 0);
        close(&vec(&e1.loss), &[4.0], 1e-6);
    }

    #[test]
    fn objectives_add_gamma_times_nll() {
        let z = t(&[0.0, 0.0]);
        let (pi_s, ref_s) = (t(&[-2.0, -3.0]), t(&[-1.0, -2.0]));
        let h = Hyper { beta: 0.5, tau: 0.1, gamma: 0.2 };
        let r = Tensor::from_slice(&[1.0f32, 2.0]).view([2, 1]);
        let r0 = Tensor::zeros([2, 1], (Kind::Float, tch::Device::Cpu));
        let terms = BatchTerms {
            pi_1: &z,
            pi_2: &z,
            ref_1: &z,
            ref_2: &z,
            rewards: Some((&r, &r0)),
            kl: Some((&pi_s, &ref_s)),
        };
        let nll = 2.5;
        let o = objective(Method::PDpo, &terms, h).unwrap();
        close(&[f64::try_from(&o.loss).unwrap()], &[2f64.ln() + 0.2 * nll], 1e-6);
        assert_eq!(o.kl_estimate, Some(1.0));
        let o = objective(Method::Dpo, &terms, h).unwrap();
        close(&[f64::try_from(&o.loss).unwrap()], &[2f64.ln()], 1e-6);
        assert_eq!(o.kl_estimate, Some(1.0), "reported, not trained on");
        let o = objective(Method::DpDpo, &terms, h).unwrap();
        close(&[f64::try_from(&o.loss).unwrap()], &[(1.0 + 4.0) / 2.0 + 0.2 * nll], 1e-6);
        let o = objective(Method::DDpo, &terms, h).unwrap();
        close(&[f64::try_from(&o.loss).unwrap()], &[2.5], 1e-6);
        let o = objective(Method::EDpo, &terms, h).unwrap();
        close(&[f64::try_from(&o.loss).unwrap()], &[2.5 + 0.2 * nll], 1e-6);
        assert_eq!(o.ensemble.unwrap().chosen, 0);
        let o = objective(Method::Ipo, &terms, h).unwrap();
        close(&[f64::try_from(&o.loss).unwrap()], &[25.0], 1e-6);
        // missing pieces are errors
        let bare = BatchTerms { pi_1: &z, pi_2: &z, ref_1: &z, ref_2: &z, rewards: None, kl: None };
        assert!(objective(Method::DDpo, &bare, h).unwrap_err().to_string().contains("reward-model scores"));
        assert!(objective(Method::PDpo, &bare, h).unwrap_err().to_string().contains("forward-KL"));
        let r2 = Tensor::zeros([2, 2], (Kind::Float, tch::Device::Cpu));
        let two = BatchTerms { rewards: Some((&r2, &r2)), ..bare };
        assert!(objective(Method::DDpo, &two, h).unwrap_err().to_string().contains("exactly one reward model"));
    }
}
