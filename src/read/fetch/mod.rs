//! `Fetcher`: the shared block cache and the ranged GETs that fill it.
//!
//! Objects are cached in *units* keyed by (key, ETag, unit), so a unit
//! fetched for one handle serves every handle of the same object version,
//! and a new version never hits an old unit. A unit is either one block
//! (64 KiB by default), which is what random reads fetch, or a whole
//! aligned segment of [`SEGMENT_BLOCKS`] blocks (1 MiB, the largest read
//! the kernel sends), which is what read-ahead fetches: a kernel read then
//! lies in one segment and is answered with a slice of it, without copying,
//! and the cache does one operation per MiB instead of one per block.
//!
//! A fetch is one ranged GET over a run of missing units (split into parts
//! of `part_size` that run in parallel). While it is in flight its units are
//! *pending*; each unit enters the cache the moment its last byte arrives,
//! and readers waiting for it wake then, not when the whole part is done.
//! The cache is weighted by bytes and evicts least recently used units.
//!
//! Units fetched *ahead* of a reader are not put in that cache until they
//! are read: an LRU cache would evict them first (what a reader consumed a
//! moment ago is more recently used than what was fetched for it a while
//! before), and a reader slower than the network, or several readers of one
//! object, would then fetch the same bytes again. They are *held* instead,
//! outside the LRU order, until a reader reads them (then they move into the
//! cache) or no reader's window covers them any more
//! ([`Fetcher::release_ahead`]). What is held is bounded by the read-ahead
//! budget: windows shrink when it is spent, instead of fetched data being
//! thrown away.
//!
//! Beside this file: `block_cache` (units in memory, held units, and the
//! bytes each unit covers), `request_plan` (which units a range needs, in
//! parts), `part_get` (the task that fetches one part) and `disk_tier` (the
//! disk cache between memory and S3).

mod block_cache;
mod completion;
mod disk_tier;
mod part_get;
mod request_plan;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use bytes::Bytes;
use tokio::sync::Semaphore;

use super::disk_cache::DiskCache;
use super::ReadConfig;
use crate::store::{ObjectStore, StoreError};
use block_cache::{Found, UnitKey};
use part_get::Pending;

/// Blocks per segment. With 64 KiB blocks a segment is 1 MiB, the size of
/// the kernel's largest FUSE read, and kernel reads are aligned to it.
pub const SEGMENT_BLOCKS: u64 = 16;

/// Blocks' worth of data (64 MiB with 64 KiB blocks) that may wait to be
/// written to the disk cache.
const DISK_WRITE_BACKLOG: u64 = 1024;

/// One version of one object, as a handle reads it.
#[derive(Debug)]
pub struct ObjectVersion {
    pub key: Arc<str>,
    pub etag: Arc<str>,
    pub size: u64,
}

/// Counters of the read path, for logs, benchmarks and metrics.
#[derive(Debug, Default)]
pub struct ReadStats {
    pub requests: AtomicU64,
    pub fetched_bytes: AtomicU64,
    pub served_bytes: AtomicU64,
    pub block_hits: AtomicU64,
    pub block_misses: AtomicU64,
    /// Ranged GETs waiting for one of the `--max-concurrent-requests` slots.
    pub gets_queued: AtomicU64,
    /// Ranged GETs holding a slot (in flight, or backing off to retry).
    pub gets_running: AtomicU64,
    /// Read-ahead GETs stopped because no reader wanted their data any more.
    pub cancelled_gets: AtomicU64,
    /// READ requests the kernel sent (none for a passthrough handle).
    pub kernel_reads: AtomicU64,
    /// Opens the kernel reads itself from the disk cache (passthrough).
    pub passthrough_opens: AtomicU64,
}

pub struct Fetcher<S> {
    store: Arc<S>,
    block: u64,
    part_size: u64,
    cache: moka::sync::Cache<UnitKey, Bytes>,
    /// Bytes inserted since the cache last evicted. moka evicts only every
    /// 64 inserts or 300 ms, which with 1 MiB segments could overshoot a
    /// small cache several times over; so eviction is run every
    /// `evict_every` bytes.
    unevicted: AtomicU64,
    evict_every: u64,
    pending: Mutex<HashMap<UnitKey, Pending>>,
    /// Units fetched ahead of a reader and not read yet (see the module doc).
    held: Mutex<HashMap<UnitKey, Bytes>>,
    held_bytes: AtomicU64,
    /// Beyond this, units fetched ahead go straight into the cache.
    held_limit: u64,
    permits: Arc<Semaphore>,
    /// Units on local disk (`--data-cache`), consulted before S3.
    disk: Option<Arc<DiskCache>>,
    /// Bounds the bytes waiting to be written to the disk cache (in units
    /// of a block; they may hold memory the cache has let go); beyond it a
    /// unit is not cached.
    disk_writes: Arc<Semaphore>,
    /// `--data-cache-complete`: see the `completion` module.
    complete_limit: u64,
    /// Set while the task completing objects in the background runs.
    completing: AtomicBool,
    /// Object versions it has yet to look at.
    completion_queue: Mutex<std::collections::VecDeque<Arc<ObjectVersion>>>,
    pub stats: ReadStats,
}

impl<S: ObjectStore> Fetcher<S> {
    /// A fetcher within the budgets `config` sets; with `disk`, units are
    /// kept on local disk too.
    pub fn new(store: Arc<S>, config: &ReadConfig, disk: Option<Arc<DiskCache>>) -> Arc<Self> {
        let block = config.window.block;
        let cache_bytes = config.cache_budget();
        // Slack over what windows may request: partly read segments and
        // reads that arrive out of order stay held a little longer than
        // their window counts them.
        let held_limit = config.ahead_budget() + config.ahead_budget() / 8;
        let cache = moka::sync::Cache::builder()
            .max_capacity(cache_bytes)
            .weigher(|_k: &UnitKey, v: &Bytes| v.len().try_into().unwrap_or(u32::MAX))
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .build();
        Arc::new(Fetcher {
            store,
            block,
            part_size: config.part_size.max(block),
            cache,
            unevicted: AtomicU64::new(0),
            evict_every: (cache_bytes / 32).max(1),
            pending: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            held_bytes: AtomicU64::new(0),
            held_limit,
            permits: Arc::new(Semaphore::new(config.gets_in_flight().max(1))),
            disk,
            disk_writes: Arc::new(Semaphore::new(DISK_WRITE_BACKLOG as usize)),
            complete_limit: config.data_cache_complete,
            completing: AtomicBool::new(false),
            completion_queue: Mutex::new(std::collections::VecDeque::new()),
            stats: ReadStats::default(),
        })
    }

    /// The data file of `key` at `etag` if the disk cache holds it whole
    /// (see [`DiskCache::complete_file`]). Blocks on the disk.
    pub fn complete_file(&self, key: &str, etag: &str, size: u64) -> Option<std::fs::File> {
        self.disk.as_ref()?.complete_file(key, etag, size)
    }

    pub fn data_cache_stats(&self) -> Option<&super::disk_cache::DiskCacheStats> {
        self.disk.as_ref().map(|d| &*d.stats)
    }

    /// Bytes held for readers ahead of them now.
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes.load(Ordering::Relaxed)
    }

    /// Bytes the block cache holds now.
    pub fn cached_bytes(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Starts fetches for the parts of `range` that are neither cached nor
    /// pending. Returns at once; the bytes arrive in the cache. Units the
    /// disk cache holds are read from it right here, which for a reader
    /// waiting on them is quicker than a task of their own.
    ///
    /// Whole segments the range covers are fetched as segments (unless a
    /// block of them is cached or pending already); the rest as blocks.
    pub fn request(self: &Arc<Self>, obj: &Arc<ObjectVersion>, range: Range<u64>) {
        self.request_for_read(obj, range, 0..0);
    }

    /// [`Fetcher::request`] for a read of `read` (within `range`): when the
    /// disk cache holds all of `range` and memory none of it, `range` is
    /// read from disk into one buffer now and the read answered with a
    /// slice of it, which is returned. That buffer is not put in the memory
    /// cache: the kernel's page cache keeps what it read, and keeping it
    /// would spend fresh memory on every read.
    pub fn request_for_read(
        self: &Arc<Self>,
        obj: &Arc<ObjectVersion>,
        range: Range<u64>,
        read: Range<u64>,
    ) -> Option<Bytes> {
        let range = range.start..range.end.min(obj.size);
        if let Some(out) = self.read_in_place_from_disk(obj, range.clone(), read) {
            self.stats.block_hits.fetch_add(1, Ordering::Relaxed);
            self.stats
                .served_bytes
                .fetch_add(out.len() as u64, Ordering::Relaxed);
            return Some(out);
        }
        self.request_units(obj, range, false);
        None
    }

    /// Like [`Fetcher::request`], for data a reader will want later: what
    /// arrives is held until it is read (see the module doc).
    pub fn request_ahead(self: &Arc<Self>, obj: &Arc<ObjectVersion>, range: Range<u64>) {
        self.request_units(obj, range, true);
    }

    /// The unit holding byte `at` of `obj` and where it starts: from the
    /// cache, from a pending fetch (as soon as the unit has arrived), or
    /// fetched now.
    async fn unit_at(
        self: &Arc<Self>,
        obj: &Arc<ObjectVersion>,
        at: u64,
        until: u64,
    ) -> Result<(u64, Bytes), StoreError> {
        let mut counted = false;
        // Parts that vanished under this reader (cancelled read-ahead, or a
        // task that died); a few are looked for or fetched anew, then it is
        // an error.
        let mut vanished = 0;
        loop {
            let found = self.find(obj, at, until);
            if let Found::Cached(unit, data) = found {
                if !counted {
                    self.stats.block_hits.fetch_add(1, Ordering::Relaxed);
                }
                return Ok((self.bytes_of(obj, unit).start, data));
            }
            if !counted {
                self.stats.block_misses.fetch_add(1, Ordering::Relaxed);
                counted = true;
            }
            match found {
                Found::Pending(
                    unit,
                    Pending {
                        mut progress,
                        index,
                        ..
                    },
                ) => {
                    let outcome = progress.wait_for(|p| p.arrived > index || p.ended).await;
                    match outcome {
                        Ok(p) if p.arrived > index => {}
                        Ok(p) => {
                            return Err(p
                                .error
                                .clone()
                                .unwrap_or_else(|| StoreError::Other("fetch ended short".into())))
                        }
                        Err(_) if vanished < 8 => {
                            vanished += 1;
                            continue;
                        }
                        Err(_) => {
                            return Err(StoreError::Other("fetch ended without a result".into()))
                        }
                    }
                    // Arrived: it is in the cache now, unless evicted again
                    // already (then it is looked for, or fetched, anew).
                    if let Some(data) = self.lookup(&Self::key(obj, unit), until) {
                        return Ok((self.bytes_of(obj, unit).start, data));
                    }
                }
                // Neither cached nor pending (never requested, evicted, or
                // its read-ahead cancelled): fetch it, then wait for that.
                _ => {
                    // The rest of the read in one GET, not block by block.
                    let b = at / self.block;
                    self.request(obj, b * self.block..until.max((b + 1) * self.block));
                }
            }
        }
    }

    /// The bytes of `range` (within the object). A range inside one cached
    /// unit (a kernel read inside a segment) comes back without a copy.
    pub async fn read(
        self: &Arc<Self>,
        obj: &Arc<ObjectVersion>,
        range: Range<u64>,
    ) -> Result<Bytes, StoreError> {
        let range = range.start..range.end.min(obj.size);
        let mut pieces: Vec<Bytes> = Vec::new();
        let mut at = range.start;
        while at < range.end {
            let (start, data) = self.unit_at(obj, at, range.end).await?;
            let from = (at - start) as usize;
            let to = ((range.end - start) as usize).min(data.len());
            if from >= to {
                return Err(StoreError::Other("short fetch".into()));
            }
            pieces.push(data.slice(from..to));
            at = start + to as u64;
        }
        let out = match pieces.len() {
            0 => Bytes::new(),
            1 => pieces.pop().expect("one piece"),
            _ => {
                let mut buf = bytes::BytesMut::with_capacity((range.end - range.start) as usize);
                for piece in &pieces {
                    buf.extend_from_slice(piece);
                }
                buf.freeze()
            }
        };
        self.stats
            .served_bytes
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }
}
