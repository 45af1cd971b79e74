//! The command line: argument parsing (clap) and one module per command.
//!
//! Each command is a module with an `Args` struct (its options, parsed by clap) and a `run`
//! function that returns `Ok(())` or a [`CliError`], which `main` prints as one line,
//! `kp-torrent: <subject>: <what is wrong>`, before exiting with status 1. Usage errors found by
//! clap itself exit with status 2.
//!
//! To add a command, add a module here and a variant to [`Command`]. The historic shortcuts
//! (`kp-torrent FILE.torrent -d DIR`, `kp-torrent FILE.torrent -s PATH`) are rewritten into
//! `download` / `seed` before parsing ([`transfer::expand_shortcut`]).

use std::fmt;
use std::io::{self, Write};
use std::path::Path;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod create;
pub mod demo;
pub mod info;
pub mod replay;
pub mod transfer;

/// `kp-torrent`'s command line.
#[derive(Debug, Parser)]
#[command(
    name = "kp-torrent",
    version,
    about = "A BitTorrent client",
    long_about = "A BitTorrent client.\n\nSet RUST_LOG (for example RUST_LOG=debug) to see its log on stderr."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what a .torrent file or a magnet link describes.
    Info(info::Args),
    /// Make a .torrent file from a file or a folder.
    Create(create::Args),
    /// Download torrents or magnet links into a folder (shortcut: `kp-torrent FILE.torrent -d DIR`).
    Download(transfer::DownloadArgs),
    /// Seed existing data (shortcut: `kp-torrent FILE.torrent -s PATH`).
    Seed(transfer::SeedArgs),
    /// Replay a trace recorded with --record; exit 1 at the first divergence.
    Replay(replay::Args),
    /// Make sample content, seed it and download it over 127.0.0.1 with two clients in this process.
    Demo(demo::Args),
}

impl Command {
    /// True when the user asked for `--quiet`: then only errors are logged by default.
    pub fn quiet(&self) -> bool {
        match self {
            Command::Download(args) => args.common.quiet,
            Command::Seed(args) => args.common.quiet,
            Command::Info(_) | Command::Create(_) | Command::Replay(_) | Command::Demo(_) => false,
        }
    }

    /// Runs the command to completion; the exit code on success (130 for an interrupted download).
    pub fn run(self) -> Result<ExitCode, CliError> {
        match self {
            Command::Info(args) => info::run(&args).map(|()| ExitCode::SUCCESS),
            Command::Create(args) => create::run(&args).map(|()| ExitCode::SUCCESS),
            Command::Download(args) => transfer::download(&args),
            Command::Seed(args) => transfer::seed(&args),
            Command::Demo(args) => demo::run(&args),
            Command::Replay(args) => replay::run(&args),
        }
    }
}

/// A failure a user can act on: what it is about (usually a file) and what is wrong, on one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    /// The file, folder or option the error is about.
    pub subject: String,
    /// What is wrong with it, lowercase, no final period.
    pub message: String,
}

impl CliError {
    /// An error about `subject` (a file name or an option).
    pub fn new(subject: impl Into<String>, message: impl Into<String>) -> CliError {
        CliError {
            subject: subject.into(),
            message: message.into(),
        }
    }

    /// An error about a file or folder.
    pub fn path(path: &Path, message: impl Into<String>) -> CliError {
        CliError::new(path.display().to_string(), message)
    }

    /// A failed system call on `path`: `doing` says what we tried ("cannot read").
    pub fn io(path: &Path, doing: &str, error: &io::Error) -> CliError {
        CliError::path(path, format!("{doing}: {}", io_reason(error)))
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.subject, self.message)
    }
}

impl std::error::Error for CliError {}

/// What the system said, for a person: `no such file or directory`, without the `(os error 2)`.
pub fn io_reason(error: &io::Error) -> String {
    let text = error.to_string();
    let text = match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => &text[..i],
        _ => &text[..],
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => format!("{:?}", error.kind()).to_lowercase(),
    }
}

/// Writes `text` to stdout; a closed pipe (`kp-torrent info x | head -1`) is not an error.
pub fn print_stdout(text: &str) -> Result<(), CliError> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(CliError::new(
            "stdout",
            format!("cannot write: {}", io_reason(&e)),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_reasons_drop_the_os_error_number() {
        let e = io::Error::from_raw_os_error(2);
        assert_eq!(io_reason(&e), "no such file or directory");
        let e = io::Error::other("Odd thing");
        assert_eq!(io_reason(&e), "odd thing");
        let err = CliError::io(
            Path::new("a/b.torrent"),
            "cannot read",
            &io::Error::from_raw_os_error(13),
        );
        assert_eq!(
            err.to_string(),
            "a/b.torrent: cannot read: permission denied"
        );
    }

    #[test]
    fn command_line_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
