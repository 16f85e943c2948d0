//! What the benchmarks share: latency statistics, a keep-alive HTTP/1.1 client on loopback,
//! a closed-loop load generator, the Markdown row printer and the axum hello-world baseline.
//! Included by `sandbox_bench.rs` and `wasm_bench.rs` with `#[path]`; never a test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Latency percentiles in microseconds and throughput.
pub(crate) struct Stats {
    pub(crate) p50: f64,
    pub(crate) p99: f64,
    pub(crate) rps: f64,
    pub(crate) n: usize,
}

pub(crate) fn stats(mut lat: Vec<Duration>, wall: Duration) -> Stats {
    lat.sort();
    let pick = |q: f64| lat[((lat.len() as f64 - 1.0) * q).round() as usize].as_secs_f64() * 1e6;
    Stats {
        p50: pick(0.50),
        p99: pick(0.99),
        rps: lat.len() as f64 / wall.as_secs_f64(),
        n: lat.len(),
    }
}

/// One keep-alive HTTP/1.1 connection; returns the status and body of each request.
pub(crate) struct Conn {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub(crate) async fn new(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).await.expect("connect");
        s.set_nodelay(true).unwrap();
        Conn {
            s,
            buf: Vec::with_capacity(8192),
        }
    }

    pub(crate) async fn request(&mut self, req: &[u8]) -> (u16, Vec<u8>) {
        self.s.write_all(req).await.expect("write");
        self.buf.clear();
        let mut chunk = [0u8; 8192];
        loop {
            let n = self.s.read(&mut chunk).await.expect("read");
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let status: u16 = head[9..12].parse().unwrap_or(0);
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map(|v| v.trim().parse().unwrap())
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + len {
                    let n = self.s.read(&mut chunk).await.expect("read body");
                    assert!(n > 0);
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                return (status, self.buf[end + 4..end + 4 + len].to_vec());
            }
        }
    }
}

pub(crate) fn find(h: &[u8], n: &[u8]) -> Option<usize> {
    h.windows(n.len()).position(|w| w == n)
}

/// `total` requests over `conc` connections, at most `limit` long.
pub(crate) async fn load(
    addr: &str,
    req: Vec<u8>,
    conc: usize,
    total: usize,
    limit: Duration,
) -> Stats {
    let req = Arc::new(req);
    let started = Instant::now();
    let per = total / conc;
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (addr, req) = (addr.to_string(), req.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::new(&addr).await;
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                if started.elapsed() > limit {
                    break;
                }
                let t = Instant::now();
                let (status, body) = c.request(&req).await;
                lat.push(t.elapsed());
                assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    stats(all, started.elapsed())
}

pub(crate) fn row(name: &str, s: &Stats) {
    println!(
        "| {name} | {:.0} | {:.0} | {:.0} | {} |",
        s.p50, s.p99, s.rps, s.n
    );
}

pub(crate) async fn hello_world() -> String {
    use axum::routing::get;
    let app = axum::Router::new().route("/", get(|| async { "Hello, World!" }));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}
