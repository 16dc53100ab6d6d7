//! The paper's vocabulary and claims, in one place: the methods' names as the paper writes them (DPO, IPO, d-DPO,
//! p-DPO, dp-DPO, e-DPO — the pipeline's own strings are "dpo", "ipo", "d-dpo", ...), the contrasts fixed in
//! advance, the findings of the paper's §6.2 (METHOD.md, "Findings to compare against") and the rule that turns the
//! measured contrasts into a verdict per finding.
//!
//! **The family of contrasts** (for Holm's correction) is everything tested at one ρ: the paper's seven contrasts
//! (each of d-DPO, dp-DPO, e-DPO against DPO and against IPO, and p-DPO against DPO) plus the few that a finding needs
//! at that ρ ("e-DPO is best" at ρ ≤ 0.3 adds e-DPO against p-DPO, d-DPO and dp-DPO; "d-DPO is best" at ρ > 0.5 adds
//! d-DPO against p-DPO, dp-DPO and e-DPO). Per ρ, because each ρ is its own experiment (its own D_ρ, reward models
//! and policies) and the paper reads its Fig. 2 one ρ at a time; a claim over several ρ needs *every* contrast to be
//! significant to hold (an intersection–union test, which keeps the level α without a further correction).
//!
//! **Verdicts**: a finding *holds* when every contrast it needs was measured and is significant in its direction
//! (Holm-adjusted p < α within its ρ); it is *contradicted* when one of them is significant the other way both within
//! its ρ and among the finding's own contrasts (Holm over all of them, across the ρ the finding spans: "some contrast
//! goes the other way" is a union over those ρ, and each ρ's family guards only its own, so a finding over seven ρ
//! would otherwise be contradicted by chance up to seven times as often as α says); otherwise it is *inconclusive*
//! (and *not tested* when none of its contrasts could be measured). The one negative finding,
//! "p-DPO alone gives no clear gain over DPO", is contradicted by a significant gain and holds when every 95%
//! interval of p-DPO − DPO lies below the smallest difference that matters (an equivalence bound: absence of a
//! significant gain alone is not evidence of no gain).

use crate::stats::Test;
use std::collections::BTreeSet;

/// The methods in the paper's order: (the pipeline's string, the paper's name).
pub const METHODS: [(&str, &str); 6] =
    [("dpo", "DPO"), ("ipo", "IPO"), ("d-dpo", "d-DPO"), ("p-dpo", "p-DPO"), ("dp-dpo", "dp-DPO"), ("e-dpo", "e-DPO")];

/// The suffix that marks a method distilled from the oracle's own reward r* instead of a learned reward model (the
/// label `manifests/synthetic-oracle-distillation.toml` gives its evaluations: "d-dpo-oracle").
pub const FROM_ORACLE: &str = "-oracle";

/// The paper's name of a method string ("e-dpo" → "e-DPO", "d-dpo-oracle" → "d-DPO from r*"); other strings
/// unchanged.
pub fn name(method: &str) -> String {
    let known = |m: &str| METHODS.iter().find(|(k, _)| *k == m).map(|(_, n)| n.to_string());
    known(method)
        .or_else(|| method.strip_suffix(FROM_ORACLE).and_then(known).map(|n| format!("{n} from r*")))
        .unwrap_or_else(|| method.to_string())
}

/// A label whose first word is a method ("dpo β=0.1") with the paper's name ("DPO β=0.1").
pub fn label(l: &str) -> String {
    match l.split_once(' ') {
        Some((m, rest)) => format!("{} {rest}", name(m)),
        None => name(l),
    }
}

/// Whether a method's loss is parametrised by τ (IPO) rather than β.
pub fn uses_tau(method: &str) -> bool {
    method == "ipo"
}

/// Sort key: the paper's order, then anything else.
pub fn order(label: &str) -> usize {
    let m = label.split(' ').next().unwrap_or(label);
    METHODS.iter().position(|(k, _)| *k == m).unwrap_or(METHODS.len())
}

/// The paper's contrasts (first − second), fixed in advance.
pub const PAPER_CONTRASTS: [(&str, &str); 7] = [
    ("d-dpo", "dpo"),
    ("d-dpo", "ipo"),
    ("dp-dpo", "dpo"),
    ("dp-dpo", "ipo"),
    ("e-dpo", "dpo"),
    ("e-dpo", "ipo"),
    ("p-dpo", "dpo"),
];

/// Where a finding applies.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rhos {
    AtMost(f64),
    Above(f64),
    Every,
    /// Runs without ρ (the natural data) when there are any, else ρ = 0.5.
    Unbiased,
}

/// What a finding says of its contrasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// first − second > 0 for every contrast.
    Better,
    /// first − second is not clearly > 0 (below the smallest difference that matters).
    NoClearGain,
}

/// One finding of the paper.
#[derive(Debug)]
pub struct Finding {
    pub id: &'static str,
    /// As METHOD.md states it (with the report's reading of vague words in brackets).
    pub text: &'static str,
    pub rhos: Rhos,
    pub kind: Kind,
    pub contrasts: &'static [(&'static str, &'static str)],
}

/// The ρ at or below which a setting counts as one of "the hardest (short-preferring)": the two most
/// short-preferring values of the paper's grid.
pub const HARDEST_RHO: f64 = 0.3;

/// METHOD.md's "Findings to compare against" (paper §6.2).
pub static FINDINGS: [Finding; 5] = [
    Finding {
        id: "distillation-beats-dpo-ipo",
        text: "For ρ ≤ 0.5 every distillation method (d-DPO, dp-DPO, e-DPO) beats DPO and IPO",
        rhos: Rhos::AtMost(0.5),
        kind: Kind::Better,
        contrasts: &[
            ("d-dpo", "dpo"),
            ("d-dpo", "ipo"),
            ("dp-dpo", "dpo"),
            ("dp-dpo", "ipo"),
            ("e-dpo", "dpo"),
            ("e-dpo", "ipo"),
        ],
    },
    Finding {
        id: "e-dpo-best-when-hardest",
        text: "e-DPO is best in the hardest (short-preferring) settings [ρ ≤ 0.3]",
        rhos: Rhos::AtMost(HARDEST_RHO),
        kind: Kind::Better,
        contrasts: &[("e-dpo", "dpo"), ("e-dpo", "ipo"), ("e-dpo", "p-dpo"), ("e-dpo", "d-dpo"), ("e-dpo", "dp-dpo")],
    },
    Finding {
        id: "d-dpo-best-above-half",
        text: "For ρ > 0.5 d-DPO is best",
        rhos: Rhos::Above(0.5),
        kind: Kind::Better,
        contrasts: &[("d-dpo", "dpo"), ("d-dpo", "ipo"), ("d-dpo", "p-dpo"), ("d-dpo", "dp-dpo"), ("d-dpo", "e-dpo")],
    },
    Finding {
        id: "p-dpo-no-clear-gain",
        text: "p-DPO alone gives no clear gain over DPO [at every ρ]",
        rhos: Rhos::Every,
        kind: Kind::NoClearGain,
        contrasts: &[("p-dpo", "dpo")],
    },
    Finding {
        id: "unbiased-small-gain",
        text: "In an unbiased setting distillation gives a small gain (e-DPO 65.8% vs DPO 64.2% win rate against SFT on \
               Anthropic Helpfulness) [e-DPO beats DPO without ρ, else at ρ = 0.5]",
        rhos: Rhos::Unbiased,
        kind: Kind::Better,
        contrasts: &[("e-dpo", "dpo")],
    },
];

fn same(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => (x - y).abs() < 1e-6,
        (None, None) => true,
        _ => false,
    }
}

impl Finding {
    /// Whether the finding speaks of `rho`, among the values `all` the run has.
    pub fn applies(&self, rho: Option<f64>, all: &[Option<f64>]) -> bool {
        match (self.rhos, rho) {
            (Rhos::Every, _) => true,
            (Rhos::AtMost(x), Some(r)) => r <= x + 1e-9,
            (Rhos::Above(x), Some(r)) => r > x + 1e-9,
            (Rhos::Unbiased, r) => {
                if all.iter().any(Option::is_none) {
                    r.is_none()
                } else {
                    same(r, Some(0.5))
                }
            }
            _ => false,
        }
    }
}

/// The family of contrasts at one ρ (see the module docs), restricted to methods the run has at that ρ.
pub fn family(rho: Option<f64>, all: &[Option<f64>], methods: &BTreeSet<String>) -> Vec<(&'static str, &'static str)> {
    let mut out: Vec<(&'static str, &'static str)> = vec![];
    let extra = FINDINGS.iter().filter(|f| f.applies(rho, all)).flat_map(|f| f.contrasts.iter().copied());
    for c in PAPER_CONTRASTS.iter().copied().chain(extra) {
        if !out.contains(&c) && methods.contains(c.0) && methods.contains(c.1) {
            out.push(c);
        }
    }
    out
}

/// One measured contrast: first − second at one ρ, over the seeds both have.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Contrast {
    pub rho: Option<f64>,
    pub first: String,
    pub second: String,
    pub seeds: usize,
    /// Paired t-test over seeds (df = seeds − 1) with its 95% interval.
    pub test: Test,
    /// Holm-adjusted p within the family at this ρ.
    pub p_holm: f64,
    /// The size of the family it was adjusted in.
    pub family: usize,
}

impl Contrast {
    pub fn significant(&self, alpha: f64) -> bool {
        self.p_holm < alpha
    }
    /// "first > second", "first < second" or "n.s." at level alpha.
    pub fn direction(&self, alpha: f64) -> &'static str {
        if !self.significant(alpha) {
            "n.s."
        } else if self.test.diff > 0.0 {
            "better"
        } else {
            "worse"
        }
    }
}

/// The verdict on one finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Holds,
    Contradicted,
    Inconclusive,
    NotTested,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Holds => "holds",
            Verdict::Contradicted => "contradicted",
            Verdict::Inconclusive => "inconclusive",
            Verdict::NotTested => "not tested",
        }
    }
}

/// A finding's verdict with its evidence.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Assessment {
    pub id: &'static str,
    pub text: &'static str,
    pub kind: Kind,
    pub verdict: Verdict,
    /// The verdict by METHOD.md's own rule, where a contradiction needs one contrast significant the other way within
    /// its ρ only (without the second adjustment over the finding's contrasts that `verdict` also asks for).
    pub verdict_within_rho: Verdict,
    /// The contrasts the finding needs that were measured.
    pub evidence: Vec<Contrast>,
    /// Per contrast of `evidence`, its p-value Holm-adjusted among the finding's own contrasts (the second
    /// adjustment a contradiction must pass; see the module docs).
    pub p_finding: Vec<f64>,
    /// The contrasts it needs that could not be measured ("e-DPO − p-DPO at ρ = 0.2": a method not run there,
    /// fewer than two seeds, or the same difference on every seed, which a t-test cannot weigh).
    pub missing: Vec<String>,
}

/// "ρ = 0.2" or "no ρ".
pub fn rho_text(rho: Option<f64>) -> String {
    rho.map_or("no ρ".to_string(), |r| format!("ρ = {r}"))
}

/// The verdict of `f` from the measured contrasts, at level `alpha`; `margin` is the smallest difference that
/// matters (the equivalence bound of a "no clear gain" finding).
pub fn assess(
    f: &'static Finding,
    contrasts: &[Contrast],
    rhos: &[Option<f64>],
    alpha: f64,
    margin: f64,
) -> Assessment {
    let (mut evidence, mut missing) = (vec![], vec![]);
    for &rho in rhos.iter().filter(|r| f.applies(**r, rhos)) {
        for (a, b) in f.contrasts {
            let what = format!("{} − {} at {}", name(a), name(b), rho_text(rho));
            match contrasts.iter().find(|c| same(c.rho, rho) && c.first == *a && c.second == *b) {
                Some(c) if !c.test.p_value.is_nan() => evidence.push(c.clone()),
                Some(c) => missing.push(format!(
                    "{what} ({})",
                    c.test.untestable.map_or("untestable", crate::stats::Untestable::reason)
                )),
                None => missing.push(what),
            }
        }
    }
    let p_finding = crate::stats::holm(&evidence.iter().map(|c| c.test.p_value).collect::<Vec<_>>());
    let mut a = Assessment {
        id: f.id,
        text: f.text,
        kind: f.kind,
        verdict: Verdict::NotTested,
        verdict_within_rho: Verdict::NotTested,
        evidence,
        p_finding,
        missing,
    };
    let verdict = |against: usize| {
        if a.evidence.is_empty() {
            Verdict::NotTested
        } else if against > 0 {
            Verdict::Contradicted
        } else if !a.missing.is_empty() {
            Verdict::Inconclusive
        } else {
            let holds = match f.kind {
                Kind::Better => a.evidence.iter().all(|c| c.significant(alpha) && c.test.diff > 0.0),
                Kind::NoClearGain => a.evidence.iter().all(|c| c.test.ci_high < margin),
            };
            if holds { Verdict::Holds } else { Verdict::Inconclusive }
        }
    };
    (a.verdict, a.verdict_within_rho) = (verdict(a.against(alpha)), verdict(a.against_within_rho(alpha)));
    a
}

impl Assessment {
    /// How many contrasts are significant against the finding (a loss for "beats", a gain for "no clear gain"):
    /// within their ρ and among the finding's contrasts.
    pub fn against(&self, alpha: f64) -> usize {
        self.evidence
            .iter()
            .zip(&self.p_finding)
            .filter(|(c, p)| self.wrong_way(c) && c.significant(alpha) && **p < alpha)
            .count()
    }

    /// How many contrasts are significant against the finding within their ρ alone (METHOD.md's rule).
    pub fn against_within_rho(&self, alpha: f64) -> usize {
        self.evidence.iter().filter(|c| self.is_against_within_rho(c, alpha)).count()
    }

    /// Whether one contrast of the evidence is significant against the finding within its ρ.
    pub fn is_against_within_rho(&self, c: &Contrast, alpha: f64) -> bool {
        self.wrong_way(c) && c.significant(alpha)
    }

    fn wrong_way(&self, c: &Contrast) -> bool {
        match self.kind {
            Kind::Better => c.test.diff < 0.0,
            Kind::NoClearGain => c.test.diff > 0.0,
        }
    }

    /// Where the point estimates lean, whatever the verdict (an *inconclusive* finding whose every estimate points
    /// the other way reads differently from one split down the middle): for a "beats" finding, how many differences
    /// lie in the paper's direction and how many are significant each way (against it: as the verdict counts them,
    /// within their ρ and among the finding's contrasts); for the "no clear gain" finding,
    /// how many are ≤ 0 and how many intervals lie below the smallest difference that matters (`margin`).
    pub fn lean(&self, alpha: f64, margin: f64) -> Option<String> {
        let n = self.evidence.len();
        if n == 0 {
            return None;
        }
        let count = |pred: &dyn Fn(&Contrast) -> bool| self.evidence.iter().filter(|c| pred(c)).count();
        Some(match self.kind {
            Kind::Better => format!(
                "point estimates in the paper's direction: {} of {n}; significant in it: {}, against it: {}",
                count(&|c| c.test.diff > 0.0),
                count(&|c| c.significant(alpha) && c.test.diff > 0.0),
                self.against(alpha),
            ),
            Kind::NoClearGain => format!(
                "point estimates ≤ 0 (no gain): {} of {n}; intervals below +{margin}: {} of {n}; significant gains: {}; \
                 significant losses: {}",
                count(&|c| c.test.diff <= 0.0),
                count(&|c| c.test.ci_high < margin),
                self.against(alpha),
                count(&|c| c.significant(alpha) && c.test.diff < 0.0),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(rho: f64, a: &str, b: &str, diff: f64, p_holm: f64, ci_high: f64) -> Contrast {
        Contrast {
            rho: Some(rho),
            first: a.into(),
            second: b.into(),
            seeds: 3,
            test: Test {
                diff,
                se: 0.01,
                df: 2.0,
                stat: 0.0,
                p_value: p_holm / 2.0,
                ci_low: diff - 0.05,
                ci_high,
                untestable: None,
            },
            p_holm,
            family: 7,
        }
    }

    #[test]
    fn names_and_order() {
        assert_eq!(name("e-dpo"), "e-DPO");
        assert_eq!(name("dp-dpo"), "dp-DPO");
        assert_eq!(name("simpo"), "simpo");
        assert_eq!(name("d-dpo-oracle"), "d-DPO from r*");
        assert_eq!(name("simpo-oracle"), "simpo-oracle");
        assert_eq!(label("dpo β=0.1"), "DPO β=0.1");
        assert!(order("dpo") < order("ipo") && order("ipo") < order("e-dpo β=1") && order("e-dpo") < order("x"));
    }

    #[test]
    fn families_per_rho() {
        let methods: BTreeSet<String> = METHODS.iter().map(|m| m.0.to_string()).collect();
        let all = [Some(0.2), Some(0.4), Some(0.5), Some(0.8)];
        // ρ = 0.2: the paper's 7 + e-DPO vs p-DPO, d-DPO, dp-DPO
        assert_eq!(family(Some(0.2), &all, &methods).len(), 10);
        // ρ = 0.4 and 0.5: the paper's 7 (the unbiased finding's e-DPO − DPO at 0.5 is among them)
        assert_eq!(family(Some(0.4), &all, &methods).len(), 7);
        assert_eq!(family(Some(0.5), &all, &methods).len(), 7);
        // ρ = 0.8: the paper's 7 + d-DPO vs p-DPO, dp-DPO, e-DPO
        assert_eq!(family(Some(0.8), &all, &methods).len(), 10);
        // only methods that were run
        let two: BTreeSet<String> = ["dpo", "p-dpo"].iter().map(|s| s.to_string()).collect();
        assert_eq!(family(Some(0.2), &all, &two), vec![("p-dpo", "dpo")]);
    }

    #[test]
    fn verdicts_on_constructed_contrasts() {
        let rhos = [Some(0.2), Some(0.5), Some(0.8)];
        let f = &FINDINGS[0]; // distillation beats DPO and IPO at ρ ≤ 0.5: 6 contrasts × 2 ρ
        let mut all = vec![];
        for rho in [0.2, 0.5] {
            for (a, b) in f.contrasts {
                all.push(c(rho, a, b, 0.05, 0.01, 0.09));
            }
        }
        let a = assess(f, &all, &rhos, 0.05, 0.02);
        assert_eq!((a.verdict, a.evidence.len(), a.missing.len()), (Verdict::Holds, 12, 0));
        let holding = all.clone();
        // one contrast not significant: inconclusive
        all[3].p_holm = 0.2;
        assert_eq!(assess(f, &all, &rhos, 0.05, 0.02).verdict, Verdict::Inconclusive);
        // one significant the other way: contradicted
        all[5] = c(0.2, "e-dpo", "ipo", -0.04, 0.001, -0.01);
        assert_eq!(assess(f, &all, &rhos, 0.05, 0.02).verdict, Verdict::Contradicted);
        // a needed contrast missing: cannot hold
        let mut some = holding.clone();
        some.retain(|x| !(x.first == "e-dpo" && x.rho == Some(0.5)));
        let a = assess(f, &some, &rhos, 0.05, 0.02);
        assert_eq!((a.verdict, a.missing.len()), (Verdict::Inconclusive, 2), "{:?}", a.missing);
        // nothing measured: not tested
        assert_eq!(assess(f, &[], &rhos, 0.05, 0.02).verdict, Verdict::NotTested);
        // a contrast measured on one seed (p NaN) counts as missing
        let mut one = c(0.2, "d-dpo", "dpo", 0.1, f64::NAN, f64::NAN);
        one.test.p_value = f64::NAN;
        assert_eq!(assess(f, &[one], &rhos, 0.05, 0.02).verdict, Verdict::NotTested);
    }

    #[test]
    fn a_contradiction_within_its_rho_alone_is_the_verdict_by_method_md_s_rule() {
        // 12 contrasts; one significant the other way within its ρ (p̃ = 0.0495) but not among the finding's own
        // contrasts (its raw p 0.0074 × 12 = 0.088 > 0.05): inconclusive by the report's rule, contradicted by
        // METHOD.md's, which asks for one contrast significant the other way
        let rhos = [Some(0.2), Some(0.4)];
        let f = &FINDINGS[0];
        let mut all = vec![];
        for rho in [0.2, 0.4] {
            for (a, b) in f.contrasts {
                all.push(c(rho, a, b, 0.01, 0.9, 0.2));
            }
        }
        all[7] = c(0.4, "d-dpo", "ipo", -0.0763, 0.0495, -0.0655);
        all[7].test.p_value = 0.00707;
        let a = assess(f, &all, &rhos, 0.05, 0.02);
        assert!(a.p_finding[7] > 0.05, "{:?}", a.p_finding);
        assert_eq!((a.verdict, a.verdict_within_rho), (Verdict::Inconclusive, Verdict::Contradicted));
        assert_eq!((a.against(0.05), a.against_within_rho(0.05)), (0, 1));
        // significant among the finding's contrasts too: both rules say contradicted
        all[7].test.p_value = 0.001;
        let a = assess(f, &all, &rhos, 0.05, 0.02);
        assert_eq!((a.verdict, a.verdict_within_rho), (Verdict::Contradicted, Verdict::Contradicted));
    }

    #[test]
    fn the_lean_of_the_estimates_is_counted_whatever_the_verdict() {
        let rhos = [Some(0.2), Some(0.5)];
        let f = &FINDINGS[4]; // e-DPO beats DPO at ρ = 0.5 only
        let v = [c(0.5, "e-dpo", "dpo", -0.07, 0.4, 0.06)];
        let a = assess(f, &v, &rhos, 0.05, 0.02);
        assert_eq!(a.verdict, Verdict::Inconclusive);
        assert_eq!(
            a.lean(0.05, 0.02).unwrap(),
            "point estimates in the paper's direction: 0 of 1; significant in it: 0, against it: 0"
        );
        let f = &FINDINGS[0];
        let mut all = vec![];
        for (k, (a, b)) in f.contrasts.iter().enumerate() {
            // 0.2: two estimates in the paper's direction (one significant), four against (one significant)
            let (diff, p) = [(0.05, 0.01), (0.01, 0.5), (-0.02, 0.3), (-0.03, 0.3), (-0.04, 0.2), (-0.09, 0.01)][k];
            all.push(c(0.2, a, b, diff, p, diff + 0.05));
        }
        let a = assess(f, &all, &rhos, 0.05, 0.02);
        // ρ = 0.5 not measured: 6 contrasts counted
        assert_eq!(
            a.lean(0.05, 0.02).unwrap(),
            "point estimates in the paper's direction: 2 of 6; significant in it: 1, against it: 1"
        );
        let f = &FINDINGS[3];
        let v = [c(0.2, "p-dpo", "dpo", -0.01, 0.6, 0.015), c(0.5, "p-dpo", "dpo", 0.01, 0.6, 0.09)];
        assert_eq!(
            assess(f, &v, &rhos, 0.05, 0.02).lean(0.05, 0.02).unwrap(),
            "point estimates ≤ 0 (no gain): 1 of 2; intervals below +0.02: 1 of 2; significant gains: 0; significant losses: 0"
        );
        assert_eq!(assess(f, &[], &rhos, 0.05, 0.02).lean(0.05, 0.02), None);
    }

    #[test]
    fn the_negative_finding_needs_an_equivalence_bound() {
        let rhos = [Some(0.2), Some(0.8)];
        let f = &FINDINGS[3]; // p-DPO − DPO not clearly > 0 at every ρ
        // not significant, intervals below the margin 0.02: holds
        let v = [c(0.2, "p-dpo", "dpo", 0.001, 0.6, 0.015), c(0.8, "p-dpo", "dpo", -0.01, 0.6, 0.005)];
        assert_eq!(assess(f, &v, &rhos, 0.05, 0.02).verdict, Verdict::Holds);
        // not significant but an interval reaching past the margin: inconclusive (no evidence either way)
        let v = [c(0.2, "p-dpo", "dpo", 0.001, 0.6, 0.015), c(0.8, "p-dpo", "dpo", 0.01, 0.6, 0.09)];
        assert_eq!(assess(f, &v, &rhos, 0.05, 0.02).verdict, Verdict::Inconclusive);
        // a significant gain: contradicted
        let v = [c(0.2, "p-dpo", "dpo", 0.03, 0.01, 0.05), c(0.8, "p-dpo", "dpo", 0.0, 0.6, 0.01)];
        assert_eq!(assess(f, &v, &rhos, 0.05, 0.02).verdict, Verdict::Contradicted);
    }

    /// A contradiction must survive Holm over the finding's own contrasts too. Worked by hand: p-DPO − DPO at 7 ρ,
    /// raw p-values 0.004 (a gain), 0.02 (a loss), 0.3 × 5; Holm multiplies the i-th smallest by 7 − i + 1 and keeps
    /// the running maximum: 0.028, 0.12, then 0.3 × 5 = 1.5 capped at 1. The gain (Holm within its ρ 0.03) contradicts "no
    /// clear gain" (0.028 < 0.05); at raw 0.01 instead it would be 0.07 and the finding inconclusive, although its
    /// Holm p within its ρ (0.03) is below α.
    #[test]
    fn a_contradiction_needs_holm_over_the_findings_contrasts_too() {
        let rhos: Vec<Option<f64>> = [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8].into_iter().map(Some).collect();
        let f = &FINDINGS[3];
        // a gain at ρ = 0.6 (raw p `gain_p`, Holm within its ρ 0.03), a loss at ρ = 0.3 (raw 0.02), the rest 0.3
        let mk = |gain_p: f64| -> Vec<Contrast> {
            rhos.iter()
                .enumerate()
                .map(|(k, r)| {
                    let mut x = c(r.unwrap(), "p-dpo", "dpo", -0.01, 0.9, 0.03);
                    x.test.p_value = match k {
                        4 => gain_p,
                        1 => 0.02,
                        _ => 0.3,
                    };
                    if k == 4 {
                        x.test.diff = 0.03;
                        x.p_holm = 0.03;
                    }
                    x
                })
                .collect()
        };
        let a = assess(f, &mk(0.004), &rhos, 0.05, 0.02);
        let want = [1.0, 0.12, 1.0, 1.0, 0.028, 1.0, 1.0];
        assert_eq!(a.p_finding.len(), want.len());
        for (got, want) in a.p_finding.iter().zip(want) {
            assert!((got - want).abs() < 1e-12, "{:?}", a.p_finding);
        }
        assert_eq!((a.verdict, a.against(0.05)), (Verdict::Contradicted, 1));
        let a = assess(f, &mk(0.01), &rhos, 0.05, 0.02);
        assert!((a.p_finding[4] - 0.07).abs() < 1e-12, "{:?}", a.p_finding);
        assert_eq!((a.verdict, a.against(0.05)), (Verdict::Inconclusive, 0));
        assert!(a.lean(0.05, 0.02).unwrap().ends_with("significant gains: 0; significant losses: 0"));
    }

    #[test]
    fn where_findings_apply() {
        let grid = [Some(0.2), Some(0.3), Some(0.5), Some(0.8)];
        assert!(FINDINGS[1].applies(Some(0.3), &grid) && !FINDINGS[1].applies(Some(0.4), &grid));
        assert!(FINDINGS[2].applies(Some(0.8), &grid) && !FINDINGS[2].applies(Some(0.5), &grid));
        assert!(FINDINGS[4].applies(Some(0.5), &grid) && !FINDINGS[4].applies(Some(0.2), &grid));
        // with runs on the natural data (no ρ), the unbiased finding reads those
        let natural = [None, Some(0.5)];
        assert!(FINDINGS[4].applies(None, &natural) && !FINDINGS[4].applies(Some(0.5), &natural));
    }
}
