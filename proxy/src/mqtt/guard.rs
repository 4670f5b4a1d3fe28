//! Topic ACLs and topic metrics on a relayed connection. The client side
//! reads each PUBLISH (resolving MQTT 5 topic aliases) and SUBSCRIBE and
//! decides: forward it, drop it, or forward a SUBSCRIBE with the refused
//! filters taken out; forwarded PUBLISH packets count by topic prefix. Refusals the client must hear about
//! (v5 PUBACK/PUBREC with 0x87, SUBACK codes) are written by the broker
//! side, the only writer to the client, between the broker's packets:
//! whole packets it sends, and SUBACKs it merges with the proxy's refusals.

use std::collections::VecDeque;

use crate::stream::ReadSide;
use bytes::{Buf, BytesMut};
use tokio::io::AsyncWrite;
use tokio::sync::mpsc;

use super::access::ClientAcl;
use super::frame::{kind, packet_len, FrameError};
use super::metrics::MqttMetrics;
use super::packet::{self, Subscribe};
use super::topic_metrics::TopicCounts;

/// v5 reason "not authorized"; v3.1.1 SUBACK "failure".
const NOT_AUTHORIZED: u8 = 0x87;
const V311_FAILURE: u8 = 0x80;
/// The largest CONNACK or SUBACK the broker side holds whole to rewrite;
/// a bigger one passes unchanged.
const MAX_REWRITTEN: usize = 64 * 1024;
/// Messages from the client side waiting for the broker side.
pub const QUEUE: usize = 32;

/// What the client side asks the broker side to tell the client.
#[derive(Debug)]
pub enum ToClient {
    /// A packet of the proxy's own, written at the next packet boundary.
    Packet(Vec<u8>),
    /// The SUBACK for `packet_id` must carry these codes at these positions
    /// (`None`: the broker's next code).
    SubscribeRefusals { packet_id: u16, positions: Vec<Option<u8>> },
}

/// What happens to a client packet.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Forward,
    /// Not forwarded (refused; the client was told where the protocol can).
    Drop,
    /// Forwarded as these bytes instead.
    Replace(Vec<u8>),
}

/// Why the client side ends the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GuardStop {
    /// MQTT 3.x cannot refuse a QoS 1/2 PUBLISH, or (3.1) a subscription.
    #[error("not authorized ({0})")]
    NotAuthorized(&'static str),
    #[error("topic alias invalid")]
    TopicAliasInvalid,
    #[error("{0}")]
    Frame(FrameError),
}

/// The client side's state.
pub struct ClientGuard<'a> {
    acl: Option<ClientAcl<'a>>,
    topic_counts: Option<&'a TopicCounts>,
    level: u8,
    /// Topics by MQTT 5 alias (index alias − 1), as the client set them.
    aliases: Vec<Option<Box<[u8]>>>,
    alias_maximum: u16,
    to_client: mpsc::Sender<ToClient>,
    reads_publish: bool,
    reads_subscribe: bool,
}

/// What a connection needs the guards for, when it needs them at all.
pub struct Needs<'a> {
    pub acl: Option<ClientAcl<'a>>,
    pub topic_counts: Option<&'a TopicCounts>,
}

impl<'a> Needs<'a> {
    /// Whether PUBLISH topics must be read (then aliases are tracked, and
    /// the broker's alias maximum lowered).
    fn reads_publish(&self) -> bool {
        self.topic_counts.is_some() || self.acl.as_ref().is_some_and(|acl| acl.checks_publish)
    }

    fn reads_subscribe(&self) -> bool {
        self.acl.as_ref().is_some_and(|acl| acl.checks_subscribe)
    }

    /// The two sides' guards, or `None` when packets can pass unread.
    pub fn guards(self, level: u8, alias_maximum: u16) -> Option<(ClientGuard<'a>, BrokerGuard)> {
        if !self.reads_publish() && !self.reads_subscribe() {
            return None;
        }
        let (sender, receiver) = mpsc::channel(QUEUE);
        let alias_cap = (self.reads_publish() && level == 5).then_some(alias_maximum);
        let client = ClientGuard {
            reads_publish: self.reads_publish(),
            reads_subscribe: self.reads_subscribe(),
            acl: self.acl,
            topic_counts: self.topic_counts,
            level,
            aliases: Vec::new(),
            alias_maximum,
            to_client: sender,
        };
        Some((client, BrokerGuard::new(receiver, level == 5, alias_cap)))
    }
}

impl ClientGuard<'_> {
    /// Judges one whole, already framed and checked client packet.
    pub async fn inspect(&mut self, packet: &[u8], metrics: &MqttMetrics) -> Result<Verdict, GuardStop> {
        match packet[0] >> 4 {
            kind::PUBLISH if self.reads_publish => self.publish(packet, metrics).await,
            kind::SUBSCRIBE if self.reads_subscribe => self.subscribe(packet, metrics).await,
            _ => Ok(Verdict::Forward),
        }
    }

    async fn publish(&mut self, bytes: &[u8], metrics: &MqttMetrics) -> Result<Verdict, GuardStop> {
        let v5 = self.level == 5;
        let publish = packet::publish(bytes, v5).map_err(GuardStop::Frame)?;
        let topic: &[u8] = match publish.topic_alias {
            Some(alias) if alias == 0 || alias > self.alias_maximum => return Err(GuardStop::TopicAliasInvalid),
            Some(alias) => {
                let slot = usize::from(alias - 1);
                if !publish.topic.is_empty() {
                    if self.aliases.len() <= slot {
                        self.aliases.resize(slot + 1, None);
                    }
                    // Remembered even when refused below, so that later
                    // alias-only packets are judged by the same topic.
                    self.aliases[slot] = Some(publish.topic.into());
                }
                match self.aliases.get(slot) {
                    Some(Some(topic)) => topic,
                    _ => return Err(GuardStop::TopicAliasInvalid),
                }
            }
            None => publish.topic,
        };
        if self.acl.as_ref().is_none_or(|acl| acl.may_publish(topic)) {
            if let Some(counts) = self.topic_counts {
                counts.record(topic, bytes.len());
            }
            return Ok(Verdict::Forward);
        }
        metrics.rejected("publish_denied");
        tracing::debug!(topic = %String::from_utf8_lossy(topic), "MQTT PUBLISH refused by the ACL");
        match (publish.qos, publish.packet_id) {
            // Nothing to answer: the message is dropped, as brokers do.
            (0, _) | (_, None) => Ok(Verdict::Drop),
            (qos, Some(id)) if v5 => {
                self.tell(ToClient::Packet(packet::publish_refusal(qos, id, NOT_AUTHORIZED))).await;
                Ok(Verdict::Drop)
            }
            // MQTT 3.1.1 §3.3.5: acknowledge falsely or close; a proxy
            // must not pretend delivery.
            _ => Err(GuardStop::NotAuthorized("publish")),
        }
    }

    async fn subscribe(&mut self, bytes: &[u8], metrics: &MqttMetrics) -> Result<Verdict, GuardStop> {
        let v5 = self.level == 5;
        let Some(acl) = &self.acl else { return Ok(Verdict::Forward) };
        let subscribe = Subscribe::parse(bytes, v5).map_err(GuardStop::Frame)?;
        let allowed: Vec<bool> = subscribe.filters().map(|filter| acl.may_subscribe(filter)).collect();
        let refused = allowed.iter().filter(|allowed| !**allowed).count();
        if refused == 0 {
            return Ok(Verdict::Forward);
        }
        metrics.rejected("subscribe_denied");
        tracing::debug!(refused, of = allowed.len(), "MQTT subscription refused by the ACL");
        let code = match self.level {
            5 => NOT_AUTHORIZED,
            4 => V311_FAILURE,
            // MQTT 3.1 has no failure code in a SUBACK.
            _ => return Err(GuardStop::NotAuthorized("subscribe")),
        };
        if refused == subscribe.filter_count() {
            self.tell(ToClient::Packet(packet::suback(subscribe.packet_id, v5, subscribe.filter_count(), code))).await;
            return Ok(Verdict::Drop);
        }
        let positions = allowed.iter().map(|allowed| (!allowed).then_some(code)).collect();
        // Sent before the SUBSCRIBE is forwarded, so that it is waiting
        // when the broker's SUBACK comes.
        self.tell(ToClient::SubscribeRefusals { packet_id: subscribe.packet_id, positions }).await;
        Ok(Verdict::Replace(subscribe.keeping(&allowed)))
    }

    async fn tell(&self, message: ToClient) {
        // The broker side only goes away when the connection ends.
        let _ = self.to_client.send(message).await;
    }
}

/// The broker side's state when an ACL applies.
pub struct BrokerGuard {
    from_client: mpsc::Receiver<ToClient>,
    /// Lower the CONNACK's Topic Alias Maximum to this (MQTT 5, publish ACL).
    alias_cap: Option<u16>,
    v5: bool,
    refusals: Vec<(u16, Vec<Option<u8>>)>,
    deferred: VecDeque<Vec<u8>>,
}

impl BrokerGuard {
    fn new(from_client: mpsc::Receiver<ToClient>, v5: bool, alias_cap: Option<u16>) -> Self {
        BrokerGuard { from_client, alias_cap, v5, refusals: Vec::new(), deferred: VecDeque::new() }
    }

    fn take(&mut self, message: ToClient) {
        match message {
            ToClient::Packet(packet) => self.deferred.push_back(packet),
            ToClient::SubscribeRefusals { packet_id, positions } => self.refusals.push((packet_id, positions)),
        }
    }

    fn drain(&mut self) {
        while let Ok(message) = self.from_client.try_recv() {
            self.take(message);
        }
    }

    async fn flush_deferred<W: AsyncWrite + Unpin>(
        &mut self,
        client: &mut W,
        metrics: &MqttMetrics,
        packets: &mut u64,
    ) -> std::io::Result<()> {
        while let Some(packet) = self.deferred.pop_front() {
            metrics.packet_out(packet[0]);
            *packets += 1;
            crate::io::write_out(client, &packet).await?;
        }
        Ok(())
    }

    /// Relays the broker's packets to the client, rewriting what the ACL
    /// needs and slipping the proxy's own packets in between.
    pub async fn relay<W>(
        &mut self,
        broker: &mut ReadSide<'_>,
        client: &mut W,
        metrics: &MqttMetrics,
        packets: &mut u64,
        forwarded: &mut u64,
    ) -> Result<(), std::io::Error>
    where
        W: AsyncWrite + Unpin,
    {
        let mut buf = BytesMut::new();
        let mut read_size = super::new_read_size();
        // Body bytes of a passing packet still to come; only between
        // packets may the proxy write its own.
        let mut streaming = 0usize;
        let mut framed = true;
        let mut client_side_open = true;
        loop {
            tokio::select! {
                read = crate::io::read_when_ready(broker, &mut buf, &mut read_size) => {
                    if read? == 0 {
                        return Ok(());
                    }
                }
                message = self.from_client.recv(), if client_side_open => match message {
                    Some(message) => self.take(message),
                    None => client_side_open = false,
                },
            }
            let mut pos = 0;
            while framed && pos < buf.len() {
                if streaming > 0 {
                    let passing = streaming.min(buf.len() - pos);
                    pos += passing;
                    streaming -= passing;
                    continue;
                }
                let len = match packet_len(&buf[pos..], u32::MAX) {
                    Ok(Some(len)) => len,
                    Ok(None) => break,
                    Err(_) => {
                        tracing::debug!("broker stream no longer framed as MQTT; ACL answers stop");
                        framed = false;
                        break;
                    }
                };
                let kind = buf[pos] >> 4;
                let rewrite = match kind {
                    kind::CONNACK => self.alias_cap.is_some(),
                    kind::SUBACK => {
                        self.drain();
                        !self.refusals.is_empty()
                    }
                    _ => false,
                } && len <= MAX_REWRITTEN;
                if !rewrite {
                    metrics.packet_out(buf[pos]);
                    *packets += 1;
                    let here = len.min(buf.len() - pos);
                    pos += here;
                    streaming = len - here;
                    continue;
                }
                if buf.len() - pos < len {
                    break;
                }
                metrics.packet_out(buf[pos]);
                *packets += 1;
                if kind == kind::CONNACK {
                    // Only set for MQTT 5, the only version with aliases.
                    if let Some(cap) = self.alias_cap.take() {
                        let _ = packet::cap_topic_alias_maximum(&mut buf[pos..pos + len], cap);
                    }
                    pos += len;
                    continue;
                }
                let id = packet::suback_packet_id(&buf[pos..pos + len]).ok();
                let Some(index) = self.refusals.iter().position(|(packet_id, _)| Some(*packet_id) == id) else {
                    pos += len;
                    continue;
                };
                let (_, positions) = self.refusals.swap_remove(index);
                match packet::merge_suback(&buf[pos..pos + len], self.v5, &positions) {
                    Ok(merged) => {
                        crate::io::write_out(client, &buf[..pos]).await?;
                        crate::io::write_out(client, &merged).await?;
                        *forwarded += (pos + merged.len()) as u64;
                        buf.advance(pos + len);
                        pos = 0;
                    }
                    Err(error) => {
                        tracing::debug!(%error, "broker SUBACK not merged with the proxy's refusals");
                        pos += len;
                    }
                }
            }
            if !framed {
                pos = buf.len();
            }
            if pos > 0 {
                crate::io::write_out(client, &buf[..pos]).await?;
                *forwarded += pos as u64;
                buf.advance(pos);
            }
            if streaming == 0 && framed {
                self.flush_deferred(client, metrics, packets).await?;
            }
        }
    }
}
