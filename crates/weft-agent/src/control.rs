//! The control client: ts2021 from the client side, register, the streaming map and lite updates.
//!
//! [`run`] is one long-lived task. It dials the control server (fetching its Noise key first),
//! registers (auth key, or interactive: it reports the AuthURL and then blocks on a follow-up
//! register), then keeps a streaming `/machine/map` poll open, applying every message to a
//! [`MapSession`] and reporting each new [`NetworkMap`]. It reconnects with Tailscale's backoff
//! (`min(n²·10 ms, 30 s)` × 0.5–1.5) and watches its [`LiteInputs`] channel: every change
//! (endpoints, hostinfo, disco key) is sent as a lite update (`Stream:false, OmitPeers:true`).
//! The netmap is rebuilt when a key expires. Private keys stay in this process: only public
//! keys go on the wire.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use hyper::{Request, StatusCode};
use tokio::sync::{mpsc, watch};
use weft_key::{DiscoPublic, MachinePrivate, NlPublic, NodePrivate, NodePublic};
use weft_netmap::{MapSession, NetworkMap};
use weft_tailcfg::{
    Hostinfo, MapRequest, MapResponse, RegisterAuth, RegisterRequest, RegisterResponse, Time,
};
use weft_ts2021::Ts2021Client;

use crate::state::Profile;

/// The capability version we speak (Tailscale 1.90).
pub const CAPVER: i64 = weft_tailcfg::CAPVER_1_90;
/// The client's map watchdog: no frame (keep-alive or map) for this long ends the poll.
pub const MAP_WATCHDOG: Duration = Duration::from_secs(120);
/// Largest compressed map frame accepted.
const MAX_FRAME: usize = 64 << 20;
/// Largest register response body.
const MAX_REGISTER_BODY: usize = 1 << 20;
/// Time allowed for `/key` plus the ts2021 handshake.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Time allowed for a non-follow-up register or a lite update.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// `Expiry` of a logout register request (`time.Unix(123, 0)`).
const LOGOUT_EXPIRY: Time = Time::from_unix(123, 0);

/// Errors of the control client.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Dialing or talking ts2021 failed.
    #[error("control transport: {0}")]
    Transport(#[from] weft_ts2021::Error),
    /// A step took too long.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// Control answered with an unexpected HTTP status.
    #[error("{what} failed {status}: {body}")]
    Status {
        /// Which request.
        what: &'static str,
        /// The status.
        status: StatusCode,
        /// The body text.
        body: String,
    },
    /// Control refused the registration with a message for the user.
    #[error("control server: {0}")]
    Refused(String),
    /// The answer did not parse.
    #[error("bad response from control: {0}")]
    Decode(String),
    /// The map stream broke.
    #[error("map stream: {0}")]
    Stream(String),
}

/// Who we are and how to log in.
#[derive(Clone)]
pub struct ControlParams {
    /// Control server URL.
    pub control_url: String,
    /// Machine key (Noise initiator).
    pub machine: MachinePrivate,
    /// Tailnet-lock public key (`NLKey`).
    pub nl_public: NlPublic,
    /// Current node key.
    pub node: NodePrivate,
    /// Previous node key (sticky `OldNodeKey`).
    pub old_node: NodePublic,
    /// Pre-auth key; interactive login when `None`.
    pub auth_key: Option<String>,
    /// Rotate the node key before registering (key expired, forced re-auth).
    pub regen: bool,
}

/// What the control client reports to the backend task.
#[derive(Debug)]
pub enum ControlEvent {
    /// An interactive login is waiting on the user at this URL.
    AuthUrl(String),
    /// Registration succeeded with `node` (persist it).
    LoggedIn {
        /// The node key now registered.
        node: NodePrivate,
        /// The sticky previous key.
        old_node: NodePublic,
        /// Who we are.
        profile: Profile,
    },
    /// A new network map.
    NetMap(Box<NetworkMap>),
    /// Something failed; the client retries by itself.
    Error(String),
    /// The map stream connected (`true`) or dropped (`false`).
    Connected(bool),
}

/// Data reported to control in lite updates (and in the streaming request).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LiteInputs {
    /// Current disco key.
    pub disco_key: DiscoPublic,
    /// Host information.
    pub hostinfo: Hostinfo,
    /// Own UDP endpoints with their `tailcfg.EndpointType`.
    pub endpoints: Vec<(SocketAddr, i32)>,
}

/// Runs the control client until `events` is closed (or the task is aborted).
pub async fn run(
    params: ControlParams,
    mut inputs: watch::Receiver<LiteInputs>,
    events: mpsc::Sender<ControlEvent>,
) {
    let mut backoff = Backoff::default();
    let mut conn: Option<Ts2021Client> = None;
    let mut params = params;
    let mut logged_in = false;
    loop {
        if events.is_closed() {
            return;
        }
        let c = match conn.as_ref().filter(|c| !c.is_closed()) {
            Some(c) => c.clone(),
            None => match connect(&params.control_url, &params.machine).await {
                Ok(c) => {
                    conn = Some(c.clone());
                    c
                }
                Err(e) => {
                    report(&events, &e).await;
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            },
        };
        if !logged_in {
            match login(&c, &params, &inputs, &events).await {
                Ok((node, old_node, profile)) => {
                    params.node = node.clone();
                    params.old_node = old_node;
                    params.regen = false;
                    logged_in = true;
                    backoff.reset();
                    let _ = events
                        .send(ControlEvent::LoggedIn {
                            node,
                            old_node,
                            profile,
                        })
                        .await;
                }
                Err(e) => {
                    report(&events, &e).await;
                    if matches!(e, ControlError::Transport(_) | ControlError::Timeout(_)) {
                        conn = None;
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
            }
        }
        let result = poll_map(&c, &params, &mut inputs, &events, &mut backoff).await;
        let _ = events.send(ControlEvent::Connected(false)).await;
        if let Err(e) = result {
            report(&events, &e).await;
        }
        if c.is_closed() {
            conn = None;
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Logs out: tells control to expire `node` (`Expiry` in 1970).
pub async fn logout(
    control_url: &str,
    machine: &MachinePrivate,
    nl_public: NlPublic,
    node: &NodePrivate,
    old_node: NodePublic,
) -> Result<(), ControlError> {
    let c = connect(control_url, machine).await?;
    let req = RegisterRequest {
        version: CAPVER,
        node_key: node.public(),
        old_node_key: old_node,
        nl_key: Some(nl_public),
        expiry: LOGOUT_EXPIRY,
        hostinfo: Some(Hostinfo::new()),
        ..RegisterRequest::default()
    };
    let resp = register(&c, &req, Some(REQUEST_TIMEOUT)).await?;
    if !resp.error.is_empty() {
        return Err(ControlError::Refused(resp.error));
    }
    Ok(())
}

/// Fetches the server key and dials ts2021, within [`DIAL_TIMEOUT`].
pub async fn connect(
    control_url: &str,
    machine: &MachinePrivate,
) -> Result<Ts2021Client, ControlError> {
    let fut = async {
        let server = weft_ts2021::fetch_server_key(control_url, CAPVER as u16).await?;
        Ok::<_, ControlError>(weft_ts2021::dial(control_url, machine, server, CAPVER as u16).await?)
    };
    tokio::time::timeout(DIAL_TIMEOUT, fut)
        .await
        .map_err(|_| ControlError::Timeout("dialing control"))?
}

async fn report(events: &mpsc::Sender<ControlEvent>, e: &ControlError) {
    tracing::debug!(error = %e, "control client error");
    let _ = events.send(ControlEvent::Error(e.to_string())).await;
}

async fn login(
    c: &Ts2021Client,
    params: &ControlParams,
    inputs: &watch::Receiver<LiteInputs>,
    events: &mpsc::Sender<ControlEvent>,
) -> Result<(NodePrivate, NodePublic, Profile), ControlError> {
    let mut node = params.node.clone();
    let mut old_node = params.old_node;
    let mut regenerated = false;
    if params.regen {
        old_node = node.public();
        node = NodePrivate::generate();
        regenerated = true;
    }
    let mut followup = String::new();
    loop {
        let req = RegisterRequest {
            version: CAPVER,
            node_key: node.public(),
            old_node_key: old_node,
            nl_key: Some(params.nl_public),
            auth: params.auth_key.clone().map(|k| RegisterAuth {
                auth_key: k,
                oauth2_token: None,
            }),
            expiry: Time::ZERO,
            followup: followup.clone(),
            hostinfo: Some(inputs.borrow().hostinfo.clone()),
            ..RegisterRequest::default()
        };
        let timeout = followup.is_empty().then_some(REQUEST_TIMEOUT);
        let resp = register(c, &req, timeout).await?;
        if !resp.error.is_empty() {
            return Err(ControlError::Refused(resp.error));
        }
        if resp.node_key_expired {
            if regenerated {
                return Err(ControlError::Refused(
                    "server says the new node key is expired".into(),
                ));
            }
            tracing::info!("control says our node key expired; rotating it");
            old_node = node.public();
            node = NodePrivate::generate();
            regenerated = true;
            continue;
        }
        if !resp.auth_url.is_empty() {
            if resp.auth_url == followup {
                return Err(ControlError::Refused("login is still pending".into()));
            }
            tracing::info!(url = %resp.auth_url, "interactive login needed");
            let _ = events
                .send(ControlEvent::AuthUrl(resp.auth_url.clone()))
                .await;
            followup = resp.auth_url;
            continue;
        }
        let profile = Profile {
            user_id: resp.user.id,
            login_name: resp.login.login_name,
            display_name: if resp.login.display_name.is_empty() {
                resp.user.display_name
            } else {
                resp.login.display_name
            },
        };
        tracing::info!(node = %node.public().short(), login = %profile.login_name, "registered with control");
        return Ok((node, old_node, profile));
    }
}

async fn register(
    c: &Ts2021Client,
    req: &RegisterRequest,
    timeout: Option<Duration>,
) -> Result<RegisterResponse, ControlError> {
    let fut = async {
        let mut r = post(req, "/machine/register")?;
        add_lb_header(&mut r, req.node_key);
        let resp = c.send(r).await?;
        let status = resp.status();
        let body = weft_ts2021::read_body(resp, MAX_REGISTER_BODY).await?;
        if status != StatusCode::OK {
            return Err(ControlError::Status {
                what: "register",
                status,
                body: String::from_utf8_lossy(&body).trim().to_owned(),
            });
        }
        serde_json::from_slice::<RegisterResponse>(&body)
            .map_err(|e| ControlError::Decode(e.to_string()))
    };
    match timeout {
        Some(t) => tokio::time::timeout(t, fut)
            .await
            .map_err(|_| ControlError::Timeout("registering"))?,
        None => fut.await,
    }
}

fn post<T: serde::Serialize>(body: &T, path: &str) -> Result<Request<Body>, ControlError> {
    let json = serde_json::to_vec(body).map_err(|e| ControlError::Decode(e.to_string()))?;
    Request::post(path)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Body::from(json))
        .map_err(|e| ControlError::Decode(e.to_string()))
}

fn add_lb_header(r: &mut Request<Body>, node: NodePublic) {
    if let Ok(v) = hyper::header::HeaderValue::from_str(&node.to_text()) {
        r.headers_mut().insert("ts-lb", v);
    }
}

fn map_request(params: &ControlParams, inputs: &LiteInputs, stream: bool) -> MapRequest {
    MapRequest {
        version: CAPVER,
        compress: "zstd".into(),
        keep_alive: true,
        node_key: params.node.public(),
        disco_key: inputs.disco_key,
        stream,
        omit_peers: !stream,
        hostinfo: Some(inputs.hostinfo.clone()),
        endpoints: inputs.endpoints.iter().map(|(a, _)| *a).collect(),
        endpoint_types: inputs.endpoints.iter().map(|(_, t)| *t).collect(),
        ..MapRequest::default()
    }
}

/// Sends one lite update and reads its (ignored) body to the end.
async fn lite_update(c: Ts2021Client, req: MapRequest) -> Result<(), ControlError> {
    let fut = async {
        let mut r = post(&req, "/machine/map")?;
        add_lb_header(&mut r, req.node_key);
        let resp = c.send(r).await?;
        let status = resp.status();
        let body = weft_ts2021::read_body(resp, MAX_REGISTER_BODY).await?;
        if status != StatusCode::OK {
            return Err(ControlError::Status {
                what: "lite update",
                status,
                body: String::from_utf8_lossy(&body).trim().to_owned(),
            });
        }
        Ok(())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .map_err(|_| ControlError::Timeout("sending lite update"))?
}

async fn poll_map(
    c: &Ts2021Client,
    params: &ControlParams,
    inputs: &mut watch::Receiver<LiteInputs>,
    events: &mpsc::Sender<ControlEvent>,
    backoff: &mut Backoff,
) -> Result<(), ControlError> {
    let current = inputs.borrow_and_update().clone();
    let req = map_request(params, &current, true);
    let mut r = post(&req, "/machine/map")?;
    add_lb_header(&mut r, req.node_key);
    let resp = tokio::time::timeout(MAP_WATCHDOG, c.send(r))
        .await
        .map_err(|_| ControlError::Timeout("waiting for map response headers"))??;
    let status = resp.status();
    if status != StatusCode::OK {
        let body = weft_ts2021::read_body(resp, 4096).await.unwrap_or_default();
        return Err(ControlError::Status {
            what: "initial fetch",
            status,
            body: String::from_utf8_lossy(&body).trim().to_owned(),
        });
    }
    spawn_lite_update(c, map_request(params, &current, false), events);
    let mut body = resp.into_body();
    let mut decoder = FrameDecoder::default();
    let mut session = MapSession::new();
    let mut connected = false;
    loop {
        let expiry = session.poll_timeout(SystemTime::now()).map(|t| {
            let d = t.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::Instant::now() + d
        });
        tokio::select! {
            frame = tokio::time::timeout(MAP_WATCHDOG, body.frame()) => {
                let frame = frame.map_err(|_| ControlError::Timeout("waiting for a map message"))?;
                let Some(frame) = frame else {
                    return Err(ControlError::Stream("ended".into()));
                };
                let frame = frame.map_err(|e| ControlError::Stream(e.to_string()))?;
                let Ok(data) = frame.into_data() else { continue };
                decoder.push(&data);
                while let Some(msg) = decoder.next_message()? {
                    let changes = session
                        .handle_map_response(msg, SystemTime::now())
                        .map_err(|e| ControlError::Stream(e.to_string()))?;
                    if !connected && session.has_self_node() {
                        connected = true;
                        backoff.reset();
                        let _ = events.send(ControlEvent::Connected(true)).await;
                    }
                    if let Some(url) = &changes.pop_browser_url {
                        tracing::info!(%url, "control asks to open a URL");
                    }
                    if let Some(p) = changes.ping_request.clone() {
                        answer_ping_request(c, p);
                    }
                    if changes.netmap_changed() {
                        if let Some(nm) = session.netmap(SystemTime::now()) {
                            let _ = events.send(ControlEvent::NetMap(Box::new(nm))).await;
                        }
                    }
                }
            }
            _ = sleep_until_opt(expiry) => {
                if let Some(nm) = session.netmap(SystemTime::now()) {
                    tracing::info!("a node key expired; rebuilding the netmap");
                    let _ = events.send(ControlEvent::NetMap(Box::new(nm))).await;
                }
            }
            changed = inputs.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let current = inputs.borrow_and_update().clone();
                spawn_lite_update(c, map_request(params, &current, false), events);
            }
        }
    }
}

fn spawn_lite_update(c: &Ts2021Client, req: MapRequest, events: &mpsc::Sender<ControlEvent>) {
    let c = c.clone();
    let events = events.clone();
    tokio::spawn(async move {
        match lite_update(c, req).await {
            Ok(()) => tracing::debug!("lite update sent"),
            Err(e) => report(&events, &e).await,
        }
    });
}

/// Answers a control `PingRequest` without `Types` (a `HEAD` to prove we are alive).
fn answer_ping_request(c: &Ts2021Client, p: weft_tailcfg::PingRequest) {
    if !p.types.is_empty() || !p.url_is_noise {
        tracing::debug!(types = %p.types, "ignoring control ping request we do not implement");
        return;
    }
    let c = c.clone();
    tokio::spawn(async move {
        let Ok(req) = Request::head(p.url.as_str()).body(Body::empty()) else {
            return;
        };
        let r = tokio::time::timeout(Duration::from_secs(15), c.send(req)).await;
        tracing::debug!(ok = matches!(r, Ok(Ok(_))), "answered control ping request");
    });
}

async fn sleep_until_opt(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Splits the map stream into messages: `u32` little-endian length, then a zstd frame of JSON.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: BytesMut,
}

impl FrameDecoder {
    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next complete message, if one is buffered.
    pub fn next_message(&mut self) -> Result<Option<MapResponse>, ControlError> {
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let n = u32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]) as usize;
        if n > MAX_FRAME {
            return Err(ControlError::Stream(format!(
                "map frame of {n} bytes is too large"
            )));
        }
        if self.buf.len() < 4 + n {
            return Ok(None);
        }
        self.buf.advance(4);
        let payload = self.buf.split_to(n);
        let json = zstd::stream::decode_all(&payload[..])
            .map_err(|e| ControlError::Decode(format!("zstd: {e}")))?;
        let msg = serde_json::from_slice(&json).map_err(|e| ControlError::Decode(e.to_string()))?;
        Ok(Some(msg))
    }
}

/// Encodes one map message as control sends it (for tests and fakes).
pub fn encode_frame(msg: &MapResponse) -> Vec<u8> {
    let json = serde_json::to_vec(msg).expect("MapResponse serialises");
    let z = zstd::bulk::compress(&json, 1).expect("zstd compresses in memory");
    let mut out = (z.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&z);
    out
}

/// Tailscale's reconnect backoff: `min(n²·10 ms, 30 s)`, jittered ×0.5–1.5.
#[derive(Debug, Default)]
pub struct Backoff {
    n: u32,
}

impl Backoff {
    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        self.n = self.n.saturating_add(1);
        let base = Duration::from_millis(10 * u64::from(self.n) * u64::from(self.n))
            .min(Duration::from_secs(30));
        let r: [u8; 2] = weft_key::random_bytes();
        let jitter = 0.5 + f64::from(u16::from_le_bytes(r)) / f64::from(u16::MAX);
        base.mul_f64(jitter)
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.n = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_decoder_handles_split_and_coalesced_frames() {
        let a = encode_frame(&MapResponse::keep_alive());
        let b = encode_frame(&MapResponse {
            domain: "x".into(),
            ..MapResponse::default()
        });
        let mut all = a.clone();
        all.extend_from_slice(&b);
        let mut d = FrameDecoder::default();
        d.push(&all[..3]);
        assert!(d.next_message().unwrap().is_none());
        d.push(&all[3..a.len() + 2]);
        assert!(d.next_message().unwrap().unwrap().keep_alive);
        assert!(d.next_message().unwrap().is_none());
        d.push(&all[a.len() + 2..]);
        assert_eq!(d.next_message().unwrap().unwrap().domain, "x");
        assert!(d.next_message().unwrap().is_none());
    }

    #[test]
    fn frame_decoder_rejects_uncompressed_json() {
        let json = br#"{"KeepAlive":true}"#;
        let mut f = (json.len() as u32).to_le_bytes().to_vec();
        f.extend_from_slice(json);
        let mut d = FrameDecoder::default();
        d.push(&f);
        assert!(matches!(d.next_message(), Err(ControlError::Decode(_))));
    }

    #[test]
    fn backoff_grows_quadratically_and_caps_at_45s() {
        let mut b = Backoff::default();
        let first = b.next_delay();
        assert!(
            first >= Duration::from_millis(5) && first <= Duration::from_millis(15),
            "{first:?}"
        );
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(45));
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(15));
    }
}
