//! DERP frames: types, encoding, a chunk-fed decoder and the handshake payloads.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use weft_key::{NodePrivate, NodePublic};

/// The 8-byte magic at the start of a ServerKey frame: `"DERP🔑"`.
pub const MAGIC: [u8; 8] = [0x44, 0x45, 0x52, 0x50, 0xf0, 0x9f, 0x94, 0x91];
/// Length of a Curve25519 public key on the wire.
pub const KEY_LEN: usize = 32;
/// Length of a NaCl box nonce.
pub const NONCE_LEN: usize = 24;
/// Frame header: one type byte and a big-endian u32 length.
pub const FRAME_HEADER_LEN: usize = 5;
/// Largest relayed packet (packet bytes only, without keys).
pub const MAX_PACKET_SIZE: usize = 64 << 10;
/// Largest ClientInfo frame a server accepts.
pub const MAX_CLIENT_INFO_LEN: usize = 256 << 10;
/// Largest frame a server reads from a client (ClientInfo is the biggest).
pub const SERVER_MAX_FRAME_LEN: usize = MAX_CLIENT_INFO_LEN;
/// Largest frame a client accepts from a server.
pub const CLIENT_MAX_FRAME_LEN: usize = 1 << 20;
/// DERP protocol version spoken here (v2: RecvPacket carries the source key).
pub const PROTOCOL_VERSION: u32 = 2;
/// Server keep-alive interval (plus up to 5 s of jitter).
pub const KEEP_ALIVE: Duration = Duration::from_secs(60);

const DISCO_MAGIC: &[u8] = b"TS\xf0\x9f\x92\xac";
const DISCO_MIN_LEN: usize = 6 + 32 + 24;

/// True if `packet` looks like a disco message (magic `TS💬` and long enough).
pub fn looks_like_disco(packet: &[u8]) -> bool {
    packet.len() >= DISCO_MIN_LEN && packet.starts_with(DISCO_MAGIC)
}

/// Frame type byte values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum FrameType {
    /// 8B magic + 32B server key.
    ServerKey = 0x01,
    /// 32B client key + 24B nonce + box(JSON).
    ClientInfo = 0x02,
    /// 24B nonce + box(JSON).
    ServerInfo = 0x03,
    /// 32B destination key + packet.
    SendPacket = 0x04,
    /// 32B source key + packet.
    RecvPacket = 0x05,
    /// Empty.
    KeepAlive = 0x06,
    /// One byte: 1 = home region.
    NotePreferred = 0x07,
    /// 32B key + 1B reason.
    PeerGone = 0x08,
    /// 32B key [+16B IP + 2B port] [+1B flags].
    PeerPresent = 0x09,
    /// 32B src + 32B dst + packet (mesh).
    ForwardPacket = 0x0a,
    /// Empty (mesh).
    WatchConns = 0x10,
    /// 32B key (mesh).
    ClosePeer = 0x11,
    /// 8 bytes.
    Ping = 0x12,
    /// 8 bytes.
    Pong = 0x13,
    /// UTF-8 problem text.
    Health = 0x14,
    /// Two u32 BE durations in ms.
    Restarting = 0x15,
}

/// Why a peer is reported gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerGoneReason {
    /// The peer's last connection to the region closed.
    Disconnected,
    /// The server does not know the destination.
    NotHere,
    /// Any other value, kept as received.
    Other(u8),
}

impl PeerGoneReason {
    fn to_byte(self) -> u8 {
        match self {
            Self::Disconnected => 0x00,
            Self::NotHere => 0x01,
            Self::Other(b) => b,
        }
    }
    fn from_byte(b: u8) -> Self {
        match b {
            0x00 => Self::Disconnected,
            0x01 => Self::NotHere,
            b => Self::Other(b),
        }
    }
}

/// PeerPresent flag bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct PeerPresentFlags(pub u8);

impl PeerPresentFlags {
    /// An ordinary client.
    pub const IS_REGULAR: Self = Self(1);
    /// A mesh peer server.
    pub const IS_MESH_PEER: Self = Self(2);
    /// A prober.
    pub const IS_PROBER: Self = Self(4);
    /// The client is not connected to its region's first node.
    pub const NOT_IDEAL: Self = Self(8);
}

/// One DERP frame, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Server's public key (sent first by the server).
    ServerKey {
        /// The server's node-style public key.
        key: NodePublic,
    },
    /// Client identity and sealed [`ClientInfo`] JSON.
    ClientInfo {
        /// The client's node public key.
        key: NodePublic,
        /// `nonce(24) || box`, sealed client→server.
        sealed: Bytes,
    },
    /// Sealed [`ServerInfo`] JSON.
    ServerInfo {
        /// `nonce(24) || box`, sealed server→client.
        sealed: Bytes,
    },
    /// Client asks the server to relay a packet.
    SendPacket {
        /// Destination node key.
        dst: NodePublic,
        /// Packet bytes (≤ 64 KiB).
        packet: Bytes,
    },
    /// Server delivers a relayed packet.
    RecvPacket {
        /// Source node key.
        src: NodePublic,
        /// Packet bytes.
        packet: Bytes,
    },
    /// Server keep-alive; no reply.
    KeepAlive,
    /// Client says whether this is its home region.
    NotePreferred {
        /// True for the home region.
        preferred: bool,
    },
    /// A peer left (or is unknown).
    PeerGone {
        /// The peer's key.
        key: NodePublic,
        /// Why.
        reason: PeerGoneReason,
    },
    /// A peer connected (sent to watchers).
    PeerPresent {
        /// The peer's key.
        key: NodePublic,
        /// Its remote address, if the server sent one.
        addr: Option<SocketAddr>,
        /// Flags, if the server sent them.
        flags: Option<PeerPresentFlags>,
    },
    /// Mesh: packet from `src` forwarded for local delivery to `dst`.
    ForwardPacket {
        /// Original sender.
        src: NodePublic,
        /// Destination on the receiving server.
        dst: NodePublic,
        /// Packet bytes.
        packet: Bytes,
    },
    /// Mesh: subscribe to PeerPresent/PeerGone for all local clients.
    WatchConns,
    /// Mesh: close every connection of this key.
    ClosePeer {
        /// Key to disconnect.
        key: NodePublic,
    },
    /// Ping (echo requested).
    Ping {
        /// Opaque data.
        data: [u8; 8],
    },
    /// Pong (echo of a ping).
    Pong {
        /// Data from the ping.
        data: [u8; 8],
    },
    /// Server health text; empty means healthy.
    Health {
        /// Problem description.
        problem: String,
    },
    /// Server is restarting.
    Restarting {
        /// Suggested reconnect delay.
        reconnect_in_ms: u32,
        /// How long to keep trying.
        try_for_ms: u32,
    },
    /// A frame type this implementation does not know; skipped by readers.
    Unknown {
        /// The type byte.
        frame_type: u8,
        /// Raw payload.
        payload: Bytes,
    },
}

/// Errors decoding frames. Any of these closes the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The header announced more bytes than the limit allows.
    #[error("frame type {frame_type:#04x} of {len} bytes exceeds limit {max}")]
    TooLarge {
        /// Frame type byte.
        frame_type: u8,
        /// Announced length.
        len: usize,
        /// Limit in force.
        max: usize,
    },
    /// A frame had the wrong size for its type.
    #[error("frame type {frame_type:#04x} has bad length {len}")]
    BadLength {
        /// Frame type byte.
        frame_type: u8,
        /// Payload length.
        len: usize,
    },
    /// ServerKey did not start with the DERP magic.
    #[error("server key frame lacks the DERP magic")]
    BadMagic,
    /// Health text was not UTF-8.
    #[error("health frame is not UTF-8")]
    BadUtf8,
}

impl Frame {
    /// The type byte for this frame.
    pub fn type_byte(&self) -> u8 {
        match self {
            Self::ServerKey { .. } => FrameType::ServerKey as u8,
            Self::ClientInfo { .. } => FrameType::ClientInfo as u8,
            Self::ServerInfo { .. } => FrameType::ServerInfo as u8,
            Self::SendPacket { .. } => FrameType::SendPacket as u8,
            Self::RecvPacket { .. } => FrameType::RecvPacket as u8,
            Self::KeepAlive => FrameType::KeepAlive as u8,
            Self::NotePreferred { .. } => FrameType::NotePreferred as u8,
            Self::PeerGone { .. } => FrameType::PeerGone as u8,
            Self::PeerPresent { .. } => FrameType::PeerPresent as u8,
            Self::ForwardPacket { .. } => FrameType::ForwardPacket as u8,
            Self::WatchConns => FrameType::WatchConns as u8,
            Self::ClosePeer { .. } => FrameType::ClosePeer as u8,
            Self::Ping { .. } => FrameType::Ping as u8,
            Self::Pong { .. } => FrameType::Pong as u8,
            Self::Health { .. } => FrameType::Health as u8,
            Self::Restarting { .. } => FrameType::Restarting as u8,
            Self::Unknown { frame_type, .. } => *frame_type,
        }
    }

    /// Payload length in bytes (without the 5-byte header).
    pub fn payload_len(&self) -> usize {
        match self {
            Self::ServerKey { .. } => 8 + KEY_LEN,
            Self::ClientInfo { sealed, .. } => KEY_LEN + sealed.len(),
            Self::ServerInfo { sealed } => sealed.len(),
            Self::SendPacket { packet, .. } | Self::RecvPacket { packet, .. } => {
                KEY_LEN + packet.len()
            }
            Self::KeepAlive | Self::WatchConns => 0,
            Self::NotePreferred { .. } => 1,
            Self::PeerGone { .. } => KEY_LEN + 1,
            Self::PeerPresent { addr, flags, .. } => match (addr, flags) {
                (_, Some(_)) => KEY_LEN + 16 + 2 + 1,
                (Some(_), None) => KEY_LEN + 16 + 2,
                (None, None) => KEY_LEN,
            },
            Self::ForwardPacket { packet, .. } => 2 * KEY_LEN + packet.len(),
            Self::ClosePeer { .. } => KEY_LEN,
            Self::Ping { .. } | Self::Pong { .. } => 8,
            Self::Health { problem } => problem.len(),
            Self::Restarting { .. } => 8,
            Self::Unknown { payload, .. } => payload.len(),
        }
    }

    /// Appends the encoded frame (header and payload) to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        let len = self.payload_len();
        out.reserve(FRAME_HEADER_LEN + len);
        out.put_u8(self.type_byte());
        out.put_u32(len as u32);
        match self {
            Self::ServerKey { key } => {
                out.put_slice(&MAGIC);
                out.put_slice(key.as_bytes());
            }
            Self::ClientInfo { key, sealed } => {
                out.put_slice(key.as_bytes());
                out.put_slice(sealed);
            }
            Self::ServerInfo { sealed } => out.put_slice(sealed),
            Self::SendPacket { dst: k, packet } | Self::RecvPacket { src: k, packet } => {
                out.put_slice(k.as_bytes());
                out.put_slice(packet);
            }
            Self::KeepAlive | Self::WatchConns => {}
            Self::NotePreferred { preferred } => out.put_u8(u8::from(*preferred)),
            Self::PeerGone { key, reason } => {
                out.put_slice(key.as_bytes());
                out.put_u8(reason.to_byte());
            }
            Self::PeerPresent { key, addr, flags } => {
                out.put_slice(key.as_bytes());
                if addr.is_some() || flags.is_some() {
                    let (ip, port) = match addr {
                        Some(a) => (to_v6(a.ip()), a.port()),
                        None => (Ipv6Addr::UNSPECIFIED, 0),
                    };
                    out.put_slice(&ip.octets());
                    out.put_u16(port);
                }
                if let Some(f) = flags {
                    out.put_u8(f.0);
                }
            }
            Self::ForwardPacket { src, dst, packet } => {
                out.put_slice(src.as_bytes());
                out.put_slice(dst.as_bytes());
                out.put_slice(packet);
            }
            Self::ClosePeer { key } => out.put_slice(key.as_bytes()),
            Self::Ping { data } | Self::Pong { data } => out.put_slice(data),
            Self::Health { problem } => out.put_slice(problem.as_bytes()),
            Self::Restarting {
                reconnect_in_ms,
                try_for_ms,
            } => {
                out.put_u32(*reconnect_in_ms);
                out.put_u32(*try_for_ms);
            }
            Self::Unknown { payload, .. } => out.put_slice(payload),
        }
    }

    /// The encoded frame as one buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(FRAME_HEADER_LEN + self.payload_len());
        self.encode(&mut b);
        b.freeze()
    }

    /// Parses one payload of the given type (the header already removed).
    pub fn parse(frame_type: u8, mut p: Bytes) -> Result<Self, DecodeError> {
        let len = p.len();
        let bad = || DecodeError::BadLength { frame_type, len };
        let key = |b: &mut Bytes| {
            let k = NodePublic::from_slice(&b[..KEY_LEN]).expect("32 bytes");
            b.advance(KEY_LEN);
            k
        };
        let frame = match frame_type {
            0x01 => {
                if len < 8 + KEY_LEN {
                    return Err(bad());
                }
                if p[..8] != MAGIC {
                    return Err(DecodeError::BadMagic);
                }
                p.advance(8);
                Self::ServerKey { key: key(&mut p) }
            }
            0x02 => {
                if len < KEY_LEN + NONCE_LEN {
                    return Err(bad());
                }
                let k = key(&mut p);
                Self::ClientInfo { key: k, sealed: p }
            }
            0x03 => {
                if len < NONCE_LEN {
                    return Err(bad());
                }
                Self::ServerInfo { sealed: p }
            }
            0x04 | 0x05 => {
                if len < KEY_LEN || len - KEY_LEN > MAX_PACKET_SIZE {
                    return Err(bad());
                }
                let k = key(&mut p);
                if frame_type == 0x04 {
                    Self::SendPacket { dst: k, packet: p }
                } else {
                    Self::RecvPacket { src: k, packet: p }
                }
            }
            0x06 => Self::KeepAlive,
            0x07 => {
                if len != 1 {
                    return Err(bad());
                }
                Self::NotePreferred {
                    preferred: p[0] != 0,
                }
            }
            0x08 => {
                if len < KEY_LEN {
                    return Err(bad());
                }
                let k = key(&mut p);
                let reason = p
                    .first()
                    .copied()
                    .map_or(PeerGoneReason::Disconnected, PeerGoneReason::from_byte);
                Self::PeerGone { key: k, reason }
            }
            0x09 => {
                if len != KEY_LEN && len < KEY_LEN + 18 {
                    return Err(bad());
                }
                let k = key(&mut p);
                let (addr, flags) = if p.len() >= 18 {
                    let mut ip = [0u8; 16];
                    ip.copy_from_slice(&p[..16]);
                    let port = u16::from_be_bytes([p[16], p[17]]);
                    let ip6 = Ipv6Addr::from(ip);
                    let ip = match ip6.to_ipv4_mapped() {
                        Some(v4) => IpAddr::V4(v4),
                        None => IpAddr::V6(ip6),
                    };
                    let flags = p.get(18).map(|f| PeerPresentFlags(*f));
                    (Some(SocketAddr::new(ip, port)), flags)
                } else {
                    (None, None)
                };
                Self::PeerPresent {
                    key: k,
                    addr,
                    flags,
                }
            }
            0x0a => {
                if len < 2 * KEY_LEN || len - 2 * KEY_LEN > MAX_PACKET_SIZE {
                    return Err(bad());
                }
                let src = key(&mut p);
                let dst = key(&mut p);
                Self::ForwardPacket {
                    src,
                    dst,
                    packet: p,
                }
            }
            0x10 => {
                if len != 0 {
                    return Err(bad());
                }
                Self::WatchConns
            }
            0x11 => {
                if len != KEY_LEN {
                    return Err(bad());
                }
                Self::ClosePeer { key: key(&mut p) }
            }
            0x12 | 0x13 => {
                if !(8..=1000).contains(&len) {
                    return Err(bad());
                }
                let mut data = [0u8; 8];
                data.copy_from_slice(&p[..8]);
                if frame_type == 0x12 {
                    Self::Ping { data }
                } else {
                    Self::Pong { data }
                }
            }
            0x14 => Self::Health {
                problem: String::from_utf8(p.to_vec()).map_err(|_| DecodeError::BadUtf8)?,
            },
            0x15 => {
                if len < 8 {
                    return Err(bad());
                }
                Self::Restarting {
                    reconnect_in_ms: p.get_u32(),
                    try_for_ms: p.get_u32(),
                }
            }
            t => Self::Unknown {
                frame_type: t,
                payload: p,
            },
        };
        Ok(frame)
    }
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Incremental frame decoder: push chunks of any size, pull whole frames.
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max_frame_len: usize,
    failed: bool,
}

impl Decoder {
    /// A decoder that rejects frames whose payload exceeds `max_frame_len`.
    pub fn new(max_frame_len: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_frame_len,
            failed: false,
        }
    }

    /// Appends received bytes.
    pub fn extend(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The receive buffer, for reading socket data straight into it
    /// (e.g. `reader.read_buf(decoder.buf_mut())`).
    pub fn buf_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes buffered but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next whole frame, `Ok(None)` if more bytes are needed.
    ///
    /// After an error the decoder stays failed: the stream has lost framing.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, DecodeError> {
        let Some((frame_type, len)) = self.peek_header()? else {
            return Ok(None);
        };
        if self.buf.len() < FRAME_HEADER_LEN + len {
            self.buf.reserve(FRAME_HEADER_LEN + len - self.buf.len());
            return Ok(None);
        }
        self.buf.advance(FRAME_HEADER_LEN);
        let payload = self.buf.split_to(len).freeze();
        Frame::parse(frame_type, payload)
            .inspect_err(|_| self.failed = true)
            .map(Some)
    }

    fn peek_header(&mut self) -> Result<Option<(u8, usize)>, DecodeError> {
        if self.failed {
            return Err(DecodeError::BadLength {
                frame_type: 0,
                len: 0,
            });
        }
        if self.buf.len() < FRAME_HEADER_LEN {
            return Ok(None);
        }
        let frame_type = self.buf[0];
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > self.max_frame_len {
            self.failed = true;
            return Err(DecodeError::TooLarge {
                frame_type,
                len,
                max: self.max_frame_len,
            });
        }
        Ok(Some((frame_type, len)))
    }
}

/// The JSON a client seals into its ClientInfo frame.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    /// Mesh key (64 hex), only for mesh peers.
    #[serde(rename = "meshKey", default, skip_serializing_if = "Option::is_none")]
    pub mesh_key: Option<String>,
    /// Protocol version (2).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u32,
    /// The client answers Ping frames.
    #[serde(rename = "CanAckPings", default)]
    pub can_ack_pings: bool,
    /// The client is a prober.
    #[serde(
        rename = "IsProber",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub is_prober: bool,
    /// Free-form application name.
    #[serde(rename = "AppName", default, skip_serializing_if = "String::is_empty")]
    pub app_name: String,
}

/// The JSON a server seals into its ServerInfo frame.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Protocol version (2).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub version: u32,
    /// Client-side send rate limit, bytes/s (0 = none).
    #[serde(
        rename = "TokenBucketBytesPerSecond",
        default,
        skip_serializing_if = "is_zero"
    )]
    pub token_bucket_bytes_per_second: u32,
    /// Client-side send burst, bytes (0 = none).
    #[serde(
        rename = "TokenBucketBytesBurst",
        default,
        skip_serializing_if = "is_zero"
    )]
    pub token_bucket_bytes_burst: u32,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Errors in the DERP handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The first frame was not the one expected.
    #[error("expected frame type {want:#04x}, got {got:#04x}")]
    UnexpectedFrame {
        /// Wanted type.
        want: u8,
        /// Received type.
        got: u8,
    },
    /// The sealed box did not open.
    #[error("sealed info did not open")]
    Open,
    /// The opened JSON was not valid.
    #[error("info JSON invalid: {0}")]
    Json(String),
    /// ClientInfo frame larger than allowed.
    #[error("client info of {0} bytes too large")]
    TooLarge(usize),
}

/// The ServerKey frame a server writes first.
pub fn server_key_frame(server: NodePublic) -> Frame {
    Frame::ServerKey { key: server }
}

/// Builds a ClientInfo frame: `info` sealed from `client` to `server` with `nonce`.
pub fn seal_client_info(
    client: &NodePrivate,
    server: NodePublic,
    info: &ClientInfo,
    nonce: [u8; 24],
) -> Frame {
    let json = serde_json::to_vec(info).expect("ClientInfo serializes");
    let sealed = client.seal_to_with_nonce(server.as_bytes(), &json, nonce);
    Frame::ClientInfo {
        key: client.public(),
        sealed: Bytes::from(sealed),
    }
}

/// Server side: checks a ClientInfo frame and opens it with the server key.
pub fn open_client_info(
    server: &NodePrivate,
    frame: &Frame,
) -> Result<(NodePublic, ClientInfo), HandshakeError> {
    let Frame::ClientInfo { key, sealed } = frame else {
        return Err(HandshakeError::UnexpectedFrame {
            want: FrameType::ClientInfo as u8,
            got: frame.type_byte(),
        });
    };
    if frame.payload_len() > MAX_CLIENT_INFO_LEN {
        return Err(HandshakeError::TooLarge(frame.payload_len()));
    }
    let json = server
        .open_from(key.as_bytes(), sealed)
        .map_err(|_| HandshakeError::Open)?;
    let info: ClientInfo =
        serde_json::from_slice(&json).map_err(|e| HandshakeError::Json(e.to_string()))?;
    Ok((*key, info))
}

/// Server side: the ServerInfo frame sealed to `client` with `nonce`.
pub fn server_info_frame(
    server: &NodePrivate,
    client: NodePublic,
    info: &ServerInfo,
    nonce: [u8; 24],
) -> Frame {
    let json = serde_json::to_vec(info).expect("ServerInfo serializes");
    Frame::ServerInfo {
        sealed: Bytes::from(server.seal_to_with_nonce(client.as_bytes(), &json, nonce)),
    }
}

/// Client side: opens a ServerInfo frame.
pub(crate) fn open_server_info(
    client: &NodePrivate,
    server: NodePublic,
    sealed: &[u8],
) -> Result<ServerInfo, HandshakeError> {
    let json = client
        .open_from(server.as_bytes(), sealed)
        .map_err(|_| HandshakeError::Open)?;
    serde_json::from_slice(&json).map_err(|e| HandshakeError::Json(e.to_string()))
}
