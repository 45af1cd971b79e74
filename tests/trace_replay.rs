//! Trace record and replay over a simulated swarm (`tests/sim`): a recorded run replays with
//! zero divergences; a changed input byte is reported at the input that carried it; replay gives
//! the same report in separate processes; damaged traces are errors, never panics.

mod sim;
mod trace_sim;

use std::process::Command;
use std::sync::OnceLock;

use kp_torrent_core::session::Input;
use kp_torrent_core::torrent::TorrentInput;
use kp_torrent_core::trace::{
    ActionPrint, InputRecord, ReplayReport, TraceReader, TraceRecord, replay, replay_from,
};
use kp_torrent_tests::TempDir;

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

#[test]
fn changed_digest_diverges_at_that_input() {
    let (_, leecher, _) = traces();
    let mut reader = TraceReader::new(leecher).unwrap();
    let mut found = None;
    while let Some(rec) = reader.next_record().unwrap() {
        if let TraceRecord::Input {
            index,
            input: InputRecord::Borrowed(TorrentInput::Session(Input::PieceHashed { digest, .. })),
            ..
        } = rec
        {
            // The digest is the record's last 20 bytes: the next record starts after it.
            found = Some((index, reader.offset() as usize - 20, digest));
            break;
        }
    }
    let (index, at, digest) = found.expect("the leecher hashed a piece");
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
