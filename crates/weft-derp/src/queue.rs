//! Per-connection outbound queues with head drop.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;
use weft_proto::derp::{looks_like_disco, Frame};

/// Control frames (pong, peer gone/present) for a regular client beyond this are dropped.
const CONTROL_DEPTH: usize = 1024;

#[derive(Default)]
struct Queues {
    data: VecDeque<Frame>,
    disco: VecDeque<Frame>,
    control: VecDeque<Frame>,
    dropped: u64,
    closed: bool,
}

/// Frames waiting for one connection's writer task.
///
/// Two packet queues (disco and other) of `depth` each; when one is full the
/// oldest packet is dropped. Pushing never blocks.
pub(crate) struct ClientQueue {
    q: Mutex<Queues>,
    notify: Notify,
    depth: usize,
    unbounded_control: bool,
}

impl ClientQueue {
    pub(crate) fn new(depth: usize, unbounded_control: bool) -> Self {
        Self {
            q: Mutex::new(Queues::default()),
            notify: Notify::new(),
            depth: depth.max(1),
            unbounded_control,
        }
    }

    /// Queues `frame`; true if an older frame had to be dropped for it.
    pub(crate) fn push(&self, frame: Frame) -> bool {
        let dropped = {
            let mut q = self.q.lock().expect("queue lock");
            if q.closed {
                return false;
            }
            let (queue, limit) = match &frame {
                Frame::RecvPacket { packet, .. } if looks_like_disco(packet) => {
                    (&mut q.disco, self.depth)
                }
                Frame::RecvPacket { .. } => (&mut q.data, self.depth),
                _ if self.unbounded_control => (&mut q.control, usize::MAX),
                _ => (&mut q.control, CONTROL_DEPTH),
            };
            let mut dropped = 0;
            if queue.len() >= limit {
                queue.pop_front();
                dropped = 1;
            }
            queue.push_back(frame);
            q.dropped += dropped;
            dropped > 0
        };
        self.notify.notify_one();
        dropped
    }

    /// Moves everything queued into `out` (control first); returns how many.
    pub(crate) fn take(&self, out: &mut Vec<Frame>) -> usize {
        let mut q = self.q.lock().expect("queue lock");
        let n = q.control.len() + q.disco.len() + q.data.len();
        out.extend(q.control.drain(..));
        out.extend(q.disco.drain(..));
        out.extend(q.data.drain(..));
        n
    }

    pub(crate) async fn wait(&self) {
        self.notify.notified().await;
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.q.lock().expect("queue lock").dropped
    }

    pub(crate) fn close(&self) {
        let mut q = self.q.lock().expect("queue lock");
        q.closed = true;
        q.data.clear();
        q.disco.clear();
        q.control.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use weft_key::NodePublic;

    fn pkt(n: u8) -> Frame {
        Frame::RecvPacket {
            src: NodePublic::from_bytes([1; 32]),
            packet: Bytes::from(vec![n]),
        }
    }

    #[test]
    fn full_queue_drops_oldest_packet() {
        let q = ClientQueue::new(2, false);
        q.push(pkt(1));
        q.push(pkt(2));
        q.push(pkt(3));
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out), 2);
        assert_eq!(out, vec![pkt(2), pkt(3)]);
        assert_eq!(q.dropped(), 1);
    }

    #[test]
    fn control_frames_go_first_and_are_not_displaced_by_packets() {
        let q = ClientQueue::new(1, false);
        q.push(pkt(1));
        q.push(Frame::Pong { data: [0; 8] });
        q.push(pkt(2));
        let mut out = Vec::new();
        q.take(&mut out);
        assert_eq!(out, vec![Frame::Pong { data: [0; 8] }, pkt(2)]);
    }
}
