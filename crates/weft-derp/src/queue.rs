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
    data_bytes: usize,
    disco: VecDeque<Frame>,
    control: VecDeque<Frame>,
    dropped: u64,
    closed: bool,
    /// The writer should close the connection once everything queued is written.
    finishing: bool,
}

/// Frames waiting for one connection's writer task.
///
/// Two packet queues, disco and other. The disco queue holds `depth` packets;
/// the other holds at least `depth` packets and more while their bytes stay
/// within `byte_budget` (a relay reads many frames per socket read, so a burst
/// for one receiver can exceed a small fixed depth). When a queue is full the
/// oldest packet is dropped. Pushing never blocks.
pub(crate) struct ClientQueue {
    q: Mutex<Queues>,
    notify: Notify,
    depth: usize,
    byte_budget: usize,
    unbounded_control: bool,
}

/// Hard cap on queued data packets regardless of size.
const MAX_DATA_PACKETS: usize = 4096;

fn packet_len(f: &Frame) -> usize {
    match f {
        Frame::RecvPacket { packet, .. } => packet.len() + 32,
        _ => 0,
    }
}

impl ClientQueue {
    pub(crate) fn new(depth: usize, byte_budget: usize, unbounded_control: bool) -> Self {
        Self {
            q: Mutex::new(Queues::default()),
            notify: Notify::new(),
            depth: depth.max(1),
            byte_budget,
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
            let q = &mut *q;
            let mut dropped = 0;
            match &frame {
                Frame::RecvPacket { packet, .. } if looks_like_disco(packet) => {
                    if q.disco.len() >= self.depth {
                        q.disco.pop_front();
                        dropped += 1;
                    }
                    q.disco.push_back(frame);
                }
                Frame::RecvPacket { .. } => {
                    let len = packet_len(&frame);
                    while q.data.len() >= self.depth
                        && (q.data.len() >= MAX_DATA_PACKETS
                            || q.data_bytes + len > self.byte_budget)
                    {
                        let Some(old) = q.data.pop_front() else { break };
                        q.data_bytes -= packet_len(&old);
                        dropped += 1;
                    }
                    q.data_bytes += len;
                    q.data.push_back(frame);
                }
                _ => {
                    let limit = if self.unbounded_control {
                        usize::MAX
                    } else {
                        CONTROL_DEPTH
                    };
                    if q.control.len() >= limit {
                        q.control.pop_front();
                        dropped += 1;
                    }
                    q.control.push_back(frame);
                }
            }
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
        q.data_bytes = 0;
        n
    }

    pub(crate) async fn wait(&self) {
        self.notify.notified().await;
    }

    /// Queues `frame` as the last one: the writer closes the connection once it and
    /// everything queued before it are written (a server restart notice).
    pub(crate) fn push_last(&self, frame: Frame) {
        {
            let mut q = self.q.lock().expect("queue lock");
            if q.closed {
                return;
            }
            q.control.push_back(frame);
            q.finishing = true;
        }
        self.notify.notify_one();
    }

    /// True once [`ClientQueue::push_last`] ran and everything queued has been taken.
    pub(crate) fn finished(&self) -> bool {
        let q = self.q.lock().expect("queue lock");
        q.finishing && q.control.is_empty() && q.disco.is_empty() && q.data.is_empty()
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.q.lock().expect("queue lock").dropped
    }

    pub(crate) fn close(&self) {
        let mut q = self.q.lock().expect("queue lock");
        q.closed = true;
        q.data.clear();
        q.data_bytes = 0;
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
        let q = ClientQueue::new(2, 0, false);
        q.push(pkt(1));
        q.push(pkt(2));
        q.push(pkt(3));
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out), 2);
        assert_eq!(out, vec![pkt(2), pkt(3)]);
        assert_eq!(q.dropped(), 1);
    }

    #[test]
    fn small_packets_may_exceed_depth_within_the_byte_budget() {
        let q = ClientQueue::new(2, 33 * 4, false);
        for n in 1..=6 {
            q.push(pkt(n));
        }
        let mut out = Vec::new();
        assert_eq!(q.take(&mut out), 4);
        assert_eq!(out, vec![pkt(3), pkt(4), pkt(5), pkt(6)]);
        assert_eq!(q.dropped(), 2);
    }

    #[test]
    fn control_frames_go_first_and_are_not_displaced_by_packets() {
        let q = ClientQueue::new(1, 0, false);
        q.push(pkt(1));
        q.push(Frame::Pong { data: [0; 8] });
        q.push(pkt(2));
        let mut out = Vec::new();
        q.take(&mut out);
        assert_eq!(out, vec![Frame::Pong { data: [0; 8] }, pkt(2)]);
    }
}
