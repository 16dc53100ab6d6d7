//! Hashing throughput of large artifacts (issue 2: target ≥ 1 GB/s per core).
//!
//! ```text
//! cargo bench -p rmdistill --bench hashing [-- SIZE_MIB [REPS]]
//! ```
//! Writes SIZE_MIB (default 1024) of pseudo-random bytes to a temporary file (BENCH_TMPDIR, else the system temp
//! dir), reads it once so it sits in the page cache, then times `rmdistill::key::hash_file` — the engine's own
//! path (memory-mapped, multi-threaded with rayon for files > 1 MiB) — REPS times (default 7) on a rayon pool of
//! 1 thread and on one of all cores, and single-threaded `blake3::Hasher::update` over an in-memory buffer for
//! reference. Prints best and median GB/s (1 GB = 1e9 bytes) and GB/s per core.
use std::io::Write;
use std::time::Instant;

fn main() {
    // `cargo bench` passes `--bench`; ignore flags.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let mib: usize = args.first().map(|s| s.parse().expect("SIZE_MIB")).unwrap_or(1024);
    let reps: usize = args.get(1).map(|s| s.parse().expect("REPS")).unwrap_or(7);
    let bytes = mib << 20;
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);

    let base = std::env::var_os("BENCH_TMPDIR").map(std::path::PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::tempdir_in(&base).expect("temp dir");
    let path = dir.path().join("artifact.bin");

    // Pseudo-random bytes (xorshift64*).
    let t = Instant::now();
    let mut buf = vec![0u8; bytes];
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in buf.chunks_mut(8) {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        let v = s.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    {
        let mut f = std::fs::File::create(&path).expect("create");
        for c in buf.chunks(1 << 20) {
            f.write_all(c).expect("write");
        }
        f.sync_all().ok();
    }
    println!(
        "file: {} ({mib} MiB = {:.3} GB), written in {:.2} s; cores: {cores}",
        path.display(),
        bytes as f64 / 1e9,
        t.elapsed().as_secs_f64()
    );

    // Warm the page cache (and check the engine agrees with blake3 on the bytes).
    let expect = blake3::hash(&buf).to_hex().to_string();
    let (got, size) = rmdistill::key::hash_file(&path).expect("hash_file");
    assert_eq!((got.as_str(), size), (expect.as_str(), bytes as u64), "hash_file disagrees with blake3::hash");

    let gbs = |secs: f64| bytes as f64 / 1e9 / secs;
    let report = |label: &str, threads: usize, mut secs: Vec<f64>| {
        secs.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let (best, median) = (secs[0], secs[secs.len() / 2]);
        println!(
            "{label:<44} threads={threads:<2} best {:>6.2} GB/s  median {:>6.2} GB/s  per core (median) {:>5.2} GB/s  [{reps} reps, median {:.3} s]",
            gbs(best),
            gbs(median),
            gbs(median) / threads as f64,
            median
        );
    };

    for threads in if cores > 1 { vec![1, cores] } else { vec![1] } {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
        let secs: Vec<f64> = (0..reps)
            .map(|_| {
                pool.install(|| {
                    let t = Instant::now();
                    let (h, _) = rmdistill::key::hash_file(&path).expect("hash_file");
                    let e = t.elapsed().as_secs_f64();
                    assert_eq!(h, expect);
                    e
                })
            })
            .collect();
        report("rmdistill::key::hash_file (mmap + rayon)", threads, secs);
    }

    let secs: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            let mut h = blake3::Hasher::new();
            h.update(&buf);
            let out = h.finalize();
            let e = t.elapsed().as_secs_f64();
            assert_eq!(out.to_hex().as_str(), expect);
            e
        })
        .collect();
    report("blake3::Hasher::update (in memory)", 1, secs);
}
