//! Bytes-per-second throttling for narrow links: a lock-free byte bucket that every connection
//! of a listener can share, and an `AsyncRead`/`AsyncWrite` wrapper that applies it.
//!
//! Buckets take `now: tokio::time::Instant` as an argument; only the [`Throttled`] wrapper reads
//! the clock, so everything runs on tokio's paused clock in tests.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep_until, Instant, Sleep};

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// When a bucket is empty, callers wait until this many bytes (or less, if they asked for less
/// or the burst is smaller) are available, so a slow link wakes a task a few times per second
/// rather than once per byte.
pub const WAKE_CHUNK: u64 = 4096;

/// Consecutive already-elapsed timers tolerated in one poll before yielding to the scheduler, so
/// a clock that keeps outrunning a contended bucket cannot turn a poll into a busy loop.
const MAX_TIMER_RETRIES: usize = 4;

/// A token bucket counted in bytes, lock-free so one `Arc<ByteBucket>` can throttle every
/// connection of a listener across threads.
///
/// The state is a GCRA-style theoretical arrival time measured in *bytes* of the configured rate
/// since the bucket's epoch (the bytes a link at exactly that rate would have carried). Measuring
/// in bytes rather than nanoseconds makes grants and refunds exact integers; only the conversion of
/// `now` rounds, downwards. A `u64` of bytes lasts ~58 years at 10 GB/s.
///
/// Pick a burst of at least one read/write chunk, e.g. `max(bytes_per_second / 10, 16 KiB)`:
/// a smaller burst splits every buffer into tiny partial reads and writes.
#[derive(Debug)]
pub struct ByteBucket {
    epoch: Instant,
    rate: u64,
    burst: u64,
    tat: AtomicU64,
}

impl ByteBucket {
    /// A bucket refilling at `bytes_per_second`, holding at most `burst_bytes`, full at `now`.
    /// Zero for either is treated as one; configuration validation belongs to the caller.
    pub fn new(bytes_per_second: u64, burst_bytes: u64, now: Instant) -> Self {
        Self { epoch: now, rate: bytes_per_second.max(1), burst: burst_bytes.max(1), tat: AtomicU64::new(0) }
    }

    /// Sustained rate in bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Capacity in bytes.
    pub fn burst(&self) -> u64 {
        self.burst
    }

    /// Grants between 1 and `wanted` bytes available at `now` (partial grants keep a large buffer
    /// from stalling until the whole of it fits), or returns how long until `min(wanted,
    /// WAKE_CHUNK, burst)` bytes are available. Granted bytes are consumed; hand back any that go
    /// unused with [`refund`](Self::refund). `wanted == 0` grants 0.
    pub fn take(&self, wanted: usize, now: Instant) -> Result<usize, Duration> {
        if wanted == 0 {
            return Ok(0);
        }
        let wanted_bytes = u64::try_from(wanted).unwrap_or(u64::MAX);
        let now = self.bytes_since_epoch(now);
        let horizon = now.saturating_add(self.burst);
        // Relaxed is enough: the TAT is the only shared datum and the CAS orders updates to it.
        let mut tat = self.tat.load(Ordering::Relaxed);
        loop {
            // A TAT behind `now` is a full bucket; clamping it stops idle time piling up credit.
            let base = tat.max(now);
            let available = horizon.saturating_sub(base);
            if available == 0 {
                let need = wanted_bytes.min(WAKE_CHUNK).min(self.burst);
                return Err(self.time_for(base.saturating_add(need).saturating_sub(horizon)));
            }
            let grant = available.min(wanted_bytes);
            match self.tat.compare_exchange_weak(tat, base.saturating_add(grant), Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(usize::try_from(grant).unwrap_or(wanted)),
                Err(actual) => tat = actual,
            }
        }
    }

    /// Returns `bytes` from an earlier grant that were not used. Refunds can never fill the bucket
    /// beyond `burst`, because `take` clamps the state to `now` anyway.
    pub fn refund(&self, bytes: usize) {
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        if bytes > 0 {
            // The closure always returns Some, so this cannot fail.
            let _ = self.tat.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| Some(tat.saturating_sub(bytes)));
        }
    }

    /// Bytes that could be granted at `now` (a snapshot, for metrics and tests).
    pub fn available(&self, now: Instant) -> u64 {
        let now = self.bytes_since_epoch(now);
        now.saturating_add(self.burst).saturating_sub(self.tat.load(Ordering::Relaxed).max(now))
    }

    fn bytes_since_epoch(&self, now: Instant) -> u64 {
        let nanos = now.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(nanos.saturating_mul(u128::from(self.rate)) / NANOS_PER_SEC).unwrap_or(u64::MAX)
    }

    fn time_for(&self, bytes: u64) -> Duration {
        // Rounding up guarantees the bytes are really there when the caller wakes; the floor of
        // one nanosecond guarantees an `Err` never asks for a zero-length (spinning) wait.
        let nanos = (u128::from(bytes) * NANOS_PER_SEC).div_ceil(u128::from(self.rate));
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX).max(1))
    }
}

/// The limits applying to one direction of one connection: its own bucket, a bucket shared with
/// other connections (e.g. the listener's), both, or neither (unlimited).
///
/// A grant is the minimum of both buckets. The per-connection bucket is asked first and any part
/// of its grant the shared bucket does not match is refunded to it straight away, so no byte is
/// charged to one bucket without being charged to the other and nothing is lost. Going to the
/// private bucket first means only the private one ever sees that refund churn.
#[derive(Debug, Default)]
pub struct Throttle {
    per_connection: Option<ByteBucket>,
    shared: Option<Arc<ByteBucket>>,
}

impl Throttle {
    /// A throttle over the given buckets.
    pub fn new(per_connection: Option<ByteBucket>, shared: Option<Arc<ByteBucket>>) -> Self {
        Self { per_connection, shared }
    }

    /// As [`ByteBucket::take`], granting the minimum of both buckets.
    pub fn take(&self, wanted: usize, now: Instant) -> Result<usize, Duration> {
        let first = match &self.per_connection {
            Some(bucket) => bucket.take(wanted, now)?,
            None => wanted,
        };
        let Some(shared) = &self.shared else {
            return Ok(first);
        };
        let result = shared.take(first, now);
        if let Some(bucket) = &self.per_connection {
            bucket.refund(first - result.unwrap_or(0).min(first));
        }
        result
    }

    /// Returns unused bytes of a grant to both buckets.
    pub fn refund(&self, bytes: usize) {
        if let Some(bucket) = &self.per_connection {
            bucket.refund(bytes);
        }
        if let Some(bucket) = &self.shared {
            bucket.refund(bytes);
        }
    }
}

pin_project! {
    /// A stream whose reads and/or writes are throttled. A direction without a [`Throttle`] is
    /// passed straight through (vectored writes included), as are zero-length reads and writes.
    ///
    /// Each poll asks the throttle for up to the requested length, hands the inner stream a
    /// buffer of at most the grant, and refunds whatever the inner stream did not transfer
    /// (short transfer, `Pending`, error, EOF), so accounting matches bytes actually moved. With
    /// nothing granted it arms a timer (one allocation per direction, reused afterwards) and
    /// returns `Pending`.
    #[derive(Debug)]
    pub struct Throttled<S> {
        #[pin]
        inner: S,
        read: Option<Throttle>,
        write: Option<Throttle>,
        read_sleep: Option<Pin<Box<Sleep>>>,
        write_sleep: Option<Pin<Box<Sleep>>>,
    }
}

impl<S> Throttled<S> {
    /// Wraps `inner`, throttling reads with `read` and writes with `write`.
    pub fn new(inner: S, read: Option<Throttle>, write: Option<Throttle>) -> Self {
        Self { inner, read, write, read_sleep: None, write_sleep: None }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream, mutably; bytes moved through it directly are not throttled.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped stream, pinned.
    pub fn get_pin_mut(self: Pin<&mut Self>) -> Pin<&mut S> {
        self.project().inner
    }

    /// Unwraps the stream, dropping the throttles.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Waits for a non-empty grant of at most `wanted` (> 0) bytes.
fn poll_grant(
    throttle: &Throttle,
    timer: &mut Option<Pin<Box<Sleep>>>,
    cx: &mut Context<'_>,
    wanted: usize,
) -> Poll<usize> {
    for _ in 0..MAX_TIMER_RETRIES {
        let now = Instant::now();
        let wait = match throttle.take(wanted, now) {
            Ok(granted) => return Poll::Ready(granted.min(wanted)),
            Err(wait) => wait,
        };
        // Beyond any representable deadline, a day is as good as forever: the task re-checks
        // the bucket when it wakes.
        let deadline = now.checked_add(wait).or_else(|| now.checked_add(Duration::from_secs(86_400))).unwrap_or(now);
        let sleep = match timer {
            Some(sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => timer.insert(Box::pin(sleep_until(deadline))),
        };
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
    }
    cx.waker().wake_by_ref();
    Poll::Pending
}

impl<S: AsyncRead> AsyncRead for Throttled<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.project();
        let Some(throttle) = this.read.as_ref() else {
            return this.inner.poll_read(cx, buf);
        };
        if buf.remaining() == 0 {
            return this.inner.poll_read(cx, buf);
        }
        let granted = ready!(poll_grant(throttle, this.read_sleep, cx, buf.remaining())).min(buf.remaining());
        // Reading into an initialised sub-slice lets the outer buffer be advanced without unsafe;
        // the zeroing only costs anything the first time a caller's buffer is used.
        let mut limited = ReadBuf::new(buf.initialize_unfilled_to(granted));
        let result = this.inner.poll_read(cx, &mut limited);
        let read = match result {
            Poll::Ready(Ok(())) => limited.filled().len(),
            _ => 0,
        };
        throttle.refund(granted - read);
        buf.advance(read);
        result
    }
}

impl<S: AsyncWrite> AsyncWrite for Throttled<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.project();
        let Some(throttle) = this.write.as_ref() else {
            return this.inner.poll_write(cx, data);
        };
        if data.is_empty() {
            return this.inner.poll_write(cx, data);
        }
        let granted = ready!(poll_grant(throttle, this.write_sleep, cx, data.len()));
        let allowed = data.get(..granted).unwrap_or(data);
        let result = this.inner.poll_write(cx, allowed);
        let written = match result {
            Poll::Ready(Ok(n)) => n.min(allowed.len()),
            _ => 0,
        };
        throttle.refund(allowed.len() - written);
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.write.is_none() {
            return self.project().inner.poll_write_vectored(cx, bufs);
        }
        // A grant is usually smaller than one buffer anyway, so splitting it across several
        // buys nothing; writing the first non-empty one keeps the accounting simple.
        let first = bufs.iter().find(|b| !b.is_empty()).map_or(&[][..], |b| &**b);
        self.poll_write(cx, first)
    }

    fn is_write_vectored(&self) -> bool {
        self.write.is_none() && self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    fn secs(d: Duration) -> f64 {
        d.as_secs_f64()
    }

    fn assert_near(actual: Duration, expected_secs: f64, tolerance: f64) {
        let actual = secs(actual);
        assert!(
            (actual - expected_secs).abs() <= expected_secs * tolerance,
            "elapsed {actual:.3}s, expected {expected_secs:.3}s ± {:.0}%",
            tolerance * 100.0
        );
    }

    fn throttle(rate: u64, burst: u64, now: Instant) -> Option<Throttle> {
        Some(Throttle::new(Some(ByteBucket::new(rate, burst, now)), None))
    }

    #[test]
    fn fresh_bucket_grants_burst_then_partial_amounts() {
        let t0 = Instant::now();
        let bucket = ByteBucket::new(100_000, 16_384, t0);
        assert_eq!(bucket.available(t0), 16_384);
        assert_eq!(bucket.take(10_000, t0), Ok(10_000));
        assert_eq!(bucket.take(1_000_000, t0), Ok(6_384));
        assert_eq!(bucket.take(0, t0), Ok(0));
        // Empty: wait for a 4 KiB chunk at 100 kB/s = 40.96 ms, or less if less is wanted.
        assert_eq!(bucket.take(1_000_000, t0), Err(Duration::from_micros(40_960)));
        assert_eq!(bucket.take(100, t0), Err(Duration::from_millis(1)));
        let t1 = t0 + Duration::from_micros(40_960);
        assert_eq!(bucket.take(1_000_000, t1), Ok(4096));
        // A long idle period refills to the burst, not beyond.
        let t2 = t0 + Duration::from_secs(100);
        assert_eq!(bucket.available(t2), 16_384);
    }

    #[test]
    fn wait_is_capped_by_burst_and_never_zero() {
        let t0 = Instant::now();
        let small = ByteBucket::new(1_000, 100, t0);
        assert_eq!(small.take(usize::MAX, t0), Ok(100));
        assert_eq!(small.take(usize::MAX, t0), Err(Duration::from_millis(100)));
        let fast = ByteBucket::new(u64::MAX, 1, t0);
        assert_eq!(fast.take(10, t0), Ok(1));
        assert_eq!(fast.take(10, t0), Err(Duration::from_nanos(1)));
    }

    #[test]
    fn refund_restores_exactly() {
        let t0 = Instant::now();
        let bucket = ByteBucket::new(3, 10, t0);
        assert_eq!(bucket.take(7, t0), Ok(7));
        bucket.refund(5);
        assert_eq!(bucket.available(t0), 8);
        bucket.refund(usize::MAX);
        assert_eq!(bucket.available(t0), 10);
        bucket.refund(0);
        assert_eq!(bucket.take(usize::MAX, t0), Ok(10));
    }

    #[test]
    fn sustained_take_matches_rate() {
        let t0 = Instant::now();
        let bucket = ByteBucket::new(3_333, 1_000, t0);
        let mut total = 0u64;
        for ms in 0..10_000u64 {
            if let Ok(n) = bucket.take(usize::MAX, t0 + Duration::from_millis(ms)) {
                total += n as u64;
            }
        }
        // Burst plus 3333 B/s over 9.999 s, minus at most one byte of rounding.
        let expected = 1_000 + 3_333 * 9_999 / 1_000;
        assert!(total.abs_diff(expected) <= 1, "{total} vs {expected}");
    }

    #[test]
    fn concurrent_takes_never_exceed_burst() {
        let t0 = Instant::now();
        let bucket = ByteBucket::new(1, 1_000_000, t0);
        let total: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..100_000).filter_map(|_| bucket.take(7, t0).ok()).sum::<usize>()))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(total, 1_000_000);
    }

    #[test]
    fn extreme_parameters_do_not_panic() {
        let t0 = Instant::now();
        for (rate, burst) in [(0, 0), (u64::MAX, u64::MAX), (1, u64::MAX), (u64::MAX, 1), (0, u64::MAX)] {
            let bucket = ByteBucket::new(rate, burst, t0);
            for offset in [Duration::ZERO, Duration::from_secs(1), Duration::from_secs(86_400 * 365 * 100)] {
                let now = t0 + offset;
                for wanted in [0, 1, 4096, usize::MAX] {
                    let _ = bucket.take(wanted, now);
                    bucket.refund(wanted);
                }
                let _ = bucket.available(now);
            }
        }
    }

    #[test]
    fn throttle_grants_minimum_and_refunds_private_bucket() {
        let t0 = Instant::now();
        let shared = Arc::new(ByteBucket::new(1_000, 3_000, t0));
        let throttle = Throttle::new(Some(ByteBucket::new(1_000, 10_000, t0)), Some(Arc::clone(&shared)));
        assert_eq!(throttle.take(8_000, t0), Ok(3_000));
        let private = throttle.per_connection.as_ref().unwrap();
        assert_eq!(private.available(t0), 7_000);
        // Shared bucket empty: the whole private grant goes back.
        assert!(throttle.take(5_000, t0).is_err());
        assert_eq!(private.available(t0), 7_000);
        throttle.refund(1_000);
        assert_eq!(private.available(t0), 8_000);
        assert_eq!(shared.available(t0), 1_000);
        assert_eq!(Throttle::default().take(123, t0), Ok(123));
        assert_eq!(Throttle::new(None, Some(shared)).take(5_000, t0), Ok(1_000));
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_write_runs_at_configured_rate() {
        let (a, mut b) = duplex(64 * 1024);
        let start = Instant::now();
        let mut writer = Throttled::new(a, None, throttle(100_000, 16_384, start));
        let task = tokio::spawn(async move {
            writer.write_all(&vec![7u8; 1_000_000]).await.unwrap();
            writer.shutdown().await.unwrap();
        });
        let mut received = Vec::new();
        b.read_to_end(&mut received).await.unwrap();
        task.await.unwrap();
        assert_eq!(received.len(), 1_000_000);
        assert_near(start.elapsed(), 10.0, 0.10);
        // Tighter: the burst goes out at once, the rest at exactly the rate (plus timer rounding).
        assert_near(start.elapsed(), (1_000_000.0 - 16_384.0) / 100_000.0, 0.01);
    }

    #[tokio::test(start_paused = true)]
    async fn throttled_read_runs_at_configured_rate() {
        let (mut a, b) = duplex(64 * 1024);
        let start = Instant::now();
        let mut reader = Throttled::new(b, throttle(100_000, 16_384, start), None);
        let task = tokio::spawn(async move {
            a.write_all(&vec![7u8; 1_000_000]).await.unwrap();
            a.shutdown().await.unwrap();
        });
        let mut received = Vec::new();
        reader.read_to_end(&mut received).await.unwrap();
        task.await.unwrap();
        assert_eq!(received.len(), 1_000_000);
        assert_near(start.elapsed(), 10.0, 0.10);
        assert_near(start.elapsed(), (1_000_000.0 - 16_384.0) / 100_000.0, 0.01);
    }

    /// Runs `connections` writers through per-connection buckets plus `shared` for `duration`
    /// and returns the bytes each delivered.
    async fn delivered(
        shared: &Arc<ByteBucket>,
        connections: usize,
        per_connection_rate: u64,
        duration: Duration,
    ) -> Vec<u64> {
        let mut counters = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let (a, mut b) = duplex(64 * 1024);
            let throttle = Throttle::new(
                Some(ByteBucket::new(per_connection_rate, 16_384, Instant::now())),
                Some(Arc::clone(shared)),
            );
            let mut writer = Throttled::new(a, None, Some(throttle));
            let counter = Arc::new(AtomicU64::new(0));
            counters.push(Arc::clone(&counter));
            tasks.push(tokio::spawn(async move {
                let chunk = vec![1u8; 64 * 1024];
                loop {
                    writer.write_all(&chunk).await.unwrap();
                }
            }));
            tasks.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    let n = b.read(&mut buf).await.unwrap();
                    counter.fetch_add(n as u64, Ordering::Relaxed);
                }
            }));
        }
        tokio::time::sleep(duration).await;
        for task in tasks {
            task.abort();
        }
        counters.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }

    fn assert_bytes_near(actual: u64, expected: f64, tolerance: f64) {
        let actual = actual as f64;
        assert!((actual - expected).abs() <= expected * tolerance, "{actual} bytes, expected {expected} ± {tolerance}");
    }

    #[tokio::test(start_paused = true)]
    async fn shared_bucket_caps_connections_together() {
        let shared = Arc::new(ByteBucket::new(100_000, 16_384, Instant::now()));
        let counts = delivered(&shared, 2, 80_000, Duration::from_secs(10)).await;
        // Together limited to the listener's 100 kB/s (plus its burst), not 2 x 80 kB/s.
        let total: u64 = counts.iter().sum();
        assert_bytes_near(total, 1_000_000.0, 0.10);
        assert_bytes_near(total, 16_384.0 + 1_000_000.0, 0.01);
        // Neither connection is starved.
        assert!(counts.iter().all(|&c| c > total / 4), "{counts:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn single_connection_gets_its_own_rate() {
        let shared = Arc::new(ByteBucket::new(100_000, 16_384, Instant::now()));
        let counts = delivered(&shared, 1, 80_000, Duration::from_secs(10)).await;
        assert_bytes_near(counts[0], 800_000.0, 0.10);
        assert_bytes_near(counts[0], 16_384.0 + 800_000.0, 0.01);
    }

    #[tokio::test(start_paused = true)]
    async fn unthrottled_direction_is_unaffected() {
        let (a, mut b) = duplex(64 * 1024);
        let start = Instant::now();
        let mut stream = Throttled::new(a, None, throttle(1_000, 1_000, start));
        let task = tokio::spawn(async move {
            b.write_all(&vec![3u8; 1_000_000]).await.unwrap();
            b.shutdown().await.unwrap();
        });
        let mut received = Vec::new();
        stream.read_to_end(&mut received).await.unwrap();
        task.await.unwrap();
        assert_eq!(received.len(), 1_000_000);
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert!(!stream.is_write_vectored());
        let plain = Throttled::new(tokio::io::sink(), None, None);
        assert_eq!(plain.is_write_vectored(), tokio::io::sink().is_write_vectored());
    }

    #[tokio::test(start_paused = true)]
    async fn huge_write_is_partial_and_completes() {
        let start = Instant::now();
        let mut sink = Throttled::new(tokio::io::sink(), None, throttle(1_000_000, 65_536, start));
        let data = vec![0u8; 10_000_000];
        let first = std::future::poll_fn(|cx| Pin::new(&mut sink).poll_write(cx, &data)).await.unwrap();
        assert_eq!(first, 65_536);
        let second = std::future::poll_fn(|cx| Pin::new(&mut sink).poll_write(cx, &data)).await.unwrap();
        // A 4 KiB chunk, plus whatever accrued while the millisecond timer rounded up.
        assert!((4096..=5000).contains(&second), "{second}");
        tokio::time::timeout(Duration::from_secs(30), sink.write_all(&data)).await.unwrap().unwrap();
        assert_near(start.elapsed(), (10_000_000.0 + 4_096.0) / 1_000_000.0, 0.01);
        // Vectored writes fall back to the first non-empty buffer.
        let bufs = [io::IoSlice::new(&[]), io::IoSlice::new(&data[..10]), io::IoSlice::new(&data)];
        assert_eq!(sink.write_vectored(&bufs).await.unwrap(), 10);
        assert_eq!(sink.write_vectored(&[io::IoSlice::new(&[])]).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_length_and_eof_pass_through() {
        let (a, mut b) = duplex(1024);
        let start = Instant::now();
        let mut stream = Throttled::new(a, throttle(1_000, 1_000, start), throttle(1_000, 1_000, start));
        // A duplex answers a zero-length read only when it holds data or is closed.
        b.write_all(b"hello").await.unwrap();
        // Drain both buckets: zero-length operations must still complete at once.
        let read_bucket = stream.read.as_ref().unwrap().per_connection.as_ref().unwrap();
        assert_eq!(read_bucket.take(usize::MAX, start), Ok(1_000));
        assert_eq!(stream.write.as_ref().unwrap().take(usize::MAX, start), Ok(1_000));
        assert_eq!(stream.write(&[]).await.unwrap(), 0);
        assert_eq!(stream.read(&mut []).await.unwrap(), 0);
        stream.flush().await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO);
        let mut buf = [0u8; 100];
        assert_eq!(stream.read(&mut buf).await.unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        // EOF once the peer is gone; the 100-byte grant used to detect it is refunded.
        drop(b);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = Instant::now();
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
        assert_eq!(before.elapsed(), Duration::ZERO);
        let read_bucket = stream.read.as_ref().unwrap().per_connection.as_ref().unwrap();
        assert_eq!(read_bucket.available(Instant::now()), 1_000);
        // A failed write is refunded too.
        assert!(stream.write(b"x").await.is_err());
        assert_eq!(stream.write.as_ref().unwrap().per_connection.as_ref().unwrap().available(Instant::now()), 1_000);
        let _inner: &tokio::io::DuplexStream = stream.get_ref();
        let _inner: tokio::io::DuplexStream = stream.into_inner();
    }

    #[tokio::test(start_paused = true)]
    async fn pending_inner_read_refunds_grant() {
        let (a, mut b) = duplex(1024);
        let start = Instant::now();
        let mut stream = Throttled::new(a, throttle(1_000, 500, start), None);
        let mut buf = [0u8; 300];
        // No data yet: the inner read is pending, so the grant taken for it must be returned.
        assert!(tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await.is_err());
        let bucket = stream.read.as_ref().unwrap().per_connection.as_ref().unwrap();
        assert_eq!(bucket.available(Instant::now()), 500);
        b.write_all(&[9u8; 200]).await.unwrap();
        assert_eq!(stream.read(&mut buf).await.unwrap(), 200);
        let bucket = stream.read.as_ref().unwrap().per_connection.as_ref().unwrap();
        // Full burst minus the 200 bytes actually read.
        assert_eq!(bucket.available(Instant::now()), 300);
    }
}
