//! AUM decoding on arbitrary bytes: never panics; whatever decodes re-encodes canonically and
//! re-encoding is a fixed point; validation and hashing never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_tka::{Aum, State};

fuzz_target!(|data: &[u8]| {
    let Ok(aum) = Aum::decode(data) else {
        return;
    };
    let enc = aum.serialize();
    let again = Aum::decode_canonical(&enc).expect("our encoding decodes canonically");
    assert_eq!(again.serialize(), enc);
    assert_eq!(again.hash(), aum.hash());
    let _ = aum.sig_hash();
    let _ = aum.static_validate();
    let _ = aum.weight(&State::default());
    let _ = weft_tka::verify_aum(&aum, aum.state.as_ref().unwrap_or(&State::default()), true);
    let _ = State::default().apply_verified_aum(&aum);
});
