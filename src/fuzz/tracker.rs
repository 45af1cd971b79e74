//! Bodies for the tracker replies: HTTP responses and announce/scrape bodies, and the BEP 15 UDP
//! exchange state machine.

use std::collections::BTreeSet;
use std::mem::discriminant;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use kp_torrent_core::id::{InfoHash, PeerId};
use kp_torrent_core::time::Time;
use kp_torrent_core::tracker::http::{
    HttpExchange, HttpStep, Response, ResponseParser, parse_announce, parse_scrape,
};
use kp_torrent_core::tracker::udp::{PROTOCOL_ID, UdpConfig, UdpOutcome, UdpRequest, UdpTracker};
use kp_torrent_core::tracker::url::{Scheme, TrackerUrl};
use kp_torrent_core::tracker::{
    AnnounceEvent, AnnounceParams, AnnounceReply, HttpLimits, PeerFilter, TrackerError,
};

use super::formats::{check_message, tracker_url};
use super::{Bytes, chunks};

const INFO_HASH: InfoHash = InfoHash([0x11; 20]);

fn filter(max_peers: usize) -> PeerFilter {
    PeerFilter {
        own_port: 6881,
        own_ips: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))],
        max_peers,
    }
}

/// Peers in a reply are within the limit, distinct, and none is one the filter rejects.
fn check_reply(reply: &AnnounceReply, filter: &PeerFilter) {
    assert!(
        reply.peers.len() <= filter.max_peers,
        "{} peers",
        reply.peers.len()
    );
    let distinct: BTreeSet<&SocketAddr> = reply.peers.iter().collect();
    assert_eq!(distinct.len(), reply.peers.len(), "duplicate peers");
    for p in &reply.peers {
        assert!(!filter.rejects(p), "rejected peer {p} reported");
    }
    if let Some(w) = &reply.warning {
        assert!(
            !w.chars().any(char::is_control),
            "control character in warning {w:?}"
        );
    }
}

fn check_tracker_error(e: &TrackerError) {
    check_message(e);
    if let TrackerError::Failure(text) | TrackerError::UdpError(text) = e {
        assert!(
            !text.chars().any(char::is_control),
            "control character in {text:?}"
        );
    }
}

/// Input: a mode byte (default or tiny limits; or skip HTTP and take the rest as a reply body), up
/// to 31 chunk sizes, then the bytes a tracker sends.
///
/// Checks: the response parser gives the same result (response, or kind of error) whether the
/// bytes come at once or in chunks, and never a body over its limit; an exchange fed the same
/// chunks follows redirects only to http(s) URLs that print and parse back the same, and every
/// request it builds is a clean HTTP head (no header injection from a `Location`); announce and
/// scrape bodies decode without panicking, keep peers within the filter, and errors are one line.
pub fn http_tracker(data: &[u8]) {
    let mut b = Bytes::new(data);
    let mode = b.u8();
    let limits = if mode & 1 == 1 {
        HttpLimits {
            max_head: 32 + usize::from(b.u8()) * 4,
            max_body: usize::from(b.u16()),
            max_redirects: usize::from(b.u8() % 4),
        }
    } else {
        HttpLimits::default()
    };
    let max_peers = usize::from(b.u8() % 64) + 1;
    let n = usize::from(b.u8() % 32);
    let sizes = b.take(n);
    let input = b.rest();

    if mode & 2 == 2 {
        bodies(input, max_peers);
        return;
    }
    let parts = chunks(input, sizes);
    let whole = parse_response(&limits, &[input]);
    let split = parse_response(&limits, &parts);
    match (&whole, &split) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "chunking changes the response"),
        (Err(a), Err(b)) => {
            check_tracker_error(a);
            assert_eq!(
                discriminant(a),
                discriminant(b),
                "chunking changes the error: {a} / {b}"
            );
        }
        _ => panic!("chunking changes the outcome: {whole:?} / {split:?}"),
    }
    if let Ok(Some(r)) = &whole {
        assert!(r.body.len() <= limits.max_body, "body over the limit");
        if r.status == 200 {
            bodies(&r.body, max_peers);
        }
    }
    exchange(&limits, &parts);
}

/// Feeds `parts` to one parser; at the end of the input the connection closes.
fn parse_response(limits: &HttpLimits, parts: &[&[u8]]) -> Result<Option<Response>, TrackerError> {
    let mut p = ResponseParser::new(limits.clone());
    for part in parts {
        if let Some(r) = p.feed(part)? {
            return Ok(Some(r));
        }
    }
    p.handle_closed().map(Some)
}

fn check_request(req: &[u8]) {
    let text = std::str::from_utf8(req).expect("request is UTF-8");
    assert!(text.starts_with("GET /"), "request line {text:?}");
    let head = text
        .strip_suffix("\r\n\r\n")
        .expect("request ends with an empty line");
    for line in head.split("\r\n") {
        assert!(!line.is_empty(), "empty line inside the head: {text:?}");
        // ASCII controls could split or inject header lines. (Non-ASCII bytes of a URL's path,
        // C1 controls included, go out as they are; they cannot end a line.)
        assert!(
            !line.bytes().any(|b| b.is_ascii_control()),
            "control character in {line:?}"
        );
    }
}

/// Runs an announce exchange over the chunks, following redirects onto the chunks that remain.
fn exchange(limits: &HttpLimits, parts: &[&[u8]]) {
    let url = TrackerUrl::parse("http://tracker.test:8080/announce?k=1").expect("valid URL");
    let mut x = HttpExchange::new(url, "info_hash=%11".to_owned(), limits.clone());
    check_request(&x.request());
    let mut redirects = 0;
    for part in parts {
        match x.handle_data(part) {
            Ok(None) => {}
            Ok(Some(HttpStep::Body(body))) => {
                assert!(body.len() <= limits.max_body);
                return;
            }
            Ok(Some(HttpStep::Redirect(to))) => {
                redirects += 1;
                assert!(
                    redirects <= limits.max_redirects,
                    "too many redirects followed"
                );
                assert_ne!(to.scheme, Scheme::Udp, "redirected to UDP");
                assert_eq!(x.url(), &to);
                tracker_url(&to.to_string());
                check_request(&x.request());
            }
            Err(e) => {
                check_tracker_error(&e);
                return;
            }
        }
    }
    match x.handle_closed() {
        Ok(HttpStep::Redirect(to)) => {
            assert_ne!(to.scheme, Scheme::Udp);
            check_request(&x.request());
        }
        Ok(HttpStep::Body(_)) => {}
        Err(e) => check_tracker_error(&e),
    }
}

/// Announce and scrape decoding of a body.
fn bodies(body: &[u8], max_peers: usize) {
    let f = filter(max_peers);
    match parse_announce(body, &f) {
        Ok(reply) => check_reply(&reply, &f),
        Err(e) => check_tracker_error(&e),
    }
    match parse_scrape(body, &INFO_HASH) {
        Ok(_) => {}
        Err(e) => check_tracker_error(&e),
    }
}

/// Input: the tracker's seed, reply filter and timing, whether it is IPv6, then a script: start an
/// announce or scrape, datagrams (well-formed with the right or a wrong transaction id, or raw),
/// time passing and timers firing, cancel.
///
/// Checks: every packet sent is a well-formed BEP 15 request (connect with the protocol id, or an
/// announce/scrape carrying the connection id the tracker gave); a datagram with another
/// transaction id changes nothing; an early timer call does nothing; outcomes match the request,
/// end the exchange and keep peers within the filter.
pub fn udp_tracker(data: &[u8]) {
    let mut b = Bytes::new(data);
    let seed = u64::from(b.u16());
    let f = filter(usize::from(b.u8() % 64) + 1);
    let config = UdpConfig {
        retransmit_base: Duration::from_secs(1 + u64::from(b.u8() % 16)),
        max_retransmits: u32::from(b.u8() % 9),
        connection_id_ttl: Duration::from_secs(u64::from(b.u8())),
    };
    let mut u = Udp {
        t: UdpTracker::new(config, seed, f.clone()),
        filter: f,
        now: Time::from_secs(1),
        request: None,
        txid: None,
        conn_id: None,
        last_action: None,
    };
    u.t.set_ipv6(b.bool());
    for _ in 0..300 {
        if b.is_empty() {
            break;
        }
        u.op(&mut b);
    }
}

struct Udp {
    t: UdpTracker,
    filter: PeerFilter,
    now: Time,
    request: Option<UdpRequest>,
    /// The transaction id of the last packet sent.
    txid: Option<u32>,
    /// The connection id the tracker last gave.
    conn_id: Option<u64>,
    /// The action of the last packet sent (0 while connecting).
    last_action: Option<u32>,
}

impl Udp {
    fn op(&mut self, b: &mut Bytes<'_>) {
        match b.u8() % 7 {
            0 => {
                let request = if b.bool() {
                    UdpRequest::Scrape(INFO_HASH)
                } else {
                    UdpRequest::Announce(AnnounceParams {
                        info_hash: INFO_HASH,
                        peer_id: PeerId([0x22; 20]),
                        port: 6881,
                        uploaded: b.u64(),
                        downloaded: b.u64(),
                        left: b.u64(),
                        event: AnnounceEvent::Started,
                        numwant: b.u32(),
                        key: b.u32(),
                    })
                };
                self.t.start(self.now, request.clone());
                self.request = Some(request);
                let packet = self.t.poll_transmit().expect("start sends a packet");
                self.check_packet(&packet);
            }
            1 => {
                let action = u32::from(b.u8() % 5);
                let right = b.bool();
                let txid = match self.txid {
                    Some(t) if right => t,
                    _ => b.u32(),
                };
                let mut dg = Vec::new();
                dg.extend_from_slice(&action.to_be_bytes());
                dg.extend_from_slice(&txid.to_be_bytes());
                dg.extend_from_slice(b.short_slice());
                self.datagram(&dg);
            }
            2 => {
                let dg = b.short_slice();
                self.datagram(dg);
            }
            3 => {
                self.now += Duration::from_millis(u64::from(b.u16()) * 100);
                self.timeout();
            }
            4 => {
                if let Some(t) = self.t.poll_timeout() {
                    self.now = self.now.max(t);
                }
                self.timeout();
            }
            5 => {
                self.t.cancel();
                self.request = None;
                assert!(!self.t.is_busy() && self.t.poll_timeout().is_none());
                assert_eq!(self.t.poll_transmit(), None);
            }
            _ => {
                // A connect reply with the right transaction id, to reach the request phase.
                if let Some(txid) = self.txid {
                    let mut dg = Vec::new();
                    dg.extend_from_slice(&0u32.to_be_bytes());
                    dg.extend_from_slice(&txid.to_be_bytes());
                    dg.extend_from_slice(&b.u64().to_be_bytes());
                    self.datagram(&dg);
                }
            }
        }
        assert_eq!(self.t.is_busy(), self.t.poll_timeout().is_some());
    }

    fn check_packet(&mut self, p: &[u8]) {
        let u32_at = |at: usize| u32::from_be_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]]);
        assert!(p.len() >= 16, "packet of {} bytes", p.len());
        let head = u64::from_be_bytes(p[..8].try_into().expect("8 bytes"));
        let action = u32_at(8);
        match (action, p.len()) {
            (0, 16) => assert_eq!(head, PROTOCOL_ID, "connect without the protocol id"),
            (1, 98) => {
                assert!(matches!(self.request, Some(UdpRequest::Announce(_))));
                assert_eq!(
                    Some(head),
                    self.conn_id,
                    "announce with a connection id never given"
                );
                assert_eq!(&p[16..36], &INFO_HASH.0);
            }
            (2, 36) => {
                assert!(matches!(self.request, Some(UdpRequest::Scrape(_))));
                assert_eq!(
                    Some(head),
                    self.conn_id,
                    "scrape with a connection id never given"
                );
                assert_eq!(&p[16..36], &INFO_HASH.0);
            }
            _ => panic!("malformed packet: action {action}, {} bytes", p.len()),
        }
        self.txid = Some(u32_at(12));
        self.last_action = Some(action);
    }

    fn datagram(&mut self, dg: &[u8]) {
        let busy = self.t.is_busy();
        let deadline = self.t.poll_timeout();
        let matches =
            dg.len() >= 8 && self.txid.is_some_and(|t| dg[4..8] == t.to_be_bytes()) && busy;
        if dg.len() >= 16 && matches && dg[..4] == [0, 0, 0, 0] && self.last_action == Some(0) {
            self.conn_id = Some(u64::from_be_bytes(dg[8..16].try_into().expect("8 bytes")));
        }
        let outcome = self.t.handle_datagram(self.now, dg);
        if !matches {
            assert_eq!(
                outcome, None,
                "a datagram for another exchange ended this one"
            );
            assert_eq!(
                self.t.poll_transmit(),
                None,
                "a stray datagram made us send"
            );
            assert_eq!((self.t.is_busy(), self.t.poll_timeout()), (busy, deadline));
            return;
        }
        if let Some(p) = self.t.poll_transmit() {
            self.check_packet(&p);
        }
        if let Some(o) = outcome {
            self.outcome(&o);
        }
    }

    fn timeout(&mut self) {
        let due = self.t.poll_timeout();
        if due.is_none_or(|d| self.now < d) {
            let busy = self.t.is_busy();
            assert_eq!(
                self.t.handle_timeout(self.now),
                None,
                "early timer call ended the exchange"
            );
            assert_eq!(
                self.t.poll_transmit(),
                None,
                "early timer call sent a packet"
            );
            assert_eq!(self.t.is_busy(), busy);
            return;
        }
        let outcome = self.t.handle_timeout(self.now);
        if let Some(p) = self.t.poll_transmit() {
            self.check_packet(&p);
        }
        if let Some(o) = outcome {
            assert_eq!(o, UdpOutcome::Failed(TrackerError::Timeout));
            self.outcome(&o);
        }
    }

    fn outcome(&mut self, o: &UdpOutcome) {
        match (o, &self.request) {
            (UdpOutcome::Announced(reply), Some(UdpRequest::Announce(_))) => {
                check_reply(reply, &self.filter);
            }
            (UdpOutcome::Scraped(_), Some(UdpRequest::Scrape(_))) => {}
            (UdpOutcome::Failed(e), Some(_)) => check_tracker_error(e),
            _ => panic!("outcome {o:?} for request {:?}", self.request),
        }
        assert!(!self.t.is_busy(), "an outcome did not end the exchange");
        assert_eq!(self.t.poll_transmit(), None);
        self.request = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_request_refuses_injected_headers() {
        check_request(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
        let bad = std::panic::catch_unwind(|| {
            check_request(b"GET /a HTTP/1.1\r\nHost: x\r\nX: y\rz\r\n\r\n")
        });
        assert!(bad.is_err());
    }

    #[test]
    fn the_exchange_url_is_valid() {
        exchange(
            &HttpLimits::default(),
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nde"],
        );
    }
}
