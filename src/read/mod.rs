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

pub mod disk_cache;
mod fetch;
mod window;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{debug, warn};

pub use fetch::{Fetcher, ObjectVersion, ReadStats, SEGMENT_BLOCKS};
pub use window::{ReadPlan, ReadWindow, WindowConfig};

use crate::error::FsError;
use crate::store::{ObjectStore, StoreError};
use disk_cache::DiskCache;

/// A handle that has not read for this long no longer holds a share of the
/// read-ahead budget (what it fetched stays in the cache, subject to LRU).
pub const IDLE_AFTER: Duration = Duration::from_secs(1);

/// A handle that has not read for this long no longer wants what was fetched
/// ahead for it: that moves to the cache, and its GETs in flight stop. Much
/// longer than [`IDLE_AFTER`]: on a loaded machine a reader may not run for
/// a second, and dropping its data then means fetching it again.
pub const ABANDONED_AFTER: Duration = Duration::from_secs(10);

/// `--data-cache-complete`'s default.
pub const DEFAULT_DATA_CACHE_COMPLETE: u64 = 256 << 20;

/// Settings of the read path; filled from the command line.
#[derive(Debug, Clone)]
pub struct ReadConfig {
    pub window: WindowConfig,
    /// Size of each ranged GET a window is split into.
    pub part_size: u64,
    /// Ranged GETs in flight at once, across all files.
    pub max_requests: usize,
    /// One budget for the block cache and all data requested ahead.
    pub memory_limit: u64,
    /// Name endings of columnar files (`.parquet`, ...), opened as direct
    /// handles: no kernel page cache, see [`ReadWindow::direct`].
    pub columnar_suffixes: Vec<String>,
    /// `--data-cache-complete`: an object the disk cache holds at least
    /// half of, missing at most this many bytes, is fetched whole after its
    /// last close (zero: never).
    pub data_cache_complete: u64,
}

impl Default for ReadConfig {
    fn default() -> Self {
        ReadConfig {
            window: WindowConfig::default(),
            part_size: 8 * 1024 * 1024,
            max_requests: 64,
            memory_limit: 512 * 1024 * 1024,
            columnar_suffixes: Vec::new(),
            data_cache_complete: DEFAULT_DATA_CACHE_COMPLETE,
        }
    }
}

impl ReadConfig {
    /// The share of the budget that data requested ahead of readers may use.
    fn ahead_budget(&self) -> u64 {
        self.memory_limit / 4
    }

    /// The share of the budget the block cache may use: what was read
    /// (and random reads' blocks). Data fetched ahead of readers is held
    /// outside it until read, within [`ReadConfig::ahead_budget`]; the two
    /// together take three eighths. The rest of the budget is for GETs in
    /// flight (a quarter), listings (a sixteenth), the buffer pool (an
    /// eighth), and replies being assembled and allocator slack.
    fn cache_budget(&self) -> u64 {
        self.memory_limit / 8
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

/// A handle's move to the current version of its object (see
/// [`Reader::take_repinned`]).
#[derive(Debug)]
pub struct Repinned {
    /// The size of the version the handle was opened at: what the kernel
    /// was told.
    pub opened_size: u64,
    pub now: crate::store::ObjectMeta,
}

/// One open handle for reading: the object version it reads, its window
/// and its share of the read-ahead budget.
struct ReadHandle {
    version: Mutex<Arc<ObjectVersion>>,
    window: Mutex<ReadWindow>,
    /// Bytes this handle has requested ahead of its reader (its share of
    /// `Reader::ahead_total`); 0 once it has been idle for [`IDLE_AFTER`].
    ahead: AtomicU64,
    /// When this handle last read, in milliseconds since `Reader::born`.
    last_read_ms: AtomicU64,
    /// Reads of this handle in progress: a handle waiting for its data is
    /// not idle, however long the data takes.
    reading: AtomicU64,
    /// Set once any byte has been returned; from then on the version may not
    /// change under this handle.
    served: AtomicBool,
    /// The object as found when this handle moved to its current version
    /// before its first byte, until the filesystem takes it to update what
    /// it (and the kernel) know of the file.
    repinned: Mutex<Option<Repinned>>,
    /// Where this handle's current run of sequential reads began, and how
    /// far it has read (0 and 0 while it is not sequential), for the other
    /// readers of the object (see [`ReadWindow::limit_ahead`]).
    run_start: AtomicU64,
    position: AtomicU64,
}

impl ReadHandle {
    /// Not read for [`IDLE_AFTER`] and not waiting for a read now.
    fn is_idle(&self, now_ms: u64, idle_ms: u64) -> bool {
        self.reading.load(Ordering::Relaxed) == 0
            && self.last_read_ms.load(Ordering::Relaxed) + idle_ms <= now_ms
    }
}

/// Counts a read as finished however it ends.
struct ReadDone<'a>(&'a AtomicU64);

impl Drop for ReadDone<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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
    handles: Mutex<HashMap<u64, Arc<ReadHandle>>>,
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
    /// Where sequential readers that have closed began, per object version,
    /// while other handles of that version are still open: their ranges
    /// were read, so read-ahead of the others stops there too.
    closed_runs: Mutex<Vec<ClosedRun>>,
}

/// A read handle just closed (see [`Reader::release`]).
pub struct ClosedRead {
    /// The key it read.
    pub key: Arc<str>,
    /// Its object version, when no other handle reads that version.
    last_of_version: Option<Arc<ObjectVersion>>,
}

/// Key, ETag and start of a closed reader's run (see `Reader::closed_runs`).
type ClosedRun = (Arc<str>, Arc<str>, u64);

impl<S: ObjectStore> Reader<S> {
    /// A reader of `store`; with `disk`, units are kept on local disk too.
    pub fn new(store: Arc<S>, config: ReadConfig, disk: Option<Arc<DiskCache>>) -> Self {
        // The pool of free piece buffers comes out of the budget's headroom
        // (what the cache and read-ahead leave). Smaller, it overflows when
        // the cache evicts a batch, and buffers handed back to malloc
        // fragment the heap: measured as 10-15 MiB more peak RSS at 64M.
        crate::store::limit_pool((config.memory_limit / 8) as usize);
        Reader {
            fetcher: Fetcher::new(store.clone(), &config, disk),
            store,
            config,
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            ahead_total: AtomicI64::new(0),
            born: Instant::now(),
            last_idle_sweep_ms: AtomicU64::new(0),
            last_opened: moka::sync::Cache::new(100_000),
            closed_runs: Mutex::new(Vec::new()),
        }
    }

    /// Opens `key` at the version the catalog saw. Returns the handle and
    /// how the kernel's page cache may be used for it.
    pub fn open(&self, key: &str, etag: &str, size: u64) -> (u64, PageCache) {
        let key: Arc<str> = key.into();
        let etag: Arc<str> = etag.into();
        let columnar = self
            .config
            .columnar_suffixes
            .iter()
            .any(|s| key.ends_with(s.as_str()));
        let file = self.new_handle(&key, &etag, size, false);
        if columnar {
            *file.window.lock() = ReadWindow::direct(self.config.window, size);
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let mut handles = self.handles.lock();
        // The page cache belongs to the inode, not the handle: while another
        // handle reads another version of this object, pages cached for one
        // would be served to the other. Such a handle bypasses the cache.
        let other_version_open = handles.values().any(|f| {
            let v = f.version.lock();
            v.key == key && v.etag != etag
        });
        handles.insert(fh, file);
        drop(handles);
        // A columnar file is read without the kernel's page cache: its
        // readahead would read past each column chunk the engine asks for.
        let mode = if other_version_open || columnar {
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
        self.handles.lock().insert(fh, file);
        fh
    }

    fn new_handle(
        &self,
        key: &Arc<str>,
        etag: &Arc<str>,
        size: u64,
        exact: bool,
    ) -> Arc<ReadHandle> {
        Arc::new(ReadHandle {
            version: Mutex::new(Arc::new(ObjectVersion {
                key: key.clone(),
                etag: etag.clone(),
                size,
            })),
            window: Mutex::new(ReadWindow::new(self.config.window, size)),
            ahead: AtomicU64::new(0),
            last_read_ms: AtomicU64::new(self.now_ms()),
            reading: AtomicU64::new(0),
            // "Served" from the start: the version may never change.
            served: AtomicBool::new(exact),
            repinned: Mutex::new(None),
            run_start: AtomicU64::new(0),
            position: AtomicU64::new(0),
        })
    }

    /// Closes handle `fh`; returns the key it read.
    pub fn release(&self, fh: u64) -> Option<ClosedRead> {
        let file = self.handles.lock().remove(&fh)?;
        let mine = file.ahead.swap(0, Ordering::Relaxed);
        self.ahead_total.fetch_sub(mine as i64, Ordering::Relaxed);
        let version = file.version.lock().clone();
        let still_open = self.note_closed_run(&file, &version);
        if mine > 0 {
            self.release_unwanted_ahead();
        }
        Some(ClosedRead {
            key: version.key.clone(),
            last_of_version: (!still_open).then_some(version),
        })
    }

    /// What is left to do once a handle has closed, off the request loop:
    /// an object its last reader left mostly cached is completed on disk.
    /// Must run inside the tokio runtime.
    pub fn after_release(&self, closed: &ClosedRead) {
        if let Some(version) = &closed.last_of_version {
            self.fetcher.complete_in_background(version);
        }
    }

    /// Remembers where a closing sequential reader began while other
    /// handles of the same version are open; forgets the version's runs
    /// once none is. Returns whether any is.
    fn note_closed_run(&self, file: &ReadHandle, version: &ObjectVersion) -> bool {
        let same = |v: &ObjectVersion| v.key == version.key && v.etag == version.etag;
        let still_open = self
            .handles
            .lock()
            .values()
            .any(|f| same(&f.version.lock()));
        let mut runs = self.closed_runs.lock();
        if !still_open {
            runs.retain(|(k, e, _)| !(*k == version.key && *e == version.etag));
        } else if file.position.load(Ordering::Relaxed) > 0 && runs.len() < 1024 {
            runs.push((
                version.key.clone(),
                version.etag.clone(),
                file.run_start.load(Ordering::Relaxed),
            ));
        }
        still_open
    }

    /// Data held ahead of readers that no open handle's window wants any
    /// more (it seeked, went idle or closed) goes to the ordinary cache.
    fn release_unwanted_ahead(&self) {
        // Not under the handles lock: a reader locks its window first.
        let files: Vec<Arc<ReadHandle>> = self.handles.lock().values().cloned().collect();
        let now = self.now_ms();
        let abandoned_ms = ABANDONED_AFTER.as_millis() as u64;
        let windows: Vec<(Arc<str>, Arc<str>, std::ops::Range<u64>)> = files
            .iter()
            .filter(|f| !f.is_idle(now, abandoned_ms))
            .filter_map(|f| {
                let wanted = f.window.lock().wanted()?;
                let v = f.version.lock();
                Some((v.key.clone(), v.etag.clone(), wanted))
            })
            .collect();
        self.fetcher.release_ahead(|key, etag, range| {
            windows.iter().any(|(k, e, w)| {
                &**k == key && &**e == etag && range.start < w.end && range.end > w.start
            })
        });
    }

    /// Whether any handle reads `key` now.
    pub fn is_open(&self, key: &str) -> bool {
        self.handles
            .lock()
            .values()
            .any(|f| &*f.version.lock().key == key)
    }

    pub fn open_handles(&self) -> usize {
        self.handles.lock().len()
    }

    /// Counters of the disk cache of object data, when there is one.
    /// The object's data file when the disk cache holds this version whole
    /// and intact, for the kernel to read itself. Blocks on the disk.
    pub fn backing_file(&self, key: &str, etag: &str, size: u64) -> Option<std::fs::File> {
        self.fetcher.complete_file(key, etag, size)
    }

    pub fn data_cache_stats(&self) -> Option<&disk_cache::DiskCacheStats> {
        self.fetcher.data_cache_stats()
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

    /// The object handle `fh` moved to, once, when it found the version it
    /// was opened at replaced before returning any byte (see `read`).
    pub fn take_repinned(&self, fh: u64) -> Option<Repinned> {
        let file = self.handles.lock().get(&fh).cloned()?;
        let taken = file.repinned.lock().take();
        taken
    }

    /// The size of the version handle `fh` reads, while it is open.
    pub fn open_size(&self, fh: u64) -> Option<u64> {
        let file = self.handles.lock().get(&fh).cloned()?;
        let size = file.version.lock().size;
        Some(size)
    }

    /// Reads up to `len` bytes at `offset`; short only at the end of the
    /// object. A handle that finds the version it was opened at replaced
    /// before it returned any byte moves to the current version (whatever
    /// its size; see [`Reader::take_repinned`]); one that already returned
    /// bytes fails instead, so a reader never gets a mix of versions.
    pub async fn read(&self, fh: u64, offset: u64, len: u32) -> Result<Bytes, FsError> {
        let file = self
            .handles
            .lock()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)?;
        let mut retried_version = false;
        let overlapping = file.reading.fetch_add(1, Ordering::Relaxed) > 0;
        let _done = ReadDone(&file.reading);
        loop {
            let version = file.version.lock().clone();
            let end = offset.saturating_add(len as u64).min(version.size);
            if offset >= end {
                return Ok(Bytes::new());
            }
            let answered =
                self.plan_and_request(&file, &version, offset, end - offset, overlapping);
            let read = match answered {
                Some(bytes) => Ok(bytes),
                None => self.fetcher.read(&version, offset..end).await,
            };
            match read {
                Ok(bytes) => {
                    // Return bytes only of the version the handle is pinned
                    // to now; marking it served under the lock keeps a
                    // concurrent re-pin (below) from switching versions
                    // after any byte went out.
                    let current = file.version.lock();
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
                    let mut current = file.version.lock();
                    if Arc::ptr_eq(&current, &version) && !file.served.load(Ordering::Relaxed) {
                        debug!(key = %version.key, etag = %meta.etag, size = meta.size, "object replaced before first read; pinning new version");
                        *current = Arc::new(ObjectVersion {
                            key: version.key.clone(),
                            etag: meta.etag.as_str().into(),
                            size: meta.size,
                        });
                        if meta.size != version.size {
                            *file.window.lock() = ReadWindow::new(self.config.window, meta.size);
                        }
                        self.last_opened
                            .insert(version.key.clone(), current.etag.clone());
                        *file.repinned.lock() = Some(Repinned {
                            opened_size: version.size,
                            now: meta,
                        });
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
    /// and starts the fetches (without waiting for them). Returns the
    /// read's bytes when the disk cache answered it in place.
    fn plan_and_request(
        &self,
        file: &ReadHandle,
        version: &Arc<ObjectVersion>,
        offset: u64,
        len: u64,
        overlapping: bool,
    ) -> Option<Bytes> {
        let now = self.now_ms();
        file.last_read_ms.store(now, Ordering::Relaxed);
        let mut swept = false;
        let limit = self.other_readers_limit(file, version);
        let plan = {
            let mut window = file.window.lock();
            window.limit_ahead(limit);
            if self.ahead_total() > self.config.ahead_budget() / 2
                || self.fetcher.held_bytes() > self.config.ahead_budget() / 2
            {
                swept = self.reclaim_idle(now);
            }
            // This handle's own read-ahead does not count against its room.
            let others = self
                .ahead_total()
                .saturating_sub(file.ahead.load(Ordering::Relaxed));
            // Data fetched ahead and not read yet counts too: when it fills
            // its share, windows shrink rather than fetch what could not be
            // held until read.
            let requested = (others + window.ahead_bytes()).max(self.fetcher.held_bytes());
            let room = self.config.ahead_budget().saturating_sub(requested);
            let plan = window.plan_read(offset, len, room, overlapping);
            let (start, position) = match window.is_sequential() {
                true => (window.run_start(), offset + len),
                false => (0, 0),
            };
            file.run_start.store(start, Ordering::Relaxed);
            file.position.store(position, Ordering::Relaxed);
            // Account this handle's read-ahead in the global total.
            let mine = window.ahead_bytes();
            let before = file.ahead.swap(mine, Ordering::Relaxed);
            self.ahead_total
                .fetch_add(mine as i64 - before as i64, Ordering::Relaxed);
            plan
        };
        if swept {
            // With no window locked: it locks every handle's window.
            self.release_unwanted_ahead();
        }
        let answered = self
            .fetcher
            .request_for_read(version, plan.demand, offset..offset + len);
        match (plan.ahead, &answered) {
            (Some(ahead), Some(_)) => self.fetcher.ask_disk_ahead(version, ahead),
            (Some(ahead), None) => self.fetcher.request_ahead(version, ahead),
            (None, _) => {}
        }
        answered
    }

    /// How far this handle's read-ahead may go, given where the other
    /// sequential readers of the same object version began (see
    /// [`window::ahead_limit`]). Only for sequential readers; read from
    /// atomics, so no other handle's window is locked.
    fn other_readers_limit(&self, me: &ReadHandle, version: &ObjectVersion) -> u64 {
        let position = me.position.load(Ordering::Relaxed);
        if position == 0 {
            return u64::MAX;
        }
        let files: Vec<Arc<ReadHandle>> = self.handles.lock().values().cloned().collect();
        let mut starts: Vec<u64> = files
            .iter()
            .filter(|f| !std::ptr::eq(Arc::as_ptr(f), me))
            .filter(|f| f.position.load(Ordering::Relaxed) > 0)
            .filter(|f| {
                let v = f.version.lock();
                v.key == version.key && v.etag == version.etag
            })
            .map(|f| f.run_start.load(Ordering::Relaxed))
            .collect();
        starts.extend(
            self.closed_runs
                .lock()
                .iter()
                .filter(|(k, e, _)| *k == version.key && *e == version.etag)
                .map(|r| r.2),
        );
        window::ahead_limit(me.run_start.load(Ordering::Relaxed), position, &starts)
    }

    fn ahead_total(&self) -> u64 {
        self.ahead_total.load(Ordering::Relaxed).max(0) as u64
    }

    fn now_ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    /// Takes back the read-ahead share of handles idle for [`IDLE_AFTER`];
    /// looks at most every 100 ms, and says whether it looked. A handle that
    /// reads again re-claims its share in `plan_and_request`.
    fn reclaim_idle(&self, now: u64) -> bool {
        let last = self.last_idle_sweep_ms.load(Ordering::Relaxed);
        if now < last + 100
            || self
                .last_idle_sweep_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        let idle_ms = IDLE_AFTER.as_millis() as u64;
        let handles: Vec<Arc<ReadHandle>> = self.handles.lock().values().cloned().collect();
        for file in handles {
            if file.is_idle(now, idle_ms) {
                let held = file.ahead.swap(0, Ordering::Relaxed);
                self.ahead_total.fetch_sub(held as i64, Ordering::Relaxed);
            }
        }
        true
    }
}
