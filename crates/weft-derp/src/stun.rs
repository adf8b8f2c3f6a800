//! UDP STUN responder and a one-shot STUN client.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tracing::{debug, trace};
use weft_key::random_bytes;
use weft_proto::stun::{self, Transaction, TransactionResult, TxId};

/// Answers STUN Binding Requests on `socket` until the task is aborted.
pub fn serve(socket: UdpSocket) -> JoinHandle<()> {
    let socket = Arc::new(socket);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 2048];
        loop {
            let (n, from) = match socket.recv_from(&mut buf).await {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on Linux; keep serving.
                    debug!(error = %e, "stun recv");
                    continue;
                }
            };
            let Some(resp) = stun::respond(&buf[..n], from) else {
                trace!(%from, len = n, "ignoring non-binding datagram");
                continue;
            };
            if let Err(e) = socket.send_to(&resp, from).await {
                debug!(%from, error = %e, "stun send");
            }
        }
    })
}

/// Errors of [`probe`].
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Socket failure.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// No answer within the transaction timeout.
    #[error("no STUN answer from {0}")]
    TimedOut(SocketAddr),
}

/// Asks `server` for our mapped address from `socket` (retransmits, 3 s timeout).
pub async fn probe(socket: &UdpSocket, server: SocketAddr) -> Result<SocketAddr, ProbeError> {
    let mut t = Transaction::new(TxId(random_bytes()), server, Instant::now());
    let mut buf = vec![0u8; 2048];
    loop {
        if let Some(req) = t.poll_transmit() {
            socket.send_to(&req, server).await?;
        }
        match t.result() {
            Some(TransactionResult::Mapped { addr, .. }) => return Ok(addr),
            Some(TransactionResult::TimedOut) => return Err(ProbeError::TimedOut(server)),
            None => {}
        }
        let deadline = t
            .poll_timeout()
            .map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std);
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                let (n, from) = r?;
                t.handle_input(from, &buf[..n], Instant::now());
            }
            _ = tokio::time::sleep_until(deadline) => t.handle_timeout(Instant::now()),
        }
    }
}
