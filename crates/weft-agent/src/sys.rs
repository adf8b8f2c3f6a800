//! Host integration: the TUN device (tun-rs), its addresses and routes (`ip`), interface
//! addresses for local endpoints, the OS hostname and TLS roots. The only module that names
//! tun-rs.

use std::net::IpAddr;

use ipnet::IpNet;

/// The tailnet's IPv4 range, routed into the TUN.
pub const TAILNET_V4: &str = "100.64.0.0/10";
/// The tailnet's IPv6 range, routed into the TUN.
pub const TAILNET_V6: &str = "fd7a:115c:a1e0::/48";
/// Default TUN MTU.
pub const DEFAULT_MTU: u16 = 1280;

/// A TUN device: its name and addresses. The engine moves its packets through the
/// [`TunDevice`] handle that [`Tun::create`] returns beside it.
pub struct Tun {
    name: String,
    addrs: Vec<IpNet>,
}

impl std::fmt::Debug for Tun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tun")
            .field("name", &self.name)
            .field("addrs", &self.addrs)
            .finish()
    }
}

/// Transmit queue asked for on the TUN device: with offloads each entry is a TCP segment of
/// up to 64 KiB, and a burst must not overflow before the engine reads it.
const TUN_TXQUEUELEN: u32 = 1000;

impl Tun {
    /// Creates the device `name` (up, MTU `mtu`), with TCP segmentation offload (virtio-net
    /// headers: the kernel hands us TCP segments of up to 64 KiB and takes coalesced ones)
    /// when the kernel allows it, and returns it with the engine's I/O handle.
    pub fn create(name: &str, mtu: u16) -> std::io::Result<(Tun, TunDevice)> {
        let build = |offload: bool| {
            tun_rs::DeviceBuilder::new()
                .name(name)
                .mtu(mtu)
                .tx_queue_len(TUN_TXQUEUELEN)
                .offload(offload)
                .build_async()
        };
        let dev = match build(true) {
            Ok(d) => d,
            Err(e) => {
                tracing::info!(error = %e, dev = name, "TUN offloads unavailable; one packet per read");
                build(false)?
            }
        };
        let offload = dev.tcp_gso();
        tracing::info!(dev = name, mtu, offload, "TUN device created");
        let tun = Tun {
            name: name.to_owned(),
            addrs: Vec::new(),
        };
        Ok((tun, TunDevice { dev, mtu }))
    }

    /// Device name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Makes the device carry exactly `addrs` and routes the tailnet ranges through it.
    pub async fn set_addresses(&mut self, addrs: &[IpNet]) -> std::io::Result<()> {
        if self.addrs == addrs {
            return Ok(());
        }
        for old in self.addrs.clone() {
            if !addrs.contains(&old) {
                let host = host_prefix(&old)?;
                ip(&["addr", "del", &host.to_string(), "dev", &self.name]).await?;
            }
        }
        for a in addrs {
            if !self.addrs.contains(a) {
                let host = host_prefix(a)?;
                ip(&["addr", "replace", &host.to_string(), "dev", &self.name]).await?;
            }
        }
        ip(&["link", "set", "dev", &self.name, "up"]).await?;
        if addrs.iter().any(|a| a.addr().is_ipv4()) {
            ip(&["route", "replace", TAILNET_V4, "dev", &self.name]).await?;
        }
        if addrs.iter().any(|a| a.addr().is_ipv6()) {
            ip(&["-6", "route", "replace", TAILNET_V6, "dev", &self.name]).await?;
        }
        self.addrs = addrs.to_vec();
        tracing::info!(dev = %self.name, ?addrs, "TUN addresses set");
        Ok(())
    }
}

/// The engine's side of a TUN device: batched reads (a TCP segment of up to 64 KiB split into
/// packets) and batched writes (consecutive TCP packets of one flow coalesced into one write).
pub struct TunDevice {
    dev: tun_rs::AsyncDevice,
    mtu: u16,
}

impl std::fmt::Debug for TunDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunDevice")
            .field("offload", &self.dev.tcp_gso())
            .finish()
    }
}

/// Room kept before each packet of a batch (the virtio-net header goes there).
pub const TUN_HEADROOM: usize = 16;
/// Packets per batch (a 64 KiB segment at MTU 1280 is about 50).
pub const TUN_BATCH: usize = tun_rs::IDEAL_BATCH_SIZE;
/// What a coalesced write may grow to.
const COALESCED_MAX: usize = 65_535 + 2 * TUN_HEADROOM;

impl TunDevice {
    /// The device MTU.
    pub fn mtu(&self) -> u16 {
        self.mtu
    }

    /// Waits until a read may succeed (cancel safe).
    pub async fn readable(&self) -> std::io::Result<()> {
        self.dev.readable().await
    }

    /// One read without waiting, split into packets in `rx` (returns their number);
    /// `WouldBlock` when nothing is pending.
    pub fn try_recv(&self, rx: &mut TunRx) -> std::io::Result<usize> {
        rx.count = 0;
        let n =
            self.dev
                .try_recv_multiple(&mut rx.orig, &mut rx.bufs, &mut rx.sizes, TUN_HEADROOM)?;
        rx.count = n;
        Ok(n)
    }

    /// Writes the batch in `tx` (coalescing TCP packets when offloads are on) and empties it.
    pub async fn send(&self, tx: &mut TunTx) -> std::io::Result<()> {
        if tx.len == 0 {
            return Ok(());
        }
        let r = self
            .dev
            .send_multiple(&mut tx.gro, &mut tx.slots[..tx.len], TUN_HEADROOM)
            .await
            .map(|_| ());
        tx.clear();
        r
    }
}

/// Packets of one TUN read.
pub struct TunRx {
    orig: Vec<u8>,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    count: usize,
}

impl std::fmt::Debug for TunRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunRx").field("count", &self.count).finish()
    }
}

impl TunRx {
    /// Buffers for packets of up to `mtu` bytes.
    pub fn new(mtu: u16) -> TunRx {
        let slot = TUN_HEADROOM + usize::from(mtu).max(1280) + 64;
        TunRx {
            orig: vec![0; tun_rs::VIRTIO_NET_HDR_LEN + 65_535],
            bufs: vec![vec![0; slot]; TUN_BATCH],
            sizes: vec![0; TUN_BATCH],
            count: 0,
        }
    }

    /// Packets of the last read.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the last read gave nothing.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Packet `i` of the last read.
    pub fn packet(&self, i: usize) -> &[u8] {
        &self.bufs[i][TUN_HEADROOM..TUN_HEADROOM + self.sizes[i]]
    }
}

/// A buffer of a [`TunTx`] batch: a fixed allocation whose visible length follows the packet,
/// so reusing it costs no zeroing.
struct Slot {
    data: Vec<u8>,
    len: usize,
}

impl AsRef<[u8]> for Slot {
    fn as_ref(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

impl AsMut<[u8]> for Slot {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.data[..self.len]
    }
}

impl tun_rs::ExpandBuffer for Slot {
    fn buf_capacity(&self) -> usize {
        COALESCED_MAX.max(self.data.len())
    }

    fn buf_resize(&mut self, new_len: usize, value: u8) {
        if new_len > self.data.len() {
            self.data.resize(new_len, value);
        }
        if new_len > self.len {
            self.data[self.len..new_len].fill(value);
        }
        self.len = new_len;
    }

    fn buf_extend_from_slice(&mut self, src: &[u8]) {
        let end = self.len + src.len();
        if end > self.data.len() {
            self.data.resize(end, 0);
        }
        self.data[self.len..end].copy_from_slice(src);
        self.len = end;
    }
}

/// IP packets waiting to be written to TUN in one batch.
pub struct TunTx {
    slots: Vec<Slot>,
    len: usize,
    slot_size: usize,
    gro: tun_rs::GROTable,
}

impl std::fmt::Debug for TunTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TunTx").field("len", &self.len).finish()
    }
}

impl TunTx {
    /// An empty batch whose slots take packets (or WireGuard datagrams to decrypt in place)
    /// of up to `mtu` + 64 bytes; larger ones are copied in with [`TunTx::push`].
    pub fn new(mtu: u16) -> TunTx {
        let slot_size = usize::from(mtu).max(1280) + 64 + TUN_HEADROOM;
        TunTx {
            slots: (0..TUN_BATCH)
                .map(|_| Slot {
                    data: vec![0; slot_size],
                    len: 0,
                })
                .collect(),
            len: 0,
            slot_size,
            gro: tun_rs::GROTable::new(),
        }
    }

    /// Whether no slot is free (write the batch first).
    pub fn is_full(&self) -> bool {
        self.len == self.slots.len()
    }

    /// Whether the batch holds nothing.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Packets in the batch.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The next free slot, to decrypt into (then [`TunTx::commit`] the packet's length).
    /// Panics when the batch is full.
    pub fn slot(&mut self) -> &mut [u8] {
        let s = &mut self.slots[self.len];
        let end = self.slot_size.max(s.data.len());
        &mut s.data[TUN_HEADROOM..end]
    }

    /// Keeps the `n` bytes just written into [`TunTx::slot`].
    pub fn commit(&mut self, n: usize) {
        self.slots[self.len].len = TUN_HEADROOM + n;
        self.len += 1;
    }

    /// Copies `packet` into the next slot; `false` when the batch is full.
    pub fn push(&mut self, packet: &[u8]) -> bool {
        if self.is_full() {
            return false;
        }
        let s = &mut self.slots[self.len];
        let end = TUN_HEADROOM + packet.len();
        if s.data.len() < end {
            s.data.resize(end, 0);
        }
        s.data[TUN_HEADROOM..end].copy_from_slice(packet);
        s.len = end;
        self.len += 1;
        true
    }

    /// The packets of the batch.
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.slots[..self.len]
            .iter()
            .map(|s| &s.data[TUN_HEADROOM..s.len])
    }

    /// Empties the batch.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

fn host_prefix(a: &IpNet) -> std::io::Result<IpNet> {
    IpNet::new(a.addr(), if a.addr().is_ipv4() { 32 } else { 128 })
        .map_err(|e| std::io::Error::other(e.to_string()))
}

async fn ip(args: &[&str]) -> std::io::Result<()> {
    let out = tokio::process::Command::new("ip")
        .args(args)
        .output()
        .await?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// The host's global and private interface addresses (no loopback, link-local or tailnet
/// addresses), for local endpoints. Loopback only if there is nothing else.
pub async fn interface_addrs() -> Vec<IpAddr> {
    let Ok(out) = tokio::process::Command::new("ip")
        .args(["-o", "addr", "show"])
        .output()
        .await
    else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let all: Vec<IpAddr> = text
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            while let Some(w) = it.next() {
                if w == "inet" || w == "inet6" {
                    return it.next()?.split('/').next()?.parse().ok();
                }
            }
            None
        })
        .collect();
    let tailnet_v4: IpNet = TAILNET_V4.parse().expect("constant prefix");
    let tailnet_v6: IpNet = TAILNET_V6.parse().expect("constant prefix");
    let usable: Vec<IpAddr> = all
        .iter()
        .copied()
        .filter(|ip| !ip.is_loopback() && !tailnet_v4.contains(ip) && !tailnet_v6.contains(ip))
        .filter(|ip| match ip {
            IpAddr::V4(v) => !v.is_link_local(),
            IpAddr::V6(v) => (v.segments()[0] & 0xffc0) != 0xfe80,
        })
        .collect();
    if usable.is_empty() {
        all.into_iter().filter(IpAddr::is_loopback).collect()
    } else {
        usable
    }
}

/// The OS hostname.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "weft".to_owned())
}

/// The system's TLS roots (Debian's bundle), for DERP servers with public certificates.
pub fn system_roots() -> rustls::RootCertStore {
    use rustls::pki_types::pem::PemObject;
    let mut store = rustls::RootCertStore::empty();
    if let Ok(iter) =
        rustls::pki_types::CertificateDer::pem_file_iter("/etc/ssl/certs/ca-certificates.crt")
    {
        for c in iter.flatten() {
            let _ = store.add(c);
        }
    }
    store
}
