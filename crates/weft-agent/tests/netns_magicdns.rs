//! MagicDNS with real TUN devices: two `weft daemon`s and `weft server` on one switched
//! segment (198.18.1.0/24) in network namespaces this test creates; a python3 UDP DNS client
//! inside node a's namespace asks 100.100.100.100 (routed into a's TUN) for b's name. Host
//! DNS configuration is never touched (the client names the server explicitly).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use weft_e2e::{wait_for, Error, Harness, Netns, Result, Segment, WeftNode as Node, WeftServer};

const SERVER: [u8; 4] = [198, 18, 1, 2];
const WAIT: Duration = Duration::from_secs(60);

/// Sends one A query for argv[1] to argv[2]:53 and prints `rcode N answers M [ip X]`, or
/// `error ...` if nothing comes back within 2 s.
const DIG: &str = r#"
import socket, struct, sys
name, server = sys.argv[1], sys.argv[2]
q = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(l)]) + l.encode() for l in name.rstrip(".").split(".")) + b"\0"
q += struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
try:
    s.sendto(q, (server, 53))
    r = s.recv(4096)
except OSError as e:
    print("error", e)
    sys.exit(0)
an = struct.unpack(">H", r[6:8])[0]
out = "rcode %d answers %d" % (r[3] & 15, an)
if an:
    out += " ip " + socket.inet_ntoa(r[-4:])
print(out)
"#;

fn start_node(h: &Harness, seg: &Segment, tag: &str, addr: Ipv4Addr) -> Result<Node> {
    let ns = Netns::new(tag)?;
    seg.lan().attach(&ns, "eth0", addr)?;
    ns.ip(&["link", "set", "lo", "up"])?;
    Node::start(h, ns, tag, "")
}

fn dig(ns: &Netns, python: &Path, name: &str) -> Result<String> {
    let python = python.display().to_string();
    let out = ns.run(&[&python, "-c", DIG, name, "100.100.100.100"])?;
    Ok(out.trim().to_owned())
}

#[test]
#[ignore = "needs root + netns"]
fn a_weft_node_resolves_its_peer_through_quad100() -> Result<()> {
    let h = Harness::new("magicdns")?;
    h.finish(magicdns(&h))
}

fn magicdns(h: &Harness) -> Result<()> {
    let python = weft_e2e::find_in_path("python3")
        .ok_or_else(|| Error::Environment("python3".to_owned()))?;
    let seg = Segment::new("dns", 24)?;
    let s_ns = Netns::new("dsrv")?;
    seg.lan().attach(&s_ns, "eth0", SERVER.into())?;
    let server = WeftServer::start(h, &s_ns, SERVER.into(), 8080)?;
    server.create_user("alice")?;
    let key = server.create_authkey("alice", true)?;
    let a = start_node(h, &seg, "dnsa", [198, 18, 1, 11].into())?;
    let b = start_node(h, &seg, "dnsb", [198, 18, 1, 12].into())?;
    for (n, host) in [(&a, "alpha"), (&b, "bravo")] {
        n.weft(&[
            "up",
            "--login-server",
            server.url(),
            "--auth-key",
            &key,
            "--hostname",
            host,
            "--timeout",
            "60",
        ])?;
    }
    let b_ip = b.weft(&["ip", "-4"])?.trim().to_owned();
    // b's FQDN as a's netmap has it (`DNSName` of the peer in `weft status --json`).
    let fqdn = wait_for("bravo in a's netmap", WAIT, || {
        let s = a.status().map_err(|e| e.to_string())?;
        s["Peer"]
            .as_object()
            .and_then(|m| m.values().find(|p| p["HostName"] == "bravo"))
            .and_then(|p| p["DNSName"].as_str())
            .map(str::to_owned)
            .ok_or_else(|| format!("no bravo yet: {s}"))
    })?;
    let want = format!("rcode 0 answers 1 ip {b_ip}");
    for name in [fqdn.as_str(), "bravo", &fqdn.to_ascii_uppercase()] {
        let out = dig(&a.ns, &python, name)?;
        if out != want {
            return Err(Error::Check(format!("{name}: got {out:?}, want {want:?}")));
        }
    }
    let suffix = fqdn
        .trim_end_matches('.')
        .split_once('.')
        .map_or("", |x| x.1);
    let out = dig(&a.ns, &python, &format!("nobody.{suffix}"))?;
    if out != "rcode 3 answers 0" {
        return Err(Error::Check(format!("unknown name: {out:?}")));
    }
    let out = dig(&a.ns, &python, "example.com")?;
    if out != "rcode 5 answers 0" {
        return Err(Error::Check(format!("outside name: {out:?}")));
    }
    // The engine counted the five answers (published with its next status tick).
    wait_for("a's DnsAnswered counter", WAIT, || {
        let s = a.status().map_err(|e| e.to_string())?;
        match s["WeftDataPlane"]["DnsAnswered"].as_u64() {
            Some(n) if n >= 5 => Ok(()),
            _ => Err(format!("counters: {}", s["WeftDataPlane"])),
        }
    })?;
    Ok(())
}
