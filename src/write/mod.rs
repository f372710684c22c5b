//! The write path: files open for writing through the mount, and how they
//! become objects.
//!
//! [`Writer`] holds every open file that is written (or may be), one
//! [`WritableFile`] per inode shared by all its descriptors, as on a disk. A
//! file is one of two kinds:
//! - *streaming* ([`upload`]): a new or truncated file opened write-only
//!   (`cp`, `>`, producers). It is sent to S3 while it grows, in multipart
//!   parts streamed from an unlinked spool file, and completed at close.
//! - *staged* ([`staged`]): everything else that writes — appends, writes
//!   at any offset, truncation, read-write descriptors (sqlite, git, rsync
//!   temporary files). Only written bytes are spooled; the rest is read
//!   from the version opened, and a commit at close or fsync stores the new
//!   version whole, copying unchanged runs server-side ([`plan`]).
//!
//! A streaming file that is closed (or fsynced) while still open elsewhere
//! becomes a staged file on the object it just stored, so later writes
//! through any descriptor keep working.
//!
//! Closing is ordered: the kernel's RELEASE is noted at once, on the
//! request loop's thread ([`Writer::releasing`]), so a request that comes
//! after `close(2)` returned always sees a file that is closing and waits
//! for it ([`Writer::settle`]) instead of failing because a release is
//! still in flight.

pub mod pending_attrs;
mod plan;
pub mod spool;
pub mod staged;
pub mod upload;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use tokio::sync::watch;

use crate::catalog::Ino;
use crate::error::FsError;
use crate::read::Reader;
use crate::store::ObjectStore;
pub use pending_attrs::PendingAttrs;
use staged::Staged;
pub use upload::{part_size, Upload, UploadConfig, UploadStats, Uploaded, Uploads};

/// Notes a stored version in the catalog; see [`Writer::flush`].
pub type Record<'a> = dyn Fn(&Committed) -> Result<(), FsError> + Send + Sync + 'a;

/// Write handles are numbered from here, apart from read handles.
pub const FIRST_WRITE_HANDLE: u64 = 1 << 62;

/// Where an open file is in the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub parent: Ino,
    pub name: String,
    pub key: String,
}

/// A new version stored by a commit, for the catalog.
#[derive(Debug, Clone)]
pub struct Committed {
    pub place: Place,
    pub etag: String,
    pub size: u64,
    /// The POSIX attributes the version carries.
    pub posix: crate::store::PosixMeta,
}

/// How a descriptor was opened.
#[derive(Debug, Clone, Copy, Default)]
pub struct Access {
    pub read: bool,
    pub write: bool,
    pub append: bool,
    pub truncate: bool,
    /// O_EXCL: the file must not exist, in S3 either, when it is stored.
    pub exclusive: bool,
}

impl Access {
    /// From open(2) flags.
    pub fn from_flags(flags: i32) -> Self {
        let mode = flags & libc::O_ACCMODE;
        Access {
            read: mode == libc::O_RDONLY || mode == libc::O_RDWR,
            write: mode == libc::O_WRONLY || mode == libc::O_RDWR,
            append: flags & libc::O_APPEND != 0,
            truncate: flags & libc::O_TRUNC != 0,
            exclusive: flags & libc::O_EXCL != 0,
        }
    }
}

enum Content<S: ObjectStore> {
    Streaming(Arc<Upload<S>>),
    Staged(Box<Staged<S>>),
}

/// One inode open for writing, shared by all its descriptors.
pub struct WritableFile<S: ObjectStore> {
    pub ino: Ino,
    /// Changes when the open file is renamed.
    place: Mutex<Place>,
    content: tokio::sync::Mutex<Content<S>>,
    /// The file's size now, for attributes without waiting for `content`.
    size: AtomicU64,
    /// Whether the content is a streaming upload (which cannot be shared).
    streaming: AtomicBool,
    /// No object exists under the key yet, so listings do not show it.
    new: AtomicBool,
    /// An object existed under the key before this file was opened.
    preexisting: bool,
    handles: AtomicUsize,
    /// The last descriptor is closed; the file is being stored.
    closing: AtomicBool,
    /// Unlinked while open: nothing is stored when it closes.
    unlinked: AtomicBool,
    /// Becomes true once the file is stored (or given up) and gone.
    settled: watch::Sender<bool>,
    /// What its next commit stores as its POSIX attributes.
    pub attrs: Arc<PendingAttrs>,
}

impl<S: ObjectStore> WritableFile<S> {
    fn new(
        ino: Ino,
        place: Place,
        content: Content<S>,
        size: u64,
        new: bool,
        attrs: Arc<PendingAttrs>,
    ) -> Arc<Self> {
        Arc::new(WritableFile {
            attrs,
            ino,
            place: Mutex::new(place),
            streaming: AtomicBool::new(matches!(content, Content::Streaming(_))),
            content: tokio::sync::Mutex::new(content),
            size: AtomicU64::new(size),
            new: AtomicBool::new(new),
            preexisting: !new,
            handles: AtomicUsize::new(0),
            closing: AtomicBool::new(false),
            unlinked: AtomicBool::new(false),
            settled: watch::channel(false).0,
        })
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    pub fn place(&self) -> Place {
        self.place.lock().clone()
    }

    fn key_is(&self, key: &str) -> bool {
        self.place.lock().key == key
    }

    /// Whether no object exists under the key yet.
    pub fn is_new(&self) -> bool {
        self.new.load(Ordering::Relaxed)
    }

    /// Whether the file was an object before it was opened here (so
    /// writing it changes an existing file).
    pub fn preexisting(&self) -> bool {
        self.preexisting
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }

    /// Whether it was unlinked (or replaced by a rename) while open: its
    /// name belongs to another file now.
    pub fn is_unlinked(&self) -> bool {
        self.unlinked.load(Ordering::Relaxed)
    }

    async fn wait_settled(&self) {
        let mut rx = self.settled.subscribe();
        let _ = rx.wait_for(|done| *done).await;
    }
}

struct Handle<S: ObjectStore> {
    file: Arc<WritableFile<S>>,
    access: Access,
}

impl<S: ObjectStore> Clone for Handle<S> {
    fn clone(&self) -> Self {
        Handle {
            file: self.file.clone(),
            access: self.access,
        }
    }
}

pub struct Writer<S: ObjectStore> {
    uploads: Arc<Uploads<S>>,
    reader: Arc<Reader<S>>,
    files: Mutex<HashMap<Ino, Arc<WritableFile<S>>>>,
    handles: Mutex<HashMap<u64, Handle<S>>>,
    next_fh: AtomicU64,
    /// Keys unlinked while open, deleted from S3 once nothing reads them,
    /// with the ETag they had (empty when not known).
    deferred_deletes: Mutex<HashMap<String, String>>,
}

impl<S: ObjectStore> Writer<S> {
    pub fn new(uploads: Arc<Uploads<S>>, reader: Arc<Reader<S>>) -> Self {
        Writer {
            uploads,
            reader,
            files: Mutex::new(HashMap::new()),
            handles: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(FIRST_WRITE_HANDLE),
            deferred_deletes: Mutex::new(HashMap::new()),
        }
    }

    pub fn uploads(&self) -> &Arc<Uploads<S>> {
        &self.uploads
    }

    /// The open file of `ino`, closing or not, unless unlinked.
    pub fn file(&self, ino: Ino) -> Option<Arc<WritableFile<S>>> {
        self.files.lock().get(&ino).cloned()
    }

    /// The open file named `name` in `parent`, if any.
    pub fn file_named(&self, parent: Ino, name: &str) -> Option<Arc<WritableFile<S>>> {
        self.files
            .lock()
            .values()
            .find(|f| {
                let place = f.place.lock();
                place.parent == parent && place.name == name
            })
            .cloned()
    }

    /// Waits until `ino` has no closing file; returns the file still open
    /// on it, if any.
    pub async fn settle(&self, ino: Ino) -> Option<Arc<WritableFile<S>>> {
        loop {
            let file = self.file(ino)?;
            if !file.is_closing() {
                return Some(file);
            }
            file.wait_settled().await;
        }
    }

    /// Waits for the files closing in directory `dir`, so a listing right
    /// after `close` shows them.
    pub async fn settle_dir(&self, dir: Ino) {
        self.settle_closing(|place| place.parent == dir).await;
    }

    /// Waits for the files closing at or below key prefix `prefix`.
    pub async fn settle_under(&self, prefix: &str) {
        self.settle_closing(|place| place.key.starts_with(prefix))
            .await;
    }

    async fn settle_closing(&self, at: impl Fn(&Place) -> bool) {
        let closing: Vec<_> = self
            .files
            .lock()
            .values()
            .filter(|f| f.is_closing() && at(&f.place.lock()))
            .cloned()
            .collect();
        for file in closing {
            file.wait_settled().await;
        }
    }

    /// Whether a file at or below key prefix `prefix` is open for writing.
    pub fn open_under(&self, prefix: &str) -> bool {
        self.files
            .lock()
            .values()
            .any(|f| f.place.lock().key.starts_with(prefix))
    }

    /// Files open for writing.
    pub fn open_files(&self) -> usize {
        self.files.lock().len()
    }

    /// A new descriptor on `file`; `None` if the file is closing (its last
    /// descriptor was released meanwhile). Under the handles lock, as
    /// [`Writer::releasing`], so a file never gains a descriptor after it
    /// started closing.
    fn add_handle(&self, file: &Arc<WritableFile<S>>, access: Access) -> Option<u64> {
        let mut handles = self.handles.lock();
        if file.is_closing() {
            return None;
        }
        file.handles.fetch_add(1, Ordering::Relaxed);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        handles.insert(
            fh,
            Handle {
                file: file.clone(),
                access,
            },
        );
        Some(fh)
    }

    /// The first descriptor of a file just put in the table (nobody can
    /// have closed it yet).
    fn first_handle(&self, file: &Arc<WritableFile<S>>, access: Access) -> u64 {
        self.add_handle(file, access)
            .expect("a new file is not closing")
    }

    fn handle(&self, fh: u64) -> Result<Handle<S>, FsError> {
        self.handles
            .lock()
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    /// Creates a file that is not an object yet and opens it; EBUSY if
    /// `ino` is open for writing already. Its commits carry `attrs`.
    pub fn create(
        &self,
        ino: Ino,
        place: Place,
        access: Access,
        attrs: PendingAttrs,
    ) -> Result<u64, FsError> {
        let attrs = Arc::new(attrs);
        let mut files = self.files.lock();
        if files.contains_key(&ino) {
            return Err(FsError::Busy(
                "the file is being written through this mount",
            ));
        }
        self.cancel_delete(&place.key);
        let content = if access.read {
            Content::Staged(Box::new(Staged::new_file(
                self.uploads.clone(),
                self.reader.clone(),
                &place.key,
                access.exclusive,
                attrs.clone(),
            )))
        } else {
            Content::Streaming(
                self.uploads
                    .start(&place.key, access.exclusive, attrs.clone())?,
            )
        };
        let file = WritableFile::new(ino, place, content, 0, true, attrs);
        files.insert(ino, file.clone());
        drop(files);
        Ok(self.first_handle(&file, access))
    }

    /// Opens a new descriptor on the file open for writing on `ino`, once
    /// any closing one is stored; `None` when `ino` is not open for writing.
    pub async fn join(&self, ino: Ino, access: Access) -> Option<Result<u64, FsError>> {
        loop {
            let file = self.settle(ino).await?;
            if !self.make_shareable(&file).await {
                return Some(Err(FsError::Busy(
                    "the file is being written through this mount",
                )));
            }
            if access.write && access.truncate {
                // Before the descriptor exists: if the file closes meanwhile,
                // this open simply came first, and the retry below
                // truncates what was stored.
                if let Err(e) = self.truncate_file(&file, 0).await {
                    return Some(Err(e));
                }
            }
            if let Some(fh) = self.add_handle(&file, access) {
                return Some(Ok(fh));
            }
            // Its last descriptor closed meanwhile: wait for it, then
            // open what it stored.
        }
    }

    /// Opens the existing object `place.key` (version `etag`, `size` bytes)
    /// for writing. `None` if `ino` was opened for writing meanwhile: the
    /// caller joins that file instead ([`Writer::join`]). Its commits carry
    /// `attrs`.
    pub fn open(
        &self,
        ino: Ino,
        place: Place,
        (etag, size): (&str, u64),
        access: Access,
        attrs: PendingAttrs,
    ) -> Result<Option<u64>, FsError> {
        let mut files = self.files.lock();
        if files.contains_key(&ino) {
            return Ok(None);
        }
        let attrs = Arc::new(attrs);
        attrs.note_version(etag);
        let content = if !access.read && access.truncate {
            // A replacement written front to back: stream it.
            self.cancel_delete(&place.key);
            Content::Streaming(self.uploads.start(&place.key, false, attrs.clone())?)
        } else {
            let mut staged = Staged::existing(
                self.uploads.clone(),
                self.reader.clone(),
                &place.key,
                (etag, size),
                attrs.clone(),
            );
            if access.truncate {
                staged.truncate(0)?;
            }
            Content::Staged(Box::new(staged))
        };
        let size = if access.truncate { 0 } else { size };
        let file = WritableFile::new(ino, place, content, size, false, attrs);
        files.insert(ino, file.clone());
        drop(files);
        Ok(Some(self.first_handle(&file, access)))
    }

    /// Whether another descriptor may join `file`. A streaming file can
    /// only be shared while nothing was written to it: it then becomes a
    /// staged new file (stored at close all the same).
    async fn make_shareable(&self, file: &WritableFile<S>) -> bool {
        let mut content = file.content.lock().await;
        if let Content::Streaming(upload) = &*content {
            if !upload.is_empty() {
                return false;
            }
            let key = upload.key().to_owned();
            let create_only = upload.is_create_only();
            upload.abort_unused().await;
            *content = Content::Staged(Box::new(Staged::new_file(
                self.uploads.clone(),
                self.reader.clone(),
                &key,
                create_only,
                file.attrs.clone(),
            )));
            file.streaming.store(false, Ordering::Relaxed);
        }
        true
    }

    /// Renames an open file: under its lock, so no commit slips in
    /// between, it is stored now (even empty), `mv(etag, size)` moves that
    /// version to `place` and returns the moved object's ETag, and the file
    /// follows its new name (later commits go there). Returns the moved
    /// object's ETag and size.
    pub async fn move_open<F, Fut>(
        &self,
        file: &WritableFile<S>,
        place: Place,
        record: &Record<'_>,
        mv: F,
    ) -> Result<(String, u64), FsError>
    where
        F: FnOnce(String, u64) -> Fut,
        Fut: std::future::Future<Output = Result<String, FsError>>,
    {
        let mut content = file.content.lock().await;
        if file.unlinked.load(Ordering::Relaxed) {
            // Unlinked while the rename waited for the file: nothing to move.
            return Err(FsError::NotFound);
        }
        self.commit_locked(file, &mut content, true, record).await?;
        let (etag, size) = match &*content {
            Content::Staged(staged) => staged.base_version(),
            Content::Streaming(_) => None,
        }
        .ok_or_else(|| FsError::Spool("a stored file has no version".into()))?;
        let Content::Staged(staged) = &mut *content else {
            return Err(FsError::Spool("a stored file is not staged".into()));
        };
        let moved = mv(etag, size).await?;
        staged.rebase(&place.key, &moved);
        file.attrs.note_version(&moved);
        self.cancel_delete(&place.key);
        *file.place.lock() = place;
        Ok((moved, size))
    }

    /// A file open for writing is about to be replaced by a rename onto its
    /// name: like an unlinked file, it is no longer stored when it closes
    /// (even if the rename then fails), since its key will belong to the
    /// file moved there. Waits for a commit in flight to end first.
    pub async fn orphan(&self, file: &Arc<WritableFile<S>>) {
        let _content = file.content.lock().await;
        file.unlinked.store(true, Ordering::Relaxed);
        self.remove_file(file);
    }

    fn remove_file(&self, file: &Arc<WritableFile<S>>) {
        {
            let mut files = self.files.lock();
            if files.get(&file.ino).is_some_and(|f| Arc::ptr_eq(f, file)) {
                files.remove(&file.ino);
            }
        }
        file.settled.send_replace(true);
    }

    /// Whether writes through `fh` change a file that existed before it
    /// was opened here.
    pub fn changes_existing(&self, fh: u64) -> bool {
        self.handles
            .lock()
            .get(&fh)
            .is_some_and(|h| h.file.preexisting())
    }

    /// Whether `fh` is a handle of this table.
    pub fn owns(fh: u64) -> bool {
        fh >= FIRST_WRITE_HANDLE
    }

    pub async fn write(&self, fh: u64, offset: u64, data: Vec<u8>) -> Result<u32, FsError> {
        let handle = self.handle(fh)?;
        if !handle.access.write {
            return Err(FsError::BadHandle);
        }
        let file = &handle.file;
        let mut content = file.content.lock().await;
        let written = match &mut *content {
            Content::Streaming(upload) => {
                let offset = if handle.access.append {
                    upload.len()
                } else {
                    offset
                };
                let n = upload.write(offset, data).await?;
                file.size.store(upload.len(), Ordering::Relaxed);
                n
            }
            Content::Staged(staged) => {
                // O_APPEND writes go to the end this file has now, whatever
                // size the kernel last saw.
                let offset = if handle.access.append {
                    staged.size()
                } else {
                    offset
                };
                let n = staged.write(offset, data).await?;
                file.size.store(staged.size(), Ordering::Relaxed);
                n
            }
        };
        Ok(written)
    }

    pub async fn read(&self, fh: u64, offset: u64, len: u32) -> Result<bytes::Bytes, FsError> {
        let handle = self.handle(fh)?;
        if !handle.access.read {
            return Err(FsError::BadHandle);
        }
        let mut content = handle.file.content.lock().await;
        match &mut *content {
            Content::Staged(staged) => Ok(staged.read(offset, len).await?.into()),
            Content::Streaming(_) => Err(FsError::BadHandle),
        }
    }

    /// ftruncate through write handle `fh`: that handle's file, even if it
    /// was unlinked or replaced meanwhile.
    pub async fn truncate_handle(&self, fh: u64, size: u64) -> Result<(), FsError> {
        let handle = self.handle(fh)?;
        self.truncate_file(&handle.file, size).await
    }

    /// truncate(2) of `ino` while it is open for writing; `None` when it
    /// is not.
    pub async fn truncate(&self, ino: Ino, size: u64) -> Option<Result<(), FsError>> {
        let file = self.settle(ino).await?;
        Some(self.truncate_file(&file, size).await)
    }

    async fn truncate_file(&self, file: &WritableFile<S>, size: u64) -> Result<(), FsError> {
        let mut content = file.content.lock().await;
        match &mut *content {
            Content::Streaming(upload) => upload.truncate(size).await?,
            Content::Staged(staged) => staged.truncate(size)?,
        }
        file.size.store(size, Ordering::Relaxed);
        Ok(())
    }

    /// close(2) of one descriptor: stores what was written, so the object
    /// is in S3 when close returns. A streaming file with nothing written
    /// yet stores nothing: shells and dd open, dup2 and close the first
    /// descriptor before writing, and an empty object must not appear in
    /// the meantime (it is stored at release).
    pub async fn flush(&self, fh: u64, record: &Record<'_>) -> Result<(), FsError> {
        let handle = self.handle(fh)?;
        if !handle.access.write {
            return Ok(());
        }
        self.commit(&handle.file, false, record).await
    }

    /// fsync(2): the data is durable only as an object, so this stores it,
    /// even an empty file.
    pub async fn fsync(&self, fh: u64, record: &Record<'_>) -> Result<(), FsError> {
        let handle = self.handle(fh)?;
        if !handle.access.write {
            return Ok(());
        }
        self.commit(&handle.file, true, record).await
    }

    async fn commit(
        &self,
        file: &WritableFile<S>,
        even_empty: bool,
        record: &Record<'_>,
    ) -> Result<(), FsError> {
        let mut content = file.content.lock().await;
        self.commit_locked(file, &mut content, even_empty, record)
            .await
    }

    /// Stores what changed, and has `record` note it in the catalog while
    /// the file is still locked, so commits are recorded in the order they
    /// were stored.
    async fn commit_locked(
        &self,
        file: &WritableFile<S>,
        content: &mut Content<S>,
        even_empty: bool,
        record: &Record<'_>,
    ) -> Result<(), FsError> {
        if file.unlinked.load(Ordering::Relaxed) {
            return Ok(());
        }
        let stored = match content {
            Content::Streaming(upload) => {
                if upload.is_empty() && !even_empty {
                    return Ok(());
                }
                let done = upload.finish().await?;
                // Later writes through any descriptor change this object.
                *content = Content::Staged(Box::new(Staged::existing(
                    self.uploads.clone(),
                    self.reader.clone(),
                    upload.key(),
                    (&done.etag, done.size),
                    file.attrs.clone(),
                )));
                file.streaming.store(false, Ordering::Relaxed);
                done
            }
            Content::Staged(staged) => match staged.commit().await? {
                Some(done) => done,
                None => return Ok(()),
            },
        };
        file.new.store(false, Ordering::Relaxed);
        file.attrs.note_version(&stored.etag);
        let place = file.place();
        self.cancel_delete(&place.key);
        record(&Committed {
            place,
            etag: stored.etag,
            size: stored.size,
            posix: stored.posix,
        })
    }

    /// The kernel's RELEASE of `fh`, noted at once on the request loop's
    /// thread (see the module doc). Returns the file if this was its last
    /// descriptor: the caller then stores it with [`Writer::release`].
    pub fn releasing(&self, fh: u64) -> Option<Arc<WritableFile<S>>> {
        let mut handles = self.handles.lock();
        let file = handles.remove(&fh)?.file;
        if file.handles.fetch_sub(1, Ordering::AcqRel) == 1 {
            file.closing.store(true, Ordering::Release);
            Some(file)
        } else {
            None
        }
    }

    /// Stores a file whose last descriptor was released (an empty streaming
    /// file too). An unlinked file is given up instead. The caller records
    /// the outcome, then calls [`Writer::forget`].
    pub async fn release(
        &self,
        file: &WritableFile<S>,
        record: &Record<'_>,
    ) -> Result<(), FsError> {
        let content = file.content.lock().await;
        if file.unlinked.load(Ordering::Relaxed) {
            if let Content::Streaming(upload) = &*content {
                upload.abort().await;
            }
            return Ok(());
        }
        drop(content);
        self.commit(file, true, record).await
    }

    /// Removes a released file from the table and wakes whoever waits for
    /// it to settle.
    pub fn forget(&self, file: &Arc<WritableFile<S>>) {
        self.remove_file(file);
    }

    /// unlink(2) of `file`, open for writing: once a commit in flight has
    /// ended, it leaves the namespace and is not stored when it closes; its
    /// object (if any) is deleted once nothing reads it. `listed_etag` is
    /// the version the catalog lists, for a file not yet stored here.
    pub async fn unlink(&self, file: &Arc<WritableFile<S>>, listed_etag: &str) {
        let content = file.content.lock().await;
        file.unlinked.store(true, Ordering::Relaxed);
        if !file.is_new() {
            let etag = match &*content {
                Content::Staged(staged) => staged.base_version().map(|(e, _)| e),
                Content::Streaming(_) => None,
            };
            self.defer_delete(&file.place().key, etag.as_deref().unwrap_or(listed_etag));
        }
        drop(content);
        self.remove_file(file);
    }

    /// Keeps `key` (version `etag`) until nothing on this mount reads it,
    /// then deletes it (see [`Writer::take_delete`]).
    pub fn defer_delete(&self, key: &str, etag: &str) {
        self.deferred_deletes
            .lock()
            .insert(key.to_owned(), etag.to_owned());
    }

    /// A new file under `key` replaces the one whose delete was deferred.
    pub fn cancel_delete(&self, key: &str) {
        self.deferred_deletes.lock().remove(key);
    }

    /// If `key`'s deferred delete is due now (nothing reads it any more),
    /// takes it and returns the ETag to delete; the caller deletes the
    /// object if it is still that version.
    pub fn take_delete(&self, key: &str) -> Option<String> {
        let mut deferred = self.deferred_deletes.lock();
        if !deferred.contains_key(key) || self.reader.is_open(key) || self.key_open(key) {
            return None;
        }
        deferred.remove(key)
    }

    /// Whether a descriptor still reads or writes `key` (unlinked included).
    fn key_open(&self, key: &str) -> bool {
        self.handles.lock().values().any(|h| h.file.key_is(key))
    }

    /// Aborts every streaming upload not completed yet (at shutdown);
    /// staged changes not committed are dropped, leaving the objects as
    /// they were.
    pub async fn abort_all(&self) {
        let files: Vec<_> = self.files.lock().values().cloned().collect();
        for file in files {
            if let Content::Streaming(upload) = &*file.content.lock().await {
                upload.abort().await;
            }
        }
    }
}
