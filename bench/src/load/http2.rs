//! HTTP/2 (h2c) load: several concurrent streams per connection.

use std::net::SocketAddr;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::{finished, next_send, record, LoadResult, Pacer, Window};

/// One connection with `streams` request loops sharing it. Open loop: the
/// connection's rate is split evenly over its streams.
pub async fn connection(target: SocketAddr, streams: usize, window: Window, pacer: Option<Pacer>) -> LoadResult {
    let mut result = LoadResult::default();
    while Instant::now() < window.end {
        let Some(client) = handshake(target).await else {
            result.errors += u64::from(window.contains(Instant::now()));
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            continue;
        };
        let streams = streams.max(1);
        let mut tasks = Vec::with_capacity(streams);
        for index in 0..streams {
            let client = client.clone();
            let pacer = pacer.map(|p| p.split(index, streams));
            tasks.push(tokio::spawn(stream_loop(client, window, pacer)));
        }
        let mut broken = false;
        for task in tasks {
            if let Ok((part, failed)) = task.await {
                result.merge(part);
                broken |= failed;
            }
        }
        if !broken {
            break;
        }
    }
    result
}

async fn handshake(target: SocketAddr) -> Option<h2::client::SendRequest<Bytes>> {
    let stream = TcpStream::connect(target).await.ok()?;
    stream.set_nodelay(true).ok()?;
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .initial_connection_window_size(1 << 24)
        .handshake::<_, Bytes>(stream)
        .await
        .ok()?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Some(client)
}

/// Sends requests until the window ends; `true` in the result means the
/// connection broke and the caller should reconnect.
async fn stream_loop(
    mut client: h2::client::SendRequest<Bytes>,
    window: Window,
    mut pacer: Option<Pacer>,
) -> (LoadResult, bool) {
    let mut result = LoadResult::default();
    while let Some(sent) = next_send(&mut pacer, &window).await {
        let outcome = exchange(&mut client).await;
        let done = Instant::now();
        finished(&mut pacer, done);
        match outcome {
            Ok(ok) => record(&mut result, &window, sent, done, ok),
            Err(_) => {
                record(&mut result, &window, sent, done, false);
                return (result, true);
            }
        }
    }
    (result, false)
}

async fn exchange(client: &mut h2::client::SendRequest<Bytes>) -> Result<bool, h2::Error> {
    let request = http::Request::get("http://bench.local/").body(()).expect("a valid request");
    let mut ready = client.clone().ready().await?;
    let (response, _) = ready.send_request(request, true)?;
    let response = response.await?;
    let ok = response.status().is_success();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    Ok(ok)
}
