//! The control client against an in-process fake control server (ts2021 over loopback).
//!
//! The fake speaks the real transport (`/key`, `/ts2021` with Noise and HTTP/2 inside) and
//! the real register/map wire formats; its behaviour is scripted by each test.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use bytes::Bytes;
use tokio::sync::{mpsc, watch, Notify};
use weft_agent::control::{self, ControlEvent, ControlParams, LiteInputs};
use weft_key::{DiscoPublic, MachinePrivate, NlPrivate, NodePrivate, NodePublic};
use weft_tailcfg::{
    Hostinfo, Login, MapRequest, MapResponse, Node, PeerChange, RegisterRequest, RegisterResponse,
    Time, User,
};

const WAIT: Duration = Duration::from_secs(20);

struct ChanBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChanBody {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}

#[derive(Default)]
struct Fake {
    registers: Vec<RegisterRequest>,
    streams: Vec<mpsc::Sender<Bytes>>,
    stream_requests: Vec<MapRequest>,
    lite: Option<mpsc::UnboundedSender<MapRequest>>,
    require_interactive: bool,
    approved: bool,
}

#[derive(Clone)]
struct Ctl {
    fake: Arc<Mutex<Fake>>,
    approve: Arc<Notify>,
    new_stream: Arc<Notify>,
}

fn peer(id: i64) -> Node {
    Node {
        id,
        name: format!("peer{id}.tail.example."),
        key: NodePublic::from_bytes([id as u8; 32]),
        disco_key: DiscoPublic::from_bytes([id as u8 + 50; 32]),
        addresses: vec![format!("100.64.0.{id}/32").parse().unwrap()],
        home_derp: 900,
        ..Node::default()
    }
}

fn full_map(self_key: NodePublic) -> MapResponse {
    MapResponse {
        node: Some(Node {
            id: 1,
            name: "me.tail.example.".into(),
            key: self_key,
            addresses: vec![
                "100.64.0.1/32".parse().unwrap(),
                "fd7a:115c:a1e0::1/128".parse().unwrap(),
            ],
            machine_authorized: true,
            ..Node::default()
        }),
        peers: vec![peer(2)],
        ..MapResponse::default()
    }
}

async fn register(State(ctl): State<Ctl>, body: Bytes) -> Json<RegisterResponse> {
    let req: RegisterRequest = serde_json::from_slice(&body).unwrap();
    let (interactive, approved) = {
        let mut f = ctl.fake.lock().unwrap();
        f.registers.push(req.clone());
        (f.require_interactive, f.approved)
    };
    let ok = RegisterResponse {
        user: User {
            id: 7,
            display_name: "Alice".into(),
            ..User::default()
        },
        login: Login {
            login_name: "alice@example.com".into(),
            ..Login::default()
        },
        machine_authorized: true,
        ..RegisterResponse::default()
    };
    if req.expiry == Time::from_unix(123, 0) {
        return Json(RegisterResponse {
            node_key_expired: true,
            ..ok
        });
    }
    if !interactive {
        return Json(match req.auth.as_ref().map(|a| a.auth_key.as_str()) {
            Some("good") => ok,
            _ => RegisterResponse::error("invalid authkey"),
        });
    }
    if approved {
        return Json(ok);
    }
    if req.followup.is_empty() {
        return Json(RegisterResponse {
            auth_url: "http://127.0.0.1/register/abc".into(),
            ..RegisterResponse::default()
        });
    }
    ctl.approve.notified().await;
    ctl.fake.lock().unwrap().approved = true;
    Json(ok)
}

async fn map(State(ctl): State<Ctl>, body: Bytes) -> axum::response::Response {
    let req: MapRequest = serde_json::from_slice(&body).unwrap();
    if !req.stream {
        let f = ctl.fake.lock().unwrap();
        if let Some(l) = &f.lite {
            let _ = l.send(req);
        }
        return axum::response::Response::new(axum::body::Body::empty());
    }
    let (tx, rx) = mpsc::channel(16);
    tx.send(Bytes::from(control::encode_frame(&full_map(req.node_key))))
        .await
        .unwrap();
    {
        let mut f = ctl.fake.lock().unwrap();
        f.streams.push(tx);
        f.stream_requests.push(req);
    }
    ctl.new_stream.notify_waiters();
    axum::response::Response::new(axum::body::Body::new(ChanBody(rx)))
}

async fn start_fake(interactive: bool) -> (String, Ctl, mpsc::UnboundedReceiver<MapRequest>) {
    let key = Arc::new(MachinePrivate::generate());
    let (lite_tx, lite_rx) = mpsc::unbounded_channel();
    let ctl = Ctl {
        fake: Arc::new(Mutex::new(Fake {
            lite: Some(lite_tx),
            require_interactive: interactive,
            ..Fake::default()
        })),
        approve: Arc::new(Notify::new()),
        new_stream: Arc::new(Notify::new()),
    };
    let inner = Router::new()
        .route("/machine/register", post(register))
        .route("/machine/map", post(map))
        .with_state(ctl.clone());
    let pubkey = key.public();
    let outer = Router::new()
        .route(
            "/key",
            get(move || async move {
                Json(serde_json::json!({"legacyPublicKey": weft_key::MachinePublic::default(), "publicKey": pubkey}))
            }),
        )
        .route("/ts2021", any(move |req: Request| weft_ts2021::upgrade(req, key.clone(), inner.clone())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, outer).await });
    (url, ctl, lite_rx)
}

fn params(url: &str, auth_key: Option<&str>) -> ControlParams {
    ControlParams {
        control_url: url.to_owned(),
        machine: MachinePrivate::generate(),
        nl_public: NlPrivate::generate().public(),
        node: NodePrivate::generate(),
        old_node: NodePublic::default(),
        auth_key: auth_key.map(str::to_owned),
        regen: false,
    }
}

fn inputs() -> LiteInputs {
    LiteInputs {
        disco_key: DiscoPublic::from_bytes([9; 32]),
        hostinfo: Hostinfo::new().with_hostname("me"),
        endpoints: vec![],
    }
}

/// Waits for the first event matching `pick`, skipping others (errors, connection changes).
async fn expect<T>(
    rx: &mut mpsc::Receiver<ControlEvent>,
    mut pick: impl FnMut(ControlEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            let ev = rx.recv().await.expect("control task ended");
            if let Some(t) = pick(ev) {
                return t;
            }
        }
    })
    .await
    .expect("event did not arrive in time")
}

#[tokio::test]
async fn auth_key_login_then_map_deltas_lite_updates_and_reconnect() {
    let (url, ctl, mut lite_rx) = start_fake(false).await;
    let p = params(&url, Some("good"));
    let node_pub = p.node.public();
    let (in_tx, in_rx) = watch::channel(inputs());
    let (ev_tx, mut ev_rx) = mpsc::channel(32);
    let task = tokio::spawn(control::run(p, in_rx, ev_tx));

    let (node, profile) = expect(&mut ev_rx, |e| match e {
        ControlEvent::LoggedIn { node, profile, .. } => Some((node, profile)),
        _ => None,
    })
    .await;
    assert_eq!(node.public(), node_pub);
    assert_eq!(profile.login_name, "alice@example.com");
    {
        let f = ctl.fake.lock().unwrap();
        let r = &f.registers[0];
        assert_eq!(r.version, control::CAPVER);
        assert_eq!(r.node_key, node_pub);
        assert!(r.nl_key.is_some());
        assert_eq!(r.hostinfo.as_ref().unwrap().hostname(), Some("me"));
    }

    let nm = expect(&mut ev_rx, |e| match e {
        ControlEvent::NetMap(nm) => Some(nm),
        _ => None,
    })
    .await;
    assert_eq!(nm.peers.len(), 1);
    assert_eq!(nm.addresses().len(), 2);
    {
        let f = ctl.fake.lock().unwrap();
        let r = &f.stream_requests[0];
        assert_eq!(r.compress, "zstd");
        assert!(r.keep_alive && r.stream && !r.omit_peers);
        assert_eq!(r.disco_key, DiscoPublic::from_bytes([9; 32]));
    }
    let first_lite = tokio::time::timeout(WAIT, lite_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        first_lite.omit_peers && !first_lite.stream,
        "a lite update follows login"
    );

    // A delta: the peer's endpoints change.
    let stream = ctl.fake.lock().unwrap().streams[0].clone();
    let patch = MapResponse {
        peers_changed_patch: vec![PeerChange {
            node_id: 2,
            endpoints: Some(vec!["192.0.2.7:41641".parse().unwrap()]),
            ..PeerChange::default()
        }],
        ..MapResponse::default()
    };
    stream
        .send(Bytes::from(control::encode_frame(
            &MapResponse::keep_alive(),
        )))
        .await
        .unwrap();
    stream
        .send(Bytes::from(control::encode_frame(&patch)))
        .await
        .unwrap();
    let nm = expect(&mut ev_rx, |e| match e {
        ControlEvent::NetMap(nm) => Some(nm),
        _ => None,
    })
    .await;
    assert_eq!(
        nm.peers[0].endpoints,
        vec!["192.0.2.7:41641".parse().unwrap()]
    );

    // New endpoints are reported as a lite update.
    in_tx.send_modify(|i| i.endpoints = vec![("198.51.100.4:41641".parse().unwrap(), 2)]);
    let lite = tokio::time::timeout(WAIT, async {
        loop {
            let r = lite_rx.recv().await.unwrap();
            if !r.endpoints.is_empty() {
                return r;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(lite.endpoints, vec!["198.51.100.4:41641".parse().unwrap()]);
    assert_eq!(lite.endpoint_types, vec![2]);
    assert!(lite.omit_peers && !lite.stream);

    // The server ends the stream: the client polls again and gets a fresh full map.
    let reconnected = ctl.new_stream.notified();
    {
        let mut f = ctl.fake.lock().unwrap();
        f.streams.clear();
    }
    drop(stream);
    expect(&mut ev_rx, |e| {
        matches!(e, ControlEvent::Connected(false)).then_some(())
    })
    .await;
    tokio::time::timeout(WAIT, reconnected)
        .await
        .expect("client reconnected");
    let nm = expect(&mut ev_rx, |e| match e {
        ControlEvent::NetMap(nm) => Some(nm),
        _ => None,
    })
    .await;
    assert!(
        nm.peers[0].endpoints.is_empty(),
        "fresh stream starts from the full map"
    );
    assert_eq!(
        ctl.fake.lock().unwrap().registers.len(),
        1,
        "no re-register on reconnect"
    );
    task.abort();
}

#[tokio::test]
async fn bad_auth_key_is_reported_as_the_servers_error() {
    let (url, _ctl, _lite) = start_fake(false).await;
    let (_in_tx, in_rx) = watch::channel(inputs());
    let (ev_tx, mut ev_rx) = mpsc::channel(32);
    let task = tokio::spawn(control::run(params(&url, Some("bad")), in_rx, ev_tx));
    let msg = expect(&mut ev_rx, |e| match e {
        ControlEvent::Error(m) => Some(m),
        _ => None,
    })
    .await;
    assert!(msg.contains("invalid authkey"), "{msg}");
    task.abort();
}

#[tokio::test]
async fn interactive_login_reports_the_url_and_completes_on_approval() {
    let (url, ctl, _lite) = start_fake(true).await;
    let (_in_tx, in_rx) = watch::channel(inputs());
    let (ev_tx, mut ev_rx) = mpsc::channel(32);
    let task = tokio::spawn(control::run(params(&url, None), in_rx, ev_tx));
    let auth_url = expect(&mut ev_rx, |e| match e {
        ControlEvent::AuthUrl(u) => Some(u),
        _ => None,
    })
    .await;
    assert_eq!(auth_url, "http://127.0.0.1/register/abc");
    // Wait until the follow-up register is blocked on the server, then approve.
    tokio::time::timeout(WAIT, async {
        loop {
            if ctl
                .fake
                .lock()
                .unwrap()
                .registers
                .iter()
                .any(|r| r.followup == auth_url)
            {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    ctl.approve.notify_one();
    expect(&mut ev_rx, |e| {
        matches!(e, ControlEvent::LoggedIn { .. }).then_some(())
    })
    .await;
    expect(&mut ev_rx, |e| {
        matches!(e, ControlEvent::NetMap(_)).then_some(())
    })
    .await;
    task.abort();
}

#[tokio::test]
async fn logout_sends_the_1970_expiry() {
    let (url, ctl, _lite) = start_fake(false).await;
    let p = params(&url, None);
    control::logout(
        &url,
        &p.machine,
        p.nl_public,
        &p.node,
        NodePublic::default(),
    )
    .await
    .unwrap();
    let f = ctl.fake.lock().unwrap();
    assert_eq!(f.registers.len(), 1);
    assert_eq!(f.registers[0].expiry, Time::from_unix(123, 0));
    assert_eq!(f.registers[0].node_key, p.node.public());
}
