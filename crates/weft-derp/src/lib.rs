//! Layer 2: the DERP relay (server and client drivers on tokio) and STUN.
//!
//! - [`DerpServer`]: wraps [`weft_proto::derp::ServerCore`] behind a short
//!   mutex; every connection has a reader task and a writer task with bounded
//!   per-client queues, so a slow client loses its own packets and never
//!   stalls others. Serve it through [`DerpServer::router`] (axum, for
//!   embedding) or [`DerpServer::serve_conn`] (raw HTTP/1 front that also
//!   handles DERP fast start).
//! - [`DerpClient`]: the client driver used by the node agent and by mesh links.
//! - [`stun::serve`]: a UDP STUN responder.
//! - [`standalone::run`]: the `weft derp` command.
//! - [`verify`]: admission control (`--verify-clients URL`).

pub mod client;
mod http1;
pub mod mesh;
mod queue;
pub mod server;
pub mod standalone;
pub mod stun;
pub mod tls;
pub mod verify;

pub use client::{ClientOptions, DerpClient, DerpSender, Error as ClientError, TlsMode};
pub use server::{DerpServer, ServerOptions};
pub use standalone::{DerpArgs, StandaloneConfig};
pub use weft_proto::derp::ClientEvent;
