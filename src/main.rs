// mimalloc: stages running in this process (import, subsample) allocate from both cores at once; glibc's malloc
// made import's parallel JSON parsing 2.5× slower (BENCHMARKS.md, import).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc.h's `mi_option_purge_delay` (the same index in its v2 and v3; libmimalloc-sys does not name it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

use clap::Parser;

fn main() {
    // Freed memory goes back to the system after 250 ms, not mimalloc v3's default of 1 s: `import` allocates and
    // frees each few row groups' records and batches in turn, and with 1 s the freed ones stayed resident beside the
    // next (peak 1.15 GB for a 970 MB file against 0.80–0.89 GB). Shorter delays keep less but give pages back
    // that the next group faults in again, which costs more system time than it saves (BENCHMARKS.md, import).
    // `MIMALLOC_PURGE_DELAY` in the environment overrides this, as it does mimalloc's own default.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        unsafe {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 250);
        }
    }
    // Piped into `head` and the like, a command line tool ends quietly when the reader goes away (Rust ignores
    // SIGPIPE by default, which turns it into a panic on the next print).
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = match rmdistill::cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { rmdistill::error::exit::INVALID } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    if let Err(e) = rmdistill::cli::main(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(rmdistill::error::exit_code(&e));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_index_names_mimallocs_purge_delay() {
        // main() has not run here, so the option holds mimalloc v3's default for the purge delay, 1000 ms — a value
        // no neighbouring option has by default; a wrong index (or another mimalloc) reads something else
        let got = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(got, 1000, "option {} is not mimalloc's purge delay", super::MI_OPTION_PURGE_DELAY);
    }
}
