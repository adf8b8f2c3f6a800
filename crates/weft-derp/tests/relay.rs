//! Loopback tests of the DERP server and client drivers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft_derp::client::{ClientOptions, DerpClient, TlsMode};
use weft_derp::standalone::{self, Running, StandaloneConfig, TlsSource};
use weft_derp::verify::UrlVerifier;
use weft_derp::{mesh, DerpServer, ServerOptions};
use weft_key::{NodePrivate, NodePublic};
use weft_proto::derp::{ClientConfig, ClientCore, ClientEvent, PeerGoneReason};

const DEADLINE: Duration = Duration::from_secs(10);

fn config(dir: &tempfile::TempDir, name: &str, tls: TlsSource) -> StandaloneConfig {
    StandaloneConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        tls,
        http_port: None,
        stun_addr: Some("127.0.0.1:0".parse().unwrap()),
        key_file: dir.path().join(format!("{name}.key")),
        mesh_with: vec![],
        mesh_key_file: None,
        mesh_tls: TlsMode::InsecureForTests,
        verify_clients: None,
        verify_fail_open: false,
    }
}

async fn plain_server(dir: &tempfile::TempDir, name: &str) -> Running {
    standalone::start(config(dir, name, TlsSource::None))
        .await
        .unwrap()
}

fn url(r: &Running) -> String {
    format!("http://{}/derp", r.derp_addr)
}

async fn connect(url: &str) -> DerpClient {
    DerpClient::connect(url, NodePrivate::generate(), ClientOptions::default())
        .await
        .unwrap()
}

async fn recv_within(c: &mut DerpClient) -> (NodePublic, Bytes) {
    tokio::time::timeout(DEADLINE, c.recv())
        .await
        .expect("packet within deadline")
        .unwrap()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn two_clients_exchange_packets_through_one_server() {
    let dir = tempfile::tempdir().unwrap();
    let srv = plain_server(&dir, "a").await;
    let mut a = connect(&url(&srv)).await;
    let mut b = connect(&url(&srv)).await;
    assert_eq!(a.server_key(), srv.server.public_key());
    a.send(b.public_key(), Bytes::from_static(b"hello b"))
        .await
        .unwrap();
    assert_eq!(
        recv_within(&mut b).await,
        (a.public_key(), Bytes::from_static(b"hello b"))
    );
    b.send(a.public_key(), Bytes::from_static(b"hello a"))
        .await
        .unwrap();
    assert_eq!(
        recv_within(&mut a).await,
        (b.public_key(), Bytes::from_static(b"hello a"))
    );
    let rtt = a.ping().await.unwrap();
    assert!(rtt < DEADLINE);
}

#[tokio::test]
async fn tls_with_meta_cert_uses_fast_start_and_relays() {
    let dir = tempfile::tempdir().unwrap();
    let srv = standalone::start(config(
        &dir,
        "t",
        TlsSource::SelfSigned(vec!["localhost".into()]),
    ))
    .await
    .unwrap();
    let u = format!("https://localhost:{}/derp", srv.derp_addr.port());
    let opts = ClientOptions {
        dial_addr: Some(srv.derp_addr.to_string()),
        tls: TlsMode::PinnedSha256(srv.cert_sha256.unwrap()),
        ..Default::default()
    };
    let mut a = DerpClient::connect(&u, NodePrivate::generate(), opts.clone())
        .await
        .unwrap();
    let no_fast = ClientOptions {
        fast_start: false,
        ..opts.clone()
    };
    let mut b = DerpClient::connect(&u, NodePrivate::generate(), no_fast)
        .await
        .unwrap();
    assert!(a.used_fast_start());
    assert!(!b.used_fast_start());
    a.send(b.public_key(), Bytes::from_static(b"over tls"))
        .await
        .unwrap();
    assert_eq!(recv_within(&mut b).await.1, Bytes::from_static(b"over tls"));
    b.send(a.public_key(), Bytes::from_static(b"back"))
        .await
        .unwrap();
    assert_eq!(recv_within(&mut a).await.1, Bytes::from_static(b"back"));

    let wrong_pin = ClientOptions {
        tls: TlsMode::PinnedSha256([0; 32]),
        ..opts
    };
    assert!(DerpClient::connect(&u, NodePrivate::generate(), wrong_pin)
        .await
        .is_err());
}

#[tokio::test]
async fn embedded_router_serves_derp_and_probes() {
    let server = DerpServer::new(NodePrivate::generate(), ServerOptions::default());
    let ln = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = ln.local_addr().unwrap();
    let app = server.router();
    tokio::spawn(async move {
        axum::serve(ln, app.into_make_service_with_connect_info::<SocketAddr>())
            .await
            .unwrap();
    });
    let u = format!("http://{addr}/derp");
    let mut a = connect(&u).await;
    let mut b = connect(&u).await;
    a.send(b.public_key(), Bytes::from_static(b"via axum"))
        .await
        .unwrap();
    assert_eq!(recv_within(&mut b).await.1, Bytes::from_static(b"via axum"));
    drop(b.send(a.public_key(), Bytes::from_static(b"x")).await);
    assert_eq!(recv_within(&mut a).await.1, Bytes::from_static(b"x"));

    let resp = http_get(addr, "GET /generate_204 HTTP/1.1\r\nHost: x\r\nX-Tailscale-Challenge: ts_1.2.3.4\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 204"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("x-tailscale-response: response ts_1.2.3.4"),
        "{resp}"
    );
    let resp = http_get(
        addr,
        "HEAD /derp/probe HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let resp = http_get(addr, "POST /derp/latency-check HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
    let resp = http_get(
        addr,
        "GET /derp HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 426"), "{resp}");
}

#[tokio::test]
async fn raw_front_answers_probes_and_challenge() {
    let dir = tempfile::tempdir().unwrap();
    let srv = plain_server(&dir, "p").await;
    let resp = http_get(srv.derp_addr, "GET /generate_204 HTTP/1.1\r\nHost: x\r\nX-Tailscale-Challenge: bad challenge!\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 204"), "{resp}");
    assert!(
        !resp.to_ascii_lowercase().contains("x-tailscale-response"),
        "{resp}"
    );
    let resp = http_get(
        srv.derp_addr,
        "GET /derp/latency-check HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("access-control-allow-origin: *"),
        "{resp}"
    );
}

async fn http_get(addr: SocketAddr, req: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn peer_gone_reaches_past_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let srv = plain_server(&dir, "g").await;
    let a = connect(&url(&srv)).await;
    let mut b = connect(&url(&srv)).await;
    let a_key = a.public_key();
    a.send(b.public_key(), Bytes::from_static(b"x"))
        .await
        .unwrap();
    recv_within(&mut b).await;
    drop(a);
    let ev = tokio::time::timeout(DEADLINE, b.recv_event())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ev,
        ClientEvent::PeerGone {
            key: a_key,
            reason: PeerGoneReason::Disconnected
        }
    );
}

#[tokio::test]
async fn clients_on_two_meshed_servers_reach_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let mesh_key = "ab".repeat(32);
    std::fs::write(dir.path().join("mesh.key"), format!("{mesh_key}\n")).unwrap();
    let mut c1 = config(&dir, "m1", TlsSource::None);
    c1.mesh_key_file = Some(dir.path().join("mesh.key"));
    let mut c2 = config(&dir, "m2", TlsSource::None);
    c2.mesh_key_file = Some(dir.path().join("mesh.key"));
    let s1 = standalone::start(c1).await.unwrap();
    let s2 = standalone::start(c2).await.unwrap();
    for (from, to) in [(&s1, &s2), (&s2, &s1), (&s1, &s1)] {
        mesh::spawn(
            from.server.clone(),
            mesh::MeshTarget::parse(&to.derp_addr.to_string(), true),
            mesh_key.clone(),
            TlsMode::InsecureForTests,
        );
    }
    let mut a = connect(&url(&s1)).await;
    let mut b = connect(&url(&s2)).await;
    let (ak, bk) = (a.public_key(), b.public_key());
    let (srv1, srv2) = (s1.server.clone(), s2.server.clone());
    wait_for("mesh routes", || {
        srv1.has_mesh_route(&bk) && srv2.has_mesh_route(&ak)
    })
    .await;
    a.send(bk, Bytes::from_static(b"across the mesh"))
        .await
        .unwrap();
    assert_eq!(
        recv_within(&mut b).await,
        (ak, Bytes::from_static(b"across the mesh"))
    );
    b.send(ak, Bytes::from_static(b"and back")).await.unwrap();
    assert_eq!(
        recv_within(&mut a).await,
        (bk, Bytes::from_static(b"and back"))
    );
    assert!(srv1.stats().packets_forwarded >= 1);

    // b leaves s2: s1 forgets the route.
    drop(b);
    wait_for("route removal", || !srv1.has_mesh_route(&bk)).await;
}

#[tokio::test]
async fn slow_client_does_not_stall_others() {
    let dir = tempfile::tempdir().unwrap();
    let srv = plain_server(&dir, "s").await;
    let sender = connect(&url(&srv)).await;
    // Never read: once its event queue and socket buffers fill, it stops reading.
    let slow = connect(&url(&srv)).await;
    let mut fast = connect(&url(&srv)).await;
    let big = Bytes::from(vec![7u8; 60_000]);
    let started = Instant::now();
    for i in 0..2_000u32 {
        sender.send(slow.public_key(), big.clone()).await.unwrap();
        if i % 100 == 0 {
            let marker = Bytes::from(i.to_be_bytes().to_vec());
            sender
                .send(fast.public_key(), marker.clone())
                .await
                .unwrap();
            let (_, got) = recv_within(&mut fast).await;
            assert_eq!(got, marker);
        }
    }
    // 120 MB toward a reader that takes nothing went by without blocking the others.
    assert!(started.elapsed() < Duration::from_secs(30));
    let server = srv.server.clone();
    let slow_key = slow.public_key();
    // The slow reader lost its own packets: queue drops, or the write timeout cut it off.
    wait_for("slow client penalised", || {
        server.queue_drops() > 0 || !server.is_connected(&slow_key)
    })
    .await;
    drop(slow);
}

#[tokio::test]
async fn malformed_frame_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let srv = plain_server(&dir, "x").await;
    let a = connect(&url(&srv)).await;
    let mut b = connect(&url(&srv)).await;
    let (mut raw, raw_key) = raw_client(srv.derp_addr).await;
    let server = srv.server.clone();
    wait_for("raw client registered", || server.is_connected(&raw_key)).await;
    // NotePreferred must be exactly 1 byte long.
    raw.write_all(&[0x07, 0, 0, 0, 3, 1, 1, 1]).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match raw.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "server closed the malformed connection");
    wait_for("raw client unregistered", || !server.is_connected(&raw_key)).await;
    a.send(b.public_key(), Bytes::from_static(b"still fine"))
        .await
        .unwrap();
    assert_eq!(
        recv_within(&mut b).await.1,
        Bytes::from_static(b"still fine")
    );
}

#[tokio::test]
async fn oversized_frame_header_closes_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let srv = plain_server(&dir, "o").await;
    let (mut raw, raw_key) = raw_client(srv.derp_addr).await;
    let server = srv.server.clone();
    wait_for("raw client registered", || server.is_connected(&raw_key)).await;
    raw.write_all(&[0x04, 0x10, 0, 0, 0]).await.unwrap();
    wait_for("raw client unregistered", || !server.is_connected(&raw_key)).await;
}

/// A client speaking DERP by hand over plain TCP, after the handshake.
async fn raw_client(addr: SocketAddr) -> (TcpStream, NodePublic) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /derp HTTP/1.1\r\nHost: x\r\nUpgrade: DERP\r\nConnection: Upgrade\r\n\r\n")
        .await
        .unwrap();
    let key = NodePrivate::generate();
    let now = Instant::now();
    let mut core = ClientCore::new(ClientConfig::new(key.clone(), [9; 24]), now);
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    // Skip the 101 response head.
    let rest = loop {
        let n = s.read(&mut tmp).await.unwrap();
        assert!(n > 0);
        buf.extend_from_slice(&tmp[..n]);
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break buf[p + 4..].to_vec();
        }
    };
    core.handle_input(&rest, now).unwrap();
    loop {
        while let Some(out) = core.poll_transmit() {
            s.write_all(&out).await.unwrap();
        }
        if core.is_connected() {
            return (s, key.public());
        }
        let n = s.read(&mut tmp).await.unwrap();
        assert!(n > 0);
        core.handle_input(&tmp[..n], now).unwrap();
    }
}

#[tokio::test]
async fn verify_clients_admits_known_keys_and_rejects_unknown() {
    use axum::routing::post;
    let known = NodePrivate::generate();
    let known_pub = known.public();
    let app = axum::Router::new().route(
        "/verify",
        post(
            move |axum::Json(req): axum::Json<weft_derp::verify::AdmitRequest>| async move {
                axum::Json(weft_derp::verify::AdmitResponse {
                    allow: req.node_public == known_pub,
                })
            },
        ),
    );
    let ln = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let vaddr = ln.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(ln, app).await.unwrap() });

    let server = DerpServer::new(
        NodePrivate::generate(),
        ServerOptions {
            verifier: Some(Arc::new(
                UrlVerifier::new(&format!("http://{vaddr}/verify"), false).unwrap(),
            )),
            ..Default::default()
        },
    );
    let ln = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = ln.local_addr().unwrap();
    tokio::spawn(standalone::accept_loop(
        ln,
        server.clone(),
        server.router(),
        None,
    ));
    let u = format!("http://{addr}/derp");
    let ok = DerpClient::connect(&u, known, ClientOptions::default()).await;
    assert!(ok.is_ok(), "known key admitted: {ok:?}");
    let unknown = DerpClient::connect(&u, NodePrivate::generate(), ClientOptions::default()).await;
    assert!(unknown.is_err(), "unknown key rejected");

    // Unreachable admission service: closed by default.
    let dead = DerpServer::new(
        NodePrivate::generate(),
        ServerOptions {
            verifier: Some(Arc::new(
                UrlVerifier::new("http://127.0.0.1:1/verify", false).unwrap(),
            )),
            ..Default::default()
        },
    );
    let ln = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = ln.local_addr().unwrap();
    tokio::spawn(standalone::accept_loop(
        ln,
        dead.clone(),
        dead.router(),
        None,
    ));
    assert!(DerpClient::connect(
        &format!("http://{addr}/derp"),
        NodePrivate::generate(),
        ClientOptions::default()
    )
    .await
    .is_err());
}

#[tokio::test]
async fn stun_listener_reports_the_observed_address() {
    let dir = tempfile::tempdir().unwrap();
    let srv = plain_server(&dir, "u").await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let me = sock.local_addr().unwrap();
    let got = weft_derp::stun::probe(&sock, srv.stun_addr.unwrap())
        .await
        .unwrap();
    assert_eq!(got, me);
}

#[tokio::test]
async fn tls_mesh_verifies_peers_against_the_shared_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert, key) = (dir.path().join("derp.crt"), dir.path().join("derp.key.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
    let mesh_key = "cd".repeat(32);
    std::fs::write(dir.path().join("mesh.key"), &mesh_key).unwrap();
    let tls = TlsSource::Files {
        cert: cert.clone(),
        key,
    };
    let mut c1 = config(&dir, "t1", tls.clone());
    c1.mesh_key_file = Some(dir.path().join("mesh.key"));
    let mut c2 = config(&dir, "t2", tls);
    c2.mesh_key_file = Some(dir.path().join("mesh.key"));
    let s1 = standalone::start(c1).await.unwrap();
    let s2 = standalone::start(c2).await.unwrap();
    for (from, to) in [(&s1, &s2), (&s2, &s1)] {
        let target = mesh::MeshTarget::parse(
            &format!("localhost:{}/{}", to.derp_addr.port(), to.derp_addr),
            false,
        );
        mesh::spawn(
            from.server.clone(),
            target,
            mesh_key.clone(),
            TlsMode::RootsPemFile(cert.clone()),
        );
    }
    let opts = |r: &Running| ClientOptions {
        dial_addr: Some(r.derp_addr.to_string()),
        tls: TlsMode::RootsPemFile(cert.clone()),
        ..Default::default()
    };
    let u = |r: &Running| format!("https://localhost:{}/derp", r.derp_addr.port());
    let a = DerpClient::connect(&u(&s1), NodePrivate::generate(), opts(&s1))
        .await
        .unwrap();
    let mut b = DerpClient::connect(&u(&s2), NodePrivate::generate(), opts(&s2))
        .await
        .unwrap();
    let (srv1, bk) = (s1.server.clone(), b.public_key());
    wait_for("mesh route over TLS", || srv1.has_mesh_route(&bk)).await;
    a.send(bk, Bytes::from_static(b"tls mesh")).await.unwrap();
    assert_eq!(recv_within(&mut b).await.1, Bytes::from_static(b"tls mesh"));
}

#[tokio::test]
async fn a_graceful_stop_tells_clients_to_reconnect_then_closes_them() {
    let dir = tempfile::tempdir().unwrap();
    let srv = plain_server(&dir, "r").await;
    let mut a = connect(&url(&srv)).await;
    let mut b = connect(&url(&srv)).await;
    let started = Instant::now();
    tokio::time::timeout(DEADLINE, srv.stop_gracefully())
        .await
        .expect("graceful stop within the deadline");
    assert!(
        started.elapsed() < standalone::RESTART_GRACE,
        "both connections closed before the grace period ran out"
    );
    for c in [&mut a, &mut b] {
        let ev = tokio::time::timeout(DEADLINE, c.recv_event())
            .await
            .expect("an event within the deadline")
            .expect("the restart notice before the close");
        assert_eq!(
            ev,
            ClientEvent::Restarting {
                reconnect_in: standalone::RESTART_RECONNECT_IN,
                try_for: standalone::RESTART_TRY_FOR,
            }
        );
        assert!(
            tokio::time::timeout(DEADLINE, c.recv_event())
                .await
                .expect("the close within the deadline")
                .is_err(),
            "the connection is closed after the notice"
        );
    }
}
