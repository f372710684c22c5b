//! `FaultyStore`: a wrapper over any [`ObjectStore`] that makes its requests
//! fail the ways real S3 traffic does, deterministically from a seed, so the
//! layers above can be shown to survive each failure in-process: refusals
//! (503, SlowDown), answers lost after the operation was carried out, bodies
//! that break off or stall part-way, and delays.
//!
//! The store's own retries live in the S3 client ([`super::S3Store`]), below
//! this wrapper's place in a test, so every fault injected here reaches the
//! layer under test as the error it would see once retries were exhausted.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;

use super::{
    Body, ListPage, ObjectMeta, ObjectStore, PosixMeta, StoreError, UserMetadata, WriteCondition,
};

/// How often each fault happens, as a share of requests (0.0 to 1.0), and
/// the seed that decides which requests get them.
#[derive(Debug, Clone, Default)]
pub struct FaultPlan {
    pub seed: u64,
    /// Refused before anything happened: 503, or SlowDown with a wait.
    pub refuse: f64,
    /// Carried out, but the answer never arrives (a timeout); reads and
    /// listings, which change nothing, see a plain failure.
    pub lose_answer: f64,
    /// A ranged GET delivers some of its pieces, then breaks off.
    pub cut_body: f64,
    /// A ranged GET pauses this long part-way through its body.
    pub stall: Option<(f64, Duration)>,
    /// Every request waits up to this long first (uniform).
    pub max_delay: Duration,
    /// Every delete is in doubt: its first attempt never reaches the store,
    /// and after this long it is sent again, a key then missing counting as
    /// deleted by the first attempt (how the S3 client settles a delete
    /// whose answer was lost).
    pub delete_in_doubt: Option<Duration>,
}

/// Faults injected so far, by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FaultCounts {
    pub refused: u64,
    pub answers_lost: u64,
    pub bodies_cut: u64,
    pub stalls: u64,
    pub deletes_in_doubt: u64,
}

#[derive(Default)]
struct Counters {
    refused: AtomicU64,
    answers_lost: AtomicU64,
    bodies_cut: AtomicU64,
    stalls: AtomicU64,
    deletes_in_doubt: AtomicU64,
}

pub struct FaultyStore<S> {
    inner: Arc<S>,
    plan: FaultPlan,
    rng: Mutex<fastrand::Rng>,
    enabled: AtomicBool,
    counts: Counters,
}

/// What happens to one request, drawn before it is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Normal,
    Refused { throttled: bool },
    AnswerLost,
}

impl<S: ObjectStore> FaultyStore<S> {
    /// Wraps `inner`; faults are on from the start.
    pub fn new(inner: Arc<S>, plan: FaultPlan) -> Self {
        FaultyStore {
            inner,
            rng: Mutex::new(fastrand::Rng::with_seed(plan.seed)),
            plan,
            enabled: AtomicBool::new(true),
            counts: Counters::default(),
        }
    }

    /// The store underneath, for a test to look at what really happened.
    pub fn inner(&self) -> &Arc<S> {
        &self.inner
    }

    /// Turns injection on or off (a test sets up its objects without it).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    pub fn counts(&self) -> FaultCounts {
        let c = &self.counts;
        FaultCounts {
            refused: c.refused.load(Ordering::Relaxed),
            answers_lost: c.answers_lost.load(Ordering::Relaxed),
            bodies_cut: c.bodies_cut.load(Ordering::Relaxed),
            stalls: c.stalls.load(Ordering::Relaxed),
            deletes_in_doubt: c.deletes_in_doubt.load(Ordering::Relaxed),
        }
    }

    fn chance(&self, rate: f64) -> bool {
        self.enabled.load(Ordering::Relaxed) && rate > 0.0 && self.rng.lock().f64() < rate
    }

    /// Waits the request's delay, then draws its fate.
    async fn before(&self) -> Fate {
        if self.enabled.load(Ordering::Relaxed) && !self.plan.max_delay.is_zero() {
            let nanos = self.plan.max_delay.as_nanos() as u64;
            let wait = Duration::from_nanos(self.rng.lock().u64(..=nanos));
            tokio::time::sleep(wait).await;
        }
        if self.chance(self.plan.refuse) {
            self.counts.refused.fetch_add(1, Ordering::Relaxed);
            let throttled = self.rng.lock().bool();
            return Fate::Refused { throttled };
        }
        if self.chance(self.plan.lose_answer) {
            self.counts.answers_lost.fetch_add(1, Ordering::Relaxed);
            return Fate::AnswerLost;
        }
        Fate::Normal
    }

    /// Runs one request under its fate.
    async fn request<T>(
        &self,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match self.before().await {
            Fate::Refused { throttled: true } => Err(StoreError::Throttled(
                "injected SlowDown".into(),
                Some(Duration::from_millis(1)),
            )),
            Fate::Refused { throttled: false } => {
                Err(StoreError::Unavailable("injected 503".into()))
            }
            Fate::AnswerLost => {
                let _ = op.await;
                Err(StoreError::Timeout("injected: the answer was lost".into()))
            }
            Fate::Normal => op.await,
        }
    }
}

impl<S: ObjectStore> ObjectStore for FaultyStore<S> {
    fn describe(&self) -> String {
        format!("{} (with injected faults)", self.inner.describe())
    }

    async fn list_page(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
        continuation: Option<String>,
        max_keys: Option<i32>,
    ) -> Result<ListPage, StoreError> {
        self.request(
            self.inner
                .list_page(prefix, delimiter, continuation, max_keys),
        )
        .await
    }

    async fn head(&self, key: &str) -> Result<ObjectMeta, StoreError> {
        self.request(self.inner.head(key)).await
    }

    async fn get_range(
        &self,
        key: &str,
        etag: &str,
        range: Range<u64>,
        pieces: &[u64],
        deliver: &mut (dyn FnMut(Bytes) + Send),
    ) -> Result<(), StoreError> {
        let fate = self.before().await;
        if let Fate::Refused { .. } | Fate::AnswerLost = fate {
            return Err(StoreError::Unavailable("injected 503".into()));
        }
        // Where the body breaks off or stalls: after this many pieces.
        let cut = self.chance(self.plan.cut_body);
        let stall = match self.plan.stall {
            Some((rate, wait)) if self.chance(rate) => Some(wait),
            _ => None,
        };
        if !cut && stall.is_none() {
            return self
                .inner
                .get_range(key, etag, range, pieces, deliver)
                .await;
        }
        let at = self.rng.lock().usize(..pieces.len().max(1));
        let mut delivered = Vec::new();
        self.inner
            .get_range(key, etag, range, pieces, &mut |b| delivered.push(b))
            .await?;
        for (i, piece) in delivered.into_iter().enumerate() {
            if i == at {
                if let Some(wait) = stall {
                    self.counts.stalls.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(wait).await;
                }
                if cut {
                    self.counts.bodies_cut.fetch_add(1, Ordering::Relaxed);
                    return Err(StoreError::BodyInterrupted("injected: body cut".into()));
                }
            }
            deliver(piece);
        }
        Ok(())
    }

    async fn put(
        &self,
        key: &str,
        body: Body,
        condition: WriteCondition<'_>,
        posix: &PosixMeta,
    ) -> Result<String, StoreError> {
        self.request(self.inner.put(key, body, condition, posix))
            .await
    }

    async fn start_multipart(&self, key: &str, posix: &PosixMeta) -> Result<String, StoreError> {
        self.request(self.inner.start_multipart(key, posix)).await
    }

    async fn put_part(
        &self,
        key: &str,
        upload_id: &str,
        number: u32,
        body: Body,
    ) -> Result<String, StoreError> {
        self.request(self.inner.put_part(key, upload_id, number, body))
            .await
    }

    async fn copy_part(
        &self,
        from: &str,
        etag: &str,
        range: Range<u64>,
        to: &str,
        upload_id: &str,
        number: u32,
    ) -> Result<String, StoreError> {
        self.request(
            self.inner
                .copy_part(from, etag, range, to, upload_id, number),
        )
        .await
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        part_etags: Vec<String>,
        condition: WriteCondition<'_>,
    ) -> Result<String, StoreError> {
        self.request(
            self.inner
                .complete_multipart(key, upload_id, part_etags, condition),
        )
        .await
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StoreError> {
        self.request(self.inner.abort_multipart(key, upload_id))
            .await
    }

    async fn copy(
        &self,
        from: &str,
        etag: &str,
        size: u64,
        to: &str,
        condition: WriteCondition<'_>,
        posix: &PosixMeta,
    ) -> Result<String, StoreError> {
        self.request(self.inner.copy(from, etag, size, to, condition, posix))
            .await
    }

    async fn set_metadata(
        &self,
        key: &str,
        etag: &str,
        size: u64,
        posix: &PosixMeta,
        keep_other: bool,
    ) -> Result<String, StoreError> {
        self.request(self.inner.set_metadata(key, etag, size, posix, keep_other))
            .await
    }

    async fn delete(&self, key: &str, if_match: Option<&str>) -> Result<(), StoreError> {
        if let Some(wait) = self.plan.delete_in_doubt {
            if self.enabled.load(Ordering::Relaxed) {
                self.counts.deletes_in_doubt.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(wait).await;
                return match self.inner.delete(key, if_match).await {
                    Err(StoreError::NotFound) => Ok(()),
                    settled => settled,
                };
            }
        }
        self.request(self.inner.delete(key, if_match)).await
    }

    async fn head_metadata(&self, key: &str) -> Result<(ObjectMeta, UserMetadata), StoreError> {
        self.request(self.inner.head_metadata(key)).await
    }

    fn enforces_conditions(&self) -> bool {
        self.inner.enforces_conditions()
    }

    async fn probe_conditions(&self, prefix: &str) -> Result<bool, StoreError> {
        self.inner.probe_conditions(prefix).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::run_on_one_thread as run;
    use crate::store::MemoryStore;

    fn over(plan: FaultPlan) -> (Arc<MemoryStore>, FaultyStore<MemoryStore>) {
        let memory = Arc::new(MemoryStore::new(true));
        (memory.clone(), FaultyStore::new(memory, plan))
    }

    /// The outcome of 200 one-byte puts: which failed.
    fn failures(store: &FaultyStore<MemoryStore>) -> Vec<bool> {
        (0..200)
            .map(|i| {
                run(store.put(
                    &format!("k{i}"),
                    Body::Empty,
                    WriteCondition::Always,
                    &PosixMeta::NONE,
                ))
                .is_err()
            })
            .collect()
    }

    #[test]
    fn the_same_seed_injects_the_same_faults() {
        let plan = FaultPlan {
            seed: 7,
            refuse: 0.2,
            lose_answer: 0.1,
            ..FaultPlan::default()
        };
        let (_, a) = over(plan.clone());
        let (_, b) = over(plan.clone());
        let (_, c) = over(FaultPlan { seed: 8, ..plan });
        let (fa, fb, fc) = (failures(&a), failures(&b), failures(&c));
        assert_eq!(fa, fb);
        assert_ne!(fa, fc);
        let failed = fa.iter().filter(|f| **f).count();
        assert!((30..=90).contains(&failed), "{failed} of 200 failed");
    }

    #[test]
    fn a_refused_write_changes_nothing_and_a_lost_answer_still_wrote() {
        let (memory, refusing) = over(FaultPlan {
            refuse: 1.0,
            ..FaultPlan::default()
        });
        let err = run(refusing.put("a", Body::Empty, WriteCondition::Always, &PosixMeta::NONE))
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(memory.bytes("a").is_none());

        let (memory, losing) = over(FaultPlan {
            lose_answer: 1.0,
            ..FaultPlan::default()
        });
        let err = run(losing.put("a", Body::Empty, WriteCondition::Always, &PosixMeta::NONE))
            .unwrap_err();
        assert!(err.may_have_been_carried_out(), "{err}");
        assert!(memory.bytes("a").is_some(), "the put happened");
        assert_eq!(losing.counts().answers_lost, 1);
    }

    #[test]
    fn a_cut_body_delivers_whole_pieces_before_its_error() {
        let (memory, store) = over(FaultPlan {
            seed: 3,
            cut_body: 1.0,
            ..FaultPlan::default()
        });
        let etag = memory.insert("k", "0123456789abcdef");
        for _ in 0..20 {
            let mut got = Vec::new();
            let err = run(store.get_range("k", &etag, 0..16, &[4, 4, 4, 4], &mut |b| got.push(b)))
                .unwrap_err();
            assert!(matches!(err, StoreError::BodyInterrupted(_)), "{err}");
            assert!(got.len() < 4);
            assert_eq!(got.concat(), b"0123456789abcdef"[..got.len() * 4]);
        }
        assert_eq!(store.counts().bodies_cut, 20);
    }

    #[test]
    fn a_stalled_body_arrives_whole_after_the_stall() {
        let (memory, store) = over(FaultPlan {
            stall: Some((1.0, Duration::from_millis(30))),
            ..FaultPlan::default()
        });
        let etag = memory.insert("k", "abcdefgh");
        let started = std::time::Instant::now();
        let mut got = Vec::new();
        run(store.get_range("k", &etag, 0..8, &[2, 2, 2, 2], &mut |b| got.push(b))).unwrap();
        assert_eq!(got.concat(), b"abcdefgh");
        assert!(started.elapsed() >= Duration::from_millis(30));
        assert_eq!(store.counts().stalls, 1);
    }

    #[test]
    fn disabled_faults_pass_every_request_through() {
        let (memory, store) = over(FaultPlan {
            refuse: 1.0,
            ..FaultPlan::default()
        });
        store.set_enabled(false);
        assert!(failures(&store).iter().all(|f| !f));
        assert_eq!(memory.keys().len(), 200);
        assert_eq!(store.counts(), FaultCounts::default());
    }
}
