//! The state machine, fork resolution, sync and node-key signatures, end to end over MemChonk.

use std::collections::BTreeMap;

use weft_key::NodePrivate;
use weft_tka::{
    disablement_kdf, node_key_binary, resign_nks, Aum, AumKind, Authority, Chonk, Key, MemChonk,
    NodeKeySignature, SigKind, SigningKey, State, SyncOffer, TkaError,
};

fn sk(n: u8) -> SigningKey {
    SigningKey::from_seed([n; 32])
}

fn genesis_state(keys: &[(&SigningKey, u64)]) -> State {
    State {
        disablement_values: Some(vec![disablement_kdf(&[0xa5; 32]).to_vec()]),
        keys: Some(
            keys.iter()
                .map(|(k, v)| Key::ed25519(k.public(), *v))
                .collect(),
        ),
        state_id1: 7,
        state_id2: 9,
        ..Default::default()
    }
}

/// A replica: storage plus authority.
struct Node {
    store: MemChonk,
    auth: Authority,
}

impl Node {
    fn create(keys: &[(&SigningKey, u64)], signer: &SigningKey) -> (Node, Aum) {
        let mut store = MemChonk::new();
        let (auth, genesis) = Authority::create(&mut store, genesis_state(keys), signer).unwrap();
        (Node { store, auth }, genesis)
    }

    fn bootstrap(genesis: &Aum) -> Node {
        let mut store = MemChonk::new();
        let auth = Authority::bootstrap(&mut store, genesis).unwrap();
        Node { store, auth }
    }

    fn inform(&mut self, aums: &[Aum]) -> Result<(), TkaError> {
        self.auth.inform(&mut self.store, aums)
    }

    fn build(
        &self,
        signer: &SigningKey,
        f: impl FnOnce(&mut weft_tka::UpdateBuilder<'_>),
    ) -> Vec<Aum> {
        let mut b = self.auth.new_updater(signer);
        f(&mut b);
        b.finalize(&self.store).unwrap()
    }
}

/// An AUM on `parent`, signed by `signers`.
fn child(parent: &Aum, mut aum: Aum, signers: &[&SigningKey]) -> Aum {
    aum.prev_aum_hash = Some(parent.hash().0.to_vec());
    for s in signers {
        aum.sign(s);
    }
    aum
}

fn add_key_aum(k: &SigningKey, votes: u64) -> Aum {
    Aum {
        message_kind: AumKind::ADD_KEY,
        key: Some(Key::ed25519(k.public(), votes)),
        ..Default::default()
    }
}

fn remove_key_aum(k: &SigningKey) -> Aum {
    Aum {
        message_kind: AumKind::REMOVE_KEY,
        key_id: Some(k.public().to_vec()),
        ..Default::default()
    }
}

fn noop() -> Aum {
    Aum {
        message_kind: AumKind::NO_OP,
        ..Default::default()
    }
}

#[test]
fn add_update_remove_keys_and_replicate() {
    let (k1, k2, k3) = (sk(1), sk(2), sk(3));
    let (mut a, genesis) = Node::create(&[(&k1, 1)], &k1);
    let mut b = Node::bootstrap(&genesis);
    assert_eq!(a.auth, b.auth);

    let meta: BTreeMap<String, String> = [("name".to_string(), "laptop".to_string())].into();
    let ups = a.build(&k1, |u| {
        u.add_key(Key::ed25519(k2.public(), 2)).unwrap();
        u.add_key(Key::ed25519(k3.public(), 1)).unwrap();
        u.set_key_vote(&k3.public(), 5).unwrap();
        u.set_key_meta(&k2.public(), meta.clone()).unwrap();
        u.remove_key(&k1.public()).unwrap();
        // Adding an existing key or removing an unknown one fails in the builder.
        assert!(u.add_key(Key::ed25519(k2.public(), 1)).is_err());
        assert!(u.remove_key(&k1.public()).is_err());
    });
    assert_eq!(ups.len(), 5);
    a.inform(&ups).unwrap();
    b.inform(&ups).unwrap();
    assert_eq!(a.auth.head(), ups[4].hash());
    assert_eq!(a.auth.state(), b.auth.state());
    let keys = a.auth.keys();
    assert_eq!(keys.len(), 2);
    assert_eq!(keys[0].id(), Some(&k2.public()[..]));
    assert_eq!(keys[0].meta.as_ref(), Some(&meta));
    assert_eq!(keys[1].votes, 5);
    assert!(!a.auth.key_trusted(&k1.public()));

    // Re-informing known AUMs is idempotent; reopening from storage gives the same authority.
    b.inform(&ups).unwrap();
    assert_eq!(b.auth.head(), a.auth.head());
    assert_eq!(Authority::open(&a.store).unwrap(), a.auth);

    // k1 is no longer trusted: its updates are rejected.
    let stale = child(a.auth.head_aum(), noop(), &[&k1]);
    assert!(a.inform(&[stale]).is_err());
}

#[test]
fn rejects_bad_updates_and_stores_nothing() {
    let (k1, k2) = (sk(1), sk(2));
    let (mut a, genesis) = Node::create(&[(&k1, 1)], &k1);
    let before = a.store.len();

    // Unknown signer.
    let e = a.inform(&[child(&genesis, noop(), &[&k2])]).unwrap_err();
    assert!(e.to_string().contains("bad keyID"), "{e}");
    // One good and one unknown signature: still rejected.
    let e = a
        .inform(&[child(&genesis, noop(), &[&k1, &k2])])
        .unwrap_err();
    assert!(e.to_string().contains("bad keyID"), "{e}");
    // Bad signature bytes.
    let mut bad = child(&genesis, noop(), &[&k1]);
    bad.signatures[0].signature.as_mut().unwrap()[0] ^= 1;
    let e = a.inform(&[bad]).unwrap_err();
    assert!(e.to_string().contains("invalid signature"), "{e}");
    // Unsigned.
    let e = a.inform(&[child(&genesis, noop(), &[])]).unwrap_err();
    assert!(e.to_string().contains("unsigned"), "{e}");
    // Wrong parent (not stored).
    let mut orphan = noop();
    orphan.prev_aum_hash = Some(vec![9; 32]);
    orphan.sign(&k1);
    assert!(a.inform(&[orphan]).is_err());
    // No parent at all.
    let mut genesis2 = noop();
    genesis2.sign(&k1);
    let e = a.inform(&[genesis2]).unwrap_err();
    assert!(e.to_string().contains("missing parent"), "{e}");
    // Removing the last key.
    let e = a
        .inform(&[child(&genesis, remove_key_aum(&k1), &[&k1])])
        .unwrap_err();
    assert!(e.to_string().contains("last key"), "{e}");
    // Statically invalid: AddKey with zero votes; AddKey carrying a KeyID.
    let e = a
        .inform(&[child(&genesis, add_key_aum(&k2, 0), &[&k1])])
        .unwrap_err();
    assert!(e.to_string().contains("votes"), "{e}");
    let mut both = add_key_aum(&k2, 1);
    both.key_id = Some(vec![]);
    let e = a.inform(&[child(&genesis, both, &[&k1])]).unwrap_err();
    assert!(e.to_string().contains("only specify a Key"), "{e}");
    // A checkpoint with foreign state IDs.
    let mut foreign = genesis_state(&[(&k1, 1)]);
    foreign.state_id1 = 8;
    let cp = Aum {
        message_kind: AumKind::CHECKPOINT,
        state: Some(foreign),
        ..Default::default()
    };
    let e = a.inform(&[child(&genesis, cp, &[&k1])]).unwrap_err();
    assert!(e.to_string().contains("stateID"), "{e}");
    // A batch whose second update is bad commits nothing, not even the good first one.
    let good = child(&genesis, noop(), &[&k1]);
    let bad = child(&good, noop(), &[&k2]);
    assert!(a.inform(&[good.clone(), bad]).is_err());
    assert_eq!(a.store.len(), before);
    assert!(a.store.aum(&good.hash()).unwrap().is_none());
    assert_eq!(a.auth.head(), genesis.hash());
    // Updates that conflict with state (adding an existing key) fail to apply.
    let e = a
        .inform(&[child(&genesis, add_key_aum(&k1, 1), &[&k1])])
        .unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    // Empty batch.
    assert!(a.inform(&[]).is_err());
}

#[test]
fn bootstrap_rules() {
    let (k1, k2) = (sk(1), sk(2));
    // Signed by a key not in its own state.
    let mut g = Aum {
        message_kind: AumKind::CHECKPOINT,
        state: Some(genesis_state(&[(&k1, 1)])),
        ..Default::default()
    };
    g.sign(&k2);
    assert!(Authority::bootstrap(&mut MemChonk::new(), &g).is_err());
    // Not a checkpoint.
    let mut n = add_key_aum(&k1, 1);
    n.sign(&k1);
    assert!(Authority::bootstrap(&mut MemChonk::new(), &n).is_err());
    // Non-empty storage.
    let (mut a, genesis) = Node::create(&[(&k1, 1)], &k1);
    assert!(Authority::bootstrap(&mut a.store, &genesis).is_err());
    // No disablement values.
    let mut st = genesis_state(&[(&k1, 1)]);
    st.disablement_values = None;
    assert!(Authority::create(&mut MemChonk::new(), st, &k1).is_err());
}

#[test]
fn fork_resolution_by_weight_then_remove_then_hash() {
    let (k1, k2, k3) = (sk(1), sk(2), sk(3));
    let (a, genesis) = Node::create(&[(&k1, 1), (&k2, 3), (&k3, 1)], &k1);
    drop(a);

    // Weight: k2 (3 votes) beats k1+k3 (2 votes), whatever the order of arrival.
    let light = child(&genesis, noop(), &[&k1, &k3]);
    let heavy = child(&genesis, add_key_aum(&sk(4), 1), &[&k2]);
    for order in [[&light, &heavy], [&heavy, &light]] {
        let mut n = Node::bootstrap(&genesis);
        n.inform(&[order[0].clone()]).unwrap();
        n.inform(&[order[1].clone()]).unwrap();
        assert_eq!(n.auth.head(), heavy.hash());
        assert!(n.auth.key_trusted(&sk(4).public()));
        // The losing branch is stored, not rejected.
        assert!(n.store.aum(&light.hash()).unwrap().is_some());
        assert_eq!(Authority::open(&n.store).unwrap().head(), heavy.hash());
    }

    // A key signing twice counts once.
    let twice = child(&genesis, noop(), &[&k1, &k1]);
    let once = child(&genesis, add_key_aum(&sk(5), 1), &[&k3]);
    let s = genesis.state.clone().unwrap();
    assert_eq!(twice.weight(&s), 1);
    assert_eq!(once.weight(&s), 1);

    // Equal weight: RemoveKey wins.
    let rm = child(&genesis, remove_key_aum(&k3), &[&k1]);
    let add = child(&genesis, add_key_aum(&sk(6), 1), &[&k3]);
    let mut n = Node::bootstrap(&genesis);
    n.inform(std::slice::from_ref(&add)).unwrap();
    n.inform(std::slice::from_ref(&rm)).unwrap();
    assert_eq!(n.auth.head(), rm.hash());

    // Equal weight, same kind: the smallest hash wins.
    let x = child(&genesis, add_key_aum(&sk(7), 1), &[&k1]);
    let y = child(&genesis, add_key_aum(&sk(8), 1), &[&k3]);
    let mut n = Node::bootstrap(&genesis);
    n.inform(&[x.clone(), y.clone()]).unwrap();
    assert_eq!(n.auth.head(), x.hash().min(y.hash()));

    // The state of the losing branch is still computable.
    let loser = if x.hash() < y.hash() { &y } else { &x };
    let st = weft_tka::authority::compute_state_at(&n.store, 2000, loser.hash()).unwrap();
    assert_eq!(st.last_aum_hash, Some(loser.hash()));
    assert_eq!(st.keys().len(), 4);
}

#[test]
fn longer_branch_only_wins_through_its_first_fork_child() {
    // Fork resolution judges siblings, not branch lengths.
    let (k1, k2) = (sk(1), sk(2));
    let (_, genesis) = Node::create(&[(&k1, 1), (&k2, 2)], &k1);
    let short = child(&genesis, noop(), &[&k2]);
    let long1 = child(&genesis, noop(), &[&k1]);
    let long2 = child(&long1, noop(), &[&k1]);
    let mut n = Node::bootstrap(&genesis);
    n.inform(&[long1, long2]).unwrap();
    n.inform(std::slice::from_ref(&short)).unwrap();
    assert_eq!(n.auth.head(), short.hash());
}

#[test]
fn checkpoints_are_added_every_50() {
    let k1 = sk(1);
    let (mut a, _) = Node::create(&[(&k1, 1)], &k1);
    let mut checkpoints = 0;
    for _ in 0..60 {
        let ups = a.build(&k1, |u| u.no_op().unwrap());
        checkpoints += ups
            .iter()
            .filter(|u| u.message_kind == AumKind::CHECKPOINT)
            .count();
        a.inform(&ups).unwrap();
    }
    assert_eq!(checkpoints, 1);
    // Replaying from storage still works (the checkpoint restarts the state computation).
    assert_eq!(Authority::open(&a.store).unwrap(), a.auth);
}

#[test]
fn sync_head_and_tail_intersections() {
    let (k1, k2) = (sk(1), sk(2));
    let (mut a, genesis) = Node::create(&[(&k1, 1), (&k2, 1)], &k1);
    let mut b = Node::bootstrap(&genesis);

    // A moves ahead (with a checkpoint on the way); B is behind: head intersection.
    for _ in 0..55 {
        let ups = a.build(&k1, |u| u.no_op().unwrap());
        a.inform(&ups).unwrap();
    }
    let a_offer = a.auth.sync_offer(&a.store).unwrap();
    assert_eq!(
        a_offer.ancestors.len(),
        2,
        "one checkpoint, then the genesis"
    );
    assert_eq!(a_offer.ancestors.last(), Some(&genesis.hash()));
    let b_offer = b.auth.sync_offer(&b.store).unwrap();
    assert_eq!(b_offer.ancestors, vec![genesis.hash()]);
    let missing = a.auth.missing_aums(&a.store, &b_offer).unwrap();
    assert_eq!(missing.len(), a.store.len() - 1);
    assert!(b.auth.missing_aums(&b.store, &a_offer).unwrap().is_empty());
    b.inform(&missing).unwrap();
    assert_eq!(b.auth.head(), a.auth.head());
    assert!(a
        .auth
        .missing_aums(&a.store, &b.auth.sync_offer(&b.store).unwrap())
        .unwrap()
        .is_empty());

    // Both diverge: each sends what the other lacks (tail intersection), and they converge.
    let fa = a.build(&k1, |u| u.add_key(Key::ed25519(sk(3).public(), 1)).unwrap());
    a.inform(&fa).unwrap();
    let fb = b.build(&k2, |u| u.add_key(Key::ed25519(sk(4).public(), 1)).unwrap());
    b.inform(&fb).unwrap();
    let (oa, ob) = (
        a.auth.sync_offer(&a.store).unwrap(),
        b.auth.sync_offer(&b.store).unwrap(),
    );
    let to_b = a.auth.missing_aums(&a.store, &ob).unwrap();
    let to_a = b.auth.missing_aums(&b.store, &oa).unwrap();
    assert!(to_b.iter().any(|x| x.hash() == fa[0].hash()));
    assert!(to_a.iter().any(|x| x.hash() == fb[0].hash()));
    a.inform(&to_a).unwrap();
    b.inform(&to_b).unwrap();
    assert_eq!(a.auth.head(), b.auth.head());
    assert_eq!(a.auth.state(), b.auth.state());

    // Text form of offers round-trips.
    let (h, anc) = oa.to_text();
    assert_eq!(SyncOffer::from_text(&h, &anc).unwrap(), oa);
}

#[test]
fn sync_without_intersection() {
    let k1 = sk(1);
    let (a, _) = Node::create(&[(&k1, 1)], &k1);
    let mut st = genesis_state(&[(&k1, 1)]);
    st.state_id1 = 99;
    let mut store = MemChonk::new();
    let (other, _) = Authority::create(&mut store, st, &k1).unwrap();
    let offer = other.sync_offer(&store).unwrap();
    assert_eq!(
        a.auth.missing_aums(&a.store, &offer),
        Err(TkaError::NoIntersection)
    );
}

#[test]
fn retroactive_revocation_overrides_a_compromised_branch() {
    let (good1, good2, bad) = (sk(1), sk(2), sk(3));
    let (mut a, genesis) = Node::create(&[(&good1, 1), (&good2, 1), (&bad, 1)], &good1);
    // The compromised key adds an evil key.
    let evil = a.build(&bad, |u| {
        u.add_key(Key::ed25519(sk(9).public(), 1)).unwrap()
    });
    a.inform(&evil).unwrap();
    assert!(a.auth.key_trusted(&sk(9).public()));

    let mut fork = a
        .auth
        .make_retroactive_revocation(
            &a.store,
            // As in Tailscale, the new state is the current one minus the listed keys, so the
            // keys the compromised key added must be listed too.
            &[bad.public().to_vec(), sk(9).public().to_vec()],
            &good1.public(),
            None,
        )
        .unwrap();
    assert_eq!(fork.parent(), Some(genesis.hash()));
    fork.sign(&good1);
    fork.sign(&good2);
    a.inform(&[fork.clone()]).unwrap();
    assert_eq!(a.auth.head(), fork.hash());
    assert!(!a.auth.key_trusted(&bad.public()));
    assert!(!a.auth.key_trusted(&sk(9).public()));
}

#[test]
fn disablement() {
    let k1 = sk(1);
    let (a, _) = Node::create(&[(&k1, 1)], &k1);
    assert!(a.auth.valid_disablement(&[0xa5; 32]));
    assert!(!a.auth.valid_disablement(&[0xa4; 32]));
}

fn node(n: u8) -> weft_key::NodePublic {
    NodePrivate::from_bytes([n; 32]).public()
}

#[test]
fn node_key_signatures() {
    let (k1, rot, cred_key) = (sk(1), sk(2), sk(3));
    let (a, _) = Node::create(&[(&k1, 1)], &k1);
    let auth = &a.auth;

    // Direct, with a rotation key.
    let direct = NodeKeySignature::new_direct(&node(10), &k1, Some(rot.public()));
    auth.node_key_authorized(&node(10), &direct.serialize())
        .unwrap();
    assert!(auth
        .node_key_authorized(&node(11), &direct.serialize())
        .is_err());
    let direct_untrusted = NodeKeySignature::new_direct(&node(10), &sk(7), None);
    assert!(auth
        .node_key_authorized(&node(10), &direct_untrusted.serialize())
        .is_err());
    let mut tampered = direct.clone();
    tampered.signature[5] ^= 1;
    assert!(auth
        .node_key_authorized(&node(10), &tampered.serialize())
        .is_err());
    assert_eq!(
        auth.node_key_authorized_with_details(&node(10), &direct.serialize())
            .unwrap(),
        None
    );

    // Rotation signed by the wrapping key; details list the previous key.
    let rotated = NodeKeySignature::new_rotation(&node(11), direct.clone(), &rot);
    let d = auth
        .node_key_authorized_with_details(&node(11), &rotated.serialize())
        .unwrap()
        .unwrap();
    assert_eq!(d.prev_node_keys, vec![node(10)]);
    assert_eq!(d.initial_sig.as_ref(), Some(&direct));
    // Rotation signed by the wrong key.
    let wrong = NodeKeySignature::new_rotation(&node(11), direct.clone(), &k1);
    assert!(auth
        .node_key_authorized(&node(11), &wrong.serialize())
        .is_err());
    // Rotation of a Direct without wrapping key cannot verify.
    let no_wrap = NodeKeySignature::new_direct(&node(10), &k1, None);
    let r = NodeKeySignature::new_rotation(&node(11), no_wrap, &rot);
    assert!(auth.node_key_authorized(&node(11), &r.serialize()).is_err());

    // Twice rotated: the wrapping key is inherited through the inner rotation.
    let rotated2 = NodeKeySignature::new_rotation(&node(12), rotated.clone(), &rot);
    let d = auth
        .node_key_authorized_with_details(&node(12), &rotated2.serialize())
        .unwrap()
        .unwrap();
    assert_eq!(d.prev_node_keys, vec![node(11), node(10)]);
    // A bad intermediate signature breaks the chain.
    let mut broken = rotated2.clone();
    broken.nested.as_mut().unwrap().signature[0] ^= 1;
    assert!(auth
        .node_key_authorized(&node(12), &broken.serialize())
        .is_err());

    // Credential: never alone, fine inside a rotation.
    let cred = NodeKeySignature::new_credential(&k1, cred_key.public());
    assert!(auth
        .node_key_authorized(&node(13), &cred.serialize())
        .is_err());
    let via_cred = NodeKeySignature::new_rotation(&node(13), cred.clone(), &cred_key);
    let d = auth
        .node_key_authorized_with_details(&node(13), &via_cred.serialize())
        .unwrap()
        .unwrap();
    assert!(d.prev_node_keys.is_empty());
    assert_eq!(d.initial_sig.unwrap().sig_kind, SigKind::CREDENTIAL);
    assert!(auth
        .node_key_authorized(&node(14), &via_cred.serialize())
        .is_err());

    // A Direct with a nested signature is invalid.
    let mut nested_direct = NodeKeySignature::new_direct(&node(10), &k1, None);
    nested_direct.nested = Some(Box::new(direct.clone()));
    nested_direct.sign(&k1);
    assert!(auth
        .node_key_authorized(&node(10), &nested_direct.serialize())
        .is_err());

    // Garbage and kind 0.
    assert!(auth.node_key_authorized(&node(10), &[0xff]).is_err());
    assert!(auth
        .node_key_authorized(&node(10), &[0xa1, 0x01, 0x00])
        .is_err());
    assert_eq!(node_key_binary(&node(10))[..2], *b"np");
}

#[test]
fn deep_rotation_chains_and_resign_trimming() {
    let (k1, rot) = (sk(1), sk(2));
    let (a, _) = Node::create(&[(&k1, 1)], &k1);
    let direct = NodeKeySignature::new_direct(&node(1), &k1, Some(rot.public()));

    // 15 rotations around the direct signature: 16 levels, the decoder maximum.
    let mut sig = direct.clone();
    for i in 0..15u8 {
        sig = NodeKeySignature::new_rotation(&node(100 + i), sig, &rot);
    }
    assert_eq!(sig.chain_length(), 16);
    a.auth
        .node_key_authorized(&node(114), &sig.serialize())
        .unwrap();

    // Re-signing for the same key returns the input verbatim.
    let same = resign_nks(&rot, &node(114), &sig.serialize()).unwrap();
    assert_eq!(same, sig.serialize());

    // Re-signing for a new key trims to the initial signature plus 14 previous keys.
    let resigned = resign_nks(&rot, &node(200), &sig.serialize()).unwrap();
    let d = a
        .auth
        .node_key_authorized_with_details(&node(200), &resigned)
        .unwrap()
        .unwrap();
    let mut want: Vec<_> = (1..15u8).rev().map(|i| node(100 + i)).collect();
    want.push(node(1));
    assert_eq!(d.prev_node_keys, want);
    assert_eq!(
        NodeKeySignature::decode(&resigned).unwrap().chain_length(),
        16
    );

    // First rotation from a direct signature.
    let first = resign_nks(&rot, &node(2), &direct.serialize()).unwrap();
    let d = a
        .auth
        .node_key_authorized_with_details(&node(2), &first)
        .unwrap()
        .unwrap();
    assert_eq!(d.prev_node_keys, vec![node(1)]);
}
