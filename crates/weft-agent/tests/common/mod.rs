//! The in-process harness of the agent's integration tests: `weft-control` with an embedded
//! DERP relay and STUN server on 127.0.0.1, and daemons with channel TUNs.
#![allow(dead_code)] // each test binary uses a different part

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use weft_agent::daemon::{Daemon, DaemonConfig, TunMode};
use weft_agent::engine::TunChannels;
use weft_agent::localapi::{BackendState, LocalClient, Status, UpRequest};
use weft_control::{Control, ControlConfig};
use weft_derp::{DerpServer, ServerOptions};
use weft_key::NodePrivate;
use weft_store::{NewPreauthKey, NewUser, Store};
use weft_tailcfg::{DerpMap, DerpNode, DerpRegion};

pub(crate) const WAIT: Duration = Duration::from_secs(30);

pub(crate) struct Node {
    pub(crate) daemon: Daemon,
    pub(crate) client: LocalClient,
    pub(crate) to_tun: mpsc::Sender<Vec<u8>>,
    pub(crate) from_peers: mpsc::Receiver<Vec<u8>>,
    pub(crate) _dir: tempfile::TempDir,
}

pub(crate) async fn start_node(url: &str, key: &str, name: &str) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let (to_tun, from_tun) = mpsc::channel(64);
    let (to_peers_tx, from_peers) = mpsc::channel(64);
    let socket = dir.path().join("weftd.sock");
    let daemon = Daemon::start(DaemonConfig {
        state_dir: dir.path().join("state"),
        socket: socket.clone(),
        tun: TunMode::Channels(TunChannels {
            from_tun,
            to_tun: to_peers_tx,
        }),
        bind: "127.0.0.1:0".parse().unwrap(),
        local_ips: vec![],
    })
    .await
    .unwrap();
    let client = LocalClient::new(&socket);
    client
        .up(&UpRequest {
            login_server: url.into(),
            auth_key: key.into(),
            hostname: name.into(),
            ..UpRequest::default()
        })
        .await
        .unwrap();
    Node {
        daemon,
        client,
        to_tun,
        from_peers,
        _dir: dir,
    }
}

pub(crate) async fn wait_status(
    c: &LocalClient,
    what: &str,
    pred: impl Fn(&Status) -> bool,
) -> Status {
    tokio::time::timeout(WAIT, async {
        let mut v = None;
        loop {
            let s = c
                .status(v.map(|v| (v, Duration::from_secs(5))))
                .await
                .unwrap();
            if pred(&s) {
                return s;
            }
            v = Some(s.version);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

pub(crate) fn checksum(b: &[u8]) -> u16 {
    let mut sum = 0u32;
    for ch in b.chunks(2) {
        let w = u16::from_be_bytes([ch[0], *ch.get(1).unwrap_or(&0)]);
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

pub(crate) struct Tailnet {
    pub(crate) control: Control,
    pub(crate) user: weft_store::UserId,
    pub(crate) url: String,
    pub(crate) key: String,
    pub(crate) _dir: tempfile::TempDir,
}

/// `weft-control` with an embedded DERP relay (plain HTTP) and a STUN server, all on
/// 127.0.0.1, and a reusable pre-auth key.
pub(crate) async fn tailnet() -> Tailnet {
    // The embedded relay speaks plain HTTP on the control port.
    std::env::set_var("WEFT_DERP_HTTP", "1");
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = weft_store::open(&weft_store::sqlite_url_for_dir(dir.path()))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ctl_addr: SocketAddr = listener.local_addr().unwrap();
    let url = format!("http://{ctl_addr}");
    let stun = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let stun_port = stun.local_addr().unwrap().port();
    weft_derp::stun::serve(stun);

    let mut derp_map = DerpMap::default();
    derp_map.regions.insert(
        900,
        DerpRegion {
            region_id: 900,
            region_code: "test".into(),
            region_name: "Loopback test".into(),
            nodes: vec![DerpNode {
                name: "900a".into(),
                region_id: 900,
                host_name: "127.0.0.1".into(),
                ipv4: "127.0.0.1".into(),
                stun_port: i32::from(stun_port),
                derp_port: i32::from(ctl_addr.port()),
                insecure_for_tests: true,
                ..DerpNode::default()
            }],
            ..DerpRegion::default()
        },
    );
    let mut cfg = ControlConfig::new(&url);
    cfg.derp_map = derp_map;
    cfg.base_domain = "tailnet.test".into();
    let control = Control::new(cfg, store.clone()).await.unwrap();
    let derp = DerpServer::new(NodePrivate::generate(), ServerOptions::default());
    let app = control.public_router(Some(derp.router()));
    tokio::spawn(async move { axum::serve(listener, app).await });

    let user = store
        .create_user(NewUser {
            name: "alice".into(),
            ..NewUser::default()
        })
        .await
        .unwrap();
    let (_, key) = store
        .create_preauth_key(NewPreauthKey {
            user_id: user.id,
            reusable: true,
            ..NewPreauthKey::default()
        })
        .await
        .unwrap();
    Tailnet {
        control,
        user: user.id,
        url,
        key,
        _dir: dir,
    }
}

/// Starts alpha and bravo and waits until each is Running with the other in its netmap;
/// returns their IPv4 tailnet addresses.
pub(crate) async fn join_two(t: &Tailnet) -> (Node, Node, IpAddr, IpAddr) {
    let a = start_node(&t.url, &t.key, "alpha").await;
    let b = start_node(&t.url, &t.key, "bravo").await;
    let sa = wait_status(&a.client, "alpha to see bravo", |s| {
        s.backend_state == BackendState::Running && s.peer.values().any(|p| p.host_name == "bravo")
    })
    .await;
    let sb = wait_status(&b.client, "bravo to see alpha", |s| {
        s.backend_state == BackendState::Running && s.peer.values().any(|p| p.host_name == "alpha")
    })
    .await;
    let a_ip = *sa.tailscale_ips.iter().find(|i| i.is_ipv4()).unwrap();
    let b_ip = *sb.tailscale_ips.iter().find(|i| i.is_ipv4()).unwrap();
    assert_ne!(a_ip, b_ip);
    assert_eq!(sa.self_.as_ref().unwrap().host_name, "alpha");
    (a, b, a_ip, b_ip)
}
