//! Zero-copy views of IPv4/IPv6 packets with their TCP/UDP/SCTP/ICMP headers.
//! Parses untrusted bytes: every access is bounds-checked and nothing panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IP protocol numbers the filter treats specially.
pub mod proto {
    /// ICMP for IPv4.
    pub const ICMP4: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMP for IPv6.
    pub const ICMP6: u8 = 58;
    /// Tailscale Message Protocol.
    pub const TSMP: u8 = 99;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

/// Why a packet could not be parsed. Cheap to copy and count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Fewer bytes than the smallest IP header.
    #[error("packet too short")]
    TooShort,
    /// The version nibble is neither 4 nor 6.
    #[error("unknown IP version")]
    BadVersion,
    /// IPv4 header length field below 5 or beyond the packet.
    #[error("bad IPv4 header length")]
    BadHeaderLength,
    /// The IP length field claims more bytes than the packet has.
    #[error("packet truncated")]
    Truncated,
    /// The transport header is cut short.
    #[error("transport header truncated")]
    TransportTruncated,
    /// Too many or malformed IPv6 extension headers.
    #[error("bad IPv6 extension header chain")]
    BadExtensionHeaders,
}

/// The transport part of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP with ports and the flags byte.
    Tcp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
        /// Flags (FIN=0x01, SYN=0x02, RST=0x04, PSH=0x08, ACK=0x10).
        flags: u8,
    },
    /// UDP with ports.
    Udp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
    /// SCTP with ports.
    Sctp {
        /// Source port.
        src_port: u16,
        /// Destination port.
        dst_port: u16,
    },
    /// ICMPv4 or ICMPv6 type and code.
    Icmp {
        /// Message type.
        kind: u8,
        /// Message code.
        code: u8,
    },
    /// A non-first fragment: no transport header.
    Fragment,
    /// Any other protocol.
    Other,
}

/// TCP flag bits.
pub mod tcp_flags {
    /// FIN
    pub const FIN: u8 = 0x01;
    /// SYN
    pub const SYN: u8 = 0x02;
    /// RST
    pub const RST: u8 = 0x04;
    /// ACK
    pub const ACK: u8 = 0x10;
}

/// A parsed view of one IP packet, borrowing the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketView<'a> {
    /// The whole packet.
    pub bytes: &'a [u8],
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// The transport protocol number (after IPv6 extension headers).
    pub proto: u8,
    /// The transport header, as far as it was parsed.
    pub transport: Transport,
}

fn be16(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

impl<'a> PacketView<'a> {
    /// Parses an IPv4 or IPv6 packet.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        let first = *bytes.first().ok_or(ParseError::TooShort)?;
        match first >> 4 {
            4 => Self::parse_v4(bytes),
            6 => Self::parse_v6(bytes),
            _ if bytes.len() < 20 => Err(ParseError::TooShort),
            _ => Err(ParseError::BadVersion),
        }
    }

    fn parse_v4(b: &'a [u8]) -> Result<Self, ParseError> {
        if b.len() < 20 {
            return Err(ParseError::TooShort);
        }
        let ihl = usize::from(b[0] & 0x0f) * 4;
        if ihl < 20 || ihl > b.len() {
            return Err(ParseError::BadHeaderLength);
        }
        let total = usize::from(be16(b, 2).ok_or(ParseError::TooShort)?);
        if total < ihl || total > b.len() {
            return Err(ParseError::Truncated);
        }
        let frag = be16(b, 6).ok_or(ParseError::TooShort)?;
        let offset = frag & 0x1fff;
        let proto = b[9];
        let src = IpAddr::V4(Ipv4Addr::new(b[12], b[13], b[14], b[15]));
        let dst = IpAddr::V4(Ipv4Addr::new(b[16], b[17], b[18], b[19]));
        let transport = if offset != 0 {
            Transport::Fragment
        } else {
            parse_transport(proto, &b[ihl..total])?
        };
        Ok(PacketView {
            bytes: b,
            src,
            dst,
            proto,
            transport,
        })
    }

    fn parse_v6(b: &'a [u8]) -> Result<Self, ParseError> {
        if b.len() < 40 {
            return Err(ParseError::TooShort);
        }
        let payload_len = usize::from(be16(b, 4).ok_or(ParseError::TooShort)?);
        let end = 40 + payload_len;
        if end > b.len() {
            return Err(ParseError::Truncated);
        }
        let mut src = [0u8; 16];
        src.copy_from_slice(&b[8..24]);
        let mut dst = [0u8; 16];
        dst.copy_from_slice(&b[24..40]);
        let mut next = b[6];
        let mut at = 40usize;
        let mut fragment = false;
        for _ in 0..8 {
            match next {
                0 | 43 | 60 => {
                    let len_byte = *b.get(at + 1).ok_or(ParseError::BadExtensionHeaders)?;
                    let len = (usize::from(len_byte) + 1) * 8;
                    next = *b.get(at).ok_or(ParseError::BadExtensionHeaders)?;
                    at += len;
                }
                44 => {
                    let off = be16(b, at + 2).ok_or(ParseError::BadExtensionHeaders)? >> 3;
                    next = *b.get(at).ok_or(ParseError::BadExtensionHeaders)?;
                    at += 8;
                    if off != 0 {
                        fragment = true;
                        break;
                    }
                }
                51 => {
                    let len_byte = *b.get(at + 1).ok_or(ParseError::BadExtensionHeaders)?;
                    next = *b.get(at).ok_or(ParseError::BadExtensionHeaders)?;
                    at += (usize::from(len_byte) + 2) * 4;
                }
                _ => break,
            }
            if at > end {
                return Err(ParseError::BadExtensionHeaders);
            }
        }
        if matches!(next, 0 | 43 | 60 | 44 | 51) && !fragment {
            return Err(ParseError::BadExtensionHeaders);
        }
        let transport = if fragment {
            Transport::Fragment
        } else {
            parse_transport(next, b.get(at..end).ok_or(ParseError::BadExtensionHeaders)?)?
        };
        Ok(PacketView {
            bytes: b,
            src: IpAddr::V6(Ipv6Addr::from(src)),
            dst: IpAddr::V6(Ipv6Addr::from(dst)),
            proto: next,
            transport,
        })
    }

    /// Destination port for TCP/UDP/SCTP, else 0.
    pub fn dst_port(&self) -> u16 {
        match self.transport {
            Transport::Tcp { dst_port, .. }
            | Transport::Udp { dst_port, .. }
            | Transport::Sctp { dst_port, .. } => dst_port,
            _ => 0,
        }
    }

    /// Source port for TCP/UDP/SCTP, else 0.
    pub fn src_port(&self) -> u16 {
        match self.transport {
            Transport::Tcp { src_port, .. }
            | Transport::Udp { src_port, .. }
            | Transport::Sctp { src_port, .. } => src_port,
            _ => 0,
        }
    }
}

fn parse_transport(proto: u8, t: &[u8]) -> Result<Transport, ParseError> {
    let ports = || -> Result<(u16, u16), ParseError> {
        Ok((
            be16(t, 0).ok_or(ParseError::TransportTruncated)?,
            be16(t, 2).ok_or(ParseError::TransportTruncated)?,
        ))
    };
    Ok(match proto {
        proto::TCP => {
            if t.len() < 20 {
                return Err(ParseError::TransportTruncated);
            }
            let (src_port, dst_port) = ports()?;
            Transport::Tcp {
                src_port,
                dst_port,
                flags: t[13],
            }
        }
        proto::UDP => {
            if t.len() < 8 {
                return Err(ParseError::TransportTruncated);
            }
            let (src_port, dst_port) = ports()?;
            Transport::Udp { src_port, dst_port }
        }
        proto::SCTP => {
            if t.len() < 12 {
                return Err(ParseError::TransportTruncated);
            }
            let (src_port, dst_port) = ports()?;
            Transport::Sctp { src_port, dst_port }
        }
        proto::ICMP4 | proto::ICMP6 => {
            if t.len() < 4 {
                return Err(ParseError::TransportTruncated);
            }
            Transport::Icmp {
                kind: t[0],
                code: t[1],
            }
        }
        _ => Transport::Other,
    })
}

/// Builds test packets (headers only, checksums zero). Public for tests and benchmarks of
/// dependent crates.
pub mod build {
    use super::proto;
    use std::net::IpAddr;

    fn l4(proto_num: u8, sport: u16, dport: u16, tcp_flags: u8, icmp_type: u8) -> Vec<u8> {
        match proto_num {
            proto::TCP => {
                let mut t = vec![0u8; 20];
                t[0..2].copy_from_slice(&sport.to_be_bytes());
                t[2..4].copy_from_slice(&dport.to_be_bytes());
                t[12] = 5 << 4;
                t[13] = tcp_flags;
                t
            }
            proto::UDP => {
                let mut t = vec![0u8; 8];
                t[0..2].copy_from_slice(&sport.to_be_bytes());
                t[2..4].copy_from_slice(&dport.to_be_bytes());
                t[4..6].copy_from_slice(&8u16.to_be_bytes());
                t
            }
            proto::SCTP => {
                let mut t = vec![0u8; 12];
                t[0..2].copy_from_slice(&sport.to_be_bytes());
                t[2..4].copy_from_slice(&dport.to_be_bytes());
                t
            }
            proto::ICMP4 | proto::ICMP6 => vec![icmp_type, 0, 0, 0, 0, 0, 0, 0],
            _ => vec![0u8; 8],
        }
    }

    /// An IPv4 or IPv6 packet (both addresses must be of one family) with a minimal
    /// transport header. `icmp_type` is used for ICMP, `tcp_flags` for TCP.
    pub fn packet(
        src: IpAddr,
        dst: IpAddr,
        proto_num: u8,
        sport: u16,
        dport: u16,
        tcp_flags: u8,
        icmp_type: u8,
    ) -> Vec<u8> {
        let payload = l4(proto_num, sport, dport, tcp_flags, icmp_type);
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let total = 20 + payload.len();
                let mut p = vec![0u8; 20];
                p[0] = 0x45;
                p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                p[8] = 64;
                p[9] = proto_num;
                p[12..16].copy_from_slice(&s.octets());
                p[16..20].copy_from_slice(&d.octets());
                p.extend(payload);
                p
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                let mut p = vec![0u8; 40];
                p[0] = 0x60;
                p[4..6].copy_from_slice(&(payload.len() as u16).to_be_bytes());
                p[6] = proto_num;
                p[7] = 64;
                p[8..24].copy_from_slice(&s.octets());
                p[24..40].copy_from_slice(&d.octets());
                p.extend(payload);
                p
            }
            _ => Vec::new(),
        }
    }

    /// A TCP SYN.
    pub fn tcp_syn(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
        packet(src, dst, proto::TCP, sport, dport, super::tcp_flags::SYN, 0)
    }

    /// A UDP datagram.
    pub fn udp(src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> Vec<u8> {
        packet(src, dst, proto::UDP, sport, dport, 0, 0)
    }

    /// An ICMP echo request of the right family.
    pub fn ping(src: IpAddr, dst: IpAddr) -> Vec<u8> {
        if src.is_ipv4() {
            packet(src, dst, proto::ICMP4, 0, 0, 0, 8)
        } else {
            packet(src, dst, proto::ICMP6, 0, 0, 0, 128)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn tcp_syn_over_ipv4_parses_ports_and_flags() {
        let p = build::tcp_syn(ip("100.64.0.1"), ip("100.64.0.2"), 40000, 22);
        let v = PacketView::parse(&p).unwrap();
        assert_eq!(v.src, ip("100.64.0.1"));
        assert_eq!(v.dst_port(), 22);
        assert_eq!(v.src_port(), 40000);
        assert!(matches!(
            v.transport,
            Transport::Tcp {
                flags: tcp_flags::SYN,
                ..
            }
        ));
    }

    #[test]
    fn ipv6_with_hop_by_hop_header_reaches_udp() {
        let mut p = build::udp(ip("fd7a::1"), ip("fd7a::2"), 1, 53);
        // Insert an 8-byte hop-by-hop header.
        let udp = p.split_off(40);
        p[6] = 0;
        let len = (udp.len() + 8) as u16;
        p[4..6].copy_from_slice(&len.to_be_bytes());
        p.extend([17u8, 0, 0, 0, 0, 0, 0, 0]);
        p.extend(udp);
        let v = PacketView::parse(&p).unwrap();
        assert_eq!(v.proto, proto::UDP);
        assert_eq!(v.dst_port(), 53);
    }

    #[test]
    fn truncated_and_garbage_input_is_an_error() {
        assert_eq!(PacketView::parse(&[]), Err(ParseError::TooShort));
        assert_eq!(PacketView::parse(&[0x45; 10]), Err(ParseError::TooShort));
        let mut p = build::tcp_syn(ip("1.2.3.4"), ip("5.6.7.8"), 1, 2);
        p.truncate(30);
        assert!(PacketView::parse(&p).is_err());
        assert_eq!(PacketView::parse(&[0x15; 40]), Err(ParseError::BadVersion));
    }

    #[test]
    fn non_first_ipv4_fragment_has_no_transport() {
        let mut p = build::udp(ip("1.2.3.4"), ip("5.6.7.8"), 1, 2);
        p[6] = 0;
        p[7] = 10;
        assert_eq!(
            PacketView::parse(&p).unwrap().transport,
            Transport::Fragment
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..120)) {
            let _ = PacketView::parse(&bytes);
        }

        #[test]
        fn parse_never_panics_on_plausible_headers(mut bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 40..120), v6 in proptest::prelude::any::<bool>()) {
            bytes[0] = if v6 { 0x60 } else { 0x45 };
            let _ = PacketView::parse(&bytes);
        }
    }
}
