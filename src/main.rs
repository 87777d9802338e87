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
            eprintln!("rig: error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The cause chain joined with ": ", leaving out a cause that its parent's message already
/// quotes (errors that print their source in their own message would otherwise say it twice).
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if msg.is_empty() || line.contains(&msg) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&msg);
    }
    line
}
