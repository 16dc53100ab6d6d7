//! `merge_eval`: an evaluation's shards back into one: the `samples` tables concatenated in shard order (the
//! unsharded table, row for row) and the summary recomputed from them ([`crate::evaluation`]), which equals the
//! unsharded evaluation's.

use crate::evaluation::{cut_samples, cut_warning, samples_from, summarize, summary_json, summary_table};
use crate::port::*;
use crate::table;
use serde::Deserialize;
use serde_json::{Map, Value};

pub struct MergeEval;

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct MergeParams {}

impl Stage for MergeEval {
    fn kind(&self) -> &'static str {
        "merge_eval"
    }
    fn doc(&self) -> &'static str {
        "joins a sharded evaluate's samples in shard order and recomputes its summary (= the unsharded evaluation)"
    }
    fn inputs(&self) -> &'static [InputSpec] {
        &[InputSpec { name: "parts", required: true, many: true, doc: "evaluate.samples of every shard" }]
    }
    fn outputs(&self) -> &'static [OutputSpec] {
        &[
            OutputSpec { name: "samples", kind: ArtifactKind::File, doc: "the shards' samples in shard order" },
            OutputSpec { name: "summary", kind: ArtifactKind::File, doc: "one row, as evaluate's summary" },
        ]
    }
    fn validate(&self, params: &Map<String, Value>) -> StageResult<()> {
        parse_params::<MergeParams>(params).map(|_| ())
    }
    fn params_schema(&self) -> schemars::Schema {
        schemars::schema_for!(MergeParams)
    }
    fn runs(&self) -> Runs {
        Runs::InProcess(run)
    }
}

pub fn run(ctx: &dyn Ctx) -> StageResult<Value> {
    let parts = ctx.inputs("parts");
    let crate::shards::Shards { shards, by_shard, merged } = crate::shards::concat_shards(ctx, parts)?;
    // every shard evaluated the same policy on the same split
    let meta = |(k, kv): &(usize, Vec<(String, String)>), key: &str| {
        kv.iter().find(|(x, _)| x == &format!("rmdistill.{key}")).map(|(_, v)| v.clone()).ok_or_else(|| {
            StageError::invalid(
                "parts",
                format!(
                    "{} ({}): no `rmdistill.{key}` metadata: not an evaluate.samples table",
                    parts[*k].node,
                    parts[*k].path.display()
                ),
            )
        })
    };
    let first = &by_shard[&0];
    let (info, split) = (meta(first, "policy_info")?, meta(first, "split")?);
    // the evaluation itself: the reference, the prompts, the oracle and every sampling parameter but the shard
    let sampling_key = crate::evaluation::SAMPLING_KEY.trim_start_matches("rmdistill.");
    let sampling = meta(first, sampling_key)?;
    for part in by_shard.values() {
        if meta(part, "policy_info")? != info || meta(part, "split")? != split {
            return Err(StageError::invalid(
                "parts",
                format!("{} evaluated another policy or split than {}", parts[part.0].node, parts[first.0].node),
            ));
        }
        let theirs = meta(part, sampling_key)?;
        if theirs != sampling {
            let parse = |t: &str| serde_json::from_str::<Value>(t).unwrap_or(Value::Null);
            let differ = crate::reuse::record_mismatch(&parse(&sampling), Some(&parse(&theirs)));
            return Err(StageError::invalid(
                "parts",
                format!(
                    "{} is a shard of another evaluation than {} ({}; there = {0}, here = {1}): bind the shards of one \
                     evaluate stage",
                    parts[part.0].node,
                    parts[first.0].node,
                    differ.join("; ")
                ),
            ));
        }
    }
    let s = samples_from(&merged, &parts[0].path)?;
    let sum = summarize(&s);
    let info: Value = serde_json::from_str(&info).unwrap_or(Value::Null);
    let split = (split != "null").then_some(split);
    let max_new_tokens = serde_json::from_str::<Value>(&sampling)
        .ok()
        .and_then(|r| r.get("max_new_tokens").and_then(Value::as_u64))
        .map_or(usize::MAX, |n| n as usize);
    let cut = cut_samples(&s, max_new_tokens);
    let summary = summary_json(&sum, s.prompt.len(), split.as_deref(), &info, 0, 1, cut);
    let kv = [table::summary_kv("merge_eval", &summary), vec![(crate::evaluation::SAMPLING_KEY.to_string(), sampling)]]
        .concat();
    table::write_table(&ctx.output_path("samples"), &merged, &kv)?;
    table::write_table(&ctx.output_path("summary"), &summary_table(&sum, &info, split.as_deref())?, &kv)?;
    ctx.log(&format!(
        "merged {shards} shards: {} rows, advantage {:+.4} [{:+.4}, {:+.4}]",
        s.prompt.len(),
        sum.advantage.mean,
        sum.advantage.ci_low,
        sum.advantage.ci_high
    ));
    if let Some(w) = cut_warning(cut, s.prompt.len(), max_new_tokens) {
        ctx.warn(&w);
    }
    Ok(summary)
}
