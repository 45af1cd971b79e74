//! Benchmark helper for `benches/transfer.sh`: what idle peer connections cost a seeder.
//!
//! ```text
//! idle_peers --addr 127.0.0.1:PORT --info-hash HEX --pid SEEDER_PID [--conns 2000] [--probes 20]
//! ```
//!
//! Reads the seeder's resident set (`VmRSS` of /proc/PID/status), opens `--conns` connections
//! that each send a plaintext BitTorrent handshake, read the 68-byte reply and then stay silent,
//! waits a second and reads the resident set again. Then, with those connections still open, it
//! times `--probes` new peers from `connect` to the last byte of the handshake reply. Prints
//! `key value` lines (`idle_conns`, `rss_before_kib`, `rss_after_kib`, `kib_per_conn`,
//! `reply_ms_median`, `reply_ms_max`, `idle_still_open`) for the script to parse. Everything stays on the address
//! given (the script passes 127.0.0.1); every wait has a timeout, so the helper always ends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// How long any one connect, write or read may take before the helper gives up.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

struct Args {
    addr: SocketAddr,
    info_hash: [u8; 20],
    pid: u32,
    conns: usize,
    probes: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut addr = None;
    let mut info_hash = None;
    let mut pid = None;
    let mut conns = 2000;
    let mut probes = 20;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--addr" => addr = Some(value.parse().map_err(|e| bad(&e))?),
            "--info-hash" => {
                info_hash = Some(parse_hex(&value).ok_or_else(|| bad(&"not 40 hex digits"))?)
            }
            "--pid" => pid = Some(value.parse().map_err(|e| bad(&e))?),
            "--conns" => conns = value.parse().map_err(|e| bad(&e))?,
            "--probes" => probes = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(Args {
        addr: addr.ok_or("--addr is required")?,
        info_hash: info_hash.ok_or("--info-hash is required")?,
        pid: pid.ok_or("--pid is required")?,
        conns,
        probes: probes.max(1),
    })
}

fn parse_hex(s: &str) -> Option<[u8; 20]> {
    if s.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// The seeder's resident set in KiB.
fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("reading /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

fn handshake(info_hash: &[u8; 20], n: usize) -> [u8; 68] {
    let mut h = [0u8; 68];
    h[0] = 19;
    h[1..20].copy_from_slice(b"BitTorrent protocol");
    h[28..48].copy_from_slice(info_hash);
    // A distinct peer id per connection, so the seeder cannot take two for one peer.
    let id = format!("-KB0001-{n:012}");
    h[48..68].copy_from_slice(&id.as_bytes()[..20]);
    h
}

/// Connects, sends a handshake and reads the 68-byte reply; the stream stays open.
fn open_peer(addr: SocketAddr, info_hash: &[u8; 20], n: usize) -> Result<TcpStream, String> {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .map_err(|e| format!("connection {n}: connect: {e}"))?;
    s.set_read_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(IO_TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.write_all(&handshake(info_hash, n))
        .map_err(|e| format!("connection {n}: send handshake: {e}"))?;
    let mut reply = [0u8; 68];
    s.read_exact(&mut reply)
        .map_err(|e| format!("connection {n}: read handshake reply: {e}"))?;
    if reply[0] != 19 || &reply[1..20] != b"BitTorrent protocol" || reply[28..48] != info_hash[..] {
        return Err(format!(
            "connection {n}: the reply is not a handshake for this torrent"
        ));
    }
    Ok(s)
}

/// False when the seeder closed the connection (reads what it sent meanwhile, without waiting).
fn still_open(s: &mut TcpStream) -> bool {
    if s.set_nonblocking(true).is_err() {
        return false;
    }
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let before = rss_kib(args.pid)?;
    let mut idle = Vec::with_capacity(args.conns);
    for n in 0..args.conns {
        idle.push(open_peer(args.addr, &args.info_hash, n)?);
    }
    // Let the seeder finish whatever it sends after the handshake (bitfield, unchoke).
    std::thread::sleep(Duration::from_secs(1));
    let after = rss_kib(args.pid)?;
    let mut times = Vec::with_capacity(args.probes);
    for k in 0..args.probes {
        let start = Instant::now();
        let probe = open_peer(args.addr, &args.info_hash, args.conns + k)?;
        times.push(start.elapsed());
        drop(probe);
    }
    let open = idle.iter_mut().map(still_open).filter(|&o| o).count();
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("idle_conns {}", idle.len());
    println!("rss_before_kib {before}");
    println!("rss_after_kib {after}");
    println!(
        "kib_per_conn {:.2}",
        after.saturating_sub(before) as f64 / args.conns.max(1) as f64
    );
    println!("reply_ms_median {:.3}", ms(times[times.len() / 2]));
    println!("reply_ms_max {:.3}", ms(times[times.len() - 1]));
    println!("idle_still_open {open}");
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("idle_peers: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("idle_peers: {e}");
            ExitCode::FAILURE
        }
    }
}
