//! Node-key signature decoding and verification on arbitrary bytes: never panics; decoded
//! signatures round-trip exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_tka::{Key, NodeKeySignature};

fuzz_target!(|data: &[u8]| {
    let Ok(sig) = NodeKeySignature::decode(data) else {
        return;
    };
    let enc = sig.serialize();
    assert_eq!(NodeKeySignature::decode_canonical(&enc).as_ref(), Ok(&sig));
    let _ = sig.authorizing_key_id();
    let _ = sig.rotation_details();
    let _ = sig.wrapping_public();
    let key = Key::ed25519([7; 32], 1);
    let _ = sig.verify_signature(&sig.pubkey, &key);
});
