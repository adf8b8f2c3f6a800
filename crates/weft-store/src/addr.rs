//! Tailnet address allocation (pure): the lowest free IPv4 in `100.64.0.0/10` and a
//! matching IPv6 in `fd7a:115c:a1e0::/48`.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

/// First address of the tailnet IPv4 range (`100.64.0.0/10`).
pub const IPV4_BASE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
/// Number of addresses in `100.64.0.0/10`.
pub const IPV4_SIZE: u32 = 1 << 22;
/// Base of the tailnet IPv6 range (`fd7a:115c:a1e0::/48`); nodes get addresses in its first /96.
pub const IPV6_BASE: Ipv6Addr = Ipv6Addr::new(0xfd7a, 0x115c, 0xa1e0, 0, 0, 0, 0, 0);

/// Whether `a` must never be given to a node: outside `100.64.0.0/10`, its network or
/// broadcast address, Quad100 (`100.100.100.100`) or ChromeOS's `100.115.92.0/23`.
pub fn ipv4_reserved(a: Ipv4Addr) -> bool {
    let Some(off) = ipv4_offset(a) else {
        return true;
    };
    let chromeos = u32::from(Ipv4Addr::new(100, 115, 92, 0));
    let v = u32::from(a);
    off == 0
        || off == IPV4_SIZE - 1
        || a == Ipv4Addr::new(100, 100, 100, 100)
        || (chromeos..chromeos + 512).contains(&v)
}

/// Whether `a` must never be given to a node: outside `fd7a:115c:a1e0::/96`, its
/// zero address, or Quad100's `fd7a:115c:a1e0::53`.
pub fn ipv6_reserved(a: Ipv6Addr) -> bool {
    let s = a.segments();
    if s[..6] != IPV6_BASE.segments()[..6] {
        return true;
    }
    let low = (u32::from(s[6]) << 16) | u32::from(s[7]);
    low == 0 || low == 0x53
}

/// The IPv6 address that pairs naturally with `v4`: the same low 22 bits under `fd7a:115c:a1e0::`.
pub fn ipv6_for(v4: Ipv4Addr) -> Ipv6Addr {
    let off = ipv4_offset(v4).unwrap_or(0);
    ipv6_from_low(off)
}

/// Picks the lowest free, unreserved IPv4 and its natural IPv6 (or, if that is taken or
/// reserved, the lowest free IPv6 in the /96). `None` when the range is exhausted.
pub fn next_addresses(
    used_v4: &BTreeSet<Ipv4Addr>,
    used_v6: &BTreeSet<Ipv6Addr>,
) -> Option<(Ipv4Addr, Ipv6Addr)> {
    let v4 = (1..IPV4_SIZE)
        .map(|off| Ipv4Addr::from(u32::from(IPV4_BASE) + off))
        .find(|a| !ipv4_reserved(*a) && !used_v4.contains(a))?;
    let natural = ipv6_for(v4);
    let v6 = if !ipv6_reserved(natural) && !used_v6.contains(&natural) {
        natural
    } else {
        (1..=u32::MAX)
            .map(ipv6_from_low)
            .find(|a| !ipv6_reserved(*a) && !used_v6.contains(a))?
    };
    Some((v4, v6))
}

fn ipv4_offset(a: Ipv4Addr) -> Option<u32> {
    let v = u32::from(a);
    let base = u32::from(IPV4_BASE);
    (base..base + IPV4_SIZE).contains(&v).then(|| v - base)
}

fn ipv6_from_low(low: u32) -> Ipv6Addr {
    let s = IPV6_BASE.segments();
    Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, (low >> 16) as u16, low as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_addresses_are_the_lowest_of_each_range() {
        let (v4, v6) = next_addresses(&BTreeSet::new(), &BTreeSet::new()).unwrap();
        assert_eq!(v4, Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(v6, "fd7a:115c:a1e0::1".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn lowest_gap_is_reused_and_v6_follows_low_bits() {
        let used4: BTreeSet<_> =
            [Ipv4Addr::new(100, 64, 0, 1), Ipv4Addr::new(100, 64, 0, 3)].into();
        let (v4, v6) = next_addresses(&used4, &BTreeSet::new()).unwrap();
        assert_eq!(v4, Ipv4Addr::new(100, 64, 0, 2));
        assert_eq!(v6, "fd7a:115c:a1e0::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(
            ipv6_for(Ipv4Addr::new(100, 64, 1, 0)),
            "fd7a:115c:a1e0::100".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn quad100_v6_is_skipped_for_the_v4_that_maps_to_it() {
        // 100.64.0.83 has offset 0x53, whose natural IPv6 is Quad100's fd7a:115c:a1e0::53.
        let used4: BTreeSet<_> = (1..=82).map(|i| Ipv4Addr::new(100, 64, 0, i)).collect();
        let used6: BTreeSet<_> = (1..=82u32).map(ipv6_from_low).collect();
        let (v4, v6) = next_addresses(&used4, &used6).unwrap();
        assert_eq!(v4, Ipv4Addr::new(100, 64, 0, 83));
        assert!(!ipv6_reserved(v6));
        assert_eq!(v6, "fd7a:115c:a1e0::54".parse::<Ipv6Addr>().unwrap());
    }

    #[test]
    fn taken_natural_v6_falls_back_to_lowest_free() {
        let used6: BTreeSet<_> = [ipv6_from_low(1), ipv6_from_low(2)].into();
        let (v4, v6) = next_addresses(&BTreeSet::new(), &used6).unwrap();
        assert_eq!(v4, Ipv4Addr::new(100, 64, 0, 1));
        assert_eq!(v6, ipv6_from_low(3));
    }

    #[test]
    fn reserved_addresses_are_never_chosen() {
        assert!(ipv4_reserved(Ipv4Addr::new(100, 64, 0, 0)));
        assert!(ipv4_reserved(Ipv4Addr::new(100, 100, 100, 100)));
        assert!(ipv4_reserved(Ipv4Addr::new(100, 115, 92, 7)));
        assert!(ipv4_reserved(Ipv4Addr::new(100, 115, 93, 255)));
        assert!(!ipv4_reserved(Ipv4Addr::new(100, 115, 94, 0)));
        assert!(ipv4_reserved(Ipv4Addr::new(100, 127, 255, 255)));
        assert!(ipv4_reserved(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(ipv6_reserved("fd7a:115c:a1e0::53".parse().unwrap()));
        assert!(ipv6_reserved("fd7a:115c:a1e0:1::1".parse().unwrap()));
    }
}
