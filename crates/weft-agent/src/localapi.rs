//! LocalAPI: HTTP/1.1 + JSON over a unix socket between `weft <verb>` and the daemon.
//!
//! The daemon publishes its [`Status`] on a `watch` channel (read directly by the server, with
//! long-poll support) and receives every other request as an [`ApiCommand`] on a bounded
//! channel owned by the backend task. JSON field names follow `tailscale status --json` where
//! Tailscale has an equivalent.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};

/// Path prefix of every LocalAPI route.
pub const PREFIX: &str = "/localapi/v0";

/// Backend states, with Tailscale's names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum BackendState {
    /// Nothing configured yet.
    #[default]
    NoState,
    /// A login is needed (no node key, logged out, key expired, or waiting on an AuthURL).
    NeedsLogin,
    /// Registered but the admin has not approved the machine.
    NeedsMachineAuth,
    /// Logged in, data plane down (`weft down`).
    Stopped,
    /// Logged in, waiting for the first netmap or first DERP connection.
    Starting,
    /// Logged in with a netmap and a live path.
    Running,
}

/// `weft status --json`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Status {
    /// Bumped on every change; used for long polls.
    #[serde(rename = "WeftStatusVersion")]
    pub version: u64,
    /// Backend state.
    pub backend_state: BackendState,
    /// Login URL while an interactive login is pending.
    #[serde(rename = "AuthURL")]
    pub auth_url: String,
    /// Our tailnet addresses.
    #[serde(rename = "TailscaleIPs")]
    pub tailscale_ips: Vec<std::net::IpAddr>,
    /// This node.
    #[serde(rename = "Self")]
    pub self_: Option<PeerStatus>,
    /// Peers by node key text.
    pub peer: BTreeMap<String, PeerStatus>,
    /// MagicDNS suffix (from our node name).
    #[serde(rename = "MagicDNSSuffix")]
    pub magic_dns_suffix: String,
    /// Health messages (errors talking to control, key expiry, ...).
    pub health: Vec<String>,
    /// Control URL in use.
    #[serde(rename = "ControlURL")]
    pub control_url: String,
    /// Tailnet lock, as `weft lock status` shows it.
    #[serde(rename = "WeftTailnetLock")]
    pub tailnet_lock: LockStatus,
    /// Per-packet trouble the data plane counted (filter drops, bad datagrams, send errors).
    #[serde(rename = "WeftDataPlane")]
    pub data_plane: crate::engine::DataPlaneCounters,
    /// This node's route settings and the kernel routes it installed for peers' subnets.
    #[serde(rename = "WeftRoutes")]
    pub routes: RouteStatus,
}

/// Routes in [`Status`] (weft's own; Tailscale shows these through `tailscale debug prefs`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RouteStatus {
    /// What we advertise (`Hostinfo.RoutableIPs`), exit routes included.
    pub advertised: Vec<ipnet::IpNet>,
    /// Whether `--advertise-exit-node` is on.
    pub exit_node: bool,
    /// Whether `--accept-routes` is on.
    pub accept_routes: bool,
    /// Peers' subnet routes currently routed into the TUN.
    pub installed: Vec<ipnet::IpNet>,
}

/// Tailnet lock as this node sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct LockStatus {
    /// Control says tailnet lock is enabled (it sent `TKAInfo` without `Disabled`).
    pub enabled: bool,
    /// The authority's head AUM hash, as control reported it.
    pub head: String,
    /// This node's tailnet-lock public key (`tlpub:...`).
    #[serde(rename = "PublicKey")]
    pub nl_public: String,
    /// This node's node key.
    #[serde(rename = "NodeKey")]
    pub node_key: String,
    /// Whether control holds a signature of this node's key (else peers lock it out).
    pub node_key_signed: bool,
}

/// One node in [`Status`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PeerStatus {
    /// Control's node ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Node key text.
    pub public_key: String,
    /// Short host name.
    pub host_name: String,
    /// FQDN with trailing dot.
    #[serde(rename = "DNSName")]
    pub dns_name: String,
    /// Operating system (from Hostinfo).
    #[serde(rename = "OS")]
    pub os: String,
    /// Owner.
    #[serde(rename = "UserID")]
    pub user_id: i64,
    /// Tailnet addresses.
    #[serde(rename = "TailscaleIPs")]
    pub tailscale_ips: Vec<std::net::IpAddr>,
    /// ACL tags.
    pub tags: Vec<String>,
    /// Home DERP region code.
    pub relay: String,
    /// Current direct address `ip:port`, empty when relayed or idle.
    pub cur_addr: String,
    /// Peer's advertised endpoints.
    pub addrs: Vec<String>,
    /// Bytes received from this peer.
    pub rx_bytes: u64,
    /// Bytes sent to this peer.
    pub tx_bytes: u64,
    /// Last WireGuard handshake, RFC 3339, empty if none.
    pub last_handshake: String,
    /// Whether control says the node is connected.
    pub online: bool,
    /// Key expiry, RFC 3339, empty if none.
    pub key_expiry: String,
    /// Addresses and approved routes the node may send from (control's `AllowedIPs`).
    #[serde(rename = "AllowedIPs", skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<ipnet::IpNet>,
    /// Subnet routes this node is the primary router for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub primary_routes: Vec<ipnet::IpNet>,
    /// Whether the node offers itself as an exit node (approved default routes).
    pub exit_node_option: bool,
}

/// Body of `POST /localapi/v0/up`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpRequest {
    /// Control server URL; kept from the last `up` when empty.
    pub login_server: String,
    /// Pre-auth key; interactive login when empty.
    pub auth_key: String,
    /// Hostname override.
    pub hostname: String,
    /// Requested tags.
    pub advertise_tags: Vec<String>,
    /// Subnet routes to advertise; `None` keeps the current ones, empty clears them.
    pub advertise_routes: Option<Vec<ipnet::IpNet>>,
    /// Offer this node as an exit node; `None` keeps the current setting.
    pub advertise_exit_node: Option<bool>,
    /// Route to peers' subnet routes; `None` keeps the current setting.
    pub accept_routes: Option<bool>,
}

/// Body of `POST /localapi/v0/ping`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PingRequest {
    /// Peer name, short host name, node key or tailnet IP.
    pub peer: String,
    /// How long to wait for the pong.
    pub timeout_ms: u64,
}

/// Result of one disco ping (Tailscale's `ipnstate.PingResult` field names).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PingResult {
    /// Peer tailnet IP pinged.
    #[serde(rename = "IP")]
    pub ip: String,
    /// Peer name.
    #[serde(rename = "NodeName")]
    pub node_name: String,
    /// Error text, empty on success.
    #[serde(rename = "Err")]
    pub err: String,
    /// Round trip.
    #[serde(rename = "LatencySeconds")]
    pub latency_seconds: f64,
    /// Direct `ip:port` the pong came from, empty if via DERP.
    #[serde(rename = "Endpoint")]
    pub endpoint: String,
    /// DERP region the pong came through, 0 if direct.
    #[serde(rename = "DERPRegionID")]
    pub derp_region_id: u16,
    /// DERP region code.
    #[serde(rename = "DERPRegionCode")]
    pub derp_region_code: String,
}

/// `weft netcheck` report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NetcheckReport {
    /// Whether any STUN reply came back.
    #[serde(rename = "UDP")]
    pub udp: bool,
    /// Whether IPv4 STUN worked.
    #[serde(rename = "IPv4")]
    pub ipv4: bool,
    /// Whether IPv6 STUN worked.
    #[serde(rename = "IPv6")]
    pub ipv6: bool,
    /// Mapped IPv4 address as `ip:port`.
    #[serde(rename = "GlobalV4")]
    pub global_v4: String,
    /// Mapped IPv6 address.
    #[serde(rename = "GlobalV6")]
    pub global_v6: String,
    /// Whether different STUN servers saw different mappings (None = unknown).
    #[serde(rename = "MappingVariesByDestIP")]
    pub mapping_varies_by_dest_ip: Option<bool>,
    /// Home region.
    #[serde(rename = "PreferredDERP")]
    pub preferred_derp: u16,
    /// Region ID → latency in seconds.
    #[serde(rename = "RegionLatency")]
    pub region_latency: BTreeMap<u16, f64>,
    /// Region ID → region code, for printing.
    #[serde(rename = "RegionCodes")]
    pub region_codes: BTreeMap<u16, String>,
    /// Region ID → DERP (HTTPS) latency in seconds, where measured.
    #[serde(rename = "DERPLatency")]
    pub derp_latency: BTreeMap<u16, f64>,
}

/// A request the LocalAPI server hands to the backend task.
#[derive(Debug)]
pub enum ApiCommand {
    /// `weft up`.
    Up(UpRequest, oneshot::Sender<Result<(), String>>),
    /// `weft down`.
    Down(oneshot::Sender<Result<(), String>>),
    /// `weft logout`.
    Logout(oneshot::Sender<Result<(), String>>),
    /// `weft ping`: one disco ping.
    Ping(PingRequest, oneshot::Sender<Result<PingResult, String>>),
    /// `weft netcheck`.
    Netcheck(oneshot::Sender<Result<NetcheckReport, String>>),
}

/// Errors of the LocalAPI client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be reached (daemon not running?).
    #[error("cannot connect to weft daemon at {path} (is `weft daemon` running?)")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// HTTP transport failure.
    #[error("local API: {0}")]
    Http(String),
    /// The daemon answered with an error.
    #[error("{0}")]
    Api(String),
    /// The daemon's answer did not parse.
    #[error("local API: bad response: {0}")]
    Decode(String),
}

#[derive(Serialize, Deserialize)]
struct ErrorBody {
    error: String,
}

/// Serves the LocalAPI on `listener` until the task is dropped.
pub async fn serve(
    listener: UnixListener,
    status: watch::Receiver<Status>,
    commands: mpsc::Sender<ApiCommand>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!(error = %e, "localapi accept failed");
                continue;
            }
        };
        let status = status.clone();
        let commands = commands.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                handle(req, status.clone(), commands.clone())
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "localapi connection ended");
            }
        });
    }
}

/// Binds the socket, replacing a stale one, with mode 0600 (root-only like tailscaled's).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

type HResponse = Response<Full<Bytes>>;

async fn handle(
    req: Request<Incoming>,
    mut status: watch::Receiver<Status>,
    commands: mpsc::Sender<ApiCommand>,
) -> Result<HResponse, std::convert::Infallible> {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let method = req.method().clone();
    let Some(route) = path.strip_prefix(PREFIX) else {
        return Ok(error(StatusCode::NOT_FOUND, "not found"));
    };
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(error(StatusCode::BAD_REQUEST, &e.to_string())),
    };
    let resp = match (method, route) {
        (Method::GET, "/status") => {
            let wait = query_param(&query, "wait").and_then(|v| v.parse::<u64>().ok());
            let timeout = query_param(&query, "timeout_ms")
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(30_000);
            if let Some(v) = wait {
                let _ = tokio::time::timeout(
                    Duration::from_millis(timeout),
                    status.wait_for(|s| s.version != v),
                )
                .await;
            }
            let s = status.borrow().clone();
            json(StatusCode::OK, &s)
        }
        (Method::POST, "/up") => match serde_json::from_slice::<UpRequest>(&body) {
            Ok(r) => unit(call(&commands, |tx| ApiCommand::Up(r, tx)).await),
            Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        },
        (Method::POST, "/down") => unit(call(&commands, ApiCommand::Down).await),
        (Method::POST, "/logout") => unit(call(&commands, ApiCommand::Logout).await),
        (Method::POST, "/ping") => match serde_json::from_slice::<PingRequest>(&body) {
            Ok(r) => result(call(&commands, |tx| ApiCommand::Ping(r, tx)).await),
            Err(e) => error(StatusCode::BAD_REQUEST, &e.to_string()),
        },
        (Method::GET, "/netcheck") => result(call(&commands, ApiCommand::Netcheck).await),
        _ => error(StatusCode::NOT_FOUND, "no such LocalAPI route"),
    };
    Ok(resp)
}

async fn call<T>(
    commands: &mpsc::Sender<ApiCommand>,
    make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> ApiCommand,
) -> Result<T, String> {
    let (tx, rx) = oneshot::channel();
    commands
        .send(make(tx))
        .await
        .map_err(|_| "daemon is shutting down".to_owned())?;
    rx.await
        .map_err(|_| "daemon dropped the request".to_owned())?
}

fn unit(r: Result<(), String>) -> HResponse {
    match r {
        Ok(()) => json(StatusCode::OK, &serde_json::json!({})),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

fn result<T: Serialize>(r: Result<T, String>) -> HResponse {
    match r {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &e),
    }
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

fn json<T: Serialize>(code: StatusCode, v: &T) -> HResponse {
    let body = serde_json::to_vec(v).expect("LocalAPI types serialise");
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

fn error(code: StatusCode, msg: &str) -> HResponse {
    json(
        code,
        &ErrorBody {
            error: msg.to_owned(),
        },
    )
}

/// A LocalAPI client (one connection per request, like tailscale's CLI).
#[derive(Debug, Clone)]
pub struct LocalClient {
    socket: PathBuf,
}

impl LocalClient {
    /// A client for the daemon listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    /// Current status; with `wait = Some(v)`, blocks (up to `timeout`) until the version differs from `v`.
    pub async fn status(&self, wait: Option<(u64, Duration)>) -> Result<Status, ClientError> {
        let path = match wait {
            Some((v, t)) => format!("{PREFIX}/status?wait={v}&timeout_ms={}", t.as_millis()),
            None => format!("{PREFIX}/status"),
        };
        self.request(Method::GET, &path, None).await
    }

    /// `weft up`.
    pub async fn up(&self, req: &UpRequest) -> Result<(), ClientError> {
        self.request::<serde_json::Value>(Method::POST, &format!("{PREFIX}/up"), Some(to_json(req)))
            .await
            .map(drop)
    }

    /// `weft down`.
    pub async fn down(&self) -> Result<(), ClientError> {
        self.request::<serde_json::Value>(
            Method::POST,
            &format!("{PREFIX}/down"),
            Some(b"{}".to_vec()),
        )
        .await
        .map(drop)
    }

    /// `weft logout`.
    pub async fn logout(&self) -> Result<(), ClientError> {
        self.request::<serde_json::Value>(
            Method::POST,
            &format!("{PREFIX}/logout"),
            Some(b"{}".to_vec()),
        )
        .await
        .map(drop)
    }

    /// One disco ping.
    pub async fn ping(&self, req: &PingRequest) -> Result<PingResult, ClientError> {
        self.request(Method::POST, &format!("{PREFIX}/ping"), Some(to_json(req)))
            .await
    }

    /// A fresh network report.
    pub async fn netcheck(&self) -> Result<NetcheckReport, ClientError> {
        self.request(Method::GET, &format!("{PREFIX}/netcheck"), None)
            .await
    }

    async fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ClientError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ClientError::Connect {
                    path: self.socket.clone(),
                    source,
                })?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "local-weft.sock")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let code = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes();
        if !code.is_success() {
            let msg = serde_json::from_slice::<ErrorBody>(&bytes)
                .map(|e| e.error)
                .unwrap_or_else(|_| format!("{code}: {}", String::from_utf8_lossy(&bytes)));
            return Err(ClientError::Api(msg));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }
}

fn to_json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).expect("LocalAPI types serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn client_and_server_round_trip_status_and_commands() {
        let tmp = tempfile::tempdir().unwrap();
        let sock = tmp.path().join("weftd.sock");
        let listener = bind(&sock).unwrap();
        let (status_tx, status_rx) = watch::channel(Status {
            version: 1,
            ..Status::default()
        });
        let (cmd_tx, mut cmd_rx) = mpsc::channel(4);
        let server = tokio::spawn(serve(listener, status_rx, cmd_tx));
        let backend = tokio::spawn(async move {
            while let Some(cmd) = cmd_rx.recv().await {
                match cmd {
                    ApiCommand::Up(r, tx) => {
                        let _ = tx.send(if r.login_server.is_empty() {
                            Err("no server".into())
                        } else {
                            Ok(())
                        });
                    }
                    ApiCommand::Ping(r, tx) => {
                        let _ = tx.send(Ok(PingResult {
                            node_name: r.peer,
                            ..PingResult::default()
                        }));
                    }
                    other => drop(other),
                }
            }
        });
        let c = LocalClient::new(&sock);
        assert_eq!(c.status(None).await.unwrap().version, 1);

        let err = c.up(&UpRequest::default()).await.unwrap_err();
        assert_eq!(err.to_string(), "no server");
        c.up(&UpRequest {
            login_server: "http://x".into(),
            ..UpRequest::default()
        })
        .await
        .unwrap();
        let p = c
            .ping(&PingRequest {
                peer: "b".into(),
                timeout_ms: 10,
            })
            .await
            .unwrap();
        assert_eq!(p.node_name, "b");

        let waiter = {
            let c = c.clone();
            tokio::spawn(async move { c.status(Some((1, Duration::from_secs(20)))).await })
        };
        status_tx.send_modify(|s| {
            s.version = 2;
            s.backend_state = BackendState::Running;
        });
        let s = waiter.await.unwrap().unwrap();
        assert_eq!((s.version, s.backend_state), (2, BackendState::Running));
        server.abort();
        backend.abort();
    }

    #[tokio::test]
    async fn client_reports_a_missing_daemon_clearly() {
        let tmp = tempfile::tempdir().unwrap();
        let err = LocalClient::new(tmp.path().join("nope.sock"))
            .status(None)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("is `weft daemon` running?"),
            "{err}"
        );
    }
}
