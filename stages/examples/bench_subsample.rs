//! Benchmark of `subsample` on a large generated pairs table.
//!
//! ```text
//! CARGO_TARGET_DIR=... cargo run -p rmdistill-stages --release --example bench_subsample [-- N [DIR]]
//! ```
//! Generates N pairs (default 10,000,000) with short texts through the `generate` stage into DIR/pairs.parquet
//! (default: a temporary directory; an existing file there is reused), then times, for a few requests:
//! the stage's `run` end to end (read the label and length columns, select, read the selected rows, write), and the
//! selection core alone (`classify` + `plan` + `draw` on columns already in memory).
use rmdistill_stages::port;
use rmdistill_stages::{generate, subsample, table};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[path = "../tests/support/local_ctx.rs"]
mod local_ctx;
use local_ctx::LocalCtx;

fn main() {
    let _ = port::parse_params::<Value>; // the port, for the included helper
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args.get(1).map(|s| s.replace('_', "").parse().expect("N")).unwrap_or(10_000_000);
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = args.get(2).map(PathBuf::from).unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir).unwrap();
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("threads: {threads}");

    let pairs = dir.join("pairs.parquet");
    let reuse =
        pairs.exists() && table::read_kv(&pairs).unwrap().contains(&("rmdistill.pairs".to_string(), n.to_string()));
    if !reuse {
        let t = Instant::now();
        let ctx = LocalCtx::new(
            &dir,
            json!({"n": n, "seed": 1, "prompt_words": [3, 8], "response_words": [1, 12], "longer_preferred": 0.6}),
        );
        let s = generate::run(&ctx).unwrap();
        println!("generate {n} pairs: {:.2} s ({s})", t.elapsed().as_secs_f64());
    }
    let bytes = std::fs::metadata(&pairs).unwrap().len();
    println!("input: {} ({:.1} MB)", pairs.display(), bytes as f64 / 1e6);

    // The selection core on in-memory columns.
    let t = Instant::now();
    let cols = table::read_table(&pairs, Some(&[table::LABEL, table::WORDS_A, table::WORDS_B])).unwrap();
    let t_read = t.elapsed().as_secs_f64();
    let label = cols.column(0).as_any().downcast_ref::<arrow::array::Int8Array>().unwrap().clone();
    let wa = table::u32_values(&cols, table::WORDS_A).unwrap().clone();
    let wb = table::u32_values(&cols, table::WORDS_B).unwrap().clone();
    println!("read label+words columns (projection): {:.3} s", t_read);
    for (rho, size) in [(0.5, subsample::Size::Exact(30_000)), (0.2, subsample::Size::Max)] {
        let t = Instant::now();
        let c = subsample::classify(wa.values(), wb.values(), &label, 0.1, "label").unwrap();
        let t_classify = t.elapsed().as_secs_f64();
        let (size, nl, ns) = subsample::plan(&c, rho, size, 0.1, "words").unwrap();
        let t2 = Instant::now();
        let order = subsample::draw(c, nl, ns, 0);
        let t_draw = t2.elapsed().as_secs_f64();
        println!(
            "selection core rho={rho} size={size}: classify {:.3} s + draw {:.3} s = {:.3} s ({} rows)",
            t_classify,
            t_draw,
            t.elapsed().as_secs_f64(),
            order.len()
        );
    }

    let sel: Vec<u32> = (0..30_000u32)
        .map(|i| (i as u64 * 333 % n) as u32)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let t = Instant::now();
    let b = table::read_rows(&pairs, &sel).unwrap();
    println!("read_rows {} spread rows: {:.3} s", b.num_rows(), t.elapsed().as_secs_f64());

    // The stage end to end: best of `reps` wall-clock runs (the machine may be shared), with the process CPU time.
    for (k, (params, reps)) in [
        (json!({"rho": 0.5, "size": 30_000, "seed": 1}), 3),
        (json!({"rho": 0.2, "size": 1_000_000, "seed": 1}), 2),
        (json!({"rho": 0.2, "size": "max", "seed": 1}), 1),
    ]
    .into_iter()
    .enumerate()
    {
        let mut best = f64::INFINITY;
        let mut line = String::new();
        for _ in 0..reps {
            let out = dir.join(format!("run{k}"));
            std::fs::create_dir_all(&out).unwrap();
            let ctx = LocalCtx::new(&out, params.clone()).input("pairs", &pairs);
            let (t, cpu0) = (Instant::now(), cpu_seconds());
            let s = subsample::run(&ctx).unwrap();
            let (secs, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - cpu0);
            if secs < best {
                best = secs;
                line = format!(
                    "subsample run end to end {params}: {secs:.3} s wall (best of {reps}), {cpu:.2} s CPU → {} rows, rho_achieved {}, output {:.1} MB\n  log: {}",
                    s["size"],
                    s["rho_achieved"],
                    std::fs::metadata(ctx.out("dataset")).unwrap().len() as f64 / 1e6,
                    ctx.logs.lock().unwrap().join(" | ")
                );
            }
            cleanup(&out);
        }
        println!("{line}");
    }
    println!("load average: {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
}

/// User + system CPU time of this process so far (Linux; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    let Some(rest) = stat.rsplit(')').next() else { return 0.0 };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // fields 14 and 15 of stat (utime, stime) are at 11 and 12 after the command name
    let ticks: f64 = f.get(11).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn cleanup(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}
