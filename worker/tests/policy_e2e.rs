//! The policy-side stages (policy, evaluate, report, select) end to end on a tiny random GPT-2 with a word-level
//! tokenizer and hand-made tables in the contract's schemas (pairs, precompute.rewards, precompute.ref_samples).
//! The synthetic oracle scores are the real oracle's (`rmdistill_stages::oracle`).

use arrow::array::{Array, ArrayRef, Float64Array, Float64Builder, ListBuilder, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use rmdistill_ml::tch;
use rmdistill_ml::{Gpt2Config, LanguageModel, ModelConfig, Reduction, RewardModel, Tokenizer, TokenizerSpec};
use rmdistill_stages::evaluate::Evaluate;
use rmdistill_stages::oracle::{OracleParams, oracle_score};
use rmdistill_stages::policy::Policy;
use rmdistill_stages::port::{Ctx, Device, InputArtifact, Stage};
use rmdistill_stages::table;
use rmdistill_worker::lm_io::{self, Codec};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// A context with File outputs at `dir/<name>.parquet` and Dir outputs at `dir/<name>/`.
struct TestCtx {
    params: Map<String, Value>,
    inputs: BTreeMap<String, Vec<InputArtifact>>,
    dir: PathBuf,
    dirs: Vec<&'static str>,
    logs: Mutex<Vec<String>>,
}

impl TestCtx {
    fn new(dir: &Path, params: Value, dirs: &[&'static str]) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let Value::Object(params) = params else { panic!() };
        TestCtx {
            params,
            inputs: BTreeMap::new(),
            dir: dir.to_path_buf(),
            dirs: dirs.to_vec(),
            logs: Mutex::new(vec![]),
        }
    }
    fn input(mut self, slot: &str, path: &Path, coords: Value) -> Self {
        let coords = coords.as_object().cloned().unwrap_or_default().into_iter().collect();
        let node = format!("{slot}{}", self.inputs.get(slot).map_or(0, |v| v.len()));
        self.inputs.entry(slot.into()).or_default().push(InputArtifact {
            path: path.to_path_buf(),
            hash: String::new(),
            node,
            coords,
        });
        self
    }
}

impl Ctx for TestCtx {
    fn params(&self) -> &Map<String, Value> {
        &self.params
    }
    fn inputs(&self, slot: &str) -> &[InputArtifact] {
        self.inputs.get(slot).map_or(&[], |v| v.as_slice())
    }
    fn external(&self, _: &str) -> Option<&Path> {
        None
    }
    fn output_path(&self, name: &str) -> PathBuf {
        if self.dirs.contains(&name) { self.dir.join(name) } else { self.dir.join(format!("{name}.parquet")) }
    }
    fn progress(&self, _: u64, _: u64) {}
    fn log(&self, m: &str) {
        self.logs.lock().unwrap().push(m.to_string());
    }
    fn warn(&self, m: &str) {
        self.logs.lock().unwrap().push(format!("warning: {m}"));
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn threads(&self) -> usize {
        1
    }
}

const WORDS: [&str; 12] =
    ["red", "blue", "green", "cat", "dog", "fish", "runs", "sits", "eats", "big", "small", "fast"];

/// Everything the stages read, built once per test binary.
struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    reference: PathBuf,
    oracle: PathBuf,
    pairs: PathBuf,
    rewards1: PathBuf,
    rewards3: PathBuf,
    rewards0: PathBuf,
    ref_samples: PathBuf,
    prompts: PathBuf,
}

/// The jobs of these tests seed libtorch's process-wide generator and run on the test harness's parallel threads; the
/// tests that compare two runs bit for bit need no other test drawing from it in between, so every test that runs a
/// job holds this for its whole body.
fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn text(rng: &mut u64, n: usize) -> String {
    (0..n)
        .map(|_| {
            *rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            WORDS[(*rng >> 33) as usize % WORDS.len()]
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn rewards_table(path: &Path, ids: &[String], ra: &[f64], rb: &[f64], members: &[Vec<(f64, f64)>]) {
    let mut la = ListBuilder::new(Float64Builder::new());
    let mut lb = ListBuilder::new(Float64Builder::new());
    for row in &members[..ids.len()] {
        for m in row {
            la.values().append_value(m.0);
            lb.values().append_value(m.1);
        }
        la.append(true);
        lb.append(true);
    }
    let la = la.finish();
    let lb = lb.finish();
    let schema = Schema::new(vec![
        Field::new("pair_id", DataType::Utf8, false),
        Field::new("ref_logp_a", DataType::Float64, false),
        Field::new("ref_logp_b", DataType::Float64, false),
        Field::new("reward_a", la.data_type().clone(), false),
        Field::new("reward_b", lb.data_type().clone(), false),
    ]);
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(ids.to_vec())),
        Arc::new(Float64Array::from(ra.to_vec())),
        Arc::new(Float64Array::from(rb.to_vec())),
        Arc::new(la),
        Arc::new(lb),
    ];
    let m = members.first().map_or(0, |v| v.len());
    let names: Vec<String> = (0..m).map(|k| format!("rm@member={k}")).collect();
    table::write_table(
        path,
        &RecordBatch::try_new(Arc::new(schema), cols).unwrap(),
        &[("rmdistill.members".into(), serde_json::to_string(&names).unwrap())],
    )
    .unwrap();
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        tch::set_num_threads(1);
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let mut rng = 7u64;
        let corpus: Vec<String> = (0..200).map(|i| text(&mut rng, 3 + i % 6)).collect();
        let tok =
            Tokenizer::train(TokenizerSpec::WordLevel { vocab_size: 64, min_frequency: 1 }, corpus.iter()).unwrap();
        let vocab = tok.vocab_size() as i64;
        tch::manual_seed(3);
        let mut cfg = Gpt2Config::new(vocab, 64, 32, 2, 2);
        cfg.eos_token_id = tok.eos_id;
        cfg.bos_token_id = tok.bos_id;
        let reference = root.join("reference");
        let lm = LanguageModel::new(ModelConfig::Gpt2(cfg.clone()), tch::Device::Cpu);
        tok.save(&reference).unwrap();
        lm.save(&reference, None).unwrap();
        let oracle = root.join("oracle");
        let rm = RewardModel::new(ModelConfig::Gpt2(cfg), tch::Device::Cpu);
        tok.save(&oracle).unwrap();
        rm.save(&oracle, None).unwrap();
        // pairs: 24 pairs, label prefers the longer response two times in three
        let mut b = table::PairsBuilder::with_capacity(24, 4096);
        let mut ids = vec![];
        let (mut pa, mut pb, mut pp) = (vec![], vec![], vec![]);
        for i in 0..24u32 {
            let p = text(&mut rng, 4);
            let a = text(&mut rng, 2 + (i as usize % 3));
            let bb = text(&mut rng, 5 + (i as usize % 2));
            let id = table::pair_id(&table::pair_hash(&p, &a, &bb));
            let label = if i % 3 == 0 { 0 } else { 1 };
            b.push(table::PairRow {
                pair_id: &id,
                prompt: &p,
                a: &a,
                b: &bb,
                label: Some(label),
                words: (table::word_count(&a), table::word_count(&bb)),
                tokens: None,
                source_row: i,
            });
            ids.push(id);
            pa.push(a);
            pb.push(bb);
            pp.push(p);
        }
        let pairs = root.join("pairs.parquet");
        table::write_table(&pairs, &b.finish(), &[("rmdistill.rho".into(), "0.6".into())]).unwrap();
        // precompute.rewards: reference log-probs under the encoding convention, members that disagree on length
        let codec = Codec::load(&reference, "reference").unwrap().with_max_len(512);
        let enc = |v: &[String], f: &dyn Fn(&str) -> Vec<i64>| v.iter().map(|s| f(s)).collect::<Vec<_>>();
        let prom = enc(&pp, &|s| codec.prompt(s).unwrap());
        let ra_ids = enc(&pa, &|s| codec.response(s).unwrap());
        let rb_ids = enc(&pb, &|s| codec.response(s).unwrap());
        fn sl(v: &[Vec<i64>]) -> Vec<&[i64]> {
            v.iter().map(|x| x.as_slice()).collect()
        }
        let ref_a = lm_io::logprobs_nograd(&lm, &codec, &sl(&prom), &sl(&ra_ids), Reduction::Sum, 8).unwrap();
        let ref_b = lm_io::logprobs_nograd(&lm, &codec, &sl(&prom), &sl(&rb_ids), Reduction::Sum, 8).unwrap();
        let len = |s: &String| table::word_count(s) as f64;
        let member = |w: f64| -> Vec<(f64, f64)> { (0..24).map(|i| (w * len(&pa[i]), w * len(&pb[i]))).collect() };
        let ms: Vec<Vec<(f64, f64)>> =
            [member(0.3), member(-0.2), member(0.05)].into_iter().fold(vec![vec![]; 24], |mut acc, m| {
                for (i, x) in m.into_iter().enumerate() {
                    acc[i].push(x);
                }
                acc
            });
        let rewards3 = root.join("rewards3.parquet");
        rewards_table(&rewards3, &ids, &ref_a, &ref_b, &ms);
        let rewards1 = root.join("rewards1.parquet");
        rewards_table(&rewards1, &ids, &ref_a, &ref_b, &ms.iter().map(|m| vec![m[0]]).collect::<Vec<_>>());
        let rewards0 = root.join("rewards0.parquet");
        rewards_table(&rewards0, &ids, &ref_a, &ref_b, &vec![vec![]; 24]);
        // precompute.ref_samples: two samples per distinct prompt from the reference
        let cfgs = rmdistill_ml::SampleConfig {
            max_new_tokens: 8,
            temperature: 1.0,
            top_p: 1.0,
            seed: 1,
            eos_ids: vec![codec.eos],
            use_cache: true,
        };
        let pr2: Vec<&[i64]> = prom.iter().chain(prom.iter()).map(|v| v.as_slice()).collect();
        let s = rmdistill_ml::generate(&lm, &pr2, codec.pad, &cfgs).unwrap();
        let texts: Vec<String> = s.tokens.iter().map(|t| codec.decode_sample(t).unwrap()).collect();
        let keep: Vec<usize> = (0..texts.len()).filter(|&i| !texts[i].is_empty()).collect();
        let sp: Vec<String> = keep.iter().map(|&i| pp[i % 24].clone()).collect();
        let st: Vec<String> = keep.iter().map(|&i| texts[i].clone()).collect();
        let sr = enc(&st, &|s| codec.response(s).unwrap());
        let spi = enc(&sp, &|s| codec.prompt(s).unwrap());
        let slp = lm_io::logprobs_nograd(&lm, &codec, &sl(&spi), &sl(&sr), Reduction::Sum, 8).unwrap();
        let schema = Schema::new(vec![
            Field::new("prompt", DataType::Utf8, false),
            Field::new("response", DataType::Utf8, false),
            Field::new("ref_logp", DataType::Float64, false),
        ]);
        let ref_samples = root.join("ref_samples.parquet");
        let cols: Vec<ArrayRef> =
            vec![Arc::new(StringArray::from(sp)), Arc::new(StringArray::from(st)), Arc::new(Float64Array::from(slp))];
        table::write_table(&ref_samples, &RecordBatch::try_new(Arc::new(schema), cols).unwrap(), &[]).unwrap();
        // held-out prompts with a split column
        let prompts = root.join("prompts.parquet");
        let ptexts: Vec<String> = (0..12).map(|_| text(&mut rng, 4)).collect();
        let splits: Vec<&str> = (0..12).map(|i| if i < 6 { "eval" } else { "test" }).collect();
        let schema =
            Schema::new(vec![Field::new("prompt", DataType::Utf8, false), Field::new("split", DataType::Utf8, false)]);
        let cols: Vec<ArrayRef> = vec![Arc::new(StringArray::from(ptexts)), Arc::new(StringArray::from(splits))];
        table::write_table(&prompts, &RecordBatch::try_new(Arc::new(schema), cols).unwrap(), &[]).unwrap();
        Fixture { _dir: dir, root, reference, oracle, pairs, rewards1, rewards3, rewards0, ref_samples, prompts }
    })
}

fn train(name: &str, params: Value, rewards: Option<&Path>) -> Result<(Value, PathBuf), String> {
    train_with(name, params, rewards, &fixture().ref_samples)
}

fn train_with(name: &str, params: Value, rewards: Option<&Path>, samples: &Path) -> Result<(Value, PathBuf), String> {
    let f = fixture();
    let out = f.root.join("runs").join(name);
    let _ = std::fs::remove_dir_all(&out);
    let mut ctx = TestCtx::new(&out, params, &["model"]).input("pairs", &f.pairs, json!({})).input(
        "reference",
        &f.reference,
        json!({}),
    );
    if let Some(r) = rewards {
        ctx = ctx.input("rewards", r, json!({}));
    }
    ctx = ctx.input("ref_samples", samples, json!({}));
    Policy.validate(ctx.params()).map_err(|e| e.to_string())?;
    let s = rmdistill_worker::policy::run(&ctx).map_err(|e| e.to_string())?;
    Ok((s, out))
}

fn metrics(out: &Path) -> RecordBatch {
    table::read_table(&out.join("metrics.parquet"), None).unwrap()
}

fn col(t: &RecordBatch, c: &str) -> Vec<f64> {
    lm_io::f64s(t, c, Path::new("metrics")).unwrap()
}

#[test]
fn every_method_trains_and_logs_its_metrics() {
    let _rng = rng_lock();
    let f = fixture();
    let base = json!({"beta": 0.5, "tau": 0.5, "gamma": 0.1, "steps": 6, "batch_size": 8, "lr": 1e-3, "seed": 1});
    for m in ["dpo", "ipo", "d-dpo", "p-dpo", "dp-dpo", "e-dpo"] {
        let mut p = base.clone();
        p["method"] = json!(m);
        let rewards = match m {
            "dpo" | "ipo" | "p-dpo" => None,
            "e-dpo" => Some(f.rewards3.as_path()),
            _ => Some(f.rewards1.as_path()),
        };
        let t0 = std::time::Instant::now();
        let (s, out) = train(m, p, rewards).unwrap_or_else(|e| panic!("{m}: {e}"));
        eprintln!("{m}: {:.2} s, summary {s}", t0.elapsed().as_secs_f64());
        let t = metrics(&out);
        assert_eq!(t.num_rows(), 6, "{m}");
        for c in ["loss", "base_loss", "margin", "logp_chosen", "logp_rejected", "kl", "gamma", "accuracy"] {
            assert!(col(&t, c).iter().all(|v| v.is_finite()), "{m}: {c}");
        }
        // at step 1 the policy is the reference: margin 0, KL estimate 0 (up to float error)
        assert!(col(&t, "margin")[0].abs() < 1e-3, "{m}: {:?}", col(&t, "margin"));
        assert!(col(&t, "kl")[0].abs() < 1e-3, "{m}: {:?}", col(&t, "kl"));
        if m == "e-dpo" {
            let chosen = col(&t, "chosen_member");
            assert!(chosen.iter().all(|&c| c == 0.0 || c == 1.0 || c == 2.0));
            for k in 0..3 {
                assert!(col(&t, &format!("best_member_{k}")).iter().all(|v| (0.0..=1.0).contains(v)));
            }
            let sum: f64 = (0..3).map(|k| col(&t, &format!("best_member_{k}"))[0]).sum();
            assert!((sum - 1.0).abs() < 1e-9);
            assert!(s["member_chosen_steps"].is_object(), "{s}");
        }
        if m == "dpo" {
            // at the reference, DPO's loss is log 2
            assert!((col(&t, "loss")[0] - 2f64.ln()).abs() < 1e-4);
        }
        if m == "ipo" {
            assert!((col(&t, "loss")[0] - 1.0).abs() < 1e-3, "(1/(2·0.5))² = 1");
        }
        let info: Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("model/rmdistill_policy.json")).unwrap()).unwrap();
        assert_eq!(info["method"], m);
        assert_eq!(info["rho"], 0.6);
        assert!(out.join("model/model.safetensors").exists() && out.join("model/tokenizer.json").exists());
    }
}

#[test]
fn dpo_moves_the_margin_and_is_deterministic() {
    let _rng = rng_lock();
    let p = json!({"method": "dpo", "beta": 1.0, "steps": 15, "batch_size": 8, "lr": 3e-3, "seed": 4});
    let (_, a) = train("det-a", p.clone(), None).unwrap();
    let (_, b) = train("det-b", p, None).unwrap();
    assert_eq!(
        std::fs::read(a.join("model/model.safetensors")).unwrap(),
        std::fs::read(b.join("model/model.safetensors")).unwrap()
    );
    assert_eq!(std::fs::read(a.join("metrics.parquet")).unwrap(), std::fs::read(b.join("metrics.parquet")).unwrap());
    let t = metrics(&a);
    let (l, m) = (col(&t, "loss"), col(&t, "margin"));
    let k = l.len();
    assert!(l[k - 3..].iter().sum::<f64>() / 3.0 < l[..3].iter().sum::<f64>() / 3.0, "loss decreases: {l:?}");
    assert!(m[k - 1] > m[0], "margin grows: {m:?}");
    let (_, c) = train(
        "det-c",
        json!({"method": "dpo", "beta": 1.0, "steps": 15, "batch_size": 8, "lr": 3e-3, "seed": 5}),
        None,
    )
    .unwrap();
    assert_ne!(
        std::fs::read(a.join("model/model.safetensors")).unwrap(),
        std::fs::read(c.join("model/model.safetensors")).unwrap()
    );
}

#[test]
fn precomputed_rewards_give_the_same_dpo_run() {
    let _rng = rng_lock();
    let f = fixture();
    let p = json!({"method": "dpo", "beta": 0.5, "steps": 4, "batch_size": 8, "lr": 1e-3, "seed": 2});
    let (_, a) = train("pre-a", p.clone(), None).unwrap();
    let (_, b) = train("pre-b", p, Some(&f.rewards1)).unwrap();
    let (la, lb) = (col(&metrics(&a), "loss"), col(&metrics(&b), "loss"));
    for (x, y) in la.iter().zip(&lb) {
        assert!((x - y).abs() < 1e-4, "{la:?} vs {lb:?}");
    }
}

#[test]
fn bad_requests_fail_before_work_with_clear_errors() {
    let _rng = rng_lock();
    let f = fixture();
    let cases: Vec<(Value, Option<&Path>, &str)> = vec![
        (json!({"method": "dpo", "beta": 0.0}), None, "beta: must be a finite number > 0, got 0"),
        (json!({"method": "dpo", "beta": -1.0}), None, "beta: must be a finite number > 0"),
        (json!({"method": "ipo", "tau": 0.0}), None, "tau: must be a finite number > 0"),
        (json!({"method": "kto"}), None, "unknown variant `kto`"),
        (json!({"method": "p-dpo", "gamma": -0.5}), None, "gamma: must be finite and >= 0"),
        (json!({"method": "p-dpo"}), None, "gamma: p-DPO has a forward-KL term"),
        (
            json!({"method": "e-dpo", "gamma": {"start": 1.0, "end": -1.0}}),
            None,
            "gamma: must be finite and >= 0, got -1",
        ),
        (json!({"method": "dpo", "bogus": 1}), None, "unknown field `bogus`"),
        (json!({"method": "d-dpo"}), None, "rewards: d-DPO distils reward models"),
        (
            json!({"method": "d-dpo"}),
            Some(&f.rewards3),
            "d-DPO distils exactly one reward model, but the rewards table has 3 members",
        ),
        (json!({"method": "dp-dpo", "gamma": 0.1}), Some(&f.rewards3), "dp-DPO distils exactly one reward model"),
        (
            json!({"method": "e-dpo", "gamma": 0.1}),
            Some(&f.rewards0),
            "e-DPO needs an ensemble of at least one reward model",
        ),
    ];
    for (p, r, want) in cases {
        let e = train("bad", p.clone(), r).unwrap_err();
        assert!(e.contains(want), "{p}: {e}");
        assert!(!f.root.join("runs/bad/metrics.parquet").exists(), "nothing written for {p}");
    }
}

#[test]
fn mismatched_reference_logprobs_are_caught() {
    let _rng = rng_lock();
    let f = fixture();
    let t = table::read_table(&f.rewards1, None).unwrap();
    let shifted = arrow::compute::kernels::numeric::add(t.column(1), &Float64Array::new_scalar(-0.7)).unwrap();
    let mut cols = t.columns().to_vec();
    cols[1] = shifted;
    let bad = f.root.join("rewards_shifted.parquet");
    table::write_table(&bad, &RecordBatch::try_new(t.schema(), cols).unwrap(), &[]).unwrap();
    let e = train("shifted", json!({"method": "d-dpo", "steps": 2}), Some(&bad)).unwrap_err();
    assert!(e.contains("precompute and policy disagree"), "{e}");
}

fn evaluate(name: &str, policy: &Path, params: Value, oracle: bool) -> Result<(Value, PathBuf), String> {
    evaluate_reusing(name, policy, params, oracle, None)
}

/// `evaluate`, with `reference_samples` bound when given.
fn evaluate_reusing(
    name: &str,
    policy: &Path,
    params: Value,
    oracle: bool,
    reference_samples: Option<&Path>,
) -> Result<(Value, PathBuf), String> {
    let f = fixture();
    let out = f.root.join("evals").join(name);
    let _ = std::fs::remove_dir_all(&out);
    let mut ctx = TestCtx::new(&out, params, &[])
        .input("policy", policy, json!({}))
        .input("reference", &f.reference, json!({}))
        .input("prompts", &f.prompts, json!({}));
    if oracle {
        ctx = ctx.input("oracle", &f.oracle, json!({}));
    }
    if let Some(r) = reference_samples {
        ctx = ctx.input("reference_samples", r, json!({}));
    }
    Evaluate.validate(ctx.params()).map_err(|e| e.to_string())?;
    let s = rmdistill_worker::evaluate::run(&ctx).map_err(|e| e.to_string())?;
    Ok((s, out))
}

/// The synthetic task's oracle with its default knobs (what `oracle = "synthetic"` without `oracle_params` scores).
fn synthetic(prompt: &str, response: &str) -> f64 {
    oracle_score(prompt, response, &OracleParams::default())
}

#[test]
fn evaluate_reference_against_itself_and_a_trained_policy() {
    let _rng = rng_lock();
    let f = fixture();
    // the reference against itself: identical samples (common random numbers) → advantage 0, win rate ½, KL 0
    let (s, out) = evaluate(
        "self",
        &f.reference,
        json!({"oracle": "reward_model", "split": "test", "samples_per_prompt": 2, "max_new_tokens": 8}),
        true,
    )
    .unwrap();
    assert_eq!(s["n_prompts"], 6);
    assert_eq!(s["samples"], 12);
    assert_eq!(s["advantage"], 0.0);
    assert_eq!(s["win_rate"], 0.5);
    assert!(s["kl"].as_f64().unwrap().abs() < 1e-6);
    let sum = table::read_table(&out.join("summary.parquet"), None).unwrap();
    assert_eq!(sum.num_rows(), 1);
    for c in ["advantage", "ci_low", "ci_high", "win_rate", "mean_len", "ref_mean_len", "kl"] {
        assert!(sum.column_by_name(c).is_some(), "{c}");
    }
    // a trained policy with the synthetic oracle, on the eval split
    let (_, pol) = train(
        "eval-pol",
        json!({"method": "dpo", "beta": 1.0, "steps": 10, "batch_size": 8, "lr": 5e-3, "seed": 1}),
        None,
    )
    .unwrap();
    let p = json!({"oracle": "synthetic", "split": "eval", "samples_per_prompt": 3, "max_new_tokens": 8, "temperature": 0.8, "seed": 3});
    let (s1, o1) = evaluate("pol", &pol.join("model"), p.clone(), false).unwrap();
    let (s2, o2) = evaluate("pol2", &pol.join("model"), p, false).unwrap();
    assert_eq!(
        std::fs::read(o1.join("samples.parquet")).unwrap(),
        std::fs::read(o2.join("samples.parquet")).unwrap(),
        "seeded"
    );
    assert_eq!(std::fs::read(o1.join("summary.parquet")).unwrap(), std::fs::read(o2.join("summary.parquet")).unwrap());
    assert_eq!(s1["advantage"], s2["advantage"]);
    assert_eq!(s1["method"], "dpo");
    let (lo, hi, a) =
        (s1["ci_low"].as_f64().unwrap(), s1["ci_high"].as_f64().unwrap(), s1["advantage"].as_f64().unwrap());
    assert!(lo <= a && a <= hi);
    assert!(s1["kl"].as_f64().unwrap() > 0.0, "the trained policy differs: {s1}");
    // re-scoring the samples with the oracle reproduces the summary
    let rows = rmdistill_stages::evaluation::read_samples(&o1.join("samples.parquet")).unwrap();
    for i in 0..rows.prompt.len() {
        assert_eq!(rows.policy_oracle[i], synthetic(&rows.prompt[i], &rows.policy_response[i]));
        assert_eq!(rows.ref_oracle[i], synthetic(&rows.prompt[i], &rows.ref_response[i]));
    }
    assert!((rmdistill_stages::evaluation::summarize(&rows).advantage.mean - a).abs() < 1e-12);
    // the KL's log-probs are those of each sample scored afresh: log π_θ (the sampler's own, untempered although it
    // drew at temperature 0.8) and log π_ref
    let codec = Codec::load(&pol.join("model"), "policy").unwrap();
    let policy = LanguageModel::load(&pol.join("model"), tch::Device::Cpu).unwrap();
    let reference = LanguageModel::load(&f.reference, tch::Device::Cpu).unwrap();
    let mut checked = 0;
    for i in 0..rows.prompt.len() {
        let mut r = codec.response(&rows.policy_response[i]).unwrap();
        if r.len() - 1 != rows.policy_len[i] as usize {
            continue; // a special token the text does not keep: its ids cannot be rebuilt from the table
        }
        if rows.policy_len[i] == 8 {
            r.pop(); // cut at max_new_tokens: no EOS was drawn
        }
        let p = codec.prompt(&rows.prompt[i]).unwrap();
        let lp = |m: &LanguageModel| lm_io::logprobs_nograd(m, &codec, &[&p], &[&r], Reduction::Sum, 1).unwrap()[0];
        let (got, want) = (rows.policy_logp[i], lp(&policy));
        assert!((got - want).abs() < 1e-4, "row {i}: log π_θ {got} recorded, {want} scored");
        let (got, want) = (rows.policy_logp_ref[i], lp(&reference));
        assert!((got - want).abs() < 1e-4, "row {i}: log π_ref {got} recorded, {want} scored");
        checked += 1;
    }
    assert!(3 * checked >= rows.prompt.len(), "only {checked} of {} samples could be re-scored", rows.prompt.len());
    // bad requests
    let e = evaluate("bad", &f.reference, json!({"oracle": "reward_model"}), false).unwrap_err();
    assert!(e.contains("needs a reward-model checkpoint"), "{e}");
    let e = evaluate("bad", &f.reference, json!({"oracle": "reward_model", "split": "validation"}), true).unwrap_err();
    assert!(e.contains("no prompts to evaluate for split \"validation\"") && e.contains("\"eval\": 6"), "{e}");
    let e = evaluate("bad", &f.reference, json!({"oracle": "reward_model", "temperature": 0.0}), true).unwrap_err();
    assert!(e.contains("temperature"), "{e}");
}

#[test]
fn report_and_select_from_a_small_sweep() {
    let _rng = rng_lock();
    let f = fixture();
    let out = f.root.join("sweep");
    let mut evals = vec![];
    let mut mets = vec![];
    for rho in [0.2, 0.8] {
        for method in ["dpo", "d-dpo", "e-dpo"] {
            for seed in [0, 1] {
                let name = format!("{method}-{rho}-{seed}");
                let mut p = json!({"method": method, "beta": 0.5, "steps": 3, "batch_size": 8, "lr": 2e-3, "seed": seed, "gamma": 0.1});
                if method == "dpo" {
                    p.as_object_mut().unwrap().remove("gamma");
                }
                let r = match method {
                    "dpo" => None,
                    "e-dpo" => Some(f.rewards3.as_path()),
                    _ => Some(f.rewards1.as_path()),
                };
                let (_, pol) = train(&name, p, r).unwrap();
                let (_, ev) = evaluate(
                    &name,
                    &pol.join("model"),
                    json!({"oracle": "synthetic", "split": "eval", "max_new_tokens": 6, "seed": seed}),
                    false,
                )
                .unwrap();
                let coords = json!({"rho": rho, "method": method, "seed": seed});
                evals.push((ev.join("summary.parquet"), coords.clone()));
                mets.push((pol.join("metrics.parquet"), coords));
            }
        }
    }
    let mut ctx = TestCtx::new(&out, json!({}), &["report"]);
    for (p, c) in &evals {
        ctx = ctx.input("evals", p, c.clone());
    }
    for (p, c) in &mets {
        ctx = ctx.input("metrics", p, c.clone());
    }
    let t0 = std::time::Instant::now();
    let s = rmdistill_stages::report::run(&ctx).unwrap();
    eprintln!("report in {:.2} s: {s}", t0.elapsed().as_secs_f64());
    let md = std::fs::read_to_string(out.join("report/report.md")).unwrap();
    assert!(md.contains("| ρ | DPO | d-DPO | e-DPO |"), "{md}");
    assert!(md.contains("| 0.2 |") && md.contains("| 0.8 |"), "{md}");
    // two seeds: the contrasts are tested (df = 1), Holm-corrected within each ρ
    assert!(md.contains("## Contrasts fixed in advance") && md.contains("| 0.2 | d-DPO − DPO | 2 |"), "{md}");
    assert!(!md.contains("Wald"), "{md}");
    assert!(md.contains("e-DPO ensemble members (Fig. B.3)"), "{md}");
    for png in ["advantage_vs_rho.png", "logp_trajectories.png", "member_usage.png"] {
        let b = std::fs::read(out.join("report").join(png)).unwrap();
        assert_eq!(&b[1..4], b"PNG", "{png}");
        assert!(b.len() > 5000, "{png} has content");
    }
    assert_eq!(s["cells"], 6);
    if let Some(keep) = std::env::var_os("RMDISTILL_KEEP_REPORT") {
        let keep = PathBuf::from(keep);
        std::fs::create_dir_all(&keep).unwrap();
        for e in std::fs::read_dir(out.join("report")).unwrap().flatten() {
            std::fs::copy(e.path(), keep.join(e.file_name())).unwrap();
        }
    }
    // select over a β sweep (coords carry beta): each evaluation stands for both candidates, so that every
    // candidate has the same seeds (select refuses candidates compared over different seeds)
    let mut sctx = TestCtx::new(&f.root.join("select"), json!({}), &[]);
    for (p, c) in &evals {
        for beta in [0.1, 1.0] {
            let mut c = c.clone();
            c["beta"] = json!(beta);
            sctx = sctx.input("evals", p, c);
        }
    }
    let s = rmdistill_stages::select::run(&sctx).unwrap();
    assert_eq!(s["chosen"].as_array().unwrap().len(), 6, "{s}");
    // and with each β on other seeds, refused, naming the seeds
    let mut uneven = TestCtx::new(&f.root.join("select_uneven"), json!({}), &[]);
    for (i, (p, c)) in evals.iter().enumerate() {
        let mut c = c.clone();
        c["beta"] = json!(if i % 2 == 0 { 0.1 } else { 1.0 });
        uneven = uneven.input("evals", p, c);
    }
    let e = rmdistill_stages::select::run(&uneven).unwrap_err().to_string();
    assert!(e.contains("were evaluated on different seeds"), "{e}");
    let t = table::read_table(&f.root.join("select/selection.parquet"), None).unwrap();
    assert_eq!(t.num_rows(), 6);
}

#[test]
fn kl_from_pairs_linear_gamma_and_mean_reduction() {
    let _rng = rng_lock();
    let f = fixture();
    let p = json!({"method": "p-dpo", "kl_source": "pairs", "gamma": {"start": 1.0, "end": 0.0}, "steps": 5, "batch_size": 8, "lr": 1e-3});
    let (_, out) = train("klpairs", p, Some(&f.rewards1)).unwrap();
    let t = metrics(&out);
    assert_eq!(col(&t, "gamma"), vec![1.0, 0.75, 0.5, 0.25, 0.0]);
    assert!(col(&t, "kl")[0].abs() < 1e-3);
    let e = train("klpairs-bad", json!({"method": "p-dpo", "kl_source": "pairs", "gamma": 0.1}), None).unwrap_err();
    assert!(e.contains("kl_source = \"pairs\" needs"), "{e}");
    // per-token mean log-probs (TRL's IPO): the reference's are computed here, the loss at the reference is (1/(2τ))²
    let (_, out) = train(
        "ipo-mean",
        json!({"method": "ipo", "tau": 0.25, "reduction": "mean", "steps": 2, "batch_size": 8}),
        Some(&f.rewards1),
    )
    .unwrap();
    assert!((col(&metrics(&out), "loss")[0] - 4.0).abs() < 1e-3);
}

#[test]
fn kl_on_the_batch_prompts_samples_uniform_draws_and_missing_samples_refused() {
    let _rng = rng_lock();
    let f = fixture();
    // at the first step π_θ = π_ref, so the KL estimate is 0 exactly when every row's precomputed log π_ref belongs
    // to the sample scored: for the batch's own prompts (the default) and for uniform draws over all prompts
    let base = json!({"method": "p-dpo", "gamma": 0.1, "steps": 3, "batch_size": 8, "lr": 1e-3, "seed": 4});
    let (_, out) = train("kl-batch", base.clone(), None).unwrap();
    let kl = col(&metrics(&out), "kl");
    assert!(kl[0].abs() < 1e-3, "{kl:?}");
    let (_, again) = train("kl-batch2", base.clone(), None).unwrap();
    assert_eq!(kl, col(&metrics(&again), "kl"), "deterministic");
    let mut uni = base.clone();
    uni["kl_source"] = json!("ref_samples_uniform");
    uni["kl_batch_size"] = json!(5);
    let (_, out) = train("kl-uniform", uni, None).unwrap();
    let ku = col(&metrics(&out), "kl");
    assert!(ku[0].abs() < 1e-3, "{ku:?}");
    assert_ne!(ku, kl, "other samples, other estimates");
    // kl_batch_size means nothing to the per-pair samples: refused, not ignored
    let mut bad = base.clone();
    bad["kl_batch_size"] = json!(5);
    let e = train("kl-bad", bad, None).unwrap_err();
    assert!(e.contains("kl_batch_size: applies to kl_source = \"ref_samples_uniform\""), "{e}");
    // samples drawn for other prompts: the first pair's prompt has none
    let t = table::read_table(&f.ref_samples, None).unwrap();
    let pairs = table::read_table(&f.pairs, None).unwrap();
    let first = lm_io::strings(&pairs, "prompt", &f.pairs).unwrap()[0].clone();
    let keep: Vec<bool> = lm_io::strings(&t, "prompt", &f.ref_samples).unwrap().iter().map(|p| *p != first).collect();
    let t = arrow::compute::filter_record_batch(&t, &arrow::array::BooleanArray::from(keep)).unwrap();
    let other = f.root.join("ref_samples_other.parquet");
    table::write_table(&other, &t, &[]).unwrap();
    let e = train_with("kl-missing", base.clone(), None, &other).unwrap_err();
    assert!(e.contains("no π_ref sample for the prompt of pair") && e.contains("pairs row 0"), "{e}");
    assert!(!f.root.join("runs/kl-missing/metrics.parquet").exists());
    let mut uni = base;
    uni["kl_source"] = json!("ref_samples_uniform");
    train_with("kl-missing-uniform", uni, None, &other).unwrap();
}

#[test]
fn reused_reference_samples_give_the_same_evaluation_and_wrong_ones_are_refused() {
    let _rng = rng_lock();
    let f = fixture();
    let (_, pol) = train(
        "reuse-pol",
        json!({"method": "dpo", "beta": 1.0, "steps": 6, "batch_size": 8, "lr": 5e-3, "seed": 2}),
        None,
    )
    .unwrap();
    let pol = pol.join("model");
    for (oracle, p) in [
        (
            false,
            json!({"oracle": "synthetic", "split": "eval", "samples_per_prompt": 3, "max_new_tokens": 8, "batch_size": 4, "seed": 5}),
        ),
        (
            true,
            json!({"oracle": "reward_model", "split": "test", "samples_per_prompt": 2, "max_new_tokens": 8, "seed": 1}),
        ),
    ] {
        // π_ref against itself samples once; its samples are what a policy's evaluation draws for π_ref
        let (s, own) = evaluate_reusing("reuse-ref", &f.reference, p.clone(), oracle, None).unwrap();
        assert_eq!(s["advantage"], 0.0);
        let own = own.join("samples.parquet");
        let (_, drawn) = evaluate_reusing("reuse-drawn", &pol, p.clone(), oracle, None).unwrap();
        let (_, reused) = evaluate_reusing("reuse-read", &pol, p.clone(), oracle, Some(&own)).unwrap();
        for t in ["samples.parquet", "summary.parquet"] {
            assert_eq!(std::fs::read(drawn.join(t)).unwrap(), std::fs::read(reused.join(t)).unwrap(), "{t}, {p}");
        }
        // drawn with another parameter, or by a table that is not an evaluation's: refused, naming why
        let mut other = p.clone();
        other["temperature"] = json!(0.7);
        let e = evaluate_reusing("reuse-bad", &pol, other, oracle, Some(&own)).unwrap_err();
        assert!(e.contains("reference_samples") && e.contains("temperature: 1.0 there, 0.7 here"), "{e}");
        let e = evaluate_reusing("reuse-bad", &pol, p.clone(), oracle, Some(&f.prompts)).unwrap_err();
        assert!(e.contains("no record of how it was computed"), "{e}");
    }
    // the same record but other rows (a table edited after the fact): refused
    let p = json!({"oracle": "synthetic", "split": "eval", "max_new_tokens": 8, "seed": 5});
    let (_, own) = evaluate_reusing("reuse-ref2", &f.reference, p.clone(), false, None).unwrap();
    let own = own.join("samples.parquet");
    let t = table::read_table(&own, None).unwrap();
    let kv = table::read_kv(&own).unwrap();
    let edited = f.root.join("evals").join("reuse-edited.parquet");
    table::write_table(&edited, &t.slice(1, t.num_rows() - 1), &kv).unwrap();
    let e = evaluate_reusing("reuse-bad", &pol, p, false, Some(&edited)).unwrap_err();
    assert!(e.contains(&format!("{} rows, this node has {}", t.num_rows() - 1, t.num_rows())), "{e}");
}
