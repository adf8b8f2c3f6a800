use proptest::prelude::*;

use super::*;

fn h32(s: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).expect("valid hex");
    out
}

fn hx(s: &str) -> Vec<u8> {
    hex::decode(s.replace([' ', '\n'], "")).expect("valid hex")
}

const SERVER_PRIV: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
const SERVER_PUB: &str = "8f40c5adb68f25624ae5b214ea767a6ec94d829d3d7b5e1ad1ba6f3e2138285f";
const MACHINE_PRIV: &str = "202122232425262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f";
const MACHINE_PUB: &str = "358072d6365880d1aeea329adf9121383851ed21a28e3b75e965d0d2cd166254";
const CLIENT_EPH: &str = "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f";
const SERVER_EPH: &str = "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f";
const MSG1: &str = "0082010060\
    79a631eede1bf9c98f12032cdeadd0e7a079398fc786b88cc846ec89af85a51a\
    5a5d3ec50c63b0e0156101cf138f46d05427ed87f592c2009bab26f178d726e3f9f218a1e002bd7ccc15154108a56bf9\
    6ff917c8329cc938928f51ba487e43a1";
const MSG2: &str = "020030\
    675dd574ed7789310b3d2e7681f3790b466c773b1521fecf36577958371ea52f\
    6a7db785c4017c14d4913e68639b27c7";
const HASH: &str = "06b746dad63b0aeda7feb70537f9f33e83901538817163ee1b26e9b63f893f6c";
const K1: &str = "8b2f6bbba15ce6d607c316355f2d3c93f62dcbe39b04eb873b5b2e2812dc71b6";
const K2: &str = "e8f7da7193cd2dd7834427bc5de410cc7fa42ea2bddb06906a91b23daf60a99b";
const C2S_0: &str = "04001575f1f2d6777cc3f81453c77f9ff260bb221db186eb";
const C2S_1: &str = "04001544b9b58daa0671bfb9e3db1e53510832fb0e594fa4";
const C2S_1_LE_WRONG: &str = "0400150ce71dbf97719aa5c202cbc085f41b4cc039dfa7b0";
const S2C_0: &str = "04001553905a351c26c5ba22418c643d7df5c327df4bd0a7";
const S2C_1: &str = "040015c6fb26fa44e18c248a49b7819aff381fad7b53007f";

fn server_key() -> MachinePrivate {
    MachinePrivate::from_bytes(h32(SERVER_PRIV))
}

fn machine_key() -> MachinePrivate {
    MachinePrivate::from_bytes(h32(MACHINE_PRIV))
}

fn vector_initiator() -> Initiator {
    Initiator::new(&machine_key(), server_key().public(), 130, h32(CLIENT_EPH))
        .expect("initiation builds")
}

/// Runs the Appendix A handshake; returns (client, server) transports.
fn vector_pair() -> (Transport, Transport) {
    let init = vector_initiator();
    let resp =
        Responder::read_initiation(&server_key(), init.initiation()).expect("server accepts msg1");
    let (msg2, server) = resp.respond(h32(SERVER_EPH)).expect("server responds");
    let client = init.finish(&msg2).expect("client accepts msg2");
    (client, server)
}

fn random_pair(seed: u8) -> (Transport, Transport) {
    let server = MachinePrivate::from_bytes([seed.wrapping_add(1); 32]);
    let machine = MachinePrivate::from_bytes([seed.wrapping_add(2); 32]);
    let init =
        Initiator::new(&machine, server.public(), 145, [seed.wrapping_add(3); 32]).expect("init");
    let resp = Responder::read_initiation(&server, init.initiation()).expect("accept");
    let (msg2, s) = resp.respond([seed.wrapping_add(4); 32]).expect("respond");
    (init.finish(&msg2).expect("finish"), s)
}

fn decode_all(dec: &mut RecordDecoder) -> Result<Vec<u8>, NoiseError> {
    let mut out = Vec::new();
    while let Some(p) = dec.next_plaintext()? {
        out.extend_from_slice(p);
    }
    Ok(out)
}

#[test]
fn vector_keys_match_appendix_a() {
    assert_eq!(server_key().public().to_bytes(), h32(SERVER_PUB));
    assert_eq!(machine_key().public().to_bytes(), h32(MACHINE_PUB));
}

#[test]
fn prologue_is_prefix_and_decimal_version() {
    assert_eq!(prologue(130), "Tailscale Control Protocol v130");
    assert_eq!(prologue(7), "Tailscale Control Protocol v7");
}

#[test]
fn initiation_matches_vector_byte_for_byte() {
    let init = vector_initiator();
    assert_eq!(init.initiation().as_slice(), hx(MSG1).as_slice());
}

#[test]
fn initiation_base64_matches_vector_header() {
    let init = vector_initiator();
    let b64 = "AIIBAGB5pjHu3hv5yY8SAyzerdDnoHk5j8eGuIzIRuyJr4WlGlpdPsUMY7DgFWEBzxOPRtBUJ+2H9ZLCAJurJvF41ybj+fIYoeACvXzMFRVBCKVr+W/5F8gynMk4ko9Rukh+Q6E=";
    use base64::Engine;
    assert_eq!(
        base64::engine::general_purpose::STANDARD.encode(init.initiation()),
        b64
    );
}

#[test]
fn response_matches_vector_and_both_sides_agree_on_keys() {
    let init = vector_initiator();
    let resp = Responder::read_initiation(&server_key(), init.initiation()).expect("accept");
    assert_eq!(resp.peer().to_bytes(), h32(MACHINE_PUB));
    assert_eq!(resp.version(), 130);
    let (msg2, server) = resp.respond(h32(SERVER_EPH)).expect("respond");
    assert_eq!(msg2.as_slice(), hx(MSG2).as_slice());
    assert_eq!(response_frame_len(&msg2[..3]), Ok(Some(RESPONSE_LEN)));
    let client = init.finish(&msg2).expect("finish");
    assert_eq!(client.handshake_hash, h32(HASH));
    assert_eq!(server.handshake_hash, h32(HASH));
    assert_eq!(client.peer.to_bytes(), h32(SERVER_PUB));
    assert_eq!(server.peer.to_bytes(), h32(MACHINE_PUB));
    assert_eq!(client.version, 130);
}

#[test]
fn split_keys_match_vector() {
    let mut c2s = RecordEncoder::new(&h32(K1));
    let mut s2c = RecordEncoder::new(&h32(K2));
    let mut out = Vec::new();
    c2s.encrypt_record(b"hello", &mut out).expect("encrypt");
    assert_eq!(out, hx(C2S_0));
    out.clear();
    s2c.encrypt_record(b"world", &mut out).expect("encrypt");
    assert_eq!(out, hx(S2C_0));
}

#[test]
fn records_match_vector_with_big_endian_nonce() {
    let (mut client, mut server) = vector_pair();
    let mut out = Vec::new();
    client.tx.encrypt_record(b"hello", &mut out).expect("n=0");
    assert_eq!(out, hx(C2S_0));
    out.clear();
    client.tx.encrypt_record(b"hello", &mut out).expect("n=1");
    assert_eq!(out, hx(C2S_1));
    assert_ne!(
        out,
        hx(C2S_1_LE_WRONG),
        "little-endian nonce must not match"
    );

    out.clear();
    server.tx.encrypt_record(b"world", &mut out).expect("n=0");
    assert_eq!(out, hx(S2C_0));
    out.clear();
    server.tx.encrypt_record(b"world", &mut out).expect("n=1");
    assert_eq!(out, hx(S2C_1));
}

#[test]
fn decoder_accepts_vector_records_and_rejects_little_endian_one() {
    let (mut client, mut server) = vector_pair();
    server.rx.feed(&hx(C2S_0));
    server.rx.feed(&hx(C2S_1));
    assert_eq!(decode_all(&mut server.rx), Ok(b"hellohello".to_vec()));

    client.rx.feed(&hx(S2C_0));
    client.rx.feed(&hx(S2C_1));
    assert_eq!(decode_all(&mut client.rx), Ok(b"worldworld".to_vec()));

    let (_, mut server) = vector_pair();
    server.rx.feed(&hx(C2S_0));
    server.rx.feed(&hx(C2S_1_LE_WRONG));
    assert_eq!(server.rx.next_plaintext(), Ok(Some(&b"hello"[..])));
    assert_eq!(server.rx.next_plaintext(), Err(NoiseError::Decrypt));
    assert_eq!(server.rx.next_plaintext(), Err(NoiseError::Poisoned));
}

#[test]
fn many_records_in_both_directions_round_trip() {
    let (mut client, mut server) = random_pair(9);
    for i in 0..300u32 {
        let msg = format!("message {i} {}", "x".repeat((i as usize * 37) % 5000));
        let mut wire = Vec::new();
        client
            .tx
            .encrypt(msg.as_bytes(), &mut wire)
            .expect("c encrypt");
        server.rx.feed(&wire);
        assert_eq!(
            decode_all(&mut server.rx).expect("s decrypt"),
            msg.as_bytes()
        );

        let reply = msg.to_uppercase();
        wire.clear();
        server
            .tx
            .encrypt(reply.as_bytes(), &mut wire)
            .expect("s encrypt");
        client.rx.feed(&wire);
        assert_eq!(
            decode_all(&mut client.rx).expect("c decrypt"),
            reply.as_bytes()
        );
    }
    assert!(client.tx.nonce() > 300);
    assert_eq!(client.tx.nonce(), server.rx.nonce());
    assert_eq!(server.tx.nonce(), client.rx.nonce());
}

#[test]
fn large_write_splits_into_max_size_records() {
    let (mut client, mut server) = random_pair(1);
    let data = vec![0xabu8; MAX_PLAINTEXT_SIZE * 2 + 1];
    let mut wire = Vec::new();
    client.tx.encrypt(&data, &mut wire).expect("encrypt");
    assert_eq!(wire.len(), 2 * MAX_MESSAGE_SIZE + HEADER_LEN + 1 + TAG_LEN);
    assert_eq!(&wire[..3], &[4, 0x0f, 0xfd]);
    server.rx.feed(&wire);
    assert_eq!(
        server.rx.next_plaintext().expect("1").map(<[u8]>::len),
        Some(MAX_PLAINTEXT_SIZE)
    );
    assert_eq!(
        server.rx.next_plaintext().expect("2").map(<[u8]>::len),
        Some(MAX_PLAINTEXT_SIZE)
    );
    assert_eq!(
        server.rx.next_plaintext().expect("3").map(<[u8]>::len),
        Some(1)
    );
    assert_eq!(server.rx.next_plaintext(), Ok(None));
}

#[test]
fn oversized_plaintext_record_is_refused() {
    let (mut client, _) = random_pair(2);
    let mut out = Vec::new();
    assert_eq!(
        client
            .tx
            .encrypt_record(&[0; MAX_PLAINTEXT_SIZE + 1], &mut out),
        Err(NoiseError::PlaintextTooBig(MAX_PLAINTEXT_SIZE + 1))
    );
    assert!(out.is_empty());
}

#[test]
fn empty_records_are_skipped() {
    let (mut client, mut server) = random_pair(3);
    let mut wire = Vec::new();
    client.tx.encrypt_record(&[], &mut wire).expect("empty");
    client.tx.encrypt_record(&[], &mut wire).expect("empty");
    client.tx.encrypt_record(b"x", &mut wire).expect("x");
    server.rx.feed(&wire);
    assert_eq!(server.rx.next_plaintext(), Ok(Some(&b"x"[..])));
    assert_eq!(server.rx.next_plaintext(), Ok(None));
}

#[test]
fn frame_header_over_4096_is_rejected_before_the_body_arrives() {
    let (_, mut server) = random_pair(4);
    server.rx.feed(&[4, 0x0f, 0xfe]);
    assert_eq!(
        server.rx.next_plaintext(),
        Err(NoiseError::FrameTooBig(4097))
    );
}

#[test]
fn non_record_frame_is_rejected() {
    let (_, mut server) = random_pair(5);
    server.rx.feed(&[2, 0, 48]);
    assert_eq!(server.rx.next_plaintext(), Err(NoiseError::NotRecord(2)));
}

#[test]
fn record_shorter_than_tag_is_rejected() {
    let (_, mut server) = random_pair(6);
    server.rx.feed(&[4, 0, 3, 1, 2, 3]);
    assert_eq!(server.rx.next_plaintext(), Err(NoiseError::Decrypt));
}

#[test]
fn read_space_and_commit_feed_the_decoder() {
    let (mut client, mut server) = random_pair(7);
    let mut wire = Vec::new();
    client
        .tx
        .encrypt(b"direct read", &mut wire)
        .expect("encrypt");
    let space = server.rx.read_space();
    assert!(space.len() >= MAX_MESSAGE_SIZE);
    space[..wire.len()].copy_from_slice(&wire);
    server.rx.commit(wire.len());
    assert_eq!(server.rx.next_plaintext(), Ok(Some(&b"direct read"[..])));
}

#[test]
fn read_plaintext_hands_out_records_in_small_pieces() {
    let (mut client, mut server) = random_pair(8);
    let mut wire = Vec::new();
    client
        .tx
        .encrypt_record(b"abcdefg", &mut wire)
        .expect("encrypt");
    client
        .tx
        .encrypt_record(b"hij", &mut wire)
        .expect("encrypt");
    server.rx.feed(&wire[..wire.len() - 1]);
    let mut out = [0u8; 3];
    assert_eq!(server.rx.read_plaintext(&mut out), Ok(3));
    assert_eq!(&out, b"abc");
    assert_eq!(server.rx.pending_plaintext(), 4);
    // Feeding more input keeps the undelivered plaintext intact.
    server.rx.feed(&wire[wire.len() - 1..]);
    let mut out = [0u8; 16];
    assert_eq!(server.rx.read_plaintext(&mut out), Ok(7));
    assert_eq!(&out[..7], b"defghij");
    assert_eq!(server.rx.read_plaintext(&mut out), Ok(0));
}

#[test]
fn responder_rejects_wrong_size_type_and_length() {
    let init = vector_initiator();
    let msg = *init.initiation();
    let key = server_key();
    assert_eq!(
        Responder::read_initiation(&key, &msg[..100]).map(|_| ()),
        Err(NoiseError::InitiationSize(100))
    );
    let mut bad = msg;
    bad[2] = 2;
    assert_eq!(
        Responder::read_initiation(&key, &bad).map(|_| ()),
        Err(NoiseError::UnexpectedType(2))
    );
    let mut bad = msg;
    bad[4] = 0x61;
    assert_eq!(
        Responder::read_initiation(&key, &bad).map(|_| ()),
        Err(NoiseError::InitiationLength(0x61))
    );
}

#[test]
fn responder_rejects_tampered_initiation_and_wrong_server_key() {
    let init = vector_initiator();
    let msg = *init.initiation();
    for i in 5..INITIATION_LEN {
        let mut bad = msg;
        bad[i] ^= 0x01;
        assert!(
            Responder::read_initiation(&server_key(), &bad).is_err(),
            "byte {i}"
        );
    }
    let other = MachinePrivate::from_bytes([9; 32]);
    assert_eq!(
        Responder::read_initiation(&other, &msg).map(|_| ()),
        Err(NoiseError::HandshakeDecrypt)
    );
}

#[test]
fn responder_uses_the_clients_version_in_the_prologue() {
    let init =
        Initiator::new(&machine_key(), server_key().public(), 42, h32(CLIENT_EPH)).expect("init");
    let resp = Responder::read_initiation(&server_key(), init.initiation()).expect("accept");
    assert_eq!(resp.version(), 42);
    let mut tampered = *init.initiation();
    tampered[1] = 43;
    assert_eq!(
        Responder::read_initiation(&server_key(), &tampered).map(|_| ()),
        Err(NoiseError::HandshakeDecrypt)
    );
}

#[test]
fn initiator_reports_server_error_frames() {
    let frame = encode_error("no thanks");
    assert_eq!(response_frame_len(&frame[..3]), Ok(Some(3 + 9)));
    assert_eq!(
        vector_initiator().finish(&frame).map(|_| ()),
        Err(NoiseError::Server("no thanks".into()))
    );
}

#[test]
fn initiator_rejects_bad_response_frames() {
    assert_eq!(response_frame_len(&[2, 0]), Ok(None));
    assert_eq!(
        response_frame_len(&[4, 0, 48]),
        Err(NoiseError::UnexpectedType(4))
    );
    assert_eq!(
        response_frame_len(&[2, 0, 47]),
        Err(NoiseError::ResponseLength(47))
    );
    let msg2 = hx(MSG2);
    assert_eq!(
        vector_initiator().finish(&msg2[..50]).map(|_| ()),
        Err(NoiseError::ResponseSize(50))
    );
    let mut bad = msg2.clone();
    bad[40] ^= 1;
    assert_eq!(
        vector_initiator().finish(&bad).map(|_| ()),
        Err(NoiseError::HandshakeDecrypt)
    );
    assert_eq!(
        vector_initiator().finish(&[]).map(|_| ()),
        Err(NoiseError::ResponseSize(0))
    );
}

#[test]
fn low_order_server_ephemeral_is_rejected() {
    let mut msg2 = hx(MSG2);
    msg2[3..35].copy_from_slice(&[0; 32]);
    assert_eq!(
        vector_initiator().finish(&msg2).map(|_| ()),
        Err(NoiseError::LowOrderPoint)
    );
}

#[test]
fn low_order_client_ephemeral_is_rejected() {
    let mut msg = *vector_initiator().initiation();
    msg[5..37].copy_from_slice(&[0; 32]);
    assert_eq!(
        Responder::read_initiation(&server_key(), &msg).map(|_| ()),
        Err(NoiseError::LowOrderPoint)
    );
}

#[test]
fn error_frame_text_is_truncated_below_64k() {
    let long = "é".repeat(40_000);
    let frame = encode_error(&long);
    let len = usize::from(u16::from_be_bytes([frame[1], frame[2]]));
    assert_eq!(frame.len(), 3 + len);
    assert!(len <= 65_535);
    assert!(std::str::from_utf8(&frame[3..]).is_ok());
}

#[test]
fn early_noise_challenge_encodes_like_appendix_a() {
    let chal = ChallengePublic::from_bytes([0xcc; 32]);
    let enc = encode_early_noise_challenge(&chal);
    assert_eq!(&enc[..9], &[0xff, 0xff, 0xff, 0x54, 0x53, 0, 0, 0, 0x5f]);
    let json = format!("{{\"nodeKeyChallenge\":\"chalpub:{}\"}}", "cc".repeat(32));
    assert_eq!(&enc[9..], json.as_bytes());
    let mut stream = enc.clone();
    stream.extend_from_slice(b"\x00\x00\x12\x04");
    assert_eq!(
        parse_early_noise(&stream),
        Ok(EarlyNoise::Present {
            json: json.as_bytes(),
            consumed: 9 + 95
        })
    );
}

#[test]
fn early_noise_parse_needs_more_absent_and_too_big() {
    assert_eq!(parse_early_noise(&[]), Ok(EarlyNoise::NeedMore));
    assert_eq!(parse_early_noise(&[0xff, 0xff]), Ok(EarlyNoise::NeedMore));
    assert_eq!(parse_early_noise(&[0xff, 0xfe]), Ok(EarlyNoise::Absent));
    assert_eq!(
        parse_early_noise(b"\x00\x00\x12\x04\x00\x00\x00\x00\x00"),
        Ok(EarlyNoise::Absent)
    );
    let enc = encode_early_noise(b"{}");
    assert_eq!(parse_early_noise(&enc[..10]), Ok(EarlyNoise::NeedMore));
    assert_eq!(
        parse_early_noise(b"\xff\xff\xffTS\x00\xa0\x00\x01"),
        Err(NoiseError::EarlyNoiseTooBig(0x00a0_0001))
    );
}

proptest! {
    #[test]
    fn random_chunking_decodes_identically(
        msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..9000), 1..8),
        cuts in proptest::collection::vec(1usize..5000, 1..40),
    ) {
        let (mut client, mut server) = random_pair(11);
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for m in &msgs {
            client.tx.encrypt(m, &mut wire).expect("encrypt");
            expected.extend_from_slice(m);
        }
        let mut got = Vec::new();
        let mut pos = 0;
        let mut i = 0;
        while pos < wire.len() {
            let n = cuts[i % cuts.len()].min(wire.len() - pos);
            i += 1;
            server.rx.feed(&wire[pos..pos + n]);
            pos += n;
            got.extend(decode_all(&mut server.rx).expect("decrypt"));
        }
        prop_assert_eq!(got, expected);
        prop_assert_eq!(server.rx.buffered(), 0);
    }

    #[test]
    fn read_plaintext_with_random_buffer_sizes_matches(
        msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..6000), 1..6),
        cuts in proptest::collection::vec(1usize..3000, 1..20),
        outs in proptest::collection::vec(1usize..5000, 1..20),
    ) {
        let (mut client, mut server) = random_pair(14);
        let mut wire = Vec::new();
        let mut expected = Vec::new();
        for m in &msgs {
            client.tx.encrypt(m, &mut wire).expect("encrypt");
            expected.extend_from_slice(m);
        }
        let mut got = Vec::new();
        let (mut pos, mut i) = (0, 0);
        loop {
            let mut out = vec![0u8; outs[i % outs.len()]];
            i += 1;
            let n = server.rx.read_plaintext(&mut out).expect("decrypt");
            got.extend_from_slice(&out[..n]);
            if n == 0 {
                if pos == wire.len() {
                    break;
                }
                let c = cuts[i % cuts.len()].min(wire.len() - pos);
                let space = server.rx.read_space();
                space[..c].copy_from_slice(&wire[pos..pos + c]);
                server.rx.commit(c);
                pos += c;
            }
        }
        prop_assert_eq!(got, expected);
    }

    #[test]
    fn corrupted_streams_give_errors_not_panics(
        msgs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..3000), 1..5),
        flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..4),
    ) {
        let (mut client, mut server) = random_pair(12);
        let mut wire = Vec::new();
        for m in &msgs {
            client.tx.encrypt_record(m, &mut wire).expect("encrypt");
        }
        let clean = wire.clone();
        for (at, x) in &flips {
            let at = at % wire.len();
            wire[at] ^= x;
        }
        server.rx.feed(&wire);
        let res = decode_all(&mut server.rx);
        if wire != clean {
            // Either an error, or a changed length left the stream incomplete.
            match res {
                Err(_) => {}
                Ok(p) => prop_assert!(server.rx.buffered() > 0 || p.len() < msgs.iter().map(Vec::len).sum::<usize>()),
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_parsers(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
        let (_, mut server) = random_pair(13);
        server.rx.feed(&bytes);
        let _ = decode_all(&mut server.rx);
        let _ = Responder::read_initiation(&server_key(), &bytes);
        let _ = response_frame_len(&bytes);
        let _ = vector_initiator().finish(&bytes);
        let _ = parse_early_noise(&bytes);
    }
}
