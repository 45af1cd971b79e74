//! Trace record and replay over a simulated swarm (`tests/sim`): a recorded run replays with
//! zero divergences, a magnet leecher's (metadata fetched from peers, then the check and the
//! download) and a bad-metadata node's included; a changed input byte is reported at the input
//! that carried it; replay gives the same report in separate processes; damaged traces are
//! errors, never panics.

mod sim;
mod trace_sim;

use std::process::Command;
use std::sync::OnceLock;

use kp_torrent_core::session::{Input, Torrent};
use kp_torrent_core::torrent::{StartState, TorrentInput};
use kp_torrent_core::trace::{
    ActionPrint, InputRecord, ReplayReport, TraceReader, TraceRecord, replay, replay_from,
};
use kp_torrent_tests::TempDir;

use sim::{Discovery, Role, SimConfig};

/// The seeder's and first leecher's traces of a small swarm (one seeder, two leechers), and the
/// content they moved.
fn traces() -> &'static (Vec<u8>, Vec<u8>, Vec<u8>) {
    static TRACES: OnceLock<(Vec<u8>, Vec<u8>, Vec<u8>)> = OnceLock::new();
    TRACES.get_or_init(|| {
        let (sim, seeder, leecher) = trace_sim::record_swarm(11, 2, 32 * 1024, 700_000);
        (seeder, leecher, sim.content.clone())
    })
}

fn clean(report: &ReplayReport) {
    assert!(report.divergence.is_none(), "{report}");
    assert!(report.finished, "{report}");
}

#[test]
fn recorded_swarm_replays_without_divergence() {
    let (seeder, leecher, content) = traces();
    let l = replay(leecher).expect("leecher trace decodes");
    clean(&l);
    assert!(l.received_bytes >= content.len() as u64, "{l}");
    let s = replay(seeder).expect("seeder trace decodes");
    clean(&s);
    assert!(s.inputs > 0 && s.actions > 0);
    // The trace holds the leecher's traffic and the blocks it served once each, nothing more.
    let data = l.received_bytes + l.read_bytes;
    assert!(
        (leecher.len() as u64) < data + data / 20,
        "{} trace bytes for {data} received and read",
        leecher.len(),
    );
    // Reading from a `Read` gives the same report.
    assert_eq!(replay_from(&leecher[..]).unwrap(), l);
}

/// Finds a received chunk that holds a whole block the leecher then wrote, and returns
/// (input index, trace offset of a byte inside that block).
fn received_block(trace: &[u8], content: &[u8]) -> (u64, usize) {
    let mut reader = TraceReader::new(trace).unwrap();
    let piece_length = reader.header().torrent.piece_length;
    let mut last: Option<(u64, u64, &[u8])> = None;
    while let Some(rec) = reader.next_record().unwrap() {
        match rec {
            TraceRecord::Input {
                offset,
                index,
                input: InputRecord::Borrowed(TorrentInput::Session(Input::Received { bytes, .. })),
                ..
            } => last = Some((index, offset, bytes)),
            TraceRecord::Input { .. } => last = None,
            TraceRecord::Action {
                action:
                    ActionPrint::WriteBlock {
                        piece, begin, len, ..
                    },
                ..
            } => {
                let Some((index, offset, bytes)) = last else {
                    continue;
                };
                let start = (u64::from(piece) * piece_length + u64::from(begin)) as usize;
                let block = &content[start..start + len as usize];
                if let Some(at) = bytes.windows(block.len()).position(|w| w == block) {
                    // The payload is the record's last field: find it from the record's end.
                    let payload_start = bytes.as_ptr() as usize - trace.as_ptr() as usize;
                    assert!(payload_start > offset as usize);
                    return (index, payload_start + at + block.len() / 2);
                }
            }
            _ => {}
        }
    }
    panic!("no received chunk holds a whole written block");
}

#[test]
fn prop_random_swarms_replay_without_divergence() {
    fn prop(seed: u64) -> bool {
        let (_, seeder, leecher) = trace_sim::record_sim(sim::SimConfig::random(seed, 1 << 20));
        for trace in [&seeder, &leecher] {
            let r = replay(trace).expect("trace decodes");
            assert!(
                r.divergence.is_none() && r.finished,
                "swarm seed {seed}: {r}"
            );
        }
        true
    }
    kp_torrent_tests::quickcheck("prop_random_swarms_replay_without_divergence", 12)
        .quickcheck(prop as fn(u64) -> bool);
}

/// What [`magnet_traces`] recorded.
struct MagnetTraces {
    /// The torrent the swarm shared.
    torrent: Torrent,
    /// Bytes of content.
    content_len: u64,
    /// The first magnet leecher's trace.
    magnet: Vec<u8>,
    /// The bad-metadata node's trace.
    bad: Vec<u8>,
}

/// A swarm of two seeders, a node serving wrong metadata (as long as the real one, with every
/// piece), an ordinary leecher and two magnet leechers, over 600 files (metadata of two 16 KiB
/// pieces); the traces of the first magnet leecher and of the bad node.
fn magnet_traces() -> &'static MagnetTraces {
    static TRACES: OnceLock<MagnetTraces> = OnceLock::new();
    TRACES.get_or_init(|| {
        let mut config = SimConfig::new(21);
        config.seeders = 2;
        config.bad_metadata = 1;
        config.leechers = 1;
        config.magnet_leechers = 2;
        config.piece_length = 32 * 1024;
        config.file_lengths = (0..600u64).map(|i| (i * 7919) % 3000).collect();
        let magnet = config.seeders + config.bad_metadata + config.leechers;
        let bad = config.seeders;
        let (sim, traces) = trace_sim::record_sim_nodes(config, &[magnet, bad]);
        assert_eq!(sim.nodes[magnet].role, Role::MagnetLeecher);
        assert_eq!(sim.nodes[bad].role, Role::BadMetadata);
        let mut traces = traces.into_iter();
        MagnetTraces {
            torrent: sim.torrent.clone(),
            content_len: sim.content.len() as u64,
            magnet: traces.next().unwrap(),
            bad: traces.next().unwrap(),
        }
    })
}

/// The recorded magnet leecher replays with no divergence: its task starts from the info-hash
/// alone, fetches the metadata, checks (no files yet: nothing to hash) and downloads, and the
/// replay computes every action again, byte for byte. The bad-metadata node replays too.
#[test]
fn recorded_magnet_leecher_replays_without_divergence() {
    let t = magnet_traces();
    let reader = TraceReader::new(&t.magnet).unwrap();
    assert_eq!(reader.header().start_state, StartState::Magnet);
    assert_eq!(
        reader.header().torrent,
        Torrent::unknown(t.torrent.info_hash)
    );
    assert!(t.torrent.metadata.len() > 16 * 1024, "two metadata pieces");
    let (before, start, after) = magnet_phases(&t.magnet);
    assert!(
        before > 0 && after > 0,
        "{before} inputs before the start, {after} after"
    );
    assert_eq!(start, 1, "one start, once the metadata is in");
    let r = replay(&t.magnet).expect("the magnet trace decodes");
    clean(&r);
    assert!(r.received_bytes >= t.content_len, "{r}");
    let b = replay(&t.bad).expect("the bad node's trace decodes");
    clean(&b);
    assert!(b.inputs > 0 && b.actions > 0, "{b}");
    // The bad node's header holds its wrong metadata, for the same info-hash.
    let bad_header = TraceReader::new(&t.bad).unwrap().header().torrent.clone();
    assert_eq!(bad_header.info_hash, t.torrent.info_hash);
    assert_ne!(bad_header.metadata, t.torrent.metadata);
}

/// Inputs of a magnet leecher's trace before its `Start`, `Start`s, and inputs after.
fn magnet_phases(trace: &[u8]) -> (u64, u64, u64) {
    let mut reader = TraceReader::new(trace).unwrap();
    let (mut before, mut start, mut after) = (0, 0, 0);
    while let Some(rec) = reader.next_record().unwrap() {
        if let TraceRecord::Input { input, .. } = rec {
            match input {
                InputRecord::Start { files, resume } => {
                    assert!(files.iter().all(Option::is_none) && resume.is_none());
                    start += 1;
                }
                _ if start == 0 => before += 1,
                _ => after += 1,
            }
        }
    }
    (before, start, after)
}

/// A changed byte inside the last metadata a magnet leecher received before its start (from an
/// honest peer: it completed the metadata) makes the metadata fail its hash check instead: the
/// replay diverges at that input.
#[test]
fn changed_metadata_byte_diverges() {
    let magnet = &magnet_traces().magnet;
    let mut reader = TraceReader::new(magnet).unwrap();
    let mut found = None;
    while let Some(rec) = reader.next_record().unwrap() {
        match rec {
            TraceRecord::Input {
                index,
                input: InputRecord::Borrowed(TorrentInput::Session(Input::Received { bytes, .. })),
                ..
            } => {
                let key = b"10:total_sizei";
                let Some(at) = bytes.windows(key.len()).position(|w| w == key) else {
                    continue;
                };
                // The dictionary ends after the size's digits: `e` ends the integer and `e` the
                // dictionary; the piece's data follows.
                let digits = bytes[at + key.len()..]
                    .iter()
                    .take_while(|b| b.is_ascii_digit())
                    .count();
                let data = at + key.len() + digits + 2;
                if bytes.len() > data + 100 {
                    let payload_start = bytes.as_ptr() as usize - magnet.as_ptr() as usize;
                    found = Some((index, payload_start + data + 100));
                }
            }
            TraceRecord::Input {
                input: InputRecord::Start { .. },
                ..
            } => break,
            _ => {}
        }
    }
    let (index, at) = found.expect("a received chunk holds metadata data");
    let mut bad = magnet.clone();
    bad[at] ^= 0x20;
    let report = replay(&bad).expect("a changed payload byte still decodes");
    let d = report.divergence.as_ref().expect("must diverge");
    // Whether the fetch blames the sender at once or asks again, it acts at that input.
    assert_eq!(d.input, Some(index), "{report}");
}

/// A swarm's seed that does not shrink (a smaller seed is an unrelated swarm).
#[derive(Debug, Clone, Copy)]
struct Seed(u64);

impl quickcheck::Arbitrary for Seed {
    fn arbitrary(g: &mut quickcheck::Gen) -> Seed {
        Seed(u64::arbitrary(g))
    }
}

/// Random swarms with one or two magnet leechers, a bad-metadata node in half of them, and in
/// half of them nodes that know only the first seeder (the rest they learn by peer exchange):
/// the last magnet leecher's and the first seeder's traces replay with no divergence.
#[test]
fn prop_random_magnet_swarms_replay_without_divergence() {
    fn prop(Seed(seed): Seed) -> bool {
        let mut config = SimConfig::random(seed, 1 << 20);
        config.magnet_leechers = 1 + (seed % 2) as usize;
        config.bad_metadata = (seed / 2 % 2) as usize;
        config.bad_metadata_resized = seed / 4 % 2 == 1;
        if seed / 8 % 2 == 1 {
            config.discovery = Discovery::FirstSeeder;
        }
        let magnet = config.node_count() - 1;
        let (_, traces) = trace_sim::record_sim_nodes(config, &[magnet, 0]);
        for trace in &traces {
            let r = replay(trace).expect("trace decodes");
            assert!(
                r.divergence.is_none() && r.finished,
                "swarm seed {seed}: {r}"
            );
        }
        true
    }
    kp_torrent_tests::quickcheck("prop_random_magnet_swarms_replay_without_divergence", 24)
        .quickcheck(prop as fn(Seed) -> bool);
}

#[test]
fn changed_received_byte_diverges_at_that_input() {
    let (_, leecher, content) = traces();
    let (index, at) = received_block(leecher, content);
    let mut bad = leecher.clone();
    bad[at] ^= 0x01;
    let report = replay(&bad).expect("a changed payload byte still decodes");
    let d = report.divergence.as_ref().expect("must diverge");
    assert_eq!(d.input, Some(index), "{report}");
    assert_eq!(report.inputs, index + 1);
    let shown = d.to_string();
    assert!(shown.contains("expected: write piece"), "{shown}");
}

/// A changed digest fails the piece, so the `have`s the good piece sent right away are not
/// sent: the replay diverges at that input. (A piece that only a seed heard of sends nothing, so
/// the piece chosen is one whose hash was followed by sends.)
#[test]
fn changed_digest_diverges_at_that_input() {
    let (_, leecher, _) = traces();
    let mut reader = TraceReader::new(leecher).unwrap();
    let mut hashed = None;
    let mut found = None;
    while let Some(rec) = reader.next_record().unwrap() {
        match rec {
            TraceRecord::Input {
                index,
                input:
                    InputRecord::Borrowed(TorrentInput::Session(Input::PieceHashed { digest, .. })),
                ..
            } => {
                // The digest is the record's last 20 bytes: the next record starts after it.
                hashed = Some((index, reader.offset() as usize - 20, digest));
            }
            TraceRecord::Input { .. } => hashed = None,
            TraceRecord::Action {
                action: ActionPrint::Send { .. },
                ..
            } if hashed.is_some() => {
                found = hashed;
                break;
            }
            _ => {}
        }
    }
    let (index, at, digest) = found.expect("the leecher hashed a piece and told its peers");
    assert_eq!(leecher[at..at + 20], digest);
    let mut bad = leecher.clone();
    bad[at + 7] ^= 0x40;
    let report = replay(&bad).unwrap();
    assert_eq!(report.divergence.map(|d| d.input), Some(Some(index)));
}

const CHILD_ENV: &str = "KP_TRACE_REPLAY_FILE";

/// In a child process (run with a trace file in [`CHILD_ENV`]): replays it and prints the report.
fn replay_child(path: &str) {
    let file = std::fs::File::open(path).expect("trace file opens");
    match replay_from(file) {
        Ok(r) => println!("REPORT-BEGIN\n{r}\nREPORT-END"),
        Err(e) => println!("REPORT-BEGIN\nerror: {e}\nREPORT-END"),
    }
}

/// Runs this test in a new process of this test binary, which replays `path` there.
fn replay_in_child(path: &std::path::Path) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "replay_is_the_same_in_separate_processes",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, path)
        .output()
        .expect("the test binary runs");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let begin = text.find("REPORT-BEGIN\n").expect("a report") + "REPORT-BEGIN\n".len();
    let end = text.find("\nREPORT-END").expect("a report end");
    text[begin..end].to_owned()
}

#[test]
fn replay_is_the_same_in_separate_processes() {
    if let Ok(path) = std::env::var(CHILD_ENV) {
        return replay_child(&path);
    }
    let (_, leecher, content) = traces();
    let (_, at) = received_block(leecher, content);
    let mut bad = leecher.clone();
    bad[at] ^= 0x10;
    let dir = TempDir::new("trace-replay");
    for (name, trace) in [("clean.kptrace", leecher), ("bad.kptrace", &bad)] {
        let path = dir.path().join(name);
        std::fs::write(&path, trace).unwrap();
        let first = replay_in_child(&path);
        let second = replay_in_child(&path);
        assert_eq!(first, second, "{name}");
        assert_eq!(first, replay(trace).unwrap().to_string(), "{name}");
    }
}

#[test]
fn prop_arbitrary_bytes_never_panic_replay() {
    /// `start`: 0 nothing, 1 the magic and version, 2 a whole valid header, before the bytes.
    fn prop(data: Vec<u8>, start: u8) -> bool {
        let (trace, offsets) = &small_traces()[1];
        let mut bytes = match start % 3 {
            0 => Vec::new(),
            1 => b"KPTR\x01\x00".to_vec(),
            _ => trace[..offsets[1]].to_vec(),
        };
        bytes.extend_from_slice(&data);
        let _ = replay(&bytes);
        true
    }
    kp_torrent_tests::quickcheck("prop_arbitrary_bytes_never_panic_replay", 500)
        .quickcheck(prop as fn(Vec<u8>, u8) -> bool);
}

/// Small traces to mutate (a seeder's and a leecher's; whole swarm traces would make each case
/// slow), with the offsets of their records, so mutations can aim at tags and fields rather than
/// mostly at payload bytes.
fn small_traces() -> &'static [(Vec<u8>, Vec<usize>); 2] {
    static TRACES: OnceLock<[(Vec<u8>, Vec<usize>); 2]> = OnceLock::new();
    TRACES.get_or_init(|| {
        let (_, seeder, leecher) = trace_sim::record_swarm(5, 2, 16 * 1024, 150_000);
        [seeder, leecher].map(|trace| {
            let mut offsets = vec![0];
            let mut reader = TraceReader::new(&trace).unwrap();
            while let Some(rec) = reader.next_record().unwrap() {
                offsets.push(match rec {
                    TraceRecord::Input { offset, .. }
                    | TraceRecord::Action { offset, .. }
                    | TraceRecord::Event { offset, .. }
                    | TraceRecord::End { offset } => offset as usize,
                });
            }
            (trace, offsets)
        })
    })
}

#[test]
fn prop_mutated_traces_never_panic_replay() {
    fn prop(
        seeder: bool,
        anywhere: Vec<(usize, u8)>,
        in_records: Vec<(usize, u8, u8)>,
        cut: Option<usize>,
        insert: Option<(usize, u8)>,
    ) -> bool {
        let (trace, offsets) = &small_traces()[usize::from(!seeder)];
        let mut t = trace.clone();
        for (at, b) in anywhere.into_iter().take(3) {
            let i = at % t.len();
            t[i] ^= b.max(1);
        }
        for (record, k, b) in in_records.into_iter().take(3) {
            let i = (offsets[record % offsets.len()] + usize::from(k % 16)) % t.len();
            t[i] ^= b.max(1);
        }
        if let Some((at, b)) = insert {
            t.insert(at % t.len(), b);
        }
        if let Some(c) = cut {
            t.truncate(c % (t.len() + 1));
        }
        let _ = replay(&t);
        true
    }
    kp_torrent_tests::quickcheck("prop_mutated_traces_never_panic_replay", 300).quickcheck(
        prop as fn(
            bool,
            Vec<(usize, u8)>,
            Vec<(usize, u8, u8)>,
            Option<usize>,
            Option<(usize, u8)>,
        ) -> bool,
    );
}
