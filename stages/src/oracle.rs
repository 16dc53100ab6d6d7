//! The embedded synthetic task's programmatic oracle, shared by `synth` (the demonstrations' mean score),
//! `label` (`oracle = "synthetic"`) and `evaluate` (`oracle = "synthetic"`). Its ground truth is known: it is a pure
//! function of the prompt, the response and the knobs [`OracleParams`].
//!
//! For a prompt (document words; `tldr` ignored) and a response (whitespace-separated words):
//!
//! `score = coverage_weight · |S ∩ R| / |S| − invent_penalty · #invented − repeat_penalty · #repeated
//!          + length_bonus · min(|R|, length_cap)`
//!
//! where `S` is the set of salient words (those the document contains at least twice; the coverage term is 0 when it
//! has none), `R` the response's words (`|R|` counts repeats), `#invented` the number of response words (with
//! repeats) that do not occur in the document, `#repeated = |R| − |distinct(R)|`. The length bonus is the mild,
//! real preference for longer summaries the experiment needs: over pairs sampled from the SFT policy the longer
//! response (≥ 10% more tokens) is the oracle's choice in roughly 60% of the length-differing pairs with the stage
//! defaults and 73% in the default pipeline (key words; `label`'s `longer_preferred_share`). Longer is not always
//! better: a longer summary that invents or repeats words loses, and one that only adds non-salient words gains only
//! the bonus — so a policy that learns "shorter is better" from a biased `D_ρ` drops salient words and loses oracle
//! reward.

use crate::port::{StageError, StageResult, parse_params};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};

/// The word that ends every synthetic prompt.
pub const SEP: &str = "tldr";

/// The oracle's knobs (the same names in every stage that takes `oracle_params`). All have defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct OracleParams {
    pub coverage_weight: f64,
    pub invent_penalty: f64,
    pub repeat_penalty: f64,
    pub length_bonus: f64,
    pub length_cap: u32,
}

impl Default for OracleParams {
    fn default() -> Self {
        OracleParams {
            coverage_weight: 1.0,
            invent_penalty: 0.1,
            repeat_penalty: 0.25,
            length_bonus: 0.1,
            length_cap: 10,
        }
    }
}

/// The largest weight an oracle knob may have: scores stay finite for any response a table can hold.
pub const MAX_KNOB: f64 = 1e6;

impl OracleParams {
    /// Parses knobs from a JSON object (e.g. a stage's `oracle_params`); errors name the field under `field`.
    pub fn from_map(m: &Map<String, Value>, field: &str) -> StageResult<Self> {
        let p: OracleParams = parse_params(m).map_err(|e| match e {
            StageError::Invalid { field: f, message } => {
                StageError::invalid(if f.is_empty() { field.to_string() } else { format!("{field}.{f}") }, message)
            }
            other => other,
        })?;
        p.check(field)?;
        Ok(p)
    }
    pub fn check(&self, field: &str) -> StageResult<()> {
        for (n, v) in [
            ("coverage_weight", self.coverage_weight),
            ("invent_penalty", self.invent_penalty),
            ("repeat_penalty", self.repeat_penalty),
            ("length_bonus", self.length_bonus),
        ] {
            // the knobs weigh counts of words; beyond MAX_KNOB a score can overflow to ±∞ (and a tie to NaN)
            if !(v.is_finite() && (0.0..=MAX_KNOB).contains(&v)) {
                return Err(StageError::invalid(
                    format!("{field}.{n}"),
                    format!("must be a number in [0, {MAX_KNOB:e}], got {v:?}"),
                ));
            }
        }
        Ok(())
    }
}

/// Oracle scores closer than this (relative to their size) are a tie. The synthetic oracle adds multiples of 0.1 and
/// 0.25 and fractions 1/|S|: two equal scores summed in different orders can differ in the last bits (1.2 against
/// 1.2000000000000002, 310 of 4,735 pairs of a default `label`), and a preference decided by rounding is noise, not
/// the oracle's. A reward-model oracle's fp32 scores are far coarser than this, so it only merges exact ties there.
pub const TIE_TOLERANCE: f64 = 1e-9;

/// The oracle's preference between two scores: `Greater` when `a` is better, `Equal` for a tie ([`TIE_TOLERANCE`]).
pub fn compare(a: f64, b: f64) -> std::cmp::Ordering {
    if (a - b).abs() <= TIE_TOLERANCE * a.abs().max(b.abs()).max(1.0) {
        std::cmp::Ordering::Equal
    } else {
        a.total_cmp(&b)
    }
}

/// The parts of a score, for analysis and tests.
#[derive(Clone, Debug, PartialEq)]
pub struct OracleBreakdown {
    pub salient: usize,
    pub covered: usize,
    pub invented: usize,
    pub repeated: usize,
    pub length: usize,
    pub score: f64,
}

/// The oracle with its parts (see the module docs).
pub fn oracle_breakdown(prompt: &str, response: &str, p: &OracleParams) -> OracleBreakdown {
    let mut counts: HashMap<&str, u32> = HashMap::new();
    for w in prompt.split_whitespace().filter(|w| *w != SEP) {
        *counts.entry(w).or_default() += 1;
    }
    let words: Vec<&str> = response.split_whitespace().collect();
    let distinct: HashSet<&str> = words.iter().copied().collect();
    let salient = counts.values().filter(|&&c| c >= 2).count();
    let covered = distinct.iter().filter(|w| counts.get(*w).is_some_and(|&c| c >= 2)).count();
    let invented = words.iter().filter(|w| !counts.contains_key(*w)).count();
    let repeated = words.len() - distinct.len();
    let coverage = if salient > 0 { covered as f64 / salient as f64 } else { 0.0 };
    let score = p.coverage_weight * coverage - p.invent_penalty * invented as f64 - p.repeat_penalty * repeated as f64
        + p.length_bonus * words.len().min(p.length_cap as usize) as f64;
    OracleBreakdown { salient, covered, invented, repeated, length: words.len(), score }
}

/// The programmatic oracle: a pure function of the prompt, the response and the knobs (see the module docs).
pub fn oracle_score(prompt: &str, response: &str, p: &OracleParams) -> f64 {
    oracle_breakdown(prompt, response, p).score
}

/// The oracle on knobs given as a JSON object (a stage's `oracle_params`); errors name `oracle_params.<field>`.
pub fn synthetic_oracle(prompt: &str, response: &str, knobs: &Map<String, Value>) -> StageResult<f64> {
    let p: OracleParams = parse_params(knobs).map_err(|e| match e {
        StageError::Invalid { field, message } => StageError::invalid(format!("oracle_params.{field}"), message),
        other => other,
    })?;
    Ok(oracle_score(prompt, response, &p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_a_tie_and_a_tenth_is_not() {
        use std::cmp::Ordering::*;
        let p = OracleParams::default();
        // the same oracle score reached by two sums: 0.1·12 vs 1.0 + 0.1·2
        let (a, b) = (0.1 * 2.0 + 1.0, 0.1 * 12.0);
        assert_ne!(a, b, "the case this guards against: {a} vs {b}");
        assert_eq!(compare(a, b), Equal);
        assert_eq!(compare(1.3, 1.2), Greater);
        assert_eq!(compare(-0.1, 0.0), Less);
        assert_eq!(compare(0.0, 0.0), Equal);
        // the smallest steps of the synthetic oracle's knobs are far above the tolerance
        assert!(p.length_bonus.min(p.invent_penalty) > 1e3 * TIE_TOLERANCE);
    }

    #[test]
    fn oracle_closed_form() {
        let p = OracleParams::default();
        // salient: aa (2), bb (3); cc once
        let prompt = "aa bb cc aa bb bb tldr";
        let b = oracle_breakdown(prompt, "aa cc", &p);
        assert_eq!((b.salient, b.covered, b.invented, b.repeated, b.length), (2, 1, 0, 0, 2));
        assert!((b.score - (0.5 + 2.0 * p.length_bonus)).abs() < 1e-12);
        let b = oracle_breakdown(prompt, "aa bb zz aa", &p);
        assert_eq!((b.covered, b.invented, b.repeated, b.length), (2, 1, 1, 4));
        let want = 1.0 - p.invent_penalty - p.repeat_penalty + 4.0 * p.length_bonus;
        assert!((b.score - want).abs() < 1e-12);
        // tldr in a response is invented; the length bonus is capped
        let long: String = std::iter::repeat_n("cc", 40).collect::<Vec<_>>().join(" ");
        let b = oracle_breakdown(prompt, &long, &p);
        assert_eq!(b.repeated, 39);
        assert!((b.score - (-(39.0) * p.repeat_penalty + p.length_cap as f64 * p.length_bonus)).abs() < 1e-9);
        assert_eq!(oracle_breakdown(prompt, "tldr", &p).invented, 1);
        assert_eq!(oracle_score("x y", "", &p), 0.0);
    }
}
