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
use tracing::{debug, info, warn};

use super::{Attr, Creator, S3Fs};
use crate::catalog::{
    Entry, EntryKind, Ino, ObjectAttrs, VersionTime, DIR_MARKER_VERSION, ROOT_INO,
};
use crate::error::FsError;
use crate::names;
use crate::store::{Body, FanOut, ObjectStore, PosixMeta, StoreError, WriteCondition};
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
        if let Err(e) = self
            .store()
            .put(
                &prefix,
                Body::Empty,
                WriteCondition::Always,
                &PosixMeta::NONE,
            )
            .await
        {
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
                .delete(&key, None)
                .await
                .map_err(|e| FsError::store(&key, e))?;
        }
        // A new object under the name may have the same ETag (the same
        // bytes) and none of these attributes.
        self.catalog.attrs().forget(&key);
        self.catalog.record(parent, name, None)?;
        self.keep_dir(parent).await;
        Ok(())
    }

    pub async fn mkdir(&self, parent: Ino, name: &str, creator: Creator) -> Result<Attr, FsError> {
        let prefix = self.free_name(parent, name).await?;
        let dir_prefix = names::child_dir_prefix(&prefix, name);
        let posix = self.new_dir_attrs(creator);
        self.store()
            .put(&dir_prefix, Body::Empty, WriteCondition::Always, &posix)
            .await
            .map_err(|e| FsError::store(&dir_prefix, e))?;
        self.record_attrs(&dir_prefix, DIR_MARKER_VERSION, posix, None);
        let entry = Entry {
            name: name.to_owned(),
            kind: EntryKind::Dir,
            mtime: SystemTime::now(),
        };
        self.catalog.record(parent, name, Some(entry.clone()))?;
        self.catalog.record_new_dir(&dir_prefix);
        let ino = self.catalog.resolve(parent, &entry)?;
        let attr = self.attr_known(ino, &dir_prefix, &entry);
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
            .delete(&prefix, None)
            .await
            .map_err(|e| FsError::store(&prefix, e))?;
        self.catalog.attrs().forget(&prefix);
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
        let (dst_is_dir, target) = match self.catalog.lookup(new_parent, new_name).await {
            Ok((_, d)) => match d.kind {
                EntryKind::File { etag, .. } if !etag.is_empty() => {
                    (Some(false), MoveTarget::Replacing(etag))
                }
                kind => (Some(kind == EntryKind::Dir), MoveTarget::Free),
            },
            Err(FsError::NotFound) => (open_target.as_ref().map(|_| false), MoveTarget::Free),
            Err(e) => return Err(e),
        };
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
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
        // A target that holds the very version being moved is another
        // mount's claim of this file in progress (a copy keeps its source's
        // ETag): the copy must not go over it, but fail as a lost claim.
        let target = match (&target, src.as_ref().map(|e| &e.kind)) {
            (MoveTarget::Replacing(t), Some(EntryKind::File { etag, .. }))
                if same_etag(t, etag) =>
            {
                MoveTarget::Free
            }
            _ => target,
        };
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
            let src_mtime = src.as_ref().map(|e| e.mtime);
            // The attributes the object takes along, to remember at its new key.
            let moving = parking_lot::Mutex::new(None);
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
                    let attrs = &moving;
                    let moved = self
                        .writer
                        .move_open(file, place, &record, |etag, size| async move {
                            // Just stored by this mount: known without asking.
                            let posix = self
                                .moving_attrs(&from, &etag, None)
                                .await?
                                .map_or(PosixMeta::NONE, |a| a.posix);
                            *attrs.lock() = Some((posix, None));
                            let source = (from.as_str(), etag.as_str(), size);
                            move_object(&*store, source, &to, target, no_replace, &posix).await
                        })
                        .await?;
                    moved
                }
                (None, Some(EntryKind::File { size, etag })) => {
                    let known = match self.moving_attrs(&key, &etag, src_mtime).await {
                        Ok(known) => known,
                        Err(e) if e.is_not_found() => {
                            // Gone (to another mount's claim): so it is here too.
                            self.catalog.record(parent, name, None)?;
                            return Err(FsError::NotFound);
                        }
                        Err(e) => return Err(e),
                    };
                    let posix = known.as_ref().map_or(PosixMeta::NONE, |a| a.posix);
                    *moving.lock() = Some((posix, known.and_then(|a| a.link)));
                    let moved = self
                        .claim_and_move((&key, &etag, size), &new_key, target, no_replace, &posix)
                        .await;
                    if moved.as_ref().is_err_and(FsError::is_not_found) {
                        // Gone to another mount: so it is here too.
                        self.catalog.record(parent, name, None)?;
                    }
                    (moved?, size)
                }
                (None, _) => return Err(FsError::NotFound),
            };
            if let Some((posix, link)) = moving.into_inner() {
                self.catalog.attrs().forget(&key);
                self.record_attrs(&new_key, &etag, posix, link);
            }
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

    /// Moves one listed file (version `etag` of `from`) as a claim: under
    /// its claim lock where the store enforces write conditions, so that
    /// of several mounts renaming it at once exactly one wins, whatever
    /// names they move it to (see `claim_lock`).
    async fn claim_and_move(
        &self,
        (from, etag, size): (&str, &str, u64),
        to: &str,
        target: MoveTarget,
        no_replace: bool,
        posix: &PosixMeta,
    ) -> Result<String, FsError> {
        let store = self.store();
        let source = (from, etag, size);
        if !store.enforces_conditions() {
            return move_object(&**store, source, to, target, no_replace, posix).await;
        }
        let Some(lock) = self.claims.take(&**store, from, etag).await? else {
            return Err(FsError::NotFound);
        };
        let moved = move_object(&**store, source, to, target, no_replace, posix).await;
        match moved {
            Ok(_) => self.claims.retire(store, lock).await,
            // Lost, or failed with the file left where it was (a copy made
            // is taken back while the source is there): free for a claim.
            Err(_) => self.claims.release(&**store, lock).await,
        }
        moved
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
                let attrs = self.catalog.attrs().clone();
                let keeps_posix = self.keeps_posix();
                let started = moves
                    .spawn(async move {
                        // Each object takes its attributes along; a marker's
                        // are remembered under no ETag of its own.
                        // Not learned, not moved: the copy would lose them.
                        let known = match (keeps_posix, obj.key.ends_with('/')) {
                            (false, _) => None,
                            (true, true) => Some(attrs.learn_marker(&obj.key).await?),
                            (true, false) => {
                                let listed = Some(obj.last_modified);
                                Some(attrs.learn(&obj.key, &obj.etag, listed).await?)
                            }
                        };
                        let posix = known.as_ref().map_or(PosixMeta::NONE, |a| a.posix);
                        let source = (obj.key.as_str(), obj.etag.as_str(), obj.size);
                        let new_etag = move_object(
                            &*store,
                            source,
                            &new_key,
                            MoveTarget::Anything,
                            false,
                            &posix,
                        )
                        .await?;
                        if let Some(known) = known {
                            attrs.forget(&obj.key);
                            let etag = match obj.key.ends_with('/') {
                                true => DIR_MARKER_VERSION.to_owned(),
                                false => new_etag,
                            };
                            attrs.record(
                                &new_key,
                                ObjectAttrs {
                                    etag,
                                    written: VersionTime::WrittenHere(SystemTime::now()),
                                    ..(*known).clone()
                                },
                            );
                        }
                        Ok(())
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
                .put(to, Body::Empty, WriteCondition::Always, &PosixMeta::NONE)
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

/// What a file's new name holds, as far as this mount knows, when the file
/// moves there.
#[derive(Debug, Clone)]
pub(super) enum MoveTarget {
    /// Nothing: the move creates the name, and fails if another client
    /// creates it first.
    Free,
    /// This version of a file, which the move replaces (and no other).
    Replacing(String),
    /// Whatever is there (objects of a directory being moved).
    Anything,
}

/// Moves version `etag` of `from` to `to` so that, among mounts moving the
/// same file at once, exactly one succeeds (docs/SEMANTICS.md, "Claims"):
/// a copy pinned to the source version and conditional on what `to` holds,
/// then a delete of the source pinned to the version copied. Returns the
/// copy's ETag. A loser gets [`FsError::NotFound`] (the source went to
/// another mount) or, with `no_replace`, [`FsError::Exists`], and leaves
/// nothing behind; a newer version written to `from` meanwhile is never
/// deleted. On a store that ignores write conditions this is a plain copy
/// and delete.
pub(super) async fn move_object<S: ObjectStore>(
    store: &S,
    (from, etag, size): (&str, &str, u64),
    to: &str,
    target: MoveTarget,
    no_replace: bool,
    posix: &PosixMeta,
) -> Result<String, FsError> {
    let new_etag = copy_for_move(store, (from, etag, size), to, target, no_replace, posix).await?;
    debug!(from, to, etag, new_etag, "copied for a rename");
    match store.delete(from, Some(etag)).await {
        Ok(()) => {
            debug!(from, to, "renamed");
            Ok(new_etag)
        }
        // A newer version was written to the old name after the copy: the
        // version this rename moved is moved, the new one stays.
        Err(StoreError::PreconditionFailed) => {
            debug!(
                from,
                to, "the source was replaced during the rename; its new version stays"
            );
            Ok(new_etag)
        }
        // Another mount moved the source (to another name) first: the copy
        // made here is taken back, only the version this mount wrote.
        Err(StoreError::NotFound) => {
            debug!(
                from,
                to, "the source went to another mount after the copy; taking the copy back"
            );
            if let Err(e) = store.delete(to, Some(&new_etag)).await {
                warn!(to, error = %e, "cannot take back the copy of a lost rename");
            }
            Err(FsError::NotFound)
        }
        // The source could not be deleted: the copy is taken back while the
        // source is still there, so the file is moved once or not at all,
        // and the rename can be tried again. (A copy that replaced a file
        // leaves the target name empty then: that file was replaced.)
        Err(e) => {
            if let Ok(now) = store.head(from).await {
                if same_etag(&now.etag, etag) {
                    warn!(from, to, error = %e, "cannot delete the source of a rename; taking the copy back");
                    if let Err(e) = store.delete(to, Some(&new_etag)).await {
                        warn!(to, error = %e, "cannot take back the copy of a failed rename");
                    }
                }
            }
            Err(FsError::store(from, e))
        }
    }
}

/// The copy step of [`move_object`], with the reading of a failed
/// condition: which side changed, and whether the copy is then lost.
async fn copy_for_move<S: ObjectStore>(
    store: &S,
    (from, etag, size): (&str, &str, u64),
    to: &str,
    target: MoveTarget,
    no_replace: bool,
    posix: &PosixMeta,
) -> Result<String, FsError> {
    let mut target = target;
    // One more try at most: over a file that appeared at `to` meanwhile.
    for _ in 0..2 {
        let condition = match &target {
            MoveTarget::Free => WriteCondition::IfAbsent,
            MoveTarget::Replacing(etag) => WriteCondition::IfMatch(etag),
            MoveTarget::Anything => WriteCondition::Always,
        };
        match store.copy(from, etag, size, to, condition, posix).await {
            Ok(new_etag) => return Ok(new_etag),
            Err(StoreError::PreconditionFailed) => {}
            Err(e) => return Err(FsError::store(from, e)),
        }
        // The source version is gone (moved by another mount, replaced,
        // deleted): this rename has nothing to move.
        match store.head(from).await {
            Ok(now) if same_etag(&now.etag, etag) => {}
            Ok(_) | Err(StoreError::NotFound) => {
                debug!(
                    from,
                    to, etag, "the source version is gone: the rename is lost"
                );
                return Err(FsError::NotFound);
            }
            Err(e) => return Err(FsError::store(from, e)),
        }
        // The source is still there: the target changed.
        if no_replace {
            return Err(FsError::Exists);
        }
        match store.head_metadata(to).await {
            // Another mount is moving this same version there: it won.
            Ok((_, marks))
                if marks
                    .copied_from
                    .as_deref()
                    .is_some_and(|e| same_etag(e, etag)) =>
            {
                debug!(
                    from,
                    to, "another mount is moving this version there: the rename is lost"
                );
                return Err(FsError::NotFound);
            }
            // Another file appeared there: a rename replaces it, as on a disk.
            Ok((meta, _)) => target = MoveTarget::Replacing(meta.etag),
            Err(StoreError::NotFound) => target = MoveTarget::Free,
            Err(e) => return Err(FsError::store(to, e)),
        }
    }
    Err(FsError::store(to, StoreError::PreconditionFailed))
}

/// ETags compare without their quotes: stores differ in quoting them.
fn same_etag(a: &str, b: &str) -> bool {
    a.trim_matches('"') == b.trim_matches('"')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::{join_all, run_on_one_thread as run};
    use crate::store::MemoryStore;

    /// `claimants` moves of `from` at once, to `targets[i % len]`; the
    /// outcome of each.
    fn claim(
        store: &MemoryStore,
        claimants: usize,
        targets: &[&str],
        no_replace: bool,
    ) -> Vec<Result<String, FsError>> {
        let etag = store.head_metadata_sync("incoming/x");
        run(async {
            let moves = (0..claimants).map(|i| {
                let (etag, to) = (etag.clone(), targets[i % targets.len()]);
                async move {
                    move_object(
                        store,
                        ("incoming/x", &etag, 4),
                        to,
                        MoveTarget::Free,
                        no_replace,
                        &PosixMeta::NONE,
                    )
                    .await
                }
            });
            join_all(moves).await
        })
    }

    impl MemoryStore {
        fn head_metadata_sync(&self, key: &str) -> String {
            run(self.head(key)).unwrap().etag
        }
    }

    fn winners(outcomes: &[Result<String, FsError>]) -> usize {
        outcomes.iter().filter(|r| r.is_ok()).count()
    }

    #[test]
    fn of_many_mounts_claiming_one_file_for_one_name_exactly_one_wins() {
        let store = MemoryStore::new(true);
        store.insert("incoming/x", "data");
        let outcomes = claim(&store, 6, &["processing/x"], false);
        assert_eq!(winners(&outcomes), 1, "{outcomes:?}");
        assert!(outcomes
            .iter()
            .all(|r| matches!(r, Ok(_) | Err(FsError::NotFound))));
        assert_eq!(store.keys(), ["processing/x"]);
        assert_eq!(store.bytes("processing/x").unwrap(), "data");
    }

    #[test]
    fn of_claims_of_one_file_to_different_names_exactly_one_keeps_a_copy() {
        let store = MemoryStore::new(true);
        store.insert("incoming/x", "data");
        let outcomes = claim(&store, 4, &["a/x", "b/x", "c/x", "d/x"], false);
        assert_eq!(winners(&outcomes), 1, "{outcomes:?}");
        assert_eq!(
            store.keys().len(),
            1,
            "the losers left copies: {:?}",
            store.keys()
        );
        assert_eq!(store.bytes(&store.keys()[0]).unwrap(), "data");
    }

    #[test]
    fn under_noreplace_a_name_taken_meanwhile_is_left_alone() {
        let store = MemoryStore::new(true);
        store.insert("incoming/x", "data");
        store.insert("processing/x", "someone else's");
        let outcomes = claim(&store, 1, &["processing/x"], true);
        assert!(matches!(outcomes[0], Err(FsError::Exists)), "{outcomes:?}");
        assert_eq!(store.bytes("processing/x").unwrap(), "someone else's");
        assert_eq!(store.bytes("incoming/x").unwrap(), "data");
    }

    #[test]
    fn a_plain_rename_replaces_a_file_that_appeared_at_the_target() {
        let store = MemoryStore::new(true);
        store.insert("incoming/x", "data");
        store.insert("processing/x", "an unrelated file");
        let outcomes = claim(&store, 1, &["processing/x"], false);
        assert!(outcomes[0].is_ok(), "{outcomes:?}");
        assert_eq!(store.keys(), ["processing/x"]);
        assert_eq!(store.bytes("processing/x").unwrap(), "data");
    }

    #[test]
    fn a_source_replaced_before_the_move_is_not_moved_nor_deleted() {
        let store = MemoryStore::new(true);
        let old = store.insert("incoming/x", "old");
        store.insert("incoming/x", "new");
        let moved = run(move_object(
            &store,
            ("incoming/x", &old, 3),
            "processing/x",
            MoveTarget::Free,
            false,
            &PosixMeta::NONE,
        ));
        assert!(matches!(moved, Err(FsError::NotFound)), "{moved:?}");
        assert_eq!(store.keys(), ["incoming/x"]);
        assert_eq!(store.bytes("incoming/x").unwrap(), "new");
    }

    #[test]
    fn without_enforced_conditions_claims_are_not_exclusive() {
        // What a store that ignores conditions (Garage) allows: the reason
        // docs/SEMANTICS.md says "one loader per prefix" there.
        let store = MemoryStore::new(false);
        store.insert("incoming/x", "data");
        let outcomes = claim(&store, 3, &["processing/x"], false);
        assert!(winners(&outcomes) > 1, "{outcomes:?}");
    }
}
