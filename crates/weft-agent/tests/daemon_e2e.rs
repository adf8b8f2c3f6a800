//! Two in-process daemons (channel TUNs, loopback UDP) join an in-process `weft-control`
//! with an embedded DERP relay and STUN server, then ping each other and carry a packet.
//! No root, no TUN, nothing outside 127.0.0.1.

mod common;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{checksum, join_two, tailnet, wait_status, WAIT};
use weft_agent::daemon::{Daemon, DaemonConfig, TunMode};
use weft_agent::localapi::{BackendState, LocalClient, PingRequest, UpRequest};

/// An ICMP echo request from `src` to `dst` (IPv4, checksums filled in).
fn icmp_echo(src: IpAddr, dst: IpAddr, seq: u16) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
        panic!("v4 only")
    };
    let mut icmp = vec![8, 0, 0, 0, 0x12, 0x34, (seq >> 8) as u8, seq as u8];
    icmp.extend_from_slice(b"weft-ping");
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let total = 20 + icmp.len();
    let mut ip = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
        1,
        0,
        0,
    ];
    ip.extend_from_slice(&s.octets());
    ip.extend_from_slice(&d.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&icmp);
    ip
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_join_ping_directly_and_carry_a_packet() {
    let t = tailnet().await;
    let (a, mut b, a_ip, b_ip) = join_two(&t).await;

    // Tailnet lock was never enabled: `weft lock status` says so and names the node's keys.
    let lock = a.client.status(None).await.unwrap().tailnet_lock;
    assert!(!lock.enabled && lock.head.is_empty(), "{lock:?}");
    assert!(lock.nl_public.starts_with("tlpub:"), "{lock:?}");
    assert!(lock.node_key.starts_with("nodekey:"), "{lock:?}");

    // Disco ping by name: relayed first or direct at once, direct within a few tries. Until
    // bravo's disco key and home region have reached alpha, the ping fails at once; then
    // wait for a status change and try again.
    let mut direct = None;
    let mut tries = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while tries < 10 && tokio::time::Instant::now() < deadline {
        let r = a
            .client
            .ping(&PingRequest {
                peer: "bravo".into(),
                timeout_ms: 3000,
            })
            .await
            .unwrap();
        if r.err == "unknown peer" || r.err == "no udp or derp path to peer" {
            let v = a.client.status(None).await.unwrap().version;
            let _ = a.client.status(Some((v, Duration::from_secs(1)))).await;
            continue;
        }
        tries += 1;
        if r.err.is_empty() && !r.endpoint.is_empty() {
            direct = Some(r);
            break;
        }
        // Like `weft ping`, give discovery a moment (here: until the status changes, ≤1 s).
        let v = a.client.status(None).await.unwrap().version;
        let _ = a.client.status(Some((v, Duration::from_secs(1)))).await;
    }
    let direct = direct.expect("no direct pong within 10 pings");
    assert_eq!(direct.node_name, "bravo");
    assert_eq!(direct.ip, b_ip.to_string());
    assert_eq!(direct.endpoint, b.daemon.udp_addr().to_string());

    // An IP packet written to alpha's TUN comes out of bravo's TUN.
    let pkt = icmp_echo(a_ip, b_ip, 1);
    let got = tokio::time::timeout(WAIT, async {
        loop {
            a.to_tun.send(pkt.clone()).await.unwrap();
            if let Ok(Some(p)) =
                tokio::time::timeout(Duration::from_millis(500), b.from_peers.recv()).await
            {
                return p;
            }
        }
    })
    .await
    .expect("packet did not cross the tunnel");
    assert_eq!(got, pkt);

    let st = wait_status(&a.client, "a direct path in status", |s| {
        s.peer
            .values()
            .any(|p| p.host_name == "bravo" && !p.cur_addr.is_empty() && p.tx_bytes > 0)
    })
    .await;
    assert!(st.peer.values().any(|p| p.relay == "test"));

    let nc = a.client.netcheck().await.unwrap();
    assert!(nc.udp, "STUN on loopback answers: {nc:?}");
    assert_eq!(nc.preferred_derp, 900);
    assert_eq!(nc.region_codes.get(&900).map(String::as_str), Some("test"));
}

/// A policy that lets anything reach UDP/TCP port 9999 and nothing else.
struct OnlyPort9999;

impl weft_mapper::PolicyView for OnlyPort9999 {
    fn packet_filter(&self, _node: weft_tailcfg::NodeId) -> Vec<weft_tailcfg::FilterRule> {
        vec![weft_tailcfg::FilterRule {
            src_ips: vec!["*".into()],
            dst_ports: vec![weft_tailcfg::NetPortRange {
                ip: "*".into(),
                bits: None,
                ports: weft_tailcfg::PortRange {
                    first: 9999,
                    last: 9999,
                },
            }],
            ..weft_tailcfg::FilterRule::default()
        }]
    }

    fn may_see(&self, _viewer: weft_tailcfg::NodeId, _peer: weft_tailcfg::NodeId) -> bool {
        true
    }
}

/// An IPv4 UDP datagram (UDP checksum 0 = none).
fn udp(src: IpAddr, dst: IpAddr, dport: u16, payload: &[u8]) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
        panic!("v4 only")
    };
    let ulen = 8 + payload.len();
    let total = 20 + ulen;
    let mut ip = vec![
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        0,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ];
    ip.extend_from_slice(&s.octets());
    ip.extend_from_slice(&d.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&40000u16.to_be_bytes());
    ip.extend_from_slice(&dport.to_be_bytes());
    ip.extend_from_slice(&(ulen as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0]);
    ip.extend_from_slice(payload);
    ip
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_filter_drops_what_the_policy_forbids_and_passes_what_it_allows() {
    let t = tailnet().await;
    t.control.set_policy(Arc::new(OnlyPort9999));
    let (a, mut b, a_ip, b_ip) = join_two(&t).await;
    let forbidden = udp(a_ip, b_ip, 1234, b"forbidden");
    let allowed = udp(a_ip, b_ip, 9999, b"allowed");
    // Each round sends the forbidden datagram first, then the allowed one, on the same
    // path; if the filter let the first through it would come out of bravo's TUN first.
    let got = tokio::time::timeout(WAIT, async {
        loop {
            a.to_tun.send(forbidden.clone()).await.unwrap();
            a.to_tun.send(allowed.clone()).await.unwrap();
            if let Ok(Some(p)) =
                tokio::time::timeout(Duration::from_millis(500), b.from_peers.recv()).await
            {
                return p;
            }
        }
    })
    .await
    .expect("the allowed datagram never arrived");
    assert_eq!(
        got, allowed,
        "the first packet out of bravo's TUN must be the allowed one"
    );
    while let Ok(p) = b.from_peers.try_recv() {
        assert_ne!(p, forbidden, "a forbidden datagram reached bravo's TUN");
    }
    // bravo counted the drops and shows them in its status (`weft status --json`).
    let s = wait_status(&b.client, "bravo to count filter drops", |s| {
        s.data_plane.filtered_in >= 1
    })
    .await;
    // (Other counters may be non-zero: a datagram that races the handshake counts as bad.)
    assert!(s.data_plane.filtered_in >= 1, "{:?}", s.data_plane);
}

async fn launch(dir: &std::path::Path) -> (Daemon, LocalClient) {
    let socket = dir.join("weftd.sock");
    let d = Daemon::start(DaemonConfig {
        state_dir: dir.join("state"),
        socket: socket.clone(),
        tun: TunMode::None,
        bind: "127.0.0.1:0".parse().unwrap(),
        local_ips: vec![],
    })
    .await
    .unwrap();
    (d, LocalClient::new(&socket))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn down_up_restart_logout_and_interactive_login_move_through_the_states() {
    let t = tailnet().await;
    let dir = tempfile::tempdir().unwrap();
    let (d, c) = launch(dir.path()).await;
    assert_eq!(
        c.status(None).await.unwrap().backend_state,
        BackendState::NoState
    );
    let err = c.up(&UpRequest::default()).await.unwrap_err();
    assert!(err.to_string().contains("--login-server"), "{err}");

    // `weft up` with a bad key reports control's refusal instead of waiting forever.
    let bad = weft_agent::cli::UpArgs {
        login_server: Some(t.url.clone()),
        auth_key: Some("not-a-key".into()),
        hostname: None,
        advertise_tags: vec![],
        advertise_routes: None,
        advertise_exit_node: None,
        accept_routes: None,
        timeout: 30,
        json: false,
    };
    let err = weft_agent::cli::run(
        weft_agent::cli::AgentCommand::Up(bad),
        &dir.path().join("weftd.sock"),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().starts_with("control server:"), "{err}");

    c.up(&UpRequest {
        login_server: t.url.clone(),
        auth_key: t.key.clone(),
        hostname: "solo".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let running = wait_status(&c, "Running", |s| s.backend_state == BackendState::Running).await;
    let ips = running.tailscale_ips.clone();
    assert_eq!(ips.len(), 2);

    c.down().await.unwrap();
    wait_status(&c, "Stopped", |s| s.backend_state == BackendState::Stopped).await;
    c.up(&UpRequest::default()).await.unwrap();
    wait_status(&c, "Running again after down", |s| {
        s.backend_state == BackendState::Running
    })
    .await;

    // A restart re-presents the persisted node key: Running again without `up`, same IPs.
    drop(d);
    let (d, c) = launch(dir.path()).await;
    let again = wait_status(&c, "Running after restart", |s| {
        s.backend_state == BackendState::Running
    })
    .await;
    assert_eq!(again.tailscale_ips, ips);

    c.logout().await.unwrap();
    let out = wait_status(&c, "NeedsLogin after logout", |s| {
        s.backend_state == BackendState::NeedsLogin
    })
    .await;
    assert!(out.tailscale_ips.is_empty());

    // Without a key, login is interactive: an AuthURL, then Running once it is approved.
    c.up(&UpRequest::default()).await.unwrap();
    let pending = wait_status(&c, "an AuthURL", |s| !s.auth_url.is_empty()).await;
    assert_eq!(pending.backend_state, BackendState::NeedsLogin);
    let auth_id = pending.auth_url.rsplit('/').next().unwrap().to_owned();
    t.control
        .complete_auth_session(&auth_id, t.user)
        .await
        .unwrap();
    let done = wait_status(&c, "Running after interactive login", |s| {
        s.backend_state == BackendState::Running
    })
    .await;
    assert!(done.auth_url.is_empty());
    drop(d);
}
