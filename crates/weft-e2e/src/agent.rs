//! A weft node agent in a namespace: `weft daemon` with a TUN device, and the CLI verbs
//! that talk to it over its LocalAPI socket.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::{spawn_weft_logging, wait_for, weft_binary, Error, Harness, Netns, Proc, Result};

/// How long a daemon may take to open its LocalAPI socket.
const START: Duration = Duration::from_secs(60);

/// A running `weft daemon --tun weft0` in a namespace.
pub struct WeftNode {
    /// The name it was started under (its log is `weftd-TAG`).
    pub tag: String,
    /// Its namespace.
    pub ns: Netns,
    /// Its LocalAPI socket.
    pub socket: String,
    /// The daemon process.
    pub daemon: Proc,
}

impl WeftNode {
    /// Starts the daemon in `ns` (state under the harness directory, TUN `weft0`; `log` adds
    /// tracing directives, `""` none) and waits until its LocalAPI answers.
    pub fn start(h: &Harness, ns: Netns, tag: &str, log: &str) -> Result<WeftNode> {
        let dir = h.subdir(&format!("{tag}-state"))?;
        let socket = dir.join("weftd.sock").display().to_string();
        let args: Vec<String> = vec![
            "--socket".into(),
            socket.clone(),
            "daemon".into(),
            "--state-dir".into(),
            dir.join("state").display().to_string(),
            "--tun".into(),
            "weft0".into(),
        ];
        let daemon = spawn_weft_logging(h, &ns, &format!("weftd-{tag}"), &args, log)?;
        let node = WeftNode {
            tag: tag.to_owned(),
            ns,
            socket,
            daemon,
        };
        wait_for("the daemon's LocalAPI", START, || {
            node.weft(&["status", "--json"]).map_err(|e| e.to_string())
        })?;
        Ok(node)
    }

    /// Runs `weft --socket SOCKET ARGS...` in the node's namespace; its standard output.
    pub fn weft(&self, args: &[&str]) -> Result<String> {
        let bin = weft_binary().display().to_string();
        let mut all = vec![bin.as_str(), "--socket", &self.socket];
        all.extend_from_slice(args);
        self.ns.run(&all)
    }

    /// `weft status --json`, parsed.
    pub fn status(&self) -> Result<serde_json::Value> {
        let j = self.weft(&["status", "--json"])?;
        serde_json::from_str(&j).map_err(|e| Error::Check(format!("status --json: {e}: {j}")))
    }

    /// The node's tailnet IPv4 address (`weft ip -4`).
    pub fn ipv4(&self) -> Result<Ipv4Addr> {
        let out = self.weft(&["ip", "-4"])?;
        out.trim()
            .parse()
            .map_err(|e| Error::Check(format!("`weft ip -4` printed {out:?}: {e}")))
    }
}
