//! MQTT connections: read the CONNECT, check who it is (client-id and
//! user-name lists, credentials), route on it (client id, user name; sticky
//! by client id), then relay both ways. Packets from the client are framed
//! and checked (size, fixed-header rules, no second CONNECT, rate, topic
//! ACLs) and forwarded as the original bytes; the broker's bytes are copied
//! as they are, except where an ACL answer must be slipped in (guard.rs).
//! A violation is answered the MQTT way where the protocol has one (a CONNACK
//! refusal, a v5 PUBACK/SUBACK/DISCONNECT reason) and otherwise closes the
//! connection.

pub mod access;
pub mod connect;
pub mod frame;
pub mod guard;
pub mod metrics;
pub mod packet;
pub mod publish_rate;
pub mod scan;
pub mod topic;
pub mod topic_metrics;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::time::Instant;

use self::connect::{refusal, ConnectError, ConnectInfo};
use self::frame::{check_client_packet, packet_len, FrameError};
use self::guard::{ClientGuard, GuardStop, Verdict};
use self::metrics::MqttMetrics;
use self::scan::PacketScanner;
use crate::access_log::{millis, MqttRecord};
use crate::balance::PickInput;
use crate::io::{read_when_ready, ReadSize};
use crate::policy::outlier::TryOutcome;
use crate::route::{InFlight, ListenerTable, RouteTable};
use crate::state::Shared;
use crate::stream::{ClientStream, ReadSide};
use crate::upstream;

/// Tries at reaching a broker: a CONNECT can go to another broker of the
/// cluster when the first is down, since nothing has been sent yet.
const CONNECT_TRIES: usize = 3;
/// Read size while a CONNECT is awaited (most are under 200 bytes).
const CONNECT_READ: usize = 512;
/// Reads start at this size and grow while they fill up.
const MIN_READ: usize = 512;
const MAX_READ: usize = 64 * 1024;

pub(crate) fn new_read_size() -> ReadSize {
    ReadSize::new(MIN_READ, MAX_READ)
}

/// How a relayed MQTT connection ended, for the log.
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error("client closed")]
    ClientClosed,
    #[error("broker closed")]
    BrokerClosed,
    #[error("client idle beyond its keep-alive")]
    Idle,
    #[error("client over its publish rate")]
    RateExceeded,
    #[error("{0}")]
    Violation(FrameError),
    #[error("{0}")]
    Guard(GuardStop),
    #[error("{0}")]
    Io(std::io::Error),
}

/// What a connection's log line says about MQTT.
#[derive(Default)]
struct Tally {
    packets_in: u64,
    packets_out: u64,
    publishes_in: u64,
    bytes_rx: u64,
    bytes_tx: u64,
}

/// Serves an MQTT client connection. `buf` holds bytes already read (during
/// detection).
pub async fn serve(
    mut client: ClientStream,
    tls: &crate::tls::ConnFacts,
    mut buf: BytesMut,
    client_addr: SocketAddr,
    shared: &Shared,
    table: &RouteTable,
    listener: &ListenerTable,
) {
    let started = Instant::now();
    let settings = &listener.mqtt;
    let connect_len =
        match read_connect(&mut client, &mut buf, settings.max_packet_size, settings.connect_timeout).await {
            Ok(len) => len,
            Err((reason, why)) => {
                tracing::debug!(client = %client_addr, why, "MQTT connection closed before a CONNECT");
                if let Some(reason) = reason {
                    listener.metrics.mqtt.rejected(reason);
                }
                return;
            }
        };
    let mqtt_metrics = &listener.metrics.mqtt;
    mqtt_metrics.packet_in(buf[0]);
    let level = connect::protocol_level(&buf[..connect_len]).unwrap_or(4);
    let mut info = match connect::decode(&buf[..connect_len], settings.max_packet_size) {
        Ok(info) => info,
        Err(error) => {
            tracing::debug!(client = %client_addr, %error, "MQTT CONNECT refused");
            let (codes, reason) = match error {
                ConnectError::UnsupportedLevel(_) => (refusal::UNSUPPORTED_VERSION, "unsupported_version"),
                ConnectError::Malformed(_) => (refusal::MALFORMED, "malformed_connect"),
            };
            mqtt_metrics.rejected(reason);
            let _ = crate::io::write_out(&mut client, &refusal::connack(level, codes)).await;
            return;
        }
    };
    let password = info.password.take();
    let log = |cluster: &str, upstream: Option<SocketAddr>, tally: &Tally, error: Option<String>| {
        if table.access_log {
            shared.access_log.mqtt(
                table.access_log_format,
                &MqttRecord {
                    listener: &listener.name,
                    cluster,
                    client: client_addr,
                    upstream,
                    client_id: &info.client_id,
                    username: info.username.as_deref(),
                    protocol: info.protocol_name(),
                    packets_in: tally.packets_in,
                    packets_out: tally.packets_out,
                    publishes_in: tally.publishes_in,
                    bytes_rx: tally.bytes_rx,
                    bytes_tx: tally.bytes_tx,
                    duration_ms: millis(started.elapsed()),
                    error,
                },
            );
        }
    };
    let refuse = |why: &'static str, reason: &'static str, codes: (u8, u8)| {
        tracing::debug!(client = %client_addr, client_id = %info.client_id, why, "MQTT connection refused");
        mqtt_metrics.rejected(reason);
        log("", None, &Tally { packets_in: 1, ..Tally::default() }, Some(why.to_owned()));
        refusal::connack(info.level, codes)
    };
    if let Err(refused) = settings.access.admit(&info.client_id, info.username.as_deref(), password.as_deref()) {
        let _ = crate::io::write_out(&mut client, &refuse(refused.reason, refused.reason, refused.codes)).await;
        return;
    }
    drop(password);

    let Some(route) = listener.mqtt_route_for(&info.client_id, info.username.as_deref(), tls) else {
        let _ = crate::io::write_out(&mut client, &refuse("no route", "no_route", refusal::SERVER_UNAVAILABLE)).await;
        return;
    };
    if !listener.allows(Some(route), tls.peer.as_ref()) {
        listener.metrics.access_denied.inc("mqtt");
        let _ = crate::io::write_out(
            &mut client,
            &refuse("identity not allowed", "identity_denied", refusal::NOT_AUTHORIZED),
        )
        .await;
        return;
    }
    let target = route.split.pick();
    let cluster = &table.clusters[target.cluster];
    let pick = PickInput {
        client_ip: client_addr.ip(),
        // An empty client id (the broker assigns one) has no session to
        // come back to: such clients spread by address instead of all
        // landing on one broker.
        hash_header: (cluster.hash_client_id && !info.client_id.is_empty()).then_some(info.client_id.as_bytes()),
    };
    let mut connected = None;
    let mut tried: Vec<usize> = Vec::new();
    for _ in 0..CONNECT_TRIES {
        let Some(endpoint) = cluster.pick_untried(&pick, &tried).cloned() else { break };
        match upstream::connect(&endpoint, cluster.connect_timeout).await {
            Ok(stream) => {
                cluster.observe(&endpoint, TryOutcome::Connected);
                connected = Some((endpoint, stream));
                break;
            }
            Err(crate::error::ConnectError::Overloaded(_)) => break,
            Err(_) => {
                cluster.observe(&endpoint, TryOutcome::ConnectFailure);
                tried.push(endpoint.id);
            }
        }
    }
    let Some((endpoint, mut upstream)) = connected else {
        let _ =
            crate::io::write_out(&mut client, &refuse("no broker reachable", "no_broker", refusal::SERVER_UNAVAILABLE))
                .await;
        return;
    };
    let _in_flight = InFlight::start(&endpoint);

    let mut tally = Tally::default();
    let ended = {
        let (mut client_read, mut client_write) = client.split();
        let (mut broker_read, mut broker_write) = upstream.io_mut().split();
        // A client silent for keep-alive × factor is gone (MQTT §3.1.2.10).
        let idle = match info.keep_alive {
            0 => listener.tcp_idle_timeout,
            seconds => Duration::from_secs_f64(f64::from(seconds) * settings.keepalive_factor),
        };
        let needs = guard::Needs {
            acl: settings.access.acl.as_ref().map(|acl| {
                acl.for_client(topic::Client { client_id: &info.client_id, username: info.username.as_deref() })
            }),
            topic_counts: settings.topic_counts.as_deref(),
        };
        let (mut client_guard, mut broker_guard) = match needs.guards(info.level, settings.topic_alias_maximum) {
            Some((client_side, broker_side)) => (Some(client_side), Some(broker_side)),
            None => (None, None),
        };
        let (mut packets_out, mut bytes_tx) = (0u64, 0u64);
        let ended = {
            let to_broker = client_to_broker(
                &mut client_read,
                &mut broker_write,
                &mut buf,
                &info,
                settings.max_packet_size,
                idle,
                settings.publish_rate.as_ref().map(publish_rate::PublishRate::buckets),
                client_guard.as_mut(),
                mqtt_metrics,
                &mut tally,
            );
            let to_client = async {
                match broker_guard.as_mut() {
                    // Boxed: inline, every connection's task would carry the
                    // guarded relay's state, ACL or not.
                    Some(guard) => {
                        let (packets, bytes) = (&mut packets_out, &mut bytes_tx);
                        let relay = guard.relay(&mut broker_read, &mut client_write, mqtt_metrics, packets, bytes);
                        match Box::pin(relay).await {
                            Ok(()) => Ended::BrokerClosed,
                            Err(error) => Ended::Io(error),
                        }
                    }
                    None => {
                        let (packets, bytes) = (&mut packets_out, &mut bytes_tx);
                        broker_to_client(&mut broker_read, &mut client_write, mqtt_metrics, packets, bytes).await
                    }
                }
            };
            tokio::select! {
                ended = to_broker => ended,
                ended = to_client => ended,
            }
        };
        tally.packets_out = packets_out;
        tally.bytes_tx = bytes_tx;
        let reason = match &ended {
            Ended::Violation(FrameError::Malformed(_)) => Some(0x81),
            Ended::Violation(FrameError::Protocol(_)) => Some(0x82),
            Ended::Violation(FrameError::TooLarge { .. }) => Some(0x95),
            // "Message rate too high".
            Ended::RateExceeded => Some(0x96),
            Ended::Guard(GuardStop::TopicAliasInvalid) => Some(0x94),
            Ended::Guard(GuardStop::NotAuthorized(_)) => Some(0x87),
            _ => None,
        };
        if let (Some(reason), true) = (reason, info.is_v5()) {
            let _ = crate::io::write_out(&mut client_write, &[0xe0, 0x02, reason, 0x00]).await;
        }
        ended
    };
    if let Some(counters) = &target.tcp_bytes {
        counters.rx.inc_by(tally.bytes_rx);
        counters.tx.inc_by(tally.bytes_tx);
    }
    listener.metrics.bytes_rx.inc_by(tally.bytes_rx);
    listener.metrics.bytes_tx.inc_by(tally.bytes_tx);
    match &ended {
        Ended::Violation(violation) => mqtt_metrics.rejected(match violation {
            FrameError::Malformed(_) => "malformed",
            FrameError::Protocol(_) => "protocol_error",
            FrameError::TooLarge { .. } => "too_large",
        }),
        Ended::Idle => mqtt_metrics.rejected("idle"),
        Ended::RateExceeded => mqtt_metrics.rejected("rate_limited"),
        Ended::Guard(GuardStop::TopicAliasInvalid) => mqtt_metrics.rejected("topic_alias_invalid"),
        // Counted as publish_denied / subscribe_denied when judged.
        _ => {}
    }
    match &ended {
        Ended::Violation(_) | Ended::Guard(_) => {
            tracing::info!(client = %client_addr, client_id = %info.client_id, %ended, "MQTT client disconnected")
        }
        other => {
            tracing::debug!(client = %client_addr, client_id = %info.client_id, ended = %other, "MQTT connection ended")
        }
    }
    let error = match ended {
        Ended::ClientClosed | Ended::BrokerClosed => None,
        other => Some(other.to_string()),
    };
    log(&cluster.name, Some(endpoint.addr), &tally, error);
}

/// Reads until the first packet is whole; it must be a CONNECT. Returns its
/// length, or the rejection metric's reason (none for a client that just
/// went away) and what happened.
async fn read_connect(
    client: &mut ClientStream,
    buf: &mut BytesMut,
    max_packet_size: u32,
    timeout: Duration,
) -> Result<usize, (Option<&'static str>, &'static str)> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(&first) = buf.first() {
            if first != 0x10 {
                return Err((Some("not_connect"), "the first packet is not a CONNECT"));
            }
        }
        match packet_len(buf, max_packet_size) {
            Ok(Some(len)) if buf.len() >= len => return Ok(len),
            Ok(_) => {}
            Err(FrameError::TooLarge { .. }) => return Err((Some("too_large"), "CONNECT too large")),
            Err(_) => return Err((Some("malformed_connect"), "malformed CONNECT")),
        }
        buf.reserve(CONNECT_READ);
        match tokio::time::timeout_at(deadline, client.read_buf(buf)).await {
            Err(_) => return Err((Some("connect_timeout"), "CONNECT not received in time")),
            Ok(Ok(0)) => return Err((None, "closed")),
            Ok(Ok(_)) => {}
            Ok(Err(_)) => return Err((None, "read failed")),
        }
    }
}

/// Forwards whole, checked client packets (the CONNECT first, still in `buf`).
#[allow(clippy::too_many_arguments)]
async fn client_to_broker<W>(
    client: &mut ReadSide<'_>,
    broker: &mut W,
    buf: &mut BytesMut,
    info: &ConnectInfo,
    max_packet_size: u32,
    idle: Duration,
    publish_limits: Option<publish_rate::PublishBuckets>,
    mut guard: Option<&mut ClientGuard<'_>>,
    metrics: &MqttMetrics,
    tally: &mut Tally,
) -> Ended
where
    W: AsyncWrite + Unpin,
{
    let mut read_size = new_read_size();
    let mut checked = match packet_len(buf, max_packet_size) {
        Ok(Some(len)) => {
            tally.packets_in += 1;
            len
        }
        _ => 0,
    };
    loop {
        // Check every whole packet after those already checked. A packet
        // that ends the connection still lets the good ones before it go.
        let stop = loop {
            let len = match packet_len(&buf[checked..], max_packet_size) {
                Ok(Some(len)) if buf.len() - checked >= len => len,
                Ok(_) => break None,
                Err(violation) => break Some(Ended::Violation(violation)),
            };
            let packet = &buf[checked..checked + len];
            if let Err(violation) = check_client_packet(packet, info.is_v5()) {
                break Some(Ended::Violation(violation));
            }
            metrics.packet_in(packet[0]);
            tally.packets_in += 1;
            if packet[0] >> 4 == frame::kind::PUBLISH {
                tally.publishes_in += 1;
                if let Some(limits) = &publish_limits {
                    if limits.admit(len).await.is_err() {
                        break Some(Ended::RateExceeded);
                    }
                }
            }
            let verdict = match guard.as_mut() {
                Some(guard) => match guard.inspect(&buf[checked..checked + len], metrics).await {
                    Ok(verdict) => verdict,
                    Err(GuardStop::Frame(violation)) => break Some(Ended::Violation(violation)),
                    Err(stop) => break Some(Ended::Guard(stop)),
                },
                None => Verdict::Forward,
            };
            if verdict == Verdict::Forward {
                checked += len;
                continue;
            }
            // The packets before this one go as they are; this one is
            // dropped or replaced.
            if let Err(error) = crate::io::write_out(broker, &buf[..checked]).await {
                return Ended::Io(error);
            }
            tally.bytes_rx += checked as u64;
            buf.advance(checked + len);
            checked = 0;
            if let Verdict::Replace(replacement) = verdict {
                if let Err(error) = crate::io::write_out(broker, &replacement).await {
                    return Ended::Io(error);
                }
                tally.bytes_rx += replacement.len() as u64;
            }
        };
        if checked > 0 {
            if let Err(error) = crate::io::write_out(broker, &buf[..checked]).await {
                return Ended::Io(error);
            }
            tally.bytes_rx += checked as u64;
            buf.advance(checked);
            checked = 0;
        }
        if let Some(ended) = stop {
            return ended;
        }
        match tokio::time::timeout(idle, read_when_ready(client, buf, &mut read_size)).await {
            Err(_) => return Ended::Idle,
            Ok(Ok(0)) => return Ended::ClientClosed,
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Ended::Io(error),
        }
    }
}

/// Copies the broker's bytes to the client as they come, counting packets
/// as their headers go by.
async fn broker_to_client<W>(
    broker: &mut ReadSide<'_>,
    client: &mut W,
    metrics: &MqttMetrics,
    packets: &mut u64,
    forwarded: &mut u64,
) -> Ended
where
    W: AsyncWrite + Unpin,
{
    let mut buffer = BytesMut::new();
    let mut read_size = new_read_size();
    let mut scanner = Some(PacketScanner::default());
    loop {
        buffer.clear();
        match read_when_ready(broker, &mut buffer, &mut read_size).await {
            Ok(0) => return Ended::BrokerClosed,
            Ok(n) => {
                if let Some(scan) = scanner.as_mut() {
                    let counted = scan.feed(&buffer, |first| {
                        metrics.packet_out(first);
                        *packets += 1;
                    });
                    if counted.is_err() {
                        // Not MQTT framing any more: relay on, stop counting.
                        tracing::debug!("broker stream no longer framed as MQTT; packet counts stop");
                        scanner = None;
                    }
                }
                if let Err(error) = crate::io::write_out(client, &buffer).await {
                    return Ended::Io(error);
                }
                *forwarded += n as u64;
            }
            Err(error) => return Ended::Io(error),
        }
    }
}
