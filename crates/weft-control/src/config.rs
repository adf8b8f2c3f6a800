//! Server configuration (file form and resolved form).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use weft_tailcfg::{DerpMap, Resolver};

/// The optional TOML configuration file. Every key is optional; command-line flags win.
///
/// ```toml
/// server_url = "https://ctrl.example.com"
/// listen = "0.0.0.0:8080"
/// base_domain = "tailnet.example"
/// derp_map_path = "/etc/weft/derp.json"
/// ephemeral_inactivity_secs = 1800
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    /// URL clients use (`--url`).
    pub server_url: Option<String>,
    /// Plain HTTP listen address (`--listen`).
    pub listen: Option<SocketAddr>,
    /// Data directory (`--data-dir`).
    pub data_dir: Option<PathBuf>,
    /// Database URL (`--database`); default `sqlite://DATA/weft.db`.
    pub database_url: Option<String>,
    /// TLS listen address (default 0.0.0.0:443 when a certificate is given).
    pub tls_listen: Option<SocketAddr>,
    /// TLS certificate chain (PEM).
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// A DERP map in tailcfg JSON form. Without it the embedded relay (if any) is used.
    pub derp_map_path: Option<PathBuf>,
    /// MagicDNS suffix.
    pub base_domain: Option<String>,
    /// MagicDNS on/off (default on).
    pub magic_dns: Option<bool>,
    /// Global nameservers (`1.1.1.1`, `https://dns.example/dns-query`, ...).
    pub nameservers: Option<Vec<String>>,
    /// Extra search domains.
    pub search_domains: Option<Vec<String>>,
    /// Delete ephemeral nodes after this long offline (default 1800).
    pub ephemeral_inactivity_secs: Option<u64>,
    /// Default node-key lifetime for user-owned nodes, in seconds (default 180 days; 0 = never).
    pub node_key_expiry_secs: Option<u64>,
    /// New nodes need admin approval unless their key is pre-approved.
    pub require_approval: Option<bool>,
    /// How long an interactive login (AuthURL) stays valid (default 900).
    pub auth_session_ttl_secs: Option<u64>,
    /// Keep-alive interval on map streams (default 50).
    pub keepalive_secs: Option<u64>,
    /// Also serve the admin API over TCP here (needs `admin_api_key`).
    pub admin_listen: Option<SocketAddr>,
    /// Bearer key for the TCP admin API.
    pub admin_api_key: Option<String>,
    /// Send an EarlyNoise challenge after the Noise handshake (default off).
    pub early_noise: Option<bool>,
    /// Interactive login with OpenID Connect (`[oidc]` table, see [`weft_oidc::OidcConfig`]).
    pub oidc: Option<weft_oidc::OidcConfig>,
}

impl FileConfig {
    /// Reads and parses a TOML file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_path_buf(), e))?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse(path.to_path_buf(), e.to_string()))
    }
}

/// Configuration errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("reading {0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
    /// A file did not parse.
    #[error("parsing {0}: {1}")]
    Parse(PathBuf, String),
    /// A value is invalid.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Default node-key lifetime of user-owned nodes (180 days, as Tailscale).
pub const DEFAULT_NODE_KEY_EXPIRY: Duration = Duration::from_secs(180 * 24 * 3600);

/// The resolved settings the control server runs with.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// The URL clients use, without trailing slash (`http://127.0.0.1:8080`).
    pub server_url: String,
    /// The DERP map sent to every node.
    pub derp_map: DerpMap,
    /// MagicDNS suffix.
    pub base_domain: String,
    /// MagicDNS on/off.
    pub magic_dns: bool,
    /// Global nameservers.
    pub nameservers: Vec<Resolver>,
    /// Extra search domains.
    pub search_domains: Vec<String>,
    /// Ephemeral nodes are deleted after this long offline.
    pub ephemeral_inactivity: Duration,
    /// Default node-key lifetime for user-owned nodes (`None` = never expire).
    pub node_key_expiry: Option<Duration>,
    /// New nodes need approval unless pre-approved.
    pub require_approval: bool,
    /// Interactive login lifetime.
    pub auth_session_ttl: Duration,
    /// Map stream keep-alive interval (a random 0–9 s is added).
    pub keepalive: Duration,
    /// Send EarlyNoise.
    pub early_noise: bool,
    /// Bearer key for the TCP admin API (`None` = TCP admin API refused).
    pub admin_api_key: Option<String>,
    /// OpenID Connect login; `None` = logins are completed with `weft nodes register`.
    pub oidc: Option<weft_oidc::OidcConfig>,
}

impl ControlConfig {
    /// Defaults for a server reachable at `server_url`.
    pub fn new(server_url: &str) -> ControlConfig {
        ControlConfig {
            server_url: server_url.trim_end_matches('/').to_string(),
            derp_map: DerpMap::default(),
            base_domain: "weft.internal".to_string(),
            magic_dns: true,
            nameservers: Vec::new(),
            search_domains: Vec::new(),
            ephemeral_inactivity: Duration::from_secs(1800),
            node_key_expiry: Some(DEFAULT_NODE_KEY_EXPIRY),
            require_approval: false,
            auth_session_ttl: Duration::from_secs(900),
            keepalive: Duration::from_secs(50),
            early_noise: false,
            admin_api_key: None,
            oidc: None,
        }
    }

    /// Applies the file's optional settings (everything except listeners and paths).
    pub fn apply_file(&mut self, f: &FileConfig) -> Result<(), ConfigError> {
        if let Some(p) = &f.derp_map_path {
            self.derp_map = load_derp_map(p)?;
        }
        if let Some(v) = &f.base_domain {
            self.base_domain = v.trim_end_matches('.').to_string();
        }
        if let Some(v) = f.magic_dns {
            self.magic_dns = v;
        }
        if let Some(v) = &f.nameservers {
            self.nameservers = v
                .iter()
                .map(|a| Resolver {
                    addr: a.clone(),
                    ..Resolver::default()
                })
                .collect();
        }
        if let Some(v) = &f.search_domains {
            self.search_domains = v.clone();
        }
        if let Some(v) = f.ephemeral_inactivity_secs {
            self.ephemeral_inactivity = Duration::from_secs(v);
        }
        if let Some(v) = f.node_key_expiry_secs {
            self.node_key_expiry = (v > 0).then(|| Duration::from_secs(v));
        }
        if let Some(v) = f.require_approval {
            self.require_approval = v;
        }
        if let Some(v) = f.auth_session_ttl_secs {
            self.auth_session_ttl = Duration::from_secs(v.max(1));
        }
        if let Some(v) = f.keepalive_secs {
            if !(1..=60).contains(&v) {
                return Err(ConfigError::Invalid(format!(
                    "keepalive_secs must be 1..=60, got {v}"
                )));
            }
            self.keepalive = Duration::from_secs(v);
        }
        if let Some(v) = f.early_noise {
            self.early_noise = v;
        }
        if let Some(v) = &f.admin_api_key {
            self.admin_api_key = Some(v.clone());
        }
        if let Some(v) = &f.oidc {
            self.oidc = Some(v.clone());
        }
        Ok(())
    }
}

/// Reads a DERP map in tailcfg JSON form.
pub fn load_derp_map(path: &Path) -> Result<DerpMap, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_path_buf(), e))?;
    let map: DerpMap = serde_json::from_str(&text)
        .map_err(|e| ConfigError::Parse(path.to_path_buf(), e.to_string()))?;
    for (id, r) in &map.regions {
        if *id <= 0 || r.region_id != *id {
            return Err(ConfigError::Invalid(format!(
                "DERP region key {id} does not match RegionID {}",
                r.region_id
            )));
        }
    }
    Ok(map)
}
