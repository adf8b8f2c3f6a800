//! In-process server and client over loopback.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::routing::{any, get, post};
use axum::{Extension, Json, Router};
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Mutex};
use weft_key::{MachinePrivate, MachinePublic};
use weft_ts2021::{dial, fetch_server_key, read_body, NoisePeer, ServerConfig};

const CAPVER: u16 = 130;
const DEADLINE: Duration = Duration::from_secs(20);

/// Response body fed chunk by chunk from a channel.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

#[derive(Clone)]
struct TestState {
    stream_rx: Arc<Mutex<Option<mpsc::Receiver<Bytes>>>>,
}

struct Server {
    addr: SocketAddr,
    key: Arc<MachinePrivate>,
    stream_tx: mpsc::Sender<Bytes>,
}

impl Server {
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn inner_app(state: TestState) -> Router {
    Router::new()
        .route(
            "/whoami",
            get(|Extension(peer): Extension<NoisePeer>| async move {
                format!("{} {}", peer.machine.to_text(), peer.version)
            }),
        )
        .route(
            "/echo",
            post(
                |Extension(peer): Extension<NoisePeer>, body: Bytes| async move {
                    ([("x-machine", peer.machine.to_text())], body)
                },
            ),
        )
        .route(
            "/big",
            get(|| async {
                (0..3_000_000u32)
                    .map(|i| (i % 251) as u8)
                    .collect::<Vec<u8>>()
            }),
        )
        .route(
            "/stream",
            get(|State(st): State<TestState>| async move {
                let rx = st.stream_rx.lock().await.take();
                match rx {
                    Some(rx) => Body::new(ChannelBody(rx)),
                    None => Body::from("stream already taken"),
                }
            }),
        )
        .with_state(state)
}

async fn start_server(config: ServerConfig) -> Server {
    let key = Arc::new(MachinePrivate::generate());
    let (stream_tx, stream_rx) = mpsc::channel(4);
    let inner = inner_app(TestState {
        stream_rx: Arc::new(Mutex::new(Some(stream_rx))),
    });
    let k = key.clone();
    let public = key.public();
    let outer = Router::new()
        .route(
            "/ts2021",
            any(move |req: Request| {
                weft_ts2021::upgrade_with(req, k.clone(), inner.clone(), config.clone())
            }),
        )
        .route(
            "/key",
            get(move || async move {
                Json(serde_json::json!({
                    "legacyPublicKey": MachinePublic::default(),
                    "publicKey": public,
                }))
            }),
        );
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, outer).await;
    });
    Server {
        addr,
        key,
        stream_tx,
    }
}

async fn text(resp: hyper::Response<hyper::body::Incoming>) -> String {
    let b = read_body(resp, 1 << 20).await.expect("body");
    String::from_utf8(b.to_vec()).expect("utf8")
}

#[tokio::test]
async fn handshake_authenticates_machine_key_to_handlers() {
    let server = start_server(ServerConfig::default()).await;
    let machine = MachinePrivate::generate();
    let client = tokio::time::timeout(
        DEADLINE,
        dial(&server.url(), &machine, server.key.public(), CAPVER),
    )
    .await
    .expect("dial in time")
    .expect("dial");
    assert_eq!(client.peer(), server.key.public());
    assert!(client.early_noise().await.is_none());
    let resp = client
        .send(
            hyper::Request::get("/whoami")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        text(resp).await,
        format!("{} 130", machine.public().to_text())
    );
}

#[tokio::test]
async fn fetch_server_key_reads_json_key() {
    let server = start_server(ServerConfig::default()).await;
    let key = fetch_server_key(&server.url(), CAPVER).await.expect("key");
    assert_eq!(key, server.key.public());
}

#[test]
fn key_response_parses_json_and_legacy_hex_and_rejects_zero() {
    let k = MachinePrivate::from_bytes([7; 32]).public();
    let json = format!(
        r#"{{"legacyPublicKey":"mkey:{}","publicKey":"{}"}}"#,
        "0".repeat(64),
        k.to_text()
    );
    assert_eq!(
        weft_ts2021::parse_key_response(json.as_bytes()).expect("json"),
        k
    );
    assert_eq!(
        weft_ts2021::parse_key_response(k.to_hex().as_bytes()).expect("hex"),
        k
    );
    let zero = format!(r#"{{"publicKey":"mkey:{}"}}"#, "0".repeat(64));
    assert!(weft_ts2021::parse_key_response(zero.as_bytes()).is_err());
    assert!(weft_ts2021::parse_key_response(b"nonsense").is_err());
}

#[tokio::test]
async fn several_concurrent_requests_share_one_connection() {
    let server = start_server(ServerConfig::default()).await;
    let machine = MachinePrivate::generate();
    let client = dial(&server.url(), &machine, server.key.public(), CAPVER)
        .await
        .expect("dial");
    let mut tasks = Vec::new();
    for i in 0..20 {
        let c = client.clone();
        tasks.push(tokio::spawn(async move {
            let body = format!("request number {i}");
            let resp = c
                .send(
                    hyper::Request::post("/echo")
                        .body(Body::from(body.clone()))
                        .expect("req"),
                )
                .await
                .expect("send");
            assert_eq!(resp.status(), StatusCode::OK);
            (body, text(resp).await)
        }));
    }
    for t in tasks {
        let (sent, got) = t.await.expect("task");
        assert_eq!(sent, got);
    }
    let resp = client
        .post_json("/echo", &serde_json::json!({"Version": 130}))
        .await
        .expect("post_json");
    assert_eq!(
        resp.headers()
            .get("x-machine")
            .and_then(|v| v.to_str().ok()),
        Some(machine.public().to_text().as_str())
    );
    assert_eq!(text(resp).await, r#"{"Version":130}"#);
}

#[tokio::test]
async fn big_bodies_span_many_records_both_ways() {
    let server = start_server(ServerConfig::default()).await;
    let client = dial(
        &server.url(),
        &MachinePrivate::generate(),
        server.key.public(),
        CAPVER,
    )
    .await
    .expect("dial");
    let up: Vec<u8> = (0..1_500_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let resp = client
        .send(
            hyper::Request::post("/echo")
                .body(Body::from(up.clone()))
                .expect("req"),
        )
        .await
        .expect("send");
    let got = read_body(resp, 4 << 20).await.expect("body");
    assert_eq!(got.len(), up.len());
    assert!(got == up, "echoed body differs");

    let resp = client
        .send(
            hyper::Request::get("/big")
                .body(Body::empty())
                .expect("req"),
        )
        .await
        .expect("send");
    let got = read_body(resp, 4 << 20).await.expect("body");
    assert_eq!(got.len(), 3_000_000);
    assert!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8));
}

#[tokio::test]
async fn streaming_response_delivers_each_chunk_before_the_next_is_produced() {
    let server = start_server(ServerConfig::default()).await;
    let client = dial(
        &server.url(),
        &MachinePrivate::generate(),
        server.key.public(),
        CAPVER,
    )
    .await
    .expect("dial");
    let resp = client
        .send(
            hyper::Request::get("/stream")
                .body(Body::empty())
                .expect("req"),
        )
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    for i in 0..5 {
        let chunk = Bytes::from(format!("frame {i};").repeat(i * 300 + 1));
        server
            .stream_tx
            .send(chunk.clone())
            .await
            .expect("producer alive");
        let mut got = Vec::new();
        while got.len() < chunk.len() {
            let frame = tokio::time::timeout(DEADLINE, body.frame())
                .await
                .expect("chunk in time")
                .expect("body open")
                .expect("frame");
            if let Ok(data) = frame.into_data() {
                got.extend_from_slice(&data);
            }
        }
        assert_eq!(got, chunk);
    }
    drop(server.stream_tx);
    let rest = tokio::time::timeout(DEADLINE, body.collect())
        .await
        .expect("end in time")
        .expect("clean end");
    assert!(rest.to_bytes().is_empty(), "no data after the last chunk");
}

#[tokio::test]
async fn early_noise_challenge_reaches_the_client_and_http2_still_works() {
    let server = start_server(ServerConfig {
        early_noise_challenge: true,
        ..ServerConfig::default()
    })
    .await;
    let client = dial(
        &server.url(),
        &MachinePrivate::generate(),
        server.key.public(),
        CAPVER,
    )
    .await
    .expect("dial");
    let early = client.early_noise().await.expect("early payload");
    let chal = early.node_key_challenge.expect("challenge parsed");
    assert!(!chal.is_zero());
    let resp = client
        .send(
            hyper::Request::get("/whoami")
                .body(Body::empty())
                .expect("req"),
        )
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn wrong_server_key_gets_400_from_the_server() {
    let server = start_server(ServerConfig::default()).await;
    let wrong = MachinePrivate::generate().public();
    let err = dial(&server.url(), &MachinePrivate::generate(), wrong, CAPVER)
        .await
        .expect_err("handshake must fail");
    match err {
        weft_ts2021::Error::UnexpectedStatus(s, text) => {
            assert_eq!(s, StatusCode::BAD_REQUEST);
            assert_eq!(text, "noise handshake failed");
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[tokio::test]
async fn version_below_minimum_gets_400() {
    let server = start_server(ServerConfig {
        min_version: 113,
        ..ServerConfig::default()
    })
    .await;
    let err = dial(
        &server.url(),
        &MachinePrivate::generate(),
        server.key.public(),
        100,
    )
    .await
    .expect_err("old version refused");
    assert!(
        matches!(&err, weft_ts2021::Error::UnexpectedStatus(s, t) if *s == StatusCode::BAD_REQUEST && t == "unsupported protocol version"),
        "{err:?}"
    );
    dial(
        &server.url(),
        &MachinePrivate::generate(),
        server.key.public(),
        113,
    )
    .await
    .expect("minimum version accepted");
}

/// Sends a raw HTTP/1.1 request and returns the full response text up to EOF
/// or the end of headers plus body.
async fn raw_request(addr: SocketAddr, req: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("response in time")
            .expect("read");
        out.extend_from_slice(&buf[..n]);
        let t = String::from_utf8_lossy(&out);
        if n == 0 || (t.contains("\r\n\r\n") && t.ends_with('\n')) {
            return t.into_owned();
        }
    }
}

#[tokio::test]
async fn bad_upgrade_requests_get_400_with_a_reason() {
    let server = start_server(ServerConfig::default()).await;
    let cases = [
        ("", "missing next protocol"),
        ("Upgrade: h2c\r\nConnection: upgrade\r\n", "unknown next protocol"),
        (
            "Upgrade: tailscale-control-protocol\r\nConnection: upgrade\r\n",
            "missing Tailscale handshake header",
        ),
        (
            "Upgrade: tailscale-control-protocol\r\nConnection: upgrade\r\nX-Tailscale-Handshake: %%%\r\n",
            "invalid tailscale handshake header",
        ),
        (
            "Upgrade: tailscale-control-protocol\r\nConnection: upgrade\r\nX-Tailscale-Handshake: AAEC\r\n",
            "noise handshake failed",
        ),
    ];
    for (headers, reason) in cases {
        let req = format!("POST /ts2021 HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n");
        let resp = raw_request(server.addr, &req).await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{headers:?} -> {resp}");
        assert!(resp.contains(reason), "{headers:?} -> {resp}");
    }
}

#[tokio::test]
async fn upgrade_answers_101_with_exact_headers_and_closes_on_oversized_record() {
    let server = start_server(ServerConfig::default()).await;
    let machine = MachinePrivate::generate();
    let init = weft_proto::noise::Initiator::new(&machine, server.key.public(), CAPVER, [5; 32])
        .expect("init");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(init.initiation());
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    // The oversized frame header is pipelined in the same write as the
    // request: the server must still see it after the upgrade.
    let req = format!(
        "POST /ts2021 HTTP/1.1\r\nHost: x\r\nUpgrade: tailscale-control-protocol\r\nConnection: upgrade\r\nX-Tailscale-Handshake: {b64}\r\n\r\n"
    );
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(&[4, 0x10, 0x00]);
    s.write_all(&bytes).await.expect("write");

    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("101 in time")
            .expect("read");
        assert!(n > 0, "connection closed before the 101");
        got.extend_from_slice(&buf[..n]);
        if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
    };
    let head = String::from_utf8_lossy(&got[..head_end]).to_ascii_lowercase();
    assert!(
        head.starts_with("http/1.1 101 switching protocols\r\n"),
        "{head}"
    );
    assert!(
        head.contains("\r\nupgrade: tailscale-control-protocol\r\n"),
        "{head}"
    );
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");

    let mut rest = got[head_end..].to_vec();
    while rest.len() < weft_proto::noise::RESPONSE_LEN {
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .expect("msg2 in time")
            .expect("read");
        assert!(n > 0, "closed before msg2");
        rest.extend_from_slice(&buf[..n]);
    }
    let transport = init
        .finish(&rest[..weft_proto::noise::RESPONSE_LEN])
        .expect("msg2 valid");
    assert_eq!(transport.peer, server.key.public());

    // The server reads the bad frame header and closes the connection.
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "server must close after an oversized record"
    );
}

#[tokio::test]
async fn garbage_after_handshake_closes_connection_and_server_keeps_serving() {
    let server = start_server(ServerConfig::default()).await;
    let machine = MachinePrivate::generate();
    let init = weft_proto::noise::Initiator::new(&machine, server.key.public(), CAPVER, [6; 32])
        .expect("init");
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(init.initiation());
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    let req = format!(
        "POST /ts2021 HTTP/1.1\r\nHost: x\r\nUpgrade: tailscale-control-protocol\r\nConnection: upgrade\r\nX-Tailscale-Handshake: {b64}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    // A well-formed record header with a ciphertext that does not authenticate.
    let mut garbage = vec![4u8, 0, 40];
    garbage.extend_from_slice(&[0xaa; 40]);
    s.write_all(&garbage).await.expect("write garbage");
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(DEADLINE, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "server must close after a bad record");

    let client = dial(&server.url(), &machine, server.key.public(), CAPVER)
        .await
        .expect("server still accepts");
    let resp = client
        .send(
            hyper::Request::get("/whoami")
                .body(Body::empty())
                .expect("req"),
        )
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn https_upgrade_accepts_a_self_signed_certificate() {
    let key = Arc::new(MachinePrivate::generate());
    let (_tx, rx) = mpsc::channel(1);
    let inner = inner_app(TestState {
        stream_rx: Arc::new(Mutex::new(Some(rx))),
    });
    let k = key.clone();
    let public = key.public();
    let outer = Router::new()
        .route(
            "/ts2021",
            any(move |req: Request| weft_ts2021::upgrade(req, k.clone(), inner.clone())),
        )
        .route("/key", get(move || async move { public.to_hex() }));

    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let cert_der = cert.cert.der().clone();
    let key_der = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.key_pair.serialize_der().into());
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(vec![cert_der], key_der)
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            let outer = outer.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        tower::ServiceExt::oneshot(outer.clone(), req.map(Body::new))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .with_upgrades()
                    .await;
            });
        }
    });

    let url = format!("https://127.0.0.1:{}", addr.port());
    let fetched = fetch_server_key(&url, CAPVER)
        .await
        .expect("legacy hex key over https");
    assert_eq!(fetched, key.public());
    let machine = MachinePrivate::generate();
    let client = dial(&url, &machine, fetched, CAPVER)
        .await
        .expect("dial over https");
    let resp = client
        .send(
            hyper::Request::get("/whoami")
                .body(Body::empty())
                .expect("req"),
        )
        .await
        .expect("send");
    assert_eq!(
        text(resp).await,
        format!("{} 130", machine.public().to_text())
    );
}
