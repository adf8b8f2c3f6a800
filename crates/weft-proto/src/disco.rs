//! Disco: Tailscale's path-discovery messages (ping, pong, call-me-maybe).
//!
//! A disco packet travels the same way over UDP and inside DERP:
//!
//! ```text
//! magic "TS💬" (6) | sender disco public key (32) | nonce (24) | NaCl box (inner + 16)
//! ```
//!
//! The inner payload is `type u8 | version u8 | body`. This module encodes and
//! decodes the inner [`Message`]s, and seals/opens whole packets with
//! [`weft_key`]'s NaCl box. It is pure: nonces are passed in by the caller.
//! Decoding never panics; garbage gives a [`DiscoError`], and callers drop the
//! packet silently (stale keys after a restart are normal).

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use weft_key::{DiscoPrivate, DiscoPublic, NodePublic};

/// The 6-byte magic that opens every disco packet: `"TS💬"`.
pub const MAGIC: [u8; 6] = *b"TS\xf0\x9f\x92\xac";
/// Length of a disco public key.
pub const KEY_LEN: usize = 32;
/// Length of the NaCl box nonce.
pub const NONCE_LEN: usize = 24;
/// Length of the Poly1305 tag inside the box.
pub const TAG_LEN: usize = 16;
/// Magic plus sender key: the shortest prefix that identifies a disco packet.
pub const HEADER_LEN: usize = MAGIC.len() + KEY_LEN;
/// The shortest well-formed sealed packet (header, nonce, tag).
pub const MIN_PACKET_LEN: usize = HEADER_LEN + NONCE_LEN + TAG_LEN;
/// Total wire overhead of a message: header, nonce, tag, type and version.
pub const OVERHEAD: usize = MIN_PACKET_LEN + 2;
/// Length of a transaction id.
pub const TX_ID_LEN: usize = 12;
/// Length of one endpoint in a pong or call-me-maybe: IPv6 (16) and port (2).
pub const ENDPOINT_LEN: usize = 18;
/// Protocol version written in every message.
pub const VERSION: u8 = 0;

/// A ping/pong transaction id (12 random bytes).
pub type TxId = [u8; TX_ID_LEN];

/// Why a disco packet or message was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DiscoError {
    /// The packet is shorter than the fixed header, nonce and tag.
    #[error("disco packet too short ({0} bytes)")]
    TooShort(usize),
    /// The packet does not start with the disco magic.
    #[error("not a disco packet (bad magic)")]
    BadMagic,
    /// The box did not open with our key and the sender's key.
    #[error("disco box failed to open")]
    Open,
    /// The inner payload is shorter than its type and version bytes.
    #[error("disco message too short")]
    ShortMessage,
    /// A message type this implementation does not handle (relay types, future types).
    #[error("unknown disco message type {0:#04x}")]
    UnknownType(u8),
    /// A ping whose body is shorter than its transaction id.
    #[error("malformed disco ping")]
    BadPing,
    /// A pong whose body is shorter than tx id, address and port.
    #[error("malformed disco pong")]
    BadPong,
}

/// Message type bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    /// Path probe.
    Ping = 0x01,
    /// Reply to a ping, carrying the observed source address.
    Pong = 0x02,
    /// "Here are my endpoints, ping me" (via DERP only).
    CallMeMaybe = 0x03,
}

/// A disco ping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ping {
    /// Random transaction id echoed by the pong.
    pub tx_id: TxId,
    /// The sender's node key (absent in very old clients).
    pub node_key: Option<NodePublic>,
    /// Number of zero padding bytes after the node key (path-MTU probes).
    pub padding: usize,
}

/// A disco pong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pong {
    /// The transaction id of the ping this answers.
    pub tx_id: TxId,
    /// The source address the ping was observed from.
    pub src: SocketAddr,
}

/// A call-me-maybe: the sender's current endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CallMeMaybe {
    /// Candidate UDP endpoints of the sender (may be empty).
    pub endpoints: Vec<SocketAddr>,
}

/// One decoded inner disco message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// See [`Ping`].
    Ping(Ping),
    /// See [`Pong`].
    Pong(Pong),
    /// See [`CallMeMaybe`].
    CallMeMaybe(CallMeMaybe),
}

impl Message {
    /// The inner payload bytes: `type | version | body`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        match self {
            Message::Ping(p) => {
                out.extend_from_slice(&[MessageType::Ping as u8, VERSION]);
                out.extend_from_slice(&p.tx_id);
                if let Some(k) = p.node_key {
                    out.extend_from_slice(k.as_bytes());
                }
                out.resize(out.len() + p.padding, 0);
            }
            Message::Pong(p) => {
                out.extend_from_slice(&[MessageType::Pong as u8, VERSION]);
                out.extend_from_slice(&p.tx_id);
                put_endpoint(&mut out, p.src);
            }
            Message::CallMeMaybe(c) => {
                out.extend_from_slice(&[MessageType::CallMeMaybe as u8, VERSION]);
                for ep in &c.endpoints {
                    put_endpoint(&mut out, *ep);
                }
            }
        }
        out
    }

    /// Parses an inner payload. Trailing bytes are ignored.
    pub fn decode(b: &[u8]) -> Result<Message, DiscoError> {
        let [ty, version, body @ ..] = b else {
            return Err(DiscoError::ShortMessage);
        };
        match *ty {
            0x01 => {
                let Some((tx, rest)) = body.split_first_chunk::<TX_ID_LEN>() else {
                    return Err(DiscoError::BadPing);
                };
                let (node_key, padding) = match rest.split_first_chunk::<KEY_LEN>() {
                    Some((k, pad)) => (Some(NodePublic::from_bytes(*k)), pad.len()),
                    None => (None, rest.len()),
                };
                Ok(Message::Ping(Ping {
                    tx_id: *tx,
                    node_key,
                    padding,
                }))
            }
            0x02 => {
                let Some((tx, rest)) = body.split_first_chunk::<TX_ID_LEN>() else {
                    return Err(DiscoError::BadPong);
                };
                let Some(src) = get_endpoint(rest) else {
                    return Err(DiscoError::BadPong);
                };
                Ok(Message::Pong(Pong { tx_id: *tx, src }))
            }
            0x03 => {
                // Malformed lists (empty, not a multiple of 18, unknown
                // version) count as "no endpoints", not as errors.
                if *version != VERSION || body.is_empty() || body.len() % ENDPOINT_LEN != 0 {
                    return Ok(Message::CallMeMaybe(CallMeMaybe::default()));
                }
                let endpoints = body
                    .chunks_exact(ENDPOINT_LEN)
                    .filter_map(get_endpoint)
                    .collect();
                Ok(Message::CallMeMaybe(CallMeMaybe { endpoints }))
            }
            other => Err(DiscoError::UnknownType(other)),
        }
    }
}

/// True when `b` is long enough to hold a disco header and starts with the magic.
///
/// This is magicsock's classifier; a DERP server's "looks like disco" rule is
/// stricter (at least [`MIN_PACKET_LEN`] bytes).
pub fn looks_like_disco(b: &[u8]) -> bool {
    b.len() >= HEADER_LEN && b[..MAGIC.len()] == MAGIC
}

/// The sender's disco key, read from the clear header without opening the box.
pub fn sender(packet: &[u8]) -> Result<DiscoPublic, DiscoError> {
    if packet.len() < MIN_PACKET_LEN {
        return Err(DiscoError::TooShort(packet.len()));
    }
    if packet[..MAGIC.len()] != MAGIC {
        return Err(DiscoError::BadMagic);
    }
    let mut k = [0u8; KEY_LEN];
    k.copy_from_slice(&packet[MAGIC.len()..HEADER_LEN]);
    Ok(DiscoPublic::from_bytes(k))
}

/// Seals `msg` from `me` to `peer` into a full disco packet with the given nonce.
pub fn seal(
    me: &DiscoPrivate,
    peer: &DiscoPublic,
    msg: &Message,
    nonce: [u8; NONCE_LEN],
) -> Vec<u8> {
    let sealed = me.seal_to_with_nonce(peer.as_bytes(), &msg.encode(), nonce);
    let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(me.public().as_bytes());
    out.extend_from_slice(&sealed);
    out
}

/// Opens a disco packet addressed to `me`, returning the sender key and message.
///
/// Callers that must first check the sender against the netmap use [`sender`]
/// and [`open_from`] instead.
pub fn open(me: &DiscoPrivate, packet: &[u8]) -> Result<(DiscoPublic, Message), DiscoError> {
    let from = sender(packet)?;
    let msg = open_from(me, &from, packet)?;
    Ok((from, msg))
}

/// Opens a disco packet whose sender key has already been read with [`sender`].
pub fn open_from(
    me: &DiscoPrivate,
    from: &DiscoPublic,
    packet: &[u8],
) -> Result<Message, DiscoError> {
    if packet.len() < MIN_PACKET_LEN {
        return Err(DiscoError::TooShort(packet.len()));
    }
    let plain = me
        .open_from(from.as_bytes(), &packet[HEADER_LEN..])
        .map_err(|_| DiscoError::Open)?;
    Message::decode(&plain)
}

fn put_endpoint(out: &mut Vec<u8>, ep: SocketAddr) {
    let ip6 = match ep.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    out.extend_from_slice(&ip6.octets());
    out.extend_from_slice(&ep.port().to_be_bytes());
}

fn get_endpoint(b: &[u8]) -> Option<SocketAddr> {
    let (ip, rest) = b.split_first_chunk::<16>()?;
    let (port, _) = rest.split_first_chunk::<2>()?;
    let ip6 = Ipv6Addr::from(*ip);
    let ip = match ip6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(ip6),
    };
    Some(SocketAddr::new(ip, u16::from_be_bytes(*port)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys() -> (DiscoPrivate, DiscoPrivate) {
        (
            DiscoPrivate::from_bytes([7; 32]),
            DiscoPrivate::from_bytes([9; 32]),
        )
    }

    fn hex_bytes(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).expect("hex"))
            .collect()
    }

    /// Inner encodings cross-checked against the byte strings in Tailscale's
    /// disco tests (the same messages must produce the same bytes).
    #[test]
    fn inner_encodings_match_tailscale_golden_bytes() {
        let tx = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        let mut nk = [0u8; 32];
        nk[1] = 1;
        nk[2] = 2;
        nk[30] = 30;
        nk[31] = 31;
        let nk = NodePublic::from_bytes(nk);
        let cases: Vec<(Message, &str)> = vec![
            (
                Message::Ping(Ping { tx_id: tx, node_key: None, padding: 0 }),
                "01 00 01 02 03 04 05 06 07 08 09 0a 0b 0c",
            ),
            (
                Message::Ping(Ping { tx_id: tx, node_key: Some(nk), padding: 0 }),
                "01 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 00 01 02 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 1e 1f",
            ),
            (
                Message::Ping(Ping { tx_id: tx, node_key: None, padding: 3 }),
                "01 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 00 00 00",
            ),
            (
                Message::Ping(Ping { tx_id: tx, node_key: Some(nk), padding: 3 }),
                "01 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 00 01 02 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 1e 1f 00 00 00",
            ),
            (
                Message::Pong(Pong { tx_id: tx, src: "2.3.4.5:1234".parse().expect("addr") }),
                "02 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 00 00 00 00 00 00 00 00 00 00 ff ff 02 03 04 05 04 d2",
            ),
            (
                Message::Pong(Pong { tx_id: tx, src: "[fed0::12]:6666".parse().expect("addr") }),
                "02 00 01 02 03 04 05 06 07 08 09 0a 0b 0c fe d0 00 00 00 00 00 00 00 00 00 00 00 00 00 12 1a 0a",
            ),
            (Message::CallMeMaybe(CallMeMaybe::default()), "03 00"),
            (
                Message::CallMeMaybe(CallMeMaybe {
                    endpoints: vec!["1.2.3.4:567".parse().expect("addr"), "[2001::3456]:789".parse().expect("addr")],
                }),
                "03 00 00 00 00 00 00 00 00 00 00 00 ff ff 01 02 03 04 02 37 20 01 00 00 00 00 00 00 00 00 00 00 00 00 34 56 03 15",
            ),
        ];
        for (msg, want) in cases {
            let want = hex_bytes(want);
            assert_eq!(msg.encode(), want, "{msg:?}");
            // An empty call-me-maybe decodes as empty; all others round-trip.
            assert_eq!(Message::decode(&want), Ok(msg));
        }
    }

    #[test]
    fn ping_with_node_key_is_124_bytes_on_the_wire() {
        let (a, b) = keys();
        let msg = Message::Ping(Ping {
            tx_id: [1; 12],
            node_key: Some(NodePublic::from_bytes([3; 32])),
            padding: 0,
        });
        let pkt = seal(&a, &b.public(), &msg, [5; 24]);
        assert_eq!(pkt.len(), 124);
        assert!(looks_like_disco(&pkt));
        let (from, got) = open(&b, &pkt).expect("opens");
        assert_eq!(from, a.public());
        assert_eq!(got, msg);
    }

    #[test]
    fn pong_is_110_bytes_and_unmaps_ipv4() {
        let (a, b) = keys();
        let src: SocketAddr = "192.0.2.7:41641".parse().expect("addr");
        let msg = Message::Pong(Pong {
            tx_id: [2; 12],
            src,
        });
        let pkt = seal(&a, &b.public(), &msg, [6; 24]);
        assert_eq!(pkt.len(), 110);
        let (_, got) = open(&b, &pkt).expect("opens");
        assert_eq!(got, msg);
        // The body carries the IPv4 address v4-mapped.
        let inner = msg.encode();
        assert_eq!(&inner[14..26], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
    }

    #[test]
    fn call_me_maybe_sizes_match_tailscale() {
        let (a, b) = keys();
        let one = CallMeMaybe {
            endpoints: vec!["198.51.100.1:1".parse().expect("addr")],
        };
        let two = CallMeMaybe {
            endpoints: vec![
                "198.51.100.1:1".parse().expect("addr"),
                "[2001:db8::1]:2".parse().expect("addr"),
            ],
        };
        assert_eq!(
            seal(&a, &b.public(), &Message::CallMeMaybe(one), [0; 24]).len(),
            98
        );
        let pkt = seal(&a, &b.public(), &Message::CallMeMaybe(two.clone()), [0; 24]);
        assert_eq!(pkt.len(), 116);
        assert_eq!(open(&b, &pkt).expect("opens").1, Message::CallMeMaybe(two));
    }

    #[test]
    fn malformed_call_me_maybe_is_an_empty_list() {
        assert_eq!(
            Message::decode(&[3, 0, 1, 2, 3]),
            Ok(Message::CallMeMaybe(CallMeMaybe::default()))
        );
        assert_eq!(
            Message::decode(&[3, 1]),
            Ok(Message::CallMeMaybe(CallMeMaybe::default()))
        );
    }

    #[test]
    fn old_ping_without_node_key_parses() {
        let mut b = vec![1, 0];
        b.extend_from_slice(&[4; 12]);
        b.extend_from_slice(&[0; 10]);
        assert_eq!(
            Message::decode(&b),
            Ok(Message::Ping(Ping {
                tx_id: [4; 12],
                node_key: None,
                padding: 10
            }))
        );
        assert_eq!(Message::decode(&[1, 0, 1]), Err(DiscoError::BadPing));
    }

    #[test]
    fn unknown_type_and_wrong_key_are_errors() {
        assert_eq!(Message::decode(&[0x08, 0]), Err(DiscoError::UnknownType(8)));
        let (a, b) = keys();
        let c = DiscoPrivate::from_bytes([11; 32]);
        let pkt = seal(
            &a,
            &b.public(),
            &Message::CallMeMaybe(CallMeMaybe::default()),
            [1; 24],
        );
        assert_eq!(open(&c, &pkt), Err(DiscoError::Open));
        assert_eq!(sender(&pkt[..61]), Err(DiscoError::TooShort(61)));
    }

    fn arb_addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p))),
            (any::<[u8; 16]>(), any::<u16>())
                .prop_filter("not v4-mapped", |(ip, _)| Ipv6Addr::from(*ip)
                    .to_ipv4_mapped()
                    .is_none())
                .prop_map(|(ip, p)| SocketAddr::from((Ipv6Addr::from(ip), p))),
        ]
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        prop_oneof![
            (
                any::<[u8; 12]>(),
                proptest::option::of(any::<[u8; 32]>()),
                0usize..64
            )
                .prop_map(|(tx_id, k, padding)| {
                    // Without a node key, padding would be read back as a key once it reaches 32 bytes.
                    let padding = if k.is_none() { padding % 32 } else { padding };
                    Message::Ping(Ping {
                        tx_id,
                        node_key: k.map(NodePublic::from_bytes),
                        padding,
                    })
                }),
            (any::<[u8; 12]>(), arb_addr())
                .prop_map(|(tx_id, src)| Message::Pong(Pong { tx_id, src })),
            proptest::collection::vec(arb_addr(), 1..6)
                .prop_map(|endpoints| Message::CallMeMaybe(CallMeMaybe { endpoints })),
        ]
    }

    proptest! {
        #[test]
        fn messages_round_trip(msg in arb_message()) {
            prop_assert_eq!(Message::decode(&msg.encode()), Ok(msg));
        }

        #[test]
        fn sealed_messages_round_trip(msg in arb_message(), nonce in any::<[u8; 24]>()) {
            let (a, b) = keys();
            let pkt = seal(&a, &b.public(), &msg, nonce);
            prop_assert_eq!(open(&b, &pkt), Ok((a.public(), msg)));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let (_, b) = keys();
            let _ = Message::decode(&bytes);
            let _ = sender(&bytes);
            let _ = open(&b, &bytes);
            let mut with_magic = MAGIC.to_vec();
            with_magic.extend_from_slice(&bytes);
            let _ = open(&b, &with_magic);
        }
    }
}
