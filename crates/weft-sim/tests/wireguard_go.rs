//! WireGuard interop: weft's `wg` wrapper against Debian's wireguard-go.
//!
//! Two network namespaces created here, joined by a veth pair and linked to
//! nothing else. wireguard-go (configured with `wg`) runs in one with a TUN
//! device carrying 100.64.0.1; this test binary re-executes itself in the
//! other, where a tiny tokio loop drives `weft_magicsock::wg::WgPeers` over a
//! UDP socket, completes a handshake and pings 100.64.0.1 with hand-built ICMP
//! echo requests inside the tunnel; the kernel behind wireguard-go answers.
//!
//! Run with `cargo test -p weft-sim --test wireguard_go -- --ignored` as root.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine;
use weft_key::{NodePrivate, NodePublic};
use weft_magicsock::wg::WgPeers;

const CHILD_ENV: &str = "WEFT_WGI_CHILD";
const GO_ADDR: &str = "10.201.0.1";
const OUR_ADDR: &str = "10.201.0.2";
const GO_PORT: u16 = 51820;
const OUR_PORT: u16 = 51821;
const PINGS: u16 = 3;

fn b64(b: &[u8; 32]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Netns {
    names: Vec<String>,
    go: Option<Child>,
    uapi_socket: Option<String>,
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(mut c) = self.go.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(p) = &self.uapi_socket {
            let _ = std::fs::remove_file(p);
        }
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

#[test]
#[ignore = "needs root + netns"]
fn handshake_and_pings_with_wireguard_go() {
    if std::env::var_os(CHILD_ENV).is_some() {
        return child();
    }
    let tag = std::process::id();
    let (ns_go, ns_us) = (format!("weft-wgi-go-{tag}"), format!("weft-wgi-us-{tag}"));
    let (veth_go, veth_us, wg_dev) = (
        format!("wga{tag}"),
        format!("wgb{tag}"),
        format!("wgt{tag}"),
    );
    let mut guard = Netns {
        names: vec![ns_go.clone(), ns_us.clone()],
        go: None,
        uapi_socket: None,
    };
    sh(&["ip", "netns", "add", &ns_go]);
    sh(&["ip", "netns", "add", &ns_us]);
    sh(&[
        "ip", "link", "add", &veth_go, "netns", &ns_go, "type", "veth", "peer", "name", &veth_us,
        "netns", &ns_us,
    ]);
    for (ns, dev, addr) in [(&ns_go, &veth_go, GO_ADDR), (&ns_us, &veth_us, OUR_ADDR)] {
        sh(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            dev,
        ]);
        sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }

    let go_key = NodePrivate::generate();
    let our_key = NodePrivate::generate();
    let go = Command::new("ip")
        .args(["netns", "exec", &ns_go, "wireguard-go", "-f", &wg_dev])
        .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("wireguard-go");
    guard.go = Some(go);
    // wireguard-go creates its TUN and UAPI socket asynchronously.
    let sock = format!("/var/run/wireguard/{wg_dev}.sock");
    guard.uapi_socket = Some(sock.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !Command::new("ip")
        .args(["netns", "exec", &ns_go, "test", "-S", &sock])
        .status()
        .is_ok_and(|s| s.success())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "wireguard-go did not come up"
        );
        std::thread::yield_now();
    }
    let key_file = std::env::temp_dir().join(format!("weft-wgi-{tag}.key"));
    std::fs::write(&key_file, b64(&go_key.to_bytes())).expect("key file");
    let key_path = key_file.to_string_lossy().to_string();
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns_go,
        "wg",
        "set",
        &wg_dev,
        "private-key",
        &key_path,
        "listen-port",
        &GO_PORT.to_string(),
        "peer",
        &b64(our_key.public().as_bytes()),
        "allowed-ips",
        "100.64.0.2/32",
        "endpoint",
        &format!("{OUR_ADDR}:{OUR_PORT}"),
    ]);
    let _ = std::fs::remove_file(&key_file);
    sh(&[
        "ip",
        "-n",
        &ns_go,
        "addr",
        "add",
        "100.64.0.1/32",
        "dev",
        &wg_dev,
    ]);
    sh(&["ip", "-n", &ns_go, "link", "set", &wg_dev, "up"]);
    sh(&[
        "ip",
        "-n",
        &ns_go,
        "route",
        "add",
        "100.64.0.2/32",
        "dev",
        &wg_dev,
    ]);

    let exe = std::env::current_exe().expect("exe");
    let out = Command::new("ip")
        .args(["netns", "exec", &ns_us])
        .arg(exe)
        .args([
            "--exact",
            "handshake_and_pings_with_wireguard_go",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_ENV, "1")
        .env("WEFT_WGI_OUR_KEY", our_key.to_text())
        .env("WEFT_WGI_GO_PUB", go_key.public().to_text())
        .output()
        .expect("child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "our side failed");
    assert!(
        stdout.contains(&format!("echo replies: {PINGS}")),
        "child reported all replies"
    );
    let show = Command::new("ip")
        .args(["netns", "exec", &ns_go, "wg", "show", &wg_dev])
        .output()
        .expect("wg show");
    let show = String::from_utf8_lossy(&show.stdout);
    println!("{show}");
    assert!(
        show.contains("latest handshake"),
        "wireguard-go saw a handshake"
    );
}

/// Our side, inside the second namespace.
fn child() {
    let our_key =
        NodePrivate::parse(&std::env::var("WEFT_WGI_OUR_KEY").expect("key")).expect("our key");
    let go_pub =
        NodePublic::parse(&std::env::var("WEFT_WGI_GO_PUB").expect("pub")).expect("go pub");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let replies = rt.block_on(async move {
        let sock = tokio::net::UdpSocket::bind((OUR_ADDR, OUR_PORT))
            .await
            .expect("bind");
        let go: SocketAddr = format!("{GO_ADDR}:{GO_PORT}").parse().expect("addr");
        let mut wg = WgPeers::new(&our_key);
        wg.add_peer(go_pub, 0x00ab_cdef);
        let mut replies = 0u16;
        let mut buf = vec![0u8; 65536];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut seq = 1u16;
        for d in wg.encapsulate(&go_pub, &icmp_echo(seq)).expect("encap") {
            sock.send_to(&d, go).await.expect("send");
        }
        while replies < PINGS {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out with {replies} replies"
            );
            for (_, d) in wg.update_timers() {
                sock.send_to(&d, go).await.expect("send");
            }
            let Ok(r) =
                tokio::time::timeout(Duration::from_millis(250), sock.recv_from(&mut buf)).await
            else {
                continue;
            };
            let (n, from) = r.expect("recv");
            let Ok(peer) = wg.peer_of(&buf[..n]) else {
                continue;
            };
            assert_eq!(peer, go_pub);
            let out = wg
                .decapsulate(&peer, Some(from.ip()), &buf[..n])
                .expect("decap");
            for d in out.to_network {
                sock.send_to(&d, go).await.expect("send");
            }
            if let Some((pkt, src)) = out.to_tunnel {
                if is_echo_reply(&pkt, seq) {
                    println!("echo reply {seq} from {src}");
                    replies += 1;
                    seq += 1;
                    if replies < PINGS {
                        for d in wg.encapsulate(&go_pub, &icmp_echo(seq)).expect("encap") {
                            sock.send_to(&d, go).await.expect("send");
                        }
                    }
                }
            }
        }
        replies
    });
    println!("echo replies: {replies}");
}

fn checksum(b: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in b.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

const ICMP_ID: u16 = 0x7765;

fn icmp_echo(seq: u16) -> Vec<u8> {
    let payload = b"weft wireguard interop";
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&ICMP_ID.to_be_bytes());
    icmp.extend_from_slice(&seq.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let len = (20 + icmp.len()) as u16;
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&len.to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, 1, 0, 0, 100, 64, 0, 2, 100, 64, 0, 1]);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip.extend_from_slice(&icmp);
    ip
}

fn is_echo_reply(pkt: &[u8], seq: u16) -> bool {
    pkt.len() >= 28
        && pkt[0] >> 4 == 4
        && pkt[9] == 1
        && pkt[12..16] == [100, 64, 0, 1]
        && pkt[20] == 0
        && pkt[24..26] == ICMP_ID.to_be_bytes()
        && pkt[26..28] == seq.to_be_bytes()
}
