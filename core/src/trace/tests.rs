use core::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::io;
use std::time::Duration;

use sha1::Digest;

use super::*;
use crate::bitfield::Bitfield;
use crate::id::InfoHash;
use crate::metainfo::hash_pieces;
use crate::session::{Action, FileSpan, Input, Session, SessionConfig};

fn task_config(seed: u64) -> TorrentConfig {
    task_config_dht(seed, 0)
}

fn task_config_dht(seed: u64, dht_port: u16) -> TorrentConfig {
    TorrentConfig {
        session: SessionConfig {
            seed,
            dht_port,
            ..SessionConfig::default()
        },
        trackers: Default::default(),
        tiers: Vec::new(),
        web_seeds: Vec::new(),
    }
}

/// A swarm input for a task.
#[allow(non_snake_case)]
fn S(input: Input<'_>) -> TorrentInput<'_> {
    TorrentInput::Session(input)
}

/// A seeder and a recorded leecher joined directly, delivering every send at once, one
/// millisecond per step. Returns the leecher's trace.
fn record_pair(piece_length: u64, total: usize) -> Vec<u8> {
    record_pair_dht(piece_length, total, 0)
}

/// [`record_pair`] with both sides running a DHT node on `dht_port` (0: none).
fn record_pair_dht(piece_length: u64, total: usize, dht_port: u16) -> Vec<u8> {
    let content: Vec<u8> = (0..total).map(|i| (i * 7 + i / 251) as u8).collect();
    let torrent = Torrent {
        private: false,
        metadata: Vec::new(),
        info_hash: InfoHash([9; 20]),
        piece_length,
        total_length: total as u64,
        piece_hashes: hash_pieces(&content, piece_length),
        files: vec![FileSpan {
            offset: 0,
            length: total as u64,
            padding: false,
        }],
    };
    let count = torrent.piece_count();
    let seeder_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 6881);
    let leecher_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 40000);
    let config = |seed| SessionConfig {
        seed,
        dht_port,
        ..SessionConfig::default()
    };
    let mut seeder = Session::new(
        config(1),
        torrent.clone(),
        Bitfield::full(count),
        Time::ZERO,
    );
    // The leecher checks its (missing) file first, as the client does.
    let mut leecher = Recorder::new(
        Vec::new(),
        task_config_dht(2, dht_port),
        torrent,
        StartState::Check,
        Time::ZERO,
    );
    let mut storage = vec![0u8; total];
    let mut now = Time::ZERO;
    let mut seeder_peer = None;
    let mut leecher_peer = None;
    leecher.handle_input(
        now,
        TorrentInput::Start {
            files: &[None],
            resume: None,
        },
    );
    assert!(leecher.task().accepts_peers(), "nothing to check");
    leecher.handle_input(
        now,
        S(Input::PeersDiscovered {
            addrs: &[seeder_addr],
        }),
    );
    for _ in 0..200_000 {
        if leecher.task().is_complete() {
            break;
        }
        now += Duration::from_millis(1);
        let mut progressed = false;
        while let Some(a) = leecher.poll_action() {
            progressed = true;
            let TorrentAction::Session(a) = a else {
                continue;
            };
            match a {
                Action::Connect { peer, .. } => {
                    leecher_peer = Some(peer);
                    seeder_peer = Some(seeder.next_handle());
                    seeder.handle_input(now, Input::Incoming { addr: leecher_addr });
                    leecher.handle_input(now, S(Input::Connected { peer }));
                }
                Action::Send { bytes, .. } => {
                    if let Some(peer) = seeder_peer {
                        seeder.handle_input(
                            now,
                            Input::Received {
                                peer,
                                bytes: &bytes,
                            },
                        );
                    }
                }
                Action::WriteBlock { piece, begin, data } => {
                    let at = (u64::from(piece) * piece_length) as usize + begin as usize;
                    storage[at..at + data.len()].copy_from_slice(&data);
                    leecher.handle_input(now, S(Input::WriteDone { piece, begin }));
                }
                Action::HashPiece { piece } => {
                    let at = (u64::from(piece) * piece_length) as usize;
                    let end = (at + piece_length as usize).min(total);
                    let digest: [u8; 20] = sha1::Sha1::digest(&storage[at..end]).into();
                    leecher.handle_input(now, S(Input::PieceHashed { piece, digest }));
                }
                _ => {}
            }
        }
        while leecher.poll_event().is_some() {}
        while let Some(a) = seeder.poll_action() {
            progressed = true;
            match a {
                Action::Send { bytes, .. } => {
                    if let Some(peer) = leecher_peer {
                        // Split sends in two so decoders see arbitrary boundaries.
                        let (x, y) = bytes.split_at(bytes.len() / 2);
                        for part in [x, y] {
                            leecher.handle_input(now, S(Input::Received { peer, bytes: part }));
                        }
                    }
                }
                Action::ReadBlock {
                    peer,
                    piece,
                    begin,
                    length,
                } => {
                    let at = (u64::from(piece) * piece_length) as usize + begin as usize;
                    let data = &content[at..at + length as usize];
                    seeder.handle_input(
                        now,
                        Input::ReadDone {
                            peer,
                            piece,
                            begin,
                            data,
                        },
                    );
                }
                _ => {}
            }
        }
        while seeder.poll_event().is_some() {}
        if !progressed && let Some(t) = leecher.poll_timeout() {
            now = now.max(t);
            leecher.handle_input(now, S(Input::Timeout));
        }
    }
    assert!(leecher.task().is_complete(), "the pair did not finish");
    assert_eq!(storage, content);
    let (_, out) = leecher.finish();
    out.expect("writing to a Vec cannot fail")
}

#[test]
fn recorded_pair_replays_without_divergence() {
    let trace = record_pair(32 * 1024, 200_000);
    let report = replay(&trace).expect("trace decodes");
    assert_eq!(report.divergence, None, "{report}");
    assert!(report.finished);
    assert!(report.received_bytes >= 200_000);
    assert!(report.inputs > 10 && report.actions > 10 && report.events > 0);
    // Actions are fingerprints: the trace is not much larger than the traffic it holds.
    assert!(
        (trace.len() as u64) < report.received_bytes + report.received_bytes / 20,
        "{} bytes of trace for {} received",
        trace.len(),
        report.received_bytes
    );
}

#[test]
fn changed_digest_diverges_at_that_input() {
    let trace = record_pair(32 * 1024, 100_000);
    let mut reader = TraceReader::new(&trace).unwrap();
    let mut target = None;
    while let Some(rec) = reader.next_record().unwrap() {
        if let TraceRecord::Input {
            offset,
            index,
            input: InputRecord::Borrowed(TorrentInput::Session(Input::PieceHashed { .. })),
            ..
        } = rec
        {
            target = Some((offset, index));
            break;
        }
    }
    let (offset, index) = target.expect("the leecher hashed a piece");
    let mut bad = trace.clone();
    // Tag, one-byte time delta, one-byte piece index, then the digest.
    let at = offset as usize + 3 + 5;
    bad[at] ^= 1;
    let report = replay(&bad).unwrap();
    let d = report.divergence.expect("a changed digest must diverge");
    assert_eq!(d.input, Some(index), "{d}");
    assert!(report.inputs == index + 1);
}

#[test]
fn truncated_traces_are_errors_or_unfinished() {
    let trace = record_pair(16 * 1024, 40_000);
    let header_len = {
        let r = TraceReader::new(&trace).unwrap();
        r.offset() as usize
    };
    for cut in [0, 3, 10, header_len - 1] {
        assert!(replay(&trace[..cut]).is_err(), "cut at {cut}");
    }
    // Cut mid-way: an error, or (at a record boundary) an unfinished report with no divergence.
    for cut in (header_len..trace.len() - 1).step_by(997) {
        match replay(&trace[..cut]) {
            Err(ReplayError::Truncated { .. }) => {}
            Err(e) => panic!("cut at {cut}: {e}"),
            Ok(r) => assert!(!r.finished && r.divergence.is_none(), "cut at {cut}: {r}"),
        }
    }
    assert!(matches!(
        replay(b"XXXX\x01\x00"),
        Err(ReplayError::NotATrace)
    ));
    let mut v1 = trace.clone();
    v1[4] = 1;
    assert!(matches!(
        replay(&v1),
        Err(ReplayError::UnsupportedVersion { version: 1 })
    ));
}

#[test]
fn payload_hash_sees_every_single_byte_change() {
    let data: Vec<u8> = (0..1000u32).map(|i| (i * 31) as u8).collect();
    let h = payload_hash(&data);
    for i in 0..data.len() {
        let mut d = data.clone();
        d[i] ^= 0x80;
        assert_ne!(payload_hash(&d), h, "byte {i}");
    }
    assert_ne!(payload_hash(&data[..999]), h);
    assert_ne!(payload_hash(&[]), payload_hash(&[0]));
}

#[test]
fn varints_round_trip_and_reject_overflow() {
    for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
        let mut b = Vec::new();
        codec::put_varint(&mut b, v);
        let mut c = codec::Cursor::new(&b);
        assert_eq!(c.varint().unwrap(), v);
        assert!(c.at_end());
    }
    let eleven = [0xffu8; 11];
    assert!(codec::Cursor::new(&eleven).varint().is_err());
    let too_big = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
    assert!(codec::Cursor::new(&too_big).varint().is_err());
}

/// Fails every write after the first `ok` bytes.
struct FailingWriter {
    ok: usize,
}

impl io::Write for FailingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.ok == 0 {
            return Err(io::Error::other("disk full"));
        }
        let n = buf.len().min(self.ok);
        self.ok -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A torrent of one 16 KiB piece (its hash never matters here).
fn one_block_torrent(tag: u8) -> Torrent {
    Torrent {
        private: false,
        metadata: Vec::new(),
        info_hash: InfoHash([tag; 20]),
        piece_length: 16384,
        total_length: 16384,
        piece_hashes: vec![[0; 20]],
        files: vec![FileSpan {
            offset: 0,
            length: 16384,
            padding: false,
        }],
    }
}

#[test]
fn recorder_keeps_io_errors_and_runs_on() {
    let torrent = one_block_torrent(1);
    let mut r = Recorder::new(
        FailingWriter { ok: 10 },
        task_config(0),
        torrent,
        StartState::Verified(Bitfield::new(1)),
        Time::ZERO,
    );
    assert!(r.poll_action().is_none(), "announces stay inside the task");
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1);
    r.handle_input(
        Time::from_secs(1),
        S(Input::PeersDiscovered { addrs: &[addr] }),
    );
    assert!(matches!(
        r.poll_action(),
        Some(TorrentAction::Session(Action::Connect { .. }))
    ));
    let (_, res) = r.finish();
    assert_eq!(res.err().map(|e| e.to_string()), Some("disk full".into()));
}

#[test]
fn a_task_started_late_replays() {
    // Torrents added to a running engine start at its current time, not at zero.
    let torrent = one_block_torrent(2);
    let start = Time::from_millis(1234);
    let mut r = Recorder::new(
        Vec::new(),
        task_config(5),
        torrent,
        StartState::Check,
        start,
    );
    r.handle_input(
        start,
        TorrentInput::Start {
            files: &[None],
            resume: None,
        },
    );
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9);
    r.handle_input(
        start + Duration::from_millis(3),
        S(Input::PeersDiscovered { addrs: &[addr] }),
    );
    let (_, out) = r.finish();
    let trace = out.unwrap();
    let reader = TraceReader::new(&trace).unwrap();
    assert_eq!(reader.header().start, start);
    let report = replay(&trace).unwrap();
    assert_eq!(report.divergence, None, "{report}");
    assert!(report.finished && report.inputs == 2 && report.actions >= 1);
}

#[test]
fn tracker_exchanges_replay_and_a_changed_reply_diverges() {
    use crate::torrent::TrackerInput;
    use crate::tracker::manager::TrackerAction;
    // An HTTP tracker answers the started announce with one peer, which the task then dials.
    let config = TorrentConfig {
        tiers: vec![vec!["http://127.0.0.1:9/announce".to_owned()]],
        ..task_config(7)
    };
    let mut r = Recorder::new(
        Vec::new(),
        config,
        one_block_torrent(3),
        StartState::Verified(Bitfield::new(1)),
        Time::ZERO,
    );
    r.handle_input(Time::ZERO, S(Input::Timeout));
    let conn = std::iter::from_fn(|| r.poll_action())
        .find_map(|a| match a {
            TorrentAction::Tracker(TrackerAction::OpenTcp { conn, .. }) => Some(conn),
            _ => None,
        })
        .expect("the started announce opens a connection");
    let body = b"d8:intervali1800e5:peers6:\x7f\x00\x00\x01\x1b\x58e";
    let mut reply =
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
    reply.extend_from_slice(body);
    let t = Time::from_millis(20);
    r.handle_input(
        t,
        TorrentInput::Tracker(TrackerInput::TcpConnected { conn }),
    );
    r.handle_input(
        t,
        TorrentInput::Tracker(TrackerInput::TcpData {
            conn,
            bytes: &reply,
        }),
    );
    r.handle_input(
        t,
        TorrentInput::Tracker(TrackerInput::TcpClosed { conn, error: None }),
    );
    let dialled = std::iter::from_fn(|| r.poll_action()).any(|a| {
        matches!(a, TorrentAction::Session(Action::Connect { addr, .. })
            if addr == SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7000))
    });
    assert!(dialled, "the tracker's peer was dialled");
    let (_, out) = r.finish();
    let trace = out.unwrap();
    let report = replay(&trace).unwrap();
    assert_eq!(report.divergence, None, "{report}");
    assert!(report.finished && report.actions >= 4);
    // The peer's port in the recorded reply, changed: the replayed task dials elsewhere.
    let at = trace
        .windows(2)
        .rposition(|w| w == [0x1b, 0x58])
        .expect("the reply is in the trace");
    let mut bad = trace.clone();
    bad[at + 1] ^= 1;
    let d = replay(&bad)
        .unwrap()
        .divergence
        .expect("a changed reply diverges");
    assert!(d.input_desc.contains("tracker connection"), "{d}");
}

/// Records a magnet task that fetches the metadata from one hand-driven peer (which has every
/// piece), checks (nothing on disk) and starts downloading. Returns the trace and the metadata.
///
/// The task is given `Torrent::unknown` as its documentation asks when `unknown`; otherwise the
/// same with a piece length, which the task never reads before the metadata arrives (see
/// [`a_magnet_trace_as_the_driver_records_it_decodes`] for why both exist).
fn record_magnet(unknown: bool) -> (Vec<u8>, Vec<u8>) {
    use crate::metadata::{self, MetadataMessage};
    use crate::wire::{ExtendedHandshake, Handshake, Message};
    let content: Vec<u8> = (0..65536u32).map(|i| (i * 11 % 241) as u8).collect();
    let spec = crate::metainfo::TorrentSpec {
        name: "m.bin".into(),
        piece_length: 16384,
        files: vec![(Vec::new(), content.len() as u64)],
        piece_hashes: hash_pieces(&content, 16384),
        ..Default::default()
    };
    let info = spec.info_bytes();
    let info_hash = InfoHash::of(&info);
    let torrent = if unknown {
        Torrent::unknown(info_hash)
    } else {
        Torrent {
            piece_length: 16384,
            ..Torrent::unknown(info_hash)
        }
    };
    let mut r = Recorder::new(
        Vec::new(),
        task_config(11),
        torrent,
        StartState::Magnet,
        Time::ZERO,
    );
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 6881);
    r.handle_input(
        Time::from_millis(1),
        S(Input::PeersDiscovered { addrs: &[addr] }),
    );
    let peer = std::iter::from_fn(|| r.poll_action())
        .find_map(|a| match a {
            TorrentAction::Session(Action::Connect { peer, .. }) => Some(peer),
            _ => None,
        })
        .expect("the peer is dialled");
    r.handle_input(Time::from_millis(2), S(Input::Connected { peer }));
    let mut hello = Vec::new();
    Handshake::new(info_hash, crate::id::PeerId([4; 20])).encode(&mut hello);
    let ext = ExtendedHandshake {
        m: [(metadata::EXTENSION_NAME.to_owned(), 3u8)].into(),
        metadata_size: Some(info.len() as u64),
        ..Default::default()
    };
    Message::Extended {
        id: 0,
        payload: &ext.encode(),
    }
    .encode(&mut hello);
    Message::HaveAll.encode(&mut hello);
    r.handle_input(
        Time::from_millis(3),
        S(Input::Received {
            peer,
            bytes: &hello,
        }),
    );
    let mut now = Time::from_millis(3);
    let mut fetched = false;
    for _ in 0..20 {
        let mut answers = Vec::new();
        while let Some(a) = r.poll_action() {
            let TorrentAction::Session(Action::Send { bytes, .. }) = a else {
                continue;
            };
            let mut rest = &bytes[..];
            if Handshake::decode(rest).is_ok_and(|h| h.is_some()) {
                rest = &rest[Handshake::LEN..];
            }
            while let Ok(Some((m, used))) = crate::wire::decode(rest, 1 << 20) {
                if let Message::Extended { id: 3, payload } = m
                    && let Ok(MetadataMessage::Request { piece }) = MetadataMessage::decode(payload)
                {
                    let mut out = Vec::new();
                    Message::Extended {
                        id: crate::peer::OUR_METADATA_ID,
                        payload: &metadata::serve(&info, piece).encode(),
                    }
                    .encode(&mut out);
                    answers.push(out);
                }
                rest = &rest[used..];
            }
        }
        while let Some(e) = r.poll_event() {
            fetched |= matches!(e, TorrentEvent::MetadataReceived { .. });
        }
        if answers.is_empty() {
            break;
        }
        for bytes in answers {
            now += Duration::from_millis(1);
            r.handle_input(
                now,
                S(Input::Received {
                    peer,
                    bytes: &bytes,
                }),
            );
        }
    }
    assert!(fetched, "the metadata arrived");
    assert!(!r.task().fetching_metadata());
    r.handle_input(
        now,
        TorrentInput::Start {
            files: &[None],
            resume: None,
        },
    );
    assert!(r.task().session().is_some_and(|s| !s.needs_metadata()));
    // The peer unchokes us: the download starts on the connection of the fetch.
    let mut unchoke = Vec::new();
    Message::Unchoke.encode(&mut unchoke);
    r.handle_input(
        now + Duration::from_millis(1),
        S(Input::Received {
            peer,
            bytes: &unchoke,
        }),
    );
    let requested = std::iter::from_fn(|| r.poll_action())
        .any(|a| matches!(a, TorrentAction::Session(Action::Send { .. })));
    assert!(requested);
    let (_, out) = r.finish();
    (out.expect("writing to a Vec cannot fail"), info)
}

#[test]
fn a_recorded_magnet_fetch_replays_and_a_changed_metadata_byte_diverges() {
    let (trace, info) = record_magnet(false);
    let header = TraceReader::new(&trace).unwrap().header().clone();
    assert_eq!(header.start_state, StartState::Magnet);
    assert!(header.torrent.metadata.is_empty() && header.torrent.piece_hashes.is_empty());
    let report = replay(&trace).expect("trace decodes");
    assert_eq!(report.divergence, None, "{report}");
    assert!(report.finished && report.events > 0);

    // The input that carried the metadata: the first place its bytes appear in the trace.
    let window = &info[info.len() - 40..];
    let at = trace
        .windows(window.len())
        .position(|w| w == window)
        .expect("the metadata is in the trace");
    let mut reader = TraceReader::new(&trace).unwrap();
    let mut carrier = None;
    while let Some(rec) = reader.next_record().unwrap() {
        if let TraceRecord::Input { offset, index, .. } = rec {
            if offset as usize > at {
                break;
            }
            carrier = Some(index);
        }
    }
    let carrier = carrier.expect("an input holds the metadata");
    let mut bad = trace.clone();
    bad[at + 7] ^= 1;
    let report = replay(&bad).expect("a changed payload byte still decodes");
    let d = report
        .divergence
        .expect("changed metadata must make the replay diverge");
    assert_eq!(d.input, Some(carrier), "{d}");
}

/// `Torrent::unknown` has a piece length of 0, which the trace header decoder refuses ("piece
/// length out of range"), so no magnet trace recorded as documented can be replayed. The fix
/// belongs in `trace/codec.rs` (accept a torrent with no length and no pieces), outside this
/// change; run with `--ignored` once it is in.
#[test]
fn a_magnet_trace_as_the_driver_records_it_decodes() {
    let (trace, _) = record_magnet(true);
    let reader = TraceReader::new(&trace).expect("the header decodes");
    assert_eq!(reader.header().start_state, StartState::Magnet);
    let report = replay(&trace).expect("trace decodes");
    assert_eq!(report.divergence, None, "{report}");
    assert!(report.finished);
}

#[test]
fn the_dht_port_is_recorded_and_version_3_traces_still_replay() {
    let with = record_pair_dht(16 * 1024, 40_000, 0x0102);
    let report = replay(&with).unwrap();
    assert!(report.finished && report.divergence.is_none(), "{report}");
    let reader = TraceReader::new(&with).unwrap();
    assert_eq!(reader.header().config.session.dht_port, 0x0102);
    // The seeder's `port` message reached the leecher as an event, kept as text.
    let mut reader = TraceReader::new(&with).unwrap();
    let mut dht_events = 0;
    while let Some(rec) = reader.next_record().unwrap() {
        if let TraceRecord::Event {
            event: EventPrint::Other(text),
            ..
        } = rec
            && text.contains("runs a DHT node at 10.0.0.1:258")
        {
            dht_events += 1;
        }
    }
    assert_eq!(dht_events, 1);

    // A version 3 trace is the same without the port: it replays, with no DHT.
    let without = record_pair_dht(16 * 1024, 40_000, 0);
    let at = (0..with.len())
        .find(|&i| with[i] != without[i])
        .expect("the headers differ");
    assert_eq!(&with[at..at + 2], &0x0102u16.to_le_bytes());
    let mut v3 = without.clone();
    v3.drain(at..at + 2);
    v3[4..6].copy_from_slice(&3u16.to_le_bytes());
    // Nor the web seeds: their count (0) is the byte before the torrent's info-hash.
    let ih = TraceReader::new(&without)
        .unwrap()
        .header()
        .torrent
        .info_hash
        .0;
    let ih_at = (0..v3.len() - 20).find(|&i| v3[i..i + 20] == ih).unwrap();
    assert_eq!(v3[ih_at - 1], 0);
    v3.remove(ih_at - 1);
    let report = replay(&v3).unwrap();
    assert!(report.finished && report.divergence.is_none(), "{report}");
    assert_eq!(
        TraceReader::new(&v3)
            .unwrap()
            .header()
            .config
            .session
            .dht_port,
        0
    );
}
