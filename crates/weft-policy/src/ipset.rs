//! Sets of IP addresses as sorted, merged inclusive ranges per family.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A set of IPv4 and IPv6 addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct IpSet {
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

fn merge<T: Copy + Ord + One>(ranges: &mut Vec<(T, T)>) {
    ranges.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(ranges.len());
    for &(lo, hi) in ranges.iter() {
        if let Some(last) = out.last_mut() {
            if lo <= last.1 || last.1.checked_inc() == Some(lo) {
                if hi > last.1 {
                    last.1 = hi;
                }
                continue;
            }
        }
        out.push((lo, hi));
    }
    *ranges = out;
}

fn subtract<T: Copy + Ord + One>(ranges: &mut Vec<(T, T)>, lo: T, hi: T) {
    let mut out = Vec::with_capacity(ranges.len() + 1);
    for &(a, b) in ranges.iter() {
        if b < lo || a > hi {
            out.push((a, b));
            continue;
        }
        if a < lo {
            out.push((a, lo.checked_dec().unwrap_or(lo)));
        }
        if b > hi {
            out.push((hi.checked_inc().unwrap_or(hi), b));
        }
    }
    *ranges = out;
}

fn contains_in<T: Copy + Ord>(ranges: &[(T, T)], lo: T, hi: T) -> bool {
    let i = ranges.partition_point(|r| r.1 < lo);
    ranges.get(i).is_some_and(|&(a, b)| a <= lo && hi <= b)
}

fn overlaps_in<T: Copy + Ord>(ranges: &[(T, T)], lo: T, hi: T) -> bool {
    let i = ranges.partition_point(|r| r.1 < lo);
    ranges.get(i).is_some_and(|&(a, _)| a <= hi)
}

trait One: Sized {
    fn checked_inc(self) -> Option<Self>;
    fn checked_dec(self) -> Option<Self>;
}
impl One for u32 {
    fn checked_inc(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn checked_dec(self) -> Option<Self> {
        self.checked_sub(1)
    }
}
impl One for u128 {
    fn checked_inc(self) -> Option<Self> {
        self.checked_add(1)
    }
    fn checked_dec(self) -> Option<Self> {
        self.checked_sub(1)
    }
}

/// The first and last address of a prefix, as integers.
pub(crate) fn net_bounds(net: &IpNet) -> Bounds {
    match net {
        IpNet::V4(n) => Bounds::V4(u32::from(n.network()), u32::from(n.broadcast())),
        IpNet::V6(n) => Bounds::V6(u128::from(n.network()), u128::from(n.broadcast())),
    }
}

/// Inclusive integer bounds of a range in one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bounds {
    V4(u32, u32),
    V6(u128, u128),
}

impl IpSet {
    /// The empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// A set holding one prefix.
    pub fn from_net(net: IpNet) -> Self {
        let mut s = Self::new();
        s.add_net(net);
        s
    }

    /// Adds every address of `net`.
    pub fn add_net(&mut self, net: IpNet) {
        match net_bounds(&net) {
            Bounds::V4(a, b) => self.v4.push((a, b)),
            Bounds::V6(a, b) => self.v6.push((a, b)),
        }
        self.normalize();
    }

    /// Adds one address.
    pub fn add_addr(&mut self, ip: IpAddr) {
        self.add_net(IpNet::from(ip));
    }

    /// Adds many addresses at once (one normalization).
    pub fn add_addrs(&mut self, addrs: impl IntoIterator<Item = IpAddr>) {
        for a in addrs {
            match a {
                IpAddr::V4(x) => self.v4.push((x.into(), x.into())),
                IpAddr::V6(x) => self.v6.push((x.into(), x.into())),
            }
        }
        self.normalize();
    }

    /// Adds the inclusive range `lo..=hi` (both of one family, `lo <= hi`); returns false otherwise.
    pub fn add_range(&mut self, lo: IpAddr, hi: IpAddr) -> bool {
        match (lo, hi) {
            (IpAddr::V4(a), IpAddr::V4(b)) if a <= b => self.v4.push((a.into(), b.into())),
            (IpAddr::V6(a), IpAddr::V6(b)) if a <= b => self.v6.push((a.into(), b.into())),
            _ => return false,
        }
        self.normalize();
        true
    }

    /// Adds every address of `other`.
    pub fn extend(&mut self, other: &IpSet) {
        if other.is_empty() {
            return;
        }
        self.v4.extend_from_slice(&other.v4);
        self.v6.extend_from_slice(&other.v6);
        self.normalize();
    }

    /// Adds many sets at once (one normalization).
    pub fn extend_all<'a>(&mut self, others: impl IntoIterator<Item = &'a IpSet>) {
        for o in others {
            self.v4.extend_from_slice(&o.v4);
            self.v6.extend_from_slice(&o.v6);
        }
        self.normalize();
    }

    /// Removes every address of `net`.
    pub fn remove_net(&mut self, net: IpNet) {
        match net_bounds(&net) {
            Bounds::V4(a, b) => subtract(&mut self.v4, a, b),
            Bounds::V6(a, b) => subtract(&mut self.v6, a, b),
        }
    }

    fn normalize(&mut self) {
        merge(&mut self.v4);
        merge(&mut self.v6);
    }

    /// True if the set holds no address.
    pub fn is_empty(&self) -> bool {
        self.v4.is_empty() && self.v6.is_empty()
    }

    /// True if `ip` is in the set.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(a) => contains_in(&self.v4, a.into(), a.into()),
            IpAddr::V6(a) => contains_in(&self.v6, a.into(), a.into()),
        }
    }

    /// True if every address of `net` is in the set.
    pub fn contains_net(&self, net: &IpNet) -> bool {
        match net_bounds(net) {
            Bounds::V4(a, b) => contains_in(&self.v4, a, b),
            Bounds::V6(a, b) => contains_in(&self.v6, a, b),
        }
    }

    /// True if some address of `net` is in the set.
    pub fn overlaps_net(&self, net: &IpNet) -> bool {
        match net_bounds(net) {
            Bounds::V4(a, b) => overlaps_in(&self.v4, a, b),
            Bounds::V6(a, b) => overlaps_in(&self.v6, a, b),
        }
    }

    /// True if the sets share an address.
    pub fn overlaps(&self, other: &IpSet) -> bool {
        other.v4.iter().any(|&(a, b)| overlaps_in(&self.v4, a, b))
            || other.v6.iter().any(|&(a, b)| overlaps_in(&self.v6, a, b))
    }

    /// The ranges of the set, IPv4 first, each in ascending order.
    pub fn ranges(&self) -> impl Iterator<Item = (IpAddr, IpAddr)> + '_ {
        let v4 = self
            .v4
            .iter()
            .map(|&(a, b)| (IpAddr::V4(Ipv4Addr::from(a)), IpAddr::V4(Ipv4Addr::from(b))));
        let v6 = self
            .v6
            .iter()
            .map(|&(a, b)| (IpAddr::V6(Ipv6Addr::from(a)), IpAddr::V6(Ipv6Addr::from(b))));
        v4.chain(v6)
    }

    /// Each range in Tailscale's text form, in address order: a bare address for a single
    /// address, `net/bits` for a range that is exactly one prefix, else `first-last`.
    pub fn range_strings(&self) -> Vec<String> {
        self.ranges().map(|(a, b)| range_string(a, b)).collect()
    }

    /// The smallest list of prefixes covering exactly the set.
    pub fn prefixes(&self) -> Vec<IpNet> {
        let mut out = Vec::new();
        for &(a, b) in &self.v4 {
            range_to_prefixes_v4(a, b, &mut out);
        }
        for &(a, b) in &self.v6 {
            range_to_prefixes_v6(a, b, &mut out);
        }
        out
    }
}

/// Formats an inclusive range the way Tailscale's control server writes `SrcIPs` entries.
pub(crate) fn range_string(a: IpAddr, b: IpAddr) -> String {
    if a == b {
        return a.to_string();
    }
    let bits = match (a, b) {
        (IpAddr::V4(x), IpAddr::V4(y)) => {
            exact_prefix_len(u32::from(x) as u128, u32::from(y) as u128, 32)
        }
        (IpAddr::V6(x), IpAddr::V6(y)) => exact_prefix_len(u128::from(x), u128::from(y), 128),
        _ => None,
    };
    match bits {
        Some(bits) => format!("{a}/{bits}"),
        None => format!("{a}-{b}"),
    }
}

fn exact_prefix_len(lo: u128, hi: u128, width: u32) -> Option<u8> {
    let span = hi - lo; // hi >= lo
    let size = span.checked_add(1);
    match size {
        None => (width == 128 && lo == 0).then_some(0),
        Some(size) => {
            if !size.is_power_of_two() || lo & (size - 1) != 0 {
                return None;
            }
            let host_bits = size.trailing_zeros();
            (host_bits <= width).then(|| (width - host_bits) as u8)
        }
    }
}

fn range_to_prefixes_v4(mut a: u32, b: u32, out: &mut Vec<IpNet>) {
    loop {
        let max_by_align = if a == 0 { 32 } else { a.trailing_zeros() };
        let span = (b - a) as u64 + 1;
        let max_by_size = 63 - span.leading_zeros(); // floor(log2(span))
        let host = max_by_align.min(max_by_size);
        let len = 32 - host;
        out.push(IpNet::V4(
            Ipv4Net::new(Ipv4Addr::from(a), len as u8).expect("len <= 32"),
        ));
        let next = a as u64 + (1u64 << host);
        if next > b as u64 {
            break;
        }
        a = next as u32;
    }
}

fn range_to_prefixes_v6(mut a: u128, b: u128, out: &mut Vec<IpNet>) {
    loop {
        let max_by_align = if a == 0 { 128 } else { a.trailing_zeros() };
        let max_by_size = match (b - a).checked_add(1) {
            None => 128,
            Some(span) => 127 - span.leading_zeros(),
        };
        let host = max_by_align.min(max_by_size);
        let len = 128 - host;
        out.push(IpNet::V6(
            Ipv6Net::new(Ipv6Addr::from(a), len as u8).expect("len <= 128"),
        ));
        if host == 128 {
            break;
        }
        let Some(next) = a.checked_add(1u128 << host) else {
            break;
        };
        if next > b {
            break;
        }
        a = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn cgnat_without_chromeos_range_renders_as_two_ranges() {
        let mut s = IpSet::from_net(net("100.64.0.0/10"));
        s.remove_net(net("100.115.92.0/23"));
        s.add_net(net("fd7a:115c:a1e0::/48"));
        assert_eq!(
            s.range_strings(),
            vec![
                "100.64.0.0-100.115.91.255",
                "100.115.94.0-100.127.255.255",
                "fd7a:115c:a1e0::/48"
            ]
        );
        assert!(!s.contains("100.115.92.7".parse().unwrap()));
        assert!(s.contains("100.115.94.0".parse().unwrap()));
    }

    #[test]
    fn adjacent_ranges_merge_and_prefixes_cover_exactly() {
        let mut s = IpSet::new();
        s.add_addr("10.0.0.1".parse().unwrap());
        s.add_addr("10.0.0.2".parse().unwrap());
        s.add_addr("10.0.0.3".parse().unwrap());
        assert_eq!(s.range_strings(), vec!["10.0.0.1-10.0.0.3"]);
        assert_eq!(s.prefixes(), vec![net("10.0.0.1/32"), net("10.0.0.2/31")]);
        let all = IpSet::from_net(net("0.0.0.0/0"));
        assert_eq!(all.prefixes(), vec![net("0.0.0.0/0")]);
        assert_eq!(all.range_strings(), vec!["0.0.0.0/0"]);
        let all6 = IpSet::from_net(net("::/0"));
        assert_eq!(all6.prefixes(), vec![net("::/0")]);
        assert_eq!(all6.range_strings(), vec!["::/0"]);
    }
}
