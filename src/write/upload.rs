//! Uploads of files written through the mount.
//!
//! A file being written is spooled to an unlinked local file, and sent to S3
//! while it grows: once it is two parts ahead of what was sent, the next part
//! goes out as part of a multipart upload, in the background, streamed from
//! the spool (no part is held in memory). Close (`flush`) sends the rest and
//! completes the upload, so the object appears under its key whole, at once;
//! a file smaller than two parts is sent with one PUT instead. A failure
//! aborts the multipart upload, so nothing partial is ever left under a key.
//!
//! Writes may land anywhere at or after the first byte not yet sent, so
//! tools that seek back a little (to patch a header in the last part, say)
//! work; a write into a part already sent fails with EOPNOTSUPP.
//!
//! Memory: parts stream from the spool, so memory does not grow with file
//! size. Disk: sent parts are punched out of the spool, and a writer waits
//! while more than [`UploadConfig::max_parts_in_flight`] parts of its file
//! are queued, so the spool holds a few parts per open file.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{Mutex, Semaphore};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use super::pending_attrs::PendingAttrs;
use super::spool::{SpoolBudget, SpoolFile};
use crate::error::FsError;
use crate::read::disk_cache::DiskCache;
use crate::store::{Body, ObjectStore, PosixMeta, StoreError, WriteCondition};

/// S3's limit on the number of parts of one upload.
const MAX_PARTS: u32 = 10_000;
/// S3's limit on the size of one part.
const MAX_PART_SIZE: u64 = 5 << 30;

/// How files are uploaded; filled from the command line.
#[derive(Debug, Clone)]
pub struct UploadConfig {
    /// Size of the first parts; later parts grow (see [`part_size`]).
    pub part_size: u64,
    /// Where spool files are created (and at once unlinked).
    pub spool_dir: PathBuf,
    /// Parts of one file queued or in flight before its writer waits.
    pub max_parts_in_flight: usize,
    /// Part uploads in flight at once across all files.
    pub max_concurrent_parts: usize,
    /// Disk space all spool files together may hold.
    pub spool_limit: u64,
    /// Largest object that may be changed in place (not only appended to).
    pub max_modify_size: u64,
    /// The disk cache of object data, filled with files stored in one
    /// request, in units of `cache_segment` bytes (the read path's
    /// segments), so a file just written reads back from disk.
    pub data_cache: Option<Arc<DiskCache>>,
    pub cache_segment: u64,
}

/// Size of part `number` (from 1): the configured size for the first 1,000
/// parts, doubling every 1,000 parts after that, so a file streamed without
/// a known size can still reach S3's 5 TiB object limit within 10,000 parts
/// (8 MiB parts: 8 GiB in the first 1,000, over 8 TiB in all).
pub fn part_size(base: u64, number: u32) -> u64 {
    let doublings = (number.saturating_sub(1) / 1000).min(20);
    base.saturating_mul(1 << doublings).min(MAX_PART_SIZE)
}

/// Counters of uploads, for logs, tests and metrics.
#[derive(Debug, Default)]
pub struct UploadStats {
    pub started: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    /// Given up at shutdown before completing.
    pub abandoned: AtomicU64,
    pub parts: AtomicU64,
    pub bytes: AtomicU64,
    /// Bytes of changed files that S3 copied server-side instead of
    /// receiving them again (UploadPartCopy).
    pub copied_bytes: AtomicU64,
}

/// Starts uploads and bounds their concurrency and their spool.
pub struct Uploads<S> {
    store: Arc<S>,
    config: UploadConfig,
    slots: Arc<Semaphore>,
    stats: UploadStats,
    budget: Arc<SpoolBudget>,
}

impl<S: ObjectStore> Uploads<S> {
    pub fn new(store: Arc<S>, config: UploadConfig) -> Arc<Self> {
        Arc::new(Uploads {
            slots: Arc::new(Semaphore::new(config.max_concurrent_parts.max(1))),
            budget: SpoolBudget::new(config.spool_limit),
            store,
            config,
            stats: UploadStats::default(),
        })
    }

    pub fn config(&self) -> &UploadConfig {
        &self.config
    }

    /// A part slot: part uploads in flight across all files are bounded.
    pub async fn slot(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.slots
            .clone()
            .acquire_owned()
            .await
            .expect("the part semaphore is never closed")
    }

    /// A new spool file, within the shared budget.
    pub fn spool(&self) -> Result<SpoolFile, FsError> {
        SpoolFile::create(&self.config.spool_dir, self.budget.clone())
    }

    /// Bytes held by spool files now.
    pub fn spool_used(&self) -> u64 {
        self.budget.used()
    }

    pub fn stats(&self) -> &UploadStats {
        &self.stats
    }

    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Starts an upload to `key`; nothing is sent until it has data. With
    /// `create_only` (O_EXCL), it completes only if no other client created
    /// the key meanwhile, and closing then fails with EEXIST.
    pub fn start(
        self: &Arc<Self>,
        key: &str,
        create_only: bool,
        attrs: Arc<PendingAttrs>,
    ) -> Result<Arc<Upload<S>>, FsError> {
        let spool = Arc::new(self.spool()?);
        self.stats.started.fetch_add(1, Ordering::Relaxed);
        Ok(Arc::new(Upload {
            key: key.to_owned(),
            uploads: self.clone(),
            spool,
            len: AtomicU64::new(0),
            state: Mutex::new(State::default()),
            create_only,
            attrs,
        }))
    }
}

/// What a finished upload produced.
#[derive(Debug, Clone)]
pub struct Uploaded {
    pub etag: String,
    pub size: u64,
    /// The POSIX attributes the object carries.
    pub posix: PosixMeta,
}

enum PartUpload {
    Running(JoinHandle<Result<String, StoreError>>),
    Done(String),
}

#[derive(Default)]
struct State {
    /// Bytes handed to part uploads; writes before this offset are refused.
    sent: u64,
    /// End of the furthest write: parts are sent only below it (a file
    /// grown by ftruncate is not sent as zeros before it is written), and
    /// the spool budget is taken up to it.
    written: u64,
    upload_id: Option<String>,
    /// The POSIX attributes the multipart upload was started with.
    carried: PosixMeta,
    parts: Vec<PartUpload>,
    /// The first failure of a part; the upload cannot succeed after it.
    failed: Option<StoreError>,
    /// A write that could not be kept (spool full, disk error): the file
    /// lacks bytes its writer wrote, so it is never stored.
    lost_write: Option<FsError>,
    /// Set once the upload has completed, failed or been aborted.
    outcome: Option<Result<Uploaded, FsError>>,
}

/// One file being written.
pub struct Upload<S> {
    key: String,
    uploads: Arc<Uploads<S>>,
    spool: Arc<SpoolFile>,
    len: AtomicU64,
    state: Mutex<State>,
    create_only: bool,
    attrs: Arc<PendingAttrs>,
}

impl<S: ObjectStore> Upload<S> {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Whether it completes only if the key is still free (O_EXCL).
    pub fn is_create_only(&self) -> bool {
        self.create_only
    }

    /// Bytes written so far (the file's size).
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the upload has completed, failed or been aborted.
    pub fn is_finished(&self) -> bool {
        self.state.try_lock().is_ok_and(|st| st.outcome.is_some())
    }

    /// Writes `data` at `offset`; may send parts, and waits while too many
    /// parts of this file are in flight.
    pub async fn write(&self, offset: u64, data: Vec<u8>) -> Result<u32, FsError> {
        let mut st = self.state.lock().await;
        self.check_open(&st)?;
        if offset < st.sent {
            warn!(key = %self.key, offset, sent = st.sent, "write into a part already uploaded refused");
            return Err(FsError::Unsupported(
                "rewriting bytes of a part already uploaded",
            ));
        }
        let n = data.len() as u32;
        let end = offset + data.len() as u64;
        let grow = end.saturating_sub(st.written);
        if self.spool.reserve(grow).is_err() {
            // Parts in flight give their bytes back once sent: wait for
            // them before telling the writer the spool is full.
            for i in 0..st.parts.len() {
                self.settle(&mut st, i).await?;
            }
            if let Err(e) = self.spool.reserve(grow) {
                st.lost_write = Some(e.clone());
                return Err(e);
            }
        }
        if let Err(e) = self.spool.write_at(data, offset).await {
            self.spool.release(grow);
            st.lost_write = Some(e.clone());
            return Err(e);
        }
        st.written = st.written.max(end);
        self.len.fetch_max(end, Ordering::Relaxed);
        self.send_ready_parts(&mut st).await?;
        self.wait_for_room(&mut st).await?;
        Ok(n)
    }

    /// Sets the file's size (ftruncate). Bytes already sent cannot change.
    pub async fn truncate(&self, size: u64) -> Result<(), FsError> {
        let mut st = self.state.lock().await;
        self.check_open(&st)?;
        if size < st.sent {
            return Err(FsError::Unsupported(
                "truncating into a part already uploaded",
            ));
        }
        self.spool.set_len(size)?;
        self.spool.release(st.written.saturating_sub(size));
        st.written = st.written.min(size);
        self.len.store(size, Ordering::Relaxed);
        self.send_ready_parts(&mut st).await
    }

    /// Sends what is left and completes the upload; the object appears now.
    /// Later calls return the same outcome without sending anything.
    pub async fn finish(&self) -> Result<Uploaded, FsError> {
        let mut st = self.state.lock().await;
        if let Some(outcome) = &st.outcome {
            return outcome.clone();
        }
        let result = self.finish_locked(&mut st).await;
        match &result {
            Ok(u) => {
                self.uploads.stats.completed.fetch_add(1, Ordering::Relaxed);
                debug!(key = %self.key, size = u.size, parts = st.parts.len(), "upload completed");
            }
            Err(e) => {
                self.uploads.stats.failed.fetch_add(1, Ordering::Relaxed);
                warn!(key = %self.key, error = %e, "upload failed; nothing was stored under the key");
                self.abort_locked(&mut st).await;
            }
        }
        st.outcome = Some(result.clone());
        result
    }

    /// Gives up an upload that never sent anything: its spool goes and no
    /// counter says it was abandoned.
    pub async fn abort_unused(&self) {
        let mut st = self.state.lock().await;
        if st.outcome.is_none() && st.upload_id.is_none() {
            self.uploads.stats.started.fetch_sub(1, Ordering::Relaxed);
            st.outcome = Some(Err(FsError::Spool("replaced before any write".into())));
        }
    }

    /// Gives the upload up: nothing is stored under the key.
    pub async fn abort(&self) {
        let mut st = self.state.lock().await;
        if st.outcome.is_none() {
            self.abort_locked(&mut st).await;
            self.uploads.stats.abandoned.fetch_add(1, Ordering::Relaxed);
            st.outcome = Some(Err(FsError::Spool("upload abandoned".into())));
        }
    }

    fn check_open(&self, st: &State) -> Result<(), FsError> {
        match &st.outcome {
            // A failed upload keeps saying why.
            Some(Err(e)) => return Err(e.clone()),
            // Completed already: the object is final.
            Some(Ok(_)) => return Err(FsError::BadHandle),
            None => {}
        }
        if let Some(e) = &st.lost_write {
            return Err(e.clone());
        }
        match &st.failed {
            Some(e) => Err(FsError::store(&self.key, e.clone())),
            None => Ok(()),
        }
    }

    /// Starts uploads of the parts that are complete with a part to spare.
    async fn send_ready_parts(&self, st: &mut State) -> Result<(), FsError> {
        loop {
            let size = part_size(self.uploads.config.part_size, st.parts.len() as u32 + 1);
            if st.written < st.sent + 2 * size {
                return Ok(());
            }
            self.send_part(st, st.sent + size).await?;
        }
    }

    /// Starts the upload of the next part, up to `end`.
    async fn send_part(&self, st: &mut State, end: u64) -> Result<(), FsError> {
        let number = st.parts.len() as u32 + 1;
        if number > MAX_PARTS {
            return Err(FsError::Unsupported("files larger than S3's part limit"));
        }
        let upload_id = match &st.upload_id {
            Some(id) => id.clone(),
            None => {
                let carried = self.attrs.for_commit();
                let id = self
                    .uploads
                    .store
                    .start_multipart(&self.key, &carried)
                    .await
                    .map_err(|e| FsError::store(&self.key, e))?;
                st.upload_id = Some(id.clone());
                st.carried = carried;
                id
            }
        };
        let (offset, len) = (st.sent, end - st.sent);
        let uploads = self.uploads.clone();
        let key = self.key.clone();
        let spool = self.spool.clone();
        let body = spool.body(offset..end);
        let task = tokio::spawn(async move {
            let _slot = uploads.slot().await;
            let etag = uploads
                .store
                .put_part(&key, &upload_id, number, body)
                .await?;
            uploads.stats.parts.fetch_add(1, Ordering::Relaxed);
            uploads.stats.bytes.fetch_add(len, Ordering::Relaxed);
            spool.punch(offset..offset + len);
            Ok(etag)
        });
        st.parts.push(PartUpload::Running(task));
        st.sent = end;
        Ok(())
    }

    /// Waits while more parts than allowed are in flight.
    async fn wait_for_room(&self, st: &mut State) -> Result<(), FsError> {
        let limit = self.uploads.config.max_parts_in_flight.max(1);
        loop {
            let running = st
                .parts
                .iter()
                .filter(|p| matches!(p, PartUpload::Running(_)))
                .count();
            if running <= limit {
                return Ok(());
            }
            let i = st
                .parts
                .iter()
                .position(|p| matches!(p, PartUpload::Running(_)))
                .expect("counted above");
            self.settle(st, i).await?;
        }
    }

    /// Waits for part `i` and records its ETag or the failure.
    async fn settle(&self, st: &mut State, i: usize) -> Result<(), FsError> {
        let PartUpload::Running(task) = &mut st.parts[i] else {
            return Ok(());
        };
        let result = match task.await {
            Ok(r) => r,
            Err(e) => Err(StoreError::Other(format!("part upload task failed: {e}"))),
        };
        match result {
            Ok(etag) => {
                st.parts[i] = PartUpload::Done(etag);
                Ok(())
            }
            Err(e) => {
                st.failed.get_or_insert(e.clone());
                Err(FsError::store(&self.key, e))
            }
        }
    }

    async fn finish_locked(&self, st: &mut State) -> Result<Uploaded, FsError> {
        if let Some(e) = &st.lost_write {
            return Err(e.clone());
        }
        if let Some(e) = &st.failed {
            return Err(FsError::store(&self.key, e.clone()));
        }
        let size = self.len();
        let Some(upload_id) = st.upload_id.clone() else {
            let body = if size == 0 {
                Body::Empty
            } else {
                self.spool.body(0..size)
            };
            self.check_still_free().await?;
            let posix = self.attrs.for_commit();
            let etag = self
                .uploads
                .store
                .put(&self.key, body, self.write_condition(), &posix)
                .await
                .map_err(|e| self.store_failed(e))?;
            self.uploads.stats.bytes.fetch_add(size, Ordering::Relaxed);
            self.fill_data_cache(&etag, size);
            return Ok(Uploaded { etag, size, posix });
        };
        while st.sent < size {
            let next = part_size(self.uploads.config.part_size, st.parts.len() as u32 + 1);
            self.send_part(st, (st.sent + next).min(size)).await?;
        }
        for i in 0..st.parts.len() {
            self.settle(st, i).await?;
        }
        let etags = st
            .parts
            .iter()
            .map(|p| match p {
                PartUpload::Done(etag) => etag.clone(),
                PartUpload::Running(_) => unreachable!("every part settled"),
            })
            .collect();
        self.check_still_free().await?;
        let etag = self
            .uploads
            .store
            .complete_multipart(&self.key, &upload_id, etags, self.write_condition())
            .await
            .map_err(|e| self.store_failed(e))?;
        Ok(Uploaded {
            etag,
            size,
            posix: st.carried,
        })
    }

    fn write_condition(&self) -> WriteCondition<'static> {
        match self.create_only {
            true => WriteCondition::IfAbsent,
            false => WriteCondition::Always,
        }
    }

    /// For a create-only upload: the key is still free (the store's own
    /// condition decides where it enforces one; this check narrows the
    /// window where it does not).
    async fn check_still_free(&self) -> Result<(), FsError> {
        match self.create_only {
            true => check_still_absent(&*self.uploads.store, &self.key)
                .await
                .map_err(|e| self.store_failed(e)),
            false => Ok(()),
        }
    }

    fn store_failed(&self, e: StoreError) -> FsError {
        match e {
            StoreError::PreconditionFailed if self.create_only => {
                debug!(key = %self.key, "another client created the file first; nothing stored");
                FsError::Exists
            }
            e => FsError::store(&self.key, e),
        }
    }

    /// Copies a file stored in one request from its spool into the disk
    /// cache under its new ETag, in the background (the spool stays open
    /// until then).
    fn fill_data_cache(&self, etag: &str, size: u64) {
        let Some(cache) = self.uploads.config.data_cache.clone() else {
            return;
        };
        let segment = self.uploads.config.cache_segment;
        if size == 0 || segment == 0 {
            return;
        }
        let (spool, key, etag) = (self.spool.clone(), self.key.clone(), etag.to_owned());
        tokio::spawn(async move {
            for start in (0..size).step_by(segment as usize) {
                let len = segment.min(size - start);
                let Ok(data) = spool.read_at(start, len as usize).await else {
                    return;
                };
                let id = crate::read::disk_cache::UnitId {
                    key: &key,
                    etag: &etag,
                    offset: start,
                    len,
                };
                let cache = cache.clone();
                crate::blocking::blocking(move || cache.write(&id, &data));
            }
        });
    }

    async fn abort_locked(&self, st: &mut State) {
        for part in &st.parts {
            if let PartUpload::Running(task) = part {
                task.abort();
            }
        }
        if let Some(id) = st.upload_id.take() {
            abort_upload(&self.uploads.store, &self.key, id).await;
        }
    }
}

/// Aborts a failed multipart upload, so its parts are freed. The caller
/// waits a few seconds at most: when S3 is down, the abort goes on being
/// retried in the background rather than delaying the error the program
/// is owed.
pub async fn abort_upload<S: ObjectStore>(store: &Arc<S>, key: &str, upload_id: String) {
    const WAIT: std::time::Duration = std::time::Duration::from_secs(5);
    let (store, key) = (store.clone(), key.to_owned());
    let abort = tokio::spawn(async move {
        if let Err(e) = store.abort_multipart(&key, &upload_id).await {
            warn!(key, error = %e, "cannot abort a multipart upload; a lifecycle rule (AbortIncompleteMultipartUpload) will clean it up");
        }
    });
    let _ = tokio::time::timeout(WAIT, abort).await;
}

/// `Ok` while `key` holds no object; [`StoreError::PreconditionFailed`]
/// once one is there (a create-only write would fail its condition).
pub(super) async fn check_still_absent<S: ObjectStore>(
    store: &S,
    key: &str,
) -> Result<(), StoreError> {
    match store.head(key).await {
        Err(StoreError::NotFound) => Ok(()),
        Ok(_) => Err(StoreError::PreconditionFailed),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_sizes_reach_the_largest_object_within_the_part_limit() {
        let base = 8 << 20;
        assert_eq!(part_size(base, 1), base);
        assert_eq!(part_size(base, 1000), base);
        assert_eq!(part_size(base, 1001), 2 * base);
        let total: u64 = (1..=MAX_PARTS).map(|n| part_size(base, n)).sum();
        assert!(total >= 5 << 40, "10,000 parts hold {total} bytes");
        assert!((1..=MAX_PARTS).all(|n| part_size(base, n) <= MAX_PART_SIZE));
        assert_eq!(part_size(4 << 30, 9999), MAX_PART_SIZE);
    }
}
