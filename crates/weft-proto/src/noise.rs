//! Sans-IO ts2021: Tailscale's Noise transport for the control channel.
//!
//! `Noise_IK_25519_ChaChaPoly_BLAKE2s` with the prologue
//! `"Tailscale Control Protocol v<N>"`, Tailscale's message framing
//! (`type | u16 BE length | payload`) and its transport records, whose AEAD
//! nonce carries the counter **big-endian** (standard Noise uses little-endian;
//! the two agree only on the first record).
//!
//! Client (initiator):
//! 1. [`Initiator::new`] builds the 101-byte initiation (sent base64 in the
//!    `X-Tailscale-Handshake` header).
//! 2. Read the server's bytes until [`response_frame_len`] is satisfied, then
//!    [`Initiator::finish`] yields a [`Transport`].
//!
//! Server (responder):
//! 1. [`Responder::read_initiation`] authenticates the client's machine key.
//! 2. [`Responder::respond`] gives the 51-byte response and a [`Transport`].
//!
//! Then [`RecordEncoder`] turns plaintext into records and [`RecordDecoder`]
//! takes arbitrary chunks of the peer's byte stream and yields plaintexts.
//! The server may send an [`EarlyNoise`](encode_early_noise) payload as the
//! first plaintext bytes; the client detects it with [`parse_early_noise`].
//!
//! Randomness is injected: callers pass the ephemeral private scalar.

use blake2::{Blake2s256, Digest};
use chacha20poly1305::aead::AeadInPlace;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use weft_key::{ChallengePublic, MachinePrivate, MachinePublic};

/// The Noise protocol name, hashed to initialise the handshake.
pub const PROTOCOL_NAME: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// The prologue prefix; the decimal protocol version follows it.
pub const PROLOGUE_PREFIX: &str = "Tailscale Control Protocol v";
/// Message type of the client's handshake initiation.
pub const MSG_TYPE_INITIATION: u8 = 1;
/// Message type of the server's handshake response.
pub const MSG_TYPE_RESPONSE: u8 = 2;
/// Message type of an (unauthenticated) server error during the handshake.
pub const MSG_TYPE_ERROR: u8 = 3;
/// Message type of a transport record.
pub const MSG_TYPE_RECORD: u8 = 4;
/// Header length of types 2, 3 and 4: type byte and u16 BE length.
pub const HEADER_LEN: usize = 3;
/// Header length of the initiation: u16 BE version, type byte, u16 BE length.
pub const INITIATION_HEADER_LEN: usize = 5;
/// Total length of the initiation message.
pub const INITIATION_LEN: usize = 101;
/// Total length of the response message.
pub const RESPONSE_LEN: usize = 51;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// Largest frame on the wire, header included.
pub const MAX_MESSAGE_SIZE: usize = 4096;
/// Largest ciphertext in one record.
pub const MAX_CIPHERTEXT_SIZE: usize = MAX_MESSAGE_SIZE - HEADER_LEN;
/// Largest plaintext in one record.
pub const MAX_PLAINTEXT_SIZE: usize = MAX_CIPHERTEXT_SIZE - TAG_LEN;
/// Magic that opens an EarlyNoise payload: `FF FF FF 'T' 'S'`.
pub const EARLY_NOISE_MAGIC: [u8; 5] = *b"\xff\xff\xffTS";
/// Length of the EarlyNoise header (magic and u32 BE length).
pub const EARLY_NOISE_HEADER_LEN: usize = 9;
/// Largest EarlyNoise JSON a client accepts.
pub const MAX_EARLY_NOISE_LEN: u32 = 10 << 20;

const INITIATION_PAYLOAD_LEN: u16 = (INITIATION_LEN - INITIATION_HEADER_LEN) as u16;
const RESPONSE_PAYLOAD_LEN: u16 = (RESPONSE_LEN - HEADER_LEN) as u16;

/// Everything that can go wrong in the handshake or the record layer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoiseError {
    /// The initiation was not exactly 101 bytes.
    #[error("wrong handshake initiation size {0}, want 101")]
    InitiationSize(usize),
    /// A handshake message had an unexpected type byte.
    #[error("unexpected handshake message type {0}")]
    UnexpectedType(u8),
    /// The initiation's length field was not 96.
    #[error("wrong handshake initiation length {0}, want 96")]
    InitiationLength(u16),
    /// The response's length field was not 48.
    #[error("wrong handshake response length {0}, want 48")]
    ResponseLength(u16),
    /// The response was not exactly 51 bytes.
    #[error("wrong handshake response size {0}, want 51")]
    ResponseSize(usize),
    /// The server refused the handshake with this text.
    #[error("server error: {0:?}")]
    Server(String),
    /// A handshake tag or the encrypted machine key failed to authenticate.
    #[error("handshake message failed to authenticate")]
    HandshakeDecrypt,
    /// A Diffie-Hellman result was all zeros (low-order peer key).
    #[error("key exchange produced the all-zero secret")]
    LowOrderPoint,
    /// A record header announced a frame larger than 4096 bytes.
    #[error("frame of {0} bytes exceeds the maximum of 4096")]
    FrameTooBig(usize),
    /// A frame other than a record arrived after the handshake.
    #[error("received message type {0}, want record (4)")]
    NotRecord(u8),
    /// A record failed to decrypt (tampered, reordered or wrong key).
    #[error("record failed to decrypt")]
    Decrypt,
    /// The 64-bit record counter ran out.
    #[error("cipher exhausted, no more nonces available")]
    NonceExhausted,
    /// One record was asked to carry more than 4077 plaintext bytes.
    #[error("plaintext of {0} bytes exceeds the record maximum of 4077")]
    PlaintextTooBig(usize),
    /// An earlier error made this direction unusable.
    #[error("cipher state is unusable after an earlier error")]
    Poisoned,
    /// An EarlyNoise payload announced more than 10 MiB.
    #[error("early payload of {0} bytes is too big")]
    EarlyNoiseTooBig(u32),
}

/// The prologue for a protocol version, e.g. `Tailscale Control Protocol v130`.
pub fn prologue(version: u16) -> String {
    format!("{PROLOGUE_PREFIX}{version}")
}

/// The client side of the handshake, between sending the initiation and
/// reading the response.
pub struct Initiator {
    state: SymmetricState,
    machine: MachinePrivate,
    ephemeral: MachinePrivate,
    server: MachinePublic,
    version: u16,
    initiation: [u8; INITIATION_LEN],
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator")
            .field("server", &self.server)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Initiator {
    /// Starts a handshake to `server` as `machine`, with the ephemeral
    /// private scalar `ephemeral` (fresh random bytes for every connection).
    pub fn new(
        machine: &MachinePrivate,
        server: MachinePublic,
        version: u16,
        ephemeral: [u8; 32],
    ) -> Result<Self, NoiseError> {
        let ephemeral = MachinePrivate::from_bytes(ephemeral);
        let mut s = SymmetricState::new();
        s.mix_hash(prologue(version).as_bytes());
        s.mix_hash(server.as_bytes());

        let mut init = [0u8; INITIATION_LEN];
        init[0..2].copy_from_slice(&version.to_be_bytes());
        init[2] = MSG_TYPE_INITIATION;
        init[3..5].copy_from_slice(&INITIATION_PAYLOAD_LEN.to_be_bytes());
        let epub = ephemeral.public();
        init[5..37].copy_from_slice(epub.as_bytes());
        s.mix_hash(epub.as_bytes());
        let k = s.mix_dh(&ephemeral, server.as_bytes())?;
        s.encrypt_and_hash(&k, machine.public().as_bytes(), &mut init[37..85]);
        let k = s.mix_dh(machine, server.as_bytes())?;
        s.encrypt_and_hash(&k, &[], &mut init[85..101]);

        Ok(Self {
            state: s,
            machine: machine.clone(),
            ephemeral,
            server,
            version,
            initiation: init,
        })
    }

    /// The 101-byte initiation message.
    pub fn initiation(&self) -> &[u8; INITIATION_LEN] {
        &self.initiation
    }

    /// Completes the handshake with the server's complete response frame
    /// (see [`response_frame_len`]). An error frame becomes [`NoiseError::Server`].
    pub fn finish(self, frame: &[u8]) -> Result<Transport, NoiseError> {
        let Some(&ty) = frame.first() else {
            return Err(NoiseError::ResponseSize(0));
        };
        if frame.len() < HEADER_LEN {
            return Err(NoiseError::ResponseSize(frame.len()));
        }
        let len = u16::from_be_bytes([frame[1], frame[2]]);
        match ty {
            MSG_TYPE_RESPONSE => {}
            MSG_TYPE_ERROR => {
                let end = (HEADER_LEN + usize::from(len)).min(frame.len());
                let text = String::from_utf8_lossy(&frame[HEADER_LEN..end]).into_owned();
                return Err(NoiseError::Server(text));
            }
            other => return Err(NoiseError::UnexpectedType(other)),
        }
        if len != RESPONSE_PAYLOAD_LEN {
            return Err(NoiseError::ResponseLength(len));
        }
        if frame.len() != RESPONSE_LEN {
            return Err(NoiseError::ResponseSize(frame.len()));
        }
        let mut s = self.state;
        let server_eph: [u8; 32] = array32(&frame[3..35]);
        s.mix_hash(&server_eph);
        s.mix_dh(&self.ephemeral, &server_eph)?;
        let k = s.mix_dh(&self.machine, &server_eph)?;
        s.decrypt_and_hash(&k, &frame[35..51], &mut [])?;
        let (k1, k2) = s.split();
        Ok(Transport {
            tx: RecordEncoder::new(&k1),
            rx: RecordDecoder::new(&k2),
            handshake_hash: s.h,
            version: self.version,
            peer: self.server,
        })
    }
}

/// How many bytes of the server's stream make up the handshake response frame.
///
/// `Ok(None)` until the 3-byte header is available; then the total frame length
/// (51 for a response, `3 + len` for an error frame). Other types fail at once.
pub fn response_frame_len(buf: &[u8]) -> Result<Option<usize>, NoiseError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u16::from_be_bytes([buf[1], buf[2]]);
    match buf[0] {
        MSG_TYPE_RESPONSE if len == RESPONSE_PAYLOAD_LEN => Ok(Some(RESPONSE_LEN)),
        MSG_TYPE_RESPONSE => Err(NoiseError::ResponseLength(len)),
        MSG_TYPE_ERROR => Ok(Some(HEADER_LEN + usize::from(len))),
        other => Err(NoiseError::UnexpectedType(other)),
    }
}

/// The server side of the handshake after a valid initiation: the client's
/// machine key is authenticated, the response is not yet built.
pub struct Responder {
    state: SymmetricState,
    peer: MachinePublic,
    client_ephemeral: [u8; 32],
    version: u16,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("peer", &self.peer)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// Checks and decrypts the client's 101-byte initiation with the server's
    /// static key. The protocol version comes from the message and is mixed
    /// into the prologue; reject unwanted versions with [`Responder::version`].
    pub fn read_initiation(server: &MachinePrivate, msg: &[u8]) -> Result<Self, NoiseError> {
        if msg.len() != INITIATION_LEN {
            return Err(NoiseError::InitiationSize(msg.len()));
        }
        let version = u16::from_be_bytes([msg[0], msg[1]]);
        if msg[2] != MSG_TYPE_INITIATION {
            return Err(NoiseError::UnexpectedType(msg[2]));
        }
        let len = u16::from_be_bytes([msg[3], msg[4]]);
        if len != INITIATION_PAYLOAD_LEN {
            return Err(NoiseError::InitiationLength(len));
        }
        let mut s = SymmetricState::new();
        s.mix_hash(prologue(version).as_bytes());
        s.mix_hash(server.public().as_bytes());
        let client_ephemeral = array32(&msg[5..37]);
        s.mix_hash(&client_ephemeral);
        let k = s.mix_dh(server, &client_ephemeral)?;
        let mut machine = [0u8; 32];
        s.decrypt_and_hash(&k, &msg[37..85], &mut machine)?;
        let k = s.mix_dh(server, &machine)?;
        s.decrypt_and_hash(&k, &msg[85..101], &mut [])?;
        Ok(Self {
            state: s,
            peer: MachinePublic::from_bytes(machine),
            client_ephemeral,
            version,
        })
    }

    /// The client's authenticated machine key.
    pub fn peer(&self) -> MachinePublic {
        self.peer
    }

    /// The protocol version (client capability version) from the initiation.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// Builds the 51-byte response with the ephemeral private scalar
    /// `ephemeral` and returns it with the server's transport.
    pub fn respond(
        self,
        ephemeral: [u8; 32],
    ) -> Result<([u8; RESPONSE_LEN], Transport), NoiseError> {
        let ephemeral = MachinePrivate::from_bytes(ephemeral);
        let mut s = self.state;
        let mut resp = [0u8; RESPONSE_LEN];
        resp[0] = MSG_TYPE_RESPONSE;
        resp[1..3].copy_from_slice(&RESPONSE_PAYLOAD_LEN.to_be_bytes());
        let epub = ephemeral.public();
        resp[3..35].copy_from_slice(epub.as_bytes());
        s.mix_hash(epub.as_bytes());
        s.mix_dh(&ephemeral, &self.client_ephemeral)?;
        let k = s.mix_dh(&ephemeral, self.peer.as_bytes())?;
        s.encrypt_and_hash(&k, &[], &mut resp[35..51]);
        let (k1, k2) = s.split();
        Ok((
            resp,
            Transport {
                tx: RecordEncoder::new(&k2),
                rx: RecordDecoder::new(&k1),
                handshake_hash: s.h,
                version: self.version,
                peer: self.peer,
            },
        ))
    }
}

/// Encodes an error frame (type 3) with `text`, truncated below 64 KiB.
pub fn encode_error(text: &str) -> Vec<u8> {
    let mut end = text.len().min(usize::from(u16::MAX));
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = Vec::with_capacity(HEADER_LEN + end);
    out.push(MSG_TYPE_ERROR);
    out.extend_from_slice(&(end as u16).to_be_bytes());
    out.extend_from_slice(&text.as_bytes()[..end]);
    out
}

/// Both directions of an established ts2021 session.
#[derive(Debug)]
pub struct Transport {
    /// Encrypts what this side sends.
    pub tx: RecordEncoder,
    /// Decrypts what the peer sends.
    pub rx: RecordDecoder,
    /// The final handshake hash `h`.
    pub handshake_hash: [u8; 32],
    /// The negotiated protocol version.
    pub version: u16,
    /// The peer's static key: the client's machine key on the server, the
    /// server's Noise key on the client.
    pub peer: MachinePublic,
}

/// Encrypts plaintext into transport records for one direction.
pub struct RecordEncoder {
    cipher: ChaCha20Poly1305,
    nonce: u64,
    poisoned: bool,
}

impl std::fmt::Debug for RecordEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordEncoder")
            .field("nonce", &self.nonce)
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl RecordEncoder {
    /// An encoder for a raw 32-byte transport key (from the handshake split).
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            cipher: ChaCha20Poly1305::new(key.into()),
            nonce: 0,
            poisoned: false,
        }
    }

    /// Appends one record carrying `plaintext` (at most 4077 bytes) to `out`.
    pub fn encrypt_record(
        &mut self,
        plaintext: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), NoiseError> {
        if self.poisoned {
            return Err(NoiseError::Poisoned);
        }
        if plaintext.len() > MAX_PLAINTEXT_SIZE {
            return Err(NoiseError::PlaintextTooBig(plaintext.len()));
        }
        if self.nonce == u64::MAX {
            return Err(NoiseError::NonceExhausted);
        }
        out.reserve(HEADER_LEN + plaintext.len() + TAG_LEN);
        out.push(MSG_TYPE_RECORD);
        out.extend_from_slice(&((plaintext.len() + TAG_LEN) as u16).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self.cipher.encrypt_in_place_detached(
            &nonce(self.nonce).into(),
            &[],
            &mut out[start..],
        );
        let Ok(tag) = tag else {
            self.poisoned = true;
            return Err(NoiseError::Poisoned);
        };
        out.extend_from_slice(&tag);
        self.nonce += 1;
        Ok(())
    }

    /// Appends as many records as needed to carry all of `data` (none for
    /// empty input), splitting at 4077 bytes.
    pub fn encrypt(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), NoiseError> {
        for chunk in data.chunks(MAX_PLAINTEXT_SIZE) {
            self.encrypt_record(chunk, out)?;
        }
        Ok(())
    }

    /// Marks this direction unusable (e.g. after a partial write).
    pub fn poison(&mut self) {
        self.poisoned = true;
    }

    /// The counter of the next record.
    pub fn nonce(&self) -> u64 {
        self.nonce
    }
}

/// Decrypts the peer's record stream, fed in arbitrary chunks.
///
/// Feed bytes with [`RecordDecoder::feed`] (or [`RecordDecoder::read_space`] +
/// [`RecordDecoder::commit`] to read straight into its buffer), then take
/// plaintext with [`RecordDecoder::next_plaintext`] (whole records) or
/// [`RecordDecoder::read_plaintext`] (into a caller buffer, any size) until
/// they report that more bytes are needed. Empty records are skipped. Any
/// error poisons the decoder for good.
pub struct RecordDecoder {
    cipher: ChaCha20Poly1305,
    nonce: u64,
    buf: Vec<u8>,
    /// Decrypted plaintext not yet handed out: `buf[pt_start..pt_end]`.
    pt_start: usize,
    pt_end: usize,
    /// Undecrypted bytes: `buf[start..end]`.
    start: usize,
    end: usize,
    poisoned: bool,
}

impl std::fmt::Debug for RecordDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordDecoder")
            .field("nonce", &self.nonce)
            .field("buffered", &self.buffered())
            .field("plaintext", &(self.pt_end - self.pt_start))
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl RecordDecoder {
    /// A decoder for a raw 32-byte transport key (from the handshake split).
    pub fn new(key: &[u8; 32]) -> Self {
        Self {
            cipher: ChaCha20Poly1305::new(key.into()),
            nonce: 0,
            buf: Vec::new(),
            pt_start: 0,
            pt_end: 0,
            start: 0,
            end: 0,
            poisoned: false,
        }
    }

    /// Appends received bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.compact();
        let need = self.end + bytes.len();
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        self.buf[self.end..need].copy_from_slice(bytes);
        self.end = need;
    }

    /// Free buffer space of at least one maximal frame, to read into directly;
    /// follow with [`RecordDecoder::commit`].
    pub fn read_space(&mut self) -> &mut [u8] {
        self.compact();
        let need = self.end + MAX_MESSAGE_SIZE;
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes written into [`RecordDecoder::read_space`] as received.
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Bytes received but not yet decrypted.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Decrypted bytes not yet handed out by [`RecordDecoder::read_plaintext`].
    pub fn pending_plaintext(&self) -> usize {
        self.pt_end - self.pt_start
    }

    /// The rest of the current record's plaintext, or the next complete
    /// non-empty record decrypted; `Ok(None)` if more bytes are needed.
    pub fn next_plaintext(&mut self) -> Result<Option<&[u8]>, NoiseError> {
        if self.pt_start == self.pt_end && !self.decrypt_next()? {
            return Ok(None);
        }
        let range = self.pt_start..self.pt_end;
        self.pt_start = self.pt_end;
        Ok(Some(&self.buf[range]))
    }

    /// Copies decrypted plaintext into `out`, decrypting further records as
    /// needed; returns how many bytes were copied (0 means more input is
    /// needed, or `out` is empty).
    pub fn read_plaintext(&mut self, out: &mut [u8]) -> Result<usize, NoiseError> {
        let mut n = 0;
        while n < out.len() {
            if self.pt_start == self.pt_end && !self.decrypt_next()? {
                break;
            }
            let take = (self.pt_end - self.pt_start).min(out.len() - n);
            out[n..n + take].copy_from_slice(&self.buf[self.pt_start..self.pt_start + take]);
            self.pt_start += take;
            n += take;
        }
        Ok(n)
    }

    /// The counter of the next record.
    pub fn nonce(&self) -> u64 {
        self.nonce
    }

    /// Decrypts the next complete non-empty record into the plaintext range;
    /// `Ok(false)` if no complete record is buffered.
    fn decrypt_next(&mut self) -> Result<bool, NoiseError> {
        if self.poisoned {
            return Err(NoiseError::Poisoned);
        }
        loop {
            let avail = &self.buf[self.start..self.end];
            if avail.len() < HEADER_LEN {
                return Ok(false);
            }
            let total = HEADER_LEN + usize::from(u16::from_be_bytes([avail[1], avail[2]]));
            if total > MAX_MESSAGE_SIZE {
                return Err(self.fail(NoiseError::FrameTooBig(total)));
            }
            if avail[0] != MSG_TYPE_RECORD {
                return Err(self.fail(NoiseError::NotRecord(avail[0])));
            }
            if avail.len() < total {
                return Ok(false);
            }
            if self.nonce == u64::MAX {
                return Err(self.fail(NoiseError::NonceExhausted));
            }
            if total - HEADER_LEN < TAG_LEN {
                return Err(self.fail(NoiseError::Decrypt));
            }
            let ct_start = self.start + HEADER_LEN;
            let rec_end = self.start + total;
            let pt_end = rec_end - TAG_LEN;
            let n = nonce(self.nonce);
            self.nonce += 1;
            let (body, tag) = self.buf[ct_start..rec_end].split_at_mut(pt_end - ct_start);
            let tag = chacha20poly1305::Tag::clone_from_slice(tag);
            if self
                .cipher
                .decrypt_in_place_detached(&n.into(), &[], body, &tag)
                .is_err()
            {
                return Err(self.fail(NoiseError::Decrypt));
            }
            self.start = rec_end;
            if pt_end > ct_start {
                self.pt_start = ct_start;
                self.pt_end = pt_end;
                return Ok(true);
            }
        }
    }

    fn fail(&mut self, e: NoiseError) -> NoiseError {
        self.poisoned = true;
        e
    }

    /// Moves live bytes (pending plaintext, then undecrypted input) to the
    /// front of the buffer.
    fn compact(&mut self) {
        let base = if self.pt_start < self.pt_end {
            self.pt_start
        } else {
            self.start
        };
        if base == 0 {
            return;
        }
        self.buf.copy_within(base..self.end, 0);
        self.end -= base;
        self.start -= base;
        if self.pt_start < self.pt_end {
            self.pt_start -= base;
            self.pt_end -= base;
        } else {
            self.pt_start = 0;
            self.pt_end = 0;
        }
    }
}

/// Encodes the EarlyNoise payload (magic, u32 BE length, JSON) the server
/// may send as its first plaintext bytes.
pub fn encode_early_noise(json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(EARLY_NOISE_HEADER_LEN + json.len());
    out.extend_from_slice(&EARLY_NOISE_MAGIC);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(json);
    out
}

/// Encodes EarlyNoise carrying `{"nodeKeyChallenge":"chalpub:…"}`.
pub fn encode_early_noise_challenge(challenge: &ChallengePublic) -> Vec<u8> {
    let json = format!("{{\"nodeKeyChallenge\":\"{}\"}}", challenge.to_text());
    encode_early_noise(json.as_bytes())
}

/// What the start of the server's plaintext stream holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EarlyNoise<'a> {
    /// Not enough bytes yet to decide or to hold the whole payload.
    NeedMore,
    /// No EarlyNoise: the bytes are HTTP/2 from the start.
    Absent,
    /// An EarlyNoise payload; `consumed` bytes (header and JSON) belong to it.
    Present {
        /// The JSON body.
        json: &'a [u8],
        /// Bytes to drop before HTTP/2 starts.
        consumed: usize,
    },
}

/// Detects and extracts an EarlyNoise payload at the start of the server's
/// plaintext stream.
pub fn parse_early_noise(buf: &[u8]) -> Result<EarlyNoise<'_>, NoiseError> {
    let n = buf.len().min(EARLY_NOISE_MAGIC.len());
    if buf[..n] != EARLY_NOISE_MAGIC[..n] {
        return Ok(EarlyNoise::Absent);
    }
    if buf.len() < EARLY_NOISE_HEADER_LEN {
        return Ok(EarlyNoise::NeedMore);
    }
    let len = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]);
    if len > MAX_EARLY_NOISE_LEN {
        return Err(NoiseError::EarlyNoiseTooBig(len));
    }
    let consumed = EARLY_NOISE_HEADER_LEN + len as usize;
    if buf.len() < consumed {
        return Ok(EarlyNoise::NeedMore);
    }
    Ok(EarlyNoise::Present {
        json: &buf[EARLY_NOISE_HEADER_LEN..consumed],
        consumed,
    })
}

fn nonce(n: u64) -> [u8; 12] {
    let mut out = [0u8; 12];
    out[4..].copy_from_slice(&n.to_be_bytes());
    out
}

fn array32(b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(b);
    out
}

struct SymmetricState {
    h: [u8; 32],
    ck: [u8; 32],
}

impl SymmetricState {
    fn new() -> Self {
        let h: [u8; 32] = Blake2s256::digest(PROTOCOL_NAME.as_bytes()).into();
        Self { h, ck: h }
    }

    fn mix_hash(&mut self, data: &[u8]) {
        let mut d = Blake2s256::new();
        d.update(self.h);
        d.update(data);
        self.h = d.finalize().into();
    }

    /// MixKey(DH(private, public)); returns the new single-use cipher key.
    fn mix_dh(
        &mut self,
        private: &MachinePrivate,
        public: &[u8; 32],
    ) -> Result<[u8; 32], NoiseError> {
        let dh = private.shared_secret(public);
        if dh == [0u8; 32] {
            return Err(NoiseError::LowOrderPoint);
        }
        let (ck, k) = hkdf2(&self.ck, &dh);
        self.ck = ck;
        Ok(k)
    }

    /// Encrypts `plaintext` with nonce 0 and `h` as AAD into `out`
    /// (`plaintext.len() + 16` bytes), then mixes the ciphertext.
    fn encrypt_and_hash(&mut self, key: &[u8; 32], plaintext: &[u8], out: &mut [u8]) {
        let (body, tag_out) = out.split_at_mut(plaintext.len());
        body.copy_from_slice(plaintext);
        let cipher = ChaCha20Poly1305::new(key.into());
        let tag = cipher
            .encrypt_in_place_detached(&[0u8; 12].into(), &self.h, body)
            .unwrap_or_default();
        tag_out.copy_from_slice(&tag);
        self.mix_hash(out);
    }

    /// Opens `ciphertext` (plaintext length `out.len()`) into `out`, then
    /// mixes the ciphertext.
    fn decrypt_and_hash(
        &mut self,
        key: &[u8; 32],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<(), NoiseError> {
        let (body, tag) = ciphertext.split_at(out.len());
        out.copy_from_slice(body);
        let cipher = ChaCha20Poly1305::new(key.into());
        let tag = chacha20poly1305::Tag::clone_from_slice(tag);
        cipher
            .decrypt_in_place_detached(&[0u8; 12].into(), &self.h, out, &tag)
            .map_err(|_| NoiseError::HandshakeDecrypt)?;
        self.mix_hash(ciphertext);
        Ok(())
    }

    fn split(&self) -> ([u8; 32], [u8; 32]) {
        hkdf2(&self.ck, &[])
    }
}

/// HKDF with HMAC-BLAKE2s, empty info, two 32-byte outputs.
fn hkdf2(salt: &[u8; 32], ikm: &[u8]) -> ([u8; 32], [u8; 32]) {
    let prk = hmac(salt, &[ikm]);
    let t1 = hmac(&prk, &[&[1]]);
    let t2 = hmac(&prk, &[&t1, &[2]]);
    (t1, t2)
}

fn hmac(key: &[u8; 32], parts: &[&[u8]]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut ipad = [0x36u8; BLOCK];
    let mut opad = [0x5cu8; BLOCK];
    for (i, b) in key.iter().enumerate() {
        ipad[i] ^= b;
        opad[i] ^= b;
    }
    let mut inner = Blake2s256::new();
    inner.update(ipad);
    for p in parts {
        inner.update(p);
    }
    let inner = inner.finalize();
    let mut outer = Blake2s256::new();
    outer.update(opad);
    outer.update(inner);
    outer.finalize().into()
}

#[cfg(test)]
mod tests;
