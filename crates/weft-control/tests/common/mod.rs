//! Shared by the in-process coordination server tests: a control server on 127.0.0.1 with a
//! temporary SQLite database, and machines that dial it over real ts2021 (Noise + HTTP/2),
//! register and read their zstd map streams.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::timeout;
use tower::ServiceExt;
use weft_control::{decode_frame, Control, ControlConfig};
use weft_key::{DiscoPrivate, MachinePrivate, NodePrivate, NodePublic};
use weft_store::{NewPreauthKey, NewUser, Store};
use weft_tailcfg::{
    DerpMap, DerpNode, DerpRegion, Hostinfo, MapRequest, MapResponse, RegisterAuth,
    RegisterRequest, RegisterResponse,
};
use weft_ts2021::Ts2021Client;

pub(crate) const CAPVER: u16 = 130;
/// Time limit for one request or one map message unless a test names its own.
pub(crate) const WAIT: Duration = Duration::from_secs(15);

pub(crate) struct TestServer {
    pub(crate) control: Control,
    pub(crate) url: String,
    pub(crate) store: Arc<dyn Store>,
    /// Whether [`TestServer::user`] gives new users the address `NAME@example.com` (their
    /// login name then, and what policies name them by).
    user_emails: bool,
    _dir: tempfile::TempDir,
}

/// One DERP region (900) on loopback, so maps carry a DERP map.
fn derp_map() -> DerpMap {
    let mut m = DerpMap::default();
    m.regions.insert(
        900,
        DerpRegion {
            region_id: 900,
            region_code: "weft".into(),
            region_name: "weft".into(),
            nodes: vec![DerpNode {
                name: "900a".into(),
                region_id: 900,
                host_name: "127.0.0.1".into(),
                ipv4: "127.0.0.1".into(),
                stun_port: -1,
                derp_port: 1,
                insecure_for_tests: true,
                ..DerpNode::default()
            }],
            ..DerpRegion::default()
        },
    );
    m
}

/// Starts a server with the default configuration of its URL, changed by `tweak`.
pub(crate) async fn start_plain(tweak: impl FnOnce(&mut ControlConfig)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let store = weft_store::open(&weft_store::sqlite_url_for_dir(dir.path()))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let mut cfg = ControlConfig::new(&url);
    tweak(&mut cfg);
    let control = Control::new(cfg, store.clone()).await.unwrap();
    let app = control.public_router(None);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    TestServer {
        control,
        url,
        store,
        user_emails: false,
        _dir: dir,
    }
}

/// Starts a server with the DERP map of [`derp_map`] and base domain `tailnet.test`, then
/// `tweak`.
#[allow(dead_code)]
pub(crate) async fn start_with(tweak: impl FnOnce(&mut ControlConfig)) -> TestServer {
    start_plain(|cfg| {
        cfg.derp_map = derp_map();
        cfg.base_domain = "tailnet.test".into();
        tweak(cfg)
    })
    .await
}

#[allow(dead_code)]
pub(crate) async fn start() -> TestServer {
    start_with(|_| {}).await
}

impl TestServer {
    /// Users created from now on get an e-mail address (see `user_emails`).
    #[allow(dead_code)]
    pub(crate) fn with_user_emails(mut self) -> TestServer {
        self.user_emails = true;
        self
    }

    /// The user `name`, created if missing.
    pub(crate) async fn user(&self, name: &str) -> weft_store::User {
        match self.store.get_user_by_name(name).await {
            Ok(u) => u,
            Err(_) => self
                .store
                .create_user(NewUser {
                    name: name.into(),
                    email: if self.user_emails {
                        format!("{name}@example.com")
                    } else {
                        String::new()
                    },
                    ..NewUser::default()
                })
                .await
                .unwrap(),
        }
    }

    /// A new pre-auth key of `user` (created if missing), single-use unless `tweak` says
    /// otherwise; returns the key's text.
    pub(crate) async fn key(&self, user: &str, tweak: impl FnOnce(&mut NewPreauthKey)) -> String {
        let u = self.user(user).await;
        let mut k = NewPreauthKey {
            user_id: u.id,
            ..NewPreauthKey::default()
        };
        tweak(&mut k);
        self.store.create_preauth_key(k).await.unwrap().1
    }

    /// Status of an empty POST to the admin API at `path`.
    #[allow(dead_code)]
    pub(crate) async fn admin_post(&self, path: &str) -> u16 {
        let resp = self
            .control
            .admin_router()
            .oneshot(
                axum::http::Request::post(path)
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        resp.status().as_u16()
    }

    /// Status and JSON answer of a JSON POST (or a GET if `body` is `None`) to the admin API.
    #[allow(dead_code)]
    pub(crate) async fn admin_json(
        &self,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let req = match body {
            Some(b) => axum::http::Request::post(path)
                .header("content-type", "application/json")
                .body(axum::body::Body::from(serde_json::to_vec(&b).unwrap())),
            None => axum::http::Request::get(path).body(axum::body::Body::empty()),
        };
        let resp = self
            .control
            .admin_router()
            .oneshot(req.unwrap())
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, v)
    }

    /// The stored node with node key `key`, which must exist.
    #[allow(dead_code)]
    pub(crate) async fn node(&self, key: &NodePublic) -> weft_store::Node {
        self.store.get_node_by_node_key(key).await.unwrap()
    }
}

pub(crate) struct Machine {
    pub(crate) machine: MachinePrivate,
    pub(crate) node: NodePrivate,
    pub(crate) disco: DiscoPrivate,
    pub(crate) client: Ts2021Client,
    pub(crate) hostname: String,
}

impl Machine {
    /// A new machine with fresh keys, connected over ts2021 but not registered.
    pub(crate) async fn connect(ts: &TestServer, hostname: &str) -> Machine {
        let machine = MachinePrivate::generate();
        let client = dial(ts, &machine).await;
        Machine {
            machine,
            node: NodePrivate::generate(),
            disco: DiscoPrivate::generate(),
            client,
            hostname: hostname.into(),
        }
    }

    /// Connects and registers with pre-auth `key`. The registration must not fail; if
    /// `authorized`, the machine must also be authorised at once (no approval pending).
    pub(crate) async fn join(
        ts: &TestServer,
        hostname: &str,
        key: &str,
        authorized: bool,
    ) -> Machine {
        let m = Machine::connect(ts, hostname).await;
        let r = m.register(&m.register_request(Some(key))).await;
        assert_eq!(r.error, "", "registration failed");
        if authorized {
            assert!(r.machine_authorized);
        }
        m
    }

    /// [`Machine::join`] where approval may still be pending.
    #[allow(dead_code)]
    pub(crate) async fn joined(ts: &TestServer, hostname: &str, key: &str) -> Machine {
        Machine::join(ts, hostname, key, false).await
    }

    /// A new connection for the same machine key, as after a restart.
    #[allow(dead_code)]
    pub(crate) async fn reconnect(&mut self, ts: &TestServer) {
        self.client = dial(ts, &self.machine).await;
    }

    pub(crate) fn register_request(&self, auth_key: Option<&str>) -> RegisterRequest {
        RegisterRequest {
            version: CAPVER as i64,
            node_key: self.node.public(),
            auth: auth_key.map(|k| RegisterAuth {
                auth_key: k.into(),
                ..RegisterAuth::default()
            }),
            hostinfo: Some(Hostinfo::new().with_hostname(&self.hostname)),
            ..RegisterRequest::default()
        }
    }

    /// Short name of [`Machine::register_request`].
    #[allow(dead_code)]
    pub(crate) fn request(&self, auth_key: Option<&str>) -> RegisterRequest {
        self.register_request(auth_key)
    }

    pub(crate) async fn register(&self, req: &RegisterRequest) -> RegisterResponse {
        register(&self.client, req).await
    }

    /// Status of a register request with the raw `body`.
    #[allow(dead_code)]
    pub(crate) async fn register_status(&self, body: &[u8]) -> u16 {
        let req = hyper::Request::post("/machine/register")
            .body(axum::body::Body::from(body.to_vec()))
            .unwrap();
        let resp = timeout(WAIT, self.client.send(req)).await.unwrap().unwrap();
        resp.status().as_u16()
    }

    pub(crate) fn map_request(&self, stream: bool) -> MapRequest {
        self.map_request_for(self.node.public(), stream)
    }

    /// A map request that presents `node_key` (not necessarily the current one).
    pub(crate) fn map_request_for(&self, node_key: NodePublic, stream: bool) -> MapRequest {
        MapRequest {
            version: CAPVER as i64,
            compress: "zstd".into(),
            keep_alive: true,
            node_key,
            disco_key: self.disco.public(),
            stream,
            hostinfo: Some(Hostinfo::new().with_hostname(&self.hostname)),
            ..MapRequest::default()
        }
    }

    pub(crate) async fn open_stream(&self) -> MapStream {
        self.open_stream_with(&self.map_request(true)).await
    }

    /// Opens a map stream with a request of the caller's making.
    pub(crate) async fn open_stream_with(&self, req: &MapRequest) -> MapStream {
        let resp = timeout(WAIT, self.client.post_json("/machine/map", req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), 200);
        MapStream {
            body: resp.into_body(),
            buf: Vec::new(),
        }
    }

    /// Sends a non-streaming `req`; its response must end, empty. Returns the status.
    #[allow(dead_code)]
    pub(crate) async fn lite_update(&self, req: &MapRequest) -> u16 {
        let resp = timeout(WAIT, self.client.post_json("/machine/map", req))
            .await
            .unwrap()
            .unwrap();
        let status = resp.status().as_u16();
        let body = timeout(WAIT, weft_ts2021::read_body(resp, 1 << 20))
            .await
            .expect("lite update response must end")
            .unwrap();
        assert!(body.is_empty());
        status
    }

    /// Status of a one-shot (non-streaming) map request made with `node_key`.
    #[allow(dead_code)]
    pub(crate) async fn map_status(&self, node_key: NodePublic) -> u16 {
        let resp = timeout(
            WAIT,
            self.client
                .post_json("/machine/map", &self.map_request_for(node_key, false)),
        )
        .await
        .unwrap()
        .unwrap();
        resp.status().as_u16()
    }
}

/// [`Machine::join`] where the machine must be authorised at once.
#[allow(dead_code)]
pub(crate) async fn joined(ts: &TestServer, hostname: &str, key: &str) -> Machine {
    Machine::join(ts, hostname, key, true).await
}

/// Dials the server as `machine`, checking that `/key` serves the server's Noise key.
async fn dial(ts: &TestServer, machine: &MachinePrivate) -> Ts2021Client {
    let server = weft_ts2021::fetch_server_key(&ts.url, CAPVER)
        .await
        .unwrap();
    assert_eq!(server, ts.control.noise_public());
    weft_ts2021::dial(&ts.url, machine, server, CAPVER)
        .await
        .unwrap()
}

/// Sends `req` to /machine/register on `client`; the answer must be 200 with a JSON body.
pub(crate) async fn register(client: &Ts2021Client, req: &RegisterRequest) -> RegisterResponse {
    let resp = timeout(WAIT, client.post_json("/machine/register", req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = weft_ts2021::read_body(resp, 1 << 20).await.unwrap();
    serde_json::from_slice(&body).unwrap()
}

/// An open map stream, read frame by frame.
pub(crate) struct MapStream {
    pub(crate) body: Incoming,
    buf: Vec<u8>,
}

impl MapStream {
    /// The next message (keep-alives included), within [`WAIT`].
    #[allow(dead_code)]
    pub(crate) async fn next(&mut self) -> MapResponse {
        self.next_within(WAIT).await
    }

    /// The next message (keep-alives included), within `within`.
    pub(crate) async fn next_within(&mut self, within: Duration) -> MapResponse {
        timeout(within, async {
            loop {
                if let Some((m, used)) = decode_frame(&self.buf, true).unwrap() {
                    self.buf.drain(..used);
                    return m;
                }
                let frame = self
                    .body
                    .frame()
                    .await
                    .expect("stream ended")
                    .expect("stream error");
                if let Ok(data) = frame.into_data() {
                    self.buf.extend_from_slice(&data);
                }
            }
        })
        .await
        .expect("no map frame in time")
    }

    /// The first non-keep-alive message satisfying `pred`, within [`WAIT`].
    #[allow(dead_code)]
    pub(crate) async fn next_matching(
        &mut self,
        pred: impl Fn(&MapResponse) -> bool,
    ) -> MapResponse {
        self.next_matching_within(WAIT, pred).await
    }

    /// The first non-keep-alive message satisfying `pred`, all within `within`.
    pub(crate) async fn next_matching_within(
        &mut self,
        within: Duration,
        pred: impl Fn(&MapResponse) -> bool,
    ) -> MapResponse {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let m = self.next_within(left).await;
            if !m.keep_alive && pred(&m) {
                return m;
            }
        }
    }
}
