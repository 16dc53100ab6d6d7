//! What `import` does to a TRL JSONL file, written with polars (lazy): read the three string columns, drop
//! duplicate records (the first kept), count each response's words, write Parquet (zstd level 1, row groups of
//! 131,072 rows, as `import` writes). It does less than `import` — no per-line validation or error locations, no
//! pair ids (BLAKE3 of each pair), no orientation by the id, no summary, no content hash — so it bounds from below
//! what an `import` built on polars would take. Usage: polars-import-bench FILE.jsonl OUT.parquet
//!
//! `polars-import-bench classify N`: `subsample`'s classify-and-select step over N generated rows (lengths 5–100,
//! labels 0/1, 1% unlabelled, seeded), as the loop of `stages/src/subsample.rs` (`classify`, copied here with
//! `longer_than`) and as one polars expression (row indices of the longer- and shorter-preferred pairs); both must
//! give the same indices.
use polars::prelude::*;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `stages/src/longer.rs`'s `longer_than`.
fn longer_than(x: u32, y: u32, margin: f64) -> bool {
    let need = margin * y as f64;
    x > y && (x - y) as f64 >= need - need.abs() * 1e-12
}

/// `stages/src/subsample.rs`'s `classify` (its label check aside: the labels here are valid): the row indices of
/// the longer-preferred and of the shorter-preferred pairs.
fn classify_loop(len_a: &[u32], len_b: &[u32], label: &[Option<i8>], margin: f64) -> (Vec<u32>, Vec<u32>) {
    let (mut longer, mut shorter) = (Vec::new(), Vec::new());
    for i in 0..len_a.len() {
        let Some(l) = label[i] else { continue };
        let (a, b) = (len_a[i], len_b[i]);
        let (a_longer, b_longer) = (longer_than(a, b, margin), longer_than(b, a, margin));
        if a_longer || b_longer {
            if (l == 1) == b_longer {
                longer.push(i as u32);
            } else {
                shorter.push(i as u32);
            }
        }
    }
    (longer, shorter)
}

fn classify_polars(df: &DataFrame, margin: f64) -> PolarsResult<(Vec<u32>, Vec<u32>)> {
    let (a, b) = (col("len_a").cast(DataType::Float64), col("len_b").cast(DataType::Float64));
    // longer_than(x, y): x > y and x − y ≥ margin·y − |margin·y|·1e-12, in the same floating-point operations
    // (margin·y ≥ 0 here, so |margin·y| is margin·y)
    let more = |x: Expr, y: Expr| {
        let need = lit(margin) * y.clone();
        x.clone().gt(y.clone()).and((x - y).gt_eq(need.clone() - need * lit(1e-12)))
    };
    let (a_longer, b_longer) = (more(a.clone(), b.clone()), more(b, a));
    let labelled = col("label").is_not_null();
    let differ = a_longer.or(b_longer.clone());
    let longer_preferred = col("label").eq(lit(1i32)).eq(b_longer);
    let out = df
        .clone()
        .lazy()
        .with_row_index("i", None)
        .filter(labelled.and(differ))
        .select([col("i"), longer_preferred.alias("lp")])
        .collect()?;
    let lp = out.column("lp")?.cast(&DataType::UInt32)?;
    let (i, lp) = (out.column("i")?.idx()?, lp.u32()?);
    let (mut longer, mut shorter) = (Vec::new(), Vec::new());
    for (i, lp) in i.into_no_null_iter().zip(lp.into_no_null_iter()) {
        if lp == 1 {
            longer.push(i)
        } else {
            shorter.push(i)
        }
    }
    Ok((longer, shorter))
}

fn classify_bench(n: usize) -> PolarsResult<()> {
    let mut x: u64 = 20261205;
    let mut next = || {
        x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (x >> 33) as u32
    };
    let (mut len_a, mut len_b, mut label) = (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
    for _ in 0..n {
        len_a.push(5 + next() % 96);
        len_b.push(5 + next() % 96);
        label.push(if next() % 100 == 0 { None } else { Some((next() % 2) as i8) });
    }
    let t = Instant::now();
    let by_loop = classify_loop(&len_a, &len_b, &label, 0.1);
    let t_loop = t.elapsed().as_secs_f64();
    // the label as Int32: polars is built here without its 8-bit types
    let label32: Vec<Option<i32>> = label.iter().map(|l| l.map(i32::from)).collect();
    let df = df!("len_a" => &len_a, "len_b" => &len_b, "label" => &label32)?;
    let t = Instant::now();
    let by_polars = classify_polars(&df, 0.1)?;
    let t_polars = t.elapsed().as_secs_f64();
    assert_eq!(by_loop, by_polars, "the two classifications differ");
    println!(
        "classify {n} rows: loop {t_loop:.3} s, polars {t_polars:.3} s ({} longer-, {} shorter-preferred, same indices)",
        by_loop.0.len(),
        by_loop.1.len()
    );
    Ok(())
}

fn main() -> PolarsResult<()> {
    let args: Vec<String> = std::env::args().collect();
    if args[1] == "classify" {
        return classify_bench(args[2].parse().expect("classify N"));
    }
    let (path, out) = (&args[1], &args[2]);
    let t = Instant::now();
    let df = LazyJsonLineReader::new(PlRefPath::new(path.as_str())).finish()?.collect()?;
    eprintln!("read {} rows x {} columns in {:.3} s", df.height(), df.width(), t.elapsed().as_secs_f64());
    let t = Instant::now();
    let mut df = df
        .lazy()
        .unique_stable(None, UniqueKeepStrategy::First)
        .with_columns([
            col("chosen").str().count_matches(lit(r"\S+"), false).alias("words_a"),
            col("rejected").str().count_matches(lit(r"\S+"), false).alias("words_b"),
        ])
        .collect()?;
    eprintln!("deduplicated and counted words in {:.3} s ({} rows)", t.elapsed().as_secs_f64(), df.height());
    let t = Instant::now();
    let level = polars_parquet::write::ZstdLevel::try_new(1).expect("zstd level 1 is valid");
    ParquetWriter::new(std::fs::File::create(out)?)
        .with_compression(ParquetCompression::Zstd(Some(level)))
        .with_row_group_size(Some(131_072))
        .finish(&mut df)?;
    eprintln!("wrote in {:.3} s", t.elapsed().as_secs_f64());
    Ok(())
}
