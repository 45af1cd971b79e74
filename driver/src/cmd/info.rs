//! `kp-torrent info FILE.torrent` (or a magnet URI): what a torrent describes, for people or,
//! with `--json`, as one JSON object for scripts.

use std::fmt::Write;
use std::io::Read;
use std::path::{Path, PathBuf};

use kp_torrent_core::magnet::Magnet;
use kp_torrent_core::metainfo::Metainfo;

use super::{CliError, print_stdout};
use crate::json::Json;
use crate::units::format_bytes;

/// Options of `kp-torrent info`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A .torrent file, or a magnet URI (`magnet:?xt=urn:btih:...`, quoted for the shell).
    #[arg(value_name = "FILE.torrent|MAGNET")]
    pub torrent: PathBuf,

    /// Print one JSON object instead of text (sizes in bytes, dates as Unix seconds).
    #[arg(long)]
    pub json: bool,
}

/// Runs `info`.
pub fn run(args: &Args) -> Result<(), CliError> {
    if let Some(uri) = args.torrent.to_str().filter(|s| {
        s.get(..7)
            .is_some_and(|p| p.eq_ignore_ascii_case("magnet:"))
    }) {
        let magnet = Magnet::parse(uri).map_err(|e| CliError::new("magnet URI", e.to_string()))?;
        let text = if args.json {
            format!("{}\n", magnet_json(&magnet))
        } else {
            magnet_text(&magnet)
        };
        return print_stdout(&text);
    }
    let meta = load(&args.torrent)?;
    let text = if args.json {
        format!("{}\n", torrent_json(&meta))
    } else {
        torrent_text(&meta)
    };
    print_stdout(&text)
}

/// Largest .torrent file read: room for the most pieces the parser accepts, and then some.
const MAX_TORRENT_FILE: u64 = 128 << 20;

/// Reads and parses a .torrent file; the error names the file.
///
/// A file that does not start like a torrent is refused after its first bytes, so a large file
/// given by mistake is not read whole.
pub fn load(path: &Path) -> Result<Metainfo, CliError> {
    let read_error = |e: std::io::Error| CliError::io(path, "cannot read", &e);
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    let mut reader = file.take(MAX_TORRENT_FILE + 1);
    let mut head = [0u8; 1];
    let n = loop {
        match reader.read(&mut head) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => break other.map_err(read_error)?,
        }
    };
    bytes.extend_from_slice(&head[..n]);
    if head[..n] == *b"d" {
        reader.read_to_end(&mut bytes).map_err(read_error)?;
    }
    if bytes.len() as u64 > MAX_TORRENT_FILE {
        return Err(CliError::path(
            path,
            format!(
                "not a torrent file: larger than {}",
                format_bytes(MAX_TORRENT_FILE)
            ),
        ));
    }
    Metainfo::from_bytes(&bytes).map_err(|e| CliError::path(path, e.to_string()))
}

/// The torrent as one JSON object; every size is exact, in bytes.
pub fn torrent_json(m: &Metainfo) -> Json {
    let info = &m.info;
    let files = info
        .files
        .iter()
        .map(|f| {
            Json::object()
                .with("path", Json::str(f.path.join("/")))
                .with("size", Json::UInt(f.length))
                .with("offset", Json::UInt(f.offset))
                .with("padding", Json::Bool(f.padding))
        })
        .collect();
    let tiers = m.trackers.iter().map(|t| Json::strs(t)).collect();
    Json::object()
        .with("kind", Json::str("torrent"))
        .with("name", Json::str(&info.name))
        .with("info_hash", Json::str(m.info_hash.to_hex()))
        .with("total_size", Json::UInt(info.total_length))
        .with("piece_length", Json::UInt(info.piece_length))
        .with("piece_count", Json::UInt(info.pieces.len() as u64))
        .with("private", Json::Bool(info.private))
        .with("multi_file", Json::Bool(info.multi_file))
        .with("trackers", Json::Array(tiers))
        .with("web_seeds", Json::strs(&m.url_list))
        .with("comment", Json::opt_str(m.comment.as_deref()))
        .with("created_by", Json::opt_str(m.created_by.as_deref()))
        .with(
            "creation_date",
            m.creation_date.map_or(Json::Null, Json::Int),
        )
        .with("files", Json::Array(files))
}

/// A magnet as one JSON object (no sizes or files: those come with the metadata).
pub fn magnet_json(m: &Magnet) -> Json {
    Json::object()
        .with("kind", Json::str("magnet"))
        .with("name", Json::opt_str(m.display_name.as_deref()))
        .with("info_hash", Json::str(m.info_hash.to_hex()))
        .with("trackers", Json::strs(&m.trackers))
        .with("peers", Json::strs(&m.peers))
}

/// Size for people with the exact count alongside: `1.50 GiB (1610612736 bytes)`.
fn size(bytes: u64) -> String {
    if bytes < 1024 {
        format_bytes(bytes)
    } else {
        format!("{} ({bytes} bytes)", format_bytes(bytes))
    }
}

/// The torrent for people. Padding files (BEP 47) are not shown, only counted.
pub fn torrent_text(m: &Metainfo) -> String {
    let info = &m.info;
    let mut s = String::new();
    let mut line = |label: &str, value: &str| push_line(&mut s, label, value);
    line("name", &info.name);
    line("info-hash", &m.info_hash.to_hex());
    line("size", &size(info.total_length));
    line(
        "pieces",
        &format!("{} of {}", info.pieces.len(), size(info.piece_length)),
    );
    line("private", if info.private { "yes" } else { "no" });
    if m.trackers.is_empty() {
        line("trackers", "none");
    }
    for (i, tier) in m.trackers.iter().enumerate() {
        let label = if i == 0 { "trackers" } else { "" };
        line(label, &format!("tier {}: {}", i + 1, tier.join(", ")));
    }
    for (i, url) in m.url_list.iter().enumerate() {
        line(if i == 0 { "web seeds" } else { "" }, url);
    }
    if let Some(c) = &m.comment {
        line("comment", c);
    }
    if let Some(c) = &m.created_by {
        line("created by", c);
    }
    if let Some(d) = m.creation_date {
        line("creation date", &format_unix_time(d));
    }
    let padding = info.files.iter().filter(|f| f.padding).count();
    let shown = info.files.len() - padding;
    let mut count = format!("{shown}");
    if padding > 0 {
        let _ = write!(
            count,
            " ({padding} padding file{} not shown)",
            if padding == 1 { "" } else { "s" }
        );
    }
    line("files", &count);
    for f in info.files.iter().filter(|f| !f.padding) {
        let _ = writeln!(
            s,
            "  {:>10}  {}",
            format_bytes(f.length),
            printable(&f.path.join("/"))
        );
    }
    s
}

/// A magnet for people.
pub fn magnet_text(m: &Magnet) -> String {
    let mut s = String::new();
    let mut line = |label: &str, value: &str| push_line(&mut s, label, value);
    line("magnet", m.display_name.as_deref().unwrap_or("(no name)"));
    line("info-hash", &m.info_hash.to_hex());
    if m.trackers.is_empty() {
        line("trackers", "none");
    }
    for (i, url) in m.trackers.iter().enumerate() {
        line(if i == 0 { "trackers" } else { "" }, url);
    }
    for (i, peer) in m.peers.iter().enumerate() {
        line(if i == 0 { "peers" } else { "" }, peer);
    }
    s
}

/// Appends `label: value`, the values aligned; an empty label continues the previous one.
fn push_line(s: &mut String, label: &str, value: &str) {
    let label = if label.is_empty() {
        String::new()
    } else {
        format!("{label}:")
    };
    let _ = writeln!(s, "{label:<15}{}", printable(value));
}

/// `s` with control characters escaped, so a torrent's text cannot drive the terminal.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// `2026-11-24 19:32:16 UTC` for Unix seconds (proleptic Gregorian calendar).
pub fn format_unix_time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm), in i128 so any i64 fits.
    let z = i128::from(days) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i128::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_times_format_as_utc_dates() {
        assert_eq!(format_unix_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_unix_time(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_unix_time(1_795_548_736), "2026-11-24 19:32:16 UTC");
        assert_eq!(format_unix_time(-1), "1969-12-31 23:59:59 UTC");
        // Absurd dates in a torrent print without overflowing.
        assert!(format_unix_time(i64::MAX).ends_with("UTC"));
        assert!(format_unix_time(i64::MIN).ends_with("UTC"));
    }

    #[test]
    fn control_characters_are_escaped_for_the_terminal() {
        assert_eq!(printable("a\u{1b}[31mb\n"), "a\\u{1b}[31mb\\n");
        assert_eq!(printable("héllo"), "héllo");
    }
}
