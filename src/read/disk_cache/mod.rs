//! `DiskCache`: object data kept on local disk across remounts
//! (`--data-cache DIR`).
//!
//! One object version (bucket, key, ETag) is two files named by a hash of
//! that identity. `HASH.data` holds the object's bytes at their own offsets,
//! sparse where nothing was fetched, so a wholly cached object can be handed
//! to the kernel as it is (FUSE passthrough: [`DiskCache::complete_file`]).
//! `HASH.map` says what of it is there: a header holding the identity in
//! full, then one 8-byte entry per 64 KiB chunk (present, length, CRC32).
//! What the daemon reads is checked against its entries every time; a file
//! handed to the kernel was checked whole once by this process first. A
//! chunk found damaged (checksum, length, data cut short) loses its entry
//! and is fetched again; a map of another identity (a hash collision) is a
//! miss. Since the ETag is part of the identity, a replaced object never
//! hits the old version's bytes; they age out.
//!
//! Data is written before its entries, and bytes are never changed in
//! place (a chunk written again holds the same bytes), so no reader, the
//! kernel's passthrough reads included, sees bytes change under it; and a
//! crash that loses data but keeps an entry is caught by the checksum.
//! Eviction unlinks files, so open handles keep reading what they opened.
//! A map's mtime is its object's last use (set on a hit at most once a
//! minute), so every mount sharing the directory evicts in the same order:
//! when the bytes written since the last sweep could have filled the cache,
//! a background sweep lists the directory and deletes the least recently
//! used objects until the cache is at 90% of its size and the disk keeps its
//! minimum free space. Since whole objects are evicted, an object keeps at
//! most half the cache's size of its bytes there (its first ones). The first sweep also deletes the files of the older
//! layout (one file per cached unit). Deleting the whole directory is
//! always safe.

use std::collections::HashSet;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use parking_lot::Mutex;
use tracing::{debug, info, warn};

mod eviction;

use eviction::{free_space, Sweep};

use crate::positioned_read::read_full_at;
use crate::private_dir::create_private_dir;
use crate::stable_hash::stable_hash;

const MAGIC: &[u8; 8] = b"S3MDC03\n";
/// Data is checksummed in chunks of this size (the read path's block), so
/// any block-aligned part of an object is read and checked on its own.
pub const CHUNK: u64 = 64 * 1024;
/// An entry's flag for "this chunk is here"; an absent chunk's entry is 0.
const PRESENT: u64 = 1 << 63;
/// Files checked whole that this process remembers; past it, it forgets
/// them all and checks again (bounded memory, whatever the cache holds).
const VERIFIED_LIMIT: usize = 100_000;
/// How much of a data file a whole-file check reads at once.
const CHECK_PIECE: usize = 16 * CHUNK as usize;
/// Objects up to this size are checked whole at the open that first hands
/// them to the kernel (a few tens of milliseconds); bigger ones in the
/// background, their first open going through the daemon meanwhile.
const INLINE_CHECK: u64 = 64 << 20;
/// Background whole-file checks running at once, at most.
const CHECKS_AT_ONCE: usize = 2;

/// Counters for metrics and the summary line.
#[derive(Debug, Default)]
pub struct DiskCacheStats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub bytes_served: AtomicU64,
    pub bytes_written: AtomicU64,
    pub evictions: AtomicU64,
    /// Bytes in the directory at the last sweep, plus what was written since.
    pub size: AtomicU64,
    /// Whole objects checked against their checksums (before passthrough).
    pub files_checked: AtomicU64,
    /// Objects cached in part whose rest was fetched after their last
    /// close, so that their next open is passed through.
    pub completions: AtomicU64,
    /// Bytes those completions fetched.
    pub completion_bytes: AtomicU64,
}

#[derive(Debug)]
pub struct DiskCache {
    dir: PathBuf,
    bucket: String,
    limit: u64,
    /// Free space to leave on the disk, whatever the limit.
    min_free: u64,
    written_since_sweep: AtomicU64,
    sweeping: Arc<AtomicBool>,
    /// Data files (device, inode) this process has checked whole.
    verified: Mutex<HashSet<(u64, u64)>>,
    /// Data files being checked whole in the background.
    checking: Mutex<HashSet<(u64, u64)>>,
    /// See [`INLINE_CHECK`].
    inline_check: u64,
    pub stats: Arc<DiskCacheStats>,
}

/// A block-aligned stretch of one object version: what the read path
/// caches and looks for.
pub struct UnitId<'a> {
    pub key: &'a str,
    pub etag: &'a str,
    /// Where the stretch starts in the object (a multiple of [`CHUNK`]).
    pub offset: u64,
    /// Its length; it ends on a chunk boundary or at the object's end.
    pub len: u64,
}

/// The two files of one object version.
struct ObjectFiles {
    identity: String,
    data: PathBuf,
    map: PathBuf,
}

impl ObjectFiles {
    /// Bytes before the first entry of the map: magic, the identity's
    /// length and the identity, padded to a whole entry.
    fn header(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(MAGIC.len() + 4 + self.identity.len() + 8);
        h.extend_from_slice(MAGIC);
        h.extend_from_slice(&(self.identity.len() as u32).to_le_bytes());
        h.extend_from_slice(self.identity.as_bytes());
        h.resize(h.len().next_multiple_of(8), 0);
        h
    }

    /// Where chunk `chunk`'s entry is in the map: past the header.
    fn entry_at(&self, chunk: u64) -> u64 {
        let header = (MAGIC.len() + 4 + self.identity.len()).next_multiple_of(8);
        header as u64 + 8 * chunk
    }
}

fn encode_entry(len: usize, crc: u32) -> u64 {
    PRESENT | (len as u64) << 32 | crc as u64
}

/// An entry's chunk length and checksum, if the chunk is there.
fn decode_entry(raw: u64) -> Option<(u64, u32)> {
    (raw & PRESENT != 0).then_some(((raw >> 32) & 0x7fff_ffff, raw as u32))
}

/// The entries of `chunks` in an open map, or `None` when the map is not
/// this identity's (another object's whose name hashes the same, or one
/// whose header is still being written). Entries past its end are absent.
fn read_entries(map: &File, files: &ObjectFiles, chunks: Range<u64>) -> Option<Vec<u64>> {
    let header = files.header();
    let first = files.entry_at(chunks.start);
    let count = (chunks.end - chunks.start) as usize;
    let mut raw = vec![0u8; 8 * count];
    // Header and entries in one read when they lie close together.
    if first + raw.len() as u64 <= 64 * 1024 {
        let mut buf = vec![0u8; (first as usize) + raw.len()];
        let got = read_full_at(map, &mut buf, 0).ok()?;
        if got < header.len() || buf[..header.len()] != header[..] {
            return None;
        }
        raw.copy_from_slice(&buf[first as usize..]);
    } else {
        let mut head = vec![0u8; header.len()];
        let got = read_full_at(map, &mut head, 0).ok()?;
        if got < header.len() || head != header {
            return None;
        }
        read_full_at(map, &mut raw, first).ok()?;
    }
    Some(
        raw.chunks_exact(8)
            .map(|e| u64::from_le_bytes(e.try_into().expect("8 bytes")))
            .collect(),
    )
}

impl DiskCache {
    /// Opens (creating it, mode 0700) the cache directory. `limit` zero
    /// means a tenth of the free space of its filesystem.
    pub fn open(dir: &Path, bucket: &str, limit: u64) -> std::io::Result<Arc<DiskCache>> {
        create_private_dir(dir)?;
        let (free, total) = free_space(dir)?;
        let limit = if limit == 0 { free / 10 } else { limit };
        // Never fill the disk: keep 5% of it (at most 4 GiB) free.
        let min_free = (total / 20).min(4 << 30);
        let cache = Arc::new(DiskCache {
            dir: dir.to_owned(),
            bucket: bucket.to_owned(),
            limit,
            min_free,
            written_since_sweep: AtomicU64::new(0),
            sweeping: Arc::new(AtomicBool::new(false)),
            verified: Mutex::new(HashSet::new()),
            checking: Mutex::new(HashSet::new()),
            inline_check: INLINE_CHECK,
            stats: Arc::new(DiskCacheStats::default()),
        });
        info!(dir = %dir.display(), limit, "data cache on disk");
        // Learn the size of what earlier mounts left (and trim it), without
        // making the mount wait for a walk of a big directory.
        cache.sweep_in_background();
        Ok(cache)
    }

    fn files_of(&self, key: &str, etag: &str) -> ObjectFiles {
        let identity = format!("{}\n{key}\n{etag}", self.bucket);
        let hash = stable_hash(identity.as_bytes());
        let sub = self.dir.join(format!("{:02x}", hash >> 56));
        ObjectFiles {
            identity,
            data: sub.join(format!("{hash:016x}.data")),
            map: sub.join(format!("{hash:016x}.map")),
        }
    }

    /// The unit's bytes if cached whole and intact. Blocks on the disk:
    /// call it off the async workers.
    pub fn read(&self, id: &UnitId) -> Option<Bytes> {
        self.read_range(id, 0..id.len)
    }

    /// Bytes `range` of the unit, if cached and intact. Blocks on the disk.
    pub fn read_range(&self, id: &UnitId, range: Range<u64>) -> Option<Bytes> {
        let mut out = Vec::new();
        let found = self.read_into(id, range, &mut out)?;
        Some(Bytes::from(out).slice(found))
    }

    /// Bytes `range` of the unit appended to `out`, if cached and intact,
    /// together with the rest of the checksummed chunks they lie in (none
    /// when `range` is on chunk boundaries, as blocks are); several units
    /// read so lie in one buffer. Blocks on the disk.
    pub fn read_appending(&self, id: &UnitId, range: Range<u64>, out: &mut Vec<u8>) -> bool {
        self.read_into(id, range, out).is_some()
    }

    fn read_into(&self, id: &UnitId, range: Range<u64>, out: &mut Vec<u8>) -> Option<Range<usize>> {
        let files = self.files_of(id.key, id.etag);
        let base = out.len();
        let found = match self.read_checked(&files, id, range, out) {
            Ok(found) => found,
            Err((why, bad)) => {
                warn!(path = %files.data.display(), why, chunks = bad.len(), "dropping a damaged data cache file's chunks");
                self.forget_chunks(&files, &bad);
                None
            }
        };
        if found.is_none() {
            out.truncate(base);
        }
        // Misses are counted by the caller, which may look for a unit in
        // more than one way.
        if let Some(data) = &found {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            self.stats
                .bytes_served
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        found
    }

    /// Reads and checks `range` of a unit, appending the whole chunks that
    /// cover it to `out`: where `range`'s bytes are in `out`, `Ok(None)`
    /// when not all there, `Err` with the chunks found damaged.
    #[allow(clippy::type_complexity)]
    fn read_checked(
        &self,
        files: &ObjectFiles,
        id: &UnitId,
        range: Range<u64>,
        out: &mut Vec<u8>,
    ) -> Result<Option<Range<usize>>, (&'static str, Vec<u64>)> {
        let Ok(map) = File::open(&files.map) else {
            return Ok(None);
        };
        let unit_end = id.offset + id.len;
        let (start, end) = (id.offset + range.start, id.offset + range.end);
        let chunks = start / CHUNK..end.div_ceil(CHUNK);
        let Some(entries) = read_entries(&map, files, chunks.clone()) else {
            return Ok(None);
        };
        let mut wanted = Vec::with_capacity(entries.len());
        for (c, raw) in chunks.clone().zip(&entries) {
            let Some((len, crc)) = decode_entry(*raw) else {
                return Ok(None);
            };
            if len != CHUNK.min(unit_end - c * CHUNK) {
                return Err(("wrong length", vec![c]));
            }
            wanted.push(crc);
        }
        let Ok(data_file) = File::open(&files.data) else {
            return Err(("data file missing", chunks.collect()));
        };
        let from = chunks.start * CHUNK;
        let to = (chunks.end * CHUNK).min(unit_end);
        let base = out.len();
        out.resize(base + (to - from) as usize, 0);
        let got = read_full_at(&data_file, &mut out[base..], from).unwrap_or(0);
        if got < (to - from) as usize {
            let first_short = chunks.start + got as u64 / CHUNK;
            return Err(("truncated", (first_short..chunks.end).collect()));
        }
        let bad: Vec<u64> = out[base..]
            .chunks(CHUNK as usize)
            .zip(chunks.clone().zip(wanted))
            .filter(|(bytes, (_, crc))| crc32fast::hash(bytes) != *crc)
            .map(|(_, (c, _))| c)
            .collect();
        if !bad.is_empty() {
            return Err(("checksum mismatch", bad));
        }
        mark_used(&map);
        Ok(Some(
            base + (start - from) as usize..base + (end - from) as usize,
        ))
    }

    /// Clears the entries of damaged chunks: they are fetched again.
    fn forget_chunks(&self, files: &ObjectFiles, chunks: &[u64]) {
        let Ok(map) = File::options().write(true).open(&files.map) else {
            return;
        };
        for &c in chunks {
            let _ = map.write_all_at(&0u64.to_le_bytes(), files.entry_at(c));
        }
    }

    /// Starts reading these units into the page cache without waiting, so
    /// reading several one after the other waits for about one disk round
    /// trip instead of one each. Units not cached cost a failed open.
    pub fn will_need<'a>(&self, ids: impl IntoIterator<Item = UnitId<'a>>) {
        for id in ids {
            self.will_need_range(&id, 0..id.len);
        }
    }

    /// Starts reading `range` of the unit into the page cache without
    /// waiting, for a read of it that comes after a read of another part.
    pub fn will_need_range(&self, id: &UnitId, range: Range<u64>) {
        use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
        let files = self.files_of(id.key, id.etag);
        if let Ok(file) = File::open(&files.data) {
            let start = (id.offset + range.start) as i64;
            let len = (range.end - range.start) as i64;
            let _ = posix_fadvise(&file, start, len, PosixFadviseAdvice::POSIX_FADV_WILLNEED);
        }
    }

    /// Whether the map says every chunk of the unit is there (not checked:
    /// a cheap test to plan requests with).
    pub fn contains(&self, id: &UnitId) -> bool {
        let files = self.files_of(id.key, id.etag);
        let Ok(map) = File::open(&files.map) else {
            return false;
        };
        let chunks = id.offset / CHUNK..(id.offset + id.len).div_ceil(CHUNK);
        read_entries(&map, &files, chunks)
            .is_some_and(|entries| entries.iter().all(|e| decode_entry(*e).is_some()))
    }

    /// The bytes of an object version the cache does not hold, in
    /// chunk-aligned ranges, when it holds some of them (`None` when it
    /// holds none, or keeps no more of the object than its first half-cache
    /// of bytes: see [`DiskCache::write`]). Blocks on the disk.
    pub fn missing_ranges(&self, key: &str, etag: &str, size: u64) -> Option<Vec<Range<u64>>> {
        if size == 0 || size > self.limit / 2 {
            return None;
        }
        let files = self.files_of(key, etag);
        let map = File::open(&files.map).ok()?;
        let entries = read_entries(&map, &files, 0..size.div_ceil(CHUNK))?;
        let mut missing: Vec<Range<u64>> = Vec::new();
        for (c, raw) in entries.iter().enumerate() {
            if decode_entry(*raw).is_some() {
                continue;
            }
            let at = c as u64 * CHUNK;
            let end = (at + CHUNK).min(size);
            match missing.last_mut() {
                Some(last) if last.end == at => last.end = end,
                _ => missing.push(at..end),
            }
        }
        Some(missing)
    }

    /// Stores a unit; best effort. Blocks on the disk. Only the first
    /// half-cache's worth of an object is kept: the cache evicts whole
    /// objects, and one object must not be able to fill it.
    pub fn write(&self, id: &UnitId, data: &[u8]) {
        if id.offset + data.len() as u64 > self.limit / 2 {
            return;
        }
        let files = self.files_of(id.key, id.etag);
        if let Err(e) = write_unit(&files, id.offset, data) {
            debug!(path = %files.data.display(), error = %e, "cannot write to the data cache");
            return;
        }
        let len = data.len() as u64;
        self.stats.bytes_written.fetch_add(len, Ordering::Relaxed);
        self.stats.size.fetch_add(len, Ordering::Relaxed);
        let since = self.written_since_sweep.fetch_add(len, Ordering::Relaxed) + len;
        // Sweep when the cache may be over its size (other mounts sharing
        // the directory write too), or every tenth of it.
        if self.stats.size.load(Ordering::Relaxed) > self.limit || since > self.limit / 10 {
            self.written_since_sweep.store(0, Ordering::Relaxed);
            self.sweep_in_background();
        }
    }

    /// The data file of an object version the cache holds whole, opened
    /// for reading, for the kernel to read itself (passthrough). Checked
    /// whole against its checksums before this process first hands it out
    /// (a damaged chunk loses its entry, and is fetched again): here when
    /// it is small, else in the background, `None` until that is done.
    /// Blocks on the disk, for as long as reading a small file takes.
    pub fn complete_file(self: &Arc<Self>, key: &str, etag: &str, size: u64) -> Option<File> {
        if size == 0 {
            return None;
        }
        let files = self.files_of(key, etag);
        let map = File::open(&files.map).ok()?;
        let chunks = size.div_ceil(CHUNK);
        let entries = read_entries(&map, &files, 0..chunks)?;
        let mut crcs = Vec::with_capacity(entries.len());
        for (c, raw) in (0..chunks).zip(&entries) {
            let (len, crc) = decode_entry(*raw)?;
            if len != CHUNK.min(size - c * CHUNK) {
                return None;
            }
            crcs.push(crc);
        }
        let data = File::open(&files.data).ok()?;
        let meta = data.metadata().ok()?;
        // Longer would pass bytes past the object's end to the kernel.
        if meta.len() != size {
            return None;
        }
        let id = (meta.dev(), meta.ino());
        if !self.verified.lock().contains(&id) {
            if size > self.inline_check {
                self.check_in_background(files, data, crcs, id);
                return None;
            }
            if !self.check(&files, &data, &crcs, id) {
                return None;
            }
        }
        mark_used(&map);
        Some(data)
    }

    /// Checks a whole data file; remembers it if right, drops its damaged
    /// chunks if not.
    fn check(&self, files: &ObjectFiles, data: &File, crcs: &[u32], id: (u64, u64)) -> bool {
        let bad = check_whole(data, crcs);
        self.stats.files_checked.fetch_add(1, Ordering::Relaxed);
        if !bad.is_empty() {
            warn!(path = %files.data.display(), chunks = bad.len(), "dropping a damaged data cache file's chunks (found checking it whole)");
            self.forget_chunks(files, &bad);
            return false;
        }
        let mut verified = self.verified.lock();
        if verified.len() >= VERIFIED_LIMIT {
            verified.clear();
        }
        verified.insert(id);
        true
    }

    fn check_in_background(
        self: &Arc<Self>,
        files: ObjectFiles,
        data: File,
        crcs: Vec<u32>,
        id: (u64, u64),
    ) {
        {
            let mut checking = self.checking.lock();
            if checking.len() >= CHECKS_AT_ONCE || !checking.insert(id) {
                return;
            }
        }
        let me = self.clone();
        std::thread::spawn(move || {
            me.check(&files, &data, &crcs, id);
            me.checking.lock().remove(&id);
        });
    }

    /// Waits for the background checks (tests).
    #[cfg(test)]
    fn wait_for_checks(&self) {
        while !self.checking.lock().is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn sweep_in_background(self: &DiskCache) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let job = self.sweep_job();
        std::thread::spawn(move || job.run());
    }

    fn sweep_job(&self) -> Sweep {
        Sweep {
            dir: self.dir.clone(),
            limit: self.limit,
            min_free: self.min_free,
            stats: self.stats.clone(),
            sweeping: self.sweeping.clone(),
        }
    }

    /// A sweep now, on this thread.
    #[cfg(test)]
    fn sweep(&self) {
        self.sweeping.store(true, Ordering::Release);
        self.sweep_job().run();
    }
}

/// Marks an object used (its map's mtime), at most once a minute.
fn mark_used(map: &File) {
    if let Ok(used) = map.metadata().and_then(|m| m.modified()) {
        if used.elapsed().unwrap_or_default() > Duration::from_secs(60) {
            let _ = map.set_modified(SystemTime::now());
        }
    }
}

/// The chunks of a whole data file whose bytes do not match `crcs`.
fn check_whole(data: &File, crcs: &[u32]) -> Vec<u64> {
    let mut bad = Vec::new();
    let mut buf = vec![0u8; CHECK_PIECE];
    let per_piece = CHECK_PIECE / CHUNK as usize;
    for (p, piece_crcs) in crcs.chunks(per_piece).enumerate() {
        let at = (p * CHECK_PIECE) as u64;
        let got = read_full_at(data, &mut buf, at).unwrap_or(0);
        for (i, crc) in piece_crcs.iter().enumerate() {
            let from = i * CHUNK as usize;
            let c = (p * per_piece + i) as u64;
            let to = (from + CHUNK as usize).min(got);
            if from >= got || crc32fast::hash(&buf[from..to]) != *crc {
                bad.push(c);
            }
        }
    }
    bad
}

/// Writes one unit's bytes at `offset` of the object's data file, then
/// their entries in its map (creating both, mode 0600).
fn write_unit(files: &ObjectFiles, offset: u64, data: &[u8]) -> std::io::Result<()> {
    let dir = files
        .map
        .parent()
        .expect("cache files live in subdirectories");
    std::fs::create_dir_all(dir)?;
    let open = |path: &Path| {
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
    };
    let map = open(&files.map)?;
    let header = files.header();
    let mut found = vec![0u8; header.len()];
    let got = read_full_at(&map, &mut found, 0)?;
    // A header being written by another writer is a prefix of this one;
    // anything else is another object whose name hashes the same.
    if found[..got] != header[..got] {
        return Err(std::io::Error::other("the map belongs to another object"));
    }
    if got < header.len() {
        map.write_all_at(&header, 0)?;
    }
    open(&files.data)?.write_all_at(data, offset)?;
    let entries: Vec<u8> = data
        .chunks(CHUNK as usize)
        .flat_map(|c| encode_entry(c.len(), crc32fast::hash(c)).to_le_bytes())
        .collect();
    map.write_all_at(&entries, files.entry_at(offset / CHUNK))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(key: &str, offset: u64, len: u64) -> UnitId<'_> {
        UnitId {
            key,
            etag: "\"e1\"",
            offset,
            len,
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("s3mount-dc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn data(len: usize, seed: u32) -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(7) ^ seed) as u8)
            .collect()
    }

    #[test]
    fn a_unit_reads_back_and_damage_is_a_miss_until_written_again() {
        let dir = temp_dir("rw");
        let cache = DiskCache::open(&dir, "b", 1 << 30).unwrap();
        // The object's last unit: shorter than a chunk multiple.
        let bytes = data(70_000, 1);
        let unit = id("dir/a.parquet", 2 * CHUNK, bytes.len() as u64);
        assert!(cache.read(&unit).is_none());
        cache.write(&unit, &bytes);
        assert_eq!(cache.read(&unit).unwrap(), bytes);
        assert!(cache.contains(&unit));
        // The chunks before it were never written.
        assert!(!cache.contains(&id("dir/a.parquet", 0, CHUNK)));
        // Another ETag of the same key is another object.
        let other = UnitId {
            etag: "\"e2\"",
            ..id("dir/a.parquet", 2 * CHUNK, bytes.len() as u64)
        };
        assert!(cache.read(&other).is_none());
        // A part is read and checked on its own.
        assert_eq!(
            cache.read_range(&unit, 65_536..65_600).unwrap(),
            bytes[65_536..65_600]
        );
        // Flip one byte of the data: a miss, then fetched and written again.
        let files = cache.files_of("dir/a.parquet", "\"e1\"");
        let mut raw = std::fs::read(&files.data).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        std::fs::write(&files.data, &raw).unwrap();
        assert!(cache.read(&unit).is_none());
        assert!(!cache.contains(&unit), "the damaged chunk lost its entry");
        // The undamaged chunk still reads.
        assert_eq!(cache.read_range(&unit, 0..100).unwrap(), bytes[..100]);
        cache.write(&unit, &bytes);
        assert_eq!(cache.read(&unit).unwrap(), bytes);
        // Truncated: a miss too.
        let f = File::options().write(true).open(&files.data).unwrap();
        f.set_len(raw.len() as u64 - 10).unwrap();
        assert!(cache.read(&unit).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_whole_object_is_handed_out_only_complete_and_checked() {
        let dir = temp_dir("whole");
        let bytes = data(3 * CHUNK as usize + 123, 2);
        let size = bytes.len() as u64;
        {
            let cache = DiskCache::open(&dir, "b", 1 << 30).unwrap();
            cache.write(&id("k", 0, 2 * CHUNK), &bytes[..2 * CHUNK as usize]);
            assert!(
                cache.complete_file("k", "\"e1\"", size).is_none(),
                "half of it"
            );
            cache.write(
                &id("k", 2 * CHUNK, size - 2 * CHUNK),
                &bytes[2 * CHUNK as usize..],
            );
            let file = cache.complete_file("k", "\"e1\"", size).expect("complete");
            let mut got = Vec::new();
            use std::io::Read;
            (&file).read_to_end(&mut got).unwrap();
            assert!(got == bytes, "the data file is the object");
            assert_eq!(cache.stats.files_checked.load(Ordering::Relaxed), 1);
            // Checked once per process.
            cache.complete_file("k", "\"e1\"", size).unwrap();
            assert_eq!(cache.stats.files_checked.load(Ordering::Relaxed), 1);
            assert!(cache.complete_file("k", "\"e2\"", size).is_none());
        }
        // A big file is checked in the background; passed on once done.
        {
            let mut cache = DiskCache::open(&dir, "b", 1 << 30).unwrap();
            Arc::get_mut(&mut cache).unwrap().inline_check = CHUNK;
            assert!(
                cache.complete_file("k", "\"e1\"", size).is_none(),
                "not checked yet"
            );
            cache.wait_for_checks();
            assert!(cache.complete_file("k", "\"e1\"", size).is_some());
            assert_eq!(cache.stats.files_checked.load(Ordering::Relaxed), 1);
        }
        // Damaged between two runs: the next run finds it checking.
        let cache = DiskCache::open(&dir, "b", 1 << 30).unwrap();
        let files = cache.files_of("k", "\"e1\"");
        let mut raw = std::fs::read(&files.data).unwrap();
        raw[CHUNK as usize + 5] ^= 0x10;
        std::fs::write(&files.data, &raw).unwrap();
        assert!(cache.complete_file("k", "\"e1\"", size).is_none());
        assert!(!cache.contains(&id("k", CHUNK, CHUNK)), "refetched next");
        assert!(cache.contains(&id("k", 0, CHUNK)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_least_recently_used_objects_go_first_and_the_old_layout_goes() {
        let dir = temp_dir("lru");
        create_private_dir(&dir.join("ab")).unwrap();
        let old = dir.join("ab").join("00ab000000000001");
        std::fs::write(&old, b"S3MDC02\nold unit").unwrap();
        let cache = DiskCache::open(&dir, "b", 1 << 20).unwrap();
        let bytes = data(200 << 10, 3);
        let long_ago = SystemTime::now() - Duration::from_secs(600);
        let keys: Vec<String> = (0..6).map(|i| format!("k{i}")).collect();
        for (i, key) in keys.iter().enumerate().take(4) {
            cache.write(&id(key, 0, bytes.len() as u64), &bytes);
            // Last used minutes ago, in order (a use marks an object at
            // most once a minute).
            for path in [
                cache.files_of(key, "\"e1\"").map,
                cache.files_of(key, "\"e1\"").data,
            ] {
                File::options()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_modified(long_ago + Duration::from_secs(i as u64))
                    .unwrap();
            }
        }
        // Used again: now the most recent.
        assert!(cache.read(&id(&keys[0], 0, bytes.len() as u64)).is_some());
        for key in &keys[4..] {
            cache.write(&id(key, 0, bytes.len() as u64), &bytes);
        }
        cache.sweep();
        let size = cache.stats.size.load(Ordering::Relaxed);
        assert!(size <= 1 << 20, "{size} bytes kept over a 1 MiB limit");
        assert!(
            cache.read(&id(&keys[0], 0, bytes.len() as u64)).is_some(),
            "k0 was used recently"
        );
        assert!(
            cache.read(&id(&keys[1], 0, bytes.len() as u64)).is_none(),
            "k1 is the oldest"
        );
        assert!(!old.exists(), "a file of the older layout is deleted");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
