//! The DERP server driver.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;
use bytes::{Bytes, BytesMut};
use hyper_util::rt::TokioIo;
use subtle::ConstantTimeEq;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, trace, warn, Instrument};
use weft_key::{random_bytes, NodePrivate, NodePublic};
use weft_proto::derp::{
    open_client_info, server_info_frame, server_key_frame, Command, ConnId, ConnInfo, Decoder,
    Frame, MeshPeer, ServerCore, ServerInfo, ServerStats, KEEP_ALIVE, PROTOCOL_VERSION,
    SERVER_MAX_FRAME_LEN,
};

use crate::client::DerpSender;
use crate::http1::read_head;
use crate::queue::ClientQueue;
use crate::verify::ClientVerifier;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Server tunables.
#[derive(Clone)]
pub struct ServerOptions {
    /// Shared mesh key (64 lowercase hex); clients presenting it are mesh peers.
    pub mesh_key: Option<String>,
    /// Admission control for non-mesh clients.
    pub verifier: Option<Arc<dyn ClientVerifier>>,
    /// Packets always allowed in each per-client queue (data and disco).
    pub queue_depth: usize,
    /// Bytes the data queue may hold beyond `queue_depth` packets.
    pub queue_bytes: usize,
    /// Per-write timeout for regular clients (`None` = no timeout).
    pub write_timeout: Option<Duration>,
    /// Per-write timeout for mesh peers.
    pub mesh_write_timeout: Duration,
    /// Base keep-alive interval (plus up to 5 s of jitter).
    pub keep_alive: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            mesh_key: None,
            verifier: None,
            queue_depth: 32,
            queue_bytes: 512 << 10,
            write_timeout: Some(Duration::from_secs(2)),
            mesh_write_timeout: Duration::from_secs(30),
            keep_alive: KEEP_ALIVE,
        }
    }
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerOptions")
            .field("mesh_key", &self.mesh_key.as_ref().map(|_| "<redacted>"))
            .field("verifier", &self.verifier.is_some())
            .field("queue_depth", &self.queue_depth)
            .field("write_timeout", &self.write_timeout)
            .finish_non_exhaustive()
    }
}

struct ConnHandle {
    queue: Arc<ClientQueue>,
    cancel: CancellationToken,
}

struct Shared {
    core: ServerCore,
    conns: HashMap<ConnId, ConnHandle>,
    mesh: HashMap<MeshPeer, DerpSender>,
}

/// A DERP relay server. Cheap to share behind an `Arc`.
pub struct DerpServer {
    private: NodePrivate,
    public: NodePublic,
    opts: ServerOptions,
    shared: Mutex<Shared>,
    next_conn: AtomicU64,
    next_mesh: AtomicU32,
    queue_drops: AtomicU64,
    shutdown: CancellationToken,
    /// Notified whenever a connection ends.
    closed: tokio::sync::Notify,
}

impl DerpServer {
    /// A server with the given node-style private key.
    pub fn new(private: NodePrivate, opts: ServerOptions) -> Arc<Self> {
        Arc::new(Self {
            public: private.public(),
            private,
            opts,
            shared: Mutex::new(Shared {
                core: ServerCore::new(),
                conns: HashMap::new(),
                mesh: HashMap::new(),
            }),
            next_conn: AtomicU64::new(1),
            next_mesh: AtomicU32::new(1),
            queue_drops: AtomicU64::new(0),
            shutdown: CancellationToken::new(),
            closed: tokio::sync::Notify::new(),
        })
    }

    /// The server's public key (clients learn it from the ServerKey frame).
    pub fn public_key(&self) -> NodePublic {
        self.public
    }

    /// The server's private key (mesh links use it as their client key).
    pub fn private_key(&self) -> &NodePrivate {
        &self.private
    }

    /// The options this server runs with.
    pub fn options(&self) -> &ServerOptions {
        &self.opts
    }

    /// A snapshot of the core's counters.
    pub fn stats(&self) -> ServerStats {
        self.lock().core.stats().clone()
    }

    /// Packets dropped because a client's queue was full (slow readers).
    pub fn queue_drops(&self) -> u64 {
        self.queue_drops.load(Ordering::Relaxed)
    }

    /// True if `key` has a local connection.
    pub fn is_connected(&self, key: &NodePublic) -> bool {
        self.lock().core.is_connected(key)
    }

    /// True if packets for `key` would go to a mesh peer.
    pub fn has_mesh_route(&self, key: &NodePublic) -> bool {
        self.lock().core.mesh_route(key).is_some()
    }

    /// Closes every connection and stops mesh links.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Tells every connected client that the server is restarting (a `Restarting` frame:
    /// reconnect in `reconnect_in`, keep trying for `try_for`), closes each connection once
    /// what was queued for it is written, and returns when all are closed or `grace` has
    /// passed; then [`DerpServer::shutdown`]s. New connections are still accepted until then.
    pub async fn shutdown_gracefully(
        &self,
        reconnect_in: Duration,
        try_for: Duration,
        grace: Duration,
    ) {
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        let queues: Vec<Arc<ClientQueue>> = {
            let sh = self.lock();
            sh.conns.values().map(|h| h.queue.clone()).collect()
        };
        info!(clients = queues.len(), "announcing restart to DERP clients");
        for q in &queues {
            q.push_last(Frame::Restarting {
                reconnect_in_ms: ms(reconnect_in),
                try_for_ms: ms(try_for),
            });
        }
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            // Registered before the check, so a close in between is not missed.
            let closed = self.closed.notified();
            tokio::pin!(closed);
            closed.as_mut().enable();
            if self.lock().conns.is_empty() {
                break;
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                debug!("restart grace period over; closing the rest");
                break;
            }
        }
        self.shutdown();
    }

    pub(crate) fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// The HTTP routes: `/derp`, `/derp/probe`, `/derp/latency-check`, `/generate_204`.
    ///
    /// Serve with `into_make_service_with_connect_info::<SocketAddr>()` so the
    /// server sees client addresses. Over hyper the DERP fast-start path is not
    /// available; [`DerpServer::serve_conn`] offers it.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/derp", any(derp_upgrade))
            .route("/derp/probe", any(probe))
            .route("/derp/latency-check", any(probe))
            .route("/generate_204", any(generate_204))
            .with_state(self.clone())
    }

    /// Serves one accepted connection (plain TCP or TLS already terminated).
    ///
    /// A DERP upgrade request on `/derp` is handled directly (including fast
    /// start, where no HTTP response is written); anything else goes to
    /// `router` over HTTP/1.1.
    pub async fn serve_conn<IO>(self: Arc<Self>, mut io: IO, remote: SocketAddr, router: Router)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let head = match read_head(&mut io, Duration::from_secs(30)).await {
            Ok(h) => h,
            Err(e) => {
                debug!(%remote, error = %e, "http head");
                return;
            }
        };
        let is_derp = head.first.first().map(String::as_str) == Some("GET")
            && head.first.get(1).map(String::as_str) == Some("/derp")
            && head.header("upgrade").is_some_and(|u| {
                u.eq_ignore_ascii_case("derp") || u.eq_ignore_ascii_case("websocket")
            });
        if !is_derp {
            let io = Rewind::new(head.raw, io);
            let svc = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(remote));
                    let mut r = router.clone();
                    async move {
                        use tower::Service;
                        r.call(req.map(Body::new)).await
                    }
                },
            );
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(io), svc)
                .with_upgrades()
                .await
            {
                debug!(%remote, error = %e, "http connection");
            }
            return;
        }
        let fast_start = head.header("derp-fast-start") == Some("1");
        debug!(%remote, fast_start, "derp upgrade");
        if !fast_start {
            let resp = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: DERP\r\nConnection: Upgrade\r\nDerp-Version: {PROTOCOL_VERSION}\r\nDerp-Public-Key: {}\r\n\r\n",
                self.public.to_hex()
            );
            if io.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
        self.run_conn(io, remote, head.rest).await;
    }

    /// Runs the DERP protocol on an upgraded stream (after any HTTP response).
    ///
    /// `prefix` holds bytes already read from the stream that belong to DERP.
    pub async fn run_conn<IO>(self: Arc<Self>, io: IO, remote: SocketAddr, prefix: Bytes)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let span = tracing::debug_span!("derp_conn", %remote);
        self.run_conn_inner(io, remote, prefix)
            .instrument(span)
            .await
    }

    async fn run_conn_inner<IO>(self: Arc<Self>, io: IO, remote: SocketAddr, prefix: Bytes)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(io);
        let mut decoder = Decoder::new(SERVER_MAX_FRAME_LEN);
        decoder.extend(&prefix);
        // Handshake: ServerKey out, ClientInfo in, admission, ServerInfo out.
        let hs = async {
            wr.write_all(&server_key_frame(self.public).to_bytes())
                .await?;
            wr.flush().await?;
            let mut buf = BytesMut::with_capacity(4096);
            loop {
                match decoder.next_frame() {
                    Ok(Some(f)) => return Ok::<_, std::io::Error>(Some(f)),
                    Ok(None) => {}
                    Err(e) => {
                        warn!(error = %e, "malformed frame in handshake, closing");
                        return Ok(None);
                    }
                }
                buf.clear();
                if rd.read_buf(&mut buf).await? == 0 {
                    return Ok(None);
                }
                decoder.extend(&buf);
            }
        };
        let first = match tokio::time::timeout(HANDSHAKE_TIMEOUT, hs).await {
            Ok(Ok(Some(f))) => f,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                debug!(error = %e, "handshake io");
                return;
            }
            Err(_) => {
                debug!("handshake timed out");
                return;
            }
        };
        let (key, info) = match open_client_info(&self.private, &first) {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "bad client info, closing");
                return;
            }
        };
        let is_mesh_peer = match (&self.opts.mesh_key, &info.mesh_key) {
            (Some(want), Some(got)) => bool::from(want.as_bytes().ct_eq(got.as_bytes())),
            _ => false,
        };
        if !is_mesh_peer {
            if let Some(v) = &self.opts.verifier {
                match v.verify(key, remote.ip()).await {
                    Ok(true) => {}
                    Ok(false) => {
                        info!(client = %key.short(), "client not admitted, closing");
                        return;
                    }
                    Err(e) => {
                        warn!(client = %key.short(), error = %e, "admission check failed, closing");
                        return;
                    }
                }
            }
        }
        let server_info = server_info_frame(
            &self.private,
            key,
            &ServerInfo {
                version: PROTOCOL_VERSION,
                ..Default::default()
            },
            random_bytes(),
        );
        let write_info = async {
            wr.write_all(&server_info.to_bytes()).await?;
            wr.flush().await
        };
        if !matches!(
            tokio::time::timeout(HANDSHAKE_TIMEOUT, write_info).await,
            Ok(Ok(()))
        ) {
            debug!(client = %key.short(), "could not write server info");
            return;
        }

        let conn = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
        let queue = Arc::new(ClientQueue::new(
            self.opts.queue_depth,
            self.opts.queue_bytes,
            is_mesh_peer,
        ));
        let cancel = self.shutdown.child_token();
        {
            let mut sh = self.lock();
            sh.conns.insert(
                conn,
                ConnHandle {
                    queue: queue.clone(),
                    cancel: cancel.clone(),
                },
            );
            sh.core.handle_connect(
                conn,
                key,
                ConnInfo {
                    remote,
                    is_mesh_peer,
                    is_prober: info.is_prober,
                    can_ack_pings: info.can_ack_pings,
                },
            );
            self.drain(&mut sh);
        }
        debug!(client = %key.short(), conn = conn.0, mesh = is_mesh_peer, "client connected");

        let write_timeout = if is_mesh_peer {
            Some(self.opts.mesh_write_timeout)
        } else {
            self.opts.write_timeout
        };
        let writer = tokio::spawn(
            writer_loop(
                wr,
                queue.clone(),
                cancel.clone(),
                write_timeout,
                self.opts.keep_alive,
            )
            .in_current_span(),
        );

        let mut frames = Vec::new();
        let mut read_hint = 4096;
        'read: loop {
            loop {
                match decoder.next_frame() {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break,
                    Err(e) => {
                        warn!(client = %key.short(), error = %e, "malformed frame, closing connection");
                        break 'read;
                    }
                }
            }
            if !frames.is_empty() {
                let now = Instant::now();
                let mut sh = self.lock();
                for f in frames.drain(..) {
                    trace!(frame = f.type_byte(), "frame");
                    sh.core.handle_frame(conn, f, now);
                }
                self.drain(&mut sh);
            }
            let b = decoder.buf_mut();
            b.reserve(read_hint);
            let room = b.capacity() - b.len();
            tokio::select! {
                _ = cancel.cancelled() => break,
                r = rd.read_buf(b) => match r {
                    Ok(0) => break,
                    // Busy connections read in bigger chunks; idle ones stay small.
                    Ok(n) if n == room => read_hint = (read_hint * 2).min(64 << 10),
                    Ok(_) => {}
                    Err(e) => {
                        debug!(error = %e, "read");
                        break;
                    }
                }
            }
        }
        cancel.cancel();
        queue.close();
        {
            let mut sh = self.lock();
            sh.conns.remove(&conn);
            sh.core.handle_disconnect(conn);
            self.drain(&mut sh);
        }
        self.closed.notify_waiters();
        let _ = writer.await;
        debug!(client = %key.short(), conn = conn.0, dropped = queue.dropped(), "client disconnected");
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().expect("derp server lock")
    }

    fn drain(&self, sh: &mut Shared) {
        while let Some(cmd) = sh.core.poll_command() {
            match cmd {
                Command::Send { conn, frame } => {
                    if let Some(h) = sh.conns.get(&conn) {
                        if h.queue.push(frame) {
                            self.queue_drops.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Command::Forward {
                    peer,
                    src,
                    dst,
                    packet,
                } => {
                    if let Some(s) = sh.mesh.get(&peer) {
                        if !s.try_forward(src, dst, packet) {
                            trace!(peer = peer.0, "mesh queue full, packet dropped");
                        }
                    }
                }
                Command::Close { conn, reason } => {
                    if let Some(h) = sh.conns.get(&conn) {
                        info!(conn = conn.0, ?reason, "closing connection");
                        h.cancel.cancel();
                    }
                }
            }
        }
    }

    /// Mesh: registers an outbound link; returns its id for the route calls.
    pub(crate) fn add_mesh_link(&self, sender: DerpSender) -> MeshPeer {
        let peer = MeshPeer(self.next_mesh.fetch_add(1, Ordering::Relaxed));
        self.lock().mesh.insert(peer, sender);
        peer
    }

    pub(crate) fn mesh_peer_present(&self, peer: MeshPeer, key: NodePublic) {
        if key == self.public {
            return;
        }
        self.lock().core.handle_mesh_peer_present(peer, key);
    }

    pub(crate) fn mesh_peer_gone(&self, peer: MeshPeer, key: NodePublic) {
        self.lock().core.handle_mesh_peer_gone(peer, key);
    }

    pub(crate) fn remove_mesh_link(&self, peer: MeshPeer) {
        let mut sh = self.lock();
        sh.mesh.remove(&peer);
        sh.core.handle_mesh_peer_down(peer);
    }
}

async fn writer_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    queue: Arc<ClientQueue>,
    cancel: CancellationToken,
    write_timeout: Option<Duration>,
    keep_alive: Duration,
) {
    let jitter = Duration::from_millis(u64::from(u16::from_le_bytes(random_bytes())) % 5000);
    let mut ka = tokio::time::interval_at(
        tokio::time::Instant::now() + keep_alive + jitter,
        keep_alive + jitter,
    );
    let mut frames = Vec::new();
    let mut out = BytesMut::new();
    loop {
        if queue.take(&mut frames) == 0 {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = queue.wait() => continue,
                _ = ka.tick() => frames.push(Frame::KeepAlive),
            }
        }
        out.clear();
        for f in frames.drain(..) {
            f.encode(&mut out);
        }
        let write = async {
            wr.write_all(&out).await?;
            wr.flush().await
        };
        let res = match write_timeout {
            Some(t) => tokio::time::timeout(t, write).await.unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "write timeout",
                ))
            }),
            None => write.await,
        };
        if let Err(e) = res {
            debug!(error = %e, "write failed, closing connection");
            break;
        }
        if queue.finished() {
            debug!("restart notice written, closing connection");
            break;
        }
        if out.capacity() > 256 << 10 {
            out = BytesMut::new();
        }
    }
    cancel.cancel();
    let _ = wr.shutdown().await;
}

async fn derp_upgrade(State(server): State<Arc<DerpServer>>, mut req: Request) -> Response {
    let upgrade_ok = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|u| u.eq_ignore_ascii_case("derp") || u.eq_ignore_ascii_case("websocket"));
    if !upgrade_ok {
        return (
            StatusCode::UPGRADE_REQUIRED,
            "DERP requires connection upgrade",
        )
            .into_response();
    }
    let remote = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)), |c| c.0);
    let key_hex = server.public.to_hex();
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(up) => {
                server
                    .run_conn(TokioIo::new(up), remote, Bytes::new())
                    .await
            }
            Err(e) => debug!(%remote, error = %e, "derp upgrade failed"),
        }
    });
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("DERP"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert("Derp-Version", HeaderValue::from(PROTOCOL_VERSION));
    if let Ok(v) = HeaderValue::from_str(&key_hex) {
        h.insert("Derp-Public-Key", v);
    }
    resp
}

async fn probe(method: Method) -> Response {
    if method == Method::GET || method == Method::HEAD {
        ([(header::ACCESS_CONTROL_ALLOW_ORIGIN, "*")], "").into_response()
    } else {
        (StatusCode::METHOD_NOT_ALLOWED, "bogus probe method").into_response()
    }
}

async fn generate_204(headers: HeaderMap) -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, no-store, must-revalidate, no-transform, max-age=0"),
    );
    if let Some(c) = headers
        .get("X-Tailscale-Challenge")
        .and_then(|v| v.to_str().ok())
    {
        if c.len() <= 64
            && c.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
        {
            if let Ok(v) = HeaderValue::from_str(&format!("response {c}")) {
                resp.headers_mut().insert("X-Tailscale-Response", v);
            }
        }
    }
    resp
}

/// An IO that first yields `prefix`, then reads from `inner`.
pub(crate) struct Rewind<IO> {
    prefix: Bytes,
    inner: IO,
}

impl<IO> Rewind<IO> {
    pub(crate) fn new(prefix: Bytes, inner: IO) -> Self {
        Self { prefix, inner }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Rewind<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let chunk = self.prefix.split_to(n);
            buf.put_slice(&chunk);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Rewind<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
