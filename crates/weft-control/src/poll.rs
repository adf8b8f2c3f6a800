//! `/machine/map`: lite updates, one-shot maps and the streaming long poll.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use weft_mapper::full_map;
use weft_store::NodeLiveUpdate;
use weft_tailcfg::{MapRequest, MapResponse};
use weft_ts2021::NoisePeer;

use crate::machine::parse_json;
use crate::register::merge_hostinfo;
use crate::{convert, ApiError, Control};

pub(crate) async fn handle(c: Control, peer: NoisePeer, body: &[u8]) -> Result<Response, ApiError> {
    let req: MapRequest = parse_json(body)?;
    if req.node_key.is_zero() {
        return Err(ApiError::BadRequest("missing NodeKey".into()));
    }
    let node = c
        .inner
        .store
        .get_node_by_node_key(&req.node_key)
        .await
        .map_err(|e| {
            if e.is_not_found() {
                ApiError::NotFound("node".into())
            } else {
                e.into()
            }
        })?;
    if node.machine_key != peer.machine {
        return Err(ApiError::Unauthorized(
            "node key belongs to another machine".into(),
        ));
    }
    let id = node.id.0;
    apply_live(&c, node, &req).await?;
    let zstd = req.compress == "zstd";
    if !req.stream {
        if req.omit_peers {
            return Ok(StatusCode::OK.into_response());
        }
        let snap = c.inner.hub.snapshot();
        let (mut m, _) =
            full_map(&snap, id, c.now()).map_err(|e| ApiError::NotFound(e.to_string()))?;
        add_tka(&c, &mut m);
        return Ok(frame_response(Body::from(encode_frame(&m, zstd))));
    }
    Ok(stream(c, id, zstd))
}

/// Stores what a map request reports and tells peers about it.
async fn apply_live(c: &Control, node: weft_store::Node, req: &MapRequest) -> Result<(), ApiError> {
    let mut upd = NodeLiveUpdate::default();
    if !req.disco_key.is_zero() && req.disco_key != node.disco_key {
        upd.disco_key = Some(req.disco_key);
    }
    if !req.endpoints.is_empty() && req.endpoints != node.endpoints {
        upd.endpoints = Some(req.endpoints.clone());
    }
    if let Some(h) = &req.hostinfo {
        let merged = merge_hostinfo(&node.hostinfo, h);
        if merged != node.hostinfo {
            upd.hostinfo = Some(merged);
        }
    }
    let cap_known = c.inner.hub.node(node.id.0).map(|s| s.cap) == Some(req.version);
    if upd == NodeLiveUpdate::default() && cap_known {
        return Ok(());
    }
    let _w = c.inner.write.lock().await;
    let new_hostinfo = upd.hostinfo.is_some();
    let mut n = if upd == NodeLiveUpdate::default() {
        node
    } else {
        c.inner.store.update_node_live(node.id, upd).await?
    };
    if new_hostinfo {
        // Newly advertised routes (Hostinfo.RoutableIPs) may be covered by autoApprovers.
        n = c.auto_approve_routes_or_keep(n).await;
    }
    c.refresh_node(&n, Some(req.version)).await;
    Ok(())
}

/// Tailnet Lock: once the lock was ever enabled, every map message carries `TKAInfo` (a
/// repeated head is a no-op for clients), and the self node gets the tailnet-lock
/// capability, without which clients ignore `TKAInfo`.
fn add_tka(c: &Control, m: &mut MapResponse) {
    if let Some(node) = m.node.as_mut() {
        node.cap_map
            .get_or_insert_with(Default::default)
            .entry(weft_tailcfg::CAP_TAILNET_LOCK.to_owned())
            .or_insert(None);
    }
    if let Some(info) = c.tka_info() {
        m.tka_info = Some(info);
    }
}

fn frame_response(body: Body) -> Response {
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `u32 little-endian length || zstd(JSON)` (or raw JSON if the client did not ask for zstd).
pub fn encode_frame(m: &MapResponse, zstd: bool) -> Bytes {
    let json = serde_json::to_vec(m).unwrap_or_else(|_| b"{}".to_vec());
    let payload = if zstd {
        zstd::bulk::compress(&json, 1).unwrap_or(json)
    } else {
        json
    };
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload);
    Bytes::from(out)
}

/// Splits one map frame off the front of `buf`: returns the decoded message and the
/// number of bytes consumed, `Ok(None)` if `buf` holds no complete frame yet.
pub fn decode_frame(buf: &[u8], zstd: bool) -> Result<Option<(MapResponse, usize)>, String> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > 64 << 20 {
        return Err(format!("map frame of {len} bytes is too large"));
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    let payload = &buf[4..4 + len];
    let json = if zstd {
        zstd::stream::decode_all(payload).map_err(|e| format!("zstd: {e}"))?
    } else {
        payload.to_vec()
    };
    let m = serde_json::from_slice(&json).map_err(|e| format!("json: {e}"))?;
    Ok(Some((m, 4 + len)))
}

fn keepalive_deadline(c: &Control) -> Instant {
    // Up to a fifth of the interval of jitter (0–10 s for the default 50 s).
    let base = c.inner.cfg.keepalive;
    let r = u32::from(weft_key::random_bytes::<1>()[0]);
    Instant::now() + base + base / 5 * r / 255
}

fn stream(c: Control, id: i64, zstd: bool) -> Response {
    let now = c.now();
    let (ticket, snap, mut rx) = c.inner.hub.open_stream(now, id);
    let (tx, body_rx) = mpsc::channel::<Bytes>(16);
    let Ok((mut first, mut session)) = full_map(&snap, id, now) else {
        c.inner.hub.close_stream(now, &ticket);
        return ApiError::NotFound("node".into()).into_response();
    };
    let keepalive = encode_frame(&MapResponse::keep_alive(), zstd);
    add_tka(&c, &mut first);
    let _ = tx.try_send(encode_frame(&first, zstd));
    tracing::info!(node = id, peers = first.peers.len(), "map stream opened");
    let span = tracing::info_span!("map_stream", node = id);
    tokio::spawn(tracing::Instrument::instrument(
        async move {
            let mut ka = keepalive_deadline(&c);
            loop {
                let frame = tokio::select! {
                    _ = ticket.cancel.cancelled() => break,
                    _ = tx.closed() => break,
                    r = rx.recv() => match r {
                        Ok(batch) => {
                            if !batch.snap.nodes.contains_key(&id) {
                                break;
                            }
                            match batch.delta.for_session(&batch.snap, &mut session) {
                                Some(mut m) => {
                                    add_tka(&c, &mut m);
                                    encode_frame(&m, zstd)
                                }
                                None => continue,
                            }
                        }
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::debug!(missed = n, "map stream lagged; resending full map");
                            let snap = c.inner.hub.snapshot();
                            match full_map(&snap, id, c.now()) {
                                Ok((mut m, s)) => {
                                    session = s;
                                    add_tka(&c, &mut m);
                                    encode_frame(&m, zstd)
                                }
                                Err(_) => break,
                            }
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    _ = tokio::time::sleep_until(ka) => keepalive.clone(),
                };
                if tx.send(frame).await.is_err() {
                    break;
                }
                ka = keepalive_deadline(&c);
            }
            let now = c.now();
            if c.inner.hub.close_stream(now, &ticket) {
                let upd = NodeLiveUpdate {
                    last_seen: Some(convert::from_time(now)),
                    ..NodeLiveUpdate::default()
                };
                if let Err(e) = c
                    .inner
                    .store
                    .update_node_live(weft_store::NodeId(id), upd)
                    .await
                {
                    tracing::debug!(error = %e, "could not record last seen");
                }
            }
            tracing::info!("map stream closed");
        },
        span,
    ));
    let body_stream = futures_util::stream::unfold(body_rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    frame_response(Body::from_stream(body_stream))
}
