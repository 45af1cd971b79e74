use super::*;
use crate::dht::krpc::*;
use crate::id::InfoHash;

const ABC: &[u8; 20] = b"abcdefghij0123456789";
const MNO: &[u8; 20] = b"mnopqrstuvwxyz123456";

fn tid(b: &[u8]) -> TransactionId {
    TransactionId::new(b).unwrap()
}

fn msg(body: Body) -> Message {
    Message {
        tid: tid(b"aa"),
        body,
        version: None,
        ip: None,
        read_only: false,
    }
}

fn query(method: Method) -> Message {
    msg(Body::Query(Query {
        id: NodeId(*ABC),
        method,
        want: Want::default(),
    }))
}

fn decode_ok(b: &[u8]) -> Message {
    Message::decode(b).unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(b)))
}

fn decode_err(b: &[u8]) -> Malformed {
    match Message::decode(b) {
        Ok(m) => panic!("{} decoded as {m:?}", String::from_utf8_lossy(b)),
        Err(e) => e,
    }
}

/// The examples of BEP 5, each decoded and encoded back byte for byte.
#[test]
fn bep5_examples_round_trip_byte_for_byte() {
    let cases: Vec<(&[u8], Message)> = vec![
        (
            b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe",
            query(Method::Ping),
        ),
        (
            b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re",
            msg(Body::Response(Response {
                id: NodeId(*MNO),
                ..Response::default()
            })),
        ),
        (
            b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee",
            msg(Body::Error(ErrorReply {
                code: ErrorReply::GENERIC,
                message: "A Generic Error Ocurred".into(),
            })),
        ),
        (
            b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q9:find_node1:t2:aa1:y1:qe",
            query(Method::FindNode {
                target: NodeId(*MNO),
            }),
        ),
        (
            b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz123456e1:q9:get_peers1:t2:aa1:y1:qe",
            query(Method::GetPeers {
                info_hash: InfoHash(*MNO),
            }),
        ),
        (
            b"d1:rd2:id20:abcdefghij01234567895:token8:aoeusnth6:valuesl6:axje.u6:idhtnmee1:t2:aa1:y1:re",
            msg(Body::Response(Response {
                id: NodeId(*ABC),
                nodes: vec![],
                values: vec![
                    "97.120.106.101:11893".parse().unwrap(),
                    "105.100.104.116:28269".parse().unwrap(),
                ],
                token: Some(b"aoeusnth".to_vec()),
            })),
        ),
        (
            b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234564:porti6881e5:token8:aoeusnthe1:q13:announce_peer1:t2:aa1:y1:qe",
            query(Method::AnnouncePeer {
                info_hash: InfoHash(*MNO),
                port: 6881,
                implied_port: true,
                token: b"aoeusnth".to_vec(),
            }),
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(decode_ok(bytes), expected);
        assert_eq!(
            expected.encode(),
            bytes,
            "{}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn dht_nodes_and_nodes6_are_compact_and_split_by_family() {
    let n4 = NodeInfo {
        id: NodeId(*ABC),
        addr: v4(1, 2, 6881),
    };
    let n6 = NodeInfo {
        id: NodeId(*MNO),
        addr: v6(0x77, 51413),
    };
    let m = msg(Body::Response(Response {
        id: NodeId(*MNO),
        nodes: vec![n4, n6],
        values: vec![v4(9, 9, 1), v6(3, 2)],
        token: None,
    }));
    let bytes = m.encode();
    let s = String::from_utf8_lossy(&bytes);
    assert!(s.contains("5:nodes26:abcdefghij0123456789"), "{s}");
    assert!(s.contains("6:nodes638:mnopqrstuvwxyz123456"), "{s}");
    assert!(s.contains("6:valuesl6:"), "{s}");
    assert_eq!(decode_ok(&bytes), m);
    // A length that is not a whole number of entries is an error.
    let bad = b"d1:rd2:id20:mnopqrstuvwxyz1234565:nodes25:abcdefghij0123456789\x0a\x00\x01\x02\x1ae1:t2:aa1:y1:re";
    assert_eq!(
        decode_err(bad).error,
        KrpcError::BadNodes {
            key: "nodes",
            len: 25
        }
    );
    let bad6 = b"d1:rd2:id20:mnopqrstuvwxyz1234566:nodes6i3ee1:t2:aa1:y1:re";
    assert_eq!(
        decode_err(bad6).error,
        KrpcError::BadNodes {
            key: "nodes6",
            len: 0
        }
    );
    let bad_values = b"d1:rd2:id20:mnopqrstuvwxyz1234566:valuesl5:abcdeee1:t2:aa1:y1:re";
    assert_eq!(decode_err(bad_values).error, KrpcError::BadValues);
}

#[test]
fn dht_extra_keys_are_tolerated_and_v_ip_ro_want_are_read() {
    // Unknown keys at every level, `v`, `ip` (6 bytes), `ro` and `want` with an unknown entry.
    let b = b"d1:ad2:id20:abcdefghij01234567895:noisei7e6:target20:mnopqrstuvwxyz1234564:wantl2:n62:n92:n4ee2:ip6:\x0a\x00\x00\x01\x1a\xe11:q9:find_node2:roi1e1:t2:aa1:v4:LT\x01\x021:y1:q3:zzz0:e";
    let m = decode_ok(b);
    assert_eq!(m.version.as_deref(), Some(&b"LT\x01\x02"[..]));
    assert_eq!(m.ip, Some(v4(0, 1, 6881)));
    assert!(m.read_only);
    let Body::Query(q) = &m.body else {
        panic!("{m:?}")
    };
    assert_eq!(
        q.method,
        Method::FindNode {
            target: NodeId(*MNO)
        }
    );
    assert_eq!(q.want, Want { n4: true, n6: true });
    // Malformed optional keys are ignored, not fatal: `ip` of 5 bytes, `v` too long, `want` a string.
    let b = b"d1:ad2:id20:abcdefghij01234567894:want2:n4e2:ip5:abcde1:q4:ping1:t2:aa1:v17:aaaaaaaaaaaaaaaaa1:y1:qe";
    let m = decode_ok(b);
    assert_eq!((m.ip, m.version.clone(), m.read_only), (None, None, false));
    let Body::Query(q) = &m.body else {
        panic!("{m:?}")
    };
    assert!(q.want.is_unspecified());
    // A response with extra keys (BEP 33 scrape filters, a `p` port, unknown types).
    let b = b"d1:rd2:id20:mnopqrstuvwxyz1234561:pi6881e4:BFsd3:\x00\x00\x00e1:t1:x1:y1:re";
    let Body::Response(r) = decode_ok(b).body else {
        panic!()
    };
    assert_eq!(r.id, NodeId(*MNO));
}

#[test]
fn dht_unknown_methods_with_a_target_are_find_node() {
    let with_target =
        b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e1:q3:get1:t2:aa1:y1:qe";
    let with_hash = b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz123456e1:q11:sample_infe1:t2:aa1:y1:qe";
    for b in [&with_target[..], &with_hash[..]] {
        let Body::Query(q) = decode_ok(b).body else {
            panic!()
        };
        assert_eq!(
            q.method,
            Method::FindNode {
                target: NodeId(*MNO)
            }
        );
    }
    let neither = b"d1:ad2:id20:abcdefghij0123456789e1:q6:vote_x1:t2:ab1:y1:qe";
    let e = decode_err(neither);
    assert_eq!(e.error, KrpcError::UnknownMethod("vote_x".into()));
    assert_eq!(e.query_tid, Some(tid(b"ab")));
    assert!(e.to_string().contains("vote_x"), "{e}");
}

#[test]
fn dht_malformed_messages_give_the_reason_and_a_tid_only_for_queries() {
    let cases: Vec<(&[u8], KrpcError, bool)> = vec![
        (b"le", KrpcError::NotDict, false),
        (b"d1:y1:qe", KrpcError::BadTransactionId, false),
        (
            b"d1:t17:aaaaaaaaaaaaaaaaa1:y1:qe",
            KrpcError::BadTransactionId,
            false,
        ),
        (b"d1:t2:aa1:y1:xe", KrpcError::BadType, false),
        (b"d1:t2:aae", KrpcError::BadType, false),
        (b"d1:ade1:t2:aa1:y1:qe", KrpcError::MissingMethod, true),
        (b"d1:q4:ping1:t2:aa1:y1:qe", KrpcError::MissingBody, true),
        (
            b"d1:ad2:id3:abce1:q4:ping1:t2:aa1:y1:qe",
            KrpcError::BadId,
            true,
        ),
        (
            b"d1:ad2:id20:abcdefghij0123456789e1:q9:find_node1:t2:aa1:y1:qe",
            KrpcError::BadTarget,
            true,
        ),
        (
            b"d1:ad2:id20:abcdefghij0123456789e1:q9:get_peers1:t2:aa1:y1:qe",
            KrpcError::BadInfoHash,
            true,
        ),
        (
            b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234565:token1:xe1:q13:announce_peer1:t2:aa1:y1:qe",
            KrpcError::BadPort,
            true,
        ),
        (
            b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti70000e5:token1:xe1:q13:announce_peer1:t2:aa1:y1:qe",
            KrpcError::BadPort,
            true,
        ),
        (
            b"d1:ad2:id20:abcdefghij01234567899:info_hash20:mnopqrstuvwxyz1234564:porti1ee1:q13:announce_peer1:t2:aa1:y1:qe",
            KrpcError::BadToken,
            true,
        ),
        (b"d1:t2:aa1:y1:re", KrpcError::MissingBody, false),
        (b"d1:rde1:t2:aa1:y1:re", KrpcError::BadId, false),
        (
            b"d1:rd2:id20:mnopqrstuvwxyz1234565:tokeni1ee1:t2:aa1:y1:re",
            KrpcError::BadToken,
            false,
        ),
        (b"d1:t2:aa1:y1:ee", KrpcError::BadError, false),
        (b"d1:el3:abce1:t2:aa1:y1:ee", KrpcError::BadError, false),
    ];
    for (bytes, error, has_tid) in cases {
        let e = decode_err(bytes);
        assert_eq!(e.error, error, "{}", String::from_utf8_lossy(bytes));
        assert_eq!(
            e.query_tid.is_some(),
            has_tid,
            "{}",
            String::from_utf8_lossy(bytes)
        );
        assert!(!e.to_string().is_empty());
    }
    // announce_peer with implied_port needs no port; an error without a message is read.
    let b = b"d1:ad2:id20:abcdefghij012345678912:implied_porti1e9:info_hash20:mnopqrstuvwxyz1234565:token0:e1:q13:announce_peer1:t0:1:y1:qe";
    let m = decode_ok(b);
    assert_eq!(m.tid.as_bytes(), b"");
    assert!(matches!(
        m.body,
        Body::Query(Query {
            method: Method::AnnouncePeer {
                port: 0,
                implied_port: true,
                ..
            },
            ..
        })
    ));
    assert_eq!(
        decode_ok(b"d1:eli204ee1:t2:aa1:y1:ee").body,
        Body::Error(ErrorReply {
            code: 204,
            message: String::new()
        })
    );
}

#[test]
fn dht_bounds_on_length_tid_and_nesting() {
    let long = vec![b'x'; MAX_MESSAGE_LEN + 1];
    assert_eq!(
        decode_err(&long).error,
        KrpcError::TooLong {
            len: MAX_MESSAGE_LEN + 1
        }
    );
    assert!(TransactionId::new(&[7; MAX_TID_LEN]).is_some());
    assert!(TransactionId::new(&[7; MAX_TID_LEN + 1]).is_none());
    // Deep nesting and too many items are refused by the bounded bencode decoder.
    let deep = format!("d1:t2:aa1:y1:r1:x{}{}e", "l".repeat(10), "e".repeat(10));
    assert!(matches!(
        decode_err(deep.as_bytes()).error,
        KrpcError::Bencode(_)
    ));
    let many = format!("d1:t2:aa1:y1:r1:xl{}ee", "i1e".repeat(1000));
    assert!(matches!(
        decode_err(many.as_bytes()).error,
        KrpcError::Bencode(_)
    ));
}

#[derive(Clone, Debug)]
pub(super) struct AnyMessage(pub(super) Message);

fn arb_bytes(g: &mut Gen, max: usize) -> Vec<u8> {
    let len = usize::arbitrary(g) % (max + 1);
    (0..len).map(|_| u8::arbitrary(g)).collect()
}

impl Arbitrary for AnyMessage {
    fn arbitrary(g: &mut Gen) -> Self {
        let want = Want {
            n4: bool::arbitrary(g),
            n6: bool::arbitrary(g),
        };
        let body = match u8::arbitrary(g) % 7 {
            0 => Body::Query(Query {
                id: arb_id(g),
                method: Method::Ping,
                want,
            }),
            1 => Body::Query(Query {
                id: arb_id(g),
                method: Method::FindNode { target: arb_id(g) },
                want,
            }),
            2 => Body::Query(Query {
                id: arb_id(g),
                method: Method::GetPeers {
                    info_hash: arb_id(g).into(),
                },
                want,
            }),
            3 => Body::Query(Query {
                id: arb_id(g),
                method: Method::AnnouncePeer {
                    info_hash: arb_id(g).into(),
                    port: u16::arbitrary(g),
                    implied_port: bool::arbitrary(g),
                    token: arb_bytes(g, MAX_TOKEN_LEN),
                },
                want,
            }),
            4 | 5 => {
                let mut nodes: Vec<NodeInfo> = (0..usize::arbitrary(g) % 12)
                    .map(|_| NodeInfo {
                        id: arb_id(g),
                        addr: arb_addr(g),
                    })
                    .collect();
                // Decoding yields `nodes` (IPv4) before `nodes6`.
                nodes.sort_by_key(|n| n.addr.is_ipv6());
                Body::Response(Response {
                    id: arb_id(g),
                    nodes,
                    values: (0..usize::arbitrary(g) % 20).map(|_| arb_addr(g)).collect(),
                    token: bool::arbitrary(g).then(|| arb_bytes(g, MAX_TOKEN_LEN)),
                })
            }
            _ => Body::Error(ErrorReply {
                code: i64::arbitrary(g),
                message: String::arbitrary(g),
            }),
        };
        AnyMessage(Message {
            tid: TransactionId::new(&arb_bytes(g, MAX_TID_LEN)).unwrap(),
            body,
            version: bool::arbitrary(g).then(|| arb_bytes(g, MAX_VERSION_LEN)),
            ip: bool::arbitrary(g).then(|| arb_addr(g)),
            read_only: bool::arbitrary(g),
        })
    }
}

#[test]
fn prop_dht_krpc_encode_decode_round_trip() {
    fn prop(m: AnyMessage) -> bool {
        let bytes = m.0.encode();
        // Canonical: the encoding is what bencode's canonical encoder makes of it.
        let canonical = crate::bencode::decode(&bytes).unwrap().to_owned().encode();
        Message::decode(&bytes) == Ok(m.0) && canonical == bytes
    }
    qc(0x6b72_7063, 3000).quickcheck(prop as fn(AnyMessage) -> bool);
}

#[test]
fn prop_dht_krpc_arbitrary_bytes_never_panic() {
    fn prop(b: Vec<u8>) -> bool {
        // Any result is fine; a success must re-decode to itself.
        match Message::decode(&b) {
            Ok(m) => Message::decode(&m.encode()) == Ok(m),
            Err(_) => true,
        }
    }
    qc(0x6279_7465, 3000).quickcheck(prop as fn(Vec<u8>) -> bool);
}

#[test]
fn prop_dht_krpc_mutated_messages_never_panic_and_stay_stable() {
    fn prop(m: AnyMessage, edits: Vec<(u16, u8, u8)>) -> bool {
        let mut b = m.0.encode();
        for (pos, byte, op) in edits.into_iter().take(6) {
            if b.is_empty() {
                break;
            }
            let at = usize::from(pos) % b.len();
            match op % 4 {
                0 => b[at] = byte,
                1 => b[at] ^= 1 << (byte % 8),
                2 => {
                    b.remove(at);
                }
                _ => b.insert(at, byte),
            }
        }
        match Message::decode(&b) {
            Ok(d) => Message::decode(&d.encode()) == Ok(d),
            Err(e) => !e.to_string().is_empty(),
        }
    }
    qc(0x6d75_7461, 4000).quickcheck(prop as fn(AnyMessage, Vec<(u16, u8, u8)>) -> bool);
}
