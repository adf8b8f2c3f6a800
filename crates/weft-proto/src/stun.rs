//! Sans-IO STUN (RFC 5389 binding subset, as Tailscale uses it).
//!
//! - [`request`] builds Tailscale's 40-byte Binding Request
//!   (SOFTWARE `tailnode` + FINGERPRINT).
//! - [`parse_request`] / [`respond`] form the server side: answer a Binding
//!   Request with XOR-MAPPED-ADDRESS of the observed source. Classic RFC 3489
//!   requests (no magic cookie) get a plain MAPPED-ADDRESS answer.
//! - [`parse_response`] reads a Binding Success and the mapped address.
//! - [`Transaction`] is a client probe with retransmission timers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// RFC 5389 magic cookie.
pub const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// Binding Request message type.
pub const BINDING_REQUEST: u16 = 0x0001;
/// Binding Success Response message type.
pub const BINDING_SUCCESS: u16 = 0x0101;
/// The SOFTWARE value Tailscale clients send.
pub const SOFTWARE: &[u8; 8] = b"tailnode";
/// Default STUN port.
pub const DEFAULT_PORT: u16 = 3478;

const HEADER_LEN: usize = 20;
const ATTR_MAPPED_ADDRESS: u16 = 0x0001;
const ATTR_XOR_MAPPED_ADDRESS: u16 = 0x0020;
const ATTR_XOR_MAPPED_ADDRESS_ALT: u16 = 0x8020;
const ATTR_SOFTWARE: u16 = 0x8022;
const ATTR_FINGERPRINT: u16 = 0x8028;
const FINGERPRINT_XOR: u32 = 0x5354_554e;

/// A STUN transaction ID. RFC 5389 IDs are 12 bytes; RFC 3489 IDs are 16
/// bytes and include the cookie position (stored here in full).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxId(pub [u8; 12]);

/// Errors parsing STUN messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    /// Not a STUN message (too short, high bits set, or bad length).
    #[error("not a STUN message")]
    NotStun,
    /// A STUN message of a type we do not handle.
    #[error("unexpected STUN message type {0:#06x}")]
    WrongType(u16),
    /// An attribute ran past the end of the message.
    #[error("malformed STUN attribute")]
    BadAttribute,
    /// FINGERPRINT present but wrong.
    #[error("bad STUN fingerprint")]
    BadFingerprint,
    /// Success response without any mapped address.
    #[error("STUN response carries no mapped address")]
    NoAddress,
}

/// Builds Tailscale's Binding Request (always 40 bytes).
pub fn request(tx: TxId) -> [u8; 40] {
    let mut b = [0u8; 40];
    b[0..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
    b[2..4].copy_from_slice(&20u16.to_be_bytes());
    b[4..8].copy_from_slice(&MAGIC_COOKIE);
    b[8..20].copy_from_slice(&tx.0);
    b[20..22].copy_from_slice(&ATTR_SOFTWARE.to_be_bytes());
    b[22..24].copy_from_slice(&8u16.to_be_bytes());
    b[24..32].copy_from_slice(SOFTWARE);
    b[32..34].copy_from_slice(&ATTR_FINGERPRINT.to_be_bytes());
    b[34..36].copy_from_slice(&4u16.to_be_bytes());
    let fp = crc32(&b[..32]) ^ FINGERPRINT_XOR;
    b[36..40].copy_from_slice(&fp.to_be_bytes());
    b
}

/// Quick check: at least a header, top two bits zero, length consistent.
pub fn is_stun(p: &[u8]) -> bool {
    p.len() >= HEADER_LEN && p[0] & 0xc0 == 0 && {
        let len = u16::from_be_bytes([p[2], p[3]]) as usize;
        len.is_multiple_of(4) && HEADER_LEN + len <= p.len()
    }
}

/// A parsed Binding Request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Transaction ID (the 12 bytes after the cookie position).
    pub tx: TxId,
    /// For RFC 3489 requests: the 4 bytes at the cookie position.
    pub classic_prefix: Option<[u8; 4]>,
    /// The request carried SOFTWARE = `tailnode`.
    pub tailnode: bool,
}

/// Parses a Binding Request, checking FINGERPRINT if present.
pub fn parse_request(p: &[u8]) -> Result<Request, StunError> {
    if !is_stun(p) {
        return Err(StunError::NotStun);
    }
    let typ = u16::from_be_bytes([p[0], p[1]]);
    if typ != BINDING_REQUEST {
        return Err(StunError::WrongType(typ));
    }
    let len = u16::from_be_bytes([p[2], p[3]]) as usize;
    let msg = &p[..HEADER_LEN + len];
    let mut tx = [0u8; 12];
    tx.copy_from_slice(&msg[8..20]);
    let classic = msg[4..8] != MAGIC_COOKIE;
    let mut tailnode = false;
    for attr in attrs(msg) {
        let (t, v, off) = attr?;
        match t {
            ATTR_SOFTWARE => tailnode = v == SOFTWARE,
            ATTR_FINGERPRINT if !classic => {
                if v.len() != 4 {
                    return Err(StunError::BadFingerprint);
                }
                let want = crc32(&msg[..off]) ^ FINGERPRINT_XOR;
                if u32::from_be_bytes([v[0], v[1], v[2], v[3]]) != want {
                    return Err(StunError::BadFingerprint);
                }
            }
            _ => {}
        }
    }
    let mut prefix = [0u8; 4];
    prefix.copy_from_slice(&msg[4..8]);
    Ok(Request {
        tx: TxId(tx),
        classic_prefix: classic.then_some(prefix),
        tailnode,
    })
}

/// Server side: the response to `packet` from `src`, or `None` to ignore it.
pub fn respond(packet: &[u8], src: SocketAddr) -> Option<Vec<u8>> {
    let req = parse_request(packet).ok()?;
    Some(response(&req, src))
}

/// Builds the Binding Success for `req`, mapping `addr`.
pub fn response(req: &Request, addr: SocketAddr) -> Vec<u8> {
    let ip = normalize(addr.ip());
    let (family, ip_bytes): (u8, Vec<u8>) = match ip {
        IpAddr::V4(v4) => (1, v4.octets().to_vec()),
        IpAddr::V6(v6) => (2, v6.octets().to_vec()),
    };
    let attr_len = 4 + ip_bytes.len();
    let mut b = Vec::with_capacity(HEADER_LEN + 4 + attr_len);
    b.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
    b.extend_from_slice(&((4 + attr_len) as u16).to_be_bytes());
    match req.classic_prefix {
        Some(prefix) => {
            // RFC 3489: 16-byte transaction ID, plain MAPPED-ADDRESS.
            b.extend_from_slice(&prefix);
            b.extend_from_slice(&req.tx.0);
            b.extend_from_slice(&ATTR_MAPPED_ADDRESS.to_be_bytes());
            b.extend_from_slice(&(attr_len as u16).to_be_bytes());
            b.push(0);
            b.push(family);
            b.extend_from_slice(&addr.port().to_be_bytes());
            b.extend_from_slice(&ip_bytes);
        }
        None => {
            b.extend_from_slice(&MAGIC_COOKIE);
            b.extend_from_slice(&req.tx.0);
            b.extend_from_slice(&ATTR_XOR_MAPPED_ADDRESS.to_be_bytes());
            b.extend_from_slice(&(attr_len as u16).to_be_bytes());
            b.push(0);
            b.push(family);
            b.extend_from_slice(&(addr.port() ^ 0x2112).to_be_bytes());
            let mut mask = MAGIC_COOKIE.to_vec();
            mask.extend_from_slice(&req.tx.0);
            b.extend(ip_bytes.iter().zip(mask.iter()).map(|(a, m)| a ^ m));
        }
    }
    b
}

/// Parses a Binding Success: its transaction ID and mapped address.
pub fn parse_response(p: &[u8]) -> Result<(TxId, SocketAddr), StunError> {
    if !is_stun(p) {
        return Err(StunError::NotStun);
    }
    let typ = u16::from_be_bytes([p[0], p[1]]);
    if typ != BINDING_SUCCESS {
        return Err(StunError::WrongType(typ));
    }
    let len = u16::from_be_bytes([p[2], p[3]]) as usize;
    let msg = &p[..HEADER_LEN + len];
    let mut tx = [0u8; 12];
    tx.copy_from_slice(&msg[8..20]);
    let mut xor = None;
    let mut plain = None;
    for attr in attrs(msg) {
        let (t, v, _) = attr?;
        match t {
            ATTR_XOR_MAPPED_ADDRESS | ATTR_XOR_MAPPED_ADDRESS_ALT if xor.is_none() => {
                xor = decode_addr(v, Some(&msg[4..20]));
            }
            ATTR_MAPPED_ADDRESS if plain.is_none() => plain = decode_addr(v, None),
            _ => {}
        }
    }
    let addr = xor.or(plain).ok_or(StunError::NoAddress)?;
    Ok((TxId(tx), addr))
}

fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

/// Decodes a (XOR-)MAPPED-ADDRESS value; `mask` is cookie||txid for XOR.
fn decode_addr(v: &[u8], mask: Option<&[u8]>) -> Option<SocketAddr> {
    if v.len() < 4 {
        return None;
    }
    let mut port = u16::from_be_bytes([v[2], v[3]]);
    let n = match v[1] {
        1 => 4,
        2 => 16,
        _ => return None,
    };
    if v.len() < 4 + n {
        return None;
    }
    let mut ip = v[4..4 + n].to_vec();
    if let Some(m) = mask {
        port ^= 0x2112;
        for (b, k) in ip.iter_mut().zip(m.iter()) {
            *b ^= k;
        }
    }
    let ip = if n == 4 {
        IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3]))
    } else {
        let mut a = [0u8; 16];
        a.copy_from_slice(&ip);
        IpAddr::V6(Ipv6Addr::from(a))
    };
    Some(SocketAddr::new(ip, port))
}

/// Iterates attributes: (type, value, offset of the attribute header).
fn attrs(msg: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8], usize), StunError>> {
    let mut off = HEADER_LEN;
    let mut done = false;
    std::iter::from_fn(move || {
        if done || off >= msg.len() {
            return None;
        }
        if off + 4 > msg.len() {
            done = true;
            return Some(Err(StunError::BadAttribute));
        }
        let t = u16::from_be_bytes([msg[off], msg[off + 1]]);
        let l = u16::from_be_bytes([msg[off + 2], msg[off + 3]]) as usize;
        let start = off + 4;
        if start + l > msg.len() {
            done = true;
            return Some(Err(StunError::BadAttribute));
        }
        let at = off;
        off = start + l.div_ceil(4) * 4;
        Some(Ok((t, &msg[start..start + l], at)))
    })
}

/// CRC-32 (IEEE, reflected), as STUN FINGERPRINT uses.
pub fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = !0u32;
    for b in data {
        c = TABLE[((c ^ u32::from(*b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// Retransmission schedule of a [`Transaction`]: send at these offsets.
const RETRANSMITS: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(250),
    Duration::from_millis(750),
    Duration::from_millis(1750),
];
/// Whole-transaction timeout.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(3);

/// Outcome of a client transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionResult {
    /// The server saw us at this address; `rtt` from the first send.
    Mapped {
        /// Our address as the server saw it.
        addr: SocketAddr,
        /// Time from the first request to the answer.
        rtt: Duration,
    },
    /// No answer within [`TRANSACTION_TIMEOUT`].
    TimedOut,
}

/// A client Binding transaction with retransmissions.
///
/// Write [`Transaction::poll_transmit`] to `server`, feed datagrams to
/// [`Transaction::handle_input`], call [`Transaction::handle_timeout`] at
/// [`Transaction::poll_timeout`], and read [`Transaction::result`].
#[derive(Debug)]
pub struct Transaction {
    tx: TxId,
    server: SocketAddr,
    start: Instant,
    next_send: usize,
    due: bool,
    result: Option<TransactionResult>,
}

impl Transaction {
    /// A transaction to `server` with ID `tx` starting at `now`.
    pub fn new(tx: TxId, server: SocketAddr, now: Instant) -> Self {
        Self {
            tx,
            server,
            start: now,
            next_send: 0,
            due: true,
            result: None,
        }
    }

    /// The server address.
    pub fn server(&self) -> SocketAddr {
        self.server
    }

    /// The request bytes if a (re)transmission is due.
    pub fn poll_transmit(&mut self) -> Option<[u8; 40]> {
        if !self.due || self.result.is_some() {
            return None;
        }
        self.due = false;
        self.next_send += 1;
        Some(request(self.tx))
    }

    /// When to call [`Transaction::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.result.is_some() {
            return None;
        }
        let end = self.start + TRANSACTION_TIMEOUT;
        Some(
            RETRANSMITS
                .get(self.next_send)
                .map_or(end, |d| (self.start + *d).min(end)),
        )
    }

    /// Advances timers: schedules retransmissions, ends on timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.result.is_some() {
            return;
        }
        if now >= self.start + TRANSACTION_TIMEOUT {
            self.result = Some(TransactionResult::TimedOut);
            return;
        }
        if let Some(d) = RETRANSMITS.get(self.next_send) {
            if now >= self.start + *d {
                self.due = true;
            }
        }
    }

    /// Feeds a datagram from `from`; returns true if it completed the transaction.
    pub fn handle_input(&mut self, from: SocketAddr, packet: &[u8], now: Instant) -> bool {
        if self.result.is_some() || from != self.server {
            return false;
        }
        let Ok((tx, addr)) = parse_response(packet) else {
            return false;
        };
        if tx != self.tx {
            return false;
        }
        self.result = Some(TransactionResult::Mapped {
            addr,
            rtt: now.saturating_duration_since(self.start),
        });
        true
    }

    /// The outcome once known.
    pub fn result(&self) -> Option<TransactionResult> {
        self.result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_matches_tailscale_layout_and_passes_own_parser() {
        let tx = TxId([7; 12]);
        let r = request(tx);
        assert_eq!(&r[..4], &[0, 1, 0, 0x14]);
        assert_eq!(&r[24..32], b"tailnode");
        let p = parse_request(&r).unwrap();
        assert_eq!(p.tx, tx);
        assert!(p.tailnode);
        assert_eq!(p.classic_prefix, None);
    }

    #[test]
    fn crc32_known_vector() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn corrupted_fingerprint_is_rejected() {
        let mut r = request(TxId([1; 12]));
        r[39] ^= 1;
        assert_eq!(parse_request(&r), Err(StunError::BadFingerprint));
        assert!(respond(&r, "1.2.3.4:5".parse().unwrap()).is_none());
    }

    #[test]
    fn v4_response_is_32_bytes_and_round_trips() {
        let tx = TxId([9; 12]);
        let src: SocketAddr = "203.0.113.7:41641".parse().unwrap();
        let resp = respond(&request(tx), src).unwrap();
        assert_eq!(resp.len(), 32);
        assert_eq!(parse_response(&resp).unwrap(), (tx, src));
    }

    #[test]
    fn v6_response_is_44_bytes_and_round_trips() {
        let tx = TxId([3; 12]);
        let src: SocketAddr = "[2001:db8::1]:3478".parse().unwrap();
        let resp = respond(&request(tx), src).unwrap();
        assert_eq!(resp.len(), 44);
        assert_eq!(parse_response(&resp).unwrap(), (tx, src));
    }

    #[test]
    fn v4_mapped_v6_source_is_answered_as_v4() {
        let tx = TxId([3; 12]);
        let src: SocketAddr = "[::ffff:10.1.2.3]:99".parse().unwrap();
        let resp = respond(&request(tx), src).unwrap();
        assert_eq!(
            parse_response(&resp).unwrap().1,
            "10.1.2.3:99".parse().unwrap()
        );
    }

    #[test]
    fn classic_rfc3489_request_gets_mapped_address() {
        let mut req = vec![0, 1, 0, 0];
        req.extend_from_slice(&[0xaa; 16]);
        let src: SocketAddr = "192.0.2.1:1234".parse().unwrap();
        let resp = respond(&req, src).unwrap();
        assert_eq!(&resp[4..20], &[0xaa; 16]);
        assert_eq!(&resp[20..22], &[0, 1]);
        assert_eq!(parse_response(&resp).unwrap().1, src);
    }

    #[test]
    fn transaction_retransmits_then_times_out() {
        let t0 = Instant::now();
        let server: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        let mut t = Transaction::new(TxId([1; 12]), server, t0);
        assert!(t.poll_transmit().is_some());
        assert!(t.poll_transmit().is_none());
        assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_millis(250)));
        t.handle_timeout(t0 + Duration::from_millis(250));
        assert!(t.poll_transmit().is_some());
        assert_eq!(t.poll_timeout(), Some(t0 + Duration::from_millis(750)));
        t.handle_timeout(t0 + TRANSACTION_TIMEOUT);
        assert_eq!(t.result(), Some(TransactionResult::TimedOut));
        assert_eq!(t.poll_timeout(), None);
    }

    #[test]
    fn transaction_completes_on_matching_response_only() {
        let t0 = Instant::now();
        let server: SocketAddr = "127.0.0.1:3478".parse().unwrap();
        let mine: SocketAddr = "198.51.100.2:5555".parse().unwrap();
        let mut t = Transaction::new(TxId([1; 12]), server, t0);
        let req = t.poll_transmit().unwrap();
        let other = respond(&request(TxId([2; 12])), mine).unwrap();
        assert!(!t.handle_input(server, &other, t0));
        let resp = respond(&req, mine).unwrap();
        assert!(!t.handle_input("127.0.0.1:1".parse().unwrap(), &resp, t0));
        assert!(t.handle_input(server, &resp, t0 + Duration::from_millis(5)));
        assert_eq!(
            t.result(),
            Some(TransactionResult::Mapped {
                addr: mine,
                rtt: Duration::from_millis(5)
            })
        );
    }

    proptest! {
        #[test]
        fn arbitrary_input_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_request(&data);
            let _ = parse_response(&data);
            let _ = respond(&data, "127.0.0.1:1".parse().unwrap());
        }

        #[test]
        fn response_round_trips_any_address(tx in any::<[u8; 12]>(), ip in any::<[u8; 16]>(), v4 in any::<bool>(), port in any::<u16>()) {
            let addr = if v4 {
                SocketAddr::new(IpAddr::V4(Ipv4Addr::new(ip[0], ip[1], ip[2], ip[3])), port)
            } else {
                SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)
            };
            let resp = respond(&request(TxId(tx)), addr).unwrap();
            let (got_tx, got) = parse_response(&resp).unwrap();
            prop_assert_eq!(got_tx, TxId(tx));
            prop_assert_eq!(SocketAddr::new(normalize(addr.ip()), port), got);
        }
    }
}
