//! In-process mounts: an [`S3Fs`] over any [`ObjectStore`] (the in-memory
//! one, with or without injected faults), driven by path the way the kernel
//! drives it through FUSE (lookups the kernel then holds; open, write,
//! FLUSH and RELEASE for a close; readdir in pages). No root, no
//! /dev/fuse, no server: the fast tier of the test suite.
//!
//! The real-FUSE integration tests in tests/ check the same behaviours on
//! a real mount of a real server; these check many more cases of them.

mod catalog_through_fs;
mod claims;
mod files;
mod namespace_ops;
mod posix_attrs;
mod reads;
mod reference_model;

use std::sync::Arc;
use std::time::Duration;

use fuser::RenameFlags;

use super::{Attr, AttrChange, Creator, Ownership, PosixMetadata, S3Fs, WritePolicy};
use crate::catalog::{Catalog, CatalogDb, Freshness, Ino, ROOT_INO};
use crate::error::FsError;
use crate::read::disk_cache::DiskCache;
use crate::read::{ReadConfig, Reader};
use crate::scratch_dir::ScratchDir;
use crate::store::{FaultPlan, FaultyStore, MemoryStore, ObjectStore};
use crate::write::{UploadConfig, Uploads};

pub(crate) use crate::store::memory::{join_all, run_on_one_thread as run};
pub(crate) use std::sync::atomic::Ordering;

/// What a test mount is built with; `Default` is a read-write mount of the
/// whole bucket with listings fresh for an hour.
#[derive(Clone)]
pub(crate) struct Settings {
    pub prefix: String,
    pub ttl: Duration,
    pub policy: WritePolicy,
    /// Parts of multipart uploads (and the threshold for one PUT).
    pub part_size: u64,
    pub max_modify_size: u64,
    pub read: ReadConfig,
    /// A data cache of this size, in a directory kept across remounts.
    pub data_cache: Option<u64>,
    pub posix: PosixMetadata,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            prefix: String::new(),
            ttl: Duration::from_secs(3600),
            policy: WritePolicy::default(),
            part_size: 5 * 1024 * 1024,
            max_modify_size: 64 * 1024 * 1024,
            read: ReadConfig {
                memory_limit: 64 * 1024 * 1024,
                ..ReadConfig::default()
            },
            data_cache: None,
            posix: PosixMetadata::Lazy,
        }
    }
}

/// One mount's state that outlives a remount: its cache directory.
struct Disk {
    catalog: ScratchDir,
    spool: ScratchDir,
    data: ScratchDir,
}

pub(crate) struct TestMount<S: ObjectStore> {
    fs: Option<S3Fs<S>>,
    store: Arc<S>,
    settings: Settings,
    disk: Disk,
}

/// Who creates files in test mounts: uid 1000 with umask 022.
pub(crate) const CREATOR: Creator = Creator {
    uid: 1000,
    gid: 1000,
    perm: 0o644,
};

/// Size of the kernel's read requests, as FUSE sends them.
const READ_SIZE: u32 = 128 * 1024;

impl TestMount<MemoryStore> {
    /// A mount of a new in-memory bucket that enforces write conditions.
    pub fn new() -> Self {
        Self::with(Settings::default())
    }

    /// The same, built with `settings`.
    pub fn with(settings: Settings) -> Self {
        Self::over(Arc::new(MemoryStore::new(true)), settings)
    }
}

impl Settings {
    /// The default settings with the write policy `policy`.
    pub fn policy(policy: WritePolicy) -> Self {
        Settings {
            policy,
            ..Settings::default()
        }
    }
}

impl TestMount<FaultyStore<MemoryStore>> {
    /// A mount over `memory` with the faults of `plan` injected.
    pub fn faulty(memory: Arc<MemoryStore>, plan: FaultPlan, settings: Settings) -> Self {
        Self::over(Arc::new(FaultyStore::new(memory, plan)), settings)
    }
}

impl<S: ObjectStore> TestMount<S> {
    pub fn over(store: Arc<S>, settings: Settings) -> Self {
        let disk = Disk {
            catalog: ScratchDir::new("fs-catalog"),
            spool: ScratchDir::new("fs-spool"),
            data: ScratchDir::new("fs-data"),
        };
        let mut mount = TestMount {
            fs: None,
            store,
            settings,
            disk,
        };
        let db =
            CatalogDb::open(mount.disk.catalog.path(), "test-target").expect("a new catalog opens");
        mount.fs = Some(mount.build(db));
        mount
    }

    fn build(&self, db: Arc<CatalogDb>) -> S3Fs<S> {
        let settings = &self.settings;
        let freshness = Freshness {
            ttl: settings.ttl,
            serve_stale: false,
        };
        let catalog = Catalog::new(
            self.store.clone(),
            &settings.prefix,
            freshness,
            Some(db),
            100_000,
        );
        let data_cache = settings.data_cache.map(|size| {
            DiskCache::open(self.disk.data.path(), "bucket", size).expect("open the data cache")
        });
        let uploads = Uploads::new(
            self.store.clone(),
            UploadConfig {
                part_size: settings.part_size,
                spool_dir: self.disk.spool.path().to_owned(),
                max_parts_in_flight: 4,
                max_concurrent_parts: 8,
                spool_limit: 1 << 30,
                max_modify_size: settings.max_modify_size,
                data_cache: data_cache.clone(),
                cache_segment: settings.read.part_size,
            },
        );
        let owner = Ownership {
            uid: 1000,
            gid: 1000,
            file_mode: 0o644,
            dir_mode: 0o755,
            posix: settings.posix,
        };
        S3Fs::new(
            catalog,
            Reader::new(self.store.clone(), settings.read.clone(), data_cache),
            uploads,
            settings.policy,
            owner,
        )
    }

    pub fn fs(&self) -> &S3Fs<S> {
        self.fs.as_ref().expect("mounted")
    }

    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Unmounts and mounts again with the same cache directories, as a
    /// restarted daemon would (the catalog and data cache are kept).
    pub async fn remount(&mut self) {
        self.fs = None;
        // The old mount's background tasks (a tree walk, a listing being
        // written) end soon after it and release the catalog.
        for _ in 0..1000 {
            if let Some(db) = CatalogDb::open(self.disk.catalog.path(), "test-target") {
                self.fs = Some(self.build(db));
                return;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        panic!("the catalog is still held 2 s after the mount was dropped");
    }

    /// A second mount of the same store with its own cache directories, as
    /// another machine of a fleet would have.
    pub fn another(&self) -> TestMount<S> {
        TestMount::over(self.store.clone(), self.settings.clone())
    }

    /// The inode of `path` ("" is the root), looked up component by
    /// component as the kernel does.
    pub async fn resolve(&self, path: &str) -> Result<Attr, FsError> {
        let mut attr = self.fs().getattr(ROOT_INO, None).await?;
        for name in path.split('/').filter(|c| !c.is_empty()) {
            attr = self.fs().lookup(attr.ino, name).await?;
        }
        Ok(attr)
    }

    /// The parent directory's inode and the last component of `path`.
    async fn parent_of<'p>(&self, path: &'p str) -> Result<(Ino, &'p str), FsError> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let parent = self.resolve(dir).await?;
        if !parent.is_dir {
            return Err(FsError::NotADirectory);
        }
        Ok((parent.ino, name))
    }

    /// open(2) with `flags` (O_CREAT goes through CREATE, as the kernel
    /// sends it when the name is not there); returns the handle and inode.
    pub async fn open(&self, path: &str, flags: i32) -> Result<(u64, Ino), FsError> {
        let (parent, name) = self.parent_of(path).await?;
        let exists = match self.fs().lookup(parent, name).await {
            Ok(attr) => Some(attr),
            Err(FsError::NotFound) => None,
            Err(e) => return Err(e),
        };
        match exists {
            Some(_) if flags & libc::O_CREAT != 0 && flags & libc::O_EXCL != 0 => {
                Err(FsError::Exists)
            }
            Some(attr) => Ok((self.fs().open(attr.ino, flags).await?.fh, attr.ino)),
            None if flags & libc::O_CREAT != 0 => {
                let (attr, fh) = self.fs().create(parent, name, flags, Some(CREATOR)).await?;
                Ok((fh, attr.ino))
            }
            None => Err(FsError::NotFound),
        }
    }

    /// close(2): FLUSH, whose answer close returns, then RELEASE.
    pub async fn close(&self, fh: u64, ino: Ino) -> Result<(), FsError> {
        let flushed = self.fs().flush(fh).await;
        let release = self.fs().begin_release(ino, fh);
        self.fs().release(release).await;
        flushed
    }

    /// Writes all of `data` at `offset` in the kernel's 128 KiB requests.
    pub async fn write_at(&self, fh: u64, offset: u64, data: &[u8]) -> Result<(), FsError> {
        for (i, chunk) in data.chunks(READ_SIZE as usize).enumerate() {
            let at = offset + (i * READ_SIZE as usize) as u64;
            let n = self.fs().write(fh, at, chunk.to_vec()).await?;
            assert_eq!(n as usize, chunk.len(), "short write");
        }
        Ok(())
    }

    /// `len` bytes at `offset`, or fewer at the end of the file.
    pub async fn read_at(
        &self,
        fh: u64,
        ino: Ino,
        offset: u64,
        len: u64,
    ) -> Result<Vec<u8>, FsError> {
        let mut out = Vec::new();
        while (out.len() as u64) < len {
            let want = READ_SIZE.min((len - out.len() as u64) as u32);
            let (bytes, _) = self
                .fs()
                .read(ino, fh, offset + out.len() as u64, want)
                .await?;
            let short = bytes.len() < want as usize;
            out.extend_from_slice(&bytes);
            if short {
                break;
            }
        }
        Ok(out)
    }

    /// `cp data path`: create or truncate, write, close.
    pub async fn write_file(&self, path: &str, data: &[u8]) -> Result<(), FsError> {
        let (fh, ino) = self
            .open(path, libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC)
            .await?;
        let written = self.write_at(fh, 0, data).await;
        let closed = self.close(fh, ino).await;
        written.and(closed)
    }

    /// `set -o noclobber; echo > path`: create-only.
    pub async fn create_new(&self, path: &str, data: &[u8]) -> Result<(), FsError> {
        let (fh, ino) = self
            .open(path, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL)
            .await?;
        let written = self.write_at(fh, 0, data).await;
        let closed = self.close(fh, ino).await;
        written.and(closed)
    }

    /// `cat data >> path`.
    pub async fn append(&self, path: &str, data: &[u8]) -> Result<(), FsError> {
        let (fh, ino) = self.open(path, libc::O_WRONLY | libc::O_APPEND).await?;
        // With O_APPEND the kernel writes at the size it knows.
        let size = self.fs().getattr(ino, Some(fh)).await?.size;
        let written = self.write_at(fh, size, data).await;
        let closed = self.close(fh, ino).await;
        written.and(closed)
    }

    /// Opens `path` read-write and writes `data` at `offset` (`dd conv=notrunc`).
    pub async fn overwrite_at(&self, path: &str, offset: u64, data: &[u8]) -> Result<(), FsError> {
        let (fh, ino) = self.open(path, libc::O_RDWR).await?;
        let written = self.write_at(fh, offset, data).await;
        let closed = self.close(fh, ino).await;
        written.and(closed)
    }

    /// truncate(2).
    pub async fn truncate(&self, path: &str, size: u64) -> Result<(), FsError> {
        let attr = self.resolve(path).await?;
        self.fs()
            .setattr(attr.ino, None, Some(size), AttrChange::default())
            .await?;
        Ok(())
    }

    /// chmod, chown, touch -d: `change` applied to `path`.
    pub async fn set_attrs(&self, path: &str, change: AttrChange) -> Result<Attr, FsError> {
        let attr = self.resolve(path).await?;
        self.fs().setattr(attr.ino, None, None, change).await
    }

    /// `ln -s target path`.
    pub async fn symlink(&self, target: &str, path: &str) -> Result<Attr, FsError> {
        let (parent, name) = self.parent_of(path).await?;
        self.fs().symlink(parent, name, target, CREATOR).await
    }

    /// `readlink path`.
    pub async fn readlink(&self, path: &str) -> Result<String, FsError> {
        let attr = self.resolve(path).await?;
        self.fs().readlink(attr.ino).await
    }

    /// `ls -l path`: each row's attributes, as readdirplus gives them.
    pub async fn list_attrs(&self, path: &str) -> Result<Vec<(String, Attr)>, FsError> {
        let dir = self.resolve(path).await?;
        let fh = self.fs().opendir(dir.ino).await?;
        let mut out = Vec::new();
        let mut offset = 0;
        let read = loop {
            match self.fs().readdir(dir.ino, fh, offset, 64).await {
                Ok(rows) if rows.is_empty() => break Ok(()),
                Ok(rows) => {
                    offset = rows.last().unwrap().next_offset;
                    out.extend(
                        rows.into_iter()
                            .filter(|r| r.name != "." && r.name != "..")
                            .map(|r| (r.name, r.attr)),
                    );
                }
                Err(e) => break Err(e),
            }
        };
        self.fs().releasedir(fh);
        read.map(|()| out)
    }

    /// `cat path`.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, FsError> {
        let (fh, ino) = self.open(path, libc::O_RDONLY).await?;
        let mut out = Vec::new();
        let read = loop {
            match self.fs().read(ino, fh, out.len() as u64, READ_SIZE).await {
                Ok((bytes, _)) if bytes.is_empty() => break Ok(()),
                Ok((bytes, _)) => out.extend_from_slice(&bytes),
                Err(e) => break Err(e),
            }
        };
        self.close(fh, ino).await?;
        read.map(|()| out)
    }

    /// `ls -a path` without `.` and `..`, in the order readdir gives,
    /// read in pages of `page` rows.
    pub async fn list_paged(&self, path: &str, page: usize) -> Result<Vec<String>, FsError> {
        let dir = self.resolve(path).await?;
        let fh = self.fs().opendir(dir.ino).await?;
        let mut names = Vec::new();
        let mut offset = 0;
        let read = loop {
            match self.fs().readdir(dir.ino, fh, offset, page).await {
                Ok(rows) if rows.is_empty() => break Ok(()),
                Ok(rows) => {
                    offset = rows.last().unwrap().next_offset;
                    for row in rows {
                        if row.name != "." && row.name != ".." {
                            names.push(row.name);
                        }
                    }
                }
                Err(e) => break Err(e),
            }
        };
        self.fs().releasedir(fh);
        read.map(|()| names)
    }

    pub async fn list(&self, path: &str) -> Result<Vec<String>, FsError> {
        self.list_paged(path, 64).await
    }

    pub async fn mkdir(&self, path: &str) -> Result<(), FsError> {
        let (parent, name) = self.parent_of(path).await?;
        let creator = Creator {
            perm: 0o755,
            ..CREATOR
        };
        self.fs().mkdir(parent, name, creator).await.map(|_| ())
    }

    pub async fn rmdir(&self, path: &str) -> Result<(), FsError> {
        let (parent, name) = self.parent_of(path).await?;
        self.fs().rmdir(parent, name).await
    }

    pub async fn unlink(&self, path: &str) -> Result<(), FsError> {
        let (parent, name) = self.parent_of(path).await?;
        self.fs().unlink(parent, name).await
    }

    /// rename(2), or `mv -n` (RENAME_NOREPLACE) with `no_replace`.
    pub async fn rename(&self, from: &str, to: &str, no_replace: bool) -> Result<(), FsError> {
        // The kernel looks the source up before it sends RENAME.
        self.resolve(from).await?;
        let (parent, name) = self.parent_of(from).await?;
        let (new_parent, new_name) = self.parent_of(to).await?;
        let flags = match no_replace {
            true => RenameFlags::RENAME_NOREPLACE,
            false => RenameFlags::empty(),
        };
        self.fs()
            .rename(parent, name, new_parent, new_name, flags)
            .await
    }
}

impl MemoryStore {
    /// Every key with its bytes as text, for assertions on what is in S3.
    pub fn contents(&self) -> Vec<(String, String)> {
        self.keys()
            .into_iter()
            .map(|k| {
                let bytes = self.bytes(&k).unwrap_or_default();
                (k, String::from_utf8_lossy(&bytes).into_owned())
            })
            .collect()
    }
}

/// The errno a program would see for `result`'s error.
pub(crate) fn errno_of<T: std::fmt::Debug>(result: Result<T, FsError>) -> i32 {
    result.expect_err("the call should fail").errno()
}
