//! The preference-optimization methods of METHOD.md as manifests name them (DPO, IPO, d-DPO, p-DPO, dp-DPO, e-DPO),
//! the pessimism weight's schedule γ, and the training settings stage parameters choose that the ML core implements
//! (the reduction of sequence log-probabilities, the learning-rate schedule). Declared here, without libtorch, for
//! the `policy` stage's parameters and the report; the worker's losses compute them (worker/src/losses.rs).

use serde::{Deserialize, Deserializer};

/// Preference-optimization methods (manifest names in parentheses).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum Method {
    #[serde(rename = "dpo")]
    Dpo,
    #[serde(rename = "ipo")]
    Ipo,
    /// Reward-model distillation with one reward model.
    #[serde(rename = "d-dpo")]
    DDpo,
    /// DPO plus the forward-KL pessimism term.
    #[serde(rename = "p-dpo")]
    PDpo,
    /// Distillation plus the forward-KL pessimism term.
    #[serde(rename = "dp-dpo")]
    DpDpo,
    /// Pessimistic ensemble distillation: min over reward models, plus the forward-KL term.
    #[serde(rename = "e-dpo")]
    EDpo,
}

impl Method {
    pub const ALL: [Method; 6] = [Method::Dpo, Method::Ipo, Method::DDpo, Method::PDpo, Method::DpDpo, Method::EDpo];

    pub fn name(self) -> &'static str {
        match self {
            Method::Dpo => "dpo",
            Method::Ipo => "ipo",
            Method::DDpo => "d-dpo",
            Method::PDpo => "p-dpo",
            Method::DpDpo => "dp-dpo",
            Method::EDpo => "e-dpo",
        }
    }
    /// The paper's name ("e-DPO"), which everything a user reads says; [`Method::name`] is the manifest's.
    pub fn paper_name(self) -> &'static str {
        match self {
            Method::Dpo => "DPO",
            Method::Ipo => "IPO",
            Method::DDpo => "d-DPO",
            Method::PDpo => "p-DPO",
            Method::DpDpo => "dp-DPO",
            Method::EDpo => "e-DPO",
        }
    }
    pub fn parse(s: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == s)
    }
    /// Needs preference labels (DPO-style) rather than reward-model scores.
    pub fn uses_labels(self) -> bool {
        matches!(self, Method::Dpo | Method::Ipo | Method::PDpo)
    }
    /// Regresses onto reward-model score differences.
    pub fn uses_rewards(self) -> bool {
        matches!(self, Method::DDpo | Method::DpDpo | Method::EDpo)
    }
    /// Has the forward-KL pessimism term `γ·KL(π_ref‖π_θ)`.
    pub fn pessimistic(self) -> bool {
        matches!(self, Method::PDpo | Method::DpDpo | Method::EDpo)
    }
}

/// The paper's name: what messages and logs say ("e-DPO needs …"); manifests and artifacts use [`Method::name`].
impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.paper_name())
    }
}

/// The pessimism weight over training.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GammaSchedule {
    Constant(f64),
    /// Linear from `start` at the first optimizer step to `end` at the last.
    Linear {
        start: f64,
        end: f64,
    },
}

impl GammaSchedule {
    /// γ at optimizer step `step` (0-based) of `total` steps.
    pub fn at(&self, step: usize, total: usize) -> f64 {
        match *self {
            GammaSchedule::Constant(g) => g,
            GammaSchedule::Linear { start, end } => {
                let f = if total <= 1 { 0.0 } else { (step as f64 / (total - 1) as f64).min(1.0) };
                start + (end - start) * f
            }
        }
    }
    pub fn values(&self) -> Vec<f64> {
        match *self {
            GammaSchedule::Constant(g) => vec![g],
            GammaSchedule::Linear { start, end } => vec![start, end],
        }
    }
}

/// As logs show it: `0.1`, or `0 → 0.1 (linear)`.
impl std::fmt::Display for GammaSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            GammaSchedule::Constant(g) => write!(f, "{g}"),
            GammaSchedule::Linear { start, end } => write!(f, "{start} → {end} (linear)"),
        }
    }
}

/// Serialised as written in manifests: a number, or `{ "start": .., "end": .. }`.
impl serde::Serialize for GammaSchedule {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match *self {
            GammaSchedule::Constant(g) => s.serialize_f64(g),
            GammaSchedule::Linear { start, end } => {
                let mut m = s.serialize_map(Some(2))?;
                m.serialize_entry("start", &start)?;
                m.serialize_entry("end", &end)?;
                m.end()
            }
        }
    }
}

/// Manifest forms: `gamma = 0.1`, or `gamma = { start = 1.0, end = 0.0 }` (linear anneal; `schedule = "linear"`
/// may be given, and `{ schedule = "constant", value = 0.1 }` is also accepted).
impl schemars::JsonSchema for GammaSchedule {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "GammaSchedule".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "anyOf": [
            { "type": "number", "minimum": 0 },
            { "type": "object", "description": "{ start, end }: linear over training" }
        ] })
    }
}

impl<'de> Deserialize<'de> for GammaSchedule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Obj {
            #[serde(default)]
            schedule: Option<String>,
            #[serde(default)]
            value: Option<f64>,
            #[serde(default)]
            start: Option<f64>,
            #[serde(default)]
            end: Option<f64>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Obj(Obj),
        }
        use serde::de::Error;
        match Raw::deserialize(d).map_err(|_| {
            D::Error::custom("gamma must be a number (constant) or a table { start = .., end = .. } (linear anneal)")
        })? {
            Raw::Num(g) => Ok(GammaSchedule::Constant(g)),
            Raw::Obj(o) => match (o.schedule.as_deref(), o.value, o.start, o.end) {
                (None | Some("constant"), Some(v), None, None) => Ok(GammaSchedule::Constant(v)),
                (None | Some("linear"), None, Some(start), Some(end)) => Ok(GammaSchedule::Linear { start, end }),
                (Some(s), ..) if s != "constant" && s != "linear" => {
                    Err(D::Error::custom(format!("unknown gamma schedule {s:?} (expected \"constant\" or \"linear\")")))
                }
                _ => Err(D::Error::custom(
                    "gamma table must be { value = g } (constant) or { start = g0, end = g1 } (linear anneal)",
                )),
            },
        }
    }
}

/// How per-token log-probs of a response are combined (the ML core's `Reduction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Reduction {
    /// `Σ_t log π(y_t | x, y_<t)`, the paper's sequence log-probability.
    #[default]
    Sum,
    /// The sum divided by the number of response tokens (TRL's IPO).
    Mean,
}

/// Learning-rate decay after warm-up (the ML core's `Schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LrSchedule {
    Constant,
    #[default]
    Linear,
    Cosine,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gamma_schedules() {
        let c: GammaSchedule = serde_json::from_value(serde_json::json!(0.3)).unwrap();
        assert_eq!(c, GammaSchedule::Constant(0.3));
        assert_eq!(c.at(7, 10), 0.3);
        let l: GammaSchedule = serde_json::from_value(serde_json::json!({"start": 1.0, "end": 0.0})).unwrap();
        assert_eq!(l.at(0, 11), 1.0);
        assert!((l.at(5, 11) - 0.5).abs() < 1e-12);
        assert_eq!(l.at(10, 11), 0.0);
        assert_eq!(l.at(0, 1), 1.0);
        assert_eq!(serde_json::to_value(l).unwrap(), serde_json::json!({"start": 1.0, "end": 0.0}));
        assert_eq!(serde_json::to_value(c).unwrap(), serde_json::json!(0.3));
        let l2: GammaSchedule =
            serde_json::from_value(serde_json::json!({"schedule": "linear", "start": 0.0, "end": 2.0})).unwrap();
        assert_eq!(l2.at(3, 4), 2.0);
        let c2: GammaSchedule =
            serde_json::from_value(serde_json::json!({"schedule": "constant", "value": 0.5})).unwrap();
        assert_eq!(c2, GammaSchedule::Constant(0.5));
        for bad in [
            serde_json::json!({"start": 1.0}),
            serde_json::json!({"schedule": "cosine", "start": 1.0, "end": 0.0}),
            serde_json::json!("x"),
        ] {
            assert!(serde_json::from_value::<GammaSchedule>(bad).is_err());
        }
    }

    #[test]
    fn method_names_roundtrip() {
        for m in Method::ALL {
            assert_eq!(Method::parse(m.name()), Some(m));
            assert_eq!(serde_json::from_value::<Method>(serde_json::json!(m.name())).unwrap(), m);
        }
        assert_eq!(Method::parse("kto"), None);
    }
}
