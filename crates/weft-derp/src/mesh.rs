//! Regional mesh: this server connects to each peer server as a mesh client,
//! watches its connections and installs forwarding routes.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tracing::{info, warn};
use weft_proto::derp::ClientEvent;

use crate::client::{ClientOptions, DerpClient, TlsMode};
use crate::server::DerpServer;

/// Delay between mesh reconnect attempts.
pub const RETRY: Duration = Duration::from_secs(5);

/// A peer to mesh with: `host[:port]` or `host/dialhost` as `--mesh-with` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshTarget {
    /// URL used for the request (`https://host/derp` or `http://…`).
    pub url: String,
    /// Address to dial instead of the URL host, if any.
    pub dial: Option<String>,
}

impl MeshTarget {
    /// Parses a `--mesh-with` entry. `plain_http` selects `http://`. A full
    /// `http(s)://` URL is taken as is.
    pub fn parse(entry: &str, plain_http: bool) -> Self {
        if entry.starts_with("http://") || entry.starts_with("https://") {
            return Self {
                url: entry.to_owned(),
                dial: None,
            };
        }
        let (host, dial) = match entry.split_once('/') {
            Some((h, d)) => (h, Some(d.to_owned())),
            None => (entry, None),
        };
        let scheme = if plain_http { "http" } else { "https" };
        Self {
            url: format!("{scheme}://{host}/derp"),
            dial,
        }
    }
}

/// Keeps a mesh link from `server` to `target` up until the server shuts down.
///
/// A link that reaches the server itself (same key) stops quietly.
pub fn spawn(
    server: Arc<DerpServer>,
    target: MeshTarget,
    mesh_key: String,
    tls: TlsMode,
) -> JoinHandle<()> {
    let stop = server.shutdown_token();
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = run(server, target, mesh_key, tls) => {}
        }
    })
}

async fn run(server: Arc<DerpServer>, target: MeshTarget, mesh_key: String, tls: TlsMode) {
    loop {
        let opts = ClientOptions {
            tls: tls.clone(),
            dial_addr: target.dial.clone(),
            mesh_key: Some(mesh_key.clone()),
            watch_conns: true,
            app_name: "weft-derp-mesh".into(),
            ..Default::default()
        };
        match DerpClient::connect(&target.url, server.private_key().clone(), opts).await {
            Ok(mut c) => {
                if c.server_key() == server.public_key() {
                    info!(url = %target.url, "mesh target is this server, not meshing with self");
                    return;
                }
                let peer = server.add_mesh_link(c.sender());
                info!(url = %target.url, peer = peer.0, remote = %c.server_key().short(), "mesh link up");
                loop {
                    match c.recv_event().await {
                        Ok(ClientEvent::PeerPresent { key, .. }) => {
                            server.mesh_peer_present(peer, key)
                        }
                        Ok(ClientEvent::PeerGone { key, .. }) => server.mesh_peer_gone(peer, key),
                        Ok(_) => {}
                        Err(e) => {
                            warn!(url = %target.url, error = %e, "mesh link down");
                            break;
                        }
                    }
                }
                server.remove_mesh_link(peer);
            }
            Err(e) => warn!(url = %target.url, error = %e, "mesh connect failed"),
        }
        tokio::time::sleep(RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mesh_with_entries_parse() {
        assert_eq!(
            MeshTarget::parse("derp2.example/10.0.0.2:443", false),
            MeshTarget {
                url: "https://derp2.example/derp".into(),
                dial: Some("10.0.0.2:443".into())
            }
        );
        assert_eq!(
            MeshTarget::parse("127.0.0.1:3340", true).url,
            "http://127.0.0.1:3340/derp"
        );
        assert_eq!(
            MeshTarget::parse("http://a:1/derp", false).url,
            "http://a:1/derp"
        );
    }
}
