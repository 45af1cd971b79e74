//! The `kp-torrent` command: parses the command line and runs one command.

use std::process::ExitCode;

use clap::Parser;
use kp_torrent::cmd::Cli;
use kp_torrent::cmd::transfer::expand_shortcut;

fn main() -> ExitCode {
    // clap prints usage errors itself and exits with status 2 (0 for --help and --version).
    let cli = Cli::parse_from(expand_shortcut(std::env::args_os().collect()));
    // `--quiet` promises nothing but errors: warnings (a tracker that does not answer) too are
    // left out unless RUST_LOG asks for them.
    let default_level = if cli.command.quiet() { "error" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default_level))
        .format_timestamp_millis()
        .init();
    match cli.command.run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kp-torrent: {e}");
            ExitCode::FAILURE
        }
    }
}
