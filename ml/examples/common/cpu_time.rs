//! Process CPU time, for benchmarks on a shared machine: with one intra-op thread it is the time the step itself
//! ran, whatever else competes for the cores (wall time is reported beside it).

/// Seconds of CPU time used by this process so far (all threads, user + system).
pub fn now() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}
