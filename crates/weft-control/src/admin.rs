//! The admin API: JSON over HTTP/1.1, on the unix socket `DATA/admin.sock` (mode 0600, no
//! key needed) and optionally over TCP with `Authorization: Bearer <admin_api_key>`.
//!
//! | method | path | body → answer |
//! |---|---|---|
//! | GET | `/api/v1/users` | → `[UserInfo]` |
//! | POST | `/api/v1/users` | [`CreateUser`] → `UserInfo` |
//! | DELETE | `/api/v1/users/{name}` | → `{}` |
//! | GET | `/api/v1/authkeys?user=NAME` | → `[AuthKeyInfo]` |
//! | POST | `/api/v1/authkeys` | [`CreateAuthKey`] → [`CreatedAuthKey`] |
//! | POST | `/api/v1/authkeys/{id}/expire` | → `AuthKeyInfo` |
//! | GET | `/api/v1/nodes` | → `[NodeInfo]` |
//! | DELETE | `/api/v1/nodes/{id}` | → `{}` |
//! | POST | `/api/v1/nodes/{id}/expire` | → `NodeInfo` |
//! | POST | `/api/v1/nodes/{id}/rename` | [`RenameNode`] → `NodeInfo` |
//! | POST | `/api/v1/nodes/{id}/tags` | [`SetTags`] → `NodeInfo` |
//! | POST | `/api/v1/nodes/{id}/approve` | → `NodeInfo` |
//! | POST | `/api/v1/nodes/{id}/key-expiry` | [`SetKeyExpiry`] → `NodeInfo` |
//! | POST | `/api/v1/nodes/{id}/routes` | [`SetRoutes`] → `NodeInfo` (replaces the approved routes) |
//! | POST | `/api/v1/nodes/register` | [`RegisterNode`] → `NodeInfo` |
//! | GET | `/api/v1/registrations` | → pending interactive logins |
//! | GET | `/api/v1/policy` | → [`PolicyInfo`] with text (404 when none: allow all) |
//! | POST | `/api/v1/policy` | [`PolicyText`] → [`PolicyInfo`] (refused: 400, previous stays) |
//! | POST | `/api/v1/policy/check` | [`PolicyText`] → [`PolicyInfo`] (nothing applied) |
//! | GET | `/api/v1/policy/history` | → `[PolicyInfo]` newest first, without text |
//!
//! Errors are `{"error": "..."}` with a 4xx/5xx status.

use std::path::Path;

use axum::extract::{Path as UrlPath, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use weft_store::{NewPreauthKey, NewUser, NodeId, PreauthKeyId};
use weft_tailcfg::Time;

use crate::convert::{from_time, to_time};
use crate::policy::policy_info;
pub use crate::policy::PolicyInfo;
use crate::{ApiError, Control};

/// A user as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserInfo {
    /// ID.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Display name.
    pub display_name: String,
    /// E-mail.
    pub email: String,
    /// Identity provider (`""` local, `oidc`).
    pub provider: String,
    /// Groups from the identity provider (refreshed at each login).
    #[serde(default)]
    pub groups: Vec<String>,
    /// Creation time.
    pub created: Time,
}

/// `POST /api/v1/users`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CreateUser {
    /// Unique name.
    pub name: String,
    /// Display name.
    pub display_name: String,
    /// E-mail.
    pub email: String,
}

/// A pre-auth key as the admin API shows it (never the secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthKeyInfo {
    /// ID.
    pub id: i64,
    /// Owner name.
    pub user: String,
    /// Public prefix.
    pub prefix: String,
    /// Reusable.
    pub reusable: bool,
    /// Ephemeral nodes.
    pub ephemeral: bool,
    /// Skips device approval.
    pub pre_approved: bool,
    /// Tags.
    pub tags: Vec<String>,
    /// Used at least once.
    pub used: bool,
    /// Expiry.
    pub expiration: Option<Time>,
    /// Created.
    pub created: Time,
}

/// `POST /api/v1/authkeys`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct CreateAuthKey {
    /// Owner name.
    pub user: String,
    /// Reusable.
    pub reusable: bool,
    /// Ephemeral nodes.
    pub ephemeral: bool,
    /// Skips device approval.
    pub pre_approved: bool,
    /// Tags (`tag:name`).
    pub tags: Vec<String>,
    /// Lifetime in seconds (`None` = never expires).
    pub expiration_secs: Option<u64>,
}

/// Answer to [`CreateAuthKey`]: the full key, shown once.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CreatedAuthKey {
    /// The key to pass to `tailscale up --auth-key`.
    pub key: String,
    /// Its stored form.
    pub info: AuthKeyInfo,
}

/// A node as the admin API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    /// ID.
    pub id: i64,
    /// MagicDNS label.
    pub name: String,
    /// Reported hostname.
    pub hostname: String,
    /// Owner name.
    pub user: String,
    /// Tailnet IPv4.
    pub ipv4: String,
    /// Tailnet IPv6.
    pub ipv6: String,
    /// Machine key.
    pub machine_key: String,
    /// Node key.
    pub node_key: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Has a live map stream.
    pub online: bool,
    /// Last seen.
    pub last_seen: Option<Time>,
    /// Key expiry.
    pub expiry: Option<Time>,
    /// Key expired now.
    pub expired: bool,
    /// Ephemeral.
    pub ephemeral: bool,
    /// Approved (MachineAuthorized).
    pub approved: bool,
    /// An admin disabled key expiry for this node.
    #[serde(default)]
    pub key_expiry_disabled: bool,
    /// Endpoints.
    pub endpoints: Vec<String>,
    /// Created.
    pub created: Time,
    /// Routes the node advertises (`Hostinfo.RoutableIPs`).
    #[serde(default)]
    pub advertised_routes: Vec<String>,
    /// Routes approved for the node (by an admin or the policy's autoApprovers), whether
    /// or not it advertises them.
    #[serde(default)]
    pub approved_routes: Vec<String>,
    /// Subnet routes the node is primary for (what peers get as its `PrimaryRoutes`).
    #[serde(default)]
    pub primary_routes: Vec<String>,
    /// Routes peers send through the node now: the subnet routes it is primary for plus
    /// its approved exit routes (advertised and approved, beyond its own addresses).
    #[serde(default)]
    pub serving_routes: Vec<String>,
}

/// `POST /api/v1/nodes/{id}/rename`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RenameNode {
    /// New MagicDNS label.
    pub name: String,
}

/// `POST /api/v1/nodes/{id}/key-expiry`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SetKeyExpiry {
    /// True to disable key expiry for the node, false to enable it again.
    pub disabled: bool,
}

/// `POST /api/v1/nodes/{id}/tags`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SetTags {
    /// New tags (`tag:name`); empty clears.
    pub tags: Vec<String>,
}

/// `POST /api/v1/nodes/{id}/routes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SetRoutes {
    /// Approved routes (CIDR prefixes); replaces the set, empty clears. Approving
    /// `0.0.0.0/0` or `::/0` approves both (the exit-node pair).
    pub routes: Vec<String>,
}

/// `POST /api/v1/nodes/register`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RegisterNode {
    /// User name.
    pub user: String,
    /// The auth id from the AuthURL (`.../register/<id>`), or the whole URL.
    pub key: String,
}

/// `POST /api/v1/policy` and `/api/v1/policy/check`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PolicyText {
    /// The HuJSON policy text.
    pub text: String,
}

/// Who is calling the admin API (recorded as policy author and audit actor).
#[derive(Debug, Clone)]
pub struct Actor(pub String);

/// Builds the admin router.
pub fn router(c: Control) -> Router {
    Router::new()
        .route("/api/v1/users", get(list_users).post(create_user))
        .route("/api/v1/users/{name}", delete(delete_user))
        .route("/api/v1/authkeys", get(list_keys).post(create_key))
        .route("/api/v1/authkeys/{id}/expire", post(expire_key))
        .route("/api/v1/nodes", get(list_nodes))
        .route("/api/v1/nodes/register", post(register_node))
        .route("/api/v1/nodes/{id}", delete(delete_node))
        .route("/api/v1/nodes/{id}/expire", post(expire_node))
        .route("/api/v1/nodes/{id}/rename", post(rename_node))
        .route("/api/v1/nodes/{id}/tags", post(tag_node))
        .route("/api/v1/nodes/{id}/approve", post(approve_node))
        .route("/api/v1/nodes/{id}/key-expiry", post(set_key_expiry))
        .route("/api/v1/nodes/{id}/routes", post(set_routes))
        .route("/api/v1/registrations", get(list_registrations))
        .route("/api/v1/policy", get(get_policy).post(set_policy))
        .route("/api/v1/policy/check", post(check_policy))
        .route("/api/v1/policy/history", get(policy_history))
        .route("/api/v1/tka", get(crate::tka::admin_status))
        .route(
            "/api/v1/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .fallback(|| async { ApiError::NotFound("admin endpoint".into()) })
        .with_state(c)
}

/// The admin router behind a bearer-key check (for TCP).
pub fn router_with_key(c: Control, key: String) -> Router {
    router(c).layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let key = key.clone();
            async move {
                let ok = req
                    .headers()
                    .get(axum::http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .is_some_and(|v| constant_time_eq(v.as_bytes(), key.as_bytes()));
                if ok {
                    let mut req = req;
                    req.extensions_mut().insert(Actor("api-key".into()));
                    next.run(req).await
                } else {
                    ApiError::Unauthorized("missing or wrong admin API key".into()).into_response()
                }
            }
        },
    ))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Serves the admin API on a unix socket at `path` (replacing a stale socket file),
/// readable and writable by the owner only.
pub async fn serve_unix(
    path: &Path,
    router: Router,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    if path.exists() {
        std::fs::remove_file(path)?;
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::warn!(error = %e, "admin socket server stopped");
        }
    }))
}

fn user_out(u: &weft_store::User) -> UserInfo {
    UserInfo {
        id: u.id.0,
        name: u.name.clone(),
        display_name: u.display_name.clone(),
        email: u.email.clone(),
        provider: u.provider.clone(),
        groups: u.groups.clone(),
        created: to_time(u.created_at),
    }
}

fn key_out(k: &weft_store::PreauthKey, user: &str) -> AuthKeyInfo {
    AuthKeyInfo {
        id: k.id.0,
        user: user.to_string(),
        prefix: k.prefix.clone(),
        reusable: k.reusable,
        ephemeral: k.ephemeral,
        pre_approved: k.pre_approved,
        tags: k.tags.clone(),
        used: k.used,
        expiration: k.expiration.map(to_time),
        created: to_time(k.created_at),
    }
}

async fn node_out(c: &Control, n: &weft_store::Node) -> NodeInfo {
    let user = c
        .inner
        .store
        .get_user(n.user_id)
        .await
        .map(|u| u.name)
        .unwrap_or_else(|_| n.user_id.to_string());
    let snap = c.inner.hub.snapshot();
    let state = snap.nodes.get(&n.id.0);
    let online = state.is_some_and(|s| s.online);
    let strs = |v: &[ipnet::IpNet]| v.iter().map(ToString::to_string).collect::<Vec<_>>();
    let advertised = crate::convert::hostinfo_of(&n.hostinfo).routable_ips();
    let (primary, serving) = match state {
        Some(s) => {
            let peer = weft_mapper::peer_node(&snap, s, c.now());
            let own = peer.addresses.len();
            let serving: Vec<ipnet::IpNet> = peer
                .allowed_ips
                .unwrap_or_default()
                .into_iter()
                .skip(own)
                .collect();
            (strs(&peer.primary_routes), strs(&serving))
        }
        None => (Vec::new(), Vec::new()),
    };
    NodeInfo {
        id: n.id.0,
        name: n.given_name.clone(),
        hostname: n.hostname.clone(),
        user,
        ipv4: n.ipv4.to_string(),
        ipv6: n.ipv6.to_string(),
        machine_key: n.machine_key.to_text(),
        node_key: n.node_key.to_text(),
        tags: n.tags.clone(),
        online,
        last_seen: n.last_seen.map(to_time),
        expiry: n.expiry.map(to_time),
        expired: n.is_expired(from_time(c.now())),
        ephemeral: n.ephemeral,
        approved: n.approved,
        key_expiry_disabled: n.key_expiry_disabled,
        endpoints: n.endpoints.iter().map(|e| e.to_string()).collect(),
        created: to_time(n.created_at),
        advertised_routes: strs(&advertised),
        approved_routes: strs(&n.approved_routes),
        primary_routes: primary,
        serving_routes: serving,
    }
}

fn valid_tag(t: &str) -> bool {
    let Some(name) = t.strip_prefix("tag:") else {
        return false;
    };
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn check_tags(tags: &[String]) -> Result<(), ApiError> {
    match tags.iter().find(|t| !valid_tag(t)) {
        Some(bad) => Err(ApiError::BadRequest(format!("invalid tag {bad:?} (want tag:name, letters, digits and dashes, starting with a letter)"))),
        None => Ok(()),
    }
}

async fn list_users(State(c): State<Control>) -> Result<Json<Vec<UserInfo>>, ApiError> {
    Ok(Json(
        c.inner
            .store
            .list_users()
            .await?
            .iter()
            .map(user_out)
            .collect(),
    ))
}

async fn create_user(
    State(c): State<Control>,
    Json(req): Json<CreateUser>,
) -> Result<Json<UserInfo>, ApiError> {
    let name = req.name.trim();
    if name.is_empty()
        || name.len() > 255
        || name.chars().any(|ch| ch.is_whitespace() || ch.is_control())
    {
        return Err(ApiError::BadRequest(
            "user name must be non-empty, without spaces".into(),
        ));
    }
    let u = c
        .inner
        .store
        .create_user(NewUser {
            name: name.to_string(),
            display_name: req.display_name,
            email: req.email,
            ..NewUser::default()
        })
        .await?;
    c.refresh_user(&u);
    tracing::info!(user = %u.name, "user created");
    Ok(Json(user_out(&u)))
}

async fn delete_user(
    State(c): State<Control>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let u = c
        .inner
        .store
        .get_user_by_name(&name)
        .await
        .map_err(|_| ApiError::NotFound(format!("user {name:?}")))?;
    c.inner.store.delete_user(u.id).await?;
    tracing::info!(user = %u.name, "user deleted");
    Ok(Json(serde_json::json!({})))
}

#[derive(Deserialize)]
struct KeyQuery {
    user: Option<String>,
}

async fn list_keys(
    State(c): State<Control>,
    Query(q): Query<KeyQuery>,
) -> Result<Json<Vec<AuthKeyInfo>>, ApiError> {
    let store = &c.inner.store;
    let users: std::collections::BTreeMap<i64, String> = store
        .list_users()
        .await?
        .into_iter()
        .map(|u| (u.id.0, u.name))
        .collect();
    let filter = match &q.user {
        Some(name) => Some(
            store
                .get_user_by_name(name)
                .await
                .map_err(|_| ApiError::NotFound(format!("user {name:?}")))?
                .id,
        ),
        None => None,
    };
    let keys = store.list_preauth_keys(filter).await?;
    Ok(Json(
        keys.iter()
            .map(|k| key_out(k, users.get(&k.user_id.0).map(String::as_str).unwrap_or("")))
            .collect(),
    ))
}

async fn create_key(
    State(c): State<Control>,
    Json(req): Json<CreateAuthKey>,
) -> Result<Json<CreatedAuthKey>, ApiError> {
    check_tags(&req.tags)?;
    let user = c
        .inner
        .store
        .get_user_by_name(&req.user)
        .await
        .map_err(|_| ApiError::NotFound(format!("user {:?}", req.user)))?;
    let login = crate::convert::user_info(&user).login_name;
    if !c.may_use_tags(&login, &user.groups, &req.tags) {
        return Err(ApiError::BadRequest(format!(
            "user {:?} does not own tags {} (see tagOwners in the policy)",
            user.name,
            req.tags.join(", ")
        )));
    }
    let expiration = match req.expiration_secs {
        Some(0) => return Err(ApiError::BadRequest("expiration must be positive".into())),
        Some(s) => Some(from_time(c.now() + std::time::Duration::from_secs(s))),
        None => None,
    };
    let (k, full) = c
        .inner
        .store
        .create_preauth_key(NewPreauthKey {
            user_id: user.id,
            reusable: req.reusable,
            ephemeral: req.ephemeral,
            pre_approved: req.pre_approved,
            tags: req.tags,
            expiration,
        })
        .await?;
    tracing::info!(user = %user.name, prefix = %k.prefix, reusable = k.reusable, ephemeral = k.ephemeral, "pre-auth key created");
    Ok(Json(CreatedAuthKey {
        key: full,
        info: key_out(&k, &user.name),
    }))
}

fn parse_id(s: &str) -> Result<i64, ApiError> {
    s.parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiError::BadRequest(format!("invalid id {s:?}")))
}

async fn expire_key(
    State(c): State<Control>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<AuthKeyInfo>, ApiError> {
    let id = parse_id(&id)?;
    let k = c
        .inner
        .store
        .expire_preauth_key(PreauthKeyId(id), from_time(c.now()))
        .await?;
    let user = c
        .inner
        .store
        .get_user(k.user_id)
        .await
        .map(|u| u.name)
        .unwrap_or_default();
    Ok(Json(key_out(&k, &user)))
}

async fn list_nodes(State(c): State<Control>) -> Result<Json<Vec<NodeInfo>>, ApiError> {
    let nodes = c.inner.store.list_nodes().await?;
    let mut out = Vec::with_capacity(nodes.len());
    for n in &nodes {
        out.push(node_out(&c, n).await);
    }
    Ok(Json(out))
}

async fn delete_node(
    State(c): State<Control>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_id(&id)?;
    c.delete_node(NodeId(id)).await?;
    tracing::info!(node = id, "node deleted");
    Ok(Json(serde_json::json!({})))
}

/// Applies `f` to a node under the write lock and pushes the result to peers. With
/// `auto_routes`, routes the policy's autoApprovers now grant (e.g. after a tag change)
/// are approved too.
async fn mutate_node_with<F, Fut>(
    c: &Control,
    id: &str,
    auto_routes: bool,
    f: F,
) -> Result<Json<NodeInfo>, ApiError>
where
    F: FnOnce(std::sync::Arc<dyn weft_store::Store>, NodeId) -> Fut,
    Fut: std::future::Future<Output = Result<weft_store::Node, weft_store::StoreError>>,
{
    let id = NodeId(parse_id(id)?);
    let n = {
        let _w = c.inner.write.lock().await;
        let mut n = f(c.inner.store.clone(), id).await?;
        if auto_routes {
            n = c.auto_approve_routes(n).await?;
        }
        c.refresh_node(&n, None).await;
        n
    };
    Ok(Json(node_out(c, &n).await))
}

async fn mutate_node<F, Fut>(c: &Control, id: &str, f: F) -> Result<Json<NodeInfo>, ApiError>
where
    F: FnOnce(std::sync::Arc<dyn weft_store::Store>, NodeId) -> Fut,
    Fut: std::future::Future<Output = Result<weft_store::Node, weft_store::StoreError>>,
{
    mutate_node_with(c, id, true, f).await
}

async fn expire_node(
    State(c): State<Control>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<NodeInfo>, ApiError> {
    let now = from_time(c.now());
    mutate_node(&c, &id, |store, id| async move {
        store.set_node_expiry(id, Some(now)).await
    })
    .await
}

async fn rename_node(
    State(c): State<Control>,
    UrlPath(id): UrlPath<String>,
    Json(req): Json<RenameNode>,
) -> Result<Json<NodeInfo>, ApiError> {
    let name = req.name.trim().to_string();
    mutate_node(&c, &id, |store, id| async move {
        store.rename_node(id, &name).await
    })
    .await
}

async fn tag_node(
    State(c): State<Control>,
    UrlPath(id): UrlPath<String>,
    Json(req): Json<SetTags>,
) -> Result<Json<NodeInfo>, ApiError> {
    check_tags(&req.tags)?;
    let mut tags = req.tags;
    tags.sort();
    tags.dedup();
    mutate_node(&c, &id, |store, id| async move {
        store.set_node_tags(id, tags).await
    })
    .await
}

async fn approve_node(
    State(c): State<Control>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<NodeInfo>, ApiError> {
    mutate_node(&c, &id, |store, id| async move {
        store.set_node_approved(id, true).await
    })
    .await
}

async fn set_key_expiry(
    State(c): State<Control>,
    UrlPath(id): UrlPath<String>,
    Json(req): Json<SetKeyExpiry>,
) -> Result<Json<NodeInfo>, ApiError> {
    mutate_node(&c, &id, |store, id| async move {
        store.set_node_key_expiry_disabled(id, req.disabled).await
    })
    .await
}

/// Parses approved routes: each a CIDR prefix with no host bits set. Either exit route
/// brings the other (Tailscale treats `0.0.0.0/0` and `::/0` as one exit-node pair).
/// Sorted, without duplicates.
pub fn parse_routes(routes: &[String]) -> Result<Vec<ipnet::IpNet>, ApiError> {
    let mut out = std::collections::BTreeSet::new();
    for r in routes.iter().map(|r| r.trim()).filter(|r| !r.is_empty()) {
        let net: ipnet::IpNet = r.parse().map_err(|_| {
            ApiError::BadRequest(format!(
                "invalid route {r:?}: want a CIDR prefix such as 10.0.0.0/24, fd00::/64 or 0.0.0.0/0"
            ))
        })?;
        if net.trunc() != net {
            return Err(ApiError::BadRequest(format!(
                "invalid route {r:?}: host bits are set (did you mean {}?)",
                net.trunc()
            )));
        }
        out.insert(net);
    }
    if out.iter().any(|r| r.prefix_len() == 0) {
        out.extend(crate::convert::exit_routes());
    }
    Ok(out.into_iter().collect())
}

async fn set_routes(
    State(c): State<Control>,
    UrlPath(id): UrlPath<String>,
    Json(req): Json<SetRoutes>,
) -> Result<Json<NodeInfo>, ApiError> {
    let routes = parse_routes(&req.routes)?;
    let shown: Vec<String> = routes.iter().map(ToString::to_string).collect();
    // An admin's explicit set is kept as given (autoApprovers act on the node's next
    // advertisement or policy change).
    let out = mutate_node_with(&c, &id, false, |store, id| async move {
        store.set_node_approved_routes(id, routes).await
    })
    .await?;
    tracing::info!(node = out.id, routes = ?shown, "approved routes set");
    Ok(out)
}

async fn register_node(
    State(c): State<Control>,
    Json(req): Json<RegisterNode>,
) -> Result<Json<NodeInfo>, ApiError> {
    let auth_id = req
        .key
        .trim()
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    if auth_id.is_empty() {
        return Err(ApiError::BadRequest("missing registration key".into()));
    }
    let user = c
        .inner
        .store
        .get_user_by_name(&req.user)
        .await
        .map_err(|_| ApiError::NotFound(format!("user {:?}", req.user)))?;
    let n = c.complete_auth_session(&auth_id, user.id).await?;
    Ok(Json(node_out(&c, &n).await))
}

async fn list_registrations(State(c): State<Control>) -> Result<Response, ApiError> {
    let pending = c
        .inner
        .store
        .list_pending_sessions(from_time(c.now()))
        .await?;
    let out: Vec<serde_json::Value> = pending
        .iter()
        .map(|s| {
            serde_json::json!({
                "key": s.auth_id,
                "machine_key": s.machine_key.to_text(),
                "hostname": s.hostinfo.get("Hostname").cloned().unwrap_or_default(),
                "created": to_time(s.created_at),
                "expires": to_time(s.expires_at),
            })
        })
        .collect();
    Ok((StatusCode::OK, Json(out)).into_response())
}

async fn get_policy(State(c): State<Control>) -> Result<Json<PolicyInfo>, ApiError> {
    match c.current_policy().await? {
        Some(rec) => {
            let tests = weft_policy::Policy::parse(&rec.text)
                .map(|p| p.tests().len())
                .unwrap_or(0);
            Ok(Json(policy_info(&rec, tests, true)))
        }
        None => Err(ApiError::NotFound(
            "policy (none set: the tailnet allows all traffic)".into(),
        )),
    }
}

async fn set_policy(
    State(c): State<Control>,
    actor: Option<axum::Extension<Actor>>,
    Json(req): Json<PolicyText>,
) -> Result<Json<PolicyInfo>, ApiError> {
    let author = actor.map(|a| a.0 .0).unwrap_or_else(|| "admin".into());
    Ok(Json(c.set_policy_text(&req.text, &author).await?))
}

async fn check_policy(
    State(c): State<Control>,
    Json(req): Json<PolicyText>,
) -> Result<Json<PolicyInfo>, ApiError> {
    let p = c.check_policy(&req.text)?;
    Ok(Json(PolicyInfo {
        id: 0,
        author: String::new(),
        created: c.now(),
        tests: p.tests().len(),
        text: String::new(),
    }))
}

async fn policy_history(State(c): State<Control>) -> Result<Json<Vec<PolicyInfo>>, ApiError> {
    let recs = c.inner.store.policy_history(100).await?;
    Ok(Json(
        recs.iter()
            .map(|r| {
                let tests = weft_policy::Policy::parse(&r.text)
                    .map(|p| p.tests().len())
                    .unwrap_or(0);
                policy_info(r, tests, false)
            })
            .collect(),
    ))
}
