//! `kp-torrent create PATH -o OUT.torrent`: makes a v1 .torrent file from a file or a folder.
//!
//! A folder's files are listed recursively and sorted by path, component by component, comparing
//! bytes, so the same folder always gives the same torrent. Symbolic links inside the folder are
//! never followed (they are skipped with a warning), which also rules out loops; PATH itself may
//! be a link. Other special files (sockets, pipes, devices) are skipped with a warning too.

use std::fs;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use kp_torrent_core::id::InfoHash;
use kp_torrent_core::metainfo::{MAX_PIECES, TorrentSpec, auto_piece_length};

use super::{CliError, print_stdout};
use crate::hasher::{self, SourceFile};
use crate::units::{format_bytes, parse_size};

/// Smallest piece length accepted: the size of a block request, below which pieces make no sense.
pub const MIN_PIECE_LENGTH: u64 = 16 << 10;
/// Largest piece length accepted; larger pieces only make downloads slower to verify and share.
pub const MAX_PIECE_LENGTH: u64 = 256 << 20;

/// Options of `kp-torrent create`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Folders are read recursively; files are put in the torrent sorted by path (byte order).
Symbolic links inside the folder are skipped, not followed.")]
pub struct Args {
    /// The file or folder to share.
    #[arg(value_name = "PATH")]
    pub path: PathBuf,

    /// Where to write the .torrent file (refused if it exists, unless --force).
    #[arg(short, long, value_name = "OUT.torrent")]
    pub output: PathBuf,

    /// A tracker's announce URL. Each -t makes one tier, tried in the order given; commas inside
    /// one value put several trackers in the same tier (-t URL1,URL2).
    #[arg(short = 't', long = "tracker", value_name = "URL")]
    pub trackers: Vec<String>,

    /// Bytes per piece: a power of two from 16k to 256M (suffixes k and M). Default: chosen from
    /// the total size, for about 1,000 to 2,000 pieces.
    #[arg(long, value_name = "N")]
    pub piece_length: Option<String>,

    /// Mark the torrent private (BEP 27): peers come from its trackers only.
    #[arg(long)]
    pub private: bool,

    /// A comment stored in the torrent.
    #[arg(long, value_name = "TEXT")]
    pub comment: Option<String>,

    /// The torrent's name (default: the file or folder name).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// A web seed URL (BEP 19, `url-list`); may be repeated.
    #[arg(long = "web-seed", value_name = "URL")]
    pub web_seeds: Vec<String>,

    /// Leave out the creation date, so the same content always gives the same file.
    #[arg(long)]
    pub no_date: bool,

    /// Replace OUT.torrent if it exists.
    #[arg(short, long)]
    pub force: bool,
}

/// What goes into the torrent: its name, and each file with its path inside the torrent.
#[derive(Debug)]
struct Content {
    name: String,
    /// True for a folder, even one holding a single file.
    folder: bool,
    /// `(path inside the torrent, file)` in torrent order.
    files: Vec<(Vec<String>, SourceFile)>,
}

/// Runs `create`.
pub fn run(args: &Args) -> Result<(), CliError> {
    let piece_length = args
        .piece_length
        .as_deref()
        .map(parse_piece_length)
        .transpose()?;
    let trackers = tracker_tiers(&args.trackers)?;
    check_output(&args.output, args.force)?;

    let content = list_content(&args.path, &args.output, args.name.as_deref())?;
    let total: u64 = content.files.iter().map(|(_, f)| f.length).sum();
    if total == 0 {
        return Err(CliError::path(
            &args.path,
            "nothing to share: it holds no data (every file is empty)",
        ));
    }
    let piece_length = piece_length.unwrap_or_else(|| auto_piece_length(total));
    let pieces = total.div_ceil(piece_length);
    if pieces > u64::from(MAX_PIECES) {
        return Err(CliError::new(
            "--piece-length",
            format!(
                "{} pieces of {} are too many (at most {MAX_PIECES}); choose a larger piece length",
                pieces,
                format_bytes(piece_length)
            ),
        ));
    }

    let sources: Vec<SourceFile> = content.files.iter().map(|(_, f)| f.clone()).collect();
    let piece_hashes = hash_with_progress(&sources, piece_length, total)
        .map_err(|e| CliError::path(e.path(), e.to_string()))?;

    let files = if content.folder {
        content
            .files
            .iter()
            .map(|(path, f)| (path.clone(), f.length))
            .collect()
    } else {
        vec![(Vec::new(), total)]
    };
    let spec = TorrentSpec {
        name: content.name,
        piece_length,
        files,
        piece_hashes,
        trackers,
        private: args.private,
        comment: args.comment.clone(),
        created_by: Some(format!("kp-torrent {}", env!("CARGO_PKG_VERSION"))),
        creation_date: (!args.no_date).then(unix_now),
        url_list: args.web_seeds.clone(),
    };
    write_atomically(&args.output, &spec.to_bytes(), args.force)?;

    print_stdout(&format!(
        "{}: info-hash {}, {} file{}, {} ({total} bytes), {pieces} pieces of {}\n",
        args.output.display(),
        InfoHash::of(&spec.info_bytes()),
        content.files.len(),
        if content.files.len() == 1 { "" } else { "s" },
        format_bytes(total),
        format_bytes(piece_length),
    ))
}

/// Parses `--piece-length`: a size with an optional k/M suffix, a power of two within bounds.
pub fn parse_piece_length(text: &str) -> Result<u64, CliError> {
    let bad = |what: &str| CliError::new(format!("--piece-length {text}"), what);
    let n = parse_size(text).map_err(|e| bad(&e.to_string()))?;
    if !n.is_power_of_two() || !(MIN_PIECE_LENGTH..=MAX_PIECE_LENGTH).contains(&n) {
        return Err(bad(
            "must be a power of two from 16k to 256M (16384 to 268435456 bytes)",
        ));
    }
    Ok(n)
}

/// One tier per `-t`; commas split a value into trackers of the same tier.
pub fn tracker_tiers(values: &[String]) -> Result<Vec<Vec<String>>, CliError> {
    values
        .iter()
        .map(|value| {
            let tier: Vec<String> = value
                .split(',')
                .map(str::trim)
                .filter(|url| !url.is_empty())
                .map(str::to_owned)
                .collect();
            if tier.is_empty() {
                return Err(CliError::new(
                    format!("--tracker {value:?}"),
                    "no URL given",
                ));
            }
            Ok(tier)
        })
        .collect()
}

/// Refuses an existing output unless `force`, before spending time hashing.
fn check_output(out: &Path, force: bool) -> Result<(), CliError> {
    match fs::symlink_metadata(out) {
        Ok(meta) if meta.is_dir() => Err(CliError::path(
            out,
            "is a folder; give the .torrent file's name",
        )),
        Ok(_) if !force => Err(CliError::path(
            out,
            "already exists; use --force to replace it",
        )),
        _ => Ok(()),
    }
}

/// Lists what PATH holds, leaving out the output file itself if it lies inside PATH.
fn list_content(path: &Path, output: &Path, name: Option<&str>) -> Result<Content, CliError> {
    let meta = fs::metadata(path).map_err(|e| CliError::io(path, "cannot read", &e))?;
    let name = match name {
        Some(n) => {
            if n.is_empty() || n == "." || n == ".." || n.contains(['/', '\\', '\0']) {
                return Err(CliError::new(
                    format!("--name {n:?}"),
                    "must be a plain file name (not empty, no slashes)",
                ));
            }
            n.to_owned()
        }
        None => default_name(path)?,
    };
    if meta.is_file() {
        let file = SourceFile {
            path: path.to_path_buf(),
            length: meta.len(),
        };
        return Ok(Content {
            name,
            folder: false,
            files: vec![(Vec::new(), file)],
        });
    }
    if !meta.is_dir() {
        return Err(CliError::path(path, "is neither a file nor a folder"));
    }
    let skip = absolute(output);
    let mut files = Vec::new();
    walk(path, &mut Vec::new(), skip.as_deref(), &mut files)?;
    if files.is_empty() {
        return Err(CliError::path(
            path,
            "nothing to share: the folder holds no files",
        ));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Content {
        name,
        folder: true,
        files,
    })
}

/// The name of the file or folder PATH names (resolving `.` and `..`).
fn default_name(path: &Path) -> Result<String, CliError> {
    let resolved;
    let named = match path.file_name() {
        Some(n) => n,
        None => {
            resolved = fs::canonicalize(path).map_err(|e| CliError::io(path, "cannot read", &e))?;
            resolved
                .file_name()
                .ok_or_else(|| CliError::path(path, "has no name; give one with --name"))?
        }
    };
    named
        .to_str()
        .map(str::to_owned)
        .ok_or_else(|| CliError::path(path, "name is not valid UTF-8; give one with --name"))
}

/// `path` made absolute with its parent resolved, for comparing with walked files.
fn absolute(path: &Path) -> Option<PathBuf> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    Some(fs::canonicalize(parent).ok()?.join(path.file_name()?))
}

/// Adds the files under `dir` (whose path inside the torrent is `prefix`) to `out`.
fn walk(
    dir: &Path,
    prefix: &mut Vec<String>,
    skip: Option<&Path>,
    out: &mut Vec<(Vec<String>, SourceFile)>,
) -> Result<(), CliError> {
    let entries = fs::read_dir(dir).map_err(|e| CliError::io(dir, "cannot read folder", &e))?;
    for entry in entries {
        let entry = entry.map_err(|e| CliError::io(dir, "cannot read folder", &e))?;
        let path = entry.path();
        let kind = entry
            .file_type()
            .map_err(|e| CliError::io(&path, "cannot read", &e))?;
        let Some(component) = entry.file_name().to_str().map(str::to_owned) else {
            return Err(CliError::path(
                &path,
                "name is not valid UTF-8; rename it or move it out of the folder",
            ));
        };
        if kind.is_symlink() {
            warn(&path, "symbolic link skipped (links are not followed)");
        } else if kind.is_dir() {
            prefix.push(component);
            walk(&path, prefix, skip, out)?;
            prefix.pop();
        } else if kind.is_file() {
            let is_output = skip.is_some_and(|s| {
                s.file_name() == Some(entry.file_name().as_os_str())
                    && absolute(&path).as_deref() == Some(s)
            });
            if is_output {
                continue;
            }
            let length = entry
                .metadata()
                .map_err(|e| CliError::io(&path, "cannot read", &e))?
                .len();
            let mut torrent_path = prefix.clone();
            torrent_path.push(component);
            out.push((torrent_path, SourceFile { path, length }));
        } else {
            warn(&path, "skipped: not a regular file, folder or link");
        }
    }
    Ok(())
}

fn warn(path: &Path, what: &str) {
    eprintln!("kp-torrent: warning: {}: {what}", path.display());
}

/// Hashes the pieces with a progress bar on stderr when it is a terminal.
fn hash_with_progress(
    files: &[SourceFile],
    piece_length: u64,
    total: u64,
) -> Result<Vec<[u8; 20]>, hasher::HashError> {
    let bar = io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(
            "hashing {percent:>3}% {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} [{wide_bar}]",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    });
    let result = hasher::hash_pieces(files, piece_length, &mut |done| {
        if let Some(bar) = &bar {
            bar.set_position(done);
        }
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    result
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Writes `bytes` to a temporary file next to `out`, then puts it in place in one step: a reader
/// never sees a half-written torrent, and without `force` an `out` that appeared meanwhile is
/// not replaced.
fn write_atomically(out: &Path, bytes: &[u8], force: bool) -> Result<(), CliError> {
    let file_name = out
        .file_name()
        .ok_or_else(|| CliError::path(out, "is not a file name"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = out.with_file_name(temp_name);

    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&temp);
        return Err(CliError::io(out, "cannot write", &e));
    }
    let placed = if force {
        fs::rename(&temp, out)
    } else {
        // A hard link fails if `out` exists, so nothing is replaced by accident.
        fs::hard_link(&temp, out)
    };
    let _ = fs::remove_file(&temp);
    match placed {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(CliError::path(
            out,
            "already exists; use --force to replace it",
        )),
        Err(e) => Err(CliError::io(out, "cannot write", &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn piece_lengths_are_powers_of_two_in_bounds() {
        assert_eq!(parse_piece_length("16k").unwrap(), 16384);
        assert_eq!(parse_piece_length("1M").unwrap(), 1 << 20);
        assert_eq!(parse_piece_length("262144").unwrap(), 262_144);
        assert_eq!(parse_piece_length("256M").unwrap(), 256 << 20);
        for bad in ["8k", "1000", "3M", "512M", "0", "x", ""] {
            let err = parse_piece_length(bad).unwrap_err();
            assert_eq!(err.subject, format!("--piece-length {bad}"));
        }
    }

    #[test]
    fn each_tracker_option_is_a_tier_and_commas_share_one() {
        let tiers = tracker_tiers(&["http://a/ann".into(), "udp://b:1, http://c/".into()]).unwrap();
        assert_eq!(
            tiers,
            vec![
                vec!["http://a/ann".to_owned()],
                vec!["udp://b:1".to_owned(), "http://c/".to_owned()]
            ]
        );
        assert!(tracker_tiers(&[" , ".into()]).is_err());
    }
}
