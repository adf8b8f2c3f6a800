//! Server side: the `/ts2021` upgrade handler and HTTP/2 over Noise.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::StatusCode;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tower::ServiceExt;
use tracing::Instrument;
use weft_key::{random_bytes, ChallengePrivate, MachinePrivate, MachinePublic};
use weft_proto::noise::{self, Responder};

use crate::stream::NoiseStream;
use crate::{HANDSHAKE_HEADER, UPGRADE_PROTOCOL};

/// Who is on the other end of a ts2021 connection. Inserted as a request
/// extension into every request served over Noise, so handlers can take
/// `Extension(peer): Extension<NoisePeer>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoisePeer {
    /// The client's machine key, authenticated by the Noise handshake.
    pub machine: MachinePublic,
    /// The protocol version (client capability version) from the handshake.
    pub version: u16,
}

/// Options for [`upgrade_with`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Versions below this are refused with 400 before the upgrade.
    pub min_version: u16,
    /// Send an EarlyNoise payload with a fresh random `nodeKeyChallenge`
    /// right after the handshake response (headscale does; Tailscale's
    /// test server does not; clients ignore the value).
    pub early_noise_challenge: bool,
    /// Time allowed to write the handshake response.
    pub handshake_timeout: Duration,
    /// Send an HTTP/2 PING after this much idle time and close the
    /// connection if no answer comes within [`ServerConfig::keep_alive_timeout`],
    /// so dead clients are noticed. `None` disables pings.
    pub keep_alive_interval: Option<Duration>,
    /// How long to wait for a PING answer.
    pub keep_alive_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            min_version: 0,
            early_noise_challenge: false,
            handshake_timeout: Duration::from_secs(10),
            keep_alive_interval: Some(Duration::from_secs(50)),
            keep_alive_timeout: Duration::from_secs(20),
        }
    }
}

/// Handles `POST /ts2021` (or GET) with [`ServerConfig::default`]. See [`upgrade_with`].
pub async fn upgrade(req: Request, key: Arc<MachinePrivate>, app: Router) -> Response {
    upgrade_with(req, key, app, ServerConfig::default()).await
}

/// Handles a ts2021 upgrade request inside an axum (or any hyper 1 HTTP/1.1)
/// server that serves connections with upgrades enabled (`axum::serve` does).
///
/// Checks `Upgrade: tailscale-control-protocol` and the base64 Noise
/// initiation in `X-Tailscale-Handshake` and authenticates the client's
/// machine key; on any problem answers 400 with a one-line reason. Otherwise
/// answers `101 Switching Protocols` and spawns a task that, once hyper hands
/// over the connection (bytes the client pipelined are kept), writes the
/// handshake response (and optional EarlyNoise) in one write and serves
/// HTTP/2 (prior knowledge) with `app` over the Noise stream. Every inner
/// request carries a [`NoisePeer`] extension.
pub async fn upgrade_with(
    mut req: Request,
    key: Arc<MachinePrivate>,
    app: Router,
    config: ServerConfig,
) -> Response {
    let responder = match check_request(&req, &key, config.min_version) {
        Ok(r) => r,
        Err(msg) => {
            tracing::debug!(reason = msg, "refusing ts2021 upgrade");
            return (StatusCode::BAD_REQUEST, format!("{msg}\n")).into_response();
        }
    };
    let peer = NoisePeer {
        machine: responder.peer(),
        version: responder.version(),
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let span =
        tracing::info_span!("ts2021", machine = %peer.machine.short(), version = peer.version);
    tokio::spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!(error = %e, "ts2021 upgrade did not complete");
                    return;
                }
            };
            if let Err(e) = serve_handshaken(TokioIo::new(upgraded), responder, app, &config).await
            {
                tracing::debug!(error = %e, "ts2021 connection ended with an error");
            }
        }
        .instrument(span),
    );
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    resp.headers_mut()
        .insert(UPGRADE, HeaderValue::from_static(UPGRADE_PROTOCOL));
    resp.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    resp
}

/// Serves one ts2021 connection whose initiation already arrived out of band
/// (`msg1`), on a raw byte stream (e.g. a hijacked TCP connection or a test
/// pipe): writes the response, then serves HTTP/2 with `app` until the peer
/// goes away.
pub async fn serve_connection<IO>(
    io: IO,
    key: &MachinePrivate,
    msg1: &[u8],
    app: Router,
    config: &ServerConfig,
) -> Result<(), crate::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let responder = Responder::read_initiation(key, msg1)?;
    if responder.version() < config.min_version {
        return Err(crate::Error::UnsupportedVersion(responder.version()));
    }
    serve_handshaken(io, responder, app, config).await
}

fn check_request(
    req: &Request,
    key: &MachinePrivate,
    min_version: u16,
) -> Result<Responder, &'static str> {
    let next = req
        .headers()
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if next.is_empty() {
        return Err("missing next protocol");
    }
    if !next.eq_ignore_ascii_case(UPGRADE_PROTOCOL) {
        return Err("unknown next protocol");
    }
    let Some(init) = req.headers().get(HANDSHAKE_HEADER) else {
        return Err("missing Tailscale handshake header");
    };
    let Ok(init) = base64::engine::general_purpose::STANDARD.decode(init.as_bytes()) else {
        return Err("invalid tailscale handshake header");
    };
    let responder = match Responder::read_initiation(key, &init) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(error = %e, "bad ts2021 initiation");
            return Err("noise handshake failed");
        }
    };
    if responder.version() < min_version {
        return Err("unsupported protocol version");
    }
    Ok(responder)
}

async fn serve_handshaken<IO>(
    io: IO,
    responder: Responder,
    app: Router,
    config: &ServerConfig,
) -> Result<(), crate::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (msg2, transport) = responder.respond(random_bytes())?;
    let peer = NoisePeer {
        machine: transport.peer,
        version: transport.version,
    };
    let mut stream = NoiseStream::new(io, transport);
    stream.queue_raw(&msg2);
    if config.early_noise_challenge {
        let challenge = ChallengePrivate::generate().public();
        stream.queue(&noise::encode_early_noise_challenge(&challenge))?;
    }
    tokio::time::timeout(config.handshake_timeout, stream.flush())
        .await
        .map_err(|_| crate::Error::Timeout)??;
    tracing::debug!("ts2021 handshake complete");

    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer);
            app.clone().oneshot(req.map(Body::new))
        });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .keep_alive_interval(config.keep_alive_interval)
        .keep_alive_timeout(config.keep_alive_timeout);
    builder
        .serve_connection(TokioIo::new(stream), service)
        .await?;
    Ok(())
}
