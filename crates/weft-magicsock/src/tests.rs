// A base instant for virtual time; nothing below waits on the real clock.
#![allow(clippy::disallowed_methods)]

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

struct Node {
    sock: Magicsock,
    addr: SocketAddr,
    ip: IpAddr,
    delivered: Vec<Vec<u8>>,
    events: Vec<Event>,
}

fn node(n: u8, udp_reachable: bool, now: Instant) -> Node {
    let cfg = Config {
        node_private: NodePrivate::from_bytes([n; 32]),
        disco_private: DiscoPrivate::from_bytes([n + 100; 32]),
    };
    let mut sock = Magicsock::new(cfg, [n; 32], now);
    let addr: SocketAddr = format!("192.0.2.{n}:41641").parse().expect("addr");
    sock.set_derp_map(
        vec![DerpRegion {
            id: 900,
            stun: vec![],
        }],
        now,
    );
    if udp_reachable {
        sock.set_own_endpoints(vec![addr], now);
    }
    Node {
        sock,
        addr,
        ip: IpAddr::from([100, 64, 0, n]),
        delivered: Vec::new(),
        events: Vec::new(),
    }
}

fn peer_cfg(n: &Node) -> PeerConfig {
    PeerConfig {
        node_key: n.sock.node_public(),
        disco_key: n.sock.disco_public(),
        home_derp: Some(900),
        endpoints: n.sock.endpoints().iter().map(|e| e.addr).collect(),
        allowed_ips: vec![IpNet::from(n.ip)],
    }
}

/// A two-node world with zero latency: UDP works only between reachable nodes.
struct World {
    nodes: [Node; 2],
    udp_ok: bool,
    now: Instant,
    udp_sent: usize,
    derp_sent: usize,
}

impl World {
    fn new(udp_ok: bool) -> Self {
        let now = Instant::now();
        let mut a = node(1, udp_ok, now);
        let mut b = node(2, udp_ok, now);
        let (ca, cb) = (peer_cfg(&a), peer_cfg(&b));
        a.sock.set_peers(vec![cb], now);
        b.sock.set_peers(vec![ca], now);
        Self {
            nodes: [a, b],
            udp_ok,
            now,
            udp_sent: 0,
            derp_sent: 0,
        }
    }

    /// Delivers everything queued, repeatedly, without advancing time.
    fn flush(&mut self) {
        loop {
            let mut moved = false;
            for i in 0..2 {
                let j = 1 - i;
                while let Some(t) = self.nodes[i].sock.poll_transmit() {
                    moved = true;
                    let (from_addr, from_key) =
                        (self.nodes[i].addr, self.nodes[i].sock.node_public());
                    let now = self.now;
                    let dst = &mut self.nodes[j];
                    match t.dst {
                        Destination::Udp(a) if a == dst.addr && self.udp_ok => {
                            self.udp_sent += 1;
                            let _ = dst
                                .sock
                                .handle_datagram(dst.addr, from_addr, &t.payload, now);
                        }
                        Destination::Udp(_) => {}
                        Destination::Derp { peer, region } => {
                            assert_eq!(peer, dst.sock.node_public());
                            self.derp_sent += 1;
                            let _ = dst
                                .sock
                                .handle_derp_packet(region, from_key, &t.payload, now);
                        }
                    }
                }
                while let Some(p) = self.nodes[i].sock.poll_ip_packet() {
                    self.nodes[i].delivered.push(p);
                }
                while let Some(e) = self.nodes[i].sock.poll_event() {
                    self.nodes[i].events.push(e);
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        loop {
            self.flush();
            let next = self
                .nodes
                .iter()
                .filter_map(|n| n.sock.poll_timeout())
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    for n in &mut self.nodes {
                        n.sock.handle_timeout(self.now);
                    }
                }
                _ => break,
            }
        }
        self.now = end;
        self.flush();
    }

    fn send(&mut self, from: usize, payload: &[u8]) -> Result<(), SendError> {
        let pkt = ipv4_udp(self.nodes[from].ip, self.nodes[1 - from].ip, payload);
        let r = self.nodes[from].sock.handle_ip_packet(&pkt, self.now);
        self.flush();
        r
    }
}

fn ipv4_udp(src: IpAddr, dst: IpAddr, payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
        panic!("v4 only")
    };
    let len = 28 + payload.len();
    let mut p = vec![
        0x45,
        0,
        (len >> 8) as u8,
        len as u8,
        0,
        0,
        0,
        0,
        64,
        17,
        0,
        0,
    ];
    p.extend_from_slice(&s.octets());
    p.extend_from_slice(&d.octets());
    p.extend_from_slice(&[0x30, 0x39, 0x30, 0x39, 0, (8 + payload.len()) as u8, 0, 0]);
    p.extend_from_slice(payload);
    p
}

#[test]
fn packet_to_an_unrouted_address_is_refused() {
    let mut w = World::new(true);
    let pkt = ipv4_udp(w.nodes[0].ip, IpAddr::from([100, 64, 9, 9]), b"x");
    assert_eq!(
        w.nodes[0].sock.handle_ip_packet(&pkt, w.now),
        Err(SendError::NoRoute(IpAddr::from([100, 64, 9, 9])))
    );
    assert_eq!(
        w.nodes[0].sock.handle_ip_packet(&[0x10, 1, 2], w.now),
        Err(SendError::NotIp)
    );
}

#[test]
fn without_udp_packets_flow_over_derp_and_the_path_stays_derp() {
    let mut w = World::new(false);
    w.send(0, b"hello").expect("send");
    assert_eq!(w.nodes[1].delivered.len(), 1);
    assert!(w.nodes[1].delivered[0].ends_with(b"hello"));
    w.send(1, b"back").expect("send");
    assert!(w.nodes[0].delivered.iter().any(|p| p.ends_with(b"back")));
    w.advance(Duration::from_secs(20));
    assert_eq!(
        w.nodes[0].sock.path(&w.nodes[1].sock.node_public(), w.now),
        Path::Derp(900)
    );
    assert_eq!(w.udp_sent, 0);
}

#[test]
fn with_udp_the_path_upgrades_to_direct_and_data_stops_using_derp() {
    let mut w = World::new(true);
    w.send(0, b"hello").expect("send");
    assert_eq!(w.nodes[1].delivered.len(), 1);
    let b_key = w.nodes[1].sock.node_public();
    let b_addr = w.nodes[1].addr;
    assert_eq!(w.nodes[0].sock.path(&b_key, w.now), Path::Direct(b_addr));
    assert!(w.nodes[0].events.contains(&Event::PathChanged {
        peer: b_key,
        path: Path::Direct(b_addr)
    }));
    let derp_before = w.derp_sent;
    w.send(0, b"again").expect("send");
    assert_eq!(
        w.derp_sent, derp_before,
        "trusted direct path carries data alone"
    );
    assert_eq!(w.nodes[1].delivered.len(), 2);
}

#[test]
fn heartbeats_keep_the_path_trusted_while_active_and_stop_when_idle() {
    let mut w = World::new(true);
    w.send(0, b"hello").expect("send");
    let b_key = w.nodes[1].sock.node_public();
    for _ in 0..5 {
        w.advance(Duration::from_secs(5));
        w.send(0, b"tick").expect("send");
        assert!(matches!(
            w.nodes[0].sock.path(&b_key, w.now),
            Path::Direct(_)
        ));
    }
    w.advance(SESSION_ACTIVE_TIMEOUT + Duration::from_secs(10));
    assert_eq!(
        w.nodes[0].sock.timers.get(Timer::Heartbeat(b_key)),
        None,
        "idle peers stop heartbeating"
    );
    assert_eq!(
        w.nodes[0].sock.path(&b_key, w.now),
        Path::Derp(900),
        "without pongs trust lapses"
    );
}

#[test]
fn cli_ping_reports_derp_then_direct() {
    let mut w = World::new(true);
    let b_key = w.nodes[1].sock.node_public();
    w.nodes[0].sock.ping(b_key, w.now).expect("ping");
    w.flush();
    let pongs: Vec<&Event> = w.nodes[0]
        .events
        .iter()
        .filter(|e| matches!(e, Event::Pong { .. }))
        .collect();
    assert!(pongs.iter().any(|e| matches!(
        e,
        Event::Pong {
            via: Path::Derp(900),
            ..
        }
    )));
    w.nodes[0].events.clear();
    w.nodes[0].sock.ping(b_key, w.now + ms(1)).expect("ping");
    w.flush();
    assert!(w.nodes[0]
        .events
        .iter()
        .any(|e| matches!(e, Event::Pong { via: Path::Direct(a), src, .. } if *a == w.nodes[1].addr && *src == w.nodes[0].addr)));
}

#[test]
fn disco_from_strangers_and_call_me_maybe_over_udp_are_dropped() {
    let mut w = World::new(true);
    let stranger = DiscoPrivate::from_bytes([77; 32]);
    let pkt = disco::seal(
        &stranger,
        &w.nodes[0].sock.disco_public(),
        &Message::Ping(Ping {
            tx_id: [1; 12],
            node_key: None,
            padding: 0,
        }),
        [0; 24],
    );
    let (addr, from) = (w.nodes[0].addr, w.nodes[1].addr);
    assert_eq!(
        w.nodes[0].sock.handle_datagram(addr, from, &pkt, w.now),
        Err(RecvError::UnknownDiscoSender)
    );
    let b_disco = DiscoPrivate::from_bytes([102; 32]);
    let cmm = disco::seal(
        &b_disco,
        &w.nodes[0].sock.disco_public(),
        &Message::CallMeMaybe(CallMeMaybe {
            endpoints: vec![from],
        }),
        [0; 24],
    );
    assert_eq!(
        w.nodes[0].sock.handle_datagram(addr, from, &cmm, w.now),
        Err(RecvError::CallMeMaybeNotViaDerp)
    );
    assert!(w.nodes[0].sock.poll_transmit().is_none());
    assert_eq!(
        w.nodes[0]
            .sock
            .handle_datagram(addr, from, &[4, 0, 0, 0, 9, 9, 9], w.now),
        Err(RecvError::Wg(WgError::Malformed))
    );
}

#[test]
fn stun_reply_sets_endpoints_and_home_region() {
    let now = Instant::now();
    let mut n = node(1, false, now);
    let stun_addr: SocketAddr = "198.51.100.1:3478".parse().expect("addr");
    n.sock.set_derp_map(
        vec![
            DerpRegion {
                id: 900,
                stun: vec![],
            },
            DerpRegion {
                id: 901,
                stun: vec![stun_addr],
            },
        ],
        now,
    );
    n.sock.handle_timeout(now);
    let t = n.sock.poll_transmit().expect("stun probe");
    assert_eq!(t.dst, Destination::Udp(stun_addr));
    let mapped: SocketAddr = "203.0.113.5:61000".parse().expect("addr");
    let reply = stun::respond(&t.payload, mapped).expect("a tailnode binding request");
    n.sock
        .handle_datagram(n.addr, stun_addr, &reply, now + ms(20))
        .expect("stun");
    let events: Vec<Event> = std::iter::from_fn(|| n.sock.poll_event()).collect();
    assert!(events.contains(&Event::EndpointsChanged(vec![Endpoint {
        addr: mapped,
        kind: EndpointKind::Stun
    }])));
    assert!(events.contains(&Event::HomeDerpChanged(901)));
    assert_eq!(
        n.sock.handle_datagram(n.addr, stun_addr, &reply, now),
        Err(RecvError::UnsolicitedStun)
    );
}

#[test]
fn better_addr_prefers_faster_and_private_paths_with_hysteresis() {
    let a = |s: &str, l: u64| BestAddr {
        addr: s.parse().expect("addr"),
        latency: ms(l),
    };
    assert!(better_addr(&a("1.1.1.1:1", 10), &a("2.2.2.2:1", 50)));
    assert!(!better_addr(&a("1.1.1.1:1", 50), &a("2.2.2.2:1", 10)));
    assert!(
        !better_addr(&a("1.1.1.1:1", 100), &a("2.2.2.2:1", 101)),
        "1% faster is not enough"
    );
    assert!(
        better_addr(&a("192.168.1.2:1", 10), &a("2.2.2.2:1", 10)),
        "private beats public at equal speed"
    );
}

#[test]
fn a_peer_that_restarts_with_a_new_disco_key_is_rediscovered() {
    let mut w = World::new(true);
    w.send(0, b"hello").expect("send");
    let b_key = w.nodes[1].sock.node_public();
    assert!(matches!(
        w.nodes[0].sock.path(&b_key, w.now),
        Path::Direct(_)
    ));
    // b restarts: new disco key, same node key; control tells a.
    let cfg = Config {
        node_private: NodePrivate::from_bytes([2; 32]),
        disco_private: DiscoPrivate::from_bytes([55; 32]),
    };
    w.nodes[1].sock = Magicsock::new(cfg, [9; 32], w.now);
    w.nodes[1].sock.set_derp_map(
        vec![DerpRegion {
            id: 900,
            stun: vec![],
        }],
        w.now,
    );
    let b_addr = w.nodes[1].addr;
    w.nodes[1].sock.set_own_endpoints(vec![b_addr], w.now);
    let (ca, cb) = (peer_cfg(&w.nodes[0]), peer_cfg(&w.nodes[1]));
    w.nodes[1].sock.set_peers(vec![ca], w.now);
    w.nodes[0].sock.set_peers(vec![cb], w.now);
    assert_eq!(
        w.nodes[0].sock.path(&b_key, w.now),
        Path::Derp(900),
        "old direct path forgotten"
    );
    w.advance(ms(100));
    w.send(0, b"after restart").expect("send");
    w.advance(Duration::from_secs(10));
    w.send(0, b"again").expect("send");
    assert!(w.nodes[1].delivered.iter().any(|p| p.ends_with(b"again")));
    assert_eq!(w.nodes[0].sock.path(&b_key, w.now), Path::Direct(b_addr));
}

#[test]
fn removed_peers_lose_their_session_and_route() {
    let mut w = World::new(true);
    w.send(0, b"hello").expect("send");
    w.nodes[0].sock.set_peers(vec![], w.now);
    let pkt = ipv4_udp(w.nodes[0].ip, w.nodes[1].ip, b"x");
    assert_eq!(
        w.nodes[0].sock.handle_ip_packet(&pkt, w.now),
        Err(SendError::NoRoute(w.nodes[1].ip))
    );
    assert!(w.nodes[0].sock.peer_status(w.now).is_empty());
}

#[test]
fn peer_gone_forgets_the_derp_route_but_not_the_home_region() {
    let mut w = World::new(false);
    w.send(1, b"hi").expect("send");
    let b_key = w.nodes[1].sock.node_public();
    w.nodes[0].sock.handle_derp_peer_gone(900, b_key, w.now);
    assert_eq!(w.nodes[0].sock.path(&b_key, w.now), Path::Derp(900));
}

#[test]
fn tsmp_disco_key_advertisements_never_reach_tun() {
    let mut ip = vec![
        0x45, 0, 0, 53, 0, 0, 0, 0, 64, 99, 0, 0, 100, 64, 0, 2, 100, 64, 0, 1,
    ];
    ip.push(b'a');
    ip.extend_from_slice(&[7; 32]);
    assert_eq!(tsmp_disco_key(&ip), Some(DiscoPublic::from_bytes([7; 32])));
    ip[20] = b'p';
    assert_eq!(tsmp_disco_key(&ip), None);
    assert_eq!(tsmp_disco_key(&ip[..25]), None);

    let mut w = World::new(false);
    w.send(0, b"hello").expect("send");
    let mut adv = vec![
        0x45, 0, 0, 53, 0, 0, 0, 0, 64, 99, 0, 0, 100, 64, 0, 2, 100, 64, 0, 1, b'a',
    ];
    adv.extend_from_slice(&[7; 32]);
    let before = w.nodes[0].delivered.len();
    w.nodes[1].sock.handle_ip_packet(&adv, w.now).expect("send");
    w.flush();
    assert_eq!(w.nodes[0].delivered.len(), before);
    let b = w.nodes[1].sock.node_public();
    assert_eq!(
        w.nodes[0].sock.peers[&b].cfg.disco_key,
        DiscoPublic::from_bytes([7; 32])
    );
}

mod garbage {
    use super::*;
    use proptest::prelude::*;

    fn prefixed() -> impl Strategy<Value = Vec<u8>> {
        let prefixes: Vec<Vec<u8>> = vec![
            vec![],
            disco::MAGIC.to_vec(),
            vec![1, 0, 0, 0],
            vec![2, 0, 0, 0],
            vec![3, 0, 0, 0],
            vec![4, 0, 0, 0],
            vec![1, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42],
            vec![0x45, 0],
            vec![0x60, 0],
        ];
        (
            proptest::sample::select(prefixes),
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(mut p, r)| {
                p.extend(r);
                p
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn arbitrary_input_never_panics(bytes in prefixed()) {
            let mut w = World::new(true);
            let (a, from) = (w.nodes[0].addr, w.nodes[1].addr);
            let b_key = w.nodes[1].sock.node_public();
            let now = w.now;
            let s = &mut w.nodes[0].sock;
            let _ = s.handle_datagram(a, from, &bytes, now);
            let _ = s.handle_derp_packet(900, b_key, &bytes, now);
            let _ = s.handle_derp_packet(900, NodePublic::from_bytes([42; 32]), &bytes, now);
            let _ = s.handle_ip_packet(&bytes, now);
            s.handle_timeout(now + Duration::from_secs(10));
            while s.poll_transmit().is_some() {}
        }
    }
}

#[test]
fn fast_paths_carry_data_without_queues_once_direct() {
    let mut w = World::new(true);
    w.send(0, b"hello").expect("send");
    let (a_addr, b_addr) = (w.nodes[0].addr, w.nodes[1].addr);
    let pkt = ipv4_udp(w.nodes[0].ip, w.nodes[1].ip, b"fast");
    let mut out = vec![0u8; 2048];
    let (dst, len) = w.nodes[0]
        .sock
        .encapsulate_direct(&pkt, w.now, &mut out)
        .expect("encap")
        .expect("fast");
    assert_eq!(dst, b_addr);
    assert!(w.nodes[0].sock.poll_transmit().is_none(), "nothing queued");
    let mut plain = vec![0u8; 2048];
    let n = w.nodes[1]
        .sock
        .decapsulate_direct(b_addr, a_addr, &out[..len], w.now, &mut plain)
        .expect("decap")
        .expect("fast");
    assert_eq!(&plain[..n], &pkt[..]);
    assert_eq!(
        w.nodes[1]
            .sock
            .decapsulate_direct(b_addr, a_addr, &out[..len], w.now, &mut plain),
        Err(RecvError::Wg(WgError::Rejected("duplicate counter"))),
        "replays are refused"
    );
}

#[test]
fn fast_path_falls_back_to_queues_without_a_trusted_path() {
    let mut w = World::new(false);
    let pkt = ipv4_udp(w.nodes[0].ip, w.nodes[1].ip, b"slow");
    let mut out = vec![0u8; 2048];
    assert_eq!(
        w.nodes[0].sock.encapsulate_direct(&pkt, w.now, &mut out),
        Ok(None)
    );
    w.flush();
    assert!(w.nodes[1].delivered.iter().any(|p| p == &pkt));
}

#[test]
fn replies_use_the_derp_region_the_peer_was_heard_on() {
    let mut w = World::new(false);
    let pkt = ipv4_udp(w.nodes[1].ip, w.nodes[0].ip, b"via 901");
    w.nodes[1].sock.handle_ip_packet(&pkt, w.now).expect("send");
    let b_key = w.nodes[1].sock.node_public();
    // Deliver b's handshake initiation through region 901 instead of b's home (900).
    while let Some(t) = w.nodes[1].sock.poll_transmit() {
        if matches!(t.dst, Destination::Derp { .. }) {
            let _ = w.nodes[0]
                .sock
                .handle_derp_packet(901, b_key, &t.payload, w.now);
        }
    }
    let replies: Vec<Transmit> = std::iter::from_fn(|| w.nodes[0].sock.poll_transmit()).collect();
    assert!(replies.iter().any(|t| t.dst
        == Destination::Derp {
            region: 901,
            peer: b_key
        }));
    assert!(!replies
        .iter()
        .any(|t| matches!(t.dst, Destination::Derp { region: 900, .. })));
    assert_eq!(w.nodes[0].sock.path(&b_key, w.now), Path::Derp(901));
    // After PeerGone from 901 the home region is used again.
    w.nodes[0].sock.handle_derp_peer_gone(901, b_key, w.now);
    assert_eq!(w.nodes[0].sock.path(&b_key, w.now), Path::Derp(900));
    // A route not refreshed for a minute yields to the home region too.
    let later = w.now + DERP_ROUTE_FRESH + ms(1);
    let _ = w.nodes[0]
        .sock
        .handle_derp_packet(901, b_key, &[0; 8], w.now);
    assert_eq!(w.nodes[0].sock.path(&b_key, later), Path::Derp(900));
}

#[test]
fn a_duplicated_ping_is_answered_once() {
    let mut w = World::new(true);
    let (a_addr, b_addr) = (w.nodes[0].addr, w.nodes[1].addr);
    let b_disco = DiscoPrivate::from_bytes([102; 32]);
    let ping = disco::seal(
        &b_disco,
        &w.nodes[0].sock.disco_public(),
        &Message::Ping(Ping {
            tx_id: [5; 12],
            node_key: Some(w.nodes[1].sock.node_public()),
            padding: 0,
        }),
        [1; 24],
    );
    w.nodes[0]
        .sock
        .handle_datagram(a_addr, b_addr, &ping, w.now)
        .expect("ping");
    let first: Vec<Transmit> = std::iter::from_fn(|| w.nodes[0].sock.poll_transmit()).collect();
    assert!(
        first.iter().any(|t| t.dst == Destination::Udp(b_addr)),
        "pong sent"
    );
    w.nodes[0]
        .sock
        .handle_datagram(a_addr, b_addr, &ping, w.now)
        .expect("dup");
    assert!(
        w.nodes[0].sock.poll_transmit().is_none(),
        "duplicate ignored"
    );
}
