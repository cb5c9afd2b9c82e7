//! HTTP helpers shared by the operator's endpoints (the Alertmanager webhook and `/mcp`).
//!
//! Contract: [`serve`] serves a router on a listener with the bounds every listener needs —
//! at most [`Limits::max_connections`] connections at once (the next waits in the kernel's
//! backlog) and [`Limits::per_peer`] from one address (past it a new one is closed), request headers within [`Limits::header_timeout`] (a client trickling them is
//! cut off), each request's peer address in its extensions (`ConnectInfo`), and a graceful
//! stop. Bodies are bounded in size and time by the routes that read them.
//! [`refuse_oversized`] answers for a request whose declared body is over a limit:
//! it reads and drops what the client is sending (up to a bound), so the client gets to
//! read the 413 instead of a reset connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::http::header;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

/// The bounds of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once.
    pub max_connections: usize,
    /// Connections open at once from one address (so one client cannot hold them all).
    pub per_peer: usize,
    /// Most time from a request's first byte to the end of its headers.
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_connections: 1024, per_peer: 256, header_timeout: Duration::from_secs(10) }
    }
}

/// A connection counted against its address until it ends.
struct PeerSlot {
    peers: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    ip: std::net::IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// Serves `router` on `listener` within `limits` until `stop`; connections in flight finish
/// their requests first.
pub fn serve<L>(
    mut listener: L,
    router: axum::Router,
    limits: Limits,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    tokio::spawn(async move {
        let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
        let peers: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>> = Arc::default();
        let connections = tokio_util::task::TaskTracker::new();
        loop {
            let permit = tokio::select! {
                () = stop.cancelled() => break,
                p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            };
            let (io, peer) = tokio::select! {
                () = stop.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            // One address may hold only its share: past it, the new connection is closed.
            let held = {
                let mut map = peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let n = map.entry(peer.ip()).or_default();
                if *n >= limits.per_peer {
                    None
                } else {
                    *n += 1;
                    Some(PeerSlot { peers: peers.clone(), ip: peer.ip() })
                }
            };
            let Some(held) = held else {
                tracing::debug!(%peer, "connection refused: this address holds its share of connections");
                drop(io);
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(
                router.clone().layer(axum::Extension(axum::extract::ConnectInfo(peer))),
            );
            let stop = stop.clone();
            connections.spawn(async move {
                let _permit = permit;
                let _held = held;
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.header_timeout);
                let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service).with_upgrades();
                tokio::pin!(connection);
                tokio::select! {
                    r = connection.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "connection ended");
                        }
                    }
                    () = stop.cancelled() => {
                        connection.as_mut().graceful_shutdown();
                        let _ = connection.await;
                    }
                }
            });
        }
        connections.close();
        connections.wait().await;
    })
}

/// `Ok(req)` when the declared body fits `max`; otherwise drain it (at most `8 × max`) and
/// give `Err(())` — the caller answers 413.
pub async fn refuse_oversized(req: Request, max: usize) -> Result<Request, ()> {
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_none_or(|n| n <= max) {
        return Ok(req);
    }
    let mut stream = req.into_body().into_data_stream();
    let mut drained = 0usize;
    while let Some(Ok(chunk)) = stream.next().await {
        drained += chunk.len();
        if drained > 8 * max {
            break;
        }
    }
    Err(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn read_some(tcp: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
        let mut buf = vec![0u8; 1024];
        match tokio::time::timeout(within, tcp.read(&mut buf)).await {
            Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Ok(Err(_)) => Some(String::new()),
            Err(_) => None,
        }
    }

    #[tokio::test]
    async fn a_listener_bounds_its_connections_and_how_long_headers_may_take() {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = tcp.local_addr().unwrap();
        let router = axum::Router::new().route(
            "/",
            axum::routing::get(|axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>| async move {
                format!("hello {}", peer.ip())
            }),
        );
        let limits = Limits { max_connections: 2, per_peer: 2, header_timeout: Duration::from_millis(500) };
        let stop = CancellationToken::new();
        let server = serve(tcp, router, limits, stop.clone());
        // Two clients trickling their headers hold both connections.
        let mut slow = Vec::new();
        for _ in 0..2 {
            let mut c = tokio::net::TcpStream::connect(address).await.unwrap();
            c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
            slow.push(c);
        }
        // A third is not served while they hold them...
        let mut third = tokio::net::TcpStream::connect(address).await.unwrap();
        third.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        assert_eq!(read_some(&mut third, Duration::from_millis(150)).await, None, "served past the cap");
        // ...the slow ones are cut off at the header timeout, and then it is, with its peer known.
        for c in &mut slow {
            let cut = read_some(c, Duration::from_secs(10)).await.expect("a slow client is cut off");
            assert!(cut.is_empty() || cut.starts_with("HTTP/1.1 408"), "{cut}");
        }
        let served = read_some(&mut third, Duration::from_secs(10)).await.expect("served once a connection is free");
        assert!(served.starts_with("HTTP/1.1 200") && served.contains("hello 127.0.0.1"), "{served}");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn one_address_cannot_hold_every_connection() {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = tcp.local_addr().unwrap();
        let router = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let limits = Limits { max_connections: 10, per_peer: 1, header_timeout: Duration::from_millis(500) };
        let stop = CancellationToken::new();
        let _server = serve(tcp, router, limits, stop.clone());
        let mut holder = tokio::net::TcpStream::connect(address).await.unwrap();
        holder.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        // The server accepts in order: the holder first.
        let mut probe = tokio::net::TcpStream::connect(address).await.unwrap();
        probe.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let answer = read_some(&mut probe, Duration::from_secs(10)).await.expect("closed, not left waiting");
        assert!(answer.is_empty(), "a second connection from the same address is closed: {answer}");
        // Once the holder is cut off at the header timeout, the address may connect again.
        assert!(read_some(&mut holder, Duration::from_secs(10)).await.is_some());
        let mut again = tokio::net::TcpStream::connect(address).await.unwrap();
        again.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let served = read_some(&mut again, Duration::from_secs(10)).await.unwrap();
        assert!(served.starts_with("HTTP/1.1 200"), "{served}");
        stop.cancel();
    }
}
