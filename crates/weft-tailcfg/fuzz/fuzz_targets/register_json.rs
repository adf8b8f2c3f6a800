//! `RegisterRequest` / `RegisterResponse` JSON decoding on arbitrary bytes: never panics,
//! and whatever decodes re-encodes to JSON that decodes to the same keys and times.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_tailcfg::{RegisterRequest, RegisterResponse};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<RegisterRequest>(data) {
        let again: RegisterRequest = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(again.node_key, r.node_key);
        assert_eq!(again.old_node_key, r.old_node_key);
        assert_eq!(again.expiry, r.expiry);
        assert_eq!(again.followup, r.followup);
        assert_eq!(again.auth.map(|a| a.auth_key), r.auth.map(|a| a.auth_key));
    }
    if let Ok(r) = serde_json::from_slice::<RegisterResponse>(data) {
        let again: RegisterResponse = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(again.auth_url, r.auth_url);
        assert_eq!(again.error, r.error);
    }
});
