//! Creating and writing files, in filesystem terms: create, mknod, open for
//! writing, write, setattr, flush, fsync and release.
//!
//! The data work is the write path's ([`crate::write::Writer`]); this layer
//! adds the catalog (what exists, what a commit stored) and the mount's
//! write policy. A file being written is visible to lookups on this mount
//! with its current size; a file that is not an object yet is not in
//! directory listings until it is stored.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use tracing::warn;

use super::{Attr, AttrChange, Creator, S3Fs};
use crate::catalog::{Entry, EntryKind, Ino};
use crate::error::FsError;
use crate::names;
use crate::read::ClosedRead;
use crate::store::{Body, ObjectStore, WriteCondition};
use crate::write::{Access, Committed, PendingAttrs, Place, WritableFile, Writer};

/// Which modifications the mount allows.
#[derive(Debug, Clone, Copy, Default)]
pub struct WritePolicy {
    /// Refuse every modification (EROFS).
    pub read_only: bool,
    /// Refuse unlink and rmdir (EPERM). Renames stay allowed: they keep the data.
    pub no_delete: bool,
    /// Refuse replacing or changing an existing file, by writing or by
    /// renaming onto it.
    pub no_overwrite: bool,
    /// Whether a rename that won a claim deletes its lock after it
    /// returns (in the background) rather than before (see `claim_lock`).
    pub release_claim_locks_in_background: bool,
}

/// What the kernel's RELEASE of a handle leaves to do; see
/// [`S3Fs::begin_release`].
pub enum Release<S: ObjectStore> {
    /// A read handle, closed already; its key may have a delete due.
    Read(Option<ClosedRead>),
    /// The last descriptor of a file open for writing: store it.
    LastWrite(Arc<WritableFile<S>>),
    Nothing,
}

impl<S: ObjectStore> S3Fs<S> {
    pub(super) fn writable(&self) -> Result<(), FsError> {
        if self.policy.read_only || self.stopping.load(Ordering::Relaxed) {
            return Err(FsError::ReadOnly);
        }
        Ok(())
    }

    /// Refuses every modification from now on (EROFS), at shutdown.
    pub fn stop_writes(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    pub(super) fn file_attr_now(&self, ino: Ino, size: u64) -> Attr {
        self.attr(
            ino,
            &Entry {
                name: String::new(),
                kind: EntryKind::File {
                    size,
                    etag: String::new(),
                },
                mtime: SystemTime::now(),
            },
        )
    }

    /// Attributes of `ino` while it is open for writing.
    pub(super) fn open_file_attr(&self, ino: Ino) -> Option<Attr> {
        let file = self.writer.file(ino)?;
        Some(self.writing_attr(&file))
    }

    /// Attributes of `name` in `parent` while it is open for writing.
    pub(super) fn open_file_attr_named(&self, parent: Ino, name: &str) -> Option<Attr> {
        let file = self.writer.file_named(parent, name)?;
        Some(self.writing_attr(&file))
    }

    fn writing_attr(&self, file: &WritableFile<S>) -> Attr {
        let mut attr = self.file_attr_now(file.ino, file.size());
        if let Some(posix) = file.attrs.get() {
            Self::apply_posix(&mut attr, &posix);
        }
        attr
    }

    /// Checks a new name: one S3 can hold and the kernel can pass.
    pub(super) fn check_new_name(&self, prefix: &str, name: &str) -> Result<(), FsError> {
        match names::check_name(name) {
            Ok(()) => {}
            Err(names::Unrepresentable::TooLong) => return Err(FsError::NameTooLong),
            Err(_) => return Err(FsError::Invalid("a name S3 keys cannot carry")),
        }
        if prefix.len() + name.len() > names::MAX_KEY_LEN {
            return Err(FsError::NameTooLong);
        }
        Ok(())
    }

    /// Whether `name` in `parent` may be created: not a directory, and not
    /// replacing a file under --no-overwrite.
    async fn may_create(&self, parent: Ino, name: &str) -> Result<(), FsError> {
        match self.catalog.lookup(parent, name).await {
            Ok((_, e)) if e.is_dir() => Err(FsError::IsADirectory),
            Ok(_) if self.policy.no_overwrite => {
                Err(FsError::NotPermitted("--no-overwrite is set"))
            }
            Ok(_) | Err(FsError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn new_file_entry(name: &str) -> Entry {
        Entry {
            name: name.to_owned(),
            kind: EntryKind::File {
                size: 0,
                etag: String::new(),
            },
            mtime: SystemTime::now(),
        }
    }

    /// Creates `name` in `parent` for `creator` and opens it with `flags`.
    pub async fn create(
        &self,
        parent: Ino,
        name: &str,
        flags: i32,
        creator: Option<Creator>,
    ) -> Result<(Attr, u64), FsError> {
        self.writable()?;
        let prefix = self.catalog.dir_prefix(parent)?;
        self.check_new_name(&prefix, name)?;
        self.may_create(parent, name).await?;
        let ino = self.catalog.resolve(parent, &Self::new_file_entry(name))?;
        if self.writer.settle(ino).await.is_some() {
            return Err(FsError::Busy(
                "the file is being written through this mount",
            ));
        }
        let place = Place {
            parent,
            name: name.to_owned(),
            key: names::child_key(&prefix, name),
        };
        let attrs = self.new_file_attrs(creator);
        let fh = self
            .writer
            .create(ino, place, Access::from_flags(flags), attrs)?;
        let attr = self
            .open_file_attr(ino)
            .unwrap_or(self.file_attr_now(ino, 0));
        self.sent_entry(parent, name, &attr);
        Ok((attr, fh))
    }

    /// Checks that `name` may be created in `parent` by mknod or mkdir (a
    /// writable mount, a valid name, nothing there yet); returns the
    /// parent's key prefix.
    pub(super) async fn free_name(&self, parent: Ino, name: &str) -> Result<String, FsError> {
        self.writable()?;
        let prefix = self.catalog.dir_prefix(parent)?;
        self.check_new_name(&prefix, name)?;
        if self.open_file_attr_named(parent, name).is_some() {
            return Err(FsError::Exists);
        }
        match self.catalog.lookup(parent, name).await {
            Ok(_) => Err(FsError::Exists),
            Err(FsError::NotFound) => Ok(prefix),
            Err(e) => Err(e),
        }
    }

    /// mknod(S_IFREG): an empty file, stored at once.
    pub async fn mknod(
        &self,
        parent: Ino,
        name: &str,
        creator: Option<Creator>,
    ) -> Result<Attr, FsError> {
        let prefix = self.free_name(parent, name).await?;
        let key = names::child_key(&prefix, name);
        self.writer.cancel_delete(&key);
        let posix = self.new_file_attrs(creator).for_commit();
        let etag = self
            .store()
            .put(&key, Body::Empty, WriteCondition::Always, &posix)
            .await
            .map_err(|e| FsError::store(&key, e))?;
        self.record_file(parent, name, 0, etag.clone())?;
        self.record_attrs(&key, &etag, posix, None);
        let ino = self.catalog.resolve(parent, &Self::new_file_entry(name))?;
        let mut attr = self.file_attr_now(ino, 0);
        Self::apply_posix(&mut attr, &posix);
        self.sent_entry(parent, name, &attr);
        Ok(attr)
    }

    /// Opens `ino` for writing (and maybe reading) with `flags`, joining
    /// the file if it is open for writing already.
    pub(super) async fn open_for_write(&self, ino: Ino, flags: i32) -> Result<u64, FsError> {
        self.writable()?;
        let access = Access::from_flags(flags);
        loop {
            if let Some(joined) = self.writer.join(ino, access).await {
                return joined;
            }
            let (parent, name, key) = self.catalog.location(ino)?;
            let entry = self.catalog.entry(ino).await?;
            let (etag, size) = match entry.kind {
                EntryKind::File { size, etag } => (etag, size),
                EntryKind::Dir => return Err(FsError::IsADirectory),
            };
            if access.truncate && size > 0 && self.policy.no_overwrite {
                return Err(FsError::NotPermitted("--no-overwrite is set"));
            }
            let kept = self.kept_posix(&key, &etag, Some(entry.mtime)).await?;
            let attrs = PendingAttrs::new(kept);
            let place = Place { parent, name, key };
            if let Some(fh) = self.writer.open(ino, place, (&etag, size), access, attrs)? {
                return Ok(fh);
            }
            // Opened for writing by another descriptor meanwhile: join it.
        }
    }

    pub async fn write(&self, fh: u64, offset: u64, data: Vec<u8>) -> Result<u32, FsError> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(FsError::ReadOnly);
        }
        if self.policy.no_overwrite && self.writer.changes_existing(fh) {
            return Err(FsError::NotPermitted("--no-overwrite is set"));
        }
        self.writer.write(fh, offset, data).await
    }

    /// Changes the size of `ino` (truncate, ftruncate), its mode, owner
    /// and times, then answers its attributes (see docs/SEMANTICS.md).
    pub async fn setattr(
        &self,
        ino: Ino,
        fh: Option<u64>,
        size: Option<u64>,
        change: AttrChange,
    ) -> Result<Attr, FsError> {
        if let Some(size) = size {
            self.writable()?;
            match fh.filter(|&fh| Writer::<S>::owns(fh)) {
                // ftruncate: that descriptor's file, whatever is now under
                // its name (it may have been unlinked or replaced).
                Some(fh) => {
                    if self.policy.no_overwrite && self.writer.changes_existing(fh) {
                        return Err(FsError::NotPermitted("--no-overwrite is set"));
                    }
                    self.writer.truncate_handle(fh, size).await?
                }
                None => self.set_size(ino, size).await?,
            }
        }
        self.change_attrs(ino, change).await?;
        self.getattr(ino, None).await
    }

    async fn set_size(&self, ino: Ino, size: u64) -> Result<(), FsError> {
        if let Some(file) = self.writer.settle(ino).await {
            if self.policy.no_overwrite && file.preexisting() {
                return Err(FsError::NotPermitted("--no-overwrite is set"));
            }
            if let Some(result) = self.writer.truncate(ino, size).await {
                return result;
            }
        }
        let entry = self.catalog.entry(ino).await?;
        let (etag, current) = match entry.kind {
            EntryKind::Dir => return Err(FsError::IsADirectory),
            EntryKind::File { size, etag } => (etag, size),
        };
        if current == size {
            return Ok(());
        }
        if self.policy.no_overwrite {
            return Err(FsError::NotPermitted("--no-overwrite is set"));
        }
        let (parent, name, key) = self.catalog.location(ino)?;
        let attrs = PendingAttrs::new(self.kept_posix(&key, &etag, Some(entry.mtime)).await?);
        if size == 0 {
            // `truncate -s 0 FILE`: no need to stage anything.
            let posix = attrs.for_commit();
            let new_etag = self
                .store()
                .put(&key, Body::Empty, WriteCondition::Always, &posix)
                .await
                .map_err(|e| FsError::store(&key, e))?;
            self.record_attrs(&key, &new_etag, posix, None);
            return self.record_file(parent, &name, 0, new_etag);
        }
        // `truncate -s N FILE` on a file nobody has open: stage, truncate,
        // store, close.
        let place = Place { parent, name, key };
        let write_only = Access {
            write: true,
            ..Access::default()
        };
        let Some(fh) = self
            .writer
            .open(ino, place, (&etag, current), write_only, attrs)?
        else {
            return Err(FsError::Busy("the file was opened for writing meanwhile"));
        };
        let result = match self.writer.truncate(ino, size).await {
            Some(Ok(())) => self.fsync(fh).await,
            Some(Err(e)) => Err(e),
            None => Err(FsError::BadHandle),
        };
        let release = self.begin_release(ino, fh);
        self.release(release).await;
        result
    }

    pub(super) fn record_file(
        &self,
        parent: Ino,
        name: &str,
        size: u64,
        etag: String,
    ) -> Result<(), FsError> {
        let entry = Entry {
            name: name.to_owned(),
            kind: EntryKind::File { size, etag },
            mtime: SystemTime::now(),
        };
        self.catalog.record(parent, name, Some(entry))
    }

    /// Notes a version the write path stored in the catalog.
    pub(super) fn record_commit(&self, c: &Committed) -> Result<(), FsError> {
        self.record_attrs(&c.place.key, &c.etag, c.posix, None);
        self.record_file(c.place.parent, &c.place.name, c.size, c.etag.clone())
    }

    /// close(2) of one descriptor: what was written is stored (the object
    /// is in S3 when close returns) and errors return to `close`.
    pub async fn flush(&self, fh: u64) -> Result<(), FsError> {
        if !Writer::<S>::owns(fh) {
            return Ok(()); // a read handle
        }
        self.writer.flush(fh, &|c| self.record_commit(c)).await
    }

    /// fsync(2): the data is durable only as an object, so this stores it.
    pub async fn fsync(&self, fh: u64) -> Result<(), FsError> {
        if !Writer::<S>::owns(fh) {
            return Ok(());
        }
        self.writer.fsync(fh, &|c| self.record_commit(c)).await
    }

    /// The kernel's RELEASE of `fh`, noted at once on the request loop's
    /// thread, so that a request sent after `close(2)` returned finds the
    /// file closed (a read handle) or closing (a write handle). The rest,
    /// which may touch S3, is [`S3Fs::release`].
    pub fn begin_release(&self, ino: Ino, fh: u64) -> Release<S> {
        if Writer::<S>::owns(fh) {
            return match self.writer.releasing(fh) {
                Some(file) => Release::LastWrite(file),
                None => Release::Nothing,
            };
        }
        self.forget_read_handle(ino, fh);
        Release::Read(self.reader.release(fh))
    }

    /// Stores a file whose last descriptor closed (an empty file too; errors
    /// can only be logged here), and runs deletes that waited for it.
    pub async fn release(&self, release: Release<S>) {
        let key: Arc<str> = match release {
            Release::Nothing => return,
            Release::Read(None) => return,
            Release::Read(Some(closed)) => {
                self.reader.after_release(&closed);
                closed.key
            }
            Release::LastWrite(file) => {
                let place = file.place();
                let record = |c: &Committed| {
                    if let Err(e) = self.record_commit(c) {
                        warn!(key = %c.place.key, error = %e, "stored, but the listing could not be updated");
                    }
                    Ok(())
                };
                match self.writer.release(&file, &record).await {
                    Err(e) => {
                        warn!(key = %place.key, error = %e, "storing the file failed when it was released")
                    }
                    Ok(()) if file.attrs.has_unstored_change() => {
                        if let Err(e) = self.store_unstored_attrs(&file).await {
                            warn!(key = %place.key, error = %e, "the file is stored, but a mode, owner or time set while it was open is not");
                        }
                    }
                    Ok(()) => {}
                }
                // Only now: until it is stored, lookups find the file here.
                self.writer.forget(&file);
                place.key.into()
            }
        };
        self.delete_if_due(&key).await;
    }

    /// Deletes `key` if its delete was deferred until nothing on this
    /// mount reads it any more, and nothing does now.
    pub(super) async fn delete_if_due(&self, key: &str) {
        let Some(etag) = self.writer.take_delete(key) else {
            return;
        };
        // Another client may have stored a new object under the name since
        // it was unlinked here: delete only the version that was unlinked.
        if !etag.is_empty() {
            match self.store().head(key).await {
                Ok(meta) if meta.etag.trim_matches('"') == etag.trim_matches('"') => {}
                Ok(_) => return,
                Err(e) => {
                    warn!(key, error = %e, "not deleting a file unlinked while open: cannot check its version");
                    return;
                }
            }
        }
        if let Err(e) = self.store().delete(key, None).await {
            warn!(key, error = %e, "cannot delete a file unlinked while it was open");
        }
    }

    /// Aborts every upload not completed yet (at shutdown).
    pub async fn abort_uploads(&self) {
        self.writer.abort_all().await;
    }

    /// Deletes the claim locks this mount still keeps after its wins
    /// (at shutdown: nobody would delete them later).
    pub async fn drop_claim_locks(&self) {
        self.claims.drop_kept(&**self.store()).await;
    }

    /// Files open for writing.
    pub fn open_writers(&self) -> usize {
        self.writer.open_files()
    }
}
