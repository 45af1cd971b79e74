//! What the user sees while a torrent runs: a live bar on a terminal, a status line every few
//! seconds otherwise, and a summary at the end.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::units::{format_bytes, format_duration, format_rate};

/// What a torrent is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A magnet link's metadata is being fetched from peers.
    Metadata,
    /// Hashing data already on disk.
    Checking,
    /// Fetching pieces.
    Downloading,
    /// Complete, serving others.
    Seeding,
}

impl Phase {
    fn label(self) -> &'static str {
        match self {
            Phase::Metadata => "fetching metadata",
            Phase::Checking => "checking",
            Phase::Downloading => "downloading",
            Phase::Seeding => "seeding",
        }
    }
}

/// One moment of a torrent's state, filled by the event loop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// What it is doing (`None` before the first update).
    pub phase: Option<Phase>,
    /// Bytes of wanted data in all.
    pub total_bytes: u64,
    /// Bytes verified (or checked, while checking).
    pub done_bytes: u64,
    /// Download rate, bytes per second.
    pub download_rate: u64,
    /// Upload rate, bytes per second.
    pub upload_rate: u64,
    /// Bytes uploaded so far.
    pub uploaded: u64,
    /// Connected peers.
    pub peers: usize,
    /// Of which seeds.
    pub seeds: usize,
    /// Nodes in the DHT routing table (`None` when no DHT node runs).
    pub dht_nodes: Option<usize>,
}

/// The one-line status, as printed when stderr is not a terminal.
pub fn status_line(name: &str, s: &Snapshot) -> String {
    if s.phase == Some(Phase::Metadata) {
        return format!(
            "{name}: fetching metadata, peers {}{}",
            s.peers,
            dht_part(s)
        );
    }
    let phase = s.phase.map_or("starting", Phase::label);
    let pct = percent(s.done_bytes, s.total_bytes);
    let mut line = format!(
        "{name}: {phase} {pct:.1}% {}/{} down {} up {} peers {} (seeds {})",
        format_bytes(s.done_bytes),
        format_bytes(s.total_bytes),
        format_rate(s.download_rate),
        format_rate(s.upload_rate),
        s.peers,
        s.seeds,
    );
    line.push_str(&dht_part(s));
    if s.phase == Some(Phase::Downloading) {
        line.push_str(" ETA ");
        line.push_str(&eta(s).map_or_else(|| "-".to_owned(), format_duration));
    }
    line
}

/// ` dht N` when a DHT node runs, else nothing.
fn dht_part(s: &Snapshot) -> String {
    s.dht_nodes
        .map_or_else(String::new, |n| format!(" dht {n}"))
}

/// Time left at the current download rate, if there is one.
pub fn eta(s: &Snapshot) -> Option<Duration> {
    let left = s.total_bytes.saturating_sub(s.done_bytes);
    if left == 0 {
        return Some(Duration::ZERO);
    }
    (s.download_rate > 0).then(|| Duration::from_secs(left.div_ceil(s.download_rate)))
}

fn percent(done: u64, total: u64) -> f64 {
    if total == 0 {
        100.0
    } else {
        done as f64 * 100.0 / total as f64
    }
}

/// The end-of-run summary line.
pub fn summary_line(name: &str, bytes: u64, elapsed: Duration, peers_used: usize) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    format!(
        "{name}: done, {} in {} ({}), {peers_used} peer{} used",
        format_bytes(bytes),
        format_duration(elapsed),
        format_rate((bytes as f64 / secs) as u64),
        if peers_used == 1 { "" } else { "s" },
    )
}

enum Mode {
    Bar(ProgressBar),
    Lines {
        every: Duration,
        last: Option<Instant>,
        /// The phase the last line showed.
        phase: Option<Phase>,
    },
    Quiet,
}

/// Whether a status line is due: `every` after the last one, and at once when the phase
/// changed (so a log shows when checking ended and seeding began).
fn line_due(
    every: Duration,
    last: Option<Instant>,
    last_phase: Option<Phase>,
    now: Instant,
    phase: Option<Phase>,
) -> bool {
    last.is_none_or(|t| now.saturating_duration_since(t) >= every) || phase != last_phase
}

/// Shows a torrent's progress on stderr.
pub struct Progress {
    name: String,
    mode: Mode,
}

impl Progress {
    /// A bar when stderr is a terminal (one line of `group`, when several torrents share the
    /// terminal), status lines every `every` otherwise, nothing when `quiet`.
    pub fn new(
        name: &str,
        quiet: bool,
        every: Duration,
        group: Option<&MultiProgress>,
    ) -> Progress {
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let bar = match group {
                Some(g) => g.add(bar),
                None => bar,
            };
            let style = ProgressStyle::with_template(
                "{prefix} {msg:11} [{bar:30}] {percent:>3}% {bytes}/{total_bytes} {wide_msg}",
            )
            .map(|s| s.progress_chars("=> "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(name.to_owned());
            Mode::Bar(bar)
        } else {
            Mode::Lines {
                every,
                last: None,
                phase: None,
            }
        };
        Progress {
            name: name.to_owned(),
            mode,
        }
    }

    /// Shows `s`; cheap to call on every loop turn (lines are rate limited, the bar redraws at
    /// most 20 times a second).
    pub fn update(&mut self, now: Instant, s: &Snapshot) {
        match &mut self.mode {
            Mode::Quiet => {}
            Mode::Bar(bar) => {
                bar.set_length(s.total_bytes);
                bar.set_position(s.done_bytes);
                bar.set_message(s.phase.map_or("starting", Phase::label));
                let eta = eta(s).map_or_else(|| "-".to_owned(), format_duration);
                bar.set_prefix(format!(
                    "{} down {} up {} peers {} ({} seeds){} ETA {eta}",
                    self.name,
                    format_rate(s.download_rate),
                    format_rate(s.upload_rate),
                    s.peers,
                    s.seeds,
                    dht_part(s),
                ));
            }
            Mode::Lines { every, last, phase } => {
                if line_due(*every, *last, *phase, now, s.phase) {
                    *last = Some(now);
                    *phase = s.phase;
                    eprintln!("{}", status_line(&self.name, s));
                }
            }
        }
    }

    /// Shows the torrent under another name from now on (a magnet link's, once its metadata
    /// arrived).
    pub fn rename(&mut self, name: &str) {
        name.clone_into(&mut self.name);
    }

    /// Clears the bar, printing nothing.
    pub fn clear(&mut self) {
        if let Mode::Bar(bar) = &self.mode {
            bar.finish_and_clear();
        }
    }

    /// Clears the bar and prints `line` (unless quiet).
    pub fn finish(&mut self, line: &str) {
        match &self.mode {
            Mode::Quiet => return,
            Mode::Bar(bar) => bar.finish_and_clear(),
            Mode::Lines { .. } => {}
        }
        eprintln!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_line_is_due_every_interval_and_at_each_phase_change() {
        let t0 = Instant::now();
        let every = Duration::from_secs(5);
        let at = |ms| t0 + Duration::from_millis(ms);
        let checking = Some(Phase::Checking);
        let seeding = Some(Phase::Seeding);
        assert!(line_due(every, None, None, t0, checking), "the first line");
        assert!(!line_due(every, Some(t0), checking, at(100), checking));
        assert!(
            line_due(every, Some(t0), checking, at(100), seeding),
            "checking ended"
        );
        assert!(!line_due(every, Some(at(100)), seeding, at(4000), seeding));
        assert!(line_due(every, Some(at(100)), seeding, at(5100), seeding));
    }

    fn downloading() -> Snapshot {
        Snapshot {
            phase: Some(Phase::Downloading),
            total_bytes: 100 << 20,
            done_bytes: 25 << 20,
            download_rate: 5 << 20,
            upload_rate: 1 << 10,
            uploaded: 0,
            peers: 3,
            seeds: 1,
            dht_nodes: None,
        }
    }

    #[test]
    fn status_line_shows_state_percent_rates_peers_and_eta() {
        assert_eq!(
            status_line("ubuntu.iso", &downloading()),
            "ubuntu.iso: downloading 25.0% 25.0 MiB/100 MiB down 5.00 MiB/s up 1.00 KiB/s \
             peers 3 (seeds 1) ETA 15s"
        );
    }

    #[test]
    fn eta_is_unknown_without_a_rate_and_zero_when_done() {
        let mut s = downloading();
        s.download_rate = 0;
        assert_eq!(eta(&s), None);
        assert!(status_line("x", &s).ends_with("ETA -"));
        s.done_bytes = s.total_bytes;
        assert_eq!(eta(&s), Some(Duration::ZERO));
    }

    #[test]
    fn seeding_line_has_no_eta_and_empty_torrent_is_complete() {
        let s = Snapshot {
            phase: Some(Phase::Seeding),
            ..Snapshot::default()
        };
        assert_eq!(
            status_line("empty", &s),
            "empty: seeding 100.0% 0 B/0 B down 0 B/s up 0 B/s peers 0 (seeds 0)"
        );
    }

    #[test]
    fn status_line_shows_dht_nodes_when_a_dht_runs() {
        let mut s = downloading();
        s.dht_nodes = Some(42);
        assert_eq!(
            status_line("ubuntu.iso", &s),
            "ubuntu.iso: downloading 25.0% 25.0 MiB/100 MiB down 5.00 MiB/s up 1.00 KiB/s \
             peers 3 (seeds 1) dht 42 ETA 15s"
        );
        let fetching = Snapshot {
            phase: Some(Phase::Metadata),
            peers: 2,
            dht_nodes: Some(7),
            ..Snapshot::default()
        };
        assert_eq!(
            status_line("magnet", &fetching),
            "magnet: fetching metadata, peers 2 dht 7"
        );
        s.dht_nodes = None;
        assert!(!status_line("ubuntu.iso", &s).contains("dht"));
    }

    #[test]
    fn summary_reports_average_rate() {
        assert_eq!(
            summary_line("f", 10 << 20, Duration::from_secs(2), 4),
            "f: done, 10.0 MiB in 2s (5.00 MiB/s), 4 peers used"
        );
    }
}
