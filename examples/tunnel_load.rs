#![expect(clippy::print_stdout, reason = "the results are the output")]
//! Load generator for `bench/suite.py`: opens tunnels through a SOCKS5
//! proxy (ours, or a stock Shadowsocks client) to an echo server it runs
//! itself, and prints one JSON line of results.
//!
//! - `tunnel_load setup <socks> <seconds> <concurrency>`: new tunnels as
//!   fast as they go, each carrying one 32-byte round trip; rate, p50, p99.
//! - `tunnel_load hold <socks> <count>`: opens `count` tunnels, each with
//!   one round trip, prints `{"open": n}`, holds them until stdin closes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

async fn echo_server() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(addr)
}

/// SOCKS5 CONNECT to `target` through `socks`, then one round trip of `n` bytes.
async fn tunnel(socks: SocketAddr, target: SocketAddr, n: usize) -> Result<TcpStream> {
    let mut s = TcpStream::connect(socks).await?;
    s.set_nodelay(true)?;
    let SocketAddr::V4(v4) = target else {
        return Err("IPv4 target expected".into());
    };
    let mut req = vec![5, 1, 0, 5, 1, 0, 1];
    req.extend_from_slice(&v4.ip().octets());
    req.extend_from_slice(&v4.port().to_be_bytes());
    s.write_all(&req).await?;
    let mut reply = [0u8; 12];
    s.read_exact(&mut reply).await?;
    if reply[1] != 0 || reply[3] != 0 {
        return Err(format!("SOCKS refused: {reply:?}").into());
    }
    let ping = vec![b'p'; n];
    s.write_all(&ping).await?;
    let mut back = vec![0u8; n];
    s.read_exact(&mut back).await?;
    if back != ping {
        return Err("echo mismatch".into());
    }
    Ok(s)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn setup(socks: SocketAddr, seconds: u64, concurrency: usize) -> Result<()> {
    let target = echo_server().await?;
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let errors = errors.clone();
        workers.push(tokio::spawn(async move {
            let mut took = Vec::new();
            while Instant::now() < deadline {
                let t = Instant::now();
                match tokio::time::timeout(Duration::from_secs(10), tunnel(socks, target, 32)).await
                {
                    Ok(Ok(s)) => {
                        took.push(t.elapsed().as_secs_f64() * 1000.0);
                        drop(s);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            took
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    println!(
        "{{\"tunnels\": {}, \"rate\": {:.1}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}, \"errors\": {}}}",
        all.len(),
        all.len() as f64 / elapsed,
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        errors.load(Ordering::Relaxed)
    );
    Ok(())
}

async fn hold(socks: SocketAddr, count: usize) -> Result<()> {
    let target = echo_server().await?;
    let mut open = Vec::with_capacity(count);
    let mut failed = 0usize;
    // In waves, so the proxies see a realistic arrival rate.
    for wave in (0..count).collect::<Vec<_>>().chunks(200) {
        let opened = futures_util::future::join_all(
            wave.iter()
                .map(|_| tokio::time::timeout(Duration::from_secs(20), tunnel(socks, target, 1))),
        )
        .await;
        for o in opened {
            match o {
                Ok(Ok(s)) => open.push(s),
                _ => failed += 1,
            }
        }
    }
    println!("{{\"open\": {}, \"failed\": {failed}}}", open.len());
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink)
    })
    .await;
    drop(open);
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match arg(1).as_str() {
        "setup" => setup(arg(2).parse()?, arg(3).parse()?, arg(4).parse()?).await,
        "hold" => hold(arg(2).parse()?, arg(3).parse()?).await,
        _ => Err(
            "usage: tunnel_load setup <socks> <seconds> <concurrency> | hold <socks> <count>"
                .into(),
        ),
    }
}
