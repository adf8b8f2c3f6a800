//! DERP frame parser, client core and server core on arbitrary bytes.
//!
//! The first byte picks the chunk size so frame boundaries land anywhere;
//! decoded frames are re-encoded and must decode to the same frame.
#![no_main]

use std::net::SocketAddr;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use weft_key::{NodePrivate, NodePublic};
use weft_proto::derp::{
    ClientConfig, ClientCore, ConnId, ConnInfo, Decoder, ServerCore, CLIENT_MAX_FRAME_LEN,
    SERVER_MAX_FRAME_LEN,
};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let now = Instant::now();

    let mut dec = Decoder::new(SERVER_MAX_FRAME_LEN);
    let mut server = ServerCore::new();
    let info = |port, mesh| ConnInfo {
        remote: SocketAddr::from(([127, 0, 0, 1], port)),
        is_mesh_peer: mesh,
        is_prober: false,
        can_ack_pings: true,
    };
    server.handle_connect(ConnId(1), NodePublic::from_bytes([1; 32]), info(1, true));
    server.handle_connect(ConnId(2), NodePublic::from_bytes([2; 32]), info(2, false));
    'outer: for piece in rest.chunks(chunk) {
        dec.extend(piece);
        loop {
            match dec.next_frame() {
                Ok(Some(f)) => {
                    let mut again = Decoder::new(CLIENT_MAX_FRAME_LEN);
                    again.extend(&f.to_bytes());
                    assert_eq!(again.next_frame().ok().flatten().as_ref(), Some(&f));
                    server.handle_frame(ConnId(1), f, now);
                    while server.poll_command().is_some() {}
                }
                Ok(None) => break,
                Err(_) => break 'outer,
            }
        }
    }

    let mut client = ClientCore::new(ClientConfig::new(NodePrivate::from_bytes([3; 32]), [0; 24]), now);
    for piece in rest.chunks(chunk) {
        if client.handle_input(piece, now).is_err() {
            break;
        }
        while client.poll_event().is_some() {}
        while client.poll_transmit().is_some() {}
    }
});
