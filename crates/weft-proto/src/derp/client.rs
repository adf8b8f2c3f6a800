//! The DERP client's protocol core.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use weft_key::{NodePrivate, NodePublic};

use super::codec::{
    open_server_info, seal_client_info, ClientInfo, DecodeError, Decoder, Frame, HandshakeError,
    PeerGoneReason, PeerPresentFlags, ServerInfo, CLIENT_MAX_FRAME_LEN, MAX_PACKET_SIZE,
    PROTOCOL_VERSION,
};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(120);
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// How a [`ClientCore`] identifies itself.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The node private key (the DERP identity).
    pub private: NodePrivate,
    /// The server key learned out of band (TLS meta-cert): enables fast start.
    pub server_key: Option<NodePublic>,
    /// Mesh key (64 hex) for server-to-server mesh connections.
    pub mesh_key: Option<String>,
    /// Application name sent in ClientInfo (may be empty).
    pub app_name: String,
    /// Whether this client is a prober.
    pub is_prober: bool,
    /// Send NotePreferred(true) right after the handshake.
    pub preferred: bool,
    /// Send WatchConns right after the handshake (mesh clients).
    pub watch_conns: bool,
    /// Nonce used to seal ClientInfo (random, from the driver).
    pub info_nonce: [u8; 24],
}

impl ClientConfig {
    /// A plain client config with the given key and nonce.
    pub fn new(private: NodePrivate, info_nonce: [u8; 24]) -> Self {
        Self {
            private,
            server_key: None,
            mesh_key: None,
            app_name: String::new(),
            is_prober: false,
            preferred: false,
            watch_conns: false,
            info_nonce,
        }
    }
}

/// Something the client learned from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The handshake completed.
    Connected {
        /// The server's public key.
        server_key: NodePublic,
        /// The opened ServerInfo.
        info: ServerInfo,
    },
    /// A relayed packet.
    Packet {
        /// Sender's node key.
        src: NodePublic,
        /// Packet bytes.
        packet: Bytes,
    },
    /// A peer left or is unknown.
    PeerGone {
        /// The peer.
        key: NodePublic,
        /// Why.
        reason: PeerGoneReason,
    },
    /// A peer connected (watchers only).
    PeerPresent {
        /// The peer.
        key: NodePublic,
        /// Its address as seen by the server.
        addr: Option<SocketAddr>,
        /// Flags.
        flags: Option<PeerPresentFlags>,
    },
    /// Server health text (empty = healthy).
    Health {
        /// Problem text.
        problem: String,
    },
    /// The server is restarting.
    Restarting {
        /// Suggested delay before reconnecting.
        reconnect_in: Duration,
        /// How long to keep trying.
        try_for: Duration,
    },
    /// Our ping was answered.
    Pong {
        /// Ping data.
        data: [u8; 8],
        /// Round-trip time.
        rtt: Duration,
    },
    /// Our ping was not answered in time.
    PingTimeout {
        /// Ping data.
        data: [u8; 8],
    },
}

/// Fatal client errors: the connection must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The byte stream was not valid DERP.
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    /// The handshake failed.
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    /// The server key differs from the one known in advance.
    #[error("server key {got} differs from expected {want}")]
    ServerKeyMismatch {
        /// Expected key.
        want: NodePublic,
        /// Key the server sent.
        got: NodePublic,
    },
    /// No ServerInfo within the handshake deadline.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// Nothing heard from the server within the read deadline.
    #[error("no frame from server for {0:?}")]
    ReadTimeout(Duration),
    /// A packet larger than DERP allows.
    #[error("packet of {0} bytes is too large")]
    PacketTooLarge(usize),
    /// The core already failed.
    #[error("connection already failed")]
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitServerKey,
    AwaitServerInfo,
    Connected,
    Failed,
}

/// Sans-IO DERP client.
///
/// Feed received bytes with [`ClientCore::handle_input`] and call
/// [`ClientCore::handle_timeout`] at [`ClientCore::poll_timeout`]; after each
/// call write out [`ClientCore::poll_transmit`] and drain [`ClientCore::poll_event`].
pub struct ClientCore {
    cfg: ClientConfig,
    state: State,
    decoder: Decoder,
    server_key: Option<NodePublic>,
    out: BytesMut,
    /// Frames queued before ClientInfo could be sent.
    pending: Vec<Frame>,
    events: VecDeque<ClientEvent>,
    handshake_deadline: Instant,
    last_rx: Instant,
    pings: BTreeMap<[u8; 8], Instant>,
}

impl ClientCore {
    /// A client that starts the handshake at `now`.
    pub fn new(cfg: ClientConfig, now: Instant) -> Self {
        let mut c = Self {
            state: State::AwaitServerKey,
            decoder: Decoder::new(CLIENT_MAX_FRAME_LEN),
            server_key: cfg.server_key,
            out: BytesMut::new(),
            pending: Vec::new(),
            events: VecDeque::new(),
            handshake_deadline: now + HANDSHAKE_TIMEOUT,
            last_rx: now,
            pings: BTreeMap::new(),
            cfg,
        };
        if let Some(k) = c.server_key {
            // Fast start: the server still sends ServerKey, which we then check.
            c.send_client_info(k);
        }
        c
    }

    /// This client's public key.
    pub fn public(&self) -> NodePublic {
        self.cfg.private.public()
    }

    /// The server's key once known.
    pub fn server_key(&self) -> Option<NodePublic> {
        self.server_key
    }

    /// True once ServerInfo arrived.
    pub fn is_connected(&self) -> bool {
        self.state == State::Connected
    }

    /// Feeds received bytes.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) -> Result<(), ClientError> {
        if self.state == State::Failed {
            return Err(ClientError::Failed);
        }
        self.decoder.extend(bytes);
        loop {
            let frame = match self.decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.fail(e.into())),
            };
            self.last_rx = now;
            if let Err(e) = self.handle_frame(frame, now) {
                return Err(self.fail(e));
            }
        }
    }

    /// Fires due timers. An error means the connection is dead.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), ClientError> {
        match self.state {
            State::Failed => return Err(ClientError::Failed),
            State::AwaitServerKey | State::AwaitServerInfo => {
                if now >= self.handshake_deadline {
                    return Err(self.fail(ClientError::HandshakeTimeout));
                }
            }
            State::Connected => {
                if now >= self.last_rx + READ_TIMEOUT {
                    return Err(self.fail(ClientError::ReadTimeout(READ_TIMEOUT)));
                }
            }
        }
        let expired: Vec<[u8; 8]> = self
            .pings
            .iter()
            .filter(|(_, sent)| now >= **sent + PING_TIMEOUT)
            .map(|(d, _)| *d)
            .collect();
        for data in expired {
            self.pings.remove(&data);
            self.events.push_back(ClientEvent::PingTimeout { data });
        }
        Ok(())
    }

    /// The next instant [`ClientCore::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let base = match self.state {
            State::Failed => return None,
            State::AwaitServerKey | State::AwaitServerInfo => self.handshake_deadline,
            State::Connected => self.last_rx + READ_TIMEOUT,
        };
        let ping = self.pings.values().map(|s| *s + PING_TIMEOUT).min();
        Some(ping.map_or(base, |p| p.min(base)))
    }

    /// Encoded bytes to write to the server, if any.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            return None;
        }
        Some(self.out.split().freeze())
    }

    /// Next event for the application.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Queues a packet for `dst`.
    pub fn send_packet(&mut self, dst: NodePublic, packet: Bytes) -> Result<(), ClientError> {
        if packet.len() > MAX_PACKET_SIZE {
            return Err(ClientError::PacketTooLarge(packet.len()));
        }
        self.queue(Frame::SendPacket { dst, packet });
        Ok(())
    }

    /// Mesh: queues a ForwardPacket (needs the mesh key).
    pub fn forward_packet(
        &mut self,
        src: NodePublic,
        dst: NodePublic,
        packet: Bytes,
    ) -> Result<(), ClientError> {
        if packet.len() > MAX_PACKET_SIZE {
            return Err(ClientError::PacketTooLarge(packet.len()));
        }
        self.queue(Frame::ForwardPacket { src, dst, packet });
        Ok(())
    }

    /// Tells the server whether this is our home region.
    pub fn note_preferred(&mut self, preferred: bool) {
        self.cfg.preferred = preferred;
        self.queue(Frame::NotePreferred { preferred });
    }

    /// Mesh: subscribes to peer presence.
    pub fn watch_conns(&mut self) {
        self.queue(Frame::WatchConns);
    }

    /// Mesh: asks the server to close every connection of `key`.
    pub fn close_peer(&mut self, key: NodePublic) {
        self.queue(Frame::ClosePeer { key });
    }

    /// Sends a ping; a [`ClientEvent::Pong`] or [`ClientEvent::PingTimeout`] follows.
    pub fn send_ping(&mut self, data: [u8; 8], now: Instant) {
        self.pings.insert(data, now);
        self.queue(Frame::Ping { data });
    }

    fn queue(&mut self, frame: Frame) {
        match self.state {
            State::AwaitServerKey => self.pending.push(frame),
            _ => frame.encode(&mut self.out),
        }
    }

    fn fail(&mut self, e: ClientError) -> ClientError {
        self.state = State::Failed;
        e
    }

    fn send_client_info(&mut self, server: NodePublic) {
        let info = ClientInfo {
            mesh_key: self.cfg.mesh_key.clone(),
            version: PROTOCOL_VERSION,
            can_ack_pings: true,
            is_prober: self.cfg.is_prober,
            app_name: self.cfg.app_name.clone(),
        };
        seal_client_info(&self.cfg.private, server, &info, self.cfg.info_nonce)
            .encode(&mut self.out);
        self.state = State::AwaitServerInfo;
        if self.cfg.preferred {
            Frame::NotePreferred { preferred: true }.encode(&mut self.out);
        }
        if self.cfg.watch_conns {
            Frame::WatchConns.encode(&mut self.out);
        }
        for f in std::mem::take(&mut self.pending) {
            f.encode(&mut self.out);
        }
    }

    fn handle_frame(&mut self, frame: Frame, now: Instant) -> Result<(), ClientError> {
        match (self.state, frame) {
            (State::AwaitServerKey, Frame::ServerKey { key }) => {
                self.server_key = Some(key);
                self.send_client_info(key);
            }
            (State::AwaitServerKey, f) => {
                return Err(HandshakeError::UnexpectedFrame {
                    want: 0x01,
                    got: f.type_byte(),
                }
                .into())
            }
            (State::AwaitServerInfo, Frame::ServerKey { key }) => {
                let want = self.server_key.unwrap_or(key);
                if want != key {
                    return Err(ClientError::ServerKeyMismatch { want, got: key });
                }
            }
            (State::AwaitServerInfo, Frame::ServerInfo { sealed }) => {
                let server_key = self
                    .server_key
                    .expect("known after ServerKey or fast start");
                let info = open_server_info(&self.cfg.private, server_key, &sealed)?;
                self.state = State::Connected;
                self.events
                    .push_back(ClientEvent::Connected { server_key, info });
            }
            (State::AwaitServerInfo, f) => {
                return Err(HandshakeError::UnexpectedFrame {
                    want: 0x03,
                    got: f.type_byte(),
                }
                .into())
            }
            (State::Connected, f) => self.handle_connected(f, now),
            (State::Failed, _) => return Err(ClientError::Failed),
        }
        Ok(())
    }

    fn handle_connected(&mut self, frame: Frame, now: Instant) {
        let ev = match frame {
            Frame::RecvPacket { src, packet } => ClientEvent::Packet { src, packet },
            Frame::PeerGone { key, reason } => ClientEvent::PeerGone { key, reason },
            Frame::PeerPresent { key, addr, flags } => {
                ClientEvent::PeerPresent { key, addr, flags }
            }
            Frame::Health { problem } => ClientEvent::Health { problem },
            Frame::Restarting {
                reconnect_in_ms,
                try_for_ms,
            } => ClientEvent::Restarting {
                reconnect_in: Duration::from_millis(reconnect_in_ms.into()),
                try_for: Duration::from_millis(try_for_ms.into()),
            },
            Frame::Ping { data } => {
                Frame::Pong { data }.encode(&mut self.out);
                return;
            }
            Frame::Pong { data } => {
                let Some(sent) = self.pings.remove(&data) else {
                    return;
                };
                ClientEvent::Pong {
                    data,
                    rtt: now.saturating_duration_since(sent),
                }
            }
            // KeepAlive, a repeated ServerKey (fast start) and unknown frames.
            _ => return,
        };
        self.events.push_back(ev);
    }
}
