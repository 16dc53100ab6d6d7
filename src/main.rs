//! The `rmdistill` binary: the allocator for the stages that run in this process, then the command line (`rmdistill::cli`).

// mimalloc: the stages that run in this process (import, subsample, report, …) allocate from several threads at
// once; glibc's malloc made import's parallel JSON parsing 2.5× slower (BENCHMARKS.md, import).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc.h's `mi_option_purge_delay` and `mi_option_purge_decommits` (mimalloc v3, which libmimalloc-sys builds
/// by default; it does not name them).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const MI_OPTION_PURGE_DECOMMITS: libmimalloc_sys::mi_option_t = 5;

use clap::Parser;

fn main() {
    // How freed memory goes back to the system. mimalloc is built without transparent huge pages (`no_thp`): it
    // reserves 1 GiB arenas and asked for them with MADV_HUGEPAGE, so each page it had given back came back as a
    // 2 MiB page zeroed — or compacted for — on the spot (`clear_page_erms` a fifth of an import's samples). And a
    // purge marks pages free (MADV_FREE) instead of dropping them (MADV_DONTNEED): the kernel takes them only under
    // memory pressure, so pages freed by one row group and written by the next are not faulted in and zeroed again.
    // Freed memory is marked so after 250 ms, not mimalloc v3's default of 1 s, so that the kernel may take it early.
    // Measured together (BENCHMARKS.md, "mimalloc without huge pages"): `import` of 1M records 1.14× faster (median),
    // `generate` + `subsample` over 10M pairs 1.3–1.45×, system time a third to a half. `MIMALLOC_PURGE_DELAY` and
    // `MIMALLOC_PURGE_DECOMMITS` in the environment override these, as they do mimalloc's own defaults.
    for (var, option, value) in [
        ("MIMALLOC_PURGE_DELAY", MI_OPTION_PURGE_DELAY, 250),
        ("MIMALLOC_PURGE_DECOMMITS", MI_OPTION_PURGE_DECOMMITS, 0),
    ] {
        if std::env::var_os(var).is_none() {
            unsafe {
                libmimalloc_sys::mi_option_set(option, value);
            }
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
            // clap's message quotes the argument it refused: a huge one is shortened (and printed without colour).
            match e.use_stderr().then(|| rmdistill::error::clip_long_words(&e.to_string())).flatten() {
                Some(text) => eprint!("{text}"),
                None => {
                    let _ = e.print();
                }
            }
            std::process::exit(code);
        }
    };
    if let Err(e) = rmdistill::cli::main(cli) {
        // a message can carry text from the manifest or the data: a terminal is never handed its control characters
        let msg = rmdistill::error::without_os_codes(&format!("{e:#}"));
        eprintln!("error: {}", rmdistill::render::visible(&msg, &['\n', '\t']));
        std::process::exit(rmdistill::error::exit_code(&e));
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_option_indices_name_mimallocs_purge_options() {
        // main() has not run here, so the options hold mimalloc v3's defaults: a purge delay of 1000 ms — a value no
        // neighbouring option has by default — and purges that decommit (1, where the option before it, arena eager
        // commit, holds 2); a wrong index (or another mimalloc) reads something else
        let delay = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(delay, 1000, "option {} is not mimalloc's purge delay", super::MI_OPTION_PURGE_DELAY);
        let decommits = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DECOMMITS) };
        let before = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DECOMMITS - 1) };
        assert_eq!(
            (before, decommits),
            (2, 1),
            "option {} is not mimalloc's purge_decommits",
            super::MI_OPTION_PURGE_DECOMMITS
        );
    }
}
