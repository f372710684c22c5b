//! Catalog snapshots: the listings a catalog holds for one bucket and
//! prefix, written to one file (and published as one S3 object) that a new
//! mount loads instead of listing every directory again.
//!
//! The format, version 2, is a gzip stream (RFC 1952, which checks its own
//! CRC32 and length) of records; integers are little-endian, a string is a
//! `u32` byte length and its bytes:
//!
//! ```text
//! header  "S3MSNAP\n"  u32 version  str bucket  str prefix  i64 created_ms
//! 'D'     str dir (below the prefix: "" or "a/b/")  i64 listed_at_ms
//! 'F'     str name  u64 size  i64 mtime_ns  str etag     a file of that dir
//! 'S'     str name  i64 mtime_ns                         a subdirectory
//! 'A'     u8 present  [u32 mode] [u32 uid] [u32 gid] [i64 mtime_ns] [str link]
//!                       the POSIX attributes of the entry just before it
//!                       (version 2; bits 0-4 of `present` say which follow)
//! 'E'     u64 dirs  u64 entries  u32 crc32               the end
//! ```
//!
//! Version 1 is the same without 'A' records, and is still read. Each
//! directory's entries follow its 'D' record, in listing order. The
//! CRC32 of the end record covers every byte before it, header included,
//! so a snapshot cut short, damaged or concatenated is refused whole.
//! Writing and reading stream: memory does not grow with the snapshot.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;

use super::db::CatalogDb;
use super::{Entry, EntryKind, ObjectAttrs, VersionTime, DIR_MARKER_VERSION};
use crate::store::{ObjectStore, PosixMeta, StoreError};

const MAGIC: &[u8; 8] = b"S3MSNAP\n";
pub const SNAPSHOT_VERSION: u32 = 2;
/// The oldest version still read.
const OLDEST_VERSION: u32 = 1;
/// Entries appended to the catalog in one transaction while importing.
const IMPORT_BATCH: usize = 1000;
/// Longest string a record may hold (keys are at most 1 KiB; ETags short):
/// a damaged length must not make the reader allocate gigabytes.
const LONGEST_STRING: u32 = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("cannot read the snapshot: {0}")]
    Io(#[from] io::Error),
    #[error("not an s3mount catalog snapshot")]
    NotASnapshot,
    #[error("snapshot format version {0}; this s3mount reads versions {OLDEST_VERSION} to {SNAPSHOT_VERSION}")]
    Version(u32),
    #[error("the snapshot is damaged: {0}")]
    Damaged(String),
    #[error("the snapshot is of s3://{0}/{1}, not of this mount's bucket and prefix")]
    Foreign(String, String),
}

/// Whose listings a snapshot holds, and when it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHeader {
    pub bucket: String,
    pub prefix: String,
    pub created: SystemTime,
}

/// Directories and entries in a snapshot, and the entries with
/// attributes (which the end record does not count).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotCounts {
    pub dirs: u64,
    pub entries: u64,
    pub attrs: u64,
}

fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn nanos(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos().min(i64::MAX as u128) as i64)
}

fn from_millis(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64)
}

fn from_nanos(ns: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64)
}

/// A time before the epoch too (attributes may hold one).
fn signed_nanos(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos().min(i64::MAX as u128) as i64,
        Err(e) => -(e.duration().as_nanos().min(i64::MAX as u128) as i64),
    }
}

fn from_signed_nanos(ns: i64) -> SystemTime {
    match ns >= 0 {
        true => UNIX_EPOCH + Duration::from_nanos(ns as u64),
        false => UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs()),
    }
}

/// The bits of an 'A' record's `present` byte.
const HAS_MODE: u8 = 1;
const HAS_UID: u8 = 2;
const HAS_GID: u8 = 4;
const HAS_MTIME: u8 = 8;
const HAS_LINK: u8 = 16;

/// Writes a snapshot, record by record, to `W` (gzip-compressed).
pub struct SnapshotWriter<W: Write> {
    out: GzEncoder<W>,
    crc: crc32fast::Hasher,
    counts: SnapshotCounts,
    in_dir: bool,
    /// An entry was just written: attributes may follow.
    after_entry: bool,
}

impl<W: Write> SnapshotWriter<W> {
    pub fn new(out: W, header: &SnapshotHeader) -> io::Result<Self> {
        let mut w = SnapshotWriter {
            out: GzEncoder::new(out, flate2::Compression::default()),
            crc: crc32fast::Hasher::new(),
            counts: SnapshotCounts::default(),
            in_dir: false,
            after_entry: false,
        };
        w.bytes(MAGIC)?;
        w.bytes(&SNAPSHOT_VERSION.to_le_bytes())?;
        w.string(&header.bucket)?;
        w.string(&header.prefix)?;
        w.bytes(&millis(header.created).to_le_bytes())?;
        Ok(w)
    }

    fn bytes(&mut self, b: &[u8]) -> io::Result<()> {
        self.crc.update(b);
        self.out.write_all(b)
    }

    fn string(&mut self, s: &str) -> io::Result<()> {
        if s.len() > LONGEST_STRING as usize {
            return Err(io::Error::other(format!(
                "a name of {} bytes is too long for a snapshot",
                s.len()
            )));
        }
        self.bytes(&(s.len() as u32).to_le_bytes())?;
        self.bytes(s.as_bytes())
    }

    /// Starts the listing of `dir` (below the snapshot's prefix: "" or
    /// ending in `/`), taken at `listed_at`; its entries follow.
    pub fn dir(&mut self, dir: &str, listed_at: SystemTime) -> io::Result<()> {
        self.bytes(b"D")?;
        self.string(dir)?;
        self.bytes(&millis(listed_at).to_le_bytes())?;
        self.counts.dirs += 1;
        self.in_dir = true;
        self.after_entry = false;
        Ok(())
    }

    /// The attributes of the entry just written (of a directory: its
    /// marker's).
    pub fn attrs(&mut self, posix: &PosixMeta, link: Option<&str>) -> io::Result<()> {
        if !self.after_entry {
            return Err(io::Error::other("attributes before their entry"));
        }
        let present = [
            (posix.mode.is_some(), HAS_MODE),
            (posix.uid.is_some(), HAS_UID),
            (posix.gid.is_some(), HAS_GID),
            (posix.mtime.is_some(), HAS_MTIME),
            (link.is_some(), HAS_LINK),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .fold(0, |bits, (_, bit)| bits | bit);
        self.bytes(b"A")?;
        self.bytes(&[present])?;
        for v in [posix.mode, posix.uid, posix.gid].into_iter().flatten() {
            self.bytes(&v.to_le_bytes())?;
        }
        if let Some(t) = posix.mtime {
            self.bytes(&signed_nanos(t).to_le_bytes())?;
        }
        if let Some(link) = link {
            self.string(link)?;
        }
        self.after_entry = false;
        self.counts.attrs += 1;
        Ok(())
    }

    pub fn entry(&mut self, e: &Entry) -> io::Result<()> {
        if !self.in_dir {
            return Err(io::Error::other("an entry before its directory"));
        }
        match &e.kind {
            EntryKind::File { size, etag } => {
                self.bytes(b"F")?;
                self.string(&e.name)?;
                self.bytes(&size.to_le_bytes())?;
                self.bytes(&nanos(e.mtime).to_le_bytes())?;
                self.string(etag)?;
            }
            EntryKind::Dir => {
                self.bytes(b"S")?;
                self.string(&e.name)?;
                self.bytes(&nanos(e.mtime).to_le_bytes())?;
            }
        }
        self.counts.entries += 1;
        self.after_entry = true;
        Ok(())
    }

    /// Writes the end record and the gzip trailer; returns the output.
    pub fn finish(mut self) -> io::Result<(W, SnapshotCounts)> {
        self.bytes(b"E")?;
        let counts = self.counts;
        self.bytes(&counts.dirs.to_le_bytes())?;
        self.bytes(&counts.entries.to_le_bytes())?;
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        Ok((self.out.finish()?, counts))
    }
}

/// One record of a snapshot, as [`SnapshotReader`] yields them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotItem {
    /// The listing of `dir` (below the prefix) begins; its entries follow.
    Dir {
        dir: String,
        listed_at: SystemTime,
    },
    Entry(Entry),
    /// The attributes of the entry just before (version 2).
    Attrs {
        posix: PosixMeta,
        link: Option<String>,
    },
}

/// Reads a snapshot record by record. The end record's counts and CRC32
/// are checked when it is reached: until the iterator has ended (`None`),
/// nothing it yielded is known to be right.
pub struct SnapshotReader<R: Read> {
    input: BufReader<MultiGzDecoder<R>>,
    crc: crc32fast::Hasher,
    counts: SnapshotCounts,
    pub header: SnapshotHeader,
    ended: bool,
    in_dir: bool,
    version: u32,
    after_entry: bool,
}

impl<R: Read> SnapshotReader<R> {
    pub fn new(input: R) -> Result<Self, SnapshotError> {
        let mut r = SnapshotReader {
            input: BufReader::with_capacity(256 * 1024, MultiGzDecoder::new(input)),
            crc: crc32fast::Hasher::new(),
            counts: SnapshotCounts::default(),
            header: SnapshotHeader {
                bucket: String::new(),
                prefix: String::new(),
                created: UNIX_EPOCH,
            },
            ended: false,
            in_dir: false,
            version: SNAPSHOT_VERSION,
            after_entry: false,
        };
        let mut magic = [0u8; 8];
        if r.exact(&mut magic).is_err() || &magic != MAGIC {
            return Err(SnapshotError::NotASnapshot);
        }
        let version = r.u32()?;
        if !(OLDEST_VERSION..=SNAPSHOT_VERSION).contains(&version) {
            return Err(SnapshotError::Version(version));
        }
        r.version = version;
        r.header.bucket = r.string()?;
        r.header.prefix = r.string()?;
        r.header.created = from_millis(r.i64()?);
        Ok(r)
    }

    fn exact(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError> {
        self.input.read_exact(buf).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => SnapshotError::Damaged("cut short".into()),
            io::ErrorKind::InvalidInput | io::ErrorKind::InvalidData => {
                SnapshotError::Damaged(e.to_string())
            }
            _ => SnapshotError::Io(e),
        })?;
        self.crc.update(buf);
        Ok(())
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        let mut b = [0u8; 8];
        self.exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn i64(&mut self) -> Result<i64, SnapshotError> {
        Ok(self.u64()? as i64)
    }

    fn string(&mut self) -> Result<String, SnapshotError> {
        let len = self.u32()?;
        if len > LONGEST_STRING {
            return Err(SnapshotError::Damaged(format!("a string of {len} bytes")));
        }
        let mut b = vec![0u8; len as usize];
        self.exact(&mut b)?;
        String::from_utf8(b).map_err(|_| SnapshotError::Damaged("a name is not UTF-8".into()))
    }

    /// An entry's name: one that a listing could show.
    fn name(&mut self) -> Result<String, SnapshotError> {
        let name = self.string()?;
        if name.contains('/') || crate::names::check_name(&name).is_err() {
            return Err(SnapshotError::Damaged(format!("an entry named {name:?}")));
        }
        Ok(name)
    }

    fn next_item(&mut self) -> Result<Option<SnapshotItem>, SnapshotError> {
        let mut tag = [0u8; 1];
        self.exact(&mut tag)?;
        let after_entry = std::mem::replace(&mut self.after_entry, matches!(&tag, b"F" | b"S"));
        match &tag {
            b"A" if self.version < 2 || !after_entry => Err(SnapshotError::Damaged(
                "attributes that follow no entry".into(),
            )),
            b"A" => {
                let mut present = [0u8; 1];
                self.exact(&mut present)?;
                let present = present[0];
                if present & !(HAS_MODE | HAS_UID | HAS_GID | HAS_MTIME | HAS_LINK) != 0 {
                    return Err(SnapshotError::Damaged(format!(
                        "attribute bits {present:#x}"
                    )));
                }
                let field = |bit: u8, this: &mut Self| -> Result<Option<u32>, SnapshotError> {
                    match present & bit {
                        0 => Ok(None),
                        _ => this.u32().map(Some),
                    }
                };
                let mode = field(HAS_MODE, self)?;
                let uid = field(HAS_UID, self)?;
                let gid = field(HAS_GID, self)?;
                let mtime = match present & HAS_MTIME {
                    0 => None,
                    _ => Some(from_signed_nanos(self.i64()?)),
                };
                let link = match present & HAS_LINK {
                    0 => None,
                    _ => Some(self.string()?),
                };
                let posix = PosixMeta {
                    mode,
                    uid,
                    gid,
                    mtime,
                };
                self.counts.attrs += 1;
                Ok(Some(SnapshotItem::Attrs { posix, link }))
            }
            b"D" => {
                let dir = self.string()?;
                if !(dir.is_empty() || dir.ends_with('/')) {
                    return Err(SnapshotError::Damaged(format!("directory {dir:?}")));
                }
                let listed_at = from_millis(self.i64()?);
                self.counts.dirs += 1;
                self.in_dir = true;
                Ok(Some(SnapshotItem::Dir { dir, listed_at }))
            }
            b"F" | b"S" if !self.in_dir => Err(SnapshotError::Damaged(
                "an entry before its directory".into(),
            )),
            b"F" => {
                let name = self.name()?;
                let size = self.u64()?;
                let mtime = from_nanos(self.i64()?);
                let etag = self.string()?;
                self.counts.entries += 1;
                Ok(Some(SnapshotItem::Entry(Entry {
                    name,
                    kind: EntryKind::File { size, etag },
                    mtime,
                })))
            }
            b"S" => {
                let name = self.name()?;
                let mtime = from_nanos(self.i64()?);
                self.counts.entries += 1;
                Ok(Some(SnapshotItem::Entry(Entry {
                    name,
                    kind: EntryKind::Dir,
                    mtime,
                })))
            }
            b"E" => {
                let want = self.counts;
                let dirs = self.u64()?;
                let entries = self.u64()?;
                let crc = self.crc.clone().finalize();
                let mut stored = [0u8; 4];
                self.input
                    .read_exact(&mut stored)
                    .map_err(|_| SnapshotError::Damaged("cut short in its end record".into()))?;
                if u32::from_le_bytes(stored) != crc {
                    return Err(SnapshotError::Damaged("checksum mismatch".into()));
                }
                if (dirs, entries) != (want.dirs, want.entries) {
                    return Err(SnapshotError::Damaged(format!(
                        "it says {dirs} directories and {entries} entries, holds {} and {}",
                        want.dirs, want.entries
                    )));
                }
                // Nothing may follow (the gzip trailer is checked here too).
                let rest = self
                    .input
                    .fill_buf()
                    .map_err(|e| SnapshotError::Damaged(e.to_string()))?;
                if !rest.is_empty() {
                    return Err(SnapshotError::Damaged("bytes after its end".into()));
                }
                self.ended = true;
                Ok(None)
            }
            _ => Err(SnapshotError::Damaged(format!(
                "unknown record {:?}",
                tag[0] as char
            ))),
        }
    }

    /// Counts of what was read so far (all of it once the iterator ended).
    pub fn counts(&self) -> SnapshotCounts {
        self.counts
    }
}

impl<R: Read> Iterator for SnapshotReader<R> {
    type Item = Result<SnapshotItem, SnapshotError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.ended {
            return None;
        }
        match self.next_item() {
            Ok(Some(item)) => Some(Ok(item)),
            Ok(None) => None,
            Err(e) => {
                self.ended = true;
                Some(Err(e))
            }
        }
    }
}

/// Checks a snapshot file whole (records, counts, checksums) and that it
/// is of `bucket` and `prefix`; returns its header and counts.
pub fn check_snapshot(
    file: &Path,
    bucket: &str,
    prefix: &str,
) -> Result<(SnapshotHeader, SnapshotCounts), SnapshotError> {
    let mut reader = SnapshotReader::new(std::fs::File::open(file)?)?;
    let header = reader.header.clone();
    if header.bucket != bucket || header.prefix != prefix {
        return Err(SnapshotError::Foreign(header.bucket, header.prefix));
    }
    for item in reader.by_ref() {
        item?;
    }
    Ok((header, reader.counts()))
}

/// Loads a snapshot file, checked first with [`check_snapshot`], into the
/// catalog: each directory becomes a stored listing with the time it was
/// listed at (so listings older than the TTL are refreshed as usual). A
/// directory the catalog holds a newer listing of keeps its own.
pub fn import_snapshot(
    db: &Arc<CatalogDb>,
    file: &Path,
    bucket: &str,
    prefix: &str,
) -> Result<(SnapshotHeader, SnapshotCounts), SnapshotError> {
    let (header, counts) = check_snapshot(file, bucket, prefix)?;
    // Noted first, so that an import cut short (a crash, a full disk) is
    // started over by the next mount instead of leaving it with a part.
    if !db.note_snapshot_import(true) {
        return Err(SnapshotError::Io(io::Error::other(
            "cannot write to the catalog",
        )));
    }
    let imported = import_checked(db, file, prefix);
    if imported.is_err() {
        db.forget_tree("");
    }
    db.note_snapshot_import(false);
    imported.map(|()| (header, counts))
}

/// [`import_snapshot`]'s second pass, over a snapshot checked whole.
fn import_checked(db: &Arc<CatalogDb>, file: &Path, prefix: &str) -> Result<(), SnapshotError> {
    let reader = SnapshotReader::new(std::fs::File::open(file)?)?;
    let full = || SnapshotError::Io(io::Error::other("cannot store a listing in the catalog"));
    // A publisher whose clock runs ahead must not make listings look
    // fresh for longer than the TTL.
    let now = SystemTime::now();
    let mut open: Option<OpenDir> = None;
    // The key and version the next attributes belong to.
    let mut last: Option<(String, String, SystemTime)> = None;
    let mut attrs_batch: Vec<(String, ObjectAttrs)> = Vec::new();
    for item in reader {
        match item? {
            SnapshotItem::Attrs { posix, link } => {
                if let Some((key, etag, listed)) = last.take() {
                    let attrs = ObjectAttrs {
                        etag,
                        written: VersionTime::Listed(listed),
                        posix,
                        link,
                    };
                    attrs_batch.push((key, attrs));
                    if attrs_batch.len() >= IMPORT_BATCH {
                        db.put_object_attrs_batch(&std::mem::take(&mut attrs_batch));
                    }
                }
            }
            SnapshotItem::Dir { dir, listed_at } => {
                if let Some(done) = open.take() {
                    done.commit(db).ok_or_else(full)?;
                }
                open = Some(OpenDir {
                    prefix: format!("{prefix}{dir}"),
                    listed_at: listed_at.min(now),
                    stored: db.begin(),
                    batch: Vec::with_capacity(IMPORT_BATCH),
                    next_seq: 1,
                });
            }
            SnapshotItem::Entry(e) => {
                let dir = open
                    .as_mut()
                    .expect("the reader checks entries follow a dir");
                last = Some(match &e.kind {
                    EntryKind::File { etag, .. } => {
                        (format!("{}{}", dir.prefix, e.name), etag.clone(), e.mtime)
                    }
                    EntryKind::Dir => (
                        format!("{}{}/", dir.prefix, e.name),
                        DIR_MARKER_VERSION.to_owned(),
                        e.mtime,
                    ),
                });
                dir.batch.push(e);
                if dir.batch.len() >= IMPORT_BATCH && !dir.flush() {
                    return Err(full());
                }
            }
        }
    }
    if let Some(done) = open.take() {
        done.commit(db).ok_or_else(full)?;
    }
    db.put_object_attrs_batch(&attrs_batch);
    Ok(())
}

/// Whether `db` should load a snapshot: it holds no listing, after the
/// part of an earlier load that was cut short is forgotten. Returns
/// whether such a part was found too.
pub fn ready_for_snapshot(db: &CatalogDb) -> (bool, bool) {
    let cut_short = db.snapshot_import_cut_short();
    if cut_short {
        db.forget_tree("");
        db.note_snapshot_import(false);
    }
    (db.is_empty(), cut_short)
}

/// Downloads object `key` of `store` whole into `file`, one ranged GET
/// pinned to the version first seen, in pieces written as they arrive
/// (bounded memory whatever the size). Returns its size.
pub async fn download_to_file<S: ObjectStore>(
    store: &S,
    key: &str,
    file: &Path,
) -> Result<u64, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let meta = store.head(key).await?;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| StoreError::Other(format!("cannot write {}: {e}", file.display())))?;
    const PIECE: u64 = 8 << 20;
    let pieces: Vec<u64> = (0..meta.size)
        .step_by(PIECE as usize)
        .map(|at| PIECE.min(meta.size - at))
        .collect();
    let mut failed = None;
    let mut deliver = |data: bytes::Bytes| {
        if failed.is_none() {
            if let Err(e) = out.write_all(&data) {
                failed = Some(e);
            }
        }
    };
    if meta.size > 0 {
        store
            .get_range(key, &meta.etag, 0..meta.size, &pieces, &mut deliver)
            .await?;
    }
    if let Some(e) = failed {
        return Err(StoreError::Other(format!(
            "cannot write {}: {e}",
            file.display()
        )));
    }
    Ok(meta.size)
}

/// A directory being imported.
struct OpenDir {
    prefix: String,
    listed_at: SystemTime,
    stored: Arc<super::db::StoredEntries>,
    batch: Vec<Entry>,
    next_seq: u64,
}

impl OpenDir {
    /// Appends the batch; false when the catalog could not store it.
    fn flush(&mut self) -> bool {
        if !self.batch.is_empty() {
            if !self.stored.append(self.next_seq, &self.batch) {
                return false;
            }
            self.next_seq += self.batch.len() as u64;
            self.batch.clear();
        }
        true
    }

    /// Makes the directory's listing current; `None` when it could not be
    /// stored whole (then it is not made current).
    fn commit(mut self, db: &CatalogDb) -> Option<()> {
        if !self.flush() {
            return None;
        }
        db.commit(&self.prefix, &self.stored, self.listed_at);
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> SnapshotHeader {
        SnapshotHeader {
            bucket: "b".into(),
            prefix: "p/".into(),
            created: from_millis(1_700_000_000_000),
        }
    }

    fn sample() -> Vec<u8> {
        let mut w = SnapshotWriter::new(Vec::new(), &header()).unwrap();
        w.dir("", from_millis(1_700_000_000_001)).unwrap();
        w.entry(&Entry::test_dir("d")).unwrap();
        w.entry(&Entry::test_file("top.txt")).unwrap();
        w.attrs(&sample_attrs(), Some("in d")).unwrap();
        w.dir("d/", from_millis(1_700_000_000_002)).unwrap();
        w.entry(&Entry::test_file("in d")).unwrap();
        let (out, counts) = w.finish().unwrap();
        assert_eq!(
            counts,
            SnapshotCounts {
                dirs: 2,
                entries: 3,
                attrs: 1
            }
        );
        out
    }

    fn sample_attrs() -> PosixMeta {
        PosixMeta {
            mode: Some(libc::S_IFLNK | 0o777),
            uid: Some(1000),
            gid: None,
            mtime: Some(UNIX_EPOCH - Duration::from_secs(86_400)),
        }
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<SnapshotItem>, SnapshotError> {
        SnapshotReader::new(bytes)?.collect()
    }

    #[test]
    fn an_entry_no_listing_could_show_is_damage() {
        for name in ["a/b", "", "..", "nul\0"] {
            let mut w = SnapshotWriter::new(Vec::new(), &header()).unwrap();
            w.dir("", from_millis(1)).unwrap();
            w.entry(&Entry::test_file(name)).unwrap();
            let (bytes, _) = w.finish().unwrap();
            assert!(
                matches!(read_all(&bytes), Err(SnapshotError::Damaged(_))),
                "{name:?} read"
            );
        }
    }

    #[test]
    fn an_import_cut_short_is_started_over_and_a_finished_one_kept() {
        let dir = std::env::temp_dir().join(format!("s3mount-snapimport-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = CatalogDb::open(&dir, "t").unwrap();
        let file = dir.join("snap");
        std::fs::write(&file, sample()).unwrap();
        assert_eq!(ready_for_snapshot(&db), (true, false));
        let (_, counts) = import_snapshot(&db, &file, "b", "p/").unwrap();
        assert_eq!(counts.entries, 3);
        assert!(db.listed_at("p/d/").is_some());
        let attrs = db.object_attrs("p/top.txt").expect("attributes imported");
        assert_eq!((attrs.etag.as_str(), attrs.posix), ("e", sample_attrs()));
        assert_eq!(attrs.link.as_deref(), Some("in d"));
        assert_eq!(
            ready_for_snapshot(&db),
            (false, false),
            "a whole import is kept"
        );
        // A mount killed while loading: noted, part stored.
        db.note_snapshot_import(true);
        assert_eq!(ready_for_snapshot(&db), (true, true));
        assert!(db.listed_at("p/d/").is_none());
        // A snapshot of another prefix loads nothing.
        assert!(matches!(
            import_snapshot(&db, &file, "b", "q/"),
            Err(SnapshotError::Foreign(..))
        ));
        assert!(db.is_empty());
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_snapshot_reads_back_as_written() {
        let bytes = sample();
        let r = SnapshotReader::new(&bytes[..]).unwrap();
        assert_eq!(r.header, header());
        let items = read_all(&bytes).unwrap();
        assert_eq!(items.len(), 6);
        assert_eq!(
            items[3],
            SnapshotItem::Attrs {
                posix: sample_attrs(),
                link: Some("in d".into())
            }
        );
        assert_eq!(
            items[4],
            SnapshotItem::Dir {
                dir: "d/".into(),
                listed_at: from_millis(1_700_000_000_002)
            }
        );
        assert_eq!(items[5], SnapshotItem::Entry(Entry::test_file("in d")));
    }

    #[test]
    fn attributes_follow_an_entry_or_are_refused() {
        let mut w = SnapshotWriter::new(Vec::new(), &header()).unwrap();
        w.dir("", from_millis(1)).unwrap();
        assert!(w.attrs(&sample_attrs(), None).is_err(), "before any entry");
        w.entry(&Entry::test_file("f")).unwrap();
        w.attrs(&sample_attrs(), None).unwrap();
        assert!(
            w.attrs(&sample_attrs(), None).is_err(),
            "twice for one entry"
        );
    }

    #[test]
    fn a_damaged_or_cut_snapshot_is_refused() {
        let bytes = sample();
        for cut in [bytes.len() - 1, bytes.len() - 9, bytes.len() / 2, 12] {
            assert!(read_all(&bytes[..cut]).is_err(), "cut at {cut} read");
        }
        // Every byte flipped in turn: refused, or (a bit the compressed
        // stream does not use) read as the same records, never as others.
        let right = read_all(&bytes).unwrap();
        for at in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[at] ^= 0x10;
            if let Ok(items) = read_all(&bad) {
                assert_eq!(items, right, "flipped byte {at} read as other records");
            }
        }
        let mut twice = bytes.clone();
        twice.extend_from_slice(&bytes);
        assert!(read_all(&twice).is_err(), "two snapshots in a row read");
        assert!(matches!(
            SnapshotReader::new(&b"not a snapshot at all"[..]),
            Err(SnapshotError::NotASnapshot)
        ));
    }
}
