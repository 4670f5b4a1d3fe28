//! Request rate limiting: a lock-free GCRA token bucket, a bounded per-key limiter and a
//! bounded backlog of requests allowed to wait for a token instead of being rejected.
//!
//! All time comes in as `now: tokio::time::Instant` arguments rather than being read here, so
//! callers can batch one clock read per request and tests can drive everything with tokio's
//! paused clock. State is kept as `u64` nanoseconds since an `epoch` captured at construction,
//! which fits in one atomic and lasts ~584 years.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

/// Number of shards in a [`KeyedLimiter`]; a power of two well above typical core counts so
/// that threads rarely contend on the same shard lock.
const SHARDS: usize = 16;

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn nanos_since(epoch: Instant, now: Instant) -> u64 {
    // An instant before the epoch can only come from a caller's stale clock read; treating it as
    // the epoch errs towards limiting, never towards a panic or a wrapped-around huge value.
    nanos(now.saturating_duration_since(epoch))
}

/// GCRA parameters shared by [`TokenBucket`] and [`KeyedLimiter`].
#[derive(Clone, Copy, Debug)]
struct Gcra {
    /// Nanoseconds between two tokens at the sustained rate ("T" in the GCRA literature).
    interval: u64,
    /// How far the theoretical arrival time may run ahead of `now`: `(burst - 1) * T` ("tau").
    tolerance: u64,
}

impl Gcra {
    fn new(tokens: u32, per: Duration, burst: u32) -> Self {
        // Rounding the interval up keeps the sustained rate at or below the configured one.
        let interval = u64::try_from(per.as_nanos().div_ceil(u128::from(tokens.max(1)))).unwrap_or(u64::MAX);
        let tolerance = interval.saturating_mul(u64::from(burst.max(1) - 1));
        Self { interval, tolerance }
    }

    /// For a request arriving at `now` against state `tat`: how long until it conforms, and the
    /// new TAT once it is admitted. A TAT at or before `now` means a full bucket, so no separate
    /// "last refill" timestamp is needed.
    fn schedule(self, tat: u64, now: u64) -> (u64, u64) {
        let base = tat.max(now);
        let conforms_at = base.saturating_sub(self.tolerance);
        (conforms_at.saturating_sub(now), base.saturating_add(self.interval))
    }
}

/// A token bucket implemented as GCRA over a single atomic theoretical arrival time (TAT).
///
/// Share it with `Arc`; every operation is a load plus a compare-and-swap loop, no locks and no
/// allocation. A `per` of zero means an unlimited rate; `tokens` and `burst` of zero are treated
/// as one (validating configuration is the caller's job, this type never panics).
#[derive(Debug)]
pub struct TokenBucket {
    epoch: Instant,
    gcra: Gcra,
    tat: AtomicU64,
}

impl TokenBucket {
    /// A bucket refilling `tokens` per `per`, holding at most `burst` tokens, full at `now`.
    pub fn new(tokens: u32, per: Duration, burst: u32, now: Instant) -> Self {
        Self { epoch: now, gcra: Gcra::new(tokens, per, burst), tat: AtomicU64::new(0) }
    }

    /// Time between two tokens at the sustained rate.
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.gcra.interval)
    }

    /// Takes one token, or returns how long until one is available (a Retry-After hint).
    pub fn try_acquire(&self, now: Instant) -> Result<(), Duration> {
        self.update(now, 0).map(|_| ()).map_err(Duration::from_nanos)
    }

    /// Takes a token that becomes available within `max_wait`, returning how long the caller must
    /// wait before using it (possibly zero). Returns `None`, consuming nothing, if the wait would
    /// be longer. The token is committed immediately, so later callers queue behind it.
    pub fn reserve(&self, now: Instant, max_wait: Duration) -> Option<Duration> {
        self.update(now, nanos(max_wait)).ok().map(Duration::from_nanos)
    }

    fn update(&self, now: Instant, max_wait: u64) -> Result<u64, u64> {
        let now = nanos_since(self.epoch, now);
        // Relaxed is enough: the TAT is the only shared datum and the CAS orders updates to it.
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            let (wait, next) = self.gcra.schedule(tat, now);
            if wait > max_wait {
                return Err(wait);
            }
            match self.tat.compare_exchange_weak(tat, next, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Ok(wait),
                Err(actual) => tat = actual,
            }
        }
    }
}

struct Shard<K> {
    map: Mutex<HashMap<K, u64>>,
    capacity: usize,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded map only holds plain TAT values, each written in one store, so a panic in
    // another thread (e.g. in a user `Hash` impl) cannot leave it inconsistent.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Per-key GCRA buckets (per client IP, per header value, ...) with a hard bound on the number
/// of keys tracked.
///
/// Keys live in [`SHARDS`] mutex-protected maps selected by hash; a lock is held only for one
/// lookup or insert, never across an await. The lock already serialises access, so each entry is
/// a bare `u64` TAT instead of a shared atomic bucket.
///
/// When a shard is full, entries whose bucket has refilled completely are dropped first: they
/// carry no state a fresh bucket would not have. If that does not free enough room, arbitrary
/// entries are dropped, so under a flood of distinct keys the limiter degrades to admitting more
/// (evicted keys start over with a full burst), never to unbounded memory. Each eviction pass
/// frees at least an eighth of the shard, so its linear scan is amortised over many inserts.
pub struct KeyedLimiter<K> {
    epoch: Instant,
    gcra: Gcra,
    shard_hasher: RandomState,
    shards: Box<[Shard<K>]>,
}

impl<K> std::fmt::Debug for KeyedLimiter<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedLimiter").field("gcra", &self.gcra).field("shards", &self.shards.len()).finish()
    }
}

impl<K: Hash + Eq + Clone> KeyedLimiter<K> {
    /// Buckets of `tokens` per `per` with capacity `burst` (as [`TokenBucket::new`]), tracking at
    /// most `max_keys` keys at once (zero is treated as one).
    pub fn new(tokens: u32, per: Duration, burst: u32, max_keys: usize, now: Instant) -> Self {
        let max_keys = max_keys.max(1);
        // Fewer shards than keys would leave some shards with zero capacity.
        let count = SHARDS.min(max_keys);
        let shards = (0..count)
            .map(|i| Shard {
                map: Mutex::new(HashMap::new()),
                // Spread the remainder so the capacities add up to exactly `max_keys`.
                capacity: max_keys / count + usize::from(i < max_keys % count),
            })
            .collect();
        Self { epoch: now, gcra: Gcra::new(tokens, per, burst), shard_hasher: RandomState::new(), shards }
    }

    /// Takes one token from `key`'s bucket, or returns how long until one is available.
    pub fn check(&self, key: &K, now: Instant) -> Result<(), Duration> {
        self.update(key, now, 0).map(|_| ()).map_err(Duration::from_nanos)
    }

    /// As [`TokenBucket::reserve`], for `key`'s bucket.
    pub fn reserve(&self, key: &K, now: Instant, max_wait: Duration) -> Option<Duration> {
        self.update(key, now, nanos(max_wait)).ok().map(Duration::from_nanos)
    }

    /// Time between two tokens at the sustained rate, for sizing a backlog's wait.
    pub fn emission_interval(&self) -> Duration {
        Duration::from_nanos(self.gcra.interval)
    }

    /// Number of keys currently tracked (locks each shard in turn, so only a snapshot).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|shard| lock(&shard.map).len()).sum()
    }

    /// Whether no key is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &K) -> &Shard<K> {
        // A separate hasher from the maps' own keeps shard choice independent of bucket
        // placement inside a shard's table; truncating the hash on 32-bit targets is harmless.
        // `new` always creates at least one shard, so the modulus is never zero.
        let index = self.shard_hasher.hash_one(key) as usize % self.shards.len();
        &self.shards[index]
    }

    fn update(&self, key: &K, now: Instant, max_wait: u64) -> Result<u64, u64> {
        let now = nanos_since(self.epoch, now);
        let shard = self.shard(key);
        let mut map = lock(&shard.map);
        if let Some(tat) = map.get_mut(key) {
            let (wait, next) = self.gcra.schedule(*tat, now);
            if wait > max_wait {
                return Err(wait);
            }
            *tat = next;
            return Ok(wait);
        }
        // An unknown key has a full bucket: a TAT of `now`.
        let (wait, next) = self.gcra.schedule(now, now);
        if wait > max_wait {
            return Err(wait);
        }
        if map.len() >= shard.capacity {
            evict(&mut map, shard.capacity, now);
        }
        map.insert(key.clone(), next);
        Ok(wait)
    }

    #[cfg(test)]
    fn contains(&self, key: &K) -> bool {
        lock(&self.shard(key).map).contains_key(key)
    }
}

fn evict<K>(map: &mut HashMap<K, u64>, capacity: usize, now: u64) {
    map.retain(|_, tat| *tat > now);
    let target = capacity - capacity.div_ceil(8);
    if map.len() > target {
        let mut excess = map.len() - target;
        map.retain(|_, _| {
            if excess == 0 {
                return true;
            }
            excess -= 1;
            false
        });
    }
}

/// A bounded number of requests allowed to wait for a token instead of being rejected
/// (osm-edge/Pipy "backlog" semantics). Cloning shares the same counter.
#[derive(Clone, Debug)]
pub struct Backlog {
    limit: u32,
    waiting: Arc<AtomicU32>,
}

/// A held backlog slot; dropping it frees the slot. Drop it when the wait is over.
#[derive(Debug)]
pub struct BacklogGuard {
    waiting: Arc<AtomicU32>,
}

impl Drop for BacklogGuard {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Backlog {
    /// A backlog admitting at most `limit` concurrent waiters (zero disables waiting).
    pub fn new(limit: u32) -> Self {
        Self { limit, waiting: Arc::new(AtomicU32::new(0)) }
    }

    /// The configured number of slots.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Slots currently held.
    pub fn waiting(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Takes a slot if one is free. Costs one CAS loop plus an `Arc` clone, no allocation.
    pub fn try_enter(&self) -> Option<BacklogGuard> {
        let limit = self.limit;
        self.waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < limit).then_some(n + 1))
            .ok()
            .map(|_| BacklogGuard { waiting: Arc::clone(&self.waiting) })
    }

    /// Longest wait worth queueing for: the time for the backlog's share of tokens to arrive.
    /// Waiting longer would only hold a slot for a token that later waiters are ahead of anyway.
    pub fn max_wait(&self, emission_interval: Duration) -> Duration {
        emission_interval.saturating_mul(self.limit)
    }
}

/// Outcome of [`decide`].
#[derive(Debug)]
pub enum Decision {
    /// Proceed now.
    Allow,
    /// A token is reserved; sleep for the duration, then proceed and drop the guard.
    Wait(Duration, BacklogGuard),
    /// Reject (HTTP 429); `retry_after` is when a token is next free, including tokens already
    /// reserved by waiters. It is sub-second precise: round up for a `Retry-After` header.
    Reject { retry_after: Duration },
}

/// Allows, queues or rejects one request against `bucket`, using `backlog` for waiters.
pub fn decide(bucket: &TokenBucket, backlog: &Backlog, now: Instant) -> Decision {
    decide_with(backlog, bucket.emission_interval(), || bucket.try_acquire(now), |max| bucket.reserve(now, max))
}

/// As [`decide`], for `key`'s bucket in `limiter`; the backlog is shared by all keys.
pub fn decide_keyed<K: Hash + Eq + Clone>(
    limiter: &KeyedLimiter<K>,
    key: &K,
    backlog: &Backlog,
    now: Instant,
) -> Decision {
    decide_with(backlog, limiter.emission_interval(), || limiter.check(key, now), |max| limiter.reserve(key, now, max))
}

fn decide_with(
    backlog: &Backlog,
    interval: Duration,
    acquire: impl FnOnce() -> Result<(), Duration>,
    reserve: impl FnOnce(Duration) -> Option<Duration>,
) -> Decision {
    let retry_after = match acquire() {
        Ok(()) => return Decision::Allow,
        Err(retry_after) => retry_after,
    };
    // The slot is taken before reserving so that a reservation never exists without a slot;
    // if the reservation fails, dropping the guard hands the slot straight back.
    if let Some(guard) = backlog.try_enter() {
        if let Some(wait) = reserve(backlog.max_wait(interval)) {
            return Decision::Wait(wait, guard);
        }
    }
    Decision::Reject { retry_after }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn fresh_bucket_passes_burst_then_one_per_interval() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(100, Duration::from_secs(1), 10, t0);
        assert_eq!(bucket.emission_interval(), 10 * MS);
        for _ in 0..10 {
            assert_eq!(bucket.try_acquire(t0), Ok(()));
        }
        assert_eq!(bucket.try_acquire(t0), Err(10 * MS));
        assert_eq!(bucket.try_acquire(at(t0, 9)), Err(MS));
        assert_eq!(bucket.try_acquire(at(t0, 10)), Ok(()));
        assert_eq!(bucket.try_acquire(at(t0, 10)), Err(10 * MS));
        assert_eq!(bucket.try_acquire(at(t0, 20)), Ok(()));
        // Idle long enough to refill completely: the full burst is available again, not more.
        let later = at(t0, 10_000);
        for _ in 0..10 {
            assert_eq!(bucket.try_acquire(later), Ok(()));
        }
        assert!(bucket.try_acquire(later).is_err());
    }

    #[test]
    fn sustained_overload_admits_burst_plus_rate() {
        for (rate, burst) in [(100u32, 10u32), (7, 1), (1000, 50), (3, 3)] {
            let t0 = Instant::now();
            let bucket = TokenBucket::new(rate, Duration::from_secs(1), burst, t0);
            // Offer one request every 100 µs for 10 s: far above every tested rate.
            let admitted = (0..100_000u64)
                .filter(|i| bucket.try_acquire(t0 + Duration::from_micros(i * 100)).is_ok())
                .count() as f64;
            let expected = f64::from(burst) + f64::from(rate) * 10.0;
            assert!((admitted - expected).abs() <= expected * 0.01 + 1.0, "rate {rate}: {admitted} vs {expected}");
        }
    }

    #[test]
    fn exact_count_at_100_per_second() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(100, Duration::from_secs(1), 10, t0);
        let admitted = (0..10_000u64).filter(|ms| bucket.try_acquire(at(t0, *ms)).is_ok()).count();
        // 10 at t=0, then one at each of 10 ms, 20 ms, ..., 9990 ms.
        assert_eq!(admitted, 10 + 999);
    }

    #[test]
    fn concurrent_threads_admit_exactly_burst() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(1, Duration::from_secs(1), 1000, t0);
        let admitted: usize = std::thread::scope(|s| {
            let handles: Vec<_> =
                (0..4).map(|_| s.spawn(|| (0..10_000).filter(|_| bucket.try_acquire(t0).is_ok()).count())).collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, 1000);
    }

    #[test]
    fn reserve_queues_within_max_wait_only() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(10, Duration::from_secs(1), 1, t0);
        assert_eq!(bucket.reserve(t0, Duration::ZERO), Some(Duration::ZERO));
        assert_eq!(bucket.reserve(t0, 250 * MS), Some(100 * MS));
        assert_eq!(bucket.reserve(t0, 250 * MS), Some(200 * MS));
        // Too far out: refused and nothing consumed, so the next slot is still 300 ms away.
        assert_eq!(bucket.reserve(t0, 250 * MS), None);
        assert_eq!(bucket.try_acquire(t0), Err(300 * MS));
        assert_eq!(bucket.reserve(t0, 300 * MS), Some(300 * MS));
    }

    #[test]
    fn extreme_parameters_do_not_panic() {
        let t0 = Instant::now();
        let cases = [
            (0, Duration::from_secs(1), 0),
            (u32::MAX, Duration::ZERO, u32::MAX),
            (1, Duration::MAX, 1),
            (u32::MAX, Duration::MAX, u32::MAX),
            (1, Duration::from_nanos(1), 0),
        ];
        for (tokens, per, burst) in cases {
            let bucket = TokenBucket::new(tokens, per, burst, t0);
            for ms in [0, 1, 1_000_000] {
                let _ = bucket.try_acquire(at(t0, ms));
                let _ = bucket.reserve(at(t0, ms), Duration::MAX);
                let _ = bucket.reserve(at(t0, ms), Duration::ZERO);
            }
        }
        // Zero period: unlimited.
        let unlimited = TokenBucket::new(1, Duration::ZERO, 1, t0);
        assert!((0..1000).all(|_| unlimited.try_acquire(t0).is_ok()));
        // Zero tokens and burst behave as one.
        let one = TokenBucket::new(0, Duration::from_secs(1), 0, t0);
        assert_eq!(one.try_acquire(t0), Ok(()));
        assert_eq!(one.try_acquire(t0), Err(Duration::from_secs(1)));
        // A huge period yields a huge but finite Retry-After.
        let slow = TokenBucket::new(1, Duration::MAX, 1, t0);
        assert_eq!(slow.try_acquire(t0), Ok(()));
        assert!(slow.try_acquire(t0).unwrap_err() > Duration::from_secs(86_400 * 365 * 100));
    }

    #[test]
    fn instant_before_epoch_counts_as_epoch() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(1, Duration::from_secs(1), 1, t0 + Duration::from_secs(5));
        assert_eq!(bucket.try_acquire(t0), Ok(()));
        assert_eq!(bucket.try_acquire(t0), Err(Duration::from_secs(1)));
    }

    #[test]
    fn keyed_keys_are_independent() {
        let t0 = Instant::now();
        let limiter = KeyedLimiter::new(1, Duration::from_secs(1), 2, 100, t0);
        assert!(limiter.is_empty());
        assert_eq!(limiter.check(&"a", t0), Ok(()));
        assert_eq!(limiter.check(&"a", t0), Ok(()));
        assert_eq!(limiter.check(&"a", t0), Err(Duration::from_secs(1)));
        assert_eq!(limiter.check(&"b", t0), Ok(()));
        assert_eq!(limiter.check(&"b", t0), Ok(()));
        assert!(limiter.check(&"b", t0).is_err());
        assert_eq!(limiter.reserve(&"c", t0, Duration::ZERO), Some(Duration::ZERO));
        assert_eq!(limiter.reserve(&"c", t0, Duration::ZERO), Some(Duration::ZERO));
        assert_eq!(limiter.reserve(&"c", t0, Duration::from_secs(2)), Some(Duration::from_secs(1)));
        assert_eq!(limiter.reserve(&"c", t0, Duration::from_secs(1)), None);
        assert_eq!(limiter.len(), 3);
        assert_eq!(limiter.check(&"a", t0 + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn keyed_bound_holds_under_key_flood() {
        let t0 = Instant::now();
        for max_keys in [1000, 17, 5, 0] {
            let limiter = KeyedLimiter::new(10, Duration::from_secs(1), 5, max_keys, t0);
            let bound = max_keys.max(1);
            for i in 0..100_000u64 {
                // Time moves slowly, so some buckets refill (cheap eviction) and most do not.
                let now = t0 + Duration::from_micros(i);
                assert_eq!(limiter.check(&i, now), Ok(()));
                if i % 997 == 0 {
                    assert!(limiter.len() <= bound, "{} > {bound}", limiter.len());
                }
            }
            assert!(limiter.len() <= bound);
            assert!(!limiter.is_empty());
        }
    }

    #[test]
    fn eviction_prefers_full_buckets_and_frees_slack() {
        // Keys 0..4 have refilled by `now` = 100, keys 4..8 still owe tokens.
        let mut map: HashMap<u32, u64> = (0..8).map(|k| (k, if k < 4 { 100 } else { 150 })).collect();
        evict(&mut map, 8, 100);
        let mut left: Vec<u32> = map.keys().copied().collect();
        left.sort_unstable();
        assert_eq!(left, [4, 5, 6, 7]);
        // Nothing refilled: arbitrary entries go, down to capacity minus an eighth.
        let mut busy: HashMap<u32, u64> = (0..64).map(|k| (k, 150)).collect();
        evict(&mut busy, 64, 100);
        assert_eq!(busy.len(), 56);
        let mut one: HashMap<u32, u64> = HashMap::from([(1, 150)]);
        evict(&mut one, 1, 100);
        assert!(one.is_empty());
    }

    #[test]
    fn keyed_evicted_bucket_behaves_as_fresh() {
        let t0 = Instant::now();
        let limiter = KeyedLimiter::new(1, Duration::from_secs(1), 2, 1, t0);
        assert_eq!(limiter.check(&1, t0), Ok(()));
        assert_eq!(limiter.check(&1, t0), Ok(()));
        assert!(limiter.check(&1, t0).is_err());
        // Refilled by t0 + 2 s: evicting it on the next insert loses nothing.
        let t2 = t0 + Duration::from_secs(2);
        assert_eq!(limiter.check(&2, t2), Ok(()));
        assert!(!limiter.contains(&1));
        assert_eq!(limiter.check(&1, t2), Ok(()));
        assert_eq!(limiter.check(&1, t2), Ok(()));
        assert!(limiter.check(&1, t2).is_err());
        // Documented degradation: a busy key evicted for room starts over with a full burst.
        assert_eq!(limiter.check(&3, t2), Ok(()));
        assert!(!limiter.contains(&1));
        assert_eq!(limiter.check(&1, t2), Ok(()));
        assert_eq!(limiter.len(), 1);
    }

    #[test]
    fn backlog_slots_are_bounded_and_released() {
        let backlog = Backlog::new(2);
        let a = backlog.try_enter().unwrap();
        let b = backlog.try_enter().unwrap();
        assert!(backlog.try_enter().is_none());
        assert_eq!(backlog.waiting(), 2);
        drop(a);
        let c = backlog.clone().try_enter().unwrap();
        assert!(backlog.try_enter().is_none());
        drop((b, c));
        assert_eq!(backlog.waiting(), 0);
        assert!(Backlog::new(0).try_enter().is_none());
        assert_eq!(Backlog::new(u32::MAX).max_wait(Duration::MAX), Duration::MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn decide_allows_queues_then_rejects() {
        let t0 = Instant::now();
        let bucket = Arc::new(TokenBucket::new(10, Duration::from_secs(1), 1, t0));
        let backlog = Backlog::new(3);
        assert!(matches!(decide(&bucket, &backlog, t0), Decision::Allow));
        let mut waiters = Vec::new();
        for expected in [100, 200, 300] {
            match decide(&bucket, &backlog, t0) {
                Decision::Wait(wait, guard) => {
                    assert_eq!(wait, expected * MS);
                    waiters.push(tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        drop(guard);
                        Instant::now()
                    }));
                }
                other => panic!("expected Wait, got {other:?}"),
            }
        }
        assert_eq!(backlog.waiting(), 3);
        match decide(&bucket, &backlog, t0) {
            Decision::Reject { retry_after } => assert_eq!(retry_after, 400 * MS),
            other => panic!("expected Reject, got {other:?}"),
        }
        for (waiter, expected) in waiters.into_iter().zip([100, 200, 300]) {
            assert_eq!(waiter.await.unwrap(), at(t0, expected));
        }
        assert_eq!(backlog.waiting(), 0);
        let now = Instant::now();
        assert_eq!(now, at(t0, 300));
        match decide(&bucket, &backlog, now) {
            Decision::Wait(wait, _guard) => assert_eq!(wait, 100 * MS),
            other => panic!("expected Wait, got {other:?}"),
        }
    }

    #[test]
    fn decide_rejects_beyond_max_wait_and_returns_slot() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(10, Duration::from_secs(1), 1, t0);
        let backlog = Backlog::new(1);
        let no_backlog = Backlog::new(0);
        assert!(matches!(decide(&bucket, &no_backlog, t0), Decision::Allow));
        assert!(matches!(decide(&bucket, &no_backlog, t0), Decision::Reject { .. }));
        // Another backlog already queued 100 ms of tokens: a one-slot backlog may wait only 100 ms.
        assert_eq!(bucket.reserve(t0, Duration::MAX), Some(100 * MS));
        assert!(matches!(decide(&bucket, &backlog, t0), Decision::Reject { retry_after } if retry_after == 200 * MS));
        assert_eq!(backlog.waiting(), 0);
    }

    #[test]
    fn decide_keyed_uses_per_key_buckets() {
        let t0 = Instant::now();
        let limiter = KeyedLimiter::new(10, Duration::from_secs(1), 1, 64, t0);
        let backlog = Backlog::new(1);
        assert!(matches!(decide_keyed(&limiter, &"x", &backlog, t0), Decision::Allow));
        assert!(matches!(decide_keyed(&limiter, &"y", &backlog, t0), Decision::Allow));
        let guard = match decide_keyed(&limiter, &"x", &backlog, t0) {
            Decision::Wait(wait, guard) => {
                assert_eq!(wait, 100 * MS);
                guard
            }
            other => panic!("expected Wait, got {other:?}"),
        };
        assert!(matches!(decide_keyed(&limiter, &"y", &backlog, t0), Decision::Reject { .. }));
        drop(guard);
        assert!(matches!(decide_keyed(&limiter, &"y", &backlog, t0), Decision::Wait(..)));
    }
}
