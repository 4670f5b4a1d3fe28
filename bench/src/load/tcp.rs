//! Raw TCP load: request/response round trips, and bulk download.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{finished, next_send, record, LoadResult, Pacer, Window};

/// Writes `size` bytes and reads `size` bytes back (the upstream echoes).
pub async fn request_response(target: SocketAddr, size: usize, window: Window, mut pacer: Option<Pacer>) -> LoadResult {
    let mut result = LoadResult::default();
    let message = vec![b'r'; size.max(1)];
    let mut reply = vec![0u8; size.max(1)];
    let mut stream: Option<TcpStream> = None;
    while let Some(sent) = next_send(&mut pacer, &window).await {
        if stream.is_none() {
            stream = match TcpStream::connect(target).await {
                Ok(connected) => {
                    let _ = connected.set_nodelay(true);
                    Some(connected)
                }
                Err(_) => {
                    record(&mut result, &window, sent, Instant::now(), false);
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    continue;
                }
            };
        }
        let Some(connection) = stream.as_mut() else { continue };
        let outcome = async {
            connection.write_all(&message).await?;
            connection.read_exact(&mut reply).await?;
            std::io::Result::Ok(())
        }
        .await;
        let done = Instant::now();
        finished(&mut pacer, done);
        let ok = outcome.is_ok();
        record(&mut result, &window, sent, done, ok);
        if !ok {
            stream = None;
        }
    }
    result
}

/// Reads as fast as the upstream (a source) sends; counts bytes in the window.
pub async fn bulk(target: SocketAddr, window: Window) -> LoadResult {
    let mut result = LoadResult::default();
    let mut buf = vec![0u8; 256 * 1024];
    while Instant::now() < window.end {
        let Ok(mut stream) = TcpStream::connect(target).await else {
            result.errors += u64::from(window.contains(Instant::now()));
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            continue;
        };
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    result.errors += u64::from(window.contains(Instant::now()));
                    break;
                }
                Ok(n) => {
                    let now = Instant::now();
                    if window.contains(now) {
                        result.bytes += n as u64;
                    } else if now >= window.end {
                        return result;
                    }
                }
            }
        }
    }
    result
}
