//! Tailnet Lock on the control server: init (begin/finish), bootstrap, sync in both
//! directions, node-key signatures, refusals of bad AUMs and signatures, disablement,
//! all over real ts2021 with the `/machine/tka/*` endpoints sent as GET with a JSON body.

mod common;

use base64::Engine as _;
use common::{start, Machine, MapStream, CAPVER, WAIT};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::timeout;
use weft_key::NlPrivate;
use weft_tailcfg::{
    B64Bytes, MapResponse, TkaBootstrapRequest, TkaBootstrapResponse, TkaDisableRequest,
    TkaInitBeginRequest, TkaInitBeginResponse, TkaInitFinishRequest, TkaSignaturesUsingKeyRequest,
    TkaSignaturesUsingKeyResponse, TkaSubmitSignatureRequest, TkaSyncOfferRequest,
    TkaSyncOfferResponse, TkaSyncSendRequest, TkaSyncSendResponse, CAP_TAILNET_LOCK,
};
use weft_tka::{
    disablement_kdf, Aum, AumKind, Authority, Key, MemChonk, NodeKeySignature, SigningKey, State,
};

/// Sends a TKA request the way Tailscale clients do (GET with a JSON body); returns the
/// decoded 200 answer, or the status and body text.
async fn call<Req: Serialize, Resp: DeserializeOwned>(
    m: &Machine,
    path: &str,
    req: &Req,
) -> Result<Resp, (u16, String)> {
    let r = hyper::Request::get(path)
        .body(axum::body::Body::from(serde_json::to_vec(req).unwrap()))
        .unwrap();
    let resp = timeout(WAIT, m.client.send(r)).await.unwrap().unwrap();
    let status = resp.status().as_u16();
    let body = weft_ts2021::read_body(resp, 1 << 20).await.unwrap();
    if status != 200 {
        return Err((status, String::from_utf8_lossy(&body).into_owned()));
    }
    Ok(serde_json::from_slice(&body).unwrap())
}

/// A machine registered with a tailnet-lock key.
async fn join_with_nl(ts: &common::TestServer, host: &str, nl: &NlPrivate) -> Machine {
    let key = ts.key("alice", |k| k.reusable = true).await;
    let m = Machine::connect(ts, host).await;
    let mut req = m.register_request(Some(&key));
    req.nl_key = Some(nl.public());
    let r = m.register(&req).await;
    assert_eq!(r.error, "");
    m
}

fn direct(m: &Machine, signer: &SigningKey, rotation: &NlPrivate) -> Vec<u8> {
    NodeKeySignature::new_direct(&m.node.public(), signer, Some(rotation.public().to_bytes()))
        .serialize()
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn peer_sig(m: &MapResponse, key: &weft_key::NodePublic) -> Option<String> {
    m.peers
        .iter()
        .find(|p| p.key == *key)
        .and_then(|p| p.key_signature.clone())
}

async fn wait_head(s: &mut MapStream, head: &str) -> MapResponse {
    let head = head.to_owned();
    s.next_matching(move |m| {
        m.tka_info
            .as_ref()
            .is_some_and(|i| i.head == head && !i.disabled)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailnet_lock_init_sync_sign_and_disable() {
    let ts = start().await;
    let (nl_a, nl_b, nl_c) = (
        NlPrivate::generate(),
        NlPrivate::generate(),
        NlPrivate::generate(),
    );
    let a = join_with_nl(&ts, "a", &nl_a).await;
    let b = join_with_nl(&ts, "b", &nl_b).await;
    let mut sb = b.open_stream().await;
    let first = sb.next().await;
    assert_eq!(first.tka_info, None, "lock is off: no TKAInfo");
    let caps = first.node.as_ref().unwrap().cap_map.as_ref().unwrap();
    assert!(caps.contains_key(CAP_TAILNET_LOCK));

    // Not enabled yet: sync and sign are refused, bootstrap is empty.
    let offer = TkaSyncOfferRequest {
        version: CAPVER.into(),
        node_key: b.node.public(),
        ..Default::default()
    };
    let e = call::<_, TkaSyncOfferResponse>(&b, "/machine/tka/sync/offer", &offer)
        .await
        .unwrap_err();
    assert_eq!(e.0, 400, "{e:?}");
    let boot: TkaBootstrapResponse = call(
        &b,
        "/machine/tka/bootstrap",
        &TkaBootstrapRequest {
            version: CAPVER.into(),
            node_key: b.node.public(),
            head: String::new(),
        },
    )
    .await
    .unwrap();
    assert!(boot.genesis_aum.is_empty() && boot.disablement_secret.is_empty());

    // The genesis: A's key trusted, one disablement secret.
    let ka = SigningKey::from_nl(&nl_a);
    let kb = SigningKey::from_nl(&nl_b);
    let secret = [0x5au8; 32];
    let state = State {
        disablement_values: Some(vec![disablement_kdf(&secret).to_vec()]),
        keys: Some(vec![Key::ed25519(ka.public(), 1)]),
        state_id1: 11,
        state_id2: 22,
        ..Default::default()
    };
    let mut chonk_a = MemChonk::new();
    let (mut auth_a, genesis) = Authority::create(&mut chonk_a, state.clone(), &ka).unwrap();

    // Bad genesis AUMs are refused: garbage, and one signed by a key outside its state.
    let begin = |g: Vec<u8>| TkaInitBeginRequest {
        version: CAPVER.into(),
        node_key: a.node.public(),
        genesis_aum: B64Bytes(g),
    };
    let e = call::<_, TkaInitBeginResponse>(&a, "/machine/tka/init/begin", &begin(vec![1, 2, 3]))
        .await
        .unwrap_err();
    assert_eq!(e.0, 400, "{e:?}");
    let mut forged = Aum {
        message_kind: AumKind::CHECKPOINT,
        state: Some(state.clone()),
        ..Default::default()
    };
    forged.sign(&kb);
    let e =
        call::<_, TkaInitBeginResponse>(&a, "/machine/tka/init/begin", &begin(forged.serialize()))
            .await
            .unwrap_err();
    assert_eq!(e.0, 400, "{e:?}");

    // A node key of another machine is refused.
    let mut stolen = begin(genesis.serialize());
    stolen.node_key = b.node.public();
    let e = call::<_, TkaInitBeginResponse>(&a, "/machine/tka/init/begin", &stolen)
        .await
        .unwrap_err();
    assert_eq!(e.0, 401, "{e:?}");

    let need: TkaInitBeginResponse =
        call(&a, "/machine/tka/init/begin", &begin(genesis.serialize()))
            .await
            .unwrap();
    assert_eq!(need.need_signatures.len(), 2);
    let na = ts.node(&a.node.public()).await;
    let nb = ts.node(&b.node.public()).await;
    let info_b = need
        .need_signatures
        .iter()
        .find(|s| s.node_id == nb.id.0)
        .unwrap();
    assert_eq!(info_b.node_public, b.node.public());
    assert_eq!(info_b.rotation_pubkey.0, nl_b.public().to_bytes().to_vec());

    // init/finish with a signature by an untrusted key is refused and enables nothing.
    let sig_a = direct(&a, &ka, &nl_a);
    let sig_b = direct(&b, &ka, &nl_b);
    let mut finish = TkaInitFinishRequest {
        version: CAPVER.into(),
        node_key: a.node.public(),
        ..Default::default()
    };
    finish.signatures.insert(na.id.0, B64Bytes(sig_a.clone()));
    finish
        .signatures
        .insert(nb.id.0, B64Bytes(direct(&b, &kb, &nl_b)));
    let e = call::<_, serde_json::Value>(&a, "/machine/tka/init/finish", &finish)
        .await
        .unwrap_err();
    assert_eq!(e.0, 400, "{e:?}");
    assert!(e.1.contains("does not verify"), "{}", e.1);
    assert_eq!(ts.control.tka_info(), None);
    assert_eq!(ts.store.tka_state().await.unwrap(), None);

    finish.signatures.insert(nb.id.0, B64Bytes(sig_b.clone()));
    let _: serde_json::Value = call(&a, "/machine/tka/init/finish", &finish).await.unwrap();
    let head0 = genesis.hash().to_text();
    let m = wait_head(&mut sb, &head0).await;
    // The map carrying the new head may come before or with the peer update.
    let m = if peer_sig(&m, &a.node.public()).is_some() {
        m
    } else {
        sb.next_matching(|m| peer_sig(m, &a.node.public()).is_some())
            .await
    };
    assert_eq!(peer_sig(&m, &a.node.public()), Some(b64(&sig_a)));
    assert_eq!(
        ts.node(&b.node.public()).await.key_signature,
        Some(sig_b.clone())
    );
    // A second init is refused while enabled.
    let e =
        call::<_, TkaInitBeginResponse>(&a, "/machine/tka/init/begin", &begin(genesis.serialize()))
            .await
            .unwrap_err();
    assert_eq!(e.0, 409, "{e:?}");

    // b bootstraps from the genesis and is in sync.
    let boot: TkaBootstrapResponse = call(
        &b,
        "/machine/tka/bootstrap",
        &TkaBootstrapRequest {
            version: CAPVER.into(),
            node_key: b.node.public(),
            head: String::new(),
        },
    )
    .await
    .unwrap();
    assert_eq!(boot.genesis_aum.0, genesis.serialize());
    let mut chonk_b = MemChonk::new();
    let mut auth_b =
        Authority::bootstrap(&mut chonk_b, &Aum::decode(&boot.genesis_aum.0).unwrap()).unwrap();
    let offer_of = |auth: &Authority, chonk: &MemChonk, m: &Machine| {
        let (head, ancestors) = auth.sync_offer(chonk).unwrap().to_text();
        TkaSyncOfferRequest {
            version: CAPVER.into(),
            node_key: m.node.public(),
            head,
            ancestors,
        }
    };
    let r: TkaSyncOfferResponse = call(
        &b,
        "/machine/tka/sync/offer",
        &offer_of(&auth_b, &chonk_b, &b),
    )
    .await
    .unwrap();
    assert_eq!(r.head, head0);
    assert!(r.missing_aums.is_empty());

    // a trusts B's key too (an AddKey AUM built locally) and sends it to control.
    let ups = {
        let mut u = auth_a.new_updater(&ka);
        u.add_key(Key::ed25519(kb.public(), 1)).unwrap();
        u.finalize(&chonk_a).unwrap()
    };
    auth_a.inform(&mut chonk_a, &ups).unwrap();
    let head1 = auth_a.head().to_text();
    let send = |aums: &[Aum], head: String, m: &Machine| TkaSyncSendRequest {
        version: CAPVER.into(),
        node_key: m.node.public(),
        head,
        missing_aums: aums.iter().map(|a| B64Bytes(a.serialize())).collect(),
        interactive: true,
    };
    let r: TkaSyncSendResponse = call(&a, "/machine/tka/sync/send", &send(&ups, head1.clone(), &a))
        .await
        .unwrap();
    assert_eq!(r.head, head1);
    wait_head(&mut sb, &head1).await;
    // Sending it again is idempotent.
    let r: TkaSyncSendResponse = call(&a, "/machine/tka/sync/send", &send(&ups, head1.clone(), &a))
        .await
        .unwrap();
    assert_eq!(r.head, head1);

    // b learns the AddKey through sync/offer.
    let r: TkaSyncOfferResponse = call(
        &b,
        "/machine/tka/sync/offer",
        &offer_of(&auth_b, &chonk_b, &b),
    )
    .await
    .unwrap();
    assert_eq!(r.head, head1);
    assert_eq!(r.missing_aums.len(), ups.len());
    let got: Vec<Aum> = r
        .missing_aums
        .iter()
        .map(|x| Aum::decode(&x.0).unwrap())
        .collect();
    auth_b.inform(&mut chonk_b, &got).unwrap();
    assert_eq!(auth_b.head().to_text(), head1);
    assert!(auth_b.key_trusted(&kb.public()));

    // A NoOp signed by an untrusted key is refused; the head stays.
    let stranger = SigningKey::from_nl(&NlPrivate::generate());
    let mut bad = Aum {
        message_kind: AumKind::NO_OP,
        prev_aum_hash: Some(auth_b.head().0.to_vec()),
        ..Default::default()
    };
    bad.sign(&stranger);
    let e = call::<_, TkaSyncSendResponse>(
        &b,
        "/machine/tka/sync/send",
        &send(&[bad.clone()], bad.hash().to_text(), &b),
    )
    .await
    .unwrap_err();
    assert_eq!(e.0, 400, "{e:?}");
    let e = call::<_, TkaSyncSendResponse>(
        &b,
        "/machine/tka/sync/send",
        &TkaSyncSendRequest {
            missing_aums: vec![B64Bytes(vec![0xff, 0x00])],
            ..send(&[], head1.clone(), &b)
        },
    )
    .await
    .unwrap_err();
    assert_eq!(e.0, 400, "{e:?}");
    let r: TkaSyncSendResponse = call(&b, "/machine/tka/sync/send", &send(&[], head1.clone(), &b))
        .await
        .unwrap();
    assert_eq!(r.head, head1);
    assert_eq!(ts.control.tka_info().unwrap().head, head1);

    // A new node c joins unsigned; b, now trusted, signs it.
    let c = join_with_nl(&ts, "c", &nl_c).await;
    let m = sb
        .next_matching(|m| {
            m.peers.iter().any(|p| p.key == c.node.public())
                || m.peers_changed.iter().any(|p| p.key == c.node.public())
        })
        .await;
    let pc = m
        .peers
        .iter()
        .chain(m.peers_changed.iter())
        .find(|p| p.key == c.node.public())
        .unwrap();
    assert_eq!(pc.key_signature, None, "c is not signed yet");
    let sign = |sig: Vec<u8>| TkaSubmitSignatureRequest {
        version: CAPVER.into(),
        node_key: b.node.public(),
        signature: B64Bytes(sig),
    };
    // Refused: an untrusted signer, garbage, a key no node has.
    let e =
        call::<_, serde_json::Value>(&b, "/machine/tka/sign", &sign(direct(&c, &stranger, &nl_c)))
            .await
            .unwrap_err();
    assert_eq!(e.0, 400, "{e:?}");
    let e = call::<_, serde_json::Value>(&b, "/machine/tka/sign", &sign(vec![1, 2, 3]))
        .await
        .unwrap_err();
    assert_eq!(e.0, 400, "{e:?}");
    let ghost =
        NodeKeySignature::new_direct(&weft_key::NodePrivate::generate().public(), &kb, None)
            .serialize();
    let e = call::<_, serde_json::Value>(&b, "/machine/tka/sign", &sign(ghost))
        .await
        .unwrap_err();
    assert_eq!(e.0, 400, "{e:?}");
    assert_eq!(ts.node(&c.node.public()).await.key_signature, None);

    let sig_c = direct(&c, &kb, &nl_c);
    let _: serde_json::Value = call(&b, "/machine/tka/sign", &sign(sig_c.clone()))
        .await
        .unwrap();
    let want = b64(&sig_c);
    let ckey = c.node.public();
    sb.next_matching(move |m| {
        m.peers
            .iter()
            .chain(m.peers_changed.iter())
            .any(|p| p.key == ckey && p.key_signature.as_deref() == Some(want.as_str()))
    })
    .await;
    // c's own map carries its signature on its self node, and the head.
    let mut sc = c.open_stream().await;
    let mc = sc.next().await;
    assert_eq!(
        mc.node.as_ref().unwrap().key_signature.as_deref(),
        Some(b64(&sig_c).as_str())
    );
    assert_eq!(mc.tka_info.as_ref().unwrap().head, head1);

    // affected-sigs: signatures made by A's key are a's and b's.
    let r: TkaSignaturesUsingKeyResponse = call(
        &a,
        "/machine/tka/affected-sigs",
        &TkaSignaturesUsingKeyRequest {
            version: CAPVER.into(),
            node_key: a.node.public(),
            key_id: B64Bytes(ka.public().to_vec()),
        },
    )
    .await
    .unwrap();
    let mut got: Vec<Vec<u8>> = r.signatures.into_iter().map(|s| s.0).collect();
    got.sort();
    let mut want = vec![sig_a.clone(), sig_b.clone()];
    want.sort();
    assert_eq!(got, want);

    // The admin view: trusted keys and who is signed.
    let (status, v) = ts.admin_json("/api/v1/tka", None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["enabled"], true);
    assert_eq!(v["head"], head1.as_str());
    assert_eq!(v["keys"].as_array().unwrap().len(), 2);
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| n["locked_out"] == false), "{v}");

    // The state survives a restart of the server.
    let again = weft_control::Control::new(ts.control.config().clone(), ts.store.clone())
        .await
        .unwrap();
    assert_eq!(again.tka_info().unwrap().head, head1);

    // Disable: a wrong secret is refused, the right one disables and is handed out.
    let disable = |s: &[u8]| TkaDisableRequest {
        version: CAPVER.into(),
        node_key: a.node.public(),
        head: head1.clone(),
        disablement_secret: B64Bytes(s.to_vec()),
    };
    let e = call::<_, serde_json::Value>(&a, "/machine/tka/disable", &disable(&[1u8; 32]))
        .await
        .unwrap_err();
    assert_eq!(e.0, 401, "{e:?}");
    assert!(!ts.control.tka_info().unwrap().disabled);
    let _: serde_json::Value = call(&a, "/machine/tka/disable", &disable(&secret))
        .await
        .unwrap();
    sb.next_matching(|m| m.tka_info.as_ref().is_some_and(|i| i.disabled))
        .await;
    let boot: TkaBootstrapResponse = call(
        &b,
        "/machine/tka/bootstrap",
        &TkaBootstrapRequest {
            version: CAPVER.into(),
            node_key: b.node.public(),
            head: head1.clone(),
        },
    )
    .await
    .unwrap();
    assert!(boot.genesis_aum.is_empty());
    assert_eq!(boot.disablement_secret.0, secret.to_vec());
    assert!(auth_b.valid_disablement(&boot.disablement_secret.0));
    let (_, v) = ts.admin_json("/api/v1/tka", None).await;
    assert_eq!(v["disabled"], true);
    // After a disable the lock can be started again with a new genesis.
    let state2 = State {
        state_id1: 33,
        state_id2: 44,
        ..state.clone()
    };
    let (_, genesis2) = Authority::create(&mut MemChonk::new(), state2, &ka).unwrap();
    let need: TkaInitBeginResponse =
        call(&a, "/machine/tka/init/begin", &begin(genesis2.serialize()))
            .await
            .unwrap();
    assert_eq!(need.need_signatures.len(), 3);
    let e = call::<_, TkaSyncOfferResponse>(
        &b,
        "/machine/tka/sync/offer",
        &offer_of(&auth_b, &chonk_b, &b),
    )
    .await
    .unwrap_err();
    assert_eq!(e.0, 400, "{e:?}");
}

/// Key rotation under the lock (notes A.11): the first re-registration is answered only with
/// the old signature; the retry carrying a Rotation signature completes and is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_key_rotation_is_re_signed_by_the_node() {
    let ts = start().await;
    let (nl_a, nl_b) = (NlPrivate::generate(), NlPrivate::generate());
    let mut a = join_with_nl(&ts, "a", &nl_a).await;
    let b = join_with_nl(&ts, "b", &nl_b).await;
    let ka = SigningKey::from_nl(&nl_a);
    let state = State {
        disablement_values: Some(vec![disablement_kdf(&[7u8; 32]).to_vec()]),
        keys: Some(vec![Key::ed25519(ka.public(), 1)]),
        state_id1: 1,
        state_id2: 2,
        ..Default::default()
    };
    let (_, genesis) = Authority::create(&mut MemChonk::new(), state, &ka).unwrap();
    let _: TkaInitBeginResponse = call(
        &a,
        "/machine/tka/init/begin",
        &TkaInitBeginRequest {
            version: CAPVER.into(),
            node_key: a.node.public(),
            genesis_aum: B64Bytes(genesis.serialize()),
        },
    )
    .await
    .unwrap();
    let na = ts.node(&a.node.public()).await;
    let nb = ts.node(&b.node.public()).await;
    let sig_a = direct(&a, &ka, &nl_a);
    let mut finish = TkaInitFinishRequest {
        version: CAPVER.into(),
        node_key: a.node.public(),
        ..Default::default()
    };
    finish.signatures.insert(na.id.0, B64Bytes(sig_a.clone()));
    finish
        .signatures
        .insert(nb.id.0, B64Bytes(direct(&b, &ka, &nl_b)));
    let _: serde_json::Value = call(&a, "/machine/tka/init/finish", &finish).await.unwrap();
    let mut sb = b.open_stream().await;
    sb.next_matching(|m| m.tka_info.is_some()).await;

    let key = ts.key("alice", |k| k.reusable = true).await;
    let old_key = a.node.public();
    let new_node = weft_key::NodePrivate::generate();

    let mut req = a.register_request(Some(&key));
    req.old_node_key = old_key;
    req.node_key = weft_key::NodePrivate::generate().public();
    req.nl_key = Some(NlPrivate::generate().public());
    let mut first = req.clone();
    first.node_key = new_node.public();
    first.nl_key = Some(nl_a.public());
    let r = a.register(&first).await;
    assert_eq!(r.error, "");
    assert_eq!(
        r.node_key_signature.as_deref(),
        Some(b64(&sig_a).as_str()),
        "the first attempt gets the old signature back"
    );
    assert_eq!(
        ts.node(&old_key).await.id,
        na.id,
        "the key did not rotate yet"
    );

    // The retry, re-signed by the node's own tailnet-lock key.
    let rotated =
        weft_tka::sig::resign_nks(&SigningKey::from_nl(&nl_a), &new_node.public(), &sig_a).unwrap();
    let mut retry = first.clone();
    retry.node_key_signature = Some(b64(&rotated));
    let r = a.register(&retry).await;
    assert_eq!(r.error, "");
    assert_eq!(r.node_key_signature, None, "asking again would loop");
    let n = ts.node(&new_node.public()).await;
    assert_eq!(n.id, na.id);
    assert_eq!(n.key_signature, Some(rotated.clone()));
    let want = b64(&rotated);
    let nk = new_node.public();
    sb.next_matching(move |m| {
        m.peers
            .iter()
            .chain(m.peers_changed.iter())
            .any(|p| p.key == nk && p.key_signature.as_deref() == Some(want.as_str()))
    })
    .await;
    a.node = new_node;

    // A request whose NLKey is not the signature's wrapping key cannot extend it: no
    // rotation offer, the registration goes through normally (and the node is unsigned).
    req.old_node_key = a.node.public();
    let r = a.register(&req).await;
    assert_eq!(r.error, "");
    assert_eq!(r.node_key_signature, None);
    assert_eq!(ts.node(&req.node_key).await.id, na.id);
    // Its stored signature no longer covers its key: the admin view shows it locked out.
    let (_, v) = ts.admin_json("/api/v1/tka", None).await;
    let row = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == na.id.0)
        .unwrap()
        .clone();
    assert_eq!(row["locked_out"], true, "{v}");
    assert_eq!(row["node_key"], req.node_key.to_text().as_str());
    assert!(row["tlpub"].as_str().unwrap().starts_with("tlpub:"));
}
