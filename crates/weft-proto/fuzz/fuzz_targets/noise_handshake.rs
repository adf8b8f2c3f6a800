//! Feeds arbitrary bytes to every ts2021 handshake parser.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_key::MachinePrivate;
use weft_proto::noise::{parse_early_noise, response_frame_len, Initiator, Responder};

fuzz_target!(|data: &[u8]| {
    let server = MachinePrivate::from_bytes([1; 32]);
    let machine = MachinePrivate::from_bytes([2; 32]);
    if let Ok(r) = Responder::read_initiation(&server, data) {
        let _ = r.peer();
        let _ = r.respond([4; 32]);
    }
    let _ = response_frame_len(data);
    if let Ok(init) = Initiator::new(&machine, server.public(), 130, [3; 32]) {
        let _ = init.finish(data);
    }
    let _ = parse_early_noise(data);
});
