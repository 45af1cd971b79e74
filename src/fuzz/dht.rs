//! Body for a [`Dht`] node fed datagrams (arbitrary bytes, queries, answers to its own queries),
//! lookup requests and time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use kp_torrent_core::dht::krpc::{
    Body, ErrorReply, Malformed, Message, Method, NodeInfo, Query, Response, TransactionId, Want,
};
use kp_torrent_core::dht::node_id::{ID_BITS, NodeId};
use kp_torrent_core::dht::table::{Family, K, MAX_BUCKETS, REPLACEMENTS};
use kp_torrent_core::dht::{Dht, DhtConfig, DhtEvent, Input, LookupId, VERSION};
use kp_torrent_core::id::InfoHash;
use kp_torrent_core::time::Time;

use super::Bytes;

/// Most steps one input runs.
const MAX_STEPS: usize = 300;
/// Queries of ours the script remembers, to answer (the latest).
const REMEMBERED: usize = 64;
/// Repeated queries one input sends at most (each a datagram in; they cost the most).
const MAX_REPEATS: usize = 200;
/// Lookup handles the script uses (few, so duplicates come up).
const LOOKUP_IDS: u8 = 4;

/// Input: the node's settings (seed, IPv6 on or off, amplification factor, transactions and
/// lookups at most, values per reply, a bootstrap node), then steps chosen by one byte: an
/// arbitrary datagram (short or up to 5,000 bytes), a well-formed query (any method, transaction
/// id, `want`, `ro`; an announce with the token our reply gave that address, or another), the
/// same query again and again (rate limits), an answer or an error to one of the node's own
/// queries (from its address or another, any id, nodes and values from a small space), a
/// get_peers, announce or bootstrap request, time passing, the timer firing.
///
/// Checks: no panic; every datagram the node sends decodes and goes to an address of an enabled
/// family; its queries carry its id and go to usable addresses (a port, not unspecified or
/// multicast); it sends a reply (response or error) only for a datagram that was a query (or a
/// malformed one with a transaction id), at most one, to its source, echoing its transaction id,
/// never longer than the amplification factor times the query; a response names our id and the
/// querier's address, nodes only of the families asked for and never our own id, at most the
/// values allowed, and a token for get_peers; events name only lookups the script started and
/// still running, each finishes once, and a lookup reports each peer once; transactions, lookups
/// and the routing tables stay within their bounds; a timer call before
/// [`Dht::poll_timeout`] or a second one at the same time sends and reports nothing, and the
/// next deadline is after the current time.
pub fn dht(data: &[u8]) {
    let mut b = Bytes::new(data);
    let ipv6 = b.bool();
    let bootstrap = b.bool();
    let mut config = DhtConfig {
        seed: u64::from(b.u8()),
        ipv6,
        amplification: 1 + usize::from(b.u8() % 8),
        max_transactions: 1 + usize::from(b.u8() % 32),
        max_lookups: 1 + usize::from(b.u8() % 4),
        max_values: usize::from(b.u8() % 60),
        ..DhtConfig::default()
    };
    if bootstrap {
        config.bootstrap = vec![addr(&mut b), addr(&mut b)];
    }
    let mut h = Harness {
        dht: Dht::new(config.clone(), Time::ZERO),
        config,
        now: Time::ZERO,
        ours: Vec::new(),
        tokens: BTreeMap::new(),
        running: BTreeMap::new(),
        last_query: None,
        repeats: 0,
    };
    for _ in 0..MAX_STEPS {
        if b.is_empty() {
            break;
        }
        h.run_op(&mut b);
    }
}

/// An address from a small space: 10.0.0.0/29 and 2001:db8::/126, ports 6881, 6882, 0 or any.
fn addr(b: &mut Bytes<'_>) -> SocketAddr {
    let k = b.u8();
    let port = match (k >> 3) & 3 {
        0 => 6881,
        1 => 6882,
        2 => 0,
        _ => b.u16(),
    };
    let ip = match k >> 5 {
        0..=4 => IpAddr::V4(Ipv4Addr::new(10, 0, 0, k & 7)),
        5 => IpAddr::V4(if k & 1 == 0 {
            Ipv4Addr::UNSPECIFIED
        } else {
            Ipv4Addr::new(224, 0, 0, 1)
        }),
        _ => IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            0,
            0,
            u16::from(k & 3),
        )),
    };
    SocketAddr::new(ip, port)
}

fn usable(a: &SocketAddr) -> bool {
    a.port() != 0 && !a.ip().is_unspecified() && !a.ip().is_multicast()
}

fn info_hash(b: &mut Bytes<'_>) -> InfoHash {
    InfoHash([0x40 + b.u8() % 4; 20])
}

/// A query the node sent, remembered to be answered.
#[derive(Debug, Clone)]
struct Ours {
    to: SocketAddr,
    tid: TransactionId,
    method: &'static str,
}

/// A lookup the script started that has not finished.
#[derive(Debug, Default)]
struct Running {
    info_hash: Option<InfoHash>,
    peers: BTreeSet<SocketAddr>,
}

struct Harness {
    dht: Dht,
    config: DhtConfig,
    now: Time,
    ours: Vec<Ours>,
    /// The latest token our get_peers replies gave each IP.
    tokens: BTreeMap<IpAddr, Vec<u8>>,
    running: BTreeMap<LookupId, Running>,
    /// The latest well-formed query sent, for repeats.
    last_query: Option<Vec<u8>>,
    /// Repeated queries sent so far.
    repeats: usize,
}

/// What one datagram input was, for the replies it may get.
#[derive(Debug, Clone, Copy)]
struct Asked<'a> {
    from: SocketAddr,
    len: usize,
    /// The transaction id to echo and the query, when the datagram was one.
    query: Option<(TransactionId, Option<&'a Query>)>,
}

impl Harness {
    /// Another id: near ours (so it lands in our deepest buckets), from a few values, or our own.
    fn node_id(&self, b: &mut Bytes<'_>) -> NodeId {
        let k = b.u8();
        let own = self.dht.node_id();
        match k % 4 {
            0 => own.flip_bit(usize::from(b.u8()) % ID_BITS),
            1 | 2 => NodeId([k; 20]),
            _ if k == 3 => own,
            _ => own.flip_bit(usize::from(k) % 8),
        }
    }

    fn nodes(&self, b: &mut Bytes<'_>) -> Vec<NodeInfo> {
        (0..b.u8() % 10)
            .map(|_| NodeInfo {
                id: self.node_id(b),
                addr: addr(b),
            })
            .collect()
    }

    fn query(&self, b: &mut Bytes<'_>, from: SocketAddr) -> Message {
        let tid_len = usize::from(b.u8() % 5);
        let tid = TransactionId::new(b.take(tid_len)).expect("short");
        let method = match b.u8() % 5 {
            0 => Method::Ping,
            1 => Method::FindNode {
                target: self.node_id(b),
            },
            2 => Method::GetPeers {
                info_hash: info_hash(b),
            },
            k => Method::AnnouncePeer {
                info_hash: info_hash(b),
                port: b.u16(),
                implied_port: b.bool(),
                token: match (k, self.tokens.get(&from.ip())) {
                    (3, Some(t)) => t.clone(),
                    _ => b.short_slice().to_vec(),
                },
            },
        };
        let want = match b.u8() % 4 {
            0 => Want { n4: true, n6: true },
            1 => Want {
                n4: false,
                n6: true,
            },
            _ => Want::default(),
        };
        Message {
            tid,
            body: Body::Query(Query {
                id: self.node_id(b),
                method,
                want,
            }),
            version: b.bool().then(|| b"UT\x01\x02".to_vec()),
            ip: None,
            read_only: b.u8().is_multiple_of(8),
        }
    }

    fn run_op(&mut self, b: &mut Bytes<'_>) {
        match b.u8() % 13 {
            0 => {
                let from = addr(b);
                let data = b.short_slice().to_vec();
                self.datagram(from, data);
            }
            1 => {
                let from = addr(b);
                let n = usize::from(b.u16()) % 5000;
                let data = b.take(n).to_vec();
                self.datagram(from, data);
            }
            2 | 3 => {
                let from = addr(b);
                let data = self.query(b, from).encode();
                self.last_query = Some(data.clone());
                self.datagram(from, data);
            }
            4 => {
                // The same query again and again, from one address or several.
                let Some(data) = self.last_query.clone() else {
                    return;
                };
                let from = addr(b);
                let spread = b.bool();
                let n = usize::from(b.u8() % 40).min(MAX_REPEATS - self.repeats);
                self.repeats += n;
                for i in 0..n as u8 {
                    let from = if spread {
                        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 1, i)), 6881)
                    } else {
                        from
                    };
                    self.datagram(from, data.clone());
                }
            }
            5 | 6 => self.answer(b),
            7 => {
                self.now += Duration::from_millis(u64::from(b.u16()) * 10);
                self.timeout();
            }
            8 => {
                if let Some(t) = self.dht.poll_timeout() {
                    self.now = self.now.max(t);
                }
                self.timeout();
            }
            9 => {
                let id = LookupId(u64::from(b.u8() % LOOKUP_IDS));
                let info_hash = info_hash(b);
                self.start(id, Some(info_hash), Input::GetPeers { id, info_hash });
            }
            10 => {
                let id = LookupId(u64::from(b.u8() % LOOKUP_IDS));
                let info_hash = info_hash(b);
                let input = Input::Announce {
                    id,
                    info_hash,
                    port: b.u16(),
                    implied_port: b.bool(),
                };
                self.start(id, Some(info_hash), input);
            }
            11 => {
                let id = LookupId(u64::from(b.u8() % LOOKUP_IDS));
                self.start(id, None, Input::Bootstrap { id });
            }
            _ => self.now += Duration::from_millis(u64::from(b.u8()) * 100),
        }
    }

    /// A response or an error to one of the node's queries.
    fn answer(&mut self, b: &mut Bytes<'_>) {
        if self.ours.is_empty() {
            return;
        }
        let i = usize::from(b.u8()) % self.ours.len();
        let ours = self.ours.remove(i);
        let from = if b.u8().is_multiple_of(8) {
            addr(b)
        } else {
            ours.to
        };
        let body = if b.u8().is_multiple_of(6) {
            Body::Error(ErrorReply {
                code: ErrorReply::GENERIC,
                message: "no".into(),
            })
        } else {
            let mut nodes = self.nodes(b);
            nodes.sort_by_key(|n| n.addr.is_ipv6());
            // Values and a token are read whatever the query was (so the script's bytes mean
            // the same whichever query is answered) and sent only to a get_peers.
            let get_peers = ours.method == "get_peers";
            let values: Vec<SocketAddr> = (0..b.u8() % 12).map(|_| addr(b)).collect();
            let token = (!b.u8().is_multiple_of(4)).then(|| b.short_slice().to_vec());
            Body::Response(Response {
                id: self.node_id(b),
                nodes,
                values: if get_peers { values } else { Vec::new() },
                token: token.filter(|_| get_peers),
            })
        };
        let msg = Message {
            tid: ours.tid,
            body,
            version: None,
            ip: b.bool().then_some(ours.to),
            read_only: b.u8().is_multiple_of(8),
        };
        self.datagram(from, msg.encode());
    }

    fn datagram(&mut self, from: SocketAddr, data: Vec<u8>) {
        let len = data.len();
        let decoded = Message::decode(&data);
        self.dht
            .handle_input(self.now, Input::Datagram { from, data });
        let query = match &decoded {
            Ok(Message {
                tid,
                body: Body::Query(q),
                ..
            }) => Some((*tid, Some(q))),
            Err(Malformed {
                query_tid: Some(tid),
                ..
            }) => Some((*tid, None)),
            _ => None,
        };
        self.drain(Some(Asked { from, len, query }));
    }

    fn start(&mut self, id: LookupId, info_hash: Option<InfoHash>, input: Input) {
        // A handle already running is refused (finished at once); the first lookup runs on.
        let first = self.running.insert(
            id,
            Running {
                info_hash,
                peers: BTreeSet::new(),
            },
        );
        self.dht.handle_input(self.now, input);
        let finished = self.drain(None);
        if let Some(first) = first {
            assert!(
                finished.contains(&id),
                "a second lookup under {id:?} did not finish at once"
            );
            self.running.insert(id, first);
        }
    }

    /// Fires the timer at `now`, first checking that an early call does nothing.
    fn timeout(&mut self) {
        if self.dht.poll_timeout().is_none_or(|d| self.now < d) {
            self.dht.handle_input(self.now, Input::Timeout);
            self.quiet("a timer call before its deadline");
        }
        self.dht.handle_input(self.now, Input::Timeout);
        self.drain(None);
        self.dht.handle_input(self.now, Input::Timeout);
        self.quiet("a second timer call at the same time");
        if let Some(next) = self.dht.poll_timeout() {
            assert!(
                next > self.now,
                "poll_timeout {next} not after {}",
                self.now
            );
        }
    }

    fn quiet(&mut self, what: &str) {
        let t = self.dht.poll_transmit();
        assert!(t.is_none(), "{what} sent {t:?}");
        let e = self.dht.poll_event();
        assert!(e.is_none(), "{what} reported {e:?}");
    }

    /// Drains the node and checks what came out; returns the lookups that finished.
    fn drain(&mut self, asked: Option<Asked<'_>>) -> Vec<LookupId> {
        let own = self.dht.node_id();
        let mut replies = 0;
        while let Some(t) = self.dht.poll_transmit() {
            let family = Family::of(&t.to);
            assert!(
                family == Family::V4 || self.config.ipv6,
                "sent to {} with IPv6 off",
                t.to
            );
            let msg = Message::decode(&t.data)
                .unwrap_or_else(|e| panic!("sent a datagram that does not decode: {e}"));
            match &msg.body {
                Body::Query(q) => {
                    assert!(usable(&t.to), "a query to {}", t.to);
                    assert_eq!(q.id, own, "a query without our id");
                    assert_eq!(msg.version.as_deref(), Some(&VERSION[..]));
                    if self.ours.len() == REMEMBERED {
                        self.ours.remove(0);
                    }
                    self.ours.push(Ours {
                        to: t.to,
                        tid: msg.tid,
                        method: q.method.name(),
                    });
                }
                Body::Response(_) | Body::Error(_) => {
                    let Some(Asked {
                        from,
                        len,
                        query: Some((tid, query)),
                    }) = asked
                    else {
                        panic!("a reply to no query: {msg:?}");
                    };
                    replies += 1;
                    assert_eq!(replies, 1, "two replies to one query");
                    assert_eq!(t.to, from, "a reply to another address");
                    assert_eq!(msg.tid, tid, "a reply with another transaction id");
                    let budget = len * self.config.amplification;
                    assert!(
                        t.data.len() <= budget,
                        "a reply of {} bytes to a query of {len}",
                        t.data.len()
                    );
                    if let Body::Response(r) = &msg.body {
                        let q = query.expect("a response only to a query that decoded");
                        self.check_response(r, &msg, from, q);
                    }
                }
            }
        }
        let mut finished = Vec::new();
        while let Some(ev) = self.dht.poll_event() {
            match ev {
                DhtEvent::Peers {
                    id,
                    info_hash,
                    peers,
                } => {
                    let r = self
                        .running
                        .get_mut(&id)
                        .unwrap_or_else(|| panic!("peers for {id:?}, which is not running"));
                    assert_eq!(r.info_hash, Some(info_hash), "peers of another torrent");
                    assert!(!peers.is_empty(), "an empty peers event");
                    for p in peers {
                        assert!(r.peers.insert(p), "{p} reported twice to {id:?}");
                    }
                }
                DhtEvent::LookupDone { id, .. } | DhtEvent::Announced { id, .. } => {
                    if let DhtEvent::Announced { info_hash, .. } = ev {
                        let r = self.running.get(&id);
                        assert!(r.is_none_or(|r| r.info_hash == Some(info_hash)));
                    }
                    assert!(
                        self.running.remove(&id).is_some(),
                        "{id:?} finished, not running"
                    );
                    finished.push(id);
                }
            }
        }
        assert!(self.dht.transactions() <= self.config.max_transactions);
        assert!(self.dht.lookups() <= self.config.max_lookups);
        for family in [Family::V4, Family::V6] {
            if let Some(t) = self.dht.table(family) {
                assert!(t.len() + t.cached_len() <= MAX_BUCKETS * (K + REPLACEMENTS));
                assert!(t.entries().all(|e| e.info().id != own));
            }
        }
        finished
    }

    fn check_response(&mut self, r: &Response, msg: &Message, from: SocketAddr, q: &Query) {
        let own = self.dht.node_id();
        assert_eq!(r.id, own, "a response without our id");
        assert_eq!(
            msg.ip,
            Some(from),
            "a response without the querier's address"
        );
        let (v4, v6) = if q.want.n4 || q.want.n6 {
            (q.want.n4, q.want.n6)
        } else {
            (from.is_ipv4(), from.is_ipv6())
        };
        for n in &r.nodes {
            assert!(n.id != own, "our own id among the nodes");
            assert!(
                if n.addr.is_ipv4() { v4 } else { v6 },
                "a node of a family not asked for: {}",
                n.addr
            );
        }
        assert!(r.values.len() <= self.config.max_values);
        match q.method {
            Method::GetPeers { .. } => {
                let token = r
                    .token
                    .clone()
                    .expect("a get_peers response without a token");
                self.tokens.insert(from.ip(), token);
            }
            _ => assert!(r.values.is_empty() && r.token.is_none()),
        }
    }
}
