//! Tailnet Lock (TKA) on the coordination server: the `/machine/tka/*` endpoints.
//!
//! The server is one more TKA replica. It never signs anything: it checks what nodes send
//! with `weft_tka` and stores it. Per request, the AUM log is loaded from the store into a
//! [`MemChonk`] (AUMs are small and the server never compacts), the authority is opened
//! from it, and whatever the request adds is committed to the store in one transaction.
//! Every TKA change runs under [`Inner::tka`](crate::Inner) so two changes never race.
//!
//! Map integration: [`Control::tka_info`] is the `TKAInfo` every map frame carries once
//! the lock was ever enabled; a head change or a disable resyncs every stream; a node's
//! key signature travels in its `Node.KeySignature` (see [`crate::convert::node_state`]).

use std::collections::BTreeSet;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::de::DeserializeOwned;
use serde::Serialize;
use weft_key::NodePublic;
use weft_store::{NodeId, TkaAumRecord, TkaCommit, TkaMode, TkaState};
use weft_tailcfg::{
    B64Bytes, RegisterRequest, RegisterResponse, TkaBootstrapRequest, TkaBootstrapResponse,
    TkaDisableRequest, TkaDisableResponse, TkaInfo, TkaInitBeginRequest, TkaInitBeginResponse,
    TkaInitFinishRequest, TkaInitFinishResponse, TkaSignInfo, TkaSignaturesUsingKeyRequest,
    TkaSignaturesUsingKeyResponse, TkaSubmitSignatureRequest, TkaSubmitSignatureResponse,
    TkaSyncOfferRequest, TkaSyncOfferResponse, TkaSyncSendRequest, TkaSyncSendResponse,
};
use weft_tka::{Aum, AumHash, Authority, Chonk, MemChonk, NodeKeySignature, SyncOffer, TkaError};
use weft_ts2021::NoisePeer;

use crate::machine::parse_json;
use crate::{ApiError, Control};

/// A genesis accepted by init/begin, waiting for init/finish.
#[derive(Debug, Clone)]
pub(crate) struct PendingInit {
    genesis: Aum,
    by: NodeId,
}

/// Mutable TKA bookkeeping kept in memory (the rest is in the store).
#[derive(Debug, Default)]
pub(crate) struct TkaRuntime {
    pending: Option<PendingInit>,
}

/// What map responses say about the lock for a stored state row.
pub(crate) fn info_for(state: Option<&TkaState>) -> Option<TkaInfo> {
    let st = state?;
    Some(match st.mode {
        TkaMode::Enabled => TkaInfo {
            head: AumHash::from_slice(&st.head)
                .map(|h| h.to_text())
                .unwrap_or_default(),
            disabled: false,
        },
        TkaMode::Disabled => TkaInfo {
            head: String::new(),
            disabled: true,
        },
    })
}

fn tka_err(e: TkaError) -> ApiError {
    match e {
        TkaError::Storage(_) | TkaError::Chain(_) | TkaError::IterationLimit(_) => {
            ApiError::Internal(format!("tailnet lock: {e}"))
        }
        other => ApiError::BadRequest(format!("tailnet lock: {other}")),
    }
}

fn record(aum: &Aum) -> TkaAumRecord {
    TkaAumRecord {
        hash: aum.hash().0.to_vec(),
        parent: aum.parent().map(|p| p.0.to_vec()),
        data: aum.serialize(),
    }
}

/// The enabled authority, loaded from the store.
struct Loaded {
    state: TkaState,
    chonk: MemChonk,
    authority: Authority,
}

impl Control {
    /// The `TKAInfo` map responses carry (`None` while the lock was never enabled).
    pub fn tka_info(&self) -> Option<TkaInfo> {
        self.inner
            .tka_info
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_tka_info(&self, state: &TkaState) {
        let info = info_for(Some(state));
        *self
            .inner
            .tka_info
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = info;
        // Every stream gets a full map carrying the new TKAInfo.
        self.inner
            .hub
            .apply(self.now(), |_| vec![weft_mapper::Change::Everything]);
    }

    /// Loads the enabled authority; `BadRequest` when the lock is not enabled.
    async fn load_tka(&self) -> Result<Loaded, ApiError> {
        let Some(state) = self.inner.store.tka_state().await? else {
            return Err(ApiError::BadRequest("tailnet lock is not enabled".into()));
        };
        if state.mode != TkaMode::Enabled {
            return Err(ApiError::BadRequest("tailnet lock is disabled".into()));
        }
        let mut chonk = MemChonk::new();
        let mut aums = Vec::new();
        for r in self.inner.store.tka_aums().await? {
            let aum = Aum::decode(&r.data)
                .map_err(|e| ApiError::Internal(format!("stored AUM does not decode: {e}")))?;
            aums.push(aum);
        }
        chonk
            .commit_verified_aums(&aums)
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        if let Some(g) = AumHash::from_slice(&state.genesis_hash) {
            chonk
                .set_last_active_ancestor(g)
                .map_err(|e| ApiError::Internal(e.to_string()))?;
        }
        let authority = Authority::open(&chonk).map_err(tka_err)?;
        Ok(Loaded {
            state,
            chonk,
            authority,
        })
    }

    /// Reloads nodes whose key signature changed into the hub (peers get the new node).
    async fn refresh_nodes(&self, ids: &[NodeId]) -> Result<(), ApiError> {
        for id in ids {
            let n = self.inner.store.get_node(*id).await?;
            self.refresh_node(&n, None).await;
        }
        Ok(())
    }

    /// The caller of a TKA endpoint: the node owning `node_key`, which must belong to the
    /// Noise peer's machine key.
    async fn tka_caller(
        &self,
        peer: &NoisePeer,
        node_key: &NodePublic,
    ) -> Result<weft_store::Node, ApiError> {
        let n = self
            .inner
            .store
            .get_node_by_node_key(node_key)
            .await
            .map_err(|e| {
                if e.is_not_found() {
                    ApiError::Unauthorized("unknown node key".into())
                } else {
                    e.into()
                }
            })?;
        if n.machine_key != peer.machine {
            return Err(ApiError::Unauthorized(
                "node key belongs to another machine".into(),
            ));
        }
        Ok(n)
    }

    async fn tka_init_begin(
        &self,
        peer: NoisePeer,
        req: TkaInitBeginRequest,
    ) -> Result<TkaInitBeginResponse, ApiError> {
        let caller = self.tka_caller(&peer, &req.node_key).await?;
        let _t = self.inner.tka.lock().await;
        if let Some(st) = self.inner.store.tka_state().await? {
            if st.mode == TkaMode::Enabled {
                return Err(ApiError::Conflict("tailnet lock is already enabled".into()));
            }
        }
        let genesis = Aum::decode(&req.genesis_aum.0)
            .map_err(|e| ApiError::BadRequest(format!("genesis AUM: {e}")))?;
        Authority::verify_bootstrap(&genesis).map_err(tka_err)?;
        let need = self
            .inner
            .store
            .list_nodes()
            .await?
            .into_iter()
            .map(|n| TkaSignInfo {
                node_id: n.id.0,
                node_public: n.node_key,
                rotation_pubkey: if n.nl_key.is_zero() {
                    B64Bytes::default()
                } else {
                    B64Bytes(n.nl_key.as_bytes().to_vec())
                },
            })
            .collect();
        tracing::info!(node = caller.id.0, genesis = %genesis.hash(), "tailnet lock init begun");
        self.inner
            .tka_runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending = Some(PendingInit {
            genesis,
            by: caller.id,
        });
        Ok(TkaInitBeginResponse {
            need_signatures: need,
        })
    }

    async fn tka_init_finish(
        &self,
        peer: NoisePeer,
        req: TkaInitFinishRequest,
    ) -> Result<TkaInitFinishResponse, ApiError> {
        let caller = self.tka_caller(&peer, &req.node_key).await?;
        let _t = self.inner.tka.lock().await;
        let pending = self
            .inner
            .tka_runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending
            .clone();
        let Some(pending) = pending else {
            return Err(ApiError::BadRequest(
                "no tailnet lock initialization in progress".into(),
            ));
        };
        if pending.by != caller.id {
            return Err(ApiError::Conflict(
                "tailnet lock initialization was begun by another node".into(),
            ));
        }
        if let Some(st) = self.inner.store.tka_state().await? {
            if st.mode == TkaMode::Enabled {
                return Err(ApiError::Conflict("tailnet lock is already enabled".into()));
            }
        }
        let mut chonk = MemChonk::new();
        let authority = Authority::bootstrap(&mut chonk, &pending.genesis).map_err(tka_err)?;
        let mut signatures = Vec::new();
        for (id, sig) in &req.signatures {
            let n = self.inner.store.get_node(NodeId(*id)).await.map_err(|e| {
                if e.is_not_found() {
                    ApiError::BadRequest(format!("signature for unknown node {id}"))
                } else {
                    e.into()
                }
            })?;
            authority
                .node_key_authorized(&n.node_key, &sig.0)
                .map_err(|e| {
                    ApiError::BadRequest(format!("signature for node {id} does not verify: {e}"))
                })?;
            signatures.push((n.id, Some(sig.0.clone())));
        }
        let genesis_hash = pending.genesis.hash().0.to_vec();
        let state = TkaState {
            mode: TkaMode::Enabled,
            genesis_hash: genesis_hash.clone(),
            head: authority.head().0.to_vec(),
            disablement_secret: None,
            support_disablement: (!req.support_disablement.is_empty())
                .then(|| req.support_disablement.0.clone()),
            updated_at: crate::convert::from_time(self.now()),
        };
        let ids: Vec<NodeId> = signatures.iter().map(|(id, _)| *id).collect();
        {
            let _w = self.inner.write.lock().await;
            self.inner
                .store
                .tka_commit(TkaCommit {
                    state: state.clone(),
                    reset: true,
                    aums: vec![record(&pending.genesis)],
                    signatures,
                })
                .await?;
            // A reset cleared every other node's signature too.
            let all: Vec<NodeId> = self
                .inner
                .store
                .list_nodes()
                .await?
                .into_iter()
                .map(|n| n.id)
                .collect();
            self.refresh_nodes(&all).await?;
        }
        self.inner
            .tka_runtime
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pending = None;
        tracing::info!(node = caller.id.0, head = %authority.head(), signed = ids.len(), "tailnet lock enabled");
        self.set_tka_info(&state);
        Ok(TkaInitFinishResponse {})
    }

    async fn tka_bootstrap(
        &self,
        peer: NoisePeer,
        req: TkaBootstrapRequest,
    ) -> Result<TkaBootstrapResponse, ApiError> {
        self.tka_caller(&peer, &req.node_key).await?;
        let Some(state) = self.inner.store.tka_state().await? else {
            return Ok(TkaBootstrapResponse::default());
        };
        match state.mode {
            TkaMode::Disabled => Ok(TkaBootstrapResponse {
                genesis_aum: B64Bytes::default(),
                disablement_secret: B64Bytes(state.disablement_secret.unwrap_or_default()),
            }),
            TkaMode::Enabled => {
                let genesis = self
                    .inner
                    .store
                    .tka_aums()
                    .await?
                    .into_iter()
                    .find(|r| r.hash == state.genesis_hash)
                    .ok_or_else(|| ApiError::Internal("genesis AUM is not stored".into()))?;
                Ok(TkaBootstrapResponse {
                    genesis_aum: B64Bytes(genesis.data),
                    disablement_secret: B64Bytes::default(),
                })
            }
        }
    }

    async fn tka_sync_offer(
        &self,
        peer: NoisePeer,
        req: TkaSyncOfferRequest,
    ) -> Result<TkaSyncOfferResponse, ApiError> {
        let caller = self.tka_caller(&peer, &req.node_key).await?;
        let remote = SyncOffer::from_text(&req.head, &req.ancestors)
            .map_err(|e| ApiError::BadRequest(format!("sync offer: {e}")))?;
        let l = self.load_tka().await?;
        let ours = l.authority.sync_offer(&l.chonk).map_err(tka_err)?;
        let missing = match l.authority.missing_aums(&l.chonk, &remote) {
            Ok(aums) => aums.iter().map(|a| B64Bytes(a.serialize())).collect(),
            Err(e) => {
                // No intersection (or a chain the server cannot walk): the node learns our
                // offer and may send what we lack.
                tracing::debug!(node = caller.id.0, error = %e, "tka sync offer: nothing to send");
                Vec::new()
            }
        };
        let (head, ancestors) = ours.to_text();
        Ok(TkaSyncOfferResponse {
            head,
            ancestors,
            missing_aums: missing,
        })
    }

    async fn tka_sync_send(
        &self,
        peer: NoisePeer,
        req: TkaSyncSendRequest,
    ) -> Result<TkaSyncSendResponse, ApiError> {
        let caller = self.tka_caller(&peer, &req.node_key).await?;
        let mut aums = Vec::with_capacity(req.missing_aums.len());
        for (i, b) in req.missing_aums.iter().enumerate() {
            aums.push(
                Aum::decode(&b.0).map_err(|e| ApiError::BadRequest(format!("AUM {i}: {e}")))?,
            );
        }
        let _t = self.inner.tka.lock().await;
        let Loaded {
            mut state,
            mut chonk,
            mut authority,
        } = self.load_tka().await?;
        let old_head = authority.head();
        if aums.is_empty() {
            return Ok(TkaSyncSendResponse {
                head: old_head.to_text(),
            });
        }
        let mut seen = BTreeSet::new();
        let mut fresh = Vec::new();
        for a in &aums {
            let h = a.hash();
            if seen.insert(h)
                && chonk
                    .aum(&h)
                    .map_err(|e| ApiError::Internal(e.to_string()))?
                    .is_none()
            {
                fresh.push(record(a));
            }
        }
        authority.inform(&mut chonk, &aums).map_err(tka_err)?;
        let new_head = authority.head();
        if !fresh.is_empty() || new_head != old_head {
            state.head = new_head.0.to_vec();
            state.updated_at = crate::convert::from_time(self.now());
            self.inner
                .store
                .tka_commit(TkaCommit {
                    state: state.clone(),
                    reset: false,
                    aums: fresh,
                    signatures: Vec::new(),
                })
                .await?;
        }
        tracing::info!(node = caller.id.0, received = aums.len(), head = %new_head, interactive = req.interactive, "tka sync send");
        if new_head != old_head {
            self.set_tka_info(&state);
        }
        Ok(TkaSyncSendResponse {
            head: new_head.to_text(),
        })
    }

    async fn tka_disable(
        &self,
        peer: NoisePeer,
        req: TkaDisableRequest,
    ) -> Result<TkaDisableResponse, ApiError> {
        let caller = self.tka_caller(&peer, &req.node_key).await?;
        let _t = self.inner.tka.lock().await;
        let Loaded {
            mut state,
            authority,
            ..
        } = self.load_tka().await?;
        let secret = req.disablement_secret.0.clone();
        // Argon2i with 16 MiB: keep it off the async workers.
        let valid = tokio::task::spawn_blocking(move || authority.valid_disablement(&secret))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        if !valid {
            return Err(ApiError::Unauthorized("invalid disablement secret".into()));
        }
        state.mode = TkaMode::Disabled;
        state.disablement_secret = Some(req.disablement_secret.0.clone());
        state.updated_at = crate::convert::from_time(self.now());
        self.inner
            .store
            .tka_commit(TkaCommit {
                state: state.clone(),
                reset: false,
                aums: Vec::new(),
                signatures: Vec::new(),
            })
            .await?;
        tracing::info!(node = caller.id.0, "tailnet lock disabled");
        self.set_tka_info(&state);
        Ok(TkaDisableResponse {})
    }

    async fn tka_sign(
        &self,
        peer: NoisePeer,
        req: TkaSubmitSignatureRequest,
    ) -> Result<TkaSubmitSignatureResponse, ApiError> {
        let caller = self.tka_caller(&peer, &req.node_key).await?;
        let nks = NodeKeySignature::decode(&req.signature.0)
            .map_err(|e| ApiError::BadRequest(format!("node-key signature: {e}")))?;
        let node_key = weft_tka::sig::node_key_from_binary(&nks.pubkey)
            .ok_or_else(|| ApiError::BadRequest("node-key signature carries no node key".into()))?;
        let _t = self.inner.tka.lock().await;
        let l = self.load_tka().await?;
        let target = self
            .inner
            .store
            .get_node_by_node_key(&node_key)
            .await
            .map_err(|e| {
                if e.is_not_found() {
                    ApiError::BadRequest(format!("no node has key {}", node_key.short()))
                } else {
                    e.into()
                }
            })?;
        l.authority
            .node_key_authorized(&node_key, &req.signature.0)
            .map_err(|e| ApiError::BadRequest(format!("signature does not verify: {e}")))?;
        {
            let _w = self.inner.write.lock().await;
            let n = self
                .inner
                .store
                .set_node_key_signature(target.id, Some(req.signature.0.clone()))
                .await?;
            self.refresh_node(&n, None).await;
        }
        tracing::info!(
            node = caller.id.0,
            signed = target.id.0,
            "node key signature stored"
        );
        Ok(TkaSubmitSignatureResponse {})
    }

    async fn tka_affected_sigs(
        &self,
        peer: NoisePeer,
        req: TkaSignaturesUsingKeyRequest,
    ) -> Result<TkaSignaturesUsingKeyResponse, ApiError> {
        self.tka_caller(&peer, &req.node_key).await?;
        let mut out = Vec::new();
        for n in self.inner.store.list_nodes().await? {
            let Some(sig) = n.key_signature else { continue };
            let Ok(nks) = NodeKeySignature::decode(&sig) else {
                continue;
            };
            if nks.authorizing_key_id().ok() == Some(req.key_id.0.as_slice()) {
                out.push(B64Bytes(sig));
            }
        }
        Ok(TkaSignaturesUsingKeyResponse { signatures: out })
    }
}

fn b64_decode(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(s).ok()
}

fn b64_encode(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}

impl Control {
    /// Whether the lock is enabled (per the store, not the cache).
    async fn tka_enabled(&self) -> Result<bool, ApiError> {
        Ok(self
            .inner
            .store
            .tka_state()
            .await?
            .is_some_and(|s| s.mode == TkaMode::Enabled))
    }

    /// Node-key rotation under the lock (notes A.11), first half: a node re-registering with
    /// `OldNodeKey` but no `NodeKeySignature`, whose old signature it could extend (its
    /// wrapping key is the node's `NLKey`), is answered only with that old signature, so the
    /// client re-signs its new key and retries. `None`: register normally.
    pub(crate) async fn tka_rotation_gate(
        &self,
        peer: &NoisePeer,
        req: &RegisterRequest,
    ) -> Result<Option<RegisterResponse>, ApiError> {
        if req.old_node_key.is_zero()
            || req.old_node_key == req.node_key
            || req
                .node_key_signature
                .as_deref()
                .is_some_and(|s| !s.is_empty())
        {
            return Ok(None);
        }
        let Some(nl) = req.nl_key.filter(|k| !k.is_zero()) else {
            return Ok(None);
        };
        if !self.tka_enabled().await? {
            return Ok(None);
        }
        let old = match self
            .inner
            .store
            .get_node_by_node_key(&req.old_node_key)
            .await
        {
            Ok(n) => n,
            Err(e) if e.is_not_found() => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if old.machine_key != peer.machine {
            return Ok(None);
        }
        let Some(sig) = old.key_signature else {
            return Ok(None);
        };
        let Ok(nks) = NodeKeySignature::decode(&sig) else {
            return Ok(None);
        };
        if nks.wrapping_public() != Some(nl.as_bytes().as_slice()) {
            return Ok(None);
        }
        tracing::info!(
            node = old.id.0,
            "tailnet lock: asking the node to re-sign its rotated key"
        );
        Ok(Some(RegisterResponse {
            node_key_signature: Some(b64_encode(&sig)),
            ..RegisterResponse::default()
        }))
    }

    /// Second half: after a registration succeeded, stores the request's `NodeKeySignature`
    /// on the node if the node's stored signature does not cover its current key and the
    /// submitted one verifies against the authority. A signature that does not verify is
    /// ignored (the node stays locked out; clients drop it).
    pub(crate) async fn tka_after_register(&self, req: &RegisterRequest) -> Result<(), ApiError> {
        let Some(sig) = req
            .node_key_signature
            .as_deref()
            .filter(|s| !s.is_empty())
            .and_then(b64_decode)
        else {
            return Ok(());
        };
        let _t = self.inner.tka.lock().await;
        if !self.tka_enabled().await? {
            return Ok(());
        }
        let n = match self.inner.store.get_node_by_node_key(&req.node_key).await {
            Ok(n) => n,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let l = self.load_tka().await?;
        let current_ok = n
            .key_signature
            .as_deref()
            .is_some_and(|s| l.authority.node_key_authorized(&n.node_key, s).is_ok());
        if current_ok && n.key_signature.as_deref() == Some(sig.as_slice()) {
            return Ok(());
        }
        if let Err(e) = l.authority.node_key_authorized(&n.node_key, &sig) {
            tracing::warn!(node = n.id.0, error = %e, "tailnet lock: registration signature does not verify; ignored");
            return Ok(());
        }
        let _w = self.inner.write.lock().await;
        let n = self
            .inner
            .store
            .set_node_key_signature(n.id, Some(sig))
            .await?;
        self.refresh_node(&n, None).await;
        tracing::info!(
            node = n.id.0,
            "tailnet lock: stored the signature sent at registration"
        );
        Ok(())
    }
}

/// `GET /api/v1/tka` (admin API): the lock's state, trusted keys, and every node's
/// signature status, with the `nodekey:` and `tlpub:` an admin needs to run
/// `tailscale lock sign nodekey:X tlpub:Y` for a locked-out node.
pub(crate) async fn admin_status(State(c): State<Control>) -> Response {
    match c.tka_admin_status().await {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn tlpub(b: &[u8]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("tlpub:{hex}")
}

impl Control {
    async fn tka_admin_status(&self) -> Result<serde_json::Value, ApiError> {
        let state = self.inner.store.tka_state().await?;
        let Some(st) = state else {
            return Ok(serde_json::json!({ "enabled": false, "disabled": false }));
        };
        let nodes = self.inner.store.list_nodes().await?;
        if st.mode == TkaMode::Disabled {
            return Ok(serde_json::json!({ "enabled": false, "disabled": true }));
        }
        let l = self.load_tka().await?;
        let (id1, id2) = l.authority.state_ids();
        let keys: Vec<serde_json::Value> = l
            .authority
            .keys()
            .iter()
            .map(|k| {
                serde_json::json!({
                    "key": tlpub(k.public.as_deref().unwrap_or_default()),
                    "votes": k.votes,
                    "meta": k.meta,
                })
            })
            .collect();
        let nodes: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| {
                let valid = n
                    .key_signature
                    .as_deref()
                    .is_some_and(|s| l.authority.node_key_authorized(&n.node_key, s).is_ok());
                serde_json::json!({
                    "id": n.id.0,
                    "name": n.given_name,
                    "node_key": n.node_key.to_text(),
                    "tlpub": if n.nl_key.is_zero() { String::new() } else { tlpub(n.nl_key.as_bytes()) },
                    "signed": n.key_signature.is_some(),
                    "locked_out": !valid,
                })
            })
            .collect();
        Ok(serde_json::json!({
            "enabled": true,
            "disabled": false,
            "head": l.authority.head().to_text(),
            "genesis": AumHash::from_slice(&st.genesis_hash).map(|h| h.to_text()),
            "aums": l.chonk.len(),
            "state_id": format!("{id1}:{id2}"),
            "keys": keys,
            "nodes": nodes,
        }))
    }
}

async fn run<Req, Resp, F, Fut>(body: &[u8], f: F) -> Response
where
    Req: DeserializeOwned,
    Resp: Serialize,
    F: FnOnce(Req) -> Fut,
    Fut: std::future::Future<Output = Result<Resp, ApiError>>,
{
    let req: Req = match parse_json(body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    match f(req).await {
        Ok(r) => Json(r).into_response(),
        Err(e) => e.into_response(),
    }
}

/// The axum handlers of the `/machine/tka/*` routes: each decodes the JSON body, runs the
/// `Control` method with the caller's Noise identity and encodes the answer.
macro_rules! tka_handlers {
    ($($name:ident => $method:ident),* $(,)?) => {$(
        pub(crate) async fn $name(
            State(c): State<Control>,
            Extension(peer): Extension<NoisePeer>,
            body: Bytes,
        ) -> Response {
            run(&body, |r| c.$method(peer, r)).await
        }
    )*};
}

tka_handlers! {
    init_begin => tka_init_begin,
    init_finish => tka_init_finish,
    bootstrap => tka_bootstrap,
    sync_offer => tka_sync_offer,
    sync_send => tka_sync_send,
    disable => tka_disable,
    sign => tka_sign,
    affected_sigs => tka_affected_sigs,
}
