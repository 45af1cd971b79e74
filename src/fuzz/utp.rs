//! Body for uTP (BEP 29): the packet codec and an endpoint fed arbitrary datagrams.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};

use kp_torrent_core::time::Time;
use kp_torrent_core::utp::packet::{self, HEADER_LEN};
use kp_torrent_core::utp::{ConnectionHandle, Endpoint, Event, UtpConfig, is_utp};

use super::Bytes;

/// Largest datagram an endpoint may send (see `kp_torrent_core::utp::MAX_PAYLOAD`).
const MAX_DATAGRAM: usize = 1450;

/// The input is a script for one endpoint that has dialed one peer and accepts others: each
/// step is an operation byte, then its arguments (datagrams from one of four addresses, with
/// their length; time passing; the application writing, reading or closing).
///
/// Checked: whatever decodes passes `is_utp` and re-encodes to the same header, SACK and
/// payload; the endpoint never panics; every datagram it sends decodes, fits 1,450 bytes and
/// goes to an address it heard from or dialed; a handle is reported closed at most once and
/// never reported again after that; after `handle_timeout(t)` the next deadline is later than
/// `t` (no timer left in the past to spin on); the connection count stays within its limit.
pub fn utp(data: &[u8]) {
    codec(data);
    let mut input = Bytes::new(data);
    let config = UtpConfig {
        seed: u64::from(input.u32()),
        max_connections: 8,
        max_half_open: 4,
        ..UtpConfig::default()
    };
    let addr = |i: u8| SocketAddr::from((Ipv4Addr::LOCALHOST, 7000 + u16::from(i % 4)));
    let mut ep = Endpoint::new(config);
    let mut now = Time::ZERO;
    let mut known: BTreeSet<SocketAddr> = BTreeSet::new();
    let mut open: BTreeSet<ConnectionHandle> = BTreeSet::new();
    let mut closed: BTreeSet<ConnectionHandle> = BTreeSet::new();
    if let Ok(h) = ep.connect(now, addr(0)) {
        known.insert(addr(0));
        open.insert(h);
    }
    let mut buf = Vec::new();
    let mut read_buf = [0u8; 4096];
    let mut steps = 0;
    while !input.is_empty() && steps < 256 {
        steps += 1;
        match input.u8() % 6 {
            0 | 1 => {
                let from = addr(input.u8());
                let len = usize::from(input.u16()) % 1600;
                let datagram = input.take(len);
                known.insert(from);
                ep.handle_datagram(now, from, datagram);
            }
            2 => {
                now += std::time::Duration::from_millis(u64::from(input.u16()) * 8);
                ep.handle_timeout(now);
                if let Some(t) = ep.poll_timeout() {
                    assert!(t > now, "a deadline {t:?} left behind at {now:?}");
                }
            }
            3 => {
                if let Some(&h) = open.iter().nth(usize::from(input.u8()) % open.len().max(1)) {
                    let len = usize::from(input.u16()) % 20_000;
                    let taken = ep.write(h, &vec![0x5a; len]);
                    assert!(taken <= len);
                }
            }
            4 => {
                if let Some(&h) = open.iter().next() {
                    while ep.read(h, &mut read_buf) > 0 {}
                }
            }
            _ => {
                if let Some(&h) = open.iter().next() {
                    if std::env::var_os("UTP_FUZZ_DEBUG").is_some() {
                        eprintln!("step {steps} close {h}");
                    }
                    ep.close(h);
                    open.remove(&h);
                    closed.insert(h);
                }
            }
        }
        assert!(ep.len() <= config.max_connections + config.max_half_open);
        while let Some(to) = ep.poll_transmit(now, &mut buf) {
            assert!(
                buf.len() <= MAX_DATAGRAM,
                "a datagram of {} bytes",
                buf.len()
            );
            assert!(known.contains(&to), "sent to {to}, never heard of");
            packet::decode(&buf).expect("our own packet decodes");
        }
        while let Some(ev) = ep.poll_event() {
            if std::env::var_os("UTP_FUZZ_DEBUG").is_some() {
                eprintln!("step {steps} event {ev:?}");
            }
            match ev {
                Event::Incoming { handle, .. } => {
                    assert!(!closed.contains(&handle), "{handle} came back");
                    assert!(open.insert(handle), "{handle} incoming twice");
                }
                Event::Connected(h) | Event::Readable(h) | Event::Writable(h) => {
                    assert!(!closed.contains(&h), "{h} reported after its close");
                }
                Event::Closed { handle, .. } => {
                    assert!(closed.insert(handle), "{handle} closed twice");
                    open.remove(&handle);
                }
            }
        }
    }
}

fn codec(data: &[u8]) {
    let Ok(p) = packet::decode(data) else {
        if data.len() >= HEADER_LEN && is_utp(data) {
            // Classified as uTP yet refused: only a broken extension chain may do that.
            assert!(data[1] != 0, "a plain header refused");
        }
        return;
    };
    assert!(is_utp(data));
    let mut out = Vec::new();
    packet::encode(&p.header, p.sack, p.payload, &mut out);
    let again = packet::decode(&out).expect("re-encoded packet decodes");
    assert_eq!(again.header, p.header);
    assert_eq!(again.sack, p.sack);
    assert_eq!(again.payload, p.payload);
}
