//! Filesystem operations in S3 terms, independent of the FUSE wire protocol.
//!
//! [`S3Fs`] answers lookups, attributes and directory reads from the
//! [`Catalog`], file reads through the [`Reader`], and file writes through
//! the [`Writer`] ([`write`]); [`namespace`] holds unlink, mkdir, rmdir and
//! rename. The FUSE adapter in [`crate::fuse`] only translates kernel
//! requests into these calls. docs/SEMANTICS.md says what each does on S3.

mod claim_lock;
mod namespace;
mod posix_ops;
#[cfg(test)]
mod tests;
mod write_ops;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::SystemTime;

use bytes::Bytes;

use crate::blocking::blocking;
use crate::catalog::{Catalog, DirSource, Entry, EntryKind, Ino, ROOT_INO};
use crate::error::FsError;
use crate::names;
use crate::read::{PageCache, Reader, Repinned};
use crate::store::ObjectStore;
use crate::write::{Access, Uploads, Writer};
pub use posix_ops::{AttrChange, Creator, PosixMetadata};
pub use write_ops::{Release, WritePolicy};

/// What a read did to the attributes the kernel holds of its file; the
/// adapter tells the kernel to drop them, at the moment each case needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrsAfterRead {
    Unchanged,
    /// The file is now longer than the kernel believes: it must learn so
    /// before the reader reaches the old end, or it reports EOF there.
    Grew,
    /// Shorter or as long: the reply's short read already tells the kernel
    /// the new end, which an earlier invalidation would make it ignore.
    ShrankOrKept,
}

/// Ownership and permissions shown for files and directories whose
/// metadata says none, and whether metadata is kept at all.
#[derive(Debug, Clone, Copy)]
pub struct Ownership {
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    pub posix: PosixMetadata,
}

/// Attributes of one inode, in the terms of `stat(2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: Ino,
    pub is_dir: bool,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub is_symlink: bool,
    /// The last change of the object (its LastModified in S3).
    pub ctime: SystemTime,
    /// The object's metadata is still to be learned: the kernel must ask
    /// again rather than keep these.
    pub provisional: bool,
}

/// One row of a directory read.
pub struct DirRow {
    /// Position to resume after this row.
    pub next_offset: u64,
    pub name: String,
    pub attr: Attr,
}

/// An opened file, as the FUSE adapter answers the kernel with it.
pub struct Opened {
    pub fh: u64,
    /// How the handle may use the kernel's page cache.
    pub cache: PageCache,
    /// The object's data file, when the disk cache holds the version
    /// opened whole and checked, for the kernel to read itself
    /// (passthrough); only for read-only opens, and only when offered
    /// ([`S3Fs::offer_backing_files`]).
    pub backing: Option<std::fs::File>,
}

pub struct S3Fs<S: ObjectStore> {
    catalog: Catalog<S>,
    reader: Arc<Reader<S>>,
    writer: Writer<S>,
    policy: WritePolicy,
    owner: Ownership,
    dir_handles: Mutex<HashMap<u64, DirSource>>,
    next_dir_handle: AtomicU64,
    /// Read handles by inode, for fstat of a file unlinked while open (the
    /// kernel asks by inode, and the catalog has forgotten the name).
    read_handles: Mutex<HashMap<Ino, Vec<u64>>>,
    /// Set at shutdown: new writes are refused from then on.
    stopping: std::sync::atomic::AtomicBool,
    /// See [`S3Fs::offer_backing_files`].
    offer_backing: std::sync::atomic::AtomicBool,
    /// The locks of the renames this mount claims (docs/SEMANTICS.md, "Claims").
    claims: claim_lock::ClaimLocks,
    /// Fault injection for tests: a lookup of this name panics
    /// (`S3MOUNT_TEST_PANIC_ON_LOOKUP`), to show that a panicking handler
    /// answers EIO and the mount goes on.
    panic_on_lookup: Option<String>,
}

impl<S: ObjectStore> S3Fs<S> {
    pub fn new(
        catalog: Catalog<S>,
        reader: Reader<S>,
        uploads: Arc<Uploads<S>>,
        policy: WritePolicy,
        owner: Ownership,
    ) -> Self {
        let reader = Arc::new(reader);
        let root_prefix = catalog.dir_prefix(ROOT_INO).unwrap_or_default();
        S3Fs {
            claims: claim_lock::ClaimLocks::new(
                &root_prefix,
                policy.release_claim_locks_in_background,
            ),
            catalog,
            writer: Writer::new(uploads, reader.clone()),
            reader,
            policy,
            owner,
            dir_handles: Mutex::new(HashMap::new()),
            read_handles: Mutex::default(),
            next_dir_handle: AtomicU64::new(1),
            stopping: std::sync::atomic::AtomicBool::new(false),
            offer_backing: std::sync::atomic::AtomicBool::new(false),
            panic_on_lookup: std::env::var("S3MOUNT_TEST_PANIC_ON_LOOKUP").ok(),
        }
    }

    fn attr(&self, ino: Ino, entry: &Entry) -> Attr {
        let (is_dir, size, perm) = match &entry.kind {
            EntryKind::Dir => (true, 0, self.owner.dir_mode),
            EntryKind::File { size, .. } => (false, *size, self.owner.file_mode),
        };
        Attr {
            ino,
            is_dir,
            size,
            mtime: entry.mtime,
            perm,
            uid: self.owner.uid,
            gid: self.owner.gid,
            is_symlink: false,
            ctime: entry.mtime,
            provisional: false,
        }
    }

    /// Answers a kernel LOOKUP; the kernel then holds the inode (see
    /// [`S3Fs::sent_entry`]).
    pub async fn lookup(&self, parent: Ino, name: &str) -> Result<Attr, FsError> {
        if self.panic_on_lookup.as_deref() == Some(name) {
            panic!("test fault: lookup of {name}");
        }
        let attr = match self.open_file_attr_named(parent, name) {
            Some(attr) => attr,
            None => {
                let (ino, entry) = self.catalog.lookup(parent, name).await?;
                let (_, _, key) = self.catalog.location(ino)?;
                self.attr_learned(ino, parent, &key, &entry).await
            }
        };
        self.sent_entry(parent, name, &attr);
        Ok(attr)
    }

    /// Counts an entry about to be sent to the kernel (an entry reply or a
    /// readdirplus entry): the kernel holds its inode until it forgets it.
    pub fn sent_entry(&self, parent: Ino, name: &str, attr: &Attr) {
        if name == "." || name == ".." {
            return; // not counted by the kernel
        }
        let entry = Entry {
            name: name.to_owned(),
            kind: if attr.is_dir {
                EntryKind::Dir
            } else {
                EntryKind::File {
                    size: attr.size,
                    etag: String::new(),
                }
            },
            mtime: attr.mtime,
        };
        self.catalog.remember(parent, &entry, attr.ino);
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: Ino, n: u64) {
        self.catalog.forget(ino, n);
    }

    /// Readdir rows that were not sent as entries the kernel holds (plain
    /// readdir rows, and readdirplus rows that did not fit the reply):
    /// their inode numbers need not be kept.
    pub fn unsent(&self, rows: &[DirRow]) {
        self.catalog.drop_unsent(
            rows.iter()
                .filter(|r| r.name != "." && r.name != "..")
                .map(|r| r.attr.ino),
        );
    }

    /// Inodes known now (the kernel's working set, plus the root).
    pub fn inode_count(&self) -> usize {
        self.catalog.inode_count()
    }

    /// Attributes of `ino`; with the handle of an open file (`fstat`), also
    /// of a file unlinked since it was opened, as on a disk.
    pub async fn getattr(&self, ino: Ino, fh: Option<u64>) -> Result<Attr, FsError> {
        if let Some(attr) = self.open_file_attr(ino) {
            return Ok(attr);
        }
        match self.catalog.entry(ino).await {
            Ok(entry) => {
                let (parent, _, key) = self.catalog.location(ino)?;
                Ok(self.attr_learned(ino, parent, &key, &entry).await)
            }
            // fstat reaches here without its handle (the kernel sends none
            // for it): any read handle of the inode answers.
            Err(FsError::NotFound) => match fh
                .or_else(|| self.read_handle_of(ino))
                .and_then(|fh| self.reader.open_size(fh))
            {
                Some(size) => Ok(self.file_attr_now(ino, size)),
                None => Err(FsError::NotFound),
            },
            Err(e) => Err(e),
        }
    }

    /// Opens a file with open(2) `flags`; returns the handle and how the
    /// kernel may use its page cache (keep it only for a read-only open of
    /// an object unchanged since the last open).
    pub async fn open(&self, ino: Ino, flags: i32) -> Result<Opened, FsError> {
        let ordinary = |fh| Opened {
            fh,
            cache: PageCache::Invalidate,
            backing: None,
        };
        if Access::from_flags(flags).write {
            return Ok(ordinary(self.open_for_write(ino, flags).await?));
        }
        let read_only = Access {
            read: true,
            ..Access::default()
        };
        if let Some(joined) = self.writer.join(ino, read_only).await {
            // Open for writing here: read what was written, as on a disk.
            return Ok(ordinary(joined?));
        }
        let key = self.catalog.file_key(ino)?;
        match self.catalog.entry(ino).await?.kind {
            EntryKind::File { size, etag } => {
                let (fh, cache) = self.reader.open(&key, &etag, size);
                self.read_handles.lock().entry(ino).or_default().push(fh);
                let backing = match self.offer_backing.load(Ordering::Relaxed) {
                    true => blocking(|| self.reader.backing_file(&key, &etag, size)),
                    false => None,
                };
                Ok(Opened { fh, cache, backing })
            }
            EntryKind::Dir => Err(FsError::IsADirectory),
        }
    }

    /// Whether read-only opens look for a wholly cached data file to hand
    /// the kernel (set once the kernel has agreed to passthrough).
    pub fn offer_backing_files(&self, on: bool) {
        self.offer_backing.store(on, Ordering::Relaxed);
    }

    pub fn read_stats(&self) -> &crate::read::ReadStats {
        self.reader.stats()
    }

    /// Counters of the disk cache of object data, when there is one.
    pub fn data_cache_stats(&self) -> Option<&crate::read::disk_cache::DiskCacheStats> {
        self.reader.data_cache_stats()
    }

    pub fn catalog_stats(&self) -> &crate::catalog::CatalogStats {
        self.catalog.stats()
    }

    /// Counters of the attributes learned from object metadata.
    pub fn attr_stats(&self) -> &crate::catalog::AttrStats {
        self.catalog.attrs().stats()
    }

    pub fn upload_stats(&self) -> &crate::write::UploadStats {
        self.writer.uploads().stats()
    }

    /// Bytes held by spool files now.
    pub fn spool_used(&self) -> u64 {
        self.writer.uploads().spool_used()
    }

    pub fn memory(&self) -> crate::read::MemoryUse {
        self.reader.memory()
    }

    pub fn listing_summary(&self) -> crate::catalog::ListingSummary {
        self.catalog.memory_summary()
    }

    /// Files directly in the directory at `path` below the mount root.
    pub async fn count_files(&self, path: &str) -> Result<u64, FsError> {
        self.catalog.count_files(path).await
    }

    /// Lists the directory of `ino` (or `ino` itself) from S3 again now.
    pub async fn refresh(&self, ino: Ino) -> Result<(), FsError> {
        self.catalog.refresh(ino).await
    }

    /// Reads `len` bytes at `offset` of handle `fh` on `ino`. Also says
    /// whether the kernel's attributes of the file went stale: the handle
    /// found the object replaced by another client before its first byte
    /// and moved to the current version, which the catalog now records.
    pub async fn read(
        &self,
        ino: Ino,
        fh: u64,
        offset: u64,
        len: u32,
    ) -> Result<(Bytes, AttrsAfterRead), FsError> {
        let kernel_reads = &self.reader.stats().kernel_reads;
        kernel_reads.fetch_add(1, Ordering::Relaxed);
        if Writer::<S>::owns(fh) {
            let bytes = self.writer.read(fh, offset, len).await?;
            return Ok((bytes, AttrsAfterRead::Unchanged));
        }
        let bytes = self.reader.read(fh, offset, len).await?;
        let Some(Repinned { opened_size, now }) = self.reader.take_repinned(fh) else {
            return Ok((bytes, AttrsAfterRead::Unchanged));
        };
        if let Ok((parent, name, _)) = self.catalog.location(ino) {
            let entry = Entry {
                name: name.clone(),
                kind: EntryKind::File {
                    size: now.size,
                    etag: now.etag,
                },
                mtime: now.last_modified,
            };
            self.catalog.record(parent, &name, Some(entry))?;
        }
        let change = if now.size > opened_size {
            AttrsAfterRead::Grew
        } else {
            AttrsAfterRead::ShrankOrKept
        };
        Ok((bytes, change))
    }

    /// Opens a directory stream. It reads one listing throughout, so a
    /// stream read in several calls is consistent: a snapshot of a known
    /// listing, or, for a directory not listed yet, the listing as it
    /// arrives (the first entries are returned before the last page is in).
    pub async fn opendir(&self, ino: Ino) -> Result<u64, FsError> {
        // Files whose last descriptor just closed are listed once stored.
        self.writer.settle_dir(ino).await;
        let source = self.catalog.open_dir(ino).await?;
        self.catalog.note_opendir(ino);
        let fh = self.next_dir_handle.fetch_add(1, Ordering::Relaxed);
        self.dir_handles.lock().insert(fh, source);
        Ok(fh)
    }

    fn read_handle_of(&self, ino: Ino) -> Option<u64> {
        self.read_handles.lock().get(&ino)?.first().copied()
    }

    /// Forgets read handle `fh` of `ino` (RELEASE).
    pub(super) fn forget_read_handle(&self, ino: Ino, fh: u64) {
        let mut handles = self.read_handles.lock();
        if let Some(fhs) = handles.get_mut(&ino) {
            fhs.retain(|h| *h != fh);
            if fhs.is_empty() {
                handles.remove(&ino);
            }
        }
    }

    pub fn releasedir(&self, fh: u64) {
        self.dir_handles.lock().remove(&fh);
    }

    /// Rows of directory handle `fh` from `offset` on, `.` and `..` first.
    /// Returns at most `limit` rows; the caller stops earlier when its
    /// buffer is full and resumes at the last row's `next_offset`.
    pub async fn readdir(
        &self,
        ino: Ino,
        fh: u64,
        offset: u64,
        limit: usize,
    ) -> Result<Vec<DirRow>, FsError> {
        let source = self
            .dir_handles
            .lock()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)?;
        let mut rows = Vec::new();
        let dir_entry = Entry {
            name: String::new(),
            kind: EntryKind::Dir,
            mtime: self.catalog.mounted_at(),
        };
        let prefix = self.catalog.dir_prefix(ino)?;
        if offset == 0 {
            rows.push(DirRow {
                next_offset: 1,
                name: ".".into(),
                attr: self.attr_known(ino, &prefix, &dir_entry),
            });
        }
        if offset <= 1 {
            let parent = if ino == ROOT_INO {
                ROOT_INO
            } else {
                self.catalog.parent(ino)?
            };
            rows.push(DirRow {
                next_offset: 2,
                name: "..".into(),
                attr: self.attr(parent, &dir_entry),
            });
        }
        // Offsets 0 and 1 are `.` and `..`; entry positions start at 1.
        let after = offset.saturating_sub(2);
        let wanted = limit.saturating_sub(rows.len());
        let page = match &source {
            DirSource::Complete(listing) => listing.page(after, wanted),
            DirSource::Growing(growing) => growing.read(after as usize, wanted).await?,
        };
        let inos = self.catalog.resolve_all(ino, page.iter().map(|(_, e)| e))?;
        if self.owner.posix == PosixMetadata::Full {
            let entries: Vec<Entry> = page.iter().map(|(_, e)| e.clone()).collect();
            self.learn_page(&prefix, &entries).await;
        }
        for ((position, entry), child) in page.into_iter().zip(inos) {
            let key = match entry.is_dir() {
                true => names::child_dir_prefix(&prefix, &entry.name),
                false => names::child_key(&prefix, &entry.name),
            };
            rows.push(DirRow {
                next_offset: position + 2,
                attr: self.attr_known(child, &key, &entry),
                name: entry.name,
            });
        }
        Ok(rows)
    }

    pub fn open_files(&self) -> usize {
        self.reader.open_handles()
    }
}
