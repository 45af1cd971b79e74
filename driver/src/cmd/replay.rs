//! `kp-torrent replay TRACE`: feeds a recorded trace to a fresh protocol engine and checks that it
//! returns exactly the recorded actions and events. Exit 0 when it does, 1 at the first divergence
//! (printed with its position, the expected and the actual output).

use std::path::PathBuf;
use std::process::ExitCode;

use kp_torrent_core::trace::replay_from;

use super::{CliError, print_stdout};

/// Options of `kp-torrent replay`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A trace written by `download --record` or `seed --record`.
    #[arg(value_name = "TRACE")]
    pub trace: PathBuf,
}

/// Runs `replay`.
pub fn run(args: &Args) -> Result<ExitCode, CliError> {
    let file = std::fs::File::open(&args.trace)
        .map_err(|e| CliError::io(&args.trace, "cannot read", &e))?;
    let report = replay_from(std::io::BufReader::with_capacity(1 << 20, file))
        .map_err(|e| CliError::path(&args.trace, e.to_string()))?;
    match &report.divergence {
        None => {
            print_stdout(&format!("replayed without divergence: {report}\n"))?;
            Ok(ExitCode::SUCCESS)
        }
        Some(d) => {
            print_stdout(&format!("{d}"))?;
            eprintln!(
                "kp-torrent: {}: replay diverged ({report})",
                args.trace.display()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}
