//! Throughput of the allocation-free data path, both ends in one thread:
//! `encapsulate_direct` on one node, `decapsulate_direct` on the other, with
//! 1280-byte IP packets (Tailscale's default MTU). Measures the core and
//! boringtun's crypto without any IO.
//!
//! `cargo run --release -p weft-magicsock --example fastpath [packets]`
#![allow(clippy::disallowed_methods, clippy::print_stdout)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use weft_key::{DiscoPrivate, NodePrivate};
use weft_magicsock::{Config, DerpRegion, Destination, Magicsock, Path, PeerConfig};

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(300_000);
    let t0 = Instant::now();
    let addrs: [SocketAddr; 2] = [
        "10.0.0.1:41641".parse().expect("addr"),
        "10.0.0.2:41641".parse().expect("addr"),
    ];
    let mut socks: Vec<Magicsock> = (0..2u8)
        .map(|i| {
            let cfg = Config {
                node_private: NodePrivate::from_bytes([i + 1; 32]),
                disco_private: DiscoPrivate::from_bytes([i + 11; 32]),
            };
            let mut s = Magicsock::new(cfg, [i; 32], t0);
            s.set_derp_map(
                vec![DerpRegion {
                    id: 900,
                    stun: vec![],
                }],
                t0,
            );
            s.set_own_endpoints(vec![addrs[usize::from(i)]], t0);
            s
        })
        .collect();
    let cfgs: Vec<PeerConfig> = (0..2)
        .map(|i| PeerConfig {
            node_key: socks[i].node_public(),
            disco_key: socks[i].disco_public(),
            home_derp: Some(900),
            endpoints: vec![addrs[i]],
            allowed_ips: vec![IpNet::from(std::net::IpAddr::from([
                100,
                64,
                0,
                i as u8 + 1,
            ]))],
        })
        .collect();
    socks[0].set_peers(vec![cfgs[1].clone()], t0);
    socks[1].set_peers(vec![cfgs[0].clone()], t0);

    let packet = ipv4(1280);
    // Handshake and disco over an ideal network until the path is direct.
    let now = t0 + Duration::from_millis(1);
    socks[0]
        .handle_ip_packet(&packet, now)
        .expect("first packet");
    for _ in 0..20 {
        for i in 0..2 {
            while let Some(t) = socks[i].poll_transmit() {
                let j = 1 - i;
                match t.dst {
                    Destination::Udp(_) => {
                        let _ = socks[j].handle_datagram(addrs[j], addrs[i], &t.payload, now);
                    }
                    Destination::Derp { region, .. } => {
                        let from = socks[i].node_public();
                        let _ = socks[j].handle_derp_packet(region, from, &t.payload, now);
                    }
                }
            }
            while socks[i].poll_ip_packet().is_some() {}
        }
    }
    assert!(
        matches!(socks[0].path(&cfgs[1].node_key, now), Path::Direct(_)),
        "direct path"
    );

    let mut wire = vec![0u8; 2048];
    let mut plain = vec![0u8; 2048];
    let start = Instant::now();
    let mut ok = 0usize;
    for _ in 0..n {
        let Some((_, len)) = socks[0]
            .encapsulate_direct(&packet, now, &mut wire)
            .expect("encap")
        else {
            continue;
        };
        if let Some(m) = socks[1]
            .decapsulate_direct(addrs[1], addrs[0], &wire[..len], now, &mut plain)
            .expect("decap")
        {
            ok += usize::from(m == packet.len());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let gbit = (ok * packet.len() * 8) as f64 / secs / 1e9;
    println!("{ok}/{n} packets of {} bytes in {secs:.3} s: {:.0} packets/s, {gbit:.2} Gbit/s (encrypt+decrypt, one core)", packet.len(), ok as f64 / secs);
}

fn ipv4(len: usize) -> Vec<u8> {
    let mut p = vec![0u8; len];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[100, 64, 0, 1]);
    p[16..20].copy_from_slice(&[100, 64, 0, 2]);
    p
}
