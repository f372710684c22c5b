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

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use bytes::Bytes;
use tokio::sync::{watch, Semaphore};

use super::disk_cache::{DiskCache, UnitId};
use crate::blocking::blocking;
use crate::store::{ObjectStore, StoreError};

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

/// What is cached under one key: a block or a whole segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Unit {
    Block(u64),
    Segment(u64),
}

type UnitKey = (Arc<str>, Arc<str>, Unit);

/// How far one ranged GET has got. Arrived units are in the cache; they are
/// not kept here too, so units the cache evicts while the GET runs are
/// freed at once (a waiter that finds its unit evicted fetches it again).
#[derive(Default)]
struct PartProgress {
    /// Units that have arrived (and entered the cache), in order.
    arrived: usize,
    /// Set when the GET has ended; with `error` if it failed.
    ended: bool,
    error: Option<StoreError>,
}

#[derive(Clone)]
struct Pending {
    progress: watch::Receiver<PartProgress>,
    /// Position of the unit among the part's units.
    index: usize,
    /// The part's task, to cancel read-ahead no reader wants any more.
    part: Arc<PartTask>,
}

/// A running ranged GET.
struct PartTask {
    /// Set right after the task is spawned.
    abort: std::sync::OnceLock<tokio::task::AbortHandle>,
    /// Fetched ahead of a reader (may be cancelled when unwanted).
    ahead: bool,
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
}

/// The name a unit has in the disk cache.
fn unit_name(unit: Unit) -> String {
    match unit {
        Unit::Block(b) => format!("b{b}"),
        Unit::Segment(s) => format!("s{s}"),
    }
}

fn unit_id(obj: &ObjectVersion, unit: Unit) -> UnitId<'_> {
    UnitId {
        key: &obj.key,
        etag: &obj.etag,
        unit: unit_name(unit),
    }
}

/// Counts itself in a gauge while it lives.
struct Counted<'a>(&'a AtomicU64);

impl<'a> Counted<'a> {
    fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Counted(gauge)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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
    pub stats: ReadStats,
}

impl<S: ObjectStore> Fetcher<S> {
    pub fn new(
        store: Arc<S>,
        block: u64,
        part_size: u64,
        cache_bytes: u64,
        held_limit: u64,
        max_requests: usize,
        disk: Option<Arc<DiskCache>>,
    ) -> Arc<Self> {
        let cache = moka::sync::Cache::builder()
            .max_capacity(cache_bytes)
            .weigher(|_k: &UnitKey, v: &Bytes| v.len().try_into().unwrap_or(u32::MAX))
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .build();
        Arc::new(Fetcher {
            store,
            block,
            part_size: part_size.max(block),
            cache,
            unevicted: AtomicU64::new(0),
            evict_every: (cache_bytes / 32).max(1),
            pending: Mutex::new(HashMap::new()),
            held: Mutex::new(HashMap::new()),
            held_bytes: AtomicU64::new(0),
            held_limit,
            permits: Arc::new(Semaphore::new(max_requests.max(1))),
            disk,
            disk_writes: Arc::new(Semaphore::new(DISK_WRITE_BACKLOG as usize)),
            stats: ReadStats::default(),
        })
    }

    fn insert(&self, key: UnitKey, data: Bytes) {
        let len = data.len() as u64;
        self.cache.insert(key, data);
        let unevicted = self.unevicted.fetch_add(len, Ordering::Relaxed) + len;
        if unevicted >= self.evict_every {
            self.unevicted.store(0, Ordering::Relaxed);
            self.cache.run_pending_tasks();
        }
    }

    /// Keeps a unit fetched ahead of a reader until it is read; into the
    /// cache at once if the held units already fill their budget.
    fn hold(&self, key: UnitKey, data: Bytes) {
        let len = data.len() as u64;
        let fits = self
            .held_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                (held + len <= self.held_limit).then_some(held + len)
            })
            .is_ok();
        if !fits {
            self.insert(key, data);
            return;
        }
        if let Some(old) = self.held.lock().insert(key, data) {
            self.held_bytes
                .fetch_sub(old.len() as u64, Ordering::Relaxed);
        }
    }

    /// The unit under `key` if cached or held. A held unit that a read
    /// ending at `until` consumes to its end moves into the cache; one read
    /// only partly (the kernel reads a segment in several pieces) stays
    /// held for the rest.
    fn lookup(&self, key: &UnitKey, until: u64) -> Option<Bytes> {
        if let Some(data) = self.cache.get(key) {
            return Some(data);
        }
        let mut held = self.held.lock();
        if until < self.unit_range(key.2).end {
            return held.get(key).cloned();
        }
        let data = held.remove(key)?;
        drop(held);
        self.held_bytes
            .fetch_sub(data.len() as u64, Ordering::Relaxed);
        self.insert(key.clone(), data.clone());
        Some(data)
    }

    /// Moves the held units that `wanted` (given the unit's object key, ETag
    /// and byte range) no longer wants into the cache: their reader seeked
    /// away, went idle or closed.
    pub fn release_ahead(&self, wanted: impl Fn(&str, &str, Range<u64>) -> bool) {
        let released: Vec<(UnitKey, Bytes)> = {
            let mut held = self.held.lock();
            let gone: Vec<UnitKey> = held
                .keys()
                .filter(|k| {
                    let range = self.unit_range(k.2);
                    !wanted(&k.0, &k.1, range)
                })
                .cloned()
                .collect();
            gone.into_iter()
                .filter_map(|k| held.remove(&k).map(|d| (k, d)))
                .collect()
        };
        for (key, data) in released {
            self.held_bytes
                .fetch_sub(data.len() as u64, Ordering::Relaxed);
            self.insert(key, data);
        }
        // Read-ahead still in flight that nobody wants: stop fetching it.
        // Its units stop being pending at once (a reader that looks for one
        // fetches it anew; one already waiting is woken and looks again).
        let mut pending = self.pending.lock();
        let mut parts: HashMap<*const PartTask, (Arc<PartTask>, bool)> = HashMap::new();
        for (k, p) in pending.iter() {
            if p.part.ahead {
                let wanted_now = wanted(&k.0, &k.1, self.unit_range(k.2));
                let entry = parts
                    .entry(Arc::as_ptr(&p.part))
                    .or_insert_with(|| (p.part.clone(), false));
                entry.1 |= wanted_now;
            }
        }
        let cancel: Vec<Arc<PartTask>> = parts
            .into_values()
            .filter(|(_, wanted_now)| !wanted_now)
            .map(|(part, _)| part)
            .collect();
        if cancel.is_empty() {
            return;
        }
        pending.retain(|_, p| !cancel.iter().any(|c| Arc::ptr_eq(c, &p.part)));
        drop(pending);
        for part in cancel {
            if let Some(abort) = part.abort.get() {
                abort.abort();
            }
            self.stats.cancelled_gets.fetch_add(1, Ordering::Relaxed);
        }
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

    /// The bytes a unit covers, without clipping to an object's size.
    fn unit_range(&self, unit: Unit) -> Range<u64> {
        match unit {
            Unit::Block(b) => b * self.block..(b + 1) * self.block,
            Unit::Segment(s) => s * self.segment()..(s + 1) * self.segment(),
        }
    }

    fn segment(&self) -> u64 {
        self.block * SEGMENT_BLOCKS
    }

    fn key(obj: &ObjectVersion, unit: Unit) -> UnitKey {
        (obj.key.clone(), obj.etag.clone(), unit)
    }

    /// The bytes of `obj` that `unit` holds.
    fn bytes_of(&self, obj: &ObjectVersion, unit: Unit) -> Range<u64> {
        let (start, len) = match unit {
            Unit::Block(b) => (b * self.block, self.block),
            Unit::Segment(s) => (s * self.segment(), self.segment()),
        };
        start..(start + len).min(obj.size)
    }

    fn present(&self, key: &UnitKey, pending: &HashMap<UnitKey, Pending>) -> bool {
        pending.contains_key(key)
            || self.cache.contains_key(key)
            || self.held.lock().contains_key(key)
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

    /// `read`'s bytes, when all of `range` (which holds it) is on disk and
    /// none of it in memory. Otherwise the units of `range` that are on
    /// disk (and neither in memory nor being fetched) are moved into the
    /// memory cache, read now.
    fn read_in_place_from_disk(
        &self,
        obj: &ObjectVersion,
        range: Range<u64>,
        read: Range<u64>,
    ) -> Option<Bytes> {
        let disk = self.disk.as_ref()?;
        if !read.is_empty() {
            if let Some((stretch, data)) = self.range_from_disk(disk, obj, range.clone()) {
                if stretch.start <= read.start && read.end <= stretch.end {
                    let from = (read.start - stretch.start) as usize;
                    return Some(data.slice(from..from + (read.end - read.start) as usize));
                }
            }
        }
        self.units_from_disk(obj, range);
        None
    }

    /// `range` (from the block it starts in) read from the disk cache into
    /// one buffer, if the disk holds all of it and memory none of it.
    fn range_from_disk(
        &self,
        disk: &DiskCache,
        obj: &ObjectVersion,
        range: Range<u64>,
    ) -> Option<(Range<u64>, Bytes)> {
        let start = range.start - range.start % self.block;
        let mut out = Vec::with_capacity((range.end - start) as usize);
        let mut at = start;
        let mut hinted = false;
        while at < range.end {
            let seg = Unit::Segment(at / self.segment());
            let seg_bytes = self.bytes_of(obj, seg);
            let block = Unit::Block(at / self.block);
            {
                let pending = self.pending.lock();
                if self.present(&Self::key(obj, seg), &pending)
                    || self.present(&Self::key(obj, block), &pending)
                {
                    return None;
                }
            }
            if at == start {
                // Not in memory, so read from disk: in a range across
                // segments, the later segments' files are asked of the disk
                // now, so their reads overlap the first one's.
                let segment = self.segment();
                for later in (start / segment + 1)..range.end.div_ceil(segment) {
                    let bytes = self.bytes_of(obj, Unit::Segment(later));
                    let want = 0..range.end.min(bytes.end) - bytes.start;
                    let id = unit_id(obj, Unit::Segment(later));
                    disk.will_need_range(&id, bytes.end - bytes.start, want);
                }
            }
            let until = range.end.min(seg_bytes.end);
            let want = at - seg_bytes.start..until - seg_bytes.start;
            let seg_len = seg_bytes.end - seg_bytes.start;
            let found = disk_io(false, || {
                disk.read_appending(&unit_id(obj, seg), seg_len, want, &mut out)
            });
            if found {
                at = until;
            } else {
                let r = self.bytes_of(obj, block);
                let len = r.end - r.start;
                if !disk.read_appending(&unit_id(obj, block), len, 0..len, &mut out) {
                    return None;
                }
                at = r.end;
                // A block cached in a file of its own: the next ones likely
                // are too, and are asked of the disk together.
                if !hinted {
                    hinted = true;
                    let next = (at / self.block..range.end.div_ceil(self.block)).map(Unit::Block);
                    self.will_need(obj, &next.collect::<Vec<_>>());
                }
            }
            // The chunks a cache file gives are whole; they must be exactly
            // the bytes asked for, or the offsets below would be wrong.
            if out.len() as u64 != at - start {
                return None;
            }
        }
        Some((start..at, Bytes::from(out)))
    }

    /// Moves the units of `range` that are on disk (and neither in memory
    /// nor being fetched) into the memory cache, reading them now.
    fn units_from_disk(&self, obj: &ObjectVersion, range: Range<u64>) {
        let mut at = range.start - range.start % self.block;
        while at < range.end {
            let seg = at / self.segment();
            let seg_bytes = self.bytes_of(obj, Unit::Segment(seg));
            let b = at / self.block;
            let present = |unit| self.present(&Self::key(obj, unit), &self.pending.lock());
            if present(Unit::Segment(seg)) {
                at = seg_bytes.end;
                continue;
            }
            if present(Unit::Block(b)) {
                at += self.block;
                continue;
            }
            let whole = at == seg_bytes.start && range.end >= seg_bytes.end;
            if whole && self.on_disk(obj, Unit::Segment(seg)) {
                let len = seg_bytes.end - seg_bytes.start;
                if let Some(data) = self.read_from_disk(obj, Unit::Segment(seg), len, false) {
                    self.insert(Self::key(obj, Unit::Segment(seg)), data);
                }
                at = seg_bytes.end;
                continue;
            }
            // The blocks of this segment the range needs, in one read (no
            // look first: opening the file is the look).
            let last = range.end.min(seg_bytes.end).div_ceil(self.block);
            let units: Vec<Unit> = (b..last)
                .take_while(|&x| !present(Unit::Block(x)))
                .map(Unit::Block)
                .collect();
            let ranges: Vec<Range<u64>> = units.iter().map(|&u| self.bytes_of(obj, u)).collect();
            let mut got = self.blocks_from_disk_segment(obj, &units, &ranges, false);
            if got.is_empty() {
                // Cached each in a file of their own, if at all.
                got = self.block_run_from_disk(obj, &units, &ranges);
            }
            if got.is_empty() {
                at = ranges[0].end;
                continue;
            }
            for (unit, data) in units.iter().zip(got) {
                at = self.bytes_of(obj, *unit).end;
                self.insert(Self::key(obj, *unit), data);
            }
        }
    }

    /// Read-ahead of a reader whose read was just answered from the disk
    /// cache: only asks the disk to start reading what of `range` it holds
    /// (from the start on); the reads that follow take it from the page
    /// cache in place, and no memory is spent holding it meanwhile. Nothing
    /// goes to S3: a reader reading cached data is reading what an earlier
    /// run read, and fetches from S3 once it reads past that (see
    /// [`Fetcher::continues_on_disk`]).
    pub fn ask_disk_ahead(&self, obj: &ObjectVersion, range: Range<u64>) {
        let cached = self.cached_prefix(obj, range.start..range.end.min(obj.size));
        self.will_need(obj, &self.disk_units(obj, cached));
    }

    /// Like [`Fetcher::request`], for data a reader will want later: what
    /// arrives is held until it is read (see the module doc).
    pub fn request_ahead(self: &Arc<Self>, obj: &Arc<ObjectVersion>, range: Range<u64>) {
        self.request_units(obj, range, true);
    }

    fn request_units(self: &Arc<Self>, obj: &Arc<ObjectVersion>, range: Range<u64>, ahead: bool) {
        let range = range.start..range.end.min(obj.size);
        if ahead && self.continues_on_disk(obj, range.start) {
            return self.ask_disk_ahead(obj, range);
        }
        if range.is_empty() {
            return;
        }
        let blocks_total = obj.size.div_ceil(self.block);
        let end = range.end.div_ceil(self.block);
        // Segments only pay off when a part can hold one.
        let segments = self.part_size >= self.segment();
        let mut pending = self.pending.lock();
        let mut run: Vec<Unit> = Vec::new();
        let mut b = range.start / self.block;
        while b < end {
            let seg = b / SEGMENT_BLOCKS;
            let seg_start = seg * SEGMENT_BLOCKS;
            let seg_end = (seg_start + SEGMENT_BLOCKS).min(blocks_total);
            if self.present(&Self::key(obj, Unit::Segment(seg)), &pending) {
                self.spawn_run(obj, std::mem::take(&mut run), ahead, &mut pending);
                b = seg_end;
                continue;
            }
            let whole = segments
                && b == seg_start
                && end >= seg_end
                && (seg_start..seg_end)
                    .all(|x| !self.present(&Self::key(obj, Unit::Block(x)), &pending));
            if whole {
                run.push(Unit::Segment(seg));
                b = seg_end;
                continue;
            }
            if self.present(&Self::key(obj, Unit::Block(b)), &pending) {
                self.spawn_run(obj, std::mem::take(&mut run), ahead, &mut pending);
            } else {
                run.push(Unit::Block(b));
            }
            b += 1;
        }
        self.spawn_run(obj, run, ahead, &mut pending);
    }

    /// Fetches a run of consecutive units, in parts of up to `part_size`.
    fn spawn_run(
        self: &Arc<Self>,
        obj: &Arc<ObjectVersion>,
        run: Vec<Unit>,
        ahead: bool,
        pending: &mut HashMap<UnitKey, Pending>,
    ) {
        let mut units = run.into_iter().peekable();
        while units.peek().is_some() {
            let mut part: Vec<Unit> = Vec::new();
            let mut bytes = 0;
            while let Some(&unit) = units.peek() {
                let Range { start, end } = self.bytes_of(obj, unit);
                let len = end - start;
                if !part.is_empty() && bytes + len > self.part_size {
                    break;
                }
                part.push(unit);
                bytes += len;
                units.next();
            }
            self.spawn_part(obj, part, ahead, pending);
        }
    }

    fn spawn_part(
        self: &Arc<Self>,
        obj: &Arc<ObjectVersion>,
        units: Vec<Unit>,
        ahead: bool,
        pending: &mut HashMap<UnitKey, Pending>,
    ) {
        let (tx, rx) = watch::channel(PartProgress::default());
        let ranges: Vec<Range<u64>> = units.iter().map(|&u| self.bytes_of(obj, u)).collect();
        let pieces: Vec<u64> = ranges.iter().map(|r| r.end - r.start).collect();
        let me = self.clone();
        let task_obj = obj.clone();
        let task_units = units.clone();
        let part = Arc::new(PartTask {
            abort: std::sync::OnceLock::new(),
            ahead,
        });
        let task_part = part.clone();
        // Spawned while `pending` is locked: the task cannot unregister its
        // units (which needs that lock) before they are registered below.
        let task = tokio::spawn(async move {
            let (obj, units, part) = (task_obj, task_units, task_part);
            // Unregisters the pending units however the task ends, so a
            // failed or panicked fetch is retried by the next reader
            // instead of being waited on forever.
            let delivered = AtomicUsize::new(0);
            let clear = ClearPending {
                fetcher: &me,
                obj: &obj,
                units: &units,
                part: &part,
                delivered: &delivered,
            };
            let result = {
                // Places one arrived unit (from the disk cache or S3).
                let mut place = |data: Bytes| {
                    let next = delivered.load(Ordering::Relaxed);
                    // Into the cache before the unit stops being pending and
                    // before the waiters wake: a reader always finds it in
                    // one place or the other. Once it is no longer pending,
                    // a reader that finds it evicted fetches it again.
                    let key = Self::key(&obj, units[next]);
                    if ahead {
                        me.hold(key, data);
                    } else {
                        me.insert(key, data);
                    }
                    me.unregister(&obj, &units[next..next + 1], &part);
                    delivered.store(next + 1, Ordering::Relaxed);
                    tx.send_modify(|p| p.arrived += 1);
                };
                me.fetch_part(&obj, &units, &ranges, &pieces, ahead, &mut place)
                    .await
            };
            drop(clear);
            tx.send_modify(|p| {
                p.ended = true;
                p.error = result.err();
            });
        });
        let _ = part.abort.set(task.abort_handle());
        for (index, &unit) in units.iter().enumerate() {
            pending.insert(
                Self::key(obj, unit),
                Pending {
                    progress: rx.clone(),
                    index,
                    part: part.clone(),
                },
            );
        }
    }

    /// Fetches `units` (of byte ranges `ranges`, lengths `pieces`) in order:
    /// each from the disk cache if it holds it, runs of the others with one
    /// ranged GET each (stored on disk as they arrive).
    async fn fetch_part(
        self: &Arc<Self>,
        obj: &ObjectVersion,
        units: &[Unit],
        ranges: &[Range<u64>],
        pieces: &[u64],
        ahead: bool,
        place: &mut (dyn FnMut(Bytes) + Send),
    ) -> Result<(), StoreError> {
        let mut i = 0;
        let mut hinted = false;
        while i < units.len() {
            let from_segment = self.blocks_from_disk_segment(obj, &units[i..], &ranges[i..], ahead);
            if !from_segment.is_empty() {
                i += from_segment.len();
                from_segment.into_iter().for_each(&mut *place);
                continue;
            }
            if let Some(data) = self.read_from_disk(obj, units[i], pieces[i], ahead) {
                // Blocks cached on their own: the next ones likely are too.
                if !hinted && matches!(units[i], Unit::Block(_)) {
                    hinted = true;
                    disk_io(ahead, || self.will_need(obj, &units[i + 1..]));
                }
                place(data);
                i += 1;
                continue;
            }
            let mut end = i + 1;
            while end < units.len() && !self.on_disk(obj, units[end]) {
                end += 1;
            }
            let queued = Counted::new(&self.stats.gets_queued);
            let _permit = self.permits.acquire().await;
            drop(queued);
            let _running = Counted::new(&self.stats.gets_running);
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let mut at = i;
            let mut deliver = |data: Bytes| {
                self.stats
                    .fetched_bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                self.store_on_disk(obj, units[at], &data);
                at += 1;
                place(data);
            };
            self.store
                .get_range(
                    &obj.key,
                    &obj.etag,
                    ranges[i].start..ranges[end - 1].end,
                    &pieces[i..end],
                    &mut deliver,
                )
                .await?;
            i = end;
        }
        Ok(())
    }

    /// A unit from the disk cache: itself, or for a block, its part of a
    /// cached segment; for a segment, its cached blocks put together.
    /// Blocks on the disk.
    fn read_from_disk(
        &self,
        obj: &ObjectVersion,
        unit: Unit,
        len: u64,
        ahead: bool,
    ) -> Option<Bytes> {
        let disk = self.disk.as_ref()?;
        let found = disk_io(ahead, || {
            if let Some(data) = disk.read(&unit_id(obj, unit), len) {
                return Some(data);
            }
            let b = match unit {
                Unit::Block(b) => b,
                Unit::Segment(seg) => return self.segment_from_disk_blocks(disk, obj, seg),
            };
            let seg = Unit::Segment(b / SEGMENT_BLOCKS);
            let seg_bytes = self.bytes_of(obj, seg);
            let from = (b * self.block - seg_bytes.start) as usize;
            // An earlier block of this part may have brought the segment in.
            if let Some(data) = self.cache.get(&Self::key(obj, seg)) {
                return Some(data.slice(from..from + len as usize));
            }
            if !disk.contains(&unit_id(obj, seg)) {
                return None;
            }
            // Only the block is read (and checked) from the segment's file.
            let from = from as u64;
            disk.read_range(
                &unit_id(obj, seg),
                seg_bytes.end - seg_bytes.start,
                from..from + len,
            )
        });
        if found.is_none() {
            disk.stats.misses.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    /// The leading blocks of `units` that lie in one segment cached on disk,
    /// read from its file in one go; empty if the first unit is not a block
    /// or its segment is not on disk. Tried first: a file read sequentially
    /// once is cached as segments, and every file looked for costs a disk
    /// lookup when the directory is not in the page cache.
    fn blocks_from_disk_segment(
        &self,
        obj: &ObjectVersion,
        units: &[Unit],
        ranges: &[Range<u64>],
        ahead: bool,
    ) -> Vec<Bytes> {
        let (Some(disk), Some(&Unit::Block(first))) = (&self.disk, units.first()) else {
            return Vec::new();
        };
        let seg = first / SEGMENT_BLOCKS;
        let seg_id = unit_id(obj, Unit::Segment(seg));
        let run = units
            .iter()
            .take_while(|u| matches!(u, Unit::Block(b) if b / SEGMENT_BLOCKS == seg))
            .count();
        let seg_bytes = self.bytes_of(obj, Unit::Segment(seg));
        let (start, end) = (ranges[0].start, ranges[run - 1].end);
        let Some(data) = disk_io(ahead, || {
            disk.read_range(
                &seg_id,
                seg_bytes.end - seg_bytes.start,
                start - seg_bytes.start..end - seg_bytes.start,
            )
        }) else {
            // Not a miss yet: the blocks may be cached on their own.
            return Vec::new();
        };
        slice_run(&data, start, &ranges[..run])
    }

    /// A segment put together from its blocks on disk (cached by random
    /// reads), if every one of them is there.
    fn segment_from_disk_blocks(
        &self,
        disk: &DiskCache,
        obj: &ObjectVersion,
        seg: u64,
    ) -> Option<Bytes> {
        let bytes = self.bytes_of(obj, Unit::Segment(seg));
        let blocks = (bytes.start / self.block)..bytes.end.div_ceil(self.block);
        if !blocks
            .clone()
            .all(|b| disk.contains(&unit_id(obj, Unit::Block(b))))
        {
            return None;
        }
        let mut whole = bytes::BytesMut::with_capacity((bytes.end - bytes.start) as usize);
        for b in blocks {
            let r = self.bytes_of(obj, Unit::Block(b));
            whole.extend_from_slice(&disk.read(&unit_id(obj, Unit::Block(b)), r.end - r.start)?);
        }
        Some(whole.freeze())
    }

    /// Whether a reader whose read-ahead starts at `at` is reading data
    /// from the disk cache (the byte before is cached). Its read-ahead goes
    /// only as far as the disk cache has the data. A query run again reads
    /// what its first run read, and that is on disk; what its first run
    /// fetched ahead and never read (or stopped fetching) need not come from
    /// S3 this time either. A reader that goes on past the cached data
    /// fetches on demand for one window, and the read-ahead after that goes
    /// to S3 as usual (the bytes before it are not cached then).
    fn continues_on_disk(&self, obj: &ObjectVersion, at: u64) -> bool {
        self.disk.is_some() && at > 0 && self.cached_at(obj, at - 1)
    }

    fn cached_at(&self, obj: &ObjectVersion, at: u64) -> bool {
        self.on_disk(obj, Unit::Segment(at / self.segment()))
            || self.on_disk(obj, Unit::Block(at / self.block))
    }

    /// The part of `range` from its start on that the disk cache holds.
    fn cached_prefix(&self, obj: &ObjectVersion, range: Range<u64>) -> Range<u64> {
        let mut end = range.start;
        while end < range.end && self.cached_at(obj, end) {
            end = match self.on_disk(obj, Unit::Segment(end / self.segment())) {
                true => (end / self.segment() + 1) * self.segment(),
                false => (end / self.block + 1) * self.block,
            };
        }
        range.start..end.min(range.end)
    }

    /// The units holding `range` on disk: whole segments where their file
    /// is there, blocks elsewhere.
    fn disk_units(&self, obj: &ObjectVersion, range: Range<u64>) -> Vec<Unit> {
        let mut units = Vec::new();
        let mut at = range.start - range.start % self.block;
        while at < range.end {
            let seg = Unit::Segment(at / self.segment());
            if self.on_disk(obj, seg) {
                units.push(seg);
                at = self.bytes_of(obj, seg).end;
            } else {
                units.push(Unit::Block(at / self.block));
                at += self.block;
            }
        }
        units
    }

    /// The leading run of `units` (blocks, of byte ranges `ranges`) cached
    /// on disk each in a file of its own, read into one buffer (their files
    /// asked of the disk all at once) and sliced into blocks.
    fn block_run_from_disk(
        &self,
        obj: &ObjectVersion,
        units: &[Unit],
        ranges: &[Range<u64>],
    ) -> Vec<Bytes> {
        let (Some(disk), Some(first), Some(last)) = (&self.disk, ranges.first(), ranges.last())
        else {
            return Vec::new();
        };
        let total = last.end - first.start;
        let mut out = Vec::with_capacity(total as usize);
        let mut run = 0;
        for (&unit, r) in units.iter().zip(ranges) {
            let len = r.end - r.start;
            if !disk.read_appending(&unit_id(obj, unit), len, 0..len, &mut out) {
                break;
            }
            if run == 0 {
                self.will_need(obj, &units[1..]);
            }
            run += 1;
        }
        slice_run(&Bytes::from(out), first.start, &ranges[..run])
    }

    /// See [`DiskCache::will_need`].
    fn will_need(&self, obj: &ObjectVersion, units: &[Unit]) {
        if let Some(disk) = &self.disk {
            disk.will_need(units.iter().map(|&u| unit_id(obj, u)));
        }
    }

    /// Whether the disk cache has a file for `unit` (or a block's segment).
    fn on_disk(&self, obj: &ObjectVersion, unit: Unit) -> bool {
        let Some(disk) = &self.disk else { return false };
        disk.contains(&unit_id(obj, unit))
            || match unit {
                Unit::Block(b) => disk.contains(&unit_id(obj, Unit::Segment(b / SEGMENT_BLOCKS))),
                // Whether it can be put together from blocks is found out
                // when it is read; planning assumes not.
                Unit::Segment(_) => false,
            }
    }

    /// Writes a unit fetched from S3 to the disk cache in the background;
    /// skipped while too many writes are waiting (a slow disk must not
    /// hold memory outside the budget).
    fn store_on_disk(&self, obj: &ObjectVersion, unit: Unit, data: &Bytes) {
        let Some(disk) = &self.disk else { return };
        let blocks = data.len().div_ceil(self.block as usize).max(1) as u32;
        let Ok(permit) = self.disk_writes.clone().try_acquire_many_owned(blocks) else {
            return;
        };
        let (disk, data) = (disk.clone(), data.clone());
        let (key, etag, unit) = (obj.key.clone(), obj.etag.clone(), unit_name(unit));
        tokio::task::spawn_blocking(move || {
            let id = UnitId {
                key: &key,
                etag: &etag,
                unit,
            };
            disk.write(&id, &data);
            drop(permit);
        });
    }

    /// Unregisters `units` as pending in `part` (not in a later part that
    /// fetches them again).
    fn unregister(&self, obj: &ObjectVersion, units: &[Unit], part: &Arc<PartTask>) {
        // Also runs while a panic unwinds: a poisoned lock must not abort.
        let mut pending = self.pending.lock();
        for &unit in units {
            let key = Self::key(obj, unit);
            if pending
                .get(&key)
                .is_some_and(|p| Arc::ptr_eq(&p.part, part))
            {
                pending.remove(&key);
            }
        }
    }

    /// The cached or pending unit holding byte `at` of `obj`, if any:
    /// its segment if that is there, else its block.
    fn find(&self, obj: &ObjectVersion, at: u64, until: u64) -> Found {
        let seg = Unit::Segment(at / self.segment());
        let block = Unit::Block(at / self.block);
        for unit in [seg, block] {
            if let Some(data) = self.lookup(&Self::key(obj, unit), until) {
                return Found::Cached(unit, data);
            }
        }
        {
            let pending = self.pending.lock();
            for unit in [seg, block] {
                if let Some(p) = pending.get(&Self::key(obj, unit)) {
                    return Found::Pending(unit, p.clone());
                }
            }
        }
        // A unit may have arrived between the two looks (it enters the
        // cache or the held units before it stops being pending).
        for unit in [seg, block] {
            if let Some(data) = self.lookup(&Self::key(obj, unit), until) {
                return Found::Cached(unit, data);
            }
        }
        Found::Missing
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

/// The blocks of `ranges` (in the object) as slices of `data`, which holds
/// the object's bytes from `start` on.
fn slice_run(data: &Bytes, start: u64, ranges: &[Range<u64>]) -> Vec<Bytes> {
    ranges
        .iter()
        .map(|r| data.slice((r.start - start) as usize..(r.end - start) as usize))
        .collect()
}

enum Found {
    Cached(Unit, Bytes),
    Pending(Unit, Pending),
    Missing,
}

struct ClearPending<'a, S: ObjectStore> {
    fetcher: &'a Fetcher<S>,
    obj: &'a ObjectVersion,
    units: &'a [Unit],
    part: &'a Arc<PartTask>,
    /// Units delivered (and unregistered) already.
    delivered: &'a AtomicUsize,
}

impl<S: ObjectStore> Drop for ClearPending<'_, S> {
    fn drop(&mut self) {
        let delivered = self.delivered.load(Ordering::Relaxed);
        self.fetcher
            .unregister(self.obj, &self.units[delivered..], self.part);
    }
}

/// Runs `f`, which reads the disk cache. Read-ahead (which may read many
/// units in a row) steps aside from the async worker first; a read a caller
/// is waiting for runs in place: handing the worker's other tasks to another
/// thread costs more than a read from a local disk does (random 256 KiB
/// reads from the cache went from about 1,300 to 1,550 a second).
fn disk_io<R>(ahead: bool, f: impl FnOnce() -> R) -> R {
    match ahead {
        true => blocking(f),
        false => f(),
    }
}
