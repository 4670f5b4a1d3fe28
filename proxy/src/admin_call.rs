//! The CLI's calls to a running proxy's admin server (`wait-ready`, `quit`),
//! for Kubernetes hooks in images that have no curl: a postStart hook that
//! holds the application until the sidecar is ready, a Job that ends its
//! sidecar when the work is done.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long one admin call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause between readiness polls.
const POLL_EVERY: Duration = Duration::from_millis(100);

/// One request; the status code of the answer.
pub fn call(admin: SocketAddr, method: &str, path: &str) -> Result<u16, String> {
    let mut stream =
        TcpStream::connect_timeout(&admin, CALL_TIMEOUT).map_err(|e| format!("connect to {admin}: {e}"))?;
    stream
        .set_read_timeout(Some(CALL_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(CALL_TIMEOUT)))
        .map_err(|e| format!("{admin}: {e}"))?;
    let request =
        format!("{method} {path} HTTP/1.1\r\nhost: {admin}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).map_err(|e| format!("send to {admin}: {e}"))?;
    // The status line is all that is needed; the admin server answers small bodies.
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read from {admin}: {e}")),
        }
        if head.len() > 4096 {
            break;
        }
    }
    let line = String::from_utf8_lossy(&head);
    let status = line.split_whitespace().nth(1).and_then(|code| code.parse().ok());
    status.ok_or_else(|| format!("{admin} did not answer with HTTP: {:?}", line.lines().next().unwrap_or("")))
}

/// Polls `/ready` until it answers 200, or `timeout` passes (the last
/// answer or error is the message).
pub fn wait_ready(admin: SocketAddr, timeout: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    loop {
        let last = match call(admin, "GET", "/ready") {
            Ok(200) => return Ok(started.elapsed()),
            Ok(status) => format!("/ready answered {status}"),
            Err(error) => error,
        };
        if started.elapsed() >= timeout {
            return Err(format!("not ready after {timeout:?}: {last}"));
        }
        std::thread::sleep(POLL_EVERY.min(timeout.saturating_sub(started.elapsed())));
    }
}
