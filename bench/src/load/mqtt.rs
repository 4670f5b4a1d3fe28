//! MQTT 3.1.1 load, with packets written by hand: publisher/subscriber
//! pairs, and idle connections.
//!
//! A pair is two client connections through the proxy under test, a
//! subscriber on a topic of its own and a publisher to it, so every message
//! goes publisher → proxy → broker → proxy → subscriber. Each PUBLISH carries
//! a sequence number and its send time (open loop: the intended send time
//! when the publisher was held up, as [`super::Pacer`] decides), and the
//! subscriber records the latency when it arrives. What counts is what was
//! delivered, not what was sent.
//!
//! The publisher keeps at most `window` messages in flight end to end (sent,
//! not yet delivered), so a closed-loop run measures what the path delivers
//! instead of how much the broker can queue. QoS 1 also waits for PUBACKs
//! (at most `window` unacknowledged) and the subscriber acknowledges each
//! delivery. A message the subscriber never sees (a gap in the sequence, or
//! nothing at all for [`STALL`]) is counted as an error.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{finished, next_send, record, LoadResult, Pacer, Window};

/// Smallest PUBLISH payload: a sequence number and a send time.
pub const MIN_PAYLOAD: usize = 16;

/// Keep-alive of every connection, seconds: long enough that no PINGREQ is
/// due during a run, so idle connections stay silent.
pub const KEEP_ALIVE_SECS: u16 = 600;

/// A pair that delivers nothing for this long has lost its in-flight messages.
const STALL: Duration = Duration::from_secs(2);

/// Longest wait for a CONNACK or SUBACK.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// Open loop: messages a pair may have in flight before its publisher waits.
/// Far above what a peer keeping up needs; it only bounds the memory of one
/// that does not (its latency is then taken from the intended send times).
const OPEN_LOOP_WINDOW: usize = 4096;

/// Idle connections being set up at once.
const IDLE_PARALLEL: usize = 64;

const CONNACK: u8 = 0x20;
const PUBLISH: u8 = 0x30;
const PUBACK: u8 = 0x40;
const SUBACK: u8 = 0x90;

/// Client ids and topics unique within the broker's life.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

fn client_id(role: &str, id: u64) -> String {
    format!("bench-{}-{role}-{id}", std::process::id())
}

fn put_remaining_length(out: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            return;
        }
    }
}

fn put_str(out: &mut BytesMut, text: &str) {
    out.put_u16(text.len() as u16);
    out.put_slice(text.as_bytes());
}

/// CONNECT, MQTT 3.1.1, clean session, no will, user name or password.
pub fn connect_packet(client_id: &str, keep_alive: u16) -> BytesMut {
    let mut out = BytesMut::with_capacity(16 + client_id.len());
    out.put_u8(0x10);
    put_remaining_length(&mut out, 10 + 2 + client_id.len());
    put_str(&mut out, "MQTT");
    out.put_u8(4);
    out.put_u8(0x02);
    out.put_u16(keep_alive);
    put_str(&mut out, client_id);
    out
}

/// SUBSCRIBE to one topic filter.
pub fn subscribe_packet(packet_id: u16, topic: &str, qos: u8) -> BytesMut {
    let mut out = BytesMut::with_capacity(8 + topic.len());
    out.put_u8(0x82);
    put_remaining_length(&mut out, 2 + 2 + topic.len() + 1);
    out.put_u16(packet_id);
    put_str(&mut out, topic);
    out.put_u8(qos);
    out
}

/// Appends a PUBLISH whose payload is `seq` and `sent_ns` (big-endian),
/// padded to `payload` bytes. `packet_id` is used for QoS 1 only.
pub fn put_publish(out: &mut BytesMut, topic: &str, qos: u8, packet_id: u16, seq: u64, sent_ns: u64, payload: usize) {
    let payload = payload.max(MIN_PAYLOAD);
    let id_len = if qos > 0 { 2 } else { 0 };
    out.put_u8(PUBLISH | (qos << 1));
    put_remaining_length(out, 2 + topic.len() + id_len + payload);
    put_str(out, topic);
    if qos > 0 {
        out.put_u16(packet_id);
    }
    out.put_u64(seq);
    out.put_u64(sent_ns);
    out.put_bytes(b'x', payload - MIN_PAYLOAD);
}

fn put_puback(out: &mut BytesMut, packet_id: u16) {
    out.put_u8(PUBACK);
    out.put_u8(2);
    out.put_u16(packet_id);
}

/// The packet at the start of `buf`: (first byte, fixed header length,
/// whole length), or `None` while it is incomplete.
pub fn frame(buf: &[u8]) -> io::Result<Option<(u8, usize, usize)>> {
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else { return Ok(None) };
        remaining |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let header = 2 + i;
            return Ok((buf.len() >= header + remaining).then_some((buf[0], header, header + remaining)));
        }
    }
    Err(io::Error::new(io::ErrorKind::InvalidData, "MQTT remaining length longer than 4 bytes"))
}

/// A PUBLISH body as this generator writes it: (QoS, packet id, sequence
/// number, send time in ns).
pub fn parse_publish(first: u8, body: &[u8]) -> Option<(u8, u16, u64, u64)> {
    let qos = (first >> 1) & 0x03;
    let topic_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let mut at = 2 + topic_len;
    let mut packet_id = 0;
    if qos > 0 {
        packet_id = u16::from_be_bytes([*body.get(at)?, *body.get(at + 1)?]);
        at += 2;
    }
    let seq = u64::from_be_bytes(body.get(at..at + 8)?.try_into().ok()?);
    let sent_ns = u64::from_be_bytes(body.get(at + 8..at + 16)?.try_into().ok()?);
    Some((qos, packet_id, seq, sent_ns))
}

/// Reads until one whole packet is buffered; returns its first byte and body.
async fn read_packet(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<(u8, BytesMut)> {
    loop {
        if let Some((first, header, total)) = frame(buf)? {
            let mut packet = buf.split_to(total);
            packet.advance(header);
            return Ok((first, packet));
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

fn refused(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionRefused, what)
}

/// Connects, sends a CONNECT and waits for a CONNACK that accepts it.
/// Returns the stream and whatever arrived after the CONNACK.
pub async fn open(target: SocketAddr, client_id: &str, keep_alive: u16) -> io::Result<(TcpStream, BytesMut)> {
    let handshake = async {
        let mut stream = TcpStream::connect(target).await?;
        stream.set_nodelay(true)?;
        stream.write_all(&connect_packet(client_id, keep_alive)).await?;
        let mut buf = BytesMut::with_capacity(64);
        match read_packet(&mut stream, &mut buf).await? {
            (CONNACK, body) if body.len() == 2 && body[1] == 0 => Ok((stream, buf)),
            (CONNACK, body) => Err(refused(format!("CONNACK refused the connection: {:?}", &body[..]))),
            (first, _) => Err(refused(format!("expected a CONNACK, got packet type {}", first >> 4))),
        }
    };
    tokio::time::timeout(HANDSHAKE, handshake).await.map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

async fn subscribe(stream: &mut TcpStream, buf: &mut BytesMut, topic: &str, qos: u8) -> io::Result<()> {
    stream.write_all(&subscribe_packet(1, topic, qos)).await?;
    let suback = async {
        loop {
            match read_packet(stream, buf).await? {
                (SUBACK, body) if body.len() == 3 && body[2] != 0x80 => return Ok(()),
                (SUBACK, _) => return Err(refused(format!("SUBACK refused {topic}"))),
                // Nothing else is published on a topic nobody publishes to yet.
                _ => continue,
            }
        }
    };
    tokio::time::timeout(HANDSHAKE, suback).await.map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// One publisher/subscriber pair from setup to the end of `window`.
pub async fn pair(
    target: SocketAddr,
    qos: u8,
    window_size: usize,
    payload: usize,
    window: Window,
    pacer: Option<Pacer>,
) -> LoadResult {
    let epoch = Instant::now();
    let id = next_id();
    let topic = format!("bench/{}/{id}", std::process::id());
    // The subscriber is subscribed before anything is published.
    let setup = async {
        let (mut subscriber, mut sub_buf) = open(target, &client_id("sub", id), KEEP_ALIVE_SECS).await?;
        subscribe(&mut subscriber, &mut sub_buf, &topic, qos).await?;
        let (publisher, pub_buf) = open(target, &client_id("pub", id), KEEP_ALIVE_SECS).await?;
        io::Result::Ok((subscriber, sub_buf, publisher, pub_buf))
    };
    let Ok((subscriber, sub_buf, publisher, pub_buf)) = setup.await else {
        return LoadResult { errors: 1, ..LoadResult::default() };
    };
    // Starting the schedule now rather than when the run started keeps the
    // setup time from turning into a burst of overdue sends.
    let pacer = pacer.map(|p| p.not_before(Instant::now()));
    let limit = if pacer.is_some() { OPEN_LOOP_WINDOW } else { window_size.max(1) };
    let room = Arc::new(Semaphore::new(limit));
    let acks = Arc::new(Semaphore::new(limit));

    let (sub_read, sub_write) = subscriber.into_split();
    let receiving = tokio::spawn(receive(sub_read, sub_write, sub_buf, room.clone(), window, epoch));
    let (pub_read, pub_write) = publisher.into_split();
    let acking = (qos > 0).then(|| tokio::spawn(read_acks(pub_read, pub_buf, acks.clone())));
    let mut result = publish(pub_write, &topic, qos, payload, limit, &room, &acks, window, pacer, epoch).await;
    if let Ok(received) = receiving.await {
        result.merge(received);
    }
    if let Some(acking) = acking {
        acking.abort();
    }
    result
}

/// The publisher's side of a pair: sends while the window has room.
#[allow(clippy::too_many_arguments)]
async fn publish(
    mut write: OwnedWriteHalf,
    topic: &str,
    qos: u8,
    payload: usize,
    limit: usize,
    room: &Semaphore,
    acks: &Semaphore,
    window: Window,
    mut pacer: Option<Pacer>,
    epoch: Instant,
) -> LoadResult {
    let mut result = LoadResult::default();
    // Closed loop writes whatever the window allows at once, one write for
    // all: the generator's syscalls are not what should be measured.
    let batch_max = if pacer.is_some() { 1 } else { limit };
    let mut out = BytesMut::with_capacity(batch_max * (payload.max(MIN_PAYLOAD) + topic.len() + 8));
    let (mut seq, mut packet_id) = (0u64, 0u16);
    'run: loop {
        let deadline = (Instant::now() + STALL).min(window.end);
        let Some(mut batch) = take(room, batch_max, deadline).await else {
            if Instant::now() < window.end {
                // Nothing came back for STALL: what is in flight is lost, and
                // the pair stops (counted even in the warm-up, as it then
                // adds nothing to the measurement).
                result.errors += (limit - room.available_permits()).max(1) as u64;
            }
            break;
        };
        if qos > 0 {
            let Some(acked) = take(acks, batch, deadline).await else {
                if Instant::now() < window.end {
                    result.errors += (limit - acks.available_permits()).max(1) as u64;
                }
                break;
            };
            room.add_permits(batch - acked);
            batch = acked;
        }
        // The pacer's previous send counts as done only once the window let
        // this one go: a send held up past its slot is then measured from
        // the slot (coordinated omission), not from when it finally went.
        finished(&mut pacer, Instant::now());
        out.clear();
        for _ in 0..batch {
            let Some(sent) = next_send(&mut pacer, &window).await else { break 'run };
            if qos > 0 {
                packet_id = packet_id % u16::MAX + 1;
            }
            let sent_ns = u64::try_from(sent.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX);
            put_publish(&mut out, topic, qos, packet_id, seq, sent_ns, payload);
            seq += 1;
        }
        if write.write_all(&out).await.is_err() {
            result.errors += u64::from(window.contains(Instant::now()));
            break;
        }
    }
    result
}

/// Takes one permit (waiting until `deadline`) and as many more, up to
/// `most` in all, as are free right now; `None` when none came in time.
async fn take(semaphore: &Semaphore, most: usize, deadline: Instant) -> Option<usize> {
    tokio::time::timeout_at(deadline, semaphore.acquire()).await.ok()?.ok()?.forget();
    let more = semaphore.available_permits().min(most.saturating_sub(1));
    if more > 0 {
        if let Ok(permits) = semaphore.try_acquire_many(more as u32) {
            permits.forget();
            return Some(1 + more);
        }
    }
    Some(1)
}

/// The subscriber's side of a pair: records each delivery, acknowledges
/// QoS 1 ones, and gives the publisher room for each message accounted for.
async fn receive(
    mut read: OwnedReadHalf,
    mut write: OwnedWriteHalf,
    mut buf: BytesMut,
    room: Arc<Semaphore>,
    window: Window,
    epoch: Instant,
) -> LoadResult {
    let mut result = LoadResult::default();
    let mut acks = BytesMut::with_capacity(256);
    let mut expected = 0u64;
    loop {
        buf.reserve(16 * 1024);
        match tokio::time::timeout_at(window.end, read.read_buf(&mut buf)).await {
            Err(_) => return result,
            Ok(Ok(0)) | Ok(Err(_)) => {
                result.errors += u64::from(window.contains(Instant::now()));
                return result;
            }
            Ok(Ok(_)) => {}
        }
        let done = Instant::now();
        let mut accounted = 0usize;
        loop {
            let (first, header, total) = match frame(&buf) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => {
                    result.errors += 1;
                    return result;
                }
            };
            if first & 0xf0 == PUBLISH {
                match parse_publish(first, &buf[header..total]) {
                    Some((qos, packet_id, seq, sent_ns)) => {
                        if qos > 0 {
                            put_puback(&mut acks, packet_id);
                        }
                        // Later than expected: the ones in between were
                        // dropped (delivery is in order on one topic).
                        // Earlier: a duplicate, already accounted for.
                        if seq >= expected {
                            let lost = seq - expected;
                            if window.contains(done) {
                                result.errors += lost;
                            }
                            accounted += 1 + lost as usize;
                            expected = seq + 1;
                            record(&mut result, &window, epoch + Duration::from_nanos(sent_ns), done, true);
                        }
                    }
                    None => result.errors += u64::from(window.contains(done)),
                }
            }
            buf.advance(total);
        }
        if !acks.is_empty() {
            if write.write_all(&acks).await.is_err() {
                result.errors += u64::from(window.contains(Instant::now()));
                return result;
            }
            acks.clear();
        }
        room.add_permits(accounted);
    }
}

/// The publisher's incoming side (QoS 1): each PUBACK frees a slot.
async fn read_acks(mut read: OwnedReadHalf, mut buf: BytesMut, acks: Arc<Semaphore>) {
    loop {
        buf.reserve(4096);
        match read.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut acked = 0;
        while let Ok(Some((first, _, total))) = frame(&buf) {
            acked += usize::from(first == PUBACK);
            buf.advance(total);
        }
        acks.add_permits(acked);
    }
}

/// Opens `count` MQTT connections, each CONNECTed (keep-alive
/// [`KEEP_ALIVE_SECS`]) and accepted with a CONNACK, a few at a time.
/// Returns the ones that are open, and how many failed.
pub async fn idle(target: SocketAddr, count: usize) -> (Vec<TcpStream>, u64) {
    let mut held = Vec::with_capacity(count);
    let mut failed = 0;
    let mut pending = JoinSet::new();
    let mut started = 0;
    while started < count || !pending.is_empty() {
        while started < count && pending.len() < IDLE_PARALLEL {
            started += 1;
            pending.spawn(async move { open(target, &client_id("idle", next_id()), KEEP_ALIVE_SECS).await });
        }
        match pending.join_next().await {
            Some(Ok(Ok((stream, _)))) => held.push(stream),
            Some(_) => failed += 1,
            None => break,
        }
    }
    (held, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_lengths() {
        for (len, encoded) in [
            (0usize, vec![0x00]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (16_383, vec![0xff, 0x7f]),
            (16_384, vec![0x80, 0x80, 0x01]),
        ] {
            let mut out = BytesMut::new();
            put_remaining_length(&mut out, len);
            assert_eq!(&out[..], &encoded[..], "{len}");
        }
    }

    #[test]
    fn connect_is_mqtt_3_1_1() {
        let packet = connect_packet("c1", 600);
        assert_eq!(&packet[..], &[0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0x02, 0x58, 0, 2, b'c', b'1']);
        assert_eq!(frame(&packet).unwrap(), Some((0x10, 2, packet.len())));
        assert_eq!(frame(&packet[..packet.len() - 1]).unwrap(), None);
    }

    #[test]
    fn subscribe_packet_layout() {
        let packet = subscribe_packet(1, "a/b", 1);
        assert_eq!(&packet[..], &[0x82, 8, 0, 1, 0, 3, b'a', b'/', b'b', 1]);
    }

    #[test]
    fn publish_round_trips() {
        for (qos, payload) in [(0u8, 16usize), (1, 64), (1, 300)] {
            let mut out = BytesMut::new();
            put_publish(&mut out, "bench/1/2", qos, 7, 42, 123_456_789, payload);
            let (first, header, total) = frame(&out).unwrap().unwrap();
            assert_eq!(total, out.len());
            assert_eq!(first, 0x30 | (qos << 1));
            let id = if qos > 0 { 7 } else { 0 };
            assert_eq!(parse_publish(first, &out[header..total]), Some((qos, id, 42, 123_456_789)));
            assert_eq!(total - header, 2 + 9 + if qos > 0 { 2 } else { 0 } + payload);
        }
        // Too short to be ours.
        assert_eq!(parse_publish(0x30, &[0, 1, b'a', 0, 0]), None);
    }

    #[test]
    fn frames_split_anywhere() {
        let mut out = BytesMut::new();
        put_publish(&mut out, "t", 0, 0, 1, 2, 200);
        put_puback(&mut out, 9);
        let first_len = frame(&out).unwrap().unwrap().2;
        for cut in 0..first_len {
            assert_eq!(frame(&out[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert_eq!(frame(&out[first_len..]).unwrap(), Some((PUBACK, 2, 4)));
        assert!(frame(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
    }

    #[test]
    fn take_gets_what_is_free() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let semaphore = Semaphore::new(5);
            let soon = Instant::now() + Duration::from_millis(50);
            assert_eq!(take(&semaphore, 3, soon).await, Some(3));
            assert_eq!(take(&semaphore, 3, soon).await, Some(2));
            assert_eq!(take(&semaphore, 3, soon).await, None);
            semaphore.add_permits(1);
            assert_eq!(take(&semaphore, 1, soon).await, Some(1));
        });
    }
}
