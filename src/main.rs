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

/// The cause chain joined by ": ", each cause once. Many errors carry their cause both as their
/// `source` and inside their own message (`"...: {source}"`), which anyhow's `{:#}` would print
/// twice ("Address already in use (os error 98): Address already in use (os error 98)").
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if msg.is_empty() || out.contains(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        #[derive(Debug, thiserror::Error)]
        #[error("cannot listen on 127.0.0.1:1: {source}")]
        struct Bind {
            source: std::io::Error,
        }
        let text = io.to_string();
        let e = anyhow::Error::new(Bind { source: io }).context("starting");
        let line = super::one_line(&e);
        assert_eq!(line.matches(&text).count(), 1, "{line}");
        assert!(line.starts_with("starting: cannot listen"), "{line}");
    }
}
