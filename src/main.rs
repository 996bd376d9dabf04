//! The `loraweld` command: parses arguments, calls the library, prints one line on error.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // SIGINT stops a save at the next work item and keeps its staging directory for a re-run.
    loraweld::install_sigint_handler();
    let parsed = match cli::args::Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help, --version: what clap prints is the answer.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("loraweld: error: {}", cli::print::clap_error_line(&e));
            return ExitCode::from(loraweld::ExitCode::BadInput as u8);
        }
    };
    let json = parsed.command.json();
    match cli::run(parsed) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => ExitCode::from(cli::print::report_error(&e, json)),
    }
}
