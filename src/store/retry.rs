//! The one retry policy for every S3 request, and the request concurrency
//! that backs off when S3 throttles.
//!
//! The SDK's own retries are off, so there is exactly one layer: a request
//! that fails with a transient error (5xx, 429, SlowDown, a refused or broken
//! connection, a timeout, a malformed response) is sent again after an
//! exponential backoff with full jitter, or after the server's Retry-After
//! when that is longer. A request keeps being retried until `--retry-timeout`
//! has passed since its first failure without progress; then its operation
//! fails (EIO to the program) with one log line. Permanent errors (403, 404,
//! 412) are returned at once.
//!
//! Throttling answers (503 SlowDown, 429) also cut the number of requests in
//! flight ([`Congestion`]): halved at most once a second, raised again by a
//! quarter each second without throttling, up to a ceiling that the read and
//! upload paths' own limits never reach, so a healthy store never waits here.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tracing::{debug, warn};

use super::StoreError;

/// First backoff step; doubled per consecutive failure.
const BASE_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between two attempts (before Retry-After): an endpoint that
/// comes back is noticed within this.
const MAX_BACKOFF: Duration = Duration::from_secs(3);
/// Fewest requests in flight throttling can cut the store to.
const MIN_CONCURRENCY: usize = 2;
/// At most one cut, and one raise, per this period.
const ADJUST_EVERY: Duration = Duration::from_secs(1);

/// When to retry one request, across its attempts.
#[derive(Debug)]
pub struct Backoff {
    bound: Duration,
    failures: u32,
    since: Option<Instant>,
}

impl Backoff {
    pub fn new(bound: Duration) -> Backoff {
        Backoff {
            bound,
            failures: 0,
            since: None,
        }
    }

    /// The wait before the next attempt after `err`, or `None` to give up:
    /// the error is permanent, or the request has been failing for the
    /// whole bound.
    pub fn after(&mut self, err: &StoreError) -> Option<Duration> {
        if !err.is_transient() {
            return None;
        }
        let since = *self.since.get_or_insert_with(Instant::now);
        let left = self.bound.checked_sub(since.elapsed())?;
        if left.is_zero() {
            return None;
        }
        let cap = BASE_BACKOFF
            .saturating_mul(1 << self.failures.min(10))
            .min(MAX_BACKOFF);
        self.failures += 1;
        let jittered = Duration::from_millis(fastrand::u64(0..=cap.as_millis() as u64));
        let wait = jittered.max(err.retry_after().unwrap_or_default());
        // The last attempt goes out at the bound, not after it.
        Some(wait.min(left))
    }

    /// The request made progress (a broken download delivered bytes): its
    /// failures start afresh.
    pub fn progressed(&mut self) {
        self.failures = 0;
        self.since = None;
    }

    /// How long the request has been failing.
    pub fn failing_for(&self) -> Duration {
        self.since.map_or(Duration::ZERO, |s| s.elapsed())
    }
}

/// How many requests may be in flight; lowered by throttling.
pub struct Congestion {
    ceiling: usize,
    state: Mutex<GateState>,
    wake: Notify,
    throttled: AtomicU64,
}

struct GateState {
    limit: usize,
    in_flight: usize,
    last_change: Instant,
}

/// A request's place in flight; given back on drop.
pub struct InFlight<'a>(&'a Congestion);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.state.lock().in_flight -= 1;
        self.0.wake.notify_one();
    }
}

impl Congestion {
    pub fn new(ceiling: usize) -> Congestion {
        let ceiling = ceiling.max(MIN_CONCURRENCY);
        Congestion {
            ceiling,
            state: Mutex::new(GateState {
                limit: ceiling,
                in_flight: 0,
                last_change: Instant::now(),
            }),
            wake: Notify::new(),
            throttled: AtomicU64::new(0),
        }
    }

    /// Waits for room under the current limit.
    pub async fn enter(&self) -> InFlight<'_> {
        loop {
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut s = self.state.lock();
                self.raise_if_calm(&mut s);
                if s.in_flight < s.limit {
                    s.in_flight += 1;
                    return InFlight(self);
                }
            }
            // Woken by a finished request, or after a while to let the
            // limit rise again with time.
            let _ = tokio::time::timeout(ADJUST_EVERY, notified).await;
        }
    }

    /// S3 answered "slow down": cut the limit to half of what is in flight.
    pub fn throttled(&self) {
        self.throttled.fetch_add(1, Ordering::Relaxed);
        let mut s = self.state.lock();
        if s.last_change.elapsed() < ADJUST_EVERY && s.limit < self.ceiling {
            return;
        }
        let before = s.limit;
        s.limit = (s.limit.min(s.in_flight) / 2).max(MIN_CONCURRENCY);
        s.last_change = Instant::now();
        if s.limit < before {
            warn!(
                from = before,
                to = s.limit,
                "S3 is throttling requests; lowering requests in flight"
            );
        }
    }

    /// A request succeeded: the limit may rise again.
    pub fn succeeded(&self) {
        let mut s = self.state.lock();
        if s.limit < self.ceiling {
            self.raise_if_calm(&mut s);
        }
    }

    fn raise_if_calm(&self, s: &mut GateState) {
        if s.limit < self.ceiling && s.last_change.elapsed() >= ADJUST_EVERY {
            let before = s.limit;
            s.limit = (s.limit + (s.limit / 4).max(1)).min(self.ceiling);
            s.last_change = Instant::now();
            self.wake.notify_waiters();
            if s.limit == self.ceiling {
                debug!(
                    from = before,
                    "throttling over; requests in flight unlimited again"
                );
            }
        }
    }

    /// The current limit of requests in flight.
    pub fn limit(&self) -> usize {
        self.state.lock().limit
    }

    /// Throttling answers seen so far.
    pub fn throttled_total(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }
}

/// Retries and gates requests: the bound on retrying and the shared
/// concurrency gate.
pub struct RetryPolicy {
    /// The bound on retrying, in milliseconds (settable: the mount checks
    /// the endpoint with a short one first).
    bound_ms: AtomicU64,
    pub gate: Congestion,
    /// Attempts that repeated a failed one, for the store's own figures.
    pub retries: AtomicU64,
}

impl RetryPolicy {
    pub fn new(bound: Duration, gate: Congestion) -> RetryPolicy {
        RetryPolicy {
            bound_ms: AtomicU64::new(bound.as_millis() as u64),
            gate,
            retries: AtomicU64::new(0),
        }
    }

    /// How long a request is retried through transient errors.
    pub fn bound(&self) -> Duration {
        Duration::from_millis(self.bound_ms.load(Ordering::Relaxed))
    }

    pub fn set_bound(&self, bound: Duration) {
        self.bound_ms
            .store(bound.as_millis() as u64, Ordering::Relaxed);
    }

    /// Runs `attempt` until it succeeds, fails permanently, or has failed
    /// for the whole bound. Each attempt waits for room in the gate and, with
    /// `attempt_limit`, is abandoned as a timeout after that long.
    pub async fn run<T, F, Fut>(
        &self,
        operation: &'static str,
        key: &str,
        attempt_limit: Option<Duration>,
        attempt: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.run_noting_doubt(operation, key, attempt_limit, attempt)
            .await
            .0
    }

    /// [`RetryPolicy::run`], also telling whether an attempt before the
    /// last one may have been carried out by the server although no answer
    /// said so (its connection broke or timed out after the request was
    /// sent). A conditional write retried after such an attempt can fail
    /// its condition because of its own first attempt.
    pub async fn run_noting_doubt<T, F, Fut>(
        &self,
        operation: &'static str,
        key: &str,
        attempt_limit: Option<Duration>,
        mut attempt: F,
    ) -> (Result<T, StoreError>, bool)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut backoff = Backoff::new(self.bound());
        let mut in_doubt = false;
        loop {
            let result = {
                let _room = self.gate.enter().await;
                match attempt_limit {
                    Some(limit) => {
                        tokio::time::timeout(limit, attempt())
                            .await
                            .unwrap_or_else(|_| {
                                Err(StoreError::Timeout(format!("no answer within {limit:?}")))
                            })
                    }
                    None => attempt().await,
                }
            };
            let err = match result {
                Ok(v) => {
                    self.gate.succeeded();
                    return (Ok(v), in_doubt);
                }
                Err(e) => e,
            };
            match self.failed(&mut backoff, &err, operation, key) {
                Some(wait) => {
                    in_doubt |= err.may_have_been_carried_out();
                    tokio::time::sleep(wait).await
                }
                None => return (Err(err), in_doubt),
            }
        }
    }

    /// Notes a failed attempt; returns the wait before the next one, or
    /// `None` to give up (logging why, for transient errors).
    pub fn failed(
        &self,
        backoff: &mut Backoff,
        err: &StoreError,
        operation: &'static str,
        key: &str,
    ) -> Option<Duration> {
        if err.is_throttling() {
            self.gate.throttled();
        }
        match backoff.after(err) {
            Some(wait) => {
                self.retries.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("s3mount_s3_retries_total").increment(1);
                debug!(operation, key, error = %err, ?wait, "retrying S3 request");
                Some(wait)
            }
            None => {
                if err.is_transient() {
                    warn!(
                        operation,
                        key,
                        error = %err,
                        "S3 failed for {:.0?}, beyond --retry-timeout ({:?}); failing the operation",
                        backoff.failing_for(),
                        self.bound()
                    );
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_errors_are_not_retried() {
        let mut b = Backoff::new(Duration::from_secs(60));
        assert_eq!(b.after(&StoreError::NotFound), None);
        assert_eq!(b.after(&StoreError::PreconditionFailed), None);
        assert_eq!(b.after(&StoreError::AccessDenied("x".into())), None);
    }

    #[test]
    fn transient_errors_back_off_within_the_cap_and_honour_retry_after() {
        let mut b = Backoff::new(Duration::from_secs(60));
        for _ in 0..20 {
            let wait = b.after(&StoreError::Unavailable("500".into())).unwrap();
            assert!(wait <= MAX_BACKOFF);
        }
        let slow = StoreError::Throttled("503".into(), Some(Duration::from_secs(7)));
        assert_eq!(b.after(&slow), Some(Duration::from_secs(7)));
    }

    #[test]
    fn gives_up_after_the_bound() {
        let mut b = Backoff::new(Duration::from_millis(30));
        let err = StoreError::Unreachable("refused".into());
        assert!(b.after(&err).is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(b.after(&err), None);
        b.progressed();
        assert!(b.after(&err).is_some(), "progress starts the bound afresh");
    }

    #[tokio::test]
    async fn throttling_halves_what_is_in_flight_and_calm_raises_it() {
        let gate = Congestion::new(64);
        let held: Vec<_> = {
            let mut v = Vec::new();
            for _ in 0..20 {
                v.push(gate.enter().await);
            }
            v
        };
        gate.throttled();
        assert_eq!(gate.limit(), 10);
        gate.throttled();
        assert_eq!(gate.limit(), 10, "at most one cut per period");
        drop(held);
        gate.state.lock().last_change -= ADJUST_EVERY;
        gate.succeeded();
        assert_eq!(gate.limit(), 12);
    }
}
