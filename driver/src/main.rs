//! The `kp-torrent` command: parses the command line and runs one command.

use std::process::ExitCode;

use clap::Parser;
use kp_torrent::cmd::Cli;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp_millis()
        .init();
    // clap prints usage errors itself and exits with status 2 (0 for --help and --version).
    let cli = Cli::parse();
    match cli.command.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kp-torrent: {e}");
            ExitCode::FAILURE
        }
    }
}
