//! DERP relay benchmark (loopback only, bounded in time and count).
//!
//! `derp_bench` runs everything and prints a Markdown report;
//! `derp_bench server` is the relay child process it starts (so the relay's
//! memory can be measured on its own).
//!
//! Environment: `BENCH_SECS` (per throughput run, default 3), `BENCH_IDLE`
//! (idle connections, default 10000), `BENCH_PKT` (packet bytes, default 1200).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_derp::client::{ClientOptions, DerpClient};
use weft_derp::{DerpServer, ServerOptions};
use weft_key::NodePrivate;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::args().nth(1).as_deref() == Some("server") {
        rt.block_on(serve());
        return;
    }
    rt.block_on(bench());
}

async fn serve() {
    let opts = ServerOptions {
        queue_depth: env_num("BENCH_QUEUE", ServerOptions::default().queue_depth as u64) as usize,
        ..Default::default()
    };
    let server = DerpServer::new(NodePrivate::generate(), opts);
    let ln = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("ADDR {}", ln.local_addr().unwrap());
    let router = server.router();
    // Bounded lifetime even if the parent dies.
    let _ = tokio::time::timeout(
        Duration::from_secs(600),
        weft_derp::standalone::accept_loop(ln, server, router, None),
    )
    .await;
}

struct RelayChild {
    child: Child,
    addr: SocketAddr,
}

impl RelayChild {
    fn start() -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("server")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line.trim().strip_prefix("ADDR ").unwrap().parse().unwrap();
        Self { child, addr }
    }

    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for RelayChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn bench() {
    let secs = env_num("BENCH_SECS", 3);
    let idle = env_num("BENCH_IDLE", 10_000) as usize;
    let pkt = env_num("BENCH_PKT", 1200) as usize;
    let dur = Duration::from_secs(secs);
    println!(
        "cores: {}, packet size: {pkt} B, {secs} s per run",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!();

    let (bulk, small) = tcp_baseline(dur, pkt).await;
    println!(
        "| loopback TCP copy (one connection, 64 KiB writes) | {:.0} MB/s |",
        bulk
    );
    println!(
        "| loopback TCP copy (one connection, {pkt} B writes) | {:.0} MB/s, {:.0} writes/s |",
        small / 1e6,
        small / pkt as f64
    );
    println!();
    let window = env_num("BENCH_WINDOW", 256);
    println!("window = packets in flight per sender: clamp(4 x {window} / pairs, 32, {window}); unpaced = send as fast as possible");
    println!("| client pairs | sender pacing | delivered packets/s | delivered MB/s | sent packets/s | lost |");
    println!("|---|---|---|---|---|---|");
    for pairs in [1usize, 10, 100] {
        // The same total number of packets in flight whatever the pair count.
        let per_pair = (window * 4 / pairs as u64).clamp(32, window);
        for w in [per_pair, 0] {
            let relay = RelayChild::start();
            let r = relay_run(relay.addr, pairs, pkt, dur, w).await;
            println!(
                "| {pairs} | {} | {:.0} | {:.1} | {:.0} | {:.1}% |",
                if w == 0 {
                    "unpaced".to_string()
                } else {
                    format!("window {w}")
                },
                r.delivered as f64 / r.secs,
                r.delivered as f64 * pkt as f64 / r.secs / 1e6,
                r.sent as f64 / r.secs,
                100.0 * (r.sent.saturating_sub(r.delivered)) as f64 / r.sent.max(1) as f64,
            );
        }
    }
    println!();
    let relay = RelayChild::start();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = relay.rss_kib();
    let t0 = Instant::now();
    let clients = open_idle(relay.addr, idle).await;
    let connect_secs = t0.elapsed().as_secs_f64();
    // Let the relay settle its per-connection state.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = relay.rss_kib();
    println!(
        "| idle connections | relay RSS before | relay RSS after | per connection | connect time |\n|---|---|---|---|---|\n| {} | {} KiB | {} KiB | {:.1} KiB | {:.1} s |",
        clients.len(),
        before,
        after,
        (after.saturating_sub(before)) as f64 / clients.len().max(1) as f64,
        connect_secs
    );
}

/// MB/s for bulk 64 KiB writes and bytes/s for `pkt`-sized writes over one loopback TCP connection.
async fn tcp_baseline(dur: Duration, pkt: usize) -> (f64, f64) {
    async fn run(dur: Duration, chunk: usize) -> f64 {
        let ln = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = ln.local_addr().unwrap();
        let reader = tokio::spawn(async move {
            let (mut s, _) = ln.accept().await.unwrap();
            let mut buf = vec![0u8; 256 << 10];
            let mut total = 0u64;
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return total,
                    Ok(n) => total += n as u64,
                }
            }
        });
        let mut w = tokio::net::TcpStream::connect(addr).await.unwrap();
        w.set_nodelay(true).unwrap();
        let data = vec![1u8; chunk];
        let start = Instant::now();
        while start.elapsed() < dur {
            for _ in 0..64 {
                w.write_all(&data).await.unwrap();
            }
        }
        drop(w);
        let total = reader.await.unwrap();
        total as f64 / start.elapsed().as_secs_f64()
    }
    let bulk = run(dur, 64 << 10).await / 1e6;
    let small = run(dur, pkt).await;
    (bulk, small)
}

struct RelayResult {
    sent: u64,
    delivered: u64,
    secs: f64,
}

/// `window` = 0: senders blast unpaced. Otherwise each sender keeps at most
/// `window` packets in flight toward its receiver (a lost packet frees its
/// slot after 500 ms without progress), which measures what the relay sustains without drops.
async fn relay_run(
    addr: SocketAddr,
    pairs: usize,
    pkt: usize,
    dur: Duration,
    window: u64,
) -> RelayResult {
    let url = format!("http://{addr}/derp");
    let mut senders = Vec::new();
    let mut receivers: Vec<DerpClient> = Vec::new();
    for _ in 0..pairs {
        senders.push(
            DerpClient::connect(&url, NodePrivate::generate(), ClientOptions::default())
                .await
                .unwrap(),
        );
        receivers.push(
            DerpClient::connect(&url, NodePrivate::generate(), ClientOptions::default())
                .await
                .unwrap(),
        );
    }
    let delivered = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let counting = Arc::new(AtomicBool::new(false));
    let dst_keys: Vec<_> = receivers.iter().map(DerpClient::public_key).collect();
    let mut tasks = Vec::new();
    let mut credits = Vec::new();
    for mut r in receivers {
        let (d, c) = (delivered.clone(), counting.clone());
        let credit = Arc::new((AtomicU64::new(0), tokio::sync::Notify::new()));
        credits.push(credit.clone());
        tasks.push(tokio::spawn(async move {
            while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(2), r.recv()).await {
                credit.0.fetch_add(1, Ordering::Relaxed);
                credit.1.notify_one();
                if c.load(Ordering::Relaxed) {
                    d.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let payload = Bytes::from(vec![0x42u8; pkt]);
    let mut send_tasks = Vec::new();
    for ((s, dst), credit) in senders.into_iter().zip(dst_keys).zip(credits) {
        let (st, sn, c, p) = (
            stop.clone(),
            sent.clone(),
            counting.clone(),
            payload.clone(),
        );
        send_tasks.push(tokio::spawn(async move {
            let mut mine = 0u64;
            while !st.load(Ordering::Relaxed) {
                if window > 0 && mine.saturating_sub(credit.0.load(Ordering::Relaxed)) >= window {
                    if tokio::time::timeout(Duration::from_millis(500), credit.1.notified())
                        .await
                        .is_err()
                    {
                        // Whatever is still outstanding was dropped.
                        mine = credit.0.load(Ordering::Relaxed);
                    }
                    continue;
                }
                if s.send(dst, p.clone()).await.is_err() {
                    return;
                }
                mine += 1;
                if c.load(Ordering::Relaxed) {
                    sn.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Warm up, then count for `dur`.
    tokio::time::sleep(Duration::from_millis(300)).await;
    counting.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(dur).await;
    counting.store(false, Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in send_tasks {
        let _ = t.await;
    }
    for t in tasks {
        t.abort();
    }
    RelayResult {
        sent: sent.load(Ordering::Relaxed),
        delivered: delivered.load(Ordering::Relaxed),
        secs,
    }
}

async fn open_idle(addr: SocketAddr, n: usize) -> Vec<DerpClient> {
    let url = format!("http://{addr}/derp");
    let mut out = Vec::with_capacity(n);
    let batch = 200;
    let mut i = 0;
    while i < n {
        let k = batch.min(n - i);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..k {
            let u = url.clone();
            set.spawn(async move {
                DerpClient::connect(&u, NodePrivate::generate(), ClientOptions::default()).await
            });
        }
        while let Some(r) = set.join_next().await {
            match r.unwrap() {
                Ok(c) => out.push(c),
                Err(e) => {
                    eprintln!("idle connect failed after {}: {e}", out.len());
                    return out;
                }
            }
        }
        i += k;
    }
    out
}
