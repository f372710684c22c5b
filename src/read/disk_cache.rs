//! `DiskCache`: object data kept on local disk across remounts
//! (`--data-cache DIR`).
//!
//! It holds the read path's units (64 KiB blocks and 1 MiB segments), one
//! file each, named by a hash of (bucket, key, ETag, unit). A file starts
//! with a header holding that identity in full, the data's length and a
//! CRC32 of each 64 KiB chunk of it; what is read is checked every time: a
//! file of another identity (a hash collision), a truncated or corrupt one
//! is deleted and reported as a miss, never returned. A part of a file (a
//! block of a cached segment) is read and checked on its own. Since the ETag is part of the identity, a replaced object
//! never hits the old version's blocks; they age out.
//!
//! Files are written to a temporary name and renamed into place, so a
//! reader (this mount or another sharing the directory) sees a whole file
//! or none. A file's mtime is its last use (set on every hit), so every
//! mount sharing the directory evicts in the same order: when the bytes
//! written since the last sweep could have filled the cache, a background
//! sweep lists the directory, and deletes the least recently used files
//! until the cache is at 90% of its size and the disk keeps its minimum
//! free space. Deleting the whole directory is always safe.

use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use tracing::{debug, info, warn};

use crate::private_dir::create_private_dir;
use crate::stable_hash::stable_hash;

const MAGIC: &[u8; 8] = b"S3MDC02\n";
/// Data is checksummed in chunks of this size, so a part of a file (a
/// block of a cached segment) can be read and checked on its own.
const CHUNK: u64 = 64 * 1024;

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
    pub stats: Arc<DiskCacheStats>,
}

/// What identifies one cached unit.
pub struct UnitId<'a> {
    pub key: &'a str,
    pub etag: &'a str,
    /// `b12` (block 12) or `s3` (segment 3).
    pub unit: String,
}

impl UnitId<'_> {
    fn identity(&self, bucket: &str) -> String {
        format!("{bucket}\n{}\n{}\n{}", self.key, self.etag, self.unit)
    }
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
            stats: Arc::new(DiskCacheStats::default()),
        });
        info!(dir = %dir.display(), limit, "data cache on disk");
        // Learn the size of what earlier mounts left (and trim it), without
        // making the mount wait for a walk of a big directory.
        cache.sweep_in_background();
        Ok(cache)
    }

    fn path_of(&self, identity: &str) -> PathBuf {
        let hash = stable_hash(identity.as_bytes());
        self.dir
            .join(format!("{:02x}", hash >> 56))
            .join(format!("{hash:016x}"))
    }

    /// The unit's bytes if cached whole and intact (`len` is its length).
    /// Blocks on the disk: call it off the async workers.
    pub fn read(&self, id: &UnitId, len: u64) -> Option<Bytes> {
        self.read_range(id, len, 0..len)
    }

    /// Bytes `range` of the unit (of length `len`), if cached and intact.
    /// Blocks on the disk.
    pub fn read_range(&self, id: &UnitId, len: u64, range: Range<u64>) -> Option<Bytes> {
        let mut out = Vec::new();
        let found = self.read_into(id, len, range, &mut out)?;
        Some(Bytes::from(out).slice(found))
    }

    /// Bytes `range` of the unit (of length `len`) appended to `out`, if
    /// cached and intact, together with the rest of the checksummed chunks
    /// they lie in (none when `range` is on chunk boundaries, as blocks
    /// are); several units read so lie in one buffer. Blocks on the disk.
    pub fn read_appending(
        &self,
        id: &UnitId,
        len: u64,
        range: Range<u64>,
        out: &mut Vec<u8>,
    ) -> bool {
        self.read_into(id, len, range, out).is_some()
    }

    fn read_into(
        &self,
        id: &UnitId,
        len: u64,
        range: Range<u64>,
        out: &mut Vec<u8>,
    ) -> Option<Range<usize>> {
        let identity = id.identity(&self.bucket);
        let path = self.path_of(&identity);
        let found = match read_checked(&path, &identity, len, range, out) {
            Ok(found) => found,
            Err(why) => {
                warn!(path = %path.display(), why, "dropping a damaged data cache file");
                let _ = std::fs::remove_file(&path);
                None
            }
        };
        // Misses are counted by the caller, which may look for a unit under
        // more than one name.
        if let Some(data) = &found {
            self.stats.hits.fetch_add(1, Ordering::Relaxed);
            self.stats
                .bytes_served
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        found
    }

    /// Starts reading the files of these units (whole) into the page cache
    /// without waiting, so reading several small files one after the other
    /// waits for about one disk round trip instead of one each. Units not
    /// cached cost a failed open.
    pub fn will_need<'a>(&self, ids: impl IntoIterator<Item = UnitId<'a>>) {
        for id in ids {
            if let Ok(file) = File::open(self.path_of(&id.identity(&self.bucket))) {
                let _ = nix::fcntl::posix_fadvise(
                    &file,
                    0,
                    0,
                    nix::fcntl::PosixFadviseAdvice::POSIX_FADV_WILLNEED,
                );
            }
        }
    }

    /// Starts reading the header and the chunks covering `range` of the
    /// unit (of length `len`) into the page cache without waiting, for a
    /// read of them that comes after a read of another file.
    pub fn will_need_range(&self, id: &UnitId, len: u64, range: Range<u64>) {
        let identity = id.identity(&self.bucket);
        if let Ok(file) = File::open(self.path_of(&identity)) {
            let layout = Layout::of(&identity, len, range);
            ask_disk(&file, layout.header, layout.from..layout.to, true);
        }
    }

    /// Whether a file for the unit is there (not checked: a cheap test to
    /// plan requests with).
    pub fn contains(&self, id: &UnitId) -> bool {
        self.path_of(&id.identity(&self.bucket)).exists()
    }

    /// Stores a unit (whole); best effort. Blocks on the disk.
    pub fn write(&self, id: &UnitId, data: &[u8]) {
        let identity = id.identity(&self.bucket);
        let path = self.path_of(&identity);
        if let Err(e) = write_atomically(&path, &identity, data) {
            debug!(path = %path.display(), error = %e, "cannot write to the data cache");
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

    fn sweep_in_background(self: &DiskCache) {
        if self.sweeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let job = Sweep {
            dir: self.dir.clone(),
            limit: self.limit,
            min_free: self.min_free,
            stats: self.stats.clone(),
            sweeping: self.sweeping.clone(),
        };
        std::thread::spawn(move || job.run());
    }

    /// A sweep now, on this thread.
    #[cfg(test)]
    fn sweep(&self) {
        self.sweeping.store(true, Ordering::Release);
        Sweep {
            dir: self.dir.clone(),
            limit: self.limit,
            min_free: self.min_free,
            stats: self.stats.clone(),
            sweeping: self.sweeping.clone(),
        }
        .run();
    }
}

/// One eviction pass over the directory.
struct Sweep {
    dir: PathBuf,
    limit: u64,
    min_free: u64,
    stats: Arc<DiskCacheStats>,
    sweeping: Arc<AtomicBool>,
}

impl Sweep {
    fn run(self) {
        let mut files: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
        if let Ok(subdirs) = std::fs::read_dir(&self.dir) {
            for sub in subdirs.flatten() {
                let Ok(entries) = std::fs::read_dir(sub.path()) else {
                    continue;
                };
                for e in entries.flatten() {
                    let Ok(meta) = e.metadata() else { continue };
                    if !meta.is_file() {
                        continue;
                    }
                    let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    files.push((used, meta.len(), e.path()));
                }
            }
        }
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        let free = free_space(&self.dir).map(|(f, _)| f).unwrap_or(u64::MAX);
        // Over the limit: down to 90% of it. Disk short of its minimum
        // free space: give back what is missing, as far as the cache can.
        let mut to_free = total.saturating_sub(self.limit * 9 / 10);
        if total > self.limit || free < self.min_free {
            to_free = to_free.max(self.min_free.saturating_sub(free));
        } else {
            to_free = 0;
        }
        if to_free > 0 {
            files.sort_unstable_by_key(|f| f.0);
            let mut freed = 0;
            for (_, len, path) in &files {
                if freed >= to_free {
                    break;
                }
                match std::fs::remove_file(path) {
                    Ok(()) => {
                        freed += len;
                        self.stats.evictions.fetch_add(1, Ordering::Relaxed);
                    }
                    // Another sweep (or mount) freed it already.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => freed += len,
                    Err(_) => {}
                }
            }
            total = total.saturating_sub(freed);
            debug!(freed, total, "data cache swept");
        }
        self.stats.size.store(total, Ordering::Relaxed);
        self.sweeping.store(false, Ordering::Release);
    }
}

/// Where things are in a cache file of a unit of `len` bytes, for a read of
/// `range` of its data.
struct Layout {
    /// The first checksummed chunk covering the range.
    first: usize,
    /// The data bytes to read: the whole chunks covering the range.
    from: u64,
    to: u64,
    /// The header's length, which is where the data starts: it follows from
    /// the identity and the length, so the data's read can start before the
    /// header is read.
    header: u64,
}

impl Layout {
    fn of(identity: &str, len: u64, range: Range<u64>) -> Layout {
        let chunks = len.div_ceil(CHUNK) as usize;
        let first = (range.start / CHUNK) as usize;
        let last = (range.end.div_ceil(CHUNK) as usize).min(chunks);
        Layout {
            first,
            from: first as u64 * CHUNK,
            to: (last as u64 * CHUNK).min(len),
            header: (MAGIC.len() + 4 + identity.len() + 8 + 4 * chunks) as u64,
        }
    }
}

/// Starts the disk reading the data bytes `data` of a cache file whose
/// header is `header` bytes long (and the header too, if asked), without
/// waiting: then the header's read and the data's take one disk round trip,
/// not two. No readahead beyond: reading the header must not pull in data
/// nobody asked for (a random read wants a few chunks of the file).
fn ask_disk(file: &File, header: u64, data: Range<u64>, with_header: bool) {
    use nix::fcntl::{posix_fadvise, PosixFadviseAdvice};
    let _ = posix_fadvise(file, 0, 0, PosixFadviseAdvice::POSIX_FADV_RANDOM);
    let (start, len) = ((header + data.start) as i64, (data.end - data.start) as i64);
    let _ = posix_fadvise(file, start, len, PosixFadviseAdvice::POSIX_FADV_WILLNEED);
    if with_header {
        let _ = posix_fadvise(
            file,
            0,
            header as i64,
            PosixFadviseAdvice::POSIX_FADV_WILLNEED,
        );
    }
}

/// Reads and checks `range` of one cache file holding `len` bytes of
/// data, appending the checksummed chunks that cover it to `out`: returns
/// where `range`'s bytes are in `out`, `Ok(None)` when absent (or another
/// unit's), `Err` when present but not whole and right (`out` is left as
/// it was then). Marks the file used (its mtime) at most once a minute.
fn read_checked(
    path: &Path,
    identity: &str,
    len: u64,
    range: Range<u64>,
    out: &mut Vec<u8>,
) -> Result<Option<Range<usize>>, &'static str> {
    let base = out.len();
    let found = read_checked_into(path, identity, len, range, out);
    if !matches!(found, Ok(Some(_))) {
        out.truncate(base);
    }
    found
}

/// [`read_checked`], leaving whatever it appended to `out` on a failure.
fn read_checked_into(
    path: &Path,
    identity: &str,
    len: u64,
    range: Range<u64>,
    out: &mut Vec<u8>,
) -> Result<Option<Range<usize>>, &'static str> {
    use std::os::unix::fs::FileExt;
    let file = match File::open(path) {
        Ok(f) => f,
        Err(_) => return Ok(None),
    };
    let Layout {
        first,
        from,
        to,
        header,
    } = Layout::of(identity, len, range.clone());
    ask_disk(&file, header, from..to, false);
    // The whole header in one read: its length follows from the identity.
    // Read what is there: a file of another unit may be shorter.
    let head_len = MAGIC.len() + 4;
    let mut head = vec![0u8; header as usize];
    let mut got = 0;
    while got < head.len() {
        match file.read_at(&mut head[got..], got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return Err("unreadable"),
        }
    }
    if got < head_len || &head[..MAGIC.len()] != MAGIC {
        return Err("no header");
    }
    let id_len = u32::from_le_bytes(head[MAGIC.len()..head_len].try_into().unwrap()) as usize;
    if id_len != identity.len() {
        // Another unit whose name hashes the same: not damaged, not ours.
        return Ok(None);
    }
    if got < head.len() {
        return Err("truncated");
    }
    let rest = &head[head_len..];
    if &rest[..id_len] != identity.as_bytes() {
        return Ok(None);
    }
    let data_len = u64::from_le_bytes(rest[id_len..id_len + 8].try_into().unwrap());
    let data_at = head.len() as u64;
    let meta = file.metadata().map_err(|_| "unreadable")?;
    if data_len != len || meta.len() != data_at + len {
        return Err("wrong length");
    }
    let crcs = &rest[id_len + 8..];
    // The chunks covering the range, read and checked.
    let base = out.len();
    out.resize(base + (to - from) as usize, 0);
    let data = &mut out[base..];
    file.read_exact_at(data, data_at + from)
        .map_err(|_| "truncated")?;
    for (i, chunk) in data.chunks(CHUNK as usize).enumerate() {
        let c = first + i;
        let want = u32::from_le_bytes(crcs[4 * c..4 * c + 4].try_into().unwrap());
        if crc32fast::hash(chunk) != want {
            return Err("checksum mismatch");
        }
    }
    if let Ok(used) = meta.modified() {
        if used.elapsed().unwrap_or_default() > std::time::Duration::from_secs(60) {
            let _ = file.set_modified(SystemTime::now());
        }
    }
    Ok(Some(
        base + (range.start - from) as usize..base + (range.end - from) as usize,
    ))
}

fn write_atomically(path: &Path, identity: &str, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().expect("cache files live in subdirectories");
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".tmp-{}-{}", std::process::id(), fastrand::u64(..)));
    let result = (|| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let mut header = Vec::with_capacity(MAGIC.len() + 16 + identity.len());
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&(identity.len() as u32).to_le_bytes());
        header.extend_from_slice(identity.as_bytes());
        header.extend_from_slice(&(data.len() as u64).to_le_bytes());
        for chunk in data.chunks(CHUNK as usize) {
            header.extend_from_slice(&crc32fast::hash(chunk).to_le_bytes());
        }
        f.write_all(&header)?;
        f.write_all(data)?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Free and total bytes of the filesystem holding `dir`.
fn free_space(dir: &Path) -> std::io::Result<(u64, u64)> {
    let st = nix::sys::statvfs::statvfs(dir)?;
    let frsize = st.fragment_size() as u64;
    Ok((
        st.blocks_available() as u64 * frsize,
        st.blocks() as u64 * frsize,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(unit: &str) -> UnitId<'static> {
        UnitId {
            key: "dir/a.parquet",
            etag: "\"e1\"",
            unit: unit.to_owned(),
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("s3mount-dc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_unit_reads_back_and_damage_is_a_miss() {
        let dir = temp_dir("rw");
        let cache = DiskCache::open(&dir, "b", 1 << 30).unwrap();
        let data: Vec<u8> = (0..70_000u32).map(|i| (i * 7) as u8).collect();
        assert!(cache.read(&id("b1"), data.len() as u64).is_none());
        cache.write(&id("b1"), &data);
        assert_eq!(cache.read(&id("b1"), data.len() as u64).unwrap(), data);
        // Another ETag of the same key is another unit.
        let other = UnitId {
            etag: "\"e2\"",
            ..id("b1")
        };
        assert!(cache.read(&other, data.len() as u64).is_none());
        // Flip one byte of the data: a miss, and the file is gone.
        let path = cache.path_of(&id("b1").identity("b"));
        let mut raw = std::fs::read(&path).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        std::fs::write(&path, &raw).unwrap();
        assert!(cache.read(&id("b1"), data.len() as u64).is_none());
        assert!(!path.exists());
        // A part is read and checked on its own.
        cache.write(&id("b3"), &data);
        assert_eq!(
            cache
                .read_range(&id("b3"), data.len() as u64, 65_536..65_600)
                .unwrap(),
            data[65_536..65_600]
        );
        // Truncated: a miss too.
        cache.write(&id("b2"), &data);
        let path = cache.path_of(&id("b2").identity("b"));
        let raw = std::fs::read(&path).unwrap();
        std::fs::write(&path, &raw[..raw.len() - 10]).unwrap();
        assert!(cache.read(&id("b2"), data.len() as u64).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_least_recently_used_units_go_first() {
        let dir = temp_dir("lru");
        let cache = DiskCache::open(&dir, "b", 1 << 20).unwrap();
        let data = vec![7u8; 200 << 10];
        let long_ago = SystemTime::now() - std::time::Duration::from_secs(600);
        for i in 0..4 {
            cache.write(&id(&format!("b{i}")), &data);
            // Last used minutes ago, in order (a use marks a file at most
            // once a minute).
            let path = cache.path_of(&id(&format!("b{i}")).identity("b"));
            File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(long_ago + std::time::Duration::from_secs(i))
                .unwrap();
        }
        // Used again: now the most recent.
        assert!(cache.read(&id("b0"), data.len() as u64).is_some());
        for i in 4..6 {
            cache.write(&id(&format!("b{i}")), &data);
        }
        cache.sweep();
        let size = cache.stats.size.load(Ordering::Relaxed);
        assert!(size <= 1 << 20, "{size} bytes kept over a 1 MiB limit");
        assert!(
            cache.read(&id("b0"), data.len() as u64).is_some(),
            "b0 was used recently"
        );
        assert!(
            cache.read(&id("b1"), data.len() as u64).is_none(),
            "b1 is the oldest"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
