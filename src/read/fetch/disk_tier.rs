//! The fetcher's disk tier: how it uses the [`DiskCache`] (`--data-cache`)
//! between memory and S3. A part's units are read from disk before S3 is
//! asked for the rest, and what S3 sends is written back in the background.
//! A read whose bytes are all on disk (and none in memory) is read in place
//! into one buffer that is not kept in memory, and the read-ahead of such a
//! reader only asks the disk to read ahead. The cache files themselves are
//! [`crate::read::disk_cache`]'s.

use std::ops::Range;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::block_cache::Unit;
use super::{Fetcher, ObjectVersion, SEGMENT_BLOCKS};
use crate::blocking::blocking;
use crate::read::disk_cache::{DiskCache, UnitId};
use crate::store::ObjectStore;

impl<S: ObjectStore> Fetcher<S> {
    /// `read`'s bytes, when all of `range` (which holds it) is on disk and
    /// none of it in memory. Otherwise the units of `range` that are on
    /// disk (and neither in memory nor being fetched) are moved into the
    /// memory cache, read now.
    pub(super) fn read_in_place_from_disk(
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
                    disk.will_need_range(&self.disk_id(obj, Unit::Segment(later)), want);
                }
            }
            let until = range.end.min(seg_bytes.end);
            let want = at - seg_bytes.start..until - seg_bytes.start;
            let found = disk_io(false, || {
                disk.read_appending(&self.disk_id(obj, seg), want, &mut out)
            });
            if found {
                at = until;
            } else {
                let r = self.bytes_of(obj, block);
                let len = r.end - r.start;
                if !disk.read_appending(&self.disk_id(obj, block), 0..len, &mut out) {
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

    /// A unit from the disk cache: itself, or for a block, its part of a
    /// cached segment; for a segment, its cached blocks put together.
    /// Blocks on the disk.
    pub(super) fn read_from_disk(
        &self,
        obj: &ObjectVersion,
        unit: Unit,
        len: u64,
        ahead: bool,
    ) -> Option<Bytes> {
        let disk = self.disk.as_ref()?;
        let found = disk_io(ahead, || {
            if let Some(data) = disk.read(&self.disk_id(obj, unit)) {
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
            // Only the block is read (and checked).
            let from = from as u64;
            disk.read_range(&self.disk_id(obj, seg), from..from + len)
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
    pub(super) fn blocks_from_disk_segment(
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
        let seg_id = self.disk_id(obj, Unit::Segment(seg));
        let run = units
            .iter()
            .take_while(|u| matches!(u, Unit::Block(b) if b / SEGMENT_BLOCKS == seg))
            .count();
        let seg_start = seg_id.offset;
        let (start, end) = (ranges[0].start, ranges[run - 1].end);
        let Some(data) = disk_io(ahead, || {
            disk.read_range(&seg_id, start - seg_start..end - seg_start)
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
            .all(|b| disk.contains(&self.disk_id(obj, Unit::Block(b))))
        {
            return None;
        }
        let mut whole = bytes::BytesMut::with_capacity((bytes.end - bytes.start) as usize);
        for b in blocks {
            whole.extend_from_slice(&disk.read(&self.disk_id(obj, Unit::Block(b)))?);
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
    pub(super) fn continues_on_disk(&self, obj: &ObjectVersion, at: u64) -> bool {
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
            if !disk.read_appending(&self.disk_id(obj, unit), 0..len, &mut out) {
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
    pub(super) fn will_need(&self, obj: &ObjectVersion, units: &[Unit]) {
        if let Some(disk) = &self.disk {
            disk.will_need(units.iter().map(|&u| self.disk_id(obj, u)));
        }
    }

    /// Whether the disk cache holds all of `unit`.
    pub(super) fn on_disk(&self, obj: &ObjectVersion, unit: Unit) -> bool {
        let Some(disk) = &self.disk else { return false };
        disk.contains(&self.disk_id(obj, unit))
    }

    /// Writes a unit fetched from S3 to the disk cache in the background;
    /// skipped while too many writes are waiting (a slow disk must not
    /// hold memory outside the budget).
    pub(super) fn store_on_disk(&self, obj: &ObjectVersion, unit: Unit, data: &Bytes) {
        let Some(disk) = &self.disk else { return };
        let blocks = data.len().div_ceil(self.block as usize).max(1) as u32;
        let Ok(permit) = self.disk_writes.clone().try_acquire_many_owned(blocks) else {
            return;
        };
        let (disk, data) = (disk.clone(), data.clone());
        let (key, etag) = (obj.key.clone(), obj.etag.clone());
        let offset = self.bytes_of(obj, unit).start;
        tokio::task::spawn_blocking(move || {
            let id = UnitId {
                key: &key,
                etag: &etag,
                offset,
                len: data.len() as u64,
            };
            disk.write(&id, &data);
            drop(permit);
        });
    }

    /// Where `unit` of `obj` is in the disk cache.
    fn disk_id<'a>(&self, obj: &'a ObjectVersion, unit: Unit) -> UnitId<'a> {
        let bytes = self.bytes_of(obj, unit);
        UnitId {
            key: &obj.key,
            etag: &obj.etag,
            offset: bytes.start,
            len: bytes.end - bytes.start,
        }
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

/// Runs `f`, which reads the disk cache. Read-ahead (which may read many
/// units in a row) steps aside from the async worker first; a read a caller
/// is waiting for runs in place: handing the worker's other tasks to another
/// thread costs more than a read from a local disk does (random 256 KiB
/// reads from the cache went from about 1,300 to 1,550 a second).
pub(super) fn disk_io<R>(ahead: bool, f: impl FnOnce() -> R) -> R {
    match ahead {
        true => blocking(f),
        false => f(),
    }
}
