//! The data/reward stages chained on local files (no engine): synth → sft → sample_pairs → label (sharded + merge)
//! → subsample → train_rm → precompute, at a small size; checks the contract's artifacts and determinism.
//! `RMDISTILL_DATA_CHAIN_DEFAULT=1` runs the default sizes of pipelines/robust-distill.toml instead and prints
//! each stage's time (the numbers quoted in the stage docs).

use arrow::array::{Array, AsArray};
use rmdistill_stages::port::{self, StageResult};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug)]
pub struct Step {
    pub dir: PathBuf,
    pub summary: Value,
    pub secs: f64,
}

impl Step {
    pub fn out(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.parquet"))
    }
}

#[path = "../../stages/tests/support/local_ctx.rs"]
mod local_ctx;
use local_ctx::LocalCtx;

/// Validates and runs a stage kind as the worker does (its implementation here, or its declaration's in-process one).
pub fn run_stage(kind: &str, dir: &Path, params: Value, inputs: &[(&str, PathBuf)]) -> StageResult<Step> {
    std::fs::create_dir_all(dir).unwrap();
    rmdistill_stages::stage(kind).unwrap().validate(params.as_object().unwrap())?;
    let run = rmdistill_worker::implementation(kind).unwrap();
    let mut ctx = LocalCtx::new(dir, params);
    ctx.threads = 1;
    for (slot, p) in inputs {
        ctx = ctx.input(slot, p.clone());
    }
    let t0 = Instant::now();
    let summary = run(&ctx)?;
    Ok(Step { dir: dir.to_path_buf(), summary, secs: t0.elapsed().as_secs_f64() })
}

/// Params overridden by a JSON object in an environment variable (for tuning runs).
fn with_env(mut p: Value, var: &str) -> Value {
    if let Ok(extra) = std::env::var(var) {
        let e: Value = serde_json::from_str(&extra).unwrap();
        p.as_object_mut().unwrap().extend(e.as_object().unwrap().clone());
    }
    p
}

#[test]
fn chain_synth_sft_pairs_label() {
    let full = std::env::var("RMDISTILL_DATA_CHAIN_DEFAULT").is_ok();
    let tmp = tempfile::tempdir().unwrap();
    let d = |n: &str| tmp.path().join(n);
    let n_docs = if full { 3000 } else { 600 };
    let synth =
        run_stage("synth", &d("synth"), with_env(json!({"n_docs": n_docs, "seed": 1}), "RMDISTILL_SYNTH_PARAMS"), &[])
            .unwrap();
    eprintln!("synth {:.2}s {}", synth.secs, synth.summary);
    let steps = if full { 300 } else { 60 };
    let sft = run_stage(
        "sft",
        &d("sft"),
        with_env(json!({"steps": steps, "seed": 1}), "RMDISTILL_SFT_PARAMS"),
        &[("data", synth.out("corpus")), ("tokenizer", synth.out("tokenizer"))],
    )
    .unwrap();
    eprintln!("sft {:.2}s {}", sft.secs, sft.summary);
    let pairs = run_stage(
        "sample_pairs",
        &d("pairs"),
        with_env(json!({"seed": 1, "pairs_per_prompt": if full { 2 } else { 1 }}), "RMDISTILL_PAIRS_PARAMS"),
        &[("policy", sft.out("model")), ("prompts", synth.out("corpus"))],
    )
    .unwrap();
    eprintln!("sample_pairs {:.2}s {}", pairs.secs, pairs.summary);
    let label =
        run_stage("label", &d("label"), json!({"oracle": "synthetic"}), &[("pairs", pairs.out("pairs"))]).unwrap();
    eprintln!("label {:.2}s {}", label.secs, label.summary);
    check_rest(&tmp, &synth, &sft, &pairs, &label, full);
    if full {
        let t = rmdistill_stages::table::read_table(&label.out("labelled"), None).unwrap();
        let f = |c: &str| rmdistill_stages::data_io::strings(&t, c, Path::new("x"), false).unwrap();
        let (p, a, b) = (f("prompt"), f("response_a"), f("response_b"));
        for i in 0..4 {
            eprintln!("P: {}\n  A: {}\n  B: {}", p[i], a[i], b[i]);
        }
    }
}

/// Can the tiny model learn to copy? (diagnostic: prompt = 6 random words, response = the same words)
#[test]
#[ignore]
fn tiny_model_learns_to_copy() {
    use rmdistill_ml::tch;
    rmdistill_ml::train::deterministic_cpu(0, 1);
    let names: Vec<String> = (0..300).map(rmdistill_stages::synth::word).collect();
    let tok = rmdistill_worker::synth::task_tokenizer(&names).unwrap();
    let codec = rmdistill_worker::data_io::Codec::new(tok, "t").unwrap();
    let arch = rmdistill_stages::sft::ArchParams::default();
    let model = rmdistill_ml::LanguageModel::new(rmdistill_worker::sft::build_config(&arch, &codec), tch::Device::Cpu);
    let mut tr = rmdistill_ml::Trainer::new(
        &model.vs,
        rmdistill_ml::OptimConfig { lr: 3e-3, total_steps: 800, warmup_steps: 20, ..Default::default() },
    )
    .unwrap();
    let mut rng = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(1);
    for step in 0..800 {
        let mut ps = vec![];
        let mut rs = vec![];
        for _ in 0..32 {
            let w: Vec<String> =
                (0..6).map(|_| names[rmdistill_stages::table::uniform_below(&mut rng, 300) as usize].clone()).collect();
            ps.push(codec.prompt(&format!("{} tldr", w.join(" "))).unwrap());
            rs.push(codec.response(&w.join(" ")).unwrap());
        }
        let p: Vec<&[i64]> = ps.iter().map(|x| x.as_slice()).collect();
        let r: Vec<&[i64]> = rs.iter().map(|x| x.as_slice()).collect();
        let b = codec.batch(&p, &r, tch::Device::Cpu).unwrap();
        let lp = rmdistill_ml::sequence_logprobs(model.net(), &b, rmdistill_ml::Reduction::Sum);
        let loss = -lp.sum(tch::Kind::Float) / (32.0 * 7.0);
        let m = tr.backward(&loss, &[]).unwrap().unwrap();
        if step % 100 == 0 {
            eprintln!("step {step} loss {:.3}", m.loss);
        }
    }
}

fn check_rest(tmp: &tempfile::TempDir, synth: &Step, sft: &Step, pairs: &Step, label: &Step, full: bool) {
    use rmdistill_stages::table;
    let d = |n: &str| tmp.path().join(n);
    // sharded labelling + merge = unsharded labelling
    let mut parts = vec![];
    for k in 0..3 {
        let s = run_stage(
            "label",
            &d(&format!("label{k}")),
            json!({"oracle": "synthetic", "shard": k, "shards": 3}),
            &[("pairs", pairs.out("pairs"))],
        )
        .unwrap();
        parts.push(("parts", s.out("labelled")));
    }
    parts.swap(0, 2);
    let merged = run_stage("merge", &d("merge"), json!({}), &parts).unwrap();
    assert_eq!(
        table::read_table(&merged.out("merged"), None).unwrap(),
        table::read_table(&label.out("labelled"), None).unwrap()
    );
    let e = run_stage("merge", &d("merge_bad"), json!({}), &parts[..2]).unwrap_err().to_string();
    assert!(e.contains("missing"), "{e}");
    // ties: "coin" keeps them (label = a bit of the pair id), "drop" leaves exactly them out; neither lets rounding
    // decide (scores equal within the oracle's tolerance are ties)
    let dropped = run_stage(
        "label",
        &d("label_drop"),
        json!({"oracle": "synthetic", "ties": "drop"}),
        &[("pairs", pairs.out("pairs"))],
    )
    .unwrap();
    let (coin_t, drop_t) = (
        table::read_table(&label.out("labelled"), None).unwrap(),
        table::read_table(&dropped.out("labelled"), None).unwrap(),
    );
    let cols = |t: &arrow::array::RecordBatch| {
        let f = |c: &str| rmdistill_stages::data_io::f64s(t, c, Path::new("x")).unwrap();
        let ids = rmdistill_stages::data_io::strings(t, "pair_id", Path::new("x"), true).unwrap();
        let l = rmdistill_stages::data_io::opt_i64s(t, "label", Path::new("x")).unwrap();
        (ids, f("oracle_a"), f("oracle_b"), l)
    };
    let (ids, oa, ob, l) = cols(&coin_t);
    let tie = |i: usize| rmdistill_stages::oracle::compare(oa[i], ob[i]).is_eq();
    let ties = (0..ids.len()).filter(|&i| tie(i)).count();
    assert!(ties > 0, "the synthetic oracle's ties are common; none in {} pairs", ids.len());
    assert!((0..ids.len()).any(|i| tie(i) && oa[i] != ob[i]), "no rounding-level tie to guard against");
    for i in 0..ids.len() {
        let want =
            if tie(i) { (u8::from_str_radix(&ids[i][..2], 16).unwrap() & 1) as i64 } else { (ob[i] > oa[i]) as i64 };
        assert_eq!(l[i], Some(want), "row {i}: {} vs {}", oa[i], ob[i]);
    }
    assert_eq!(label.summary["ties"].as_u64(), Some(ties as u64));
    let kept: Vec<&String> = (0..ids.len()).filter(|&i| !tie(i)).map(|i| &ids[i]).collect();
    let (d_ids, d_oa, d_ob, _) = cols(&drop_t);
    assert_eq!(d_ids.iter().collect::<Vec<_>>(), kept);
    assert!(d_oa.iter().zip(&d_ob).all(|(a, b)| rmdistill_stages::oracle::compare(*a, *b).is_ne()));
    assert_eq!(dropped.summary["pairs"].as_u64(), Some(kept.len() as u64));
    assert_eq!(dropped.summary["ties_dropped"].as_u64(), Some(ties as u64));
    // D_rho and two members
    let (size, member_size) = if full { (1200, 300) } else { (120, 40) };
    let t0 = Instant::now();
    let drho = run_stage(
        "subsample",
        &d("drho"),
        json!({"rho": 0.3, "size": size, "seed": 0}),
        &[("pairs", label.out("labelled"))],
    )
    .unwrap();
    let mut members = vec![];
    for (k, r) in [0.2, 0.8].into_iter().enumerate() {
        members.push(
            run_stage(
                "subsample",
                &d(&format!("m{k}")),
                json!({"rho": r, "size": member_size, "seed": 0}),
                &[("pairs", drho.out("dataset"))],
            )
            .unwrap(),
        );
    }
    eprintln!("subsample ×3 {:.2}s", t0.elapsed().as_secs_f64());
    let rm_params = json!({"seed": 0});
    let rm = run_stage(
        "train_rm",
        &d("rm"),
        rm_params.clone(),
        &[("data", drho.out("dataset")), ("base", sft.out("model"))],
    )
    .unwrap();
    eprintln!("train_rm (D_rho, {size}) {:.2}s {}", rm.secs, rm.summary);
    let mut rms = vec![];
    for (k, m) in members.iter().enumerate() {
        let r = run_stage(
            "train_rm",
            &d(&format!("rm{k}")),
            rm_params.clone(),
            &[("data", m.out("dataset")), ("base", sft.out("model"))],
        )
        .unwrap();
        eprintln!("train_rm (member {k}, {member_size}) {:.2}s {}", r.secs, r.summary);
        rms.push(r);
    }
    let acc = rm.summary["held_out_accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc));
    assert!(rm.out("model").join("model.safetensors").exists() && rm.out("model").join("tokenizer.json").exists());
    // determinism: same inputs → same bytes
    let rm2 =
        run_stage("train_rm", &d("rm_again"), rm_params, &[("data", drho.out("dataset")), ("base", sft.out("model"))])
            .unwrap();
    assert_eq!(
        std::fs::read(rm.out("model").join("model.safetensors")).unwrap(),
        std::fs::read(rm2.out("model").join("model.safetensors")).unwrap()
    );
    assert_eq!(std::fs::read(rm.out("metrics")).unwrap(), std::fs::read(rm2.out("metrics")).unwrap());
    // precompute with two members (bound in reverse order: ordered by coords)
    let mut ctx_inputs = vec![("pairs", drho.out("dataset")), ("reference", sft.out("model"))];
    ctx_inputs.push(("reward_models", rms[1].out("model")));
    ctx_inputs.push(("reward_models", rms[0].out("model")));
    let pre_dir = d("pre");
    std::fs::create_dir_all(&pre_dir).unwrap();
    let mut ctx = LocalCtx::new(&pre_dir, json!({"seed": 0}));
    ctx.threads = 1;
    for (slot, p) in &ctx_inputs {
        ctx = ctx.input(slot, p.clone());
    }
    for (k, member) in [(0usize, 0.8), (1usize, 0.2)] {
        let a = &mut ctx.inputs.get_mut("reward_models").unwrap()[k];
        a.coords.insert("member".into(), json!(member));
        a.node = format!("rm_member@member={member}");
    }
    let t0 = Instant::now();
    let pre = rmdistill_worker::precompute::run(&ctx).unwrap();
    eprintln!("precompute (2 members) {:.2}s {pre}", t0.elapsed().as_secs_f64());
    assert_eq!(pre["members"], json!(["rm_member@member=0.2", "rm_member@member=0.8"]));
    let rw = table::read_table(&ctx.out("rewards"), None).unwrap();
    assert_eq!(rw.num_rows(), size);
    let kv = table::read_kv(&ctx.out("rewards")).unwrap();
    assert!(kv.iter().any(|(k, v)| k == "rmdistill.members" && v.contains("member=0.2")));
    let samples = table::read_table(&ctx.out("ref_samples"), None).unwrap();
    let ids = rmdistill_stages::data_io::strings(
        &table::read_table(&drho.out("dataset"), Some(&["prompt"])).unwrap(),
        "prompt",
        Path::new("x"),
        true,
    )
    .unwrap();
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(samples.num_rows(), distinct.len());
    // reference log-probs agree with the member order-independent reference: the sum over tokens is negative
    let lp = f64s(&rw, "ref_logp_a");
    assert!(lp.iter().all(|x| *x < 0.0));
    // rewards agree with the members' own scoring (member 0 = the 0.2 model = rms[0])
    let _ = synth;
    // sharded precompute = unsharded
    let mut parts_r = vec![];
    let mut parts_s = vec![];
    for k in 0..2usize {
        let dir = d(&format!("pre{k}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = LocalCtx::new(&dir, json!({"seed": 0, "shard": k, "shards": 2, "sample_batch": 16}));
        c.threads = 1;
        c.inputs = ctx.inputs.clone();
        rmdistill_worker::precompute::run(&c).unwrap();
        parts_r.push(("parts", c.out("rewards")));
        parts_s.push(("parts", c.out("ref_samples")));
    }
    let mr = run_stage("merge", &d("mr"), json!({}), &parts_r).unwrap();
    let ms = run_stage("merge", &d("ms"), json!({}), &parts_s).unwrap();
    let (a, b) = (table::read_table(&mr.out("merged"), None).unwrap(), rw);
    assert_eq!(a.num_rows(), b.num_rows());
    for c in ["pair_id", "len_a", "len_b"] {
        assert_eq!(a.column_by_name(c), b.column_by_name(c));
    }
    let (x, y) = (f64s(&a, "ref_logp_b"), f64s(&b, "ref_logp_b"));
    assert!(x.iter().zip(&y).all(|(p, q)| (p - q).abs() < 1e-4), "sharding changes only batch composition");
    assert!(table::read_kv(&mr.out("merged")).unwrap().iter().any(|(k, _)| k == "rmdistill.members"));
    assert_eq!(
        table::read_table(&ms.out("merged"), None).unwrap().num_rows(),
        // with sample_batch 16 the prompts are blocked differently from the unsharded default (256): same count
        distinct.len()
    );
    // errors users can act on
    let e = run_stage(
        "train_rm",
        &d("bad1"),
        json!({"label_column": "nope"}),
        &[("data", drho.out("dataset")), ("base", sft.out("model"))],
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("nope:") && e.contains("missing label column"), "{e}");
    let e = run_stage("train_rm", &d("bad2"), json!({}), &[("data", pairs.out("pairs")), ("base", sft.out("model"))])
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("label:") && e.contains("unlabelled"), "{e}");
    // no reward models: the same reference log-probs, empty reward lists, no samples when none are asked for
    let refs = run_stage(
        "precompute",
        &d("ref_only"),
        json!({"seed": 0, "samples_per_prompt": 0}),
        &[("pairs", drho.out("dataset")), ("reference", sft.out("model"))],
    )
    .unwrap();
    let only = table::read_table(&refs.out("rewards"), None).unwrap();
    assert_eq!(f64s(&only, "ref_logp_a"), f64s(&b, "ref_logp_a"));
    assert_eq!(f64s(&only, "ref_logp_b"), f64s(&b, "ref_logp_b"));
    let lists = only.column_by_name("reward_a").unwrap().as_list::<i32>();
    assert!((0..lists.len()).all(|i| lists.value(i).is_empty()));
    assert_eq!(table::read_table(&refs.out("ref_samples"), None).unwrap().num_rows(), 0);
    // the ensemble's precompute reading those log-probs instead of computing them: the same tables, byte for byte
    let reuse = |name: &str, params: Value, bound: &Path| {
        let dir = d(name);
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = LocalCtx::new(&dir, params);
        c.threads = 1;
        c.inputs = ctx.inputs.clone();
        let c = c.input("reference_logprobs", bound);
        rmdistill_worker::precompute::run(&c).map(|_| dir).map_err(|e| e.to_string())
    };
    let dir = reuse("pre_reuse", json!({"seed": 0}), &refs.out("rewards")).unwrap();
    for t in ["rewards.parquet", "ref_samples.parquet"] {
        assert_eq!(std::fs::read(dir.join(t)).unwrap(), std::fs::read(pre_dir.join(t)).unwrap(), "{t}");
    }
    // log-probs computed with another batch size, or of another shard: refused, naming the difference
    let e = reuse("pre_reuse_bad", json!({"seed": 0, "batch_size": 7}), &refs.out("rewards")).unwrap_err();
    assert!(e.starts_with("reference_logprobs:") && e.contains("batch_size: 128 there, 7 here"), "{e}");
    let e = reuse("pre_reuse_bad", json!({"seed": 0}), &parts_r[0].1).unwrap_err();
    assert!(e.contains(&format!("rows, this node has {size}")), "{e}");
    let e = run_stage(
        "precompute",
        &d("bad4"),
        json!({}),
        &[("pairs", drho.out("dataset")), ("reference", sft.out("model")), ("reward_models", sft.out("model"))],
    )
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("reward_models:") && e.contains("not a reward model"), "{e}");
    let e = run_stage("label", &d("bad5"), json!({"oracle": "reward_model"}), &[("pairs", pairs.out("pairs"))])
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("oracle:"), "{e}");
    let _ = full;
}

/// A Float64 column's values.
fn f64s(batch: &arrow::array::RecordBatch, col: &str) -> Vec<f64> {
    rmdistill_stages::data_io::f64s(batch, col, Path::new("test")).unwrap()
}
