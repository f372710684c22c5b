//! Spool files: local, unlinked files that hold what is written through the
//! mount until it is an object, and the one disk budget they all share.
//!
//! A spool file is unlinked the moment it is created, so a crash leaves
//! nothing behind and its space is freed when the last descriptor closes.
//! Requests that upload from it read it through `/proc/self/fd/N`, which
//! lives exactly as long as the file. Every spool file takes what it holds
//! from [`SpoolBudget`]; a write that would go beyond the budget fails with
//! ENOSPC instead of filling the disk.

use std::fs::File;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tracing::{debug, warn};

use crate::error::FsError;
use crate::store::Body;

/// Disk space that all spool files together may hold.
#[derive(Debug)]
pub struct SpoolBudget {
    limit: u64,
    used: AtomicU64,
}

impl SpoolBudget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(SpoolBudget {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// Bytes held by spool files now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn give(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::Relaxed);
    }
}

pub struct SpoolFile {
    file: Arc<File>,
    path: PathBuf,
    budget: Arc<SpoolBudget>,
    /// Bytes of the budget this file holds: what its owner reserved for
    /// data in it, less what was released or punched out.
    held: AtomicU64,
}

/// Names spool files apart within this process.
static SPOOL_COUNTER: AtomicU64 = AtomicU64::new(0);

impl SpoolFile {
    /// Creates a spool file in `dir` and unlinks it at once.
    pub fn create(dir: &Path, budget: Arc<SpoolBudget>) -> Result<Self, FsError> {
        let n = SPOOL_COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = dir.join(format!(".s3mount-spool-{}-{n}", std::process::id()));
        let file = open_unlinked(&path).map_err(|e| {
            warn!(dir = %dir.display(), error = %e, "cannot create a spool file");
            FsError::from_spool_io(&format!("{}", dir.display()), e)
        })?;
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        Ok(SpoolFile {
            file: Arc::new(file),
            path,
            budget,
            held: AtomicU64::new(0),
        })
    }

    /// Takes room in the budget for `n` more bytes of data; ENOSPC when
    /// the budget has none left.
    pub fn reserve(&self, n: u64) -> Result<(), FsError> {
        if n == 0 {
            return Ok(());
        }
        if !self.budget.take(n) {
            warn!(
                limit = self.budget.limit,
                used = self.budget.used(),
                "the spool is full (--spool-limit); a write fails with ENOSPC"
            );
            return Err(FsError::NoSpace);
        }
        self.held.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// Gives back room for `n` bytes that are no longer in the file.
    pub fn release(&self, n: u64) {
        let given = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| Some(h - n.min(h)))
            .map_or(0, |before| n.min(before));
        self.budget.give(given);
    }

    /// Writes `data` at `offset`, off the async workers.
    pub async fn write_at(&self, data: Vec<u8>, offset: u64) -> Result<(), FsError> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || file.write_all_at(&data, offset))
            .await
            .map_err(|e| FsError::Spool(e.to_string()))?
            .map_err(|e| FsError::from_spool_io("write", e))
    }

    /// Reads `len` bytes at `offset`; holes, and bytes past the file's
    /// end, read as zeros.
    pub async fn read_at(&self, offset: u64, len: usize) -> Result<Vec<u8>, FsError> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0; len];
            crate::positioned_read::read_full_at(&file, &mut buf, offset)?;
            Ok(buf)
        })
        .await
        .map_err(|e| FsError::Spool(e.to_string()))?
        .map_err(|e| FsError::from_spool_io("read", e))
    }

    /// Sets the file's length: bytes past it are gone, and growing it again
    /// reads as zeros. The owner releases what it no longer holds.
    pub fn set_len(&self, len: u64) -> Result<(), FsError> {
        self.file
            .set_len(len)
            .map_err(|e| FsError::from_spool_io("truncate", e))
    }

    /// Makes the file at least `len` bytes long (the rest reads as zeros),
    /// so an upload of `[0, len)` finds every byte.
    pub fn ensure_len(&self, len: u64) -> Result<(), FsError> {
        let current = self
            .file
            .metadata()
            .map_err(|e| FsError::from_spool_io("stat", e))?
            .len();
        if current < len {
            self.file
                .set_len(len)
                .map_err(|e| FsError::from_spool_io("extend", e))?;
        }
        Ok(())
    }

    /// A request body reading `range` of this file.
    pub fn body(&self, range: Range<u64>) -> Body {
        Body::File {
            path: self.path.clone(),
            offset: range.start,
            len: range.end - range.start,
        }
    }

    /// Frees the disk blocks of `range`, uploaded already, and gives them
    /// back to the budget. Best effort on the disk: a file system without
    /// hole punching keeps the blocks until the file closes.
    pub fn punch(&self, range: Range<u64>) {
        let len = range.end - range.start;
        use nix::fcntl::{fallocate, FallocateFlags};
        // KEEP_SIZE leaves the file's length as it is.
        if let Err(e) = fallocate(
            &*self.file,
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            range.start as libc::off_t,
            len as libc::off_t,
        ) {
            debug!(error = %e, "cannot free spooled bytes early");
        }
        self.release(len);
    }
}

impl Drop for SpoolFile {
    fn drop(&mut self) {
        self.budget.give(*self.held.get_mut());
    }
}

/// Creates a file and unlinks it at once, private to this user.
fn open_unlinked(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    std::fs::remove_file(path)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_shared_and_given_back() {
        let dir = std::env::temp_dir();
        let budget = SpoolBudget::new(100);
        let a = SpoolFile::create(&dir, budget.clone()).unwrap();
        let b = SpoolFile::create(&dir, budget.clone()).unwrap();
        a.reserve(60).unwrap();
        assert!(matches!(b.reserve(50), Err(FsError::NoSpace)));
        b.reserve(40).unwrap();
        assert_eq!(budget.used(), 100);
        a.punch(0..30);
        assert_eq!(budget.used(), 70);
        a.release(100); // never more than it holds
        assert_eq!(budget.used(), 40);
        drop(a);
        assert_eq!(budget.used(), 40);
        b.release(20);
        assert_eq!(budget.used(), 20);
        drop(b);
        assert_eq!(budget.used(), 0);
    }
}
