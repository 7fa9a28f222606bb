//! The stand-in's "API": plain HTTP/1.1, one request per connection, every path answered
//! 200 with a small JSON body (no JSON-RPC); the libp2p ports accept and close. And the
//! client side the CLI commands use.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

use crate::{log, Error};

/// Serves `body` to every request on `listener`.
pub async fn serve(listener: TcpListener, body: String) -> Infallible {
    let body: std::sync::Arc<str> = body.into();
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let body = body.clone();
        tokio::spawn(async move {
            let _ = timeout(Duration::from_secs(5), answer(stream, &body)).await;
        });
    }
}

async fn answer(mut stream: TcpStream, body: &str) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buf).await? {
            0 => break,
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_string();
    let (status, body) = match line.split(' ').collect::<Vec<_>>().as_slice() {
        [method, path, version] if version.starts_with("HTTP/1.") => {
            if !path.starts_with("/health") {
                log::info(&format!("api: {method} {path}"));
            }
            ("200 OK", body)
        }
        _ => ("400 Bad Request", "{\"error\":\"bad request\"}"),
    };
    let response =
        format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// Accepts connections on a libp2p port and closes them at once.
pub async fn accept_and_close(listener: TcpListener) -> Infallible {
    loop {
        let _ = listener.accept().await;
    }
}

/// Where a client reaches a server listening on `listen`: loopback for an unspecified address.
pub fn client_addr(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port()),
        IpAddr::V6(ip) if ip.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port()),
        _ => listen,
    }
}

/// GET `path` from `addr`; the body if the answer is 200.
pub async fn get(addr: SocketAddr, path: &str, within: Duration) -> Result<String, String> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("connecting to {addr}: {e}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.map_err(|e| format!("writing to {addr}: {e}"))?;
        let mut response = Vec::new();
        stream.take(1 << 20).read_to_end(&mut response).await.map_err(|e| format!("reading from {addr}: {e}"))?;
        let text = String::from_utf8_lossy(&response);
        let status = text.lines().next().unwrap_or_default();
        match status.split(' ').nth(1) {
            Some("200") => Ok(text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string()),
            _ => Err(format!("{addr} answered {status:?}")),
        }
    };
    timeout(within, exchange).await.unwrap_or_else(|_| Err(format!("no answer from {addr} within {within:?}")))
}

/// `lily wait-api`: GET /health every 200 ms until it answers 200 or `limit` (shown as
/// `shown`) has passed.
pub async fn wait(addr: SocketAddr, limit: Duration, shown: &str) -> Result<(), Error> {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let last = match get(addr, "/health", left.clamp(Duration::from_millis(100), Duration::from_secs(2))).await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Failed(format!("api not ready after {shown}: {last}")));
        }
        tokio::time::sleep(left.min(Duration::from_millis(200))).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_reach_unspecified_addresses_on_loopback() {
        assert_eq!(client_addr("0.0.0.0:1234".parse().unwrap()), "127.0.0.1:1234".parse().unwrap());
        assert_eq!(client_addr("[::]:1234".parse().unwrap()), "[::1]:1234".parse().unwrap());
        assert_eq!(client_addr("10.1.2.3:1234".parse().unwrap()), "10.1.2.3:1234".parse().unwrap());
    }

    #[tokio::test]
    async fn serves_every_path_and_rejects_garbage() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, "{\"standin\":true}".into()));
        assert_eq!(get(addr, "/health", Duration::from_secs(5)).await.unwrap(), "{\"standin\":true}");
        assert_eq!(get(addr, "/rpc/v0", Duration::from_secs(5)).await.unwrap(), "{\"standin\":true}");
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"hello\r\n\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 400 "), "{out}");
    }
}
