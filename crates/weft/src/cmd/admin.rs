//! Admin commands (`weft users|authkeys|nodes ...`): JSON requests to the running server's
//! admin API over `DATA/admin.sock`, or over TCP with `--admin-url` and `--api-key`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::body::Body;
use clap::{Args, Subcommand};
use http_body_util::BodyExt;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use weft_control::admin::{AuthKeyInfo, CreatedAuthKey, NodeInfo, UserInfo};

use super::server::DEFAULT_DATA_DIR;

/// How to reach the server.
#[derive(Debug, Clone, Args)]
pub(crate) struct Conn {
    /// The server's data directory (its admin socket is DATA/admin.sock).
    #[arg(long, env = "WEFT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Reach the admin API over TCP instead (http://HOST:PORT).
    #[arg(long, env = "WEFT_ADMIN_URL")]
    admin_url: Option<String>,
    /// API key for --admin-url.
    #[arg(long, env = "WEFT_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

impl Conn {
    pub(crate) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let body_bytes = body
            .map(|b| serde_json::to_vec(&b))
            .transpose()?
            .unwrap_or_default();
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "weft-admin");
        if !body_bytes.is_empty() {
            req = req.header("content-type", "application/json");
        }
        let resp = match &self.admin_url {
            Some(url) => {
                let addr = url
                    .strip_prefix("http://")
                    .context("--admin-url must be http://HOST:PORT")?
                    .trim_end_matches('/');
                let key = self
                    .api_key
                    .as_deref()
                    .context("--admin-url needs --api-key (or WEFT_API_KEY)")?;
                req = req.header("authorization", format!("Bearer {key}"));
                let tcp = tokio::net::TcpStream::connect(addr)
                    .await
                    .with_context(|| format!("connecting to the admin API at {addr}"))?;
                send(tcp, req.body(Body::from(body_bytes))?).await?
            }
            None => {
                let dir = self
                    .data_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
                let sock = dir.join("admin.sock");
                let unix = tokio::net::UnixStream::connect(&sock)
                    .await
                    .with_context(|| {
                        format!(
                            "connecting to {} (is `weft server --data-dir {}` running?)",
                            sock.display(),
                            dir.display()
                        )
                    })?;
                send(unix, req.body(Body::from(body_bytes))?).await?
            }
        };
        let (status, bytes) = resp;
        let v: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .with_context(|| format!("server answered {status} with non-JSON"))?
        };
        if !status.is_success() {
            let msg = v
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| status.to_string());
            bail!("{msg}");
        }
        Ok(v)
    }
}

async fn send<IO>(
    io: IO,
    req: Request<Body>,
) -> anyhow::Result<(hyper::StatusCode, axum::body::Bytes)>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(conn);
    let resp = tokio::time::timeout(Duration::from_secs(60), sender.send_request(req))
        .await
        .context("admin request timed out")??;
    let status = resp.status();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

fn table(rows: Vec<Vec<String>>) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{s:<w$}", w = widths[i]))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

/// Parses `90s`, `30m`, `24h`, `7d`, `1h30m` or a plain number of seconds.
pub(crate) fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let s = s.trim();
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    let mut total = 0u64;
    let mut num = String::new();
    for ch in s.chars() {
        if ch.is_ascii_digit() {
            num.push(ch);
            continue;
        }
        let mult = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => bail!("invalid duration {s:?}: unknown unit {ch:?} (use s, m, h, d, w)"),
        };
        let n: u64 = num
            .parse()
            .map_err(|_| anyhow::anyhow!("invalid duration {s:?}"))?;
        total = total.saturating_add(n.saturating_mul(mult));
        num.clear();
    }
    if !num.is_empty() || total == 0 {
        bail!("invalid duration {s:?} (examples: 90s, 30m, 24h, 7d)");
    }
    Ok(Duration::from_secs(total))
}

fn split_tags(tags: &[String]) -> Vec<String> {
    tags.iter()
        .flat_map(|t| t.split(','))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect()
}

fn node_id(s: &str) -> anyhow::Result<i64> {
    s.parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .with_context(|| format!("invalid node id {s:?} (see `weft nodes list`)"))
}

// ----- users -----

#[derive(Debug, Args)]
pub(crate) struct UsersCmd {
    #[command(subcommand)]
    cmd: UsersSub,
}

#[derive(Debug, Subcommand)]
enum UsersSub {
    /// Create a user.
    Create {
        /// Unique name.
        name: String,
        /// Display name.
        #[arg(long, default_value = "")]
        display_name: String,
        /// E-mail address.
        #[arg(long, default_value = "")]
        email: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// List users.
    #[command(alias = "ls")]
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a user (who must own no nodes).
    #[command(alias = "destroy")]
    Delete {
        /// Name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
}

pub(crate) async fn users(c: UsersCmd) -> anyhow::Result<()> {
    match c.cmd {
        UsersSub::Create {
            name,
            display_name,
            email,
            conn,
        } => {
            let v = conn
                .call(
                    Method::POST,
                    "/api/v1/users",
                    Some(json!({"name": name, "display_name": display_name, "email": email})),
                )
                .await?;
            let u: UserInfo = serde_json::from_value(v)?;
            println!("user {} created (id {})", u.name, u.id);
        }
        UsersSub::List { json, conn } => {
            let v = conn.call(Method::GET, "/api/v1/users", None).await?;
            if json {
                return print_json(&v);
            }
            let users: Vec<UserInfo> = serde_json::from_value(v)?;
            let mut rows = vec![vec![
                "ID".into(),
                "NAME".into(),
                "DISPLAY NAME".into(),
                "EMAIL".into(),
                "LOGIN".into(),
                "GROUPS".into(),
                "CREATED".into(),
            ]];
            rows.extend(users.iter().map(|u| {
                vec![
                    u.id.to_string(),
                    u.name.clone(),
                    u.display_name.clone(),
                    u.email.clone(),
                    if u.provider.is_empty() {
                        "local".into()
                    } else {
                        u.provider.clone()
                    },
                    u.groups.join(","),
                    u.created.to_string(),
                ]
            }));
            table(rows);
        }
        UsersSub::Delete { name, conn } => {
            conn.call(
                Method::DELETE,
                &format!("/api/v1/users/{}", encode_path(&name)),
                None,
            )
            .await?;
            println!("user {name} deleted");
        }
    }
    Ok(())
}

fn encode_path(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.@".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

// ----- auth keys -----

#[derive(Debug, Args)]
pub(crate) struct AuthkeysCmd {
    #[command(subcommand)]
    cmd: AuthkeysSub,
}

#[derive(Debug, Subcommand)]
enum AuthkeysSub {
    /// Create a pre-auth key; prints only the key.
    Create {
        /// Owner.
        #[arg(long, short)]
        user: String,
        /// Usable more than once.
        #[arg(long)]
        reusable: bool,
        /// Nodes registered with it are ephemeral.
        #[arg(long)]
        ephemeral: bool,
        /// Nodes registered with it skip device approval.
        #[arg(long)]
        pre_approved: bool,
        /// Tags for the nodes (tag:a,tag:b).
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        /// Lifetime (90s, 30m, 24h, 7d); default: never expires.
        #[arg(long, short)]
        expiration: Option<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// List pre-auth keys.
    #[command(alias = "ls")]
    List {
        /// Only this user's keys.
        #[arg(long, short)]
        user: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Expire a pre-auth key now.
    Expire {
        /// Key id (see `weft authkeys list`).
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
}

pub(crate) async fn authkeys(c: AuthkeysCmd) -> anyhow::Result<()> {
    match c.cmd {
        AuthkeysSub::Create {
            user,
            reusable,
            ephemeral,
            pre_approved,
            tags,
            expiration,
            conn,
        } => {
            let expiration_secs = expiration
                .as_deref()
                .map(parse_duration)
                .transpose()?
                .map(|d| d.as_secs());
            let body = json!({"user": user, "reusable": reusable, "ephemeral": ephemeral, "pre_approved": pre_approved, "tags": split_tags(&tags), "expiration_secs": expiration_secs});
            let v = conn
                .call(Method::POST, "/api/v1/authkeys", Some(body))
                .await?;
            let k: CreatedAuthKey = serde_json::from_value(v)?;
            println!("{}", k.key);
        }
        AuthkeysSub::List { user, json, conn } => {
            let path = match &user {
                Some(u) => format!("/api/v1/authkeys?user={}", encode_path(u)),
                None => "/api/v1/authkeys".into(),
            };
            let v = conn.call(Method::GET, &path, None).await?;
            if json {
                return print_json(&v);
            }
            let keys: Vec<AuthKeyInfo> = serde_json::from_value(v)?;
            let mut rows = vec![vec![
                "ID".into(),
                "USER".into(),
                "PREFIX".into(),
                "REUSABLE".into(),
                "EPHEMERAL".into(),
                "USED".into(),
                "TAGS".into(),
                "EXPIRATION".into(),
            ]];
            rows.extend(keys.iter().map(|k| {
                vec![
                    k.id.to_string(),
                    k.user.clone(),
                    k.prefix.clone(),
                    k.reusable.to_string(),
                    k.ephemeral.to_string(),
                    k.used.to_string(),
                    k.tags.join(","),
                    k.expiration.map_or("never".into(), |t| t.to_string()),
                ]
            }));
            table(rows);
        }
        AuthkeysSub::Expire { id, conn } => {
            let id = node_id(&id).context("invalid key id")?;
            conn.call(Method::POST, &format!("/api/v1/authkeys/{id}/expire"), None)
                .await?;
            println!("key {id} expired");
        }
    }
    Ok(())
}

// ----- nodes -----

#[derive(Debug, Args)]
pub(crate) struct NodesCmd {
    #[command(subcommand)]
    cmd: NodesSub,
}

#[derive(Debug, Subcommand)]
enum NodesSub {
    /// List nodes.
    #[command(alias = "ls")]
    List {
        /// JSON output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Expire a node's key now (the node must log in again).
    #[command(alias = "logout")]
    Expire {
        /// Node id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Delete a node.
    #[command(alias = "rm")]
    Delete {
        /// Node id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Rename a node (its MagicDNS label).
    Rename {
        /// Node id.
        id: String,
        /// New name.
        name: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Set a node's tags (replaces them; empty clears).
    Tag {
        /// Node id.
        id: String,
        /// Tags (tag:a,tag:b).
        #[arg(long, short, value_delimiter = ',')]
        tags: Vec<String>,
        #[command(flatten)]
        conn: Conn,
    },
    /// Disable (or, with --enable, re-enable) key expiry for a node.
    KeyExpiry {
        /// Node id.
        id: String,
        /// Re-enable key expiry instead of disabling it.
        #[arg(long)]
        enable: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Approve a node (device approval).
    Approve {
        /// Node id.
        id: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Show advertised, approved and served subnet/exit routes.
    #[command(alias = "list-routes")]
    Routes {
        /// Only this node.
        #[arg(long, short)]
        identifier: Option<String>,
        /// JSON output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        conn: Conn,
    },
    /// Set a node's approved routes (replaces them; `--routes ""` clears). Approving
    /// 0.0.0.0/0 or ::/0 makes the node an exit node (both are approved).
    ApproveRoutes {
        /// Node id.
        #[arg(long, short)]
        identifier: String,
        /// Routes (CIDR[,CIDR...]).
        #[arg(long, short, allow_hyphen_values = true)]
        routes: String,
        #[command(flatten)]
        conn: Conn,
    },
    /// Complete an interactive login (the id at the end of the login URL).
    Register {
        /// User who owns the node.
        #[arg(long, short)]
        user: String,
        /// Registration id (or the whole login URL).
        #[arg(long, short)]
        key: String,
        #[command(flatten)]
        conn: Conn,
    },
}

fn print_node(v: Value) -> anyhow::Result<()> {
    let n: NodeInfo = serde_json::from_value(v)?;
    println!(
        "node {} {} ({}, {}) user {} tags [{}]",
        n.id,
        n.name,
        n.ipv4,
        n.ipv6,
        n.user,
        n.tags.join(",")
    );
    Ok(())
}

pub(crate) async fn nodes(c: NodesCmd) -> anyhow::Result<()> {
    match c.cmd {
        NodesSub::List { json, conn } => {
            let v = conn.call(Method::GET, "/api/v1/nodes", None).await?;
            if json {
                return print_json(&v);
            }
            let nodes: Vec<NodeInfo> = serde_json::from_value(v)?;
            let mut rows = vec![vec![
                "ID".into(),
                "NAME".into(),
                "HOSTNAME".into(),
                "USER".into(),
                "IPV4".into(),
                "IPV6".into(),
                "TAGS".into(),
                "ONLINE".into(),
                "APPROVED".into(),
                "EXPIRES".into(),
                "EXPIRED".into(),
                "LAST SEEN".into(),
            ]];
            rows.extend(nodes.iter().map(|n| {
                vec![
                    n.id.to_string(),
                    n.name.clone(),
                    n.hostname.clone(),
                    n.user.clone(),
                    n.ipv4.clone(),
                    n.ipv6.clone(),
                    n.tags.join(","),
                    n.online.to_string(),
                    n.approved.to_string(),
                    if n.key_expiry_disabled {
                        "disabled".into()
                    } else {
                        n.expiry.map_or("never".into(), |t| t.to_string())
                    },
                    n.expired.to_string(),
                    n.last_seen.map_or("-".into(), |t| t.to_string()),
                ]
            }));
            table(rows);
        }
        NodesSub::Expire { id, conn } => print_node(
            conn.call(
                Method::POST,
                &format!("/api/v1/nodes/{}/expire", node_id(&id)?),
                None,
            )
            .await?,
        )?,
        NodesSub::Delete { id, conn } => {
            let id = node_id(&id)?;
            conn.call(Method::DELETE, &format!("/api/v1/nodes/{id}"), None)
                .await?;
            println!("node {id} deleted");
        }
        NodesSub::Rename { id, name, conn } => print_node(
            conn.call(
                Method::POST,
                &format!("/api/v1/nodes/{}/rename", node_id(&id)?),
                Some(json!({"name": name})),
            )
            .await?,
        )?,
        NodesSub::Tag { id, tags, conn } => print_node(
            conn.call(
                Method::POST,
                &format!("/api/v1/nodes/{}/tags", node_id(&id)?),
                Some(json!({"tags": split_tags(&tags)})),
            )
            .await?,
        )?,
        NodesSub::KeyExpiry { id, enable, conn } => print_node(
            conn.call(
                Method::POST,
                &format!("/api/v1/nodes/{}/key-expiry", node_id(&id)?),
                Some(json!({"disabled": !enable})),
            )
            .await?,
        )?,
        NodesSub::Approve { id, conn } => print_node(
            conn.call(
                Method::POST,
                &format!("/api/v1/nodes/{}/approve", node_id(&id)?),
                None,
            )
            .await?,
        )?,
        NodesSub::Routes {
            identifier,
            json,
            conn,
        } => {
            let only = identifier.as_deref().map(node_id).transpose()?;
            let v = conn.call(Method::GET, "/api/v1/nodes", None).await?;
            let nodes: Vec<NodeInfo> = serde_json::from_value(v)?;
            let nodes: Vec<NodeInfo> = nodes
                .into_iter()
                .filter(|n| only.is_none_or(|id| n.id == id))
                .collect();
            if let (Some(id), true) = (only, nodes.is_empty()) {
                bail!("node {id} not found (see `weft nodes list`)");
            }
            if json {
                let out: Vec<Value> = nodes
                    .iter()
                    .map(|n| {
                        json!({
                            "id": n.id,
                            "name": n.name,
                            "hostname": n.hostname,
                            "advertised_routes": n.advertised_routes,
                            "approved_routes": n.approved_routes,
                            "primary_routes": n.primary_routes,
                            "serving_routes": n.serving_routes,
                        })
                    })
                    .collect();
                return print_json(&Value::Array(out));
            }
            let mut rows = vec![vec![
                "ID".into(),
                "HOSTNAME".into(),
                "ADVERTISED".into(),
                "APPROVED".into(),
                "SERVING".into(),
            ]];
            let list = |v: &[String]| {
                if v.is_empty() {
                    "-".to_string()
                } else {
                    v.join(",")
                }
            };
            rows.extend(nodes.iter().map(|n| {
                vec![
                    n.id.to_string(),
                    n.hostname.clone(),
                    list(&n.advertised_routes),
                    list(&n.approved_routes),
                    list(&n.serving_routes),
                ]
            }));
            table(rows);
        }
        NodesSub::ApproveRoutes {
            identifier,
            routes,
            conn,
        } => {
            let routes: Vec<String> = routes
                .split(',')
                .map(|r| r.trim().to_string())
                .filter(|r| !r.is_empty())
                .collect();
            let v = conn
                .call(
                    Method::POST,
                    &format!("/api/v1/nodes/{}/routes", node_id(&identifier)?),
                    Some(json!({ "routes": routes })),
                )
                .await?;
            let n: NodeInfo = serde_json::from_value(v)?;
            println!(
                "node {} {}: approved routes [{}]",
                n.id,
                n.name,
                n.approved_routes.join(",")
            );
        }
        NodesSub::Register { user, key, conn } => print_node(
            conn.call(
                Method::POST,
                "/api/v1/nodes/register",
                Some(json!({"user": user, "key": key})),
            )
            .await?,
        )?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_headscale() {
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5_400));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(604_800));
        for bad in ["", "h", "10x", "5h3", "0s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tags_split_on_commas() {
        assert_eq!(
            split_tags(&["tag:a,tag:b".into(), " tag:c ".into()]),
            vec!["tag:a", "tag:b", "tag:c"]
        );
    }
}
