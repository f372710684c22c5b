//! POSIX attributes in filesystem terms: what `stat` shows (modes, owners,
//! times and symlinks kept in object metadata, see
//! [`crate::store::PosixMeta`]), when S3 is asked for them
//! (`--posix-metadata`), chmod, chown and utimens, and symlinks.
//!
//! A metadata-only change of a stored file is a server-side copy of the
//! object onto itself with the new metadata, pinned to the version seen;
//! a file open for writing takes the change into its next commit instead.
//! docs/SEMANTICS.md ("Times, modes, owners and symlinks") says what each
//! setting costs.

use std::time::SystemTime;

use tracing::debug;

use super::{Attr, S3Fs};
use crate::catalog::{
    same_etag, Entry, EntryKind, Ino, ObjectAttrs, VersionTime, DIR_MARKER_VERSION,
};
use crate::error::FsError;
use crate::names;
use crate::store::{Body, ObjectStore, PosixMeta, StoreError, WriteCondition};
use crate::write::{PendingAttrs, WritableFile};

/// When the mount reads and writes POSIX attributes (`--posix-metadata`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PosixMetadata {
    /// Never: modes and owners from the mount options, times from S3;
    /// chmod, chown, utimens and symlink fail with EPERM.
    Off,
    /// Stored with every write; an object written elsewhere is asked
    /// about (one HEAD per version, remembered) when its attributes are
    /// first needed, with its neighbours in the listing learned ahead.
    #[default]
    Lazy,
    /// As `Lazy`, and directory reads learn every entry's attributes
    /// before answering.
    Full,
}

/// Entries after a looked-up one whose attributes are learned ahead: `ls
/// -l` and rsync stat every entry in name order.
const LEARN_AHEAD: usize = 512;

/// The longest a stat waits for an object's attributes to be learned.
const LEARN_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A change asked by setattr besides the size.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttrChange {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub mtime: Option<SystemTime>,
    /// An access time was given: it is not kept (atime shows mtime).
    pub atime: bool,
}

impl AttrChange {
    /// Whether it changes what is stored (an access time alone does not).
    pub fn stores_something(&self) -> bool {
        self.mode.is_some() || self.uid.is_some() || self.gid.is_some() || self.mtime.is_some()
    }

    fn apply(&self, posix: &mut PosixMeta, file_type: u32) {
        if let Some(mode) = self.mode {
            posix.mode = Some(file_type | (mode & 0o7777));
        }
        if let Some(uid) = self.uid {
            posix.uid = Some(uid);
        }
        if let Some(gid) = self.gid {
            posix.gid = Some(gid);
        }
        if let Some(t) = self.mtime {
            posix.mtime = Some(t);
        }
    }
}

/// Who creates a file, a directory or a symlink, and with which mode.
#[derive(Debug, Clone, Copy)]
pub struct Creator {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits, the umask applied.
    pub perm: u32,
}

impl<S: ObjectStore> S3Fs<S> {
    pub(super) fn keeps_posix(&self) -> bool {
        self.owner.posix != PosixMetadata::Off
    }

    /// `attr` with what `posix` says over the mount's defaults.
    pub(super) fn apply_posix(attr: &mut Attr, posix: &PosixMeta) {
        if let Some(mode) = posix.mode {
            attr.perm = (mode & 0o7777) as u16;
            attr.is_symlink = !attr.is_dir && posix.is_symlink();
        }
        if let Some(uid) = posix.uid {
            attr.uid = uid;
        }
        if let Some(gid) = posix.gid {
            attr.gid = gid;
        }
        if let Some(t) = posix.mtime {
            attr.mtime = t;
        }
        attr.provisional = false;
    }

    /// Attributes of `entry` (object `key`) from what is known, without
    /// asking S3; `provisional` when its metadata is still to be learned.
    pub(super) fn attr_known(&self, ino: Ino, key: &str, entry: &Entry) -> Attr {
        let mut attr = self.attr(ino, entry);
        if !self.keeps_posix() {
            return attr;
        }
        let etag = match &entry.kind {
            EntryKind::File { etag, .. } if !etag.is_empty() => etag,
            EntryKind::File { .. } => return attr,
            EntryKind::Dir => {
                if let Some(known) = self.catalog.attrs().known(key, DIR_MARKER_VERSION, None) {
                    Self::apply_posix(&mut attr, &known.posix);
                }
                return attr;
            }
        };
        match self.catalog.attrs().known(key, etag, Some(entry.mtime)) {
            Some(known) => Self::apply_posix(&mut attr, &known.posix),
            None => attr.provisional = true,
        }
        attr
    }

    /// Attributes of `entry` (object `key`, named in `parent`), asking S3
    /// for its metadata if it is not known yet; the entries after it in
    /// the listing are learned ahead, in the background.
    pub(super) async fn attr_learned(
        &self,
        ino: Ino,
        parent: Ino,
        key: &str,
        entry: &Entry,
    ) -> Attr {
        let mut attr = self.attr_known(ino, key, entry);
        let etag = match &entry.kind {
            EntryKind::File { etag, .. } => etag,
            // Under `full`, a directory's marker is asked about once too.
            EntryKind::Dir => {
                if self.owner.posix == PosixMetadata::Full && !key.is_empty() {
                    match self.catalog.attrs().learn_marker(key).await {
                        Ok(known) => Self::apply_posix(&mut attr, &known.posix),
                        Err(e) => debug!(key, error = %e, "cannot learn a directory's attributes"),
                    }
                }
                return attr;
            }
        };
        if !attr.provisional {
            return attr;
        }
        self.learn_after(parent, &entry.name);
        // Learned on a task of its own, which goes on when this stat stops
        // waiting for it: a store that is slow or down makes a stat show
        // the defaults (provisional, so asked again), not hang for the
        // whole retry timeout.
        let attrs = self.catalog.attrs().clone();
        // One wait per HEAD: the kernel asks several times for one open.
        let waited = attrs.learning_for(key).unwrap_or_default();
        let wait = LEARN_WAIT.saturating_sub(waited);
        let (owned_key, owned_etag, listed) = (key.to_owned(), etag.clone(), entry.mtime);
        let learning =
            tokio::spawn(async move { attrs.learn(&owned_key, &owned_etag, Some(listed)).await });
        match tokio::time::timeout(wait, learning).await {
            Ok(Ok(Ok(known))) => Self::apply_posix(&mut attr, &known.posix),
            // Gone: shown as listed until the listing says so.
            Ok(Ok(Err(e))) if e.is_not_found() => attr.provisional = false,
            // Asked again at the next stat.
            Ok(Ok(Err(e))) => debug!(key, error = %e, "cannot learn attributes"),
            Ok(Err(e)) => debug!(key, error = %e, "learning attributes failed"),
            Err(_) => debug!(key, "attributes not learned in time; shown provisionally"),
        }
        attr
    }

    /// Starts learning the attributes of the files after `name` in
    /// directory `parent`, as far as its listing is held.
    fn learn_after(&self, parent: Ino, name: &str) {
        let Ok(prefix) = self.catalog.dir_prefix(parent) else {
            return;
        };
        self.learn_after_in(&prefix, name);
    }

    fn learn_after_in(&self, prefix: &str, name: &str) {
        let Some(listing) = self.catalog.held(prefix) else {
            return;
        };
        let versions = listing
            .after_name(name, LEARN_AHEAD)
            .into_iter()
            .filter_map(|e| match e.kind {
                EntryKind::File { etag, .. } => {
                    Some((names::child_key(prefix, &e.name), etag, e.mtime))
                }
                EntryKind::Dir => None,
            })
            .collect();
        self.catalog.attrs().learn_ahead(versions);
    }

    /// Under `--posix-metadata full`: learns the attributes of the files
    /// of a directory page not known yet, all at once.
    pub(super) async fn learn_page(&self, prefix: &str, entries: &[Entry]) {
        if self.owner.posix != PosixMetadata::Full {
            return;
        }
        if let Some(last) = entries.last() {
            // The pages after this one, while this one is learned.
            self.learn_after_in(prefix, &last.name);
        }
        let attrs = self.catalog.attrs();
        let markers: Vec<String> = entries
            .iter()
            .filter(|e| e.is_dir())
            .map(|e| names::child_dir_prefix(prefix, &e.name))
            .filter(|m| attrs.known(m, DIR_MARKER_VERSION, None).is_none())
            .collect();
        let unknown: Vec<(String, String, SystemTime)> = entries
            .iter()
            .filter_map(|e| match &e.kind {
                EntryKind::File { etag, .. } if !etag.is_empty() => {
                    let key = names::child_key(prefix, &e.name);
                    let known = attrs.known(&key, etag, Some(e.mtime));
                    known.is_none().then(|| (key, etag.clone(), e.mtime))
                }
                _ => None,
            })
            .collect();
        let learning: Vec<_> = unknown
            .into_iter()
            .map(|(key, etag, listed)| {
                let attrs = attrs.clone();
                tokio::spawn(async move {
                    if let Err(e) = attrs.learn(&key, &etag, Some(listed)).await {
                        debug!(key, error = %e, "cannot learn attributes");
                    }
                })
            })
            .collect();
        let learning_markers: Vec<_> = markers
            .into_iter()
            .map(|marker| {
                let attrs = attrs.clone();
                tokio::spawn(async move {
                    if let Err(e) = attrs.learn_marker(&marker).await {
                        debug!(marker, error = %e, "cannot learn a directory's attributes");
                    }
                })
            })
            .collect();
        for task in learning.into_iter().chain(learning_markers) {
            let _ = task.await;
        }
    }

    /// The attributes a new version of version `etag` of `key` (listed
    /// as modified at `listed`) keeps (an edit, a truncation): those
    /// known, learned if need be; `None` when the mount keeps none. When
    /// they cannot be learned the change fails: a new version without
    /// them would lose the mode and owner.
    pub(super) async fn kept_posix(
        &self,
        key: &str,
        etag: &str,
        listed: Option<SystemTime>,
    ) -> Result<Option<PosixMeta>, FsError> {
        if !self.keeps_posix() {
            return Ok(None);
        }
        if etag.is_empty() {
            return Ok(Some(PosixMeta::NONE));
        }
        let known = self.catalog.attrs().learn(key, etag, listed).await?;
        Ok(Some(PosixMeta {
            mtime: None,
            ..known.posix
        }))
    }

    /// What a file created now by `creator` carries.
    pub(super) fn new_file_attrs(&self, creator: Option<Creator>) -> PendingAttrs {
        let posix = match creator {
            Some(c) => PosixMeta {
                mode: Some(libc::S_IFREG | (c.perm & 0o7777)),
                uid: Some(c.uid),
                gid: Some(c.gid),
                mtime: None,
            },
            None => PosixMeta::NONE,
        };
        PendingAttrs::new(self.keeps_posix().then_some(posix))
    }

    /// Notes the attributes a version stored by this mount carries.
    pub(super) fn record_attrs(
        &self,
        key: &str,
        etag: &str,
        posix: PosixMeta,
        link: Option<String>,
    ) {
        if !self.keeps_posix() {
            return;
        }
        self.catalog.attrs().record(
            key,
            ObjectAttrs {
                etag: etag.to_owned(),
                written: VersionTime::WrittenHere(SystemTime::now()),
                posix,
                link,
            },
        );
    }

    /// chmod, chown and utimens of `ino`: stored in the object's metadata
    /// (a file open for writing stores them with its next commit).
    pub(super) async fn change_attrs(&self, ino: Ino, change: AttrChange) -> Result<(), FsError> {
        if !change.stores_something() {
            return Ok(());
        }
        self.writable()?;
        if !self.keeps_posix() {
            return Err(FsError::NotPermitted(
                "--posix-metadata off keeps no modes, owners or times",
            ));
        }
        if let Some(file) = self.writer.settle(ino).await {
            // Open for writing: its next commit stores the change (or its
            // last close does, see `store_unstored_attrs`).
            file.attrs.change(|p| change.apply(p, libc::S_IFREG));
            if !file.is_closing() {
                return Ok(()); // its close has not begun: it will see it
            }
            // Its last close began meanwhile and may have read the
            // attributes before the change: once it is done, the change
            // is stored here if it did not store it.
            let reopened = self.writer.settle(ino).await;
            if !file.attrs.has_unstored_change() {
                return Ok(());
            }
            if let Some(open) = reopened {
                open.attrs.change(|p| change.apply(p, libc::S_IFREG));
                if !open.is_closing() {
                    return Ok(());
                }
            }
        }
        let (parent, name, key) = self.catalog.location(ino)?;
        let entry = self.catalog.entry(ino).await?;
        match &entry.kind {
            EntryKind::Dir => self.change_dir_attrs(&key, &entry, change).await,
            EntryKind::File { size, etag } => {
                // Allowed under --no-overwrite: the bytes stay the same.
                let known = self
                    .catalog
                    .attrs()
                    .learn(&key, etag, Some(entry.mtime))
                    .await?;
                if !same_etag(&known.etag, etag) {
                    return Err(FsError::Busy("the file was replaced meanwhile; try again"));
                }
                let mut posix = known.posix;
                let file_type = posix.mode.map_or(libc::S_IFREG, |m| m & libc::S_IFMT);
                change.apply(&mut posix, file_type);
                // The copy gets a new LastModified: the time shown must not
                // move with it.
                posix.mtime = posix.mtime.or(Some(entry.mtime));
                if posix == known.posix {
                    return Ok(());
                }
                let keep_other = !known.written.written_here();
                let new_etag = self
                    .store()
                    .set_metadata(&key, etag, *size, &posix, keep_other)
                    .await
                    .map_err(|e| FsError::store(&key, e))?;
                self.record_file(parent, &name, *size, new_etag.clone())?;
                self.record_attrs(&key, &new_etag, posix, known.link.clone());
                Ok(())
            }
        }
    }

    /// After the last close of `file`: stores attributes set while it was
    /// open that no commit carried, on the version it opened or stored
    /// (nothing, if its name holds another by now).
    pub(super) async fn store_unstored_attrs(&self, file: &WritableFile<S>) -> Result<(), FsError> {
        if file.is_unlinked() {
            return Ok(()); // its name belongs to another file
        }
        let place = file.place();
        let Some(etag) = file.attrs.version() else {
            return Ok(());
        };
        let (_, entry) = self.catalog.lookup(place.parent, &place.name).await?;
        let EntryKind::File { size, etag: listed } = entry.kind else {
            return Ok(());
        };
        if !same_etag(&listed, &etag) {
            return Err(FsError::store(&place.key, StoreError::PreconditionFailed));
        }
        // No data changed since that version: the time shown stays.
        let known = self.catalog.attrs().known(&place.key, &etag, None);
        let shown = known
            .as_ref()
            .and_then(|a| a.posix.mtime)
            .unwrap_or(entry.mtime);
        let mut posix = file.attrs.for_commit();
        if file.attrs.get().is_some_and(|p| p.mtime.is_none()) {
            posix.mtime = Some(shown);
        }
        let keep_other = !known.as_ref().is_some_and(|a| a.written.written_here());
        let new_etag = self
            .store()
            .set_metadata(&place.key, &etag, size, &posix, keep_other)
            .await
            .map_err(|e| FsError::store(&place.key, e))?;
        self.record_file(place.parent, &place.name, size, new_etag.clone())?;
        self.record_attrs(&place.key, &new_etag, posix, None);
        Ok(())
    }

    /// A directory's attributes live on its marker object (`dir/`), as
    /// s3fs keeps them; it is written (or rewritten) with them.
    async fn change_dir_attrs(
        &self,
        prefix: &str,
        entry: &Entry,
        change: AttrChange,
    ) -> Result<(), FsError> {
        if prefix.is_empty() {
            return Err(FsError::NotPermitted(
                "the root of a whole-bucket mount has no marker object to keep attributes",
            ));
        }
        // What the marker carries now (another client's owner included).
        let mut posix = self.catalog.attrs().learn_marker(prefix).await?.posix;
        let before = posix;
        change.apply(&mut posix, libc::S_IFDIR);
        posix.mtime = posix.mtime.or(Some(entry.mtime));
        if posix == before {
            return Ok(());
        }
        self.store()
            .put(prefix, Body::Empty, WriteCondition::Always, &posix)
            .await
            .map_err(|e| FsError::store(prefix, e))?;
        self.record_attrs(prefix, DIR_MARKER_VERSION, posix, None);
        Ok(())
    }

    /// What a directory made now by `creator` carries on its marker.
    pub(super) fn new_dir_attrs(&self, creator: Creator) -> PosixMeta {
        match self.keeps_posix() {
            true => PosixMeta {
                mode: Some(libc::S_IFDIR | (creator.perm & 0o7777)),
                uid: Some(creator.uid),
                gid: Some(creator.gid),
                mtime: Some(SystemTime::now()),
            },
            false => PosixMeta::NONE,
        }
    }

    /// symlink(2): an object whose body is the target, with mode
    /// `S_IFLNK|0777`, as s3fs stores one.
    pub async fn symlink(
        &self,
        parent: Ino,
        name: &str,
        target: &str,
        creator: Creator,
    ) -> Result<Attr, FsError> {
        if !self.keeps_posix() {
            return Err(FsError::NotPermitted(
                "--posix-metadata off keeps no symlinks",
            ));
        }
        if target.is_empty() || target.len() as u64 > crate::catalog::MAX_LINK_LEN {
            return Err(FsError::Invalid("a symlink target of 1 to 4096 bytes"));
        }
        let prefix = self.free_name(parent, name).await?;
        let key = names::child_key(&prefix, name);
        self.writer.cancel_delete(&key);
        let posix = PosixMeta {
            mode: Some(libc::S_IFLNK | 0o777),
            uid: Some(creator.uid),
            gid: Some(creator.gid),
            mtime: Some(SystemTime::now()),
        };
        let body = Body::Small(bytes::Bytes::copy_from_slice(target.as_bytes()));
        let etag = self
            .store()
            .put(&key, body, WriteCondition::IfAbsent, &posix)
            .await
            .map_err(|e| match e {
                crate::store::StoreError::PreconditionFailed => FsError::Exists,
                e => FsError::store(&key, e),
            })?;
        let size = target.len() as u64;
        self.record_file(parent, name, size, etag.clone())?;
        self.record_attrs(&key, &etag, posix, Some(target.to_owned()));
        let (ino, entry) = self.catalog.lookup(parent, name).await?;
        let attr = self.attr_known(ino, &key, &entry);
        self.sent_entry(parent, name, &attr);
        Ok(attr)
    }

    /// readlink(2).
    pub async fn readlink(&self, ino: Ino) -> Result<String, FsError> {
        let key = self.catalog.file_key(ino)?;
        let entry = self.catalog.entry(ino).await?;
        match entry.kind {
            EntryKind::File { size, etag } => {
                let version = (etag.as_str(), size, entry.mtime);
                self.catalog.attrs().link_target(&key, version).await
            }
            EntryKind::Dir => Err(FsError::Invalid("not a symlink")),
        }
    }

    /// The attributes a renamed object (listed as modified at `listed`)
    /// takes along to its new key: those known, learned if need be;
    /// `None` when the mount keeps none. When they cannot be learned the
    /// rename fails: the copy would lose them.
    pub(super) async fn moving_attrs(
        &self,
        key: &str,
        etag: &str,
        listed: Option<SystemTime>,
    ) -> Result<Option<ObjectAttrs>, FsError> {
        if !self.keeps_posix() {
            return Ok(None);
        }
        let known = self.catalog.attrs().learn(key, etag, listed).await?;
        Ok(Some((*known).clone()))
    }
}
