//! A file changed in place: appended to, written at any offset, truncated,
//! or read and written through one descriptor (sqlite, editors, git).
//!
//! Only what is written is kept locally, in a spool file; the rest of the
//! file is still the object version it was opened at (its *base*), read
//! through the read path pinned to that ETag. A commit (close, fsync) turns
//! the file into a new object whole: unchanged runs of 5 MiB or more are
//! copied server-side (UploadPartCopy pinned to the base ETag), everything
//! else is sent from the spool ([`super::plan`]). A commit happens only if
//! the object still has the base ETag: if another client replaced it, the
//! commit fails (EIO) and nothing is overwritten.

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use rangemap::RangeSet;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::pending_attrs::PendingAttrs;
use super::plan::{self, CommitPlan, PlannedPart};
use super::spool::SpoolFile;
use super::upload::{Uploaded, Uploads};
use crate::error::FsError;
use crate::read::Reader;
use crate::store::{Body, ObjectStore, PosixMeta, StoreError, WriteCondition};

/// Unchanged bytes fetched into the spool (to fill a part that must be
/// sent) are fetched in pieces of this size.
const FILL_CHUNK: u64 = 8 << 20;

/// The object version a staged file started from.
struct Base {
    etag: String,
    /// Bytes `[0, len)` not in the spool are still the base's own.
    len: u64,
    /// The base object's size, for the in-place change limit.
    object_size: u64,
    /// Read handle on the base, opened at the first read that needs it.
    read_fh: Option<u64>,
}

pub struct Staged<S: ObjectStore> {
    uploads: Arc<Uploads<S>>,
    reader: Arc<Reader<S>>,
    key: String,
    spool: Option<SpoolFile>,
    /// Byte ranges of the file held in the spool.
    present: RangeSet<u64>,
    size: u64,
    base: Option<Base>,
    /// The file differs from its base (or, with no base, was never stored).
    dirty: bool,
    /// A commit found the base replaced: the change can never be stored,
    /// and every later commit says so without asking S3 again.
    conflict: Option<FsError>,
    /// Created with O_EXCL: the first commit stores only if no other client
    /// created the key meanwhile (else EEXIST).
    create_only: bool,
    attrs: Arc<PendingAttrs>,
}

impl<S: ObjectStore> Staged<S> {
    /// A file that is not an object yet: empty, stored at its first commit
    /// (only if the key is still free, when `create_only`).
    pub fn new_file(
        uploads: Arc<Uploads<S>>,
        reader: Arc<Reader<S>>,
        key: &str,
        create_only: bool,
        attrs: Arc<PendingAttrs>,
    ) -> Self {
        let mut file = Self::with_base(uploads, reader, key, None, attrs);
        file.create_only = create_only;
        file
    }

    /// The object `key` as it is at version `etag`.
    pub fn existing(
        uploads: Arc<Uploads<S>>,
        reader: Arc<Reader<S>>,
        key: &str,
        (etag, size): (&str, u64),
        attrs: Arc<PendingAttrs>,
    ) -> Self {
        let base = Base {
            etag: etag.to_owned(),
            len: size,
            object_size: size,
            read_fh: None,
        };
        Self::with_base(uploads, reader, key, Some(base), attrs)
    }

    /// Without a base the file was never stored, so it is dirty from the
    /// start.
    fn with_base(
        uploads: Arc<Uploads<S>>,
        reader: Arc<Reader<S>>,
        key: &str,
        base: Option<Base>,
        attrs: Arc<PendingAttrs>,
    ) -> Self {
        Staged {
            attrs,
            uploads,
            reader,
            key: key.to_owned(),
            spool: None,
            present: RangeSet::new(),
            size: base.as_ref().map_or(0, |b| b.len),
            dirty: base.is_none(),
            base,
            conflict: None,
            create_only: false,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    fn spool(&mut self) -> Result<&SpoolFile, FsError> {
        if self.spool.is_none() {
            self.spool = Some(self.uploads.spool()?);
        }
        Ok(self.spool.as_ref().expect("created above"))
    }

    /// Refuses changes below the end of a base larger than
    /// `--max-modify-size` (appends are always allowed).
    fn check_in_place(&self, offset: u64) -> Result<(), FsError> {
        let limit = self.uploads.config().max_modify_size;
        match &self.base {
            Some(b) if offset < b.len && b.object_size > limit => {
                warn!(key = %self.key, size = b.object_size, limit, "changing an object this large in place is refused (EFBIG); raise --max-modify-size, or only append");
                Err(FsError::TooBig(
                    "changing an object larger than --max-modify-size in place",
                ))
            }
            _ => Ok(()),
        }
    }

    pub async fn write(&mut self, offset: u64, data: Vec<u8>) -> Result<u32, FsError> {
        self.check_in_place(offset)?;
        let n = data.len() as u32;
        let end = offset + data.len() as u64;
        let held: u64 = self
            .present
            .overlapping(&(offset..end))
            .map(|r| r.end.min(end) - r.start.max(offset))
            .sum();
        let spool = self.spool()?;
        spool.reserve(end - offset - held)?;
        if let Err(e) = spool.write_at(data, offset).await {
            spool.release(end - offset - held);
            return Err(e);
        }
        if end > offset {
            self.present.insert(offset..end);
        }
        self.size = self.size.max(end);
        self.dirty = true;
        Ok(n)
    }

    /// ftruncate: bytes past `size` are gone; growing reads as zeros.
    pub fn truncate(&mut self, size: u64) -> Result<(), FsError> {
        if size == self.size {
            return Ok(());
        }
        if size < self.size && size > 0 {
            // Truncating to zero keeps nothing of the base: no in-place cost.
            self.check_in_place(size)?;
        }
        if let Some(spool) = &self.spool {
            spool.set_len(size)?;
            let dropped: u64 = self
                .present
                .overlapping(&(size..u64::MAX))
                .map(|r| r.end - r.start.max(size))
                .sum();
            spool.release(dropped);
        }
        self.present.remove(size..u64::MAX);
        if let Some(base) = &mut self.base {
            base.len = base.len.min(size);
        }
        self.size = size;
        self.dirty = true;
        Ok(())
    }

    /// Reads what the file holds now: written bytes from the spool, the
    /// rest from the base version, zeros past the base's end.
    pub async fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, FsError> {
        let end = offset.saturating_add(len as u64).min(self.size);
        if offset >= end {
            return Ok(Vec::new());
        }
        let mut out = vec![0u8; (end - offset) as usize];
        let held: Vec<Range<u64>> = self
            .present
            .overlapping(&(offset..end))
            .map(|r| r.start.max(offset)..r.end.min(end))
            .collect();
        for r in held {
            let data = self
                .spool()?
                .read_at(r.start, (r.end - r.start) as usize)
                .await?;
            let at = (r.start - offset) as usize;
            out[at..at + data.len()].copy_from_slice(&data);
        }
        let base_end = self.base.as_ref().map_or(0, |b| b.len).min(end);
        if offset < base_end {
            let gaps: Vec<Range<u64>> = self.present.gaps(&(offset..base_end)).collect();
            for gap in gaps {
                let fh = self.base_read_handle();
                let data = self
                    .reader
                    .read(fh, gap.start, (gap.end - gap.start) as u32)
                    .await?;
                if data.len() as u64 != gap.end - gap.start {
                    return Err(FsError::store(
                        &self.key,
                        StoreError::Other("the base version ended early".into()),
                    ));
                }
                let at = (gap.start - offset) as usize;
                out[at..at + data.len()].copy_from_slice(&data);
            }
        }
        Ok(out)
    }

    fn base_read_handle(&mut self) -> u64 {
        let base = self.base.as_mut().expect("reads below the base's end");
        *base.read_fh.get_or_insert_with(|| {
            self.reader
                .open_exact(&self.key, &base.etag, base.object_size)
        })
    }

    /// Stores the file as a new object if it changed; returns what was
    /// stored. Fails, storing nothing, if the object is no longer the base
    /// version. After a commit the new object is the base.
    pub async fn commit(&mut self) -> Result<Option<Uploaded>, FsError> {
        if !self.dirty {
            return Ok(None);
        }
        if let Some(e) = &self.conflict {
            return Err(e.clone());
        }
        let result = self.store_new_version().await;
        if let Err(e @ FsError::Store { source, .. }) = &result {
            if matches!(source, StoreError::PreconditionFailed) {
                self.conflict = Some(e.clone());
            }
        }
        result.map(Some)
    }

    async fn store_new_version(&mut self) -> Result<Uploaded, FsError> {
        self.uploads.stats().started.fetch_add(1, Ordering::Relaxed);
        let size = self.size;
        let unchanged: Vec<Range<u64>> = match &self.base {
            Some(b) => self.present.gaps(&(0..b.len.min(size))).collect(),
            None => Vec::new(),
        };
        let config = self.uploads.config();
        let plan = plan::plan(size, &unchanged, config.part_size, 2 * config.part_size);
        let posix = self.attrs.for_commit();
        let etag = match plan {
            CommitPlan::Single => {
                self.fill(0..size).await?;
                let body = if size == 0 {
                    Body::Empty
                } else {
                    self.spool()?.body(0..size)
                };
                self.check_base().await?;
                let etag = self
                    .uploads
                    .store()
                    .put(&self.key, body, self.write_condition(), &posix)
                    .await
                    .map_err(|e| self.failed(e))?;
                self.uploads
                    .stats()
                    .bytes
                    .fetch_add(size, Ordering::Relaxed);
                etag
            }
            CommitPlan::Multipart(parts) => self.multipart(parts, &posix).await?,
        };
        if let Some(fh) = self.base.take().and_then(|b| b.read_fh) {
            self.reader.release(fh);
        }
        self.base = Some(Base {
            etag: etag.clone(),
            len: size,
            object_size: size,
            read_fh: None,
        });
        self.dirty = false;
        self.uploads
            .stats()
            .completed
            .fetch_add(1, Ordering::Relaxed);
        debug!(key = %self.key, size, "changed file stored");
        Ok(Uploaded { etag, size, posix })
    }

    /// The version the file was last stored as (or opened at): its ETag
    /// and size, if it is an object.
    pub fn base_version(&self) -> Option<(String, u64)> {
        self.base.as_ref().map(|b| (b.etag.clone(), b.object_size))
    }

    /// The file, just committed (so nothing is uncommitted), was renamed to
    /// `key`, where the same bytes are now version `etag`.
    pub fn rebase(&mut self, key: &str, etag: &str) {
        self.key = key.to_owned();
        if let Some(base) = &mut self.base {
            base.etag = etag.to_owned();
            if let Some(fh) = base.read_fh.take() {
                self.reader.release(fh);
            }
        }
    }

    fn failed(&self, e: StoreError) -> FsError {
        self.uploads.stats().failed.fetch_add(1, Ordering::Relaxed);
        if self.base.is_none() && self.create_only && matches!(e, StoreError::PreconditionFailed) {
            debug!(key = %self.key, "another client created the file first; nothing stored");
            return FsError::Exists;
        }
        warn!(key = %self.key, error = %e, "storing a changed file failed; the object is as it was");
        FsError::store(&self.key, e)
    }

    /// What the key must hold for a commit to store: the base version, or
    /// (created with O_EXCL, never stored) nothing.
    fn write_condition(&self) -> WriteCondition<'_> {
        match &self.base {
            Some(base) => WriteCondition::IfMatch(&base.etag),
            None if self.create_only => WriteCondition::IfAbsent,
            None => WriteCondition::Always,
        }
    }

    /// The conflict rule: a change is stored only over the version it was
    /// made to. Stores that honour If-Match enforce it atomically; this
    /// check makes it hold on the others too, but for one round trip.
    async fn check_base(&self) -> Result<(), FsError> {
        let Some(base) = &self.base else {
            return match self.create_only {
                true => super::upload::check_still_absent(&**self.uploads.store(), &self.key)
                    .await
                    .map_err(|e| self.failed(e)),
                false => Ok(()),
            };
        };
        let unquoted = |s: &str| s.trim_matches('"').to_owned();
        match self.uploads.store().head(&self.key).await {
            Ok(meta) if unquoted(&meta.etag) == unquoted(&base.etag) => Ok(()),
            Ok(_) | Err(StoreError::NotFound) => Err(self.failed(StoreError::PreconditionFailed)),
            Err(e) => Err(self.failed(e)),
        }
    }

    /// Makes the spool hold every byte of `range`: unchanged bytes of the
    /// base are fetched (pinned to its ETag); bytes past it are zeros.
    async fn fill(&mut self, range: Range<u64>) -> Result<(), FsError> {
        if range.start < range.end {
            let spool = self.spool()?;
            spool.ensure_len(range.end)?;
        }
        let Some(base) = &self.base else {
            return Ok(());
        };
        let etag = base.etag.clone();
        let end = range.end.min(base.len);
        if range.start >= end {
            return Ok(());
        }
        let gaps: Vec<Range<u64>> = self.present.gaps(&(range.start..end)).collect();
        for gap in gaps {
            let mut at = gap.start;
            while at < gap.end {
                let to = (at + FILL_CHUNK).min(gap.end);
                let mut buf = Vec::with_capacity((to - at) as usize);
                self.uploads
                    .store()
                    .get_range(&self.key, &etag, at..to, &[to - at], &mut |b| {
                        buf.extend_from_slice(&b)
                    })
                    .await
                    .map_err(|e| self.failed(base_gone_is_conflict(e)))?;
                let spool = self.spool()?;
                spool.reserve(to - at)?;
                if let Err(e) = spool.write_at(buf, at).await {
                    spool.release(to - at);
                    return Err(e);
                }
                self.present.insert(at..to);
                at = to;
            }
        }
        Ok(())
    }

    /// Stores the file as a multipart upload of `parts`; aborts it on any
    /// failure, so nothing partial appears.
    async fn multipart(
        &mut self,
        parts: Vec<PlannedPart>,
        posix: &PosixMeta,
    ) -> Result<String, FsError> {
        for part in &parts {
            if let PlannedPart::Send(r) = part {
                self.fill(r.clone()).await?;
            }
        }
        let store = self.uploads.store().clone();
        let upload_id = store
            .start_multipart(&self.key, posix)
            .await
            .map_err(|e| self.failed(e))?;
        let result = self.send_parts(&upload_id, &parts).await;
        let result = match result {
            Ok(etags) => match self.check_base().await {
                Ok(()) => store
                    .complete_multipart(&self.key, &upload_id, etags, self.write_condition())
                    .await
                    .map_err(|e| self.failed(e)),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        if result.is_err() {
            super::upload::abort_upload(&store, &self.key, upload_id).await;
        }
        result
    }

    /// Sends or copies every part, several at once; returns their ETags.
    async fn send_parts(
        &mut self,
        upload_id: &str,
        parts: &[PlannedPart],
    ) -> Result<Vec<String>, FsError> {
        let etag = self
            .base
            .as_ref()
            .map(|b| b.etag.clone())
            .unwrap_or_default();
        let mut running = JoinSet::new();
        for (i, part) in parts.iter().enumerate() {
            let uploads = self.uploads.clone();
            let key = self.key.clone();
            let upload_id = upload_id.to_owned();
            let etag = etag.clone();
            let number = i as u32 + 1;
            let work = match part {
                PlannedPart::Send(r) => Work::Send(self.spool()?.body(r.clone()), r.end - r.start),
                PlannedPart::Copy(r) => Work::Copy(r.clone()),
            };
            running.spawn(async move {
                let _slot = uploads.slot().await;
                let store = uploads.store();
                let stats = uploads.stats();
                let result = match work {
                    Work::Copy(r) => {
                        let len = r.end - r.start;
                        let out = store
                            .copy_part(&key, &etag, r, &key, &upload_id, number)
                            .await
                            .map_err(base_gone_is_conflict);
                        if out.is_ok() {
                            stats.copied_bytes.fetch_add(len, Ordering::Relaxed);
                        }
                        out
                    }
                    Work::Send(body, len) => {
                        let out = store.put_part(&key, &upload_id, number, body).await;
                        if out.is_ok() {
                            stats.bytes.fetch_add(len, Ordering::Relaxed);
                        }
                        out
                    }
                };
                stats.parts.fetch_add(1, Ordering::Relaxed);
                (i, result)
            });
        }
        let mut etags = vec![String::new(); parts.len()];
        while let Some(joined) = running.join_next().await {
            let (i, result) = joined
                .map_err(|e| self.failed(StoreError::Other(format!("part task failed: {e}"))))?;
            etags[i] = result.map_err(|e| self.failed(e))?;
        }
        Ok(etags)
    }
}

/// The base object deleted by another client is a conflict like a
/// replaced one (EIO), not a missing file.
fn base_gone_is_conflict(e: StoreError) -> StoreError {
    match e {
        StoreError::NotFound => StoreError::PreconditionFailed,
        e => e,
    }
}

/// One part's request, owning what it needs.
enum Work {
    Copy(Range<u64>),
    Send(Body, u64),
}

impl<S: ObjectStore> Drop for Staged<S> {
    fn drop(&mut self) {
        if let Some(fh) = self.base.as_ref().and_then(|b| b.read_fh) {
            self.reader.release(fh);
        }
    }
}
