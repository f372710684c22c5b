//! The read path: open file handles, read-ahead, and the shared block cache.
//!
//! Each handle is pinned to one object version (its ETag) and owns a
//! [`ReadWindow`] that decides, per `read`, what must be fetched now and
//! what to fetch ahead. The [`Fetcher`] turns that into few, large, parallel
//! ranged GETs (each pinned with `If-Match`) and keeps the blocks in one
//! cache shared by all handles. One memory budget covers the cache and the
//! data requested ahead of readers: when read-ahead would exceed its share,
//! windows shrink instead of the process growing. A handle that stops
//! reading gives its share back after [`IDLE_AFTER`], so open but idle
//! handles do not starve the ones still reading.

mod fetch;
mod window;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, warn};

pub use fetch::{Fetcher, ObjectVersion, ReadStats};
pub use window::{Plan, ReadWindow, WindowConfig};

use crate::error::FsError;
use crate::store::{ObjectStore, StoreError};

/// A handle that has not read for this long no longer holds a share of the
/// read-ahead budget (what it fetched stays in the cache, subject to LRU).
pub const IDLE_AFTER: Duration = Duration::from_secs(1);

/// Settings of the read path; filled from the command line.
#[derive(Debug, Clone, Copy)]
pub struct ReadConfig {
    pub window: WindowConfig,
    /// Size of each ranged GET a window is split into.
    pub part_size: u64,
    /// Ranged GETs in flight at once, across all files.
    pub max_requests: usize,
    /// One budget for the block cache and all data requested ahead.
    pub memory_limit: u64,
}

impl Default for ReadConfig {
    fn default() -> Self {
        ReadConfig {
            window: WindowConfig::default(),
            part_size: 8 * 1024 * 1024,
            max_requests: 64,
            memory_limit: 512 * 1024 * 1024,
        }
    }
}

impl ReadConfig {
    /// The share of the budget that data requested ahead of readers may use.
    fn ahead_budget(&self) -> u64 {
        self.memory_limit / 4
    }

    /// The share of the budget the block cache may use. Data fetched ahead
    /// enters the cache unit by unit as it arrives, so the cache holds it
    /// too; the cache is large enough to keep all of it next to what was
    /// read last. The rest of the budget is for what the cache cannot see:
    /// GETs in flight (a quarter), listings (a sixteenth), the buffer pool
    /// (an eighth), and replies being assembled and allocator slack.
    fn cache_budget(&self) -> u64 {
        self.memory_limit / 8 * 3
    }

    /// Ranged GETs allowed in flight at once: `max_requests`, or fewer when
    /// the budget is small. A GET in flight holds the unit it is filling
    /// (up to a 1 MiB segment) and its connection's read buffer (up to about
    /// 400 KiB); a quarter of the budget covers all of them.
    fn gets_in_flight(&self) -> usize {
        const PER_GET: u64 = 3 * 512 * 1024;
        let fit = (self.memory_limit / 4 / PER_GET).max(4) as usize;
        self.max_requests.clamp(1, fit)
    }
}

/// See [`Reader::memory`].
#[derive(Debug, Clone, Copy)]
pub struct MemoryUse {
    pub budget: u64,
    pub cache: u64,
    pub ahead: u64,
}

struct OpenFile {
    version: Mutex<Arc<ObjectVersion>>,
    window: Mutex<ReadWindow>,
    /// Bytes this handle has requested ahead of its reader (its share of
    /// `Reader::ahead_total`); 0 once it has been idle for [`IDLE_AFTER`].
    ahead: AtomicU64,
    /// When this handle last read, in milliseconds since `Reader::born`.
    last_read_ms: AtomicU64,
    /// Set once any byte has been returned; from then on the version may not
    /// change under this handle.
    served: AtomicBool,
}

/// How an open file may use the kernel's page cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageCache {
    /// Same version as the last open: cached pages are still right.
    Keep,
    /// Another version than before: the kernel drops the cached pages.
    Invalidate,
    /// Another handle reads another version right now: bypass the cache.
    Bypass,
}

pub struct Reader<S> {
    store: Arc<S>,
    fetcher: Arc<Fetcher<S>>,
    config: ReadConfig,
    handles: Mutex<HashMap<u64, Arc<OpenFile>>>,
    next_fh: AtomicU64,
    /// Sum of the handles' `ahead`. Signed: a handle's share may be taken
    /// back (idle) while it updates it, which can briefly overshoot below 0.
    ahead_total: AtomicI64,
    born: Instant,
    /// When idle handles were last looked for (ms since `born`).
    last_idle_sweep_ms: AtomicU64,
    /// The ETag each key had at its last open: an unchanged object may keep
    /// its pages in the kernel's cache across opens.
    last_opened: moka::sync::Cache<Arc<str>, Arc<str>>,
}

impl<S: ObjectStore> Reader<S> {
    pub fn new(store: Arc<S>, config: ReadConfig) -> Self {
        // The pool of free piece buffers comes out of the budget's headroom
        // (what the cache and read-ahead leave). Smaller, it overflows when
        // the cache evicts a batch, and buffers handed back to malloc
        // fragment the heap: measured as 10-15 MiB more peak RSS at 64M.
        crate::store::limit_pool((config.memory_limit / 8) as usize);
        Reader {
            fetcher: Fetcher::new(
                store.clone(),
                config.window.block,
                config.part_size,
                config.cache_budget(),
                config.gets_in_flight(),
            ),
            store,
            config,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            ahead_total: AtomicI64::new(0),
            born: Instant::now(),
            last_idle_sweep_ms: AtomicU64::new(0),
            last_opened: moka::sync::Cache::new(100_000),
        }
    }

    /// Opens `key` at the version the catalog saw. Returns the handle and
    /// how the kernel's page cache may be used for it.
    pub fn open(&self, key: &str, etag: &str, size: u64) -> (u64, PageCache) {
        let key: Arc<str> = key.into();
        let etag: Arc<str> = etag.into();
        let file = self.new_handle(&key, &etag, size, false);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let mut handles = self.handles.lock().unwrap();
        // The page cache belongs to the inode, not the handle: while another
        // handle reads another version of this object, pages cached for one
        // would be served to the other. Such a handle bypasses the cache.
        let other_version_open = handles.values().any(|f| {
            let v = f.version.lock().unwrap();
            v.key == key && v.etag != etag
        });
        handles.insert(fh, file);
        drop(handles);
        let mode = if other_version_open {
            PageCache::Bypass
        } else if self.last_opened.get(&key).is_some_and(|e| e == etag) {
            PageCache::Keep
        } else {
            PageCache::Invalidate
        };
        self.last_opened.insert(key, etag);
        (fh, mode)
    }

    /// Opens exactly version `etag` of `key`, for a file being changed
    /// through the mount: its reads never move to a newer version (they
    /// fail instead), and the kernel's page cache is not decided here.
    pub fn open_exact(&self, key: &str, etag: &str, size: u64) -> u64 {
        let file = self.new_handle(&key.into(), &etag.into(), size, true);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.lock().unwrap().insert(fh, file);
        fh
    }

    fn new_handle(&self, key: &Arc<str>, etag: &Arc<str>, size: u64, exact: bool) -> Arc<OpenFile> {
        Arc::new(OpenFile {
            version: Mutex::new(Arc::new(ObjectVersion {
                key: key.clone(),
                etag: etag.clone(),
                size,
            })),
            window: Mutex::new(ReadWindow::new(self.config.window, size)),
            ahead: AtomicU64::new(0),
            last_read_ms: AtomicU64::new(self.now_ms()),
            // "Served" from the start: the version may never change.
            served: AtomicBool::new(exact),
        })
    }

    /// Closes handle `fh`; returns the key it read.
    pub fn release(&self, fh: u64) -> Option<Arc<str>> {
        let file = self.handles.lock().unwrap().remove(&fh)?;
        let mine = file.ahead.swap(0, Ordering::Relaxed);
        self.ahead_total.fetch_sub(mine as i64, Ordering::Relaxed);
        let key = file.version.lock().unwrap().key.clone();
        Some(key)
    }

    /// Whether any handle reads `key` now.
    pub fn is_open(&self, key: &str) -> bool {
        self.handles
            .lock()
            .unwrap()
            .values()
            .any(|f| &*f.version.lock().unwrap().key == key)
    }

    pub fn open_handles(&self) -> usize {
        self.handles.lock().unwrap().len()
    }

    pub fn stats(&self) -> &ReadStats {
        &self.fetcher.stats
    }

    /// The memory budget, and what of it the block cache and the read-ahead
    /// in flight use now.
    pub fn memory(&self) -> MemoryUse {
        MemoryUse {
            budget: self.config.memory_limit,
            cache: self.fetcher.cached_bytes(),
            ahead: self.ahead_total(),
        }
    }

    /// Reads up to `len` bytes at `offset`; short only at the end of the object.
    pub async fn read(&self, fh: u64, offset: u64, len: u32) -> Result<Bytes, FsError> {
        let file = self
            .handles
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)?;
        let mut retried_version = false;
        loop {
            let version = file.version.lock().unwrap().clone();
            let end = offset.saturating_add(len as u64).min(version.size);
            if offset >= end {
                return Ok(Bytes::new());
            }
            self.plan_and_request(&file, &version, offset, end - offset);
            match self.fetcher.read(&version, offset..end).await {
                Ok(bytes) => {
                    // Return bytes only of the version the handle is pinned
                    // to now; marking it served under the lock keeps a
                    // concurrent re-pin (below) from switching versions
                    // after any byte went out.
                    let current = file.version.lock().unwrap();
                    if Arc::ptr_eq(&current, &version) {
                        file.served.store(true, Ordering::Relaxed);
                        return Ok(bytes);
                    }
                }
                // The catalog's ETag may predate the open: the object was
                // replaced after it was listed. Before this handle has returned
                // any byte, the version "seen at open" is the current one.
                Err(StoreError::PreconditionFailed)
                    if !retried_version && !file.served.load(Ordering::Relaxed) =>
                {
                    retried_version = true;
                    let meta = self
                        .store
                        .head(&version.key)
                        .await
                        .map_err(|e| FsError::store(&version.key, e))?;
                    if meta.size != version.size {
                        // The kernel knows the old size and would cut the new
                        // object short (or ask past its end) without a word.
                        warn!(key = %version.key, "object replaced with a different size since it was listed; refresh and reopen it");
                        return Err(FsError::store(&version.key, StoreError::PreconditionFailed));
                    }
                    let mut current = file.version.lock().unwrap();
                    if Arc::ptr_eq(&current, &version) && !file.served.load(Ordering::Relaxed) {
                        debug!(key = %version.key, etag = %meta.etag, "object replaced before first read; pinning new version");
                        *current = Arc::new(ObjectVersion {
                            key: version.key.clone(),
                            etag: meta.etag.as_str().into(),
                            size: meta.size,
                        });
                        self.last_opened
                            .insert(version.key.clone(), current.etag.clone());
                    } else if file.served.load(Ordering::Relaxed) && Arc::ptr_eq(&current, &version)
                    {
                        return Err(FsError::store(&version.key, StoreError::PreconditionFailed));
                    }
                    // Otherwise another read re-pinned already: retry with it.
                }
                Err(e) => {
                    warn!(key = %version.key, offset, error = %e, "read failed");
                    return Err(FsError::store(&version.key, e));
                }
            }
        }
    }

    /// Asks the window what to fetch, keeps read-ahead within the budget,
    /// and starts the fetches (without waiting for them).
    fn plan_and_request(
        &self,
        file: &OpenFile,
        version: &Arc<ObjectVersion>,
        offset: u64,
        len: u64,
    ) {
        let now = self.now_ms();
        file.last_read_ms.store(now, Ordering::Relaxed);
        let plan = {
            let mut window = file.window.lock().unwrap();
            if self.ahead_total() > self.config.ahead_budget() / 2 {
                self.reclaim_idle(now);
            }
            // This handle's own read-ahead does not count against its room.
            let others = self
                .ahead_total()
                .saturating_sub(file.ahead.load(Ordering::Relaxed));
            let room = self
                .config
                .ahead_budget()
                .saturating_sub(others + window.ahead_bytes());
            let plan = window.plan(offset, len, room);
            // Account this handle's read-ahead in the global total.
            let mine = window.ahead_bytes();
            let before = file.ahead.swap(mine, Ordering::Relaxed);
            self.ahead_total
                .fetch_add(mine as i64 - before as i64, Ordering::Relaxed);
            plan
        };
        self.fetcher.request(version, plan.demand);
        if let Some(ahead) = plan.ahead {
            self.fetcher.request(version, ahead);
        }
    }

    fn ahead_total(&self) -> u64 {
        self.ahead_total.load(Ordering::Relaxed).max(0) as u64
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// Takes back the read-ahead share of handles idle for [`IDLE_AFTER`];
    /// looks at most every 100 ms. A handle that reads again re-claims its
    /// share in `plan_and_request`.
    fn reclaim_idle(&self, now: u64) {
        let last = self.last_idle_sweep_ms.load(Ordering::Relaxed);
        if now < last + 100
            || self
                .last_idle_sweep_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let idle_ms = IDLE_AFTER.as_millis() as u64;
        let handles: Vec<Arc<OpenFile>> = self.handles.lock().unwrap().values().cloned().collect();
        for file in handles {
            if file.last_read_ms.load(Ordering::Relaxed) + idle_ms <= now {
                let held = file.ahead.swap(0, Ordering::Relaxed);
                self.ahead_total.fetch_sub(held as i64, Ordering::Relaxed);
            }
        }
    }
}
