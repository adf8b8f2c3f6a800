//! The small part of STUN (RFC 5389) magicsock needs: Tailscale's 40-byte
//! binding request, classification and response parsing, plus a response
//! builder for simulated servers. The full codec lives in `weft_proto::stun`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// STUN magic cookie.
pub const COOKIE: [u8; 4] = [0x21, 0x12, 0xa4, 0x42];
/// A STUN transaction id.
pub type TxId = [u8; 12];

/// True for anything shaped like a STUN binding message (request or response).
pub fn is_stun(b: &[u8]) -> bool {
    b.len() >= 20 && b[0] & 0xc0 == 0 && b[4..8] == COOKIE && b[1] == 0x01
}

/// Tailscale's binding request: SOFTWARE "tailnode" and a FINGERPRINT.
pub fn request(tx: TxId) -> [u8; 40] {
    let mut b = [0u8; 40];
    b[0..2].copy_from_slice(&[0x00, 0x01]);
    b[2..4].copy_from_slice(&20u16.to_be_bytes());
    b[4..8].copy_from_slice(&COOKIE);
    b[8..20].copy_from_slice(&tx);
    b[20..24].copy_from_slice(&[0x80, 0x22, 0x00, 0x08]);
    b[24..32].copy_from_slice(b"tailnode");
    b[32..36].copy_from_slice(&[0x80, 0x28, 0x00, 0x04]);
    let fp = crc32(&b[..32]) ^ 0x5354_554e;
    b[36..40].copy_from_slice(&fp.to_be_bytes());
    b
}

/// The transaction id of a binding request, if `b` is one.
pub fn parse_request(b: &[u8]) -> Option<TxId> {
    if !is_stun(b) || b[0] != 0x00 {
        return None;
    }
    b[8..20].try_into().ok()
}

/// A binding success response carrying XOR-MAPPED-ADDRESS `observed`.
pub fn response(tx: TxId, observed: SocketAddr) -> Vec<u8> {
    let mut attr = vec![0x00];
    let port = observed.port() ^ 0x2112;
    match observed.ip() {
        IpAddr::V4(v4) => {
            attr.push(0x01);
            attr.extend_from_slice(&port.to_be_bytes());
            attr.extend(v4.octets().iter().zip(COOKIE).map(|(a, c)| a ^ c));
        }
        IpAddr::V6(v6) => {
            attr.push(0x02);
            attr.extend_from_slice(&port.to_be_bytes());
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&COOKIE);
            key[4..].copy_from_slice(&tx);
            attr.extend(v6.octets().iter().zip(key).map(|(a, k)| a ^ k));
        }
    }
    let mut b = vec![0x01, 0x01];
    b.extend_from_slice(&((attr.len() + 4) as u16).to_be_bytes());
    b.extend_from_slice(&COOKIE);
    b.extend_from_slice(&tx);
    b.extend_from_slice(&[0x00, 0x20]);
    b.extend_from_slice(&(attr.len() as u16).to_be_bytes());
    b.extend_from_slice(&attr);
    b
}

/// Parses a binding success response: transaction id and mapped address.
pub fn parse_response(b: &[u8]) -> Option<(TxId, SocketAddr)> {
    if !is_stun(b) || b[0] != 0x01 {
        return None;
    }
    let tx: TxId = b[8..20].try_into().ok()?;
    let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    let attrs = b.get(20..20 + len).unwrap_or(&b[20..]);
    let mut plain = None;
    let mut i = 0;
    while i + 4 <= attrs.len() {
        let ty = u16::from_be_bytes([attrs[i], attrs[i + 1]]);
        let alen = usize::from(u16::from_be_bytes([attrs[i + 2], attrs[i + 3]]));
        let Some(v) = attrs.get(i + 4..i + 4 + alen) else {
            break;
        };
        match ty {
            0x0020 | 0x8020 => return xor_addr(v, &tx).map(|a| (tx, a)),
            0x0001 => plain = plain_addr(v),
            _ => {}
        }
        i += 4 + alen.div_ceil(4) * 4;
    }
    plain.map(|a| (tx, a))
}

fn plain_addr(v: &[u8]) -> Option<SocketAddr> {
    let port = u16::from_be_bytes([*v.get(2)?, *v.get(3)?]);
    match (v.get(1)?, v.len()) {
        (0x01, 8) => Some(SocketAddr::new(
            Ipv4Addr::new(v[4], v[5], v[6], v[7]).into(),
            port,
        )),
        (0x02, 20) => Some(SocketAddr::new(
            Ipv6Addr::from(<[u8; 16]>::try_from(&v[4..20]).ok()?).into(),
            port,
        )),
        _ => None,
    }
}

fn xor_addr(v: &[u8], tx: &TxId) -> Option<SocketAddr> {
    let a = plain_addr(v)?;
    let port = a.port() ^ 0x2112;
    let ip = match a.ip() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            IpAddr::V4(Ipv4Addr::new(
                o[0] ^ COOKIE[0],
                o[1] ^ COOKIE[1],
                o[2] ^ COOKIE[2],
                o[3] ^ COOKIE[3],
            ))
        }
        IpAddr::V6(v6) => {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&COOKIE);
            key[4..].copy_from_slice(tx);
            let mut o = v6.octets();
            for (x, k) in o.iter_mut().zip(key) {
                *x ^= k;
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
    };
    Some(SocketAddr::new(ip, port))
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xffff_ffffu32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_ieee_check_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn request_is_classified_and_round_trips_through_a_response() {
        let req = request([3; 12]);
        assert!(is_stun(&req));
        assert_eq!(parse_request(&req), Some([3; 12]));
        for addr in ["203.0.113.9:41641", "[2001:db8::7]:1234"] {
            let a: SocketAddr = addr.parse().expect("addr");
            let resp = response([3; 12], a);
            assert!(is_stun(&resp));
            assert_eq!(parse_response(&resp), Some(([3; 12], a)));
        }
        assert_eq!(parse_response(&req), None);
        assert_eq!(parse_response(&[0; 7]), None);
    }
}
