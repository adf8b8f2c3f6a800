//! Feeds arbitrary bytes to the ts2021 record decoder in arbitrary chunks,
//! and checks that encrypt-then-decode round-trips for arbitrary plaintexts
//! and cut points.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_key::MachinePrivate;
use weft_proto::noise::{Initiator, Responder, Transport};

fn pair() -> (Transport, Transport) {
    let server = MachinePrivate::from_bytes([1; 32]);
    let machine = MachinePrivate::from_bytes([2; 32]);
    let Ok(init) = Initiator::new(&machine, server.public(), 130, [3; 32]) else {
        panic!("fixed keys give a valid initiation");
    };
    let Ok(resp) = Responder::read_initiation(&server, init.initiation()) else {
        panic!("own initiation is accepted");
    };
    let Ok((msg2, s)) = resp.respond([4; 32]) else {
        panic!("fixed keys give a valid response");
    };
    let Ok(c) = init.finish(&msg2) else {
        panic!("own response is accepted");
    };
    (c, s)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (mut client, mut server) = pair();
    if mode & 1 == 0 {
        // Raw bytes, chunked by the low bits of `mode`.
        let step = usize::from(mode >> 1).max(1);
        let mut out = [0u8; 97];
        for chunk in rest.chunks(step) {
            server.rx.feed(chunk);
            loop {
                match server.rx.read_plaintext(&mut out) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        return;
    }
    // Round trip: `rest` is the plaintext; cut points come from its bytes.
    let mut wire = Vec::new();
    for piece in rest.split(|&b| b == 0xff) {
        if client.tx.encrypt(piece, &mut wire).is_err() {
            return;
        }
    }
    let expected: Vec<u8> = rest.iter().copied().filter(|&b| b != 0xff).collect();
    let mut got = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < wire.len() {
        let step = usize::from(rest.get(i % rest.len().max(1)).copied().unwrap_or(1)).max(1) * 13;
        i += 1;
        let n = step.min(wire.len() - pos);
        server.rx.feed(&wire[pos..pos + n]);
        pos += n;
        loop {
            match server.rx.next_plaintext() {
                Ok(Some(p)) => got.extend_from_slice(p),
                Ok(None) => break,
                Err(e) => panic!("own records must decrypt: {e}"),
            }
        }
    }
    assert_eq!(got, expected);
});
