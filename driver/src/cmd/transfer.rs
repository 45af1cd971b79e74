//! `kp-torrent download FILE.torrent... -d DIR` and `kp-torrent seed FILE.torrent... -s PATH`:
//! run the event loop on one or more torrents in one process, on one port.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::CliError;
use super::info::load;
use crate::client::{self, ClientError, Options, Outcome, TorrentOptions};
use crate::storage::Location;
use crate::units::{format_bytes, parse_size};
use kp_torrent_core::magnet::Magnet;
use kp_torrent_core::mse::Policy;

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

    /// Most peer connections at once, per torrent.
    #[arg(long, default_value_t = 50)]
    pub max_peers: usize,

    /// Most peer connections at once in the process, all torrents together (incoming ones
    /// beyond it are refused).
    #[arg(long, default_value_t = 500)]
    pub max_connections: usize,

    /// Peers we upload to at once, in all torrents together (shared among the torrents that
    /// have peers to serve; each torrent also unchokes one peer optimistically).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=1000))]
    pub upload_slots: u64,

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
    /// `kp-torrent replay TRACE` checks that the engine does exactly the same again. One torrent
    /// only.
    #[arg(long, value_name = "TRACE")]
    pub record: Option<PathBuf>,

    /// Do not exchange peers with peers (BEP 11 PEX; private torrents never do).
    #[arg(long)]
    pub no_pex: bool,

    /// Do not run a DHT node (BEP 5; private torrents never use it).
    #[arg(long)]
    pub no_dht: bool,

    /// Do not speak uTP (BEP 29): peers are dialed and accepted over TCP only.
    #[arg(long)]
    pub no_utp: bool,

    /// Create a download's files sparse instead of reserving their disk space at the start
    /// (then a full disk shows only when a write fails, part way through).
    #[arg(long)]
    pub sparse: bool,

    /// Bootstrap the DHT from this node (repeatable; replaces the saved routing table and the
    /// public routers).
    #[arg(long = "dht-bootstrap", value_name = "HOST:PORT", value_parser = parse_host_port)]
    pub dht_bootstrap: Vec<String>,

    /// Folder for state kept across runs (the DHT's node id and routing table); default
    /// $XDG_STATE_HOME/kp-torrent, or ~/.local/state/kp-torrent. One process at a time owns it;
    /// another one meanwhile takes a fresh DHT node id and saves nothing.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,

    /// Stream encryption (MSE/PE) with peers: `prefer` dials encrypted (plaintext again at once
    /// when a peer will not have it) and accepts both; `require` dials and accepts encrypted
    /// (RC4) connections only; `disable` never encrypts and refuses encrypted connections.
    #[arg(long, value_enum, value_name = "POLICY", default_value_t = Encryption::Prefer)]
    pub encryption: Encryption,

    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,

    /// Seed for the engine's randomness (peer id, piece choice); random when not given.
    #[arg(long, hide = true)]
    pub rng_seed: Option<u64>,
}

/// The values of `--encryption`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Encryption {
    /// Encrypt when the peer can, accept both.
    Prefer,
    /// Encrypted (RC4) connections only.
    Require,
    /// Plaintext only.
    Disable,
}

impl From<Encryption> for Policy {
    fn from(e: Encryption) -> Policy {
        match e {
            Encryption::Prefer => Policy::Prefer,
            Encryption::Require => Policy::Require,
            Encryption::Disable => Policy::Disable,
        }
    }
}

/// Options of `kp-torrent download`.
#[derive(Debug, clap::Args)]
pub struct DownloadArgs {
    /// The .torrent files or magnet links (all downloaded at once, into DIR). A magnet link's
    /// metadata comes from its peers (`x.pe`, --peer, its trackers `tr`, peer exchange) and is
    /// saved as DIR/.kp-torrent/INFOHASH.torrent for later runs.
    #[arg(value_name = "FILE.torrent|MAGNET", required = true)]
    pub torrents: Vec<PathBuf>,

    /// Folder to download into (created if missing).
    #[arg(short = 'd', long = "dir", value_name = "DIR")]
    pub dir: PathBuf,

    /// Keep seeding after the download completes (until Ctrl-C, --seed-ratio or --seed-time).
    #[arg(long)]
    pub seed: bool,

    /// Download only these files, by index as `info` lists them (e.g. 0,2,5); one torrent only.
    #[arg(long, value_delimiter = ',', value_name = "INDEX,...")]
    pub files: Option<Vec<usize>>,

    /// Fetch pieces in order (for playing while downloading) instead of rarest first.
    #[arg(long)]
    pub sequential: bool,

    /// Give up (exit 1) when the download has not finished after this many seconds.
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,

    /// Fetch pieces from this HTTP(S) web seed (BEP 19) too, besides the torrent's `url-list`
    /// (repeatable). A URL ending in `/` holds the torrent's name (a file or a folder).
    #[arg(long = "web-seed", value_name = "URL")]
    pub web_seeds: Vec<String>,

    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: Common,
}

/// Options of `kp-torrent seed`.
#[derive(Debug, clap::Args)]
pub struct SeedArgs {
    /// The .torrent files (each seeded from PATH).
    #[arg(value_name = "FILE.torrent", required = true)]
    pub torrents: Vec<PathBuf>,

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

/// One torrent's options from the command line.
fn torrent_options(
    torrent: &std::path::Path,
    location: Location,
    common: &Common,
) -> Result<TorrentOptions, CliError> {
    if let Some(uri) = torrent.to_str().filter(|t| t.starts_with("magnet:")) {
        let magnet = Magnet::parse(uri).map_err(|e| CliError::new("magnet link", e.to_string()))?;
        let Location::Download(dir) = location else {
            return Err(CliError::new(
                "magnet link",
                "seeding needs the .torrent file: a magnet link does not describe the data",
            ));
        };
        let mut peers = common.peers.clone();
        for pe in &magnet.peers {
            match resolve_peer(pe) {
                Some(addr) if !peers.contains(&addr) => peers.push(addr),
                Some(_) => {}
                None => log::warn!("magnet link: ignoring peer `{}`", pe.escape_debug()),
            }
        }
        return Ok(TorrentOptions {
            peers,
            ..TorrentOptions::magnet(magnet, dir)
        });
    }
    Ok(TorrentOptions {
        peers: common.peers.clone(),
        seed_ratio: common.seed_ratio,
        seed_time: common.seed_time.map(Duration::from_secs),
        ..TorrentOptions::new(load(torrent)?, location)
    })
}

/// A magnet link's `x.pe` peer (`IP:PORT`, `[IPv6]:PORT` or `HOST:PORT`) as an address.
fn resolve_peer(text: &str) -> Option<SocketAddr> {
    if let Ok(addr) = text.parse() {
        return Some(addr);
    }
    std::net::ToSocketAddrs::to_socket_addrs(text)
        .ok()
        .and_then(|mut it| it.next())
}

/// The process-wide options, and each torrent's from `make`.
fn options(
    torrents: &[PathBuf],
    common: &Common,
    make: impl Fn(&std::path::Path) -> Result<TorrentOptions, CliError>,
) -> Result<Options, CliError> {
    if let Some(r) = common.seed_ratio
        && !(r.is_finite() && r >= 0.0)
    {
        return Err(CliError::new(
            "--seed-ratio",
            "must be a number of 0 or more",
        ));
    }
    if common.record.is_some() && torrents.len() > 1 {
        return Err(CliError::new(
            "--record",
            "records one torrent: give only one",
        ));
    }
    let mut list = Vec::new();
    for t in torrents {
        let mut opts = make(t)?;
        opts.record = common.record.clone();
        list.push(opts);
    }
    let ip = common.bind.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    Ok(Options {
        max_peers: common.max_peers.max(1),
        max_connections: common.max_connections.max(1),
        upload_slots: common.upload_slots as usize,
        pex: !common.no_pex,
        dht: !common.no_dht,
        utp: !common.no_utp,
        preallocate: !common.sparse,
        dht_bootstrap: common.dht_bootstrap.clone(),
        state_dir: common.state_dir.clone().or_else(default_state_dir),
        download_limit: common.download_limit,
        upload_limit: common.upload_limit,
        tracker_ca: common.tracker_ca.clone(),
        rng_seed: common.rng_seed.unwrap_or_else(random_seed),
        encryption: common.encryption.into(),
        quiet: common.quiet,
        ..Options::new(list, SocketAddr::new(ip, common.port))
    })
}

/// `$XDG_STATE_HOME/kp-torrent`, else `$HOME/.local/state/kp-torrent`; `None` without either.
fn default_state_dir() -> Option<PathBuf> {
    let nonempty = |k| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    nonempty("XDG_STATE_HOME")
        .or_else(|| nonempty("HOME").map(|h| h.join(".local").join("state")))
        .map(|d| d.join("kp-torrent"))
}

/// `HOST:PORT` with a port from 1 to 65535 (an IPv6 address in brackets).
fn parse_host_port(text: &str) -> Result<String, String> {
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("`{text}` is not HOST:PORT"))?;
    if host.is_empty() {
        return Err(format!("`{text}`: no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(text.to_owned()),
        _ => Err(format!("`{text}`: the port must be 1 to 65535")),
    }
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
    if args.files.is_some() && args.torrents.len() > 1 {
        return Err(CliError::new(
            "--files",
            "selects files of one torrent: give only one",
        ));
    }
    let mut opts = options(&args.torrents, &args.common, |t| {
        let mut o = torrent_options(t, Location::Download(args.dir.clone()), &args.common)?;
        if let Some(bad) = args
            .web_seeds
            .iter()
            .find(|u| !kp_torrent_core::metainfo::is_web_seed_url(u))
        {
            return Err(CliError::new(
                "--web-seed",
                format!("`{bad}` is not an http:// or https:// URL"),
            ));
        }
        o.web_seeds = args.web_seeds.clone();
        if let Some(files) = &args.files {
            // A magnet link's file count is known only once its metadata arrived; the run
            // checks the selection then.
            let count = o.metainfo().map_or(usize::MAX, |m| m.info.files.len());
            if let Some(bad) = files.iter().find(|&&i| i >= count) {
                return Err(CliError::new(
                    "--files",
                    format!("no file {bad}: the torrent has {count} (numbered from 0)"),
                ));
            }
            o.files = Some(files.clone());
        }
        o.sequential = args.sequential;
        o.keep_seeding = args.seed;
        Ok(o)
    })?;
    opts.timeout = args.timeout.map(Duration::from_secs);
    finish(&args.torrents, client::run(opts))
}

/// Runs `seed`.
pub fn seed(args: &SeedArgs) -> Result<ExitCode, CliError> {
    if !args.source.exists() {
        return Err(CliError::path(&args.source, "no such file or folder"));
    }
    let opts = options(&args.torrents, &args.common, |t| {
        let o = torrent_options(t, Location::Seed(args.source.clone()), &args.common)?;
        Ok(TorrentOptions {
            keep_seeding: true,
            ..o
        })
    })?;
    finish(&args.torrents, client::run(opts))
}

/// The exit status of the whole run: 1 when a torrent failed (each failure is one line on
/// stderr), 130 when interrupted before every download finished, 0 otherwise.
fn finish(
    torrents: &[PathBuf],
    result: Result<Vec<Outcome>, ClientError>,
) -> Result<ExitCode, CliError> {
    let subject = |name: &str| -> String {
        // Name a failure by the .torrent file given for it when there is only one.
        match torrents {
            [one] if !one.to_string_lossy().starts_with("magnet:") => one.display().to_string(),
            _ => name.to_owned(),
        }
    };
    let outcomes = match result {
        Ok(o) => o,
        Err(e) => {
            let who = match torrents {
                [one] => one.display().to_string(),
                _ => "kp-torrent".to_owned(),
            };
            return Err(CliError::new(who, e.to_string()));
        }
    };
    let mut failure = None;
    let mut interrupted = false;
    for o in outcomes {
        match o.result {
            Ok(s) if s.interrupted && !s.complete => {
                interrupted = true;
                eprintln!(
                    "kp-torrent: {}: interrupted with {} of {}; run the same command to resume",
                    subject(&o.name),
                    format_bytes(s.total_bytes.min(s.downloaded)),
                    format_bytes(s.total_bytes)
                );
            }
            Ok(_) => {}
            Err(e) => {
                if let Some(earlier) =
                    failure.replace(CliError::new(subject(&o.name), e.to_string()))
                {
                    eprintln!("kp-torrent: {earlier}");
                }
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None if interrupted => Ok(ExitCode::from(130)),
        None => Ok(ExitCode::SUCCESS),
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
