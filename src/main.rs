//! `rig`: the command line of twinrig. Each subcommand parses its arguments and calls the library;
//! nothing here knows how a frame is processed.

mod cmd;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cmd::Cli::parse();
    cmd::init_logging(cli.verbose);
    match cmd::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line (the whole cause chain), never a panic trace, for every user-facing failure.
            eprintln!("rig: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
