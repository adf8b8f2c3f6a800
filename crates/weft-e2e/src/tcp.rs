//! TCP probes for tests in namespaces: a python3 listener that logs each peer and echoes one
//! read, and a one-shot connect that reports a one-line verdict.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use crate::{Error, Harness, Netns, Proc, Result};

/// Accepts TCP connections on `IP PORT`, logs `accepted PEER` for each and echoes one read.
const LISTENER: &str = r#"
import socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((ip, port))
s.listen(16)
print("listening", flush=True)
while True:
    c, peer = s.accept()
    print("accepted", peer[0], flush=True)
    c.settimeout(5)
    try:
        c.sendall(b"echo " + c.recv(1024))
    except OSError:
        pass
    c.close()
"#;

/// Connects to `IP PORT` with a 2-second timeout and prints `ok REPLY`, `timeout`,
/// `refused` or `error …`.
const CONNECT: &str = r#"
import socket, sys
ip, port = sys.argv[1], int(sys.argv[2])
try:
    c = socket.create_connection((ip, port), timeout=2)
except ConnectionRefusedError:
    print("refused")
    sys.exit(0)
except (TimeoutError, socket.timeout):
    print("timeout")
    sys.exit(0)
except OSError as e:
    print("error", e)
    sys.exit(0)
c.settimeout(5)
try:
    c.sendall(b"hello %d" % port)
    print("ok", c.recv(1024).decode())
except OSError as e:
    print("error", e)
"#;

/// One TCP connect (and echo) from `ns` to `ip:port` with `python`: `ok echo hello PORT`,
/// `timeout`, `refused` or `error …`.
pub fn tcp_connect(ns: &Netns, python: &Path, ip: Ipv4Addr, port: u16) -> Result<String> {
    let python = python.display().to_string();
    let out = ns.run(&[&python, "-c", CONNECT, &ip.to_string(), &port.to_string()])?;
    Ok(out.trim().to_owned())
}

/// Starts an echoing listener on `ip:port` in `ns` (log `NAME`, one `accepted PEER` line per
/// connection) and waits up to `wait` until it listens.
pub fn tcp_listen(
    h: &Harness,
    ns: &Netns,
    name: &str,
    python: &Path,
    ip: Ipv4Addr,
    port: u16,
    wait: Duration,
) -> Result<Proc> {
    let args: Vec<String> = vec![
        "-c".into(),
        LISTENER.into(),
        ip.to_string(),
        port.to_string(),
    ];
    let mut p = h.spawn(ns, name, python, &args, &[])?;
    p.wait_log("listening", wait)?;
    Ok(p)
}

/// `Ok` if `ok`, else a check failure described by `what`.
pub fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::Check(what()))
    }
}
