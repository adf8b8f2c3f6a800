//! Untrusted bytes through the packet parser and the inbound decision: must never panic.
//! Run: `cd crates/weft-filter/fuzz && cargo +nightly fuzz run parse_packet`
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::Instant;
use weft_filter::{PacketFilter, PacketView};
use weft_tailcfg::FilterRule;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut f = PacketFilter::new();
    let _ = f.set_rules(
        &[FilterRule::allow_all()],
        &["100.64.0.0/10".parse().unwrap(), "fd7a:115c:a1e0::/48".parse().unwrap()],
    );
    let _ = f.check_inbound_bytes(data, now);
    if let Ok(p) = PacketView::parse(data) {
        let _ = (p.src_port(), p.dst_port());
        let _ = f.track_outbound(&p, now);
        let _ = f.check_inbound(&p, now);
    }
});
