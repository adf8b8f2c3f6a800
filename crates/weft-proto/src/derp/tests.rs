use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use weft_key::{NodePrivate, NodePublic};

use super::*;

fn key(n: u8) -> NodePublic {
    NodePublic::from_bytes([n; 32])
}

fn conn_info(port: u16) -> ConnInfo {
    ConnInfo {
        remote: SocketAddr::from(([127, 0, 0, 1], port)),
        is_mesh_peer: false,
        is_prober: false,
        can_ack_pings: true,
    }
}

fn mesh_info() -> ConnInfo {
    ConnInfo {
        is_mesh_peer: true,
        ..conn_info(1)
    }
}

fn drain(s: &mut ServerCore) -> Vec<Command> {
    std::iter::from_fn(|| s.poll_command()).collect()
}

fn disco_packet() -> Bytes {
    let mut p = b"TS\xf0\x9f\x92\xac".to_vec();
    p.resize(80, 0);
    Bytes::from(p)
}

fn arb_key() -> impl Strategy<Value = NodePublic> {
    any::<[u8; 32]>().prop_map(NodePublic::from_bytes)
}

fn arb_bytes(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let addr = (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, p)| SocketAddr::from((ip, p)));
    let addr6 = (any::<[u8; 16]>(), any::<u16>())
        .prop_filter("not v4-mapped", |(ip, _)| {
            std::net::Ipv6Addr::from(*ip).to_ipv4_mapped().is_none()
        })
        .prop_map(|(ip, p)| SocketAddr::from((std::net::Ipv6Addr::from(ip), p)));
    prop_oneof![
        arb_key().prop_map(|key| Frame::ServerKey { key }),
        (arb_key(), proptest::collection::vec(any::<u8>(), 24..200)).prop_map(|(key, s)| {
            Frame::ClientInfo {
                key,
                sealed: s.into(),
            }
        }),
        proptest::collection::vec(any::<u8>(), 24..100)
            .prop_map(|s| Frame::ServerInfo { sealed: s.into() }),
        (arb_key(), arb_bytes(300)).prop_map(|(dst, packet)| Frame::SendPacket { dst, packet }),
        (arb_key(), arb_bytes(300)).prop_map(|(src, packet)| Frame::RecvPacket { src, packet }),
        Just(Frame::KeepAlive),
        any::<bool>().prop_map(|preferred| Frame::NotePreferred { preferred }),
        (arb_key(), any::<u8>()).prop_map(|(key, r)| Frame::PeerGone {
            key,
            reason: match r {
                0 => PeerGoneReason::Disconnected,
                1 => PeerGoneReason::NotHere,
                r => PeerGoneReason::Other(r),
            }
        }),
        (arb_key(), prop_oneof![addr, addr6], any::<u8>(), 0..3u8).prop_map(
            |(key, a, f, shape)| match shape {
                0 => Frame::PeerPresent {
                    key,
                    addr: None,
                    flags: None
                },
                1 => Frame::PeerPresent {
                    key,
                    addr: Some(a),
                    flags: None
                },
                _ => Frame::PeerPresent {
                    key,
                    addr: Some(a),
                    flags: Some(PeerPresentFlags(f))
                },
            }
        ),
        (arb_key(), arb_key(), arb_bytes(300))
            .prop_map(|(src, dst, packet)| Frame::ForwardPacket { src, dst, packet }),
        Just(Frame::WatchConns),
        arb_key().prop_map(|key| Frame::ClosePeer { key }),
        any::<[u8; 8]>().prop_map(|data| Frame::Ping { data }),
        any::<[u8; 8]>().prop_map(|data| Frame::Pong { data }),
        "[a-z ]{0,40}".prop_map(|problem| Frame::Health { problem }),
        (any::<u32>(), any::<u32>()).prop_map(|(a, b)| Frame::Restarting {
            reconnect_in_ms: a,
            try_for_ms: b
        }),
        (0x16u8..=0xff, arb_bytes(50)).prop_map(|(t, payload)| Frame::Unknown {
            frame_type: t,
            payload
        }),
    ]
}

proptest! {
    #[test]
    fn every_frame_round_trips_through_encode_and_decode(frame in arb_frame()) {
        let bytes = frame.to_bytes();
        prop_assert_eq!(bytes.len(), FRAME_HEADER_LEN + frame.payload_len());
        let mut d = Decoder::new(CLIENT_MAX_FRAME_LEN);
        d.extend(&bytes);
        prop_assert_eq!(d.next_frame().unwrap(), Some(frame));
        prop_assert_eq!(d.next_frame().unwrap(), None);
    }

    #[test]
    fn decoding_is_independent_of_chunk_boundaries(
        frames in proptest::collection::vec(arb_frame(), 1..8),
        cuts in proptest::collection::vec(1usize..64, 1..40),
    ) {
        let mut all = Vec::new();
        for f in &frames {
            all.extend_from_slice(&f.to_bytes());
        }
        let mut d = Decoder::new(CLIENT_MAX_FRAME_LEN);
        let mut got = Vec::new();
        let mut rest = &all[..];
        let mut i = 0;
        while !rest.is_empty() {
            let n = cuts[i % cuts.len()].min(rest.len());
            d.extend(&rest[..n]);
            rest = &rest[n..];
            i += 1;
            while let Some(f) = d.next_frame().unwrap() {
                got.push(f);
            }
        }
        prop_assert_eq!(got, frames);
        prop_assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoder(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut d = Decoder::new(SERVER_MAX_FRAME_LEN);
        d.extend(&data);
        for _ in 0..200 {
            match d.next_frame() {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_client(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        let now = Instant::now();
        let mut c = ClientCore::new(ClientConfig::new(NodePrivate::from_bytes([1; 32]), [0; 24]), now);
        let _ = c.handle_input(&data, now);
        while c.poll_event().is_some() {}
    }

    #[test]
    fn arbitrary_frames_never_panic_the_server(frames in proptest::collection::vec(arb_frame(), 0..20), mesh in any::<bool>()) {
        let now = Instant::now();
        let mut s = ServerCore::new();
        s.handle_connect(ConnId(1), key(1), if mesh { mesh_info() } else { conn_info(1) });
        s.handle_connect(ConnId(2), key(2), conn_info(2));
        for f in frames {
            s.handle_frame(ConnId(1), f, now);
            drain(&mut s);
        }
    }
}

#[test]
fn oversized_frame_header_is_rejected_before_buffering() {
    let mut d = Decoder::new(SERVER_MAX_FRAME_LEN);
    d.extend(&[0x04, 0x7f, 0xff, 0xff, 0xff]);
    assert!(matches!(d.next_frame(), Err(DecodeError::TooLarge { .. })));
    assert!(d.next_frame().is_err());
}

#[test]
fn send_packet_over_64k_is_malformed() {
    let mut p = vec![0x04];
    let len = 32 + MAX_PACKET_SIZE + 1;
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.resize(5 + len, 0);
    let mut d = Decoder::new(SERVER_MAX_FRAME_LEN);
    d.extend(&p);
    assert!(matches!(
        d.next_frame(),
        Err(DecodeError::BadLength { frame_type: 4, .. })
    ));
}

#[test]
fn server_key_without_magic_is_malformed() {
    let mut d = Decoder::new(CLIENT_MAX_FRAME_LEN);
    let mut p = vec![0x01, 0, 0, 0, 40];
    p.extend_from_slice(&[0u8; 40]);
    d.extend(&p);
    assert_eq!(d.next_frame(), Err(DecodeError::BadMagic));
}

#[test]
fn server_key_with_trailing_bytes_is_accepted() {
    let mut p = vec![0x01, 0, 0, 0, 44];
    p.extend_from_slice(&MAGIC);
    p.extend_from_slice(&[5u8; 32]);
    p.extend_from_slice(&[9u8; 4]);
    let mut d = Decoder::new(CLIENT_MAX_FRAME_LEN);
    d.extend(&p);
    assert_eq!(
        d.next_frame().unwrap(),
        Some(Frame::ServerKey { key: key(5) })
    );
}

#[test]
fn peer_present_is_51_bytes_with_v4_mapped_address() {
    let f = Frame::PeerPresent {
        key: key(1),
        addr: Some("10.0.0.1:7".parse().unwrap()),
        flags: Some(PeerPresentFlags::IS_REGULAR),
    };
    let b = f.to_bytes();
    assert_eq!(b.len(), 5 + 51);
    assert_eq!(
        &b[5 + 32..5 + 32 + 12],
        &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]
    );
}

#[test]
fn old_peer_gone_without_reason_means_disconnected() {
    let mut p = vec![0x08, 0, 0, 0, 32];
    p.extend_from_slice(&[3; 32]);
    let mut d = Decoder::new(CLIENT_MAX_FRAME_LEN);
    d.extend(&p);
    assert_eq!(
        d.next_frame().unwrap(),
        Some(Frame::PeerGone {
            key: key(3),
            reason: PeerGoneReason::Disconnected
        })
    );
}

#[test]
fn ping_longer_than_8_bytes_echoes_first_8() {
    let mut p = vec![0x12, 0, 0, 0, 12];
    p.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9]);
    let mut d = Decoder::new(SERVER_MAX_FRAME_LEN);
    d.extend(&p);
    assert_eq!(
        d.next_frame().unwrap(),
        Some(Frame::Ping {
            data: [1, 2, 3, 4, 5, 6, 7, 8]
        })
    );
}

#[test]
fn client_info_json_uses_go_field_names() {
    let info = ClientInfo {
        version: 2,
        can_ack_pings: true,
        ..Default::default()
    };
    assert_eq!(
        serde_json::to_string(&info).unwrap(),
        r#"{"version":2,"CanAckPings":true}"#
    );
    let parsed: ClientInfo =
        serde_json::from_str(r#"{"version":2,"CanAckPings":true,"AppName":"x","Future":1}"#)
            .unwrap();
    assert_eq!(parsed.app_name, "x");
}

/// Runs the client handshake against the server-side helpers.
fn handshake(
    client: &mut ClientCore,
    server: &NodePrivate,
    now: Instant,
) -> (NodePublic, ClientInfo) {
    client
        .handle_input(&server_key_frame(server.public()).to_bytes(), now)
        .unwrap();
    let out = client.poll_transmit().unwrap();
    let mut d = Decoder::new(SERVER_MAX_FRAME_LEN);
    d.extend(&out);
    let ci = d.next_frame().unwrap().unwrap();
    let (k, info) = open_client_info(server, &ci).unwrap();
    let si = server_info_frame(
        server,
        k,
        &ServerInfo {
            version: 2,
            ..Default::default()
        },
        [3; 24],
    );
    client.handle_input(&si.to_bytes(), now).unwrap();
    (k, info)
}

#[test]
fn client_handshake_seals_info_to_server_and_reports_connected() {
    let now = Instant::now();
    let server = NodePrivate::from_bytes([7; 32]);
    let cpriv = NodePrivate::from_bytes([8; 32]);
    let mut cfg = ClientConfig::new(cpriv.clone(), [1; 24]);
    cfg.app_name = "test".into();
    let mut c = ClientCore::new(cfg, now);
    assert_eq!(c.poll_transmit(), None);
    let (k, info) = handshake(&mut c, &server, now);
    assert_eq!(k, cpriv.public());
    assert_eq!(info.version, 2);
    assert!(info.can_ack_pings);
    assert_eq!(info.app_name, "test");
    assert_eq!(
        c.poll_event(),
        Some(ClientEvent::Connected {
            server_key: server.public(),
            info: ServerInfo {
                version: 2,
                ..Default::default()
            }
        })
    );
}

#[test]
fn client_info_sealed_to_another_key_fails_to_open() {
    let now = Instant::now();
    let mut c = ClientCore::new(
        ClientConfig::new(NodePrivate::from_bytes([8; 32]), [1; 24]),
        now,
    );
    c.handle_input(
        &server_key_frame(NodePrivate::from_bytes([7; 32]).public()).to_bytes(),
        now,
    )
    .unwrap();
    let out = c.poll_transmit().unwrap();
    let mut d = Decoder::new(SERVER_MAX_FRAME_LEN);
    d.extend(&out);
    let ci = d.next_frame().unwrap().unwrap();
    assert_eq!(
        open_client_info(&NodePrivate::from_bytes([9; 32]), &ci),
        Err(HandshakeError::Open)
    );
}

#[test]
fn fast_start_client_sends_info_immediately_and_checks_server_key() {
    let now = Instant::now();
    let server = NodePrivate::from_bytes([7; 32]);
    let mut cfg = ClientConfig::new(NodePrivate::from_bytes([8; 32]), [1; 24]);
    cfg.server_key = Some(server.public());
    cfg.preferred = true;
    let mut c = ClientCore::new(cfg, now);
    let out = c
        .poll_transmit()
        .expect("client info sent before any server bytes");
    let mut d = Decoder::new(SERVER_MAX_FRAME_LEN);
    d.extend(&out);
    assert!(matches!(
        d.next_frame().unwrap(),
        Some(Frame::ClientInfo { .. })
    ));
    assert_eq!(
        d.next_frame().unwrap(),
        Some(Frame::NotePreferred { preferred: true })
    );
    let wrong = server_key_frame(key(99)).to_bytes();
    assert!(matches!(
        c.handle_input(&wrong, now),
        Err(ClientError::ServerKeyMismatch { .. })
    ));
}

#[test]
fn packets_sent_before_server_key_are_written_after_client_info() {
    let now = Instant::now();
    let server = NodePrivate::from_bytes([7; 32]);
    let mut c = ClientCore::new(
        ClientConfig::new(NodePrivate::from_bytes([8; 32]), [1; 24]),
        now,
    );
    c.send_packet(key(5), Bytes::from_static(b"early")).unwrap();
    assert_eq!(c.poll_transmit(), None);
    c.handle_input(&server_key_frame(server.public()).to_bytes(), now)
        .unwrap();
    let mut d = Decoder::new(SERVER_MAX_FRAME_LEN);
    d.extend(&c.poll_transmit().unwrap());
    assert!(matches!(
        d.next_frame().unwrap(),
        Some(Frame::ClientInfo { .. })
    ));
    assert_eq!(
        d.next_frame().unwrap(),
        Some(Frame::SendPacket {
            dst: key(5),
            packet: Bytes::from_static(b"early")
        })
    );
}

#[test]
fn client_times_out_handshake_after_10s() {
    let now = Instant::now();
    let mut c = ClientCore::new(
        ClientConfig::new(NodePrivate::from_bytes([8; 32]), [1; 24]),
        now,
    );
    assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(10)));
    assert!(c.handle_timeout(now + Duration::from_secs(9)).is_ok());
    assert_eq!(
        c.handle_timeout(now + Duration::from_secs(10)),
        Err(ClientError::HandshakeTimeout)
    );
}

#[test]
fn client_read_deadline_is_120s_after_last_frame() {
    let now = Instant::now();
    let server = NodePrivate::from_bytes([7; 32]);
    let mut c = ClientCore::new(
        ClientConfig::new(NodePrivate::from_bytes([8; 32]), [1; 24]),
        now,
    );
    handshake(&mut c, &server, now);
    let later = now + Duration::from_secs(60);
    c.handle_input(&Frame::KeepAlive.to_bytes(), later).unwrap();
    assert_eq!(c.poll_timeout(), Some(later + Duration::from_secs(120)));
    assert!(matches!(
        c.handle_timeout(later + Duration::from_secs(120)),
        Err(ClientError::ReadTimeout(_))
    ));
}

#[test]
fn client_answers_ping_and_matches_pong() {
    let now = Instant::now();
    let server = NodePrivate::from_bytes([7; 32]);
    let mut c = ClientCore::new(
        ClientConfig::new(NodePrivate::from_bytes([8; 32]), [1; 24]),
        now,
    );
    handshake(&mut c, &server, now);
    c.poll_event();
    c.handle_input(&Frame::Ping { data: [4; 8] }.to_bytes(), now)
        .unwrap();
    assert_eq!(
        c.poll_transmit().unwrap(),
        Frame::Pong { data: [4; 8] }.to_bytes()
    );
    c.send_ping([5; 8], now);
    assert_eq!(c.poll_timeout(), Some(now + Duration::from_secs(5)));
    c.poll_transmit();
    c.handle_input(
        &Frame::Pong { data: [5; 8] }.to_bytes(),
        now + Duration::from_millis(30),
    )
    .unwrap();
    assert_eq!(
        c.poll_event(),
        Some(ClientEvent::Pong {
            data: [5; 8],
            rtt: Duration::from_millis(30)
        })
    );
    c.send_ping([6; 8], now);
    c.handle_timeout(now + Duration::from_secs(5)).unwrap();
    assert_eq!(
        c.poll_event(),
        Some(ClientEvent::PingTimeout { data: [6; 8] })
    );
}

#[test]
fn server_relays_between_two_clients_with_source_key() {
    let now = Instant::now();
    let mut s = ServerCore::new();
    s.handle_connect(ConnId(1), key(1), conn_info(1));
    s.handle_connect(ConnId(2), key(2), conn_info(2));
    s.handle_frame(
        ConnId(1),
        Frame::SendPacket {
            dst: key(2),
            packet: Bytes::from_static(b"hi"),
        },
        now,
    );
    assert_eq!(
        drain(&mut s),
        vec![Command::Send {
            conn: ConnId(2),
            frame: Frame::RecvPacket {
                src: key(1),
                packet: Bytes::from_static(b"hi")
            }
        }]
    );
    assert_eq!(s.stats().packets_delivered, 1);
}

#[test]
fn unknown_destination_drops_silently_unless_disco() {
    let now = Instant::now();
    let mut s = ServerCore::new();
    s.handle_connect(ConnId(1), key(1), conn_info(1));
    s.handle_frame(
        ConnId(1),
        Frame::SendPacket {
            dst: key(9),
            packet: Bytes::from_static(b"wg"),
        },
        now,
    );
    assert_eq!(drain(&mut s), vec![]);
    s.handle_frame(
        ConnId(1),
        Frame::SendPacket {
            dst: key(9),
            packet: disco_packet(),
        },
        now,
    );
    assert_eq!(
        drain(&mut s),
        vec![Command::Send {
            conn: ConnId(1),
            frame: Frame::PeerGone {
                key: key(9),
                reason: PeerGoneReason::NotHere
            }
        }]
    );
}

#[test]
fn not_here_replies_are_limited_to_burst_3_then_1_per_second() {
    let now = Instant::now();
    let mut s = ServerCore::new();
    s.handle_connect(ConnId(1), key(1), conn_info(1));
    let count = |s: &mut ServerCore, at: Instant| {
        for _ in 0..10 {
            s.handle_frame(
                ConnId(1),
                Frame::SendPacket {
                    dst: key(9),
                    packet: disco_packet(),
                },
                at,
            );
        }
        drain(s).len()
    };
    assert_eq!(count(&mut s, now), 3);
    assert_eq!(count(&mut s, now + Duration::from_millis(500)), 0);
    assert_eq!(count(&mut s, now + Duration::from_millis(1000)), 1);
    assert_eq!(count(&mut s, now + Duration::from_millis(3500)), 2);
}

#[test]
fn peer_gone_goes_to_past_recipients_when_last_connection_leaves() {
    let now = Instant::now();
    let mut s = ServerCore::new();
    s.handle_connect(ConnId(1), key(1), conn_info(1));
    s.handle_connect(ConnId(2), key(2), conn_info(2));
    s.handle_connect(ConnId(3), key(1), conn_info(3));
    s.handle_frame(
        ConnId(3),
        Frame::SendPacket {
            dst: key(2),
            packet: Bytes::from_static(b"x"),
        },
        now,
    );
    drain(&mut s);
    s.handle_disconnect(ConnId(3));
    assert_eq!(drain(&mut s), vec![], "2 -> 1 connections is not gone");
    s.handle_disconnect(ConnId(1));
    assert_eq!(
        drain(&mut s),
        vec![Command::Send {
            conn: ConnId(2),
            frame: Frame::PeerGone {
                key: key(1),
                reason: PeerGoneReason::Disconnected
            }
        }]
    );
}

#[test]
fn newest_duplicate_is_active_until_an_older_one_writes() {
    let now = Instant::now();
    let mut s = ServerCore::new();
    s.handle_connect(ConnId(1), key(1), conn_info(1));
    s.handle_connect(ConnId(2), key(1), conn_info(2));
    s.handle_connect(ConnId(3), key(3), conn_info(3));
    assert_eq!(s.active_conn(&key(1)), Some(ConnId(2)));
    s.handle_frame(ConnId(1), Frame::NotePreferred { preferred: true }, now);
    assert_eq!(s.active_conn(&key(1)), Some(ConnId(1)));
    s.handle_frame(
        ConnId(3),
        Frame::SendPacket {
            dst: key(1),
            packet: Bytes::from_static(b"x"),
        },
        now,
    );
    assert!(matches!(
        drain(&mut s)[..],
        [Command::Send {
            conn: ConnId(1),
            ..
        }]
    ));
    s.handle_disconnect(ConnId(1));
    assert_eq!(s.active_conn(&key(1)), Some(ConnId(2)));
    assert_eq!(s.stats().dup_connections, 1);
}

#[test]
fn mesh_only_frames_from_regular_clients_close_the_connection() {
    let now = Instant::now();
    let mut s = ServerCore::new();
    s.handle_connect(ConnId(1), key(1), conn_info(1));
    for f in [
        Frame::WatchConns,
        Frame::ClosePeer { key: key(2) },
        Frame::ForwardPacket {
            src: key(3),
            dst: key(1),
            packet: Bytes::new(),
        },
    ] {
        s.handle_frame(ConnId(1), f, now);
        assert_eq!(
            drain(&mut s),
            vec![Command::Close {
                conn: ConnId(1),
                reason: CloseReason::NotMeshPeer
            }]
        );
    }
}

#[test]
fn watcher_gets_present_for_existing_and_new_clients_and_gone_for_last() {
    let now = Instant::now();
    let mut s = ServerCore::new();
    s.handle_connect(ConnId(1), key(1), conn_info(1));
    s.handle_connect(ConnId(10), key(10), mesh_info());
    s.handle_frame(ConnId(10), Frame::WatchConns, now);
    let cmds = drain(&mut s);
    assert_eq!(
        cmds.len(),
        2,
        "both current keys, including the watcher itself"
    );
    assert!(cmds.contains(&Command::Send {
        conn: ConnId(10),
        frame: Frame::PeerPresent {
            key: key(1),
            addr: Some(conn_info(1).remote),
            flags: Some(PeerPresentFlags::IS_REGULAR)
        }
    }));
    s.handle_connect(ConnId(2), key(2), conn_info(2));
    assert!(matches!(
        &drain(&mut s)[..],
        [Command::Send {
            conn: ConnId(10),
            frame: Frame::PeerPresent { .. }
        }]
    ));
    s.handle_disconnect(ConnId(2));
    assert_eq!(
        drain(&mut s),
        vec![Command::Send {
            conn: ConnId(10),
            frame: Frame::PeerGone {
                key: key(2),
                reason: PeerGoneReason::Disconnected
            }
        }]
    );
}

#[test]
fn close_peer_from_mesh_closes_every_connection_of_the_key() {
    let now = Instant::now();
    let mut s = ServerCore::new();
    s.handle_connect(ConnId(1), key(1), conn_info(1));
    s.handle_connect(ConnId(2), key(1), conn_info(2));
    s.handle_connect(ConnId(10), key(10), mesh_info());
    s.handle_frame(ConnId(10), Frame::ClosePeer { key: key(1) }, now);
    assert_eq!(
        drain(&mut s),
        vec![
            Command::Close {
                conn: ConnId(1),
                reason: CloseReason::ClosePeer
            },
            Command::Close {
                conn: ConnId(2),
                reason: CloseReason::ClosePeer
            },
        ]
    );
}

#[test]
fn server_answers_ping_with_pong() {
    let now = Instant::now();
    let mut s = ServerCore::new();
    s.handle_connect(ConnId(1), key(1), conn_info(1));
    s.handle_frame(ConnId(1), Frame::Ping { data: [1; 8] }, now);
    assert_eq!(
        drain(&mut s),
        vec![Command::Send {
            conn: ConnId(1),
            frame: Frame::Pong { data: [1; 8] }
        }]
    );
}

/// Two server cores A and B, each a mesh watcher of the other. The harness plays
/// the drivers: A's mesh client to B carries WatchConns/ForwardPacket frames.
#[test]
fn mesh_forwards_between_two_server_cores_one_hop_only() {
    let now = Instant::now();
    let (mut a, mut b) = (ServerCore::new(), ServerCore::new());
    let a_key = key(100);
    let b_key = key(200);
    // A's mesh client is connection 50 on B; B's is connection 50 on A.
    b.handle_connect(ConnId(50), a_key, mesh_info());
    a.handle_connect(ConnId(50), b_key, mesh_info());
    b.handle_frame(ConnId(50), Frame::WatchConns, now);
    a.handle_frame(ConnId(50), Frame::WatchConns, now);
    let peer_b = MeshPeer(1); // on A: the link to B
    let peer_a = MeshPeer(1); // on B: the link to A

    // Feed watcher notifications from one core into the other's routes.
    fn pump(
        from: &mut ServerCore,
        to: &mut ServerCore,
        via: MeshPeer,
        self_key: NodePublic,
    ) -> Vec<Command> {
        let mut rest = Vec::new();
        for c in drain(from) {
            match c {
                Command::Send {
                    conn: ConnId(50),
                    frame: Frame::PeerPresent { key, .. },
                } if key != self_key => to.handle_mesh_peer_present(via, key),
                Command::Send {
                    conn: ConnId(50),
                    frame: Frame::PeerGone { key, .. },
                } => to.handle_mesh_peer_gone(via, key),
                Command::Send {
                    conn: ConnId(50), ..
                } => {}
                other => rest.push(other),
            }
        }
        rest
    }
    pump(&mut a, &mut b, peer_a, b_key);
    pump(&mut b, &mut a, peer_b, a_key);

    a.handle_connect(ConnId(1), key(1), conn_info(1));
    b.handle_connect(ConnId(2), key(2), conn_info(2));
    pump(&mut a, &mut b, peer_a, b_key);
    pump(&mut b, &mut a, peer_b, a_key);
    assert_eq!(a.mesh_route(&key(2)), Some(peer_b));
    assert_eq!(b.mesh_route(&key(1)), Some(peer_a));

    // key(1) on A sends to key(2) on B.
    a.handle_frame(
        ConnId(1),
        Frame::SendPacket {
            dst: key(2),
            packet: Bytes::from_static(b"over mesh"),
        },
        now,
    );
    let cmds = drain(&mut a);
    let [Command::Forward {
        peer,
        src,
        dst,
        packet,
    }] = &cmds[..]
    else {
        panic!("{cmds:?}")
    };
    assert_eq!((*peer, *src, *dst), (peer_b, key(1), key(2)));
    // A's driver writes ForwardPacket on its mesh connection into B.
    b.handle_frame(
        ConnId(50),
        Frame::ForwardPacket {
            src: *src,
            dst: *dst,
            packet: packet.clone(),
        },
        now,
    );
    assert_eq!(
        drain(&mut b),
        vec![Command::Send {
            conn: ConnId(2),
            frame: Frame::RecvPacket {
                src: key(1),
                packet: Bytes::from_static(b"over mesh")
            }
        }]
    );

    // A ForwardPacket for a key B only knows via mesh is not forwarded again.
    b.handle_frame(
        ConnId(50),
        Frame::ForwardPacket {
            src: key(2),
            dst: key(1),
            packet: Bytes::from_static(b"loop"),
        },
        now,
    );
    assert_eq!(drain(&mut b), vec![]);
    assert_eq!(b.stats().dropped_unknown_on_fwd, 1);

    // key(2) leaves B: A drops its route; a mesh link loss clears the rest.
    b.handle_disconnect(ConnId(2));
    pump(&mut b, &mut a, peer_b, a_key);
    assert_eq!(a.mesh_route(&key(2)), None);
    a.handle_mesh_peer_present(peer_b, key(7));
    a.handle_mesh_peer_down(peer_b);
    assert_eq!(a.mesh_route(&key(7)), None);
}

#[test]
fn local_client_wins_over_mesh_route() {
    let now = Instant::now();
    let mut s = ServerCore::new();
    s.handle_connect(ConnId(1), key(1), conn_info(1));
    s.handle_connect(ConnId(2), key(2), conn_info(2));
    s.handle_mesh_peer_present(MeshPeer(3), key(2));
    s.handle_frame(
        ConnId(1),
        Frame::SendPacket {
            dst: key(2),
            packet: Bytes::from_static(b"x"),
        },
        now,
    );
    assert!(matches!(
        drain(&mut s)[..],
        [Command::Send {
            conn: ConnId(2),
            ..
        }]
    ));
}

#[derive(Debug, Clone)]
enum Op {
    Connect(u8),
    Disconnect(usize),
    Send { from: usize, dst: u8 },
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4).prop_map(Op::Connect),
        (0usize..8).prop_map(Op::Disconnect),
        (0usize..8, 0u8..5).prop_map(|(from, dst)| Op::Send { from, dst }),
    ]
}

proptest! {
    /// Reference model: per key, connections in connect order and an active one
    /// (newest on connect, last writer on frames, newest survivor on disconnect).
    #[test]
    fn server_core_matches_a_reference_model(ops in proptest::collection::vec(arb_op(), 1..60)) {
        let now = Instant::now();
        let mut s = ServerCore::new();
        let mut next = 1u64;
        let mut open: Vec<(ConnId, u8)> = Vec::new();
        let mut model: std::collections::BTreeMap<u8, (Vec<ConnId>, ConnId)> = Default::default();
        for op in ops {
            match op {
                Op::Connect(k) => {
                    let c = ConnId(next);
                    next += 1;
                    s.handle_connect(c, key(k), conn_info(c.0 as u16));
                    open.push((c, k));
                    let e = model.entry(k).or_insert_with(|| (Vec::new(), c));
                    e.0.push(c);
                    e.1 = c;
                    prop_assert!(drain(&mut s).is_empty(), "no watchers, no output");
                }
                Op::Disconnect(i) => {
                    if open.is_empty() { continue; }
                    let (c, k) = open.remove(i % open.len());
                    s.handle_disconnect(c);
                    let gone = {
                        let e = model.get_mut(&k).unwrap();
                        e.0.retain(|x| *x != c);
                        if let Some(n) = e.0.last() { if e.1 == c { e.1 = *n; } }
                        e.0.is_empty()
                    };
                    if gone { model.remove(&k); }
                    for cmd in drain(&mut s) {
                        let Command::Send { conn, frame: Frame::PeerGone { key: gk, reason: PeerGoneReason::Disconnected } } = cmd else {
                            return Err(TestCaseError::fail(format!("unexpected {cmd:?}")));
                        };
                        prop_assert!(gone && gk == key(k));
                        prop_assert!(open.iter().any(|(oc, _)| *oc == conn));
                    }
                }
                Op::Send { from, dst } => {
                    if open.is_empty() { continue; }
                    let (c, k) = open[from % open.len()];
                    s.handle_frame(c, Frame::SendPacket { dst: key(dst), packet: Bytes::from_static(b"p") }, now);
                    // The sender becomes its key's active connection.
                    model.get_mut(&k).unwrap().1 = c;
                    let cmds = drain(&mut s);
                    match model.get(&dst) {
                        Some((_, active)) => prop_assert_eq!(cmds, vec![Command::Send {
                            conn: *active,
                            frame: Frame::RecvPacket { src: key(k), packet: Bytes::from_static(b"p") },
                        }]),
                        None => prop_assert!(cmds.is_empty()),
                    }
                }
            }
            for k in 0u8..5 {
                prop_assert_eq!(s.is_connected(&key(k)), model.contains_key(&k));
                prop_assert_eq!(s.active_conn(&key(k)), model.get(&k).map(|e| e.1));
            }
            prop_assert_eq!(s.stats().connections as usize, open.len());
        }
    }
}
