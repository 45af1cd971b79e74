//! The seed corpus: small valid (and a few nearly valid) inputs for every target, built with the
//! core's own encoders so that each seed reaches deep into its target from the first run.
//!
//! `fuzz/corpus/<target>/seed-*` holds exactly these files; `tests/fuzz_regressions.rs` checks
//! that they are up to date and rewrites them with
//! `KP_WRITE_SEEDS=1 cargo test --test fuzz_regressions seed_corpus_is_up_to_date`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use kp_torrent_core::bencode::Owned;
use kp_torrent_core::bitfield::Bitfield;
use kp_torrent_core::dht::krpc::{self, Body, ErrorReply, Method, NodeInfo, Query, Response};
use kp_torrent_core::dht::node_id::NodeId;
use kp_torrent_core::id::{InfoHash, PeerId};
use kp_torrent_core::metadata::MetadataMessage;
use kp_torrent_core::metainfo::{Metainfo, TorrentSpec, hash_pieces};
use kp_torrent_core::pex::{PexFlags, PexMessage};
use kp_torrent_core::session::{Input, SessionConfig, Torrent};
use kp_torrent_core::time::Time;
use kp_torrent_core::torrent::{StartState, TorrentConfig, TorrentInput};
use kp_torrent_core::trace::Recorder;
use kp_torrent_core::tracker::manager::ManagerConfig;
use kp_torrent_core::wire::{BLOCK_SIZE, BlockRequest, ExtendedHandshake, Handshake, Message};

/// One seed: the target it is for, its file name (without the `seed-` prefix) and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    /// The target, as in [`super::TARGETS`].
    pub target: &'static str,
    /// A short name saying what the seed is.
    pub name: String,
    /// The input.
    pub data: Vec<u8>,
}

/// Every seed. `fixtures` is `tests/fixtures/`, whose recorded traces (cut to a few sizes) seed the
/// trace target.
pub fn all(fixtures: &Path) -> Vec<Seed> {
    let mut s = Vec::new();
    let mut add = |target: &'static str, name: &str, data: Vec<u8>| {
        s.push(Seed {
            target,
            name: name.to_owned(),
            data,
        });
    };
    /// The targets whose seeds need nothing from outside.
    type Seeds = fn() -> Vec<(&'static str, Vec<u8>)>;
    let fixed: [(&'static str, Seeds); 13] = [
        ("bencode", bencode),
        ("metainfo", torrents),
        ("magnet", || {
            let links = magnets().into_iter();
            links
                .map(|(name, link)| (name, link.into_bytes()))
                .collect()
        }),
        ("wire", wire),
        ("peer", peer),
        ("http_tracker", http),
        ("udp_tracker", udp),
        ("metadata", metadata),
        ("pex", pex),
        ("magnet_session", magnet_session),
        ("krpc", krpc),
        ("dht", dht),
        ("utp", utp),
    ];
    for (target, seeds) in fixed {
        for (name, data) in seeds() {
            add(target, name, data);
        }
    }
    for (name, data) in traces(fixtures) {
        add("trace", &name, data);
    }
    s
}

fn single_file_spec() -> TorrentSpec {
    let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
    TorrentSpec {
        name: "sample.bin".into(),
        piece_length: 16384,
        files: vec![(vec![], data.len() as u64)],
        piece_hashes: hash_pieces(&data, 16384),
        trackers: vec![vec!["http://tracker.test/announce".into()]],
        creation_date: Some(1_700_000_000),
        ..TorrentSpec::default()
    }
}

fn multi_file_spec() -> TorrentSpec {
    TorrentSpec {
        name: "album".into(),
        piece_length: 32768,
        files: vec![
            (vec!["cd1".into(), "01.flac".into()], 30_000),
            (vec!["cd1".into(), "02.flac".into()], 0),
            (vec!["cover.jpg".into()], 50_000),
        ],
        piece_hashes: vec![[7; 20]; 3],
        trackers: vec![
            vec![
                "udp://tracker.test:6969".into(),
                "http://a.test/announce".into(),
            ],
            vec!["https://b.test/announce?x=1".into()],
        ],
        private: true,
        comment: Some("a comment".into()),
        created_by: Some("kp-torrent fuzz seeds".into()),
        url_list: vec!["http://seed.test/files/".into()],
        ..TorrentSpec::default()
    }
}

fn bencode() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("int", b"i-42e".to_vec()),
        ("string", b"4:spam".to_vec()),
        ("list", b"l4:spami3el0:de0:ee".to_vec()),
        ("dict", b"d3:cow3:moo4:spaml1:a1:bee".to_vec()),
        ("unsorted-dict", b"d1:bi1e1:ai2e1:ai3ee".to_vec()),
        ("nested", b"lllld1:xld1:yi0eeeeeeee".to_vec()),
        (
            "extremes",
            b"li-9223372036854775808ei9223372036854775807ee".to_vec(),
        ),
        ("trailing", b"i1eXYZ".to_vec()),
        ("torrent", single_file_spec().to_bytes()),
    ]
}

fn torrents() -> Vec<(&'static str, Vec<u8>)> {
    let hostile: Owned = [
        ("announce", Owned::bytes(" http://t.test/announce ")),
        (
            "info",
            [
                ("name", Owned::bytes("../CON")),
                ("name.utf-8", Owned::bytes("nul.txt")),
                ("piece length", Owned::Int(16384)),
                ("pieces", Owned::Bytes(vec![1; 40])),
                (
                    "files",
                    Owned::List(vec![
                        file(&["..", "a/b", "x."], 10_000),
                        file(&["pad"], 6_384).with_attr("p"),
                        file(&["a"], 1),
                        file(&["a", "b"], 1),
                        file(&["a"], 1),
                        file(&[".", ""], 9_000),
                    ]),
                ),
            ]
            .into_iter()
            .collect(),
        ),
    ]
    .into_iter()
    .collect();
    vec![
        ("single", single_file_spec().to_bytes()),
        ("multi", multi_file_spec().to_bytes()),
        ("hostile-names", hostile.encode()),
        (
            "v2-only",
            b"d4:infod12:meta versioni2e4:name1:x12:piece lengthi16384eee".to_vec(),
        ),
    ]
}

/// A `files` entry with `path` and `length`.
fn file(path: &[&str], length: i64) -> Owned {
    [
        ("length", Owned::Int(length)),
        ("path", Owned::List(path.iter().map(Owned::bytes).collect())),
    ]
    .into_iter()
    .collect()
}

trait WithAttr {
    fn with_attr(self, attr: &str) -> Owned;
}

impl WithAttr for Owned {
    fn with_attr(self, attr: &str) -> Owned {
        match self {
            Owned::Dict(mut d) => {
                d.insert(b"attr".to_vec(), Owned::bytes(attr));
                Owned::Dict(d)
            }
            other => other,
        }
    }
}

fn magnets() -> Vec<(&'static str, String)> {
    let hex = "c12fe1c06bba254a9dc9f519b335aa7c1367a88a";
    vec![
        ("hex", format!("magnet:?xt=urn:btih:{hex}")),
        (
            "full",
            format!(
                "magnet:?xt=urn:btih:{hex}&dn=My+Show%20S01&tr=http%3A%2F%2Ft.test%2Fannounce\
                 &tr=udp://u.test:6969&x.pe=127.0.0.1:6881&x.pe=[::1]:1"
            ),
        ),
        (
            "base32",
            "MAGNET:?xt=URN:BTIH:YEX6DQDLXISUVHOJ6UM3GNNKPQJWPKEK".to_owned(),
        ),
        (
            "hybrid",
            format!(
                "magnet:?xt.1=urn:btmh:1220{}&xt.2=urn:btih:{hex}",
                "ab".repeat(32)
            ),
        ),
        (
            "v2-only",
            format!("magnet:?xt=urn:btmh:1220{}", "cd".repeat(32)),
        ),
        (
            "bad-escape",
            format!("magnet:?xt=urn:btih:{hex}&dn=a%2&tr=%zz"),
        ),
    ]
}

fn every_message(out: &mut Vec<u8>) {
    let r = BlockRequest {
        index: 1,
        begin: BLOCK_SIZE,
        length: BLOCK_SIZE,
    };
    let ext = ExtendedHandshake {
        v: Some("seed 1.0".into()),
        p: Some(6881),
        reqq: Some(250),
        metadata_size: Some(31_337),
        yourip: Some(vec![127, 0, 0, 1]),
        m: [("ut_metadata".to_owned(), 3), ("ut_pex".to_owned(), 1)]
            .into_iter()
            .collect(),
    }
    .encode();
    let messages = [
        Message::KeepAlive,
        Message::Choke,
        Message::Unchoke,
        Message::Interested,
        Message::NotInterested,
        Message::Have(3),
        Message::Bitfield(&[0b1010_0000]),
        Message::Request(r),
        Message::Piece {
            index: 1,
            begin: 0,
            data: &[9; 40],
        },
        Message::Cancel(r),
        Message::Port(6881),
        Message::Suggest(2),
        Message::HaveAll,
        Message::HaveNone,
        Message::Reject(r),
        Message::AllowedFast(0),
        Message::Extended {
            id: 0,
            payload: &ext,
        },
        Message::Extended {
            id: 3,
            payload: b"d8:msg_typei0e5:piecei0ee",
        },
        Message::Unknown {
            id: 21,
            payload: &[1, 2, 3],
        },
    ];
    for m in messages {
        m.encode(out);
    }
}

fn wire() -> Vec<(&'static str, Vec<u8>)> {
    let mut with_handshake = vec![1, 3, 1, 7, 64];
    Handshake::new(InfoHash([0x11; 20]), PeerId([0x33; 20])).encode(&mut with_handshake);
    every_message(&mut with_handshake);
    let mut messages = vec![0, 0];
    every_message(&mut messages);
    let mut small_limit = vec![4, 0, 16, 0];
    every_message(&mut small_limit);
    vec![
        ("handshake-and-every-message", with_handshake),
        ("every-message", messages),
        ("limit-16", small_limit),
        ("too-long", vec![0, 0, 0xff, 0xff, 0xff, 0xff, 7]),
        ("bad-length", vec![0, 0, 0, 0, 0, 2, 1, 0]),
    ]
}

/// Peer scripts; the byte values follow `peer::run_op` (op codes 0–15).
fn peer() -> Vec<(&'static str, Vec<u8>)> {
    // Header: pieces-1, port (2 bytes), serve queue, outgoing, handshake shape.
    let fast_ext = 0x0d; // a handshake, fast and extended bits
    let mut leech = vec![7, 0x1a, 0xe1, 4, 1, fast_ext];
    leech.extend_from_slice(&[
        1, 16, 1, 0, 1, 250, 0, 0, 0, 0, 1, 0, 0, // extended handshake with p and reqq
        1, 12, // have all
        1, 2, // unchoke
        5, 1, // interested
        6, 0, 0, 0, 6, 1, 1, 0, 6, 2, 0, 0, // three requests
        1, 8, 0, 1, // piece for the first outstanding request
        1, 14, 0, // reject one
        2, 0x0b, 0xb8, // 30 s pass: requests time out
        3, 3, // timers at their deadlines
        1, 1, // choke
        13, 0, // close
        1, 3, // a message after close
    ]);
    let mut seed = vec![3, 0, 0, 2, 0, 0x01];
    seed.extend_from_slice(&[
        1, 6, 1, 0, // bitfield of the right length
        1, 3, // interested
        4, 0, // unchoke them
        1, 7, 1, 0, 0, 1, 7, 2, 1, 0, 1, 7, 0, 0, 3, // requests
        8, 0, 8, 1, 8, 2, // queue them (the third overflows)
        9, 0, 1, 9, 5, 1, // serve the first, serve an unknown one
        1, 9, 0, 0, 0, // a cancel
        10, 0, 0, // drop one
        11, 2, 12, 2, 0xff, // have, piece set
        4, 1, // choke them
        14, 5, 1, // a have split byte by byte
        3, 2, 0xff, 0xff, 3, 3, // idle timeout
    ]);
    let bad_handshake = vec![0, 0, 0, 0, 1, 0xcd];
    let mut raw = vec![15, 0, 0, 1, 0, 0x00];
    let mut hs = Vec::new();
    Handshake::new(InfoHash([0x11; 20]), PeerId([0x33; 20])).encode(&mut hs);
    raw.push(0);
    raw.push(hs.len() as u8);
    raw.extend_from_slice(&hs);
    raw.extend_from_slice(&[0, 5, 0, 0, 0, 1, 2, 3, 0, 0, 0, 5, 4, 0, 0, 0, 3]);
    vec![
        ("leech", leech),
        ("seed", seed),
        ("another-torrent", bad_handshake),
        ("raw-handshake", raw),
    ]
}

fn http() -> Vec<(&'static str, Vec<u8>)> {
    let announce: Owned = [
        ("interval", Owned::Int(1800)),
        ("min interval", Owned::Int(60)),
        ("complete", Owned::Int(3)),
        ("incomplete", Owned::Int(5)),
        ("tracker id", Owned::bytes("xyz")),
        ("warning message", Owned::bytes("be\nnice")),
        (
            "peers",
            Owned::Bytes(vec![
                127, 0, 0, 2, 0x1a, 0xe1, 10, 0, 0, 1, 0, 0, 127, 0, 0, 1, 0x1a, 0xe1,
            ]),
        ),
        (
            "peers6",
            Owned::Bytes([[0u8; 15].as_slice(), &[1, 0x1a, 0xe2]].concat()),
        ),
    ]
    .into_iter()
    .collect();
    let announce = announce.encode();
    let dict_peers: Owned = [(
        "peers",
        Owned::List(vec![
            [
                ("ip", Owned::bytes("192.0.2.1")),
                ("port", Owned::Int(6881)),
            ]
            .into_iter()
            .collect(),
            [("ip", Owned::bytes("::1")), ("port", Owned::Int(1))]
                .into_iter()
                .collect(),
            [("ip", Owned::bytes("bogus")), ("port", Owned::Int(70_000))]
                .into_iter()
                .collect(),
        ]),
    )]
    .into_iter()
    .collect();
    let scrape: Owned = [(
        "files",
        [(
            &[0x11u8; 20][..],
            [
                ("complete", Owned::Int(1)),
                ("downloaded", Owned::Int(2)),
                ("incomplete", Owned::Int(3)),
            ]
            .into_iter()
            .collect::<Owned>(),
        )]
        .into_iter()
        .collect::<Owned>(),
    )]
    .into_iter()
    .collect();

    let sized = |status: &str, body: &[u8]| {
        let mut r = format!(
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        r.extend_from_slice(body);
        r
    };
    // Mode 0 (default limits), max peers byte, chunk count, chunk sizes, then the response.
    let framed = |sizes: &[u8], response: Vec<u8>| {
        let mut v = vec![0, 50, sizes.len() as u8];
        v.extend_from_slice(sizes);
        v.extend_from_slice(&response);
        v
    };
    let mut chunked =
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
            .to_vec();
    for part in announce.chunks(20) {
        chunked.extend_from_slice(format!("{:x};ext=1\r\n", part.len()).as_bytes());
        chunked.extend_from_slice(part);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\nX-Trailer: 1\r\n\r\n");
    let redirect = [
        &b"HTTP/1.1 301 Moved\r\nLocation: /other/announce?a=b\r\n\r\n"[..],
        b"HTTP/1.1 302 Found\r\nLocation: //mirror.test:81/x\r\nContent-Length: 0\r\n\r\n",
        &sized("200 OK", &announce),
    ]
    .concat();
    let mut bodies_only = vec![2, 50, 0];
    bodies_only.extend_from_slice(&dict_peers.encode());
    let mut scrape_only = vec![2, 50, 0];
    scrape_only.extend_from_slice(&scrape.encode());
    vec![
        ("announce", framed(&[], sized("200 OK", &announce))),
        (
            "announce-split",
            framed(&[1, 17, 3, 40, 2, 9], sized("200 OK", &announce)),
        ),
        ("chunked", framed(&[5, 60, 7], chunked)),
        ("redirects", framed(&[52, 74], redirect)),
        (
            "until-close",
            framed(&[], [&b"HTTP/1.0 200 OK\r\n\r\n"[..], &announce].concat()),
        ),
        (
            "failure",
            framed(&[], sized("400 Bad", b"d14:failure reason9:not founde")),
        ),
        (
            "tiny-limits",
            [&[1u8, 8, 0, 40, 1, 9, 0][..], &sized("200 OK", &announce)].concat(),
        ),
        ("dict-peers", bodies_only),
        ("scrape", scrape_only),
    ]
}

/// UDP scripts; the byte values follow `udp::op` (op codes 0–6).
fn udp() -> Vec<(&'static str, Vec<u8>)> {
    // Header: seed (2 bytes), max peers, retransmit base, max retransmits, id TTL, ipv6.
    let mut announce = vec![0, 7, 50, 2, 8, 60, 0];
    announce.extend_from_slice(&[0, 0]); // start an announce...
    announce.extend_from_slice(&[0; 32]); // ...with zero counters
    announce.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 0, 9]); // connect reply
    announce.extend_from_slice(&[1, 1, 1, 24]); // announce reply with the right txid
    announce.extend_from_slice(&[0, 0, 7, 8, 0, 0, 0, 1, 0, 0, 0, 2]);
    announce.extend_from_slice(&[127, 0, 0, 2, 0x1a, 0xe1, 192, 0, 2, 7, 0x1a, 0xe1]);
    let mut scrape = vec![0, 9, 50, 1, 2, 0, 1];
    scrape.extend_from_slice(&[0, 1, 6, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 1, 12]);
    scrape.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]);
    let mut timeouts = vec![0, 1, 50, 0, 2, 0, 0, 0, 1];
    timeouts.extend_from_slice(&[4, 4, 4, 3, 0, 1, 4, 4]);
    let mut error = vec![
        0, 3, 50, 2, 8, 60, 0, 0, 1, 1, 3, 1, 5, b'n', b'o', b'p', b'e', b'\n',
    ];
    error.extend_from_slice(&[2, 8, 0, 0, 0, 0, 1, 2, 3, 4, 5]);
    vec![
        ("announce", announce),
        ("scrape", scrape),
        ("timeouts", timeouts),
        ("error", error),
    ]
}

/// Prefixes of the recorded fixtures, and a small trace recorded here.
fn traces(fixtures: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for name in ["from-aria2", "from-libtorrent", "from-transmission"] {
        let Ok(data) = std::fs::read(fixtures.join(format!("{name}.trace"))) else {
            continue;
        };
        for cut in [1024, 4096] {
            out.push((
                format!("{name}-{cut}"),
                data[..cut.min(data.len())].to_vec(),
            ));
        }
    }
    out.push(("recorded-seeder".to_owned(), recorded_seeder()));
    out
}

/// A seeder serving one block to one incoming peer, then shutting down.
fn recorded_seeder() -> Vec<u8> {
    let data: Vec<u8> = (0..40_000u32).map(|i| (i % 253) as u8).collect();
    let spec = TorrentSpec {
        piece_length: 16384,
        piece_hashes: hash_pieces(&data, 16384),
        ..single_file_spec()
    };
    let m = Metainfo::from_bytes(&spec.to_bytes()).expect("seed torrent parses");
    let torrent = Torrent::from_metainfo(&m);
    let have = Bitfield::full(torrent.piece_count());
    let config = TorrentConfig {
        session: SessionConfig {
            seed: 5,
            ..SessionConfig::default()
        },
        trackers: ManagerConfig::default(),
        tiers: Vec::new(),
        web_seeds: Vec::new(),
    };
    let mut rec = Recorder::new(
        Vec::new(),
        config,
        torrent,
        StartState::Verified(have),
        Time::from_millis(1500),
    );
    let drain = |rec: &mut Recorder<Vec<u8>>| {
        while rec.poll_action().is_some() {}
        while rec.poll_event().is_some() {}
    };
    drain(&mut rec);
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9)), 7000);
    let peer = rec
        .task()
        .next_handle()
        .expect("a verified task takes peers");
    let s = TorrentInput::Session;
    rec.handle_input(Time::from_secs(2), s(Input::Incoming { addr }));
    drain(&mut rec);
    let mut bytes = Vec::new();
    Handshake::new(m.info_hash, PeerId([0x33; 20])).encode(&mut bytes);
    Message::Interested.encode(&mut bytes);
    Message::Request(BlockRequest {
        index: 0,
        begin: 0,
        length: BLOCK_SIZE,
    })
    .encode(&mut bytes);
    rec.handle_input(
        Time::from_secs(3),
        s(Input::Received {
            peer,
            bytes: &bytes,
        }),
    );
    drain(&mut rec);
    rec.handle_input(Time::from_secs(13), s(Input::Timeout));
    drain(&mut rec);
    rec.handle_input(
        Time::from_secs(14),
        s(Input::ReadDone {
            peer,
            piece: 0,
            begin: 0,
            data: &data[..BLOCK_SIZE as usize],
        }),
    );
    drain(&mut rec);
    rec.handle_input(Time::from_secs(15), s(Input::Shutdown));
    drain(&mut rec);
    let (_, out) = rec.finish();
    out.expect("writing to a Vec cannot fail")
}

/// `ut_metadata` inputs; the script bytes follow `metadata::run_op` (op codes 0–11).
fn metadata() -> Vec<(&'static str, Vec<u8>)> {
    let codec = |payload: &[u8]| [&[0u8][..], payload].concat();
    let data = MetadataMessage::Data {
        piece: 1,
        total_size: 20_000,
        data: &[7; 3616],
    }
    .encode();
    // Header: mode (top bit: check memory), size - 1 (2 bytes), fill, limit choice, requests per peer, request timeout
    // and backoff (2 bytes each, tens of milliseconds). 39,999 + 1 bytes: three pieces.
    let header = [0x81u8, 0x9c, 0x3f, 0x5a, 0, 2, 0x07, 0xd0, 0x0b, 0xb8];
    let script = |ops: &[&[u8]]| [&header[..], &ops.concat()].concat();
    // Peers 0 and 1 advertise the true size; 0 is asked for pieces 0 and 1, 1 for piece 2.
    let two_sources: &[u8] = &[0, 0, 0, 0, 1, 0];
    let honest = script(&[
        two_sources,
        &[1, 0, 200, 0],
        &[1, 0, 200, 1],
        &[1, 1, 200, 2],
    ]);
    // Peer 1 corrupts piece 2: the hash fails, peer 0 alone delivers, peer 1 is convicted.
    let liar = script(&[
        two_sources,
        &[1, 0, 200, 0],
        &[1, 0, 200, 1],
        &[2, 1, 200, 2, 0, 5, 0x10],
        &[1, 0, 200, 0],
        &[1, 0, 200, 1],
        &[1, 0, 200, 2],
    ]);
    // Silence (30 s) times the requests out, a reject, a size change, a peer leaving and
    // coming back, an arbitrary payload, a refused size.
    let reject = MetadataMessage::Reject { piece: 0 }.encode();
    let mut raw = vec![6, 1, reject.len() as u8];
    raw.extend_from_slice(&reject);
    let stalls = script(&[
        two_sources,
        &[8, 0x0b, 0xb8],
        &[9],
        &[4, 0, 200, 0],
        &[0, 1, 4],
        &[7, 0],
        &[0, 0, 0],
        &raw,
        &[0, 2, 6],
        &[0, 3, 7, 0],
        &[5, 0, 200, 1],
        &[3, 0, 1, 0, 2, 1, 9],
        &[9],
        &[1, 0, 0],
        &[1, 0, 1],
        &[1, 0, 2],
        &[10, 50],
        &[9],
        &[1, 0, 0],
    ]);
    vec![
        (
            "request",
            codec(&MetadataMessage::Request { piece: 3 }.encode()),
        ),
        ("data", codec(&data)),
        (
            "reject-with-extra-keys",
            codec(b"d8:msg_typei2e5:piecei0e4:zzzzi1eeXYZ"),
        ),
        (
            "huge-piece",
            codec(b"d8:msg_typei1e5:piecei4294967296e10:total_sizei1ee"),
        ),
        ("honest", honest),
        ("liar", liar),
        ("stalls", stalls),
    ]
}

/// `ut_pex` inputs; the receiver's and sender's scripts follow `pex::receive` and `pex::send`.
fn pex() -> Vec<(&'static str, Vec<u8>)> {
    let v4 = |d: u8, port: u16| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, d)), port);
    let v6 = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), 6881);
    let real = PexMessage {
        added: vec![
            (v4(2, 6881), PexFlags::SEED | PexFlags::REACHABLE),
            (v4(3, 0), PexFlags(0)),
            (v4(2, 6881), PexFlags(0)),
            (v6, PexFlags::UTP),
        ],
        dropped: vec![v4(4, 51413)],
    }
    .encode();
    // Receiver header: mode 0, minimum interval (2 bytes, tens of ms), caps; then messages:
    // time step (2 bytes), kind (0 built, 1 short, 2 long), payload. An address built from the
    // input is a kind byte (0x58 | port choice: 127.0.0.x, then x) or one of the special ones.
    let mut receive = vec![0, 0x11, 0x94, 50, 50];
    receive.extend_from_slice(&[0x17, 0x70, 1, real.len() as u8]);
    receive.extend_from_slice(&real);
    receive.extend_from_slice(&[0x00, 0x10, 1, real.len() as u8]); // too soon
    receive.extend_from_slice(&real);
    receive.extend_from_slice(&[0x17, 0x70, 0, 4]); // built: four added...
    receive.extend_from_slice(&[0x58, 1, 0x10, 0x59, 2, 0x02, 0x54, 1, 0, 0x58, 1, 0]);
    receive.extend_from_slice(&[2, 0x58, 4, 0x08]); // ...two dropped
    receive.extend_from_slice(&[0x17, 0x70, 1, 5]);
    receive.extend_from_slice(b"i42e!");
    let many = PexMessage {
        added: (0..250u16)
            .map(|i| (v4((i % 200) as u8 + 1, 1000 + i), PexFlags(0)))
            .collect(),
        dropped: Vec::new(),
    }
    .encode();
    let mut long = vec![0, 0, 0, 60, 3];
    long.extend_from_slice(&[0, 1, 2]);
    long.extend_from_slice(&(many.len() as u16).to_be_bytes());
    long.extend_from_slice(&many);
    // Sender header: mode 1, the peer's address, the interval. Ops: 0/1 add (address, flags),
    // 2 remove, 3 many (count, base, add), 4 own address, 5 clear, 6/7 tick (2 bytes).
    let send = vec![
        1, 0x58, 1, 0x17, 0x70, // peer 127.0.0.1:6881, one minute
        0, 0x58, 1, 0, // the peer itself
        0, 0x59, 2, 2, // 127.0.0.2:6882, a seed
        0, 0x18, 3, 0, // 127.0.0.3, port 0
        0, 0x5a, 4, 0, // 127.0.0.4:6883
        6, 0, 0, // first message at once
        6, 0, 1, // too soon
        4, 0x5a, 4, // 127.0.0.4:6883 turns out to be the peer too
        2, 0x59, 2, // 127.0.0.2 gone
        3, 120, 7, 1, // 120 more peers
        6, 0x17, 0x70, 6, 0x17, 0x70, 6, 0x17, 0x70, 6, 0x17, 0x70, // four minutes
        0, 0x59, 2, 0, // 127.0.0.2 back, no longer a seed
        5, 6, 0x17, 0x70, 6, 0x17, 0x70, 6, 0x17, 0x70, 6, 0, 1,
    ];
    vec![("receive", receive), ("receive-many", long), ("send", send)]
}

/// Magnet session scripts; the bytes follow `magnet_session::run_op` (op codes 0–15).
fn magnet_session() -> Vec<(&'static str, Vec<u8>)> {
    // Header: metadata kind (0 one piece, 1 two pieces, 2 not a torrent: then its length - 1
    // in 2 bytes and a fill byte), seed, connection limit - 2, PEX, hand over (not 0 mod 4).
    // Ops: 0 incoming (ip, port); 1 handshake (connection, shape: 8 = extension and fast bits
    // and peer id 2); 2 extended handshake (connection, ut_metadata choice 3 = id 3, ut_pex, size
    // choice 0 = the true size, p and its 2 bytes); 3 ut_metadata (connection, 200 and the
    // piece, kind: 0 true, 2 corrupted (2-byte offset, xor), 4 reject (1) or request (0), 5
    // arbitrary payload; then 1 = in one piece); 8 another message (connection, kind); 10 a
    // connection closes; 11 time (2 bytes); 12 the timer; 13 discovery (count - 1, then ip and
    // port each); 14 connected (pending one, 1 = connected).
    let peer =
        |conn: u8, shape: u8| -> Vec<u8> { vec![1, conn, shape, 2, conn, 3, 1, 0, 1, 0x1a, 0xe1] };
    let utm = |conn: u8, piece: u8, kind: &[u8]| -> Vec<u8> {
        [&[3, conn, 200, piece][..], kind, &[1]].concat()
    };
    let mut one = vec![0, 1, 3, 1, 1];
    one.extend_from_slice(&[0, 0, 0]);
    one.extend(peer(0, 8));
    one.extend(utm(0, 0, &[0]));
    one.extend_from_slice(&[8, 0, 12, 8, 0, 2]); // have all, unchoke
    one.extend(utm(0, 0, &[4, 0])); // it asks for piece 0: we serve it
    one.extend_from_slice(&[12, 11, 0x0b, 0xb8, 12]);
    let mut two = vec![1, 2, 4, 0, 1];
    two.extend_from_slice(&[0, 0, 0, 0, 1, 1]);
    two.extend(peer(0, 8));
    two.extend(peer(1, 12));
    two.extend_from_slice(&[8, 0, 6, 125]); // a bitfield kept until the piece count is known
    two.extend(std::iter::repeat_n(0xff, 125));
    two.extend(utm(0, 0, &[0]));
    two.extend([3, 0, 200, 1, 0, 0x08]); // the second piece in 512-byte parts
    two.extend_from_slice(&[8, 1, 12, 8, 1, 2, 8, 0, 2, 12]);
    // Peer 0 rejects piece 1, which peer 1 then corrupts: the hash fails; peer 1 alone delivers
    // next and is convicted for its earlier piece.
    let mut liar = vec![1, 3, 4, 1, 1];
    liar.extend_from_slice(&[0, 0, 0, 0, 1, 1]);
    liar.extend(peer(0, 8));
    liar.extend(peer(1, 12));
    liar.extend(utm(0, 1, &[4, 1]));
    liar.extend(utm(1, 1, &[2, 0, 9, 0x20]));
    liar.extend(utm(0, 0, &[0]));
    liar.extend(utm(1, 0, &[0]));
    liar.extend(utm(1, 1, &[0]));
    liar.extend_from_slice(&[11, 0x07, 0xd0, 12]);
    // An outgoing peer found by discovery delivers metadata that is not a torrent; an incoming
    // one advertises a size of zero and sends a malformed message; a connection closes.
    let mut outgoing = vec![2, 0x04, 0x03, 0x33, 4, 3, 0, 1];
    outgoing.extend_from_slice(&[13, 0, 1, 0, 14, 0, 1]);
    outgoing.extend(peer(0, 16));
    outgoing.extend(utm(0, 0, &[0]));
    outgoing.extend_from_slice(&[0, 2, 1, 1, 1, 20, 2, 1, 2, 7, 0, 6, 0]);
    outgoing.extend(utm(1, 0, &[5, 4, b'x', b'y', b'z', b'!']));
    outgoing.extend_from_slice(&[10, 0, 12, 12]);
    vec![
        ("one-piece", one),
        ("two-pieces", two),
        ("liar", liar),
        ("outgoing", outgoing),
    ]
}

/// KRPC datagrams: every kind of message as the codec writes it, a few as other clients write
/// them, and two recipes for built messages (bytes that do not start with `d`).
fn krpc() -> Vec<(&'static str, Vec<u8>)> {
    let v4 = |d: u8| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, d)), 6881);
    let v6 = SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), 6881);
    let id = NodeId([0x11; 20]);
    let msg = |tid: &[u8], body| krpc::Message {
        tid: krpc::TransactionId::new(tid).expect("short"),
        body,
        version: Some(b"KP\x00\x01".to_vec()),
        ip: None,
        read_only: false,
    };
    let query = |tid: &[u8], method| {
        msg(
            tid,
            Body::Query(Query {
                id,
                method,
                want: krpc::Want::default(),
            }),
        )
    };
    let ih = InfoHash([0x22; 20]);
    let mut find = query(
        b"fn",
        Method::FindNode {
            target: NodeId([0x33; 20]),
        },
    );
    if let Body::Query(q) = &mut find.body {
        q.want = krpc::Want { n4: true, n6: true };
    }
    let announce = query(
        b"an",
        Method::AnnouncePeer {
            info_hash: ih,
            port: 51413,
            implied_port: true,
            token: vec![1, 2, 3, 4, 5, 6, 7, 8],
        },
    );
    let mut response = msg(
        b"r1",
        Body::Response(Response {
            id,
            nodes: vec![
                NodeInfo {
                    id: NodeId([0x44; 20]),
                    addr: v4(1),
                },
                NodeInfo {
                    id: NodeId([0x55; 20]),
                    addr: v6,
                },
            ],
            values: vec![v4(2), v6],
            token: Some(b"tok".to_vec()),
        }),
    );
    response.ip = Some(v4(9));
    response.read_only = true;
    let error = msg(
        b"e1",
        Body::Error(ErrorReply {
            code: ErrorReply::METHOD_UNKNOWN,
            message: "Method Unknown".into(),
        }),
    );
    vec![
        ("ping", query(b"aa", Method::Ping).encode()),
        ("find-node", find.encode()),
        (
            "get-peers",
            query(b"gp", Method::GetPeers { info_hash: ih }).encode(),
        ),
        ("announce-peer", announce.encode()),
        ("response", response.encode()),
        ("error", error.encode()),
        (
            "bep5-ping",
            b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe".to_vec(),
        ),
        (
            "unknown-method",
            b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e\
              1:q9:sample_xx1:t2:aa1:y1:qe"
                .to_vec(),
        ),
        (
            "query-without-id",
            b"d1:ade1:q4:ping1:t2:zz1:y1:qe".to_vec(),
        ),
        // Built: tid "ab", a get_peers query; a response with two nodes and a value.
        (
            "built-query",
            vec![2, b'a', b'b', 0, 7, 2, 9, 1, 1, 1, b'x', 1, 1, 0, 1, 0],
        ),
        (
            "built-response",
            [
                &[1u8, 7, 1, 3, 2, 4, 0x1a, 0xe1, 10, 0, 0, 1, 0xf0][..],
                &[0x66; 20],
                &[1, 0x1a, 0xe1],
                &[0; 16],
                &[1, 0, 0, 80, 127, 0, 0, 1, 1, 3, b't', b'o', b'k', 0, 0, 0],
            ]
            .concat(),
        ),
    ]
}

/// Dht node scripts; the bytes follow `dht::run_op` (op codes 0-12).
fn dht() -> Vec<(&'static str, Vec<u8>)> {
    // Header: IPv6, bootstrap (then two addresses), seed, amplification - 1, transactions - 1,
    // lookups - 1, values. Addresses: 10.0.0.(k & 7):6881 for k below 8, :6882 for 8-15.
    let header = |ipv6: u8| vec![ipv6, 1, 7, 7, 31, 3, 50, 0x01, 0x02];
    // Answers to the node's queries: pick one, from its address, a response with nodes (count,
    // then id byte and address byte each), a value (10.0.0.6:6881), a token, the responder's id,
    // `ip`, not read-only.
    let answer = |pick: u8, nodes: &[(u8, u8)]| -> Vec<u8> {
        let mut v = vec![5, pick, 1, 1, nodes.len() as u8];
        for &(id, addr) in nodes {
            v.extend_from_slice(&[id, addr]);
        }
        v.extend_from_slice(&[1, 0x06, 1, 2, 0xaa, 0xbb, 0x21, 1, 1]);
        v
    };
    // A query op: from, tid length and bytes, method and its arguments, want, querier id,
    // version, read-only.
    let ping = |from: u8, id: u8| vec![2, from, 2, b'p', from, 0, 2, id, 0, 1];
    let get_peers = |from: u8, ih: u8| vec![3, from, 2, b'g', from, 2, ih, 3, 0x25, 1, 1];
    let announce_with_token =
        |from: u8, ih: u8| vec![2, from, 2, b'a', from, 3, ih, 0x1a, 0xe1, 0, 2, 0x29, 0, 1];
    let mut join = header(0);
    join.extend_from_slice(&[11, 0]); // bootstrap: find_node to both bootstrap nodes
    join.extend(answer(0, &[(0x31, 3), (0x35, 4), (0x39, 5)]));
    join.extend(answer(0, &[(0x3d, 6), (0x41, 7)]));
    for _ in 0..3 {
        join.extend(answer(0, &[]));
    }
    join.extend_from_slice(&[8, 8]); // timers
    join.extend(ping(0x03, 0x45));
    join.extend(answer(0xff, &[]));
    join.extend(get_peers(0x03, 1));
    join.extend(announce_with_token(0x03, 1));
    join.extend(get_peers(0x04, 1));
    join.extend_from_slice(&[9, 1, 1]); // get_peers lookup
    join.extend(answer(0, &[(0x49, 6)]));
    join.extend(answer(0, &[]));
    join.extend_from_slice(&[10, 2, 2, 0x1a, 0xe1, 0]); // announce
    for _ in 0..4 {
        join.extend(answer(0, &[]));
    }
    join.extend_from_slice(&[7, 0x03, 0xe8, 8, 8]);
    let mut flood = header(1);
    flood.extend(ping(0x01, 0x45));
    flood.extend_from_slice(&[4, 0x01, 0, 39, 4, 0x01, 1, 39]); // the same ping 78 times
    flood.extend(get_peers(0xc1, 2)); // from IPv6
    flood.extend_from_slice(&[0, 0x02, 5, b'd', b'1', b':', b'q', b'e']);
    flood.extend_from_slice(&[1, 0x02, 0x13, 0x88]); // 5,000 zero bytes
    flood.extend(b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe");
    flood.extend_from_slice(&[9, 0, 0, 9, 0, 1, 11, 0, 11, 1, 11, 2, 11, 3]); // duplicates, limit
    flood.extend_from_slice(&[12, 0xff, 7, 0xff, 0xff, 8]);
    vec![("join", join), ("flood", flood)]
}

/// uTP: scripts for the `utp` body (seed, then operations: 0/1 a datagram from an address with
/// a big-endian length, 2 time in 8 ms steps, 3 a write, 4 a read, 5 a close).
fn utp() -> Vec<(&'static str, Vec<u8>)> {
    use kp_torrent_core::utp::packet::{Header, PacketType, encode};
    let packet = |ty, conn_id, seq_nr, ack_nr, sack: Option<&[u8]>, payload: &[u8]| {
        let h = Header {
            ty,
            conn_id,
            timestamp_us: 1000,
            timestamp_diff_us: 50,
            wnd_size: 1 << 20,
            seq_nr,
            ack_nr,
        };
        let mut out = Vec::new();
        encode(&h, sack, payload, &mut out);
        out
    };
    let datagram = |from: u8, bytes: &[u8]| {
        let mut v = vec![0, from];
        v.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        v.extend_from_slice(bytes);
        v
    };
    let mut accept = vec![0, 0, 0, 7];
    accept.extend(datagram(1, &packet(PacketType::Syn, 500, 40, 0, None, &[])));
    accept.extend(datagram(
        1,
        &packet(PacketType::Data, 501, 41, 0, None, b"hello"),
    ));
    accept.extend(datagram(
        1,
        &packet(PacketType::Data, 501, 43, 0, Some(&[1, 0, 0, 0]), b"later"),
    ));
    accept.extend_from_slice(&[4, 3, 0, 0x10, 0x00, 2, 0, 100]);
    accept.extend(datagram(
        1,
        &packet(PacketType::Data, 501, 42, 0, None, b"gap"),
    ));
    accept.extend(datagram(1, &packet(PacketType::Fin, 501, 44, 0, None, &[])));
    accept.extend_from_slice(&[4, 2, 0x10, 0]);
    let mut dial = vec![0, 0, 0, 9];
    dial.extend(datagram(0, &packet(PacketType::State, 1, 9, 0, None, &[])));
    dial.extend(datagram(0, &packet(PacketType::Reset, 1, 9, 0, None, &[])));
    dial.extend_from_slice(&[2, 0, 200, 2, 1, 0, 5]);
    let mut flood = vec![0, 0, 0, 11];
    for i in 0..12u16 {
        flood.extend(datagram(
            i as u8,
            &packet(PacketType::Syn, 600 + i, 1, 0, None, &[]),
        ));
    }
    flood.extend_from_slice(&[2, 0x10, 0]);
    vec![("accept", accept), ("dial", dial), ("syn-flood", flood)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_seed_replays_without_divergence() {
        let report = kp_torrent_core::trace::replay(&recorded_seeder()).expect("replays");
        assert!(report.finished && report.divergence.is_none(), "{report}");
        assert!(report.inputs >= 5);
    }
}
