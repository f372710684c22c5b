//! The catalog: what is in each directory, and the inode numbers of names.
//!
//! A directory is an S3 prefix. Its listing (ListObjectsV2 with delimiter
//! `/`, every page) answers `lookup`, `getattr` and `readdir`, so a name
//! costs no HEAD and a path costs no LIST per component. Listings live in
//! three places, asked in order: memory (moka), the SQLite catalog on disk
//! (which survives restarts, see [`db`]), and S3. A listing of more than
//! [`IN_MEMORY_LIMIT`] entries is not held in memory at all: it is written
//! to SQLite page by page as it arrives, and lookups and directory streams
//! read it from there, so memory does not grow with directory size.
//!
//! Freshness: a listing younger than `--metadata-ttl` is served as it is.
//! An older one is served at once while one background refresh per
//! directory replaces it (stale-while-revalidate), unless that mode is off or
//! the TTL is 0, in which case the caller waits for the new listing.
//! Concurrent requests for the same listing share one fetch.
//!
//! Changes made through the mount (new files, deletes, renames, mkdir) are
//! applied to the known listing at once, and remembered for a while so a
//! listing that was already under way when the change happened does not
//! undo it when it lands (see [`Listings::install`]).
//!
//! Invariants:
//! - A path has the same inode number in every mount of the same target
//!   (see [`inodes`]); a name that changes kind gets a new one.
//! - When a key `a` and a prefix `a/` both exist, the directory wins.
//! - Names that cannot be path components (see [`crate::names`]) never
//!   appear in a listing.
//!
//! Here: the [`Catalog`] facade (inodes and listings behind one API). The
//! types of a listing are in `listing`, the listings cache in
//! `listing_cache`, changes made through the mount in `listing_changes`.

pub mod db;
mod growing;
mod inodes;
pub mod inventory;
mod listing;
mod listing_cache;
mod listing_changes;
mod object_attrs;
pub mod snapshot;
mod walk;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, SystemTime};

use crate::error::FsError;
use crate::names;
use crate::store::ObjectStore;
pub use db::CatalogDb;
pub use growing::GrowingListing;
use inodes::{InodeTable, Node};
pub use listing::{DirSource, Entry, EntryKind, Listing, IN_MEMORY_LIMIT};
use listing_cache::Listings;
pub use object_attrs::{
    same_etag, AttrStats, ObjectAttrs, ObjectAttrsCache, VersionTime, DIR_MARKER_VERSION,
    MAX_LINK_LEN,
};

pub type Ino = u64;
pub const ROOT_INO: Ino = 1;

/// How long listings are trusted, and what happens after that.
#[derive(Debug, Clone, Copy)]
pub struct Freshness {
    pub ttl: Duration,
    /// Serve an expired listing at once while it is refreshed in the background.
    pub serve_stale: bool,
}

/// See [`Catalog::memory_summary`].
#[derive(Debug, Default, Clone, Copy)]
pub struct ListingSummary {
    pub listings: u64,
    pub entries: u64,
    pub oldest_age: Duration,
    pub newest_age: Duration,
}

/// Counters of the catalog, for logs, tests and metrics.
#[derive(Debug, Default)]
pub struct CatalogStats {
    /// ListObjectsV2 pages requested.
    pub list_requests: AtomicU64,
    /// Listings answered from memory or disk without asking S3.
    pub hits: AtomicU64,
    /// Of those, expired ones served while a refresh ran.
    pub stale_hits: AtomicU64,
    /// Listings loaded from the on-disk catalog.
    pub disk_loads: AtomicU64,
    /// Callers that had to wait for S3.
    pub misses: AtomicU64,
    /// Complete listings fetched from S3.
    pub refreshes: AtomicU64,
    /// Tree walks started (flat listings of a parent's subtrees).
    pub walks: AtomicU64,
}

pub struct Catalog<S> {
    listings: Arc<Listings<S>>,
    inodes: Mutex<InodeTable>,
    attrs: Arc<ObjectAttrsCache<S>>,
}

impl<S: ObjectStore> Catalog<S> {
    /// `memory_entries` bounds the listing entries held in memory (about
    /// 150 bytes each); listings on disk count as one. Attributes learned
    /// from object metadata take a tenth of that in memory.
    pub fn new(
        store: Arc<S>,
        root_prefix: &str,
        freshness: Freshness,
        db: Option<Arc<CatalogDb>>,
        memory_entries: u64,
    ) -> Self {
        let memory = moka::sync::Cache::builder()
            .max_capacity(memory_entries)
            .weigher(|_k: &String, l: &Arc<Listing>| l.weight())
            .build();
        Catalog {
            attrs: Arc::new(ObjectAttrsCache::new(
                store.clone(),
                db.clone(),
                memory_entries.saturating_mul(15),
            )),
            listings: Arc::new(Listings {
                store,
                memory,
                db,
                refreshing: Mutex::new(HashMap::new()),
                freshness,
                mounted_at: SystemTime::now(),
                stats: CatalogStats::default(),
                growing: Mutex::new(HashMap::new()),
                opened: Mutex::new(HashMap::new()),
                walked: Mutex::new(HashMap::new()),
                changes: Mutex::new(HashMap::new()),
                sweep_changes_at: std::sync::atomic::AtomicUsize::new(1024),
                forgotten: Mutex::default(),
                one_save: Mutex::default(),
                in_flight: Arc::default(),
            }),
            inodes: Mutex::new(InodeTable::new(root_prefix)),
        }
    }

    /// The attributes of object versions (see [`ObjectAttrsCache`]).
    pub fn attrs(&self) -> &Arc<ObjectAttrsCache<S>> {
        &self.attrs
    }

    pub fn mounted_at(&self) -> SystemTime {
        self.listings.mounted_at
    }

    pub fn stats(&self) -> &CatalogStats {
        &self.listings.stats
    }

    /// The listings held in memory: how many, their entries, and the ages
    /// of the oldest and newest.
    pub fn memory_summary(&self) -> ListingSummary {
        let now = SystemTime::now();
        let mut summary = ListingSummary::default();
        let mut newest: Option<Duration> = None;
        for (_, listing) in self.listings.memory.iter() {
            let age = now.duration_since(listing.listed_at).unwrap_or_default();
            summary.listings += 1;
            summary.entries += listing.entries().map_or(0, |e| e.len() as u64);
            summary.oldest_age = summary.oldest_age.max(age);
            newest = Some(newest.map_or(age, |n| n.min(age)));
        }
        summary.newest_age = newest.unwrap_or_default();
        summary
    }

    /// Files directly in the directory at `path` (relative to the mount
    /// root), from its listing under the usual freshness rules.
    pub async fn count_files(&self, path: &str) -> Result<u64, FsError> {
        let mut ino = ROOT_INO;
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            ino = self.lookup(ino, part).await?.0;
        }
        let listing = self.listing(ino).await?;
        Ok(listing.count_files())
    }

    fn node(&self, ino: Ino) -> Result<Node, FsError> {
        self.inodes
            .lock()
            .get(ino)
            .cloned()
            .ok_or(FsError::NotFound)
    }

    /// The object key of a file inode.
    pub fn file_key(&self, ino: Ino) -> Result<String, FsError> {
        let node = self.node(ino)?;
        if node.is_dir {
            return Err(FsError::IsADirectory);
        }
        Ok(node.key)
    }

    /// The listing of the directory at S3 prefix `prefix` as this catalog
    /// holds it, whatever its age (for snapshots, which keep each
    /// listing's time); `None` when it holds none.
    pub fn held(&self, prefix: &str) -> Option<Arc<Listing>> {
        self.listings.known(prefix)
    }

    /// The directory at S3 prefix `prefix`, listed from S3 now.
    pub async fn listed(&self, prefix: &str) -> Result<Arc<Listing>, FsError> {
        self.listings.fetch_now(prefix).await
    }

    /// The listing of directory `ino`.
    pub async fn listing(&self, ino: Ino) -> Result<Arc<Listing>, FsError> {
        let node = self.node(ino)?;
        if !node.is_dir {
            return Err(FsError::NotADirectory);
        }
        self.listings.get(&node.key).await
    }

    /// What a new stream of directory `ino` reads (see [`DirSource`]).
    pub async fn open_dir(&self, ino: Ino) -> Result<DirSource, FsError> {
        let node = self.node(ino)?;
        if !node.is_dir {
            return Err(FsError::NotADirectory);
        }
        self.listings.open(&node.key).await
    }

    /// Notes that directory `ino` is being read (tree-walk detection).
    pub fn note_opendir(&self, ino: Ino) {
        if let Ok(node) = self.node(ino) {
            self.listings.note_opendir(&node.key);
        }
    }

    /// Lists directory `ino` (or the directory of file `ino`) from S3 now,
    /// whatever its age, and waits for the new listing.
    pub async fn refresh(&self, ino: Ino) -> Result<(), FsError> {
        let node = self.node(ino)?;
        let dir = if node.is_dir {
            node
        } else {
            self.node(node.parent)?
        };
        self.listings.forget(&dir.key);
        self.listings.fetch_now(&dir.key).await.map(|_| ())
    }

    /// Resolves `name` in directory `parent` to an inode and its entry.
    pub async fn lookup(&self, parent: Ino, name: &str) -> Result<(Ino, Entry), FsError> {
        let listing = self.listing(parent).await?;
        let entry = listing.get(name).ok_or(FsError::NotFound)?;
        let ino = self.resolve(parent, &entry)?;
        Ok((ino, entry))
    }

    /// Inode numbers for entries of directory `parent` (for readdir).
    pub fn resolve_all<'e>(
        &self,
        parent: Ino,
        entries: impl Iterator<Item = &'e Entry>,
    ) -> Result<Vec<Ino>, FsError> {
        let parent_prefix = self.node(parent)?.key;
        let mut table = self.inodes.lock();
        Ok(entries
            .map(|e| table.resolve(parent, &parent_prefix, e))
            .collect())
    }

    /// The inode of `entry` in directory `parent`, numbered on first sight.
    pub fn resolve(&self, parent: Ino, entry: &Entry) -> Result<Ino, FsError> {
        let parent_prefix = self.node(parent)?.key;
        Ok(self.inodes.lock().resolve(parent, &parent_prefix, entry))
    }

    /// Counts a lookup of `entry` (numbered `ino`) in `parent` that the
    /// kernel is sent (an entry reply, or a readdirplus entry).
    pub fn remember(&self, parent: Ino, entry: &Entry, ino: Ino) {
        let Ok(parent_prefix) = self.dir_prefix(parent) else {
            return;
        };
        self.inodes
            .lock()
            .remember(parent, &parent_prefix, entry, ino);
    }

    /// The kernel dropped `n` lookups of `ino`.
    pub fn forget(&self, ino: Ino, n: u64) {
        self.inodes.lock().forget(ino, n);
    }

    /// Forgets the numbers given to readdir rows that were not sent as
    /// entries the kernel holds.
    pub fn drop_unsent(&self, inos: impl Iterator<Item = Ino>) {
        let mut table = self.inodes.lock();
        for ino in inos {
            table.drop_unsent(ino);
        }
    }

    /// Inodes the table holds now.
    pub fn inode_count(&self) -> usize {
        self.inodes.lock().len()
    }

    /// The current entry of inode `ino`, answered from its parent's listing.
    pub async fn entry(&self, ino: Ino) -> Result<Entry, FsError> {
        if ino == ROOT_INO {
            return Ok(Entry {
                name: String::new(),
                kind: EntryKind::Dir,
                mtime: self.mounted_at(),
            });
        }
        let node = self.node(ino)?;
        let listing = self.listing(node.parent).await?;
        match listing.get(&node.name) {
            Some(e) if e.is_dir() == node.is_dir => Ok(e),
            _ => Err(FsError::NotFound),
        }
    }

    /// The key prefix of directory `ino`.
    pub fn dir_prefix(&self, ino: Ino) -> Result<String, FsError> {
        let node = self.node(ino)?;
        if !node.is_dir {
            return Err(FsError::NotADirectory);
        }
        Ok(node.key)
    }

    /// The parent, name and key of `ino`.
    pub fn location(&self, ino: Ino) -> Result<(Ino, String, String), FsError> {
        let node = self.node(ino)?;
        Ok((node.parent, node.name, node.key))
    }

    /// Records that `name` in directory `parent` is now `entry` (or gone),
    /// after a change made through the mount.
    pub fn record(&self, parent: Ino, name: &str, entry: Option<Entry>) -> Result<(), FsError> {
        let prefix = self.dir_prefix(parent)?;
        if entry.is_none() {
            self.inodes.lock().unlink(parent, name);
        }
        self.listings.record(&prefix, name, entry);
        Ok(())
    }

    /// Records a directory just created through the mount: it is empty, so
    /// reading it needs no LIST.
    pub fn record_new_dir(&self, prefix: &str) {
        self.listings.install(
            prefix,
            Arc::new(Listing::in_memory(Vec::new(), SystemTime::now())),
        );
    }

    /// Whether directory `ino` is known (from a listing in memory or on
    /// disk) to have no entries.
    pub fn known_empty(&self, ino: Ino) -> bool {
        let Ok(prefix) = self.dir_prefix(ino) else {
            return false;
        };
        self.listings.known(&prefix).is_some_and(|l| l.is_empty())
    }

    /// Forgets the listings of directory prefix `prefix` and everything
    /// below it, so they are listed again when next needed.
    pub fn forget_tree(&self, prefix: &str) {
        self.listings.forget_tree(prefix);
    }

    /// Moves inode `ino` to `new_name` in `new_parent` after a rename, with
    /// everything below it when it is a directory, so open handles and the
    /// kernel's cached inodes keep working under the new name.
    pub fn moved(&self, ino: Ino, new_parent: Ino, new_name: &str) -> Result<(), FsError> {
        let parent_prefix = self.dir_prefix(new_parent)?;
        let mut table = self.inodes.lock();
        let is_dir = table.get(ino).ok_or(FsError::NotFound)?.is_dir;
        let key = if is_dir {
            names::child_dir_prefix(&parent_prefix, new_name)
        } else {
            names::child_key(&parent_prefix, new_name)
        };
        table.moved(ino, new_parent, new_name, key);
        Ok(())
    }

    /// The parent inode of `ino` (for `..`).
    pub fn parent(&self, ino: Ino) -> Result<Ino, FsError> {
        Ok(self.node(ino)?.parent)
    }
}
