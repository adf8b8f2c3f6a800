//! The data-plane UDP socket with batched I/O: `recvmmsg` with UDP GRO in, `sendmsg` with UDP
//! GSO out, through quinn-udp (the only module that names it), and socket buffers of several MB.
//!
//! [`UdpTx`] is the pure half: it packs encrypted datagrams back to back into one buffer for a
//! single GSO send (same destination, same size, the last one possibly shorter), and tells the
//! caller when the batch must go out first.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;

use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Socket buffer asked for (both directions), as Tailscale's magicsock does: 7 MB.
pub const SOCKET_BUFFER: usize = 7 << 20;
/// Largest total of one GSO send (a UDP datagram's payload limit, rounded down).
pub const GSO_MAX_BYTES: usize = 65_000;
/// Room after the batch for the next datagram: an IP packet of up to 64 KiB plus WireGuard's
/// overhead (and at least a handshake message).
const SPARE: usize = 65_535 + 64;
/// Bytes per receive buffer: one GRO super-datagram.
const RX_BUF: usize = 65_536;

/// The data-plane socket.
#[derive(Debug)]
pub struct UdpIo {
    sock: UdpSocket,
    state: quinn_udp::UdpSocketState,
}

impl UdpIo {
    /// Wraps a bound socket: enables GRO (and packet info) and asks for [`SOCKET_BUFFER`]
    /// bytes of buffer each way, forcing past `net.core.{r,w}mem_max` when we may (root).
    pub fn new(sock: UdpSocket) -> io::Result<UdpIo> {
        let state = quinn_udp::UdpSocketState::new((&sock).into())?;
        let io = UdpIo { sock, state };
        io.grow_buffers();
        Ok(io)
    }

    fn grow_buffers(&self) {
        use std::os::fd::AsRawFd;
        let fd = self.sock.as_raw_fd();
        for (force, plain) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        ] {
            if setsockopt_int(fd, force, SOCKET_BUFFER).is_err() {
                if let Err(e) = setsockopt_int(fd, plain, SOCKET_BUFFER) {
                    tracing::debug!(error = %e, "cannot grow the UDP socket buffer");
                }
            }
        }
        tracing::debug!(
            rcvbuf = self
                .state
                .recv_buffer_size((&self.sock).into())
                .unwrap_or(0),
            sndbuf = self
                .state
                .send_buffer_size((&self.sock).into())
                .unwrap_or(0),
            gso = self.state.max_gso_segments(),
            gro = self.state.gro_segments(),
            "UDP socket ready"
        );
    }

    /// The socket's local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Datagrams one GSO send may carry (1 without GSO).
    pub fn max_segments(&self) -> usize {
        self.state.max_gso_segments().max(1)
    }

    /// Waits until a receive may succeed (cancel safe).
    pub async fn readable(&self) -> io::Result<()> {
        self.sock.readable().await
    }

    /// One batched receive without waiting: returns how many messages `rx` now holds
    /// (iterate them with [`UdpRx::datagrams`]); `WouldBlock` when there is nothing.
    pub fn try_recv(&self, rx: &mut UdpRx) -> io::Result<usize> {
        let UdpRx { bufs, meta, count } = rx;
        let n = self.sock.try_io(Interest::READABLE, || {
            let mut iovs: Vec<IoSliceMut<'_>> =
                bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            self.state.recv((&self.sock).into(), &mut iovs, meta)
        })?;
        *count = n;
        Ok(n)
    }

    /// Sends one datagram now, or fails with `WouldBlock` (for control traffic: disco, STUN,
    /// handshakes).
    pub fn try_send_to(&self, buf: &[u8], to: SocketAddr) -> io::Result<usize> {
        self.sock.try_send_to(buf, to)
    }

    /// Sends the batch in `tx` (one `sendmsg`, segmented by the kernel) and empties it,
    /// waiting while the socket buffer is full. Errors other than a full buffer are
    /// returned after the batch is dropped (UDP is lossy; the caller counts them).
    pub async fn send_batch(&self, tx: &mut UdpTx) -> io::Result<()> {
        let Some(dst) = tx.dst else {
            return Ok(());
        };
        let transmit = quinn_udp::Transmit {
            destination: dst,
            ecn: None,
            contents: &tx.buf[..tx.len],
            segment_size: (tx.count > 1).then_some(tx.seg),
            src_ip: None,
        };
        let mut r = self
            .sock
            .async_io(Interest::WRITABLE, || {
                self.state.try_send((&self.sock).into(), &transmit)
            })
            .await;
        if r.is_err() && tx.count > 1 && self.max_segments() < tx.count {
            // The path refused segmentation offload (quinn-udp turned it off): send the
            // datagrams one by one, now and from here on.
            tracing::info!(error = ?r, "UDP GSO refused; sending datagrams one by one");
            r = Ok(());
            for d in tx.buf[..tx.len].chunks(tx.seg.max(1)) {
                if let Err(e) = self.sock.send_to(d, dst).await {
                    r = Err(e);
                }
            }
        }
        tx.max_segments = self.max_segments();
        tx.clear();
        r
    }
}

fn setsockopt_int(fd: std::os::fd::RawFd, opt: libc::c_int, value: usize) -> io::Result<()> {
    let v = libc::c_int::try_from(value).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fd` is an open socket owned by the caller for the duration of the call, and the
    // option value points at a live c_int of the length passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            std::ptr::from_ref(&v).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Receive buffers for one batched receive.
pub struct UdpRx {
    bufs: Vec<Vec<u8>>,
    meta: Vec<quinn_udp::RecvMeta>,
    count: usize,
}

impl std::fmt::Debug for UdpRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpRx").field("count", &self.count).finish()
    }
}

impl Default for UdpRx {
    fn default() -> Self {
        let n = quinn_udp::BATCH_SIZE.max(1);
        UdpRx {
            bufs: vec![vec![0; RX_BUF]; n],
            meta: vec![quinn_udp::RecvMeta::default(); n],
            count: 0,
        }
    }
}

impl UdpRx {
    /// The datagrams of message `i` of the last receive (a GRO message holds several of the
    /// same size, the last possibly shorter), with their source.
    pub fn datagrams(&self, i: usize) -> (SocketAddr, std::slice::Chunks<'_, u8>) {
        let m = &self.meta[i];
        let stride = m.stride.max(1);
        (m.addr, self.bufs[i][..m.len].chunks(stride))
    }
}

/// Encrypted datagrams packed for one GSO send.
#[derive(Debug)]
pub struct UdpTx {
    buf: Vec<u8>,
    len: usize,
    seg: usize,
    count: usize,
    dst: Option<SocketAddr>,
    closed: bool,
    max_segments: usize,
}

impl UdpTx {
    /// An empty batch of at most `max_segments` datagrams.
    pub fn new(max_segments: usize) -> UdpTx {
        UdpTx {
            buf: vec![0; GSO_MAX_BYTES + SPARE],
            len: 0,
            seg: 0,
            count: 0,
            dst: None,
            closed: false,
            max_segments: max_segments.max(1),
        }
    }

    /// Where the next datagram is written (then call [`UdpTx::push`] with its length).
    pub fn spare(&mut self) -> &mut [u8] {
        &mut self.buf[self.len..]
    }

    /// Whether the batch holds nothing.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Datagrams in the batch.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Whether nothing more can join (send it before writing the next datagram).
    pub fn is_full(&self) -> bool {
        self.count >= self.max_segments || self.closed || self.len >= GSO_MAX_BYTES
    }

    /// Adds the `n`-byte datagram just written at [`UdpTx::spare`], to `dst`. Returns `false`
    /// when it cannot join this batch: send the batch, then call [`UdpTx::carry`].
    pub fn push(&mut self, dst: SocketAddr, n: usize) -> bool {
        if self.count == 0 {
            self.dst = Some(dst);
            self.seg = n;
        } else if self.dst != Some(dst)
            || n > self.seg
            || self.is_full()
            || self.len + n > GSO_MAX_BYTES
        {
            return false;
        }
        if n < self.seg {
            self.closed = true;
        }
        self.len += n;
        self.count += 1;
        true
    }

    /// After a refused [`UdpTx::push`] and a send: starts the new batch with that datagram,
    /// which was written just past the old batch.
    pub fn carry(&mut self, old_len: usize, dst: SocketAddr, n: usize) {
        self.buf.copy_within(old_len..old_len + n, 0);
        self.clear();
        let joined = self.push(dst, n);
        debug_assert!(joined);
    }

    /// Length of the packed bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Forgets the batch.
    pub fn clear(&mut self) {
        self.len = 0;
        self.seg = 0;
        self.count = 0;
        self.dst = None;
        self.closed = false;
    }

    /// The destination, segment size and bytes of the batch.
    pub fn batch(&self) -> Option<(SocketAddr, usize, &[u8])> {
        Some((self.dst?, self.seg, &self.buf[..self.len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], p))
    }

    fn write(tx: &mut UdpTx, byte: u8, n: usize) {
        tx.spare()[..n].fill(byte);
    }

    #[test]
    fn same_size_datagrams_to_one_peer_share_a_batch_until_a_short_one_closes_it() {
        let mut tx = UdpTx::new(64);
        for b in 0..3 {
            write(&mut tx, b, 100);
            assert!(tx.push(addr(1), 100));
        }
        write(&mut tx, 9, 40);
        assert!(tx.push(addr(1), 40));
        assert!(tx.is_full(), "a shorter datagram ends the batch");
        let (dst, seg, bytes) = tx.batch().unwrap();
        assert_eq!((dst, seg, bytes.len()), (addr(1), 100, 340));
        assert_eq!(&bytes[300..], &[9; 40][..]);
        assert_eq!(tx.count(), 4);
    }

    #[test]
    fn another_destination_or_a_longer_datagram_is_carried_into_a_new_batch() {
        let mut tx = UdpTx::new(64);
        write(&mut tx, 1, 100);
        assert!(tx.push(addr(1), 100));
        let old = tx.len();
        write(&mut tx, 2, 100);
        assert!(!tx.push(addr(2), 100));
        tx.carry(old, addr(2), 100);
        let (dst, seg, bytes) = tx.batch().unwrap();
        assert_eq!((dst, seg), (addr(2), 100));
        assert_eq!(bytes, &[2; 100][..]);

        let old = tx.len();
        write(&mut tx, 3, 120);
        assert!(!tx.push(addr(2), 120), "longer than the segment size");
        tx.carry(old, addr(2), 120);
        assert_eq!(tx.batch().unwrap().2, &[3; 120][..]);
    }

    #[test]
    fn the_segment_limit_and_the_byte_limit_end_a_batch() {
        let mut tx = UdpTx::new(3);
        for _ in 0..3 {
            write(&mut tx, 0, 10);
            assert!(tx.push(addr(1), 10));
        }
        assert!(tx.is_full());
        let mut tx = UdpTx::new(1000);
        let mut pushed = 0;
        loop {
            write(&mut tx, 0, 1312);
            if !tx.push(addr(1), 1312) {
                break;
            }
            pushed += 1;
        }
        assert_eq!(pushed, GSO_MAX_BYTES / 1312);
        assert!(tx.len() <= GSO_MAX_BYTES);
    }

    #[tokio::test]
    async fn a_gso_batch_arrives_as_separate_datagrams_of_the_right_sizes() {
        let a = UdpIo::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let b = UdpIo::new(UdpSocket::bind("127.0.0.1:0").await.unwrap()).unwrap();
        let to = b.local_addr().unwrap();
        let mut tx = UdpTx::new(a.max_segments());
        let mut sent = Vec::new();
        for i in 0..5u8 {
            let n = if i == 4 { 300 } else { 1000 };
            write(&mut tx, i, n);
            assert!(tx.push(to, n));
            sent.push(vec![i; n]);
        }
        if a.max_segments() < 5 {
            return; // no GSO here: the batch logic is covered above
        }
        a.send_batch(&mut tx).await.unwrap();
        assert!(tx.is_empty());
        let mut rx = UdpRx::default();
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < sent.len() {
            tokio::time::timeout_at(deadline, b.readable())
                .await
                .expect("datagrams within 5 s")
                .unwrap();
            let n = match b.try_recv(&mut rx) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => panic!("{e}"),
            };
            for i in 0..n {
                let (from, dgrams) = rx.datagrams(i);
                assert_eq!(from, a.local_addr().unwrap());
                got.extend(dgrams.map(<[u8]>::to_vec));
            }
        }
        assert_eq!(got, sent);
    }
}
