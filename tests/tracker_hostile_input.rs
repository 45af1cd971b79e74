//! Properties: whatever bytes a tracker sends, the tracker code returns errors, not panics, and
//! keeps its memory within the configured bounds.

use core::net::SocketAddr;

use kp_torrent_core::id::{InfoHash, PeerId};
use kp_torrent_core::time::Time;
use kp_torrent_core::tracker::http::{HttpExchange, ResponseParser, parse_announce, parse_scrape};
use kp_torrent_core::tracker::manager::{ManagerConfig, TrackerAction, TrackerManager};
use kp_torrent_core::tracker::udp::{UdpConfig, UdpOutcome, UdpRequest, UdpTracker};
use kp_torrent_core::tracker::url::TrackerUrl;
use kp_torrent_core::tracker::{HttpLimits, PeerFilter};

fn filter() -> PeerFilter {
    PeerFilter {
        own_port: 6881,
        own_ips: Vec::new(),
        max_peers: 50,
    }
}

/// Splits `data` into pieces at the offsets in `cuts` (taken modulo the length).
fn pieces(data: &[u8], cuts: &[u16]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|&c| usize::from(c) % (data.len() + 1))
        .collect();
    at.push(0);
    at.push(data.len());
    at.sort_unstable();
    at.windows(2).map(|w| data[w[0]..w[1]].to_vec()).collect()
}

fn prop_http_parser_survives_anything(head: Vec<u8>, body: Vec<u8>, cuts: Vec<u16>) -> bool {
    let limits = HttpLimits {
        max_head: 256,
        max_body: 512,
        max_redirects: 5,
    };
    // Half the cases look like HTTP so the body paths get exercised too.
    let mut data = if head.first().is_some_and(|b| b % 2 == 0) {
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec()
    } else {
        Vec::new()
    };
    data.extend_from_slice(&head);
    data.extend_from_slice(&body);
    let mut p = ResponseParser::new(limits.clone());
    for piece in pieces(&data, &cuts) {
        match p.feed(&piece) {
            Ok(None) => {}
            Ok(Some(r)) => return r.body.len() <= limits.max_body,
            Err(e) => return !e.to_string().is_empty(),
        }
    }
    match p.handle_closed() {
        Ok(r) => r.body.len() <= limits.max_body,
        Err(e) => !e.to_string().is_empty(),
    }
}

#[test]
fn http_parser_survives_anything() {
    kp_torrent_tests::quickcheck("prop_http_parser_survives_anything", 500)
        .quickcheck(prop_http_parser_survives_anything as fn(Vec<u8>, Vec<u8>, Vec<u16>) -> bool);
}

fn prop_reply_decoders_survive_anything(body: Vec<u8>) -> bool {
    let _ = parse_scrape(&body, &InfoHash([0; 20]));
    parse_announce(&body, &filter()).map_or(true, |r| r.peers.len() <= 50)
}

#[test]
fn reply_decoders_survive_anything() {
    kp_torrent_tests::quickcheck("prop_reply_decoders_survive_anything", 500)
        .quickcheck(prop_reply_decoders_survive_anything as fn(Vec<u8>) -> bool);
}

fn prop_urls_and_redirects_survive_anything(a: String, b: String) -> bool {
    let _ = TrackerUrl::parse(&a);
    let base = TrackerUrl::parse("http://t.example/announce").expect("valid");
    let mut x = HttpExchange::new(base.clone(), String::new(), HttpLimits::default());
    let resp = format!("HTTP/1.1 302 Found\r\nLocation: {b}\r\n\r\n");
    let _ = x.handle_data(resp.as_bytes());
    match base.join(&b) {
        // A URL we accept never carries characters that could break the request line.
        Ok(u) => !u.path.contains([' ', '\r', '\n']) && !u.host.contains([' ', '\r', '\n']),
        Err(_) => true,
    }
}

#[test]
fn urls_and_redirects_survive_anything() {
    kp_torrent_tests::quickcheck("prop_urls_and_redirects_survive_anything", 500)
        .quickcheck(prop_urls_and_redirects_survive_anything as fn(String, String) -> bool);
}

fn prop_udp_survives_anything(datagrams: Vec<Vec<u8>>, scrape: bool) -> bool {
    let mut t = UdpTracker::new(UdpConfig::default(), 1, filter());
    let request = if scrape {
        UdpRequest::Scrape(InfoHash([1; 20]))
    } else {
        UdpRequest::Announce(kp_torrent_core::tracker::AnnounceParams {
            info_hash: InfoHash([1; 20]),
            peer_id: PeerId([2; 20]),
            port: 6881,
            uploaded: 0,
            downloaded: 0,
            left: 0,
            event: kp_torrent_core::tracker::AnnounceEvent::Started,
            numwant: 50,
            key: 0,
        })
    };
    t.start(Time::ZERO, request);
    let sent = t.poll_transmit().unwrap_or_default();
    for mut d in datagrams {
        // Give some datagrams the right transaction id so they get past the first check.
        if d.len() >= 8 && d[0] % 2 == 0 && sent.len() >= 16 {
            d[4..8].copy_from_slice(&sent[12..16]);
        }
        if let Some(UdpOutcome::Announced(r)) = t.handle_datagram(Time::ZERO, &d)
            && r.peers.len() > 50
        {
            return false;
        }
        let _ = t.poll_transmit();
    }
    true
}

#[test]
fn udp_survives_anything() {
    kp_torrent_tests::quickcheck("prop_udp_survives_anything", 500)
        .quickcheck(prop_udp_survives_anything as fn(Vec<Vec<u8>>, bool) -> bool);
}

fn prop_manager_survives_anything(chunks: Vec<Vec<u8>>, datagrams: Vec<Vec<u8>>) -> bool {
    let tiers = vec![
        vec![
            "http://a.example/announce".to_string(),
            "udp://127.0.0.1:9/x".to_string(),
        ],
        vec![
            "wss://nope/".to_string(),
            "https://b.example/announce".to_string(),
        ],
    ];
    let mut m = TrackerManager::new(
        ManagerConfig::default(),
        tiers,
        InfoHash([3; 20]),
        PeerId([4; 20]),
        6881,
        9,
    );
    let from: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let mut now = Time::ZERO;
    let mut chunks = chunks.into_iter();
    let mut datagrams = datagrams.into_iter();
    for step in 0..40u64 {
        while let Some(a) = m.poll_action() {
            if let TrackerAction::OpenTcp { conn, .. } = a {
                m.handle_tcp_connected(now, conn);
                for c in chunks.by_ref().take(3) {
                    m.handle_tcp_data(now, conn, &c);
                }
                if step % 3 == 0 {
                    m.handle_tcp_closed(now, conn, None);
                }
            }
        }
        if let Some(d) = datagrams.next() {
            m.handle_udp_datagram(now, from, &d);
        }
        while m.poll_event().is_some() {}
        now = m.poll_timeout().unwrap_or(now).max(now);
        m.handle_timeout(now);
        if step == 30 {
            m.handle_stop(now);
        }
    }
    true
}

#[test]
fn manager_survives_anything() {
    kp_torrent_tests::quickcheck("prop_manager_survives_anything", 200)
        .quickcheck(prop_manager_survives_anything as fn(Vec<Vec<u8>>, Vec<Vec<u8>>) -> bool);
}
