//! `kp-torrent download FILE.torrent -d DIR` and `kp-torrent seed FILE.torrent -s PATH`: run the
//! event loop on one torrent.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::CliError;
use super::info::load;
use crate::client::{self, ClientError, Options, Summary};
use crate::storage::Location;
use crate::units::{format_bytes, parse_size};

/// Options shared by `download` and `seed`.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// Port to listen on for peers (0 picks a free one).
    #[arg(long, default_value_t = 6881)]
    pub port: u16,

    /// Local address to listen on and send tracker datagrams from (IPv4 or IPv6).
    #[arg(long, value_name = "IP")]
    pub bind: Option<IpAddr>,

    /// Connect to this peer directly (repeatable), for use without a tracker.
    #[arg(long = "peer", value_name = "ADDR:PORT")]
    pub peers: Vec<SocketAddr>,

    /// Most peer connections at once.
    #[arg(long, default_value_t = 50)]
    pub max_peers: usize,

    /// Download limit in bytes per second (k, M and G suffixes: 500k, 2M).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub download_limit: Option<u64>,

    /// Upload limit in bytes per second (k, M and G suffixes).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub upload_limit: Option<u64>,

    /// Stop seeding once uploaded / size reaches this ratio.
    #[arg(long, value_name = "RATIO")]
    pub seed_ratio: Option<f64>,

    /// Stop seeding after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub seed_time: Option<u64>,

    /// Trust the CA certificates in this PEM file for HTTPS trackers (besides the usual roots).
    #[arg(long, value_name = "PEM")]
    pub tracker_ca: Option<PathBuf>,

    /// Write this run's trace (every input to the protocol engine, with its time) to TRACE;
    /// `kp-torrent replay TRACE` checks that the engine does exactly the same again.
    #[arg(long, value_name = "TRACE")]
    pub record: Option<PathBuf>,

    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,

    /// Seed for the engine's randomness (peer id, piece choice); random when not given.
    #[arg(long, hide = true)]
    pub rng_seed: Option<u64>,
}

/// Options of `kp-torrent download`.
#[derive(Debug, clap::Args)]
pub struct DownloadArgs {
    /// The .torrent file.
    #[arg(value_name = "FILE.torrent")]
    pub torrent: PathBuf,

    /// Folder to download into (created if missing).
    #[arg(short = 'd', long = "dir", value_name = "DIR")]
    pub dir: PathBuf,

    /// Keep seeding after the download completes (until Ctrl-C, --seed-ratio or --seed-time).
    #[arg(long)]
    pub seed: bool,

    /// Download only these files, by index as `info` lists them (e.g. 0,2,5).
    #[arg(long, value_delimiter = ',', value_name = "INDEX,...")]
    pub files: Option<Vec<usize>>,

    /// Fetch pieces in order (for playing while downloading) instead of rarest first.
    #[arg(long)]
    pub sequential: bool,

    /// Give up (exit 1) when the download has not finished after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// Options of `kp-torrent seed`.
#[derive(Debug, clap::Args)]
pub struct SeedArgs {
    /// The .torrent file.
    #[arg(value_name = "FILE.torrent")]
    pub torrent: PathBuf,

    /// The data: the file itself, or the folder that holds it (or the torrent's folder).
    #[arg(short = 's', long = "source", value_name = "PATH")]
    pub source: PathBuf,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

fn parse_rate(text: &str) -> Result<u64, String> {
    match parse_size(text) {
        Ok(0) => Err("a rate must be above 0".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn options(
    torrent: &std::path::Path,
    location: Location,
    common: &Common,
) -> Result<Options, CliError> {
    let metainfo = load(torrent)?;
    if let Some(r) = common.seed_ratio
        && !(r.is_finite() && r >= 0.0)
    {
        return Err(CliError::new(
            "--seed-ratio",
            "must be a number of 0 or more",
        ));
    }
    let ip = common.bind.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let rng_seed = common.rng_seed.unwrap_or_else(random_seed);
    Ok(Options {
        metainfo,
        location,
        listen: SocketAddr::new(ip, common.port),
        peers: common.peers.clone(),
        max_peers: common.max_peers.max(1),
        download_limit: common.download_limit,
        upload_limit: common.upload_limit,
        files: None,
        sequential: false,
        keep_seeding: false,
        seed_ratio: common.seed_ratio,
        seed_time: common.seed_time.map(Duration::from_secs),
        timeout: None,
        record: common.record.clone(),
        tracker_ca: common.tracker_ca.clone(),
        rng_seed,
        quiet: common.quiet,
        status_every: Duration::from_secs(5),
        handle_signals: true,
        on_listen: None,
        stop: None,
    })
}

/// A seed for the engine's generator that differs between runs (the driver may read the clock).
fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Runs `download`.
pub fn download(args: &DownloadArgs) -> Result<ExitCode, CliError> {
    std::fs::create_dir_all(&args.dir)
        .map_err(|e| CliError::io(&args.dir, "cannot create the download folder", &e))?;
    let mut opts = options(
        &args.torrent,
        Location::Download(args.dir.clone()),
        &args.common,
    )?;
    if let Some(files) = &args.files {
        let count = opts.metainfo.info.files.len();
        if let Some(bad) = files.iter().find(|&&i| i >= count) {
            return Err(CliError::new(
                "--files",
                format!("no file {bad}: the torrent has {count} (numbered from 0)"),
            ));
        }
        opts.files = Some(files.clone());
    }
    opts.sequential = args.sequential;
    opts.keep_seeding = args.seed;
    opts.timeout = args.timeout.map(Duration::from_secs);
    let subject = args.torrent.display().to_string();
    finish(&subject, client::run(opts))
}

/// Runs `seed`.
pub fn seed(args: &SeedArgs) -> Result<ExitCode, CliError> {
    if !args.source.exists() {
        return Err(CliError::path(&args.source, "no such file or folder"));
    }
    let mut opts = options(
        &args.torrent,
        Location::Seed(args.source.clone()),
        &args.common,
    )?;
    opts.keep_seeding = true;
    let subject = args.torrent.display().to_string();
    finish(&subject, client::run(opts))
}

fn finish(subject: &str, result: Result<Summary, ClientError>) -> Result<ExitCode, CliError> {
    match result {
        Ok(s) if s.interrupted && !s.complete => {
            eprintln!(
                "kp-torrent: {subject}: interrupted with {} of {}; run the same command to resume",
                format_bytes(s.total_bytes.min(s.downloaded)),
                format_bytes(s.total_bytes)
            );
            Ok(ExitCode::from(130))
        }
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(CliError::new(subject, e.to_string())),
    }
}

/// The subcommand names, so `kp-torrent FILE.torrent -d DIR` can be told from a subcommand.
const SUBCOMMANDS: &[&str] = &[
    "info", "create", "download", "seed", "replay", "demo", "help",
];

/// Rewrites the historic shortcut forms into subcommands: `kp-torrent FILE.torrent -d DIR ...`
/// becomes `kp-torrent download FILE.torrent -d DIR ...`, and `kp-torrent FILE.torrent -s PATH ...`
/// becomes `kp-torrent seed ...`. Anything else is returned unchanged.
pub fn expand_shortcut(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let Some(first) = args.get(1).and_then(|a| a.to_str()) else {
        return args;
    };
    if first.starts_with('-') || SUBCOMMANDS.contains(&first) {
        return args;
    }
    let has = |flag: &str| args.iter().skip(2).any(|a| a == flag);
    let command = if has("-s") || has("--source") {
        "seed"
    } else if has("-d") || has("--dir") {
        "download"
    } else {
        return args;
    };
    let mut out = Vec::with_capacity(args.len() + 1);
    out.push(args[0].clone());
    out.push(command.into());
    out.extend(args.into_iter().skip(1));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    fn argv(s: &str) -> Vec<OsString> {
        s.split(' ').map(OsString::from).collect()
    }

    #[test]
    fn shortcuts_become_subcommands() {
        assert_eq!(
            expand_shortcut(argv("kp a.torrent -d out --port 1")),
            argv("kp download a.torrent -d out --port 1")
        );
        assert_eq!(
            expand_shortcut(argv("kp a.torrent -s data")),
            argv("kp seed a.torrent -s data")
        );
        for unchanged in ["kp info a.torrent", "kp --help", "kp a.torrent", "kp"] {
            assert_eq!(expand_shortcut(argv(unchanged)), argv(unchanged));
        }
    }

    #[test]
    fn rates_need_a_positive_size() {
        assert_eq!(parse_rate("2M"), Ok(2 << 20));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").unwrap_err().contains("\"fast\""));
    }
}
