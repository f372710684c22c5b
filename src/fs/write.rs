//! Creating and writing files: create, open for writing, write, setattr,
//! flush, fsync and release.
//!
//! A file open for writing is an [`Upload`]; it becomes an object when the
//! file is closed (or fsynced) and the upload completes. Until then it is
//! visible to lookups on this mount (so the writer can stat it) but not to
//! directory listings, and it cannot be opened for reading, renamed or
//! deleted (EBUSY): nobody sees a file that is only partly there.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use tracing::warn;

use super::{Attr, S3Fs};
use crate::catalog::{Entry, EntryKind, Ino};
use crate::error::FsError;
use crate::names;
use crate::store::{Body, ObjectStore};
use crate::upload::Upload;

/// Write handles are numbered from here, apart from read handles.
pub(super) const FIRST_WRITE_HANDLE: u64 = 1 << 62;

/// Which modifications the mount allows.
#[derive(Debug, Clone, Copy, Default)]
pub struct WritePolicy {
    /// Refuse every modification (EROFS).
    pub read_only: bool,
    /// Refuse unlink and rmdir (EPERM). Renames stay allowed: they keep the data.
    pub no_delete: bool,
    /// Refuse replacing an existing file by writing or renaming onto it.
    pub no_overwrite: bool,
}

/// A file open for writing.
pub(super) struct WriteHandle<S> {
    pub ino: Ino,
    pub parent: Ino,
    pub name: String,
    /// `None` while an existing object is open for writing but untouched:
    /// closing it then changes nothing.
    pub upload: Option<Arc<Upload<S>>>,
    /// The last descriptor is closed and the upload is completing.
    pub closing: bool,
}

impl<S: ObjectStore> WriteHandle<S> {
    /// Whether this handle is writing a file that is not an object yet.
    fn is_writing(&self) -> bool {
        self.upload.as_ref().is_some_and(|u| !u.is_finished())
    }
}

impl<S> Clone for WriteHandle<S> {
    fn clone(&self) -> Self {
        WriteHandle {
            ino: self.ino,
            parent: self.parent,
            name: self.name.clone(),
            upload: self.upload.clone(),
            closing: self.closing,
        }
    }
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

    fn file_attr_now(&self, ino: Ino, size: u64) -> Attr {
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

    /// Attributes of a file being written that `matches` picks, if any.
    pub(super) fn writing_attr(&self, matches: impl Fn(&WriteHandle<S>) -> bool) -> Option<Attr> {
        let writers = self.writers.lock().unwrap();
        let w = writers.values().find(|w| w.is_writing() && matches(w))?;
        let size = w.upload.as_ref().map_or(0, |u| u.len());
        Some(self.file_attr_now(w.ino, size))
    }

    pub(super) fn is_being_written(&self, ino: Ino) -> bool {
        self.writers
            .lock()
            .unwrap()
            .values()
            .any(|w| w.ino == ino && w.is_writing())
    }

    /// Whether a file at or below key prefix `prefix` is being written.
    pub(super) fn writing_under(&self, prefix: &str) -> bool {
        self.writers
            .lock()
            .unwrap()
            .values()
            .filter(|w| w.is_writing())
            .filter_map(|w| w.upload.as_ref())
            .any(|u| u.key().starts_with(prefix))
    }

    fn add_writer(&self, handle: WriteHandle<S>) -> u64 {
        let fh = self.next_write_handle.fetch_add(1, Ordering::Relaxed);
        self.writers.lock().unwrap().insert(fh, handle);
        fh
    }

    fn writer(&self, fh: u64) -> Result<WriteHandle<S>, FsError> {
        self.writers
            .lock()
            .unwrap()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    /// Creates `name` in `parent` and opens it for writing.
    pub async fn create(&self, parent: Ino, name: &str) -> Result<(Attr, u64), FsError> {
        self.writable()?;
        names::check_name(name).map_err(|_| FsError::Invalid("a name S3 keys cannot carry"))?;
        let prefix = self.catalog.dir_prefix(parent)?;
        match self.catalog.lookup(parent, name).await {
            Ok((_, e)) if e.is_dir() => return Err(FsError::IsADirectory),
            Ok(_) if self.policy.no_overwrite => {
                return Err(FsError::NotPermitted("--no-overwrite is set"))
            }
            Ok(_) | Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        if self
            .writing_attr(|w| w.parent == parent && w.name == name)
            .is_some()
        {
            return Err(FsError::Busy(
                "the file is being written through this mount",
            ));
        }
        let key = names::child_key(&prefix, name);
        let upload = self.uploads.start(&key)?;
        let entry = Entry {
            name: name.to_owned(),
            kind: EntryKind::File {
                size: 0,
                etag: String::new(),
            },
            mtime: SystemTime::now(),
        };
        let ino = self.catalog.resolve(parent, &entry)?;
        let fh = self.add_writer(WriteHandle {
            ino,
            parent,
            name: name.to_owned(),
            upload: Some(upload),
            closing: false,
        });
        let attr = self.file_attr_now(ino, 0);
        self.sent_entry(parent, name, &attr);
        Ok((attr, fh))
    }

    /// Opens an existing file for writing. With `truncate` (O_TRUNC), or
    /// when the file is empty, its contents are replaced by what is written;
    /// otherwise the handle can only be closed, synced or truncated to zero,
    /// since S3 cannot change an object in place.
    pub async fn open_for_write(&self, ino: Ino, truncate: bool) -> Result<u64, FsError> {
        self.writable()?;
        if self.is_being_written(ino) {
            return Err(FsError::Busy(
                "the file is being written through this mount",
            ));
        }
        let key = self.catalog.file_key(ino)?;
        let (parent, name, _) = self.catalog.location(ino)?;
        let size = match self.catalog.entry(ino).await?.kind {
            EntryKind::File { size, .. } => size,
            EntryKind::Dir => return Err(FsError::IsADirectory),
        };
        let upload = if truncate || size == 0 {
            if size > 0 && self.policy.no_overwrite {
                return Err(FsError::NotPermitted("--no-overwrite is set"));
            }
            Some(self.uploads.start(&key)?)
        } else {
            None
        };
        Ok(self.add_writer(WriteHandle {
            ino,
            parent,
            name,
            upload,
            closing: false,
        }))
    }

    pub async fn write(&self, fh: u64, offset: u64, data: Vec<u8>) -> Result<u32, FsError> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(FsError::ReadOnly);
        }
        match &self.writer(fh)?.upload {
            // After close or fsync completed the upload, writes fail (EBADF).
            Some(upload) => upload.write(offset, data).await,
            None => Err(FsError::Unsupported(
                "changing an existing object in place (open it with O_TRUNC to replace it)",
            )),
        }
    }

    /// Changes the size of `ino` (truncate, ftruncate) if that is possible
    /// on S3, then answers its attributes. Mode, owner and times are
    /// accepted and not stored (see docs/SEMANTICS.md).
    pub async fn setattr(
        &self,
        ino: Ino,
        fh: Option<u64>,
        size: Option<u64>,
    ) -> Result<Attr, FsError> {
        if let Some(size) = size {
            self.writable()?;
            self.set_size(ino, fh, size).await?;
        }
        self.getattr(ino).await
    }

    async fn set_size(&self, ino: Ino, fh: Option<u64>, size: u64) -> Result<(), FsError> {
        let handle = {
            let writers = self.writers.lock().unwrap();
            fh.and_then(|fh| writers.get(&fh).map(|w| (fh, w.clone())))
                .or_else(|| {
                    writers
                        .iter()
                        .find(|(_, w)| w.ino == ino)
                        .map(|(fh, w)| (*fh, w.clone()))
                })
        };
        match handle {
            Some((
                _,
                WriteHandle {
                    upload: Some(u), ..
                },
            )) => u.truncate(size).await,
            Some((fh, WriteHandle { upload: None, .. })) if size == 0 => {
                // ftruncate(fd, 0) on a file opened without O_TRUNC: from
                // now on the handle replaces the object.
                if self.policy.no_overwrite {
                    return Err(FsError::NotPermitted("--no-overwrite is set"));
                }
                let upload = self.uploads.start(&self.catalog.file_key(ino)?)?;
                if let Some(w) = self.writers.lock().unwrap().get_mut(&fh) {
                    w.upload.get_or_insert(upload);
                }
                Ok(())
            }
            _ => {
                let entry = self.catalog.entry(ino).await?;
                match entry.kind {
                    EntryKind::Dir => Err(FsError::IsADirectory),
                    EntryKind::File { size: current, .. } if current == size => Ok(()),
                    EntryKind::File { .. } if size == 0 => self.replace_with_empty(ino).await,
                    EntryKind::File { .. } => Err(FsError::Unsupported(
                        "changing the size of an object other than to zero",
                    )),
                }
            }
        }
    }

    /// `truncate -s 0 FILE` on a file nobody has open for writing.
    async fn replace_with_empty(&self, ino: Ino) -> Result<(), FsError> {
        if self.policy.no_overwrite {
            return Err(FsError::NotPermitted("--no-overwrite is set"));
        }
        let (parent, name, key) = self.catalog.location(ino)?;
        let etag = self
            .uploads
            .store()
            .put(&key, Body::Empty)
            .await
            .map_err(|e| FsError::store(&key, e))?;
        self.record_file(parent, &name, 0, etag)
    }

    fn record_file(&self, parent: Ino, name: &str, size: u64, etag: String) -> Result<(), FsError> {
        let entry = Entry {
            name: name.to_owned(),
            kind: EntryKind::File { size, etag },
            mtime: SystemTime::now(),
        };
        self.catalog.record(parent, name, Some(entry))
    }

    /// close(2): completes the upload and reports its outcome, so the file
    /// is an object in S3 when close returns. A close before any data was
    /// written completes nothing: shells and dd open, dup2 and close the
    /// original descriptor before writing, and an empty object must not
    /// appear in the meantime. An empty file is stored at release.
    pub async fn flush(&self, fh: u64) -> Result<(), FsError> {
        let Ok(handle) = self.writer(fh) else {
            return Ok(()); // a read handle
        };
        match &handle.upload {
            Some(upload) if !upload.is_empty() => self.complete(&handle, upload).await,
            _ => Ok(()),
        }
    }

    /// Waits for the uploads of files in directory `dir` whose last
    /// descriptor is closed, so a listing right after `touch f` shows `f`.
    pub(super) async fn settle_closed_files(&self, dir: Ino) {
        let closing: Vec<_> = self
            .writers
            .lock()
            .unwrap()
            .values()
            .filter(|w| w.closing && w.parent == dir)
            .filter_map(|w| w.upload.clone())
            .collect();
        for upload in closing {
            let _ = upload.finish().await;
        }
    }

    /// fsync(2): the data is durable only once it is an object, so this
    /// completes the upload; later writes to the handle fail (EBADF).
    pub async fn fsync(&self, fh: u64) -> Result<(), FsError> {
        let Ok(handle) = self.writer(fh) else {
            return Ok(());
        };
        match &handle.upload {
            Some(upload) => self.complete(&handle, upload).await,
            None => Ok(()),
        }
    }

    async fn complete(&self, handle: &WriteHandle<S>, upload: &Upload<S>) -> Result<(), FsError> {
        let done = upload.finish().await?;
        self.record_file(handle.parent, &handle.name, done.size, done.etag)
    }

    /// The last close of a handle. An upload nobody completed yet is
    /// completed now; errors can only be logged at this point.
    pub async fn release(&self, fh: u64) {
        if fh < FIRST_WRITE_HANDLE {
            self.reader.release(fh);
            return;
        }
        let handle = {
            let mut writers = self.writers.lock().unwrap();
            let Some(w) = writers.get_mut(&fh) else {
                return;
            };
            w.closing = true;
            w.clone()
        };
        if let Some(upload) = &handle.upload {
            if let Err(e) = self.complete(&handle, upload).await {
                warn!(key = upload.key(), error = %e, "upload failed when the file was released");
            }
        }
        // Only now: until the object exists, lookups find the file here.
        self.writers.lock().unwrap().remove(&fh);
    }

    /// Aborts every upload not completed yet (at shutdown).
    pub async fn abort_uploads(&self) {
        let uploads: Vec<_> = self
            .writers
            .lock()
            .unwrap()
            .values()
            .filter_map(|w| w.upload.clone())
            .collect();
        for upload in uploads {
            upload.abort().await;
        }
    }

    /// Files open for writing.
    pub fn open_writers(&self) -> usize {
        self.writers.lock().unwrap().len()
    }
}
