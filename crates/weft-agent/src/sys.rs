//! Host integration: the TUN device (tun-rs), its addresses and routes (`ip`), interface
//! addresses for local endpoints, the OS hostname and TLS roots. The only module that names
//! tun-rs.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use tokio::sync::mpsc;

use crate::engine::TunChannels;

/// The tailnet's IPv4 range, routed into the TUN.
pub const TAILNET_V4: &str = "100.64.0.0/10";
/// The tailnet's IPv6 range, routed into the TUN.
pub const TAILNET_V6: &str = "fd7a:115c:a1e0::/48";
/// Default TUN MTU.
pub const DEFAULT_MTU: u16 = 1280;

/// A TUN device and the tasks that move its packets.
pub struct Tun {
    name: String,
    addrs: Vec<IpNet>,
    reader: tokio::task::JoinHandle<()>,
    writer: tokio::task::JoinHandle<()>,
}

impl Drop for Tun {
    fn drop(&mut self) {
        self.reader.abort();
        self.writer.abort();
    }
}

impl std::fmt::Debug for Tun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tun")
            .field("name", &self.name)
            .field("addrs", &self.addrs)
            .finish()
    }
}

impl Tun {
    /// Creates the device `name` (up, MTU `mtu`) and returns it with the engine's channels.
    pub fn create(name: &str, mtu: u16) -> std::io::Result<(Tun, TunChannels)> {
        let dev = tun_rs::DeviceBuilder::new()
            .name(name)
            .mtu(mtu)
            .build_async()?;
        let dev = Arc::new(dev);
        let (from_tx, from_rx) = mpsc::channel::<Vec<u8>>(1024);
        let (to_tx, mut to_rx) = mpsc::channel::<Vec<u8>>(1024);
        let rdev = dev.clone();
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; 65_535];
            loop {
                match rdev.recv(&mut buf).await {
                    Ok(n) => {
                        if from_tx.send(buf[..n].to_vec()).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TUN read failed");
                        return;
                    }
                }
            }
        });
        let writer = tokio::spawn(async move {
            while let Some(p) = to_rx.recv().await {
                if let Err(e) = dev.send(&p).await {
                    tracing::debug!(error = %e, "TUN write failed");
                }
            }
        });
        let tun = Tun {
            name: name.to_owned(),
            addrs: Vec::new(),
            reader,
            writer,
        };
        Ok((
            tun,
            TunChannels {
                from_tun: from_rx,
                to_tun: to_tx,
            },
        ))
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
