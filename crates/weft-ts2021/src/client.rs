//! Client side: `/key` discovery, the `/ts2021` upgrade and HTTP/2 over Noise.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, HOST, UPGRADE};
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use weft_key::{random_bytes, ChallengePublic, MachinePrivate, MachinePublic};
use weft_proto::noise::{self, EarlyNoise, Initiator};

use crate::stream::NoiseStream;
use crate::{Error, HANDSHAKE_HEADER, UPGRADE_PROTOCOL};

/// Largest `/key` response body read.
const MAX_KEY_BODY: usize = 64 << 10;

/// An HTTP/2 connection to a control server over ts2021.
///
/// Cheap to clone; clones share the connection. Requests are multiplexed as
/// HTTP/2 streams. The connection lives until the server closes it or every
/// clone is dropped.
#[derive(Debug, Clone)]
pub struct Ts2021Client {
    send: hyper::client::conn::http2::SendRequest<Body>,
    authority: String,
    peer: MachinePublic,
    version: u16,
    early_noise: watch::Receiver<EarlyState>,
}

/// The server's EarlyNoise payload, if it sent one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EarlyPayload {
    /// The raw JSON the server sent.
    pub json: Bytes,
    /// `nodeKeyChallenge`, when present and well-formed.
    pub node_key_challenge: Option<ChallengePublic>,
}

impl Ts2021Client {
    /// Sends a request. A relative URI (`/machine/map`) is made absolute as
    /// `https://<control host>/...`, which HTTP/2 needs for `:scheme` and
    /// `:authority`.
    pub async fn send(&self, mut req: Request<Body>) -> Result<Response<Incoming>, Error> {
        if req.uri().scheme().is_none() {
            let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let uri: Uri = format!("https://{}{}", self.authority, pq)
                .parse()
                .map_err(|_| Error::InvalidUrl(pq.to_owned()))?;
            *req.uri_mut() = uri;
        }
        let mut send = self.send.clone();
        send.ready().await?;
        Ok(send.send_request(req).await?)
    }

    /// POSTs `body` as JSON to `path` (e.g. `/machine/register`).
    pub async fn post_json<T: serde::Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<Response<Incoming>, Error> {
        let json = serde_json::to_vec(body)?;
        let req = Request::post(path)
            .header(CONTENT_TYPE, "application/json")
            .body(Body::from(json))
            .map_err(|_| Error::InvalidUrl(path.to_owned()))?;
        self.send(req).await
    }

    /// GETs `path`.
    pub async fn get(&self, path: &str) -> Result<Response<Incoming>, Error> {
        let req = Request::get(path)
            .body(Body::empty())
            .map_err(|_| Error::InvalidUrl(path.to_owned()))?;
        self.send(req).await
    }

    /// The server's Noise key this connection authenticated.
    pub fn peer(&self) -> MachinePublic {
        self.peer
    }

    /// The protocol version this connection was made with.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The server's EarlyNoise payload, if it sent one. Waits until the
    /// first bytes from the server have been seen (they arrive right after
    /// the handshake); `None` if the server sent none or the connection ended.
    pub async fn early_noise(&self) -> Option<Arc<EarlyPayload>> {
        let mut rx = self.early_noise.clone();
        let state = rx
            .wait_for(|s| matches!(s, EarlyState::Done(_)))
            .await
            .ok()?;
        match &*state {
            EarlyState::Done(p) => p.clone(),
            EarlyState::Pending => None,
        }
    }

    /// Whether the connection is gone (server closed it or it failed).
    pub fn is_closed(&self) -> bool {
        self.send.is_closed()
    }
}

/// Reads an HTTP response body up to `limit` bytes.
pub async fn read_body(resp: Response<Incoming>, limit: usize) -> Result<Bytes, Error> {
    let body = Limited::new(resp.into_body(), limit)
        .collect()
        .await
        .map_err(|e| Error::Body(e.to_string()))?;
    Ok(body.to_bytes())
}

/// Opens a ts2021 connection to `control_url` (`http://host[:port]` or
/// `https://host[:port]`, any path ignored) as `machine`, expecting the
/// server key `server_pub`, advertising protocol version `capver`.
///
/// Dials exactly the URL's host and port (no port-80 first try, no dial
/// plans). Over https the certificate is not checked, as Tailscale's client
/// does: Noise authenticates the server. Wrap in `tokio::time::timeout` to
/// bound the time taken.
pub async fn dial(
    control_url: &str,
    machine: &MachinePrivate,
    server_pub: MachinePublic,
    capver: u16,
) -> Result<Ts2021Client, Error> {
    let target = Target::parse(control_url)?;
    let io = target.connect().await?;
    let initiator = Initiator::new(machine, server_pub, capver, random_bytes())?;
    let init_b64 = base64::engine::general_purpose::STANDARD.encode(initiator.initiation());

    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let conn_task = tokio::spawn(conn.with_upgrades());
    let req = Request::post("/ts2021")
        .header(HOST, target.authority())
        .header(UPGRADE, UPGRADE_PROTOCOL)
        .header(CONNECTION, "upgrade")
        .header(HANDSHAKE_HEADER, init_b64)
        .body(Body::empty())
        .map_err(|_| Error::InvalidUrl(control_url.to_owned()))?;
    let resp = sender.send_request(req).await?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let status = resp.status();
        let text = read_body(resp, 4096)
            .await
            .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
            .unwrap_or_default();
        conn_task.abort();
        return Err(Error::UnexpectedStatus(status, text));
    }
    if resp.headers().get(UPGRADE) != Some(&HeaderValue::from_static(UPGRADE_PROTOCOL)) {
        conn_task.abort();
        return Err(Error::BadUpgradeHeader);
    }
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await?);
    drop(sender);

    let mut frame = vec![0u8; noise::HEADER_LEN];
    io.read_exact(&mut frame).await?;
    if let Some(total) = noise::response_frame_len(&frame)? {
        frame.resize(total, 0);
        io.read_exact(&mut frame[noise::HEADER_LEN..]).await?;
    }
    let transport = initiator.finish(&frame)?;
    let peer = transport.peer;
    let (tx, early_noise) = watch::channel(EarlyState::Pending);
    let stream = EarlyNoiseDetect {
        inner: NoiseStream::new(io, transport),
        detecting: true,
        buf: Vec::new(),
        pos: 0,
        tx,
    };
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "ts2021 client connection ended");
        }
    });
    Ok(Ts2021Client {
        send,
        authority: target.authority(),
        peer,
        version: capver,
        early_noise,
    })
}

/// Fetches the server's Noise key from `GET {control_url}/key?v={capver}`.
///
/// Accepts the JSON form (`{"publicKey":"mkey:…"}`) and falls back to the
/// legacy untyped hex body. A zero key is an error. Over https the
/// certificate is not verified.
pub async fn fetch_server_key(control_url: &str, capver: u16) -> Result<MachinePublic, Error> {
    let target = Target::parse(control_url)?;
    let io = target.connect().await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let conn_task = tokio::spawn(conn);
    let req = Request::get(format!("/key?v={capver}"))
        .header(HOST, target.authority())
        .body(Body::empty())
        .map_err(|_| Error::InvalidUrl(control_url.to_owned()))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let body = read_body(resp, MAX_KEY_BODY).await;
    conn_task.abort();
    let body = body?;
    if status != StatusCode::OK {
        return Err(Error::UnexpectedStatus(
            status,
            String::from_utf8_lossy(&body).trim().to_owned(),
        ));
    }
    parse_key_response(&body)
}

#[derive(Deserialize)]
struct KeyResponse {
    #[serde(rename = "publicKey", default)]
    public_key: MachinePublic,
}

/// Parses a `/key` response body: JSON first, then untyped hex.
pub fn parse_key_response(body: &[u8]) -> Result<MachinePublic, Error> {
    let key = match serde_json::from_slice::<KeyResponse>(body) {
        Ok(k) => k.public_key,
        Err(_) => {
            let text =
                std::str::from_utf8(body).map_err(|_| Error::BadServerKey("not UTF-8".into()))?;
            let mut raw = [0u8; 32];
            hex_decode32(text.trim(), &mut raw)
                .ok_or_else(|| Error::BadServerKey("neither JSON nor hex".into()))?;
            MachinePublic::from_bytes(raw)
        }
    };
    if key.is_zero() {
        return Err(Error::BadServerKey("server sent no noise key".into()));
    }
    Ok(key)
}

fn hex_decode32(s: &str, out: &mut [u8; 32]) -> Option<()> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        let hi = (b[2 * i] as char).to_digit(16)?;
        let lo = (b[2 * i + 1] as char).to_digit(16)?;
        *o = (hi * 16 + lo) as u8;
    }
    Some(())
}

#[derive(Deserialize)]
struct EarlyNoiseJson {
    #[serde(rename = "nodeKeyChallenge", default)]
    node_key_challenge: Option<ChallengePublic>,
}

/// Progress of EarlyNoise detection, published by [`EarlyNoiseDetect`].
#[derive(Debug, Clone)]
enum EarlyState {
    Pending,
    Done(Option<Arc<EarlyPayload>>),
}

/// Looks for EarlyNoise at the start of the server's plaintext on the first
/// reads (as Tailscale's client does, so a server that waits for the client's
/// HTTP/2 preface does not stall the dial); bytes that turn out to be HTTP/2
/// are replayed to the reader.
struct EarlyNoiseDetect<S> {
    inner: S,
    detecting: bool,
    /// Peeked bytes; while `detecting`, all of them; after, `buf[pos..]`
    /// is replayed.
    buf: Vec<u8>,
    pos: usize,
    tx: watch::Sender<EarlyState>,
}

impl<S: AsyncRead + Unpin> EarlyNoiseDetect<S> {
    fn poll_detect(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut chunk = [0u8; 4096];
        loop {
            match noise::parse_early_noise(&self.buf) {
                Err(e) => {
                    self.finish(None);
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        e,
                    )));
                }
                Ok(EarlyNoise::Absent) => {
                    self.finish(None);
                    return Poll::Ready(Ok(()));
                }
                Ok(EarlyNoise::Present { json, consumed }) => {
                    let node_key_challenge = serde_json::from_slice::<EarlyNoiseJson>(json)
                        .ok()
                        .and_then(|j| j.node_key_challenge);
                    let payload = EarlyPayload {
                        json: Bytes::copy_from_slice(json),
                        node_key_challenge,
                    };
                    self.pos = consumed;
                    self.finish(Some(Arc::new(payload)));
                    return Poll::Ready(Ok(()));
                }
                Ok(EarlyNoise::NeedMore) => {}
            }
            // Read no further than the parser can use while the header is incomplete.
            let want = match noise::EARLY_NOISE_HEADER_LEN.checked_sub(self.buf.len()) {
                Some(n) if n > 0 => n,
                _ => chunk.len(),
            };
            let mut rb = ReadBuf::new(&mut chunk[..want]);
            std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                self.finish(None);
                return Poll::Ready(Ok(()));
            }
            self.buf.extend_from_slice(rb.filled());
        }
    }

    fn finish(&mut self, payload: Option<Arc<EarlyPayload>>) {
        self.detecting = false;
        let _ = self.tx.send(EarlyState::Done(payload));
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for EarlyNoiseDetect<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.detecting {
            std::task::ready!(this.poll_detect(cx))?;
        }
        if this.pos < this.buf.len() {
            let n = (this.buf.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.buf[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.buf.len() {
                this.buf = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for EarlyNoiseDetect<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Where to dial, from a control URL.
struct Target {
    tls: bool,
    host: String,
    port: u16,
}

impl Target {
    fn parse(url: &str) -> Result<Self, Error> {
        let uri: Uri = url.parse().map_err(|_| Error::InvalidUrl(url.to_owned()))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(Error::InvalidUrl(url.to_owned())),
        };
        let host = uri
            .host()
            .ok_or_else(|| Error::InvalidUrl(url.to_owned()))?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(Self { tls, host, port })
    }

    fn authority(&self) -> String {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        let default = if self.tls { 443 } else { 80 };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    async fn connect(&self) -> Result<MaybeTls, Error> {
        let tcp = TcpStream::connect((self.host.as_str(), self.port)).await?;
        tcp.set_nodelay(true)?;
        if !self.tls {
            return Ok(MaybeTls::Plain(tcp));
        }
        let name = rustls::pki_types::ServerName::try_from(self.host.clone())
            .map_err(|_| Error::InvalidUrl(self.host.clone()))?;
        let connector = tokio_rustls::TlsConnector::from(crate::tls::insecure_client_config()?);
        let tls = connector.connect(name, tcp).await?;
        Ok(MaybeTls::Tls(Box::new(tls)))
    }
}

/// A TCP connection, with or without TLS.
enum MaybeTls {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTls::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    fn detector<S>(inner: S) -> (EarlyNoiseDetect<S>, watch::Receiver<EarlyState>) {
        let (tx, rx) = watch::channel(EarlyState::Pending);
        let d = EarlyNoiseDetect {
            inner,
            detecting: true,
            buf: Vec::new(),
            pos: 0,
            tx,
        };
        (d, rx)
    }

    async fn run(input: Vec<u8>) -> (Vec<u8>, EarlyState) {
        // A 1-byte pipe makes every read return a single byte.
        let (a, mut b) = tokio::io::duplex(1);
        let (mut d, rx) = detector(a);
        let writer = tokio::spawn(async move {
            b.write_all(&input).await.expect("write");
        });
        let mut out = Vec::new();
        d.read_to_end(&mut out).await.expect("read");
        writer.await.expect("writer");
        let state = rx.borrow().clone();
        (out, state)
    }

    #[tokio::test]
    async fn early_noise_split_across_reads_is_stripped_and_published() {
        let challenge = ChallengePublic::from_bytes([0xcc; 32]);
        let mut input = noise::encode_early_noise_challenge(&challenge);
        input.extend_from_slice(b"\x00\x00\x00\x04http2");
        let (out, state) = run(input).await;
        assert_eq!(out, b"\x00\x00\x00\x04http2");
        let EarlyState::Done(Some(p)) = state else {
            panic!("payload expected, got {state:?}");
        };
        assert_eq!(p.node_key_challenge, Some(challenge));
    }

    #[tokio::test]
    async fn bytes_without_early_noise_are_replayed_intact() {
        let input = b"\x00\x00\x12\x04\x00\x00\x00\x00\x00rest of settings".to_vec();
        let (out, state) = run(input.clone()).await;
        assert_eq!(out, input);
        assert!(matches!(state, EarlyState::Done(None)), "{state:?}");
    }

    #[tokio::test]
    async fn partial_magic_then_other_bytes_is_not_early_noise() {
        let input = b"\xff\xff\x00abc".to_vec();
        let (out, state) = run(input.clone()).await;
        assert_eq!(out, input);
        assert!(matches!(state, EarlyState::Done(None)), "{state:?}");
    }

    #[test]
    fn targets_parse_default_ports_and_ipv6() {
        let t = Target::parse("https://ctl.example").expect("https");
        assert!(t.tls);
        assert_eq!((t.host.as_str(), t.port), ("ctl.example", 443));
        assert_eq!(t.authority(), "ctl.example");
        let t = Target::parse("http://[::1]:8080/path").expect("v6");
        assert_eq!((t.host.as_str(), t.port), ("::1", 8080));
        assert_eq!(t.authority(), "[::1]:8080");
        assert!(Target::parse("ftp://x").is_err());
        assert!(Target::parse("no scheme").is_err());
    }
}
