//! `/machine/register`: the decision table of the protocol notes (§8.4).

use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;
use tokio::sync::watch;
use weft_store::{
    names, NewNode, NewRegistrationSession, NodeLiveUpdate, NodeReregistration, StoreError, UserId,
};
use weft_tailcfg::{Hostinfo, RegisterRequest, RegisterResponse, Time};
use weft_ts2021::NoisePeer;

use crate::convert::{from_time, user_and_login};
use crate::{ApiError, Control};

pub(crate) async fn handle(
    c: &Control,
    peer: NoisePeer,
    req: RegisterRequest,
) -> Result<RegisterResponse, ApiError> {
    if req.node_key.is_zero() {
        return Err(ApiError::BadRequest("missing NodeKey".into()));
    }
    let now = c.now();
    let store = &c.inner.store;
    let by_key = optional(store.get_node_by_node_key(&req.node_key).await)?;
    if let Some(n) = &by_key {
        if n.machine_key != peer.machine {
            return Err(ApiError::Unauthorized(
                "node key belongs to another machine".into(),
            ));
        }
    }
    if !req.expiry.is_zero() && req.expiry <= now {
        let Some(n) = by_key else {
            return Ok(RegisterResponse {
                node_key_expired: true,
                ..RegisterResponse::default()
            });
        };
        return logout(c, n, now).await;
    }
    if let Some(n) = by_key {
        return refresh(c, n, &req, now).await;
    }
    if !req.followup.is_empty() {
        return followup(c, peer, &req, now).await;
    }
    if let Some(key) = req
        .auth
        .as_ref()
        .map(|a| a.auth_key.trim().to_string())
        .filter(|k| !k.is_empty())
    {
        return with_preauth_key(c, peer, &req, &key, now).await;
    }
    start_interactive(c, peer, &req, now).await
}

fn optional<T>(r: Result<T, StoreError>) -> Result<Option<T>, ApiError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn success(c: &Control, n: &weft_store::Node) -> Result<RegisterResponse, ApiError> {
    let user = c.inner.store.get_user(n.user_id).await?;
    let (user, login) = user_and_login(&user);
    Ok(RegisterResponse {
        user,
        login,
        node_key_expired: n.is_expired(from_time(c.now())),
        machine_authorized: n.approved,
        ..RegisterResponse::default()
    })
}

/// Merges a new Hostinfo over the stored one, keeping the old `NetInfo` when the new
/// one has none (clients do not always resend it).
pub(crate) fn merge_hostinfo(old: &Value, new: &Hostinfo) -> Value {
    let mut merged = new.0.clone();
    let has_netinfo = matches!(merged.get("NetInfo"), Some(v) if !v.is_null());
    if !has_netinfo {
        if let Some(ni) = old.get("NetInfo").filter(|v| !v.is_null()) {
            merged.insert("NetInfo".into(), ni.clone());
        }
    }
    Value::Object(merged)
}

fn hostname_of(h: Option<&Hostinfo>) -> String {
    h.and_then(|h| h.hostname()).unwrap_or("node").to_string()
}

/// Known node key of this machine: restart, refresh, or "expire sooner".
async fn refresh(
    c: &Control,
    mut n: weft_store::Node,
    req: &RegisterRequest,
    now: Time,
) -> Result<RegisterResponse, ApiError> {
    let _w = c.inner.write.lock().await;
    let store = &c.inner.store;
    let mut changed = false;
    if !req.expiry.is_zero() && req.expiry > now {
        let requested = from_time(req.expiry);
        if n.expiry.is_none_or(|e| requested < e) {
            n = store.set_node_expiry(n.id, Some(requested)).await?;
            changed = true;
        }
    }
    if let Some(hi) = &req.hostinfo {
        let merged = merge_hostinfo(&n.hostinfo, hi);
        if merged != n.hostinfo {
            n = store
                .update_node_live(
                    n.id,
                    NodeLiveUpdate {
                        hostinfo: Some(merged),
                        ..NodeLiveUpdate::default()
                    },
                )
                .await?;
            n = c.auto_approve_routes_or_keep(n).await;
            changed = true;
        }
    }
    if changed {
        c.refresh_node(&n, None).await;
    }
    tracing::info!(node = n.id.0, hostname = %n.hostname, "node re-registered with its current key");
    success(c, &n).await
}

async fn logout(c: &Control, n: weft_store::Node, now: Time) -> Result<RegisterResponse, ApiError> {
    if n.ephemeral {
        tracing::info!(node = n.id.0, hostname = %n.hostname, "ephemeral node logged out; deleting");
        c.delete_node(n.id).await?;
        return Ok(RegisterResponse {
            node_key_expired: true,
            machine_authorized: false,
            ..RegisterResponse::default()
        });
    }
    let n = {
        let _w = c.inner.write.lock().await;
        let n = c
            .inner
            .store
            .set_node_expiry(n.id, Some(from_time(now)))
            .await?;
        c.refresh_node(&n, None).await;
        n
    };
    tracing::info!(node = n.id.0, hostname = %n.hostname, "node logged out");
    let mut resp = success(c, &n).await?;
    resp.node_key_expired = true;
    Ok(resp)
}

/// `requested` tags (`Hostinfo.RequestTags`), sorted and deduplicated, if `user` owns every
/// one under the policy's tagOwners; otherwise the message that refuses them.
fn owned_tags(
    c: &Control,
    user: &weft_store::User,
    mut requested: Vec<String>,
) -> Result<Vec<String>, String> {
    if requested.is_empty() {
        return Ok(requested);
    }
    let login = crate::convert::user_info(user).login_name;
    if !requested.iter().all(|t| t.starts_with("tag:"))
        || !c.may_use_tags(&login, &user.groups, &requested)
    {
        tracing::info!(user = %user.name, tags = ?requested, "requested tags refused");
        return Err(format!(
            "requested tags [{}] are invalid or not permitted for {login}",
            requested.join(", ")
        ));
    }
    requested.sort();
    requested.dedup();
    Ok(requested)
}

fn key_expiry_for(c: &Control, tagged: bool, now: Time, requested: Time) -> Option<OffsetDateTime> {
    if tagged {
        return None;
    }
    let default = c.inner.cfg.node_key_expiry.map(|d| now + d);
    let requested = (!requested.is_zero() && requested > now).then_some(requested);
    match (default, requested) {
        (Some(a), Some(b)) => Some(from_time(a.min(b))),
        (a, b) => a.or(b).map(from_time),
    }
}

async fn with_preauth_key(
    c: &Control,
    peer: NoisePeer,
    req: &RegisterRequest,
    presented: &str,
    now: Time,
) -> Result<RegisterResponse, ApiError> {
    let store = &c.inner.store;
    let now_odt = from_time(now);
    let key = match store.get_preauth_key_by_key(presented).await {
        Ok(k) => k,
        Err(e) if e.is_not_found() => {
            return Ok(RegisterResponse::error("invalid auth key: not found"))
        }
        Err(e) => return Err(e.into()),
    };
    if key.is_expired(now_odt) {
        return Ok(RegisterResponse::error("invalid auth key: expired"));
    }
    if !key.reusable && key.used {
        return Ok(RegisterResponse::error("invalid auth key: already used"));
    }
    // `--advertise-tags` (Hostinfo.RequestTags) on an untagged key: the key's user must own
    // every requested tag under the policy's tagOwners.
    let mut tags = key.tags.clone();
    let requested = req
        .hostinfo
        .as_ref()
        .map(|h| h.request_tags())
        .unwrap_or_default();
    if tags.is_empty() && !requested.is_empty() {
        let user = store.get_user(key.user_id).await?;
        match owned_tags(c, &user, requested) {
            Ok(t) => tags = t,
            Err(why) => return Ok(RegisterResponse::error(why)),
        }
    }
    let _w = c.inner.write.lock().await;
    let existing = optional(store.get_node_by_machine_key(&peer.machine).await)?;
    let tagged = !tags.is_empty();
    let expiry = key_expiry_for(c, tagged, now, req.expiry);
    let node = match existing {
        Some(n) => {
            // The machine is known (logged out, or rotating its key): re-key it in place,
            // consuming the key in the same transaction.
            let r = NodeReregistration {
                node_key: req.node_key,
                user_id: key.user_id,
                hostinfo: req
                    .hostinfo
                    .as_ref()
                    .map(|hi| merge_hostinfo(&n.hostinfo, hi)),
                expiry,
                auth_key_id: Some(key.id),
                tags: tagged.then(|| tags.clone()),
                ephemeral: key.ephemeral || req.ephemeral || n.ephemeral,
                approved: key.pre_approved.then_some(true),
            };
            let n = match store.reregister_node(n.id, r, now_odt).await {
                Ok(n) => n,
                Err(StoreError::Conflict(what)) => {
                    return Ok(RegisterResponse::error(format!(
                        "registration refused: {what}"
                    )))
                }
                Err(e) => return Err(e.into()),
            };
            tracing::info!(node = n.id.0, hostname = %n.hostname, "node re-authenticated with a pre-auth key");
            n
        }
        None => {
            let hostname = hostname_of(req.hostinfo.as_ref());
            let new = NewNode {
                machine_key: peer.machine,
                node_key: req.node_key,
                disco_key: Default::default(),
                nl_key: req.nl_key.unwrap_or_default(),
                user_id: key.user_id,
                given_name_base: names::dns_label(&hostname),
                hostname,
                hostinfo: req
                    .hostinfo
                    .as_ref()
                    .map(|h| Value::Object(h.0.clone()))
                    .unwrap_or_else(|| Value::Object(Default::default())),
                endpoints: Vec::new(),
                tags,
                approved_routes: Vec::new(),
                auth_key_id: Some(key.id),
                ephemeral: key.ephemeral || req.ephemeral,
                approved: !c.inner.cfg.require_approval || key.pre_approved,
                expiry,
            };
            match store.create_node(new, now_odt).await {
                Ok(n) => {
                    tracing::info!(node = n.id.0, hostname = %n.hostname, ipv4 = %n.ipv4, "node registered with a pre-auth key");
                    n
                }
                Err(StoreError::Conflict(what)) => {
                    return Ok(RegisterResponse::error(format!(
                        "registration refused: {what}"
                    )))
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let node = c.auto_approve_routes_or_keep(node).await;
    c.refresh_node(&node, None).await;
    drop(_w);
    success(c, &node).await
}

fn auth_url(c: &Control, auth_id: &str) -> String {
    format!("{}/register/{}", c.inner.cfg.server_url, auth_id)
}

async fn start_interactive(
    c: &Control,
    peer: NoisePeer,
    req: &RegisterRequest,
    now: Time,
) -> Result<RegisterResponse, ApiError> {
    let auth_id = names::random_auth_id();
    let session = NewRegistrationSession {
        auth_id: auth_id.clone(),
        machine_key: peer.machine,
        node_key: req.node_key,
        old_node_key: req.old_node_key,
        hostinfo: req
            .hostinfo
            .as_ref()
            .map(|h| Value::Object(h.0.clone()))
            .unwrap_or_else(|| Value::Object(Default::default())),
        ephemeral: req.ephemeral,
        requested_expiry: (!req.expiry.is_zero()).then(|| from_time(req.expiry)),
        expires_at: from_time(now + c.inner.cfg.auth_session_ttl),
    };
    c.inner
        .store
        .create_session(session, from_time(now))
        .await?;
    let url = auth_url(c, &auth_id);
    tracing::info!(machine = %peer.machine.short(), auth_url = %url, "interactive login started");
    Ok(RegisterResponse {
        auth_url: url,
        ..RegisterResponse::default()
    })
}

fn waiter(c: &Control, auth_id: &str) -> watch::Receiver<bool> {
    let mut w = c
        .inner
        .auth_waiters
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    w.entry(auth_id.to_string())
        .or_insert_with(|| watch::channel(false).0)
        .subscribe()
}

async fn followup(
    c: &Control,
    peer: NoisePeer,
    req: &RegisterRequest,
    now: Time,
) -> Result<RegisterResponse, ApiError> {
    let auth_id = req
        .followup
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let store = &c.inner.store;
    let session = match optional(store.get_session(&auth_id).await)? {
        Some(s)
            if s.machine_key == peer.machine
                && s.node_key == req.node_key
                && s.expires_at > from_time(now) =>
        {
            s
        }
        _ => return start_interactive(c, peer, req, now).await,
    };
    let mut rx = waiter(c, &auth_id);
    let mut session = Some(session);
    loop {
        let s = match session.take() {
            Some(s) => s,
            None => match optional(store.get_session(&auth_id).await)? {
                Some(s) => s,
                None => return start_interactive(c, peer, req, c.now()).await,
            },
        };
        if s.completed_user_id.is_some() {
            let n = store.get_node_by_node_key(&req.node_key).await?;
            return success(c, &n).await;
        }
        let remaining =
            (crate::convert::to_time(s.expires_at).unix_nanos() - c.now().unix_nanos()).max(0);
        if remaining == 0 {
            return start_interactive(c, peer, req, c.now()).await;
        }
        let wait = Duration::from_nanos(remaining.min(u64::MAX as i128) as u64);
        match tokio::time::timeout(wait, rx.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => rx = waiter(c, &auth_id),
            Err(_) => return start_interactive(c, peer, req, c.now()).await,
        }
    }
}

pub(crate) async fn complete_session(
    c: &Control,
    auth_id: &str,
    user: UserId,
) -> Result<weft_store::Node, ApiError> {
    let store = &c.inner.store;
    let now = c.now();
    let now_odt = from_time(now);
    let s = store.get_session(auth_id).await.map_err(|e| {
        if e.is_not_found() {
            ApiError::NotFound(format!("registration {auth_id}"))
        } else {
            e.into()
        }
    })?;
    if s.expires_at <= now_odt {
        return Err(ApiError::NotFound(format!(
            "registration {auth_id} (expired)"
        )));
    }
    if s.completed_user_id.is_some() {
        return Err(ApiError::Conflict(format!(
            "registration {auth_id} is already complete"
        )));
    }
    let user = store.get_user(user).await?;
    let hostinfo = Hostinfo(match &s.hostinfo {
        Value::Object(m) => m.clone(),
        _ => Default::default(),
    });
    let requested = s
        .requested_expiry
        .map(crate::convert::to_time)
        .unwrap_or(Time::ZERO);
    // `--advertise-tags` (Hostinfo.RequestTags): the user who logs in must own every
    // requested tag under the policy's tagOwners, as with a pre-auth key; otherwise the
    // login is refused rather than silently leaving the node untagged.
    let request_tags =
        owned_tags(c, &user, hostinfo.request_tags()).map_err(ApiError::Unauthorized)?;
    let _w = c.inner.write.lock().await;
    let existing = optional(store.get_node_by_machine_key(&s.machine_key).await)?;
    let node = match existing {
        Some(n) => {
            let keep_tags = n.user_id == user.id && !n.tags.is_empty() && request_tags.is_empty();
            let tagged = keep_tags || !request_tags.is_empty();
            let expiry = key_expiry_for(c, tagged, now, requested);
            let r = NodeReregistration {
                node_key: s.node_key,
                user_id: user.id,
                hostinfo: Some(merge_hostinfo(&n.hostinfo, &hostinfo)),
                expiry,
                auth_key_id: None,
                tags: (!keep_tags).then(|| request_tags.clone()),
                ephemeral: s.ephemeral,
                // With device approval required, a re-login keeps the node's approval state.
                approved: (!c.inner.cfg.require_approval).then_some(true),
            };
            store.reregister_node(n.id, r, now_odt).await?
        }
        None => {
            let hostname = hostname_of(Some(&hostinfo));
            let new = NewNode {
                machine_key: s.machine_key,
                node_key: s.node_key,
                disco_key: Default::default(),
                nl_key: Default::default(),
                user_id: user.id,
                given_name_base: names::dns_label(&hostname),
                hostname,
                hostinfo: s.hostinfo.clone(),
                endpoints: Vec::new(),
                expiry: key_expiry_for(c, !request_tags.is_empty(), now, requested),
                tags: request_tags,
                approved_routes: Vec::new(),
                auth_key_id: None,
                ephemeral: s.ephemeral,
                approved: !c.inner.cfg.require_approval,
            };
            store.create_node(new, now_odt).await?
        }
    };
    store.complete_session(auth_id, user.id, node.id).await?;
    let node = c.auto_approve_routes_or_keep(node).await;
    c.refresh_node(&node, None).await;
    drop(_w);
    tracing::info!(node = node.id.0, user = %user.name, "interactive login completed");
    if let Some(tx) = c
        .inner
        .auth_waiters
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(auth_id)
    {
        let _ = tx.send(true);
    }
    Ok(node)
}
