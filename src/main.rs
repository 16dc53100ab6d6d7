// mimalloc: stages running in this process (import, subsample) allocate from both cores at once; glibc's malloc
// made import's parallel JSON parsing 2.5× slower (BENCHMARKS.md, import).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::Parser;

fn main() {
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
