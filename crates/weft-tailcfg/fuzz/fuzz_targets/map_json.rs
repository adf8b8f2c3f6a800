//! `MapRequest` / `MapResponse` JSON decoding on arbitrary bytes: never panics, and what
//! decodes re-encodes to JSON that decodes again with the same peers and keys.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_tailcfg::{MapRequest, MapResponse};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = serde_json::from_slice::<MapRequest>(data) {
        let again: MapRequest = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(again.node_key, r.node_key);
        assert_eq!(again.disco_key, r.disco_key);
        assert_eq!(again.endpoints, r.endpoints);
        assert_eq!(again.stream, r.stream);
        assert_eq!(again.omit_peers, r.omit_peers);
    }
    if let Ok(m) = serde_json::from_slice::<MapResponse>(data) {
        let again: MapResponse = serde_json::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap();
        let ids = |v: &[weft_tailcfg::Node]| v.iter().map(|n| (n.id, n.key, n.key_expiry)).collect::<Vec<_>>();
        assert_eq!(ids(&again.peers), ids(&m.peers));
        assert_eq!(ids(&again.peers_changed), ids(&m.peers_changed));
        assert_eq!(again.peers_removed, m.peers_removed);
        assert_eq!(again.packet_filter.is_some(), m.packet_filter.is_some());
    }
});
