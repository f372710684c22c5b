//! What objects' user metadata says (POSIX attributes, a symlink's target),
//! remembered per object version, so a HEAD is paid once per ETag, ever.
//!
//! A listing gives each object's ETag but not its user metadata. The
//! attributes of versions this mount wrote are recorded as they are
//! stored; those of other versions are learned with a HEAD when asked
//! ([`ObjectAttrsCache::learn`]), or ahead of the asking, in the background
//! ([`ObjectAttrsCache::learn_ahead`]). Both land in memory (moka, bounded)
//! and in the on-disk catalog (the `attrs` table), which survives remounts.
//!
//! Invariants:
//! - Attributes are only ever served for the ETag they were learned for: a
//!   new version of a key is unknown until it is learned or written here.
//! - One HEAD per key at a time: concurrent askers share its answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::{OnceCell, Semaphore};
use tracing::debug;

use super::CatalogDb;
use crate::error::FsError;
use crate::store::{ObjectStore, PosixMeta, StoreError};

/// HEADs in flight for attributes learned ahead of the asking: each pays
/// S3's fixed latency, so `ls -l` of a directory nobody has stat'ed goes
/// as fast as this many at a time allow.
const AHEAD_CONCURRENCY: usize = 128;
/// How long a key whose HEAD failed is not asked again.
const RETRY_FAILED_AFTER: std::time::Duration = std::time::Duration::from_secs(10);
/// The longest symlink target read: Linux's PATH_MAX.
pub const MAX_LINK_LEN: u64 = 4096;

/// The version under which a directory marker's (`dir/`) attributes are
/// remembered: the marker is not in its parent's listing, so its ETag is
/// not known there; what this catalog wrote or learned last holds.
pub const DIR_MARKER_VERSION: &str = "dir";

/// When a version was written, as far as it is known. A version is its
/// ETag and this: a copy of an object onto itself with new metadata
/// (another client's chmod) keeps the ETag and moves its LastModified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionTime {
    /// Its LastModified, as a HEAD gave it.
    Exact(SystemTime),
    /// About then, by this machine's clock: a version this mount wrote (S3
    /// does not answer a PUT or copy with its LastModified), carrying
    /// nothing but what this mount put on it.
    WrittenHere(SystemTime),
    /// About then, as a snapshot's listing gave it.
    Listed(SystemTime),
}

impl VersionTime {
    /// Whether the version carries nothing but what this mount wrote.
    pub fn written_here(&self) -> bool {
        matches!(self, VersionTime::WrittenHere(_))
    }
}

/// How far a version's LastModified may be from this machine's clock at
/// the write (clock skew, a slow answer) and still be that version.
const CLOCK_SLACK: std::time::Duration = std::time::Duration::from_secs(60);

/// The attributes of one object version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectAttrs {
    pub etag: String,
    pub written: VersionTime,
    pub posix: PosixMeta,
    /// The target, when the object is a symlink and it was read.
    pub link: Option<String>,
}

/// ETags compare without their quotes: stores differ in quoting them.
pub fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
}

impl ObjectAttrs {
    /// Whether these are of the version a listing shows as `etag`, last
    /// modified at `listed` (compared in whole seconds: HEAD gives no
    /// more, listings may).
    fn of_version(&self, etag: &str, listed: Option<SystemTime>) -> bool {
        let secs = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        same_etag(&self.etag, etag)
            && match (self.written, listed) {
                (_, None) => true,
                (VersionTime::Exact(t), Some(listed)) => secs(t) == secs(listed),
                (VersionTime::WrittenHere(t) | VersionTime::Listed(t), Some(listed)) => {
                    listed <= t + CLOCK_SLACK
                }
            }
    }
}

/// Counters, for tests and metrics.
#[derive(Debug, Default)]
pub struct AttrStats {
    /// HEADs sent to learn attributes (ahead or on demand).
    pub heads: AtomicU64,
    /// Symlink targets read with a GET.
    pub link_reads: AtomicU64,
}

type Learning = Arc<OnceCell<Result<ObjectAttrs, FsError>>>;

/// A HEAD in flight for a key: its shared answer and when it was sent.
type InFlight = (Learning, std::time::Instant);

pub struct ObjectAttrsCache<S> {
    store: Arc<S>,
    db: Option<Arc<CatalogDb>>,
    memory: moka::sync::Cache<String, Arc<ObjectAttrs>>,
    /// Keys the catalog on disk was asked about and holds nothing for.
    absent: moka::sync::Cache<String, ()>,
    /// Keys being learned now, each with the answer its askers share.
    learning: Mutex<HashMap<String, InFlight>>,
    /// Keys whose HEAD failed lately: not asked again for a while, so a
    /// store that is down costs a stat one retry timeout, not one per
    /// attribute request (the kernel asks several for one open).
    failed: moka::sync::Cache<String, ()>,
    ahead: Arc<Semaphore>,
    stats: AttrStats,
}

impl<S: ObjectStore> ObjectAttrsCache<S> {
    /// `memory_bytes` bounds what is held in memory (the catalog on disk
    /// keeps the rest).
    pub fn new(store: Arc<S>, db: Option<Arc<CatalogDb>>, memory_bytes: u64) -> Self {
        ObjectAttrsCache {
            store,
            db,
            memory: moka::sync::Cache::builder()
                .max_capacity(memory_bytes)
                .weigher(|k: &String, a: &Arc<ObjectAttrs>| {
                    (k.len() + a.etag.len() + a.link.as_ref().map_or(0, |l| l.len()) + 120)
                        .min(u32::MAX as usize) as u32
                })
                .build(),
            absent: moka::sync::Cache::builder()
                .max_capacity(memory_bytes / 64)
                .build(),
            learning: Mutex::default(),
            failed: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(RETRY_FAILED_AFTER)
                .build(),
            ahead: Arc::new(Semaphore::new(AHEAD_CONCURRENCY)),
            stats: AttrStats::default(),
        }
    }

    pub fn stats(&self) -> &AttrStats {
        &self.stats
    }

    /// The attributes of version `etag` of `key` (last modified at
    /// `listed`, when a listing says), if known, without asking S3.
    pub fn known(
        &self,
        key: &str,
        etag: &str,
        listed: Option<SystemTime>,
    ) -> Option<Arc<ObjectAttrs>> {
        if let Some(a) = self.memory.get(key) {
            return a.of_version(etag, listed).then_some(a);
        }
        // Asked of the catalog once per key: a directory read asks for
        // every entry, again and again.
        if self.absent.contains_key(key) {
            return None;
        }
        let Some(stored) = self.db.as_ref().and_then(|db| db.object_attrs(key)) else {
            self.absent.insert(key.to_owned(), ());
            return None;
        };
        let stored = Arc::new(stored);
        self.memory.insert(key.to_owned(), stored.clone());
        stored.of_version(etag, listed).then_some(stored)
    }

    /// The attributes of the marker `prefix` of a directory: known, or
    /// learned with a HEAD (none, when there is no marker).
    pub async fn learn_marker(&self, prefix: &str) -> Result<Arc<ObjectAttrs>, FsError> {
        if let Some(a) = self.known(prefix, DIR_MARKER_VERSION, None) {
            return Ok(a);
        }
        self.stats.heads.fetch_add(1, Ordering::Relaxed);
        let posix = match self.store.head_metadata(prefix).await {
            Ok((_, marks)) => marks.posix,
            Err(StoreError::NotFound) => PosixMeta::NONE,
            Err(e) => return Err(FsError::store(prefix, e)),
        };
        let attrs = ObjectAttrs {
            etag: DIR_MARKER_VERSION.to_owned(),
            written: VersionTime::Listed(SystemTime::now()),
            posix,
            link: None,
        };
        self.record(prefix, attrs.clone());
        Ok(Arc::new(attrs))
    }

    /// Notes the attributes of a version this mount stored (or learned).
    pub fn record(&self, key: &str, attrs: ObjectAttrs) {
        self.absent.invalidate(key);
        if let Some(db) = &self.db {
            db.put_object_attrs(key, &attrs);
        }
        self.memory.insert(key.to_owned(), Arc::new(attrs));
    }

    /// Forgets `key`'s attributes (it was deleted or moved away).
    pub fn forget(&self, key: &str) {
        self.memory.invalidate(key);
        if let Some(db) = &self.db {
            db.remove_object_attrs(key);
        }
    }

    /// The attributes of version `etag` of `key`: known, or learned with a
    /// HEAD (shared with concurrent askers). When the key holds another
    /// version by now, that version's attributes are learned and returned.
    pub async fn learn(
        &self,
        key: &str,
        etag: &str,
        listed: Option<SystemTime>,
    ) -> Result<Arc<ObjectAttrs>, FsError> {
        if let Some(a) = self.known(key, etag, listed) {
            return Ok(a);
        }
        if self.failed.contains_key(key) {
            return Err(FsError::store(
                key,
                StoreError::Unavailable("its HEAD failed moments ago".into()),
            ));
        }
        let cell = self
            .learning
            .lock()
            .entry(key.to_owned())
            .or_insert_with(|| (Learning::default(), std::time::Instant::now()))
            .0
            .clone();
        let result = cell
            .get_or_init(|| async {
                self.stats.heads.fetch_add(1, Ordering::Relaxed);
                match self.store.head_metadata(key).await {
                    Ok((meta, marks)) => {
                        let attrs = ObjectAttrs {
                            etag: meta.etag,
                            written: VersionTime::Exact(meta.last_modified),
                            posix: marks.posix,
                            link: None,
                        };
                        self.record(key, attrs.clone());
                        Ok(attrs)
                    }
                    Err(e) => {
                        // Not asked again for a while, whatever the
                        // failure (a refusal repeats as surely as an
                        // outage); a missing object is the listing's
                        // business.
                        if !matches!(e, StoreError::NotFound) {
                            self.failed.insert(key.to_owned(), ());
                        }
                        Err(FsError::store(key, e))
                    }
                }
            })
            .await
            .clone();
        {
            let mut learning = self.learning.lock();
            if learning
                .get(key)
                .is_some_and(|(c, _)| Arc::ptr_eq(c, &cell))
            {
                learning.remove(key);
            }
        }
        result.map(Arc::new)
    }

    /// How long the HEAD of `key` has been in flight, if one is.
    pub fn learning_for(&self, key: &str) -> Option<std::time::Duration> {
        self.learning
            .lock()
            .get(key)
            .map(|(_, sent)| sent.elapsed())
    }

    /// Learns the attributes of `versions` (key, ETag) not known yet, in
    /// the background, a bounded number at a time; a later
    /// [`ObjectAttrsCache::learn`] of one of them waits for its answer.
    pub fn learn_ahead(self: &Arc<Self>, versions: Vec<(String, String, SystemTime)>) {
        for (key, etag, listed) in versions {
            if self.learning.lock().contains_key(&key)
                || self.known(&key, &etag, Some(listed)).is_some()
            {
                continue;
            }
            let Ok(permit) = self.ahead.clone().try_acquire_owned() else {
                return; // enough in flight: the askers learn the rest
            };
            let this = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = this.learn(&key, &etag, Some(listed)).await {
                    debug!(key, error = %e, "learning attributes ahead failed");
                }
            });
        }
    }

    /// The target of the symlink at version `etag` of `key` (`size` bytes):
    /// remembered, or read with one GET of that version.
    pub async fn link_target(
        &self,
        key: &str,
        (etag, size, listed): (&str, u64, SystemTime),
    ) -> Result<String, FsError> {
        let attrs = self.learn(key, etag, Some(listed)).await?;
        if !same_etag(&attrs.etag, etag) {
            // Replaced since it was listed: its size is another's.
            return Err(FsError::store(key, StoreError::PreconditionFailed));
        }
        if !attrs.posix.is_symlink() {
            return Err(FsError::Invalid("not a symlink"));
        }
        if let Some(link) = &attrs.link {
            return Ok(link.clone());
        }
        if size > MAX_LINK_LEN {
            return Err(FsError::Invalid("a symlink target longer than PATH_MAX"));
        }
        self.stats.link_reads.fetch_add(1, Ordering::Relaxed);
        let mut body = Vec::with_capacity(size as usize);
        self.store
            .get_range(key, &attrs.etag, 0..size, &[size], &mut |b| {
                body.extend_from_slice(&b)
            })
            .await
            .map_err(|e| FsError::store(key, e))?;
        let target = String::from_utf8(body)
            .map_err(|_| FsError::Invalid("a symlink target that is not UTF-8"))?;
        self.record(
            key,
            ObjectAttrs {
                link: Some(target.clone()),
                ..(*attrs).clone()
            },
        );
        Ok(target)
    }
}
