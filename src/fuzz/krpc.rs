//! Body for the DHT's KRPC codec (BEP 5, with BEP 32's IPv6 fields).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use kp_torrent_core::dht::krpc::{
    Body, ErrorReply, KrpcError, MAX_MESSAGE_LEN, MAX_TID_LEN, MAX_TOKEN_LEN, MAX_VERSION_LEN,
    Message, Method, NodeInfo, Query, Response, TransactionId, Want,
};
use kp_torrent_core::dht::node_id::NodeId;

use super::Bytes;
use super::formats::check_message;

/// KRPC: the input is a datagram, and (unless it starts like one, with `d`) also the recipe
/// for a message built field by field.
///
/// Datagram: decoding never panics and errors are one line; a refused datagram names a
/// transaction id to answer only when it got as far as being a query; what decodes keeps the
/// documented bounds (transaction id, `v`, tokens) and re-encodes to bytes that decode equal and
/// re-encode identically (when the canonical form still fits in [`MAX_MESSAGE_LEN`]).
///
/// Built message: any query, response or error within the bounds encodes to bytes that decode
/// to it (a response's nodes grouped by family, IPv4 first, as `nodes` and `nodes6` carry them).
pub fn krpc(data: &[u8]) {
    datagram(data);
    if data.first() != Some(&b'd') {
        built(&mut Bytes::new(data));
    }
}

fn datagram(data: &[u8]) {
    let msg = match Message::decode(data) {
        Ok(m) => m,
        Err(m) => {
            check_message(&m);
            if data.len() > MAX_MESSAGE_LEN {
                assert_eq!(
                    m.error,
                    KrpcError::TooLong { len: data.len() },
                    "an over-long datagram"
                );
            }
            if m.query_tid.is_some() {
                assert!(
                    !matches!(
                        m.error,
                        KrpcError::TooLong { .. }
                            | KrpcError::Bencode(_)
                            | KrpcError::NotDict
                            | KrpcError::BadTransactionId
                            | KrpcError::BadType
                    ),
                    "a transaction id to answer, yet: {}",
                    m.error
                );
            }
            return;
        }
    };
    assert!(msg.tid.as_bytes().len() <= MAX_TID_LEN);
    assert!(
        msg.version
            .as_ref()
            .is_none_or(|v| v.len() <= MAX_VERSION_LEN)
    );
    match &msg.body {
        Body::Query(q) => {
            if let Method::AnnouncePeer { token, .. } = &q.method {
                assert!(token.len() <= MAX_TOKEN_LEN, "{}-byte token", token.len());
            }
        }
        Body::Response(r) => {
            assert!(r.token.as_ref().is_none_or(|t| t.len() <= MAX_TOKEN_LEN));
            assert!(
                r.nodes
                    .windows(2)
                    .all(|w| w[0].addr.is_ipv4() || w[1].addr.is_ipv6()),
                "nodes6 before nodes"
            );
        }
        Body::Error(_) => {}
    }
    let encoded = msg.encode();
    if encoded.len() <= MAX_MESSAGE_LEN {
        round_trip(&msg, &encoded);
    }
}

/// `encoded` (the encoding of `expected`) decodes to `expected` and re-encodes identically.
fn round_trip(expected: &Message, encoded: &[u8]) {
    let again = Message::decode(encoded)
        .unwrap_or_else(|e| panic!("an encoded message does not decode: {e}"));
    assert_eq!(&again, expected, "decode(encode(m)) != m");
    assert_eq!(again.encode(), encoded, "encoding is not canonical");
}

/// A node id: mostly from a few values, so that ids repeat; sometimes any.
fn node_id(b: &mut Bytes<'_>) -> NodeId {
    let k = b.u8();
    if k < 0xf0 {
        let mut id = [k % 8; 20];
        id[19] = k;
        NodeId(id)
    } else {
        let mut id = [0u8; 20];
        id.copy_from_slice(&[b.take(20), &[0u8; 20][..]].concat()[..20]);
        NodeId(id)
    }
}

fn socket_addr(b: &mut Bytes<'_>) -> SocketAddr {
    let k = b.u8();
    let port = b.u16();
    if k & 1 == 0 {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(b.u32())), port)
    } else {
        let hi = b.u64();
        let lo = b.u64();
        let ip = Ipv6Addr::from((u128::from(hi) << 64) | u128::from(lo));
        SocketAddr::new(IpAddr::V6(ip), port)
    }
}

fn built(b: &mut Bytes<'_>) {
    let tid_len = usize::from(b.u8()) % (MAX_TID_LEN + 1);
    let tid = TransactionId::new(b.take(tid_len)).expect("at most MAX_TID_LEN bytes");
    let token = |b: &mut Bytes<'_>| {
        let n = usize::from(b.u8()) % (MAX_TOKEN_LEN + 1);
        b.take(n).to_vec()
    };
    let body = match b.u8() % 3 {
        0 => {
            let id = node_id(b);
            let method = match b.u8() % 4 {
                0 => Method::Ping,
                1 => Method::FindNode { target: node_id(b) },
                2 => Method::GetPeers {
                    info_hash: node_id(b).into(),
                },
                _ => Method::AnnouncePeer {
                    info_hash: node_id(b).into(),
                    port: b.u16(),
                    implied_port: b.bool(),
                    token: token(b),
                },
            };
            let want = Want {
                n4: b.bool(),
                n6: b.bool(),
            };
            Body::Query(Query { id, method, want })
        }
        1 => {
            let id = node_id(b);
            let mut nodes: Vec<NodeInfo> = (0..b.u8() % 24)
                .map(|_| NodeInfo {
                    id: node_id(b),
                    addr: socket_addr(b),
                })
                .collect();
            nodes.sort_by_key(|n| n.addr.is_ipv6());
            let values = (0..b.u8() % 64).map(|_| socket_addr(b)).collect();
            let token = b.bool().then(|| token(b));
            Body::Response(Response {
                id,
                nodes,
                values,
                token,
            })
        }
        _ => Body::Error(ErrorReply {
            code: b.u64() as i64,
            message: String::from_utf8_lossy(b.short_slice()).into_owned(),
        }),
    };
    let msg = Message {
        tid,
        body,
        version: b.bool().then(|| {
            let n = usize::from(b.u8()) % (MAX_VERSION_LEN + 1);
            b.take(n).to_vec()
        }),
        ip: b.bool().then(|| socket_addr(b)),
        read_only: b.bool(),
    };
    let encoded = msg.encode();
    assert!(
        encoded.len() <= MAX_MESSAGE_LEN,
        "{} bytes encoded",
        encoded.len()
    );
    round_trip(&msg, &encoded);
}
