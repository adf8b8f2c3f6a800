//! STUN end to end across network namespaces with an nftables masquerade NAT.
//!
//! Needs root, `ip` (iproute2), `nft` (nftables), `stun` (stun-client),
//! `turnutils_stunclient` and `turnserver` (coturn). Run with
//! `cargo test -p weft-derp --test netns_stun -- --ignored --test-threads=1`.
//!
//! Topology (all namespaces created and deleted by each test; the veths only
//! join them to each other, never to the host namespace):
//!
//! ```text
//!   cli 10.201.1.2 ── 10.201.1.1 nat 198.18.5.1 ── 198.18.5.2 srv
//!                              (masquerade out of n1)
//! ```
//!
//! Our STUN server and client run inside namespaces as child processes of this
//! test binary (`ip netns exec NS <this binary> netns_helper`), selected by the
//! `WEFT_NETNS_HELPER` environment variable.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SRV_IP: &str = "198.18.5.2";
const NAT_PUBLIC_IP: &str = "198.18.5.1";

/// Entry point for child processes; does nothing unless WEFT_NETNS_HELPER is set.
#[test]
#[ignore = "needs root + netns (helper process entry)"]
fn netns_helper() {
    let Ok(role) = std::env::var("WEFT_NETNS_HELPER") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if let Some(addr) = role.strip_prefix("stun-server:") {
        let addr: SocketAddr = addr.parse().unwrap();
        rt.block_on(async {
            let sock = tokio::net::UdpSocket::bind(addr).await.unwrap();
            println!("LISTENING {}", sock.local_addr().unwrap());
            let h = weft_derp::stun::serve(sock);
            // Bounded lifetime: the parent kills us sooner.
            tokio::time::sleep(Duration::from_secs(30)).await;
            h.abort();
        });
    } else if let Some(server) = role.strip_prefix("stun-probe:") {
        let server: SocketAddr = server.parse().unwrap();
        rt.block_on(async {
            let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
            let local = sock.local_addr().unwrap();
            let mapped = weft_derp::stun::probe(&sock, server).await.unwrap();
            println!("LOCAL {local}");
            println!("MAPPED {mapped}");
        });
    }
}

struct Topology {
    tag: String,
}

impl Topology {
    fn ns(&self, name: &str) -> String {
        format!("wd{}-{}", self.tag, name)
    }

    fn new() -> Self {
        let t = Self {
            tag: format!("{}", std::process::id() % 100_000),
        };
        let (cli, nat, srv) = (t.ns("cli"), t.ns("nat"), t.ns("srv"));
        for n in [&cli, &nat, &srv] {
            sh(&["ip", "netns", "add", n]);
            sh(&["ip", "-n", n, "link", "set", "lo", "up"]);
        }
        let c0 = format!("c0{}", t.tag);
        let n1 = format!("n1{}", t.tag);
        // Each veth pair is created inside one of our namespaces and its peer
        // moved straight into another of ours.
        sh(&[
            "ip", "-n", &cli, "link", "add", "c0", "type", "veth", "peer", "name", &c0,
        ]);
        sh(&["ip", "-n", &cli, "link", "set", &c0, "netns", &nat]);
        sh(&["ip", "-n", &nat, "link", "set", &c0, "name", "n0"]);
        sh(&[
            "ip", "-n", &srv, "link", "add", "s0", "type", "veth", "peer", "name", &n1,
        ]);
        sh(&["ip", "-n", &srv, "link", "set", &n1, "netns", &nat]);
        sh(&["ip", "-n", &nat, "link", "set", &n1, "name", "n1"]);
        sh(&[
            "ip",
            "-n",
            &cli,
            "addr",
            "add",
            "10.201.1.2/24",
            "dev",
            "c0",
        ]);
        sh(&[
            "ip",
            "-n",
            &nat,
            "addr",
            "add",
            "10.201.1.1/24",
            "dev",
            "n0",
        ]);
        sh(&[
            "ip",
            "-n",
            &nat,
            "addr",
            "add",
            "198.18.5.1/24",
            "dev",
            "n1",
        ]);
        sh(&[
            "ip",
            "-n",
            &srv,
            "addr",
            "add",
            "198.18.5.2/24",
            "dev",
            "s0",
        ]);
        for (n, d) in [(&cli, "c0"), (&nat, "n0"), (&nat, "n1"), (&srv, "s0")] {
            sh(&["ip", "-n", n, "link", "set", d, "up"]);
        }
        sh(&[
            "ip",
            "-n",
            &cli,
            "route",
            "add",
            "default",
            "via",
            "10.201.1.1",
        ]);
        sh(&[
            "ip",
            "netns",
            "exec",
            &nat,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ]);
        let rules = "table ip weftnat {\n chain post {\n  type nat hook postrouting priority 100;\n  oifname \"n1\" masquerade random\n }\n}\n";
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &nat, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        nft.stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        assert!(nft.wait().unwrap().success(), "nft rules");
        t
    }

    /// Runs this test binary's helper inside `ns` with `role`.
    fn helper(&self, ns: &str, role: &str) -> Child {
        let exe = std::env::current_exe().unwrap();
        Command::new("ip")
            .args(["netns", "exec", &self.ns(ns)])
            .arg(exe)
            .args([
                "netns_helper",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("WEFT_NETNS_HELPER", role)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    fn exec(&self, ns: &str, args: &[&str]) -> std::process::Output {
        Command::new("timeout")
            .arg("20")
            .args(["ip", "netns", "exec", &self.ns(ns)])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for n in ["cli", "nat", "srv"] {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.ns(n)])
                .status();
        }
    }
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0]).args(&args[1..]).status().unwrap();
    assert!(st.success(), "{args:?} failed");
}

/// Stops a child we started, by its PID: SIGTERM (which `timeout` forwards
/// to the program it runs), then SIGKILL if it lingers.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads the child's stdout lines until one starts with `prefix`.
fn read_line_with(child: &mut Child, prefix: &str) -> String {
    use std::io::BufRead;
    let out = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(out).lines();
    let end = Instant::now() + Duration::from_secs(20);
    while Instant::now() < end {
        match lines.next() {
            // libtest may print "test netns_helper ... " before our line.
            Some(Ok(l)) if l.contains(prefix) => {
                let at = l.find(prefix).expect("contains") + prefix.len();
                return l[at..].trim().to_owned();
            }
            Some(Ok(_)) => {}
            _ => break,
        }
    }
    panic!("no {prefix:?} line from helper");
}

fn wait_udp_listening(t: &Topology, ns: &str, port: u16) {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        let o = t.exec(ns, &["ss", "-Hlun", &format!("sport = :{port}")]);
        if !String::from_utf8_lossy(&o.stdout).trim().is_empty() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listening on udp {port} in {ns}");
}

#[test]
#[ignore = "needs root + netns"]
fn debian_stun_client_behind_nat_sees_the_nat_address_from_our_server() {
    let t = Topology::new();
    let mut srv = t.helper("srv", &format!("stun-server:{SRV_IP}:3478"));
    let listening = read_line_with(&mut srv, "LISTENING ");
    assert_eq!(listening, format!("{SRV_IP}:3478"));
    let _srv = Killed(srv);

    let o = t.exec("cli", &["stun", SRV_IP, "1", "-v"]);
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(
        text.contains(&format!("MappedAddress = {NAT_PUBLIC_IP}:")),
        "stun-client output:\n{text}"
    );

    let o = t.exec("cli", &["turnutils_stunclient", "-p", "3478", SRV_IP]);
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(
        text.contains(&format!("{NAT_PUBLIC_IP}:")),
        "turnutils_stunclient output:\n{text}"
    );
    assert!(
        !text.contains("10.201.1.2"),
        "private address leaked:\n{text}"
    );
}

#[test]
#[ignore = "needs root + netns"]
fn our_stun_client_behind_nat_gets_the_nat_address_from_coturn() {
    let t = Topology::new();
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new("timeout")
        .args([
            "-s",
            "TERM",
            "30",
            "ip",
            "netns",
            "exec",
            &t.ns("srv"),
            "turnserver",
        ])
        .args([
            "-n",
            "--stun-only",
            "--no-cli",
            "--no-tls",
            "--no-dtls",
            "--listening-ip",
            SRV_IP,
            "--listening-port",
            "3478",
            "--pidfile",
        ])
        .arg(dir.path().join("turnserver.pid"))
        .arg("--log-file")
        .arg(dir.path().join("turn.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _turn = Killed(child);
    wait_udp_listening(&t, "srv", 3478);

    let probe = t.helper("cli", &format!("stun-probe:{SRV_IP}:3478"));
    let out = probe.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mapped = text
        .lines()
        .find_map(|l| l.split_once("MAPPED ").map(|(_, a)| a))
        .unwrap_or_else(|| panic!("probe output:\n{text}"));
    let mapped: SocketAddr = mapped.trim().parse().unwrap();
    assert_eq!(mapped.ip().to_string(), NAT_PUBLIC_IP);
}
