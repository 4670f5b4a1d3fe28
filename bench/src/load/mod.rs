//! The load generator: closed loop (each connection sends as fast as
//! answers come back) or open loop at a constant rate, with latency taken
//! from the intended send time so a stalled server is not hidden by the
//! generator waiting for it (coordinated omission).

mod http1;
mod http2;
pub mod mqtt;
mod tcp;

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::histogram::Latencies;
use crate::tls::TlsClient;

pub use http1::{exchange as http1_exchange, Response as Http1Response};
pub use mqtt::MIN_PAYLOAD as MQTT_MIN_PAYLOAD;

/// What each connection does.
#[derive(Clone, Debug, PartialEq)]
pub enum Workload {
    /// HTTP/1.1 GETs on keep-alive connections.
    Http1KeepAlive,
    /// One HTTP/1.1 GET per connection (`Connection: close`), then reconnect.
    Http1NewConnection,
    /// HTTP/2 (h2c) GETs, `streams` in flight per connection.
    Http2 { streams: usize },
    /// TCP request/response: write `size` bytes, read `size` bytes back.
    TcpRequestResponse { size: usize },
    /// TCP download: read whatever the upstream sends, as fast as possible.
    TcpBulk,
    /// MQTT publisher/subscriber pairs (two connections each) through one
    /// broker: PUBLISH at `qos` with `payload` bytes, at most `window`
    /// messages per pair in flight end to end in closed loop.
    Mqtt { qos: u8, window: usize, payload: usize },
}

impl Workload {
    /// Client connections one task of this workload opens.
    pub fn connections_per_task(&self) -> usize {
        match self {
            Workload::Mqtt { .. } => 2,
            _ => 1,
        }
    }
}

#[derive(Clone, Debug)]
pub struct LoadSpec {
    pub target: SocketAddr,
    pub workload: Workload,
    pub connections: usize,
    /// Load applied before measuring (not recorded).
    pub warmup: Duration,
    pub duration: Duration,
    /// Open loop: requests per second over all connections. `None`: closed loop.
    pub rate: Option<f64>,
    /// HTTP/1.1 workloads over TLS with this client; `None`: plaintext.
    pub tls: Option<TlsClient>,
}

/// What a load run measured (inside the measurement window only).
#[derive(Debug, Default)]
pub struct LoadResult {
    pub completed: u64,
    pub errors: u64,
    /// Payload bytes received (bulk transfer).
    pub bytes: u64,
    pub elapsed: Duration,
    pub latencies: Latencies,
}

impl LoadResult {
    pub fn merge(&mut self, other: LoadResult) {
        self.completed += other.completed;
        self.errors += other.errors;
        self.bytes += other.bytes;
        self.latencies.merge(other.latencies);
    }
}

/// The measurement window shared by every connection of a run.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub start: Instant,
    pub end: Instant,
}

impl Window {
    pub fn contains(&self, at: Instant) -> bool {
        at >= self.start && at < self.end
    }
}

/// Paces one connection of an open-loop run.
#[derive(Clone, Copy, Debug)]
pub struct Pacer {
    next: Instant,
    interval: Duration,
    /// When the previous exchange on this connection finished.
    previous_done: Instant,
}

impl Pacer {
    pub fn new(first: Instant, interval: Duration) -> Self {
        Pacer { next: first, interval, previous_done: first }
    }

    /// Waits for the next send slot and returns the instant latency is
    /// measured from. A connection still busy past its slot measures from
    /// the slot (the server made the request wait); one that was idle
    /// measures from the actual send (the generator's own timer lateness —
    /// tokio timers tick in milliseconds — is not the server's doing).
    pub async fn wait(&mut self) -> Instant {
        let intended = self.next;
        self.next += self.interval;
        if self.previous_done > intended {
            return intended;
        }
        tokio::time::sleep_until(intended).await;
        Instant::now()
    }

    pub fn done(&mut self, at: Instant) {
        self.previous_done = at;
    }

    /// The same schedule, its next slot moved to `at` if it is earlier (for
    /// a connection that starts sending only after a setup of its own).
    pub fn not_before(self, at: Instant) -> Pacer {
        if self.next >= at {
            return self;
        }
        Pacer::new(at, self.interval)
    }

    /// The share of this connection's schedule for one of `parts` streams.
    pub fn split(self, index: usize, parts: usize) -> Pacer {
        let interval = self.interval * parts as u32;
        let first = self.next + self.interval * index as u32;
        Pacer::new(first, interval)
    }
}

impl LoadSpec {
    /// The measurement window of a run starting now: warm-up first.
    pub fn window(&self) -> Window {
        let start = Instant::now() + self.warmup;
        Window { start, end: start + self.duration }
    }
}

/// When to send the next request: now (closed loop) or at the pacer's next
/// slot (open loop); `None` once the window is over.
pub async fn next_send(pacer: &mut Option<Pacer>, window: &Window) -> Option<Instant> {
    if Instant::now() >= window.end {
        return None;
    }
    let sent = match pacer.as_mut() {
        Some(pacer) => pacer.wait().await,
        None => Instant::now(),
    };
    (sent < window.end).then_some(sent)
}

/// Tells an open-loop pacer that the exchange it paced has finished.
pub fn finished(pacer: &mut Option<Pacer>, done: Instant) {
    if let Some(pacer) = pacer.as_mut() {
        pacer.done(done);
    }
}

/// Runs a load on the current runtime (tasks are spawned, so a multi-thread
/// runtime spreads connections over its threads), from now until the end of
/// `window`, recording what falls inside it.
pub async fn run(spec: &LoadSpec, window: Window) -> LoadResult {
    let start = Instant::now();
    // One task per connection, or per pair of them for MQTT.
    let connections = (spec.connections / spec.workload.connections_per_task()).max(1);
    let mut tasks = Vec::with_capacity(connections);
    for index in 0..connections {
        let spec = spec.clone();
        let pacer = spec.rate.map(|rate| {
            let per_connection = (rate / connections as f64).max(1e-3);
            let interval = Duration::from_secs_f64(1.0 / per_connection);
            // Stagger the connections over one interval.
            Pacer::new(start + interval.mul_f64(index as f64 / connections as f64), interval)
        });
        tasks.push(tokio::spawn(async move {
            match spec.workload {
                Workload::Http1KeepAlive => http1::keep_alive(spec.target, spec.tls, window, pacer).await,
                Workload::Http1NewConnection => http1::new_connections(spec.target, spec.tls, window, pacer).await,
                Workload::Http2 { streams } => http2::connection(spec.target, streams, window, pacer).await,
                Workload::TcpRequestResponse { size } => tcp::request_response(spec.target, size, window, pacer).await,
                Workload::TcpBulk => tcp::bulk(spec.target, window).await,
                Workload::Mqtt { qos, window: in_flight, payload } => {
                    mqtt::pair(spec.target, qos, in_flight, payload, window, pacer).await
                }
            }
        }));
    }
    let mut result = LoadResult::default();
    for task in tasks {
        if let Ok(part) = task.await {
            result.merge(part);
        }
    }
    result.elapsed = window.end - window.start;
    result
}

/// A request's outcome, recorded when it falls in the window.
pub fn record(result: &mut LoadResult, window: &Window, sent: Instant, done: Instant, ok: bool) {
    if !window.contains(sent) || done >= window.end {
        return;
    }
    if ok {
        result.completed += 1;
        result.latencies.record(done - sent);
    } else {
        result.errors += 1;
    }
}
