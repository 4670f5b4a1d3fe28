//! The osm-edge / Pipy "degrade" circuit breaker for one upstream cluster.
//!
//! Mirrors `UpstreamTrafficSetting.connectionSettings.http.circuitBreaking` as Pipy's
//! `outbound-circuit-breaker.js` applies it: stats over a fixed window, open on any reached
//! threshold once `min_requests` is met, reject for `degraded_window`, then let a single probe
//! decide between closing and re-opening.
//!
//! Everything is lock-free. The state word and the window words are separate atomics, so the
//! counters are not a consistent snapshot: a request recorded exactly at a window rollover may
//! land in either window (landing in the old one means it is effectively discarded), and a
//! ratio computed under heavy concurrency may count an error whose request is not yet in the
//! total. Both only shift the opening point by a request or two, which the osm semantics
//! tolerate; exact accounting would need a lock on every request.
//!
//! Time is kept as whole milliseconds since the breaker's `epoch`, so sub-millisecond windows
//! are rounded down.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Thresholds and windows of one cluster's breaker; `Default` is the osm-edge default.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSettings {
    pub stat_window: Duration,
    pub min_requests: u32,
    /// `None` or `Some(0)` disables it: osm only ever sets positive thresholds.
    pub error_count: Option<u32>,
    /// Must lie in (0, 1]; anything else (including NaN) disables it rather than opening on
    /// every request or never.
    pub error_ratio: Option<f64>,
    pub slow_time: Duration,
    pub slow_count: Option<u32>,
    pub slow_ratio: Option<f64>,
    pub degraded_window: Duration,
}

impl Default for BreakerSettings {
    /// No threshold is set, so a breaker built from this alone never opens — osm only turns
    /// circuit breaking on when at least one threshold is configured.
    fn default() -> Self {
        BreakerSettings {
            stat_window: Duration::from_secs(30),
            min_requests: 100,
            error_count: None,
            error_ratio: None,
            slow_time: Duration::from_secs(5),
            slow_count: None,
            slow_ratio: None,
            degraded_window: Duration::from_secs(30),
        }
    }
}

/// What `/clusters` and the metrics report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

/// Result of [`DegradeBreaker::admit`]. On `Reject` the caller answers with the configured
/// degraded status and body without touching the upstream.
#[derive(Debug)]
#[must_use = "a probe that is neither recorded nor dropped keeps the breaker half-open"]
pub enum Admission {
    Pass(Ticket),
    Reject,
}

/// Permission to forward one request; hand it back with [`Ticket::record`].
#[derive(Debug)]
pub enum Ticket {
    /// Issued while closed: plain data so the hot path neither allocates nor touches a refcount.
    Normal,
    /// The single half-open probe; dropping it unrecorded frees the probe slot.
    Probe(ProbeTicket),
}

/// Holds the breaker so that a cancelled probe can hand its slot back from `Drop`.
#[derive(Debug)]
pub struct ProbeTicket {
    breaker: Arc<DegradeBreaker>,
    settled: bool,
}

impl Ticket {
    pub fn is_probe(&self) -> bool {
        matches!(self, Ticket::Probe(_))
    }

    /// Records the request's outcome. `error` is the caller's verdict (status >= 500 or connect
    /// failure); slowness is judged here from `elapsed`. A probe always settles the breaker it
    /// was issued by, whatever `breaker` is passed, so a mix-up cannot wedge the real one.
    pub fn record(self, breaker: &DegradeBreaker, now: Instant, error: bool, elapsed: Duration) {
        match self {
            Ticket::Normal => breaker.count(now, error, elapsed),
            Ticket::Probe(mut probe) => {
                probe.settled = true;
                probe.breaker.settle_probe(now, error, elapsed);
            }
        }
    }
}

impl Drop for ProbeTicket {
    fn drop(&mut self) {
        if !self.settled {
            // Only the probe holder moves the state out of PROBE_OUT, so this cannot clobber
            // a transition made by someone else.
            let _ = self.breaker.state.compare_exchange(PROBE_OUT, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire);
        }
    }
}

// State word: CLOSED, HALF_OPEN (expired open seen by someone, no probe out), PROBE_OUT, or
// `(open_until_ms << 2) | OPEN_TAG`. An expired OPEN is half-open too; it is turned into
// PROBE_OUT lazily by the first admit after expiry, so no timer task is needed.
const CLOSED: u64 = 0;
const HALF_OPEN: u64 = 1;
const PROBE_OUT: u64 = 2;
const OPEN_TAG: u64 = 3;
const MAX_OPEN_UNTIL: u64 = u64::MAX >> 2;

fn open_word(until_ms: u64) -> u64 {
    (until_ms.min(MAX_OPEN_UNTIL) << 2) | OPEN_TAG
}

fn open_until(word: u64) -> Option<u64> {
    (word & 3 == OPEN_TAG).then_some(word >> 2)
}

// Counter word: `(window_tag << 32) | count`, window_tag being the low 32 bits of the window's
// start. The tag lets an increment detect a counter still holding a previous window's value
// without a lock around "reset then count".
fn tag_of(start_ms: u64) -> u32 {
    (start_ms & 0xFFFF_FFFF) as u32
}

fn pack(tag: u32, count: u32) -> u64 {
    (u64::from(tag) << 32) | u64::from(count)
}

fn unpack(word: u64) -> (u32, u32) {
    ((word >> 32) as u32, (word & 0xFFFF_FFFF) as u32)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn ratio_reached(count: u32, total: u32, ratio: Option<f64>) -> bool {
    match ratio {
        Some(r) if total > 0 => f64::from(count) / f64::from(total) >= r,
        _ => false,
    }
}

fn count_reached(count: u32, threshold: Option<u32>) -> bool {
    threshold.is_some_and(|t| count >= t)
}

/// One upstream cluster's breaker, shared by all workers through an `Arc`.
#[derive(Debug)]
pub struct DegradeBreaker {
    settings: BreakerSettings,
    epoch: Instant,
    stat_window_ms: u64,
    degraded_ms: u64,
    state: AtomicU64,
    /// Start of the current stats window, ms since `epoch`.
    window_start: AtomicU64,
    total: AtomicU64,
    errors: AtomicU64,
    slow: AtomicU64,
    opened_total: AtomicU64,
}

impl DegradeBreaker {
    /// `now` becomes the epoch all internal millisecond stamps are relative to.
    pub fn new(mut settings: BreakerSettings, now: Instant) -> Self {
        let valid_ratio = |r: Option<f64>| r.filter(|r| *r > 0.0 && *r <= 1.0);
        settings.error_ratio = valid_ratio(settings.error_ratio);
        settings.slow_ratio = valid_ratio(settings.slow_ratio);
        settings.error_count = settings.error_count.filter(|c| *c > 0);
        settings.slow_count = settings.slow_count.filter(|c| *c > 0);
        DegradeBreaker {
            stat_window_ms: millis(settings.stat_window),
            degraded_ms: millis(settings.degraded_window),
            settings,
            epoch: now,
            state: AtomicU64::new(CLOSED),
            window_start: AtomicU64::new(0),
            total: AtomicU64::new(pack(tag_of(0), 0)),
            errors: AtomicU64::new(pack(tag_of(0), 0)),
            slow: AtomicU64::new(pack(tag_of(0), 0)),
            opened_total: AtomicU64::new(0),
        }
    }

    pub fn settings(&self) -> &BreakerSettings {
        &self.settings
    }

    fn ms(&self, now: Instant) -> u64 {
        millis(now.saturating_duration_since(self.epoch))
    }

    /// Per request, before forwarding. While closed this is a single atomic load.
    pub fn admit(self: &Arc<Self>, now: Instant) -> Admission {
        let mut word = self.state.load(Ordering::Acquire);
        loop {
            if word == CLOSED {
                return Admission::Pass(Ticket::Normal);
            }
            if word == PROBE_OUT {
                return Admission::Reject;
            }
            if let Some(until) = open_until(word) {
                if self.ms(now) < until {
                    return Admission::Reject;
                }
            }
            // HALF_OPEN or an expired OPEN: race for the single probe slot.
            match self.state.compare_exchange(word, PROBE_OUT, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    return Admission::Pass(Ticket::Probe(ProbeTicket { breaker: Arc::clone(self), settled: false }))
                }
                Err(current) => word = current,
            }
        }
    }

    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            word => match open_until(word) {
                Some(until) if self.ms(now) < until => BreakerState::Open,
                _ => BreakerState::HalfOpen,
            },
        }
    }

    /// Transitions into open, re-opens after a failed probe included.
    pub fn opened_total(&self) -> u64 {
        self.opened_total.load(Ordering::Relaxed)
    }

    fn is_slow(&self, elapsed: Duration) -> bool {
        elapsed >= self.settings.slow_time
    }

    fn settle_probe(&self, now: Instant, error: bool, elapsed: Duration) {
        let now_ms = self.ms(now);
        if error || self.is_slow(elapsed) {
            let reopened = self.state.compare_exchange(
                PROBE_OUT,
                open_word(now_ms.saturating_add(self.degraded_ms)),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            if reopened.is_ok() {
                self.opened_total.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            // Fresh stats before closing, so the errors that opened it cannot re-open it.
            let mut current = self.window_start.load(Ordering::Acquire);
            while let Err(seen) = self.try_roll(current, now_ms) {
                current = seen;
            }
            let _ = self.state.compare_exchange(PROBE_OUT, CLOSED, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Replaces window `current` by one starting at `now_ms`; `Err` carries the window that
    /// someone else installed first.
    fn try_roll(&self, current: u64, now_ms: u64) -> Result<u64, u64> {
        let old_tag = tag_of(current);
        // Keep consecutive tags distinct even when windows start exactly 2^32 ms apart (or in
        // the same millisecond), otherwise stale counts would read as current.
        let start = if tag_of(now_ms) == old_tag { now_ms.saturating_add(1) } else { now_ms };
        self.window_start.compare_exchange(current, start, Ordering::AcqRel, Ordering::Acquire)?;
        let new_tag = tag_of(start);
        // Only retag counters still on the window we replaced: a roller that stalled here while a
        // later window began must not wipe that later window's counts.
        for counter in [&self.total, &self.errors, &self.slow] {
            let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |w| {
                (unpack(w).0 == old_tag).then_some(pack(new_tag, 0))
            });
        }
        Ok(start)
    }

    /// Window start to count into, rolling an expired window first.
    fn current_window(&self, now_ms: u64) -> u64 {
        let mut start = self.window_start.load(Ordering::Acquire);
        while now_ms >= start.saturating_add(self.stat_window_ms) {
            match self.try_roll(start, now_ms) {
                Ok(new) => return new,
                Err(seen) => start = seen,
            }
        }
        start
    }

    /// Adds one to `counter` in window `start`; `None` if the window rolled meanwhile, i.e. the
    /// request landed in a window nobody evaluates any more.
    fn bump(&self, counter: &AtomicU64, start: u64) -> Option<u32> {
        let tag = tag_of(start);
        let mut word = counter.load(Ordering::Acquire);
        loop {
            let (seen_tag, count) = unpack(word);
            let next = if seen_tag == tag {
                pack(tag, count.saturating_add(1))
            } else if self.window_start.load(Ordering::Acquire) == start {
                // Our window is current but its roller has not retagged this counter yet.
                pack(tag, 1)
            } else {
                return None;
            };
            match counter.compare_exchange_weak(word, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return Some(unpack(next).1),
                Err(current) => word = current,
            }
        }
    }

    fn read(counter: &AtomicU64, start: u64) -> u32 {
        let (tag, count) = unpack(counter.load(Ordering::Acquire));
        if tag == tag_of(start) {
            count
        } else {
            0
        }
    }

    fn count(&self, now: Instant, error: bool, elapsed: Duration) {
        // Stragglers admitted before the breaker opened carry no information about the
        // upstream's recovery; the probe alone decides.
        if self.state.load(Ordering::Acquire) != CLOSED {
            return;
        }
        let now_ms = self.ms(now);
        let start = self.current_window(now_ms);
        let slow = self.is_slow(elapsed);
        // Errors and slow before total: a concurrent reader may over-count a ratio by a request,
        // never miss one this request already contributed.
        let Some(errors) = (if error { self.bump(&self.errors, start) } else { Some(Self::read(&self.errors, start)) })
        else {
            return;
        };
        let Some(slows) = (if slow { self.bump(&self.slow, start) } else { Some(Self::read(&self.slow, start)) })
        else {
            return;
        };
        let Some(total) = self.bump(&self.total, start) else {
            return;
        };
        if self.trips(total, errors, slows) {
            let opened = self.state.compare_exchange(
                CLOSED,
                open_word(now_ms.saturating_add(self.degraded_ms)),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            if opened.is_ok() {
                self.opened_total.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn trips(&self, total: u32, errors: u32, slows: u32) -> bool {
        let s = &self.settings;
        total >= s.min_requests
            && (count_reached(errors, s.error_count)
                || ratio_reached(errors, total, s.error_ratio)
                || count_reached(slows, s.slow_count)
                || ratio_reached(slows, total, s.slow_ratio))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: Duration = Duration::from_millis(10);
    const SLOW: Duration = Duration::from_secs(6);

    fn settings(f: impl FnOnce(&mut BreakerSettings)) -> BreakerSettings {
        let mut s = BreakerSettings::default();
        f(&mut s);
        s
    }

    fn breaker(f: impl FnOnce(&mut BreakerSettings)) -> (Arc<DegradeBreaker>, Instant) {
        let t0 = Instant::now();
        (Arc::new(DegradeBreaker::new(settings(f), t0)), t0)
    }

    fn send(b: &Arc<DegradeBreaker>, now: Instant, error: bool, elapsed: Duration) -> bool {
        match b.admit(now) {
            Admission::Pass(t) => {
                t.record(b, now, error, elapsed);
                true
            }
            Admission::Reject => false,
        }
    }

    /// Sends `n` requests of which the first `bad` have the given failure.
    fn batch(b: &Arc<DegradeBreaker>, now: Instant, n: u32, bad: u32, error: bool, slow: bool) {
        for i in 0..n {
            let is_bad = i < bad;
            send(b, now, error && is_bad, if slow && is_bad { SLOW } else { FAST });
        }
    }

    fn open_breaker() -> (Arc<DegradeBreaker>, Instant) {
        let (b, t0) = breaker(|s| s.error_count = Some(10));
        batch(&b, t0, 100, 10, true, false);
        assert_eq!(b.state(t0), BreakerState::Open);
        (b, t0)
    }

    fn take_probe(b: &Arc<DegradeBreaker>, now: Instant) -> Ticket {
        match b.admit(now) {
            Admission::Pass(t) if t.is_probe() => t,
            other => panic!("expected a probe, got {other:?}"),
        }
    }

    #[test]
    fn defaults_match_osm_and_never_open() {
        let s = BreakerSettings::default();
        assert_eq!(s.stat_window, Duration::from_secs(30));
        assert_eq!(s.min_requests, 100);
        assert_eq!(s.slow_time, Duration::from_secs(5));
        assert_eq!(s.degraded_window, Duration::from_secs(30));
        let (b, t0) = breaker(|_| {});
        batch(&b, t0, 1000, 1000, true, true);
        assert_eq!(b.state(t0), BreakerState::Closed);
        assert_eq!(b.opened_total(), 0);
    }

    #[test]
    fn below_min_requests_never_opens() {
        let (b, t0) = breaker(|s| {
            s.error_count = Some(1);
            s.error_ratio = Some(0.1);
        });
        batch(&b, t0, 99, 99, true, false);
        assert_eq!(b.state(t0), BreakerState::Closed);
        send(&b, t0, true, FAST);
        assert_eq!(b.state(t0), BreakerState::Open);
    }

    #[test]
    fn opens_on_each_threshold_alone_and_not_under() {
        type Case = (fn(&mut BreakerSettings), bool);
        let cases: [(&str, Case, u32); 4] = [
            ("error_count", (|s| s.error_count = Some(20), true), 20),
            ("error_ratio", (|s| s.error_ratio = Some(0.5), true), 50),
            ("slow_count", (|s| s.slow_count = Some(20), false), 20),
            ("slow_ratio", (|s| s.slow_ratio = Some(0.5), false), 50),
        ];
        for (name, (set, is_error), at) in cases {
            let (b, t0) = breaker(set);
            batch(&b, t0, 100, at - 1, is_error, !is_error);
            assert_eq!(b.state(t0), BreakerState::Closed, "{name} under threshold");
            let (b, t0) = breaker(set);
            batch(&b, t0, 100, at, is_error, !is_error);
            assert_eq!(b.state(t0), BreakerState::Open, "{name} at threshold");
            assert_eq!(b.opened_total(), 1, "{name}");
        }
    }

    #[test]
    fn errors_do_not_count_as_slow_and_vice_versa() {
        let (b, t0) = breaker(|s| s.slow_count = Some(10));
        batch(&b, t0, 200, 200, true, false);
        assert_eq!(b.state(t0), BreakerState::Closed);
        let (b, t0) = breaker(|s| s.error_count = Some(10));
        batch(&b, t0, 200, 200, false, true);
        assert_eq!(b.state(t0), BreakerState::Closed);
    }

    #[test]
    fn rejects_while_open_then_admits_exactly_one_probe() {
        let (b, t0) = open_breaker();
        let almost = t0 + Duration::from_millis(29_999);
        assert!(matches!(b.admit(almost), Admission::Reject));
        assert_eq!(b.state(almost), BreakerState::Open);
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        let probe = take_probe(&b, t1);
        for _ in 0..10 {
            assert!(matches!(b.admit(t1), Admission::Reject));
        }
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        probe.record(&b, t1, false, FAST);
        assert_eq!(b.state(t1), BreakerState::Closed);
        assert!(matches!(b.admit(t1), Admission::Pass(Ticket::Normal)));
    }

    #[test]
    fn probe_success_starts_fresh_stats() {
        let (b, t0) = open_breaker();
        let t1 = t0 + Duration::from_secs(30);
        take_probe(&b, t1).record(&b, t1, false, FAST);
        // The 10 errors that opened it are gone: 9 more in 100 stay under 10.
        batch(&b, t1, 100, 9, true, false);
        assert_eq!(b.state(t1), BreakerState::Closed);
        send(&b, t1, true, FAST);
        assert_eq!(b.state(t1), BreakerState::Open);
        assert_eq!(b.opened_total(), 2);
    }

    #[test]
    fn failed_or_slow_probe_reopens_for_a_full_window() {
        for (error, elapsed) in [(true, FAST), (false, SLOW)] {
            let (b, t0) = open_breaker();
            let t1 = t0 + Duration::from_secs(40);
            take_probe(&b, t1).record(&b, t1, error, elapsed);
            assert_eq!(b.state(t1), BreakerState::Open);
            assert_eq!(b.opened_total(), 2);
            let almost = t1 + Duration::from_millis(29_999);
            assert!(matches!(b.admit(almost), Admission::Reject));
            let t2 = t1 + Duration::from_secs(30);
            assert!(take_probe(&b, t2).is_probe());
        }
    }

    #[test]
    fn dropped_probe_frees_the_slot() {
        let (b, t0) = open_breaker();
        let t1 = t0 + Duration::from_secs(30);
        let probe = take_probe(&b, t1);
        assert!(matches!(b.admit(t1), Admission::Reject));
        drop(probe);
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        take_probe(&b, t1).record(&b, t1, false, FAST);
        assert_eq!(b.state(t1), BreakerState::Closed);
    }

    #[test]
    fn stragglers_while_open_are_ignored() {
        let (b, t0) = breaker(|s| s.error_count = Some(10));
        let late = match b.admit(t0) {
            Admission::Pass(t) => t,
            Admission::Reject => panic!("closed breaker rejected"),
        };
        batch(&b, t0, 100, 10, true, false);
        late.record(&b, t0, true, FAST);
        assert_eq!(b.opened_total(), 1);
        let t1 = t0 + Duration::from_secs(30);
        take_probe(&b, t1).record(&b, t1, false, FAST);
        batch(&b, t1, 100, 9, true, false);
        assert_eq!(b.state(t1), BreakerState::Closed);
    }

    #[test]
    fn window_expiry_resets_stats() {
        let (b, t0) = breaker(|s| s.error_count = Some(10));
        batch(&b, t0, 100, 9, true, false);
        let t1 = t0 + Duration::from_secs(30);
        batch(&b, t1, 100, 9, true, false);
        assert_eq!(b.state(t1), BreakerState::Closed);
        // The second window began at t1, not at t0 + 60s.
        let t2 = t1 + Duration::from_millis(29_999);
        send(&b, t2, true, FAST);
        assert_eq!(b.state(t2), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn paused_clock_full_cycle() {
        let b = Arc::new(DegradeBreaker::new(settings(|s| s.error_ratio = Some(0.5)), Instant::now()));
        batch(&b, Instant::now(), 100, 50, true, false);
        assert_eq!(b.state(Instant::now()), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(matches!(b.admit(Instant::now()), Admission::Reject));
        tokio::time::advance(Duration::from_secs(1)).await;
        let probe = take_probe(&b, Instant::now());
        tokio::time::advance(Duration::from_secs(1)).await;
        probe.record(&b, Instant::now(), false, Duration::from_secs(1));
        assert_eq!(b.state(Instant::now()), BreakerState::Closed);
    }

    #[test]
    fn hostile_settings_do_not_panic() {
        let (b, t0) = breaker(|s| {
            s.stat_window = Duration::ZERO;
            s.min_requests = 0;
            s.error_ratio = Some(f64::NAN);
            s.slow_ratio = Some(-1.0);
            s.error_count = Some(0);
            s.slow_time = Duration::ZERO;
            s.degraded_window = Duration::MAX;
        });
        batch(&b, t0, 10, 10, true, true);
        assert_eq!(b.state(t0), BreakerState::Closed);
        let (b, t0) = breaker(|s| {
            s.slow_count = Some(1);
            s.degraded_window = Duration::MAX;
        });
        batch(&b, t0 + Duration::from_secs(1 << 40), 200, 200, false, true);
        assert_eq!(b.state(t0 + Duration::from_secs(1 << 41)), BreakerState::Open);
        // An instant before the epoch saturates to it instead of underflowing.
        let (b, t0) = breaker(|s| s.error_count = Some(1));
        let before = t0.checked_sub(Duration::from_secs(1)).unwrap_or(t0);
        batch(&b, before, 100, 1, true, false);
        assert_eq!(b.state(before), BreakerState::Open);
    }

    #[test]
    fn concurrent_recorders_open_exactly_once() {
        let (b, t0) = breaker(|s| s.error_ratio = Some(0.5));
        let workers: Vec<_> = (0..4)
            .map(|_| {
                let b = Arc::clone(&b);
                std::thread::spawn(move || {
                    for i in 0..10_000u32 {
                        // Errors lead each group of five, so every prefix stays at >= 60%.
                        send(&b, t0, i % 5 < 3, FAST);
                    }
                })
            })
            .collect();
        for w in workers {
            assert!(w.join().is_ok());
        }
        assert_eq!(b.opened_total(), 1);
        assert_eq!(b.state(t0), BreakerState::Open);
    }
}
