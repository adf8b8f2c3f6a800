//! Layer 2: the weft coordination server.
//!
//! [`Control`] owns the store, the Noise key and the in-memory [`hub::Hub`]. It serves:
//! - [`Control::public_router`]: `GET /key`, `POST|GET /ts2021` (Noise, HTTP/2 inside,
//!   served by [`Control::noise_router`]), `GET /register/<auth_id>` (interactive login page),
//!   `GET /health`, plus any extra routes (the embedded DERP relay) passed in.
//! - [`Control::noise_router`]: `/machine/register`, `/machine/map` (zstd-framed long poll,
//!   deltas pushed to every open stream at once), `/machine/set-dns` and friends.
//! - [`Control::admin_router`]: the JSON admin API used by the `weft` CLI, over the unix
//!   socket `DATA/admin.sock` ([`admin::serve_unix`]) or over TCP with a bearer key.
//!
//! [`Control::complete_auth_session`] finishes an interactive login (admin command today,
//! OIDC later).

pub mod admin;
pub mod config;
pub mod convert;
mod error;
pub mod hub;
mod login;
mod machine;
pub mod policy;
mod poll;
mod register;
mod tka;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::{Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::watch;
use weft_key::MachinePrivate;
use weft_mapper::{DnsSettings, Snapshot};
use weft_store::Store;
use weft_tailcfg::{OverTlsPublicKeyResponse, Time};

pub use config::{load_derp_map, ConfigError, ControlConfig, FileConfig};
pub use error::ApiError;
pub use poll::{decode_frame, encode_frame};

/// Key under which the Noise private key is kept in the store's key-value table.
const NOISE_KEY_KV: &str = "control.noise_private_key";

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Storage failed.
    #[error("storage: {0}")]
    Store(#[from] weft_store::StoreError),
    /// A stored value is unusable.
    #[error("{0}")]
    Corrupt(String),
    /// The OpenID Connect settings are unusable.
    #[error("{0}")]
    Oidc(#[from] weft_oidc::OidcError),
}

pub(crate) struct Inner {
    pub(crate) cfg: ControlConfig,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) noise_key: Arc<MachinePrivate>,
    pub(crate) hub: hub::Hub,
    /// Serialises store mutations with their hub update, so the hub never applies an
    /// older row over a newer one.
    pub(crate) write: tokio::sync::Mutex<()>,
    /// Interactive logins waiting for completion: auth id → completion signal.
    pub(crate) auth_waiters: Mutex<BTreeMap<String, watch::Sender<bool>>>,
    /// Clock (overridable in tests).
    pub(crate) clock: Box<dyn Fn() -> SystemTime + Send + Sync>,
    /// OpenID Connect relying party, when configured (discovery happens on first use).
    pub(crate) oidc: Option<Arc<weft_oidc::OidcProvider>>,
    /// Serialises Tailnet Lock changes (load, verify, commit).
    pub(crate) tka: tokio::sync::Mutex<()>,
    /// Tailnet Lock state kept only in memory (a pending init).
    pub(crate) tka_runtime: Mutex<tka::TkaRuntime>,
    /// The `TKAInfo` every map response carries (`None`: lock never enabled).
    pub(crate) tka_info: Mutex<Option<weft_tailcfg::TkaInfo>>,
}

/// The coordination server. Cheap to clone.
#[derive(Clone)]
pub struct Control {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control")
            .field("server_url", &self.inner.cfg.server_url)
            .finish_non_exhaustive()
    }
}

impl Control {
    /// Loads (or creates) the Noise key, loads users and nodes from `store` and returns a
    /// server ready to be routed.
    pub async fn new(cfg: ControlConfig, store: Arc<dyn Store>) -> Result<Control, ControlError> {
        let noise_key = match store.kv_get(NOISE_KEY_KV).await? {
            Some(bytes) => {
                let b: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    ControlError::Corrupt("stored Noise key is not 32 bytes".into())
                })?;
                MachinePrivate::from_bytes(b)
            }
            None => {
                let k = MachinePrivate::generate();
                store.kv_put(NOISE_KEY_KV, &k.to_bytes()).await?;
                k
            }
        };
        let mut snap = Snapshot {
            derp_map: Arc::new(cfg.derp_map.clone()),
            dns: DnsSettings {
                base_domain: cfg.base_domain.clone(),
                magic_dns: cfg.magic_dns,
                nameservers: cfg.nameservers.clone(),
                search_domains: cfg.search_domains.clone(),
                ..DnsSettings::default()
            },
            ..Snapshot::default()
        };
        let mut groups = Vec::new();
        for u in store.list_users().await? {
            snap.users.insert(u.id.0, convert::user_info(&u));
            if !u.groups.is_empty() {
                groups.push((u.id.0, u.groups.clone()));
            }
        }
        for n in store.list_nodes().await? {
            snap.nodes.insert(n.id.0, convert::node_state(&n, false, 0));
        }
        tracing::info!(nodes = snap.nodes.len(), users = snap.users.len(), noise_key = %noise_key.public(), "control server state loaded");
        let oidc = match &cfg.oidc {
            Some(o) => Some(Arc::new(weft_oidc::OidcProvider::new(
                o.clone(),
                &cfg.server_url,
            )?)),
            None => None,
        };
        let stored_policy = match store.current_policy().await? {
            Some(rec) => Some(weft_policy::Policy::parse(&rec.text).map_err(|e| {
                ControlError::Corrupt(format!("stored policy version {} is invalid: {e}", rec.id))
            })?),
            None => None,
        };
        let tka_info = tka::info_for(store.tka_state().await?.as_ref());
        let hub = hub::Hub::new(snap);
        let now = Time::from_system(SystemTime::now());
        for (user, g) in groups {
            hub.set_user_groups(now, user, g);
        }
        if stored_policy.is_some() {
            tracing::info!("stored policy loaded");
        }
        hub.install_policy(now, stored_policy);
        Ok(Control {
            inner: Arc::new(Inner {
                cfg,
                store,
                noise_key: Arc::new(noise_key),
                hub,
                write: tokio::sync::Mutex::new(()),
                auth_waiters: Mutex::new(BTreeMap::new()),
                clock: Box::new(SystemTime::now),
                oidc,
                tka: tokio::sync::Mutex::new(()),
                tka_runtime: Mutex::new(tka::TkaRuntime::default()),
                tka_info: Mutex::new(tka_info),
            }),
        })
    }

    /// The server's configuration.
    pub fn config(&self) -> &ControlConfig {
        &self.inner.cfg
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The Noise public key served by `/key`.
    pub fn noise_public(&self) -> weft_key::MachinePublic {
        self.inner.noise_key.public()
    }

    /// The hub (snapshot and live streams).
    pub fn hub(&self) -> &hub::Hub {
        &self.inner.hub
    }

    pub(crate) fn now(&self) -> Time {
        Time::from_system((self.inner.clock)())
    }

    /// Replaces the DERP map and pushes it to every node.
    pub fn set_derp_map(&self, map: weft_tailcfg::DerpMap) {
        let now = self.now();
        self.inner.hub.apply(now, |snap| {
            snap.derp_map = Arc::new(map);
            vec![weft_mapper::Change::Everything]
        });
    }

    /// Replaces the visibility/filter policy and pushes new maps to every node.
    /// This replaces any policy set with [`Control::set_policy_text`] until the next one.
    pub fn set_policy(&self, policy: Arc<dyn weft_mapper::PolicyView>) {
        let now = self.now();
        self.inner.hub.forget_policy_engine();
        self.inner.hub.apply(now, |snap| {
            snap.policy = policy;
            vec![weft_mapper::Change::Everything]
        });
    }

    /// Replaces the policy and resyncs only the given nodes' streams (their filter or
    /// visible peers changed); `None` resyncs every stream.
    pub fn apply_policy(
        &self,
        policy: Arc<dyn weft_mapper::PolicyView>,
        resync: Option<Vec<weft_tailcfg::NodeId>>,
    ) {
        let now = self.now();
        self.inner.hub.forget_policy_engine();
        self.inner.hub.apply(now, |snap| {
            snap.policy = policy;
            match resync {
                None => vec![weft_mapper::Change::Everything],
                Some(ids) => ids
                    .into_iter()
                    .map(weft_mapper::Change::NodeResync)
                    .collect(),
            }
        });
    }

    /// The router inside the Noise tunnel.
    pub fn noise_router(&self) -> Router {
        machine::router(self.clone())
    }

    /// The public HTTP router (`/key`, `/ts2021`, `/register/<id>` and `/oidc/callback` from
    /// [`weft_oidc::router`], `/health`), merged with
    /// `extra` (e.g. the embedded DERP relay's `/derp` routes).
    pub fn public_router(&self, extra: Option<Router>) -> Router {
        let noise = self.noise_router();
        let key = self.inner.noise_key.clone();
        let ts_config = weft_ts2021::ServerConfig {
            min_version: weft_tailcfg::MIN_SUPPORTED_CAPVER as u16,
            early_noise_challenge: self.inner.cfg.early_noise,
            ..weft_ts2021::ServerConfig::default()
        };
        let r = Router::new()
            .route("/key", get(key_handler))
            .route(
                "/ts2021",
                any(move |req: Request| {
                    weft_ts2021::upgrade_with(req, key.clone(), noise.clone(), ts_config.clone())
                }),
            )
            .route("/verify", axum::routing::post(verify_handler))
            .route(
                "/health",
                get(|| async { Json(serde_json::json!({"status": "ok"})) }),
            )
            .with_state(self.clone())
            .merge(login::router(self));
        match extra {
            Some(e) => r.merge(e),
            None => r,
        }
    }

    /// The admin API router (see [`admin`]).
    pub fn admin_router(&self) -> Router {
        admin::router(self.clone())
    }

    /// Spawns the housekeeping task (ephemeral-node cleanup, expired login sessions).
    pub fn spawn_housekeeping(&self) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let period = (this.inner.cfg.ephemeral_inactivity / 4)
                .clamp(Duration::from_millis(200), Duration::from_secs(60));
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                if let Err(e) = this.housekeeping().await {
                    tracing::warn!(error = %e, "housekeeping failed");
                }
            }
        })
    }

    /// One housekeeping pass: deletes ephemeral nodes offline for longer than the
    /// configured inactivity, and expired login sessions.
    pub async fn housekeeping(&self) -> Result<(), ApiError> {
        let now = self.now();
        let cutoff = now - self.inner.cfg.ephemeral_inactivity;
        let snap = self.inner.hub.snapshot();
        let nodes = self.inner.store.list_nodes().await?;
        for n in nodes.iter().filter(|n| n.ephemeral) {
            let online = snap.nodes.get(&n.id.0).is_some_and(|s| s.online)
                || self.inner.hub.is_streaming(n.id.0);
            if online {
                continue;
            }
            let last = n
                .last_seen
                .map(convert::to_time)
                .unwrap_or_else(|| convert::to_time(n.updated_at));
            if last <= cutoff {
                tracing::info!(node = n.id.0, hostname = %n.hostname, "deleting inactive ephemeral node");
                self.delete_node(weft_store::NodeId(n.id.0)).await?;
            }
        }
        self.inner
            .store
            .delete_expired_sessions(convert::from_time(now))
            .await?;
        Ok(())
    }

    /// Deletes a node and tells its peers.
    pub async fn delete_node(&self, id: weft_store::NodeId) -> Result<(), ApiError> {
        let _w = self.inner.write.lock().await;
        self.inner.store.delete_node(id).await?;
        self.inner.hub.kick(id.0);
        self.inner.hub.remove(self.now(), id.0);
        Ok(())
    }

    /// Completes an interactive login: creates (or re-keys) the node of the session's
    /// machine for `user`, marks the session completed and wakes the waiting client.
    /// Used by `weft nodes register` and by OIDC callbacks.
    pub async fn complete_auth_session(
        &self,
        auth_id: &str,
        user: weft_store::UserId,
    ) -> Result<weft_store::Node, ApiError> {
        register::complete_session(self, auth_id, user).await
    }

    /// Records a user change in the snapshot (after the store changed).
    pub(crate) fn refresh_user(&self, u: &weft_store::User) {
        let info = convert::user_info(u);
        self.inner
            .hub
            .set_user_groups(self.now(), u.id.0, u.groups.clone());
        self.inner.hub.apply(self.now(), |snap| {
            if snap.users.get(&info.id) == Some(&info) {
                return Vec::new();
            }
            snap.users.insert(info.id, info);
            let ids: Vec<_> = snap
                .nodes
                .values()
                .filter(|n| n.user_id == u.id.0)
                .map(|n| n.id)
                .collect();
            ids.into_iter()
                .map(weft_mapper::Change::NodeUpdated)
                .collect()
        });
    }

    /// Records a node change in the snapshot (after the store changed), loading its
    /// owner into the snapshot if it is not there yet.
    pub(crate) async fn refresh_node(&self, n: &weft_store::Node, cap: Option<i64>) {
        let known = self.inner.hub.snapshot().users.contains_key(&n.user_id.0);
        if !known {
            if let Ok(u) = self.inner.store.get_user(n.user_id).await {
                let info = convert::user_info(&u);
                self.inner.hub.apply(self.now(), |snap| {
                    snap.users.insert(info.id, info);
                    Vec::new()
                });
            }
        }
        self.inner.hub.upsert(
            self.now(),
            convert::node_state(n, false, cap.unwrap_or(0)),
            cap,
        );
    }
}

/// DERP admission (`weft derp --verify-clients URL/verify`, the request Tailscale's derper
/// sends): a node key is admitted when it belongs to an approved node whose key has not expired.
#[derive(Deserialize)]
struct AdmitRequest {
    #[serde(rename = "NodePublic")]
    node_public: weft_key::NodePublic,
}

async fn verify_handler(State(c): State<Control>, Json(req): Json<AdmitRequest>) -> Response {
    let now = time::OffsetDateTime::from((c.inner.clock)());
    let allow = match c.inner.store.get_node_by_node_key(&req.node_public).await {
        Ok(n) => n.approved && !n.is_expired(now),
        Err(e) if e.is_not_found() => false,
        Err(e) => return ApiError::from(e).into_response(),
    };
    tracing::debug!(node = %req.node_public.short(), allow, "derp admission");
    Json(serde_json::json!({ "Allow": allow })).into_response()
}

#[derive(Deserialize)]
struct KeyQuery {
    v: Option<String>,
}

async fn key_handler(State(c): State<Control>, Query(q): Query<KeyQuery>) -> Response {
    if let Some(v) = &q.v {
        if v.parse::<i64>().is_err() {
            return (StatusCode::BAD_REQUEST, "invalid v\n").into_response();
        }
    }
    Json(OverTlsPublicKeyResponse {
        legacy_public_key: Default::default(),
        public_key: c.noise_public(),
    })
    .into_response()
}
