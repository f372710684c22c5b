//! `Fetcher`: the shared block cache and the ranged GETs that fill it.
//!
//! Objects are read in blocks (64 KiB by default) keyed by (key, ETag,
//! block index), so a block fetched for one handle serves every handle of
//! the same object version, and a new version never hits an old block.
//! A fetch is one ranged GET over a run of missing blocks (split into parts
//! of `part_size` that run in parallel); while it is in flight its blocks
//! are *pending*, and readers of those blocks wait for it instead of
//! fetching again. The cache is weighted by bytes and evicts least recently
//! used blocks, so data fetched ahead of a reader is not dropped in favour
//! of blocks that were read long ago.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::{watch, Semaphore};

use crate::store::{ObjectStore, StoreError};

/// One version of one object, as a handle reads it.
#[derive(Debug)]
pub struct ObjectVersion {
    pub key: Arc<str>,
    pub etag: Arc<str>,
    pub size: u64,
}

type BlockKey = (Arc<str>, Arc<str>, u64);
type FetchResult = Option<Result<Arc<Vec<Bytes>>, StoreError>>;

#[derive(Clone)]
struct Pending {
    rx: watch::Receiver<FetchResult>,
    first_block: u64,
}

/// Counters of the read path, for logs, benchmarks and metrics.
#[derive(Debug, Default)]
pub struct ReadStats {
    pub requests: AtomicU64,
    pub fetched_bytes: AtomicU64,
    pub served_bytes: AtomicU64,
    pub block_hits: AtomicU64,
    pub block_misses: AtomicU64,
}

pub struct Fetcher<S> {
    store: Arc<S>,
    block: u64,
    part_size: u64,
    cache: moka::sync::Cache<BlockKey, Bytes>,
    pending: Mutex<HashMap<BlockKey, Pending>>,
    permits: Arc<Semaphore>,
    pub stats: ReadStats,
}

impl<S: ObjectStore> Fetcher<S> {
    pub fn new(
        store: Arc<S>,
        block: u64,
        part_size: u64,
        cache_bytes: u64,
        max_requests: usize,
    ) -> Arc<Self> {
        let cache = moka::sync::Cache::builder()
            .max_capacity(cache_bytes)
            .weigher(|_k: &BlockKey, v: &Bytes| v.len().try_into().unwrap_or(u32::MAX))
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .build();
        Arc::new(Fetcher {
            store,
            block,
            part_size: part_size.max(block),
            cache,
            pending: Mutex::new(HashMap::new()),
            permits: Arc::new(Semaphore::new(max_requests.max(1))),
            stats: ReadStats::default(),
        })
    }

    /// Bytes the block cache holds now.
    pub fn cached_bytes(&self) -> u64 {
        self.cache.weighted_size()
    }

    pub fn block_size(&self) -> u64 {
        self.block
    }

    fn key(obj: &ObjectVersion, block: u64) -> BlockKey {
        (obj.key.clone(), obj.etag.clone(), block)
    }

    /// Starts fetches for the blocks of `range` that are neither cached nor
    /// pending. Returns at once; the bytes arrive in the cache.
    pub fn request(self: &Arc<Self>, obj: &Arc<ObjectVersion>, range: Range<u64>) {
        let range = range.start..range.end.min(obj.size);
        if range.is_empty() {
            return;
        }
        let first = range.start / self.block;
        let end = range.end.div_ceil(self.block);
        let mut pending = self.pending.lock().unwrap();
        let mut run: Option<u64> = None;
        for b in first..=end {
            let missing = b < end && {
                let k = Self::key(obj, b);
                !pending.contains_key(&k) && !self.cache.contains_key(&k)
            };
            match (missing, run) {
                (true, None) => run = Some(b),
                (false, Some(start)) => {
                    self.spawn_run(obj, start..b, &mut pending);
                    run = None;
                }
                _ => {}
            }
        }
    }

    fn spawn_run(
        self: &Arc<Self>,
        obj: &Arc<ObjectVersion>,
        blocks: Range<u64>,
        pending: &mut HashMap<BlockKey, Pending>,
    ) {
        let per_part = (self.part_size / self.block).max(1);
        let mut start = blocks.start;
        while start < blocks.end {
            let piece = start..(start + per_part).min(blocks.end);
            start = piece.end;
            let (tx, rx) = watch::channel(None);
            for b in piece.clone() {
                pending.insert(
                    Self::key(obj, b),
                    Pending {
                        rx: rx.clone(),
                        first_block: piece.start,
                    },
                );
            }
            let me = self.clone();
            let obj = obj.clone();
            tokio::spawn(async move {
                // Unregisters the pending blocks however the task ends, so a
                // failed or panicked fetch is retried by the next reader
                // instead of being waited on forever.
                let clear = ClearPending {
                    fetcher: &me,
                    obj: &obj,
                    blocks: piece.clone(),
                };
                let bytes = piece.start * me.block..(piece.end * me.block).min(obj.size);
                let result = {
                    let _permit = me.permits.acquire().await;
                    me.stats.requests.fetch_add(1, Ordering::Relaxed);
                    me.store
                        .get_range(&obj.key, &obj.etag, bytes.clone(), me.block as usize)
                        .await
                };
                if let Ok(blocks) = &result {
                    me.stats
                        .fetched_bytes
                        .fetch_add(bytes.end - bytes.start, Ordering::Relaxed);
                    for (i, data) in blocks.iter().enumerate() {
                        me.cache
                            .insert(Self::key(&obj, piece.start + i as u64), data.clone());
                    }
                }
                drop(clear);
                let _ = tx.send(Some(result.map(Arc::new)));
            });
        }
    }

    fn unregister(&self, obj: &ObjectVersion, blocks: Range<u64>) {
        // Also runs while a panic unwinds: a poisoned lock must not abort.
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for b in blocks {
            pending.remove(&Self::key(obj, b));
        }
    }

    /// Block `b` of `obj`: from the cache, from a pending fetch, or fetched now.
    pub async fn block(
        self: &Arc<Self>,
        obj: &Arc<ObjectVersion>,
        b: u64,
    ) -> Result<Bytes, StoreError> {
        let key = Self::key(obj, b);
        let mut counted = false;
        loop {
            if let Some(bytes) = self.cache.get(&key) {
                if !counted {
                    self.stats.block_hits.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(bytes);
            }
            if !counted {
                self.stats.block_misses.fetch_add(1, Ordering::Relaxed);
                counted = true;
            }
            let pending = self.pending.lock().unwrap().get(&key).cloned();
            match pending {
                Some(Pending {
                    mut rx,
                    first_block,
                }) => {
                    let outcome = match rx.wait_for(Option::is_some).await {
                        Ok(value) => value.clone().expect("waited for Some"),
                        Err(_) => Err(StoreError::Other("fetch ended without a result".into())),
                    };
                    return match outcome {
                        Ok(blocks) => blocks
                            .get((b - first_block) as usize)
                            .cloned()
                            .ok_or_else(|| StoreError::Other("short fetch".into())),
                        Err(e) => Err(e),
                    };
                }
                // Neither cached nor pending (never requested, or evicted
                // already): fetch it, then wait for that fetch.
                None => self.request(obj, b * self.block..(b + 1) * self.block),
            }
        }
    }

    /// The bytes of `range` (within the object), assembled from blocks.
    pub async fn read(
        self: &Arc<Self>,
        obj: &Arc<ObjectVersion>,
        range: Range<u64>,
    ) -> Result<Bytes, StoreError> {
        let range = range.start..range.end.min(obj.size);
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        let first = range.start / self.block;
        let last = (range.end - 1) / self.block;
        let slice_of = |b: u64, data: &Bytes| {
            let base = b * self.block;
            let from = range.start.max(base) - base;
            let to = (range.end.min(base + data.len() as u64) - base).max(from);
            data.slice(from as usize..to as usize)
        };
        let out = if first == last {
            let data = self.block(obj, first).await?;
            slice_of(first, &data)
        } else {
            let mut buf = bytes::BytesMut::with_capacity((range.end - range.start) as usize);
            for b in first..=last {
                let data = self.block(obj, b).await?;
                buf.extend_from_slice(&slice_of(b, &data));
            }
            buf.freeze()
        };
        self.stats
            .served_bytes
            .fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(out)
    }
}

struct ClearPending<'a, S: ObjectStore> {
    fetcher: &'a Fetcher<S>,
    obj: &'a ObjectVersion,
    blocks: Range<u64>,
}

impl<S: ObjectStore> Drop for ClearPending<'_, S> {
    fn drop(&mut self) {
        self.fetcher.unregister(self.obj, self.blocks.clone());
    }
}
