//! The router inside the Noise tunnel (`/machine/...`).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, patch, post};
use axum::{Extension, Json, Router};
use serde::de::DeserializeOwned;
use weft_tailcfg::{RegisterRequest, SetDnsRequest};
use weft_ts2021::NoisePeer;

use crate::{poll, register, tka, ApiError, Control};

/// Request bodies above this are refused (Tailscale clients send far less).
pub(crate) const MAX_BODY: usize = 1 << 20;

pub(crate) fn router(c: Control) -> Router {
    Router::new()
        .route("/machine/register", post(register_handler))
        .route("/machine/map", post(map_handler))
        .route("/machine/set-dns", post(set_dns))
        .route("/machine/set-device-attr", patch(accept_json))
        .route("/machine/audit-log", post(accept_json))
        .route("/machine/update-health", post(accept_json))
        .route("/machine/whoami", get(whoami))
        .route("/machine/id-token", post(not_implemented))
        .route("/machine/feature/query", post(not_implemented))
        .route("/machine/webclient/{*rest}", any(not_implemented))
        .route("/machine/tka/init/begin", any(tka::init_begin))
        .route("/machine/tka/init/finish", any(tka::init_finish))
        .route("/machine/tka/bootstrap", any(tka::bootstrap))
        .route("/machine/tka/sync/offer", any(tka::sync_offer))
        .route("/machine/tka/sync/send", any(tka::sync_send))
        .route("/machine/tka/disable", any(tka::disable))
        .route("/machine/tka/sign", any(tka::sign))
        .route("/machine/tka/affected-sigs", any(tka::affected_sigs))
        .route("/machine/tka/{*rest}", any(tka_unknown))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({"error": "no such endpoint"})),
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(c)
}

/// Parses a JSON body regardless of `Content-Type` (Tailscale clients omit it).
pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.len() > MAX_BODY {
        return Err(ApiError::BadRequest("request body too large".into()));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid JSON: {e}")))
}

async fn register_handler(
    State(c): State<Control>,
    Extension(peer): Extension<NoisePeer>,
    body: Bytes,
) -> Response {
    let req: RegisterRequest = match parse_json(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match c.tka_rotation_gate(&peer, &req).await {
        Ok(Some(resp)) => return Json(resp).into_response(),
        Ok(None) => {}
        Err(e) => return e.into_response(),
    }
    match register::handle(&c, peer, req.clone()).await {
        Ok(resp) => {
            if resp.error.is_empty() && resp.auth_url.is_empty() {
                if let Err(e) = c.tka_after_register(&req).await {
                    tracing::warn!(error = %e, "tailnet lock: storing the registration signature failed");
                }
            }
            Json(resp).into_response()
        }
        Err(e) => e.into_response(),
    }
}

async fn map_handler(
    State(c): State<Control>,
    Extension(peer): Extension<NoisePeer>,
    body: Bytes,
) -> Response {
    match poll::handle(c, peer, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn set_dns(
    State(c): State<Control>,
    Extension(peer): Extension<NoisePeer>,
    body: Bytes,
) -> Response {
    let req: SetDnsRequest = match parse_json(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match c.inner.store.get_node_by_node_key(&req.node_key).await {
        Ok(n) if n.machine_key == peer.machine => {
            tracing::info!(node = n.id.0, name = %req.name, record_type = %req.record_type, "set-dns request (no DNS provider configured; acknowledged)");
            Json(serde_json::json!({})).into_response()
        }
        Ok(_) => {
            ApiError::Unauthorized("node key belongs to another machine".into()).into_response()
        }
        Err(e) => ApiError::from(e).into_response(),
    }
}

async fn accept_json() -> Json<serde_json::Value> {
    Json(serde_json::json!({}))
}

async fn whoami(State(c): State<Control>, Extension(peer): Extension<NoisePeer>) -> Response {
    let node = c
        .inner
        .store
        .get_node_by_machine_key(&peer.machine)
        .await
        .ok();
    Json(serde_json::json!({
        "Machine": peer.machine,
        "Version": peer.version,
        "NodeID": node.as_ref().map(|n| n.id.0),
        "Name": node.as_ref().map(|n| n.given_name.clone()),
    }))
    .into_response()
}

async fn not_implemented() -> Response {
    ApiError::NotImplemented("this endpoint").into_response()
}

async fn tka_unknown() -> Response {
    ApiError::NotImplemented("this tailnet lock endpoint").into_response()
}
