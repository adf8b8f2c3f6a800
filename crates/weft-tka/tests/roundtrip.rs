//! Property tests: decode(encode(x)) == x, encodings are canonical, and arbitrary bytes never
//! panic the decoders.

use std::collections::BTreeMap;

use proptest::prelude::*;
use weft_tka::{
    Aum, AumHash, AumKind, AumSignature, Key, KeyKind, NodeKeySignature, SigKind, State,
};

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// Omitempty byte fields: `None` or non-empty (an empty `Some` encodes like `None`).
fn opt_nonempty(max: usize) -> impl Strategy<Value = Option<Vec<u8>>> {
    prop::option::of(prop::collection::vec(any::<u8>(), 1..max))
}

fn meta() -> impl Strategy<Value = BTreeMap<String, String>> {
    prop::collection::btree_map("[a-z_]{0,30}", ".{0,8}", 0..5)
}

fn key() -> impl Strategy<Value = Key> {
    (
        any::<u8>(),
        any::<u64>(),
        prop::option::of(bytes(40)),
        prop::option::of(meta().prop_filter("non-empty", |m| !m.is_empty())),
    )
        .prop_map(|(kind, votes, public, meta)| Key {
            kind: KeyKind(kind),
            votes,
            public,
            meta,
        })
}

fn state() -> impl Strategy<Value = State> {
    (
        prop::option::of(any::<[u8; 32]>().prop_map(AumHash)),
        prop::option::of(prop::collection::vec(bytes(40), 0..4)),
        prop::option::of(prop::collection::vec(key(), 0..4)),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(last, dv, keys, id1, id2)| State {
            last_aum_hash: last,
            disablement_values: dv,
            keys,
            state_id1: id1,
            state_id2: id2,
        })
}

fn aum() -> impl Strategy<Value = Aum> {
    (
        any::<u8>(),
        prop::option::of(bytes(40)),
        prop::option::of(key()),
        opt_nonempty(40),
        prop::option::of(state()),
        prop::option::of(any::<u64>()),
        prop::option::of(meta().prop_filter("non-empty", |m| !m.is_empty())),
        prop::collection::vec(
            (prop::option::of(bytes(40)), prop::option::of(bytes(70))).prop_map(|(k, s)| {
                AumSignature {
                    key_id: k,
                    signature: s,
                }
            }),
            0..3,
        ),
    )
        .prop_map(
            |(kind, prev, key, key_id, state, votes, meta, signatures)| Aum {
                message_kind: AumKind(kind),
                prev_aum_hash: prev,
                key,
                key_id,
                state,
                votes,
                meta,
                signatures,
            },
        )
}

fn nks() -> impl Strategy<Value = NodeKeySignature> {
    let leaf = (any::<u8>(), bytes(40), bytes(40), bytes(70), bytes(40)).prop_map(
        |(kind, pubkey, key_id, signature, wrapping_pubkey)| NodeKeySignature {
            sig_kind: SigKind(kind),
            pubkey,
            key_id,
            signature,
            nested: None,
            wrapping_pubkey,
        },
    );
    leaf.prop_recursive(8, 16, 1, |inner| {
        (any::<u8>(), bytes(40), bytes(70), inner).prop_map(|(kind, pubkey, signature, n)| {
            NodeKeySignature {
                sig_kind: SigKind(kind),
                pubkey,
                signature,
                nested: Some(Box::new(n)),
                ..Default::default()
            }
        })
    })
}

proptest! {
    #[test]
    fn aum_round_trips_canonically(a in aum()) {
        let enc = a.serialize();
        prop_assert_eq!(Aum::decode_canonical(&enc).unwrap(), a.clone());
        // The sig-hash is the hash of the encoding without signatures.
        let mut unsigned = a.clone();
        unsigned.signatures.clear();
        prop_assert_eq!(a.sig_hash(), unsigned.hash().0);
    }

    #[test]
    fn nks_round_trips_canonically(s in nks()) {
        let enc = s.serialize();
        prop_assert_eq!(NodeKeySignature::decode_canonical(&enc).unwrap(), s);
    }

    #[test]
    fn decoders_never_panic(data in bytes(300)) {
        if let Ok(a) = Aum::decode(&data) {
            // Whatever decodes re-encodes canonically, and re-encoding is a fixed point.
            let enc = a.serialize();
            prop_assert_eq!(Aum::decode_canonical(&enc).unwrap().serialize(), enc);
        }
        if let Ok(s) = NodeKeySignature::decode(&data) {
            let enc = s.serialize();
            prop_assert_eq!(NodeKeySignature::decode_canonical(&enc).unwrap(), s);
        }
    }

    #[test]
    fn mutated_encodings_never_panic(a in aum(), pos in any::<usize>(), byte in any::<u8>()) {
        let mut enc = a.serialize();
        let i = pos % enc.len();
        enc[i] = byte;
        if let Ok(b) = Aum::decode(&enc) {
            let enc = b.serialize();
            prop_assert_eq!(Aum::decode_canonical(&enc).unwrap().serialize(), enc);
        }
    }
}

#[test]
fn empty_omitempty_values_normalise_to_absent() {
    let a = Aum {
        message_kind: AumKind::NO_OP,
        key_id: Some(vec![]),
        meta: Some(BTreeMap::new()),
        ..Default::default()
    };
    let b = Aum::decode(&a.serialize()).unwrap();
    assert_eq!(b.key_id, None);
    assert_eq!(b.meta, None);
    assert_eq!(a.hash(), b.hash());
    // ...but Go's nil checks see the difference, so static validation does too.
    let mut add = Aum {
        message_kind: AumKind::ADD_KEY,
        key: Some(Key::ed25519([1; 32], 1)),
        ..Default::default()
    };
    assert!(add.static_validate().is_ok());
    add.meta = Some(BTreeMap::new());
    assert!(add.static_validate().is_err());
}
