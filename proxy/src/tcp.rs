//! Opaque TCP: pick an endpoint, connect, relay both ways.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::BytesMut;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use crate::access_log::{millis, TcpRecord};
use crate::balance::PickInput;
use crate::io::{read_when_ready, ReadSize, WaitReadable};
use crate::policy::outlier::TryOutcome;
use crate::policy::throttle::BandwidthLimits;
use crate::route::{InFlight, ListenerTable, RouteTable, TransparentSettings};
use crate::state::Shared;
use crate::stream::ClientStream;
use crate::upstream;

/// Read size per direction: it starts small (most relayed connections
/// are interactive) and doubles each time a read fills it, up to the
/// maximum, so a bulk transfer soon moves large chunks per syscall.
const FIRST_BUFFER: usize = 2 * 1024;
const MAX_BUFFER: usize = 256 * 1024;

/// Relays a client connection to the listener's TCP route. `prefix` holds
/// bytes already read from the client (during detection).
pub async fn relay(
    mut client: ClientStream,
    tls: &crate::tls::ConnFacts,
    prefix: BytesMut,
    client_addr: SocketAddr,
    shared: &Shared,
    table: &RouteTable,
    listener: &ListenerTable,
) {
    let started = Instant::now();
    let Some(route) = listener.tcp_route_for(tls) else {
        tracing::debug!(listener = %listener.name, client = %client_addr, sni = ?tls.sni, "no TCP route; closing");
        return;
    };
    if !listener.allows(Some(route), tls.peer.as_ref()) {
        listener.metrics.access_denied.inc("tcp");
        tracing::info!(
            listener = %listener.name,
            client = %client_addr,
            peer = tls.peer.as_ref().map(|p| p.primary()),
            "TCP connection refused by access control"
        );
        return;
    }
    if route.connection_rate_limit.as_ref().is_some_and(|limit| !limit.admit()) {
        listener.metrics.local_reply("rate_limited");
        return;
    }
    let target = route.split.pick();
    let cluster = &table.clusters[target.cluster];
    let pick = PickInput { client_ip: client_addr.ip(), hash_header: None };
    let log = |upstream: Option<SocketAddr>, rx: u64, tx: u64, error: Option<String>| {
        if table.access_log {
            shared.access_log.tcp(
                table.access_log_format,
                &TcpRecord {
                    listener: &listener.name,
                    cluster: &cluster.name,
                    client: client_addr,
                    upstream,
                    bytes_rx: rx,
                    bytes_tx: tx,
                    duration_ms: millis(started.elapsed()),
                    error,
                    sni: tls.sni.as_deref(),
                    peer: tls.peer.as_ref().map(|peer| peer.primary()),
                },
            );
        }
    };
    let Some(endpoint) = cluster.pick(&pick).cloned() else {
        tracing::debug!(cluster = %cluster.name, "no endpoint for TCP connection; closing");
        log(None, 0, 0, Some("no endpoint".into()));
        return;
    };
    let _in_flight = InFlight::start(&endpoint);
    let mut upstream = match upstream::connect(&endpoint, cluster.connect_timeout).await {
        Ok(stream) => stream,
        Err(error) => {
            if !matches!(error, crate::error::ConnectError::Overloaded(_)) {
                cluster.observe(&endpoint, TryOutcome::ConnectFailure);
            }
            log(Some(endpoint.addr), 0, 0, Some(error.to_string()));
            return;
        }
    };
    // For outlier detection a connection counts as a success once it is
    // made; what happens on it later is the application's business.
    cluster.observe(&endpoint, TryOutcome::Connected);

    let Some(counters) = &target.tcp_bytes else {
        return;
    };
    let (rx_counter, tx_counter) = (&counters.rx, &counters.tx);
    let rx = AtomicU64::new(0);
    let tx = AtomicU64::new(0);
    let mut outcome = None;
    if !prefix.is_empty() {
        if let Err(error) = crate::io::write_out(&mut upstream, &prefix).await {
            outcome = Some(error.to_string());
        } else {
            rx.fetch_add(prefix.len() as u64, Ordering::Relaxed);
            rx_counter.inc_by(prefix.len() as u64);
        }
    }
    if outcome.is_none() {
        let (client_read, client_write) = client.split();
        let limits = listener.bandwidth.as_ref();
        let mut client_read = BandwidthLimits::wrap(limits, client_read);
        let mut client_write = BandwidthLimits::wrap(limits, client_write);
        let (mut upstream_read, mut upstream_write) = upstream.io_mut().split();
        let activity = Activity::new();
        let to_upstream = pipe(&mut client_read, &mut upstream_write, &rx, rx_counter, &activity);
        let to_client = pipe(&mut upstream_read, &mut client_write, &tx, tx_counter, &activity);
        tokio::select! {
            // A half-close lets the other direction go on; an error (a reset)
            // ends both.
            result = async { tokio::try_join!(to_upstream, to_client) } => {
                outcome = result.err().map(|e| e.to_string());
            }
            () = activity.idle(listener.tcp_idle_timeout) => {
                outcome = Some("idle timeout".into());
            }
        }
    }
    let (rx, tx) = (rx.load(Ordering::Relaxed), tx.load(Ordering::Relaxed));
    listener.metrics.bytes_rx.inc_by(rx);
    listener.metrics.bytes_tx.inc_by(tx);
    log(Some(endpoint.addr), rx, tx, outcome);
}

/// Relays a transparent connection that no route takes to where it was
/// going (egress allowed). Counted, logged and idle-limited like routed
/// TCP; its access-log cluster is `passthrough` (Envoy's PassthroughCluster).
pub async fn pass_through(
    client: tokio::net::TcpStream,
    destination: SocketAddr,
    client_addr: SocketAddr,
    settings: &TransparentSettings,
    shared: &Shared,
    table: &RouteTable,
    listener: &ListenerTable,
) {
    let started = Instant::now();
    let log = |rx: u64, tx: u64, error: Option<String>| {
        if table.access_log {
            shared.access_log.tcp(
                table.access_log_format,
                &TcpRecord {
                    listener: &listener.name,
                    cluster: "passthrough",
                    client: client_addr,
                    upstream: Some(destination),
                    bytes_rx: rx,
                    bytes_tx: tx,
                    duration_ms: millis(started.elapsed()),
                    error,
                    sni: None,
                    peer: None,
                },
            );
        }
    };
    let mut upstream =
        match tokio::time::timeout(settings.connect_timeout, upstream::connect_tcp(destination, table.socket_mark))
            .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => {
                tracing::debug!(listener = %listener.name, %destination, %error, "pass-through connect failed");
                log(0, 0, Some(error.to_string()));
                return;
            }
            Err(_) => {
                log(0, 0, Some("connect timeout".into()));
                return;
            }
        };
    let _ = upstream.set_nodelay(true);
    let mut client = ClientStream::Plain(client);
    let (rx, tx) = (AtomicU64::new(0), AtomicU64::new(0));
    let (client_read, client_write) = client.split();
    let limits = listener.bandwidth.as_ref();
    let mut client_read = BandwidthLimits::wrap(limits, client_read);
    let mut client_write = BandwidthLimits::wrap(limits, client_write);
    let (mut upstream_read, mut upstream_write) = upstream.split();
    let activity = Activity::new();
    let to_upstream = pipe(&mut client_read, &mut upstream_write, &rx, &listener.metrics.bytes_rx, &activity);
    let to_client = pipe(&mut upstream_read, &mut client_write, &tx, &listener.metrics.bytes_tx, &activity);
    let outcome = tokio::select! {
        result = async { tokio::try_join!(to_upstream, to_client) } => result.err().map(|e| e.to_string()),
        () = activity.idle(listener.tcp_idle_timeout) => Some("idle timeout".into()),
    };
    log(rx.load(Ordering::Relaxed), tx.load(Ordering::Relaxed), outcome);
}

/// Copies until EOF, then half-closes the writer so the peer sees the end of
/// this direction while the other direction keeps flowing. Between bursts
/// the direction holds no buffer (`read_when_ready`).
async fn pipe<R, W>(
    reader: &mut R,
    writer: &mut W,
    total: &AtomicU64,
    counter: &Counter,
    activity: &Activity,
) -> std::io::Result<()>
where
    R: AsyncRead + WaitReadable + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buffer = BytesMut::new();
    let mut size = ReadSize::new(FIRST_BUFFER, MAX_BUFFER);
    loop {
        let n = read_when_ready(reader, &mut buffer, &mut size).await?;
        if n == 0 {
            writer.shutdown().await?;
            return Ok(());
        }
        crate::io::write_out(writer, &buffer).await?;
        buffer.clear();
        total.fetch_add(n as u64, Ordering::Relaxed);
        counter.inc_by(n as u64);
        activity.touch();
    }
}

/// Last time bytes moved in either direction.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity { start: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `limit`.
    async fn idle(&self, limit: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}
