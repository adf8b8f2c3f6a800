//! `weft server` inside a namespace, and its admin CLI.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::env::weft_binary;
use crate::error::{Error, Result};
use crate::netns::Netns;
use crate::poll::wait_for;
use crate::process::{Harness, Proc};

/// Starts `weft ARGS…` (e.g. `derp …`) in `ns` as `name`, with the harness's log settings.
pub fn spawn_weft(h: &Harness, ns: &Netns, name: &str, args: &[String]) -> Result<Proc> {
    spawn_weft_logging(h, ns, name, args, "")
}

/// [`spawn_weft`] with `extra` tracing directives (e.g. `weft_agent::engine=trace`)
/// appended to the harness's log settings; `""` adds none.
pub fn spawn_weft_logging(
    h: &Harness,
    ns: &Netns,
    name: &str,
    args: &[String],
    extra: &str,
) -> Result<Proc> {
    let log = if extra.is_empty() {
        rust_log()
    } else {
        format!("{},{extra}", rust_log())
    };
    let env = vec![
        ("RUST_LOG".to_owned(), log),
        ("RUST_BACKTRACE".to_owned(), "1".to_owned()),
        (
            "HOME".to_owned(),
            h.subdir(&format!("{name}-home"))?.display().to_string(),
        ),
    ];
    h.spawn(ns, name, &weft_binary(), args, &env)
}

fn rust_log() -> String {
    std::env::var("WEFT_E2E_RUST_LOG").unwrap_or_else(|_| {
        "debug,h2=info,hyper=info,hyper_util=info,sqlx=info,rustls=info,tower=info".to_owned()
    })
}

/// A running `weft server --listen ADDR --url URL --data-dir DIR`.
pub struct WeftServer {
    proc: Proc,
    ns_name: String,
    listen: SocketAddrV4,
    url: String,
    data_dir: PathBuf,
    args: Vec<String>,
    restarts: usize,
}

impl WeftServer {
    /// Starts the server in `ns` on `addr:port` (plain HTTP, URL `http://addr:port`),
    /// and waits until `GET /key?v=130` answers from inside the namespace.
    pub fn start(h: &Harness, ns: &Netns, addr: Ipv4Addr, port: u16) -> Result<WeftServer> {
        Self::start_with_args(h, ns, addr, port, &[])
    }

    /// [`WeftServer::start`] with extra command-line arguments after the standard ones.
    pub fn start_with_args(
        h: &Harness,
        ns: &Netns,
        addr: Ipv4Addr,
        port: u16,
        extra: &[&str],
    ) -> Result<WeftServer> {
        let listen = SocketAddrV4::new(addr, port);
        let url = format!("http://{listen}");
        let data_dir = h.subdir("weft-data")?;
        let mut args = vec![
            "server".to_owned(),
            "--listen".to_owned(),
            listen.to_string(),
            "--url".to_owned(),
            url.clone(),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let proc = spawn_weft(h, ns, "weft-server", &args)?;
        let mut server = WeftServer {
            proc,
            ns_name: ns.name().to_owned(),
            listen,
            url,
            data_dir,
            args,
            restarts: 0,
        };
        server.wait_ready(ns)?;
        Ok(server)
    }

    /// Kills the server with SIGKILL and starts it again with the same arguments and
    /// data directory (log: `weft-server-restart-N.log`); waits until it answers.
    pub fn kill_and_restart(&mut self, h: &Harness, ns: &Netns) -> Result<()> {
        self.proc.kill_hard();
        self.restarts += 1;
        let name = format!("weft-server-restart-{}", self.restarts);
        self.proc = spawn_weft(h, ns, &name, &self.args)?;
        self.wait_ready(ns)
    }

    fn wait_ready(&mut self, ns: &Netns) -> Result<()> {
        let key_url = format!("{}/key?v=130", self.url);
        let proc = &mut self.proc;
        wait_for(
            "weft server to answer GET /key",
            Duration::from_secs(30),
            || {
                if let Some(status) = proc.exited() {
                    return Ok(Err(Error::Check(format!(
                        "weft server exited ({status}) before answering; see {}",
                        proc.log_path().display()
                    ))));
                }
                match ns.run(&["curl", "-sS", "-f", "--max-time", "2", &key_url]) {
                    Ok(body) if !body.trim().is_empty() => Ok(Ok(())),
                    Ok(_) => Err("empty body".to_owned()),
                    Err(e) => Err(e.to_string()),
                }
            },
        )?
    }

    /// The URL clients use (`control_url`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The listen address.
    pub fn listen(&self) -> SocketAddrV4 {
        self.listen
    }

    /// The server process (logs, liveness).
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// Runs `weft ARGS… --data-dir DIR` in the server's namespace; returns stdout.
    pub fn admin(&self, args: &[&str]) -> Result<String> {
        let mut cmd = std::process::Command::new("ip");
        cmd.args(["netns", "exec", &self.ns_name])
            .arg(weft_binary())
            .args(args)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .env_clear()
            .env("PATH", crate::process::PATH)
            .env("RUST_LOG", "warn");
        crate::cmd::run(&mut cmd)
    }

    /// `weft users create NAME`.
    pub fn create_user(&self, name: &str) -> Result<()> {
        self.admin(&["users", "create", name]).map(drop)
    }

    /// `weft authkeys create --user USER [--reusable]`; returns the key (the last
    /// non-empty line of stdout, which should be the only one).
    pub fn create_authkey(&self, user: &str, reusable: bool) -> Result<String> {
        let mut args = vec!["authkeys", "create", "--user", user];
        if reusable {
            args.push("--reusable");
        }
        let out = self.admin(&args)?;
        out.lines()
            .rev()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| Error::Check("`weft authkeys create` printed no key".to_owned()))
    }

    /// `weft nodes list --json`, read leniently (see [`NodeView`]).
    pub fn nodes(&self) -> Result<Vec<NodeView>> {
        let out = self.admin(&["nodes", "list", "--json"])?;
        let value: Value = serde_json::from_str(&out).map_err(|source| Error::Json {
            what: "`weft nodes list --json`".to_owned(),
            source,
        })?;
        Ok(NodeView::list_from(&value))
    }

    /// Waits until `weft nodes list --json` shows a node named `hostname` with an
    /// IPv4 address, and returns that node.
    pub fn wait_node(&self, hostname: &str, timeout: Duration) -> Result<NodeView> {
        wait_for(
            &format!("node {hostname:?} with an IPv4 address in `weft nodes list --json`"),
            timeout,
            || match self.nodes() {
                Ok(nodes) => nodes
                    .iter()
                    .find(|n| n.has_name(hostname) && !n.ipv4.is_empty())
                    .cloned()
                    .ok_or_else(|| {
                        let seen: Vec<String> = nodes.iter().map(|n| n.raw.to_string()).collect();
                        format!("nodes: [{}]", seen.join(", "))
                    }),
                Err(e) => Err(e.to_string()),
            },
        )
    }
}

/// One node of `weft nodes list --json`, read without assuming exact field names:
/// the JSON may be an array of nodes or an object holding one under `nodes`.
#[derive(Clone, Debug)]
pub struct NodeView {
    /// Every string field that looks like a name (`name`, `given_name`, `hostname`…).
    pub names: Vec<String>,
    /// Every IPv4 address found anywhere in the node's JSON (CIDR suffixes removed).
    pub ipv4: Vec<Ipv4Addr>,
    /// The node's JSON as printed.
    pub raw: Value,
}

impl NodeView {
    /// Reads a node list.
    pub fn list_from(value: &Value) -> Vec<NodeView> {
        let items = match value {
            Value::Array(items) => items.as_slice(),
            Value::Object(map) => match map.get("nodes") {
                Some(Value::Array(items)) => items.as_slice(),
                _ => std::slice::from_ref(value),
            },
            _ => &[],
        };
        items.iter().map(NodeView::from_value).collect()
    }

    fn from_value(value: &Value) -> NodeView {
        let mut names = Vec::new();
        if let Value::Object(map) = value {
            for (k, v) in map {
                let k = k.to_ascii_lowercase();
                if k.contains("name") && !k.contains("user") {
                    if let Value::String(s) = v {
                        names.push(s.clone());
                    }
                }
            }
        }
        let mut ipv4 = Vec::new();
        collect_ipv4(value, &mut ipv4);
        NodeView {
            names,
            ipv4,
            raw: value.clone(),
        }
    }

    /// Whether any name field equals `hostname` (or starts with `hostname.`).
    pub fn has_name(&self, hostname: &str) -> bool {
        self.names
            .iter()
            .any(|n| n == hostname || n.starts_with(&format!("{hostname}.")))
    }

    /// The node's address in 100.64.0.0/10, if any.
    pub fn cgnat_ipv4(&self) -> Option<Ipv4Addr> {
        self.ipv4.iter().copied().find(|ip| is_cgnat(*ip))
    }
}

/// Whether `ip` is in Tailscale's 100.64.0.0/10.
pub fn is_cgnat(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[0] == 100 && (64..128).contains(&o[1])
}

fn collect_ipv4(value: &Value, out: &mut Vec<Ipv4Addr>) {
    match value {
        Value::String(s) => {
            let addr = s.split('/').next().unwrap_or(s);
            if let Ok(ip) = addr.parse::<Ipv4Addr>() {
                if !out.contains(&ip) {
                    out.push(ip);
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_ipv4(v, out)),
        Value::Object(map) => map.values().for_each(|v| collect_ipv4(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_list_is_read_from_an_array_or_a_nodes_object() {
        let a = serde_json::json!([{"id": 1, "given_name": "alpha", "ip_addresses": ["100.64.0.1/32", "fd7a:115c:a1e0::1"]}]);
        let b =
            serde_json::json!({"nodes": [{"hostname": "beta", "addresses": {"v4": "100.64.0.2"}}]});
        let a = NodeView::list_from(&a);
        let b = NodeView::list_from(&b);
        assert!(a[0].has_name("alpha"));
        assert_eq!(a[0].cgnat_ipv4(), Some(Ipv4Addr::new(100, 64, 0, 1)));
        assert!(b[0].has_name("beta"));
        assert_eq!(b[0].cgnat_ipv4(), Some(Ipv4Addr::new(100, 64, 0, 2)));
    }

    #[test]
    fn cgnat_range_is_100_64_slash_10() {
        assert!(is_cgnat(Ipv4Addr::new(100, 64, 0, 1)));
        assert!(is_cgnat(Ipv4Addr::new(100, 127, 255, 254)));
        assert!(!is_cgnat(Ipv4Addr::new(100, 128, 0, 1)));
        assert!(!is_cgnat(Ipv4Addr::new(10, 64, 0, 1)));
    }
}
