//! The DERP client driver (tokio): connect over TLS or plain HTTP, send and
//! receive packets, pings, and the mesh extras.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tracing::debug;
use weft_key::{random_bytes, NodePrivate, NodePublic};
use weft_proto::derp::{ClientConfig, ClientCore, ClientError as CoreError, ClientEvent};

use crate::http1::read_head;
use crate::tls;

/// Whole-connect timeout (TCP + TLS + upgrade + DERP handshake).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const EVENT_QUEUE: usize = 1024;
const CMD_QUEUE: usize = 1024;

/// How to check the server's TLS certificate.
#[derive(Clone, Debug)]
pub enum TlsMode {
    /// Skip verification (`DERPNode.InsecureForTests`).
    InsecureForTests,
    /// Accept exactly the leaf whose DER SHA-256 is this (`CertName: "sha256-raw:<hex>"`).
    PinnedSha256([u8; 32]),
    /// Verify the chain against these roots and the URL host name.
    Roots(Arc<rustls::RootCertStore>),
    /// Verify against the PEM CA certificates in this file (read at connect time).
    RootsPemFile(std::path::PathBuf),
}

/// Client options.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// TLS verification for `https://` URLs.
    pub tls: TlsMode,
    /// Dial this `host:port` instead of the URL's (mesh `host/dialhost`).
    pub dial_addr: Option<String>,
    /// Mesh key (64 hex) for mesh links.
    pub mesh_key: Option<String>,
    /// Subscribe to peer presence right after connecting (mesh links).
    pub watch_conns: bool,
    /// Tell the server it is our home region.
    pub preferred: bool,
    /// Application name sent in ClientInfo.
    pub app_name: String,
    /// Use the TLS meta-certificate to skip the HTTP response (fast start).
    pub fast_start: bool,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            tls: TlsMode::InsecureForTests,
            dial_addr: None,
            mesh_key: None,
            watch_conns: false,
            preferred: false,
            app_name: String::new(),
            fast_start: true,
        }
    }
}

/// Client errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Bad DERP URL.
    #[error("bad DERP URL {0:?}")]
    Url(String),
    /// Socket error.
    #[error("io: {0}")]
    Io(String),
    /// TLS setup or handshake failed.
    #[error("tls: {0}")]
    Tls(String),
    /// The HTTP upgrade failed.
    #[error("http upgrade: {0}")]
    Http(String),
    /// DERP protocol error.
    #[error("derp: {0}")]
    Protocol(#[from] CoreError),
    /// Connecting took longer than 10 s.
    #[error("connect timed out")]
    Timeout,
    /// The server did not answer a ping in time.
    #[error("ping timed out")]
    PingTimeout,
    /// The connection is closed.
    #[error("connection closed")]
    Closed,
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e.to_string())
    }
}

enum Cmd {
    Send(NodePublic, Bytes),
    Forward(NodePublic, NodePublic, Bytes),
    NotePreferred(bool),
    WatchConns,
    ClosePeer(NodePublic),
    Ping(oneshot::Sender<Result<Duration, Error>>),
}

/// A cloneable handle for sending through a [`DerpClient`].
#[derive(Clone, Debug)]
pub struct DerpSender {
    tx: mpsc::Sender<Cmd>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Cmd")
    }
}

impl DerpSender {
    /// Sends `packet` to `dst` via the server (waits for queue room).
    pub async fn send(&self, dst: NodePublic, packet: Bytes) -> Result<(), Error> {
        self.tx
            .send(Cmd::Send(dst, packet))
            .await
            .map_err(|_| Error::Closed)
    }

    /// Sends without waiting; false if the queue is full or closed.
    pub fn try_send(&self, dst: NodePublic, packet: Bytes) -> bool {
        self.tx.try_send(Cmd::Send(dst, packet)).is_ok()
    }

    /// Mesh: forwards a packet from `src` to `dst` without waiting; false if dropped.
    pub fn try_forward(&self, src: NodePublic, dst: NodePublic, packet: Bytes) -> bool {
        self.tx.try_send(Cmd::Forward(src, dst, packet)).is_ok()
    }

    /// Tells the server whether it is our home region.
    pub async fn note_preferred(&self, preferred: bool) -> Result<(), Error> {
        self.tx
            .send(Cmd::NotePreferred(preferred))
            .await
            .map_err(|_| Error::Closed)
    }

    /// Mesh: subscribes to peer presence.
    pub async fn watch_conns(&self) -> Result<(), Error> {
        self.tx
            .send(Cmd::WatchConns)
            .await
            .map_err(|_| Error::Closed)
    }

    /// Mesh: asks the server to close every connection of `key`.
    pub async fn close_peer(&self, key: NodePublic) -> Result<(), Error> {
        self.tx
            .send(Cmd::ClosePeer(key))
            .await
            .map_err(|_| Error::Closed)
    }

    /// Pings the server; the round-trip time, or an error after 5 s.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Ping(tx))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }
}

/// A connected DERP client. Dropping it (and all its senders) closes the connection.
#[derive(Debug)]
pub struct DerpClient {
    sender: DerpSender,
    events: mpsc::Receiver<Result<ClientEvent, Error>>,
    server_key: NodePublic,
    public: NodePublic,
    fast_start: bool,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DerpClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A parsed `http(s)://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DerpUrl {
    pub(crate) tls: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) path: String,
}

impl DerpUrl {
    pub(crate) fn parse(url: &str) -> Result<Self, Error> {
        let bad = || Error::Url(url.to_owned());
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/derp"),
        };
        let (host, port) = if let Some(h) = authority.strip_prefix('[') {
            let (h, p) = h.split_once(']').ok_or_else(bad)?;
            (h.to_owned(), p.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (authority.to_owned(), None),
            }
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if tls => 443,
            None => 80,
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            tls,
            host,
            port,
            path: path.to_owned(),
        })
    }

    fn host_header(&self) -> String {
        let h = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if (self.tls && self.port == 443) || (!self.tls && self.port == 80) {
            h
        } else {
            format!("{h}:{}", self.port)
        }
    }
}

impl DerpClient {
    /// Connects to `url` (`https://host[:port]/derp` or `http://…`) as `private`.
    pub async fn connect(
        url: &str,
        private: NodePrivate,
        opts: ClientOptions,
    ) -> Result<Self, Error> {
        tokio::time::timeout(CONNECT_TIMEOUT, Self::connect_inner(url, private, opts))
            .await
            .map_err(|_| Error::Timeout)?
    }

    async fn connect_inner(
        url: &str,
        private: NodePrivate,
        opts: ClientOptions,
    ) -> Result<Self, Error> {
        let u = DerpUrl::parse(url)?;
        let dial = opts.dial_addr.clone().unwrap_or_else(|| {
            if u.host.contains(':') {
                format!("[{}]:{}", u.host, u.port)
            } else {
                format!("{}:{}", u.host, u.port)
            }
        });
        let tcp = TcpStream::connect(&dial).await?;
        let _ = tcp.set_nodelay(true);
        let (mut io, meta_key): (Box<dyn Io>, Option<NodePublic>) = if u.tls {
            let (s, k) = tls::connect(tcp, &u.host, &opts.tls).await?;
            (Box::new(s), k)
        } else {
            (Box::new(tcp), None)
        };
        let fast_key = meta_key.filter(|_| opts.fast_start);
        let mut req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: weft-derp\r\nConnection: Upgrade\r\nUpgrade: DERP\r\n",
            u.path,
            u.host_header()
        );
        if fast_key.is_some() {
            req.push_str("Derp-Fast-Start: 1\r\n");
        }
        req.push_str("\r\n");
        io.write_all(req.as_bytes()).await?;

        let mut cfg = ClientConfig::new(private, random_bytes());
        cfg.server_key = fast_key;
        cfg.mesh_key = opts.mesh_key.clone();
        cfg.watch_conns = opts.watch_conns;
        cfg.preferred = opts.preferred;
        cfg.app_name = opts.app_name.clone();
        let now = Instant::now();
        let mut core = ClientCore::new(cfg, now);
        if fast_key.is_none() {
            let head = read_head(&mut io, CONNECT_TIMEOUT)
                .await
                .map_err(|e| Error::Http(e.to_string()))?;
            if head.first.get(1).map(String::as_str) != Some("101") {
                return Err(Error::Http(format!("unexpected response {:?}", head.first)));
            }
            core.handle_input(&head.rest, now)?;
        }
        // Drive the handshake until ServerInfo.
        let mut buf = BytesMut::with_capacity(8192);
        let server_key = loop {
            while let Some(b) = core.poll_transmit() {
                io.write_all(&b).await?;
            }
            io.flush().await?;
            if let Some(ClientEvent::Connected { server_key, .. }) = core.poll_event() {
                break server_key;
            }
            buf.clear();
            if io.read_buf(&mut buf).await? == 0 {
                return Err(Error::Closed);
            }
            core.handle_input(&buf, Instant::now())?;
        };
        let public = core.public();
        debug!(%url, server = %server_key.short(), fast_start = fast_key.is_some(), "derp connected");
        let (cmd_tx, cmd_rx) = mpsc::channel(CMD_QUEUE);
        let (ev_tx, ev_rx) = mpsc::channel(EVENT_QUEUE);
        let task = tokio::spawn(async move {
            if let Err(e) = run(io, core, cmd_rx, ev_tx.clone()).await {
                debug!(error = %e, "derp client stopped");
                let _ = ev_tx.send(Err(e)).await;
            }
        });
        Ok(Self {
            sender: DerpSender { tx: cmd_tx },
            events: ev_rx,
            server_key,
            public,
            fast_start: fast_key.is_some(),
            task,
        })
    }

    /// The server's public key.
    pub fn server_key(&self) -> NodePublic {
        self.server_key
    }

    /// True if the connection skipped the HTTP response (TLS meta-cert fast start).
    pub fn used_fast_start(&self) -> bool {
        self.fast_start
    }

    /// Our own public key.
    pub fn public_key(&self) -> NodePublic {
        self.public
    }

    /// A cloneable sending handle.
    pub fn sender(&self) -> DerpSender {
        self.sender.clone()
    }

    /// Sends `packet` to `dst`.
    pub async fn send(&self, dst: NodePublic, packet: impl Into<Bytes>) -> Result<(), Error> {
        self.sender.send(dst, packet.into()).await
    }

    /// Tells the server whether it is our home region.
    pub async fn note_preferred(&self, preferred: bool) -> Result<(), Error> {
        self.sender.note_preferred(preferred).await
    }

    /// Pings the server and returns the round-trip time.
    pub async fn ping(&self) -> Result<Duration, Error> {
        self.sender.ping().await
    }

    /// The next event (packet, peer gone/present, health, restarting).
    pub async fn recv_event(&mut self) -> Result<ClientEvent, Error> {
        self.events.recv().await.unwrap_or(Err(Error::Closed))
    }

    /// The next relayed packet, skipping other events.
    pub async fn recv(&mut self) -> Result<(NodePublic, Bytes), Error> {
        loop {
            if let ClientEvent::Packet { src, packet } = self.recv_event().await? {
                return Ok((src, packet));
            }
        }
    }
}

async fn run(
    mut io: Box<dyn Io>,
    mut core: ClientCore,
    mut cmds: mpsc::Receiver<Cmd>,
    events: mpsc::Sender<Result<ClientEvent, Error>>,
) -> Result<(), Error> {
    let mut pings: HashMap<[u8; 8], oneshot::Sender<Result<Duration, Error>>> = HashMap::new();
    let mut read_hint = 4096;
    let mut buf = BytesMut::new();
    loop {
        let mut wrote = false;
        while let Some(b) = core.poll_transmit() {
            io.write_all(&b).await?;
            wrote = true;
        }
        if wrote {
            io.flush().await?;
        }
        while let Some(ev) = core.poll_event() {
            match ev {
                ClientEvent::Pong { data, rtt } => {
                    if let Some(w) = pings.remove(&data) {
                        let _ = w.send(Ok(rtt));
                    }
                }
                ClientEvent::PingTimeout { data } => {
                    if let Some(w) = pings.remove(&data) {
                        let _ = w.send(Err(Error::PingTimeout));
                    }
                }
                ev => {
                    // A dropped receiver only means nobody listens; keep relaying sends.
                    let _ = events.send(Ok(ev)).await;
                }
            }
        }
        let deadline = core.poll_timeout().map(tokio::time::Instant::from_std);
        buf.clear();
        buf.reserve(read_hint);
        let room = buf.capacity();
        tokio::select! {
            r = io.read_buf(&mut buf) => {
                let n = r?;
                if n == 0 {
                    return Err(Error::Closed);
                }
                if n == room {
                    read_hint = (read_hint * 2).min(64 << 10);
                }
                core.handle_input(&buf, Instant::now())?;
            }
            cmd = cmds.recv() => {
                let Some(cmd) = cmd else { return Ok(()) };
                apply(&mut core, cmd, &mut pings)?;
                // Batch whatever else is queued into the same write.
                for _ in 0..256 {
                    match cmds.try_recv() {
                        Ok(c) => apply(&mut core, c, &mut pings)?,
                        Err(_) => break,
                    }
                }
            }
            _ = sleep_until_opt(deadline) => core.handle_timeout(Instant::now())?,
        }
    }
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn apply(
    core: &mut ClientCore,
    cmd: Cmd,
    pings: &mut HashMap<[u8; 8], oneshot::Sender<Result<Duration, Error>>>,
) -> Result<(), Error> {
    match cmd {
        Cmd::Send(dst, p) => core.send_packet(dst, p)?,
        Cmd::Forward(src, dst, p) => core.forward_packet(src, dst, p)?,
        Cmd::NotePreferred(b) => core.note_preferred(b),
        Cmd::WatchConns => core.watch_conns(),
        Cmd::ClosePeer(k) => core.close_peer(k),
        Cmd::Ping(w) => {
            let data: [u8; 8] = random_bytes();
            pings.insert(data, w);
            core.send_ping(data, Instant::now());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_default_ports_and_path() {
        let u = DerpUrl::parse("https://derp.example/derp").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (true, "derp.example", 443, "/derp")
        );
        assert_eq!(u.host_header(), "derp.example");
        let u = DerpUrl::parse("http://127.0.0.1:3340").unwrap();
        assert_eq!((u.port, u.path.as_str()), (3340, "/derp"));
        assert_eq!(u.host_header(), "127.0.0.1:3340");
        let u = DerpUrl::parse("https://[::1]:8443/derp").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 8443));
        assert!(DerpUrl::parse("ftp://x").is_err());
    }
}
