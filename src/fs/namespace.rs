//! Changing names: unlink, mkdir, rmdir and rename.
//!
//! Rename is a server-side copy pinned to the source's ETag, then a delete
//! of the source once the copy is confirmed, so a failure or crash leaves
//! both copies, never neither. A directory rename does that for every
//! object under the prefix, several at once; it is not atomic (see
//! docs/SEMANTICS.md).
//!
//! Directories stay when their last entry goes: S3 has no directories, only
//! key prefixes, so the parent's marker object (`dir/`) is created when an
//! unlink or rename empties it, and `mv incoming/* processed/` leaves an
//! empty `incoming/` behind, as on a disk.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use fuser::RenameFlags;
use tracing::{info, warn};

use super::{Attr, S3Fs};
use crate::catalog::{Entry, EntryKind, Ino, ROOT_INO};
use crate::error::FsError;
use crate::names;
use crate::store::{Body, FanOut, ObjectStore, StoreError};
use crate::write::{Committed, Place, WritableFile};

/// Objects copied at once by a directory rename.
const MOVE_CONCURRENCY: usize = 16;

impl<S: ObjectStore> S3Fs<S> {
    pub(super) fn store(&self) -> &Arc<S> {
        self.writer.uploads().store()
    }

    /// The file open for writing under `name` in `parent`, once any that
    /// was closing is stored: a request sent after `close(2)` returned
    /// never fails because the release is still in flight.
    async fn settled_open_file(&self, parent: Ino, name: &str) -> Option<Arc<WritableFile<S>>> {
        let file = self.writer.file_named(parent, name)?;
        self.writer.settle(file.ino).await
    }

    /// Keeps directory `dir` in S3 once its last entry has gone, by
    /// creating its marker object. Best effort: a failure only means the
    /// empty directory disappears for other clients.
    async fn keep_dir(&self, dir: Ino) {
        if dir == ROOT_INO || !self.catalog.known_empty(dir) {
            return;
        }
        let Ok(prefix) = self.catalog.dir_prefix(dir) else {
            return;
        };
        if let Err(e) = self.store().put(&prefix, Body::Empty, None).await {
            warn!(prefix, error = %e, "cannot keep an emptied directory (marker object not created)");
        }
    }

    /// Whether S3 holds any object under directory prefix `prefix` other
    /// than its marker. Asks S3, since other clients may have added some.
    async fn has_children(&self, prefix: &str) -> Result<bool, FsError> {
        self.writer.settle_under(prefix).await;
        if self.writer.open_under(prefix) {
            return Ok(true);
        }
        let page = self
            .store()
            .list_page(prefix, None, None, Some(2))
            .await
            .map_err(|e| FsError::store(prefix, e))?;
        Ok(page.objects.iter().any(|o| o.key != prefix))
    }

    pub async fn unlink(&self, parent: Ino, name: &str) -> Result<(), FsError> {
        self.writable()?;
        if self.policy.no_delete {
            return Err(FsError::NotPermitted("--no-delete is set"));
        }
        if let Some(file) = self.settled_open_file(parent, name).await {
            // Open for writing: it leaves the namespace now, is never
            // stored, and its object (if any) goes once nothing reads it.
            let etag = match self.catalog.lookup(parent, name).await {
                Ok((
                    _,
                    Entry {
                        kind: EntryKind::File { etag, .. },
                        ..
                    },
                )) => etag,
                _ => String::new(),
            };
            self.writer.unlink(&file, &etag).await;
            self.catalog.record(parent, name, None)?;
            // Deleted now if no descriptor is left (it may have closed
            // while the unlink waited for it), else at the last close.
            self.delete_if_due(&file.place().key).await;
            self.keep_dir(parent).await;
            return Ok(());
        }
        let (ino, entry) = self.catalog.lookup(parent, name).await?;
        if entry.is_dir() {
            return Err(FsError::IsADirectory);
        }
        let key = self.catalog.file_key(ino)?;
        if self.reader.is_open(&key) {
            // Open descriptors keep reading it, as on a disk; the object is
            // deleted when the last one closes.
            let etag = match &entry.kind {
                EntryKind::File { etag, .. } => etag.as_str(),
                EntryKind::Dir => "",
            };
            self.writer.defer_delete(&key, etag);
        } else {
            self.store()
                .delete(&key)
                .await
                .map_err(|e| FsError::store(&key, e))?;
        }
        self.catalog.record(parent, name, None)?;
        self.keep_dir(parent).await;
        Ok(())
    }

    pub async fn mkdir(&self, parent: Ino, name: &str) -> Result<Attr, FsError> {
        let prefix = self.free_name(parent, name).await?;
        let dir_prefix = names::child_dir_prefix(&prefix, name);
        self.store()
            .put(&dir_prefix, Body::Empty, None)
            .await
            .map_err(|e| FsError::store(&dir_prefix, e))?;
        let entry = Entry {
            name: name.to_owned(),
            kind: EntryKind::Dir,
            mtime: SystemTime::now(),
        };
        self.catalog.record(parent, name, Some(entry.clone()))?;
        self.catalog.record_new_dir(&dir_prefix);
        let ino = self.catalog.resolve(parent, &entry)?;
        let attr = self.attr(ino, &entry);
        self.sent_entry(parent, name, &attr);
        Ok(attr)
    }

    pub async fn rmdir(&self, parent: Ino, name: &str) -> Result<(), FsError> {
        self.writable()?;
        if self.policy.no_delete {
            return Err(FsError::NotPermitted("--no-delete is set"));
        }
        let (ino, entry) = self.catalog.lookup(parent, name).await?;
        if !entry.is_dir() {
            return Err(FsError::NotADirectory);
        }
        let prefix = self.catalog.dir_prefix(ino)?;
        if self.has_children(&prefix).await? {
            return Err(FsError::NotEmpty);
        }
        self.store()
            .delete(&prefix)
            .await
            .map_err(|e| FsError::store(&prefix, e))?;
        self.catalog.record(parent, name, None)?;
        self.catalog.forget_tree(&prefix);
        self.keep_dir(parent).await;
        Ok(())
    }

    pub async fn rename(
        &self,
        parent: Ino,
        name: &str,
        new_parent: Ino,
        new_name: &str,
        flags: RenameFlags,
    ) -> Result<(), FsError> {
        self.writable()?;
        if flags.contains(RenameFlags::RENAME_EXCHANGE) {
            return Err(FsError::Invalid("RENAME_EXCHANGE cannot be done on S3"));
        }
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return Err(FsError::Invalid("unknown rename flags"));
        }
        let new_parent_prefix = self.catalog.dir_prefix(new_parent)?;
        self.check_new_name(&new_parent_prefix, new_name)?;
        // Files closing under either name are stored first; one still open
        // is handled below.
        let open_source = self.settled_open_file(parent, name).await;
        let open_target = self.settled_open_file(new_parent, new_name).await;
        if parent == new_parent && name == new_name {
            return Ok(());
        }
        // A source open for writing may not be in the catalog yet (nothing
        // stored so far); it is a file.
        let (ino, src) = match &open_source {
            Some(file) => (file.ino, None),
            None => {
                let (ino, entry) = self.catalog.lookup(parent, name).await?;
                (ino, Some(entry))
            }
        };
        let src_is_dir = src.as_ref().is_some_and(|e| e.is_dir());
        let dst_is_dir = match self.catalog.lookup(new_parent, new_name).await {
            Ok((_, d)) => Some(d.is_dir()),
            Err(FsError::NotFound) => open_target.as_ref().map(|_| false),
            Err(e) => return Err(e),
        };
        if let Some(dst_is_dir) = dst_is_dir {
            if flags.contains(RenameFlags::RENAME_NOREPLACE) {
                return Err(FsError::Exists);
            }
            match (src_is_dir, dst_is_dir) {
                (false, true) => return Err(FsError::IsADirectory),
                (true, false) => return Err(FsError::NotADirectory),
                (false, false) if self.policy.no_overwrite => return Err(FsError::Exists),
                (false, false) => {}
                (true, true) => {
                    let dst_prefix = names::child_dir_prefix(&new_parent_prefix, new_name);
                    if self.has_children(&dst_prefix).await? {
                        return Err(FsError::NotEmpty);
                    }
                }
            }
        }
        let moved = if src_is_dir {
            let from = self.catalog.dir_prefix(ino)?;
            let to = names::child_dir_prefix(&new_parent_prefix, new_name);
            if to.starts_with(&from) {
                return Err(FsError::Invalid("a directory cannot move into itself"));
            }
            self.writer.settle_under(&from).await;
            if self.writer.open_under(&from) {
                return Err(FsError::Busy("a file below it is being written"));
            }
            self.move_tree(&from, &to).await?;
            self.catalog.forget_tree(&from);
            self.catalog.forget_tree(&to);
            Entry {
                name: new_name.to_owned(),
                kind: EntryKind::Dir,
                mtime: SystemTime::now(),
            }
        } else {
            let key = self.catalog.file_key(ino)?;
            let new_key = names::child_key(&new_parent_prefix, new_name);
            self.writer.cancel_delete(&new_key);
            if let Some(target) = &open_target {
                // Replaced, as on a disk: from now on nothing its
                // descriptors write is stored over what moves there.
                self.writer.orphan(target).await;
            }
            let store = self.store().clone();
            let (etag, size) = match (&open_source, src.map(|e| e.kind)) {
                (Some(file), _) => {
                    // Stored first (even empty) and moved under its lock;
                    // its descriptors follow it to the new name.
                    let place = Place {
                        parent: new_parent,
                        name: new_name.to_owned(),
                        key: new_key.clone(),
                    };
                    let record = |c: &Committed| self.record_commit(c);
                    let (from, to) = (key.clone(), new_key.clone());
                    self.writer
                        .move_open(file, place, &record, |etag, size| async move {
                            move_object(&*store, &from, &etag, size, &to).await
                        })
                        .await?
                }
                (None, Some(EntryKind::File { size, etag })) => (
                    move_object(&*store, &key, &etag, size, &new_key).await?,
                    size,
                ),
                (None, _) => return Err(FsError::NotFound),
            };
            Entry {
                name: new_name.to_owned(),
                kind: EntryKind::File { size, etag },
                mtime: SystemTime::now(),
            }
        };
        self.catalog.record(parent, name, None)?;
        self.catalog.record(new_parent, new_name, Some(moved))?;
        self.catalog.moved(ino, new_parent, new_name)?;
        if parent != new_parent {
            self.keep_dir(parent).await;
        }
        Ok(())
    }

    /// Moves every object under prefix `from` to the same place under `to`,
    /// several at once. Each object is deleted only after its copy is
    /// confirmed; the first failure stops the move and is returned, leaving
    /// the objects not yet moved under `from`.
    async fn move_tree(&self, from: &str, to: &str) -> Result<(), FsError> {
        let started = Instant::now();
        let mut moves = FanOut::new(MOVE_CONCURRENCY, |e| {
            FsError::store("", StoreError::Other(format!("move task failed: {e}")))
        });
        let mut token = None;
        let mut moved = 0u64;
        'pages: loop {
            let page = self
                .store()
                .list_page(from, None, token.take(), None)
                .await
                .map_err(|e| FsError::store(from, e))?;
            for obj in page.objects {
                let Some(rest) = obj.key.strip_prefix(from) else {
                    continue; // not under the prefix asked for: not ours to move
                };
                let store = self.store().clone();
                let new_key = format!("{to}{rest}");
                let started = moves
                    .spawn(async move {
                        move_object(&*store, &obj.key, &obj.etag, obj.size, &new_key)
                            .await
                            .map(|_| ())
                    })
                    .await;
                if started.is_err() {
                    break 'pages;
                }
                moved += 1;
            }
            token = page.next;
            if token.is_none() {
                break;
            }
        }
        if let Err(e) = moves.finish().await {
            warn!(from, to, error = %e, "directory rename stopped; objects not yet moved are still under the old name");
            return Err(e);
        }
        if moved == 0 {
            // A directory with no object at all (known only to this mount):
            // give the new name a marker so it exists.
            self.store()
                .put(to, Body::Empty, None)
                .await
                .map_err(|e| FsError::store(to, e))?;
        }
        info!(
            from,
            to,
            objects = moved,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "renamed directory"
        );
        Ok(())
    }
}

/// Copies version `etag` of `from` to `to`, then deletes `from`; returns
/// the copy's ETag. The source is deleted only once the copy exists.
async fn move_object<S: ObjectStore>(
    store: &S,
    from: &str,
    etag: &str,
    size: u64,
    to: &str,
) -> Result<String, FsError> {
    let new_etag = store
        .copy(from, etag, size, to)
        .await
        .map_err(|e| FsError::store(from, e))?;
    store
        .delete(from)
        .await
        .map_err(|e| FsError::store(from, e))?;
    Ok(new_etag)
}
