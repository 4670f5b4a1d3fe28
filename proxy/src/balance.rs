//! Endpoint selection within a cluster. Everything a policy needs (schedules,
//! cumulative weights, the hash ring) is built when the config is compiled;
//! picking is a counter increment, a random number, or a binary search.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use config_model::LbPolicy;

/// Most entries in a round-robin schedule; larger weight sums are scaled down.
const MAX_SCHEDULE: u64 = 4096;
/// Virtual nodes per unit of weight on the hash ring, and the ring's largest size.
const RING_POINTS_PER_WEIGHT: u64 = 160;
const MAX_RING: u64 = 65_536;

#[derive(Debug)]
pub enum Balancer {
    /// An interleaved (nginx "smooth") weighted schedule walked by a shared counter.
    RoundRobin {
        schedule: Box<[u32]>,
        next: AtomicUsize,
    },
    Random {
        cumulative: Box<[u32]>,
    },
    LeastRequest {
        cumulative: Box<[u32]>,
        weights: Box<[u32]>,
    },
    RingHash {
        ring: Box<[(u64, u32)]>,
    },
}

/// What a pick may depend on.
pub struct PickInput<'a> {
    pub client_ip: IpAddr,
    /// The value of the cluster's hash header, when it has one and the request carries it.
    pub hash_header: Option<&'a [u8]>,
}

impl Balancer {
    /// `endpoint_keys` identify the endpoints on the hash ring (their addresses),
    /// so the ring does not depend on the order endpoints are listed in.
    pub fn new(policy: LbPolicy, weights: &[u32], endpoint_keys: &[String]) -> Self {
        match policy {
            LbPolicy::RoundRobin => {
                Balancer::RoundRobin { schedule: smooth_schedule(weights), next: AtomicUsize::new(0) }
            }
            LbPolicy::Random => Balancer::Random { cumulative: cumulative(weights) },
            LbPolicy::LeastRequest => {
                Balancer::LeastRequest { cumulative: cumulative(weights), weights: weights.into() }
            }
            LbPolicy::RingHash => Balancer::RingHash { ring: build_ring(weights, endpoint_keys) },
        }
    }

    /// Index of the chosen endpoint, `None` when there are no endpoints.
    /// `active` reports the requests in flight to an endpoint (least request).
    pub fn pick(&self, input: &PickInput<'_>, active: impl Fn(usize) -> u32) -> Option<usize> {
        match self {
            Balancer::RoundRobin { schedule, next } => {
                if schedule.is_empty() {
                    return None;
                }
                let turn = next.fetch_add(1, Ordering::Relaxed);
                Some(schedule[turn % schedule.len()] as usize)
            }
            Balancer::Random { cumulative } => weighted_random(cumulative),
            Balancer::LeastRequest { cumulative, weights } => {
                let first = weighted_random(cumulative)?;
                if cumulative.len() == 1 {
                    return Some(first);
                }
                let mut second = weighted_random(cumulative)?;
                // A second draw that repeats the first would make this plain
                // random; redraw uniformly among the others instead.
                if second == first {
                    second = (first + 1 + fastrand::usize(..cumulative.len() - 1)) % cumulative.len();
                }
                // Compare requests in flight per unit of weight without
                // dividing: (a+1)/wa <= (b+1)/wb  <=>  (a+1)*wb <= (b+1)*wa.
                let first_load = u64::from(active(first) + 1) * u64::from(weights[second]);
                let second_load = u64::from(active(second) + 1) * u64::from(weights[first]);
                Some(if first_load <= second_load { first } else { second })
            }
            Balancer::RingHash { ring } => {
                if ring.is_empty() {
                    return None;
                }
                let key = match input.hash_header {
                    Some(value) => hash64(value),
                    None => match input.client_ip {
                        IpAddr::V4(ip) => hash64(&ip.octets()),
                        IpAddr::V6(ip) => hash64(&ip.octets()),
                    },
                };
                let at = ring.partition_point(|(point, _)| *point < key);
                Some(ring[at % ring.len()].1 as usize)
            }
        }
    }
}

fn cumulative(weights: &[u32]) -> Box<[u32]> {
    weights
        .iter()
        .scan(0u32, |sum, w| {
            *sum += w;
            Some(*sum)
        })
        .collect()
}

fn weighted_random(cumulative: &[u32]) -> Option<usize> {
    let total = *cumulative.last()?;
    let draw = fastrand::u32(..total);
    Some(cumulative.partition_point(|sum| *sum <= draw))
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// nginx's smooth weighted round robin, unrolled into one full cycle: weights
/// 5,1,1 give a,a,b,a,c,a,a rather than a,a,a,a,a,b,c.
fn smooth_schedule(weights: &[u32]) -> Box<[u32]> {
    if weights.is_empty() {
        return Box::new([]);
    }
    let divisor = weights.iter().fold(0, |g, w| gcd(g, u64::from(*w))).max(1);
    let mut reduced: Vec<u64> = weights.iter().map(|w| u64::from(*w) / divisor).collect();
    let total: u64 = reduced.iter().sum();
    if total > MAX_SCHEDULE {
        for w in &mut reduced {
            *w = (*w * MAX_SCHEDULE / total).max(1);
        }
    }
    let total: i64 = reduced.iter().sum::<u64>() as i64;
    let mut current = vec![0i64; reduced.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in reduced.iter().enumerate() {
            current[i] += *w as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u32);
    }
    schedule.into_boxed_slice()
}

fn build_ring(weights: &[u32], keys: &[String]) -> Box<[(u64, u32)]> {
    // Points per endpoint depend only on its own weight, so adding or
    // removing an endpoint moves only the keys that endpoint owns. Only a
    // ring that would exceed MAX_RING is scaled down as a whole.
    let wanted: u64 = weights.iter().map(|w| RING_POINTS_PER_WEIGHT * u64::from(*w)).sum();
    let mut ring = Vec::with_capacity(wanted.min(MAX_RING) as usize + weights.len());
    for (index, (weight, key)) in weights.iter().zip(keys).enumerate() {
        let mut points = RING_POINTS_PER_WEIGHT * u64::from(*weight);
        if wanted > MAX_RING {
            points = (points * MAX_RING / wanted).max(1);
        }
        // The point of replica r is hash64 of "{key}#{r}": FNV-1a runs over
        // the bytes in order, so the "{key}#" part is hashed once.
        let prefix = fnv1a(fnv1a(FNV_OFFSET, key.as_bytes()), b"#");
        for replica in 0..points {
            let mut digits = [0u8; 20];
            let point = fnv_finish(fnv1a(prefix, decimal(replica, &mut digits)));
            ring.push((point, index as u32));
        }
    }
    ring.sort_unstable();
    ring.into_boxed_slice()
}

/// FNV-1a with a murmur3 finalizer: stable across processes and versions (so
/// every proxy instance sends a key to the same endpoint) and well spread.
pub fn hash64(bytes: &[u8]) -> u64 {
    fnv_finish(fnv1a(FNV_OFFSET, bytes))
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over `bytes`, continuing from `hash`.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The murmur3 finalizer of [`hash64`].
fn fnv_finish(mut hash: u64) -> u64 {
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// `n` in decimal (as `format!("{n}")` writes it), in the end of `buffer`.
fn decimal(mut n: u64, buffer: &mut [u8; 20]) -> &[u8] {
    let mut at = buffer.len();
    loop {
        at -= 1;
        buffer[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buffer[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_points_hash_key_hash_replica() {
        for n in [0, 7, 9, 10, 159, 65_535, u64::MAX] {
            let mut digits = [0u8; 20];
            assert_eq!(decimal(n, &mut digits), n.to_string().as_bytes());
        }
        let keys = vec!["10.0.0.1:8080".to_owned(), "[::1]:9000".to_owned()];
        let ring = build_ring(&[1, 3], &keys);
        let mut expected: Vec<(u64, u32)> = (0..160)
            .map(|r| (hash64(format!("{}#{r}", keys[0]).as_bytes()), 0))
            .chain((0..480).map(|r| (hash64(format!("{}#{r}", keys[1]).as_bytes()), 1)))
            .collect();
        expected.sort_unstable();
        assert_eq!(&*ring, &expected[..]);
    }

    fn input() -> PickInput<'static> {
        PickInput { client_ip: "10.0.0.1".parse().unwrap(), hash_header: None }
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    #[test]
    fn smooth_round_robin_interleaves() {
        assert_eq!(&*smooth_schedule(&[5, 1, 1]), &[0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(&*smooth_schedule(&[2, 2]), &[0, 1]);
        let big = smooth_schedule(&[10_000, 9_999, 1]);
        assert!(big.len() as u64 <= MAX_SCHEDULE + 3);
        assert!(big.contains(&2));
    }

    #[test]
    fn round_robin_follows_weights() {
        let lb = Balancer::new(LbPolicy::RoundRobin, &[1, 2], &keys(2));
        let picks: Vec<_> = (0..6).map(|_| lb.pick(&input(), |_| 0).unwrap()).collect();
        assert_eq!(picks.iter().filter(|i| **i == 1).count(), 4);
    }

    #[test]
    fn random_follows_weights() {
        let lb = Balancer::new(LbPolicy::Random, &[1, 3], &keys(2));
        let ones = (0..40_000).filter(|_| lb.pick(&input(), |_| 0) == Some(1)).count();
        assert!((29_000..31_000).contains(&ones), "{ones}");
    }

    #[test]
    fn least_request_prefers_idle() {
        let lb = Balancer::new(LbPolicy::LeastRequest, &[1, 1], &keys(2));
        for _ in 0..100 {
            assert_eq!(lb.pick(&input(), |i| if i == 0 { 10 } else { 0 }), Some(1));
        }
    }

    #[test]
    fn ring_hash_is_sticky_and_stable() {
        let lb = Balancer::new(LbPolicy::RingHash, &[1, 1, 1], &keys(3));
        let pick = |value: &'static [u8]| {
            lb.pick(&PickInput { client_ip: "10.0.0.1".parse().unwrap(), hash_header: Some(value) }, |_| 0)
        };
        assert_eq!(pick(b"user-1"), pick(b"user-1"));
        let spread: std::collections::HashSet<_> = (0..100)
            .map(|i| {
                lb.pick(
                    &PickInput {
                        client_ip: "10.0.0.1".parse().unwrap(),
                        hash_header: Some(format!("u{i}").as_bytes()),
                    },
                    |_| 0,
                )
            })
            .collect();
        assert_eq!(spread.len(), 3);
        // Removing one endpoint moves only its keys.
        let smaller = Balancer::new(LbPolicy::RingHash, &[1, 1], &keys(2));
        let moved = (0..1000)
            .filter(|i| {
                let key = format!("k{i}");
                let input = PickInput { client_ip: "10.0.0.1".parse().unwrap(), hash_header: Some(key.as_bytes()) };
                let before = lb.pick(&input, |_| 0).unwrap();
                before != 2 && smaller.pick(&input, |_| 0).unwrap() != before
            })
            .count();
        assert_eq!(moved, 0);
    }

    #[test]
    fn empty_clusters_pick_nothing() {
        for policy in [LbPolicy::RoundRobin, LbPolicy::Random, LbPolicy::LeastRequest, LbPolicy::RingHash] {
            assert_eq!(Balancer::new(policy, &[], &[]).pick(&input(), |_| 0), None);
        }
    }
}
