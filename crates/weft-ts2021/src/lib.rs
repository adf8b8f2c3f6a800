//! Layer 2: Tailscale's ts2021 control transport on tokio.
//!
//! A client upgrades `POST /ts2021` (HTTP/1.1, `Upgrade:
//! tailscale-control-protocol`, Noise IK initiation base64 in
//! `X-Tailscale-Handshake`), the server answers `101` and then the 51-byte
//! Noise response; from there both sides speak HTTP/2 (prior knowledge)
//! inside Noise transport records. The byte-exact protocol lives in the
//! sans-IO [`weft_proto::noise`]; this crate drives it over sockets.
//!
//! # Server
//!
//! Mount [`upgrade`] (or [`upgrade_with`] for options) on `/ts2021` of the
//! plain-HTTP and the TLS listener; `app` is the router served *inside* the
//! tunnel (`/machine/register`, `/machine/map`, …). Handlers learn the
//! authenticated machine key from the [`NoisePeer`] request extension.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use axum::{Router, routing::{any, post}, Extension, extract::Request};
//! # use weft_key::MachinePrivate;
//! # use weft_ts2021::NoisePeer;
//! let key = Arc::new(MachinePrivate::generate());
//! let inner = Router::new().route(
//!     "/machine/register",
//!     post(|Extension(peer): Extension<NoisePeer>| async move { peer.machine.to_text() }),
//! );
//! let outer: Router = Router::new().route(
//!     "/ts2021",
//!     any(move |req: Request| weft_ts2021::upgrade(req, key.clone(), inner.clone())),
//! );
//! // axum::serve(listener, outer).await
//! ```
//!
//! [`serve_connection`] serves one connection on any byte stream whose
//! initiation arrived out of band.
//!
//! # Client
//!
//! [`fetch_server_key`] reads `GET /key?v=N`; [`dial`] performs the upgrade
//! and returns a [`Ts2021Client`] that sends HTTP/2 requests
//! ([`Ts2021Client::send`], [`Ts2021Client::post_json`]). Response bodies are
//! `hyper::body::Incoming` streams (use [`read_body`] for small ones).
//!
//! # Lower level
//!
//! [`NoiseStream`] is the plaintext `AsyncRead + AsyncWrite` over any
//! established session.
//!
//! # Notes
//!
//! - A TLS listener must serve HTTP/1.1 with upgrades (hyper's
//!   `http1::Builder::serve_connection(..).with_upgrades()`); the client
//!   offers no ALPN.
//! - Refusals happen before the `101`, as `400` with a one-line reason
//!   (`missing next protocol`, `unknown next protocol`, `missing Tailscale
//!   handshake header`, `invalid tailscale handshake header`, `noise
//!   handshake failed`, `unsupported protocol version`). After the upgrade a
//!   bad or oversized record closes the connection.
//! - [`Ts2021Client::early_noise`] resolves once the server's first bytes
//!   arrived; EarlyNoise is detected on the first read, as Tailscale does.
//! - Not implemented: the WebSocket variant, the client's port-80-first
//!   race and dial plans ([`dial`] dials exactly the URL given).
#![warn(missing_docs)]

mod client;
mod server;
mod stream;
mod tls;

pub use client::{
    dial, fetch_server_key, parse_key_response, read_body, EarlyPayload, Ts2021Client,
};
pub use server::{serve_connection, upgrade, upgrade_with, NoisePeer, ServerConfig};
pub use stream::NoiseStream;

/// Value of the `Upgrade` header in both directions.
pub const UPGRADE_PROTOCOL: &str = "tailscale-control-protocol";
/// Header carrying the base64 Noise initiation.
pub const HANDSHAKE_HEADER: &str = "X-Tailscale-Handshake";

/// Errors of the ts2021 client and server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The control URL could not be used.
    #[error("invalid control URL {0:?}")]
    InvalidUrl(String),
    /// Socket-level failure (connect, read, write, TLS).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// TLS configuration failure.
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    /// HTTP/1.1 or HTTP/2 failure.
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    /// The server answered with something other than expected.
    #[error("unexpected HTTP response {0}: {1}")]
    UnexpectedStatus(hyper::StatusCode, String),
    /// The 101 response did not name `tailscale-control-protocol`.
    #[error("server switched to a protocol other than tailscale-control-protocol")]
    BadUpgradeHeader,
    /// The Noise handshake or record layer failed.
    #[error("noise: {0}")]
    Noise(#[from] weft_proto::noise::NoiseError),
    /// The client's protocol version is below the server's minimum.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u16),
    /// Encoding a JSON body failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// Reading a response body failed or it was too large.
    #[error("body: {0}")]
    Body(String),
    /// The `/key` response was unusable.
    #[error("bad server key: {0}")]
    BadServerKey(String),
    /// A step took too long.
    #[error("timed out")]
    Timeout,
}
