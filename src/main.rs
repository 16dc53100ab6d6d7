use clap::Parser;

fn main() {
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
