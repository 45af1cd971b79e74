//! `kp-torrent demo`: a whole download on this machine, with nothing installed. It makes sample
//! content in a temporary folder, seeds it from one client, downloads it with a second client over
//! 127.0.0.1 through the real event loop (progress bar included), checks every byte, and prints
//! the rate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kp_torrent_core::metainfo::{Metainfo, TorrentSpec, hash_pieces};
use rand::{Rng, SeedableRng};

use super::CliError;
use crate::client::{self, Options, TorrentOptions};
use crate::units::{format_bytes, format_duration, format_rate, parse_size};

/// Options of `kp-torrent demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Total size of the sample content (k, M, G suffixes).
    #[arg(long, default_value = "256M", value_parser = parse_demo_size)]
    pub size: u64,

    /// Number of files the content is split into.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub files: u32,

    /// Keep the temporary folder (its path is printed) instead of removing it.
    #[arg(long)]
    pub keep: bool,
}

fn parse_demo_size(text: &str) -> Result<u64, String> {
    match parse_size(text) {
        Ok(n) if (1..=8 << 30).contains(&n) => Ok(n),
        Ok(_) => Err("the demo size must be between 1 byte and 8 GiB".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Removes the demo folder when the demo ends, however it ends.
struct Cleanup {
    dir: PathBuf,
    keep: bool,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The sample files: deterministic pseudo-random bytes, so a rerun moves the same data.
fn sample(size: u64, files: u32) -> Vec<(String, Vec<u8>)> {
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(0x6b70_6465_6d6f);
    let files = u64::from(files).min(size.max(1));
    (0..files)
        .map(|i| {
            // Spread the bytes evenly; the first files take the remainder.
            let len = size / files + u64::from(i < size % files);
            let mut data = vec![0u8; len as usize];
            rng.fill_bytes(&mut data);
            (format!("sample-{i:03}.bin"), data)
        })
        .collect()
}

/// Runs `demo`.
pub fn run(args: &Args) -> Result<ExitCode, CliError> {
    let root = std::env::temp_dir().join(format!("kp-torrent-demo-{}", std::process::id()));
    let _cleanup = Cleanup {
        dir: root.clone(),
        keep: args.keep,
    };
    let io_err = |p: &Path, e: std::io::Error| CliError::io(p, "cannot write", &e);
    let name = "kp-torrent-demo";
    let source = root.join("seed");
    let dest = root.join("download");
    std::fs::create_dir_all(source.join(name)).map_err(|e| io_err(&source, e))?;
    std::fs::create_dir_all(&dest).map_err(|e| io_err(&dest, e))?;

    eprintln!(
        "demo: making {} of sample content in {} file(s) under {}",
        format_bytes(args.size),
        args.files,
        root.display()
    );
    let files = sample(args.size, args.files);
    let mut all = Vec::with_capacity(args.size as usize);
    for (file, data) in &files {
        let path = source.join(name).join(file);
        std::fs::write(&path, data).map_err(|e| io_err(&path, e))?;
        all.extend_from_slice(data);
    }
    let piece_length = kp_torrent_core::metainfo::auto_piece_length(args.size);
    let spec = TorrentSpec {
        name: name.into(),
        piece_length,
        files: files
            .iter()
            .map(|(f, d)| (vec![f.clone()], d.len() as u64))
            .collect(),
        piece_hashes: hash_pieces(&all, piece_length),
        created_by: Some(concat!("kp-torrent/", env!("CARGO_PKG_VERSION")).into()),
        ..TorrentSpec::default()
    };
    drop(all);
    let metainfo = Metainfo::from_bytes(&spec.to_bytes())
        .map_err(|e| CliError::new("demo torrent", e.to_string()))?;

    // The seeder runs on its own thread with its own event loop, quietly.
    let (tx, rx) = mpsc::channel::<SocketAddr>();
    let stop = Arc::new(AtomicBool::new(false));
    let seeder_opts = Options {
        quiet: true,
        handle_signals: false,
        on_listen: Some(tx),
        stop: Some(stop.clone()),
        // A peer that sees its own peer id hangs up: the two clients need different seeds.
        rng_seed: 0x5eed,
        ..base_options(TorrentOptions::seed(metainfo.clone(), source.clone()))
    };
    let seeder = std::thread::Builder::new()
        .name("demo-seeder".into())
        .spawn(move || client::run(seeder_opts))
        .map_err(|e| CliError::new("demo", format!("cannot start the seeder: {e}")))?;
    let Ok(seeder_addr) = rx.recv_timeout(Duration::from_secs(120)) else {
        stop.store(true, Ordering::Relaxed);
        let why = match seeder.join() {
            Ok(Err(e)) => e.to_string(),
            _ => "it did not start".into(),
        };
        return Err(CliError::new("demo seeder", why));
    };
    eprintln!("demo: seeder listening on {seeder_addr}; downloading from it");

    let started = Instant::now();
    let leecher = client::run(base_options(TorrentOptions {
        peers: vec![seeder_addr],
        ..TorrentOptions::download(metainfo, dest.clone())
    }));
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = seeder.join();
    let outcome = leecher
        .map_err(|e| CliError::new("demo download", e.to_string()))?
        .pop()
        .ok_or_else(|| CliError::new("demo download", "no result"))?;
    let summary = outcome
        .result
        .map_err(|e| CliError::new("demo download", e.to_string()))?;
    if !summary.complete {
        return Ok(ExitCode::from(130));
    }

    for (file, data) in &files {
        let path = dest.join(name).join(file);
        let got = std::fs::read(&path).map_err(|e| CliError::io(&path, "cannot read", &e))?;
        if got != *data {
            return Err(CliError::path(&path, "differs from the seeded file"));
        }
    }
    let secs = elapsed.as_secs_f64().max(1e-3);
    println!(
        "demo: downloaded and verified {} in {} file(s) in {} ({} average), byte for byte",
        format_bytes(args.size),
        files.len(),
        format_duration(elapsed),
        format_rate((args.size as f64 / secs) as u64)
    );
    if args.keep {
        println!("demo: files kept in {}", root.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn base_options(torrent: TorrentOptions) -> Options {
    Options {
        timeout: Some(Duration::from_secs(600)),
        rng_seed: 0x6b70,
        status_every: Duration::from_secs(2),
        ..Options::new(vec![torrent], SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_content_is_deterministic_and_sized() {
        let a = sample(1000, 3);
        assert_eq!(
            a.iter().map(|(_, d)| d.len()).collect::<Vec<_>>(),
            vec![334, 333, 333]
        );
        assert_eq!(a, sample(1000, 3));
        assert_eq!(sample(2, 5).len(), 2);
    }

    #[test]
    fn demo_size_is_bounded() {
        assert_eq!(parse_demo_size("16M"), Ok(16 << 20));
        assert!(parse_demo_size("0").is_err());
        assert!(parse_demo_size("9G").is_err());
    }
}
