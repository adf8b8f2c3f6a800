//! [`NoiseStream`]: tokio byte stream over ts2021 transport records.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use weft_key::MachinePublic;
use weft_proto::noise::{NoiseError, RecordDecoder, RecordEncoder, Transport, MAX_PLAINTEXT_SIZE};

/// Plaintext taken per `poll_write` call: four full records.
const MAX_WRITE: usize = 4 * MAX_PLAINTEXT_SIZE;

/// An established ts2021 session as a plaintext byte stream.
///
/// Reads decrypt the peer's records (empty records are skipped); writes are
/// encrypted into records of at most 4077 plaintext bytes and buffered until
/// written to the underlying IO, so `flush` must be called (HTTP stacks do).
/// Any decryption, framing or IO error makes that direction fail for good.
#[derive(Debug)]
pub struct NoiseStream<IO> {
    io: IO,
    tx: RecordEncoder,
    rx: RecordDecoder,
    /// Encrypted bytes not yet written: `wbuf[wpos..]`.
    wbuf: Vec<u8>,
    wpos: usize,
    /// Gathers vectored writes so they share records.
    scratch: Vec<u8>,
    rx_error: Option<NoiseError>,
    tx_error: bool,
    peer: MachinePublic,
    version: u16,
    handshake_hash: [u8; 32],
}

impl<IO> NoiseStream<IO> {
    /// Wraps `io`, positioned just after the handshake, with the session
    /// from [`weft_proto::noise`].
    pub fn new(io: IO, transport: Transport) -> Self {
        Self {
            io,
            tx: transport.tx,
            rx: transport.rx,
            wbuf: Vec::with_capacity(MAX_WRITE + 4 * 19),
            wpos: 0,
            scratch: Vec::new(),
            rx_error: None,
            tx_error: false,
            peer: transport.peer,
            version: transport.version,
            handshake_hash: transport.handshake_hash,
        }
    }

    /// The peer's static key: the client's machine key on a server, the
    /// server's Noise key on a client.
    pub fn peer(&self) -> MachinePublic {
        self.peer
    }

    /// The protocol version (client capability version) of the handshake.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The final Noise handshake hash.
    pub fn handshake_hash(&self) -> [u8; 32] {
        self.handshake_hash
    }

    /// Queues `bytes` to be sent as records with the next flush (used for the
    /// server's EarlyNoise so it leaves in the same write as the response).
    pub fn queue(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.compact_wbuf();
        self.tx.encrypt(bytes, &mut self.wbuf).map_err(invalid)
    }

    /// Queues raw bytes (not encrypted) to go out before any record: the
    /// handshake response.
    pub(crate) fn queue_raw(&mut self, bytes: &[u8]) {
        self.compact_wbuf();
        self.wbuf.extend_from_slice(bytes);
    }

    /// The underlying IO.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    fn compact_wbuf(&mut self) {
        if self.wpos > 0 {
            self.wbuf.drain(..self.wpos);
            self.wpos = 0;
        }
    }
}

fn invalid(e: NoiseError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl<IO: AsyncWrite + Unpin> NoiseStream<IO> {
    /// Writes out buffered records; `Ready(Ok)` once all are written.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.tx_error {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "ts2021 send side failed earlier",
            )));
        }
        while self.wpos < self.wbuf.len() {
            match ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.wpos..])) {
                Ok(0) => {
                    self.fail_tx();
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => self.wpos += n,
                Err(e) => {
                    self.fail_tx();
                    return Poll::Ready(Err(e));
                }
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        Poll::Ready(Ok(()))
    }

    fn fail_tx(&mut self) {
        self.tx_error = true;
        self.tx.poison();
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for NoiseStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = &this.rx_error {
            return Poll::Ready(Err(invalid(e.clone())));
        }
        loop {
            match this.rx.read_plaintext(buf.initialize_unfilled()) {
                Ok(0) => {}
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "ts2021 receive failed");
                    this.rx_error = Some(e.clone());
                    return Poll::Ready(Err(invalid(e)));
                }
            }
            let space = this.rx.read_space();
            let mut rb = ReadBuf::new(space);
            ready!(Pin::new(&mut this.io).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                if this.rx.buffered() > 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "ts2021 stream ended inside a record",
                    )));
                }
                return Poll::Ready(Ok(()));
            }
            this.rx.commit(n);
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for NoiseStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let take = buf.len().min(MAX_WRITE);
        if let Err(e) = this.tx.encrypt(&buf[..take], &mut this.wbuf) {
            this.fail_tx();
            return Poll::Ready(Err(invalid(e)));
        }
        // Start sending now; whatever does not fit waits for the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(take))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        this.scratch.clear();
        for b in bufs {
            let room = MAX_WRITE - this.scratch.len();
            if room == 0 {
                break;
            }
            this.scratch.extend_from_slice(&b[..b.len().min(room)]);
        }
        if this.scratch.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if let Err(e) = this.tx.encrypt(&this.scratch, &mut this.wbuf) {
            this.fail_tx();
            return Poll::Ready(Err(invalid(e)));
        }
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(this.scratch.len()))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use weft_key::MachinePrivate;
    use weft_proto::noise::{Initiator, Responder};

    use super::*;

    fn pair<IO>(a: IO, b: IO) -> (NoiseStream<IO>, NoiseStream<IO>) {
        let server = MachinePrivate::from_bytes([1; 32]);
        let machine = MachinePrivate::from_bytes([2; 32]);
        let init = Initiator::new(&machine, server.public(), 130, [3; 32]).expect("init");
        let resp = Responder::read_initiation(&server, init.initiation()).expect("accept");
        let (msg2, st) = resp.respond([4; 32]).expect("respond");
        let ct = init.finish(&msg2).expect("finish");
        (NoiseStream::new(a, ct), NoiseStream::new(b, st))
    }

    #[tokio::test]
    async fn megabytes_cross_a_tiny_pipe_in_both_directions() {
        let (a, b) = tokio::io::duplex(61);
        let (client, mut server) = pair(a, b);
        assert_eq!(server.peer(), MachinePrivate::from_bytes([2; 32]).public());
        let up: Vec<u8> = (0..1_000_003u32).map(|i| (i % 253) as u8).collect();
        let down: Vec<u8> = up.iter().rev().copied().collect();
        let (up2, down2) = (up.clone(), down.clone());
        let c = tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(client);
            let writer = async {
                for chunk in up2.chunks(7777) {
                    w.write_all(chunk).await.expect("client write");
                }
                w.flush().await.expect("client flush");
                w
            };
            let reader = async {
                let mut got = vec![0u8; down2.len()];
                r.read_exact(&mut got).await.expect("client read");
                got
            };
            let (_w, got) = tokio::join!(writer, reader);
            assert!(got == down2, "client received different bytes");
        });
        let (mut r, mut w) = tokio::io::split(&mut server);
        let writer = async {
            w.write_all(&down).await.expect("server write");
            w.flush().await.expect("server flush");
        };
        let reader = async {
            let mut got = vec![0u8; up.len()];
            r.read_exact(&mut got).await.expect("server read");
            got
        };
        let ((), got) = tokio::join!(writer, reader);
        assert!(got == up, "server received different bytes");
        c.await.expect("client task");
    }

    #[tokio::test]
    async fn vectored_writes_share_records() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (mut client, _) = pair(a, tokio::io::duplex(8).0);
        let mut raw = b;
        let bufs = [
            io::IoSlice::new(b"frame-header"),
            io::IoSlice::new(b"payload"),
        ];
        let n = client.write_vectored(&bufs).await.expect("write");
        assert_eq!(n, 19);
        client.flush().await.expect("flush");
        let mut hdr = [0u8; 3];
        raw.read_exact(&mut hdr).await.expect("record header");
        assert_eq!(hdr, [4, 0, 19 + 16], "one record for both slices");
    }

    #[tokio::test]
    async fn eof_between_records_reads_zero() {
        let (a, raw) = tokio::io::duplex(64);
        let (mut client, _) = pair(a, tokio::io::duplex(8).0);
        drop(raw);
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).await.expect("eof is clean"), 0);
    }

    #[tokio::test]
    async fn tampered_record_fails_reads_for_good() {
        let (a, mut raw) = tokio::io::duplex(1 << 16);
        let (mut client, _) = pair(a, tokio::io::duplex(8).0);
        raw.write_all(&[
            4, 0, 20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
        ])
        .await
        .expect("write");
        let mut buf = [0u8; 16];
        let e = client.read(&mut buf).await.expect_err("bad record");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let e = client.read(&mut buf).await.expect_err("still failed");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn eof_inside_a_record_is_an_error() {
        let (a, mut raw) = tokio::io::duplex(1 << 16);
        let (mut client, _) = pair(a, tokio::io::duplex(8).0);
        raw.write_all(&[4, 0, 20, 1, 2]).await.expect("write");
        drop(raw);
        let mut buf = [0u8; 16];
        let e = client.read(&mut buf).await.expect_err("truncated");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
