//! STUN request/response parsers and the responder on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_proto::stun;

fuzz_target!(|data: &[u8]| {
    let src = "192.0.2.1:3478".parse().unwrap();
    if let Some(resp) = stun::respond(data, src) {
        let (_, addr) = stun::parse_response(&resp).expect("our responses parse");
        assert_eq!(addr, src);
    }
    let _ = stun::parse_response(data);
});
